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
