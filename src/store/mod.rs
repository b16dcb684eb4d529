//! Job stores: where jobs live between runs.
//!
//! [`MemoryStore`] keeps jobs in the process (any callable, including closures). Persistent
//! stores (SQL, Redis, MongoDB, ZooKeeper; each behind its own cargo feature) keep
//! [`JobRecord`]s as JSON, survive restarts, and can be shared by several scheduler
//! processes: claiming a due job and advancing its next run time is one atomic step
//! ([`JobStore::acquire_due_jobs`]), so no scheduled time of a job is submitted twice (a
//! time claimed by a scheduler that dies before starting it is lost: see docs/stores.md).

#[cfg(any(
    feature = "sqlite",
    feature = "postgres",
    feature = "mysql",
    feature = "redis",
    feature = "mongodb",
    feature = "zookeeper"
))]
mod common;
#[cfg(any(feature = "redis", feature = "mongodb", feature = "zookeeper"))]
mod documents;
mod export;
mod memory;
#[cfg(feature = "mongodb")]
mod mongodb;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod sql;
#[cfg(feature = "test-util")]
pub mod testing;
#[cfg(feature = "zookeeper")]
mod zookeeper;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

pub use self::export::{ExportedJob, ImportReport, JobExport, UnloadableRecord, EXPORT_FORMAT};
pub use self::memory::MemoryStore;
#[cfg(feature = "mongodb")]
pub use self::mongodb::MongoStore;
#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub use self::sql::SqlStore;
#[cfg(feature = "zookeeper")]
pub use self::zookeeper::ZooKeeperStore;
use crate::clock::Clock;
use crate::error::{Result, TriggerError};
use crate::event::{Event, EventBus};
use crate::job::{JobRecord, RunId};
pub(crate) use crate::ledger::LedgerSettings;
use crate::ledger::{RunFilter, RunOutcome, RunRecord, RunRetention, RunTick};
use crate::task::TaskRegistry;

/// What a store gets from the scheduler when it starts: who it is, what time it is, and the
/// few ways it may talk back (wake the loop, report a record it cannot load). A store never
/// sees the scheduler's event bus or task registry itself; it asks through these methods.
///
/// The scheduler builds it; tests build one with
/// `apsched::store::testing::TestContext` (feature `test-util`).
/// Cloning is cheap, so background tasks (a listener waking the loop) keep a clone.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreContext {
    alias: String,
    /// Shared: every run record this scheduler plans holds it.
    scheduler_id: arcstr::ArcStr,
    lease: Duration,
    tasks: Arc<TaskRegistry>,
    wakeup: Arc<Notify>,
    events: EventBus,
    clock: Arc<dyn Clock>,
    ledger: Arc<LedgerSettings>,
}

impl StoreContext {
    /// The context the scheduler (or a test harness) gives a store it starts.
    pub(crate) fn new(
        alias: impl Into<String>,
        scheduler_id: impl Into<String>,
        lease: Duration,
        tasks: Arc<TaskRegistry>,
        wakeup: Arc<Notify>,
        events: EventBus,
        clock: Arc<dyn Clock>,
    ) -> Self {
        StoreContext {
            alias: alias.into(),
            scheduler_id: scheduler_id.into().into(),
            lease,
            tasks,
            wakeup,
            events,
            clock,
            ledger: Arc::new(LedgerSettings::default()),
        }
    }

