//! SQL job stores on [sqlx]: SQLite (embedded, a file path is all it needs), PostgreSQL and
//! MySQL 8 / MariaDB 10.6+, each behind its own cargo feature (`sqlite`, `postgres`, `mysql`).
//!
//! One [`SqlStore`] type serves all three; the claim logic, the corrupt-row handling and the
//! fencing live once in this module, the `sqlite`, `postgres` and `mysql` submodules only
//! hold what differs between the databases (column types, locking clauses, how a write
//! transaction begins, wake-ups).

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{
    AssertSqlSafe, ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type,
};
use tokio::task::JoinHandle;

use super::common::{first_version, from_micros, lease_until, micros_ceil, Reported};
use super::{DueJob, JobStore, StoreContext};
use crate::error::{Error, Result};
use crate::job::{Callable, JobRecord, Lease};
use crate::sync::{MutexExt, RwLockExt};

/// The schema version this build writes (see [`Dialect::migrations`]).
const SCHEMA_VERSION: i64 = 1;

/// The longest table name accepted: leaves room for the `_schema` suffix and index names
/// within PostgreSQL's 63 and MySQL's 64 character identifier limits.
const MAX_TABLE_LEN: usize = 48;

/// A job store on an SQL database, shared safely by any number of schedulers.
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # async fn f() -> apsched::Result<()> {
/// use apsched::store::SqlStore;
/// use apsched::Scheduler;
///
/// let store = SqlStore::sqlite("jobs.db")?.with_table("my_jobs");
/// let scheduler = Scheduler::builder().store("default", store).build();
/// scheduler.start().await?;
/// # Ok(())
/// # }
/// ```
///
/// Only jobs naming a registered task or a command can be stored; see the
/// sections below for the table layout and the sharing guarantees.
///
/// # Table layout
/// One table per store (name configurable, `apsched_jobs` by default):
///
/// | column | type | meaning |
/// | --- | --- | --- |
/// | `id` | text, primary key | the job id |
/// | `next_run_time` | 64-bit integer, indexed | µs since the Unix epoch (rounded up); `NULL` = paused; the job's next run time (the document's copy is for reading) |
/// | `paused` | boolean | `next_run_time IS NULL`, for ordering |
/// | `doc` | text | the job as JSON ([`JobRecord::to_json`]) |
/// | `version` | 64-bit integer | random when the job is added, bumped by every write; writes compare it (fencing) |
/// | `lease_owner` | text | the scheduler that claimed the job, while it submits its runs |
/// | `lease_until` | 64-bit integer, indexed | when that claim expires (µs since the epoch) |
///
/// plus `<table>_schema (version)`, the schema versions applied; [`JobStore::start`] applies
/// missing migrations and refuses a table written by a newer schema.
///
/// # Sharing
/// [`JobStore::acquire_due_jobs`] selects the due rows (`next_run_time <= now` and no live
/// lease of another scheduler) in `(next_run_time, id)` order with `FOR UPDATE SKIP LOCKED`
/// (PostgreSQL, MySQL/MariaDB) or inside a `BEGIN IMMEDIATE` transaction (SQLite), advances
/// each with [`DueJob::claim`], writes it back with a lease and `version + 1` (or deletes it
/// when its trigger is exhausted), and commits: one transaction, so no scheduled time of a
/// job is submitted by two schedulers (or twice by one).
#[derive(Debug)]
pub struct SqlStore {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    #[cfg(feature = "sqlite")]
    Sqlite(Core<sqlx::Sqlite>),
    #[cfg(feature = "postgres")]
    Postgres(Core<sqlx::Postgres>),
    #[cfg(feature = "mysql")]
    MySql(Core<sqlx::MySql>),
}

/// Calls `$body` with `$core` bound to the store's [`Core`], whatever its database.
macro_rules! with_core {
    ($self:expr, $core:ident => $body:expr) => {
        match &$self.backend {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite($core) => $body,
            #[cfg(feature = "postgres")]
            Backend::Postgres($core) => $body,
            #[cfg(feature = "mysql")]
            Backend::MySql($core) => $body,
        }
    };
}

macro_rules! with_core_mut {
    ($self:expr, $core:ident => $body:expr) => {
        match &mut $self.backend {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite($core) => $body,
            #[cfg(feature = "postgres")]
            Backend::Postgres($core) => $body,
            #[cfg(feature = "mysql")]
            Backend::MySql($core) => $body,
        }
    };
}

impl SqlStore {
    /// The table name used when none is given.
    pub const DEFAULT_TABLE: &'static str = "apsched_jobs";

    /// The SQLite file [`SqlStore::sqlite_default`] uses.
    pub const DEFAULT_SQLITE_FILE: &'static str = "apsched.db";

    /// How often SQLite and MySQL stores are polled for changes made by other processes,
    /// unless set with [`SqlStore::with_poll_interval`].
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

    /// Connects to the database named by `url` and checks that it answers:
    /// `sqlite://path/to/file.db` (created if missing), `postgres://user@host:port/db`,
    /// `mysql://user:password@host:port/db` (also for MariaDB). Each scheme needs its cargo
    /// feature.
    ///
    /// The connection pool reconnects by itself after an outage. Its size is 5 (4 on an
    /// SQLite file) unless the URL says `pool_size=N` (or `max_connections=N`), see
    /// [`with_pool_size`](Self::with_pool_size). Parts the URL leaves out are filled in as the
    /// database's own client does (PostgreSQL: `PGUSER`, else the operating-system user,
    /// and so on; MySQL: the operating-system user, `MYSQL_HOST`, `MYSQL_TCP_PORT`).
    ///
    /// # Errors
    /// [`Error::InvalidStoreUrl`] if the URL is not understood or its feature is not
    /// enabled; [`Error::Store`] if the database does not answer.
    pub async fn connect(url: &str) -> Result<Self> {
        let store = Self::lazy(url)?;
        with_core!(store, core => core.ping().await)?;
        Ok(store)
    }

