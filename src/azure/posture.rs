//! Reading a guard's posture from Azure: the guard (its exclusion list), the role assignments
//! at and above it (`$filter=atScope()`: resource group, subscription, management groups,
//! root), the role definitions behind them, PIM assignment and eligibility schedules, and per
//! covered vault its link (`backupResourceGuardProxies`), its security settings and who can
//! change it. Names come from Microsoft Graph when the broker may read the directory.
//!
//! Everything here is a read; nothing is changed in Azure. Each read is kept as its value or
//! the reason it failed, and `domain::posture` decides what it means.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Value, json};

use super::client::{ArmClient, RetryPolicy};
use super::credential::Credential;
use super::{BACKUP_API_VERSION, Elevations, PIM_API_VERSION, RBAC_API_VERSION};
use crate::config::{AzureConfig, CredentialConfig};
use crate::domain::arm::{VaultId, VaultKind};
use crate::domain::policy::GuardPolicy;
use crate::domain::posture::{
    GuardFacts, Permission, PrincipalRef, Read, RoleAssignment, RoleDefinition, Schedule,
    VaultFacts, VaultSettings, role_guid,
};

/// The object id the simulated broker pretends to have.
pub const SIMULATED_BROKER_ID: &str = "00000000-0000-4000-8000-0000000b40c0";

