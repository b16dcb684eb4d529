//! The loop: one task that sleeps until the earliest next run time across the stores (or
//! until woken), claims the due jobs and hands their runs to executors.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use super::{Backoff, Inner, SchedulerState, AWAKE};
use crate::event::Event;
use crate::executor::JobRun;
use crate::job::JobError;
use crate::store::DueJob;

/// First retry delay after a store failure; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between retries of a failing store.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(crate) async fn run_loop(inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        inner.planned_wakeup.store(AWAKE, Ordering::SeqCst);
        let wait = process_due_jobs(&inner).await;
        let planned = wait
            .and_then(|d| TimeDelta::from_std(d).ok())
            .and_then(|d| inner.clock.now().checked_add_signed(d))
            .map_or(i64::MAX, |t| t.timestamp_micros());
        inner.planned_wakeup.store(planned, Ordering::SeqCst);
        let sleep = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = inner.wakeup.notified() => {}
            _ = sleep => {}
        }
    }
}

/// One pass: claims due jobs from every healthy store and submits them. Returns the time to
/// the next due job, store poll or store retry (`None` = nothing to wait for).
pub(crate) async fn process_due_jobs(inner: &Inner) -> Option<Duration> {
    if inner.state() != SchedulerState::Running {
        return None;
    }
    let now = inner.clock.now();
    let mut wake_at: Option<DateTime<Utc>> = None;
    let mut earliest = |t: DateTime<Utc>| {
        wake_at = Some(wake_at.map_or(t, |w| w.min(t)));
    };
    let mut more_due = false;
    for (alias, store) in inner.stores() {
        if let Some(retry_at) = inner.life().backoff.get(&alias).map(|b| b.retry_at) {
            if retry_at > now {
                earliest(retry_at);
                continue;
            }
        }
        let due = match store.acquire_due_jobs(now, inner.batch_size).await {
            Ok(due) => due,
            Err(e) => {
                earliest(store_failed(inner, &alias, "claiming due jobs", &e, now));
                continue;
            }
        };
        more_due |= due.len() >= inner.batch_size;
        let store_alias: Arc<str> = Arc::from(alias.as_str());
        for d in &due {
            submit(inner, &store_alias, d);
        }
        if !due.is_empty() {
            if let Err(e) = store.release_jobs(&due).await {
                earliest(store_failed(
                    inner,
                    &alias,
                    "releasing claimed jobs",
                    &e,
                    now,
                ));
                continue;
            }
        }
        match store.next_run_time().await {
            Ok(next) => {
                inner.life().backoff.remove(&alias);
                if let Some(t) = next {
                    earliest(t);
                }
            }
            Err(e) => {
                earliest(store_failed(
                    inner,
                    &alias,
                    "reading the next run time",
                    &e,
                    now,
                ));
                continue;
            }
        }
        if let Some(poll) = store.poll_interval() {
            earliest(now + poll);
        }
    }
    if more_due {
        return Some(Duration::ZERO);
    }
    wake_at.map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
}

/// Hands one claimed job's runs to its executor, with the events APScheduler emits.
fn submit(inner: &Inner, store: &Arc<str>, due: &DueJob) {
    let job = &due.job;
    if due.removed {
        // The trigger is exhausted: APScheduler reports the removal before the submission.
        inner.events.emit_with(|| Event::JobRemoved {
            job_id: job.id.clone(),
            store: store.to_string(),
        });
    }
    let Some(&last) = due.run_times.last() else {
        return;
    };
    if let Some(e) = &due.trigger_error {
        tracing::error!(job_id = %job.id, error = %e, "trigger gave up; job paused");
        inner.events.emit(Event::JobError {
            job_id: job.id.clone(),
            store: store.to_string(),
            scheduled_run_time: last,
            error: JobError::not_runnable(format!(
                "the trigger gave up ({e}); the job is paused until rescheduled"
            )),
        });
    }
    let run_times = if job.coalesce {
        vec![last]
    } else {
        due.run_times.clone()
    };
    let Some(executor) = inner.executor(&job.executor) else {
        // Never delete a job for a missing executor: keep it and say so each time.
        tracing::error!(job_id = %job.id, executor = %job.executor, "no such executor");
        inner.events.emit(Event::JobError {
            job_id: job.id.clone(),
            store: store.to_string(),
            scheduled_run_time: last,
            error: JobError::not_runnable(format!(
                "no executor named '{}'; the job is kept in its store",
                job.executor
            )),
        });
        return;
    };
    let job_id: Arc<str> = Arc::from(job.id.as_str());
    let Some(slot) = inner.instances.try_acquire(&job_id, job.max_instances) else {
        tracing::warn!(job_id = %job.id, "max_instances reached; run dropped");
        inner.events.emit_with(|| Event::JobMaxInstances {
            job_id: job.id.clone(),
            store: store.to_string(),
            scheduled_run_times: run_times,
        });
        return;
    };
    // SUBMITTED goes out before the run can start, so it always precedes EXECUTED.
    inner.events.emit_with(|| Event::JobSubmitted {
        job_id: job.id.clone(),
        store: store.to_string(),
        scheduled_run_times: run_times.clone(),
    });
    executor.submit(JobRun {
        job_id,
        store: store.clone(),
        callable: job.callable.clone(),
        run_times,
        misfire_grace_time: job.misfire_grace_time,
        ctx: inner.run_context.clone(),
        _slot: Some(slot),
    });
}

/// Records a store failure, emits STORE_ERROR, and returns when to retry.
fn store_failed(
    inner: &Inner,
    alias: &str,
    doing: &str,
    error: &crate::Error,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let mut life = inner.life();
    let delay = life
        .backoff
        .get(alias)
        .map_or(MIN_BACKOFF, |b| (b.delay * 2).min(MAX_BACKOFF));
    let retry_at = now + delay;
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
