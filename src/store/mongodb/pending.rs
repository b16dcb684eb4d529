//! Ledger writes that must be atomic with a job's claim, without multi-document
//! transactions (a standalone MongoDB has none).
//!
//! Every write that changes how many runs of a job are active (a claim, manual runs, a
//! retry, a promotion out of the queue) is one conditional update of the job document
//! (filtered on `ledger_seq`, and on `version` for all but retries, which do not depend on
//! the job's settings) that also pushes an *op* onto the document's `pending` array: the
//! run records to create, the runs to flag `cancel_requested`, the queued runs to promote. The writer then applies the op to `<collection>_runs` (inserting records with
//! `_id` = run id, so a repeat changes nothing) and pulls it. A crash in between leaves the
//! op in the job document, and whoever finds it (the ledger pass, a query, a removal of the
//! job) applies it first: a claimed slot always gets its record.
//!
//! A claim that removes its job (an exhausted trigger) cannot leave the op in a deleted
//! document, so it turns the document into a *tombstone* (`removed: true`, no next run
//! time) holding the op, and deletes it once the op is applied. Readers treat a tombstone
//! as no job.
//!
//! Readers of active runs (the overlap rule) read the job document first, then the runs
//! collection, and add the runs of the document's pending ops: an op is either still in
//! the document or already applied, so no active run is missed.

use std::collections::HashMap;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};

use super::client::Client;
use super::document::int;
use super::runs::{id_bson, run_doc};
use crate::error::Result;
use crate::job::RunId;
use crate::ledger::{ActiveRuns, RunRecord, RunState};

/// The filter on `ledger_seq` matching a document read with sequence `s` (0 = the field
/// is missing, as in documents written before the ledger).
pub(super) fn seq_is(s: i64) -> Bson {
    if s == 0 {
        doc! { "$in": [0_i64, Bson::Null] }.into()
    } else {
        Bson::Int64(s)
    }
}

/// The `ledger_seq` of a job document.
pub(super) fn seq_of(d: &Document) -> i64 {
    int(d, "ledger_seq").unwrap_or(0)
}

/// Whether a job document is a tombstone (its job is removed; its op not yet applied).
pub(super) fn is_tombstone(d: &Document) -> bool {
    d.get_bool("removed").unwrap_or(false)
}

/// The filter part excluding tombstones.
pub(super) fn not_tombstone() -> Document {
    doc! { "removed": { "$ne": true } }
}

/// One write's ledger work, as pushed onto the job document's `pending` array.
pub(super) struct Op {
    /// A fresh random id (pulled by it once applied).
    pub(super) id: i64,
    pub(super) runs: Vec<RunRecord>,
    pub(super) cancel: Vec<RunId>,
    pub(super) promote: Vec<RunId>,
    /// Who promoted (the new owner of promoted runs).
    pub(super) owner: String,
}

impl Op {
    /// An op creating `runs` and flagging `cancel`.
    pub(super) fn new(runs: Vec<RunRecord>, cancel: Vec<RunId>, owner: &str) -> Self {
        Op {
            id: id_bson(RunId::next()),
            runs,
            cancel,
            promote: Vec::new(),
            owner: owner.to_string(),
        }
    }

    /// The runs of this op the writer starts itself (claimed, not queued).
    pub(super) fn to_start(&self) -> Vec<i64> {
        self.runs
            .iter()
            .filter(|r| r.state == RunState::Claimed && !r.queued)
            .map(|r| id_bson(r.run_id))
            .collect()
    }

    /// Whether there is anything to write.
    pub(super) fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.cancel.is_empty() && self.promote.is_empty()
    }

    /// The op as stored in the job document.
    pub(super) fn to_doc(&self) -> Document {
        doc! {
            "_id": self.id,
            "runs": self.runs.iter().map(run_doc).collect::<Vec<_>>(),
            "cancel": self.cancel.iter().map(|id| id_bson(*id)).collect::<Vec<_>>(),
            "promote": self.promote.iter().map(|id| id_bson(*id)).collect::<Vec<_>>(),
            "owner": &self.owner,
        }
    }
}

/// The ops stored in a job document, as documents.
pub(super) fn ops_of(d: &Document) -> Vec<&Document> {
    d.get_array("pending")
        .map(|a| a.iter().filter_map(Bson::as_document).collect())
        .unwrap_or_default()
}

