//! Alerts: Azure Monitor intake (real common-schema bodies from `tests/alerts/`), outbound
//! webhooks to a local HTTP receiver, and the suspicious-activity rules, each firing once on
//! its trigger and not on normal use.

use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{Value, json};
use time::Duration;
use twokey::clock::ManualClock;
use twokey::config::{RawBusinessHours, RawConfig, RawHook, RawWebhook};

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    azure_alerts_reach_the_watchers_of_the_vaults_guard_once,
    the_intake_refuses_wrong_secrets_big_bodies_and_bad_json,
    webhooks_are_signed_retried_and_delivered_once,
    a_self_approval_attempt_raises_one_alert,
    a_request_outside_business_hours_raises_one_alert,
    too_many_requests_in_a_day_raise_one_alert,
    a_destructive_request_after_a_backup_failure_raises_one_alert,
    too_few_approvers_raise_one_alert_a_day,
    the_digest_goes_to_each_watcher_once_a_day,
);

const HOOK_SECRET: &str = "h00k-secret_0123456789abcdef0123456789";

fn with_alerts(raw: &mut RawConfig) {
    raw.alerts.hooks = vec![RawHook {
        name: "azure".into(),
        secret: Some(HOOK_SECRET.into()),
        secret_file: None,
    }];
    raw.guards[0].watchers = vec!["sam@demo.twokey".into(), "ops@demo.twokey".into()];
    raw.guards[1].watchers = vec!["sam@demo.twokey".into(), "fin@demo.twokey".into()];
}

async fn spawn_alerts(b: Backend, change: impl FnOnce(&mut RawConfig)) -> TestApp {
    let db = TestDb::new(b).await;
    let mut raw = test_config(&db.dir(), &db.url);
    with_alerts(&mut raw);
    change(&mut raw);
    TestApp::spawn_on(db, raw, Arc::new(ManualClock::new(start_time()))).await
}

fn payload(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("tests/alerts/{name}")).expect("fixture");
    serde_json::from_str(&text).expect("fixture is JSON")
}

