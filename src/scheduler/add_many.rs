//! Adding many jobs at once: [`Scheduler::add_jobs`], one bulk write to one store.

use super::add::AddJob;
use super::{Pending, Scheduler};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::job::Job;

impl Scheduler {
    /// Adds many jobs to one store at once: each built from its [`AddJob`] options and the
    /// scheduler's job defaults as [`AddJob`] builds one, all written with one
    /// [`JobStore::add_jobs`](crate::store::JobStore::add_jobs) call (one transaction on
    /// the SQL stores instead of one durable commit per job). Emits
    /// [`Event::JobAdded`](crate::event::Event::JobAdded) for each job and wakes the loop
    /// once. Before the scheduler starts, the jobs are kept aside like [`AddJob`]'s.
    ///
    /// Every job is checked before anything is written: a bad option, an unknown executor
    /// or store, or a duplicate id (inside the batch, or among jobs added before start,
    /// unless `replace_existing`) fails the call and adds nothing. Once written, the store
    /// decides how much of a failed batch remains: nothing on the memory, SQL and Redis stores
    /// (docs/stores.md lists each store).
    ///
    /// ```
    /// # use apsched::{Scheduler, trigger::Interval};
    /// # async fn demo(scheduler: Scheduler) -> apsched::Result<()> {
    /// let hourly = Interval::new(std::time::Duration::from_secs(3600))?;
    /// let jobs = (0..1000).map(|i| {
    ///     scheduler
    ///         .add_task_job("report", i)
    ///         .trigger(hourly.clone())
    ///         .id(format!("report-{i}"))
    ///         .replace_existing(true)
    /// });
    /// let added = scheduler.add_jobs(jobs).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidJob`] if the jobs name different stores or mix `replace_existing`
    /// settings (one call writes to one store, under one rule); otherwise the errors of
    /// [`AddJob`].
    pub async fn add_jobs(&self, jobs: impl IntoIterator<Item = AddJob>) -> Result<Vec<Job>> {
        let pending = jobs
            .into_iter()
            .map(AddJob::prepare)
            .collect::<Result<Vec<_>>>()?;
        self.inner.at_home(self.add_prepared(pending)).await
    }

    /// Writes checked jobs (or keeps them aside before start): see [`add_jobs`](Self::add_jobs).
    pub(super) async fn add_prepared(&self, pending: Vec<Pending>) -> Result<Vec<Job>> {
        let inner = &self.inner;
        let Some(first) = pending.first() else {
            return Ok(Vec::new());
        };
        let (store_alias, replace) = (first.store.clone(), first.replace_existing);
        if let Some(odd) = pending
            .iter()
            .find(|p| p.store != store_alias || p.replace_existing != replace)
        {
            return Err(Error::InvalidJob {
                id: odd.job.id.clone(),
                reason: format!(
                    "add_jobs writes to one store with one replace_existing setting; this \
                     job has store '{}' and replace_existing {}, the first one \
                     '{store_alias}' and {replace}: add them in separate calls",
                    odd.store, odd.replace_existing
                ),
            });
        }
        if !inner.check_started() {
            let mut life = inner.life();
            let mut seen = std::collections::HashSet::new();
            for p in &pending {
                let twice = !seen.insert(p.job.id.as_str());
                if !replace && (twice || life.pending_index(&p.job.id, &store_alias).is_some()) {
                    return Err(Error::ConflictingId(p.job.id.clone()));
                }
            }
            let mut views = Vec::with_capacity(pending.len());
            for p in pending {
                if let Some(i) = life.pending_index(&p.job.id, &store_alias) {
                    life.pending.remove(i);
                }
                views.push(Job::from_record(&p.job, &store_alias, true));
                life.pending.push(p);
            }
            return Ok(views);
        }
        let now = inner.clock.now();
        let mut records = Vec::with_capacity(pending.len());
        let mut views = Vec::with_capacity(pending.len());
        for mut p in pending {
            p.first_run_time(now)?;
            views.push(Job::from_record(&p.job, &store_alias, false));
            records.push(p.job);
        }
        let earliest = records.iter().filter_map(|j| j.next_run_time).min();
        let ids: Vec<String> = records.iter().map(|j| j.id.clone()).collect();
        inner
            .store(&store_alias)?
            .add_jobs(records, replace)
            .await?;
        for id in ids {
            inner.events.emit_with(|| Event::JobAdded {
                job_id: id,
                store: store_alias.to_string(),
            });
        }
        inner.wakeup_for(earliest);
        Ok(views)
    }
}
