//! The Azure elevation backends against the fake ARM server: request bodies as the specs
//! define them, exactly-once grants through faults, the documented errors, tokens, the
//! reconciler and the preflight.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use serde_json::{Value, json};
use time::Duration;

use crate::both_backends;
use crate::fake_arm::*;
use crate::helpers::*;
use twokey::clock::ManualClock;
use twokey::config::{RawAzure, RawConfig};

pub const GUARD: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-security/providers/Microsoft.DataProtection/resourceGuards/guard-prod";
pub const ROLE: &str = "f54b6d04-23c6-443e-b462-9c16ab7b4a52";

both_backends!(
    pim_grant_and_revoke_send_the_approved_role_scope_principal_and_window,
    rbac_grant_and_revoke_create_and_delete_one_plain_assignment,
    a_throttled_grant_waits_for_retry_after_and_happens_once,
    server_errors_500_and_503_are_retried_and_the_grant_happens_once,
    an_answer_that_times_out_is_not_a_second_grant,
    a_connection_reset_is_retried_and_the_grant_happens_once,
    a_long_running_operation_is_polled_until_done,
    an_identical_existing_assignment_counts_as_the_grant,
    a_different_existing_assignment_fails_the_request_with_a_message,
    a_policy_validation_failure_fails_the_request_with_azures_message,
    an_early_end_within_five_minutes_waits_for_the_floor_and_says_so,
    the_reconciler_removes_an_assignment_found_after_its_window,
    the_reconciler_leaves_a_later_grant_to_the_same_person_alone,
    a_grant_that_gave_up_after_reaching_azure_is_taken_back,
    an_rbac_assignment_that_outlives_its_window_alerts_watchers,
    a_guard_in_another_tenant_uses_that_tenants_token,
);

/// `raw` with every guard on `backend`, talking to `fake`.
pub fn azure_config(raw: &mut RawConfig, fake: &FakeArm, backend: &str) {
    raw.azure = RawAzure {
        tenant_id: Some(HOME_TENANT.into()),
        credential: Some("client-secret".into()),
        client_id: Some(CLIENT_ID.into()),
        client_secret: Some(CLIENT_SECRET.into()),
        arm_endpoint: Some(fake.base.clone()),
        authority_host: Some(fake.base.clone()),
        managed_identity_endpoint: Some(fake.base.clone()),
        timeout: Some("2s".into()),
        connect_timeout: Some("2s".into()),
        max_retries: Some(4),
        max_retry_wait: Some("3s".into()),
        lro_timeout: Some("20s".into()),
        reconcile_interval: Some("5m".into()),
        ..RawAzure::default()
    };
    for g in &mut raw.guards {
        g.elevation = Some(backend.into());
    }
}

pub async fn spawn_azure(b: Backend, fake: &FakeArm, backend: &str) -> TestApp {
    spawn_azure_with(b, fake, backend, |_| {}).await
}

pub async fn spawn_azure_with(
    b: Backend,
    fake: &FakeArm,
    backend: &str,
    change: impl FnOnce(&mut RawConfig),
) -> TestApp {
    let db = TestDb::new(b).await;
    let mut raw = test_config(&db.dir(), &db.url);
    azure_config(&mut raw, fake, backend);
    change(&mut raw);
    TestApp::spawn_on(db, raw, Arc::new(ManualClock::new(start_time()))).await
}

/// Alice asks (30 minutes on the demo-single guard), Bob approves, the jobs run.
pub async fn approved_and_settled(app: &TestApp) -> String {
    let alice = app.client_as("alice@demo.twokey").await;
    let bob = app.client_as("bob@demo.twokey").await;
    let id = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(bob.decide(&id, "approve").await.1["state"], "approved");
    app.settle().await;
    id
}

async fn view(app: &TestApp, id: &str) -> Value {
    let bob = app.client_as("bob@demo.twokey").await;
    let (s, v) = bob.get_json(&format!("/api/v1/requests/{id}")).await;
    assert_eq!(s, 200, "{v}");
    v
}

fn assert_spec_clean(fake: &FakeArm) {
    assert_eq!(
        fake.violations(),
        Vec::<String>::new(),
        "requests outside the spec"
    );
}

