//! Scheduler flavours that own their Tokio runtime, for programs without async.

use std::future::Future;
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};

use super::{AddJob, JobChanges, Scheduler, SchedulerBuilder, SchedulerState};
use crate::error::{Error, Result};
use crate::event::{Event, EventKind, EventReceiver};
use crate::executor::{CommandSpec, LocalExecutor};
use crate::job::{IntoJobResult, Job};
use crate::sync::MutexExt;
use crate::trigger::TriggerSpec;

impl Scheduler {
    /// Runs `fut` to completion on the runtime owned by a background/blocking flavour.
    pub(crate) fn block_on<F: Future>(&self, fut: F) -> Result<F::Output> {
        if Handle::try_current().is_ok() {
            return Err(Error::State {
                needed: "called from plain (non-async) code",
                actual: "called inside a Tokio runtime; use .await instead",
            });
        }
        let handle = self
            .inner
            .runtime
            .lock_unpoisoned()
            .clone()
            .ok_or(Error::State {
                needed: "a BackgroundScheduler or BlockingScheduler",
                actual: "an async Scheduler; use .await instead",
            })?;
        Ok(handle.block_on(fut))
    }
}

/// A scheduler running on its own runtime threads, with a plain blocking API — for
/// programs with a synchronous `main` (APScheduler's `BackgroundScheduler`).
///
/// ```
/// use std::time::Duration;
/// use apsched::{BackgroundScheduler, Scheduler, trigger::Interval};
///
/// let scheduler = BackgroundScheduler::new(Scheduler::builder())?;
/// scheduler.start()?;
/// scheduler
///     .add_blocking_job(|| println!("tick"))
///     .trigger(Interval::new(Duration::from_secs(5))?)
///     .add()?;
/// scheduler.shutdown(true)?;
/// # Ok::<(), apsched::Error>(())
/// ```
#[derive(Debug)]
pub struct BackgroundScheduler {
    scheduler: Scheduler,
    runtime: Option<Runtime>,
}

impl BackgroundScheduler {
    /// Builds the scheduler on a new multi-threaded runtime (one worker per core).
    ///
    /// # Errors
    /// If the runtime cannot be created.
    pub fn new(builder: SchedulerBuilder) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("apsched")
            .build()?;
        Ok(Self::with_runtime(builder, runtime))
    }

    fn with_runtime(builder: SchedulerBuilder, runtime: Runtime) -> Self {
        let scheduler = {
            let _guard = runtime.enter();
            builder.build()
        };
        *scheduler.inner.runtime.lock_unpoisoned() = Some(runtime.handle().clone());
        BackgroundScheduler {
            scheduler,
            runtime: Some(runtime),
        }
    }

    /// The async handle (for `add_job(..).add()`, or to pass to async code).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Runs `fut` on the scheduler's runtime and waits for it.
    pub fn block_on<F: Future>(&self, fut: F) -> Result<F::Output> {
        self.scheduler.block_on(fut)
    }

    /// See [`Scheduler::add_job`]; finish with [`AddJob::add`].
    pub fn add_job<F, Fut, R>(&self, f: F) -> AddJob<'_>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoJobResult,
    {
        self.scheduler.add_job(f)
    }

    /// See [`Scheduler::add_blocking_job`]; finish with [`AddJob::add`].
    pub fn add_blocking_job<F, R>(&self, f: F) -> AddJob<'_>
    where
        F: Fn() -> R + Send + Sync + 'static,
        R: IntoJobResult,
    {
        self.scheduler.add_blocking_job(f)
    }

    /// See [`Scheduler::add_command_job`]; finish with [`AddJob::add`].
    pub fn add_command_job(&self, command: CommandSpec) -> AddJob<'_> {
        self.scheduler.add_command_job(command)
    }

    /// See [`Scheduler::add_task_job`]; finish with [`AddJob::add`].
    pub fn add_task_job(&self, name: impl Into<String>, args: impl serde::Serialize) -> AddJob<'_> {
        self.scheduler.add_task_job(name, args)
    }

    /// Starts the scheduler (its loop runs on the runtime's threads).
    pub fn start(&self) -> Result<()> {
        self.block_on(self.scheduler.start())?
    }

    /// Starts with job processing paused.
    pub fn start_paused(&self) -> Result<()> {
        self.block_on(self.scheduler.start_paused())?
    }

    /// Shuts down; with `wait`, after the runs in flight finish.
    pub fn shutdown(&self, wait: bool) -> Result<()> {
        self.block_on(self.scheduler.shutdown(wait))?
    }

    /// Pauses job processing.
    pub fn pause(&self) -> Result<()> {
        self.scheduler.pause()
    }

    /// Resumes job processing.
    pub fn resume(&self) -> Result<()> {
        self.scheduler.resume()
    }

    /// The scheduler's state.
    pub fn state(&self) -> SchedulerState {
        self.scheduler.state()
    }

    /// See [`Scheduler::get_job`].
    pub fn get_job(&self, id: &str, store: Option<&str>) -> Result<Option<Job>> {
        self.block_on(self.scheduler.get_job(id, store))?
    }

    /// See [`Scheduler::get_jobs`].
    pub fn get_jobs(&self, store: Option<&str>) -> Result<Vec<Job>> {
        self.block_on(self.scheduler.get_jobs(store))?
    }

    /// See [`Scheduler::modify_job`].
    pub fn modify_job(&self, id: &str, changes: JobChanges, store: Option<&str>) -> Result<Job> {
        self.block_on(self.scheduler.modify_job(id, changes, store))?
    }

    /// See [`Scheduler::reschedule_job`].
    pub fn reschedule_job(
        &self,
        id: &str,
        trigger: impl Into<TriggerSpec>,
        store: Option<&str>,
    ) -> Result<Job> {
        self.block_on(self.scheduler.reschedule_job(id, trigger, store))?
    }

    /// See [`Scheduler::pause_job`].
    pub fn pause_job(&self, id: &str, store: Option<&str>) -> Result<Job> {
        self.block_on(self.scheduler.pause_job(id, store))?
    }

    /// See [`Scheduler::resume_job`].
    pub fn resume_job(&self, id: &str, store: Option<&str>) -> Result<Option<Job>> {
        self.block_on(self.scheduler.resume_job(id, store))?
    }

    /// See [`Scheduler::remove_job`].
    pub fn remove_job(&self, id: &str, store: Option<&str>) -> Result<()> {
        self.block_on(self.scheduler.remove_job(id, store))?
    }

    /// See [`Scheduler::remove_all_jobs`].
    pub fn remove_all_jobs(&self, store: Option<&str>) -> Result<()> {
        self.block_on(self.scheduler.remove_all_jobs(store))?
    }

    /// See [`Scheduler::print_jobs`].
    pub fn print_jobs(&self, store: Option<&str>) -> Result<()> {
        self.block_on(self.scheduler.print_jobs(store))?
    }

    /// Events matching `mask`; use [`EventReceiver::blocking_recv`] from plain threads.
    pub fn subscribe(&self, mask: EventKind) -> EventReceiver {
        self.scheduler.subscribe(mask)
    }

    /// Calls `f` for each event matching `mask`, on a thread of its own (a slow listener
    /// delays no job).
    pub fn add_listener<F>(&self, mask: EventKind, f: F) -> Result<()>
    where
        F: Fn(&Event) + Send + 'static,
    {
        let mut rx = self.subscribe(mask);
        std::thread::Builder::new()
            .name("apsched-listener".into())
            .spawn(move || loop {
                match rx.blocking_recv() {
                    Ok(ev) => f(&ev),
                    Err(crate::event::RecvError::Lagged(_)) => continue,
                    Err(crate::event::RecvError::Closed) => break,
                }
            })?;
        Ok(())
    }
}

