//! Where the scheduler gets the time from.
//!
//! Production code uses [`SystemClock`]. Tests use [`TestClock`], which follows Tokio's
//! paused time: with `#[tokio::test(start_paused = true)]` a year of schedule runs in
//! milliseconds, because sleeping auto-advances the virtual clock.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};

/// A source of the current UTC instant.
///
/// The scheduler sleeps with Tokio timers for `next_run_time - clock.now()`, so a clock must
/// advance at the same pace as Tokio's time for sleeps to end when expected.
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// The machine's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A virtual clock that follows Tokio's (possibly paused) time from a chosen start instant.
///
/// `now()` is `start + (tokio::time::Instant::now() - instant at creation)`. Under
/// `tokio::time::pause()` the clock stands still until the runtime auto-advances (when every
/// task is idle) or the test calls [`TestClock::advance`] / [`TestClock::set`].
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use apsched::clock::{Clock, TestClock};
/// use chrono::{TimeZone, Utc};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let clock = TestClock::new(Utc.with_ymd_and_hms(2024, 1, 15, 10, 0, 0).unwrap());
/// clock.advance(std::time::Duration::from_secs(90)).await;
/// assert_eq!(clock.now(), Utc.with_ymd_and_hms(2024, 1, 15, 10, 1, 30).unwrap());
/// # }
/// # main();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TestClock {
    anchor_utc: DateTime<Utc>,
    anchor: tokio::time::Instant,
}

impl TestClock {
    /// A clock reading `start` now. Must be called inside a Tokio runtime.
    pub fn new(start: DateTime<Utc>) -> Self {
        TestClock {
            anchor_utc: start,
            anchor: tokio::time::Instant::now(),
        }
    }

    /// Moves Tokio's paused time (and so this clock) forward by `by`, firing due timers.
    ///
    /// Requires paused time (`tokio::time::pause()` or `start_paused = true`) and the
    /// `test-util` feature.
    #[cfg(feature = "test-util")]
    pub async fn advance(&self, by: std::time::Duration) {
        tokio::time::advance(by).await;
    }

    /// Moves the clock forward to `t` (no-op if `t` is not in the future). Needs the
    /// `test-util` feature.
    #[cfg(feature = "test-util")]
    pub async fn set(&self, t: DateTime<Utc>) {
        if let Ok(d) = (t - self.now()).to_std() {
            self.advance(d).await;
        }
    }

    /// This clock as the `Arc<dyn Clock>` the scheduler builder takes.
    pub fn shared(&self) -> Arc<dyn Clock> {
        Arc::new(self.clone())
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.anchor);
        chrono::TimeDelta::from_std(elapsed)
            .ok()
            .and_then(|d| self.anchor_utc.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}
