//! Decisions, decided in batches.
//!
//! Every decision, from the API or a review link, alone or in a burst, goes through
//! [`Service::decide_queued`]: decisions that arrive while a batch runs wait for the next one
//! (see [`crate::batch`]; a lone decision runs at once, alone). A batch is one writing
//! transaction:
//!
//! 1. it reads the requests, their decisions and the review links' tokens of the whole batch,
//!    one statement each. The transaction holds the writers' lock (see [`Store::begin`]), so
//!    what it reads is what every write of the batch will meet;
//! 2. it decides each decision in arrival order, with [`request::evaluate_decision`], against
//!    those rows *as the earlier decisions of the batch left them*: a second approver of the
//!    same request in the same batch sees the first one's approval, a second click of one
//!    review link finds its token used, exactly as if they had come one after another. A
//!    refused decision stages nothing (a void is the one refusal that writes: the request's
//!    end, as before);
//! 3. it writes what was staged set-wise (the decisions in one insert, the state changes in
//!    one update per kind of change, the tokens in one update, the events and jobs in one
//!    insert each), checks that each statement touched exactly what was staged, and commits.
//!
//! SECURITY: a batch that fails anywhere before its commit has committed nothing; its
//! decisions are then decided again one by one, each in a transaction of its own, so that one
//! decision that cannot be written fails alone and the others are judged on fresh rows. A
//! statement that touches other rows than staged (a decision that exists after all, a request
//! that moved) fails the batch the same way: never a commit of a decision judged on stale rows.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use time::OffsetDateTime;

use super::{
    Caller, Channel, LINK_USED, ServiceError, ServiceResult, new_id, parse_state, parse_time,
    prior_decision, view,
};
use crate::audit::{self, Action, Actor};
use crate::batch::{Batcher, Call};
use crate::domain::request::{
    self, DecisionOutcome, DomainError, EndReason, RequestFacts, RequestState, Verdict,
};
use crate::service::{JobKind, RequestView, Service};
use crate::store::{DecisionRow, RequestRow, StoreError, TransitionSet, Tx};
use crate::timefmt;

/// One decision as asked for.
pub(super) struct DecisionCall {
    pub(super) caller: Caller,
    pub(super) id: String,
    pub(super) verdict: Verdict,
    /// Already cleaned ([`request::clean_comment`]).
    pub(super) comment: Option<String>,
    pub(super) channel: Channel,
    /// The review link's token id, used up with the decision.
    pub(super) jti: Option<String>,
}

/// What a request's view is built from: the row, its decisions, its events.
type ViewRows = (RequestRow, Vec<DecisionRow>, Vec<crate::store::AuditRow>);

/// A decision's answer from its batch: the rows of its request's view, built by the caller
/// (in its own task, on any core, rather than one after another in the batch's task).
type Answer = ServiceResult<Box<ViewRows>>;

/// Decisions per batch at most (11 parameters per decision in its insert).
const DECISION_BATCH: usize = 128;

/// The decisions waiting for the next batch, and how batches went.
pub(super) struct Decider {
    batcher: Batcher<DecisionCall, Answer>,
    /// Batches of more than one decision that failed and were decided one by one.
    split: AtomicU64,
}

impl Decider {
    pub(super) fn new() -> Self {
        Self {
            batcher: Batcher::new(DECISION_BATCH),
            split: AtomicU64::new(0),
        }
    }
}

/// What one decision comes to, judged against the batch's rows; nothing written yet.
enum Plan {
    /// Record it (and the state it settles, if any).
    Decide(DecisionOutcome),
    /// Refused with `error`, and the request is void from now on (that is written).
    Void {
        reason: EndReason,
        error: DomainError,
    },
    /// Refused: the requester tried to approve their own request. The attempt is recorded in
    /// a transaction of its own after the batch (it is news for the watchers).
    SelfApproval,
}

/// How a decision ended in its batch's transaction.
enum Ended {
    /// Recorded; `settled` is `approved`/`denied` when it settled the request.
    Decided {
        settled: Option<&'static str>,
        created_at: String,
    },
    Refused(ServiceError),
    SelfApproval(Box<RequestRow>),
}

/// A state change staged by a batch.
struct Transition {
    id: String,
    to: &'static str,
    set: TransitionSet,
}

