//! The watch on `R/index` that wakes the scheduler loop (see [`ZooKeeperStore`]'s section
//! on wake-ups), and what the store knows about when the loop looks next.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use super::names::parse_index;
use crate::store::StoreContext;
use crate::sync::MutexExt;

/// The poll interval while the watch is not armed (capped by the configured one).
pub(super) const UNWATCHED_POLL: Duration = Duration::from_secs(1);
/// First delay before the watcher retries after a failure; doubles up to [`WATCH_MAX_BACKOFF`].
pub(super) const WATCH_MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest delay between the watcher's attempts.
pub(super) const WATCH_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// `Plan::planned` when the store does not know when the loop will look again.
pub(super) const UNKNOWN: i64 = i64::MAX;

/// When the loop will look at the store again, as far as the store knows.
#[derive(Debug)]
pub(super) struct Plan {
    /// The earliest claimable time (µs) `next_run_time` last reported to the loop;
    /// [`UNKNOWN`] when there is none, before the first report and after a failure.
    pub(super) planned: i64,
    /// The earliest index entry (µs) created since that report. The next report wakes the
    /// loop if it is earlier than the new planned time: the entry may be missing from the
    /// listing behind that report (created during the pass, or seen late by a lagging
    /// server), and no event is lost between the watcher and the loop, whatever the order.
    pub(super) since: i64,
}

impl Plan {
    pub(super) const fn new() -> Plan {
        Plan {
            planned: UNKNOWN,
            since: UNKNOWN,
        }
    }
}

/// A listing of `R/index`: (µs, job node name), sorted.
pub(super) type Listing = Arc<Vec<(i64, String)>>;

/// What the store and its watcher task share.
#[derive(Debug)]
pub(super) struct WatchState {
    pub(super) plan: std::sync::Mutex<Plan>,
    /// Whether the watch is armed (so the long fallback poll is enough).
    pub(super) armed: AtomicBool,
    /// Counts what may have changed `R/index`: every watch event, arming and disarming,
    /// and this store's own writes.
    pub(super) changes: AtomicU64,
    /// The last listing of `R/index` and the value of `changes` read before it was taken.
    /// While the watch is armed and `changes` has not moved, the index is as listed (as
    /// far as the watch has told), so a pass reuses it instead of listing every entry
    /// again: `next_run_time` and the claim of one pass share one listing, and idle
    /// passes (the fallback poll) list nothing.
    pub(super) listing: std::sync::Mutex<Option<(u64, Listing)>>,
}

impl WatchState {
    pub(super) fn new() -> WatchState {
        WatchState {
            plan: std::sync::Mutex::new(Plan::new()),
            armed: AtomicBool::new(false),
            changes: AtomicU64::new(0),
            listing: std::sync::Mutex::new(None),
        }
    }

    /// Something may have changed the index: the saved listing is stale.
    pub(super) fn changed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn set_armed(&self, armed: bool) {
        self.armed.store(armed, Ordering::SeqCst);
        self.changed();
    }

    pub(super) fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock_unpoisoned()
    }

    /// The watcher saw an index entry for `at` (µs) appear: whether to wake the loop.
    pub(super) fn entry_created(&self, at: i64) -> bool {
        let mut plan = self.plan();
        plan.since = plan.since.min(at);
        at < plan.planned
    }

    /// `next_run_time` reports `next` to the loop: whether to wake the loop again.
    pub(super) fn reported(&self, next: Option<i64>) -> bool {
        let mut plan = self.plan();
        plan.planned = next.unwrap_or(UNKNOWN);
        let missed = plan.since < plan.planned;
        plan.since = UNKNOWN;
        missed
    }
}

/// The task that keeps a persistent recursive watch on `R/index` and wakes the loop (see
/// the [`ZooKeeperStore`]'s section on wake-ups).
pub(super) struct Watcher {
    pub(super) hosts: String,
    pub(super) index: String,
    pub(super) session_timeout: Duration,
    pub(super) shared: Arc<WatchState>,
    pub(super) ctx: StoreContext,
    pub(super) stop: CancellationToken,
}

/// Why a watch session ended.
pub(super) enum Ended {
    Stopped,
    /// The session is gone (expired, closed): open a new one.
    Lost(String),
    /// The server cannot watch (no `addWatch` before ZooKeeper 3.6): give up, poll instead.
    Unsupported,
}

