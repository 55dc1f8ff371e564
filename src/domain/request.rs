//! The access request and its state machine. Every rule that decides whether a request may be
//! made, approved, denied, cancelled or ended lives here, as pure functions of the request, the
//! policy, the actor and `now`. The service layer persists what these functions decide.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::arm::VaultId;
use super::operations::Operation;
use super::policy::{GuardPolicy, count_approvals};
use super::principal::{Principal, PrincipalRef};

/// Where a request stands (DESIGN.md "Request lifecycle").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    Pending,
    Approved,
    Active,
    Ended,
    Denied,
    Cancelled,
    Expired,
    Failed,
}

impl RequestState {
    pub const ALL: [RequestState; 8] = [
        Self::Pending,
        Self::Approved,
        Self::Active,
        Self::Ended,
        Self::Denied,
        Self::Cancelled,
        Self::Expired,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Active => "active",
            Self::Ended => "ended",
            Self::Denied => "denied",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// No transition leaves a terminal state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Ended | Self::Denied | Self::Cancelled | Self::Expired | Self::Failed
        )
    }

    /// The edges of the lifecycle diagram, and nothing else.
    pub fn can_become(self, to: RequestState) -> bool {
        use RequestState::*;
        matches!(
            (self, to),
            (Pending, Approved)
                | (Pending, Denied)
                | (Pending, Cancelled)
                | (Pending, Expired)
                | (Approved, Active)
                | (Approved, Failed)
                | (Active, Ended)
        )
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request left the happy path or how its window closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// `ended`: the window ran out.
    Expired,
    /// `ended`: the requester, an approver or an admin ended it before its time.
    EndedEarly,
    /// `ended`: taken away by an operator or a reconciler.
    Revoked,
    /// `expired`: nobody decided before the deadline.
    Deadline,
    /// `expired`: the guard's policy changed while it was pending.
    PolicyChanged,
    /// `denied`: an approver said no.
    Denied,
    /// `cancelled`: the requester withdrew it.
    Cancelled,
    /// `failed`: the grant could not be put in place.
    GrantFailed,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::EndedEarly => "ended_early",
            Self::Revoked => "revoked",
            Self::Deadline => "deadline",
            Self::PolicyChanged => "policy_changed",
            Self::Denied => "denied",
            Self::Cancelled => "cancelled",
            Self::GrantFailed => "grant_failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Expired,
            Self::EndedEarly,
            Self::Revoked,
            Self::Deadline,
            Self::PolicyChanged,
            Self::Denied,
            Self::Cancelled,
            Self::GrantFailed,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// An approver's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Deny,
}

impl Verdict {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "approve" => Some(Self::Approve),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Deny => "deny",
        }
    }
}

/// A rule said no. Each variant has a stable code for the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("you may not request access under guard `{0}`")]
    NotARequester(String),
    #[error("you are not an approver of guard `{0}`")]
    NotAnApprover(String),
    #[error("you cannot approve or deny your own request")]
    SelfApproval,
    #[error("you have already decided on this request")]
    AlreadyDecided,
    #[error("the request is {0}, so this is no longer possible")]
    StateConflict(RequestState),
    #[error("the request's deadline has passed; nothing was decided")]
    DeadlinePassed,
    #[error("the guard's policy changed after this request was made; ask again")]
    PolicyChanged,
    #[error("only the requester can do this")]
    NotTheRequester,
    #[error("{0}")]
    Forbidden(String),
}

impl DomainError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid_input",
            Self::NotARequester(_) => "not_a_requester",
            Self::NotAnApprover(_) => "not_an_approver",
            Self::SelfApproval => "self_approval",
            Self::AlreadyDecided => "already_decided",
            Self::StateConflict(_) => "state_conflict",
            Self::DeadlinePassed => "deadline_passed",
            Self::PolicyChanged => "policy_changed",
            Self::NotTheRequester => "not_the_requester",
            Self::Forbidden(_) => "forbidden",
        }
    }
    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// Longest justification we keep (characters). A reason longer than a page helps no approver.
