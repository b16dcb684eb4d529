//! The operations on runs: [`RunHandle`], [`JobHandle::run_now`],
//! [`JobHandle::backfill`], and reading the run ledger ([`Scheduler::runs`],
//! [`JobHandle::runs`], [`JobHandle::run_stats`], [`StoreHandle::runs`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::jobs::Located;
use super::runs::dispatch;
use super::{JobHandle, Scheduler, SchedulerState, StoreHandle};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::job::RunId;
use crate::ledger::{RunFilter, RunRecord, RunState, RunStats, BACKFILL_LIMIT};
use crate::trigger::Trigger;

/// How often a [`RunHandle`] looks at the store while it waits (a run another scheduler
/// finishes wakes no one here).
const OUTCOME_POLL: Duration = Duration::from_secs(1);

/// One run in the ledger, as `run_now` or `backfill` made it: its id, and a way to await
/// its outcome.
///
/// ```
/// # use apsched::Scheduler;
/// # async fn demo(scheduler: Scheduler) -> apsched::Result<()> {
/// let run = scheduler.job("report").run_now().await?;
/// let done = run.outcome().await?;
/// println!("{} ended {} with {:?}", run.run_id(), done.state, done.output);
/// let rows: Option<u64> = run.output().await?;
/// # let _ = rows;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RunHandle {
    scheduler: Scheduler,
    store: String,
    record: RunRecord,
}

impl RunHandle {
    /// The run's id.
    pub fn run_id(&self) -> RunId {
        self.record.run_id
    }

    /// The job's id.
    pub fn job_id(&self) -> &str {
        &self.record.job_id
    }

    /// The store whose ledger holds the run.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// The record as it was created: `claimed`, `claimed` and queued (waiting for an
    /// instance), or `skipped` (the overlap policy said no).
    pub fn created(&self) -> &RunRecord {
        &self.record
    }

    /// The record now, from the store.
    ///
    /// # Errors
    /// [`Error::RunLookup`] if the run is no longer in the ledger (pruned); the store's
    /// error if it cannot be read.
    pub async fn get(&self) -> Result<RunRecord> {
        let inner = &self.scheduler.inner;
        inner
            .at_home(async {
                inner
                    .store(&self.store)?
                    .get_run(self.record.run_id)
                    .await?
                    .ok_or(Error::RunLookup(self.record.run_id))
            })
            .await
    }

    /// Waits until the run has its outcome, and returns the record then: `executed` with
    /// the [`output`](RunRecord::output) for a job whose result serialises, `error`,
    /// `missed`, `skipped`, `cancelled` or `abandoned`. A run finished by this scheduler
    /// wakes it at once; one finished by another scheduler is seen within a second.
    ///
    /// # Errors
    /// [`Error::RunLookup`] if the run left the ledger; the store's error if it cannot be
    /// read.
    pub async fn outcome(&self) -> Result<RunRecord> {
        if self.record.state.is_terminal() {
            return Ok(self.record.clone());
        }
        let inner = &self.scheduler.inner;
        let id = self.record.run_id;
        let waiter = inner.run_context.writer.waiter(id);
        let result = inner
            .at_home(async {
                let store = inner.store(&self.store)?;
                loop {
                    let notified = waiter.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    match store.get_run(id).await? {
                        Some(r) if r.state.is_terminal() => return Ok(r),
                        Some(_) => {}
                        None => return Err(Error::RunLookup(id)),
                    }
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(OUTCOME_POLL) => {}
                    }
                }
            })
            .await;
        inner.run_context.writer.forget(id);
        result
    }

    /// Waits for the outcome and parses its return value as `T` (`None` if the run did not
    /// return one, or it does not parse as `T`).
    ///
    /// # Errors
    /// As [`outcome`](Self::outcome).
    pub async fn output<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        Ok(self.outcome().await?.output_as())
    }
}

