//! The scheduler: a cheap, cloneable handle to one loop.
//!
//! [`Scheduler`] runs on the Tokio runtime it is started on, and its handle works from any
//! other runtime too (see `home.rs`). [`BackgroundScheduler`] owns a runtime
//! and offers the same operations as plain blocking calls; [`BlockingScheduler`] runs until
//! shutdown or Ctrl-C; [`LocalScheduler`] adds a [`LocalExecutor`](crate::executor::LocalExecutor)
//! for `!Send` jobs.

mod add;
mod background;
mod builder;
mod core;
mod home;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures::future::BoxFuture;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::add::AddJob;
pub use self::background::{BackgroundScheduler, BlockingScheduler, LocalScheduler};
pub use self::builder::SchedulerBuilder;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::event::{Event, EventBus, EventKind, EventReceiver};
use crate::executor::{self, Executor, Instances, RunContext};
use crate::job::{Job, JobDefaults, JobRecord};
use crate::store::{JobStore, StoreContext};
use crate::sync::{MutexExt, RwLockExt};
use crate::task::TaskRegistry;
use crate::trigger::{Trigger, TriggerSpec};

/// `planned_wakeup` while the loop is in a pass (or has not planned yet).
pub(crate) const AWAKE: i64 = i64::MIN;

/// Where the scheduler is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerState {
    /// Not started, or shut down.
    Stopped,
    /// Running jobs.
    Running,
    /// Started, but not processing jobs (see [`Scheduler::pause`]).
    Paused,
}

impl SchedulerState {
    fn name(self) -> &'static str {
        match self {
            SchedulerState::Stopped => "stopped",
            SchedulerState::Running => "running",
            SchedulerState::Paused => "paused",
        }
    }
}

/// Changes for [`Scheduler::modify_job`]; fields left unset keep their value.
///
/// ```
/// use std::time::Duration;
/// use apsched::JobChanges;
/// let changes = JobChanges::new().name("nightly report").max_instances(2)
///     .misfire_grace_time(Some(Duration::from_secs(60)));
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct JobChanges {
    name: Option<String>,
    trigger: Option<TriggerSpec>,
    executor: Option<String>,
    misfire_grace_time: Option<Option<Duration>>,
    coalesce: Option<bool>,
    max_instances: Option<u32>,
    next_run_time: Option<Option<DateTime<Utc>>>,
}

impl JobChanges {
    /// No changes.
    pub fn new() -> Self {
        Self::default()
    }
    /// Renames the job.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Replaces the trigger without recomputing the next run time (see
    /// [`Scheduler::reschedule_job`] for that).
    pub fn trigger(mut self, trigger: impl Into<TriggerSpec>) -> Self {
        self.trigger = Some(trigger.into());
        self
    }
    /// Moves the job to another executor.
    pub fn executor(mut self, alias: impl Into<String>) -> Self {
        self.executor = Some(alias.into());
        self
    }
    /// Sets the grace time (`None` = any lateness).
    pub fn misfire_grace_time(mut self, grace: Option<Duration>) -> Self {
        self.misfire_grace_time = Some(grace);
        self
    }
    /// Sets coalescing.
    pub fn coalesce(mut self, coalesce: bool) -> Self {
        self.coalesce = Some(coalesce);
        self
    }
    /// Sets the maximum concurrent runs.
    pub fn max_instances(mut self, n: u32) -> Self {
        self.max_instances = Some(n);
        self
    }
    /// Sets the next run time (`None` pauses the job).
    pub fn next_run_time(mut self, t: Option<DateTime<Utc>>) -> Self {
        self.next_run_time = Some(t);
        self
    }
}

/// A handle to a scheduler. Cheap to clone; every clone drives the same scheduler, so it
/// can live in axum state or actix-web `web::Data`, or be moved into jobs.
///
/// # Runtimes
/// The scheduler runs on the Tokio runtime that [`start`](Self::start) is called on (a
/// [`BackgroundScheduler`]'s own runtime): the loop, every run of the default
/// [`TokioExecutor`](crate::executor::TokioExecutor), and the listeners of
/// [`add_listener`](Self::add_listener) are tasks of that runtime, until
/// [`shutdown`](Self::shutdown). Every method may be called from any other runtime (an
/// actix-web worker's current-thread runtime, a test's) or from a thread with none: what a
/// call spawns, and the timers and connections it opens, go to the scheduler's runtime, so
/// a job added from a worker keeps running after that worker's runtime is gone. Start the
/// scheduler on a runtime that lives as long as it does and is not blocked: while that
/// runtime is blocked (a current-thread runtime whose thread waits on something else), no
/// job starts and no listener runs.
///
/// ```
/// use std::time::Duration;
/// use apsched::{Scheduler, trigger::Interval};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> apsched::Result<()> {
/// let scheduler = Scheduler::builder().build();
/// scheduler.start().await?;
/// let job = scheduler
///     .add_job(|| async { println!("tick") })
///     .trigger(Interval::new(Duration::from_secs(60))?)
///     .id("tick")
///     .await?;
/// assert_eq!(job.id, "tick");
/// scheduler.shutdown(true).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("id", &self.inner.id)
            .field("state", &self.state())
            .finish()
    }
}

