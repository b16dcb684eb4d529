//! What differs between the databases: the one trait the `sqlite`, `postgres` and `mysql`
//! modules implement. Everything else is written once, in `Core` (`core.rs`).

use sqlx::{Database, Pool};
use tokio::task::JoinHandle;

use super::batch::list;
use crate::store::StoreContext;

/// What differs between the databases. Everything else is written once, in `Core`.
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

    /// Starts a task that wakes this scheduler when another one changes the table (`pool`
    /// is the store's, for its connect options).
    fn listen(pool: &Pool<Self>, ctx: &StoreContext, channel: String) -> Option<JoinHandle<()>> {
        let _ = (pool, ctx, channel);
        None
    }
}
