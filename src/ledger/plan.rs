//! The overlap rule every store applies inside its claim step: given a claimed job's due
//! times and the job's active runs (cluster-wide), which run records to create and which
//! running instances to ask to stop. One function, so every store agrees.

use arcstr::ArcStr;
use chrono::{DateTime, Utc};

use super::{RunRecord, RunState};
use crate::job::{JobRecord, Overlap, RunId};
use crate::store::{DueJob, StoreContext};

/// The active (claimed or started) runs of one job, as the store read them inside the
/// claim step. Build it from the records ([`from_records`](Self::from_records)) or push
/// the three columns that matter ([`push`](Self::push)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActiveRuns {
    runs: Vec<(RunId, RunState, bool)>,
}

impl ActiveRuns {
    /// No active runs.
    pub fn new() -> Self {
        Self::default()
    }

    /// The active runs among `records` (terminal ones are ignored).
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a RunRecord>) -> Self {
        let mut active = Self::new();
        for r in records {
            active.push(r.run_id, r.state, r.queued);
        }
        active
    }

    /// Adds one run (ignored unless claimed or started).
    pub fn push(&mut self, run_id: RunId, state: RunState, queued: bool) {
        if state.is_active() {
            self.runs.push((run_id, state, queued));
        }
    }

    /// Runs holding an instance (started, or claimed and not queued), leaving out runs this
    /// scheduler has finished but not yet written back.
    fn running(&self, ctx: &StoreContext) -> usize {
        self.runs
            .iter()
            .filter(|(id, _, queued)| !queued && !ctx.is_finishing(*id))
            .count()
    }

    fn queued(&self) -> usize {
        self.runs.iter().filter(|(_, _, q)| *q).count()
    }

    fn started(&self, ctx: &StoreContext) -> Vec<RunId> {
        self.runs
            .iter()
            .filter(|(id, st, _)| *st == RunState::Started && !ctx.is_finishing(*id))
            .map(|(id, _, _)| *id)
            .collect()
    }
}

impl DueJob {
    /// Plans the run records of this claim (when the scheduler keeps a ledger): fills
    /// [`runs`](Self::runs) and [`cancel`](Self::cancel), which the store then writes in
    /// the same atomic step as the claim. `active` are the job's active runs in the store
    /// before this claim.
    ///
    /// - With `coalesce`, the due times before the last are recorded `missed` (merged into
    ///   the last); a long backlog skipped unlisted gets one `missed` record at its first
    ///   time.
    /// - The times that run form one submission (one instance): `claimed`, or per the
    ///   job's [`Overlap`] policy when `max_instances` runs are active: `skipped`, `claimed`
    ///   and queued, and for `CancelOther` the started runs go into `cancel`.
    pub fn plan_runs(&mut self, ctx: &StoreContext, now: DateTime<Utc>, active: &ActiveRuns) {
        let job_id = ArcStr::from(self.job.id.as_str());
        self.plan_runs_of(job_id, ctx, now, active);
    }

    /// [`plan_runs`](Self::plan_runs), with the job's id as the store already shares it
    /// (the memory store's key): the records hold it, and the scheduler's id, without a
    /// copy of either.
    pub(crate) fn plan_runs_of(
        &mut self,
        job_id: ArcStr,
        ctx: &StoreContext,
        now: DateTime<Utc>,
        active: &ActiveRuns,
    ) {
        if !ctx.keeps_runs() {
            return;
        }
        let owner = ctx.owner();
        let claimed = |t| RunRecord::claimed(job_id.clone(), t, owner.clone(), now);
        // One record per due time, and one for a skipped backlog.
        let mut runs =
            Vec::with_capacity(self.run_times.len() + usize::from(self.skipped_from.is_some()));
        if let Some(first) = self.skipped_from {
            let mut r = claimed(first);
            r.state = RunState::Missed;
            r.finished_at = Some(now);
            r.error = Some(format!(
                "a long backlog of due times from {first} on, older than the grace time, was skipped"
            ));
            runs.push(r);
        }
        let run_times: &[DateTime<Utc>] = match self.run_times.split_last() {
            Some((last, earlier)) if self.job.coalesce => {
                for &t in earlier {
                    let mut r = claimed(t);
                    r.state = RunState::Missed;
                    r.finished_at = Some(now);
                    r.error = Some(format!("coalesced into the run at {last}"));
                    runs.push(r);
                }
                std::slice::from_ref(last)
            }
            _ => &self.run_times,
        };
        let cancel = plan_unit(
            &self.job, &job_id, run_times, false, ctx, now, active, &mut runs,
        );
        self.runs = runs;
        self.cancel = cancel;
    }
}

