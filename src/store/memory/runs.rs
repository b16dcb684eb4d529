//! The memory store's run ledger: records by id, with per-job indexes for the overlap rule,
//! listing and retention. Everything lives under the store's one lock, so a claim and its
//! records are one step.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arcstr::ArcStr;
use chrono::{DateTime, Utc};
use smallvec::SmallVec;

use crate::job::{JobRecord, RunId};
use crate::ledger::{
    ActiveRuns, RunFilter, RunOutcome, RunRecord, RunRetention, RunState, RunTick,
};
use crate::store::DueJob;

/// The runs of one memory store.
#[derive(Debug, Default)]
pub(super) struct Runs {
    /// Every record, by id.
    by_id: Records,
    /// Each job's kept and active runs.
    by_job: HashMap<ArcStr, JobRuns, crate::job::JobIdState>,
    /// Jobs with queued runs or runs asked to stop: what the ledger pass looks at.
    attention: BTreeSet<ArcStr>,
    /// When finished runs were last pruned by age.
    aged_at: Option<DateTime<Utc>>,
    /// The plain records (claimed, not queued) of recent claims, not yet in the indexes
    /// above. A claim appends them here and the next call that reads or changes runs moves
    /// them in first ([`settle`](Self::settle)), nearly always the run writer's
    /// `finish_runs`. All of it is under the store's one lock, so a claim and its records
    /// are still one step; what leaves the claim is the indexing (a box and two hash
    /// inserts per run), which in a storm of due jobs cost the loop a third of its time.
    journal: Vec<Journaled>,
    /// Where [`start`](Self::start) looks in the journal first: a claim's runs start in the
    /// order they were claimed.
    cursor: usize,
}

/// Most records the journal holds: a claim that finds it full settles it first, so
/// settling (under the store's lock, wherever it happens) takes a bounded time.
const JOURNAL_MAX: usize = 4096;

/// The records by id: kept in a slab (a vector with a free list) and found through a map
/// of slab keys. A record is large; a box each would cost an allocation and a free per
/// run, the bulk of what the ledger costs a storm of runs. Records are moved into it by
/// [`Runs::settle`], in the run writer's call, not in the claim: growing the slab (which
/// moves every record) happens there.
#[derive(Debug, Default)]
struct Records {
    keys: HashMap<RunId, usize, crate::job::RunIdState>,
    slab: slab::Slab<RunRecord>,
}

impl Records {
    fn get(&self, id: &RunId) -> Option<&RunRecord> {
        self.keys.get(id).and_then(|&k| self.slab.get(k))
    }

    fn get_mut(&mut self, id: &RunId) -> Option<&mut RunRecord> {
        self.keys.get(id).and_then(|&k| self.slab.get_mut(k))
    }

    fn contains_key(&self, id: &RunId) -> bool {
        self.keys.contains_key(id)
    }

    /// Stores the record of run `id`, in place of the one it had.
    fn insert(&mut self, id: RunId, stored: RunRecord) {
        if let Some(slot) = self.get_mut(&id) {
            *slot = stored;
        } else {
            let k = self.slab.insert(stored);
            self.keys.insert(id, k);
        }
    }

    fn remove(&mut self, id: &RunId) {
        if let Some(k) = self.keys.remove(id) {
            self.slab.remove(k);
        }
    }
}

/// One job's runs. Kept while the job has runs, so its vectors' capacity is reused from
/// run to run.
#[derive(Debug, Default)]
struct JobRuns {
    /// Every kept run, by (scheduled time, run id), sorted. A vector, not a tree: runs come
    /// mostly in order (appended) and retention keeps it short. The first is kept inline:
    /// a one-shot job (a storm of them) has one run, which then costs no allocation.
    all: SmallVec<[(DateTime<Utc>, RunId); 1]>,
    /// The active (claimed or started) ones.
    active: ActiveIds,
}

/// A job's active runs: the first inline (most jobs have at most one at a time, and so no
/// allocation for it), the others in a vector, in the order they were added.
#[derive(Debug, Default)]
struct ActiveIds {
    first: Option<RunId>,
    more: Vec<RunId>,
}

