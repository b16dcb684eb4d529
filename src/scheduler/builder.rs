//! Configuring a scheduler.

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use chrono_tz::Tz;
use tokio::sync::{watch, Notify};

use super::{Inner, Life, Scheduler, SchedulerState, AWAKE};
use crate::clock::{Clock, SystemClock};
use crate::event::EventBus;
use crate::executor::{Executor, Instances, RunContext, RunRegistry, TokioExecutor};
use crate::job::{AsyncTaskFn, BlockingTaskFn, JobDefaults};
use crate::ledger::{LedgerSettings, RunRetention, RunWriter};
use crate::store::{JobStore, MemoryStore};
use crate::task::{TaskFn, TaskRegistry};

/// Builds a [`Scheduler`]: zone, job defaults, named executors and stores, named tasks.
///
/// A `"default"` executor ([`TokioExecutor`]) and a `"default"` store ([`MemoryStore`]) are
/// created when not given.
///
/// ```
/// use std::time::Duration;
/// use apsched::{JobDefaults, Scheduler};
/// use apsched::executor::{BlockingExecutor, ProcessExecutor};
/// use apsched::store::MemoryStore;
///
/// let scheduler = Scheduler::builder()
///     .timezone(chrono_tz::Europe::London)
///     .store("default", MemoryStore::new())
///     .executor("default", BlockingExecutor::new(10))
///     .executor("processpool", ProcessExecutor::new(10))
///     .job_defaults(JobDefaults::default().coalesce(false).max_instances(3))
///     .build();
/// ```
#[must_use]
pub struct SchedulerBuilder {
    timezone: Option<Tz>,
    defaults: JobDefaults,
    executors: Vec<(String, Arc<dyn Executor>)>,
    stores: Vec<(String, Arc<dyn JobStore>)>,
    tasks: TaskRegistry,
    clock: Arc<dyn Clock>,
    id: Option<String>,
    lease: Duration,
    batch_size: usize,
    event_capacity: usize,
    manual: bool,
    timeout_grace: Duration,
    run_ledger: bool,
    run_retention: RunRetention,
}

/// How long a run past its timeout may take to end after its token is cancelled, unless
/// the builder says otherwise.
const DEFAULT_TIMEOUT_GRACE: Duration = Duration::from_secs(5);

impl Default for SchedulerBuilder {
    fn default() -> Self {
        SchedulerBuilder {
            timezone: None,
            defaults: JobDefaults::default(),
            executors: Vec::new(),
            stores: Vec::new(),
            tasks: TaskRegistry::new(),
            clock: Arc::new(SystemClock),
            id: None,
            lease: Duration::from_secs(30),
            batch_size: 1000,
            event_capacity: 4096,
            manual: false,
            timeout_grace: DEFAULT_TIMEOUT_GRACE,
            run_ledger: true,
            run_retention: RunRetention::default(),
        }
    }
}

impl SchedulerBuilder {
    /// Whether to keep the run ledger (default `true`): a record of every run in the job's
    /// store, `max_instances` and the overlap policy counted across schedulers, crash
    /// recovery of claimed runs, `run_now` and `backfill` handles that await outcomes (see
    /// [`ledger`](crate::ledger)). Off, runs are counted in this process only and nothing
    /// is recorded. Schedulers sharing a store should agree on it.
    pub fn run_ledger(mut self, on: bool) -> Self {
        self.run_ledger = on;
        self
    }

    /// How many finished runs the ledger keeps (default: the newest 100 per job, none
    /// older than 30 days).
    pub fn run_retention(mut self, retention: RunRetention) -> Self {
        self.run_retention = retention;
        self
    }

    /// The zone given to triggers built without one. Default: the machine's IANA zone,
    /// else UTC.
    pub fn timezone(mut self, tz: Tz) -> Self {
        self.timezone = Some(tz);
        self
    }

    /// Defaults for `misfire_grace_time`, `coalesce`, `max_instances` and `timeout`.
    pub fn job_defaults(mut self, defaults: JobDefaults) -> Self {
        self.defaults = defaults;
        self
    }

    /// Adds an executor under `alias` (replacing one of the same alias).
    pub fn executor(mut self, alias: impl Into<String>, executor: impl Executor) -> Self {
        let alias = alias.into();
        self.executors.retain(|(a, _)| *a != alias);
        self.executors.push((alias, Arc::new(executor)));
        self
    }

    /// Adds a job store under `alias` (replacing one of the same alias).
    pub fn store(mut self, alias: impl Into<String>, store: impl JobStore) -> Self {
        let alias = alias.into();
        self.stores.retain(|(a, _)| *a != alias);
        self.stores.push((alias, Arc::new(store)));
        self
    }

    /// Registers an async task under `name`, taking deserialisable arguments and, if it
    /// asks for one, its run's [`JobContext`](crate::JobContext) (`|args: A| ..` or
    /// `|args: A, ctx: JobContext| ..`; see [`AsyncTaskFn`]). Persistent jobs refer to tasks
    /// by name (see [`Scheduler::add_task_job`]).
    ///
    /// ```
    /// use apsched::{JobContext, Scheduler};
    /// let builder = Scheduler::builder()
    ///     .task("double", |n: i64| async move { n * 2 })
    ///     .task("report", |day: String, ctx: JobContext| async move {
    ///         if ctx.is_cancelled() {
    ///             return Err("cancelled".to_string());
    ///         }
    ///         Ok(format!("report for {day}, run {}", ctx.run_id()))
    ///     });
    /// ```
    pub fn task<M>(mut self, name: impl Into<String>, f: impl AsyncTaskFn<M>) -> Self {
        self.tasks.insert(name, TaskFn::from_async(f));
        self
    }

