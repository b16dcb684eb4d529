//! How the run ledger sits in Redis: its keys under the prefix, run ids as key parts and
//! sorted-set members, and a [`RunRecord`] as the fields of its hash.
//!
//! The layout (`P` is the store's prefix; the table is also in the store's rustdoc and in
//! docs/ledger.md):
//!
//! | key | type | content |
//! |---|---|---|
//! | `P:run:<run>` | hash | one run record (fields: [`run_fields`]) |
//! | `P:runs:all` | sorted set | every run, scored by scheduled time (µs) |
//! | `P:runs:job:<job>` | sorted set | the job's runs, scored by scheduled time (µs) |
//! | `P:runs:done:<job>` | sorted set | the job's finished runs, scored by scheduled time (µs) |
//! | `P:runs:finished` | sorted set | every finished run, scored by finish time (µs) |
//! | `P:runs:done_count` | sorted set | job id, scored by its number of finished runs |
//! | `P:runs:active:<job>` | hash | the job's active runs: run → `claimed`, `queued` or `started` |
//! | `P:runs:stamps` | hash | job id → stamp, renewed whenever the job gains an active run, a run of it starts or is promoted |
//! | `P:runs:stamp_seq` | string | counter the stamps come from (never reused) |
//! | `P:runs:owned:<scheduler>` | set | the scheduler's active runs |
//! | `P:runs:owners` | set | schedulers with active runs |
//! | `P:runs:queued` | set | jobs that may have queued runs |
//! | `P:runs:cancel` | set | active runs flagged `cancel_requested` |
//! | `P:heartbeats` | sorted set | scheduler id, scored by the time it is alive until (µs) |
//!
//! `<run>` is the run id in decimal, zero-padded to 19 digits, so that runs with one score
//! sort by run id (members with equal scores sort as strings).

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};

use super::layout::score_of;
use crate::job::RunId;
use crate::ledger::{RunRecord, RunState};
use crate::store::common::micros_ceil;

/// The ledger's key names under one prefix that Rust code uses (see the module docs; the
/// scripts build the others from [`base`](Self::base)).
pub(super) struct RunKeys {
    /// `P:` (the prefix with its separator): the scripts build per-run and per-job keys
    /// from it.
    pub(super) base: String,
    pub(super) all: String,
    pub(super) finished: String,
    pub(super) done_count: String,
    /// `P:heartbeats`.
    pub(super) heartbeats: String,
}

impl RunKeys {
    /// The keys under `p`.
    pub(super) fn new(p: &str) -> Self {
        RunKeys {
            base: format!("{p}:"),
            all: format!("{p}:runs:all"),
            finished: format!("{p}:runs:finished"),
            done_count: format!("{p}:runs:done_count"),
            heartbeats: format!("{p}:heartbeats"),
        }
    }

    /// The hash of one run.
    pub(super) fn run(&self, member: &str) -> String {
        format!("{}run:{member}", self.base)
    }

    /// The sorted set of a job's runs.
    pub(super) fn job(&self, job_id: &str) -> String {
        format!("{}runs:job:{job_id}", self.base)
    }

    /// The sorted set of a job's finished runs.
    pub(super) fn done(&self, job_id: &str) -> String {
        format!("{}runs:done:{job_id}", self.base)
    }

    /// The hash of a job's active runs.
    pub(super) fn active(&self, job_id: &str) -> String {
        format!("{}runs:active:{job_id}", self.base)
    }

    /// The stamps hash.
    pub(super) fn stamps(&self) -> String {
        format!("{}runs:stamps", self.base)
    }
}

/// A run id as key part and sorted-set member: zero-padded to 19 digits (ids are below
/// 2⁶³), so that string order is number order.
pub(super) fn member(id: RunId) -> String {
    format!("{:019}", id.get())
}

/// The run id a member stands for.
pub(super) fn parse_member(m: &str) -> Option<RunId> {
    m.parse().ok().map(RunId::from_raw)
}

/// A time as the ledger stores it in a record: RFC 3339 in UTC with as many fractional
/// digits as it needs (the JSON form of job times), so a record reads back exactly.
pub(super) fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A time as a sorted-set score: µs since the epoch, rounded up (see
/// [`score_of`]).
pub(super) fn time_score(t: DateTime<Utc>) -> String {
    score_of(micros_ceil(t)).to_string()
}

/// The active-runs value of a run: `claimed`, `queued` or `started`.
pub(super) fn active_value(state: RunState, queued: bool) -> &'static str {
    match (state, queued) {
        (RunState::Claimed, true) => "queued",
        (s, _) => s.as_str(),
    }
}

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

