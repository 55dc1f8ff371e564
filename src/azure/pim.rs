//! The `azure-pim` backend: `roleAssignmentScheduleRequests` (api-version 2020-10-01) with
//! `AdminAssign` / `AdminRemove`, confirmed through `roleAssignmentScheduleInstances`
//! (CONTRACTS.md §3.1, §3.2). Azure expires the assignment itself at the end of
//! `AfterDuration`; twokey removes it as well.

use futures::future::BoxFuture;
use serde_json::{Value, json};
use time::Duration;

use super::client::{ArmClient, ArmError};
use super::{
    AssignmentRef, Elevation, ElevationError, GrantOutcome, GrantSpec, PIM_API_VERSION,
    PIM_MIN_ACTIVE, Presence, RevokeOutcome, iso_minutes, parse_azure_time, role_definition_path,
    same_role,
};
use crate::domain::policy::ElevationBackend;
use crate::service::jobs_api::step_guid;
use crate::timefmt;

/// Request statuses that mean the assignment is (or will be) in place.
const GRANTED: &[&str] = &["Provisioned", "Granted", "ScheduleCreated", "AdminApproved"];
/// Still on its way; poll the request.
const WAITING: &[&str] = &[
    "Accepted",
    "PendingEvaluation",
    "PendingProvisioning",
    "ProvisioningStarted",
    "PendingScheduleCreation",
    "PendingExternalProvisioning",
    "PendingRevocation",
];
/// Waiting for a human in PIM (an approval rule on the role's policy).
const PENDING_APPROVAL: &[&str] = &[
    "PendingApproval",
    "PendingApprovalProvisioning",
    "PendingAdminDecision",
];

/// An instance that started this close to our window's start is ours.
const START_SLACK: Duration = Duration::minutes(2);
/// A grant whose end differs from the approved one by more than this is not "ours".
const SAME_WINDOW_SLACK: Duration = Duration::minutes(10);

/// The body of an `AdminAssign` request for `spec` (CONTRACTS.md §3.1).
pub(super) fn assign_body(spec: &GrantSpec) -> Value {
    let mut props = json!({
        "principalId": spec.principal_object_id,
        "roleDefinitionId": role_definition_path(&spec.scope, &spec.role_definition_id),
        "requestType": "AdminAssign",
        "scheduleInfo": {
            "startDateTime": timefmt::fmt_seconds(spec.start),
            "expiration": { "type": "AfterDuration", "duration": iso_minutes(spec.duration_minutes) }
        },
        "justification": spec.justification,
    });
    if let Some(t) = &spec.ticket {
        props["ticketInfo"] = json!({ "ticketNumber": t, "ticketSystem": "twokey" });
    }
    json!({ "properties": props })
}

/// The body of the `AdminRemove` request that ends `a` early.
pub(super) fn remove_body(a: &AssignmentRef) -> Value {
    json!({ "properties": {
        "principalId": a.principal_object_id,
        "roleDefinitionId": role_definition_path(&a.scope, &a.role_definition_id),
        "requestType": "AdminRemove",
        "justification": a.justification,
    }})
}

pub struct PimBackend {
    arm: ArmClient,
}

impl PimBackend {
    pub fn new(arm: ArmClient) -> Self {
        Self { arm }
    }

    fn request_url(&self, scope: &str, name: &str) -> url::Url {
        self.arm.url(
            &format!(
                "{scope}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{name}"
            ),
            &[("api-version", PIM_API_VERSION)],
        )
    }

