//! OpenID Connect sign-in (authorization code + PKCE + `state` + `nonce`) via `openidconnect`,
//! and the issuer's metadata and signing keys, shared with API bearer-token checks
//! ([`super::bearer`]).
//!
//! - Discovery happens on first use (and again after a day), not at start-up, so twokey starts
//!   while the issuer is briefly unreachable; sign-in then says so instead.
//! - The JWKS is cached. A token whose `kid` is not in the cache triggers one refetch, at most
//!   once a minute (by the app's clock), so rotation at the issuer is picked up and a flood of
//!   made-up key ids cannot turn twokey into a traffic generator against the issuer.
//! - Claims are mapped to a principal by configurable names (Entra ID defaults): stable id =
//!   (issuer, `sub`), Azure object id from `oid`, email from `email` / `preferred_username` /
//!   `upn`, groups from `groups` and app `roles`. A groups overage (`_claim_names`) yields no
//!   groups from that claim, and a notice that says why.

use std::sync::{Arc, RwLock};
use std::time::Duration as StdDuration;

use base64::Engine;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet,
    CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthType, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken,
    IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    SignatureVerificationError,
};
use serde_json::Value;
use time::{Duration, OffsetDateTime};

use crate::clock::Clock;
use crate::config::{ClaimNames, ClientAuthMethod, OidcConfig};
use crate::domain::principal::{Principal, is_plausible_email, normalize_email};
use crate::store::{PrincipalRow, Store, StoreResult};
use crate::timefmt;

/// Signature algorithms accepted on ID tokens and API bearer tokens.
///
/// SECURITY: asymmetric only. Never `none`, and never HS*: an HMAC "signed" with the issuer's
/// public key (which anyone can fetch) would otherwise verify.
pub const ALLOWED_ALGS: &[&str] = &["RS256", "PS256", "ES256", "EdDSA"];

/// A key id unknown to the cache triggers a refetch of the JWKS at most this often.
pub const JWKS_REFRESH_MIN_INTERVAL: Duration = Duration::seconds(60);
/// After a failed first fetch (no keys at all), the next try waits at least this long.
const JWKS_RETRY_WHEN_EMPTY: Duration = Duration::seconds(5);
/// Discovery is redone (lazily) after this long; on failure the old metadata stays.
const METADATA_MAX_AGE: Duration = Duration::hours(24);
/// How long a started sign-in may take before its callback is refused.
pub const LOGIN_TTL: Duration = Duration::minutes(10);
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Most groups kept from one token, and the longest group name.
const MAX_GROUPS: usize = 1000;
const MAX_GROUP_LEN: usize = 256;

/// The issuer could not be used (unreachable, bad metadata, no keys).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the identity provider cannot be used right now: {0}")]
pub struct Unavailable(pub String);

/// The issuer's signing keys, as `openidconnect` and `jsonwebtoken` each want them.
pub struct KeySet {
    pub oidc: CoreJsonWebKeySet,
    /// `(kid, key)` for every signing key with a `kid` that `jsonwebtoken` understands.
    pub jwt: Vec<(String, jsonwebtoken::jwk::Jwk)>,
    pub fetched_at: OffsetDateTime,
}

impl KeySet {
    /// Build from a JWKS document; keys that are not for signatures, or that either library
    /// cannot read, are skipped (one odd key must not take sign-in down).
    fn from_json(doc: &Value, fetched_at: OffsetDateTime) -> Self {
        let keys: Vec<&Value> = doc
            .get("keys")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter(|k| {
                        k.get("use")
                            .and_then(Value::as_str)
                            .is_none_or(|u| u == "sig")
                    })
                    .collect()
            })
            .unwrap_or_default();
        let oidc = serde_json::from_value(serde_json::json!({ "keys": keys }))
            .unwrap_or_else(|_| CoreJsonWebKeySet::new(vec![]));
        let jwt = keys
            .iter()
            .filter_map(|k| {
                let kid = k.get("kid")?.as_str()?.to_string();
                let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value((*k).clone()).ok()?;
                jsonwebtoken::DecodingKey::from_jwk(&jwk).ok()?;
                Some((kid, jwk))
            })
            .collect();
        Self {
            oidc,
            jwt,
            fetched_at,
        }
    }

    pub fn find(&self, kid: &str) -> Option<&jsonwebtoken::jwk::Jwk> {
        self.jwt.iter().find(|(k, _)| k == kid).map(|(_, j)| j)
    }
}

