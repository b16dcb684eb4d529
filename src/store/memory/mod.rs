//! The in-process store.

mod runs;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arcstr::ArcStr;
use chrono::{DateTime, Utc};

use super::{DueJob, JobStore, StoreContext};
use crate::error::{Error, Result};
use crate::job::{JobRecord, RunId};
use crate::ledger::{plan_manual_runs, RunFilter, RunOutcome, RunRecord, RunTick};
use crate::sync::{lock_yielding, MutexExt};

/// Keeps jobs in memory, ordered by next run time. Holds any callable, closures included.
///
/// Adding, updating and removing a job is O(log n); finding the due jobs is O(k log n) for
/// k due jobs. A million jobs are fine.
///
/// It keeps the run ledger too (records of every run, under the same lock as the jobs), for
/// as long as the process lives.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// The context of the scheduler that started it (the ledger needs its identity).
    ctx: OnceLock<StoreContext>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Behind a pointer: a hash table rounds its capacity up and spreads entries over all
    /// of it, so small buckets (a key and a pointer) keep the resident size close to the
    /// jobs' own. Shared (not boxed): a claim hands the loop this copy (see
    /// [`DueJob::claim_shared`]) rather than a clone.
    jobs: HashMap<ArcStr, Arc<JobRecord>, crate::job::JobIdState>,
    /// Unpaused jobs by (next run time's [`due_key`], id).
    due_index: BTreeSet<(i64, ArcStr)>,
    /// The last version written. Versions come from this one store-wide counter, so a job
    /// removed and added again never repeats a version of the job it replaces (a writer
    /// holding a read of the old one is fenced).
    last_version: u64,
    /// Jobs of this version or older have no runs in the ledger's journal: a claim
    /// writes a new version, so only a job claimed (or added again) since the journal
    /// was last found empty can have some.
    settled_version: u64,
    /// The run ledger.
    runs: runs::Runs,
}

/// The due index's key for a next run time: nanoseconds since the epoch, so the index
/// orders jobs exactly as their times do. One integer compares faster than a `DateTime`
/// and takes 8 bytes less in every entry. A time it cannot hold (before 1677 or after
/// 2262) is clamped to its ends, where jobs are ordered by id and their records say when
/// they are due ([`is_clamped`]).
fn due_key(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// Whether a due key may stand for more than one time (see [`due_key`]).
fn is_clamped(key: i64) -> bool {
    key == i64::MIN || key == i64::MAX
}

impl Inner {
    /// The earliest next run time of the unpaused jobs.
    fn next_due_time(&self) -> Option<DateTime<Utc>> {
        let key = self.due_index.first()?.0;
        if !is_clamped(key) {
            return Some(DateTime::from_timestamp_nanos(key));
        }
        // Jobs beyond the key's range are ordered by id: their records know the earliest.
        self.due_index
            .iter()
            .take_while(|(k, _)| *k == key)
            .filter_map(|(_, id)| self.jobs.get(id)?.next_run_time)
            .min()
    }

    /// Removes and returns the first job due at `now` among those sharing the first key,
    /// a clamped one that `now` shares too: their times are in their records.
    fn take_clamped_due(&mut self, now: DateTime<Utc>) -> Option<ArcStr> {
        let key = self.due_index.first()?.0;
        let entry = self
            .due_index
            .iter()
            .take_while(|(k, _)| *k == key)
            .find(|(_, id)| {
                self.jobs
                    .get(id)
                    .and_then(|job| job.next_run_time)
                    .is_some_and(|t| t <= now)
            })?
            .clone();
        self.due_index.remove(&entry);
        Some(entry.1)
    }

    fn next_version(&mut self) -> u64 {
        self.last_version = self.last_version.saturating_add(1);
        self.last_version
    }

    fn insert(&mut self, job: JobRecord) {
        let id = ArcStr::from(job.id.as_str());
        if let Some(t) = job.next_run_time {
            self.due_index.insert((due_key(t), id.clone()));
        }
        self.jobs.insert(id, Arc::new(job));
    }

    fn remove(&mut self, id: &str) -> Option<JobRecord> {
        let (key, job) = self.jobs.remove_entry(id)?;
        if let Some(t) = job.next_run_time {
            self.due_index.remove(&(due_key(t), key));
        }
        Some(Arc::unwrap_or_clone(job))
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock_unpoisoned()
    }

    /// The lock, for the async methods: a task waiting for it (the run writer while the
    /// loop claims a batch, the loop while the writer records one) yields to the runtime
    /// rather than blocking its worker thread (see [`lock_yielding`]).
    async fn lock_async(&self) -> MutexGuard<'_, Inner> {
        lock_yielding(&self.inner).await
    }

    /// The number of jobs held.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn owner(&self) -> &str {
        self.ctx.get().map_or("", StoreContext::scheduler_id)
    }
}

