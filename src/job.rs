//! Jobs: what to run, when, and with which options.
//!
//! [`JobRecord`] is what a store keeps; [`Job`] is the read-only view the scheduler hands out
//! (`get_job`, `get_jobs`); [`Callable`] is what a run invokes. [`advance`] holds the due-run
//! rule every store applies when it claims a due job, so all stores agree on it.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::{BoxFuture, LocalBoxFuture};
use serde::{Deserialize, Serialize};

use crate::error::TriggerError;
use crate::executor::CommandSpec;
use crate::trigger::{Trigger, TriggerSpec};

/// What a run produced: its return value as JSON, or what went wrong.
pub type JobResult = Result<serde_json::Value, JobError>;

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobError {
    /// The job returned an error.
    #[error("{message}")]
    Failed {
        /// The error's `Display` text.
        message: String,
    },
    /// The job panicked.
    #[error("job panicked: {message}")]
    Panicked {
        /// The panic message.
        message: String,
    },
    /// A child process exited unsuccessfully or was killed by a signal.
    #[error("process exited with {}: {stderr_tail}", describe_exit(*.code, *.signal))]
    Exited {
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal number, if it was killed by one.
        signal: Option<i32>,
        /// The last lines of its stderr.
        stderr_tail: String,
    },
    /// The run exceeded its timeout and was killed.
    #[error("timed out after {seconds} s and was killed")]
    TimedOut {
        /// The timeout, in seconds.
        seconds: f64,
    },
    /// The run could not be started (no such executor or task, bad arguments, ...).
    #[error("could not run: {message}")]
    NotRunnable {
        /// What is wrong.
        message: String,
    },
}

fn describe_exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        (None, None) => "unknown status".into(),
    }
}

impl JobError {
    /// A [`JobError::Failed`] with `message`.
    pub fn failed(message: impl fmt::Display) -> Self {
        JobError::Failed {
            message: message.to_string(),
        }
    }

    /// A [`JobError::NotRunnable`] with `message`.
    pub fn not_runnable(message: impl fmt::Display) -> Self {
        JobError::NotRunnable {
            message: message.to_string(),
        }
    }
}

/// What a job body may return: `()`, a value that serialises, or a `Result`.
///
/// `Ok` values become the `retval` of [`Event::JobExecuted`](crate::Event::JobExecuted);
/// `Err` values become [`JobError::Failed`] with the error's `Display` text.
pub trait IntoJobResult {
    /// Converts into a [`JobResult`].
    fn into_job_result(self) -> JobResult;
}

impl IntoJobResult for () {
    fn into_job_result(self) -> JobResult {
        Ok(serde_json::Value::Null)
    }
}

impl<T: Serialize, E: fmt::Display> IntoJobResult for Result<T, E> {
    fn into_job_result(self) -> JobResult {
        match self {
            Ok(v) => serde_json::to_value(v).map_err(JobError::failed),
            Err(e) => Err(JobError::failed(e)),
        }
    }
}

macro_rules! plain_results {
    ($($t:ty),*) => {$(
        impl IntoJobResult for $t {
            fn into_job_result(self) -> JobResult {
                serde_json::to_value(self).map_err(JobError::failed)
            }
        }
    )*};
}
plain_results!(
    bool,
    i8,
    i16,
    i32,
    i64,
    u8,
    u16,
    u32,
    u64,
    usize,
    f32,
    f64,
    String,
    &'static str,
    serde_json::Value
);

/// An async job body.
pub type AsyncFn = Arc<dyn Fn() -> BoxFuture<'static, JobResult> + Send + Sync>;
/// A blocking job body (runs on a thread pool).
pub type BlockingFn = Arc<dyn Fn() -> JobResult + Send + Sync>;
/// A job body whose future is `!Send` (runs on the local executor's `LocalSet`).
pub type LocalFn = Arc<dyn Fn() -> LocalBoxFuture<'static, JobResult> + Send + Sync>;

/// What a run of a job invokes.
#[derive(Clone)]
#[non_exhaustive]
pub enum Callable {
    /// An async closure (in-process; memory store only).
    Async(AsyncFn),
    /// A blocking closure (in-process; memory store only).
    Blocking(BlockingFn),
    /// A closure producing a `!Send` future (in-process; memory store only).
    Local(LocalFn),
    /// An external command run in a child process (persistable). Boxed to keep every job's
    /// callable small.
    Command(Box<CommandSpec>),
    /// A task registered by name with JSON arguments (persistable).
    Task {
        /// The registered task name.
        name: String,
        /// Its arguments.
        args: serde_json::Value,
    },
}

