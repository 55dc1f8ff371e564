//! The outbox: a dead worker's job is finished by another, exactly once.

use time::Duration;

use crate::both_backends;
use crate::helpers::*;
use twokey::timefmt;

both_backends!(
    a_job_claimed_by_a_dead_worker_is_finished_once_by_another,
    a_stale_worker_cannot_complete_a_job_it_lost
);

async fn approved_request(app: &TestApp) -> String {
    let alice = app.client_as("alice@demo.twokey").await;
    let bob = app.client_as("bob@demo.twokey").await;
    let id = alice.create(&single_vault(), REVERSIBLE_OP).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(bob.decide(&id, "approve").await.1["state"], "approved");
    id
}

/// Claim the grant job of `id` as `owner` (after the mail jobs queued before it).
async fn claim_grant(app: &TestApp, owner: &str) -> twokey::store::JobRow {
    loop {
        let now = app.svc.now();
        let job = app
            .svc
            .store
            .claim_job(
                owner,
                &timefmt::fmt(now),
                &timefmt::fmt(now + Duration::minutes(2)),
            )
            .await
            .unwrap()
            .expect("a due job");
        if job.kind == "grant" {
            return job;
        }
        app.svc
            .run_job(&job, owner)
            .await
            .map_err(|e| format!("{e:?}"))
            .unwrap();
    }
}

async fn a_job_claimed_by_a_dead_worker_is_finished_once_by_another(b: Backend) {
    let app = TestApp::spawn(b).await;
    let id = approved_request(&app).await;
    // Worker A claims the grant job and dies before finishing it.
    let job = claim_grant(&app, "worker-a").await;
    // While A's lease holds, nobody else takes the job.
    app.settle().await;
    assert_eq!(
        app.client_as("alice@demo.twokey").await.state(&id).await,
        "approved"
    );
    // After the lease runs out, worker B takes over.
    app.clock.advance(Duration::minutes(2));
    app.settle().await;
    assert_eq!(
        app.client_as("alice@demo.twokey").await.state(&id).await,
        "active"
    );
    assert_eq!(app.audit_count("grant.active", Some(&id)).await, 1);
    assert_eq!(
        app.svc
            .store
            .simulated_calls(&id)
            .await
            .unwrap()
            .iter()
            .filter(|c| c.step == "grant")
            .count(),
        1
    );
    let jobs = app.svc.store.jobs_for_request(&id).await.unwrap();
    let grant = jobs.iter().find(|j| j.job_id == job.job_id).unwrap();
    assert_eq!(grant.state, "done");
    assert_eq!(grant.attempts, 2);
}

async fn a_stale_worker_cannot_complete_a_job_it_lost(b: Backend) {
    let app = TestApp::spawn(b).await;
    let id = approved_request(&app).await;
    let stale = claim_grant(&app, "worker-a").await;
    app.clock.advance(Duration::minutes(3));
    app.settle().await;
    // Worker A wakes up and runs the job it once held: its commit is refused, nothing repeats.
    let done = app
        .svc
        .run_job(&stale, "worker-a")
        .await
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    assert!(!done, "a lost lease must not commit");
    assert_eq!(app.audit_count("grant.active", Some(&id)).await, 1);
    assert_eq!(
        app.svc
            .store
            .jobs_for_request(&id)
            .await
            .unwrap()
            .iter()
            .filter(|j| j.kind == "revoke")
            .count(),
        1
    );
}

both_backends!(one_replica_at_a_time_holds_the_sweep_and_a_dead_ones_lease_runs_out);

