//! Outbound webhooks: generic JSON (signed with HMAC-SHA256), Microsoft Teams (an Adaptive Card,
//! which both Workflows and the older incoming webhooks take) and Slack incoming webhooks. A
//! delivery is always a job (see `service::jobs_impl`); this module only builds the body and
//! sends it once.
//!
//! SECURITY: webhook URLs are credentials (Slack's and Teams' URLs are all it takes to post).
//! They are never logged, never put in an error, an audit event or a page.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use super::MailModel;
use crate::config::{WebhookConfig, WebhookKind};

/// What a webhook is told: the same words as the watchers' mail, decided when the event
/// happened (so a retry sends the same thing).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WebhookEvent {
    pub event: String,
    pub at: String,
    pub guards: Vec<String>,
    pub request_id: Option<String>,
    pub subject: String,
    pub headline: String,
    pub text: String,
    pub warning: Option<String>,
    pub facts: Vec<(String, String)>,
    pub link: Option<String>,
}

impl WebhookEvent {
    pub fn from_model(
        event: &str,
        at: &str,
        guards: Vec<String>,
        request_id: Option<String>,
        m: &MailModel,
    ) -> Self {
        Self {
            event: event.to_string(),
            at: at.to_string(),
            guards,
            request_id,
            subject: m.subject.clone(),
            headline: m.headline.clone(),
            text: m.intro.clone(),
            warning: m.warning.clone(),
            facts: m.facts.clone(),
            link: m.action_link.clone().or_else(|| m.details_link.clone()),
        }
    }
}

/// One delivery, ready to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// `hex(HMAC-SHA256(secret, "<timestamp>.<body>"))`: what `X-Twokey-Signature: sha256=…` carries.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Slack's mrkdwn treats `<…>` as links and mentions (`<!channel>`): escape as Slack says.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Adaptive Card text is markdown: break link syntax so user text cannot add a link.
fn card_text(s: &str) -> String {
    s.replace("](", "] (").replace('<', "‹").replace('>', "›")
}

fn take(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Build the body and headers of one delivery. `delivery` is the job id (stable across retries);
/// `timestamp` is the sending time in Unix seconds (signed, so receivers can refuse replays).
pub fn build(hook: &WebhookConfig, ev: &WebhookEvent, delivery: &str, timestamp: i64) -> Outgoing {
    let body = match hook.kind {
        WebhookKind::Json => json!({
            "type": "twokey.event",
            "delivery": delivery,
            "event": ev.event,
            "at": ev.at,
            "guards": ev.guards,
            "request_id": ev.request_id,
            "summary": ev.subject,
            "headline": ev.headline,
            "text": ev.text,
            "warning": ev.warning,
            "facts": ev.facts.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
            "link": ev.link,
        }),
        WebhookKind::Slack => {
            let mut blocks = vec![
                json!({"type": "header", "text": {"type": "plain_text", "text": take(&ev.headline, 150)}}),
                json!({"type": "section", "text": {"type": "mrkdwn", "text": take(&slack_escape(&ev.text), 3000)}}),
            ];
            if let Some(w) = &ev.warning {
                blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!(":warning: *{}*", slack_escape(w))}}));
            }
            let fields: Vec<Value> = ev
                .facts
                .iter()
                .take(10)
                .map(|(k, v)| {
                    json!({"type": "mrkdwn", "text": take(&format!("*{}*\n{}", slack_escape(k), slack_escape(v)), 2000)})
                })
                .collect();
            if !fields.is_empty() {
                blocks.push(json!({"type": "section", "fields": fields}));
            }
            if let Some(l) = &ev.link {
                blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("<{}|Open>", slack_escape(l))}}));
            }
            json!({"text": slack_escape(&ev.subject), "blocks": blocks})
        }
        WebhookKind::Teams => {
            let mut body = vec![
                json!({"type": "TextBlock", "text": card_text(&ev.headline), "weight": "Bolder", "size": "Medium", "wrap": true}),
                json!({"type": "TextBlock", "text": card_text(&ev.text), "wrap": true}),
            ];
            if let Some(w) = &ev.warning {
                body.push(json!({"type": "TextBlock", "text": card_text(w), "color": "Attention", "weight": "Bolder", "wrap": true}));
            }
            body.push(json!({"type": "FactSet", "facts": ev.facts.iter().map(|(k, v)| json!({"title": card_text(k), "value": card_text(v)})).collect::<Vec<_>>()}));
            let actions: Vec<Value> = ev
                .link
                .iter()
                .map(|l| json!({"type": "Action.OpenUrl", "title": "Open", "url": l}))
                .collect();
            json!({
                "type": "message",
                "summary": ev.subject,
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": null,
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": body,
                        "actions": actions,
                    }
                }]
            })
        }
    };
    let body = serde_json::to_vec(&body).expect("json");
    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("x-twokey-event", ev.event.clone()),
        ("x-twokey-delivery", delivery.to_string()),
    ];
    if let (WebhookKind::Json, Some(secret)) = (hook.kind, &hook.secret) {
        headers.push(("x-twokey-timestamp", timestamp.to_string()));
        headers.push((
            "x-twokey-signature",
            format!(
                "sha256={}",
                signature(secret.expose().as_bytes(), timestamp, &body)
            ),
        ));
    }
    Outgoing { body, headers }
}

