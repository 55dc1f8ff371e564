//! Azure: the ARM client, credentials, and the elevation backends behind one trait.
//!
//! A backend puts an approved window in place ([`Elevation::grant`]), takes it away
//! ([`Elevation::revoke`]) and says whether it is still there ([`Elevation::confirm`]). Every
//! call names its ARM resource with a GUID derived from (request id, step), and reads that
//! name before writing it, so a repeated job (after a crash, a lost answer or a lost lease)
//! finds what the first attempt did instead of doing it twice. This module never touches the
//! database: the job that calls it records the outcome in one transaction.

pub mod check;
pub mod client;
pub mod credential;
mod pim;
pub mod posture;
mod rbac;

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::config::{AzureConfig, CredentialConfig};
use crate::domain::arm::ResourceGuardId;
use crate::domain::policy::ElevationBackend;
use crate::timefmt;
use client::{ArmClient, ArmError, RetryPolicy};
use credential::Credential;

pub use pim::PimBackend;
pub use rbac::RbacBackend;

/// The api-version of the PIM schedule request and instance APIs (CONTRACTS.md §0, §3).
pub const PIM_API_VERSION: &str = "2020-10-01";
/// The api-version of plain role assignments (CONTRACTS.md §3.4).
pub const RBAC_API_VERSION: &str = "2022-04-01";
/// The api-version of Resource Guards, Backup vaults and their proxies (DataProtection), and of
/// Recovery Services vaults and their proxies (CONTRACTS.md §0).
pub const BACKUP_API_VERSION: &str = "2024-04-01";

/// Azure PIM refuses to end an assignment within this long of its start
/// (`ActiveDurationTooShort`, CONTRACTS.md §3.2).
pub const PIM_MIN_ACTIVE: Duration = Duration::minutes(5);

/// What to grant: exactly the approved role, on exactly the guard, for exactly the window.
#[derive(Debug, Clone)]
pub struct GrantSpec {
    pub request_id: String,
    pub scope: ResourceGuardId,
    /// The role definition GUID (e.g. Backup MUA Operator).
    pub role_definition_id: String,
    /// The requester's Entra object id.
    pub principal_object_id: String,
    pub start: OffsetDateTime,
    pub duration_minutes: i64,
    pub justification: String,
    pub ticket: Option<String>,
}

impl GrantSpec {
    pub fn end(&self) -> OffsetDateTime {
        self.start + Duration::minutes(self.duration_minutes)
    }
}

/// A grant that exists (or was just made).
#[derive(Debug, Clone)]
pub struct GrantOutcome {
    /// The ARM name of what was created (schedule request or role assignment).
    pub arm_request_name: String,
    /// The window Azure holds, when it says (a repeated job adopts the first attempt's window).
    pub window: Option<(OffsetDateTime, OffsetDateTime)>,
    /// What Azure answered, for the grant row and the audit event.
    pub detail: Value,
    /// The simulated backend's would-be request body, recorded in `simulated_call`.
    pub simulated_body: Option<Value>,
}

/// An assignment twokey made, to remove or look for.
#[derive(Debug, Clone)]
pub struct AssignmentRef {
    pub request_id: String,
    pub scope: ResourceGuardId,
    pub role_definition_id: String,
    pub principal_object_id: String,
    pub active_from: OffsetDateTime,
    pub active_until: OffsetDateTime,
    /// Names the ARM request of this removal (`revoke`, or `reconcile-…` for a second one).
    pub step: String,
    pub justification: String,
    /// What the grant recorded from Azure (e.g. the PIM schedule id), to recognise it.
    pub grant_detail: Value,
}

#[derive(Debug, Clone)]
pub struct RevokeOutcome {
    /// `false` when Azure said it was already gone (expired, or removed by someone else).
    pub removed: bool,
    pub detail: Value,
    pub simulated_body: Option<Value>,
}

/// Whether the assignment is still in Azure.
#[derive(Debug, Clone)]
pub enum Presence {
    Present {
        until: Option<OffsetDateTime>,
        detail: Value,
    },
    Absent,
}

/// A backend's failure, sorted by what the job should do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ElevationError {
    /// Try again with backoff (throttling, outages, propagation delays).
    #[error("{0}")]
    Transient(String),
    /// Try again at this time, not earlier (`ActiveDurationTooShort`).
    #[error("{1}")]
    RetryAt(OffsetDateTime, String),
    /// Azure refused for a reason a retry will not change (policy validation, a conflicting
    /// assignment); the message is Azure's, for the requester and approvers.
    #[error("{0}")]
    Refused(String),
}

impl From<ArmError> for ElevationError {
    fn from(e: ArmError) -> Self {
        Self::Transient(e.to_string())
    }
}

/// One way of putting a window in place. Chosen per guard (`elevation = …`).
pub trait Elevation: Send + Sync {
    fn kind(&self) -> ElevationBackend;
    fn grant<'a>(
        &'a self,
        spec: &'a GrantSpec,
    ) -> BoxFuture<'a, Result<GrantOutcome, ElevationError>>;
    fn revoke<'a>(
        &'a self,
        a: &'a AssignmentRef,
    ) -> BoxFuture<'a, Result<RevokeOutcome, ElevationError>>;
    fn confirm<'a>(
        &'a self,
        a: &'a AssignmentRef,
    ) -> BoxFuture<'a, Result<Presence, ElevationError>>;
}

/// The `simulated` backend: no network; the job records the would-be PIM bodies.
pub struct Simulated;

impl Elevation for Simulated {
    fn kind(&self) -> ElevationBackend {
        ElevationBackend::Simulated
    }

