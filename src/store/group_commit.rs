//! Group commit: writing transactions that arrive while another one runs share its database
//! transaction and its one commit (one fsync), each inside a savepoint of its own.
//!
//! Every writer serializes on the audit head anyway (see [`super::Store::begin`]), so writers
//! run one after another; without grouping each also pays a durable commit of its own, and a
//! burst of N approvals waits N fsyncs. With grouping:
//!
//! - `begin` takes the one *slot* of this process (a fair, first-come mutex). If a group is
//!   open, the new transaction joins it behind `SAVEPOINT`; otherwise it opens a database
//!   transaction and takes the audit head row.
//! - `commit` releases the savepoint. If other writers are queued for the slot (and the group
//!   is not full), it hands the open transaction on and waits for the group's commit; a
//!   *flusher* task, queued on the slot behind them, commits the group if the last member
//!   does not. With nobody queued it commits at once: a lone writer waits for nothing.
//! - a transaction dropped without `commit` rolls back to its savepoint (lazily: the next user
//!   of the slot does it before anything else); the first member of a group has no savepoint
//!   and rolls back the whole database transaction, which then holds nothing of anyone else's.
//!
//! The audit head lives in the open group, not in a statement per event: the group's database
//! transaction took the head row (and with it every other writer's turn) when it opened, so
//! nobody else can move it until the group commits. Events read and move the in-memory head;
//! a member rolled back to its savepoint gets the head it started with back; the head row is
//! written once, just before the group's commit, in the same database transaction. Per event
//! that is one statement (the insert) instead of three.
//!
//! SECURITY: `commit` returns `Ok` only once the database committed the whole group; if that
//! commit fails (or the group is abandoned), every member gets the error. A member never sees
//! success for work that could still roll back. The physical commit runs in a task of its own
//! so that a caller going away (a client hanging up) cannot cut it in half.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use sqlx::Any;
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use super::{StoreError, StoreResult};

/// Members per group at most: bounds how long the first member of a burst waits.
pub(super) const MAX_GROUP: usize = 64;

/// What every member of a group learns once it ends: committed, or why not.
type Outcome = Option<Result<(), Arc<str>>>;

/// The per-process writer slot and the count of writers queued for it.
pub(super) struct GroupCommit {
    slot: Arc<Mutex<Slot>>,
    queued: AtomicUsize,
    stats: Arc<Stats>,
}

/// Committed groups and the members they held, since start.
#[derive(Default)]
pub(super) struct Stats {
    pub(super) groups: AtomicU64,
    pub(super) members: AtomicU64,
}

#[derive(Default)]
pub(super) struct Slot {
    open: Option<Group>,
    /// A member was dropped without commit after its savepoint: undo it before the connection
    /// is used again.
    rollback_pending: bool,
    /// Counts groups, so that a flusher can tell whether its group already ended.
    generation: u64,
}

/// The audit chain head: the last event's `seq` and `hash`.
pub(super) type Head = (i64, String);

struct Group {
    tx: sqlx::Transaction<'static, Any>,
    /// The head as the events of this group moved it.
    head: Head,
    /// The head as the `audit_head` row holds it (written at commit if `head` moved).
    stored_head: Head,
    /// The head when the current member took its savepoint: restored if it rolls back.
    savepoint_head: Option<Head>,
    members: usize,
    flusher: bool,
    done: watch::Sender<Outcome>,
}

/// Held while a writer waits for the slot, so the count stays right if it is cancelled.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The slot, as held by one writing transaction.
pub(super) struct Member {
    guard: Option<OwnedMutexGuard<Slot>>,
    savepoint: bool,
}

