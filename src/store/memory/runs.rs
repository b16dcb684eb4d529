//! The memory store's run ledger: records by id, with per-job indexes for the overlap rule,
//! listing and retention. Everything lives under the store's one lock, so a claim and its
//! records are one step.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::job::{JobRecord, RunId};
use crate::ledger::{
    ActiveRuns, RunFilter, RunOutcome, RunRecord, RunRetention, RunState, RunTick,
};
use crate::store::DueJob;

/// The runs of one memory store.
#[derive(Debug, Default)]
pub(super) struct Runs {
    by_id: HashMap<RunId, RunRecord, crate::job::RunIdState>,
    /// Each job's kept and active runs.
    by_job: HashMap<Arc<str>, JobRuns>,
    /// Jobs with queued runs or runs asked to stop: what the ledger pass looks at.
    attention: BTreeSet<Arc<str>>,
    /// When finished runs were last pruned by age.
    aged_at: Option<DateTime<Utc>>,
}

/// One job's runs. Kept while the job has runs, so its vector's capacity is reused from
/// run to run.
#[derive(Debug, Default)]
struct JobRuns {
    /// Every kept run, by (scheduled time, run id).
    all: BTreeSet<(DateTime<Utc>, RunId)>,
    /// The active (claimed or started) ones.
    active: Vec<RunId>,
}

impl Runs {
    /// The active runs of `job_id`, for the overlap rule.
    pub(super) fn active_of(&self, job_id: &str) -> ActiveRuns {
        let mut active = ActiveRuns::new();
        for id in self.by_job.get(job_id).into_iter().flat_map(|j| &j.active) {
            if let Some(r) = self.by_id.get(id) {
                active.push(r.run_id, r.state, r.queued);
            }
        }
        active
    }

    /// Writes what a claim planned: its records, and the cancel flags.
    pub(super) fn record_claim(&mut self, key: &Arc<str>, due: &DueJob) {
        self.flag_cancel(key, &due.cancel);
        for r in &due.runs {
            self.insert(key, r.clone());
        }
    }

    pub(super) fn insert(&mut self, key: &Arc<str>, run: RunRecord) {
        let job = match self.by_job.get_mut(key) {
            Some(job) => job,
            None => self.by_job.entry(key.clone()).or_default(),
        };
        job.all.insert((run.scheduled, run.run_id));
        if run.state.is_active() {
            job.active.push(run.run_id);
        }
        if run.queued {
            self.attention.insert(key.clone());
        }
        self.by_id.insert(run.run_id, run);
    }

    /// Adds records made outside a claim (retries), keeping any already stored: by run id,
    /// or for scheduled runs by job, scheduled time and attempt.
    pub(super) fn add(&mut self, runs: &[RunRecord]) {
        for run in runs {
            if self.by_id.contains_key(&run.run_id) {
                continue;
            }
            let taken = !run.manual
                && self.by_job.get(run.job_id.as_str()).is_some_and(|job| {
                    job.all
                        .range((run.scheduled, RunId::from_raw(0))..)
                        .take_while(|(t, _)| *t == run.scheduled)
                        .filter_map(|(_, id)| self.by_id.get(id))
                        .any(|r| !r.manual && r.attempt == run.attempt)
                });
            if !taken {
                let key: Arc<str> = Arc::from(run.job_id.as_str());
                self.insert(&key, run.clone());
            }
        }
    }

    pub(super) fn flag_cancel(&mut self, key: &Arc<str>, ids: &[RunId]) {
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
            if let Some(r) = self.by_id.get_mut(id) {
                if r.state == RunState::Claimed && r.owner == owner {
                    r.state = RunState::Started;
                    r.started_at = Some(now);
                    r.queued = false;
                    started.push(*id);
                }
            }
        }
        started
    }

    /// Writes outcomes, and keeps at most `retention.per_job` finished runs of each job it
    /// touched.
    pub(super) fn finish(&mut self, outcomes: &[RunOutcome], retention: RunRetention) {
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
            job.active.retain(|id| *id != o.run_id);
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

    /// Promotes queued runs of jobs with a free instance (to `owner`), returns started
    /// runs of `owner` flagged for cancellation, and prunes by age (at most once a minute).
    pub(super) fn tick(
        &mut self,
        jobs: &HashMap<Arc<str>, Box<JobRecord>>,
        owner: &str,
        now: DateTime<Utc>,
        retention: RunRetention,
        is_finishing: impl Fn(RunId) -> bool,
    ) -> RunTick {
        let mut tick = RunTick::default();
        let watched: Vec<Arc<str>> = self.attention.iter().cloned().collect();
        for job_id in watched {
            let active: Vec<RunRecord> = self
                .by_job
                .get(&job_id)
                .into_iter()
                .flat_map(|j| &j.active)
                .filter_map(|id| self.by_id.get(id).cloned())
                .collect();
            let mut flagged = false;
            for r in &active {
                if r.state == RunState::Started && r.cancel_requested {
                    flagged = true;
                    if r.owner == owner {
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
            for q in queued.into_iter().take(max.saturating_sub(running)) {
                if let Some(r) = self.by_id.get_mut(&q.run_id) {
                    r.queued = false;
                    r.owner = owner.to_string();
                    tick.promoted.push(r.clone());
                }
            }
        }
        if self
            .aged_at
            .is_none_or(|t| now - t >= chrono::TimeDelta::minutes(1))
        {
            self.aged_at = Some(now);
            self.prune(now, retention);
        }
        tick
    }

    /// Deletes finished runs beyond the retention.
    fn prune(&mut self, now: DateTime<Utc>, retention: RunRetention) {
        let cutoff = retention.cutoff(now);
        let by_id = &mut self.by_id;
        self.by_job.retain(|_, job| {
            job.all.retain(|key| by_id.contains_key(&key.1));
            let mut finished_seen = 0;
            let mut doomed = Vec::new();
            for key in job.all.iter().rev() {
                let Some(r) = by_id.get(&key.1) else { continue };
                if r.state.is_active() {
                    continue;
                }
                finished_seen += 1;
                let too_old = cutoff.is_some_and(|c| r.finished_at.is_some_and(|f| f < c));
                if finished_seen > retention.per_job || too_old {
                    doomed.push(*key);
                }
            }
            for key in doomed {
                job.all.remove(&key);
                by_id.remove(&key.1);
            }
            !job.all.is_empty()
        });
    }

    pub(super) fn query(&self, filter: &RunFilter) -> Vec<RunRecord> {
        let mut out = Vec::new();
        let mut scan = |runs: &BTreeSet<(DateTime<Utc>, RunId)>| {
            for key in runs.iter().rev() {
                if let Some(r) = self.by_id.get(&key.1) {
                    if filter.matches(r) {
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

    pub(super) fn get(&self, id: RunId) -> Option<RunRecord> {
        self.by_id.get(&id).cloned()
    }
}
