//! Coalescing concurrent calls into batches: the calls that arrive while one batch runs are
//! run together as the next batch.
//!
//! A burst of 100 approvals used to run as 100 sessions looked up one statement each and 100
//! decisions one after another in the writer slot, each a chain of round trips to the database;
//! the last of the burst waited for all of them. With a [`Batcher`], the first call runs alone
//! (a lone call waits for nothing: no timer, no window), the calls that arrive meanwhile queue,
//! and the next one to find the batcher free takes the whole queue and runs it as one batch:
//! one statement for all their sessions, one transaction with set-wise statements for all their
//! decisions.
//!
//! A batch runs in a task of its own: a caller that goes away (a client hanging up) cannot cut a
//! batch in half, nor leave the other callers of its batch without an answer.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// One call in a batch: what was asked, and where its answer goes.
pub struct Call<T, R> {
    pub item: T,
    /// Its place in the queue, for the caller that leaves before a batch takes it.
    id: u64,
    answer: oneshot::Sender<R>,
}

impl<T, R> Call<T, R> {
    /// Answer this call (a caller that went away is not an error).
    pub fn answer(self, r: R) {
        let _ = self.answer.send(r);
    }
}

/// Concurrent calls of one kind, coalesced into batches of at most `max` calls.
pub struct Batcher<T, R> {
    queue: Mutex<Vec<Call<T, R>>>,
    /// Held while a batch runs, by the batch's own task: the others queue behind it.
    running: Arc<tokio::sync::Mutex<()>>,
    max: usize,
    next_id: AtomicU64,
    /// Batches run and the calls they held, since start.
    batches: AtomicU64,
    calls: AtomicU64,
}

/// Takes a caller's call out of the queue if the caller goes away before a batch took it.
struct Queued<'a, T, R> {
    batcher: &'a Batcher<T, R>,
    id: u64,
}

