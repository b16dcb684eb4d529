//! [`RunRecord`]: what the ledger keeps for one run, and its [`RunState`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use arcstr::ArcStr;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::job::RunId;

/// Where a run is in its life: `Claimed` → `Started` → exactly one terminal state.
///
/// Stored as the lowercase name ([`as_str`](Self::as_str)), so operators can query it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunState {
    /// Created with the claim (or by `run_now`/`backfill`); not handed to an executor yet.
    /// A claimed run may be [`queued`](RunRecord::queued), waiting for a free instance.
    Claimed,
    /// Handed to an executor by a live scheduler. If that scheduler dies now, the run
    /// becomes [`Abandoned`](Self::Abandoned).
    Started,
    /// Ran and returned `Ok`.
    Executed,
    /// Ran and failed (an `Err`, a panic, a non-zero exit), or could not run.
    Error,
    /// Ran past its job's timeout: its token was cancelled and, if it did not end within the
    /// grace period, it was aborted (`JOB_TIMEOUT`).
    TimedOut,
    /// Could not start within the job's `misfire_grace_time`, or was merged into a later
    /// run by `coalesce`.
    Missed,
    /// Not run because of the job's overlap policy or `max_instances`.
    Skipped,
    /// Its scheduler died after starting it: the outcome is unknown.
    Abandoned,
    /// Cancelled (`cancel_run`, the overlap policy `CancelOther`, `shutdown_now`) before it
    /// finished.
    Cancelled,
}

impl RunState {
    /// Every state, in life order.
    pub const ALL: [RunState; 9] = [
        RunState::Claimed,
        RunState::Started,
        RunState::Executed,
        RunState::Error,
        RunState::TimedOut,
        RunState::Missed,
        RunState::Skipped,
        RunState::Abandoned,
        RunState::Cancelled,
    ];

    /// The stored name: `claimed`, `started`, `executed`, `error`, `timed_out`, `missed`,
    /// `skipped`, `abandoned` or `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Claimed => "claimed",
            RunState::Started => "started",
            RunState::Executed => "executed",
            RunState::Error => "error",
            RunState::TimedOut => "timed_out",
            RunState::Missed => "missed",
            RunState::Skipped => "skipped",
            RunState::Abandoned => "abandoned",
            RunState::Cancelled => "cancelled",
        }
    }

    /// Whether the run failed: `error` or `timed_out`.
    pub fn is_failure(self) -> bool {
        matches!(self, RunState::Error | RunState::TimedOut)
    }

    /// Whether the run has its outcome (anything but claimed and started).
    pub fn is_terminal(self) -> bool {
        !self.is_active()
    }

    /// Whether the run is claimed or started (it counts against `max_instances`).
    pub fn is_active(self) -> bool {
        matches!(self, RunState::Claimed | RunState::Started)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("'{s}' is not a run state (claimed, started, executed, error, timed_out, missed, skipped, abandoned, cancelled)"))
    }
}

/// The most bytes of a run's serialised return value the ledger keeps; a longer value is
/// replaced by a note saying how long it was.
pub const OUTPUT_LIMIT: usize = 16 * 1024;

