//! The run ledger's side of the scheduler: the loop's ledger pass (heartbeat, takeover of
//! dead schedulers' runs, promotion of queued runs, cancel requests), marking runs started
//! before they are handed to executors, and the operations on runs: [`RunHandle`],
//! [`JobHandle::run_now`], [`JobHandle::backfill`] and reading the ledger.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::core::{launch, no_executor, timed, watch, Prepared};
use super::jobs::Located;
use super::{Inner, JobHandle, Scheduler, SchedulerState, StoreHandle};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::executor::{Executor, JobRun};
use crate::job::{JobRecord, RunId};
use crate::ledger::{RunFilter, RunOutcome, RunRecord, RunState, RunStats, BACKFILL_LIMIT};
use crate::stats;
use crate::store::{DueJob, JobStore};
use crate::trigger::Trigger;

/// How often a [`RunHandle`] looks at the store while it waits (a run another scheduler
/// finishes wakes no one here).
const OUTCOME_POLL: Duration = Duration::from_secs(1);

impl Inner {
    /// Whether runs of `store` are recorded.
    pub(super) fn ledger_on(&self, store: &dyn JobStore) -> bool {
        self.ledger.enabled && store.keeps_runs()
    }

    /// Whether the ledger pass of store `alias` is due (it is before the first claim).
    pub(super) fn tick_due(&self, alias: &str) -> bool {
        self.life()
            .ticks
            .get(alias)
            .is_none_or(|t| *t <= self.clock.now())
    }

    /// When the loop must run the ledger pass of store `alias` next, if ever unasked.
    pub(super) fn next_tick(&self, alias: &str) -> Option<DateTime<Utc>> {
        self.life()
            .ticks
            .get(alias)
            .copied()
            .filter(|t| *t < DateTime::<Utc>::MAX_UTC)
    }

    /// After a ledger pass: a shared store's next one is a third of the lease away (its
    /// heartbeat must not lapse); a store only this scheduler uses runs it when asked.
    fn ticked(&self, alias: &str, persistent: bool) {
        let next = if persistent {
            crate::clock::saturating_add(self.clock.now(), self.lease / 3)
        } else {
            DateTime::<Utc>::MAX_UTC
        };
        self.life().ticks.insert(alias.to_string(), next);
    }

    /// Asks for a ledger pass of store `alias` soon (outcomes were written: queued runs may
    /// start now), at most one a second for shared stores.
    pub(super) fn request_tick(&self, alias: &str, persistent: bool) {
        let now = self.clock.now();
        let at = if persistent {
            crate::clock::saturating_add(now, Duration::from_secs(1))
        } else {
            now
        };
        let mut life = self.life();
        let slot = life.ticks.entry(alias.to_string()).or_insert(at);
        if *slot > at {
            *slot = at;
            drop(life);
            self.wakeup_for(Some(at));
        }
    }

    /// Records an `error` outcome for run `r`, which will not run.
    pub(super) fn ledger_error(
        &self,
        store: &Arc<str>,
        r: &RunRecord,
        error: &dyn std::fmt::Display,
    ) {
        self.ledger.finishing(r.run_id);
        let outcome = RunOutcome::new(
            r.run_id,
            r.job_id.as_str(),
            RunState::Error,
            self.clock.now(),
        )
        .error(error.to_string());
        self.run_context.writer.send(store.clone(), outcome);
    }

    /// A run of `job` over `times`, recorded as `ids`. It holds an instance slot with no
    /// limit: the store has applied `max_instances`; the slot makes the run known to this
    /// process (shutdown waits for it, a job can tell it runs inside it).
    fn recorded_run(
        &self,
        store: &Arc<str>,
        job: &JobRecord,
        times: Vec<DateTime<Utc>>,
        ids: Vec<RunId>,
    ) -> Option<JobRun> {
        let job_id: Arc<str> = Arc::from(job.id.as_str());
        let slot = self.instances.try_acquire(&job_id, u32::MAX)?;
        Some(
            JobRun::new(
                job_id,
                store.clone(),
                job.callable.clone(),
                times,
                job.misfire_grace_time,
                self.run_context.clone(),
                slot,
            )
            .with_watch(watch(self, job))
            .with_run_ids(ids),
        )
    }
}

