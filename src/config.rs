//! Configuration: defaults → TOML file → `TWOKEY_…` environment, secrets from the environment
//! or from `*_file` paths, all validated before anything listens. `twokey check-config` prints
//! every problem with the key it belongs to, not just the first.
//!
//! Environment names are the key path in upper case with `_` between the parts:
//! `database.url` ← `TWOKEY_DATABASE_URL`, `server.public_url` ← `TWOKEY_SERVER_PUBLIC_URL`.
//! Guards are lists and come from the file only.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::domain::arm::{ResourceGuardId, VaultPattern};
use crate::domain::policy::{
    ApproverSignIn, BACKUP_MUA_OPERATOR_ROLE, ElevationBackend, GuardPolicy, Subject,
};
use crate::domain::principal::is_plausible_email;
use crate::secret::{Secret, redact_url};

/// The top-level sections; an env var `TWOKEY_<SECTION>_<KEY>` maps to `<section>.<key>`.
const SECTIONS: &[&str] = &[
    "server", "database", "auth", "mail", "review", "jobs", "azure", "audit", "alerts", "posture",
];

// ---- raw shapes: what the file and environment may contain -------------------------------

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    pub database: RawDatabase,
    pub auth: RawAuth,
    pub mail: RawMail,
    pub review: RawReview,
    pub jobs: RawJobs,
    pub azure: RawAzure,
    pub audit: RawAudit,
    pub alerts: RawAlerts,
    pub webhooks: Vec<RawWebhook>,
    pub posture: RawPosture,
    pub guards: Vec<RawGuard>,
}

/// `[alerts]`: Azure Monitor intake, the suspicious-activity rules, the daily digest.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAlerts {
    /// `[[alerts.hooks]]`: one per Azure Monitor action group (or per team), each with its secret.
    pub hooks: Vec<RawHook>,
    /// Who hears of an Azure alert that no guard's vaults cover; unset = every guard's watchers.
    pub fallback_watchers: Option<Vec<String>>,
    /// Webhooks (by name) that hear of such an alert too.
    pub fallback_webhooks: Vec<String>,
    /// The zone for business hours, "a day" and the digest's time (IANA name, e.g. Europe/Berlin).
    pub time_zone: Option<String>,
    pub business_hours: Option<RawBusinessHours>,
    /// Refused review links within `token_burst_window` that raise an alert.
    pub token_burst_count: Option<u32>,
    pub token_burst_window: Option<String>,
    /// More requests than this by one requester within a day (24 hours) raise an alert; 0 = off.
    pub max_requests_per_day: Option<u32>,
    /// How far back a backup-failure alert makes a destructive request suspicious.
    pub failure_lookback: Option<String>,
    /// Mail watchers a daily digest.
    pub digest: Option<bool>,
    /// When (HH:MM in `time_zone`) the digest goes out.
    pub digest_time: Option<String>,
    /// Whole-request timeout for one webhook delivery.
    pub webhook_timeout: Option<String>,
    /// Allow `http://` webhook URLs to loopback addresses (tests only; never in production).
    pub allow_http_loopback: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawHook {
    pub name: String,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
}

/// `[alerts.business_hours]`: requests outside these hours raise an alert.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawBusinessHours {
    /// Weekdays as mon, tue, wed, thu, fri, sat, sun; default mon–fri.
    pub days: Option<Vec<String>>,
    /// HH:MM, default 08:00.
    pub start: Option<String>,
    /// HH:MM, default 18:00 (exclusive).
    pub end: Option<String>,
}

/// `[[webhooks]]`: an outbound destination. Guards name the ones they use.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawWebhook {
    pub name: String,
    /// `json` (signed generic JSON), `teams` (Workflows / incoming webhook), `slack`.
    pub kind: String,
    /// A secret: Slack and Teams URLs carry their credential.
    pub url: Option<String>,
    pub url_file: Option<PathBuf>,
    /// HMAC key for `json` webhooks.
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// Which events go here; default every event (`["*"]`).
    pub events: Option<Vec<String>>,
}

/// `[posture]`: the daily posture report (`twokey posture`, the Posture page).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPosture {
    /// Run the report once a day (and alert watchers when findings change).
    pub enabled: Option<bool>,
    /// The time of day (UTC, `HH:MM`) of the daily run.
    pub daily_at: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAudit {
    /// PKCS#8 PEM Ed25519 private key that signs `twokey audit checkpoint`.
    pub checkpoint_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    pub bind: Option<String>,
    pub public_url: Option<String>,
    pub sign_in_rate_limit: Option<u32>,
    pub api_rate_limit: Option<u32>,
    /// Serve `/metrics` on this address only (not on `bind`).
    pub metrics_bind: Option<String>,
    /// How long a stop (SIGTERM, Ctrl-C) waits for in-flight requests and the current jobs.
    pub shutdown_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDatabase {
    pub url: Option<String>,
    pub url_file: Option<PathBuf>,
    pub max_connections: Option<u32>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAuth {
    pub mode: Option<String>,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    /// `client_secret_post` (default) or `client_secret_basic`.
    pub client_auth_method: Option<String>,
    /// Scopes asked for at sign-in; default `["openid", "profile", "email"]`.
    pub scopes: Option<Vec<String>>,
    /// The `aud` that API bearer tokens must carry; unset = no bearer tokens.
    pub api_audience: Option<String>,
    /// Which claims carry what (defaults fit Microsoft Entra ID).
    pub claims: RawClaims,
    pub session_idle: Option<String>,
    pub session_absolute: Option<String>,
    pub dev_users: Vec<RawDevUser>,
    pub auditors: Vec<String>,
    pub admins: Vec<String>,
}

/// `[auth.claims]`: claim names, each env-settable as `TWOKEY_AUTH_CLAIMS_<KEY>`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawClaims {
    pub email: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
    pub object_id: Option<String>,
    pub name: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDevUser {
    pub email: String,
    pub name: String,
    pub object_id: Option<String>,
    pub groups: Vec<String>,
    pub description: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawMail {
    pub from: Option<String>,
    pub outbox_dir: Option<PathBuf>,
    pub smtp_url: Option<String>,
    pub smtp_url_file: Option<PathBuf>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawReview {
    pub keys: Vec<RawKey>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawKey {
    pub kid: String,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawJobs {
    pub enabled: Option<bool>,
    pub concurrency: Option<usize>,
    pub lease: Option<String>,
    pub poll_interval: Option<String>,
    pub sweep_interval: Option<String>,
}

/// `[azure]`: how twokey reaches Azure Resource Manager for the `azure-pim` and `azure-rbac`
/// elevation backends. Only checked when a guard uses one of them.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAzure {
    /// The broker identity's home tenant (GUID or `contoso.onmicrosoft.com`).
    pub tenant_id: Option<String>,
    /// `client-secret` | `workload-identity` | `managed-identity`.
    pub credential: Option<String>,
    /// The app registration's client id (managed identity: a user-assigned identity's client id).
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    /// Workload identity: the projected service-account token (AKS sets AZURE_FEDERATED_TOKEN_FILE).
    pub federated_token_file: Option<PathBuf>,
    /// Managed identity on a VM/VMSS: the instance metadata service.
    pub managed_identity_endpoint: Option<String>,
    pub arm_endpoint: Option<String>,
    pub authority_host: Option<String>,
    /// Whole-request timeout for one ARM or token call.
    pub timeout: Option<String>,
    pub connect_timeout: Option<String>,
    /// How often a throttled (429) or failing (5xx) call is tried again inside one job run.
    pub max_retries: Option<u32>,
    /// The longest `Retry-After` twokey waits in place; a longer one ends the job run and the
    /// job retries later.
    pub max_retry_wait: Option<String>,
    /// How long a long-running operation is polled before the job tries again later.
    pub lro_timeout: Option<String>,
    /// How often the reconciler compares grants in the database with Azure.
    pub reconcile_interval: Option<String>,
    /// Microsoft Graph, for names in the posture report (optional `Directory.Read.All`).
    pub graph_endpoint: Option<String>,
    /// Look principal ids up in Microsoft Graph for the posture report.
    pub resolve_names: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawGuard {
    pub name: String,
    pub resource_guard_id: String,
    pub vaults: Vec<String>,
    pub approvers: Vec<String>,
    pub requesters: Option<Vec<String>>,
    pub watchers: Vec<String>,
    pub required_approvals: Option<u32>,
    pub distinct_groups: Option<bool>,
    pub operation_approvals: BTreeMap<String, u32>,
    pub max_duration: Option<String>,
    pub default_duration: Option<String>,
    pub pending_deadline: Option<String>,
    pub elevation: Option<String>,
    pub role_definition_id: Option<String>,
    pub approver_sign_in: Option<String>,
    /// The guard's tenant, when it differs from `azure.tenant_id` (Microsoft's recommended
    /// set-up keeps the guard in a separate tenant).
    pub tenant_id: Option<String>,
    /// The credential kind for this guard's tenant (default: `azure.credential`).
    pub credential: Option<String>,
    /// The client id for this guard's tenant (default: `azure.client_id`).
    pub client_id: Option<String>,
    /// Webhooks (by `[[webhooks]]` name) that hear of this guard's events.
    pub webhooks: Vec<String>,
}

// ---- validated shapes ----------------------------------------------------------------------

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub mail: MailConfig,
    pub review: ReviewConfig,
    pub jobs: JobsConfig,
    pub audit: AuditConfig,
    pub posture: PostureConfig,
    pub guards: Vec<GuardPolicy>,
    /// Present when a guard uses an Azure elevation backend.
    pub azure: Option<AzureConfig>,
    pub alerts: AlertsConfig,
    pub webhooks: Vec<WebhookConfig>,
    /// Per guard name: the webhooks it sends to.
    pub guard_webhooks: BTreeMap<String, Vec<String>>,
}

/// The validated `[alerts]` section.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub hooks: Vec<AlertHook>,
    pub fallback_watchers: Option<Vec<String>>,
    pub fallback_webhooks: Vec<String>,
    pub time_zone: chrono_tz::Tz,
    pub business_hours: Option<crate::domain::alerts::BusinessHours>,
    pub token_burst_count: u32,
    pub token_burst_window: Duration,
    pub max_requests_per_day: u32,
    pub failure_lookback: Duration,
    /// Minutes after local midnight when the digest goes out; `None`: no digest.
    pub digest_at: Option<u32>,
    pub webhook_timeout: Duration,
    pub allow_http_loopback: bool,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            hooks: vec![],
            fallback_watchers: None,
            fallback_webhooks: vec![],
            time_zone: chrono_tz::UTC,
            business_hours: None,
            token_burst_count: 5,
            token_burst_window: Duration::from_secs(600),
            max_requests_per_day: 10,
            failure_lookback: Duration::from_secs(24 * 3600),
            digest_at: None,
            webhook_timeout: Duration::from_secs(10),
            allow_http_loopback: false,
        }
    }
}

/// One Azure Monitor intake hook.
#[derive(Debug, Clone)]
pub struct AlertHook {
    pub name: String,
    pub secret: Secret,
}

/// What an outbound webhook speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookKind {
    Json,
    Teams,
    Slack,
}

impl WebhookKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "json" => Some(Self::Json),
            "teams" => Some(Self::Teams),
            "slack" => Some(Self::Slack),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Teams => "teams",
            Self::Slack => "slack",
        }
    }
}

