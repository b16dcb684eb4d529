//! [`RunStats`]: a job's record at a glance, computed from its kept runs.

use std::time::Duration;

use super::{RunRecord, RunState};

/// Aggregates over a job's kept runs (see [`RunRetention`](super::RunRetention)): what an
/// operator's dashboard shows first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunStats {
    /// Runs considered (the kept ones, active ones included).
    pub runs: usize,
    /// The newest run with a terminal state.
    pub last_finished: Option<RunRecord>,
    /// That run's state.
    pub last_outcome: Option<RunState>,
    /// How many of the newest finished runs in a row ended in `error`, `timed_out` or
    /// `abandoned` (`missed` and `skipped` runs neither count nor break the streak).
    pub consecutive_failures: usize,
    /// Median run time of the runs that started and finished.
    pub duration_p50: Option<Duration>,
    /// 99th percentile run time.
    pub duration_p99: Option<Duration>,
    /// Median lateness (start time minus scheduled time) of the runs that started.
    pub lateness_p50: Option<Duration>,
    /// 99th percentile lateness.
    pub lateness_p99: Option<Duration>,
}

impl RunStats {
    /// The aggregates of `runs` (any order).
    pub fn from_runs(runs: &[RunRecord]) -> Self {
        let mut finished: Vec<&RunRecord> = runs.iter().filter(|r| r.state.is_terminal()).collect();
        finished.sort_by(|a, b| {
            (b.finished_at, b.scheduled, b.run_id).cmp(&(a.finished_at, a.scheduled, a.run_id))
        });
        let consecutive_failures = finished
            .iter()
            .filter(|r| !matches!(r.state, RunState::Missed | RunState::Skipped))
            .take_while(|r| r.state.is_failure() || r.state == RunState::Abandoned)
            .count();
        let mut durations: Vec<Duration> = runs.iter().filter_map(RunRecord::duration).collect();
        let mut lateness: Vec<Duration> = runs.iter().filter_map(RunRecord::lateness).collect();
        durations.sort_unstable();
        lateness.sort_unstable();
        RunStats {
            runs: runs.len(),
            last_finished: finished.first().map(|r| (*r).clone()),
            last_outcome: finished.first().map(|r| r.state),
            consecutive_failures,
            duration_p50: percentile(&durations, 50),
            duration_p99: percentile(&durations, 99),
            lateness_p50: percentile(&lateness, 50),
            lateness_p99: percentile(&lateness, 99),
        }
    }
}

/// The nearest-rank percentile of sorted `values`.
fn percentile(values: &[Duration], p: usize) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    let rank = (p * values.len()).div_ceil(100).max(1);
    values.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, TimeDelta, Utc};

    fn run(i: i64, state: RunState, secs: i64) -> RunRecord {
        let t = DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(i * 100);
        let mut r = RunRecord::claimed("j", t, "me", t);
        r.state = state;
        r.started_at = Some(t + TimeDelta::seconds(1));
        r.finished_at = Some(t + TimeDelta::seconds(1 + secs));
        r
    }

    #[test]
    fn aggregates() {
        let runs = vec![
            run(1, RunState::Executed, 10),
            run(2, RunState::Error, 20),
            run(3, RunState::Skipped, 0),
            run(4, RunState::Error, 30),
        ];
        let s = RunStats::from_runs(&runs);
        assert_eq!(s.runs, 4);
        assert_eq!(s.last_outcome, Some(RunState::Error));
        assert_eq!(s.consecutive_failures, 2);
        assert_eq!(s.duration_p50, Some(Duration::from_secs(10)));
        assert_eq!(s.duration_p99, Some(Duration::from_secs(30)));
        assert_eq!(s.lateness_p50, Some(Duration::from_secs(1)));
        assert_eq!(RunStats::from_runs(&[]).last_outcome, None);
    }
}
