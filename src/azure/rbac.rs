//! The `azure-rbac` backend: a plain `roleAssignments` PUT and DELETE (api-version 2022-04-01,
//! CONTRACTS.md §3.4) for tenants without PIM. Nothing in Azure expires such an assignment:
//! twokey's revoke job is the only end, so it retries until done, and the reconciler alerts
//! watchers when one outlives its window.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::client::{ArmClient, ArmError};
use super::{
    AssignmentRef, Elevation, ElevationError, GrantOutcome, GrantSpec, Presence, RBAC_API_VERSION,
    RevokeOutcome, parse_azure_time, role_definition_path,
};
use crate::domain::policy::ElevationBackend;
use crate::service::jobs_api::step_guid;
use crate::timefmt;

/// The marker in an assignment's description before its end time, so a repeated job (or the
/// reconciler) can read the window back from Azure.
const EXPIRES: &str = "expires ";

pub(super) fn assign_body(spec: &GrantSpec) -> Value {
    let mut desc = format!(
        "twokey request {}: {}{} UTC",
        spec.request_id,
        EXPIRES,
        timefmt::fmt_seconds(spec.end())
    );
    desc.truncate(1024);
    json!({ "properties": {
        "roleDefinitionId": role_definition_path(&spec.scope, &spec.role_definition_id),
        "principalId": spec.principal_object_id,
        // Set explicitly: avoids the replication-delay failure for new principals.
        "principalType": "User",
        "description": desc,
    }})
}

pub struct RbacBackend {
    arm: ArmClient,
}

impl RbacBackend {
    pub fn new(arm: ArmClient) -> Self {
        Self { arm }
    }

    /// The assignment's URL. One name per request: the grant creates it, the revoke deletes it.
    fn url(&self, scope: &str, request_id: &str) -> url::Url {
        let name = step_guid(request_id, "grant");
        self.arm.url(
            &format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"),
            &[("api-version", RBAC_API_VERSION)],
        )
    }

    async fn get(&self, scope: &str, request_id: &str) -> Result<Option<Value>, ArmError> {
        match self.arm.get(self.url(scope, request_id)).await {
            Ok(r) => Ok(Some(r.body)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn outcome(&self, spec: &GrantSpec, body: &Value, adopted: bool) -> GrantOutcome {
        let name = step_guid(&spec.request_id, "grant").to_string();
        let desc = body["properties"]["description"].as_str().unwrap_or("");
        // A repeated job adopts the first attempt's end, written in the description.
        let until = desc
            .split(EXPIRES)
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| parse_azure_time(&Value::String(s.to_string())));
        let window = until.map(|u| (u - time::Duration::minutes(spec.duration_minutes), u));
        GrantOutcome {
            arm_request_name: name.clone(),
            window,
            detail: json!({
                "arm_request_name": name,
                "role_assignment_id": body["id"],
                "adopted": adopted,
            }),
            simulated_body: None,
        }
    }
}

impl Elevation for RbacBackend {
    fn kind(&self) -> ElevationBackend {
        ElevationBackend::AzureRbac
    }

    fn grant<'a>(
        &'a self,
        spec: &'a GrantSpec,
    ) -> BoxFuture<'a, Result<GrantOutcome, ElevationError>> {
        Box::pin(async move {
            let scope = spec.scope.to_string();
            if let Some(b) = self.get(&scope, &spec.request_id).await? {
                return Ok(self.outcome(spec, &b, true));
            }
            match self
                .arm
                .put(self.url(&scope, &spec.request_id), &assign_body(spec))
                .await
            {
                Ok(r) => Ok(self.outcome(spec, &r.body, false)),
                Err(e) => {
                    // A lost answer, or the same name already there: look it up by name.
                    if let Ok(Some(b)) = self.get(&scope, &spec.request_id).await {
                        return Ok(self.outcome(spec, &b, true));
                    }
                    let msg = match &e {
                        ArmError::Api { message, .. } => message.clone(),
                        other => other.to_string(),
                    };
                    Err(match e.code() {
                        Some("RoleAssignmentExists") => ElevationError::Refused(format!(
                            "The requester already holds this role on the Resource Guard through an assignment twokey did not make; twokey neither duplicates nor removes it. Azure: {msg}"
                        )),
                        _ if e.is_transient() => ElevationError::Transient(e.to_string()),
                        Some("AuthorizationFailed" | "PrincipalNotFound") => {
                            ElevationError::Transient(format!(
                                "{msg} (twokey's identity needs User Access Administrator on the Resource Guard; a new user may take a few minutes to replicate)"
                            ))
                        }
                        _ => ElevationError::Refused(format!("Azure refused the assignment: {e}")),
                    })
                }
            }
        })
    }

    fn revoke<'a>(
        &'a self,
        a: &'a AssignmentRef,
    ) -> BoxFuture<'a, Result<RevokeOutcome, ElevationError>> {
        Box::pin(async move {
            let scope = a.scope.to_string();
            match self.arm.delete(self.url(&scope, &a.request_id)).await {
                Ok(r) => Ok(RevokeOutcome {
                    // 204: there was nothing to delete.
                    removed: r.status == 200,
                    detail: json!({ "arm_request_name": step_guid(&a.request_id, "grant").to_string(), "status": r.status }),
                    simulated_body: None,
                }),
                Err(e) if e.status() == Some(404) => Ok(RevokeOutcome {
                    removed: false,
                    detail: json!({ "status": 404 }),
                    simulated_body: None,
                }),
                Err(e) => Err(ElevationError::Transient(e.to_string())),
            }
        })
    }

    fn confirm<'a>(
        &'a self,
        a: &'a AssignmentRef,
    ) -> BoxFuture<'a, Result<Presence, ElevationError>> {
        Box::pin(async move {
            Ok(match self.get(&a.scope.to_string(), &a.request_id).await? {
                Some(b) => Presence::Present {
                    until: None,
                    detail: json!({ "role_assignment_id": b["id"] }),
                },
                None => Presence::Absent,
            })
        })
    }
}
