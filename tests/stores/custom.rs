//! The example store of docs/custom_store.md ("Writing your own store"), run against the
//! contract suite the way a store outside apsched runs it. The page shows this file: keep
//! the two in step.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use apsched::job::JobRecord;
use apsched::store::{testing, DueJob, JobStore};
use apsched::{Error, Result};
use chrono::{DateTime, Utc};

/// Jobs in a map by id. One process, one scheduler: no leases, nothing to connect to.
#[derive(Debug, Default)]
pub struct MapStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    jobs: BTreeMap<String, JobRecord>,
    /// Versions come from one counter for the whole store, so a job removed and added
    /// again never repeats a version of the job it replaces (a stale writer is fenced).
    last_version: u64,
}

impl State {
    fn next_version(&mut self) -> u64 {
        self.last_version += 1;
        self.last_version
    }

    /// The ids of the unpaused jobs due at `now`, by next run time, ties by id.
    fn due(&self, now: DateTime<Utc>) -> Vec<String> {
        let mut due: Vec<(DateTime<Utc>, &String)> = self
            .jobs
            .iter()
            .filter_map(|(id, j)| j.next_run_time.filter(|t| *t <= now).map(|t| (t, id)))
            .collect();
        due.sort();
        due.into_iter().map(|(_, id)| id.clone()).collect()
    }
}

impl MapStore {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while the lock was held leaves the map consistent: every
        // method changes it in one step.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl JobStore for MapStore {
    async fn add_job(&self, mut job: JobRecord, replace_existing: bool) -> Result<()> {
        let mut s = self.state();
        if !replace_existing && s.jobs.contains_key(&job.id) {
            return Err(Error::ConflictingId(job.id));
        }
        // A new job, or a replacement: a new incarnation with a version never used.
        job.version = s.next_version();
        job.lease = None;
        s.jobs.insert(job.id.clone(), job);
        Ok(())
    }

    async fn update_job(&self, mut job: JobRecord) -> Result<JobRecord> {
        let mut s = self.state();
        match s.jobs.get(&job.id) {
            None => return Err(Error::JobLookup(job.id)),
            // Someone wrote the job since this copy was read: refuse (fencing).
            Some(stored) if stored.version != job.version => return Err(Error::Fenced(job.id)),
            Some(_) => {}
        }
        job.version = s.next_version();
        s.jobs.insert(job.id.clone(), job.clone());
        Ok(job)
    }

    async fn remove_job(&self, id: &str) -> Result<()> {
        match self.state().jobs.remove(id) {
            Some(_) => Ok(()),
            None => Err(Error::JobLookup(id.to_string())),
        }
    }

    async fn remove_all_jobs(&self) -> Result<()> {
        self.state().jobs.clear();
        Ok(())
    }

    async fn lookup_job(&self, id: &str) -> Result<Option<JobRecord>> {
        Ok(self.state().jobs.get(id).cloned())
    }

    async fn get_all_jobs(&self) -> Result<Vec<JobRecord>> {
        let mut jobs: Vec<JobRecord> = self.state().jobs.values().cloned().collect();
        // By next run time, paused (None) last, ties by id (the map gives id order and
        // the sort is stable).
        jobs.sort_by_key(|j| (j.next_run_time.is_none(), j.next_run_time));
        Ok(jobs)
    }

    async fn next_run_time(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(self
            .state()
            .jobs
            .values()
            .filter_map(|j| j.next_run_time)
            .min())
    }

    async fn acquire_due_jobs(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueJob>> {
        // One lock for the whole step: finding, advancing and writing back is atomic.
        let mut s = self.state();
        let mut claimed = Vec::new();
        for id in s.due(now).into_iter().take(limit) {
            let Some(job) = s.jobs.remove(&id) else {
                continue;
            };
            // THE due-run rule: which times are due, the next run time, exhaustion.
            let mut due = DueJob::claim(job, now);
            if !due.removed {
                due.job_mut().version = s.next_version();
                s.jobs.insert(id, (*due.job).clone());
            }
            claimed.push(due);
        }
        Ok(claimed)
    }
}

#[tokio::test]
async fn map_store_keeps_the_contract() {
    testing::contract(
        || async {
            let store = MapStore::default();
            store
                .start(testing::context("default", "s1", Duration::from_secs(30)))
                .await
                .unwrap();
            store
        },
        // It keeps records, not documents: nothing in it can be corrupt.
        None,
    )
    .await;
}