pub const MAX_JUSTIFICATION: usize = 2000;
/// Shortest useful reason: "because" is not one.
pub const MIN_JUSTIFICATION: usize = 10;
pub const MAX_TICKET: usize = 100;
pub const MIN_DURATION_MINUTES: u32 = 5;
pub const MAX_COMMENT: usize = 2000;

/// What a requester asked for, before any rule ran.
#[derive(Debug, Clone)]
pub struct NewRequestInput {
    pub vault_id: String,
    pub operation: String,
    pub justification: String,
    pub ticket: Option<String>,
    pub duration_minutes: Option<i64>,
    pub guard: Option<String>,
}

/// A request that passed every rule, ready to be stored.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub guard: String,
    pub policy_hash: String,
    pub vault_id: VaultId,
    pub operation: &'static Operation,
    pub justification: String,
    pub ticket: Option<String>,
    pub duration_minutes: u32,
    pub required_approvals: u32,
    pub created_at: OffsetDateTime,
    pub deadline: OffsetDateTime,
}

/// Trim, refuse control characters (except newlines and tabs in free text), bound the length.
fn clean_text(
    field: &'static str,
    raw: &str,
    min: usize,
    max: usize,
    multiline: bool,
) -> Result<String, DomainError> {
    let s = raw.trim();
    if s.chars()
        .any(|c| c.is_control() && !(multiline && (c == '\n' || c == '\t' || c == '\r')))
    {
        return Err(DomainError::invalid(field, "contains control characters"));
    }
    let n = s.chars().count();
    if n < min {
        return Err(DomainError::invalid(
            field,
            if min <= 1 {
                "is required".to_string()
            } else {
                format!("must be at least {min} characters")
            },
        ));
    }
    if n > max {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {max} characters (got {n})"),
        ));
    }
    Ok(s.to_string())
}

/// Check a new request against the catalogue and the guards, and pick its guard.
///
/// SECURITY: the vault must be covered by exactly one guard (or the one named); a vault two
/// guards claim is refused rather than routed to the weaker policy.
pub fn validate_new_request<'g>(
    input: &NewRequestInput,
    guards: &'g [GuardPolicy],
    requester: &Principal,
    now: OffsetDateTime,
) -> Result<(ValidRequest, &'g GuardPolicy), DomainError> {
    let vault = VaultId::parse(&input.vault_id).map_err(|e| DomainError::Invalid {
        field: "vault_id",
        message: e.to_string(),
    })?;
    let operation = super::operations::find(&input.operation).ok_or_else(|| {
        DomainError::invalid(
            "operation",
            format!("unknown operation `{}`", truncate(&input.operation, 80)),
        )
    })?;
    if operation.vault_kind != vault.kind() {
        return Err(DomainError::invalid(
            "operation",
            format!(
                "`{}` applies to a {}, but the vault is a {}",
                operation.key,
                operation.vault_kind.label(),
                vault.kind().label()
            ),
        ));
    }
    let covering: Vec<&GuardPolicy> = guards.iter().filter(|g| g.covers(&vault)).collect();
    let guard = match &input.guard {
        Some(name) => *covering.iter().find(|g| g.name == *name).ok_or_else(|| {
            DomainError::invalid("guard", format!("guard `{name}` does not cover this vault"))
        })?,
        None => match covering.as_slice() {
            [] => {
                return Err(DomainError::invalid(
                    "vault_id",
                    "no guard covers this vault",
                ));
            }
            [g] => *g,
            _ => {
                return Err(DomainError::invalid(
                    "guard",
                    "several guards cover this vault; name one in `guard`",
                ));
            }
        },
    };
    if !guard.may_request(requester) {
        return Err(DomainError::NotARequester(guard.name.clone()));
    }
    if guard.elevation.needs_object_id() && requester.azure_object_id.is_none() {
        return Err(DomainError::Forbidden(
            "your sign-in carries no Azure object id (oid claim), so twokey cannot grant you a role on Azure"
                .into(),
        ));
    }
    let justification = clean_text(
        "justification",
        &input.justification,
        MIN_JUSTIFICATION,
        MAX_JUSTIFICATION,
        true,
    )?;
    let ticket = match input.ticket.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(t) => Some(clean_text("ticket", t, 1, MAX_TICKET, false)?),
    };
    let duration = input
        .duration_minutes
        .unwrap_or(i64::from(guard.default_duration_minutes));
    if duration < i64::from(MIN_DURATION_MINUTES) {
        return Err(DomainError::invalid(
            "duration_minutes",
            format!("must be at least {MIN_DURATION_MINUTES} minutes"),
        ));
    }
    if duration > i64::from(guard.max_duration_minutes) {
        return Err(DomainError::invalid(
            "duration_minutes",
            format!(
                "must be at most {} minutes (the guard's max_duration)",
                guard.max_duration_minutes
            ),
        ));
    }
    let required = guard.required_for(operation);
    // Fail closed: when every approver is a named person, make sure enough remain once the
    // requester is left out; otherwise the request could never be approved.
    let only_users = guard
        .approvers
        .iter()
        .all(|s| matches!(s, super::policy::Subject::User(_)));
    if only_users {
        let others = guard
            .approver_user_emails()
            .into_iter()
            .filter(|e| *e != requester.email_normalized())
            .count();
        if (others as u32) < required {
            return Err(DomainError::Forbidden(format!(
                "this operation needs {required} approvals but guard `{}` has only {others} approver(s) other than you",
                guard.name
            )));
        }
    }
    Ok((
        ValidRequest {
            guard: guard.name.clone(),
            policy_hash: guard.hash(),
            vault_id: vault,
            operation,
            justification,
            ticket,
            duration_minutes: duration as u32,
            required_approvals: required,
            created_at: now,
            deadline: now + Duration::minutes(i64::from(guard.pending_deadline_minutes)),
        },
        guard,
    ))
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// What the rules know of a stored request when a decision arrives.
#[derive(Debug, Clone)]
pub struct RequestFacts {
    pub state: RequestState,
    pub requester: PrincipalRef,
    pub policy_hash: String,
    pub deadline: OffsetDateTime,
    pub required_approvals: u32,
}