fn assign_puts(fake: &FakeArm) -> Vec<crate::fake_arm::Call> {
    fake.calls_to("PUT", "/roleAssignmentScheduleRequests/")
        .into_iter()
        .filter(|c| c.body["properties"]["requestType"] == "AdminAssign")
        .collect()
}

/// The grant happened exactly once: one assignment, one request name.
async fn assert_granted_once(app: &TestApp, fake: &FakeArm, id: &str) {
    assert_eq!(
        app.client_as("alice@demo.twokey").await.state(id).await,
        "active"
    );
    assert_eq!(fake.created_instances().len(), 1, "exactly one assignment");
    assert_eq!(fake.instances().len(), 1);
    let names: std::collections::BTreeSet<String> =
        assign_puts(fake).iter().map(|c| c.path.clone()).collect();
    assert_eq!(names.len(), 1, "one ARM request name: {names:?}");
    assert_eq!(app.audit_count("grant.active", Some(id)).await, 1);
    assert_spec_clean(fake);
}

async fn pim_grant_and_revoke_send_the_approved_role_scope_principal_and_window(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn_azure(b, &fake, "azure-pim").await;
    let id = approved_and_settled(&app).await;
    assert_granted_once(&app, &fake, &id).await;

    let put = &assign_puts(&fake)[0];
    let name = twokey::service::jobs_api::step_guid(&id, "grant").to_string();
    assert_eq!(
        put.path,
        format!("{GUARD}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{name}")
    );
    assert!(put.query.contains("api-version=2020-10-01"));
    assert_eq!(put.tenant.as_deref(), Some(HOME_TENANT));
    let p = &put.body["properties"];
    assert_eq!(p["principalId"], ALICE_OID);
    assert_eq!(
        p["roleDefinitionId"],
        format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{ROLE}")
    );
    assert_eq!(p["scheduleInfo"]["startDateTime"], "2026-12-03T09:00:00Z");
    assert_eq!(
        p["scheduleInfo"]["expiration"],
        json!({ "type": "AfterDuration", "duration": "PT30M" })
    );
    assert_eq!(p["ticketInfo"]["ticketNumber"], "CHG-1234");
    assert!(p["justification"].as_str().unwrap().contains("CHG-1234"));
    // Confirmed through the schedule instances.
    assert!(
        !fake
            .calls_to("GET", "/roleAssignmentScheduleInstances")
            .is_empty()
    );
    let v = view(&app, &id).await;
    assert_eq!(v["active_from"], "2026-12-03T09:00:00.000000Z");
    assert_eq!(v["active_until"], "2026-12-03T09:30:00.000000Z");

    // The window ends: AdminRemove for the same principal, role and scope.
    app.clock.advance(Duration::minutes(30));
    app.settle().await;
    assert_eq!(
        app.client_as("alice@demo.twokey").await.state(&id).await,
        "ended"
    );
    let removes: Vec<_> = fake
        .calls_to("PUT", "/roleAssignmentScheduleRequests/")
        .into_iter()
        .filter(|c| c.body["properties"]["requestType"] == "AdminRemove")
        .collect();
    assert_eq!(removes.len(), 1);
    let r = &removes[0].body["properties"];
    assert_eq!(r["principalId"], ALICE_OID);
    assert!(r["roleDefinitionId"].as_str().unwrap().ends_with(ROLE));
    assert!(removes[0].path.starts_with(GUARD));
    assert!(fake.instances().is_empty(), "the assignment is gone");
    assert_eq!(app.audit_count("grant.ended", Some(&id)).await, 1);
    assert_spec_clean(&fake);
}

async fn rbac_grant_and_revoke_create_and_delete_one_plain_assignment(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn_azure(b, &fake, "azure-rbac").await;
    let id = approved_and_settled(&app).await;
    assert_eq!(
        app.client_as("alice@demo.twokey").await.state(&id).await,
        "active"
    );
    let puts = fake.calls_to("PUT", "/roleAssignments/");
    assert_eq!(puts.len(), 1);
    assert!(puts[0].query.contains("api-version=2022-04-01"));
    assert!(puts[0].path.starts_with(GUARD));
    let p = &puts[0].body["properties"];
    assert_eq!(p["principalId"], ALICE_OID);
    assert_eq!(p["principalType"], "User");
    assert!(p["roleDefinitionId"].as_str().unwrap().ends_with(ROLE));
    assert!(
        p["description"]
            .as_str()
            .unwrap()
            .contains("expires 2026-12-03T09:30:00Z")
    );
    assert_eq!(fake.role_assignments().len(), 1);

    app.clock.advance(Duration::minutes(30));
    app.settle().await;
    assert_eq!(
        app.client_as("alice@demo.twokey").await.state(&id).await,
        "ended"
    );
    let deletes = fake.calls_to("DELETE", "/roleAssignments/");
    assert_eq!(deletes.len(), 1);
    assert_eq!(
        deletes[0].path, puts[0].path,
        "the same assignment is deleted"
    );
    assert!(fake.role_assignments().is_empty());
    assert_spec_clean(&fake);
}

