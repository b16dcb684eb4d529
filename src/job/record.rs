//! A job as a store keeps it: [`JobRecord`] in memory, [`StoredJob`] as the JSON document
//! persistent stores write, and the [`Lease`] a scheduler holds while it processes a job.

use std::time::Duration;

use arcstr::ArcStr;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::job::callable::{Callable, StoredCallable};
use crate::job::defaults::JobDefaults;
use crate::job::opt_secs;
use crate::job::{Overlap, RetryPolicy};
use crate::trigger::TriggerSpec;

/// The paused reason of a job whose trigger has no fire time left but whose last run may
/// still be retried: the scheduler removes the job once that run has its final outcome.
pub const KEPT_FOR_RETRIES: &str =
    "its trigger has no fire time left; it is kept until its last run's retries end";

/// The default executor's alias, shared by every job that runs on it.
pub(crate) const DEFAULT_EXECUTOR: ArcStr = arcstr::literal!("default");

/// `alias` as a job keeps it: the default executor's without an allocation.
pub(crate) fn executor_alias(alias: impl AsRef<str> + Into<ArcStr>) -> ArcStr {
    if alias.as_ref() == DEFAULT_EXECUTOR {
        DEFAULT_EXECUTOR
    } else {
        alias.into()
    }
}

/// A lease on a job held by one scheduler while it processes the job's due runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The identity of the scheduler holding it.
    pub owner: String,
    /// When it expires; after that any scheduler may claim the job.
    pub until: DateTime<Utc>,
}

/// A job as a store keeps it.
///
/// `#[non_exhaustive]`: later releases add options. A store gets records from the scheduler
/// or rebuilds them with [`from_json`](Self::from_json)/[`from_stored`](Self::from_stored);
/// [`new`](Self::new) builds one with the default options (for tests).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobRecord {
    /// Unique id within its store.
    pub id: String,
    /// Human-readable name (defaults to the id when shown).
    pub name: Option<String>,
    /// What a run invokes.
    pub callable: Callable,
    /// When it fires.
    pub trigger: TriggerSpec,
    /// The executor alias that runs it. Shared ([`ArcStr`]): `"default"` is a static
    /// string, so the jobs on the default executor hold no copy of it.
    pub executor: ArcStr,
    /// How late a run may start; `None` = any lateness.
    pub misfire_grace_time: Option<Duration>,
    /// Whether a backlog of due times runs once.
    pub coalesce: bool,
    /// Maximum concurrent runs.
    pub max_instances: u32,
    /// How long a run may take before it is cancelled; `None` = no limit.
    pub timeout: Option<Duration>,
    /// What a run due while `max_instances` runs are active does.
    pub overlap: Overlap,
    /// How a failed run is retried; `None` = not retried.
    pub retry: Option<std::sync::Arc<RetryPolicy>>,
    /// Pause the job after this many consecutive failed scheduled times; `None` = never.
    pub pause_after_failures: Option<u32>,
    /// Why the scheduler paused the job (auto-pause after failures), while it is paused.
    pub paused_reason: Option<std::sync::Arc<str>>,
    /// Consecutive failed scheduled times, counted for jobs with `pause_after_failures`.
    pub consecutive_failures: u32,
    /// The next time it is due; `None` = paused.
    pub next_run_time: Option<DateTime<Utc>>,
    /// Incremented by every write; writes check it (compare-and-swap).
    pub version: u64,
    /// The lease of the scheduler processing it, if any (shared stores).
    pub lease: Option<Lease>,
}

