//! Rate limits per client address, in three classes: sign-in (`/auth/…`), review links
//! (`/review…`) and the JSON API (`/api/…`, with the alert intake `/hooks/…`). Over the limit:
//! 429 with `Retry-After`, before any handler, session lookup or audit write runs. The API is
//! also limited per signed-in principal (checked once the caller is known).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;

/// The three limiters. Keys are client IP addresses (as the TCP peer: put twokey behind a
/// proxy that is itself rate limited, or run it with one address per client).
pub struct RateLimits {
    sign_in: DefaultKeyedRateLimiter<IpAddr>,
    review: DefaultKeyedRateLimiter<IpAddr>,
    api: DefaultKeyedRateLimiter<IpAddr>,
    /// The API per signed-in principal (session or bearer), whatever address it comes from.
    principal: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    seen: std::sync::atomic::AtomicU64,
}

fn quota(per_minute: u32) -> Quota {
    let n = NonZeroU32::new(per_minute.max(1)).expect("at least 1");
    // The whole minute's allowance may come as a burst, then it refills evenly.
    Quota::per_minute(n).allow_burst(n)
}

impl RateLimits {
    pub fn new(sign_in_per_minute: u32, api_per_minute: u32) -> Self {
        Self {
            sign_in: RateLimiter::keyed(quota(sign_in_per_minute)),
            review: RateLimiter::keyed(quota(sign_in_per_minute)),
            api: RateLimiter::keyed(quota(api_per_minute)),
            principal: RateLimiter::keyed(quota(api_per_minute)),
            clock: DefaultClock::default(),
            seen: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Forget idle clients (called from time to time so the maps stay small).
    pub fn shrink(&self) {
        self.sign_in.retain_recent();
        self.review.retain_recent();
        self.api.retain_recent();
        self.principal.retain_recent();
    }

    /// SECURITY: one account spread over many addresses (or behind a shared proxy address
    /// with others) is still held to `server.api_rate_limit` per minute.
    pub fn check_principal(&self, principal_id: &str) -> Result<(), ApiError> {
        self.principal
            .check_key(&principal_id.to_string())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now()).as_secs().max(1);
                ApiError::rate_limited(
                    format!("too many requests from your account; try again in {wait} s"),
                    wait,
                )
            })
    }
}

/// SECURITY: refused review links and failed sign-ins are audited, so without a limit an
/// anonymous client could grow the audit log (and hold its writers) at will; a limit also
/// slows guessing at anything.
pub async fn limit(State(limits): State<Arc<RateLimits>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let limiter = if path.starts_with("/auth/") {
        &limits.sign_in
    } else if path.starts_with("/review") {
        &limits.review
    } else if path.starts_with("/api/") || path.starts_with("/hooks/") {
        &limits.api
    } else {
        return next.run(req).await;
    };
    // Every 10,000 limited requests, drop the state of clients that went quiet.
    if limits
        .seen
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        % 10_000
        == 9_999
    {
        limits.shrink();
    }
    let Some(ip) = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        return next.run(req).await;
    };
    match limiter.check_key(&ip) {
        Ok(()) => next.run(req).await,
        Err(not_until) => {
            let wait = not_until
                .wait_time_from(limits.clock.now())
                .as_secs()
                .max(1);
            ApiError::rate_limited(
                format!("too many requests from your address; try again in {wait} s"),
                wait,
            )
            .into_response()
        }
    }
}
