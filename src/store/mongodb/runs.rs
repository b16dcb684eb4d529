//! The run ledger's records: one document per run in `<collection>_runs`, keyed by the run
//! id, with every field native (times as µs since the epoch in Int64, like the jobs'
//! `next_run_time`) so that operators can query them; and the operations on that
//! collection alone (writing records idempotently, starting, finishing, reading, pruning).
//!
//! Everything that must be atomic with a job's claim goes through the job document first
//! (`pending.rs`); this module never decides what to write, it only writes it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;

use super::client::Client;
use super::document::int;
use crate::error::Result;
use crate::job::RunId;
use crate::ledger::{RunFilter, RunOutcome, RunRecord, RunRetention, RunState};
use crate::store::common::{fingerprint, from_micros, Reported};
use crate::sync::MutexExt;

/// The most documents one statement of the ledger's periodic pass deletes (pruning is
/// bounded work per call).
const PRUNE_BUDGET: usize = 1000;
/// How many jobs a pass looks at for the per-job limit beyond the ones this process
/// recorded outcomes for (a slow sweep over every job, so runs finished by other processes
/// are pruned too).
const SWEEP_JOBS: i64 = 64;
/// How many jobs this process recorded outcomes for are checked per pass.
const DIRTY_JOBS: usize = 256;
/// The most bytes of statements sent in one `update` command (the server's limit on a
/// command is 16 MiB; a finished run may carry a 16 KiB output).
const COMMAND_BYTES: usize = 8 << 20;

/// The states that count as active (claimed or started).
pub(super) fn active_states() -> Bson {
    Bson::Array(vec!["claimed".into(), "started".into()])
}

/// The run ledger's in-process state of one store.
#[derive(Debug, Default)]
pub(crate) struct LedgerState {
    /// Runs already reported as unreadable (by run id, with a fingerprint of the document).
    bad_runs: Reported,
    /// Jobs this process wrote terminal runs of since the last prune.
    dirty: Mutex<HashSet<String>>,
    /// The last job id the pruning sweep looked at ("" = start over).
    sweep_after: Mutex<String>,
    /// This scheduler's claimed runs that it has (or is about to have) in hand: the claims,
    /// manual runs and dispatches it returned, until they are started or finished. A
    /// claimed, unqueued run of this scheduler missing here is one whose claim won on the
    /// server while the reply was lost (a network error after the write): the next pass
    /// dispatches it instead of leaving it claimed forever.
    handed: Mutex<HashSet<i64>>,
}

impl LedgerState {
    /// Notes runs as in this scheduler's hands.
    pub(super) fn hand(&self, ids: impl IntoIterator<Item = i64>) {
        self.handed.lock_unpoisoned().extend(ids);
    }

    /// Forgets runs (started, finished, or never won).
    pub(super) fn unhand(&self, ids: impl IntoIterator<Item = i64>) {
        let mut handed = self.handed.lock_unpoisoned();
        if !handed.is_empty() {
            for id in ids {
                handed.remove(&id);
            }
        }
    }

    /// Whether run `id` is in this scheduler's hands.
    pub(super) fn is_handed(&self, id: i64) -> bool {
        self.handed.lock_unpoisoned().contains(&id)
    }

    /// Remembers that `job_id` has new terminal runs (the next pass prunes it).
    pub(super) fn touched(&self, job_id: &str) {
        let mut dirty = self.dirty.lock_unpoisoned();
        if !dirty.contains(job_id) {
            dirty.insert(job_id.to_string());
        }
    }
}

/// Microseconds since the epoch (sub-microsecond parts are dropped: the ledger keeps µs).
pub(super) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn opt_micros(t: Option<DateTime<Utc>>) -> Bson {
    t.map_or(Bson::Null, |t| Bson::Int64(micros(t)))
}

fn opt_str(s: Option<&str>) -> Bson {
    s.map_or(Bson::Null, |s| Bson::String(s.to_string()))
}

/// A run id as stored (`_id`, Int64: run ids are below 2^63).
pub(super) fn id_bson(id: RunId) -> i64 {
    id.get() as i64
}