    fn grant<'a>(
        &'a self,
        spec: &'a GrantSpec,
    ) -> BoxFuture<'a, Result<GrantOutcome, ElevationError>> {
        Box::pin(async move {
            let name = crate::service::jobs_api::step_guid(&spec.request_id, "grant").to_string();
            Ok(GrantOutcome {
                arm_request_name: name,
                window: None,
                detail: json!({}),
                simulated_body: Some(pim::assign_body(spec)),
            })
        })
    }

    fn revoke<'a>(
        &'a self,
        a: &'a AssignmentRef,
    ) -> BoxFuture<'a, Result<RevokeOutcome, ElevationError>> {
        Box::pin(async move {
            Ok(RevokeOutcome {
                removed: true,
                detail: json!({}),
                simulated_body: Some(pim::remove_body(a)),
            })
        })
    }

    fn confirm<'a>(
        &'a self,
        _a: &'a AssignmentRef,
    ) -> BoxFuture<'a, Result<Presence, ElevationError>> {
        Box::pin(async move { Ok(Presence::Absent) })
    }
}

/// The full ARM role definition id for a GUID, in the guard's subscription.
pub fn role_definition_path(scope: &ResourceGuardId, guid: &str) -> String {
    format!(
        "/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/{}",
        scope.subscription(),
        guid
    )
}

/// Whether an ARM role definition id (either form) names `guid`.
pub fn same_role(role_definition_id: &str, guid: &str) -> bool {
    role_definition_id
        .rsplit('/')
        .next()
        .is_some_and(|g| g.eq_ignore_ascii_case(guid))
}

/// An ISO 8601 duration for whole minutes (`PT90M`).
pub fn iso_minutes(minutes: i64) -> String {
    format!("PT{minutes}M")
}

pub(crate) fn parse_azure_time(v: &Value) -> Option<OffsetDateTime> {
    v.as_str()
        .and_then(|s| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
        .map(timefmt::trunc)
}

/// Every backend the configuration needs, by guard.
pub struct Elevations {
    simulated: Arc<dyn Elevation>,
    guards: HashMap<String, GuardClients>,
    home: Option<GuardClients>,
    /// The ARM client for vault-side reads in the home tenant (preflight).
    pub home_arm: Option<ArmClient>,
    pub config: Option<AzureConfig>,
}

#[derive(Clone)]
struct GuardClients {
    pim: Arc<dyn Elevation>,
    rbac: Arc<dyn Elevation>,
    arm: ArmClient,
}

impl Elevations {
    /// Build clients for every Azure guard; credentials of the same identity share a token cache.
    pub fn new(cfg: Option<&AzureConfig>) -> Result<Self, String> {
        let mut out = Self {
            simulated: Arc::new(Simulated),
            guards: HashMap::new(),
            home: None,
            home_arm: None,
            config: cfg.cloned(),
        };
        let Some(cfg) = cfg else { return Ok(out) };
        let http = client::http_client(cfg)?;
        let retry = RetryPolicy {
            max_retries: cfg.max_retries,
            max_retry_wait: cfg.max_retry_wait,
            lro_timeout: cfg.lro_timeout,
        };
        let mut creds: HashMap<String, Arc<Credential>> = HashMap::new();
        let mut cred = |c: &CredentialConfig| {
            let key = format!(
                "{}|{}|{}",
                c.kind.as_str(),
                c.tenant_id.to_ascii_lowercase(),
                c.client_id.clone().unwrap_or_default()
            );
            creds
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(Credential::new(
                        c.clone(),
                        http.clone(),
                        cfg.authority_host.clone(),
                        &cfg.arm_endpoint,
                    ))
                })
                .clone()
        };
        let home_cred = cred(&cfg.home);
        let clients = |arm: ArmClient| GuardClients {
            pim: Arc::new(PimBackend::new(arm.clone())),
            rbac: Arc::new(RbacBackend::new(arm.clone())),
            arm,
        };
        let home_arm = ArmClient::new(
            http.clone(),
            cfg.arm_endpoint.clone(),
            home_cred,
            retry.clone(),
        );
        out.home = Some(clients(home_arm.clone()));
        out.home_arm = Some(home_arm);
        for (name, c) in &cfg.guards {
            let arm = ArmClient::new(
                http.clone(),
                cfg.arm_endpoint.clone(),
                cred(c),
                retry.clone(),
            );
            out.guards.insert(name.clone(), clients(arm));
        }
        Ok(out)
    }

    /// The backend of `kind` for calls at `guard`'s scope.
    pub fn backend(
        &self,
        guard: &str,
        kind: ElevationBackend,
    ) -> Result<Arc<dyn Elevation>, String> {
        if kind == ElevationBackend::Simulated {
            return Ok(self.simulated.clone());
        }
        let c = self
            .guards
            .get(guard)
            .or(self.home.as_ref())
            .ok_or_else(|| {
                format!(
                    "the `{}` backend needs an [azure] section in the configuration",
                    kind.as_str()
                )
            })?;
        Ok(match kind {
            ElevationBackend::AzurePim => c.pim.clone(),
            _ => c.rbac.clone(),
        })
    }

    /// The ARM client for calls at `guard`'s scope.
    pub fn guard_arm(&self, guard: &str) -> Option<ArmClient> {
        self.guards
            .get(guard)
            .or(self.home.as_ref())
            .map(|c| c.arm.clone())
    }

    /// Whether `guard` lives in another tenant than the broker's home tenant.
    pub fn cross_tenant(&self, guard: &str) -> bool {
        match (&self.config, self.guards.get(guard)) {
            (Some(cfg), Some(g)) => !g
                .arm
                .credential()
                .tenant_id()
                .eq_ignore_ascii_case(&cfg.home.tenant_id),
            _ => false,
        }
    }
}
