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

pub mod checkpoint;
pub mod cli;
pub mod export;
pub mod ocsf;
pub mod verify;

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
    /// A suspicious-activity rule fired (`details.rule`); twokey's own, beside the contract's names.
    AlertRaised,
    NotificationSent,
    NotificationFailed,
    /// The posture report's findings changed (README "Posture").
    PostureChanged,
}

impl Action {
    /// Every action, in the order of DESIGN.md's list.
    pub const ALL: [Action; 19] = [
        Self::RequestCreated,
        Self::RequestCancelled,
        Self::RequestExpired,
        Self::ReviewOpened,
        Self::DecisionApproved,
        Self::DecisionDenied,
        Self::GrantRequested,
        Self::GrantActive,
        Self::GrantFailed,
        Self::GrantEnded,
        Self::TokenRejected,
        Self::AuthSignedIn,
        Self::AuthFailed,
        Self::PolicyLoaded,
        Self::AlertReceived,
        Self::AlertRaised,
        Self::NotificationSent,
        Self::NotificationFailed,
        Self::PostureChanged,
    ];

    /// The action with this contract name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

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
            Self::PostureChanged => "posture.changed",
            Self::AlertReceived => "alert.received",
            Self::AlertRaised => "alert.raised",
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
    let (head_seq, head_hash) = tx.audit_head();
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

/// Write the canonical JSON of `row` into `out`, taking `row.details` as it is stored.
///
/// When the stored details are canonical (as [`record`] writes them) this is byte for byte
/// [`canonical_json`], without parsing the details: the verifier's fast path. When a hash
/// computed this way matches, the stored text is the text that was hashed; when it does not,
/// the verifier falls back to parsing (the details may have been re-spelled, not edited).
pub fn canonical_into(out: &mut Vec<u8>, seq: i64, row: &AuditRow, details: &str) {
    fn s(out: &mut Vec<u8>, v: &str) {
        serde_json::to_writer(&mut *out, v).expect("writing to a Vec cannot fail");
    }
    fn o(out: &mut Vec<u8>, v: &Option<String>) {
        match v {
            Some(v) => s(out, v),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b"{\"action\":");
    s(out, &row.action);
    out.extend_from_slice(b",\"actor\":{\"email\":");
    o(out, &row.actor_email);
    out.extend_from_slice(b",\"id\":");
    o(out, &row.actor_id);
    out.extend_from_slice(b",\"ip\":");
    o(out, &row.actor_ip);
    out.extend_from_slice(b",\"object_id\":");
    o(out, &row.actor_object_id);
    out.extend_from_slice(b",\"user_agent\":");
    o(out, &row.actor_user_agent);
    out.extend_from_slice(b"},\"at\":");
    s(out, &row.at);
    out.extend_from_slice(b",\"details\":");
    out.extend_from_slice(details.as_bytes());
    out.extend_from_slice(b",\"request_id\":");
    o(out, &row.request_id);
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.push(b'}');
}

/// `hex(SHA-256(prev_hash ‖ canonical))` of `row` as if it had `seq`, reusing `buf`.
fn row_hash(buf: &mut Vec<u8>, seq: i64, row: &AuditRow, details: &str) -> String {
    buf.clear();
    canonical_into(buf, seq, row, details);
    let mut h = Sha256::new();
    h.update(row.prev_hash.as_bytes());
    h.update(&buf[..]);
    hex::encode(h.finalize())
}

/// For each row, whether its hash matches its content as stored (the fast path of
/// [`Verifier`]; `false` only means the slow path must look), spread over the machine's cores.
fn fast_content_checks(rows: &[AuditRow]) -> Vec<bool> {
    let check = |rows: &[AuditRow]| -> Vec<bool> {
        let mut buf = Vec::with_capacity(1024);
        rows.iter()
            .map(|r| row_hash(&mut buf, r.seq, r, &r.details) == r.hash)
            .collect()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads == 1 || rows.len() < 64 {
        return check(rows);
    }
    let per = rows.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = rows
            .chunks(per)
            .map(|c| s.spawn(move || check(c)))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("a hashing thread panicked"))
            .collect()
    })
}

/// How far from its own `seq` the verifier looks for the place a moved row was written at.
const MOVED_WINDOW: i64 = 1_000;

