//! Where the scheduler gets the time from.
//!
//! Production code uses [`SystemClock`]. Tests use [`TestClock`], which follows Tokio's
//! paused time: with `#[tokio::test(start_paused = true)]` a year of schedule runs in
//! milliseconds, because sleeping auto-advances the virtual clock.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};

/// A source of the current UTC instant.
///
/// The scheduler sleeps with Tokio timers for `next_run_time - clock.now()`, so a clock must
/// advance at the same pace as Tokio's time for sleeps to end when expected.
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;

    /// The longest the scheduler sleeps on a Tokio timer before reading this clock again.
    ///
    /// Tokio's timers run on the monotonic clock, which does not follow a step of the wall
    /// clock and stands still while the machine is suspended; this bounds how late a run can
    /// be after either. Default: 1 s (the default misfire grace time), which costs an idle
    /// scheduler one clock read per second.
    fn max_sleep(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    /// Whether this clock reads the machine's real time, at the pace of
    /// [`std::time::Instant`]. The scheduler then ends its sleeps before a due time on a
    /// thread timer, which wakes within tens of microseconds of the time; Tokio's timers
    /// count whole milliseconds and wake up to 2 ms late. Default: `false`, Tokio's timers
    /// alone (which also follow Tokio's paused time in tests).
    fn is_real_time(&self) -> bool {
        false
    }
}

/// The machine's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn is_real_time(&self) -> bool {
        true
    }
}

/// A virtual clock that follows Tokio's (possibly paused) time from a chosen start instant.
///
/// `now()` is `start + (tokio::time::Instant::now() - instant at creation)`. Under
/// `tokio::time::pause()` the clock stands still until the runtime auto-advances (when every
/// task is idle) or the test calls
// `advance` and `set` exist with the `test-util` feature only: link them only then, so that
// rustdoc without the feature has no broken link.
#[cfg_attr(
    feature = "test-util",
    doc = "[`TestClock::advance`] / [`TestClock::set`] (feature `test-util`)."
)]
#[cfg_attr(
    not(feature = "test-util"),
    doc = "`TestClock::advance` / `TestClock::set` (feature `test-util`)."
)]
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
///
/// [`TestClock::jump`] moves the wall reading alone, as a clock step or a resume from
/// suspend does: Tokio's timers do not notice, the scheduler does at its next clock reading
/// (at most [`Clock::max_sleep`] later: 60 s by default for this clock, so that a virtual
/// month of schedule stays cheap; set it with [`TestClock::with_max_sleep`]).
#[derive(Debug, Clone)]
pub struct TestClock {
    anchor_utc: DateTime<Utc>,
    anchor: tokio::time::Instant,
    /// Microseconds added by [`TestClock::jump`], shared by every clone.
    jumped: Arc<AtomicI64>,
    max_sleep: std::time::Duration,
}

impl TestClock {
    /// A clock reading `start` now. Must be called inside a Tokio runtime.
    pub fn new(start: DateTime<Utc>) -> Self {
        TestClock {
            anchor_utc: start,
            anchor: tokio::time::Instant::now(),
            jumped: Arc::new(AtomicI64::new(0)),
            max_sleep: std::time::Duration::from_secs(60),
        }
    }

    /// Sets how long a scheduler using this clock sleeps at most before reading it again
    /// (see [`Clock::max_sleep`]).
    pub fn with_max_sleep(mut self, max_sleep: std::time::Duration) -> Self {
        self.max_sleep = max_sleep;
        self
    }

    /// Moves the wall reading forward by `by` without moving Tokio's time: what a step of
    /// the system clock, or a laptop resuming from suspend, looks like to a program. Timers
    /// already set fire at their monotonic deadline, not earlier.
    pub fn jump(&self, by: std::time::Duration) {
        let us = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        let _ = self
            .jumped
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |j| {
                Some(j.saturating_add(us))
            });
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
        let jumped = chrono::TimeDelta::microseconds(self.jumped.load(Ordering::SeqCst));
        chrono::TimeDelta::from_std(elapsed)
            .ok()
            .and_then(|d| self.anchor_utc.checked_add_signed(d))
            .and_then(|t| t.checked_add_signed(jumped))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    fn max_sleep(&self) -> std::time::Duration {
        self.max_sleep
    }
}

/// `t + d`, saturating at the largest instant chrono can represent. Every time addition in
/// the loop goes through here: a huge lease, poll interval or backoff must never panic.
pub(crate) fn saturating_add(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t - d`, saturating at the smallest instant chrono can represent.
pub(crate) fn saturating_sub(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}
