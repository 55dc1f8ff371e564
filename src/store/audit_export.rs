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

use super::{AuditRow, Store, StoreError, StoreResult, Tx};

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
fn sqlite_direct(path: PathBuf, sql: String, binds: Vec<String>, tx: Sender) {
    let read = || -> Result<(), rusqlite::Error> {
        let conn = open_read_only(&path)?;
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

/// SECURITY: bulk reads of the audit log cannot write to it, whatever their SQL says.
fn open_read_only(path: &std::path::Path) -> Result<rusqlite::Connection, rusqlite::Error> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    Ok(conn)
}

/// PostgreSQL: one `COPY (select …) TO STDOUT` on a connection of its own (one statement, one
/// snapshot), its text-format rows decoded straight into `AuditRow`s. `COPY` is what
/// `psql \copy` uses; it skips sqlx's per-row decoding (through the `Any` driver, a copy of
/// every value), which made the export about half the speed of `psql`.
async fn postgres_copy(url: std::sync::Arc<str>, sql: String, binds: Vec<String>, tx: Sender) {
    use sqlx::Connection;
    let copy = format!("copy ({}) to stdout", inline_binds(&sql, &binds));
    let run = async {
        let mut conn = sqlx::postgres::PgConnection::connect(&url).await?;
        {
            let mut chunks = conn.copy_out_raw(&copy).await?;
            let mut pending: Vec<u8> = Vec::new();
            let mut batch = Vec::with_capacity(BATCH);
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                pending.extend_from_slice(&chunk);
                let mut start = 0;
                while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
                    batch.push(copy_row(&pending[start..start + end])?);
                    start += end + 1;
                    if batch.len() == BATCH {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                        if tx.send(Ok(full)).await.is_err() {
                            return Ok(()); // the consumer went away
                        }
                    }
                }
                pending.drain(..start);
            }
            if !pending.is_empty() {
                return Err(StoreError::Corrupt("COPY output ended mid-row".into()));
            }
            if !batch.is_empty() {
                let _ = tx.send(Ok(batch)).await;
            }
        }
        let _ = conn.close().await;
        StoreResult::Ok(())
    };
    if let Err(e) = run.await {
        let _ = tx.send(Err(e)).await;
    }
}

/// `sql` with each `$n` replaced by its value as a literal, for `COPY`, which takes no
/// parameters.
///
/// SECURITY: a value is spelled only in hexadecimal digits
/// (`convert_from(decode('…', 'hex'), 'UTF8')`), so nothing a caller passes as a filter can
/// end the literal or change the statement.
fn inline_binds(sql: &str, binds: &[String]) -> String {
    let mut out = String::with_capacity(sql.len() + binds.len() * 48);
    let mut rest = sql;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let digits = rest[i + 1..].bytes().take_while(u8::is_ascii_digit).count();
        let n: usize = rest[i + 1..i + 1 + digits].parse().unwrap_or(0);
        match binds.get(n.wrapping_sub(1)) {
            Some(v) => out.push_str(&format!(
                "convert_from(decode('{}', 'hex'), 'UTF8')",
                hex::encode(v.as_bytes())
            )),
            // Not one of ours: our SQL has no other `$`; refuse to guess.
            None => panic!("unbound placeholder in audit SQL"),
        }
        rest = &rest[i + 1 + digits..];
    }
    out.push_str(rest);
    out
}

/// One row of `COPY … TO STDOUT` text format: tab-separated, `\N` for NULL, backslash escapes.
fn copy_row(line: &[u8]) -> StoreResult<AuditRow> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("COPY row: {what}"));
    let mut f = line
        .split(|b| *b == b'\t')
        .map(|raw| copy_field(raw).ok_or_else(|| corrupt("bad escape or UTF-8")))
        .collect::<StoreResult<Vec<Option<String>>>>()?
        .into_iter();
    if f.len() != 12 {
        return Err(corrupt("not 12 columns"));
    }
    let mut next = || f.next().flatten();
    let seq = next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt("seq"))?;
    let (at, action) = (next(), next());
    let (actor_id, actor_email, actor_object_id) = (next(), next(), next());
    let (actor_ip, actor_user_agent, request_id) = (next(), next(), next());
    let (details, prev_hash, hash) = (next(), next(), next());
    let text = |v: Option<String>| v.ok_or_else(|| corrupt("unexpected NULL"));
    Ok(AuditRow {
        seq,
        at: text(at)?,
        action: text(action)?,
        actor_id,
        actor_email,
        actor_object_id,
        actor_ip,
        actor_user_agent,
        request_id,
        details: text(details)?,
        prev_hash: text(prev_hash)?,
        hash: text(hash)?,
    })
}

