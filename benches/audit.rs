//! Audit export and verification speed, against the limits, in one run:
//!
//!     cargo bench --bench audit
//!
//! Seeds N events (default 1,000,000; `TWOKEY_BENCH_EVENTS`) with a real hash chain into a
//! temporary SQLite file and a temporary PostgreSQL database (`TWOKEY_BENCH_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; the database is dropped afterwards), then runs
//! the release `twokey` binary and the databases' own clients as child processes and compares:
//! - `twokey audit export --format jsonl` vs `psql -c "\copy (select …) to stdout"` (≥ 0.5×)
//! - `twokey audit export --format jsonl` vs `sqlite3 -json` (≥ 0.5×)
//! - the exports' peak memory (VmHWM of the child, sampled every 2 ms; ≤ 64 MB)
//! - `twokey audit verify` of the SQLite database (≤ 3 s)
//!
//! Needs `psql` and `sqlite3` on PATH (Debian: postgresql-client, sqlite3). Under `cargo test`
//! (no `--bench` argument) it only says how to run it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use twokey::audit::{Actor, GENESIS, canonical_json, chain_hash};
use twokey::store::{AuditRow, Store};

const COLUMNS: &str = "seq, at, action, actor_id, actor_email, actor_object_id, actor_ip, \
    actor_user_agent, request_id, details, prev_hash, hash";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("audit bench: not run under cargo test; run `cargo bench --bench audit`");
        return;
    }
    let n: i64 = std::env::var("TWOKEY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(n));
}

/// Realistic events: one request's story (11 events) over and over, with varying values.
struct Gen {
    seq: i64,
    prev: String,
    t: time::OffsetDateTime,
}

