//! The scheduler: a cheap, cloneable handle to one loop.
//!
//! [`Scheduler`] runs on the Tokio runtime it is started on, and its handle works from any
//! other runtime too (`home.rs`). The handle's operations, by concern:
//! - `builder.rs`: [`SchedulerBuilder`], which builds the shared state ([`Inner`]);
//! - `lifecycle.rs`: start, pause, resume and the three ways to shut down;
//! - `add.rs` and `add_many.rs`: [`AddJob`], adding one job, and adding many at once;
//! - `handles.rs` and `jobs.rs`: naming jobs and stores ([`JobHandle`], [`StoreHandle`]) and
//!   finding and changing jobs ([`JobChanges`]);
//! - `listeners.rs`: events as a channel or as a listener task;
//! - `components.rs`: executors and stores added and removed at run time;
//! - `transfer.rs`: exporting and importing jobs;
//! - `core.rs`: the loop, and `runs.rs`, its run-ledger side; `heartbeat.rs`, the task that
//!   keeps this scheduler alive in the eyes of the others sharing its stores;
//! - `run_handles.rs`: run now, backfill and reading the ledger ([`RunHandle`]);
//! - `background.rs` and `blocking.rs`: flavours that own their runtime, for programs
//!   without async ([`BackgroundScheduler`], [`BlockingScheduler`], [`LocalScheduler`]),
//!   and `blocking_handles.rs`, the blocking forms of the handles.

mod add;
mod add_many;
mod background;
mod blocking;
mod blocking_handles;
mod builder;
mod components;
mod core;
mod failures;
mod handles;
mod heartbeat;
mod home;
mod jobs;
mod lifecycle;
mod listeners;
mod run_handles;
mod runs;
mod timer;
mod transfer;

use std::collections::HashMap;
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
pub use self::background::BackgroundScheduler;
pub use self::blocking::{BlockingScheduler, LocalScheduler};
pub use self::blocking_handles::{BlockingAddJob, BlockingJobHandle, BlockingStoreHandle};
pub use self::builder::SchedulerBuilder;
pub use self::handles::{JobHandle, StoreHandle};
pub use self::jobs::JobChanges;
pub use self::listeners::ListenerId;
pub use self::run_handles::RunHandle;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::event::EventBus;
use crate::executor::{Executor, Instances, RunContext};
use crate::job::{JobDefaults, JobRecord};
use crate::store::{JobStore, StoreContext};
use crate::sync::{MutexExt, RwLockExt};
use crate::task::TaskRegistry;

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
/// scheduler.shutdown().await?;
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
    /// The store alias (`"default"` without an allocation).
    store: std::borrow::Cow<'static, str>,
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

#[derive(Default)]
struct Life {
    /// In the order they were added (the order they enter their stores at start).
    pending: Vec<Pending>,
    loop_task: Option<(JoinHandle<()>, CancellationToken)>,
    backoff: HashMap<String, Backoff>,
    listeners: HashMap<u64, JoinHandle<()>>,
    /// Listeners added while stopped; they start with the scheduler, on its runtime.
    waiting_listeners: HashMap<u64, BoxFuture<'static, ()>>,
    next_listener: u64,
    /// When each store's ledger pass is due next (absent: before its first claim).
    ticks: HashMap<String, DateTime<Utc>>,
    /// The task writing run outcomes to the stores, from start to shutdown.
    writer_task: Option<JoinHandle<()>>,
    /// The task writing this scheduler's heartbeat, from start to the end of shutdown.
    heartbeat_task: Option<JoinHandle<()>>,
    /// Jobs whose trigger ended (so their store removed them) while they had queued runs,
    /// by (store, job id): what those runs start with.
    parked: HashMap<(String, String), JobRecord>,
    /// Retries waiting for their time.
    retries: failures::Retries,
    /// When the scheduler last started (runs it owns submitted before are a previous
    /// life's).
    started_at: Option<DateTime<Utc>>,
    /// The stores whose runs of a previous life were looked at since the last start.
    recovered: std::collections::HashSet<String>,
    /// When each shared store's ledger pass next looks for claims whose reply was lost.
    orphan_checks: HashMap<String, DateTime<Utc>>,
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
    /// The run ledger's settings, shared with the stores' contexts and the runs.
    ledger: Arc<crate::ledger::LedgerSettings>,
    /// What every run needs, shared: one reference count per run instead of one per part.
    run_context: Arc<RunContext>,
    state: watch::Sender<SchedulerState>,
    stores: RwLock<Vec<(String, Arc<dyn JobStore>)>>,
    executors: RwLock<Vec<(String, Arc<dyn Executor>)>>,
    life: Mutex<Life>,
    /// The runtime the scheduler runs on, from `start` to `shutdown` (see `home.rs`).
    home: Mutex<Option<tokio::runtime::Handle>>,
    /// `home`'s runtime id, read without the lock on every handle call.
    home_id: home::HomeId,
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
impl Inner {
    fn life(&self) -> MutexGuard<'_, Life> {
        self.life.lock_unpoisoned()
    }

    fn state(&self) -> SchedulerState {
        *self.state.borrow()
    }

    fn stores(&self) -> Vec<(String, Arc<dyn JobStore>)> {
        self.stores.read_unpoisoned().clone()
    }

    /// The store `alias` (as a one-element list), or every store when `None`.
    fn stores_in(&self, alias: Option<&str>) -> Result<Vec<(String, Arc<dyn JobStore>)>> {
        match alias {
            Some(alias) => Ok(vec![(alias.to_string(), self.store(alias)?)]),
            None => Ok(self.stores()),
        }
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
        .with_ledger(self.ledger.clone())
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
}
