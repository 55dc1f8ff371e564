//! The posture report as a use case: read every guard (Azure, or the simulated posture),
//! evaluate it, and for each guard compare it with the last report in one transaction that
//! stores the new report and, when findings changed, writes one `posture.changed` audit event
//! and queues one mail per watcher of the guard. A run with no change writes neither.
//!
//! The daily run is a job with a per-day key (`posture:YYYY-MM-DD`), queued by every worker's
//! sweep and inserted only once, so exactly one replica runs it each day.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use time::OffsetDateTime;

use super::jobs_impl::{JobFailure, JobKind, MailKind, MailPayload};
use super::{Service, ServiceError, ServiceResult, new_id};
use crate::audit::{self, Action, Actor};
use crate::azure::posture as az;
use crate::domain::policy::{GuardPolicy, Subject};
use crate::domain::posture::{
    self, Change, Context, Finding, GuardReport, PostureReport, PrincipalRef,
};
use crate::domain::principal::normalize_email;
use crate::store::{JobRow, NewJob, PostureRow};
use crate::timefmt;

/// What one run found and changed.
#[derive(Debug, Clone)]
pub struct PostureRun {
    pub report: PostureReport,
    /// Guards whose findings changed, with the change (first runs included).
    pub changed: Vec<(String, Change)>,
}

fn brief(f: &Finding) -> serde_json::Value {
    json!({
        "id": f.id,
        "severity": f.severity.as_str(),
        "category": f.category,
        "title": f.title,
        "vault": f.vault,
        "principal_id": f.principal.as_ref().map(|p| p.id.clone()),
        "fix": f.fix,
    })
}

impl Service {
    /// Read, evaluate, compare and record every guard's posture now. `trigger` says why
    /// (`daily`, `cli`, `page`) in the audit event.
    pub async fn run_posture(&self, trigger: &str) -> ServiceResult<PostureRun> {
        let now = self.now();
        let at = timefmt::fmt(now);
        let mut collected = Vec::new();
        for g in &self.config.guards {
            let c = if g.elevation.needs_object_id() {
                az::collect(&self.elevation, g).await
            } else {
                az::simulated(g)
            };
            collected.push((g, c));
        }
        let (names, names_note) = self.resolve_names(&collected).await;
        let names_resolved = names_note.is_none();
        let mut guards = Vec::new();
        let mut changed = Vec::new();
        for (g, c) in &collected {
            let ctx = self.posture_context(g, c, &names).await?;
            let mut report = posture::evaluate(
                &g.name,
                &g.resource_guard_id,
                g.elevation.as_str(),
                &g.role_definition_id,
                &at,
                &c.facts,
                &ctx,
            );
            let change = self
                .record_posture(
                    g,
                    &mut report,
                    names_resolved,
                    names_note.as_deref(),
                    trigger,
                    now,
                )
                .await?;
            if let Some(ch) = change {
                changed.push((g.name.clone(), ch));
            }
            guards.push(report);
        }
        Ok(PostureRun {
            report: PostureReport {
                generated_at: at,
                names_resolved,
                names_note,
                guards,
            },
            changed,
        })
    }

    /// Names for every principal seen, per tenant; any failure (a 403 without
    /// `Directory.Read.All`, an outage) leaves ids alone and says why.
    async fn resolve_names(
        &self,
        collected: &[(&GuardPolicy, az::Collected)],
    ) -> (BTreeMap<String, PrincipalRef>, Option<String>) {
        let Some(cfg) = &self.config.azure else {
            return (
                BTreeMap::new(),
                Some("no Azure configured (simulated guards): ids only".into()),
            );
        };
        if !cfg.resolve_names {
            return (
                BTreeMap::new(),
                Some("azure.resolve_names = false: ids only".into()),
            );
        }
        // By tenant: the guard's side in the guard's tenant, the vaults in the home tenant.
        let mut by_tenant: BTreeMap<String, (crate::config::CredentialConfig, BTreeSet<String>)> =
            BTreeMap::new();
        for (g, c) in collected {
            if !g.elevation.needs_object_id() {
                continue;
            }
            let gc = cfg.credential_for(&g.name);
            by_tenant
                .entry(gc.tenant_id.to_ascii_lowercase())
                .or_insert_with(|| (gc.clone(), BTreeSet::new()))
                .1
                .extend(c.guard_principals.iter().cloned());
            by_tenant
                .entry(cfg.home.tenant_id.to_ascii_lowercase())
                .or_insert_with(|| (cfg.home.clone(), BTreeSet::new()))
                .1
                .extend(c.vault_principals.iter().cloned());
        }
        let mut names = BTreeMap::new();
        let mut problems = Vec::new();
        for (tenant, (cred, ids)) in by_tenant {
            if ids.is_empty() {
                continue;
            }
            let r = match az::Graph::new(cfg, &cred) {
                Ok(graph) => graph.names(&ids).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(n) => names.extend(n),
                Err(e) => {
                    tracing::info!(tenant, error = %e, "posture: names not resolved");
                    problems.push(format!("tenant {tenant}: {e}"));
                }
            }
        }
        if problems.is_empty() {
            (names, None)
        } else {
            (
                names,
                Some(format!(
                    "Names could not be read from Microsoft Graph ({}); principals are shown by object id. Give the broker the Directory.Read.All application permission to see names.",
                    problems.join("; ")
                )),
            )
        }
    }

