//! Crash tests with a real `twokey serve` process: it is killed with SIGKILL after sending the
//! grant and before recording it, and again after a window ended before the revoke. On
//! restart exactly one assignment exists, and it is removed; the revoke's lateness after
//! `active_until` is measured and printed (`MEASURED …`, see the README).

use std::path::Path;
use std::time::{Duration as StdDuration, Instant};

use time::OffsetDateTime;

use crate::azure::azure_config;
use crate::both_backends;
use crate::fake_arm::*;
use crate::helpers::*;
use twokey::store::Store;
use twokey::timefmt;

both_backends!(a_broker_killed_mid_grant_and_mid_window_grants_once_and_revokes_on_restart);

pub(crate) struct Broker {
    pub(crate) child: tokio::process::Child,
    pub(crate) base: String,
    pub(crate) log: std::path::PathBuf,
}

/// A private copy of the `twokey` binary, so that every start in a test runs the same build
/// (a shared target directory may be rebuilt by another checkout meanwhile).
///
/// A hard link where it can be: a copy is written through a file descriptor, and a process
/// that another test forks at that moment inherits it, so running the copy can fail with
/// "Text file busy" (ETXTBSY) until that child has exec'd. A link opens nothing for writing,
/// and keeps this build even when cargo puts a new file in the binary's place.
pub(crate) fn binary_copy(dir: &Path) -> std::path::PathBuf {
    let to = dir.join("twokey-under-test");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_twokey"), &to).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_twokey"), &to).expect("copy the twokey binary");
    }
    to
}

impl Broker {
    pub(crate) async fn start(bin: &Path, config: &Path, port: u16, log: &Path) -> Self {
        Self::start_with(bin, config, port, log, &[]).await
    }

