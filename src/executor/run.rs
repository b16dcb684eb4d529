//! [`JobRun`]: one submission of a job to an executor, and the rules every executor applies
//! through it (misfire check at start, one outcome event per scheduled time).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::current_run::{self, ThreadRunGuard};
use super::instances::InstanceSlot;
use super::invoke::{invoke, invoke_blocking};
use crate::clock::Clock;
use crate::event::{Event, EventBus};
use crate::job::outcome::{JobError, JobResult};
use crate::job::Callable;
use crate::task::TaskRegistry;

/// What a run needs from the scheduler: the clock, the event bus and the task registry.
#[derive(Debug, Clone)]
pub(crate) struct RunContext {
    pub clock: Arc<dyn Clock>,
    pub events: EventBus,
    pub tasks: Arc<TaskRegistry>,
}

/// One submission of a job: one or more scheduled times to run in order.
///
/// Holds one of the job's `max_instances` slots until it is dropped. Every scheduled time
/// gets exactly one outcome event: [`start`](Self::start) reports a miss,
/// [`finish`](Self::finish) the result, and a run dropped before all its times had an
/// outcome (its executor shut down, its task was cancelled) reports
/// [`JobError::NotRunnable`] for each time left.
pub struct JobRun {
    /// The job id.
    pub job_id: Arc<str>,
    /// The alias of the store holding the job.
    pub store: Arc<str>,
    /// What to invoke.
    pub callable: Callable,
    /// The scheduled times, oldest first (one unless the job does not coalesce).
    pub run_times: Vec<DateTime<Utc>>,
    /// How late a run may start; `None` = any lateness.
    pub misfire_grace_time: Option<Duration>,
    pub(crate) ctx: Arc<RunContext>,
    pub(crate) _slot: Option<InstanceSlot>,
    /// How many of `run_times` have had their outcome event.
    outcomes: AtomicUsize,
}

impl Drop for JobRun {
    fn drop(&mut self) {
        let done = *self.outcomes.get_mut();
        for &t in self.run_times.iter().skip(done) {
            tracing::error!(job_id = %self.job_id, scheduled = %t, "run dropped before it finished");
            self.ctx.events.emit_with(|| Event::JobError {
                job_id: self.job_id.to_string(),
                store: self.store.to_string(),
                scheduled_run_time: t,
                error: JobError::not_runnable(
                    "the run was dropped before it finished: its executor was shut down or \
                     its task was cancelled",
                ),
            });
        }
    }
}

impl std::fmt::Debug for JobRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRun")
            .field("job_id", &self.job_id)
            .field("store", &self.store)
            .field("callable", &self.callable)
            .field("run_times", &self.run_times)
            .finish()
    }
}

impl JobRun {
    pub(crate) fn new(
        job_id: Arc<str>,
        store: Arc<str>,
        callable: Callable,
        run_times: Vec<DateTime<Utc>>,
        misfire_grace_time: Option<Duration>,
        ctx: Arc<RunContext>,
        slot: InstanceSlot,
    ) -> Self {
        JobRun {
            job_id,
            store,
            callable,
            run_times,
            misfire_grace_time,
            ctx,
            _slot: Some(slot),
            outcomes: AtomicUsize::new(0),
        }
    }

    /// The key [`inside_run_of`](current_run::inside_run_of) compares: the scheduler this run belongs to.
    fn owner_key(&self) -> usize {
        self._slot
            .as_ref()
            .map_or(0, |s| current_run::key_of(s.instances()))
    }

    /// Runs `fut` marked as this run's (see [`inside_run_of`](current_run::inside_run_of)).
    /// Not an `async fn`: that would hold `fut` twice (its argument and the scope's copy),
    /// and this future is most of every run's task.
    pub(crate) fn scoped<F: std::future::Future>(
        &self,
        fut: F,
    ) -> ::tokio::task::futures::TaskLocalFuture<usize, F> {
        current_run::CURRENT_RUN.scope(self.owner_key(), fut)
    }

    /// Call as a scheduled time is about to start. Returns `false`, after emitting
    /// [`Event::JobMissed`], when it is later than the grace time allows (strictly later:
    /// a delay equal to the grace time still runs).
    pub fn start(&self, scheduled: DateTime<Utc>) -> bool {
        if let Some(grace) = self.misfire_grace_time {
            let late = self.ctx.clock.now() - scheduled;
            if late.to_std().is_ok_and(|late| late > grace) {
                tracing::warn!(job_id = %self.job_id, %scheduled, "run missed by {late}");
                self.ctx.events.emit_with(|| Event::JobMissed {
                    job_id: self.job_id.to_string(),
                    store: self.store.to_string(),
                    scheduled_run_time: scheduled,
                });
                self.outcomes.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
        true
    }

    /// Call when a run finished: emits [`Event::JobExecuted`] or [`Event::JobError`].
    pub fn finish(&self, scheduled: DateTime<Utc>, result: JobResult) {
        if let Err(error) = &result {
            tracing::error!(job_id = %self.job_id, %scheduled, %error, "job failed");
        }
        self.outcomes.fetch_add(1, Ordering::Relaxed);
        self.ctx.events.emit_with(|| {
            let (job_id, store) = (self.job_id.to_string(), self.store.to_string());
            match result {
                Ok(retval) => Event::JobExecuted {
                    job_id,
                    store,
                    scheduled_run_time: scheduled,
                    retval,
                },
                Err(error) => Event::JobError {
                    job_id,
                    store,
                    scheduled_run_time: scheduled,
                    error,
                },
            }
        });
    }

    /// Runs every scheduled time in order on the current Tokio runtime: the future to spawn
    /// (or await) for this run.
    ///
    /// It is a plain `fn` returning a future rather than an `async fn`: an `async fn` keeps
    /// its argument twice (rust-lang/rust#62958: the argument, and the local it is moved
    /// to), which would double the `JobRun` in every run's task; an `async move` block
    /// captures it once.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn holds its argument twice"
    )]
    pub fn run(self) -> impl std::future::Future<Output = ()> + Send + 'static {
        async move { self.scoped(self.run_times_in_order()).await }
    }

    async fn run_times_in_order(&self) {
        for &t in &self.run_times {
            if self.start(t) {
                let result = invoke(&self.callable, &self.ctx.tasks).await;
                self.finish(t, result);
            }
        }
    }

    /// Runs every scheduled time in order on the current (blocking) thread. Async bodies
    /// are driven with the runtime's handle, so call this from `spawn_blocking` or another
    /// thread that has a runtime context.
    pub fn run_blocking(self) {
        let _marked = ThreadRunGuard::enter(self.owner_key());
        for &t in &self.run_times {
            if self.start(t) {
                let result = invoke_blocking(&self.callable, &self.ctx.tasks);
                self.finish(t, result);
            }
        }
    }
}
