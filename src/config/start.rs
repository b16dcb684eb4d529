//! From a checked config to a running scheduler: [`Scheduler::from_config`], then tasks
//! ([`ConfiguredBuilder`]), then [`ConfiguredScheduler::start`], which upserts the jobs.
//!
//! Why a builder and a scheduler of its own rather than [`SchedulerBuilder`] and [`Scheduler`]:
//! the configured jobs must be checked against the registered tasks before anything starts,
//! written with `replace_existing` once the stores are open, and (with `prune`) compared with
//! what the stores hold, before the first job runs. The wrappers do that with the scheduler's
//! public API: start paused, add, prune, resume, so no stale or superseded job runs in
//! between.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;

use serde::de::DeserializeOwned;

use super::error::Problems;
use super::plan::{Plan, PlannedJob};
use super::SchedulerConfig;
use crate::error::Result;
use crate::job::IntoJobResult;
use crate::{AddJob, Scheduler, SchedulerBuilder};

impl Scheduler {
    /// A scheduler built from `config`: its zone, scheduler id, lease, job defaults, stores
    /// and executors, with its jobs kept to be added at start. Register the jobs' tasks, then
    /// [`build`](ConfiguredBuilder::build) and [`start`](ConfiguredScheduler::start):
    ///
    /// ```
    /// use apsched::config::SchedulerConfig;
    /// use apsched::Scheduler;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> apsched::Result<()> {
    /// let config = SchedulerConfig::from_toml_str(r#"
    ///     timezone = "UTC"
    ///     [[jobs]]
    ///     id = "tick"
    ///     task = "tick"
    ///     trigger = "interval"
    ///     minutes = 5
    /// "#)?;
    /// let scheduler = Scheduler::from_config(&config)?
    ///     .task("tick", |(): ()| async { println!("tick") })
    ///     .build()?
    ///     .start()
    ///     .await?;
    /// assert!(scheduler.job("tick").get().await?.is_some());
    /// scheduler.shutdown().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// One [`Error::Config`](crate::Error::Config) listing every problem (see
    /// [`SchedulerConfig::check`]).
    pub fn from_config(config: &SchedulerConfig) -> Result<ConfiguredBuilder> {
        let plan = Plan::new(config)?;
        Ok(ConfiguredBuilder {
            builder: plan.builder,
            jobs: plan.jobs,
            prune: plan.prune,
            tasks: HashSet::new(),
        })
    }
}

/// A [`SchedulerBuilder`] set up from a config, plus the config's jobs. Register the tasks
/// the jobs run, set anything else on the builder with
/// [`with_builder`](Self::with_builder), then [`build`](Self::build).
#[must_use]
pub struct ConfiguredBuilder {
    builder: SchedulerBuilder,
    jobs: Vec<PlannedJob>,
    prune: Option<Vec<String>>,
    /// The tasks registered so far, to check the jobs against.
    tasks: HashSet<String>,
}

impl ConfiguredBuilder {
    /// Registers an async task (see [`SchedulerBuilder::task`]).
    pub fn task<A, F, Fut, R>(mut self, name: impl Into<String>, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoJobResult,
    {
        let name = name.into();
        self.tasks.insert(name.clone());
        self.builder = self.builder.task(name, f);
        self
    }

    /// Registers a blocking task (see [`SchedulerBuilder::blocking_task`]).
    pub fn blocking_task<A, F, R>(mut self, name: impl Into<String>, f: F) -> Self
    where
        A: DeserializeOwned + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
        R: IntoJobResult,
    {
        let name = name.into();
        self.tasks.insert(name.clone());
        self.builder = self.builder.blocking_task(name, f);
        self
    }

    /// Changes the underlying builder: a clock for tests, another store or executor than
    /// the config's, an event capacity, ... (its tasks are registered with
    /// [`task`](Self::task), so that the jobs can be checked against them).
    pub fn with_builder(mut self, f: impl FnOnce(SchedulerBuilder) -> SchedulerBuilder) -> Self {
        self.builder = f(self.builder);
        self
    }

    /// Builds the scheduler (stopped), after checking that every configured job's task is
    /// registered.
    ///
    /// # Errors
    /// One [`Error::Config`](crate::Error::Config) naming each job whose task is not
    /// registered (`jobs[2].task: ...`).
    pub fn build(self) -> Result<ConfiguredScheduler> {
        let mut problems = Problems::default();
        for job in &self.jobs {
            if !self.tasks.contains(&job.task) {
                problems.push(
                    format!("jobs[{}].task", job.index),
                    format!(
                        "no task named '{}' is registered (register it with .task(..) before \
                         .build())",
                        job.task
                    ),
                );
            }
        }
        problems.into_result()?;
        Ok(ConfiguredScheduler {
            scheduler: self.builder.build(),
            jobs: self.jobs,
            prune: self.prune,
        })
    }
}

/// A scheduler built from a config, not started yet. [`start`](Self::start) starts it and
/// adds the config's jobs; [`scheduler`](Self::scheduler) gives the handle before that (to
/// subscribe to events, add a listener, ...).
#[must_use = "the scheduler and its configured jobs start with .start()"]
pub struct ConfiguredScheduler {
    scheduler: Scheduler,
    jobs: Vec<PlannedJob>,
    prune: Option<Vec<String>>,
}

impl std::fmt::Debug for ConfiguredScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfiguredScheduler")
            .field("scheduler", &self.scheduler)
            .field("jobs", &self.jobs.len())
            .field("prune", &self.prune)
            .finish()
    }
}