struct Discovered {
    metadata: CoreProviderMetadata,
    at: OffsetDateTime,
}

#[derive(Default)]
struct FetchState {
    /// When the JWKS was last asked for (successfully or not).
    last_attempt: Option<OffsetDateTime>,
}

/// The configured issuer: metadata, keys, and the sign-in flow.
pub struct Oidc {
    pub cfg: OidcConfig,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    discovered: tokio::sync::Mutex<Option<Arc<Discovered>>>,
    keys: RwLock<Option<Arc<KeySet>>>,
    fetch: tokio::sync::Mutex<FetchState>,
}

/// What the authorization request needs remembered until the callback.
pub struct LoginStart {
    /// Where to send the browser.
    pub url: url::Url,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// Who a verified token says the caller is, after claim mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub email: String,
    pub name: String,
    pub object_id: Option<String>,
    pub groups: Vec<String>,
    /// The claims the issuer left out for size (Entra's groups overage), by name.
    pub overage: Vec<String>,
}

impl Identity {
    /// What to tell the person about this sign-in, if anything.
    pub fn notice(&self) -> Option<String> {
        if self.overage.is_empty() {
            return None;
        }
        Some(format!(
            "Your sign-in did not carry your {} (the identity provider left them out because there \
             are too many: a groups overage), so twokey counts none of them. Approver and role \
             entries of the form group:… that depend on them do not match you. Ask the \
             administrator to give you an app role instead (see the README, \"Sign-in\").",
            self.overage.join(" and ")
        ))
    }
}

/// Why a claim set cannot become a principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsProblem {
    #[error("the token has no subject (sub)")]
    NoSubject,
    #[error("the token carries no usable email address in any of the configured claims")]
    NoEmail,
}

impl ClaimsProblem {
    pub fn code(self) -> &'static str {
        match self {
            Self::NoSubject => "no_subject",
            Self::NoEmail => "no_email",
        }
    }
}

/// Why an ID token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdTokenProblem {
    #[error("the token response carried no ID token")]
    Missing,
    #[error("the ID token is signed with an algorithm twokey does not accept")]
    AlgorithmRefused,
    #[error("the ID token is signed with a key the identity provider does not publish")]
    UnknownKey,
    #[error("the ID token's signature is not valid")]
    BadSignature,
    #[error("the ID token is for another application (audience)")]
    WrongAudience,
    #[error("the ID token is from another issuer")]
    WrongIssuer,
    #[error("the ID token has expired")]
    Expired,
    #[error("the ID token does not belong to this sign-in (nonce)")]
    NonceMismatch,
    #[error("the ID token is not valid")]
    Invalid,
}

impl IdTokenProblem {
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "id_token_missing",
            Self::AlgorithmRefused => "id_token_alg_refused",
            Self::UnknownKey => "id_token_unknown_key",
            Self::BadSignature => "id_token_bad_signature",
            Self::WrongAudience => "id_token_wrong_audience",
            Self::WrongIssuer => "id_token_wrong_issuer",
            Self::Expired => "id_token_expired",
            Self::NonceMismatch => "id_token_nonce_mismatch",
            Self::Invalid => "id_token_invalid",
        }
    }

    fn from_error(e: &ClaimsVerificationError) -> Self {
        use ClaimsVerificationError as C;
        use SignatureVerificationError as S;
        match e {
            C::Expired(_) => Self::Expired,
            C::InvalidAudience(_) => Self::WrongAudience,
            C::InvalidIssuer(_) => Self::WrongIssuer,
            C::InvalidNonce(_) => Self::NonceMismatch,
            C::SignatureVerification(S::NoMatchingKey) => Self::UnknownKey,
            C::SignatureVerification(
                S::DisallowedAlg(_) | S::UnsupportedAlg(_) | S::NoSignature,
            ) => Self::AlgorithmRefused,
            C::SignatureVerification(_) => Self::BadSignature,
            _ => Self::Invalid,
        }
    }
}

