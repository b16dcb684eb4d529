//! Metrics on the [`metrics`](https://docs.rs/metrics) crate's facade, behind the `metrics`
//! feature: install any recorder (`metrics-exporter-prometheus`, ...) and these appear. Without
//! the feature every function here is empty and compiles away.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `apsched_runs_total` | counter | `outcome` | scheduled times by outcome: `executed`, `error`, `timeout`, `missed`, `max_instances` |
//! | `apsched_run_lateness_seconds` | histogram | — | how late each run started after its scheduled time |
//! | `apsched_run_duration_seconds` | histogram | `outcome` | how long each started run took (`executed`, `error` or `timeout`) |
//! | `apsched_running_instances` | gauge | — | runs in flight, all jobs |
//! | `apsched_store_call_seconds` | histogram | `store`, `call` | the loop's store calls: `acquire_due_jobs`, `release_jobs`, `next_run_time` |
//! | `apsched_store_errors_total` | counter | `store`, `call` | those calls that failed |
//! | `apsched_due_backlog_seconds` | gauge | `store` | how far the oldest due but unclaimed job is behind, after each pass (0 = none waits) |
//!
//! The loop's series are labelled by store; a run's series only by outcome, with static
//! keys, so that recording them allocates nothing on the run path. None is labelled by job,
//! to keep the number of series small: what each job did is in its events and spans.

#[cfg(feature = "metrics")]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The loop's call `call` on `store` took `elapsed` and succeeded or not.
pub(crate) fn store_call(store: &str, call: &'static str, elapsed: Duration, ok: bool) {
    #[cfg(feature = "metrics")]
    {
        let labels = [("store", store.to_string()), ("call", call.to_string())];
        metrics::histogram!("apsched_store_call_seconds", &labels).record(elapsed.as_secs_f64());
        if !ok {
            metrics::counter!("apsched_store_errors_total", &labels).increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (store, call, elapsed, ok);
}

/// After a pass: the oldest due but unclaimed job of `store` is `behind` late.
pub(crate) fn backlog(store: &str, behind: Duration) {
    #[cfg(feature = "metrics")]
    metrics::gauge!("apsched_due_backlog_seconds", "store" => store.to_string())
        .set(behind.as_secs_f64());
    #[cfg(not(feature = "metrics"))]
    let _ = (store, behind);
}

/// A scheduled time had its outcome. The key is static for each outcome, so recording one
/// allocates nothing (the run path's allocations are counted by a test).
pub(crate) fn run_outcome(outcome: &'static str) {
    #[cfg(feature = "metrics")]
    match outcome {
        "executed" => metrics::counter!("apsched_runs_total", "outcome" => "executed").increment(1),
        "error" => metrics::counter!("apsched_runs_total", "outcome" => "error").increment(1),
        "timeout" => metrics::counter!("apsched_runs_total", "outcome" => "timeout").increment(1),
        "missed" => metrics::counter!("apsched_runs_total", "outcome" => "missed").increment(1),
        _ => metrics::counter!("apsched_runs_total", "outcome" => "max_instances").increment(1),
    }
    #[cfg(not(feature = "metrics"))]
    let _ = outcome;
}

/// When the scheduled time a run is on started, for its duration: a field of every run,
/// zero-sized without the `metrics` feature.
#[derive(Debug, Default)]
pub(crate) struct RunClock {
    /// Nanoseconds from [`epoch`] to the start, plus one; 0 while no time is running.
    #[cfg(feature = "metrics")]
    started: AtomicU64,
}

#[cfg(feature = "metrics")]
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl RunClock {
    /// A scheduled time starts, `lateness()` after it was due (not computed without the
    /// feature).
    pub(crate) fn started(&self, lateness: impl FnOnce() -> Duration) {
        #[cfg(feature = "metrics")]
        {
            let since = epoch().elapsed().as_nanos();
            let since = u64::try_from(since).unwrap_or(u64::MAX - 1);
            self.started.store(since + 1, Ordering::Relaxed);
            metrics::histogram!("apsched_run_lateness_seconds").record(lateness().as_secs_f64());
            metrics::gauge!("apsched_running_instances").increment(1.0);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = lateness;
    }

    /// The scheduled time that [`started`](Self::started) ended with `outcome`; a time that
    /// never started counts only its outcome.
    pub(crate) fn finished(&self, outcome: &'static str) {
        #[cfg(feature = "metrics")]
        {
            let started = self.started.swap(0, Ordering::Relaxed);
            if started != 0 {
                let since = u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX);
                let took = Duration::from_nanos(since.saturating_sub(started - 1));
                metrics::gauge!("apsched_running_instances").decrement(1.0);
                let took = took.as_secs_f64();
                match outcome {
                    "executed" => {
                        metrics::histogram!("apsched_run_duration_seconds", "outcome" => "executed")
                            .record(took)
                    }
                    "error" => {
                        metrics::histogram!("apsched_run_duration_seconds", "outcome" => "error")
                            .record(took)
                    }
                    _ => {
                        metrics::histogram!("apsched_run_duration_seconds", "outcome" => "timeout")
                            .record(took)
                    }
                }
            }
        }
        run_outcome(outcome);
    }
}
