//! Job znodes: encoding and decoding their data, reading them, and writing a job together with its index entry in one transaction.

use zookeeper_client as zk;

use super::client::Client;
use super::envelope::Envelope;
use super::names::{decode_name, persistent};
use super::runs::Op;
use crate::error::Result;
use crate::job::JobRecord;
use crate::store::common::micros_ceil;
use crate::store::export::UnloadableRecord;

/// A job znode as read: node name, data, znode data version (for compare-and-swap) and
/// the zxid of its last write (the job's version).
#[derive(Clone)]
pub(super) struct Node {
    pub(super) name: String,
    pub(super) data: Vec<u8>,
    pub(super) version: i32,
    pub(super) zxid: i64,
}

/// What a job transaction does to the job znode itself (the first op of the `multi`).
#[derive(Clone, Copy)]
pub(super) enum JobOp<'a> {
    /// Write this envelope.
    Set(&'a [u8]),
    /// Remove the job.
    Delete,
    /// Write nothing; only require the data version to be unchanged (index repairs).
    Check,
}

/// What [`Client::write_job_with`] did.
pub(super) enum Outcome {
    /// Committed.
    Written(Written),
    /// The job changed since it was read (or is gone): nothing written.
    JobChanged,
    /// One of the extra (run ledger) ops was refused: something in the ledger changed
    /// since it was read. Nothing written; re-read and try again.
    LedgerChanged,
}

/// The outcome of [`Client::write_job`].
pub(super) struct Written {
    /// The zxid of the job write (the job's new version); 0 for `Delete`/`Check`.
    pub(super) zxid: i64,
    /// Whether any index entry was created or deleted.
    pub(super) index_changed: bool,
}

impl Client {
    pub(super) fn envelope(job: &JobRecord) -> Result<Vec<u8>> {
        let env = Envelope {
            job: job.to_json()?,
            next_run_time: job.next_run_time.map(micros_ceil),
            lease_owner: job.lease.as_ref().map(|l| l.owner.clone()),
            lease_until: job.lease.as_ref().map(|l| micros_ceil(l.until)),
        };
        Ok(serde_json::to_vec(&env)?)
    }

    /// Decodes a job znode; corrupt ones are reported and `None` returned.
    pub(super) fn decode(
        &self,
        node: &Node,
    ) -> std::result::Result<(JobRecord, Envelope), UnloadableRecord> {
        let id = decode_name(&node.name).unwrap_or_else(|| node.name.clone());
        let version = node.zxid.max(0) as u64;
        let text = String::from_utf8_lossy(&node.data);
        match serde_json::from_slice::<Envelope>(&node.data) {
            Ok(env) => {
                let job = self.state.decode(&id, &env.job, version, env.lease())?;
                Ok((job, env))
            }
            Err(e) => {
                // Report the whole node text as the unparseable document.
                let _ = self.state.decode(&id, &text, version, None);
                Err(UnloadableRecord::new(id, text, e.to_string()))
            }
        }
    }

