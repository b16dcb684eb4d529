//! The run ledger's periodic pass ([`JobStore::tick_runs`](crate::store::JobStore::tick_runs)):
//! heartbeat, taking over the runs of dead schedulers, promoting queued runs, cancel
//! requests, and pruning.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use zookeeper_client as zk;

use super::client::Client;
use super::names::{decode_name, persistent};
use super::runs::{history_entry, owner_name, parse_history, Heartbeat, LedgerRead, Op};
use crate::error::Result;
use crate::job::RunId;
use crate::ledger::{RunRecord, RunRetention, RunState, RunTick};
use crate::store::common::{from_micros_saturating, lease_until, micros_ceil};
use crate::store::StoreContext;

/// The most records one pass deletes (pruning is spread over passes, never in the claim).
const PRUNE_PER_PASS: usize = 1000;

/// How long the heartbeat of a scheduler that stopped is kept (for the abandoned runs'
/// messages), in µs.
const DAY_US: i64 = 86_400_000_000;

impl Client {
    /// [`JobStore::tick_runs`](crate::store::JobStore::tick_runs).
    pub(super) async fn tick_runs(&self, now: DateTime<Utc>) -> Result<RunTick> {
        let Some(ctx) = self.state.ctx() else {
            return Ok(RunTick::default());
        };
        let c = self.session().await?;
        self.write_heartbeat(&c, ctx.scheduler_id(), lease_until(now, ctx.lease()))
            .await?;
        // The history is listed before the active runs are read: a run listed in the
        // history and not active when the markers are read is finished, never new.
        let history = self.list_history(&c).await?;
        let jobs = self
            .call("listing active runs", c.list_children(&self.active_root()))
            .await?;
        let reads = self.read_ledger(&c, &jobs).await?;
        let ids: Vec<RunId> = reads
            .iter()
            .flat_map(|r| r.markers.iter().map(|(id, _)| *id))
            .collect();
        let mut records: HashMap<RunId, (RunRecord, i32)> = HashMap::new();
        let mut bad = std::collections::HashSet::new();
        for (id, data, version) in self.read_runs(&c, &ids).await? {
            match self.parse_run(id, &data, version, None) {
                Some(r) => {
                    records.insert(id, (r, version));
                }
                None => {
                    bad.insert(id);
                }
            }
        }
        let alive = self.heartbeats(&c).await?;
        let queued_jobs: Vec<String> = jobs
            .iter()
            .zip(&reads)
            .filter(|(_, r)| r.markers.iter().any(|(_, q)| *q))
            .map(|(j, _)| j.clone())
            .collect();
        let max_instances: HashMap<String, u32> = self
            .read_nodes(&c, &queued_jobs)
            .await?
            .iter()
            .filter_map(|n| Some((n.name.clone(), self.decode(n).ok()?.0.max_instances)))
            .collect();

        let mut tick = RunTick::default();
        let mut groups = Vec::new();
        let mut results: HashMap<usize, JobTick> = HashMap::new();
        for (i, (job, read)) in jobs.iter().zip(&reads).enumerate() {
            let max = max_instances.get(job).copied().unwrap_or(1);
            let plan = self.plan_job(&ctx, job, read, &records, &bad, &alive, max, now);
            tick.cancel.extend(plan.cancel.iter().copied());
            if !plan.ops.is_empty() {
                groups.push((i, plan.ops.clone()));
                results.insert(i, plan);
            }
        }
        let mut done = Vec::new();
        // A job whose ledger changed since it was read is left for the next pass.
        self.commit_groups(&c, groups, &mut done, "taking over and promoting runs")
            .await?;
        for i in done {
            if let Some(plan) = results.remove(&i) {
                for (r, version) in plan.written {
                    if r.state.is_active() {
                        self.written.put(r, version + 1);
                    } else {
                        self.written.forget([r.run_id]);
                    }
                }
                tick.dispatch.extend(plan.dispatch);
                tick.promoted.extend(plan.promoted);
                tick.abandoned.extend(plan.abandoned);
            }
        }
        // Heartbeats of schedulers gone for a day: a missing heartbeat counts as dead too,
        // so they only grow the directory.
        let forgotten: Vec<Op> = alive
            .iter()
            .filter(|(_, until)| **until < now.timestamp_micros().saturating_sub(DAY_US))
            .take(100)
            .map(|(name, _)| Op::DeleteIfAny(format!("{}/{name}", self.owners_path())))
            .collect();
        self.commit_ops(&c, forgotten, "removing old heartbeats")
            .await?
            .ok();
        let active: std::collections::HashSet<RunId> = ids.into_iter().collect();
        self.prune(&c, history, &active, ctx.run_retention(), now)
            .await?;
        Ok(tick)
    }

