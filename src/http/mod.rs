//! HTTP: the axum router, middleware (security headers, request ids, body limits, tracing),
//! the JSON API, the server-rendered pages and the health endpoints. Handlers stay thin.

pub mod api;
mod audit_page;
pub mod error;
pub mod extract;
mod health;
pub mod hooks;
mod pages;
mod posture_page;
pub mod rate_limit;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::service::Service;

/// Largest JSON body the API reads. A request is a few hundred bytes; the justification is
/// capped at 2000 characters.
pub const API_BODY_LIMIT: usize = 64 * 1024;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub svc: Service,
    /// Set by the worker loop while it runs (for `/readyz`).
    pub worker_alive: Arc<AtomicBool>,
    /// The OpenID Connect issuer (`auth.mode = "oidc"` only).
    pub oidc: Option<Arc<crate::auth::oidc::Oidc>>,
    /// Per-address limits for sign-in, review links and the API.
    pub limits: Arc<rate_limit::RateLimits>,
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/session", get(api::get_session))
        .route("/operations", get(api::list_operations))
        .route("/guards", get(api::list_guards))
        .route(
            "/requests",
            get(api::list_requests).post(api::create_request),
        )
        .route("/requests/{id}", get(api::get_request))
        .route("/requests/{id}/cancel", post(api::cancel_request))
        .route("/requests/{id}/decision", post(api::decide_request))
        .route("/requests/{id}/end", post(api::end_request))
        .route("/openapi.json", get(openapi))
        .route("/audit", get(api::export_audit))
        .fallback(api::not_found);

    let x_request_id = HeaderName::from_static("x-request-id");
    let https = state.svc.config.server.public_url.scheme() == "https";
    let app = Router::new()
        .nest("/api/v1", api)
        .merge(pages::routes())
        .route("/hooks/azure-monitor/{hook}", post(hooks::azure_monitor))
        .route(
            "/hooks/azure-monitor/{hook}/{secret}",
            post(hooks::azure_monitor_with_secret),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    // `/metrics` here unless it has a listener of its own (`server.metrics_bind`).
    let app = if state.svc.config.server.metrics_bind.is_none() {
        app.route("/metrics", get(health::metrics))
    } else {
        app
    };
    let app = app
        .layer(middleware::from_fn(health::count_responses))
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
        .layer(middleware::from_fn(reject_cross_site_writes))
        .layer(middleware::from_fn(read_small_bodies_first))
        .layer(middleware::from_fn_with_state(
            state.limits.clone(),
            rate_limit::limit,
        ));
    with_security_headers(app, https)
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let rid = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            let route = req
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            // Never the full URI: review links carry a token in the path.
            tracing::info_span!("http", method = %req.method(), route = %route, request_id = %rid)
        }))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .with_state(state)
}

/// The router of the separate metrics listener (`server.metrics_bind`): `/metrics` and the
/// health checks, nothing else.
pub fn metrics_router(state: AppState) -> Router {
    let https = state.svc.config.server.public_url.scheme() == "https";
    let r = Router::new()
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    with_security_headers(r, https).with_state(state)
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../../web/openapi.json"),
    )
}

/// SECURITY: fixed headers on every response — no framing, no sniffing, no referrer (review
/// links carry tokens), no caching of pages that show requests, a CSP without inline script.
fn with_security_headers<S: Clone + Send + Sync + 'static>(r: Router<S>, https: bool) -> Router<S> {
    let hsts = if https {
        "max-age=31536000; includeSubDomains"
    } else {
        "max-age=0"
    };
    r.layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"),
        ))
        .layer(SetResponseHeaderLayer::overriding(HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin")))
        .layer(SetResponseHeaderLayer::overriding(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(hsts)))
}

/// Read a small request body completely before anything answers.
///
/// Middleware and extractors refuse requests (403 CSRF, 401 bearer, 415 …) without reading the
/// body. hyper then closes the connection, and a client whose body was still on its way gets a
/// broken pipe instead of the answer. A body within the API limit (declared by Content-Length) is
/// cheap to read first; larger or chunked bodies go on unread, to the limit's 413.
async fn read_small_bodies_first(req: Request, next: Next) -> Response {
    let small = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > 0 && n <= API_BODY_LIMIT);
    if !small {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, API_BODY_LIMIT).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(_) => error::ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "bad_request",
            "the body could not be read",
        )
        .into_response(),
    }
}

/// SECURITY: a browser that says a write comes from another site (Fetch Metadata) is refused
/// before any handler runs; CSRF tokens remain the primary defence, this is the second.
async fn reject_cross_site_writes(req: Request, next: Next) -> Response {
    let unsafe_method = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let cross_site = req
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site");
    if unsafe_method && cross_site {
        return error::ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "csrf_failed",
            "cross-site request refused",
        )
        .into_response();
    }
    next.run(req).await
}