async fn post_raw(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut req = http
        .post(format!("{}{path}", app.base))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn post_alert(app: &TestApp, body: &Value) -> (StatusCode, Value) {
    post_raw(
        app,
        &format!("/hooks/azure-monitor/azure/{HOOK_SECRET}"),
        &[],
        serde_json::to_vec(body).unwrap(),
    )
    .await
}

async fn mails_to(app: &TestApp, who: &str) -> Vec<twokey::store::NotificationRow> {
    app.svc
        .store
        .list_notifications(1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.recipient == who)
        .collect()
}

async fn alert_mails(app: &TestApp, who: &str, needle: &str) -> usize {
    mails_to(app, who)
        .await
        .iter()
        .filter(|m| m.kind == "alert" && m.subject.contains(needle))
        .count()
}

async fn raised(app: &TestApp, rule: &str) -> usize {
    let mut n = 0;
    let mut rows = app.svc.store.audit_stream();
    use futures::StreamExt;
    while let Some(r) = rows.next().await {
        let r = r.unwrap();
        if r.action == "alert.raised" {
            let d: Value = serde_json::from_str(&r.details).unwrap();
            if d["rule"] == rule {
                n += 1;
            }
        }
    }
    n
}

async fn azure_alerts_reach_the_watchers_of_the_vaults_guard_once(b: Backend) {
    let app = spawn_alerts(b, |raw| {
        raw.alerts.fallback_watchers = Some(vec!["soc@demo.twokey".into()]);
    })
    .await;

    // Arrange/act: a backup failure on a demo-single vault, a vault delete on a demo-dual one.
    let (s, v) = post_alert(&app, &payload("backup_failure.json")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["kind"], "backup_failure");
    assert_eq!(v["guards"], json!(["demo-single"]));
    let (s, v) = post_alert(&app, &payload("activity_vault_delete.json")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["kind"], "activity");
    assert_eq!(v["guards"], json!(["demo-dual"]));
    // Azure retries, or a second action group: the same alert again is taken in once.
    let (s, v) = post_alert(&app, &payload("backup_failure.json")).await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("duplicate"))
    );
    app.settle().await;

    // Sam watches both guards: one mail per alert. Ops only demo-single, Fin only demo-dual.
    assert_eq!(alert_mails(&app, "sam@demo.twokey", "Azure alert").await, 2);
    assert_eq!(
        alert_mails(&app, "ops@demo.twokey", "Backup Failure").await,
        1
    );
    assert_eq!(alert_mails(&app, "ops@demo.twokey", "Azure alert").await, 1);
    assert_eq!(
        alert_mails(&app, "fin@demo.twokey", "vault deleted").await,
        1
    );
    assert_eq!(alert_mails(&app, "fin@demo.twokey", "Azure alert").await, 1);
    assert_eq!(alert_mails(&app, "soc@demo.twokey", "Azure alert").await, 0);
    assert_eq!(app.audit_count("alert.received", None).await, 2);

    // Readable: what, which vault and item, when, the portal link.
    let mail = mails_to(&app, "ops@demo.twokey").await.remove(0);
    for want in [
        "Backup Failure: vm-erp-01 in vault rsv-prod-weu",
        "rg-backup-prod",
        "2026-12-03 08:41 UTC",
        "https://portal.azure.com/",
        "Sev1",
    ] {
        assert!(mail.body.contains(want), "{want} in {}", mail.body);
    }
    let mail = mails_to(&app, "fin@demo.twokey").await.remove(0);
    for want in ["eve@contoso.com", "Succeeded", "rsv-finance", "act now"] {
        assert!(mail.body.contains(want), "{want} in {}", mail.body);
    }

    // A "Resolved" is news after a "Fired"; an alert for a vault no guard covers goes to the
    // fallback watchers only.
    let mut resolved = payload("backup_failure.json");
    resolved["data"]["essentials"]["monitorCondition"] = json!("Resolved");
    assert_eq!(post_alert(&app, &resolved).await.0, StatusCode::OK);
    let mut stray = payload("activity_vault_delete.json");
    stray["data"]["essentials"]["alertId"] = json!("/subscriptions/x/alerts/stray");
    let other = rsv("rg-elsewhere", "rsv-unguarded").to_ascii_lowercase();
    stray["data"]["essentials"]["alertTargetIDs"] = json!([other]);
    stray["data"]["alertContext"]["authorization"]["scope"] = json!(other);
    let (s, v) = post_alert(&app, &stray).await;
    assert_eq!((s, v["guards"].clone()), (StatusCode::OK, json!([])));
    app.settle().await;
    assert_eq!(alert_mails(&app, "ops@demo.twokey", "Resolved").await, 1);
    assert_eq!(
        alert_mails(&app, "soc@demo.twokey", "rsv-unguarded").await,
        1
    );
    assert_eq!(
        alert_mails(&app, "sam@demo.twokey", "rsv-unguarded").await,
        0
    );
    assert_eq!(app.audit_count("alert.received", None).await, 4);
}