    /// [`JobStore::heartbeat`](crate::store::JobStore::heartbeat): this scheduler is alive
    /// until `now + lease` (its node under `R/owners`).
    pub(super) async fn heartbeat(&self, now: DateTime<Utc>) -> Result<()> {
        let Some(ctx) = self.state.ctx() else {
            return Ok(());
        };
        let c = self.session().await?;
        self.write_heartbeat(&c, ctx.scheduler_id(), lease_until(now, ctx.lease()))
            .await
    }

    /// Records this scheduler as alive until `until`.
    async fn write_heartbeat(&self, c: &zk::Client, me: &str, until: DateTime<Utc>) -> Result<()> {
        let path = format!("{}/{}", self.owners_path(), owner_name(me));
        let data = serde_json::to_vec(&Heartbeat {
            alive_until: micros_ceil(until),
            alive_until_utc: until.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        })?;
        self.call("recording the heartbeat", async {
            match c.set_data(&path, &data, None).await {
                Err(zk::Error::NoNode) => match c.create(&path, &data, &persistent()).await {
                    Err(zk::Error::NodeExists) => c.set_data(&path, &data, None).await.map(drop),
                    r => r.map(drop),
                },
                r => r.map(drop),
            }
        })
        .await
    }

    /// Every scheduler's heartbeat: owner node name → alive until (µs).
    async fn heartbeats(&self, c: &zk::Client) -> Result<HashMap<String, i64>> {
        let names = self
            .call("reading heartbeats", c.list_children(&self.owners_path()))
            .await?;
        let mut out = HashMap::with_capacity(names.len());
        for chunk in names.chunks(500) {
            let mut r = c.new_multi_reader();
            for n in chunk {
                r.add_get_data(&format!("{}/{n}", self.owners_path()))
                    .map_err(|e| self.state.err("reading heartbeats", e))?;
            }
            for (n, res) in chunk
                .iter()
                .zip(self.call("reading heartbeats", r.commit()).await?)
            {
                if let zk::MultiReadResult::Data { data, .. } = res {
                    if let Ok(h) = serde_json::from_slice::<Heartbeat>(&data) {
                        out.insert(n.clone(), h.alive_until);
                    }
                }
            }
        }
        Ok(out)
    }

