//! Review links from the approver's mail: GET shows and changes nothing, POST decides once,
//! for the person it was sent to only.

use reqwest::StatusCode;

use crate::both_backends;
use crate::helpers::*;

both_backends!(a_review_link_decides_once_for_its_approver_only);

/// The review link mailed to `to` for request `id`.
async fn review_path(app: &TestApp, id: &str, to: &str) -> String {
    app.settle().await;
    let mails = app.svc.store.list_notifications(100).await.unwrap();
    let m = mails
        .iter()
        .find(|m| {
            m.kind == "review_request" && m.recipient == to && m.request_id.as_deref() == Some(id)
        })
        .unwrap_or_else(|| panic!("no review mail to {to}"));
    let link = m
        .body
        .split_whitespace()
        .find(|w| w.contains("/review/"))
        .expect("link in mail");
    let path = link.split_once("/review/").unwrap().1;
    // The .eml file is on disk too, with a stable Message-ID.
    let eml = std::fs::read_to_string(m.path.as_deref().unwrap()).unwrap();
    assert!(
        eml.contains(&format!("Message-ID: {}", m.message_id)),
        "{eml}"
    );
    format!("/review/{path}")
}

async fn a_review_link_decides_once_for_its_approver_only(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let id = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bob_link = review_path(&app, &id, "bob@demo.twokey").await;
    assert!(
        !app.svc
            .store
            .list_notifications(100)
            .await
            .unwrap()
            .iter()
            .any(|m| m.kind == "review_request" && m.recipient.contains("alice")),
        "the requester gets no review link"
    );

    // A mail scanner fetches the link without a session: it is sent to sign-in, nothing changes.
    let scanner = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = scanner
        .get(format!("{}{bob_link}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/auth/login?next=%2Freview%2F")
    );
    assert_eq!(alice.state(&id).await, "pending");

    // Carol opens Bob's (forwarded) link: refused and audited.
    let carol = app.client_as("carol@demo.twokey").await;
    let r = carol.get(&bob_link).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.audit_count("token.rejected", Some(&id)).await, 1);

    // Bob opens it: the page shows the request and changes nothing.
    let bob = app.client_as("bob@demo.twokey").await;
    let r = bob.get(&bob_link).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    let html = r.text().await.unwrap();
    assert!(html.contains("Decommissioning the old vault"));
    let csrf = form_value(&html, "csrf").unwrap();
    let token = form_value(&html, "token").unwrap();
    assert_eq!(alice.state(&id).await, "pending");
    assert_eq!(app.audit_count("review.opened", Some(&id)).await, 1);

    // Nobody signed in: posting the link decides nothing.
    let anon = reqwest::Client::new();
    let r = anon
        .post(format!("{}/review", app.base))
        .form(&[
            ("token", token.as_str()),
            ("decision", "approve"),
            ("csrf", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(alice.state(&id).await, "pending");

    // A POST without the CSRF token decides nothing.
    let r = bob
        .http
        .post(format!("{}/review", app.base))
        .form(&[
            ("token", token.as_str()),
            ("decision", "approve"),
            ("csrf", "nope"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(alice.state(&id).await, "pending");

    // Bob approves.
    let r = bob
        .http
        .post(format!("{}/review", app.base))
        .form(&[
            ("token", token.as_str()),
            ("decision", "approve"),
            ("comment", "ok <b>fine</b>"),
            ("csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("You approved the request"));
    let (_, v) = alice.get_json(&format!("/api/v1/requests/{id}")).await;
    assert_eq!(v["state"], "approved");
    assert_eq!(v["decisions"][0]["channel"], "review_link");

    // The same link again: refused as a replay, audited.
    let r = bob
        .http
        .post(format!("{}/review", app.base))
        .form(&[
            ("token", token.as_str()),
            ("decision", "deny"),
            ("csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    assert_eq!(app.audit_count("token.rejected", Some(&id)).await, 2);

    // A tampered token.
    let mut forged = token.clone();
    forged.pop();
    let r = bob.get(&format!("/review/{forged}")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Carol's own link now says the request is decided.
    let carol_link = review_path(&app, &id, "carol@demo.twokey").await;
    let r = carol.get(&carol_link).await;
    assert_eq!(r.status(), StatusCode::GONE);
    let mails = app.svc.store.list_notifications(200).await.unwrap();
    assert!(
        mails
            .iter()
            .any(|m| m.kind == "already_decided" && m.recipient == "carol@demo.twokey")
    );
    assert_eq!(alice.state(&id).await, "active");
}

both_backends!(refused_links_are_audited_and_watchers_are_alerted_after_five);

async fn refused_links_are_audited_and_watchers_are_alerted_after_five(b: Backend) {
    use twokey::auth::review_token::{ReviewClaims, ReviewTokens};
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let id = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bob_link = review_path(&app, &id, "bob@demo.twokey").await;
    let token = bob_link.trim_start_matches("/review/").to_string();
    let bob = app.client_as("bob@demo.twokey").await;

    // One character changed in the signature.
    let mut chars: Vec<char> = token.chars().collect();
    let last = chars.len() - 2;
    chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    assert_eq!(
        bob.get(&format!("/review/{tampered}")).await.status(),
        StatusCode::BAD_REQUEST
    );

    // Signed by a key twokey does not know (right claims, right kid name).
    let claims = ReviewClaims {
        iss: "twokey".into(),
        aud: "review".into(),
        sub: "bob@demo.twokey".into(),
        rid: id.clone(),
        jti: uuid::Uuid::new_v4().to_string(),
        iat: 0,
        exp: (app.svc.now() + time::Duration::hours(1)).unix_timestamp(),
    };
    let stranger = ReviewTokens::new(&[twokey::config::ReviewKey {
        kid: "demo-1".into(),
        secret: twokey::secret::Secret::new("x".repeat(40)),
    }]);
    let (forged, _) = stranger.sign(&claims).unwrap();
    assert_eq!(
        bob.get(&format!("/review/{forged}")).await.status(),
        StatusCode::BAD_REQUEST
    );

    // Carol (signed in) uses Bob's link three times: each refusal is audited and mailed.
    let carol = app.client_as("carol@demo.twokey").await;
    for _ in 0..3 {
        assert_eq!(carol.get(&bob_link).await.status(), StatusCode::FORBIDDEN);
    }
    // Tokens that do not verify cannot be trusted to name a request: they are audited without
    // one. Carol's three refusals are this request's.
    assert_eq!(app.audit_count("token.rejected", Some(&id)).await, 3);
    assert_eq!(app.audit_count("token.rejected", None).await, 5);
    app.settle().await;
    let watcher_mails = |mails: &[twokey::store::NotificationRow], needle: &str| {
        mails
            .iter()
            .filter(|m| m.recipient == "sam@demo.twokey" && m.subject.contains(needle))
            .count()
    };
    let mails = app.svc.store.list_notifications(500).await.unwrap();
    assert_eq!(watcher_mails(&mails, "token_rejected"), 3);
    assert_eq!(watcher_mails(&mails, "token_rejection_burst"), 0);
    // The fifth within ten minutes raises the alert, once.
    assert_eq!(carol.get(&bob_link).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(carol.get(&bob_link).await.status(), StatusCode::FORBIDDEN);
    app.settle().await;
    let mails = app.svc.store.list_notifications(500).await.unwrap();
    assert_eq!(watcher_mails(&mails, "token_rejection_burst"), 1);
    assert_eq!(app.audit_count("alert.raised", Some(&id)).await, 1);

    // An expired link: past the request's deadline.
    app.clock.advance(time::Duration::hours(25));
    let bob = app.client_as("bob@demo.twokey").await;
    let r = bob.get(&bob_link).await;
    assert_eq!(r.status(), StatusCode::GONE);
    assert!(r.text().await.unwrap().contains("expired"));
    assert_eq!(alice_state_after_all(&app, &id).await, "expired");
}

async fn alice_state_after_all(app: &TestApp, id: &str) -> String {
    app.settle().await;
    app.client_as("alice@demo.twokey").await.state(id).await
}
