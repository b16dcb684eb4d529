//! Naming jobs and stores: [`Scheduler::job`] and [`Scheduler::store`] return handles that
//! carry APScheduler's operations (`get`, `modify`, `reschedule`, `pause`, `resume`,
//! `remove`; `get_jobs`, `remove_all_jobs`). The operations themselves are in `jobs.rs`.

use super::{JobChanges, Scheduler};
use crate::error::Result;
use crate::job::Job;
use crate::trigger::TriggerSpec;

/// One job, named by id: what [`Scheduler::job`] (every store) and [`StoreHandle::job`]
/// (one store) return. It holds a clone of the scheduler and the id, not the job: each
/// call looks the job up anew, so the handle can be kept, cloned and moved into tasks.
///
/// Looking a job up searches the stores in the order they were added (jobs added before
/// [`start`](Scheduler::start) included) and takes the first job with the id; a store may
/// hold a job with an id another store also holds, so name the store when that matters.
///
/// ```
/// use std::time::Duration;
/// use apsched::{JobChanges, Scheduler, trigger::Interval};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> apsched::Result<()> {
/// let scheduler = Scheduler::builder().build();
/// scheduler.start().await?;
/// scheduler
///     .add_job(|| async {})
///     .trigger(Interval::new(Duration::from_secs(60))?)
///     .id("report")
///     .await?;
/// let job = scheduler.job("report");
/// job.pause().await?;
/// assert_eq!(job.get().await?.unwrap().next_run_time, None);
/// job.modify(JobChanges::new().max_instances(2)).await?;
/// job.resume().await?;
/// job.remove().await?;
/// assert!(job.get().await?.is_none());
/// scheduler.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct JobHandle {
    pub(super) scheduler: Scheduler,
    pub(super) id: String,
    store: Option<String>,
}

impl JobHandle {
    /// The job's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The store the job is looked up in, if one was named ([`StoreHandle::job`]).
    pub fn store(&self) -> Option<&str> {
        self.store.as_deref()
    }

    /// The job, or `None` if there is none with this id.
    ///
    /// # Errors
    /// [`Error::UnknownStore`](crate::Error::UnknownStore) for a named store that does not exist; the store's error if
    /// it cannot be read.
    pub async fn get(&self) -> Result<Option<Job>> {
        let s = &self.scheduler;
        s.inner.at_home(s.get_job(&self.id, self.store())).await
    }

    /// Changes the job's options (see [`JobChanges`]) and emits
    /// [`Event::JobModified`](crate::Event::JobModified); returns the job as changed.
    ///
    /// # Errors
    /// [`Error::JobLookup`](crate::Error::JobLookup) if there is no such job; [`Error::UnknownExecutor`](crate::Error::UnknownExecutor) for an
    /// unknown executor alias; [`Error::InvalidJob`](crate::Error::InvalidJob) for invalid values.
    pub async fn modify(&self, changes: JobChanges) -> Result<Job> {
        self.scheduler
            .modify_job(&self.id, changes, self.store())
            .await
    }

    /// Replaces the job's trigger and computes its next run time from now.
    ///
    /// # Errors
    /// [`Error::JobLookup`](crate::Error::JobLookup) if there is no such job.
    pub async fn reschedule(&self, trigger: impl Into<TriggerSpec>) -> Result<Job> {
        self.scheduler
            .reschedule_job(&self.id, trigger, self.store())
            .await
    }

    /// Pauses the job: it keeps its trigger but has no next run time until
    /// [`resume`](Self::resume).
    ///
    /// # Errors
    /// [`Error::JobLookup`](crate::Error::JobLookup) if there is no such job.
    pub async fn pause(&self) -> Result<Job> {
        self.scheduler.pause_job(&self.id, self.store()).await
    }

    /// Resumes a paused job from now (due times missed while paused are skipped). A job
    /// whose trigger has no fire time left is removed instead ([`Event::JobRemoved`](crate::Event::JobRemoved)) and
    /// `None` returned.
    ///
    /// # Errors
    /// [`Error::JobLookup`](crate::Error::JobLookup) if there is no such job.
    pub async fn resume(&self) -> Result<Option<Job>> {
        self.scheduler.resume_job(&self.id, self.store()).await
    }

    /// Removes the job and emits [`Event::JobRemoved`](crate::Event::JobRemoved).
    ///
    /// # Errors
    /// [`Error::JobLookup`](crate::Error::JobLookup) if there is no such job.
    pub async fn remove(&self) -> Result<()> {
        let s = &self.scheduler;
        s.inner.at_home(s.remove_job(&self.id, self.store())).await
    }
}

