//! The worker: claims due jobs with a lease, runs them, retries failures with exponential
//! backoff, and gives up (recording why) after a kind's last attempt. It also runs the
//! periodic sweep that expires pending requests past their deadline and reconciles grants
//! with Azure.
//!
//! Several workers (in one process or in several replicas) may run at once: a claim is a
//! conditional update, and a job's effects commit only while its lease holds.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration as StdDuration;

use time::Duration;
use tokio::sync::{Mutex, watch};
use tracing::Instrument as _;

use crate::service::jobs_api::JobFailure;
use crate::service::{Service, ServiceResult, backoff};
use crate::timefmt;

/// One worker identity (shows up as `lease_owner` in the jobs table).
#[derive(Clone)]
pub struct Worker {
    svc: Service,
    owner: String,
    /// Set while [`Worker::run`] runs: once it turns true, no new job is claimed.
    stop: Option<watch::Receiver<bool>>,
}

impl Worker {
    pub fn new(svc: Service, owner: impl Into<String>) -> Self {
        Self {
            svc,
            owner: owner.into(),
            stop: None,
        }
    }

    /// Run one claimed job, in a span of its own.
    async fn run_claimed(&self, job: crate::store::JobRow) -> ServiceResult<()> {
        // The span is attached to the future, not entered on the thread: an entered guard held
        // across `.await` would leak into whatever else runs on the thread (the other lanes),
        // and every log line would carry the spans of unrelated jobs.
        let span = tracing::info_span!("job", job_id = %job.job_id, kind = %job.kind, attempt = job.attempts);
        self.finish(job).instrument(span).await
    }

