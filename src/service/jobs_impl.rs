//! What each kind of job does. A job's database effects, its audit event and the job's own
//! completion commit in one transaction, and that commit only succeeds while the worker still
//! holds the job's lease: a worker that died mid-job leaves nothing behind, and the one that
//! takes over does the work exactly once. Effects outside the database (a file in the outbox,
//! later a call to Azure) are made idempotent by deriving their names from the job.

use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;

use super::{Service, ServiceError, ServiceResult, parse_state, parse_time};
use crate::audit::{self, Action, Actor};
use crate::auth::review_token::ReviewClaims;
use crate::azure::{AssignmentRef, ElevationError, GrantSpec};
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
    /// Deliver one event to one outbound webhook.
    Webhook,
    /// A once-a-day task (coverage check, digest), made unique per day by its dedupe key so that
    /// it runs once across replicas.
    Daily,
    /// Run the posture report (daily, or asked for on the page).
    Posture,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Revoke => "revoke",
            Self::Mail => "mail",
            Self::Webhook => "webhook",
            Self::Daily => "daily",
            Self::Posture => "posture",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "grant" => Some(Self::Grant),
            "revoke" => Some(Self::Revoke),
            "mail" => Some(Self::Mail),
            "webhook" => Some(Self::Webhook),
            "daily" => Some(Self::Daily),
            "posture" => Some(Self::Posture),
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
            Self::Mail | Self::Webhook => 10,
            Self::Daily | Self::Posture => 5,
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
    /// To a watcher: an alert or the digest, whose words are in `extra` (a `notify::AlertNotice`).
    Alert,
    /// To a guard's watchers: its posture report changed (no request).
    Posture,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MailPayload {
    pub kind: MailKind,
    /// Empty for alerts that concern no request.
    #[serde(default)]
    pub request_id: String,
    pub to: String,
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// A failed attempt: retry later, retry at a given time, or give up now.
#[derive(Debug)]
pub enum JobFailure {
    Retry(String),
    /// Not before this time (Azure said when it would accept the call).
    RetryAt(OffsetDateTime, String),
    Permanent(String),
}

impl From<ElevationError> for JobFailure {
    fn from(e: ElevationError) -> Self {
        match e {
            ElevationError::Transient(m) => Self::Retry(m),
            ElevationError::RetryAt(at, m) => Self::RetryAt(at, m),
            ElevationError::Refused(m) => Self::Permanent(m),
        }
    }
}

fn truncate_chars(s: &mut String, max: usize) {
    if let Some((i, _)) = s.char_indices().nth(max) {
        s.truncate(i);
    }
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
            JobKind::Webhook => self.run_webhook(job, owner).await,
            JobKind::Daily => self.run_daily(job, owner).await,
            JobKind::Posture => self.run_posture_job(job, owner).await,
        }
    }

    /// Commit `tx` if the lease still holds; roll back otherwise.
    pub(crate) async fn finish(
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
        let start = self.now();
        let rid = job
            .request_id
            .as_deref()
            .ok_or_else(|| JobFailure::Permanent("grant job without request".into()))?;
        // Read outside a write transaction: the Azure round trips below must not hold the
        // writers' lock. The state is checked again in the transaction that records the grant.
        let req = self
            .store
            .get_request(rid)
            .await?
            .ok_or_else(|| JobFailure::Permanent("request vanished".into()))?;
        if parse_state(&req.state)? != RequestState::Approved {
            // Already done by an earlier run, or the request moved on: nothing to do.
            let tx = self.store.begin().await?;
            return self.finish(tx, job, owner, start).await;
        }
        let Some(guard) = self.guard(&req.guard) else {
            return Err(JobFailure::Permanent(format!(
                "guard `{}` is no longer configured",
                req.guard
            )));
        };
        let backend = self
            .elevation
            .backend(&guard.name, guard.elevation)
            .map_err(JobFailure::Permanent)?;
        let principal = match (&req.requester_object_id, guard.elevation.needs_object_id()) {
            (Some(oid), _) => oid.clone(),
            (None, false) => String::new(),
            (None, true) => {
                return Err(JobFailure::Permanent(
                    "the requester has no Azure object id, so no role can be assigned".into(),
                ));
            }
        };
        let op = operations::find(&req.operation)
            .map(|o| o.title)
            .unwrap_or_default();
        let vault = req.vault_id.rsplit('/').next().unwrap_or(&req.vault_id);
        let mut justification = format!(
            "twokey {}: {} on {} — {}",
            req.request_id, op, vault, req.justification
        );
        truncate_chars(&mut justification, 500);
        let spec = GrantSpec {
            request_id: rid.to_string(),
            scope: guard.resource_guard_id.clone(),
            role_definition_id: guard.role_definition_id.clone(),
            principal_object_id: principal,
            start,
            duration_minutes: req.duration_minutes,
            justification,
            ticket: req.ticket.clone(),
        };
        let outcome = backend.grant(&spec).await.map_err(JobFailure::from)?;
        // A repeated job adopts the window Azure holds from the first attempt.
        let (from, until) = outcome.window.unwrap_or((start, spec.end()));
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let req = tx
            .get_request(rid)
            .await?
            .ok_or_else(|| JobFailure::Permanent("request vanished".into()))?;
        if parse_state(&req.state)? != RequestState::Approved {
            return self.finish(tx, job, owner, now).await;
        }
        let call_id = outcome.arm_request_name.clone();
        if let Some(body) = &outcome.simulated_body {
            let mut body = body.clone();
            body["scope"] = json!(guard.resource_guard_id.to_string());
            tx.insert_simulated_call(&SimulatedCallRow {
                call_id: call_id.clone(),
                request_id: rid.into(),
                step: "grant".into(),
                body: body.to_string(),
                at: timefmt::fmt(now),
            })
            .await?;
        }
        let mut detail = outcome.detail.clone();
        detail["arm_request_name"] = json!(call_id);
        tx.insert_grant(&GrantRow {
            request_id: rid.into(),
            backend: guard.elevation.as_str().into(),
            scope: guard.resource_guard_id.to_string(),
            role_definition_id: guard.role_definition_id.clone(),
            principal_object_id: req.requester_object_id.clone(),
            state: "active".into(),
            requested_at: timefmt::fmt(start),
            active_from: Some(timefmt::fmt(from)),
            active_until: Some(timefmt::fmt(until)),
            ended_at: None,
            detail: Some(detail.to_string()),
        })
        .await?;
        let moved = tx
            .transition(
                rid,
                "approved",
                "active",
                &TransitionSet {
                    active_from: Some(timefmt::fmt(from)),
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
                "active_from": timefmt::fmt(from),
                "active_until": timefmt::fmt(until),
                "azure": outcome.detail,
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
        let done = self.finish(tx, job, owner, now).await?;
        if done
            && let Some(approved) = req
                .decided_at
                .as_deref()
                .and_then(|t| timefmt::parse(t).ok())
        {
            crate::metrics::grant_active((now - approved).unsigned_abs());
        }
        Ok(done)
    }

    /// The assignment behind a request's grant row, for removal or a look in Azure.
    pub(crate) fn assignment_of(
        &self,
        req: &crate::store::RequestRow,
        grant: &GrantRow,
        step: &str,
    ) -> Result<AssignmentRef, String> {
        let scope = crate::domain::arm::ResourceGuardId::parse(&grant.scope)
            .map_err(|e| format!("stored scope: {e}"))?;
        let from = grant
            .active_from
            .as_deref()
            .or(req.active_from.as_deref())
            .map(timefmt::parse)
            .transpose()
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|| self.now());
        let until = grant
            .active_until
            .as_deref()
            .or(req.active_until.as_deref())
            .map(timefmt::parse)
            .transpose()
            .map_err(|e| e.to_string())?
            .unwrap_or(from);
        Ok(AssignmentRef {
            request_id: req.request_id.clone(),
            scope,
            role_definition_id: grant.role_definition_id.clone(),
            principal_object_id: grant.principal_object_id.clone().unwrap_or_default(),
            active_from: from,
            active_until: until,
            step: step.to_string(),
            justification: format!("twokey {}: window over", req.request_id),
            grant_detail: grant
                .detail
                .as_deref()
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or_default(),
        })
    }

    /// The backend that made a grant (by the grant row, not today's guard config: a guard
    /// switched to `simulated` must still have its real assignments removed).
    pub(crate) fn backend_of(
        &self,
        req: &crate::store::RequestRow,
        grant: Option<&GrantRow>,
    ) -> Result<std::sync::Arc<dyn crate::azure::Elevation>, String> {
        let kind = grant
            .and_then(|g| ElevationBackend::parse(&g.backend))
            .or_else(|| self.guard(&req.guard).map(|g| g.elevation))
            .unwrap_or(ElevationBackend::Simulated);
        self.elevation.backend(&req.guard, kind)
    }

    async fn run_revoke(&self, job: &JobRow, owner: &str) -> Result<bool, JobFailure> {
        let rid = job
            .request_id
            .as_deref()
            .ok_or_else(|| JobFailure::Permanent("revoke job without request".into()))?;
        let req = self
            .store
            .get_request(rid)
            .await?
            .ok_or_else(|| JobFailure::Permanent("request vanished".into()))?;
        if parse_state(&req.state)? != RequestState::Active {
            let now = self.now();
            let tx = self.store.begin().await?;
            return self.finish(tx, job, owner, now).await;
        }
        let grant = self.store.get_grant(rid).await?;
        // SECURITY: a revoke never gives up (JobKind::max_attempts); every failure here is a
        // retry, and each one stays visible in the job row.
        let backend = self
            .backend_of(&req, grant.as_ref())
            .map_err(JobFailure::Retry)?;
        let outcome = match &grant {
            Some(g) => {
                let a = self
                    .assignment_of(&req, g, "revoke")
                    .map_err(JobFailure::Retry)?;
                match backend.revoke(&a).await {
                    Ok(o) => o,
                    Err(ElevationError::RetryAt(at, msg)) => {
                        self.note_on_request(rid, &msg).await?;
                        return Err(JobFailure::RetryAt(at, msg));
                    }
                    Err(e) => return Err(JobFailure::Retry(e.to_string())),
                }
            }
            None => crate::azure::RevokeOutcome {
                removed: false,
                detail: json!({}),
                simulated_body: None,
            },
        };
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let req = tx
            .get_request(rid)
            .await?
            .ok_or_else(|| JobFailure::Permanent("request vanished".into()))?;
        if parse_state(&req.state)? != RequestState::Active {
            return self.finish(tx, job, owner, now).await;
        }
        if let Some(body) = &outcome.simulated_body {
            tx.insert_simulated_call(&SimulatedCallRow {
                call_id: step_guid(rid, "revoke").to_string(),
                request_id: rid.into(),
                step: "revoke".into(),
                body: body.to_string(),
                at: timefmt::fmt(now),
            })
            .await?;
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
        let lateness_ms = req
            .active_until
            .as_deref()
            .and_then(|u| timefmt::parse(u).ok())
            .map(|u| (now - u).whole_milliseconds().max(0) as i64);
        audit::record(
            &mut tx,
            now,
            Action::GrantEnded,
            &Actor::system(),
            Some(rid),
            json!({
                // Who lost which role where, so the event tells its story without other tables.
                "scope": grant.as_ref().map(|g| g.scope.clone()),
                "role_definition_id": grant.as_ref().map(|g| g.role_definition_id.clone()),
                "principal_object_id": req.requester_object_id,
                "reason": reason.as_str(),
                "active_from": req.active_from,
                "active_until": req.active_until,
                "end_requested_at": req.end_requested_at,
                "end_requested_by": requested_by,
                "backend": grant.as_ref().map(|g| g.backend.clone()),
                "removed_in_azure": outcome.removed,
                "azure": outcome.detail,
                "late_by_ms": if reason == EndReason::Expired { lateness_ms } else { None },
            }),
        )
        .await?;
        self.queue_requester(&mut tx, &req, "ended").await?;
        self.queue_watchers(&mut tx, &req, "ended").await?;
        self.finish(tx, job, owner, now).await
    }

    /// Put a short note on an active request (shown in its view), e.g. why its early end waits.
    async fn note_on_request(&self, rid: &str, msg: &str) -> Result<(), JobFailure> {
        let mut tx = self.store.begin().await?;
        tx.set_failure_message(rid, msg).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn run_mail(&self, job: &JobRow, owner: &str) -> Result<bool, JobFailure> {
        let now = self.now();
        let payload: MailPayload = serde_json::from_str(&job.payload)
            .map_err(|e| JobFailure::Permanent(format!("bad payload: {e}")))?;
        let created = parse_time(&job.created_at)?;
        if payload.kind == MailKind::Alert {
            return self.run_alert_mail(job, owner, &payload, created).await;
        }
        if payload.kind == MailKind::Posture {
            return self.run_posture_mail(job, owner, &payload, created).await;
        }
        let req = self
            .store
            .get_request(&payload.request_id)
            .await?
            .ok_or_else(|| JobFailure::Permanent("request vanished".into()))?;
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
        let mail = crate::notify::render(self, &payload, Some(&req), link.as_deref())?;
        let message_id = format!("<{}@twokey>", job.job_id);
        let path =
            crate::notify::deliver(self, &job.job_id, &message_id, created, &payload.to, &mail)
                .await
                .map_err(JobFailure::Retry)?;
        let mut tx = self.store.begin().await?;
        if let Some(t) = &token_row {
            tx.insert_review_token(t).await?;
        }
        let kind = serde_json::to_value(payload.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let details = json!({
            "kind": payload.kind,
            "to": payload.to,
            "subject": mail.subject,
            "message_id": message_id,
            "event": payload.extra.get("event"),
            "review_token_jti": token_row.as_ref().map(|t| t.jti.clone()),
        });
        let sent = Sent {
            request_id: Some(&req.request_id),
            kind,
            to: &payload.to,
            mail: &mail,
            message_id: &message_id,
            path,
            details,
        };
        self.record_sent(tx, job, owner, now, sent).await
    }

    /// Deliver one event to one webhook. The URL is checked again (https, or loopback http when
    /// allowed) and never appears in an error, a log line or the audit log.
    async fn run_webhook(&self, job: &JobRow, owner: &str) -> Result<bool, JobFailure> {
        let p: super::alerts::WebhookPayload = serde_json::from_str(&job.payload)
            .map_err(|e| JobFailure::Permanent(format!("bad payload: {e}")))?;
        let hook = self
            .config
            .webhooks
            .iter()
            .find(|w| w.name == p.webhook)
            .ok_or_else(|| {
                JobFailure::Permanent(format!("webhook `{}` is no longer configured", p.webhook))
            })?;
        let url = crate::config::webhook_url_ok(
            hook.url.expose(),
            self.config.alerts.allow_http_loopback,
        )
        .map_err(|e| JobFailure::Permanent(format!("webhook `{}`: URL {e}", hook.name)))?;
        let out =
            crate::notify::webhook::build(hook, &p.event, &job.job_id, self.now().unix_timestamp());
        let status = crate::notify::webhook::send(&self.http, &url, &out)
            .await
            .map_err(|e| {
                if e.retry {
                    JobFailure::Retry(e.message)
                } else {
                    JobFailure::Permanent(e.message)
                }
            })?;
        let now = self.now();
        let mut tx = self.store.begin().await?;
        audit::record(
            &mut tx,
            now,
            Action::NotificationSent,
            &Actor::system(),
            job.request_id.as_deref(),
            json!({
                "kind": "webhook",
                "webhook": hook.name,
                "webhook_kind": hook.kind.as_str(),
                "event": p.event.event,
                "status": status,
                "delivery": job.job_id,
            }),
        )
        .await?;
        self.finish(tx, job, owner, now).await
    }

    /// A mail that stands on its own (an alert, the digest): its words are in the payload.
    async fn run_alert_mail(
        &self,
        job: &JobRow,
        owner: &str,
        payload: &MailPayload,
        created: OffsetDateTime,
    ) -> Result<bool, JobFailure> {
        let mail = crate::notify::render(self, payload, None, None)?;
        let message_id = format!("<{}@twokey>", job.job_id);
        let path =
            crate::notify::deliver(self, &job.job_id, &message_id, created, &payload.to, &mail)
                .await
                .map_err(JobFailure::Retry)?;
        let now = self.now();
        let rid = Some(payload.request_id.clone()).filter(|r| !r.is_empty());
        let tx = self.store.begin().await?;
        let details = json!({
            "kind": payload.kind,
            "to": payload.to,
            "subject": mail.subject,
            "message_id": message_id,
            "event": payload.extra.get("event"),
        });
        let sent = Sent {
            request_id: rid.as_deref(),
            kind: "alert".into(),
            to: &payload.to,
            mail: &mail,
            message_id: &message_id,
            path,
            details,
        };
        self.record_sent(tx, job, owner, now, sent).await
    }

    /// A posture mail: about a guard, not a request.
    async fn run_posture_mail(
        &self,
        job: &JobRow,
        owner: &str,
        payload: &MailPayload,
        created: OffsetDateTime,
    ) -> Result<bool, JobFailure> {
        let mail = crate::notify::render_posture(self, payload)?;
        let message_id = format!("<{}@twokey>", job.job_id);
        let path =
            crate::notify::deliver(self, &job.job_id, &message_id, created, &payload.to, &mail)
                .await
                .map_err(JobFailure::Retry)?;
        let now = self.now();
        let tx = self.store.begin().await?;
        let details = json!({
            "kind": payload.kind,
            "to": payload.to,
            "subject": mail.subject,
            "message_id": message_id,
            "event": "posture.changed",
            "guard": payload.extra.get("guard"),
        });
        let sent = Sent {
            request_id: None,
            kind: "posture".into(),
            to: &payload.to,
            mail: &mail,
            message_id: &message_id,
            path,
            details,
        };
        self.record_sent(tx, job, owner, now, sent).await
    }

    /// A mail has left: its notification row and `notification.sent`, in one transaction with
    /// the job's completion (so a retry after a crash writes the same message id again).
    async fn record_sent(
        &self,
        mut tx: Tx,
        job: &JobRow,
        owner: &str,
        now: OffsetDateTime,
        sent: Sent<'_>,
    ) -> Result<bool, JobFailure> {
        tx.insert_notification(&NotificationRow {
            notification_id: job.job_id.clone(),
            request_id: sent.request_id.map(str::to_string),
            kind: sent.kind,
            recipient: sent.to.to_string(),
            subject: sent.mail.subject.clone(),
            message_id: sent.message_id.to_string(),
            path: Some(sent.path),
            body: sent.mail.text.clone(),
            sent_at: timefmt::fmt(now),
        })
        .await?;
        audit::record(
            &mut tx,
            now,
            Action::NotificationSent,
            &Actor::system(),
            sent.request_id,
            sent.details,
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
            Some(JobKind::Webhook) => {
                let payload: Option<super::alerts::WebhookPayload> =
                    serde_json::from_str(&job.payload).ok();
                audit::record(
                    &mut tx,
                    now,
                    Action::NotificationFailed,
                    &Actor::system(),
                    rid.as_deref(),
                    json!({
                        "kind": "webhook",
                        "webhook": payload.as_ref().map(|p| p.webhook.clone()),
                        "event": payload.as_ref().map(|p| p.event.event.clone()),
                        "error": error,
                        "attempts": job.attempts,
                    }),
                )
                .await?;
            }
            Some(JobKind::Daily) => {
                tracing::error!(job_id = %job.job_id, error = %error, "daily task gave up");
            }
            Some(JobKind::Posture) => {}
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

/// What [`Service::record_sent`] writes about one mail.
struct Sent<'a> {
    request_id: Option<&'a str>,
    kind: String,
    to: &'a str,
    mail: &'a crate::notify::Mail,
    message_id: &'a str,
    path: String,
    details: serde_json::Value,
}
