//! Events: what the scheduler tells the world.
//!
//! Every event goes to a Tokio broadcast channel. [`Scheduler::subscribe`] gives a receiver
//! filtered by an [`EventKind`] mask; [`Scheduler::add_listener`] runs a callback on its own
//! task. A receiver that falls behind loses the oldest events (and is told how many); it
//! never slows the scheduler down.
//!
//! [`Scheduler::subscribe`]: crate::Scheduler::subscribe
//! [`Scheduler::add_listener`]: crate::Scheduler::add_listener

use std::fmt;
use std::ops::{BitOr, BitOrAssign};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::job::{JobError, RunId};

/// A bit mask of event kinds, with APScheduler's names and bit values.
///
/// ```
/// use apsched::EventKind;
/// let mask = EventKind::JOB_EXECUTED | EventKind::JOB_ERROR;
/// assert!(mask.contains(EventKind::JOB_ERROR));
/// assert!(!mask.contains(EventKind::JOB_MISSED));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct EventKind(u32);

impl EventKind {
    /// The scheduler started.
    pub const SCHEDULER_STARTED: EventKind = EventKind(1);
    /// The scheduler shut down.
    pub const SCHEDULER_SHUTDOWN: EventKind = EventKind(1 << 1);
    /// Job processing was paused.
    pub const SCHEDULER_PAUSED: EventKind = EventKind(1 << 2);
    /// Job processing was resumed.
    pub const SCHEDULER_RESUMED: EventKind = EventKind(1 << 3);
    /// An executor was added.
    pub const EXECUTOR_ADDED: EventKind = EventKind(1 << 4);
    /// An executor was removed.
    pub const EXECUTOR_REMOVED: EventKind = EventKind(1 << 5);
    /// A job store was added.
    pub const JOBSTORE_ADDED: EventKind = EventKind(1 << 6);
    /// A job store was removed.
    pub const JOBSTORE_REMOVED: EventKind = EventKind(1 << 7);
    /// All jobs were removed from one or all stores.
    pub const ALL_JOBS_REMOVED: EventKind = EventKind(1 << 8);
    /// A job was added.
    pub const JOB_ADDED: EventKind = EventKind(1 << 9);
    /// A job was removed.
    pub const JOB_REMOVED: EventKind = EventKind(1 << 10);
    /// A job was modified (including pause, resume and reschedule).
    pub const JOB_MODIFIED: EventKind = EventKind(1 << 11);
    /// A run finished successfully.
    pub const JOB_EXECUTED: EventKind = EventKind(1 << 12);
    /// A run failed (error, panic, non-zero exit, timeout) or could not be started.
    pub const JOB_ERROR: EventKind = EventKind(1 << 13);
    /// A run started later than its misfire grace time allows and was skipped.
    pub const JOB_MISSED: EventKind = EventKind(1 << 14);
    /// Runs were handed to an executor.
    pub const JOB_SUBMITTED: EventKind = EventKind(1 << 15);
    /// Runs were dropped because the job already had `max_instances` runs in flight.
    pub const JOB_MAX_INSTANCES: EventKind = EventKind(1 << 16);
    /// A job store failed, or a stored job could not be loaded (apsched addition).
    pub const STORE_ERROR: EventKind = EventKind(1 << 17);
    /// The scheduler's loop itself failed (a panic outside any store's pass) and was
    /// restarted (apsched addition).
    pub const SCHEDULER_ERROR: EventKind = EventKind(1 << 18);
    /// A run went past its job's timeout: its cancellation token was cancelled and, if it
    /// did not end within the scheduler's grace period, it was aborted (apsched addition).
    /// The scheduled time's one outcome event, like [`JOB_EXECUTED`](Self::JOB_EXECUTED).
    pub const JOB_TIMEOUT: EventKind = EventKind(1 << 19);
    /// A run's scheduler died after starting it, and another scheduler sharing the store
    /// marked it abandoned in the run ledger: its outcome is unknown (apsched addition).
    pub const JOB_ABANDONED: EventKind = EventKind(1 << 20);
    /// A run failed and its job's retry policy tries it again later (apsched addition).
    /// The failure itself is a [`JOB_ERROR`](Self::JOB_ERROR) or
    /// [`JOB_TIMEOUT`](Self::JOB_TIMEOUT) before it.
    pub const JOB_RETRYING: EventKind = EventKind(1 << 21);
    /// The scheduler paused a job after too many consecutive failed runs (apsched
    /// addition).
    pub const JOB_AUTO_PAUSED: EventKind = EventKind(1 << 22);
    /// Every kind of event.
    pub const ALL: EventKind = EventKind((1 << 23) - 1);
    /// No event.
    pub const NONE: EventKind = EventKind(0);

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: EventKind) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether `self` and `other` share a bit.
    pub const fn intersects(self, other: EventKind) -> bool {
        self.0 & other.0 != 0
    }

    /// The raw bits (APScheduler's values).
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// APScheduler's constant name of a single-bit kind, e.g. `EVENT_JOB_ADDED`.
    pub fn name(self) -> &'static str {
        const NAMES: [&str; 23] = [
            "EVENT_SCHEDULER_STARTED",
            "EVENT_SCHEDULER_SHUTDOWN",
            "EVENT_SCHEDULER_PAUSED",
            "EVENT_SCHEDULER_RESUMED",
            "EVENT_EXECUTOR_ADDED",
            "EVENT_EXECUTOR_REMOVED",
            "EVENT_JOBSTORE_ADDED",
            "EVENT_JOBSTORE_REMOVED",
            "EVENT_ALL_JOBS_REMOVED",
            "EVENT_JOB_ADDED",
            "EVENT_JOB_REMOVED",
            "EVENT_JOB_MODIFIED",
            "EVENT_JOB_EXECUTED",
            "EVENT_JOB_ERROR",
            "EVENT_JOB_MISSED",
            "EVENT_JOB_SUBMITTED",
            "EVENT_JOB_MAX_INSTANCES",
            "EVENT_STORE_ERROR",
            "EVENT_SCHEDULER_ERROR",
            "EVENT_JOB_TIMEOUT",
            "EVENT_JOB_ABANDONED",
            "EVENT_JOB_RETRYING",
            "EVENT_JOB_AUTO_PAUSED",
        ];
        if self.0.count_ones() == 1 {
            NAMES[self.0.trailing_zeros() as usize]
        } else if self == EventKind::ALL {
            "EVENT_ALL"
        } else {
            "EVENT_MASK"
        }
    }
}

