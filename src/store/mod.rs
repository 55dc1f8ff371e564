//! Storage: the only module that speaks SQL. One set of queries runs on SQLite and PostgreSQL
//! through sqlx's `Any` driver (runtime queries, `$n` placeholders, text times, integer
//! numbers); each backend has its own migrations. Every writing transaction starts by taking
//! the audit chain's head row (see [`Store::begin`]), which serializes writers on both backends.

mod audit_export;
mod group_commit;
mod rows;
mod sql;

use std::str::FromStr;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sqlx::ConnectOptions as _;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, AssertSqlSafe, Executor};

pub use audit_export::AuditQuery;
pub use rows::*;

/// A storage failure. `Conflict` is a unique constraint that the caller may map to a user error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// From a direct (non-sqlx) SQLite read, see `audit_export`.
    #[error("database error: {0}")]
    Direct(String),
    /// The shared commit of a transaction group failed (see `group_commit`): nothing of this
    /// transaction was committed.
    #[error("database error: the commit failed: {0}")]
    GroupCommit(std::sync::Arc<str>),
    /// A batched statement failed for every call in its batch (see [`crate::batch`]).
    #[error("database error: {0}")]
    Batch(std::sync::Arc<str>),
}

/// One session lookup's answer, as a batch gives it to each of its calls.
type SessionAnswer = Result<Option<SessionLoadRow>, std::sync::Arc<str>>;

/// Session lookups coalesced into one statement (see [`Store::get_session`]).
type SessionBatcher = crate::batch::Batcher<String, SessionAnswer>;

/// Sessions per lookup statement at most.
const SESSION_BATCH: usize = 128;

/// Look up the sessions of `calls` in one statement and answer each.
async fn load_sessions(
    pool: &AnyPool,
    backend: Backend,
    calls: Vec<crate::batch::Call<String, SessionAnswer>>,
) {
    let mut hashes: Vec<&str> = calls.iter().map(|c| c.item.as_str()).collect();
    hashes.sort_unstable();
    hashes.dedup();
    let rows = fetch_in::<_, SessionLoadRow>(
        pool,
        backend,
        "select s.session_hash, s.principal_id, s.csrf_token, s.groups, s.created_at, \
         s.last_seen_at, s.expires_at, s.notice, p.email as principal_email, \
         p.name as principal_name, p.azure_object_id as principal_object_id, \
         p.principal_id as principal_found \
         from session s left join principal p on p.principal_id = s.principal_id \
         where s.session_hash",
        &hashes,
        "",
    )
    .await;
    match rows {
        Ok(rows) => {
            let mut found: std::collections::HashMap<String, SessionLoadRow> = rows
                .into_iter()
                .map(|r| (r.session.session_hash.clone(), r))
                .collect();
            let mut calls = calls;
            // The last call for a hash takes the row, the earlier ones a copy.
            while let Some(c) = calls.pop() {
                let row = if calls.iter().any(|o| o.item == c.item) {
                    found.get(&c.item).cloned()
                } else {
                    found.remove(&c.item)
                };
                c.answer(Ok(row));
            }
        }
        Err(e) => {
            let e: std::sync::Arc<str> = e.to_string().into();
            for c in calls {
                c.answer(Err(e.clone()));
            }
        }
    }
}

/// The rows of `{select} in (…){tail}` with `values` in the list, in one statement (none for
/// no values). `select` ends with the column to match; the list is padded ([`sql::padded`]).
async fn fetch_in<'c, E, R>(
    ex: E,
    backend: Backend,
    select: &str,
    values: &[&str],
    tail: &str,
) -> StoreResult<Vec<R>>
where
    E: Executor<'c, Database = sqlx::Any>,
    R: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
{
    if values.is_empty() {
        return Ok(Vec::new());
    }
    // SQL-safe: `select` and `tail` are texts of this module; besides them only placeholders
    // are spliced in.
    let sql = format!(
        "{select} in ({}){tail}",
        sql::Params::new(backend).list(sql::padded_len(values.len()))
    );
    let mut q =
        sqlx::query_as::<_, R>(AssertSqlSafe(sql)).persistent(sql::keep(backend, values.len()));
    for v in sql::padded(values) {
        q = q.bind(v);
    }
    Ok(q.fetch_all(ex).await?)
}

/// The requests with these ids (those that exist), in one statement.
async fn fetch_requests<'c, E>(
    ex: E,
    backend: Backend,
    ids: &[&str],
) -> StoreResult<Vec<RequestRow>>
where
    E: Executor<'c, Database = sqlx::Any>,
{
    let select = format!("{SELECT_REQUESTS} where request_id");
    fetch_in(ex, backend, &select, ids, "").await
}

/// The decisions on these requests, each request's in the order of [`Store::decisions_for`].
async fn fetch_decisions<'c, E>(
    ex: E,
    backend: Backend,
    ids: &[&str],
) -> StoreResult<Vec<DecisionRow>>
where
    E: Executor<'c, Database = sqlx::Any>,
{
    let select = format!("{SELECT_DECISIONS_FROM} where request_id");
    fetch_in(ex, backend, &select, ids, " order by at, decision_id").await
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database handle shared by the whole app.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The database file, for a SQLite store that lives in a file: bulk audit reads go to it
    /// directly (see `audit_export`).
    sqlite_file: Option<std::path::PathBuf>,
    /// The PostgreSQL URL, for bulk audit reads with `COPY` on a connection of their own.
    /// SECURITY: may hold a password; never logged or shown.
    postgres_url: Option<std::sync::Arc<str>>,
    /// This process's writer slot (see `group_commit`).
    group: std::sync::Arc<group_commit::GroupCommit>,
    /// Session lookups waiting for the next batch.
    sessions: std::sync::Arc<SessionBatcher>,
}

static MIGRATOR_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static MIGRATOR_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Set on every SQLite connection. WAL for concurrent readers; FULL so a committed decision
/// survives a power cut; foreign keys on; writers wait for each other instead of failing at
/// once; 512 KiB of page cache per connection instead of SQLite's 2 MiB: with
/// `database.max_connections` connections that is what stays resident once the file outgrows
/// it (the footprint bench: idle RSS). Reads are indexed lookups; a page not cached comes from
/// the OS page cache. (Public so that the footprint bench's plain loop pays the same fsyncs.)
pub const SQLITE_PRAGMAS: &[&str] = &[
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA busy_timeout = 30000",
    "PRAGMA cache_size = -512",
];

/// A writing transaction. Dropped without `commit`, it rolls back.
pub struct Tx {
    member: group_commit::Member,
    group: std::sync::Arc<group_commit::GroupCommit>,
    backend: Backend,
    /// Jobs queued with [`Tx::queue_job`], inserted together in one statement before the
    /// transaction commits or touches the job table otherwise.
    queued_jobs: Vec<NewJob>,
    /// Audit events appended with [`Tx::append_audit`], in order; those from
    /// `audit_inserted` on are inserted together before the transaction commits or reads the
    /// audit table. Counted in the metrics once it commits.
    appended_audit: Vec<AuditRow>,
    audit_inserted: usize,
}