impl Callable {
    /// Wraps an async closure.
    pub fn from_async<F, Fut, R>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoJobResult,
    {
        Callable::Async(Arc::new(move || {
            let fut = f();
            Box::pin(async move { fut.await.into_job_result() })
        }))
    }

    /// Wraps a blocking closure.
    pub fn from_blocking<F, R>(f: F) -> Self
    where
        F: Fn() -> R + Send + Sync + 'static,
        R: IntoJobResult,
    {
        Callable::Blocking(Arc::new(move || f().into_job_result()))
    }

    /// Wraps a closure whose future is `!Send`.
    pub fn from_local<F, Fut, R>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + 'static,
        R: IntoJobResult,
    {
        Callable::Local(Arc::new(move || {
            let fut = f();
            Box::pin(async move { fut.await.into_job_result() })
        }))
    }

    /// A short description, for tables and logs.
    pub fn describe(&self) -> String {
        match self {
            Callable::Async(_) => "<async fn>".into(),
            Callable::Blocking(_) => "<blocking fn>".into(),
            Callable::Local(_) => "<local fn>".into(),
            Callable::Command(c) => c.to_string(),
            Callable::Task { name, .. } => format!("task {name}"),
        }
    }

    /// Whether this callable can be written to a persistent store.
    pub fn is_persistable(&self) -> bool {
        matches!(self, Callable::Command(_) | Callable::Task { .. })
    }
}

impl fmt::Debug for Callable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The serialisable form of a persistable [`Callable`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StoredCallable {
    /// A registered task.
    Task {
        /// Task name.
        name: String,
        /// Arguments.
        #[serde(default)]
        args: serde_json::Value,
    },
    /// An external command.
    Command(CommandSpec),
}

impl TryFrom<&Callable> for StoredCallable {
    type Error = String;
    fn try_from(c: &Callable) -> Result<Self, String> {
        match c {
            Callable::Task { name, args } => Ok(StoredCallable::Task {
                name: name.clone(),
                args: args.clone(),
            }),
            Callable::Command(cmd) => Ok(StoredCallable::Command((**cmd).clone())),
            _ => Err(
                "a closure cannot be stored in a persistent job store; register a task \
                 (SchedulerBuilder::task) and add the job with Scheduler::add_task_job, or use \
                 the memory store"
                    .into(),
            ),
        }
    }
}

impl From<StoredCallable> for Callable {
    fn from(s: StoredCallable) -> Self {
        match s {
            StoredCallable::Task { name, args } => Callable::Task { name, args },
            StoredCallable::Command(c) => Callable::Command(Box::new(c)),
        }
    }
}

/// Options every job has, with scheduler-wide defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDefaults {
    /// How late a run may start and still run; `None` = any lateness. Default 1 s.
    #[serde(with = "opt_secs")]
    pub misfire_grace_time: Option<Duration>,
    /// Run a backlog of due times once instead of once per time. Default `true`.
    pub coalesce: bool,
    /// How many runs of one job may be in flight at once. Default 1.
    pub max_instances: u32,
}

impl Default for JobDefaults {
    fn default() -> Self {
        JobDefaults {
            misfire_grace_time: Some(Duration::from_secs(1)),
            coalesce: true,
            max_instances: 1,
        }
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
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// Unique id within its store.
    pub id: String,
    /// Human-readable name (defaults to the id when shown).
    pub name: Option<String>,
    /// What a run invokes.
    pub callable: Callable,
    /// When it fires.
    pub trigger: TriggerSpec,
    /// The executor alias that runs it.
    pub executor: String,
    /// How late a run may start; `None` = any lateness.
    pub misfire_grace_time: Option<Duration>,
    /// Whether a backlog of due times runs once.
    pub coalesce: bool,
    /// Maximum concurrent runs.
    pub max_instances: u32,
    /// The next time it is due; `None` = paused.
    pub next_run_time: Option<DateTime<Utc>>,
    /// Incremented by every write; writes check it (compare-and-swap).
    pub version: u64,
    /// The lease of the scheduler processing it, if any (shared stores).
    pub lease: Option<Lease>,
}

/// The JSON document persistent stores keep for a job (schema version 1).
///
/// `next_run_time`, `version` and the lease live in their own columns/fields as well, so
/// stores can index and compare them; the document carries them too, for readability.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Next run time (`null` = paused).
    pub next_run_time: Option<DateTime<Utc>>,
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

