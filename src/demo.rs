//! `twokey demo`: a complete, offline twokey in one command — SQLite in a data directory,
//! the dev sign-in with five demo people, two guards over simulated vaults, the simulated
//! elevation backend, and mail written to `DATA_DIR/outbox/` and shown at `/dev/outbox`.

use std::path::Path;

use crate::config::{RawConfig, RawDevUser, RawGuard, RawKey};

pub const DEMO_SUBSCRIPTION: &str = "11111111-2222-3333-4444-555555555555";

fn person(email: &str, name: &str, oid: &str, groups: &[&str], description: &str) -> RawDevUser {
    RawDevUser {
        email: email.into(),
        name: name.into(),
        object_id: Some(oid.into()),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        description: Some(description.into()),
    }
}

fn vault(rg: &str, kind: &str, name: &str) -> String {
    let (provider, ty) = match kind {
        "rsv" => ("Microsoft.RecoveryServices", "vaults"),
        _ => ("Microsoft.DataProtection", "backupVaults"),
    };
    format!(
        "/subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/{rg}/providers/{provider}/{ty}/{name}"
    )
}

/// The demo configuration for a data directory, a bind address and a review-link key.
pub fn config(data_dir: &Path, bind: &str, review_secret: String) -> RawConfig {
    let mut raw = RawConfig::default();
    raw.server.bind = Some(bind.to_string());
    raw.server.public_url = Some(format!("http://{bind}"));
    raw.database.url = Some(format!("sqlite://{}", data_dir.join("twokey.db").display()));
    raw.auth.mode = Some("dev".into());
    raw.auth.dev_users = vec![
        person(
            "alice@demo.twokey",
            "Alice (requester)",
            "a11ce000-0000-4000-8000-000000000001",
            &["backup-operators"],
            "Backup operator: asks for critical operations.",
        ),
        person(
            "bob@demo.twokey",
            "Bob (approver)",
            "b0b00000-0000-4000-8000-000000000002",
            &["backup-approvers"],
            "Backup lead: approves for both guards.",
        ),
        person(
            "carol@demo.twokey",
            "Carol (security approver)",
            "ca201000-0000-4000-8000-000000000003",
            &["security"],
            "Security: the second approval on demo-dual.",
        ),
        person(
            "erin@demo.twokey",
            "Erin (auditor)",
            "e2100000-0000-4000-8000-000000000004",
            &["auditors"],
            "Compliance: reads every request and the audit log.",
        ),
        person(
            "sam@demo.twokey",
            "Sam (watcher)",
            "5a300000-0000-4000-8000-000000000005",
            &["secops"],
            "SecOps: gets a mail about every event.",
        ),
    ];
    raw.auth.auditors = vec!["group:auditors".into()];
    // The day's posture report runs at once when the demo starts (whatever the hour), so the
    // Posture page has something to show.
    raw.posture.daily_at = Some("00:00".into());
    raw.mail.from = Some("twokey demo <twokey@demo.twokey>".into());
    raw.mail.outbox_dir = Some(data_dir.join("outbox"));
    raw.review.keys = vec![RawKey {
        kid: "demo-1".into(),
        secret: Some(review_secret),
        secret_file: None,
    }];
    let guard_id = |name: &str| {
        format!(
            "/subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/rg-security/providers/Microsoft.DataProtection/resourceGuards/{name}"
        )
    };
    raw.guards = vec![
        RawGuard {
            name: "demo-single".into(),
            resource_guard_id: guard_id("guard-prod"),
            vaults: vec![
                vault("rg-backup-prod", "rsv", "rsv-prod-weu"),
                vault("rg-backup-prod", "bv", "bv-prod-weu"),
            ],
            approvers: vec![
                "user:bob@demo.twokey".into(),
                "user:carol@demo.twokey".into(),
            ],
            watchers: vec!["sam@demo.twokey".into()],
            required_approvals: Some(1),
            max_duration: Some("4h".into()),
            pending_deadline: Some("24h".into()),
            elevation: Some("simulated".into()),
            ..RawGuard::default()
        },
        RawGuard {
            name: "demo-dual".into(),
            resource_guard_id: guard_id("guard-finance"),
            vaults: vec![
                vault("rg-backup-finance", "rsv", "rsv-finance"),
                vault("rg-backup-finance", "bv", "bv-finance"),
            ],
            approvers: vec!["group:backup-approvers".into(), "group:security".into()],
            watchers: vec!["sam@demo.twokey".into()],
            required_approvals: Some(2),
            distinct_groups: Some(true),
            max_duration: Some("2h".into()),
            pending_deadline: Some("8h".into()),
            elevation: Some("simulated".into()),
            ..RawGuard::default()
        },
    ];
    raw
}

/// The review-link key of a data directory: made once, kept in `review.key` (mode 0600) so
/// that links in the outbox keep working across restarts of the demo.
pub fn review_secret(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("review.key");
    if let Ok(s) = std::fs::read_to_string(&path)
        && s.trim().len() >= 32
    {
        return Ok(s.trim().to_string());
    }
    let secret = crate::auth::session::random_token();
    std::fs::write(&path, &secret)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(secret)
}