/// The JSON document persistent stores keep for a job (schema version 1). `#[non_exhaustive]`:
/// later versions add fields (with defaults, so older documents still load).
///
/// `next_run_time`, `version` and the lease live in their own columns/fields as well, so
/// stores can index and compare them; the document carries them too, for readability.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoredJob {
    /// Job id.
    pub id: String,
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Task or command.
    pub callable: StoredCallable,
    /// Trigger in its tagged serde form.
    pub trigger: TriggerSpec,
    /// Executor alias.
    pub executor: String,
    /// Grace time in seconds (`null` = any lateness). Zero is refused when loading, as in
    /// `add_job`: the record is then a corrupt record.
    #[serde(
        serialize_with = "opt_secs::serialize",
        deserialize_with = "valid::grace"
    )]
    pub misfire_grace_time: Option<Duration>,
    /// Coalesce flag.
    pub coalesce: bool,
    /// Max concurrent runs (at least 1; zero is refused when loading).
    #[serde(deserialize_with = "valid::max_instances")]
    pub max_instances: u32,
    /// How long a run may take, in seconds (absent or `null` = no limit; zero is refused
    /// when loading). Absent from documents written before timeouts existed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_secs::serialize",
        deserialize_with = "valid::timeout"
    )]
    pub timeout: Option<Duration>,
    /// The overlap policy (absent = `"skip"`, as in documents written before it existed).
    #[serde(default, skip_serializing_if = "Overlap::is_skip")]
    pub overlap: Overlap,
    /// How a failed run is retried (absent = not retried).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "valid::retry"
    )]
    pub retry: Option<RetryPolicy>,
    /// Pause after this many consecutive failed scheduled times (absent = never; zero is
    /// refused when loading).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "valid::pause_after"
    )]
    pub pause_after_failures: Option<u32>,
    /// Why the scheduler paused the job (written only while it is paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_reason: Option<String>,
    /// Consecutive failed scheduled times (absent = 0), for `pause_after_failures`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_failures: u32,
    /// Next run time (`null` = paused).
    pub next_run_time: Option<DateTime<Utc>>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Loading a stored job checks the options `add_job` checks, so that a record written by
/// hand or by another program cannot smuggle in values the scheduler refuses.
mod valid {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn grace<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let grace = super::opt_secs::deserialize(d)?;
        if grace.is_some_and(|g| g.is_zero()) {
            return Err(serde::de::Error::custom(
                "misfire_grace_time must be null (any lateness) or longer than zero",
            ));
        }
        Ok(grace)
    }

    pub fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let timeout = super::opt_secs::deserialize(d)?;
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(serde::de::Error::custom(
                "timeout must be null (no limit) or longer than zero",
            ));
        }
        Ok(timeout)
    }

    pub fn retry<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<crate::job::RetryPolicy>, D::Error> {
        let retry = Option::<crate::job::RetryPolicy>::deserialize(d)?;
        if let Some(Err(e)) = retry.as_ref().map(|r| r.check()) {
            return Err(serde::de::Error::custom(e));
        }
        Ok(retry)
    }

    pub fn pause_after<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        match Option::<u32>::deserialize(d)? {
            Some(0) => Err(serde::de::Error::custom(
                "pause_after_failures must be null (never) or at least 1",
            )),
            n => Ok(n),
        }
    }

    pub fn max_instances<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        match u32::deserialize(d)? {
            0 => Err(serde::de::Error::custom("max_instances must be at least 1")),
            n => Ok(n),
        }
    }
}

impl JobRecord {
    /// A paused record (no next run time) running `callable` on `trigger`, with the
    /// default options: executor `"default"`, a grace time of 1 s, coalescing, one instance.
    pub fn new(id: impl Into<String>, callable: Callable, trigger: impl Into<TriggerSpec>) -> Self {
        let defaults = JobDefaults::default();
        JobRecord {
            id: id.into(),
            name: None,
            callable,
            trigger: trigger.into(),
            executor: DEFAULT_EXECUTOR,
            misfire_grace_time: defaults.misfire_grace_time,
            coalesce: defaults.coalesce,
            max_instances: defaults.max_instances,
            timeout: defaults.timeout,
            overlap: defaults.overlap,
            retry: defaults.retry.map(std::sync::Arc::new),
            pause_after_failures: defaults.pause_after_failures,
            paused_reason: None,
            consecutive_failures: 0,
            next_run_time: None,
            version: 0,
            lease: None,
        }
    }

    /// Whether the job is paused (has no next run time).
    pub fn is_paused(&self) -> bool {
        self.next_run_time.is_none()
    }

    /// Why the scheduler paused the job, while it is paused by the scheduler (a job resumed
    /// since has none).
    pub fn paused_reason(&self) -> Option<&str> {
        self.paused_reason
            .as_deref()
            .filter(|_| self.next_run_time.is_none())
    }

