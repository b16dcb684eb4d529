//! [`JobRun`]: one submission of a job to an executor, and the rules every executor applies
//! through it (misfire check at start, one outcome event per scheduled time).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::current_run::{self, ThreadRunGuard};
use super::instances::InstanceSlot;
use super::invoke::{invoke, invoke_blocking, invoke_with};
use super::runs::RunRegistry;
use super::traced::Traced;
use crate::clock::Clock;
use crate::event::{Event, EventBus};
use crate::job::outcome::{JobError, JobResult};
use crate::job::{Callable, JobContext, RunId};
use crate::ledger::{RunOutcome, RunRecord, RunState};
use crate::scheduler::{Inner, Scheduler};
use crate::stats::RunClock;
use crate::task::TaskRegistry;

/// What a run needs from the scheduler: the clock, the event bus, the task registry, the
/// registry of cancellable runs, the timeout grace and (for contexts) the scheduler itself.
pub(crate) struct RunContext {
    pub clock: Arc<dyn Clock>,
    pub events: EventBus,
    pub tasks: Arc<TaskRegistry>,
    /// The runs that can observe cancellation.
    pub runs: RunRegistry,
    /// How long a run past its timeout may take to end after its token is cancelled.
    pub timeout_grace: Duration,
    /// The scheduler, for [`JobContext::scheduler`]; weak, as the scheduler holds this.
    pub scheduler: Weak<Inner>,
    /// The ledger's settings (which runs are finishing).
    pub ledger: Arc<crate::ledger::LedgerSettings>,
    /// Where runs send their outcomes, for the ledger.
    pub writer: Arc<crate::ledger::RunWriter>,
}

impl std::fmt::Debug for RunContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("timeout_grace", &self.timeout_grace)
            .finish_non_exhaustive()
    }
}

/// What a run that can observe cancellation needs beyond a plain one: only runs whose body
/// takes a [`JobContext`] or whose job has a timeout get one (boxed, so a plain run pays
/// one null pointer).
#[derive(Debug)]
pub(crate) struct Watch {
    /// The job's name, for [`JobContext::name`].
    pub name: Option<Arc<str>>,
    /// The job's timeout.
    pub timeout: Option<Duration>,
    /// Whether the body takes a [`JobContext`].
    pub context: bool,
    /// Whether the run was made by hand (`run_now`, `backfill`).
    pub manual: bool,
    /// Which attempt at its scheduled time the run is (1, or 2, 3, … for retries).
    pub attempt: u32,
    /// How a failed run is retried.
    pub retry: Option<Arc<crate::RetryPolicy>>,
    /// The job's auto-pause threshold (consecutive failed scheduled times).
    pub pause_after: Option<u32>,
    /// The job's consecutive failed scheduled times when the run was claimed.
    pub failures: u32,
    /// The job's trigger has ended and the job is kept only for this run's retries: it is
    /// removed once the run has its final outcome.
    pub kept_for_retries: bool,
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
    pub job_id: arcstr::ArcStr,
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
    /// Set for runs that can observe cancellation (see [`Watch`]).
    pub(crate) watch: Option<Box<Watch>>,
    /// The run ledger's ids of `run_times`, in order (empty when the store keeps none).
    /// Nearly always one, kept inline: no allocation per run.
    pub(crate) run_ids: smallvec::SmallVec<[RunId; 1]>,
    /// How many of `run_times` have had their outcome event.
    outcomes: AtomicUsize,
    /// The current time's start, for the metrics (zero-sized without them).
    stats: RunClock,
}

impl Drop for JobRun {
    fn drop(&mut self) {
        let done = *self.outcomes.get_mut();
        for (i, &t) in self.run_times.iter().enumerate().skip(done) {
            tracing::error!(job_id = %self.job_id, scheduled = %t, "run dropped before it finished");
            self.stats.finished("error");
            let error = JobError::not_runnable(
                "the run was dropped before it finished: its executor was shut down or its \
                 task was cancelled",
            );
            let run_id = self.run_ids.get(i).copied();
            self.record(run_id, RunState::Error, Some(error.to_string()), None);
            self.ctx.events.emit_with(|| Event::JobError {
                job_id: self.job_id.to_string(),
                store: self.store.to_string(),
                scheduled_run_time: t,
                run_id,
                error,
            });
        }
        // After the events, as when the slot was a field dropped after this body.
        if let Some(slot) = self._slot.take() {
            slot.release(&self.job_id);
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
        job_id: arcstr::ArcStr,
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
            watch: None,
            run_ids: smallvec::SmallVec::new(),
            outcomes: AtomicUsize::new(0),
            stats: RunClock::default(),
        }
    }

