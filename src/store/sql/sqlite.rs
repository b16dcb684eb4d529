//! SQLite: the embedded store. Claims run in `BEGIN IMMEDIATE` transactions (the file's
//! write lock), so no row locking clause is needed; WAL mode lets readers work meanwhile.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite};

use super::dialect::Dialect;
use super::url::bad_url;
use crate::error::Result;

impl Dialect for Sqlite {
    const LABEL: &'static str = "SQLite";
    const LOCK_SKIP: &'static str = "";
    const LOCK: &'static str = "";
    const UPDATE_RETURNING: bool = true;
    const BEGIN: Option<&'static str> = Some("BEGIN IMMEDIATE");
    const POLLS: bool = true;
    const DEFAULT_POOL_SIZE: u32 = 4;

    fn pool(opts: SqliteConnectOptions, size: u32) -> Pool<Sqlite> {
        SqlitePoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(opts)
    }

    fn rows_affected(r: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        r.rows_affected()
    }

    fn migrations(t: &str) -> Vec<Vec<String>> {
        vec![vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (id TEXT NOT NULL PRIMARY KEY, \
                 next_run_time INTEGER, paused BOOLEAN NOT NULL DEFAULT 0, doc TEXT NOT NULL, \
                 version INTEGER NOT NULL DEFAULT 0, lease_owner TEXT, lease_until INTEGER)"
            ),
            format!("CREATE INDEX IF NOT EXISTS {t}_next ON {t} (next_run_time, id)"),
            format!("CREATE INDEX IF NOT EXISTS {t}_lease ON {t} (lease_until)"),
        ], vec![
            // The run ledger: as on PostgreSQL (see there). `INTEGER PRIMARY KEY` makes the
            // run id the rowid.
            format!(
                "CREATE TABLE IF NOT EXISTS {t}_runs (run_id INTEGER NOT NULL PRIMARY KEY, \
                 job_id TEXT NOT NULL, scheduled INTEGER NOT NULL, slot INTEGER, \
                 owner TEXT NOT NULL, manual BOOLEAN NOT NULL, attempt INTEGER NOT NULL, \
                 state TEXT NOT NULL, queued BOOLEAN NOT NULL DEFAULT 0, \
                 cancel_requested BOOLEAN NOT NULL DEFAULT 0, submitted_at INTEGER NOT NULL, \
                 started_at INTEGER, finished_at INTEGER, error TEXT, output TEXT)"
            ),
            format!(
                "CREATE UNIQUE INDEX IF NOT EXISTS {t}_runs_slot ON {t}_runs (job_id, scheduled, slot)"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {t}_runs_act ON {t}_runs (job_id) \
                 WHERE state IN ('claimed', 'started')"
            ),
            format!("CREATE INDEX IF NOT EXISTS {t}_runs_time ON {t}_runs (scheduled, run_id)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {t}_owners (scheduler_id TEXT NOT NULL PRIMARY KEY, \
                 alive_until INTEGER NOT NULL)"
            ),
        ], vec![
            // Retries: as on PostgreSQL (see there); `slot` is an INTEGER already, wide
            // enough for any attempt.
            format!("ALTER TABLE {t}_runs ADD COLUMN retry_at INTEGER"),
        ]]
    }

    fn already_applied(e: &dyn sqlx::error::DatabaseError) -> bool {
        // SQLite has no SQLSTATE: a column added twice is SQLITE_ERROR with this message.
        e.message().starts_with("duplicate column name")
    }

    fn lock_conflict(e: &dyn sqlx::error::DatabaseError) -> bool {
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
        e.code()
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6))
    }
}

/// A lazily connecting pool, and whether it is a private in-memory database.
fn options(opts: SqliteConnectOptions, in_memory: bool) -> (Pool<Sqlite>, bool) {
    let opts = opts
        .create_if_missing(true)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    if in_memory {
        // Each connection to `:memory:` is its own database: keep exactly one, for ever.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(opts);
        return (pool, true);
    }
    let opts = opts.journal_mode(SqliteJournalMode::Wal);
    (
        <Sqlite as Dialect>::pool(opts, <Sqlite as Dialect>::DEFAULT_POOL_SIZE),
        false,
    )
}

/// A lazily connecting pool on the file at `path`, and whether it is in memory.
pub(super) fn pool_from_path(path: &Path) -> (Pool<Sqlite>, bool) {
    let in_memory = path.as_os_str() == ":memory:";
    let opts = if in_memory {
        SqliteConnectOptions::new().in_memory(true)
    } else {
        SqliteConnectOptions::new().filename(path)
    };
    options(opts, in_memory)
}

/// A lazily connecting pool from a `sqlite://` URL, and whether it is in memory.
pub(super) fn pool_from_url(url: &str) -> Result<(Pool<Sqlite>, bool)> {
    let opts = SqliteConnectOptions::from_str(url).map_err(|e| bad_url(url, &e))?;
    Ok(options(
        opts,
        url.contains(":memory:") || url.contains("mode=memory"),
    ))
}
