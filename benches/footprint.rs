//! Speed and footprint of `twokey serve`, against the limits, in one run:
//!
//!     cargo bench --bench footprint
//!
//! Runs the release `twokey` binary as a child process (dev sign-in, simulated elevation, mail
//! to outbox files, the job worker on) and measures:
//! - start to ready: spawn → first `200` from `/readyz` (a tight loop of TCP connects and
//!   GETs), on an already migrated SQLite file and cold (migrations run); median of 5 (≤ 150 ms)
//! - idle resident memory (VmRSS) 2 s after ready, and again after the load phases (≤ 25 MB)
//! - `POST /api/v1/requests` sustained rate (N requests, default 2000, `TWOKEY_BENCH_REQUESTS`,
//!   from 16 concurrent signed-in clients, each answer asserted 201) versus a plain sqlx loop
//!   of the same INSERTs on the same database, one transaction per request (≥ 0.5×); the two
//!   alternate in three rounds so that the disk's drifting fsync time hits both alike
//! - approve-decision latency at 100 concurrent clients: 100 approver sessions each decide a
//!   different pending request at the same moment, 10 rounds; p50 / p99 / max (p99 ≤ 10 ms);
//!   before it, the floors under a decision, in the same bursts: `GET /healthz` (HTTP alone),
//!   `GET /api/v1/session` (HTTP and the session lookup) and `GET`s of those requests (all but
//!   the writing)
//!
//! on SQLite and, for the rate and the decision latency, on PostgreSQL (`TWOKEY_BENCH_PG_URL`,
//! default `postgres://postgres@127.0.0.1:5432/postgres`; a fresh database, dropped
//! afterwards). Under `cargo test` (no `--bench` argument) it only says how to run it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor, Row};

const REQUESTERS: usize = 16;
/// The POST phase and the plain loop alternate this many times (see `load`).
const RATE_ROUNDS: usize = 3;
const APPROVE_CLIENTS: usize = 100;
const APPROVE_ROUNDS: usize = 10;
/// Decisions made one at a time by a single client, for comparison.
const SERIAL_DECISIONS: usize = 50;
const OPERATION: &str = "rsv.stop_protection_retain_data";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("footprint bench: not run under cargo test; run `cargo bench --bench footprint`");
        return;
    }
    let n: usize = std::env::var("TWOKEY_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    assert!(
        n >= APPROVE_CLIENTS * APPROVE_ROUNDS + SERIAL_DECISIONS,
        "TWOKEY_BENCH_REQUESTS must be at least {}",
        APPROVE_CLIENTS * APPROVE_ROUNDS + SERIAL_DECISIONS
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(n));
}

fn vault() -> String {
    format!(
        "/subscriptions/{}/resourceGroups/rg-backup-prod/providers/Microsoft.RecoveryServices/vaults/rsv-prod-weu",
        twokey::demo::DEMO_SUBSCRIPTION
    )
}

fn requester(i: usize) -> String {
    format!("requester{i:02}@demo.twokey")
}

