//! Alerts, pure: reading Azure Monitor's common alert schema into the facts twokey acts on,
//! finding the vault (or Resource Guard) an alert is about, naming what happened in plain
//! words, business hours, the event names watchers and webhooks subscribe to, and approver
//! coverage. No I/O; `now` comes in as an argument.

use chrono::{Datelike, Timelike};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::arm::VaultId;
use super::policy::{GuardPolicy, Subject};
use super::principal::Principal;

// ---- event names -----------------------------------------------------------------------------

/// The event names a webhook's `events` list may name. A name before `:` matches every event
/// with that prefix (`token_rejected` matches `token_rejected:expired`, `alert.raised` every rule).
pub const EVENT_FILTERS: &[&str] = &[
    "*",
    "created",
    "approval",
    "approved",
    "denied",
    "cancelled",
    "expired",
    "active",
    "ended",
    "failed",
    "outlived_window",
    "failed_grant_left_assignment",
    "token_rejected",
    "alert.received",
    "alert.raised",
    "posture.changed",
];

/// The suspicious-activity rules (`alert.raised` events carry one as `details.rule`).
pub const RULES: &[&str] = &[
    "self_approval",
    "token_rejection_burst",
    "outside_business_hours",
    "too_many_requests",
    "destructive_after_backup_failure",
    "approver_coverage",
];

/// Whether `f` is a valid entry of a webhook's `events` list.
pub fn is_known_event_filter(f: &str) -> bool {
    if EVENT_FILTERS.contains(&f) {
        return true;
    }
    match f.split_once(':') {
        Some(("alert.raised", rule)) => RULES.contains(&rule),
        Some(("token_rejected", reason)) => !reason.is_empty(),
        _ => false,
    }
}

/// Whether the event `event` (e.g. `alert.raised:self_approval`) passes the filter list.
pub fn event_selected(filters: &[String], event: &str) -> bool {
    let base = event.split(':').next().unwrap_or(event);
    filters
        .iter()
        .any(|f| f == "*" || f == event || (!f.contains(':') && f == base))
}

// ---- business hours and days ---------------------------------------------------------------

/// Weekday name → index (Monday = 0).
pub fn weekday_index(s: &str) -> Option<usize> {
    ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .position(|d| s.eq_ignore_ascii_case(d))
}

/// Hours in which requests are expected. Outside them a request raises an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusinessHours {
    /// Monday = 0 … Sunday = 6.
    pub days: [bool; 7],
    /// Minutes after local midnight; `start` inclusive, `end` exclusive.
    pub start_minute: u32,
    pub end_minute: u32,
    pub time_zone: chrono_tz::Tz,
}

fn local(now: OffsetDateTime, tz: chrono_tz::Tz) -> chrono::DateTime<chrono_tz::Tz> {
    chrono::DateTime::from_timestamp(now.unix_timestamp(), now.nanosecond())
        .unwrap_or_default()
        .with_timezone(&tz)
}

impl BusinessHours {
    /// Whether `now` falls inside business hours (in the configured zone, so summer time moves
    /// with it).
    pub fn contains(&self, now: OffsetDateTime) -> bool {
        let t = local(now, self.time_zone);
        let day = t.weekday().num_days_from_monday() as usize;
        let minute = t.hour() * 60 + t.minute();
        self.days[day] && minute >= self.start_minute && minute < self.end_minute
    }
}

/// The local calendar date of `now` in `tz` (`2026-12-03`), for once-a-day keys.
pub fn local_date(now: OffsetDateTime, tz: chrono_tz::Tz) -> String {
    local(now, tz).date_naive().format("%Y-%m-%d").to_string()
}

/// Minutes after local midnight of `now` in `tz`.
pub fn local_minute(now: OffsetDateTime, tz: chrono_tz::Tz) -> u32 {
    let t = local(now, tz);
    t.hour() * 60 + t.minute()
}

// ---- approver coverage ---------------------------------------------------------------------

/// How many distinct people can approve for `g`, when that can be known: every approver entry
/// names one person (`user:`, `oid:`), or a group whose members are all known (`known`: the dev
/// sign-in's people). `None` when a group's membership lives only in the identity provider.
pub fn eligible_approvers(g: &GuardPolicy, known: Option<&[Principal]>) -> Option<usize> {
    let mut people: Vec<String> = Vec::new();
    for a in &g.approvers {
        match (a, known) {
            (Subject::User(e), _) => people.push(super::principal::normalize_email(e)),
            (Subject::Group(_) | Subject::Oid(_), Some(list)) => {
                for p in list.iter().filter(|p| a.matches(p)) {
                    people.push(p.email_normalized());
                }
            }
            (Subject::Oid(o), None) => people.push(format!("oid:{}", o.to_ascii_lowercase())),
            (Subject::Group(_), None) => return None,
        }
    }
    people.sort();
    people.dedup();
    Some(people.len())
}