async fn the_intake_refuses_wrong_secrets_big_bodies_and_bad_json(b: Backend) {
    let app = spawn_alerts(b, |_| {}).await;
    let body = serde_json::to_vec(&payload("backup_failure.json")).unwrap();
    let wrong = "h00k-secret_0123456789abcdef0123456780";

    let (s, v) = post_raw(
        &app,
        &format!("/hooks/azure-monitor/azure/{wrong}"),
        &[],
        body.clone(),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );
    let (s, _) = post_raw(&app, "/hooks/azure-monitor/azure", &[], body.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "no secret at all");
    let (s, _) = post_raw(
        &app,
        &format!("/hooks/azure-monitor/other/{HOOK_SECRET}"),
        &[],
        body.clone(),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the secret of another hook name"
    );
    assert_eq!(app.audit_count("auth.failed", None).await, 3);

    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(2 * 1024 * 1024)).into_bytes();
    let (s, v) = post_raw(
        &app,
        "/hooks/azure-monitor/azure",
        &[("x-twokey-hook-secret", HOOK_SECRET)],
        big,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
    let (s, v) = post_raw(
        &app,
        "/hooks/azure-monitor/azure",
        &[("x-twokey-hook-secret", HOOK_SECRET)],
        b"{\"schemaId\": \"azureMonitorCommonAlertSchema\", \"data\": ".to_vec(),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_json"))
    );
    let (s, v) = post_alert(
        &app,
        &json!({"schemaId": "Microsoft.Insights/activityLogs", "data": {}}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("schemaId"))
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("common alert schema")
    );
    assert_eq!(
        app.svc.store.job_counts().await.unwrap(),
        vec![],
        "nothing queued"
    );
    assert_eq!(app.audit_count("alert.received", None).await, 0);

    // The same alert eight times at once: taken in once.
    let delete = payload("activity_vault_delete.json");
    let answers = futures::future::join_all((0..8).map(|_| post_alert(&app, &delete))).await;
    let accepted = answers
        .iter()
        .filter(|(s, v)| *s == StatusCode::OK && v["status"] == "accepted")
        .count();
    let duplicates = answers
        .iter()
        .filter(|(s, v)| *s == StatusCode::OK && v["status"] == "duplicate")
        .count();
    assert_eq!((accepted, duplicates), (1, 7), "{answers:?}");
    assert_eq!(app.audit_count("alert.received", None).await, 1);
    app.settle().await;
    assert_eq!(alert_mails(&app, "fin@demo.twokey", "Azure alert").await, 1);

    // The header form with the right secret works.
    let (s, v) = post_raw(
        &app,
        "/hooks/azure-monitor/azure",
        &[("x-twokey-hook-secret", HOOK_SECRET)],
        body,
    )
    .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("accepted"))
    );
    assert_eq!(app.audit_count("alert.received", None).await, 2);
}

/// One call a receiver got: its kind (path), headers and raw body.
type Call = (String, reqwest::header::HeaderMap, Vec<u8>);

/// A local webhook receiver: records each call, and fails the first `fail` calls to `/json`.
#[derive(Clone, Default)]
pub(crate) struct Receiver {
    calls: Arc<Mutex<Vec<Call>>>,
    fail: Arc<Mutex<usize>>,
}

impl Receiver {
    pub(crate) async fn start(fail: usize) -> (Self, String) {
        use axum::extract::{Path, State};
        let r = Self::default();
        *r.fail.lock().unwrap() = fail;
        let app = axum::Router::new()
            .route(
                "/{kind}/{token}",
                axum::routing::post(
                    |State(r): State<Receiver>,
                     Path((kind, _token)): Path<(String, String)>,
                     headers: axum::http::HeaderMap,
                     body: axum::body::Bytes| async move {
                        let mut h = reqwest::header::HeaderMap::new();
                        for (k, v) in &headers {
                            h.insert(k.clone(), v.clone());
                        }
                        r.calls
                            .lock()
                            .unwrap()
                            .push((kind.clone(), h, body.to_vec()));
                        let mut fail = r.fail.lock().unwrap();
                        if kind == "json" && *fail > 0 {
                            *fail -= 1;
                            return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        axum::http::StatusCode::OK
                    },
                ),
            )
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, base)
    }

    pub(crate) fn calls(&self, kind: &str) -> Vec<(reqwest::header::HeaderMap, Value)> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.0 == kind)
            .map(|c| (c.1.clone(), serde_json::from_slice(&c.2).unwrap()))
            .collect()
    }
}

fn hmac_hex(key: &str, msg: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    m.update(msg);
    hex::encode(m.finalize().into_bytes())
}

