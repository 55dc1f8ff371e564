//! The JSON API under `/api/v1` (DESIGN.md "JSON API"). Handlers are thin: extract, check the
//! permission named in their doc comment, call the service, serialize.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiCaller, ApiJson};
use crate::domain::operations::{self, GUARD_SCOPE_NOTE, IMMUTABILITY_NOTE, SOFT_DELETE_NOTE};
use crate::domain::request::{NewRequestInput, RequestState, Verdict};
use crate::service::{Channel, RequestView};

/// Largest id we look up; anything longer is not one of ours.
const MAX_ID: usize = 64;

fn check_id(id: &str) -> ApiResult<()> {
    if id.is_empty() || id.len() > MAX_ID || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
    {
        return Err(ApiError::not_found());
    }
    Ok(())
}

/// `GET /session` — who is signed in. Permission: signed in.
pub async fn get_session(State(state): State<AppState>, me: ApiCaller) -> Json<Value> {
    let p = &me.caller.principal;
    let svc = &state.svc;
    let mut roles = vec!["requester"];
    if !svc.guards_approved_by(p).is_empty() {
        roles.push("approver");
    }
    if svc.is_auditor(p) {
        roles.push("auditor");
    }
    if svc.is_admin(p) {
        roles.push("admin");
    }
    Json(json!({
        "principal": { "id": p.id, "email": p.email, "name": p.name, "azure_object_id": p.azure_object_id, "groups": p.groups },
        "roles": roles,
        "auth": if me.session.is_some() { "session" } else { "bearer" },
        // A bearer call needs no CSRF token, and has none.
        "csrf_token": me.session.as_ref().map(|s| s.csrf_token.clone()),
        "notice": me.notice,
    }))
}

/// `GET /operations` — the catalogue. Permission: none (it is documentation).
pub async fn list_operations() -> Json<Value> {
    Json(json!({
        "operations": operations::catalogue(),
        "notes": {
            "guard_scope": GUARD_SCOPE_NOTE,
            "immutability": IMMUTABILITY_NOTE,
            "soft_delete": SOFT_DELETE_NOTE,
        }
    }))
}

/// `GET /guards` — the guards the caller may request against or approve for. Permission:
/// signed in; auditors and admins see every guard.
pub async fn list_guards(State(state): State<AppState>, me: ApiCaller) -> Json<Value> {
    let p = &me.caller.principal;
    let svc = &state.svc;
    let all = svc.is_auditor(p);
    let guards: Vec<Value> = svc
        .config
        .guards
        .iter()
        .filter_map(|g| {
            let can_request = g.may_request(p);
            let can_approve = !g.approver_entries_for(p).is_empty();
            (all || can_request || can_approve).then(|| {
                json!({
                    "name": g.name,
                    "resource_guard_id": g.resource_guard_id.to_string(),
                    "vaults": g.vaults.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
                    "approvers": g.approvers,
                    "watchers": g.watchers,
                    "required_approvals": g.required_approvals,
                    "distinct_groups": g.distinct_groups,
                    "operation_approvals": g.operation_approvals,
                    "max_duration_minutes": g.max_duration_minutes,
                    "default_duration_minutes": g.default_duration_minutes,
                    "pending_deadline_minutes": g.pending_deadline_minutes,
                    "elevation": g.elevation,
                    "role_definition_id": g.role_definition_id,
                    "approver_sign_in": g.approver_sign_in,
                    "policy_hash": g.hash(),
                    "can_request": can_request,
                    "can_approve": can_approve,
                })
            })
        })
        .collect();
    Json(json!({ "guards": guards }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRequestBody {
    vault_id: String,
    operation: String,
    justification: String,
    #[serde(default)]
    ticket: Option<String>,
    #[serde(default)]
    duration_minutes: Option<i64>,
    #[serde(default)]
    guard: Option<String>,
}

/// `POST /requests` — ask for one operation on one vault. Permission: signed in, and a
/// requester of the guard that covers the vault.
pub async fn create_request(
    State(state): State<AppState>,
    me: ApiCaller,
    ApiJson(body): ApiJson<NewRequestBody>,
) -> ApiResult<impl IntoResponse> {
    let view = state
        .svc
        .create_request(
            &me.caller,
            NewRequestInput {
                vault_id: body.vault_id,
                operation: body.operation,
                justification: body.justification,
                ticket: body.ticket,
                duration_minutes: body.duration_minutes,
                guard: body.guard,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        [(
            axum::http::header::LOCATION,
            format!("/api/v1/requests/{}", view.id),
        )],
        Json(view),
    ))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    role: Option<String>,
}

/// `GET /requests?state=&role=requester|approver|all` — my requests and those I may decide
/// on (`all`: every request, auditors only).
pub async fn list_requests(
    State(state): State<AppState>,
    me: ApiCaller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let st = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(RequestState::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "state",
                format!(
                    "`{}` is not a request state",
                    s.chars().take(40).collect::<String>()
                ),
            )
        })?),
    };
    let role = match q.role.as_deref() {
        None | Some("") => None,
        Some(r @ ("requester" | "approver")) => Some(r),
        Some("all") => {
            if !state.svc.is_auditor(&me.caller.principal) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "role=all is for auditors",
                ));
            }
            Some("all")
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "role",
                "must be requester, approver or all",
            ));
        }
    };
    let list: Vec<RequestView> = state.svc.list_for(&me.caller.principal, role, st).await?;
    Ok(Json(json!({ "requests": list })))
}