// ---- Azure Monitor: the common alert schema --------------------------------------------------

/// What an alert is about, for routing and for the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A backup job failed (Azure Backup's "Backup Failure", a failed-jobs log query, an
    /// unhealthy or degraded backup health metric).
    BackupFailure,
    /// Azure Backup's own security alerts (soft delete disabled, MUA disabled, delete backup data…).
    BackupSecurity,
    /// An Activity Log event (vault deleted, protection stopped, guard changed…).
    Activity,
    Other,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BackupFailure => "backup_failure",
            Self::BackupSecurity => "backup_security",
            Self::Activity => "activity",
            Self::Other => "other",
        }
    }
}

/// Why a body is not an alert twokey can take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct AlertError {
    pub field: &'static str,
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> AlertError {
    AlertError {
        field,
        message: message.into(),
    }
}

/// An alert, read. Every string is bounded (the body came from the network).
#[derive(Debug, Clone, Serialize)]
pub struct AzureAlert {
    pub alert_id: String,
    pub rule: String,
    pub severity: String,
    pub signal_type: String,
    pub monitor_condition: String,
    pub monitoring_service: String,
    pub fired_at: String,
    pub resolved_at: Option<String>,
    pub description: String,
    pub targets: Vec<String>,
    pub portal_link: Option<String>,
    pub operation: Option<String>,
    pub caller: Option<String>,
    pub status: Option<String>,
    /// The backed-up item (a VM, a database) for backup alerts.
    pub item: Option<String>,
    pub kind: AlertKind,
    /// One line: what happened, in plain words.
    pub summary: String,
    /// The vault it is about, when one of its resource ids names one.
    #[serde(skip)]
    pub vault: Option<VaultId>,
    /// Every resource id it names (targets, the activity's scope, the protected item), lower case.
    pub resource_ids: Vec<String>,
}

const MAX_FIELD: usize = 2048;

fn text(v: &Value, max: usize) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(
            s.chars()
                .filter(|c| !c.is_control() || *c == '\n')
                .take(max)
                .collect(),
        ),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for p in path {
        cur = cur.get(p).unwrap_or(&Value::Null);
    }
    cur
}

/// The vault an ARM id is, or lies under (a backup item, a protection container, a job).
pub fn vault_of(resource_id: &str) -> Option<VaultId> {
    let segs: Vec<&str> = resource_id.trim_matches('/').split('/').collect();
    if segs.len() < 8 {
        return None;
    }
    let prefix = format!("/{}", segs[..8].join("/"));
    VaultId::parse(&prefix).ok()
}

/// The stable key that makes an alert count once: its id (case-insensitive, as ARM ids are)
/// and its monitor condition (a "Resolved" is news after a "Fired").
pub fn dedupe_key(alert_id: &str, condition: &str) -> String {
    let mut h = Sha256::new();
    h.update(alert_id.to_ascii_lowercase().as_bytes());
    h.update(b"\n");
    h.update(condition.to_ascii_lowercase().as_bytes());
    hex::encode(h.finalize())
}