/// A job added before the scheduler started; it enters its store at start.
struct Pending {
    job: JobRecord,
    store: String,
    replace_existing: bool,
    /// `Some` when the caller set the next run time (or paused the job) explicitly.
    next_run_time: Option<Option<DateTime<Utc>>>,
}

/// Per-store retry state after a failure.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    retry_at: DateTime<Utc>,
    delay: Duration,
}

struct Life {
    /// In the order they were added (the order they enter their stores at start).
    pending: Vec<Pending>,
    loop_task: Option<(JoinHandle<()>, CancellationToken)>,
    backoff: HashMap<String, Backoff>,
    listeners: HashMap<u64, JoinHandle<()>>,
    /// Listeners added while stopped; they start with the scheduler, on its runtime.
    waiting_listeners: HashMap<u64, BoxFuture<'static, ()>>,
    next_listener: u64,
}

pub(crate) struct Inner {
    id: String,
    clock: Arc<dyn Clock>,
    timezone: Tz,
    defaults: JobDefaults,
    events: EventBus,
    tasks: Arc<TaskRegistry>,
    lease: Duration,
    batch_size: usize,
    manual: bool,
    wakeup: Arc<Notify>,
    /// When the loop plans to wake next (µs since the epoch); [`AWAKE`] while it is in a
    /// pass. Changes that make nothing due earlier than this need not wake it.
    planned_wakeup: AtomicI64,
    instances: Arc<Instances>,
    /// What every run needs, shared: one reference count per run instead of one per part.
    run_context: Arc<RunContext>,
    state: watch::Sender<SchedulerState>,
    stores: RwLock<Vec<(String, Arc<dyn JobStore>)>>,
    executors: RwLock<Vec<(String, Arc<dyn Executor>)>>,
    life: Mutex<Life>,
    /// Set by the flavours that own a runtime, so that [`AddJob::add`] can block on it.
    runtime: Mutex<Option<tokio::runtime::Handle>>,
    /// The runtime the scheduler runs on, from `start` to `shutdown` (see `home.rs`).
    home: Mutex<Option<tokio::runtime::Handle>>,
}

impl Life {
    /// Where the pending job `id` (of `store`, if given) is in the pending list now.
    fn pending_index(&self, id: &str, store: &str) -> Option<usize> {
        self.pending
            .iter()
            .position(|p| p.job.id == id && p.store == store)
    }

    /// The pending job `id` (of `store`, if given).
    fn pending_job(&self, id: &str, store: Option<&str>) -> Option<&Pending> {
        self.pending
            .iter()
            .find(|p| p.job.id == id && store.is_none_or(|s| s == p.store))
    }
}

/// Identifies a listener added with [`Scheduler::add_listener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