/// The fields of a run's hash. Optional ones are left out when empty, so the hash says
/// exactly what the record does.
pub(super) fn run_fields(r: &RunRecord) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("run_id", r.run_id.to_string()),
        ("job_id", r.job_id.to_string()),
        ("scheduled", time_text(r.scheduled)),
        ("owner", r.owner.to_string()),
        ("manual", flag(r.manual)),
        ("attempt", r.attempt.to_string()),
        ("state", r.state.as_str().to_string()),
        ("queued", flag(r.queued)),
        ("cancel_requested", flag(r.cancel_requested)),
        ("submitted_at", time_text(r.submitted_at)),
    ];
    if let Some(t) = r.retry_at {
        f.push(("retry_at", time_text(t)));
    }
    if let Some(t) = r.started_at {
        f.push(("started_at", time_text(t)));
    }
    if let Some(t) = r.finished_at {
        f.push(("finished_at", time_text(t)));
    }
    if let Some(e) = &r.error {
        f.push(("error", e.clone()));
    }
    if let Some(o) = &r.output {
        f.push(("output", o.clone()));
    }
    f
}

/// Reads a run's hash back (`member` is its key's run id part). The error says which field
/// is missing or does not parse.
pub(super) fn run_from_fields(
    member: &str,
    f: &HashMap<String, String>,
) -> Result<RunRecord, String> {
    let run_id = parse_member(member).ok_or_else(|| format!("'{member}' is not a run id"))?;
    let get = |k: &str| {
        f.get(k)
            .map(String::as_str)
            .ok_or_else(|| format!("field '{k}' is missing"))
    };
    let time = |k: &str| -> Result<DateTime<Utc>, String> {
        let v = get(k)?;
        v.parse::<DateTime<Utc>>()
            .map_err(|e| format!("field '{k}' ('{v}') is not an RFC 3339 time: {e}"))
    };
    let opt_time = |k: &str| -> Result<Option<DateTime<Utc>>, String> {
        if f.contains_key(k) {
            time(k).map(Some)
        } else {
            Ok(None)
        }
    };
    let boolean = |k: &str| -> Result<bool, String> {
        match get(k)? {
            "1" => Ok(true),
            "0" => Ok(false),
            v => Err(format!("field '{k}' ('{v}') is not 0 or 1")),
        }
    };
    let attempt = get("attempt")?;
    let mut r = RunRecord::claimed(
        get("job_id")?,
        time("scheduled")?,
        get("owner")?,
        time("submitted_at")?,
    );
    r.run_id = run_id;
    r.manual = boolean("manual")?;
    r.attempt = attempt
        .parse()
        .map_err(|_| format!("field 'attempt' ('{attempt}') is not a number"))?;
    r.state = get("state")?
        .parse()
        .map_err(|e: String| format!("field 'state': {e}"))?;
    r.queued = boolean("queued")?;
    r.cancel_requested = boolean("cancel_requested")?;
    r.retry_at = opt_time("retry_at")?;
    r.started_at = opt_time("started_at")?;
    r.finished_at = opt_time("finished_at")?;
    r.error = f.get("error").cloned();
    r.output = f.get("output").cloned();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_their_fields() {
        let t = "2026-01-02T03:04:05.123456789Z".parse().unwrap();
        let mut r = RunRecord::claimed("a:b", t, "me", t);
        r.error = Some(String::new());
        r.finished_at = Some(t);
        r.state = RunState::Error;
        let f: HashMap<String, String> = run_fields(&r)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(run_from_fields(&member(r.run_id), &f).unwrap(), r);
        // A retry keeps its attempt and its time.
        let retry = r.retry("me", t, t + chrono::TimeDelta::nanoseconds(1));
        let rf: HashMap<String, String> = run_fields(&retry)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(run_from_fields(&member(retry.run_id), &rf).unwrap(), retry);
        assert!(!f.contains_key("retry_at"));
        let mut bad = f.clone();
        bad.insert("state".into(), "done".into());
        assert!(run_from_fields(&member(r.run_id), &bad)
            .unwrap_err()
            .contains("not a run state"));
        bad.remove("owner");
        assert!(run_from_fields(&member(r.run_id), &bad)
            .unwrap_err()
            .contains("'owner' is missing"));
    }

    #[test]
    fn members_sort_as_numbers() {
        let (a, b) = (RunId::from_raw(9), RunId::from_raw(10));
        assert!(member(a) < member(b));
        assert_eq!(parse_member(&member(b)), Some(b));
    }
}