/// Why a callback did not sign anybody in. `code()` goes to the audit log; the message to the
/// page. Neither ever contains a token or a code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginFailure {
    #[error("the identity provider did not sign you in ({0})")]
    ProviderError(String),
    #[error("this sign-in was not started in this browser, or was already used")]
    StateMismatch,
    #[error("this sign-in took too long; start again")]
    Expired,
    #[error("the answer came from another identity provider than the one configured")]
    IssuerMismatch,
    #[error("the identity provider refused to complete the sign-in ({0})")]
    CodeExchange(String),
    #[error("{0}")]
    IdToken(IdTokenProblem),
    #[error("{0}")]
    Claims(ClaimsProblem),
    /// The detail goes to the log, not to the page.
    #[error("twokey cannot reach the identity provider right now; try again in a minute")]
    Unavailable(Unavailable),
}

impl LoginFailure {
    pub fn code(&self) -> &'static str {
        match self {
            Self::ProviderError(_) => "provider_error",
            Self::StateMismatch => "state_mismatch",
            Self::Expired => "login_expired",
            Self::IssuerMismatch => "issuer_mismatch",
            Self::CodeExchange(_) => "code_exchange_failed",
            Self::IdToken(p) => p.code(),
            Self::Claims(p) => p.code(),
            Self::Unavailable(_) => "issuer_unavailable",
        }
    }
}

fn to_chrono(t: OffsetDateTime) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()).unwrap_or_default()
}

impl Oidc {
    pub fn new(cfg: OidcConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // SECURITY: no redirects — metadata, keys and tokens come from the URLs the
            // issuer names, and a redirect must not lead the server somewhere else (SSRF).
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(StdDuration::from_secs(5))
            .timeout(StdDuration::from_secs(15))
            .user_agent(concat!("twokey/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            cfg,
            http,
            clock,
            discovered: tokio::sync::Mutex::new(None),
            keys: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
        })
    }

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// The issuer's metadata, discovered on first use.
    async fn metadata(&self) -> Result<Arc<Discovered>, Unavailable> {
        let mut guard = self.discovered.lock().await;
        let now = self.now();
        if let Some(d) = guard.as_ref()
            && d.at + METADATA_MAX_AGE > now
        {
            return Ok(d.clone());
        }
        let issuer = IssuerUrl::new(self.cfg.issuer.clone())
            .map_err(|e| Unavailable(format!("issuer URL: {e}")))?;
        match CoreProviderMetadata::discover_async(issuer, &self.http).await {
            Ok(metadata) => {
                // The JWKS fetched with the metadata seeds the key cache.
                let doc = serde_json::to_value(metadata.jwks()).unwrap_or(Value::Null);
                let keys = Arc::new(KeySet::from_json(&doc, now));
                *self.keys.write().expect("keys lock") = Some(keys);
                self.fetch.lock().await.last_attempt = Some(now);
                let d = Arc::new(Discovered { metadata, at: now });
                *guard = Some(d.clone());
                tracing::info!(issuer = %self.cfg.issuer, "OpenID Connect discovery done");
                Ok(d)
            }
            Err(e) => {
                let msg = discovery_error(&e);
                tracing::warn!(issuer = %self.cfg.issuer, error = %msg, "OpenID Connect discovery failed");
                match guard.as_ref() {
                    // Stale but usable beats none.
                    Some(d) => Ok(d.clone()),
                    None => Err(Unavailable(msg)),
                }
            }
        }
    }

    /// Discover now (at start-up), logging rather than failing.
    pub async fn warm_up(&self) {
        let _ = self.metadata().await;
    }

