//! Production behaviour, with real `twokey serve` processes: `/metrics` on its own listener,
//! a graceful stop with a request in flight, and two replicas sharing one PostgreSQL database
//! while one of them is killed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration as StdDuration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use time::OffsetDateTime;

use crate::azure::azure_config;
use crate::azure_crash::{
    Broker, binary_copy, create_approved, free_port, set_window_end, state_of, wait_for,
};
use crate::both_backends;
use crate::fake_arm::*;
use crate::helpers::*;
use twokey::config::RawConfig;
use twokey::store::Store;
use twokey::timefmt;

/// A broker config on `port` against the fake ARM (azure-pim), fast job timings.
pub(crate) fn write_config(
    db: &TestDb,
    fake: &FakeArm,
    port: u16,
    name: &str,
    change: impl FnOnce(&mut RawConfig),
) -> PathBuf {
    let mut raw = test_config(&db.dir(), &db.url);
    azure_config(&mut raw, fake, "azure-pim");
    raw.server.bind = Some(format!("127.0.0.1:{port}"));
    raw.server.public_url = Some(format!("http://127.0.0.1:{port}"));
    raw.jobs.enabled = Some(true);
    raw.jobs.lease = Some("3s".into());
    raw.jobs.poll_interval = Some("200ms".into());
    raw.jobs.sweep_interval = Some("1s".into());
    raw.azure.timeout = Some("60s".into());
    change(&mut raw);
    let path = db.dir().join(name);
    std::fs::write(&path, toml::to_string(&raw).unwrap()).unwrap();
    path
}

/// One sample of a scrape: name, labels, value.
type Samples = Vec<(String, HashMap<String, String>, f64)>;

/// Parse a Prometheus text page with an independent parser (prometheus-parse), failing on
/// any line it cannot read.
fn parse_metrics(text: &str) -> Samples {
    for line in text.lines() {
        assert!(
            line.starts_with('#') || line.is_empty() || line.split_whitespace().count() >= 2,
            "not a sample line: {line:?}"
        );
    }
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format");
    let mut out = Vec::new();
    for s in scrape.samples {
        let labels: HashMap<String, String> = s
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => {
                continue;
            }
        };
        out.push((s.metric, labels, value));
    }
    out
}