/// One outbound webhook, validated. The URL is a secret (Slack and Teams URLs are credentials).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub name: String,
    pub kind: WebhookKind,
    pub url: Secret,
    pub secret: Option<Secret>,
    pub events: Vec<String>,
}

/// How an Azure credential gets its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// An app registration's client secret (client-credentials grant).
    ClientSecret,
    /// A federated token from a file exchanged for an Entra token (AKS workload identity).
    WorkloadIdentity,
    /// The host's managed identity (IMDS, or App Service's identity endpoint).
    ManagedIdentity,
}

impl CredentialKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "client-secret" => Some(Self::ClientSecret),
            "workload-identity" => Some(Self::WorkloadIdentity),
            "managed-identity" => Some(Self::ManagedIdentity),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecret => "client-secret",
            Self::WorkloadIdentity => "workload-identity",
            Self::ManagedIdentity => "managed-identity",
        }
    }
}

/// One identity in one tenant.
#[derive(Debug, Clone)]
pub struct CredentialConfig {
    pub kind: CredentialKind,
    pub tenant_id: String,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub federated_token_file: Option<PathBuf>,
    pub managed_identity_endpoint: url::Url,
}

/// The validated `[azure]` section, with each Azure guard's credential resolved.
#[derive(Debug, Clone)]
pub struct AzureConfig {
    /// The broker's home-tenant credential (vault-side reads).
    pub home: CredentialConfig,
    pub arm_endpoint: url::Url,
    pub authority_host: url::Url,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_retries: u32,
    pub max_retry_wait: Duration,
    pub lro_timeout: Duration,
    pub reconcile_interval: Duration,
    /// Microsoft Graph (`https://graph.microsoft.com`), for principal names in posture reports.
    pub graph_endpoint: url::Url,
    /// Whether to ask Graph for names at all (a 403 degrades to ids either way).
    pub resolve_names: bool,
    /// Per guard name: the credential for calls at the guard's scope.
    pub guards: BTreeMap<String, CredentialConfig>,
}

impl AzureConfig {
    /// The credential for calls at `guard`'s scope (the home one when not overridden).
    pub fn credential_for(&self, guard: &str) -> &CredentialConfig {
        self.guards.get(guard).unwrap_or(&self.home)
    }
}

/// The validated `[posture]` section.
#[derive(Debug, Clone)]
pub struct PostureConfig {
    pub enabled: bool,
    /// Minutes after midnight UTC of the daily run.
    pub daily_at_minutes: u32,
}

impl Default for PostureConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            daily_at_minutes: 6 * 60,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct AuditConfig {
    /// Signs audit checkpoints (`audit.checkpoint_key_file`); none means no checkpoints.
    pub checkpoint_key: Option<crate::audit::checkpoint::CheckpointKey>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    pub public_url: url::Url,
    /// Sign-in and review-link requests per minute per client address.
    pub sign_in_rate_limit: u32,
    /// API requests per minute per client address.
    pub api_rate_limit: u32,
    /// Where `/metrics` is served: `None` on `bind`, else only on this address.
    pub metrics_bind: Option<SocketAddr>,
    /// How long a stop waits for in-flight requests and jobs before leaving them.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: Secret,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Pick a configured person, no password: `twokey demo` only, loopback only.
    Dev,
    Oidc,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Set exactly when `mode` is `Oidc`.
    pub oidc: Option<OidcConfig>,
    pub session_idle: Duration,
    pub session_absolute: Duration,
    pub dev_users: Vec<DevUser>,
    pub auditors: Vec<Subject>,
    pub admins: Vec<Subject>,
}

/// How twokey authenticates itself at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    /// `client_id` and `client_secret` in the form body (RFC 6749 §2.3.1, second form).
    Post,
    /// HTTP Basic with the URL-encoded id and secret.
    Basic,
}

/// OpenID Connect sign-in and API bearer tokens, validated.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer identifier exactly as configured (it must equal the `iss` of every token).
    pub issuer: String,
    pub client_id: String,
    /// `None`: a public client (PKCE only), for issuers that allow it.
    pub client_secret: Option<Secret>,
    pub client_auth: ClientAuthMethod,
    pub scopes: Vec<String>,
    /// `{server.public_url}/auth/callback`.
    pub redirect_url: url::Url,
    /// The audience API bearer tokens must carry; `None` refuses bearer tokens.
    pub api_audience: Option<String>,
    pub claims: ClaimNames,
}

/// Which claims of an ID token or access token carry the principal's attributes. The first
/// claim in a list that holds a usable value wins (for groups: all listed claims are merged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimNames {
    pub email: Vec<String>,
    pub groups: Vec<String>,
    pub object_id: String,
    pub name: Vec<String>,
}

impl Default for ClaimNames {
    /// Microsoft Entra ID's names.
    fn default() -> Self {
        Self {
            email: vec!["email".into(), "preferred_username".into(), "upn".into()],
            groups: vec!["groups".into(), "roles".into()],
            object_id: "oid".into(),
            name: vec!["name".into()],
        }
    }
}

/// A person the dev sign-in offers.
#[derive(Debug, Clone, Serialize)]
pub struct DevUser {
    pub email: String,
    pub name: String,
    pub object_id: Option<String>,
    pub groups: Vec<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MailConfig {
    pub from: String,
    /// Write each message as an `.eml` file here (the demo's outbox).
    pub outbox_dir: Option<PathBuf>,
    /// The relay, in lettre's URL form (`tls=none` already turned into a plain `smtp://`).
    pub smtp_url: Option<Secret>,
    /// Connect and command timeout for the relay.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ReviewConfig {
    /// Signing keys for review links; the first signs, all verify (rotation).
    pub keys: Vec<ReviewKey>,
}

#[derive(Debug, Clone)]
pub struct ReviewKey {
    pub kid: String,
    pub secret: Secret,
}

#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Run the background worker in this process.
    pub enabled: bool,
    /// Jobs run at once by this process's worker.
    pub concurrency: usize,
    /// How long a claimed job is ours before another worker may take it over.
    pub lease: Duration,
    /// Longest wait between looks at the jobs table when nothing woke the worker.
    pub poll_interval: Duration,
    /// How often pending deadlines are checked.
    pub sweep_interval: Duration,
}

/// One thing wrong with the configuration, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found; the configuration is unusable while there is one.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the configuration has {} problem(s):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Tables inside a section; `TWOKEY_AUTH_CLAIMS_EMAIL` → `auth.claims.email`.
const SUBSECTIONS: &[(&str, &str)] = &[("auth", "claims"), ("alerts", "business_hours")];

/// Map `database_url` → `database.url`: the first `_` after a known section becomes a dot
/// (and, for a known sub-table, the first `_` after it too).
fn env_key(key: &str) -> String {
    for s in SECTIONS {
        if let Some(rest) = key.strip_prefix(s).and_then(|r| r.strip_prefix('_'))
            && !rest.is_empty()
        {
            for (sec, sub) in SUBSECTIONS {
                if sec == s
                    && let Some(leaf) = rest.strip_prefix(sub).and_then(|r| r.strip_prefix('_'))
                    && !leaf.is_empty()
                {
                    return format!("{s}.{sub}.{leaf}");
                }
            }
            return format!("{s}.{rest}");
        }
    }
    key.to_string()
}