async fn a_throttled_grant_waits_for_retry_after_and_happens_once(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn_azure(b, &fake, "azure-pim").await;
    fake.fault(
        "PUT",
        "/roleAssignmentScheduleRequests/",
        None,
        FaultKind::Status(429, Some(1)),
        2,
    );
    let id = approved_and_settled(&app).await;
    assert_granted_once(&app, &fake, &id).await;
    let puts = assign_puts(&fake);
    assert_eq!(puts.len(), 3, "two throttled, one through");
    for w in puts.windows(2) {
        assert!(
            w[1].at - w[0].at >= StdDuration::from_millis(950),
            "Retry-After: 1 was honoured"
        );
    }
}

async fn server_errors_500_and_503_are_retried_and_the_grant_happens_once(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn_azure(b, &fake, "azure-pim").await;
    fake.fault(
        "PUT",
        "/roleAssignmentScheduleRequests/",
        None,
        FaultKind::Status(500, None),
        1,
    );
    fake.fault(
        "PUT",
        "/roleAssignmentScheduleRequests/",
        None,
        FaultKind::Status(503, Some(1)),
        1,
    );
    fake.fault(
        "GET",
        "/roleAssignmentScheduleInstances",
        None,
        FaultKind::Status(503, Some(1)),
        1,
    );
    let id = approved_and_settled(&app).await;
    assert_granted_once(&app, &fake, &id).await;
}

async fn an_answer_that_times_out_is_not_a_second_grant(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn_azure(b, &fake, "azure-pim").await;
    // Azure makes the assignment but the answer comes after the client's 2 s timeout.
    fake.fault(
        "PUT",
        "/roleAssignmentScheduleRequests/",
        Some("AdminAssign"),
        FaultKind::LateAnswer(StdDuration::from_secs(4)),
        1,
    );
    let id = approved_and_settled(&app).await;
    assert_granted_once(&app, &fake, &id).await;
    // The retried PUT met the assignment the first one made, and twokey adopted its own.
    assert_eq!(assign_puts(&fake).len(), 2);
}

async fn a_connection_reset_is_retried_and_the_grant_happens_once(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn_azure(b, &fake, "azure-pim").await;
    fake.reset_connections(2);
    let id = approved_and_settled(&app).await;
    assert_granted_once(&app, &fake, &id).await;
    assert_eq!(fake.pending_resets(), 0, "both resets happened");
}

async fn a_long_running_operation_is_polled_until_done(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn_azure(b, &fake, "azure-pim").await;
    fake.fault(
        "PUT",
        "/roleAssignmentScheduleRequests/",
        Some("AdminAssign"),
        FaultKind::Lro(3),
        1,
    );
    let id = approved_and_settled(&app).await;
    assert_granted_once(&app, &fake, &id).await;
    assert_eq!(
        fake.calls_to("GET", "/operationStatus/").len(),
        3,
        "three polls"
    );
}

async fn an_identical_existing_assignment_counts_as_the_grant(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn_azure(b, &fake, "azure-pim").await;
    // Already there for exactly the approved window (e.g. made by an earlier attempt).
    fake.seed_instance(
        GUARD,
        ALICE_OID,
        ROLE,
        start_time(),
        Some(start_time() + Duration::minutes(30)),
    );
    let id = approved_and_settled(&app).await;
    assert_eq!(
        app.client_as("alice@demo.twokey").await.state(&id).await,
        "active"
    );
    assert_eq!(fake.instances().len(), 1, "no second assignment");
    assert!(fake.created_instances().is_empty());
    let grant = app.svc.store.get_grant(&id).await.unwrap().unwrap();
    assert!(grant.detail.unwrap().contains("\"adopted\":true"));
    assert_spec_clean(&fake);
}