/// Plans manual runs of `job` (`run_now`, `backfill`), one instance each, applying the
/// overlap policy to each in turn: returns the records to create and the started runs to
/// ask to stop. The store writes both in one atomic step with a read of `active`.
pub fn plan_manual_runs(
    job: &JobRecord,
    slots: &[DateTime<Utc>],
    ctx: &StoreContext,
    now: DateTime<Utc>,
    active: &ActiveRuns,
) -> (Vec<RunRecord>, Vec<RunId>) {
    let mut active = active.clone();
    let mut runs = Vec::with_capacity(slots.len());
    let mut cancel = Vec::new();
    let job_id = ArcStr::from(job.id.as_str());
    for t in slots {
        let first = runs.len();
        cancel.extend(plan_unit(
            job,
            &job_id,
            std::slice::from_ref(t),
            true,
            ctx,
            now,
            &active,
            &mut runs,
        ));
        for r in &runs[first..] {
            active.push(r.run_id, r.state, r.queued);
        }
    }
    cancel.sort_unstable();
    cancel.dedup();
    (runs, cancel)
}

/// Plans one submission (`times` run in one instance): pushes its records onto `runs` and
/// returns the started runs to cancel.
#[allow(
    clippy::too_many_arguments,
    reason = "the job, the claim and the store's view of it, each from its caller"
)]
fn plan_unit(
    job: &JobRecord,
    job_id: &ArcStr,
    times: &[DateTime<Utc>],
    manual: bool,
    ctx: &StoreContext,
    now: DateTime<Utc>,
    active: &ActiveRuns,
    runs: &mut Vec<RunRecord>,
) -> Vec<RunId> {
    let running = active.running(ctx);
    // Queued runs go first: a new run of a buffering job waits behind them even when an
    // instance has just come free (the next ledger pass promotes the oldest).
    let waiting = active.queued() > 0
        && matches!(
            job.overlap,
            Overlap::BufferOne | Overlap::BufferAll | Overlap::CancelOther
        );
    let full =
        (running >= job.max_instances as usize || waiting) && job.overlap != Overlap::AllowAll;
    let mut cancel = Vec::new();
    let (state, queued, note) = if !full {
        (RunState::Claimed, false, None)
    } else {
        match job.overlap {
            Overlap::BufferOne if active.queued() == 0 => (RunState::Claimed, true, None),
            Overlap::BufferAll => (RunState::Claimed, true, None),
            Overlap::CancelOther => {
                cancel = active.started(ctx);
                (RunState::Claimed, true, None)
            }
            _ => (
                RunState::Skipped,
                false,
                Some(format!(
                    "max_instances ({}) reached: {running} runs of the job were active",
                    job.max_instances
                )),
            ),
        }
    };
    for (i, &t) in times.iter().enumerate() {
        let mut r = RunRecord::claimed(job_id.clone(), t, ctx.owner().clone(), now);
        r.manual = manual;
        r.state = state;
        // BufferOne keeps one queued run: the first of a submission of several times.
        r.queued = queued;
        if queued && job.overlap == Overlap::BufferOne && i > 0 {
            r.state = RunState::Skipped;
            r.queued = false;
        }
        if r.state.is_terminal() {
            r.finished_at = Some(now);
            r.error = note.clone().or_else(|| {
                Some(format!(
                    "max_instances ({}) reached and one run is already queued",
                    job.max_instances
                ))
            });
        }
        runs.push(r);
    }
    cancel
}