/// The document of one run.
pub(super) fn run_doc(r: &RunRecord) -> Document {
    doc! {
        "_id": id_bson(r.run_id),
        "job_id": r.job_id.as_str(),
        "scheduled": micros(r.scheduled),
        "owner": r.owner.as_str(),
        "manual": r.manual,
        "attempt": i64::from(r.attempt),
        "state": r.state.as_str(),
        "queued": r.queued,
        "cancel_requested": r.cancel_requested,
        "submitted_at": micros(r.submitted_at),
        "retry_at": opt_micros(r.retry_at),
        "started_at": opt_micros(r.started_at),
        "finished_at": opt_micros(r.finished_at),
        "error": opt_str(r.error.as_deref()),
        "output": opt_str(r.output.as_deref()),
    }
}

fn time(d: &Document, key: &str) -> std::result::Result<DateTime<Utc>, String> {
    let us = int(d, key).ok_or_else(|| format!("'{key}' is not a time in µs (Int64)"))?;
    from_micros(us).ok_or_else(|| format!("'{key}' ({us} µs) is out of range"))
}

fn opt_time(d: &Document, key: &str) -> std::result::Result<Option<DateTime<Utc>>, String> {
    match d.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(_) => time(d, key).map(Some),
    }
}

fn opt_string(d: &Document, key: &str) -> std::result::Result<Option<String>, String> {
    match d.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("'{key}' is not a string")),
    }
}

fn flag(d: &Document, key: &str) -> std::result::Result<bool, String> {
    match d.get(key) {
        None | Some(Bson::Null) => Ok(false),
        Some(Bson::Boolean(b)) => Ok(*b),
        Some(_) => Err(format!("'{key}' is not a boolean")),
    }
}

/// The run id of a run document, if it has a readable one.
pub(super) fn doc_run_id(d: &Document) -> Option<RunId> {
    int(d, "_id")
        .filter(|v| *v > 0)
        .map(|v| RunId::from_raw(v as u64))
}

/// Parses a run document, or says what is wrong with it.
pub(super) fn parse_run(d: &Document) -> std::result::Result<RunRecord, String> {
    let run_id = doc_run_id(d).ok_or("'_id' is not a positive run id (Int64)")?;
    let text = |key: &str| {
        d.get_str(key)
            .map(str::to_string)
            .map_err(|_| format!("'{key}' is not a string"))
    };
    let state: RunState = text("state")?.parse()?;
    let attempt = int(d, "attempt")
        .and_then(|a| u32::try_from(a).ok())
        .ok_or("'attempt' is not a number")?;
    let mut r = RunRecord::claimed(
        text("job_id")?,
        time(d, "scheduled")?,
        text("owner")?,
        time(d, "submitted_at")?,
    );
    r.run_id = run_id;
    r.manual = flag(d, "manual")?;
    r.attempt = attempt;
    r.state = state;
    r.queued = flag(d, "queued")?;
    r.cancel_requested = flag(d, "cancel_requested")?;
    r.retry_at = opt_time(d, "retry_at")?;
    r.started_at = opt_time(d, "started_at")?;
    r.finished_at = opt_time(d, "finished_at")?;
    r.error = opt_string(d, "error")?;
    r.output = opt_string(d, "output")?;
    Ok(r)
}

/// Whether a write error is a duplicate key (the record is already there).
fn only_duplicates(e: &mongodb::error::Error) -> bool {
    match &*e.kind {
        ErrorKind::InsertMany(m) => {
            m.write_concern_error.is_none()
                && m.write_errors
                    .as_ref()
                    .is_some_and(|w| w.iter().all(|w| w.code == 11000))
        }
        _ => super::document::is_duplicate_key(e),
    }
}

impl Client {
    /// Parses `d`, or reports it (once per content) and returns `None`: an unreadable run
    /// is skipped and kept, never deleted.
    pub(super) fn read_run(&self, d: &Document) -> Option<RunRecord> {
        match parse_run(d) {
            Ok(r) => Some(r),
            Err(reason) => {
                let id = d.get("_id").map_or_else(String::new, ToString::to_string);
                let job = d.get_str("job_id").unwrap_or("");
                if self
                    .ledger
                    .bad_runs
                    .note(&id, fingerprint(&d.to_string(), 0))
                {
                    self.state.report(
                        job,
                        format!(
                            "the run document {id} in {}_runs cannot be read ({reason}); it is skipped and kept: fix or delete it",
                            self.collection
                        ),
                    );
                }
                None
            }
        }
    }