/// Why a delivery failed; `retry` says whether trying again may help.
#[derive(Debug)]
pub struct DeliveryError {
    pub retry: bool,
    pub message: String,
}

/// The client for every delivery. SECURITY: no redirects (a receiver cannot bounce a delivery,
/// and its content, somewhere else), timeouts, https only unless loopback http is allowed.
pub fn client(timeout: Duration, https_only: bool) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .https_only(https_only)
        .user_agent(concat!("twokey/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("webhook client: {e}"))
}

/// POST one delivery. Returns the status code on 2xx.
pub async fn send(
    client: &reqwest::Client,
    url: &url::Url,
    out: &Outgoing,
) -> Result<u16, DeliveryError> {
    let mut req = client.post(url.clone()).body(out.body.clone());
    for (k, v) in &out.headers {
        req = req.header(*k, v);
    }
    // SECURITY: `without_url` — reqwest's errors name the URL, and the URL is the credential.
    let resp = req.send().await.map_err(|e| DeliveryError {
        retry: true,
        message: format!("webhook: {}", e.without_url()),
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(status.as_u16());
    }
    let retry = status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT;
    let message = if status.is_redirection() {
        format!("webhook answered {status}: redirects are not followed")
    } else {
        format!("webhook answered {status}")
    };
    Err(DeliveryError { retry, message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn hook(kind: WebhookKind) -> WebhookConfig {
        WebhookConfig {
            name: "h".into(),
            kind,
            url: Secret::new("https://example.invalid/x"),
            secret: (kind == WebhookKind::Json).then(|| Secret::new("k".repeat(32))),
            events: vec!["*".into()],
        }
    }

    fn ev() -> WebhookEvent {
        WebhookEvent {
            event: "created".into(),
            headline: "Headline (Slack shows it as plain text)".into(),
            text: "<!channel> a & b [x](https://evil.test)".into(),
            facts: vec![("Vault".into(), "rsv1".into())],
            ..Default::default()
        }
    }

    #[test]
    fn the_json_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // RFC 4231 test case 2 key and data, with the timestamp prefix taken apart again.
        let sig = signature(b"Jefe", 0, b"what do ya want for nothing?");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"0.what do ya want for nothing?");
        assert_eq!(sig, hex::encode(mac.finalize().into_bytes()));
        let out = build(&hook(WebhookKind::Json), &ev(), "d1", 1700000000);
        let header = |n: &str| {
            out.headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|x| x.1.clone())
        };
        assert_eq!(header("x-twokey-timestamp").unwrap(), "1700000000");
        assert_eq!(
            header("x-twokey-signature").unwrap(),
            format!(
                "sha256={}",
                signature("k".repeat(32).as_bytes(), 1700000000, &out.body)
            )
        );
    }

    #[test]
    fn slack_and_teams_bodies_keep_user_text_from_making_links_or_mentions() {
        let slack =
            String::from_utf8(build(&hook(WebhookKind::Slack), &ev(), "d", 0).body).unwrap();
        assert!(!slack.contains("<!channel>"));
        assert!(slack.contains("&lt;!channel&gt;"));
        assert!(slack.contains("a &amp; b"));
        let teams =
            String::from_utf8(build(&hook(WebhookKind::Teams), &ev(), "d", 0).body).unwrap();
        assert!(!teams.contains("](https://evil.test)"));
        assert!(teams.contains("application/vnd.microsoft.card.adaptive"));
        let out = build(&hook(WebhookKind::Teams), &ev(), "d", 0);
        assert!(!out.headers.iter().any(|(k, _)| *k == "x-twokey-signature"));
    }
}
