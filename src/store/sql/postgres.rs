//! PostgreSQL: claims with `FOR UPDATE SKIP LOCKED`; changes wake the other schedulers
//! through LISTEN/NOTIFY (channel `<table>_changed`, payload: the writer's scheduler id).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions};
use sqlx::{Pool, Postgres};
use tokio::task::JoinHandle;

use super::dialect::{ActiveRow, ArrayOp, Dialect};
use super::pg_runs;
use super::url::bad_url;
use crate::error::Result;
use crate::job::RunId;
use crate::ledger::{RunOutcome, RunRecord};
use crate::store::StoreContext;

impl Dialect for Postgres {
    const LABEL: &'static str = "PostgreSQL";
    const LOCK_SKIP: &'static str = " FOR UPDATE SKIP LOCKED";
    const LOCK: &'static str = " FOR UPDATE";
    const UPDATE_RETURNING: bool = true;
    const BEGIN: Option<&'static str> = None;
    const POLLS: bool = false;
    const DEFAULT_POOL_SIZE: u32 = 5;

    fn pool(opts: PgConnectOptions, size: u32) -> Pool<Postgres> {
        PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(opts)
    }

    fn placeholders(sql: &str) -> String {
        let mut out = String::with_capacity(sql.len() + 16);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }

    fn rows_affected(r: &sqlx::postgres::PgQueryResult) -> u64 {
        r.rows_affected()
    }

    fn migrations(t: &str) -> Vec<Vec<String>> {
        vec![vec![
            // `COLLATE "C"`: ids order bytewise, as in every other store.
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (id TEXT COLLATE \"C\" NOT NULL PRIMARY KEY, \
                 next_run_time BIGINT, paused BOOLEAN NOT NULL DEFAULT FALSE, doc TEXT NOT NULL, \
                 version BIGINT NOT NULL DEFAULT 0, lease_owner TEXT, lease_until BIGINT)"
            ),
            format!("CREATE INDEX IF NOT EXISTS {t}_next ON {t} (next_run_time, id)"),
            format!("CREATE INDEX IF NOT EXISTS {t}_lease ON {t} (lease_until)"),
        ], vec![
            // The run ledger (see `runs.rs`): times in µs since the epoch like the job
            // columns; `slot` is 1 for scheduled runs (version 3: their attempt) and NULL
            // for manual ones, so the unique index allows one record per (job, scheduled
            // time, attempt) and any number of manual runs.
            format!(
                "CREATE TABLE IF NOT EXISTS {t}_runs (run_id BIGINT NOT NULL PRIMARY KEY, \
                 job_id TEXT COLLATE \"C\" NOT NULL, scheduled BIGINT NOT NULL, slot SMALLINT, \
                 owner TEXT NOT NULL, manual BOOLEAN NOT NULL, attempt BIGINT NOT NULL, \
                 state TEXT NOT NULL, queued BOOLEAN NOT NULL DEFAULT FALSE, \
                 cancel_requested BOOLEAN NOT NULL DEFAULT FALSE, submitted_at BIGINT NOT NULL, \
                 started_at BIGINT, finished_at BIGINT, error TEXT, output TEXT)"
            ),
            format!(
                "CREATE UNIQUE INDEX IF NOT EXISTS {t}_runs_slot ON {t}_runs (job_id, scheduled, slot)"
            ),
            // Only the active runs: what claims, takeovers and promotions look for.
            format!(
                "CREATE INDEX IF NOT EXISTS {t}_runs_act ON {t}_runs (job_id) \
                 WHERE state IN ('claimed', 'started')"
            ),
            format!("CREATE INDEX IF NOT EXISTS {t}_runs_time ON {t}_runs (scheduled, run_id)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {t}_owners (scheduler_id TEXT NOT NULL PRIMARY KEY, \
                 alive_until BIGINT NOT NULL)"
            ),
        ], vec![
            // Retries: `retry_at`, when a retry is due (µs; NULL for a first attempt), and
            // `slot` the attempt of a scheduled run, so each retry of a scheduled time has
            // its own slot. The rows of version 2 have slot 1 for attempt 1: they stay as
            // they are. An attempt is a u32: the slot grows to a BIGINT like `attempt`
            // (a no-op when it already is one).
            format!("ALTER TABLE {t}_runs ADD COLUMN IF NOT EXISTS retry_at BIGINT"),
            format!("ALTER TABLE {t}_runs ALTER COLUMN slot TYPE BIGINT"),
        ]]
    }

