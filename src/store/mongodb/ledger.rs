//! The run ledger's operations that span documents: manual runs and retries (serialised
//! with claims through the job document) and the periodic pass (heartbeat, takeover of dead
//! schedulers' runs, promotion of queued runs, cancellations, pruning).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Document};
use mongodb::options::ReturnDocument;

use super::client::Client;
use super::document::{int, version_is};
use super::pending::{is_tombstone, ops_of, overlay, seq_is, seq_of, Op};
use super::runs::{active_states, doc_run_id, id_bson, micros, run_doc};
use crate::error::{Error, Result};
use crate::job::RunId;
use crate::ledger::{plan_manual_runs, RunRecord, RunState, RunTick};
use crate::store::common::{from_micros_saturating, lease_until};
use crate::store::StoreContext;

/// How many times a write conditional on a job document is retried when other writers
/// keep changing the document.
const ROUNDS: usize = 16;
/// How many takeovers are in flight at once.
const CONCURRENCY: usize = 16;

impl Client {
    fn ledger_ctx(&self) -> Result<StoreContext> {
        self.state.ctx().ok_or(Error::store_not_started())
    }

    /// [`JobStore::add_manual_runs`](crate::store::JobStore::add_manual_runs): the records
    /// and cancel flags go into one conditional update of the job document (as a claim's
    /// do), then into the runs collection.
    pub(super) async fn add_manual_runs(
        &self,
        job_id: &str,
        slots: &[DateTime<Utc>],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunRecord>> {
        let ctx = self.ledger_ctx()?;
        let jobs = &self.colls().await?.jobs;
        for _ in 0..ROUNDS {
            let found = jobs
                .find_one(doc! { "_id": job_id })
                .await
                .map_err(|e| self.state.err("reading a job for a manual run", e))?;
            let Some(d) = found.filter(|d| !is_tombstone(d)) else {
                return Err(Error::JobLookup(job_id.to_string()));
            };
            let job = self.decode(&d).map_err(|u| Error::CorruptJob {
                id: job_id.to_string(),
                reason: u.reason,
            })?;
            let active = self.active_runs(&[job_id]).await?;
            let active = overlay(active.get(job_id).map_or(&[][..], Vec::as_slice), &d);
            let (runs, cancel) = plan_manual_runs(&job, slots, &ctx, now, &active);
            if runs.is_empty() && cancel.is_empty() {
                return Ok(runs);
            }
            let op = Op::new(runs.clone(), cancel, ctx.scheduler_id());
            let to_start = op.to_start();
            self.ledger.hand(to_start.iter().copied());
            let op = op.to_doc();
            let won = jobs
                .update_one(
                    doc! {
                        "_id": job_id,
                        "version": version_is(job.version),
                        "ledger_seq": seq_is(seq_of(&d)),
                        "removed": { "$ne": true },
                    },
                    doc! { "$inc": { "ledger_seq": 1_i64 }, "$push": { "pending": &op } },
                )
                .await
                .map_err(|e| self.state.err("recording manual runs", e))?
                .modified_count
                == 1;
            if won {
                self.apply_own(&[(job_id.to_string(), false, op)]).await;
                return Ok(runs);
            }
            self.ledger.unhand(to_start);
        }
        Err(self.state.msg(format!(
            "recording manual runs of job '{job_id}': other writers kept changing the job; try again"
        )))
    }

    /// [`JobStore::add_runs`](crate::store::JobStore::add_runs): per job, the records not
    /// stored yet go into one conditional update of the job document (an op, as a claim's
    /// records do) that bumps `ledger_seq`, then into the runs collection. A claim reads
    /// the job's active runs after its document and writes conditional on the `ledger_seq`
    /// it read, so it either sees a retry or fails and reads again: it cannot miss one.
    pub(super) async fn add_runs(&self, runs: &[RunRecord]) -> Result<()> {
        let ctx = self.ledger_ctx()?;
        let me = ctx.scheduler_id();
        // In hand before the write, and kept whatever its outcome: the scheduler waits for
        // these itself (it writes them until the write succeeds), so the ledger pass must
        // not take them for claims whose reply was lost.
        self.ledger.hand(
            runs.iter()
                .filter(|r| r.state == RunState::Claimed && !r.queued && r.owner == me)
                .map(|r| id_bson(r.run_id)),
        );
        let mut by_job: BTreeMap<&str, Vec<&RunRecord>> = BTreeMap::new();
        for r in runs {
            by_job.entry(r.job_id.as_str()).or_default().push(r);
        }
        for (job_id, runs) in by_job {
            self.add_job_runs(job_id, &runs, me).await?;
        }
        Ok(())
    }

    /// [`add_runs`](Self::add_runs) for the runs of one job.
    async fn add_job_runs(&self, job_id: &str, runs: &[&RunRecord], me: &str) -> Result<()> {
        let jobs = &self.colls().await?.jobs;
        for _ in 0..ROUNDS {
            let found = jobs
                .find_one(doc! { "_id": job_id })
                .await
                .map_err(|e| self.state.err("reading a job for its retries", e))?;
            if let Some(d) = found.as_ref().filter(|d| is_tombstone(d)) {
                // Its job is removed: write what the tombstone holds (which deletes it),
                // then look again.
                self.apply_pending(std::slice::from_ref(d)).await?;
                continue;
            }
            // Read after the job document, as the claim reads active runs.
            let new = self.unstored(runs, found.as_ref()).await?;
            if new.is_empty() {
                return Ok(());
            }
            let Some(d) = found else {
                // The job is gone: no claim counts its instances any more, so the records
                // go straight into the runs collection (idempotent by `_id`).
                return self.insert_runs(new.iter().map(run_doc).collect()).await;
            };
            let op = Op::new(new, Vec::new(), me).to_doc();
            let won = jobs
                .update_one(
                    doc! {
                        "_id": job_id,
                        "ledger_seq": seq_is(seq_of(&d)),
                        "removed": { "$ne": true },
                    },
                    doc! { "$inc": { "ledger_seq": 1_i64 }, "$push": { "pending": &op } },
                )
                .await
                .map_err(|e| self.state.err("recording retries", e))?
                .modified_count
                == 1;
            if won {
                self.apply_own(&[(job_id.to_string(), false, op)]).await;
                return Ok(());
            }
        }
        Err(self.state.msg(format!(
            "recording retries of job '{job_id}': other writers kept changing the job; try again"
        )))
    }

    /// The runs of `runs` (one job's) not stored yet, neither by run id nor, for scheduled
    /// runs, by scheduled time (µs, as stored) and attempt: looked up in the ops of the job
    /// document `job_doc` and, read after it, in the runs collection. A run whose slot
    /// comes twice in `runs` is kept once.
    async fn unstored(
        &self,
        runs: &[&RunRecord],
        job_doc: Option<&Document>,
    ) -> Result<Vec<RunRecord>> {
        let Some(job_id) = runs.first().map(|r| r.job_id.as_str()) else {
            return Ok(Vec::new());
        };
        let mut ids: HashSet<i64> = HashSet::new();
        let mut slots: HashSet<(i64, i64)> = HashSet::new();
        let mut note = |d: &Document| {
            if let Some(id) = int(d, "_id") {
                ids.insert(id);
            }
            if !d.get_bool("manual").unwrap_or(false) {
                if let (Some(t), Some(a)) = (int(d, "scheduled"), int(d, "attempt")) {
                    slots.insert((t, a));
                }
            }
        };
        for op in job_doc.map(ops_of).unwrap_or_default() {
            for r in op.get_array("runs").into_iter().flatten() {
                if let Some(r) = r.as_document() {
                    note(r);
                }
            }
        }
        let mut or: Vec<Document> = vec![
            doc! { "_id": { "$in": runs.iter().map(|r| id_bson(r.run_id)).collect::<Vec<_>>() } },
        ];
        or.extend(runs.iter().filter(|r| !r.manual).map(|r| {
            doc! {
                "job_id": job_id,
                "scheduled": micros(r.scheduled),
                "attempt": i64::from(r.attempt),
                "manual": false,
            }
        }));
        let stored: Vec<Document> = self
            .colls()
            .await?
            .runs
            .find(doc! { "$or": or })
            .projection(doc! { "_id": 1, "scheduled": 1, "attempt": 1, "manual": 1 })
            .await
            .map_err(|e| self.state.err("reading runs before recording retries", e))?
            .try_collect()
            .await
            .map_err(|e| self.state.err("reading runs before recording retries", e))?;
        stored.iter().for_each(&mut note);
        let mut out = Vec::new();
        for r in runs {
            let slot = (micros(r.scheduled), i64::from(r.attempt));
            if ids.insert(id_bson(r.run_id)) && (r.manual || slots.insert(slot)) {
                out.push((*r).clone());
            }
        }
        Ok(out)
    }

    /// [`JobStore::heartbeat`](crate::store::JobStore::heartbeat): this scheduler is alive
    /// until `now + lease` (its document in `<collection>_owners`).
    pub(super) async fn heartbeat(&self, now: DateTime<Utc>) -> Result<()> {
        let ctx = self.ledger_ctx()?;
        self.colls()
            .await?
            .owners
            .update_one(
                doc! { "_id": ctx.scheduler_id() },
                doc! { "$set": { "alive_until": micros(lease_until(now, ctx.lease())) } },
            )
            .upsert(true)
            .await
            .map_err(|e| self.state.err("recording this scheduler's heartbeat", e))?;
        Ok(())
    }

    /// [`JobStore::tick_runs`](crate::store::JobStore::tick_runs).
    pub(super) async fn tick_runs(&self, now: DateTime<Utc>) -> Result<RunTick> {
        self.heartbeat(now).await?;
        let ctx = self.ledger_ctx()?;
        let me = ctx.scheduler_id();
        let colls = self.colls().await?;
        // Records a crash left in job documents first, so that takeover sees them.
        self.settle_pending(doc! {}).await?;
        let mut tick = RunTick::default();
        self.take_over(&ctx, now, &mut tick).await?;
        self.promote_queued(&ctx, &mut tick).await?;
        self.ledger.hand(
            tick.dispatch
                .iter()
                .chain(&tick.promoted)
                .map(|r| id_bson(r.run_id)),
        );
        self.lost_replies(me, &mut tick).await?;
        let flagged: Vec<Document> = colls
            .runs
            .find(doc! { "owner": me, "state": "started", "cancel_requested": true })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(|e| self.state.err("reading runs asked to stop", e))?
            .try_collect()
            .await
            .map_err(|e| self.state.err("reading runs asked to stop", e))?;
        tick.cancel = flagged.iter().filter_map(doc_run_id).collect();
        self.prune(now, ctx.run_retention()).await?;
        Ok(tick)
    }

    /// Dispatches this scheduler's claimed runs that it does not have in hand: claims and
    /// manual runs that won on the server although their reply was lost.
    async fn lost_replies(&self, me: &str, tick: &mut RunTick) -> Result<()> {
        let mine = self
            .find_runs(doc! { "owner": me, "state": "claimed", "queued": false })
            .await?;
        let lost: Vec<RunRecord> = mine
            .into_iter()
            .filter(|r| !self.ledger.is_handed(id_bson(r.run_id)))
            .collect();
        self.ledger.hand(lost.iter().map(|r| id_bson(r.run_id)));
        tick.dispatch.extend(lost);
        Ok(())
    }

    /// Takes over the active runs of schedulers without a live heartbeat: claimed ones
    /// become this scheduler's, started ones `abandoned`. Each run is one conditional
    /// update on its owner and state, so two takers never both take it.
    async fn take_over(
        &self,
        ctx: &StoreContext,
        now: DateTime<Utc>,
        tick: &mut RunTick,
    ) -> Result<()> {
        let me = ctx.scheduler_id();
        let now_us = micros(now);
        let colls = self.colls().await?;
        let owners: Vec<Document> = colls
            .owners
            .find(doc! {})
            .await
            .map_err(|e| self.state.err("reading heartbeats", e))?
            .try_collect()
            .await
            .map_err(|e| self.state.err("reading heartbeats", e))?;
        let alive_until: HashMap<String, i64> = owners
            .iter()
            .filter_map(|d| Some((d.get_str("_id").ok()?.to_string(), int(d, "alive_until")?)))
            .collect();
        let mut live: Vec<&str> = alive_until
            .iter()
            .filter(|(_, until)| **until >= now_us)
            .map(|(o, _)| o.as_str())
            .collect();
        live.push(me);
        let orphans: Vec<Document> = colls
            .runs
            .find(doc! { "state": { "$in": active_states() }, "owner": { "$nin": &live } })
            .projection(doc! { "_id": 1, "owner": 1, "state": 1 })
            .await
            .map_err(|e| self.state.err("reading runs of stopped schedulers", e))?
            .try_collect()
            .await
            .map_err(|e| self.state.err("reading runs of stopped schedulers", e))?;
        let take = |d: Document| {
            let alive_until = &alive_until;
            async move {
                let (Some(id), Ok(owner), Ok(state)) =
                    (int(&d, "_id"), d.get_str("owner"), d.get_str("state"))
                else {
                    return Ok(None);
                };
                let update = if state == "claimed" {
                    doc! { "$set": { "owner": me } }
                } else {
                    let error = crate::ledger::abandoned_error(
                        owner,
                        alive_until.get(owner).map(|t| from_micros_saturating(*t)),
                    );
                    doc! { "$set": {
                        "state": "abandoned",
                        "finished_at": now_us,
                        "queued": false,
                        "error": error,
                    } }
                };
                colls
                    .runs
                    .find_one_and_update(doc! { "_id": id, "state": state, "owner": owner }, update)
                    .return_document(ReturnDocument::After)
                    .await
                    .map_err(|e| {
                        self.state
                            .err("taking over a run of a stopped scheduler", e)
                    })
            }
        };
        let taken: Vec<Result<Option<Document>>> = futures::stream::iter(orphans)
            .map(take)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for d in taken {
            let Some(r) = d?.and_then(|d| self.read_run(&d)) else {
                continue;
            };
            match r.state {
                RunState::Claimed if !r.queued => tick.dispatch.push(r),
                RunState::Abandoned => {
                    self.ledger.touched(&r.job_id);
                    tick.abandoned.push(r);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Promotes the oldest queued runs of jobs with a free instance to this scheduler,
    /// serialised with the claims of each job through its document (`ledger_seq`).
    async fn promote_queued(&self, ctx: &StoreContext, tick: &mut RunTick) -> Result<()> {
        let colls = self.colls().await?;
        let queued: Vec<Document> = colls
            .runs
            .find(doc! { "state": "claimed", "queued": true })
            .projection(doc! { "job_id": 1 })
            .await
            .map_err(|e| self.state.err("reading queued runs", e))?
            .try_collect()
            .await
            .map_err(|e| self.state.err("reading queued runs", e))?;
        let mut job_ids: Vec<&str> = queued
            .iter()
            .filter_map(|d| d.get_str("job_id").ok())
            .collect();
        job_ids.sort_unstable();
        job_ids.dedup();
        for job_id in job_ids {
            self.promote_job(ctx, job_id, tick).await?;
        }
        Ok(())
    }

    async fn promote_job(
        &self,
        ctx: &StoreContext,
        job_id: &str,
        tick: &mut RunTick,
    ) -> Result<()> {
        let me = ctx.scheduler_id();
        let jobs = &self.colls().await?.jobs;
        for _ in 0..ROUNDS {
            let found = jobs
                .find_one(doc! { "_id": job_id })
                .await
                .map_err(|e| self.state.err("reading a job with queued runs", e))?;
            if let Some(d) = &found {
                if d.get_array("pending").is_ok_and(|p| !p.is_empty()) || is_tombstone(d) {
                    // Apply what is in flight first, so that the runs collection alone is
                    // the job's runs as of the document read next.
                    self.apply_pending(std::slice::from_ref(d)).await?;
                    continue;
                }
            }
            // A removed job's queued runs still run, one at a time.
            let (max, fence) = match &found {
                Some(d) => match self.decode(d) {
                    Ok(job) => (job.max_instances as usize, Some((job.version, seq_of(d)))),
                    // Reported by the decode; its runs wait until the job is fixed.
                    Err(_) => return Ok(()),
                },
                None => (1, None),
            };
            let active = self
                .find_runs(doc! { "job_id": job_id, "state": { "$in": active_states() } })
                .await?;
            let running = active
                .iter()
                .filter(|r| !r.queued && !ctx.is_finishing(r.run_id))
                .count();
            let mut queued: Vec<&RunRecord> = active
                .iter()
                .filter(|r| r.queued && r.state == RunState::Claimed)
                .collect();
            queued.sort_by_key(|r| (r.scheduled, r.submitted_at, r.run_id));
            let picks: Vec<RunId> = queued
                .iter()
                .take(max.saturating_sub(running))
                .map(|r| r.run_id)
                .collect();
            if picks.is_empty() {
                return Ok(());
            }
            let ids: Vec<i64> = picks.iter().map(|id| id_bson(*id)).collect();
            match fence {
                Some((version, seq)) => {
                    let mut op = Op::new(Vec::new(), Vec::new(), me);
                    op.promote = picks;
                    let op = op.to_doc();
                    let won = jobs
                        .update_one(
                            doc! {
                                "_id": job_id,
                                "version": version_is(version),
                                "ledger_seq": seq_is(seq),
                                "removed": { "$ne": true },
                            },
                            doc! { "$inc": { "ledger_seq": 1_i64 }, "$push": { "pending": &op } },
                        )
                        .await
                        .map_err(|e| self.state.err("promoting queued runs", e))?
                        .modified_count
                        == 1;
                    if !won {
                        continue;
                    }
                    self.apply_own(&[(job_id.to_string(), false, op)]).await;
                }
                None => self.promote(&ids, me).await?,
            }
            tick.promoted.extend(
                self.find_runs(doc! {
                    "_id": { "$in": ids },
                    "state": "claimed",
                    "queued": false,
                    "owner": me,
                })
                .await?,
            );
            return Ok(());
        }
        // Other writers kept changing the job: its queued runs wait for the next pass.
        Ok(())
    }
}
