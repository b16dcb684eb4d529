//! Child processes: each run an external command, or a registered task of this same binary
//! in worker mode, at most N at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::command::{exit_error, run_child};
use super::{Executor, JobRun};
use crate::job::{Callable, JobError, JobResult};
use crate::worker::{parse_result, WORKER_TASK_ENV};

/// Runs jobs in child processes, at most `max_processes` at once.
///
/// - [`CommandSpec`](super::CommandSpec) jobs run their command.
/// - With [`tasks_in_worker_mode`](Self::tasks_in_worker_mode), task jobs
///   ([`Scheduler::add_task_job`](crate::Scheduler::add_task_job)) run by re-executing this
///   binary in worker mode (see [`worker_main`](crate::worker_main)).
///
/// A non-zero exit or a signal is [`JobError::Exited`](crate::JobError::Exited) with the
/// status and the tail of stderr; a run over its timeout is killed and reported as
/// [`JobError::TimedOut`](crate::JobError::TimedOut). Closures cannot cross a process
/// boundary, so this executor refuses them when the job is added.
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
    /// would run the whole program again. `timeout` kills a worker that runs too long.
    pub fn tasks_in_worker_mode(mut self, timeout: Option<Duration>) -> Self {
        self.worker = Some(WorkerMode { timeout });
        self
    }
}

/// How much of a worker's stdout is kept: its result is the last line, so this bounds the
/// size of a worker task's result.
const WORKER_STDOUT_BYTES: usize = 1 << 20;

/// Runs a task in a worker child of this binary.
async fn run_worker(name: &str, args: &serde_json::Value, mode: &WorkerMode) -> JobResult {
    let exe = std::env::current_exe()
        .map_err(|e| JobError::not_runnable(format!("finding this binary: {e}")))?;
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.env(WORKER_TASK_ENV, name);
    let input = serde_json::to_vec(args).map_err(JobError::failed)?;
    let program = exe.display().to_string();
    let output = run_child(
        cmd,
        &program,
        Some(input),
        mode.timeout,
        WORKER_STDOUT_BYTES,
    )
    .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match parse_result(&stdout) {
        // The task ran: its own result, success or error.
        Some(result) if output.status.success() || result.is_err() => result,
        // No result line: it crashed (panic, abort, signal) or never ran worker_main.
        _ if !output.status.success() => Err(exit_error(&output)),
        _ => Err(JobError::not_runnable(
            "the worker printed no result: does main start with apsched::worker_main?",
        )),
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

    fn submit(&self, run: JobRun) {
        let slots = self.slots.clone();
        let worker = self.worker.clone();
        self.tracker.spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            for &t in &run.run_times {
                if !run.start(t) {
                    continue;
                }
                let result = match (&run.callable, &worker) {
                    (Callable::Command(cmd), _) => cmd.run().await,
                    (Callable::Task { name, args }, Some(mode)) => {
                        run_worker(name, args, mode).await
                    }
                    _ => Err(JobError::not_runnable(
                        "the process executor cannot run this job",
                    )),
                };
                run.finish(t, result);
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
