//! The run ledger's side of the loop: the ledger pass (heartbeat, takeover of dead
//! schedulers' runs, promotion of queued runs, cancel requests), preparing a claim's
//! recorded runs, marking runs started before they are handed to executors, and the task
//! writing outcomes. The operations on runs (run now, backfill, reading) are in
//! `run_handles.rs`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use smallvec::{smallvec, SmallVec};

use super::core::{launch, no_executor, timed, watch, Prepared};
use super::Inner;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::executor::{Executor, JobRun};
use crate::job::{JobRecord, Overlap, RunId};
use crate::ledger::{RunFilter, RunOutcome, RunRecord, RunState};
use crate::stats;
use crate::store::{DueJob, JobStore};

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

    /// Whether the ledger pass of shared store `alias` at `now` should look for claims
    /// whose reply was lost ([`Recovery::LostClaims`]): once a lease.
    fn orphan_check_due(&self, alias: &str, now: DateTime<Utc>) -> bool {
        let mut life = self.life();
        let next = crate::clock::saturating_add(now, self.lease);
        match life.orphan_checks.get_mut(alias) {
            Some(at) if *at > now => false,
            Some(at) => {
                *at = next;
                true
            }
            None => {
                // The first look, a lease after start: nothing of this life is older.
                life.orphan_checks.insert(alias.to_string(), next);
                false
            }
        }
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
        self.ledger_outcome(store, r, RunState::Error, error.to_string());
    }

    /// Records the terminal `state` of run `r`, which will not run here, with `why`.
    pub(super) fn ledger_outcome(
        &self,
        store: &Arc<str>,
        r: &RunRecord,
        state: RunState,
        why: String,
    ) {
        self.ledger.finishing(r.run_id);
        let outcome =
            RunOutcome::new(r.run_id, r.job_id.as_str(), state, self.clock.now()).error(why);
        self.run_context.writer.send(store.clone(), outcome);
    }

    /// A run of `job` over `times`, recorded as `ids`; `first` is the record of its first
    /// time (the run shares its job id, and takes its manual flag and attempt). It holds an
    /// instance slot with no limit: the store has applied `max_instances`; the slot makes
    /// the run known to this process (shutdown waits for it, a job can tell it runs inside
    /// it).
    pub(super) fn recorded_run(
        &self,
        store: &Arc<str>,
        job: &JobRecord,
        first: &RunRecord,
        times: Vec<DateTime<Utc>>,
        ids: SmallVec<[RunId; 1]>,
        lenient: bool,
    ) -> Option<JobRun> {
        let (job_id, manual, attempt) = (first.job_id.clone(), first.manual, first.attempt);
        let slot = self.instances.try_acquire(&job_id, u32::MAX)?;
        Some(
            JobRun::new(
                job_id,
                store.clone(),
                job.callable.clone(),
                times,
                if lenient {
                    None
                } else {
                    job.misfire_grace_time
                },
                self.run_context.clone(),
                slot,
            )
            .with_watch(watch(self, job, manual, attempt))
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
    if store.is_persistent() {
        if inner.life().recovered.insert(alias.to_string()) {
            if let Err(e) = recover_own_runs(inner, alias, store, Recovery::PreviousLife).await {
                // Looked at again in the next pass.
                inner.life().recovered.remove(alias);
                return Err(e);
            }
        } else if inner.orphan_check_due(alias, now) {
            recover_own_runs(inner, alias, store, Recovery::LostClaims(now)).await?;
        }
    }
    for r in &tick.abandoned {
        report_abandoned(inner, alias, r);
    }
    for id in &tick.cancel {
        inner.run_context.runs.cancel(*id);
    }
    if !tick.dispatch.is_empty() || !tick.promoted.is_empty() {
        let mut runs = tick.dispatch;
        // A promoted run waited on purpose: its lateness is not a misfire.
        runs.extend(tick.promoted.into_iter().map(|mut r| {
            r.queued = true;
            r
        }));
        dispatch(inner, &Arc::from(alias), store, runs).await;
    }
    Ok(())
}

/// Most active runs of a previous life [`recover_own_runs`] looks at per start.
const RECOVER_LIMIT: usize = 10_000;

/// Which of this scheduler's own active runs [`recover_own_runs`] takes back. No other
/// scheduler takes them over while this id's heartbeat is alive, so nobody else would.
#[derive(Clone, Copy)]
enum Recovery {
    /// At the first ledger pass after start: the runs of a previous life of this scheduler
    /// (the same id, restarted), claimed or started.
    PreviousLife,
    /// Later, once a lease: claimed runs (not queued, not retries) submitted a lease or more
    /// before this time, whose outcome is not on its way. A claim or a manual run whose
    /// store write succeeded but whose reply was lost (the connection cut) leaves such
    /// runs: written, never handed to an executor here. A run this process knows is
    /// started (or fails to start) within its pass, long before a lease has gone by.
    LostClaims(DateTime<Utc>),
}

/// Takes back this scheduler's own active runs that `what` selects: claimed ones start
/// (retries at their time, under the misfire rules; a run started meanwhile by this
/// process is refused by the store's start and not started twice), started ones of a
/// previous life are abandoned, as a taker would do.
async fn recover_own_runs(
    inner: &Inner,
    alias: &str,
    store: &Arc<dyn JobStore>,
    what: Recovery,
) -> Result<()> {
    let Some(started) = inner.life().started_at else {
        return Ok(());
    };
    let filter = match what {
        Recovery::PreviousLife => RunFilter::new().states([RunState::Claimed, RunState::Started]),
        Recovery::LostClaims(_) => RunFilter::new().state(RunState::Claimed),
    };
    let mut filter = filter.limit(1000);
    let (mut claimed, mut abandoned) = (Vec::new(), Vec::new());
    let mut seen = 0;
    while seen < RECOVER_LIMIT {
        let page = timed(alias, "query_runs", store.query_runs(&filter)).await?;
        let Some(last) = page.last() else { break };
        filter = filter.after(last);
        seen += page.len();
        let full = page.len() >= 1000;
        for r in page {
            // Queued runs wait for promotion, which any scheduler does.
            if r.owner != inner.id || r.queued {
                continue;
            }
            let lost = match what {
                Recovery::PreviousLife => r.submitted_at < started,
                Recovery::LostClaims(now) => {
                    r.retry_at.is_none()
                        && r.submitted_at <= crate::clock::saturating_sub(now, inner.lease)
                        && !inner.ledger.is_finishing(r.run_id)
                }
            };
            if !lost {
                continue;
            }
            match r.state {
                RunState::Claimed => claimed.push(r),
                _ => abandoned.push(r),
            }
        }
        if !full {
            break;
        }
    }
    let alias: Arc<str> = Arc::from(alias);
    for r in abandoned {
        let why = crate::ledger::abandoned_error(&inner.id, None);
        inner.ledger_outcome(&alias, &r, RunState::Abandoned, why);
        report_abandoned(inner, &alias, &r);
    }
    if !claimed.is_empty() {
        dispatch(inner, &alias, store, claimed).await;
    }
    Ok(())
}

/// Reports run `r`, now `abandoned`: its scheduler (the record's owner) died after starting
/// it, so its outcome is unknown.
fn report_abandoned(inner: &Inner, alias: &str, r: &RunRecord) {
    tracing::warn!(job_id = %r.job_id, run_id = %r.run_id, owner = %r.owner, scheduled = %r.scheduled,
        "a run's scheduler died after starting it; the run is abandoned (outcome unknown)");
    stats::run_outcome("abandoned");
    inner.events.emit(Event::JobAbandoned {
        job_id: r.job_id.to_string(),
        store: alias.to_string(),
        scheduled_run_time: r.scheduled,
        run_id: r.run_id,
        owner: r.owner.to_string(),
    });
}

/// Starts claimed runs this scheduler owns outside a claim (taken over, promoted, manual):
/// each in its own submission, after marking it started. Runs marked `queued` here (promoted
/// ones) and manual ones start whatever their lateness; taken-over ones under the job's
/// misfire rules.
pub(super) async fn dispatch(
    inner: &Inner,
    alias: &Arc<str>,
    store: &Arc<dyn JobStore>,
    runs: Vec<RunRecord>,
) {
    let listening = inner.events.has_receivers();
    let mut by_job: BTreeMap<arcstr::ArcStr, Vec<RunRecord>> = BTreeMap::new();
    for r in runs {
        by_job.entry(r.job_id.clone()).or_default().push(r);
    }
    let mut ready: Vec<Prepared> = Vec::new();
    for (job_id, runs) in by_job {
        let parked = inner
            .life()
            .parked
            .get(&(alias.to_string(), job_id.to_string()))
            .cloned();
        let job = match (store.lookup_job(&job_id).await, parked) {
            (Ok(Some(job)), _) | (Ok(None), Some(job)) => job,
            (Ok(None), None) => {
                for r in &runs {
                    inner.ledger_error(
                        alias,
                        r,
                        &"the job was removed before this run could start",
                    );
                }
                continue;
            }
            (Err(e), _) => {
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
            // A retry waits for its time (one taken over early), and its misfire grace time
            // counts from it.
            let retry_late = match r.retry_at {
                Some(at) if at > inner.clock.now() => {
                    inner.park_retries(alias, vec![r], true);
                    continue;
                }
                Some(at) => super::failures::too_late(inner, &job, at),
                None => None,
            };
            if let Some(why) = retry_late {
                super::failures::retry_missed(inner, alias, &r, why);
                continue;
            }
            // Manual, promoted (marked queued) and retried runs start whatever their
            // lateness (a retry's was checked above).
            let lenient = r.manual || r.queued || r.retry_at.is_some();
            let times = vec![r.scheduled];
            let Some(run) =
                inner.recorded_run(alias, &job, &r, times, smallvec![r.run_id], lenient)
            else {
                continue;
            };
            let event = listening.then(|| Event::JobSubmitted {
                job_id: job_id.to_string(),
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
    due: &mut DueJob,
    executor: Option<Arc<dyn Executor>>,
    listening: bool,
) -> Prepared {
    let job = &due.job;
    if due.removed && !matches!(job.overlap, Overlap::Skip | Overlap::AllowAll) {
        // Its trigger has ended and its store forgot it: its queued runs (from this claim
        // or earlier ones) start with this copy.
        inner
            .life()
            .parked
            .insert((alias.to_string(), job.id.clone()), (**job).clone());
    }
    // CancelOther: stop the running instances this process has at once; those running in
    // other schedulers see the request in their next ledger pass.
    for id in &due.cancel {
        inner.run_context.runs.cancel(*id);
    }
    // The run keeps `times`: the claim's list of due times, reused (the times that run
    // are some of them); the ids are inline for one run.
    let mut times = std::mem::take(&mut due.run_times);
    times.clear();
    let mut ids = SmallVec::new();
    let mut first = None;
    let (mut skipped_times, mut skipped_ids) = (Vec::new(), Vec::new());
    for r in &due.runs {
        match r.state {
            RunState::Claimed if !r.queued => {
                first.get_or_insert(r);
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
    let (Some(&last), Some(first)) = (times.last(), first) else {
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
        run_ids: ids.to_vec(),
    });
    match inner.recorded_run(alias, job, first, times, ids, false) {
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

    fn retries(&self, alias: &str, runs: Vec<RunRecord>) {
        if let Some(inner) = self.0.upgrade() {
            inner.park_retries(alias, runs, true);
        }
    }

    fn written(&self, alias: &str) {
        if let Some(inner) = self.0.upgrade() {
            if let Ok(store) = inner.store(alias) {
                if store.tick_wanted(inner.clock.now()) {
                    inner.request_tick(alias, store.is_persistent());
                }
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
        life.started_at = Some(self.clock.now());
        life.recovered.clear();
        life.orphan_checks.clear();
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
