//! What the scheduler does after a run fails: retries (the next attempt at the same
//! scheduled time, waiting for its time in this process and as a `claimed` record in the
//! run ledger) and auto-pause (a count of consecutive failed scheduled times kept on the
//! job, which pauses it at the job's threshold).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::jobs::Update;
use super::{Inner, Scheduler};
use crate::event::Event;
use crate::job::{JobError, JobRecord, RetryPolicy};
use crate::ledger::{RunRecord, RunState};
use crate::store::JobStore;

/// A retry waiting for its time in this process: its store, its record, and whether the
/// record is in the store's ledger (a store without one keeps it only here).
#[derive(Debug)]
pub(super) struct WaitingRetry {
    store: Arc<str>,
    run: RunRecord,
    recorded: bool,
}

/// The retries waiting in this process, by (due time, run id).
pub(super) type Retries = std::collections::BTreeMap<(DateTime<Utc>, crate::RunId), WaitingRetry>;

impl Scheduler {
    /// The next attempt after failed attempt `attempt` of `job_id` at `scheduled`, if
    /// `policy` has one left: claimed by this scheduler, due after the policy's backoff.
    pub(crate) fn plan_retry(
        &self,
        policy: &RetryPolicy,
        job_id: &str,
        scheduled: DateTime<Utc>,
        attempt: u32,
        manual: bool,
    ) -> Option<RunRecord> {
        if !policy.retries_after(attempt) {
            return None;
        }
        let now = self.inner.clock.now();
        let retry_at = crate::clock::saturating_add(now, policy.jittered_delay_after(attempt));
        let mut next = RunRecord::claimed(job_id, scheduled, self.inner.id.as_str(), now);
        next.manual = manual;
        next.attempt = attempt.saturating_add(1);
        next.retry_at = Some(retry_at);
        Some(next)
    }

    /// Keeps retries that are not in any ledger (their store keeps none) until their time.
    pub(crate) fn park_retries(&self, store: &str, runs: Vec<RunRecord>) {
        self.inner.park_retries(store, runs, false);
    }

    /// Counts a failed scheduled time of `job_id` (`Some(why)`), or a success after
    /// failures (`None`, which sets the count back to zero), on the job in its store. A
    /// job whose count reaches its `pause_after_failures` is paused with the reason stored
    /// on it and a [`JobAutoPaused`](Event::JobAutoPaused) event. Runs in the background;
    /// a job removed meanwhile is left alone.
    pub(crate) fn count_failure(&self, store: &str, job_id: &str, why: Option<&str>) {
        let (this, store, job_id) = (self.clone(), store.to_string(), job_id.to_string());
        let why = why.map(str::to_string);
        let task = async move {
            let paused = std::sync::Mutex::new(None);
            let update = this
                .update_with(&job_id, Some(&store), |job, _now| {
                    *crate::sync::MutexExt::lock_unpoisoned(&paused) = count(job, why.as_deref());
                    Ok(Update::Modify)
                })
                .await;
            match update {
                Ok(Some(_)) => {
                    let paused = crate::sync::MutexExt::lock_unpoisoned(&paused).take();
                    if let Some((failures, reason)) = paused {
                        tracing::warn!(%job_id, %reason, "job paused after consecutive failures");
                        this.inner.events.emit(Event::JobAutoPaused {
                            job_id,
                            store,
                            failures,
                            reason,
                        });
                    }
                }
                Ok(None) | Err(crate::Error::JobLookup(_)) => {}
                Err(e) => {
                    tracing::error!(%job_id, error = %e, "could not count the job's failure");
                    this.inner.events.emit(Event::StoreError {
                        store,
                        job_id: Some(job_id),
                        message: format!("counting the job's consecutive failures: {e}"),
                    });
                }
            }
        };
        self.in_background(task);
    }
}

impl Scheduler {
    /// Removes job `job_id` if it is still kept only for its last run's retries (its
    /// trigger has ended and that run has its final outcome now).
    pub(crate) fn remove_if_done(&self, store: &str, job_id: &str) {
        let (this, store, job_id) = (self.clone(), store.to_string(), job_id.to_string());
        self.in_background(async move {
            let done = this
                .update_with(&job_id, Some(&store), |job, _now| {
                    Ok(if job.paused_reason() == Some(crate::job::KEPT_FOR_RETRIES) {
                        Update::Remove
                    } else {
                        Update::Unchanged
                    })
                })
                .await;
            if let Err(e) = done {
                if !matches!(e, crate::Error::JobLookup(_)) {
                    tracing::error!(%job_id, error = %e, "could not remove a job whose trigger has ended");
                }
            }
        });
    }

    /// Runs `task` on the current runtime, or on the scheduler's.
    fn in_background(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(task)),
            Err(_) => {
                if let Some(home) = self.inner.home() {
                    drop(home.spawn(task));
                }
            }
        }
    }
}

/// Applies one failure (`Some(why)`) or success (`None`) to `job`'s count; returns the
/// count and the reason when this failure pauses the job.
fn count(job: &mut JobRecord, why: Option<&str>) -> Option<(u32, String)> {
    let Some(why) = why else {
        job.consecutive_failures = 0;
        return None;
    };
    job.consecutive_failures = job.consecutive_failures.saturating_add(1);
    let limit = job.pause_after_failures?;
    if job.consecutive_failures < limit || job.next_run_time.is_none() {
        return None;
    }
    let failures = job.consecutive_failures;
    let reason = format!("paused after {failures} consecutive failures: {why}");
    job.next_run_time = None;
    job.paused_reason = Some(Arc::from(reason.as_str()));
    Some((failures, reason))
}