impl<T, R> Drop for Queued<'_, T, R> {
    fn drop(&mut self) {
        // SECURITY: a call whose caller has gone (a client that hung up, a timeout) must not
        // stay queued: the next batch, perhaps hours later, would decide it with the caller's
        // identity as it was when it asked, for a client that was told nothing. Once a batch
        // has taken it, it runs to the end with its batch (see the module's doc).
        if let Ok(mut q) = self.batcher.queue.lock() {
            q.retain(|c| c.id != self.id);
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    pub fn new(max: usize) -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            running: Arc::new(tokio::sync::Mutex::new(())),
            max: max.max(1),
            next_id: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        }
    }

    /// Calls queued for the next batch now.
    pub fn waiting(&self) -> usize {
        self.queue.lock().expect("batch queue").len()
    }

    /// (batches run, calls they held) since start.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.batches.load(Ordering::SeqCst),
            self.calls.load(Ordering::SeqCst),
        )
    }

    /// Queue `item` and wait for its answer. If no batch runs, this caller takes the oldest
    /// `max` calls of the queue and runs them with `run`, which must answer every call it is
    /// given; until its own call is answered it goes on doing so. `None` if the batch ended
    /// without answering this call (it panicked). A caller that goes away while its call is
    /// still queued takes it out of the queue.
    pub async fn call<F, Fut>(&self, item: T, run: F) -> Option<R>
    where
        F: Fn(Vec<Call<T, R>>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, mut rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.queue.lock().expect("batch queue").push(Call {
            item,
            id,
            answer: tx,
        });
        let _queued = Queued { batcher: self, id };
        loop {
            tokio::select! {
                biased;
                r = &mut rx => return r.ok(),
                running = self.running.clone().lock_owned() => {
                    // A batch that held this call has answered it (or, panicking, dropped it)
                    // before it let go.
                    match rx.try_recv() {
                        Ok(r) => return Some(r),
                        Err(oneshot::error::TryRecvError::Closed) => return None,
                        Err(oneshot::error::TryRecvError::Empty) => {}
                    }
                    let calls: Vec<Call<T, R>> = {
                        let mut q = self.queue.lock().expect("batch queue");
                        let n = q.len().min(self.max);
                        q.drain(..n).collect()
                    };
                    if !calls.is_empty() {
                        self.batches.fetch_add(1, Ordering::SeqCst);
                        self.calls.fetch_add(calls.len() as u64, Ordering::SeqCst);
                        // Its own task, which holds `running` until the batch ends: a caller
                        // that goes away meanwhile lets no second batch start beside it.
                        let batch = run(calls);
                        let _ = tokio::spawn(async move {
                            let _running = running;
                            batch.await
                        })
                        .await;
                    }
                    // Answered in that batch; or it was queued behind `max` older calls, and
                    // the next batch (this caller's or another's) holds it. (A receiver that
                    // said `Closed` must not be polled again.)
                    match rx.try_recv() {
                        Ok(r) => return Some(r),
                        Err(oneshot::error::TryRecvError::Closed) => return None,
                        Err(oneshot::error::TryRecvError::Empty) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use super::*;

    type BoxFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

    /// A run function that records each batch's size, holds the first batch until `gate` opens,
    /// panics on item 13, and answers `item * 10`.
    fn runner(
        gate: Arc<tokio::sync::Semaphore>,
        sizes: Arc<Mutex<Vec<usize>>>,
        done: Arc<AtomicUsize>,
        first: Arc<AtomicBool>,
    ) -> impl Fn(Vec<Call<u32, u32>>) -> BoxFuture {
        move |calls| {
            let (gate, sizes, done, first) =
                (gate.clone(), sizes.clone(), done.clone(), first.clone());
            Box::pin(async move {
                sizes.lock().unwrap().push(calls.len());
                if first.swap(false, Ordering::SeqCst) {
                    gate.acquire().await.unwrap().forget();
                }
                assert!(calls.iter().all(|c| c.item != 13), "item 13");
                for c in calls {
                    let v = c.item * 10;
                    c.answer(v);
                }
                done.fetch_add(1, Ordering::SeqCst);
            })
        }
    }

    /// A call's answer, or a failed test if it never comes.
    async fn answer(t: tokio::task::JoinHandle<Option<u32>>) -> Option<u32> {
        tokio::time::timeout(std::time::Duration::from_secs(10), t)
            .await
            .expect("a call was never answered")
            .unwrap()
    }

    async fn until(mut cond: impl FnMut() -> bool) {
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while !cond() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("condition never held");
    }

    struct Setup {
        batcher: Arc<Batcher<u32, u32>>,
        gate: Arc<tokio::sync::Semaphore>,
        sizes: Arc<Mutex<Vec<usize>>>,
        done: Arc<AtomicUsize>,
        /// Whether the next batch is the first (held at the gate).
        first: Arc<AtomicBool>,
    }

    impl Setup {
        fn new(max: usize) -> Self {
            Self {
                batcher: Arc::new(Batcher::new(max)),
                gate: Arc::new(tokio::sync::Semaphore::new(0)),
                sizes: Arc::default(),
                done: Arc::default(),
                first: Arc::new(AtomicBool::new(true)),
            }
        }

        fn spawn(&self, item: u32) -> tokio::task::JoinHandle<Option<u32>> {
            let b = self.batcher.clone();
            let run = runner(
                self.gate.clone(),
                self.sizes.clone(),
                self.done.clone(),
                self.first.clone(),
            );
            tokio::spawn(async move { b.call(item, run).await })
        }

        /// Call `first`, wait until its batch runs (held at the gate), then queue `rest`.
        async fn queue(
            &self,
            first: u32,
            rest: &[u32],
        ) -> Vec<tokio::task::JoinHandle<Option<u32>>> {
            let mut tasks = vec![self.spawn(first)];
            let sizes = self.sizes.clone();
            until(|| sizes.lock().unwrap().len() == 1).await;
            for (i, item) in rest.iter().enumerate() {
                tasks.push(self.spawn(*item));
                let b = self.batcher.clone();
                until(|| b.waiting() == i + 1).await;
            }
            tasks
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_queued_while_a_batch_runs_form_the_next_batches_of_at_most_max() {
        let s = Setup::new(3);
        let tasks = s.queue(0, &[1, 2, 3, 4, 5, 6, 7]).await;
        s.gate.add_permits(1);
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(answer(t).await, Some(i as u32 * 10));
        }
        assert_eq!(*s.sizes.lock().unwrap(), [1, 3, 3, 1]);
        assert_eq!(s.batcher.stats(), (4, 8));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_panics_leaves_its_calls_unanswered_and_the_next_batch_runs() {
        let s = Setup::new(2);
        let tasks = s.queue(0, &[12, 13, 14]).await;
        s.gate.add_permits(1);
        let mut got = Vec::new();
        for t in tasks {
            got.push(answer(t).await);
        }
        // 12 and 13 were one batch, which panicked; 14 came after it.
        assert_eq!(got, [Some(0), None, None, Some(140)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_goes_away_cuts_no_batch_short_and_strands_nobody() {
        let s = Setup::new(8);
        let mut tasks = s.queue(0, &[1, 2]).await;
        // The caller whose batch runs goes away (a client hung up).
        let leader = tasks.remove(0);
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        // Its batch still runs, and no second batch starts beside it.
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*s.sizes.lock().unwrap(), [1]);
        assert_eq!(s.batcher.waiting(), 2);
        s.gate.add_permits(1);
        for (t, want) in tasks.into_iter().zip([10, 20]) {
            assert_eq!(answer(t).await, Some(want));
        }
        // Its batch ran to the end all the same, and the others made one more.
        assert_eq!(s.done.load(Ordering::SeqCst), 2);
        assert_eq!(*s.sizes.lock().unwrap(), [1, 2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queued_caller_that_goes_away_leaves_the_queue() {
        let s = Setup::new(8);
        let mut tasks = s.queue(0, &[1, 2, 3]).await;
        // Item 2's caller goes away while its call waits for the next batch.
        let gone = tasks.remove(2);
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        assert_eq!(s.batcher.waiting(), 2);
        s.gate.add_permits(1);
        for (t, want) in tasks.into_iter().zip([0, 10, 30]) {
            assert_eq!(answer(t).await, Some(want));
        }
        // The next batch held only the two callers still there.
        assert_eq!(*s.sizes.lock().unwrap(), [1, 2]);
        assert_eq!(s.batcher.stats(), (2, 3));
    }
}
