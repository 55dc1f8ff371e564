//! Notifications: what each mail says, and how it leaves. A mail is always sent from a job
//! (see `service::jobs_impl`), as multipart text + HTML rendered from `web/templates/email/`,
//! with every user-supplied value escaped (HTML) or kept out of headers.

mod transport;
pub mod webhook;

use std::time::SystemTime;

use askama::Template;
use lettre::Message;
use lettre::message::{Mailbox, MultiPart};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use transport::{MailTransport, SendError};

use crate::domain::operations::{self, GUARD_SCOPE_NOTE};
use crate::service::jobs_api::JobFailure;
use crate::service::{MailKind, MailPayload, Service};
use crate::store::RequestRow;

/// The parts of one mail, before templating.
#[derive(Debug, Clone)]
pub struct MailModel {
    pub subject: String,
    pub guard: String,
    pub headline: String,
    pub intro: String,
    pub warning: Option<String>,
    pub action_link: Option<String>,
    pub action_text: String,
    pub action_note: Option<String>,
    pub facts: Vec<(String, String)>,
    pub consequence: Option<String>,
    pub scope_note: Option<String>,
    pub footer: String,
    pub details_link: Option<String>,
}

#[derive(Template)]
#[template(path = "email/notification.html")]
struct HtmlMail<'a> {
    m: &'a MailModel,
}

#[derive(Template)]
#[template(path = "email/notification.txt")]
struct TextMail<'a> {
    m: &'a MailModel,
}

/// A rendered mail.
#[derive(Debug, Clone)]
pub struct Mail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// SECURITY: a subject line is a header. Strip control characters (no CR/LF header
/// injection, whatever lettre's own encoding does) and bound its length.
fn subject_safe(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// A notice that stands on its own (an Azure Monitor alert, a suspicious-activity rule, the
/// digest): everything the mail and the webhooks say, decided when the event happens.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AlertNotice {
    /// The watcher event name (`alert.received`, `alert.raised:<rule>`, `digest`).
    pub event: String,
    pub subject: String,
    pub headline: String,
    pub intro: String,
    pub warning: Option<String>,
    pub facts: Vec<(String, String)>,
    /// Where to look: the Azure portal, or the request page.
    pub link: Option<String>,
    pub link_text: String,
    /// The guard(s) it concerns, for the mail's header line.
    pub guard: String,
    pub request_id: Option<String>,
}

/// The mail model of a notice.
pub fn alert_model(n: &AlertNotice) -> MailModel {
    MailModel {
        subject: subject_safe(&n.subject),
        guard: n.guard.clone(),
        headline: n.headline.clone(),
        intro: n.intro.clone(),
        warning: n.warning.clone(),
        action_link: n.link.clone(),
        action_text: if n.link_text.is_empty() {
            "Open".into()
        } else {
            n.link_text.clone()
        },
        action_note: None,
        facts: n.facts.clone(),
        consequence: None,
        scope_note: None,
        footer: "Sent by twokey, which stands between one account and your backups.".into(),
        details_link: None,
    }
}

/// The facts of a request, as mails and webhooks show them.
pub fn request_facts(req: &RequestRow) -> Vec<(String, String)> {
    let op = operations::find(&req.operation);
    facts(req, op.map(|o| o.title).unwrap_or(req.operation.as_str()))
}

fn facts(req: &RequestRow, title: &str) -> Vec<(String, String)> {
    let vault = crate::domain::arm::VaultId::parse(&req.vault_id).ok();
    let mut f = vec![
        (
            "Requester".into(),
            format!("{} <{}>", req.requester_name, req.requester_email),
        ),
        ("Operation".into(), title.to_string()),
        (
            "Vault".into(),
            vault
                .as_ref()
                .map(|v| format!("{} ({})", v.name(), v.kind().label()))
                .unwrap_or_else(|| req.vault_id.clone()),
        ),
    ];
    if let Some(v) = &vault {
        f.push(("Subscription".into(), v.subscription().to_string()));
        f.push(("Resource group".into(), v.resource_group().to_string()));
    }
    f.extend([
        ("Guard".into(), req.guard.clone()),
        ("Why".into(), req.justification.clone()),
        (
            "Ticket".into(),
            req.ticket.clone().unwrap_or_else(|| "(none)".into()),
        ),
        (
            "Window".into(),
            format!("{} minutes once approved", req.duration_minutes),
        ),
        (
            "Approvals".into(),
            format!("{} needed", req.required_approvals),
        ),
        ("Decide before".into(), short_time(&req.deadline)),
    ]);
    f
}

fn short_time(s: &str) -> String {
    match (s.get(..10), s.get(11..16)) {
        (Some(d), Some(t)) => format!("{d} {t} UTC"),
        _ => s.to_string(),
    }
}