impl ActiveIds {
    fn push(&mut self, id: RunId) {
        if self.first.is_none() {
            self.first = Some(id);
        } else {
            self.more.push(id);
        }
    }

    fn remove(&mut self, id: RunId) {
        if self.first == Some(id) {
            self.first = if self.more.is_empty() {
                None
            } else {
                Some(self.more.remove(0))
            };
        } else {
            self.more.retain(|x| *x != id);
        }
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }

    fn iter(&self) -> impl Iterator<Item = &RunId> {
        self.first.iter().chain(&self.more)
    }
}

/// A claimed run in the journal: what a claim's plain records (see [`fits`](Self::fits))
/// do not have in common, a fraction of a record's size.
#[derive(Debug)]
struct Journaled {
    job_id: ArcStr,
    owner: ArcStr,
    run_id: RunId,
    scheduled: DateTime<Utc>,
    submitted_at: DateTime<Utc>,
    /// When it started, if it did before it was settled.
    started_at: Option<DateTime<Utc>>,
}

impl Journaled {
    /// Whether `r` is a plain claimed record: a scheduled first attempt, not queued, with
    /// nothing else set. Other records are indexed at once.
    fn fits(r: &RunRecord) -> bool {
        r.state == RunState::Claimed
            && !r.manual
            && r.attempt == 1
            && !r.queued
            && !r.cancel_requested
            && r.retry_at.is_none()
            && r.started_at.is_none()
            && r.finished_at.is_none()
            && r.error.is_none()
            && r.output.is_none()
    }

    /// The full record, as the indexes keep it.
    fn record(self) -> RunRecord {
        let mut run = RunRecord::claimed_as(
            self.run_id,
            self.job_id,
            self.scheduled,
            self.owner,
            self.submitted_at,
        );
        if self.started_at.is_some() {
            run.state = RunState::Started;
            run.started_at = self.started_at;
        }
        run
    }
}

impl Runs {
    /// The active runs of `job_id`, for the overlap rule. Journaled runs are not seen: the
    /// caller settles first when the job may have some (see the memory store's claim).
    pub(super) fn active_of(&self, job_id: &str) -> ActiveRuns {
        let mut active = ActiveRuns::new();
        for id in self
            .by_job
            .get(job_id)
            .into_iter()
            .flat_map(|j| j.active.iter())
        {
            if let Some(r) = self.by_id.get(id) {
                active.push(r.run_id, r.state, r.queued);
            }
        }
        active
    }

    /// Writes what a claim planned: its records (the plain ones to the journal), and the
    /// cancel flags.
    pub(super) fn record_claim(&mut self, key: &ArcStr, due: &DueJob) {
        self.flag_cancel(key, &due.cancel);
        for r in &due.runs {
            if Journaled::fits(r) {
                if self.journal.len() >= JOURNAL_MAX {
                    self.settle();
                }
                self.journal.push(Journaled {
                    job_id: key.clone(),
                    owner: r.owner.clone(),
                    run_id: r.run_id,
                    scheduled: r.scheduled,
                    submitted_at: r.submitted_at,
                    started_at: None,
                });
            } else {
                self.insert(key, r);
            }
        }
    }

    /// Moves the journal's records into the indexes.
    pub(super) fn settle(&mut self) {
        if self.journal.is_empty() {
            return;
        }
        let mut journal = std::mem::take(&mut self.journal);
        for entry in journal.drain(..) {
            self.index(entry.record());
        }
        self.journal = journal;
        self.cursor = 0;
    }

    /// Stores `run` of the job `key` in the indexes.
    pub(super) fn insert(&mut self, key: &ArcStr, run: &RunRecord) {
        self.index(RunRecord {
            job_id: key.clone(),
            ..run.clone()
        });
    }

    fn index(&mut self, run: RunRecord) {
        // One lookup (the id hashed once): cloning the key is an increment.
        let job = self.by_job.entry(run.job_id.clone()).or_default();
        let entry = (run.scheduled, run.run_id);
        let at = job.all.partition_point(|k| *k < entry);
        if job.all.get(at) != Some(&entry) {
            job.all.insert(at, entry);
        }
        if run.state.is_active() {
            job.active.push(run.run_id);
        }
        if run.queued {
            self.attention.insert(run.job_id.clone());
        }
        self.by_id.insert(run.run_id, run);
    }

