//! Executors: where runs happen.
//!
//! The scheduler loop hands each batch of due runs to an executor as a [`JobRun`] and moves
//! on at once; the executor decides where it runs:
//!
//! - [`TokioExecutor`]: async jobs as Tokio tasks (the default executor).
//! - [`BlockingExecutor`]: blocking closures on a bounded thread pool.
//! - [`ProcessExecutor`]: external commands in child processes, at most N at once.
//! - [`LocalExecutor`]: `!Send` futures on a `LocalSet` of its own thread.
//!
//! Whatever the executor, [`JobRun`] applies the same rules: a run that starts later than
//! `misfire_grace_time` after its scheduled time is [`Event::JobMissed`]; a panic becomes
//! [`Event::JobError`]; success is [`Event::JobExecuted`] with the return value.

mod blocking;
mod command;
mod local;
mod process;
mod tokio;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::FutureExt;

pub use self::blocking::BlockingExecutor;
pub use self::command::CommandSpec;
pub use self::local::LocalExecutor;
pub use self::process::ProcessExecutor;
pub use self::tokio::TokioExecutor;
use crate::clock::Clock;
use crate::event::{Event, EventBus};
use crate::job::{Callable, JobError, JobResult};
use crate::task::{TaskFn, TaskRegistry};

/// Runs submitted jobs.
///
/// Implement it to run jobs somewhere else (a remote worker, a test harness that starts runs
/// on demand); call [`JobRun::run`] or the [`JobRun::start`]/[`JobRun::finish`] pair so the
/// misfire and event rules stay the same.
#[async_trait::async_trait]
pub trait Executor: Send + Sync + 'static {
    /// A short name of the kind of executor, for tables and logs.
    fn kind(&self) -> &'static str;

    /// Whether this executor can run `callable`; the error says what to use instead.
    /// Checked by `add_job`, so an unsuitable job is refused up front. By default everything
    /// but a `!Send` job, which only a [`LocalExecutor`] can run.
    fn check(&self, callable: &Callable) -> Result<(), String> {
        match callable {
            Callable::Local(_) => {
                Err("a !Send job needs a LocalExecutor; add one and pick it".into())
            }
            _ => Ok(()),
        }
    }

    /// Starts running `run` somewhere and returns at once.
    fn submit(&self, run: JobRun);

    /// Stops accepting runs; with `wait`, returns once every run in flight has finished.
    async fn shutdown(&self, wait: bool);
}

/// What a run needs from the scheduler: the clock, the event bus and the task registry.
#[derive(Debug, Clone)]
pub(crate) struct RunContext {
    pub clock: Arc<dyn Clock>,
    pub events: EventBus,
    pub tasks: Arc<TaskRegistry>,
}

/// One submission of a job: one or more scheduled times to run in order.
///
/// Holds one of the job's `max_instances` slots until it is dropped.
pub struct JobRun {
    /// The job id.
    pub job_id: Arc<str>,
    /// The alias of the store holding the job.
    pub store: Arc<str>,
    /// What to invoke.
    pub callable: Callable,
    /// The scheduled times, oldest first (one unless the job does not coalesce).
    pub run_times: Vec<DateTime<Utc>>,
    /// How late a run may start; `None` = any lateness.
    pub misfire_grace_time: Option<Duration>,
    pub(crate) ctx: Arc<RunContext>,
    pub(crate) _slot: Option<InstanceSlot>,
}

impl std::fmt::Debug for JobRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRun")
            .field("job_id", &self.job_id)
            .field("store", &self.store)
            .field("callable", &self.callable)
            .field("run_times", &self.run_times)
            .finish()
    }
}

impl JobRun {
    /// Call as a scheduled time is about to start. Returns `false`, after emitting
    /// [`Event::JobMissed`], when it is later than the grace time allows (strictly later:
    /// a delay equal to the grace time still runs).
    pub fn start(&self, scheduled: DateTime<Utc>) -> bool {
        if let Some(grace) = self.misfire_grace_time {
            let late = self.ctx.clock.now() - scheduled;
            if late.to_std().is_ok_and(|late| late > grace) {
                tracing::warn!(job_id = %self.job_id, %scheduled, "run missed by {late}");
                self.ctx.events.emit_with(|| Event::JobMissed {
                    job_id: self.job_id.to_string(),
                    store: self.store.to_string(),
                    scheduled_run_time: scheduled,
                });
                return false;
            }
        }
        true
    }

