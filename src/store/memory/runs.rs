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
    by_id: HashMap<RunId, RunRecord>,
    /// Every kept run of a job, by (scheduled time, run id).
    by_job: HashMap<Arc<str>, BTreeSet<(DateTime<Utc>, RunId)>>,
    /// The active (claimed or started) runs of each job.
    active: HashMap<Arc<str>, Vec<RunId>>,
}

impl Runs {
    /// The active runs of `job_id`, for the overlap rule.
    pub(super) fn active_of(&self, job_id: &str) -> ActiveRuns {
        let mut active = ActiveRuns::new();
        for id in self.active.get(job_id).into_iter().flatten() {
            if let Some(r) = self.by_id.get(id) {
                active.push(r.run_id, r.state, r.queued);
            }
        }
        active
    }

    /// Writes what a claim planned: its records, and the cancel flags.
    pub(super) fn record_claim(&mut self, key: &Arc<str>, due: &DueJob) {
        for &id in &due.cancel {
            if let Some(r) = self.by_id.get_mut(&id) {
                r.cancel_requested = true;
            }
        }
        for r in &due.runs {
            self.insert(key, r.clone());
        }
    }

    pub(super) fn insert(&mut self, key: &Arc<str>, run: RunRecord) {
        self.by_job
            .entry(key.clone())
            .or_default()
            .insert((run.scheduled, run.run_id));
        if run.state.is_active() {
            self.active.entry(key.clone()).or_default().push(run.run_id);
        }
        self.by_id.insert(run.run_id, run);
    }

    pub(super) fn flag_cancel(&mut self, ids: &[RunId]) {
        for id in ids {
            if let Some(r) = self.by_id.get_mut(id) {
                r.cancel_requested = true;
            }
        }
    }

    fn deactivate(&mut self, job_id: &str, run_id: RunId) {
        if let Some(list) = self.active.get_mut(job_id) {
            list.retain(|id| *id != run_id);
            if list.is_empty() {
                self.active.remove(job_id);
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

    pub(super) fn finish(&mut self, outcomes: &[RunOutcome]) {
        for o in outcomes {
            let Some(r) = self.by_id.get_mut(&o.run_id) else {
                continue;
            };
            if r.apply(o) {
                let job = r.job_id.clone();
                self.deactivate(&job, o.run_id);
            }
        }
    }

    /// Promotes queued runs of jobs with a free instance (to `owner`), returns started
    /// runs of `owner` flagged for cancellation, and prunes.
    pub(super) fn tick(
        &mut self,
        jobs: &HashMap<Arc<str>, Box<JobRecord>>,
        owner: &str,
        now: DateTime<Utc>,
        retention: RunRetention,
        is_finishing: impl Fn(RunId) -> bool,
    ) -> RunTick {
        let mut tick = RunTick::default();
        let job_ids: Vec<Arc<str>> = self.active.keys().cloned().collect();
        for job_id in job_ids {
            let runs: Vec<RunRecord> = self.active[&job_id]
                .iter()
                .filter_map(|id| self.by_id.get(id).cloned())
                .collect();
            for r in &runs {
                if r.state == RunState::Started && r.cancel_requested && r.owner == owner {
                    tick.cancel.push(r.run_id);
                }
            }
            let mut queued: Vec<&RunRecord> = runs.iter().filter(|r| r.queued).collect();
            if queued.is_empty() {
                continue;
            }
            let max = jobs.get(&job_id).map_or(1, |j| j.max_instances) as usize;
            let running = runs
                .iter()
                .filter(|r| !r.queued && !is_finishing(r.run_id))
                .count();
            queued.sort_by_key(|r| (r.scheduled, r.submitted_at, r.run_id));
            for q in queued.into_iter().take(max.saturating_sub(running)) {
                if let Some(r) = self.by_id.get_mut(&q.run_id) {
                    r.queued = false;
                    r.owner = owner.to_string();
                    tick.dispatch.push(r.clone());
                }
            }
        }
        self.prune(now, retention);
        tick
    }

    /// Deletes finished runs beyond the retention.
    fn prune(&mut self, now: DateTime<Utc>, retention: RunRetention) {
        let cutoff = retention.cutoff(now);
        let by_id = &mut self.by_id;
        self.by_job.retain(|_, runs| {
            let mut kept_finished = 0;
            let mut doomed = Vec::new();
            for key in runs.iter().rev() {
                let Some(r) = by_id.get(&key.1) else {
                    doomed.push(*key);
                    continue;
                };
                if r.state.is_active() {
                    continue;
                }
                kept_finished += 1;
                let too_old = cutoff.is_some_and(|c| r.finished_at.is_some_and(|f| f < c));
                if kept_finished > retention.per_job || too_old {
                    doomed.push(*key);
                }
            }
            for key in doomed {
                runs.remove(&key);
                by_id.remove(&key.1);
            }
            !runs.is_empty()
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
                    scan(runs);
                }
            }
            None => self.by_job.values().for_each(scan),
        }
        filter.page(out)
    }

    pub(super) fn get(&self, id: RunId) -> Option<RunRecord> {
        self.by_id.get(&id).cloned()
    }
}
