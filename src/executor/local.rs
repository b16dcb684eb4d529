//! `!Send` jobs on a `LocalSet`, on a thread of their own.

use std::sync::Mutex;
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::invoke::{caught, invoke_with, no_context};
use super::run::JobRun;
use super::Executor;
use crate::job::outcome::JobResult;
use crate::job::Callable;
use crate::sync::MutexExt;

/// Runs jobs whose futures are `!Send` (they hold an `Rc`, a `RefCell` across an await, a
/// `!Send` client) on a current-thread runtime with a `LocalSet`, on its own thread.
///
/// The closure itself is `Send + Sync` (the store keeps it); only the future it returns may
/// be `!Send`. Add such jobs with [`Scheduler::add_local_job`](crate::Scheduler::add_local_job).
///
/// # Starting again
///
/// Shutting the executor down (as the scheduler's shutdown does) ends its thread for good.
/// A scheduler started again keeps its executors: the Tokio, blocking and process executors
/// run jobs again, but every run handed to a shut-down local executor ends at once as a
/// [`JobError::NotRunnable`](crate::JobError::NotRunnable) (the run was dropped), with a
/// warning in the log. To run local jobs after a restart, replace it:
///
/// ```
/// use apsched::executor::{BlockingExecutor, CommandSpec, LocalExecutor, ProcessExecutor};
/// use apsched::{Event, EventKind, JobError, Scheduler};
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let scheduler = Scheduler::builder()
///     .executor("local", LocalExecutor::new()?)
///     .executor("threads", BlockingExecutor::new(1))
///     .executor("processes", ProcessExecutor::new(1))
///     .build();
/// let mut outcomes = scheduler.subscribe(EventKind::JOB_EXECUTED | EventKind::JOB_ERROR);
/// scheduler.start().await?;
/// scheduler.shutdown().await?;
/// scheduler.start().await?;
///
/// // The other executors run jobs again...
/// scheduler.add_job(|| async {}).id("tokio").await?;
/// assert!(matches!(outcomes.recv().await?, Event::JobExecuted { .. }));
/// scheduler.add_blocking_job(|| ()).executor("threads").id("blocking").await?;
/// assert!(matches!(outcomes.recv().await?, Event::JobExecuted { .. }));
/// # #[cfg(unix)] {
/// scheduler
///     .add_command_job(CommandSpec::new("true"))
///     .executor("processes")
///     .id("process")
///     .await?;
/// assert!(matches!(outcomes.recv().await?, Event::JobExecuted { .. }));
/// # }
///
/// // ...the shut-down local executor reports the run as dropped...
/// scheduler.add_local_job(|| async {}).id("before").await?;
/// let event = outcomes.recv().await?;
/// assert!(matches!(
///     event,
///     Event::JobError { error: JobError::NotRunnable { .. }, .. }
/// ));
///
/// // ...and a new one runs it.
/// scheduler.remove_executor("local").await?;
/// scheduler.add_executor("local", LocalExecutor::new()?)?;
/// scheduler.add_local_job(|| async {}).id("after").await?;
/// assert!(matches!(outcomes.recv().await?, Event::JobExecuted { .. }));
/// scheduler.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct LocalExecutor {
    tx: Mutex<Option<mpsc::UnboundedSender<JobRun>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl LocalExecutor {
    /// Starts the executor's thread.
    ///
    /// # Errors
    /// If the thread or its runtime cannot be created.
    pub fn new() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, mut rx) = mpsc::unbounded_channel::<JobRun>();
        let thread = std::thread::Builder::new()
            .name("apsched-local".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async {
                    while let Some(run) = rx.recv().await {
                        tokio::task::spawn_local(run_local(run));
                    }
                });
                // The channel closed (shutdown): let the runs in flight finish.
                rt.block_on(local);
            })?;
        Ok(LocalExecutor {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }
}

/// Not an `async fn`, which would hold the `JobRun` twice (see `JobRun::run`).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn holds its argument twice"
)]
fn run_local(run: JobRun) -> impl std::future::Future<Output = ()> + 'static {
    async move { run.scoped(run_local_times(&run)).await }
}

async fn run_local_times(run: &JobRun) {
    for &t in &run.run_times {
        run.run_time(t, |ctx| async move {
            let result: JobResult = match (&run.callable, ctx) {
                (Callable::Local(f), _) => caught(|| f()).await,
                (Callable::LocalWithContext(f), Some(ctx)) => caught(|| f(ctx)).await,
                (Callable::LocalWithContext(_), None) => Err(no_context()),
                (other, ctx) => invoke_with(other, &run.ctx.tasks, ctx).await,
            };
            result
        })
        .await;
    }
}

#[async_trait::async_trait]
impl Executor for LocalExecutor {
    fn kind(&self) -> &'static str {
        "local"
    }

    /// Runs anything, `!Send` jobs included.
    fn check(&self, _callable: &Callable) -> Result<(), String> {
        Ok(())
    }

    fn submit(&self, run: JobRun) {
        let tx = self.tx.lock_unpoisoned();
        match tx.as_ref() {
            Some(tx) => {
                let _ = tx.send(run);
            }
            None => tracing::warn!(job_id = %run.job_id, "local executor is shut down"),
        }
    }

    async fn shutdown(&self, wait: bool) {
        self.tx.lock_unpoisoned().take();
        let thread = self.thread.lock_unpoisoned().take();
        if let (true, Some(thread)) = (wait, thread) {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}
