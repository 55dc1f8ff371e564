//! Alerts: the one point where watchers hear of things (mail and/or webhooks, per guard),
//! Azure Monitor intake, the suspicious-activity rules and the once-a-day tasks (approver
//! coverage, the digest). Like every use case, each alert is written in the transaction of its
//! event: the audit row and the jobs that tell people commit together or not at all.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::Duration;

use super::jobs_impl::JobFailure;
use super::{JobKind, MailKind, MailPayload, Service, ServiceResult, new_id};
use crate::audit::{self, Action, Actor};
use crate::config::AuthMode;
use crate::domain::alerts::{self as rules, AlertKind, AzureAlert};
use crate::domain::policy::GuardPolicy;
use crate::domain::principal::{Principal, normalize_email};
use crate::domain::request::DomainError;
use crate::notify::AlertNotice;
use crate::notify::webhook::WebhookEvent;
use crate::store::{AlertReceivedRow, JobRow, NewJob, RequestFilter, RequestRow, Tx};
use crate::timefmt;

/// A webhook job's payload: which webhook, and what to tell it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookPayload {
    pub webhook: String,
    pub event: WebhookEvent,
}

/// Who hears of an alert.
pub(crate) enum Audience<'a> {
    /// The watchers and webhooks of these guards.
    Guards(Vec<&'a GuardPolicy>),
    /// Nobody's guard: `alerts.fallback_watchers` (default every guard's watchers) and
    /// `alerts.fallback_webhooks`.
    Fallback,
}

/// What became of an Azure Monitor alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intake {
    Accepted {
        guards: Vec<String>,
        kind: &'static str,
    },
    /// The same alert id and condition was taken in before: nothing more happens.
    Duplicate,
}

fn short_time(s: &str) -> String {
    match (s.get(..10), s.get(11..16)) {
        (Some(d), Some(t)) => format!("{d} {t} UTC"),
        _ => s.to_string(),
    }
}

impl Service {
    /// How many distinct people can approve for `g`, when that can be known (see
    /// [`rules::eligible_approvers`]); with the dev sign-in, its people are all there is.
    pub fn eligible_approvers(&self, g: &GuardPolicy) -> Option<usize> {
        let known: Option<Vec<Principal>> = (self.config.auth.mode == AuthMode::Dev).then(|| {
            self.config
                .auth
                .dev_users
                .iter()
                .map(|u| Principal {
                    id: String::new(),
                    email: u.email.clone(),
                    name: u.name.clone(),
                    azure_object_id: u.object_id.clone(),
                    groups: u.groups.clone(),
                })
                .collect()
        });
        rules::eligible_approvers(g, known.as_deref())
    }

    fn new_job(
        &self,
        kind: JobKind,
        request_id: Option<&str>,
        payload: Value,
        dedupe: String,
    ) -> NewJob {
        let now = timefmt::fmt(self.now());
        NewJob {
            job_id: new_id(),
            kind: kind.as_str().to_string(),
            request_id: request_id.map(str::to_string),
            payload: payload.to_string(),
            dedupe_key: Some(dedupe),
            max_attempts: kind.max_attempts(),
            run_at: now.clone(),
            created_at: now,
        }
    }

    /// Queue one delivery per webhook of `guards` (by name; `None`: the fallback webhooks)
    /// that subscribes to the event. `key` makes each delivery unique.
    pub(crate) async fn queue_webhooks(
        &self,
        tx: &mut Tx,
        guards: Option<&[&str]>,
        event: &WebhookEvent,
        key: &str,
    ) -> ServiceResult<()> {
        let mut names: Vec<&String> = match guards {
            Some(gs) => gs
                .iter()
                .filter_map(|g| self.config.guard_webhooks.get(*g))
                .flatten()
                .collect(),
            None => self.config.alerts.fallback_webhooks.iter().collect(),
        };
        names.sort();
        names.dedup();
        for name in names {
            let Some(hook) = self.config.webhooks.iter().find(|w| &w.name == name) else {
                continue;
            };
            if !rules::event_selected(&hook.events, &event.event) {
                continue;
            }
            let payload = serde_json::to_value(WebhookPayload {
                webhook: hook.name.clone(),
                event: event.clone(),
            })
            .map_err(|e| super::ServiceError::Internal(e.to_string()))?;
            tx.queue_job(self.new_job(
                JobKind::Webhook,
                event.request_id.as_deref(),
                payload,
                format!("webhook:{key}:{}", hook.name),
            ));
        }
        Ok(())
    }

