//! `add_job` and its options.

use std::borrow::Cow;
use std::future::{Future, IntoFuture};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;

use super::{Pending, Scheduler};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::executor::CommandSpec;
use crate::job::{AsyncJobFn, BlockingJobFn, Callable, Job, JobRecord, LocalJobFn};
use crate::trigger::{Date, Trigger, TriggerSpec};

/// A job being added: set its options, then `.await` it. It holds a clone of the
/// scheduler handle, not a borrow, so the future is `'static`: it can be spawned or stored.
/// (A [`BackgroundScheduler`](crate::BackgroundScheduler)'s `add_*` methods return a
/// [`BlockingAddJob`](crate::BlockingAddJob) instead, finished with a blocking `add()`.)
///
/// Every option left unset takes the scheduler's [`JobDefaults`](crate::JobDefaults); no
/// trigger means "run once, now".
///
/// ```
/// # use std::future::IntoFuture;
/// # use apsched::Scheduler;
/// # async fn demo(scheduler: Scheduler) -> apsched::Result<()> {
/// let adding = scheduler.add_job(|| async {}).id("later");
/// let job = tokio::spawn(adding.into_future()).await.expect("no panic")?;
/// assert_eq!(job.id, "later");
/// # Ok(()) }
/// ```
#[must_use = "a job is only added when this is awaited"]
pub struct AddJob {
    scheduler: Scheduler,
    callable: Result<Callable>,
    trigger: Option<TriggerSpec>,
    id: Option<String>,
    name: Option<String>,
    misfire_grace_time: Option<Option<Duration>>,
    coalesce: Option<bool>,
    max_instances: Option<u32>,
    timeout: Option<Option<Duration>>,
    overlap: Option<crate::Overlap>,
    retry: Option<Option<crate::RetryPolicy>>,
    pause_after_failures: Option<Option<u32>>,
    next_run_time: Option<Option<DateTime<Utc>>>,
    store: Option<String>,
    executor: Option<String>,
    replace_existing: bool,
}

impl Scheduler {
    /// Adds a job running an async closure: `|| async {..}`, or `|ctx: JobContext| async
    /// move {..}` to get the run's [`JobContext`](crate::JobContext) (see [`AsyncJobFn`]).
    ///
    /// ```
    /// # use apsched::{Scheduler, trigger::Cron};
    /// # async fn demo(scheduler: Scheduler) -> apsched::Result<()> {
    /// scheduler
    ///     .add_job(|| async { println!("every two minutes") })
    ///     .trigger(Cron::builder().minute("*/2").build()?)
    ///     .id("my_job_id")
    ///     .name("job_name")
    ///     .misfire_grace_time(Some(std::time::Duration::from_secs(10)))
    ///     .coalesce(true)
    ///     .max_instances(10)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// With a context, and a timeout:
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use apsched::{JobContext, Scheduler};
    /// # async fn demo(scheduler: Scheduler) -> apsched::Result<()> {
    /// scheduler
    ///     .add_job(|ctx: JobContext| async move {
    ///         tokio::select! {
    ///             _ = ctx.cancelled() => Err("stopped"),
    ///             _ = tokio::time::sleep(Duration::from_secs(30)) => Ok("done"),
    ///         }
    ///     })
    ///     .timeout(Duration::from_secs(60))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn add_job<M>(&self, f: impl AsyncJobFn<M>) -> AddJob {
        AddJob::new(self.clone(), Ok(f.into_callable()))
    }

    /// Adds a job running a blocking closure, `|| ..` or `|ctx: JobContext| ..` (see
    /// [`BlockingJobFn`]; give it a [`BlockingExecutor`](crate::executor::BlockingExecutor)
    /// to bound the threads).
    pub fn add_blocking_job<M>(&self, f: impl BlockingJobFn<M>) -> AddJob {
        AddJob::new(self.clone(), Ok(f.into_callable()))
    }

    /// Adds a job whose future is `!Send`, `|| async {..}` or `|ctx: JobContext| async move
    /// {..}` (see [`LocalJobFn`]); it runs on the executor aliased `"local"` unless another
    /// is named (see [`LocalExecutor`](crate::executor::LocalExecutor)).
    pub fn add_local_job<M>(&self, f: impl LocalJobFn<M>) -> AddJob {
        AddJob::new(self.clone(), Ok(f.into_callable())).executor("local")
    }

    /// Adds a job running an external command in a child process.
    pub fn add_command_job(&self, command: CommandSpec) -> AddJob {
        AddJob::new(self.clone(), Ok(Callable::Command(Box::new(command))))
    }

    /// Adds a job running the registered task `name` with `args` (serialised to JSON). This
    /// is the kind of job persistent stores keep.
    pub fn add_task_job(&self, name: impl Into<String>, args: impl Serialize) -> AddJob {
        let name = name.into();
        let callable = if !self.inner.tasks.contains(&name) {
            Err(Error::UnknownTask(name))
        } else {
            serde_json::to_value(args)
                .map(|args| Callable::Task { name, args })
                .map_err(Error::from)
        };
        AddJob::new(self.clone(), callable)
    }
}

