//! Claiming due jobs (one `find_one_and_update` per job, many in flight), and repairing
//! index fields that disagree with their document.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document};
use mongodb::Collection;

use super::client::Client;
use super::document::{fields, next_bson, version_is};
use super::pending::{overlay, seq_is, seq_of, Op};
use crate::error::Result;
use crate::job::Lease;
use crate::store::common::{claimable_at, from_micros_saturating, lease_until, micros_ceil};
use crate::store::{DueJob, StoreContext};

type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// How many claims are in flight at once.
const CONCURRENCY: usize = 16;

impl Client {
    /// The ids of the jobs known to be corrupt, for `$nin` (they are neither claimed nor
    /// counted as due).
    pub(super) fn corrupt_filter(&self) -> Bson {
        Bson::Array(
            self.state
                .corrupt_ids()
                .into_iter()
                .map(Bson::String)
                .collect(),
        )
    }

    /// `{ $or: [lease free, expired, or own] }` at `now_us`.
    pub(super) fn lease_free(me: &str, now_us: i64) -> Document {
        doc! { "$or": [
            { "lease_until": Bson::Null },
            { "lease_until": { "$lte": now_us } },
            { "lease_owner": me },
        ] }
    }

    /// Sets the top-level `next_run_time` of the document `d` to `next`, what its job
    /// document says (if nobody wrote it since it was read), and reports the repair. A
    /// failure is reported, not returned: the claims of the pass stand, the next pass retries.
    pub(super) async fn repair_index(
        &self,
        coll: &Collection<Document>,
        d: &Document,
        next: Option<DateTime<Utc>>,
    ) {
        let f = fields(d);
        let r = coll
            .update_one(
                doc! { "_id": &f.id, "version": version_is(f.version) },
                doc! { "$set": { "next_run_time": next_bson(next) } },
            )
            .await;
        let was = f.next.map(from_micros_saturating);
        match r {
            Ok(r) if r.modified_count == 1 => self.state.report(
                &f.id,
                format!(
                    "next_run_time said due {}, the job's document says {}: repaired",
                    was.map_or_else(|| "never".to_string(), |t| t.to_rfc3339()),
                    next.map_or_else(|| "paused".to_string(), |t| t.to_rfc3339())
                ),
            ),
            // Written meanwhile by another writer, which set both copies.
            Ok(_) => {}
            Err(e) => self
                .state
                .report(&f.id, format!("repairing next_run_time: {e}")),
        }
    }

    /// Writes one claim back if the document is still at `version`: the claimed job, or
    /// `None` if another writer got there first.
    ///
    /// With the ledger, the claim's run records go into the same update as an op on the
    /// job document (`pending.rs`); a claim removing its job then leaves a tombstone
    /// holding them instead of deleting the document.
    pub(super) async fn claim_one(
        &self,
        coll: &Collection<Document>,
        mut due: DueJob,
        (version, seq): (u64, i64),
        op: Option<Document>,
        me: &str,
        lease: &Lease,
    ) -> Result<Option<DueJob>> {
        // The version fences the write: every claim and every other write bumps it, and
        // the candidate was read with a free lease, so an unchanged version means the lease
        // is still free too. `ledger_seq` fences it against manual runs and promotions
        // written since the job's active runs were read.
        let filter = doc! {
            "_id": &due.job.id,
            "version": version_is(version),
            "ledger_seq": seq_is(seq),
        };
        let won = if due.removed && op.is_none() {
            coll.delete_one(filter)
                .await
                .map_err(|e| self.state.err("claiming a due job", e))?
                .deleted_count
                == 1
        } else {
            let mut set = doc! {
                "job": due.job.to_json()?,
                "next_run_time": next_bson(due.job.next_run_time),
                "version": (version + 1) as i64,
                "lease_owner": me,
                "lease_until": micros_ceil(lease.until),
            };
            if due.removed {
                set.insert("next_run_time", Bson::Null);
                set.insert("removed", true);
            }
            let mut update = doc! { "$set": set };
            if let Some(op) = op {
                update.insert("$push", doc! { "pending": op });
            }
            coll.update_one(filter, update)
                .await
                .map_err(|e| self.state.err("claiming a due job", e))?
                .modified_count
                == 1
        };
        Ok(won.then(|| {
            due.job_mut().version = version + 1;
            due.job_mut().lease = Some(lease.clone());
            due
        }))
    }

    /// [`JobStore::next_run_time`](crate::store::JobStore::next_run_time).
    pub(super) async fn next_run_time(&self) -> Result<Option<DateTime<Utc>>> {
        let me = self.state.owner();
        let now = self.state.now();
        let mut cursor = self
            .coll()
            .await?
            .find(doc! {
                "next_run_time": { "$ne": Bson::Null },
                "_id": { "$nin": self.corrupt_filter() },
            })
            .sort(doc! { "next_run_time": 1, "_id": 1 })
            .projection(doc! { "next_run_time": 1, "lease_owner": 1, "lease_until": 1 })
            .batch_size(256)
            .await
            .map_err(|e| self.state.err("reading next run times", e))?;
        let mut best: Option<DateTime<Utc>> = None;
        while let Some(d) = cursor
            .try_next()
            .await
            .map_err(|e| self.state.err("reading next run times", e))?
        {
            let f = fields(&d);
            let Some(next) = f.next.map(from_micros_saturating) else {
                continue;
            };
            if best.is_some_and(|b| b <= next) {
                break;
            }
            let at = claimable_at(next, f.lease.as_ref(), &me, now);
            best = Some(best.map_or(at, |b| b.min(at)));
        }
        Ok(best)
    }