impl Gen {
    fn next_story(&mut self, i: i64, out: &mut Vec<AuditRow>) {
        let rid = format!("0194f2a1-{:04x}-7000-8000-{:012x}", i % 65536, i);
        let alice = (
            format!("0194f2a0-0000-7000-8000-{:012x}", i % 50),
            format!("operator{}@contoso.example", i % 50),
            format!("a11ce000-0000-4000-8000-{:012x}", i % 50),
        );
        let bob = (
            format!("0194f2a0-0001-7000-8000-{:012x}", i % 7),
            format!("approver{}@contoso.example", i % 7),
            format!("b0b00000-0000-4000-8000-{:012x}", i % 7),
        );
        let ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36";
        let person = |p: &(String, String, String), ip: &str| Actor {
            id: Some(p.0.clone()),
            email: Some(p.1.clone()),
            object_id: Some(p.2.clone()),
            ip: Some(ip.to_string()),
            user_agent: Some(ua.to_string()),
        };
        let vault = format!(
            "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-backup-prod/providers/Microsoft.RecoveryServices/vaults/rsv-prod-{:03}",
            i % 300
        );
        let guard_id = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-security/providers/Microsoft.DataProtection/resourceGuards/prod-guard";
        let role = "f54b6d04-23c6-443e-b462-9c16ab7b4a52";
        let events = vec![
            (
                "auth.signed_in",
                person(&alice, "10.1.2.3"),
                None,
                json!({ "method": "oidc", "groups": ["backup-operators"] }),
            ),
            (
                "request.created",
                person(&alice, "10.1.2.3"),
                Some(&rid),
                json!({
                    "guard": "prod-backup", "resource_guard_id": guard_id, "policy_hash": "9f2c".repeat(16),
                    "vault_id": vault, "operation": "rsv.stop_protection_retain_data", "operation_reversible": true,
                    "justification": format!("Decommissioning the old file server backup item {i}, change CHG-{}", 1000 + i % 9000),
                    "ticket": format!("CHG-{}", 1000 + i % 9000), "duration_minutes": 60, "required_approvals": 1,
                    "distinct_groups": false, "deadline": "2026-12-04T09:00:00.000000Z",
                    "requester": { "id": alice.0, "email": alice.1, "name": "Backup Operator", "object_id": alice.2 },
                }),
            ),
            (
                "notification.sent",
                Actor::system(),
                Some(&rid),
                json!({ "kind": "review", "to": bob.1, "subject": "Approve: stop protection on rsv-prod", "message_id": format!("<{rid}.review@twokey>"), "event": null, "review_token_jti": format!("{i:032x}") }),
            ),
            (
                "notification.sent",
                Actor::system(),
                Some(&rid),
                json!({ "kind": "watcher", "to": "secops@contoso.example", "subject": "Requested: stop protection on rsv-prod", "message_id": format!("<{rid}.w1@twokey>"), "event": "created", "review_token_jti": null }),
            ),
            (
                "review.opened",
                person(&bob, "10.9.8.7"),
                Some(&rid),
                json!({ "jti": format!("{i:032x}"), "sent_to": bob.1 }),
            ),
            (
                "decision.approved",
                person(&bob, "10.9.8.7"),
                Some(&rid),
                json!({ "comment": "checked the change ticket", "channel": "review_link", "matched": "group:backup-approvers", "approvals": 1, "required_approvals": 1, "approver": { "id": bob.0, "email": bob.1, "name": "Approver", "object_id": bob.2, "groups": ["backup-approvers"] } }),
            ),
            (
                "grant.requested",
                Actor::system(),
                Some(&rid),
                json!({ "backend": "azure-pim", "scope": guard_id, "role_definition_id": role, "principal_object_id": alice.2, "duration_minutes": 60 }),
            ),
            (
                "grant.active",
                Actor::system(),
                Some(&rid),
                json!({ "backend": "azure-pim", "scope": guard_id, "role_definition_id": role, "principal_object_id": alice.2, "arm_request_name": format!("{i:032x}"), "active_from": "2026-12-03T09:05:00.000000Z", "active_until": "2026-12-03T10:05:00.000000Z" }),
            ),
            (
                "notification.sent",
                Actor::system(),
                Some(&rid),
                json!({ "kind": "requester", "to": alice.1, "subject": "Active: your window on rsv-prod", "message_id": format!("<{rid}.a@twokey>"), "event": "active", "review_token_jti": null }),
            ),
            (
                "grant.ended",
                Actor::system(),
                Some(&rid),
                json!({ "backend": "azure-pim", "scope": guard_id, "role_definition_id": role, "principal_object_id": alice.2, "reason": "expired", "active_from": "2026-12-03T09:05:00.000000Z", "active_until": "2026-12-03T10:05:00.000000Z", "end_requested_at": null, "end_requested_by": null }),
            ),
            (
                "notification.sent",
                Actor::system(),
                Some(&rid),
                json!({ "kind": "requester", "to": alice.1, "subject": "Ended: your window on rsv-prod", "message_id": format!("<{rid}.e@twokey>"), "event": "ended", "review_token_jti": null }),
            ),
        ];
        for (action, actor, request_id, details) in events {
            self.seq += 1;
            self.t += time::Duration::seconds(7);
            let at = twokey::timefmt::fmt(self.t);
            let canonical = canonical_json(
                self.seq,
                &at,
                action,
                &actor,
                request_id.map(|s| s.as_str()),
                &details,
            );
            let hash = chain_hash(&self.prev, &canonical);
            out.push(AuditRow {
                seq: self.seq,
                at,
                action: action.into(),
                actor_id: actor.id,
                actor_email: actor.email,
                actor_object_id: actor.object_id,
                actor_ip: actor.ip,
                actor_user_agent: actor.user_agent,
                request_id: request_id.cloned(),
                details: details.to_string(),
                prev_hash: std::mem::replace(&mut self.prev, hash.clone()),
                hash,
            });
        }
    }
}

struct Run {
    secs: f64,
    peak_kib: u64,
    /// CPU seconds (user + system) of the child: less sensitive than wall time to other
    /// work on the machine.
    cpu: f64,
}

/// utime + stime of a live process, in seconds (USER_HZ = 100 on Linux).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let utime: f64 = f.nth(11)?.parse().ok()?;
    let stime: f64 = f.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Run a child to completion: wall time, and its peak RSS (VmHWM) sampled every 2 ms.