    pub fn max_instances<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        match u32::deserialize(d)? {
            0 => Err(serde::de::Error::custom("max_instances must be at least 1")),
            n => Ok(n),
        }
    }
}

impl JobRecord {
    /// Whether the job is paused (has no next run time).
    pub fn is_paused(&self) -> bool {
        self.next_run_time.is_none()
    }

    /// The stored JSON form, or why this job cannot be persisted.
    pub fn to_stored(&self) -> Result<StoredJob, crate::Error> {
        let callable = StoredCallable::try_from(&self.callable).map_err(|reason| {
            crate::Error::InvalidJob {
                id: self.id.clone(),
                reason,
            }
        })?;
        Ok(StoredJob {
            id: self.id.clone(),
            name: self.name.clone(),
            callable,
            trigger: self.trigger.clone(),
            executor: self.executor.clone(),
            misfire_grace_time: self.misfire_grace_time,
            coalesce: self.coalesce,
            max_instances: self.max_instances,
            next_run_time: self.next_run_time,
        })
    }

    /// Serialises the stored form to a JSON string.
    pub fn to_json(&self) -> Result<String, crate::Error> {
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
            executor: s.executor,
            misfire_grace_time: s.misfire_grace_time,
            coalesce: s.coalesce,
            max_instances: s.max_instances,
            next_run_time: s.next_run_time,
            version,
            lease,
        }
    }
}

/// The outcome of [`advance`]: the runs now due and the job's new next run time.
#[derive(Debug, Clone, PartialEq)]
pub struct Advance {
    /// The fire times `<= now` listed in this pass, in order (before coalescing). See
    /// [`advance`] for how a long backlog is cut.
    pub run_times: Vec<DateTime<Utc>>,
    /// The job's next run time: the trigger's next fire time after the last run time
    /// (`None` = exhausted), or, when a backlog is handed over in parts, the next due time
    /// still `<= now`.
    pub next_run_time: Option<DateTime<Utc>>,
    /// Set when the trigger gave up; the job is then paused, not removed.
    pub trigger_error: Option<TriggerError>,
    /// The oldest of the due times skipped without being listed (a long backlog of a job that
    /// does not coalesce, beyond its grace time): they were missed.
    pub skipped_from: Option<DateTime<Utc>>,
}

/// At most this many run times are listed for one job in one pass. A longer backlog that
/// must run in full (no coalescing, no grace limit, or a trigger that can only be walked) is
/// handed over in parts, one per pass: the job stays due until it is caught up.
pub const MAX_BACKLOG: usize = 10_000;

/// A backlog longer than this many due times is not walked time by time when the trigger
/// can skip ahead (interval, cron): only the times that can still matter are computed.
pub const WALK_BEFORE_SKIP: usize = 1_000;