    /// [`Broker::start`] with extra environment variables for the process.
    pub(crate) async fn start_with(
        bin: &Path,
        config: &Path,
        port: u16,
        log: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = tokio::process::Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                "info,twokey=trace,audit=trace,tower_http=trace,sqlx=debug",
            )
            .envs(env.iter().copied())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("twokey binary");
        let b = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log: log.to_path_buf(),
        };
        let started = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(format!("{}/healthz", b.base)).await
                && r.status().is_success()
            {
                return b;
            }
            assert!(
                started.elapsed() < StdDuration::from_secs(30),
                "twokey did not start:\n{}",
                b.log_text()
            );
            tokio::time::sleep(StdDuration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub(crate) async fn kill(mut self) {
        self.child.kill().await.unwrap();
        keep_log(&self.log);
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) async fn wait_for<T>(
    what: &str,
    broker_log: &Path,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if started.elapsed() > StdDuration::from_secs(120) {
            let log = std::fs::read_to_string(broker_log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "timed out waiting for {what}; the broker's last log lines:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
}

pub(crate) async fn state_of(store: &Store, id: &str) -> String {
    store.get_request(id).await.unwrap().unwrap().state
}

/// Move the end of `id`'s window (and its revoke) to `until`, as if it had been approved
/// for that long: windows are at least 5 minutes, and this test runs on the real clock.
pub(crate) async fn set_window_end(store: &Store, id: &str, until: OffsetDateTime) {
    let t = timefmt::fmt(until);
    for sql in [
        format!("update request set active_until = '{t}' where request_id = '{id}'"),
        format!("update grant_record set active_until = '{t}' where request_id = '{id}'"),
        format!("update job set run_at = '{t}' where dedupe_key = 'revoke:{id}'"),
    ] {
        store.execute_raw_for_tests(&sql).await.unwrap();
    }
}

fn removes_for(fake: &FakeArm) -> Vec<Call> {
    fake.calls_to("PUT", "/roleAssignmentScheduleRequests/")
        .into_iter()
        .filter(|c| c.body["properties"]["requestType"] == "AdminRemove")
        .collect()
}

pub(crate) async fn create_approved(base: &str) -> String {
    let alice = TestApp::client_at(base, "alice@demo.twokey").await;
    let bob = TestApp::client_at(base, "bob@demo.twokey").await;
    let id = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(bob.decide(&id, "approve").await.1["state"], "approved");
    id
}

async fn a_broker_killed_mid_grant_and_mid_window_grants_once_and_revokes_on_restart(b: Backend) {
    let fake = FakeArm::start().await;
    let db = TestDb::new(b).await;
    let port = free_port();
    let config = crate::production::write_config(&db, &fake, port, "twokey.toml", |raw| {
        raw.azure.reconcile_interval = Some("2s".into());
    });
    let log = db.dir().join("twokey.log");
    let store = Store::connect(&db.url, 2).await.unwrap();
    let bin = binary_copy(&db.dir());

    // 1. Killed after sending the grant, before recording it: Azure made the assignment,
    //    but its answer never reaches the broker.
    fake.fault(
        "PUT",
        "/roleAssignmentScheduleRequests/",
        Some("AdminAssign"),
        FaultKind::LateAnswer(StdDuration::from_secs(120)),
        1,
    );
    let broker = Broker::start(&bin, &config, port, &log).await;
    let a = create_approved(&broker.base).await;
    wait_for("the grant PUT", &log, async || {
        (!fake
            .calls_to("PUT", "/roleAssignmentScheduleRequests/")
            .is_empty())
        .then_some(())
    })
    .await;
    broker.kill().await;
    assert_eq!(state_of(&store, &a).await, "approved", "nothing recorded");
    assert_eq!(fake.instances().len(), 1, "but Azure has the assignment");

    let broker = Broker::start(&bin, &config, port, &log).await;
    wait_for("the grant to be recorded", &log, async || {
        (state_of(&store, &a).await == "active").then_some(())
    })
    .await;
    assert_eq!(fake.created_instances().len(), 1, "exactly one assignment");
    let assigns = fake
        .calls_to("PUT", "/roleAssignmentScheduleRequests/")
        .into_iter()
        .filter(|c| c.body["properties"]["requestType"] == "AdminAssign")
        .count();
    assert_eq!(
        assigns, 1,
        "the restarted broker found the first request by its name"
    );

    // While running: the revoke's lateness after `active_until`.
    let until = timefmt::trunc(OffsetDateTime::now_utc() + time::Duration::seconds(2));
    set_window_end(&store, &a, until).await;
    let remove = wait_for("the revoke", &log, async || {
        removes_for(&fake).into_iter().next()
    })
    .await;
    let late_running = remove.at_utc - until;
    wait_for("the end to be recorded", &log, async || {
        (state_of(&store, &a).await == "ended").then_some(())
    })
    .await;
    assert!(fake.instances().is_empty());

    // 2. Killed during a window, which ends while the broker is down.
    let bid = create_approved(&broker.base).await;
    wait_for("the second grant", &log, async || {
        (state_of(&store, &bid).await == "active").then_some(())
    })
    .await;
    broker.kill().await;
    let until = timefmt::trunc(OffsetDateTime::now_utc() + time::Duration::seconds(1));
    set_window_end(&store, &bid, until).await;
    tokio::time::sleep(StdDuration::from_secs(3)).await;
    assert_eq!(
        fake.instances().len(),
        1,
        "the assignment outlived the window while down"
    );
    let restarted = OffsetDateTime::now_utc();
    let broker = Broker::start(&bin, &config, port, &log).await;
    let remove = wait_for("the revoke after restart", &log, async || {
        let r = removes_for(&fake);
        (r.len() == 2).then(|| r[1].clone())
    })
    .await;
    let late_after_restart = remove.at_utc - until;
    let after_start = remove.at_utc - restarted;
    wait_for("the second end to be recorded", &log, async || {
        (state_of(&store, &bid).await == "ended").then_some(())
    })
    .await;
    assert!(fake.instances().is_empty(), "removed");
    assert_eq!(
        fake.created_instances().len(),
        2,
        "one assignment per request"
    );
    assert_eq!(fake.violations(), Vec::<String>::new());
    broker.kill().await;
    store.close().await;
    eprintln!(
        "MEASURED ({b:?}): revoke late by {} ms while running (poll 200 ms); after a crash, late by {} ms with the broker down for ~3 s, {} ms after the process was started again",
        late_running.whole_milliseconds(),
        late_after_restart.whole_milliseconds(),
        after_start.whole_milliseconds()
    );
}

// ---- twokey check-azure -------------------------------------------------------------------

async fn check_azure(
    fake: &FakeArm,
    change: impl FnOnce(&mut twokey::config::RawConfig),
) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = test_config(dir.path(), "sqlite://unused.db");
    azure_config(&mut raw, fake, "azure-pim");
    change(&mut raw);
    let config = dir.path().join("twokey.toml");
    std::fs::write(&config, toml::to_string(&raw).unwrap()).unwrap();
    let out = tokio::process::Command::new(binary_copy(dir.path()))
        .args(["check-azure", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
async fn check_azure_passes_when_the_broker_can_do_its_work() {
    let fake = FakeArm::start().await;
    fake.add_guard(
        crate::azure::GUARD,
        &[&single_vault(), &rsv("rg-backup-prod", "bv-unused")],
    );
    let (ok, out) = check_azure(&fake, |raw| {
        raw.guards.truncate(1);
        raw.guards[0].vaults = vec![single_vault()];
    })
    .await;
    eprintln!("{out}");
    assert!(ok, "{out}");
    for line in [
        "token for tenant",
        "read the Resource Guard",
        "vault rsv-prod-weu linked",
        "create schedule requests (AdminAssign, validate only)",
        "remove schedule requests (AdminRemove, validate only)",
        "all checks passed",
    ] {
        assert!(out.contains(line), "{line} missing from\n{out}");
    }
    assert!(!out.contains("MISSING"));
    // Nothing was assigned: only the dry run.
    assert!(fake.created_instances().is_empty());
    assert!(fake.calls_to("PUT", "/").is_empty());
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn check_azure_names_what_is_missing_and_the_fix() {
    let fake = FakeArm::start().await;
    // demo-single: the guard exists but one vault is not linked and PIM writes are denied;
    // demo-dual (azure-rbac, another tenant): the guard does not exist.
    fake.add_guard(crate::azure::GUARD, &[&single_vault()]);
    fake.deny("/roleAssignmentScheduleRequests/");
    let (ok, out) = check_azure(&fake, |raw| {
        raw.guards[1].elevation = Some("azure-rbac".into());
        raw.guards[1].tenant_id = Some(GUARD_TENANT.into());
    })
    .await;
    eprintln!("{out}");
    assert!(!ok, "{out}");
    assert!(out.contains("MISSING"));
    assert!(out.contains("User Access Administrator"), "{out}");
    assert!(out.contains("MUA is off for this vault"), "{out}");
    assert!(
        out.contains("not found: check guards.resource_guard_id"),
        "{out}"
    );
    assert!(
        out.contains(&format!("token for tenant {GUARD_TENANT}")),
        "{out}"
    );
    // The vault-side read for the cross-tenant guard carries the guard tenant's token.
    let proxy_reads = fake.calls_to("GET", "/backupResourceGuardProxies");
    assert!(
        proxy_reads
            .iter()
            .any(|c| c.aux_tenants == vec![GUARD_TENANT.to_string()])
    );
    assert!(fake.calls_to("PUT", "/").is_empty());
}
