//! The run ledger of [`Core`]: one row per run in `<table>_runs`, the schedulers' heartbeats
//! in `<table>_owners` (docs/ledger.md has the schema).
//!
//! - A claim's records are written by [`Core::record_claims`] inside the claim's own
//!   transaction, two statements per batch (read the jobs' active runs, insert the
//!   records), so a crash cannot leave a claimed slot without its record.
//! - Whatever changes how many runs of a job hold an instance (a claim, a manual run, the
//!   promotion of a queued run) holds the job's row lock (`FOR UPDATE`; SQLite: the write
//!   transaction), so active runs are never under-counted. A retry ([`Core::add_runs`])
//!   needs no lock: it is written while the attempt it follows still holds its instance.
//! - Starting and finishing runs are one statement per batch.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::batch::{list, BATCH};
use super::core::{Core, Started};
use super::dialect::Dialect;
use super::run_rows::{id_i64, read_run, slot, us, BadRun, ACTIVE, RUN_COLS, RUN_ROW};
use crate::error::{Error, Result};
use crate::job::RunId;
use crate::ledger::{plan_manual_runs, ActiveRuns, RunFilter, RunOutcome, RunRecord, RunState};
use crate::store::common::micros_ceil;
use crate::store::DueJob;

/// Runs started or finished per statement (the scheduler's batches are at most this big).
pub(super) const RUN_BATCH: usize = 1024;

pub(super) type Tx<DB> = sqlx::Transaction<'static, DB>;

