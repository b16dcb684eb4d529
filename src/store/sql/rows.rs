//! Rows as read from and written to the table: reading columns of any type without failing
//! the whole read, turning a row into a job, and remembering rows that cannot be loaded.

use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::core::{Core, Started};
use super::dialect::Dialect;
use crate::job::{Callable, JobRecord, Lease};
use crate::store::common::{from_micros, micros_ceil};

/// A row to write: a claimed row written back, or a new one ([`Core::add_jobs`]).
pub(super) struct ClaimRow {
    pub(super) id: String,
    pub(super) next: Option<i64>,
    pub(super) doc: String,
    pub(super) version: i64,
}

/// A row as read from the table. Any column may hold what this store never writes (a row
/// edited by hand, an SQLite value of another storage class): such a row is a corrupt
/// record like any other, reported and kept, never an error of the whole read.
pub(super) struct RawRow {
    pub(super) id: String,
    /// The version, or [`UNREADABLE`] (the key under which a bad row is remembered).
    pub(super) version: i64,
    /// The other columns, or why one of them cannot be read.
    pub(super) columns: std::result::Result<Columns, String>,
}

pub(super) struct Columns {
    pub(super) doc: String,
    pub(super) lease_owner: Option<String>,
    pub(super) lease_until: Option<i64>,
    pub(super) next_run_time: Option<i64>,
}

/// The version a row whose `version` column cannot be read is remembered under.
pub(super) const UNREADABLE: i64 = i64::MIN;

pub(super) fn version_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What a row is remembered under in [`Reported`]: its version, bit for bit.
pub(super) fn fp(version: i64) -> u64 {
    version as u64
}

pub(super) fn version_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl<DB> Core<DB>
where
    DB: Dialect,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// The id in a row's first column. It is text everywhere; only SQLite can hold another
    /// storage class in it (a BLOB), which is read as text if it is UTF-8.
    pub(super) fn read_id(row: &DB::Row) -> String {
        row.try_get::<String, _>(0)
            .or_else(|_| row.try_get_unchecked::<String, _>(0))
            .unwrap_or_else(|e| format!("<unreadable id: {e}>"))
    }

    /// Reads a row of `Statements::cols`, column by column: a value of an unexpected type
    /// makes the row corrupt, not the read.
    pub(super) fn read_row(row: &DB::Row) -> RawRow {
        let id = Self::read_id(row);
        let cannot = |column: &str, e: &sqlx::Error| format!("its `{column}` column: {e}");
        let version = row.try_get::<i64, _>(2);
        let columns = match &version {
            Err(e) => Err(cannot("version", e)),
            Ok(_) => (|| {
                Ok(Columns {
                    doc: row.try_get(1).map_err(|e| cannot("doc", &e))?,
                    lease_owner: row.try_get(3).map_err(|e| cannot("lease_owner", &e))?,
                    lease_until: row.try_get(4).map_err(|e| cannot("lease_until", &e))?,
                    next_run_time: row.try_get(5).map_err(|e| cannot("next_run_time", &e))?,
                })
            })(),
        };
        RawRow {
            id,
            version: version.unwrap_or(UNREADABLE),
            columns,
        }
    }
}

impl<DB: Dialect> Core<DB> {
    /// Parses a row into a job, checking that its task is registered. On failure the row is
    /// reported once (event + error log) and remembered as bad, and the reason returned.
    ///
    /// The `next_run_time` column is the job's next run time: it is what every query
    /// selects and orders by. A document whose copy disagrees (written by hand, or by
    /// something other than apsched) is reported once and otherwise ignored; the job's next
    /// write rewrites it. So a due column with a paused document neither deletes the job nor
    /// leaves it due for ever, and a due column with a future document runs at the column's
    /// time rather than being selected again on every pass.
    pub(super) fn load(
        &self,
        st: &Started,
        raw: &RawRow,
    ) -> std::result::Result<JobRecord, String> {
        match Self::parse(st, raw) {
            Ok((job, mismatch)) => {
                self.bad.forget(&raw.id);
                if let Some(m) = mismatch {
                    if self.noted.note(&raw.id, fp(raw.version)) {
                        st.ctx.report_problem(&raw.id, &m);
                    }
                }
                Ok(job)
            }
            Err(reason) => {
                self.report_bad(st, &raw.id, raw.version, &reason);
                Err(reason)
            }
        }
    }

    /// A row as a job, and what its document and columns disagree on (if anything).
    pub(super) fn parse(
        st: &Started,
        raw: &RawRow,
    ) -> std::result::Result<(JobRecord, Option<String>), String> {
        let c = raw.columns.as_ref().map_err(Clone::clone)?;
        let column_time = match c.next_run_time {
            None => None,
            Some(us) => Some(from_micros(us).ok_or_else(|| {
                format!("its next_run_time column ({us} µs) is outside the dates apsched handles")
            })?),
        };
        let lease = match (&c.lease_owner, c.lease_until.and_then(from_micros)) {
            (Some(owner), Some(until)) => Some(Lease {
                owner: owner.clone(),
                until,
            }),
            _ => None,
        };
        let mut job = JobRecord::from_json(&c.doc, version_u64(raw.version), lease)
            .map_err(|e| format!("its JSON does not parse: {e}"))?;
        if job.id != raw.id {
            return Err(format!("its JSON names another id ('{}')", job.id));
        }
        if let Callable::Task { name, .. } = &job.callable {
            if !st.ctx.has_task(name) {
                return Err(format!(
                    "its task '{name}' is not registered with this scheduler \
                     (SchedulerBuilder::task)"
                ));
            }
        }
        let mut mismatch = None;
        if job.next_run_time.map(micros_ceil) != c.next_run_time {
            let show = |t: Option<DateTime<Utc>>| {
                t.map_or_else(|| "paused".to_string(), |t| t.to_rfc3339())
            };
            mismatch = Some(format!(
                "job '{}': its next_run_time column says {} but its document says {}; the \
                 column is used (the job's next write rewrites the document)",
                raw.id,
                show(column_time),
                show(job.next_run_time)
            ));
            job.next_run_time = column_time;
        }
        Ok((job, mismatch))
    }

    /// Reports a row that cannot be loaded, once per row and version (event + error log),
    /// and remembers it so that it is neither claimed nor counted as due.
    pub(super) fn report_bad(&self, st: &Started, id: &str, version: i64, reason: &str) {
        if self.bad.note(id, fp(version)) {
            st.ctx.report_corrupt(id, reason);
        }
    }

    /// Whether a row is known bad at this version (skip it without parsing or reporting).
    pub(super) fn known_bad(&self, id: &str, version: i64) -> bool {
        self.bad.is_known(id, fp(version))
    }

    pub(super) fn bad_count(&self) -> i64 {
        self.bad.len() as i64
    }
}
