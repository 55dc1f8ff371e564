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