fn measure(cmd: &mut Command) -> Run {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    let mut cpu = 0.0f64;
    loop {
        if let Some(c) = cpu_secs(child.id()) {
            cpu = cpu.max(c);
        }
        if let Ok(s) = std::fs::read_to_string(&status_path)
            && let Some(l) = s.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kib: u64 = l
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            peak_kib = peak_kib.max(kib);
        }
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "{cmd:?} failed: {st}");
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Run {
        secs: start.elapsed().as_secs_f64(),
        peak_kib,
        cpu,
    }
}

/// The median of three runs (and the largest peak).
fn best_of_3(mut make: impl FnMut() -> Command) -> Run {
    let mut runs: Vec<Run> = (0..3).map(|_| measure(&mut make())).collect();
    let peak = runs.iter().map(|r| r.peak_kib).max().unwrap();
    runs.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    Run {
        secs: runs[1].secs,
        peak_kib: peak,
        cpu: runs[1].cpu,
    }
}

fn write_config(dir: &Path, name: &str, url: &str) -> std::path::PathBuf {
    let mut raw = twokey::demo::config(dir, "127.0.0.1:0", "b".repeat(40));
    raw.database.url = Some(url.to_string());
    let p = dir.join(name);
    std::fs::write(&p, toml::to_string(&raw).unwrap()).unwrap();
    p
}

