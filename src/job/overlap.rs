//! [`Overlap`]: what a job does when a run comes due while `max_instances` runs of it are
//! still active (across every scheduler sharing its store).

use serde::{Deserialize, Serialize};

/// What happens to a run that comes due while the job already has `max_instances` active
/// runs. Active runs are counted in the store (the run ledger's claimed and started
/// records), so the policy holds across every scheduler sharing the store.
///
/// Stored with the job as its snake-case name (`"skip"`, `"buffer_one"`, …).
///
/// ```
/// use apsched::{JobDefaults, Overlap};
/// let defaults = JobDefaults::default().overlap(Overlap::BufferOne);
/// assert_eq!(defaults.overlap, Overlap::BufferOne);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Overlap {
    /// Drop the new run: it is recorded as `skipped` with a `JOB_MAX_INSTANCES` event
    /// (APScheduler's behaviour, and the default).
    #[default]
    Skip,
    /// Queue the new run until an instance is free, keeping at most one queued run; any
    /// further run is skipped.
    BufferOne,
    /// Queue every new run until an instance is free; they start oldest first.
    BufferAll,
    /// Ask the running instances to stop (their [`JobContext`](crate::JobContext) token is
    /// cancelled, by their own scheduler when it runs elsewhere) and queue the new run until
    /// they have ended.
    CancelOther,
    /// Start the new run regardless of `max_instances`.
    AllowAll,
}

impl Overlap {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::BufferOne => "buffer_one",
            Overlap::BufferAll => "buffer_all",
            Overlap::CancelOther => "cancel_other",
            Overlap::AllowAll => "allow_all",
        }
    }

    pub(crate) fn is_skip(&self) -> bool {
        *self == Overlap::Skip
    }
}

impl std::fmt::Display for Overlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Overlap {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Overlap::Skip,
            Overlap::BufferOne,
            Overlap::BufferAll,
            Overlap::CancelOther,
            Overlap::AllowAll,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
        .ok_or_else(|| {
            format!("'{s}' is not an overlap policy (skip, buffer_one, buffer_all, cancel_other, allow_all)")
        })
    }
}
