//! The options every job has, with their scheduler-wide defaults: [`JobDefaults`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::job::opt_secs;
use crate::job::{Overlap, RetryPolicy};

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
    /// What a run due while `max_instances` runs are active does. Default
    /// [`Overlap::Skip`].
    #[serde(default)]
    pub overlap: Overlap,
    /// How failed runs are retried; `None` = not retried. Default `None`.
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// Pause a job after this many consecutive failed scheduled times; `None` = never.
    /// Default `None`.
    #[serde(default)]
    pub pause_after_failures: Option<u32>,
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

impl JobDefaults {
    /// Sets what a run due while `max_instances` runs are active does.
    #[must_use]
    pub fn overlap(mut self, overlap: Overlap) -> Self {
        self.overlap = overlap;
        self
    }

    /// Sets how failed runs are retried (`None` = not retried).
    ///
    /// ```
    /// use std::time::Duration;
    /// use apsched::{JobDefaults, RetryPolicy};
    /// let defaults = JobDefaults::default().retry(Some(RetryPolicy::exponential(3, Duration::from_secs(10))));
    /// assert_eq!(defaults.retry.unwrap().attempts, 3);
    /// ```
    #[must_use]
    pub fn retry(mut self, retry: Option<RetryPolicy>) -> Self {
        self.retry = retry;
        self
    }

    /// Sets after how many consecutive failed scheduled times a job is paused (`None` =
    /// never).
    #[must_use]
    pub fn pause_after_failures(mut self, n: Option<u32>) -> Self {
        self.pause_after_failures = n;
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
            overlap: Overlap::Skip,
            retry: None,
            pause_after_failures: None,
        }
    }
}