/// The sum of `name`'s samples whose labels include all of `want`.
fn value(samples: &Samples, name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

both_backends!(metrics_parse_and_count_what_the_broker_did);

async fn metrics_parse_and_count_what_the_broker_did(b: Backend) {
    let fake = FakeArm::start().await;
    let db = TestDb::new(b).await;
    let (port, mport) = (free_port(), free_port());
    let config = write_config(&db, &fake, port, "twokey.toml", |raw| {
        raw.server.metrics_bind = Some(format!("127.0.0.1:{mport}"));
    });
    let log = db.dir().join("twokey.log");
    let bin = binary_copy(&db.dir());
    let store = Store::connect(&db.url, 2).await.unwrap();
    let broker = Broker::start(&bin, &config, port, &log).await;

    let id = create_approved(&broker.base).await;
    wait_for("the grant", &log, async || {
        (state_of(&store, &id).await == "active").then_some(())
    })
    .await;
    // A review link that is not one: refused and audited.
    let refused = reqwest::get(format!("{}/review/not-a-review-token", broker.base))
        .await
        .unwrap();
    assert!(refused.status().is_client_error());
    // Let the jobs that are due (mail) run, so that the page and the tables agree.
    wait_for("the due jobs to run", &log, async || {
        let due = store
            .query_pairs_for_tests(&format!(
                "select kind, job_id from job where state = 'queued' and run_at <= '{}'",
                timefmt::fmt(OffsetDateTime::now_utc())
            ))
            .await;
        due.is_empty().then_some(())
    })
    .await;

    // `/metrics` is on its own listener only.
    let main = reqwest::get(format!("{}/metrics", broker.base))
        .await
        .unwrap();
    assert_eq!(main.status(), StatusCode::NOT_FOUND);
    let resp = reqwest::get(format!("http://127.0.0.1:{mport}/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    let m = parse_metrics(&text);

    // Every audit event the database holds, counted by action, and nothing else.
    let by_action: Vec<(String, i64)> = store
        .query_pairs_for_tests(
            "select action, cast(count(*) as text) from audit_event group by action",
        )
        .await
        .into_iter()
        .map(|(a, n)| (a, n.parse().unwrap()))
        .collect();
    let head_after = store.audit_head().await.unwrap().0;
    let total: i64 = by_action.iter().map(|(_, n)| n).sum();
    assert_eq!(
        total, head_after,
        "no event was written while the test read"
    );
    assert!(by_action.iter().any(|(a, _)| a == "token.rejected"));
    for (action, n) in &by_action {
        assert_eq!(
            value(&m, "twokey_audit_events_total", &[("action", action)]),
            *n as f64,
            "audit events {action}\n{text}"
        );
    }
    assert_eq!(value(&m, "twokey_audit_events_total", &[]), total as f64);

    assert_eq!(value(&m, "twokey_requests", &[("state", "active")]), 1.0);
    assert_eq!(value(&m, "twokey_requests", &[]), 1.0);
    let states = m.iter().filter(|(n, _, _)| n == "twokey_requests").count();
    assert_eq!(states, 8, "every state has a series, zeros included");
    assert_eq!(
        value(
            &m,
            "twokey_http_responses_total",
            &[
                ("method", "POST"),
                ("route", "/api/v1/requests"),
                ("status", "201")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "twokey_job_attempts_total",
            &[("kind", "grant"), ("outcome", "done")]
        ),
        1.0
    );
    // Every ARM call the fake saw, by method.
    for method in ["PUT", "GET"] {
        assert_eq!(
            value(&m, "twokey_arm_requests_total", &[("method", method)]),
            fake.calls_to(method, "/").len() as f64,
            "ARM {method} calls\n{text}"
        );
    }
    // Histograms: one request decided, one grant activated.
    for (line, want) in [
        (
            "twokey_request_decision_wait_seconds_count{decision=\"approved\"} ",
            "1",
        ),
        ("twokey_grant_activation_wait_seconds_count ", "1"),
    ] {
        let got = text
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .unwrap_or_else(|| panic!("{line} missing\n{text}"));
        assert_eq!(got, want, "{line}");
    }
    // SECURITY: labels are templates, never paths with tokens, ids or addresses.
    for secret in ["not-a-review-token", &id, "alice@demo.twokey", "127.0.0.1"] {
        assert!(!text.contains(secret), "{secret} in /metrics");
    }
    broker.kill().await;
    store.close().await;
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn a_stop_finishes_the_request_in_flight_and_exits_in_time() {
    let fake = FakeArm::start().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let port = free_port();
    let config = write_config(&db, &fake, port, "twokey.toml", |raw| {
        raw.server.shutdown_grace = Some("10s".into());
    });
    let log = db.dir().join("twokey.log");
    let bin = binary_copy(&db.dir());
    let mut broker = Broker::start_with(&bin, &config, port, &log, &[]).await;
    let alice = TestApp::client_at(&broker.base, "alice@demo.twokey").await;

    // A request whose body arrives in two parts, the second only after the stop began.
    let body = serde_json::json!({
        "vault_id": single_vault(),
        "operation": REVERSIBLE_OP,
        "justification": "restore drill INC-7 needs protection stopped",
        "duration_minutes": 30,
    })
    .to_string();
    let (first, second) = body.split_at(body.len() / 2);
    let (first, second) = (first.to_string(), second.to_string());
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let parts = futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(
        futures::stream::once(async move {
            let _ = go_rx.await;
            Ok(second)
        }),
    );
    let in_flight = tokio::spawn({
        let http = alice.http.clone();
        let url = format!("{}/api/v1/requests", broker.base);
        let csrf = alice.csrf.clone();
        async move {
            http.post(url)
                .header("content-type", "application/json")
                .header("x-csrf-token", csrf)
                .body(reqwest::Body::wrap_stream(parts))
                .send()
                .await
        }
    });
    wait_for("the request to reach the server", &log, async || {
        broker
            .log_text()
            .lines()
            .any(|l| {
                l.contains("started processing request")
                    && l.contains("\"method\":\"POST\"")
                    && l.contains("\"route\":\"/api/v1/requests\"")
            })
            .then_some(())
    })
    .await;

    let pid = broker.child.id().expect("running");
    let stop = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_for("the stop to begin", &log, async || {
        broker.log_text().contains("shutting down").then_some(())
    })
    .await;
    // New connections are no longer accepted (the listener closes as the stop begins).
    wait_for("new connections to be refused", &log, async || {
        reqwest::Client::new()
            .get(format!("{}/healthz", broker.base))
            .timeout(StdDuration::from_secs(1))
            .send()
            .await
            .is_err()
            .then_some(())
    })
    .await;

    go_tx.send(()).unwrap();
    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request was answered");
    assert_eq!(resp.status(), StatusCode::CREATED, "{}", broker.log_text());
    let created: serde_json::Value = resp.json().await.unwrap();
    let status = tokio::time::timeout(StdDuration::from_secs(15), broker.child.wait())
        .await
        .expect("exited within the grace period")
        .unwrap();
    assert!(
        status.success(),
        "exit status {status}\n{}",
        broker.log_text()
    );
    keep_log(&broker.log);
    assert!(stop.elapsed() < StdDuration::from_secs(10));

    // What it answered was committed.
    let store = Store::connect(&db.url, 1).await.unwrap();
    assert_eq!(
        state_of(&store, created["id"].as_str().unwrap()).await,
        "pending"
    );
    store.close().await;
}

/// Jobs that `replica` holds a lease on right now, by kind.
async fn leased_by(store: &Store, replica: &str) -> Vec<(String, String)> {
    store
        .query_pairs_for_tests(&format!(
            "select kind, request_id from job where state = 'queued' \
             and lease_owner like '{replica}-%'"
        ))
        .await
}

#[tokio::test]
async fn two_replicas_share_the_work_and_one_finishes_what_a_killed_one_held() {
    const N: usize = 200;
    let fake = FakeArm::start().await;
    let db = TestDb::new(Backend::Postgres).await;
    let (pa, pb) = (free_port(), free_port());
    // 200 operators, so that every request has an assignment of its own in Azure (windows of
    // one person on one guard would share one).
    let operators = |raw: &mut RawConfig| {
        for i in 0..N {
            raw.auth.dev_users.push(twokey::config::RawDevUser {
                email: format!("op{i}@demo.twokey"),
                name: format!("Operator {i}"),
                object_id: Some(format!("0e000000-0000-4000-8000-{i:012}")),
                groups: vec!["backup-operators".into()],
                description: None,
            });
        }
    };
    let ca = write_config(&db, &fake, pa, "a.toml", operators);
    let cb = write_config(&db, &fake, pb, "b.toml", operators);
    let bin = binary_copy(&db.dir());
    let (la, lb) = (db.dir().join("a.log"), db.dir().join("b.log"));
    let a = Broker::start_with(&bin, &ca, pa, &la, &[("HOSTNAME", "replica-a")]).await;
    let b = Broker::start_with(&bin, &cb, pb, &lb, &[("HOSTNAME", "replica-b")]).await;
    let store = Store::connect(&db.url, 4).await.unwrap();
    let bases = [a.base.clone(), b.base.clone()];
    let bob = [
        TestApp::client_at(&a.base, "bob@demo.twokey").await,
        TestApp::client_at(&b.base, "bob@demo.twokey").await,
    ];
    let create_and_approve = async |i: usize, alive: &[usize]| -> String {
        // Asked at one replica, approved at the other (while both live).
        let (x, y) = (alive[i % alive.len()], alive[(i + 1) % alive.len()]);
        let operator = TestApp::client_at(&bases[x], &format!("op{i}@demo.twokey")).await;
        let id = operator.create(&single_vault(), REVERSIBLE_OP).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(bob[y].decide(&id, "approve").await.1["state"], "approved");
        id
    };

    let mut ids = Vec::new();
    for i in 0..N / 2 {
        ids.push(create_and_approve(i, &[0, 1]).await);
    }
    wait_for("the first half active", &la, async || {
        let states = store
            .query_pairs_for_tests(
                "select state, cast(count(*) as text) from request group by state",
            )
            .await;
        (states == vec![("active".to_string(), (N / 2).to_string())]).then_some(())
    })
    .await;
    // The next grant's answer from Azure never arrives: whichever replica sent it holds the
    // job's lease while it waits. That replica is killed.
    fake.fault(
        "PUT",
        "/roleAssignmentScheduleRequests/",
        Some("AdminAssign"),
        FaultKind::LateAnswer(StdDuration::from_secs(600)),
        1,
    );
    ids.push(create_and_approve(N / 2, &[0, 1]).await);
    let (victim, held) = wait_for("a replica stuck on a leased grant", &la, async || {
        for r in ["replica-a", "replica-b"] {
            let held = leased_by(&store, r).await;
            if held
                .iter()
                .any(|(kind, rid)| kind == "grant" && Some(rid) == ids.last())
            {
                return Some((r, held));
            }
        }
        None
    })
    .await;
    let stuck = ids.last().unwrap().clone();
    let (dead, survivor) = if victim == "replica-a" {
        (a, b)
    } else {
        (b, a)
    };
    let survivor_index = if victim == "replica-a" { 1 } else { 0 };
    dead.kill().await;
    assert!(held.iter().any(|(_, rid)| *rid == stuck));

    // The rest, through the survivor only.
    for i in N / 2 + 1..N {
        ids.push(create_and_approve(i, &[survivor_index]).await);
    }
    let started = Instant::now();
    let mut polls = 0u32;
    wait_for("every grant active", &survivor.log, async || {
        let active: Vec<(String, String)> = store
            .query_pairs_for_tests(
                "select state, cast(count(*) as text) from request group by state",
            )
            .await;
        polls += 1;
        if polls.is_multiple_of(200) {
            eprintln!("still waiting for every grant: {active:?}");
        }
        (active == vec![("active".to_string(), N.to_string())]).then_some(())
    })
    .await;
    let takeover = started.elapsed();

    // End every window now; the survivor revokes them all.
    let until = timefmt::trunc(OffsetDateTime::now_utc() + time::Duration::seconds(1));
    for id in &ids {
        set_window_end(&store, id, until).await;
    }
    wait_for("every window ended", &survivor.log, async || {
        let ended: Vec<(String, String)> = store
            .query_pairs_for_tests(
                "select state, cast(count(*) as text) from request group by state",
            )
            .await;
        (ended == vec![("ended".to_string(), N.to_string())]).then_some(())
    })
    .await;

    // Exactly once, as Azure saw it.
    assert_eq!(
        fake.created_instances().len(),
        N,
        "one assignment per request"
    );
    assert!(fake.instances().is_empty(), "every assignment removed");
    // One schedule request per request and step, by name. A PUT may be sent twice under the same
    // name when a loaded machine lets a 3 s lease run out mid-call and the other replica retries:
    // Azure treats the same name as the same request (the assignment counts above are the proof).
    let names = |kind: &str| {
        let calls: Vec<Call> = fake
            .calls_to("PUT", "/roleAssignmentScheduleRequests/")
            .into_iter()
            .filter(|c| c.body["properties"]["requestType"] == kind)
            .collect();
        let distinct: std::collections::BTreeSet<String> =
            calls.iter().map(|c| c.path.to_lowercase()).collect();
        (distinct.len(), calls.len())
    };
    let (assign_names, assign_calls) = names("AdminAssign");
    let (remove_names, remove_calls) = names("AdminRemove");
    assert_eq!(assign_names, N, "one assign request per request");
    assert_eq!(remove_names, N, "one remove request per request");
    // And as the audit log says it.
    let per_request: Vec<(String, String)> = store
        .query_pairs_for_tests(
            "select action, cast(count(distinct request_id) as text) || '/' || cast(count(*) as text) from audit_event \
             where action in ('grant.active', 'grant.ended') group by action order by action",
        )
        .await;
    assert_eq!(
        per_request,
        vec![
            ("grant.active".to_string(), format!("{N}/{N}")),
            ("grant.ended".to_string(), format!("{N}/{N}")),
        ]
    );
    // Both replicas ran grants, and the survivor finished the one the dead replica held.
    for log in [&la, &lb] {
        assert!(
            std::fs::read_to_string(log)
                .unwrap()
                .contains("\"kind\":\"grant\""),
            "{} ran no grant",
            log.display()
        );
    }
    assert_eq!(state_of(&store, &stuck).await, "ended");
    assert_eq!(fake.violations(), Vec::<String>::new());
    let verify = tokio::process::Command::new(&bin)
        .args(["audit", "verify", "--config"])
        .arg(&ca)
        .output()
        .await
        .unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    survivor.kill().await;
    store.close().await;
    eprintln!(
        "MEASURED: {N} requests through two replicas, one SIGKILLed holding a lease; \
         all active {} ms after the last approval; {assign_calls} assign and {remove_calls} \
         remove calls for {N} requests",
        takeover.as_millis()
    );
}
