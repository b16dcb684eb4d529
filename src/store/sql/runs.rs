//! The run ledger of [`Core`]: one row per run in `<table>_runs`, the schedulers' heartbeats
//! in `<table>_owners` (docs/ledger.md has the schema).
//!
//! - A claim's records are written by [`Core::record_claims`] inside the claim's own
//!   transaction, two statements per batch (read the jobs' active runs, insert the
//!   records), so a crash cannot leave a claimed slot without its record.
//! - Whatever changes how many runs of a job hold an instance (a claim, a manual run, the
//!   promotion of a queued run) holds the job's row lock (`FOR UPDATE`; SQLite: the write
//!   transaction), so active runs are never under-counted.
//! - Starting and finishing runs are one statement per batch.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::batch::{list, BATCH};
use super::core::{Core, Started};
use super::dialect::Dialect;
use super::run_rows::{
    id_i64, read_run, slot, terminal_list, us, BadRun, ACTIVE, RUN_COLS, RUN_ROW,
};
use crate::error::{Error, Result};
use crate::job::RunId;
use crate::ledger::{
    plan_manual_runs, ActiveRuns, RunFilter, RunOutcome, RunRecord, RunState, RunTick,
};
use crate::store::common::{from_micros, lease_until, micros_ceil};
use crate::store::DueJob;
use crate::sync::MutexExt;

/// Runs started or finished per statement (the scheduler's batches are at most this big).
const RUN_BATCH: usize = 1024;

/// The most runs one ledger pass takes over, and the most it deletes.
const TICK_BUDGET: usize = 1000;

/// Jobs whose runs one ledger pass checks against the per-job retention.
const PRUNE_JOBS: usize = 100;

type Tx<DB> = sqlx::Transaction<'static, DB>;