    /// What this pass does to the active runs of job node `job`: takes over the runs of
    /// dead owners, promotes queued runs into free instances (under the job's ledger lock),
    /// and collects this scheduler's started runs asked to stop.
    #[allow(clippy::too_many_arguments)]
    fn plan_job(
        &self,
        ctx: &StoreContext,
        job: &str,
        read: &LedgerRead,
        records: &HashMap<RunId, (RunRecord, i32)>,
        bad: &std::collections::HashSet<RunId>,
        alive: &HashMap<String, i64>,
        max_instances: u32,
        now: DateTime<Utc>,
    ) -> JobTick {
        let me = ctx.scheduler_id();
        let now_us = now.timestamp_micros();
        let mut plan = JobTick::default();
        // Records changed by this pass: id → (record, version read, marker queued before).
        let mut changed: Vec<(RunRecord, i32, bool)> = Vec::new();
        let mut holding = 0usize;
        let mut queued: Vec<(RunRecord, i32)> = Vec::new();
        for &(id, marker_queued) in &read.markers {
            let Some((r, version)) = records.get(&id) else {
                if bad.contains(&id) {
                    // A record that does not parse: it may hold an instance.
                    holding += usize::from(!marker_queued);
                } else {
                    // No record (left by hand: records and markers change together):
                    // the marker would hold an instance forever.
                    plan.ops
                        .push(Op::DeleteIfAny(self.marker_path(job, id, marker_queued)));
                }
                continue;
            };
            let mut r = r.clone();
            if r.state.is_terminal() {
                // Finished, its marker left behind (by hand): it holds nothing.
                plan.ops
                    .push(Op::DeleteIfAny(self.marker_path(job, id, marker_queued)));
                continue;
            }
            let dead_since = (r.owner != me)
                .then(|| alive.get(&owner_name(&r.owner)).copied())
                .and_then(|a| match a {
                    None => Some(None),
                    Some(until) if until < now_us => Some(Some(until)),
                    Some(_) => None,
                });
            if let Some(since) = dead_since {
                if r.state == RunState::Started {
                    r.state = RunState::Abandoned;
                    r.finished_at = Some(now);
                    r.queued = false;
                    r.error = Some(crate::ledger::abandoned_error(
                        &r.owner,
                        since.map(from_micros_saturating),
                    ));
                    plan.abandoned.push(r.clone());
                    changed.push((r, *version, marker_queued));
                    continue;
                }
                r.owner = ctx.owner().clone();
                if r.queued {
                    queued.push((r, *version));
                } else {
                    holding += usize::from(!ctx.is_finishing(id));
                    plan.dispatch.push(r.clone());
                    changed.push((r, *version, marker_queued));
                }
                continue;
            }
            if r.queued {
                queued.push((r, *version));
                continue;
            }
            holding += usize::from(!ctx.is_finishing(id));
            if r.state == RunState::Started && r.cancel_requested && r.owner == me {
                plan.cancel.push(id);
            }
        }
        let free = (max_instances as usize).saturating_sub(holding);
        queued.sort_by_key(|(r, _)| (r.scheduled, r.submitted_at, r.run_id));
        let mut promoted = 0;
        for (i, (mut r, version)) in queued.into_iter().enumerate() {
            if i < free {
                r.queued = false;
                r.owner = ctx.owner().clone();
                plan.promoted.push(r.clone());
                changed.push((r, version, true));
                promoted += 1;
            } else if r.owner == me && records.get(&r.run_id).is_some_and(|(o, _)| o.owner != me) {
                // Taken over, still queued.
                changed.push((r, version, true));
            }
        }
        for (r, version, marker_queued) in changed {
            plan.written.push((r.clone(), version));
            plan.ops.push(Op::Set(
                self.run_path(r.run_id),
                r.to_json().into_bytes(),
                Some(version),
            ));
            if r.state.is_terminal() {
                plan.ops.push(Op::DeleteIfAny(self.marker_path(
                    job,
                    r.run_id,
                    marker_queued,
                )));
            } else if marker_queued && !r.queued {
                plan.ops
                    .push(Op::DeleteIfAny(self.marker_path(job, r.run_id, true)));
                plan.ops.push(Op::Create(
                    self.marker_path(job, r.run_id, false),
                    Vec::new(),
                ));
            }
        }
        if promoted > 0 {
            // Promotions take instances: under the job's lock, like claims.
            plan.ops
                .push(Op::Set(self.active_path(job), Vec::new(), read.lock));
        }
        plan
    }

