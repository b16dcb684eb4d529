//! PostgreSQL's forms of the ledger's batch writes: one array per column, bound to one
//! statement that each connection prepares once, whatever the batch size. A multi-row
//! `VALUES` statement of 1 000 runs has 15 000 parameters to parse, plan and bind on every
//! call; this is what keeps the ledger's cost on the claim path small (issue 11: S2 on
//! PostgreSQL with records on).

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Pool, Postgres, Row};

use super::dialect::ActiveRow;
use super::run_rows::{id_i64, slot, us, ACTIVE, RUN_COLS};
use crate::job::RunId;
use crate::ledger::{RunOutcome, RunRecord};

/// The active runs of `jobs`: (job id, run id, state, queued); rows that do not read are
/// left out (they cannot be counted; `query_runs` reports them).
pub(super) async fn active(
    conn: &mut PgConnection,
    runs_table: &str,
    jobs: &[&str],
) -> Result<Vec<ActiveRow>, sqlx::Error> {
    let sql = format!(
        "SELECT job_id, run_id, state, queued FROM {runs_table} \
         WHERE {ACTIVE} AND job_id = ANY($1)"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(jobs)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some((
                r.try_get(0).ok()?,
                r.try_get(1).ok()?,
                r.try_get(2).ok()?,
                r.try_get(3).ok()?,
            ))
        })
        .collect())
}

/// Inserts `runs` into `runs_table`; a scheduled slot (job, scheduled time, attempt) that
/// already has its record keeps it, and so does a run id already stored.
pub(super) async fn insert(
    conn: &mut PgConnection,
    runs_table: &str,
    runs: &[&RunRecord],
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO {runs_table} ({RUN_COLS}) SELECT * FROM UNNEST($1::bigint[], \
         $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::boolean[], $7::bigint[], \
         $8::text[], $9::boolean[], $10::boolean[], $11::bigint[], $12::bigint[], \
         $13::bigint[], $14::text[], $15::text[], $16::bigint[]) ON CONFLICT DO NOTHING"
    );
    let col = |f: &dyn Fn(&RunRecord) -> i64| runs.iter().map(|r| f(r)).collect::<Vec<i64>>();
    let text = |f: &dyn Fn(&RunRecord) -> Option<&str>| {
        runs.iter().map(|r| f(r)).collect::<Vec<Option<&str>>>()
    };
    let flag = |f: &dyn Fn(&RunRecord) -> bool| runs.iter().map(|r| f(r)).collect::<Vec<bool>>();
    let nullable = |f: &dyn Fn(&RunRecord) -> Option<i64>| {
        runs.iter().map(|r| f(r)).collect::<Vec<Option<i64>>>()
    };
    sqlx::query(AssertSqlSafe(sql))
        .bind(col(&|r| id_i64(r.run_id)))
        .bind(text(&|r| Some(r.job_id.as_str())))
        .bind(col(&|r| us(r.scheduled)))
        .bind(nullable(&slot))
        .bind(text(&|r| Some(r.owner.as_str())))
        .bind(flag(&|r| r.manual))
        .bind(col(&|r| i64::from(r.attempt)))
        .bind(text(&|r| Some(r.state.as_str())))
        .bind(flag(&|r| r.queued))
        .bind(flag(&|r| r.cancel_requested))
        .bind(col(&|r| us(r.submitted_at)))
        .bind(nullable(&|r| r.started_at.map(us)))
        .bind(nullable(&|r| r.finished_at.map(us)))
        .bind(text(&|r| r.error.as_deref()))
        .bind(text(&|r| r.output.as_deref()))
        .bind(nullable(&|r| r.retry_at.map(us)))
        .execute(conn)
        .await?;
    Ok(())
}

/// Marks the claimed runs of `owner` among `ids` started; the ids changed.
pub(super) async fn start(
    pool: &Pool<Postgres>,
    runs_table: &str,
    ids: &[RunId],
    owner: &str,
    now_us: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    let sql = format!(
        "UPDATE {runs_table} SET state = 'started', started_at = $1, queued = FALSE \
         WHERE run_id = ANY($2) AND state = 'claimed' AND owner = $3 RETURNING run_id"
    );
    let ids: Vec<i64> = ids.iter().map(|id| id_i64(*id)).collect();
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(now_us)
        .bind(ids)
        .bind(owner)
        .fetch_all(pool)
        .await?;
    rows.iter().map(|r| r.try_get::<i64, _>(0)).collect()
}

/// Writes terminal outcomes, where the run is still active.
pub(super) async fn finish(
    pool: &Pool<Postgres>,
    runs_table: &str,
    outcomes: &[RunOutcome],
) -> Result<(), sqlx::Error> {
    let t = runs_table;
    let sql = format!(
        "UPDATE {t} SET state = v.state, started_at = COALESCE(v.started, {t}.started_at), \
         finished_at = v.finished, error = v.error, output = v.output, queued = FALSE \
         FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], \
         $6::text[]) AS v (id, state, started, finished, error, output) \
         WHERE {t}.run_id = v.id AND {t}.state IN ('claimed', 'started')"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(
            outcomes
                .iter()
                .map(|o| id_i64(o.run_id))
                .collect::<Vec<i64>>(),
        )
        .bind(
            outcomes
                .iter()
                .map(|o| o.state.as_str())
                .collect::<Vec<&str>>(),
        )
        .bind(
            outcomes
                .iter()
                .map(|o| o.started_at.map(us))
                .collect::<Vec<Option<i64>>>(),
        )
        .bind(
            outcomes
                .iter()
                .map(|o| us(o.finished_at))
                .collect::<Vec<i64>>(),
        )
        .bind(
            outcomes
                .iter()
                .map(|o| o.error.as_deref())
                .collect::<Vec<Option<&str>>>(),
        )
        .bind(
            outcomes
                .iter()
                .map(|o| o.output.as_deref())
                .collect::<Vec<Option<&str>>>(),
        )
        .execute(pool)
        .await?;
    Ok(())
}