async fn webhooks_are_signed_retried_and_delivered_once(b: Backend) {
    let (rx, base) = Receiver::start(3).await;
    let json_secret = "whsec_0123456789abcdef0123456789abcdef";
    let hook = |name: &str, kind: &str, events: Option<Vec<&str>>| RawWebhook {
        name: name.into(),
        kind: kind.into(),
        url: Some(format!("{base}/{kind}/T0KEN-{name}")),
        url_file: None,
        secret: (kind == "json").then(|| json_secret.to_string()),
        secret_file: None,
        events: events.map(|e| e.into_iter().map(String::from).collect()),
    };
    let app = spawn_alerts(b, |raw| {
        raw.alerts.allow_http_loopback = Some(true);
        raw.webhooks = vec![
            hook("siem", "json", None),
            hook("chat", "slack", Some(vec!["created"])),
            hook(
                "teams",
                "teams",
                Some(vec!["alert.received", "alert.raised"]),
            ),
        ];
        raw.guards[0].webhooks = vec!["siem".into(), "chat".into(), "teams".into()];
    })
    .await;

    let alice = app.client_as("alice@demo.twokey").await;
    let id = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The receiver fails three times; each retry waits its backoff (5 s, 10 s, 20 s).
    for _ in 0..6 {
        app.settle().await;
        app.clock.advance(Duration::minutes(1));
    }

    let json_calls = rx.calls("json");
    assert_eq!(json_calls.len(), 4, "three failures, then one success");
    let (h, body) = json_calls.last().unwrap();
    assert_eq!(body["event"], "created");
    assert_eq!(body["request_id"], json!(id));
    assert_eq!(body["guards"], json!(["demo-single"]));
    // The signature verifies over `timestamp.body`, with the body exactly as it arrived.
    let ts = h["x-twokey-timestamp"].to_str().unwrap();
    let sent = rx
        .calls
        .lock()
        .unwrap()
        .iter()
        .rfind(|c| c.0 == "json")
        .map(|c| c.2.clone())
        .unwrap();
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&sent);
    assert_eq!(
        h["x-twokey-signature"].to_str().unwrap(),
        format!("sha256={}", hmac_hex(json_secret, &signed))
    );
    // Every attempt is the same delivery.
    let ids: Vec<String> = json_calls
        .iter()
        .map(|(h, _)| h["x-twokey-delivery"].to_str().unwrap().to_string())
        .collect();
    assert!(ids.iter().all(|d| d == &ids[0]));
    let slack = rx.calls("slack");
    assert_eq!(slack.len(), 1, "slack hears only of `created`");
    assert!(slack[0].1["text"].as_str().unwrap().contains("created"));
    assert!(rx.calls("teams").is_empty(), "teams hears only of alerts");

    // An Azure alert reaches the json and teams webhooks (not slack).
    assert_eq!(
        post_alert(&app, &payload("backup_failure.json")).await.0,
        StatusCode::OK
    );
    app.settle().await;
    let teams = rx.calls("teams");
    assert_eq!(teams.len(), 1);
    let card = &teams[0].1["attachments"][0];
    assert_eq!(
        card["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert!(card.to_string().contains("vm-erp-01"));
    assert_eq!(rx.calls("slack").len(), 1);
    assert_eq!(
        rx.calls("json").last().unwrap().1["event"],
        "alert.received"
    );

    // One notification.sent per delivery, and the URLs (credentials) are nowhere in the log.
    let mut sent = 0;
    let mut rows = app.svc.store.audit_stream();
    use futures::StreamExt;
    while let Some(r) = rows.next().await {
        let r = r.unwrap();
        assert!(
            !r.details.contains("T0KEN"),
            "webhook URL in the audit log: {}",
            r.details
        );
        if r.action == "notification.sent" && r.details.contains("\"webhook\"") {
            sent += 1;
        }
    }
    assert_eq!(
        sent, 4,
        "`created` to json and slack, the alert to json and teams"
    );
}

async fn a_self_approval_attempt_raises_one_alert(b: Backend) {
    let app = spawn_alerts(b, |_| {}).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let id = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Normal use: bob approves. No alert.
    let other = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bob = app.client_as("bob@demo.twokey").await;
    assert_eq!(bob.decide(&other, "approve").await.0, StatusCode::OK);
    assert_eq!(raised(&app, "self_approval").await, 0);

    // Alice, signed in under another spelling of her address, tries to approve her own.
    let again = app.client_as("Alice@Demo.Twokey").await;
    let (s, v) = again.decide(&id, "approve").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("self_approval"))
    );
    app.settle().await;
    assert_eq!(raised(&app, "self_approval").await, 1);
    assert_eq!(
        alert_mails(&app, "sam@demo.twokey", "self_approval").await,
        1
    );
    assert_eq!(
        alert_mails(&app, "ops@demo.twokey", "self_approval").await,
        1
    );
    assert_eq!(
        alert_mails(&app, "fin@demo.twokey", "self_approval").await,
        0
    );
    assert_eq!(alice.state(&id).await, "pending");
}