impl Inner {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: String,
        clock: Arc<dyn Clock>,
        timezone: Tz,
        defaults: JobDefaults,
        event_capacity: usize,
        tasks: Arc<TaskRegistry>,
        lease: Duration,
        batch_size: usize,
        manual: bool,
        stores: Vec<(String, Arc<dyn JobStore>)>,
        executors: Vec<(String, Arc<dyn Executor>)>,
    ) -> Self {
        let events = EventBus::new(event_capacity);
        let run_context = Arc::new(RunContext {
            clock: clock.clone(),
            events: events.clone(),
            tasks: tasks.clone(),
        });
        Inner {
            id,
            clock,
            timezone,
            defaults,
            events,
            run_context,
            tasks,
            lease,
            batch_size,
            manual,
            wakeup: Arc::new(Notify::new()),
            planned_wakeup: AtomicI64::new(AWAKE),
            instances: Arc::new(Instances::default()),
            state: watch::Sender::new(SchedulerState::Stopped),
            stores: RwLock::new(stores),
            executors: RwLock::new(executors),
            life: Mutex::new(Life {
                pending: Vec::new(),
                loop_task: None,
                backoff: HashMap::new(),
                listeners: HashMap::new(),
                waiting_listeners: HashMap::new(),
                next_listener: 0,
            }),
            runtime: Mutex::new(None),
            home: Mutex::new(None),
        }
    }

    fn life(&self) -> MutexGuard<'_, Life> {
        self.life.lock_unpoisoned()
    }

    fn state(&self) -> SchedulerState {
        *self.state.borrow()
    }

    fn stores(&self) -> Vec<(String, Arc<dyn JobStore>)> {
        self.stores.read_unpoisoned().clone()
    }

    fn store(&self, alias: &str) -> Result<Arc<dyn JobStore>> {
        self.stores
            .read_unpoisoned()
            .iter()
            .find(|(a, _)| a == alias)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| Error::UnknownStore(alias.to_string()))
    }

    fn executor(&self, alias: &str) -> Option<Arc<dyn Executor>> {
        self.executors
            .read_unpoisoned()
            .iter()
            .find(|(a, _)| a == alias)
            .map(|(_, e)| e.clone())
    }

    fn store_context(&self, alias: &str) -> StoreContext {
        StoreContext::new(
            alias,
            self.id.clone(),
            self.lease,
            self.tasks.clone(),
            self.wakeup.clone(),
            self.events.clone(),
            self.clock.clone(),
        )
    }

    fn wakeup(&self) {
        self.wakeup.notify_one();
    }

    /// Wakes the loop if a job is now due at `t`, earlier than the loop plans to wake. Call
    /// after the store write, so the loop either sees the job or gets woken.
    fn wakeup_for(&self, t: Option<DateTime<Utc>>) {
        let Some(t) = t else { return };
        let planned = self.planned_wakeup.load(Ordering::SeqCst);
        if planned == AWAKE || t.timestamp_micros() < planned {
            self.wakeup();
        }
    }

    fn check_started(&self) -> bool {
        self.state() != SchedulerState::Stopped
    }
}

impl Scheduler {
    /// Starts configuring a scheduler.
    pub fn builder() -> SchedulerBuilder {
        SchedulerBuilder::default()
    }

    fn from_inner(inner: Inner) -> Self {
        Scheduler {
            inner: Arc::new(inner),
        }
    }

    /// This scheduler's identity (the lease owner in shared stores).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The zone given to triggers built without one.
    pub fn timezone(&self) -> Tz {
        self.inner.timezone
    }

    /// The scheduler's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The scheduler's current state.
    pub fn state(&self) -> SchedulerState {
        self.inner.state()
    }

    /// Starts the scheduler: starts stores, adds the jobs added so far, then runs the loop
    /// on the current Tokio runtime, which becomes the scheduler's runtime (see
    /// [Runtimes](Self#runtimes)).
    ///
    /// # Errors
    /// [`Error::State`] if it is already running, or if it is called outside a Tokio runtime
    /// (only a [`manual`](SchedulerBuilder::manual) scheduler, which has no loop, may be); a
    /// store error if a store cannot start.
    pub async fn start(&self) -> Result<()> {
        self.start_with(SchedulerState::Running).await
    }

    /// Starts the scheduler with job processing paused (resume with [`resume`](Self::resume)).
    pub async fn start_paused(&self) -> Result<()> {
        self.start_with(SchedulerState::Paused).await
    }

    async fn start_with(&self, state: SchedulerState) -> Result<()> {
        let inner = &self.inner;
        if inner.check_started() {
            return Err(Error::State {
                needed: "stopped",
                actual: inner.state().name(),
            });
        }
        let home = tokio::runtime::Handle::try_current().ok();
        if home.is_none() && !inner.manual {
            return Err(Error::State {
                needed: "started inside a Tokio runtime (it runs the loop)",
                actual: "called outside any runtime",
            });
        }
        let executors = inner.executors.read_unpoisoned().clone();
        for (alias, _) in &executors {
            inner.events.emit(Event::ExecutorAdded {
                alias: alias.clone(),
            });
        }
        for (alias, store) in inner.stores() {
            store.start(inner.store_context(&alias)).await?;
            inner.events.emit(Event::JobStoreAdded { alias });
        }
        inner.set_home(home.clone());
        inner.state.send_replace(state);
        let pending = std::mem::take(&mut inner.life().pending);
        let now = inner.clock.now();
        for p in pending {
            let mut job = p.job;
            job.next_run_time = match p.next_run_time {
                Some(explicit) => explicit,
                None => job.trigger.next_fire_time(None, now),
            };
            let id = job.id.clone();
            match self.store_new_job(job, &p.store, p.replace_existing).await {
                Ok(()) => {}
                Err(e) => tracing::error!(job_id = %id, error = %e, "could not add pending job"),
            }
        }
        inner.events.emit(Event::SchedulerStarted);
        if let (Some(home), false) = (&home, inner.manual) {
            let token = CancellationToken::new();
            let handle = home.spawn(core::run_loop(self.inner.clone(), token.clone()));
            inner.life().loop_task = Some((handle, token));
        }
        inner.wakeup();
        Ok(())
    }

