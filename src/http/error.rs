//! One error type for the JSON API: `{"error": {"code", "message"}}` with a fitting status.
//! 5xx bodies are generic; the detail goes to the log once, never to the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::request::DomainError;
use crate::service::ServiceError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<&'static str>,
    /// For 401s to bearer calls: the RFC 6750 `error` of the `WWW-Authenticate` challenge.
    pub challenge: Option<&'static str>,
    /// A machine-readable reason beside `code` (e.g. why a token was refused).
    pub reason: Option<&'static str>,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            challenge: None,
            reason: None,
            retry_after: None,
        }
    }
    pub fn with_challenge(mut self, error: &'static str) -> Self {
        self.challenge = Some(error);
        self
    }
    /// 429: too many requests; try again in `seconds`.
    pub fn rate_limited(message: impl Into<String>, seconds: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        e.retry_after = Some(seconds.max(1));
        e
    }
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }
    pub fn unauthenticated() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", "sign in first")
    }
    pub fn csrf() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "missing or wrong X-CSRF-Token header (take it from GET /api/v1/session)",
        )
    }
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such request")
    }
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_input",
            message: format!("{field}: {}", message.into()),
            field: Some(field),
            challenge: None,
            reason: None,
            retry_after: None,
        }
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on our side; nothing was changed",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": { "code": self.code, "message": self.message } });
        if let Some(f) = self.field {
            body["error"]["field"] = json!(f);
        }
        if let Some(r) = self.reason {
            body["error"]["reason"] = json!(r);
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(e) = self.challenge
            && let Ok(v) = axum::http::HeaderValue::from_str(&format!(
                "Bearer realm=\"twokey\", error=\"{e}\""
            ))
        {
            resp.headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, v);
        }
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(s),
            );
        }
        resp
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Domain(d) => {
                let status = match &d {
                    DomainError::Invalid { field, message } => {
                        return ApiError::invalid(field, message.clone());
                    }
                    DomainError::NotARequester(_)
                    | DomainError::NotAnApprover(_)
                    | DomainError::SelfApproval
                    | DomainError::NotTheRequester
                    | DomainError::Forbidden(_) => StatusCode::FORBIDDEN,
                    DomainError::AlreadyDecided
                    | DomainError::StateConflict(_)
                    | DomainError::DeadlinePassed
                    | DomainError::PolicyChanged => StatusCode::CONFLICT,
                };
                ApiError::new(status, d.code(), d.to_string())
            }
            ServiceError::NotFound => ApiError::not_found(),
            ServiceError::Store(e) => {
                tracing::error!(error = %e, "storage error");
                ApiError::internal()
            }
            ServiceError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                ApiError::internal()
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