    /// The cached keys (fetching them if there are none yet).
    pub async fn keys(&self) -> Result<Arc<KeySet>, Unavailable> {
        if let Some(k) = self.keys.read().expect("keys lock").clone() {
            return Ok(k);
        }
        self.metadata().await?;
        if let Some(k) = self.keys.read().expect("keys lock").clone() {
            return Ok(k);
        }
        self.refresh_keys().await;
        self.keys
            .read()
            .expect("keys lock")
            .clone()
            .ok_or_else(|| Unavailable("no signing keys".into()))
    }

    /// A token named a `kid` that the cache does not hold: refetch the JWKS unless that was
    /// done less than a minute ago. Returns the keys to look in again (possibly the same).
    pub async fn refresh_keys(&self) -> Option<Arc<KeySet>> {
        let Ok(d) = self.metadata().await else {
            return self.keys.read().expect("keys lock").clone();
        };
        // One fetch at a time; whoever waited here looks at the fresh result instead.
        let mut fetch = self.fetch.lock().await;
        let now = self.now();
        let current = self.keys.read().expect("keys lock").clone();
        let min_gap = if current.is_some() {
            JWKS_REFRESH_MIN_INTERVAL
        } else {
            JWKS_RETRY_WHEN_EMPTY
        };
        // SECURITY: at most one refetch a minute, whatever key ids tokens make up.
        if fetch.last_attempt.is_some_and(|t| now - t < min_gap) {
            return current;
        }
        fetch.last_attempt = Some(now);
        match self.fetch_jwks(d.metadata.jwks_uri().url().clone()).await {
            Ok(doc) => {
                let keys = Arc::new(KeySet::from_json(&doc, now));
                tracing::info!(
                    keys = keys.jwt.len(),
                    "identity provider signing keys refreshed"
                );
                *self.keys.write().expect("keys lock") = Some(keys.clone());
                Some(keys)
            }
            Err(e) => {
                tracing::warn!(error = %e, "fetching the identity provider's signing keys failed");
                current
            }
        }
    }

