//! Row shapes, exactly as stored. Times are canonical text (see `crate::timefmt`); the service
//! layer turns rows into domain values.

use sqlx::FromRow;

pub(super) const SELECT_REQUEST: &str = "select request_id, guard, policy_hash, vault_id, operation, \
    requester_id, requester_email, requester_name, requester_object_id, justification, ticket, \
    duration_minutes, required_approvals, state, created_at, deadline, decided_at, active_from, \
    active_until, end_requested_at, end_requested_by, ended_at, end_reason, failure_message from request";

/// `select <every request column> from request`, to be followed by a `where`.
macro_rules! select_requests {
    () => {
        "select request_id, guard, policy_hash, vault_id, operation, \
    requester_id, requester_email, requester_name, requester_object_id, justification, ticket, \
    duration_minutes, required_approvals, state, created_at, deadline, decided_at, active_from, \
    active_until, end_requested_at, end_requested_by, ended_at, end_reason, failure_message from request"
    };
}

/// `select <every decision column> from decision`, to be followed by a `where`.
macro_rules! select_decisions {
    () => {
        "select decision_id, request_id, approver_id, approver_email, \
    approver_name, approver_object_id, verdict, comment, matched, channel, at from decision"
    };
}

pub(super) const SELECT_REQUESTS: &str = select_requests!();

pub(super) const SELECT_REQUEST_BY_ID: &str = concat!(select_requests!(), " where request_id = $1");

pub(super) const SELECT_DECISIONS_FROM: &str = select_decisions!();

pub(super) const SELECT_DECISIONS: &str = concat!(
    select_decisions!(),
    " where request_id = $1 order by at, decision_id"
);

pub(super) const JOB_COLUMNS: &str = "job_id, kind, request_id, payload, dedupe_key, state, attempts, \
    max_attempts, run_at, lease_owner, lease_until, last_error, created_at, finished_at";

pub(super) const GRANT_COLUMNS: &str = "request_id, backend, scope, role_definition_id, \
    principal_object_id, state, requested_at, active_from, active_until, ended_at, detail";