/// One run of a job as the ledger keeps it: one per (job, scheduled time), and one per
/// manual run (`run_now`, `backfill`).
///
/// Stores keep it in their own schema (docs/ledger.md lists each); the document stores keep
/// this struct's JSON ([`to_json`](Self::to_json)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunRecord {
    /// The run's identity, unique across schedulers sharing a store.
    pub run_id: RunId,
    /// The job. Shared: the records of one claim, and the run they start, hold one copy.
    pub job_id: ArcStr,
    /// The scheduled time (for `run_now`, the time it was asked for).
    pub scheduled: DateTime<Utc>,
    /// The scheduler that claimed (or took over) the run. Shared: one copy per scheduler.
    pub owner: ArcStr,
    /// Made by `run_now` or `backfill`, not by the trigger.
    pub manual: bool,
    /// Which attempt at its scheduled time this is: 1, then 2, 3, … for retries (see
    /// [`RetryPolicy`](crate::RetryPolicy)).
    pub attempt: u32,
    /// Where the run is.
    pub state: RunState,
    /// A claimed run waiting for a running instance to finish (overlap policies
    /// `BufferOne`, `BufferAll`, `CancelOther`).
    #[serde(default)]
    pub queued: bool,
    /// Another run asked this one to stop (overlap policy `CancelOther`); its owner cancels
    /// its token.
    #[serde(default)]
    pub cancel_requested: bool,
    /// When it was claimed.
    pub submitted_at: DateTime<Utc>,
    /// For a retry (attempt 2 and later): when it is due. It waits `claimed`, holding its
    /// instance slot, until then; its misfire grace time counts from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// When it was handed to an executor (`None` for a run that never started, missed ones
    /// included).
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached its terminal state.
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed, was missed, skipped, abandoned or cancelled.
    #[serde(default)]
    pub error: Option<String>,
    /// The return value as JSON text (at most [`OUTPUT_LIMIT`] bytes), for runs that
    /// returned one.
    #[serde(default)]
    pub output: Option<String>,
}

impl RunRecord {
    /// A claimed run of `job_id` at `scheduled`, owned by `owner`, with a fresh run id.
    pub fn claimed(
        job_id: impl Into<ArcStr>,
        scheduled: DateTime<Utc>,
        owner: impl Into<ArcStr>,
        now: DateTime<Utc>,
    ) -> Self {
        Self::claimed_as(RunId::next(), job_id, scheduled, owner, now)
    }

    /// [`claimed`](Self::claimed), with the run id `run_id`.
    pub(crate) fn claimed_as(
        run_id: RunId,
        job_id: impl Into<ArcStr>,
        scheduled: DateTime<Utc>,
        owner: impl Into<ArcStr>,
        now: DateTime<Utc>,
    ) -> Self {
        RunRecord {
            run_id,
            job_id: job_id.into(),
            scheduled,
            owner: owner.into(),
            manual: false,
            attempt: 1,
            state: RunState::Claimed,
            queued: false,
            cancel_requested: false,
            submitted_at: now,
            retry_at: None,
            started_at: None,
            finished_at: None,
            error: None,
            output: None,
        }
    }

    /// The next attempt at this run's scheduled time, due at `retry_at`: a claimed record
    /// owned by `owner`, with a fresh run id.
    pub fn retry(&self, owner: &str, now: DateTime<Utc>, retry_at: DateTime<Utc>) -> Self {
        let mut next = RunRecord::claimed(self.job_id.clone(), self.scheduled, owner, now);
        next.manual = self.manual;
        next.attempt = self.attempt.saturating_add(1);
        next.retry_at = Some(retry_at);
        next
    }

    /// When this run is due: its retry time for a retry, else its scheduled time.
    pub fn due_at(&self) -> DateTime<Utc> {
        self.retry_at.unwrap_or(self.scheduled)
    }

    /// How late it started (`None` until it started).
    pub fn lateness(&self) -> Option<Duration> {
        Some(
            (self.started_at? - self.scheduled)
                .to_std()
                .unwrap_or_default(),
        )
    }

    /// How long it ran (`None` unless it started and finished).
    pub fn duration(&self) -> Option<Duration> {
        Some(
            (self.finished_at? - self.started_at?)
                .to_std()
                .unwrap_or_default(),
        )
    }

    /// The return value, parsed (`None` if there is none or it does not parse as `T`).
    pub fn output_as<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(self.output.as_deref()?).ok()
    }

    /// The JSON form the document stores keep.
    pub fn to_json(&self) -> String {
        // A record holds only strings, numbers and times: it always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses the JSON form (for stores and tools reading records back).
    pub fn from_json(json: &str) -> Result<Self, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    /// Applies a terminal outcome, unless the record already has one (the first terminal
    /// state wins: a run a taker marked abandoned stays abandoned).
    pub fn apply(&mut self, outcome: &RunOutcome) -> bool {
        if self.state.is_terminal() {
            return false;
        }
        self.state = outcome.state;
        // A missed run never started (the store marked it started when it was handed to an
        // executor, which found it too late).
        self.started_at = match outcome.state {
            RunState::Missed => None,
            _ => outcome.started_at.or(self.started_at),
        };
        self.finished_at = Some(outcome.finished_at);
        self.error.clone_from(&outcome.error);
        self.output.clone_from(&outcome.output);
        self.queued = false;
        true
    }
}