    async fn fetch_jwks(&self, url: url::Url) -> Result<Value, String> {
        let mut resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_JWKS_BYTES {
                return Err("the JWKS document is too large".into());
            }
        }
        serde_json::from_slice(&body).map_err(|e| format!("the JWKS is not JSON: {e}"))
    }

    fn client(
        &self,
        d: &Discovered,
    ) -> CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    > {
        let client = CoreClient::from_provider_metadata(
            d.metadata.clone(),
            ClientId::new(self.cfg.client_id.clone()),
            self.cfg
                .client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.expose().to_string())),
        )
        .set_redirect_uri(RedirectUrl::from_url(self.cfg.redirect_url.clone()));
        match self.cfg.client_auth {
            ClientAuthMethod::Post => client.set_auth_type(AuthType::RequestBody),
            ClientAuthMethod::Basic => client.set_auth_type(AuthType::BasicAuth),
        }
    }

    /// Build the authorization request: fresh `state`, `nonce` and PKCE (S256) verifier.
    pub async fn begin_login(&self) -> Result<LoginStart, Unavailable> {
        let d = self.metadata().await?;
        let client = self.client(&d);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        // `openid` is always sent by the library.
        for s in self.cfg.scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
        Ok(LoginStart {
            url,
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Redeem the code (with the PKCE verifier) and verify the ID token: signature (allowed
    /// algorithms, the issuer's keys), issuer, audience, expiry and nonce. Then map the claims.
    pub async fn finish_login(
        &self,
        code: &str,
        nonce: &str,
        pkce_verifier: &str,
    ) -> Result<Identity, LoginFailure> {
        let d = self.metadata().await.map_err(LoginFailure::Unavailable)?;
        let client = self.client(&d);
        let request = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| LoginFailure::Unavailable(Unavailable(e.to_string())))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()));
        let response = request
            .request_async(&self.http)
            .await
            .map_err(|e| LoginFailure::CodeExchange(token_error(&e)))?;
        let id_token = openidconnect::TokenResponse::id_token(&response)
            .ok_or(LoginFailure::IdToken(IdTokenProblem::Missing))?;
        let nonce = Nonce::new(nonce.to_string());
        let keys = self.keys().await.map_err(LoginFailure::Unavailable)?;
        let claims = match self.verify_id_token(id_token, &keys, &nonce) {
            Err(IdTokenProblem::UnknownKey) => {
                // The issuer may have rotated its keys since we fetched them.
                let keys = self.refresh_keys().await.unwrap_or(keys);
                self.verify_id_token(id_token, &keys, &nonce)
            }
            other => other,
        }
        .map_err(LoginFailure::IdToken)?;
        map_claims(&claims, &self.cfg.claims, &self.cfg.issuer).map_err(LoginFailure::Claims)
    }

    fn verify_id_token(
        &self,
        token: &CoreIdToken,
        keys: &KeySet,
        nonce: &Nonce,
    ) -> Result<Value, IdTokenProblem> {
        let clock = self.clock.clone();
        let issuer =
            IssuerUrl::new(self.cfg.issuer.clone()).map_err(|_| IdTokenProblem::Invalid)?;
        // SECURITY: a *public*-client verifier, so the client secret is never an HMAC key, and
        // the algorithm allow-list has no HS* and no `none` either. The library checks the
        // issuer, that our client id is an audience (and no untrusted other audience is), the
        // expiry (by the app's clock) and the nonce.
        let verifier = CoreIdTokenVerifier::new_public_client(
            ClientId::new(self.cfg.client_id.clone()),
            issuer,
            keys.oidc.clone(),
        )
        .set_allowed_algs([
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            CoreJwsSigningAlgorithm::RsaSsaPssSha256,
            CoreJwsSigningAlgorithm::EcdsaP256Sha256,
            CoreJwsSigningAlgorithm::EdDsa,
        ])
        .set_time_fn(move || to_chrono(clock.now()));
        token.claims(&verifier, nonce).map_err(|e| {
            tracing::info!(error = %e, "ID token refused");
            IdTokenProblem::from_error(&e)
        })?;
        // The payload was verified above; read every claim from it for the configurable
        // mapping (oid, groups, roles, _claim_names …).
        payload_json(&token.to_string()).ok_or(IdTokenProblem::Invalid)
    }
}

/// The JSON payload of a compact JWS (no verification: call only on a verified token).
pub fn payload_json(compact: &str) -> Option<Value> {
    let payload = compact.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn discovery_error<E: std::error::Error>(e: &openidconnect::DiscoveryError<E>) -> String {
    use openidconnect::DiscoveryError as D;
    match e {
        D::Request(e) => format!("request failed: {e}"),
        D::Response(status, _, _) => format!("HTTP {status}"),
        D::Parse(e) => format!("bad metadata: {e}"),
        D::Validation(e) => format!("metadata does not fit the configured issuer: {e}"),
        other => other.to_string(),
    }
}

fn token_error<RE: std::error::Error, T: openidconnect::ErrorResponse>(
    e: &RequestTokenError<RE, T>,
) -> String {
    match e {
        RequestTokenError::ServerResponse(r) => {
            // The OAuth error code only (e.g. invalid_grant); descriptions may echo input.
            serde_json::to_value(r)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(clean_code))
                .unwrap_or_else(|| "error".into())
        }
        RequestTokenError::Request(_) => "the token endpoint could not be reached".into(),
        RequestTokenError::Parse(_, _) => "the token response could not be read".into(),
        RequestTokenError::Other(_) => "unexpected token response".into(),
    }
}

/// An OAuth error code as something safe to show and store: `[A-Za-z0-9_.-]`, at most 64.
pub fn clean_code(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect()
}