impl Store {
    /// Open a pool for `url` (`sqlite:…` or `postgres://…`). Does not migrate.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let mut url = url.to_string();
        if backend == Backend::Sqlite && !url.contains("mode=") && !url.contains(":memory:") {
            url.push_str(if url.contains('?') {
                "&mode=rwc"
            } else {
                "?mode=rwc"
            });
        }
        // A statement over a second is normal for a bulk audit export or verify; sqlx would
        // warn on the CLI's terminal for each. Info level keeps it for whoever wants it.
        let opts = AnyConnectOptions::from_str(&url)?
            .log_slow_statements(log::LevelFilter::Info, Duration::from_secs(1));
        let sqlite_file = match backend {
            Backend::Sqlite if !url.contains(":memory:") && !url.contains("mode=memory") => Some(
                sqlx::sqlite::SqliteConnectOptions::from_str(&url)?
                    .get_filename()
                    .to_path_buf(),
            ),
            _ => None,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            // sqlx pings a connection before handing it out, and again when it comes back: two
            // round trips around every pooled statement. A SQLite connection is a handle on a
            // local file that nothing outside this process can break, so the first ping is
            // dropped there. On PostgreSQL it stays: after a failover every idle connection is
            // dead, and the ping takes it out before a request's statement would fail on it.
            .test_before_acquire(backend == Backend::Postgres)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        for pragma in SQLITE_PRAGMAS {
                            conn.execute(*pragma).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        Ok(Self {
            pool,
            backend,
            sqlite_file,
            postgres_url: (backend == Backend::Postgres).then(|| url.as_str().into()),
            group: group_commit::GroupCommit::new(),
            sessions: std::sync::Arc::new(SessionBatcher::new(SESSION_BATCH)),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Apply the backend's migrations.
    pub async fn migrate(&self) -> StoreResult<()> {
        match self.backend {
            Backend::Sqlite => MIGRATOR_SQLITE.run(&self.pool).await?,
            Backend::Postgres => MIGRATOR_POSTGRES.run(&self.pool).await?,
        }
        Ok(())
    }

    /// Whether every known migration has been applied (for `/readyz`).
    pub async fn migrations_current(&self) -> StoreResult<bool> {
        let migrator = match self.backend {
            Backend::Sqlite => &MIGRATOR_SQLITE,
            Backend::Postgres => &MIGRATOR_POSTGRES,
        };
        let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Option<i64> =
            sqlx::query_scalar("select max(version) from _sqlx_migrations where success = true")
                .fetch_optional(&self.pool)
                .await
                .ok()
                .flatten();
        Ok(applied == Some(latest))
    }

    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Start a writing transaction.
    ///
    /// SECURITY: the first statement takes the audit head row. On PostgreSQL that row lock
    /// serializes every writer (so two approvals of a 2-of-M request cannot both miss each
    /// other, and the hash chain has one order); on SQLite a first statement that writes takes
    /// the database's write lock, with the busy timeout as the wait.
    ///
    /// Writers that arrive while another one runs share its database transaction and commit
    /// (group commit, see `group_commit`); each still commits or rolls back on its own.
    ///
    /// Every write goes through here, the `Store` methods that write included (sessions, job
    /// claims, leases): a task that holds a `Tx` must not call one of them, or begin another
    /// `Tx`, before it commits or drops the first: it would wait for itself.
    pub async fn begin(&self) -> StoreResult<Tx> {
        let member = self
            .group
            .begin(|| async {
                let mut inner = self.pool.begin().await?;
                // SECURITY: the head is read by the statement that locks its row, in the
                // group's transaction, and kept only while that transaction lives: no other
                // writer (another replica included) can move it meanwhile, so the cached head
                // is never stale and the chain has no fork.
                let head = sqlx::query_as(
                    "update audit_head set seq = seq where id = 1 returning seq, hash",
                )
                .fetch_one(&mut *inner)
                .await?;
                Ok((inner, head))
            })
            .await?;
        Ok(Tx {
            member,
            group: self.group.clone(),
            backend: self.backend,
            queued_jobs: Vec::new(),
            appended_audit: Vec::new(),
            audit_inserted: 0,
        })
    }

    /// Group commit since start: (database commits of writing transactions, writing
    /// transactions they held).
    pub fn commit_stats(&self) -> (u64, u64) {
        self.group.stats()
    }

    /// Session lookups queued for the next statement now (for tests that need a batch).
    #[doc(hidden)]
    pub fn sessions_waiting(&self) -> usize {
        self.sessions.waiting()
    }

    /// (session lookup statements run, lookups they answered) since start.
    #[doc(hidden)]
    pub fn session_batch_stats(&self) -> (u64, u64) {
        self.sessions.stats()
    }

    /// Writers waiting to begin now (for tests that need a queue to form).
    #[doc(hidden)]
    pub fn writers_queued(&self) -> usize {
        self.group.queued()
    }

    /// For `/metrics`: requests by state, and unfinished or failed jobs by kind and state.
    #[allow(clippy::type_complexity)]
    pub async fn metric_counts(
        &self,
    ) -> StoreResult<(Vec<(String, i64)>, Vec<(String, String, i64)>)> {
        let requests =
            sqlx::query_as("select state, count(*) from request group by state order by state")
                .fetch_all(&self.pool)
                .await?;
        let jobs = sqlx::query_as(
            "select kind, state, count(*) from job where state <> 'done' \
             group by kind, state order by kind, state",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok((requests, jobs))
    }

    // ---- reads outside a transaction ---------------------------------------------------

    pub async fn get_request(&self, id: &str) -> StoreResult<Option<RequestRow>> {
        Ok(sqlx::query_as(SELECT_REQUEST_BY_ID)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn decisions_for(&self, request_id: &str) -> StoreResult<Vec<DecisionRow>> {
        Ok(sqlx::query_as(SELECT_DECISIONS)
            .bind(request_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// The requests with these ids that exist, in one statement (any order).
    pub async fn requests_by_ids(&self, ids: &[&str]) -> StoreResult<Vec<RequestRow>> {
        fetch_requests(&self.pool, self.backend, ids).await
    }

    /// The decisions on these requests, in one statement; per request in the order of
    /// [`Store::decisions_for`].
    pub async fn decisions_for_requests(&self, ids: &[&str]) -> StoreResult<Vec<DecisionRow>> {
        fetch_decisions(&self.pool, self.backend, ids).await
    }

    /// The audit events about these requests, in one statement, in chain order.
    pub async fn audit_for_requests(&self, ids: &[&str]) -> StoreResult<Vec<AuditRow>> {
        let select = "select seq, at, action, actor_id, actor_email, actor_object_id, actor_ip, \
             actor_user_agent, request_id, details, prev_hash, hash from audit_event \
             where request_id";
        fetch_in(&self.pool, self.backend, select, ids, " order by seq").await
    }

    pub async fn audit_for_request(&self, request_id: &str) -> StoreResult<Vec<AuditRow>> {
        Ok(sqlx::query_as(
            "select seq, at, action, actor_id, actor_email, actor_object_id, actor_ip, \
             actor_user_agent, request_id, details, prev_hash, hash from audit_event \
             where request_id = $1 order by seq",
        )
        .bind(request_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Requests, newest first, filtered by state, requester and/or a set of guards.
    pub async fn list_requests(&self, f: &RequestFilter) -> StoreResult<Vec<RequestRow>> {
        let mut sql = format!("{SELECT_REQUEST} where 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if f.state.is_some() {
            sql.push_str(&format!(" and state = {}", next()));
        }
        if f.requester_id.is_some() {
            sql.push_str(&format!(" and requester_id = {}", next()));
        }
        if let Some(guards) = &f.guards {
            if guards.is_empty() {
                return Ok(vec![]);
            }
            let ph: Vec<String> = guards.iter().map(|_| next()).collect();
            sql.push_str(&format!(" and guard in ({})", ph.join(", ")));
        }
        sql.push_str(&format!(
            " order by created_at desc, request_id desc limit {}",
            f.limit.clamp(1, 500)
        ));
        let mut q = sqlx::query_as::<_, RequestRow>(AssertSqlSafe(sql));
        if let Some(s) = &f.state {
            q = q.bind(s.clone());
        }
        if let Some(r) = &f.requester_id {
            q = q.bind(r.clone());
        }
        if let Some(guards) = &f.guards {
            for g in guards {
                q = q.bind(g.clone());
            }
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    pub async fn pending_past_deadline(&self, now: &str) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "select request_id from request where state = 'pending' and deadline <= $1 order by deadline",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Requests whose grant failed for good since `since` (a grant may have reached Azure
    /// before the job gave up: the reconciler looks).
    pub async fn grant_failed_since(&self, since: &str) -> StoreResult<Vec<RequestRow>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "{SELECT_REQUEST} where state = 'failed' and end_reason = 'grant_failed' and ended_at >= $1 \
             order by request_id limit 500"
        )))
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Whether `principal` has an active grant at `scope` (another request's).
    pub async fn active_grant_exists(&self, scope: &str, principal: &str) -> StoreResult<bool> {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from grant_record where state = 'active' and lower(scope) = lower($1) \
             and principal_object_id = $2",
        )
        .bind(scope)
        .bind(principal)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// Azure object ids of everyone who has asked for access under `guard`.
    pub async fn requester_object_ids(&self, guard: &str) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "select distinct requester_object_id from request where guard = $1 \
             and requester_object_id is not null",
        )
        .bind(guard)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Principals with an active twokey grant at `scope` (a window twokey opened).
    pub async fn active_grant_principals(&self, scope: &str) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "select principal_object_id from grant_record where state = 'active' \
             and lower(scope) = lower($1) and principal_object_id is not null",
        )
        .bind(scope)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The last posture report of every guard.
    pub async fn posture_reports(&self) -> StoreResult<Vec<PostureRow>> {
        Ok(sqlx::query_as(
            "select guard, run_at, report, names_resolved, names_note from posture_report order by guard",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn pending_with_other_policy(
        &self,
        guard: &str,
        hash: &str,
    ) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "select request_id from request where state = 'pending' and guard = $1 and policy_hash <> $2",
        )
        .bind(guard)
        .bind(hash)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Pending requests whose guard no longer exists in the configuration.
    pub async fn pending_guards(&self) -> StoreResult<Vec<(String, String)>> {
        Ok(
            sqlx::query_as("select request_id, guard from request where state = 'pending'")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn guard_policies(&self) -> StoreResult<Vec<(String, String)>> {
        Ok(
            sqlx::query_as("select guard, policy_hash from guard_policy")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn upsert_principal(&self, p: &PrincipalRow) -> StoreResult<String> {
        let mut tx = self.begin().await?;
        let id: String = sqlx::query_scalar(
            "insert into principal (principal_id, issuer, subject, email, email_normalized, name, \
             azure_object_id, created_at, updated_at) values ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
             on conflict (issuer, subject) do update set email = excluded.email, \
             email_normalized = excluded.email_normalized, name = excluded.name, \
             azure_object_id = excluded.azure_object_id, updated_at = excluded.updated_at \
             returning principal_id",
        )
        .bind(&p.principal_id)
        .bind(&p.issuer)
        .bind(&p.subject)
        .bind(&p.email)
        .bind(&p.email_normalized)
        .bind(&p.name)
        .bind(&p.azure_object_id)
        .bind(&p.created_at)
        .fetch_one(tx.member.conn())
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// One writing statement as a transaction of its own, through the writer slot like every
    /// write (see [`Store::begin`]). Returns the rows it changed.
    async fn execute_alone(
        &self,
        q: sqlx::query::Query<'_, sqlx::Any, <sqlx::Any as sqlx::Database>::Arguments>,
    ) -> StoreResult<u64> {
        let mut tx = self.begin().await?;
        let changed = q.execute(tx.member.conn()).await?.rows_affected();
        tx.commit().await?;
        Ok(changed)
    }

    // ---- sessions ------------------------------------------------------------------------

    pub async fn insert_session(&self, s: &SessionRow) -> StoreResult<()> {
        let q = sqlx::query(
            "insert into session (session_hash, principal_id, csrf_token, groups, created_at, \
             last_seen_at, expires_at, notice) values ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&s.session_hash)
        .bind(&s.principal_id)
        .bind(&s.csrf_token)
        .bind(&s.groups)
        .bind(&s.created_at)
        .bind(&s.last_seen_at)
        .bind(&s.expires_at)
        .bind(&s.notice);
        self.execute_alone(q).await?;
        Ok(())
    }

    /// A session and its principal, in one statement: every signed-in request starts here, so
    /// one round trip rather than two is worth a join.
    ///
    /// Lookups that arrive while one runs are coalesced: the next statement looks up all of
    /// them at once (`where session_hash in (…)`, see [`crate::batch`]). Each is still read
    /// from the database at the time of its request, never from a cache: a session signed out
    /// or expired through any replica stops working at once.
    pub async fn get_session(&self, hash: &str) -> StoreResult<Option<SessionLoadRow>> {
        let pool = self.pool.clone();
        let backend = self.backend;
        let answer = self
            .sessions
            .call(hash.to_string(), move |calls| {
                let pool = pool.clone();
                async move { load_sessions(&pool, backend, calls).await }
            })
            .await;
        match answer {
            Some(Ok(row)) => Ok(row),
            Some(Err(e)) => Err(StoreError::Batch(e)),
            None => Err(StoreError::Batch("the session lookup stopped".into())),
        }
    }

    pub async fn touch_session(&self, hash: &str, now: &str) -> StoreResult<()> {
        self.execute_alone(
            sqlx::query("update session set last_seen_at = $1 where session_hash = $2")
                .bind(now)
                .bind(hash),
        )
        .await?;
        Ok(())
    }

    pub async fn delete_session(&self, hash: &str) -> StoreResult<()> {
        self.execute_alone(sqlx::query("delete from session where session_hash = $1").bind(hash))
            .await?;
        Ok(())
    }

    pub async fn delete_expired_sessions(&self, now: &str) -> StoreResult<u64> {
        self.execute_alone(sqlx::query("delete from session where expires_at <= $1").bind(now))
            .await
    }

    // ---- OpenID Connect sign-ins in progress ----------------------------------------------

    pub async fn insert_oidc_login(&self, l: &OidcLoginRow) -> StoreResult<()> {
        let q = sqlx::query(
            "insert into oidc_login (state_hash, session_hash, nonce, pkce_verifier, next_path, \
             created_at, expires_at) values ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&l.state_hash)
        .bind(&l.session_hash)
        .bind(&l.nonce)
        .bind(&l.pkce_verifier)
        .bind(&l.next_path)
        .bind(&l.created_at)
        .bind(&l.expires_at);
        self.execute_alone(q).await?;
        Ok(())
    }

    /// Remove and return the sign-in started with `state_hash` by the session `session_hash`.
    ///
    /// SECURITY: one statement deletes and returns, so of two callbacks racing with the same
    /// `state` exactly one gets the row; and a `state` from another browser finds nothing.
    pub async fn take_oidc_login(
        &self,
        state_hash: &str,
        session_hash: &str,
    ) -> StoreResult<Option<OidcLoginRow>> {
        let mut tx = self.begin().await?;
        let out = sqlx::query_as(
            "delete from oidc_login where state_hash = $1 and session_hash = $2 returning \
             state_hash, session_hash, nonce, pkce_verifier, next_path, created_at, expires_at",
        )
        .bind(state_hash)
        .bind(session_hash)
        .fetch_optional(tx.member.conn())
        .await?;
        tx.commit().await?;
        Ok(out)
    }

    pub async fn delete_expired_oidc_logins(&self, now: &str) -> StoreResult<u64> {
        self.execute_alone(sqlx::query("delete from oidc_login where expires_at <= $1").bind(now))
            .await
    }

    pub async fn find_principal(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<PrincipalRow>> {
        Ok(sqlx::query_as(
            "select principal_id, issuer, subject, email, email_normalized, name, azure_object_id, \
             created_at from principal where issuer = $1 and subject = $2",
        )
        .bind(issuer)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?)
    }

    // ---- jobs ----------------------------------------------------------------------------

    /// Claim the next due job for `owner` until `lease_until`, or `None`.
    pub async fn claim_job(
        &self,
        owner: &str,
        now: &str,
        lease_until: &str,
    ) -> StoreResult<Option<JobRow>> {
        Ok(self
            .claim_jobs(owner, now, lease_until, 1)
            .await?
            .into_iter()
            .next())
    }

    /// Claim up to `limit` due jobs for `owner` until `lease_until`, oldest first, in one
    /// statement (a worker with several idle lanes fills them with one writing transaction
    /// instead of one each).
    ///
    /// A job whose lease ran out (its worker died) is due again; the conditional update makes
    /// two claimers race safely: each row goes to exactly one of them.
    pub async fn claim_jobs(
        &self,
        owner: &str,
        now: &str,
        lease_until: &str,
        limit: usize,
    ) -> StoreResult<Vec<JobRow>> {
        // A read first: an idle worker polls, and a claim is a writing transaction (through
        // the writer slot, with the audit head) that would otherwise commit every poll.
        let due: Option<i64> = sqlx::query_scalar(
            "select 1 from job where state = 'queued' and run_at <= $1 \
             and (lease_until is null or lease_until <= $1) limit 1",
        )
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let lock = match self.backend {
            Backend::Postgres => " for update skip locked",
            Backend::Sqlite => "",
        };
        // The pick is a materialized CTE: PostgreSQL may run an `in (select … limit n)`
        // subquery more than once inside the update and so claim more than `limit` rows.
        let sql = format!(
            "with picked as materialized (select job_id from job where state = 'queued' \
               and run_at <= $3 and (lease_until is null or lease_until <= $3) \
               order by run_at, job_id limit $4{lock}) \
             update job set lease_owner = $1, lease_until = $2, attempts = attempts + 1 \
             where job_id in (select job_id from picked) \
             and state = 'queued' and (lease_until is null or lease_until <= $3) \
             returning {JOB_COLUMNS}"
        );
        // SQL-safe: only fixed fragments and `$n` placeholders are spliced in.
        let mut out: Vec<JobRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .bind(i64::try_from(limit.max(1)).unwrap_or(i64::MAX))
            .fetch_all(tx.member.conn())
            .await?;
        tx.commit().await?;
        // `returning` promises no order.
        out.sort_by(|a, b| (&a.run_at, &a.job_id).cmp(&(&b.run_at, &b.job_id)));
        Ok(out)
    }

    /// Take (or renew) the lease on periodic work `name` until `until`: true when `owner` now
    /// holds it. Another owner's lease is taken only once it has run out.
    pub async fn claim_periodic(
        &self,
        name: &str,
        owner: &str,
        now: &str,
        until: &str,
    ) -> StoreResult<bool> {
        let q = sqlx::query(
            "update periodic_lease set owner = $1, lease_until = $2 \
             where name = $3 and (lease_until <= $4 or owner = $1)",
        )
        .bind(owner)
        .bind(until)
        .bind(name)
        .bind(now);
        Ok(self.execute_alone(q).await? == 1)
    }

    /// Give back every lease `owner` still holds on a queued job (at shutdown, so another
    /// replica takes the work at once instead of after the lease). Returns how many.
    pub async fn release_leases(&self, owner: &str) -> StoreResult<u64> {
        let mut tx = self.begin().await?;
        let released = sqlx::query(
            "update job set lease_owner = null, lease_until = null \
             where state = 'queued' and lease_owner = $1",
        )
        .bind(owner)
        .execute(tx.member.conn())
        .await?
        .rows_affected();
        sqlx::query("update periodic_lease set owner = null, lease_until = '' where owner = $1")
            .bind(owner)
            .execute(tx.member.conn())
            .await?;
        tx.commit().await?;
        Ok(released)
    }

    /// When the next queued job is due (to sleep until then).
    pub async fn next_job_due(&self) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar(
            "select min(case when lease_until is not null and lease_until > run_at then lease_until else run_at end) \
             from job where state = 'queued'",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Give a claimed job back for a later attempt (or mark it failed for good).
    pub async fn retry_job(
        &self,
        j: &JobRow,
        owner: &str,
        run_at: &str,
        error: &str,
        failed_for_good: bool,
        now: &str,
    ) -> StoreResult<bool> {
        let state = if failed_for_good { "failed" } else { "queued" };
        let q = sqlx::query(
            "update job set state = $1, run_at = $2, last_error = $3, lease_owner = null, lease_until = null, \
             finished_at = $4 where job_id = $5 and lease_owner = $6 and attempts = $7 and state = 'queued'",
        )
        .bind(state)
        .bind(run_at)
        .bind(error)
        .bind(if failed_for_good { Some(now.to_string()) } else { None })
        .bind(&j.job_id)
        .bind(owner)
        .bind(j.attempts);
        Ok(self.execute_alone(q).await? == 1)
    }

    pub async fn jobs_for_request(&self, request_id: &str) -> StoreResult<Vec<JobRow>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "select {JOB_COLUMNS} from job where request_id = $1 order by created_at, job_id"
        )))
        .bind(request_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn job_counts(&self) -> StoreResult<Vec<(String, String, i64)>> {
        Ok(
            sqlx::query_as("select kind, state, count(*) from job group by kind, state")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    // ---- review tokens, notifications, grants ---------------------------------------------

    pub async fn get_review_token(&self, jti: &str) -> StoreResult<Option<ReviewTokenRow>> {
        Ok(sqlx::query_as(
            "select jti, request_id, approver_email, kid, issued_at, expires_at, used_at \
             from review_token where jti = $1",
        )
        .bind(jti)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn list_notifications(&self, limit: i64) -> StoreResult<Vec<NotificationRow>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "select notification_id, request_id, kind, recipient, subject, message_id, path, body, sent_at \
             from notification order by sent_at desc, notification_id desc limit {}",
            limit.clamp(1, 1000)
        )))
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn get_notification(&self, id: &str) -> StoreResult<Option<NotificationRow>> {
        Ok(sqlx::query_as(
            "select notification_id, request_id, kind, recipient, subject, message_id, path, body, sent_at \
             from notification where notification_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn get_grant(&self, request_id: &str) -> StoreResult<Option<GrantRow>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "select {GRANT_COLUMNS} from grant_record where request_id = $1"
        )))
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Grants made in Azure that the reconciler should look at: those ended since `since`, and
    /// active ones whose window closed before `now` (their revoke is late).
    pub async fn grants_to_reconcile(&self, since: &str, now: &str) -> StoreResult<Vec<GrantRow>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "select {GRANT_COLUMNS} from grant_record where backend in ('azure-pim', 'azure-rbac') \
             and ((state = 'ended' and ended_at >= $1) or (state = 'active' and active_until < $2)) \
             order by request_id limit 500"
        )))
        .bind(since)
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn simulated_calls(&self, request_id: &str) -> StoreResult<Vec<SimulatedCallRow>> {
        Ok(sqlx::query_as(
            "select call_id, request_id, step, body, at from simulated_call where request_id = $1 order by at, call_id",
        )
        .bind(request_id)
        .fetch_all(&self.pool)
        .await?)
    }

    // ---- audit reads -------------------------------------------------------------------

    /// Every audit row in `seq` order, streamed (constant memory).
    pub fn audit_stream(&self) -> BoxStream<'_, StoreResult<AuditRow>> {
        sqlx::query_as::<_, AuditRow>(
            "select seq, at, action, actor_id, actor_email, actor_object_id, actor_ip, \
             actor_user_agent, request_id, details, prev_hash, hash from audit_event order by seq",
        )
        .fetch(&self.pool)
        .map_err(StoreError::from)
        .boxed()
    }

    pub async fn audit_head(&self) -> StoreResult<(i64, String)> {
        Ok(
            sqlx::query_as("select seq, hash from audit_head where id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn count_audit(&self, action: &str, request_id: Option<&str>) -> StoreResult<i64> {
        let q = match request_id {
            Some(r) => sqlx::query_scalar(
                "select count(*) from audit_event where action = $1 and request_id = $2",
            )
            .bind(action)
            .bind(r.to_string()),
            None => sqlx::query_scalar("select count(*) from audit_event where action = $1")
                .bind(action),
        };
        Ok(q.fetch_one(&self.pool).await?)
    }

    /// How many `action` events a request has had since `since` (inclusive).
    pub async fn count_audit_since(
        &self,
        action: &str,
        request_id: &str,
        since: &str,
    ) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "select count(*) from audit_event where action = $1 and request_id = $2 and at >= $3",
        )
        .bind(action)
        .bind(request_id)
        .bind(since)
        .fetch_one(&self.pool)
        .await?)
    }

    // ---- alerts ----------------------------------------------------------------------------

    /// Azure Monitor alerts taken in since `since`, oldest first (for the digest).
    pub async fn alerts_since(
        &self,
        since: &str,
        limit: i64,
    ) -> StoreResult<Vec<AlertReceivedRow>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "select alert_key, hook, alert_id, condition, kind, summary, vault_id, guards, received_at \
             from alert_received where received_at >= $1 order by received_at, alert_key limit {}",
            limit.clamp(1, 10_000)
        )))
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Two text columns of every row of `sql` (tests and benches only).
    #[doc(hidden)]
    pub async fn query_pairs_for_tests(&self, sql: &str) -> Vec<(String, String)> {
        sqlx::query_as(AssertSqlSafe(sql.to_string()))
            .fetch_all(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Run raw SQL: for tests that tamper with the database on purpose, and nothing else.
    #[doc(hidden)]
    pub async fn execute_raw_for_tests(&self, sql: &str) -> StoreResult<u64> {
        Ok(sqlx::query(AssertSqlSafe(sql.to_string()))
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

impl Tx {
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Run one statement of the caller's inside this transaction (tests only).
    #[doc(hidden)]
    pub async fn execute_raw_for_tests(&mut self, sql: &str) -> StoreResult<u64> {
        self.flush().await?;
        Ok(sqlx::query(AssertSqlSafe(sql.to_string()))
            .execute(self.member.conn())
            .await?
            .rows_affected())
    }

    /// Commit, with everything queued. A caller must not go on to commit after one of its
    /// writes failed: PostgreSQL answers COMMIT of a transaction in which a statement failed by
    /// rolling it back *without an error*, so only the queued rows (tried again here, and
    /// failing again in an aborted transaction) would tell. Every write ends with `?`.
    pub async fn commit(mut self) -> StoreResult<()> {
        // SECURITY: the queued events and jobs (grants, revokes, mails) are part of the
        // transaction: they go in before it commits, or it fails and nothing of it is kept.
        let started = std::time::Instant::now();
        self.flush().await?;
        let flushed = started.elapsed();
        let queued = self.group.queued();
        self.group.commit(self.member).await?;
        tracing::debug!(
            flushed_us = flushed.as_micros() as u64,
            committed_us = started.elapsed().as_micros() as u64,
            queued,
            events = self.appended_audit.len(),
            "transaction committed"
        );
        crate::metrics::audit_committed(self.appended_audit.iter().map(|e| e.action.as_str()));
        Ok(())
    }

    pub async fn get_request(&mut self, id: &str) -> StoreResult<Option<RequestRow>> {
        Ok(sqlx::query_as(SELECT_REQUEST_BY_ID)
            .bind(id)
            .fetch_optional(self.member.conn())
            .await?)
    }

    pub async fn decisions_for(&mut self, request_id: &str) -> StoreResult<Vec<DecisionRow>> {
        Ok(sqlx::query_as(SELECT_DECISIONS)
            .bind(request_id)
            .fetch_all(self.member.conn())
            .await?)
    }

    /// [`Store::requests_by_ids`], inside this transaction.
    pub async fn requests_by_ids(&mut self, ids: &[&str]) -> StoreResult<Vec<RequestRow>> {
        fetch_requests(self.member.conn(), self.backend, ids).await
    }

    /// [`Store::decisions_for_requests`], inside this transaction.
    pub async fn decisions_for_requests(&mut self, ids: &[&str]) -> StoreResult<Vec<DecisionRow>> {
        fetch_decisions(self.member.conn(), self.backend, ids).await
    }

    /// Insert decisions in one statement; none may exist yet for its request and approver
    /// (the caller checked). Returns how many went in: fewer means one did exist, and the
    /// caller must not commit.
    pub async fn insert_decisions(&mut self, rows: &[DecisionRow]) -> StoreResult<u64> {
        let mut added = 0;
        for chunk in sql::chunks(rows) {
            let n = chunk.len();
            let mut p = sql::Params::new(self.backend);
            // SQL-safe: only placeholders are spliced in.
            let sql = format!(
                "insert into decision (decision_id, request_id, approver_id, approver_email, \
                 approver_name, approver_object_id, verdict, comment, matched, channel, at) \
                 values {} on conflict (request_id, approver_id) do nothing",
                p.rows(n, |p| format!("({})", p.list(11)))
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(sql::keep(self.backend, n));
            for d in chunk {
                q = q
                    .bind(&d.decision_id)
                    .bind(&d.request_id)
                    .bind(&d.approver_id)
                    .bind(&d.approver_email)
                    .bind(&d.approver_name)
                    .bind(&d.approver_object_id)
                    .bind(&d.verdict)
                    .bind(&d.comment)
                    .bind(&d.matched)
                    .bind(&d.channel)
                    .bind(&d.at);
            }
            added += q.execute(self.member.conn()).await?.rows_affected();
        }
        Ok(added)
    }

    /// [`Tx::transition`] for several requests at once, each only if it is still in `from`:
    /// how many moved.
    pub async fn transition_all(
        &mut self,
        ids: &[&str],
        from: &str,
        to: &str,
        set: &TransitionSet,
    ) -> StoreResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut p = sql::Params::new(self.backend);
        let mut sql = format!("update request set state = {}", p.next());
        for col in [
            "decided_at",
            "active_from",
            "active_until",
            "ended_at",
            "end_reason",
            "failure_message",
        ] {
            sql.push_str(&format!(", {col} = coalesce({}, {col})", p.next()));
        }
        sql.push_str(&format!(" where state = {}", p.next()));
        sql.push_str(&format!(
            " and request_id in ({})",
            p.list(sql::padded_len(ids.len()))
        ));
        // SQL-safe: only placeholders and the column names above are spliced in.
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .persistent(sql::keep(self.backend, ids.len()))
            .bind(to)
            .bind(&set.decided_at)
            .bind(&set.active_from)
            .bind(&set.active_until)
            .bind(&set.ended_at)
            .bind(&set.end_reason)
            .bind(&set.failure_message)
            .bind(from);
        for id in sql::padded(ids) {
            q = q.bind(id);
        }
        Ok(q.execute(self.member.conn()).await?.rows_affected())
    }

    /// Of these review tokens, the ones not used yet.
    pub async fn unused_review_tokens(&mut self, jtis: &[&str]) -> StoreResult<Vec<String>> {
        let select = "select jti from review_token where used_at is null and jti";
        let rows: Vec<(String,)> =
            fetch_in(self.member.conn(), self.backend, select, jtis, "").await?;
        Ok(rows.into_iter().map(|(jti,)| jti).collect())
    }

    /// [`Tx::consume_review_token`] for several tokens at once: how many were unused and are
    /// used now.
    pub async fn consume_review_tokens(&mut self, jtis: &[&str], now: &str) -> StoreResult<u64> {
        if jtis.is_empty() {
            return Ok(0);
        }
        // SQL-safe: only placeholders are spliced in.
        let mut p = sql::Params::new(self.backend);
        let sql = format!(
            "update review_token set used_at = {} where used_at is null and jti in ({})",
            p.next(),
            p.list(sql::padded_len(jtis.len()))
        );
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .persistent(sql::keep(self.backend, jtis.len()))
            .bind(now);
        for j in sql::padded(jtis) {
            q = q.bind(j);
        }
        Ok(q.execute(self.member.conn()).await?.rows_affected())
    }

    pub async fn insert_request(&mut self, r: &RequestRow) -> StoreResult<()> {
        sqlx::query(
            "insert into request (request_id, guard, policy_hash, vault_id, operation, requester_id, \
             requester_email, requester_name, requester_object_id, justification, ticket, \
             duration_minutes, required_approvals, state, created_at, deadline) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(&r.request_id)
        .bind(&r.guard)
        .bind(&r.policy_hash)
        .bind(&r.vault_id)
        .bind(&r.operation)
        .bind(&r.requester_id)
        .bind(&r.requester_email)
        .bind(&r.requester_name)
        .bind(&r.requester_object_id)
        .bind(&r.justification)
        .bind(&r.ticket)
        .bind(r.duration_minutes)
        .bind(r.required_approvals)
        .bind(&r.state)
        .bind(&r.created_at)
        .bind(&r.deadline)
        .execute(self.member.conn())
        .await?;
        Ok(())
    }

    /// Record a decision unless this approver already has one (returns whether it was new).
    pub async fn insert_decision(&mut self, d: &DecisionRow) -> StoreResult<bool> {
        let r = sqlx::query(
            "insert into decision (decision_id, request_id, approver_id, approver_email, approver_name, \
             approver_object_id, verdict, comment, matched, channel, at) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             on conflict (request_id, approver_id) do nothing",
        )
        .bind(&d.decision_id)
        .bind(&d.request_id)
        .bind(&d.approver_id)
        .bind(&d.approver_email)
        .bind(&d.approver_name)
        .bind(&d.approver_object_id)
        .bind(&d.verdict)
        .bind(&d.comment)
        .bind(&d.matched)
        .bind(&d.channel)
        .bind(&d.at)
        .execute(self.member.conn())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Move a request from `from` to `to`, only if it is still in `from`. Returns whether it
    /// moved: `false` means someone else got there first, and the caller must roll back.
    pub async fn transition(
        &mut self,
        id: &str,
        from: &str,
        to: &str,
        set: &TransitionSet,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "update request set state = $1, \
               decided_at = coalesce($2, decided_at), \
               active_from = coalesce($3, active_from), \
               active_until = coalesce($4, active_until), \
               ended_at = coalesce($5, ended_at), \
               end_reason = coalesce($6, end_reason), \
               failure_message = coalesce($7, failure_message) \
             where request_id = $8 and state = $9",
        )
        .bind(to)
        .bind(&set.decided_at)
        .bind(&set.active_from)
        .bind(&set.active_until)
        .bind(&set.ended_at)
        .bind(&set.end_reason)
        .bind(&set.failure_message)
        .bind(id)
        .bind(from)
        .execute(self.member.conn())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// A note on an active request (why its end waits), shown in its view.
    pub async fn set_failure_message(&mut self, id: &str, message: &str) -> StoreResult<()> {
        sqlx::query(
            "update request set failure_message = $1 where request_id = $2 and state = 'active'",
        )
        .bind(message)
        .bind(id)
        .execute(self.member.conn())
        .await?;
        Ok(())
    }

    /// Mark an active window for early end (once).
    pub async fn request_end(
        &mut self,
        id: &str,
        now: &str,
        by: &str,
        reason: &str,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "update request set end_requested_at = $1, end_requested_by = $2, end_reason = $3 \
             where request_id = $4 and state = 'active' and end_requested_at is null",
        )
        .bind(now)
        .bind(by)
        .bind(reason)
        .bind(id)
        .execute(self.member.conn())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Queue a job with the transaction's other queued jobs: they are inserted in one statement
    /// before the transaction commits (or reads or changes the job table), with the dedupe of
    /// [`Tx::insert_job`] (a `dedupe_key` already present, in the table or earlier in the
    /// queue, adds nothing). A decision that queues a grant and three mails writes them in one
    /// round trip instead of four, inside the writer slot that every writer waits for.
    pub fn queue_job(&mut self, j: NewJob) {
        self.queued_jobs.push(j);
    }

    /// Insert what is queued: the audit events, then the jobs.
    async fn flush(&mut self) -> StoreResult<()> {
        if self.audit_inserted < self.appended_audit.len() {
            let rows = std::mem::take(&mut self.appended_audit);
            let inserted = self.insert_audit_rows(&rows[self.audit_inserted..]).await;
            // Kept either way; on an error still counted as not inserted, so `commit` tries
            // them again or fails (never commits without them).
            self.appended_audit = rows;
            inserted?;
            self.audit_inserted = self.appended_audit.len();
        }
        self.flush_jobs().await
    }

    /// Insert the jobs queued with [`Tx::queue_job`], in queue order, as multi-row inserts.
    async fn flush_jobs(&mut self) -> StoreResult<()> {
        if self.queued_jobs.is_empty() {
            return Ok(());
        }
        let mut jobs = std::mem::take(&mut self.queued_jobs);
        // The first of two jobs with the same key wins, as with one insert after another
        // (and one statement must not hold a key twice for ON CONFLICT).
        let mut seen = std::collections::HashSet::new();
        jobs.retain(|j| j.dedupe_key.as_ref().is_none_or(|k| seen.insert(k.clone())));
        if let Err(e) = self.insert_jobs(&jobs).await {
            // SECURITY: kept queued, so that `commit` tries them again or fails: a caller that
            // went on after this error can never commit without its grant or revoke jobs.
            self.queued_jobs = jobs;
            return Err(e);
        }
        Ok(())
    }

    /// Insert `jobs` in order as multi-row statements, each skipping a `dedupe_key` already
    /// present: how many went in.
    async fn insert_jobs(&mut self, jobs: &[NewJob]) -> StoreResult<u64> {
        let mut added = 0;
        for chunk in sql::chunks(jobs) {
            let n = chunk.len();
            let mut p = sql::Params::new(self.backend);
            // SQL-safe: only placeholders are spliced in.
            let sql = format!(
                "insert into job (job_id, kind, request_id, payload, dedupe_key, state, attempts, \
                 max_attempts, run_at, created_at) values {} on conflict (dedupe_key) do nothing",
                p.rows(n, |p| format!(
                    "({}, 'queued', 0, {})",
                    p.list(5),
                    p.list(3)
                ))
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(sql::keep(self.backend, n));
            for j in chunk {
                q = q
                    .bind(&j.job_id)
                    .bind(&j.kind)
                    .bind(&j.request_id)
                    .bind(&j.payload)
                    .bind(&j.dedupe_key)
                    .bind(j.max_attempts)
                    .bind(&j.run_at)
                    .bind(&j.created_at);
            }
            added += q.execute(self.member.conn()).await?.rows_affected();
        }
        Ok(added)
    }

    /// Queue a job now. With a `dedupe_key` already present, nothing is added (returns `false`).
    pub async fn insert_job(&mut self, j: &NewJob) -> StoreResult<bool> {
        self.flush_jobs().await?;
        Ok(self.insert_jobs(std::slice::from_ref(j)).await? == 1)
    }

    /// Bring a queued job forward (e.g. the revoke of a window ended early).
    pub async fn reschedule_job(&mut self, dedupe_key: &str, run_at: &str) -> StoreResult<bool> {
        self.flush_jobs().await?;
        let r = sqlx::query(
            "update job set run_at = $1 where dedupe_key = $2 and state = 'queued' and run_at > $1",
        )
        .bind(run_at)
        .bind(dedupe_key)
        .execute(self.member.conn())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Finish a claimed job. `false` means the lease was lost (another worker took over): the
    /// caller must roll back so the job's effect is not applied twice.
    pub async fn complete_job(&mut self, j: &JobRow, owner: &str, now: &str) -> StoreResult<bool> {
        self.flush_jobs().await?;
        let r = sqlx::query(
            "update job set state = 'done', finished_at = $1, lease_owner = null, lease_until = null \
             where job_id = $2 and lease_owner = $3 and attempts = $4 and state = 'queued'",
        )
        .bind(now)
        .bind(&j.job_id)
        .bind(owner)
        .bind(j.attempts)
        .execute(self.member.conn())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Mark a claimed job failed for good (only while the lease holds).
    pub async fn fail_job(
        &mut self,
        j: &JobRow,
        owner: &str,
        now: &str,
        error: &str,
    ) -> StoreResult<bool> {
        self.flush_jobs().await?;
        let r = sqlx::query(
            "update job set state = 'failed', finished_at = $1, last_error = $2, lease_owner = null, \
             lease_until = null where job_id = $3 and lease_owner = $4 and attempts = $5 and state = 'queued'",
        )
        .bind(now)
        .bind(error)
        .bind(&j.job_id)
        .bind(owner)
        .bind(j.attempts)
        .execute(self.member.conn())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn insert_review_token(&mut self, t: &ReviewTokenRow) -> StoreResult<()> {
        sqlx::query(
            "insert into review_token (jti, request_id, approver_email, kid, issued_at, expires_at) \
             values ($1, $2, $3, $4, $5, $6) on conflict (jti) do nothing",
        )
        .bind(&t.jti)
        .bind(&t.request_id)
        .bind(&t.approver_email)
        .bind(&t.kid)
        .bind(&t.issued_at)
        .bind(&t.expires_at)
        .execute(self.member.conn())
        .await?;
        Ok(())
    }

    /// Use a review token once. `false`: it was already used (a replay).
    pub async fn consume_review_token(&mut self, jti: &str, now: &str) -> StoreResult<bool> {
        let r =
            sqlx::query("update review_token set used_at = $1 where jti = $2 and used_at is null")
                .bind(now)
                .bind(jti)
                .execute(self.member.conn())
                .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn insert_notification(&mut self, n: &NotificationRow) -> StoreResult<bool> {
        let r = sqlx::query(
            "insert into notification (notification_id, request_id, kind, recipient, subject, message_id, path, body, sent_at) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9) on conflict (notification_id) do nothing",
        )
        .bind(&n.notification_id)
        .bind(&n.request_id)
        .bind(&n.kind)
        .bind(&n.recipient)
        .bind(&n.subject)
        .bind(&n.message_id)
        .bind(&n.path)
        .bind(&n.body)
        .bind(&n.sent_at)
        .execute(self.member.conn())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn insert_grant(&mut self, g: &GrantRow) -> StoreResult<bool> {
        let r = sqlx::query(
            "insert into grant_record (request_id, backend, scope, role_definition_id, principal_object_id, \
             state, requested_at, active_from, active_until, ended_at, detail) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) on conflict (request_id) do nothing",
        )
        .bind(&g.request_id)
        .bind(&g.backend)
        .bind(&g.scope)
        .bind(&g.role_definition_id)
        .bind(&g.principal_object_id)
        .bind(&g.state)
        .bind(&g.requested_at)
        .bind(&g.active_from)
        .bind(&g.active_until)
        .bind(&g.ended_at)
        .bind(&g.detail)
        .execute(self.member.conn())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn update_grant(
        &mut self,
        request_id: &str,
        from: &str,
        to: &str,
        set: &GrantSet,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "update grant_record set state = $1, active_from = coalesce($2, active_from), \
             active_until = coalesce($3, active_until), ended_at = coalesce($4, ended_at), \
             detail = coalesce($5, detail) where request_id = $6 and state = $7",
        )
        .bind(to)
        .bind(&set.active_from)
        .bind(&set.active_until)
        .bind(&set.ended_at)
        .bind(&set.detail)
        .bind(request_id)
        .bind(from)
        .execute(self.member.conn())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Record a simulated Azure call; a repeat of the same call id is a no-op (`false`).
    pub async fn insert_simulated_call(&mut self, c: &SimulatedCallRow) -> StoreResult<bool> {
        let r = sqlx::query(
            "insert into simulated_call (call_id, request_id, step, body, at) values ($1, $2, $3, $4, $5) \
             on conflict (call_id) do nothing",
        )
        .bind(&c.call_id)
        .bind(&c.request_id)
        .bind(&c.step)
        .bind(&c.body)
        .bind(&c.at)
        .execute(self.member.conn())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn upsert_guard_policy(
        &mut self,
        guard: &str,
        hash: &str,
        now: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "insert into guard_policy (guard, policy_hash, loaded_at) values ($1, $2, $3) \
             on conflict (guard) do update set policy_hash = excluded.policy_hash, loaded_at = excluded.loaded_at",
        )
        .bind(guard)
        .bind(hash)
        .bind(now)
        .execute(self.member.conn())
        .await?;
        Ok(())
    }

    // ---- alerts ------------------------------------------------------------------------

    /// Record an alert taken in. `false`: the same alert id and condition was already taken in.
    pub async fn insert_alert_received(&mut self, a: &AlertReceivedRow) -> StoreResult<bool> {
        let r = sqlx::query(
            "insert into alert_received (alert_key, hook, alert_id, condition, kind, summary, vault_id, \
             guards, received_at) values ($1, $2, $3, $4, $5, $6, $7, $8, $9) on conflict (alert_key) do nothing",
        )
        .bind(&a.alert_key)
        .bind(&a.hook)
        .bind(&a.alert_id)
        .bind(&a.condition)
        .bind(&a.kind)
        .bind(&a.summary)
        .bind(&a.vault_id)
        .bind(&a.guards)
        .bind(&a.received_at)
        .execute(self.member.conn())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// How many `action` events since `since` (inclusive) a request had (`None`: events tied
    /// to no request). Inside the writers' lock, so a threshold is crossed exactly once.
    pub async fn count_audit_since(
        &mut self,
        action: &str,
        request_id: Option<&str>,
        since: &str,
    ) -> StoreResult<i64> {
        self.flush().await?;
        let q = match request_id {
            Some(r) => sqlx::query_scalar(
                "select count(*) from audit_event where action = $1 and request_id = $2 and at >= $3",
            )
            .bind(action)
            .bind(r.to_string())
            .bind(since),
            None => sqlx::query_scalar(
                "select count(*) from audit_event where action = $1 and request_id is null and at >= $2",
            )
            .bind(action)
            .bind(since),
        };
        Ok(q.fetch_one(self.member.conn()).await?)
    }

    /// Whether a fired alert of `kind` about `vault_id` (lower case) arrived since `since`.
    pub async fn alert_about_vault_since(
        &mut self,
        vault_id: &str,
        kind: &str,
        since: &str,
    ) -> StoreResult<bool> {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from alert_received where vault_id = $1 and kind = $2 and received_at >= $3 \
             and lower(condition) = 'fired'",
        )
        .bind(vault_id)
        .bind(kind)
        .bind(since)
        .fetch_one(self.member.conn())
        .await?;
        Ok(n > 0)
    }

    /// How many requests `requester_id` made since `since` (inclusive).
    pub async fn count_requests_since(
        &mut self,
        requester_id: &str,
        since: &str,
    ) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "select count(*) from request where requester_id = $1 and created_at >= $2",
        )
        .bind(requester_id)
        .bind(since)
        .fetch_one(self.member.conn())
        .await?)
    }

    /// The last posture report of `guard`, read in this (writing, serialized) transaction.
    pub async fn get_posture(&mut self, guard: &str) -> StoreResult<Option<PostureRow>> {
        Ok(sqlx::query_as(
            "select guard, run_at, report, names_resolved, names_note from posture_report where guard = $1",
        )
        .bind(guard)
        .fetch_optional(self.member.conn())
        .await?)
    }

    pub async fn put_posture(&mut self, r: &PostureRow) -> StoreResult<()> {
        sqlx::query(
            "insert into posture_report (guard, run_at, report, names_resolved, names_note) \
             values ($1, $2, $3, $4, $5) on conflict (guard) do update set run_at = excluded.run_at, \
             report = excluded.report, names_resolved = excluded.names_resolved, names_note = excluded.names_note",
        )
        .bind(&r.guard)
        .bind(&r.run_at)
        .bind(&r.report)
        .bind(r.names_resolved)
        .bind(&r.names_note)
        .execute(self.member.conn())
        .await?;
        Ok(())
    }

    // ---- the audit chain ---------------------------------------------------------------

    /// The chain head, taken with its row lock by [`Store::begin`] and kept in the open
    /// transaction group (see `group_commit`).
    pub fn audit_head(&mut self) -> (i64, String) {
        self.member.head()
    }

    /// Move the head to an event already inserted in this transaction (bulk seeding; not
    /// with events appended and not yet flushed).
    pub(crate) fn set_audit_head(&mut self, seq: i64, hash: &str) {
        debug_assert!(self.appended_audit.is_empty(), "seeding after append_audit");
        self.member.set_head((seq, hash.to_string()));
    }

    /// Append one event and move the head to it. The row is inserted with the transaction's
    /// other events in one statement before it commits (or reads the audit table); the head
    /// row is written once per group, at its commit.
    pub async fn append_audit(&mut self, e: &AuditRow) -> StoreResult<()> {
        self.member.set_head((e.seq, e.hash.clone()));
        self.appended_audit.push(e.clone());
        Ok(())
    }

    /// The events about `request_id` appended in this transaction, in order. For a request
    /// created in it, these are all the events it has when the transaction commits.
    pub fn events_of(&self, request_id: &str) -> Vec<AuditRow> {
        self.appended_audit
            .iter()
            .filter(|e| e.request_id.as_deref() == Some(request_id))
            .cloned()
            .collect()
    }
}
