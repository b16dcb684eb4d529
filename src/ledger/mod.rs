//! The run ledger: one [`RunRecord`] per (job, scheduled time), and per manual run, kept by
//! the job's store. docs/ledger.md ("What ran: the run ledger") has the guarantees, each
//! store's schema and examples.
//!
//! A record is created in the same atomic step as the claim of its job (so a crash cannot
//! leave a slot unaccounted for), goes `claimed` → `started` when it is handed to an
//! executor, and ends in exactly one terminal [`RunState`]. When a scheduler dies, another
//! one sharing the store takes over: it starts the dead one's runs that never started and
//! marks its started ones `abandoned`.
//!
//! Reading it:
//!
//! ```
//! use apsched::ledger::{RunFilter, RunState};
//! # async fn demo(scheduler: apsched::Scheduler) -> apsched::Result<()> {
//! // The last 20 runs of one job, newest first.
//! let runs = scheduler.job("report").runs(RunFilter::new().limit(20)).await?;
//! for run in &runs {
//!     println!("{} {} {:?}", run.scheduled, run.state, run.duration());
//! }
//! // Failures across all jobs.
//! let failed = scheduler.runs(RunFilter::new().state(RunState::Error)).await?;
//! # let _ = failed;
//! // Last outcome, consecutive failures, duration percentiles.
//! let stats = scheduler.job("report").run_stats().await?;
//! # let _ = stats;
//! # Ok(()) }
//! ```

mod plan;
mod record;
mod stats;
mod writer;

use std::time::Duration;

use chrono::{DateTime, Utc};

pub use self::plan::{plan_manual_runs, ActiveRuns};
pub use self::record::{RunOutcome, RunRecord, RunState, OUTPUT_LIMIT};
pub use self::stats::RunStats;
pub(crate) use self::writer::{RunWriter, WriterHooks};
pub use crate::job::RunId;

/// The error text of a run marked `abandoned` because its scheduler `owner` stopped, whose
/// last heartbeat ran to `alive_until` (`None`: it never recorded one). Every store writes
/// this one text, so operators can search for it.
pub fn abandoned_error(owner: &str, alive_until: Option<DateTime<Utc>>) -> String {
    let since = match alive_until {
        Some(t) => format!("no heartbeat since {}", t.to_rfc3339()),
        None => "no heartbeat recorded".to_string(),
    };
    format!("its scheduler {owner} stopped ({since}); the outcome is unknown")
}

/// Most slots one [`JobHandle::backfill`](crate::JobHandle::backfill) creates.
pub const BACKFILL_LIMIT: usize = 10_000;

/// Which runs to read: a job, states, a window of scheduled times, and a page.
///
/// Runs come newest first (by scheduled time, then run id); pass the last run of a page to
/// [`after`](Self::after) for the next page.
///
/// ```
/// use apsched::ledger::{RunFilter, RunState};
/// let failures = RunFilter::new().job("report").states([RunState::Error, RunState::Abandoned]).limit(50);
/// assert_eq!(failures.limit, 50);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunFilter {
    /// Only this job's runs.
    pub job_id: Option<String>,
    /// Only runs in these states (empty = any).
    pub states: Vec<RunState>,
    /// Only manual runs (`Some(true)`) or only scheduled ones (`Some(false)`).
    pub manual: Option<bool>,
    /// Only runs scheduled at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only runs scheduled before this time.
    pub to: Option<DateTime<Utc>>,
    /// Only runs after this one in the order (the next page).
    pub before: Option<(DateTime<Utc>, RunId)>,
    /// At most this many runs (default 100).
    pub limit: usize,
}

impl Default for RunFilter {
    fn default() -> Self {
        RunFilter {
            job_id: None,
            states: Vec::new(),
            manual: None,
            from: None,
            to: None,
            before: None,
            limit: 100,
        }
    }
}

impl RunFilter {
    /// Every run, the 100 newest.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only the runs of `job_id`.
    #[must_use]
    pub fn job(mut self, job_id: impl Into<String>) -> Self {
        self.job_id = Some(job_id.into());
        self
    }

    /// Only runs in `state` (adds to the states already asked for).
    #[must_use]
    pub fn state(mut self, state: RunState) -> Self {
        self.states.push(state);
        self
    }

    /// Only runs in one of `states`.
    #[must_use]
    pub fn states(mut self, states: impl IntoIterator<Item = RunState>) -> Self {
        self.states.extend(states);
        self
    }

    /// Only manual runs (`true`) or only scheduled ones (`false`).
    #[must_use]
    pub fn manual(mut self, manual: bool) -> Self {
        self.manual = Some(manual);
        self
    }

    /// Only runs scheduled at or after `t`.
    #[must_use]
    pub fn since(mut self, t: DateTime<Utc>) -> Self {
        self.from = Some(t);
        self
    }

    /// Only runs scheduled before `t`.
    #[must_use]
    pub fn until(mut self, t: DateTime<Utc>) -> Self {
        self.to = Some(t);
        self
    }

