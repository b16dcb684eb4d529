//! What users see of jobs: the read-only [`Job`] view and the options every job has,
//! [`JobDefaults`].

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::job::opt_secs;
use crate::job::record::JobRecord;
use crate::trigger::TriggerSpec;

/// Options every job has, with scheduler-wide defaults
/// ([`SchedulerBuilder::job_defaults`](crate::SchedulerBuilder::job_defaults)).
///
/// Built from [`Default`] with the setters (it is `#[non_exhaustive]`, so later releases can
/// add options without breaking code):
///
/// ```
/// use std::time::Duration;
/// use apsched::JobDefaults;
/// let defaults = JobDefaults::default()
///     .coalesce(false)
///     .max_instances(3)
///     .misfire_grace_time(Some(Duration::from_secs(30)));
/// assert_eq!(defaults.max_instances, 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobDefaults {
    /// How late a run may start and still run; `None` = any lateness. Default 1 s.
    #[serde(with = "opt_secs")]
    pub misfire_grace_time: Option<Duration>,
    /// Run a backlog of due times once instead of once per time. Default `true`.
    pub coalesce: bool,
    /// How many runs of one job may be in flight at once. Default 1.
    pub max_instances: u32,
    /// How long a run may take before it is cancelled (see
    /// [`AddJob::timeout`](crate::AddJob::timeout)); `None` = no limit. Default `None`.
    #[serde(default, with = "opt_secs")]
    pub timeout: Option<Duration>,
}

impl JobDefaults {
    /// Sets how late a run may start and still run (`None` = any lateness).
    #[must_use]
    pub fn misfire_grace_time(mut self, grace: Option<Duration>) -> Self {
        self.misfire_grace_time = grace;
        self
    }

    /// Sets whether a backlog of due times runs once.
    #[must_use]
    pub fn coalesce(mut self, coalesce: bool) -> Self {
        self.coalesce = coalesce;
        self
    }

    /// Sets how many runs of one job may be in flight at once.
    #[must_use]
    pub fn max_instances(mut self, n: u32) -> Self {
        self.max_instances = n;
        self
    }

    /// Sets how long a run may take before it is cancelled (`None` = no limit).
    ///
    /// ```
    /// use std::time::Duration;
    /// use apsched::JobDefaults;
    /// let defaults = JobDefaults::default().timeout(Some(Duration::from_secs(300)));
    /// assert_eq!(defaults.timeout, Some(Duration::from_secs(300)));
    /// ```
    #[must_use]
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }
}

impl Default for JobDefaults {
    fn default() -> Self {
        JobDefaults {
            misfire_grace_time: Some(Duration::from_secs(1)),
            coalesce: true,
            max_instances: 1,
            timeout: None,
        }
    }
}

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
            executor: r.executor.clone(),
            store: store.to_string(),
            misfire_grace_time: r.misfire_grace_time,
            coalesce: r.coalesce,
            max_instances: r.max_instances,
            timeout: r.timeout,
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
            (false, None) => "paused".to_string(),
            (false, Some(t)) => format!("next run at: {}", t.format("%Y-%m-%d %H:%M:%S UTC")),
        };
        write!(f, "{} (trigger: {}, {})", self.name, self.trigger, when)
    }
}