    /// Tell an audience about a notice: one mail per watcher (a watcher of several guards gets
    /// one), one delivery per subscribed webhook.
    pub(crate) async fn notify_notice(
        &self,
        tx: &mut Tx,
        audience: &Audience<'_>,
        notice: &AlertNotice,
        key: &str,
    ) -> ServiceResult<()> {
        let (mut watchers, guard_names): (Vec<String>, Option<Vec<&str>>) = match audience {
            Audience::Guards(gs) => (
                gs.iter().flat_map(|g| g.watchers.iter().cloned()).collect(),
                Some(gs.iter().map(|g| g.name.as_str()).collect()),
            ),
            Audience::Fallback => (
                match &self.config.alerts.fallback_watchers {
                    Some(list) => list.clone(),
                    None => self
                        .config
                        .guards
                        .iter()
                        .flat_map(|g| g.watchers.iter().cloned())
                        .collect(),
                },
                None,
            ),
        };
        watchers.sort_by_key(|w| w.to_lowercase());
        watchers.dedup_by_key(|w| w.to_lowercase());
        let extra = serde_json::to_value(notice)
            .map_err(|e| super::ServiceError::Internal(e.to_string()))?;
        for w in &watchers {
            let payload = serde_json::to_value(MailPayload {
                kind: MailKind::Alert,
                request_id: notice.request_id.clone().unwrap_or_default(),
                to: w.clone(),
                extra: extra.clone(),
            })
            .map_err(|e| super::ServiceError::Internal(e.to_string()))?;
            tx.queue_job(self.new_job(
                JobKind::Mail,
                notice.request_id.as_deref(),
                payload,
                format!("mail:alert:{key}:{}", w.to_lowercase()),
            ));
        }
        let model = crate::notify::alert_model(notice);
        let event = WebhookEvent::from_model(
            &notice.event,
            &timefmt::fmt(self.now()),
            guard_names
                .as_ref()
                .map(|g| g.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default(),
            notice.request_id.clone(),
            &model,
        );
        self.queue_webhooks(tx, guard_names.as_deref(), &event, key)
            .await
    }

    /// The webhook side of a request's watcher event (the mail side is `queue_watchers_with`).
    pub(crate) async fn queue_request_webhooks(
        &self,
        tx: &mut Tx,
        req: &RequestRow,
        extra: &Value,
        key: &str,
    ) -> ServiceResult<()> {
        let Some(hooks) = self.config.guard_webhooks.get(&req.guard) else {
            return Ok(());
        };
        if hooks.is_empty() {
            return Ok(());
        }
        let payload = MailPayload {
            kind: MailKind::Watcher,
            request_id: req.request_id.clone(),
            to: String::new(),
            extra: extra.clone(),
        };
        let model = crate::notify::model(self, &payload, Some(req), None)
            .map_err(|e| super::ServiceError::Internal(format!("{e:?}")))?;
        let event_name = extra
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or("event");
        let event = WebhookEvent::from_model(
            event_name,
            &timefmt::fmt(self.now()),
            vec![req.guard.clone()],
            Some(req.request_id.clone()),
            &model,
        );
        self.queue_webhooks(
            tx,
            Some(&[req.guard.as_str()]),
            &event,
            &format!("{}:{key}", req.request_id),
        )
        .await
    }

    /// A suspicious-activity rule fired: the `alert.raised` audit event (`details.rule`) and
    /// the notice to the audience, in `tx`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn raise_alert(
        &self,
        tx: &mut Tx,
        rule: &str,
        actor: &Actor,
        req: Option<&RequestRow>,
        audience: &Audience<'_>,
        details: Value,
        headline: String,
        intro: String,
        key: &str,
    ) -> ServiceResult<()> {
        let now = self.now();
        let mut d = json!({ "rule": rule });
        if let (Some(o), Value::Object(extra)) = (d.as_object_mut(), details) {
            o.extend(extra);
        }
        audit::record(
            tx,
            now,
            Action::AlertRaised,
            actor,
            req.map(|r| r.request_id.as_str()),
            d,
        )
        .await?;
        let guard = match audience {
            Audience::Guards(gs) => gs
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            Audience::Fallback => "all guards".into(),
        };
        let (subject, facts, link) = match req {
            Some(r) => {
                let vault = r.vault_id.rsplit('/').next().unwrap_or(&r.vault_id);
                (
                    format!("[twokey] alert: {rule}: {headline} — {vault}"),
                    crate::notify::request_facts(r),
                    Some(format!("{}/requests/{}", self.public_base(), r.request_id)),
                )
            }
            None => (format!("[twokey] alert: {rule}: {headline}"), vec![], None),
        };
        let notice = AlertNotice {
            event: format!("alert.raised:{rule}"),
            subject,
            headline,
            intro,
            warning: Some("Suspicious activity: check that this was expected.".into()),
            facts,
            link,
            link_text: "Open the request".into(),
            guard,
            request_id: req.map(|r| r.request_id.clone()),
        };
        self.notify_notice(tx, audience, &notice, &format!("raised:{key}"))
            .await
    }