impl ConfiguredScheduler {
    /// The scheduler's handle (not started yet).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Starts the scheduler and brings its stores in line with the config, before any job
    /// runs (it starts paused and resumes at the end, so listeners see
    /// [`Event::SchedulerResumed`](crate::Event::SchedulerResumed) after
    /// `SchedulerStarted`):
    /// 1. every configured job is written with `replace_existing`: a job of that id in its
    ///    store is replaced (a changed schedule takes effect; the next run time is computed
    ///    anew from now, as APScheduler's `replace_existing` does);
    /// 2. with `prune = true`, every job of a store the config declares (`[stores.*]`) that the
    ///    config does not declare is removed. Jobs of other stores, and jobs in code, are left
    ///    alone; without `prune`, nothing is removed.
    ///
    /// Returns the running scheduler.
    ///
    /// # Errors
    /// The errors of [`Scheduler::start`]; a store's error while writing or pruning, after
    /// which the scheduler is shut down again.
    pub async fn start(self) -> Result<Scheduler> {
        let scheduler = self.scheduler;
        scheduler.start_paused().await?;
        match upsert_and_prune(&scheduler, self.jobs, self.prune).await {
            Ok(()) => {
                scheduler.resume()?;
                Ok(scheduler)
            }
            Err(e) => {
                if let Err(stop) = scheduler.shutdown().await {
                    tracing::warn!(error = %stop, "shutting down after a failed configured start");
                }
                Err(e)
            }
        }
    }
}

async fn upsert_and_prune(
    scheduler: &Scheduler,
    jobs: Vec<PlannedJob>,
    prune: Option<Vec<String>>,
) -> Result<()> {
    let keep: BTreeSet<(String, String)> = jobs
        .iter()
        .map(|j| (j.store.clone(), j.id.clone()))
        .collect();
    // One batch per store: add_jobs writes to one store at a time (one transaction on SQL).
    let mut by_store: BTreeMap<String, Vec<AddJob>> = BTreeMap::new();
    for job in jobs {
        let store = job.store.clone();
        by_store
            .entry(store)
            .or_default()
            .push(add_job(scheduler, job));
    }
    for (_, batch) in by_store {
        scheduler.add_jobs(batch).await?;
    }
    for alias in prune.unwrap_or_default() {
        let store = scheduler.store(alias.clone());
        for job in store.get_jobs().await? {
            if !keep.contains(&(alias.clone(), job.id.clone())) {
                tracing::info!(job_id = %job.id, store = %alias, "pruning a job the config no longer declares");
                store.job(job.id).remove().await?;
            }
        }
    }
    Ok(())
}

fn add_job(scheduler: &Scheduler, job: PlannedJob) -> AddJob {
    let mut add = scheduler
        .add_task_job(job.task, job.args)
        .trigger(job.trigger)
        .id(job.id)
        .store(job.store)
        .replace_existing(true);
    if let Some(name) = job.name {
        add = add.name(name);
    }
    if let Some(executor) = job.executor {
        add = add.executor(executor);
    }
    if let Some(grace) = job.misfire_grace_time {
        add = add.misfire_grace_time(grace);
    }
    if let Some(coalesce) = job.coalesce {
        add = add.coalesce(coalesce);
    }
    if let Some(n) = job.max_instances {
        add = add.max_instances(n);
    }
    if let Some(t) = job.timeout {
        add = add.timeout(t);
    }
    if let Some(o) = job.overlap {
        add = add.overlap(o);
    }
    if let Some(r) = job.retry {
        add = add.retry(r);
    }
    if let Some(n) = job.pause_after_failures {
        add = add.pause_after_failures(n);
    }
    add
}
