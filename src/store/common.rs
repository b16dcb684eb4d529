//! What every persistent store repeats, written once: times as microseconds, lease
//! expiry, the versions of new jobs, whose lease stops a claim, the order `get_all_jobs`
//! promises, and the tracker of records already reported as corrupt.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::export::UnloadableRecord;
use crate::job::JobRecord;
#[cfg(any(feature = "redis", feature = "mongodb", feature = "zookeeper"))]
use crate::job::Lease;
use crate::sync::MutexExt;

/// Microseconds since the epoch, rounded up: the form persistent stores index next run
/// times in, so that a stored time never says a job is due before it is.
pub(crate) fn micros_ceil(t: DateTime<Utc>) -> i64 {
    let us = t.timestamp_micros();
    if t.timestamp_subsec_nanos().is_multiple_of(1000) {
        us
    } else {
        us.saturating_add(1)
    }
}

/// The time `us` microseconds after the epoch, if apsched can represent it.
pub(crate) fn from_micros(us: i64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_micros(us)
}

/// [`from_micros`], saturating at the latest representable time: the inverse of
/// [`micros_ceil`] for the stores that keep every index value they wrote.
#[cfg(any(feature = "redis", feature = "mongodb", feature = "zookeeper"))]
pub(crate) fn from_micros_saturating(us: i64) -> DateTime<Utc> {
    from_micros(us).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// When a lease taken at `now` for `lease` ends, saturating at the latest representable
/// time (a `Duration::MAX` lease never expires rather than overflowing).
pub(crate) fn lease_until(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(lease)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The version a persistent store gives a job it adds (or a replacement of one): random in
/// `[2^32, 2^62)`, then bumped by one per write. The random start is the job's incarnation:
/// a job removed and added again under the same id starts elsewhere in a range of 2^62
/// versions, so a writer still holding a version of the removed job is fenced (a stale
/// version matches only by a chance of about one in 2^62 per write of the new job). The
/// memory store, which needs no such chance, counts instead.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub(crate) fn first_version() -> u64 {
    (rand::random::<u64>() >> 2) | (1 << 32)
}

/// Whether a lease stops `owner` from claiming the job at `now`.
#[cfg(any(feature = "redis", feature = "mongodb", feature = "zookeeper"))]
pub(crate) fn held_by_other(lease: Option<&Lease>, owner: &str, now: DateTime<Utc>) -> bool {
    lease.is_some_and(|l| l.until > now && l.owner != owner)
}

/// When `owner` could claim a job due at `next` with this lease: `max(next, lease.until)`
/// for a lease held by another scheduler.
#[cfg(any(feature = "redis", feature = "mongodb", feature = "zookeeper"))]
pub(crate) fn claimable_at(
    next: DateTime<Utc>,
    lease: Option<&Lease>,
    owner: &str,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    match lease {
        Some(l) if held_by_other(Some(l), owner, now) => next.max(l.until),
        _ => next,
    }
}

/// Sorts by next run time (paused last), ties by id: the order `get_all_jobs` promises.
pub(crate) fn sort_jobs(jobs: &mut [JobRecord]) {
    jobs.sort_by(|a, b| match (a.next_run_time, b.next_run_time) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.id.cmp(&b.id)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.id.cmp(&b.id),
    });
}

/// A fingerprint of a stored document and its version: what [`Reported`] remembers, so
/// that a record is reported again only once it changed.
#[cfg(any(feature = "redis", feature = "mongodb", feature = "zookeeper"))]
pub(crate) fn fingerprint(doc: &str, version: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    doc.hash(&mut h);
    version.hash(&mut h);
    h.finish()
}

/// Records already reported, by id, with a fingerprint of what was reported (a version, or
/// a [`fingerprint`] of the document): each record is reported once per content, and a
/// corrupt one is neither claimed nor counted as due while its content stays.
#[derive(Debug, Default)]
pub(crate) struct Reported {
    seen: Mutex<HashMap<String, u64>>,
}