impl RawConfig {
    /// Layer the file (if any) and the `TWOKEY_…` environment over `base`.
    pub fn load(base: RawConfig, file: Option<&Path>) -> Result<RawConfig, ConfigErrors> {
        let mut fig = Figment::from(Serialized::defaults(base));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigErrors(vec![Problem {
                    key: "--config".into(),
                    message: format!("{} does not exist", path.display()),
                }]));
            }
            fig = fig.merge(Toml::file(path));
        }
        let env = Env::prefixed("TWOKEY_")
            .filter(|k| {
                let k = k.as_str().to_ascii_lowercase();
                SECTIONS.iter().any(|s| k.starts_with(&format!("{s}_")))
            })
            .map(|k| env_key(&k.as_str().to_ascii_lowercase()).into());
        fig = fig.merge(env);
        fig.extract::<RawConfig>().map_err(|e| {
            ConfigErrors(
                e.into_iter()
                    .map(|e| Problem {
                        key: if e.path.is_empty() {
                            "(file)".into()
                        } else {
                            e.path.join(".")
                        },
                        message: e.kind.to_string(),
                    })
                    .collect(),
            )
        })
    }

    /// Validate everything and collect every problem.
    pub fn validate(mut self) -> Result<Config, ConfigErrors> {
        let mut p = Problems::default();

        let bind = self.server.bind.as_deref().unwrap_or("127.0.0.1:8080");
        let bind: SocketAddr = p
            .check("server.bind", bind.parse().map_err(|e| format!("{e}")))
            .unwrap_or_else(|| ([127, 0, 0, 1], 8080).into());
        let public_url = match &self.server.public_url {
            Some(u) => p.check(
                "server.public_url",
                url::Url::parse(u)
                    .map_err(|e| e.to_string())
                    .and_then(|u| match u.scheme() {
                        "http" | "https" if u.host().is_some() => Ok(u),
                        _ => Err("must be an http(s) URL with a host".into()),
                    }),
            ),
            None => url::Url::parse(&format!("http://{bind}")).ok(),
        }
        .unwrap_or_else(|| url::Url::parse("http://127.0.0.1:8080").expect("static url"));

        let sign_in_rate_limit = self.server.sign_in_rate_limit.unwrap_or(60);
        let api_rate_limit = self.server.api_rate_limit.unwrap_or(600);
        for (key, v) in [
            ("server.sign_in_rate_limit", sign_in_rate_limit),
            ("server.api_rate_limit", api_rate_limit),
        ] {
            if !(1..=1_000_000).contains(&v) {
                p.push(key, "must be between 1 and 1000000 requests per minute");
            }
        }
        let metrics_bind = self.server.metrics_bind.as_deref().and_then(|m| {
            p.check(
                "server.metrics_bind",
                m.parse::<SocketAddr>()
                    .map_err(|e| format!("`{m}` is not an address like 127.0.0.1:9090 ({e})")),
            )
        });
        if metrics_bind.is_some_and(|m| m == bind && m.port() != 0) {
            p.push("server.metrics_bind", "must differ from server.bind");
        }
        let shutdown_grace = p
            .duration(
                "server.shutdown_grace",
                self.server.shutdown_grace.as_deref(),
                "30s",
            )
            .unwrap_or(Duration::from_secs(30));
        if shutdown_grace > Duration::from_secs(3600) {
            p.push("server.shutdown_grace", "must be at most 1h");
        }
        let db_url = p.secret("database.url", self.database.url, self.database.url_file);
        let db_url = match db_url {
            Some(u) if u.expose().starts_with("sqlite:") || u.expose().starts_with("postgres") => {
                Some(u)
            }
            Some(u) => {
                p.push(
                    "database.url",
                    format!(
                        "`{}` is neither sqlite:… nor postgres://…",
                        redact_url(u.expose())
                    ),
                );
                None
            }
            None => {
                p.push(
                    "database.url",
                    "is required (sqlite://twokey.db or postgres://…)",
                );
                None
            }
        };
        // SQLite has one writer and serves one process: past 4 connections more only add
        // memory (each holds its prepared statements, page cache and thread; the footprint
        // bench measured 1.7 MB less after a load with 4 than with 8, at the same speed).
        // PostgreSQL runs its readers in the server, in parallel.
        let sqlite = db_url
            .as_ref()
            .is_some_and(|u| u.expose().starts_with("sqlite:"));
        let max_connections = self
            .database
            .max_connections
            .unwrap_or(if sqlite { 4 } else { 8 });
        if max_connections == 0 {
            p.push("database.max_connections", "must be at least 1");
        }

        let mode = match self.auth.mode.as_deref().unwrap_or("oidc") {
            "dev" => AuthMode::Dev,
            "oidc" => AuthMode::Oidc,
            other => {
                p.push("auth.mode", format!("`{other}` is not one of dev, oidc"));
                AuthMode::Oidc
            }
        };
        // SECURITY: the dev sign-in lets anyone be anyone; it only ever listens on loopback.
        if mode == AuthMode::Dev && !bind.ip().is_loopback() {
            p.push(
                "auth.mode",
                format!("`dev` sign-in refuses to listen on the non-loopback address {bind}"),
            );
        }
        let oidc = if mode == AuthMode::Oidc {
            validate_oidc(
                &mut p,
                &mut self.auth,
                self.server.public_url.is_some(),
                &public_url,
            )
        } else {
            None
        };
        let session_idle = p
            .duration("auth.session_idle", self.auth.session_idle.as_deref(), "8h")
            .unwrap_or(Duration::from_secs(8 * 3600));
        let session_absolute = p
            .duration(
                "auth.session_absolute",
                self.auth.session_absolute.as_deref(),
                "24h",
            )
            .unwrap_or(Duration::from_secs(24 * 3600));
        let mut dev_users = Vec::new();
        for (i, u) in self.auth.dev_users.into_iter().enumerate() {
            let key = format!("auth.dev_users[{i}]");
            if !is_plausible_email(&u.email) {
                p.push(
                    &format!("{key}.email"),
                    format!("`{}` is not an email", u.email),
                );
                continue;
            }
            if let Some(oid) = &u.object_id
                && uuid::Uuid::parse_str(oid).is_err()
            {
                p.push(&format!("{key}.object_id"), "must be a GUID");
            }
            dev_users.push(DevUser {
                name: if u.name.is_empty() {
                    u.email.clone()
                } else {
                    u.name
                },
                email: u.email,
                object_id: u.object_id,
                groups: u.groups,
                description: u.description,
            });
        }
        if mode == AuthMode::Dev && dev_users.is_empty() {
            p.push("auth.dev_users", "dev sign-in needs at least one person");
        }
        let auditors = p.subjects("auth.auditors", &self.auth.auditors);
        let admins = p.subjects("auth.admins", &self.auth.admins);

        let from = self
            .mail
            .from
            .unwrap_or_else(|| "twokey <twokey@localhost.localdomain>".into());
        if from.parse::<lettre::message::Mailbox>().is_err() {
            p.push("mail.from", format!("`{from}` is not a mailbox"));
        }
        let smtp_url = p
            .secret("mail.smtp_url", self.mail.smtp_url, self.mail.smtp_url_file)
            .and_then(|u| match smtp_url_for_lettre(u.expose()) {
                Ok(u) => Some(Secret::new(u)),
                Err(e) => {
                    p.push("mail.smtp_url", e);
                    None
                }
            });
        match (&smtp_url, &self.mail.outbox_dir) {
            (Some(_), Some(_)) => p.push(
                "mail.outbox_dir",
                "set either mail.smtp_url (deliver) or mail.outbox_dir (write .eml files), not both",
            ),
            // SECURITY: approvers learn of requests by mail; a twokey that cannot send any
            // would sit on requests silently. Refuse to start instead.
            (None, None) if p.0.iter().all(|x| x.key != "mail.smtp_url") => p.push(
                "mail.smtp_url",
                "is required (or mail.outbox_dir, to write each mail as a file)",
            ),
            _ => {}
        }
        let mail_timeout = p
            .duration("mail.timeout", self.mail.timeout.as_deref(), "15s")
            .unwrap_or(Duration::from_secs(15));

        let mut keys = Vec::new();
        for (i, k) in self.review.keys.into_iter().enumerate() {
            let key = format!("review.keys[{i}]");
            if k.kid.is_empty() || k.kid.len() > 64 || !k.kid.chars().all(|c| c.is_ascii_graphic())
            {
                p.push(
                    &format!("{key}.kid"),
                    "must be 1–64 printable ASCII characters",
                );
            }
            if let Some(secret) = p.secret(&format!("{key}.secret"), k.secret, k.secret_file) {
                if secret.expose().len() < 32 {
                    p.push(&format!("{key}.secret"), "must be at least 32 bytes");
                }
                keys.push(ReviewKey { kid: k.kid, secret });
            } else {
                p.push(&format!("{key}.secret"), "is required");
            }
        }
        if keys.is_empty() {
            p.push(
                "review.keys",
                "at least one signing key for review links is required",
            );
        }

        let concurrency = self.jobs.concurrency.unwrap_or(4);
        if !(1..=64).contains(&concurrency) {
            p.push("jobs.concurrency", "must be between 1 and 64");
        }
        let jobs = JobsConfig {
            enabled: self.jobs.enabled.unwrap_or(true),
            concurrency,
            lease: p
                .duration("jobs.lease", self.jobs.lease.as_deref(), "2m")
                .unwrap_or(Duration::from_secs(120)),
            poll_interval: p
                .duration(
                    "jobs.poll_interval",
                    self.jobs.poll_interval.as_deref(),
                    "1s",
                )
                .unwrap_or(Duration::from_secs(1)),
            sweep_interval: p
                .duration(
                    "jobs.sweep_interval",
                    self.jobs.sweep_interval.as_deref(),
                    "15s",
                )
                .unwrap_or(Duration::from_secs(15)),
        };

        let audit = AuditConfig {
            checkpoint_key: self.audit.checkpoint_key_file.as_deref().and_then(|path| {
                p.check(
                    "audit.checkpoint_key_file",
                    crate::audit::checkpoint::CheckpointKey::from_pem_file(path),
                )
            }),
        };

        let posture = PostureConfig {
            enabled: self.posture.enabled.unwrap_or(true),
            daily_at_minutes: match self.posture.daily_at.as_deref() {
                None => 6 * 60,
                Some(t) => p
                    .check("posture.daily_at", parse_time_of_day(t))
                    .unwrap_or(6 * 60),
            },
        };

        let mut guards: Vec<GuardPolicy> = Vec::new();
        let mut overrides = Vec::new();
        let mut guard_webhooks = BTreeMap::new();
        let (alerts, webhooks) = validate_alerts(&mut p, self.alerts, self.webhooks);
        for (i, g) in self.guards.iter().enumerate() {
            for (j, w) in g.webhooks.iter().enumerate() {
                if !webhooks.iter().any(|x| &x.name == w) {
                    p.push(
                        &format!("guards[{i}].webhooks[{j}]"),
                        format!("`{w}` is not the name of a [[webhooks]] entry"),
                    );
                }
            }
            guard_webhooks.insert(g.name.clone(), g.webhooks.clone());
        }
        for (i, g) in self.guards.into_iter().enumerate() {
            let o = GuardAzureOverride {
                index: i,
                name: g.name.clone(),
                tenant_id: g.tenant_id.clone(),
                credential: g.credential.clone(),
                client_id: g.client_id.clone(),
            };
            if let Some(g) = validate_guard(&mut p, i, g) {
                overrides.push((o, g.elevation));
                if guards.iter().any(|o| o.name == g.name) {
                    p.push(
                        &format!("guards[{i}].name"),
                        format!("`{}` is used twice", g.name),
                    );
                }
                guards.push(g);
            }
        }
        if guards.is_empty() {
            p.push("guards", "at least one guard is required");
        }
        let azure = validate_azure(&mut p, self.azure, &overrides);

        if !p.0.is_empty() {
            return Err(ConfigErrors(p.0));
        }
        Ok(Config {
            server: ServerConfig {
                bind,
                public_url,
                sign_in_rate_limit,
                api_rate_limit,
                metrics_bind,
                shutdown_grace,
            },
            database: DatabaseConfig {
                url: db_url.expect("checked above"),
                max_connections,
            },
            auth: AuthConfig {
                mode,
                oidc,
                session_idle,
                session_absolute,
                dev_users,
                auditors,
                admins,
            },
            mail: MailConfig {
                from,
                outbox_dir: self.mail.outbox_dir,
                smtp_url,
                timeout: mail_timeout,
            },
            review: ReviewConfig { keys },
            jobs,
            audit,
            posture,
            guards,
            azure,
            alerts,
            webhooks,
            guard_webhooks,
        })
    }
}

