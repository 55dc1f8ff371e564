//! OpenID Connect sign-in and API bearer tokens.
//!
//! The happy paths run against a real provider: `oidc-provider` (tests/peers/oidc.mjs, started
//! per test with `node`), driven through its own login and consent pages by a cookie-keeping
//! HTTP client. The hostile paths use tokens crafted here, served by a small issuer in this
//! process (discovery, JWKS, authorize, token) whose keys are in `tests/api/keys/`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use axum::extract::{Form, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use futures::StreamExt;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use twokey::clock::ManualClock;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    a_full_sign_in_through_the_provider_pages,
    replayed_callbacks_and_codes_sign_nobody_in,
    a_groups_overage_signs_in_without_groups_and_says_why,
    bearer_tokens_from_the_provider_call_the_api,
    a_rotated_provider_key_is_accepted_after_one_jwks_refresh,
    hostile_id_tokens_are_refused_with_a_page_and_an_audit_event,
    hostile_bearer_tokens_are_refused_with_401,
);

const SECRET: &str = "twokey-test-secret";
const API: &str = "api://twokey";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

// ---- the app in OIDC mode ------------------------------------------------------------------

/// A free port for the app, known before it starts: the provider must know the redirect URI.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn spawn_oidc_app(b: Backend, issuer: &str, port: u16) -> TestApp {
    let db = TestDb::new(b).await;
    let mut raw = test_config(&db.dir(), &db.url);
    raw.server.bind = Some(format!("127.0.0.1:{port}"));
    raw.server.public_url = Some(format!("http://127.0.0.1:{port}"));
    raw.auth.mode = Some("oidc".into());
    raw.auth.issuer = Some(issuer.into());
    raw.auth.client_id = Some("twokey".into());
    raw.auth.client_secret = Some(SECRET.into());
    raw.auth.api_audience = Some(API.into());
    // Real tokens carry real times: the app's clock starts now (and is moved by hand).
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    TestApp::spawn_on(db, raw, clock).await
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location on a {} answer", r.status()))
        .to_str()
        .unwrap()
        .to_string()
}

fn absolute(base: &str, loc: &str) -> String {
    url::Url::parse(base)
        .unwrap()
        .join(loc)
        .unwrap()
        .to_string()
}

fn query_param(u: &str, name: &str) -> Option<String> {
    url::Url::parse(u)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.to_string())
}

/// The `action` of the first form on a page.
fn form_action(html: &str) -> String {
    let start = html.find("action=\"").expect("a form") + 8;
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].replace("&amp;", "&")
}

/// Go from `url` through the provider's own login and consent pages as `user` (any password),
/// until a redirect leads to `stop_prefix`; return that URL (the callback with code and state).
async fn through_provider(
    http: &reqwest::Client,
    mut url: String,
    user: &str,
    stop: &str,
) -> String {
    for _ in 0..20 {
        if url.starts_with(stop) {
            return url;
        }
        let r = http.get(&url).send().await.unwrap();
        if r.status().is_redirection() {
            url = absolute(&url, &location(&r));
            continue;
        }
        assert_eq!(r.status(), StatusCode::OK, "provider page {url}");
        let html = r.text().await.unwrap();
        let action = absolute(&url, &form_action(&html));
        let prompt = form_value(&html, "prompt").expect("a login or consent form");
        let form: Vec<(&str, &str)> = match prompt.as_str() {
            "login" => vec![("prompt", "login"), ("login", user), ("password", "any")],
            _ => vec![("prompt", "consent")],
        };
        let r = http.post(&action).form(&form).send().await.unwrap();
        assert!(
            r.status().is_redirection(),
            "after {prompt}: {}",
            r.status()
        );
        url = absolute(&action, &location(&r));
    }
    panic!("the provider never redirected to {stop}");
}