#[async_trait::async_trait]
impl JobStore for MemoryStore {
    async fn start(&self, ctx: StoreContext) -> Result<()> {
        // A store is started by one scheduler; a second start keeps the first identity.
        let _ = self.ctx.set(ctx);
        Ok(())
    }

    async fn add_job(&self, mut job: JobRecord, replace_existing: bool) -> Result<()> {
        let mut inner = self.lock_async().await;
        if inner.jobs.contains_key(job.id.as_str()) {
            if !replace_existing {
                return Err(Error::ConflictingId(job.id));
            }
            inner.remove(&job.id);
        }
        job.version = inner.next_version();
        inner.insert(job);
        Ok(())
    }

    /// All or nothing under one lock: every id is checked before the first job goes in.
    async fn add_jobs(&self, jobs: Vec<JobRecord>, replace_existing: bool) -> Result<()> {
        let jobs = super::dedupe_batch(jobs, replace_existing)?;
        let mut inner = self.lock_async().await;
        if !replace_existing {
            if let Some(dup) = jobs.iter().find(|j| inner.jobs.contains_key(j.id.as_str())) {
                return Err(Error::ConflictingId(dup.id.clone()));
            }
        }
        for mut job in jobs {
            inner.remove(&job.id);
            job.version = inner.next_version();
            inner.insert(job);
        }
        Ok(())
    }

    async fn update_job(&self, mut job: JobRecord) -> Result<JobRecord> {
        let mut inner = self.lock_async().await;
        let Some(old) = inner.jobs.get(job.id.as_str()) else {
            return Err(Error::JobLookup(job.id));
        };
        if old.version != job.version {
            return Err(Error::Fenced(job.id));
        }
        inner.remove(&job.id);
        job.version = inner.next_version();
        inner.insert(job.clone());
        Ok(job)
    }

