//! The ARM client: bearer tokens from a [`Credential`], ARM error bodies mapped to typed errors,
//! `429`/`5xx` and transport failures retried honouring `Retry-After` (up to a configured wait),
//! long-running operations polled through `Azure-AsyncOperation` or `Location` (CONTRACTS.md §5).
//!
//! It never follows redirects, always has timeouts and a user agent, and never logs a token.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::credential::Credential;
use crate::config::AzureConfig;

/// What can go wrong talking to Azure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ArmError {
    /// ARM answered with an error body (`{"error":{"code","message"}}`).
    #[error("Azure answered {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        /// `x-ms-request-id`, for a support case.
        request_id: Option<String>,
    },
    /// No answer: timeout, connection refused or reset (after the retries).
    #[error("Azure could not be reached: {0}")]
    Transport(String),
    /// No token.
    #[error("Azure sign-in failed: {0}")]
    Auth(String),
    /// A long-running operation did not finish in time, or ended badly.
    #[error("Azure operation: {0}")]
    Operation(String),
}

impl ArmError {
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
    /// Worth trying again later (throttling, server errors, no answer, a slow operation).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Api { status, .. } => *status == 429 || *status >= 500 || *status == 401,
            Self::Transport(_) | Self::Operation(_) => true,
            Self::Auth(_) => true,
        }
    }
}

/// A successful (2xx) or expected-error answer.
#[derive(Debug, Clone)]
pub struct ArmResponse {
    pub status: u16,
    pub body: Value,
    pub async_operation: Option<String>,
    pub location: Option<String>,
    pub retry_after: Option<Duration>,
}

/// The retry and timing knobs (from `[azure]`).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub max_retry_wait: Duration,
    pub lro_timeout: Duration,
}

/// A short description of a transport error without any URL query (no secrets there, but
/// the message should say what happened, not where).
pub fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else if e.is_request() {
        "the connection broke (reset or closed)"
    } else {
        "request failed"
    };
    let mut src = String::new();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = cur {
        src = s.to_string();
        cur = s.source();
    }
    if src.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {src}")
    }
}

/// The HTTP client every Azure call uses.
pub fn http_client(cfg: &AzureConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        // SECURITY: never follow a redirect: a bearer token must only go to the configured
        // endpoint, and ARM does not redirect API calls.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(cfg.timeout)
        .connect_timeout(cfg.connect_timeout)
        .user_agent(concat!("twokey/", env!("CARGO_PKG_VERSION")))
        .https_only(false)
        .min_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .map_err(|e| e.to_string())
}

/// ARM at one endpoint, as one identity, optionally with auxiliary tokens for other tenants.
#[derive(Clone)]
pub struct ArmClient {
    http: reqwest::Client,
    base: url::Url,
    credential: Arc<Credential>,
    aux: Vec<Arc<Credential>>,
    pub retry: RetryPolicy,
}