async fn a_request_outside_business_hours_raises_one_alert(b: Backend) {
    let app = spawn_alerts(b, |raw| {
        raw.alerts.time_zone = Some("Europe/Berlin".into());
        raw.alerts.business_hours = Some(RawBusinessHours {
            days: None,
            start: Some("08:00".into()),
            end: Some("18:00".into()),
        });
    })
    .await;
    let alice = app.client_as("alice@demo.twokey").await;
    // Thursday 09:00 UTC is 10:00 in Berlin.
    alice.create(&single_vault(), REVERSIBLE_OP).await;
    app.settle().await;
    assert_eq!(raised(&app, "outside_business_hours").await, 0);
    // 20:00 UTC is 21:00 in Berlin.
    app.clock.advance(Duration::hours(11));
    let alice = app.client_as("alice@demo.twokey").await;
    alice.create(&single_vault(), REVERSIBLE_OP).await;
    app.settle().await;
    assert_eq!(raised(&app, "outside_business_hours").await, 1);
    assert_eq!(
        alert_mails(&app, "ops@demo.twokey", "outside_business_hours").await,
        1
    );
}

async fn too_many_requests_in_a_day_raise_one_alert(b: Backend) {
    let app = spawn_alerts(b, |raw| raw.alerts.max_requests_per_day = Some(2)).await;
    let alice = app.client_as("alice@demo.twokey").await;
    for _ in 0..2 {
        alice.create(&single_vault(), REVERSIBLE_OP).await;
    }
    assert_eq!(raised(&app, "too_many_requests").await, 0);
    for _ in 0..2 {
        alice.create(&single_vault(), REVERSIBLE_OP).await;
    }
    app.settle().await;
    assert_eq!(
        raised(&app, "too_many_requests").await,
        1,
        "once, at the third"
    );
    assert_eq!(
        alert_mails(&app, "sam@demo.twokey", "too_many_requests").await,
        1
    );
    // Another person is counted on their own.
    let dave = app.client_as("dave@demo.twokey").await;
    dave.create(&single_vault(), REVERSIBLE_OP).await;
    assert_eq!(raised(&app, "too_many_requests").await, 1);
}

async fn a_destructive_request_after_a_backup_failure_raises_one_alert(b: Backend) {
    let app = spawn_alerts(b, |_| {}).await;
    let alice = app.client_as("alice@demo.twokey").await;
    // Normal use: no failure, a destructive request.
    alice.create(&single_vault(), IRREVERSIBLE_OP).await;
    assert_eq!(raised(&app, "destructive_after_backup_failure").await, 0);

    assert_eq!(
        post_alert(&app, &payload("backup_failure.json")).await.0,
        StatusCode::OK
    );
    // A reversible request on that vault, and a destructive one on another vault: no alert.
    alice.create(&single_vault(), REVERSIBLE_OP).await;
    alice
        .create(&rsv("rg-backup-finance", "rsv-finance"), IRREVERSIBLE_OP)
        .await;
    assert_eq!(raised(&app, "destructive_after_backup_failure").await, 0);
    // Delete the vault whose backups just failed.
    alice.create(&single_vault(), IRREVERSIBLE_OP).await;
    app.settle().await;
    assert_eq!(raised(&app, "destructive_after_backup_failure").await, 1);
    assert_eq!(
        alert_mails(&app, "ops@demo.twokey", "destructive_after_backup_failure").await,
        1
    );
    // More than 24 hours later the failure no longer counts.
    app.clock.advance(Duration::hours(25));
    let alice = app.client_as("alice@demo.twokey").await;
    alice.create(&single_vault(), IRREVERSIBLE_OP).await;
    assert_eq!(raised(&app, "destructive_after_backup_failure").await, 1);
}