    async fn posture_context(
        &self,
        g: &GuardPolicy,
        c: &az::Collected,
        names: &BTreeMap<String, PrincipalRef>,
    ) -> ServiceResult<Context> {
        let lower = |v: Vec<String>| -> BTreeSet<String> {
            v.into_iter().map(|s| s.to_ascii_lowercase()).collect()
        };
        let mut requester_ids = lower(self.store.requester_object_ids(&g.name).await?);
        let mut requester_groups = BTreeSet::new();
        let mut requester_emails = BTreeSet::new();
        for s in g.requesters.iter().flatten() {
            match s {
                Subject::Oid(o) => {
                    requester_ids.insert(o.to_ascii_lowercase());
                }
                Subject::Group(gr) => {
                    requester_groups.insert(gr.to_ascii_lowercase());
                }
                Subject::User(e) => {
                    requester_emails.insert(e.clone());
                }
            }
        }
        // A `user:` requester entry matches the directory's sign-in name, where names are known.
        for (id, p) in names {
            if p.upn
                .as_deref()
                .is_some_and(|u| requester_emails.contains(&normalize_email(u)))
            {
                requester_ids.insert(id.clone());
            }
        }
        let open_windows = lower(
            self.store
                .active_grant_principals(&g.resource_guard_id.to_string())
                .await?,
        );
        Ok(Context {
            broker_ids: c.broker_ids.clone(),
            requester_ids,
            requester_groups,
            open_windows,
            guard_in_other_tenant: self.elevation.cross_tenant(&g.name),
            names: names.clone(),
        })
    }

