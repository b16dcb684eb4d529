//! Finding and changing jobs: [`Scheduler::job`] and [`Scheduler::store`] name a job or a
//! store, and the handles they return carry APScheduler's operations (`get`, `modify`,
//! `reschedule`, `pause`, `resume`, `remove`; `get_jobs`, `remove_all_jobs`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{add, Scheduler};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::job::{Job, JobRecord};
use crate::store::JobStore;
use crate::trigger::{Trigger, TriggerSpec};

/// Changes for [`JobHandle::modify`]; fields left unset keep their value.
///
/// ```
/// use std::time::Duration;
/// use apsched::JobChanges;
/// let changes = JobChanges::new().name("nightly report").max_instances(2)
///     .misfire_grace_time(Some(Duration::from_secs(60)));
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct JobChanges {
    name: Option<String>,
    trigger: Option<TriggerSpec>,
    executor: Option<String>,
    misfire_grace_time: Option<Option<Duration>>,
    coalesce: Option<bool>,
    max_instances: Option<u32>,
    next_run_time: Option<Option<DateTime<Utc>>>,
}

impl JobChanges {
    /// No changes.
    pub fn new() -> Self {
        Self::default()
    }
    /// Renames the job.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Replaces the trigger without recomputing the next run time (see
    /// [`JobHandle::reschedule`] for that).
    pub fn trigger(mut self, trigger: impl Into<TriggerSpec>) -> Self {
        self.trigger = Some(trigger.into());
        self
    }
    /// Moves the job to another executor.
    pub fn executor(mut self, alias: impl Into<String>) -> Self {
        self.executor = Some(alias.into());
        self
    }
    /// Sets the grace time (`None` = any lateness).
    pub fn misfire_grace_time(mut self, grace: Option<Duration>) -> Self {
        self.misfire_grace_time = Some(grace);
        self
    }
    /// Sets coalescing.
    pub fn coalesce(mut self, coalesce: bool) -> Self {
        self.coalesce = Some(coalesce);
        self
    }
    /// Sets the maximum concurrent runs.
    pub fn max_instances(mut self, n: u32) -> Self {
        self.max_instances = Some(n);
        self
    }
    /// Sets the next run time (`None` pauses the job).
    pub fn next_run_time(mut self, t: Option<DateTime<Utc>>) -> Self {
        self.next_run_time = Some(t);
        self
    }
}

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
    scheduler: Scheduler,
    id: String,
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
    /// [`Error::UnknownStore`] for a named store that does not exist; the store's error if
    /// it cannot be read.
    pub async fn get(&self) -> Result<Option<Job>> {
        let s = &self.scheduler;
        s.inner.at_home(s.get_job(&self.id, self.store())).await
    }

    /// Changes the job's options (see [`JobChanges`]) and emits
    /// [`Event::JobModified`]; returns the job as changed.
    ///
    /// # Errors
    /// [`Error::JobLookup`] if there is no such job; [`Error::UnknownExecutor`] for an
    /// unknown executor alias; [`Error::InvalidJob`] for invalid values.
    pub async fn modify(&self, changes: JobChanges) -> Result<Job> {
        self.scheduler
            .modify_job(&self.id, changes, self.store())
            .await
    }

    /// Replaces the job's trigger and computes its next run time from now.
    ///
    /// # Errors
    /// [`Error::JobLookup`] if there is no such job.
    pub async fn reschedule(&self, trigger: impl Into<TriggerSpec>) -> Result<Job> {
        self.scheduler
            .reschedule_job(&self.id, trigger, self.store())
            .await
    }

    /// Pauses the job: it keeps its trigger but has no next run time until
    /// [`resume`](Self::resume).
    ///
    /// # Errors
    /// [`Error::JobLookup`] if there is no such job.
    pub async fn pause(&self) -> Result<Job> {
        self.scheduler.pause_job(&self.id, self.store()).await
    }

    /// Resumes a paused job from now (due times missed while paused are skipped). A job
    /// whose trigger has no fire time left is removed instead ([`Event::JobRemoved`]) and
    /// `None` returned.
    ///
    /// # Errors
    /// [`Error::JobLookup`] if there is no such job.
    pub async fn resume(&self) -> Result<Option<Job>> {
        self.scheduler.resume_job(&self.id, self.store()).await
    }

    /// Removes the job and emits [`Event::JobRemoved`].
    ///
    /// # Errors
    /// [`Error::JobLookup`] if there is no such job.
    pub async fn remove(&self) -> Result<()> {
        let s = &self.scheduler;
        s.inner.at_home(s.remove_job(&self.id, self.store())).await
    }
}

