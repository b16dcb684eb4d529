//! Which scheduler's job run is in progress on this task or thread, so that `shutdown` or
//! `remove_executor` called from inside a job does not wait for that very job.

use std::cell::Cell;
use std::sync::Arc;

use super::instances::Instances;

::tokio::task_local! {
    /// Set while a run is in progress on an async task: which scheduler it belongs to (the
    /// address of its [`Instances`]), so that `shutdown` called from inside a job does not
    /// wait for that very job.
    pub(super) static CURRENT_RUN: usize;
}

thread_local! {
    /// [`CURRENT_RUN`] for runs on blocking threads.
    static CURRENT_RUN_THREAD: Cell<usize> = const { Cell::new(0) };
}

/// The scheduler (as its [`Instances`] address) whose run is in progress here, or 0.
pub(super) fn current_run() -> usize {
    CURRENT_RUN
        .try_with(|k| *k)
        .unwrap_or_else(|_| CURRENT_RUN_THREAD.with(Cell::get))
}

/// Marks the current thread as running a run of `key` until dropped.
pub(super) struct ThreadRunGuard(usize);

impl ThreadRunGuard {
    pub(super) fn enter(key: usize) -> Self {
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
    current_run() == key_of(instances)
}

/// The key a run of the scheduler owning `instances` is marked with.
pub(super) fn key_of(instances: &Arc<Instances>) -> usize {
    Arc::as_ptr(instances) as usize
}