/// Sign in to `app` through the provider as `user`; returns the browser and where it landed.
async fn sign_in(app: &TestApp, user: &str, next: &str) -> (reqwest::Client, reqwest::Response) {
    let http = browser();
    let r = http
        .get(format!("{}/auth/login?next={next}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let to_provider = location(&r);
    let callback = format!("{}/auth/callback", app.base);
    let back = through_provider(&http, to_provider, user, &callback).await;
    let r = http.get(&back).send().await.unwrap();
    (http, r)
}

async fn session_of(app: &TestApp, http: &reqwest::Client) -> (StatusCode, Value) {
    let r = http
        .get(format!("{}/api/v1/session", app.base))
        .send()
        .await
        .unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// The `details` of every audit event with `action`, in order.
async fn audit_details(app: &TestApp, action: &str) -> Vec<Value> {
    let rows: Vec<_> = app.svc.store.audit_stream().collect().await;
    rows.into_iter()
        .map(|r| r.unwrap())
        .filter(|r| r.action == action)
        .map(|r| serde_json::from_str(&r.details).unwrap())
        .collect()
}

async fn last_failure(app: &TestApp) -> String {
    audit_details(app, "auth.failed")
        .await
        .last()
        .map(|d| d["reason"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

// ---- the real provider (tests/peers/oidc.mjs) ----------------------------------------------

/// `node tests/peers/oidc.mjs`, killed on drop.
struct Peer {
    child: tokio::process::Child,
    issuer: String,
    port: u16,
}

impl Peer {
    async fn start(port: u16, redirect_uri: &str) -> Self {
        let peers = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers");
        assert!(
            peers.join("node_modules/oidc-provider").is_dir(),
            "the OpenID provider is not installed: run `npm ci --prefix tests/peers` (scripts/test.sh does)"
        );
        let mut child = tokio::process::Command::new("node")
            .arg(peers.join("oidc.mjs"))
            .env("OIDC_PORT", port.to_string())
            .env("OIDC_REDIRECT_URIS", redirect_uri)
            .env("OIDC_API_AUDIENCE", API)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node is needed for the OpenID provider tests");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let read =
            tokio::time::timeout(StdDuration::from_secs(30), stdout.read_line(&mut line)).await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            let mut err = String::new();
            let mut stderr = child.stderr.take().unwrap();
            let _ =
                tokio::time::timeout(StdDuration::from_secs(2), stderr.read_to_string(&mut err))
                    .await;
            panic!("the OpenID provider did not start: {err}");
        }
        // Keep draining its stderr (warnings) so it never blocks on a full pipe.
        let mut stderr = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = stderr.read_to_end(&mut sink).await;
        });
        let issuer = line.trim().to_string();
        let port = url::Url::parse(&issuer).unwrap().port().unwrap();
        Self {
            child,
            issuer,
            port,
        }
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// An API access token (a JWT for `resource`) for `user`, through the `twokey-cli` client:
    /// authorization code + PKCE with the provider's own pages.
    async fn access_token(&self, user: &str, resource: &str) -> String {
        let http = browser();
        let verifier = twokey::auth::session::random_token();
        let challenge = B64.encode(Sha256::digest(verifier.as_bytes()));
        let redirect = "http://127.0.0.1/cli-callback";
        let mut u = url::Url::parse(&format!("{}/auth", self.issuer)).unwrap();
        u.query_pairs_mut()
            .append_pair("client_id", "twokey-cli")
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", redirect)
            .append_pair("scope", "openid api")
            .append_pair("resource", resource)
            .append_pair("state", "cli-state")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let back = through_provider(&http, u.to_string(), user, redirect).await;
        let code = query_param(&back, "code").expect("a code");
        let r = http
            .post(format!("{}/token", self.issuer))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", redirect),
                ("client_id", "twokey-cli"),
                ("client_secret", SECRET),
                ("code_verifier", &verifier),
                ("resource", resource),
            ])
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        let token = body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token: {body}"))
            .to_string();
        assert_eq!(token.split('.').count(), 3, "a JWT access token");
        token
    }
}

/// The provider and an app that signs in with it.
async fn with_peer(b: Backend) -> (Peer, TestApp) {
    let port = free_port();
    let peer = Peer::start(0, &format!("http://127.0.0.1:{port}/auth/callback")).await;
    let app = spawn_oidc_app(b, &peer.issuer, port).await;
    (peer, app)
}

async fn bearer_get(app: &TestApp, token: &str, path: &str) -> (StatusCode, Value, Option<String>) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let s = r.status();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (s, r.json().await.unwrap_or(Value::Null), challenge)
}

async fn bearer_post(app: &TestApp, token: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", app.base))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn a_full_sign_in_through_the_provider_pages(b: Backend) {
    let (peer, app) = with_peer(b).await;
    let http = browser();
    // Not signed in: the home page sends the browser to sign in.
    let r = http.get(format!("{}/", app.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = http
        .get(format!("{}/auth/login?next=/requests/new", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let anon_cookie = r
        .cookies()
        .find(|c| c.name() == "twokey_session")
        .expect("an anonymous session holds the pending sign-in")
        .value()
        .to_string();
    let to_provider = location(&r);
    assert!(
        to_provider.starts_with(&format!("{}/auth?", peer.issuer)),
        "{to_provider}"
    );
    // The authorization request: code flow, PKCE S256, state, nonce, our redirect URI.
    assert_eq!(
        query_param(&to_provider, "response_type").as_deref(),
        Some("code")
    );
    assert_eq!(
        query_param(&to_provider, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert!(query_param(&to_provider, "state").is_some_and(|s| s.len() >= 16));
    assert!(query_param(&to_provider, "nonce").is_some_and(|s| s.len() >= 16));
    assert_eq!(
        query_param(&to_provider, "redirect_uri"),
        Some(format!("{}/auth/callback", app.base))
    );
    assert!(
        query_param(&to_provider, "scope")
            .unwrap()
            .contains("openid")
    );

    let callback = format!("{}/auth/callback", app.base);
    let back = through_provider(&http, to_provider, "bob", &callback).await;
    let r = http.get(&back).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/requests/new");
    let new_cookie = r
        .cookies()
        .find(|c| c.name() == "twokey_session")
        .expect("a new session cookie")
        .value()
        .to_string();
    assert_ne!(new_cookie, anon_cookie, "the session id rotates at sign-in");

    let (s, me) = session_of(&app, &http).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["principal"]["email"], "bob@oidc.test");
    assert_eq!(me["principal"]["name"], "Bob (OIDC)");
    assert_eq!(
        me["principal"]["azure_object_id"],
        "b0b00000-0000-4000-8000-0000000000b2"
    );
    assert_eq!(me["principal"]["groups"], json!(["backup-approvers"]));
    assert_eq!(me["auth"], "session");
    assert!(me["notice"].is_null());
    // group:backup-approvers approves demo-dual: the groups came from the ID token.
    assert!(
        me["roles"].as_array().unwrap().contains(&json!("approver")),
        "{me}"
    );
    assert_eq!(app.audit_count("auth.signed_in", None).await, 1);
    let signed_in = &audit_details(&app, "auth.signed_in").await[0];
    assert_eq!(signed_in["method"], "oidc");
    assert_eq!(signed_in["issuer"], peer.issuer);
    assert_eq!(signed_in["subject"], "bob");
    // The page it asked for works, with a form that carries the CSRF token.
    let r = http
        .get(format!("{}/requests/new", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    let csrf = form_value(&page, "csrf").expect("csrf on the form");
    assert_eq!(csrf, me["csrf_token"].as_str().unwrap());

    // Signing in again (same person) keeps the same principal id: (issuer, sub) is stable.
    let (http2, r) = sign_in(&app, "bob", "/").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, me2) = session_of(&app, &http2).await;
    assert_eq!(me2["principal"]["id"], me["principal"]["id"]);

    // Sign-out ends the session and does not bounce straight back to the provider.
    let r = http
        .post(format!("{}/auth/logout", app.base))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("signed out"));
    let (s, _) = session_of(&app, &http).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = session_of(&app, &http2).await;
    assert_eq!(s, StatusCode::OK, "other sessions are untouched");
    peer.stop().await;
}

async fn replayed_callbacks_and_codes_sign_nobody_in(b: Backend) {
    let (peer, app) = with_peer(b).await;
    let (http, r) = sign_in(&app, "alice", "/").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let callback_url = r.url().to_string();
    let code = query_param(&callback_url, "code").unwrap();
    assert_eq!(app.audit_count("auth.failed", None).await, 0);

    // 1. The same callback again (state already used), in the same browser.
    let r = http.get(&callback_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("Sign-in failed"));
    assert_eq!(last_failure(&app).await, "state_mismatch");

    // 2. The callback URL in another browser (login CSRF / a stolen URL): nothing.
    let other = browser();
    let r = other.get(&callback_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(session_of(&app, &other).await.0, StatusCode::UNAUTHORIZED);

    // 3. A wrong state for a sign-in that this browser did start.
    let r = other
        .get(format!("{}/auth/login", app.base))
        .send()
        .await
        .unwrap();
    let real_state = query_param(&location(&r), "state").unwrap();
    let r = other
        .get(format!(
            "{}/auth/callback?code=x&state=not-{real_state}",
            app.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(last_failure(&app).await, "state_mismatch");

    // 4. The used code with this browser's genuine (fresh) state: the provider refuses it.
    let r = other
        .get(format!(
            "{}/auth/callback?code={code}&state={real_state}",
            app.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("Sign-in failed") && page.contains("invalid_grant"),
        "{page}"
    );
    assert!(!page.contains(&code), "the page never repeats the code");
    assert_eq!(last_failure(&app).await, "code_exchange_failed");
    assert_eq!(session_of(&app, &other).await.0, StatusCode::UNAUTHORIZED);

    // 5. The provider's own refusal (the person cancelled) is a failure too.
    let r = other
        .get(format!("{}/auth/login", app.base))
        .send()
        .await
        .unwrap();
    let st = query_param(&location(&r), "state").unwrap();
    let r = other
        .get(format!(
            "{}/auth/callback?error=access_denied&state={st}",
            app.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("access_denied"));
    assert_eq!(last_failure(&app).await, "provider_error");

    // 6. An answer naming another issuer (RFC 9207 mix-up), with a genuine state.
    let r = other
        .get(format!("{}/auth/login", app.base))
        .send()
        .await
        .unwrap();
    let st = query_param(&location(&r), "state").unwrap();
    let r = other
        .get(format!(
            "{}/auth/callback?code=x&state={st}&iss=https%3A%2F%2Fevil.example",
            app.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(last_failure(&app).await, "issuer_mismatch");

    assert_eq!(app.audit_count("auth.failed", None).await, 6);
    assert_eq!(app.audit_count("auth.signed_in", None).await, 1);
    // No audit event holds the code.
    let rows: Vec<_> = app.svc.store.audit_stream().collect().await;
    assert!(
        rows.iter()
            .all(|r| !r.as_ref().unwrap().details.contains(&code))
    );
    peer.stop().await;
}

async fn a_groups_overage_signs_in_without_groups_and_says_why(b: Backend) {
    let (peer, app) = with_peer(b).await;
    let (http, r) = sign_in(&app, "overage", "/").await;
    // Signed in, but the page says why the groups are missing before going on.
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("overage") && page.contains("app role"),
        "{page}"
    );
    let (s, me) = session_of(&app, &http).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["principal"]["groups"], json!([]));
    assert!(me["notice"].as_str().unwrap().contains("overage"));
    assert!(!me["roles"].as_array().unwrap().contains(&json!("approver")));
    let d = &audit_details(&app, "auth.signed_in").await[0];
    assert_eq!(d["groups_overage"], json!(["groups"]));
    peer.stop().await;
}

async fn bearer_tokens_from_the_provider_call_the_api(b: Backend) {
    let (peer, app) = with_peer(b).await;
    let alice = peer.access_token("alice", API).await;
    let (s, me, _) = bearer_get(&app, &alice, "/api/v1/session").await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["auth"], "bearer");
    assert_eq!(me["principal"]["email"], "alice@oidc.test");
    assert_eq!(
        me["principal"]["azure_object_id"],
        "a11ce000-0000-4000-8000-0000000000a1"
    );
    assert!(
        me["csrf_token"].is_null(),
        "bearer calls have no CSRF token"
    );

    // A state-changing call with a bearer token needs no CSRF header.
    let (s, created) = bearer_post(
        &app,
        &alice,
        "/api/v1/requests",
        &json!({
            "vault_id": dual_vault(),
            "operation": REVERSIBLE_OP,
            "justification": "Quarterly restore test, change CHG-42",
            "duration_minutes": 30,
        }),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap();
    // Two approvals from distinct groups, each decided by a bearer caller whose group comes
    // from its own token at the moment of the decision.
    let bob = peer.access_token("bob", API).await;
    let carol = peer.access_token("carol", API).await;
    let decide = json!({"decision": "approve", "comment": "ok"});
    let path = format!("/api/v1/requests/{id}/decision");
    let (s, v) = bearer_post(&app, &alice, &path, &decide).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no self-approval: {v}");
    let (s, v) = bearer_post(&app, &bob, &path, &decide).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "pending");
    let (s, v) = bearer_post(&app, &carol, &path, &decide).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "approved");

    // A token for another audience.
    let other = peer.access_token("alice", "api://other").await;
    let (s, body, challenge) = bearer_get(&app, &other, "/api/v1/session").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "invalid_token");
    assert_eq!(body["error"]["reason"], "wrong_audience");
    assert!(challenge.unwrap().contains("invalid_token"));
    // A tampered one: Alice's token claiming to be Bob, with Alice's signature.
    let parts: Vec<&str> = alice.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = json!("bob");
    claims["email"] = json!("bob@oidc.test");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(claims.to_string()),
        parts[2]
    );
    let (s, body, _) = bearer_get(&app, &forged, "/api/v1/session").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["reason"], "bad_signature");
    // An expired one: two hours later by the app's clock.
    app.clock.advance(Duration::hours(2));
    let (s, body, _) = bearer_get(&app, &alice, "/api/v1/session").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["reason"], "expired");
    // The cookie path is unchanged: a browser call still needs its CSRF header.
    peer.stop().await;
}

async fn a_rotated_provider_key_is_accepted_after_one_jwks_refresh(b: Backend) {
    let (peer, app) = with_peer(b).await;
    let old = peer.access_token("alice", API).await;
    let (s, v, _) = bearer_get(&app, &old, "/api/v1/session").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let old_kid = jsonwebtoken::decode_header(&old).unwrap().kid.unwrap();

    // The provider restarts on the same issuer URL with a new signing key.
    let port = peer.port;
    let redirect = format!("{}/auth/callback", app.base);
    peer.stop().await;
    let peer = Peer::start(port, &redirect).await;
    let new = peer.access_token("alice", API).await;
    let new_kid = jsonwebtoken::decode_header(&new).unwrap().kid.unwrap();
    assert_ne!(old_kid, new_kid);

    // The keys were fetched moments ago, so an unknown kid does not refetch yet …
    let (s, body, _) = bearer_get(&app, &new, "/api/v1/session").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["reason"], "unknown_key");
    // … a minute later one refresh picks the new key up.
    app.clock.advance(Duration::seconds(61));
    let (s, v, _) = bearer_get(&app, &new, "/api/v1/session").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["principal"]["email"], "alice@oidc.test");
    // The old key is gone from the provider's set, so its tokens no longer verify.
    let (s, body, _) = bearer_get(&app, &old, "/api/v1/session").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["reason"], "unknown_key");
    // Browser sign-in works with the new key as well.
    let (_, r) = sign_in(&app, "carol", "/").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    peer.stop().await;
}

// ---- a hostile issuer: crafted tokens --------------------------------------------------------

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/api/keys")
            .join(name),
    )
    .unwrap()
}

