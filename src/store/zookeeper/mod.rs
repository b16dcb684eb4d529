//! The ZooKeeper job store (cargo feature `zookeeper`): the store and its [`JobStore`]
//! implementation here; znode names in `names`, job znodes in `nodes`, the index in
//! `index`, connecting in `session`, claims in `claim`, the watch that wakes the loop in
//! `watch`.

mod claim;
mod index;
mod names;
mod nodes;
mod session;
mod watch;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use self::claim::CONCURRENCY;
use self::names::{decode_name, encode, entries_of, index_name, parse_index, persistent};
use self::nodes::{document_next, Envelope, JobOp, Node};
use self::watch::{Listing, Plan, WatchState, Watcher, UNWATCHED_POLL};
use super::common::{
    claimable_at, from_micros_saturating, held_by_other, lease_until, micros_ceil, sort_jobs,
};
use super::documents::StoreState;
use super::{DueJob, JobStore, StoreContext};
use crate::error::{Error, Result};
use crate::job::{JobRecord, Lease, StoredJob};
use crate::sync::MutexExt;

/// Keeps jobs in ZooKeeper; several schedulers (processes) may share one root path. See the
/// sections below for the znode layout and the claim protocol.
///
/// ```no_run
/// # fn f() -> apsched::Result<()> {
/// use apsched::store::ZooKeeperStore;
/// let store = ZooKeeperStore::new("127.0.0.1:2181")?.with_root("/myapp/jobs");
/// # Ok(()) }
/// ```
///
/// # Data layout
/// Under a configurable root path `R` (default `/apsched`):
///
/// | znode | data |
/// |---|---|
/// | `R/jobs/j-<id>` | `{"job": "<JSON document (StoredJob)>", "next_run_time": <µs>\|null, "lease_owner": .., "lease_until": <µs>\|null}` |
/// | `R/index/<µs, 20 digits>~j-<id>` | empty: one per unpaused job, named by its next run time |
///
/// Ids are percent-encoded into node names (`/`, `%`, `~` and any byte outside
/// `[A-Za-z0-9_.-]`). The job's version is the zxid of the znode's last write (`mzxid`),
/// which never repeats, even for a znode removed and created again; writes compare-and-swap
/// on the znode's data version. The time in the job's JSON document is the truth; the
/// index entry and the envelope's `next_run_time` are copies, repaired when they disagree.
///
/// # Claiming
/// [`JobStore::acquire_due_jobs`] lists `R/index` (names only; while the watch is armed and
/// reports no change, the last listing is reused, see `WatchState::listing`), reads the
/// due jobs in one multi-read, applies the due-run rule ([`DueJob::claim`]) in Rust and
/// writes each result back in one ZooKeeper `multi` transaction: `set_data` on the job with
/// the znode version it read (compare-and-swap), plus moving its index entry (every job
/// write changes job and index in one `multi`). If another scheduler wrote the job
/// in between, the version check fails and the whole transaction is refused, so two
/// schedulers never claim the same slot.
///
/// # Wake-ups
/// [`JobStore::start`] spawns a watcher task with its own session and a persistent
/// recursive watch (`addWatch`, ZooKeeper 3.6+) on `R/index`. Every add, reschedule, resume
/// or claim creates an index entry named by its next run time; when an entry is created that
/// is earlier than what this store last reported from [`JobStore::next_run_time`] (or when
/// nothing is known), the watcher wakes the scheduler loop (`StoreContext::wake_scheduler`). Entries
/// at or after the reported time need no wake-up: the loop looks again by then anyway, so
/// other schedulers' claims and one's own bulk adds do not make the loop spin. Entries seen
/// since the last report are checked again against the next one (they may be missing from
/// the listing behind it), so no order of events and listings loses a wake-up. After a
/// disconnection, session loss or outage the watcher re-arms the watch (new session if
/// needed, backing off 0.5 s doubling to 30 s between failed attempts) and wakes the loop
/// once, since events may have been missed meanwhile. While the watch is armed the store
/// still polls every 30 s as a safety net ([`ZooKeeperStore::with_poll_interval`]); while it
/// is not (connecting, outage, a server without persistent watches) it polls every 1 s.
pub struct ZooKeeperStore {
    hosts: String,
    root: String,
    poll_interval: Option<Duration>,
    session_timeout: Duration,
    client: Mutex<Option<zk::Client>>,
    state: StoreState,
    watch: Arc<WatchState>,
    watcher: std::sync::Mutex<Option<CancellationToken>>,
}