/// One job store, named by alias: what [`Scheduler::store`] returns. Like [`JobHandle`] it
/// holds only the scheduler and the alias; an alias the scheduler does not have is reported
/// ([`Error::UnknownStore`]) by each call.
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
    scheduler: Scheduler,
    alias: String,
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
    /// [`Error::UnknownStore`]; the store's error if it cannot be read.
    pub async fn get_jobs(&self) -> Result<Vec<Job>> {
        let s = &self.scheduler;
        s.inner.at_home(s.get_jobs_in(Some(&self.alias))).await
    }

    /// Removes every job of the store and emits [`Event::AllJobsRemoved`].
    ///
    /// # Errors
    /// [`Error::UnknownStore`]; the store's error.
    pub async fn remove_all_jobs(&self) -> Result<()> {
        let s = &self.scheduler;
        s.inner
            .at_home(s.remove_all_jobs_in(Some(&self.alias)))
            .await
    }

    /// A readable table of the store's jobs (see [`Scheduler::jobs_table`]).
    ///
    /// # Errors
    /// [`Error::UnknownStore`]; the store's error.
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

    /// Removes every job of every store and emits [`Event::AllJobsRemoved`].
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

    /// Finds a job: in `store` if given, else in every store in order. Pending jobs (added
    /// before start) are found too, as a copy (callers that change one find it again by id
    /// under the lock: a position in the pending list goes stale when another call removes
    /// an earlier entry).
    async fn locate(&self, id: &str, store: Option<&str>) -> Result<Located> {
        if let Some(p) = self.inner.life().pending_job(id, store) {
            return Ok(Located::Pending(p.store.clone(), Box::new(p.job.clone())));
        }
        let stores = match store {
            Some(alias) => vec![(alias.to_string(), self.inner.store(alias)?)],
            None => self.inner.stores(),
        };
        for (alias, s) in stores {
            if let Some(job) = s.lookup_job(id).await? {
                return Ok(Located::Stored(alias, s, Box::new(job)));
            }
        }
        Err(Error::JobLookup(id.to_string()))
    }

    async fn get_job(&self, id: &str, store: Option<&str>) -> Result<Option<Job>> {
        match self.locate(id, store).await {
            Ok(Located::Pending(alias, job)) => Ok(Some(Job::from_record(&job, &alias, true))),
            Ok(Located::Stored(alias, _, job)) => Ok(Some(Job::from_record(&job, &alias, false))),
            Err(Error::JobLookup(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn get_jobs_in(&self, store: Option<&str>) -> Result<Vec<Job>> {
        let mut jobs: Vec<Job> = self
            .inner
            .life()
            .pending
            .iter()
            .filter(|p| store.is_none_or(|s| s == p.store))
            .map(|p| Job::from_record(&p.job, &p.store, true))
            .collect();
        let stores = match store {
            Some(alias) => vec![(alias.to_string(), self.inner.store(alias)?)],
            None => self.inner.stores(),
        };
        for (alias, s) in stores {
            jobs.extend(
                s.get_all_jobs()
                    .await?
                    .iter()
                    .map(|j| Job::from_record(j, &alias, false)),
            );
        }
        Ok(jobs)
    }

    async fn jobs_table_in(&self, store: Option<&str>) -> Result<String> {
        let jobs = self.get_jobs_in(store).await?;
        let mut out = String::new();
        let mut aliases: Vec<String> = self.inner.stores().into_iter().map(|(a, _)| a).collect();
        if let Some(s) = store {
            aliases.retain(|a| a == s);
        }
        for alias in aliases {
            let _ = writeln!(out, "Jobstore {alias}:");
            let in_store: Vec<&Job> = jobs.iter().filter(|j| j.store == alias).collect();
            if in_store.is_empty() {
                let _ = writeln!(out, "    No scheduled jobs");
            }
            for j in in_store {
                let _ = writeln!(out, "    {j}");
            }
        }
        Ok(out)
    }

    /// Changes a job's options (see [`JobChanges`]) and emits JOB_MODIFIED.
    ///
    /// # Errors
    /// [`Error::JobLookup`] if there is no such job; [`Error::UnknownExecutor`] for an
    /// unknown executor alias; [`Error::InvalidJob`] for invalid values.
    async fn modify_job(&self, id: &str, changes: JobChanges, store: Option<&str>) -> Result<Job> {
        let executor = match &changes.executor {
            Some(alias) => Some((
                alias.clone(),
                self.inner
                    .executor(alias)
                    .ok_or_else(|| Error::UnknownExecutor(alias.clone()))?,
            )),
            None => None,
        };
        add::validate_options(id, changes.misfire_grace_time, changes.max_instances)?;
        let tz = self.inner.timezone;
        let apply = move |job: &mut JobRecord| -> Result<()> {
            let c = changes.clone();
            if let Some((alias, executor)) = &executor {
                // The same check as add_job: the new executor must be able to run the job.
                executor
                    .check(&job.callable)
                    .map_err(|reason| Error::InvalidJob {
                        id: job.id.clone(),
                        reason: format!("executor '{alias}': {reason}"),
                    })?;
                job.executor = alias.clone();
            }
            if let Some(v) = c.name {
                job.name = Some(v);
            }
            if let Some(v) = c.trigger {
                job.trigger = v.with_default_timezone(tz);
            }
            if let Some(v) = c.misfire_grace_time {
                job.misfire_grace_time = v;
            }
            if let Some(v) = c.coalesce {
                job.coalesce = v;
            }
            if let Some(v) = c.max_instances {
                job.max_instances = v;
            }
            if let Some(t) = c.next_run_time {
                job.next_run_time = t;
            }
            Ok(())
        };
        self.update_with(id, store, move |job, _now| {
            apply(job)?;
            Ok(Update::Modify)
        })
        .await?
        .ok_or_else(|| Error::JobLookup(id.to_string()))
    }

    /// Replaces a job's trigger and recomputes its next run time from now.
    async fn reschedule_job(
        &self,
        id: &str,
        trigger: impl Into<TriggerSpec>,
        store: Option<&str>,
    ) -> Result<Job> {
        let trigger = trigger.into().with_default_timezone(self.inner.timezone);
        self.update_with(id, store, move |job, now| {
            job.next_run_time = trigger.next_fire_time(None, now);
            job.trigger = trigger.clone();
            Ok(Update::Modify)
        })
        .await?
        .ok_or_else(|| Error::JobLookup(id.to_string()))
    }

    /// Pauses a job: it keeps its trigger but has no next run time until resumed.
    async fn pause_job(&self, id: &str, store: Option<&str>) -> Result<Job> {
        self.update_with(id, store, |job, _| {
            job.next_run_time = None;
            Ok(Update::Modify)
        })
        .await?
        .ok_or_else(|| Error::JobLookup(id.to_string()))
    }

    /// Resumes a paused job from now (runs missed while paused are skipped). A job whose
    /// trigger has no fire time left is removed instead (JOB_REMOVED) and `None` returned.
    async fn resume_job(&self, id: &str, store: Option<&str>) -> Result<Option<Job>> {
        self.update_with(id, store, |job, now| {
            match job.trigger.next_fire_time(None, now) {
                Some(t) => {
                    job.next_run_time = Some(t);
                    Ok(Update::Modify)
                }
                None => Ok(Update::Remove),
            }
        })
        .await
    }

    /// Reads a job, applies `f`, writes it back (retrying if the loop or another scheduler
    /// changed it in between), and emits the matching event.
    async fn update_with<F>(&self, id: &str, store: Option<&str>, f: F) -> Result<Option<Job>>
    where
        F: Fn(&mut JobRecord, DateTime<Utc>) -> Result<Update>,
    {
        self.inner.at_home(self.update_at_home(id, store, f)).await
    }

    async fn update_at_home<F>(&self, id: &str, store: Option<&str>, f: F) -> Result<Option<Job>>
    where
        F: Fn(&mut JobRecord, DateTime<Utc>) -> Result<Update>,
    {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            let now = self.inner.clock.now();
            match self.locate(id, store).await? {
                Located::Pending(alias, _) => {
                    let mut life = self.inner.life();
                    let Some(i) = life.pending_index(id, &alias) else {
                        continue;
                    };
                    let p = &mut life.pending[i];
                    // A pending job's run time is computed at start unless a call sets it:
                    // mark "not set" so that a pause (None) is told apart from it.
                    let unset = DateTime::<Utc>::MIN_UTC;
                    p.job.next_run_time = p.next_run_time.unwrap_or(Some(unset));
                    let outcome = f(&mut p.job, now);
                    let restore = p.next_run_time;
                    p.next_run_time = match p.job.next_run_time {
                        Some(t) if t == unset => None,
                        explicit => Some(explicit),
                    };
                    p.job.next_run_time = None;
                    let outcome = match outcome {
                        Ok(o) => o,
                        Err(e) => {
                            p.next_run_time = restore;
                            return Err(e);
                        }
                    };
                    let event = |job_id: String, store: String| match outcome {
                        Update::Modify => Event::JobModified { job_id, store },
                        Update::Remove => Event::JobRemoved { job_id, store },
                    };
                    let result = match outcome {
                        Update::Modify => Some(Job::from_record(&p.job, &alias, true)),
                        Update::Remove => {
                            life.pending.remove(i);
                            None
                        }
                    };
                    drop(life);
                    self.inner.events.emit(event(id.to_string(), alias));
                    return Ok(result);
                }
                Located::Stored(alias, s, mut job) => match f(&mut job, now)? {
                    Update::Modify => match s.update_job(*job).await {
                        Ok(stored) => {
                            self.inner.events.emit_with(|| Event::JobModified {
                                job_id: id.to_string(),
                                store: alias.clone(),
                            });
                            self.inner.wakeup_for(stored.next_run_time);
                            return Ok(Some(Job::from_record(&stored, &alias, false)));
                        }
                        Err(Error::Fenced(_)) => continue,
                        Err(e) => return Err(e),
                    },
                    Update::Remove => {
                        s.remove_job(id).await?;
                        self.inner.events.emit(Event::JobRemoved {
                            job_id: id.to_string(),
                            store: alias,
                        });
                        return Ok(None);
                    }
                },
            }
        }
        Err(Error::Fenced(id.to_string()))
    }

    /// Removes a job and emits JOB_REMOVED.
    ///
    /// # Errors
    /// [`Error::JobLookup`] if there is no such job.
    async fn remove_job(&self, id: &str, store: Option<&str>) -> Result<()> {
        match self.locate(id, store).await? {
            Located::Pending(alias, _) => {
                let removed = {
                    let mut life = self.inner.life();
                    life.pending_index(id, &alias)
                        .map(|i| life.pending.remove(i))
                };
                if removed.is_none() {
                    return Err(Error::JobLookup(id.to_string()));
                }
                self.inner.events.emit(Event::JobRemoved {
                    job_id: id.to_string(),
                    store: alias,
                });
                Ok(())
            }
            Located::Stored(alias, s, _) => {
                s.remove_job(id).await?;
                self.inner.events.emit(Event::JobRemoved {
                    job_id: id.to_string(),
                    store: alias,
                });
                Ok(())
            }
        }
    }

    /// Removes every job (of `store`, or of all stores) and emits ALL_JOBS_REMOVED.
    async fn remove_all_jobs_in(&self, store: Option<&str>) -> Result<()> {
        self.inner
            .life()
            .pending
            .retain(|p| store.is_some_and(|s| s != p.store));
        let stores = match store {
            Some(alias) => vec![(alias.to_string(), self.inner.store(alias)?)],
            None => self.inner.stores(),
        };
        for (_, s) in stores {
            s.remove_all_jobs().await?;
        }
        self.inner.events.emit(Event::AllJobsRemoved {
            store: store.map(str::to_string),
        });
        Ok(())
    }
}

enum Located {
    /// A pending job (a copy) and its store alias.
    Pending(String, Box<JobRecord>),
    Stored(String, Arc<dyn JobStore>, Box<JobRecord>),
}

enum Update {
    Modify,
    Remove,
}