impl Scheduler {
    /// Creates manual runs of job `id` at `slots` and starts those the overlap policy lets
    /// start now.
    async fn run_manual(
        &self,
        id: &str,
        store: Option<&str>,
        slots: Vec<DateTime<Utc>>,
    ) -> Result<Vec<RunHandle>> {
        let inner = &self.inner;
        if inner.state() == SchedulerState::Stopped {
            return Err(Error::State {
                needed: "started (runs are started by the running scheduler)",
                actual: "stopped",
            });
        }
        let (alias, store, job) = match self.locate(id, store).await? {
            Located::Stored(alias, store, job) => (alias, store, job),
            Located::Pending(..) => {
                return Err(Error::State {
                    needed: "started",
                    actual: "stopped",
                })
            }
        };
        if !inner.ledger_on(store.as_ref()) {
            return Err(Error::Unsupported(format!(
                "manual runs are recorded in the run ledger, and store '{alias}' keeps none \
                 (turn it on with SchedulerBuilder::run_ledger(true), or use a store that \
                 keeps runs)"
            )));
        }
        let now = inner.clock.now();
        let records = store.add_manual_runs(&job.id, &slots, now).await?;
        let alias_arc: Arc<str> = Arc::from(alias.as_str());
        let skipped: Vec<&RunRecord> = records
            .iter()
            .filter(|r| r.state == RunState::Skipped)
            .collect();
        if !skipped.is_empty() {
            inner.events.emit_with(|| Event::JobMaxInstances {
                job_id: job.id.clone(),
                store: alias.clone(),
                scheduled_run_times: skipped.iter().map(|r| r.scheduled).collect(),
                run_ids: skipped.iter().map(|r| r.run_id).collect(),
            });
        }
        let start: Vec<RunRecord> = records
            .iter()
            .filter(|r| r.state == RunState::Claimed && !r.queued)
            .cloned()
            .collect();
        if !start.is_empty() {
            dispatch(inner, &alias_arc, &store, start).await;
        }
        if records.iter().any(|r| r.queued) {
            // CancelOther's requests and the queue are handled by the ledger pass.
            inner.request_tick(&alias, false);
        }
        Ok(records
            .into_iter()
            .map(|record| RunHandle {
                scheduler: self.clone(),
                store: alias.clone(),
                record,
            })
            .collect())
    }

    /// The runs passing `filter` across every store that keeps a ledger (or store
    /// `alias`), newest first.
    async fn runs_in(&self, alias: Option<&str>, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let mut all = Vec::new();
        for (_, store) in self.inner.stores_in(alias)? {
            if store.keeps_runs() {
                all.extend(store.query_runs(filter).await?);
            }
        }
        crate::ledger::sort_newest_first(&mut all);
        all.truncate(filter.limit);
        Ok(all)
    }

    /// Runs from the run ledger of every store, newest first (see [`RunFilter`]).
    ///
    /// ```
    /// use apsched::ledger::{RunFilter, RunState};
    /// # async fn demo(scheduler: apsched::Scheduler) -> apsched::Result<()> {
    /// let today = chrono::Utc::now() - chrono::TimeDelta::days(1);
    /// let failures = scheduler
    ///     .runs(RunFilter::new().states([RunState::Error, RunState::Abandoned]).since(today))
    ///     .await?;
    /// # let _ = failures;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A store's error if one cannot be read.
    pub async fn runs(&self, filter: RunFilter) -> Result<Vec<RunRecord>> {
        self.inner.at_home(self.runs_in(None, &filter)).await
    }

    /// One run by id, from whichever store's ledger holds it.
    ///
    /// # Errors
    /// A store's error if one cannot be read.
    pub async fn run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
        self.inner
            .at_home(async {
                for (_, store) in self.inner.stores() {
                    if store.keeps_runs() {
                        if let Some(r) = store.get_run(run_id).await? {
                            return Ok(Some(r));
                        }
                    }
                }
                Ok(None)
            })
            .await
    }
}

