//! `/healthz`: the process answers. `/readyz`: the database answers, migrations are current,
//! and the job worker is running (when this process runs one).

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;

use super::AppState;

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let db = state.svc.store.ping().await.is_ok();
    let migrations = state.svc.store.migrations_current().await.unwrap_or(false);
    let worker = !state.svc.config.jobs.enabled || state.worker_alive.load(Ordering::Relaxed);
    let ok = db && migrations && worker;
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(json!({ "ready": ok, "database": db, "migrations": migrations, "worker": worker })),
    )
}

/// `/metrics`: Prometheus text format (see `crate::metrics`).
pub async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match crate::metrics::render(&state.svc.store).await {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: the database did not answer");
            super::error::ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the database did not answer",
            )
            .into_response()
        }
    }
}

/// Count every answered request by method, route template and status.
pub async fn count_responses(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    // SECURITY: the route template, never the path (review links carry a token in it).
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let resp = next.run(req).await;
    crate::metrics::http_response(
        method.as_str(),
        &route,
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}