impl std::fmt::Debug for ZooKeeperStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperStore")
            .field("hosts", &self.hosts)
            .field("root", &self.root)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl ZooKeeperStore {
    /// A store on the ZooKeeper ensemble `hosts` (`host:port[,host:port...]`; a `zk://`
    /// prefix is accepted), under the root path `/apsched`. Parts left out get the
    /// ZooKeeper client's defaults: port 2181 for a host without one, and `localhost:2181`
    /// when no host is given at all (as `zkCli.sh` does). Connects when the scheduler starts.
    pub fn new(hosts: &str) -> Result<Self> {
        let state = StoreState::new("zookeeper");
        let hosts = hosts.trim_start_matches("zk://").trim_end_matches('/');
        let hosts = if hosts.is_empty() {
            "localhost:2181"
        } else {
            hosts
        };
        Ok(ZooKeeperStore {
            hosts: hosts.to_string(),
            root: "/apsched".into(),
            poll_interval: Some(Duration::from_secs(30)),
            session_timeout: Duration::from_secs(10),
            client: Mutex::new(None),
            state,
            watch: Arc::new(WatchState::new()),
            watcher: std::sync::Mutex::new(None),
        })
    }

    /// Sets the root path (default `/apsched`); created if missing.
    pub fn with_root(mut self, root: impl Into<String>) -> Self {
        let root: String = root.into();
        let root = root.trim_end_matches('/');
        self.root = if root.starts_with('/') {
            root.to_string()
        } else {
            format!("/{root}")
        };
        self
    }

    /// How often the scheduler looks at the store even without a watch event (a safety net;
    /// default 30 s). While the watch is not armed (connecting, outage, a ZooKeeper older
    /// than 3.6 without persistent watches) the store polls at most 1 s apart. `None`
    /// disables polling altogether (the watch alone, or this scheduler is the only writer).
    pub fn with_poll_interval(mut self, interval: Option<Duration>) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The ZooKeeper session timeout (default 10 s); also bounds how long a call waits
    /// for a lost server before failing with a store error. Longer values than the
    /// protocol can carry (2^31 - 1 ms, about 24.8 days) are cut to that; the server caps
    /// the timeout at its `maxSessionTimeout` anyway.
    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout.min(Duration::from_millis(i32::MAX as u64));
        self
    }

    /// The root path.
    pub fn root(&self) -> &str {
        &self.root
    }

    fn jobs_path(&self) -> String {
        format!("{}/jobs", self.root)
    }

    fn index_path(&self) -> String {
        format!("{}/index", self.root)
    }

    fn job_path(&self, node: &str) -> String {
        format!("{}/jobs/{node}", self.root)
    }

    fn idx_path(&self, entry: &str) -> String {
        format!("{}/index/{entry}", self.root)
    }
}