#[derive(Debug, Clone, FromRow)]
pub struct PrincipalRow {
    pub principal_id: String,
    pub issuer: String,
    pub subject: String,
    pub email: String,
    pub email_normalized: String,
    pub name: String,
    pub azure_object_id: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct RequestRow {
    pub request_id: String,
    pub guard: String,
    pub policy_hash: String,
    pub vault_id: String,
    pub operation: String,
    pub requester_id: String,
    pub requester_email: String,
    pub requester_name: String,
    pub requester_object_id: Option<String>,
    pub justification: String,
    pub ticket: Option<String>,
    pub duration_minutes: i64,
    pub required_approvals: i64,
    pub state: String,
    pub created_at: String,
    pub deadline: String,
    pub decided_at: Option<String>,
    pub active_from: Option<String>,
    pub active_until: Option<String>,
    pub end_requested_at: Option<String>,
    pub end_requested_by: Option<String>,
    pub ended_at: Option<String>,
    pub end_reason: Option<String>,
    pub failure_message: Option<String>,
}

/// Columns a transition may set (each `None` leaves the column as it is).
#[derive(Debug, Clone, Default)]
pub struct TransitionSet {
    pub decided_at: Option<String>,
    pub active_from: Option<String>,
    pub active_until: Option<String>,
    pub ended_at: Option<String>,
    pub end_reason: Option<String>,
    pub failure_message: Option<String>,
}

#[derive(Debug, Clone, FromRow)]
pub struct DecisionRow {
    pub decision_id: String,
    pub request_id: String,
    pub approver_id: String,
    pub approver_email: String,
    pub approver_name: String,
    pub approver_object_id: Option<String>,
    pub verdict: String,
    pub comment: Option<String>,
    pub matched: String,
    pub channel: String,
    pub at: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct ReviewTokenRow {
    pub jti: String,
    pub request_id: String,
    pub approver_email: String,
    pub kid: String,
    pub issued_at: String,
    pub expires_at: String,
    pub used_at: Option<String>,
}

#[derive(Debug, Clone, FromRow)]
pub struct GrantRow {
    pub request_id: String,
    pub backend: String,
    pub scope: String,
    pub role_definition_id: String,
    pub principal_object_id: Option<String>,
    pub state: String,
    pub requested_at: String,
    pub active_from: Option<String>,
    pub active_until: Option<String>,
    pub ended_at: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct GrantSet {
    pub active_from: Option<String>,
    pub active_until: Option<String>,
    pub ended_at: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, FromRow)]
pub struct SimulatedCallRow {
    pub call_id: String,
    pub request_id: String,
    pub step: String,
    pub body: String,
    pub at: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct JobRow {
    pub job_id: String,
    pub kind: String,
    pub request_id: Option<String>,
    pub payload: String,
    pub dedupe_key: Option<String>,
    pub state: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub run_at: String,
    pub lease_owner: Option<String>,
    pub lease_until: Option<String>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub job_id: String,
    pub kind: String,
    pub request_id: Option<String>,
    pub payload: String,
    pub dedupe_key: Option<String>,
    pub max_attempts: i64,
    pub run_at: String,
    pub created_at: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct NotificationRow {
    pub notification_id: String,
    pub request_id: Option<String>,
    pub kind: String,
    pub recipient: String,
    pub subject: String,
    pub message_id: String,
    pub path: Option<String>,
    pub body: String,
    pub sent_at: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    pub session_hash: String,
    pub principal_id: Option<String>,
    pub csrf_token: String,
    pub groups: String,
    pub created_at: String,
    pub last_seen_at: String,
    pub expires_at: String,
    /// Why the session's groups may surprise (e.g. a groups overage); `None` when all is plain.
    pub notice: Option<String>,
}

/// A session with its principal's name and ids, read in one statement (a left join: the
/// `principal_*` columns are null when the session is signed out or its principal is gone).
#[derive(Debug, Clone, FromRow)]
pub struct SessionLoadRow {
    #[sqlx(flatten)]
    pub session: SessionRow,
    pub principal_email: Option<String>,
    pub principal_name: Option<String>,
    pub principal_object_id: Option<String>,
    /// The principal row's own id: `Some` exactly when the principal exists.
    pub principal_found: Option<String>,
}

/// An OpenID Connect sign-in in progress (see migration 0002).
#[derive(Debug, Clone, FromRow)]
pub struct OidcLoginRow {
    pub state_hash: String,
    pub session_hash: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub next_path: String,
    pub created_at: String,
    pub expires_at: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct AuditRow {
    pub seq: i64,
    pub at: String,
    pub action: String,
    pub actor_id: Option<String>,
    pub actor_email: Option<String>,
    pub actor_object_id: Option<String>,
    pub actor_ip: Option<String>,
    pub actor_user_agent: Option<String>,
    pub request_id: Option<String>,
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Filter for listing requests.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    pub state: Option<String>,
    pub requester_id: Option<String>,
    /// Only requests under these guards (`Some(empty)` matches nothing).
    pub guards: Option<Vec<String>>,
    pub limit: i64,
}

/// An Azure Monitor alert taken in (one per alert id and monitor condition).
#[derive(Debug, Clone, FromRow)]
pub struct AlertReceivedRow {
    pub alert_key: String,
    pub hook: String,
    pub alert_id: String,
    pub condition: String,
    pub kind: String,
    pub summary: String,
    pub vault_id: Option<String>,
    pub guards: String,
    pub received_at: String,
}

/// The last posture report of one guard.
#[derive(Debug, Clone, FromRow)]
pub struct PostureRow {
    pub guard: String,
    pub run_at: String,
    pub report: String,
    pub names_resolved: i64,
    pub names_note: Option<String>,
}