    /// Stops the loop, then the executors (with `wait`, after the runs in flight finish) and
    /// the stores. Jobs stay in their stores.
    ///
    /// Called from inside one of this scheduler's jobs, `shutdown(true)` waits for every
    /// other run in flight but not for the calling one (which cannot end while it waits);
    /// the caller's run finishes after `shutdown` returns.
    ///
    /// # Errors
    /// [`Error::State`] if the scheduler is not running.
    pub async fn shutdown(&self, wait: bool) -> Result<()> {
        self.inner.at_home(self.shutdown_at_home(wait)).await
    }

    async fn shutdown_at_home(&self, wait: bool) -> Result<()> {
        let inner = &self.inner;
        if !inner.check_started() {
            return Err(Error::State {
                needed: "running",
                actual: "stopped",
            });
        }
        let task = inner.life().loop_task.take();
        if let Some((handle, token)) = task {
            token.cancel();
            if let Err(e) = handle.await {
                // The loop is supervised, so this is a bug; never swallow it silently.
                tracing::error!(error = %e, "the scheduler loop ended abnormally");
                inner.events.emit(Event::SchedulerError {
                    message: format!("the scheduler loop ended abnormally: {e}"),
                });
            }
        }
        let inside_job = executor::inside_run_of(&inner.instances);
        let executors = inner.executors.read_unpoisoned().clone();
        for (_, ex) in executors {
            ex.shutdown(wait && !inside_job).await;
        }
        if wait && inside_job {
            // Every run but the caller's own.
            inner.instances.wait_until_at_most(1).await;
        }
        for (alias, store) in inner.stores() {
            if let Err(e) = store.shutdown().await {
                tracing::warn!(store = %alias, error = %e, "store shutdown failed");
            }
        }
        inner.set_home(None);
        inner.state.send_replace(SchedulerState::Stopped);
        inner.events.emit(Event::SchedulerShutdown);
        Ok(())
    }

    /// Waits until the scheduler is shut down (from any handle).
    pub async fn wait_for_shutdown(&self) {
        let mut rx = self.inner.state.subscribe();
        let _ = rx.wait_for(|s| *s == SchedulerState::Stopped).await;
    }

    /// Pauses job processing: no job is submitted until [`resume`](Self::resume). Due times
    /// that pass meanwhile are handled by the misfire and coalesce rules on resume.
    pub fn pause(&self) -> Result<()> {
        match self.state() {
            SchedulerState::Running => {
                self.inner.state.send_replace(SchedulerState::Paused);
                self.inner.events.emit(Event::SchedulerPaused);
                Ok(())
            }
            other => Err(Error::State {
                needed: "running",
                actual: other.name(),
            }),
        }
    }

    /// Resumes job processing after [`pause`](Self::pause).
    pub fn resume(&self) -> Result<()> {
        match self.state() {
            SchedulerState::Paused => {
                self.inner.state.send_replace(SchedulerState::Running);
                self.inner.events.emit(Event::SchedulerResumed);
                self.inner.wakeup();
                Ok(())
            }
            other => Err(Error::State {
                needed: "paused",
                actual: other.name(),
            }),
        }
    }

    /// Wakes the loop to look at the stores now (e.g. after changing a shared store from
    /// outside this scheduler).
    pub fn wakeup(&self) {
        self.inner.wakeup();
    }

    /// Runs one pass of the loop now: submits due jobs and returns how long until the next
    /// one (`None` = nothing scheduled). The loop calls this; call it yourself with a
    /// scheduler built with [`SchedulerBuilder::manual`].
    pub async fn process_due_jobs(&self) -> Option<Duration> {
        self.inner
            .at_home(core::process_due_jobs(&self.inner))
            .await
    }