/// One field of COPY text format: `None` inside means NULL; the outer `None` a bad field.
#[allow(clippy::option_option)]
fn copy_field(raw: &[u8]) -> Option<Option<String>> {
    if raw == b"\\N" {
        return Some(None);
    }
    if !raw.contains(&b'\\') {
        return String::from_utf8(raw.to_vec()).ok().map(Some);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let e = *raw.get(i)?;
        i += 1;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(u8::try_from(v & 0xff).ok()?);
            }
            b'x' => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            n += 1;
                        }
                        None => break,
                    }
                }
                if n == 0 {
                    return None;
                }
                out.push(u8::try_from(v).ok()?);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).ok().map(Some)
}

/// An in-memory SQLite: one streamed statement (one snapshot), rows handed on
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
    /// A SQLite file is read directly (see [`sqlite_direct`]), PostgreSQL with `COPY` (see
    /// [`postgres_copy`]); both are one statement, one snapshot.
    pub fn audit_batches(&self, q: &AuditQuery) -> BoxStream<'static, StoreResult<Vec<AuditRow>>> {
        let (clause, binds) = q.where_clause();
        // SQL-safe: only fixed fragments and `$n` placeholders are spliced in.
        let sql = format!("select {AUDIT_COLUMNS} from audit_event{clause} order by seq");
        let (tx, rx) = tokio::sync::mpsc::channel::<StoreResult<Vec<AuditRow>>>(IN_FLIGHT);
        match (&self.sqlite_file, &self.postgres_url) {
            (Some(path), _) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || sqlite_direct(path, sql, binds, tx));
            }
            (None, Some(url)) => {
                tokio::spawn(postgres_copy(url.clone(), sql, binds, tx));
            }
            (None, None) => {
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
        tx.insert_audit_rows(rows).await?;
        tx.set_audit_head(last.seq, &last.hash);
        tx.commit().await
    }
}

impl Tx {
    /// Insert ready-made audit rows, in order, as multi-row inserts. It moves no head.
    pub(super) async fn insert_audit_rows(&mut self, rows: &[AuditRow]) -> StoreResult<()> {
        for chunk in super::sql::chunks(rows) {
            let n = chunk.len();
            let mut p = super::sql::Params::new(self.backend);
            // SQL-safe: only placeholders are spliced in.
            let sql = format!(
                "insert into audit_event ({AUDIT_COLUMNS}) values {}",
                p.rows(n, |p| format!("({})", p.list(12)))
            );
            let mut q =
                sqlx::query(AssertSqlSafe(sql)).persistent(super::sql::keep(self.backend, n));
            for e in chunk {
                q = q
                    .bind(e.seq)
                    .bind(&e.at)
                    .bind(&e.action)
                    .bind(&e.actor_id)
                    .bind(&e.actor_email)
                    .bind(&e.actor_object_id)
                    .bind(&e.actor_ip)
                    .bind(&e.actor_user_agent)
                    .bind(&e.request_id)
                    .bind(&e.details)
                    .bind(&e.prev_hash)
                    .bind(&e.hash);
            }
            q.execute(self.member.conn()).await?;
        }
        Ok(())
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
        let inlined = inline_binds(&sql, &binds);
        assert!(!inlined.contains('$'));
        assert!(inlined.contains("at >= convert_from(decode('61', 'hex'), 'UTF8')"));
        // A hostile value stays hex digits.
        let evil = inline_binds(" where a = $1", &["x'); drop table t; --".into()]);
        assert_eq!(
            evil,
            " where a = convert_from(decode('7827293b2064726f70207461626c6520743b202d2d', 'hex'), 'UTF8')"
        );
        assert!(AuditQuery::default().is_everything());
    }

    #[test]
    fn the_bulk_reader_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "create table audit_event (seq integer); insert into audit_event values (1)",
            )
            .unwrap();
        let conn = open_read_only(&path).unwrap();
        let n: i64 = conn
            .query_row("select count(*) from audit_event", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        assert!(conn.execute("delete from audit_event", []).is_err());
        assert!(conn.execute_batch("drop table audit_event").is_err());
    }

    #[test]
    fn copy_text_rows_decode_nulls_escapes_and_multibyte_text() {
        let line = b"7\t2026-12-03T09:00:00.000000Z\ta:b\t\\N\t\xc3\xa9\\t\\\\x\t\\N\t\\N\tua\\nnext\t\\N\t{\"k\":\"a\\\\\\\\\"b\"}\tp\th";
        let r = copy_row(line).unwrap();
        assert_eq!(r.seq, 7);
        assert_eq!(r.action, "a:b");
        assert_eq!(r.actor_id, None);
        assert_eq!(r.actor_email.as_deref(), Some("é\t\\x"));
        assert_eq!(r.actor_user_agent.as_deref(), Some("ua\nnext"));
        assert_eq!(r.details, "{\"k\":\"a\\\\\"b\"}");
        assert_eq!(r.hash, "h");
        assert_eq!(copy_field(b"\\101\\x42\\b"), Some(Some("AB\u{8}".into())));
        assert_eq!(copy_field(b"bad\\"), None);
        assert!(copy_row(b"7\tonly-two").is_err());
        assert!(copy_row(b"x\ta\tb\tc\td\te\tf\tg\th\ti\tj\tk").is_err());
    }
}