impl BitOr for EventKind {
    type Output = EventKind;
    fn bitor(self, rhs: EventKind) -> EventKind {
        EventKind(self.0 | rhs.0)
    }
}

impl BitOrAssign for EventKind {
    fn bitor_assign(&mut self, rhs: EventKind) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.count_ones() == 1 || *self == EventKind::ALL {
            f.write_str(self.name())
        } else {
            write!(f, "EventKind({:#x})", self.0)
        }
    }
}

/// Something that happened in the scheduler.
///
/// Job events carry the job id and the alias of the store that holds the job.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub enum Event {
    /// The scheduler started.
    SchedulerStarted,
    /// The scheduler shut down.
    SchedulerShutdown,
    /// Job processing was paused.
    SchedulerPaused,
    /// Job processing was resumed.
    SchedulerResumed,
    /// An executor was added.
    ExecutorAdded {
        /// Its alias.
        alias: String,
    },
    /// An executor was removed.
    ExecutorRemoved {
        /// Its alias.
        alias: String,
    },
    /// A job store was added.
    JobStoreAdded {
        /// Its alias.
        alias: String,
    },
    /// A job store was removed.
    JobStoreRemoved {
        /// Its alias.
        alias: String,
    },
    /// All jobs were removed (from one store, or from all when `store` is `None`).
    AllJobsRemoved {
        /// The store emptied, or `None` for all stores.
        store: Option<String>,
    },
    /// A job was added.
    JobAdded {
        /// The job id.
        job_id: String,
        /// The store holding it.
        store: String,
    },
    /// A job was removed.
    JobRemoved {
        /// The job id.
        job_id: String,
        /// The store that held it.
        store: String,
    },
    /// A job was modified.
    JobModified {
        /// The job id.
        job_id: String,
        /// The store holding it.
        store: String,
    },
    /// Runs were handed to the job's executor.
    JobSubmitted {
        /// The job id.
        job_id: String,
        /// The store holding it.
        store: String,
        /// The scheduled times submitted (one unless `coalesce` is off).
        scheduled_run_times: Vec<DateTime<Utc>>,
        /// Their runs' ids in the run ledger, in the same order (empty when the store keeps
        /// no ledger).
        run_ids: Vec<RunId>,
    },
    /// Runs were dropped because `max_instances` runs were already in flight.
    JobMaxInstances {
        /// The job id.
        job_id: String,
        /// The store holding it.
        store: String,
        /// The scheduled times dropped.
        scheduled_run_times: Vec<DateTime<Utc>>,
        /// Their `skipped` runs' ids in the run ledger (empty without a ledger).
        run_ids: Vec<RunId>,
    },
    /// A run finished successfully.
    JobExecuted {
        /// The job id.
        job_id: String,
        /// The store holding it.
        store: String,
        /// The time the run was scheduled for.
        scheduled_run_time: DateTime<Utc>,
        /// The run's id (its record in the run ledger, its [`JobContext::run_id`](crate::JobContext::run_id)).
        run_id: Option<RunId>,
        /// What the job returned, as JSON (`null` for `()`).
        retval: serde_json::Value,
    },
    /// A run failed or could not be started.
    JobError {
        /// The job id.
        job_id: String,
        /// The store holding it.
        store: String,
        /// The time the run was scheduled for.
        scheduled_run_time: DateTime<Utc>,
        /// The run's id, when the run had one (a run that could not be prepared has none).
        run_id: Option<RunId>,
        /// What went wrong.
        error: JobError,
    },
    /// A run started too late (beyond `misfire_grace_time`) and was skipped.
    JobMissed {
        /// The job id.
        job_id: String,
        /// The store holding it.
        store: String,
        /// The time the run was scheduled for.
        scheduled_run_time: DateTime<Utc>,
        /// The run's id (`None` for a long backlog skipped as a whole).
        run_id: Option<RunId>,
    },
    /// A run went past its job's [`timeout`](crate::AddJob::timeout): the scheduled time's
    /// outcome (no [`Event::JobExecuted`] or [`Event::JobError`] follows for it).
    ///
    /// At the timeout the run's [`JobContext`](crate::JobContext) token is cancelled; a run
    /// still going after the scheduler's
    /// [`timeout_grace`](crate::SchedulerBuilder::timeout_grace) is aborted (an async body
    /// is dropped, a child process killed with SIGKILL, after SIGTERM at the timeout; a
    /// blocking thread cannot be stopped and is left to finish on its own, its result
    /// discarded).
    JobTimeout {
        /// The job id.
        job_id: String,
        /// The store holding it.
        store: String,
        /// The time the run was scheduled for.
        scheduled_run_time: DateTime<Utc>,
        /// The run's id.
        run_id: Option<RunId>,
        /// The job's timeout.
        timeout: std::time::Duration,
        /// `true` if the run did not end within the grace period and was aborted (or, on a
        /// blocking thread, abandoned); `false` if it ended on its own after its token was
        /// cancelled.
        aborted: bool,
    },
    /// A run's scheduler died after starting it; another scheduler sharing the store
    /// marked it `abandoned` in the run ledger. Its outcome is unknown: the job may or may
    /// not have done its work.
    JobAbandoned {
        /// The job id.
        job_id: String,
        /// The store holding it.
        store: String,
        /// The time the run was scheduled for.
        scheduled_run_time: DateTime<Utc>,
        /// The run's id.
        run_id: RunId,
        /// The scheduler that started it and died.
        owner: String,
    },
    /// A run failed and will be tried again: its next attempt is recorded (`claimed`,
    /// holding its instance slot) and starts at `retry_at`.
    JobRetrying {
        /// The job id.
        job_id: String,
        /// The store holding it.
        store: String,
        /// The time the run was scheduled for (every attempt shares it).
        scheduled_run_time: DateTime<Utc>,
        /// The failed attempt's run id.
        run_id: Option<RunId>,
        /// The next attempt's run id (its ledger record).
        next_run_id: Option<RunId>,
        /// The next attempt's number (2 for the first retry).
        attempt: u32,
        /// When it starts.
        retry_at: DateTime<Utc>,
        /// Why the attempt failed.
        error: String,
    },
    /// The scheduler paused a job after `failures` consecutive failed scheduled times (its
    /// [`pause_after_failures`](crate::AddJob::pause_after_failures)). The reason is stored
    /// on the job ([`Job::paused_reason`](crate::Job::paused_reason)) until it is resumed.
    JobAutoPaused {
        /// The job id.
        job_id: String,
        /// The store holding it.
        store: String,
        /// Consecutive failed scheduled times.
        failures: u32,
        /// The stored reason: `"paused after N consecutive failures: <last error>"`.
        reason: String,
    },
    /// A store failed, or one stored job could not be loaded (it is kept, not deleted).
    StoreError {
        /// The store alias.
        store: String,
        /// The job concerned, when the error is about one job.
        job_id: Option<String>,
        /// What went wrong.
        message: String,
    },
    /// The scheduler's loop panicked outside any store's pass; it was restarted after a
    /// backoff. (A panic inside a store's pass is a [`Event::StoreError`] for that store.)
    SchedulerError {
        /// What went wrong.
        message: String,
    },
}