    fn insert_runs_arrays<'a>(
        conn: &'a mut PgConnection,
        runs_table: &'a str,
        runs: &'a [&'a RunRecord],
    ) -> ArrayOp<'a, ()> {
        Some(Box::pin(pg_runs::insert(conn, runs_table, runs)))
    }

    fn active_runs_arrays<'a>(
        conn: &'a mut PgConnection,
        runs_table: &'a str,
        jobs: &'a [&'a str],
    ) -> ArrayOp<'a, Vec<ActiveRow>> {
        Some(Box::pin(pg_runs::active(conn, runs_table, jobs)))
    }

    fn start_runs_arrays<'a>(
        pool: &'a Pool<Postgres>,
        runs_table: &'a str,
        ids: &'a [RunId],
        owner: &'a str,
        now_us: i64,
    ) -> ArrayOp<'a, Vec<i64>> {
        Some(Box::pin(pg_runs::start(
            pool, runs_table, ids, owner, now_us,
        )))
    }

    fn finish_runs_arrays<'a>(
        pool: &'a Pool<Postgres>,
        runs_table: &'a str,
        outcomes: &'a [RunOutcome],
    ) -> ArrayOp<'a, ()> {
        Some(Box::pin(pg_runs::finish(pool, runs_table, outcomes)))
    }

    fn notify_sql() -> Option<&'static str> {
        Some("SELECT pg_notify(?, ?)")
    }

    fn listen(pool: &Pool<Self>, ctx: &StoreContext, channel: String) -> Option<JoinHandle<()>> {
        // The listener holds its connection for good, so it gets one of its own rather than
        // one of the pool's (a pool of one would otherwise be left with none). A pool of
        // one, with no timeouts, reconnects it after an outage.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with((*pool.connect_options()).clone());
        let ctx = ctx.clone();
        Some(tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            loop {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(store = %ctx.alias(), error = %e, "LISTEN connection failed; retrying in {delay:?}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                        continue;
                    }
                };
                if let Err(e) = listener.listen(&channel).await {
                    tracing::warn!(store = %ctx.alias(), error = %e, "LISTEN failed; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                    continue;
                }
                delay = Duration::from_millis(500);
                // (Re)connected: changes may have been missed meanwhile.
                ctx.wake_scheduler();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) => {
                            if n.payload() != ctx.scheduler_id() {
                                ctx.wake_scheduler();
                            }
                        }
                        // The connection dropped; the listener reconnects on the next call.
                        Ok(None) => ctx.wake_scheduler(),
                        Err(sqlx::Error::PoolClosed) => return,
                        Err(e) => {
                            tracing::warn!(store = %ctx.alias(), error = %e, "LISTEN connection lost; reconnecting in {delay:?}");
                            tokio::time::sleep(delay).await;
                            break;
                        }
                    }
                }
            }
        }))
    }
}

/// The connect options of a `postgres://` URL. What the URL leaves out comes from where
/// libpq takes it: `PGHOST`, `PGPORT`, `PGUSER` (else the operating-system user),
/// `PGPASSWORD` or `~/.pgpass`, `PGDATABASE` (else the user name). sqlx reads all of these;
/// the operating-system user needs `whoami`'s `std` feature, which this crate turns on.
pub(super) fn options(url: &str) -> Result<PgConnectOptions> {
    PgConnectOptions::from_str(url).map_err(|e| bad_url(url, &e))
}