impl Reported {
    /// Remembers `id` with `fp`; true if it was not known with this fingerprint (so the
    /// caller reports it now).
    pub(crate) fn note(&self, id: &str, fp: u64) -> bool {
        self.seen.lock_unpoisoned().insert(id.to_string(), fp) != Some(fp)
    }

    /// Forgets `id` (it was rewritten, loaded fine, or removed).
    pub(crate) fn forget(&self, id: &str) {
        let mut seen = self.seen.lock_unpoisoned();
        if !seen.is_empty() {
            seen.remove(id);
        }
    }

    /// Forgets every record.
    pub(crate) fn clear(&self) {
        self.seen.lock_unpoisoned().clear();
    }

    /// How many records are remembered.
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
    pub(crate) fn len(&self) -> usize {
        self.seen.lock_unpoisoned().len()
    }

    /// The ids remembered.
    #[cfg(feature = "mongodb")]
    pub(crate) fn ids(&self) -> Vec<String> {
        self.seen.lock_unpoisoned().keys().cloned().collect()
    }
}

/// The look-ups of the stores that skip known records while claiming (all but MongoDB,
/// which filters by [`Reported::ids`]).
#[cfg(any(
    feature = "sqlite",
    feature = "postgres",
    feature = "mysql",
    feature = "redis",
    feature = "zookeeper"
))]
impl Reported {
    /// Whether `id` was reported with exactly this fingerprint.
    pub(crate) fn is_known(&self, id: &str, fp: u64) -> bool {
        let seen = self.seen.lock_unpoisoned();
        !seen.is_empty() && seen.get(id) == Some(&fp)
    }

    /// Whether `id` was reported, whatever its content.
    pub(crate) fn contains(&self, id: &str) -> bool {
        let seen = self.seen.lock_unpoisoned();
        !seen.is_empty() && seen.contains_key(id)
    }
}

/// Orders what a store's export read: the jobs as [`JobStore::get_all_jobs`](super::JobStore::get_all_jobs)
/// orders them, then the unloadable records by id.
pub(crate) fn export_order(
    records: Vec<std::result::Result<JobRecord, UnloadableRecord>>,
) -> Vec<std::result::Result<JobRecord, UnloadableRecord>> {
    let (mut jobs, mut bad): (Vec<JobRecord>, Vec<UnloadableRecord>) = (Vec::new(), Vec::new());
    for r in records {
        match r {
            Ok(j) => jobs.push(j),
            Err(u) => bad.push(u),
        }
    }
    sort_jobs(&mut jobs);
    bad.sort_by(|a, b| a.id.cmp(&b.id));
    jobs.into_iter()
        .map(Ok)
        .chain(bad.into_iter().map(Err))
        .collect()
}

/// The jobs of an export's records, in order (what `get_all_jobs` returns).
pub(crate) fn loaded(
    records: Vec<std::result::Result<JobRecord, UnloadableRecord>>,
) -> Vec<JobRecord> {
    records.into_iter().filter_map(|r| r.ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_up() {
        let t = DateTime::from_timestamp(10, 500).unwrap();
        assert_eq!(micros_ceil(t), 10_000_001);
        let t = DateTime::from_timestamp(10, 2000).unwrap();
        assert_eq!(micros_ceil(t), 10_000_002);
    }

    #[test]
    fn leases_saturate() {
        let now = DateTime::from_timestamp(10, 0).unwrap();
        assert_eq!(lease_until(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            lease_until(now, Duration::from_secs(5)),
            DateTime::from_timestamp(15, 0).unwrap()
        );
    }

    #[cfg(any(
        feature = "sqlite",
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "zookeeper"
    ))]
    #[test]
    fn reported_once_per_content() {
        let r = Reported::default();
        assert!(r.note("a", 1));
        assert!(!r.note("a", 1));
        assert!(r.is_known("a", 1) && !r.is_known("a", 2));
        assert!(r.note("a", 2));
        r.forget("a");
        assert!(!r.contains("a"));
    }
}
