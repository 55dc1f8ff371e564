//! Bad input gets a clear error and writes nothing.

use reqwest::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    hostile_requests_are_refused_with_their_code_and_write_nothing,
    unauthenticated_and_bearer_calls_are_refused
);

async fn hostile_requests_are_refused_with_their_code_and_write_nothing(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let audit_before = app.svc.store.audit_head().await.unwrap().0;
    let url = format!("{}/api/v1/requests", app.base);
    let good = || {
        json!({
            "vault_id": single_vault(),
            "operation": REVERSIBLE_OP,
            "justification": "Decommissioning the old vault, change CHG-1234",
            "duration_minutes": 30,
        })
    };

    // Malformed JSON.
    let r = alice
        .http
        .post(&url)
        .header("x-csrf-token", &alice.csrf)
        .header("content-type", "application/json")
        .body("{\"vault_id\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "malformed_json"
    );

    // Not JSON at all.
    let r = alice
        .http
        .post(&url)
        .header("x-csrf-token", &alice.csrf)
        .body("vault_id=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let cases: Vec<(serde_json::Value, StatusCode, &str, Option<&str>)> = vec![
        (
            {
                let mut v = good();
                v["operation"] = json!("rsv.format_everything");
                v
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            Some("operation"),
        ),
        (
            {
                let mut v = good();
                v["vault_id"] = json!(
                    "/subscriptions/not-a-guid/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v"
                );
                v
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            Some("vault_id"),
        ),
        (
            {
                let mut v = good();
                v["vault_id"] = json!(format!("{}/backupFabrics/Azure", single_vault()));
                v
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            Some("vault_id"),
        ),
        (
            {
                let mut v = good();
                v["vault_id"] = json!(rsv("rg-unguarded", "v1"));
                v
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            Some("vault_id"),
        ),
        (
            {
                let mut v = good();
                v["duration_minutes"] = json!(241);
                v
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            Some("duration_minutes"),
        ),
        (
            {
                let mut v = good();
                v["duration_minutes"] = json!(-5);
                v
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            Some("duration_minutes"),
        ),
        (
            {
                let mut v = good();
                v["duration_minutes"] = json!("lots");
                v
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            None,
        ),
        (
            {
                let mut v = good();
                v["justification"] = json!("x");
                v
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            Some("justification"),
        ),
        (
            {
                let mut v = good();
                v["justification"] = json!("bad\u{0007}bell in the reason text");
                v
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            Some("justification"),
        ),
        (
            {
                let mut v = good();
                v["operation"] = json!("bv.delete_vault");
                v
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            Some("operation"),
        ),
        (
            {
                let mut v = good();
                v["surprise"] = json!(true);
                v
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            None,
        ),
        (
            {
                let mut v = good();
                v["justification"] = json!("j".repeat(2001));
                v
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            Some("justification"),
        ),
        (
            {
                let mut v = good();
                v["justification"] = json!("j".repeat(1024 * 1024));
                v
            },
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
        ),
    ];
    for (body, status, code, field) in cases {
        let (s, v) = alice.post_json("/api/v1/requests", &body).await;
        assert_eq!(s, status, "{body:.200}: {v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        if let Some(f) = field {
            assert_eq!(v["error"]["field"], f, "{v}");
        }
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }

    // Missing and wrong CSRF header with a valid session.
    for token in [None, Some("not-the-token")] {
        let mut r = alice.http.post(&url).json(&good());
        if let Some(t) = token {
            r = r.header("x-csrf-token", t);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            r.json::<serde_json::Value>().await.unwrap()["error"]["code"],
            "csrf_failed"
        );
    }
    // A write the browser marks cross-site is refused even with the right token.
    let r = alice
        .http
        .post(&url)
        .header("x-csrf-token", &alice.csrf)
        .header("sec-fetch-site", "cross-site")
        .json(&good())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Unknown decision word, unknown request id.
    let (s, v) = alice
        .post_json(
            "/api/v1/requests/0190f0f0-0000-7000-8000-000000000000/decision",
            &json!({"decision": "maybe"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("decision"))
    );
    let (s, _) = alice.get_json("/api/v1/requests/does-not-exist").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = alice.get_json("/api/v1/requests?state=bogus").await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("state"))
    );

    // Nothing was written.
    assert_eq!(app.request_count().await, 0);
    assert_eq!(app.svc.store.audit_head().await.unwrap().0, audit_before);
    // And a good request still works afterwards.
    let (s, _) = alice.post_json("/api/v1/requests", &good()).await;
    assert_eq!(s, StatusCode::CREATED);
}

async fn unauthenticated_and_bearer_calls_are_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/api/v1/session", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "unauthenticated"
    );
    let r = http
        .post(format!("{}/api/v1/requests", app.base))
        .bearer_auth("eyJhbGciOiJub25lIn0.e30.")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The catalogue is public documentation; every response carries the security headers.
    let r = http
        .get(format!("{}/api/v1/operations", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for h in [
        "x-frame-options",
        "content-security-policy",
        "referrer-policy",
        "x-content-type-options",
        "x-request-id",
    ] {
        assert!(r.headers().contains_key(h), "missing {h}");
    }
    let v: serde_json::Value = r.json().await.unwrap();
    let ops = v["operations"].as_array().unwrap();
    assert!(ops.iter().any(|o| o["key"] == "rsv.delete_vault"
        && o["reversible"] == false
        && o["default_required_approvals"] == 2));
    assert!(
        v["notes"]["immutability"]
            .as_str()
            .unwrap()
            .contains("Locked")
    );
}

#[tokio::test]
async fn the_openapi_document_describes_every_api_route() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let r = reqwest::get(format!("{}/api/v1/openapi.json", app.base))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc: serde_json::Value = r.json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/session", "get"),
        ("/operations", "get"),
        ("/guards", "get"),
        ("/requests", "get"),
        ("/requests", "post"),
        ("/requests/{id}", "get"),
        ("/requests/{id}/cancel", "post"),
        ("/requests/{id}/decision", "post"),
        ("/requests/{id}/end", "post"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} undocumented"
        );
    }
}

/// Sign-in, review links and the API are limited per client address: 429 with Retry-After,
/// before anything is looked up or audited.
#[tokio::test]
async fn each_class_of_endpoint_is_rate_limited_per_address() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut raw = test_config(&db.dir(), &db.url);
    raw.server.sign_in_rate_limit = Some(5);
    raw.server.api_rate_limit = Some(3);
    let app = TestApp::spawn_on(
        db,
        raw,
        std::sync::Arc::new(twokey::clock::ManualClock::new(start_time())),
    )
    .await;
    let http = reqwest::Client::new();
    let get = |p: &str| http.get(format!("{}{p}", app.base)).send();
    for _ in 0..3 {
        assert_eq!(
            get("/api/v1/operations").await.unwrap().status(),
            StatusCode::OK
        );
    }
    let r = get("/api/v1/operations").await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "rate_limited"
    );
    // Junk review links: only the first five reach the handler (and the audit log).
    let before = app.audit_count("token.rejected", None).await;
    let mut limited = 0;
    for _ in 0..8 {
        if get("/review/not-a-token").await.unwrap().status() == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        }
    }
    assert_eq!(limited, 3);
    assert_eq!(app.audit_count("token.rejected", None).await - before, 5);
    // Pages outside the three classes are not limited.
    for _ in 0..10 {
        assert_eq!(get("/healthz").await.unwrap().status(), StatusCode::OK);
    }
}

/// The API is also limited per account: one session used from many addresses (here five
/// loopback addresses, each under its own limit) is refused once the account's minute is spent;
/// another account is not affected.
#[tokio::test]
async fn the_api_is_rate_limited_per_account_across_addresses() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut raw = test_config(&db.dir(), &db.url);
    raw.server.api_rate_limit = Some(4);
    let app = TestApp::spawn_on(
        db,
        raw,
        std::sync::Arc::new(twokey::clock::ManualClock::new(start_time())),
    )
    .await;
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let from = |last: u8, jar: &std::sync::Arc<reqwest::cookie::Jar>| {
        reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .local_address(std::net::IpAddr::from([127, 0, 0, last]))
            .build()
            .unwrap()
    };
    let sign_in = async |c: &reqwest::Client, email: &str| {
        let page = c
            .get(format!("{}/auth/dev", app.base))
            .send()
            .await
            .unwrap();
        let csrf = form_value(&page.text().await.unwrap(), "csrf").unwrap();
        let r = c
            .post(format!("{}/auth/dev", app.base))
            .form(&[("email", email), ("csrf", csrf.as_str()), ("next", "/")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
    };
    sign_in(&from(2, &jar), "alice@demo.twokey").await;
    for last in 3..=6 {
        let r = from(last, &jar)
            .get(format!("{}/api/v1/session", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "call from 127.0.0.{last}");
    }
    let r = from(7, &jar)
        .get(format!("{}/api/v1/session", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("your account"),
        "{body}"
    );
    // Bob, from a fresh address, is not held to Alice's count.
    let bobs = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let bob = from(8, &bobs);
    sign_in(&bob, "bob@demo.twokey").await;
    let r = bob
        .get(format!("{}/api/v1/session", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