fn str_claim<'a>(claims: &'a Value, name: &str) -> Option<&'a str> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Map verified claims to an identity, by the configured claim names.
pub fn map_claims(
    claims: &Value,
    names: &ClaimNames,
    issuer: &str,
) -> Result<Identity, ClaimsProblem> {
    let subject = str_claim(claims, "sub")
        .filter(|s| s.len() <= 255)
        .ok_or(ClaimsProblem::NoSubject)?
        .to_string();
    // SECURITY: an email the issuer itself calls unverified is not an identity. (The email
    // still only is what the issuer says: `user:` entries trust it, which is why the README
    // recommends `oid:` entries and app roles for approvers.)
    let email_unverified = claims.get("email_verified") == Some(&Value::Bool(false))
        || claims.get("email_verified") == Some(&Value::String("false".into()));
    let email = names
        .email
        .iter()
        .filter(|n| !(n.as_str() == "email" && email_unverified))
        .filter_map(|n| str_claim(claims, n))
        .find(|e| is_plausible_email(e))
        .ok_or(ClaimsProblem::NoEmail)?
        .to_string();
    let name = names
        .name
        .iter()
        .filter_map(|n| str_claim(claims, n))
        .next()
        .map(|n| n.chars().filter(|c| !c.is_control()).take(200).collect())
        .unwrap_or_else(|| email.clone());
    let object_id = str_claim(claims, &names.object_id).and_then(|o| {
        // Only a GUID is an Azure object id; anything else would never match `oid:` entries
        // and must not reach an Azure role assignment.
        uuid::Uuid::parse_str(o)
            .ok()
            .map(|u| u.hyphenated().to_string())
    });
    // Entra ID: more groups than fit in a token → `_claim_names: {"groups": "src1"}` (and, in
    // some flows, `hasgroups: true`) instead of the list.
    let claim_names = claims.get("_claim_names").and_then(Value::as_object);
    let has_groups_flag = claims.get("hasgroups") == Some(&Value::Bool(true));
    let mut overage = Vec::new();
    let mut groups: Vec<String> = Vec::new();
    for n in &names.groups {
        // SECURITY: fail closed — an overage claim is treated as *no* groups from it, never
        // fetched from elsewhere or guessed.
        if claim_names.is_some_and(|m| m.contains_key(n)) || (n == "groups" && has_groups_flag) {
            overage.push(n.clone());
            continue;
        }
        let values: Vec<&str> = match claims.get(n) {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(s)) => s.split_whitespace().collect(),
            _ => vec![],
        };
        for v in values {
            let v = v.trim();
            if v.is_empty() || v.len() > MAX_GROUP_LEN || v.chars().any(char::is_control) {
                continue;
            }
            if groups.len() < MAX_GROUPS && !groups.iter().any(|g| g == v) {
                groups.push(v.to_string());
            }
        }
    }
    Ok(Identity {
        issuer: issuer.to_string(),
        subject,
        email,
        name,
        object_id,
        groups,
        overage,
    })
}

