//! The SQL store's periodic ledger pass ([`Core::tick_runs`]): the heartbeat in
//! `<table>_owners`, the takeover of dead schedulers' runs, the promotion of queued runs,
//! this scheduler's cancel requests, and retention, each bounded per pass. The rest of the
//! run ledger (claims' records, start, finish, manual runs, reading) is in `runs.rs`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::batch::list;
use super::core::{Core, Started};
use super::dialect::Dialect;
use super::run_rows::{id_i64, read_run, terminal_list, us, ACTIVE, RUN_COLS};
use super::runs::{max_instances, RUN_BATCH};
use crate::error::Result;
use crate::job::RunId;
use crate::ledger::{RunRecord, RunState, RunTick};
use crate::store::common::{from_micros, lease_until, micros_ceil};
use crate::sync::MutexExt;

/// The most runs one ledger pass takes over, and the most it deletes.
const TICK_BUDGET: usize = 1000;

/// Jobs whose runs one ledger pass checks against the per-job retention.
const PRUNE_JOBS: usize = 100;

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
    /// [`JobStore::tick_runs`](crate::store::JobStore::tick_runs): the heartbeat, the
    /// takeover of dead schedulers' runs, the promotion of queued runs, this scheduler's
    /// cancel requests and retention, each bounded.
    pub(super) async fn tick_runs(&self, now: DateTime<Utc>) -> Result<RunTick> {
        self.heartbeat(now).await?;
        let st = self.started()?;
        let me = st.ctx.scheduler_id();
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

    /// [`JobStore::heartbeat`](crate::store::JobStore::heartbeat): this scheduler is alive
    /// until `now + lease` (one upsert of its row in `<table>_owners`).
    pub(super) async fn heartbeat(&self, now: DateTime<Utc>) -> Result<()> {
        let st = self.started()?;
        let until = lease_until(now, st.ctx.lease());
        sqlx::query(AssertSqlSafe(DB::placeholders(&DB::heartbeat(&format!(
            "{}_owners",
            st.table
        )))))
        .bind(st.ctx.scheduler_id())
        .bind(us(until))
        .execute(&self.pool)
        .await
        .map_err(|e| self.err("recording this scheduler's heartbeat", e))?;
        Ok(())
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
            let alive_until = seen.get(*owner).and_then(|t| from_micros(*t));
            let error = crate::ledger::abandoned_error(owner, alive_until);
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
            r.owner = st.ctx.owner().clone();
            if !r.queued {
                tick.dispatch.push(r);
            }
        }
        for mut r in started {
            r.error = errors.get(r.owner.as_str()).cloned();
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
        let mut by_job: HashMap<arcstr::ArcStr, Vec<RunRecord>> = HashMap::new();
        for row in q.fetch_all(&mut *tx).await? {
            if let Some(r) = self.readable(st, read_run::<DB>(&row)) {
                by_job.entry(r.job_id.clone()).or_default().push(r);
            }
        }
        let mut promoted: Vec<RunRecord> = Vec::new();
        for (job, runs) in by_job {
            // A job removed meanwhile keeps one instance, as in the memory store.
            let max = max.get(&*job).copied().unwrap_or(1);
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
            r.owner = st.ctx.owner().clone();
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
}
