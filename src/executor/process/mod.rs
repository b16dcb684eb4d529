//! Child processes: each run an external command ([`command`]), or a registered task of this
//! same binary in worker mode ([`worker`]), at most N at once.

pub(crate) mod command;
pub(crate) mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use self::command::Stop;
use self::worker::run_worker;
use super::run::JobRun;
use super::Executor;
use crate::job::outcome::JobError;
use crate::job::{Callable, JobContext};

/// Runs jobs in child processes, at most `max_processes` at once.
///
/// - [`CommandSpec`](command::CommandSpec) jobs run their command.
/// - With [`tasks_in_worker_mode`](Self::tasks_in_worker_mode), task jobs
///   ([`Scheduler::add_task_job`](crate::Scheduler::add_task_job)) run by re-executing this
///   binary in worker mode (see [`worker_main`](crate::worker_main)).
///
/// A non-zero exit or a signal is [`JobError::Exited`](crate::JobError::Exited) with the
/// status and the tail of stderr; a run over its own timeout
/// ([`CommandSpec::timeout`](command::CommandSpec::timeout), the worker mode's) is reported
/// as [`JobError::TimedOut`](crate::JobError::TimedOut). Closures cannot cross a process
/// boundary, so this executor refuses them when the job is added.
///
/// # Stopping a child
/// A child is asked to stop with SIGTERM, so that it can clean up, and killed (SIGKILL)
/// only if it is still running after the scheduler's
/// [`timeout_grace`](crate::SchedulerBuilder::timeout_grace):
/// - past its own timeout;
/// - when its run's token is cancelled: past the job's [`timeout`](crate::AddJob::timeout),
///   by [`Scheduler::cancel_run`](crate::Scheduler::cancel_run), by a shutdown that does
///   not wait, by the overlap policy `CancelOther`. (Only runs that can observe
///   cancellation have a token: those of jobs with a timeout, and of worker tasks taking a
///   [`JobContext`].) A child that ends on SIGTERM ends its run at once; one still going
///   when the job's timeout grace ends is killed.
///
/// The child leads a process group of its own and the signals go to the whole group, so
/// the processes it started stop with it. When it exits, what it left running in its group
/// is sent SIGTERM, and killed if it still holds the child's output open after the grace:
/// the run ends with the child. (docs/executors.md has the details.) On platforms other
/// than Unix there are no process groups and no SIGTERM: the child is killed when its
/// grace would start (its own timeout) or ends (the job's).
#[derive(Debug)]
pub struct ProcessExecutor {
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    worker: Option<WorkerMode>,
}

#[derive(Debug, Clone)]
struct WorkerMode {
    timeout: Option<Duration>,
}

impl ProcessExecutor {
    /// At most `max_processes` children at once (at least 1).
    pub fn new(max_processes: usize) -> Self {
        ProcessExecutor {
            slots: Arc::new(Semaphore::new(max_processes.max(1))),
            tracker: TaskTracker::new(),
            worker: None,
        }
    }

    /// Also runs registered tasks, each in a child that re-executes this binary. The
    /// binary's `main` must start with [`worker_main`](crate::worker_main), or the child
    /// would run the whole program again. `timeout` stops a worker that runs too long
    /// (SIGTERM, then SIGKILL after the scheduler's
    /// [`timeout_grace`](crate::SchedulerBuilder::timeout_grace)).
    pub fn tasks_in_worker_mode(mut self, timeout: Option<Duration>) -> Self {
        self.worker = Some(WorkerMode { timeout });
        self
    }
}

#[async_trait::async_trait]
impl Executor for ProcessExecutor {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn check(&self, callable: &Callable) -> Result<(), String> {
        match (callable, &self.worker) {
            (Callable::Command(_), _) | (Callable::Task { .. }, Some(_)) => Ok(()),
            (Callable::Task { .. }, None) => Err("to run tasks, enable worker mode with \
                 ProcessExecutor::tasks_in_worker_mode and call apsched::worker_main in main"
                .into()),
            _ => Err(
                "the process executor runs commands (CommandSpec) and tasks in worker \
                      mode; a closure cannot cross a process boundary"
                    .into(),
            ),
        }
    }

    fn submit(&self, mut run: JobRun) {
        // A watched run (one with a timeout or a context) hands its body the context, for
        // the token: once it is cancelled (the timeout, `cancel_run`, a shutdown) the child
        // gets SIGTERM. A worker is told of the context only if its task takes one. (Like
        // any run with a context, such a run ends `NotRunnable` if the scheduler is gone.)
        let task_context = run.watch.as_ref().is_some_and(|w| w.context);
        if let Some(watch) = run.watch.as_mut() {
            watch.context = true;
        }
        let grace = run.ctx.timeout_grace;
        let slots = self.slots.clone();
        let worker = self.worker.clone();
        self.tracker.spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            let (run, worker) = (&run, &worker);
            for &t in &run.run_times {
                // Under the job's timeout like every run: past it the token is cancelled
                // (SIGTERM to the child's group), and past its grace period the body is
                // dropped, which kills the group.
                run.run_time(t, |ctx| async move {
                    let token = ctx.as_ref().map(JobContext::cancellation_token);
                    match (&run.callable, worker) {
                        (Callable::Command(cmd), _) => cmd.run_with(token, grace).await,
                        (Callable::Task { name, args }, Some(mode)) => {
                            let stop = Stop {
                                timeout: mode.timeout,
                                grace,
                                token,
                            };
                            let ctx = ctx.as_ref().filter(|_| task_context);
                            run_worker(name, args, stop, ctx).await
                        }
                        _ => Err(JobError::not_runnable(
                            "the process executor cannot run this job",
                        )),
                    }
                })
                .await;
            }
        });
    }

    async fn shutdown(&self, wait: bool) {
        self.tracker.close();
        if wait {
            self.tracker.wait().await;
        }
    }
}
