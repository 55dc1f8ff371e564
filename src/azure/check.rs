//! `twokey check-azure`: a preflight per guard. Can the broker get a token, read the guard,
//! see the vaults linked to it, and create and remove role requests at its scope? Nothing is
//! changed in Azure: the PIM write is probed with the `validate` dry run (CONTRACTS.md §3.1),
//! and a plain role assignment write (which has no dry run) is named, not tried.

use serde_json::{Value, json};

use super::client::{ArmClient, ArmError};
use super::{
    BACKUP_API_VERSION, Elevations, PIM_API_VERSION, RBAC_API_VERSION, role_definition_path,
};
use crate::domain::arm::{VaultId, VaultKind};
use crate::domain::policy::{ElevationBackend, GuardPolicy};

/// One line of the table.
#[derive(Debug, Clone)]
pub struct CheckRow {
    pub guard: String,
    pub check: String,
    pub ok: Option<bool>,
    /// What was seen, or the fix.
    pub note: String,
}

impl CheckRow {
    fn new(
        guard: &str,
        check: impl Into<String>,
        ok: Option<bool>,
        note: impl Into<String>,
    ) -> Self {
        Self {
            guard: guard.into(),
            check: check.into(),
            ok,
            note: note.into(),
        }
    }
}

/// The `oid` claim of an Entra access token (read, not verified: it is our own token).
pub(crate) fn object_id_of(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["oid"].as_str().map(str::to_string)
}

fn forbidden(e: &ArmError) -> bool {
    matches!(e.status(), Some(401 | 403))
}

/// Run every check; `principal` is the object id used in the PIM dry run (default: the
/// broker's own, from its token).
pub async fn run(
    elev: &Elevations,
    guards: &[GuardPolicy],
    principal: Option<&str>,
) -> Vec<CheckRow> {
    let mut rows = Vec::new();
    for g in guards.iter().filter(|g| g.elevation.needs_object_id()) {
        let name = g.name.as_str();
        let Some(arm) = elev.guard_arm(name) else {
            rows.push(CheckRow::new(
                name,
                "configuration",
                Some(false),
                "no [azure] section",
            ));
            continue;
        };
        let cred = arm.credential().clone();
        let who = format!(
            "{} {}",
            cred.kind().as_str(),
            cred.client_id().unwrap_or("(system-assigned)")
        );
        let token = match cred.token().await {
            Ok(t) => {
                rows.push(CheckRow::new(
                    name,
                    format!("token for tenant {}", cred.tenant_id()),
                    Some(true),
                    who.clone(),
                ));
                t
            }
            Err(e) => {
                rows.push(CheckRow::new(
                    name,
                    format!("token for tenant {}", cred.tenant_id()),
                    Some(false),
                    format!("{e}; fix [azure] credential settings{}", if elev.cross_tenant(name) { " (a guard in another tenant needs a multi-tenant app with a service principal there)" } else { "" }),
                ));
                continue;
            }
        };
        let guard_id = g.resource_guard_id.to_string();
        // The guard itself.
        let read = arm
            .get(arm.url(&guard_id, &[("api-version", BACKUP_API_VERSION)]))
            .await;
        rows.push(match read {
            Ok(r) => CheckRow::new(
                name,
                "read the Resource Guard",
                Some(true),
                format!(
                    "{} ({})",
                    r.body["name"]
                        .as_str()
                        .unwrap_or(g.resource_guard_id.name()),
                    r.body["location"].as_str().unwrap_or("?")
                ),
            ),
            Err(e) if forbidden(&e) => CheckRow::new(
                name,
                "read the Resource Guard",
                Some(false),
                format!("give {who} the Reader role on {guard_id}"),
            ),
            Err(e) if e.status() == Some(404) => CheckRow::new(
                name,
                "read the Resource Guard",
                Some(false),
                format!("not found: check guards.resource_guard_id ({e})"),
            ),
            Err(e) => CheckRow::new(name, "read the Resource Guard", Some(false), e.to_string()),
        });
        // The vaults linked to it, read in the vault's (home) tenant.
        let home = elev.home_arm.clone().unwrap_or_else(|| arm.clone());
        let vault_arm = if elev.cross_tenant(name) {
            // SECURITY: the aux header carries the guard tenant's token only to ARM itself.
            home.clone().with_aux(vec![cred.clone()])
        } else {
            home.clone()
        };
        rows.extend(linked_vaults(&vault_arm, g).await);
        // Writing role requests at the guard's scope.
        let me = principal
            .map(str::to_string)
            .or_else(|| object_id_of(token.expose()));
        match g.elevation {
            ElevationBackend::AzurePim => {
                rows.extend(pim_checks(&arm, g, me.as_deref(), &who).await)
            }
            _ => rows.extend(rbac_checks(&arm, g, &who).await),
        }
    }
    rows
}