impl Inner {
    /// Keeps retries until their time (the loop starts them then).
    pub(super) fn park_retries(&self, store: &str, runs: Vec<RunRecord>, recorded: bool) {
        let store: Arc<str> = Arc::from(store);
        let mut earliest = None;
        {
            let mut life = self.life();
            for run in runs {
                let due = run.due_at();
                earliest = earliest.min(Some(due)).or(Some(due));
                life.retries.insert(
                    (due, run.run_id),
                    WaitingRetry {
                        store: store.clone(),
                        run,
                        recorded,
                    },
                );
            }
        }
        self.wakeup_for(earliest);
    }

    /// When the next retry of store `alias` is due.
    pub(super) fn next_retry(&self, alias: &str) -> Option<DateTime<Utc>> {
        let life = self.life();
        if life.retries.is_empty() {
            return None;
        }
        life.retries
            .iter()
            .find(|(_, w)| &*w.store == alias)
            .map(|((t, _), _)| *t)
    }

    /// Takes the retries of store `alias` that are due now.
    fn due_retries(&self, alias: &str) -> Vec<WaitingRetry> {
        let now = self.clock.now();
        let mut life = self.life();
        if life.retries.is_empty() {
            return Vec::new();
        }
        let keys: Vec<_> = life
            .retries
            .range(..=(now, crate::RunId::from_raw(u64::MAX)))
            .filter(|(_, w)| &*w.store == alias)
            .map(|(k, _)| *k)
            .collect();
        keys.iter().filter_map(|k| life.retries.remove(k)).collect()
    }
}

/// Starts the retries of store `alias` that are due: recorded ones like any claimed run
/// (marked started in the store first), unrecorded ones straight away.
pub(super) async fn dispatch_due_retries(inner: &Inner, alias: &str, store: &Arc<dyn JobStore>) {
    let due = inner.due_retries(alias);
    if due.is_empty() {
        return;
    }
    let alias: Arc<str> = Arc::from(alias);
    let (recorded, unrecorded): (Vec<_>, Vec<_>) = due.into_iter().partition(|w| w.recorded);
    if !recorded.is_empty() {
        let runs = recorded.into_iter().map(|w| w.run).collect();
        super::runs::dispatch(inner, &alias, store, runs).await;
    }
    for w in unrecorded {
        start_unrecorded(inner, &alias, store, w.run).await;
    }
}

/// Starts a retry kept only in this process (its store keeps no ledger).
async fn start_unrecorded(
    inner: &Inner,
    alias: &Arc<str>,
    store: &Arc<dyn JobStore>,
    r: RunRecord,
) {
    let fail = |why: String| {
        tracing::error!(job_id = %r.job_id, %why, "a retry could not start");
        inner.events.emit(Event::JobError {
            job_id: r.job_id.to_string(),
            store: alias.to_string(),
            scheduled_run_time: r.scheduled,
            run_id: None,
            error: JobError::not_runnable(why),
        });
    };
    let job = match store.lookup_job(&r.job_id).await {
        Ok(Some(job)) => job,
        Ok(None) => return fail("the job was removed before its retry could start".into()),
        Err(e) => return fail(format!("the job could not be read to start its retry: {e}")),
    };
    if let Some(why) = too_late(inner, &job, r.due_at()) {
        inner.events.emit(Event::JobMissed {
            job_id: r.job_id.to_string(),
            store: alias.to_string(),
            scheduled_run_time: r.scheduled,
            run_id: None,
        });
        tracing::warn!(job_id = %r.job_id, %why, "retry missed");
        return;
    }
    let Some(executor) = inner.executor(&job.executor) else {
        return fail(format!("no executor named '{}'", job.executor));
    };
    let times = vec![r.scheduled];
    if let Some(run) = inner.recorded_run(alias, &job, &r, times, smallvec::SmallVec::new(), true) {
        let event = inner.events.has_receivers().then(|| Event::JobSubmitted {
            job_id: r.job_id.to_string(),
            store: alias.to_string(),
            scheduled_run_times: vec![r.scheduled],
            run_ids: Vec::new(),
        });
        super::core::launch(inner, vec![(event, Some((executor, run)))]);
    }
}

/// Why a retry due at `due` is too late to start now under `job`'s misfire grace time.
pub(super) fn too_late(inner: &Inner, job: &JobRecord, due: DateTime<Utc>) -> Option<String> {
    let grace = job.misfire_grace_time?;
    let late = (inner.clock.now() - due).to_std().unwrap_or(Duration::ZERO);
    (late > grace).then(|| {
        format!(
            "its retry could start only {late:?} after its time, beyond its misfire_grace_time \
             ({grace:?})"
        )
    })
}

/// Records a retry that was too late to start (`missed`, with a `JOB_MISSED` event).
pub(super) fn retry_missed(inner: &Inner, alias: &Arc<str>, r: &RunRecord, why: String) {
    tracing::warn!(job_id = %r.job_id, run_id = %r.run_id, %why, "retry missed");
    inner.ledger_outcome(alias, r, RunState::Missed, why);
    crate::stats::run_outcome("missed");
    inner.events.emit(Event::JobMissed {
        job_id: r.job_id.to_string(),
        store: alias.to_string(),
        scheduled_run_time: r.scheduled,
        run_id: Some(r.run_id),
    });
}