    /// With the run ledger's ids of its times (in order), so that each outcome is recorded.
    pub(crate) fn with_run_ids(mut self, run_ids: smallvec::SmallVec<[RunId; 1]>) -> Self {
        self.run_ids = run_ids;
        self
    }

    /// The ledger id of the time whose outcome is next (times run in order).
    fn current_run_id(&self) -> Option<RunId> {
        self.run_ids
            .get(self.outcomes.load(Ordering::Relaxed))
            .copied()
    }

    /// Sends the outcome of run `run_id` (if it has one) to the ledger. The run counts as
    /// finished for the overlap rule from now on, before the store has it.
    fn record(
        &self,
        run_id: Option<RunId>,
        state: RunState,
        error: Option<String>,
        output: Option<&serde_json::Value>,
    ) {
        self.record_with_retry(run_id, state, error, output, None);
    }

    /// [`record`](Self::record), with the failed run's next attempt, which the ledger
    /// writes before the outcome.
    fn record_with_retry(
        &self,
        run_id: Option<RunId>,
        state: RunState,
        error: Option<String>,
        output: Option<&serde_json::Value>,
        retry: Option<Box<RunRecord>>,
    ) {
        let Some(id) = run_id else { return };
        self.ctx.ledger.finishing(id);
        let mut outcome = RunOutcome::new(id, self.job_id.clone(), state, self.ctx.clock.now());
        outcome.error = error;
        outcome.retry = retry;
        if let Some(v) = output {
            outcome = outcome.output(v);
        }
        self.ctx.writer.send(self.store.clone(), outcome);
    }

    /// Records a failed attempt at `scheduled` (an error or a timeout, `why`): with its next
    /// attempt when the job's retry policy has one left (returned, for the `JOB_RETRYING`
    /// event that follows the failure's own event), otherwise as the time's final failure
    /// (which may pause the job, see [`failures`](crate::scheduler)).
    fn record_failure(
        &self,
        scheduled: DateTime<Utc>,
        state: RunState,
        why: String,
    ) -> Option<RunRecord> {
        let run_id = self.current_run_id();
        let watch = self.watch.as_deref();
        let scheduler = watch
            .filter(|w| w.retry.is_some() || w.pause_after.is_some() || w.kept_for_retries)
            .and_then(|_| Scheduler::upgrade(&self.ctx.scheduler));
        let next = match (watch, &scheduler) {
            (Some(w), Some(s)) => w.retry.as_deref().and_then(|policy| {
                s.plan_retry(policy, &self.job_id, scheduled, w.attempt, w.manual)
            }),
            _ => None,
        };
        let recorded = run_id.is_some();
        self.record_with_retry(
            run_id,
            state,
            Some(why.clone()),
            None,
            next.clone().filter(|_| recorded).map(Box::new),
        );
        if let (Some(s), Some(w)) = (&scheduler, watch) {
            match &next {
                // Not recorded (no ledger for this store): the retry waits in this process.
                Some(next) if !recorded => s.park_retries(&self.store, vec![next.clone()]),
                Some(_) => {}
                None => {
                    if w.pause_after.is_some() {
                        s.count_failure(&self.store, &self.job_id, Some(&why));
                    }
                    if w.kept_for_retries {
                        s.remove_if_done(&self.store, &self.job_id);
                    }
                }
            }
        }
        next
    }