/// Check a name used in config and URLs: 1–64 letters, digits, `-` and `_`.
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// "HH:MM" → minutes after midnight.
fn clock_minutes(raw: &str) -> Result<u32, String> {
    let bad = || format!("`{raw}` is not a time like 08:00");
    let (h, m) = raw.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn validate_alerts(
    p: &mut Problems,
    a: RawAlerts,
    raw_webhooks: Vec<RawWebhook>,
) -> (AlertsConfig, Vec<WebhookConfig>) {
    let d = AlertsConfig::default();
    let allow_http_loopback = a.allow_http_loopback.unwrap_or(false);
    let mut hooks: Vec<AlertHook> = Vec::new();
    for (i, h) in a.hooks.into_iter().enumerate() {
        let key = format!("alerts.hooks[{i}]");
        if !plain_name(&h.name) {
            p.push(
                &format!("{key}.name"),
                "must be 1–64 characters of letters, digits, - and _",
            );
        } else if hooks.iter().any(|x| x.name == h.name) {
            p.push(
                &format!("{key}.name"),
                format!("`{}` is used twice", h.name),
            );
        }
        match p.secret(&format!("{key}.secret"), h.secret, h.secret_file) {
            // SECURITY: the secret is all that authenticates Azure's calls (an action group
            // cannot sign them): long enough that it cannot be guessed, URL-safe so it can sit
            // in the webhook URL.
            Some(s) if s.expose().len() < 32 => {
                p.push(&format!("{key}.secret"), "must be at least 32 characters")
            }
            Some(s)
                if !s
                    .expose()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
            {
                p.push(
                    &format!("{key}.secret"),
                    "must be letters, digits, - and _ only (it goes into a URL); e.g. `openssl rand -hex 32`",
                )
            }
            Some(secret) => hooks.push(AlertHook {
                name: h.name,
                secret,
            }),
            None => p.push(&format!("{key}.secret"), "is required"),
        }
    }
    let mut webhooks: Vec<WebhookConfig> = Vec::new();
    for (i, w) in raw_webhooks.into_iter().enumerate() {
        let key = format!("webhooks[{i}]");
        let before = p.0.len();
        if !plain_name(&w.name) {
            p.push(
                &format!("{key}.name"),
                "must be 1–64 characters of letters, digits, - and _",
            );
        } else if webhooks.iter().any(|x| x.name == w.name) {
            p.push(
                &format!("{key}.name"),
                format!("`{}` is used twice", w.name),
            );
        }
        let kind = WebhookKind::parse(&w.kind);
        if kind.is_none() {
            p.push(
                &format!("{key}.kind"),
                format!("`{}` is not one of json, teams, slack", w.kind),
            );
        }
        let url = p.secret(&format!("{key}.url"), w.url, w.url_file);
        match &url {
            None => p.push(&format!("{key}.url"), "is required"),
            // SECURITY: the URL is never echoed (Slack and Teams URLs are credentials).
            Some(u) => {
                if let Err(e) = webhook_url_ok(u.expose(), allow_http_loopback) {
                    p.push(&format!("{key}.url"), e);
                }
            }
        }
        let secret = p.secret(&format!("{key}.secret"), w.secret, w.secret_file);
        match (kind, &secret) {
            (Some(WebhookKind::Json), None) => p.push(
                &format!("{key}.secret"),
                "is required for kind = \"json\" (it signs every delivery)",
            ),
            (Some(WebhookKind::Json), Some(s)) if s.expose().len() < 32 => {
                p.push(&format!("{key}.secret"), "must be at least 32 characters")
            }
            (Some(WebhookKind::Teams | WebhookKind::Slack), Some(_)) => p.push(
                &format!("{key}.secret"),
                "only json webhooks are signed; Teams and Slack authenticate by their URL",
            ),
            _ => {}
        }
        let events = w.events.unwrap_or_else(|| vec!["*".into()]);
        for (j, e) in events.iter().enumerate() {
            if !crate::domain::alerts::is_known_event_filter(e) {
                p.push(
                    &format!("{key}.events[{j}]"),
                    format!(
                        "`{e}` is not an event name ({})",
                        crate::domain::alerts::EVENT_FILTERS.join(", ")
                    ),
                );
            }
        }
        if p.0.len() == before {
            webhooks.push(WebhookConfig {
                name: w.name,
                kind: kind.expect("checked"),
                url: url.expect("checked"),
                secret,
                events,
            });
        }
    }
    for (j, w) in a.fallback_webhooks.iter().enumerate() {
        if !webhooks.iter().any(|x| &x.name == w) {
            p.push(
                &format!("alerts.fallback_webhooks[{j}]"),
                format!("`{w}` is not the name of a [[webhooks]] entry"),
            );
        }
    }
    if let Some(list) = &a.fallback_watchers {
        for (j, w) in list.iter().enumerate() {
            if !is_plausible_email(w) {
                p.push(
                    &format!("alerts.fallback_watchers[{j}]"),
                    format!("`{w}` is not an email"),
                );
            }
        }
    }
    let time_zone = match a.time_zone.as_deref() {
        None => chrono_tz::UTC,
        Some(z) => match z.parse::<chrono_tz::Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                p.push(
                    "alerts.time_zone",
                    format!("`{z}` is not an IANA time zone like Europe/Berlin or UTC"),
                );
                chrono_tz::UTC
            }
        },
    };
    let business_hours = a.business_hours.map(|b| {
        let days = b.days.unwrap_or_else(|| {
            ["mon", "tue", "wed", "thu", "fri"]
                .map(String::from)
                .to_vec()
        });
        let mut mask = [false; 7];
        for (j, day) in days.iter().enumerate() {
            match crate::domain::alerts::weekday_index(day) {
                Some(k) => mask[k] = true,
                None => p.push(
                    &format!("alerts.business_hours.days[{j}]"),
                    format!("`{day}` is not one of mon, tue, wed, thu, fri, sat, sun"),
                ),
            }
        }
        let start = p
            .check(
                "alerts.business_hours.start",
                clock_minutes(b.start.as_deref().unwrap_or("08:00")),
            )
            .unwrap_or(8 * 60);
        let end = p
            .check(
                "alerts.business_hours.end",
                clock_minutes(b.end.as_deref().unwrap_or("18:00")),
            )
            .unwrap_or(18 * 60);
        if start >= end {
            p.push(
                "alerts.business_hours.end",
                "must be later than start (hours across midnight are not supported)",
            );
        }
        crate::domain::alerts::BusinessHours {
            days: mask,
            start_minute: start,
            end_minute: end,
            time_zone,
        }
    });
    let token_burst_count = a.token_burst_count.unwrap_or(d.token_burst_count);
    if !(2..=1000).contains(&token_burst_count) {
        p.push("alerts.token_burst_count", "must be between 2 and 1000");
    }
    let token_burst_window = p
        .duration(
            "alerts.token_burst_window",
            a.token_burst_window.as_deref(),
            "10m",
        )
        .unwrap_or(d.token_burst_window);
    let failure_lookback = p
        .duration(
            "alerts.failure_lookback",
            a.failure_lookback.as_deref(),
            "24h",
        )
        .unwrap_or(d.failure_lookback);
    let digest_at = if a.digest.unwrap_or(false) {
        p.check(
            "alerts.digest_time",
            clock_minutes(a.digest_time.as_deref().unwrap_or("08:00")),
        )
    } else {
        None
    };
    let webhook_timeout = p
        .duration(
            "alerts.webhook_timeout",
            a.webhook_timeout.as_deref(),
            "10s",
        )
        .unwrap_or(d.webhook_timeout);
    (
        AlertsConfig {
            hooks,
            fallback_watchers: a.fallback_watchers,
            fallback_webhooks: a.fallback_webhooks,
            time_zone,
            business_hours,
            token_burst_count,
            token_burst_window,
            max_requests_per_day: a.max_requests_per_day.unwrap_or(d.max_requests_per_day),
            failure_lookback,
            digest_at,
            webhook_timeout,
            allow_http_loopback,
        },
        webhooks,
    )
}

/// SECURITY: webhook deliveries carry what happened to backups; https only, except plain http
/// to a loopback address when `alerts.allow_http_loopback` says so (tests). No credentials in
/// the URL's user part (they would go out in clear in logs of proxies), no fragments.
pub fn webhook_url_ok(raw: &str, allow_http_loopback: bool) -> Result<url::Url, String> {
    let u = url::Url::parse(raw).map_err(|_| "is not a URL".to_string())?;
    if u.host().is_none() {
        return Err("has no host".into());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not carry a user or password".into());
    }
    match u.scheme() {
        "https" => Ok(u),
        "http" if allow_http_loopback && is_loopback_url(&u) => Ok(u),
        "http" if is_loopback_url(&u) => Err(
            "must be https (plain http to loopback needs alerts.allow_http_loopback = true)".into(),
        ),
        _ => Err("must be an https URL".into()),
    }
}