async fn a_different_existing_assignment_fails_the_request_with_a_message(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn_azure(b, &fake, "azure-pim").await;
    // A permanent assignment made outside twokey.
    fake.seed_instance(
        GUARD,
        ALICE_OID,
        ROLE,
        start_time() - Duration::days(30),
        None,
    );
    let id = approved_and_settled(&app).await;
    let v = view(&app, &id).await;
    assert_eq!(v["state"], "failed", "{v}");
    let msg = v["failure_message"].as_str().unwrap();
    assert!(
        msg.contains("already holds this role") && msg.contains("RoleAssignmentExists"),
        "{msg}"
    );
    assert_eq!(
        fake.instances().len(),
        1,
        "the other assignment is left alone"
    );
    assert_eq!(app.audit_count("grant.failed", Some(&id)).await, 1);
}

async fn a_policy_validation_failure_fails_the_request_with_azures_message(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn_azure(b, &fake, "azure-pim").await;
    let azure_says = "The following policy rules failed: [\"ExpirationRule\"]";
    fake.fault(
        "PUT",
        "/roleAssignmentScheduleRequests/",
        None,
        FaultKind::Error(
            400,
            "RoleAssignmentRequestPolicyValidationFailed",
            azure_says.into(),
        ),
        1,
    );
    let id = approved_and_settled(&app).await;
    // Shown to approvers (the request view) and to the requester (the view and the mail).
    let v = view(&app, &id).await;
    assert_eq!(v["state"], "failed");
    assert!(
        v["failure_message"].as_str().unwrap().contains(azure_says),
        "{v}"
    );
    let alice = app.client_as("alice@demo.twokey").await;
    let (_, mine) = alice.get_json(&format!("/api/v1/requests/{id}")).await;
    assert!(
        mine["failure_message"]
            .as_str()
            .unwrap()
            .contains("ExpirationRule")
    );
    let mails = app.svc.store.list_notifications(100).await.unwrap();
    assert!(
        mails
            .iter()
            .any(|m| m.recipient == "alice@demo.twokey" && m.body.contains("ExpirationRule")),
        "the requester's mail says why"
    );
    assert!(fake.instances().is_empty());
    assert_eq!(assign_puts(&fake).len(), 1, "a refusal is not retried");
}

