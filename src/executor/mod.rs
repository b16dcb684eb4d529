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

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
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
use crate::sync::MutexExt;
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
/// Holds one of the job's `max_instances` slots until it is dropped. Every scheduled time
/// gets exactly one outcome event: [`start`](Self::start) reports a miss,
/// [`finish`](Self::finish) the result, and a run dropped before all its times had an
/// outcome (its executor shut down, its task was cancelled) reports
/// [`JobError::NotRunnable`] for each time left.
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
    /// How many of `run_times` have had their outcome event.
    outcomes: AtomicUsize,
}

impl Drop for JobRun {
    fn drop(&mut self) {
        let done = *self.outcomes.get_mut();
        for &t in self.run_times.iter().skip(done) {
            tracing::error!(job_id = %self.job_id, scheduled = %t, "run dropped before it finished");
            self.ctx.events.emit_with(|| Event::JobError {
                job_id: self.job_id.to_string(),
                store: self.store.to_string(),
                scheduled_run_time: t,
                error: JobError::not_runnable(
                    "the run was dropped before it finished: its executor was shut down or \
                     its task was cancelled",
                ),
            });
        }
    }
}

::tokio::task_local! {
    /// Set while a run is in progress on an async task: which scheduler it belongs to (the
    /// address of its [`Instances`]), so that `shutdown` called from inside a job does not
    /// wait for that very job.
    static CURRENT_RUN: usize;
}

thread_local! {
    /// [`CURRENT_RUN`] for runs on blocking threads.
    static CURRENT_RUN_THREAD: Cell<usize> = const { Cell::new(0) };
}

/// The scheduler (as its [`Instances`] address) whose run is in progress here, or 0.
fn current_run() -> usize {
    CURRENT_RUN
        .try_with(|k| *k)
        .unwrap_or_else(|_| CURRENT_RUN_THREAD.with(Cell::get))
}

/// Marks the current thread as running a run of `key` until dropped.
struct ThreadRunGuard(usize);

impl ThreadRunGuard {
    fn enter(key: usize) -> Self {
        ThreadRunGuard(CURRENT_RUN_THREAD.with(|c| c.replace(key)))
    }
}

impl Drop for ThreadRunGuard {
    fn drop(&mut self) {
        CURRENT_RUN_THREAD.with(|c| c.set(self.0));
    }
}

/// Whether the caller is a job run of the scheduler owning `instances`.
pub(crate) fn inside_run_of(instances: &Arc<Instances>) -> bool {
    current_run() == Arc::as_ptr(instances) as usize
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
    pub(crate) fn new(
        job_id: Arc<str>,
        store: Arc<str>,
        callable: Callable,
        run_times: Vec<DateTime<Utc>>,
        misfire_grace_time: Option<Duration>,
        ctx: Arc<RunContext>,
        slot: InstanceSlot,
    ) -> Self {
        JobRun {
            job_id,
            store,
            callable,
            run_times,
            misfire_grace_time,
            ctx,
            _slot: Some(slot),
            outcomes: AtomicUsize::new(0),
        }
    }

    /// The key [`inside_run_of`] compares: the scheduler this run belongs to.
    fn owner_key(&self) -> usize {
        self._slot
            .as_ref()
            .map_or(0, |s| Arc::as_ptr(&s.instances) as usize)
    }

    /// Runs `fut` marked as this run's (see [`inside_run_of`]).
    pub(crate) async fn scoped<F: std::future::Future>(&self, fut: F) -> F::Output {
        CURRENT_RUN.scope(self.owner_key(), fut).await
    }

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
                self.outcomes.fetch_add(1, Ordering::Relaxed);
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
        self.outcomes.fetch_add(1, Ordering::Relaxed);
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
        self.scoped(async {
            for &t in &self.run_times {
                if self.start(t) {
                    let result = invoke(&self.callable, &self.ctx.tasks).await;
                    self.finish(t, result);
                }
            }
        })
        .await;
    }

    /// Runs every scheduled time in order on the current (blocking) thread. Async bodies
    /// are driven with the runtime's handle, so call this from `spawn_blocking` or another
    /// thread that has a runtime context.
    pub fn run_blocking(self) {
        let _marked = ThreadRunGuard::enter(self.owner_key());
        for &t in &self.run_times {
            if self.start(t) {
                let result = invoke_blocking(&self.callable, &self.ctx.tasks);
                self.finish(t, result);
            }
        }
    }
}

/// Turns a job's panic payload into its error.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> JobError {
    JobError::Panicked {
        message: panic_text(payload),
    }
}

/// The message of a panic payload.
pub(crate) fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
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
    /// Runs in flight, all jobs together.
    total: AtomicUsize,
    /// Notified whenever a run ends.
    ended: ::tokio::sync::Notify,
}

impl Instances {
    /// Takes a slot for `job_id` unless `max` are already taken. A refused job leaves no
    /// entry behind.
    pub fn try_acquire(self: &Arc<Self>, job_id: &Arc<str>, max: u32) -> Option<InstanceSlot> {
        let mut running = self.running.lock_unpoisoned();
        let n = running.get(job_id).copied().unwrap_or(0);
        if n >= max {
            return None;
        }
        running.insert(job_id.clone(), n + 1);
        self.total.fetch_add(1, Ordering::SeqCst);
        Some(InstanceSlot {
            instances: self.clone(),
            job_id: job_id.clone(),
        })
    }

    /// How many jobs have a run in flight (one entry per job).
    #[cfg(test)]
    pub fn jobs_in_flight(&self) -> usize {
        self.running.lock_unpoisoned().len()
    }

    /// Waits until at most `n` runs are in flight.
    pub async fn wait_until_at_most(&self, n: usize) {
        loop {
            let ended = self.ended.notified();
            ::tokio::pin!(ended);
            ended.as_mut().enable();
            if self.total.load(Ordering::SeqCst) <= n {
                return;
            }
            ended.await;
        }
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
        let mut running = self.instances.running.lock_unpoisoned();
        if let Some(n) = running.get_mut(&self.job_id) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.job_id);
            }
        }
        drop(running);
        self.instances.total.fetch_sub(1, Ordering::SeqCst);
        self.instances.ended.notify_waiters();
    }
}

#[cfg(test)]
mod instance_tests {
    use std::sync::Arc;

    /// A job refused for `max_instances` (0, from a bad record) leaves no entry behind.
    #[test]
    fn a_refused_slot_leaves_no_entry() {
        let instances = Arc::new(super::Instances::default());
        for i in 0..100 {
            let id: Arc<str> = Arc::from(format!("job{i}"));
            assert!(instances.try_acquire(&id, 0).is_none());
        }
        assert_eq!(instances.jobs_in_flight(), 0);
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
