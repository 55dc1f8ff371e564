//! The audit log as an auditor meets it: tampering named by seq and reason (database and
//! export files, against a signed checkpoint), CSV / JSON Lines / OCSF exports through the CLI
//! and the API, filters, and two concurrent writers on PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration as StdDuration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use time::Duration;

use crate::both_backends;
use crate::helpers::*;
use twokey::audit::checkpoint::CheckpointKey;
use twokey::audit::export::CSV_COLUMNS;

both_backends!(
    tampering_in_the_database_is_named_by_seq_and_reason,
    export_files_verify_whole_partial_or_broken,
    csv_export_has_the_documented_columns_and_neutralises_formulas,
    export_filters_return_exactly_the_matching_events,
    api_export_is_for_auditors_and_streams_chunked,
);

const HYPERLINK: &str =
    "=HYPERLINK(\"https://evil.example/x\",\"open me\") decommission per CHG-1234";

/// A config file for the CLI on the app's database, with a checkpoint key.
fn cli_config(app: &TestApp) -> PathBuf {
    let dir = app.db.dir();
    let key = dir.join("checkpoint.pem");
    std::fs::write(&key, CheckpointKey::from_seed([5; 32]).to_pem()).unwrap();
    let mut raw = test_config(&dir, &app.db.url);
    raw.audit.checkpoint_key_file = Some(key);
    let config = dir.join("config.toml");
    std::fs::write(&config, toml::to_string(&raw).unwrap()).unwrap();
    config
}

/// Run the real binary: (exit code, stdout + stderr).
fn twokey<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_twokey"))
        .args(args)
        .env("TWOKEY_LOG_FORMAT", "json")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn stdout_of<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_twokey"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A whole story: sign-ins, a request with a formula in its justification, a review, an
