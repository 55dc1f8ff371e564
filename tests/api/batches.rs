//! Decisions and session lookups that arrive together are run as batches (`src/batch.rs`,
//! `src/service/decide.rs`): each must come out exactly as if it had come alone, one after
//! another in arrival order, and a batch that cannot be written must cost no decision but the
//! one at fault.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use twokey::store::{SessionRow, Store};

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    decisions_that_arrive_together_are_judged_as_if_one_after_another,
    a_batch_that_cannot_be_written_is_decided_again_one_by_one,
    session_lookups_that_arrive_together_each_get_their_own_session,
);

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("an id").to_string()
}

/// Wait (awaiting, not sleeping) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}"));
}

/// One decision to make: who, on which request, what, with which comment.
struct Ask {
    who: Arc<Client>,
    id: String,
    decision: &'static str,
    comment: &'static str,
}

/// Make `asks` so that they reach the decider in this order and all but the first wait for
/// the same batch: the writer slot is held, the first decision's batch waits for it, and each
/// next decision is sent once the one before is queued. Then the slot is let go. Returns each
/// answer, in order, and the batches that ran meanwhile.
async fn in_one_batch(app: &TestApp, asks: Vec<Ask>) -> (Vec<(StatusCode, Value)>, u64) {
    let (batches_before, _, _) = app.svc.decision_batch_stats();
    let holder = app.svc.store.begin().await.unwrap();
    let mut tasks = Vec::new();
    for (i, ask) in asks.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            ask.who
                .post_json(
                    &format!("/api/v1/requests/{}/decision", ask.id),
                    &json!({ "decision": ask.decision, "comment": ask.comment }),
                )
                .await
        }));
        if i == 0 {
            // Its batch took it and waits for the slot.
            let store = app.svc.store.clone();
            until("the first batch waits for the slot", || {
                store.writers_queued() == 1
            })
            .await;
        } else {
            until("the decision is queued", || {
                app.svc.decisions_waiting() == i
            })
            .await;
        }
    }
    drop(holder);
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let (batches_after, _, _) = app.svc.decision_batch_stats();
    (answers, batches_after - batches_before)
}

fn code(a: &(StatusCode, Value)) -> (StatusCode, Option<&str>) {
    (a.0, a.1["error"]["code"].as_str())
}

