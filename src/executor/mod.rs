//! Executors: where runs happen.
//!
//! The scheduler loop hands each batch of due runs to an executor as a [`JobRun`] and moves
//! on at once; the executor decides where it runs:
//!
//! - [`TokioExecutor`]: async jobs as Tokio tasks (the default executor).
//! - [`BlockingExecutor`]: blocking closures on a bounded thread pool.
//! - [`ProcessExecutor`]: external commands ([`CommandSpec`]) in child processes, at most N
//!   at once; with [`tasks_in_worker_mode`](ProcessExecutor::tasks_in_worker_mode), also
//!   registered tasks, each in a child re-executing this binary (see
//!   [`worker_main`](crate::worker_main)).
//! - [`LocalExecutor`]: `!Send` futures on a `LocalSet` of its own thread; it does not start
//!   again after its shutdown (see its "Starting again").
//!
//! Whatever the executor, [`JobRun`] applies the same rules: a run that starts later than
//! `misfire_grace_time` after its scheduled time is [`Event::JobMissed`]; a panic becomes
//! [`Event::JobError`]; success is [`Event::JobExecuted`] with the return value; a run past
//! its job's timeout is [`Event::JobTimeout`] (its token cancelled, then aborted after the
//! scheduler's grace period: docs/executors.md says what that means on each executor).
//!
//! Adding an executor is one file here holding it, its `mod` line and its `pub use` line.
//!
//! [`Event::JobMissed`]: crate::Event::JobMissed
//! [`Event::JobError`]: crate::Event::JobError
//! [`Event::JobExecuted`]: crate::Event::JobExecuted
//! [`Event::JobTimeout`]: crate::Event::JobTimeout

mod blocking;
mod current_run;
mod instances;
mod invoke;
mod local;
pub(crate) mod process;
mod run;
mod runs;
mod tokio;
mod traced;

pub use self::blocking::BlockingExecutor;
pub(crate) use self::current_run::inside_run_of;
pub(crate) use self::instances::Instances;
pub use self::local::LocalExecutor;
pub use self::process::command::CommandSpec;
pub use self::process::ProcessExecutor;
pub use self::run::JobRun;
pub(crate) use self::run::{RunContext, Watch};
pub(crate) use self::runs::RunRegistry;
pub use self::tokio::TokioExecutor;
use crate::job::Callable;

/// Runs submitted jobs.
///
/// Implement it to run jobs somewhere else (a remote worker, a test harness that starts runs
/// on demand); call [`JobRun::run`] or the [`JobRun::start`]/[`JobRun::finish`] pair so the
/// misfire and event rules stay the same. Only [`JobRun::run`] and [`JobRun::run_blocking`]
/// enforce a job's timeout and give a body its [`JobContext`](crate::JobContext).
#[async_trait::async_trait]
pub trait Executor: Send + Sync + 'static {
    /// A short name of the kind of executor, for tables and logs.
    fn kind(&self) -> &'static str;

    /// Whether this executor can run `callable`; the error says what to use instead.
    /// Checked by `add_job`, so an unsuitable job is refused up front. By default everything
    /// but a `!Send` job, which only a [`LocalExecutor`] can run.
    fn check(&self, callable: &Callable) -> Result<(), String> {
        if callable.is_local() {
            Err("a !Send job needs a LocalExecutor; add one and pick it".into())
        } else {
            Ok(())
        }
    }

    /// Starts running `run` somewhere and returns at once.
    fn submit(&self, run: JobRun);

    /// Stops accepting runs; with `wait`, returns once every run in flight has finished.
    async fn shutdown(&self, wait: bool);
}
