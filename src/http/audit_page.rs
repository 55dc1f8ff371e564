//! The auditor's page: filter the audit log by time, request, actor and action, read the
//! matching events, download them (CSV, JSON Lines, OCSF) and check the hash chain.

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::StreamExt;

use super::AppState;
use super::extract::MaybeSession;
use super::pages::{Me, chrome_for, login_redirect_to, message_page, render_page};
use crate::audit::Outcome;
use crate::audit::export::FilterInput;

/// How many of the newest matching events the page lists (downloads have them all).
const SHOWN: usize = 200;

struct Row {
    seq: i64,
    at: String,
    action: String,
    actor: String,
    request_id: String,
    details: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    me: Option<Me>,
    csrf: String,
    dev: bool,
    f: FilterInput,
    actions: Vec<&'static str>,
    rows: Vec<Row>,
    matching: i64,
    head_seq: i64,
    chain: Option<(bool, String)>,
    query: String,
    error: Option<String>,
}

/// `GET /audit` — auditors only.
pub async fn audit_page(
    State(state): State<AppState>,
    MaybeSession(s): MaybeSession,
    RawQuery(raw): RawQuery,
) -> Response {
    let Some(p) = s.as_ref().and_then(|s| s.principal.clone()) else {
        return login_redirect_to("/audit");
    };
    let svc = &state.svc;
    if !svc.is_auditor(&p) {
        return message_page(
            &state,
            &s,
            StatusCode::FORBIDDEN,
            "For auditors",
            "The audit log is shown to auditors (auth.auditors in the configuration).",
        );
    }
    let raw = raw.unwrap_or_default();
    let mut f = FilterInput::default();
    let mut verify = false;
    let mut kept: Vec<(String, String)> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        let v = v.trim().to_string();
        if v.is_empty() {
            continue;
        }
        match k.as_ref() {
            "since" => f.since = Some(v.clone()),
            "until" => f.until = Some(v.clone()),
            "request" => f.request = Some(v.clone()),
            "actor" => f.actor = Some(v.clone()),
            "action" => f.actions.push(v.clone()),
            "verify" => {
                verify = true;
                continue;
            }
            _ => continue,
        }
        kept.push((k.into_owned(), v));
    }
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(kept.iter())
        .finish();
    let head_seq = svc.store.audit_head().await.map(|h| h.0).unwrap_or(0);
    let chain = if verify {
        Some(
            match crate::audit::verify::verify_store(&svc.store, None).await {
                Ok(Ok(Outcome::Whole { count, last_seq })) => (
                    true,
                    format!("Verified: the chain is whole, {count} events up to seq {last_seq}."),
                ),
                Ok(Ok(other)) => (false, format!("Not whole: {other:?}")),
                Ok(Err(e)) => (false, format!("BROKEN at seq {}: {e}", e.seq())),
                Err(e) => (false, format!("Could not read the log: {e}")),
            },
        )
    } else {
        None
    };
    let actions = ACTIONS.to_vec();
    let (rows, matching, error) = match f.to_query() {
        Err(e) => (Vec::new(), 0, Some(format!("{}: {}", e.field, e.message))),
        Ok(q) => {
            let matching = svc.store.count_audit_matching(&q).await.unwrap_or(0);
            // Keep only the newest SHOWN rows while streaming: constant memory.
            let mut newest: std::collections::VecDeque<Row> =
                std::collections::VecDeque::with_capacity(SHOWN);
            let mut batches = svc.store.audit_batches(&q);
            while let Some(batch) = batches.next().await {
                let Ok(batch) = batch else { break };
                for r in batch {
                    if newest.len() == SHOWN {
                        newest.pop_front();
                    }
                    newest.push_back(Row {
                        seq: r.seq,
                        at: r.at,
                        action: r.action,
                        actor: r
                            .actor_email
                            .or(r.actor_id)
                            .unwrap_or_else(|| "twokey".into()),
                        request_id: r.request_id.unwrap_or_default(),
                        details: r.details.chars().take(300).collect(),
                    });
                }
            }
            (newest.into_iter().rev().collect(), matching, None)
        }
    };
    let c = chrome_for(&state, &s);
    render_page(AuditPage {
        me: c.0,
        csrf: c.1,
        dev: c.2,
        f,
        actions,
        rows,
        matching,
        head_seq,
        chain,
        query,
        error,
    })
}

const ACTIONS: [&str; 19] = [
    "request.created",
    "request.cancelled",
    "request.expired",
    "review.opened",
    "decision.approved",
    "decision.denied",
    "grant.requested",
    "grant.active",
    "grant.failed",
    "grant.ended",
    "token.rejected",
    "auth.signed_in",
    "auth.failed",
    "policy.loaded",
    "alert.received",
    "alert.raised",
    "notification.sent",
    "notification.failed",
    "posture.changed",
];