    /// Writes run documents, each only if its id is not there yet: copying records from a
    /// job document is idempotent, and never overwrites a record that moved on.
    pub(super) async fn insert_runs(&self, docs: Vec<Document>) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        let runs = &self.colls().await?.runs;
        match runs.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            Err(e) if only_duplicates(&e) => Ok(()),
            Err(e) => Err(self.state.err("writing run records", e)),
        }
    }

    /// Sets `cancel_requested` on runs (their owners cancel them on their next pass).
    pub(super) async fn flag_cancel(&self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.colls()
            .await?
            .runs
            .update_many(
                doc! { "_id": { "$in": ids } },
                doc! { "$set": { "cancel_requested": true } },
            )
            .await
            .map_err(|e| self.state.err("asking runs to stop", e))?;
        Ok(())
    }

    /// Marks runs promoted out of the queue: no longer queued, owned by `owner`. Only runs
    /// still claimed and queued change, so applying it twice changes nothing.
    pub(super) async fn promote(&self, ids: &[i64], owner: &str) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.colls()
            .await?
            .runs
            .update_many(
                doc! { "_id": { "$in": ids }, "state": "claimed", "queued": true },
                doc! { "$set": { "queued": false, "owner": owner } },
            )
            .await
            .map_err(|e| self.state.err("promoting queued runs", e))?;
        Ok(())
    }

    /// The active runs of `job_ids` as `(job id, run id, state, queued)`, for the overlap
    /// rule.
    pub(super) async fn active_runs(
        &self,
        job_ids: &[&str],
    ) -> Result<HashMap<String, Vec<(i64, RunState, bool)>>> {
        let mut out: HashMap<String, Vec<(i64, RunState, bool)>> = HashMap::new();
        if job_ids.is_empty() {
            return Ok(out);
        }
        let mut cursor = self
            .colls()
            .await?
            .runs
            .find(doc! { "job_id": { "$in": job_ids }, "state": { "$in": active_states() } })
            .projection(doc! { "job_id": 1, "state": 1, "queued": 1 })
            .await
            .map_err(|e| self.state.err("reading active runs", e))?;
        while let Some(d) = cursor
            .try_next()
            .await
            .map_err(|e| self.state.err("reading active runs", e))?
        {
            let (Some(id), Ok(job), Some(state)) = (
                int(&d, "_id"),
                d.get_str("job_id"),
                d.get_str("state").ok().and_then(|s| s.parse().ok()),
            ) else {
                continue;
            };
            out.entry(job.to_string()).or_default().push((
                id,
                state,
                d.get_bool("queued").unwrap_or(false),
            ));
        }
        Ok(out)
    }

    /// The readable runs matching `filter`, in stored order.
    pub(super) async fn find_runs(&self, filter: Document) -> Result<Vec<RunRecord>> {
        let docs: Vec<Document> = self
            .colls()
            .await?
            .runs
            .find(filter)
            .await
            .map_err(|e| self.state.err("reading runs", e))?
            .try_collect()
            .await
            .map_err(|e| self.state.err("reading runs", e))?;
        Ok(docs.iter().filter_map(|d| self.read_run(d)).collect())
    }

    /// [`JobStore::start_runs`](crate::store::JobStore::start_runs): one `updateMany`; when
    /// not every run changed, the records of claims not yet copied from their job
    /// documents are copied and the rest tried again, then the changed ones read back.
    pub(super) async fn start_runs(&self, ids: &[RunId], now: DateTime<Utc>) -> Result<Vec<RunId>> {
        let mut ids: Vec<i64> = ids.iter().map(|id| id_bson(*id)).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.ledger.unhand(ids.iter().copied());
        let me = self.state.owner();
        let now_us = micros(now);
        let runs = &self.colls().await?.runs;
        let update = || async {
            runs.update_many(
                doc! { "_id": { "$in": &ids }, "state": "claimed", "owner": &me },
                doc! { "$set": { "state": "started", "started_at": now_us, "queued": false } },
            )
            .await
            .map_err(|e| self.state.err("starting runs", e))
        };
        if update().await?.modified_count == ids.len() as u64 {
            return Ok(ids.iter().map(|id| RunId::from_raw(*id as u64)).collect());
        }
        // A record may still be in its job document (its copy failed, or another writer's
        // copy is in flight): copy what is pending and try once more.
        self.settle_pending(doc! {}).await?;
        update().await?;
        let started: Vec<Document> = runs
            .find(doc! { "_id": { "$in": &ids }, "state": "started", "owner": &me, "started_at": now_us })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(|e| self.state.err("starting runs", e))?
            .try_collect()
            .await
            .map_err(|e| self.state.err("starting runs", e))?;
        Ok(started.iter().filter_map(doc_run_id).collect())
    }

    /// [`JobStore::finish_runs`](crate::store::JobStore::finish_runs): one multi-statement
    /// `update` command (split only when the outputs are very large), each statement
    /// conditional on the run still being active, as [`RunRecord::apply`] is.
    pub(super) async fn finish_runs(&self, outcomes: &[RunOutcome]) -> Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let colls = self.colls().await?;
        let name = colls.runs.name().to_string();
        let mut batches: Vec<Vec<Document>> = vec![Vec::new()];
        let mut bytes = 0;
        self.ledger
            .unhand(outcomes.iter().map(|o| id_bson(o.run_id)));
        for o in outcomes {
            self.ledger.touched(&o.job_id);
            let mut set = doc! {
                "state": o.state.as_str(),
                "finished_at": micros(o.finished_at),
                "error": opt_str(o.error.as_deref()),
                "output": opt_str(o.output.as_deref()),
                "queued": false,
            };
            if let Some(t) = o.started_at {
                set.insert("started_at", micros(t));
            }
            let size = 256
                + o.error.as_ref().map_or(0, String::len)
                + o.output.as_ref().map_or(0, String::len);
            if bytes + size > COMMAND_BYTES && !batches.last().is_some_and(Vec::is_empty) {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            if let Some(b) = batches.last_mut() {
                b.push(doc! {
                    "q": { "_id": id_bson(o.run_id), "state": { "$in": active_states() } },
                    "u": { "$set": set },
                });
            }
        }
        for updates in batches {
            let reply = colls
                .db
                .run_command(doc! { "update": &name, "updates": updates, "ordered": false })
                .await
                .map_err(|e| self.state.err("writing run outcomes", e))?;
            if let Ok(errors) = reply.get_array("writeErrors") {
                if let Some(first) = errors.first() {
                    return Err(self.state.msg(format!(
                        "writing run outcomes: {} of them failed, the first with {first}",
                        errors.len()
                    )));
                }
            }
        }
        Ok(())
    }

    /// [`JobStore::query_runs`](crate::store::JobStore::query_runs): filtered and sorted by
    /// the server (indexes on `(job_id, scheduled, _id)` and `(state, scheduled)`); reads
    /// until `limit` readable runs, so that a skipped unreadable one does not shorten the
    /// page.
    pub(super) async fn query_runs(&self, f: &RunFilter) -> Result<Vec<RunRecord>> {
        if f.limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = Document::new();
        if let Some(job) = &f.job_id {
            filter.insert("job_id", job);
        }
        if !f.states.is_empty() {
            let states: Vec<&str> = f.states.iter().map(|s| s.as_str()).collect();
            filter.insert("state", doc! { "$in": states });
        }
        if let Some(m) = f.manual {
            filter.insert("manual", m);
        }
        let mut scheduled = Document::new();
        if let Some(t) = f.from {
            scheduled.insert("$gte", micros(t));
        }
        if let Some(t) = f.to {
            scheduled.insert("$lt", micros(t));
        }
        if !scheduled.is_empty() {
            filter.insert("scheduled", scheduled);
        }
        if let Some((t, id)) = f.before {
            filter.insert(
                "$or",
                vec![
                    doc! { "scheduled": { "$lt": micros(t) } },
                    doc! { "scheduled": micros(t), "_id": { "$lt": id_bson(id) } },
                ],
            );
        }
        let mut cursor = self
            .colls()
            .await?
            .runs
            .find(filter)
            .sort(doc! { "scheduled": -1, "_id": -1 })
            .batch_size(f.limit.clamp(1, 1000) as u32 + 1)
            .await
            .map_err(|e| self.state.err("reading runs", e))?;
        let mut out = Vec::with_capacity(f.limit.min(1000));
        while out.len() < f.limit {
            let Some(d) = cursor
                .try_next()
                .await
                .map_err(|e| self.state.err("reading runs", e))?
            else {
                break;
            };
            if let Some(r) = self.read_run(&d) {
                // The server filtered; `matches` also holds what it cannot express exactly
                // (sub-microsecond bounds).
                if f.matches(&r) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// [`JobStore::get_run`](crate::store::JobStore::get_run).
    pub(super) async fn get_run(&self, id: RunId) -> Result<Option<RunRecord>> {
        let Some(d) = self
            .colls()
            .await?
            .runs
            .find_one(doc! { "_id": id_bson(id) })
            .await
            .map_err(|e| self.state.err("reading a run", e))?
        else {
            return Ok(None);
        };
        match parse_run(&d) {
            Ok(r) => Ok(Some(r)),
            Err(reason) => Err(self.state.msg(format!(
                "the run document {id} in {}_runs cannot be read ({reason}): fix or delete it",
                self.collection
            ))),
        }
    }

    /// Deletes terminal runs beyond `retention`, at most [`PRUNE_BUDGET`] per call: first
    /// the per-job limit (for the jobs this process wrote outcomes of, and a sweep of a few
    /// more), then the age limit.
    pub(super) async fn prune(&self, now: DateTime<Utc>, retention: RunRetention) -> Result<()> {
        let runs = &self.colls().await?.runs;
        let mut budget = PRUNE_BUDGET;
        let terminal: Vec<&str> = RunState::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        if retention.per_job < i32::MAX as usize {
            let mut jobs: Vec<String> = {
                let mut dirty = self.ledger.dirty.lock_unpoisoned();
                let take: Vec<String> = dirty.iter().take(DIRTY_JOBS).cloned().collect();
                for j in &take {
                    dirty.remove(j);
                }
                take
            };
            let after = self.ledger.sweep_after.lock_unpoisoned().clone();
            // The sweep walks the jobs collection's `_id` index (cheap whatever the number
            // of runs); runs of removed jobs are pruned by age, or when an outcome of theirs
            // is written here.
            let swept: Vec<Document> = self
                .colls()
                .await?
                .jobs
                .find(doc! { "_id": { "$gt": &after } })
                .sort(doc! { "_id": 1 })
                .projection(doc! { "_id": 1 })
                .limit(SWEEP_JOBS)
                .await
                .map_err(|e| self.state.err("pruning runs", e))?
                .try_collect()
                .await
                .map_err(|e| self.state.err("pruning runs", e))?;
            let swept: Vec<String> = swept
                .iter()
                .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
                .collect();
            *self.ledger.sweep_after.lock_unpoisoned() = if (swept.len() as i64) < SWEEP_JOBS {
                String::new()
            } else {
                swept.last().cloned().unwrap_or_default()
            };
            jobs.extend(swept);
            jobs.sort_unstable();
            jobs.dedup();
            if !jobs.is_empty() {
                let doomed: Vec<Document> = runs
                    .aggregate(vec![
                        doc! { "$match": { "job_id": { "$in": &jobs }, "state": { "$in": &terminal } } },
                        doc! { "$sort": { "job_id": 1, "scheduled": -1, "_id": -1 } },
                        doc! { "$group": { "_id": "$job_id", "ids": { "$push": "$_id" } } },
                        doc! { "$project": { "doomed": { "$slice": ["$ids", retention.per_job as i64, PRUNE_BUDGET as i64] } } },
                    ])
                    .await
                    .map_err(|e| self.state.err("pruning runs", e))?
                    .try_collect()
                    .await
                    .map_err(|e| self.state.err("pruning runs", e))?;
                let ids: Vec<Bson> = doomed
                    .iter()
                    .filter_map(|d| d.get_array("doomed").ok())
                    .flatten()
                    .take(budget)
                    .cloned()
                    .collect();
                if !ids.is_empty() {
                    let n = runs
                        .delete_many(doc! { "_id": { "$in": ids }, "state": { "$in": &terminal } })
                        .await
                        .map_err(|e| self.state.err("pruning runs", e))?
                        .deleted_count;
                    budget = budget.saturating_sub(n as usize);
                }
            }
        }
        if let (Some(cutoff), true) = (retention.cutoff(now), budget > 0) {
            let old: Vec<Document> = runs
                .find(doc! { "finished_at": { "$lt": micros(cutoff) }, "state": { "$in": &terminal } })
                .projection(doc! { "_id": 1 })
                .limit(budget as i64)
                .await
                .map_err(|e| self.state.err("pruning runs", e))?
                .try_collect()
                .await
                .map_err(|e| self.state.err("pruning runs", e))?;
            let ids: Vec<&Bson> = old.iter().filter_map(|d| d.get("_id")).collect();
            if !ids.is_empty() {
                runs.delete_many(doc! { "_id": { "$in": ids }, "state": { "$in": &terminal } })
                    .await
                    .map_err(|e| self.state.err("pruning runs", e))?;
            }
        }
        Ok(())
    }
}