    /// The stored JSON form, or why this job cannot be persisted.
    pub fn to_stored(&self) -> Result<StoredJob, crate::error::Error> {
        let callable = StoredCallable::try_from(&self.callable).map_err(|reason| {
            crate::error::Error::InvalidJob {
                id: self.id.clone(),
                reason,
            }
        })?;
        Ok(StoredJob {
            id: self.id.clone(),
            name: self.name.clone(),
            callable,
            trigger: self.trigger.clone(),
            executor: self.executor.to_string(),
            misfire_grace_time: self.misfire_grace_time,
            coalesce: self.coalesce,
            max_instances: self.max_instances,
            timeout: self.timeout,
            overlap: self.overlap,
            retry: self.retry.as_deref().copied(),
            pause_after_failures: self.pause_after_failures,
            paused_reason: self.paused_reason().map(str::to_string),
            consecutive_failures: self.consecutive_failures,
            next_run_time: self.next_run_time,
        })
    }

    /// Serialises the stored form to a JSON string.
    pub fn to_json(&self) -> Result<String, crate::error::Error> {
        Ok(serde_json::to_string(&self.to_stored()?)?)
    }

    /// Rebuilds a record from its stored JSON, with the version and lease the store kept.
    pub fn from_json(json: &str, version: u64, lease: Option<Lease>) -> Result<Self, String> {
        let s: StoredJob = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Ok(JobRecord::from_stored(s, version, lease))
    }

    /// Rebuilds a record from its stored form.
    pub fn from_stored(s: StoredJob, version: u64, lease: Option<Lease>) -> Self {
        JobRecord {
            id: s.id,
            name: s.name,
            callable: s.callable.into(),
            trigger: s.trigger,
            executor: executor_alias(s.executor),
            misfire_grace_time: s.misfire_grace_time,
            coalesce: s.coalesce,
            max_instances: s.max_instances,
            timeout: s.timeout,
            overlap: s.overlap,
            retry: s.retry.map(std::sync::Arc::new),
            pause_after_failures: s.pause_after_failures,
            paused_reason: s
                .paused_reason
                .filter(|_| s.next_run_time.is_none())
                .map(std::sync::Arc::from),
            consecutive_failures: s.consecutive_failures,
            next_run_time: s.next_run_time,
            version,
            lease,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::Interval;

    /// Jobs on the default executor share its static alias (no allocation per job), new or
    /// loaded; another alias is kept as given.
    #[test]
    fn the_default_executor_alias_is_shared() {
        let every = Interval::new(Duration::from_secs(60)).unwrap();
        let task = Callable::Task {
            name: "t".into(),
            args: serde_json::Value::Null,
        };
        let job = JobRecord::new("a", task, every);
        assert!(ArcStr::is_static(&job.executor));
        let loaded = JobRecord::from_json(&job.to_json().unwrap(), 1, None).unwrap();
        assert_eq!(loaded.executor, "default");
        assert!(ArcStr::is_static(&loaded.executor));
        let mut other = job.clone();
        other.executor = executor_alias("pool");
        let loaded = JobRecord::from_json(&other.to_json().unwrap(), 1, None).unwrap();
        assert_eq!(loaded.executor, "pool");
        assert!(!ArcStr::is_static(&loaded.executor));
    }

    /// Every job holds a record (the memory store one per job, S1's bytes per job), and
    /// every trigger kind pays for the largest: the rare, large parts of triggers are
    /// boxed (cron, calendar intervals, combinations, an interval's dates and jitter), so a
    /// trigger is 32 bytes and a record 280. With the `mongodb` feature, serde_json's
    /// `preserve_order` makes a task's arguments 40 bytes larger. If this fails, box the
    /// new rare part rather than raise the bound.
    #[test]
    fn records_and_triggers_stay_small() {
        assert!(
            std::mem::size_of::<TriggerSpec>() <= 32,
            "a trigger grew to {} bytes",
            std::mem::size_of::<TriggerSpec>()
        );
        let bound = if cfg!(feature = "mongodb") { 320 } else { 280 };
        let size = std::mem::size_of::<JobRecord>();
        assert!(
            size <= bound,
            "a job record grew to {size} bytes (bound {bound})"
        );
    }
}