impl AddJob {
    fn new(scheduler: Scheduler, callable: Result<Callable>) -> Self {
        AddJob {
            scheduler,
            callable,
            trigger: None,
            id: None,
            name: None,
            misfire_grace_time: None,
            coalesce: None,
            max_instances: None,
            timeout: None,
            overlap: None,
            retry: None,
            pause_after_failures: None,
            next_run_time: None,
            store: None,
            executor: None,
            replace_existing: false,
        }
    }

    /// When the job fires. Without one it runs once, now.
    pub fn trigger(mut self, trigger: impl Into<TriggerSpec>) -> Self {
        self.trigger = Some(trigger.into());
        self
    }

    /// The job id (default: a random UUID).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// A readable name (default: the id).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How late a run may start and still run; `None` = any lateness. Must not be zero.
    pub fn misfire_grace_time(mut self, grace: Option<Duration>) -> Self {
        self.misfire_grace_time = Some(grace);
        self
    }

    /// Whether a backlog of due times runs once (true) or once per time (false).
    pub fn coalesce(mut self, coalesce: bool) -> Self {
        self.coalesce = Some(coalesce);
        self
    }

    /// How many runs may be in flight at once (at least 1).
    pub fn max_instances(mut self, n: u32) -> Self {
        self.max_instances = Some(n);
        self
    }