impl JobHandle {
    /// Runs the job now, without moving its schedule: a manual run recorded in the run
    /// ledger under the job's `max_instances` and [`Overlap`](crate::Overlap) policy (it may be
    /// queued, or skipped). The handle awaits its outcome and return value.
    ///
    /// ```
    /// # use apsched::Scheduler;
    /// # async fn demo(scheduler: Scheduler) -> apsched::Result<()> {
    /// let run = scheduler.job("nightly_export").run_now().await?;
    /// let record = run.outcome().await?;
    /// assert!(record.manual);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::JobLookup`] if there is no such job; [`Error::State`] before the scheduler
    /// started; [`Error::Unsupported`] if the job's store keeps no ledger (or the ledger is
    /// off); the store's error.
    pub async fn run_now(&self) -> Result<RunHandle> {
        let s = &self.scheduler;
        let now = s.inner.clock.now();
        let mut runs = s
            .inner
            .at_home(s.run_manual(&self.id, self.store(), vec![now]))
            .await?;
        runs.pop().ok_or_else(|| Error::JobLookup(self.id.clone()))
    }

    /// Runs the job once for every fire time of its trigger in `from..=to` (a past window
    /// it missed, say): manual runs recorded with those scheduled times, each under the
    /// job's overlap policy (use [`Overlap::BufferAll`](crate::Overlap::BufferAll) to run
    /// them one after another). The schedule does not move. At most
    /// [`BACKFILL_LIMIT`](crate::ledger::BACKFILL_LIMIT) slots.
    ///
    /// ```
    /// # use apsched::Scheduler;
    /// # async fn demo(scheduler: Scheduler) -> apsched::Result<()> {
    /// let to = chrono::Utc::now();
    /// let from = to - chrono::TimeDelta::hours(6);
    /// let runs = scheduler.job("hourly_rollup").backfill(from, to).await?;
    /// for run in runs {
    ///     run.outcome().await?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`run_now`](Self::run_now); [`Error::InvalidJob`] for a window with more than
    /// [`BACKFILL_LIMIT`](crate::ledger::BACKFILL_LIMIT) slots or `to` before `from`.
    pub async fn backfill(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<RunHandle>> {
        let s = &self.scheduler;
        s.inner
            .at_home(async {
                if to < from {
                    return Err(Error::InvalidJob {
                        id: self.id.clone(),
                        reason: format!("backfill window ends ({to}) before it starts ({from})"),
                    });
                }
                let job = match s.locate(&self.id, self.store()).await? {
                    Located::Stored(_, _, job) | Located::Pending(_, job) => job,
                };
                let slots: Vec<DateTime<Utc>> = job
                    .trigger
                    .fire_times(from)
                    .take_while(|t| *t <= to)
                    .take(BACKFILL_LIMIT + 1)
                    .collect();
                if slots.len() > BACKFILL_LIMIT {
                    return Err(Error::InvalidJob {
                        id: self.id.clone(),
                        reason: format!(
                            "the backfill window holds more than {BACKFILL_LIMIT} fire times; \
                             backfill a shorter window at a time"
                        ),
                    });
                }
                if slots.is_empty() {
                    return Ok(Vec::new());
                }
                s.run_manual(&self.id, self.store(), slots).await
            })
            .await
    }

    /// The job's runs from the run ledger, newest first, with `filter`'s paging and
    /// filters (its job is set to this one).
    ///
    /// # Errors
    /// A store's error if one cannot be read.
    pub async fn runs(&self, filter: RunFilter) -> Result<Vec<RunRecord>> {
        let s = &self.scheduler;
        let filter = filter.job(self.id.clone());
        s.inner.at_home(s.runs_in(self.store(), &filter)).await
    }

    /// The job's record at a glance: last outcome, consecutive failures, duration and
    /// lateness percentiles, over its kept runs.
    ///
    /// # Errors
    /// A store's error if one cannot be read.
    pub async fn run_stats(&self) -> Result<RunStats> {
        let runs = self.runs(RunFilter::new().limit(usize::MAX)).await?;
        Ok(RunStats::from_runs(&runs))
    }
}

impl StoreHandle {
    /// Runs from this store's run ledger, newest first (see [`RunFilter`]).
    ///
    /// # Errors
    /// [`Error::UnknownStore`]; the store's error if it cannot be read.
    pub async fn runs(&self, filter: RunFilter) -> Result<Vec<RunRecord>> {
        let s = &self.scheduler;
        s.inner.at_home(s.runs_in(Some(&self.alias), &filter)).await
    }
}
