//! Posture: who or what can go around multi-user authorization for a guard, and how each
//! vault the guard covers stands. Pure: it takes what was read from Azure (the *facts*, each
//! read either a value or the reason it failed) and what twokey knows (its own identity, its
//! requesters, its open windows, names), and returns findings, each with a stable id, a
//! severity and the exact fix. It never reads Azure, the database or the clock.
//!
//! A finding's id is built from what it is about (principal, role, scope, vault, operation),
//! never from when it was seen, so two runs can be compared: a finding that appears or
//! disappears between runs is a change in posture.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::arm::{ResourceGuardId, VaultId, VaultKind};
use super::operations;

/// How bad a finding is. `Critical` and `High` are shown in red.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// MUA is off or can be gone around right now.
    Critical,
    /// Someone can switch MUA off or change the guard, or a protection is off.
    High,
    /// Weakens the set-up (Microsoft's advice not followed, self-activation in PIM).
    Medium,
    /// Worth knowing; not a hole by itself.
    Low,
    /// Listed for completeness (who can change a vault at all).
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::High => "high",
            Self::Medium => "medium",
            Self::Low => "low",
            Self::Info => "info",
        }
    }
    /// Shown in red on the page and counted by the CLI's exit status.
    pub fn is_red(self) -> bool {
        matches!(self, Self::Critical | Self::High)
    }
}

/// An Entra principal, with its name when the directory could be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalRef {
    pub id: String,
    /// `User`, `Group`, `ServicePrincipal`, `ForeignGroup`, `Device` (as ARM says).
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    /// A user's sign-in name (UPN) or mail.
    #[serde(default)]
    pub upn: Option<String>,
}

impl PrincipalRef {
    /// "Alice Smith <alice@contoso.com> (user 1234…)" or the id alone.
    pub fn label(&self) -> String {
        let kind = self.kind.to_ascii_lowercase();
        match (&self.name, &self.upn) {
            (Some(n), Some(u)) => format!("{n} <{u}> ({kind} {})", self.id),
            (Some(n), None) => format!("{n} ({kind} {})", self.id),
            (None, Some(u)) => format!("{u} ({kind} {})", self.id),
            (None, None) => format!("{kind} {}", self.id),
        }
    }
}

/// One thing that is wrong (or worth knowing), with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable across runs: what it is about, never when it was seen.
    pub id: String,
    pub severity: Severity,
    /// `unlinked`, `excluded_operation`, `guard_access`, `standing_elevation`, `eligible`,
    /// `soft_delete`, `immutability`, `placement`, `vault_access`, `unreadable`.
    pub category: String,
    /// The vault it is about, when it is about one.
    #[serde(default)]
    pub vault: Option<String>,
    #[serde(default)]
    pub principal: Option<PrincipalRef>,
    pub title: String,
    pub detail: String,
    pub fix: String,
    /// Which read produced it; when that read fails next time, the finding is kept (stale)
    /// instead of reported as gone.
    pub source: String,
    /// Carried over from the previous run because its read failed this time.
    #[serde(default)]
    pub stale: bool,
}

/// One covered vault, as the page and the CLI show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultStatus {
    pub id: String,
    pub name: String,
    pub kind: String,
    /// `linked`, `not linked`, `linked to another guard`, or `unknown (…)`.
    pub link: String,
    /// As Azure says it (`Enabled`, `Disabled`, `AlwaysON`, `On`, `Off`, `AlwaysOn`) or `unknown`.
    pub soft_delete: String,
    /// `disabled`, `enabled-unlocked`, `locked`, or `unknown`.
    pub immutability: String,
    /// `another tenant`, `another subscription`, `same subscription`.
    pub guard_placement: String,
}

/// One guard's posture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardReport {
    pub guard: String,
    pub resource_guard_id: String,
    pub elevation: String,
    pub checked_at: String,
    pub vaults: Vec<VaultStatus>,
    /// The operations the guard does not protect, in plain words.
    pub excluded_operations: Vec<String>,
    /// Most severe first.
    pub findings: Vec<Finding>,
    /// What could not be looked at, and other remarks (not findings).
    pub notes: Vec<String>,
    /// The reads that failed this run (their previous findings are carried over).
    #[serde(default)]
    pub failed_sources: Vec<String>,
}

impl GuardReport {
    pub fn count(&self, s: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == s).count()
    }
}

/// The whole report: every guard, and whether names could be resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostureReport {
    pub generated_at: String,
    /// `true` when Microsoft Graph resolved principal ids to names.
    pub names_resolved: bool,
    /// Why names are missing (e.g. Graph answered 403), when they are.
    #[serde(default)]
    pub names_note: Option<String>,
    pub guards: Vec<GuardReport>,
}

impl PostureReport {
    /// How many findings are red (critical or high), stale ones included.
    pub fn red_count(&self) -> usize {
        self.guards
            .iter()
            .flat_map(|g| &g.findings)
            .filter(|f| f.severity.is_red())
            .count()
    }
}

// ---- facts: what was read from Azure -----------------------------------------------------

/// One read: its value, or why it failed (Azure's message, or "not configured").
pub type Read<T> = Result<T, String>;

/// A role assignment as ARM lists it (`roleAssignments?$filter=atScope()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleAssignment {
    pub id: String,
    pub scope: String,
    pub role_definition_id: String,
    pub principal_id: String,
    pub principal_type: String,
}

/// One `permissions[]` block of a role definition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permission {
    pub actions: Vec<String>,
    pub not_actions: Vec<String>,
}

/// A role definition (built-in or custom) with its permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleDefinition {
    pub name: String,
    /// `CustomRole` rather than `BuiltInRole`.
    pub custom: bool,
    pub permissions: Vec<Permission>,
}

/// A PIM schedule (`roleAssignmentSchedules` or `roleEligibilitySchedules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub scope: String,
    pub role_definition_id: String,
    pub principal_id: String,
    pub principal_type: String,
    /// `None`: permanent.
    pub end: Option<String>,
}

