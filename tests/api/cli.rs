//! The `twokey` binary itself: check-config reports every problem with its key, and the demo
//! starts with one command and prints its URL.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn twokey() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_twokey"));
    c.env("TWOKEY_LOG_FORMAT", "json");
    // The test runner's own environment must not leak config into these runs.
    for (k, _) in std::env::vars() {
        if k.starts_with("TWOKEY_") && k != "TWOKEY_LOG_FORMAT" {
            c.env_remove(k);
        }
    }
    c
}

fn write(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

const GOOD: &str = r#"
[server]
bind = "127.0.0.1:0"
[database]
url = "sqlite://DIR/x.db"
[auth]
mode = "dev"
dev_users = [{ email = "a@x.io", name = "A" }]
[mail]
outbox_dir = "DIR/outbox"
[[review.keys]]
kid = "k1"
secret_file = "DIR/key"
[[guards]]
name = "g"
resource_guard_id = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/sec/providers/Microsoft.DataProtection/resourceGuards/guard"
vaults = ["/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/*"]
approvers = ["user:b@x.io"]
elevation = "simulated"
"#;

#[test]
fn check_config_accepts_a_good_file_and_never_prints_secrets() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "key",
        "super-secret-signing-key-0123456789abcdef\n",
    );
    let cfg = write(
        dir.path(),
        "c.toml",
        &GOOD.replace("DIR", dir.path().to_str().unwrap()),
    );
    let out = twokey()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("configuration OK"), "{text}");
    // A password in the database URL from the environment is redacted.
    let out = twokey()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env(
            "TWOKEY_DATABASE_URL",
            "postgres://u:hunter2@db.example/twokey",
        )
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("db.example") && !text.contains("hunter2"),
        "{text}"
    );
}

#[test]
fn check_config_lists_every_problem_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = GOOD
        .replace("DIR", dir.path().to_str().unwrap())
        .replace("127.0.0.1:0", "0.0.0.0:8080")
        .replace(
            r#"approvers = ["user:b@x.io"]"#,
            r#"approvers = ["role:x"]
max_duration = "forever""#,
        );
    let cfg = write(dir.path(), "c.toml", &bad);
    let out = twokey()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}");
    for key in [
        "auth.mode",
        "guards[0].approvers[0]",
        "guards[0].max_duration",
        "review.keys[0].secret_file",
    ] {
        assert!(
            text.contains(&format!("- {key}:")),
            "{key} missing in:\n{text}"
        );
    }
}

#[test]
fn check_config_reports_malformed_and_unknown_input() {
    let dir = tempfile::tempdir().unwrap();
    for (body, expect) in [
        ("[server\nbind = 1", "(file)"),
        ("[server]\nbindd = \"127.0.0.1:1\"", "bindd"),
        ("[[guards]]\nname = 5", "guards"),
    ] {
        let cfg = write(dir.path(), "c.toml", body);
        let out = twokey()
            .args(["check-config", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{body}: {text}");
        assert!(text.contains(expect), "{body}: {text}");
    }
    let out = twokey()
        .args(["check-config", "--config", "/nonexistent/twokey.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // An oversized file is still only a config error, not a crash.
    let huge = format!(
        "[server]\npublic_url = \"http://{}\"\n",
        "a".repeat(2 * 1024 * 1024)
    );
    let cfg = write(dir.path(), "huge.toml", &huge);
    let out = twokey()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_demo_starts_with_one_command_and_prints_its_url() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = twokey()
        .args(["demo", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first.trim().rsplit(' ').next().unwrap().to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"),
        "{first}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (health, signin) = rt.block_on(async {
        let h = reqwest::get(format!("{url}/healthz"))
            .await
            .unwrap()
            .status();
        let s = reqwest::get(format!("{url}/auth/dev"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        (h, s)
    });
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(health, reqwest::StatusCode::OK);
    for who in [
        "alice@demo.twokey",
        "bob@demo.twokey",
        "carol@demo.twokey",
        "erin@demo.twokey",
        "sam@demo.twokey",
    ] {
        assert!(signin.contains(who), "{who} not offered");
    }
    assert!(dir.path().join("twokey.db").exists());
}

#[test]
fn a_second_process_on_the_same_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = twokey()
        .args(["demo", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(first.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("running at"), "{line}");
    let second = twokey()
        .args(["demo", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    first.kill().unwrap();
    let _ = first.wait();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another twokey process") && err.contains("PostgreSQL"),
        "{err}"
    );
}

/// Wait for `child` at most `secs`; kill it (and fail) if it is still running.
fn wait_at_most(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > until {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("still running after {secs}s (it should have refused to start)");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn serve_refuses_the_dev_sign_in_on_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "key",
        "super-secret-signing-key-0123456789abcdef\n",
    );
    let body = GOOD
        .replace("DIR", dir.path().to_str().unwrap())
        .replace("127.0.0.1:0", "0.0.0.0:0");
    let cfg = write(dir.path(), "c.toml", &body);
    let mut child = twokey()
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_at_most(&mut child, 30);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("- auth.mode:") && err.contains("non-loopback") && err.contains("0.0.0.0"),
        "{err}"
    );
    // Nothing was created: it stopped before opening the database.
    assert!(!dir.path().join("x.db").exists());
    // The same file on loopback is accepted by check-config (the address is the only problem).
    let ok = write(
        dir.path(),
        "ok.toml",
        &GOOD.replace("DIR", dir.path().to_str().unwrap()),
    );
    let out = twokey()
        .args(["check-config", "--config"])
        .arg(&ok)
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn check_config_accepts_an_oidc_config_without_reaching_the_issuer() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "key",
        "super-secret-signing-key-0123456789abcdef\n",
    );
    write(dir.path(), "client-secret", "entra-client-secret~value\n");
    let body = GOOD.replace("DIR", dir.path().to_str().unwrap()).replace(
        r#"mode = "dev"
dev_users = [{ email = "a@x.io", name = "A" }]"#,
        r#"mode = "oidc"
issuer = "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/v2.0"
client_id = "00000000-0000-0000-0000-0000000000c1"
client_secret_file = "DIR/client-secret"
api_audience = "00000000-0000-0000-0000-0000000000c1"
[auth.claims]
groups = ["roles"]"#
            .replace("DIR", dir.path().to_str().unwrap())
            .as_str(),
    );
    let body = body.replace(
        "[server]\nbind = \"127.0.0.1:0\"",
        "[server]\nbind = \"0.0.0.0:0\"\npublic_url = \"https://twokey.example.com\"",
    );
    let cfg = write(dir.path(), "c.toml", &body);
    let out = twokey()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env("TWOKEY_AUTH_CLAIMS_EMAIL", r#"["upn"]"#)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{body}\n{text}");
    assert!(
        text.contains("configuration OK") && text.contains("Oidc"),
        "{text}"
    );
    assert!(!text.contains("entra-client-secret"), "{text}");
    // Without a public URL, the redirect URI cannot be derived: a config error, with its key.
    let cfg = write(
        dir.path(),
        "c2.toml",
        &body.replace("public_url = \"https://twokey.example.com\"\n", ""),
    );
    let out = twokey()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("- server.public_url:"), "{text}");
}