    /// How long a run may take (`None` = no limit; default: the scheduler's
    /// [`JobDefaults::timeout`](crate::JobDefaults::timeout)). Must not be zero.
    ///
    /// At the timeout the run's [`JobContext`](crate::JobContext) token is cancelled; a run
    /// still going after the scheduler's
    /// [`timeout_grace`](crate::SchedulerBuilder::timeout_grace) is aborted: an async body
    /// is dropped, a child process killed (it was sent SIGTERM at the timeout, on the
    /// [`ProcessExecutor`](crate::executor::ProcessExecutor)); a blocking body cannot be
    /// stopped (no thread can
    /// be), so its thread is abandoned to finish on its own, its result discarded, and the
    /// job's instance slot is freed. Either way the scheduled time's outcome is one
    /// [`Event::JobTimeout`](crate::Event::JobTimeout). The timeout is stored with the job.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use apsched::Scheduler;
    /// # async fn demo(scheduler: Scheduler) -> apsched::Result<()> {
    /// scheduler
    ///     .add_task_job("report", "2024-01-15")
    ///     .timeout(Duration::from_secs(600))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = Some(timeout.into());
        self
    }

    /// What a run due while `max_instances` runs of the job are active does (default: the
    /// scheduler's [`JobDefaults::overlap`](crate::JobDefaults::overlap), [`Overlap::Skip`](crate::Overlap::Skip)).
    /// Active runs are counted in the job's store, so this holds across schedulers.
    ///
    /// ```
    /// # use apsched::{Overlap, Scheduler};
    /// # async fn demo(scheduler: Scheduler) -> apsched::Result<()> {
    /// scheduler
    ///     .add_task_job("report", "2024-01-15")
    ///     .overlap(Overlap::BufferOne)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn overlap(mut self, overlap: crate::Overlap) -> Self {
        self.overlap = Some(overlap);
        self
    }

    /// How a failed run is retried (default: the scheduler's
    /// [`JobDefaults::retry`](crate::JobDefaults::retry), no retries). Each attempt is a run
    /// of the same scheduled time in the run ledger; a waiting retry holds its instance slot
    /// and survives a restart on persistent stores (see [`RetryPolicy`](crate::RetryPolicy)).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use apsched::{RetryPolicy, Scheduler};
    /// # async fn demo(scheduler: Scheduler) -> apsched::Result<()> {
    /// scheduler
    ///     .add_task_job("report", "2024-01-15")
    ///     .retry(RetryPolicy::exponential(5, Duration::from_secs(30)))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn retry(mut self, retry: impl Into<Option<crate::RetryPolicy>>) -> Self {
        self.retry = Some(retry.into());
        self
    }

    /// Pauses the job after `n` consecutive failed scheduled times (a time fails when its
    /// last attempt fails), with a [`JobAutoPaused`](crate::Event::JobAutoPaused) event and
    /// the reason stored on the job ([`Job::paused_reason`](crate::Job::paused_reason)).
    /// Failures are counted in the run ledger, across every scheduler sharing the store.
    /// Default: the scheduler's
    /// [`JobDefaults::pause_after_failures`](crate::JobDefaults::pause_after_failures), never.
    pub fn pause_after_failures(mut self, n: impl Into<Option<u32>>) -> Self {
        self.pause_after_failures = Some(n.into());
        self
    }

    /// Adds the job paused: it has no next run time until resumed.
    pub fn paused(mut self) -> Self {
        self.next_run_time = Some(None);
        self
    }

    /// Sets the first run time explicitly (later ones follow the trigger).
    pub fn next_run_time(mut self, t: DateTime<Utc>) -> Self {
        self.next_run_time = Some(Some(t));
        self
    }

    /// The store to keep the job in (default `"default"`).
    pub fn store(mut self, alias: impl Into<String>) -> Self {
        self.store = Some(alias.into());
        self
    }

    /// The executor to run it (default `"default"`).
    pub fn executor(mut self, alias: impl Into<String>) -> Self {
        self.executor = Some(alias.into());
        self
    }

    /// Replace a job with the same id instead of failing with
    /// [`Error::ConflictingId`].
    pub fn replace_existing(mut self, replace: bool) -> Self {
        self.replace_existing = replace;
        self
    }

    /// Builds the record from the options and the scheduler's job defaults and checks it
    /// (executor, store, options): everything of adding but the write, whose input is the
    /// [`Pending`] entry a job added before start is kept as.
    pub(super) fn prepare(self) -> Result<Pending> {
        let inner = &self.scheduler.inner;
        let callable = self.callable?;
        let id = self
            .id
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let misfire_grace_time = self
            .misfire_grace_time
            .unwrap_or(inner.defaults.misfire_grace_time);
        let max_instances = self.max_instances.unwrap_or(inner.defaults.max_instances);
        let timeout = self.timeout.unwrap_or(inner.defaults.timeout);
        validate_options(&id, Some(misfire_grace_time), Some(max_instances))?;
        validate_timeout(&id, timeout)?;
        let retry = self.retry.unwrap_or(inner.defaults.retry);
        let pause_after_failures = self
            .pause_after_failures
            .unwrap_or(inner.defaults.pause_after_failures);
        validate_failure_options(&id, retry.as_ref(), pause_after_failures)?;
        // The default aliases are static strings: most jobs name neither, and an add
        // should not allocate two strings only to drop them (S1).
        let store_alias: Cow<'static, str> =
            self.store.map_or(Cow::Borrowed("default"), Cow::Owned);
        let store = inner.store(&store_alias)?;
        let executor_name = self.executor.as_deref().unwrap_or("default");
        let executor = inner
            .executor(executor_name)
            .ok_or_else(|| Error::UnknownExecutor(executor_name.to_string()))?;
        executor
            .check(&callable)
            .map_err(|reason| Error::InvalidJob {
                id: id.clone(),
                reason: format!("executor '{executor_name}': {reason}"),
            })?;
        if store.is_persistent() && !callable.is_persistable() {
            return Err(Error::InvalidJob {
                id,
                reason: format!(
                    "store '{store_alias}' is persistent and cannot keep a closure; register \
                     a task (SchedulerBuilder::task) and use add_task_job"
                ),
            });
        }
        let trigger = match self.trigger {
            Some(t) => t,
            None => Date::at(inner.clock.now(), None)?.into(),
        }
        .with_default_timezone(inner.timezone);
        let job = JobRecord {
            id,
            name: self.name,
            callable,
            trigger,
            executor: self
                .executor
                .map_or(crate::job::DEFAULT_EXECUTOR, crate::job::executor_alias),
            misfire_grace_time,
            coalesce: self.coalesce.unwrap_or(inner.defaults.coalesce),
            max_instances,
            timeout,
            overlap: self.overlap.unwrap_or(inner.defaults.overlap),
            retry: retry.map(std::sync::Arc::new),
            pause_after_failures,
            paused_reason: None,
            consecutive_failures: 0,
            next_run_time: None,
            version: 0,
            lease: None,
        };
        Ok(Pending {
            job,
            store: store_alias,
            replace_existing: self.replace_existing,
            next_run_time: self.next_run_time,
        })
    }
}