/// What was read about one vault the guard covers.
#[derive(Debug, Clone)]
pub struct VaultFacts {
    pub id: VaultId,
    /// The `resourceGuardResourceId` of each `backupResourceGuardProxies` entry.
    pub proxies: Read<Vec<String>>,
    pub settings: Read<VaultSettings>,
    /// Role assignments at or above the vault.
    pub assignments: Read<Vec<RoleAssignment>>,
}

/// A vault's security settings (`properties.securitySettings`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VaultSettings {
    /// `softDeleteState` (Recovery Services) or `state` (Backup vault), as Azure says it.
    pub soft_delete: Option<String>,
    /// `immutabilitySettings.state`: `Disabled`, `Unlocked`, `Locked`.
    pub immutability: Option<String>,
}

/// Everything read about one guard.
#[derive(Debug, Clone)]
pub struct GuardFacts {
    /// The guard's `vaultCriticalOperationExclusionList`.
    pub exclusions: Read<Vec<String>>,
    /// Role assignments at or above the guard (guard, resource group, subscription,
    /// management groups, root).
    pub assignments: Read<Vec<RoleAssignment>>,
    /// PIM assignment schedules at or above the guard (tells time-bound from standing).
    pub assignment_schedules: Read<Vec<Schedule>>,
    /// PIM eligibility schedules at or above the guard.
    pub eligibility: Read<Vec<Schedule>>,
    /// Role definitions by GUID (lowercase), for every role seen.
    pub definitions: BTreeMap<String, Read<RoleDefinition>>,
    pub vaults: Vec<VaultFacts>,
    /// Vault patterns that could not be expanded into vaults, with why.
    pub unlisted: Vec<String>,
}

/// What twokey knows that Azure does not say.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The broker's own object ids (its User Access Administrator role is expected).
    pub broker_ids: BTreeSet<String>,
    /// Object ids (lowercase) of twokey requesters of this guard: named in
    /// `requesters` as `oid:`, or who have asked through twokey before.
    pub requester_ids: BTreeSet<String>,
    /// `group:` entries of the guard's `requesters` (group object ids, lowercase).
    pub requester_groups: BTreeSet<String>,
    /// Principals (lowercase) with a twokey window open now at this guard.
    pub open_windows: BTreeSet<String>,
    /// Whether the guard lives in another tenant than the vaults (the broker's home tenant).
    pub guard_in_other_tenant: bool,
    /// Names by object id (lowercase), where the directory could be read.
    pub names: BTreeMap<String, PrincipalRef>,
}

// ---- the rules -----------------------------------------------------------------------------

/// Well-known built-in roles (CONTRACTS.md §2), used when a definition cannot be read: a role
/// that is known to write is still reported (fail closed).
const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
const USER_ACCESS_ADMIN: &str = "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9";
const BACKUP_MUA_ADMIN: &str = "c2a970b4-16a7-4a51-8c84-8a8ea6ee0bb8";

fn builtin_name(guid: &str) -> Option<&'static str> {
    match guid {
        OWNER => Some("Owner"),
        CONTRIBUTOR => Some("Contributor"),
        USER_ACCESS_ADMIN => Some("User Access Administrator"),
        BACKUP_MUA_ADMIN => Some("Backup MUA Admin"),
        super::policy::BACKUP_MUA_OPERATOR_ROLE => Some("Backup MUA Operator"),
        _ => None,
    }
}

/// Changing the guard: its exclusion list (write), removing it (delete).
const GUARD_WRITE: &[&str] = &[
    "Microsoft.DataProtection/resourceGuards/write",
    "Microsoft.DataProtection/resourceGuards/delete",
];
/// Giving anyone (oneself included) any role, the elevation role among them.
const ASSIGN_ROLES: &str = "Microsoft.Authorization/roleAssignments/write";

/// The GUID at the end of a role definition id (either form), lowercase.
pub fn role_guid(role_definition_id: &str) -> String {
    role_definition_id
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Whether an ARM action pattern (`*` matches any run of characters, case ignored) matches.
pub fn action_matches(pattern: &str, action: &str) -> bool {
    fn go(p: &[u8], a: &[u8]) -> bool {
        match p.split_first() {
            None => a.is_empty(),
            Some((b'*', rest)) => (0..=a.len()).any(|i| go(rest, &a[i..])),
            Some((c, rest)) => a
                .split_first()
                .is_some_and(|(x, ar)| x.eq_ignore_ascii_case(c) && go(rest, ar)),
        }
    }
    go(pattern.as_bytes(), action.as_bytes())
}

/// Whether a role definition allows `action`: some permissions block lists it in `actions`
/// and not in that block's `notActions` (how Azure RBAC evaluates control-plane actions).
pub fn allows(def: &RoleDefinition, action: &str) -> bool {
    def.permissions.iter().any(|p| {
        p.actions.iter().any(|a| action_matches(a, action))
            && !p.not_actions.iter().any(|n| action_matches(n, action))
    })
}

/// Where an assignment's scope sits relative to a resource, in words.
pub fn scope_label(scope: &str, resource_id: &str) -> String {
    let s = scope.trim_end_matches('/');
    if s.is_empty() {
        return "the root of the tenant (every subscription)".into();
    }
    if s.eq_ignore_ascii_case(resource_id) {
        return "the resource itself".into();
    }
    let lower = s.to_ascii_lowercase();
    if let Some(mg) = lower.strip_prefix("/providers/microsoft.management/managementgroups/") {
        return format!("management group {} (inherited)", &s[s.len() - mg.len()..]);
    }
    let parts: Vec<&str> = s.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["subscriptions", sub] => format!("subscription {sub} (inherited)"),
        ["subscriptions", _, "resourceGroups" | "resourcegroups", rg] => {
            format!("resource group {rg} (inherited)")
        }
        _ => format!("{s} (inherited)"),
    }
}

