//! Worker mode, both ends of it: how a [`ProcessExecutor`](super::ProcessExecutor) runs a
//! registered task in a child that re-executes this binary ([`run_worker`]), and what that
//! child does ([`worker_main`]).
//!
//! The wire format: the task's name in the environment variable [`WORKER_TASK_ENV`], its
//! JSON arguments on stdin, and its [`JobResult`] as JSON on the last stdout line that
//! starts with [`RESULT_MARK`]; the exit status is 0 on success, 1 on failure.

use std::io::Read;

use super::command::{exit_error, run_child, Stop};
use crate::executor::invoke::invoke_with;
use crate::job::outcome::{JobError, JobResult};
use crate::job::{Callable, JobContext, RunId};
use crate::scheduler::SchedulerBuilder;

/// The environment variable naming the task a worker runs.
pub(crate) const WORKER_TASK_ENV: &str = "APSCHED_WORKER_TASK";

/// The prefix of the line on which a worker prints its result.
pub(crate) const RESULT_MARK: &str = "APSCHED-WORKER-RESULT:";

/// Worker mode: if this process is a worker, runs the task named in the environment with
/// the arguments on stdin, prints the result and exits (status 0 on success, 1 on failure).
/// Otherwise returns at once. Call it first thing in `main`, with a function building the
/// same task registrations as the scheduler's.
///
/// A [`ProcessExecutor`](crate::executor::ProcessExecutor) with
/// [`tasks_in_worker_mode`](crate::executor::ProcessExecutor::tasks_in_worker_mode) runs a
/// task job by re-executing the current binary with the task's name in the environment and
/// its arguments on stdin; this function is what makes that child run the task instead of
/// the whole program again. Blocking or crash-prone work is isolated this way without an
/// external command.
///
/// ```no_run
/// use apsched::{Scheduler, SchedulerBuilder};
///
/// fn tasks(builder: SchedulerBuilder) -> SchedulerBuilder {
///     builder.blocking_task("resize", |path: String| resize_image(&path))
/// }
/// # fn resize_image(_: &str) {}
///
/// fn main() {
///     apsched::worker_main(|| tasks(Scheduler::builder())); // first thing in main
///     // ... the normal program: build the scheduler with `tasks(...)` too.
/// }
/// ```
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
    // A scheduler (never started) built from the same registrations: the registry, and
    // the handle a task taking a context gets.
    let scheduler = builder.manual().build();
    let tasks = scheduler.task_registry();
    let Some(task) = tasks.get(name) else {
        return Err(JobError::not_runnable(format!(
            "this binary registers no task named '{name}' in worker_main"
        )));
    };
    let ctx = if task.takes_context() {
        Some(context_from_env(scheduler.clone())?)
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| JobError::not_runnable(format!("starting a runtime: {e}")))?;
    let callable = Callable::Task {
        name: name.to_string(),
        args,
    };
    runtime.block_on(invoke_with(&callable, tasks, ctx))
}

/// The environment variables carrying a worker's run: job id, name, scheduled time
/// (RFC 3339) and run id, set only for a task that takes a [`JobContext`].
const CONTEXT_ENV: [&str; 6] = [
    "APSCHED_WORKER_JOB_ID",
    "APSCHED_WORKER_JOB_NAME",
    "APSCHED_WORKER_SCHEDULED",
    "APSCHED_WORKER_RUN_ID",
    "APSCHED_WORKER_ATTEMPT",
    "APSCHED_WORKER_MANUAL",
];

/// Passes the run's context to a worker child.
fn context_to_env(cmd: &mut tokio::process::Command, ctx: &JobContext) {
    let values = [
        ctx.job_id().to_string(),
        ctx.name().to_string(),
        ctx.scheduled_run_time().to_rfc3339(),
        ctx.run_id().to_string(),
        ctx.attempt().to_string(),
        if ctx.is_manual() { "1" } else { "0" }.to_string(),
    ];
    cmd.envs(CONTEXT_ENV.iter().zip(values));
}

/// The run's context in a worker child. Its token is never cancelled: the parent stops a
/// worker with SIGTERM (which ends it) and, after the grace, SIGKILL.
fn context_from_env(scheduler: crate::Scheduler) -> Result<JobContext, JobError> {
    let var = |name: &str| {
        std::env::var(name).map_err(|_| {
            JobError::not_runnable(format!(
                "this task takes a JobContext and the worker's environment lacks {name}"
            ))
        })
    };
    let [id, name, scheduled, run_id, attempt, manual] = CONTEXT_ENV;
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        JobError::not_runnable(format!("the worker's {what} does not parse: {e}"))
    };
    let scheduled = chrono::DateTime::parse_from_rfc3339(&var(scheduled)?)
        .map_err(|e| bad("scheduled time", &e))?
        .with_timezone(&chrono::Utc);
    let run_id = var(run_id)?.parse::<u64>().map_err(|e| bad("run id", &e))?;
    let attempt = var(attempt)?
        .parse::<u32>()
        .map_err(|e| bad("attempt", &e))?;
    let manual = var(manual)? == "1";
    Ok(JobContext::new(
        var(id)?.into(),
        Some(std::sync::Arc::from(var(name)?.as_str())),
        scheduled,
        RunId::from_raw(run_id),
        attempt,
        manual,
        tokio_util::sync::CancellationToken::new(),
        scheduler,
    ))
}

/// Reads a worker's result from its stdout (the last marked line).
fn parse_result(stdout: &str) -> Option<JobResult> {
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(RESULT_MARK))
        .and_then(|json| serde_json::from_str(json).ok())
}

/// How much of a worker's stdout is kept: its result is the last line, so this bounds the
/// size of a worker task's result.
const WORKER_STDOUT_BYTES: usize = 1 << 20;

/// Runs a task in a worker child of this binary, stopped as `stop` says; `ctx` is the
/// run's context for a task that takes one.
pub(crate) async fn run_worker(
    name: &str,
    args: &serde_json::Value,
    stop: Stop<'_>,
    ctx: Option<&JobContext>,
) -> JobResult {
    let exe = std::env::current_exe()
        .map_err(|e| JobError::not_runnable(format!("finding this binary: {e}")))?;
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.env(WORKER_TASK_ENV, name);
    if let Some(ctx) = ctx {
        context_to_env(&mut cmd, ctx);
    }
    let input = serde_json::to_vec(args).map_err(JobError::failed)?;
    let program = exe.display().to_string();
    let output = run_child(cmd, &program, Some(input), stop, WORKER_STDOUT_BYTES).await?;
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
