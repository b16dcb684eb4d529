//! [`BackgroundScheduler`]: a scheduler on a runtime of its own, with a blocking API for
//! programs without async.

use std::future::Future;
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};

use super::blocking_handles::{block_on, BlockingAddJob, BlockingJobHandle, BlockingStoreHandle};
use super::{AddJob, ListenerId, Scheduler, SchedulerBuilder, SchedulerState};
use crate::error::Result;
use crate::event::{Event, EventKind, EventReceiver};
use crate::executor::CommandSpec;
use crate::job::{AsyncJobFn, BlockingJobFn, Job, LocalJobFn};

/// How long dropping a running [`BackgroundScheduler`] waits for it to stop, and then for
/// its runtime's tasks.
const DROP_GRACE: Duration = Duration::from_secs(1);

/// A scheduler running on its own runtime threads, with a plain blocking API — for
/// programs with a synchronous `main` (APScheduler's `BackgroundScheduler`).
///
/// Every method blocks until done and may be called from any thread, including from inside
/// another Tokio runtime (the work runs on the scheduler's own threads). Async code can use
/// the same scheduler through [`scheduler`](Self::scheduler).
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
///     .id("tick")
///     .add()?;
/// scheduler.job("tick").pause()?;
/// scheduler.shutdown()?;
/// # Ok::<(), apsched::Error>(())
/// ```
///
/// Dropping it stops a running scheduler as [`shutdown_now`](Self::shutdown_now) does and
/// then its runtime, waiting about a second for each; dropped inside async code, it does
/// that on a thread of its own instead of blocking (or panicking).
#[derive(Debug)]
pub struct BackgroundScheduler {
    scheduler: Scheduler,
    runtime: Option<Runtime>,
    handle: Handle,
}

impl BackgroundScheduler {
    /// Builds the scheduler on a new multi-threaded runtime (one worker per core). Works
    /// from plain threads and from inside a Tokio runtime.
    ///
    /// # Errors
    /// If the runtime cannot be created.
    pub fn new(builder: SchedulerBuilder) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("apsched")
            .build()?;
        let scheduler = {
            let _guard = runtime.enter();
            builder.build()
        };
        Ok(BackgroundScheduler {
            scheduler,
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// The async handle to the same scheduler (to pass to async code).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Runs `fut` on the scheduler's runtime and blocks until it ends.
    ///
    /// # Errors
    /// [`Error::State`](crate::Error::State) if the runtime is shutting down. A panic in `fut` is resumed here.
    pub fn block_on<F>(&self, fut: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        block_on(&self.handle, fut)
    }

    /// Runs `f(scheduler)`'s future on the runtime: the blocking form of an async call.
    fn call<F, Fut, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Scheduler) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.block_on(f(self.scheduler.clone()))?
    }

    fn blocking(&self, add: AddJob) -> BlockingAddJob {
        BlockingAddJob::new(add, self.handle.clone())
    }

    /// See [`Scheduler::add_job`] (`|| async {..}` or `|ctx: JobContext| async move {..}`);
    /// finish with [`BlockingAddJob::add`].
    pub fn add_job<M>(&self, f: impl AsyncJobFn<M>) -> BlockingAddJob {
        self.blocking(self.scheduler.add_job(f))
    }

    /// See [`Scheduler::add_blocking_job`] (`|| ..` or `|ctx: JobContext| ..`); finish with
    /// [`BlockingAddJob::add`].
    pub fn add_blocking_job<M>(&self, f: impl BlockingJobFn<M>) -> BlockingAddJob {
        self.blocking(self.scheduler.add_blocking_job(f))
    }

    /// See [`Scheduler::add_local_job`] (it needs a `"local"`
    /// [`LocalExecutor`](crate::executor::LocalExecutor), as a [`LocalScheduler`](crate::LocalScheduler)
    /// has); finish with [`BlockingAddJob::add`].
    pub fn add_local_job<M>(&self, f: impl LocalJobFn<M>) -> BlockingAddJob {
        self.blocking(self.scheduler.add_local_job(f))
    }

    /// See [`Scheduler::add_command_job`]; finish with [`BlockingAddJob::add`].
    pub fn add_command_job(&self, command: CommandSpec) -> BlockingAddJob {
        self.blocking(self.scheduler.add_command_job(command))
    }

    /// See [`Scheduler::add_task_job`]; finish with [`BlockingAddJob::add`].
    pub fn add_task_job(
        &self,
        name: impl Into<String>,
        args: impl serde::Serialize,
    ) -> BlockingAddJob {
        self.blocking(self.scheduler.add_task_job(name, args))
    }

    /// See [`Scheduler::add_jobs`].
    ///
    /// # Errors
    /// As [`Scheduler::add_jobs`].
    pub fn add_jobs(&self, jobs: impl IntoIterator<Item = BlockingAddJob>) -> Result<Vec<Job>> {
        let jobs: Vec<AddJob> = jobs.into_iter().map(BlockingAddJob::into_async).collect();
        self.call(|s| async move { s.add_jobs(jobs).await })
    }