struct SignKey {
    kid: &'static str,
    alg: Algorithm,
    enc: EncodingKey,
}

impl SignKey {
    fn rsa(file: &str, kid: &'static str, alg: Algorithm) -> Self {
        Self {
            kid,
            alg,
            enc: EncodingKey::from_rsa_pem(&key_file(file)).unwrap(),
        }
    }
    fn ec(kid: &'static str) -> Self {
        Self {
            kid,
            alg: Algorithm::ES256,
            enc: EncodingKey::from_ec_pem(&key_file("ec_p256.pem")).unwrap(),
        }
    }
    fn ed(kid: &'static str) -> Self {
        Self {
            kid,
            alg: Algorithm::EdDSA,
            enc: EncodingKey::from_ed_pem(&key_file("ed25519.pem")).unwrap(),
        }
    }
    /// The public JWK, as an issuer publishes it (without `alg`, like Entra ID).
    fn jwk(&self) -> Value {
        let mut j =
            serde_json::to_value(Jwk::from_encoding_key(&self.enc, self.alg).unwrap()).unwrap();
        let o = j.as_object_mut().unwrap();
        o.remove("alg");
        o.insert("kid".into(), json!(self.kid));
        o.insert("use".into(), json!("sig"));
        j
    }
    fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, self.kid, claims)
    }
    fn sign_as(&self, alg: Algorithm, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, &self.enc).unwrap()
    }
}