impl ArmClient {
    pub fn new(
        http: reqwest::Client,
        base: url::Url,
        credential: Arc<Credential>,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            http,
            base,
            credential,
            aux: Vec::new(),
            retry,
        }
    }

    /// The same client, sending `x-ms-authorization-auxiliary` with tokens of `aux`
    /// (CONTRACTS.md §1.5: at most three).
    pub fn with_aux(mut self, aux: Vec<Arc<Credential>>) -> Self {
        self.aux = aux.into_iter().take(3).collect();
        self
    }

    pub fn credential(&self) -> &Arc<Credential> {
        &self.credential
    }

    /// `path` is an ARM path (`/subscriptions/…`), `query` the query pairs (api-version first).
    pub fn url(&self, path: &str, query: &[(&str, &str)]) -> url::Url {
        let mut u = self.base.clone();
        let base_path = u.path().trim_end_matches('/').to_string();
        u.set_path(&format!("{base_path}{path}"));
        if !query.is_empty() {
            let mut q = u.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        u
    }

    /// A URL ARM handed us (poll URL, nextLink), resolved against the endpoint.
    ///
    /// SECURITY: only URLs on the configured endpoint are followed, so the bearer token is
    /// never sent to another host because a response said so.
    pub fn follow_url(&self, raw: &str) -> Result<url::Url, ArmError> {
        let u = self
            .base
            .join(raw)
            .map_err(|e| ArmError::Operation(format!("bad URL from Azure ({e})")))?;
        if u.scheme() != self.base.scheme()
            || u.host_str() != self.base.host_str()
            || u.port_or_known_default() != self.base.port_or_known_default()
        {
            return Err(ArmError::Operation(format!(
                "Azure pointed to another host ({}); not followed",
                u.host_str().unwrap_or("?")
            )));
        }
        Ok(u)
    }

    pub async fn get(&self, url: url::Url) -> Result<ArmResponse, ArmError> {
        self.send(Method::GET, url, None).await
    }
    pub async fn put(&self, url: url::Url, body: &Value) -> Result<ArmResponse, ArmError> {
        self.send(Method::PUT, url, Some(body)).await
    }
    pub async fn post(&self, url: url::Url, body: &Value) -> Result<ArmResponse, ArmError> {
        self.send(Method::POST, url, Some(body)).await
    }
    pub async fn delete(&self, url: url::Url) -> Result<ArmResponse, ArmError> {
        self.send(Method::DELETE, url, None).await
    }

    /// Send one call, retrying throttling, server errors and lost connections. Every call
    /// twokey makes is safe to repeat: reads, and writes to names derived from the request.
    pub async fn send(
        &self,
        method: Method,
        url: url::Url,
        body: Option<&Value>,
    ) -> Result<ArmResponse, ArmError> {
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            let result = self.send_once(method.clone(), url.clone(), body).await;
            let (err, wait) = match result {
                Ok(r) => return Ok(r),
                Err((e, retry_after)) => (e, retry_after),
            };
            // A rejected token: fetch a new one once, then report.
            if err.status() == Some(401) && !refreshed {
                refreshed = true;
                self.credential.invalidate().await;
                for a in &self.aux {
                    a.invalidate().await;
                }
                continue;
            }
            let retryable = match &err {
                ArmError::Api { status, .. } => {
                    *status == 429 || matches!(*status, 500 | 502 | 503 | 504)
                }
                ArmError::Transport(_) => true,
                _ => false,
            };
            if !retryable || attempt >= self.retry.max_retries {
                return Err(err);
            }
            let wait = match wait {
                // SECURITY (availability): honour the server's wait, but not beyond what the
                // operator allows in place; a longer one ends this run and the job retries.
                Some(w) if w > self.retry.max_retry_wait => return Err(err),
                Some(w) => w,
                None => {
                    Duration::from_millis(500u64 << attempt.min(6)).min(self.retry.max_retry_wait)
                }
            };
            tracing::warn!(%method, path = %url.path(), attempt, wait_ms = wait.as_millis() as u64, error = %err, "ARM call failed; retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn send_once(
        &self,
        method: Method,
        url: url::Url,
        body: Option<&Value>,
    ) -> Result<ArmResponse, (ArmError, Option<Duration>)> {
        let token = self.credential.token().await.map_err(|e| (e, None))?;
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(token.expose())
            .header("accept", "application/json");
        if !self.aux.is_empty() {
            let mut parts = Vec::new();
            for a in &self.aux {
                let t = a.token().await.map_err(|e| (e, None))?;
                parts.push(format!("Bearer {}", t.expose()));
            }
            req = req.header("x-ms-authorization-auxiliary", parts.join(", "));
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let started = std::time::Instant::now();
        let resp = req.send().await.map_err(|e| {
            crate::metrics::arm_call(method.as_str(), None, started.elapsed());
            (ArmError::Transport(describe(&e)), None)
        })?;
        let status = resp.status();
        crate::metrics::arm_call(method.as_str(), Some(status.as_u16()), started.elapsed());
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let async_operation = header("azure-asyncoperation");
        let location = header("location");
        let request_id = header("x-ms-request-id");
        let correlation = header("x-ms-correlation-request-id");
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| (ArmError::Transport(describe(&e)), None))?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_success() {
            tracing::debug!(%method, path = %url.path(), status = status.as_u16(), request_id, "ARM call");
            return Ok(ArmResponse {
                status: status.as_u16(),
                body,
                async_operation,
                location,
                retry_after,
            });
        }
        let code = body["error"]["code"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                status
                    .canonical_reason()
                    .unwrap_or("Error")
                    .replace(' ', "")
            });
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        // A 404 is how twokey learns a name is still free; only the rest is worth a log line.
        if status == StatusCode::NOT_FOUND {
            tracing::debug!(%method, path = %url.path(), code, request_id, "ARM 404");
        } else {
            tracing::info!(%method, path = %url.path(), status = status.as_u16(), code, request_id, correlation, "ARM error");
        }
        let err = ArmError::Api {
            status: status.as_u16(),
            code,
            message,
            request_id,
        };
        let wait = if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            retry_after
        } else {
            None
        };
        Err((err, wait))
    }

    /// Follow a long-running operation started by `first` until it is done (CONTRACTS.md §5).
    /// Returns the final body (the status body, or the resource from a `Location` poll).
    pub async fn wait_lro(&self, first: &ArmResponse) -> Result<Value, ArmError> {
        let (url, is_async_op) = match (&first.async_operation, &first.location) {
            (Some(a), _) => (self.follow_url(a)?, true),
            (None, Some(l)) if first.status == 202 => (self.follow_url(l)?, false),
            _ => return Ok(first.body.clone()),
        };
        let deadline = tokio::time::Instant::now() + self.retry.lro_timeout;
        let mut wait = first.retry_after;
        let mut polls = 0u32;
        loop {
            let pause = wait
                .unwrap_or_else(|| Duration::from_secs(1u64 << polls.min(4)))
                .min(self.retry.max_retry_wait);
            if tokio::time::Instant::now() + pause > deadline {
                return Err(ArmError::Operation(format!(
                    "still running after {} s ({polls} polls)",
                    self.retry.lro_timeout.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            polls += 1;
            let r = self.get(url.clone()).await?;
            wait = r.retry_after;
            if is_async_op {
                match r.body["status"].as_str().unwrap_or("") {
                    "Succeeded" => return Ok(r.body),
                    s @ ("Failed" | "Canceled") => {
                        return Err(ArmError::Operation(format!(
                            "{s}: {} {}",
                            r.body["error"]["code"].as_str().unwrap_or(""),
                            r.body["error"]["message"].as_str().unwrap_or("")
                        )));
                    }
                    _ => continue,
                }
            } else if r.status != 202 {
                return Ok(r.body);
            }
        }
    }

    /// GET a list and follow `nextLink` (bounded).
    pub async fn list(&self, url: url::Url) -> Result<Vec<Value>, ArmError> {
        let mut out = Vec::new();
        let mut next = Some(url);
        let mut pages = 0;
        while let Some(u) = next.take() {
            let r = self.get(u).await?;
            if let Some(items) = r.body["value"].as_array() {
                out.extend(items.iter().cloned());
            }
            pages += 1;
            if pages >= 50 {
                break;
            }
            if let Some(n) = r.body["nextLink"].as_str() {
                next = Some(self.follow_url(n)?);
            }
        }
        Ok(out)
    }
}