    // ---- the rules a new request may trip ------------------------------------------------

    /// Check a request being created (inside its transaction): outside business hours, too many
    /// requests by one person in a day, a destructive operation on a vault whose backups just
    /// failed.
    pub(crate) async fn check_new_request(
        &self,
        tx: &mut Tx,
        req: &RequestRow,
        reversible: bool,
        actor: &Actor,
    ) -> ServiceResult<()> {
        let now = self.now();
        let a = &self.config.alerts;
        let Some(guard) = self.guard(&req.guard) else {
            return Ok(());
        };
        let audience = Audience::Guards(vec![guard]);
        if let Some(bh) = &a.business_hours
            && !bh.contains(now)
        {
            self.raise_alert(
                tx,
                "outside_business_hours",
                actor,
                Some(req),
                &audience,
                json!({ "time_zone": a.time_zone.name(), "local_time": rules::local_minute(now, a.time_zone) }),
                format!("request outside business hours by {}", req.requester_email),
                format!(
                    "{} asked for a critical operation outside business hours ({} in {}).",
                    req.requester_email,
                    {
                        let m = rules::local_minute(now, a.time_zone);
                        format!("{:02}:{:02}", m / 60, m % 60)
                    },
                    a.time_zone.name()
                ),
                &format!("hours:{}", req.request_id),
            )
            .await?;
        }
        if a.max_requests_per_day > 0 {
            let since = timefmt::fmt(now - Duration::hours(24));
            let n = tx.count_requests_since(&req.requester_id, &since).await?;
            // SECURITY: counted inside the writers' lock, so exactly one request is the one
            // that crosses the line, and the alert fires once per crossing.
            if n == i64::from(a.max_requests_per_day) + 1 {
                self.raise_alert(
                    tx,
                    "too_many_requests",
                    actor,
                    Some(req),
                    &audience,
                    json!({ "requests_in_24h": n, "max_requests_per_day": a.max_requests_per_day }),
                    format!("{n} requests in 24 hours by {}", req.requester_email),
                    format!(
                        "{} has made {n} requests in the last 24 hours (more than the {} expected). A compromised account may be trying its luck.",
                        req.requester_email, a.max_requests_per_day
                    ),
                    &format!("many:{}", req.request_id),
                )
                .await?;
            }
        }
        if !reversible {
            let since = timefmt::fmt(now - Duration::seconds(a.failure_lookback.as_secs() as i64));
            let vault = req.vault_id.to_ascii_lowercase();
            if tx
                .alert_about_vault_since(&vault, AlertKind::BackupFailure.as_str(), &since)
                .await?
            {
                self.raise_alert(
                    tx,
                    "destructive_after_backup_failure",
                    actor,
                    Some(req),
                    &audience,
                    json!({ "vault_id": req.vault_id, "lookback_hours": a.failure_lookback.as_secs() / 3600 }),
                    "destructive request after a backup failure".into(),
                    format!(
                        "{} asks for an operation that cannot be undone on a vault whose backups failed within the last {} hours. Attackers often break backups first and delete them next.",
                        req.requester_email,
                        a.failure_lookback.as_secs() / 3600
                    ),
                    &format!("failure:{}", req.request_id),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// A requester tried to approve their own request (refused by the domain): audit it and
    /// tell the watchers once per person and request.
    pub(crate) async fn self_approval_attempt(
        &self,
        actor: &Actor,
        who: &Principal,
        req: &RequestRow,
        channel: &str,
    ) -> ServiceResult<()> {
        let Some(guard) = self.guard(&req.guard) else {
            return Ok(());
        };
        let mut tx = self.store.begin().await?;
        self.raise_alert(
            &mut tx,
            "self_approval",
            actor,
            Some(req),
            &Audience::Guards(vec![guard]),
            json!({ "by": who.email, "channel": channel }),
            format!("{} tried to approve their own request", who.email),
            format!(
                "{} tried to approve a request made by {} — the same person. twokey refused it; nobody can approve their own request.",
                who.email, req.requester_email
            ),
            &format!("self:{}:{}", req.request_id, who.id),
        )
        .await?;
        tx.commit().await?;
        self.wake.notify_one();
        Ok(())
    }

    /// After a refused review link was recorded in `tx`: the burst rule.
    pub(crate) async fn check_token_burst(
        &self,
        tx: &mut Tx,
        req: Option<&RequestRow>,
        actor: &Actor,
    ) -> ServiceResult<()> {
        let now = self.now();
        let a = &self.config.alerts;
        let since = timefmt::fmt(now - Duration::seconds(a.token_burst_window.as_secs() as i64));
        let n = tx
            .count_audit_since(
                Action::TokenRejected.as_str(),
                req.map(|r| r.request_id.as_str()),
                &since,
            )
            .await?;
        // Exactly at the threshold: once per burst (counted inside the writers' lock).
        if n != i64::from(a.token_burst_count) {
            return Ok(());
        }
        let window = a.token_burst_window.as_secs() / 60;
        let guard = req.and_then(|r| self.guard(&r.guard));
        let audience = match guard {
            Some(g) => Audience::Guards(vec![g]),
            None => Audience::Fallback,
        };
        let what = if req.is_some() {
            "for this request"
        } else {
            "(links that did not verify, so no request can be named)"
        };
        self.raise_alert(
            tx,
            "token_rejection_burst",
            actor,
            req,
            &audience,
            json!({ "count": n, "window_minutes": window }),
            format!("{n} refused review links within {window} minutes"),
            format!(
                "Review links {what} were refused {n} times within {window} minutes. Someone may be trying to use a link that is not theirs, or guessing."
            ),
            &format!(
                "burst:{}:{}",
                req.map(|r| r.request_id.as_str()).unwrap_or("none"),
                now.unix_timestamp()
            ),
        )
        .await
    }

    // ---- Azure Monitor intake --------------------------------------------------------------

    /// A call to the intake with a wrong secret (or an unknown hook): audited as `auth.failed`.
    pub async fn hook_auth_failed(
        &self,
        actor: &Actor,
        hook: &str,
        reason: &str,
    ) -> ServiceResult<()> {
        let hook = if hook.len() <= 64
            && hook
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            hook
        } else {
            "(not a hook name)"
        };
        let mut tx = self.store.begin().await?;
        audit::record(
            &mut tx,
            self.now(),
            Action::AuthFailed,
            actor,
            None,
            json!({ "method": "alert_hook", "hook": hook, "reason": reason }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Take in one common-alert-schema body that came through `hook`: audit it as
    /// `alert.received` and tell the watchers of the guards whose vaults it concerns (or the
    /// fallback audience). The same alert id and condition is taken in once.
    pub async fn receive_azure_alert(
        &self,
        hook: &str,
        actor: &Actor,
        body: &Value,
    ) -> ServiceResult<Intake> {
        let alert = rules::parse_common_alert(body).map_err(|e| DomainError::Invalid {
            field: e.field,
            message: e.message,
        })?;
        let now = self.now();
        let guards = rules::guards_for(&alert, &self.config.guards);
        let names: Vec<String> = guards.iter().map(|g| g.name.clone()).collect();
        let key = rules::dedupe_key(&alert.alert_id, &alert.monitor_condition);
        let vault_id = alert
            .vault
            .as_ref()
            .map(|v| v.to_string().to_ascii_lowercase());
        let mut tx = self.store.begin().await?;
        let fresh = tx
            .insert_alert_received(&AlertReceivedRow {
                alert_key: key.clone(),
                hook: hook.to_string(),
                alert_id: alert.alert_id.clone(),
                condition: alert.monitor_condition.clone(),
                kind: alert.kind.as_str().into(),
                summary: alert.summary.clone(),
                vault_id: vault_id.clone(),
                guards: serde_json::to_string(&names).expect("json"),
                received_at: timefmt::fmt(now),
            })
            .await?;
        // SECURITY: one event and one notice per alert id and condition, decided by the
        // primary key inside the writers' lock, so concurrent retries cannot double it.
        if !fresh {
            return Ok(Intake::Duplicate);
        }
        audit::record(
            &mut tx,
            now,
            Action::AlertReceived,
            actor,
            None,
            json!({
                "hook": hook,
                "alert_id": alert.alert_id,
                "rule": alert.rule,
                "severity": alert.severity,
                "signal_type": alert.signal_type,
                "monitor_condition": alert.monitor_condition,
                "monitoring_service": alert.monitoring_service,
                "kind": alert.kind,
                "summary": alert.summary,
                "vault_id": vault_id,
                "resource_ids": alert.resource_ids,
                "operation": alert.operation,
                "caller": alert.caller,
                "status": alert.status,
                "item": alert.item,
                "fired_at": alert.fired_at,
                "resolved_at": alert.resolved_at,
                "portal_link": alert.portal_link,
                "guards": names,
                "routed_to": if guards.is_empty() { "fallback" } else { "guards" },
            }),
        )
        .await?;
        // SECURITY: an alert about backups that no guard claims is told to the fallback
        // audience, never dropped: it more likely shows a gap in the guards than noise.
        let audience = if guards.is_empty() {
            Audience::Fallback
        } else {
            Audience::Guards(guards)
        };
        let notice = alert_notice(&alert, &names);
        self.notify_notice(&mut tx, &audience, &notice, &format!("azure:{key}"))
            .await?;
        tx.commit().await?;
        self.wake.notify_one();
        Ok(Intake::Accepted {
            guards: names,
            kind: alert.kind.as_str(),
        })
    }

    // ---- once a day ----------------------------------------------------------------------

    /// Queue today's once-a-day tasks, if not queued yet. Their dedupe keys name the local
    /// date, so across replicas (and restarts) each runs once a day; the coverage check's key
    /// also names the guards' policies, so a changed config is checked at start.
    pub async fn schedule_daily(&self) -> ServiceResult<()> {
        let now = self.now();
        let a = &self.config.alerts;
        let date = rules::local_date(now, a.time_zone);
        let fingerprint = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            for g in &self.config.guards {
                h.update(g.hash().as_bytes());
            }
            hex::encode(&h.finalize()[..8])
        };
        let mut keys = vec![(format!("daily:coverage:{date}:{fingerprint}"), "coverage")];
        if let Some(at) = a.digest_at
            && rules::local_minute(now, a.time_zone) >= at
        {
            keys.push((format!("daily:digest:{date}"), "digest"));
        }
        let mut done = self.daily_queued.lock().expect("lock").clone();
        keys.retain(|(k, _)| !done.contains(k));
        if keys.is_empty() {
            return Ok(());
        }
        let mut tx = self.store.begin().await?;
        for (k, task) in &keys {
            tx.insert_job(&self.new_job(
                JobKind::Daily,
                None,
                json!({ "task": task, "date": date }),
                k.clone(),
            ))
            .await?;
        }
        tx.commit().await?;
        done.extend(keys.into_iter().map(|(k, _)| k));
        done.retain(|k| k.contains(&date));
        *self.daily_queued.lock().expect("lock") = done;
        self.wake.notify_one();
        Ok(())
    }

    pub(crate) async fn run_daily(&self, job: &JobRow, owner: &str) -> Result<bool, JobFailure> {
        let p: Value = serde_json::from_str(&job.payload)
            .map_err(|e| JobFailure::Permanent(format!("bad payload: {e}")))?;
        let date = p["date"].as_str().unwrap_or_default().to_string();
        let mut tx = self.store.begin().await?;
        match p["task"].as_str() {
            Some("coverage") => {
                for g in &self.config.guards {
                    let Some(n) = self.eligible_approvers(g) else {
                        continue;
                    };
                    if (n as u32) < g.required_approvals {
                        self.raise_alert(
                            &mut tx,
                            "approver_coverage",
                            &Actor::system(),
                            None,
                            &Audience::Guards(vec![g]),
                            json!({ "guard": g.name, "eligible_approvers": n, "required_approvals": g.required_approvals }),
                            format!("guard {} has {n} approver(s) for {} required approvals", g.name, g.required_approvals),
                            format!(
                                "Guard {} needs {} approvals, but only {n} person(s) can approve. No request under it can be approved until approvers are added.",
                                g.name, g.required_approvals
                            ),
                            &format!("coverage:{}:{date}", g.name),
                        )
                        .await?;
                    }
                }
            }
            Some("digest") => self.queue_digest(&mut tx, &date).await?,
            other => {
                return Err(JobFailure::Permanent(format!(
                    "unknown daily task {other:?}"
                )));
            }
        }
        self.finish(tx, job, owner, self.now()).await
    }

    /// The daily digest: one mail per watcher with the open requests, active windows and
    /// alerts of the guards they watch, and the audit chain's head.
    async fn queue_digest(&self, tx: &mut Tx, date: &str) -> ServiceResult<()> {
        let now = self.now();
        let mut watchers: Vec<String> = self
            .config
            .guards
            .iter()
            .flat_map(|g| g.watchers.iter().map(|w| normalize_email(w)))
            .chain(
                self.config
                    .alerts
                    .fallback_watchers
                    .iter()
                    .flatten()
                    .map(|w| normalize_email(w)),
            )
            .collect();
        watchers.sort();
        watchers.dedup();
        let alerts = self
            .store
            .alerts_since(&timefmt::fmt(now - Duration::hours(24)), 500)
            .await?;
        let (seq, hash) = tx.audit_head();
        let checkpoint =
            self.config.audit.checkpoint_key.as_ref().map(|k| {
                serde_json::to_string(&k.sign(seq, &hash, &timefmt::fmt(now))).expect("json")
            });
        let fallback: Vec<String> = match &self.config.alerts.fallback_watchers {
            Some(l) => l.iter().map(|w| normalize_email(w)).collect(),
            None => watchers.clone(),
        };
        for w in watchers {
            let gs: Vec<String> = self
                .config
                .guards
                .iter()
                .filter(|g| g.watchers.iter().any(|x| normalize_email(x) == w))
                .map(|g| g.name.clone())
                .collect();
            let list = |state: &str| RequestFilter {
                state: Some(state.into()),
                requester_id: None,
                guards: Some(gs.clone()),
                limit: 50,
            };
            let pending = self.store.list_requests(&list("pending")).await?;
            let active = self.store.list_requests(&list("active")).await?;
            let mine: Vec<&AlertReceivedRow> = alerts
                .iter()
                .filter(|a| {
                    let routed: Vec<String> = serde_json::from_str(&a.guards).unwrap_or_default();
                    routed.iter().any(|g| gs.contains(g))
                        || (routed.is_empty() && fallback.contains(&w))
                })
                .collect();
            let line = |r: &RequestRow| {
                let op = crate::domain::operations::find(&r.operation)
                    .map(|o| o.title)
                    .unwrap_or(&r.operation);
                let vault = r.vault_id.rsplit('/').next().unwrap_or(&r.vault_id);
                format!("{op} on {vault} by {} ({})", r.requester_email, r.guard)
            };
            let mut facts: Vec<(String, String)> = vec![
                ("Guards".into(), gs.join(", ")),
                ("Open requests".into(), pending.len().to_string()),
            ];
            facts.extend(pending.iter().map(|r| {
                (
                    "  pending".into(),
                    format!("{} — decide before {}", line(r), short_time(&r.deadline)),
                )
            }));
            facts.push(("Active windows".into(), active.len().to_string()));
            facts.extend(active.iter().map(|r| {
                (
                    "  active".into(),
                    format!(
                        "{} — until {}",
                        line(r),
                        short_time(r.active_until.as_deref().unwrap_or("?"))
                    ),
                )
            }));
            facts.push(("Alerts (24 h)".into(), mine.len().to_string()));
            facts.extend(mine.iter().take(50).map(|a| {
                (
                    format!("  {}", a.kind),
                    format!("{} ({})", a.summary, short_time(&a.received_at)),
                )
            }));
            facts.push(("Audit chain head".into(), format!("seq {seq}, hash {hash}")));
            if let Some(c) = &checkpoint {
                facts.push(("Signed checkpoint".into(), c.clone()));
            }
            let notice = AlertNotice {
                event: "digest".into(),
                subject: format!(
                    "[twokey] daily digest {date}: {} open, {} active, {} alert(s)",
                    pending.len(),
                    active.len(),
                    mine.len()
                ),
                headline: format!("twokey digest for {date}"),
                intro: "What is open, what is active and what Azure reported in the last 24 hours, for the guards you watch.".into(),
                warning: None,
                facts,
                link: Some(format!("{}/requests", self.public_base())),
                link_text: "Open twokey".into(),
                guard: gs.join(", "),
                request_id: None,
            };
            let payload = serde_json::to_value(MailPayload {
                kind: MailKind::Alert,
                request_id: String::new(),
                to: w.clone(),
                extra: serde_json::to_value(&notice)
                    .map_err(|e| super::ServiceError::Internal(e.to_string()))?,
            })
            .map_err(|e| super::ServiceError::Internal(e.to_string()))?;
            tx.insert_job(&self.new_job(
                JobKind::Mail,
                None,
                payload,
                format!("mail:digest:{date}:{w}"),
            ))
            .await?;
        }
        Ok(())
    }
}

/// The words of an Azure Monitor alert, for mail and webhooks.
fn alert_notice(a: &AzureAlert, guards: &[String]) -> AlertNotice {
    let mut facts: Vec<(String, String)> = vec![("What".into(), a.summary.clone())];
    if let Some(v) = &a.vault {
        facts.push((
            "Vault".into(),
            format!("{} ({})", v.name(), v.kind().label()),
        ));
        facts.push(("Resource group".into(), v.resource_group().to_string()));
        facts.push(("Subscription".into(), v.subscription().to_string()));
    } else if let Some(t) = a.targets.first() {
        facts.push(("Resource".into(), t.clone()));
    }
    if let Some(i) = &a.item {
        facts.push(("Item".into(), i.clone()));
    }
    facts.push((
        "When".into(),
        if a.fired_at.is_empty() {
            "(not given)".into()
        } else {
            short_time(&a.fired_at)
        },
    ));
    if let Some(c) = &a.caller {
        facts.push(("Who".into(), c.clone()));
    }
    if let Some(o) = &a.operation {
        facts.push(("Operation".into(), o.clone()));
    }
    if let Some(s) = &a.status {
        facts.push(("Status".into(), s.clone()));
    }
    facts.push(("Severity".into(), a.severity.clone()));
    facts.push(("Alert rule".into(), a.rule.clone()));
    facts.push(("Condition".into(), a.monitor_condition.clone()));
    facts.push((
        "Guards".into(),
        if guards.is_empty() {
            "none covers this resource".into()
        } else {
            guards.join(", ")
        },
    ));
    let resolved = a.monitor_condition.eq_ignore_ascii_case("resolved");
    let intro = match a.kind {
        AlertKind::BackupFailure => "A backup failed. Backups that fail are backups you do not have: find out why before anything else is changed on this vault.".to_string(),
        AlertKind::Activity => "Azure recorded a change to the protection of your backups.".to_string(),
        AlertKind::BackupSecurity => "Azure Backup raised a security alert.".to_string(),
        AlertKind::Other => "Azure Monitor raised an alert.".to_string(),
    };
    let intro = if a.description.is_empty() {
        intro
    } else {
        format!("{intro} Azure says: {}", a.description)
    };
    let warning = match a.kind {
        AlertKind::Activity | AlertKind::BackupSecurity if !resolved => Some(
            "If nobody here expected this, treat it as an attack on your backups and act now."
                .into(),
        ),
        _ => None,
    };
    AlertNotice {
        event: "alert.received".into(),
        subject: format!("[twokey] Azure alert: {}", a.summary),
        headline: a.summary.clone(),
        intro,
        warning,
        facts,
        link: a.portal_link.clone(),
        link_text: "Open in the Azure portal".into(),
        guard: if guards.is_empty() {
            "no guard".into()
        } else {
            guards.join(", ")
        },
        request_id: None,
    }
}
