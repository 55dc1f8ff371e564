//! Group commit (`src/store/group_commit.rs`): writers that queue while one runs share its
//! database commit, and each still commits or rolls back on its own.

use std::time::Duration;

use serde_json::json;
use twokey::audit::{self, Action, Actor, Outcome};
use twokey::store::{NewJob, Store, StoreError};

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    queued_writers_share_a_commit_and_keep_their_own_fate,
    a_failed_group_commit_fails_every_member_and_keeps_nothing,
    writers_cancelled_while_queued_or_inside_a_group_leave_nothing_behind,
    an_event_that_cannot_go_in_fails_its_own_commit_and_keeps_nothing_of_it,
    a_commit_says_ok_only_when_the_work_was_kept_even_after_a_swallowed_error,
);

async fn store_for(b: Backend) -> (TestDb, Store) {
    let db = TestDb::new(b).await;
    let store = Store::connect(&db.url, 4).await.unwrap();
    store.migrate().await.unwrap();
    (db, store)
}

fn job(key: &str) -> NewJob {
    let now = twokey::timefmt::fmt(time::OffsetDateTime::now_utc());
    NewJob {
        job_id: uuid::Uuid::new_v4().to_string(),
        kind: "test.group_commit".into(),
        request_id: None,
        payload: "{}".into(),
        dedupe_key: Some(key.into()),
        max_attempts: 1,
        // Far in the future: no worker runs here anyway, but nothing is due.
        run_at: "2999-01-01T00:00:00.000000Z".into(),
        created_at: now,
    }
}

async fn jobs_present(store: &Store) -> Vec<String> {
    let mut keys: Vec<String> = store
        .query_pairs_for_tests(
            "select dedupe_key, state from job where kind = 'test.group_commit' order by dedupe_key",
        )
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    keys
}

/// A writer in a task of its own: begin, queue the job `key`, commit.
fn spawn_writer(
    store: &Store,
    key: &'static str,
) -> tokio::task::JoinHandle<Result<(), StoreError>> {
    let store = store.clone();
    tokio::spawn(async move {
        let mut tx = store.begin().await?;
        tx.insert_job(&job(key)).await?;
        tx.commit().await
    })
}

/// Wait (awaiting, not sleeping) until `n` writers are queued for the slot.
async fn until_queued(store: &Store, n: usize) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while store.writers_queued() < n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} writers never queued"));
}

/// 40 writers queue behind one that holds the slot. Each writes a job and an audit event; every
/// fifth drops its transaction instead of committing. They must commit in far fewer database
/// commits than writers, the dropped ones must leave nothing, and the chain must stay whole.
async fn queued_writers_share_a_commit_and_keep_their_own_fate(b: Backend) {
    let (_db, store) = store_for(b).await;
    let (groups_before, members_before) = store.commit_stats();
    let now = time::OffsetDateTime::now_utc();

    let mut holder = store.begin().await.unwrap();
    holder.insert_job(&job("w-holder")).await.unwrap();
    let writers: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut tx = store.begin().await?;
                tx.insert_job(&job(&format!("w-{i:02}"))).await?;
                audit::record(
                    &mut tx,
                    now,
                    Action::RequestCreated,
                    &Actor::system(),
                    None,
                    json!({ "writer": i }),
                )
                .await?;
                if i % 5 == 0 {
                    drop(tx);
                    return Ok::<bool, StoreError>(false);
                }
                tx.commit().await?;
                Ok(true)
            })
        })
        .collect();
    until_queued(&store, 40).await;
    holder.commit().await.unwrap();
    let mut committed = Vec::new();
    for (i, w) in writers.into_iter().enumerate() {
        if w.await.unwrap().unwrap() {
            committed.push(format!("w-{i:02}"));
        }
    }
    committed.push("w-holder".into());
    committed.sort();

    assert_eq!(jobs_present(&store).await, committed);
    let (groups, members) = store.commit_stats();
    let (groups, members) = (groups - groups_before, members - members_before);
    assert_eq!(members, 33, "the holder and 32 writers committed");
    assert!(
        groups <= 4,
        "33 writers should share a few commits, took {groups}"
    );
    match audit::verify::verify_store(&store, None).await.unwrap() {
        Ok(Outcome::Whole { count, .. }) => assert_eq!(count, 32, "one event per committer"),
        other => panic!("chain not whole: {other:?}"),
    }
}

