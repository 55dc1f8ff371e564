//! Test harness: each test gets a fresh database (a temp-file SQLite, or a uuid-named
//! PostgreSQL database created on the local server and dropped afterwards), the app on port 0
//! with a manual clock, and a worker it drives by hand. Clients are real HTTP clients with a
//! cookie jar that sign in through the dev sign-in form, exactly as a browser would.

use std::path::PathBuf;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};
use time::macros::datetime;
use tokio::sync::oneshot;

use twokey::app::App;
use twokey::clock::ManualClock;
use twokey::config::{RawConfig, RawDevUser};
use twokey::jobs::Worker;
use twokey::service::Service;

/// Where every log of this suite goes: the in-process apps' (one file per test process) and
/// each `twokey serve` child's. `scripts/check-logs.sh` searches it for secrets afterwards.
pub fn test_log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-logs");
    std::fs::create_dir_all(&dir).expect("the test log directory");
    dir
}

/// Log everything twokey (and the libraries that see its traffic) says, at trace level, into
/// the test log directory. Once per test process.
pub fn capture_logs() {
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let path = test_log_dir().join(format!("api-{}.log", std::process::id()));
        let file = std::fs::File::create(&path).expect("the test log file");
        let filter = tracing_subscriber::EnvFilter::new(
            "warn,twokey=trace,audit=trace,tower_http=trace,sqlx=trace,lettre=trace,\
             reqwest=trace,openidconnect=trace,oauth2=trace",
        );
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::sync::Mutex::new(file))
            .json()
            .try_init();
    });
}