/// The ledger pass of one store (see [`JobStore::tick_runs`]): reports abandoned runs,
/// cancels the runs other schedulers asked to stop, and starts the runs it was handed.
pub(super) async fn tick_store(
    inner: &Inner,
    alias: &str,
    store: &Arc<dyn JobStore>,
) -> Result<()> {
    let now = inner.clock.now();
    let tick = timed(alias, "tick_runs", store.tick_runs(now)).await?;
    inner.ticked(alias, store.is_persistent());
    for r in &tick.abandoned {
        tracing::warn!(job_id = %r.job_id, run_id = %r.run_id, owner = %r.owner, scheduled = %r.scheduled,
            "a run's scheduler died after starting it; the run is abandoned (outcome unknown)");
        stats::run_outcome("abandoned");
        inner.events.emit(Event::JobAbandoned {
            job_id: r.job_id.clone(),
            store: alias.to_string(),
            scheduled_run_time: r.scheduled,
            run_id: r.run_id,
            owner: previous_owner(r),
        });
    }
    for id in &tick.cancel {
        inner.run_context.runs.cancel(*id);
    }
    if !tick.dispatch.is_empty() {
        dispatch(inner, &Arc::from(alias), store, tick.dispatch).await;
    }
    Ok(())
}

/// The scheduler that owned an abandoned run: the record's owner is the dead one (a taker
/// marks it abandoned without taking it).
fn previous_owner(r: &RunRecord) -> String {
    r.owner.clone()
}

/// Starts claimed runs this scheduler owns outside a claim (taken over, promoted, manual):
/// each in its own submission, after marking it started.
async fn dispatch(
    inner: &Inner,
    alias: &Arc<str>,
    store: &Arc<dyn JobStore>,
    runs: Vec<RunRecord>,
) {
    let listening = inner.events.has_receivers();
    let mut by_job: BTreeMap<String, Vec<RunRecord>> = BTreeMap::new();
    for r in runs {
        by_job.entry(r.job_id.clone()).or_default().push(r);
    }
    let mut ready: Vec<Prepared> = Vec::new();
    for (job_id, runs) in by_job {
        let job = match store.lookup_job(&job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                for r in &runs {
                    inner.ledger_error(
                        alias,
                        r,
                        &"the job was removed before this run could start",
                    );
                }
                continue;
            }
            Err(e) => {
                for r in &runs {
                    inner.ledger_error(
                        alias,
                        r,
                        &format!("the job could not be read to start this run: {e}"),
                    );
                }
                continue;
            }
        };
        let Some(executor) = inner.executor(&job.executor) else {
            let last = runs
                .last()
                .map_or_else(|| inner.clock.now(), |r| r.scheduled);
            no_executor(inner, alias, store, &job, false, last, Some(&runs)).await;
            continue;
        };
        for r in runs {
            let Some(run) = inner.recorded_run(alias, &job, vec![r.scheduled], vec![r.run_id])
            else {
                continue;
            };
            let event = listening.then(|| Event::JobSubmitted {
                job_id: job_id.clone(),
                store: alias.to_string(),
                scheduled_run_times: vec![r.scheduled],
                run_ids: vec![r.run_id],
            });
            ready.push((event, Some((executor.clone(), run))));
        }
    }
    mark_started(inner, alias, store, &mut ready).await;
    launch(inner, ready);
}

/// Prepares a claimed job's recorded runs (the store planned them with the claim): the
/// `claimed` ones run as one submission, the `skipped` ones are reported
/// (`JOB_MAX_INSTANCES`), queued ones wait for the ledger pass, missed (coalesced) ones are
/// already recorded and silent, as in APScheduler.
pub(super) async fn prepare_recorded(
    inner: &Inner,
    alias: &Arc<str>,
    store: &Arc<dyn JobStore>,
    due: &DueJob,
    executor: Option<Arc<dyn Executor>>,
    listening: bool,
) -> Prepared {
    let job = &due.job;
    let (mut times, mut ids) = (Vec::new(), Vec::new());
    let (mut skipped_times, mut skipped_ids) = (Vec::new(), Vec::new());
    for r in &due.runs {
        match r.state {
            RunState::Claimed if !r.queued => {
                times.push(r.scheduled);
                ids.push(r.run_id);
            }
            RunState::Skipped => {
                skipped_times.push(r.scheduled);
                skipped_ids.push(r.run_id);
            }
            _ => {}
        }
    }
    if !skipped_times.is_empty() {
        tracing::warn!(job_id = %job.id, "max_instances reached; run skipped");
        for _ in &skipped_times {
            stats::run_outcome("max_instances");
        }
        let event = listening.then(|| Event::JobMaxInstances {
            job_id: job.id.clone(),
            store: alias.to_string(),
            scheduled_run_times: skipped_times,
            run_ids: skipped_ids,
        });
        if times.is_empty() {
            return (event, None);
        }
        inner.events.emit_opt(event);
    }
    let Some(&last) = times.last() else {
        return (None, None);
    };
    let Some(executor) = executor else {
        let claimed: Vec<RunRecord> = due
            .runs
            .iter()
            .filter(|r| ids.contains(&r.run_id))
            .cloned()
            .collect();
        no_executor(inner, alias, store, job, due.removed, last, Some(&claimed)).await;
        return (None, None);
    };
    let event = listening.then(|| Event::JobSubmitted {
        job_id: job.id.clone(),
        store: alias.to_string(),
        scheduled_run_times: times.clone(),
        run_ids: ids.clone(),
    });
    match inner.recorded_run(alias, job, times, ids) {
        Some(run) => (event, Some((executor, run))),
        None => (None, None),
    }
}

