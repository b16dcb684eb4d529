//! The run ledger's znodes: their names, reading them, and the `multi` operations that
//! write them. The ledger operations themselves are in `ledger.rs` (start, finish, manual
//! runs, queries) and `tick.rs` (heartbeat, takeover, promotion, pruning); the claim writes
//! its records through [`Client::record_ops`].
//!
//! Layout under the root `R` (docs/ledger.md and `ZooKeeperStore`'s docs have the table):
//! - `R/runs/<run id, 20 digits>`: the record, [`RunRecord::to_json`];
//! - `R/history/<job node>/<scheduled µs, 20 digits>~<run id>`: empty, one per record of
//!   the job, named so that a listing sorts in the ledger's order without reading records;
//! - `R/active/<job node>`: empty; its data version is the job's ledger lock (every write
//!   that adds an instance-holding run of the job sets it with the version it read);
//! - `R/active/<job node>/<run id>~q|r`: empty, one per active (claimed or started) run:
//!   `q` queued, `r` holding an instance. The claim counts these without reading records;
//! - `R/owners/s-<scheduler id>`: `{"alive_until": µs, "alive_until_utc": ".."}`, each
//!   scheduler's heartbeat.

use chrono::{DateTime, Utc};
use zookeeper_client as zk;

use super::client::Client;
use super::names::{encode, persistent};
use crate::error::Result;
use crate::job::RunId;
use crate::ledger::{ActiveRuns, RunRecord, RunState};

/// The znode name of a run record: its id, zero-padded so names sort by id.
pub(super) fn run_name(id: RunId) -> String {
    format!("{:020}", id.get())
}

/// The name of a run's entry in its job's history: scheduled time (µs, floor) and run id.
pub(super) fn history_name(scheduled: DateTime<Utc>, id: RunId) -> String {
    history_entry(scheduled.timestamp_micros(), id)
}

/// A history entry name from its parts (see [`history_name`]).
pub(super) fn history_entry(us: i64, id: RunId) -> String {
    format!("{us:020}~{:020}", id.get())
}

/// Parses a history entry name: (scheduled µs, run id).
pub(super) fn parse_history(name: &str) -> Option<(i64, RunId)> {
    let (t, id) = name.split_once('~')?;
    Some((t.parse().ok()?, RunId::from_raw(id.parse().ok()?)))
}

/// The name of an active run's marker: run id and `q` (queued) or `r` (holds an instance).
pub(super) fn marker_name(id: RunId, queued: bool) -> String {
    format!("{:020}~{}", id.get(), if queued { "q" } else { "r" })
}

/// Parses a marker name: (run id, queued).
pub(super) fn parse_marker(name: &str) -> Option<(RunId, bool)> {
    let (id, flag) = name.split_once('~')?;
    let queued = match flag {
        "q" => true,
        "r" => false,
        _ => return None,
    };
    Some((RunId::from_raw(id.parse().ok()?), queued))
}

/// The znode name of a scheduler's heartbeat.
pub(super) fn owner_name(scheduler_id: &str) -> String {
    // The job-name encoding, with its own prefix: any id is a valid znode name.
    format!("s-{}", &encode(scheduler_id)[2..])
}

/// A scheduler's heartbeat znode data.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Heartbeat {
    /// Microseconds since the epoch until which the scheduler counts as alive.
    pub(super) alive_until: i64,
    /// The same time in RFC 3339, for operators reading the znode (never read back).
    #[serde(default, skip_deserializing)]
    pub(super) alive_until_utc: String,
}

impl Client {
    pub(super) fn runs_path(&self) -> String {
        format!("{}/runs", self.root)
    }

    pub(super) fn run_path(&self, id: RunId) -> String {
        format!("{}/runs/{}", self.root, run_name(id))
    }

    pub(super) fn history_root(&self) -> String {
        format!("{}/history", self.root)
    }

    pub(super) fn history_path(&self, node: &str) -> String {
        format!("{}/history/{node}", self.root)
    }

    pub(super) fn active_root(&self) -> String {
        format!("{}/active", self.root)
    }

    pub(super) fn active_path(&self, node: &str) -> String {
        format!("{}/active/{node}", self.root)
    }

    pub(super) fn owners_path(&self) -> String {
        format!("{}/owners", self.root)
    }