/// Build the model for `payload` about `req`.
pub fn model(
    svc: &Service,
    payload: &MailPayload,
    req: Option<&RequestRow>,
    link: Option<&str>,
) -> Result<MailModel, JobFailure> {
    if payload.kind == MailKind::Alert {
        let n: AlertNotice = serde_json::from_value(payload.extra.clone())
            .map_err(|e| JobFailure::Permanent(format!("bad notice: {e}")))?;
        return Ok(alert_model(&n));
    }
    let req = req.ok_or_else(|| JobFailure::Permanent("mail without its request".into()))?;
    let op = operations::find(&req.operation);
    let title = op.map(|o| o.title).unwrap_or(req.operation.as_str());
    let vault_name = req
        .vault_id
        .rsplit('/')
        .next()
        .unwrap_or(&req.vault_id)
        .to_string();
    let details = format!("{}/requests/{}", svc.public_base(), req.request_id);
    let event = payload
        .extra
        .get("event")
        .and_then(|e| e.as_str())
        .unwrap_or("");
    let mut m = MailModel {
        subject: String::new(),
        guard: req.guard.clone(),
        headline: String::new(),
        intro: String::new(),
        warning: None,
        action_link: None,
        action_text: String::new(),
        action_note: None,
        facts: facts(req, title),
        consequence: None,
        scope_note: None,
        footer: "Sent by twokey, which stands between one account and your backups.".into(),
        details_link: Some(details.clone()),
    };
    match payload.kind {
        MailKind::ReviewRequest => {
            let link =
                link.ok_or_else(|| JobFailure::Permanent("review mail without link".into()))?;
            m.subject = format!(
                "Approval needed: {title} on {vault_name} ({})",
                req.requester_name
            );
            m.headline = format!("{} asks for your approval", req.requester_name);
            m.intro = format!(
                "{} wants to {} on vault {}. Please review and decide.",
                req.requester_name,
                title.to_lowercase(),
                vault_name
            );
            m.warning = op.and_then(|o| o.warning).map(str::to_string).or_else(|| {
                op.filter(|o| !o.reversible)
                    .map(|_| "This operation cannot be undone.".to_string())
            });
            m.action_link = Some(link.to_string());
            m.action_text = "Review the request".into();
            m.action_note = Some("Opening the link changes nothing; you decide on the page. The link is yours alone, works for one decision, and expires at the deadline.".into());
            m.consequence = op.map(|o| o.consequence.to_string());
            m.scope_note = Some(GUARD_SCOPE_NOTE.to_string());
            m.footer = "If you did not expect this, deny it and tell your security team.".into();
            m.details_link = None;
        }
        MailKind::Requester => {
            let (headline, intro) = match event {
                "created" => ("Your request was received".to_string(), "It has been sent to the approvers. You will get a mail when it is decided.".to_string()),
                "approved" => ("Your request was approved".into(), "twokey is putting the access in place now.".into()),
                "active" => (
                    "Your access window is open".into(),
                    format!(
                        "From {} until {}. The role is taken away automatically at the end; end it early from the request page when you are done.",
                        short_time(req.active_from.as_deref().unwrap_or("now")),
                        short_time(req.active_until.as_deref().unwrap_or("?"))
                    ),
                ),
                "denied" => ("Your request was denied".into(), "Nothing was granted.".into()),
                "expired" => ("Your request expired".into(), "Nobody decided before the deadline, or the guard's policy changed. Nothing was granted.".into()),
                "ended" => ("Your access window has ended".into(), "The role on the Resource Guard has been removed.".into()),
                "failed" => ("Your access could not be granted".into(), req.failure_message.clone().unwrap_or_else(|| "Nothing was granted.".into())),
                other => (format!("Your request changed: {other}"), String::new()),
            };
            m.subject = format!(
                "twokey: {} — {title} on {vault_name}",
                headline.to_lowercase()
            );
            m.headline = headline;
            m.intro = intro;
            m.action_link = Some(details);
            m.action_text = "Open the request".into();
            m.details_link = None;
        }
        MailKind::Watcher => {
            let who = payload
                .extra
                .get("by")
                .and_then(|b| b.as_str())
                .unwrap_or(&req.requester_email)
                .to_string();
            m.subject = format!("[twokey] {event}: {title} on {vault_name} ({who})");
            m.headline = format!("twokey event: {event}");
            m.intro = match event {
                "failed_grant_left_assignment" => "twokey gave up granting this request, but Azure had made the role assignment anyway. twokey has removed it; check the Resource Guard's access control (IAM).".into(),
                "outlived_window" => "The Azure role assignment twokey made for this request is still in place more than a minute after its window ended. twokey keeps trying to remove it; check the Resource Guard's access control (IAM) now.".into(),
                e if e.starts_with("token_rejected") => format!("A review link for this request was refused ({}).", e.trim_start_matches("token_rejected:")),
                _ => format!("{} — request by {}.", event, req.requester_email),
            };
            if event == "outlived_window" {
                m.warning = Some("Access outlived its approved window.".into());
            }
        }
        // Returned above.
        MailKind::Alert => {}
        MailKind::Posture => {
            return Err(JobFailure::Permanent(
                "a posture mail is not about a request".into(),
            ));
        }
        MailKind::AlreadyDecided => {
            let by = payload
                .extra
                .get("by")
                .and_then(|b| b.as_str())
                .unwrap_or("another approver");
            m.subject = format!("Already decided: {title} on {vault_name}");
            m.headline = "This request has already been decided".into();
            m.intro = format!(
                "{by} decided it; the review link you received no longer works. Nothing is needed from you."
            );
        }
    }
    m.subject = subject_safe(&m.subject);
    Ok(m)
}

