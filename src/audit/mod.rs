//! The audit log: an append-only, hash-chained record of every step. Events are appended in
//! the transaction of the change they describe (so there is never a change without its event,
//! nor an event for a change that rolled back).
//!
//! Chain: `hash = hex(SHA-256(prev_hash ‖ canonical_json(event)))`, with `prev_hash` of the
//! first event = 64 zeros. Canonical JSON is serde_json's compact form of an object whose keys
//! are sorted (at every depth), times in `crate::timefmt` form, integers only; see the README.

use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::store::{AuditRow, StoreError, Tx};
use crate::timefmt;

/// The `prev_hash` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Audit actions (contract: DESIGN.md "Audit log").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Action {
    RequestCreated,
    RequestCancelled,
    RequestExpired,
    ReviewOpened,
    DecisionApproved,
    DecisionDenied,
    GrantRequested,
    GrantActive,
    GrantFailed,
    GrantEnded,
    TokenRejected,
    AuthSignedIn,
    AuthFailed,
    PolicyLoaded,
    AlertReceived,
    NotificationSent,
    NotificationFailed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestCreated => "request.created",
            Self::RequestCancelled => "request.cancelled",
            Self::RequestExpired => "request.expired",
            Self::ReviewOpened => "review.opened",
            Self::DecisionApproved => "decision.approved",
            Self::DecisionDenied => "decision.denied",
            Self::GrantRequested => "grant.requested",
            Self::GrantActive => "grant.active",
            Self::GrantFailed => "grant.failed",
            Self::GrantEnded => "grant.ended",
            Self::TokenRejected => "token.rejected",
            Self::AuthSignedIn => "auth.signed_in",
            Self::AuthFailed => "auth.failed",
            Self::PolicyLoaded => "policy.loaded",
            Self::AlertReceived => "alert.received",
            Self::NotificationSent => "notification.sent",
            Self::NotificationFailed => "notification.failed",
        }
    }
}

/// Who did it, as far as we know. All `None` means twokey itself (a worker or a timer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Actor {
    pub id: Option<String>,
    pub email: Option<String>,
    pub object_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Actor {
    pub fn system() -> Self {
        Self::default()
    }
}

/// The canonical JSON text of one event, exactly as hashed.
pub fn canonical_json(
    seq: i64,
    at: &str,
    action: &str,
    actor: &Actor,
    request_id: Option<&str>,
    details: &Value,
) -> String {
    // serde_json's `Value::Object` is a BTreeMap (no `preserve_order` feature), so keys come
    // out sorted at every depth; `to_string` is compact.
    json!({
        "seq": seq,
        "at": at,
        "action": action,
        "actor": {
            "id": actor.id,
            "email": actor.email,
            "object_id": actor.object_id,
            "ip": actor.ip,
            "user_agent": actor.user_agent,
        },
        "request_id": request_id,
        "details": details,
    })
    .to_string()
}

/// `hex(SHA-256(prev_hash ‖ canonical))`.
pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// Append one event in `tx`, chained to the current head. Returns its `seq`.
pub async fn record(
    tx: &mut Tx,
    now: OffsetDateTime,
    action: Action,
    actor: &Actor,
    request_id: Option<&str>,
    details: Value,
) -> Result<i64, StoreError> {
    let (head_seq, head_hash) = tx.audit_head().await?;
    let seq = head_seq + 1;
    let at = timefmt::fmt(now);
    // Re-serialize through Value so the stored text is canonical too.
    let details: Value = serde_json::from_str(&details.to_string()).expect("valid JSON");
    let canonical = canonical_json(seq, &at, action.as_str(), actor, request_id, &details);
    let hash = chain_hash(&head_hash, &canonical);
    tracing::info!(target: "audit", seq, action = action.as_str(), request_id, "audit event");
    tx.append_audit(&AuditRow {
        seq,
        at,
        action: action.as_str().to_string(),
        actor_id: actor.id.clone(),
        actor_email: actor.email.clone(),
        actor_object_id: actor.object_id.clone(),
        actor_ip: actor.ip.clone(),
        actor_user_agent: actor.user_agent.clone(),
        request_id: request_id.map(str::to_string),
        details: details.to_string(),
        prev_hash: head_hash,
        hash: hash.clone(),
    })
    .await?;
    Ok(seq)
}

/// Where and why the chain broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("seq {seq}: missing (expected {seq}, found {found})")]
    Missing { seq: i64, found: i64 },
    #[error("seq {seq}: out of order (follows seq {after})")]
    Reordered { seq: i64, after: i64 },
    #[error("seq {seq}: prev_hash does not match the hash of seq {prev}")]
    Unlinked { seq: i64, prev: i64 },
    #[error("seq {seq}: edited (its hash does not match its content)")]
    Edited { seq: i64 },
    #[error("seq {seq}: details are not valid JSON")]
    BadDetails { seq: i64 },
    #[error(
        "seq {seq}: missing at the end (the chain head is at seq {head}, the last row is {last})"
    )]
    Truncated { seq: i64, head: i64, last: i64 },
}

impl ChainError {
    pub fn seq(&self) -> i64 {
        match self {
            Self::Missing { seq, .. }
            | Self::Reordered { seq, .. }
            | Self::Unlinked { seq, .. }
            | Self::Edited { seq }
            | Self::BadDetails { seq }
            | Self::Truncated { seq, .. } => *seq,
        }
    }
}

/// Walks a chain one row at a time (constant memory), reporting the first break.
#[derive(Debug, Default)]
pub struct Verifier {
    last_seq: i64,
    last_hash: Option<String>,
    pub count: u64,
}