impl Event {
    /// The kind of this event, for masks.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::SchedulerStarted => EventKind::SCHEDULER_STARTED,
            Event::SchedulerShutdown => EventKind::SCHEDULER_SHUTDOWN,
            Event::SchedulerPaused => EventKind::SCHEDULER_PAUSED,
            Event::SchedulerResumed => EventKind::SCHEDULER_RESUMED,
            Event::ExecutorAdded { .. } => EventKind::EXECUTOR_ADDED,
            Event::ExecutorRemoved { .. } => EventKind::EXECUTOR_REMOVED,
            Event::JobStoreAdded { .. } => EventKind::JOBSTORE_ADDED,
            Event::JobStoreRemoved { .. } => EventKind::JOBSTORE_REMOVED,
            Event::AllJobsRemoved { .. } => EventKind::ALL_JOBS_REMOVED,
            Event::JobAdded { .. } => EventKind::JOB_ADDED,
            Event::JobRemoved { .. } => EventKind::JOB_REMOVED,
            Event::JobModified { .. } => EventKind::JOB_MODIFIED,
            Event::JobSubmitted { .. } => EventKind::JOB_SUBMITTED,
            Event::JobMaxInstances { .. } => EventKind::JOB_MAX_INSTANCES,
            Event::JobExecuted { .. } => EventKind::JOB_EXECUTED,
            Event::JobError { .. } => EventKind::JOB_ERROR,
            Event::JobMissed { .. } => EventKind::JOB_MISSED,
            Event::JobTimeout { .. } => EventKind::JOB_TIMEOUT,
            Event::JobAbandoned { .. } => EventKind::JOB_ABANDONED,
            Event::JobRetrying { .. } => EventKind::JOB_RETRYING,
            Event::JobAutoPaused { .. } => EventKind::JOB_AUTO_PAUSED,
            Event::StoreError { .. } => EventKind::STORE_ERROR,
            Event::SchedulerError { .. } => EventKind::SCHEDULER_ERROR,
        }
    }

    /// The run id, for the events about one run (`JOB_EXECUTED`, `JOB_ERROR`, `JOB_MISSED`,
    /// `JOB_TIMEOUT`, `JOB_ABANDONED`): join it to the run ledger.
    pub fn run_id(&self) -> Option<RunId> {
        match self {
            Event::JobExecuted { run_id, .. }
            | Event::JobError { run_id, .. }
            | Event::JobMissed { run_id, .. }
            | Event::JobTimeout { run_id, .. }
            | Event::JobRetrying { run_id, .. } => *run_id,
            Event::JobAbandoned { run_id, .. } => Some(*run_id),
            _ => None,
        }
    }

    /// The job id, for job events.
    pub fn job_id(&self) -> Option<&str> {
        match self {
            Event::JobAdded { job_id, .. }
            | Event::JobRemoved { job_id, .. }
            | Event::JobModified { job_id, .. }
            | Event::JobSubmitted { job_id, .. }
            | Event::JobMaxInstances { job_id, .. }
            | Event::JobExecuted { job_id, .. }
            | Event::JobError { job_id, .. }
            | Event::JobMissed { job_id, .. }
            | Event::JobTimeout { job_id, .. }
            | Event::JobAbandoned { job_id, .. }
            | Event::JobRetrying { job_id, .. }
            | Event::JobAutoPaused { job_id, .. } => Some(job_id),
            Event::StoreError { job_id, .. } => job_id.as_deref(),
            _ => None,
        }
    }
}

