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
