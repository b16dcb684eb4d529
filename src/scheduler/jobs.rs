//! Finding and changing jobs: what the handles of `handles.rs` do, for jobs added before
//! start (kept aside in the pending list) and jobs in stores alike, with the events each
//! change emits. [`JobChanges`] describes a modification.

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

/// Changes for [`JobHandle::modify`](crate::JobHandle::modify); fields left unset keep their value.
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
    timeout: Option<Option<Duration>>,
    overlap: Option<crate::Overlap>,
    retry: Option<Option<crate::RetryPolicy>>,
    pause_after_failures: Option<Option<u32>>,
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
    /// [`JobHandle::reschedule`](crate::JobHandle::reschedule) for that).
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
    /// Sets how long a run may take (`None` = no limit; see
    /// [`AddJob::timeout`](crate::AddJob::timeout)). Runs already in flight keep the
    /// timeout they started with.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// Changes the overlap policy (see [`AddJob::overlap`](crate::AddJob::overlap)).
    pub fn overlap(mut self, overlap: crate::Overlap) -> Self {
        self.overlap = Some(overlap);
        self
    }
    /// Changes how failed runs are retried (`None`: not retried; see
    /// [`AddJob::retry`](crate::AddJob::retry)). Retries already waiting keep their time.
    pub fn retry(mut self, retry: Option<crate::RetryPolicy>) -> Self {
        self.retry = Some(retry);
        self
    }
    /// Changes after how many consecutive failed scheduled times the job is paused (`None`:
    /// never; see [`AddJob::pause_after_failures`](crate::AddJob::pause_after_failures)).
    pub fn pause_after_failures(mut self, n: Option<u32>) -> Self {
        self.pause_after_failures = Some(n);
        self
    }
    /// Sets the next run time (`None` pauses the job).
    pub fn next_run_time(mut self, t: Option<DateTime<Utc>>) -> Self {
        self.next_run_time = Some(t);
        self
    }
}

impl Scheduler {
    /// Finds a job: in `store` if given, else in every store in order. Pending jobs (added
    /// before start) are found too, as a copy (callers that change one find it again by id
    /// under the lock: a position in the pending list goes stale when another call removes
    /// an earlier entry).
    pub(super) async fn locate(&self, id: &str, store: Option<&str>) -> Result<Located> {
        if let Some(p) = self.inner.life().pending_job(id, store) {
            return Ok(Located::Pending(
                p.store.to_string(),
                Box::new(p.job.clone()),
            ));
        }
        let stores = self.inner.stores_in(store)?;
        for (alias, s) in stores {
            if let Some(job) = s.lookup_job(id).await? {
                return Ok(Located::Stored(alias, s, Box::new(job)));
            }
        }
        Err(Error::JobLookup(id.to_string()))
    }