/// The model of a posture mail: what changed in who can go around MUA for one guard.
pub fn posture_model(svc: &Service, payload: &MailPayload) -> MailModel {
    let x = &payload.extra;
    let guard = x["guard"].as_str().unwrap_or("?").to_string();
    let list = |k: &str| x[k].as_array().cloned().unwrap_or_default();
    let (added, removed, changed) = (list("added"), list("removed"), list("changed"));
    let red = x["red_added"].as_i64().unwrap_or(0);
    let first = x["first_run"].as_bool().unwrap_or(false);
    let mut facts = Vec::new();
    for f in &added {
        facts.push((
            format!("NEW {}", f["severity"].as_str().unwrap_or("")),
            format!(
                "{} — Fix: {}",
                f["title"].as_str().unwrap_or(""),
                f["fix"].as_str().unwrap_or("")
            ),
        ));
    }
    for c in &changed {
        facts.push((
            format!(
                "{} → {}",
                c["from"].as_str().unwrap_or(""),
                c["to"].as_str().unwrap_or("")
            ),
            c["title"].as_str().unwrap_or("").to_string(),
        ));
    }
    for f in &removed {
        facts.push(("GONE".into(), f["title"].as_str().unwrap_or("").to_string()));
    }
    let subject = if first {
        format!(
            "[twokey] posture of {guard}: {} finding(s), {red} red",
            added.len()
        )
    } else {
        format!(
            "[twokey] posture of {guard} changed: {} new, {} gone{}",
            added.len(),
            removed.len(),
            if red > 0 {
                format!(", {red} red")
            } else {
                String::new()
            }
        )
    };
    MailModel {
        subject: subject_safe(&subject),
        guard: guard.clone(),
        headline: if first {
            format!("Posture of {guard}: the first report")
        } else {
            format!("The posture of {guard} changed")
        },
        intro: format!(
            "twokey compared who and what can go around multi-user authorization for Resource Guard {} with its last report.",
            x["resource_guard_id"].as_str().unwrap_or("?")
        ),
        warning: (red > 0).then(|| {
            format!("{red} new red finding(s): MUA can be gone around or is off. Each comes with its fix.")
        }),
        action_link: Some(format!("{}/posture", svc.public_base())),
        action_text: "Open the posture report".into(),
        action_note: None,
        facts,
        consequence: None,
        scope_note: None,
        footer: "Sent by twokey's posture report to the guard's watchers.".into(),
        details_link: None,
    }
}

/// Render a posture mail.
pub fn render_posture(svc: &Service, payload: &MailPayload) -> Result<Mail, JobFailure> {
    render_model(posture_model(svc, payload))
}

/// Render the model into text and HTML.
pub fn render(
    svc: &Service,
    payload: &MailPayload,
    req: Option<&RequestRow>,
    link: Option<&str>,
) -> Result<Mail, JobFailure> {
    render_model(model(svc, payload, req, link)?)
}

/// A mail's model as text and HTML.
fn render_model(m: MailModel) -> Result<Mail, JobFailure> {
    let html = HtmlMail { m: &m }
        .render()
        .map_err(|e| JobFailure::Permanent(format!("template: {e}")))?;
    let text = TextMail { m: &m }
        .render()
        .map_err(|e| JobFailure::Permanent(format!("template: {e}")))?;
    Ok(Mail {
        subject: m.subject,
        text,
        html,
    })
}

/// The whole message. Its `Message-ID` and `Date` come from the job, so a retry produces the
/// same message, not a second, different one.
pub fn build_message(
    from: &str,
    to: &str,
    message_id: &str,
    created: OffsetDateTime,
    mail: &Mail,
) -> Result<Message, String> {
    let from: Mailbox = from.parse().map_err(|e| format!("mail.from: {e}"))?;
    let to_box: Mailbox = to.parse().map_err(|e| format!("recipient `{to}`: {e}"))?;
    Message::builder()
        .from(from)
        .to(to_box)
        .subject(mail.subject.clone())
        .message_id(Some(message_id.to_string()))
        .date(SystemTime::from(created))
        .multipart(MultiPart::alternative_plain_html(
            mail.text.clone(),
            mail.html.clone(),
        ))
        .map_err(|e| format!("building the message: {e}"))
}

/// Deliver one rendered mail through the configured transport. Returns where it went.
pub async fn deliver(
    svc: &Service,
    job_id: &str,
    message_id: &str,
    created: OffsetDateTime,
    to: &str,
    mail: &Mail,
) -> Result<String, String> {
    let msg = build_message(&svc.config.mail.from, to, message_id, created, mail)?;
    svc.mailer
        .send(job_id, msg)
        .await
        .map_err(|e| e.to_string())
}
