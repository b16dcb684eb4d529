//! What a run tells its job body: [`JobContext`] (which job, which scheduled time, which
//! run, and a cancellation token), and the run's identity, [`RunId`].

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::scheduler::Scheduler;

/// The identity of one run of a job (one scheduled time being run).
///
/// Random (63 bits, never zero), so ids made by several schedulers sharing a store do not
/// collide: the run ledger keys its records by it ([`RunRecord`](crate::ledger::RunRecord)),
/// and events carry it. Pass it to
/// [`Scheduler::cancel_run`](crate::Scheduler::cancel_run) to cancel the run's token.
///
/// ```
/// # use apsched::JobContext;
/// # fn demo(ctx: JobContext) {
/// let id = ctx.run_id();
/// println!("run {id} of job {}", ctx.job_id());
/// # }
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct RunId(u64);

impl RunId {
    /// A new random id (63 bits, so that SQL stores keep it in a signed `BIGINT`).
    pub(crate) fn next() -> Self {
        RunId(rand::random_range(1..=i64::MAX as u64))
    }

    /// The id `n`, as a store or a worker child read it back.
    pub fn from_raw(n: u64) -> Self {
        RunId(n)
    }

    /// The id as a number (below 2⁶³).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Hashes a [`RunId`] as itself: ids are random, so hashing them again (SipHash) only costs
/// time in the maps the ledger keeps per run.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RunIdHasher(u64);

impl std::hash::Hasher for RunIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `RunId`'s derived `Hash`; anything else still hashes.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map or set keyed by [`RunId`], with [`RunIdHasher`].
pub(crate) type RunIdState = std::hash::BuildHasherDefault<RunIdHasher>;

/// A map or set keyed by job ids on the run path (the memory store's jobs and runs, the
/// running-instance counts). foldhash, randomly seeded per map: about a fifth of SipHash's
/// cost per id, which a storm of due jobs pays several times per run; it still resists
/// crafted colliding keys, if less than SipHash.
pub(crate) type JobIdState = foldhash::quality::RandomState;

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a job body is told about its run. Take it as the closure's argument to get it:
///
/// ```
/// use std::time::Duration;
/// use apsched::{JobContext, Scheduler};
///
/// # async fn demo(scheduler: Scheduler) -> apsched::Result<()> {
/// scheduler
///     .add_job(|ctx: JobContext| async move {
///         for batch in 0..100 {
///             if ctx.is_cancelled() {
///                 return Err(format!("stopped before batch {batch}"));
///             }
///             tokio::select! {
///                 _ = ctx.cancelled() => return Err("cancelled".to_string()),
///                 _ = tokio::time::sleep(Duration::from_millis(10)) => {}
///             }
///         }
///         Ok(())
///     })
///     .timeout(Duration::from_secs(60))
///     .id("batches")
///     .await?;
/// # Ok(()) }
/// ```
///
/// Jobs without the argument (`|| async {..}`) run as before and cost nothing extra; a job
/// taking one gets a fresh context (and [`RunId`]) for every scheduled time it runs.
///
/// # Cancellation
/// The token ([`cancellation_token`](Self::cancellation_token)) is cancelled when
/// - the scheduler shuts down without waiting
///   ([`shutdown_now`](crate::Scheduler::shutdown_now)), or a
///   [`shutdown_timeout`](crate::Scheduler::shutdown_timeout)'s time is up;
/// - the run passes its job's [`timeout`](crate::AddJob::timeout) (the run is aborted
///   after the scheduler's [`timeout_grace`](crate::SchedulerBuilder::timeout_grace) if it
///   has not ended by then);
/// - someone calls [`Scheduler::cancel_run`](crate::Scheduler::cancel_run) with its run id.
///
/// Honouring it is up to the job: return early (with an error, or a value) when it fires.
#[derive(Clone)]
pub struct JobContext {
    inner: Arc<RunInfo>,
}

struct RunInfo {
    job_id: arcstr::ArcStr,
    name: Option<Arc<str>>,
    scheduled_run_time: DateTime<Utc>,
    run_id: RunId,
    attempt: u32,
    manual: bool,
    token: CancellationToken,
    scheduler: Scheduler,
}

impl JobContext {
    #[allow(
        clippy::too_many_arguments,
        reason = "the crate's one constructor, one argument per field"
    )]
    pub(crate) fn new(
        job_id: arcstr::ArcStr,
        name: Option<Arc<str>>,
        scheduled_run_time: DateTime<Utc>,
        run_id: RunId,
        attempt: u32,
        manual: bool,
        token: CancellationToken,
        scheduler: Scheduler,
    ) -> Self {
        JobContext {
            inner: Arc::new(RunInfo {
                job_id,
                name,
                scheduled_run_time,
                run_id,
                attempt,
                manual,
                token,
                scheduler,
            }),
        }
    }

    /// The job's id.
    pub fn job_id(&self) -> &str {
        &self.inner.job_id
    }

    /// The job's name (its id when it has none).
    pub fn name(&self) -> &str {
        self.inner.name.as_deref().unwrap_or(&self.inner.job_id)
    }

    /// The time this run was scheduled for (not when it started).
    pub fn scheduled_run_time(&self) -> DateTime<Utc> {
        self.inner.scheduled_run_time
    }

    /// This run's identity (see [`RunId`]).
    pub fn run_id(&self) -> RunId {
        self.inner.run_id
    }

    /// Which attempt at this scheduled time this is: 1, then 2, 3, … when the job's
    /// [`RetryPolicy`](crate::RetryPolicy) retries a failed run.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// Whether the run was made by hand ([`JobHandle::run_now`](crate::JobHandle::run_now),
    /// [`JobHandle::backfill`](crate::JobHandle::backfill)) rather than by its trigger.
    pub fn is_manual(&self) -> bool {
        self.inner.manual
    }

    /// The run's cancellation token (see [Cancellation](Self#cancellation)). Clone it to
    /// hand it to work the job spawns, or make child tokens of it.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.inner.token
    }

    /// Whether the run has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// Completes when the run is asked to stop: `select!` on it next to the job's work.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.inner.token.cancelled()
    }

    /// A handle to the scheduler running the job (to add, change or remove jobs from it).
    pub fn scheduler(&self) -> &Scheduler {
        &self.inner.scheduler
    }
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("job_id", &self.inner.job_id)
            .field("name", &self.name())
            .field("scheduled_run_time", &self.inner.scheduled_run_time)
            .field("run_id", &self.inner.run_id)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}