/// Every kind of decision in one batch, several on the same request: the two approvals of a
/// 2-of-M request (the second settles it), one approver twice, a veto followed by an approval,
/// a self-approval, a stranger, and plain approvals. Each must get the answer it would get
/// alone, in arrival order; each approved request exactly one grant; the chain stays whole.
async fn decisions_that_arrive_together_are_judged_as_if_one_after_another(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.client_as("alice@demo.twokey").await;
    let bob = Arc::new(app.client_as("bob@demo.twokey").await);
    let carol = Arc::new(app.client_as("carol@demo.twokey").await);
    let dave = Arc::new(app.client_as("dave@demo.twokey").await);
    let mallory = Arc::new(app.client_as("mallory@demo.twokey").await);
    let alice_again = Arc::new(app.client_as("Alice@Demo.Twokey").await);

    let dual = id_of(&alice.create(&dual_vault(), REVERSIBLE_OP).await);
    let dual_twice = id_of(&alice.create(&dual_vault(), REVERSIBLE_OP).await);
    let own = id_of(&alice.create(&single_vault(), REVERSIBLE_OP).await);
    let vetoed = id_of(&alice.create(&single_vault(), REVERSIBLE_OP).await);
    let stranger = id_of(&alice.create(&single_vault(), REVERSIBLE_OP).await);
    let mut plain = Vec::new();
    for _ in 0..12 {
        plain.push(id_of(&alice.create(&single_vault(), REVERSIBLE_OP).await));
    }

    let ask = |who: &Arc<Client>, id: &str, decision: &'static str| Ask {
        who: who.clone(),
        id: id.to_string(),
        decision,
        comment: "looked at it",
    };
    let mut asks = vec![
        // Alone in the first batch.
        ask(&bob, &plain[0], "approve"),
        ask(&bob, &dual, "approve"),
        ask(&dave, &dual_twice, "approve"),
        ask(&carol, &dual, "approve"),
        ask(&dave, &dual_twice, "approve"),
        ask(&alice_again, &own, "approve"),
        ask(&carol, &vetoed, "deny"),
        ask(&bob, &vetoed, "approve"),
        ask(&mallory, &stranger, "approve"),
    ];
    for (i, id) in plain.iter().enumerate().skip(1) {
        asks.push(ask(if i % 2 == 0 { &bob } else { &carol }, id, "approve"));
    }
    let n = asks.len();
    let (answers, batches) = in_one_batch(&app, asks).await;
    assert_eq!(
        batches, 2,
        "the first decision alone, then all the others together"
    );

    let ok = |i: usize, state: &str| {
        assert_eq!(answers[i].0, StatusCode::OK, "answer {i}: {}", answers[i].1);
        assert_eq!(answers[i].1["state"], state, "answer {i}");
    };
    ok(0, "approved");
    // An answer shows the request as it is once its batch committed: Carol's approval, later
    // in the same batch, settled it.
    ok(1, "approved");
    ok(2, "pending");
    ok(3, "approved");
    assert_eq!(
        code(&answers[4]),
        (StatusCode::CONFLICT, Some("already_decided"))
    );
    assert_eq!(
        code(&answers[5]),
        (StatusCode::FORBIDDEN, Some("self_approval"))
    );
    ok(6, "denied");
    assert_eq!(
        code(&answers[7]),
        (StatusCode::CONFLICT, Some("state_conflict"))
    );
    assert_eq!(
        code(&answers[8]),
        (StatusCode::FORBIDDEN, Some("not_an_approver"))
    );
    for i in 9..n {
        ok(i, "approved");
    }

    // What was kept agrees with the answers.
    let (_, v) = bob.get_json(&format!("/api/v1/requests/{dual}")).await;
    assert_eq!(v["state"], "approved");
    assert_eq!(v["decisions"].as_array().unwrap().len(), 2, "{v}");
    let (_, v) = bob
        .get_json(&format!("/api/v1/requests/{dual_twice}"))
        .await;
    assert_eq!(v["state"], "pending");
    assert_eq!(v["decisions"].as_array().unwrap().len(), 1, "{v}");
    let (_, v) = bob.get_json(&format!("/api/v1/requests/{vetoed}")).await;
    assert_eq!(v["state"], "denied");
    assert_eq!(v["decisions"].as_array().unwrap().len(), 1, "{v}");
    for id in [&own, &stranger] {
        let (_, v) = bob.get_json(&format!("/api/v1/requests/{id}")).await;
        assert_eq!(v["state"], "pending");
        assert_eq!(v["decisions"].as_array().unwrap().len(), 0, "{v}");
    }
    // The answer to the decision that settled a request is that request as a GET shows it.
    let (_, got) = carol.get_json(&format!("/api/v1/requests/{dual}")).await;
    assert_eq!(answers[3].1, got);
    for id in plain.iter().chain([&dual]) {
        assert_eq!(
            app.audit_count("grant.requested", Some(id)).await,
            1,
            "{id}"
        );
    }
    for id in [&dual_twice, &own, &vetoed, &stranger] {
        assert_eq!(
            app.audit_count("grant.requested", Some(id)).await,
            0,
            "{id}"
        );
    }
    assert_eq!(app.audit_count("decision.approved", None).await, 15);
    assert_eq!(app.audit_count("decision.denied", None).await, 1);
    // The self-approval was recorded for the watchers, once.
    assert_eq!(app.audit_count("alert.raised", Some(&own)).await, 1);
    let walk = twokey::audit::verify::verify_store(&app.svc.store, None)
        .await
        .unwrap();
    assert!(walk.is_ok(), "{walk:?}");
}

