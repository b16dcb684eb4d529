//! What differs between the databases: the one trait the `sqlite`, `postgres` and `mysql`
//! modules implement. Everything else is written once, in `Core` (`core.rs`).

use futures::future::BoxFuture;
use sqlx::{Database, Pool};
use tokio::task::JoinHandle;

use super::batch::list;
use crate::job::RunId;
use crate::ledger::{RunOutcome, RunRecord};
use crate::store::StoreContext;

/// What an array-bound ledger statement returns (see [`Dialect::insert_runs_arrays`]).
pub(crate) type ArrayOp<'a, T> = Option<BoxFuture<'a, Result<T, sqlx::Error>>>;

/// An active run as the claim reads it: job id, run id, state, queued.
pub(crate) type ActiveRow = (String, i64, String, bool);

/// What differs between the databases. Everything else is written once, in `Core`.
pub(crate) trait Dialect: Database + sqlx::database::HasStatementCache + Sized {
    /// For messages.
    const LABEL: &'static str;
    /// Appended to the due-rows query: `FOR UPDATE SKIP LOCKED`, or nothing where the
    /// transaction itself is exclusive.
    const LOCK_SKIP: &'static str;
    /// Appended to a read inside a write transaction that must wait for the rows it reads
    /// (` FOR UPDATE`), or nothing where the transaction itself is exclusive.
    const LOCK: &'static str;
    /// Whether `UPDATE … RETURNING` exists (PostgreSQL, SQLite); without it the ledger
    /// locks the rows it is about to change and reads them first.
    const UPDATE_RETURNING: bool;
    /// Appended to the insert of run records: a slot that already has its record keeps it
    /// (the unique index on job, scheduled time and `slot`, the attempt of a scheduled
    /// run, says so), as does a run id already stored (the primary key), and the statement
    /// goes on with the other rows.
    const KEEP_EXISTING: &'static str = " ON CONFLICT DO NOTHING";
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

    /// Records scheduler `id` (bound first) as alive until a time (bound second) in the
    /// owners table `owners`, creating or overwriting its row.
    fn heartbeat(owners: &str) -> String {
        format!(
            "INSERT INTO {owners} (scheduler_id, alive_until) VALUES (?, ?) \
             ON CONFLICT (scheduler_id) DO UPDATE SET alive_until = excluded.alive_until"
        )
    }

    /// A statement writing `rows` terminal outcomes into the runs table `runs` at once,
    /// binding per row: run id, state, started_at, finished_at, error, output. Rows already
    /// terminal, and ids not in the table, are left alone. The default (`UPDATE … FROM` a
    /// `VALUES` list, a join rather than one look-up per branch) suits PostgreSQL and
    /// SQLite 3.33+.
    fn finish_many(runs: &str, rows: usize) -> String {
        format!(
            "WITH v (id, state, started, finished, error, output) AS (VALUES {}) \
             UPDATE {runs} SET state = v.state, \
             started_at = COALESCE(v.started, {runs}.started_at), finished_at = v.finished, \
             error = v.error, output = v.output, queued = FALSE \
             FROM v WHERE {runs}.run_id = v.id AND {runs}.state IN ('claimed', 'started')",
            list(rows, "(?, ?, ?, ?, ?, ?)")
        )
    }

    /// The ledger's batch writes with one array per column (PostgreSQL: one prepared
    /// statement whatever the batch size, far cheaper to parse and bind than a multi-row
    /// statement); `None` where the multi-row statements are used. Inserts `runs` into the
    /// runs table `runs_table` within `conn`'s transaction, keeping existing slots (see
    /// [`KEEP_EXISTING`](Self::KEEP_EXISTING)).
    fn insert_runs_arrays<'a>(
        conn: &'a mut Self::Connection,
        runs_table: &'a str,
        runs: &'a [&'a RunRecord],
    ) -> ArrayOp<'a, ()> {
        let _ = (conn, runs_table, runs);
        None
    }

    /// [`insert_runs_arrays`](Self::insert_runs_arrays)' counterpart for the claim's read of
    /// the active runs of `jobs`: (job id, run id, state, queued) per run, within `conn`'s
    /// transaction.
    fn active_runs_arrays<'a>(
        conn: &'a mut Self::Connection,
        runs_table: &'a str,
        jobs: &'a [&'a str],
    ) -> ArrayOp<'a, Vec<ActiveRow>> {
        let _ = (conn, runs_table, jobs);
        None
    }

    /// [`insert_runs_arrays`](Self::insert_runs_arrays)' counterpart for `start_runs`: marks
    /// the claimed runs of `owner` among `ids` started at `now_us`; returns the ids changed.
    fn start_runs_arrays<'a>(
        pool: &'a Pool<Self>,
        runs_table: &'a str,
        ids: &'a [RunId],
        owner: &'a str,
        now_us: i64,
    ) -> ArrayOp<'a, Vec<i64>> {
        let _ = (pool, runs_table, ids, owner, now_us);
        None
    }

    /// [`insert_runs_arrays`](Self::insert_runs_arrays)' counterpart for `finish_runs`.
    fn finish_runs_arrays<'a>(
        pool: &'a Pool<Self>,
        runs_table: &'a str,
        outcomes: &'a [RunOutcome],
    ) -> ArrayOp<'a, ()> {
        let _ = (pool, runs_table, outcomes);
        None
    }

    /// The migrations, oldest first: migration `i` brings the schema to version `i + 1`.
    /// Each statement must be idempotent (`IF NOT EXISTS`), since several processes may
    /// start at once, or fail a second time only with an error
    /// [`already_applied`](Self::already_applied) recognises.
    fn migrations(table: &str) -> Vec<Vec<String>>;

    /// Whether a migration statement failed only because it had been applied already (by
    /// another process starting at the same time, or by a start that stopped before it
    /// recorded the version): a column added twice, for the databases without
    /// `ADD COLUMN IF NOT EXISTS` (MySQL 8, SQLite). The default knows the SQLSTATEs of
    /// PostgreSQL (42701) and MySQL/MariaDB (42S21, error 1060).
    fn already_applied(e: &dyn sqlx::error::DatabaseError) -> bool {
        matches!(e.code().as_deref(), Some("42701" | "42S21"))
    }

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

    /// Starts a task that wakes this scheduler when another one changes the table (`pool`
    /// is the store's, for its connect options).
    fn listen(pool: &Pool<Self>, ctx: &StoreContext, channel: String) -> Option<JoinHandle<()>> {
        let _ = (pool, ctx, channel);
        None
    }
}
