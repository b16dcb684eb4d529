//! The store for one database type ([`Core`]): its state, starting (migrations, the
//! listener and notifier tasks), stopping, and errors.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sqlx::{
    AssertSqlSafe, ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type,
};
use tokio::task::JoinHandle;

use super::batch::{list, BATCH};
use super::dialect::Dialect;
use super::run_rows::LedgerMemo;
use super::statements::Statements;
use crate::error::{Error, Result};
use crate::store::common::Reported;
use crate::store::StoreContext;
use crate::sync::{MutexExt, RwLockExt};

/// The table name used when none is given ([`SqlStore::DEFAULT_TABLE`](super::SqlStore::DEFAULT_TABLE)).
pub(super) const DEFAULT_TABLE: &str = "apsched_jobs";

/// How often SQLite and MySQL stores are polled for changes made by other processes
/// ([`SqlStore::DEFAULT_POLL_INTERVAL`](super::SqlStore::DEFAULT_POLL_INTERVAL)).
pub(super) const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The schema version this build writes (see [`Dialect::migrations`]): 1 the jobs table,
/// 2 the run ledger's `<table>_runs` and `<table>_owners`, 3 retries (`retry_at`, and
/// `slot` the attempt of a scheduled run).
pub(super) const SCHEMA_VERSION: i64 = 3;

/// The longest table name accepted: leaves room for the `_schema` and `_runs_slot`
/// suffixes and index names
/// within PostgreSQL's 63 and MySQL's 64 character identifier limits.
pub(super) const MAX_TABLE_LEN: usize = 48;

/// What a started store knows.
#[derive(Debug)]
pub(super) struct Started {
    pub(super) ctx: StoreContext,
    pub(super) table: String,
    pub(super) sql: Statements,
    pub(super) channel: String,
    /// Set when a change should be announced to other schedulers (PostgreSQL).
    pub(super) changed: Option<Arc<tokio::sync::Notify>>,
}

/// The store for one database type: everything that is the same for all of them.
#[derive(Debug)]
pub(crate) struct Core<DB: Database> {
    pub(super) pool: Pool<DB>,
    /// Whether [`SqlStore::with_pool_size`](super::SqlStore::with_pool_size) may change the pool (not for a private in-memory
    /// SQLite database, whose one connection is the database).
    pub(super) resizable: bool,
    pub(super) table: String,
    pub(super) poll: Option<Duration>,
    pub(super) started: RwLock<Option<Arc<Started>>>,
    /// Rows that could not be loaded, with the version that was reported: each is
    /// reported once, kept, and neither claimed nor counted as due while its version stays.
    pub(super) bad: Reported,
    /// Rows whose document and columns disagree, with the version that was reported: each
    /// is reported once (see `Core::load`).
    pub(super) noted: Reported,
    /// The LISTEN and NOTIFY tasks (PostgreSQL).
    pub(super) tasks: Mutex<Vec<JoinHandle<()>>>,
    /// What the run ledger remembers between calls (see `runs.rs`).
    pub(super) ledger: LedgerMemo,
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

pub(super) fn store_error(
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

impl<DB: Dialect> Core<DB> {
    pub(super) fn new(pool: Pool<DB>, resizable: bool) -> Self {
        Core {
            pool,
            resizable,
            table: DEFAULT_TABLE.to_string(),
            poll: DB::POLLS.then_some(DEFAULT_POLL_INTERVAL),
            started: RwLock::new(None),
            bad: Reported::default(),
            noted: Reported::default(),
            tasks: Mutex::new(Vec::new()),
            ledger: LedgerMemo::default(),
        }
    }

    /// Replaces the (not yet connected) pool by one of `size` connections.
    pub(super) fn resize(&mut self, size: u32) {
        if self.resizable {
            let opts = (*self.pool.connect_options()).clone();
            self.pool = DB::pool(opts, size.max(1));
        }
    }

    pub(super) fn alias(&self) -> String {
        self.started
            .read_unpoisoned()
            .as_ref()
            .map_or_else(|| "sql".to_string(), |s| s.ctx.alias().to_string())
    }

    pub(super) fn started(&self) -> Result<Arc<Started>> {
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
    pub(super) fn err(&self, doing: &str, e: sqlx::Error) -> Error {
        store_error(
            &self.alias(),
            format!("{} ({}): {doing}: {e}", DB::LABEL, self.table),
            Some(Box::new(e)),
        )
    }
}

// Only the bounds starting and stopping need (the job operations in `jobs.rs` need more).
impl<DB> Core<DB>
where
    DB: Dialect,
    for<'q> &'q str: Encode<'q, DB>,
    str: Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
{
    pub(super) async fn ping(&self) -> Result<()> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.err("connecting", e))?;
        sqlx::Connection::ping(&mut *conn)
            .await
            .map_err(|e| self.err("checking the connection", e))
    }

    pub(super) async fn begin_write(
        &self,
    ) -> std::result::Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
        match DB::BEGIN {
            Some(stmt) => self.pool.begin_with(stmt).await,
            None => self.pool.begin().await,
        }
    }

    /// Deletes the rows of `ids` inside `tx`, a batch per statement (a round trip per
    /// [`BATCH`] ids, not per id).
    pub(super) async fn delete_ids(
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

    pub(super) fn table_checked(&self) -> Result<&str> {
        validate_table(&self.table).map_err(|m| store_error(&self.alias(), m, None))?;
        Ok(&self.table)
    }

    pub(super) async fn start(&self, ctx: StoreContext) -> Result<()> {
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
        self.ledger.clear();
        let tasks = [
            DB::listen(&self.pool, &ctx, channel),
            self.notifier(&started),
        ];
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
                match sqlx::query(AssertSqlSafe(stmt)).execute(&self.pool).await {
                    Ok(_) => {}
                    // Applied already: by another process starting at the same time, or
                    // by a start that stopped before it recorded the version.
                    Err(sqlx::Error::Database(e)) if DB::already_applied(&*e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            sqlx::query(AssertSqlSafe(insert_version.clone()))
                .bind(version)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    pub(super) async fn shutdown(&self) -> Result<()> {
        for t in self.tasks.lock_unpoisoned().drain(..) {
            t.abort();
        }
        Ok(())
    }

    pub(super) async fn drop_tables(&self) -> Result<()> {
        let table = self.table_checked()?;
        let tables = [
            format!("{table}_runs"),
            format!("{table}_owners"),
            table.to_string(),
            format!("{table}_schema"),
        ];
        for t in tables {
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
    pub(super) fn notify(&self, st: &Started) {
        if let Some(changed) = &st.changed {
            changed.notify_one();
        }
    }

    /// The task sending the notifications [`notify`](Self::notify) asks for.
    pub(super) fn notifier(&self, st: &Arc<Started>) -> Option<JoinHandle<()>> {
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