    pub(super) fn marker_path(&self, node: &str, id: RunId, queued: bool) -> String {
        format!("{}/active/{node}/{}", self.root, marker_name(id, queued))
    }
}

/// What the ledger knows of one job before a write: its lock's version (`None`: the job
/// has no `R/active/<job>` yet), its active runs from the markers, and whether its history
/// directory exists.
#[derive(Debug, Clone, Default)]
pub(super) struct LedgerRead {
    pub(super) lock: Option<i32>,
    pub(super) markers: Vec<(RunId, bool)>,
    pub(super) history: bool,
}

impl LedgerRead {
    /// The active runs for the overlap rule. Markers tell queued runs from those holding an
    /// instance, not claimed from started: the latter count as started here, and
    /// [`Client::cancel_ops`] keeps only the runs whose record says started.
    pub(super) fn active(&self) -> ActiveRuns {
        let mut a = ActiveRuns::new();
        for &(id, queued) in &self.markers {
            let state = if queued {
                RunState::Claimed
            } else {
                RunState::Started
            };
            a.push(id, state, queued);
        }
        a
    }
}

/// The active runs this store itself wrote last: each record as written and its data
/// version after the write. Starting and finishing them then needs no read first (one
/// round trip per batch): the write is by that version, so a record someone else changed
/// since is refused, dropped from here and read. Bounded: cleared when it grows past
/// [`Written::LIMIT`] (runs that never finish here, e.g. taken over elsewhere).
#[derive(Debug, Default)]
pub(super) struct Written {
    runs: std::sync::Mutex<std::collections::HashMap<RunId, (RunRecord, i32)>>,
}

impl Written {
    const LIMIT: usize = 100_000;

    /// Remembers `run` as written, at data `version`.
    pub(super) fn put(&self, run: RunRecord, version: i32) {
        use crate::sync::MutexExt;
        let mut runs = self.runs.lock_unpoisoned();
        if runs.len() >= Self::LIMIT {
            runs.clear();
        }
        runs.insert(run.run_id, (run, version));
    }

    /// Forgets runs (finished, or found changed).
    pub(super) fn forget(&self, ids: impl IntoIterator<Item = RunId>) {
        use crate::sync::MutexExt;
        let mut runs = self.runs.lock_unpoisoned();
        if runs.is_empty() {
            return;
        }
        for id in ids {
            runs.remove(&id);
        }
    }

    /// Splits `ids` into the remembered ones (record and version) and the others.
    pub(super) fn take(&self, ids: &[RunId]) -> (Vec<(RunRecord, i32)>, Vec<RunId>) {
        use crate::sync::MutexExt;
        let runs = self.runs.lock_unpoisoned();
        if runs.is_empty() {
            return (Vec::new(), ids.to_vec());
        }
        let mut known = Vec::new();
        let mut other = Vec::new();
        for id in ids {
            match runs.get(id) {
                Some(r) => known.push(r.clone()),
                None => other.push(*id),
            }
        }
        (known, other)
    }
}

/// One operation of a ledger `multi`.
#[derive(Debug, Clone)]
pub(super) enum Op {
    /// Create a znode; it must not exist.
    Create(String, Vec<u8>),
    /// Set a znode's data, at this data version (`None`: any).
    Set(String, Vec<u8>, Option<i32>),
    /// Delete a znode if it is there (a marker an operator removed is not worth failing for).
    DeleteIfAny(String),
    /// Delete a znode at this data version.
    Delete(String, i32),
}

impl Op {
    fn size(&self) -> usize {
        match self {
            Op::Create(p, d) | Op::Set(p, d, _) => p.len() + d.len() + 32,
            Op::DeleteIfAny(p) | Op::Delete(p, _) => p.len() + 16,
        }
    }

    /// Adds the op to a `multi`.
    pub(super) fn add_to(&self, w: &mut zk::MultiWriter<'_>) -> std::result::Result<(), zk::Error> {
        match self {
            Op::Create(p, d) => w.add_create(p, d, &persistent()),
            Op::Set(p, d, v) => w.add_set_data(p, d, *v),
            Op::DeleteIfAny(p) => w.add_delete(p, None),
            Op::Delete(p, v) => w.add_delete(p, Some(*v)),
        }
    }
}

