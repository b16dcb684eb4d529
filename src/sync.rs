//! Locking that outlives a panic, and that lets a task wait for a busy lock without
//! blocking its worker thread.
//!
//! A panic while a lock is held poisons it. The scheduler's locks guard plain bookkeeping
//! (lists, maps, handles) that every writer leaves consistent between statements, and a
//! job's panic is reported as an event, not propagated: so a poisoned lock is taken as it
//! is rather than turning one panic into a panic on every later call.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

/// [`Mutex::lock`] that ignores poisoning (see the module docs).
pub(crate) trait MutexExt<T> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T>;
}

impl<T> MutexExt<T> for Mutex<T> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How many times [`lock_yielding`] yields to the runtime before it blocks.
const YIELDS: usize = 64;

/// [`MutexExt::lock_unpoisoned`] for async code holding the lock briefly and never across
/// an `await`: while another task holds it, this task yields to the runtime instead of
/// blocking its worker thread, which meanwhile runs other tasks.
///
/// A store's lock is busy for long stretches in a storm of due jobs: the loop claims a
/// batch of a thousand jobs under it, the run writer records a batch of outcomes. A worker
/// blocked on it idles (half of a two-core machine), while the runs the loop has just
/// started wait in its queue. After [`YIELDS`] yields it blocks, so a wait with nothing
/// else to run does not spin for long.
pub(crate) async fn lock_yielding<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    for _ in 0..YIELDS {
        // Not awaited inside the `match`: the guard (and the error holding one) must not
        // live across the `await`, or the future would no longer be `Send`.
        match mutex.try_lock() {
            Ok(guard) => return guard,
            Err(TryLockError::Poisoned(e)) => return e.into_inner(),
            Err(TryLockError::WouldBlock) => {}
        }
        tokio::task::yield_now().await;
    }
    mutex.lock_unpoisoned()
}

/// [`RwLock::read`] and [`RwLock::write`] that ignore poisoning (see the module docs).
pub(crate) trait RwLockExt<T> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T>;
    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> RwLockExt<T> for RwLock<T> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::sync::Mutex;

    use super::{lock_yielding, MutexExt};

    #[tokio::test]
    // The test's own guard is held across the polls on purpose: it is the busy lock.
    #[allow(clippy::await_holding_lock)]
    async fn a_busy_lock_yields_to_the_runtime_instead_of_blocking() {
        let mutex = Mutex::new(1);
        let held = mutex.lock_unpoisoned();
        let mut waiting = pin!(lock_yielding(&mutex));
        // Blocking here would never return: this task holds the lock.
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        drop(held);
        assert_eq!(*waiting.await, 1);
    }

    #[tokio::test]
    async fn a_poisoned_lock_is_taken_as_it_is() {
        let mutex = std::sync::Arc::new(Mutex::new(1));
        let m = mutex.clone();
        let _ = std::thread::spawn(move || {
            let _guard = m.lock_unpoisoned();
            // The test's point: a thread dies holding the lock.
            panic!("poisons the lock");
        })
        .join();
        assert!(mutex.is_poisoned());
        assert_eq!(*lock_yielding(&mutex).await, 1);
    }
}