/// The sending side of the event channel, shared by the loop, stores and executors.
#[derive(Debug, Clone)]
pub(crate) struct EventBus {
    tx: broadcast::Sender<Event>,
    /// Live receivers, kept here because asking the channel takes its lock.
    receivers: Arc<AtomicUsize>,
}

impl EventBus {
    /// Sends `event`, if there is one.
    pub(crate) fn emit_opt(&self, event: Option<Event>) {
        if let Some(event) = event {
            self.emit(event);
        }
    }

    /// A bus whose receivers each buffer up to `capacity` events before they lag.
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        EventBus {
            tx,
            receivers: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Sends an event to every receiver. Never blocks; without receivers it is dropped.
    pub(crate) fn emit(&self, event: Event) {
        tracing::trace!(?event, "event");
        let _ = self.tx.send(event);
    }

    /// Like [`emit`](Self::emit), but builds the event only if someone is listening: the
    /// hot path (a run per job) pays nothing for events nobody reads.
    pub(crate) fn emit_with(&self, event: impl FnOnce() -> Event) {
        if self.has_receivers() {
            self.emit(event());
        }
    }

    /// Whether any receiver exists (so that events worth building are built only then).
    pub(crate) fn has_receivers(&self) -> bool {
        self.receivers.load(Ordering::Relaxed) > 0
    }

    /// A receiver of the events matching `mask`.
    pub(crate) fn subscribe(&self, mask: EventKind) -> EventReceiver {
        self.receivers.fetch_add(1, Ordering::Relaxed);
        EventReceiver {
            rx: self.tx.subscribe(),
            mask,
            receivers: self.receivers.clone(),
        }
    }
}

/// Why [`EventReceiver::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The receiver fell behind and `n` events were dropped; the next call resumes.
    #[error("event receiver lagged behind and lost {0} events")]
    Lagged(u64),
    /// The scheduler is gone; no more events will come.
    #[error("the scheduler is gone")]
    Closed,
}

