//! Audit reads for export and verification: a filtered, streamed walk of `audit_event` in
//! `seq` order, and a bulk append used to seed benchmarks.
//!
//! The stream runs its query in a task of its own and hands rows over in batches through a
//! small bounded channel: memory stays constant however many rows there are (the consumer's
//! pace is the query's pace), and decoding rows overlaps with encoding them on another core.

use futures::StreamExt;
use futures::stream::BoxStream;
use sqlx::{AnyPool, AssertSqlSafe};

use super::{AuditRow, Backend, Store, StoreError, StoreResult};

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

/// How SQLite packs one event of a page, without any escaping: `seq:` then each text column
/// as `<byte length>:<bytes>`, or `-` for NULL, in `AUDIT_COLUMNS` order.
fn sqlite_packed_row() -> String {
    let mut out = String::from("seq || ':'");
    for c in AUDIT_COLUMNS.split(", ").skip(1) {
        let c = c.trim();
        out.push_str(&format!(
            " || coalesce(length(cast({c} as blob)) || ':' || {c}, '-')"
        ));
    }
    out
}

/// Unpack a page packed by [`sqlite_packed_row`], in seq order.
fn parse_page(text: &str) -> StoreResult<Vec<AuditRow>> {
    let corrupt = || StoreError::Corrupt("audit page: bad packing".into());
    let mut rows = Vec::with_capacity(BATCH);
    let mut rest = text;
    let number = |rest: &mut &str| -> StoreResult<i64> {
        let end = rest.find(':').ok_or_else(corrupt)?;
        let n = rest[..end].parse().map_err(|_| corrupt())?;
        *rest = &rest[end + 1..];
        Ok(n)
    };
    let field = |rest: &mut &str| -> StoreResult<Option<String>> {
        if let Some(r) = rest.strip_prefix('-') {
            *rest = r;
            return Ok(None);
        }
        let len = usize::try_from(number(rest)?).map_err(|_| corrupt())?;
        let v = rest.get(..len).ok_or_else(corrupt)?.to_string();
        *rest = &rest[len..];
        Ok(Some(v))
    };
    let text_field = |rest: &mut &str| -> StoreResult<String> { field(rest)?.ok_or_else(corrupt) };
    while !rest.is_empty() {
        rows.push(AuditRow {
            seq: number(&mut rest)?,
            at: text_field(&mut rest)?,
            action: text_field(&mut rest)?,
            actor_id: field(&mut rest)?,
            actor_email: field(&mut rest)?,
            actor_object_id: field(&mut rest)?,
            actor_ip: field(&mut rest)?,
            actor_user_agent: field(&mut rest)?,
            request_id: field(&mut rest)?,
            details: text_field(&mut rest)?,
            prev_hash: text_field(&mut rest)?,
            hash: text_field(&mut rest)?,
        });
    }
    // Already in order from the database; sorting sorted input is one linear pass.
    rows.sort_by_key(|r| r.seq);
    Ok(rows)
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

/// SQLite: one statement per page of `BATCH` events, packed into one text.
async fn sqlite_pages(pool: AnyPool, sql: String, binds: Vec<String>, tx: Sender) {
    let mut last = i64::MIN;
    loop {
        let mut query = sqlx::query_scalar::<_, Option<String>>(AssertSqlSafe(sql.clone()));
        for b in &binds {
            query = query.bind(b.clone());
        }
        let page = match query.bind(last).fetch_one(&pool).await {
            Ok(text) => parse_page(text.as_deref().unwrap_or("")),
            Err(e) => Err(StoreError::from(e)),
        };
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let Some(end) = page.last().map(|r| r.seq) else {
            return;
        };
        let full = page.len() == BATCH;
        last = end;
        if tx.send(Ok(page)).await.is_err() || !full {
            return; // the consumer went away, or that was the last page
        }
    }
}

/// PostgreSQL: one streamed statement (one snapshot), rows handed on in batches.
async fn postgres_rows(pool: AnyPool, sql: String, binds: Vec<String>, tx: Sender) {
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
    /// On SQLite rows are read a page at a time by seq (`seq > last … order by seq limit
    /// BATCH`), and SQLite packs each page into one text (length-prefixed fields, nothing to
    /// escape): one result row per page instead of one per event, which is what makes a
    /// million events fast through sqlx's SQLite worker. The log is append-only, so paging by seq sees every row
    /// once. PostgreSQL streams one statement's rows, which is fast as it is.
    pub fn audit_batches(&self, q: &AuditQuery) -> BoxStream<'static, StoreResult<Vec<AuditRow>>> {
        let (clause, binds) = q.where_clause();
        let after = format!("${}", binds.len() + 1);
        // SQL-safe: only fixed fragments and `$n` placeholders are spliced in.
        let sql = match self.backend {
            Backend::Sqlite => format!(
                "select group_concat(packed, '') from (select {} as packed \
                 from audit_event{clause} and seq > {after} order by seq limit {BATCH})",
                sqlite_packed_row()
            ),
            // PostgreSQL streams rows fast as they are (its JSON aggregation is slower).
            Backend::Postgres => {
                format!("select {AUDIT_COLUMNS} from audit_event{clause} order by seq")
            }
        };
        let pool = self.pool.clone();
        let backend = self.backend;
        let (tx, rx) = tokio::sync::mpsc::channel::<StoreResult<Vec<AuditRow>>>(IN_FLIGHT);
        tokio::spawn(async move {
            match backend {
                Backend::Sqlite => sqlite_pages(pool, sql, binds, tx).await,
                Backend::Postgres => postgres_rows(pool, sql, binds, tx).await,
            }
        });
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

    #[test]
    fn a_packed_page_unpacks_with_nulls_multibyte_text_and_separators() {
        let page = "7:27:2026-12-03T09:00:00.000000Z3:a:b-5:é:-x----11:{\"k\":\"1:-\"}1:p1:h\
                    8:1:t1:a-----1:r2:{}1:h1:i";
        let rows = parse_page(page).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].seq, 7);
        assert_eq!(rows[0].action, "a:b");
        assert_eq!(rows[0].actor_email.as_deref(), Some("é:-x"));
        assert_eq!(rows[0].actor_id, None);
        assert_eq!(rows[0].details, "{\"k\":\"1:-\"}");
        assert_eq!(rows[1].request_id.as_deref(), Some("r"));
        assert_eq!(rows[1].hash, "i");
        assert!(parse_page("7:99:short").is_err());
        assert!(sqlite_packed_row().contains("coalesce(length(cast(details as blob))"));
    }
}