/// The demo's config with the bench's changes: a fixed port, the given database, requesters of
/// its own, and no limit that would refuse or slow a bench client.
fn write_config(dir: &Path, name: &str, url: &str, port: u16) -> PathBuf {
    let bind = format!("127.0.0.1:{port}");
    let mut raw = twokey::demo::config(dir, &bind, "b".repeat(40));
    raw.database.url = Some(url.to_string());
    // The demo runs the posture report at start; a server started in production does not.
    raw.posture.daily_at = None;
    raw.server.api_rate_limit = Some(1_000_000);
    raw.server.sign_in_rate_limit = Some(1_000_000);
    raw.alerts.max_requests_per_day = Some(0);
    let template = raw.auth.dev_users[0].clone();
    for i in 0..REQUESTERS {
        let mut u = template.clone();
        u.email = requester(i);
        u.name = format!("Requester {i}");
        u.object_id = Some(format!("a11ce000-0000-4000-8000-{:012x}", 100 + i));
        raw.auth.dev_users.push(u);
    }
    let p = dir.join(name);
    std::fs::write(&p, toml::to_string(&raw).unwrap()).unwrap();
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One GET /readyz on a fresh connection: whether it answered 200.
fn ready_once(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(k) => got += k,
        }
    }
    buf.starts_with(b"HTTP/1.1 200")
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Spawn `twokey serve` and poll `/readyz` as fast as possible: the server and the time
    /// from spawn to the first 200.
    fn start(cfg: &Path, port: u16) -> (Server, Duration) {
        let t0 = Instant::now();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_twokey"));
        cmd.args(["serve", "--config"])
            .arg(cfg)
            .stdout(Stdio::null());
        // For finding where time goes: `TWOKEY_BENCH_SERVER_LOG=FILE` appends the server's
        // log at `RUST_LOG` (its cost then skews the figures).
        match std::env::var_os("TWOKEY_BENCH_SERVER_LOG") {
            Some(file) => {
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)
                    .expect("open TWOKEY_BENCH_SERVER_LOG");
                cmd.stderr(log);
            }
            // The default log level, written nowhere: logging is part of the cost.
            None => {
                cmd.env("RUST_LOG", "info").stderr(Stdio::null());
            }
        }
        let mut child = cmd.spawn().expect("spawn twokey serve");
        loop {
            if ready_once(port) {
                return (Server { child, port }, t0.elapsed());
            }
            if let Some(st) = child.try_wait().unwrap() {
                panic!("twokey serve exited before it was ready: {st}");
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "not ready in 30 s");
        }
    }

    fn rss_kib(&self) -> u64 {
        self.status_kib("/status", "VmRSS:")
    }

    /// The anonymous part of the RSS (heap, stacks), the rest being mapped files (the binary).
    fn anon_kib(&self) -> u64 {
        self.status_kib("/smaps_rollup", "Anonymous:")
    }

    fn status_kib(&self, file: &str, key: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}{file}", self.child.id())).unwrap();
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// SIGTERM, and wait for the graceful stop.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The median of five start-ups, each stopped again; `prepare` runs before each.
fn start_median(cfg: &Path, port: u16, mut prepare: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..5)
        .map(|_| {
            prepare();
            let (s, t) = Server::start(cfg, port);
            s.stop();
            t
        })
        .collect();
    times.sort();
    times[2]
}

/// A signed-in API client (cookie session + CSRF token), as `tests/api/helpers.rs` does it.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    csrf: String,
}