    /// With the scheduler's ledger settings (shared with its runs).
    pub(crate) fn with_ledger(mut self, ledger: Arc<LedgerSettings>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Whether the scheduler keeps a run ledger in this store (on by default; off with
    /// [`SchedulerBuilder::run_ledger`](crate::SchedulerBuilder::run_ledger)). When it is
    /// off, [`DueJob::plan_runs`] plans nothing and the store writes no run records.
    pub fn keeps_runs(&self) -> bool {
        self.ledger.enabled
    }

    /// How many finished runs to keep ([`JobStore::tick_runs`] prunes the rest).
    pub fn run_retention(&self) -> RunRetention {
        self.ledger.retention
    }

    /// Whether this scheduler has finished run `run_id` and not yet written its outcome to
    /// the store: the overlap rule does not count such a run as active.
    pub fn is_finishing(&self, run_id: RunId) -> bool {
        self.ledger.is_finishing(run_id)
    }

    /// The store's alias in this scheduler (for messages and events).
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// This scheduler's identity, `host-pid-random` by default: the owner a store writes
    /// into the leases it takes.
    pub fn scheduler_id(&self) -> &str {
        &self.scheduler_id
    }

    /// [`scheduler_id`](Self::scheduler_id) as the run records hold it (no copy).
    pub(crate) fn owner(&self) -> &arcstr::ArcStr {
        &self.scheduler_id
    }

    /// How long a claim on a job lasts before other schedulers may take it over.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The scheduler's clock, read now (virtual in tests with a test clock).
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Wakes the scheduler loop so that it looks at the store again (another process
    /// changed a job, a watch was re-armed and may have missed changes).
    pub fn wake_scheduler(&self) {
        self.wakeup.notify_one();
    }

    /// Whether a task of this name is registered with the scheduler: a stored job naming
    /// any other task cannot be loaded.
    pub fn has_task(&self, name: &str) -> bool {
        self.tasks.contains(name)
    }

    /// Reports a stored record that cannot be loaded (a `STORE_ERROR` event carrying
    /// [`Error::CorruptJob`](crate::Error::CorruptJob)'s message, and an error log). The
    /// store keeps the record untouched and skips it; it should report each distinct
    /// content once (see the store guide, docs/custom_store.md).
    pub fn report_corrupt(&self, job_id: &str, reason: &str) {
        let message = crate::Error::CorruptJob {
            id: job_id.to_string(),
            reason: reason.to_string(),
        }
        .to_string();
        tracing::error!(store = %self.alias, job_id = %job_id, "{message}; it is kept untouched and skipped");
        self.emit(Some(job_id), message);
    }

    /// Reports a problem with one job that the store handled or could not handle (a
    /// `STORE_ERROR` event and a warning): a record whose copies disagree, a claim whose
    /// write failed.
    pub fn report_problem(&self, job_id: &str, message: &str) {
        tracing::warn!(store = %self.alias, job_id = %job_id, "{message}");
        self.emit(Some(job_id), message.to_string());
    }

    fn emit(&self, job_id: Option<&str>, message: String) {
        self.events.emit(Event::StoreError {
            store: self.alias.clone(),
            job_id: job_id.map(str::to_string),
            message,
        });
    }
}

/// A due job claimed by [`JobStore::acquire_due_jobs`].
#[derive(Debug, Clone)]
pub struct DueJob {
    /// The job as it is now stored (next run time already advanced, version bumped).
    /// Shared: a store that keeps its jobs in memory hands out its own copy rather than a
    /// clone per claim (change it with [`job_mut`](Self::job_mut), which copies it if it
    /// is shared).
    pub job: Arc<JobRecord>,
    /// Every fire time that came due, oldest first (before coalescing).
    pub run_times: Vec<DateTime<Utc>>,
    /// The trigger is exhausted and the store removed the job.
    pub removed: bool,
    /// The trigger gave up; the store kept the job paused.
    pub trigger_error: Option<TriggerError>,
    /// The oldest due time of a long backlog that was skipped unlisted (see
    /// [`WALK_BEFORE_SKIP`](crate::job::WALK_BEFORE_SKIP)); the loop reports it as missed.
    pub skipped_from: Option<DateTime<Utc>>,
    /// The run records to create in the same atomic step as the claim (planned by
    /// [`plan_runs`](Self::plan_runs); empty when the scheduler keeps no ledger).
    pub runs: Vec<RunRecord>,
    /// Started runs of this job to flag `cancel_requested` in the same step (overlap
    /// policy `CancelOther`).
    pub cancel: Vec<RunId>,
}

impl DueJob {
    /// Applies the due-run rule to `job` and describes the outcome: the helper every store
    /// uses inside its claim step, so all stores agree on the rule (for long backlogs, see
    /// [`WALK_BEFORE_SKIP`](crate::job::WALK_BEFORE_SKIP)).
    pub fn claim(job: JobRecord, now: DateTime<Utc>) -> DueJob {
        Self::claim_shared(Arc::new(job), now)
    }

    /// [`claim`](Self::claim) for a job the store shares: it is changed in place when
    /// nothing else holds it (an in-memory store's own copy, whose previous claim is
    /// gone), copied first otherwise.
    pub fn claim_shared(mut shared: Arc<JobRecord>, now: DateTime<Utc>) -> DueJob {
        let job = Arc::make_mut(&mut shared);
        let adv = crate::job::advance(job, now);
        let exhausted = adv.next_run_time.is_none() && adv.trigger_error.is_none();
        // A job that retries failed runs is kept (paused, saying why) while this last run
        // may still need it; the scheduler removes it once the run has its final outcome.
        let removed = exhausted && (job.retry.is_none() || adv.run_times.is_empty());
        if exhausted && !removed {
            job.paused_reason = Some(std::sync::Arc::from(crate::job::KEPT_FOR_RETRIES));
        }
        DueJob {
            job: shared,
            run_times: adv.run_times,
            removed,
            trigger_error: adv.trigger_error,
            skipped_from: adv.skipped_from,
            runs: Vec::new(),
            cancel: Vec::new(),
        }
    }

    /// The job, to change (its lease or version, as the store wrote them): copied first
    /// if it is shared.
    pub fn job_mut(&mut self) -> &mut JobRecord {
        Arc::make_mut(&mut self.job)
    }
}

/// Keeps jobs. Implementations must be safe to share between tasks (and, for persistent
/// stores, between processes: see the module docs).
///
/// Ordering: [`get_all_jobs`](Self::get_all_jobs) returns jobs by next run time (paused
/// last), ties by id; [`acquire_due_jobs`](Self::acquire_due_jobs) claims in the same order.
#[async_trait::async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Called when the scheduler starts, or when the store is added to a running scheduler.
    /// Persistent stores connect, migrate, and start listening for changes here.
    async fn start(&self, ctx: StoreContext) -> Result<()> {
        let _ = ctx;
        Ok(())
    }

    /// Called on shutdown or removal.
    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }

    /// Adds a job. Fails with [`Error::ConflictingId`](crate::Error::ConflictingId) if the id
    /// exists and `replace_existing` is false; with
    /// [`Error::InvalidJob`](crate::Error::InvalidJob) if this store cannot keep the job
    /// (a closure in a persistent store).
    async fn add_job(&self, job: JobRecord, replace_existing: bool) -> Result<()>;

    /// Adds many jobs at once, with the rules of [`add_job`](Self::add_job) for each (a new
    /// version per job, a replacement is a new incarnation). Several jobs with one id in
    /// `jobs` count as a duplicate: without `replace_existing` that is
    /// [`Error::ConflictingId`](crate::Error::ConflictingId); with it the last one wins.
    ///
    /// Atomicity depends on the store (docs/stores.md lists it per store):
    /// - the memory store, the SQL stores (one transaction, rows inserted in multi-row
    ///   statements) and Redis (one script) are all-or-nothing: on any error, a duplicate
    ///   id included, nothing is added and nothing is replaced;
    /// - this default implementation, which stores without an override get (ZooKeeper),
    ///   calls [`add_job`](Self::add_job) once per job in order after checking the batch
    ///   for duplicate ids (so a duplicate inside the batch adds nothing) but stops at the
    ///   first job the store refuses: the jobs before it stay added. MongoDB (one ordered
    ///   `insert_many` without `replace_existing`) behaves the same way.
    async fn add_jobs(&self, jobs: Vec<JobRecord>, replace_existing: bool) -> Result<()> {
        let jobs = dedupe_batch(jobs, replace_existing)?;
        for job in jobs {
            self.add_job(job, replace_existing).await?;
        }
        Ok(())
    }

    /// Replaces a stored job if its stored version is still `job.version`; returns the job
    /// as stored (with its new version). Fails with
    /// [`Error::JobLookup`](crate::Error::JobLookup) if it is gone and with
    /// [`Error::Fenced`](crate::Error::Fenced) if another writer changed it since it was read.
    async fn update_job(&self, job: JobRecord) -> Result<JobRecord>;

    /// Removes a job; [`Error::JobLookup`](crate::Error::JobLookup) if there is none.
    async fn remove_job(&self, id: &str) -> Result<()>;

    /// Removes every job.
    async fn remove_all_jobs(&self) -> Result<()>;

    /// The job with this id, if any.
    async fn lookup_job(&self, id: &str) -> Result<Option<JobRecord>>;

    /// Every job that can be loaded, by next run time (paused last), ties by id. Records that
    /// cannot be loaded are reported (event + log) and left untouched.
    async fn get_all_jobs(&self) -> Result<Vec<JobRecord>>;

    /// Every record, for an export: each job that loads, and each record that does not as it
    /// is stored ([`UnloadableRecord`]), in [`get_all_jobs`](Self::get_all_jobs)'s order.
    /// The default exports what `get_all_jobs` loads; stores that can read their records
    /// raw override it, so that an export drops nothing.
    async fn export_records(
        &self,
    ) -> Result<Vec<std::result::Result<JobRecord, UnloadableRecord>>> {
        Ok(self.get_all_jobs().await?.into_iter().map(Ok).collect())
    }

    /// The earliest next run time of any unpaused job, if any.
    async fn next_run_time(&self) -> Result<Option<DateTime<Utc>>>;

    /// Claims up to `limit` jobs due at `now` and, in the same atomic step, advances their
    /// next run times with [`DueJob::claim`] (removing exhausted jobs). A job claimed by one
    /// scheduler is not returned to another for the same scheduled time.
    async fn acquire_due_jobs(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueJob>>;

    /// Gives up the claims taken by [`acquire_due_jobs`](Self::acquire_due_jobs) once their
    /// runs have been handed to executors. Stores without leases ignore it.
    async fn release_jobs(&self, jobs: &[DueJob]) -> Result<()> {
        let _ = jobs;
        Ok(())
    }

    /// Whether this store keeps a run ledger (every built-in store does). A store that does
    /// not leaves the ledger's methods at their defaults: the scheduler then counts
    /// `max_instances` in its own process and records no runs.
    fn keeps_runs(&self) -> bool {
        false
    }

    /// Marks runs `claimed` → `started` (with `started_at = now`, no longer queued) just
    /// before the scheduler hands them to executors: one call per batch. Only runs still
    /// claimed and owned by this scheduler change; returns the ids that did (a run another
    /// scheduler took over meanwhile is not started here).
    async fn start_runs(&self, run_ids: &[RunId], now: DateTime<Utc>) -> Result<Vec<RunId>> {
        let _ = (run_ids, now);
        Err(no_ledger())
    }

    /// Writes terminal outcomes ([`RunRecord::apply`]: a run already terminal keeps its
    /// state). Unknown run ids (pruned, or removed with the store's data) are ignored.
    async fn finish_runs(&self, outcomes: &[RunOutcome]) -> Result<()> {
        let _ = outcomes;
        Err(no_ledger())
    }

    /// Creates run records the scheduler made outside a claim: the next attempts of failed
    /// runs ([`RunRecord::retry`]), `claimed` by this scheduler and due at their `retry_at`.
    /// They count as active runs (a waiting retry holds its instance) and are taken over
    /// like any claimed run when their owner dies. Idempotent: a record whose run id (or,
    /// for scheduled runs, whose job, scheduled time and attempt) is already stored is kept
    /// as it is, so a write retried after an unknown outcome cannot double a retry. The
    /// scheduler calls this before [`finish_runs`](Self::finish_runs) for the failed
    /// attempts, so a crash in between cannot lose a retry.
    async fn add_runs(&self, runs: &[RunRecord]) -> Result<()> {
        let _ = runs;
        Err(no_ledger())
    }

    /// Creates manual runs of job `job_id` at `slots` (`run_now`, `backfill`) with
    /// [`plan_manual_runs`](crate::ledger::plan_manual_runs), in one atomic step with the
    /// read of the job's active runs (and the `cancel_requested` flags it sets), without
    /// changing the job's next run time. Returns the records as created.
    /// [`Error::JobLookup`](crate::Error::JobLookup) if the job does not exist.
    async fn add_manual_runs(
        &self,
        job_id: &str,
        slots: &[DateTime<Utc>],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunRecord>> {
        let _ = (job_id, slots, now);
        Err(no_ledger())
    }

    /// The scheduler's periodic ledger pass (every third of the lease, and when a run of a
    /// job with queued runs finishes):
    /// - records this scheduler as alive until `now + lease`;
    /// - takes over the active runs of schedulers no longer alive: claimed ones become this
    ///   scheduler's and are returned to start ([`RunTick::dispatch`]); started ones become
    ///   `abandoned` ([`RunTick::abandoned`]);
    /// - promotes queued runs (oldest first) of jobs with a free instance to this scheduler,
    ///   atomically with the claims of those jobs, and returns them to start
    ///   ([`RunTick::promoted`]);
    /// - returns this scheduler's started runs flagged `cancel_requested`;
    /// - prunes finished runs beyond [`StoreContext::run_retention`], a bounded amount per
    ///   call.
    async fn tick_runs(&self, now: DateTime<Utc>) -> Result<RunTick> {
        let _ = now;
        Err(no_ledger())
    }

    /// Records this scheduler as alive until `now + lease`, and nothing else: the heartbeat
    /// of [`tick_runs`](Self::tick_runs) on its own. The scheduler calls it from a task of
    /// its own every third of the lease while it runs (also while paused, and while it
    /// drains its runs at shutdown), so that a slow pass of the loop, a pause or a long
    /// shutdown never makes a live scheduler look dead to the others sharing the store
    /// (which would mark its started runs `abandoned` and start its claimed ones).
    ///
    /// The default does nothing, which is correct for a store that no other scheduler
    /// shares (nobody takes its runs over) and tolerable for one that is shared: its
    /// heartbeat is then only as regular as its ledger passes.
    async fn heartbeat(&self, now: DateTime<Utc>) -> Result<()> {
        let _ = now;
        Ok(())
    }

    /// Runs passing `filter`, newest first (scheduled time, then run id, descending), at
    /// most `filter.limit` ([`RunFilter::matches`] is the reference).
    async fn query_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let _ = filter;
        Err(no_ledger())
    }

    /// Whether a ledger pass ([`tick_runs`](Self::tick_runs)) may have work at `now`, asked
    /// after outcomes were written: a store only this scheduler uses runs its pass only when
    /// asked, and a pass with nothing to do costs a loop wake-up per write in a storm of
    /// runs. A hint: `true` (the default) is always correct; answer `false` only when the
    /// pass would do nothing (no queued runs, no cancel requests, no pruning due).
    fn tick_wanted(&self, now: DateTime<Utc>) -> bool {
        let _ = now;
        true
    }

    /// One run by id.
    async fn get_run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
        let _ = run_id;
        Err(no_ledger())
    }

    /// How often the scheduler should look at this store even when it has no reason to
    /// (other processes may add jobs to it without waking this one). `None` for stores
    /// only this scheduler writes to, or that push notifications through
    /// [`StoreContext::wake_scheduler`].
    fn poll_interval(&self) -> Option<Duration> {
        None
    }

    /// Whether this store keeps jobs beyond the process (and so needs named tasks).
    fn is_persistent(&self) -> bool {
        false
    }
}

/// What the ledger methods of a store without a ledger return.
fn no_ledger() -> crate::Error {
    crate::Error::Unsupported("this store keeps no run ledger".into())
}

/// The batch [`JobStore::add_jobs`] writes: `jobs` with, when `replace` is set, only the
/// last of several jobs with one id (as adding them one by one would leave); without it,
/// such an id is [`Error::ConflictingId`](crate::Error::ConflictingId).
pub(crate) fn dedupe_batch(jobs: Vec<JobRecord>, replace: bool) -> Result<Vec<JobRecord>> {
    let mut last: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        if last.insert(job.id.as_str(), i).is_some() && !replace {
            return Err(crate::Error::ConflictingId(job.id.clone()));
        }
    }
    if last.len() == jobs.len() {
        return Ok(jobs);
    }
    let keep: std::collections::HashSet<usize> = last.into_values().collect();
    Ok(jobs
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, j)| j)
        .collect())
}

