//! The default executor: each run is a Tokio task on the scheduler's runtime.

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
}

#[async_trait::async_trait]
impl Executor for TokioExecutor {
    fn kind(&self) -> &'static str {
        "tokio"
    }

    fn submit(&self, run: JobRun) {
        self.tracker.spawn(run.run());
    }

    async fn shutdown(&self, wait: bool) {
        self.tracker.close();
        if wait {
            self.tracker.wait().await;
        }
    }
}
