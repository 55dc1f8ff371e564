//! Server-side sessions. The cookie holds 32 random bytes; the database holds only their
//! SHA-256, so a copy of the database signs nobody in. Each session has a CSRF token, an idle
//! timeout and an absolute lifetime. Signing in always starts a new session (the id rotates),
//! so a session id planted before sign-in is worthless after it.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::domain::principal::Principal;
use crate::store::{SessionRow, Store, StoreResult};
use crate::timefmt;

pub const COOKIE_NAME: &str = "twokey_session";

/// 32 random bytes, URL-safe base64.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A loaded session: maybe signed in, always with a CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    pub hash: String,
    pub csrf_token: String,
    pub principal: Option<Principal>,
    /// Something the person should know about this sign-in (e.g. why it carries no groups).
    pub notice: Option<String>,
}

/// Start a new session (anonymous, or for `principal`); returns the cookie value.
pub async fn start(
    store: &Store,
    principal: Option<&Principal>,
    now: OffsetDateTime,
    absolute: std::time::Duration,
) -> StoreResult<(String, Session)> {
    start_with_notice(store, principal, None, now, absolute).await
}

/// [`start`], with a notice kept on the session (shown by `GET /api/v1/session`).
pub async fn start_with_notice(
    store: &Store,
    principal: Option<&Principal>,
    notice: Option<&str>,
    now: OffsetDateTime,
    absolute: std::time::Duration,
) -> StoreResult<(String, Session)> {
    let token = random_token();
    let hash = hash_token(&token);
    let csrf = random_token();
    let row = SessionRow {
        session_hash: hash.clone(),
        principal_id: principal.map(|p| p.id.clone()),
        csrf_token: csrf.clone(),
        groups: serde_json::to_string(&principal.map(|p| p.groups.clone()).unwrap_or_default())
            .expect("json"),
        created_at: timefmt::fmt(now),
        last_seen_at: timefmt::fmt(now),
        expires_at: timefmt::fmt(now + Duration::seconds(absolute.as_secs() as i64)),
        notice: notice.map(str::to_string),
    };
    store.insert_session(&row).await?;
    Ok((
        token,
        Session {
            hash,
            csrf_token: csrf,
            principal: principal.cloned(),
            notice: notice.map(str::to_string),
        },
    ))
}

/// Load the session for a cookie value, enforcing the idle and absolute timeouts.
pub async fn load(
    store: &Store,
    token: &str,
    now: OffsetDateTime,
    idle: std::time::Duration,
) -> StoreResult<Option<Session>> {
    if token.len() > 128 {
        return Ok(None);
    }
    let hash = hash_token(token);
    let Some(load) = store.get_session(&hash).await? else {
        return Ok(None);
    };
    let row = load.session;
    let expired = timefmt::parse(&row.expires_at)
        .map(|t| t <= now)
        .unwrap_or(true);
    let idle_out = timefmt::parse(&row.last_seen_at)
        .map(|t| t + Duration::seconds(idle.as_secs() as i64) <= now)
        .unwrap_or(true);
    if expired || idle_out {
        store.delete_session(&hash).await?;
        return Ok(None);
    }
    // A session whose principal row is gone signs nobody in.
    let principal = match (&row.principal_id, load.principal_found) {
        (Some(id), Some(_)) => Some(Principal {
            id: id.clone(),
            email: load.principal_email.unwrap_or_default(),
            name: load.principal_name.unwrap_or_default(),
            azure_object_id: load.principal_object_id,
            groups: serde_json::from_str(&row.groups).unwrap_or_default(),
        }),
        _ => None,
    };
    // Touch at most once a minute: idle timeouts do not need finer grain.
    if timefmt::parse(&row.last_seen_at)
        .map(|t| now - t > Duration::minutes(1))
        .unwrap_or(true)
    {
        store.touch_session(&hash, &timefmt::fmt(now)).await?;
    }
    Ok(Some(Session {
        hash,
        csrf_token: row.csrf_token,
        principal,
        notice: row.notice,
    }))
}