async fn linked_vaults(arm: &ArmClient, g: &GuardPolicy) -> Vec<CheckRow> {
    let name = g.name.as_str();
    let mut vaults: Vec<VaultId> = Vec::new();
    let mut rows = Vec::new();
    for p in &g.vaults {
        if let Some(v) = p.is_exact() {
            vaults.push(v);
            continue;
        }
        let Some((sub, rg)) = p.exact_resource_group() else {
            rows.push(CheckRow::new(name, format!("vaults {p}"), None, "not listed: a wildcard subscription or resource group; name vaults exactly to check their link"));
            continue;
        };
        let url = arm.url(
            &format!(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/{}/{}",
                p.kind().provider(),
                p.kind().resource_type()
            ),
            &[("api-version", BACKUP_API_VERSION)],
        );
        match arm.list(url).await {
            Ok(items) => {
                let found: Vec<VaultId> = items
                    .iter()
                    .filter_map(|i| i["id"].as_str().and_then(|id| VaultId::parse(id).ok()))
                    .filter(|v| p.matches(v))
                    .collect();
                if found.is_empty() {
                    rows.push(CheckRow::new(
                        name,
                        format!("vaults {p}"),
                        None,
                        "no vault matches the pattern",
                    ));
                }
                vaults.extend(found);
            }
            Err(e) => rows.push(CheckRow::new(
                name,
                format!("list vaults in {rg}"),
                Some(false),
                if forbidden(&e) {
                    format!("give the broker Reader on resource group {rg}")
                } else {
                    e.to_string()
                },
            )),
        }
    }
    for v in vaults {
        let check = format!("vault {} linked", v.name());
        let url = arm.url(
            &format!("{v}/backupResourceGuardProxies"),
            &[("api-version", BACKUP_API_VERSION)],
        );
        rows.push(match arm.list(url).await {
            Ok(items) => {
                let linked = items.iter().any(|i| {
                    i["properties"]["resourceGuardResourceId"]
                        .as_str()
                        .is_some_and(|id| id.eq_ignore_ascii_case(&g.resource_guard_id.to_string()))
                });
                let proxy = match v.kind() {
                    VaultKind::RecoveryServices => "VaultProxy",
                    _ => "DppResourceGuardProxy",
                };
                if linked {
                    CheckRow::new(name, check, Some(true), format!("{proxy} → this guard"))
                } else if items.is_empty() {
                    CheckRow::new(name, check, Some(false), "MUA is off for this vault: link it to the guard (vault → Properties → Multi-user authorization); the backup admin needs Reader on the guard for that")
                } else {
                    CheckRow::new(name, check, Some(false), "linked to another Resource Guard: fix guards.resource_guard_id or the vault's link")
                }
            }
            Err(e) if forbidden(&e) => CheckRow::new(name, check, Some(false), format!("give the broker Reader (or Backup Reader) on {v}")),
            Err(e) if e.status() == Some(404) => CheckRow::new(name, check, Some(false), "vault not found: check guards.vaults"),
            Err(e) => CheckRow::new(name, check, Some(false), e.to_string()),
        });
    }
    rows
}

