//! Flavours that take over the calling thread: [`BlockingScheduler`] and, for `!Send`
//! jobs, [`LocalScheduler`].

use std::ops::Deref;

use super::{BackgroundScheduler, SchedulerBuilder, SchedulerState};
use crate::error::Result;
use crate::executor::LocalExecutor;

/// A scheduler that takes over the calling thread: [`run`](Self::run) blocks until the
/// scheduler is shut down (from a job, another thread, or Ctrl-C). APScheduler's
/// `BlockingScheduler`.
///
/// It is a [`BackgroundScheduler`] plus [`run`](Self::run): every blocking method of
/// [`BackgroundScheduler`] (adding jobs, [`job`](BackgroundScheduler::job), listeners) is
/// available on it, through `Deref`.
///
/// ```no_run
/// use apsched::{BlockingScheduler, Scheduler, trigger::Cron};
///
/// let scheduler = BlockingScheduler::new(Scheduler::builder())?;
/// scheduler
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
    ///
    /// # Errors
    /// If the runtime cannot be created.
    pub fn new(builder: SchedulerBuilder) -> Result<Self> {
        Ok(BlockingScheduler {
            background: BackgroundScheduler::new(builder)?,
        })
    }

    /// Starts the scheduler (unless it already runs) and blocks until it shuts down, or
    /// until the process gets Ctrl-C: then it shuts down, waiting for the runs in flight.
    ///
    /// # Errors
    /// As [`Scheduler::start`](crate::Scheduler::start); the shutdown's error after Ctrl-C.
    pub fn run(&self) -> Result<()> {
        let scheduler = self.background.scheduler().clone();
        self.background.block_on(async move {
            if scheduler.state() == SchedulerState::Stopped {
                scheduler.start().await?;
            }
            tokio::select! {
                _ = scheduler.wait_for_shutdown() => Ok(()),
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("Ctrl-C: shutting down");
                    scheduler.shutdown().await
                }
            }
        })?
    }
}

impl Deref for BlockingScheduler {
    type Target = BackgroundScheduler;

    fn deref(&self) -> &BackgroundScheduler {
        &self.background
    }
}

/// A scheduler for `!Send` jobs: a [`BlockingScheduler`] with a [`LocalExecutor`] added as
/// `"local"`, so jobs added with [`add_local_job`](BackgroundScheduler::add_local_job) run
/// on that executor's current-thread runtime with a `LocalSet`, on its own thread.
///
/// The `"default"` executor is untouched: the builder's, or else a
/// [`TokioExecutor`](crate::executor::TokioExecutor) on the scheduler's own runtime, where
/// jobs added with [`add_job`](BackgroundScheduler::add_job) run (unless they name
/// `"local"`). If the builder already has a `"local"` executor, this one replaces it.
///
/// It is for one [`run`](Self::run): a local executor does not start again after the
/// scheduler's shutdown (see [`LocalExecutor`]'s "Starting again"), so a second `run` would
/// report every local run as a [`JobError::NotRunnable`](crate::JobError::NotRunnable).
/// Build a new `LocalScheduler` instead.
///
/// ```no_run
/// use std::rc::Rc;
/// use apsched::{LocalScheduler, Scheduler};
///
/// let scheduler = LocalScheduler::new(Scheduler::builder())?;
/// scheduler
///     .add_local_job(|| async {
///         let not_send = Rc::new(1);
///         tokio::task::yield_now().await;
///         println!("{not_send}");
///     })
///     .add()?;
/// scheduler.run()?; // until Ctrl-C
/// # Ok::<(), apsched::Error>(())
/// ```
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

    /// Starts (unless it already runs) and blocks until shutdown or Ctrl-C (see
    /// [`BlockingScheduler::run`]).
    ///
    /// # Errors
    /// As [`BlockingScheduler::run`].
    pub fn run(&self) -> Result<()> {
        self.blocking.run()
    }
}

impl Deref for LocalScheduler {
    type Target = BackgroundScheduler;

    fn deref(&self) -> &BackgroundScheduler {
        &self.blocking
    }
}