/// Opens the store a URL names. Connecting happens when the scheduler starts the store, so
/// this never blocks.
///
/// | URL | store | cargo feature |
/// |---|---|---|
/// | `memory://` | [`MemoryStore`] | — |
/// | `sqlite://path/to/file.db` | SQL store on SQLite | `sqlite` |
/// | `postgres://user@host/db` | SQL store on PostgreSQL | `postgres` |
/// | `mysql://user@host/db` | SQL store on MySQL / MariaDB | `mysql` |
/// | `redis://host:port/` | Redis store | `redis` |
/// | `mongodb://host:port/db` | MongoDB store | `mongodb` |
/// | `zk://host:port/root/path` | ZooKeeper store | `zookeeper` |
///
/// # Errors
/// [`Error::InvalidStoreUrl`](crate::Error::InvalidStoreUrl) for an unknown scheme, or a
/// scheme whose feature is not compiled in (the message names the feature).
///
/// ```
/// let store = apsched::store::from_url("memory://").unwrap();
/// let scheduler = apsched::Scheduler::builder().store("default", store).build();
/// assert!(apsched::store::from_url("ftp://nope").is_err());
/// ```
pub fn from_url(url: &str) -> Result<Box<dyn JobStore>> {
    let scheme = url.split_once("://").map_or(url, |(s, _)| s);
    // Unused when every store's feature is compiled in.
    #[allow(unused_variables)]
    let missing = |feature: &str| -> Result<Box<dyn JobStore>> {
        Err(crate::Error::InvalidStoreUrl {
            url: url.to_string(),
            reason: format!(
                "this build has no {scheme} store: enable apsched's `{feature}` cargo feature"
            ),
        })
    };
    match scheme {
        "memory" => Ok(Box::new(MemoryStore::new())),
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Box::new(SqlStore::new(url)?)),
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => missing("sqlite"),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Box::new(SqlStore::new(url)?)),
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => missing("postgres"),
        #[cfg(feature = "mysql")]
        "mysql" | "mariadb" => Ok(Box::new(SqlStore::new(url)?)),
        #[cfg(not(feature = "mysql"))]
        "mysql" | "mariadb" => missing("mysql"),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(Box::new(RedisStore::new(url)?)),
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" => missing("redis"),
        #[cfg(feature = "mongodb")]
        "mongodb" | "mongodb+srv" => Ok(Box::new(MongoStore::new(url)?)),
        #[cfg(not(feature = "mongodb"))]
        "mongodb" | "mongodb+srv" => missing("mongodb"),
        #[cfg(feature = "zookeeper")]
        "zk" | "zookeeper" => {
            let rest = url.split_once("://").map_or("", |(_, r)| r);
            let (hosts, root) = rest.split_once('/').unwrap_or((rest, ""));
            let store = ZooKeeperStore::new(hosts)?;
            Ok(Box::new(if root.is_empty() {
                store
            } else {
                store.with_root(root)
            }))
        }
        #[cfg(not(feature = "zookeeper"))]
        "zk" | "zookeeper" => missing("zookeeper"),
        _ => Err(crate::Error::InvalidStoreUrl {
            url: url.to_string(),
            reason: "unknown scheme; use memory://, sqlite://, postgres://, mysql://, redis://, \
                     mongodb:// or zk://"
                .into(),
        }),
    }
}