/// A decision already recorded.
#[derive(Debug, Clone)]
pub struct PriorDecision {
    pub approver: PrincipalRef,
    pub verdict: Verdict,
    /// The approver entries the approver matched when deciding.
    pub matched: Vec<String>,
}

/// What recording a decision does to the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionOutcome {
    /// The approver entries that made this person an approver (stored with the decision).
    pub matched: Vec<String>,
    /// `Some(Approved)` when this approval completes the count, `Some(Denied)` on a veto.
    pub new_state: Option<RequestState>,
    /// Approvals that count after this decision.
    pub approvals: usize,
}

/// Decide whether `approver` may record `verdict` on a request, and what follows.
///
/// SECURITY: every check runs at decision time with the principal's current groups; a stale
/// request (deadline passed, policy changed) is a *no*, never an approval.
pub fn evaluate_decision(
    req: &RequestFacts,
    prior: &[PriorDecision],
    guard: &GuardPolicy,
    approver: &Principal,
    verdict: Verdict,
    now: OffsetDateTime,
) -> Result<DecisionOutcome, DomainError> {
    if req.state != RequestState::Pending {
        return Err(DomainError::StateConflict(req.state));
    }
    if now >= req.deadline {
        return Err(DomainError::DeadlinePassed);
    }
    if guard.hash() != req.policy_hash {
        return Err(DomainError::PolicyChanged);
    }
    // SECURITY: the requester never decides on their own request, under any identifier.
    if approver.is_same_person(&req.requester) {
        return Err(DomainError::SelfApproval);
    }
    let matched = guard.approver_entries_for(approver);
    if matched.is_empty() {
        return Err(DomainError::NotAnApprover(guard.name.clone()));
    }
    // SECURITY: one person counts once, even with two accounts for one mailbox or object id.
    if prior.iter().any(|d| approver.is_same_person(&d.approver)) {
        return Err(DomainError::AlreadyDecided);
    }
    let mut approvals: Vec<Vec<String>> = prior
        .iter()
        .filter(|d| d.verdict == Verdict::Approve)
        .map(|d| d.matched.clone())
        .collect();
    let new_state = match verdict {
        // Any deny vetoes, whatever the count.
        Verdict::Deny => Some(RequestState::Denied),
        Verdict::Approve => {
            approvals.push(matched.clone());
            let n = count_approvals(&approvals, guard.distinct_groups);
            (n >= req.required_approvals as usize).then_some(RequestState::Approved)
        }
    };
    Ok(DecisionOutcome {
        approvals: count_approvals(&approvals, guard.distinct_groups),
        matched,
        new_state,
    })
}