    /// The request named `name`, if Azure has it.
    async fn get_request(&self, scope: &str, name: &str) -> Result<Option<Value>, ArmError> {
        match self.arm.get(self.request_url(scope, name)).await {
            Ok(r) => Ok(Some(r.body)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// PUT `body` as request `name`; a lost answer is looked up by name before giving up.
    async fn put_request(&self, scope: &str, name: &str, body: &Value) -> Result<Value, ArmError> {
        match self.arm.put(self.request_url(scope, name), body).await {
            Ok(r) => {
                if r.async_operation.is_some() || r.status == 202 {
                    self.arm.wait_lro(&r).await?;
                    if let Some(b) = self.get_request(scope, name).await? {
                        return Ok(b);
                    }
                }
                Ok(r.body)
            }
            Err(e) if e.is_transient() => match self.get_request(scope, name).await {
                // The PUT arrived although its answer did not.
                Ok(Some(b)) => Ok(b),
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Poll the request while Azure is still working on it; returns its last status and body.
    async fn settle(
        &self,
        scope: &str,
        name: &str,
        mut body: Value,
    ) -> Result<(String, Value), ArmError> {
        let deadline = tokio::time::Instant::now() + self.arm.retry.lro_timeout;
        let mut pause = std::time::Duration::from_millis(500);
        loop {
            let status = body["properties"]["status"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if !WAITING.contains(&status.as_str()) || tokio::time::Instant::now() + pause > deadline
            {
                return Ok((status, body));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.arm.retry.max_retry_wait);
            if let Some(b) = self.get_request(scope, name).await? {
                body = b;
            }
        }
    }

    /// Schedule instances of `principal` at the guard's scope with the guard's role.
    async fn instances(
        &self,
        scope: &str,
        principal: &str,
        role: &str,
    ) -> Result<Vec<Value>, ArmError> {
        let filter = format!("principalId eq '{principal}'");
        let url = self.arm.url(
            &format!("{scope}/providers/Microsoft.Authorization/roleAssignmentScheduleInstances"),
            &[("api-version", PIM_API_VERSION), ("$filter", &filter)],
        );
        Ok(self
            .arm
            .list(url)
            .await?
            .into_iter()
            .filter(|i| {
                let p = &i["properties"];
                p["principalId"]
                    .as_str()
                    .is_some_and(|x| x.eq_ignore_ascii_case(principal))
                    && p["roleDefinitionId"]
                        .as_str()
                        .is_some_and(|r| same_role(r, role))
                    && p["scope"]
                        .as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case(scope))
            })
            .collect())
    }

    async fn confirm_granted(
        &self,
        spec: &GrantSpec,
        name: &str,
        request: &Value,
        adopted: bool,
    ) -> Result<GrantOutcome, ElevationError> {
        let scope = spec.scope.to_string();
        let list = self
            .instances(&scope, &spec.principal_object_id, &spec.role_definition_id)
            .await?;
        let schedule = request["properties"]["targetRoleAssignmentScheduleId"].as_str();
        let inst = list
            .iter()
            .find(|i| {
                schedule.is_some()
                    && i["properties"]["roleAssignmentScheduleId"].as_str() == schedule
            })
            .or_else(|| list.first());
        let Some(inst) = inst else {
            return Err(ElevationError::Transient(
                "PIM accepted the request but the assignment is not yet listed in roleAssignmentScheduleInstances".into(),
            ));
        };
        let p = &inst["properties"];
        let from = parse_azure_time(&p["startDateTime"]);
        let until = parse_azure_time(&p["endDateTime"]);
        Ok(GrantOutcome {
            arm_request_name: name.to_string(),
            window: from.zip(until),
            detail: json!({
                "arm_request_name": name,
                "request_status": request["properties"]["status"],
                "target_role_assignment_schedule_id": schedule,
                "instance_id": inst["id"],
                "instance_start": p["startDateTime"],
                "instance_end": p["endDateTime"],
                "adopted": adopted,
            }),
            simulated_body: None,
        })
    }

    /// `RoleAssignmentExists`: an identical assignment (same principal, role, scope and a
    /// window ending when ours would) is success; any other is a refusal.
    async fn on_exists(
        &self,
        spec: &GrantSpec,
        name: &str,
        azure_message: &str,
    ) -> Result<GrantOutcome, ElevationError> {
        let scope = spec.scope.to_string();
        if let Some(b) = self.get_request(&scope, name).await? {
            return self.confirm_granted(spec, name, &b, false).await;
        }
        let list = self
            .instances(&scope, &spec.principal_object_id, &spec.role_definition_id)
            .await?;
        if list.is_empty() {
            return Err(ElevationError::Transient(format!(
                "Azure reports RoleAssignmentExists but lists no assignment (it can linger about two minutes after a removal): {azure_message}"
            )));
        }
        let end = spec.end();
        let same = list.iter().find(|i| {
            parse_azure_time(&i["properties"]["endDateTime"])
                .is_some_and(|e| (e - end).abs() <= SAME_WINDOW_SLACK)
        });
        match same {
            Some(inst) => {
                let p = &inst["properties"];
                Ok(GrantOutcome {
                    arm_request_name: name.to_string(),
                    window: parse_azure_time(&p["startDateTime"])
                        .zip(parse_azure_time(&p["endDateTime"])),
                    detail: json!({
                        "arm_request_name": name,
                        "adopted": true,
                        "target_role_assignment_schedule_id": p["roleAssignmentScheduleId"],
                        "instance_id": inst["id"],
                        "instance_start": p["startDateTime"],
                        "instance_end": p["endDateTime"],
                        "azure": azure_message,
                    }),
                    simulated_body: None,
                })
            }
            None => {
                let other = &list[0]["properties"];
                let until = other["endDateTime"]
                    .as_str()
                    .map(|e| format!("until {e}"))
                    .unwrap_or_else(|| "with no end".into());
                Err(ElevationError::Refused(format!(
                    "The requester already holds this role on the Resource Guard through another assignment ({until}) that twokey did not make; twokey neither duplicates nor removes it. Azure: RoleAssignmentExists: {azure_message}"
                )))
            }
        }
    }

    async fn grant_inner(&self, spec: &GrantSpec) -> Result<GrantOutcome, ElevationError> {
        let scope = spec.scope.to_string();
        let name = step_guid(&spec.request_id, "grant").to_string();
        let request = match self.get_request(&scope, &name).await? {
            Some(b) => b,
            None => match self.put_request(&scope, &name, &assign_body(spec)).await {
                Ok(b) => b,
                Err(e) if e.code() == Some("RoleAssignmentExists") => {
                    return self.on_exists(spec, &name, &api_message(&e)).await;
                }
                Err(e) => return Err(grant_error(e)),
            },
        };
        let (status, request) = self.settle(&scope, &name, request).await?;
        if GRANTED.contains(&status.as_str()) {
            return self.confirm_granted(spec, &name, &request, false).await;
        }
        if PENDING_APPROVAL.contains(&status.as_str()) {
            return Err(ElevationError::Transient(format!(
                "PIM holds the request for approval ({status}); twokey's AdminAssign should not need one: check the role's PIM settings on the guard"
            )));
        }
        if WAITING.contains(&status.as_str()) {
            return Err(ElevationError::Transient(format!(
                "PIM is still working on the request ({status})"
            )));
        }
        Err(ElevationError::Refused(format!(
            "PIM ended the request as {status}"
        )))
    }
}

/// Azure's own words for an error.
fn api_message(e: &ArmError) -> String {
    match e {
        ArmError::Api { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Sort a failed `AdminAssign` PUT into retry-later or refused.
fn grant_error(e: ArmError) -> ElevationError {
    let msg = api_message(&e);
    match e.code() {
        Some("RoleAssignmentRequestPolicyValidationFailed") => {
            ElevationError::Refused(format!("Azure PIM refused the assignment: {msg}"))
        }
        _ if e.is_transient() => ElevationError::Transient(e.to_string()),
        // Possibly a role assignment still propagating; the job's retries give it time and
        // the last one says what to fix.
        Some("AuthorizationFailed" | "LinkedAuthorizationFailed") => {
            ElevationError::Transient(format!(
                "twokey's identity may not assign roles on the guard (give it User Access Administrator on the Resource Guard): {msg}"
            ))
        }
        _ => ElevationError::Refused(format!("Azure refused the assignment: {e}")),
    }
}

impl Elevation for PimBackend {
    fn kind(&self) -> ElevationBackend {
        ElevationBackend::AzurePim
    }

    fn grant<'a>(
        &'a self,
        spec: &'a GrantSpec,
    ) -> BoxFuture<'a, Result<GrantOutcome, ElevationError>> {
        Box::pin(self.grant_inner(spec))
    }

    fn revoke<'a>(
        &'a self,
        a: &'a AssignmentRef,
    ) -> BoxFuture<'a, Result<RevokeOutcome, ElevationError>> {
        Box::pin(async move {
            let scope = a.scope.to_string();
            let name = step_guid(&a.request_id, &a.step).to_string();
            let request = match self.get_request(&scope, &name).await? {
                Some(b) => b,
                None => match self.put_request(&scope, &name, &remove_body(a)).await {
                    Ok(b) => b,
                    Err(e) => {
                        let msg = api_message(&e);
                        return match e.code() {
                            Some("RoleAssignmentDoesNotExist") => Ok(RevokeOutcome {
                                removed: false,
                                detail: json!({ "arm_request_name": name, "azure": "RoleAssignmentDoesNotExist" }),
                                simulated_body: None,
                            }),
                            Some("ActiveDurationTooShort") => {
                                let at = a.active_from + PIM_MIN_ACTIVE + Duration::seconds(5);
                                Err(ElevationError::RetryAt(
                                    at,
                                    format!(
                                        "Azure PIM does not end an assignment within 5 minutes of its start (ActiveDurationTooShort); twokey ends it at {} UTC. Azure: {msg}",
                                        timefmt::fmt_seconds(at)
                                    ),
                                ))
                            }
                            _ => Err(ElevationError::Transient(e.to_string())),
                        };
                    }
                },
            };
            let (status, request) = self.settle(&scope, &name, request).await?;
            if WAITING.contains(&status.as_str()) || PENDING_APPROVAL.contains(&status.as_str()) {
                return Err(ElevationError::Transient(format!(
                    "PIM is still removing the assignment ({status})"
                )));
            }
            if !GRANTED.contains(&status.as_str()) && status != "Revoked" {
                return Err(ElevationError::Transient(format!(
                    "PIM ended the removal request as {status}"
                )));
            }
            Ok(RevokeOutcome {
                removed: true,
                detail: json!({ "arm_request_name": name, "request_status": request["properties"]["status"] }),
                simulated_body: None,
            })
        })
    }

    fn confirm<'a>(
        &'a self,
        a: &'a AssignmentRef,
    ) -> BoxFuture<'a, Result<Presence, ElevationError>> {
        Box::pin(async move {
            let scope = a.scope.to_string();
            // Ours: the schedule our request created. Only when Azure cannot say which that was
            // (no schedule id recorded or found), one that started when our window did.
            // (Never merely "within our window": a later grant to the same person is not ours.)
            let mut schedule = a.grant_detail["target_role_assignment_schedule_id"]
                .as_str()
                .map(str::to_string);
            if schedule.is_none() {
                let name = step_guid(&a.request_id, "grant").to_string();
                if let Some(r) = self.get_request(&scope, &name).await? {
                    schedule = r["properties"]["targetRoleAssignmentScheduleId"]
                        .as_str()
                        .map(str::to_string);
                }
            }
            let list = self
                .instances(&scope, &a.principal_object_id, &a.role_definition_id)
                .await?;
            let ours = list.into_iter().find(|i| {
                let p = &i["properties"];
                match schedule.as_deref() {
                    Some(id) => p["roleAssignmentScheduleId"]
                        .as_str()
                        .is_some_and(|x| x.eq_ignore_ascii_case(id)),
                    None => parse_azure_time(&p["startDateTime"])
                        .is_some_and(|s| (s - a.active_from).abs() <= START_SLACK),
                }
            });
            Ok(match ours {
                Some(i) => Presence::Present {
                    until: parse_azure_time(&i["properties"]["endDateTime"]),
                    detail: json!({ "instance_id": i["id"], "end": i["properties"]["endDateTime"] }),
                },
                None => Presence::Absent,
            })
        })
    }
}
