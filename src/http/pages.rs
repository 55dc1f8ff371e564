//! Server-rendered pages: home, new request, request, review (the mail's target), the dev
//! sign-in and the demo outbox. Every form carries the session's CSRF token; every page works
//! without JavaScript. Templates live in `web/templates/` and are checked at compile time.

use askama::Template;
use axum::Form;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum_extra::extract::CookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::extract::{MaybeSession, Origin};
use crate::audit::{self, Action, Actor};
use crate::auth::oidc::{self, LoginFailure};
use crate::auth::review_token::{ReviewClaims, TokenRejection};
use crate::auth::session::{self, COOKIE_NAME, Session};
use crate::config::{AuthMode, DevUser};
use crate::domain::operations::{self, GUARD_SCOPE_NOTE, Operation};
use crate::domain::policy::ApproverSignIn;
use crate::domain::principal::{Principal, normalize_email};
use crate::domain::request::{NewRequestInput, RequestState, Verdict};
use crate::secret::constant_time_eq;
use crate::service::{Caller, Channel, RequestView, ServiceError};
use crate::store::{NotificationRow, OidcLoginRow, PrincipalRow};
use crate::timefmt;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .route("/auth/login", get(login))
        .route("/auth/callback", get(callback))
        .route("/auth/dev", get(dev_signin_page).post(dev_signin))
        .route("/auth/logout", post(logout))
        .route(
            "/requests/new",
            get(new_request_page).post(new_request_submit),
        )
        .route("/requests/{id}", get(request_page))
        .route("/requests/{id}/decide", post(request_decide))
        .route("/requests/{id}/cancel", post(request_cancel))
        .route("/requests/{id}/end", post(request_end))
        .route("/review/{token}", get(review_page))
        .route("/review", post(review_submit))
        .route("/guards", get(guards_page))
        .route("/audit", get(super::audit_page::audit_page))
        .route("/posture", get(super::posture_page::posture_page))
        .route("/posture/run", post(super::posture_page::posture_run))
        .route("/dev/outbox", get(outbox))
        .route("/dev/outbox/{id}", get(outbox_message))
}

mod filters {
    #[askama::filter_fn]
    pub fn short_time(s: impl std::fmt::Display, _: &dyn askama::Values) -> askama::Result<String> {
        // 2026-12-03T13:05:09.123456Z → 2026-12-03 13:05 UTC
        let s = s.to_string();
        Ok(match (s.get(..10), s.get(11..16)) {
            (Some(d), Some(t)) => format!("{d} {t} UTC"),
            _ => s,
        })
    }

    #[askama::filter_fn]
    pub fn vault_name(s: impl std::fmt::Display, _: &dyn askama::Values) -> askama::Result<String> {
        let s = s.to_string();
        Ok(s.rsplit('/').next().unwrap_or(&s).to_string())
    }

    #[askama::filter_fn]
    pub fn short_link(s: impl std::fmt::Display, _: &dyn askama::Values) -> askama::Result<String> {
        let s = s.to_string();
        Ok(if s.len() > 80 {
            format!("{}…", &s[..80])
        } else {
            s
        })
    }
}

/// The signed-in person, as the page header shows them.
pub(crate) struct Me {
    pub(crate) name: String,
    pub(crate) email: String,
    pub(crate) auditor: bool,
}

/// What every page needs for its header.
struct Chrome {
    me: Option<Me>,
    csrf: String,
    dev: bool,
}

fn chrome(state: &AppState, s: &Option<Session>) -> Chrome {
    Chrome {
        me: s.as_ref().and_then(|s| s.principal.as_ref()).map(|p| Me {
            name: p.name.clone(),
            email: p.email.clone(),
            auditor: state.svc.is_auditor(p),
        }),
        csrf: s.as_ref().map(|s| s.csrf_token.clone()).unwrap_or_default(),
        dev: state.svc.config.auth.mode == AuthMode::Dev,
    }
}

/// For sibling page modules: the header parts, as (me, csrf, dev).
pub(crate) fn chrome_for(state: &AppState, s: &Option<Session>) -> (Option<Me>, String, bool) {
    let c = chrome(state, s);
    (c.me, c.csrf, c.dev)
}

pub(crate) fn render_page(t: impl Template) -> Response {
    render(t)
}

pub(crate) fn login_redirect_to(next: &str) -> Response {
    login_redirect(next)
}

pub(crate) fn message_page(
    state: &AppState,
    s: &Option<Session>,
    status: StatusCode,
    heading: &str,
    text: &str,
) -> Response {
    message(
        state,
        s,
        status,
        heading,
        text,
        "bad",
        Some(("/", "Back to your requests")),
    )
}

fn render(t: impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    me: Option<Me>,
    csrf: String,
    dev: bool,
    heading: String,
    text: String,
    tone: &'static str,
    link: Option<String>,
    link_text: String,
}

fn message(
    state: &AppState,
    s: &Option<Session>,
    status: StatusCode,
    heading: &str,
    text: &str,
    tone: &'static str,
    link: Option<(&str, &str)>,
) -> Response {
    let c = chrome(state, s);
    let mut r = render(MessagePage {
        me: c.me,
        csrf: c.csrf,
        dev: c.dev,
        heading: heading.into(),
        text: text.into(),
        tone,
        link: link.map(|l| l.0.to_string()),
        link_text: link.map(|l| l.1.to_string()).unwrap_or_default(),
    });
    *r.status_mut() = status;
    r
}

fn service_error_page(state: &AppState, s: &Option<Session>, e: ServiceError) -> Response {
    let api: super::error::ApiError = e.into();
    let heading = if api.status.is_server_error() {
        "Something went wrong"
    } else {
        "That did not work"
    };
    message(
        state,
        s,
        api.status,
        heading,
        &api.message,
        "bad",
        Some(("/", "Back to your requests")),
    )
}

/// Only same-site paths are followed after sign-in.
///
/// SECURITY: an open redirect (`next=//evil.example`) would turn our sign-in into a phishing aid.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && n.len() < 2048
                && !n.chars().any(|c| c.is_control()) =>
        {
            n.to_string()
        }
        _ => "/".into(),
    }
}