    /// Like [`connect`](Self::connect), without checking that the database answers now:
    /// the first connection is made when the store is first used.
    ///
    /// [`crate::store::from_url`] opens SQL stores with this.
    ///
    /// # Errors
    /// [`Error::InvalidStoreUrl`] if the URL is not understood or its feature is not enabled.
    pub fn lazy(url: &str) -> Result<Self> {
        let (rest, pool_size) = take_pool_size(url)?;
        let scheme = url.split_once(':').map_or("", |(s, _)| s);
        let backend = match scheme {
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                let (pool, in_memory) = sqlite::pool_from_url(&rest)?;
                Backend::Sqlite(Core::new(pool, !in_memory))
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => Backend::Postgres(Core::new(
                <sqlx::Postgres as Dialect>::pool(
                    postgres::options(&rest)?,
                    <sqlx::Postgres as Dialect>::DEFAULT_POOL_SIZE,
                ),
                true,
            )),
            #[cfg(feature = "mysql")]
            "mysql" | "mariadb" => Backend::MySql(Core::new(
                <sqlx::MySql as Dialect>::pool(
                    mysql::options(&rest)?,
                    <sqlx::MySql as Dialect>::DEFAULT_POOL_SIZE,
                ),
                true,
            )),
            _ => {
                return Err(Error::InvalidStoreUrl {
                    url: url.to_string(),
                    reason: format!(
                        "not an SQL database URL scheme ('{scheme}'); this build has: {}",
                        enabled_schemes()
                    ),
                })
            }
        };
        let store = SqlStore { backend };
        Ok(match pool_size {
            Some(n) => store.with_pool_size(n),
            None => store,
        })
    }

    /// A store in the SQLite file at `path` (created if missing), in WAL mode so several
    /// processes on this machine can share it. `":memory:"` gives a private in-memory
    /// database (gone with the store).
    ///
    /// # Errors
    /// Never fails today; kept fallible so that later checks need no API change.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(path: impl AsRef<Path>) -> Result<Self> {
        let (pool, in_memory) = sqlite::pool_from_path(path.as_ref());
        Ok(SqlStore {
            backend: Backend::Sqlite(Core::new(pool, !in_memory)),
        })
    }

    /// A store in [`SqlStore::DEFAULT_SQLITE_FILE`] in the current directory.
    ///
    /// # Errors
    /// See [`sqlite`](Self::sqlite).
    #[cfg(feature = "sqlite")]
    pub fn sqlite_default() -> Result<Self> {
        Self::sqlite(Self::DEFAULT_SQLITE_FILE)
    }

    /// Keeps jobs in `table` (default [`SqlStore::DEFAULT_TABLE`]). The name must be an
    /// identifier: an ASCII letter or `_`, then letters, digits or `_`, at most 48
    /// characters. An invalid name is reported by [`JobStore::start`] (it never reaches SQL).
    #[must_use]
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        let table = table.into();
        with_core_mut!(self, core => core.table = table);
        self
    }

    /// Looks for changes made by other processes this often; `None` never polls (default
    /// [`SqlStore::DEFAULT_POLL_INTERVAL`] on SQLite and MySQL; PostgreSQL is woken by
    /// LISTEN/NOTIFY and polls only if this is set).
    #[must_use]
    pub fn with_poll_interval(mut self, every: Option<Duration>) -> Self {
        with_core_mut!(self, core => core.poll = every);
        self
    }

    /// Keeps at most `connections` connections to the database (at least 1; default 5 on
    /// PostgreSQL and MySQL, 4 on an SQLite file; the URL parameter `pool_size=N`, or its
    /// alias `max_connections=N`, sets the same). The PostgreSQL listener has a connection
    /// of its own, outside the pool. A private in-memory SQLite database always has exactly
    /// one: that connection is the database.
    #[must_use]
    pub fn with_pool_size(mut self, connections: u32) -> Self {
        with_core_mut!(self, core => core.resize(connections));
        self
    }

    /// The table this store keeps its jobs in.
    pub fn table(&self) -> &str {
        with_core!(self, core => &core.table)
    }

    /// Drops the job table and its schema table, with every job in them (for tests and
    /// uninstalling). The store must be started again before further use.
    ///
    /// # Errors
    /// [`Error::Store`] if the table name is invalid or the database fails.
    pub async fn drop_tables(&self) -> Result<()> {
        with_core!(self, core => core.drop_tables().await)
    }
}

/// The URL parameters that set the pool size (apsched's, so they are taken out before the
/// driver sees the URL).
const POOL_SIZE_PARAMS: [&str; 2] = ["pool_size", "max_connections"];

/// `url` without its pool-size parameter, and the size it gave.
fn take_pool_size(url: &str) -> Result<(String, Option<u32>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None));
    };
    let mut size = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !POOL_SIZE_PARAMS.contains(&key) {
            kept.push(pair);
            continue;
        }
        match value.parse::<u32>() {
            Ok(n) if n >= 1 => size = Some(n),
            _ => {
                return Err(Error::InvalidStoreUrl {
                    url: url.to_string(),
                    reason: format!("{key} must be a whole number of connections, at least 1"),
                })
            }
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, size))
}

/// A URL the driver could not parse.
fn bad_url(url: &str, e: &sqlx::Error) -> Error {
    Error::InvalidStoreUrl {
        url: url.to_string(),
        reason: e.to_string(),
    }
}

fn enabled_schemes() -> String {
    let schemes: &[&str] = &[
        #[cfg(feature = "sqlite")]
        "sqlite",
        #[cfg(feature = "postgres")]
        "postgres",
        #[cfg(feature = "mysql")]
        "mysql",
    ];
    schemes.join(", ")
}

/// What differs between the databases. Everything else is written once, in [`Core`].
pub(crate) trait Dialect: Database + sqlx::database::HasStatementCache + Sized {
    /// For messages.
    const LABEL: &'static str;
    /// Appended to the due-rows query: `FOR UPDATE SKIP LOCKED`, or nothing where the
    /// transaction itself is exclusive.
    const LOCK_SKIP: &'static str;
    /// The statement beginning a write transaction (`None` = the driver's default).
    const BEGIN: Option<&'static str>;
    /// Whether this store should poll by default (no push notifications).
    const POLLS: bool;
    /// The pool size unless the user sets one.
    const DEFAULT_POOL_SIZE: u32;