async fn an_early_end_within_five_minutes_waits_for_the_floor_and_says_so(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn_azure(b, &fake, "azure-pim").await;
    let id = approved_and_settled(&app).await;
    app.clock.advance(Duration::minutes(1));
    fake.fault(
        "PUT",
        "/roleAssignmentScheduleRequests/",
        Some("AdminRemove"),
        FaultKind::Error(
            400,
            "ActiveDurationTooShort",
            "The Active duration is too short. Miniumum Required is 5 minutes.".into(),
        ),
        1,
    );
    let alice = app.client_as("alice@demo.twokey").await;
    let (s, v) = alice
        .post_json(&format!("/api/v1/requests/{id}/end"), &json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    app.settle().await;
    let v = view(&app, &id).await;
    assert_eq!(v["state"], "active", "Azure refused the early end");
    let note = v["failure_message"].as_str().unwrap();
    assert!(
        note.contains("ActiveDurationTooShort") && note.contains("09:05:05"),
        "{note}"
    );
    let page = alice
        .get(&format!("/requests/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("ActiveDurationTooShort"),
        "the request page says why"
    );
    // Not before the floor…
    app.clock.advance(Duration::minutes(3));
    app.settle().await;
    assert_eq!(alice.state(&id).await, "active");
    // …and right after it.
    app.clock.advance(Duration::seconds(65));
    app.settle().await;
    let v = view(&app, &id).await;
    assert_eq!(v["state"], "ended");
    assert_eq!(v["end_reason"], "ended_early");
    assert!(fake.instances().is_empty());
}

async fn the_reconciler_removes_an_assignment_found_after_its_window(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn_azure(b, &fake, "azure-pim").await;
    let id = approved_and_settled(&app).await;
    // Azure answers the removal as done, but the assignment stays.
    fake.fault(
        "PUT",
        "/roleAssignmentScheduleRequests/",
        Some("AdminRemove"),
        FaultKind::AcceptButKeep,
        1,
    );
    app.clock.advance(Duration::minutes(30));
    app.settle().await;
    assert_eq!(
        app.client_as("alice@demo.twokey").await.state(&id).await,
        "ended"
    );
    assert_eq!(fake.instances().len(), 1, "still there");
    app.clock.advance(Duration::minutes(6));
    app.settle().await;
    assert!(fake.instances().is_empty(), "the reconciler removed it");
    let removes = fake
        .calls_to("PUT", "/roleAssignmentScheduleRequests/")
        .into_iter()
        .filter(|c| c.body["properties"]["requestType"] == "AdminRemove")
        .count();
    assert_eq!(removes, 2);
    assert_eq!(
        app.audit_count("grant.failed", Some(&id)).await,
        1,
        "recorded"
    );
    // A stray assignment of the same person that twokey did not make is not touched.
    fake.seed_instance(
        GUARD,
        ALICE_OID,
        ROLE,
        start_time(),
        Some(start_time() + Duration::hours(8)),
    );
    app.clock.advance(Duration::minutes(6));
    app.settle().await;
    assert_eq!(fake.instances().len(), 1);
    assert_spec_clean(&fake);
}

async fn the_reconciler_leaves_a_later_grant_to_the_same_person_alone(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn_azure(b, &fake, "azure-pim").await;
    let first = approved_and_settled(&app).await;
    // The first window ends early; a second request is granted inside the first's time span.
    app.clock.advance(Duration::minutes(6));
    let alice = app.client_as("alice@demo.twokey").await;
    let (s, v) = alice
        .post_json(&format!("/api/v1/requests/{first}/end"), &json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    app.settle().await;
    assert_eq!(alice.state(&first).await, "ended");
    app.clock.advance(Duration::minutes(4));
    let second = approved_and_settled(&app).await;
    assert_eq!(alice.state(&second).await, "active");
    app.clock.advance(Duration::minutes(6));
    app.settle().await;
    assert_eq!(
        fake.instances().len(),
        1,
        "the second grant's assignment stays"
    );
    assert_eq!(app.audit_count("grant.failed", Some(&first)).await, 0);
    assert_eq!(alice.state(&second).await, "active");
    assert_spec_clean(&fake);
}

async fn a_grant_that_gave_up_after_reaching_azure_is_taken_back(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn_azure(b, &fake, "azure-pim").await;
    // The assignment is made, but twokey can never confirm it.
    fake.deny("/roleAssignmentScheduleInstances");
    let id = approved_and_settled(&app).await;
    for _ in 0..10 {
        app.clock.advance(Duration::minutes(11));
        app.settle().await;
    }
    let v = view(&app, &id).await;
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(fake.instances().len(), 1, "left behind in Azure");
    // Once Azure answers again, the reconciler takes it back and tells the watchers.
    fake.allow_all();
    app.clock.advance(Duration::minutes(6));
    app.settle().await;
    assert!(fake.instances().is_empty(), "taken back");
    assert_eq!(app.audit_count("grant.failed", Some(&id)).await, 2);
    let mails = app.svc.store.list_notifications(300).await.unwrap();
    assert!(
        mails.iter().any(|m| m.recipient == "sam@demo.twokey"
            && m.subject.contains("failed_grant_left_assignment"))
    );
    assert_spec_clean(&fake);
}

async fn an_rbac_assignment_that_outlives_its_window_alerts_watchers(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn_azure(b, &fake, "azure-rbac").await;
    let id = approved_and_settled(&app).await;
    // The delete is refused for now.
    fake.deny("/roleAssignments/");
    app.clock.advance(Duration::minutes(30));
    app.settle().await;
    assert_eq!(
        app.client_as("alice@demo.twokey").await.state(&id).await,
        "active"
    );
    app.clock.advance(Duration::minutes(6));
    app.settle().await;
    let mails = app.svc.store.list_notifications(200).await.unwrap();
    let alerts: Vec<_> = mails
        .iter()
        .filter(|m| m.recipient == "sam@demo.twokey" && m.subject.contains("outlived_window"))
        .collect();
    assert_eq!(alerts.len(), 1, "one alert to the watcher");
    assert!(alerts[0].body.contains("still in place"));
    // The revoke keeps trying and gets through once Azure lets it.
    fake.allow_all();
    app.clock.advance(Duration::minutes(10));
    app.settle().await;
    assert_eq!(
        app.client_as("alice@demo.twokey").await.state(&id).await,
        "ended"
    );
    assert!(fake.role_assignments().is_empty());
}

async fn a_guard_in_another_tenant_uses_that_tenants_token(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn_azure_with(b, &fake, "azure-pim", |raw| {
        raw.guards[0].tenant_id = Some(GUARD_TENANT.into());
    })
    .await;
    let id = approved_and_settled(&app).await;
    assert_granted_once(&app, &fake, &id).await;
    assert_eq!(assign_puts(&fake)[0].tenant.as_deref(), Some(GUARD_TENANT));
    assert!(fake.token_calls().iter().any(|t| t.tenant == GUARD_TENANT));
}

// ---- tokens (no database) ---------------------------------------------------------------

fn cred(
    fake: &FakeArm,
    kind: twokey::config::CredentialKind,
    file: Option<std::path::PathBuf>,
    secret: &str,
) -> twokey::azure::credential::Credential {
    let cfg = twokey::config::CredentialConfig {
        kind,
        tenant_id: HOME_TENANT.into(),
        client_id: Some(CLIENT_ID.into()),
        client_secret: Some(twokey::secret::Secret::new(secret)),
        federated_token_file: file,
        managed_identity_endpoint: url::Url::parse(&fake.base).unwrap(),
    };
    let base = url::Url::parse(&fake.base).unwrap();
    twokey::azure::credential::Credential::new(cfg, reqwest::Client::new(), base.clone(), &base)
}

#[tokio::test]
async fn a_client_secret_token_is_reused_until_near_expiry_then_refreshed() {
    let fake = FakeArm::start().await;
    // 302 s: inside the 5-minute refresh margin after 2 s.
    fake.set_token_lifetime(302);
    let c = cred(
        &fake,
        twokey::config::CredentialKind::ClientSecret,
        None,
        CLIENT_SECRET,
    );
    let t1 = c.token().await.unwrap();
    let t2 = c.token().await.unwrap();
    assert_eq!(t1.expose(), t2.expose(), "reused");
    assert_eq!(fake.token_calls().len(), 1);
    let call = &fake.token_calls()[0];
    assert_eq!(call.kind, "client_secret");
    assert_eq!(call.scope, format!("{}/.default", fake.base));
    tokio::time::sleep(StdDuration::from_millis(2300)).await;
    let t3 = c.token().await.unwrap();
    assert_ne!(t1.expose(), t3.expose(), "refreshed near expiry");
    assert_eq!(fake.token_calls().len(), 2);
}

#[tokio::test]
async fn a_workload_identity_exchanges_the_federated_token_file() {
    let fake = FakeArm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, format!("{FEDERATED_TOKEN}\n")).unwrap();
    let c = cred(
        &fake,
        twokey::config::CredentialKind::WorkloadIdentity,
        Some(file),
        "unused",
    );
    c.token().await.unwrap();
    c.token().await.unwrap();
    let calls = fake.token_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].kind, "client_assertion");
    assert_eq!(calls[0].client_id, CLIENT_ID);
    assert_eq!(calls[0].tenant, HOME_TENANT);
}

#[tokio::test]
async fn a_managed_identity_token_comes_from_the_metadata_endpoint() {
    let fake = FakeArm::start().await;
    let c = cred(
        &fake,
        twokey::config::CredentialKind::ManagedIdentity,
        None,
        "unused",
    );
    c.token().await.unwrap();
    let calls = fake.token_calls();
    assert_eq!(calls[0].kind, "managed_identity");
    assert_eq!(calls[0].scope, format!("{}/", fake.base));
}

#[tokio::test]
async fn a_wrong_secret_is_reported_without_the_secret() {
    let fake = FakeArm::start().await;
    let c = cred(
        &fake,
        twokey::config::CredentialKind::ClientSecret,
        None,
        "wrong-secret-value",
    );
    let e = c.token().await.unwrap_err().to_string();
    assert!(e.contains("AADSTS7000215"), "{e}");
    assert!(!e.contains("wrong-secret-value"));
}
