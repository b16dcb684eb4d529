//! Claiming: the earliest claimable time, and claiming one due job by compare-and-swap.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use zookeeper_client as zk;

use super::client::Client;
use super::envelope::{document_next, Envelope};
use super::names::{decode_name, encode, entries_of, index_name};
use super::nodes::{JobOp, Node};
use super::watch::Plan;
use crate::error::Result;
use crate::job::Lease;
use crate::store::common::{
    claimable_at, from_micros_saturating, held_by_other, lease_until, micros_ceil,
};
use crate::store::DueJob;

/// How many claims are in flight at once.
const CONCURRENCY: usize = 32;

impl Client {
    /// The earliest time this scheduler could claim a job (see [`JobStore::next_run_time`]).
    pub(super) async fn earliest_claimable(&self) -> Result<Option<DateTime<Utc>>> {
        let me = self.state.owner();
        let now = self.state.now();
        let c = self.session().await?;
        let entries = self.index(&c).await?;
        let mut best: Option<DateTime<Utc>> = None;
        for chunk in entries.chunks(64) {
            let first = from_micros_saturating(chunk[0].0);
            if best.is_some_and(|b| b <= first) {
                break;
            }
            let names: Vec<String> = chunk
                .iter()
                .filter(|(_, n)| !self.state.is_corrupt(&decode_name(n).unwrap_or_default()))
                .map(|(_, n)| n.clone())
                .collect();
            for node in self.read_nodes(&c, &names).await? {
                let Ok(env) = serde_json::from_slice::<Envelope>(&node.data) else {
                    continue;
                };
                // The document's time, not the entry's or the envelope's copy: a copy that
                // says due while the document does not would be reported forever.
                let Some(next) = document_next(&env) else {
                    continue;
                };
                let at = claimable_at(next, env.lease().as_ref(), &me, now);
                best = Some(best.map_or(at, |b| b.min(at)));
            }
        }
        Ok(best)
    }

    /// Writes one claim back by compare-and-swap on the node read: the claimed job, or
    /// `None` if another writer got there first.
    pub(super) async fn claim_one(
        &self,
        c: &zk::Client,
        node: &Node,
        mut due: DueJob,
        lease: &Lease,
    ) -> Result<Option<DueJob>> {
        due.job.lease = Some(lease.clone());
        let data;
        let (op, entry) = if due.removed {
            (JobOp::Delete, None)
        } else {
            data = Self::envelope(&due.job)?;
            (
                JobOp::Set(&data[..]),
                due.job
                    .next_run_time
                    .map(|t| index_name(micros_ceil(t), &node.name)),
            )
        };
        let stale = entries_of(&node.name, &node.data);
        let written = self
            .write_job(
                c,
                &node.name,
                node.version,
                op,
                stale,
                entry,
                "claiming a due job",
            )
            .await?;
        Ok(written.map(|w| {
            due.job.version = w.zxid.max(0) as u64;
            due
        }))
    }

