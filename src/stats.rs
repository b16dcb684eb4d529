//! Metrics on the [`metrics`](https://docs.rs/metrics) crate's facade, behind the `metrics`
//! feature: install any recorder (`metrics-exporter-prometheus`, ...) and these appear. Without
//! the feature every function here is empty and compiles away.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `apsched_runs_total` | counter | `store`, `outcome` | scheduled times by outcome decided by the loop: `missed`, `max_instances`, `error` |
//! | `apsched_store_call_seconds` | histogram | `store`, `call` | the loop's store calls: `acquire_due_jobs`, `release_jobs`, `next_run_time` |
//! | `apsched_store_errors_total` | counter | `store`, `call` | those calls that failed |
//! | `apsched_due_backlog_seconds` | gauge | `store` | how far the oldest due but unclaimed job is behind, after each pass (0 = none waits) |
//!
//! Labels name stores, not jobs, to keep the number of series small: what each job did is
//! in its events.

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

/// A scheduled time of a job in `store` had its outcome.
pub(crate) fn run_outcome(store: &str, outcome: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("apsched_runs_total", "store" => store.to_string(), "outcome" => outcome)
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (store, outcome);
}