impl Watcher {
    pub(super) async fn run(self, armed: tokio::sync::oneshot::Sender<()>) {
        let mut armed = Some(armed);
        let mut delay = WATCH_MIN_BACKOFF;
        let mut healthy = true;
        loop {
            match self.session(&mut armed, &mut delay, &mut healthy).await {
                Ended::Stopped => return,
                Ended::Unsupported => {
                    tracing::warn!(
                        index = %self.index,
                        "ZooKeeper refuses persistent watches (needs 3.6+); polling every 1 s"
                    );
                    return;
                }
                Ended::Lost(why) => {
                    self.shared.set_armed(false);
                    if healthy {
                        tracing::warn!(index = %self.index, error = %why, "ZooKeeper watch lost; re-arming");
                    } else {
                        tracing::debug!(index = %self.index, error = %why, "ZooKeeper watch still down; retrying");
                    }
                    healthy = false;
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(WATCH_MAX_BACKOFF);
        }
    }

    /// One session: connect, arm the watch, follow its events until the session ends.
    pub(super) async fn session(
        &self,
        armed_signal: &mut Option<tokio::sync::oneshot::Sender<()>>,
        delay: &mut Duration,
        healthy: &mut bool,
    ) -> Ended {
        let connect = zk::Client::connector()
            .with_session_timeout(self.session_timeout)
            .with_connection_timeout(Duration::from_secs(2))
            .with_fail_eagerly()
            .connect(&self.hosts);
        let client = tokio::select! {
            _ = self.stop.cancelled() => return Ended::Stopped,
            r = tokio::time::timeout(self.session_timeout, connect) => match r {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Ended::Lost(format!("connecting: {e}")),
                Err(_) => return Ended::Lost("connecting: timed out".into()),
            },
        };
        let add = client.watch(&self.index, zk::AddWatchMode::PersistentRecursive);
        let mut watcher = tokio::select! {
            _ = self.stop.cancelled() => return Ended::Stopped,
            r = tokio::time::timeout(self.session_timeout, add) => match r {
                Ok(Ok(w)) => w,
                Ok(Err(zk::Error::Unimplemented)) => return Ended::Unsupported,
                Ok(Err(e)) => return Ended::Lost(format!("adding the watch: {e}")),
                Err(_) => return Ended::Lost("adding the watch: timed out".into()),
            },
        };
        self.armed();
        if let Some(tx) = armed_signal.take() {
            let _ = tx.send(());
        } else {
            tracing::info!(index = %self.index, "ZooKeeper watch re-armed");
            // Changes made while the watch was down were not seen.
            self.ctx.wake_scheduler();
        }
        *delay = WATCH_MIN_BACKOFF;
        *healthy = true;
        let prefix = format!("{}/", self.index);
        loop {
            let event = tokio::select! {
                _ = self.stop.cancelled() => return Ended::Stopped,
                e = watcher.changed() => e,
            };
            // Any event may mean a change the saved listing lacks.
            self.shared.changed();
            match event.event_type {
                zk::EventType::Session => match event.session_state {
                    // Terminal: the watcher must not be polled again.
                    s if s.is_terminated() => return Ended::Lost(format!("session {s}")),
                    zk::SessionState::Disconnected => {
                        self.shared.set_armed(false);
                        tracing::debug!(index = %self.index, "ZooKeeper watch disconnected");
                    }
                    zk::SessionState::SyncConnected => {
                        // Same session, watch restored by the client; events may be lost.
                        self.armed();
                        self.ctx.wake_scheduler();
                    }
                    _ => {}
                },
                zk::EventType::NodeCreated => {
                    let at = event
                        .path
                        .strip_prefix(&prefix)
                        .and_then(parse_index)
                        .map_or(i64::MIN, |(t, _)| t);
                    if self.shared.entry_created(at) {
                        self.ctx.wake_scheduler();
                    }
                }
                // A removed entry or a later one never makes a job due sooner.
                _ => {}
            }
        }
    }

    pub(super) fn armed(&self) {
        self.shared.set_armed(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_wakes_for_entries_before_the_planned_time() {
        let w = WatchState::new();
        assert!(w.entry_created(500), "nothing reported yet: always wake");
        assert!(
            !w.reported(Some(100)),
            "500 is after 100: the loop looks by then"
        );
        assert!(!w.entry_created(200), "after the planned time");
        assert!(!w.reported(Some(150)));
        assert!(w.entry_created(120), "earlier than planned");
        assert!(!w.reported(Some(120)), "the listing had it");
        // During the next pass the earliest job is claimed and an entry for 300 appears;
        // the pass reports 1000: its listing missed the entry, which must wake the loop.
        assert!(!w.entry_created(300));
        assert!(w.reported(Some(1000)));
        assert!(!w.reported(Some(1000)), "checked once");
        assert!(!w.reported(None));
        assert!(w.entry_created(i64::MAX - 1), "no jobs: always wake");
    }
}