/// Where and why the chain broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("seq {seq}: missing (expected {seq}, found {found})")]
    Missing { seq: i64, found: i64 },
    #[error("seq {seq}: reordered (it comes after seq {after})")]
    Reordered { seq: i64, after: i64 },
    #[error(
        "seq {seq}: reordered (this row holds the event written as seq {written_as}, moved here)"
    )]
    Moved { seq: i64, written_as: i64 },
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
    #[error(
        "seq {seq}: missing at the end (truncated: the signed checkpoint vouches for seq {checkpoint}, the log ends at seq {last})"
    )]
    BehindCheckpoint {
        seq: i64,
        checkpoint: i64,
        last: i64,
    },
    #[error("seq {seq}: edited or replaced (its hash differs from the signed checkpoint's)")]
    CheckpointMismatch { seq: i64 },
}

impl ChainError {
    pub fn seq(&self) -> i64 {
        match self {
            Self::Missing { seq, .. }
            | Self::Reordered { seq, .. }
            | Self::Moved { seq, .. }
            | Self::Unlinked { seq, .. }
            | Self::Edited { seq }
            | Self::BadDetails { seq }
            | Self::Truncated { seq, .. }
            | Self::BehindCheckpoint { seq, .. }
            | Self::CheckpointMismatch { seq } => *seq,
        }
    }
}

/// What a walk found, when nothing was broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every event from seq 1 to `last_seq`, each linked to the one before.
    Whole { count: u64, last_seq: i64 },
    /// An export with gaps (a filter, or lines deleted: a file cannot tell which). Each event's
    /// own hash matches its content, adjacent events are linked, nothing is out of order.
    Partial {
        count: u64,
        first_seq: i64,
        last_seq: i64,
        /// Missing seq ranges (inclusive), the first few.
        missing: Vec<(i64, i64)>,
        /// How many ranges are missing in all.
        gaps: u64,
        /// The checkpoint's seq is in a gap, so this export cannot confirm it.
        checkpoint_not_covered: bool,
    },
}

/// Walks a chain one row at a time (constant memory), reporting the first break.
///
/// Two modes. [`Verifier::new`] (the database): rows must run 1, 2, 3 … with no gap. [`Verifier::for_export`]
/// (a file that may be filtered): a gap is recorded, not an error; across a gap the link
/// cannot be checked, so there each row is checked against its own `prev_hash` only.
#[derive(Debug, Default)]
pub struct Verifier {
    allow_gaps: bool,
    last_seq: i64,
    last_hash: Option<String>,
    first_seq: Option<i64>,
    missing: Vec<(i64, i64)>,
    gaps: u64,
    checkpoint: Option<(i64, String)>,
    checkpoint_seen: bool,
    buf: Vec<u8>,
    pub count: u64,
}

impl Verifier {
    /// A verifier for the whole chain (the database).
    pub fn new() -> Self {
        Self::default()
    }

    /// A verifier for an export, which may have gaps (see [`Outcome::Partial`]).
    pub fn for_export() -> Self {
        Self {
            allow_gaps: true,
            ..Self::default()
        }
    }

    /// Also require that the event at `seq` has `hash` (from a signed checkpoint).
    pub fn with_checkpoint(mut self, seq: i64, hash: &str) -> Self {
        self.checkpoint = Some((seq, hash.to_string()));
        self
    }

    /// Check the next row in order.
    pub fn push(&mut self, row: &AuditRow) -> Result<(), ChainError> {
        self.push_checked(row, None)
    }

    /// Check the next rows in order, stopping at the first break. The rows' own hashes (the
    /// costly part: one SHA-256 each, independent of the other rows) are checked on all
    /// cores first; linking, order and gaps are then walked in order as in [`Self::push`].
    pub fn push_batch(&mut self, rows: &[AuditRow]) -> Result<(), ChainError> {
        let fast = fast_content_checks(rows);
        for (row, ok) in rows.iter().zip(fast) {
            self.push_checked(row, Some(ok))?;
        }
        Ok(())
    }

    /// [`Self::push`], with the fast-path content check already done when `fast` is given.
    fn push_checked(&mut self, row: &AuditRow, fast: Option<bool>) -> Result<(), ChainError> {
        let expected = self.last_seq + 1;
        if row.seq < expected {
            return Err(ChainError::Reordered {
                seq: row.seq,
                after: self.last_seq,
            });
        }
        let linked = row.seq == expected;
        if !linked {
            if !self.allow_gaps {
                return Err(ChainError::Missing {
                    seq: expected,
                    found: row.seq,
                });
            }
            self.gaps += 1;
            if self.missing.len() < 10 {
                self.missing.push((expected, row.seq - 1));
            }
        }
        if linked {
            let prev = self.last_hash.as_deref().unwrap_or(GENESIS);
            if row.prev_hash != prev {
                return Err(self.diagnose(
                    row,
                    ChainError::Unlinked {
                        seq: row.seq,
                        prev: self.last_seq,
                    },
                ));
            }
        }
        let matches = match fast {
            Some(true) => true,
            _ => self.content_matches(row)?,
        };
        if !matches {
            return Err(self.diagnose(row, ChainError::Edited { seq: row.seq }));
        }
        if let Some((cp_seq, cp_hash)) = &self.checkpoint
            && *cp_seq == row.seq
        {
            if *cp_hash != row.hash {
                return Err(ChainError::CheckpointMismatch { seq: row.seq });
            }
            self.checkpoint_seen = true;
        }
        self.first_seq.get_or_insert(row.seq);
        self.last_seq = row.seq;
        self.last_hash = Some(row.hash.clone());
        self.count += 1;
        Ok(())
    }

