//! `twokey audit verify`: walk the chain in the database or in a JSON Lines export, optionally
//! against a signed checkpoint, and say in one line what was found.
//!
//! Rules for an export file (a file cannot say whether it was filtered, and anyone who can edit
//! it could also edit a note saying so):
//! - every event's `hash` must match its own content and `prev_hash`, and where two events are
//!   adjacent (seq n, n+1) the second's `prev_hash` must be the first's `hash`;
//! - events must be in increasing `seq` order;
//! - a file that starts at seq 1 with no gap is a **whole** chain (up to its last event: lines cut
//!   off at the end are only caught with `--checkpoint`);
//! - a file with gaps, or starting later, is a **partial** chain: not broken, not whole. It is
//!   what a filtered export looks like, and also what a file with deleted lines looks like, so
//!   it exits 3, not 0 (unless `--allow-partial`), and names the missing ranges.

use std::io::BufRead;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;

use super::checkpoint::Checkpoint;
use super::{ChainError, Outcome, Verifier};
use crate::store::{AuditQuery, AuditRow, Store, StoreError};

/// The result of a walk: an outcome, or the first break.
pub type Walk = Result<Outcome, ChainError>;

/// Verify the chain in the database up to its head (read first: rows appended during the walk
/// are left for next time).
pub async fn verify_store(
    store: &Store,
    checkpoint: Option<&Checkpoint>,
) -> Result<Walk, StoreError> {
    let (head_seq, head_hash) = store.audit_head().await?;
    let mut v = Verifier::new();
    if let Some(cp) = checkpoint {
        v = v.with_checkpoint(cp.seq, &cp.hash);
    }
    let mut batches = store.audit_batches(&AuditQuery::default());
    while let Some(batch) = batches.next().await {
        let mut batch = batch?;
        // Rows appended after the head was read are left for next time.
        let past_head = batch.last().is_some_and(|r| r.seq > head_seq);
        batch.retain(|r| r.seq <= head_seq);
        // Hashing is CPU work on all cores: off the async runtime's threads.
        let (back, pushed) = tokio::task::spawn_blocking(move || {
            let pushed = v.push_batch(&batch);
            (v, pushed)
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("verify task: {e}")))?;
        v = back;
        if let Err(e) = pushed {
            return Ok(Err(e));
        }
        if past_head {
            break;
        }
    }
    Ok(v.finish(head_seq, &head_hash))
}

/// A line of the file that is not an audit event.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("line {line}: not a twokey JSON Lines audit event ({message})")]
    BadLine { line: u64, message: String },
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Deserialize)]
struct LineActor {
    id: Option<String>,
    email: Option<String>,
    object_id: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
}

#[derive(Deserialize)]
struct Line {
    seq: i64,
    at: String,
    action: String,
    actor: LineActor,
    request_id: Option<String>,
    details: Value,
    prev_hash: String,
    hash: String,
}

/// Parse one JSON Lines export line into the row it came from.
pub fn parse_line(text: &str) -> Result<AuditRow, String> {
    let l: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(AuditRow {
        seq: l.seq,
        at: l.at,
        action: l.action,
        actor_id: l.actor.id,
        actor_email: l.actor.email,
        actor_object_id: l.actor.object_id,
        actor_ip: l.actor.ip,
        actor_user_agent: l.actor.user_agent,
        request_id: l.request_id,
        // Value's objects are sorted maps: this is the canonical spelling.
        details: l.details.to_string(),
        prev_hash: l.prev_hash,
        hash: l.hash,
    })
}

/// Verify a JSON Lines export (see the module doc for the rules).
pub fn verify_jsonl(
    reader: impl BufRead,
    checkpoint: Option<&Checkpoint>,
) -> Result<Walk, FileError> {
    let mut v = Verifier::for_export();
    if let Some(cp) = checkpoint {
        v = v.with_checkpoint(cp.seq, &cp.hash);
    }
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let row = parse_line(&line).map_err(|message| FileError::BadLine {
            line: i as u64 + 1,
            message,
        })?;
        if let Err(e) = v.push(&row) {
            return Ok(Err(e));
        }
    }
    Ok(v.finish_export())
}

/// Exit status of `twokey audit verify` for a partial chain (not whole, nothing broken).
pub const EXIT_PARTIAL: u8 = 3;

/// The one-line report and the exit status (0 whole, 1 broken, 3 partial).
pub fn report(
    walk: &Walk,
    what: &str,
    checkpoint: Option<&Checkpoint>,
    allow_partial: bool,
) -> (String, u8) {
    let cp_note = checkpoint
        .map(|c| {
            format!(
                "; it holds the signed checkpoint's seq {} with its hash",
                c.seq
            )
        })
        .unwrap_or_default();
    match walk {
        Err(e) => (format!("audit chain BROKEN at seq {}: {e}", e.seq()), 1),
        Ok(Outcome::Whole { count, last_seq }) => (
            format!(
                "audit chain verified ({what}): whole, {count} events, up to seq {last_seq}{cp_note}"
            ),
            0,
        ),
        Ok(Outcome::Partial {
            count,
            first_seq,
            last_seq,
            missing,
            gaps,
            checkpoint_not_covered,
        }) => {
            let ranges: Vec<String> = missing
                .iter()
                .map(|(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            let more = if *gaps as usize > ranges.len() {
                ", …"
            } else {
                ""
            };
            let cp = if *checkpoint_not_covered {
                "; the checkpoint's seq is not in this file, so it cannot be checked here"
                    .to_string()
            } else {
                cp_note
            };
            (
                format!(
                    "audit chain PARTIAL ({what}): {count} events from seq {first_seq} to {last_seq}, each matching its own hash, adjacent ones linked; missing seq {}{more} ({gaps} gap(s)): a filtered export, or deleted lines (a file cannot tell which; verify the database or a whole export to know){cp}",
                    ranges.join(", ")
                ),
                if allow_partial { 0 } else { EXIT_PARTIAL },
            )
        }
    }
}
