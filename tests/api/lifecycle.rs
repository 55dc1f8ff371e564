//! The request lifecycle through the API: every path of the state diagram.

use reqwest::StatusCode;
use time::Duration;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    create_approve_activate_and_end_early,
    a_window_ends_by_itself_at_active_until,
    any_deny_vetoes,
    the_requester_can_cancel_while_pending,
    a_request_expires_at_its_deadline_and_nobody_can_approve_it_after,
    a_policy_change_voids_pending_requests,
    two_of_m_needs_two_distinct_people_from_distinct_groups,
    irreversible_operations_need_two_approvals_on_a_one_approval_guard,
    the_answer_to_a_create_is_the_request_as_stored,
);

async fn create_approve_activate_and_end_early(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let bob = app.client_as("bob@demo.twokey").await;

    let req = alice.create(&single_vault(), REVERSIBLE_OP).await;
    let id = req["id"].as_str().unwrap();
    assert_eq!(req["state"], "pending");
    assert_eq!(req["required_approvals"], 1);
    assert_eq!(req["requester"]["email"], "alice@demo.twokey");

    let (s, v) = bob.decide(id, "approve").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "approved");
    assert_eq!(v["decisions"][0]["approver"]["email"], "bob@demo.twokey");

    app.settle().await;
    let (_, v) = alice.get_json(&format!("/api/v1/requests/{id}")).await;
    assert_eq!(v["state"], "active");
    assert_eq!(v["active_from"], twokey::timefmt::fmt(start_time()));
    assert_eq!(
        v["active_until"],
        twokey::timefmt::fmt(start_time() + Duration::minutes(30))
    );

    app.clock.advance(Duration::minutes(5));
    let (s, v) = alice
        .post_json(
            &format!("/api/v1/requests/{id}/end"),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The revoke job takes the role away; until it has, the window is still open.
    assert_eq!(v["state"], "active");
    app.settle().await;
    let (_, v) = alice.get_json(&format!("/api/v1/requests/{id}")).await;
    assert_eq!(v["state"], "ended");
    assert_eq!(v["end_reason"], "ended_early");

    let calls = app.svc.store.simulated_calls(id).await.unwrap();
    let steps: Vec<&str> = calls.iter().map(|c| c.step.as_str()).collect();
    assert_eq!(steps, ["grant", "revoke"]);
    let grant: serde_json::Value = serde_json::from_str(&calls[0].body).unwrap();
    assert_eq!(grant["properties"]["requestType"], "AdminAssign");
    assert_eq!(grant["properties"]["principalId"], ALICE_OID);
    assert_eq!(
        grant["properties"]["scheduleInfo"]["expiration"]["duration"],
        "PT30M"
    );

    let actions: Vec<String> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .filter(|a| !a.starts_with("notification"))
        .collect();
    assert_eq!(
        actions,
        [
            "request.created",
            "decision.approved",
            "grant.requested",
            "grant.active",
            "grant.ended"
        ]
    );
    // Ending twice is a state conflict, not a second revoke.
    let (s, v) = alice
        .post_json(
            &format!("/api/v1/requests/{id}/end"),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
}

async fn a_window_ends_by_itself_at_active_until(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let bob = app.client_as("bob@demo.twokey").await;
    let id = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    bob.decide(&id, "approve").await;
    app.settle().await;
    app.clock.advance(Duration::minutes(29));
    app.settle().await;
    assert_eq!(alice.state(&id).await, "active", "not before its time");
    app.clock.advance(Duration::minutes(1));
    app.settle().await;
    let (_, v) = alice.get_json(&format!("/api/v1/requests/{id}")).await;
    assert_eq!(v["state"], "ended");
    assert_eq!(v["end_reason"], "expired");
}

async fn any_deny_vetoes(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let bob = app.client_as("bob@demo.twokey").await;
    let carol = app.client_as("carol@demo.twokey").await;
    let id = alice.create(&dual_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = bob.decide(&id, "approve").await;
    assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("pending")));
    let (s, v) = carol.decide(&id, "deny").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "denied");
    let dave = app.client_as("dave@demo.twokey").await;
    let (s, v) = dave.decide(&id, "approve").await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(v["error"]["code"], "state_conflict");
    app.settle().await;
    assert_eq!(alice.state(&id).await, "denied");
    assert_eq!(app.audit_count("grant.requested", Some(&id)).await, 0);
}