fn session_cookie(state: &AppState, value: String) -> Cookie<'static> {
    let secure = state.svc.config.server.public_url.scheme() == "https";
    Cookie::build((COOKIE_NAME, value))
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Lax)
        .path("/")
        .build()
}

pub(crate) fn csrf_ok(s: &Option<Session>, sent: &str) -> bool {
    s.as_ref()
        .is_some_and(|s| constant_time_eq(sent, &s.csrf_token))
}

pub(crate) fn csrf_failed(state: &AppState, s: &Option<Session>) -> Response {
    message(
        state,
        s,
        StatusCode::FORBIDDEN,
        "This form has expired",
        "The page was open too long or came from somewhere else. Go back, reload it and try again.",
        "bad",
        Some(("/", "Home")),
    )
}

fn caller(p: Principal, o: Origin) -> Caller {
    Caller {
        principal: p,
        ip: o.ip,
        user_agent: o.user_agent,
    }
}

fn login_redirect(next: &str) -> Response {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("next", next)
        .finish();
    Redirect::to(&format!("/auth/login?{q}")).into_response()
}

async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../web/static/app.js"),
    )
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../web/static/app.css"),
    )
}

// ---- sign-in ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    MaybeSession(s): MaybeSession,
    jar: CookieJar,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    match state.svc.config.auth.mode {
        AuthMode::Dev => {
            let q = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("next", &next)
                .finish();
            Redirect::to(&format!("/auth/dev?{q}")).into_response()
        }
        AuthMode::Oidc => oidc_login(&state, s, jar, next).await,
    }
}

fn sign_in_unavailable(state: &AppState, s: &Option<Session>) -> Response {
    message(
        state,
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        "Sign-in unavailable",
        "twokey cannot reach the identity provider right now. Try again in a minute; if it \
         persists, tell whoever runs twokey.",
        "bad",
        Some(("/auth/login", "Try again")),
    )
}

/// `GET /auth/login` with OpenID Connect: remember `state`, `nonce` and the PKCE verifier
/// server-side, bound to this browser's session, and send the browser to the issuer.
async fn oidc_login(
    state: &AppState,
    s: Option<Session>,
    jar: CookieJar,
    next: String,
) -> Response {
    let svc = &state.svc;
    let Some(oidc) = state.oidc.clone() else {
        return sign_in_unavailable(state, &s);
    };
    let now = svc.now();
    // SECURITY: the pending sign-in belongs to one browser session (an anonymous one is
    // started if needed), so a callback URL replayed or planted in another browser finds
    // nothing (login CSRF), and `state` is single-use.
    let (jar, session) = match s {
        Some(s) => (jar, s),
        None => match session::start(&svc.store, None, now, svc.config.auth.session_absolute).await
        {
            Ok((cookie, s)) => (jar.add(session_cookie(state, cookie)), s),
            Err(e) => return service_error_page(state, &None, e.into()),
        },
    };
    let start = match oidc.begin_login().await {
        Ok(st) => st,
        Err(e) => {
            tracing::warn!(error = %e, "sign-in could not start");
            return (jar, sign_in_unavailable(state, &Some(session))).into_response();
        }
    };
    if let Err(e) = svc
        .store
        .delete_expired_oidc_logins(&timefmt::fmt(now))
        .await
    {
        tracing::warn!(error = %e, "removing expired sign-ins");
    }
    let row = OidcLoginRow {
        state_hash: session::hash_token(&start.state),
        session_hash: session.hash.clone(),
        nonce: start.nonce,
        pkce_verifier: start.pkce_verifier,
        next_path: next,
        created_at: timefmt::fmt(now),
        expires_at: timefmt::fmt(now + oidc::LOGIN_TTL),
    };
    if let Err(e) = svc.store.insert_oidc_login(&row).await {
        return service_error_page(state, &Some(session), e.into());
    }
    (jar, Redirect::to(start.url.as_str())).into_response()
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    /// RFC 9207: the issuer that answered (sent by issuers that support it).
    iss: Option<String>,
}