    /// Whether `row.hash` is the hash of its content chained to its own `prev_hash`.
    fn content_matches(&mut self, row: &AuditRow) -> Result<bool, ChainError> {
        if row_hash(&mut self.buf, row.seq, row, &row.details) == row.hash {
            return Ok(true);
        }
        // Slow path: the stored details may be valid but not spelled canonically.
        let details: Value = serde_json::from_str(&row.details)
            .map_err(|_| ChainError::BadDetails { seq: row.seq })?;
        Ok(row_hash(&mut self.buf, row.seq, row, &details.to_string()) == row.hash)
    }

    /// A row that does not fit where it stands: was it written elsewhere in the chain and
    /// moved here (its content, with another seq, still matches its own hash)?
    fn diagnose(&mut self, row: &AuditRow, err: ChainError) -> ChainError {
        let details = match serde_json::from_str::<Value>(&row.details) {
            Ok(d) => d.to_string(),
            Err(_) => return err,
        };
        let lo = (row.seq - MOVED_WINDOW).max(1);
        for s in lo..=row.seq + MOVED_WINDOW {
            if s != row.seq && row_hash(&mut self.buf, s, row, &details) == row.hash {
                return ChainError::Moved {
                    seq: row.seq,
                    written_as: s,
                };
            }
        }
        err
    }

    fn check_checkpoint_reached(&self) -> Result<bool, ChainError> {
        match &self.checkpoint {
            Some((cp_seq, _)) if !self.checkpoint_seen => {
                if self.last_seq < *cp_seq {
                    return Err(ChainError::BehindCheckpoint {
                        seq: self.last_seq + 1,
                        checkpoint: *cp_seq,
                        last: self.last_seq,
                    });
                }
                Ok(false)
            }
            _ => Ok(true),
        }
    }

    /// After the last row: the head (from the database) must point at it.
    pub fn finish(&self, head_seq: i64, head_hash: &str) -> Result<Outcome, ChainError> {
        if head_seq != self.last_seq || self.last_hash.as_deref().unwrap_or(GENESIS) != head_hash {
            return Err(ChainError::Truncated {
                seq: self.last_seq + 1,
                head: head_seq,
                last: self.last_seq,
            });
        }
        self.check_checkpoint_reached()?;
        Ok(Outcome::Whole {
            count: self.count,
            last_seq: self.last_seq,
        })
    }

