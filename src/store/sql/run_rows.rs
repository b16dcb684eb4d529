//! The run ledger's rows: the columns of `<table>_runs` in the order every statement uses,
//! times as microseconds, a row read back into a [`RunRecord`] without failing the whole
//! read, and what the ledger remembers between calls ([`LedgerMemo`]).

use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Database, Decode, Row, Type};

use crate::job::RunId;
use crate::ledger::{RunRecord, RunState};
use crate::store::common::{from_micros, Reported};
use crate::sync::MutexExt;

/// The columns of a run row, in the order inserts bind them and reads return them.
/// `retry_at` comes last: it was added by schema version 3 (`ALTER TABLE … ADD COLUMN`), and
/// every position before it stays as it was.
pub(super) const RUN_COLS: &str = "run_id, job_id, scheduled, slot, owner, manual, attempt, \
     state, queued, cancel_requested, submitted_at, started_at, finished_at, error, output, \
     retry_at";

/// The placeholders of one run row in an insert (as many as [`RUN_COLS`] has columns).
pub(super) const RUN_ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// The condition selecting active runs, spelled exactly as the partial index on them
/// (PostgreSQL, SQLite) is, so that the planners use it.
pub(super) const ACTIVE: &str = "state IN ('claimed', 'started')";

/// The terminal states as an SQL list (what retention may delete: a row whose state is
/// anything else, a hand-edited one included, is never pruned).
pub(super) fn terminal_list() -> String {
    RunState::ALL
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A time as the ledger stores it: microseconds since the epoch (sub-microsecond digits
/// are dropped; every time apsched makes is whole microseconds or coarser).
pub(super) fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// A run id as stored (ids are below 2^63).
pub(super) fn id_i64(id: RunId) -> i64 {
    i64::try_from(id.get()).unwrap_or(i64::MAX)
}

/// The `slot` column: the attempt for a scheduled run (so the unique index on job,
/// scheduled time and slot allows one record per attempt at a scheduled time: the first
/// attempt and each retry), `NULL` for a manual one (any number, retries included).
pub(super) fn slot(run: &RunRecord) -> Option<i64> {
    (!run.manual).then_some(i64::from(run.attempt))
}

/// A row of the runs table that does not read as a record: what is known of it and why.
#[derive(Debug)]
pub(super) struct BadRun {
    pub(super) run_id: String,
    pub(super) job_id: String,
    pub(super) reason: String,
}

/// Reads a row of [`RUN_COLS`] column by column: a value this store never writes (a row
/// edited by hand, an SQLite value of another storage class, an unknown state) makes the
/// row bad, never the read.
pub(super) fn read_run<DB>(row: &DB::Row) -> Result<RunRecord, BadRun>
where
    DB: Database,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    for<'q> bool: Decode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    let run_id = row.try_get::<i64, _>(0);
    let job_id = row.try_get::<String, _>(1);
    let bad = |reason: String| BadRun {
        run_id: run_id
            .as_ref()
            .map_or_else(|_| "<unreadable>".to_string(), |id| id.to_string()),
        job_id: job_id.as_ref().cloned().unwrap_or_default(),
        reason,
    };
    let col = |name: &str, e: sqlx::Error| format!("its `{name}` column: {e}");
    let time = |name: &str, us: i64| {
        from_micros(us).ok_or_else(|| {
            format!("its `{name}` column ({us} µs) is outside the dates apsched handles")
        })
    };
    let opt_time = |name: &str, us: Option<i64>| us.map(|us| time(name, us)).transpose();
    (|| {
        let id = *run_id
            .as_ref()
            .map_err(|e| format!("its `run_id` column: {e}"))?;
        let id = u64::try_from(id).map_err(|_| format!("its run id {id} is negative"))?;
        let job_id = job_id
            .as_ref()
            .map_err(|e| format!("its `job_id` column: {e}"))?
            .as_str()
            .into();
        let state: String = row.try_get(7).map_err(|e| col("state", e))?;
        let attempt: i64 = row.try_get(6).map_err(|e| col("attempt", e))?;
        Ok(RunRecord {
            run_id: RunId::from_raw(id),
            job_id,
            scheduled: time(
                "scheduled",
                row.try_get(2).map_err(|e| col("scheduled", e))?,
            )?,
            owner: row
                .try_get::<String, _>(4)
                .map_err(|e| col("owner", e))?
                .into(),
            manual: row.try_get(5).map_err(|e| col("manual", e))?,
            attempt: u32::try_from(attempt)
                .map_err(|_| format!("its attempt {attempt} is out of range"))?,
            state: state.parse::<RunState>()?,
            queued: row.try_get(8).map_err(|e| col("queued", e))?,
            cancel_requested: row.try_get(9).map_err(|e| col("cancel_requested", e))?,
            submitted_at: time(
                "submitted_at",
                row.try_get(10).map_err(|e| col("submitted_at", e))?,
            )?,
            retry_at: opt_time("retry_at", row.try_get(15).map_err(|e| col("retry_at", e))?)?,
            started_at: opt_time(
                "started_at",
                row.try_get(11).map_err(|e| col("started_at", e))?,
            )?,
            finished_at: opt_time(
                "finished_at",
                row.try_get(12).map_err(|e| col("finished_at", e))?,
            )?,
            error: row.try_get(13).map_err(|e| col("error", e))?,
            output: row.try_get(14).map_err(|e| col("output", e))?,
        })
    })()
    .map_err(bad)
}

/// What the ledger of one store remembers between calls.
#[derive(Debug, Default)]
pub(crate) struct LedgerMemo {
    /// Run rows reported as unreadable, by run id, with a fingerprint of why: each is
    /// reported once per content.
    pub(super) bad: Reported,
    /// The last job whose runs retention looked at: the next pass goes on after it, so
    /// every job gets its turn while each pass stays bounded.
    pub(super) prune_after: Mutex<Option<String>>,
}

impl LedgerMemo {
    /// Forgets everything (the store starts again).
    pub(super) fn clear(&self) {
        self.bad.clear();
        *self.prune_after.lock_unpoisoned() = None;
    }

    /// Whether `bad` is news (not reported before with this reason).
    pub(super) fn first_report(&self, bad: &BadRun) -> bool {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bad.reason.hash(&mut h);
        self.bad.note(&bad.run_id, h.finish())
    }
}