/// The most bytes of ops one `multi` carries (ZooKeeper refuses requests over
/// `jute.maxbuffer`, 1 MB by default).
pub(super) const MULTI_BYTES: usize = 512 * 1024;

/// Splits `groups` of ops (each group must commit together) into batches under
/// [`MULTI_BYTES`] (a group larger than that is a batch of its own).
pub(super) fn batches<T>(groups: Vec<(T, Vec<Op>)>) -> Vec<Vec<(T, Vec<Op>)>> {
    let mut out: Vec<Vec<(T, Vec<Op>)>> = Vec::new();
    let mut size = 0;
    for g in groups {
        let s: usize = g.1.iter().map(Op::size).sum();
        if out.is_empty() || size + s > MULTI_BYTES {
            out.push(Vec::new());
            size = 0;
        }
        size += s;
        if let Some(last) = out.last_mut() {
            last.push(g);
        }
    }
    out
}

/// Why a ledger `multi` did not commit.
#[derive(Debug)]
pub(super) enum Refused {
    /// Op `index` failed: something changed since the read (a version, a znode that
    /// appeared or went away). Re-read and try again.
    Changed(usize),
}

impl Client {
    /// Reads the ledger state of the jobs `nodes` in one multi-read.
    pub(super) async fn read_ledger(
        &self,
        c: &zk::Client,
        nodes: &[String],
    ) -> Result<Vec<LedgerRead>> {
        let mut out = Vec::with_capacity(nodes.len());
        for chunk in nodes.chunks(250) {
            let mut r = c.new_multi_reader();
            for n in chunk {
                self.add_ledger_reads(&mut r, n)?;
            }
            let results = self.call("reading the run ledger", r.commit()).await?;
            let mut it = results.into_iter();
            for _ in chunk {
                out.push(Self::take_ledger_read(&mut it));
            }
        }
        Ok(out)
    }

    /// Adds the three reads of a job's ledger state to a multi-read (see
    /// [`take_ledger_read`](Self::take_ledger_read)).
    pub(super) fn add_ledger_reads(&self, r: &mut zk::MultiReader<'_>, node: &str) -> Result<()> {
        let bad = |e| self.state.err("reading the run ledger", e);
        r.add_get_data(&self.active_path(node)).map_err(bad)?;
        r.add_get_children(&self.active_path(node)).map_err(bad)?;
        r.add_get_data(&self.history_path(node)).map_err(bad)?;
        Ok(())
    }

    /// Takes the results of [`add_ledger_reads`](Self::add_ledger_reads).
    pub(super) fn take_ledger_read(
        it: &mut impl Iterator<Item = zk::MultiReadResult>,
    ) -> LedgerRead {
        let lock = match it.next() {
            Some(zk::MultiReadResult::Data { stat, .. }) => Some(stat.version),
            _ => None,
        };
        let markers = match it.next() {
            Some(zk::MultiReadResult::Children { children }) => {
                children.iter().filter_map(|n| parse_marker(n)).collect()
            }
            _ => Vec::new(),
        };
        let history = matches!(it.next(), Some(zk::MultiReadResult::Data { .. }));
        LedgerRead {
            lock,
            markers,
            history,
        }
    }