    /// See [`Scheduler::start`].
    ///
    /// # Errors
    /// As [`Scheduler::start`].
    pub fn start(&self) -> Result<()> {
        self.call(|s| async move { s.start().await })
    }

    /// See [`Scheduler::start_paused`].
    ///
    /// # Errors
    /// As [`Scheduler::start`].
    pub fn start_paused(&self) -> Result<()> {
        self.call(|s| async move { s.start_paused().await })
    }

    /// See [`Scheduler::shutdown`]: waits for the runs in flight.
    ///
    /// # Errors
    /// [`Error::State`](crate::Error::State) if the scheduler is not running.
    pub fn shutdown(&self) -> Result<()> {
        self.call(|s| async move { s.shutdown().await })
    }

    /// See [`Scheduler::shutdown_now`]: does not wait for the runs in flight.
    ///
    /// # Errors
    /// [`Error::State`](crate::Error::State) if the scheduler is not running.
    pub fn shutdown_now(&self) -> Result<()> {
        self.call(|s| async move { s.shutdown_now().await })
    }

    /// See [`Scheduler::shutdown_timeout`].
    ///
    /// # Errors
    /// [`Error::State`](crate::Error::State) if the scheduler is not running.
    pub fn shutdown_timeout(&self, timeout: Duration) -> Result<()> {
        self.call(move |s| async move { s.shutdown_timeout(timeout).await })
    }

    /// See [`Scheduler::pause`].
    ///
    /// # Errors
    /// [`Error::State`](crate::Error::State) unless the scheduler is running.
    pub fn pause(&self) -> Result<()> {
        self.scheduler.pause()
    }

    /// See [`Scheduler::resume`].
    ///
    /// # Errors
    /// [`Error::State`](crate::Error::State) unless the scheduler is paused.
    pub fn resume(&self) -> Result<()> {
        self.scheduler.resume()
    }

    /// The scheduler's state.
    pub fn state(&self) -> SchedulerState {
        self.scheduler.state()
    }

    /// The job `id`, looked up in every store (see [`Scheduler::job`]).
    pub fn job(&self, id: impl Into<String>) -> BlockingJobHandle {
        BlockingJobHandle::new(self.scheduler.job(id), self.handle.clone())
    }

    /// The job store `alias` (see [`Scheduler::store`]).
    pub fn store(&self, alias: impl Into<String>) -> BlockingStoreHandle {
        BlockingStoreHandle::new(self.scheduler.store(alias), self.handle.clone())
    }

    /// See [`Scheduler::get_jobs`].
    ///
    /// # Errors
    /// A store's error if it cannot be read.
    pub fn get_jobs(&self) -> Result<Vec<Job>> {
        self.call(|s| async move { s.get_jobs().await })
    }

    /// See [`Scheduler::remove_all_jobs`].
    ///
    /// # Errors
    /// A store's error.
    pub fn remove_all_jobs(&self) -> Result<()> {
        self.call(|s| async move { s.remove_all_jobs().await })
    }

    /// See [`Scheduler::jobs_table`].
    ///
    /// # Errors
    /// A store's error if it cannot be read.
    pub fn jobs_table(&self) -> Result<String> {
        self.call(|s| async move { s.jobs_table().await })
    }

    /// Events matching `mask`; use [`EventReceiver::blocking_recv`] from plain threads.
    pub fn subscribe(&self, mask: EventKind) -> EventReceiver {
        self.scheduler.subscribe(mask)
    }

    /// See [`Scheduler::add_listener`]: `f` runs for each event matching `mask`, on a task
    /// of the scheduler's runtime.
    pub fn add_listener<F, Fut>(&self, mask: EventKind, f: F) -> ListenerId
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.scheduler.add_listener(mask, f)
    }

    /// See [`Scheduler::remove_listener`].
    pub fn remove_listener(&self, id: ListenerId) -> bool {
        self.scheduler.remove_listener(id)
    }
}

impl Drop for BackgroundScheduler {
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let scheduler = self.scheduler.clone();
        let stop = move |runtime: Runtime| {
            if scheduler.state() != SchedulerState::Stopped {
                // The timer is created inside the runtime, which is what drives it.
                let _ = runtime.block_on(async {
                    tokio::time::timeout(DROP_GRACE, scheduler.shutdown_now()).await
                });
            }
            runtime.shutdown_timeout(DROP_GRACE);
        };
        if Handle::try_current().is_err() {
            stop(runtime);
            return;
        }
        // Inside async code blocking panics, and so does dropping a runtime: stop on a
        // thread. The runtime is handed over only once the thread exists, so that if it
        // cannot be created the runtime is still here to shut down without blocking.
        let (tx, rx) = std::sync::mpsc::channel::<Runtime>();
        let thread = std::thread::Builder::new()
            .name("apsched-drop".into())
            .spawn(move || {
                if let Ok(runtime) = rx.recv() {
                    stop(runtime);
                }
            });
        match thread {
            Ok(_) => {
                let _ = tx.send(runtime);
            }
            Err(_) => runtime.shutdown_background(),
        }
    }
}