struct Ev<'a> {
    guard: &'a str,
    guard_id: String,
    ctx: &'a Context,
    facts: &'a GuardFacts,
    out: Vec<Finding>,
}

impl Ev<'_> {
    fn who(&self, id: &str, kind: &str) -> PrincipalRef {
        self.ctx
            .names
            .get(&id.to_ascii_lowercase())
            .cloned()
            .map(|mut p| {
                if p.kind.is_empty() {
                    p.kind = kind.to_string();
                }
                p
            })
            .unwrap_or_else(|| PrincipalRef {
                id: id.to_string(),
                kind: kind.to_string(),
                name: None,
                upn: None,
            })
    }

    fn is_requester(&self, p: &PrincipalRef) -> bool {
        let id = p.id.to_ascii_lowercase();
        self.ctx.requester_ids.contains(&id) || self.ctx.requester_groups.contains(&id)
    }

    /// The definition of `guid`, or a stand-in for a known built-in whose read failed.
    fn definition(&self, guid: &str) -> Result<RoleDefinition, String> {
        match self.facts.definitions.get(guid) {
            Some(Ok(d)) => Ok(d.clone()),
            Some(Err(e)) => Err(e.clone()),
            None => Err("not read".into()),
        }
    }

    fn push(&mut self, f: Finding) {
        if !self.out.iter().any(|o| o.id == f.id) {
            self.out.push(f);
        }
    }

    fn unreadable(&mut self, source: &str, what: &str, error: &str, fix: &str) {
        self.push(Finding {
            id: format!("unreadable:{source}"),
            severity: Severity::High,
            category: "unreadable".into(),
            vault: None,
            principal: None,
            title: format!("Could not read {what}"),
            detail: format!(
                "twokey cannot tell who or what can go around MUA here while it cannot read this ({error}). Findings from the last successful read are kept and marked stale."
            ),
            fix: fix.to_string(),
            source: source.to_string(),
            stale: false,
        });
    }
}