/// What was read for one guard, plus who the broker is on each side.
pub struct Collected {
    pub facts: GuardFacts,
    /// The broker's object ids (guard tenant and home tenant).
    pub broker_ids: BTreeSet<String>,
    /// Principal ids seen at the guard (guard tenant) and at the vaults (home tenant).
    pub guard_principals: BTreeSet<String>,
    pub vault_principals: BTreeSet<String>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn assignments_of(items: &[Value]) -> Vec<RoleAssignment> {
    items
        .iter()
        .map(|i| {
            let p = &i["properties"];
            RoleAssignment {
                id: i["id"].as_str().unwrap_or_default().to_string(),
                scope: p["scope"].as_str().unwrap_or_default().to_string(),
                role_definition_id: p["roleDefinitionId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                principal_id: p["principalId"].as_str().unwrap_or_default().to_string(),
                principal_type: p["principalType"].as_str().unwrap_or("Unknown").to_string(),
            }
        })
        .filter(|a| !a.principal_id.is_empty())
        .collect()
}

fn schedules_of(items: &[Value]) -> Vec<Schedule> {
    items
        .iter()
        .map(|i| {
            let p = &i["properties"];
            Schedule {
                scope: p["scope"].as_str().unwrap_or_default().to_string(),
                role_definition_id: p["roleDefinitionId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                principal_id: p["principalId"].as_str().unwrap_or_default().to_string(),
                principal_type: p["principalType"].as_str().unwrap_or("Unknown").to_string(),
                end: p["endDateTime"].as_str().map(str::to_string),
            }
        })
        .filter(|s| !s.principal_id.is_empty())
        .collect()
}

fn definition_of(body: &Value) -> RoleDefinition {
    let p = &body["properties"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    RoleDefinition {
        name: p["roleName"]
            .as_str()
            .unwrap_or("(unnamed role)")
            .to_string(),
        custom: p["type"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("CustomRole")),
        permissions: p["permissions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|b| Permission {
                        actions: strings(&b["actions"]),
                        not_actions: strings(&b["notActions"]),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The ARM path of a role definition, rebuilt from its GUIDs.
///
/// SECURITY: ids come from Azure's answers; only the parsed GUIDs go into the path, so an
/// odd answer cannot make twokey call another path (and send its token there).
fn definition_path(role_definition_id: &str, fallback_sub: &str) -> Option<String> {
    let guid = uuid::Uuid::parse_str(&role_guid(role_definition_id)).ok()?;
    let parts: Vec<&str> = role_definition_id
        .trim_start_matches('/')
        .split('/')
        .collect();
    let sub = match parts.as_slice() {
        ["subscriptions", s, ..] => uuid::Uuid::parse_str(s).ok()?.to_string(),
        _ => uuid::Uuid::parse_str(fallback_sub).ok()?.to_string(),
    };
    Some(format!(
        "/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{guid}"
    ))
}

async fn list(arm: &ArmClient, path: &str, api: &str, filter: Option<&str>) -> Read<Vec<Value>> {
    let mut q = vec![("api-version", api)];
    if let Some(f) = filter {
        q.push(("$filter", f));
    }
    arm.list(arm.url(path, &q)).await.map_err(err)
}

async fn read_definitions(
    arm: &ArmClient,
    ids: impl Iterator<Item = String>,
    sub: &str,
    into: &mut BTreeMap<String, Read<RoleDefinition>>,
) {
    let mut seen = BTreeSet::new();
    for id in ids {
        let guid = role_guid(&id);
        if into.contains_key(&guid) || !seen.insert(guid.clone()) {
            continue;
        }
        let read = match definition_path(&id, sub) {
            None => Err(format!("`{id}` is not a role definition id")),
            Some(path) => arm
                .get(arm.url(&path, &[("api-version", RBAC_API_VERSION)]))
                .await
                .map(|r| definition_of(&r.body))
                .map_err(err),
        };
        into.insert(guid, read);
    }
}

/// The vaults a guard covers: exact ids as given, a resource group's vaults for `…/vaults/*`
/// style patterns; patterns with a wildcard subscription or resource group cannot be listed.
async fn covered_vaults(arm: &ArmClient, g: &GuardPolicy) -> (Vec<VaultId>, Vec<String>) {
    let mut vaults: Vec<VaultId> = Vec::new();
    let mut notes = Vec::new();
    for p in &g.vaults {
        if let Some(v) = p.is_exact() {
            vaults.push(v);
            continue;
        }
        let Some((sub, rg)) = p.exact_resource_group() else {
            notes.push(format!(
                "vaults `{p}` not looked at: a wildcard subscription or resource group cannot be listed; name the vaults or their resource group"
            ));
            continue;
        };
        let path = format!(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/{}/{}",
            p.kind().provider(),
            p.kind().resource_type()
        );
        match list(arm, &path, BACKUP_API_VERSION, None).await {
            Ok(items) => {
                let found: Vec<VaultId> = items
                    .iter()
                    .filter_map(|i| i["id"].as_str().and_then(|id| VaultId::parse(id).ok()))
                    .filter(|v| p.matches(v))
                    .collect();
                if found.is_empty() {
                    notes.push(format!("vaults `{p}`: no vault matches in {rg}"));
                }
                vaults.extend(found);
            }
            Err(e) => notes.push(format!(
                "vaults `{p}` could not be listed ({e}): give the broker Reader on resource group {rg}"
            )),
        }
    }
    vaults.sort_by_key(|v| v.to_string().to_ascii_lowercase());
    vaults.dedup();
    (vaults, notes)
}

fn settings_of(kind: VaultKind, body: &Value) -> VaultSettings {
    let s = &body["properties"]["securitySettings"];
    VaultSettings {
        soft_delete: match kind {
            VaultKind::RecoveryServices => s["softDeleteSettings"]["softDeleteState"].as_str(),
            VaultKind::Backup => s["softDeleteSettings"]["state"].as_str(),
        }
        .map(str::to_string),
        immutability: s["immutabilitySettings"]["state"]
            .as_str()
            .map(str::to_string),
    }
}

/// Read everything about one Azure guard.
pub async fn collect(elev: &Elevations, g: &GuardPolicy) -> Collected {
    let name = g.name.as_str();
    let mut out = Collected {
        facts: GuardFacts {
            exclusions: Err("no [azure] section in the configuration".into()),
            assignments: Err("no [azure] section in the configuration".into()),
            assignment_schedules: Err("no [azure] section in the configuration".into()),
            eligibility: Err("no [azure] section in the configuration".into()),
            definitions: BTreeMap::new(),
            vaults: Vec::new(),
            unlisted: Vec::new(),
        },
        broker_ids: BTreeSet::new(),
        guard_principals: BTreeSet::new(),
        vault_principals: BTreeSet::new(),
    };
    let Some(arm) = elev.guard_arm(name) else {
        return out;
    };
    let guard_id = g.resource_guard_id.to_string();
    let guard_sub = g.resource_guard_id.subscription().to_string();
    if let Ok(t) = arm.credential().token().await
        && let Some(oid) = super::check::object_id_of(t.expose())
    {
        out.broker_ids.insert(oid.to_ascii_lowercase());
    }
    // The guard itself.
    out.facts.exclusions = arm
        .get(arm.url(&guard_id, &[("api-version", BACKUP_API_VERSION)]))
        .await
        .map(|r| {
            r.body["properties"]["vaultCriticalOperationExclusionList"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        })
        .map_err(err);
    // Who holds what at or above the guard.
    let auth = format!("{guard_id}/providers/Microsoft.Authorization");
    out.facts.assignments = list(
        &arm,
        &format!("{auth}/roleAssignments"),
        RBAC_API_VERSION,
        Some("atScope()"),
    )
    .await
    .map(|v| assignments_of(&v));
    out.facts.assignment_schedules = list(
        &arm,
        &format!("{auth}/roleAssignmentSchedules"),
        PIM_API_VERSION,
        Some("atScope()"),
    )
    .await
    .map(|v| schedules_of(&v));
    out.facts.eligibility = list(
        &arm,
        &format!("{auth}/roleEligibilitySchedules"),
        PIM_API_VERSION,
        Some("atScope()"),
    )
    .await
    .map(|v| schedules_of(&v));
    let mut role_ids: Vec<String> = Vec::new();
    for a in out.facts.assignments.iter().flatten() {
        role_ids.push(a.role_definition_id.clone());
        out.guard_principals
            .insert(a.principal_id.to_ascii_lowercase());
    }
    for s in out.facts.eligibility.iter().flatten() {
        role_ids.push(s.role_definition_id.clone());
        out.guard_principals
            .insert(s.principal_id.to_ascii_lowercase());
    }
    read_definitions(
        &arm,
        role_ids.into_iter(),
        &guard_sub,
        &mut out.facts.definitions,
    )
    .await;

    // The vaults, read in the home tenant (with the guard tenant's token as auxiliary when
    // the guard lives elsewhere, as for the preflight: CONTRACTS.md §1.5).
    let home = elev.home_arm.clone().unwrap_or_else(|| arm.clone());
    if let Ok(t) = home.credential().token().await
        && let Some(oid) = super::check::object_id_of(t.expose())
    {
        out.broker_ids.insert(oid.to_ascii_lowercase());
    }
    let vault_arm = if elev.cross_tenant(name) {
        // SECURITY: the aux header carries the guard tenant's token only to ARM itself.
        home.clone().with_aux(vec![arm.credential().clone()])
    } else {
        home.clone()
    };
    let (vaults, notes) = covered_vaults(&home, g).await;
    out.facts.unlisted = notes;
    let mut vault_roles: Vec<(String, String)> = Vec::new();
    for v in vaults {
        let vid = v.to_string();
        let proxies = list(
            &vault_arm,
            &format!("{vid}/backupResourceGuardProxies"),
            BACKUP_API_VERSION,
            None,
        )
        .await
        .map(|items| {
            items
                .iter()
                .filter_map(|i| {
                    i["properties"]["resourceGuardResourceId"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect()
        });
        let settings = home
            .get(home.url(&vid, &[("api-version", BACKUP_API_VERSION)]))
            .await
            .map(|r| settings_of(v.kind(), &r.body))
            .map_err(err);
        let assignments = list(
            &home,
            &format!("{vid}/providers/Microsoft.Authorization/roleAssignments"),
            RBAC_API_VERSION,
            Some("atScope()"),
        )
        .await
        .map(|x| assignments_of(&x));
        for a in assignments.iter().flatten() {
            vault_roles.push((a.role_definition_id.clone(), v.subscription().to_string()));
            out.vault_principals
                .insert(a.principal_id.to_ascii_lowercase());
        }
        out.facts.vaults.push(VaultFacts {
            id: v,
            proxies,
            settings,
            assignments,
        });
    }
    for (role, sub) in vault_roles {
        read_definitions(
            &home,
            std::iter::once(role),
            &sub,
            &mut out.facts.definitions,
        )
        .await;
    }
    out
}

/// A small, fixed posture for `simulated` guards (the demo): every vault linked, soft delete
/// on, immutability locked on Recovery Services vaults and unlocked on Backup vaults, the
/// broker as the only one holding a role on the guard. Whatever the ids make of the guard's
/// placement (the demo keeps guard and vaults in one subscription) shows as a finding too.
pub fn simulated(g: &GuardPolicy) -> Collected {
    let guard_id = g.resource_guard_id.to_string();
    let uaa = "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9";
    let mut definitions = BTreeMap::new();
    definitions.insert(
        uaa.to_string(),
        Ok(RoleDefinition {
            name: "User Access Administrator".into(),
            custom: false,
            permissions: vec![Permission {
                actions: vec!["*/read".into(), "Microsoft.Authorization/*".into()],
                not_actions: vec![],
            }],
        }),
    );
    let vaults = g
        .vaults
        .iter()
        .filter_map(|p| p.is_exact())
        .map(|v| {
            let (soft, immut) = match v.kind() {
                VaultKind::RecoveryServices => ("AlwaysON", "Locked"),
                VaultKind::Backup => ("On", "Unlocked"),
            };
            VaultFacts {
                id: v,
                proxies: Ok(vec![guard_id.clone()]),
                settings: Ok(VaultSettings {
                    soft_delete: Some(soft.into()),
                    immutability: Some(immut.into()),
                }),
                assignments: Ok(vec![]),
            }
        })
        .collect();
    Collected {
        facts: GuardFacts {
            exclusions: Ok(vec![]),
            assignments: Ok(vec![RoleAssignment {
                id: format!(
                    "{guard_id}/providers/Microsoft.Authorization/roleAssignments/00000000-0000-4000-8000-00000000b40c"
                ),
                scope: guard_id.clone(),
                role_definition_id: format!(
                    "/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/{uaa}",
                    g.resource_guard_id.subscription()
                ),
                principal_id: SIMULATED_BROKER_ID.into(),
                principal_type: "ServicePrincipal".into(),
            }]),
            assignment_schedules: Ok(vec![]),
            eligibility: Ok(vec![]),
            definitions,
            vaults,
            unlisted: Vec::new(),
        },
        broker_ids: [SIMULATED_BROKER_ID.to_string()].into(),
        guard_principals: BTreeSet::new(),
        vault_principals: BTreeSet::new(),
    }
}

/// Microsoft Graph, for names (`directoryObjects/getByIds`), as one identity in one tenant.
pub struct Graph {
    client: ArmClient,
}

impl Graph {
    /// A Graph client for the tenant of `cred` (the audience is the Graph endpoint).
    pub fn new(cfg: &AzureConfig, cred: &CredentialConfig) -> Result<Self, String> {
        let http = super::client::http_client(cfg)?;
        let credential = Arc::new(Credential::new(
            cred.clone(),
            http.clone(),
            cfg.authority_host.clone(),
            &cfg.graph_endpoint,
        ));
        let retry = RetryPolicy {
            max_retries: cfg.max_retries.min(2),
            max_retry_wait: cfg.max_retry_wait,
            lro_timeout: cfg.lro_timeout,
        };
        Ok(Self {
            client: ArmClient::new(http, cfg.graph_endpoint.clone(), credential, retry),
        })
    }

    /// Names for `ids` (GUIDs only; others are skipped), 1000 per call as Graph allows.
    pub async fn names(
        &self,
        ids: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, PrincipalRef>, String> {
        let ids: Vec<String> = ids
            .iter()
            .filter(|i| uuid::Uuid::parse_str(i).is_ok())
            .cloned()
            .collect();
        let mut out = BTreeMap::new();
        for chunk in ids.chunks(1000) {
            let url = self.client.url("/v1.0/directoryObjects/getByIds", &[]);
            let body = json!({ "ids": chunk, "types": ["user", "group", "servicePrincipal"] });
            let r = self.client.post(url, &body).await.map_err(err)?;
            for o in r.body["value"].as_array().into_iter().flatten() {
                let Some(id) = o["id"].as_str() else { continue };
                let kind = match o["@odata.type"].as_str().unwrap_or("") {
                    "#microsoft.graph.user" => "User",
                    "#microsoft.graph.group" => "Group",
                    "#microsoft.graph.servicePrincipal" => "ServicePrincipal",
                    _ => "",
                };
                let name = o["displayName"]
                    .as_str()
                    .map(|s| s.chars().take(200).collect());
                let upn = o["userPrincipalName"]
                    .as_str()
                    .or(o["mail"].as_str())
                    .map(|s| s.chars().take(200).collect());
                out.insert(
                    id.to_ascii_lowercase(),
                    PrincipalRef {
                        id: id.to_string(),
                        kind: kind.to_string(),
                        name,
                        upn,
                    },
                );
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_paths_are_rebuilt_from_guids_only() {
        let sub = "11111111-2222-3333-4444-555555555555";
        let g = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
        assert_eq!(
            definition_path(
                &format!("/providers/Microsoft.Authorization/roleDefinitions/{g}"),
                sub
            ),
            Some(format!(
                "/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{g}"
            ))
        );
        let other = "99999999-2222-3333-4444-555555555555";
        assert_eq!(
            definition_path(
                &format!(
                    "/subscriptions/{other}/providers/Microsoft.Authorization/roleDefinitions/{g}"
                ),
                sub
            ),
            Some(format!(
                "/subscriptions/{other}/providers/Microsoft.Authorization/roleDefinitions/{g}"
            ))
        );
        assert_eq!(definition_path("/../../evil?x=1", sub), None);
        assert_eq!(
            definition_path(
                &format!(
                    "/subscriptions/..%2f/providers/Microsoft.Authorization/roleDefinitions/{g}"
                ),
                sub
            ),
            None
        );
    }
}