impl GroupCommit {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            slot: Arc::new(Mutex::new(Slot::default())),
            queued: AtomicUsize::new(0),
            stats: Arc::default(),
        })
    }

    /// Writers waiting for the slot now.
    pub(super) fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// (groups committed, members they held) since start.
    pub(super) fn stats(&self) -> (u64, u64) {
        (
            self.stats.groups.load(Ordering::SeqCst),
            self.stats.members.load(Ordering::SeqCst),
        )
    }

    /// Take the slot and start a member: join the open group behind a savepoint, or open a
    /// database transaction with `open` (which also takes the audit head row and returns it).
    pub(super) async fn begin<F, Fut>(&self, open: F) -> StoreResult<Member>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = StoreResult<(sqlx::Transaction<'static, Any>, Head)>>,
    {
        let mut guard = {
            let lock = self.slot.clone().lock_owned();
            tokio::pin!(lock);
            // The first poll takes the slot or puts this writer in the mutex's (FIFO) queue;
            // only then is it counted as queued. Counted earlier, a member committing in
            // between could see it, hand the group on, and have the flusher it spawns queue
            // ahead of it: the group would then commit without the writer it waited for.
            // (Tokio ≥ 1.54 queues the waiter on that first poll even when it then yields for
            // its co-op budget; Cargo.toml asks for it.)
            match futures::poll!(&mut lock) {
                std::task::Poll::Ready(guard) => guard,
                std::task::Poll::Pending => {
                    self.queued.fetch_add(1, Ordering::SeqCst);
                    let _queued = Queued(&self.queued);
                    lock.await
                }
            }
        };
        undo_dropped_member(&mut guard).await;
        if let Some(group) = guard.open.as_mut() {
            match sqlx::query("savepoint twokey_tx")
                .execute(&mut *group.tx)
                .await
            {
                Ok(_) => {
                    group.savepoint_head = Some(group.head.clone());
                    return Ok(Member {
                        guard: Some(guard),
                        savepoint: true,
                    });
                }
                // The group's connection is broken: its members learn that it failed, and this
                // writer starts afresh.
                Err(e) => {
                    tracing::warn!(error = %e, "group commit: the open group failed; starting a new one");
                    guard.open = None;
                }
            }
        }
        let (tx, head) = open().await?;
        guard.generation += 1;
        guard.open = Some(Group {
            tx,
            stored_head: head.clone(),
            head,
            savepoint_head: None,
            members: 0,
            flusher: false,
            done: watch::channel(None).0,
        });
        Ok(Member {
            guard: Some(guard),
            savepoint: false,
        })
    }

    /// Commit a member: hand the group on to the writers queued behind it, or commit it now.
    pub(super) async fn commit(self: &Arc<Self>, mut member: Member) -> StoreResult<()> {
        let mut guard = member
            .guard
            .take()
            .expect("a member holds the slot until commit");
        let generation = guard.generation;
        let group = guard.open.as_mut().expect("a member's group is open");
        if member.savepoint
            && let Err(e) = sqlx::query("release savepoint twokey_tx")
                .execute(&mut *group.tx)
                .await
        {
            guard.rollback_pending = true;
            return Err(e.into());
        }
        group.savepoint_head = None;
        group.members += 1;
        let mut outcome = group.done.subscribe();
        let hand_on = group.members < MAX_GROUP && self.queued.load(Ordering::SeqCst) > 0;
        if hand_on {
            if !group.flusher {
                group.flusher = true;
                let slot = self.slot.clone();
                let stats = self.stats.clone();
                tokio::spawn(async move {
                    let mut guard = slot.lock_owned().await;
                    if guard.generation == generation && guard.open.is_some() {
                        undo_dropped_member(&mut guard).await;
                        let _ = commit_group(&mut guard, &stats).await;
                    }
                });
            }
            drop(guard);
            return match outcome.wait_for(Option::is_some).await {
                Ok(o) => o.clone().expect("waited for Some"),
                Err(_) => Err(Arc::from("the transaction group was abandoned")),
            }
            .map_err(StoreError::GroupCommit);
        }
        // SECURITY: in a task of its own, so that the caller going away cannot cut it short.
        let stats = self.stats.clone();
        tokio::spawn(async move { commit_group(&mut guard, &stats).await })
            .await
            .map_err(|e| StoreError::GroupCommit(Arc::from(e.to_string())))?
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut guard) = self.guard.take() {
            if self.savepoint {
                guard.rollback_pending = true;
            } else {
                // The first member: nobody else is in the group yet, so the whole database
                // transaction rolls back (sqlx does so when it is dropped).
                guard.open = None;
            }
        }
    }
}

impl Member {
    fn group(&mut self) -> &mut Group {
        self.guard
            .as_mut()
            .expect("a member holds the slot until commit")
            .open
            .as_mut()
            .expect("a member's group is open")
    }

    pub(super) fn conn(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.group().tx
    }

    /// The audit head as this transaction sees it.
    pub(super) fn head(&mut self) -> Head {
        self.group().head.clone()
    }

    /// Move the audit head (after inserting the event it names, in this transaction).
    pub(super) fn set_head(&mut self, head: Head) {
        self.group().head = head;
    }
}

/// Roll back a member that was dropped without commit, if there is one. If that fails the
/// group is given up: its members are told so.
async fn undo_dropped_member(slot: &mut Slot) {
    if !std::mem::take(&mut slot.rollback_pending) {
        return;
    }
    let Some(group) = slot.open.as_mut() else {
        return;
    };
    let undone = async {
        sqlx::query("rollback to savepoint twokey_tx")
            .execute(&mut *group.tx)
            .await?;
        sqlx::query("release savepoint twokey_tx")
            .execute(&mut *group.tx)
            .await
    }
    .await;
    // The member's events are gone with its savepoint, and so is the head it moved.
    if let Some(head) = group.savepoint_head.take() {
        group.head = head;
    }
    if let Err(e) = undone {
        tracing::warn!(error = %e, "group commit: rolling back a member failed; the group is abandoned");
        slot.open = None;
    }
}

/// Commit the open group and tell its members how it went.
async fn commit_group(slot: &mut Slot, stats: &Stats) -> StoreResult<()> {
    let Some(group) = slot.open.take() else {
        return Err(StoreError::GroupCommit(Arc::from(
            "no transaction group was open",
        )));
    };
    let mut tx = group.tx;
    let result = async {
        if group.head != group.stored_head {
            sqlx::query("update audit_head set seq = $1, hash = $2 where id = 1")
                .bind(group.head.0)
                .bind(&group.head.1)
                .execute(&mut *tx)
                .await?;
        } else if tx.backend_name() == "PostgreSQL" {
            // SECURITY: PostgreSQL answers COMMIT of a transaction in which a statement failed
            // by rolling it back without an error. A writer whose failed statement was
            // swallowed would be told "committed" for work that is gone; any statement here
            // fails in such a transaction instead (the head update above does the same).
            sqlx::query("select 1").execute(&mut *tx).await?;
        }
        tx.commit().await
    }
    .await;
    crate::metrics::group_committed(group.members, result.is_ok());
    if result.is_ok() {
        stats.groups.fetch_add(1, Ordering::SeqCst);
        stats
            .members
            .fetch_add(group.members as u64, Ordering::SeqCst);
    }
    let shared = match &result {
        Ok(()) => Ok(()),
        Err(e) => Err(Arc::from(e.to_string())),
    };
    group.done.send_replace(Some(shared));
    result.map_err(Into::into)
}