#[async_trait::async_trait]
impl JobStore for ZooKeeperStore {
    async fn start(&self, ctx: StoreContext) -> Result<()> {
        self.state.set_ctx(Some(ctx.clone()));
        self.state.forget_all_corrupt();
        let c = self.client().await?;
        if let Err(e) = self.heal_index(&c).await {
            tracing::warn!(root = %self.root, error = %e, "could not check the index at start");
        }
        self.stop_watcher();
        let stop = CancellationToken::new();
        *self.watcher.lock_unpoisoned() = Some(stop.clone());
        let (armed_tx, armed_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(
            Watcher {
                hosts: self.hosts.clone(),
                index: self.index_path(),
                session_timeout: self.session_timeout,
                shared: self.watch.clone(),
                ctx,
                stop,
            }
            .run(armed_tx),
        );
        // Changes made after `start` returns must not be missed: wait for the watch (a
        // failure here is not fatal, the store polls every second until it is armed).
        if tokio::time::timeout(self.session_timeout, armed_rx)
            .await
            .is_err()
        {
            tracing::warn!(root = %self.root, "ZooKeeper watch not armed yet; polling meanwhile");
        }
        Ok(())
    }

    async fn shutdown(&self) -> Result<()> {
        self.stop_watcher();
        *self.client.lock().await = None;
        Ok(())
    }

    async fn add_job(&self, mut job: JobRecord, replace_existing: bool) -> Result<()> {
        job.lease = None;
        let data = Self::envelope(&job)?;
        let c = self.client().await?;
        let node = encode(&job.id);
        let entry = job.next_run_time.map(|t| index_name(micros_ceil(t), &node));
        loop {
            match self.read_one(&c, &node).await? {
                None => {
                    let mut w = c.new_multi_writer();
                    let bad = |e| self.state.err("adding a job", e);
                    w.add_create(&self.job_path(&node), &data, &persistent())
                        .map_err(bad)?;
                    if let Some(e) = &entry {
                        w.add_create(&self.idx_path(e), &[], &persistent())
                            .map_err(bad)?;
                    }
                    let committed = tokio::time::timeout(self.session_timeout, w.commit()).await;
                    self.watch.changed();
                    match committed {
                        Ok(Ok(_)) => break,
                        Ok(Err(zk::MultiWriteError::OperationFailed {
                            index: 0,
                            source: zk::Error::NodeExists,
                        })) => continue,
                        Ok(Err(zk::MultiWriteError::OperationFailed {
                            index: 1,
                            source: zk::Error::NodeExists,
                        })) => {
                            // A stale entry of a removed job with the same id and time: the
                            // job is added without it and owns it again.
                            let mut w = c.new_multi_writer();
                            w.add_create(&self.job_path(&node), &data, &persistent())
                                .map_err(bad)?;
                            let committed = self
                                .call("adding a job", async {
                                    w.commit().await.map_err(zk::Error::from)
                                })
                                .await;
                            self.watch.changed();
                            committed?;
                            break;
                        }
                        Ok(Err(e)) => {
                            return Err(self.state.err("adding a job", zk::Error::from(e)))
                        }
                        Err(_) => return Err(self.state.msg("adding a job: timed out")),
                    }
                }
                Some(old) => {
                    if !replace_existing {
                        return Err(Error::ConflictingId(job.id));
                    }
                    let stale = entries_of(&node, &old.data);
                    if self
                        .write_job(
                            &c,
                            &node,
                            old.version,
                            JobOp::Set(&data),
                            stale,
                            entry.clone(),
                            "adding a job",
                        )
                        .await?
                        .is_some()
                    {
                        break;
                    }
                }
            }
        }
        self.state.forget_corrupt(&job.id);
        Ok(())
    }

    async fn update_job(&self, mut job: JobRecord) -> Result<JobRecord> {
        job.lease = None;
        let data = Self::envelope(&job)?;
        let c = self.client().await?;
        let node = encode(&job.id);
        let Some(old) = self.read_one(&c, &node).await? else {
            return Err(Error::JobLookup(job.id));
        };
        // The job's version is the zxid of its last write: unique across removals and
        // re-adds (a re-created znode's data version restarts at 0, its zxid does not).
        if old.zxid.max(0) as u64 != job.version {
            return Err(Error::Fenced(job.id));
        }
        let entry = job.next_run_time.map(|t| index_name(micros_ceil(t), &node));
        let stale = entries_of(&node, &old.data);
        let Some(w) = self
            .write_job(
                &c,
                &node,
                old.version,
                JobOp::Set(&data),
                stale,
                entry,
                "updating a job",
            )
            .await?
        else {
            return Err(Error::Fenced(job.id));
        };
        self.state.forget_corrupt(&job.id);
        job.version = w.zxid.max(0) as u64;
        Ok(job)
    }

    async fn remove_job(&self, id: &str) -> Result<()> {
        let c = self.client().await?;
        let node = encode(id);
        loop {
            let Some(old) = self.read_one(&c, &node).await? else {
                return Err(Error::JobLookup(id.to_string()));
            };
            let stale = entries_of(&node, &old.data);
            if self
                .write_job(
                    &c,
                    &node,
                    old.version,
                    JobOp::Delete,
                    stale,
                    None,
                    "removing a job",
                )
                .await?
                .is_some()
            {
                self.state.forget_corrupt(id);
                return Ok(());
            }
        }
    }

    async fn remove_all_jobs(&self) -> Result<()> {
        let c = self.client().await?;
        for parent in [self.index_path(), self.jobs_path()] {
            let children = self
                .call("removing all jobs", c.list_children(&parent))
                .await?;
            for ch in children {
                match self
                    .call("removing all jobs", async {
                        match c.delete(&format!("{parent}/{ch}"), None).await {
                            Err(zk::Error::NoNode) => Ok(()),
                            r => r,
                        }
                    })
                    .await
                {
                    Ok(()) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.watch.changed();
        self.state.forget_all_corrupt();
        Ok(())
    }

    async fn lookup_job(&self, id: &str) -> Result<Option<JobRecord>> {
        let c = self.client().await?;
        let node = encode(id);
        let Some(n) = self.read_one(&c, &node).await? else {
            return Ok(None);
        };
        match self.decode(&n) {
            Some((job, _)) => Ok(Some(job)),
            None => Err(Error::CorruptJob {
                id: id.to_string(),
                reason: match serde_json::from_slice::<Envelope>(&n.data) {
                    Ok(env) => self.state.check(id, &env.job).err().unwrap_or_default(),
                    Err(e) => e.to_string(),
                },
            }),
        }
    }

    async fn get_all_jobs(&self) -> Result<Vec<JobRecord>> {
        let c = self.client().await?;
        let names = self
            .call("listing jobs", c.list_children(&self.jobs_path()))
            .await?;
        let nodes = self.read_nodes(&c, &names).await?;
        let mut jobs: Vec<JobRecord> = nodes
            .iter()
            .filter_map(|n| self.decode(n).map(|(j, _)| j))
            .collect();
        sort_jobs(&mut jobs);
        Ok(jobs)
    }

    async fn next_run_time(&self) -> Result<Option<DateTime<Utc>>> {
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

    async fn acquire_due_jobs(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueJob>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let me = self.state.owner();
        let lease = Lease {
            owner: me.clone(),
            until: lease_until(now, self.state.lease()),
        };
        let now_us = now.timestamp_micros();
        let c = self.client().await?;
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
                let Some((job, _)) = self.decode(&node) else {
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

    async fn release_jobs(&self, jobs: &[DueJob]) -> Result<()> {
        let me = self.state.owner();
        let mine: Vec<&DueJob> = jobs
            .iter()
            .filter(|d| !d.removed && d.job.lease.as_ref().is_some_and(|l| l.owner == me))
            .collect();
        if mine.is_empty() {
            return Ok(());
        }
        let c = self.client().await?;
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

    fn poll_interval(&self) -> Option<Duration> {
        if self.watch.armed.load(Ordering::SeqCst) {
            self.poll_interval
        } else {
            self.poll_interval.map(|p| p.min(UNWATCHED_POLL))
        }
    }

    fn is_persistent(&self) -> bool {
        true
    }
}