async fn too_few_approvers_raise_one_alert_a_day(b: Backend) {
    // Normal: the demo guards have enough approvers.
    let app = spawn_alerts(b, |_| {}).await;
    app.settle().await;
    assert_eq!(raised(&app, "approver_coverage").await, 0);
    // demo-single needs 3, but only Bob and Carol approve for it.
    let app = app
        .restart_with(|raw| {
            with_alerts(raw);
            raw.guards[0].required_approvals = Some(3);
        })
        .await;
    app.settle().await;
    app.settle().await;
    assert_eq!(
        raised(&app, "approver_coverage").await,
        1,
        "checked at start"
    );
    app.clock.advance(Duration::hours(6));
    app.settle().await;
    assert_eq!(raised(&app, "approver_coverage").await, 1, "once a day");
    app.clock.advance(Duration::hours(24));
    app.settle().await;
    assert_eq!(
        raised(&app, "approver_coverage").await,
        2,
        "and again the next day"
    );
    assert_eq!(
        alert_mails(&app, "ops@demo.twokey", "approver_coverage").await,
        2
    );
    assert_eq!(
        alert_mails(&app, "fin@demo.twokey", "approver_coverage").await,
        0
    );
}

async fn the_digest_goes_to_each_watcher_once_a_day(b: Backend) {
    use twokey::audit::checkpoint::{Checkpoint, CheckpointKey};
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("checkpoint.pem");
    std::fs::write(&key_file, CheckpointKey::from_seed([9; 32]).to_pem()).unwrap();
    let app = spawn_alerts(b, |raw| {
        raw.alerts.digest = Some(true);
        raw.alerts.digest_time = Some("10:00".into());
        raw.audit.checkpoint_key_file = Some(key_file.clone());
    })
    .await;
    let alice = app.client_as("alice@demo.twokey").await;
    alice.create(&single_vault(), REVERSIBLE_OP).await;
    assert_eq!(
        post_alert(&app, &payload("activity_vault_delete.json"))
            .await
            .0,
        StatusCode::OK
    );
    app.settle().await;
    assert_eq!(
        alert_mails(&app, "sam@demo.twokey", "digest").await,
        0,
        "not before 10:00"
    );
    app.clock.advance(Duration::hours(1));
    app.settle().await;
    app.settle().await;
    for w in ["sam@demo.twokey", "ops@demo.twokey", "fin@demo.twokey"] {
        assert_eq!(alert_mails(&app, w, "daily digest").await, 1, "{w}");
    }
    let ops = mails_to(&app, "ops@demo.twokey").await;
    let digest = ops.iter().find(|m| m.subject.contains("digest")).unwrap();
    assert!(
        digest.subject.contains("1 open, 0 active, 0 alert(s)"),
        "{}",
        digest.subject
    );
    let fin = mails_to(&app, "fin@demo.twokey").await;
    let digest = fin.iter().find(|m| m.subject.contains("digest")).unwrap();
    assert!(
        digest.subject.contains("0 open, 0 active, 1 alert(s)"),
        "{}",
        digest.subject
    );
    assert!(digest.body.contains("Audit chain head"));
    // The daily checkpoint: signed by the instance key, naming a real event of the chain.
    let line = digest
        .body
        .lines()
        .find_map(|l| l.find("{\"seq\"").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no signed checkpoint in\n{}", digest.body));
    let cp = Checkpoint::parse(line).unwrap();
    cp.verify(&CheckpointKey::from_seed([9; 32]).public())
        .unwrap();
    let row = app.svc.store.audit_row(cp.seq).await.unwrap().unwrap();
    assert_eq!(row.hash, cp.hash);
}