    /// Store the guard's report; when findings changed, audit it and mail the watchers, all in
    /// one transaction. Returns the change, if any.
    async fn record_posture(
        &self,
        g: &GuardPolicy,
        report: &mut GuardReport,
        names_resolved: bool,
        names_note: Option<&str>,
        trigger: &str,
        now: OffsetDateTime,
    ) -> ServiceResult<Option<Change>> {
        let mut tx = self.store.begin().await?;
        // Read inside the writers' lock: two runs at once compare in order, never both with
        // the same old report.
        let previous: Option<GuardReport> = tx
            .get_posture(&g.name)
            .await?
            .and_then(|r| serde_json::from_str(&r.report).ok());
        posture::carry_over(report, previous.as_ref());
        let old: &[Finding] = previous
            .as_ref()
            .map(|p| p.findings.as_slice())
            .unwrap_or(&[]);
        let change = posture::diff(old, &report.findings);
        let text =
            serde_json::to_string(&report).map_err(|e| ServiceError::Internal(e.to_string()))?;
        tx.put_posture(&PostureRow {
            guard: g.name.clone(),
            run_at: timefmt::fmt(now),
            report: text,
            names_resolved: i64::from(names_resolved),
            names_note: names_note.map(str::to_string),
        })
        .await?;
        if change.is_empty() {
            tx.commit().await?;
            return Ok(None);
        }
        let red_added = change
            .added
            .iter()
            .chain(change.changed.iter().map(|(_, n)| n))
            .filter(|f| f.severity.is_red())
            .count();
        audit::record(
            &mut tx,
            now,
            Action::PostureChanged,
            &Actor::system(),
            None,
            json!({
                "guard": g.name,
                "resource_guard_id": g.resource_guard_id.to_string(),
                "trigger": trigger,
                "first_run": previous.is_none(),
                "added": change.added.iter().map(brief).collect::<Vec<_>>(),
                "removed": change.removed.iter().map(brief).collect::<Vec<_>>(),
                "changed": change.changed.iter().map(|(o, n)| json!({
                    "id": n.id, "from": o.severity.as_str(), "to": n.severity.as_str(), "title": n.title,
                })).collect::<Vec<_>>(),
                "red_added": red_added as i64,
                "findings": report.findings.len() as i64,
            }),
        )
        .await?;
        let run = new_id();
        let extra = json!({
            "guard": g.name,
            "resource_guard_id": g.resource_guard_id.to_string(),
            "first_run": previous.is_none(),
            "added": change.added.iter().map(brief).collect::<Vec<_>>(),
            "removed": change.removed.iter().map(brief).collect::<Vec<_>>(),
            "changed": change.changed.iter().map(|(o, n)| json!({
                "from": o.severity.as_str(), "to": n.severity.as_str(), "title": n.title,
            })).collect::<Vec<_>>(),
            "red_added": red_added as i64,
        });
        for w in &g.watchers {
            let payload = serde_json::to_value(MailPayload {
                kind: MailKind::Posture,
                request_id: String::new(),
                to: w.clone(),
                extra: extra.clone(),
            })
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
            tx.insert_job(&NewJob {
                job_id: new_id(),
                kind: JobKind::Mail.as_str().into(),
                request_id: None,
                payload: payload.to_string(),
                dedupe_key: Some(format!("mail:posture:{run}:{}", w.to_lowercase())),
                max_attempts: JobKind::Mail.max_attempts(),
                run_at: timefmt::fmt(now),
                created_at: timefmt::fmt(now),
            })
            .await?;
        }
        // The guard's webhooks that take `posture.changed` hear of it too.
        let mut facts: Vec<(String, String)> = Vec::new();
        facts.extend(change.added.iter().map(|f| {
            (
                format!("new ({})", f.severity.as_str()),
                format!("{} — fix: {}", f.title, f.fix),
            )
        }));
        facts.extend(
            change
                .removed
                .iter()
                .map(|f| ("gone".to_string(), f.title.clone())),
        );
        facts.extend(change.changed.iter().map(|(o, n)| {
            (
                format!("{} → {}", o.severity.as_str(), n.severity.as_str()),
                n.title.clone(),
            )
        }));
        let event = crate::notify::webhook::WebhookEvent {
            event: "posture.changed".into(),
            at: timefmt::fmt(now),
            guards: vec![g.name.clone()],
            request_id: None,
            subject: format!(
                "[twokey] posture of {} changed: {} new, {} gone, {} red",
                g.name,
                change.added.len(),
                change.removed.len(),
                red_added
            ),
            headline: format!("The posture of guard {} changed", g.name),
            text: "Who can go around multi-user authorization, or how a vault is protected, is not what it was at the last report.".into(),
            warning: (red_added > 0).then(|| {
                format!("{red_added} new red finding(s): MUA can be bypassed until they are fixed.")
            }),
            facts,
            link: Some(format!("{}/posture", self.public_base())),
        };
        self.queue_webhooks(
            &mut tx,
            Some(&[g.name.as_str()]),
            &event,
            &format!("posture:{run}"),
        )
        .await?;
        tx.commit().await?;
        self.wake.notify_one();
        Ok(Some(change))
    }

    /// Queue today's run (once per day across replicas: the job's key is the date).
    pub async fn schedule_daily_posture(&self) -> ServiceResult<bool> {
        if !self.config.posture.enabled {
            return Ok(false);
        }
        let now = self.now();
        let day = now.date();
        let mins = self.config.posture.daily_at_minutes;
        let at = day
            .with_hms((mins / 60) as u8, (mins % 60) as u8, 0)
            .map_err(|e| ServiceError::Internal(e.to_string()))?
            .assume_utc();
        self.queue_posture(&format!("posture:{day}"), "daily", at)
            .await
    }

    /// Queue a run now (the page's button); `key` keeps double clicks to one run.
    pub async fn request_posture_run(&self) -> ServiceResult<bool> {
        let now = self.now();
        let key = format!("posture:page:{}", now.unix_timestamp() / 10);
        self.queue_posture(&key, "page", now).await
    }

