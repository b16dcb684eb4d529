//! What users see of jobs: the read-only [`Job`] view.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::job::opt_secs;
use crate::job::record::JobRecord;
use crate::trigger::TriggerSpec;

/// A read-only view of a job, as [`JobHandle::get`](crate::JobHandle::get) and
/// [`Scheduler::get_jobs`](crate::Scheduler::get_jobs) return it. `#[non_exhaustive]`: later
/// releases may add fields.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Job {
    /// Job id.
    pub id: String,
    /// Name (the id when none was given).
    pub name: String,
    /// What it runs, described.
    pub callable: String,
    /// When it fires.
    pub trigger: TriggerSpec,
    /// Executor alias.
    pub executor: String,
    /// Store alias.
    pub store: String,
    /// Grace time (`None` = any lateness).
    #[serde(with = "opt_secs")]
    pub misfire_grace_time: Option<Duration>,
    /// Coalesce flag.
    pub coalesce: bool,
    /// Max concurrent runs.
    pub max_instances: u32,
    /// How long a run may take before it is cancelled (`None` = no limit).
    #[serde(with = "opt_secs")]
    pub timeout: Option<Duration>,
    /// What a run due while `max_instances` runs are active does.
    pub overlap: crate::Overlap,
    /// How failed runs are retried (`None` = not retried).
    pub retry: Option<crate::RetryPolicy>,
    /// Paused after this many consecutive failed scheduled times (`None` = never).
    pub pause_after_failures: Option<u32>,
    /// Why the scheduler paused the job (`"paused after 5 consecutive failures: …"`), while
    /// it is paused; `None` for a job paused by hand or not paused.
    pub paused_reason: Option<String>,
    /// Consecutive failed scheduled times (counted for jobs with `pause_after_failures`).
    pub consecutive_failures: u32,
    /// Next run time (`None` = paused, or not yet computed while pending).
    pub next_run_time: Option<DateTime<Utc>>,
    /// Added before the scheduler started: not in a store yet, next run time computed at
    /// start.
    pub pending: bool,
}

impl Job {
    pub(crate) fn from_record(r: &JobRecord, store: &str, pending: bool) -> Self {
        Job {
            id: r.id.clone(),
            name: r.name.clone().unwrap_or_else(|| r.id.clone()),
            callable: r.callable.describe(),
            trigger: r.trigger.clone(),
            executor: r.executor.to_string(),
            store: store.to_string(),
            misfire_grace_time: r.misfire_grace_time,
            coalesce: r.coalesce,
            max_instances: r.max_instances,
            timeout: r.timeout,
            overlap: r.overlap,
            retry: r.retry.as_deref().copied(),
            pause_after_failures: r.pause_after_failures,
            paused_reason: r.paused_reason().map(str::to_string),
            consecutive_failures: r.consecutive_failures,
            next_run_time: if pending { None } else { r.next_run_time },
            pending,
        }
    }

    /// Whether the job is paused.
    pub fn is_paused(&self) -> bool {
        !self.pending && self.next_run_time.is_none()
    }
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = match (self.pending, self.next_run_time) {
            (true, _) => "pending".to_string(),
            (false, None) => match &self.paused_reason {
                Some(why) => format!("paused: {why}"),
                None => "paused".to_string(),
            },
            (false, Some(t)) => format!("next run at: {}", t.format("%Y-%m-%d %H:%M:%S UTC")),
        };
        write!(f, "{} (trigger: {}, {})", self.name, self.trigger, when)
    }
}