    /// The next job for a lane: one already claimed for it, or a fresh claim of as many due
    /// jobs as there are idle lanes (one writing transaction for all of them). `None` when
    /// nothing is due.
    async fn next_job(
        &self,
        claimed: &Mutex<VecDeque<crate::store::JobRow>>,
        idle: &AtomicUsize,
    ) -> ServiceResult<Option<crate::store::JobRow>> {
        // Held across the claim: the other idle lanes wait for its jobs instead of claiming
        // the same rows for themselves.
        let mut claimed = claimed.lock().await;
        if claimed.is_empty() {
            let now = self.svc.now();
            let lease = Duration::seconds(self.svc.config.jobs.lease.as_secs() as i64);
            // Only as many as will start at once: a job claimed but waiting would burn its lease.
            let want = idle.load(Ordering::SeqCst).max(1);
            claimed.extend(
                self.svc
                    .store
                    .claim_jobs(
                        &self.owner,
                        &timefmt::fmt(now),
                        &timefmt::fmt(now + lease),
                        want,
                    )
                    .await?,
            );
        }
        let job = claimed.pop_front();
        if job.is_some() {
            idle.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(job)
    }

    /// Run a claimed job and record its outcome.
    async fn finish(&self, job: crate::store::JobRow) -> ServiceResult<()> {
        match self.svc.run_job(&job, &self.owner).await {
            Ok(true) => {
                crate::metrics::job_attempt(&job.kind, "done");
                tracing::debug!("job done")
            }
            Ok(false) => {
                crate::metrics::job_attempt(&job.kind, "lease_lost");
                tracing::warn!("job lease lost; another worker owns it")
            }
            Err(failure @ (JobFailure::Retry(_) | JobFailure::RetryAt(..)))
                if job.attempts < job.max_attempts =>
            {
                let now = self.svc.now();
                let (run_at, outcome, e) = match failure {
                    JobFailure::RetryAt(at, e) => {
                        (at.max(now + Duration::seconds(1)), "deferred", e)
                    }
                    JobFailure::Retry(e) => (now + backoff(job.attempts), "retry", e),
                    JobFailure::Permanent(_) => unreachable!("only retries reach this arm"),
                };
                crate::metrics::job_attempt(&job.kind, outcome);
                tracing::warn!(error = %e, retry_at = %timefmt::fmt(run_at), outcome, "job will run again");
                self.svc
                    .store
                    .retry_job(
                        &job,
                        &self.owner,
                        &timefmt::fmt(run_at),
                        &e,
                        false,
                        &timefmt::fmt(now),
                    )
                    .await?;
            }
            Err(JobFailure::Retry(e))
            | Err(JobFailure::RetryAt(_, e))
            | Err(JobFailure::Permanent(e)) => {
                crate::metrics::job_attempt(&job.kind, "failed");
                tracing::error!(error = %e, "job failed for good");
                self.svc.fail_job_for_good(&job, &self.owner, &e).await?;
            }
        }
        Ok(())
    }

    /// Run due jobs until none is left, `jobs.concurrency` at a time (claims are atomic, so
    /// the lanes never run the same job; mail and Azure round trips overlap). Idle lanes are
    /// filled by one claim. Returns how many ran.
    pub async fn drain(&self) -> ServiceResult<usize> {
        let lanes = self.svc.config.jobs.concurrency.max(1);
        let claimed = Mutex::new(VecDeque::new());
        let idle = AtomicUsize::new(lanes);
        let runs = (0..lanes).map(|_| async {
            let lane = async {
                let mut n = 0;
                // Bounded so that a job that keeps re-queuing itself cannot spin forever.
                while n < 100_000 && !self.stopping() {
                    let Some(job) = self.next_job(&claimed, &idle).await? else {
                        break;
                    };
                    let ran = self.run_claimed(job).await;
                    idle.fetch_add(1, Ordering::SeqCst);
                    ran?;
                    n += 1;
                }
                ServiceResult::Ok(n)
            };
            let n = lane.await;
            // This lane takes no more jobs: the others must not claim for it.
            idle.fetch_sub(1, Ordering::SeqCst);
            n
        });
        let results = futures::future::join_all(runs).await;
        // A lane that failed or a stop can leave claimed jobs unstarted; nothing of this
        // worker's runs now, so give their leases back rather than make them wait them out.
        if !claimed.into_inner().is_empty() {
            self.svc.store.release_leases(&self.owner).await?;
        }
        let mut total = 0;
        for r in results {
            total += r?;
        }
        Ok(total)
    }

    /// Whether a stop was asked for (the current jobs finish; no new one starts).
    fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| *s.borrow())
    }

    /// This worker's identity, as written in `lease_owner`.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Periodic work: expire pending requests past their deadline, drop dead sessions, and
    /// (every `azure.reconcile_interval`, and at start) compare grants with Azure.
    pub async fn sweep(&self) -> ServiceResult<()> {
        self.svc.expire_due().await?;
        if let Err(e) = self.svc.schedule_daily_posture().await {
            tracing::error!(error = %e, "could not queue the daily posture report");
        }
        self.svc
            .store
            .delete_expired_sessions(&timefmt::fmt(self.svc.now()))
            .await?;
        if let Err(e) = self.svc.schedule_daily().await {
            tracing::error!(error = %e, "scheduling the daily tasks failed");
        }
        match self.svc.reconcile(false).await {
            Ok(r) if r.removed + r.nudged + r.alerted > 0 => {
                tracing::warn!(
                    checked = r.checked,
                    removed = r.removed,
                    nudged = r.nudged,
                    alerted = r.alerted,
                    "reconciler acted"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "reconcile failed"),
        }
        Ok(())
    }

    /// Work until `shutdown` turns true: drain, sweep when due, then wait for a wake-up, the
    /// next due job, or the poll interval, whichever comes first.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.stop = Some(shutdown.clone());
        let poll = self.svc.config.jobs.poll_interval;
        let sweep_every = self.svc.config.jobs.sweep_interval;
        let mut last_sweep: Option<tokio::time::Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if last_sweep.is_none_or(|t| t.elapsed() >= sweep_every) {
                // One replica sweeps at a time: the one holding the lease, which it renews here.
                let now = self.svc.now();
                let until = now + Duration::seconds((sweep_every.as_secs() as i64 * 3).max(3));
                match self
                    .svc
                    .store
                    .claim_periodic(
                        "sweep",
                        &self.owner,
                        &timefmt::fmt(now),
                        &timefmt::fmt(until),
                    )
                    .await
                {
                    Ok(true) => {
                        if let Err(e) = self.sweep().await {
                            tracing::error!(error = %e, "sweep failed");
                        }
                    }
                    Ok(false) => tracing::trace!("another replica holds the sweep"),
                    Err(e) => tracing::error!(error = %e, "sweep lease failed"),
                }
                last_sweep = Some(tokio::time::Instant::now());
            }
            if let Err(e) = self.drain().await {
                tracing::error!(error = %e, "worker error");
            }
            let wait = match self.svc.store.next_job_due().await {
                Ok(Some(due)) => timefmt::parse(&due)
                    .ok()
                    .map(|d| d - self.svc.now())
                    .map(|d| {
                        StdDuration::from_millis(
                            d.whole_milliseconds().clamp(0, poll.as_millis() as i128) as u64,
                        )
                    })
                    .unwrap_or(poll),
                _ => poll,
            };
            tokio::select! {
                _ = self.svc.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
        tracing::info!(owner = %self.owner, "worker stopped");
    }
}