    /// A lazily connecting pool of at most `size` connections.
    fn pool(opts: <Self::Connection as sqlx::Connection>::Options, size: u32) -> Pool<Self>;

    /// The number of rows a statement changed.
    fn rows_affected(r: &Self::QueryResult) -> u64;

    /// Rewrites the `?` placeholders of `sql` for this database.
    fn placeholders(sql: &str) -> String {
        sql.to_string()
    }

    /// The migrations, oldest first: migration `i` brings the schema to version `i + 1`.
    /// Each statement must be idempotent (`IF NOT EXISTS`), since several processes may
    /// start at once.
    fn migrations(table: &str) -> Vec<Vec<String>>;

    /// A statement telling other schedulers that jobs changed (bound: channel, payload).
    fn notify_sql() -> Option<&'static str> {
        None
    }

    /// A statement writing back `rows` claimed rows at once, binding per row: id,
    /// next_run_time, paused, doc, version, lease_owner, lease_until. The default
    /// (`UPDATE … FROM` a `VALUES` list) suits PostgreSQL and SQLite 3.33+.
    fn claim_many(t: &str, rows: usize) -> String {
        format!(
            "WITH v (id, nrt, paused, doc, version, owner, until) AS (VALUES {}) \
             UPDATE {t} SET next_run_time = v.nrt, paused = v.paused, doc = v.doc, \
             version = v.version, lease_owner = v.owner, lease_until = v.until \
             FROM v WHERE {t}.id = v.id",
            list(rows, "(?, ?, ?, ?, ?, ?, ?)")
        )
    }

    /// Whether an error is a lock conflict (deadlock victim, busy file, serialisation
    /// failure) that an immediate retry of the claim is likely to get past.
    fn lock_conflict(e: &dyn sqlx::error::DatabaseError) -> bool {
        matches!(e.code().as_deref(), Some("40001" | "40P01" | "55P03"))
    }

    /// Starts a task that wakes this scheduler when another one changes the table.
    fn listen(core: &Core<Self>, ctx: &StoreContext, channel: String) -> Option<JoinHandle<()>> {
        let _ = (core, ctx, channel);
        None
    }
}

/// SQL statements, built once per start from the validated table name.
#[derive(Debug)]
struct Statements {
    select_due: String,
    delete: String,
    insert: String,
    replace: String,
    update_cas: String,
    select_version: String,
    lookup: String,
    all: String,
    delete_all: String,
    next: String,
    notify: Option<String>,
}

impl Statements {
    fn new<DB: Dialect>(t: &str) -> Self {
        let p = DB::placeholders;
        // Every row read has these columns, in this order (see `Core::read_row`).
        let cols = "id, doc, version, lease_owner, lease_until, next_run_time";
        Statements {
            select_due: p(&format!(
                "SELECT {cols} FROM {t} WHERE next_run_time <= ? \
                 AND (lease_until IS NULL OR lease_until <= ? OR lease_owner = ?) \
                 ORDER BY next_run_time, id LIMIT ?{}",
                DB::LOCK_SKIP
            )),
            delete: p(&format!("DELETE FROM {t} WHERE id = ?")),
            insert: p(&format!(
                "INSERT INTO {t} (id, next_run_time, paused, doc, version) \
                 VALUES (?, ?, ?, ?, ?)"
            )),
            replace: p(&format!(
                "UPDATE {t} SET next_run_time = ?, paused = ?, doc = ?, version = ?, \
                 lease_owner = NULL, lease_until = NULL WHERE id = ?"
            )),
            update_cas: p(&format!(
                "UPDATE {t} SET next_run_time = ?, paused = ?, doc = ?, version = ? \
                 WHERE id = ? AND version = ?"
            )),
            select_version: p(&format!("SELECT version FROM {t} WHERE id = ?")),
            lookup: p(&format!("SELECT {cols} FROM {t} WHERE id = ?")),
            all: format!("SELECT {cols} FROM {t} ORDER BY paused, next_run_time, id"),
            delete_all: format!("DELETE FROM {t}"),
            // The earliest time this scheduler could claim something: rows free of other
            // leases (or whose lease ends before they are due) at their next run time, and
            // rows leased by another scheduler when that lease ends. Each half walks its
            // own index; one statement, so both halves see the same snapshot (two
            // statements could miss a row whose lease was released in between, and report
            // nothing due at all).
            next: p(&format!(
                "SELECT id, t FROM (SELECT id, next_run_time AS t FROM {t} \
                 WHERE next_run_time IS NOT NULL AND (lease_until IS NULL OR lease_owner = ? \
                 OR lease_until <= next_run_time) ORDER BY next_run_time, id LIMIT ?) AS free \
                 UNION ALL \
                 SELECT id, t FROM (SELECT id, lease_until AS t FROM {t} \
                 WHERE lease_until IS NOT NULL AND next_run_time IS NOT NULL \
                 AND lease_owner <> ? AND lease_until > next_run_time \
                 ORDER BY lease_until, id LIMIT ?) AS leased"
            )),
            notify: DB::notify_sql().map(p),
        }
    }
}

/// What a started store knows.
#[derive(Debug)]
struct Started {
    ctx: StoreContext,
    table: String,
    sql: Statements,
    channel: String,
    /// Set when a change should be announced to other schedulers (PostgreSQL).
    changed: Option<Arc<tokio::sync::Notify>>,
}

/// The store for one database type: everything that is the same for all of them.
#[derive(Debug)]
pub(crate) struct Core<DB: Database> {
    pool: Pool<DB>,
    /// Whether [`SqlStore::with_pool_size`] may change the pool (not for a private in-memory
    /// SQLite database, whose one connection is the database).
    resizable: bool,
    table: String,
    poll: Option<Duration>,
    started: RwLock<Option<Arc<Started>>>,
    /// Rows that could not be loaded, with the version that was reported: each is
    /// reported once, kept, and neither claimed nor counted as due while its version stays.
    bad: Reported,
    /// Rows whose document and columns disagree, with the version that was reported: each
    /// is reported once (see `Core::load`).
    noted: Reported,
    /// The LISTEN and NOTIFY tasks (PostgreSQL).
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<DB: Database> Drop for Core<DB> {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
    }
}