/// Record (or refresh) the principal for `identity` and return it, with the token's groups.
/// The stable id is (issuer, subject); email, name and object id follow the latest token.
pub async fn principal_for(
    store: &Store,
    identity: &Identity,
    now: OffsetDateTime,
) -> StoreResult<Principal> {
    let existing = store
        .find_principal(&identity.issuer, &identity.subject)
        .await?;
    let id = match existing {
        Some(p)
            if p.email == identity.email
                && p.name == identity.name
                && p.azure_object_id == identity.object_id =>
        {
            p.principal_id
        }
        _ => {
            store
                .upsert_principal(&PrincipalRow {
                    principal_id: crate::service::new_id_pub(),
                    issuer: identity.issuer.clone(),
                    subject: identity.subject.clone(),
                    email: identity.email.clone(),
                    email_normalized: normalize_email(&identity.email),
                    name: identity.name.clone(),
                    azure_object_id: identity.object_id.clone(),
                    created_at: timefmt::fmt(now),
                })
                .await?
        }
    };
    Ok(Principal {
        id,
        email: identity.email.clone(),
        name: identity.name.clone(),
        azure_object_id: identity.object_id.clone(),
        groups: identity.groups.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Result<Identity, ClaimsProblem> {
        map_claims(&v, &ClaimNames::default(), "https://issuer.example")
    }

    #[test]
    fn entra_claims_map_to_a_principal() {
        let id = map(json!({
            "sub": "s1", "oid": "A11CE000-0000-4000-8000-000000000001",
            "preferred_username": "alice@contoso.com", "name": "Alice",
            "groups": ["g1", "g2", "g1"], "roles": ["Twokey.Approver"],
        }))
        .unwrap();
        assert_eq!(id.subject, "s1");
        assert_eq!(id.email, "alice@contoso.com");
        assert_eq!(id.name, "Alice");
        assert_eq!(
            id.object_id.as_deref(),
            Some("a11ce000-0000-4000-8000-000000000001")
        );
        assert_eq!(id.groups, vec!["g1", "g2", "Twokey.Approver"]);
        assert!(id.overage.is_empty());
        assert!(id.notice().is_none());
    }

    #[test]
    fn email_falls_back_in_order_and_skips_unverified_or_junk() {
        let id = map(json!({"sub": "s", "email": "not-an-email", "upn": "u@x.io"})).unwrap();
        assert_eq!(id.email, "u@x.io");
        let id = map(
            json!({"sub": "s", "email": "e@x.io", "email_verified": false,
                            "preferred_username": "p@x.io"}),
        )
        .unwrap();
        assert_eq!(id.email, "p@x.io");
        assert_eq!(
            map(json!({"sub": "s", "name": "n"})),
            Err(ClaimsProblem::NoEmail)
        );
        assert_eq!(
            map(json!({"email": "e@x.io"})),
            Err(ClaimsProblem::NoSubject)
        );
    }

    #[test]
    fn groups_overage_means_no_groups_from_that_claim() {
        let id = map(json!({
            "sub": "s", "email": "e@x.io",
            "_claim_names": {"groups": "src1"},
            "_claim_sources": {"src1": {"endpoint": "https://graph.microsoft.com/..."}},
            "roles": ["Twokey.Approver"],
        }))
        .unwrap();
        assert_eq!(id.groups, vec!["Twokey.Approver"]);
        assert_eq!(id.overage, vec!["groups"]);
        assert!(id.notice().unwrap().contains("overage"));
        let id = map(json!({"sub": "s", "email": "e@x.io", "hasgroups": true, "groups": ["x"]}))
            .unwrap();
        assert!(id.groups.is_empty());
    }

    #[test]
    fn a_non_guid_object_id_is_ignored_and_names_are_configurable() {
        let names = ClaimNames {
            email: vec!["mail".into()],
            groups: vec!["memberOf".into()],
            object_id: "objectid".into(),
            name: vec!["display".into()],
        };
        let id = map_claims(
            &json!({"sub": "s", "mail": "m@x.io", "memberOf": "a b", "objectid": "nope",
                    "display": "D", "email": "other@x.io", "groups": ["ignored"]}),
            &names,
            "i",
        )
        .unwrap();
        assert_eq!(id.email, "m@x.io");
        assert_eq!(id.groups, vec!["a", "b"]);
        assert_eq!(id.object_id, None);
        assert_eq!(id.name, "D");
    }

    #[test]
    fn key_sets_skip_what_they_cannot_use() {
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "sig", "use": "sig", "alg": "RS256", "n": "AQAB", "e": "AQAB"},
            {"kty": "weird", "kid": "w"},
        ]});
        let k = KeySet::from_json(&doc, OffsetDateTime::UNIX_EPOCH);
        assert!(k.find("sig").is_some());
        assert!(k.find("enc").is_none());
        assert!(k.find("w").is_none());
    }

    #[test]
    fn oauth_error_codes_are_cleaned() {
        assert_eq!(clean_code("invalid_grant"), "invalid_grant");
        assert_eq!(clean_code("<script>x"), "scriptx");
    }
}