impl Client {
    async fn sign_in(base: &str, email: &str) -> Client {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let page = http
            .get(format!("{base}/auth/dev"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let needle = "name=\"csrf\" value=\"";
        let start = page.find(needle).expect("csrf field") + needle.len();
        let csrf = &page[start..start + page[start..].find('"').unwrap()];
        let resp = http
            .post(format!("{base}/auth/dev"))
            .form(&[("email", email), ("csrf", csrf), ("next", "/")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 303, "dev sign-in as {email}");
        let session: Value = http
            .get(format!("{base}/api/v1/session"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Client {
            http,
            base: base.to_string(),
            csrf: session["csrf_token"].as_str().unwrap().to_string(),
        }
    }

    async fn get(&self, path: &str) -> u16 {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        // Read the whole body, as the decisions' answers are read.
        r.bytes().await.unwrap();
        s
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("x-csrf-token", &self.csrf)
            .json(body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}

fn create_body(i: usize) -> Value {
    json!({
        "vault_id": vault(),
        "operation": OPERATION,
        "justification": format!("Decommissioning the old file server backup item {i}, change CHG-{}", 1000 + i),
        "ticket": format!("CHG-{}", 1000 + i),
        "duration_minutes": 30,
    })
}

async fn open_pool(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    let sqlite = url.starts_with("sqlite:");
    AnyPoolOptions::new()
        .max_connections(1)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    // The app's settings, so the loop pays the same fsyncs.
                    for pragma in twokey::store::SQLITE_PRAGMAS {
                        conn.execute(*pragma).await?;
                    }
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .unwrap()
}

/// Wait until the worker has run every job that is due (mail, grants), so one phase's
/// leftovers do not load the next.
async fn drain_jobs(pool: &AnyPool) {
    let t0 = Instant::now();
    loop {
        let now = twokey::timefmt::fmt(time::OffsetDateTime::now_utc());
        let n: i64 =
            sqlx::query_scalar("select count(*) from job where state = 'queued' and run_at <= $1")
                .bind(now)
                .fetch_one(pool)
                .await
                .unwrap();
        if n == 0 {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "{n} jobs still due after 10 min"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `n` requests from `REQUESTERS` concurrent clients: the rate and the created ids.
async fn post_requests(base: &str, first: usize, n: usize) -> (f64, Vec<String>) {
    let mut clients = Vec::new();
    for i in 0..REQUESTERS {
        clients.push(Client::sign_in(base, &requester(i)).await);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let next = next.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return ids;
                    }
                    let i = first + i;
                    let (s, body) = c.post("/api/v1/requests", &create_body(i)).await;
                    assert_eq!(s, 201, "create {i}: {body}");
                    ids.push(body["id"].as_str().expect("id").to_string());
                }
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(ids.len(), n);
    (n as f64 / secs, ids)
}

/// The rows one request creation wrote, read back as text to be inserted again.
struct Template {
    request: Vec<Option<String>>,
    audit: Vec<Option<String>>,
    jobs: Vec<Vec<Option<String>>>,
}

const REQUEST_COLS: &str = "request_id, guard, policy_hash, vault_id, operation, requester_id, \
    requester_email, requester_name, requester_object_id, justification, ticket, \
    duration_minutes, required_approvals, state, created_at, deadline";
const AUDIT_COLS: &str = "seq, at, action, actor_id, actor_email, actor_object_id, actor_ip, \
    actor_user_agent, request_id, details, prev_hash, hash";
const JOB_COLS: &str = "job_id, kind, request_id, payload, dedupe_key, state, attempts, max_attempts, run_at, created_at";

fn text_row(row: &sqlx::any::AnyRow, n: usize) -> Vec<Option<String>> {
    (0..n)
        .map(|i| {
            row.try_get::<Option<String>, _>(i)
                .or_else(|_| {
                    row.try_get::<Option<i64>, _>(i)
                        .map(|v| v.map(|v| v.to_string()))
                })
                .unwrap()
        })
        .collect()
}

async fn template(pool: &AnyPool, id: &str) -> Template {
    let cols = |c: &str| c.split(',').count();
    let req = sqlx::query(sqlx::AssertSqlSafe(format!(
        "select {REQUEST_COLS} from request where request_id = $1"
    )))
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    let audit = sqlx::query(sqlx::AssertSqlSafe(format!(
        "select {AUDIT_COLS} from audit_event where request_id = $1 and action = 'request.created'"
    )))
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    // The jobs queued with the request (its mails), not those the worker added later.
    let created_at: String = req.try_get(14).unwrap();
    let jobs = sqlx::query(sqlx::AssertSqlSafe(format!(
        "select {JOB_COLS} from job where request_id = $1 and created_at = $2"
    )))
    .bind(id)
    .bind(created_at)
    .fetch_all(pool)
    .await
    .unwrap();
    Template {
        request: text_row(&req, cols(REQUEST_COLS)),
        audit: text_row(&audit, cols(AUDIT_COLS)),
        jobs: jobs.iter().map(|j| text_row(j, cols(JOB_COLS))).collect(),
    }
}

fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    vals: &[Option<String>],
    ints: &[usize],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for (i, v) in vals.iter().enumerate() {
        q = if ints.contains(&i) {
            q.bind(v.as_ref().map(|v| v.parse::<i64>().unwrap()))
        } else {
            q.bind(v.clone())
        };
    }
    q
}

/// The plain loop: the same INSERTs as one request creation (the head-row update that takes
/// the writers' lock, the request, its audit event, the head moved on, its jobs), one
/// transaction per request, on one connection, with fresh ids. Returns requests per second.
async fn plain_loop(url: &str, t: &Template, n: usize) -> f64 {
    let pool = open_pool(url).await;
    let ins_req = format!(
        "insert into request ({REQUEST_COLS}) values ({})",
        placeholders(t.request.len())
    );
    let ins_audit = format!(
        "insert into audit_event ({AUDIT_COLS}) values ({})",
        placeholders(t.audit.len())
    );
    let ins_job = format!(
        "insert into job ({JOB_COLS}) values ({})",
        placeholders(t.jobs.first().map_or(0, |j| j.len()))
    );
    let (mut seq, mut hash): (i64, String) =
        sqlx::query_as("select seq, hash from audit_head where id = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    let far_future = twokey::timefmt::fmt(time::macros::datetime!(2999-01-01 00:00 UTC));
    let t0 = Instant::now();
    for _ in 0..n {
        let id = uuid::Uuid::now_v7().to_string();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("update audit_head set seq = seq where id = 1")
            .execute(&mut *tx)
            .await
            .unwrap();
        let mut r = t.request.clone();
        r[0] = Some(id.clone());
        bind_all(
            sqlx::query(sqlx::AssertSqlSafe(ins_req.clone())),
            &r,
            &[11, 12],
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        seq += 1;
        let next = format!("{:064x}", seq);
        let mut a = t.audit.clone();
        a[0] = Some(seq.to_string());
        a[8] = Some(id.clone());
        a[10] = Some(std::mem::replace(&mut hash, next.clone()));
        a[11] = Some(next);
        bind_all(
            sqlx::query(sqlx::AssertSqlSafe(ins_audit.clone())),
            &a,
            &[0],
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query("update audit_head set seq = $1, hash = $2 where id = 1")
            .bind(seq)
            .bind(hash.clone())
            .execute(&mut *tx)
            .await
            .unwrap();
        for j in &t.jobs {
            let mut j = j.clone();
            j[0] = Some(uuid::Uuid::now_v7().to_string());
            j[2] = Some(id.clone());
            j[4] = j[4].as_ref().map(|k| format!("{k}:{id}"));
            // Queued as the app queues them, but not due: the worker must not send these.
            j[5] = Some("queued".into());
            j[6] = Some("0".into());
            j[8] = Some(far_future.clone());
            bind_all(
                sqlx::query(sqlx::AssertSqlSafe(ins_job.clone())),
                &j,
                &[6, 7],
            )
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    // Leave nothing queued for the worker: the loop's jobs are not real mail.
    sqlx::query("update job set state = 'done' where dedupe_key like '%:' || request_id and state = 'queued'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    rate
}

struct Latencies {
    p50: f64,
    p99: f64,
    max: f64,
    n: usize,
}

/// 100 signed-in clients at the same moment, `APPROVE_ROUNDS` rounds, each client on its own
/// request of `ids` (round r, client i: `ids[r * 100 + i]`): the latencies in ms of `call`.
async fn bursts<F, Fut>(clients: &[Client], ids: &[String], call: F) -> Vec<f64>
where
    F: Fn(Client, String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut all = Vec::new();
    for round in 0..APPROVE_ROUNDS {
        let barrier = Arc::new(tokio::sync::Barrier::new(APPROVE_CLIENTS));
        let tasks: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let work = call(c.clone(), ids[round * APPROVE_CLIENTS + i].clone());
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    let t0 = Instant::now();
                    work.await;
                    t0.elapsed().as_secs_f64() * 1000.0
                })
            })
            .collect();
        for t in tasks {
            all.push(t.await.unwrap());
        }
    }
    all
}

/// First the floors, in the same 100-at-once bursts: `GET /healthz` (HTTP alone), `GET
/// /api/v1/session` (HTTP and the session lookup every decision starts with) and `GET
/// /api/v1/requests/{id}` (the session lookup, the request's view, the answer: everything a
/// decision does but the writing). Then `APPROVE_ROUNDS` rounds: in each, 100 approver sessions decide 100
/// different pending requests at the same moment. Latencies in ms.
/// Then `SERIAL_DECISIONS` more, one at a time from one client.
async fn approve(base: &str, ids: &[String]) -> Decisions {
    let mut clients = Vec::new();
    for i in 0..APPROVE_CLIENTS {
        let who = if i % 2 == 0 {
            "bob@demo.twokey"
        } else {
            "carol@demo.twokey"
        };
        clients.push(Client::sign_in(base, who).await);
    }
    let health = bursts(&clients, ids, |c, _| async move {
        assert_eq!(c.get("/healthz").await, 200, "healthz");
    })
    .await;
    let session = bursts(&clients, ids, |c, _| async move {
        assert_eq!(c.get("/api/v1/session").await, 200, "session");
    })
    .await;
    let reads = bursts(&clients, ids, |c, id| async move {
        let s = c.get(&format!("/api/v1/requests/{id}")).await;
        assert_eq!(s, 200, "view {id}");
    })
    .await;
    let all = bursts(&clients, ids, |c, id| async move {
        let (s, body) = c
            .post(
                &format!("/api/v1/requests/{id}/decision"),
                &json!({ "decision": "approve", "comment": "checked the ticket" }),
            )
            .await;
        assert_eq!(s, 200, "decide {id}: {body}");
    })
    .await;
    let mut serial = Vec::new();
    let first = APPROVE_CLIENTS * APPROVE_ROUNDS;
    for id in &ids[first..first + SERIAL_DECISIONS] {
        let t0 = Instant::now();
        let (s, body) = clients[0]
            .post(
                &format!("/api/v1/requests/{id}/decision"),
                &json!({ "decision": "approve", "comment": "checked the ticket" }),
            )
            .await;
        serial.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(s, 200, "decide {id}: {body}");
    }
    Decisions {
        health: percentiles(health),
        session: percentiles(session),
        reads: percentiles(reads),
        decide: percentiles(all),
        serial: percentiles(serial),
    }
}

/// The latencies of [`approve`]: the floors under a decision, then the decisions.
struct Decisions {
    /// `GET /healthz`, 100 at once: HTTP on this machine, no session, no database.
    health: Latencies,
    /// `GET /api/v1/session`, 100 at once: HTTP and the session lookup (one statement).
    session: Latencies,
    /// `GET /api/v1/requests/{id}`, 100 at once: everything a decision does but the writing.
    reads: Latencies,
    decide: Latencies,
    serial: Latencies,
}

fn percentiles(mut all: Vec<f64>) -> Latencies {
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() as f64 * q).ceil() as usize).clamp(1, all.len()) - 1];
    Latencies {
        p50: at(0.50),
        p99: at(0.99),
        max: *all.last().unwrap(),
        n: all.len(),
    }
}

struct Load {
    post_rate: f64,
    loop_rate: f64,
    decisions: Decisions,
}

/// The load phases on a running server: POST rate, the plain loop, the decisions.
async fn load(server: &Server, url: &str, n: usize) -> Load {
    // The POST phase and the plain loop alternate in RATE_ROUNDS rounds, each rate taken over
    // all of its rounds: fsync times on this machine's disk drift by 3x within minutes, and a
    // ratio of two phases measured minutes apart would measure the drift.
    let (mut ids, mut post_secs, mut loop_secs) = (Vec::new(), 0.0, 0.0);
    for round in 0..RATE_ROUNDS {
        let k = if round + 1 == RATE_ROUNDS {
            n - ids.len()
        } else {
            n / RATE_ROUNDS
        };
        let pool = open_pool(url).await;
        drain_jobs(&pool).await;
        let (rate, got) = post_requests(&server.base(), ids.len(), k).await;
        post_secs += k as f64 / rate;
        ids.extend(got);
        drain_jobs(&pool).await;
        let t = template(&pool, &ids[0]).await;
        pool.close().await;
        loop_secs += k as f64 / plain_loop(url, &t, k).await;
    }
    let (post_rate, loop_rate) = (n as f64 / post_secs, n as f64 / loop_secs);
    let pool = open_pool(url).await;
    drain_jobs(&pool).await;
    let decisions = approve(&server.base(), &ids).await;
    drain_jobs(&pool).await;
    pool.close().await;
    Load {
        post_rate,
        loop_rate,
        decisions,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn run(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();

    // ---- SQLite: start-up, cold and warm ------------------------------------------------
    let db = dir.path().join("bench.db");
    let sqlite_url = format!("sqlite://{}", db.display());
    let cfg = write_config(dir.path(), "sqlite.toml", &sqlite_url, port);
    let cold = start_median(&cfg, port, || {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
        }
    });
    let warm = start_median(&cfg, port, || {});
    let (server, _) = Server::start(&cfg, port);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = server.rss_kib();
    let anon_idle = server.anon_kib();
    let sqlite = load(&server, &sqlite_url, n).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = server.rss_kib();
    let anon_after = server.anon_kib();
    server.stop();

    // ---- PostgreSQL ---------------------------------------------------------------------
    let pg = common::PgDb::create().await;
    let pg_url = pg.url.clone();
    let pg_cfg = write_config(dir.path(), "pg.toml", &pg_url, port);
    let (server, _) = Server::start(&pg_cfg, port);
    server.stop();
    let pg_warm = start_median(&pg_cfg, port, || {});
    let (server, _) = Server::start(&pg_cfg, port);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pg_rss_idle = server.rss_kib();
    let pg_anon_idle = server.anon_kib();
    let postgres = load(&server, &pg_url, n).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pg_rss_after = server.rss_kib();
    let pg_anon_after = server.anon_kib();
    server.stop();

    // ---- report -----------------------------------------------------------------------
    let mb = |k: u64| k as f64 / 1024.0;
    println!(
        "\nfootprint bench: release twokey serve, {} cores, {n} requests from {REQUESTERS} clients, \
         {} decisions ({APPROVE_ROUNDS} rounds of {APPROVE_CLIENTS} at once)",
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        sqlite.decisions.decide.n
    );
    println!("  {:<58} {:>10} {:>10}", "", "SQLite", "PostgreSQL");
    println!(
        "  {:<58} {:>10.0} {:>10.0}",
        "start to ready, migrated database (ms, median of 5)",
        ms(warm),
        ms(pg_warm)
    );
    println!(
        "  {:<58} {:>10.0} {:>10}",
        "start to ready, cold: migrations run (ms, median of 5)",
        ms(cold),
        "-"
    );
    println!(
        "  {:<58} {:>10.1} {:>10.1}",
        "idle RSS 2 s after ready (MB)",
        mb(rss_idle),
        mb(pg_rss_idle)
    );
    println!(
        "  {:<58} {:>10.1} {:>10.1}",
        "idle RSS 2 s after the load (MB)",
        mb(rss_after),
        mb(pg_rss_after)
    );
    println!(
        "  {:<58} {:>10} {:>10}",
        "…of which anonymous (heap, stacks), idle / after (MB)",
        format!("{:.1}/{:.1}", mb(anon_idle), mb(anon_after)),
        format!("{:.1}/{:.1}", mb(pg_anon_idle), mb(pg_anon_after))
    );
    println!(
        "  {:<58} {:>10.0} {:>10.0}",
        "POST /api/v1/requests (requests/s)", sqlite.post_rate, postgres.post_rate
    );
    println!(
        "  {:<58} {:>10.0} {:>10.0}",
        "plain loop of the same INSERTs, one tx each (requests/s)",
        sqlite.loop_rate,
        postgres.loop_rate
    );
    for (name, f) in [
        (
            "decision p50 (ms)",
            (|l: &Latencies| l.p50) as fn(&Latencies) -> f64,
        ),
        ("decision p99 (ms)", |l| l.p99),
        ("decision max (ms)", |l| l.max),
    ] {
        println!(
            "  {:<58} {:>10.1} {:>10.1}",
            name,
            f(&sqlite.decisions.decide),
            f(&postgres.decisions.decide)
        );
    }
    for (name, f) in [
        (
            "floor: GET /healthz, 100 at once, p50/p99 (ms)",
            (|d: &Decisions| &d.health) as fn(&Decisions) -> &Latencies,
        ),
        (
            "floor: GET /api/v1/session, 100 at once, p50/p99 (ms)",
            |d| &d.session,
        ),
        (
            "floor: GET of the request, 100 at once, p50/p99 (ms)",
            |d| &d.reads,
        ),
    ] {
        let (a, b) = (f(&sqlite.decisions), f(&postgres.decisions));
        println!(
            "  {:<58} {:>10} {:>10}",
            name,
            format!("{:.1}/{:.1}", a.p50, a.p99),
            format!("{:.1}/{:.1}", b.p50, b.p99)
        );
    }
    println!(
        "  {:<58} {:>10.1} {:>10.1}",
        format!("decision p50, one at a time from one client (ms, {SERIAL_DECISIONS})"),
        sqlite.decisions.serial.p50,
        postgres.decisions.serial.p50
    );
    println!(
        "  {:<58} {:>10.1} {:>10.1}",
        "decision max, one at a time (ms)",
        sqlite.decisions.serial.max,
        postgres.decisions.serial.max
    );
    println!("\nagainst the limits:");
    println!(
        "  start to ready (SQLite, migrated)  {:>7.0} ms of 150 ms         {}",
        ms(warm),
        common::verdict(ms(warm) <= 150.0)
    );
    println!(
        "  start to ready (SQLite, cold)      {:>7.0} ms of 150 ms         {}",
        ms(cold),
        common::verdict(ms(cold) <= 150.0)
    );
    let rss_max = rss_idle.max(rss_after);
    println!(
        "  idle RSS (SQLite, larger of two)   {:>7.1} MB of 25 MB          {}",
        mb(rss_max),
        common::verdict(mb(rss_max) <= 25.0)
    );
    let pg_rss_max = pg_rss_idle.max(pg_rss_after);
    println!(
        "  idle RSS (PostgreSQL)              {:>7.1} MB of 25 MB          {}",
        mb(pg_rss_max),
        common::verdict(mb(pg_rss_max) <= 25.0)
    );
    for (name, l) in [("SQLite", &sqlite), ("PostgreSQL", &postgres)] {
        let ratio = l.post_rate / l.loop_rate;
        println!(
            "  POST rate vs plain loop ({name:<10}) {ratio:>6.2}x   (limit >= 0.5x)  {}",
            common::verdict(ratio >= 0.5)
        );
    }
    for (name, l) in [("SQLite", &sqlite), ("PostgreSQL", &postgres)] {
        println!(
            "  decision p99 at 100 ({name:<10})  {:>7.1} ms of 10 ms          {}",
            l.decisions.decide.p99,
            common::verdict(l.decisions.decide.p99 <= 10.0)
        );
    }
    common::print_load_average();
    drop(pg);
}
