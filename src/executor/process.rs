//! Child processes: each run an external command, at most N at once.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::{Executor, JobRun};
use crate::job::Callable;

/// Runs [`CommandSpec`](super::CommandSpec) jobs in child processes, at most
/// `max_processes` at once.
///
/// A non-zero exit or a signal is [`JobError::Exited`](crate::JobError::Exited) with the
/// status and the tail of stderr; a run over its timeout is killed and reported as
/// [`JobError::TimedOut`](crate::JobError::TimedOut). Closures cannot cross a process
/// boundary, so this executor refuses them when the job is added.
#[derive(Debug)]
pub struct ProcessExecutor {
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
}

impl ProcessExecutor {
    /// At most `max_processes` children at once (at least 1).
    pub fn new(max_processes: usize) -> Self {
        ProcessExecutor {
            slots: Arc::new(Semaphore::new(max_processes.max(1))),
            tracker: TaskTracker::new(),
        }
    }
}

#[async_trait::async_trait]
impl Executor for ProcessExecutor {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn check(&self, callable: &Callable) -> Result<(), String> {
        match callable {
            Callable::Command(_) => Ok(()),
            _ => Err(
                "the process executor runs commands (CommandSpec); a closure or task \
                      cannot cross a process boundary"
                    .into(),
            ),
        }
    }

    fn submit(&self, run: JobRun) {
        let slots = self.slots.clone();
        self.tracker.spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            run.run().await;
        });
    }

    async fn shutdown(&self, wait: bool) {
        self.tracker.close();
        if wait {
            self.tracker.wait().await;
        }
    }
}