    /// [`JobStore::next_run_time`](crate::store::JobStore::next_run_time); a failure resets
    /// the wake-up plan (every new entry wakes the loop until the next report).
    pub(super) async fn next_run_time(&self) -> Result<Option<DateTime<Utc>>> {
        let next = match self.earliest_claimable().await {
            Ok(next) => next,
            Err(e) => {
                // The loop retries after a backoff; until then every new entry wakes it.
                *self.watch.plan() = Plan::new();
                return Err(e);
            }
        };
        if self.watch.reported(next.map(micros_ceil)) {
            // An entry appeared meanwhile that may be missing from this listing.
            if let Some(ctx) = self.state.ctx() {
                ctx.wake_scheduler();
            }
        }
        Ok(next)
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
        let lease = Lease {
            owner: me.clone(),
            until: lease_until(now, self.state.lease()),
        };
        let now_us = now.timestamp_micros();
        let c = self.session().await?;
        let entries = self.index(&c).await?;
        let mut claims: Vec<(Node, DueJob)> = Vec::new();
        // Index entries that disagree with their job: (entry, due at, the job's node if any).
        let mut repairs: Vec<(String, i64, Option<Node>)> = Vec::new();
        for chunk in entries
            .iter()
            .take_while(|(t, _)| *t <= now_us)
            .collect::<Vec<_>>()
            .chunks(limit.clamp(16, 500))
        {
            if claims.len() >= limit {
                break;
            }
            let names: Vec<String> = chunk.iter().map(|(_, n)| n.clone()).collect();
            let mut nodes: std::collections::HashMap<String, Node> = self
                .read_nodes(&c, &names)
                .await?
                .into_iter()
                .map(|n| (n.name.clone(), n))
                .collect();
            for (t, name) in chunk {
                if claims.len() >= limit {
                    break;
                }
                let Some(node) = nodes.remove(name) else {
                    repairs.push((index_name(*t, name), *t, None));
                    continue;
                };
                let id = decode_name(&node.name).unwrap_or_default();
                if self.state.is_known_corrupt(
                    &id,
                    &String::from_utf8_lossy(&node.data),
                    node.zxid.max(0) as u64,
                ) {
                    continue;
                }
                let Ok((job, _)) = self.decode(&node) else {
                    continue;
                };
                if held_by_other(job.lease.as_ref(), &me, now) {
                    continue;
                }
                let due = DueJob::claim(job, now);
                if due.run_times.is_empty() {
                    // The entry says due, the document says paused or later: the document
                    // is the truth; left alone, the entry would be retried on every pass.
                    repairs.push((index_name(*t, name), *t, Some(node)));
                    continue;
                }
                claims.push((node, due));
            }
        }
        let results: Vec<(String, Result<Option<DueJob>>)> = futures::stream::iter(
            claims
                .iter()
                .map(|(node, due)| async {
                    let id = due.job.id.clone();
                    (id, self.claim_one(&c, node, due.clone(), &lease).await)
                })
                .collect::<Vec<_>>(),
        )
        .buffered(CONCURRENCY)
        .collect()
        .await;
        // Each claim is its own transaction (see `StoreState::settle_claims`).
        let won = self.state.settle_claims(results)?;
        for (entry, t, node) in repairs {
            self.repair(&c, &entry, t, node.as_ref()).await;
        }
        Ok(won)
    }

    /// [`JobStore::release_jobs`](crate::store::JobStore::release_jobs).
    pub(super) async fn release_jobs(&self, jobs: &[DueJob]) -> Result<()> {
        let me = self.state.owner();
        let mine: Vec<&DueJob> = jobs
            .iter()
            .filter(|d| !d.removed && d.job.lease.as_ref().is_some_and(|l| l.owner == me))
            .collect();
        if mine.is_empty() {
            return Ok(());
        }
        let c = self.session().await?;
        let names: Vec<String> = mine.iter().map(|d| encode(&d.job.id)).collect();
        let nodes: std::collections::HashMap<String, Node> = self
            .read_nodes(&c, &names)
            .await?
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        for (d, name) in mine.into_iter().zip(names) {
            // Released only if nothing was written since the claim (its zxid is the job's
            // version), and then with the data version read: a newer write wins.
            let Some(node) = nodes
                .get(&name)
                .filter(|n| n.zxid.max(0) as u64 == d.job.version)
            else {
                continue;
            };
            let mut job = d.job.clone();
            job.lease = None;
            let data = Self::envelope(&job)?;
            match tokio::time::timeout(
                self.session_timeout,
                c.set_data(&self.job_path(&name), &data, Some(node.version)),
            )
            .await
            {
                Ok(Ok(_)) | Ok(Err(zk::Error::BadVersion | zk::Error::NoNode)) => {}
                Ok(Err(e)) => return Err(self.state.err("releasing jobs", e)),
                Err(_) => return Err(self.state.msg("releasing jobs: timed out")),
            }
        }
        Ok(())
    }
}