    /// Call when a run finished: emits [`Event::JobExecuted`] or [`Event::JobError`].
    pub fn finish(&self, scheduled: DateTime<Utc>, result: JobResult) {
        if let Err(error) = &result {
            tracing::error!(job_id = %self.job_id, %scheduled, %error, "job failed");
        }
        self.ctx.events.emit_with(|| {
            let (job_id, store) = (self.job_id.to_string(), self.store.to_string());
            match result {
                Ok(retval) => Event::JobExecuted {
                    job_id,
                    store,
                    scheduled_run_time: scheduled,
                    retval,
                },
                Err(error) => Event::JobError {
                    job_id,
                    store,
                    scheduled_run_time: scheduled,
                    error,
                },
            }
        });
    }

    /// Runs every scheduled time in order on the current Tokio runtime.
    pub async fn run(self) {
        for &t in &self.run_times {
            if self.start(t) {
                let result = invoke(&self.callable, &self.ctx.tasks).await;
                self.finish(t, result);
            }
        }
    }

    /// Runs every scheduled time in order on the current (blocking) thread. Async bodies
    /// are driven with the runtime's handle, so call this from `spawn_blocking` or another
    /// thread that has a runtime context.
    pub fn run_blocking(self) {
        for &t in &self.run_times {
            if self.start(t) {
                let result = invoke_blocking(&self.callable, &self.ctx.tasks);
                self.finish(t, result);
            }
        }
    }
}

/// Turns a panic payload into its message.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> JobError {
    let message = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    };
    JobError::Panicked { message }
}

fn local_needs_local_executor() -> JobError {
    JobError::not_runnable("a !Send job runs only on a LocalExecutor; add one and pick it")
}

fn unknown_task(name: &str) -> JobError {
    JobError::not_runnable(format!(
        "no task named '{name}' is registered (register it with SchedulerBuilder::task)"
    ))
}

/// Invokes a callable from async code, catching panics.
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
        Callable::Local(_) => Err(local_needs_local_executor()),
        Callable::Command(cmd) => Box::pin(cmd.run()).await,
        Callable::Task { name, args } => Box::pin(invoke_task(name, args, tasks)).await,
    }
}

/// Runs a registered task in this process.
async fn invoke_task(name: &str, args: &serde_json::Value, tasks: &TaskRegistry) -> JobResult {
    match tasks.get(name) {
        Some(TaskFn::Async(f)) => caught(|| f(args.clone())).await,
        Some(TaskFn::Blocking(f)) => {
            let (f, args) = (f.clone(), args.clone());
            spawn_blocking_caught(move || f(args)).await
        }
        None => Err(unknown_task(name)),
    }
}

/// Calls `make` and awaits the future it returns, turning a panic in either into
/// [`JobError::Panicked`].
async fn caught(make: impl FnOnce() -> BoxFuture<'static, JobResult>) -> JobResult {
    match std::panic::catch_unwind(AssertUnwindSafe(make)) {
        Ok(fut) => AssertUnwindSafe(fut)
            .catch_unwind()
            .await
            .unwrap_or_else(|p| Err(panic_message(p))),
        Err(p) => Err(panic_message(p)),
    }
}

async fn spawn_blocking_caught(f: impl FnOnce() -> JobResult + Send + 'static) -> JobResult {
    match ::tokio::task::spawn_blocking(move || std::panic::catch_unwind(AssertUnwindSafe(f))).await
    {
        Ok(Ok(r)) => r,
        Ok(Err(p)) => Err(panic_message(p)),
        Err(e) => Err(JobError::not_runnable(format!(
            "the blocking task was cancelled: {e}"
        ))),
    }
}

/// Invokes a callable on the current thread, catching panics.
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
            Some(TaskFn::Blocking(f)) => direct(&|| f(args.clone())),
            Some(TaskFn::Async(_)) => drive(callable),
            None => Err(unknown_task(name)),
        },
        Callable::Local(_) => Err(local_needs_local_executor()),
        Callable::Async(_) | Callable::Command(_) => drive(callable),
    }
}

/// Counts the runs of each job in flight, for `max_instances` (shared by all executors).
#[derive(Debug, Default)]
pub(crate) struct Instances {
    running: Mutex<HashMap<Arc<str>, u32>>,
}

impl Instances {
    /// Takes a slot for `job_id` unless `max` are already taken.
    pub fn try_acquire(self: &Arc<Self>, job_id: &Arc<str>, max: u32) -> Option<InstanceSlot> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let n = running.entry(job_id.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(InstanceSlot {
            instances: self.clone(),
            job_id: job_id.clone(),
        })
    }
}

/// One of a job's `max_instances` slots; released when dropped.
#[derive(Debug)]
pub(crate) struct InstanceSlot {
    instances: Arc<Instances>,
    job_id: Arc<str>,
}

impl Drop for InstanceSlot {
    fn drop(&mut self) {
        let mut running = self
            .instances
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = running.get_mut(&self.job_id) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.job_id);
            }
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