    /// Every job's history entries: (job node, [(scheduled µs, run id)]).
    async fn list_history(&self, c: &zk::Client) -> Result<Vec<(String, Vec<(i64, RunId)>)>> {
        let jobs = self
            .call("listing runs", c.list_children(&self.history_root()))
            .await?;
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(500) {
            let mut r = c.new_multi_reader();
            for j in chunk {
                r.add_get_children(&self.history_path(j))
                    .map_err(|e| self.state.err("listing runs", e))?;
            }
            for (j, res) in chunk
                .iter()
                .zip(self.call("listing runs", r.commit()).await?)
            {
                if let zk::MultiReadResult::Children { children } = res {
                    out.push((
                        j.clone(),
                        children.iter().filter_map(|n| parse_history(n)).collect(),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Deletes finished runs beyond `retention` (at most [`PRUNE_PER_PASS`]): the oldest
    /// beyond the newest `per_job` of each job, and those finished before the age cutoff.
    /// Each candidate's record is read first: active runs and records that do not parse are
    /// never deleted.
    async fn prune(
        &self,
        c: &zk::Client,
        history: Vec<(String, Vec<(i64, RunId)>)>,
        active: &std::collections::HashSet<RunId>,
        retention: RunRetention,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let cutoff = retention.cutoff(now);
        let cutoff_us = cutoff.map(|t| t.timestamp_micros());
        // (job node, entry, by count) of the runs that may go.
        let mut candidates: Vec<(String, (i64, RunId), bool)> = Vec::new();
        for (job, mut entries) in history {
            entries.retain(|(_, id)| !active.contains(id));
            entries.sort_unstable_by(|a, b| b.cmp(a));
            for (i, e) in entries.into_iter().enumerate() {
                let by_count = i >= retention.per_job;
                // A run finishes after it is scheduled: only runs scheduled before the
                // cutoff can have finished before it.
                let maybe_old = cutoff_us.is_some_and(|c| e.0 <= c);
                if by_count || maybe_old {
                    candidates.push((job.clone(), e, by_count));
                }
            }
        }
        // Over-count first, then the oldest.
        candidates.sort_by_key(|(_, e, by_count)| (!*by_count, *e));
        candidates.truncate(PRUNE_PER_PASS);
        if candidates.is_empty() {
            return Ok(());
        }
        let ids: Vec<RunId> = candidates.iter().map(|(_, (_, id), _)| *id).collect();
        let read: HashMap<RunId, (Vec<u8>, i32)> = self
            .read_runs(c, &ids)
            .await?
            .into_iter()
            .map(|(id, d, v)| (id, (d, v)))
            .collect();
        let mut groups = Vec::new();
        for (job, (us, id), by_count) in candidates {
            let entry = format!("{}/{}", self.history_path(&job), history_entry(us, id));
            let Some((data, version)) = read.get(&id) else {
                // The entry outlived its record: drop it.
                groups.push((id, vec![Op::DeleteIfAny(entry)]));
                continue;
            };
            let job_id = decode_name(&job);
            let Some(r) = self.parse_run(id, data, *version, job_id.as_deref()) else {
                continue;
            };
            let too_old = cutoff.is_some_and(|c| r.finished_at.is_some_and(|f| f < c));
            if r.state.is_terminal() && (by_count || too_old) {
                groups.push((
                    id,
                    vec![
                        Op::Delete(self.run_path(id), *version),
                        Op::DeleteIfAny(entry),
                    ],
                ));
            }
        }
        let mut done = Vec::new();
        self.commit_groups(c, groups, &mut done, "pruning runs")
            .await?;
        Ok(())
    }
}

/// What [`Client::plan_job`] planned for one job.
#[derive(Default)]
struct JobTick {
    ops: Vec<Op>,
    /// The records the ops set, with the data versions they were read at.
    written: Vec<(RunRecord, i32)>,
    dispatch: Vec<RunRecord>,
    /// Queued runs promoted to this scheduler.
    promoted: Vec<RunRecord>,
    abandoned: Vec<RunRecord>,
    cancel: Vec<RunId>,
}