/// What the token endpoint of the hostile issuer puts in its ID token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Defect {
    None,
    WrongAudience,
    WrongIssuer,
    Expired,
    BadSignature,
    UnknownKid,
    AlgNone,
    Hs256WithPublicKey,
    WrongNonce,
}

struct FakeInner {
    issuer: String,
    jwks: Value,
    jwks_hits: AtomicUsize,
    defect: Mutex<Defect>,
    /// code → (nonce, code_challenge)
    codes: Mutex<HashMap<String, (String, String)>>,
}

#[derive(Clone)]
struct Fake(Arc<FakeInner>);

fn key_a() -> SignKey {
    SignKey::rsa("rsa_a.pem", "a", Algorithm::RS256)
}
fn key_b() -> SignKey {
    SignKey::rsa("rsa_b.pem", "b", Algorithm::RS256)
}

fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        B64.encode(br#"{"alg":"none","typ":"JWT","kid":"a"}"#),
        B64.encode(claims.to_string())
    )
}

fn hs256_with_public_key(claims: &Value) -> String {
    let enc = EncodingKey::from_secret(&key_file("rsa_a.pub.pem")).unwrap();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("a".into());
    jsonwebtoken::encode(&h, claims, &enc).unwrap()
}

impl Fake {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let jwks =
            json!({ "keys": [key_a().jwk(), SignKey::ec("ec").jwk(), SignKey::ed("ed").jwk()] });
        let fake = Fake(Arc::new(FakeInner {
            issuer,
            jwks,
            jwks_hits: AtomicUsize::new(0),
            defect: Mutex::new(Defect::None),
            codes: Mutex::new(HashMap::new()),
        }));
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(discovery),
            )
            .route("/jwks", axum::routing::get(serve_jwks))
            .route("/authorize", axum::routing::get(authorize))
            .route("/token", axum::routing::post(token))
            .with_state(fake.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        fake
    }

    fn hits(&self) -> usize {
        self.0.jwks_hits.load(Ordering::SeqCst)
    }

    fn set(&self, d: Defect) {
        *self.0.defect.lock().unwrap() = d;
    }

    /// Claims of a good token for the person `eve`, with `aud`.
    fn claims(&self, aud: &str) -> Value {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        json!({
            "iss": self.0.issuer, "aud": aud, "sub": "eve", "iat": now, "exp": now + 600,
            "email": "eve@fake.test", "name": "Eve", "oid": "e5e00000-0000-4000-8000-000000000005",
            "groups": ["backup-approvers"],
        })
    }

    fn id_token(&self, nonce: &str) -> String {
        let mut c = self.claims("twokey");
        c["nonce"] = json!(nonce);
        let defect = *self.0.defect.lock().unwrap();
        match defect {
            Defect::None => key_a().sign(&c),
            Defect::WrongAudience => {
                c["aud"] = json!("someone-else");
                key_a().sign(&c)
            }
            Defect::WrongIssuer => {
                c["iss"] = json!("https://evil.example");
                key_a().sign(&c)
            }
            Defect::Expired => {
                let now = OffsetDateTime::now_utc().unix_timestamp();
                c["iat"] = json!(now - 7200);
                c["exp"] = json!(now - 3600);
                key_a().sign(&c)
            }
            // Key B's signature under key A's id.
            Defect::BadSignature => key_b().sign_as(Algorithm::RS256, "a", &c),
            Defect::UnknownKid => key_b().sign(&c),
            Defect::AlgNone => unsigned(&c),
            Defect::Hs256WithPublicKey => hs256_with_public_key(&c),
            Defect::WrongNonce => {
                c["nonce"] = json!("another-sign-in");
                key_a().sign(&c)
            }
        }
    }
}

