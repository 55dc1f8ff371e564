//! The Posture page (auditors and admins): the last report of every guard — its vaults, what
//! it does not protect, and each finding with its fix — and a button that queues a run now.
//! It shows the stored report (the same model `twokey posture --json` prints); it never calls
//! Azure while a page is being served.

use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::AppState;
use super::extract::MaybeSession;
use super::pages::{
    Me, chrome_for, csrf_failed, csrf_ok, login_redirect_to, message_page, render_page,
};
use crate::domain::posture::PostureReport;

#[derive(Template)]
#[template(path = "posture.html")]
struct PosturePage {
    me: Option<Me>,
    csrf: String,
    dev: bool,
    report: Option<PostureReport>,
    queued: bool,
    red: usize,
    /// `2026-12-03 06:00 UTC`
    generated: String,
}

#[derive(Deserialize, Default)]
pub struct PostureQuery {
    #[serde(default)]
    queued: Option<String>,
}

fn forbidden(state: &AppState, s: &Option<crate::auth::session::Session>) -> Response {
    message_page(
        state,
        s,
        StatusCode::FORBIDDEN,
        "For auditors and admins",
        "The posture report is shown to auditors and admins (auth.auditors, auth.admins in the configuration).",
    )
}

/// `GET /posture`
pub async fn posture_page(
    State(state): State<AppState>,
    MaybeSession(s): MaybeSession,
    Query(q): Query<PostureQuery>,
) -> Response {
    let Some(p) = s.as_ref().and_then(|s| s.principal.clone()) else {
        return login_redirect_to("/posture");
    };
    if !state.svc.is_auditor(&p) {
        return forbidden(&state, &s);
    }
    let report = match state.svc.last_posture().await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "posture page");
            return message_page(
                &state,
                &s,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The posture report could not be read. Try again.",
            );
        }
    };
    let red = report.as_ref().map(|r| r.red_count()).unwrap_or(0);
    let generated = report
        .as_ref()
        .map(|r| {
            let t = &r.generated_at;
            match (t.get(..10), t.get(11..16)) {
                (Some(d), Some(h)) => format!("{d} {h} UTC"),
                _ => t.clone(),
            }
        })
        .unwrap_or_default();
    let (me, csrf, dev) = chrome_for(&state, &s);
    render_page(PosturePage {
        generated,
        me,
        csrf,
        dev,
        report,
        queued: q.queued.is_some(),
        red,
    })
}

#[derive(Deserialize)]
pub struct RunForm {
    csrf: String,
}

/// `POST /posture/run` — queue a run now (the worker does it; the page shows it when done).
pub async fn posture_run(
    State(state): State<AppState>,
    MaybeSession(s): MaybeSession,
    Form(f): Form<RunForm>,
) -> Response {
    let Some(p) = s.as_ref().and_then(|s| s.principal.clone()) else {
        return login_redirect_to("/posture");
    };
    if !csrf_ok(&s, &f.csrf) {
        return csrf_failed(&state, &s);
    }
    if !state.svc.is_auditor(&p) {
        return forbidden(&state, &s);
    }
    if let Err(e) = state.svc.request_posture_run().await {
        tracing::error!(error = %e, "posture run");
        return message_page(
            &state,
            &s,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "The run could not be queued. Try again.",
        );
    }
    Redirect::to("/posture?queued=1").into_response()
}