/// Marks the runs of `ready` started in the store, in one call, before they are handed to
/// executors: a run whose start the store did not record does not start here (another
/// scheduler took it over; or the store failed, and the run is recorded as an error).
pub(super) async fn mark_started(
    inner: &Inner,
    alias: &Arc<str>,
    store: &Arc<dyn JobStore>,
    ready: &mut [Prepared],
) {
    let ids: Vec<RunId> = ready
        .iter()
        .filter_map(|(_, run)| run.as_ref())
        .flat_map(|(_, run)| run.run_ids.iter().copied())
        .collect();
    if ids.is_empty() {
        return;
    }
    let now = inner.clock.now();
    match timed(alias, "start_runs", store.start_runs(&ids, now)).await {
        Ok(started) if started.len() == ids.len() => {}
        Ok(started) => {
            let started: HashSet<RunId> = started.into_iter().collect();
            for (event, run) in ready.iter_mut() {
                let taken = run
                    .as_ref()
                    .is_some_and(|(_, r)| !r.run_ids.iter().all(|id| started.contains(id)));
                if taken {
                    tracing::warn!("a claimed run was taken over by another scheduler before it started here; it starts there");
                    if let Some((_, r)) = run.take() {
                        r.discard();
                    }
                    *event = None;
                }
            }
        }
        Err(e) => {
            let why =
                format!("the store could not record the run's start ({e}); it was not started");
            tracing::error!(store = %alias, error = %e, "could not mark runs started; they do not start");
            inner.events.emit(Event::StoreError {
                store: alias.to_string(),
                job_id: None,
                message: why.clone(),
            });
            for (event, run) in ready.iter_mut() {
                if let Some((_, r)) = run.take() {
                    r.fail_all(&why);
                }
                *event = None;
            }
        }
    }
}

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
            inner.request_tick(&alias, store.is_persistent());
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

/// The run writer's view of its scheduler (weak: the scheduler owns the writer).
struct Hooks(std::sync::Weak<Inner>);

impl crate::ledger::WriterHooks for Hooks {
    fn store(&self, alias: &str) -> Option<Arc<dyn JobStore>> {
        self.0.upgrade()?.store(alias).ok()
    }

    fn failed(&self, alias: &str, error: &Error) {
        tracing::error!(store = %alias, %error, "could not write run outcomes to the ledger; retrying");
        if let Some(inner) = self.0.upgrade() {
            inner.events.emit(Event::StoreError {
                store: alias.to_string(),
                job_id: None,
                message: format!("writing run outcomes to the ledger: {error} (retrying)"),
            });
        }
    }

    fn written(&self, alias: &str) {
        if let Some(inner) = self.0.upgrade() {
            if let Ok(store) = inner.store(alias) {
                inner.request_tick(alias, store.is_persistent());
            }
        }
    }
}

impl Inner {
    /// Starts the task writing run outcomes, on the scheduler's runtime.
    pub(super) fn open_writer(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let task =
            self.run_context
                .writer
                .open(self.ledger.clone(), Hooks(Arc::downgrade(self)), runtime);
        let mut life = self.life();
        life.ticks.clear();
        life.writer_task = Some(task);
    }

    /// Stops the writer once it has written every outcome sent before (each store write is
    /// retried while the store fails, for at most `patience`).
    pub(super) async fn close_writer(&self, patience: Duration) {
        self.run_context.writer.close();
        let task = self.life().writer_task.take();
        if let Some(task) = task {
            if tokio::time::timeout(patience, task).await.is_err() {
                tracing::error!("run outcomes not yet written to the ledger at shutdown are lost; their runs stay 'started' and another scheduler marks them abandoned");
            }
        }
    }
}
