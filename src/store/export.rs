//! Jobs as a portable, versioned JSON document: what
//! [`Scheduler::export_jobs`](crate::Scheduler::export_jobs) writes and
//! [`StoreHandle::import_jobs`](crate::StoreHandle::import_jobs) reads (APScheduler 3.10's
//! `export_jobs`/`import_jobs`), so jobs move between any two stores (memory → PostgreSQL,
//! Redis → SQLite).
//!
//! Each job is its stored form ([`StoredJob`], the document the persistent stores keep), so
//! an export of an import is the same document again. A record its store could not load is
//! exported as it was stored, flagged, with the reason: never dropped, never imported.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::job::{JobRecord, StoredJob};

/// The format version [`JobExport::to_json`] writes and [`JobExport::from_json`] reads.
pub const EXPORT_FORMAT: u32 = 1;

/// Exported jobs (see the module docs).
///
/// ```
/// use apsched::store::JobExport;
/// let export = JobExport::from_json(r#"{"format": 1, "jobs": []}"#)?;
/// assert!(export.jobs.is_empty());
/// assert!(JobExport::from_json(r#"{"format": 99, "jobs": []}"#).is_err());
/// # Ok::<(), apsched::Error>(())
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobExport {
    /// [`EXPORT_FORMAT`] when written by this version.
    pub format: u32,
    /// The jobs, store by store, each store's by next run time.
    pub jobs: Vec<ExportedJob>,
}

/// One job of a [`JobExport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ExportedJob {
    /// A job, in its stored form.
    Job {
        /// The alias of the store it was exported from.
        store: String,
        /// The job.
        job: Box<StoredJob>,
    },
    /// A record its store could not load (corrupt, or of a newer schema), as stored.
    Unloadable {
        /// The alias of the store it was exported from.
        store: String,
        /// The record's id, as the store knows it.
        id: String,
        /// The record as the store keeps it (its JSON document, or the raw text).
        raw: String,
        /// Why it could not be loaded.
        reason: String,
    },
    /// A job that has no stored form: a closure in the memory store.
    NotExportable {
        /// The alias of the store it was exported from.
        store: String,
        /// The job id.
        id: String,
        /// Why.
        reason: String,
    },
}

impl ExportedJob {
    /// The job's id.
    pub fn id(&self) -> &str {
        match self {
            ExportedJob::Job { job, .. } => &job.id,
            ExportedJob::Unloadable { id, .. } | ExportedJob::NotExportable { id, .. } => id,
        }
    }

    /// An exported job from what a store's export returned: a loaded record (a closure
    /// becomes [`NotExportable`](ExportedJob::NotExportable)) or an unloadable one.
    pub(crate) fn from_store(
        store: &str,
        record: std::result::Result<JobRecord, UnloadableRecord>,
    ) -> Self {
        let record = match record {
            Ok(record) => record,
            Err(u) => {
                return ExportedJob::Unloadable {
                    store: store.to_string(),
                    id: u.id,
                    raw: u.raw,
                    reason: u.reason,
                }
            }
        };
        match record.to_stored() {
            Ok(job) => ExportedJob::Job {
                store: store.to_string(),
                job: Box::new(job),
            },
            Err(e) => ExportedJob::NotExportable {
                store: store.to_string(),
                id: record.id.clone(),
                reason: e.to_string(),
            },
        }
    }
}

/// A record a store keeps but cannot load, as [`JobStore::export_records`](super::JobStore::export_records)
/// returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnloadableRecord {
    /// The record's id, as the store knows it.
    pub id: String,
    /// The record as stored (its JSON document, or the raw text).
    pub raw: String,
    /// Why it could not be loaded.
    pub reason: String,
}

impl UnloadableRecord {
    /// A record `id` kept as `raw` that does not load, because of `reason`.
    pub fn new(id: impl Into<String>, raw: impl Into<String>, reason: impl Into<String>) -> Self {
        UnloadableRecord {
            id: id.into(),
            raw: raw.into(),
            reason: reason.into(),
        }
    }
}

/// What an import did, job by job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportReport {
    /// The ids written to the store.
    pub imported: Vec<String>,
    /// The ids not imported, with why (an unloadable or not exportable entry, an unknown
    /// executor, an unregistered task).
    pub skipped: Vec<(String, String)>,
}

impl JobExport {
    /// An export of `jobs` in the current format.
    pub fn new(jobs: Vec<ExportedJob>) -> Self {
        JobExport {
            format: EXPORT_FORMAT,
            jobs,
        }
    }

    /// The export as pretty-printed JSON.
    ///
    /// # Errors
    /// [`Error::Serde`] if a job's arguments cannot be written as JSON.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Reads an export written by [`to_json`](Self::to_json).
    ///
    /// # Errors
    /// [`Error::Serde`] for a document that does not parse; [`Error::InvalidJob`] for a
    /// format this version does not know (an export from a newer apsched).
    pub fn from_json(json: &str) -> Result<Self> {
        let export: JobExport = serde_json::from_str(json)?;
        if export.format != EXPORT_FORMAT {
            return Err(Error::InvalidJob {
                id: "(export)".into(),
                reason: format!(
                    "export format {} is not known to this version (it reads format \
                     {EXPORT_FORMAT}); import it with the apsched version that wrote it",
                    export.format
                ),
            });
        }
        Ok(export)
    }
}