/// Evaluate one guard. `guard_id` is the configured Resource Guard; `elevation_role` the
/// role GUID twokey grants for a window (what Azure checks before a protected operation).
pub fn evaluate(
    guard: &str,
    guard_id: &ResourceGuardId,
    elevation: &str,
    elevation_role: &str,
    checked_at: &str,
    facts: &GuardFacts,
    ctx: &Context,
) -> GuardReport {
    let mut ev = Ev {
        guard,
        guard_id: guard_id.to_string(),
        ctx,
        facts,
        out: Vec::new(),
    };
    let mut notes: Vec<String> = facts.unlisted.clone();
    let mut failed: Vec<String> = Vec::new();
    let elevation_role = elevation_role.to_ascii_lowercase();

    // 1. Operations the guard does not protect.
    let mut excluded_words = Vec::new();
    match &facts.exclusions {
        Ok(list) => {
            for raw in list {
                let ops: Vec<&operations::Operation> = operations::catalogue()
                    .iter()
                    .filter(|o| o.matches_vault_critical_operation(raw))
                    .collect();
                let words = if ops.is_empty() {
                    format!("`{raw}` (an operation twokey has no plain name for)")
                } else {
                    ops.iter()
                        .map(|o| format!("{} ({})", o.title, o.vault_kind.label()))
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                excluded_words.push(words.clone());
                ev.push(Finding {
                    id: format!("excluded:{}", raw.trim().to_ascii_lowercase()),
                    severity: Severity::High,
                    category: "excluded_operation".into(),
                    vault: None,
                    principal: None,
                    title: format!("Not protected by the guard: {words}"),
                    detail: format!(
                        "The guard's exclusion list (vaultCriticalOperationExclusionList) holds `{raw}`. On every vault linked to {guard}, anyone with the usual backup role can do this without a second person; twokey is never asked."
                    ),
                    fix: format!(
                        "Take it off the exclusion list: Resource Guard → Properties → Protected operations → tick it, or PATCH {} with the list without `{raw}`.",
                        ev.guard_id
                    ),
                    source: "guard".into(),
                    stale: false,
                });
            }
        }
        Err(e) => {
            failed.push("guard".into());
            let fix = format!(
                "Give the broker Reader on {} (and check guards.resource_guard_id).",
                ev.guard_id
            );
            ev.unreadable("guard", "the Resource Guard", e, &fix);
        }
    }

    // 2. Who can change the guard, or holds the elevation role without a window.
    let schedules_ok = facts.assignment_schedules.as_ref().ok();
    match &facts.assignments {
        Ok(list) => {
            for a in list {
                guard_assignment(&mut ev, a, &elevation_role, schedules_ok);
            }
        }
        Err(e) => {
            failed.push("guard-rbac".into());
            let fix = format!(
                "Give the broker Reader (or User Access Administrator, which it needs anyway) on {}.",
                ev.guard_id
            );
            ev.unreadable("guard-rbac", "the role assignments at the guard", e, &fix);
        }
    }
    if let Err(e) = &facts.assignment_schedules {
        notes.push(format!(
            "PIM assignment schedules could not be read ({e}); every holder of the elevation role is reported as standing."
        ));
    }

    // 3. Who can activate a guard role in PIM on their own.
    match &facts.eligibility {
        Ok(list) => {
            for s in list {
                eligible(&mut ev, s, &elevation_role);
            }
        }
        Err(e) => notes.push(format!(
            "PIM eligibility could not be read ({e}); people who may activate a role on the guard themselves are not listed."
        )),
    }

    // 4. Each vault.
    let mut vaults = Vec::new();
    for v in &facts.vaults {
        vaults.push(vault(&mut ev, v, guard_id, &mut failed));
    }

    let mut findings = ev.out;
    findings.sort_by(|a, b| a.severity.cmp(&b.severity).then_with(|| a.id.cmp(&b.id)));
    GuardReport {
        guard: guard.to_string(),
        resource_guard_id: guard_id.to_string(),
        elevation: elevation.to_string(),
        checked_at: checked_at.to_string(),
        vaults,
        excluded_operations: excluded_words,
        findings,
        notes,
        failed_sources: failed,
    }
}

fn guard_assignment(
    ev: &mut Ev<'_>,
    a: &RoleAssignment,
    elevation_role: &str,
    schedules: Option<&Vec<Schedule>>,
) {
    let pid = a.principal_id.to_ascii_lowercase();
    if ev.ctx.broker_ids.contains(&pid) {
        return;
    }
    let guid = role_guid(&a.role_definition_id);
    let who = ev.who(&a.principal_id, &a.principal_type);
    let requester = ev.is_requester(&who);
    let where_ = scope_label(&a.scope, &ev.guard_id);
    let group_note = if a.principal_type.eq_ignore_ascii_case("Group") {
        " It is a group: every member has it."
    } else {
        ""
    };
    let (name, writes, assigns, unknown) = match ev.definition(&guid) {
        Ok(d) => {
            let writes = GUARD_WRITE.iter().any(|act| allows(&d, act));
            let assigns = allows(&d, ASSIGN_ROLES);
            let name = if d.custom {
                format!("{} (custom role)", d.name)
            } else {
                d.name.clone()
            };
            (name, writes, assigns, None)
        }
        // SECURITY: fail closed. A known writing role whose definition could not be read
        // still counts as writing; an unknown one is reported as unreadable.
        Err(e) => match builtin_name(&guid) {
            Some(n) => {
                let writes = matches!(guid.as_str(), OWNER | CONTRIBUTOR | BACKUP_MUA_ADMIN);
                let assigns = matches!(guid.as_str(), OWNER | USER_ACCESS_ADMIN);
                (n.to_string(), writes, assigns, None)
            }
            None => (format!("role {guid}"), false, false, Some(e)),
        },
    };
    if let Some(e) = unknown {
        ev.push(Finding {
            id: format!("unknown-role:{pid}:{guid}:{}", a.scope.to_ascii_lowercase()),
            severity: Severity::High,
            category: "guard_access".into(),
            vault: None,
            principal: Some(who.clone()),
            title: format!("{} holds a role twokey cannot read on the guard", who.label()),
            detail: format!(
                "Role definition {guid}, assigned at {where_}, could not be read ({e}); it may allow changing the guard.{group_note}"
            ),
            fix: format!(
                "Give the broker Reader at {} so it can read role definitions, or remove the assignment {}.",
                a.scope, a.id
            ),
            source: "guard-rbac".into(),
            stale: false,
        });
        return;
    }
    if writes || assigns {
        let what = match (writes, assigns) {
            (true, true) => "change or delete the Resource Guard and give anyone any role on it",
            (true, false) => {
                "change or delete the Resource Guard (e.g. exclude operations from MUA)"
            }
            _ => {
                "give anyone, themselves included, any role on the guard, including the elevation role"
            }
        };
        let (severity, title) = if requester {
            (
                Severity::Critical,
                format!(
                    "A twokey requester can go around twokey: {} holds {name} on the guard",
                    who.label()
                ),
            )
        } else {
            (
                Severity::High,
                format!("{} holds {name} on the guard", who.label()),
            )
        };
        ev.push(Finding {
            id: format!("guard-access:{pid}:{guid}:{}", a.scope.to_ascii_lowercase()),
            severity,
            category: "guard_access".into(),
            vault: None,
            principal: Some(who.clone()),
            title,
            detail: format!(
                "Assigned at {where_}. With {name} they can {what}, so MUA on {} does not depend on twokey's approvals.{group_note}{}",
                ev.guard,
                if requester { " They also ask for access through twokey: the person who should need a second approver does not." } else { "" }
            ),
            fix: format!(
                "Remove this assignment (Access control (IAM) at {} → Role assignments, or `az role assignment delete --ids {}`). If someone must administer the guard, give them {name} as a PIM-eligible role with approval, held by people who never request.",
                a.scope, a.id
            ),
            source: "guard-rbac".into(),
            stale: false,
        });
        return;
    }
    if guid == elevation_role {
        if ev.ctx.open_windows.contains(&pid) {
            // A window twokey opened and will close.
            return;
        }
        let time_bound = schedules.is_some_and(|list| {
            list.iter().any(|s| {
                s.principal_id.eq_ignore_ascii_case(&a.principal_id)
                    && role_guid(&s.role_definition_id) == guid
                    && s.scope.eq_ignore_ascii_case(&a.scope)
                    && s.end.is_some()
            })
        });
        if time_bound {
            return;
        }
        ev.push(Finding {
            id: format!("standing-elevation:{pid}:{}", a.scope.to_ascii_lowercase()),
            severity: Severity::Critical,
            category: "standing_elevation".into(),
            vault: None,
            principal: Some(who.clone()),
            title: format!(
                "{} holds {name} on the guard permanently: every protected operation, no approval",
                who.label()
            ),
            detail: format!(
                "Assigned at {where_}, with no end (not a PIM activation, not a twokey window). {name} is what Azure checks before a protected operation, so they can delete backup data, switch off soft delete or unlink MUA on every vault of {} without anyone.{group_note}",
                ev.guard
            ),
            fix: format!(
                "Remove the standing assignment (`az role assignment delete --ids {}`); twokey gives this role for an approved window only.",
                a.id
            ),
            source: "guard-rbac".into(),
            stale: false,
        });
    }
}

fn eligible(ev: &mut Ev<'_>, s: &Schedule, elevation_role: &str) {
    let pid = s.principal_id.to_ascii_lowercase();
    if ev.ctx.broker_ids.contains(&pid) {
        return;
    }
    let guid = role_guid(&s.role_definition_id);
    let (name, matters) = match ev.definition(&guid) {
        Ok(d) => (
            d.name.clone(),
            guid == elevation_role
                || GUARD_WRITE.iter().any(|a| allows(&d, a))
                || allows(&d, ASSIGN_ROLES),
        ),
        Err(_) => match builtin_name(&guid) {
            Some(n) => (n.to_string(), true),
            None => (format!("role {guid}"), guid == elevation_role),
        },
    };
    if !matters {
        return;
    }
    let who = ev.who(&s.principal_id, &s.principal_type);
    let requester = ev.is_requester(&who);
    ev.push(Finding {
        id: format!("eligible:{pid}:{guid}:{}", s.scope.to_ascii_lowercase()),
        severity: if requester { Severity::High } else { Severity::Medium },
        category: "eligible".into(),
        vault: None,
        principal: Some(who.clone()),
        title: format!("{} can activate {name} on the guard in PIM", who.label()),
        detail: format!(
            "A PIM eligibility at {}{}. Unless the role's PIM settings require an approver other than them, they can activate it themselves, without twokey.{}",
            scope_label(&s.scope, &ev.guard_id),
            s.end.as_deref().map(|e| format!(", until {e}")).unwrap_or_else(|| ", with no end".into()),
            if requester { " They are also a twokey requester." } else { "" }
        ),
        fix: format!(
            "Remove the eligibility (PIM → Azure resources → the guard → Assignments → Eligible), or require approval by someone else in the role's PIM settings (Approval_EndUser_Assignment) for {name}."
        ),
        source: "guard-pim".into(),
        stale: false,
    });
}

fn vault(
    ev: &mut Ev<'_>,
    v: &VaultFacts,
    guard_id: &ResourceGuardId,
    failed: &mut Vec<String>,
) -> VaultStatus {
    let vid = v.id.to_string();
    let vname = v.id.name().to_string();
    let source = format!("vault:{}", vid.to_ascii_lowercase());
    let base =
        |id: String, severity, category: &str, title: String, detail: String, fix: String| {
            Finding {
                id,
                severity,
                category: category.into(),
                vault: Some(vid.clone()),
                principal: None,
                title,
                detail,
                fix,
                source: source.clone(),
                stale: false,
            }
        };
    // The link.
    let link = match &v.proxies {
        Ok(list) if list.iter().any(|g| g.eq_ignore_ascii_case(&ev.guard_id)) => {
            "linked".to_string()
        }
        Ok(list) if list.is_empty() => {
            ev.push(base(
                format!("unlinked:{}", vid.to_ascii_lowercase()),
                Severity::Critical,
                "unlinked",
                format!("MUA is off for vault {vname}: it is not linked to the guard"),
                format!(
                    "{vname} is covered by {} in twokey's configuration, but Azure has no backupResourceGuardProxies entry for it: every critical operation on it (delete backup data, disable soft delete, …) needs no second person, and twokey is never asked.",
                    ev.guard
                ),
                format!(
                    "Link it: vault → Properties → Multi-user authorization → Enable, choose {} (the backup admin needs Reader on the guard for that). Or remove it from guards.vaults.",
                    ev.guard_id
                ),
            ));
            "not linked".to_string()
        }
        Ok(list) => {
            let other = list.first().cloned().unwrap_or_default();
            ev.push(base(
                format!("linked-elsewhere:{}", vid.to_ascii_lowercase()),
                Severity::Critical,
                "unlinked",
                format!("Vault {vname} is linked to another Resource Guard"),
                format!(
                    "Its MUA goes through {other}, not {}: twokey's approvals do not decide anything for it.",
                    ev.guard_id
                ),
                format!(
                    "Link it to {} (unlinking is itself a protected operation on the other guard), or configure that guard in twokey.",
                    ev.guard_id
                ),
            ));
            "linked to another guard".to_string()
        }
        Err(e) => {
            failed.push(source.clone());
            let fix = format!("Give the broker Reader (or Backup Reader) on {vid}.");
            ev.unreadable(&source, &format!("vault {vname}'s MUA link"), e, &fix);
            format!("unknown ({e})")
        }
    };
    // Soft delete and immutability.
    let (soft, immut) = match &v.settings {
        Ok(s) => {
            let soft = s.soft_delete.clone().unwrap_or_else(|| "unknown".into());
            let off = matches!(soft.to_ascii_lowercase().as_str(), "disabled" | "off");
            if off {
                ev.push(base(
                    format!("soft-delete-off:{}", vid.to_ascii_lowercase()),
                    Severity::High,
                    "soft_delete",
                    format!("Soft delete is off for vault {vname}"),
                    "Deleted backup data is gone at once, with nothing kept to recover from.".into(),
                    match v.id.kind() {
                        VaultKind::RecoveryServices => "Turn it on: vault → Properties → Security settings → Soft delete → Enable (better: Always on, which cannot be turned off).".into(),
                        VaultKind::Backup => "Turn it on: vault → Properties → Soft delete → On (better: Always on).".into(),
                    },
                ));
            }
            let immut_raw = s.immutability.clone().unwrap_or_else(|| "Disabled".into());
            let immut = match immut_raw.to_ascii_lowercase().as_str() {
                "disabled" => {
                    ev.push(base(
                        format!("immutability-off:{}", vid.to_ascii_lowercase()),
                        Severity::Medium,
                        "immutability",
                        format!("Immutability is off for vault {vname}"),
                        "Recovery points can be deleted or shortened before they expire (with MUA's protection only).".into(),
                        "Enable immutability (vault → Properties → Immutable vault), and lock it once you are sure: locked, it can never be turned off.".into(),
                    ));
                    "disabled".to_string()
                }
                "unlocked" => {
                    ev.push(base(
                        format!("immutability-unlocked:{}", vid.to_ascii_lowercase()),
                        Severity::Low,
                        "immutability",
                        format!("Immutability is enabled but not locked for vault {vname}"),
                        "It can still be turned off again (an operation MUA protects). Locked, it cannot be turned off by anyone.".into(),
                        "Lock it when the retention is right: vault → Properties → Immutable vault → Lock. Locking cannot be undone.".into(),
                    ));
                    "enabled-unlocked".to_string()
                }
                "locked" => "locked".to_string(),
                other => format!("unknown ({other})"),
            };
            (soft, immut)
        }
        Err(e) => {
            if !failed.contains(&source) {
                failed.push(source.clone());
            }
            let fix = format!("Give the broker Reader (or Backup Reader) on {vid}.");
            ev.unreadable(
                &format!("{source}:settings"),
                &format!("vault {vname}'s settings"),
                e,
                &fix,
            );
            ("unknown".into(), "unknown".into())
        }
    };
    // Where the guard lives.
    let placement = if ev.ctx.guard_in_other_tenant {
        "another tenant".to_string()
    } else if guard_id.subscription() == v.id.subscription() {
        ev.push(base(
            format!("placement-same-subscription:{}", vid.to_ascii_lowercase()),
            Severity::Medium,
            "placement",
            format!("The guard is in the same subscription as vault {vname}"),
            format!(
                "An Owner or User Access Administrator of subscription {} controls both the vault and its guard. Microsoft advises a guard in another subscription, best in another tenant.",
                v.id.subscription()
            ),
            "Create the guard in a separate (security) subscription or tenant, link the vault to it, and point guards.resource_guard_id there.".into(),
        ));
        "same subscription".to_string()
    } else {
        ev.push(base(
            format!("placement-same-tenant:{}", vid.to_ascii_lowercase()),
            Severity::Low,
            "placement",
            format!("The guard is in the same tenant as vault {vname}"),
            "A Global Administrator who elevates to User Access Administrator at the root controls both. Microsoft advises a guard in another tenant for the most protection.".into(),
            "Move the guard to a separate security tenant (see README, \"A guard in another tenant\").".into(),
        ));
        "another subscription".to_string()
    };
    // Who can change the vault at all.
    let rbac_source = format!("vault-rbac:{}", vid.to_ascii_lowercase());
    match &v.assignments {
        Ok(list) => {
            let targets = [
                format!(
                    "{}/{}/write",
                    v.id.kind().provider(),
                    v.id.kind().resource_type()
                ),
                format!(
                    "{}/{}/delete",
                    v.id.kind().provider(),
                    v.id.kind().resource_type()
                ),
                ASSIGN_ROLES.to_string(),
            ];
            for a in list {
                let pid = a.principal_id.to_ascii_lowercase();
                if ev.ctx.broker_ids.contains(&pid) {
                    continue;
                }
                let guid = role_guid(&a.role_definition_id);
                let (name, can) = match ev.definition(&guid) {
                    Ok(d) => (d.name.clone(), targets.iter().any(|t| allows(&d, t))),
                    Err(_) => match builtin_name(&guid) {
                        Some(n) => (
                            n.to_string(),
                            guid != super::policy::BACKUP_MUA_OPERATOR_ROLE,
                        ),
                        None => (format!("role {guid}"), true),
                    },
                };
                if !can {
                    continue;
                }
                let who = ev.who(&a.principal_id, &a.principal_type);
                ev.push(Finding {
                    id: format!(
                        "vault-access:{}:{pid}:{guid}:{}",
                        vid.to_ascii_lowercase(),
                        a.scope.to_ascii_lowercase()
                    ),
                    severity: Severity::Info,
                    category: "vault_access".into(),
                    vault: Some(vid.clone()),
                    principal: Some(who.clone()),
                    title: format!("{} can change vault {vname} ({name})", who.label()),
                    detail: format!(
                        "Assigned at {}. Changes that MUA protects still need the guard; everything else (new policies, new items, tags, settings MUA does not cover) does not.",
                        scope_label(&a.scope, &vid)
                    ),
                    fix: "Nothing, if they run your backups; otherwise remove the assignment.".into(),
                    source: rbac_source.clone(),
                    stale: false,
                });
            }
        }
        Err(e) => {
            failed.push(rbac_source.clone());
            ev.notes_unreadable_vault(&rbac_source, &vname, e);
        }
    }
    VaultStatus {
        id: vid.clone(),
        name: vname,
        kind: v.id.kind().label().to_string(),
        link,
        soft_delete: soft,
        immutability: immut,
        guard_placement: placement,
    }
}

impl Ev<'_> {
    fn notes_unreadable_vault(&mut self, source: &str, vname: &str, e: &str) {
        self.push(Finding {
            id: format!("unreadable:{source}"),
            severity: Severity::Low,
            category: "unreadable".into(),
            vault: None,
            principal: None,
            title: format!("Could not read who can change vault {vname}"),
            detail: format!("The role assignments at the vault could not be read ({e})."),
            fix: "Give the broker Reader on the vault (or its resource group).".into(),
            source: source.to_string(),
            stale: false,
        });
    }
}

