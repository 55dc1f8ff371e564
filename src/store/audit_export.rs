//! Audit reads for export and verification: a filtered, streamed walk of `audit_event` in
//! `seq` order, and a bulk append used to seed benchmarks.
//!
//! The stream runs its query in a task of its own and hands rows over in batches through a
//! small bounded channel: memory stays constant however many rows there are (the consumer's
//! pace is the query's pace), and decoding rows overlaps with encoding them on another core.

use futures::StreamExt;
use futures::stream::BoxStream;
use std::path::PathBuf;
use std::time::Duration;

use sqlx::{AnyPool, AssertSqlSafe};

use super::{AuditRow, Store, StoreError, StoreResult};

/// Rows per page read (and per batch handed to the consumer).
const BATCH: usize = 1000;
/// Batches in flight between the query task and the consumer.
const IN_FLIGHT: usize = 4;

const AUDIT_COLUMNS: &str = "seq, at, action, actor_id, actor_email, actor_object_id, actor_ip, \
    actor_user_agent, request_id, details, prev_hash, hash";

/// Which audit events to read. Times are canonical text (`crate::timefmt`), which sorts as
/// time on both databases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// `at >= since` (inclusive).
    pub since: Option<String>,
    /// `at < until` (exclusive).
    pub until: Option<String>,
    pub request_id: Option<String>,
    /// The actor's email (compared in lower case) or the actor's principal id.
    pub actor: Option<String>,
    /// Any of these actions (empty: all).
    pub actions: Vec<String>,
}

impl AuditQuery {
    /// Whether no filter is set (the export is then the whole chain).
    pub fn is_everything(&self) -> bool {
        *self == Self::default()
    }

    /// The `where` clause (with `$n` placeholders) and its values, in bind order.
    fn where_clause(&self) -> (String, Vec<String>) {
        let mut sql = String::from(" where 1 = 1");
        let mut binds: Vec<String> = Vec::new();
        let next = |v: String, binds: &mut Vec<String>| {
            binds.push(v);
            format!("${}", binds.len())
        };
        if let Some(s) = &self.since {
            sql.push_str(&format!(" and at >= {}", next(s.clone(), &mut binds)));
        }
        if let Some(u) = &self.until {
            sql.push_str(&format!(" and at < {}", next(u.clone(), &mut binds)));
        }
        if let Some(r) = &self.request_id {
            sql.push_str(&format!(
                " and request_id = {}",
                next(r.clone(), &mut binds)
            ));
        }
        if let Some(a) = &self.actor {
            let email = next(a.to_lowercase(), &mut binds);
            let id = next(a.clone(), &mut binds);
            sql.push_str(&format!(
                " and (lower(actor_email) = {email} or actor_id = {id})"
            ));
        }
        if !self.actions.is_empty() {
            let ph: Vec<String> = self
                .actions
                .iter()
                .map(|a| next(a.clone(), &mut binds))
                .collect();
            sql.push_str(&format!(" and action in ({})", ph.join(", ")));
        }
        (sql, binds)
    }
}

type Sender = tokio::sync::mpsc::Sender<StoreResult<Vec<AuditRow>>>;

/// SQLite, read directly through the SQLite library (not sqlx's worker thread): one statement
/// in one read transaction (one snapshot), rows decoded straight into `AuditRow`s on a
/// blocking thread. This is what makes a million events a second-scale walk: sqlx's SQLite
/// driver hands rows one by one across threads (~30 µs a row), this reads ~1 µs a row.
///
/// SECURITY: the connection is opened read-only, so the export and verify paths cannot write
/// to the audit log whatever the SQL says.
fn sqlite_direct(path: PathBuf, sql: String, binds: Vec<String>, tx: Sender) {
    let read = || -> Result<(), rusqlite::Error> {
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(30))?;
        // One transaction: every page of this walk sees the same snapshot (WAL).
        conn.execute_batch("begin")?;
        // `$n` and `?n` both number parameters in SQLite; `?n` binds by that number.
        let mut stmt = conn.prepare(&sql.replace('$', "?"))?;
        let mut rows = stmt.query(rusqlite::params_from_iter(binds.iter()))?;
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(r) = rows.next()? {
            batch.push(AuditRow {
                seq: r.get(0)?,
                at: r.get(1)?,
                action: r.get(2)?,
                actor_id: r.get(3)?,
                actor_email: r.get(4)?,
                actor_object_id: r.get(5)?,
                actor_ip: r.get(6)?,
                actor_user_agent: r.get(7)?,
                request_id: r.get(8)?,
                details: r.get(9)?,
                prev_hash: r.get(10)?,
                hash: r.get(11)?,
            });
            if batch.len() == BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                if tx.blocking_send(Ok(full)).is_err() {
                    return Ok(()); // the consumer went away
                }
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(Ok(batch));
        }
        Ok(())
    };
    if let Err(e) = read() {
        let _ = tx.blocking_send(Err(StoreError::Direct(e.to_string())));
    }
}