    /// Events matching `mask`, from now on.
    pub fn subscribe(&self, mask: EventKind) -> EventReceiver {
        self.inner.events.subscribe(mask)
    }

    /// Runs `f` for each event matching `mask`, on a task of its own: a slow listener
    /// delays no job (it only falls behind, and past the event capacity loses events).
    ///
    /// The task runs on the scheduler's runtime, whichever runtime this is called from. A
    /// listener added while the scheduler is stopped starts with it (events emitted
    /// meanwhile wait for it, up to the event capacity).
    pub fn add_listener<F, Fut>(&self, mask: EventKind, f: F) -> ListenerId
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut rx = self.subscribe(mask);
        let listener = Box::pin(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => f(ev).await,
                    Err(crate::event::RecvError::Lagged(n)) => {
                        tracing::warn!("event listener fell behind and lost {n} events")
                    }
                    Err(crate::event::RecvError::Closed) => break,
                }
            }
        });
        ListenerId(self.inner.spawn_listener(listener))
    }

    /// Stops a listener added with [`add_listener`](Self::add_listener).
    pub fn remove_listener(&self, id: ListenerId) -> bool {
        let mut life = self.inner.life();
        match life.listeners.remove(&id.0) {
            Some(h) => {
                h.abort();
                true
            }
            None => life.waiting_listeners.remove(&id.0).is_some(),
        }
    }

    /// Adds an executor under `alias`.
    ///
    /// # Errors
    /// [`Error::AliasInUse`] if the alias is taken.
    pub fn add_executor(&self, alias: impl Into<String>, executor: impl Executor) -> Result<()> {
        let alias = alias.into();
        {
            let mut executors = self.inner.executors.write_unpoisoned();
            if executors.iter().any(|(a, _)| *a == alias) {
                return Err(Error::AliasInUse(alias));
            }
            executors.push((alias.clone(), Arc::new(executor)));
        }
        self.inner.events.emit(Event::ExecutorAdded { alias });
        Ok(())
    }

    /// Removes an executor (after letting its runs in flight finish). Jobs that name it stay
    /// in their stores and are reported with a [`Event::JobError`] each time they come due.
    ///
    /// Called from inside one of this scheduler's jobs, it does not wait for the runs in
    /// flight (the caller's may be one of them); they finish on their own.
    pub async fn remove_executor(&self, alias: &str) -> Result<()> {
        self.inner
            .at_home(self.remove_executor_at_home(alias))
            .await
    }

    async fn remove_executor_at_home(&self, alias: &str) -> Result<()> {
        let removed = {
            let mut executors = self.inner.executors.write_unpoisoned();
            let i = executors
                .iter()
                .position(|(a, _)| a == alias)
                .ok_or_else(|| Error::UnknownExecutor(alias.to_string()))?;
            executors.remove(i).1
        };
        removed
            .shutdown(!executor::inside_run_of(&self.inner.instances))
            .await;
        self.inner.events.emit(Event::ExecutorRemoved {
            alias: alias.to_string(),
        });
        Ok(())
    }

    /// Adds a job store under `alias` (started at once if the scheduler runs).
    ///
    /// # Errors
    /// [`Error::AliasInUse`] if the alias is taken; the store's error if it cannot start.
    pub async fn add_store(&self, alias: impl Into<String>, store: impl JobStore) -> Result<()> {
        self.inner
            .at_home(self.add_store_at_home(alias.into(), store))
            .await
    }

    async fn add_store_at_home(&self, alias: String, store: impl JobStore) -> Result<()> {
        if self.inner.store(&alias).is_ok() {
            return Err(Error::AliasInUse(alias));
        }
        let store: Arc<dyn JobStore> = Arc::new(store);
        if self.inner.check_started() {
            store.start(self.inner.store_context(&alias)).await?;
        }
        {
            let mut stores = self.inner.stores.write_unpoisoned();
            if stores.iter().any(|(a, _)| *a == alias) {
                return Err(Error::AliasInUse(alias));
            }
            stores.push((alias.clone(), store));
        }
        self.inner.events.emit(Event::JobStoreAdded { alias });
        self.inner.wakeup();
        Ok(())
    }

    /// Removes a job store (its jobs stay in it, but this scheduler no longer runs them).
    pub async fn remove_store(&self, alias: &str) -> Result<()> {
        self.inner.at_home(self.remove_store_at_home(alias)).await
    }

    async fn remove_store_at_home(&self, alias: &str) -> Result<()> {
        let removed = {
            let mut stores = self.inner.stores.write_unpoisoned();
            let i = stores
                .iter()
                .position(|(a, _)| a == alias)
                .ok_or_else(|| Error::UnknownStore(alias.to_string()))?;
            stores.remove(i).1
        };
        if let Err(e) = removed.shutdown().await {
            tracing::warn!(store = %alias, error = %e, "store shutdown failed");
        }
        self.inner.events.emit(Event::JobStoreRemoved {
            alias: alias.to_string(),
        });
        Ok(())
    }

    /// Writes a new job to its store, emits JOB_ADDED and wakes the loop.
    async fn store_new_job(&self, job: JobRecord, store: &str, replace: bool) -> Result<()> {
        let (id, next) = (job.id.clone(), job.next_run_time);
        self.inner.store(store)?.add_job(job, replace).await?;
        self.inner.events.emit_with(|| Event::JobAdded {
            job_id: id,
            store: store.to_string(),
        });
        self.inner.wakeup_for(next);
        Ok(())
    }

    /// Finds a job: in `store` if given, else in every store in order. Pending jobs (added
    /// before start) are found too, as a copy (callers that change one find it again by id
    /// under the lock: a position in the pending list goes stale when another call removes
    /// an earlier entry).
    async fn locate(&self, id: &str, store: Option<&str>) -> Result<Located> {
        if let Some(p) = self.inner.life().pending_job(id, store) {
            return Ok(Located::Pending(p.store.clone(), Box::new(p.job.clone())));
        }
        let stores = match store {
            Some(alias) => vec![(alias.to_string(), self.inner.store(alias)?)],
            None => self.inner.stores(),
        };
        for (alias, s) in stores {
            if let Some(job) = s.lookup_job(id).await? {
                return Ok(Located::Stored(alias, s, Box::new(job)));
            }
        }
        Err(Error::JobLookup(id.to_string()))
    }

    /// The job with this id (searching every store unless `store` is given).
    pub async fn get_job(&self, id: &str, store: Option<&str>) -> Result<Option<Job>> {
        self.inner.at_home(self.get_job_at_home(id, store)).await
    }

    async fn get_job_at_home(&self, id: &str, store: Option<&str>) -> Result<Option<Job>> {
        match self.locate(id, store).await {
            Ok(Located::Pending(alias, job)) => Ok(Some(Job::from_record(&job, &alias, true))),
            Ok(Located::Stored(alias, _, job)) => Ok(Some(Job::from_record(&job, &alias, false))),
            Err(Error::JobLookup(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every job (of `store`, or of all stores), pending ones included, each store's jobs by
    /// next run time.
    pub async fn get_jobs(&self, store: Option<&str>) -> Result<Vec<Job>> {
        self.inner.at_home(self.get_jobs_at_home(store)).await
    }

    async fn get_jobs_at_home(&self, store: Option<&str>) -> Result<Vec<Job>> {
        let mut jobs: Vec<Job> = self
            .inner
            .life()
            .pending
            .iter()
            .filter(|p| store.is_none_or(|s| s == p.store))
            .map(|p| Job::from_record(&p.job, &p.store, true))
            .collect();
        let stores = match store {
            Some(alias) => vec![(alias.to_string(), self.inner.store(alias)?)],
            None => self.inner.stores(),
        };
        for (alias, s) in stores {
            jobs.extend(
                s.get_all_jobs()
                    .await?
                    .iter()
                    .map(|j| Job::from_record(j, &alias, false)),
            );
        }
        Ok(jobs)
    }

    /// A readable table of the jobs with their next run times, per store.
    pub async fn jobs_table(&self, store: Option<&str>) -> Result<String> {
        let jobs = self.get_jobs(store).await?;
        let mut out = String::new();
        let mut aliases: Vec<String> = self.inner.stores().into_iter().map(|(a, _)| a).collect();
        if let Some(s) = store {
            aliases.retain(|a| a == s);
        }
        for alias in aliases {
            let _ = writeln!(out, "Jobstore {alias}:");
            let in_store: Vec<&Job> = jobs.iter().filter(|j| j.store == alias).collect();
            if in_store.is_empty() {
                let _ = writeln!(out, "    No scheduled jobs");
            }
            for j in in_store {
                let _ = writeln!(out, "    {j}");
            }
        }
        Ok(out)
    }

    /// Prints [`jobs_table`](Self::jobs_table) to stdout.
    pub async fn print_jobs(&self, store: Option<&str>) -> Result<()> {
        print!("{}", self.jobs_table(store).await?);
        Ok(())
    }

    /// Changes a job's options (see [`JobChanges`]) and emits JOB_MODIFIED.
    ///
    /// # Errors
    /// [`Error::JobLookup`] if there is no such job; [`Error::UnknownExecutor`] for an
    /// unknown executor alias; [`Error::InvalidJob`] for invalid values.
    pub async fn modify_job(
        &self,
        id: &str,
        changes: JobChanges,
        store: Option<&str>,
    ) -> Result<Job> {
        let executor = match &changes.executor {
            Some(alias) => Some((
                alias.clone(),
                self.inner
                    .executor(alias)
                    .ok_or_else(|| Error::UnknownExecutor(alias.clone()))?,
            )),
            None => None,
        };
        add::validate_options(id, changes.misfire_grace_time, changes.max_instances)?;
        let tz = self.inner.timezone;
        let apply = move |job: &mut JobRecord| -> Result<()> {
            let c = changes.clone();
            if let Some((alias, executor)) = &executor {
                // The same check as add_job: the new executor must be able to run the job.
                executor
                    .check(&job.callable)
                    .map_err(|reason| Error::InvalidJob {
                        id: job.id.clone(),
                        reason: format!("executor '{alias}': {reason}"),
                    })?;
                job.executor = alias.clone();
            }
            if let Some(v) = c.name {
                job.name = Some(v);
            }
            if let Some(v) = c.trigger {
                job.trigger = v.with_default_timezone(tz);
            }
            if let Some(v) = c.misfire_grace_time {
                job.misfire_grace_time = v;
            }
            if let Some(v) = c.coalesce {
                job.coalesce = v;
            }
            if let Some(v) = c.max_instances {
                job.max_instances = v;
            }
            if let Some(t) = c.next_run_time {
                job.next_run_time = t;
            }
            Ok(())
        };
        self.update_with(id, store, move |job, _now| {
            apply(job)?;
            Ok(Update::Modify)
        })
        .await?
        .ok_or_else(|| Error::JobLookup(id.to_string()))
    }

    /// Replaces a job's trigger and recomputes its next run time from now.
    pub async fn reschedule_job(
        &self,
        id: &str,
        trigger: impl Into<TriggerSpec>,
        store: Option<&str>,
    ) -> Result<Job> {
        let trigger = trigger.into().with_default_timezone(self.inner.timezone);
        self.update_with(id, store, move |job, now| {
            job.next_run_time = trigger.next_fire_time(None, now);
            job.trigger = trigger.clone();
            Ok(Update::Modify)
        })
        .await?
        .ok_or_else(|| Error::JobLookup(id.to_string()))
    }

    /// Pauses a job: it keeps its trigger but has no next run time until resumed.
    pub async fn pause_job(&self, id: &str, store: Option<&str>) -> Result<Job> {
        self.update_with(id, store, |job, _| {
            job.next_run_time = None;
            Ok(Update::Modify)
        })
        .await?
        .ok_or_else(|| Error::JobLookup(id.to_string()))
    }

    /// Resumes a paused job from now (runs missed while paused are skipped). A job whose
    /// trigger has no fire time left is removed instead (JOB_REMOVED) and `None` returned.
    pub async fn resume_job(&self, id: &str, store: Option<&str>) -> Result<Option<Job>> {
        self.update_with(id, store, |job, now| {
            match job.trigger.next_fire_time(None, now) {
                Some(t) => {
                    job.next_run_time = Some(t);
                    Ok(Update::Modify)
                }
                None => Ok(Update::Remove),
            }
        })
        .await
    }

    /// Reads a job, applies `f`, writes it back (retrying if the loop or another scheduler
    /// changed it in between), and emits the matching event.
    async fn update_with<F>(&self, id: &str, store: Option<&str>, f: F) -> Result<Option<Job>>
    where
        F: Fn(&mut JobRecord, DateTime<Utc>) -> Result<Update>,
    {
        self.inner.at_home(self.update_at_home(id, store, f)).await
    }

    async fn update_at_home<F>(&self, id: &str, store: Option<&str>, f: F) -> Result<Option<Job>>
    where
        F: Fn(&mut JobRecord, DateTime<Utc>) -> Result<Update>,
    {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            let now = self.inner.clock.now();
            match self.locate(id, store).await? {
                Located::Pending(alias, _) => {
                    let mut life = self.inner.life();
                    let Some(i) = life.pending_index(id, &alias) else {
                        continue;
                    };
                    let p = &mut life.pending[i];
                    // A pending job's run time is computed at start unless a call sets it:
                    // mark "not set" so that a pause (None) is told apart from it.
                    let unset = DateTime::<Utc>::MIN_UTC;
                    p.job.next_run_time = p.next_run_time.unwrap_or(Some(unset));
                    let outcome = f(&mut p.job, now);
                    let restore = p.next_run_time;
                    p.next_run_time = match p.job.next_run_time {
                        Some(t) if t == unset => None,
                        explicit => Some(explicit),
                    };
                    p.job.next_run_time = None;
                    let outcome = match outcome {
                        Ok(o) => o,
                        Err(e) => {
                            p.next_run_time = restore;
                            return Err(e);
                        }
                    };
                    let event = |job_id: String, store: String| match outcome {
                        Update::Modify => Event::JobModified { job_id, store },
                        Update::Remove => Event::JobRemoved { job_id, store },
                    };
                    let result = match outcome {
                        Update::Modify => Some(Job::from_record(&p.job, &alias, true)),
                        Update::Remove => {
                            life.pending.remove(i);
                            None
                        }
                    };
                    drop(life);
                    self.inner.events.emit(event(id.to_string(), alias));
                    return Ok(result);
                }
                Located::Stored(alias, s, mut job) => match f(&mut job, now)? {
                    Update::Modify => match s.update_job(*job).await {
                        Ok(stored) => {
                            self.inner.events.emit_with(|| Event::JobModified {
                                job_id: id.to_string(),
                                store: alias.clone(),
                            });
                            self.inner.wakeup_for(stored.next_run_time);
                            return Ok(Some(Job::from_record(&stored, &alias, false)));
                        }
                        Err(Error::Fenced(_)) => continue,
                        Err(e) => return Err(e),
                    },
                    Update::Remove => {
                        s.remove_job(id).await?;
                        self.inner.events.emit(Event::JobRemoved {
                            job_id: id.to_string(),
                            store: alias,
                        });
                        return Ok(None);
                    }
                },
            }
        }
        Err(Error::Fenced(id.to_string()))
    }

    /// Removes a job and emits JOB_REMOVED.
    ///
    /// # Errors
    /// [`Error::JobLookup`] if there is no such job.
    pub async fn remove_job(&self, id: &str, store: Option<&str>) -> Result<()> {
        self.inner.at_home(self.remove_job_at_home(id, store)).await
    }

    async fn remove_job_at_home(&self, id: &str, store: Option<&str>) -> Result<()> {
        match self.locate(id, store).await? {
            Located::Pending(alias, _) => {
                let removed = {
                    let mut life = self.inner.life();
                    life.pending_index(id, &alias)
                        .map(|i| life.pending.remove(i))
                };
                if removed.is_none() {
                    return Err(Error::JobLookup(id.to_string()));
                }
                self.inner.events.emit(Event::JobRemoved {
                    job_id: id.to_string(),
                    store: alias,
                });
                Ok(())
            }
            Located::Stored(alias, s, _) => {
                s.remove_job(id).await?;
                self.inner.events.emit(Event::JobRemoved {
                    job_id: id.to_string(),
                    store: alias,
                });
                Ok(())
            }
        }
    }

    /// Removes every job (of `store`, or of all stores) and emits ALL_JOBS_REMOVED.
    pub async fn remove_all_jobs(&self, store: Option<&str>) -> Result<()> {
        self.inner
            .at_home(self.remove_all_jobs_at_home(store))
            .await
    }

    async fn remove_all_jobs_at_home(&self, store: Option<&str>) -> Result<()> {
        self.inner
            .life()
            .pending
            .retain(|p| store.is_some_and(|s| s != p.store));
        let stores = match store {
            Some(alias) => vec![(alias.to_string(), self.inner.store(alias)?)],
            None => self.inner.stores(),
        };
        for (_, s) in stores {
            s.remove_all_jobs().await?;
        }
        self.inner.events.emit(Event::AllJobsRemoved {
            store: store.map(str::to_string),
        });
        Ok(())
    }
}

enum Located {
    /// A pending job (a copy) and its store alias.
    Pending(String, Box<JobRecord>),
    Stored(String, Arc<dyn JobStore>, Box<JobRecord>),
}

enum Update {
    Modify,
    Remove,
}