    /// After the last line of an export: whole (from seq 1, no gap) or partial.
    pub fn finish_export(&self) -> Result<Outcome, ChainError> {
        let covered = self.check_checkpoint_reached()?;
        if self.gaps == 0 && self.first_seq.unwrap_or(1) == 1 {
            return Ok(Outcome::Whole {
                count: self.count,
                last_seq: self.last_seq,
            });
        }
        Ok(Outcome::Partial {
            count: self.count,
            first_seq: self.first_seq.unwrap_or(0),
            last_seq: self.last_seq,
            missing: self.missing.clone(),
            gaps: self.gaps,
            checkpoint_not_covered: !covered,
        })
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
        v.finish(last.seq, &last.hash).map(|_| ())
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

    #[test]
    fn a_row_moved_to_another_seq_is_reported_as_reordered() {
        // Swapping two rows' seq numbers in the table: the row now at seq 3 is the event that
        // was written as seq 4.
        let mut c = chain(6);
        let (a, b) = (c[2].clone(), c[3].clone());
        c[2] = AuditRow { seq: 3, ..b };
        c[3] = AuditRow { seq: 4, ..a };
        assert_eq!(
            verify(&c),
            Err(ChainError::Moved {
                seq: 3,
                written_as: 4
            })
        );
    }

    #[test]
    fn an_export_with_gaps_is_partial_and_still_checks_each_row() {
        let c = chain(8);
        let mut v = Verifier::for_export();
        for i in [1usize, 2, 5, 6] {
            v.push(&c[i]).unwrap();
        }
        assert_eq!(
            v.finish_export(),
            Ok(Outcome::Partial {
                count: 4,
                first_seq: 2,
                last_seq: 7,
                missing: vec![(1, 1), (4, 5)],
                gaps: 2,
                checkpoint_not_covered: false,
            })
        );
        let mut edited = c[6].clone();
        edited.details = r#"{"n":1}"#.into();
        let mut v = Verifier::for_export();
        v.push(&c[0]).unwrap();
        assert_eq!(v.push(&edited), Err(ChainError::Edited { seq: 7 }));
    }

    #[test]
    fn lines_out_of_order_in_an_export_are_reordered() {
        let c = chain(5);
        let mut v = Verifier::for_export();
        v.push(&c[0]).unwrap();
        v.push(&c[2]).unwrap();
        assert_eq!(
            v.push(&c[1]),
            Err(ChainError::Reordered { seq: 2, after: 3 })
        );
    }

    #[test]
    fn a_checkpoint_past_the_end_means_truncation() {
        let c = chain(5);
        let mut v = Verifier::new().with_checkpoint(5, &c[4].hash);
        for r in &c[..3] {
            v.push(r).unwrap();
        }
        // Whoever cut rows 4 and 5 also moved the head back to 3.
        assert_eq!(
            v.finish(3, &c[2].hash),
            Err(ChainError::BehindCheckpoint {
                seq: 4,
                checkpoint: 5,
                last: 3
            })
        );
        let mut v = Verifier::new().with_checkpoint(2, &"f".repeat(64));
        v.push(&c[0]).unwrap();
        assert_eq!(
            v.push(&c[1]),
            Err(ChainError::CheckpointMismatch { seq: 2 })
        );
    }

    #[test]
    fn details_spelled_differently_but_equal_still_verify() {
        let mut c = chain(2);
        c[1].details = r#"{ "b": "x", "a": [1, 2], "n": 2 }"#.into();
        assert_eq!(verify(&c), Ok(()));
    }

    #[test]
    fn a_batch_walk_finds_what_a_row_walk_finds() {
        let whole = chain(300);
        let mut v = Verifier::new();
        v.push_batch(&whole).unwrap();
        assert_eq!(
            v.finish(300, &whole[299].hash).unwrap(),
            Outcome::Whole {
                count: 300,
                last_seq: 300
            }
        );

        // An edit deep inside a batch (on another hashing thread than the first rows).
        let mut edited = whole.clone();
        edited[250].details = r#"{"n":9999}"#.into();
        assert_eq!(
            Verifier::new().push_batch(&edited),
            Err(ChainError::Edited { seq: 251 })
        );
        // Re-spelled but equal details take the slow path and still verify.
        let mut respelled = whole.clone();
        respelled[200].details = r#"{ "n" : 201, "a": [1, 2], "b": "x" }"#.into();
        let mut v = Verifier::new();
        assert_eq!(v.push_batch(&respelled), Ok(()));
        // A row missing from the middle of a batch.
        let mut gap = whole.clone();
        gap.remove(120);
        assert_eq!(
            Verifier::new().push_batch(&gap),
            Err(ChainError::Missing {
                seq: 121,
                found: 122
            })
        );
    }

    proptest::proptest! {
        #[test]
        fn the_fast_canonical_form_equals_canonical_json(
            seq in 1i64..1_000_000_000,
            action in "[a-z._]{1,20}",
            email in proptest::option::of("\\PC{0,20}"),
            ua in proptest::option::of("[ -~\u{80}-\u{10ffff}\u{0}-\u{1f}]{0,20}"),
            text in "\\PC{0,30}",
            n in proptest::num::i64::ANY,
        ) {
            let details = json!({ "z": text, "a": { "y": n, "b": [text, null, true] } });
            let actor = Actor { id: Some("p".into()), email: email.clone(), object_id: None, ip: None, user_agent: ua.clone() };
            let expected = canonical_json(seq, "2026-12-03T12:00:00.000000Z", &action, &actor, Some("r"), &details);
            let row = AuditRow {
                seq, at: "2026-12-03T12:00:00.000000Z".into(), action: action.clone(),
                actor_id: Some("p".into()), actor_email: email, actor_object_id: None,
                actor_ip: None, actor_user_agent: ua, request_id: Some("r".into()),
                details: details.to_string(), prev_hash: GENESIS.into(), hash: String::new(),
            };
            let mut out = Vec::new();
            canonical_into(&mut out, seq, &row, &row.details);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }
}