    /// The page after `last` (the last run of the previous page).
    #[must_use]
    pub fn after(mut self, last: &RunRecord) -> Self {
        self.before = Some((last.scheduled, last.run_id));
        self
    }

    /// At most `n` runs.
    #[must_use]
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = n;
        self
    }

    /// Whether `run` passes the filter (ignoring the limit): what stores that filter in
    /// memory use, and the reference the others must agree with.
    pub fn matches(&self, run: &RunRecord) -> bool {
        self.job_id.as_deref().is_none_or(|j| j == run.job_id)
            && (self.states.is_empty() || self.states.contains(&run.state))
            && self.manual.is_none_or(|m| m == run.manual)
            && self.from.is_none_or(|t| run.scheduled >= t)
            && self.to.is_none_or(|t| run.scheduled < t)
            && self
                .before
                .is_none_or(|cursor| (run.scheduled, run.run_id) < cursor)
    }

    /// Sorts `runs` in the ledger's order (newest first) and keeps the first page: for
    /// stores that filter in memory.
    pub fn page(&self, mut runs: Vec<RunRecord>) -> Vec<RunRecord> {
        runs.retain(|r| self.matches(r));
        sort_newest_first(&mut runs);
        runs.truncate(self.limit);
        runs
    }
}

/// Sorts runs newest first: by scheduled time, then run id, both descending.
pub fn sort_newest_first(runs: &mut [RunRecord]) {
    runs.sort_unstable_by_key(|r| std::cmp::Reverse((r.scheduled, r.run_id)));
}

/// How many finished runs the ledger keeps: the newest `per_job` of each job, none older
/// than `max_age`. Active runs are never pruned. Pruning happens in the scheduler's
/// periodic ledger pass, never in the claim.
///
/// ```
/// use std::time::Duration;
/// use apsched::ledger::RunRetention;
/// let keep = RunRetention::default().per_job(500).max_age(Some(Duration::from_secs(86_400)));
/// assert_eq!(keep.per_job, 500);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunRetention {
    /// Finished runs kept per job, newest first. Default 100.
    pub per_job: usize,
    /// Finished runs older than this (by finish time) are deleted; `None` = no age limit.
    /// Default 30 days.
    pub max_age: Option<Duration>,
}

impl Default for RunRetention {
    fn default() -> Self {
        RunRetention {
            per_job: 100,
            max_age: Some(Duration::from_secs(30 * 86_400)),
        }
    }
}

impl RunRetention {
    /// Keeps the newest `n` finished runs of each job.
    #[must_use]
    pub fn per_job(mut self, n: usize) -> Self {
        self.per_job = n;
        self
    }

    /// Deletes finished runs older than `age` (`None` = never by age).
    #[must_use]
    pub fn max_age(mut self, age: Option<Duration>) -> Self {
        self.max_age = age;
        self
    }

    /// The finish time before which runs are deleted, at `now`.
    pub fn cutoff(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let age = chrono::TimeDelta::from_std(self.max_age?).ok()?;
        now.checked_sub_signed(age)
    }
}

/// What the scheduler's periodic ledger pass
/// ([`JobStore::tick_runs`](crate::store::JobStore::tick_runs)) found for this scheduler to
/// do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunTick {
    /// Claimed runs of dead schedulers that never started, now this scheduler's: they start
    /// under the job's misfire rules.
    pub dispatch: Vec<RunRecord>,
    /// Queued runs whose job has a free instance now, now this scheduler's and no longer
    /// queued: they start whatever their lateness (waiting was their policy).
    pub promoted: Vec<RunRecord>,
    /// Started runs of dead schedulers, now `abandoned`.
    pub abandoned: Vec<RunRecord>,
    /// This scheduler's started runs that another run asked to stop (`CancelOther`).
    pub cancel: Vec<RunId>,
}

/// The scheduler's ledger settings and the outcomes of its runs not yet written back, shared
/// by its stores' contexts and its runs.
#[derive(Debug)]
pub(crate) struct LedgerSettings {
    pub(crate) enabled: bool,
    pub(crate) retention: RunRetention,
    /// Runs finished in this process whose outcome is on its way to the store.
    finishing: std::sync::Mutex<std::collections::HashSet<RunId, crate::job::RunIdState>>,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        LedgerSettings::new(true, RunRetention::default())
    }
}

impl LedgerSettings {
    pub(crate) fn new(enabled: bool, retention: RunRetention) -> Self {
        LedgerSettings {
            enabled,
            retention,
            finishing: Default::default(),
        }
    }

    pub(crate) fn is_finishing(&self, id: RunId) -> bool {
        use crate::sync::MutexExt;
        let set = self.finishing.lock_unpoisoned();
        !set.is_empty() && set.contains(&id)
    }

    pub(crate) fn finishing(&self, id: RunId) {
        use crate::sync::MutexExt;
        self.finishing.lock_unpoisoned().insert(id);
    }

    pub(crate) fn written(&self, ids: impl IntoIterator<Item = RunId>) {
        use crate::sync::MutexExt;
        let mut set = self.finishing.lock_unpoisoned();
        for id in ids {
            set.remove(&id);
        }
    }
}
