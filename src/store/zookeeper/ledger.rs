//! The run ledger's operations on records: starting and finishing runs, manual runs, and
//! reading (queries, one run). The layout is in `runs.rs`; the periodic pass in `tick.rs`.

use chrono::{DateTime, Utc};
use zookeeper_client as zk;

use super::client::Client;
use super::names::{decode_name, encode};
use super::runs::{batches, parse_history, Op, Refused};
use crate::error::{Error, Result};
use crate::job::RunId;
use crate::ledger::{plan_manual_runs, RunFilter, RunOutcome, RunRecord, RunState};
use crate::store::common::fingerprint;

/// How many times a batch is read and written again when a record changed in between.
const ATTEMPTS: usize = 8;

impl Client {
    /// Parses a stored record; one that does not parse (or names another run) is reported
    /// once per content, as a problem of job `job_id`, and skipped.
    pub(super) fn parse_run(
        &self,
        id: RunId,
        data: &[u8],
        version: i32,
        job_id: Option<&str>,
    ) -> Option<RunRecord> {
        let text = String::from_utf8_lossy(data);
        let why = match RunRecord::from_json(&text) {
            Ok(r) if r.run_id == id => {
                self.bad_runs.forget(&id.to_string());
                return Some(r);
            }
            Ok(r) => format!("its JSON names another run ({})", r.run_id),
            Err(e) => e,
        };
        if self
            .bad_runs
            .note(&id.to_string(), fingerprint(&text, version as u64))
        {
            // The job as the history names it, else as the record does, if it says.
            let job = job_id.map(str::to_string).unwrap_or_else(|| {
                serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("job_id")?.as_str().map(str::to_string))
                    .unwrap_or_default()
            });
            let message = format!(
                "run {id} of job '{job}' cannot be read ({why}); it is skipped and kept \
                 untouched: fix or delete the znode {}",
                self.run_path(id)
            );
            match self.state.ctx() {
                Some(ctx) => ctx.report_problem(&job, &message),
                None => tracing::warn!(job_id = %job, "{message}"),
            }
        }
        None
    }

    /// The current records of `ids` with their data versions: on a first attempt those this
    /// store wrote last from memory ([`Written`](super::runs::Written)), the others read
    /// in one multi-read; on later attempts all read.
    async fn current_runs(
        &self,
        c: &zk::Client,
        ids: &[RunId],
        first: bool,
        job_of: impl Fn(RunId) -> Option<String>,
    ) -> Result<Vec<(RunRecord, i32)>> {
        let (mut current, other) = if first {
            self.written.take(ids)
        } else {
            (Vec::new(), ids.to_vec())
        };
        for (id, data, version) in self.read_runs(c, &other).await? {
            if let Some(r) = self.parse_run(id, &data, version, job_of(id).as_deref()) {
                current.push((r, version));
            }
        }
        Ok(current)
    }

    /// [`JobStore::start_runs`](crate::store::JobStore::start_runs): one `multi` per batch
    /// for runs this store claimed (their records and versions are known), one read before
    /// it for others, and again for runs that changed in between.
    pub(super) async fn start_runs(&self, ids: &[RunId], now: DateTime<Utc>) -> Result<Vec<RunId>> {
        let me = self.state.owner();
        let c = self.session().await?;
        let mut todo: Vec<RunId> = ids.to_vec();
        todo.sort_unstable();
        todo.dedup();
        let mut started = Vec::new();
        for attempt in 0..ATTEMPTS {
            if todo.is_empty() {
                break;
            }
            let mut groups = Vec::new();
            let mut new = std::collections::HashMap::new();
            for (mut r, version) in self.current_runs(&c, &todo, attempt == 0, |_| None).await? {
                if r.state != RunState::Claimed || r.owner != me {
                    continue;
                }
                let id = r.run_id;
                let node = encode(&r.job_id);
                let was_queued = r.queued;
                r.state = RunState::Started;
                r.started_at = Some(now);
                r.queued = false;
                let mut ops = vec![Op::Set(
                    self.run_path(id),
                    r.to_json().into_bytes(),
                    Some(version),
                )];
                if was_queued {
                    // It takes an instance now: move its marker and take the job's lock
                    // (unconditionally: a claim that read the lock before is refused).
                    ops.push(Op::DeleteIfAny(self.marker_path(&node, id, true)));
                    ops.push(Op::Create(self.marker_path(&node, id, false), Vec::new()));
                    ops.push(Op::Set(self.active_path(&node), Vec::new(), None));
                }
                new.insert(id, (r, version + 1));
                groups.push((id, ops));
            }
            let before = started.len();
            todo = self
                .commit_groups(&c, groups, &mut started, "starting runs")
                .await?;
            for id in &started[before..] {
                if let Some((r, v)) = new.remove(id) {
                    self.written.put(r, v);
                }
            }
            self.written.forget(todo.iter().copied());
        }
        Ok(started)
    }

    /// Commits groups of ops in as few `multi`s as fit; the ids of the groups written go to
    /// `done`. A `multi` refused because one record changed is split: the groups before
    /// the refused one are committed again, the refused group's id is returned for the
    /// caller to read again, and the groups after it are tried in the next `multi`.
    pub(super) async fn commit_groups<T: Clone>(
        &self,
        c: &zk::Client,
        groups: Vec<(T, Vec<Op>)>,
        done: &mut Vec<T>,
        doing: &str,
    ) -> Result<Vec<T>> {
        let mut again = Vec::new();
        let mut pending: std::collections::VecDeque<Vec<(T, Vec<Op>)>> = batches(groups).into();
        while let Some(batch) = pending.pop_front() {
            let ops: Vec<Op> = batch.iter().flat_map(|(_, o)| o.iter().cloned()).collect();
            match self.commit_ops(c, ops, doing).await? {
                Ok(_) => done.extend(batch.iter().map(|(id, _)| id.clone())),
                Err(Refused::Changed(index)) => {
                    // Which group the refused op belongs to.
                    let mut at = 0;
                    let mut bad = batch.len();
                    for (i, (_, o)) in batch.iter().enumerate() {
                        if index < at + o.len() {
                            bad = i;
                            break;
                        }
                        at += o.len();
                    }
                    let mut batch = batch;
                    let rest = batch.split_off((bad + 1).min(batch.len()));
                    if let Some((id, _)) = batch.pop() {
                        again.push(id);
                    }
                    if !rest.is_empty() {
                        pending.push_front(rest);
                    }
                    if !batch.is_empty() {
                        pending.push_front(batch);
                    }
                }
            }
        }
        Ok(again)
    }

    /// [`JobStore::finish_runs`](crate::store::JobStore::finish_runs): as few `multi`s as
    /// fit (about 512 KB each), after one read of the runs this store did not write last
    /// (see [`start_runs`](Self::start_runs)).
    pub(super) async fn finish_runs(&self, outcomes: &[RunOutcome]) -> Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let c = self.session().await?;
        let by_id: std::collections::HashMap<RunId, &RunOutcome> =
            outcomes.iter().map(|o| (o.run_id, o)).collect();
        let mut todo: Vec<RunId> = by_id.keys().copied().collect();
        let mut done = Vec::new();
        for attempt in 0..ATTEMPTS {
            if todo.is_empty() {
                return Ok(());
            }
            let mut groups = Vec::new();
            let job_of = |id| by_id.get(&id).map(|o| o.job_id.to_string());
            for (mut r, version) in self.current_runs(&c, &todo, attempt == 0, job_of).await? {
                let id = r.run_id;
                let Some(o) = by_id.get(&id) else { continue };
                let queued = r.queued;
                if !r.apply(o) {
                    continue;
                }
                let node = encode(&r.job_id);
                groups.push((
                    id,
                    vec![
                        Op::Set(self.run_path(id), r.to_json().into_bytes(), Some(version)),
                        Op::DeleteIfAny(self.marker_path(&node, id, queued)),
                    ],
                ));
            }
            todo = self
                .commit_groups(&c, groups, &mut done, "writing run outcomes")
                .await?;
            self.written.forget(done.iter().chain(&todo).copied());
        }
        if todo.is_empty() {
            Ok(())
        } else {
            Err(self.state.msg(format!(
                "writing run outcomes: {} runs changed on every one of {ATTEMPTS} attempts; \
                 their outcomes were not written",
                todo.len()
            )))
        }
    }

    /// [`JobStore::add_manual_runs`](crate::store::JobStore::add_manual_runs): one
    /// multi-read (job and ledger state), one `multi` under the job's ledger lock.
    pub(super) async fn add_manual_runs(
        &self,
        job_id: &str,
        slots: &[DateTime<Utc>],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunRecord>> {
        let Some(ctx) = self.state.ctx() else {
            return Err(Error::store_not_started());
        };
        let c = self.session().await?;
        let node = encode(job_id);
        for _ in 0..ATTEMPTS {
            let Some((_, n, read)) = self
                .read_claimables(&c, std::slice::from_ref(&node))
                .await?
                .pop()
            else {
                return Err(Error::JobLookup(job_id.to_string()));
            };
            let Some(n) = n else {
                return Err(Error::JobLookup(job_id.to_string()));
            };
            let job = match self.decode(&n) {
                Ok((job, _)) => job,
                Err(u) => {
                    return Err(Error::CorruptJob {
                        id: job_id.to_string(),
                        reason: u.reason,
                    })
                }
            };
            let (runs, cancel) = plan_manual_runs(&job, slots, &ctx, now, &read.active());
            let (cancels, _) = self.cancel_ops(&c, &cancel).await?;
            let ops = self.record_ops(&node, &read, &runs, cancels);
            match self.commit_ops(&c, ops, "adding manual runs").await? {
                Ok(_) => {
                    self.written.forget(cancel);
                    for r in runs.iter().filter(|r| r.state.is_active()) {
                        self.written.put(r.clone(), 0);
                    }
                    return Ok(runs);
                }
                Err(Refused::Changed(_)) => continue,
            }
        }
        Err(self.state.msg(format!(
            "adding manual runs of job '{job_id}': its run ledger changed on every one of \
             {ATTEMPTS} attempts; try again"
        )))
    }

    /// [`JobStore::add_runs`](crate::store::JobStore::add_runs): per job, one multi-read
    /// (ledger state and history listing), one read of the records that may already be
    /// there, and one `multi` under the job's ledger lock creating the others (record,
    /// history entry, marker), as a manual run does: a claim that read the lock before is
    /// refused and counts the retries when it plans again.
    pub(super) async fn add_runs(&self, runs: &[RunRecord]) -> Result<()> {
        if self.state.ctx().is_none() {
            return Err(Error::store_not_started());
        }
        let c = self.session().await?;
        let mut by_job: std::collections::BTreeMap<&str, Vec<&RunRecord>> =
            std::collections::BTreeMap::new();
        for r in runs {
            by_job.entry(r.job_id.as_str()).or_default().push(r);
        }
        for (job_id, runs) in by_job {
            self.add_job_runs(&c, job_id, &runs).await?;
        }
        Ok(())
    }

    /// [`add_runs`](Self::add_runs) for the runs of one job.
    async fn add_job_runs(&self, c: &zk::Client, job_id: &str, runs: &[&RunRecord]) -> Result<()> {
        let node = encode(job_id);
        for _ in 0..ATTEMPTS {
            let mut reader = c.new_multi_reader();
            self.add_ledger_reads(&mut reader, &node)?;
            reader
                .add_get_children(&self.history_path(&node))
                .map_err(|e| self.state.err("reading the run ledger", e))?;
            let results = self.call("reading the run ledger", reader.commit()).await?;
            let mut it = results.into_iter();
            let read = Self::take_ledger_read(&mut it);
            let history = match it.next() {
                Some(zk::MultiReadResult::Children { children }) => children,
                _ => Vec::new(),
            };
            let new = self.unstored(c, runs, &history).await?;
            if new.is_empty() {
                return Ok(());
            }
            let ops = self.record_ops(&node, &read, &new, Vec::new());
            match self.commit_ops(c, ops, "recording retries").await? {
                Ok(_) => {
                    for r in new.into_iter().filter(|r| r.state.is_active()) {
                        self.written.put(r, 0);
                    }
                    return Ok(());
                }
                Err(Refused::Changed(_)) => continue,
            }
        }
        Err(self.state.msg(format!(
            "recording retries of job '{job_id}': its run ledger changed on every one of \
             {ATTEMPTS} attempts; try again"
        )))
    }

    /// The runs of `runs` (one job's) not stored yet: neither by run id nor, for scheduled
    /// runs, by scheduled time and attempt (the records of the job's `history` entries in
    /// the microsecond of a run's scheduled time are read to tell). A run whose slot comes
    /// twice in `runs` is kept once.
    async fn unstored(
        &self,
        c: &zk::Client,
        runs: &[&RunRecord],
        history: &[String],
    ) -> Result<Vec<RunRecord>> {
        let slots_us: std::collections::HashSet<i64> = runs
            .iter()
            .filter(|r| !r.manual)
            .map(|r| r.scheduled.timestamp_micros())
            .collect();
        let mut ids: Vec<RunId> = runs.iter().map(|r| r.run_id).collect();
        ids.extend(
            history
                .iter()
                .filter_map(|n| parse_history(n))
                .filter(|(us, _)| slots_us.contains(us))
                .map(|(_, id)| id),
        );
        ids.sort_unstable();
        ids.dedup();
        let job_id = runs.first().map(|r| r.job_id.as_str());
        let mut stored: std::collections::HashSet<RunId> = std::collections::HashSet::new();
        let mut slots: Vec<(DateTime<Utc>, u32)> = Vec::new();
        for (id, data, version) in self.read_runs(c, &ids).await? {
            stored.insert(id);
            if let Some(r) = self.parse_run(id, &data, version, job_id) {
                if !r.manual {
                    slots.push((r.scheduled, r.attempt));
                }
            }
        }
        let mut out: Vec<RunRecord> = Vec::new();
        for r in runs {
            let slot = (r.scheduled, r.attempt);
            if stored.insert(r.run_id) && (r.manual || !slots.contains(&slot)) {
                if !r.manual {
                    slots.push(slot);
                }
                out.push((*r).clone());
            }
        }
        Ok(out)
    }

    /// [`JobStore::get_run`](crate::store::JobStore::get_run).
    pub(super) async fn get_run(&self, id: RunId) -> Result<Option<RunRecord>> {
        let c = self.session().await?;
        let Some((id, data, version)) = self.read_runs(&c, &[id]).await?.pop() else {
            return Ok(None);
        };
        Ok(self.parse_run(id, &data, version, None))
    }

    /// [`JobStore::query_runs`](crate::store::JobStore::query_runs): lists the history
    /// entries (one job's, or every job's), keeps those whose names can match the job,
    /// time window and cursor, and reads records newest first until the page is full.
    pub(super) async fn query_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        if filter.limit == 0 {
            return Ok(Vec::new());
        }
        let c = self.session().await?;
        let jobs: Vec<String> = match &filter.job_id {
            Some(j) => vec![encode(j)],
            None => {
                self.call("listing runs", c.list_children(&self.history_root()))
                    .await?
            }
        };
        // (scheduled µs, run id, job node) of every entry that may match.
        let mut candidates: Vec<(i64, RunId, usize)> = Vec::new();
        for (start, chunk) in jobs.chunks(250).enumerate().map(|(i, c)| (i * 250, c)) {
            let mut r = c.new_multi_reader();
            for j in chunk {
                r.add_get_children(&self.history_path(j))
                    .map_err(|e| self.state.err("listing runs", e))?;
            }
            let results = self.call("listing runs", r.commit()).await?;
            for (i, res) in results.into_iter().enumerate() {
                let zk::MultiReadResult::Children { children } = res else {
                    continue;
                };
                for name in children {
                    let Some((us, id)) = parse_history(&name) else {
                        continue;
                    };
                    if may_match(filter, us, id) {
                        candidates.push((us, id, start + i));
                    }
                }
            }
        }
        candidates.sort_unstable_by_key(|c| std::cmp::Reverse((c.0, c.1)));
        let mut found: Vec<RunRecord> = Vec::new();
        let chunk = (filter.limit.saturating_mul(2)).clamp(32, 500);
        let mut at = 0;
        while at < candidates.len() {
            let end = (at + chunk).min(candidates.len());
            let ids: Vec<RunId> = candidates[at..end].iter().map(|(_, id, _)| *id).collect();
            let jobs_of: std::collections::HashMap<RunId, usize> = candidates[at..end]
                .iter()
                .map(|(_, id, j)| (*id, *j))
                .collect();
            for (id, data, version) in self.read_runs(&c, &ids).await? {
                let job = jobs_of.get(&id).and_then(|j| decode_name(&jobs[*j]));
                if let Some(r) = self.parse_run(id, &data, version, job.as_deref()) {
                    if filter.matches(&r) {
                        found.push(r);
                    }
                }
            }
            at = end;
            if found.len() >= filter.limit {
                // Names hold the scheduled time floored to µs: entries in the µs of the
                // page's last run may still sort before it.
                found = filter.page(found);
                let last_us = found
                    .last()
                    .map_or(i64::MIN, |r| r.scheduled.timestamp_micros());
                if candidates.get(at).is_none_or(|(us, _, _)| *us < last_us) {
                    break;
                }
            }
        }
        Ok(filter.page(found))
    }
}

/// Whether a history entry named (`us`, `id`) may hold a run passing `filter`'s time window
/// and cursor (the name's time is the run's floored to the microsecond).
fn may_match(filter: &RunFilter, us: i64, id: RunId) -> bool {
    let floor = |t: DateTime<Utc>| t.timestamp_micros();
    filter.from.is_none_or(|t| us >= floor(t))
        && filter.to.is_none_or(|t| us <= floor(t))
        && filter.before.is_none_or(|(t, cursor)| {
            let sub_micro = t.timestamp_subsec_nanos() % 1000 != 0;
            us < floor(t) || (us == floor(t) && (id < cursor || sub_micro))
        })
}
