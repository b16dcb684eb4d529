//! Claiming: the earliest claimable time, and claiming one due job by compare-and-swap.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use zookeeper_client as zk;

use super::client::Client;
use super::envelope::{document_next, Envelope};
use super::names::{decode_name, encode, entries_of, index_name};
use super::nodes::{JobOp, Node, Outcome};
use super::runs::{LedgerRead, Op};
use super::watch::Plan;
use crate::error::Result;
use crate::job::Lease;
use crate::store::common::{
    claimable_at, from_micros_saturating, held_by_other, lease_until, micros_ceil,
};
use crate::store::DueJob;

/// How many claims are in flight at once.
const CONCURRENCY: usize = 32;

/// How many times a claim is planned again when the job's run ledger changed under it.
const LEDGER_ATTEMPTS: usize = 8;

/// What writing one claim came to.
enum Claimed {
    Won(Box<DueJob>),
    /// Another writer changed the job first.
    Lost,
    /// The job's run ledger changed since it was read.
    Retry,
}

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
    /// `None` if another writer got there first. With a run ledger (`ledger`: the job's
    /// ledger state read with the node), the claim's records are planned from its active
    /// runs and written in the same `multi`; if the ledger changed meanwhile (a manual run,
    /// a promotion), the job and its ledger are read again and the claim planned again.
    pub(super) async fn claim_one(
        &self,
        c: &zk::Client,
        node: &Node,
        mut due: DueJob,
        lease: &Lease,
        ledger: Option<LedgerRead>,
        now: DateTime<Utc>,
    ) -> Result<Option<DueJob>> {
        let Some(mut read) = ledger else {
            return self
                .write_claim(c, node, due, lease, Vec::new())
                .await
                .map(|o| match o {
                    Claimed::Won(d) => Some(*d),
                    Claimed::Lost | Claimed::Retry => None,
                });
        };
        let Some(ctx) = self.state.ctx() else {
            return Ok(None);
        };
        let me = ctx.scheduler_id().to_string();
        let mut node = node.clone();
        for _ in 0..LEDGER_ATTEMPTS {
            due.plan_runs(&ctx, now, &read.active());
            let (cancels, flagged) = self.cancel_ops(c, &due.cancel).await?;
            due.cancel = flagged;
            let extra = self.record_ops(&node.name, &read, &due.runs, cancels);
            match self.write_claim(c, &node, due, lease, extra).await? {
                Claimed::Won(d) => return Ok(Some(*d)),
                Claimed::Lost => return Ok(None),
                Claimed::Retry => {}
            }
            let Some((Some(n), r)) = self
                .read_claimables(c, std::slice::from_ref(&node.name))
                .await?
                .pop()
                .map(|(_, n, r)| (n, r))
            else {
                return Ok(None);
            };
            let Ok((job, _)) = self.decode(&n) else {
                return Ok(None);
            };
            if held_by_other(job.lease.as_ref(), &me, now) {
                return Ok(None);
            }
            due = DueJob::claim(job, now);
            if due.run_times.is_empty() && due.skipped_from.is_none() {
                return Ok(None);
            }
            node = n;
            read = r;
        }
        Err(self.state.msg(format!(
            "claiming job '{}': its run ledger changed on every one of {LEDGER_ATTEMPTS} attempts \
             (many manual runs at once?); it stays due and is claimed on a later pass",
            decode_name(&node.name).unwrap_or_default()
        )))
    }

    /// Writes `due` (with `extra` ledger ops) by compare-and-swap on `node`.
    async fn write_claim(
        &self,
        c: &zk::Client,
        node: &Node,
        mut due: DueJob,
        lease: &Lease,
        extra: Vec<Op>,
    ) -> Result<Claimed> {
        due.job_mut().lease = Some(lease.clone());
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
            .write_job_with(
                c,
                &node.name,
                node.version,
                op,
                stale,
                entry,
                &extra,
                "claiming a due job",
            )
            .await?;
        Ok(match written {
            Outcome::Written(w) => {
                due.job_mut().version = w.zxid.max(0) as u64;
                // A created record's data version is 0; flagged ones changed.
                self.written.forget(due.cancel.iter().copied());
                for r in due.runs.iter().filter(|r| r.state.is_active()) {
                    self.written.put(r.clone(), 0);
                }
                Claimed::Won(Box::new(due))
            }
            Outcome::JobChanged => Claimed::Lost,
            Outcome::LedgerChanged => Claimed::Retry,
        })
    }

    /// Reads job znodes and, for each, its run ledger state, in one multi-read per 250
    /// jobs: (name, the node if it exists, the ledger state).
    pub(super) async fn read_claimables(
        &self,
        c: &zk::Client,
        names: &[String],
    ) -> Result<Vec<(String, Option<Node>, LedgerRead)>> {
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(250) {
            let mut reader = c.new_multi_reader();
            for n in chunk {
                reader
                    .add_get_data(&self.job_path(n))
                    .map_err(|e| self.state.err("reading jobs", e))?;
                self.add_ledger_reads(&mut reader, n)?;
            }
            let results = self.call("reading jobs", reader.commit()).await?;
            let mut it = results.into_iter();
            for n in chunk {
                let node = match it.next() {
                    Some(zk::MultiReadResult::Data { data, stat }) => Some(Node {
                        name: n.clone(),
                        data,
                        version: stat.version,
                        zxid: stat.mzxid,
                    }),
                    _ => None,
                };
                let read = Self::take_ledger_read(&mut it);
                out.push((n.clone(), node, read));
            }
        }
        Ok(out)
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
        let ledger_on = self.state.ctx().is_some_and(|x| x.keeps_runs());
        let mut claims: Vec<(Node, DueJob, Option<LedgerRead>)> = Vec::new();
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
            let mut ledgers: std::collections::HashMap<String, LedgerRead> = Default::default();
            let mut nodes: std::collections::HashMap<String, Node> = if ledger_on {
                let mut nodes = std::collections::HashMap::new();
                for (name, node, read) in self.read_claimables(&c, &names).await? {
                    if let Some(n) = node {
                        nodes.insert(name.clone(), n);
                    }
                    ledgers.insert(name, read);
                }
                nodes
            } else {
                self.read_nodes(&c, &names)
                    .await?
                    .into_iter()
                    .map(|n| (n.name.clone(), n))
                    .collect()
            };
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
                let ledger = ledgers.remove(name);
                claims.push((node, due, ledger));
            }
        }
        let results: Vec<(String, Result<Option<DueJob>>)> = futures::stream::iter(
            claims
                .iter()
                .map(|(node, due, ledger)| async {
                    let id = due.job.id.clone();
                    let claimed = self
                        .claim_one(&c, node, due.clone(), &lease, ledger.clone(), now)
                        .await;
                    (id, claimed)
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
            let mut job = (*d.job).clone();
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