/// `GET /auth/callback` — where the issuer sends the browser back. Signs in only when the
/// `state` belongs to a sign-in this browser started (and is used once), the code redeems with
/// its PKCE verifier, and the ID token passes every check. Anything else: a clear page and an
/// `auth.failed` event with the reason (never a token or code).
async fn callback(
    State(state): State<AppState>,
    MaybeSession(s): MaybeSession,
    origin: Origin,
    jar: CookieJar,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let svc = &state.svc;
    if svc.config.auth.mode != AuthMode::Oidc {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Some(oidc) = state.oidc.clone() else {
        return sign_in_unavailable(&state, &s);
    };
    let now = svc.now();
    let pending = match (&s, q.state.as_deref()) {
        (Some(sess), Some(st)) if !st.is_empty() && st.len() <= 512 => {
            match svc
                .store
                .take_oidc_login(&session::hash_token(st), &sess.hash)
                .await
            {
                Ok(p) => p,
                Err(e) => return service_error_page(&state, &s, e.into()),
            }
        }
        _ => None,
    };
    let Some(pending) = pending else {
        return sign_in_failed(&state, &s, &origin, LoginFailure::StateMismatch).await;
    };
    // SECURITY: RFC 9207 mix-up defence — an answer that names another issuer is refused.
    if q.iss.as_deref().is_some_and(|i| i != oidc.cfg.issuer) {
        return sign_in_failed(&state, &s, &origin, LoginFailure::IssuerMismatch).await;
    }
    if let Some(err) = q.error.as_deref() {
        let failure = LoginFailure::ProviderError(oidc::clean_code(err));
        return sign_in_failed(&state, &s, &origin, failure).await;
    }
    if timefmt::parse(&pending.expires_at).map_or(true, |t| t <= now) {
        return sign_in_failed(&state, &s, &origin, LoginFailure::Expired).await;
    }
    let code = match q.code.as_deref() {
        Some(c) if !c.is_empty() && c.len() <= 4096 => c,
        _ => {
            let failure = LoginFailure::ProviderError("no_code".into());
            return sign_in_failed(&state, &s, &origin, failure).await;
        }
    };
    let identity = match oidc
        .finish_login(code, &pending.nonce, &pending.pkce_verifier)
        .await
    {
        Ok(i) => i,
        Err(f) => return sign_in_failed(&state, &s, &origin, f).await,
    };
    match sign_in_oidc(&state, &identity, &origin).await {
        Ok((cookie, session)) => {
            if let Some(old) = &s {
                let _ = svc.store.delete_session(&old.hash).await;
            }
            let jar = jar.add(session_cookie(&state, cookie));
            let next = safe_next(Some(&pending.next_path));
            match session.notice.clone() {
                // The page says why before the person goes on.
                Some(notice) => (
                    jar,
                    message(
                        &state,
                        &Some(session),
                        StatusCode::OK,
                        "You are signed in, with a caveat",
                        &notice,
                        "warn",
                        Some((&next, "Continue")),
                    ),
                )
                    .into_response(),
                None => (jar, Redirect::to(&next)).into_response(),
            }
        }
        Err(e) => service_error_page(&state, &s, e),
    }
}

/// Record the principal, start a fresh session (the id rotates) with the token's groups,
/// and audit `auth.signed_in`.
async fn sign_in_oidc(
    state: &AppState,
    identity: &oidc::Identity,
    origin: &Origin,
) -> Result<(String, Session), ServiceError> {
    let svc = &state.svc;
    let now = svc.now();
    let p = oidc::principal_for(&svc.store, identity, now).await?;
    let mut notices: Vec<String> = identity.notice().into_iter().collect();
    if p.azure_object_id.is_none()
        && svc
            .config
            .guards
            .iter()
            .any(|g| g.elevation.needs_object_id())
    {
        notices.push(
            "Your sign-in carries no Azure object id (the oid claim), so you cannot request \
             anything that needs a role on Azure: twokey would have no one to grant it to."
                .into(),
        );
    }
    let notice = (!notices.is_empty()).then(|| notices.join(" "));
    let (cookie, session) = session::start_with_notice(
        &svc.store,
        Some(&p),
        notice.as_deref(),
        now,
        svc.config.auth.session_absolute,
    )
    .await?;
    let mut tx = svc.store.begin().await?;
    audit::record(
        &mut tx,
        now,
        Action::AuthSignedIn,
        &caller(p.clone(), origin.clone()).actor(),
        None,
        json!({
            "method": "oidc",
            "issuer": identity.issuer,
            "subject": identity.subject,
            "groups": p.groups,
            "groups_overage": identity.overage,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok((cookie, session))
}

/// A failed callback: audit `auth.failed` with the reason, answer with a clear page.
async fn sign_in_failed(
    state: &AppState,
    s: &Option<Session>,
    origin: &Origin,
    failure: LoginFailure,
) -> Response {
    let svc = &state.svc;
    match &failure {
        LoginFailure::Unavailable(e) => tracing::warn!(error = %e, "sign-in failed"),
        _ => tracing::info!(reason = failure.code(), "sign-in failed"),
    }
    let detail = match &failure {
        LoginFailure::ProviderError(c) | LoginFailure::CodeExchange(c) => Some(c.clone()),
        _ => None,
    };
    if let Ok(mut tx) = svc.store.begin().await {
        let recorded = audit::record(
            &mut tx,
            svc.now(),
            Action::AuthFailed,
            &Actor {
                ip: origin.ip.clone(),
                user_agent: origin.user_agent.clone(),
                ..Actor::default()
            },
            None,
            json!({ "method": "oidc", "reason": failure.code(), "detail": detail }),
        )
        .await;
        if recorded.is_ok() {
            let _ = tx.commit().await;
        }
    }
    let status = match &failure {
        LoginFailure::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        LoginFailure::StateMismatch
        | LoginFailure::Expired
        | LoginFailure::IssuerMismatch
        | LoginFailure::ProviderError(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNAUTHORIZED,
    };
    message(
        state,
        s,
        status,
        "Sign-in failed",
        &format!("{failure}. Nobody was signed in."),
        "bad",
        Some(("/auth/login", "Start again")),
    )
}

#[derive(Template)]
#[template(path = "dev_signin.html")]
struct DevSignin {
    me: Option<Me>,
    csrf: String,
    dev: bool,
    people: Vec<DevUser>,
    next: String,
}

async fn dev_signin_page(
    State(state): State<AppState>,
    MaybeSession(s): MaybeSession,
    jar: CookieJar,
    Query(q): Query<NextQuery>,
) -> Response {
    if state.svc.config.auth.mode != AuthMode::Dev {
        return StatusCode::NOT_FOUND.into_response();
    }
    // The form needs a CSRF token, so an anonymous session is started if there is none.
    let (jar, s) = match s {
        Some(s) => (jar, Some(s)),
        None => match session::start(
            &state.svc.store,
            None,
            state.svc.now(),
            state.svc.config.auth.session_absolute,
        )
        .await
        {
            Ok((cookie, s)) => (jar.add(session_cookie(&state, cookie)), Some(s)),
            Err(e) => return service_error_page(&state, &None, e.into()),
        },
    };
    let c = chrome(&state, &s);
    (
        jar,
        render(DevSignin {
            me: c.me,
            csrf: c.csrf,
            dev: c.dev,
            people: state.svc.config.auth.dev_users.clone(),
            next: safe_next(q.next.as_deref()),
        }),
    )
        .into_response()
}

#[derive(Deserialize)]
struct DevSigninForm {
    email: String,
    csrf: String,
    next: Option<String>,
}

async fn dev_signin(
    State(state): State<AppState>,
    MaybeSession(s): MaybeSession,
    origin: Origin,
    jar: CookieJar,
    Form(f): Form<DevSigninForm>,
) -> Response {
    let svc = &state.svc;
    if svc.config.auth.mode != AuthMode::Dev {
        return StatusCode::NOT_FOUND.into_response();
    }
    if !csrf_ok(&s, &f.csrf) {
        return csrf_failed(&state, &s);
    }
    // Exact match: in tests, `Alice@…` and `alice+x@…` are deliberately different people.
    let Some(u) = svc
        .config
        .auth
        .dev_users
        .iter()
        .find(|u| u.email == f.email)
    else {
        return message(
            &state,
            &s,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Unknown person",
            "Pick one of the listed demo people.",
            "bad",
            Some(("/auth/dev", "Back")),
        );
    };
    match sign_in_dev(&state, u, &origin).await {
        Ok((cookie, _)) => {
            if let Some(old) = &s {
                let _ = svc.store.delete_session(&old.hash).await;
            }
            (
                jar.add(session_cookie(&state, cookie)),
                Redirect::to(&safe_next(f.next.as_deref())),
            )
                .into_response()
        }
        Err(e) => service_error_page(&state, &s, e),
    }
}

/// Sign a dev person in: record the principal, start a fresh session, audit it.
pub(crate) async fn sign_in_dev(
    state: &AppState,
    u: &DevUser,
    origin: &Origin,
) -> Result<(String, Session), ServiceError> {
    let svc = &state.svc;
    let now = svc.now();
    let id = svc
        .store
        .upsert_principal(&PrincipalRow {
            principal_id: crate::service::new_id_pub(),
            issuer: "dev".into(),
            subject: u.email.clone(),
            email: u.email.clone(),
            email_normalized: normalize_email(&u.email),
            name: u.name.clone(),
            azure_object_id: u.object_id.clone(),
            created_at: timefmt::fmt(now),
        })
        .await?;
    let p = Principal {
        id,
        email: u.email.clone(),
        name: u.name.clone(),
        azure_object_id: u.object_id.clone(),
        groups: u.groups.clone(),
    };
    let (cookie, session) =
        session::start(&svc.store, Some(&p), now, svc.config.auth.session_absolute).await?;
    let mut tx = svc.store.begin().await?;
    audit::record(
        &mut tx,
        now,
        Action::AuthSignedIn,
        &Caller {
            principal: p.clone(),
            ip: origin.ip.clone(),
            user_agent: origin.user_agent.clone(),
        }
        .actor(),
        None,
        json!({ "method": "dev", "groups": p.groups }),
    )
    .await?;
    tx.commit().await?;
    Ok((cookie, session))
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    MaybeSession(s): MaybeSession,
    jar: CookieJar,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !csrf_ok(&s, &f.csrf) {
        return csrf_failed(&state, &s);
    }
    if let Some(s) = &s {
        let _ = state.svc.store.delete_session(&s.hash).await;
    }
    let jar = jar.remove(Cookie::build(COOKIE_NAME).path("/").build());
    match state.svc.config.auth.mode {
        AuthMode::Dev => (jar, Redirect::to("/")).into_response(),
        // Not straight back to `/`: that would go to the issuer, which (still signed in there)
        // would sign the person straight back in.
        AuthMode::Oidc => (
            jar,
            message(
                &state,
                &None,
                StatusCode::OK,
                "You are signed out",
                "You are signed out of twokey. Your identity provider may still remember you; \
                 on a shared computer, sign out there too.",
                "good",
                Some(("/auth/login", "Sign in again")),
            ),
        )
            .into_response(),
    }
}

// ---- home and requests -------------------------------------------------------------------

#[derive(Template)]
#[template(path = "home.html")]
struct Home {
    me: Option<Me>,
    csrf: String,
    dev: bool,
    mine: Vec<RequestView>,
    waiting: Vec<RequestView>,
    others: Vec<RequestView>,
}

async fn home(State(state): State<AppState>, MaybeSession(s): MaybeSession) -> Response {
    let Some(p) = s.as_ref().and_then(|s| s.principal.clone()) else {
        return login_redirect("/");
    };
    let svc = &state.svc;
    let all = match svc.list_for(&p, None, None).await {
        Ok(v) => v,
        Err(e) => return service_error_page(&state, &s, e),
    };
    let (mine, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|r| r.requester.id == p.id);
    let (waiting, others): (Vec<_>, Vec<_>) = rest.into_iter().partition(|r| {
        r.state == RequestState::Pending && !r.decisions.iter().any(|d| d.approver.id == p.id)
    });
    let c = chrome(&state, &s);
    render(Home {
        me: c.me,
        csrf: c.csrf,
        dev: c.dev,
        mine,
        waiting,
        others,
    })
}

struct VaultChoice {
    id: String,
    label: String,
}

#[derive(Default, Deserialize)]
struct NewRequestForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    vault_id: String,
    #[serde(default)]
    vault_id_text: String,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    justification: String,
    #[serde(default)]
    ticket: String,
    #[serde(default)]
    duration_minutes: String,
}

#[derive(Template)]
#[template(path = "new_request.html")]
struct NewRequestPage {
    me: Option<Me>,
    csrf: String,
    dev: bool,
    guards: Vec<GuardChoice>,
    rsv_operations: Vec<&'static Operation>,
    bv_operations: Vec<&'static Operation>,
    form: NewRequestForm,
    errors: FieldErrors,
    scope_note: &'static str,
    immutability_note: &'static str,
    max_duration: u32,
}

/// A guard and the vaults it names exactly (patterns with `*` cannot be listed; their vaults
/// are typed or pasted into the search field).
struct GuardChoice {
    name: String,
    max_duration: u32,
    required: u32,
    vaults: Vec<VaultChoice>,
    patterns: Vec<String>,
}

/// Validation messages, each shown next to its field.
#[derive(Default)]
struct FieldErrors {
    vault: Option<String>,
    operation: Option<String>,
    justification: Option<String>,
    ticket: Option<String>,
    duration: Option<String>,
    general: Option<String>,
}

impl FieldErrors {
    fn any(&self) -> bool {
        self.vault.is_some()
            || self.operation.is_some()
            || self.justification.is_some()
            || self.ticket.is_some()
            || self.duration.is_some()
            || self.general.is_some()
    }

    fn from_domain(e: &crate::domain::request::DomainError) -> Self {
        let mut f = Self::default();
        match e {
            crate::domain::request::DomainError::Invalid { field, message } => {
                let slot = match *field {
                    "vault_id" | "guard" => &mut f.vault,
                    "operation" => &mut f.operation,
                    "justification" => &mut f.justification,
                    "ticket" => &mut f.ticket,
                    "duration_minutes" => &mut f.duration,
                    _ => &mut f.general,
                };
                *slot = Some(capitalize(message));
            }
            other => f.general = Some(other.to_string()),
        }
        f
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn new_request_page_for(
    state: &AppState,
    s: &Option<Session>,
    p: &Principal,
    form: NewRequestForm,
    errors: FieldErrors,
) -> Response {
    let guards: Vec<GuardChoice> = state
        .svc
        .config
        .guards
        .iter()
        .filter(|g| g.may_request(p))
        .map(|g| GuardChoice {
            name: g.name.clone(),
            max_duration: g.max_duration_minutes,
            required: g.required_approvals,
            vaults: g
                .vaults
                .iter()
                .filter_map(|v| v.is_exact())
                .map(|v| VaultChoice {
                    label: format!(
                        "{} — {} in {}",
                        v.name(),
                        v.kind().label(),
                        v.resource_group()
                    ),
                    id: v.to_string(),
                })
                .collect(),
            patterns: g
                .vaults
                .iter()
                .filter(|v| v.is_exact().is_none())
                .map(|v| v.to_string())
                .collect(),
        })
        .collect();
    let max_duration = guards.iter().map(|g| g.max_duration).max().unwrap_or(60);
    let c = chrome(state, s);
    let status = if errors.any() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    use crate::domain::arm::VaultKind;
    let mut r = render(NewRequestPage {
        me: c.me,
        csrf: c.csrf,
        dev: c.dev,
        guards,
        rsv_operations: operations::for_kind(VaultKind::RecoveryServices).collect(),
        bv_operations: operations::for_kind(VaultKind::Backup).collect(),
        form,
        errors,
        scope_note: GUARD_SCOPE_NOTE,
        immutability_note: operations::IMMUTABILITY_NOTE,
        max_duration,
    });
    *r.status_mut() = status;
    r
}

async fn new_request_page(
    State(state): State<AppState>,
    MaybeSession(s): MaybeSession,
) -> Response {
    let Some(p) = s.as_ref().and_then(|s| s.principal.clone()) else {
        return login_redirect("/requests/new");
    };
    new_request_page_for(
        &state,
        &s,
        &p,
        NewRequestForm {
            duration_minutes: "60".into(),
            ..Default::default()
        },
        FieldErrors::default(),
    )
}

async fn new_request_submit(
    State(state): State<AppState>,
    MaybeSession(s): MaybeSession,
    origin: Origin,
    Form(f): Form<NewRequestForm>,
) -> Response {
    let Some(p) = s.as_ref().and_then(|s| s.principal.clone()) else {
        return login_redirect("/requests/new");
    };
    if !csrf_ok(&s, &f.csrf) {
        return csrf_failed(&state, &s);
    }
    let vault = if f.vault_id_text.trim().is_empty() {
        f.vault_id.clone()
    } else {
        f.vault_id_text.trim().to_string()
    };
    let duration = match f.duration_minutes.trim().parse::<i64>() {
        Ok(d) => Some(d),
        Err(_) => {
            return new_request_page_for(
                &state,
                &s,
                &p,
                f,
                FieldErrors {
                    duration: Some("Enter the number of minutes, e.g. 60".into()),
                    ..FieldErrors::default()
                },
            );
        }
    };
    let input = NewRequestInput {
        vault_id: vault,
        operation: f.operation.clone(),
        justification: f.justification.clone(),
        ticket: Some(f.ticket.clone()),
        duration_minutes: duration,
        guard: None,
    };
    match state
        .svc
        .create_request(&caller(p.clone(), origin), input)
        .await
    {
        Ok(v) => Redirect::to(&format!("/requests/{}", v.id)).into_response(),
        Err(ServiceError::Domain(d)) => {
            new_request_page_for(&state, &s, &p, f, FieldErrors::from_domain(&d))
        }
        Err(e) => service_error_page(&state, &s, e),
    }
}

#[derive(Template)]
#[template(path = "request.html")]
struct RequestPage {
    me: Option<Me>,
    csrf: String,
    dev: bool,
    r: RequestView,
    can_decide: bool,
    can_cancel: bool,
    can_end: bool,
    timeline: Vec<TimelineLine>,
    still_needed: Option<String>,
    scope_note: &'static str,
}

/// One line of the request's story, in words.
struct TimelineLine {
    at: String,
    text: String,
    detail: Option<String>,
    minor: bool,
}

fn describe(e: &crate::service::TimelineEntry) -> TimelineLine {
    let who = e.actor.clone().unwrap_or_else(|| "twokey".into());
    let d = &e.details;
    let s = |k: &str| d.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let (text, detail, minor) = match e.action.as_str() {
        "request.created" => (format!("Requested by {who}"), s("justification"), false),
        "review.opened" => (format!("Review page opened by {who}"), None, true),
        "decision.approved" => (format!("Approved by {who}"), s("comment"), false),
        "decision.denied" => (format!("Denied by {who}"), s("comment"), false),
        "grant.requested" => (
            "Approved: asking Azure for the role".to_string(),
            None,
            false,
        ),
        "grant.active" => (
            format!(
                "Access window open until {}",
                short(&s("active_until").unwrap_or_default())
            ),
            s("scope").map(|sc| format!("Role on {sc}")),
            false,
        ),
        "grant.ended" => (
            match s("reason").as_deref() {
                Some("ended_early") => "Window ended early; the role was removed".to_string(),
                Some("expired") => "Window over; the role was removed".to_string(),
                Some(r) => format!("Window ended ({r}); the role was removed"),
                None => "Window ended; the role was removed".to_string(),
            },
            None,
            false,
        ),
        "grant.failed" => (
            "The role could not be granted".to_string(),
            s("error"),
            false,
        ),
        "request.cancelled" => (format!("Cancelled by {who}"), None, false),
        "request.expired" => (
            match s("reason").as_deref() {
                Some("policy_changed") => "Expired: the guard's policy changed".to_string(),
                _ => "Expired: nobody decided before the deadline".to_string(),
            },
            None,
            false,
        ),
        "token.rejected" => (
            format!(
                "A review link was refused ({})",
                s("reason").unwrap_or_default()
            ),
            None,
            true,
        ),
        "notification.sent" => (
            format!("Mail sent to {}", s("to").unwrap_or_default()),
            s("subject"),
            true,
        ),
        "notification.failed" => (
            format!("Mail to {} could not be sent", s("to").unwrap_or_default()),
            s("error"),
            false,
        ),
        other => (other.to_string(), None, true),
    };
    TimelineLine {
        at: e.at.clone(),
        text,
        detail,
        minor,
    }
}

fn short(s: &str) -> String {
    match (s.get(..10), s.get(11..16)) {
        (Some(d), Some(t)) => format!("{d} {t} UTC"),
        _ => s.to_string(),
    }
}

async fn request_page(
    State(state): State<AppState>,
    MaybeSession(s): MaybeSession,
    Path(id): Path<String>,
) -> Response {
    let Some(p) = s.as_ref().and_then(|s| s.principal.clone()) else {
        return login_redirect(&format!(
            "/requests/{}",
            id.chars().take(64).collect::<String>()
        ));
    };
    let svc = &state.svc;
    let r = match svc.get_for(&p, &id).await {
        Ok(r) => r,
        Err(e) => return service_error_page(&state, &s, e),
    };
    let guard = svc.guard(&r.guard);
    let is_requester = r.requester.id == p.id;
    let is_approver = guard.is_some_and(|g| !g.approver_entries_for(&p).is_empty());
    let can_decide = r.state == RequestState::Pending
        && is_approver
        && !is_requester
        && !r.decisions.iter().any(|d| d.approver.id == p.id);
    let can_cancel = r.state == RequestState::Pending && is_requester;
    let can_end = r.state == RequestState::Active
        && r.end_requested_at.is_none()
        && (is_requester || is_approver || svc.is_admin(&p));
    let still_needed = (r.state == RequestState::Pending).then(|| {
        let missing = (r.required_approvals as usize).saturating_sub(r.approvals);
        let from: Vec<String> = guard
            .map(|g| g.approvers.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        let distinct = guard.is_some_and(|g| g.distinct_groups);
        format!(
            "{missing} more approval(s) needed, from {}{}",
            from.join(", "),
            if distinct {
                " (each from a different entry)"
            } else {
                ""
            }
        )
    });
    let timeline = r.timeline.iter().map(describe).collect();
    let c = chrome(&state, &s);
    render(RequestPage {
        me: c.me,
        csrf: c.csrf,
        dev: c.dev,
        r,
        can_decide,
        can_cancel,
        can_end,
        timeline,
        still_needed,
        scope_note: GUARD_SCOPE_NOTE,
    })
}

#[derive(Deserialize)]
struct DecideForm {
    csrf: String,
    decision: String,
    #[serde(default)]
    comment: String,
}

async fn request_decide(
    State(state): State<AppState>,
    MaybeSession(s): MaybeSession,
    origin: Origin,
    Path(id): Path<String>,
    Form(f): Form<DecideForm>,
) -> Response {
    let c = match form_caller(&state, &s, &f.csrf, origin) {
        Ok(c) => c,
        Err(page) => return page,
    };
    let Some(verdict) = Verdict::parse(&f.decision) else {
        return message(
            &state,
            &s,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Choose approve or deny",
            "",
            "bad",
            None,
        );
    };
    let r = state
        .svc
        .decide(&c, &id, verdict, Some(&f.comment), Channel::Api)
        .await;
    to_request_page(&state, &s, r)
}

/// The signed-in caller of a form post, after its CSRF check; or the page to answer with.
#[allow(clippy::result_large_err)] // the error is the response itself, returned at once
fn form_caller(
    state: &AppState,
    s: &Option<Session>,
    csrf: &str,
    origin: Origin,
) -> Result<Caller, Response> {
    let Some(p) = s.as_ref().and_then(|s| s.principal.clone()) else {
        return Err(login_redirect("/"));
    };
    if !csrf_ok(s, csrf) {
        return Err(csrf_failed(state, s));
    }
    Ok(caller(p, origin))
}

/// After a form changed a request: back to its page, or the error page.
fn to_request_page(
    state: &AppState,
    s: &Option<Session>,
    r: Result<RequestView, ServiceError>,
) -> Response {
    match r {
        Ok(v) => Redirect::to(&format!("/requests/{}", v.id)).into_response(),
        Err(e) => service_error_page(state, s, e),
    }
}

async fn request_cancel(
    State(state): State<AppState>,
    MaybeSession(s): MaybeSession,
    origin: Origin,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    match form_caller(&state, &s, &f.csrf, origin) {
        Ok(c) => to_request_page(&state, &s, state.svc.cancel(&c, &id).await),
        Err(page) => page,
    }
}

async fn request_end(
    State(state): State<AppState>,
    MaybeSession(s): MaybeSession,
    origin: Origin,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    match form_caller(&state, &s, &f.csrf, origin) {
        Ok(c) => to_request_page(&state, &s, state.svc.end_early(&c, &id).await),
        Err(page) => page,
    }
}

// ---- review links ---------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "review.html")]
struct ReviewPage {
    me: Option<Me>,
    csrf: String,
    dev: bool,
    r: RequestView,
    token: String,
    scope_note: &'static str,
    /// Who may approve (the guard's approver entries), for "still needed from whom".
    approvers: String,
    distinct_groups: bool,
}

/// Record a refused review token (never the token itself) and show a clear page.
async fn reject_token(
    state: &AppState,
    s: &Option<Session>,
    origin: &Origin,
    why: TokenRejection,
    claims: Option<&ReviewClaims>,
) -> Response {
    let svc = &state.svc;
    let actor = match s.as_ref().and_then(|s| s.principal.clone()) {
        Some(p) => caller(p, origin.clone()).actor(),
        None => Actor {
            ip: origin.ip.clone(),
            user_agent: origin.user_agent.clone(),
            ..Actor::default()
        },
    };
    if let Err(e) = svc.token_rejected(&actor, why.code(), claims).await {
        tracing::error!(error = %e, "recording a refused review link");
    }
    let (status, text) = match why {
        TokenRejection::Replayed => (
            StatusCode::GONE,
            "This link has already been used to decide. Each link works once.",
        ),
        TokenRejection::NotPending => (
            StatusCode::GONE,
            "This request is no longer waiting for a decision; nothing was changed.",
        ),
        TokenRejection::Expired => (
            StatusCode::GONE,
            "This link has expired, and so has the request's deadline. Nothing was approved.",
        ),
        TokenRejection::WrongApprover => (
            StatusCode::FORBIDDEN,
            "This link was sent to somebody else. Sign in as the person it was sent to, or open your own link.",
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            "This link is not valid. Use the link from the most recent mail, unchanged.",
        ),
    };
    message(
        state,
        s,
        status,
        "This link cannot be used",
        text,
        "bad",
        Some(("/", "Your requests")),
    )
}

/// Check a review token fully: signature, expiry, single use, request still pending, and the
/// signed-in person (unless the guard is link-only). Returns the claims and the decider.
async fn check_review(
    state: &AppState,
    s: &Option<Session>,
    origin: &Origin,
    token: &str,
    next: &str,
) -> Result<(ReviewClaims, Principal), Response> {
    let svc = &state.svc;
    let claims = match svc.tokens.verify(token, svc.now().unix_timestamp()) {
        Ok(c) => c,
        Err(why) => return Err(reject_token(state, s, origin, why, None).await),
    };
    let row = match svc.store.get_review_token(&claims.jti).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(
                reject_token(state, s, origin, TokenRejection::Malformed, Some(&claims)).await,
            );
        }
        Err(e) => return Err(service_error_page(state, s, e.into())),
    };
    if row.used_at.is_some() {
        return Err(reject_token(state, s, origin, TokenRejection::Replayed, Some(&claims)).await);
    }
    let req = match svc.store.get_request(&claims.rid).await {
        Ok(Some(r)) => r,
        _ => {
            return Err(
                reject_token(state, s, origin, TokenRejection::Malformed, Some(&claims)).await,
            );
        }
    };
    if req.state != "pending" {
        return Err(
            reject_token(state, s, origin, TokenRejection::NotPending, Some(&claims)).await,
        );
    }
    let link_only = svc
        .guard(&req.guard)
        .is_some_and(|g| g.approver_sign_in == ApproverSignIn::LinkOnly);
    let signed_in = s.as_ref().and_then(|s| s.principal.clone());
    let decider = match (signed_in, link_only) {
        // SECURITY: by default the approver must be signed in as the person the link was sent
        // to, so a forwarded mail decides nothing.
        (Some(p), _) if p.email_normalized() == claims.sub => p,
        (Some(_), false) => {
            return Err(reject_token(
                state,
                s,
                origin,
                TokenRejection::WrongApprover,
                Some(&claims),
            )
            .await);
        }
        (None, false) => return Err(login_redirect(next)),
        (_, true) => {
            let now = svc.now();
            let id = match svc
                .store
                .upsert_principal(&PrincipalRow {
                    principal_id: crate::service::new_id_pub(),
                    issuer: "review-link".into(),
                    subject: claims.sub.clone(),
                    email: claims.sub.clone(),
                    email_normalized: claims.sub.clone(),
                    name: claims.sub.clone(),
                    azure_object_id: None,
                    created_at: timefmt::fmt(now),
                })
                .await
            {
                Ok(id) => id,
                Err(e) => return Err(service_error_page(state, s, e.into())),
            };
            Principal {
                id,
                email: claims.sub.clone(),
                name: claims.sub.clone(),
                azure_object_id: None,
                groups: vec![],
            }
        }
    };
    Ok((claims, decider))
}

/// `GET /review/{token}` — shows the request. Changes nothing but the audit log (mail scanners
/// fetch every link: a GET that decided would approve everything).
async fn review_page(
    State(state): State<AppState>,
    MaybeSession(s): MaybeSession,
    origin: Origin,
    Path(token): Path<String>,
) -> Response {
    let next = format!("/review/{token}");
    let (claims, decider) = match check_review(&state, &s, &origin, &token, &next).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let svc = &state.svc;
    if let Ok(mut tx) = svc.store.begin().await
        && audit::record(
            &mut tx,
            svc.now(),
            Action::ReviewOpened,
            &caller(decider.clone(), origin.clone()).actor(),
            Some(&claims.rid),
            json!({ "jti": claims.jti, "sent_to": claims.sub }),
        )
        .await
        .is_ok()
    {
        let _ = tx.commit().await;
    }
    let r = match svc.view(&claims.rid).await {
        Ok(r) => r,
        Err(e) => return service_error_page(&state, &s, e),
    };
    // A link-only reviewer may have no session yet: start one so the form has a CSRF token.
    let (cookie, s) = match s {
        Some(s) => (None, Some(s)),
        None => match session::start(
            &svc.store,
            None,
            svc.now(),
            svc.config.auth.session_absolute,
        )
        .await
        {
            Ok((c, s)) => (Some(c), Some(s)),
            Err(e) => return service_error_page(&state, &None, e.into()),
        },
    };
    let c = chrome(&state, &s);
    let (approvers, distinct_groups) = svc
        .guard(&r.guard)
        .map(|g| {
            let list: Vec<String> = g.approvers.iter().map(ToString::to_string).collect();
            (list.join(", "), g.distinct_groups)
        })
        .unwrap_or_default();
    let page = render(ReviewPage {
        me: c.me,
        csrf: c.csrf,
        dev: c.dev,
        r,
        token,
        scope_note: GUARD_SCOPE_NOTE,
        approvers,
        distinct_groups,
    });
    match cookie {
        Some(v) => (CookieJar::new().add(session_cookie(&state, v)), page).into_response(),
        None => page,
    }
}

#[derive(Deserialize)]
struct ReviewForm {
    token: String,
    decision: String,
    #[serde(default)]
    comment: String,
    csrf: String,
}

/// `POST /review` — decide with a review link (once).
async fn review_submit(
    State(state): State<AppState>,
    MaybeSession(s): MaybeSession,
    origin: Origin,
    Form(f): Form<ReviewForm>,
) -> Response {
    if !csrf_ok(&s, &f.csrf) {
        return csrf_failed(&state, &s);
    }
    let Some(verdict) = Verdict::parse(&f.decision) else {
        return message(
            &state,
            &s,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Choose approve or deny",
            "",
            "bad",
            None,
        );
    };
    let next = format!("/review/{}", f.token);
    let (claims, decider) = match check_review(&state, &s, &origin, &f.token, &next).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match state
        .svc
        .decide_with_link(
            &caller(decider, origin.clone()),
            &claims,
            verdict,
            Some(&f.comment),
        )
        .await
    {
        Ok(v) => {
            let (heading, text) = match (verdict, v.state) {
                (Verdict::Deny, _) => (
                    "You denied the request",
                    "The requester has been told. Nothing was granted.".to_string(),
                ),
                (Verdict::Approve, RequestState::Pending) => (
                    "Your approval is recorded",
                    format!(
                        "{} of {} approvals so far; the request waits for the rest.",
                        v.approvals, v.required_approvals
                    ),
                ),
                (Verdict::Approve, _) => (
                    "You approved the request",
                    format!(
                        "{} gets access for {} minutes; it is taken away automatically.",
                        v.requester.name, v.duration_minutes
                    ),
                ),
            };
            message(
                &state,
                &s,
                StatusCode::OK,
                heading,
                &text,
                "good",
                Some((&format!("/requests/{}", v.id), "See the request")),
            )
        }
        Err(ServiceError::Domain(crate::domain::request::DomainError::Forbidden(m)))
            if m == crate::service::LINK_USED =>
        {
            reject_token(&state, &s, &origin, TokenRejection::Replayed, Some(&claims)).await
        }
        Err(e) => service_error_page(&state, &s, e),
    }
}

// ---- guards ------------------------------------------------------------------------------

struct GuardView {
    name: String,
    resource_guard_id: String,
    vaults: Vec<String>,
    approvers: Vec<String>,
    watchers: Vec<String>,
    required: u32,
    distinct_groups: bool,
    max_duration: u32,
    pending_deadline: u32,
    elevation: &'static str,
    warnings: Vec<String>,
}

#[derive(Template)]
#[template(path = "guards.html")]
struct GuardsPage {
    me: Option<Me>,
    csrf: String,
    dev: bool,
    guards: Vec<GuardView>,
}

/// How many distinct people can approve for `g`, when that can be known.
fn eligible_approvers(state: &AppState, g: &crate::domain::policy::GuardPolicy) -> Option<usize> {
    state.svc.eligible_approvers(g)
}

/// `GET /guards` — read-only: each guard the caller may request against or approve for
/// (auditors see all), with a red warning where too few approvers exist.
async fn guards_page(State(state): State<AppState>, MaybeSession(s): MaybeSession) -> Response {
    let Some(p) = s.as_ref().and_then(|s| s.principal.clone()) else {
        return login_redirect("/guards");
    };
    let svc = &state.svc;
    let all = svc.is_auditor(&p);
    let guards = svc
        .config
        .guards
        .iter()
        .filter(|g| all || g.may_request(&p) || !g.approver_entries_for(&p).is_empty())
        .map(|g| {
            let mut warnings = Vec::new();
            let strictest = operations::catalogue().iter().map(|op| g.required_for(op)).max().unwrap_or(1);
            match eligible_approvers(&state, g) {
                Some(n) if (n as u32) < g.required_approvals => warnings.push(format!(
                    "Only {n} approver(s) for {} required approvals: no request under this guard can ever be approved.",
                    g.required_approvals
                )),
                // The requester never counts, so one more person than the count is needed for
                // anyone who is also an approver; irreversible operations need 2.
                Some(n) if (n as u32) < strictest => warnings.push(format!(
                    "Only {n} approver(s): operations that need {strictest} approvals (those that cannot be undone) can never be approved."
                )),
                _ => {}
            }
            if g.distinct_groups && (g.approvers.len() as u32) < g.required_approvals {
                warnings.push("Fewer approver entries than required approvals with distinct groups.".into());
            }
            GuardView {
                name: g.name.clone(),
                resource_guard_id: g.resource_guard_id.to_string(),
                vaults: g.vaults.iter().map(|v| v.to_string()).collect(),
                approvers: g.approvers.iter().map(|a| a.to_string()).collect(),
                watchers: g.watchers.clone(),
                required: g.required_approvals,
                distinct_groups: g.distinct_groups,
                max_duration: g.max_duration_minutes,
                pending_deadline: g.pending_deadline_minutes,
                elevation: g.elevation.as_str(),
                warnings,
            }
        })
        .collect();
    let c = chrome(&state, &s);
    render(GuardsPage {
        me: c.me,
        csrf: c.csrf,
        dev: c.dev,
        guards,
    })
}

// ---- demo outbox ----------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "outbox.html")]
struct OutboxPage {
    me: Option<Me>,
    csrf: String,
    dev: bool,
    mails: Vec<NotificationRow>,
}

async fn outbox(State(state): State<AppState>, MaybeSession(s): MaybeSession) -> Response {
    // SECURITY: the outbox shows every review link; it exists only with the dev sign-in,
    // which itself only listens on loopback.
    if state.svc.config.auth.mode != AuthMode::Dev {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mails = match state.svc.store.list_notifications(500).await {
        Ok(m) => m,
        Err(e) => return service_error_page(&state, &s, e.into()),
    };
    let c = chrome(&state, &s);
    render(OutboxPage {
        me: c.me,
        csrf: c.csrf,
        dev: c.dev,
        mails,
    })
}

#[derive(Template)]
#[template(path = "outbox_message.html")]
struct OutboxMessage {
    me: Option<Me>,
    csrf: String,
    dev: bool,
    m: NotificationRow,
    links: Vec<String>,
}

async fn outbox_message(
    State(state): State<AppState>,
    MaybeSession(s): MaybeSession,
    Path(id): Path<String>,
) -> Response {
    if state.svc.config.auth.mode != AuthMode::Dev {
        return StatusCode::NOT_FOUND.into_response();
    }
    let m = match state.svc.store.get_notification(&id).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            return message(
                &state,
                &s,
                StatusCode::NOT_FOUND,
                "No such message",
                "",
                "bad",
                Some(("/dev/outbox", "Outbox")),
            );
        }
        Err(e) => return service_error_page(&state, &s, e.into()),
    };
    let base = state.svc.public_base();
    let links = m
        .body
        .split_whitespace()
        .filter(|w| w.starts_with(&base))
        .map(|w| w.trim_end_matches(['.', ',', ')']).to_string())
        .collect();
    let c = chrome(&state, &s);
    render(OutboxMessage {
        me: c.me,
        csrf: c.csrf,
        dev: c.dev,
        m,
        links,
    })
}