impl<DB> Core<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB>,
    str: Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// Inside a claim's transaction `tx`: plans the run records of the claimed jobs
    /// ([`DueJob::plan_runs`], against their active runs read in `tx`) and writes them with
    /// the cancel flags they ask for. Two statements per claim on PostgreSQL (one array
    /// per column), two per [`BATCH`] of jobs or records elsewhere; the cancel flags
    /// (`CancelOther` only) one more.
    pub(super) async fn record_claims(
        tx: &mut Tx<DB>,
        st: &Started,
        due: &mut [DueJob],
        now: DateTime<Utc>,
    ) -> std::result::Result<(), sqlx::Error> {
        if !st.ctx.keeps_runs() {
            return Ok(());
        }
        let planned = |d: &DueJob| !d.run_times.is_empty() || d.skipped_from.is_some();
        let ids: Vec<String> = due
            .iter()
            .filter(|d| planned(d))
            .map(|d| d.job.id.clone())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let active = Self::active_runs(tx, st, &ids).await?;
        let none = ActiveRuns::new();
        for d in due.iter_mut().filter(|d| planned(d)) {
            let a = active.get(d.job.id.as_str()).unwrap_or(&none);
            d.plan_runs(&st.ctx, now, a);
        }
        let runs: Vec<&RunRecord> = due.iter().flat_map(|d| &d.runs).collect();
        Self::insert_runs(tx, st, &runs).await?;
        let cancel: Vec<RunId> = due.iter().flat_map(|d| d.cancel.iter().copied()).collect();
        Self::flag_cancel(tx, st, &cancel).await
    }

    /// The active runs of `jobs`, read in `tx` (one statement per [`BATCH`] jobs).
    async fn active_runs(
        tx: &mut Tx<DB>,
        st: &Started,
        jobs: &[&str],
    ) -> std::result::Result<HashMap<String, ActiveRuns>, sqlx::Error> {
        let mut active: HashMap<String, ActiveRuns> = HashMap::new();
        let mut add = |job: String, id: i64, state: String, queued: bool| {
            if let (Ok(id), Ok(state)) = (u64::try_from(id), state.parse::<RunState>()) {
                active
                    .entry(job)
                    .or_default()
                    .push(RunId::from_raw(id), state, queued);
            }
        };
        let table = format!("{}_runs", st.table);
        if let Some(op) = DB::active_runs_arrays(&mut **tx, &table, jobs) {
            for (job, id, state, queued) in op.await? {
                add(job, id, state, queued);
            }
            return Ok(active);
        }
        for chunk in jobs.chunks(BATCH) {
            let sql = DB::placeholders(&format!(
                "SELECT job_id, run_id, state, queued FROM {}_runs \
                 WHERE {ACTIVE} AND job_id IN ({})",
                st.table,
                list(chunk.len(), "?")
            ));
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for id in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&mut **tx).await? {
                // A row that does not read cannot be counted; `query_runs` reports it.
                let (Ok(job), Ok(id), Ok(state), Ok(queued)) = (
                    row.try_get::<String, _>(0),
                    row.try_get::<i64, _>(1),
                    row.try_get::<String, _>(2),
                    row.try_get::<bool, _>(3),
                ) else {
                    continue;
                };
                add(job, id, state, queued);
            }
        }
        Ok(active)
    }

    /// Inserts `runs` in multi-row statements ([`BATCH`] rows each). A scheduled slot (job,
    /// scheduled time, attempt) that already has its record keeps it, and so does a run id
    /// already stored (see [`Dialect::KEEP_EXISTING`]).
    async fn insert_runs(
        tx: &mut Tx<DB>,
        st: &Started,
        runs: &[&RunRecord],
    ) -> std::result::Result<(), sqlx::Error> {
        if runs.is_empty() {
            return Ok(());
        }
        let table = format!("{}_runs", st.table);
        if let Some(op) = DB::insert_runs_arrays(&mut **tx, &table, runs) {
            return op.await;
        }
        for chunk in runs.chunks(BATCH) {
            let sql = DB::placeholders(&format!(
                "INSERT INTO {}_runs ({RUN_COLS}) VALUES {}{}",
                st.table,
                list(chunk.len(), RUN_ROW),
                DB::KEEP_EXISTING
            ));
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for r in chunk {
                q = q
                    .bind(id_i64(r.run_id))
                    .bind(r.job_id.as_str())
                    .bind(us(r.scheduled))
                    .bind(slot(r))
                    .bind(r.owner.as_str())
                    .bind(r.manual)
                    .bind(i64::from(r.attempt))
                    .bind(r.state.as_str())
                    .bind(r.queued)
                    .bind(r.cancel_requested)
                    .bind(us(r.submitted_at))
                    .bind(r.started_at.map(us))
                    .bind(r.finished_at.map(us))
                    .bind(r.error.clone())
                    .bind(r.output.clone())
                    .bind(r.retry_at.map(us));
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Flags the active runs `ids` `cancel_requested` (overlap policy `CancelOther`).
    async fn flag_cancel(
        tx: &mut Tx<DB>,
        st: &Started,
        ids: &[RunId],
    ) -> std::result::Result<(), sqlx::Error> {
        for chunk in ids.chunks(RUN_BATCH) {
            let sql = DB::placeholders(&format!(
                "UPDATE {}_runs SET cancel_requested = TRUE WHERE run_id IN ({}) AND {ACTIVE}",
                st.table,
                list(chunk.len(), "?")
            ));
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for id in chunk {
                q = q.bind(id_i64(*id));
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// [`JobStore::start_runs`](crate::store::JobStore::start_runs): one statement per
    /// batch ([`Dialect::start_runs_arrays`], or an `UPDATE … RETURNING` per
    /// [`RUN_BATCH`] runs; MySQL, which has no `RETURNING` on updates, locks and reads the
    /// runs that will change first, in the same transaction).
    pub(super) async fn start_runs(&self, ids: &[RunId], now: DateTime<Utc>) -> Result<Vec<RunId>> {
        let st = self.started()?;
        let me = st.ctx.scheduler_id();
        let err = |e| self.err(&format!("marking {} runs started", ids.len()), e);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let table = format!("{}_runs", st.table);
        let changed: HashSet<i64> =
            match DB::start_runs_arrays(&self.pool, &table, ids, me, us(now)) {
                Some(op) => op.await.map_err(err)?.into_iter().collect(),
                None => self.start_batches(&st, ids, now).await.map_err(err)?,
            };
        Ok(ids
            .iter()
            .copied()
            .filter(|id| changed.contains(&id_i64(*id)))
            .collect())
    }

    /// `start_runs` in multi-row statements: the ids of the runs changed.
    async fn start_batches(
        &self,
        st: &Started,
        ids: &[RunId],
        now: DateTime<Utc>,
    ) -> std::result::Result<HashSet<i64>, sqlx::Error> {
        let me = st.ctx.scheduler_id();
        let mut changed: HashSet<i64> = HashSet::with_capacity(ids.len());
        for chunk in ids.chunks(RUN_BATCH) {
            let set = "SET state = 'started', started_at = ?, queued = FALSE";
            let cond = format!(
                "run_id IN ({}) AND state = 'claimed' AND owner = ?",
                list(chunk.len(), "?")
            );
            if DB::UPDATE_RETURNING {
                let sql = DB::placeholders(&format!(
                    "UPDATE {}_runs {set} WHERE {cond} RETURNING run_id",
                    st.table
                ));
                let mut q = sqlx::query(AssertSqlSafe(sql))
                    .persistent(false)
                    .bind(us(now));
                for id in chunk {
                    q = q.bind(id_i64(*id));
                }
                for row in q.bind(me).fetch_all(&self.pool).await? {
                    changed.insert(row.try_get::<i64, _>(0)?);
                }
                continue;
            }
            let mut tx = self.begin_write().await?;
            let sql = DB::placeholders(&format!(
                "SELECT run_id FROM {}_runs WHERE {cond}{}",
                st.table,
                DB::LOCK
            ));
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for id in chunk {
                q = q.bind(id_i64(*id));
            }
            let mut mine = Vec::new();
            for row in q.bind(me).fetch_all(&mut *tx).await? {
                mine.push(row.try_get::<i64, _>(0)?);
            }
            if !mine.is_empty() {
                let sql = DB::placeholders(&format!(
                    "UPDATE {}_runs {set} WHERE run_id IN ({})",
                    st.table,
                    list(mine.len(), "?")
                ));
                let mut q = sqlx::query(AssertSqlSafe(sql))
                    .persistent(false)
                    .bind(us(now));
                for id in &mine {
                    q = q.bind(*id);
                }
                q.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            changed.extend(mine);
        }
        Ok(changed)
    }

    /// [`JobStore::finish_runs`](crate::store::JobStore::finish_runs): one statement per
    /// batch of [`RUN_BATCH`] outcomes ([`Dialect::finish_many`]).
    pub(super) async fn finish_runs(&self, outcomes: &[RunOutcome]) -> Result<()> {
        let st = self.started()?;
        let err = |e| self.err(&format!("writing {} run outcomes", outcomes.len()), e);
        if outcomes.is_empty() {
            return Ok(());
        }
        let table = format!("{}_runs", st.table);
        if let Some(op) = DB::finish_runs_arrays(&self.pool, &table, outcomes) {
            return op.await.map_err(err);
        }
        for chunk in outcomes.chunks(RUN_BATCH) {
            let sql =
                DB::placeholders(&DB::finish_many(&format!("{}_runs", st.table), chunk.len()));
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for o in chunk {
                q = q
                    .bind(id_i64(o.run_id))
                    .bind(o.state.as_str())
                    .bind(o.started_at.map(us))
                    .bind(us(o.finished_at))
                    .bind(o.error.clone())
                    .bind(o.output.clone());
            }
            q.execute(&self.pool).await.map_err(err)?;
        }
        Ok(())
    }

    /// [`JobStore::add_runs`](crate::store::JobStore::add_runs): the records (retries) in
    /// one transaction, with the claim's insert, so a record whose run id, or whose job,
    /// scheduled time and attempt (scheduled runs), is already stored keeps it. It takes no
    /// job row lock: a retry is added while the attempt it follows is still active, so no
    /// reader of the job's active runs can count fewer than it did before.
    pub(super) async fn add_runs(&self, runs: &[RunRecord]) -> Result<()> {
        let st = self.started()?;
        if runs.is_empty() {
            return Ok(());
        }
        let err = |e| self.err(&format!("adding {} runs", runs.len()), e);
        let mut tx = self.begin_write().await.map_err(err)?;
        let refs: Vec<&RunRecord> = runs.iter().collect();
        Self::insert_runs(&mut tx, &st, &refs).await.map_err(err)?;
        tx.commit().await.map_err(err)
    }

    /// [`JobStore::add_manual_runs`](crate::store::JobStore::add_manual_runs): one
    /// transaction holding the job's row lock, like a claim of the job.
    pub(super) async fn add_manual_runs(
        &self,
        job_id: &str,
        slots: &[DateTime<Utc>],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunRecord>> {
        let st = self.started()?;
        let err = |e| self.err(&format!("adding manual runs of job '{job_id}'"), e);
        let mut tx = self.begin_write().await.map_err(err)?;
        let sql = format!("{}{}", st.sql.lookup, DB::LOCK);
        let Some(row) = sqlx::query(AssertSqlSafe(sql))
            .bind(job_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?
        else {
            return Err(Error::JobLookup(job_id.to_string()));
        };
        let job = self
            .load(&st, &Self::read_row(&row))
            .map_err(|reason| Error::CorruptJob {
                id: job_id.to_string(),
                reason,
            })?;
        let active = Self::active_runs(&mut tx, &st, &[job_id])
            .await
            .map_err(err)?
            .remove(job_id)
            .unwrap_or_default();
        let (runs, cancel) = plan_manual_runs(&job, slots, &st.ctx, now, &active);
        let refs: Vec<&RunRecord> = runs.iter().collect();
        Self::insert_runs(&mut tx, &st, &refs).await.map_err(err)?;
        Self::flag_cancel(&mut tx, &st, &cancel)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(runs)
    }

    /// [`JobStore::query_runs`](crate::store::JobStore::query_runs): the filter, the order
    /// and the limit all in SQL. Rows that do not read are reported and skipped; the next
    /// rows are fetched in their place.
    pub(super) async fn query_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let st = self.started()?;
        let err = |e| self.err("reading runs", e);
        let mut out = Vec::new();
        // Past the rows already read (scheduled µs, run id), once a page had bad rows.
        let mut cursor: Option<(i64, i64)> = None;
        while out.len() < filter.limit {
            let want = filter.limit - out.len();
            let (sql, binds) = query_sql(&st.table, filter, cursor, want);
            let mut q = sqlx::query(AssertSqlSafe(DB::placeholders(&sql))).persistent(false);
            for b in binds {
                q = match b {
                    Bind::Int(i) => q.bind(i),
                    Bind::Text(s) => q.bind(s),
                    Bind::Bool(v) => q.bind(v),
                };
            }
            let rows = q.fetch_all(&self.pool).await.map_err(err)?;
            let full = rows.len() >= want;
            let mut bad = false;
            for row in &rows {
                match self.readable(&st, read_run::<DB>(row)) {
                    Some(r) if filter.matches(&r) => out.push(r),
                    Some(_) => {}
                    None => bad = true,
                }
            }
            if !bad || !full {
                break;
            }
            let last = rows
                .last()
                .map(|r| (r.try_get::<i64, _>(2), r.try_get::<i64, _>(0)));
            match last {
                Some((Ok(s), Ok(id))) => cursor = Some((s, id)),
                // The last row's place in the order cannot be read: stop here.
                _ => break,
            }
        }
        out.truncate(filter.limit);
        Ok(out)
    }

    /// [`JobStore::get_run`](crate::store::JobStore::get_run); a row that does not read is
    /// reported and reads as none.
    pub(super) async fn get_run(&self, id: RunId) -> Result<Option<RunRecord>> {
        let st = self.started()?;
        let sql = DB::placeholders(&format!(
            "SELECT {RUN_COLS} FROM {}_runs WHERE run_id = ?",
            st.table
        ));
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id_i64(id))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(&format!("reading run {id}"), e))?;
        Ok(row.and_then(|row| self.readable(&st, read_run::<DB>(&row))))
    }

    /// The record, or `None` after reporting the row (once per content).
    pub(super) fn readable(
        &self,
        st: &Started,
        run: std::result::Result<RunRecord, BadRun>,
    ) -> Option<RunRecord> {
        match run {
            Ok(r) => Some(r),
            Err(bad) => {
                if self.ledger.first_report(&bad) {
                    st.ctx.report_problem(
                        &bad.job_id,
                        &format!(
                            "run {} of job '{}' in table {}_runs cannot be read: {}; it is \
                             kept untouched and skipped",
                            bad.run_id, bad.job_id, st.table, bad.reason
                        ),
                    );
                }
                None
            }
        }
    }
}

/// A job's `max_instances` from its stored document (1 if it cannot be read, as for a
/// removed job).
pub(super) fn max_instances(doc: &str) -> usize {
    serde_json::from_str::<serde_json::Value>(doc)
        .ok()
        .and_then(|v| v.get("max_instances")?.as_u64())
        .map_or(1, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// A value bound into a query built at run time.
enum Bind {
    Int(i64),
    Text(String),
    Bool(bool),
}

/// The statement reading a page of runs for `filter` (with `?` placeholders) and its
/// binds, newest first: past `cursor` (scheduled µs, run id) when given, else past the
/// filter's own cursor; at most `limit` rows.
fn query_sql(
    table: &str,
    filter: &RunFilter,
    cursor: Option<(i64, i64)>,
    limit: usize,
) -> (String, Vec<Bind>) {
    let mut sql = format!("SELECT {RUN_COLS} FROM {table}_runs WHERE 1 = 1");
    let mut binds = Vec::new();
    if let Some(job) = &filter.job_id {
        sql.push_str(" AND job_id = ?");
        binds.push(Bind::Text(job.clone()));
    }
    if !filter.states.is_empty() {
        sql.push_str(&format!(
            " AND state IN ({})",
            list(filter.states.len(), "?")
        ));
        binds.extend(
            filter
                .states
                .iter()
                .map(|s| Bind::Text(s.as_str().to_string())),
        );
    }
    if let Some(m) = filter.manual {
        sql.push_str(" AND manual = ?");
        binds.push(Bind::Bool(m));
    }
    // Times in whole µs: `scheduled >= t` is `scheduled >= ceil(t)`, and so is `<`.
    if let Some(t) = filter.from {
        sql.push_str(" AND scheduled >= ?");
        binds.push(Bind::Int(micros_ceil(t)));
    }
    if let Some(t) = filter.to {
        sql.push_str(" AND scheduled < ?");
        binds.push(Bind::Int(micros_ceil(t)));
    }
    let after = cursor.or_else(|| {
        filter.before.map(|(t, id)| {
            if micros_ceil(t) == us(t) {
                (us(t), id_i64(id))
            } else {
                // Between two µs: every run at or before the earlier one comes after it.
                (micros_ceil(t), 0)
            }
        })
    });
    if let Some((s, id)) = after {
        sql.push_str(" AND (scheduled < ? OR (scheduled = ? AND run_id < ?))");
        binds.extend([Bind::Int(s), Bind::Int(s), Bind::Int(id)]);
    }
    sql.push_str(" ORDER BY scheduled DESC, run_id DESC LIMIT ?");
    binds.push(Bind::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
    (sql, binds)
}