    /// Registers a blocking task under `name` (`|args: A| ..` or
    /// `|args: A, ctx: JobContext| ..`; see [`BlockingTaskFn`]).
    pub fn blocking_task<M>(mut self, name: impl Into<String>, f: impl BlockingTaskFn<M>) -> Self {
        self.tasks.insert(name, TaskFn::from_blocking(f));
        self
    }

    /// How long a run past its job's timeout may take to end after its
    /// [`JobContext`](crate::JobContext) token is cancelled, before it is aborted (an async
    /// body dropped, a child process killed, a blocking thread abandoned). Default 5 s.
    ///
    /// A child process of the [`ProcessExecutor`](crate::executor::ProcessExecutor) is sent
    /// SIGTERM when the token is cancelled, and this is also its grace between SIGTERM and
    /// SIGKILL past its own [`CommandSpec::timeout`](crate::executor::CommandSpec::timeout).
    ///
    /// ```
    /// use std::time::Duration;
    /// use apsched::Scheduler;
    /// let scheduler = Scheduler::builder().timeout_grace(Duration::from_secs(1)).build();
    /// ```
    pub fn timeout_grace(mut self, grace: Duration) -> Self {
        self.timeout_grace = grace;
        self
    }

    /// The clock to use (a [`TestClock`](crate::clock::TestClock) in tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// This scheduler's identity in shared stores. Default: `host-pid-random`.
    pub fn scheduler_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// How long a claim on a job in a shared store lasts, and how long this scheduler
    /// counts as alive after its last heartbeat (written every third of it): a scheduler
    /// silent for longer has its runs taken over by the others. Default 30 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How many due jobs one pass claims from one store at most. Default 1000.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// How many events a slow subscriber may fall behind before it loses some. Default 4096.
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n;
        self
    }

    /// Do not run the loop: the caller drives it with [`Scheduler::process_due_jobs`]. For
    /// tests that replay a scenario step by step, or for embedding in another loop.
    pub fn manual(mut self) -> Self {
        self.manual = true;
        self
    }

    /// Builds the scheduler (stopped; call [`Scheduler::start`]).
    pub fn build(mut self) -> Scheduler {
        if !self.executors.iter().any(|(a, _)| a == "default") {
            self.executors
                .push(("default".into(), Arc::new(TokioExecutor::new())));
        }
        if !self.stores.iter().any(|(a, _)| a == "default") {
            self.stores
                .push(("default".into(), Arc::new(MemoryStore::new())));
        }
        let timezone = self.timezone.unwrap_or_else(local_timezone);
        let events = EventBus::new(self.event_capacity);
        let tasks = Arc::new(self.tasks);
        let ledger = Arc::new(LedgerSettings::new(self.run_ledger, self.run_retention));
        let inner = Arc::new_cyclic(|weak| Inner {
            id: self.id.unwrap_or_else(default_scheduler_id),
            clock: self.clock.clone(),
            timezone,
            defaults: self.defaults,
            run_context: Arc::new(RunContext {
                clock: self.clock.clone(),
                events: events.clone(),
                tasks: tasks.clone(),
                runs: RunRegistry::default(),
                timeout_grace: self.timeout_grace,
                scheduler: weak.clone(),
                ledger: ledger.clone(),
                writer: Arc::new(RunWriter::default()),
            }),
            ledger,
            events,
            tasks,
            lease: self.lease,
            batch_size: self.batch_size,
            manual: self.manual,
            wakeup: Arc::new(Notify::new()),
            planned_wakeup: AtomicI64::new(AWAKE),
            instances: Arc::new(Instances::default()),
            state: watch::Sender::new(SchedulerState::Stopped),
            stores: RwLock::new(self.stores),
            executors: RwLock::new(self.executors),
            life: Mutex::new(Life::default()),
            home: Mutex::new(None),
            home_id: Default::default(),
        });
        Scheduler { inner }
    }
}

impl Scheduler {
    /// The registered tasks (for worker mode).
    pub(crate) fn task_registry(&self) -> &TaskRegistry {
        &self.inner.tasks
    }

    /// The scheduler `inner` is the state of, if it still exists (runs hold it weakly).
    pub(crate) fn upgrade(inner: &Weak<Inner>) -> Option<Scheduler> {
        inner.upgrade().map(|inner| Scheduler { inner })
    }
}

/// The machine's IANA zone, else UTC.
fn local_timezone() -> Tz {
    iana_time_zone::get_timezone()
        .ok()
        .and_then(|name| name.parse().ok())
        .unwrap_or(Tz::UTC)
}

/// `host-pid-random`, unique enough to tell scheduler processes apart.
fn default_scheduler_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let random: u32 = rand::random();
    format!("{host}-{}-{random:08x}", std::process::id())
}
