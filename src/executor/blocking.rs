//! A bounded pool of threads for blocking job bodies, like APScheduler's
//! `ThreadPoolExecutor(max_workers)`.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::run::JobRun;
use super::Executor;

/// Runs each submission on a blocking thread, at most `max_workers` at once.
///
/// Runs beyond the bound wait their turn; the misfire check happens when a run actually
/// starts on a thread, so a run that waited too long is [`JobMissed`](crate::Event::JobMissed).
#[derive(Debug)]
pub struct BlockingExecutor {
    workers: Arc<Semaphore>,
    max_workers: usize,
    tracker: TaskTracker,
}

impl BlockingExecutor {
    /// A pool running at most `max_workers` runs at once (at least 1).
    pub fn new(max_workers: usize) -> Self {
        let max_workers = max_workers.max(1);
        BlockingExecutor {
            workers: Arc::new(Semaphore::new(max_workers)),
            max_workers,
            tracker: TaskTracker::new(),
        }
    }

    /// The bound given at creation.
    pub fn max_workers(&self) -> usize {
        self.max_workers
    }
}

impl Default for BlockingExecutor {
    /// Ten workers, as APScheduler's default thread pool.
    fn default() -> Self {
        Self::new(10)
    }
}

#[async_trait::async_trait]
impl Executor for BlockingExecutor {
    fn kind(&self) -> &'static str {
        "blocking"
    }

    fn submit(&self, run: JobRun) {
        let workers = self.workers.clone();
        self.tracker.spawn(async move {
            // The semaphore is never closed, so acquiring only fails if it were.
            let Ok(permit) = workers.acquire_owned().await else {
                return;
            };
            if run.is_watched() {
                // A run with a timeout or a context is supervised from here; its blocking
                // body runs on a thread of its own, which a timeout can abandon (a thread
                // cannot be stopped): the permit then goes with the run's end, and the
                // abandoned thread no longer counts against `max_workers`.
                let _permit = permit;
                run.run().await;
                return;
            }
            let _ = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                run.run_blocking();
            })
            .await;
        });
    }

    async fn shutdown(&self, wait: bool) {
        self.tracker.close();
        if wait {
            self.tracker.wait().await;
        }
    }
}