/// `HH:MM` (UTC) → minutes after midnight (`posture.daily_at`).
fn parse_time_of_day(t: &str) -> Result<u32, String> {
    let bad = || format!("`{t}` is not a time of day like 06:00 (UTC)");
    let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// Check an SMTP URL and turn it into the form lettre takes.
///
/// `smtps://host:465` is implicit TLS; `smtp://host:587?tls=required` STARTTLS (recommended);
/// `?tls=opportunistic` STARTTLS when offered; `?tls=none` plain. Credentials go in the URL's
/// user and password (percent-encoded), which is why the whole URL is a secret.
///
/// SECURITY: plain SMTP to anything but this machine must be asked for with `tls=none`; a
/// missing `tls` parameter towards a remote relay is refused rather than sent in clear text.
pub fn smtp_url_for_lettre(raw: &str) -> Result<String, String> {
    let mut u = url::Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("has no host")?
        .to_string();
    let tls = u
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.to_string());
    if u.query_pairs().any(|(k, _)| k != "tls") {
        return Err("only the `tls` query parameter is understood".into());
    }
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match (u.scheme(), tls.as_deref()) {
        ("smtps", None) => {}
        ("smtps", Some(_)) => return Err("smtps:// is always TLS; drop the tls parameter".into()),
        ("smtp", Some("required" | "opportunistic")) => {}
        ("smtp", Some("none")) => u.set_query(None),
        ("smtp", None) if loopback => {}
        ("smtp", None) => {
            return Err(format!(
                "say how to protect mail to {host}: ?tls=required (STARTTLS, recommended), ?tls=opportunistic, or ?tls=none"
            ));
        }
        ("smtp", Some(other)) => {
            return Err(format!(
                "tls={other} is not one of required, opportunistic, none"
            ));
        }
        (other, _) => return Err(format!("scheme `{other}` is not smtp or smtps")),
    }
    Ok(u.to_string())
}

/// A URL whose host is a loopback address or `localhost` (plain http is allowed there only).
fn is_loopback_url(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn validate_oidc(
    p: &mut Problems,
    auth: &mut RawAuth,
    public_url_given: bool,
    public_url: &url::Url,
) -> Option<OidcConfig> {
    let before = p.0.len();
    let issuer = match auth.issuer.take() {
        None => {
            p.push("auth.issuer", "is required with auth.mode = \"oidc\"");
            None
        }
        Some(i) => match url::Url::parse(&i) {
            Err(e) => {
                p.push("auth.issuer", format!("`{i}` is not a URL: {e}"));
                None
            }
            // SECURITY: discovery, keys and tokens come from the issuer; over plain http anyone
            // on the path could sign people in as anybody. http is for a local test issuer only.
            Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && is_loopback_url(&u)) => {
                if u.query().is_some() || u.fragment().is_some() {
                    p.push("auth.issuer", "must not have a query or fragment");
                }
                Some(i)
            }
            Ok(_) => {
                p.push(
                    "auth.issuer",
                    format!("`{i}` must be an https URL (http only for a loopback test issuer)"),
                );
                None
            }
        },
    };
    let client_id = match auth.client_id.take() {
        Some(c) if !c.trim().is_empty() => Some(c.trim().to_string()),
        _ => {
            p.push("auth.client_id", "is required with auth.mode = \"oidc\"");
            None
        }
    };
    let client_secret = p.secret(
        "auth.client_secret",
        auth.client_secret.take(),
        auth.client_secret_file.take(),
    );
    if client_secret.as_ref().is_some_and(|s| s.is_empty()) {
        p.push("auth.client_secret", "is empty");
    }
    let client_auth = match auth.client_auth_method.as_deref() {
        None | Some("client_secret_post") => ClientAuthMethod::Post,
        Some("client_secret_basic") => ClientAuthMethod::Basic,
        Some(o) => {
            p.push(
                "auth.client_auth_method",
                format!("`{o}` is not one of client_secret_post, client_secret_basic"),
            );
            ClientAuthMethod::Post
        }
    };
    let scopes = auth
        .scopes
        .take()
        .unwrap_or_else(|| vec!["openid".into(), "profile".into(), "email".into()]);
    if !scopes.iter().any(|s| s == "openid") {
        p.push("auth.scopes", "must include \"openid\"");
    }
    if scopes
        .iter()
        .any(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        p.push("auth.scopes", "each scope must be one word");
    }
    if !public_url_given {
        p.push(
            "server.public_url",
            "is required with auth.mode = \"oidc\": the redirect URI {public_url}/auth/callback is derived from it",
        );
    } else if public_url.scheme() != "https" && !is_loopback_url(public_url) {
        // SECURITY: session cookies are only `Secure` over https; a sign-in served over plain
        // http off-loopback would hand every session to the network.
        p.push(
            "server.public_url",
            "must be https with auth.mode = \"oidc\" (http only on a loopback address)",
        );
    }
    let redirect_url = {
        let mut u = public_url.clone();
        let base = public_url.path().trim_end_matches('/').to_string();
        u.set_path(&format!("{base}/auth/callback"));
        u.set_query(None);
        u.set_fragment(None);
        u
    };
    let api_audience = match auth.api_audience.take() {
        Some(a) if a.trim().is_empty() => {
            p.push(
                "auth.api_audience",
                "is empty (leave it unset to refuse bearer tokens)",
            );
            None
        }
        a => a.map(|a| a.trim().to_string()),
    };
    let d = ClaimNames::default();
    let names = |p: &mut Problems, key: &str, v: Option<Vec<String>>, dflt: Vec<String>| {
        let v = v.unwrap_or(dflt);
        if v.is_empty() || v.iter().any(|c| c.trim().is_empty()) {
            p.push(key, "must name at least one claim, and no empty names");
        }
        v
    };
    let claims = ClaimNames {
        email: names(p, "auth.claims.email", auth.claims.email.take(), d.email),
        groups: names(p, "auth.claims.groups", auth.claims.groups.take(), d.groups),
        object_id: {
            let o = auth.claims.object_id.take().unwrap_or(d.object_id);
            if o.trim().is_empty() {
                p.push("auth.claims.object_id", "must name a claim");
            }
            o
        },
        name: names(p, "auth.claims.name", auth.claims.name.take(), d.name),
    };
    if p.0.len() != before {
        return None;
    }
    Some(OidcConfig {
        issuer: issuer?,
        client_id: client_id?,
        client_secret,
        client_auth,
        scopes,
        redirect_url,
        api_audience,
        claims,
    })
}

fn minutes(d: Duration) -> u32 {
    u32::try_from(d.as_secs() / 60).unwrap_or(u32::MAX)
}

fn validate_guard(p: &mut Problems, i: usize, g: RawGuard) -> Option<GuardPolicy> {
    let key = |k: &str| format!("guards[{i}].{k}");
    let before = p.0.len();
    if g.name.is_empty()
        || g.name.len() > 64
        || !g
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        p.push(
            &key("name"),
            "must be 1–64 characters of letters, digits, - and _",
        );
    }
    let resource_guard_id = p.check(
        &key("resource_guard_id"),
        ResourceGuardId::parse(&g.resource_guard_id).map_err(|e| e.to_string()),
    );
    if g.vaults.is_empty() {
        p.push(&key("vaults"), "at least one vault pattern is required");
    }
    let vaults: Vec<VaultPattern> = g
        .vaults
        .iter()
        .enumerate()
        .filter_map(|(j, v)| {
            p.check(
                &format!("{}[{j}]", key("vaults")),
                VaultPattern::parse(v).map_err(|e| e.to_string()),
            )
        })
        .collect();
    // SECURITY: fail closed — a guard nobody can approve for is a configuration error.
    if g.approvers.is_empty() {
        p.push(&key("approvers"), "at least one approver is required");
    }
    let approvers = p.subjects(&key("approvers"), &g.approvers);
    let requesters = g
        .requesters
        .as_ref()
        .map(|r| p.subjects(&key("requesters"), r));
    for (j, w) in g.watchers.iter().enumerate() {
        let w = w.strip_prefix("user:").unwrap_or(w);
        if !is_plausible_email(w) {
            p.push(
                &format!("{}[{j}]", key("watchers")),
                format!("`{w}` is not an email"),
            );
        }
    }
    let watchers = g
        .watchers
        .iter()
        .map(|w| w.strip_prefix("user:").unwrap_or(w).to_string())
        .collect();
    let required_approvals = g.required_approvals.unwrap_or(1);
    if !(1..=10).contains(&required_approvals) {
        p.push(&key("required_approvals"), "must be between 1 and 10");
    }
    let distinct_groups = g.distinct_groups.unwrap_or(false);
    if distinct_groups && (approvers.len() as u32) < required_approvals {
        p.push(
            &key("distinct_groups"),
            format!(
                "needs at least {required_approvals} approver entries to draw {required_approvals} distinct approvals from"
            ),
        );
    }
    for (op, n) in &g.operation_approvals {
        if crate::domain::operations::find(op).is_none() {
            p.push(
                &format!("{}.{op}", key("operation_approvals")),
                "unknown operation",
            );
        }
        if !(1..=10).contains(n) {
            p.push(
                &format!("{}.{op}", key("operation_approvals")),
                "must be between 1 and 10",
            );
        }
    }
    let max_duration = p
        .duration(&key("max_duration"), g.max_duration.as_deref(), "4h")
        .map(minutes)
        .unwrap_or(240);
    let default_duration = p
        .duration(
            &key("default_duration"),
            g.default_duration.as_deref(),
            "1h",
        )
        .map(minutes)
        .unwrap_or(60)
        .min(max_duration);
    let pending_deadline = p
        .duration(
            &key("pending_deadline"),
            g.pending_deadline.as_deref(),
            "24h",
        )
        .map(minutes)
        .unwrap_or(24 * 60);
    if !(5..=60 * 24 * 7).contains(&max_duration) {
        p.push(&key("max_duration"), "must be between 5 minutes and 7 days");
    }
    if !(5..=60 * 24 * 30).contains(&pending_deadline) {
        p.push(
            &key("pending_deadline"),
            "must be between 5 minutes and 30 days",
        );
    }
    let elevation = match g.elevation.as_deref() {
        None => Some(ElevationBackend::AzurePim),
        Some(e) => {
            let b = ElevationBackend::parse(e);
            if b.is_none() {
                p.push(
                    &key("elevation"),
                    format!("`{e}` is not one of azure-pim, azure-rbac, simulated"),
                );
            }
            b
        }
    };
    let role_definition_id = g
        .role_definition_id
        .clone()
        .unwrap_or_else(|| BACKUP_MUA_OPERATOR_ROLE.to_string());
    if uuid::Uuid::parse_str(&role_definition_id).is_err() {
        p.push(&key("role_definition_id"), "must be a role definition GUID");
    }
    let approver_sign_in = match g.approver_sign_in.as_deref() {
        None | Some("required") => ApproverSignIn::Required,
        Some("link-only") => ApproverSignIn::LinkOnly,
        Some(o) => {
            p.push(
                &key("approver_sign_in"),
                format!("`{o}` is not one of required, link-only"),
            );
            ApproverSignIn::Required
        }
    };
    if p.0.len() != before {
        return None;
    }
    Some(GuardPolicy {
        name: g.name,
        resource_guard_id: resource_guard_id?,
        vaults,
        approvers,
        requesters,
        watchers,
        required_approvals,
        distinct_groups,
        operation_approvals: g.operation_approvals,
        max_duration_minutes: max_duration,
        default_duration_minutes: default_duration,
        pending_deadline_minutes: pending_deadline,
        elevation: elevation?,
        role_definition_id: role_definition_id.to_ascii_lowercase(),
        approver_sign_in,
    })
}