    /// Reads run records by id in multi-reads: (id, data, data version) of those that exist.
    /// A record that cannot be read (no permission) fails the call: taking it for missing
    /// would drop its start or outcome silently.
    pub(super) async fn read_runs(
        &self,
        c: &zk::Client,
        ids: &[RunId],
    ) -> Result<Vec<(RunId, Vec<u8>, i32)>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut r = c.new_multi_reader();
            for id in chunk {
                r.add_get_data(&self.run_path(*id))
                    .map_err(|e| self.state.err("reading runs", e))?;
            }
            let results = self.call("reading runs", r.commit()).await?;
            for (id, res) in chunk.iter().zip(results) {
                match res {
                    zk::MultiReadResult::Data { data, stat } => out.push((*id, data, stat.version)),
                    // Gone (pruned, or never there): callers ignore unknown runs.
                    zk::MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    } => {}
                    zk::MultiReadResult::Error { err } => {
                        return Err(self.state.err(&format!("reading run {id}"), err))
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// The ops that write what a claim or a manual run planned for job `node`: take the
    /// job's ledger lock (creating it and the history directory if missing), create each
    /// record with its history entry and, for active runs, its marker; then `cancels`.
    pub(super) fn record_ops(
        &self,
        node: &str,
        read: &LedgerRead,
        runs: &[RunRecord],
        cancels: Vec<Op>,
    ) -> Vec<Op> {
        let mut ops = Vec::with_capacity(runs.len() * 3 + 2 + cancels.len());
        if !read.history {
            ops.push(Op::Create(self.history_path(node), Vec::new()));
        }
        ops.push(match read.lock {
            None => Op::Create(self.active_path(node), Vec::new()),
            Some(v) => Op::Set(self.active_path(node), Vec::new(), Some(v)),
        });
        for r in runs {
            ops.push(Op::Create(
                self.run_path(r.run_id),
                r.to_json().into_bytes(),
            ));
            ops.push(Op::Create(
                format!(
                    "{}/{}",
                    self.history_path(node),
                    history_name(r.scheduled, r.run_id)
                ),
                Vec::new(),
            ));
            if r.state.is_active() {
                ops.push(Op::Create(
                    self.marker_path(node, r.run_id, r.queued),
                    Vec::new(),
                ));
            }
        }
        ops.extend(cancels);
        ops
    }

    /// The ops that flag `cancel_requested` on the runs `ids` whose record says started
    /// (by data version, so a run that changed meanwhile refuses the `multi`), and the ids
    /// flagged. One multi-read; none when `ids` is empty.
    pub(super) async fn cancel_ops(
        &self,
        c: &zk::Client,
        ids: &[RunId],
    ) -> Result<(Vec<Op>, Vec<RunId>)> {
        if ids.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut ops = Vec::new();
        let mut flagged = Vec::new();
        for (id, data, version) in self.read_runs(c, ids).await? {
            let Ok(mut r) = RunRecord::from_json(&String::from_utf8_lossy(&data)) else {
                continue;
            };
            if r.state != RunState::Started {
                continue;
            }
            flagged.push(id);
            if r.cancel_requested {
                continue;
            }
            r.cancel_requested = true;
            ops.push(Op::Set(
                self.run_path(id),
                r.to_json().into_bytes(),
                Some(version),
            ));
        }
        Ok((ops, flagged))
    }

    /// Commits `ops` in one `multi`. Ops `DeleteIfAny` whose znode is gone are left out
    /// and the rest retried; any other refused op is [`Refused::Changed`].
    pub(super) async fn commit_ops(
        &self,
        c: &zk::Client,
        mut ops: Vec<Op>,
        doing: &str,
    ) -> Result<std::result::Result<Vec<zk::MultiWriteResult>, Refused>> {
        loop {
            if ops.is_empty() {
                return Ok(Ok(Vec::new()));
            }
            let mut w = c.new_multi_writer();
            for op in &ops {
                op.add_to(&mut w).map_err(|e| self.state.err(doing, e))?;
            }
            let committed = tokio::time::timeout(self.session_timeout, w.commit()).await;
            match committed {
                Ok(Ok(results)) => return Ok(Ok(results)),
                Ok(Err(zk::MultiWriteError::OperationFailed {
                    index,
                    source: zk::Error::NoNode,
                })) if matches!(ops.get(index), Some(Op::DeleteIfAny(_))) => {
                    ops.remove(index);
                }
                Ok(Err(zk::MultiWriteError::OperationFailed {
                    index,
                    source: zk::Error::NoNode | zk::Error::NodeExists | zk::Error::BadVersion,
                })) => return Ok(Err(Refused::Changed(index))),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let id = RunId::from_raw(42);
        assert_eq!(parse_marker(&marker_name(id, true)), Some((id, true)));
        assert_eq!(parse_marker(&marker_name(id, false)), Some((id, false)));
        let t = DateTime::<Utc>::from_timestamp_micros(-5).unwrap();
        assert_eq!(parse_history(&history_name(t, id)), Some((-5, id)));
        let t = DateTime::<Utc>::from_timestamp_micros(1_764_686_400_000_000).unwrap();
        assert_eq!(
            history_name(t, id),
            "00001764686400000000~00000000000000000042"
        );
        assert!(!owner_name("host/1~x").contains('/'));
    }
}