impl Drop for BackgroundScheduler {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Dropping a runtime inside async code panics; hand it to a thread instead.
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// A scheduler that takes over the calling thread: [`run`](Self::run) blocks until the
/// scheduler is shut down (from a job, another thread, or Ctrl-C). APScheduler's
/// `BlockingScheduler`.
///
/// ```no_run
/// use apsched::{BlockingScheduler, Scheduler, trigger::Cron};
///
/// let scheduler = BlockingScheduler::new(Scheduler::builder())?;
/// scheduler.scheduler()
///     .add_blocking_job(|| println!("nightly"))
///     .trigger(Cron::builder().hour("3").build()?)
///     .add()?;
/// scheduler.run()?; // until Ctrl-C
/// # Ok::<(), apsched::Error>(())
/// ```
#[derive(Debug)]
pub struct BlockingScheduler {
    background: BackgroundScheduler,
}

impl BlockingScheduler {
    /// Builds the scheduler on a runtime it owns.
    pub fn new(builder: SchedulerBuilder) -> Result<Self> {
        Ok(BlockingScheduler {
            background: BackgroundScheduler::new(builder)?,
        })
    }

    /// The async handle (to add jobs, or to shut down from a job).
    pub fn scheduler(&self) -> &Scheduler {
        self.background.scheduler()
    }

    /// Starts the scheduler and blocks until it shuts down or the process gets Ctrl-C (then
    /// it shuts down, waiting for running jobs).
    pub fn run(&self) -> Result<()> {
        let scheduler = self.scheduler().clone();
        self.background.block_on(async move {
            scheduler.start().await?;
            tokio::select! {
                _ = scheduler.wait_for_shutdown() => Ok(()),
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("Ctrl-C: shutting down");
                    scheduler.shutdown(true).await
                }
            }
        })?
    }
}

/// A scheduler for `!Send` jobs: a [`BlockingScheduler`] with a [`LocalExecutor`] added as
/// `"local"`, so jobs added with [`Scheduler::add_local_job`] run on that executor's
/// current-thread runtime with a `LocalSet`, on its own thread.
///
/// The `"default"` executor is untouched: the builder's, or else a
/// [`TokioExecutor`](crate::executor::TokioExecutor) on the scheduler's own runtime, where
/// jobs added with [`Scheduler::add_job`] run (unless they name `"local"`). If the builder
/// already has a `"local"` executor, this one replaces it.
///
/// It is for one [`run`](Self::run): a local executor does not start again after the
/// scheduler's shutdown (see [`LocalExecutor`]'s "Starting again"), so a second `run` would
/// report every local run as a [`JobError::NotRunnable`](crate::JobError::NotRunnable).
/// Build a new `LocalScheduler` instead.
#[derive(Debug)]
pub struct LocalScheduler {
    blocking: BlockingScheduler,
}

impl LocalScheduler {
    /// Builds the scheduler with a new [`LocalExecutor`] as `"local"`.
    ///
    /// # Errors
    /// If the local executor's thread or runtime, or the scheduler's runtime, cannot be
    /// created.
    pub fn new(builder: SchedulerBuilder) -> Result<Self> {
        let builder = builder.executor("local", LocalExecutor::new()?);
        Ok(LocalScheduler {
            blocking: BlockingScheduler::new(builder)?,
        })
    }

    /// The async handle.
    pub fn scheduler(&self) -> &Scheduler {
        self.blocking.scheduler()
    }

    /// Starts and blocks until shutdown or Ctrl-C.
    pub fn run(&self) -> Result<()> {
        self.blocking.run()
    }
}