/// PostgreSQL (and an in-memory SQLite): one streamed statement (one snapshot), rows handed on
/// in batches.
async fn streamed_rows(pool: AnyPool, sql: String, binds: Vec<String>, tx: Sender) {
    let mut query = sqlx::query_as::<_, AuditRow>(AssertSqlSafe(sql));
    for b in binds {
        query = query.bind(b);
    }
    let mut rows = query.fetch(&pool);
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(row) = rows.next().await {
        match row {
            Ok(r) => {
                batch.push(r);
                if batch.len() == BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    if tx.send(Ok(full)).await.is_err() {
                        return; // the consumer went away
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Err(StoreError::from(e))).await;
                return;
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(Ok(batch)).await;
    }
}

impl Store {
    /// The matching audit rows in `seq` order, in batches, as a `'static` stream (it owns
    /// what it needs, so an HTTP body can hold it). Dropping the stream stops the reads.
    ///
    /// A SQLite file is read directly (see [`sqlite_direct`]); PostgreSQL streams one
    /// statement's rows through sqlx, which is fast as it is.
    pub fn audit_batches(&self, q: &AuditQuery) -> BoxStream<'static, StoreResult<Vec<AuditRow>>> {
        let (clause, binds) = q.where_clause();
        // SQL-safe: only fixed fragments and `$n` placeholders are spliced in.
        let sql = format!("select {AUDIT_COLUMNS} from audit_event{clause} order by seq");
        let (tx, rx) = tokio::sync::mpsc::channel::<StoreResult<Vec<AuditRow>>>(IN_FLIGHT);
        match &self.sqlite_file {
            Some(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || sqlite_direct(path, sql, binds, tx));
            }
            None => {
                tokio::spawn(streamed_rows(self.pool.clone(), sql, binds, tx));
            }
        }
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
            .boxed()
    }

    /// How many rows `q` matches (for a progress bar).
    pub async fn count_audit_matching(&self, q: &AuditQuery) -> StoreResult<i64> {
        let (clause, binds) = q.where_clause();
        // SQL-safe: only fixed fragments and `$n` placeholders are spliced in.
        let sql = format!("select count(*) from audit_event{clause}");
        let mut query = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql));
        for b in binds {
            query = query.bind(b);
        }
        Ok(query.fetch_one(&self.pool).await?)
    }

    /// One audit row by `seq`.
    pub async fn audit_row(&self, seq: i64) -> StoreResult<Option<AuditRow>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "select {AUDIT_COLUMNS} from audit_event where seq = $1"
        )))
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Append ready-made, already chained rows in one transaction and move the head to the
    /// last one. For seeding benchmarks: it does not check the chain (verify does).
    #[doc(hidden)]
    pub async fn bulk_append_audit(&self, rows: &[AuditRow]) -> StoreResult<()> {
        let Some(last) = rows.last() else {
            return Ok(());
        };
        let mut tx = self.begin().await?;
        // 12 values per row; 400 rows stay under SQLite's and PostgreSQL's bind limits.
        for chunk in rows.chunks(400) {
            let mut sql = format!("insert into audit_event ({AUDIT_COLUMNS}) values ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                let b = i * 12;
                let ph: Vec<String> = (1..=12).map(|k| format!("${}", b + k)).collect();
                sql.push_str(&format!("({})", ph.join(", ")));
            }
            // SQL-safe: only `$n` placeholders are spliced in.
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for e in chunk {
                q = q
                    .bind(e.seq)
                    .bind(e.at.clone())
                    .bind(e.action.clone())
                    .bind(e.actor_id.clone())
                    .bind(e.actor_email.clone())
                    .bind(e.actor_object_id.clone())
                    .bind(e.actor_ip.clone())
                    .bind(e.actor_user_agent.clone())
                    .bind(e.request_id.clone())
                    .bind(e.details.clone())
                    .bind(e.prev_hash.clone())
                    .bind(e.hash.clone());
            }
            q.execute(&mut *tx.inner).await?;
        }
        sqlx::query("update audit_head set seq = $1, hash = $2 where id = 1")
            .bind(last.seq)
            .bind(&last.hash)
            .execute(&mut *tx.inner)
            .await?;
        tx.commit().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_where_clause_numbers_its_placeholders_in_bind_order() {
        let q = AuditQuery {
            since: Some("a".into()),
            until: None,
            request_id: Some("r".into()),
            actor: Some("Bob@X.io".into()),
            actions: vec!["x".into(), "y".into()],
        };
        let (sql, binds) = q.where_clause();
        assert_eq!(
            sql,
            " where 1 = 1 and at >= $1 and request_id = $2 and (lower(actor_email) = $3 or actor_id = $4) and action in ($5, $6)"
        );
        assert_eq!(binds, ["a", "r", "bob@x.io", "Bob@X.io", "x", "y"]);
        assert!(AuditQuery::default().is_everything());
    }
}
