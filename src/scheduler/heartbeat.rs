//! The heartbeat: a task of its own that tells the other schedulers sharing a store that
//! this one is alive ([`JobStore::heartbeat`]), every third of the lease, from start to the
//! end of shutdown.
//!
//! Why not the loop: the loop's ledger pass writes the heartbeat too, but a pass can be
//! slow (a store running seconds behind, a takeover of a thousand runs), the loop makes no
//! pass while the scheduler is paused, and none while shutdown waits for the runs in
//! flight. Any of these would let the heartbeat lapse, and another scheduler would then mark
//! this one's started runs `abandoned` and start its claimed ones, while it is alive and
//! about to record their outcomes. A lapsed heartbeat must mean that the process is gone or
//! cut off from the store, nothing else.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Inner;

/// The shortest pause between two heartbeats, whatever the lease (a zero lease must not
/// spin).
const MIN_PERIOD: Duration = Duration::from_millis(10);

impl Inner {
    /// Starts the heartbeat task on the scheduler's runtime (its death with the runtime is
    /// the process's death, as far as the other schedulers can tell).
    pub(super) fn open_heartbeat(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let task = runtime.spawn(beat(Arc::downgrade(self)));
        if let Some(old) = self.life().heartbeat_task.replace(task) {
            old.abort();
        }
    }

    /// Stops the heartbeat: from now on, the other schedulers may take this one's runs
    /// over once its last heartbeat has run out.
    pub(super) fn close_heartbeat(&self) {
        if let Some(task) = self.life().heartbeat_task.take() {
            task.abort();
        }
    }
}

/// Writes the heartbeat of every shared store that records runs, all stores at once, then
/// waits a third of the lease; ends when aborted or when the scheduler is gone.
async fn beat(inner: Weak<Inner>) {
    while let Some(strong) = inner.upgrade() {
        let period = (strong.lease / 3).max(MIN_PERIOD);
        beat_once(&strong).await;
        drop(strong);
        tokio::time::sleep(period).await;
    }
}

/// One heartbeat per shared store with a ledger. A failure is only logged: the loop's own
/// pass meets the same store soon, and reports the outage (event, backoff) once. A write
/// still unanswered after a lease is given up (it would say "alive until" a time already
/// past), so that a hung connection cannot hold the next heartbeats back.
async fn beat_once(inner: &Inner) {
    let now = inner.clock.now();
    let patience = inner.lease.max(MIN_PERIOD);
    let beats = inner
        .stores()
        .into_iter()
        .filter(|(_, store)| store.is_persistent() && inner.ledger_on(store.as_ref()))
        .map(|(alias, store)| async move {
            match tokio::time::timeout(patience, store.heartbeat(now)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(store = %alias, error = %e, "heartbeat not written"),
                Err(_) => tracing::debug!(store = %alias, "heartbeat unanswered for a lease"),
            }
        });
    futures::future::join_all(beats).await;
}
