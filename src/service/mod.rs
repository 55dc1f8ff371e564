//! Use cases. Each transition is one database transaction that checks the rules (in
//! `domain`), moves the state with a conditional update, appends its audit event and queues
//! the jobs for its side effects. Nothing here sends mail or calls Azure: jobs do, afterwards.

pub mod jobs_api {
    //! Job handler types, re-exported for the worker and the notifiers.
    pub use super::jobs_impl::{JobFailure, JobKind, step_guid};
}
mod alerts;
mod decide;
mod jobs_impl;
mod posture;
mod reconcile;
mod view;

use std::sync::Arc;

use serde_json::json;
use time::{Duration, OffsetDateTime};
use tokio::sync::Notify;

use crate::audit::{self, Action, Actor};
use crate::auth::review_token::ReviewTokens;
use crate::clock::Clock;
use crate::config::Config;
use crate::domain::policy::GuardPolicy;
use crate::domain::principal::Principal;
use crate::domain::request::{
    self, DomainError, EndReason, NewRequestInput, PriorDecision, RequestState, Verdict,
};
use crate::store::{
    DecisionRow, NewJob, RequestFilter, RequestRow, Store, StoreError, TransitionSet, Tx,
};
use crate::timefmt;

pub use alerts::{Intake, WebhookPayload};
pub use jobs_impl::{JobKind, MailKind, MailPayload};
pub use posture::{PostureRun, render_text as render_posture_text};
pub use reconcile::ReconcileReport;
pub use view::{DecisionView, PersonView, RequestView, TimelineEntry};

/// What went wrong in a use case.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// The caller of a use case: who they are now, and where the call came from.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Caller {
    pub fn actor(&self) -> Actor {
        Actor {
            id: Some(self.principal.id.clone()),
            email: Some(self.principal.email.clone()),
            object_id: self.principal.azure_object_id.clone(),
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
        }
    }
}

/// How a decision arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Api,
    ReviewLink,
}

impl Channel {
    fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::ReviewLink => "review_link",
        }
    }
}

