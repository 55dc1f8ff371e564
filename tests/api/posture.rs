//! The posture report against the fake ARM server (extended with role assignments at every
//! scope, role definitions, PIM schedules, vault settings and Graph's getByIds): exactly the
//! expected findings, each vault state reported, one event and one mail per change between
//! daily runs and none without, and a report with ids when the directory answers 403.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value;
use time::Duration;

use crate::azure::{GUARD, azure_config};
use crate::both_backends;
use crate::fake_arm::*;
use crate::helpers::*;
use twokey::clock::ManualClock;
use twokey::domain::posture::{GuardReport, Severity};

both_backends!(
    role_assignments_at_every_scope_give_exactly_the_expected_findings,
    an_unlinked_vault_an_excluded_operation_soft_delete_off_and_unlocked_immutability_are_each_reported,
    a_change_between_two_daily_runs_is_one_event_and_one_alert_and_no_change_is_none,
    the_directory_answering_403_still_gives_the_report_with_ids,
    a_read_that_fails_keeps_the_last_findings_and_says_so,
    the_posture_page_is_for_auditors_and_its_button_queues_one_run,
    the_posture_command_prints_the_report_and_fails_while_anything_is_red,
    a_posture_change_reaches_the_guards_webhooks_once,
);

const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const UAA: &str = "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9";
const MUA_ADMIN: &str = "c2a970b4-16a7-4a51-8c84-8a8ea6ee0bb8";
const MUA_OPERATOR: &str = "f54b6d04-23c6-443e-b462-9c16ab7b4a52";
const GUARD_TWEAKER: &str = "c0570000-0000-4000-8000-0000000000c1";
const AUTH_WRITER: &str = "c0570000-0000-4000-8000-0000000000c2";

const RG_OWNER: &str = "00000000-0000-4000-8000-0000000000a1";
const SUB_UAA: &str = "00000000-0000-4000-8000-0000000000a2";
const MG_MUA_ADMIN: &str = "00000000-0000-4000-8000-0000000000a3";
const CUSTOM_1: &str = "00000000-0000-4000-8000-0000000000a4";
const CUSTOM_2: &str = "00000000-0000-4000-8000-0000000000a5";
const READER_1: &str = "00000000-0000-4000-8000-0000000000a6";
const STANDING: &str = "00000000-0000-4000-8000-0000000000a7";
const PIM_ACTIVE: &str = "00000000-0000-4000-8000-0000000000a8";
const ELSEWHERE: &str = "00000000-0000-4000-8000-0000000000a9";
const ELIGIBLE: &str = "00000000-0000-4000-8000-0000000000aa";
const NEW_OWNER: &str = "00000000-0000-4000-8000-0000000000ab";

const MG: &str = "/providers/Microsoft.Management/managementGroups/corp";

fn bv_single() -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg-backup-prod/providers/Microsoft.DataProtection/backupVaults/bv-prod-weu"
    )
}

fn sub_scope() -> String {
    format!("/subscriptions/{SUB}")
}

/// One guard (demo-single, on azure-pim) over the fake, with the daily run on and Graph at
/// the fake's `/graph`. Both vaults linked, soft delete always on, immutability locked: a
/// clean start that each test spoils in its own way.
async fn spawn(b: Backend, fake: &FakeArm) -> TestApp {
    let db = TestDb::new(b).await;
    let raw = clean_start(fake, &db);
    TestApp::spawn_on(db, raw, Arc::new(ManualClock::new(start_time()))).await
}

/// The fake set up for [`spawn`], and its config.
fn clean_start(fake: &FakeArm, db: &TestDb) -> twokey::config::RawConfig {
    fake.add_guard(GUARD, &[&single_vault(), &bv_single()]);
    fake.set_vault(&single_vault(), "AlwaysON", Some("Locked"));
    fake.set_vault(&bv_single(), "AlwaysOn", Some("Locked"));
    fake.seed_role_assignment(GUARD, BROKER_OID, "ServicePrincipal", UAA);
    let mut raw = test_config(&db.dir(), &db.url);
    azure_config(&mut raw, fake, "azure-pim");
    raw.guards.truncate(1);
    raw.posture.enabled = Some(true);
    raw.posture.daily_at = Some("06:00".into());
    raw.azure.graph_endpoint = Some(format!("{}/graph", fake.base));
    raw
}