/// Validate an approver's comment (optional; bounded).
pub fn clean_comment(raw: Option<&str>) -> Result<Option<String>, DomainError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(c) => Ok(Some(clean_text("comment", c, 1, MAX_COMMENT, true)?)),
    }
}

/// Who may end an active window early: the requester, an approver of the guard, or an admin.
pub fn may_end_early(
    requester: &PrincipalRef,
    guard: &GuardPolicy,
    actor: &Principal,
    actor_is_admin: bool,
) -> bool {
    actor_is_admin
        || actor.is_same_person(requester)
        || !guard.approver_entries_for(actor).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::domain::arm::{ResourceGuardId, VaultPattern};
    use crate::domain::policy::{ApproverSignIn, ElevationBackend, Subject};

    const SUB: &str = "00000000-0000-0000-0000-000000000001";

    fn guard(required: u32, distinct: bool, approvers: &[&str]) -> GuardPolicy {
        GuardPolicy {
            name: "g".into(),
            resource_guard_id: ResourceGuardId::parse(&format!(
                "/subscriptions/{SUB}/resourceGroups/sec/providers/Microsoft.DataProtection/resourceGuards/guard"
            ))
            .unwrap(),
            vaults: vec![
                VaultPattern::parse(&format!(
                    "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/*"
                ))
                .unwrap(),
            ],
            approvers: approvers.iter().map(|a| Subject::parse(a).unwrap()).collect(),
            requesters: None,
            watchers: vec![],
            required_approvals: required,
            distinct_groups: distinct,
            operation_approvals: BTreeMap::new(),
            max_duration_minutes: 240,
            default_duration_minutes: 60,
            pending_deadline_minutes: 60 * 24,
            elevation: ElevationBackend::Simulated,
            role_definition_id: crate::domain::policy::BACKUP_MUA_OPERATOR_ROLE.into(),
            approver_sign_in: ApproverSignIn::Required,
        }
    }

    fn person(id: &str, email: &str, groups: &[&str]) -> Principal {
        Principal {
            id: id.into(),
            email: email.into(),
            name: id.into(),
            azure_object_id: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn vault() -> String {
        format!(
            "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v1"
        )
    }

    fn input(op: &str) -> NewRequestInput {
        NewRequestInput {
            vault_id: vault(),
            operation: op.into(),
            justification: "restore drill cleanup, INC-42".into(),
            ticket: Some("INC-42".into()),
            duration_minutes: Some(30),
            guard: None,
        }
    }

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2026-12-03 12:00 UTC)
    }

    fn irreversible_rsv_op() -> &'static Operation {
        crate::domain::operations::for_kind(crate::domain::arm::VaultKind::RecoveryServices)
            .find(|o| !o.reversible)
            .unwrap()
    }

    fn reversible_rsv_op() -> &'static Operation {
        crate::domain::operations::for_kind(crate::domain::arm::VaultKind::RecoveryServices)
            .find(|o| o.reversible)
            .unwrap()
    }

    fn facts(g: &GuardPolicy, requester: &Principal, required: u32) -> RequestFacts {
        RequestFacts {
            state: RequestState::Pending,
            requester: requester.to_ref(),
            policy_hash: g.hash(),
            deadline: now() + Duration::hours(1),
            required_approvals: required,
        }
    }

    #[test]
    fn lifecycle_edges_are_exactly_the_diagram() {
        use RequestState::*;
        let allowed = [
            (Pending, Approved),
            (Pending, Denied),
            (Pending, Cancelled),
            (Pending, Expired),
            (Approved, Active),
            (Approved, Failed),
            (Active, Ended),
        ];
        for from in RequestState::ALL {
            for to in RequestState::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from}->{to}"
                );
            }
            if from.is_terminal() {
                assert!(RequestState::ALL.iter().all(|t| !from.can_become(*t)));
            }
        }
    }

    #[test]
    fn irreversible_operations_need_two_even_on_a_one_approval_guard() {
        let g = guard(1, false, &["user:bob@x.io", "user:carol@x.io"]);
        assert_eq!(g.required_for(irreversible_rsv_op()), 2);
        assert_eq!(g.required_for(reversible_rsv_op()), 1);
    }

    #[test]
    fn new_request_is_validated_field_by_field() {
        let g = [guard(1, false, &["user:bob@x.io"])];
        let alice = person("a", "alice@x.io", &[]);
        let ok = validate_new_request(&input(reversible_rsv_op().key), &g, &alice, now()).unwrap();
        assert_eq!(ok.0.duration_minutes, 30);
        assert_eq!(ok.0.deadline, now() + Duration::days(1));

        let field = |i: NewRequestInput| match validate_new_request(&i, &g, &alice, now()) {
            Err(DomainError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        };
        let mut i = input(reversible_rsv_op().key);
        i.vault_id = "/subscriptions/nope".into();
        assert_eq!(field(i), "vault_id");
        assert_eq!(field(input("rsv.nonsense")), "operation");
        let mut i = input(reversible_rsv_op().key);
        i.duration_minutes = Some(241);
        assert_eq!(field(i), "duration_minutes");
        let mut i = input(reversible_rsv_op().key);
        i.duration_minutes = Some(1);
        assert_eq!(field(i), "duration_minutes");
        let mut i = input(reversible_rsv_op().key);
        i.justification = "x".repeat(MAX_JUSTIFICATION + 1);
        assert_eq!(field(i), "justification");
        let mut i = input(reversible_rsv_op().key);
        i.justification = "short".into();
        assert_eq!(field(i), "justification");
        let bv_op = crate::domain::operations::for_kind(crate::domain::arm::VaultKind::Backup)
            .next()
            .unwrap();
        assert_eq!(field(input(bv_op.key)), "operation");
    }

    #[test]
    fn a_vault_two_guards_cover_must_name_its_guard() {
        let mut second = guard(1, false, &["user:carol@x.io"]);
        second.name = "weaker".into();
        let guards = [
            guard(2, false, &["user:bob@x.io", "user:carol@x.io"]),
            second,
        ];
        let alice = person("a", "alice@x.io", &[]);
        let field =
            match validate_new_request(&input(reversible_rsv_op().key), &guards, &alice, now()) {
                Err(DomainError::Invalid { field, .. }) => field,
                other => panic!("expected refusal, got {other:?}"),
            };
        assert_eq!(field, "guard");
        let mut named = input(reversible_rsv_op().key);
        named.guard = Some("g".into());
        let (v, g) = validate_new_request(&named, &guards, &alice, now()).unwrap();
        assert_eq!((v.guard.as_str(), g.required_approvals), ("g", 2));
    }

    #[test]
    fn a_request_nobody_else_could_approve_is_refused_up_front() {
        let g = [guard(1, false, &["user:alice@x.io"])];
        let alice = person("a", "Alice+ops@X.io", &[]);
        assert!(matches!(
            validate_new_request(&input(reversible_rsv_op().key), &g, &alice, now()),
            Err(DomainError::Forbidden(_))
        ));
    }

    #[test]
    fn requester_cannot_approve_under_any_spelling() {
        let g = guard(1, false, &["user:alice@x.io", "user:bob@x.io"]);
        let alice = person("a", "alice@x.io", &[]);
        let f = facts(&g, &alice, 1);
        for (id, email) in [
            ("a", "alice@x.io"),
            ("a2", "Alice@X.io"),
            ("a3", "alice+x@x.io"),
        ] {
            let me = person(id, email, &[]);
            assert_eq!(
                evaluate_decision(&f, &[], &g, &me, Verdict::Approve, now()),
                Err(DomainError::SelfApproval)
            );
        }
    }

    #[test]
    fn non_approver_and_double_decisions_are_refused() {
        let g = guard(2, false, &["user:bob@x.io", "user:carol@x.io"]);
        let alice = person("a", "alice@x.io", &[]);
        let f = facts(&g, &alice, 2);
        let mallory = person("m", "mallory@x.io", &[]);
        assert!(matches!(
            evaluate_decision(&f, &[], &g, &mallory, Verdict::Approve, now()),
            Err(DomainError::NotAnApprover(_))
        ));
        let bob = person("b", "bob@x.io", &[]);
        let first = evaluate_decision(&f, &[], &g, &bob, Verdict::Approve, now()).unwrap();
        assert_eq!(first.new_state, None);
        let prior = [PriorDecision {
            approver: bob.to_ref(),
            verdict: Verdict::Approve,
            matched: first.matched,
        }];
        let bob2 = person("b2", "BOB+again@x.io", &[]);
        assert_eq!(
            evaluate_decision(&f, &prior, &g, &bob2, Verdict::Approve, now()),
            Err(DomainError::AlreadyDecided)
        );
        let carol = person("c", "carol@x.io", &[]);
        let second = evaluate_decision(&f, &prior, &g, &carol, Verdict::Approve, now()).unwrap();
        assert_eq!(second.new_state, Some(RequestState::Approved));
    }

    #[test]
    fn a_deny_vetoes_even_after_approvals() {
        let g = guard(2, false, &["user:bob@x.io", "user:carol@x.io"]);
        let alice = person("a", "alice@x.io", &[]);
        let f = facts(&g, &alice, 2);
        let prior = [PriorDecision {
            approver: person("b", "bob@x.io", &[]).to_ref(),
            verdict: Verdict::Approve,
            matched: vec!["user:bob@x.io".into()],
        }];
        let carol = person("c", "carol@x.io", &[]);
        let out = evaluate_decision(&f, &prior, &g, &carol, Verdict::Deny, now()).unwrap();
        assert_eq!(out.new_state, Some(RequestState::Denied));
    }

    #[test]
    fn stale_requests_are_a_no() {
        let g = guard(1, false, &["user:bob@x.io"]);
        let alice = person("a", "alice@x.io", &[]);
        let bob = person("b", "bob@x.io", &[]);
        let mut f = facts(&g, &alice, 1);
        assert_eq!(
            evaluate_decision(&f, &[], &g, &bob, Verdict::Approve, f.deadline),
            Err(DomainError::DeadlinePassed)
        );
        f.policy_hash = "other".into();
        assert_eq!(
            evaluate_decision(&f, &[], &g, &bob, Verdict::Approve, now()),
            Err(DomainError::PolicyChanged)
        );
        f.policy_hash = g.hash();
        f.state = RequestState::Cancelled;
        assert_eq!(
            evaluate_decision(&f, &[], &g, &bob, Verdict::Approve, now()),
            Err(DomainError::StateConflict(RequestState::Cancelled))
        );
    }

    #[test]
    fn distinct_groups_rule_needs_both_groups() {
        let g = guard(2, true, &["group:peers", "group:security"]);
        let alice = person("a", "alice@x.io", &[]);
        let f = facts(&g, &alice, 2);
        let p1 = person("p1", "p1@x.io", &["peers"]);
        let p2 = person("p2", "p2@x.io", &["peers"]);
        let s1 = person("s1", "s1@x.io", &["security"]);
        let d1 = evaluate_decision(&f, &[], &g, &p1, Verdict::Approve, now()).unwrap();
        let prior = vec![PriorDecision {
            approver: p1.to_ref(),
            verdict: Verdict::Approve,
            matched: d1.matched,
        }];
        let d2 = evaluate_decision(&f, &prior, &g, &p2, Verdict::Approve, now()).unwrap();
        assert_eq!(d2.new_state, None, "two peers are one group");
        let d3 = evaluate_decision(&f, &prior, &g, &s1, Verdict::Approve, now()).unwrap();
        assert_eq!(d3.new_state, Some(RequestState::Approved));
    }
}
