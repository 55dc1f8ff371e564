//! Prometheus metrics at `/metrics`.
//!
//! Two kinds, both rendered in one Prometheus text page:
//! - **process counters and histograms** (the `metrics` crate, one recorder per process):
//!   audit events by action (counted when their transaction commits, so they match the log),
//!   HTTP responses, job attempts, ARM calls and their latency, time from request to decision
//!   and from approval to an active grant. Each replica counts its own; sum them in Prometheus.
//! - **database gauges**, read at scrape time (the same on every replica, so take `max`):
//!   requests by state, jobs by kind and state.
//!
//! SECURITY: labels carry only fixed vocabularies (actions, states, job kinds, HTTP methods,
//! route templates, status codes): never an email, id, token or URL, so the page can be scraped
//! without leaking who did what.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::{Store, StoreResult};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Histogram buckets (seconds) for latencies measured in milliseconds to seconds.
const FAST: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets for human-paced waits: seconds to days.
const HUMAN: &[f64] = &[
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 43200.0, 86400.0, 259200.0,
];

/// The process's recorder, installed on first use. When another recorder is already installed
/// (an embedding program's), twokey's metrics go there and `/metrics` shows only the database
/// gauges.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), FAST)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_wait_seconds".into()), HUMAN))
            .expect("non-empty buckets");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_histogram};
    describe_counter!(
        "twokey_audit_events_total",
        "Audit events committed, by action."
    );
    describe_counter!(
        "twokey_http_responses_total",
        "HTTP responses, by method, route and status."
    );
    describe_histogram!(
        "twokey_http_request_duration_seconds",
        "Time to answer an HTTP request, by route."
    );
    describe_counter!(
        "twokey_job_attempts_total",
        "Job runs, by kind and outcome (done, retry, failed)."
    );
    describe_counter!(
        "twokey_arm_requests_total",
        "Azure Resource Manager calls, by method and status (or transport)."
    );
    describe_histogram!(
        "twokey_arm_request_duration_seconds",
        "Time of one Azure Resource Manager call, by method."
    );
    describe_histogram!(
        "twokey_request_decision_wait_seconds",
        "Time from a request to its final decision, by decision."
    );
    describe_histogram!(
        "twokey_grant_activation_wait_seconds",
        "Time from approval to the role being active."
    );
    describe_histogram!(
        "twokey_db_commit_group_size",
        "Writing transactions per database commit (group commit), by outcome."
    );
}

/// Start the histogram upkeep (once per process; cheap).
pub fn spawn_upkeep() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let h = handle().clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                h.run_upkeep();
            }
        });
    });
}

/// Audit events of a committed transaction.
pub fn audit_committed<'a>(actions: impl Iterator<Item = &'a str>) {
    for a in actions {
        metrics::counter!("twokey_audit_events_total", "action" => a.to_string()).increment(1);
    }
}

/// One database commit of a group of `members` writing transactions.
pub fn group_committed(members: usize, ok: bool) {
    metrics::histogram!("twokey_db_commit_group_size", "outcome" => if ok { "committed" } else { "failed" })
        .record(members as f64);
}

/// One answered HTTP request. `route` is the matched route template (never the path: review
/// links carry tokens), or `unmatched`.
pub fn http_response(method: &str, route: &str, status: u16, elapsed: Duration) {
    crate::memory::busy();
    metrics::counter!("twokey_http_responses_total", "method" => method.to_string(), "route" => route.to_string(), "status" => status.to_string()).increment(1);
    metrics::histogram!("twokey_http_request_duration_seconds", "route" => route.to_string())
        .record(elapsed.as_secs_f64());
}

/// One run of a job.
pub fn job_attempt(kind: &str, outcome: &'static str) {
    crate::memory::busy();
    metrics::counter!("twokey_job_attempts_total", "kind" => kind.to_string(), "outcome" => outcome)
        .increment(1);
}

/// One ARM call: `status` is the HTTP status, or `None` when no answer came.
pub fn arm_call(method: &str, status: Option<u16>, elapsed: Duration) {
    let status = status.map_or_else(|| "transport".to_string(), |s| s.to_string());
    metrics::counter!("twokey_arm_requests_total", "method" => method.to_string(), "status" => status).increment(1);
    metrics::histogram!("twokey_arm_request_duration_seconds", "method" => method.to_string())
        .record(elapsed.as_secs_f64());
}

/// A request got its final decision `waited` after it was made.
pub fn decided(decision: &'static str, waited: Duration) {
    metrics::histogram!("twokey_request_decision_wait_seconds", "decision" => decision)
        .record(waited.as_secs_f64());
}

/// A grant became active `waited` after its request was approved.
pub fn grant_active(waited: Duration) {
    metrics::histogram!("twokey_grant_activation_wait_seconds").record(waited.as_secs_f64());
}

/// The whole page: the process's metrics, then the database gauges.
pub async fn render(store: &Store) -> StoreResult<String> {
    let h = handle();
    h.run_upkeep();
    let mut out = h.render();
    let (requests, jobs) = store.metric_counts().await?;
    out.push_str("# HELP twokey_requests Requests in the database, by state.\n");
    out.push_str("# TYPE twokey_requests gauge\n");
    // Every state, zeros included, so that a dashboard's series never go missing.
    let mut states: Vec<(String, i64)> = crate::domain::request::RequestState::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    for (state, n) in requests {
        match states.iter_mut().find(|(s, _)| *s == state) {
            Some(slot) => slot.1 = n,
            None => states.push((state, n)),
        }
    }
    for (state, n) in states {
        out.push_str(&format!(
            "twokey_requests{{state=\"{}\"}} {n}\n",
            label(&state)
        ));
    }
    out.push_str("# HELP twokey_jobs Jobs in the database, by kind and state.\n");
    out.push_str("# TYPE twokey_jobs gauge\n");
    for (kind, state, n) in jobs {
        out.push_str(&format!(
            "twokey_jobs{{kind=\"{}\",state=\"{}\"}} {n}\n",
            label(&kind),
            label(&state)
        ));
    }
    Ok(out)
}

/// A label value as Prometheus text wants it (these come from our own fixed vocabularies,
/// escaped anyway).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(label("pending"), "pending");
    }
}