fn guard_report(run: &twokey::service::PostureRun) -> GuardReport {
    assert_eq!(run.report.guards.len(), 1);
    run.report.guards[0].clone()
}

/// (category, principal or vault, severity) of every finding.
fn summary(g: &GuardReport) -> BTreeSet<(String, String, Severity)> {
    g.findings
        .iter()
        .map(|f| {
            let about = f
                .principal
                .as_ref()
                .map(|p| p.id.clone())
                .or_else(|| {
                    f.vault
                        .as_ref()
                        .map(|v| v.rsplit('/').next().unwrap().to_string())
                })
                .unwrap_or_default();
            (f.category.clone(), about, f.severity)
        })
        .collect()
}

fn assert_spec_clean(fake: &FakeArm) {
    assert_eq!(
        fake.violations(),
        Vec::<String>::new(),
        "requests outside the spec"
    );
}

async fn posture_mails(app: &TestApp) -> Vec<twokey::store::NotificationRow> {
    app.svc
        .store
        .list_notifications(1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.kind == "posture")
        .collect()
}

async fn role_assignments_at_every_scope_give_exactly_the_expected_findings(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn(b, &fake).await;
    // Alice has asked through twokey before: she is a requester of this guard.
    let alice = app.client_as("alice@demo.twokey").await;
    alice.create(&single_vault(), REVERSIBLE_OP).await;

    fake.set_management_groups(SUB, &[MG]);
    fake.add_custom_role(
        GUARD_TWEAKER,
        "Guard tweaker",
        &["Microsoft.DataProtection/resourceGuards/*"],
        &[],
    );
    fake.add_custom_role(
        AUTH_WRITER,
        "Auth writer",
        &["Microsoft.Authorization/*/write"],
        &[],
    );
    let rg = format!("/subscriptions/{SUB}/resourceGroups/rg-security");
    fake.seed_role_assignment(GUARD, ALICE_OID, "User", CONTRIBUTOR);
    fake.seed_role_assignment(&rg, RG_OWNER, "User", OWNER);
    fake.seed_role_assignment(&sub_scope(), SUB_UAA, "User", UAA);
    fake.seed_role_assignment(MG, MG_MUA_ADMIN, "Group", MUA_ADMIN);
    fake.seed_role_assignment(GUARD, CUSTOM_1, "User", GUARD_TWEAKER);
    fake.seed_role_assignment(&sub_scope(), CUSTOM_2, "ServicePrincipal", AUTH_WRITER);
    fake.seed_role_assignment(GUARD, READER_1, "User", READER);
    fake.seed_role_assignment(GUARD, STANDING, "User", MUA_OPERATOR);
    fake.seed_role_assignment(GUARD, PIM_ACTIVE, "User", MUA_OPERATOR);
    fake.seed_schedule(
        false,
        GUARD,
        PIM_ACTIVE,
        MUA_OPERATOR,
        Some("2026-12-03T10:00:00Z"),
    );
    fake.seed_schedule(true, GUARD, ELIGIBLE, MUA_OPERATOR, None);
    // Not above the guard: another resource group, another management group's subscription.
    fake.seed_role_assignment(
        &format!("/subscriptions/{SUB}/resourceGroups/rg-other"),
        ELSEWHERE,
        "User",
        OWNER,
    );
    fake.seed_role_assignment(
        "/providers/Microsoft.Management/managementGroups/other",
        ELSEWHERE,
        "User",
        OWNER,
    );
    // One throttled read on the way: retried after Retry-After, same result.
    fake.fault(
        "GET",
        "/roleAssignments",
        None,
        FaultKind::Status(429, Some(1)),
        1,
    );

    let run = app.svc.run_posture("test").await.unwrap();
    let g = guard_report(&run);
    let guard_side: BTreeSet<_> = summary(&g)
        .into_iter()
        .filter(|(c, _, _)| {
            ["guard_access", "standing_elevation", "eligible"].contains(&c.as_str())
        })
        .collect();
    let expected: BTreeSet<(String, String, Severity)> = [
        ("guard_access", ALICE_OID, Severity::Critical),
        ("guard_access", RG_OWNER, Severity::High),
        ("guard_access", SUB_UAA, Severity::High),
        ("guard_access", MG_MUA_ADMIN, Severity::High),
        ("guard_access", CUSTOM_1, Severity::High),
        ("guard_access", CUSTOM_2, Severity::High),
        ("standing_elevation", STANDING, Severity::Critical),
        ("eligible", ELIGIBLE, Severity::Medium),
    ]
    .into_iter()
    .map(|(c, p, s)| (c.to_string(), p.to_string(), s))
    .collect();
    assert_eq!(
        guard_side,
        expected,
        "{}",
        twokey::service::render_posture_text(&run.report)
    );
    // The requester's finding says so and names the fix.
    let alice_f = g
        .findings
        .iter()
        .find(|f| f.principal.as_ref().is_some_and(|p| p.id == ALICE_OID))
        .unwrap();
    assert!(alice_f.title.contains("requester"), "{}", alice_f.title);
    assert!(
        alice_f.detail.contains("Assigned at the resource itself"),
        "{}",
        alice_f.detail
    );
    assert!(
        alice_f.fix.contains("az role assignment delete --ids"),
        "{}",
        alice_f.fix
    );
    let mg_f = g
        .findings
        .iter()
        .find(|f| f.principal.as_ref().is_some_and(|p| p.id == MG_MUA_ADMIN))
        .unwrap();
    assert!(
        mg_f.detail.contains("management group corp"),
        "{}",
        mg_f.detail
    );
    assert!(mg_f.detail.contains("every member"), "{}", mg_f.detail);
    // On the vaults: who can change them (the subscription's UAA and the Authorization writer),
    // and the guard in the vaults' subscription. Nothing else.
    let vault_side: BTreeSet<_> = summary(&g)
        .into_iter()
        .filter(|(c, _, _)| {
            !["guard_access", "standing_elevation", "eligible"].contains(&c.as_str())
        })
        .collect();
    let vault_expected: BTreeSet<(String, String, Severity)> = [
        ("vault_access", SUB_UAA, Severity::Info),
        ("vault_access", CUSTOM_2, Severity::Info),
        ("placement", "rsv-prod-weu", Severity::Medium),
        ("placement", "bv-prod-weu", Severity::Medium),
    ]
    .into_iter()
    .map(|(c, p, s)| (c.to_string(), p.to_string(), s))
    .collect();
    assert_eq!(vault_side, vault_expected);
    assert_eq!(
        g.findings
            .iter()
            .filter(|f| f.category == "vault_access")
            .count(),
        4,
        "two principals on each of two vaults"
    );
    assert!(g.vaults.iter().all(|v| v.link == "linked"));
    let guard_lists = fake.calls_to(
        "GET",
        &format!("{GUARD}/providers/Microsoft.Authorization/roleAssignments"),
    );
    assert_eq!(
        guard_lists.len(),
        2,
        "the throttled list was tried again, once"
    );
    assert_spec_clean(&fake);
}