/// The holder writes a row whose (deferred) foreign key fails only at commit; a writer queued
/// behind it joins its group. The shared commit fails: both learn it, neither row is kept, and
/// the next writer commits normally.
async fn a_failed_group_commit_fails_every_member_and_keeps_nothing(b: Backend) {
    let (_db, store) = store_for(b).await;
    store
        .execute_raw_for_tests(
            "create table gc_probe (id integer primary key, parent integer \
             references gc_probe (id) deferrable initially deferred)",
        )
        .await
        .unwrap();

    let mut holder = store.begin().await.unwrap();
    holder
        .execute_raw_for_tests("insert into gc_probe (id, parent) values (1, 999)")
        .await
        .unwrap();
    let joiner = spawn_writer(&store, "joiner");
    until_queued(&store, 1).await;
    let held = holder.commit().await;
    let joined = joiner.await.unwrap();
    assert!(held.is_err(), "the holder's commit must fail: {held:?}");
    assert!(
        joined.is_err(),
        "the joiner shared the failed commit: {joined:?}"
    );
    assert!(jobs_present(&store).await.is_empty());
    assert!(
        store
            .query_pairs_for_tests("select cast(id as text), cast(parent as text) from gc_probe")
            .await
            .is_empty()
    );

    let mut tx = store.begin().await.unwrap();
    tx.insert_job(&job("after")).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(jobs_present(&store).await, vec!["after".to_string()]);
}

/// A client that hangs up drops its handler's future: here, one writer is cancelled while it
/// waits for the slot and one in the middle of its work inside a group. Neither may leave a
/// count, a lock or a row behind, and the writers around them commit.
async fn writers_cancelled_while_queued_or_inside_a_group_leave_nothing_behind(b: Backend) {
    let (_db, store) = store_for(b).await;
    let mut holder = store.begin().await.unwrap();
    holder.insert_job(&job("c-holder")).await.unwrap();

    // Cancelled while queued.
    let waiting = spawn_writer(&store, "c-never");
    until_queued(&store, 1).await;
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    assert_eq!(store.writers_queued(), 0);

    // Cancelled inside the group: it queues first, so the holder hands the group to it; it
    // writes and then waits forever, until it is cancelled. The writer queued behind it must
    // find its write undone and commit the group (the holder's work and its own).
    let (wrote_tx, wrote_rx) = tokio::sync::oneshot::channel();
    let stuck = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tx = store.begin().await.unwrap();
            tx.insert_job(&job("c-stuck")).await.unwrap();
            let _ = wrote_tx.send(());
            std::future::pending::<()>().await;
            drop(tx);
        })
    };
    until_queued(&store, 1).await;
    let after = spawn_writer(&store, "c-after");
    until_queued(&store, 2).await;
    let held = tokio::spawn(holder.commit());
    wrote_rx.await.unwrap();
    stuck.abort();
    assert!(stuck.await.unwrap_err().is_cancelled());
    after.await.unwrap().unwrap();
    held.await.unwrap().unwrap();
    assert_eq!(store.writers_queued(), 0);
    assert_eq!(
        jobs_present(&store).await,
        vec!["c-after".to_string(), "c-holder".to_string()]
    );
}

