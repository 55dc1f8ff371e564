//! Mail through a real SMTP server: the review loop, prefetching, escaping, an outage, and a
//! burst of requests.

use std::collections::HashMap;

use reqwest::StatusCode;
use time::Duration;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    the_review_loop_runs_through_real_mail,
    prefetching_every_link_in_a_mail_changes_nothing,
    user_text_arrives_inert_in_html_and_headers,
    a_mail_outage_delays_mail_and_loses_none,
);

fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map(|x| x.1).unwrap_or(url);
    format!("/{}", rest.split_once('/').map(|x| x.1).unwrap_or(""))
}

async fn the_review_loop_runs_through_real_mail(b: Backend) {
    let smtp = SmtpPeer::start().await;
    let app = TestApp::spawn_with_smtp(b, &smtp).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let id = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.settle().await;

    let to_bob = smtp.to("bob@demo.twokey").await;
    assert_eq!(to_bob.len(), 1, "one mail to bob");
    assert_eq!(smtp.to("carol@demo.twokey").await.len(), 1);
    let receipts = smtp.to("alice@demo.twokey").await;
    assert_eq!(
        receipts.len(),
        1,
        "alice gets a receipt, never a review link"
    );
    assert!(!receipts[0]["html"].as_str().unwrap().contains("/review/"));
    let mail = &to_bob[0];
    assert!(
        mail["subject"]
            .as_str()
            .unwrap()
            .starts_with("Approval needed")
    );
    assert!(
        mail["raw"]
            .as_str()
            .unwrap()
            .contains("multipart/alternative")
    );
    assert!(
        mail["text"].as_str().unwrap().contains("/review/"),
        "the text part has the link too"
    );
    let link = href_with(mail["html"].as_str().unwrap(), "/review/")
        .expect("review link in the HTML part");

    let bob = app.client_as("bob@demo.twokey").await;
    let html = bob.get(&path_of(&link)).await.text().await.unwrap();
    let (csrf, token) = (
        form_value(&html, "csrf").unwrap(),
        form_value(&html, "token").unwrap(),
    );
    let r = bob
        .http
        .post(format!("{}/review", app.base))
        .form(&[
            ("token", token.as_str()),
            ("decision", "approve"),
            ("csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.settle().await;
    assert_eq!(alice.state(&id).await, "active");
    let subjects: Vec<String> = smtp
        .to("alice@demo.twokey")
        .await
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_string())
        .collect();
    assert!(
        subjects.iter().any(|s| s.contains("approved")),
        "{subjects:?}"
    );
    assert!(
        subjects.iter().any(|s| s.contains("window is open")),
        "{subjects:?}"
    );
    // Carol is told it is settled; Sam (watcher) heard about every step.
    assert!(smtp.to("carol@demo.twokey").await.iter().any(|m| {
        m["subject"]
            .as_str()
            .unwrap()
            .starts_with("Already decided")
    }));
    assert!(smtp.to("sam@demo.twokey").await.len() >= 3);
    // Every message id is distinct and stable in form.
    let ids: Vec<String> = smtp
        .messages()
        .await
        .iter()
        .map(|m| m["messageId"].as_str().unwrap().to_string())
        .collect();
    let mut uniq = ids.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(ids.len(), uniq.len());
    assert!(ids.iter().all(|i| i.ends_with("@twokey>")));
}

async fn prefetching_every_link_in_a_mail_changes_nothing(b: Backend) {
    let smtp = SmtpPeer::start().await;
    let app = TestApp::spawn_with_smtp(b, &smtp).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let id = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.settle().await;
    let mail = &smtp.to("bob@demo.twokey").await[0];
    let html = mail["html"].as_str().unwrap();
    let links: Vec<String> = html
        .split("href=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_string())
        .collect();
    assert!(!links.is_empty());
    // A link scanner (no session) and Bob's own browser (signed in) both fetch every link.
    let scanner = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(5))
        .cookie_store(true)
        .build()
        .unwrap();
    let bob = app.client_as("bob@demo.twokey").await;
    for l in &links {
        let p = path_of(l);
        let _ = scanner
            .get(format!("{}{p}", app.base))
            .send()
            .await
            .unwrap();
        let _ = scanner
            .head(format!("{}{p}", app.base))
            .send()
            .await
            .unwrap();
        let _ = bob.get(&p).await;
    }
    assert_eq!(alice.state(&id).await, "pending");
    assert_eq!(app.audit_count("decision.approved", None).await, 0);
}

async fn user_text_arrives_inert_in_html_and_headers(b: Backend) {
    let smtp = SmtpPeer::start().await;
    let app = TestApp::spawn_with_smtp(b, &smtp).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let (s, v) = alice
        .post_json("/api/v1/requests", &serde_json::json!({
            "vault_id": single_vault(),
            "operation": REVERSIBLE_OP,
            "justification": "<script>alert('x')</script> <img src=x onerror=alert(1)>\r\nBcc: evil@attacker.test\r\nSubject: free money",
            "ticket": "<b>T-1</b>",
            "duration_minutes": 30,
        }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    app.settle().await;
    let all = smtp.messages().await;
    assert!(!all.is_empty());
    for m in &all {
        let to: Vec<&str> = m["to"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert!(
            to.iter().all(|t| t.ends_with("@demo.twokey")),
            "mail to {to:?}"
        );
        let html = m["html"].as_str().unwrap();
        assert!(
            !html.contains("<script>") && !html.contains("<img src=x") && !html.contains("<b>T-1"),
            "{html}"
        );
        assert!(!m["headers"].as_object().unwrap().contains_key("bcc"));
        assert!(!m["subject"].as_str().unwrap().contains("free money"));
    }
    let bob = &smtp.to("bob@demo.twokey").await[0];
    assert!(
        bob["html"].as_str().unwrap().contains("&#60;script&#62;")
            || bob["html"].as_str().unwrap().contains("&lt;script&gt;")
    );
    assert!(
        bob["text"]
            .as_str()
            .unwrap()
            .contains("<script>alert('x')</script>"),
        "plain text keeps the words as typed"
    );
}

async fn a_mail_outage_delays_mail_and_loses_none(b: Backend) {
    let smtp = SmtpPeer::start().await;
    let app = TestApp::spawn_with_smtp(b, &smtp).await;
    smtp.set_down(true).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let id = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.settle().await;
    assert!(smtp.messages().await.is_empty());
    let jobs = app.svc.store.jobs_for_request(&id).await.unwrap();
    assert!(
        jobs.iter()
            .filter(|j| j.kind == "mail")
            .all(|j| j.state == "queued" && j.attempts == 1 && j.last_error.is_some())
    );
    // Retries wait for their backoff: nothing is sent while the server is still down.
    app.clock.advance(Duration::seconds(5));
    app.settle().await;
    assert!(smtp.messages().await.is_empty());
    smtp.set_down(false).await;
    app.clock.advance(Duration::minutes(10));
    app.settle().await;
    app.clock.advance(Duration::minutes(10));
    app.settle().await;
    let mut per_rcpt: HashMap<String, usize> = HashMap::new();
    for m in smtp.messages().await {
        for t in m["to"].as_array().unwrap() {
            *per_rcpt.entry(t.as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    assert_eq!(per_rcpt.get("bob@demo.twokey"), Some(&1));
    assert_eq!(per_rcpt.get("carol@demo.twokey"), Some(&1));
    assert_eq!(per_rcpt.get("alice@demo.twokey"), Some(&1));
    assert_eq!(per_rcpt.get("sam@demo.twokey"), Some(&1));
    assert_eq!(app.audit_count("notification.sent", Some(&id)).await, 4);
    assert_eq!(app.audit_count("notification.failed", Some(&id)).await, 0);
}

/// 100 requests at once: every approver mail is delivered exactly once. Prints the time it
/// took (quoted in the README); asserts only correctness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_requests_at_once_mail_every_approver_once() {
    let smtp = SmtpPeer::start().await;
    let app = TestApp::spawn_with_smtp(Backend::Sqlite, &smtp).await;
    let alice = std::sync::Arc::new(app.client_as("alice@demo.twokey").await);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let a = alice.clone();
        tasks.push(tokio::spawn(async move {
            a.create(&single_vault(), REVERSIBLE_OP).await["id"]
                .as_str()
                .unwrap()
                .to_string()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let created = started.elapsed();
    app.settle().await;
    let total = started.elapsed();
    let reviews: Vec<_> = smtp
        .messages()
        .await
        .into_iter()
        .filter(|m| {
            m["subject"]
                .as_str()
                .unwrap()
                .starts_with("Approval needed")
        })
        .collect();
    assert_eq!(reviews.len(), 200, "bob and carol, once per request");
    let mut seen = std::collections::HashSet::new();
    for m in &reviews {
        let link = href_with(m["html"].as_str().unwrap(), "/review/").unwrap();
        assert!(seen.insert(link), "every review link is unique");
    }
    eprintln!(
        "MEASURE: 100 concurrent requests created in {created:?}; all 500 mails (200 review links) delivered over SMTP after {total:?}"
    );
}
