//! The request as the API and the pages show it (DESIGN.md "JSON API").

use serde::Serialize;

use super::{Service, ServiceResult, parse_state};
use crate::domain::operations;
use crate::domain::request::RequestState;
use crate::store::{AuditRow, DecisionRow, RequestRow};

#[derive(Debug, Clone, Serialize)]
pub struct PersonView {
    pub id: String,
    pub email: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecisionView {
    pub approver: PersonView,
    pub decision: String,
    pub comment: Option<String>,
    pub at: String,
    pub channel: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    pub seq: i64,
    pub at: String,
    pub action: String,
    pub actor: Option<String>,
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestView {
    pub id: String,
    pub state: RequestState,
    pub guard: String,
    pub vault_id: String,
    pub operation: String,
    pub operation_title: String,
    pub operation_consequence: String,
    pub operation_reversible: bool,
    pub requester: PersonView,
    pub justification: String,
    pub ticket: Option<String>,
    pub duration_minutes: i64,
    pub required_approvals: i64,
    pub approvals: usize,
    pub created_at: String,
    pub deadline: String,
    pub decided_at: Option<String>,
    pub active_from: Option<String>,
    pub active_until: Option<String>,
    pub end_requested_at: Option<String>,
    pub ended_at: Option<String>,
    pub end_reason: Option<String>,
    pub failure_message: Option<String>,
    pub decisions: Vec<DecisionView>,
    pub timeline: Vec<TimelineEntry>,
}

pub(super) fn build(
    _svc: &Service,
    r: RequestRow,
    decisions: Vec<DecisionRow>,
    events: Vec<AuditRow>,
) -> ServiceResult<RequestView> {
    let op = operations::find(&r.operation);
    let decisions: Vec<DecisionView> = decisions
        .into_iter()
        .map(|d| DecisionView {
            approver: PersonView {
                id: d.approver_id,
                email: d.approver_email,
                name: d.approver_name,
            },
            decision: d.verdict,
            comment: d.comment,
            at: d.at,
            channel: d.channel,
        })
        .collect();
    Ok(RequestView {
        state: parse_state(&r.state)?,
        approvals: decisions.iter().filter(|d| d.decision == "approve").count(),
        id: r.request_id,
        guard: r.guard,
        vault_id: r.vault_id,
        operation_title: op.map(|o| o.title.to_string()).unwrap_or_default(),
        operation_consequence: op.map(|o| o.consequence.to_string()).unwrap_or_default(),
        operation_reversible: op.map(|o| o.reversible).unwrap_or(false),
        operation: r.operation,
        requester: PersonView {
            id: r.requester_id,
            email: r.requester_email,
            name: r.requester_name,
        },
        justification: r.justification,
        ticket: r.ticket,
        duration_minutes: r.duration_minutes,
        required_approvals: r.required_approvals,
        created_at: r.created_at,
        deadline: r.deadline,
        decided_at: r.decided_at,
        active_from: r.active_from,
        active_until: r.active_until,
        end_requested_at: r.end_requested_at,
        ended_at: r.ended_at,
        end_reason: r.end_reason,
        failure_message: r.failure_message,
        decisions,
        timeline: events
            .into_iter()
            .map(|e| TimelineEntry {
                seq: e.seq,
                at: e.at,
                action: e.action,
                actor: e.actor_email,
                details: serde_json::from_str(&e.details).unwrap_or(serde_json::Value::Null),
            })
            .collect(),
    })
}
