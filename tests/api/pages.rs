//! The HTML forms: CSRF on every one, bad input shown next to the form with the input kept,
//! no open redirect after sign-in, and a review link clicked twice at once decides once.

use reqwest::StatusCode;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    forms_refuse_missing_csrf_and_keep_input_on_errors,
    a_review_link_clicked_concurrently_decides_once
);

async fn forms_refuse_missing_csrf_and_keep_input_on_errors(b: Backend) {
    let app = TestApp::spawn(b).await;
    let anon = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Sign-in without (or with a wrong) CSRF token.
    let page = anon
        .get(format!("{}/auth/dev", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = form_value(&page, "csrf").unwrap();
    let r = anon
        .post(format!("{}/auth/dev", app.base))
        .form(&[("email", "alice@demo.twokey"), ("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = anon
        .post(format!("{}/auth/dev", app.base))
        .form(&[("email", "nobody@demo.twokey"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // No open redirect: `next` pointing off-site lands on `/`.
    let r = anon
        .post(format!("{}/auth/dev", app.base))
        .form(&[
            ("email", "alice@demo.twokey"),
            ("csrf", csrf.as_str()),
            ("next", "//evil.example/x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/");
    assert_eq!(app.audit_count("auth.signed_in", None).await, 1);
    // The pre-sign-in session id is not the signed-in one (rotated).
    let r = anon
        .post(format!("{}/auth/dev", app.base))
        .form(&[("email", "alice@demo.twokey"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "the old session and its CSRF token are gone"
    );

    let alice = app.client_as("alice@demo.twokey").await;
    let new_page = alice.get("/requests/new").await.text().await.unwrap();
    assert!(new_page.contains("rsv-prod-weu") && new_page.contains("cannot be undone"));
    let form = |csrf: &str, duration: &str| {
        vec![
            ("csrf", csrf.to_string()),
            ("vault_id", single_vault()),
            ("operation", REVERSIBLE_OP.to_string()),
            (
                "justification",
                "A reason typed with care <script>alert(1)</script>".to_string(),
            ),
            ("ticket", "CHG-9".to_string()),
            ("duration_minutes", duration.to_string()),
        ]
    };
    let r = alice
        .http
        .post(format!("{}/requests/new", app.base))
        .form(&form("wrong", "30"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = alice
        .http
        .post(format!("{}/requests/new", app.base))
        .form(&form(&alice.csrf, "100000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("duration_minutes"),
        "the error names the field"
    );
    assert!(
        html.contains("A reason typed with care &#60;script&#62;")
            || html.contains("A reason typed with care &lt;script&gt;"),
        "input kept, escaped"
    );
    assert!(!html.contains("<script>alert(1)</script>"));
    assert_eq!(app.request_count().await, 0);
    let r = alice
        .http
        .post(format!("{}/requests/new", app.base))
        .form(&form(&alice.csrf, "30"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let page = alice.get(&location).await.text().await.unwrap();
    assert!(page.contains("CHG-9") && page.contains("pending"));
    // Logout needs the token too.
    let r = alice
        .http
        .post(format!("{}/auth/logout", app.base))
        .form(&[("csrf", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (s, _) = alice.get_json("/api/v1/session").await;
    assert_eq!(s, StatusCode::OK);
}

async fn a_review_link_clicked_concurrently_decides_once(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let id = alice.create(&single_vault(), IRREVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.settle().await;
    let mails = app.svc.store.list_notifications(100).await.unwrap();
    let m = mails
        .iter()
        .find(|m| m.kind == "review_request" && m.recipient == "bob@demo.twokey")
        .unwrap();
    let link = m
        .body
        .split_whitespace()
        .find(|w| w.contains("/review/"))
        .unwrap();
    let path = format!("/review/{}", link.split_once("/review/").unwrap().1);
    let bob = std::sync::Arc::new(app.client_as("bob@demo.twokey").await);
    let html = bob.get(&path).await.text().await.unwrap();
    let csrf = form_value(&html, "csrf").unwrap();
    let token = form_value(&html, "token").unwrap();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (bob, csrf, token, base) = (bob.clone(), csrf.clone(), token.clone(), app.base.clone());
        let decision = if i % 2 == 0 { "approve" } else { "deny" };
        tasks.push(tokio::spawn(async move {
            bob.http
                .post(format!("{base}/review"))
                .form(&[
                    ("token", token.as_str()),
                    ("decision", decision),
                    ("csrf", csrf.as_str()),
                ])
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let s = t.await.unwrap();
        if s == StatusCode::OK {
            ok += 1;
        } else {
            assert!(s == StatusCode::GONE || s == StatusCode::CONFLICT, "{s}");
        }
    }
    assert_eq!(ok, 1, "one link, one decision");
    let (_, v) = alice.get_json(&format!("/api/v1/requests/{id}")).await;
    assert_eq!(v["decisions"].as_array().unwrap().len(), 1);
}

both_backends!(the_audit_page_is_for_auditors_and_verifies_the_chain);

async fn the_audit_page_is_for_auditors_and_verifies_the_chain(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let id = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(alice.get("/audit").await.status(), StatusCode::FORBIDDEN);
    let erin = app.client_as("erin@demo.twokey").await;
    let html = erin
        .get(&format!("/audit?request={id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("request.created") && html.contains(&format!("format=csv&amp;request={id}")),
        "{html}"
    );
    assert!(
        !html.contains("<td>policy.loaded</td>"),
        "the filter applies"
    );
    assert!(html.contains("<td>request.created</td>"));
    let html = erin.get("/audit?verify=1").await.text().await.unwrap();
    assert!(html.contains("Verified: the chain is whole"), "{html}");
    // After an edit, the page says where the chain broke.
    app.svc
        .store
        .execute_raw_for_tests("update audit_event set action = 'request.cancelled' where seq = 2")
        .await
        .unwrap();
    let html = erin.get("/audit?verify=1").await.text().await.unwrap();
    assert!(html.contains("BROKEN at seq 2"), "{html}");
    let r = erin.get("/audit?since=yesterday-ish").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("field-error"));
}
