//! Tokens for Azure Resource Manager: client secret, workload identity (a federated token
//! file exchanged for an Entra token) and managed identity (IMDS or App Service's identity
//! endpoint). A token is cached until shortly before it expires. Tokens are [`Secret`]s and are
//! never logged; only the token endpoint's error code and description are.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use super::client::ArmError;
use crate::config::{CredentialConfig, CredentialKind};
use crate::secret::Secret;

/// A token is refreshed this long before it expires, so a call never starts with one that
/// runs out in flight.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// The ARM audience for a given endpoint: `https://management.azure.com` → that URL, `/.default`.
fn audience(arm_endpoint: &url::Url) -> String {
    arm_endpoint.as_str().trim_end_matches('/').to_string()
}

struct Cached {
    token: Secret,
    refresh_at: Instant,
}

/// One identity in one tenant, with its token cache.
pub struct Credential {
    cfg: CredentialConfig,
    http: reqwest::Client,
    authority_host: url::Url,
    audience: String,
    cache: Mutex<Option<Cached>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// Entra sends a number; the metadata services send a string.
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    expires_on: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct TokenError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

fn number(v: &Option<serde_json::Value>) -> Option<u64> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Credential {
    pub fn new(
        cfg: CredentialConfig,
        http: reqwest::Client,
        authority_host: url::Url,
        arm_endpoint: &url::Url,
    ) -> Self {
        Self {
            cfg,
            http,
            authority_host,
            audience: audience(arm_endpoint),
            cache: Mutex::new(None),
        }
    }

    pub fn tenant_id(&self) -> &str {
        &self.cfg.tenant_id
    }

    pub fn kind(&self) -> CredentialKind {
        self.cfg.kind
    }

    pub fn client_id(&self) -> Option<&str> {
        self.cfg.client_id.as_deref()
    }

    /// A valid ARM token: the cached one while it is not near expiry, else a new one.
    pub async fn token(&self) -> Result<Secret, ArmError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let (token, lifetime) = self.fetch().await?;
        let refresh_in = lifetime.saturating_sub(REFRESH_MARGIN);
        *cache = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + refresh_in,
        });
        Ok(token)
    }

    /// Forget the cached token (after ARM answered 401 for it).
    pub async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }

    async fn fetch(&self) -> Result<(Secret, Duration), ArmError> {
        let started = std::time::SystemTime::now();
        let resp = match self.cfg.kind {
            CredentialKind::ClientSecret => {
                let secret = self
                    .cfg
                    .client_secret
                    .as_ref()
                    .ok_or_else(|| ArmError::Auth("azure.client_secret is not set".into()))?;
                let form = [
                    ("grant_type", "client_credentials"),
                    (
                        "client_id",
                        self.cfg.client_id.as_deref().unwrap_or_default(),
                    ),
                    ("scope", &format!("{}/.default", self.audience)),
                    ("client_secret", secret.expose()),
                ];
                self.http.post(self.token_url()?).form(&form).send().await
            }
            CredentialKind::WorkloadIdentity => {
                let path = self.cfg.federated_token_file.as_ref().ok_or_else(|| {
                    ArmError::Auth("azure.federated_token_file is not set".into())
                })?;
                // Read every time: the kubelet rotates the projected token file.
                let assertion = Secret::new(
                    tokio::fs::read_to_string(path)
                        .await
                        .map_err(|e| {
                            ArmError::Auth(format!("cannot read {}: {e}", path.display()))
                        })?
                        .trim()
                        .to_string(),
                );
                let form = [
                    ("grant_type", "client_credentials"),
                    (
                        "client_id",
                        self.cfg.client_id.as_deref().unwrap_or_default(),
                    ),
                    ("scope", &format!("{}/.default", self.audience)),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", assertion.expose()),
                ];
                self.http.post(self.token_url()?).form(&form).send().await
            }
            CredentialKind::ManagedIdentity => {
                let resource = format!("{}/", self.audience);
                let app_service = std::env::var("IDENTITY_ENDPOINT")
                    .ok()
                    .zip(std::env::var("IDENTITY_HEADER").ok());
                if let Some((endpoint, header)) = app_service {
                    let mut q = vec![
                        ("resource", resource.as_str()),
                        ("api-version", "2019-08-01"),
                    ];
                    if let Some(id) = self.cfg.client_id.as_deref() {
                        q.push(("client_id", id));
                    }
                    self.http
                        .get(endpoint)
                        .query(&q)
                        .header("X-IDENTITY-HEADER", header)
                        .send()
                        .await
                } else {
                    let mut url = self.cfg.managed_identity_endpoint.clone();
                    url.set_path("/metadata/identity/oauth2/token");
                    let mut q = vec![
                        ("api-version", "2018-02-01"),
                        ("resource", resource.as_str()),
                    ];
                    if let Some(id) = self.cfg.client_id.as_deref() {
                        q.push(("client_id", id));
                    }
                    self.http
                        .get(url)
                        .query(&q)
                        .header("Metadata", "true")
                        .send()
                        .await
                }
            }
        }
        .map_err(|e| {
            ArmError::Transport(format!("token endpoint: {}", super::client::describe(&e)))
        })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| ArmError::Transport(format!("token endpoint: {e}")))?;
        if !status.is_success() {
            let err: TokenError = serde_json::from_slice(&body).unwrap_or_default();
            // The description names the AADSTS code and says what is wrong; it holds no secret.
            return Err(ArmError::Auth(format!(
                "token request for tenant {} failed ({}): {} {}",
                self.cfg.tenant_id,
                status.as_u16(),
                err.error,
                err.error_description.lines().next().unwrap_or_default()
            )));
        }
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| ArmError::Auth(format!("token response is not understood: {e}")))?;
        let lifetime = match (number(&t.expires_in), number(&t.expires_on)) {
            (Some(s), _) => Duration::from_secs(s),
            (None, Some(on)) => {
                let now = started
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                Duration::from_secs(on.saturating_sub(now))
            }
            // Unknown lifetime: use it for one minute at most.
            (None, None) => REFRESH_MARGIN + Duration::from_secs(60),
        };
        Ok((Secret::new(t.access_token), lifetime))
    }

    fn token_url(&self) -> Result<url::Url, ArmError> {
        let mut u = self.authority_host.clone();
        // SECURITY: the tenant goes into the path; refuse anything that could change it.
        if !self
            .cfg
            .tenant_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(ArmError::Auth("tenant id has unexpected characters".into()));
        }
        let base = u.path().trim_end_matches('/').to_string();
        u.set_path(&format!("{base}/{}/oauth2/v2.0/token", self.cfg.tenant_id));
        Ok(u)
    }
}