async fn discovery(State(f): State<Fake>) -> axum::Json<Value> {
    let i = &f.0.issuer;
    axum::Json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "jwks_uri": format!("{i}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

async fn serve_jwks(State(f): State<Fake>) -> axum::Json<Value> {
    f.0.jwks_hits.fetch_add(1, Ordering::SeqCst);
    axum::Json(f.0.jwks.clone())
}

async fn authorize(State(f): State<Fake>, Query(q): Query<HashMap<String, String>>) -> Response {
    let code = uuid::Uuid::new_v4().simple().to_string();
    f.0.codes.lock().unwrap().insert(
        code.clone(),
        (q["nonce"].clone(), q["code_challenge"].clone()),
    );
    let mut back = url::Url::parse(&q["redirect_uri"]).unwrap();
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &q["state"]);
    Redirect::to(back.as_str()).into_response()
}

async fn token(State(f): State<Fake>, Form(q): Form<HashMap<String, String>>) -> Response {
    let err = |e: &str| {
        (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": e })),
        )
            .into_response()
    };
    let Some((nonce, challenge)) = q
        .get("code")
        .and_then(|c| f.0.codes.lock().unwrap().remove(c))
    else {
        return err("invalid_grant");
    };
    // The client proves PKCE and authenticates (client_secret_post).
    let verifier = q.get("code_verifier").cloned().unwrap_or_default();
    if B64.encode(Sha256::digest(verifier.as_bytes())) != challenge {
        return err("invalid_grant");
    }
    if q.get("client_id").map(String::as_str) != Some("twokey")
        || q.get("client_secret").map(String::as_str) != Some(SECRET)
    {
        return err("invalid_client");
    }
    axum::Json(json!({
        "access_token": "opaque",
        "token_type": "Bearer",
        "expires_in": 600,
        "id_token": f.id_token(&nonce),
    }))
    .into_response()
}

async fn with_fake(b: Backend) -> (Fake, TestApp) {
    let fake = Fake::start().await;
    let app = spawn_oidc_app(b, &fake.0.issuer, free_port()).await;
    (fake, app)
}

async fn hostile_id_tokens_are_refused_with_a_page_and_an_audit_event(b: Backend) {
    let (fake, app) = with_fake(b).await;
    // The harness itself is sound: an honest token signs in.
    let (http, r) = sign_in(&app, "eve", "/").await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "{}",
        r.text().await.unwrap()
    );
    assert_eq!(
        session_of(&app, &http).await.1["principal"]["email"],
        "eve@fake.test"
    );
    // SECURITY check: outside `twokey demo` neither the dev sign-in nor the outbox (which
    // shows every review link) exists.
    for path in ["/auth/dev", "/dev/outbox"] {
        let r = http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let hits = fake.hits();
    assert!(hits >= 1);

    // An unknown kid a minute later: one refetch of the JWKS, still unknown → refused.
    app.clock.advance(Duration::seconds(61));
    let cases = [
        (Defect::UnknownKid, "id_token_unknown_key"),
        (Defect::WrongAudience, "id_token_wrong_audience"),
        (Defect::WrongIssuer, "id_token_wrong_issuer"),
        (Defect::Expired, "id_token_expired"),
        (Defect::BadSignature, "id_token_bad_signature"),
        (Defect::AlgNone, "id_token_alg_refused"),
        (Defect::Hs256WithPublicKey, "id_token_alg_refused"),
        (Defect::WrongNonce, "id_token_nonce_mismatch"),
        (Defect::UnknownKid, "id_token_unknown_key"),
    ];
    for (i, (defect, reason)) in cases.iter().enumerate() {
        fake.set(*defect);
        let (http, r) = sign_in(&app, "eve", "/").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{defect:?}");
        let page = r.text().await.unwrap();
        assert!(
            page.contains("Sign-in failed") && page.contains("Nobody was signed in"),
            "{page}"
        );
        assert_eq!(
            session_of(&app, &http).await.0,
            StatusCode::UNAUTHORIZED,
            "{defect:?}"
        );
        assert_eq!(last_failure(&app).await, *reason, "{defect:?}");
        assert_eq!(app.audit_count("auth.failed", None).await, i as i64 + 1);
    }
    // Two unknown-kid sign-ins, but the JWKS was fetched once more only (rate limit).
    assert_eq!(fake.hits(), hits + 1);
    assert_eq!(app.audit_count("auth.signed_in", None).await, 1);
}

async fn hostile_bearer_tokens_are_refused_with_401(b: Backend) {
    let (fake, app) = with_fake(b).await;
    let good = fake.claims(API);
    // Every allowed algorithm works with a published key.
    for (k, alg) in [
        (key_a(), Algorithm::RS256),
        (key_a(), Algorithm::PS256),
        (SignKey::ec("ec"), Algorithm::ES256),
        (SignKey::ed("ed"), Algorithm::EdDSA),
    ] {
        let t = k.sign_as(alg, k.kid, &good);
        let (s, v, _) = bearer_get(&app, &t, "/api/v1/session").await;
        assert_eq!(s, StatusCode::OK, "{alg:?}: {v}");
        assert_eq!(v["principal"]["email"], "eve@fake.test");
    }
    // Within the leeway is fine; past it is not.
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut c = good.clone();
    c["exp"] = json!(now - 30);
    assert_eq!(
        bearer_get(&app, &key_a().sign(&c), "/api/v1/session")
            .await
            .0,
        StatusCode::OK
    );

    let hits = fake.hits();
    app.clock.advance(Duration::seconds(61));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let tampered = {
        let t = key_a().sign(&good);
        let p: Vec<&str> = t.split('.').collect();
        let c = with(&|c| c["groups"] = json!(["security", "backup-approvers"]));
        format!("{}.{}.{}", p[0], B64.encode(c.to_string()), p[2])
    };
    let mut no_kid = Header::new(Algorithm::RS256);
    no_kid.kid = None;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "another audience",
            key_a().sign(&fake.claims("twokey")),
            "wrong_audience",
        ),
        (
            "another issuer",
            key_a().sign(&with(&|c| c["iss"] = json!("https://evil.example"))),
            "wrong_issuer",
        ),
        (
            "expired",
            key_a().sign(&with(&|c| c["exp"] = json!(now - 120))),
            "expired",
        ),
        (
            "not yet valid",
            key_a().sign(&with(&|c| c["nbf"] = json!(now + 600))),
            "not_yet_valid",
        ),
        ("tampered", tampered, "bad_signature"),
        (
            "key B under key A's id",
            key_b().sign_as(Algorithm::RS256, "a", &good),
            "bad_signature",
        ),
        ("unknown kid", key_b().sign(&good), "unknown_key"),
        ("unknown kid again", key_b().sign(&good), "unknown_key"),
        ("alg none", unsigned(&good), "alg_refused"),
        (
            "HS256 with the public key",
            hs256_with_public_key(&good),
            "alg_refused",
        ),
        (
            "RS384",
            key_a().sign_as(Algorithm::RS384, "a", &good),
            "alg_refused",
        ),
        (
            "no kid",
            jsonwebtoken::encode(&no_kid, &good, &key_a().enc).unwrap(),
            "unknown_key",
        ),
        (
            "an EC key named for RSA",
            SignKey::ec("a").sign(&good),
            "bad_signature",
        ),
        (
            "no sub",
            key_a().sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            })),
            "malformed",
        ),
        (
            "no email",
            key_a().sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("email");
            })),
            "no_email",
        ),
        ("garbage", "not.a.jwt".into(), "malformed"),
    ];
    for (what, token, reason) in &cases {
        let (s, body, challenge) = bearer_get(&app, token, "/api/v1/session").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["error"]["code"], "invalid_token", "{what}");
        assert_eq!(body["error"]["reason"], *reason, "{what}: {body}");
        assert!(
            challenge.is_some_and(|c| c.starts_with("Bearer ")),
            "{what}"
        );
        // The same on a state-changing call.
        let (s, _) = bearer_post(&app, token, "/api/v1/requests", &json!({})).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what}");
    }
    // Many unknown kids, one refetch (at most once a minute).
    assert_eq!(fake.hits(), hits + 1);
    // Not a bearer scheme at all.
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/session", app.base))
        .header("authorization", "Basic YTpi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_request"
    );
    // Nothing was written to the audit chain by all that.
    assert_eq!(app.audit_count("auth.failed", None).await, 0);
    assert_eq!(app.request_count().await, 0);
}
