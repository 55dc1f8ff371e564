//! Notifications: what each mail says, and how it leaves. In this build mail is written as one
//! `.eml` file per message into `mail.outbox_dir` (what `twokey demo` shows at `/dev/outbox`);
//! SMTP delivery plugs in at [`deliver`]. Mail is only ever sent from a job.

use std::time::SystemTime;

use lettre::Message;
use lettre::message::{Mailbox, header::ContentType};
use time::OffsetDateTime;

use crate::domain::operations::{self, GUARD_SCOPE_NOTE};
use crate::service::jobs_api::JobFailure;
use crate::service::{MailKind, MailPayload, Service};
use crate::store::RequestRow;

/// A rendered mail.
#[derive(Debug, Clone)]
pub struct Mail {
    pub subject: String,
    pub text: String,
}

/// Strip control characters (header injection) and bound the length of a subject line.
fn subject_safe(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Render the mail for `payload` about `req`.
pub fn render(
    svc: &Service,
    payload: &MailPayload,
    req: &RequestRow,
    link: Option<&str>,
) -> Result<Mail, JobFailure> {
    let op = operations::find(&req.operation);
    let title = op.map(|o| o.title).unwrap_or(req.operation.as_str());
    let vault_name = req.vault_id.rsplit('/').next().unwrap_or(&req.vault_id);
    let request_url = format!("{}/requests/{}", svc.public_base(), req.request_id);
    let event = payload
        .extra
        .get("event")
        .and_then(|e| e.as_str())
        .unwrap_or("");
    let facts = format!(
        "Requester:     {} <{}>\nOperation:     {}\nVault:         {}\n               {}\nGuard:         {}\nWindow:        {} minutes once approved\nApprovals:     {} needed\nJustification: {}\nTicket:        {}\nDeadline:      {}\n",
        req.requester_name,
        req.requester_email,
        title,
        vault_name,
        req.vault_id,
        req.guard,
        req.duration_minutes,
        req.required_approvals,
        req.justification,
        req.ticket.as_deref().unwrap_or("(none)"),
        req.deadline,
    );
    let (subject, text) = match payload.kind {
        MailKind::ReviewRequest => {
            let link =
                link.ok_or_else(|| JobFailure::Permanent("review mail without link".into()))?;
            let consequence = op.map(|o| o.consequence).unwrap_or("");
            let warning = op
                .and_then(|o| o.warning)
                .map(|w| format!("\n!! {w}\n"))
                .unwrap_or_default();
            (
                format!(
                    "Approval needed: {} on {} ({})",
                    title, vault_name, req.requester_name
                ),
                format!(
                    "{} asks for your approval.\n\n{facts}\nWhat this does: {consequence}\n{warning}\nNote: {GUARD_SCOPE_NOTE}\n\nReview it here (opening the link changes nothing; you decide on the page):\n{link}\n\nThe link is for you only, works for one decision, and expires at the deadline above.\nIf you did not expect this, deny it and tell your security team.\n",
                    req.requester_name
                ),
            )
        }
        MailKind::Requester => {
            let what = match event {
                "created" => "Your request was received and sent to the approvers.".to_string(),
                "approved" => "Your request was approved. twokey is putting the access in place now.".to_string(),
                "active" => format!(
                    "Your access window is open: from {} until {}.",
                    req.active_from.as_deref().unwrap_or("now"),
                    req.active_until.as_deref().unwrap_or("?")
                ),
                "denied" => "Your request was denied.".to_string(),
                "expired" => "Your request expired without a decision (or the guard's policy changed). Nothing was granted.".to_string(),
                "ended" => "Your access window has ended and the role was removed.".to_string(),
                "failed" => "The access could not be put in place. Nothing was granted.".to_string(),
                other => format!("Your request changed: {other}."),
            };
            (
                format!("twokey: {} — {} on {}", event, title, vault_name),
                format!("{what}\n\n{facts}\nDetails: {request_url}\n"),
            )
        }
        MailKind::Watcher => (
            format!(
                "[twokey] {} — {} on {} by {}",
                event, title, vault_name, req.requester_email
            ),
            format!("twokey event: {event}\n\n{facts}\nDetails: {request_url}\n"),
        ),
        MailKind::AlreadyDecided => {
            let by = payload
                .extra
                .get("by")
                .and_then(|b| b.as_str())
                .unwrap_or("another approver");
            (
                format!("Already decided: {} on {}", title, vault_name),
                format!(
                    "This request has already been decided by {by}; the link you received no longer works.\n\n{facts}\nDetails: {request_url}\n"
                ),
            )
        }
    };
    Ok(Mail {
        subject: subject_safe(&subject),
        text,
    })
}

/// Deliver one rendered mail. The file is named after the job, so a retry overwrites the same
/// message instead of adding a second one. Returns where it went.
pub async fn deliver(
    svc: &Service,
    job_id: &str,
    message_id: &str,
    created: OffsetDateTime,
    to: &str,
    mail: &Mail,
) -> Result<String, String> {
    let from: Mailbox = svc
        .config
        .mail
        .from
        .parse()
        .map_err(|e| format!("mail.from: {e}"))?;
    let to_box: Mailbox = to.parse().map_err(|e| format!("recipient `{to}`: {e}"))?;
    let msg = Message::builder()
        .from(from)
        .to(to_box)
        .subject(mail.subject.clone())
        .message_id(Some(message_id.to_string()))
        .date(SystemTime::from(created))
        .header(ContentType::TEXT_PLAIN)
        .body(mail.text.clone())
        .map_err(|e| format!("building the message: {e}"))?;
    let Some(dir) = &svc.config.mail.outbox_dir else {
        return Err("no mail transport is configured (mail.outbox_dir)".into());
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("outbox {}: {e}", dir.display()))?;
    let path = dir.join(format!("{job_id}.eml"));
    let tmp = dir.join(format!(".{job_id}.eml.tmp"));
    tokio::fs::write(&tmp, msg.formatted())
        .await
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    tokio::fs::rename(&tmp, &path)
        .await
        .map_err(|e| format!("renaming {}: {e}", path.display()))?;
    Ok(path.display().to_string())
}