/// A guard's own Azure keys, kept aside while the guard itself is validated.
struct GuardAzureOverride {
    index: usize,
    name: String,
    tenant_id: Option<String>,
    credential: Option<String>,
    client_id: Option<String>,
}

/// A tenant as Entra takes it in a token URL: a GUID or a verified domain name.
fn plausible_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 256
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// An http(s) endpoint URL. SECURITY: plain http only towards this machine (tests, the
/// metadata service's fixed link-local address), never to a remote ARM or authority.
fn endpoint(p: &mut Problems, key: &str, raw: Option<&str>, default: &str) -> url::Url {
    let raw = raw.unwrap_or(default);
    let parsed = url::Url::parse(raw)
        .map_err(|e| format!("`{raw}` is not a URL ({e})"))
        .and_then(|u| {
            let local = match u.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_link_local(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            match u.scheme() {
                "https" if u.host().is_some() => Ok(u),
                "http" if local => Ok(u),
                "http" => Err(format!(
                    "`{raw}` must use https (plain http is only allowed to loopback addresses)"
                )),
                _ => Err(format!("`{raw}` is not an http(s) URL with a host")),
            }
        });
    p.check(key, parsed)
        .unwrap_or_else(|| url::Url::parse(default).expect("static url"))
}

fn validate_azure(
    p: &mut Problems,
    a: RawAzure,
    guards: &[(GuardAzureOverride, ElevationBackend)],
) -> Option<AzureConfig> {
    let azure_guards: Vec<&GuardAzureOverride> = guards
        .iter()
        .filter(|(_, e)| e.needs_object_id())
        .map(|(o, _)| o)
        .collect();
    for (o, _) in guards.iter().filter(|(_, e)| !e.needs_object_id()) {
        if o.tenant_id.is_some() || o.credential.is_some() || o.client_id.is_some() {
            p.push(
                &format!("guards[{}].tenant_id", o.index),
                "tenant_id, credential and client_id only apply to the azure-pim and azure-rbac backends",
            );
        }
    }
    if azure_guards.is_empty() {
        return None;
    }
    let before = p.0.len();
    let tenant_id = match a.tenant_id.as_deref() {
        Some(t) if plausible_tenant(t) => t.to_string(),
        Some(t) => {
            p.push(
                "azure.tenant_id",
                format!("`{t}` is not a tenant id or domain"),
            );
            String::new()
        }
        None => {
            p.push(
                "azure.tenant_id",
                "is required when a guard uses azure-pim or azure-rbac (the broker identity's tenant)",
            );
            String::new()
        }
    };
    let kind = match a.credential.as_deref() {
        Some(c) => CredentialKind::parse(c).or_else(|| {
            p.push(
                "azure.credential",
                format!("`{c}` is not one of client-secret, workload-identity, managed-identity"),
            );
            None
        }),
        None => {
            p.push(
                "azure.credential",
                "is required: client-secret, workload-identity or managed-identity",
            );
            None
        }
    };
    let client_secret = p.secret(
        "azure.client_secret",
        a.client_secret.clone(),
        a.client_secret_file.clone(),
    );
    // Workload identity on AKS: the webhook injects these; the config may leave them out.
    let federated_token_file = a
        .federated_token_file
        .clone()
        .or_else(|| std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from));
    let default_client_id = a.client_id.clone().or_else(|| match kind {
        Some(CredentialKind::WorkloadIdentity) => std::env::var("AZURE_CLIENT_ID").ok(),
        _ => None,
    });
    let mi_endpoint = endpoint(
        p,
        "azure.managed_identity_endpoint",
        a.managed_identity_endpoint.as_deref(),
        "http://169.254.169.254",
    );
    let arm_endpoint = endpoint(
        p,
        "azure.arm_endpoint",
        a.arm_endpoint.as_deref(),
        "https://management.azure.com",
    );
    let authority_host = endpoint(
        p,
        "azure.authority_host",
        a.authority_host.as_deref(),
        "https://login.microsoftonline.com",
    );
    let graph_endpoint = endpoint(
        p,
        "azure.graph_endpoint",
        a.graph_endpoint.as_deref(),
        "https://graph.microsoft.com",
    );
    let cred = |p: &mut Problems,
                key: &str,
                kind: CredentialKind,
                tenant: &str,
                client_id: Option<String>|
     -> CredentialConfig {
        match kind {
            CredentialKind::ClientSecret => {
                if client_id.is_none() {
                    p.push(
                        &format!("{key}client_id"),
                        "is required with credential = \"client-secret\"",
                    );
                }
                if client_secret.is_none() {
                    p.push(
                        "azure.client_secret",
                        "is required with credential = \"client-secret\" (or azure.client_secret_file)",
                    );
                }
            }
            CredentialKind::WorkloadIdentity => {
                if client_id.is_none() {
                    p.push(
                        &format!("{key}client_id"),
                        "is required with credential = \"workload-identity\" (or AZURE_CLIENT_ID)",
                    );
                }
                if federated_token_file.is_none() {
                    p.push(
                        "azure.federated_token_file",
                        "is required with credential = \"workload-identity\" (or AZURE_FEDERATED_TOKEN_FILE)",
                    );
                }
            }
            CredentialKind::ManagedIdentity => {}
        }
        CredentialConfig {
            kind,
            tenant_id: tenant.to_string(),
            client_id,
            client_secret: client_secret.clone(),
            federated_token_file: federated_token_file.clone(),
            managed_identity_endpoint: mi_endpoint.clone(),
        }
    };
    let home = kind.map(|k| cred(p, "azure.", k, &tenant_id, default_client_id.clone()));
    let mut per_guard = BTreeMap::new();
    for o in azure_guards {
        if o.tenant_id.is_none() && o.credential.is_none() && o.client_id.is_none() {
            continue;
        }
        let key = format!("guards[{}].", o.index);
        let tenant = match o.tenant_id.as_deref() {
            Some(t) if plausible_tenant(t) => t.to_string(),
            Some(t) => {
                p.push(
                    &format!("{key}tenant_id"),
                    format!("`{t}` is not a tenant id or domain"),
                );
                continue;
            }
            None => tenant_id.clone(),
        };
        let gkind = match o.credential.as_deref() {
            Some(c) => {
                match CredentialKind::parse(c) {
                    Some(k) => k,
                    None => {
                        p.push(
                        &format!("{key}credential"),
                        format!("`{c}` is not one of client-secret, workload-identity, managed-identity"),
                    );
                        continue;
                    }
                }
            }
            None => match kind {
                Some(k) => k,
                None => continue,
            },
        };
        // SECURITY: a managed identity lives in one tenant and cannot get a token for another
        // (CONTRACTS.md §6); refusing here beats a grant that fails at approval time.
        if gkind == CredentialKind::ManagedIdentity && !tenant.eq_ignore_ascii_case(&tenant_id) {
            p.push(
                &format!("{key}credential"),
                "a managed identity cannot get tokens for another tenant; use a multi-tenant app registration (client-secret or workload-identity) for a guard in another tenant",
            );
            continue;
        }
        let client_id = o.client_id.clone().or_else(|| default_client_id.clone());
        per_guard.insert(o.name.clone(), cred(p, &key, gkind, &tenant, client_id));
    }
    let timeout = p
        .duration("azure.timeout", a.timeout.as_deref(), "30s")
        .unwrap_or(Duration::from_secs(30));
    let connect_timeout = p
        .duration("azure.connect_timeout", a.connect_timeout.as_deref(), "10s")
        .unwrap_or(Duration::from_secs(10));
    let max_retries = a.max_retries.unwrap_or(4);
    if max_retries > 20 {
        p.push("azure.max_retries", "must be at most 20");
    }
    let max_retry_wait = p
        .duration("azure.max_retry_wait", a.max_retry_wait.as_deref(), "60s")
        .unwrap_or(Duration::from_secs(60));
    let lro_timeout = p
        .duration("azure.lro_timeout", a.lro_timeout.as_deref(), "2m")
        .unwrap_or(Duration::from_secs(120));
    let reconcile_interval = p
        .duration(
            "azure.reconcile_interval",
            a.reconcile_interval.as_deref(),
            "5m",
        )
        .unwrap_or(Duration::from_secs(300));
    if p.0.len() != before {
        return None;
    }
    Some(AzureConfig {
        home: home?,
        arm_endpoint,
        authority_host,
        timeout,
        connect_timeout,
        max_retries,
        max_retry_wait,
        lro_timeout,
        reconcile_interval,
        graph_endpoint,
        resolve_names: a.resolve_names.unwrap_or(true),
        guards: per_guard,
    })
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn check<T>(&mut self, key: &str, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(key, e);
                None
            }
        }
    }

    fn duration(&mut self, key: &str, raw: Option<&str>, default: &str) -> Option<Duration> {
        let raw = raw.unwrap_or(default);
        self.check(
            key,
            humantime::parse_duration(raw)
                .map_err(|e| format!("`{raw}` is not a duration like 30m, 4h, 1d ({e})")),
        )
    }

    fn subjects(&mut self, key: &str, raw: &[String]) -> Vec<Subject> {
        raw.iter()
            .enumerate()
            .filter_map(|(j, s)| self.check(&format!("{key}[{j}]"), Subject::parse(s)))
            .collect()
    }

    /// A secret given inline (env or file) or as `<key>_file`; both at once is refused.
    fn secret(
        &mut self,
        key: &str,
        inline: Option<String>,
        file: Option<PathBuf>,
    ) -> Option<Secret> {
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.push(key, format!("set either {key} or {key}_file, not both"));
                None
            }
            (Some(v), None) => Some(Secret::new(v)),
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(v) => Some(Secret::new(v.trim_end_matches(['\n', '\r']))),
                Err(e) => {
                    self.push(
                        &format!("{key}_file"),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            },
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> RawConfig {
        toml::from_str(
            r#"
            [database]
            url = "sqlite://x.db"
            [auth]
            mode = "dev"
            dev_users = [{ email = "a@x.io", name = "A" }]
            [mail]
            outbox_dir = "/tmp/twokey-test-outbox"
            [[review.keys]]
            kid = "k1"
            secret = "0123456789abcdef0123456789abcdef"
            [[guards]]
            name = "g"
            resource_guard_id = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/sec/providers/Microsoft.DataProtection/resourceGuards/guard"
            vaults = ["/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/*"]
            approvers = ["user:b@x.io"]
            elevation = "simulated"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn a_minimal_config_validates() {
        let c = minimal().validate().unwrap();
        assert_eq!(c.guards[0].max_duration_minutes, 240);
        assert_eq!(c.guards[0].required_approvals, 1);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let mut raw = minimal();
        raw.server.bind = Some("0.0.0.0:80".into());
        raw.guards[0].approvers = vec![];
        raw.guards[0].max_duration = Some("forever".into());
        raw.guards[0].vaults = vec!["/subscriptions/bad".into()];
        raw.review.keys[0].secret = Some("short".into());
        let errs = raw.validate().unwrap_err().0;
        let keys: Vec<&str> = errs.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "auth.mode",
            "guards[0].approvers",
            "guards[0].max_duration",
            "guards[0].vaults[0]",
            "review.keys[0].secret",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn the_pool_size_defaults_to_4_on_sqlite_and_8_on_postgres_unless_given() {
        let pool = |url: &str, given: Option<u32>| {
            let mut raw = minimal();
            raw.database.url = Some(url.into());
            raw.database.max_connections = given;
            raw.validate().unwrap().database.max_connections
        };
        assert_eq!(pool("sqlite://twokey.db", None), 4);
        assert_eq!(pool("postgres://u@h/db", None), 8);
        assert_eq!(pool("sqlite://twokey.db", Some(6)), 6);
        assert_eq!(pool("postgres://u@h/db", Some(2)), 2);
    }

    #[test]
    fn secret_inline_and_file_together_is_refused() {
        let mut raw = minimal();
        raw.database.url_file = Some("/dev/null".into());
        let errs = raw.validate().unwrap_err().0;
        assert!(errs.iter().any(|p| p.key == "database.url"));
    }

    #[test]
    fn secret_files_are_read_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("db");
        std::fs::write(&f, "postgres://u:topsecret@h/db\n").unwrap();
        let mut raw = minimal();
        raw.database.url = None;
        raw.database.url_file = Some(f);
        let c = raw.validate().unwrap();
        assert_eq!(c.database.url.expose(), "postgres://u:topsecret@h/db");
        assert!(!format!("{c:?}").contains("topsecret"));
    }

    #[test]
    fn smtp_urls_are_checked_and_plain_remote_relays_need_saying_so() {
        assert!(smtp_url_for_lettre("smtp://relay.example.com:587?tls=required").is_ok());
        assert!(smtp_url_for_lettre("smtps://u:p@smtp.office365.com:465").is_ok());
        assert!(smtp_url_for_lettre("smtp://127.0.0.1:2525").is_ok());
        assert_eq!(
            smtp_url_for_lettre("smtp://relay.internal:25?tls=none").unwrap(),
            "smtp://relay.internal:25"
        );
        for bad in [
            "smtp://relay.example.com:25",
            "smtp://relay.example.com?tls=maybe",
            "smtps://x?tls=required",
            "http://x",
            "smtp://x?tls=required&debug=1",
            "not a url",
        ] {
            assert!(smtp_url_for_lettre(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mail_needs_exactly_one_way_out() {
        let mut raw = minimal();
        raw.mail.outbox_dir = None;
        let errs = raw.validate().unwrap_err().0;
        assert!(errs.iter().any(|p| p.key == "mail.smtp_url"), "{errs:?}");
        let mut raw = minimal();
        raw.mail.smtp_url = Some("smtp://127.0.0.1:25".into());
        let errs = raw.validate().unwrap_err().0;
        assert!(errs.iter().any(|p| p.key == "mail.outbox_dir"), "{errs:?}");
    }

    #[test]
    fn an_azure_guard_needs_the_azure_section() {
        let mut raw = minimal();
        raw.guards[0].elevation = Some("azure-pim".into());
        let errs = raw.validate().unwrap_err().0;
        let keys: Vec<&str> = errs.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"azure.tenant_id"), "{keys:?}");
        assert!(keys.contains(&"azure.credential"), "{keys:?}");
    }

    #[test]
    fn azure_settings_are_checked() {
        let mut raw = minimal();
        raw.guards[0].elevation = Some("azure-rbac".into());
        raw.azure.tenant_id = Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into());
        raw.azure.credential = Some("managed-identity".into());
        let c = raw.validate().unwrap();
        let az = c.azure.unwrap();
        assert_eq!(az.arm_endpoint.as_str(), "https://management.azure.com/");
        assert_eq!(az.credential_for("g").kind, CredentialKind::ManagedIdentity);

        let mut raw = minimal();
        raw.guards[0].elevation = Some("azure-pim".into());
        raw.guards[0].tenant_id = Some("other.onmicrosoft.com".into());
        raw.azure.tenant_id = Some("home.onmicrosoft.com".into());
        raw.azure.credential = Some("managed-identity".into());
        raw.azure.arm_endpoint = Some("http://arm.example.com".into());
        raw.azure.credential = Some("managed-identity".into());
        let errs = raw.validate().unwrap_err().0;
        let keys: Vec<&str> = errs.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"guards[0].credential"), "{keys:?}");
        assert!(keys.contains(&"azure.arm_endpoint"), "{keys:?}");

        let mut raw = minimal();
        raw.guards[0].elevation = Some("azure-pim".into());
        raw.azure.tenant_id = Some("home.onmicrosoft.com".into());
        raw.azure.credential = Some("client-secret".into());
        raw.azure.client_id = Some("c1".into());
        raw.azure.client_secret = Some("s3cret-value".into());
        raw.guards[0].tenant_id = Some("guard.onmicrosoft.com".into());
        let c = raw.validate().unwrap();
        let az = c.azure.unwrap();
        assert_eq!(az.credential_for("g").tenant_id, "guard.onmicrosoft.com");
        assert_eq!(az.home.tenant_id, "home.onmicrosoft.com");
        assert!(!format!("{az:?}").contains("s3cret-value"));
    }

    #[test]
    fn env_keys_map_to_sections() {
        assert_eq!(env_key("database_url"), "database.url");
        assert_eq!(
            env_key("audit_checkpoint_key_file"),
            "audit.checkpoint_key_file"
        );
        assert_eq!(env_key("server_public_url"), "server.public_url");
        assert_eq!(
            env_key("auth_client_secret_file"),
            "auth.client_secret_file"
        );
        assert_eq!(env_key("auth_claims_email"), "auth.claims.email");
        assert_eq!(env_key("auth_claims_object_id"), "auth.claims.object_id");
        assert_eq!(env_key("auth_api_audience"), "auth.api_audience");
        assert_eq!(
            env_key("alerts_token_burst_count"),
            "alerts.token_burst_count"
        );
        assert_eq!(
            env_key("alerts_business_hours_start"),
            "alerts.business_hours.start"
        );
        assert_eq!(env_key("posture_daily_at"), "posture.daily_at");
        assert_eq!(env_key("azure_graph_endpoint"), "azure.graph_endpoint");
    }

    #[test]
    fn posture_time_of_day_is_checked() {
        assert_eq!(parse_time_of_day("06:00"), Ok(360));
        assert_eq!(parse_time_of_day("23:59"), Ok(23 * 60 + 59));
        for bad in ["24:00", "6", "06:60", "noon", ""] {
            assert!(parse_time_of_day(bad).is_err(), "{bad}");
        }
        let mut raw = minimal();
        raw.posture.daily_at = Some("25:00".into());
        let keys: Vec<String> = raw
            .validate()
            .unwrap_err()
            .0
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(keys, vec!["posture.daily_at".to_string()]);
    }

    fn oidc() -> RawConfig {
        let mut raw = minimal();
        raw.auth.mode = Some("oidc".into());
        raw.auth.issuer = Some("https://login.microsoftonline.com/tenant/v2.0".into());
        raw.auth.client_id = Some("00000000-0000-0000-0000-00000000c1d0".into());
        raw.auth.client_secret = Some("s3cret".into());
        raw.server.bind = Some("0.0.0.0:8080".into());
        raw.server.public_url = Some("https://twokey.example.com/".into());
        raw
    }

    #[test]
    fn an_oidc_config_validates_with_entra_defaults() {
        let c = oidc().validate().unwrap();
        let o = c.auth.oidc.expect("oidc settings");
        assert_eq!(c.auth.mode, AuthMode::Oidc);
        assert_eq!(
            o.redirect_url.as_str(),
            "https://twokey.example.com/auth/callback"
        );
        assert_eq!(o.scopes, vec!["openid", "profile", "email"]);
        assert_eq!(o.claims, ClaimNames::default());
        assert_eq!(o.claims.email, vec!["email", "preferred_username", "upn"]);
        assert_eq!(o.claims.groups, vec!["groups", "roles"]);
        assert_eq!(o.claims.object_id, "oid");
        assert_eq!(o.client_auth, ClientAuthMethod::Post);
        assert_eq!(o.api_audience, None);
        assert!(!format!("{o:?}").contains("s3cret"));
        // A path prefix is kept in the redirect URI.
        let mut raw = oidc();
        raw.server.public_url = Some("https://example.com/twokey".into());
        let o = raw.validate().unwrap().auth.oidc.unwrap();
        assert_eq!(
            o.redirect_url.as_str(),
            "https://example.com/twokey/auth/callback"
        );
    }

    #[test]
    fn oidc_problems_are_reported_with_their_keys() {
        let mut raw = oidc();
        raw.auth.issuer = Some("http://idp.example.com".into());
        raw.auth.client_id = None;
        raw.auth.scopes = Some(vec!["profile".into()]);
        raw.auth.client_auth_method = Some("private_key_jwt".into());
        raw.auth.claims.email = Some(vec![]);
        raw.server.public_url = Some("http://twokey.example.com".into());
        let errs = raw.validate().unwrap_err().0;
        let keys: Vec<&str> = errs.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "auth.issuer",
            "auth.client_id",
            "auth.scopes",
            "auth.client_auth_method",
            "auth.claims.email",
            "server.public_url",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        // No public URL at all: the redirect URI cannot be derived.
        let mut raw = oidc();
        raw.server.public_url = None;
        let errs = raw.validate().unwrap_err().0;
        assert!(errs.iter().any(|p| p.key == "server.public_url"));
        // A loopback test issuer and public URL over http are fine.
        let mut raw = oidc();
        raw.auth.issuer = Some("http://127.0.0.1:9999".into());
        raw.server.public_url = Some("http://127.0.0.1:8080".into());
        assert!(raw.validate().is_ok());
    }

    #[test]
    fn the_example_config_names_only_real_keys_and_validates() {
        // The example's secret files, made real in a temp dir.
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "oidc-client-secret",
            "review-key-1",
            "alert-hook-azure-prod",
            "webhook-siem-secret",
        ] {
            std::fs::write(dir.path().join(f), "0123456789abcdef0123456789abcdef\n").unwrap();
        }
        for f in ["webhook-siem-url", "webhook-teams-url"] {
            std::fs::write(dir.path().join(f), "https://hooks.example.com/x\n").unwrap();
        }
        std::fs::write(
            dir.path().join("smtp-url"),
            "smtp://relay.example.com:587?tls=required\n",
        )
        .unwrap();
        let text = include_str!("../deploy/config.example.toml").replace(
            "/run/secrets/twokey/",
            &format!("{}/", dir.path().display()),
        );
        let raw: RawConfig =
            toml::from_str(&text).expect("deploy/config.example.toml parses with every key known");
        let c = raw
            .validate()
            .unwrap_or_else(|e| panic!("the example validates: {e}"));
        assert_eq!(c.guards.len(), 2);
        assert!(c.azure.is_some(), "its guards use azure-pim");
        assert_eq!(c.alerts.hooks.len(), 1);
        assert_eq!(c.webhooks.len(), 2);
        assert!(c.alerts.business_hours.is_some());
    }

    #[test]
    fn alert_settings_are_checked_and_webhook_urls_never_echoed() {
        let mut raw = minimal();
        raw.alerts.hooks = vec![RawHook {
            name: "a b".into(),
            secret: Some("short".into()),
            secret_file: None,
        }];
        raw.alerts.time_zone = Some("Mars/Olympus".into());
        raw.alerts.business_hours = Some(RawBusinessHours {
            days: Some(vec!["mon".into(), "funday".into()]),
            start: Some("18:00".into()),
            end: Some("8am".into()),
        });
        raw.webhooks = vec![
            RawWebhook {
                name: "w".into(),
                kind: "slack".into(),
                url: Some("http://hooks.slack.example/T000/SECRETPART".into()),
                events: Some(vec!["created".into(), "deleted".into()]),
                ..Default::default()
            },
            RawWebhook {
                name: "j".into(),
                kind: "json".into(),
                url: Some("http://127.0.0.1:9/x".into()),
                ..Default::default()
            },
        ];
        raw.guards[0].webhooks = vec!["nope".into()];
        let errs = raw.validate().unwrap_err().0;
        let keys: Vec<&str> = errs.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "alerts.hooks[0].name",
            "alerts.hooks[0].secret",
            "alerts.time_zone",
            "alerts.business_hours.days[1]",
            "alerts.business_hours.end",
            "webhooks[0].url",
            "webhooks[0].events[1]",
            "webhooks[1].url",
            "webhooks[1].secret",
            "guards[0].webhooks[0]",
        ] {
            assert!(keys.contains(&k), "{k} in {keys:?}");
        }
        assert!(
            !errs.iter().any(|p| p.message.contains("SECRETPART")),
            "a webhook URL is a credential: {errs:?}"
        );
    }

    /// The configs under deploy/ with the `TWOKEY_…` variables their manifests set
    /// (deploy/kubernetes/deployment.yaml, its workload-identity overlay, deploy/azure/main.bicep,
    /// deploy/compose.yaml): each must name only real keys and validate. Keep the lists in step
    /// with those files.
    #[test]
    fn the_deploy_configs_validate() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path();
        std::fs::create_dir(secrets.join("twokey")).unwrap();
        for sub in ["", "twokey/"] {
            for (name, value) in [
                (
                    "database-url",
                    "postgres://twokey:pw@db.example.com/twokey?sslmode=verify-full",
                ),
                ("oidc-client-secret", "client-secret"),
                ("review-key-1", "0123456789abcdef0123456789abcdef0123"),
                ("smtp-url", "smtp://relay.example.com:587?tls=required"),
                ("azure-client-secret", "azure-secret"),
            ] {
                std::fs::write(secrets.join(format!("{sub}{name}")), format!("{value}\n")).unwrap();
            }
        }
        let k8s = include_str!("../deploy/kubernetes/config.toml");
        let issuer = "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/v2.0";
        // (deploy target, its config file, the variables its manifest sets)
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let cases: [Case; 4] = [
            (
                "kubernetes",
                k8s,
                &[
                    ("TWOKEY_SERVER_BIND", "0.0.0.0:8080"),
                    ("TWOKEY_AZURE_CREDENTIAL", "client-secret"),
                    (
                        "TWOKEY_AZURE_CLIENT_SECRET_FILE",
                        "/run/secrets/twokey/azure-client-secret",
                    ),
                ],
            ),
            (
                "kubernetes/workload-identity",
                k8s,
                &[
                    ("TWOKEY_SERVER_BIND", "0.0.0.0:8080"),
                    ("TWOKEY_AZURE_CREDENTIAL", "workload-identity"),
                    // What the webhook's AZURE_FEDERATED_TOKEN_FILE says.
                    (
                        "TWOKEY_AZURE_FEDERATED_TOKEN_FILE",
                        "/var/run/secrets/azure/tokens/azure-identity-token",
                    ),
                ],
            ),
            (
                "azure",
                include_str!("../deploy/azure/config.toml"),
                &[
                    ("TWOKEY_SERVER_BIND", "0.0.0.0:8080"),
                    (
                        "TWOKEY_SERVER_PUBLIC_URL",
                        "https://twokey.example.azurecontainerapps.io",
                    ),
                    (
                        "TWOKEY_DATABASE_URL_FILE",
                        "/run/secrets/twokey/database-url",
                    ),
                    (
                        "TWOKEY_AUTH_CLIENT_SECRET_FILE",
                        "/run/secrets/twokey/oidc-client-secret",
                    ),
                    ("TWOKEY_MAIL_SMTP_URL_FILE", "/run/secrets/twokey/smtp-url"),
                    (
                        "TWOKEY_REVIEW_KEYS",
                        "[{kid=review-1,secret_file=/run/secrets/twokey/review-key-1}]",
                    ),
                    ("TWOKEY_AZURE_CREDENTIAL", "managed-identity"),
                    (
                        "TWOKEY_AZURE_CLIENT_ID",
                        "11111111-1111-1111-1111-111111111111",
                    ),
                    (
                        "TWOKEY_AZURE_TENANT_ID",
                        "22222222-2222-2222-2222-222222222222",
                    ),
                ],
            ),
            (
                "compose",
                include_str!("../deploy/compose/config.toml"),
                &[
                    ("TWOKEY_SERVER_BIND", "0.0.0.0:8080"),
                    ("TWOKEY_SERVER_PUBLIC_URL", "http://localhost:8080"),
                    ("TWOKEY_DATABASE_URL_FILE", "/run/secrets/database-url"),
                    ("TWOKEY_AUTH_MODE", "oidc"),
                    ("TWOKEY_AUTH_ISSUER", issuer),
                    (
                        "TWOKEY_AUTH_CLIENT_ID",
                        "00000000-0000-0000-0000-000000000000",
                    ),
                    (
                        "TWOKEY_AUTH_CLIENT_SECRET_FILE",
                        "/run/secrets/oidc-client-secret",
                    ),
                    ("TWOKEY_MAIL_FROM", "twokey <twokey@localhost.localdomain>"),
                    ("TWOKEY_MAIL_SMTP_URL", "smtp://mailpit:1025?tls=none"),
                    (
                        "TWOKEY_REVIEW_KEYS",
                        "[{kid=review-1,secret_file=/run/secrets/review-key-1}]",
                    ),
                    ("TWOKEY_JOBS_ENABLED", "true"),
                ],
            ),
        ];
        let local = |v: &str| v.replace("/run/secrets/", &format!("{}/", secrets.display()));
        for (name, text, env) in cases {
            // The file, then each variable parsed and mapped as `RawConfig::load` does.
            let mut fig = Figment::from(Toml::string(&local(text)));
            for (var, value) in env {
                let key = env_key(&var.strip_prefix("TWOKEY_").unwrap().to_ascii_lowercase());
                let value: figment::value::Value = local(value).parse().unwrap();
                fig = fig.merge(Serialized::default(&key, value));
            }
            let raw: RawConfig = fig
                .extract()
                .unwrap_or_else(|e| panic!("deploy/{name}: unknown or mistyped key: {e}"));
            let c = raw
                .validate()
                .unwrap_or_else(|e| panic!("deploy/{name} does not validate: {e}"));
            assert!(
                !c.server.bind.ip().is_loopback(),
                "deploy/{name} must listen beyond loopback"
            );
            assert!(
                c.database.url.expose().starts_with("postgres://"),
                "deploy/{name}"
            );
        }
    }

    #[test]
    fn dev_sign_in_refuses_a_non_loopback_bind_but_oidc_may() {
        let mut raw = minimal();
        raw.server.bind = Some("0.0.0.0:8080".into());
        let errs = raw.validate().unwrap_err().0;
        assert!(errs.iter().any(|p| p.key == "auth.mode"));
        assert!(oidc().validate().is_ok());
    }
}