/// A transaction's audit events and jobs are queued and inserted just before it commits. If
/// that insert fails (here: an event row with the `seq` the next event needs, put there behind
/// the store's back), the commit must fail and keep nothing of that transaction, alone or as
/// the second member of a group, while the group's first member commits and the head stays
/// at the last event that went in.
async fn an_event_that_cannot_go_in_fails_its_own_commit_and_keeps_nothing_of_it(b: Backend) {
    let (_db, store) = store_for(b).await;
    let stray = |seq: i64| {
        format!(
            "insert into audit_event (seq, at, action, details, prev_hash, hash) \
             values ({seq}, '2026-01-01T00:00:00Z', 'stray', '{{}}', 'p', 'h')"
        )
    };
    let head = |store: Store| async move {
        store
            .query_pairs_for_tests("select cast(seq as text), hash from audit_head")
            .await
    };

    // Alone: the event would be seq 1, which is taken.
    store.execute_raw_for_tests(&stray(1)).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.insert_job(&job("alone-at-once")).await.unwrap();
    tx.queue_job(job("alone"));
    assert_eq!(record_one(&mut tx, 1).await.unwrap(), 1);
    let alone = tx.commit().await;
    assert!(alone.is_err(), "{alone:?}");
    assert!(jobs_present(&store).await.is_empty());
    assert_eq!(head(store.clone()).await[0].0, "0");

    // In a group: the holder's event (seq 2: the head is moved past the stray row by hand)
    // goes in; the joiner's (seq 3) is taken.
    store
        .execute_raw_for_tests("update audit_head set seq = 1, hash = 'h' where id = 1")
        .await
        .unwrap();
    store.execute_raw_for_tests(&stray(3)).await.unwrap();
    let mut holder = store.begin().await.unwrap();
    holder.queue_job(job("holder"));
    assert_eq!(record_one(&mut holder, 2).await.unwrap(), 2);
    let joiner = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tx = store.begin().await?;
            tx.insert_job(&job("joiner-at-once")).await?;
            tx.queue_job(job("joiner"));
            audit::record(
                &mut tx,
                time::OffsetDateTime::now_utc(),
                Action::RequestCreated,
                &Actor::system(),
                None,
                json!({ "writer": "joiner" }),
            )
            .await?;
            tx.commit().await
        })
    };
    until_queued(&store, 1).await;
    holder.commit().await.unwrap();
    let joined = joiner.await.unwrap();
    assert!(joined.is_err(), "{joined:?}");
    assert_eq!(jobs_present(&store).await, vec!["holder".to_string()]);
    let h = head(store.clone()).await;
    assert_eq!(h[0].0, "2", "the head is the holder's event: {h:?}");
    let actions = store
        .query_pairs_for_tests("select cast(seq as text), action from audit_event order by seq")
        .await;
    assert_eq!(
        actions,
        [
            ("1".to_string(), "stray".to_string()),
            ("2".into(), "request.created".into()),
            ("3".into(), "stray".into()),
        ]
    );
}

/// One `request.created` event by the system in `tx`; its `seq`.
async fn record_one(tx: &mut twokey::store::Tx, writer: i64) -> Result<i64, StoreError> {
    audit::record(
        tx,
        time::OffsetDateTime::now_utc(),
        Action::RequestCreated,
        &Actor::system(),
        None,
        json!({ "writer": writer }),
    )
    .await
}

/// A writer that swallows the error of one of its statements and then commits (no code here
/// should, but the store must not lie about it): `commit` may say `Ok` only if its work was
/// kept. PostgreSQL rolls back such a transaction on COMMIT without an error; SQLite keeps the
/// transaction and the statements that worked.
async fn a_commit_says_ok_only_when_the_work_was_kept_even_after_a_swallowed_error(b: Backend) {
    let (_db, store) = store_for(b).await;
    let mut tx = store.begin().await.unwrap();
    tx.insert_job(&job("kept-or-not")).await.unwrap();
    assert!(
        tx.execute_raw_for_tests("select * from no_such_table")
            .await
            .is_err()
    );
    let committed = tx.commit().await;
    let kept = jobs_present(&store).await == vec!["kept-or-not".to_string()];
    assert_eq!(committed.is_ok(), kept, "commit said {committed:?}");
    if b == Backend::Postgres {
        assert!(committed.is_err(), "PostgreSQL rolled it back");
    }
}