async fn pim_checks(
    arm: &ArmClient,
    g: &GuardPolicy,
    me: Option<&str>,
    who: &str,
) -> Vec<CheckRow> {
    let name = g.name.as_str();
    let scope = g.resource_guard_id.to_string();
    let mut rows = Vec::new();
    let fix = format!(
        "give {who} the User Access Administrator role on {scope} (Microsoft.Authorization/roleAssignments/write), and put the guard's subscription under PIM management"
    );
    let Some(me) = me else {
        rows.push(CheckRow::new(
            name,
            "create schedule requests (validate)",
            None,
            "not probed: the token has no oid claim; pass --principal <object id>",
        ));
        return rows;
    };
    let role = role_definition_path(&g.resource_guard_id, &g.role_definition_id);
    for (check, request_type, fine) in [
        (
            "create schedule requests (AdminAssign, validate only)",
            "AdminAssign",
            &["RoleAssignmentExists"][..],
        ),
        (
            "remove schedule requests (AdminRemove, validate only)",
            "AdminRemove",
            &["RoleAssignmentDoesNotExist", "ActiveDurationTooShort"][..],
        ),
    ] {
        let mut props = json!({
            "principalId": me,
            "roleDefinitionId": role,
            "requestType": request_type,
            "justification": "twokey check-azure (validate only: nothing is assigned)",
        });
        if request_type == "AdminAssign" {
            props["scheduleInfo"] =
                json!({ "expiration": { "type": "AfterDuration", "duration": "PT5M" } });
        }
        let url = arm.url(
            &format!("{scope}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{}/validate", uuid::Uuid::new_v4()),
            &[("api-version", PIM_API_VERSION)],
        );
        rows.push(match arm.post(url, &json!({ "properties": props })).await {
            Ok(_) => CheckRow::new(name, check, Some(true), "allowed"),
            Err(e) if e.code().is_some_and(|c| fine.contains(&c)) => CheckRow::new(name, check, Some(true), format!("allowed ({})", e.code().unwrap_or(""))),
            Err(e) if forbidden(&e) => CheckRow::new(name, check, Some(false), fix.clone()),
            Err(e) if e.code() == Some("RoleAssignmentRequestPolicyValidationFailed") => CheckRow::new(name, check, Some(false), format!("the role's PIM policy refuses it: {e}; check Expiration_Admin_Assignment and Enablement_Admin_Assignment on the role's policy at the guard")),
            Err(e) => CheckRow::new(name, check, Some(false), e.to_string()),
        });
    }
    let url = arm.url(
        &format!("{scope}/providers/Microsoft.Authorization/roleAssignmentScheduleInstances"),
        &[("api-version", PIM_API_VERSION), ("$filter", "atScope()")],
    );
    rows.push(match arm.list(url).await {
        Ok(v) => CheckRow::new(
            name,
            "read schedule instances",
            Some(true),
            format!("{} active at the guard", v.len()),
        ),
        Err(e) if forbidden(&e) => CheckRow::new(name, "read schedule instances", Some(false), fix),
        Err(e) => CheckRow::new(name, "read schedule instances", Some(false), e.to_string()),
    });
    rows
}

async fn rbac_checks(arm: &ArmClient, g: &GuardPolicy, who: &str) -> Vec<CheckRow> {
    let name = g.name.as_str();
    let scope = g.resource_guard_id.to_string();
    let url = arm.url(
        &format!("{scope}/providers/Microsoft.Authorization/roleAssignments"),
        &[("api-version", RBAC_API_VERSION), ("$filter", "atScope()")],
    );
    let mut rows = vec![match arm.list(url).await {
        Ok(v) => CheckRow::new(
            name,
            "read role assignments",
            Some(true),
            format!("{} at or above the guard", v.len()),
        ),
        Err(e) if forbidden(&e) => CheckRow::new(
            name,
            "read role assignments",
            Some(false),
            format!("give {who} User Access Administrator on {scope}"),
        ),
        Err(e) => CheckRow::new(name, "read role assignments", Some(false), e.to_string()),
    }];
    rows.push(CheckRow::new(
        name,
        "create/delete role assignments",
        None,
        format!("not probed (ARM has no dry run for it): {who} needs User Access Administrator on {scope}"),
    ));
    rows
}

/// The table, fixed-width, one check a line.
pub fn render(rows: &[CheckRow]) -> String {
    let w_guard = rows.iter().map(|r| r.guard.len()).max().unwrap_or(5).max(5);
    let w_check = rows.iter().map(|r| r.check.len()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "{:w_guard$}  {:w_check$}  {:7}  {}\n",
        "GUARD", "CHECK", "RESULT", "DETAIL / FIX"
    );
    for r in rows {
        let res = match r.ok {
            Some(true) => "ok",
            Some(false) => "MISSING",
            None => "skipped",
        };
        out.push_str(&format!(
            "{:w_guard$}  {:w_check$}  {:7}  {}\n",
            r.guard, r.check, res, r.note
        ));
    }
    out
}