/// What an Activity Log operation does, in plain words (`None`: not one twokey names).
pub fn describe_operation(op: &str) -> Option<&'static str> {
    let o = op.to_ascii_lowercase();
    let table: &[(&str, &str)] = &[
        (
            "microsoft.recoveryservices/vaults/delete",
            "Recovery Services vault deleted",
        ),
        (
            "microsoft.dataprotection/backupvaults/delete",
            "Backup vault deleted",
        ),
        (
            "microsoft.dataprotection/resourceguards/delete",
            "Resource Guard deleted",
        ),
        (
            "microsoft.dataprotection/resourceguards/write",
            "Resource Guard changed (its protected operations may have changed)",
        ),
        (
            "backupresourceguardproxies/delete",
            "Multi-user authorization removed from the vault",
        ),
        (
            "backupresourceguardproxies/write",
            "Vault linked to a Resource Guard (multi-user authorization changed)",
        ),
        (
            "backupresourceguardproxies/unlockdelete/action",
            "Multi-user authorization unlocked for removal",
        ),
        (
            "protecteditems/delete",
            "Backup item deleted: protection stopped and backup data deleted",
        ),
        (
            "backupinstances/delete",
            "Backup instance deleted: protection stopped and backup data deleted",
        ),
        (
            "backupinstances/stopprotection/action",
            "Protection stopped for a backup instance",
        ),
        (
            "protecteditems/write",
            "Protection of a backup item changed (this includes stop protection)",
        ),
        (
            "microsoft.recoveryservices/vaults/backupconfig/write",
            "Vault security settings changed (soft delete, security features)",
        ),
        (
            "microsoft.recoveryservices/vaults/write",
            "Vault properties changed (soft delete, immutability or multi-user authorization may have changed)",
        ),
        (
            "microsoft.dataprotection/backupvaults/write",
            "Backup vault properties changed (soft delete, immutability may have changed)",
        ),
        (
            "backuppolicies/write",
            "Backup policy changed (retention may be shorter)",
        ),
        ("backuppolicies/delete", "Backup policy deleted"),
    ];
    table
        .iter()
        .find(|(k, _)| {
            if k.starts_with("microsoft.") {
                o == *k
            } else {
                o.ends_with(k)
            }
        })
        .map(|(_, v)| *v)
}

/// Read a common-alert-schema body. Refuses anything else (twokey needs the common schema:
/// enable it on the action group's webhook action).
pub fn parse_common_alert(v: &Value) -> Result<AzureAlert, AlertError> {
    match v.get("schemaId").and_then(Value::as_str) {
        Some(s) if s.eq_ignore_ascii_case("azureMonitorCommonAlertSchema") => {}
        Some(_) => {
            return Err(err(
                "schemaId",
                "only azureMonitorCommonAlertSchema is understood: turn on the common alert schema for this webhook action",
            ));
        }
        None => return Err(err("schemaId", "missing")),
    }
    let e = get(v, &["data", "essentials"]);
    if !e.is_object() {
        return Err(err("data.essentials", "missing"));
    }
    let ctx = get(v, &["data", "alertContext"]);
    let alert_id =
        text(&e["alertId"], 512).ok_or_else(|| err("data.essentials.alertId", "missing"))?;
    let monitor_condition = text(&e["monitorCondition"], 32)
        .ok_or_else(|| err("data.essentials.monitorCondition", "missing"))?;
    if !["fired", "resolved"].contains(&monitor_condition.to_ascii_lowercase().as_str()) {
        return Err(err(
            "data.essentials.monitorCondition",
            "must be Fired or Resolved",
        ));
    }
    let targets: Vec<String> = e["alertTargetIDs"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| text(t, 1024)).take(50).collect())
        .unwrap_or_default();
    let config_items: Vec<String> = e["configurationItems"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| text(t, 1024)).take(50).collect())
        .unwrap_or_default();
    let signal_type = text(&e["signalType"], 64).unwrap_or_default();
    let monitoring_service = text(&e["monitoringService"], 128).unwrap_or_default();
    let rule = text(&e["alertRule"], 256).unwrap_or_else(|| "(unnamed rule)".into());
    let operation = text(&ctx["operationName"], 256)
        .or_else(|| text(get(ctx, &["authorization", "action"]), 256));
    let caller = text(&ctx["caller"], 256);
    let status = text(&ctx["status"], 64);
    let scope = text(get(ctx, &["authorization", "scope"]), 1024);
    let protected = text(&ctx["protectedItemId"], 1024);
    let source = text(&ctx["sourceId"], 1024);
    let item = text(&ctx["linkedResourceName"], 256)
        .or_else(|| {
            source
                .as_deref()
                .and_then(|s| s.rsplit('/').next())
                .map(str::to_string)
        })
        .or_else(|| dimension(ctx, "backupInstanceName"));
    let mut resource_ids: Vec<String> = targets
        .iter()
        .chain(config_items.iter().filter(|c| c.starts_with('/')))
        .chain(scope.iter())
        .chain(protected.iter())
        .map(|s| s.to_ascii_lowercase())
        .collect();
    resource_ids.sort();
    resource_ids.dedup();
    let vault = resource_ids.iter().find_map(|r| vault_of(r));

    let service = monitoring_service.to_ascii_lowercase();
    let rule_l = rule.to_ascii_lowercase();
    let category = text(&ctx["category"], 64)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let custom_kind = text(get(v, &["data", "customProperties", "twokey_kind"]), 64);
    let health = dimension(ctx, "healthStatus")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .replace(' ', "");
    let kind = if let Some(k) = custom_kind.as_deref() {
        match k {
            "backup_failure" => AlertKind::BackupFailure,
            "backup_security" => AlertKind::BackupSecurity,
            "activity" => AlertKind::Activity,
            _ => AlertKind::Other,
        }
    } else if signal_type.eq_ignore_ascii_case("Activity Log") {
        AlertKind::Activity
    } else if service == "azure backup" && category == "security" {
        AlertKind::BackupSecurity
    } else if (service == "azure backup" && (category == "jobs" || rule_l.contains("fail")))
        || (rule_l.contains("backup") && rule_l.contains("fail"))
        || health.contains("unhealthy")
        || health.contains("degraded")
    {
        AlertKind::BackupFailure
    } else {
        AlertKind::Other
    };
    let what = match kind {
        AlertKind::Activity => operation
            .as_deref()
            .map(|o| {
                describe_operation(o)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("Activity: {o}"))
            })
            .unwrap_or_else(|| rule.clone()),
        AlertKind::BackupFailure if !rule_l.contains("fail") => format!("Backup failure ({rule})"),
        _ => rule.clone(),
    };
    let mut summary = match (&vault, &item) {
        (Some(v), Some(i)) if kind == AlertKind::BackupFailure => {
            format!("{what}: {i} in vault {}", v.name())
        }
        (Some(v), _) => format!("{what}: vault {}", v.name()),
        (None, _) => match config_items.first() {
            Some(c) => format!("{what}: {}", c.rsplit('/').next().unwrap_or(c)),
            None => what,
        },
    };
    if let Some(s) = &status
        && kind == AlertKind::Activity
    {
        summary.push_str(&format!(" ({s})"));
    }
    if monitor_condition.eq_ignore_ascii_case("resolved") {
        summary = format!("Resolved: {summary}");
    }
    let portal_link = text(&e["investigationLink"], MAX_FIELD)
        .filter(|l| l.starts_with("https://portal.azure.com/"))
        .or_else(|| {
            vault
                .as_ref()
                .map(|v| format!("https://portal.azure.com/#resource{v}/overview"))
        });
    Ok(AzureAlert {
        alert_id,
        rule,
        severity: text(&e["severity"], 16).unwrap_or_default(),
        signal_type,
        monitor_condition,
        monitoring_service,
        fired_at: text(&e["firedDateTime"], 64).unwrap_or_default(),
        resolved_at: text(&e["resolvedDateTime"], 64),
        description: text(&e["description"], MAX_FIELD).unwrap_or_default(),
        targets,
        portal_link,
        operation,
        caller,
        status,
        item,
        kind,
        summary: summary.chars().take(300).collect(),
        vault,
        resource_ids,
    })
}