    /// Emits `JOB_RETRYING` for `next`, the attempt following failed run `run_id`.
    fn announce_retry(
        &self,
        scheduled: DateTime<Utc>,
        run_id: Option<RunId>,
        next: &RunRecord,
        why: &str,
    ) {
        let retry_at = next.due_at();
        tracing::warn!(job_id = %self.job_id, %scheduled, attempt = next.attempt, %retry_at, "run failed; retrying");
        self.ctx.events.emit_with(|| Event::JobRetrying {
            job_id: self.job_id.to_string(),
            store: self.store.to_string(),
            scheduled_run_time: scheduled,
            run_id,
            // A retry has a ledger record when its failed attempt had one.
            next_run_id: run_id.map(|_| next.run_id),
            attempt: next.attempt,
            retry_at,
            error: why.to_string(),
        });
    }

    /// A run that succeeded: for a job that pauses after failures and had failed, the count
    /// of consecutive failures starts again.
    fn succeeded(&self) {
        let Some(w) = self.watch.as_deref() else {
            return;
        };
        let counted = w.pause_after.is_some() && w.failures > 0;
        if !counted && !w.kept_for_retries {
            return;
        }
        if let Some(s) = Scheduler::upgrade(&self.ctx.scheduler) {
            if counted {
                s.count_failure(&self.store, &self.job_id, None);
            }
            if w.kept_for_retries {
                s.remove_if_done(&self.store, &self.job_id);
            }
        }
    }

    /// Drops the run without an outcome: another scheduler owns its times now.
    pub(crate) fn discard(self) {
        self.outcomes.store(self.run_times.len(), Ordering::Relaxed);
    }

    /// Ends every time left with a [`JobError::NotRunnable`] saying `why` (event and ledger
    /// outcome), without running.
    pub(crate) fn fail_all(self, why: &str) {
        let done = self.outcomes.load(Ordering::Relaxed);
        for &t in self.run_times.iter().skip(done) {
            self.finish(t, Err(JobError::not_runnable(why.to_string())));
        }
    }

    /// Lets the run observe cancellation (see [`Watch`]); `None` leaves it plain.
    pub(crate) fn with_watch(mut self, watch: Option<Box<Watch>>) -> Self {
        self.watch = watch;
        self
    }