    async fn remove_job(&self, id: &str) -> Result<()> {
        self.lock_async()
            .await
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| Error::JobLookup(id.to_string()))
    }

    async fn remove_all_jobs(&self) -> Result<()> {
        let mut inner = self.lock_async().await;
        inner.jobs.clear();
        inner.due_index.clear();
        Ok(())
    }

    async fn lookup_job(&self, id: &str) -> Result<Option<JobRecord>> {
        Ok(self.lock_async().await.jobs.get(id).map(|j| (**j).clone()))
    }

    async fn get_all_jobs(&self) -> Result<Vec<JobRecord>> {
        let inner = self.lock_async().await;
        let mut jobs: Vec<JobRecord> = inner
            .due_index
            .iter()
            .filter_map(|(_, id)| inner.jobs.get(id).map(|j| (**j).clone()))
            .collect();
        let clamped = |entry: Option<&(i64, ArcStr)>| entry.is_some_and(|(k, _)| is_clamped(*k));
        if clamped(inner.due_index.first()) || clamped(inner.due_index.last()) {
            // Jobs due beyond the index's range are in it by id: put them in time order.
            jobs.sort_by(|a, b| (a.next_run_time, &a.id).cmp(&(b.next_run_time, &b.id)));
        }
        let mut paused: Vec<JobRecord> = inner
            .jobs
            .values()
            .filter(|j| j.next_run_time.is_none())
            .map(|j| (**j).clone())
            .collect();
        paused.sort_by(|a, b| a.id.cmp(&b.id));
        jobs.extend(paused);
        Ok(jobs)
    }

    async fn next_run_time(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(self.lock_async().await.next_due_time())
    }

    async fn acquire_due_jobs(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueJob>> {
        let mut inner = self.lock_async().await;
        let mut due = Vec::with_capacity(limit.min(inner.due_index.len()).min(1024));
        let now_key = due_key(now);
        while due.len() < limit {
            let id = match inner.due_index.first() {
                None => break,
                Some((key, _)) if *key == now_key && is_clamped(now_key) => {
                    inner.take_clamped_due(now)
                }
                Some((key, _)) if *key <= now_key => inner.due_index.pop_first().map(|(_, id)| id),
                Some(_) => None,
            };
            let Some(id) = id else {
                break;
            };
            let Some((key, job)) = inner.jobs.remove_entry(&id) else {
                continue;
            };
            if job.version > inner.settled_version {
                // Its earlier runs may still be in the journal: the overlap rule needs them.
                inner.runs.settle();
                inner.settled_version = inner.last_version;
            }
            let mut claimed = DueJob::claim_shared(job, now);
            claimed.job_mut().version = inner.next_version();
            if let Some(ctx) = self.ctx.get() {
                if !claimed.run_times.is_empty() || claimed.skipped_from.is_some() {
                    let active = inner.runs.active_of(&key);
                    claimed.plan_runs_of(key.clone(), ctx, now, &active);
                    inner.runs.record_claim(&key, &claimed);
                }
            }
            if !claimed.removed {
                if let Some(t) = claimed.job.next_run_time {
                    inner.due_index.insert((due_key(t), key.clone()));
                }
                inner.jobs.insert(key, claimed.job.clone());
            }
            due.push(claimed);
        }
        Ok(due)
    }

    fn keeps_runs(&self) -> bool {
        true
    }

    async fn start_runs(&self, run_ids: &[RunId], now: DateTime<Utc>) -> Result<Vec<RunId>> {
        Ok(self
            .lock_async()
            .await
            .runs
            .start(run_ids, self.owner(), now))
    }

    async fn add_runs(&self, runs: &[RunRecord]) -> Result<()> {
        self.lock_async().await.runs.add(runs);
        Ok(())
    }

    async fn finish_runs(&self, outcomes: &[RunOutcome]) -> Result<()> {
        let retention = self
            .ctx
            .get()
            .map(StoreContext::run_retention)
            .unwrap_or_default();
        self.lock_async().await.runs.finish(outcomes, retention);
        Ok(())
    }

    async fn add_manual_runs(
        &self,
        job_id: &str,
        slots: &[DateTime<Utc>],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunRecord>> {
        let mut inner = self.lock_async().await;
        // The overlap rule needs every active run of the job, journaled ones included.
        inner.runs.settle();
        let Some((key, job)) = inner.jobs.get_key_value(job_id) else {
            return Err(Error::JobLookup(job_id.to_string()));
        };
        let key = key.clone();
        let Some(ctx) = self.ctx.get() else {
            return Err(Error::store_not_started());
        };
        let active = inner.runs.active_of(&key);
        let (runs, cancel) = plan_manual_runs(job, slots, ctx, now, &active);
        inner.runs.flag_cancel(&key, &cancel);
        for r in &runs {
            inner.runs.insert(&key, r);
        }
        Ok(runs)
    }

    async fn tick_runs(&self, now: DateTime<Utc>) -> Result<RunTick> {
        let Some(ctx) = self.ctx.get() else {
            return Ok(RunTick::default());
        };
        let inner = &mut *self.lock_async().await;
        Ok(inner
            .runs
            .tick(&inner.jobs, ctx.owner(), now, ctx.run_retention(), |id| {
                ctx.is_finishing(id)
            }))
    }

    fn tick_wanted(&self, now: DateTime<Utc>) -> bool {
        self.lock().runs.tick_wanted(now)
    }

    async fn query_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        Ok(self.lock_async().await.runs.query(filter))
    }

    async fn get_run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
        Ok(self.lock_async().await.runs.get(run_id))
    }
}