/// The rows a batch read, as its decisions so far changed them, and the writes they staged.
#[derive(Default)]
struct Batch {
    requests: HashMap<String, RequestRow>,
    decisions: HashMap<String, Vec<DecisionRow>>,
    unused_tokens: HashSet<String>,
    new_decisions: Vec<DecisionRow>,
    used_tokens: Vec<String>,
    /// All from `pending`: a decision moves nothing else.
    transitions: Vec<Transition>,
}

impl Batch {
    fn decisions_on(&self, id: &str) -> &[DecisionRow] {
        self.decisions
            .get(id)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Stage `id`'s move from `pending` to `to`, if it is pending (as the batch left it).
    fn move_from_pending(&mut self, id: &str, to: &'static str, set: TransitionSet) -> bool {
        let Some(row) = self.requests.get_mut(id) else {
            return false;
        };
        if row.state != "pending" {
            return false;
        }
        row.state = to.to_string();
        let keep = |new: &Option<String>, old: &mut Option<String>| {
            if new.is_some() {
                old.clone_from(new);
            }
        };
        keep(&set.decided_at, &mut row.decided_at);
        keep(&set.active_from, &mut row.active_from);
        keep(&set.active_until, &mut row.active_until);
        keep(&set.ended_at, &mut row.ended_at);
        keep(&set.end_reason, &mut row.end_reason);
        keep(&set.failure_message, &mut row.failure_message);
        self.transitions.push(Transition {
            id: id.to_string(),
            to,
            set,
        });
        true
    }
}

fn stale(what: &str) -> ServiceError {
    ServiceError::Internal(format!(
        "a batch of decisions met rows that changed under it ({what})"
    ))
}

impl Service {
    /// Decisions queued for the next batch now (for tests that need a batch to form).
    #[doc(hidden)]
    pub fn decisions_waiting(&self) -> usize {
        self.decider.batcher.waiting()
    }

    /// (batches run, decisions they held, batches that failed and were split) since start.
    #[doc(hidden)]
    pub fn decision_batch_stats(&self) -> (u64, u64, u64) {
        let (batches, decisions) = self.decider.batcher.stats();
        (
            batches,
            decisions,
            self.decider.split.load(Ordering::SeqCst),
        )
    }

    /// Queue a decision for the next batch and wait for its answer.
    pub(super) async fn decide_queued(&self, call: DecisionCall) -> ServiceResult<RequestView> {
        let svc = self.clone();
        let rows = self
            .decider
            .batcher
            .call(call, move |calls| {
                let svc = svc.clone();
                async move { svc.decide_batch(calls).await }
            })
            .await
            .unwrap_or_else(|| {
                Err(ServiceError::Internal(
                    "the decision stopped before it was answered".into(),
                ))
            })?;
        let (req, decisions, events) = *rows;
        view::build(self, req, decisions, events)
    }

    async fn decide_batch(self, calls: Vec<Call<DecisionCall, Answer>>) {
        let items: Vec<&DecisionCall> = calls.iter().map(|c| &c.item).collect();
        let answers = self.decide_all(&items).await;
        drop(items);
        for (call, answer) in calls.into_iter().zip(answers) {
            call.answer(answer);
        }
    }

    /// Decide `items` as one batch or, if the batch fails, one by one.
    async fn decide_all(&self, items: &[&DecisionCall]) -> Vec<Answer> {
        match self.decide_in_tx(items).await {
            Ok(ended) => {
                let started = std::time::Instant::now();
                let answers = self.answers(items, ended).await;
                tracing::debug!(
                    decisions = items.len(),
                    answered_us = started.elapsed().as_micros() as u64,
                    "a batch of decisions answered"
                );
                answers
            }
            Err(e) if items.len() == 1 => vec![Err(e)],
            Err(e) => {
                // Nothing of the batch was committed (see the module's doc).
                self.decider.split.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(error = %e, decisions = items.len(),
                    "a batch of decisions failed; deciding each alone");
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    let one = [*item];
                    out.push(match self.decide_in_tx(&one).await {
                        Ok(ended) => self.answers(&one, ended).await.remove(0),
                        Err(e) => Err(e),
                    });
                }
                out
            }
        }
    }

