//! The default executor: each run is a Tokio task on the scheduler's runtime.

use std::future::Future;

use tokio_util::task::TaskTracker;

use super::run::JobRun;
use super::Executor;

/// Runs each submission as a Tokio task (blocking closures go to `spawn_blocking`).
///
/// This is the `"default"` executor unless the builder names another.
#[derive(Debug, Default)]
pub struct TokioExecutor {
    tracker: TaskTracker,
}

impl TokioExecutor {
    /// A new executor.
    pub fn new() -> Self {
        Self::default()
    }

    /// The task a run becomes. Its future is what every spawn allocates, so its size is
    /// guarded (`run_task_stays_small`).
    fn task(&self, run: JobRun) -> impl Future<Output = ()> + Send + 'static {
        self.tracker.track_future(run.run())
    }
}

#[async_trait::async_trait]
impl Executor for TokioExecutor {
    fn kind(&self) -> &'static str {
        "tokio"
    }

    fn submit(&self, run: JobRun) {
        ::tokio::spawn(self.task(run));
    }

    async fn shutdown(&self, wait: bool) {
        self.tracker.close();
        if wait {
            self.tracker.wait().await;
        }
    }
}

#[cfg(test)]
mod size_tests {
    use std::sync::Arc;

    use super::TokioExecutor;
    use crate::clock::SystemClock;
    use crate::event::EventBus;
    use crate::executor::{Instances, JobRun, RunContext, RunRegistry};
    use crate::job::Callable;
    use crate::task::TaskRegistry;

    /// The task every run of the default executor becomes: its future is allocated with the
    /// spawn (issue 16). 360 bytes (Rust 1.94, Tokio 1.54; it was 640 while `JobRun::run`
    /// and `scoped` were `async fn`s, which hold their arguments twice): the `JobRun` (160,
    /// its `watch` one null pointer for a plain run, its ledger run ids a boxed slice), the task-local scope, the loop over the
    /// scheduled times, `invoke`'s state (80, the job body's future is boxed), the boxed
    /// path of watched runs (a pointer), the tracker's token, and the tag saying whether the
    /// run is traced (8: a traced run's span and body are boxed, see `traced.rs`). If this
    /// fails, box the new rare path (as `invoke` does for commands and tasks) rather than
    /// raise the bound.
    #[test]
    fn run_task_stays_small() {
        let instances = Arc::new(Instances::default());
        let id = arcstr::literal!("job");
        let ctx = Arc::new(RunContext {
            clock: Arc::new(SystemClock),
            events: EventBus::new(1),
            tasks: Arc::new(TaskRegistry::new()),
            runs: RunRegistry::default(),
            timeout_grace: std::time::Duration::from_secs(5),
            scheduler: std::sync::Weak::new(),
            ledger: Default::default(),
            writer: Default::default(),
        });
        let run = JobRun::new(
            id.clone(),
            Arc::from("default"),
            Callable::from_async(|| async {}),
            vec![chrono::Utc::now()],
            None,
            ctx,
            instances.try_acquire(&id, 1).unwrap(),
        );
        let task = TokioExecutor::new().task(run);
        let size = std::mem::size_of_val(&task);
        // The `mongodb` feature (through bson) turns on serde_json's `preserve_order`, which
        // makes every `serde_json::Value` (a task's arguments and result in `invoke`'s
        // state) an `IndexMap`-backed one: 40 bytes more, for every build with that store.
        // The `metrics` feature adds the run's start time (8 bytes).
        // The run ledger's ids of the run's times add a small vector with one id inline
        // (24 bytes, 8 more than a boxed slice: no allocation per run).
        let bound = if cfg!(feature = "mongodb") { 408 } else { 368 }
            + if cfg!(feature = "metrics") { 8 } else { 0 };
        assert!(
            size <= bound,
            "a run's task grew to {size} bytes (bound {bound})"
        );
    }
}