    async fn queue_posture(
        &self,
        key: &str,
        trigger: &str,
        run_at: OffsetDateTime,
    ) -> ServiceResult<bool> {
        let mut tx = self.store.begin().await?;
        let inserted = tx
            .insert_job(&NewJob {
                job_id: new_id(),
                kind: JobKind::Posture.as_str().into(),
                request_id: None,
                payload: json!({ "trigger": trigger }).to_string(),
                dedupe_key: Some(key.to_string()),
                max_attempts: JobKind::Posture.max_attempts(),
                run_at: timefmt::fmt(run_at),
                created_at: timefmt::fmt(self.now()),
            })
            .await?;
        tx.commit().await?;
        if inserted {
            self.wake.notify_one();
        }
        Ok(inserted)
    }

    pub(super) async fn run_posture_job(
        &self,
        job: &JobRow,
        owner: &str,
    ) -> Result<bool, JobFailure> {
        let trigger = serde_json::from_str::<serde_json::Value>(&job.payload)
            .ok()
            .and_then(|v| v["trigger"].as_str().map(str::to_string))
            .unwrap_or_else(|| "daily".into());
        let run = self.run_posture(&trigger).await?;
        if !run.changed.is_empty() {
            tracing::warn!(guards = run.changed.len(), "posture changed");
        }
        let tx = self.store.begin().await?;
        self.finish(tx, job, owner, self.now()).await
    }

    /// The stored reports of every configured guard, as one report (for the page).
    pub async fn last_posture(&self) -> ServiceResult<Option<PostureReport>> {
        let rows = self.store.posture_reports().await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut guards = Vec::new();
        let mut newest = String::new();
        let mut resolved = true;
        let mut note = None;
        for g in &self.config.guards {
            let Some(r) = rows.iter().find(|r| r.guard == g.name) else {
                continue;
            };
            if let Ok(rep) = serde_json::from_str::<GuardReport>(&r.report) {
                guards.push(rep);
            }
            if r.run_at > newest {
                newest = r.run_at.clone();
                resolved = r.names_resolved != 0;
                note = r.names_note.clone();
            }
        }
        Ok(Some(PostureReport {
            generated_at: newest,
            names_resolved: resolved,
            names_note: note,
            guards,
        }))
    }
}

/// The report as text for a terminal (`twokey posture`); `--json` prints the same model.
pub fn render_text(r: &PostureReport) -> String {
    let mut out = format!(
        "twokey posture report, {}\nnames: {}\n",
        r.generated_at,
        match &r.names_note {
            None => "resolved through Microsoft Graph".to_string(),
            Some(n) => format!("object ids only. {n}"),
        }
    );
    for g in &r.guards {
        out.push_str(&format!(
            "\nGUARD {} ({})\n  {}\n",
            g.guard, g.elevation, g.resource_guard_id
        ));
        if !g.vaults.is_empty() {
            let w = g
                .vaults
                .iter()
                .map(|v| v.name.len())
                .max()
                .unwrap_or(5)
                .max(5);
            out.push_str(&format!(
                "  {:w$}  {:23}  {:23}  {:11}  {:16}  {}\n",
                "VAULT", "KIND", "MUA LINK", "SOFT DELETE", "IMMUTABILITY", "GUARD IS IN"
            ));
            for v in &g.vaults {
                out.push_str(&format!(
                    "  {:w$}  {:23}  {:23}  {:11}  {:16}  {}\n",
                    v.name, v.kind, v.link, v.soft_delete, v.immutability, v.guard_placement
                ));
            }
        }
        out.push_str(&format!(
            "  operations the guard does not protect: {}\n",
            if g.excluded_operations.is_empty() {
                "none".to_string()
            } else {
                g.excluded_operations.join("; ")
            }
        ));
        for n in &g.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        if g.findings.is_empty() {
            out.push_str("  no findings\n");
        }
        for f in &g.findings {
            out.push_str(&format!(
                "  {:8}  {}{}\n            {}\n            fix: {}\n",
                f.severity.as_str().to_uppercase(),
                f.title,
                if f.stale {
                    " [stale: from the last successful read]"
                } else {
                    ""
                },
                f.detail,
                f.fix
            ));
        }
    }
    let red = r.red_count();
    out.push_str(&format!(
        "\n{} finding(s), {red} red (critical or high)\n",
        r.guards.iter().map(|g| g.findings.len()).sum::<usize>()
    ));
    out
}