impl Scheduler {
    /// Writes one checked job to its store (or, before start, keeps it aside). Not an
    /// `async fn`, which would hold the job twice.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn holds its argument twice"
    )]
    fn add_prepared_one(&self, mut p: Pending) -> impl Future<Output = Result<Job>> + Send + '_ {
        async move {
            let inner = &self.inner;
            if !inner.check_started() {
                // Like APScheduler: kept aside, enters its store (and gets its next run time)
                // when the scheduler starts.
                let mut life = inner.life();
                if let Some(i) = life.pending_index(&p.job.id, &p.store) {
                    if !p.replace_existing {
                        return Err(Error::ConflictingId(p.job.id));
                    }
                    life.pending.remove(i);
                }
                let view = Job::from_record(&p.job, &p.store, true);
                life.pending.push(p);
                return Ok(view);
            }
            p.first_run_time(inner.clock.now())?;
            let view = Job::from_record(&p.job, &p.store, false);
            self.store_new_job(p.job, &view.id, &p.store, p.replace_existing)
                .await?;
            Ok(view)
        }
    }
}

impl Pending {
    /// Gives the job its first next run time: the explicit one, or the trigger's first.
    pub(super) fn first_run_time(&mut self, now: DateTime<Utc>) -> Result<()> {
        self.job.next_run_time = match self.next_run_time {
            Some(explicit) => explicit,
            None => self.job.trigger.try_next_fire_time(None, now)?,
        };
        Ok(())
    }
}

impl Scheduler {
    /// Writes a new job (whose id is `id`) to its store, emits JOB_ADDED and wakes the
    /// loop. The caller lends the id: the event copies it only when someone listens.
    pub(super) async fn store_new_job(
        &self,
        job: JobRecord,
        id: &str,
        store: &str,
        replace: bool,
    ) -> Result<()> {
        let next = job.next_run_time;
        self.inner.store(store)?.add_job(job, replace).await?;
        self.inner.events.emit_with(|| Event::JobAdded {
            job_id: id.to_string(),
            store: store.to_string(),
        });
        self.inner.wakeup_for(next);
        Ok(())
    }
}

impl IntoFuture for AddJob {
    type Output = Result<Job>;
    type IntoFuture = BoxFuture<'static, Result<Job>>;

    fn into_future(self) -> Self::IntoFuture {
        let scheduler = self.scheduler.clone();
        // Checked now; the future holds the prepared job once (an `async fn` taking it
        // would hold it twice, rust-lang/rust#62958).
        let prepared = self.prepare();
        Box::pin(async move {
            let p = prepared?;
            scheduler.inner.at_home(scheduler.add_prepared_one(p)).await
        })
    }
}

/// A timeout of zero is invalid (`None` is no limit).
pub(crate) fn validate_timeout(id: &str, timeout: Option<Duration>) -> Result<()> {
    if timeout.is_some_and(|t| t.is_zero()) {
        return Err(Error::InvalidJob {
            id: id.to_string(),
            reason: "timeout must be None (no limit) or longer than zero".into(),
        });
    }
    Ok(())
}

/// Checks a retry policy and an auto-pause count.
pub(crate) fn validate_failure_options(
    id: &str,
    retry: Option<&crate::RetryPolicy>,
    pause_after_failures: Option<u32>,
) -> Result<()> {
    let problem = match (retry.map(crate::RetryPolicy::check), pause_after_failures) {
        (Some(Err(e)), _) => e,
        (_, Some(0)) => "pause_after_failures must be None (never) or at least 1".into(),
        _ => return Ok(()),
    };
    Err(Error::InvalidJob {
        id: id.to_string(),
        reason: problem,
    })
}

/// Checks the options APScheduler checks: a grace time of zero and zero instances are
/// invalid.
pub(crate) fn validate_options(
    id: &str,
    misfire_grace_time: Option<Option<Duration>>,
    max_instances: Option<u32>,
) -> Result<()> {
    if misfire_grace_time.flatten().is_some_and(|g| g.is_zero()) {
        return Err(Error::InvalidJob {
            id: id.to_string(),
            reason: "misfire_grace_time must be None (any lateness) or longer than zero".into(),
        });
    }
    if max_instances == Some(0) {
        return Err(Error::InvalidJob {
            id: id.to_string(),
            reason: "max_instances must be at least 1".into(),
        });
    }
    Ok(())
}