    /// [`JobStore::acquire_due_jobs`](crate::store::JobStore::acquire_due_jobs).
    pub(super) async fn acquire_due_jobs(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DueJob>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let me = self.state.owner();
        let now_us = now.timestamp_micros();
        let lease = Lease {
            owner: me.clone(),
            until: lease_until(now, self.state.lease()),
        };
        let coll = self.coll().await?;
        let mut filter = doc! {
            "next_run_time": { "$lte": now_us },
            "_id": { "$nin": self.corrupt_filter() },
        };
        filter.extend(Self::lease_free(&me, now_us));
        let docs: Vec<Document> = coll
            .find(filter)
            .sort(doc! { "next_run_time": 1, "_id": 1 })
            .limit(limit as i64)
            .await
            .map_err(|e| self.state.err("reading due jobs", e))?
            .try_collect()
            .await
            .map_err(|e| self.state.err("reading due jobs", e))?;
        let mut claims = Vec::new();
        for d in &docs {
            let Ok(job) = self.decode(d) else { continue };
            let version = job.version;
            let due = DueJob::claim(job, now);
            if due.run_times.is_empty() {
                // The top-level `next_run_time` says due, the document says paused or later.
                // The document is the truth; left alone, every pass would retry the job.
                self.repair_index(coll, d, due.job.next_run_time).await;
            } else {
                claims.push((due, (version, seq_of(d)), d));
            }
        }
        let mut ops: HashMap<String, Document> = HashMap::new();
        let mut planned: HashMap<String, Vec<i64>> = HashMap::new();
        if let Some(ctx) = self.state.ctx().filter(StoreContext::keeps_runs) {
            // The active runs are read after the job documents (one query for the batch):
            // with the documents' pending ops, that is every active run as of the version
            // each claim is conditional on.
            let ids: Vec<&str> = claims
                .iter()
                .map(|(due, _, _)| due.job.id.as_str())
                .collect();
            let active = self.active_runs(&ids).await?;
            for (due, _, d) in &mut claims {
                let stored = active.get(&due.job.id).map_or(&[][..], Vec::as_slice);
                due.plan_runs(&ctx, now, &overlay(stored, d));
                let op = Op::new(due.runs.clone(), due.cancel.clone(), &me);
                if !op.is_empty() {
                    // In hand before the write, so that a concurrent pass does not take
                    // them for lost claims.
                    let ids = op.to_start();
                    self.ledger.hand(ids.iter().copied());
                    planned.insert(due.job.id.clone(), ids);
                    ops.insert(due.job.id.clone(), op.to_doc());
                }
            }
        }
        let mut futs: Vec<BoxFut<'_, (String, Result<Option<DueJob>>)>> = Vec::new();
        let (me, lease) = (&me, &lease);
        for (due, versions, _) in claims {
            let op = ops.get(&due.job.id).cloned();
            futs.push(Box::pin(async move {
                let id = due.job.id.clone();
                (id, self.claim_one(coll, due, versions, op, me, lease).await)
            }));
        }
        let results: Vec<(String, Result<Option<DueJob>>)> = futures::stream::iter(futs)
            .buffered(CONCURRENCY)
            .collect()
            .await;
        for (id, r) in &results {
            if !matches!(r, Ok(Some(_))) {
                // Lost, or unknown (an error): if it won after all, the ledger pass finds
                // its runs and dispatches them.
                self.ledger.unhand(planned.remove(id).into_iter().flatten());
            }
        }
        let won = self.state.settle_claims(results)?;
        // Copy the won claims' records to the runs collection (one insert for the batch),
        // then clear them from the job documents.
        let written: Vec<(String, bool, Document)> = won
            .iter()
            .filter_map(|d| {
                let op = ops.remove(&d.job.id)?;
                Some((d.job.id.clone(), d.removed, op))
            })
            .collect();
        self.apply_own(&written).await;
        Ok(won)
    }

    pub(super) async fn release_jobs(&self, jobs: &[DueJob]) -> Result<()> {
        // A claim is released only if the job is still at the version the claim wrote and
        // leased by this scheduler: any later write (a management update, another claim, a
        // removal and re-add: versions never repeat) leaves it alone. One round trip.
        let me = self.state.owner();
        let claims: Vec<Document> = jobs
            .iter()
            .filter(|d| !d.removed && d.job.lease.as_ref().is_some_and(|l| l.owner == me))
            .map(|d| doc! { "_id": &d.job.id, "version": d.job.version as i64 })
            .collect();
        if claims.is_empty() {
            return Ok(());
        }
        self.coll()
            .await?
            .update_many(
                doc! { "$or": claims, "lease_owner": &me },
                doc! { "$set": { "lease_owner": Bson::Null, "lease_until": Bson::Null } },
            )
            .await
            .map_err(|e| self.state.err("releasing jobs", e))?;
        Ok(())
    }
}
