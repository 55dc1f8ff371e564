//! `POST /hooks/azure-monitor/{hook}`: Azure Monitor alerts (common alert schema) from an
//! action group's webhook action. Authenticated by the hook's secret, given in the
//! `X-Twokey-Hook-Secret` header or as the last path segment
//! (`/hooks/azure-monitor/{hook}/{secret}`: an action group cannot send headers).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::extract::Origin;
use crate::audit::Actor;
use crate::secret::constant_time_eq;
use crate::service::Intake;

/// Largest alert body taken in. Common-schema alerts are a few KiB; log search alerts that
/// carry their results are larger, and Azure itself cuts webhook payloads at 256 KiB.
pub const ALERT_BODY_LIMIT: usize = 512 * 1024;

pub const SECRET_HEADER: &str = "x-twokey-hook-secret";

pub async fn azure_monitor(
    State(state): State<AppState>,
    Path(hook): Path<String>,
    origin: Origin,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let secret = headers
        .get(SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    intake(state, hook, secret, origin, headers, body).await
}

pub async fn azure_monitor_with_secret(
    State(state): State<AppState>,
    Path((hook, secret)): Path<(String, String)>,
    origin: Origin,
    headers: HeaderMap,
    body: Body,
) -> Response {
    intake(state, hook, Some(secret), origin, headers, body).await
}

async fn intake(
    state: AppState,
    hook: String,
    given: Option<String>,
    origin: Origin,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let svc = &state.svc;
    let actor = Actor {
        ip: origin.ip.clone(),
        user_agent: origin.user_agent.clone(),
        ..Actor::system()
    };
    // SECURITY: constant-time comparison, and the same work whether or not the hook exists
    // (a dummy secret stands in), so timing tells neither the secret nor which names exist.
    let configured = svc.config.alerts.hooks.iter().find(|h| h.name == hook);
    let dummy = "x".repeat(64);
    let expected = configured.map(|h| h.secret.expose()).unwrap_or(&dummy);
    let ok = match &given {
        Some(g) => constant_time_eq(g, expected) && configured.is_some(),
        None => false,
    };
    if !ok {
        let reason = match (&given, configured) {
            (None, _) => "no_secret",
            (Some(_), None) => "unknown_hook",
            (Some(_), Some(_)) => "wrong_secret",
        };
        if let Err(e) = svc.hook_auth_failed(&actor, &hook, reason).await {
            tracing::error!(error = %e, "auditing a refused alert hook call failed");
        }
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "unknown hook or wrong secret",
        )
        .into_response();
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "alert bodies over {} KiB are refused",
                ALERT_BODY_LIMIT / 1024
            ),
        )
        .into_response()
    };
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > ALERT_BODY_LIMIT)
    {
        return too_large();
    }
    let Ok(bytes) = axum::body::to_bytes(body, ALERT_BODY_LIMIT).await else {
        return too_large();
    };
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not JSON: {e}"),
            )
            .into_response();
        }
    };
    match svc.receive_azure_alert(&hook, &actor, &value).await {
        Ok(Intake::Accepted { guards, kind }) => (
            StatusCode::OK,
            Json(json!({ "status": "accepted", "kind": kind, "guards": guards })),
        )
            .into_response(),
        Ok(Intake::Duplicate) => {
            (StatusCode::OK, Json(json!({ "status": "duplicate" }))).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}