/// Rows written per statement when claiming or releasing a batch (7 parameters a row
/// stays well below every database's limit).
const BATCH: usize = 500;

/// `n` copies of `item`, comma-separated: the placeholders of a batch statement.
fn list(n: usize, item: &str) -> String {
    vec![item; n].join(", ")
}

/// A row to write: a claimed row written back, or a new one ([`Core::add_jobs`]).
struct ClaimRow {
    id: String,
    next: Option<i64>,
    doc: String,
    version: i64,
}

/// A row as read from the table. Any column may hold what this store never writes (a row
/// edited by hand, an SQLite value of another storage class): such a row is a corrupt
/// record like any other, reported and kept, never an error of the whole read.
struct RawRow {
    id: String,
    /// The version, or [`UNREADABLE`] (the key under which a bad row is remembered).
    version: i64,
    /// The other columns, or why one of them cannot be read.
    columns: std::result::Result<Columns, String>,
}

struct Columns {
    doc: String,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    next_run_time: Option<i64>,
}

/// The version a row whose `version` column cannot be read is remembered under.
const UNREADABLE: i64 = i64::MIN;

fn store_error(
    store: &str,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
) -> Error {
    Error::Store {
        store: store.to_string(),
        message,
        source,
    }
}

/// Checks that `table` is a plain SQL identifier, so that it can be put into statements.
pub(crate) fn validate_table(table: &str) -> std::result::Result<(), String> {
    let mut chars = table.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok
        || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || table.len() > MAX_TABLE_LEN
    {
        return Err(format!(
            "invalid table name '{table}': use an ASCII letter or '_' followed by letters, \
             digits or '_', at most {MAX_TABLE_LEN} characters"
        ));
    }
    Ok(())
}

fn version_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What a row is remembered under in [`Reported`]: its version, bit for bit.
fn fp(version: i64) -> u64 {
    version as u64
}