async fn an_unlinked_vault_an_excluded_operation_soft_delete_off_and_unlocked_immutability_are_each_reported(
    b: Backend,
) {
    let fake = FakeArm::start().await;
    let app = spawn(b, &fake).await;
    fake.link(&single_vault(), None);
    fake.set_exclusions(
        GUARD,
        &["Microsoft.RecoveryServices/vaults/backupSecurityPIN/action"],
    );
    fake.set_vault(&single_vault(), "Disabled", Some("Locked"));
    fake.set_vault(&bv_single(), "On", Some("Unlocked"));

    let run = app.svc.run_posture("test").await.unwrap();
    let g = guard_report(&run);
    let s: BTreeSet<(String, String, Severity)> = summary(&g)
        .into_iter()
        .filter(|(c, _, _)| c != "placement")
        .collect();
    let expected: BTreeSet<(String, String, Severity)> = [
        ("unlinked", "rsv-prod-weu", Severity::Critical),
        ("excluded_operation", "", Severity::High),
        ("soft_delete", "rsv-prod-weu", Severity::High),
        ("immutability", "bv-prod-weu", Severity::Low),
    ]
    .into_iter()
    .map(|(c, p, s)| (c.to_string(), p.to_string(), s))
    .collect();
    assert_eq!(
        s,
        expected,
        "{}",
        twokey::service::render_posture_text(&run.report)
    );
    let excluded = g
        .findings
        .iter()
        .find(|f| f.category == "excluded_operation")
        .unwrap();
    assert!(
        excluded.title.contains("Get a security PIN"),
        "{}",
        excluded.title
    );
    assert_eq!(g.excluded_operations.len(), 1);
    let rsv = g.vaults.iter().find(|v| v.name == "rsv-prod-weu").unwrap();
    assert_eq!(
        (rsv.link.as_str(), rsv.soft_delete.as_str()),
        ("not linked", "Disabled")
    );
    let bv = g.vaults.iter().find(|v| v.name == "bv-prod-weu").unwrap();
    assert_eq!(bv.immutability, "enabled-unlocked");
    // The CLI's text names each of them, with its fix.
    let text = twokey::service::render_posture_text(&run.report);
    for needle in [
        "MUA is off for vault rsv-prod-weu",
        "Soft delete is off",
        "not locked",
        "fix: Link it",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
    println!("SAMPLE REPORT\n{text}");
    assert_spec_clean(&fake);
}

async fn a_change_between_two_daily_runs_is_one_event_and_one_alert_and_no_change_is_none(
    b: Backend,
) {
    let fake = FakeArm::start().await;
    let app = spawn(b, &fake).await;
    let day = |n: i64| start_time() + Duration::days(n);
    // Day 0, 09:00 (after 06:00): the sweep queues the day's run and it runs. The first report
    // is itself news: one event, one mail.
    app.settle().await;
    assert_eq!(app.audit_count("posture.changed", None).await, 1);
    app.settle().await;
    assert_eq!(posture_mails(&app).await.len(), 1);
    // Same day again: the day's job exists already, nothing runs.
    app.settle().await;
    assert_eq!(app.audit_count("posture.changed", None).await, 1);
    // Day 1: a run with no change: no event, no mail.
    app.clock.set(day(1));
    app.settle().await;
    app.settle().await;
    let runs = app.svc.store.job_counts().await.unwrap();
    let posture_runs: i64 = runs
        .iter()
        .filter(|(k, s, _)| k == "posture" && s == "done")
        .map(|r| r.2)
        .sum();
    assert_eq!(posture_runs, 2, "one run per day: {runs:?}");
    assert_eq!(app.audit_count("posture.changed", None).await, 1);
    assert_eq!(posture_mails(&app).await.len(), 1);
    // Day 2: a new Owner on the guard: one event naming it, one mail to the watcher.
    fake.seed_role_assignment(GUARD, NEW_OWNER, "User", OWNER);
    app.clock.set(day(2));
    app.settle().await;
    app.settle().await;
    assert_eq!(app.audit_count("posture.changed", None).await, 2);
    let mails = posture_mails(&app).await;
    assert_eq!(mails.len(), 2);
    let newest = &mails[0];
    assert_eq!(newest.recipient, "sam@demo.twokey");
    assert!(
        newest.subject.contains("changed: 1 new, 0 gone, 1 red"),
        "{}",
        newest.subject
    );
    assert!(
        newest.body.contains(NEW_OWNER) && newest.body.contains("Fix:"),
        "{}",
        newest.body
    );
    let events = app.svc.store.audit_stream();
    use futures::StreamExt;
    let rows: Vec<_> = events.collect::<Vec<_>>().await;
    let last = rows
        .into_iter()
        .filter_map(Result::ok)
        .filter(|r| r.action == "posture.changed")
        .last()
        .unwrap();
    let d: Value = serde_json::from_str(&last.details).unwrap();
    assert_eq!(d["added"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(d["added"][0]["principal_id"], NEW_OWNER);
    assert_eq!(d["removed"].as_array().unwrap().len(), 0);
    assert_eq!(d["first_run"], false);
    // Day 3: the Owner is gone again: one event, one mail, saying it went.
    fake.remove_role_assignments_of(NEW_OWNER);
    app.clock.set(day(3));
    app.settle().await;
    app.settle().await;
    assert_eq!(app.audit_count("posture.changed", None).await, 3);
    let mails = posture_mails(&app).await;
    assert_eq!(mails.len(), 3);
    assert!(
        mails[0].subject.contains("0 new, 1 gone"),
        "{}",
        mails[0].subject
    );
    // The day's key keeps it to one job even when every replica's sweep asks at once.
    app.clock.set(day(4));
    let svc = app.svc.clone();
    let tries = futures::future::join_all((0..6).map(|_| {
        let s = svc.clone();
        async move { s.schedule_daily_posture().await.unwrap() }
    }))
    .await;
    assert_eq!(tries.iter().filter(|t| **t).count(), 1, "{tries:?}");
    assert_spec_clean(&fake);
}

async fn the_directory_answering_403_still_gives_the_report_with_ids(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn(b, &fake).await;
    fake.seed_role_assignment(GUARD, RG_OWNER, "User", OWNER);
    fake.add_directory_object(RG_OWNER, "user", "Rita Owner", Some("rita@contoso.test"));
    let run = app.svc.run_posture("test").await.unwrap();
    assert!(run.report.names_resolved, "{:?}", run.report.names_note);
    let f = &guard_report(&run).findings[0];
    assert_eq!(
        f.principal.as_ref().unwrap().name.as_deref(),
        Some("Rita Owner")
    );
    assert!(
        f.title.contains("Rita Owner <rita@contoso.test>"),
        "{}",
        f.title
    );
    // The Graph token is for Graph, not ARM.
    assert!(
        fake.token_calls()
            .iter()
            .any(|t| t.scope == format!("{}/graph/.default", fake.base)),
        "{:?}",
        fake.token_calls()
    );

    fake.deny("/directoryObjects");
    let run = app.svc.run_posture("test").await.unwrap();
    assert!(!run.report.names_resolved);
    let note = run.report.names_note.clone().unwrap();
    assert!(
        note.contains("403") && note.contains("Directory.Read.All"),
        "{note}"
    );
    let g = guard_report(&run);
    let f = g
        .findings
        .iter()
        .find(|f| f.category == "guard_access")
        .expect("the finding is still there");
    assert_eq!(f.principal.as_ref().unwrap().name, None);
    assert!(f.title.contains(RG_OWNER), "{}", f.title);
    // Names going away is not a change in posture.
    assert!(run.changed.is_empty(), "{:?}", run.changed);
    assert_eq!(app.audit_count("posture.changed", None).await, 1);
    assert_spec_clean(&fake);
}

async fn a_read_that_fails_keeps_the_last_findings_and_says_so(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn(b, &fake).await;
    fake.seed_role_assignment(GUARD, RG_OWNER, "User", OWNER);
    app.svc.run_posture("test").await.unwrap();
    // The role assignments at the guard answer 503 for longer than the retries last.
    let at_guard = format!("{GUARD}/providers/Microsoft.Authorization/roleAssignments");
    fake.fault("GET", &at_guard, None, FaultKind::Status(503, None), 100);
    let run = app.svc.run_posture("test").await.unwrap();
    let g = guard_report(&run);
    let owner = g
        .findings
        .iter()
        .find(|f| f.principal.as_ref().is_some_and(|p| p.id == RG_OWNER))
        .expect("kept");
    assert!(owner.stale);
    assert!(
        g.findings
            .iter()
            .any(|f| f.category == "unreadable" && f.severity == Severity::High)
    );
    let (_, c) = &run.changed[0];
    assert!(c.removed.is_empty(), "an outage is not a fix: {c:?}");
    assert_eq!(c.added.len(), 1, "only 'could not read': {c:?}");
    assert_spec_clean(&fake);
}

async fn the_posture_page_is_for_auditors_and_its_button_queues_one_run(b: Backend) {
    let fake = FakeArm::start().await;
    let app = spawn(b, &fake).await;
    fake.seed_role_assignment(GUARD, STANDING, "User", MUA_OPERATOR);
    let erin = app.client_as("erin@demo.twokey").await;
    let page = erin.get("/posture").await.text().await.unwrap();
    assert!(page.contains("No report yet"), "{page}");
    // The button, with the session's CSRF token.
    let html = erin.get("/posture").await.text().await.unwrap();
    let csrf = form_value(&html, "csrf").unwrap();
    let r = erin
        .http
        .post(format!("{}/posture/run", erin.base))
        .form(&[("csrf", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = erin
        .http
        .post(format!("{}/posture/run", erin.base))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    app.worker.drain().await.unwrap();
    let page = erin.get("/posture").await.text().await.unwrap();
    assert!(
        page.contains("holds Backup MUA Operator on the guard permanently"),
        "{page}"
    );
    assert!(
        page.contains("sev-critical") && page.contains("Fix:"),
        "{page}"
    );
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "no inline script or style"
    );
    // Not for requesters.
    let alice = app.client_as("alice@demo.twokey").await;
    assert_eq!(alice.get("/posture").await.status(), 403);
    let r = alice
        .http
        .post(format!("{}/posture/run", alice.base))
        .form(&[("csrf", alice.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_spec_clean(&fake);
}

/// `twokey posture` (the real binary): JSON or a table, exit 0 with nothing red, 1 with a red
/// finding; a change found by the command is audited like any other run.
async fn the_posture_command_prints_the_report_and_fails_while_anything_is_red(b: Backend) {
    let fake = FakeArm::start().await;
    let db = TestDb::new(b).await;
    let raw = clean_start(&fake, &db);
    let config = db.dir().join("posture.toml");
    std::fs::write(&config, toml::to_string(&raw).unwrap()).unwrap();
    let run = |json: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_twokey"));
        c.args(["posture", "--config"]).arg(&config);
        if json {
            c.arg("--json");
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, stdout, stderr) = run(true);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(code, Some(0), "nothing red yet:\n{stdout}");
    assert_eq!(report["guards"].as_array().unwrap().len(), 1);

    fake.link(&single_vault(), None);
    let (code, stdout, stderr) = run(false);
    assert_eq!(
        code,
        Some(1),
        "an unlinked vault is red:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("MUA is off for vault rsv-prod-weu"),
        "{stdout}"
    );
    assert!(stdout.contains("changed since the last report"), "{stdout}");
    let store = twokey::store::Store::connect(&db.url, 1).await.unwrap();
    let changes = store
        .query_pairs_for_tests(
            "select action, cast(count(*) as text) from audit_event \
             where action = 'posture.changed' group by action",
        )
        .await;
    assert_eq!(
        changes,
        vec![("posture.changed".to_string(), "2".to_string())]
    );
    store.close().await;
    assert_spec_clean(&fake);
}

/// A change goes to the guard's webhooks that take `posture.changed` (through the jobs table,
/// like mail); a run without change sends nothing.
async fn a_posture_change_reaches_the_guards_webhooks_once(b: Backend) {
    let fake = FakeArm::start().await;
    let (rx, base) = crate::alerts::Receiver::start(0).await;
    let db = TestDb::new(b).await;
    let mut raw = clean_start(&fake, &db);
    raw.alerts.allow_http_loopback = Some(true);
    raw.webhooks = vec![twokey::config::RawWebhook {
        name: "siem".into(),
        kind: "json".into(),
        url: Some(format!("{base}/json/T0KEN-siem")),
        url_file: None,
        secret: Some("whsec_0123456789abcdef0123456789abcdef".into()),
        secret_file: None,
        events: Some(vec!["posture.changed".into()]),
    }];
    raw.guards[0].webhooks = vec!["siem".into()];
    let app = TestApp::spawn_on(db, raw, Arc::new(ManualClock::new(start_time()))).await;
    app.svc.run_posture("test").await.unwrap(); // the first report
    app.settle().await;
    assert_eq!(rx.calls("json").len(), 1, "the first report");
    fake.link(&single_vault(), None);
    app.svc.run_posture("test").await.unwrap();
    app.settle().await;
    let calls = rx.calls("json");
    assert_eq!(calls.len(), 2);
    let body = &calls[1].1;
    assert_eq!(body["event"], "posture.changed", "{body}");
    assert!(
        body.to_string()
            .contains("MUA is off for vault rsv-prod-weu"),
        "{body}"
    );
    app.svc.run_posture("test").await.unwrap();
    app.settle().await;
    assert_eq!(rx.calls("json").len(), 2, "no change, no call");
}
