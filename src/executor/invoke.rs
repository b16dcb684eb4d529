//! Invoking a job body in this process, with its panics caught: from async code
//! ([`invoke`]) or on a blocking thread ([`invoke_blocking`]).

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use super::current_run::{current_run, ThreadRunGuard};
use crate::job::outcome::{panic_message, JobError, JobResult};
use crate::job::{Callable, JobContext};
use crate::task::{TaskFn, TaskRegistry};

fn local_needs_local_executor() -> JobError {
    JobError::not_runnable("a !Send job runs only on a LocalExecutor; add one and pick it")
}

fn unknown_task(name: &str) -> JobError {
    JobError::not_runnable(format!(
        "no task named '{name}' is registered (register it with SchedulerBuilder::task)"
    ))
}

/// The error of a body that takes a [`JobContext`] invoked without one (the scheduler
/// always gives one; only a run outside it, as in a worker, has none).
pub(super) fn no_context() -> JobError {
    JobError::not_runnable("this job takes a JobContext, and none was given to it")
}

/// Invokes a callable from async code, catching panics. A body taking a [`JobContext`]
/// needs [`invoke_with`] (this one has no context to give it).
///
/// The future stays small (it is part of every run's task): only the async-closure path is
/// inline; commands, tasks and blocking bodies are boxed, as their futures are large.
pub(crate) async fn invoke(callable: &Callable, tasks: &TaskRegistry) -> JobResult {
    match callable {
        Callable::Async(f) => caught(|| f()).await,
        Callable::Blocking(f) => {
            let f = f.clone();
            Box::pin(spawn_blocking_caught(move || f())).await
        }
        Callable::Local(_) | Callable::LocalWithContext(_) => Err(local_needs_local_executor()),
        Callable::AsyncWithContext(_) | Callable::BlockingWithContext(_) => Err(no_context()),
        Callable::Command(cmd) => Box::pin(cmd.run()).await,
        Callable::Task { name, args } => Box::pin(invoke_task(name, args, tasks, None)).await,
    }
}

/// [`invoke`] for a run that can observe cancellation: `ctx` is the run's context, given
/// when the body takes one. (Separate, so the context never weighs on a plain run's task.)
pub(crate) async fn invoke_with(
    callable: &Callable,
    tasks: &TaskRegistry,
    ctx: Option<JobContext>,
) -> JobResult {
    match (callable, ctx) {
        (Callable::AsyncWithContext(f), Some(ctx)) => caught(|| f(ctx)).await,
        (Callable::BlockingWithContext(f), Some(ctx)) => {
            let f = f.clone();
            spawn_blocking_caught(move || f(ctx)).await
        }
        (Callable::Task { name, args }, ctx) => invoke_task(name, args, tasks, ctx).await,
        (other, _) => invoke(other, tasks).await,
    }
}

/// Runs a registered task in this process.
async fn invoke_task(
    name: &str,
    args: &serde_json::Value,
    tasks: &TaskRegistry,
    ctx: Option<JobContext>,
) -> JobResult {
    match tasks.get(name) {
        Some(TaskFn::Async { f, .. }) => caught(|| f(args.clone(), ctx)).await,
        Some(TaskFn::Blocking { f, .. }) => {
            let (f, args) = (f.clone(), args.clone());
            spawn_blocking_caught(move || f(args, ctx)).await
        }
        None => Err(unknown_task(name)),
    }
}

/// Calls `make` and awaits the future it returns, turning a panic in either into
/// [`JobError::Panicked`]. The future may be `!Send` (the local executor's jobs).
pub(super) async fn caught<F: Future<Output = JobResult>>(make: impl FnOnce() -> F) -> JobResult {
    match std::panic::catch_unwind(AssertUnwindSafe(make)) {
        Ok(fut) => AssertUnwindSafe(fut)
            .catch_unwind()
            .await
            .unwrap_or_else(|p| Err(panic_message(p))),
        Err(p) => Err(panic_message(p)),
    }
}

async fn spawn_blocking_caught(f: impl FnOnce() -> JobResult + Send + 'static) -> JobResult {
    // The body runs on another thread: carry the run's mark along.
    let key = current_run();
    let body = move || {
        let _marked = ThreadRunGuard::enter(key);
        std::panic::catch_unwind(AssertUnwindSafe(f))
    };
    match ::tokio::task::spawn_blocking(body).await {
        Ok(Ok(r)) => r,
        Ok(Err(p)) => Err(panic_message(p)),
        Err(e) => Err(JobError::not_runnable(format!(
            "the blocking task was cancelled: {e}"
        ))),
    }
}

/// Invokes a callable on the current thread, catching panics (for runs without a context:
/// see [`JobRun::run_blocking`](super::JobRun::run_blocking)).
pub(crate) fn invoke_blocking(callable: &Callable, tasks: &TaskRegistry) -> JobResult {
    let direct = |f: &dyn Fn() -> JobResult| {
        std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(panic_message(p)))
    };
    // Async bodies, commands and async tasks are driven by the runtime from this thread.
    let drive = |c: &Callable| match ::tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(invoke(c, tasks)),
        Err(_) => Err(JobError::not_runnable(
            "an async job on a thread without a Tokio runtime",
        )),
    };
    match callable {
        Callable::Blocking(f) => direct(&|| f()),
        Callable::Task { name, args } => match tasks.get(name) {
            Some(TaskFn::Blocking { f, .. }) => direct(&|| f(args.clone(), None)),
            Some(TaskFn::Async { .. }) => drive(callable),
            None => Err(unknown_task(name)),
        },
        Callable::Local(_) | Callable::LocalWithContext(_) => Err(local_needs_local_executor()),
        // Bodies taking a context come here only outside the scheduler (a watched run is
        // supervised from async code; see `JobRun::run_blocking`).
        Callable::BlockingWithContext(_) => Err(no_context()),
        Callable::Async(_) | Callable::AsyncWithContext(_) | Callable::Command(_) => {
            drive(callable)
        }
    }
}

#[cfg(test)]
mod size_tests {
    /// Every run is a task holding this future: a large one turns each spawn into a big
    /// allocation (it was 1.8 KB before the rare paths were boxed, and dominated a storm).
    #[test]
    fn run_futures_stay_small() {
        let tasks = crate::task::TaskRegistry::new();
        let c = crate::job::Callable::from_async(|| async {});
        assert!(std::mem::size_of_val(&super::invoke(&c, &tasks)) <= 256);
    }
}