    /// Reads job znodes by node name in one multi-read; missing ones are left out.
    pub(super) async fn read_nodes(&self, c: &zk::Client, names: &[String]) -> Result<Vec<Node>> {
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(500) {
            let mut reader = c.new_multi_reader();
            for n in chunk {
                reader
                    .add_get_data(&self.job_path(n))
                    .map_err(|e| self.state.err("reading jobs", e))?;
            }
            let results = self.call("reading jobs", reader.commit()).await?;
            for (n, r) in chunk.iter().zip(results) {
                if let zk::MultiReadResult::Data { data, stat } = r {
                    out.push(Node {
                        name: n.clone(),
                        data,
                        version: stat.version,
                        zxid: stat.mzxid,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Writes a job znode and its index in one `multi`: `op` on the node read at data
    /// `version`, deleting the index entries `stale` and creating `entry`. An entry already
    /// gone, or already there, is left out and the transaction retried without it, so the
    /// job and its index change together or not at all (a job can never be left without
    /// its entry). `Ok(None)` = the job changed since it was read. A `Check` whose index
    /// needs no change writes nothing.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn write_job(
        &self,
        c: &zk::Client,
        node: &str,
        version: i32,
        op: JobOp<'_>,
        stale: Vec<String>,
        entry: Option<String>,
        doing: &str,
    ) -> Result<Option<Written>> {
        Ok(
            match self
                .write_job_with(c, node, version, op, stale, entry, &[], doing)
                .await?
            {
                Outcome::Written(w) => Some(w),
                Outcome::JobChanged | Outcome::LedgerChanged => None,
            },
        )
    }

    /// [`write_job`](Self::write_job) with `extra` ops in the same `multi`, after the job
    /// and index ops (a claim's run records): a refused extra op is
    /// [`Outcome::LedgerChanged`].
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn write_job_with(
        &self,
        c: &zk::Client,
        node: &str,
        version: i32,
        op: JobOp<'_>,
        mut stale: Vec<String>,
        mut entry: Option<String>,
        extra: &[Op],
        doing: &str,
    ) -> Result<Outcome> {
        if let Some(e) = &entry {
            // Deleting and re-creating the same entry would change nothing: only create it
            // (which is dropped below if it exists).
            stale.retain(|s| s != e);
        }
        let path = self.job_path(node);
        let mut index_changed = false;
        // Each retry drops one op, so this ends.
        loop {
            if matches!(op, JobOp::Check) && stale.is_empty() && entry.is_none() && extra.is_empty()
            {
                return Ok(Outcome::Written(Written {
                    zxid: 0,
                    index_changed,
                }));
            }
            let mut w = c.new_multi_writer();
            let bad = |e| self.state.err(doing, e);
            match op {
                JobOp::Set(data) => w.add_set_data(&path, data, Some(version)).map_err(bad)?,
                JobOp::Delete => w.add_delete(&path, Some(version)).map_err(bad)?,
                JobOp::Check => w.add_check_version(&path, version).map_err(bad)?,
            }
            for e in &stale {
                w.add_delete(&self.idx_path(e), None).map_err(bad)?;
            }
            if let Some(e) = &entry {
                w.add_create(&self.idx_path(e), &[], &persistent())
                    .map_err(bad)?;
            }
            for x in extra {
                x.add_to(&mut w).map_err(bad)?;
            }
            let first_extra = 1 + stale.len() + usize::from(entry.is_some());
            let committed = tokio::time::timeout(self.session_timeout, w.commit()).await;
            // Whatever the outcome (a timed-out commit may have been applied).
            self.watch.changed();
            match committed {
                Ok(Ok(results)) => {
                    index_changed |= !stale.is_empty() || entry.is_some();
                    let zxid = match results.first() {
                        Some(zk::MultiWriteResult::SetData { stat }) => stat.mzxid,
                        _ => 0,
                    };
                    return Ok(Outcome::Written(Written {
                        zxid,
                        index_changed,
                    }));
                }
                Ok(Err(zk::MultiWriteError::OperationFailed {
                    index: 0,
                    source: zk::Error::BadVersion | zk::Error::NoNode,
                })) => return Ok(Outcome::JobChanged),
                Ok(Err(zk::MultiWriteError::OperationFailed {
                    index,
                    source: zk::Error::BadVersion | zk::Error::NoNode | zk::Error::NodeExists,
                })) if index >= first_extra => return Ok(Outcome::LedgerChanged),
                Ok(Err(zk::MultiWriteError::OperationFailed {
                    index,
                    source: zk::Error::NoNode,
                })) if (1..=stale.len()).contains(&index) => {
                    stale.remove(index - 1);
                }
                Ok(Err(zk::MultiWriteError::OperationFailed {
                    index,
                    source: zk::Error::NodeExists,
                })) if index == stale.len() + 1 && entry.is_some() => {
                    entry = None;
                }
                Ok(Err(e)) => {
                    let e: zk::Error = e.into();
                    if matches!(e, zk::Error::SessionExpired | zk::Error::ClientClosed) {
                        *self.session.lock().await = None;
                    }
                    return Err(self.state.err(doing, e));
                }
                Err(_) => return Err(self.state.msg(format!("{doing}: timed out"))),
            }
        }
    }

    /// Reads one job node, or `None`.
    pub(super) async fn read_one(&self, c: &zk::Client, node: &str) -> Result<Option<Node>> {
        match tokio::time::timeout(self.session_timeout, c.get_data(&self.job_path(node))).await {
            Ok(Ok((data, stat))) => Ok(Some(Node {
                name: node.to_string(),
                data,
                version: stat.version,
                zxid: stat.mzxid,
            })),
            Ok(Err(zk::Error::NoNode)) => Ok(None),
            Ok(Err(e)) => Err(self.state.err("reading a job", e)),
            Err(_) => Err(self.state.msg("reading a job: timed out")),
        }
    }
}