/// approval, the window opening and ending. Returns the request id.
async fn story(app: &TestApp) -> String {
    let alice = app.client_as("alice@demo.twokey").await;
    let bob = app.client_as("bob@demo.twokey").await;
    let (s, body) = alice
        .post_json(
            "/api/v1/requests",
            &json!({
                "vault_id": single_vault(),
                "operation": REVERSIBLE_OP,
                "justification": HYPERLINK,
                "ticket": "CHG-1234",
                "duration_minutes": 30,
            }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    app.clock.advance(Duration::minutes(5));
    let (s, body) = bob.decide(&id, "approve").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    app.settle().await;
    app.clock.advance(Duration::minutes(31));
    app.settle().await;
    assert_eq!(alice.state(&id).await, "ended");
    id
}

async fn seq_of(app: &TestApp, id: &str, action: &str) -> i64 {
    app.svc
        .store
        .audit_for_request(id)
        .await
        .unwrap()
        .iter()
        .find(|r| r.action == action)
        .unwrap_or_else(|| panic!("no {action}"))
        .seq
}

async fn tampering_in_the_database_is_named_by_seq_and_reason(b: Backend) {
    for tamper in ["edit", "delete", "swap", "truncate"] {
        // Arrange: a whole story and a signed checkpoint of its head.
        let app = TestApp::spawn(b).await;
        let id = story(&app).await;
        let config = cli_config(&app);
        let (code, out) = twokey(&["audit", "verify", "--config", config.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}");
        let cp = app.db.dir().join("checkpoint.json");
        std::fs::write(
            &cp,
            stdout_of(&["audit", "checkpoint", "--config", config.to_str().unwrap()]),
        )
        .unwrap();
        let k = seq_of(&app, &id, "decision.approved").await;
        let raw = |sql: String| {
            let store = app.svc.store.clone();
            async move { store.execute_raw_for_tests(&sql).await.unwrap() }
        };

        // Act
        let (reason, seq) = match tamper {
            "edit" => {
                raw(format!(
                    "update audit_event set details = '{{\"comment\":\"fine\"}}' where seq = {k}"
                ))
                .await;
                ("edited", k)
            }
            "delete" => {
                raw(format!("delete from audit_event where seq = {k}")).await;
                ("missing", k)
            }
            "swap" => {
                raw(format!("update audit_event set seq = -1 where seq = {k}")).await;
                raw(format!(
                    "update audit_event set seq = {k} where seq = {}",
                    k + 1
                ))
                .await;
                raw(format!(
                    "update audit_event set seq = {} where seq = -1",
                    k + 1
                ))
                .await;
                ("reordered", k)
            }
            _ => {
                // Cut the tail and move the stored head back: only the checkpoint can tell.
                raw(format!("delete from audit_event where seq > {k}")).await;
                raw(format!(
                    "update audit_head set seq = {k}, hash = (select hash from audit_event where seq = {k}) where id = 1"
                ))
                .await;
                let (code, out) =
                    twokey(&["audit", "verify", "--config", config.to_str().unwrap()]);
                assert_eq!(code, 0, "without a checkpoint the cut is invisible: {out}");
                ("truncated", k + 1)
            }
        };
        let (code, out) = twokey(&[
            "audit",
            "verify",
            "--config",
            config.to_str().unwrap(),
            "--checkpoint",
            cp.to_str().unwrap(),
        ]);

        // Assert
        assert_eq!(code, 1, "{tamper}: {out}");
        assert!(
            out.contains(&format!("BROKEN at seq {seq}:")) && out.contains(reason),
            "{tamper}: expected seq {seq} {reason}: {out}"
        );
    }
}

fn export_file(config: &Path, dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut args = vec![
        "audit",
        "export",
        "--config",
        config.to_str().unwrap(),
        "--output",
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, out) = twokey(&args);
    assert_eq!(code, 0, "{out}");
    assert!(!dir.join(format!("{name}.partial")).exists());
    path
}

fn verify_file(path: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["audit", "verify", "--file", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    twokey(&args)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

async fn export_files_verify_whole_partial_or_broken(b: Backend) {
    let app = TestApp::spawn(b).await;
    let id = story(&app).await;
    let config = cli_config(&app);
    let dir = app.db.dir();
    let cfg = config.to_str().unwrap();
    let full = export_file(&config, &dir, "all.jsonl", &["--format", "jsonl"]);
    let all = lines(&full);
    assert!(all.len() > 10, "{all:?}");
    let cp = dir.join("cp.json");
    std::fs::write(&cp, stdout_of(&["audit", "checkpoint", "--config", cfg])).unwrap();
    let public = dir.join("public.pem");
    std::fs::write(
        &public,
        stdout_of(&["audit", "checkpoint", "--config", cfg, "--public-key"]),
    )
    .unwrap();
    let (cp_arg, pk_arg) = (cp.to_str().unwrap(), public.to_str().unwrap());

    // A whole export verifies without any configuration, also against the checkpoint.
    let (code, out) = verify_file(&full, &["--checkpoint", cp_arg, "--public-key", pk_arg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("whole"), "{out}");

    let write = |name: &str, ls: &[String]| {
        let p = dir.join(name);
        std::fs::write(&p, ls.join("\n") + "\n").unwrap();
        p
    };
    let seq_at = |i: usize| -> i64 {
        serde_json::from_str::<Value>(&all[i]).unwrap()["seq"]
            .as_i64()
            .unwrap()
    };

    // An edited line names its seq.
    let mut edited = all.clone();
    let mut ev: Value = serde_json::from_str(&edited[5]).unwrap();
    ev["details"]["forged"] = json!(true);
    edited[5] = ev.to_string();
    let (code, out) = verify_file(&write("edited.jsonl", &edited), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("seq {}: edited", seq_at(5))), "{out}");

    // Two lines swapped: reordered.
    let mut swapped = all.clone();
    swapped.swap(3, 4);
    let (code, out) = verify_file(&write("swapped.jsonl", &swapped), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("seq {}: reordered", seq_at(3))),
        "{out}"
    );

    // The last lines cut off: only the checkpoint can tell.
    let cut = &all[..all.len() - 2];
    let cut_path = write("cut.jsonl", cut);
    let (code, out) = verify_file(&cut_path, &[]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = verify_file(&cut_path, &["--checkpoint", cp_arg, "--public-key", pk_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("seq {}:", seq_at(all.len() - 2))) && out.contains("truncated"),
        "{out}"
    );

    // A forged checkpoint is refused.
    let mut forged: Value = serde_json::from_str(&std::fs::read_to_string(&cp).unwrap()).unwrap();
    forged["seq"] = json!(forged["seq"].as_i64().unwrap() - 2);
    let forged_path = dir.join("forged.json");
    std::fs::write(&forged_path, forged.to_string()).unwrap();
    let (code, out) = verify_file(
        &cut_path,
        &[
            "--checkpoint",
            forged_path.to_str().unwrap(),
            "--public-key",
            pk_arg,
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("checkpoint REJECTED"), "{out}");

    // A line deleted from the middle: a partial chain, naming what is missing.
    let mut holed = all.clone();
    holed.remove(6);
    let (code, out) = verify_file(&write("holed.jsonl", &holed), &[]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("PARTIAL") && out.contains(&format!("missing seq {}", seq_at(6))),
        "{out}"
    );

    // A filtered export is partial too; --allow-partial accepts it.
    let one = export_file(&config, &dir, "one.jsonl", &["--request", &id]);
    let (code, out) = verify_file(&one, &[]);
    assert_eq!(code, 3, "{out}");
    let (code, out) = verify_file(&one, &["--allow-partial"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PARTIAL"), "{out}");

    // The standard-tools recipe of the README agrees.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/audit-verify-jsonl.sh");
    let run = |p: &Path| {
        let out = Command::new("bash").arg(script).arg(p).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = run(&full);
    assert_eq!(code, 0, "jq + sha256sum recipe (needs jq): {out}");
    assert!(out.contains("OK: whole chain"), "{out}");
    let (code, out) = run(&dir.join("edited.jsonl"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("seq {}: edited", seq_at(5))), "{out}");
    let (code, _) = run(&one);
    assert_eq!(code, 3);
}

/// Split RFC 4180 text into records of cells.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut cell)),
            (false, '\r') if chars.peek() == Some(&'\n') => {
                chars.next();
                record.push(std::mem::take(&mut cell));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => cell.push(c),
        }
    }
    assert!(
        cell.is_empty() && record.is_empty(),
        "text after the last CRLF"
    );
    records
}

async fn csv_export_has_the_documented_columns_and_neutralises_formulas(b: Backend) {
    let app = TestApp::spawn(b).await;
    story(&app).await;
    let erin = app.client_as("erin@demo.twokey").await;

    let r = erin.get("/api/v1/audit?format=csv").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = r.text().await.unwrap();

    assert!(text.starts_with(
        "seq,at,action,actor_id,actor_email,actor_object_id,actor_ip,actor_user_agent,request_id,guard,vault_id,operation,justification,ticket,comment,reason,details,prev_hash,hash\r\n"
    ));
    let records = parse_csv(&text);
    assert_eq!(records[0], CSV_COLUMNS);
    assert!(records.iter().all(|r| r.len() == CSV_COLUMNS.len()));
    let created = records
        .iter()
        .find(|r| r[2] == "request.created")
        .expect("request.created row");
    let col = |name: &str| CSV_COLUMNS.iter().position(|c| *c == name).unwrap();
    assert_eq!(created[col("justification")], format!("'{HYPERLINK}"));
    assert_eq!(created[col("actor_email")], "alice@demo.twokey");
    assert_eq!(created[col("ticket")], "CHG-1234");
    // No cell a spreadsheet would evaluate.
    for r in &records {
        for c in r {
            assert!(
                !c.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "unneutralised cell {c:?}"
            );
        }
    }
    // The details cell holds the full event details.
    let details: Value = serde_json::from_str(&created[col("details")]).unwrap();
    assert_eq!(details["justification"], HYPERLINK);
    // The CLI writes the same bytes.
    let config = cli_config(&app);
    let dir = app.db.dir();
    let file = export_file(&config, &dir, "a.csv", &["--format", "csv"]);
    assert_eq!(std::fs::read_to_string(file).unwrap(), text);
}

async fn jsonl(client: &Client, query: &str) -> Vec<Value> {
    let r = client.get(&format!("/api/v1/audit?{query}")).await;
    assert_eq!(r.status(), StatusCode::OK, "{query}");
    r.text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn seqs(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["seq"].as_i64().unwrap()).collect()
}

async fn export_filters_return_exactly_the_matching_events(b: Backend) {
    let app = TestApp::spawn(b).await;
    let id = story(&app).await;
    // A second request, later, by someone else.
    app.clock.advance(Duration::hours(1));
    let dave = app.client_as("dave@demo.twokey").await;
    let other = dave.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let erin = app.client_as("erin@demo.twokey").await;
    let all = jsonl(&erin, "format=jsonl").await;
    assert_eq!(seqs(&all), (1..=all.len() as i64).collect::<Vec<_>>());
    let expect = |f: &dyn Fn(&Value) -> bool| -> Vec<i64> {
        seqs(&all.iter().filter(|e| f(e)).cloned().collect::<Vec<_>>())
    };

    // --request
    let got = jsonl(&erin, &format!("request={id}")).await;
    assert_eq!(seqs(&got), expect(&|e| e["request_id"] == id.as_str()));
    assert!(!seqs(&got).is_empty());

    // --since is inclusive and --until exclusive, at the exact time of an event.
    let t1 = all
        .iter()
        .find(|e| e["action"] == "decision.approved")
        .unwrap()["at"]
        .as_str()
        .unwrap()
        .to_string();
    let t2 = all
        .iter()
        .find(|e| e["request_id"] == other.as_str())
        .unwrap()["at"]
        .as_str()
        .unwrap()
        .to_string();
    let got = jsonl(&erin, &format!("since={t1}&until={t2}")).await;
    let want = expect(&|e| {
        let at = e["at"].as_str().unwrap();
        at >= t1.as_str() && at < t2.as_str()
    });
    assert_eq!(seqs(&got), want);
    assert!(
        got.iter().any(|e| e["at"] == t1.as_str()),
        "since is inclusive"
    );
    assert!(
        !got.iter().any(|e| e["at"] == t2.as_str()),
        "until is exclusive"
    );
    // An offset other than Z means the same instant.
    let t1_local = time::OffsetDateTime::parse(&t1, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let got2 = jsonl(
        &erin,
        &format!("since={}&until={t2}", t1_local.replace('+', "%2B")),
    )
    .await;
    assert_eq!(seqs(&got2), want);

    // --actor by email in any case, or by principal id.
    let got = jsonl(&erin, "actor=BOB@Demo.Twokey").await;
    let want = expect(&|e| e["actor"]["email"] == "bob@demo.twokey");
    assert_eq!(seqs(&got), want);
    assert!(got.iter().any(|e| e["action"] == "decision.approved"));
    let bob_id = got[0]["actor"]["id"].as_str().unwrap().to_string();
    assert_eq!(seqs(&jsonl(&erin, &format!("actor={bob_id}")).await), want);

    // --action, repeated.
    let got = jsonl(&erin, "action=grant.active&action=grant.ended").await;
    assert_eq!(
        seqs(&got),
        expect(&|e| e["action"] == "grant.active" || e["action"] == "grant.ended")
    );
    assert_eq!(got.len(), 2);

    // Filters combine; the CLI gives the same lines as the API.
    let got = jsonl(&erin, &format!("request={id}&action=notification.sent")).await;
    assert_eq!(
        seqs(&got),
        expect(&|e| e["request_id"] == id.as_str() && e["action"] == "notification.sent")
    );
    let config = cli_config(&app);
    let cli = stdout_of(&[
        "audit",
        "export",
        "--config",
        config.to_str().unwrap(),
        "--request",
        &id,
        "--action",
        "notification.sent",
    ]);
    let cli: Vec<Value> = cli
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(cli, got);

    // Bad filters are refused with the field named.
    let (s, body) = erin.get_json("/api/v1/audit?since=yesterday").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["field"], "since");
    let (s, body) = erin.get_json("/api/v1/audit?action=grant.stolen").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["field"], "action");
    let (code, out) = twokey(&[
        "audit",
        "export",
        "--config",
        config.to_str().unwrap(),
        "--until",
        "soon",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--until"), "{out}");
}

async fn api_export_is_for_auditors_and_streams_chunked(b: Backend) {
    let app = TestApp::spawn(b).await;
    story(&app).await;

    // Not an auditor: 403 in the API's error format. Nobody: 401.
    let alice = app.client_as("alice@demo.twokey").await;
    let (s, body) = alice.get_json("/api/v1/audit?format=jsonl").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(body["error"]["message"].is_string());
    let r = reqwest::get(format!("{}/api/v1/audit", app.base))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // The auditor gets a chunked stream.
    let erin = app.client_as("erin@demo.twokey").await;
    let r = erin.get("/api/v1/audit?format=jsonl").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["transfer-encoding"], "chunked");
    assert!(r.headers().get("content-length").is_none());
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"twokey-audit-")
    );
    let body = r.text().await.unwrap();
    let events: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let head = app.svc.store.audit_head().await.unwrap();
    assert_eq!(events.len() as i64, head.0);
    for k in [
        "seq",
        "at",
        "action",
        "actor",
        "request_id",
        "details",
        "prev_hash",
        "hash",
    ] {
        assert!(events[0].get(k).is_some(), "{k}");
    }
    assert!(events.iter().all(|e| e["details"].is_object()));

    // OCSF: the documented classes, time in milliseconds, the raw event kept.
    let r = erin.get("/api/v1/audit?format=ocsf").await;
    assert_eq!(r.status(), StatusCode::OK);
    let ocsf: Vec<Value> = r
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ocsf.len(), events.len());
    let by_action = |a: &str| {
        ocsf.iter()
            .find(|e| e["metadata"]["event_code"] == a)
            .unwrap_or_else(|| panic!("no {a}"))
            .clone()
    };
    for (action, class, activity) in [
        ("auth.signed_in", 3002, 1),
        ("request.created", 3004, 1),
        ("decision.approved", 3004, 3),
        ("grant.active", 3005, 1),
        ("grant.ended", 3005, 2),
        ("notification.sent", 4009, 1),
    ] {
        let e = by_action(action);
        assert_eq!(e["class_uid"], class, "{action}");
        assert_eq!(e["activity_id"], activity, "{action}");
        assert_eq!(e["type_uid"], class * 100 + activity, "{action}");
        assert_eq!(e["metadata"]["product"]["name"], "twokey");
        assert_eq!(e["metadata"]["version"], "1.3.0");
        assert!(e["severity_id"].is_i64());
        let raw: Value = serde_json::from_str(e["raw_data"].as_str().unwrap()).unwrap();
        assert_eq!(raw["action"], action);
        assert_eq!(raw["hash"], e["metadata"]["uid"]);
        let at = time::OffsetDateTime::parse(
            raw["at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(
            e["time"].as_i64().unwrap() as i128,
            at.unix_timestamp_nanos() / 1_000_000
        );
    }
    let grant = by_action("grant.active");
    assert_eq!(grant["user"]["uid"], ALICE_OID);
    assert_eq!(
        grant["privileges"][0],
        "f54b6d04-23c6-443e-b462-9c16ab7b4a52"
    );
    let ended = by_action("grant.ended");
    assert_eq!(
        ended["user"]["uid"], ALICE_OID,
        "grant.ended names who lost the role"
    );
    assert_eq!(
        by_action("auth.signed_in")["user"]["email_addr"],
        "alice@demo.twokey"
    );

    // Unknown format: 422.
    let (s, body) = erin.get_json("/api/v1/audit?format=xml").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["field"], "format");
}

#[tokio::test]
async fn the_openapi_document_describes_the_audit_export() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let doc: Value = reqwest::get(format!("{}/api/v1/openapi.json", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let op = &doc["paths"]["/audit"]["get"];
    assert!(op.is_object(), "GET /audit undocumented");
    let params: Vec<&str> = op["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in ["format", "since", "until", "request", "actor", "action"] {
        assert!(params.contains(&p), "{p}");
    }
}

/// Two replicas (two pools) appending as fast as they can for 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_for_ten_seconds_make_one_gap_free_chain_on_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = twokey::store::Store::connect(&db.url, 4).await.unwrap();
    a.migrate().await.unwrap();
    let b = twokey::store::Store::connect(&db.url, 4).await.unwrap();
    let deadline = Instant::now() + StdDuration::from_secs(10);
    let writer = |store: twokey::store::Store, name: &'static str| {
        tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let mut tx = store.begin().await.unwrap();
                twokey::audit::record(
                    &mut tx,
                    time::OffsetDateTime::now_utc(),
                    twokey::audit::Action::PolicyLoaded,
                    &twokey::audit::Actor::system(),
                    None,
                    json!({ "writer": name, "n": n }),
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
                n += 1;
            }
            n
        })
    };
    let (na, nb) = (writer(a.clone(), "a"), writer(b.clone(), "b"));
    let (na, nb) = (na.await.unwrap(), nb.await.unwrap());
    assert!(na > 10 && nb > 10, "both wrote: {na} {nb}");

    let walk = twokey::audit::verify::verify_store(&a, None).await.unwrap();
    assert_eq!(
        walk,
        Ok(twokey::audit::Outcome::Whole {
            count: na + nb,
            last_seq: (na + nb) as i64
        })
    );
    a.close().await;
    b.close().await;
}

both_backends!(an_export_keeps_every_character_of_user_text_and_the_chain_verifies);

/// Backslashes, tabs, line breaks and text that looks like an escape survive the database's
/// bulk read (SQLite directly, PostgreSQL through COPY's text format) byte for byte.
async fn an_export_keeps_every_character_of_user_text_and_the_chain_verifies(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let text = "C:\\backup\\path\ttab\r\nline two \\N \\x41 \\101 é 🔒 \"quoted\" 'single'";
    let (s, body) = alice
        .post_json(
            "/api/v1/requests",
            &json!({
                "vault_id": single_vault(),
                "operation": REVERSIBLE_OP,
                "justification": text,
                "duration_minutes": 30,
            }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let erin = app.client_as("erin@demo.twokey").await;
    // Filtered by a value with a quote in it, to exercise the inlined filter too.
    let events = jsonl(&erin, "format=jsonl&action=request.created").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["details"]["justification"], text);
    let none = jsonl(
        &erin,
        "format=jsonl&actor=x%27%29%3B%20drop%20table%20audit_event%3B--",
    )
    .await;
    assert!(none.is_empty());
    let walk = twokey::audit::verify::verify_store(&app.svc.store, None)
        .await
        .unwrap();
    assert!(
        matches!(walk, Ok(twokey::audit::Outcome::Whole { .. })),
        "{walk:?}"
    );
}
