//! The [`JobStore`](crate::store::JobStore) operations of [`Core`]: adding, updating,
//! removing and reading jobs, and claiming due ones (one transaction per claim).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::batch::{list, BATCH};
use super::core::{Core, Started};
use super::dialect::Dialect;
use super::rows::{version_i64, version_u64, ClaimRow, UNREADABLE};
use crate::error::{Error, Result};
use crate::job::{JobRecord, Lease};
use crate::store::common::{export_order, loaded};
use crate::store::common::{first_version, from_micros, lease_until, micros_ceil};
use crate::store::export::UnloadableRecord;
use crate::store::DueJob;

impl<DB> Core<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB>,
    str: Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    // The run ledger's columns (the claim writes its records).
    for<'q> Option<String>: Encode<'q, DB>,
    usize: ColumnIndex<DB::Row>,
{
    pub(super) async fn add_job(&self, job: JobRecord, replace: bool) -> Result<()> {
        let st = self.started()?;
        let doc = job.to_json()?;
        let next = job.next_run_time.map(micros_ceil);
        let paused = job.next_run_time.is_none();
        // A new incarnation: see `first_version`.
        let version = version_i64(first_version());
        let err = |e| self.err(&format!("adding job '{}'", job.id), e);
        if !replace {
            // One statement: the primary key refuses a duplicate id.
            let r = sqlx::query(AssertSqlSafe(st.sql.insert.clone()))
                .bind(job.id.as_str())
                .bind(next)
                .bind(paused)
                .bind(doc)
                .bind(version)
                .execute(&self.pool)
                .await;
            return match r {
                Ok(_) => {
                    self.bad.forget(&job.id);
                    self.notify(&st);
                    Ok(())
                }
                Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                    Err(Error::ConflictingId(job.id))
                }
                Err(e) => Err(err(e)),
            };
        }
        // A replacement is a new job with a new version (whatever the old row held, even
        // something unreadable), so a writer still holding the old one is fenced off.
        let mut tx = self.begin_write().await.map_err(err)?;
        let replaced = sqlx::query(AssertSqlSafe(st.sql.replace.clone()))
            .bind(next)
            .bind(paused)
            .bind(doc.as_str())
            .bind(version)
            .bind(job.id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        if DB::rows_affected(&replaced) == 0 {
            sqlx::query(AssertSqlSafe(st.sql.insert.clone()))
                .bind(job.id.as_str())
                .bind(next)
                .bind(paused)
                .bind(doc.as_str())
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        self.bad.forget(&job.id);
        self.notify(&st);
        Ok(())
    }

    /// [`JobStore::add_jobs`]: one transaction, rows inserted [`BATCH`] at a time (5
    /// parameters a row: 2 500 a statement, below SQLite's 32 766, PostgreSQL's and MySQL's
    /// 65 535), replaced rows deleted first; one notification at the end.
    pub(super) async fn add_jobs(&self, jobs: Vec<JobRecord>, replace: bool) -> Result<()> {
        let st = self.started()?;
        let jobs = crate::store::dedupe_batch(jobs, replace)?;
        if jobs.is_empty() {
            return Ok(());
        }
        // Everything that can fail without the database fails before the first write.
        let mut rows = Vec::with_capacity(jobs.len());
        for job in &jobs {
            rows.push(ClaimRow {
                id: job.id.clone(),
                next: job.next_run_time.map(micros_ceil),
                doc: job.to_json()?,
                // A new incarnation per job: see `first_version`.
                version: version_i64(first_version()),
            });
        }
        let err = |e| self.err(&format!("adding {} jobs", rows.len()), e);
        let mut tx = self.begin_write().await.map_err(err)?;
        if replace {
            // A replacement is a new job with a new version (whatever the old row held,
            // even something unreadable), so a writer still holding the old one is fenced.
            let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            Self::delete_ids(&mut tx, &st.table, &ids)
                .await
                .map_err(err)?;
        }
        for chunk in rows.chunks(BATCH) {
            let sql = DB::placeholders(&format!(
                "INSERT INTO {} (id, next_run_time, paused, doc, version) VALUES {}",
                st.table,
                list(chunk.len(), "(?, ?, ?, ?, ?)")
            ));
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for r in chunk {
                q = q
                    .bind(r.id.as_str())
                    .bind(r.next)
                    .bind(r.next.is_none())
                    .bind(r.doc.as_str())
                    .bind(r.version);
            }
            match q.execute(&mut *tx).await {
                Ok(_) => {}
                Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                    // Rolled back: nothing of the batch is added. Name an id that exists.
                    tx.rollback().await.map_err(err)?;
                    let ids: Vec<&str> = chunk.iter().map(|r| r.id.as_str()).collect();
                    let taken = self.first_existing(&st, &ids).await?;
                    // `chunks` never yields an empty chunk, so there is a first id.
                    let id = taken.or_else(|| ids.first().map(|id| id.to_string()));
                    return Err(Error::ConflictingId(id.unwrap_or_default()));
                }
                Err(e) => return Err(err(e)),
            }
        }
        tx.commit().await.map_err(err)?;
        for r in &rows {
            self.bad.forget(&r.id);
        }
        self.notify(&st);
        Ok(())
    }

    /// The first of `ids` that has a row (to name the id a batch insert tripped over).
    pub(super) async fn first_existing(
        &self,
        st: &Started,
        ids: &[&str],
    ) -> Result<Option<String>> {
        let sql = DB::placeholders(&format!(
            "SELECT id FROM {} WHERE id IN ({})",
            st.table,
            list(ids.len(), "?")
        ));
        let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for id in ids {
            q = q.bind(*id);
        }
        let found: Vec<String> = q
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err("looking up conflicting ids", e))?
            .iter()
            .map(Self::read_id)
            .collect();
        Ok(ids
            .iter()
            .find(|id| found.iter().any(|f| f == *id))
            .map(|id| id.to_string()))
    }

    pub(super) async fn update_job(&self, mut job: JobRecord) -> Result<JobRecord> {
        let st = self.started()?;
        let doc = job.to_json()?;
        let err = |e| self.err(&format!("updating job '{}'", job.id), e);
        let new_version = job.version.saturating_add(1);
        let r = sqlx::query(AssertSqlSafe(st.sql.update_cas.clone()))
            .bind(job.next_run_time.map(micros_ceil))
            .bind(job.next_run_time.is_none())
            .bind(doc)
            .bind(version_i64(new_version))
            .bind(job.id.as_str())
            .bind(version_i64(job.version))
            .execute(&self.pool)
            .await
            .map_err(err)?;
        if DB::rows_affected(&r) == 0 {
            let exists = sqlx::query(AssertSqlSafe(st.sql.select_version.clone()))
                .bind(job.id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(err)?
                .is_some();
            return Err(if exists {
                Error::Fenced(job.id)
            } else {
                Error::JobLookup(job.id)
            });
        }
        self.bad.forget(&job.id);
        self.notify(&st);
        job.version = new_version;
        Ok(job)
    }

    pub(super) async fn remove_job(&self, id: &str) -> Result<()> {
        let st = self.started()?;
        let r = sqlx::query(AssertSqlSafe(st.sql.delete.clone()))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(&format!("removing job '{id}'"), e))?;
        if DB::rows_affected(&r) == 0 {
            return Err(Error::JobLookup(id.to_string()));
        }
        self.bad.forget(id);
        self.notify(&st);
        Ok(())
    }

    pub(super) async fn remove_all_jobs(&self) -> Result<()> {
        let st = self.started()?;
        sqlx::query(AssertSqlSafe(st.sql.delete_all.clone()))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("removing all jobs", e))?;
        self.bad.clear();
        self.notify(&st);
        Ok(())
    }

    pub(super) async fn lookup_job(&self, id: &str) -> Result<Option<JobRecord>> {
        let st = self.started()?;
        let err = |e| self.err(&format!("looking up job '{id}'"), e);
        let Some(row) = sqlx::query(AssertSqlSafe(st.sql.lookup.clone()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?
        else {
            return Ok(None);
        };
        let raw = Self::read_row(&row);
        self.load(&st, &raw)
            .map(Some)
            .map_err(|reason| Error::CorruptJob {
                id: id.to_string(),
                reason,
            })
    }

    pub(super) async fn get_all_jobs(&self) -> Result<Vec<JobRecord>> {
        Ok(loaded(self.export_records().await?))
    }

    /// Every row: loaded, or as stored with why it does not load.
    pub(super) async fn export_records(
        &self,
    ) -> Result<Vec<std::result::Result<JobRecord, UnloadableRecord>>> {
        let st = self.started()?;
        let err = |e| self.err("listing jobs", e);
        let rows = sqlx::query(AssertSqlSafe(st.sql.all.clone()))
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        let records = rows
            .iter()
            .map(|row| {
                let raw = Self::read_row(row);
                self.load(&st, &raw).map_err(|reason| {
                    let doc = raw.columns.as_ref().map_or("", |c| c.doc.as_str());
                    UnloadableRecord::new(raw.id.clone(), doc, reason)
                })
            })
            .collect();
        Ok(export_order(records))
    }

    pub(super) async fn next_run_time(&self) -> Result<Option<DateTime<Utc>>> {
        let st = self.started()?;
        let err = |e| self.err("reading the next run time", e);
        let me = st.ctx.scheduler_id();
        // Known-bad rows are skipped; fetching one more row per half than there are of
        // them always reaches a good one if there is any. A row whose time cannot be read
        // is reported as bad on the way, and the look repeated with it counted (each repeat
        // is owed to a row reported for the first time, so this ends).
        loop {
            let limit = self.bad_count() + 1;
            let rows = sqlx::query(AssertSqlSafe(st.sql.next.clone()))
                .bind(me)
                .bind(limit)
                .bind(me)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(err)?;
            let mut best: Option<i64> = None;
            let mut newly_bad = false;
            for row in rows {
                let id = Self::read_id(&row);
                if self.bad.contains(&id) {
                    continue;
                }
                match row.try_get::<i64, _>(1) {
                    Ok(t) => best = Some(best.map_or(t, |b| b.min(t))),
                    Err(e) => {
                        let reason = format!("its time column: {e}");
                        self.report_bad(&st, &id, UNREADABLE, &reason);
                        newly_bad = true;
                    }
                }
            }
            if !newly_bad {
                return Ok(best.and_then(from_micros));
            }
        }
    }

    pub(super) async fn acquire_due_jobs(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DueJob>> {
        let st = self.started()?;
        // Lock conflicts (a deadlock victim on MySQL, a busy SQLite file) are retried at
        // once; anything else goes back to the scheduler, which backs off.
        let mut attempt = 0;
        loop {
            match self.try_acquire(&st, now, limit).await {
                Ok(due) => return Ok(due),
                Err(sqlx::Error::Database(d)) if attempt < 2 && DB::lock_conflict(&*d) => {
                    attempt += 1;
                    tracing::debug!(store = %st.ctx.alias(), error = %d, "claim conflict; retrying");
                }
                Err(e) => return Err(self.err("claiming due jobs", e)),
            }
        }
    }

    pub(super) async fn try_acquire(
        &self,
        st: &Started,
        now: DateTime<Utc>,
        limit: usize,
    ) -> std::result::Result<Vec<DueJob>, sqlx::Error> {
        // Rounded up like the column: a job due at `now` exactly is selected (and a row only
        // sub-microsecond early is left alone by the check below).
        let now_us = micros_ceil(now);
        let me = st.ctx.scheduler_id();
        let lease_until = lease_until(now, st.ctx.lease());
        let lease_us = lease_until.timestamp_micros();
        let fetch = (limit as i64).saturating_add(self.bad_count());

        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(AssertSqlSafe(st.sql.select_due.clone()))
            .bind(now_us)
            .bind(now_us)
            .bind(me)
            .bind(fetch)
            .fetch_all(&mut *tx)
            .await?;
        let mut due = Vec::with_capacity(rows.len().min(limit));
        let mut updates: Vec<ClaimRow> = Vec::new();
        let mut deletes: Vec<String> = Vec::new();
        for row in &rows {
            if due.len() >= limit {
                break;
            }
            let raw = Self::read_row(row);
            if self.known_bad(&raw.id, raw.version) {
                continue;
            }
            let Ok(mut job) = self.load(st, &raw) else {
                continue;
            };
            job.version = version_u64(raw.version).saturating_add(1);
            job.lease = Some(Lease {
                owner: me.to_string(),
                until: lease_until,
            });
            let claimed = DueJob::claim(job, now);
            if claimed.run_times.is_empty() && !claimed.removed {
                // Not due after all (sub-microsecond rounding): leave the row as it is.
                continue;
            }
            if claimed.removed {
                deletes.push(raw.id.clone());
            } else {
                let doc = claimed
                    .job
                    .to_json()
                    .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                updates.push(ClaimRow {
                    id: raw.id.clone(),
                    next: claimed.job.next_run_time.map(micros_ceil),
                    doc,
                    version: version_i64(claimed.job.version),
                });
            }
            due.push(claimed);
        }
        // The writes go out in batches: a round trip per batch, not per job.
        let deletes: Vec<&str> = deletes.iter().map(String::as_str).collect();
        Self::delete_ids(&mut tx, &st.table, &deletes).await?;
        for chunk in updates.chunks(BATCH) {
            let sql = DB::placeholders(&DB::claim_many(&st.table, chunk.len()));
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for r in chunk {
                q = q
                    .bind(r.id.as_str())
                    .bind(r.next)
                    .bind(r.next.is_none())
                    .bind(r.doc.as_str())
                    .bind(r.version)
                    .bind(me)
                    .bind(lease_us);
            }
            q.execute(&mut *tx).await?;
        }
        // The run records, in the same transaction: the claim and its records commit
        // together or not at all.
        Self::record_claims(&mut tx, st, &mut due, now).await?;
        tx.commit().await?;
        Ok(due)
    }

    pub(super) async fn release_jobs(&self, jobs: &[DueJob]) -> Result<()> {
        let st = self.started()?;
        let me = st.ctx.scheduler_id();
        let err = |e| self.err("releasing claimed jobs", e);
        let kept: Vec<&DueJob> = jobs.iter().filter(|d| !d.removed).collect();
        if kept.is_empty() {
            return Ok(());
        }
        // Fenced by the lease and the version: a row is released only while it still
        // carries the lease this scheduler wrote when claiming it (owner and expiry) and
        // the version that claim wrote. A later claim by anyone, this scheduler included,
        // wrote another version, as did the removal and re-adding of the job.
        let mut by_lease: HashMap<i64, Vec<(&str, i64)>> = HashMap::new();
        for d in kept {
            if let Some(l) = &d.job.lease {
                by_lease
                    .entry(l.until.timestamp_micros())
                    .or_default()
                    .push((d.job.id.as_str(), version_i64(d.job.version)));
            }
        }
        let mut tx = self.begin_write().await.map_err(err)?;
        for (until, ids) in &by_lease {
            for chunk in ids.chunks(BATCH) {
                let sql = DB::placeholders(&format!(
                    "UPDATE {} SET lease_owner = NULL, lease_until = NULL \
                     WHERE lease_owner = ? AND lease_until = ? AND (id, version) IN ({})",
                    st.table,
                    list(chunk.len(), "(?, ?)")
                ));
                let mut q = sqlx::query(AssertSqlSafe(sql))
                    .persistent(false)
                    .bind(me)
                    .bind(*until);
                for (id, version) in chunk {
                    q = q.bind(*id).bind(*version);
                }
                q.execute(&mut *tx).await.map_err(err)?;
            }
        }
        tx.commit().await.map_err(err)?;
        Ok(())
    }
}
