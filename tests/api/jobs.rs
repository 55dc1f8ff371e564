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
