//! The reconciler: at start and then every `azure.reconcile_interval`, compare the grants
//! twokey made in Azure with what Azure holds, and take away any that should have ended. A
//! plain (`azure-rbac`) assignment has no expiry of its own, so watchers are alerted when one
//! outlives its window by more than a minute.

use serde_json::json;
use time::Duration;

use super::{Service, ServiceResult};
use crate::audit::{self, Action, Actor};
use crate::azure::Presence;
use crate::timefmt;

/// How long past its window an `azure-rbac` assignment may stay before watchers hear of it.
pub const OUTLIVED_ALERT_AFTER: Duration = Duration::minutes(1);
/// Ended grants are looked at again for this long.
const LOOK_BACK: Duration = Duration::days(2);

/// What one pass found and did.
#[derive(Debug, Default, Clone)]
pub struct ReconcileReport {
    pub checked: usize,
    /// Assignments found in Azure after their window, and removed again.
    pub removed: usize,
    /// Late revokes brought forward.
    pub nudged: usize,
    /// Watcher alerts queued.
    pub alerted: usize,
}

impl Service {
    /// One pass, unless the last one was less than `azure.reconcile_interval` ago
    /// (`force` skips that check).
    pub async fn reconcile(&self, force: bool) -> ServiceResult<ReconcileReport> {
        let mut report = ReconcileReport::default();
        let Some(cfg) = &self.config.azure else {
            return Ok(report);
        };
        let now = self.now();
        {
            let mut last = self.last_reconcile.lock().expect("reconcile lock");
            let every = Duration::seconds(cfg.reconcile_interval.as_secs() as i64);
            if !force && last.is_some_and(|t| now - t < every && now >= t) {
                return Ok(report);
            }
            *last = Some(now);
        }
        let grants = self
            .store
            .grants_to_reconcile(&timefmt::fmt(now - LOOK_BACK), &timefmt::fmt(now))
            .await?;
        for g in grants {
            report.checked += 1;
            let Some(req) = self.store.get_request(&g.request_id).await? else {
                continue;
            };
            let until = g
                .active_until
                .as_deref()
                .and_then(|u| timefmt::parse(u).ok())
                .unwrap_or(now);
            let rbac = g.backend == "azure-rbac";
            if g.state == "active" {
                // The revoke is late (a crash, an outage): make sure it runs now.
                let mut tx = self.store.begin().await?;
                if tx
                    .reschedule_job(&format!("revoke:{}", g.request_id), &timefmt::fmt(now))
                    .await?
                {
                    report.nudged += 1;
                }
                if rbac && now - until > OUTLIVED_ALERT_AFTER {
                    self.queue_watchers(&mut tx, &req, "outlived_window")
                        .await?;
                    report.alerted += 1;
                }
                tx.commit().await?;
                self.wake_worker();
                continue;
            }
            // Ended in the database: is it really gone in Azure? SECURITY: not while the same
            // person holds an active grant at the same guard through another request (with PIM
            // that is one and the same assignment).
            if let Some(p) = g.principal_object_id.as_deref()
                && self.store.active_grant_exists(&g.scope, p).await?
            {
                continue;
            }
            let backend = match self.backend_of(&req, Some(&g)) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(request_id = %g.request_id, error = %e, "reconcile: no backend");
                    continue;
                }
            };
            let step = format!("reconcile-{}", now.unix_timestamp());
            let a = match self.assignment_of(&req, &g, &step) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(request_id = %g.request_id, error = %e, "reconcile: bad grant row");
                    continue;
                }
            };
            let presence = match backend.confirm(&a).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(request_id = %g.request_id, error = %e, "reconcile: Azure not reachable");
                    continue;
                }
            };
            let Presence::Present { detail, .. } = presence else {
                continue;
            };
            tracing::error!(request_id = %g.request_id, "an assignment twokey made is still in Azure after its window; removing it");
            let removal = backend.revoke(&a).await;
            if removal.as_ref().is_ok_and(|r| !r.removed) {
                // Gone meanwhile (another replica's reconciler, or Azure's own expiry).
                continue;
            }
            let mut tx = self.store.begin().await?;
            audit::record(
                &mut tx,
                now,
                Action::GrantFailed,
                &Actor::system(),
                Some(&g.request_id),
                json!({
                    "step": "reconcile",
                    "backend": g.backend,
                    "found_in_azure": detail,
                    "active_until": g.active_until,
                    "removed": removal.is_ok(),
                    "error": removal.as_ref().err().map(|e| e.to_string()),
                }),
            )
            .await?;
            if rbac && now - until > OUTLIVED_ALERT_AFTER {
                self.queue_watchers(&mut tx, &req, "outlived_window")
                    .await?;
                report.alerted += 1;
            }
            tx.commit().await?;
            self.wake_worker();
            if removal.is_ok() {
                report.removed += 1;
            }
        }
        self.reconcile_failed_grants(now, &mut report).await?;
        Ok(report)
    }

    /// A grant job that gave up may still have reached Azure (its PUT went through, the
    /// confirmation never came). Take away what twokey's request name created.
    async fn reconcile_failed_grants(
        &self,
        now: time::OffsetDateTime,
        report: &mut ReconcileReport,
    ) -> ServiceResult<()> {
        let failed = self
            .store
            .grant_failed_since(&timefmt::fmt(now - LOOK_BACK))
            .await?;
        for req in failed {
            let Some(guard) = self.guard(&req.guard) else {
                continue;
            };
            let (true, Some(principal)) = (
                guard.elevation.needs_object_id(),
                req.requester_object_id.clone(),
            ) else {
                continue;
            };
            report.checked += 1;
            let scope = guard.resource_guard_id.to_string();
            // SECURITY: an active grant of the same person at the same guard (another request)
            // would be the same Azure assignment; it is not ours to take.
            if self.store.active_grant_exists(&scope, &principal).await? {
                continue;
            }
            let Ok(backend) = self.elevation.backend(&guard.name, guard.elevation) else {
                continue;
            };
            let from = req
                .decided_at
                .as_deref()
                .and_then(|t| timefmt::parse(t).ok())
                .unwrap_or(now);
            let a = crate::azure::AssignmentRef {
                request_id: req.request_id.clone(),
                scope: guard.resource_guard_id.clone(),
                role_definition_id: guard.role_definition_id.clone(),
                principal_object_id: principal,
                active_from: from,
                active_until: now,
                step: format!("reconcile-{}", now.unix_timestamp()),
                justification: format!("twokey {}: grant failed", req.request_id),
                grant_detail: serde_json::Value::Null,
            };
            let detail = match backend.confirm(&a).await {
                Ok(Presence::Present { detail, .. }) => detail,
                Ok(Presence::Absent) => continue,
                Err(e) => {
                    tracing::warn!(request_id = %req.request_id, error = %e, "reconcile: Azure not reachable");
                    continue;
                }
            };
            tracing::error!(request_id = %req.request_id, "a failed grant left an assignment in Azure; removing it");
            let removal = backend.revoke(&a).await;
            if removal.as_ref().is_ok_and(|r| !r.removed) {
                continue;
            }
            let mut tx = self.store.begin().await?;
            audit::record(
                &mut tx,
                now,
                Action::GrantFailed,
                &Actor::system(),
                Some(&req.request_id),
                json!({
                    "step": "reconcile",
                    "backend": guard.elevation.as_str(),
                    "found_in_azure": detail,
                    "after": "grant_failed",
                    "removed": removal.is_ok(),
                    "error": removal.as_ref().err().map(|e| e.to_string()),
                }),
            )
            .await?;
            self.queue_watchers(&mut tx, &req, "failed_grant_left_assignment")
                .await?;
            report.alerted += 1;
            tx.commit().await?;
            self.wake_worker();
            if removal.is_ok() {
                report.removed += 1;
            }
        }
        Ok(())
    }
}