impl<DB> Core<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> i16: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i16>: Encode<'q, DB>,
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

    /// Inserts `runs` in multi-row statements ([`BATCH`] rows each). A scheduled slot that
    /// already has its record keeps it (see [`Dialect::KEEP_EXISTING`]).
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
                    .bind(r.output.clone());
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

    /// [`JobStore::tick_runs`](crate::store::JobStore::tick_runs): the heartbeat, the
    /// takeover of dead schedulers' runs, the promotion of queued runs, this scheduler's
    /// cancel requests and retention, each bounded.
    pub(super) async fn tick_runs(&self, now: DateTime<Utc>) -> Result<RunTick> {
        let st = self.started()?;
        let me = st.ctx.scheduler_id();
        let until = lease_until(now, st.ctx.lease());
        sqlx::query(AssertSqlSafe(DB::placeholders(&DB::heartbeat(&format!(
            "{}_owners",
            st.table
        )))))
        .bind(me)
        .bind(us(until))
        .execute(&self.pool)
        .await
        .map_err(|e| self.err("recording this scheduler's heartbeat", e))?;
        let mut tick = RunTick::default();
        self.take_over(&st, now, &mut tick)
            .await
            .map_err(|e| self.err("taking over the runs of stopped schedulers", e))?;
        self.promote(&st, &mut tick)
            .await
            .map_err(|e| self.err("promoting queued runs", e))?;
        let sql = DB::placeholders(&format!(
            "SELECT run_id FROM {}_runs WHERE {ACTIVE} AND state = 'started' AND owner = ? \
             AND cancel_requested = TRUE",
            st.table
        ));
        for row in sqlx::query(AssertSqlSafe(sql))
            .bind(me)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err("reading cancel requests", e))?
        {
            if let Some(id) = row
                .try_get::<i64, _>(0)
                .ok()
                .and_then(|i| u64::try_from(i).ok())
            {
                tick.cancel.push(RunId::from_raw(id));
            }
        }
        self.prune(&st, now)
            .await
            .map_err(|e| self.err("deleting runs beyond the retention", e))?;
        Ok(tick)
    }

    /// Takes over the active runs of schedulers without a live heartbeat: claimed ones
    /// become this scheduler's (returned to start unless queued), started ones
    /// `abandoned`. The rows are locked (`SKIP LOCKED`) before they change, so two takers
    /// never take one run.
    async fn take_over(
        &self,
        st: &Started,
        now: DateTime<Utc>,
        tick: &mut RunTick,
    ) -> std::result::Result<(), sqlx::Error> {
        let me = st.ctx.scheduler_id();
        let t = &st.table;
        let mut tx = self.begin_write().await?;
        let sql = DB::placeholders(&format!(
            "SELECT {RUN_COLS} FROM {t}_runs r WHERE {ACTIVE} AND owner <> ? \
             AND NOT EXISTS (SELECT 1 FROM {t}_owners o WHERE o.scheduler_id = r.owner \
             AND o.alive_until >= ?) ORDER BY run_id LIMIT ?{}",
            DB::LOCK_SKIP
        ));
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(me)
            .bind(us(now))
            .bind(TICK_BUDGET as i64)
            .fetch_all(&mut *tx)
            .await?;
        let runs: Vec<RunRecord> = rows
            .iter()
            .filter_map(|row| self.readable(st, read_run::<DB>(row)))
            .collect();
        if runs.is_empty() {
            tx.rollback().await?;
            return Ok(());
        }
        let owners: Vec<&str> = {
            let mut o: Vec<&str> = runs.iter().map(|r| r.owner.as_str()).collect();
            o.sort_unstable();
            o.dedup();
            o
        };
        let sql = DB::placeholders(&format!(
            "SELECT scheduler_id, alive_until FROM {t}_owners WHERE scheduler_id IN ({})",
            list(owners.len(), "?")
        ));
        let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for o in &owners {
            q = q.bind(*o);
        }
        let mut seen: HashMap<String, i64> = HashMap::new();
        for row in q.fetch_all(&mut *tx).await? {
            if let (Ok(o), Ok(t)) = (row.try_get::<String, _>(0), row.try_get::<i64, _>(1)) {
                seen.insert(o, t);
            }
        }
        let (claimed, started): (Vec<RunRecord>, Vec<RunRecord>) =
            runs.into_iter().partition(|r| r.state == RunState::Claimed);
        if !claimed.is_empty() {
            let sql = DB::placeholders(&format!(
                "UPDATE {t}_runs SET owner = ? WHERE run_id IN ({})",
                list(claimed.len(), "?")
            ));
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false).bind(me);
            for r in &claimed {
                q = q.bind(id_i64(r.run_id));
            }
            q.execute(&mut *tx).await?;
        }
        let mut by_owner: HashMap<&str, Vec<&RunRecord>> = HashMap::new();
        for r in &started {
            by_owner.entry(r.owner.as_str()).or_default().push(r);
        }
        let mut errors: HashMap<String, String> = HashMap::new();
        for (owner, runs) in &by_owner {
            let since = match seen.get(*owner).and_then(|t| from_micros(*t)) {
                Some(t) => format!("no heartbeat since {}", t.to_rfc3339()),
                None => "no heartbeat recorded".to_string(),
            };
            let error = format!("its scheduler {owner} stopped ({since}); the outcome is unknown");
            let sql = DB::placeholders(&format!(
                "UPDATE {t}_runs SET state = 'abandoned', finished_at = ?, error = ?, \
                 queued = FALSE WHERE run_id IN ({})",
                list(runs.len(), "?")
            ));
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .persistent(false)
                .bind(us(now))
                .bind(error.clone());
            for r in runs {
                q = q.bind(id_i64(r.run_id));
            }
            q.execute(&mut *tx).await?;
            errors.insert(owner.to_string(), error);
        }
        tx.commit().await?;
        for mut r in claimed {
            r.owner = me.to_string();
            if !r.queued {
                tick.dispatch.push(r);
            }
        }
        for mut r in started {
            r.error = errors.get(&r.owner).cloned();
            r.state = RunState::Abandoned;
            r.finished_at = Some(now);
            r.queued = false;
            tick.abandoned.push(r);
        }
        Ok(())
    }

    /// Promotes the oldest queued runs of jobs with a free instance to this scheduler,
    /// holding the jobs' row locks (as their claims do) while it counts and changes them.
    async fn promote(
        &self,
        st: &Started,
        tick: &mut RunTick,
    ) -> std::result::Result<(), sqlx::Error> {
        let me = st.ctx.scheduler_id();
        let t = &st.table;
        let sql = DB::placeholders(&format!(
            "SELECT DISTINCT job_id FROM {t}_runs WHERE {ACTIVE} AND state = 'claimed' \
             AND queued = TRUE ORDER BY job_id LIMIT ?"
        ));
        let jobs: Vec<String> = sqlx::query(AssertSqlSafe(sql))
            .bind(TICK_BUDGET as i64)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .filter_map(|row| row.try_get::<String, _>(0).ok())
            .collect();
        if jobs.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        // Locked in id order, so two promoting schedulers cannot deadlock.
        let sql = DB::placeholders(&format!(
            "SELECT id, doc FROM {t} WHERE id IN ({}) ORDER BY id{}",
            list(jobs.len(), "?"),
            DB::LOCK
        ));
        let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for j in &jobs {
            q = q.bind(j.as_str());
        }
        let mut max: HashMap<String, usize> = HashMap::new();
        for row in q.fetch_all(&mut *tx).await? {
            let (Ok(id), Ok(doc)) = (row.try_get::<String, _>(0), row.try_get::<String, _>(1))
            else {
                continue;
            };
            max.insert(id, max_instances(&doc));
        }
        let sql = DB::placeholders(&format!(
            "SELECT {RUN_COLS} FROM {t}_runs WHERE {ACTIVE} AND job_id IN ({}) \
             ORDER BY run_id{}",
            list(jobs.len(), "?"),
            DB::LOCK
        ));
        let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for j in &jobs {
            q = q.bind(j.as_str());
        }
        let mut by_job: HashMap<String, Vec<RunRecord>> = HashMap::new();
        for row in q.fetch_all(&mut *tx).await? {
            if let Some(r) = self.readable(st, read_run::<DB>(&row)) {
                by_job.entry(r.job_id.clone()).or_default().push(r);
            }
        }
        let mut promoted: Vec<RunRecord> = Vec::new();
        for (job, runs) in by_job {
            // A job removed meanwhile keeps one instance, as in the memory store.
            let max = max.get(&job).copied().unwrap_or(1);
            let running = runs
                .iter()
                .filter(|r| !r.queued && !st.ctx.is_finishing(r.run_id))
                .count();
            let mut queued: Vec<RunRecord> = runs.into_iter().filter(|r| r.queued).collect();
            queued.sort_by_key(|r| (r.scheduled, r.submitted_at, r.run_id));
            promoted.extend(queued.into_iter().take(max.saturating_sub(running)));
        }
        if promoted.is_empty() {
            tx.rollback().await?;
            return Ok(());
        }
        let sql = DB::placeholders(&format!(
            "UPDATE {t}_runs SET queued = FALSE, owner = ? WHERE run_id IN ({})",
            list(promoted.len(), "?")
        ));
        let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false).bind(me);
        for r in &promoted {
            q = q.bind(id_i64(r.run_id));
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        promoted.sort_by_key(|r| (r.scheduled, r.submitted_at, r.run_id));
        for mut r in promoted {
            r.queued = false;
            r.owner = me.to_string();
            tick.promoted.push(r);
        }
        Ok(())
    }

    /// Deletes finished runs beyond the retention, at most [`TICK_BUDGET`] per pass: by
    /// age, then by count for the next [`PRUNE_JOBS`] jobs in id order (wrapping around);
    /// and heartbeats a day old.
    async fn prune(
        &self,
        st: &Started,
        now: DateTime<Utc>,
    ) -> std::result::Result<(), sqlx::Error> {
        let t = &st.table;
        let keep = st.ctx.run_retention();
        let terminal = terminal_list();
        let mut doomed: Vec<i64> = Vec::new();
        if let Some(cutoff) = keep.cutoff(now) {
            // `scheduled < cutoff` walks the time index; a run finishes after its
            // scheduled time, so it only narrows the search.
            let sql = DB::placeholders(&format!(
                "SELECT run_id FROM {t}_runs WHERE scheduled < ? AND finished_at < ? \
                 AND state IN ({terminal}) LIMIT ?"
            ));
            let cutoff = micros_ceil(cutoff);
            for row in sqlx::query(AssertSqlSafe(sql))
                .bind(cutoff)
                .bind(cutoff)
                .bind(TICK_BUDGET as i64)
                .fetch_all(&self.pool)
                .await?
            {
                doomed.extend(row.try_get::<i64, _>(0).ok());
            }
        }
        if doomed.len() < TICK_BUDGET {
            let jobs = self.prune_jobs(st).await?;
            if !jobs.is_empty() {
                let sql = DB::placeholders(&format!(
                    "SELECT run_id FROM (SELECT run_id, ROW_NUMBER() OVER (PARTITION BY job_id \
                     ORDER BY scheduled DESC, run_id DESC) AS n FROM {t}_runs \
                     WHERE job_id IN ({}) AND state IN ({terminal})) AS ranked \
                     WHERE n > ? LIMIT ?",
                    list(jobs.len(), "?")
                ));
                let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
                for j in &jobs {
                    q = q.bind(j.as_str());
                }
                let rows = q
                    .bind(i64::try_from(keep.per_job).unwrap_or(i64::MAX))
                    .bind((TICK_BUDGET - doomed.len()) as i64)
                    .fetch_all(&self.pool)
                    .await?;
                doomed.extend(rows.iter().filter_map(|r| r.try_get::<i64, _>(0).ok()));
            }
        }
        // Heartbeats of schedulers gone for a day: their runs were taken over long ago.
        let stale = now - chrono::TimeDelta::days(1);
        sqlx::query(AssertSqlSafe(DB::placeholders(&format!(
            "DELETE FROM {t}_owners WHERE alive_until < ?"
        ))))
        .bind(us(stale))
        .execute(&self.pool)
        .await?;
        doomed.sort_unstable();
        doomed.dedup();
        for chunk in doomed.chunks(RUN_BATCH) {
            // The state is checked again: only finished runs are ever deleted.
            let sql = DB::placeholders(&format!(
                "DELETE FROM {t}_runs WHERE run_id IN ({}) AND state IN ({terminal})",
                list(chunk.len(), "?")
            ));
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// The next [`PRUNE_JOBS`] job ids with runs after the last pass's, wrapping around to
    /// the first ones.
    async fn prune_jobs(&self, st: &Started) -> std::result::Result<Vec<String>, sqlx::Error> {
        let after = self.ledger.prune_after.lock_unpoisoned().clone();
        let page = |after: Option<String>, n: usize| {
            let sql = DB::placeholders(&format!(
                "SELECT DISTINCT job_id FROM {}_runs{} ORDER BY job_id LIMIT ?",
                st.table,
                if after.is_some() {
                    " WHERE job_id > ?"
                } else {
                    ""
                }
            ));
            async move {
                let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
                if let Some(a) = after {
                    q = q.bind(a);
                }
                let rows = q.bind(n as i64).fetch_all(&self.pool).await?;
                Ok::<_, sqlx::Error>(
                    rows.iter()
                        .filter_map(|r| r.try_get::<String, _>(0).ok())
                        .collect::<Vec<String>>(),
                )
            }
        };
        let mut jobs = page(after.clone(), PRUNE_JOBS).await?;
        if jobs.len() < PRUNE_JOBS && after.is_some() {
            for j in page(None, PRUNE_JOBS - jobs.len()).await? {
                if !jobs.contains(&j) {
                    jobs.push(j);
                }
            }
        }
        *self.ledger.prune_after.lock_unpoisoned() = jobs.last().cloned();
        Ok(jobs)
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
    fn readable(
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
fn max_instances(doc: &str) -> usize {
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