/// The application's use cases, shared by the HTTP layer, the CLI and the workers.
#[derive(Clone)]
pub struct Service {
    pub store: Store,
    pub config: Arc<Config>,
    pub clock: Arc<dyn Clock>,
    pub tokens: ReviewTokens,
    /// How mail leaves (SMTP or the demo outbox).
    pub mailer: Arc<crate::notify::MailTransport>,
    /// Woken after a commit that queued jobs, so the worker does not wait for its poll.
    pub wake: Arc<Notify>,
    /// The elevation backends, per guard.
    pub elevation: Arc<crate::azure::Elevations>,
    /// When the reconciler last compared grants with Azure (service clock).
    pub last_reconcile: Arc<std::sync::Mutex<Option<OffsetDateTime>>>,
    /// Outbound webhook deliveries (no redirects, timeouts, https only unless allowed).
    pub http: reqwest::Client,
    /// Once-a-day job keys this process already queued (saves a write per sweep).
    daily_queued: Arc<std::sync::Mutex<Vec<String>>>,
    /// Decisions waiting for the next batch (see `decide`).
    decider: Arc<decide::Decider>,
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A fresh UUIDv7 id (for the HTTP layer's principal records).
pub fn new_id_pub() -> String {
    new_id()
}

/// The message of the `Forbidden` error for a review link used a second time.
pub const LINK_USED: &str = "this review link has already been used";

impl Service {
    pub fn new(store: Store, config: Arc<Config>, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let tokens = ReviewTokens::new(&config.review.keys);
        let mailer = crate::notify::MailTransport::new(
            config.mail.smtp_url.as_ref().map(|u| u.expose()),
            config.mail.outbox_dir.as_ref(),
            config.mail.timeout,
        )?;
        let elevation = crate::azure::Elevations::new(config.azure.as_ref())?;
        let http = crate::notify::webhook::client(
            config.alerts.webhook_timeout,
            !config.alerts.allow_http_loopback,
        )?;
        Ok(Self {
            store,
            config,
            clock,
            tokens,
            mailer: Arc::new(mailer),
            wake: Arc::new(Notify::new()),
            elevation: Arc::new(elevation),
            last_reconcile: Arc::new(std::sync::Mutex::new(None)),
            http,
            daily_queued: Arc::new(std::sync::Mutex::new(Vec::new())),
            decider: Arc::new(decide::Decider::new()),
        })
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    pub fn guard(&self, name: &str) -> Option<&GuardPolicy> {
        self.config.guards.iter().find(|g| g.name == name)
    }

    /// Whether `p` is an auditor (may read every request and the audit log).
    pub fn is_auditor(&self, p: &Principal) -> bool {
        self.config.auth.auditors.iter().any(|s| s.matches(p)) || self.is_admin(p)
    }

    pub fn is_admin(&self, p: &Principal) -> bool {
        self.config.auth.admins.iter().any(|s| s.matches(p))
    }

    /// Guards `p` approves for, by their claims now.
    pub fn guards_approved_by(&self, p: &Principal) -> Vec<&GuardPolicy> {
        self.config
            .guards
            .iter()
            .filter(|g| !g.approver_entries_for(p).is_empty())
            .collect()
    }

    fn job(
        &self,
        kind: JobKind,
        request_id: &str,
        payload: serde_json::Value,
        dedupe: Option<String>,
        run_at: OffsetDateTime,
    ) -> NewJob {
        NewJob {
            job_id: new_id(),
            kind: kind.as_str().to_string(),
            request_id: Some(request_id.to_string()),
            payload: payload.to_string(),
            dedupe_key: dedupe,
            max_attempts: kind.max_attempts(),
            run_at: timefmt::fmt(run_at),
            created_at: timefmt::fmt(self.now()),
        }
    }

    async fn queue_mail(
        &self,
        tx: &mut Tx,
        kind: MailKind,
        req: &RequestRow,
        to: &str,
        extra: serde_json::Value,
        dedupe: String,
    ) -> ServiceResult<()> {
        let payload = serde_json::to_value(MailPayload {
            kind,
            request_id: req.request_id.clone(),
            to: to.to_string(),
            extra,
        })
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
        tx.queue_job(self.job(
            JobKind::Mail,
            &req.request_id,
            payload,
            Some(dedupe),
            self.now(),
        ));
        Ok(())
    }

    /// Mail the watchers of the request's guard about `event`.
    async fn queue_watchers(
        &self,
        tx: &mut Tx,
        req: &RequestRow,
        event: &str,
    ) -> ServiceResult<()> {
        self.queue_watchers_with(tx, req, json!({ "event": event }), event)
            .await
    }

    /// The watcher event point for a request: mail each watcher of the request's guard, and
    /// deliver to the guard's webhooks that subscribe to the event; `key` makes each unique (a
    /// repeat of the same key is not queued twice).
    async fn queue_watchers_with(
        &self,
        tx: &mut Tx,
        req: &RequestRow,
        extra: serde_json::Value,
        key: &str,
    ) -> ServiceResult<()> {
        let Some(guard) = self.guard(&req.guard) else {
            return Ok(());
        };
        for w in &guard.watchers {
            let dedupe = format!("mail:{}:watcher:{key}:{}", req.request_id, w.to_lowercase());
            self.queue_mail(tx, MailKind::Watcher, req, w, extra.clone(), dedupe)
                .await?;
        }
        // The same event goes to the guard's webhooks that subscribe to it.
        self.queue_request_webhooks(tx, req, &extra, key).await
    }

    async fn queue_requester(
        &self,
        tx: &mut Tx,
        req: &RequestRow,
        event: &str,
    ) -> ServiceResult<()> {
        self.queue_mail(
            tx,
            MailKind::Requester,
            req,
            &req.requester_email,
            json!({ "event": event }),
            format!("mail:{}:requester:{}", req.request_id, event),
        )
        .await
    }

    /// The people who get a review link for a request: the guard's `user:` approvers and, in
    /// dev sign-in, the dev people whose groups make them approvers; never the requester.
    pub fn review_recipients(&self, guard: &GuardPolicy, requester: &Principal) -> Vec<String> {
        let requester = requester.to_ref();
        let mut out: Vec<String> = guard.approver_user_emails();
        for u in &self.config.auth.dev_users {
            let p = Principal {
                id: String::new(),
                email: u.email.clone(),
                name: u.name.clone(),
                azure_object_id: u.object_id.clone(),
                groups: u.groups.clone(),
            };
            // SECURITY: the requester is never sent their own review link, under any of
            // their identifiers (email spelling or Azure object id).
            if !guard.approver_entries_for(&p).is_empty() && !p.is_same_person(&requester) {
                out.push(p.email_normalized());
            }
        }
        out.sort();
        out.dedup();
        out.retain(|e| *e != crate::domain::principal::normalize_email(&requester.email));
        out
    }

    fn wake_worker(&self) {
        self.wake.notify_one();
    }

    // ---- use cases ---------------------------------------------------------------------

    /// Ask for one critical operation on one vault.
    pub async fn create_request(
        &self,
        caller: &Caller,
        input: NewRequestInput,
    ) -> ServiceResult<RequestView> {
        let now = self.now();
        let (valid, guard) =
            request::validate_new_request(&input, &self.config.guards, &caller.principal, now)?;
        let p = &caller.principal;
        let row = RequestRow {
            request_id: new_id(),
            guard: valid.guard.clone(),
            policy_hash: valid.policy_hash.clone(),
            vault_id: valid.vault_id.to_string(),
            operation: valid.operation.key.to_string(),
            requester_id: p.id.clone(),
            requester_email: p.email.clone(),
            requester_name: p.name.clone(),
            requester_object_id: p.azure_object_id.clone(),
            justification: valid.justification.clone(),
            ticket: valid.ticket.clone(),
            duration_minutes: i64::from(valid.duration_minutes),
            required_approvals: i64::from(valid.required_approvals),
            state: RequestState::Pending.as_str().into(),
            created_at: timefmt::fmt(valid.created_at),
            deadline: timefmt::fmt(valid.deadline),
            decided_at: None,
            active_from: None,
            active_until: None,
            end_requested_at: None,
            end_requested_by: None,
            ended_at: None,
            end_reason: None,
            failure_message: None,
        };
        let mut tx = self.store.begin().await?;
        tx.insert_request(&row).await?;
        audit::record(
            &mut tx,
            now,
            Action::RequestCreated,
            &caller.actor(),
            Some(&row.request_id),
            json!({
                "guard": row.guard,
                "resource_guard_id": guard.resource_guard_id.to_string(),
                "policy_hash": row.policy_hash,
                "vault_id": row.vault_id,
                "operation": row.operation,
                "operation_reversible": valid.operation.reversible,
                "justification": row.justification,
                "ticket": row.ticket,
                "duration_minutes": row.duration_minutes,
                "required_approvals": row.required_approvals,
                "distinct_groups": guard.distinct_groups,
                "deadline": row.deadline,
                "requester": { "id": p.id, "email": p.email, "name": p.name, "object_id": p.azure_object_id },
            }),
        )
        .await?;
        for approver in self.review_recipients(guard, p) {
            self.queue_mail(
                &mut tx,
                MailKind::ReviewRequest,
                &row,
                &approver,
                json!({}),
                format!("mail:{}:review:{}", row.request_id, approver),
            )
            .await?;
        }
        self.queue_requester(&mut tx, &row, "created").await?;
        self.queue_watchers(&mut tx, &row, "created").await?;
        self.check_new_request(&mut tx, &row, valid.operation.reversible, &caller.actor())
            .await?;
        // The answer is the request as committed, built without reading it back: it is the row
        // just inserted, it has no decisions yet, and every event it has is one of this
        // transaction's.
        let events = tx.events_of(&row.request_id);
        tx.commit().await?;
        self.wake_worker();
        view::build(self, row, Vec::new(), events)
    }

    /// Record an approver's decision; the last needed approval approves, any deny vetoes.
    pub async fn decide(
        &self,
        caller: &Caller,
        id: &str,
        verdict: Verdict,
        comment: Option<&str>,
        channel: Channel,
    ) -> ServiceResult<RequestView> {
        self.decide_inner(caller, id, verdict, comment, channel, None)
            .await
    }

    /// Decide through a review link: the link's `jti` is used up in the same transaction as
    /// the decision, so a link decides at most once even under concurrent clicks.
    pub async fn decide_with_link(
        &self,
        caller: &Caller,
        claims: &crate::auth::review_token::ReviewClaims,
        verdict: Verdict,
        comment: Option<&str>,
    ) -> ServiceResult<RequestView> {
        self.decide_inner(
            caller,
            &claims.rid,
            verdict,
            comment,
            Channel::ReviewLink,
            Some(&claims.jti),
        )
        .await
    }

    async fn decide_inner(
        &self,
        caller: &Caller,
        id: &str,
        verdict: Verdict,
        comment: Option<&str>,
        channel: Channel,
        jti: Option<&str>,
    ) -> ServiceResult<RequestView> {
        let comment = request::clean_comment(comment)?;
        self.decide_queued(decide::DecisionCall {
            caller: caller.clone(),
            id: id.to_string(),
            verdict,
            comment,
            channel,
            jti: jti.map(str::to_string),
        })
        .await
    }

    /// Tell approvers who have not decided that the request is settled.
    async fn queue_already_decided(
        &self,
        tx: &mut Tx,
        req: &RequestRow,
        prior: &[DecisionRow],
        decider: &Principal,
    ) -> ServiceResult<()> {
        let Some(guard) = self.guard(&req.guard) else {
            return Ok(());
        };
        let requester = Principal {
            id: req.requester_id.clone(),
            email: req.requester_email.clone(),
            name: req.requester_name.clone(),
            azure_object_id: req.requester_object_id.clone(),
            groups: vec![],
        };
        for a in self.review_recipients(guard, &requester) {
            let decided = a == decider.email_normalized()
                || prior
                    .iter()
                    .any(|d| crate::domain::principal::normalize_email(&d.approver_email) == a);
            if !decided {
                self.queue_mail(
                    tx,
                    MailKind::AlreadyDecided,
                    req,
                    &a,
                    json!({ "by": decider.email }),
                    format!("mail:{}:decided:{}", req.request_id, a),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Move a pending request to `expired` inside `tx` (deadline passed or policy changed).
    async fn void_in(
        &self,
        tx: &mut Tx,
        req: &RequestRow,
        reason: EndReason,
        now: OffsetDateTime,
    ) -> ServiceResult<bool> {
        let moved = tx
            .transition(
                &req.request_id,
                "pending",
                "expired",
                &void_set(reason, now),
            )
            .await?;
        if moved {
            self.record_void(tx, req, reason, now).await?;
        }
        Ok(moved)
    }

    /// What a request's void writes besides its state: the event and the mails.
    async fn record_void(
        &self,
        tx: &mut Tx,
        req: &RequestRow,
        reason: EndReason,
        now: OffsetDateTime,
    ) -> ServiceResult<()> {
        audit::record(
            tx,
            now,
            Action::RequestExpired,
            &Actor::system(),
            Some(&req.request_id),
            json!({
                "reason": reason.as_str(),
                "deadline": req.deadline,
                "policy_hash": req.policy_hash,
                "current_policy_hash": self.guard(&req.guard).map(GuardPolicy::hash),
            }),
        )
        .await?;
        self.queue_requester(tx, req, "expired").await?;
        self.queue_watchers(tx, req, "expired").await
    }

    /// The requester withdraws a pending request.
    pub async fn cancel(&self, caller: &Caller, id: &str) -> ServiceResult<RequestView> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let req = tx.get_request(id).await?.ok_or(ServiceError::NotFound)?;
        if !self.may_see(&caller.principal, &req) {
            return Err(ServiceError::NotFound);
        }
        if req.requester_id != caller.principal.id {
            return Err(DomainError::NotTheRequester.into());
        }
        let state = parse_state(&req.state)?;
        if state != RequestState::Pending {
            return Err(DomainError::StateConflict(state).into());
        }
        let moved = tx
            .transition(
                id,
                "pending",
                "cancelled",
                &TransitionSet {
                    ended_at: Some(timefmt::fmt(now)),
                    end_reason: Some(EndReason::Cancelled.as_str().into()),
                    ..Default::default()
                },
            )
            .await?;
        if !moved {
            return Err(DomainError::StateConflict(state).into());
        }
        audit::record(
            &mut tx,
            now,
            Action::RequestCancelled,
            &caller.actor(),
            Some(id),
            json!({}),
        )
        .await?;
        self.queue_watchers(&mut tx, &req, "cancelled").await?;
        tx.commit().await?;
        self.wake_worker();
        self.view(id).await
    }

    /// End an active window before its time: the revoke job is brought forward to now.
    pub async fn end_early(&self, caller: &Caller, id: &str) -> ServiceResult<RequestView> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let req = tx.get_request(id).await?.ok_or(ServiceError::NotFound)?;
        if !self.may_see(&caller.principal, &req) {
            return Err(ServiceError::NotFound);
        }
        let state = parse_state(&req.state)?;
        let requester = crate::domain::principal::PrincipalRef {
            id: req.requester_id.clone(),
            email: req.requester_email.clone(),
            name: req.requester_name.clone(),
            azure_object_id: req.requester_object_id.clone(),
        };
        let allowed = match self.guard(&req.guard) {
            Some(g) => request::may_end_early(
                &requester,
                g,
                &caller.principal,
                self.is_admin(&caller.principal),
            ),
            // Ending access is always safe; with the guard gone, the requester and admins may.
            None => caller.principal.is_same_person(&requester) || self.is_admin(&caller.principal),
        };
        if !allowed {
            return Err(DomainError::Forbidden(
                "only the requester, an approver of the guard or an admin may end this window"
                    .into(),
            )
            .into());
        }
        if state != RequestState::Active || req.end_requested_at.is_some() {
            return Err(DomainError::StateConflict(state).into());
        }
        let by =
            json!({ "id": caller.principal.id, "email": caller.principal.email, "ip": caller.ip })
                .to_string();
        if !tx
            .request_end(id, &timefmt::fmt(now), &by, EndReason::EndedEarly.as_str())
            .await?
        {
            return Err(DomainError::StateConflict(state).into());
        }
        tx.reschedule_job(&format!("revoke:{id}"), &timefmt::fmt(now))
            .await?;
        tx.commit().await?;
        self.wake_worker();
        self.view(id).await
    }

    /// Expire every pending request whose deadline has passed. Returns how many.
    pub async fn expire_due(&self) -> ServiceResult<usize> {
        let now = self.now();
        let ids = self.store.pending_past_deadline(&timefmt::fmt(now)).await?;
        let mut n = 0;
        for id in ids {
            let mut tx = self.store.begin().await?;
            if let Some(req) = tx.get_request(&id).await?
                && self
                    .void_in(&mut tx, &req, EndReason::Deadline, now)
                    .await?
            {
                n += 1;
            }
            tx.commit().await?;
        }
        if n > 0 {
            self.wake_worker();
        }
        Ok(n)
    }

    /// Record the policy of each guard; void pending requests made under another policy (or
    /// under a guard that no longer exists). Run at start-up, before serving.
    pub async fn load_policies(&self) -> ServiceResult<usize> {
        let now = self.now();
        let known: std::collections::HashMap<String, String> =
            self.store.guard_policies().await?.into_iter().collect();
        for g in &self.config.guards {
            let hash = g.hash();
            if known.get(&g.name) != Some(&hash) {
                let mut tx = self.store.begin().await?;
                tx.upsert_guard_policy(&g.name, &hash, &timefmt::fmt(now))
                    .await?;
                audit::record(
                    &mut tx,
                    now,
                    Action::PolicyLoaded,
                    &Actor::system(),
                    None,
                    json!({
                        "guard": g.name,
                        "policy_hash": hash,
                        "previous_policy_hash": known.get(&g.name),
                        "policy": g,
                    }),
                )
                .await?;
                tx.commit().await?;
            }
        }
        let mut voided = 0;
        for (id, guard) in self.store.pending_guards().await? {
            let current = self.guard(&guard).map(GuardPolicy::hash);
            let mut tx = self.store.begin().await?;
            if let Some(req) = tx.get_request(&id).await?
                && current.as_deref() != Some(req.policy_hash.as_str())
                && self
                    .void_in(&mut tx, &req, EndReason::PolicyChanged, now)
                    .await?
            {
                voided += 1;
            }
            tx.commit().await?;
        }
        Ok(voided)
    }

    /// Record a refused review link: the audit event, a mail to the guard's watchers, and an
    /// alert when one request (or links naming none) collects `alerts.token_burst_count`
    /// refusals within `alerts.token_burst_window`.
    pub async fn token_rejected(
        &self,
        actor: &Actor,
        reason: &str,
        claims: Option<&crate::auth::review_token::ReviewClaims>,
    ) -> ServiceResult<()> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let seq = audit::record(
            &mut tx,
            now,
            Action::TokenRejected,
            actor,
            claims.map(|c| c.rid.as_str()),
            json!({
                "reason": reason,
                "sent_to": claims.map(|c| c.sub.clone()),
                "jti": claims.map(|c| c.jti.clone()),
            }),
        )
        .await?;
        // Only a token that verified names a request (and so a guard and its watchers).
        let req = match claims {
            Some(c) => tx.get_request(&c.rid).await?,
            None => None,
        };
        if let Some(req) = &req {
            let event = format!("token_rejected:{reason}");
            let extra = json!({ "event": event, "by": actor.email });
            self.queue_watchers_with(&mut tx, req, extra, &format!("rejected:{seq}"))
                .await?;
        }
        self.check_token_burst(&mut tx, req.as_ref(), actor).await?;
        tx.commit().await?;
        self.wake_worker();
        Ok(())
    }

    // ---- reads -------------------------------------------------------------------------

    /// Whether `p` may see `req`: its requester, the guard's approvers and watchers, auditors.
    pub fn may_see(&self, p: &Principal, req: &RequestRow) -> bool {
        if req.requester_id == p.id || self.is_auditor(p) {
            return true;
        }
        match self.guard(&req.guard) {
            Some(g) => {
                !g.approver_entries_for(p).is_empty()
                    || g.watchers.iter().any(|w| {
                        crate::domain::principal::normalize_email(w) == p.email_normalized()
                    })
            }
            None => false,
        }
    }

    /// One request as the API shows it (no permission check: see [`Service::get_for`]).
    pub async fn view(&self, id: &str) -> ServiceResult<RequestView> {
        let req = self
            .store
            .get_request(id)
            .await?
            .ok_or(ServiceError::NotFound)?;
        self.view_of(req).await
    }

    /// One request, if `p` may see it (else `NotFound`, so ids do not leak).
    pub async fn get_for(&self, p: &Principal, id: &str) -> ServiceResult<RequestView> {
        let req = self
            .store
            .get_request(id)
            .await?
            .ok_or(ServiceError::NotFound)?;
        if !self.may_see(p, &req) {
            return Err(ServiceError::NotFound);
        }
        self.view_of(req).await
    }

    /// The view of a request row just read: its decisions and audit events added.
    async fn view_of(&self, req: RequestRow) -> ServiceResult<RequestView> {
        let decisions = self.store.decisions_for(&req.request_id).await?;
        let events = self.store.audit_for_request(&req.request_id).await?;
        view::build(self, req, decisions, events)
    }

    /// Requests `p` made (`role = requester`), may decide on (`approver`), or both.
    pub async fn list_for(
        &self,
        p: &Principal,
        role: Option<&str>,
        state: Option<RequestState>,
    ) -> ServiceResult<Vec<RequestView>> {
        let state = state.map(|s| s.as_str().to_string());
        let mut rows = Vec::new();
        if matches!(role, None | Some("requester")) {
            rows.extend(
                self.store
                    .list_requests(&RequestFilter {
                        state: state.clone(),
                        requester_id: Some(p.id.clone()),
                        guards: None,
                        limit: 200,
                    })
                    .await?,
            );
        }
        if matches!(role, None | Some("approver")) {
            let guards: Vec<String> = self
                .guards_approved_by(p)
                .iter()
                .map(|g| g.name.clone())
                .collect();
            let theirs = self
                .store
                .list_requests(&RequestFilter {
                    state: state.clone(),
                    requester_id: None,
                    guards: Some(guards),
                    limit: 200,
                })
                .await?;
            rows.extend(theirs.into_iter().filter(|r| r.requester_id != p.id));
        }
        if role == Some("all") && self.is_auditor(p) {
            rows = self
                .store
                .list_requests(&RequestFilter {
                    state,
                    requester_id: None,
                    guards: None,
                    limit: 500,
                })
                .await?;
        }
        rows.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then(b.request_id.cmp(&a.request_id))
        });
        rows.dedup_by(|a, b| a.request_id == b.request_id);
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let decisions = self.store.decisions_for(&r.request_id).await?;
            out.push(view::build(self, r, decisions, vec![])?);
        }
        Ok(out)
    }
}

/// The columns a void sets besides the state.
fn void_set(reason: EndReason, now: OffsetDateTime) -> TransitionSet {
    TransitionSet {
        ended_at: Some(timefmt::fmt(now)),
        end_reason: Some(reason.as_str().into()),
        ..Default::default()
    }
}

pub(crate) fn parse_state(s: &str) -> ServiceResult<RequestState> {
    RequestState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown state `{s}`")).into())
}

pub(crate) fn parse_time(s: &str) -> ServiceResult<OffsetDateTime> {
    timefmt::parse(s).map_err(|_| StoreError::Corrupt(format!("bad time `{s}`")).into())
}

fn prior_decision(d: &DecisionRow) -> ServiceResult<PriorDecision> {
    Ok(PriorDecision {
        approver: crate::domain::principal::PrincipalRef {
            id: d.approver_id.clone(),
            email: d.approver_email.clone(),
            name: d.approver_name.clone(),
            azure_object_id: d.approver_object_id.clone(),
        },
        verdict: Verdict::parse(&d.verdict)
            .ok_or_else(|| StoreError::Corrupt(format!("verdict `{}`", d.verdict)))?,
        matched: serde_json::from_str(&d.matched)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
    })
}

/// Exponential backoff for job retries: 5 s, 10 s, 20 s … capped at 10 minutes.
pub fn backoff(attempts: i64) -> Duration {
    let exp = attempts.clamp(1, 20) - 1;
    let secs = 5i64.saturating_mul(1i64 << exp.min(16));
    Duration::seconds(secs.min(600))
}
