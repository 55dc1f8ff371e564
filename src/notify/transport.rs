//! Where mail goes: an SMTP relay (lettre, pooled, with timeouts), or — for `twokey demo` —
//! one `.eml` file per message in an outbox directory.

use std::path::PathBuf;
use std::time::Duration;

use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// A failed delivery; the job retries it with backoff.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SendError(pub String);

pub enum MailTransport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Outbox(PathBuf),
    /// No transport configured: every mail job fails (and is retried) with this reason.
    None,
}

impl MailTransport {
    /// Build from a validated `smtp_url` (see `config::smtp_url_for_lettre`) or an outbox dir.
    pub fn new(
        smtp_url: Option<&str>,
        outbox: Option<&PathBuf>,
        timeout: Duration,
    ) -> Result<Self, String> {
        if let Some(url) = smtp_url {
            let t = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                .map_err(|e| format!("mail.smtp_url: {e}"))?
                .timeout(Some(timeout))
                .pool_config(
                    PoolConfig::new()
                        .max_size(4)
                        .idle_timeout(Duration::from_secs(60)),
                )
                .build();
            return Ok(Self::Smtp(t));
        }
        Ok(match outbox {
            Some(dir) => Self::Outbox(dir.clone()),
            None => Self::None,
        })
    }

    /// Send one message. For the outbox the file is named after the job, so a retry overwrites
    /// the same message instead of adding a second one.
    pub async fn send(&self, job_id: &str, msg: Message) -> Result<String, SendError> {
        match self {
            Self::Smtp(t) => {
                let resp = t
                    .send(msg)
                    .await
                    .map_err(|e| SendError(format!("SMTP: {e}")))?;
                Ok(format!("smtp: {}", resp.code()))
            }
            Self::Outbox(dir) => {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| SendError(format!("outbox {}: {e}", dir.display())))?;
                let path = dir.join(format!("{job_id}.eml"));
                let tmp = dir.join(format!(".{job_id}.eml.tmp"));
                tokio::fs::write(&tmp, msg.formatted())
                    .await
                    .map_err(|e| SendError(format!("writing {}: {e}", tmp.display())))?;
                tokio::fs::rename(&tmp, &path)
                    .await
                    .map_err(|e| SendError(format!("renaming {}: {e}", path.display())))?;
                Ok(path.display().to_string())
            }
            Self::None => Err(SendError(
                "no mail transport is configured (mail.smtp_url or mail.outbox_dir)".into(),
            )),
        }
    }
}
