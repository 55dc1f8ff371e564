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
use std::sync::Mutex;

use tokio::sync::oneshot;

/// One call in a batch: what was asked, and where its answer goes.
pub struct Call<T, R> {
    pub item: T,
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
    /// Held by the caller whose batch runs: the others queue behind it.
    running: tokio::sync::Mutex<()>,
    max: usize,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    pub fn new(max: usize) -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            running: tokio::sync::Mutex::new(()),
            max: max.max(1),
        }
    }

    /// Queue `item` and wait for its answer. If no batch runs, this caller takes the oldest
    /// `max` calls of the queue and runs them with `run`, which must answer every call it is
    /// given; until its own call is answered it goes on doing so. `None` if the batch ended
    /// without answering this call (it panicked).
    pub async fn call<F, Fut>(&self, item: T, run: F) -> Option<R>
    where
        F: Fn(Vec<Call<T, R>>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, mut rx) = oneshot::channel();
        self.queue
            .lock()
            .expect("batch queue")
            .push(Call { item, answer: tx });
        loop {
            tokio::select! {
                biased;
                r = &mut rx => return r.ok(),
                _running = self.running.lock() => {
                    // A batch that held this call has answered it before it let go.
                    if let Ok(r) = rx.try_recv() {
                        return Some(r);
                    }
                    let calls: Vec<Call<T, R>> = {
                        let mut q = self.queue.lock().expect("batch queue");
                        let n = q.len().min(self.max);
                        q.drain(..n).collect()
                    };
                    if !calls.is_empty() {
                        // Its own task: see the module's doc.
                        let _ = tokio::spawn(run(calls)).await;
                    }
                    // Answered in that batch; or it was queued behind `max` older calls, and
                    // the next batch (this caller's or another's) holds it.
                    if let Ok(r) = rx.try_recv() {
                        return Some(r);
                    }
                }
            }
        }
    }
}
