//! What each kind of job does. A job's database effects, its audit event and the job's own
//! completion commit in one transaction, and that commit only succeeds while the worker still
//! holds the job's lease: a worker that died mid-job leaves nothing behind, and the one that
//! takes over does the work exactly once. Effects outside the database (a file in the outbox,
//! later a call to Azure) are made idempotent by deriving their names from the job.

use serde::{Deserialize, Serialize};
use serde_json::json;
use time::{Duration, OffsetDateTime};

use super::{Service, ServiceError, ServiceResult, parse_state, parse_time};
use crate::audit::{self, Action, Actor};
use crate::auth::review_token::ReviewClaims;
use crate::domain::operations;
use crate::domain::policy::ElevationBackend;
use crate::domain::request::{EndReason, RequestState};
use crate::store::{
    GrantRow, GrantSet, JobRow, NotificationRow, ReviewTokenRow, SimulatedCallRow, TransitionSet,
    Tx,
};
use crate::timefmt;

/// The kinds of job in the `job` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Put the approved window in place.
    Grant,
    /// Take it away (at `active_until`, or now when ended early).
    Revoke,
    /// Send one mail.
    Mail,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Revoke => "revoke",
            Self::Mail => "mail",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "grant" => Some(Self::Grant),
            "revoke" => Some(Self::Revoke),
            "mail" => Some(Self::Mail),
            _ => None,
        }
    }
    /// How often to try before giving up for good.
    pub fn max_attempts(self) -> i64 {
        match self {
            Self::Grant => 8,
            // SECURITY: taking access away never gives up; with the 10-minute backoff cap this
            // keeps trying for about a week, and every failure stays visible in the job row.
            Self::Revoke => 1000,
            Self::Mail => 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailKind {
    /// To an approver: the review link.
    ReviewRequest,
    /// To the requester: receipt, decision, window start and end.
    Requester,
    /// To a watcher: every event.
    Watcher,
    /// To approvers who had not decided: someone else did.
    AlreadyDecided,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MailPayload {
    pub kind: MailKind,
    pub request_id: String,
    pub to: String,
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// A failed attempt: retry later, or give up now.
#[derive(Debug)]
pub enum JobFailure {
    Retry(String),
    Permanent(String),
}

impl From<ServiceError> for JobFailure {
    fn from(e: ServiceError) -> Self {
        Self::Retry(e.to_string())
    }
}

impl From<crate::store::StoreError> for JobFailure {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Retry(e.to_string())
    }
}

/// A stable GUID for an elevation step, so a retried job repeats the same call.
pub fn step_guid(request_id: &str, step: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("twokey:{request_id}:{step}").as_bytes(),
    )
}

impl Service {
    /// Run one claimed job. `Ok(true)`: done; `Ok(false)`: the lease was lost and nothing was
    /// committed (another worker owns the job now).
    pub async fn run_job(&self, job: &JobRow, owner: &str) -> Result<bool, JobFailure> {
        let Some(kind) = JobKind::parse(&job.kind) else {
            return Err(JobFailure::Permanent(format!(
                "unknown job kind `{}`",
                job.kind
            )));
        };
        match kind {
            JobKind::Grant => self.run_grant(job, owner).await,
            JobKind::Revoke => self.run_revoke(job, owner).await,
            JobKind::Mail => self.run_mail(job, owner).await,
        }
    }

    /// Commit `tx` if the lease still holds; roll back otherwise.
    async fn finish(
        &self,
        mut tx: Tx,
        job: &JobRow,
        owner: &str,
        now: OffsetDateTime,
    ) -> Result<bool, JobFailure> {
        if !tx.complete_job(job, owner, &timefmt::fmt(now)).await? {
            tracing::warn!(job_id = %job.job_id, "lease lost; rolling back");
            return Ok(false);
        }
        tx.commit().await?;
        self.wake.notify_one();
        Ok(true)
    }

    async fn run_grant(&self, job: &JobRow, owner: &str) -> Result<bool, JobFailure> {
        let now = self.now();
        let rid = job
            .request_id
            .as_deref()
            .ok_or_else(|| JobFailure::Permanent("grant job without request".into()))?;
        let mut tx = self.store.begin().await?;
        let req = tx
            .get_request(rid)
            .await?
            .ok_or_else(|| JobFailure::Permanent("request vanished".into()))?;
        if parse_state(&req.state)? != RequestState::Approved {
            // Already done by an earlier run, or the request moved on: nothing to do.
            return self.finish(tx, job, owner, now).await;
        }
        let Some(guard) = self.guard(&req.guard) else {
            return Err(JobFailure::Permanent(format!(
                "guard `{}` is no longer configured",
                req.guard
            )));
        };
        let until = now + Duration::minutes(req.duration_minutes);
        let call_id = step_guid(rid, "grant");
        match guard.elevation {
            ElevationBackend::Simulated => {
                tx.insert_simulated_call(&SimulatedCallRow {
                    call_id: call_id.to_string(),
                    request_id: rid.into(),
                    step: "grant".into(),
                    body: simulated_body("AdminAssign", &req.requester_object_id, guard, &req, now)
                        .to_string(),
                    at: timefmt::fmt(now),
                })
                .await?;
            }
            other => {
                return Err(JobFailure::Permanent(format!(
                    "elevation backend `{}` is not available in this build",
                    other.as_str()
                )));
            }
        }
        tx.insert_grant(&GrantRow {
            request_id: rid.into(),
            backend: guard.elevation.as_str().into(),
            scope: guard.resource_guard_id.to_string(),
            role_definition_id: guard.role_definition_id.clone(),
            principal_object_id: req.requester_object_id.clone(),
            state: "active".into(),
            requested_at: timefmt::fmt(now),
            active_from: Some(timefmt::fmt(now)),
            active_until: Some(timefmt::fmt(until)),
            ended_at: None,
            detail: Some(json!({ "arm_request_name": call_id }).to_string()),
        })
        .await?;
        let moved = tx
            .transition(
                rid,
                "approved",
                "active",
                &TransitionSet {
                    active_from: Some(timefmt::fmt(now)),
                    active_until: Some(timefmt::fmt(until)),
                    ..Default::default()
                },
            )
            .await?;
        if !moved {
            return self.finish(tx, job, owner, now).await;
        }
        audit::record(
            &mut tx,
            now,
            Action::GrantActive,
            &Actor::system(),
            Some(rid),
            json!({
                "backend": guard.elevation.as_str(),
                "scope": guard.resource_guard_id.to_string(),
                "role_definition_id": guard.role_definition_id,
                "principal_object_id": req.requester_object_id,
                "arm_request_name": call_id,
                "active_from": timefmt::fmt(now),
                "active_until": timefmt::fmt(until),
            }),
        )
        .await?;
        tx.insert_job(&self.job(
            JobKind::Revoke,
            rid,
            json!({}),
            Some(format!("revoke:{rid}")),
            until,
        ))
        .await?;
        self.queue_requester(&mut tx, &req, "active").await?;
        self.queue_watchers(&mut tx, &req, "active").await?;
        self.finish(tx, job, owner, now).await
    }

    async fn run_revoke(&self, job: &JobRow, owner: &str) -> Result<bool, JobFailure> {
        let now = self.now();
        let rid = job
            .request_id
            .as_deref()
            .ok_or_else(|| JobFailure::Permanent("revoke job without request".into()))?;
        let mut tx = self.store.begin().await?;
        let req = tx
            .get_request(rid)
            .await?
            .ok_or_else(|| JobFailure::Permanent("request vanished".into()))?;
        if parse_state(&req.state)? != RequestState::Active {
            return self.finish(tx, job, owner, now).await;
        }
        let backend = self
            .guard(&req.guard)
            .map(|g| g.elevation)
            .unwrap_or(ElevationBackend::Simulated);
        match backend {
            ElevationBackend::Simulated => {
                tx.insert_simulated_call(&SimulatedCallRow {
                    call_id: step_guid(rid, "revoke").to_string(),
                    request_id: rid.into(),
                    step: "revoke".into(),
                    body: json!({ "properties": { "requestType": "AdminRemove", "principalId": req.requester_object_id } }).to_string(),
                    at: timefmt::fmt(now),
                })
                .await?;
            }
            other => {
                return Err(JobFailure::Retry(format!(
                    "elevation backend `{}` is not available in this build",
                    other.as_str()
                )));
            }
        }
        let reason = match req.end_reason.as_deref().and_then(EndReason::parse) {
            Some(r) => r,
            None => EndReason::Expired,
        };
        let moved = tx
            .transition(
                rid,
                "active",
                "ended",
                &TransitionSet {
                    ended_at: Some(timefmt::fmt(now)),
                    end_reason: Some(reason.as_str().into()),
                    ..Default::default()
                },
            )
            .await?;
        if !moved {
            return self.finish(tx, job, owner, now).await;
        }
        tx.update_grant(
            rid,
            "active",
            "ended",
            &GrantSet {
                ended_at: Some(timefmt::fmt(now)),
                ..Default::default()
            },
        )
        .await?;
        let requested_by: Option<serde_json::Value> = req
            .end_requested_by
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok());
        audit::record(
            &mut tx,
            now,
            Action::GrantEnded,
            &Actor::system(),
            Some(rid),
            json!({
                "reason": reason.as_str(),
                "active_from": req.active_from,
                "active_until": req.active_until,
                "end_requested_at": req.end_requested_at,
                "end_requested_by": requested_by,
            }),
        )
        .await?;
        self.queue_requester(&mut tx, &req, "ended").await?;
        self.queue_watchers(&mut tx, &req, "ended").await?;
        self.finish(tx, job, owner, now).await
    }

    async fn run_mail(&self, job: &JobRow, owner: &str) -> Result<bool, JobFailure> {
        let now = self.now();
        let payload: MailPayload = serde_json::from_str(&job.payload)
            .map_err(|e| JobFailure::Permanent(format!("bad payload: {e}")))?;
        let req = self
            .store
            .get_request(&payload.request_id)
            .await?
            .ok_or_else(|| JobFailure::Permanent("request vanished".into()))?;
        let created = parse_time(&job.created_at)?;
        let mut token_row = None;
        let link = if payload.kind == MailKind::ReviewRequest {
            let deadline = parse_time(&req.deadline)?;
            if deadline <= now {
                // The link could not be used any more; say so in the job instead of mailing.
                return Err(JobFailure::Permanent(
                    "the request's deadline passed before the mail went out".into(),
                ));
            }
            // The token is derived from the job, so a retry mails the very same link.
            let claims = ReviewClaims {
                iss: "twokey".into(),
                aud: "review".into(),
                sub: payload.to.clone(),
                rid: req.request_id.clone(),
                jti: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, job.job_id.as_bytes())
                    .to_string(),
                iat: created.unix_timestamp(),
                exp: deadline.unix_timestamp(),
            };
            let (token, kid) = self
                .tokens
                .sign(&claims)
                .map_err(|e| JobFailure::Permanent(e.to_string()))?;
            token_row = Some(ReviewTokenRow {
                jti: claims.jti.clone(),
                request_id: req.request_id.clone(),
                approver_email: payload.to.clone(),
                kid,
                issued_at: timefmt::fmt(created),
                expires_at: req.deadline.clone(),
                used_at: None,
            });
            Some(format!("{}/review/{}", self.public_base(), token))
        } else {
            None
        };
        let mail = crate::notify::render(self, &payload, &req, link.as_deref())?;
        let message_id = format!("<{}@twokey>", job.job_id);
        let path =
            crate::notify::deliver(self, &job.job_id, &message_id, created, &payload.to, &mail)
                .await
                .map_err(JobFailure::Retry)?;
        let mut tx = self.store.begin().await?;
        if let Some(t) = &token_row {
            tx.insert_review_token(t).await?;
        }
        tx.insert_notification(&NotificationRow {
            notification_id: job.job_id.clone(),
            request_id: Some(req.request_id.clone()),
            kind: serde_json::to_value(payload.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            recipient: payload.to.clone(),
            subject: mail.subject.clone(),
            message_id: message_id.clone(),
            path: Some(path),
            body: mail.text.clone(),
            sent_at: timefmt::fmt(now),
        })
        .await?;
        audit::record(
            &mut tx,
            now,
            Action::NotificationSent,
            &Actor::system(),
            Some(&req.request_id),
            json!({
                "kind": payload.kind,
                "to": payload.to,
                "subject": mail.subject,
                "message_id": message_id,
                "event": payload.extra.get("event"),
                "review_token_jti": token_row.as_ref().map(|t| t.jti.clone()),
            }),
        )
        .await?;
        self.finish(tx, job, owner, now).await
    }

    /// The job will not be tried again: record what that means, in one transaction with
    /// marking the job failed.
    pub async fn fail_job_for_good(
        &self,
        job: &JobRow,
        owner: &str,
        error: &str,
    ) -> ServiceResult<bool> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        if !tx.fail_job(job, owner, &timefmt::fmt(now), error).await? {
            return Ok(false);
        }
        let rid = job.request_id.clone();
        match JobKind::parse(&job.kind) {
            Some(JobKind::Grant) => {
                if let Some(rid) = &rid
                    && let Some(req) = tx.get_request(rid).await?
                {
                    let moved = tx
                        .transition(
                            rid,
                            "approved",
                            "failed",
                            &TransitionSet {
                                ended_at: Some(timefmt::fmt(now)),
                                end_reason: Some(EndReason::GrantFailed.as_str().into()),
                                failure_message: Some(error.chars().take(2000).collect()),
                                ..Default::default()
                            },
                        )
                        .await?;
                    if moved {
                        audit::record(
                            &mut tx,
                            now,
                            Action::GrantFailed,
                            &Actor::system(),
                            Some(rid),
                            json!({ "error": error, "attempts": job.attempts }),
                        )
                        .await?;
                        self.queue_requester(&mut tx, &req, "failed").await?;
                        self.queue_watchers(&mut tx, &req, "failed").await?;
                    }
                }
            }
            Some(JobKind::Mail) => {
                let payload: Option<MailPayload> = serde_json::from_str(&job.payload).ok();
                audit::record(
                    &mut tx,
                    now,
                    Action::NotificationFailed,
                    &Actor::system(),
                    rid.as_deref(),
                    json!({
                        "to": payload.as_ref().map(|p| p.to.clone()),
                        "kind": payload.as_ref().map(|p| p.kind),
                        "error": error,
                        "attempts": job.attempts,
                    }),
                )
                .await?;
            }
            Some(JobKind::Revoke) => {
                audit::record(
                    &mut tx,
                    now,
                    Action::GrantFailed,
                    &Actor::system(),
                    rid.as_deref(),
                    json!({ "step": "revoke", "error": error, "attempts": job.attempts }),
                )
                .await?;
            }
            None => {}
        }
        tx.commit().await?;
        Ok(true)
    }

    /// `server.public_url` without a trailing slash.
    pub fn public_base(&self) -> String {
        self.config
            .server
            .public_url
            .as_str()
            .trim_end_matches('/')
            .to_string()
    }
}

/// The body an `azure-pim` grant would send, recorded by the simulated backend so that the
/// demo shows what would happen (CONTRACTS.md §3.1 shape).
fn simulated_body(
    request_type: &str,
    principal: &Option<String>,
    guard: &crate::domain::policy::GuardPolicy,
    req: &crate::store::RequestRow,
    now: OffsetDateTime,
) -> serde_json::Value {
    let op = operations::find(&req.operation)
        .map(|o| o.title)
        .unwrap_or_default();
    json!({
        "properties": {
            "principalId": principal,
            "roleDefinitionId": format!("/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/{}", guard.resource_guard_id.subscription(), guard.role_definition_id),
            "requestType": request_type,
            "justification": format!("twokey {}: {} — {}", req.request_id, op, req.justification),
            "scheduleInfo": {
                "startDateTime": timefmt::fmt(now),
                "expiration": { "type": "AfterDuration", "duration": format!("PT{}M", req.duration_minutes) }
            },
            "ticketInfo": { "ticketNumber": req.ticket, "ticketSystem": "twokey" }
        },
        "scope": guard.resource_guard_id.to_string(),
    })
}