/// `GET /requests/{id}` — one request with its decisions and timeline. Permission: its
/// requester, the guard's approvers and watchers, auditors (others get 404).
pub async fn get_request(
    State(state): State<AppState>,
    me: ApiCaller,
    Path(id): Path<String>,
) -> ApiResult<Json<RequestView>> {
    check_id(&id)?;
    Ok(Json(state.svc.get_for(&me.caller.principal, &id).await?))
}

/// `POST /requests/{id}/cancel` — the requester withdraws a pending request.
pub async fn cancel_request(
    State(state): State<AppState>,
    me: ApiCaller,
    Path(id): Path<String>,
) -> ApiResult<Json<RequestView>> {
    check_id(&id)?;
    Ok(Json(state.svc.cancel(&me.caller, &id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    decision: String,
    #[serde(default)]
    comment: Option<String>,
}

/// `POST /requests/{id}/decision` — approve or deny. Permission: an approver of the guard,
/// not the requester, deciding once.
pub async fn decide_request(
    State(state): State<AppState>,
    me: ApiCaller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DecisionBody>,
) -> ApiResult<Json<RequestView>> {
    check_id(&id)?;
    let verdict = Verdict::parse(&body.decision)
        .ok_or_else(|| ApiError::invalid("decision", "must be \"approve\" or \"deny\""))?;
    Ok(Json(
        state
            .svc
            .decide(
                &me.caller,
                &id,
                verdict,
                body.comment.as_deref(),
                Channel::Api,
            )
            .await?,
    ))
}

/// `POST /requests/{id}/end` — end an active window early. Permission: the requester, an
/// approver of the guard, or an admin.
pub async fn end_request(
    State(state): State<AppState>,
    me: ApiCaller,
    Path(id): Path<String>,
) -> ApiResult<Json<RequestView>> {
    check_id(&id)?;
    Ok(Json(state.svc.end_early(&me.caller, &id).await?))
}

/// Unknown paths under `/api` answer in the API's format.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// `GET /audit?format=csv|jsonl|ocsf&since=&until=&request=&actor=&action=` — the audit log,
/// streamed (chunked, constant memory) in the order of the chain. `since` is inclusive, `until`
/// exclusive; `action` may repeat. Permission: auditors (and admins); others get 403.
pub async fn export_audit(
    State(state): State<AppState>,
    me: ApiCaller,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> ApiResult<axum::response::Response> {
    use crate::audit::export::{self, FilterInput, Format};
    use futures::StreamExt;

    if !state.svc.is_auditor(&me.caller.principal) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the audit log is for auditors",
        ));
    }
    let mut input = FilterInput::default();
    let mut format = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let v = v.into_owned();
        match k.as_ref() {
            "format" => {
                format = Some(
                    Format::parse(&v)
                        .ok_or_else(|| ApiError::invalid("format", "must be csv, jsonl or ocsf"))?,
                )
            }
            "since" => input.since = Some(v),
            "until" => input.until = Some(v),
            "request" => input.request = Some(v),
            "actor" => input.actor = Some(v),
            "action" => input.actions.push(v),
            _ => {}
        }
    }
    let format = format.unwrap_or(Format::Jsonl);
    let q = input
        .to_query()
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    let body = export::stream(&state.svc.store, &q, format).map(|chunk| {
        chunk
            .map(|c| axum::body::Bytes::from(c.bytes))
            .map_err(|e| {
                // The status line is gone by now: cutting the body is the only signal left.
                tracing::error!(error = %e, "audit export failed mid-stream");
                std::io::Error::other("audit export failed")
            })
    });
    let filename = format!(
        "twokey-audit-{}.{}",
        crate::timefmt::fmt(state.svc.now())
            .get(..19)
            .unwrap_or_default()
            .replace(':', ""),
        format.file_extension()
    );
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                format.content_type().to_string(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}