/// Keep a child process's log with the others (see [`test_log_dir`]).
pub fn keep_log(path: &std::path::Path) {
    let to = test_log_dir().join(format!("serve-{}.log", uuid::Uuid::new_v4().simple()));
    let _ = std::fs::copy(path, to);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generate one test per backend from an `async fn(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            }
        )*
    };
}

pub const SUB: &str = twokey::demo::DEMO_SUBSCRIPTION;

pub fn rsv(rg: &str, name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.RecoveryServices/vaults/{name}"
    )
}

/// A vault of guard `demo-single` (1 approval; bob and carol approve).
pub fn single_vault() -> String {
    rsv("rg-backup-prod", "rsv-prod-weu")
}

/// A vault of guard `demo-dual` (2 approvals from distinct groups).
pub fn dual_vault() -> String {
    rsv("rg-backup-finance", "rsv-finance")
}

/// A reversible operation (1 approval by default).
pub const REVERSIBLE_OP: &str = "rsv.stop_protection_retain_data";
/// An irreversible operation (2 approvals by default).
pub const IRREVERSIBLE_OP: &str = "rsv.delete_vault";

pub const ALICE_OID: &str = "a11ce000-0000-4000-8000-000000000001";

fn extra(email: &str, name: &str, oid: Option<&str>, groups: &[&str]) -> RawDevUser {
    RawDevUser {
        email: email.into(),
        name: name.into(),
        object_id: oid.map(Into::into),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        description: None,
    }
}

/// The demo configuration plus test people: a second peer approver, and three other
/// accounts of Alice's that are approvers (to prove she still cannot approve herself).
pub fn test_config(dir: &std::path::Path, db_url: &str) -> RawConfig {
    let mut raw = twokey::demo::config(dir, "127.0.0.1:0", "t".repeat(40));
    raw.server.public_url = Some("http://127.0.0.1".into());
    raw.database.url = Some(db_url.into());
    raw.jobs.enabled = Some(false);
    // The daily posture run would add its own event and mail to every settle(); the posture
    // tests turn it back on.
    raw.posture.enabled = Some(false);
    // The suite sends hundreds of requests from one address; the limits have their own test.
    raw.server.sign_in_rate_limit = Some(100_000);
    raw.server.api_rate_limit = Some(100_000);
    raw.auth.dev_users.extend([
        extra(
            "dave@demo.twokey",
            "Dave (peer)",
            Some("da7e0000-0000-4000-8000-000000000006"),
            &["backup-approvers"],
        ),
        extra(
            "Alice@Demo.Twokey",
            "Alice again",
            None,
            &["backup-approvers", "security"],
        ),
        extra(
            "alice+x@demo.twokey",
            "Alice tagged",
            None,
            &["backup-approvers", "security"],
        ),
        extra(
            "a.other@elsewhere.test",
            "Alice by oid",
            Some(ALICE_OID),
            &["backup-approvers", "security"],
        ),
        extra(
            "mallory@demo.twokey",
            "Mallory",
            Some("3a110000-0000-4000-8000-000000000007"),
            &[],
        ),
    ]);
    raw
}

/// A database for one test, removed afterwards.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: tempfile::TempDir,
}

pub fn pg_admin_url() -> String {
    std::env::var("TWOKEY_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        capture_logs();
        let dir = tempfile::tempdir().expect("tempdir");
        match backend {
            Backend::Sqlite => Self {
                url: format!("sqlite://{}", dir.path().join("twokey.db").display()),
                pg_name: None,
                _dir: dir,
            },
            Backend::Postgres => {
                let name = format!("twokey_test_{}", uuid::Uuid::new_v4().simple());
                let admin = pg_admin_url();
                run_pg(&admin, &format!("create database {name}")).await;
                let mut url = url::Url::parse(&admin).expect("TWOKEY_TEST_PG_URL");
                url.set_path(&format!("/{name}"));
                Self {
                    url: url.to_string(),
                    pg_name: Some(name),
                    _dir: dir,
                }
            }
        }
    }

    pub fn dir(&self) -> PathBuf {
        self._dir.path().to_path_buf()
    }
}

async fn run_pg(url: &str, sql: &str) {
    let store = twokey::store::Store::connect(url, 1)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is needed for the postgres tests: {e}"));
    store.execute_raw_for_tests(sql).await.expect(sql);
    store.close().await;
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            let admin = pg_admin_url();
            // Drop runs outside async context: a short-lived runtime on its own thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(run_pg(
                    &admin,
                    &format!("drop database if exists {name} with (force)"),
                ));
            })
            .join();
        }
    }
}

/// A running app.
pub struct TestApp {
    pub base: String,
    pub svc: Service,
    pub clock: Arc<ManualClock>,
    pub worker: Worker,
    pub db: TestDb,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

pub fn start_time() -> time::OffsetDateTime {
    datetime!(2026-12-03 09:00 UTC)
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        let db = TestDb::new(backend).await;
        let raw = test_config(&db.dir(), &db.url);
        Self::spawn_on(db, raw, Arc::new(ManualClock::new(start_time()))).await
    }

    pub async fn spawn_on(db: TestDb, raw: RawConfig, clock: Arc<ManualClock>) -> Self {
        let config = raw.validate().expect("test config is valid");
        let app = App::build_with_clock(config, clock.clone())
            .await
            .expect("app builds");
        let base = format!("http://{}", app.addr());
        let svc = app.service();
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            app.run_until_stopped(async move {
                let _ = rx.await;
            })
            .await
            .expect("app runs");
        });
        let worker = Worker::new(svc.clone(), "test-worker");
        Self {
            base,
            svc,
            clock,
            worker,
            db,
            stop: Some(tx),
            done: Some(done),
        }
    }

    /// Stop this app and start another on the same database with a changed config.
    pub async fn restart_with(mut self, change: impl FnOnce(&mut RawConfig)) -> Self {
        self.stop().await;
        let mut raw = test_config(&self.db.dir(), &self.db.url);
        change(&mut raw);
        let clock = self.clock.clone();
        let db = std::mem::replace(
            &mut self.db,
            TestDb {
                url: String::new(),
                pg_name: None,
                _dir: tempfile::tempdir().unwrap(),
            },
        );
        Self::spawn_on(db, raw, clock).await
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }

    /// Run every due job (and the deadline sweep) to completion.
    pub async fn settle(&self) {
        self.worker.sweep().await.expect("sweep");
        self.worker.drain().await.expect("drain");
    }

    /// A browser-like client signed in as `email` through the dev sign-in form.
    pub async fn client_as(&self, email: &str) -> Client {
        Self::client_at(&self.base, email).await
    }

    /// The same, against any twokey at `base` (e.g. a separately started process).
    pub async fn client_at(base: &str, email: &str) -> Client {
        // No connection reuse: a server that answers early (413 before reading a 1 MiB body)
        // closes its side, and a pooled POST racing that close fails on the client.
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
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
        let csrf = form_value(&page, "csrf").expect("csrf field on the sign-in page");
        let resp = http
            .post(format!("{base}/auth/dev"))
            .form(&[("email", email), ("csrf", csrf.as_str()), ("next", "/")])
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::SEE_OTHER,
            "dev sign-in as {email}"
        );
        let session: Value = http
            .get(format!("{base}/api/v1/session"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let csrf = session["csrf_token"]
            .as_str()
            .expect("csrf_token")
            .to_string();
        Client {
            http,
            base: base.to_string(),
            csrf,
        }
    }

    pub async fn audit_count(&self, action: &str, request_id: Option<&str>) -> i64 {
        self.svc
            .store
            .count_audit(action, request_id)
            .await
            .unwrap()
    }

    pub async fn request_count(&self) -> i64 {
        self.svc
            .store
            .list_requests(&twokey::store::RequestFilter {
                limit: 500,
                ..Default::default()
            })
            .await
            .unwrap()
            .len() as i64
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The `value` of the first `<input name="NAME" value="…">` in a page.
pub fn form_value(html: &str, name: &str) -> Option<String> {
    let needle = format!("name=\"{name}\" value=\"");
    let start = html.find(&needle)? + needle.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_string())
}

pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub csrf: String,
}

impl Client {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let r = self.get(path).await;
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("x-csrf-token", &self.csrf)
            .json(body)
            .send()
            .await
            .unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn create(&self, vault: &str, op: &str) -> Value {
        let (s, body) = self
            .post_json(
                "/api/v1/requests",
                &json!({
                    "vault_id": vault,
                    "operation": op,
                    "justification": "Decommissioning the old vault, change CHG-1234",
                    "ticket": "CHG-1234",
                    "duration_minutes": 30,
                }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "create: {body}");
        body
    }

    pub async fn decide(&self, id: &str, decision: &str) -> (StatusCode, Value) {
        self.post_json(
            &format!("/api/v1/requests/{id}/decision"),
            &json!({ "decision": decision, "comment": "looked at it" }),
        )
        .await
    }

    pub async fn state(&self, id: &str) -> String {
        let (s, v) = self.get_json(&format!("/api/v1/requests/{id}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["state"].as_str().unwrap().to_string()
    }
}

/// A real SMTP server (`tests/peers/smtp.mjs`, the npm `smtp-server`) with an HTTP control API.
pub struct SmtpPeer {
    pub smtp_port: u16,
    http: String,
    _child: tokio::process::Child,
}

impl SmtpPeer {
    pub async fn start() -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("node")
            .arg("tests/peers/smtp.mjs")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed (scripts/test.sh installs the peers)");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .unwrap();
        let ports: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("smtp peer said {line:?}: {e}"));
        Self {
            smtp_port: ports["smtp"].as_u64().unwrap() as u16,
            http: format!("http://127.0.0.1:{}", ports["http"]),
            _child: child,
        }
    }

    /// Every message received so far.
    pub async fn messages(&self) -> Vec<Value> {
        reqwest::get(format!("{}/messages", self.http))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Refuse connections with 421 (`down = true`) or accept them again.
    pub async fn set_down(&self, down: bool) {
        let state = if down { "down" } else { "up" };
        reqwest::Client::new()
            .post(format!("{}/mode?state={state}", self.http))
            .send()
            .await
            .unwrap();
    }

    /// Messages to `to`.
    pub async fn to(&self, to: &str) -> Vec<Value> {
        self.messages()
            .await
            .into_iter()
            .filter(|m| {
                m["to"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| x == to))
            })
            .collect()
    }
}

impl TestApp {
    /// The app with mail going to a real SMTP server instead of the outbox.
    pub async fn spawn_with_smtp(backend: Backend, smtp: &SmtpPeer) -> Self {
        let db = TestDb::new(backend).await;
        let mut raw = test_config(&db.dir(), &db.url);
        raw.mail.outbox_dir = None;
        raw.mail.smtp_url = Some(format!("smtp://127.0.0.1:{}", smtp.smtp_port));
        raw.mail.timeout = Some("5s".into());
        Self::spawn_on(db, raw, Arc::new(ManualClock::new(start_time()))).await
    }
}

/// The first `href` in an HTML mail that contains `needle`.
pub fn href_with(html: &str, needle: &str) -> Option<String> {
    html.split("href=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap_or(""))
        .find(|h| h.contains(needle))
        .map(|h| h.replace("&#38;", "&").replace("&amp;", "&"))
}