    pub(super) async fn get_job(&self, id: &str, store: Option<&str>) -> Result<Option<Job>> {
        match self.locate(id, store).await {
            Ok(Located::Pending(alias, job)) => Ok(Some(Job::from_record(&job, &alias, true))),
            Ok(Located::Stored(alias, _, job)) => Ok(Some(Job::from_record(&job, &alias, false))),
            Err(Error::JobLookup(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn get_jobs_in(&self, store: Option<&str>) -> Result<Vec<Job>> {
        let mut jobs: Vec<Job> = self
            .inner
            .life()
            .pending
            .iter()
            .filter(|p| store.is_none_or(|s| s == p.store))
            .map(|p| Job::from_record(&p.job, &p.store, true))
            .collect();
        let stores = self.inner.stores_in(store)?;
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

    pub(super) async fn jobs_table_in(&self, store: Option<&str>) -> Result<String> {
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
    pub(super) async fn modify_job(
        &self,
        id: &str,
        changes: JobChanges,
        store: Option<&str>,
    ) -> Result<Job> {
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
        add::validate_timeout(id, changes.timeout.flatten())?;
        add::validate_failure_options(
            id,
            changes.retry.flatten().as_ref(),
            changes.pause_after_failures.flatten(),
        )?;
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
                job.executor = crate::job::executor_alias(alias.as_str());
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
            if let Some(v) = c.timeout {
                job.timeout = v;
            }
            if let Some(v) = c.overlap {
                job.overlap = v;
            }
            if let Some(v) = c.retry {
                job.retry = v.map(std::sync::Arc::new);
            }
            if let Some(v) = c.pause_after_failures {
                job.pause_after_failures = v;
            }
            if let Some(t) = c.next_run_time {
                job.next_run_time = t;
                // A pause by hand has no scheduler's reason; a resumed job none at all, and
                // its failures count from zero.
                job.paused_reason = None;
                if t.is_some() {
                    job.consecutive_failures = 0;
                }
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
    pub(super) async fn reschedule_job(
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
    pub(super) async fn pause_job(&self, id: &str, store: Option<&str>) -> Result<Job> {
        self.update_with(id, store, |job, _| {
            job.next_run_time = None;
            job.paused_reason = None;
            Ok(Update::Modify)
        })
        .await?
        .ok_or_else(|| Error::JobLookup(id.to_string()))
    }

    /// Resumes a paused job from now (runs missed while paused are skipped). A job whose
    /// trigger has no fire time left is removed instead (JOB_REMOVED) and `None` returned.
    pub(super) async fn resume_job(&self, id: &str, store: Option<&str>) -> Result<Option<Job>> {
        self.update_with(id, store, |job, now| {
            match job.trigger.next_fire_time(None, now) {
                Some(t) => {
                    job.next_run_time = Some(t);
                    job.paused_reason = None;
                    job.consecutive_failures = 0;
                    Ok(Update::Modify)
                }
                None => Ok(Update::Remove),
            }
        })
        .await
    }

    /// Reads a job, applies `f`, writes it back (retrying if the loop or another scheduler
    /// changed it in between), and emits the matching event.
    pub(super) async fn update_with<F>(
        &self,
        id: &str,
        store: Option<&str>,
        f: F,
    ) -> Result<Option<Job>>
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
                        Ok(Update::Unchanged) => {
                            p.next_run_time = restore;
                            return Ok(Some(Job::from_record(&p.job, &alias, true)));
                        }
                        Ok(o) => o,
                        Err(e) => {
                            p.next_run_time = restore;
                            return Err(e);
                        }
                    };
                    let (event, result) = match outcome {
                        Update::Remove => {
                            life.pending.remove(i);
                            (
                                Event::JobRemoved {
                                    job_id: id.to_string(),
                                    store: alias,
                                },
                                None,
                            )
                        }
                        _ => {
                            let job = Job::from_record(&p.job, &alias, true);
                            (
                                Event::JobModified {
                                    job_id: id.to_string(),
                                    store: alias,
                                },
                                Some(job),
                            )
                        }
                    };
                    drop(life);
                    self.inner.events.emit(event);
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
                    Update::Unchanged => return Ok(Some(Job::from_record(&job, &alias, false))),
                },
            }
        }
        Err(Error::Fenced(id.to_string()))
    }

    /// Removes a job and emits JOB_REMOVED.
    ///
    /// # Errors
    /// [`Error::JobLookup`] if there is no such job.
    pub(super) async fn remove_job(&self, id: &str, store: Option<&str>) -> Result<()> {
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
    pub(super) async fn remove_all_jobs_in(&self, store: Option<&str>) -> Result<()> {
        self.inner
            .life()
            .pending
            .retain(|p| store.is_some_and(|s| s != p.store));
        let stores = self.inner.stores_in(store)?;
        for (_, s) in stores {
            s.remove_all_jobs().await?;
        }
        self.inner.events.emit(Event::AllJobsRemoved {
            store: store.map(str::to_string),
        });
        Ok(())
    }
}

pub(super) enum Located {
    /// A pending job (a copy) and its store alias.
    Pending(String, Box<JobRecord>),
    Stored(String, Arc<dyn JobStore>, Box<JobRecord>),
}

pub(super) enum Update {
    Modify,
    Remove,
    /// Nothing to write.
    Unchanged,
}
