//! SQL job stores on [sqlx]: SQLite (embedded, a file path is all it needs), PostgreSQL and
//! MySQL 8 / MariaDB 10.6+, each behind its own cargo feature (`sqlite`, `postgres`, `mysql`).
//!
//! One [`SqlStore`] type serves all three; the claim logic, the corrupt-row handling and the
//! fencing are written once, the `sqlite`, `postgres` and `mysql` submodules only hold what
//! differs between the databases (column types, locking clauses, how a write transaction
//! begins, wake-ups).
//!
//! The files are layered; each imports only from the layers below it:
//! 1. `batch.rs` (rows per multi-row statement, placeholder lists) and `url.rs` (apsched's
//!    URL parameters, URL errors): leaves;
//! 2. `dialect.rs`: the `Dialect` trait, what differs between the databases;
//! 3. `sqlite.rs`, `postgres.rs` (with `pg_runs.rs`, its array-bound ledger batches),
//!    `mysql.rs` (the dialects), `statements.rs` (the SQL a
//!    started store runs) and `run_rows.rs` (the run ledger's rows read into records, what
//!    the ledger remembers);
//! 4. `core.rs`: `Core`, the store for one database type (its state, starting, stopping);
//! 5. `rows.rs`: rows as read and written; then `jobs.rs`: the job operations of `Core`,
//!    and `runs.rs`: its run ledger (the claim's records, which `jobs.rs` calls, included);
//! 6. this module: [`SqlStore`], choosing the database by URL, and its [`JobStore`] impl.

mod batch;
mod core;
mod dialect;
mod jobs;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod pg_runs;
#[cfg(feature = "postgres")]
mod postgres;
mod rows;
mod run_rows;
mod runs;
mod runs_tick;
#[cfg(feature = "sqlite")]
mod sqlite;
mod statements;
mod url;

#[cfg(feature = "sqlite")]
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};

use self::core::Core;
#[cfg(any(feature = "postgres", feature = "mysql"))]
use self::dialect::Dialect;
use self::url::{enabled_schemes, take_pool_size};
use super::{DueJob, JobStore, StoreContext};
use crate::error::{Error, Result};
use crate::job::{JobRecord, RunId};
use crate::ledger::{RunFilter, RunOutcome, RunRecord, RunTick};

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
/// The run ledger (schema version 2; version 3 adds retries) keeps one row per run in
/// `<table>_runs` (run id, job id, scheduled time, attempt, owner, state, times in µs since
/// the epoch, error, output; a unique index allows one record per job, scheduled time and
/// attempt) and the schedulers' heartbeats in
/// `<table>_owners (scheduler_id, alive_until)`; docs/ledger.md lists every column and
/// index. Runs outlive their job; retention prunes them.
///
/// # Sharing
/// [`JobStore::acquire_due_jobs`] selects the due rows (`next_run_time <= now` and no live
/// lease of another scheduler) in `(next_run_time, id)` order with `FOR UPDATE SKIP LOCKED`
/// (PostgreSQL, MySQL/MariaDB) or inside a `BEGIN IMMEDIATE` transaction (SQLite), advances
/// each with [`DueJob::claim`], writes it back with a lease and `version + 1` (or deletes it
/// when its trigger is exhausted), inserts the claim's run records, and commits: one
/// transaction, so no scheduled time of a job is submitted by two schedulers (or twice by
/// one), and none is claimed without its record.
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
    pub const DEFAULT_TABLE: &'static str = self::core::DEFAULT_TABLE;

    /// The SQLite file apsched suggests when the choice is yours: `apsched.db` (e.g.
    /// `SqlStore::sqlite(SqlStore::DEFAULT_SQLITE_FILE)`).
    pub const DEFAULT_SQLITE_FILE: &'static str = "apsched.db";

    /// How often SQLite and MySQL stores are polled for changes made by other processes,
    /// unless set with [`SqlStore::with_poll_interval`].
    pub const DEFAULT_POLL_INTERVAL: Duration = self::core::DEFAULT_POLL_INTERVAL;

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
        let store = Self::new(url)?;
        with_core!(store, core => core.ping().await)?;
        Ok(store)
    }

    /// The store for the database named by `url` (see [`connect`](Self::connect) for the
    /// URLs), without connecting: the first connection is made when the scheduler starts the
    /// store, as with the other stores' `new`. [`crate::store::from_url`] opens SQL stores
    /// with this; [`connect`](Self::connect) also checks that the database answers now.
    ///
    /// # Errors
    /// [`Error::InvalidStoreUrl`] if the URL is not understood or its feature is not enabled.
    pub fn new(url: &str) -> Result<Self> {
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

    async fn export_records(
        &self,
    ) -> Result<Vec<std::result::Result<JobRecord, crate::store::UnloadableRecord>>> {
        with_core!(self, core => core.export_records().await)
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

    fn keeps_runs(&self) -> bool {
        true
    }

    async fn start_runs(&self, run_ids: &[RunId], now: DateTime<Utc>) -> Result<Vec<RunId>> {
        with_core!(self, core => core.start_runs(run_ids, now).await)
    }

    async fn finish_runs(&self, outcomes: &[RunOutcome]) -> Result<()> {
        with_core!(self, core => core.finish_runs(outcomes).await)
    }

    async fn add_runs(&self, runs: &[RunRecord]) -> Result<()> {
        with_core!(self, core => core.add_runs(runs).await)
    }

    async fn add_manual_runs(
        &self,
        job_id: &str,
        slots: &[DateTime<Utc>],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunRecord>> {
        with_core!(self, core => core.add_manual_runs(job_id, slots, now).await)
    }

    async fn tick_runs(&self, now: DateTime<Utc>) -> Result<RunTick> {
        with_core!(self, core => core.tick_runs(now).await)
    }
    async fn heartbeat(&self, now: DateTime<Utc>) -> Result<()> {
        with_core!(self, core => core.heartbeat(now).await)
    }

    async fn query_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        with_core!(self, core => core.query_runs(filter).await)
    }

    async fn get_run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
        with_core!(self, core => core.get_run(run_id).await)
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
    use super::core::validate_table;

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