/// The sweep lease: renewed by its holder, refused to others until it runs out, given back at
/// a stop. Concurrent claims: exactly one wins.
async fn one_replica_at_a_time_holds_the_sweep_and_a_dead_ones_lease_runs_out(b: Backend) {
    let app = TestApp::spawn(b).await;
    let store = &app.svc.store;
    use twokey::clock::Clock as _;
    let t = |s: i64| timefmt::fmt(app.clock.now() + Duration::seconds(s));
    assert!(
        store
            .claim_periodic("sweep", "a", &t(0), &t(90))
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_periodic("sweep", "b", &t(10), &t(100))
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_periodic("sweep", "a", &t(30), &t(120))
            .await
            .unwrap(),
        "renewed"
    );
    assert!(
        !store
            .claim_periodic("sweep", "b", &t(100), &t(190))
            .await
            .unwrap()
    );
    // a dies: once its lease has run out, b takes over and a cannot take it back.
    assert!(
        store
            .claim_periodic("sweep", "b", &t(121), &t(211))
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_periodic("sweep", "a", &t(122), &t(212))
            .await
            .unwrap()
    );
    // b stops: the lease is given back at once.
    store.release_leases("b").await.unwrap();
    assert!(
        store
            .claim_periodic("sweep", "a", &t(123), &t(213))
            .await
            .unwrap()
    );
    store.release_leases("a").await.unwrap();

    // Eight replicas at once: one wins.
    let wins = futures::future::join_all((0..8).map(|i| {
        let (now, until) = (t(300), t(390));
        async move {
            store
                .claim_periodic("sweep", &format!("r{i}"), &now, &until)
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");
}

both_backends!(a_batch_claim_takes_the_oldest_due_jobs_and_no_job_twice);

/// A worker fills its idle lanes with one claim of several jobs: it gets exactly as many as it
/// asked for, oldest first, only due ones; two stores (two replicas) claiming at once in
/// batches never get the same job, and between them get every due job.
async fn a_batch_claim_takes_the_oldest_due_jobs_and_no_job_twice(b: Backend) {
    let db = TestDb::new(b).await;
    let one = twokey::store::Store::connect(&db.url, 4).await.unwrap();
    one.migrate().await.unwrap();
    let two = twokey::store::Store::connect(&db.url, 4).await.unwrap();
    let now = time::OffsetDateTime::now_utc();
    let at = |s: i64| timefmt::fmt(now + Duration::seconds(s));
    let mut tx = one.begin().await.unwrap();
    // 40 due jobs, a second apart in run_at, and one not due yet.
    for i in 0..41 {
        tx.insert_job(&twokey::store::NewJob {
            job_id: format!("job-{i:02}"),
            kind: "test.batch".into(),
            request_id: None,
            payload: "{}".into(),
            dedupe_key: None,
            max_attempts: 1,
            run_at: if i == 40 { at(3600) } else { at(i - 100) },
            created_at: at(-200),
        })
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();

    let first = one.claim_jobs("w1", &at(0), &at(60), 3).await.unwrap();
    let ids: Vec<&str> = first.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids, ["job-00", "job-01", "job-02"]);
    assert!(first.iter().all(|j| j.lease_owner.as_deref() == Some("w1")));
    assert!(first.iter().all(|j| j.attempts == 1));

    // Two replicas, four claimers each, batches of 2, until nothing is left.
    let claimer = |store: twokey::store::Store, owner: String| async move {
        let mut got = Vec::new();
        loop {
            let batch = store.claim_jobs(&owner, &at(0), &at(60), 2).await.unwrap();
            assert!(batch.len() <= 2, "asked for 2, got {}", batch.len());
            if batch.is_empty() {
                return got;
            }
            got.extend(batch.into_iter().map(|j| j.job_id));
        }
    };
    let all = futures::future::join_all((0..8).map(|i| {
        let store = if i % 2 == 0 { one.clone() } else { two.clone() };
        claimer(store, format!("r{i}"))
    }))
    .await;
    let mut claimed: Vec<String> = all.into_iter().flatten().collect();
    let n = claimed.len();
    claimed.sort();
    claimed.dedup();
    assert_eq!(claimed.len(), n, "a job was claimed twice");
    let expected: Vec<String> = (3..40).map(|i| format!("job-{i:02}")).collect();
    assert_eq!(claimed, expected, "every due job once, the future one not");
}

both_backends!(queued_jobs_go_in_with_the_commit_once_per_key_and_never_without_it);

/// `Tx::queue_job` holds jobs back and inserts them in multi-row statements: they must be in
/// the table once the transaction commits (more than one statement's worth included), the
/// first of two with the same dedupe key wins, as it would one insert after another (in the
/// queue, against an immediate `insert_job`, and against a row committed earlier), and a
/// transaction that does not commit leaves none of them.
async fn queued_jobs_go_in_with_the_commit_once_per_key_and_never_without_it(b: Backend) {
    let db = TestDb::new(b).await;
    let store = twokey::store::Store::connect(&db.url, 4).await.unwrap();
    store.migrate().await.unwrap();
    let job = |id: &str, key: Option<&str>| store_job("test.queued", id, key);
    let jobs = |store: twokey::store::Store| async move {
        store
            .query_pairs_for_tests(
                "select job_id, coalesce(dedupe_key, '-') from job where kind = 'test.queued' \
                 order by job_id",
            )
            .await
    };

    let mut tx = store.begin().await.unwrap();
    tx.queue_job(job("a", Some("k1")));
    tx.queue_job(job("b", Some("k1")));
    tx.queue_job(job("c", None));
    // An immediate insert sees the queue's jobs first, as if they had gone in one by one.
    assert!(tx.insert_job(&job("d", Some("k2"))).await.unwrap());
    assert!(!tx.insert_job(&job("d2", Some("k1"))).await.unwrap());
    tx.queue_job(job("e", Some("k2")));
    for i in 0..450 {
        tx.queue_job(job(&format!("n{i:03}"), Some(&format!("n{i:03}"))));
    }
    tx.commit().await.unwrap();
    let got = jobs(store.clone()).await;
    let mut want = vec![
        ("a".to_string(), "k1".to_string()),
        ("c".into(), "-".into()),
        ("d".into(), "k2".into()),
    ];
    want.extend((0..450).map(|i| (format!("n{i:03}"), format!("n{i:03}"))));
    assert_eq!(got, want);

    // Dropped without a commit: nothing of it stays, queued or not.
    let mut tx = store.begin().await.unwrap();
    tx.queue_job(job("f", Some("k3")));
    assert!(tx.insert_job(&job("g", Some("k4"))).await.unwrap());
    tx.queue_job(job("h", Some("k5")));
    drop(tx);
    // A key already in the table adds nothing when queued later.
    let mut tx = store.begin().await.unwrap();
    tx.queue_job(job("i", Some("k1")));
    tx.queue_job(job("j", Some("k6")));
    tx.commit().await.unwrap();
    let got = jobs(store.clone()).await;
    assert_eq!(got.len(), want.len() + 1, "{:?}", &got[..4]);
    assert!(got.contains(&("j".into(), "k6".into())));
    for gone in ["f", "g", "h", "i"] {
        assert!(
            got.iter().all(|(id, _)| id != gone),
            "{gone} is in the table"
        );
    }
}

both_backends!(a_transaction_whose_queued_jobs_failed_to_go_in_cannot_commit_without_them);

/// If inserting the queued jobs fails (here: a job id already taken) and the caller goes on
/// anyway, the transaction must not commit without them: `commit` tries them again and fails.
/// (On SQLite a failed statement leaves the transaction open and committable; on PostgreSQL a
/// COMMIT after it rolls back without an error: either way only the retry tells.)
async fn a_transaction_whose_queued_jobs_failed_to_go_in_cannot_commit_without_them(b: Backend) {
    let db = TestDb::new(b).await;
    let store = twokey::store::Store::connect(&db.url, 4).await.unwrap();
    store.migrate().await.unwrap();
    let job = |id: &str, key: &str| store_job("test.poisoned", id, Some(key));
    let mut tx = store.begin().await.unwrap();
    tx.insert_job(&job("taken", "k0")).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    tx.queue_job(job("grant-1", "k1"));
    tx.queue_job(job("taken", "k2"));
    // The flush before this insert fails on the taken id; the caller ignores it.
    assert!(tx.insert_job(&job("mail-1", "k3")).await.is_err());
    let committed = tx.commit().await;
    assert!(committed.is_err(), "{committed:?}");
    let rows = store
        .query_pairs_for_tests(
            "select job_id, dedupe_key from job where kind = 'test.poisoned' order by job_id",
        )
        .await;
    assert_eq!(rows, [("taken".to_string(), "k0".to_string())]);
}

/// A due job of `kind` for the store tests, with its dedupe key if any.
fn store_job(kind: &str, id: &str, key: Option<&str>) -> twokey::store::NewJob {
    let now = timefmt::fmt(time::OffsetDateTime::now_utc());
    twokey::store::NewJob {
        job_id: id.into(),
        kind: kind.into(),
        request_id: None,
        payload: format!("{{\"from\":\"{id}\"}}"),
        dedupe_key: key.map(Into::into),
        max_attempts: 1,
        run_at: now.clone(),
        created_at: now,
    }
}