fn ids_of(op: &Document, key: &str) -> Vec<i64> {
    op.get_array(key)
        .map(|a| {
            a.iter()
                .filter_map(|b| match b {
                    Bson::Int64(v) => Some(*v),
                    Bson::Int32(v) => Some(i64::from(*v)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The job's active runs: those in the runs collection (`stored`, read after `job_doc`)
/// with the ones of the document's pending ops.
pub(super) fn overlay(stored: &[(i64, RunState, bool)], job_doc: &Document) -> ActiveRuns {
    let mut runs: Vec<(i64, RunState, bool)> = stored.to_vec();
    let ops = ops_of(job_doc);
    for op in &ops {
        for r in op.get_array("runs").into_iter().flatten() {
            let Some(r) = r.as_document() else { continue };
            let (Some(id), Some(state)) = (
                int(r, "_id"),
                r.get_str("state").ok().and_then(|s| s.parse().ok()),
            ) else {
                continue;
            };
            if !runs.iter().any(|(i, _, _)| *i == id) {
                runs.push((id, state, r.get_bool("queued").unwrap_or(false)));
            }
        }
    }
    for op in &ops {
        for id in ids_of(op, "promote") {
            for r in runs.iter_mut().filter(|r| r.0 == id) {
                r.2 = false;
            }
        }
    }
    let mut active = ActiveRuns::new();
    for (id, state, queued) in runs {
        active.push(RunId::from_raw(id as u64), state, queued);
    }
    active
}

impl Client {
    /// Applies the pending ops of `docs` (job documents as read) to the runs collection,
    /// then pulls them from their documents and deletes the tombstones among them. Every
    /// step is idempotent: a live writer applying its own op at the same time is harmless.
    pub(super) async fn apply_pending(&self, docs: &[Document]) -> Result<()> {
        let mut records = Vec::new();
        let mut cancel = Vec::new();
        let mut promote: HashMap<String, Vec<i64>> = HashMap::new();
        let mut op_ids = Vec::new();
        let mut live = Vec::new();
        let mut tombstones = Vec::new();
        for d in docs {
            let ops = ops_of(d);
            if ops.is_empty() && !is_tombstone(d) {
                continue;
            }
            let Some(id) = d.get("_id").cloned() else {
                continue;
            };
            for op in ops {
                records.extend(
                    op.get_array("runs")
                        .into_iter()
                        .flatten()
                        .filter_map(Bson::as_document)
                        .cloned(),
                );
                cancel.extend(ids_of(op, "cancel"));
                let owner = op.get_str("owner").unwrap_or("").to_string();
                promote
                    .entry(owner)
                    .or_default()
                    .extend(ids_of(op, "promote"));
                if let Some(op_id) = op.get("_id") {
                    op_ids.push(op_id.clone());
                }
            }
            if is_tombstone(d) {
                tombstones.push(id);
            } else {
                live.push(id);
            }
        }
        for r in &records {
            if let (Ok(job), Ok(state)) = (r.get_str("job_id"), r.get_str("state")) {
                if state.parse().is_ok_and(RunState::is_terminal) {
                    self.ledger.touched(job);
                }
            }
        }
        // Records first: a promotion or a cancel flag may be about one of them.
        self.insert_runs(records).await?;
        self.flag_cancel(&cancel).await?;
        for (owner, ids) in &promote {
            self.promote(ids, owner).await?;
        }
        let jobs = &self.colls().await?.jobs;
        if !live.is_empty() && !op_ids.is_empty() {
            jobs.update_many(
                doc! { "_id": { "$in": live } },
                doc! { "$pull": { "pending": { "_id": { "$in": &op_ids } } } },
            )
            .await
            .map_err(|e| self.state.err("clearing applied run records", e))?;
        }
        if !tombstones.is_empty() {
            jobs.delete_many(doc! { "_id": { "$in": tombstones }, "removed": true })
                .await
                .map_err(|e| self.state.err("removing a finished job", e))?;
        }
        Ok(())
    }

    /// Applies the ops left in the job documents matching `filter` (by a crash between a
    /// write and its copy, or in flight now). Uses the sparse index on `pending._id`.
    pub(super) async fn settle_pending(&self, mut filter: Document) -> Result<()> {
        filter.insert("pending._id", doc! { "$exists": true });
        let docs: Vec<Document> = self
            .colls()
            .await?
            .jobs
            .find(filter)
            .await
            .map_err(|e| self.state.err("reading pending run records", e))?
            .try_collect()
            .await
            .map_err(|e| self.state.err("reading pending run records", e))?;
        if docs.is_empty() {
            return Ok(());
        }
        self.apply_pending(&docs).await
    }

    /// Applies what a tombstone of job `id` holds and deletes it, if there is one: what a
    /// writer finding a tombstone where it wants a job does before going on.
    pub(super) async fn settle_tombstone(&self, id: &str) -> Result<bool> {
        let found = self
            .colls()
            .await?
            .jobs
            .find_one(doc! { "_id": id, "removed": true })
            .await
            .map_err(|e| self.state.err("reading a removed job", e))?;
        match found {
            Some(d) => {
                self.apply_pending(std::slice::from_ref(&d)).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Applies writers' ops right after their conditional updates won (`(job id,
    /// tombstone, op)` each): a failure is reported, not returned (the ops stay in the job
    /// documents and the next ledger pass, query or start applies them).
    pub(super) async fn apply_own(&self, written: &[(String, bool, Document)]) {
        if written.is_empty() {
            return;
        }
        let docs: Vec<Document> = written
            .iter()
            .map(|(id, tombstone, op)| {
                let mut d = doc! { "_id": id, "pending": [op.clone()] };
                if *tombstone {
                    d.insert("removed", true);
                }
                d
            })
            .collect();
        if let (Err(e), Some((first_job, _, _))) =
            (self.apply_pending(&docs).await, written.first())
        {
            self.state.report(
                first_job,
                format!("{e}; the records stay in the job documents and the next ledger pass writes them"),
            );
        }
    }
}
