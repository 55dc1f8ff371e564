//! Extractors: the session behind the cookie, the signed-in caller, CSRF checks, and JSON
//! bodies whose rejections speak the API's error format.

use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum_extra::extract::CookieJar;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::auth::bearer::{self, BearerRejection};
use crate::auth::oidc;
use crate::auth::session::{self, COOKIE_NAME, Session};
use crate::secret::constant_time_eq;
use crate::service::Caller;

/// Where a request came from, for the audit log.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Origin {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        let user_agent = parts
            .headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(512).collect());
        Ok(Self { ip, user_agent })
    }
}

/// The session behind the cookie, if there is a live one.
#[derive(Debug, Clone)]
pub struct MaybeSession(pub Option<Session>);

impl FromRequestParts<AppState> for MaybeSession {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(s) = parts.extensions.get::<MaybeSession>() {
            return Ok(s.clone());
        }
        let jar = CookieJar::from_headers(&parts.headers);
        let Some(cookie) = jar.get(COOKIE_NAME) else {
            return Ok(Self(None));
        };
        let svc = &state.svc;
        let s = session::load(
            &svc.store,
            cookie.value(),
            svc.now(),
            svc.config.auth.session_idle,
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "loading session");
            ApiError::internal()
        })?;
        let s = Self(s);
        parts.extensions.insert(s.clone());
        Ok(s)
    }
}

/// A signed-in caller of the JSON API: a browser session, or an `Authorization: Bearer` token.
///
/// SECURITY: with a cookie session, every state-changing method must carry `X-CSRF-Token`
/// equal to the session's token (compared in constant time); GET and HEAD never change state.
/// A bearer token is not sent by browsers on their own, so bearer calls need no CSRF token;
/// when an `Authorization` header is present the cookie is ignored entirely.
#[derive(Debug, Clone)]
pub struct ApiCaller {
    pub caller: Caller,
    /// The browser session; `None` for a bearer-token call.
    pub session: Option<Session>,
    /// What to tell the caller about this sign-in (e.g. a groups overage).
    pub notice: Option<String>,
}

impl FromRequestParts<AppState> for ApiCaller {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Self::authenticate(parts, state).await?;
        state.limits.check_principal(&caller.caller.principal.id)?;
        Ok(caller)
    }
}

impl ApiCaller {
    async fn authenticate(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let origin = Origin::from_request_parts(parts, state)
            .await
            .unwrap_or_default();
        if let Some(h) = parts.headers.get(axum::http::header::AUTHORIZATION) {
            return bearer_caller(h, state, origin).await;
        }
        let MaybeSession(session) = MaybeSession::from_request_parts(parts, state).await?;
        let Some(session) = session else {
            return Err(ApiError::unauthenticated());
        };
        let Some(principal) = session.principal.clone() else {
            return Err(ApiError::unauthenticated());
        };
        if !parts.method.is_safe() {
            let sent = parts
                .headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !constant_time_eq(sent, &session.csrf_token) {
                return Err(ApiError::csrf());
            }
        }
        Ok(Self {
            caller: Caller {
                principal,
                ip: origin.ip,
                user_agent: origin.user_agent,
            },
            notice: session.notice.clone(),
            session: Some(session),
        })
    }
}

/// Verify an `Authorization: Bearer` header and map it to a principal.
async fn bearer_caller(
    h: &axum::http::HeaderValue,
    state: &AppState,
    origin: Origin,
) -> Result<ApiCaller, ApiError> {
    let Some(oidc) = state.oidc.as_ref() else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unsupported_auth",
            "bearer tokens need auth.mode = \"oidc\"; this server signs in with the dev sign-in only",
        ));
    };
    let token = h
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request",
                "the Authorization header must be `Bearer <token>`",
            )
            .with_challenge("invalid_request")
        })?;
    let svc = &state.svc;
    let identity = match bearer::verify(oidc, token, svc.now()).await {
        Ok(i) => i,
        Err(why) => {
            // SECURITY: logged, not written to the audit chain: unauthenticated callers could
            // otherwise grow the audit log (and serialize its writers) at will. Never the token.
            tracing::info!(reason = why.code(), ip = ?origin.ip, "bearer token refused");
            if why == BearerRejection::Unavailable {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "issuer_unavailable",
                    why.to_string(),
                ));
            }
            return Err(
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", why.to_string())
                    .with_challenge("invalid_token")
                    .with_reason(why.code()),
            );
        }
    };
    let principal = oidc::principal_for(&svc.store, &identity, svc.now())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "recording a bearer principal");
            ApiError::internal()
        })?;
    Ok(ApiCaller {
        caller: Caller {
            principal,
            ip: origin.ip,
            user_agent: origin.user_agent,
        },
        session: None,
        notice: identity.notice(),
    })
}

/// `axum::Json` with the API's error format for bad bodies.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

fn json_rejection(rej: JsonRejection) -> ApiError {
    match rej {
        JsonRejection::JsonDataError(e) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            format!(
                "the body does not have the expected fields: {}",
                e.body_text()
            ),
        ),
        JsonRejection::JsonSyntaxError(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the body is not valid JSON",
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {} bytes", super::API_BODY_LIMIT),
        ),
        other => ApiError::new(other.status(), "bad_request", other.body_text()),
    }
}