/// Implements [`JobStore`] for a pointer to a store by forwarding every method to the store
/// it points to (one list of methods for every pointer type below).
macro_rules! forward_job_store {
    ($(#[$doc:meta])* impl [$($generics:tt)*] for $pointer:ty) => {
        $(#[$doc])*
        #[async_trait::async_trait]
        impl<$($generics)*> JobStore for $pointer {
    async fn start(&self, ctx: StoreContext) -> Result<()> {
        (**self).start(ctx).await
    }
    async fn shutdown(&self) -> Result<()> {
        (**self).shutdown().await
    }
    async fn add_job(&self, job: JobRecord, replace_existing: bool) -> Result<()> {
        (**self).add_job(job, replace_existing).await
    }
    async fn add_jobs(&self, jobs: Vec<JobRecord>, replace_existing: bool) -> Result<()> {
        (**self).add_jobs(jobs, replace_existing).await
    }
    async fn update_job(&self, job: JobRecord) -> Result<JobRecord> {
        (**self).update_job(job).await
    }
    async fn remove_job(&self, id: &str) -> Result<()> {
        (**self).remove_job(id).await
    }
    async fn remove_all_jobs(&self) -> Result<()> {
        (**self).remove_all_jobs().await
    }
    async fn lookup_job(&self, id: &str) -> Result<Option<JobRecord>> {
        (**self).lookup_job(id).await
    }
    async fn get_all_jobs(&self) -> Result<Vec<JobRecord>> {
        (**self).get_all_jobs().await
    }
    async fn export_records(
        &self,
    ) -> Result<Vec<std::result::Result<JobRecord, UnloadableRecord>>> {
        (**self).export_records().await
    }
    async fn next_run_time(&self) -> Result<Option<DateTime<Utc>>> {
        (**self).next_run_time().await
    }
    async fn acquire_due_jobs(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueJob>> {
        (**self).acquire_due_jobs(now, limit).await
    }
    async fn release_jobs(&self, jobs: &[DueJob]) -> Result<()> {
        (**self).release_jobs(jobs).await
    }
    fn keeps_runs(&self) -> bool {
        (**self).keeps_runs()
    }
    async fn start_runs(&self, run_ids: &[RunId], now: DateTime<Utc>) -> Result<Vec<RunId>> {
        (**self).start_runs(run_ids, now).await
    }
    async fn finish_runs(&self, outcomes: &[RunOutcome]) -> Result<()> {
        (**self).finish_runs(outcomes).await
    }
    async fn add_runs(&self, runs: &[RunRecord]) -> Result<()> {
        (**self).add_runs(runs).await
    }
    async fn add_manual_runs(
        &self,
        job_id: &str,
        slots: &[DateTime<Utc>],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunRecord>> {
        (**self).add_manual_runs(job_id, slots, now).await
    }
    async fn tick_runs(&self, now: DateTime<Utc>) -> Result<RunTick> {
        (**self).tick_runs(now).await
    }
    async fn heartbeat(&self, now: DateTime<Utc>) -> Result<()> {
        (**self).heartbeat(now).await
    }
    fn tick_wanted(&self, now: DateTime<Utc>) -> bool {
        (**self).tick_wanted(now)
    }
    async fn query_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        (**self).query_runs(filter).await
    }
    async fn get_run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
        (**self).get_run(run_id).await
    }
    fn poll_interval(&self) -> Option<Duration> {
        (**self).poll_interval()
    }
    fn is_persistent(&self) -> bool {
        (**self).is_persistent()
    }
        }
    };
}

forward_job_store!(
    /// A shared store is a store (so one store can be started by several schedulers in one
    /// process, as in the ledger's contract tests).
    impl [T: JobStore] for Arc<T>
);

forward_job_store!(
    /// A boxed store is a store (so [`from_url`]'s result goes straight into the builder).
    impl [] for Box<dyn JobStore>
);