/// A statement of the batch fails (a trigger refuses one decision's row): nothing of the
/// batch may be kept, each decision is then decided alone, and only the one at fault fails.
async fn a_batch_that_cannot_be_written_is_decided_again_one_by_one(b: Backend) {
    let app = TestApp::spawn(b).await;
    let store = &app.svc.store;
    match b {
        Backend::Sqlite => {
            store
                .execute_raw_for_tests(
                    "create trigger refuse_boom before insert on decision \
                     when new.comment = 'boom' begin select raise(abort, 'boom refused'); end",
                )
                .await
                .unwrap();
        }
        Backend::Postgres => {
            store
                .execute_raw_for_tests(
                    "create function refuse_boom() returns trigger language plpgsql as $$ \
                     begin if new.comment = 'boom' then raise exception 'boom refused'; end if; \
                     return new; end $$",
                )
                .await
                .unwrap();
            store
                .execute_raw_for_tests(
                    "create trigger refuse_boom before insert on decision for each row \
                     execute function refuse_boom()",
                )
                .await
                .unwrap();
        }
    }
    let alice = app.client_as("alice@demo.twokey").await;
    let bob = Arc::new(app.client_as("bob@demo.twokey").await);
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(id_of(&alice.create(&single_vault(), REVERSIBLE_OP).await));
    }
    let asks = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Ask {
            who: bob.clone(),
            id: id.clone(),
            decision: "approve",
            comment: if i == 5 { "boom" } else { "looked at it" },
        })
        .collect();
    let (_, _, split_before) = app.svc.decision_batch_stats();
    let (answers, batches) = in_one_batch(&app, asks).await;
    assert_eq!(batches, 2);
    let (_, _, split_after) = app.svc.decision_batch_stats();
    assert_eq!(
        split_after - split_before,
        1,
        "the second batch failed and was split"
    );

    for (i, (a, id)) in answers.iter().zip(&ids).enumerate() {
        if i == 5 {
            assert_eq!(a.0, StatusCode::INTERNAL_SERVER_ERROR, "{}", a.1);
            assert_eq!(bob.state(id).await, "pending");
            assert_eq!(app.audit_count("decision.approved", Some(id)).await, 0);
            assert_eq!(app.audit_count("grant.requested", Some(id)).await, 0);
        } else {
            assert_eq!(a.0, StatusCode::OK, "answer {i}: {}", a.1);
            assert_eq!(a.1["state"], "approved");
            assert_eq!(app.audit_count("decision.approved", Some(id)).await, 1);
            assert_eq!(app.audit_count("grant.requested", Some(id)).await, 1);
        }
    }
    let walk = twokey::audit::verify::verify_store(store, None)
        .await
        .unwrap();
    assert!(walk.is_ok(), "{walk:?}");
}

/// Session lookups that wait for the same statement: each must get its own session (its own
/// CSRF token), an unknown one none, and two lookups of one session both get it.
async fn session_lookups_that_arrive_together_each_get_their_own_session(b: Backend) {
    let db = TestDb::new(b).await;
    // One connection: while a transaction holds it, the first lookup waits for it and the
    // others queue for the next statement.
    let store = Store::connect(&db.url, 1).await.unwrap();
    store.migrate().await.unwrap();
    let now = "2026-12-03T09:00:00.000000Z".to_string();
    let later = "2999-01-01T00:00:00.000000Z".to_string();
    for i in 0..20 {
        store
            .insert_session(&SessionRow {
                session_hash: format!("hash-{i:02}"),
                principal_id: None,
                csrf_token: format!("csrf-{i:02}"),
                groups: "[]".into(),
                created_at: now.clone(),
                last_seen_at: now.clone(),
                expires_at: later.clone(),
                notice: None,
            })
            .await
            .unwrap();
    }
    let (before, _) = store.session_batch_stats();
    let holder = store.begin().await.unwrap();
    // Looked up: the 20 sessions in a shuffled order, one of them twice, and one unknown.
    let mut hashes: Vec<String> = (0..20).rev().map(|i| format!("hash-{i:02}")).collect();
    hashes.insert(7, "hash-03".into());
    hashes.push("hash-unknown".into());
    let mut tasks = Vec::new();
    for (i, h) in hashes.iter().enumerate() {
        let s = store.clone();
        let h = h.clone();
        tasks.push(tokio::spawn(async move { s.get_session(&h).await }));
        if i == 0 {
            let s = store.clone();
            until("the first lookup runs", || {
                let (n, _) = s.session_batch_stats();
                n == before + 1
            })
            .await;
        } else {
            let s = store.clone();
            until("the lookup is queued", || s.sessions_waiting() == i).await;
        }
    }
    drop(holder);
    for (h, t) in hashes.iter().zip(tasks) {
        let got = t.await.unwrap().unwrap();
        match h.strip_prefix("hash-").unwrap() {
            "unknown" => assert!(got.is_none()),
            n => assert_eq!(got.unwrap().session.csrf_token, format!("csrf-{n}")),
        }
    }
    let (after, _) = store.session_batch_stats();
    assert_eq!(
        after - before,
        2,
        "the first lookup alone, then the others together"
    );
}
