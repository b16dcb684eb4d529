//! Claiming: the earliest claimable time, and claiming one due job by compare-and-swap.

use super::*;

/// How many claims are in flight at once.
pub(super) const CONCURRENCY: usize = 32;

impl ZooKeeperStore {
    /// The earliest time this scheduler could claim a job (see [`JobStore::next_run_time`]).
    pub(super) async fn earliest_claimable(&self) -> Result<Option<DateTime<Utc>>> {
        let me = self.state.owner();
        let now = self.state.now();
        let c = self.client().await?;
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
}