fn version_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl<DB: Dialect> Core<DB> {
    fn new(pool: Pool<DB>, resizable: bool) -> Self {
        Core {
            pool,
            resizable,
            table: SqlStore::DEFAULT_TABLE.to_string(),
            poll: DB::POLLS.then_some(SqlStore::DEFAULT_POLL_INTERVAL),
            started: RwLock::new(None),
            bad: Reported::default(),
            noted: Reported::default(),
            tasks: Mutex::new(Vec::new()),
        }
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// Replaces the (not yet connected) pool by one of `size` connections.
    fn resize(&mut self, size: u32) {
        if self.resizable {
            let opts = (*self.pool.connect_options()).clone();
            self.pool = DB::pool(opts, size.max(1));
        }
    }

    fn alias(&self) -> String {
        self.started
            .read_unpoisoned()
            .as_ref()
            .map_or_else(|| "sql".to_string(), |s| s.ctx.alias().to_string())
    }

    fn started(&self) -> Result<Arc<Started>> {
        self.started.read_unpoisoned().clone().ok_or_else(|| {
            store_error(
                "sql",
                format!(
                    "the {} store on table '{}' is not started (add it to a scheduler, \
                         or call JobStore::start)",
                    DB::LABEL,
                    self.table
                ),
                None,
            )
        })
    }

    /// Wraps a database error as [`Error::Store`], saying what the store was doing.
    fn err(&self, doing: &str, e: sqlx::Error) -> Error {
        store_error(
            &self.alias(),
            format!("{} ({}): {doing}: {e}", DB::LABEL, self.table),
            Some(Box::new(e)),
        )
    }
}

impl<DB> Core<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB>,
    str: Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    usize: ColumnIndex<DB::Row>,
{
    async fn ping(&self) -> Result<()> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.err("connecting", e))?;
        sqlx::Connection::ping(&mut *conn)
            .await
            .map_err(|e| self.err("checking the connection", e))
    }

    async fn begin_write(
        &self,
    ) -> std::result::Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
        match DB::BEGIN {
            Some(stmt) => self.pool.begin_with(stmt).await,
            None => self.pool.begin().await,
        }
    }

    /// Deletes the rows of `ids` inside `tx`, a batch per statement (a round trip per
    /// [`BATCH`] ids, not per id).
    async fn delete_ids(
        tx: &mut sqlx::Transaction<'static, DB>,
        table: &str,
        ids: &[&str],
    ) -> std::result::Result<(), sqlx::Error> {
        for chunk in ids.chunks(BATCH) {
            let sql = DB::placeholders(&format!(
                "DELETE FROM {table} WHERE id IN ({})",
                list(chunk.len(), "?")
            ));
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }

    fn table_checked(&self) -> Result<&str> {
        validate_table(&self.table).map_err(|m| store_error(&self.alias(), m, None))?;
        Ok(&self.table)
    }

    async fn start(&self, ctx: StoreContext) -> Result<()> {
        let alias = ctx.alias().to_string();
        let table = validate_table(&self.table)
            .map(|()| self.table.clone())
            .map_err(|m| store_error(&alias, m, None))?;
        // Several processes may migrate at once; the steps are idempotent, so a failure
        // that another process's concurrent DDL caused goes away on a retry.
        let mut attempt = 0;
        loop {
            match self.migrate(&table).await {
                Ok(()) => break,
                Err(MigrateError::TooNew(v)) => {
                    return Err(store_error(
                        &alias,
                        format!(
                            "table '{table}' has schema version {v}, newer than this build \
                             knows ({SCHEMA_VERSION}); upgrade apsched"
                        ),
                        None,
                    ))
                }
                // Only an error the server answered with (a concurrent DDL race) is worth
                // retrying here; an unreachable server is reported at once.
                Err(MigrateError::Db(e))
                    if attempt >= 3 || !matches!(e, sqlx::Error::Database(_)) =>
                {
                    return Err(store_error(
                        &alias,
                        format!("{} ({table}): migrating the schema: {e}", DB::LABEL),
                        Some(Box::new(e)),
                    ))
                }
                Err(MigrateError::Db(_)) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
            }
        }
        let channel = format!("{table}_changed");
        let sql = Statements::new::<DB>(&table);
        let started = Arc::new(Started {
            changed: sql
                .notify
                .is_some()
                .then(|| Arc::new(tokio::sync::Notify::new())),
            sql,
            table: table.clone(),
            ctx: ctx.clone(),
            channel: channel.clone(),
        });
        *self.started.write_unpoisoned() = Some(started.clone());
        self.bad.clear();
        self.noted.clear();
        let tasks = [DB::listen(self, &ctx, channel), self.notifier(&started)];
        let mut slot = self.tasks.lock_unpoisoned();
        for old in slot.drain(..) {
            old.abort();
        }
        slot.extend(tasks.into_iter().flatten());
        Ok(())
    }

    async fn migrate(&self, table: &str) -> std::result::Result<(), MigrateError> {
        let schema = format!("{table}_schema");
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {schema} (version BIGINT NOT NULL)"
        )))
        .execute(&self.pool)
        .await?;
        let current: Option<i64> =
            sqlx::query(AssertSqlSafe(format!("SELECT MAX(version) FROM {schema}")))
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?;
        let current = current.unwrap_or(0);
        if current > SCHEMA_VERSION {
            return Err(MigrateError::TooNew(current));
        }
        let insert_version =
            DB::placeholders(&format!("INSERT INTO {schema} (version) VALUES (?)"));
        for (i, steps) in DB::migrations(table).into_iter().enumerate() {
            let version = i as i64 + 1;
            if version <= current {
                continue;
            }
            for stmt in steps {
                sqlx::query(AssertSqlSafe(stmt)).execute(&self.pool).await?;
            }
            sqlx::query(AssertSqlSafe(insert_version.clone()))
                .bind(version)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    async fn shutdown(&self) -> Result<()> {
        for t in self.tasks.lock_unpoisoned().drain(..) {
            t.abort();
        }
        Ok(())
    }

    async fn drop_tables(&self) -> Result<()> {
        let table = self.table_checked()?;
        for t in [table.to_string(), format!("{table}_schema")] {
            sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
                .execute(&self.pool)
                .await
                .map_err(|e| self.err("dropping the tables", e))?;
        }
        Ok(())
    }

    /// Tells the other schedulers that jobs changed (PostgreSQL NOTIFY; a no-op elsewhere).
    /// The notification is sent by a background task, so a burst of changes costs one
    /// NOTIFY, not one per change, and never slows the write down.
    fn notify(&self, st: &Started) {
        if let Some(changed) = &st.changed {
            changed.notify_one();
        }
    }

    /// The task sending the notifications [`notify`](Self::notify) asks for.
    fn notifier(&self, st: &Arc<Started>) -> Option<JoinHandle<()>> {
        let sql = st.sql.notify.clone()?;
        let changed = st.changed.clone()?;
        let pool = self.pool.clone();
        let st = st.clone();
        Some(tokio::spawn(async move {
            loop {
                changed.notified().await;
                let r = sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(st.channel.as_str())
                    .bind(st.ctx.scheduler_id())
                    .execute(&pool)
                    .await;
                match r {
                    Ok(_) => {}
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(e) => {
                        // The other schedulers still see the change at their next pass.
                        tracing::warn!(store = %st.ctx.alias(), error = %e, "could not notify other schedulers");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }))
    }

    /// The id in a row's first column. It is text everywhere; only SQLite can hold another
    /// storage class in it (a BLOB), which is read as text if it is UTF-8.
    fn read_id(row: &DB::Row) -> String {
        row.try_get::<String, _>(0)
            .or_else(|_| row.try_get_unchecked::<String, _>(0))
            .unwrap_or_else(|e| format!("<unreadable id: {e}>"))
    }

    /// Reads a row of `Statements::cols`, column by column: a value of an unexpected type
    /// makes the row corrupt, not the read.
    fn read_row(row: &DB::Row) -> RawRow {
        let id = Self::read_id(row);
        let cannot = |column: &str, e: &sqlx::Error| format!("its `{column}` column: {e}");
        let version = row.try_get::<i64, _>(2);
        let columns = match &version {
            Err(e) => Err(cannot("version", e)),
            Ok(_) => (|| {
                Ok(Columns {
                    doc: row.try_get(1).map_err(|e| cannot("doc", &e))?,
                    lease_owner: row.try_get(3).map_err(|e| cannot("lease_owner", &e))?,
                    lease_until: row.try_get(4).map_err(|e| cannot("lease_until", &e))?,
                    next_run_time: row.try_get(5).map_err(|e| cannot("next_run_time", &e))?,
                })
            })(),
        };
        RawRow {
            id,
            version: version.unwrap_or(UNREADABLE),
            columns,
        }
    }

    /// Parses a row into a job, checking that its task is registered. On failure the row is
    /// reported once (event + error log) and remembered as bad, and the reason returned.
    ///
    /// The `next_run_time` column is the job's next run time: it is what every query
    /// selects and orders by. A document whose copy disagrees (written by hand, or by
    /// something other than apsched) is reported once and otherwise ignored; the job's next
    /// write rewrites it. So a due column with a paused document neither deletes the job nor
    /// leaves it due for ever, and a due column with a future document runs at the column's
    /// time rather than being selected again on every pass.
    fn load(&self, st: &Started, raw: &RawRow) -> std::result::Result<JobRecord, String> {
        match Self::parse(st, raw) {
            Ok((job, mismatch)) => {
                self.bad.forget(&raw.id);
                if let Some(m) = mismatch {
                    if self.noted.note(&raw.id, fp(raw.version)) {
                        st.ctx.report_problem(&raw.id, &m);
                    }
                }
                Ok(job)
            }
            Err(reason) => {
                self.report_bad(st, &raw.id, raw.version, &reason);
                Err(reason)
            }
        }
    }

    /// A row as a job, and what its document and columns disagree on (if anything).
    fn parse(
        st: &Started,
        raw: &RawRow,
    ) -> std::result::Result<(JobRecord, Option<String>), String> {
        let c = raw.columns.as_ref().map_err(Clone::clone)?;
        let column_time = match c.next_run_time {
            None => None,
            Some(us) => Some(from_micros(us).ok_or_else(|| {
                format!("its next_run_time column ({us} µs) is outside the dates apsched handles")
            })?),
        };
        let lease = match (&c.lease_owner, c.lease_until.and_then(from_micros)) {
            (Some(owner), Some(until)) => Some(Lease {
                owner: owner.clone(),
                until,
            }),
            _ => None,
        };
        let mut job = JobRecord::from_json(&c.doc, version_u64(raw.version), lease)
            .map_err(|e| format!("its JSON does not parse: {e}"))?;
        if job.id != raw.id {
            return Err(format!("its JSON names another id ('{}')", job.id));
        }
        if let Callable::Task { name, .. } = &job.callable {
            if !st.ctx.has_task(name) {
                return Err(format!(
                    "its task '{name}' is not registered with this scheduler \
                     (SchedulerBuilder::task)"
                ));
            }
        }
        let mut mismatch = None;
        if job.next_run_time.map(micros_ceil) != c.next_run_time {
            let show = |t: Option<DateTime<Utc>>| {
                t.map_or_else(|| "paused".to_string(), |t| t.to_rfc3339())
            };
            mismatch = Some(format!(
                "job '{}': its next_run_time column says {} but its document says {}; the \
                 column is used (the job's next write rewrites the document)",
                raw.id,
                show(column_time),
                show(job.next_run_time)
            ));
            job.next_run_time = column_time;
        }
        Ok((job, mismatch))
    }

    /// Reports a row that cannot be loaded, once per row and version (event + error log),
    /// and remembers it so that it is neither claimed nor counted as due.
    fn report_bad(&self, st: &Started, id: &str, version: i64, reason: &str) {
        if self.bad.note(id, fp(version)) {
            st.ctx.report_corrupt(id, reason);
        }
    }

    /// Whether a row is known bad at this version (skip it without parsing or reporting).
    fn known_bad(&self, id: &str, version: i64) -> bool {
        self.bad.is_known(id, fp(version))
    }

    fn bad_count(&self) -> i64 {
        self.bad.len() as i64
    }

    async fn add_job(&self, job: JobRecord, replace: bool) -> Result<()> {
        let st = self.started()?;
        let doc = job.to_json()?;
        let next = job.next_run_time.map(micros_ceil);
        let paused = job.next_run_time.is_none();
        // A new incarnation: see `first_version`.
        let version = version_i64(first_version());
        let err = |e| self.err(&format!("adding job '{}'", job.id), e);
        if !replace {
            // One statement: the primary key refuses a duplicate id.
            let r = sqlx::query(AssertSqlSafe(st.sql.insert.clone()))
                .bind(job.id.as_str())
                .bind(next)
                .bind(paused)
                .bind(doc)
                .bind(version)
                .execute(&self.pool)
                .await;
            return match r {
                Ok(_) => {
                    self.bad.forget(&job.id);
                    self.notify(&st);
                    Ok(())
                }
                Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                    Err(Error::ConflictingId(job.id))
                }
                Err(e) => Err(err(e)),
            };
        }
        // A replacement is a new job with a new version (whatever the old row held, even
        // something unreadable), so a writer still holding the old one is fenced off.
        let mut tx = self.begin_write().await.map_err(err)?;
        let replaced = sqlx::query(AssertSqlSafe(st.sql.replace.clone()))
            .bind(next)
            .bind(paused)
            .bind(doc.as_str())
            .bind(version)
            .bind(job.id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        if DB::rows_affected(&replaced) == 0 {
            sqlx::query(AssertSqlSafe(st.sql.insert.clone()))
                .bind(job.id.as_str())
                .bind(next)
                .bind(paused)
                .bind(doc.as_str())
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        self.bad.forget(&job.id);
        self.notify(&st);
        Ok(())
    }

    /// [`JobStore::add_jobs`]: one transaction, rows inserted [`BATCH`] at a time (5
    /// parameters a row: 2 500 a statement, below SQLite's 32 766, PostgreSQL's and MySQL's
    /// 65 535), replaced rows deleted first; one notification at the end.
    async fn add_jobs(&self, jobs: Vec<JobRecord>, replace: bool) -> Result<()> {
        let st = self.started()?;
        let jobs = super::dedupe_batch(jobs, replace)?;
        if jobs.is_empty() {
            return Ok(());
        }
        // Everything that can fail without the database fails before the first write.
        let mut rows = Vec::with_capacity(jobs.len());
        for job in &jobs {
            rows.push(ClaimRow {
                id: job.id.clone(),
                next: job.next_run_time.map(micros_ceil),
                doc: job.to_json()?,
                // A new incarnation per job: see `first_version`.
                version: version_i64(first_version()),
            });
        }
        let err = |e| self.err(&format!("adding {} jobs", rows.len()), e);
        let mut tx = self.begin_write().await.map_err(err)?;
        if replace {
            // A replacement is a new job with a new version (whatever the old row held,
            // even something unreadable), so a writer still holding the old one is fenced.
            let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            Self::delete_ids(&mut tx, &st.table, &ids)
                .await
                .map_err(err)?;
        }
        for chunk in rows.chunks(BATCH) {
            let sql = DB::placeholders(&format!(
                "INSERT INTO {} (id, next_run_time, paused, doc, version) VALUES {}",
                st.table,
                list(chunk.len(), "(?, ?, ?, ?, ?)")
            ));
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for r in chunk {
                q = q
                    .bind(r.id.as_str())
                    .bind(r.next)
                    .bind(r.next.is_none())
                    .bind(r.doc.as_str())
                    .bind(r.version);
            }
            match q.execute(&mut *tx).await {
                Ok(_) => {}
                Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                    // Rolled back: nothing of the batch is added. Name an id that exists.
                    tx.rollback().await.map_err(err)?;
                    let ids: Vec<&str> = chunk.iter().map(|r| r.id.as_str()).collect();
                    let taken = self.first_existing(&st, &ids).await?;
                    // `chunks` never yields an empty chunk, so there is a first id.
                    let id = taken.or_else(|| ids.first().map(|id| id.to_string()));
                    return Err(Error::ConflictingId(id.unwrap_or_default()));
                }
                Err(e) => return Err(err(e)),
            }
        }
        tx.commit().await.map_err(err)?;
        for r in &rows {
            self.bad.forget(&r.id);
        }
        self.notify(&st);
        Ok(())
    }

    /// The first of `ids` that has a row (to name the id a batch insert tripped over).
    async fn first_existing(&self, st: &Started, ids: &[&str]) -> Result<Option<String>> {
        let sql = DB::placeholders(&format!(
            "SELECT id FROM {} WHERE id IN ({})",
            st.table,
            list(ids.len(), "?")
        ));
        let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for id in ids {
            q = q.bind(*id);
        }
        let found: Vec<String> = q
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err("looking up conflicting ids", e))?
            .iter()
            .map(Self::read_id)
            .collect();
        Ok(ids
            .iter()
            .find(|id| found.iter().any(|f| f == *id))
            .map(|id| id.to_string()))
    }

    async fn update_job(&self, mut job: JobRecord) -> Result<JobRecord> {
        let st = self.started()?;
        let doc = job.to_json()?;
        let err = |e| self.err(&format!("updating job '{}'", job.id), e);
        let new_version = job.version.saturating_add(1);
        let r = sqlx::query(AssertSqlSafe(st.sql.update_cas.clone()))
            .bind(job.next_run_time.map(micros_ceil))
            .bind(job.next_run_time.is_none())
            .bind(doc)
            .bind(version_i64(new_version))
            .bind(job.id.as_str())
            .bind(version_i64(job.version))
            .execute(&self.pool)
            .await
            .map_err(err)?;
        if DB::rows_affected(&r) == 0 {
            let exists = sqlx::query(AssertSqlSafe(st.sql.select_version.clone()))
                .bind(job.id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(err)?
                .is_some();
            return Err(if exists {
                Error::Fenced(job.id)
            } else {
                Error::JobLookup(job.id)
            });
        }
        self.bad.forget(&job.id);
        self.notify(&st);
        job.version = new_version;
        Ok(job)
    }

    async fn remove_job(&self, id: &str) -> Result<()> {
        let st = self.started()?;
        let r = sqlx::query(AssertSqlSafe(st.sql.delete.clone()))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(&format!("removing job '{id}'"), e))?;
        if DB::rows_affected(&r) == 0 {
            return Err(Error::JobLookup(id.to_string()));
        }
        self.bad.forget(id);
        self.notify(&st);
        Ok(())
    }

    async fn remove_all_jobs(&self) -> Result<()> {
        let st = self.started()?;
        sqlx::query(AssertSqlSafe(st.sql.delete_all.clone()))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("removing all jobs", e))?;
        self.bad.clear();
        self.notify(&st);
        Ok(())
    }

    async fn lookup_job(&self, id: &str) -> Result<Option<JobRecord>> {
        let st = self.started()?;
        let err = |e| self.err(&format!("looking up job '{id}'"), e);
        let Some(row) = sqlx::query(AssertSqlSafe(st.sql.lookup.clone()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?
        else {
            return Ok(None);
        };
        let raw = Self::read_row(&row);
        self.load(&st, &raw)
            .map(Some)
            .map_err(|reason| Error::CorruptJob {
                id: id.to_string(),
                reason,
            })
    }

    async fn get_all_jobs(&self) -> Result<Vec<JobRecord>> {
        let st = self.started()?;
        let err = |e| self.err("listing jobs", e);
        let rows = sqlx::query(AssertSqlSafe(st.sql.all.clone()))
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Ok(job) = self.load(&st, &Self::read_row(row)) {
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    async fn next_run_time(&self) -> Result<Option<DateTime<Utc>>> {
        let st = self.started()?;
        let err = |e| self.err("reading the next run time", e);
        let me = st.ctx.scheduler_id();
        // Known-bad rows are skipped; fetching one more row per half than there are of
        // them always reaches a good one if there is any. A row whose time cannot be read
        // is reported as bad on the way, and the look repeated with it counted (each repeat
        // is owed to a row reported for the first time, so this ends).
        loop {
            let limit = self.bad_count() + 1;
            let rows = sqlx::query(AssertSqlSafe(st.sql.next.clone()))
                .bind(me)
                .bind(limit)
                .bind(me)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(err)?;
            let mut best: Option<i64> = None;
            let mut newly_bad = false;
            for row in rows {
                let id = Self::read_id(&row);
                if self.bad.contains(&id) {
                    continue;
                }
                match row.try_get::<i64, _>(1) {
                    Ok(t) => best = Some(best.map_or(t, |b| b.min(t))),
                    Err(e) => {
                        let reason = format!("its time column: {e}");
                        self.report_bad(&st, &id, UNREADABLE, &reason);
                        newly_bad = true;
                    }
                }
            }
            if !newly_bad {
                return Ok(best.and_then(from_micros));
            }
        }
    }

    async fn acquire_due_jobs(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueJob>> {
        let st = self.started()?;
        // Lock conflicts (a deadlock victim on MySQL, a busy SQLite file) are retried at
        // once; anything else goes back to the scheduler, which backs off.
        let mut attempt = 0;
        loop {
            match self.try_acquire(&st, now, limit).await {
                Ok(due) => return Ok(due),
                Err(sqlx::Error::Database(d)) if attempt < 2 && DB::lock_conflict(&*d) => {
                    attempt += 1;
                    tracing::debug!(store = %st.ctx.alias(), error = %d, "claim conflict; retrying");
                }
                Err(e) => return Err(self.err("claiming due jobs", e)),
            }
        }
    }

    async fn try_acquire(
        &self,
        st: &Started,
        now: DateTime<Utc>,
        limit: usize,
    ) -> std::result::Result<Vec<DueJob>, sqlx::Error> {
        // Rounded up like the column: a job due at `now` exactly is selected (and a row only
        // sub-microsecond early is left alone by the check below).
        let now_us = micros_ceil(now);
        let me = st.ctx.scheduler_id();
        let lease_until = lease_until(now, st.ctx.lease());
        let lease_us = lease_until.timestamp_micros();
        let fetch = (limit as i64).saturating_add(self.bad_count());

        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(AssertSqlSafe(st.sql.select_due.clone()))
            .bind(now_us)
            .bind(now_us)
            .bind(me)
            .bind(fetch)
            .fetch_all(&mut *tx)
            .await?;
        let mut due = Vec::with_capacity(rows.len().min(limit));
        let mut updates: Vec<ClaimRow> = Vec::new();
        let mut deletes: Vec<String> = Vec::new();
        for row in &rows {
            if due.len() >= limit {
                break;
            }
            let raw = Self::read_row(row);
            if self.known_bad(&raw.id, raw.version) {
                continue;
            }
            let Ok(mut job) = self.load(st, &raw) else {
                continue;
            };
            job.version = version_u64(raw.version).saturating_add(1);
            job.lease = Some(Lease {
                owner: me.to_string(),
                until: lease_until,
            });
            let claimed = DueJob::claim(job, now);
            if claimed.run_times.is_empty() && !claimed.removed {
                // Not due after all (sub-microsecond rounding): leave the row as it is.
                continue;
            }
            if claimed.removed {
                deletes.push(raw.id.clone());
            } else {
                let doc = claimed
                    .job
                    .to_json()
                    .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                updates.push(ClaimRow {
                    id: raw.id.clone(),
                    next: claimed.job.next_run_time.map(micros_ceil),
                    doc,
                    version: version_i64(claimed.job.version),
                });
            }
            due.push(claimed);
        }
        // The writes go out in batches: a round trip per batch, not per job.
        let deletes: Vec<&str> = deletes.iter().map(String::as_str).collect();
        Self::delete_ids(&mut tx, &st.table, &deletes).await?;
        for chunk in updates.chunks(BATCH) {
            let sql = DB::placeholders(&DB::claim_many(&st.table, chunk.len()));
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for r in chunk {
                q = q
                    .bind(r.id.as_str())
                    .bind(r.next)
                    .bind(r.next.is_none())
                    .bind(r.doc.as_str())
                    .bind(r.version)
                    .bind(me)
                    .bind(lease_us);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(due)
    }

    async fn release_jobs(&self, jobs: &[DueJob]) -> Result<()> {
        let st = self.started()?;
        let me = st.ctx.scheduler_id();
        let err = |e| self.err("releasing claimed jobs", e);
        let kept: Vec<&DueJob> = jobs.iter().filter(|d| !d.removed).collect();
        if kept.is_empty() {
            return Ok(());
        }
        // Fenced by the lease and the version: a row is released only while it still
        // carries the lease this scheduler wrote when claiming it (owner and expiry) and
        // the version that claim wrote. A later claim by anyone, this scheduler included,
        // wrote another version, as did the removal and re-adding of the job.
        let mut by_lease: HashMap<i64, Vec<(&str, i64)>> = HashMap::new();
        for d in kept {
            if let Some(l) = &d.job.lease {
                by_lease
                    .entry(l.until.timestamp_micros())
                    .or_default()
                    .push((d.job.id.as_str(), version_i64(d.job.version)));
            }
        }
        let mut tx = self.begin_write().await.map_err(err)?;
        for (until, ids) in &by_lease {
            for chunk in ids.chunks(BATCH) {
                let sql = DB::placeholders(&format!(
                    "UPDATE {} SET lease_owner = NULL, lease_until = NULL \
                     WHERE lease_owner = ? AND lease_until = ? AND (id, version) IN ({})",
                    st.table,
                    list(chunk.len(), "(?, ?)")
                ));
                let mut q = sqlx::query(AssertSqlSafe(sql))
                    .persistent(false)
                    .bind(me)
                    .bind(*until);
                for (id, version) in chunk {
                    q = q.bind(*id).bind(*version);
                }
                q.execute(&mut *tx).await.map_err(err)?;
            }
        }
        tx.commit().await.map_err(err)?;
        Ok(())
    }
}

enum MigrateError {
    TooNew(i64),
    Db(sqlx::Error),
}

impl From<sqlx::Error> for MigrateError {
    fn from(e: sqlx::Error) -> Self {
        MigrateError::Db(e)
    }
}

#[async_trait::async_trait]
impl JobStore for SqlStore {
    async fn start(&self, ctx: StoreContext) -> Result<()> {
        with_core!(self, core => core.start(ctx).await)
    }

    async fn shutdown(&self) -> Result<()> {
        with_core!(self, core => core.shutdown().await)
    }

    async fn add_job(&self, job: JobRecord, replace_existing: bool) -> Result<()> {
        with_core!(self, core => core.add_job(job, replace_existing).await)
    }
    async fn add_jobs(&self, jobs: Vec<JobRecord>, replace_existing: bool) -> Result<()> {
        with_core!(self, core => core.add_jobs(jobs, replace_existing).await)
    }

    async fn update_job(&self, job: JobRecord) -> Result<JobRecord> {
        with_core!(self, core => core.update_job(job).await)
    }

    async fn remove_job(&self, id: &str) -> Result<()> {
        with_core!(self, core => core.remove_job(id).await)
    }

    async fn remove_all_jobs(&self) -> Result<()> {
        with_core!(self, core => core.remove_all_jobs().await)
    }

    async fn lookup_job(&self, id: &str) -> Result<Option<JobRecord>> {
        with_core!(self, core => core.lookup_job(id).await)
    }

    async fn get_all_jobs(&self) -> Result<Vec<JobRecord>> {
        with_core!(self, core => core.get_all_jobs().await)
    }

    async fn next_run_time(&self) -> Result<Option<DateTime<Utc>>> {
        with_core!(self, core => core.next_run_time().await)
    }

    async fn acquire_due_jobs(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueJob>> {
        with_core!(self, core => core.acquire_due_jobs(now, limit).await)
    }

    async fn release_jobs(&self, jobs: &[DueJob]) -> Result<()> {
        with_core!(self, core => core.release_jobs(jobs).await)
    }

    fn poll_interval(&self) -> Option<Duration> {
        with_core!(self, core => core.poll)
    }

    fn is_persistent(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert!(validate_table("apsched_jobs").is_ok());
        assert!(validate_table("_t1").is_ok());
        for bad in [
            "",
            "1abc",
            "a-b",
            "a b",
            "jobs;drop",
            "\"q\"",
            "tä",
            &"x".repeat(49),
        ] {
            assert!(validate_table(bad).is_err(), "{bad:?} accepted");
        }
    }
}
