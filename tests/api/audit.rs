//! `twokey audit verify`, the real binary against a real database.

use std::process::Command;

use crate::both_backends;
use crate::helpers::*;

both_backends!(audit_verify_names_the_edited_or_deleted_seq);

fn verify(config: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_twokey"))
        .args(["audit", "verify", "--config"])
        .arg(config)
        .env("TWOKEY_LOG_FORMAT", "json")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn audit_verify_names_the_edited_or_deleted_seq(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let bob = app.client_as("bob@demo.twokey").await;
    let id = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    bob.decide(&id, "approve").await;
    app.settle().await;
    let config = app.db.dir().join("config.toml");
    std::fs::write(
        &config,
        toml::to_string(&test_config(&app.db.dir(), &app.db.url)).unwrap(),
    )
    .unwrap();

    let (ok, out) = verify(&config);
    assert!(ok, "{out}");
    assert!(out.contains("audit chain verified"), "{out}");

    let seq: i64 = app.svc.store.audit_for_request(&id).await.unwrap()[1].seq;
    app.svc.store.execute_raw_for_tests(&format!("update audit_event set details = '{{\"comment\":\"approved, honest\"}}' where seq = {seq}")).await.unwrap();
    let (ok, out) = verify(&config);
    assert!(!ok);
    assert!(
        out.contains(&format!("seq {seq}")) && out.contains("edited"),
        "{out}"
    );

    // Deleting a row instead (after restoring nothing: a fresh chain break further on).
    app.svc
        .store
        .execute_raw_for_tests(&format!("delete from audit_event where seq = {seq}"))
        .await
        .unwrap();
    let (ok, out) = verify(&config);
    assert!(!ok);
    assert!(
        out.contains(&format!("seq {seq}")) && out.contains("missing"),
        "{out}"
    );

    // Deleting the newest row is caught by the chain head.
    let (head, _) = app.svc.store.audit_head().await.unwrap();
    app.svc
        .store
        .execute_raw_for_tests(&format!("delete from audit_event where seq > {}", seq))
        .await
        .unwrap();
    let (ok, out) = verify(&config);
    assert!(!ok);
    assert!(
        out.contains(&format!("seq {}", seq)),
        "{out} (head was {head})"
    );
}