    /// Adds records made outside a claim (retries), keeping any already stored: by run id,
    /// or for scheduled runs by job, scheduled time and attempt.
    pub(super) fn add(&mut self, runs: &[RunRecord]) {
        self.settle();
        for run in runs {
            if self.by_id.contains_key(&run.run_id) {
                continue;
            }
            let taken = !run.manual
                && self.by_job.get(run.job_id.as_str()).is_some_and(|job| {
                    let from = job.all.partition_point(|(t, _)| *t < run.scheduled);
                    job.all
                        .iter()
                        .skip(from)
                        .take_while(|(t, _)| *t == run.scheduled)
                        .filter_map(|(_, id)| self.by_id.get(id))
                        .any(|r| !r.manual && r.attempt == run.attempt)
                });
            if !taken {
                let key = run.job_id.clone();
                self.insert(&key, run);
            }
        }
    }

    pub(super) fn flag_cancel(&mut self, key: &ArcStr, ids: &[RunId]) {
        if ids.is_empty() {
            return;
        }
        self.settle();
        for id in ids {
            if let Some(r) = self.by_id.get_mut(id) {
                r.cancel_requested = true;
                self.attention.insert(key.clone());
            }
        }
    }

    pub(super) fn start(&mut self, ids: &[RunId], owner: &str, now: DateTime<Utc>) -> Vec<RunId> {
        let mut started = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(s) = self.by_id.get_mut(id) else {
                if let Some(j) = find_journaled(&mut self.journal, &mut self.cursor, *id) {
                    if j.started_at.is_none() && j.owner == owner {
                        j.started_at = Some(now);
                        started.push(*id);
                    }
                }
                continue;
            };
            let r = s;
            if r.state == RunState::Claimed && r.owner == owner {
                r.state = RunState::Started;
                r.started_at = Some(now);
                r.queued = false;
                started.push(*id);
            }
        }
        started
    }

    /// Writes outcomes, and keeps at most `retention.per_job` finished runs of each job it
    /// touched.
    pub(super) fn finish(&mut self, outcomes: &[RunOutcome], retention: RunRetention) {
        self.settle();
        for o in outcomes {
            let Some(r) = self.by_id.get_mut(&o.run_id) else {
                continue;
            };
            if !r.apply(o) {
                continue;
            }
            let Some(job) = self.by_job.get_mut(&*o.job_id) else {
                continue;
            };
            job.active.remove(o.run_id);
            let mut over = job
                .all
                .len()
                .saturating_sub(retention.per_job + job.active.len());
            if over > 0 {
                let by_id = &mut self.by_id;
                job.all.retain(|(_, id)| {
                    let finished = by_id.get(id).is_none_or(|r| r.state.is_terminal());
                    if over > 0 && finished {
                        over -= 1;
                        by_id.remove(id);
                        false
                    } else {
                        true
                    }
                });
            }
        }
    }

    /// Whether [`tick`](Self::tick) would do anything at `now`: a job needs attention, or
    /// pruning by age is due.
    pub(super) fn tick_wanted(&self, now: DateTime<Utc>) -> bool {
        !self.attention.is_empty() || self.prune_due(now)
    }

    fn prune_due(&self, now: DateTime<Utc>) -> bool {
        self.aged_at
            .is_none_or(|t| now - t >= chrono::TimeDelta::minutes(1))
    }

    /// Promotes queued runs of jobs with a free instance (to `owner`), returns started
    /// runs of `owner` flagged for cancellation, and prunes by age (at most once a minute).
    pub(super) fn tick(
        &mut self,
        jobs: &HashMap<ArcStr, Arc<JobRecord>, crate::job::JobIdState>,
        owner: &ArcStr,
        now: DateTime<Utc>,
        retention: RunRetention,
        is_finishing: impl Fn(RunId) -> bool,
    ) -> RunTick {
        self.settle();
        let mut tick = RunTick::default();
        let watched: Vec<ArcStr> = self.attention.iter().cloned().collect();
        for job_id in watched {
            let active: Vec<RunRecord> = self
                .by_job
                .get(&job_id)
                .into_iter()
                .flat_map(|j| j.active.iter())
                .filter_map(|id| self.by_id.get(id).cloned())
                .collect();
            let mut flagged = false;
            for r in &active {
                if r.state == RunState::Started && r.cancel_requested {
                    flagged = true;
                    if r.owner == *owner {
                        tick.cancel.push(r.run_id);
                    }
                }
            }
            let mut queued: Vec<&RunRecord> = active.iter().filter(|r| r.queued).collect();
            if !flagged && queued.is_empty() {
                self.attention.remove(&job_id);
                continue;
            }
            let max = jobs.get(&job_id).map_or(1, |j| j.max_instances) as usize;
            let running = active
                .iter()
                .filter(|r| !r.queued && !is_finishing(r.run_id))
                .count();
            queued.sort_by_key(|r| (r.scheduled, r.submitted_at, r.run_id));
            let promote: Vec<RunId> = queued
                .into_iter()
                .take(max.saturating_sub(running))
                .map(|q| q.run_id)
                .collect();
            for id in promote {
                if let Some(r) = self.by_id.get_mut(&id) {
                    r.queued = false;
                    r.owner = owner.clone();
                    tick.promoted.push(r.clone());
                }
            }
        }
        if self.prune_due(now) {
            self.aged_at = Some(now);
            self.prune(now, retention);
        }
        tick
    }

    /// Deletes finished runs beyond the retention.
    fn prune(&mut self, now: DateTime<Utc>, retention: RunRetention) {
        let cutoff = retention.cutoff(now);
        let by_id = &mut self.by_id;
        // One buffer for every job: a pass over many jobs allocates once, not per job.
        let mut keep = Vec::new();
        self.by_job.retain(|_, job| {
            job.all.retain(|key| by_id.contains_key(&key.1));
            let mut finished_seen = 0;
            // Newest first, as retention counts; `keep` is in the vector's order.
            keep.clear();
            keep.resize(job.all.len(), true);
            for (key, kept) in job.all.iter().zip(keep.iter_mut()).rev() {
                let Some(r) = by_id.get(&key.1) else {
                    continue;
                };
                if r.state.is_active() {
                    continue;
                }
                finished_seen += 1;
                let too_old = cutoff.is_some_and(|c| r.finished_at.is_some_and(|f| f < c));
                if finished_seen > retention.per_job || too_old {
                    *kept = false;
                    by_id.remove(&key.1);
                }
            }
            let mut kept = keep.iter();
            job.all.retain(|_| kept.next().copied().unwrap_or(true));
            !job.all.is_empty()
        });
    }

    pub(super) fn query(&mut self, filter: &RunFilter) -> Vec<RunRecord> {
        self.settle();
        let mut out = Vec::new();
        // The job is chosen by the scan; the rest of the filter is checked on the stored
        // record (its strings empty), so only matching runs are built whole.
        let rest = RunFilter {
            job_id: None,
            ..filter.clone()
        };
        let mut scan = |runs: &[(DateTime<Utc>, RunId)]| {
            for key in runs.iter().rev() {
                if let Some(r) = self.by_id.get(&key.1) {
                    if rest.matches(r) {
                        out.push(r.clone());
                    }
                }
            }
        };
        match &filter.job_id {
            Some(job) => {
                if let Some(runs) = self.by_job.get(job.as_str()) {
                    scan(&runs.all);
                }
            }
            None => self.by_job.values().for_each(|j| scan(&j.all)),
        }
        filter.page(out)
    }

    pub(super) fn get(&mut self, id: RunId) -> Option<RunRecord> {
        self.settle();
        self.by_id.get(&id).cloned()
    }
}

/// The journaled record of run `id`: searched from `cursor` on, then from the start, and
/// `cursor` left after it.
fn find_journaled<'a>(
    journal: &'a mut [Journaled],
    cursor: &mut usize,
    id: RunId,
) -> Option<&'a mut Journaled> {
    let from = (*cursor).min(journal.len());
    let at = journal[from..]
        .iter()
        .position(|j| j.run_id == id)
        .map(|i| from + i)
        .or_else(|| journal[..from].iter().position(|j| j.run_id == id))?;
    *cursor = at + 1;
    journal.get_mut(at)
}