/// Why [`EventReceiver::try_recv`] returned no event (tokio's
/// [`TryRecvError`](tokio::sync::broadcast::error::TryRecvError), for a filtered channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// No matching event is buffered now; try again later (or `recv().await`).
    #[error("no event is buffered now")]
    Empty,
    /// The receiver fell behind and `n` events were dropped; the next call resumes.
    #[error("event receiver lagged behind and lost {0} events")]
    Lagged(u64),
    /// The scheduler is gone; no more events will come.
    #[error("the scheduler is gone")]
    Closed,
}

/// A receiver of scheduler events matching a mask.
#[derive(Debug)]
pub struct EventReceiver {
    rx: broadcast::Receiver<Event>,
    mask: EventKind,
    receivers: Arc<AtomicUsize>,
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        self.receivers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EventReceiver {
    /// The next matching event.
    pub async fn recv(&mut self) -> Result<Event, RecvError> {
        loop {
            match self.rx.recv().await {
                Ok(ev) if self.mask.intersects(ev.kind()) => return Ok(ev),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(RecvError::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return Err(RecvError::Closed),
            }
        }
    }

    /// The next matching event if one is already buffered, without waiting.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] if none is; [`TryRecvError::Lagged`] and
    /// [`TryRecvError::Closed`] as for [`recv`](Self::recv).
    pub fn try_recv(&mut self) -> Result<Event, TryRecvError> {
        loop {
            match self.rx.try_recv() {
                Ok(ev) if self.mask.intersects(ev.kind()) => return Ok(ev),
                Ok(_) => continue,
                Err(broadcast::error::TryRecvError::Empty) => return Err(TryRecvError::Empty),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    return Err(TryRecvError::Lagged(n))
                }
                Err(broadcast::error::TryRecvError::Closed) => return Err(TryRecvError::Closed),
            }
        }
    }

    /// Blocking version of [`recv`](Self::recv), for threads outside a runtime.
    pub fn blocking_recv(&mut self) -> Result<Event, RecvError> {
        loop {
            match self.rx.blocking_recv() {
                Ok(ev) if self.mask.intersects(ev.kind()) => return Ok(ev),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(RecvError::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return Err(RecvError::Closed),
            }
        }
    }
}