async fn the_requester_can_cancel_while_pending(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let bob = app.client_as("bob@demo.twokey").await;
    let id = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = bob
        .post_json(
            &format!("/api/v1/requests/{id}/cancel"),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_the_requester"))
    );
    let (s, v) = alice
        .post_json(
            &format!("/api/v1/requests/{id}/cancel"),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "cancelled");
    let (s, v) = bob.decide(&id, "approve").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("state_conflict"))
    );
    assert_eq!(app.audit_count("request.cancelled", Some(&id)).await, 1);
}

async fn a_request_expires_at_its_deadline_and_nobody_can_approve_it_after(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let id = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.clock
        .advance(Duration::hours(24) - Duration::seconds(1));
    app.settle().await;
    // A day later the old sessions have timed out (idle 8 h): sign in again.
    let (s, _) = alice.get_json("/api/v1/session").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "idle sessions end");
    let alice = app.client_as("alice@demo.twokey").await;
    let bob = app.client_as("bob@demo.twokey").await;
    assert_eq!(alice.state(&id).await, "pending");
    app.clock.advance(Duration::seconds(1));
    app.settle().await;
    let (_, v) = alice.get_json(&format!("/api/v1/requests/{id}")).await;
    assert_eq!(v["state"], "expired");
    assert_eq!(v["end_reason"], "deadline");
    let (s, v) = bob.decide(&id, "approve").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("state_conflict"))
    );
    assert_eq!(app.audit_count("grant.requested", None).await, 0);
}

async fn a_policy_change_voids_pending_requests(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let pending = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other_guard = alice.create(&dual_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // An admin adds an approver to demo-single and restarts twokey.
    let app = app
        .restart_with(|raw| raw.guards[0].approvers.push("user:dave@demo.twokey".into()))
        .await;
    let alice = app.client_as("alice@demo.twokey").await;
    let (_, v) = alice.get_json(&format!("/api/v1/requests/{pending}")).await;
    assert_eq!(v["state"], "expired");
    assert_eq!(v["end_reason"], "policy_changed");
    assert_eq!(
        alice.state(&other_guard).await,
        "pending",
        "other guards are untouched"
    );
    assert_eq!(app.audit_count("policy.loaded", None).await, 3);
    let bob = app.client_as("bob@demo.twokey").await;
    let (s, _) = bob.decide(&pending, "approve").await;
    assert_eq!(s, StatusCode::CONFLICT);
}

async fn two_of_m_needs_two_distinct_people_from_distinct_groups(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let bob = app.client_as("bob@demo.twokey").await;
    let dave = app.client_as("dave@demo.twokey").await;
    let carol = app.client_as("carol@demo.twokey").await;
    let id = alice.create(&dual_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(bob.decide(&id, "approve").await.1["state"], "pending");
    let (s, v) = bob.decide(&id, "approve").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_decided"))
    );
    // Dave is a second peer: same group as Bob, so still one distinct approval.
    let (s, v) = dave.decide(&id, "approve").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["state"], "pending");
    // Carol is security: the second group.
    let (s, v) = carol.decide(&id, "approve").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["state"], "approved");
    assert_eq!(app.audit_count("grant.requested", Some(&id)).await, 1);
}

async fn irreversible_operations_need_two_approvals_on_a_one_approval_guard(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let bob = app.client_as("bob@demo.twokey").await;
    let carol = app.client_as("carol@demo.twokey").await;
    let req = alice.create(&single_vault(), IRREVERSIBLE_OP).await;
    assert_eq!(req["required_approvals"], 2);
    let id = req["id"].as_str().unwrap();
    assert_eq!(bob.decide(id, "approve").await.1["state"], "pending");
    assert_eq!(carol.decide(id, "approve").await.1["state"], "approved");
}

/// The answer to `POST /api/v1/requests` is built from what the creating transaction wrote,
/// not read back: it must be exactly what a `GET` of the request shows (the worker has not
/// run, so nothing was added since), the `request.created` event included.
async fn the_answer_to_a_create_is_the_request_as_stored(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let created = alice.create(&single_vault(), REVERSIBLE_OP).await;
    let id = created["id"].as_str().unwrap();
    let (s, stored) = alice.get_json(&format!("/api/v1/requests/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{stored}");
    assert_eq!(created, stored);
    let timeline = created["timeline"].as_array().unwrap();
    assert!(!timeline.is_empty(), "{created}");
    assert!(
        timeline[0].to_string().contains("request.created"),
        "{timeline:?}"
    );
}
