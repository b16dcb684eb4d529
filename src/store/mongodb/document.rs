//! Job documents as stored: reading their fields leniently, the version filter and the
//! version numbering of new jobs, and the values written. A leaf of the MongoDB store.

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};

use crate::job::Lease;
use crate::store::common::{from_micros_saturating, micros_ceil};

/// The fields of a stored document, read leniently (a corrupt document still has an id).
pub(super) struct Fields {
    pub(super) id: String,
    pub(super) job: Option<String>,
    /// 0 for a document without a version (see [`version_is`]).
    pub(super) version: u64,
    pub(super) lease: Option<Lease>,
    pub(super) next: Option<i64>,
}

pub(super) fn int(d: &Document, key: &str) -> Option<i64> {
    match d.get(key)? {
        Bson::Int64(v) => Some(*v),
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Double(v) => Some(*v as i64),
        _ => None,
    }
}

pub(super) fn fields(d: &Document) -> Fields {
    let id = match d.get("_id") {
        Some(Bson::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let lease = match (d.get_str("lease_owner").ok(), int(d, "lease_until")) {
        (Some(owner), Some(until)) => Some(Lease {
            owner: owner.to_string(),
            until: from_micros_saturating(until),
        }),
        _ => None,
    };
    Fields {
        id,
        job: d.get_str("job").ok().map(str::to_string),
        version: int(d, "version").unwrap_or(0).max(0) as u64,
        lease,
        next: int(d, "next_run_time"),
    }
}

/// The filter on `version` matching a document read as version `v`. A document written
/// without a version (by hand, or by another tool) reads as version 0 and matches it, so it
/// can be claimed and updated (which gives it a version) instead of never matching.
pub(super) fn version_is(v: u64) -> Bson {
    if v == 0 {
        doc! { "$in": [0_i64, Bson::Null] }.into()
    } else {
        Bson::Int64(v as i64)
    }
}

/// Versions of a new job start at `incarnation << INCARNATION_SHIFT` and count writes in
/// the low bits, so a job removed and added again under the same id never repeats a
/// version (no ABA: a write based on a read of the old job is fenced).
pub(super) const INCARNATION_SHIFT: u32 = 32;

pub(super) fn next_bson(t: Option<DateTime<Utc>>) -> Bson {
    t.map_or(Bson::Null, |t| Bson::Int64(micros_ceil(t)))
}

pub(super) fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    matches!(&*e.kind, ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == 11000)
}
