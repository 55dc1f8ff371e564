//! Separation of duties, and 50 concurrent clicks.

use reqwest::StatusCode;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    the_requester_cannot_approve_under_any_identifier,
    a_non_approver_cannot_approve_and_cannot_see,
    fifty_concurrent_approvals_make_exactly_two_decisions_and_one_grant,
);

async fn the_requester_cannot_approve_under_any_identifier(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let id = alice.create(&dual_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for me in [
        "alice@demo.twokey",
        "Alice@Demo.Twokey",
        "alice+x@demo.twokey",
        "a.other@elsewhere.test",
    ] {
        let c = app.client_as(me).await;
        let (s, v) = c.decide(&id, "approve").await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{me}: {v}");
        assert_eq!(v["error"]["code"], "self_approval", "{me}");
        let (s, _) = c.decide(&id, "deny").await;
        assert_eq!(
            s,
            StatusCode::FORBIDDEN,
            "{me} cannot veto their own request either"
        );
    }
    assert_eq!(alice.state(&id).await, "pending");
    assert_eq!(app.audit_count("decision.approved", None).await, 0);
    // None of Alice's accounts was sent a review link.
    app.settle().await;
    let mails = app.svc.store.list_notifications(100).await.unwrap();
    let reviews: Vec<&str> = mails
        .iter()
        .filter(|m| m.kind == "review_request")
        .map(|m| m.recipient.as_str())
        .collect();
    assert!(!reviews.is_empty());
    for r in &reviews {
        assert!(
            !r.contains("alice") && !r.contains("a.other"),
            "review link sent to {r}"
        );
    }
}

async fn a_non_approver_cannot_approve_and_cannot_see(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let mallory = app.client_as("mallory@demo.twokey").await;
    let id = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = mallory.decide(&id, "approve").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_an_approver"))
    );
    let (s, _) = mallory.get_json(&format!("/api/v1/requests/{id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Dave approves for demo-dual only.
    let dave = app.client_as("dave@demo.twokey").await;
    let (s, _) = dave.decide(&id, "approve").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(alice.state(&id).await, "pending");
}

async fn fifty_concurrent_approvals_make_exactly_two_decisions_and_one_grant(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let bob = std::sync::Arc::new(app.client_as("bob@demo.twokey").await);
    let carol = std::sync::Arc::new(app.client_as("carol@demo.twokey").await);
    let id = alice.create(&single_vault(), IRREVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = if i % 2 == 0 {
            bob.clone()
        } else {
            carol.clone()
        };
        let id = id.clone();
        tasks.push(tokio::spawn(
            async move { c.decide(&id, "approve").await.0 },
        ));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 2, "exactly one accepted decision per approver");
    let (_, v) = alice.get_json(&format!("/api/v1/requests/{id}")).await;
    assert_eq!(v["state"], "approved");
    assert_eq!(v["decisions"].as_array().unwrap().len(), 2);
    assert_eq!(app.audit_count("decision.approved", Some(&id)).await, 2);
    assert_eq!(app.audit_count("grant.requested", Some(&id)).await, 1);
    let grants = app
        .svc
        .store
        .jobs_for_request(&id)
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.kind == "grant")
        .count();
    assert_eq!(grants, 1);
    app.settle().await;
    assert_eq!(alice.state(&id).await, "active");
    assert_eq!(app.audit_count("grant.active", Some(&id)).await, 1);
}