/// The value of a metric or log alert's dimension `name` (first condition that has it).
fn dimension(ctx: &Value, name: &str) -> Option<String> {
    get(ctx, &["condition", "allOf"])
        .as_array()?
        .iter()
        .filter_map(|c| c["dimensions"].as_array())
        .flatten()
        .find(|d| {
            d["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .and_then(|d| text(&d["value"], 256))
}

/// The guards an alert concerns: those whose vault patterns cover its vault, and those whose
/// Resource Guard it names.
pub fn guards_for<'a>(alert: &AzureAlert, guards: &'a [GuardPolicy]) -> Vec<&'a GuardPolicy> {
    guards
        .iter()
        .filter(|g| {
            alert.vault.as_ref().is_some_and(|v| g.covers(v))
                || alert.resource_ids.iter().any(|r| {
                    r.eq_ignore_ascii_case(&g.resource_guard_id.to_string())
                        || vault_of(r).is_some_and(|v| g.covers(&v))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    const SUB: &str = "6a0e4b1c-2f3d-4e5f-8a9b-0c1d2e3f4a5b";

    fn activity(op: &str, target: &str) -> Value {
        json!({
          "schemaId": "azureMonitorCommonAlertSchema",
          "data": {
            "essentials": {
              "alertId": format!("/subscriptions/{SUB}/providers/Microsoft.AlertsManagement/alerts/1"),
              "alertRule": "rsv-delete-watch", "severity": "Sev0", "signalType": "Activity Log",
              "monitorCondition": "Fired", "monitoringService": "Activity Log - Administrative",
              "alertTargetIDs": [target], "configurationItems": ["rsv1"],
              "firedDateTime": "2025-01-10T09:12:00Z"
            },
            "alertContext": { "operationName": op, "status": "Succeeded", "caller": "eve@contoso.com",
              "authorization": { "action": op, "scope": target } }
          }
        })
    }

    #[test]
    fn an_activity_log_vault_delete_names_the_vault_in_lower_case_ids() {
        let target = format!(
            "/subscriptions/{SUB}/resourcegroups/bk/providers/microsoft.recoveryservices/vaults/rsv1"
        );
        let a = parse_common_alert(&activity(
            "Microsoft.RecoveryServices/vaults/delete",
            &target,
        ))
        .unwrap();
        assert_eq!(a.kind, AlertKind::Activity);
        assert_eq!(a.vault.as_ref().unwrap().name(), "rsv1");
        assert_eq!(
            a.summary,
            "Recovery Services vault deleted: vault rsv1 (Succeeded)"
        );
        assert_eq!(a.caller.as_deref(), Some("eve@contoso.com"));
    }

    #[test]
    fn a_backup_item_under_a_vault_maps_to_the_vault() {
        let id = format!(
            "/subscriptions/{SUB}/resourceGroups/bk/providers/Microsoft.RecoveryServices/vaults/rsv1/backupFabrics/Azure/protectionContainers/c/protectedItems/vm1"
        );
        assert_eq!(vault_of(&id).unwrap().name(), "rsv1");
        assert!(vault_of("/subscriptions/x/resourceGroups/bk").is_none());
        assert!(
            vault_of(&format!(
                "/subscriptions/{SUB}/resourceGroups/bk/providers/Microsoft.Compute/virtualMachines/vm1"
            ))
            .is_none()
        );
    }

    #[test]
    fn other_schemas_and_missing_fields_are_refused_with_the_field() {
        assert_eq!(
            parse_common_alert(&json!({"schemaId": "Microsoft.Insights/activityLogs"}))
                .unwrap_err()
                .field,
            "schemaId"
        );
        let mut v = activity("x", "/subscriptions/a");
        v["data"]["essentials"]["monitorCondition"] = json!("Maybe");
        assert_eq!(
            parse_common_alert(&v).unwrap_err().field,
            "data.essentials.monitorCondition"
        );
        assert!(parse_common_alert(&json!([1, 2])).is_err());
    }

    #[test]
    fn dedupe_keys_ignore_id_case_but_not_the_condition() {
        assert_eq!(dedupe_key("/A/b", "Fired"), dedupe_key("/a/B", "fired"));
        assert_ne!(dedupe_key("/a", "Fired"), dedupe_key("/a", "Resolved"));
    }

    #[test]
    fn business_hours_follow_the_zone_and_its_summer_time() {
        let bh = BusinessHours {
            days: [true, true, true, true, true, false, false],
            start_minute: 8 * 60,
            end_minute: 18 * 60,
            time_zone: chrono_tz::Europe::Berlin,
        };
        // Thursday 2026-12-03: 07:30 UTC is 08:30 in Berlin (winter, +1).
        assert!(bh.contains(datetime!(2026-12-03 07:30 UTC)));
        assert!(!bh.contains(datetime!(2026-12-03 06:59 UTC)));
        assert!(!bh.contains(datetime!(2026-12-03 17:00 UTC)));
        // In July Berlin is +2: 06:30 UTC is 08:30 there.
        assert!(bh.contains(datetime!(2026-07-02 06:30 UTC)));
        // Saturday.
        assert!(!bh.contains(datetime!(2026-12-05 10:00 UTC)));
        assert_eq!(
            local_date(datetime!(2026-12-03 23:30 UTC), chrono_tz::Europe::Berlin),
            "2026-12-04"
        );
    }

    #[test]
    fn event_filters_match_exact_names_and_prefixes() {
        let f = vec!["created".to_string(), "alert.raised".to_string()];
        assert!(event_selected(&f, "created"));
        assert!(event_selected(&f, "alert.raised:self_approval"));
        assert!(!event_selected(&f, "approved"));
        assert!(event_selected(&["*".to_string()], "anything"));
        assert!(is_known_event_filter("alert.raised:approver_coverage"));
        assert!(!is_known_event_filter("alert.raised:nope"));
        assert!(!is_known_event_filter("deleted"));
    }
}