/// The due-run rule (APScheduler 3's `_get_run_times` + next-time computation).
///
/// Lists every fire time from `job.next_run_time` up to `now`, then computes the next fire
/// time from the last of them. Sets `job.next_run_time` to it (or to `None` when the
/// trigger is exhausted or gave up). Stores call this while claiming a due job so that
/// claiming and advancing are one atomic step.
///
/// The work is bounded, whatever the backlog (an every-second job resumed after a month is
/// 2.6 M due times). After [`WALK_BEFORE_SKIP`] times, interval and cron triggers skip
/// ahead: a coalescing job needs only its latest due time (found by searching back from
/// `now` in doubling windows), and a job that does not coalesce needs only the times within
/// its grace time (the older ones would be missed; they are summarised in
/// [`Advance::skipped_from`]). Otherwise at most [`MAX_BACKLOG`] times are listed per pass
/// and the job stays due for the next pass (a coalescing job submits nothing until it is
/// caught up, so it still runs once).
pub fn advance(job: &mut JobRecord, now: DateTime<Utc>) -> Advance {
    let mut run_times = Vec::new();
    let mut trigger_error = None;
    let mut skipped_from = None;
    let mut tried_skip = false;
    let mut next = job.next_run_time;
    while let Some(t) = next {
        if t > now {
            break;
        }
        if run_times.len() == WALK_BEFORE_SKIP && !tried_skip {
            tried_skip = true;
            match skip_ahead(job, t, now) {
                None => {}
                Some(Ok(to)) => {
                    if !job.coalesce && to != Some(t) {
                        skipped_from = Some(t);
                    }
                    next = to;
                    continue;
                }
                Some(Err(e)) => {
                    trigger_error = Some(e);
                    next = None;
                    break;
                }
            }
        }
        if run_times.len() == MAX_BACKLOG {
            // Hand the rest over in the next pass. A coalescing job submits once, when it
            // is caught up.
            if job.coalesce {
                run_times.clear();
            }
            break;
        }
        run_times.push(t);
        next = match guarded(|| job.trigger.try_next_fire_time(Some(t), now)) {
            Ok(Some(n)) if n <= t => {
                // A trigger must move forward; pausing the job beats looping forever.
                trigger_error = Some(TriggerError::GaveUp(format!(
                    "the trigger returned {n}, not after its previous fire time {t}"
                )));
                None
            }
            Ok(n) => n,
            Err(e) => {
                trigger_error = Some(e);
                None
            }
        };
    }
    // `next` is now the first fire time after `now` (or None): what APScheduler computes as
    // `trigger.get_next_fire_time(run_times[-1], now)`.
    job.next_run_time = next;
    Advance {
        run_times,
        next_run_time: next,
        trigger_error,
        skipped_from,
    }
}

/// Where a long backlog starting at the due time `t` can jump to: `None` when it must be
/// walked (the trigger cannot skip, or every due time must run).
fn skip_ahead(
    job: &JobRecord,
    t: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<Result<Option<DateTime<Utc>>, TriggerError>> {
    if job.coalesce {
        // The latest due time is all that runs: search windows ending at `now`, doubling,
        // until one holds a fire time.
        let mut window = chrono::TimeDelta::seconds(1);
        loop {
            let from = now.checked_sub_signed(window)?;
            if from <= t {
                return None;
            }
            match guarded(|| job.trigger.first_fire_at_or_after(t, from).transpose()).transpose()? {
                Ok(Some(c)) if c <= now => return Some(Ok(Some(c))),
                Ok(_) => window = window.checked_mul(2)?,
                Err(e) => return Some(Err(e)),
            }
        }
    }
    // Only the times within the grace time can still run.
    let grace = chrono::TimeDelta::from_std(job.misfire_grace_time?).ok()?;
    let from = now.checked_sub_signed(grace)?;
    if from <= t {
        return None;
    }
    guarded(|| job.trigger.first_fire_at_or_after(t, from).transpose()).transpose()
}

/// Evaluates a trigger, turning a panic into [`TriggerError::GaveUp`]: a claim runs inside
/// a store's lock or transaction, where a panic would lose the job or take the store down.
fn guarded<T>(
    eval: impl FnOnce() -> Result<Option<T>, TriggerError>,
) -> Result<Option<T>, TriggerError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(eval)).unwrap_or_else(|payload| {
        Err(TriggerError::GaveUp(format!(
            "the trigger panicked: {}",
            crate::executor::panic_text(payload)
        )))
    })
}

/// A read-only view of a job, as `get_job` and `get_jobs` return it.
#[derive(Debug, Clone, Serialize)]
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

/// Serde helper: `Option<Duration>` as seconds (float), `null` for `None`.
pub(crate) mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let v: Option<f64> = Option::deserialize(d)?;
        match v {
            None => Ok(None),
            Some(x) => Duration::try_from_secs_f64(x)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::guarded;
    use crate::error::TriggerError;

    /// A trigger that panics while a job is claimed gives up instead of unwinding through
    /// the store's lock or transaction.
    #[test]
    fn a_panicking_trigger_gives_up() {
        let r: Result<Option<()>, TriggerError> = guarded(|| panic!("bad trigger"));
        match r {
            Err(TriggerError::GaveUp(m)) => assert!(m.contains("bad trigger"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