    /// The batch's transaction: read, judge each decision, write, commit.
    async fn decide_in_tx(&self, items: &[&DecisionCall]) -> ServiceResult<Vec<Ended>> {
        let started = std::time::Instant::now();
        let now = self.now();
        let at = timefmt::fmt(now);
        let mut tx = self.store.begin().await?;
        let began = started.elapsed();
        let mut ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut b = Batch::default();
        for r in tx.requests_by_ids(&ids).await? {
            b.requests.insert(r.request_id.clone(), r);
        }
        for d in tx.decisions_for_requests(&ids).await? {
            b.decisions.entry(d.request_id.clone()).or_default().push(d);
        }
        let tokens: Vec<&str> = items.iter().filter_map(|i| i.jti.as_deref()).collect();
        b.unused_tokens = tx
            .unused_review_tokens(&tokens)
            .await?
            .into_iter()
            .collect();

        let read = started.elapsed();
        let mut ended = Vec::with_capacity(items.len());
        for item in items {
            ended.push(match self.plan(&b, item, now) {
                Err(e) => Ended::Refused(e),
                Ok(Plan::SelfApproval) => {
                    Ended::SelfApproval(Box::new(b.requests[&item.id].clone()))
                }
                Ok(plan) => self.apply(&mut tx, &mut b, item, plan, now).await?,
            });
        }

        let judged = started.elapsed();
        let used: Vec<&str> = b.used_tokens.iter().map(String::as_str).collect();
        if tx.consume_review_tokens(&used, &at).await? != used.len() as u64 {
            return Err(stale("a review link was used"));
        }
        if tx.insert_decisions(&b.new_decisions).await? != b.new_decisions.len() as u64 {
            return Err(stale("a decision existed"));
        }
        // One update per kind of change (all decisions of a batch share `now`).
        let mut kinds: Vec<(&'static str, &TransitionSet, Vec<&str>)> = Vec::new();
        for t in &b.transitions {
            match kinds.iter_mut().find(|(to, set, _)| {
                *to == t.to
                    && set.decided_at == t.set.decided_at
                    && set.ended_at == t.set.ended_at
                    && set.end_reason == t.set.end_reason
                    && set.active_from.is_none()
                    && set.active_until.is_none()
                    && set.failure_message.is_none()
                    && t.set.active_from.is_none()
                    && t.set.active_until.is_none()
                    && t.set.failure_message.is_none()
            }) {
                Some((_, _, ids)) => ids.push(&t.id),
                None => kinds.push((t.to, &t.set, vec![&t.id])),
            }
        }
        for (to, set, ids) in &kinds {
            if tx.transition_all(ids, "pending", to, set).await? != ids.len() as u64 {
                return Err(stale("a request moved"));
            }
        }
        let wrote = !b.new_decisions.is_empty() || !b.transitions.is_empty();
        let written = started.elapsed();
        tx.commit().await?;
        tracing::debug!(
            decisions = items.len(),
            began_us = began.as_micros() as u64,
            read_us = read.as_micros() as u64,
            judged_us = judged.as_micros() as u64,
            written_us = written.as_micros() as u64,
            committed_us = started.elapsed().as_micros() as u64,
            "a batch of decisions committed"
        );
        for end in &ended {
            if let Ended::Decided {
                settled: Some(decision),
                created_at,
            } = end
                && let Ok(created) = timefmt::parse(created_at)
            {
                crate::metrics::decided(decision, (now - created).unsigned_abs());
            }
        }
        if wrote {
            self.wake_worker();
        }
        Ok(ended)
    }

    /// Judge one decision against the batch's rows. Writes nothing.
    fn plan(&self, b: &Batch, item: &DecisionCall, now: OffsetDateTime) -> ServiceResult<Plan> {
        if let Some(jti) = &item.jti
            && !b.unused_tokens.contains(jti)
        {
            return Err(DomainError::Forbidden(LINK_USED.into()).into());
        }
        let req = b.requests.get(&item.id).ok_or(ServiceError::NotFound)?;
        let state = parse_state(&req.state)?;
        let Some(guard) = self.guard(&req.guard) else {
            // SECURITY: a guard removed from the config approves nothing.
            return Ok(Plan::Void {
                reason: EndReason::PolicyChanged,
                error: DomainError::PolicyChanged,
            });
        };
        let prior = b
            .decisions_on(&item.id)
            .iter()
            .map(prior_decision)
            .collect::<Result<Vec<_>, _>>()?;
        let facts = RequestFacts {
            state,
            requester: crate::domain::principal::PrincipalRef {
                id: req.requester_id.clone(),
                email: req.requester_email.clone(),
                name: req.requester_name.clone(),
                azure_object_id: req.requester_object_id.clone(),
            },
            policy_hash: req.policy_hash.clone(),
            deadline: parse_time(&req.deadline)?,
            required_approvals: u32::try_from(req.required_approvals).unwrap_or(u32::MAX),
        };
        let p = &item.caller.principal;
        match request::evaluate_decision(&facts, &prior, guard, p, item.verdict, now) {
            Ok(outcome) => {
                // The table's own rule (one decision per approver id), checked here so that
                // the insert cannot meet it.
                if b.decisions_on(&item.id)
                    .iter()
                    .any(|d| d.approver_id == p.id)
                {
                    return Err(DomainError::AlreadyDecided.into());
                }
                Ok(Plan::Decide(outcome))
            }
            // Fail closed, and make the state say so at once rather than at the next sweep.
            Err(error @ DomainError::PolicyChanged) => Ok(Plan::Void {
                reason: EndReason::PolicyChanged,
                error,
            }),
            Err(error @ DomainError::DeadlinePassed) => Ok(Plan::Void {
                reason: EndReason::Deadline,
                error,
            }),
            Err(DomainError::SelfApproval) => Ok(Plan::SelfApproval),
            Err(e) => Err(e.into()),
        }
    }

    /// Stage what a judged decision writes. An error here fails the whole batch.
    async fn apply(
        &self,
        tx: &mut Tx,
        b: &mut Batch,
        item: &DecisionCall,
        plan: Plan,
        now: OffsetDateTime,
    ) -> ServiceResult<Ended> {
        if let Some(jti) = &item.jti {
            b.unused_tokens.remove(jti);
            b.used_tokens.push(jti.clone());
        }
        let id = item.id.as_str();
        let req = b.requests[id].clone();
        let outcome = match plan {
            Plan::Void { reason, error } => {
                if b.move_from_pending(id, "expired", super::void_set(reason, now)) {
                    self.record_void(tx, &req, reason, now).await?;
                }
                return Ok(Ended::Refused(error.into()));
            }
            Plan::SelfApproval => unreachable!("a self-approval stages nothing"),
            Plan::Decide(outcome) => outcome,
        };
        let prior_rows = b.decisions_on(id).to_vec();
        let p = &item.caller.principal;
        let row = DecisionRow {
            decision_id: new_id(),
            request_id: id.to_string(),
            approver_id: p.id.clone(),
            approver_email: p.email.clone(),
            approver_name: p.name.clone(),
            approver_object_id: p.azure_object_id.clone(),
            verdict: item.verdict.as_str().into(),
            comment: item.comment.clone(),
            matched: serde_json::to_string(&outcome.matched).expect("json"),
            channel: item.channel.as_str().into(),
            at: timefmt::fmt(now),
        };
        b.decisions
            .entry(id.to_string())
            .or_default()
            .push(row.clone());
        b.new_decisions.push(row);
        let action = match item.verdict {
            Verdict::Approve => Action::DecisionApproved,
            Verdict::Deny => Action::DecisionDenied,
        };
        audit::record(
            tx,
            now,
            action,
            &item.caller.actor(),
            Some(id),
            json!({
                "comment": item.comment,
                "channel": item.channel.as_str(),
                "matched": outcome.matched,
                "approvals": outcome.approvals,
                "required_approvals": req.required_approvals,
                "approver": { "id": p.id, "email": p.email, "name": p.name, "object_id": p.azure_object_id, "groups": p.groups },
            }),
        )
        .await?;
        let settled = match outcome.new_state {
            Some(RequestState::Approved) => {
                let set = TransitionSet {
                    decided_at: Some(timefmt::fmt(now)),
                    ..Default::default()
                };
                if !b.move_from_pending(id, "approved", set) {
                    return Err(stale("approved a request that is not pending"));
                }
                let guard = self
                    .guard(&req.guard)
                    .ok_or_else(|| stale("the guard went away"))?;
                audit::record(
                    tx,
                    now,
                    Action::GrantRequested,
                    &Actor::system(),
                    Some(id),
                    json!({
                        "backend": guard.elevation.as_str(),
                        "scope": guard.resource_guard_id.to_string(),
                        "role_definition_id": guard.role_definition_id,
                        "principal_object_id": req.requester_object_id,
                        "duration_minutes": req.duration_minutes,
                    }),
                )
                .await?;
                tx.queue_job(self.job(
                    JobKind::Grant,
                    id,
                    json!({}),
                    Some(format!("grant:{id}")),
                    now,
                ));
                self.queue_requester(tx, &req, "approved").await?;
                self.queue_watchers(tx, &req, "approved").await?;
                self.queue_already_decided(tx, &req, &prior_rows, p).await?;
                Some("approved")
            }
            Some(RequestState::Denied) => {
                let set = TransitionSet {
                    decided_at: Some(timefmt::fmt(now)),
                    end_reason: Some(EndReason::Denied.as_str().into()),
                    ..Default::default()
                };
                if !b.move_from_pending(id, "denied", set) {
                    return Err(stale("denied a request that is not pending"));
                }
                self.queue_requester(tx, &req, "denied").await?;
                self.queue_watchers(tx, &req, "denied").await?;
                self.queue_already_decided(tx, &req, &prior_rows, p).await?;
                Some("denied")
            }
            _ => {
                // One approval of several: tell the watchers who (one mail per approver).
                let extra = json!({ "event": "approval", "by": p.email });
                self.queue_watchers_with(tx, &req, extra, &format!("approval:{}", p.id))
                    .await?;
                None
            }
        };
        Ok(Ended::Decided {
            settled,
            created_at: req.created_at,
        })
    }

    /// After the batch committed: each decision's answer. A recorded decision answers with
    /// its request as it is now (read for the whole batch at once); a self-approval is
    /// recorded, then refused.
    async fn answers(&self, items: &[&DecisionCall], ended: Vec<Ended>) -> Vec<Answer> {
        let mut decided: Vec<&str> = items
            .iter()
            .zip(&ended)
            .filter(|(_, e)| matches!(e, Ended::Decided { .. }))
            .map(|(i, _)| i.id.as_str())
            .collect();
        decided.sort_unstable();
        decided.dedup();
        let rows = self.rows_for_views(&decided).await;
        let mut out = Vec::with_capacity(items.len());
        for (item, end) in items.iter().zip(ended) {
            out.push(match end {
                Ended::Refused(e) => Err(e),
                Ended::SelfApproval(req) => {
                    let p = &item.caller.principal;
                    match self
                        .self_approval_attempt(&item.caller.actor(), p, &req, item.channel.as_str())
                        .await
                    {
                        Ok(()) => Err(DomainError::SelfApproval.into()),
                        Err(e) => Err(e),
                    }
                }
                Ended::Decided { .. } => match &rows {
                    Ok(rows) => match rows.get(&item.id) {
                        Some(rows) => Ok(Box::new(rows.clone())),
                        None => Err(ServiceError::NotFound),
                    },
                    Err(e) => Err(StoreError::Batch(e.clone()).into()),
                },
            });
        }
        out
    }

    /// The rows of these requests' views, three statements for all of them.
    async fn rows_for_views(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, ViewRows>, std::sync::Arc<str>> {
        // Three statements at once, on three of the pool's connections.
        let read = futures::future::try_join3(
            self.store.requests_by_ids(ids),
            self.store.decisions_for_requests(ids),
            self.store.audit_for_requests(ids),
        );
        let (requests, decisions, events) = read
            .await
            .map_err(|e| std::sync::Arc::<str>::from(e.to_string()))?;
        let mut out: HashMap<_, _> = requests
            .into_iter()
            .map(|r| (r.request_id.clone(), (r, Vec::new(), Vec::new())))
            .collect();
        for d in decisions {
            if let Some(v) = out.get_mut(&d.request_id) {
                v.1.push(d);
            }
        }
        for e in events {
            if let Some(v) = e.request_id.as_ref().and_then(|id| out.get_mut(id)) {
                v.2.push(e);
            }
        }
        Ok(out)
    }
}