/// One job store, named by alias: what [`Scheduler::store`] returns. Like [`JobHandle`] it
/// holds only the scheduler and the alias; an alias the scheduler does not have is reported
/// ([`Error::UnknownStore`](crate::Error::UnknownStore)) by each call.
///
/// ```
/// # async fn demo(scheduler: apsched::Scheduler) -> apsched::Result<()> {
/// let sql = scheduler.store("sql");
/// for job in sql.get_jobs().await? {
///     println!("{job}");
/// }
/// sql.job("nightly").pause().await?;
/// sql.remove_all_jobs().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct StoreHandle {
    pub(super) scheduler: Scheduler,
    pub(super) alias: String,
}

impl StoreHandle {
    /// The store's alias.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// The job `id` of this store only.
    pub fn job(&self, id: impl Into<String>) -> JobHandle {
        JobHandle {
            scheduler: self.scheduler.clone(),
            id: id.into(),
            store: Some(self.alias.clone()),
        }
    }

    /// The store's jobs by next run time (paused last), jobs added before start included.
    ///
    /// # Errors
    /// [`Error::UnknownStore`](crate::Error::UnknownStore); the store's error if it cannot be read.
    pub async fn get_jobs(&self) -> Result<Vec<Job>> {
        let s = &self.scheduler;
        s.inner.at_home(s.get_jobs_in(Some(&self.alias))).await
    }

    /// Removes every job of the store and emits [`Event::AllJobsRemoved`](crate::Event::AllJobsRemoved).
    ///
    /// # Errors
    /// [`Error::UnknownStore`](crate::Error::UnknownStore); the store's error.
    pub async fn remove_all_jobs(&self) -> Result<()> {
        let s = &self.scheduler;
        s.inner
            .at_home(s.remove_all_jobs_in(Some(&self.alias)))
            .await
    }

    /// The store's jobs as a [`JobExport`](crate::store::JobExport) (see
    /// [`Scheduler::export_jobs`]).
    ///
    /// # Errors
    /// [`Error::UnknownStore`](crate::Error::UnknownStore); the store's error.
    pub async fn export_jobs(&self) -> Result<crate::store::JobExport> {
        let s = &self.scheduler;
        s.inner.at_home(s.export_in(Some(&self.alias))).await
    }

    /// Adds the jobs of an export to this store, each with its exported options and next
    /// run time (a paused job stays paused), in one bulk write
    /// ([`Scheduler::add_jobs`]'s rules, events and atomicity). Entries this scheduler cannot
    /// run are skipped and listed in the report, with why: records the exporting store could
    /// not load, closures, jobs naming an executor this scheduler lacks or a task it has
    /// not registered. Before start, the jobs are kept aside like added jobs.
    ///
    /// # Errors
    /// [`Error::UnknownStore`](crate::Error::UnknownStore);
    /// [`Error::ConflictingId`](crate::Error::ConflictingId) for an id the store has, unless
    /// `replace_existing`; the store's error.
    pub async fn import_jobs(
        &self,
        export: &crate::store::JobExport,
        replace_existing: bool,
    ) -> Result<crate::store::ImportReport> {
        self.scheduler
            .import_into(&self.alias, export, replace_existing)
            .await
    }

    /// A readable table of the store's jobs (see [`Scheduler::jobs_table`]).
    ///
    /// # Errors
    /// [`Error::UnknownStore`](crate::Error::UnknownStore); the store's error.
    pub async fn jobs_table(&self) -> Result<String> {
        let s = &self.scheduler;
        s.inner.at_home(s.jobs_table_in(Some(&self.alias))).await
    }
}

impl Scheduler {
    /// The job `id`, looked up in every store (see [`JobHandle`]; for one store, use
    /// [`store`](Self::store)`(alias).job(id)`).
    pub fn job(&self, id: impl Into<String>) -> JobHandle {
        JobHandle {
            scheduler: self.clone(),
            id: id.into(),
            store: None,
        }
    }

    /// The job store `alias` (see [`StoreHandle`]).
    pub fn store(&self, alias: impl Into<String>) -> StoreHandle {
        StoreHandle {
            scheduler: self.clone(),
            alias: alias.into(),
        }
    }

    /// Every job of every store (jobs added before start included), store by store in the
    /// order the stores were added, each store's jobs by next run time (paused last).
    ///
    /// # Errors
    /// A store's error if it cannot be read.
    pub async fn get_jobs(&self) -> Result<Vec<Job>> {
        self.inner.at_home(self.get_jobs_in(None)).await
    }

    /// Removes every job of every store and emits [`Event::AllJobsRemoved`](crate::Event::AllJobsRemoved).
    ///
    /// # Errors
    /// A store's error.
    pub async fn remove_all_jobs(&self) -> Result<()> {
        self.inner.at_home(self.remove_all_jobs_in(None)).await
    }

    /// A readable table of the jobs with their next run times, store by store
    /// (APScheduler's `print_jobs`, as a string: `print!("{}", scheduler.jobs_table().await?)`).
    ///
    /// # Errors
    /// A store's error if it cannot be read.
    pub async fn jobs_table(&self) -> Result<String> {
        self.inner.at_home(self.jobs_table_in(None)).await
    }
}
