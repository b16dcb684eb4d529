//! The loop: one task that sleeps until the earliest next run time across the stores (or
//! until woken), claims the due jobs and hands their runs to executors.
//!
//! Each store gets its own pass (claim, submit, release, read the next run time), and the
//! passes of different stores run concurrently inside the loop task: a store whose driver
//! hangs for seconds delays only its own jobs. A pass that panics is caught, reported and
//! retried with backoff, and the loop itself is supervised (a panic anywhere restarts it),
//! so the loop never dies silently.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{timer, Backoff, Inner, SchedulerState, AWAKE};
use crate::clock::saturating_add;
use crate::event::Event;
use crate::executor::{Executor, JobRun, Watch};
use crate::job::outcome::{panic_text, JobError};
use crate::job::Callable;
use crate::stats;
use crate::store::{DueJob, JobStore};
use crate::task::TaskFn;

/// First retry delay after a store failure; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between retries of a failing store.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs the loop until `stop`, restarting it (with backoff, after an event) if it panics.
pub(crate) async fn run_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let mut delay = MIN_BACKOFF;
    loop {
        match AssertUnwindSafe(serve(&inner, &stop)).catch_unwind().await {
            Ok(()) => return,
            Err(payload) => {
                let message = panic_text(payload);
                tracing::error!(%message, "the scheduler loop panicked; restarting in {delay:?}");
                inner.events.emit(Event::SchedulerError {
                    message: format!(
                        "the scheduler loop panicked ({message}); restarting in {delay:?}"
                    ),
                });
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// What the loop knows about one store between passes.
struct Slot {
    alias: String,
    store: Arc<dyn JobStore>,
    /// When to start its next pass (`None` = only when woken).
    wake: Option<DateTime<Utc>>,
    /// A pass is in flight.
    busy: bool,
    /// Woken while its pass was in flight: start another as soon as it ends.
    dirty: bool,
}

async fn serve(inner: &Arc<Inner>, stop: &CancellationToken) {
    let mut slots: Vec<Slot> = Vec::new();
    let mut passes = FuturesUnordered::new();
    let mut woken = true;
    loop {
        sync_slots(inner, &mut slots);
        let now = inner.clock.now();
        if std::mem::take(&mut woken) {
            for s in &mut slots {
                if s.busy {
                    s.dirty = true;
                } else {
                    s.wake = Some(now);
                }
            }
        }
        let running = inner.state() == SchedulerState::Running;
        let mut target: Option<DateTime<Utc>> = None;
        for s in slots.iter_mut().filter(|s| !s.busy) {
            match s.wake {
                Some(t) if running && t <= now => {
                    s.busy = true;
                    s.wake = None;
                    let (inner, alias, store) = (inner.clone(), s.alias.clone(), s.store.clone());
                    passes.push(async move {
                        let wake = guarded_pass(&inner, &alias, &store).await;
                        (alias, store, wake)
                    });
                }
                Some(t) if running => target = Some(target.map_or(t, |w| w.min(t))),
                _ => {}
            }
        }
        let planned = if !passes.is_empty() {
            AWAKE
        } else {
            target.map_or(i64::MAX, |t| t.timestamp_micros())
        };
        inner.planned_wakeup.store(planned, Ordering::SeqCst);
        tokio::select! {
            _ = stop.cancelled() => {
                // Let the passes in flight hand over what they claimed.
                while passes.next().await.is_some() {}
                return;
            }
            _ = inner.wakeup.notified() => woken = true,
            Some((alias, store, wake)) = passes.next(), if !passes.is_empty() => {
                if let Some(s) = slots
                    .iter_mut()
                    .find(|s| s.alias == alias && Arc::ptr_eq(&s.store, &store))
                {
                    s.busy = false;
                    s.wake = if std::mem::take(&mut s.dirty) {
                        Some(inner.clock.now())
                    } else {
                        wake
                    };
                }
            }
            _ = sleep_until(inner, target) => {}
        }
    }
}

/// Keeps one slot per configured store (stores can be added and removed while running).
fn sync_slots(inner: &Inner, slots: &mut Vec<Slot>) {
    let stores = inner.stores();
    // A removed store's pass may still be in flight: its slot goes once the pass ends.
    slots.retain(|s| {
        s.busy
            || stores
                .iter()
                .any(|(a, st)| *a == s.alias && Arc::ptr_eq(st, &s.store))
    });
    for (alias, store) in stores {
        if !slots
            .iter()
            .any(|s| s.alias == alias && Arc::ptr_eq(&s.store, &store))
        {
            slots.push(Slot {
                alias,
                store,
                wake: Some(inner.clock.now()),
                busy: false,
                dirty: false,
            });
        }
    }
}

/// Sleeps until the wall clock reads `target` (forever for `None`), in slices of at most
/// [`Clock::max_sleep`](crate::clock::Clock::max_sleep): job times are wall-clock instants,
/// Tokio's timers are monotonic, and a step of the wall clock or a resume from suspend must
/// be noticed within one slice. A slice only reads the clock; no store is touched.
///
/// On a clock of real time, the last [`timer::MARGIN`] before `target` is slept on the
/// thread timer, which ends it on time; Tokio's timer would end it up to 2 ms late.
async fn sleep_until(inner: &Inner, target: Option<DateTime<Utc>>) {
    let Some(target) = target else {
        return std::future::pending().await;
    };
    let slice = inner.clock.max_sleep().max(Duration::from_millis(1));
    let precise = inner.clock.is_real_time();
    loop {
        match (target - inner.clock.now()).to_std() {
            Ok(d) if d.is_zero() => return,
            Ok(d) if precise && d <= timer::MARGIN => {
                timer::sleep_until(std::time::Instant::now() + d).await
            }
            Ok(d) if precise => tokio::time::sleep((d - timer::MARGIN).min(slice)).await,
            Ok(d) => tokio::time::sleep(d.min(slice)).await,
            Err(_) => return,
        }
    }
}

/// One pass over every store, all stores at once: the manual mode's step. Returns the time
/// to the next due job, store poll or store retry (`None` = nothing to wait for).
pub(crate) async fn process_due_jobs(inner: &Inner) -> Option<Duration> {
    if inner.state() != SchedulerState::Running {
        return None;
    }
    let passes = inner
        .stores()
        .into_iter()
        .map(|(alias, store)| async move { guarded_pass(inner, &alias, &store).await });
    let wake = futures::future::join_all(passes)
        .await
        .into_iter()
        .flatten()
        .min()?;
    Some(
        (wake - inner.clock.now())
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// [`store_pass`] with panics caught: a panicking pass is a store failure (event, log,
/// backoff), never the end of the loop.
async fn guarded_pass(
    inner: &Inner,
    alias: &str,
    store: &Arc<dyn JobStore>,
) -> Option<DateTime<Utc>> {
    match AssertUnwindSafe(store_pass(inner, alias, store))
        .catch_unwind()
        .await
    {
        Ok(wake) => wake,
        Err(payload) => {
            let message = format!("the loop's pass panicked: {}", panic_text(payload));
            Some(store_failed(inner, alias, "processing due jobs", &message))
        }
    }
}

/// One store's pass: claims its due jobs, submits them, releases the claims and reads the
/// store's next run time. Returns when this store needs the loop next.
async fn store_pass(
    inner: &Inner,
    alias: &str,
    store: &Arc<dyn JobStore>,
) -> Option<DateTime<Utc>> {
    if let Some(retry_at) = inner.life().backoff.get(alias).map(|b| b.retry_at) {
        if retry_at > inner.clock.now() {
            return Some(retry_at);
        }
    }
    let ledger = inner.ledger_on(store.as_ref());
    if ledger && inner.tick_due(alias) {
        if let Err(e) = super::runs::tick_store(inner, alias, store).await {
            return Some(store_failed(inner, alias, "running the ledger's pass", &e));
        }
    }
    super::failures::dispatch_due_retries(inner, alias, store).await;
    let now = inner.clock.now();
    let mut due = match timed(
        alias,
        "acquire_due_jobs",
        store.acquire_due_jobs(now, inner.batch_size),
    )
    .await
    {
        Ok(due) => due,
        Err(e) => return Some(store_failed(inner, alias, "claiming due jobs", &e)),
    };
    let more_due = due.len() >= inner.batch_size;
    let store_alias: Arc<str> = Arc::from(alias);
    submit_batch(inner, &store_alias, store, &mut due).await;
    if !due.is_empty() {
        if let Err(e) = timed(alias, "release_jobs", store.release_jobs(&due)).await {
            return Some(store_failed(inner, alias, "releasing claimed jobs", &e));
        }
    }
    let next = match timed(alias, "next_run_time", store.next_run_time()).await {
        Ok(next) => next,
        Err(e) => return Some(store_failed(inner, alias, "reading the next run time", &e)),
    };
    // How far the oldest job still due is behind (it waits for the next pass).
    let behind = next
        .and_then(|t| (inner.clock.now() - t).to_std().ok())
        .unwrap_or_default();
    stats::backlog(alias, behind);
    inner.life().backoff.remove(alias);
    if more_due {
        return Some(inner.clock.now());
    }
    let poll = store
        .poll_interval()
        .map(|p| saturating_add(inner.clock.now(), p));
    let tick = ledger.then(|| inner.next_tick(alias)).flatten();
    let retry = inner.next_retry(alias);
    [next, poll, tick, retry].into_iter().flatten().min()
}

/// Awaits one of the loop's store calls, timing it for the metrics.
pub(super) async fn timed<T>(
    store: &str,
    call: &'static str,
    fut: impl std::future::Future<Output = crate::error::Result<T>>,
) -> crate::error::Result<T> {
    let started = std::time::Instant::now();
    let result = fut.await;
    stats::store_call(store, call, started.elapsed(), result.is_ok());
    result
}

/// Hands a claimed batch to the executors with the events APScheduler sends, in its order:
/// JOB_REMOVED (and errors) as each job is processed, then the batch's JOB_SUBMITTED /
/// JOB_MAX_INSTANCES, then the runs start (so JOB_SUBMITTED always precedes the run's
/// outcome).
async fn submit_batch(
    inner: &Inner,
    store_alias: &Arc<str>,
    store: &Arc<dyn JobStore>,
    batch: &mut [DueJob],
) {
    // Events nobody listens to are not built (the hot path of a storm of due jobs).
    let listening = inner.events.has_receivers();
    let ledger = inner.ledger_on(store.as_ref());
    // Sized once: growing it (its items are large) cost ten reallocations per 1000 jobs.
    let mut ready: Vec<Prepared> = Vec::with_capacity(batch.len());
    for due in batch.iter_mut() {
        if let Some(r) = prepare(inner, store_alias, store, due, listening, ledger).await {
            ready.push(r);
        }
    }
    if ledger {
        super::runs::mark_started(inner, store_alias, store, &mut ready).await;
    }
    launch(inner, ready);
}

/// Emits the batch's deferred events, then starts its runs (so JOB_SUBMITTED always
/// precedes a run's outcome).
pub(super) fn launch(inner: &Inner, mut ready: Vec<Prepared>) {
    for (event, _) in &mut ready {
        if let Some(event) = event.take() {
            inner.events.emit(event);
        }
    }
    for (_, run) in ready {
        if let Some((executor, run)) = run {
            executor.submit(run);
        }
    }
}

/// A claimed job's deferred event (when someone listens) and the run to start, if any.
pub(super) type Prepared = (Option<Event>, Option<(Arc<dyn Executor>, JobRun)>);

/// Processes one claimed job: emits its immediate events and returns its deferred event
/// (JOB_SUBMITTED or JOB_MAX_INSTANCES) with the run to start, if any. The run takes the
/// claim's list of due times (`due.run_times` is left empty).
async fn prepare(
    inner: &Inner,
    store_alias: &Arc<str>,
    store: &Arc<dyn JobStore>,
    due: &mut DueJob,
    listening: bool,
    ledger: bool,
) -> Option<Prepared> {
    let job = &due.job;
    let executor = inner.executor(&job.executor);
    if let Some(first) = due.skipped_from {
        // A long backlog beyond the grace time was skipped, not listed: one event for all.
        tracing::warn!(job_id = %job.id, "due times from {first} on, older than the grace time, were missed");
        inner.events.emit_with(|| Event::JobMissed {
            job_id: job.id.clone(),
            store: store_alias.to_string(),
            scheduled_run_time: first,
            run_id: None,
        });
        stats::run_outcome("missed");
    }
    let Some(&last) = due.run_times.last() else {
        if due.removed {
            emit_removed(inner, store_alias, &job.id);
        }
        return None;
    };
    if due.removed && executor.is_some() {
        // The trigger is exhausted: APScheduler reports the removal before the submission.
        emit_removed(inner, store_alias, &job.id);
    }
    if let Some(e) = &due.trigger_error {
        tracing::error!(job_id = %job.id, error = %e, "trigger gave up; job paused");
        inner.events.emit(Event::JobError {
            job_id: job.id.clone(),
            store: store_alias.to_string(),
            scheduled_run_time: last,
            run_id: None,
            error: JobError::not_runnable(format!(
                "the trigger gave up ({e}); the job is paused until rescheduled"
            )),
        });
    }
    if ledger {
        return Some(
            super::runs::prepare_recorded(inner, store_alias, store, due, executor, listening)
                .await,
        );
    }
    // The run keeps the claim's own list (no copy), unless coalescing leaves one of many.
    let run_times = if job.coalesce && due.run_times.len() > 1 {
        vec![last]
    } else {
        std::mem::take(&mut due.run_times)
    };
    let Some(executor) = executor else {
        no_executor(inner, store_alias, store, job, due.removed, last, None).await;
        return None;
    };
    let job_id = arcstr::ArcStr::from(job.id.as_str());
    let Some(slot) = inner.instances.try_acquire(&job_id, job.max_instances) else {
        tracing::warn!(job_id = %job.id, "max_instances reached; run dropped");
        for _ in &run_times {
            stats::run_outcome("max_instances");
        }
        let event = listening.then(|| Event::JobMaxInstances {
            job_id: job.id.clone(),
            store: store_alias.to_string(),
            scheduled_run_times: run_times,
            run_ids: Vec::new(),
        });
        return Some((event, None));
    };
    let event = listening.then(|| Event::JobSubmitted {
        job_id: job.id.clone(),
        store: store_alias.to_string(),
        scheduled_run_times: run_times.clone(),
        run_ids: Vec::new(),
    });
    let run = JobRun::new(
        job_id,
        store_alias.clone(),
        job.callable.clone(),
        run_times,
        job.misfire_grace_time,
        inner.run_context.clone(),
        slot,
    )
    .with_watch(watch(inner, job, false, 1));
    Some((event, Some((executor, run))))
}

/// What a run of `job` (attempt `attempt` at its time) needs beyond a plain run, if
/// anything: only a body taking a [`JobContext`](crate::JobContext), a job with a timeout,
/// a retry policy or an auto-pause threshold, a manual run or a retry gets it (and its
/// allocation).
pub(super) fn watch(
    inner: &Inner,
    job: &crate::job::JobRecord,
    manual: bool,
    attempt: u32,
) -> Option<Box<Watch>> {
    let context = match &job.callable {
        Callable::Task { name, .. } => inner.tasks.get(name).is_some_and(TaskFn::takes_context),
        other => other.takes_context(),
    };
    let needed = context
        || job.timeout.is_some()
        || job.retry.is_some()
        || job.pause_after_failures.is_some()
        || attempt > 1;
    needed.then(|| {
        Box::new(Watch {
            name: job.name.as_deref().map(Arc::from),
            timeout: job.timeout,
            context,
            manual,
            attempt,
            retry: job.retry.clone(),
            pause_after: job.pause_after_failures,
            failures: job.consecutive_failures,
            kept_for_retries: job.paused_reason.as_deref() == Some(crate::job::KEPT_FOR_RETRIES),
        })
    })
}

/// Reports a claimed job whose executor does not exist (a `JOB_ERROR` for `last`, and an
/// `error` outcome for each of `runs`, its recorded runs), and keeps the job: never delete a
/// job for a missing executor. A job whose trigger is exhausted was removed by the claim;
/// it is put back, paused, so it is not lost and does not come due again at once.
pub(super) async fn no_executor(
    inner: &Inner,
    store_alias: &Arc<str>,
    store: &Arc<dyn JobStore>,
    job: &crate::job::JobRecord,
    removed: bool,
    last: DateTime<Utc>,
    runs: Option<&[crate::ledger::RunRecord]>,
) {
    let kept = if removed {
        let mut paused = job.clone();
        paused.next_run_time = None;
        match store.add_job(paused, false).await {
            Ok(()) | Err(crate::Error::ConflictingId(_)) => {
                "the job is kept in its store, paused (its trigger has no later fire \
                     time); resume it once the executor exists"
            }
            Err(e) => {
                tracing::error!(job_id = %job.id, error = %e, "could not keep the job");
                "and the job could not be kept in its store"
            }
        }
    } else {
        "the job is kept in its store"
    };
    tracing::error!(job_id = %job.id, executor = %job.executor, "no such executor");
    stats::run_outcome("error");
    let error = JobError::not_runnable(format!("no executor named '{}'; {kept}", job.executor));
    for r in runs.into_iter().flatten() {
        inner.ledger_error(store_alias, r, &error);
    }
    inner.events.emit(Event::JobError {
        job_id: job.id.clone(),
        store: store_alias.to_string(),
        scheduled_run_time: last,
        run_id: runs.and_then(|r| r.last()).map(|r| r.run_id),
        error,
    });
}

fn emit_removed(inner: &Inner, store: &str, job_id: &str) {
    inner.events.emit_with(|| Event::JobRemoved {
        job_id: job_id.to_string(),
        store: store.to_string(),
    });
}

/// Records a store failure, emits STORE_ERROR, and returns when to retry (from a fresh
/// reading of the clock: the failure may have taken a while).
fn store_failed(
    inner: &Inner,
    alias: &str,
    doing: &str,
    error: &dyn std::fmt::Display,
) -> DateTime<Utc> {
    let mut life = inner.life();
    let delay = life
        .backoff
        .get(alias)
        .map_or(MIN_BACKOFF, |b| (b.delay * 2).min(MAX_BACKOFF));
    let retry_at = saturating_add(inner.clock.now(), delay);
    life.backoff
        .insert(alias.to_string(), Backoff { retry_at, delay });
    drop(life);
    tracing::error!(store = %alias, %error, "store failed while {doing}; retrying in {delay:?}");
    inner.events.emit(Event::StoreError {
        store: alias.to_string(),
        job_id: None,
        message: format!("{doing}: {error} (retrying in {delay:?})"),
    });
    retry_at
}