async fn run(n: i64) {
    let bin = env!("CARGO_BIN_EXE_twokey");
    let dir = tempfile::tempdir().unwrap();
    let sqlite_path = dir.path().join("bench.db");
    let sqlite_url = format!("sqlite://{}", sqlite_path.display());
    let pg = common::PgDb::create().await;
    let pg_url = pg.url.clone();

    // ---- seed -------------------------------------------------------------------------
    let t0 = Instant::now();
    let sqlite = Store::connect(&sqlite_url, 1).await.unwrap();
    sqlite.migrate().await.unwrap();
    let postgres = Store::connect(&pg_url, 2).await.unwrap();
    postgres.migrate().await.unwrap();
    let mut g = Gen {
        seq: 0,
        prev: GENESIS.to_string(),
        t: time::macros::datetime!(2026-01-01 00:00 UTC),
    };
    let mut story = 0;
    let mut bytes = 0usize;
    while g.seq < n {
        let mut rows = Vec::with_capacity(50_000);
        while rows.len() < 50_000 && g.seq < n {
            g.next_story(story, &mut rows);
            story += 1;
        }
        rows.truncate(rows.len().min((n - rows[0].seq + 1) as usize));
        g.seq = rows.last().unwrap().seq;
        bytes += rows.iter().map(|r| r.details.len() + 300).sum::<usize>();
        let (a, b) = tokio::join!(
            sqlite.bulk_append_audit(&rows),
            postgres.bulk_append_audit(&rows)
        );
        a.unwrap();
        b.unwrap();
    }
    let seeded = sqlite.audit_head().await.unwrap().0;
    assert_eq!(seeded, n, "seeded rows");
    sqlite.close().await;
    postgres
        .execute_raw_for_tests("vacuum analyze audit_event")
        .await
        .unwrap();
    postgres.close().await;
    println!(
        "seeded {n} events (~{} MB of rows) into SQLite and PostgreSQL in {:.1} s",
        bytes / 1_000_000,
        t0.elapsed().as_secs_f64()
    );
    let sqlite_cfg = write_config(dir.path(), "sqlite.toml", &sqlite_url);
    let pg_cfg = write_config(dir.path(), "pg.toml", &pg_url);
    let export = |cfg: &Path| {
        let cfg = cfg.to_path_buf();
        move || {
            let mut c = Command::new(bin);
            c.args(["audit", "export", "--format", "jsonl", "--config"])
                .arg(&cfg);
            c
        }
    };

    // ---- PostgreSQL -------------------------------------------------------------------
    let select = format!("select {COLUMNS} from audit_event order by seq");
    let psql = best_of_3(|| {
        let mut c = Command::new("psql");
        c.args([&pg_url, "-X", "-q", "-c"])
            .arg(format!("\\copy ({select}) to stdout"));
        c
    });
    let psql_json = best_of_3(|| {
        let mut c = Command::new("psql");
        c.args([&pg_url, "-X", "-q", "-c"]).arg(format!(
            "\\copy (select row_to_json(e) from ({select}) e) to stdout"
        ));
        c
    });
    let pg_export = best_of_3(export(&pg_cfg));

    // ---- SQLite -----------------------------------------------------------------------
    let sqlite3 = best_of_3(|| {
        let mut c = Command::new("sqlite3");
        c.arg("-json").arg(&sqlite_path).arg(&select);
        c
    });
    let sqlite_export = best_of_3(export(&sqlite_cfg));
    let verify_sqlite = best_of_3(|| {
        let mut c = Command::new(bin);
        c.args(["audit", "verify", "--config"]).arg(&sqlite_cfg);
        c
    });
    let verify_pg = best_of_3(|| {
        let mut c = Command::new(bin);
        c.args(["audit", "verify", "--config"]).arg(&pg_cfg);
        c
    });

    // ---- report -----------------------------------------------------------------------
    let mb = |k: u64| k as f64 / 1024.0;
    let rate = |r: &Run| n as f64 / r.secs / 1000.0;
    println!(
        "\naudit bench: {n} events, {} cores, median of 3 runs (peak memory: largest VmHWM)",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!(
        "  {:<48} {:>8} {:>8} {:>11} {:>9}",
        "", "seconds", "CPU s", "k events/s", "peak MB"
    );
    for (name, r) in [
        ("psql \\copy (columns, text) to stdout", &psql),
        ("psql \\copy (row_to_json) to stdout", &psql_json),
        (
            "twokey audit export --format jsonl (PostgreSQL)",
            &pg_export,
        ),
        ("sqlite3 -json", &sqlite3),
        (
            "twokey audit export --format jsonl (SQLite)",
            &sqlite_export,
        ),
        ("twokey audit verify (SQLite)", &verify_sqlite),
        ("twokey audit verify (PostgreSQL)", &verify_pg),
    ] {
        println!(
            "  {:<48} {:>8.2} {:>8.2} {:>11.0} {:>9.1}",
            name,
            r.secs,
            r.cpu,
            rate(r),
            mb(r.peak_kib)
        );
    }
    let pg_ratio = psql.secs / pg_export.secs;
    let pg_json_ratio = psql_json.secs / pg_export.secs;
    let sq_ratio = sqlite3.secs / sqlite_export.secs;
    let peak = pg_export.peak_kib.max(sqlite_export.peak_kib);
    println!("\nagainst the limits:");
    println!(
        "  export PostgreSQL  rate vs psql \\copy (columns)   {pg_ratio:>5.2}x   (limit >= 0.5x)  {}",
        common::verdict(pg_ratio >= 0.5)
    );
    println!(
        "  export PostgreSQL  rate vs psql \\copy (json)      {pg_json_ratio:>5.2}x   (limit >= 0.5x)  {}",
        common::verdict(pg_json_ratio >= 0.5)
    );
    println!(
        "  export SQLite      rate vs sqlite3 -json          {sq_ratio:>5.2}x   (limit >= 0.5x)  {}",
        common::verdict(sq_ratio >= 0.5)
    );
    println!(
        "  export peak memory {:>6.1} MB of 64 MB             {:>5.2}    (limit <= 1)     {}",
        mb(peak),
        mb(peak) / 64.0,
        common::verdict(mb(peak) <= 64.0)
    );
    println!(
        "  verify SQLite      {:>6.2} s of 3 s                {:>5.2}    (limit <= 1)     {}",
        verify_sqlite.secs,
        verify_sqlite.secs / 3.0 * (1_000_000.0 / n as f64),
        common::verdict(verify_sqlite.secs * (1_000_000.0 / n as f64) <= 3.0)
    );
    common::print_load_average();
    drop(pg);
}