    /// Whether this run can observe cancellation (its body takes a [`JobContext`] or its
    /// job has a timeout): such runs need an async supervisor, even on a blocking executor.
    pub(crate) fn is_watched(&self) -> bool {
        self.watch.is_some()
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
                let run_id = self.current_run_id();
                if run_id.is_some() {
                    let why = format!(
                        "it could start only {late} after its scheduled time, beyond its \
                         misfire_grace_time ({grace:?})"
                    );
                    self.record(run_id, RunState::Missed, Some(why), None);
                }
                self.ctx.events.emit_with(|| Event::JobMissed {
                    job_id: self.job_id.to_string(),
                    store: self.store.to_string(),
                    scheduled_run_time: scheduled,
                    run_id,
                });
                self.outcomes.fetch_add(1, Ordering::Relaxed);
                self.stats.finished("missed");
                Self::trace("outcome", "missed");
                return false;
            }
        }
        if tracing::level_enabled!(tracing::Level::INFO) {
            let late = (self.ctx.clock.now() - scheduled).num_microseconds();
            Self::trace("lateness_ms", late.unwrap_or(i64::MAX) as f64 / 1000.0);
        }
        self.stats.started(|| {
            (self.ctx.clock.now() - scheduled)
                .to_std()
                .unwrap_or_default()
        });
        true
    }

    /// Call when a run finished: emits [`Event::JobExecuted`] or [`Event::JobError`].
    pub fn finish(&self, scheduled: DateTime<Utc>, result: JobResult) {
        self.finish_as(scheduled, result, false);
    }

    /// [`finish`](Self::finish), for a run whose token was cancelled (`cancel_run`,
    /// `CancelOther`, a shutdown) when `cancelled`: its ledger state is then `cancelled`
    /// whatever it returned.
    fn finish_as(&self, scheduled: DateTime<Utc>, result: JobResult, cancelled: bool) {
        if let Err(error) = &result {
            tracing::error!(job_id = %self.job_id, %scheduled, %error, "job failed");
        }
        let run_id = self.current_run_id();
        let mut retry = None;
        match &result {
            _ if cancelled => self.record(
                run_id,
                RunState::Cancelled,
                Some(match &result {
                    Ok(_) => "cancelled; it ended without an error".to_string(),
                    Err(e) => format!("cancelled: {e}"),
                }),
                None,
            ),
            Ok(retval) => {
                self.record(run_id, RunState::Executed, None, Some(retval));
                if self.watch.is_some() {
                    self.succeeded();
                }
            }
            Err(e) if self.watch.is_some() => {
                let why = e.to_string();
                retry = self
                    .record_failure(scheduled, RunState::Error, why.clone())
                    .map(|next| (next, why));
            }
            Err(e) => self.record(run_id, RunState::Error, Some(e.to_string()), None),
        }
        self.outcomes.fetch_add(1, Ordering::Relaxed);
        let outcome = if result.is_ok() { "executed" } else { "error" };
        self.stats.finished(outcome);
        Self::trace("outcome", outcome);
        self.ctx.events.emit_with(|| {
            let (job_id, store) = (self.job_id.to_string(), self.store.to_string());
            match result {
                Ok(retval) => Event::JobExecuted {
                    job_id,
                    store,
                    scheduled_run_time: scheduled,
                    run_id,
                    retval,
                },
                Err(error) => Event::JobError {
                    job_id,
                    store,
                    scheduled_run_time: scheduled,
                    run_id,
                    error,
                },
            }
        });
        if let Some((next, why)) = retry {
            self.announce_retry(scheduled, run_id, &next, &why);
        }
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
        let span = self.span();
        let run = async move {
            if self.watch.is_some() {
                // Boxed: the rare path stays out of every run's task.
                Box::pin(self.scoped(self.watched_times_in_order())).await
            } else {
                self.scoped(self.run_times_in_order()).await
            }
        };
        // Untraced, the task is the run itself: the span stays out of it.
        Traced::new(run, span)
    }

    async fn run_times_in_order(&self) {
        for &t in &self.run_times {
            if self.start(t) {
                let result = invoke(&self.callable, &self.ctx.tasks).await;
                self.finish(t, result);
            }
        }
    }

    async fn watched_times_in_order(&self) {
        for &t in &self.run_times {
            self.run_time(t, |ctx| invoke_with(&self.callable, &self.ctx.tasks, ctx))
                .await;
        }
    }

    /// The `apsched.run` tracing span of this run, when a subscriber wants it: job id,
    /// store, scheduled time (the first, when a run covers several), then lateness, outcome
    /// and (for a run with a context or a timeout) the run id as they are known (the last
    /// scheduled time's, when several). With no subscriber interested it costs one callsite
    /// check and nothing in the run's task.
    fn span(&self) -> Option<tracing::Span> {
        let scheduled = self.run_times.first()?;
        let span = tracing::info_span!(
            "apsched.run",
            job_id = %self.job_id,
            store = %self.store,
            scheduled = %scheduled,
            lateness_ms = tracing::field::Empty,
            run_id = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        (!span.is_disabled()).then_some(span)
    }

    /// Records `field` on the current run's span (a no-op outside one).
    /// Behind a global level check (an atomic load): with no subscriber, a run never looks
    /// up its current span.
    fn trace(field: &'static str, value: impl tracing::Value) {
        if tracing::level_enabled!(tracing::Level::INFO) {
            tracing::Span::current().record(field, value);
        }
    }

    /// Runs one scheduled time: the misfire check, `body` (given the run's context when the
    /// body takes one) under the job's timeout, and the time's one outcome event.
    pub(crate) async fn run_time<B, Fut>(&self, t: DateTime<Utc>, body: B)
    where
        B: FnOnce(Option<JobContext>) -> Fut,
        Fut: Future<Output = JobResult>,
    {
        if !self.start(t) {
            return;
        }
        match &self.watch {
            None => {
                let result = body(None).await;
                self.finish(t, result);
            }
            // Boxed: the rare path stays out of every run's task.
            Some(watch) => Box::pin(self.run_watched(t, watch, body)).await,
        }
    }

    /// [`run_time`](Self::run_time) for a watched run: registers it (for `cancel_run` and
    /// the shutdowns), hands the body its context, and enforces the timeout: at the timeout
    /// the token is cancelled, and a body still going after the grace period is dropped
    /// (an async body is aborted, a child process killed, a blocking thread abandoned).
    async fn run_watched<B, Fut>(&self, t: DateTime<Utc>, watch: &Watch, body: B)
    where
        B: FnOnce(Option<JobContext>) -> Fut,
        Fut: Future<Output = JobResult>,
    {
        let registered = self
            .ctx
            .runs
            .register(self.current_run_id().unwrap_or_else(RunId::next));
        Self::trace("run_id", registered.id.get());
        let context = if watch.context {
            let Some(scheduler) = Scheduler::upgrade(&self.ctx.scheduler) else {
                self.finish(
                    t,
                    Err(JobError::not_runnable(
                        "the scheduler was dropped before the run started",
                    )),
                );
                return;
            };
            Some(JobContext::new(
                self.job_id.clone(),
                watch.name.clone(),
                t,
                registered.id,
                watch.attempt,
                watch.manual,
                registered.token.clone(),
                scheduler,
            ))
        } else {
            None
        };
        let Some(limit) = watch.timeout else {
            let result = body(context).await;
            self.finish_as(t, result, registered.token.is_cancelled());
            return;
        };
        let aborted = {
            let mut fut = std::pin::pin!(body(context));
            match tokio::time::timeout(limit, &mut fut).await {
                Ok(result) => {
                    self.finish_as(t, result, registered.token.is_cancelled());
                    return;
                }
                Err(_) => {
                    tracing::warn!(job_id = %self.job_id, scheduled = %t, ?limit, "run timed out; cancelling it");
                    registered.token.cancel();
                    // Whatever it returns now, the outcome is the timeout.
                    tokio::time::timeout(self.ctx.timeout_grace, &mut fut)
                        .await
                        .is_err()
                }
            }
            // `fut` is dropped here: an unfinished body is aborted before the event.
        };
        if aborted {
            tracing::warn!(job_id = %self.job_id, scheduled = %t, "run still going after the grace period; aborted");
        }
        self.timed_out(t, limit, aborted);
    }

    /// Reports a scheduled time that went past its timeout ([`Event::JobTimeout`]).
    fn timed_out(&self, scheduled: DateTime<Utc>, timeout: Duration, aborted: bool) {
        let run_id = self.current_run_id();
        let how = if aborted {
            "and was aborted after the grace period"
        } else {
            "and ended after its token was cancelled"
        };
        let why = format!("timed out after {timeout:?} {how}");
        let retry = self.record_failure(scheduled, RunState::TimedOut, why.clone());
        self.outcomes.fetch_add(1, Ordering::Relaxed);
        self.stats.finished("timeout");
        Self::trace("outcome", "timeout");
        self.ctx.events.emit_with(|| Event::JobTimeout {
            job_id: self.job_id.to_string(),
            store: self.store.to_string(),
            scheduled_run_time: scheduled,
            run_id,
            timeout,
            aborted,
        });
        if let Some(next) = retry {
            self.announce_retry(scheduled, run_id, &next, &why);
        }
    }

    /// Runs every scheduled time in order on the current (blocking) thread. Async bodies
    /// are driven with the runtime's handle, so call this from `spawn_blocking` or another
    /// thread that has a runtime context.
    ///
    /// A run that takes a [`JobContext`] or has a timeout is supervised from async code
    /// (driven here with the runtime's handle; its blocking body runs on another blocking
    /// thread, so that the timeout can abandon it).
    pub fn run_blocking(self) {
        let _marked = ThreadRunGuard::enter(self.owner_key());
        let span = self.span();
        let _entered = span.as_ref().map(tracing::Span::enter);
        if self.watch.is_some() {
            match ::tokio::runtime::Handle::try_current() {
                Ok(handle) => handle.block_on(self.scoped(self.watched_times_in_order())),
                Err(_) => {
                    for &t in &self.run_times {
                        if self.start(t) {
                            self.finish(
                                t,
                                Err(JobError::not_runnable(
                                    "a job with a timeout or a JobContext runs on a thread \
                                     with a Tokio runtime",
                                )),
                            );
                        }
                    }
                }
            }
            return;
        }
        for &t in &self.run_times {
            if self.start(t) {
                let result = invoke_blocking(&self.callable, &self.ctx.tasks);
                self.finish(t, result);
            }
        }
    }
}