/// Keep the previous run's findings of every read that failed this time (marked stale), so
/// that an outage does not look like every problem was fixed (and then reappeared).
pub fn carry_over(report: &mut GuardReport, previous: Option<&GuardReport>) {
    let Some(prev) = previous else { return };
    for f in &prev.findings {
        let failed = report
            .failed_sources
            .iter()
            .any(|s| f.source == *s || f.source.starts_with(&format!("{s}:")));
        if failed && f.category != "unreadable" && !report.findings.iter().any(|n| n.id == f.id) {
            let mut f = f.clone();
            f.stale = true;
            report.findings.push(f);
        }
    }
    report
        .findings
        .sort_by(|a, b| a.severity.cmp(&b.severity).then_with(|| a.id.cmp(&b.id)));
}

/// What changed between two runs of one guard, by finding id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Change {
    pub added: Vec<Finding>,
    pub removed: Vec<Finding>,
    /// Same id, other severity: (before, after).
    pub changed: Vec<(Finding, Finding)>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Compare findings by id. Staleness is not a change (the finding was not seen to go).
pub fn diff(old: &[Finding], new: &[Finding]) -> Change {
    let old_by: BTreeMap<&str, &Finding> = old.iter().map(|f| (f.id.as_str(), f)).collect();
    let new_by: BTreeMap<&str, &Finding> = new.iter().map(|f| (f.id.as_str(), f)).collect();
    let mut c = Change::default();
    for (id, f) in &new_by {
        match old_by.get(id) {
            None => c.added.push((*f).clone()),
            Some(o) if o.severity != f.severity => c.changed.push(((*o).clone(), (*f).clone())),
            _ => {}
        }
    }
    for (id, f) in &old_by {
        if !new_by.contains_key(id) {
            c.removed.push((*f).clone());
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "11111111-2222-3333-4444-555555555555";
    const OTHER_SUB: &str = "99999999-2222-3333-4444-555555555555";

    fn guard_id() -> ResourceGuardId {
        ResourceGuardId::parse(&format!(
            "/subscriptions/{OTHER_SUB}/resourceGroups/rg-sec/providers/Microsoft.DataProtection/resourceGuards/g1"
        ))
        .unwrap()
    }

    fn vault_id(name: &str) -> VaultId {
        VaultId::parse(&format!(
            "/subscriptions/{SUB}/resourceGroups/rg-b/providers/Microsoft.RecoveryServices/vaults/{name}"
        ))
        .unwrap()
    }

    fn def(name: &str, actions: &[&str], not: &[&str]) -> RoleDefinition {
        RoleDefinition {
            name: name.into(),
            custom: false,
            permissions: vec![Permission {
                actions: actions.iter().map(|s| s.to_string()).collect(),
                not_actions: not.iter().map(|s| s.to_string()).collect(),
            }],
        }
    }

    fn defs() -> BTreeMap<String, Read<RoleDefinition>> {
        let mut m = BTreeMap::new();
        m.insert(OWNER.into(), Ok(def("Owner", &["*"], &[])));
        m.insert(
            CONTRIBUTOR.into(),
            Ok(def(
                "Contributor",
                &["*"],
                &[
                    "Microsoft.Authorization/*/Delete",
                    "Microsoft.Authorization/*/Write",
                ],
            )),
        );
        m.insert(
            USER_ACCESS_ADMIN.into(),
            Ok(def(
                "User Access Administrator",
                &["*/read", "Microsoft.Authorization/*"],
                &[],
            )),
        );
        m.insert(
            "acdd72a7-3385-48ef-bd42-f606fba81ae7".into(),
            Ok(def("Reader", &["*/read"], &[])),
        );
        m.insert(
            crate::domain::policy::BACKUP_MUA_OPERATOR_ROLE.into(),
            Ok(def(
                "Backup MUA Operator",
                &[
                    "Microsoft.DataProtection/*/action",
                    "Microsoft.DataProtection/*/read",
                ],
                &[],
            )),
        );
        m
    }

    fn ra(scope: &str, role: &str, who: &str) -> RoleAssignment {
        RoleAssignment {
            id: format!("{scope}/providers/Microsoft.Authorization/roleAssignments/x-{who}"),
            scope: scope.into(),
            role_definition_id: format!(
                "/subscriptions/{OTHER_SUB}/providers/Microsoft.Authorization/roleDefinitions/{role}"
            ),
            principal_id: who.into(),
            principal_type: "User".into(),
        }
    }

    fn facts(assignments: Vec<RoleAssignment>) -> GuardFacts {
        GuardFacts {
            exclusions: Ok(vec![]),
            assignments: Ok(assignments),
            assignment_schedules: Ok(vec![]),
            eligibility: Ok(vec![]),
            definitions: defs(),
            vaults: vec![],
            unlisted: vec![],
        }
    }

    fn run(f: &GuardFacts, ctx: &Context) -> GuardReport {
        evaluate(
            "g",
            &guard_id(),
            "azure-pim",
            crate::domain::policy::BACKUP_MUA_OPERATOR_ROLE,
            "2026-12-03T09:00:00.000000Z",
            f,
            ctx,
        )
    }

    #[test]
    fn action_patterns_match_like_azure_rbac() {
        assert!(action_matches(
            "*",
            "Microsoft.DataProtection/resourceGuards/write"
        ));
        assert!(action_matches(
            "Microsoft.DataProtection/resourceGuards/*",
            "microsoft.dataprotection/resourceguards/write"
        ));
        assert!(action_matches(
            "Microsoft.Authorization/*/Write",
            "Microsoft.Authorization/roleAssignments/write"
        ));
        assert!(!action_matches(
            "*/read",
            "Microsoft.DataProtection/resourceGuards/write"
        ));
        assert!(!action_matches(
            "Microsoft.DataProtection/backupVaults/*",
            "Microsoft.DataProtection/resourceGuards/write"
        ));
    }

    #[test]
    fn contributor_writes_the_guard_but_cannot_assign_roles() {
        let d = defs();
        let c = d[CONTRIBUTOR].as_ref().unwrap();
        assert!(allows(c, "Microsoft.DataProtection/resourceGuards/write"));
        assert!(!allows(c, ASSIGN_ROLES));
        let u = d[USER_ACCESS_ADMIN].as_ref().unwrap();
        assert!(allows(u, ASSIGN_ROLES));
        assert!(!allows(u, "Microsoft.DataProtection/resourceGuards/write"));
    }

    #[test]
    fn a_requester_with_contributor_on_the_guard_is_critical_others_high() {
        let g = guard_id().to_string();
        let f = facts(vec![
            ra(&g, CONTRIBUTOR, "req-1"),
            ra(&g, CONTRIBUTOR, "other-2"),
        ]);
        let ctx = Context {
            requester_ids: ["req-1".to_string()].into(),
            ..Context::default()
        };
        let r = run(&f, &ctx);
        let sev: BTreeMap<String, Severity> = r
            .findings
            .iter()
            .map(|f| (f.principal.as_ref().unwrap().id.clone(), f.severity))
            .collect();
        assert_eq!(sev["req-1"], Severity::Critical);
        assert_eq!(sev["other-2"], Severity::High);
    }

    #[test]
    fn the_broker_and_readers_are_not_findings() {
        let g = guard_id().to_string();
        let f = facts(vec![
            ra(&g, USER_ACCESS_ADMIN, "broker"),
            ra(&g, "acdd72a7-3385-48ef-bd42-f606fba81ae7", "reader"),
        ]);
        let ctx = Context {
            broker_ids: ["broker".to_string()].into(),
            ..Context::default()
        };
        assert!(run(&f, &ctx).findings.is_empty());
    }

    #[test]
    fn standing_elevation_is_critical_unless_time_bound_or_a_twokey_window() {
        let g = guard_id().to_string();
        let op = crate::domain::policy::BACKUP_MUA_OPERATOR_ROLE;
        let mut f = facts(vec![
            ra(&g, op, "standing"),
            ra(&g, op, "pim"),
            ra(&g, op, "window"),
        ]);
        f.assignment_schedules = Ok(vec![Schedule {
            scope: g.clone(),
            role_definition_id: op.into(),
            principal_id: "pim".into(),
            principal_type: "User".into(),
            end: Some("2026-12-03T10:00:00Z".into()),
        }]);
        let ctx = Context {
            open_windows: ["window".to_string()].into(),
            ..Context::default()
        };
        let r = run(&f, &ctx);
        let ids: Vec<&str> = r.findings.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(
            ids,
            vec![format!(
                "standing-elevation:standing:{}",
                g.to_ascii_lowercase()
            )]
        );
        assert_eq!(r.findings[0].severity, Severity::Critical);
    }

    #[test]
    fn an_unreadable_definition_of_a_known_writer_still_counts() {
        let g = guard_id().to_string();
        let mut f = facts(vec![ra(&g, OWNER, "o")]);
        f.definitions.insert(OWNER.into(), Err("403".into()));
        let r = run(&f, &Context::default());
        assert_eq!(r.findings.len(), 1);
        assert_eq!(r.findings[0].category, "guard_access");
    }

    #[test]
    fn excluded_operations_are_named_in_plain_words() {
        let mut f = facts(vec![]);
        f.exclusions = Ok(vec![
            "Microsoft.RecoveryServices/vaults/backupSecurityPIN/action".into(),
        ]);
        let r = run(&f, &Context::default());
        assert_eq!(r.findings.len(), 1);
        assert!(
            r.findings[0].title.contains("security PIN"),
            "{}",
            r.findings[0].title
        );
        assert_eq!(r.findings[0].severity, Severity::High);
    }

    #[test]
    fn vault_states_each_give_their_finding() {
        let mut f = facts(vec![]);
        f.vaults = vec![
            VaultFacts {
                id: vault_id("unlinked"),
                proxies: Ok(vec![]),
                settings: Ok(VaultSettings {
                    soft_delete: Some("Disabled".into()),
                    immutability: Some("Unlocked".into()),
                }),
                assignments: Ok(vec![]),
            },
            VaultFacts {
                id: vault_id("fine"),
                proxies: Ok(vec![guard_id().to_string().to_uppercase()]),
                settings: Ok(VaultSettings {
                    soft_delete: Some("AlwaysON".into()),
                    immutability: Some("Locked".into()),
                }),
                assignments: Ok(vec![]),
            },
        ];
        let ctx = Context {
            guard_in_other_tenant: true,
            ..Context::default()
        };
        let r = run(&f, &ctx);
        let cats: BTreeSet<(String, String)> = r
            .findings
            .iter()
            .map(|f| (f.vault.clone().unwrap_or_default(), f.category.clone()))
            .collect();
        let u = vault_id("unlinked").to_string();
        assert_eq!(
            cats,
            [
                (u.clone(), "unlinked".to_string()),
                (u.clone(), "soft_delete".to_string()),
                (u, "immutability".to_string()),
            ]
            .into()
        );
        assert_eq!(r.vaults[1].link, "linked");
        assert_eq!(r.vaults[1].immutability, "locked");
        assert_eq!(r.vaults[0].immutability, "enabled-unlocked");
    }

    #[test]
    fn a_failed_read_keeps_the_previous_findings_and_diffs_as_no_change() {
        let g = guard_id().to_string();
        let ok = run(&facts(vec![ra(&g, OWNER, "o")]), &Context::default());
        let mut failing = facts(vec![]);
        failing.assignments = Err("Azure answered 503".into());
        let mut now = run(&failing, &Context::default());
        carry_over(&mut now, Some(&ok));
        let c = diff(&ok.findings, &now.findings);
        assert!(c.removed.is_empty(), "{c:?}");
        assert_eq!(c.added.len(), 1, "only the unreadable finding is new");
        assert!(
            now.findings
                .iter()
                .any(|f| f.stale && f.category == "guard_access")
        );
    }

    #[test]
    fn diff_reports_added_removed_and_severity_changes_only() {
        let g = guard_id().to_string();
        let a = run(&facts(vec![ra(&g, OWNER, "o")]), &Context::default());
        let b = run(&facts(vec![ra(&g, OWNER, "o")]), &Context::default());
        assert!(diff(&a.findings, &b.findings).is_empty());
        let ctx = Context {
            requester_ids: ["o".to_string()].into(),
            ..Context::default()
        };
        let c = run(&facts(vec![ra(&g, OWNER, "o")]), &ctx);
        let d = diff(&a.findings, &c.findings);
        assert_eq!(d.changed.len(), 1);
        let e = run(&facts(vec![]), &Context::default());
        assert_eq!(diff(&a.findings, &e.findings).removed.len(), 1);
    }

    #[test]
    fn scopes_are_named_in_words() {
        let g = guard_id().to_string();
        assert_eq!(scope_label(&g, &g), "the resource itself");
        assert!(
            scope_label(&format!("/subscriptions/{OTHER_SUB}"), &g).starts_with("subscription")
        );
        assert!(
            scope_label("/providers/Microsoft.Management/managementGroups/corp", &g)
                .contains("management group corp")
        );
        assert!(scope_label("/", &g).contains("root"));
    }
}