impl Verifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Check the next row in order.
    pub fn push(&mut self, row: &AuditRow) -> Result<(), ChainError> {
        let expected = self.last_seq + 1;
        if row.seq < expected {
            return Err(ChainError::Reordered {
                seq: row.seq,
                after: self.last_seq,
            });
        }
        if row.seq > expected {
            return Err(ChainError::Missing {
                seq: expected,
                found: row.seq,
            });
        }
        let prev = self.last_hash.as_deref().unwrap_or(GENESIS);
        if row.prev_hash != prev {
            return Err(ChainError::Unlinked {
                seq: row.seq,
                prev: self.last_seq,
            });
        }
        let details: Value = serde_json::from_str(&row.details)
            .map_err(|_| ChainError::BadDetails { seq: row.seq })?;
        let actor = Actor {
            id: row.actor_id.clone(),
            email: row.actor_email.clone(),
            object_id: row.actor_object_id.clone(),
            ip: row.actor_ip.clone(),
            user_agent: row.actor_user_agent.clone(),
        };
        let canonical = canonical_json(
            row.seq,
            &row.at,
            &row.action,
            &actor,
            row.request_id.as_deref(),
            &details,
        );
        if chain_hash(prev, &canonical) != row.hash {
            return Err(ChainError::Edited { seq: row.seq });
        }
        self.last_seq = row.seq;
        self.last_hash = Some(row.hash.clone());
        self.count += 1;
        Ok(())
    }

    /// After the last row: the head (from the database) must point at it.
    pub fn finish(&self, head_seq: i64, head_hash: &str) -> Result<(), ChainError> {
        if head_seq != self.last_seq || self.last_hash.as_deref().unwrap_or(GENESIS) != head_hash {
            return Err(ChainError::Truncated {
                seq: self.last_seq + 1,
                head: head_seq,
                last: self.last_seq,
            });
        }
        Ok(())
    }

    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, prev: &str, details: &str) -> AuditRow {
        let actor = Actor {
            id: Some("p1".into()),
            ..Actor::default()
        };
        let d: Value = serde_json::from_str(details).unwrap();
        let at = "2026-12-03T12:00:00.000000Z";
        let canonical = canonical_json(seq, at, "request.created", &actor, Some("r1"), &d);
        AuditRow {
            seq,
            at: at.into(),
            action: "request.created".into(),
            actor_id: Some("p1".into()),
            actor_email: None,
            actor_object_id: None,
            actor_ip: None,
            actor_user_agent: None,
            request_id: Some("r1".into()),
            details: d.to_string(),
            prev_hash: prev.into(),
            hash: chain_hash(prev, &canonical),
        }
    }

    fn chain(n: i64) -> Vec<AuditRow> {
        let mut out: Vec<AuditRow> = Vec::new();
        for seq in 1..=n {
            let prev = out.last().map(|r| r.hash.clone()).unwrap_or(GENESIS.into());
            out.push(row(
                seq,
                &prev,
                &format!(r#"{{"n":{seq},"b":"x","a":[1,2]}}"#),
            ));
        }
        out
    }

    fn verify(rows: &[AuditRow]) -> Result<(), ChainError> {
        let mut v = Verifier::new();
        for r in rows {
            v.push(r)?;
        }
        let last = rows.last().unwrap();
        v.finish(last.seq, &last.hash)
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let s = canonical_json(
            1,
            "t",
            "a",
            &Actor::default(),
            None,
            &serde_json::from_str(r#"{"z":1,"a":{"y":2,"b":3}}"#).unwrap(),
        );
        assert_eq!(
            s,
            r#"{"action":"a","actor":{"email":null,"id":null,"ip":null,"object_id":null,"user_agent":null},"at":"t","details":{"a":{"b":3,"y":2},"z":1},"request_id":null,"seq":1}"#
        );
    }

    #[test]
    fn a_whole_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(()));
    }

    #[test]
    fn an_edit_names_its_seq() {
        let mut c = chain(5);
        c[2].details = r#"{"n":999}"#.into();
        assert_eq!(verify(&c), Err(ChainError::Edited { seq: 3 }));
        let mut c = chain(5);
        c[1].actor_id = Some("mallory".into());
        assert_eq!(verify(&c), Err(ChainError::Edited { seq: 2 }));
    }

    #[test]
    fn a_deletion_names_the_missing_seq() {
        let mut c = chain(5);
        c.remove(3);
        assert_eq!(verify(&c), Err(ChainError::Missing { seq: 4, found: 5 }));
    }

    #[test]
    fn a_deleted_tail_is_caught_by_the_head() {
        let c = chain(5);
        let mut v = Verifier::new();
        for r in &c[..4] {
            v.push(r).unwrap();
        }
        assert_eq!(
            v.finish(5, &c[4].hash),
            Err(ChainError::Truncated {
                seq: 5,
                head: 5,
                last: 4
            })
        );
    }

    #[test]
    fn reordering_is_caught() {
        let mut c = chain(5);
        c.swap(1, 2);
        assert!(matches!(
            verify(&c),
            Err(ChainError::Missing { seq: 2, .. })
        ));
    }

    #[test]
    fn a_rewritten_suffix_still_breaks_at_the_head_link() {
        // Re-hashing rows 3.. after an edit gives a self-consistent suffix, but row 3's
        // prev_hash must then be changed too, which breaks the link to row 2.
        let mut c = chain(5);
        let forged = row(3, "f".repeat(64).as_str(), r#"{"n":3}"#);
        c[2] = forged;
        assert_eq!(verify(&c), Err(ChainError::Unlinked { seq: 3, prev: 2 }));
    }
}
