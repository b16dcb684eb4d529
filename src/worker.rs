//! Worker mode: running a registered task in a child process of the same binary.
//!
//! A [`ProcessExecutor`](crate::executor::ProcessExecutor) with
//! [`tasks_in_worker_mode`](crate::executor::ProcessExecutor::tasks_in_worker_mode) runs a task
//! job by re-executing the current binary with the task's name in the environment and its
//! arguments on stdin. The child must call [`worker_main`] at the very top of `main`: in a
//! worker it runs the task, prints the result and exits; otherwise it returns at once.
//! Blocking or crash-prone work is isolated this way without an external command.
//!
//! ```no_run
//! use apsched::{Scheduler, SchedulerBuilder};
//!
//! fn tasks(builder: SchedulerBuilder) -> SchedulerBuilder {
//!     builder.blocking_task("resize", |path: String| resize_image(&path))
//! }
//! # fn resize_image(_: &str) {}
//!
//! fn main() {
//!     apsched::worker_main(|| tasks(Scheduler::builder())); // first thing in main
//!     // ... the normal program: build the scheduler with `tasks(...)` too.
//! }
//! ```

use std::io::Read;

use crate::job::{Callable, JobError, JobResult};
use crate::scheduler::SchedulerBuilder;

/// The environment variable naming the task a worker runs.
pub const WORKER_TASK_ENV: &str = "APSCHED_WORKER_TASK";

/// The prefix of the line on which a worker prints its result.
pub(crate) const RESULT_MARK: &str = "APSCHED-WORKER-RESULT:";

/// If this process is a worker, runs the task named in the environment with the arguments
/// on stdin, prints the result and exits (status 0 on success, 1 on failure). Otherwise
/// returns at once. Call it first thing in `main`, with a function building the same task
/// registrations as the scheduler's.
pub fn worker_main(builder: impl FnOnce() -> SchedulerBuilder) {
    let Ok(name) = std::env::var(WORKER_TASK_ENV) else {
        return;
    };
    let result = run_task(&name, builder());
    let ok = result.is_ok();
    match serde_json::to_string(&result) {
        Ok(json) => println!("\n{RESULT_MARK}{json}"),
        Err(e) => eprintln!("apsched worker: the result does not serialise: {e}"),
    }
    std::process::exit(if ok { 0 } else { 1 });
}

fn run_task(name: &str, builder: SchedulerBuilder) -> JobResult {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| JobError::not_runnable(format!("reading the task's arguments: {e}")))?;
    let args: serde_json::Value = serde_json::from_str(&input)
        .map_err(|e| JobError::not_runnable(format!("the task's arguments are not JSON: {e}")))?;
    let tasks = builder.into_tasks();
    if !tasks.contains(name) {
        return Err(JobError::not_runnable(format!(
            "this binary registers no task named '{name}' in worker_main"
        )));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| JobError::not_runnable(format!("starting a runtime: {e}")))?;
    let callable = Callable::Task {
        name: name.to_string(),
        args,
    };
    runtime.block_on(crate::executor::invoke(&callable, &tasks))
}

/// Reads a worker's result from its stdout (the last marked line).
pub(crate) fn parse_result(stdout: &str) -> Option<JobResult> {
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(RESULT_MARK))
        .and_then(|json| serde_json::from_str(json).ok())
}