/// The terminal outcome of one run, as the scheduler reports it to the store
/// ([`JobStore::finish_runs`](crate::store::JobStore::finish_runs)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunOutcome {
    /// The run.
    pub run_id: RunId,
    /// Its job (stores that index runs by job use it).
    pub job_id: ArcStr,
    /// The terminal state.
    pub state: RunState,
    /// When it started, if it did (a missed run never starts).
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// What went wrong, for every state but `executed`.
    pub error: Option<String>,
    /// The return value as JSON text, bounded by [`OUTPUT_LIMIT`].
    pub output: Option<String>,
    /// The run's next attempt (a failed run with retries left): the store creates this
    /// record ([`JobStore::add_runs`](crate::store::JobStore::add_runs)) before it writes
    /// the outcome, so a crash in between cannot lose the retry.
    pub retry: Option<Box<RunRecord>>,
}

impl RunOutcome {
    /// The outcome `state` of run `run_id` of `job_id`, ended at `finished_at`.
    pub fn new(
        run_id: RunId,
        job_id: impl Into<ArcStr>,
        state: RunState,
        finished_at: DateTime<Utc>,
    ) -> Self {
        RunOutcome {
            run_id,
            job_id: job_id.into(),
            state,
            started_at: None,
            finished_at,
            error: None,
            output: None,
            retry: None,
        }
    }

    /// With the time it started.
    pub fn started_at(mut self, t: Option<DateTime<Utc>>) -> Self {
        self.started_at = t;
        self
    }

    /// With an error text.
    pub fn error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }

    /// With a return value, serialised and bounded by [`OUTPUT_LIMIT`].
    pub fn output(mut self, value: &serde_json::Value) -> Self {
        self.output = bounded_output(value);
        self
    }
}

/// `value` as JSON text, or a note when it is longer than [`OUTPUT_LIMIT`]; `None` for
/// `null` (a job returning `()`).
fn bounded_output(value: &serde_json::Value) -> Option<String> {
    if value.is_null() {
        return None;
    }
    let text = value.to_string();
    if text.len() <= OUTPUT_LIMIT {
        return Some(text);
    }
    Some(
        serde_json::json!({
            "apsched_truncated": format!("the return value was {} bytes of JSON; the ledger keeps at most {OUTPUT_LIMIT}", text.len())
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_their_names() {
        for st in RunState::ALL {
            assert_eq!(st.as_str().parse::<RunState>().unwrap(), st);
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{st}\""));
        }
        assert!("done"
            .parse::<RunState>()
            .unwrap_err()
            .contains("not a run state"));
    }

    #[test]
    fn the_first_terminal_state_wins() {
        let t = chrono::DateTime::UNIX_EPOCH;
        let mut r = RunRecord::claimed("j", t, "me", t);
        assert!(r.apply(&RunOutcome::new(r.run_id, "j", RunState::Abandoned, t)));
        assert!(!r.apply(&RunOutcome::new(r.run_id, "j", RunState::Executed, t)));
        assert_eq!(r.state, RunState::Abandoned);
        let back = RunRecord::from_json(&r.to_json()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn outputs_are_bounded() {
        assert_eq!(bounded_output(&serde_json::Value::Null), None);
        assert_eq!(bounded_output(&serde_json::json!(3)).as_deref(), Some("3"));
        let big = serde_json::Value::String("x".repeat(OUTPUT_LIMIT * 2));
        let kept = bounded_output(&big).unwrap();
        assert!(kept.len() < OUTPUT_LIMIT && kept.contains("apsched_truncated"));
    }
}
