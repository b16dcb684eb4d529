//! The ZooKeeper job store (cargo feature `zookeeper`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use super::common::{
    claimable_at, from_micros_saturating, held_by_other, lease_until, micros_ceil, sort_jobs,
};
use super::documents::StoreState;
use super::{DueJob, JobStore, StoreContext};
use crate::error::{Error, Result};
use crate::job::{JobRecord, Lease, StoredJob};
use crate::sync::MutexExt;

/// How many claims are in flight at once.
const CONCURRENCY: usize = 32;

/// The poll interval while the watch is not armed (capped by the configured one).
const UNWATCHED_POLL: Duration = Duration::from_secs(1);
/// First delay before the watcher retries after a failure; doubles up to [`WATCH_MAX_BACKOFF`].
const WATCH_MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest delay between the watcher's attempts.
const WATCH_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// `Plan::planned` when the store does not know when the loop will look again.
const UNKNOWN: i64 = i64::MAX;

/// When the loop will look at the store again, as far as the store knows.
#[derive(Debug)]
struct Plan {
    /// The earliest claimable time (µs) `next_run_time` last reported to the loop;
    /// [`UNKNOWN`] when there is none, before the first report and after a failure.
    planned: i64,
    /// The earliest index entry (µs) created since that report. The next report wakes the
    /// loop if it is earlier than the new planned time: the entry may be missing from the
    /// listing behind that report (created during the pass, or seen late by a lagging
    /// server), and no event is lost between the watcher and the loop, whatever the order.
    since: i64,
}

impl Plan {
    const fn new() -> Plan {
        Plan {
            planned: UNKNOWN,
            since: UNKNOWN,
        }
    }
}

/// A listing of `R/index`: (µs, job node name), sorted.
type Listing = Arc<Vec<(i64, String)>>;

/// What the store and its watcher task share.
#[derive(Debug)]
struct WatchState {
    plan: std::sync::Mutex<Plan>,
    /// Whether the watch is armed (so the long fallback poll is enough).
    armed: AtomicBool,
    /// Counts what may have changed `R/index`: every watch event, arming and disarming,
    /// and this store's own writes.
    changes: AtomicU64,
    /// The last listing of `R/index` and the value of `changes` read before it was taken.
    /// While the watch is armed and `changes` has not moved, the index is as listed (as
    /// far as the watch has told), so a pass reuses it instead of listing every entry
    /// again: `next_run_time` and the claim of one pass share one listing, and idle
    /// passes (the fallback poll) list nothing.
    listing: std::sync::Mutex<Option<(u64, Listing)>>,
}

impl WatchState {
    fn new() -> WatchState {
        WatchState {
            plan: std::sync::Mutex::new(Plan::new()),
            armed: AtomicBool::new(false),
            changes: AtomicU64::new(0),
            listing: std::sync::Mutex::new(None),
        }
    }

    /// Something may have changed the index: the saved listing is stale.
    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    fn set_armed(&self, armed: bool) {
        self.armed.store(armed, Ordering::SeqCst);
        self.changed();
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock_unpoisoned()
    }

    /// The watcher saw an index entry for `at` (µs) appear: whether to wake the loop.
    fn entry_created(&self, at: i64) -> bool {
        let mut plan = self.plan();
        plan.since = plan.since.min(at);
        at < plan.planned
    }

    /// `next_run_time` reports `next` to the loop: whether to wake the loop again.
    fn reported(&self, next: Option<i64>) -> bool {
        let mut plan = self.plan();
        plan.planned = next.unwrap_or(UNKNOWN);
        let missed = plan.since < plan.planned;
        plan.since = UNKNOWN;
        missed
    }
}

/// The data of a job znode.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Envelope {
    job: String,
    next_run_time: Option<i64>,
    #[serde(default)]
    lease_owner: Option<String>,
    #[serde(default)]
    lease_until: Option<i64>,
}

impl Envelope {
    fn lease(&self) -> Option<Lease> {
        match (&self.lease_owner, self.lease_until) {
            (Some(owner), Some(until)) => Some(Lease {
                owner: owner.clone(),
                until: from_micros_saturating(until),
            }),
            _ => None,
        }
    }
}

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

fn encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 2);
    out.push_str("j-");
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode_name(name: &str) -> Option<String> {
    let s = name.strip_prefix("j-")?;
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(s.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn index_name(next_us: i64, node: &str) -> String {
    format!("{:020}~{node}", next_us.max(0))
}

fn parse_index(name: &str) -> Option<(i64, &str)> {
    let (t, node) = name.split_once('~')?;
    Some((t.parse().ok()?, node))
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

/// A job znode as read: node name, data, znode data version (for compare-and-swap) and
/// the zxid of its last write (the job's version).
struct Node {
    name: String,
    data: Vec<u8>,
    version: i32,
    zxid: i64,
}

/// What a job transaction does to the job znode itself (the first op of the `multi`).
#[derive(Clone, Copy)]
enum JobOp<'a> {
    /// Write this envelope.
    Set(&'a [u8]),
    /// Remove the job.
    Delete,
    /// Write nothing; only require the data version to be unchanged (index repairs).
    Check,
}

/// The outcome of [`ZooKeeperStore::write_job`].
struct Written {
    /// The zxid of the job write (the job's new version); 0 for `Delete`/`Check`.
    zxid: i64,
    /// Whether any index entry was created or deleted.
    index_changed: bool,
}

/// The index entries a stored job may have: the one its envelope names and the one its
/// JSON document names (they differ only in a record written by hand).
fn entries_of(node: &str, data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(env) = serde_json::from_slice::<Envelope>(data) {
        if let Some(t) = env.next_run_time {
            out.push(index_name(t, node));
        }
        if let Some(t) = document_next(&env) {
            let e = index_name(micros_ceil(t), node);
            if !out.contains(&e) {
                out.push(e);
            }
        }
    }
    out
}

/// The next run time the envelope's JSON document says (the truth; the envelope's own
/// `next_run_time` and the index entry are copies).
fn document_next(env: &Envelope) -> Option<DateTime<Utc>> {
    serde_json::from_str::<StoredJob>(&env.job)
        .ok()?
        .next_run_time
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

    /// The session, connecting (and creating the root paths) when there is none or the
    /// last one expired.
    async fn client(&self) -> Result<zk::Client> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            if !matches!(
                c.state(),
                zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed
            ) {
                return Ok(c.clone());
            }
        }
        let connect = zk::Client::connector()
            .with_session_timeout(self.session_timeout)
            .with_connection_timeout(Duration::from_secs(2))
            .with_fail_eagerly()
            .connect(&self.hosts);
        let c = tokio::time::timeout(self.session_timeout, connect)
            .await
            .map_err(|_| {
                self.state
                    .msg(format!("connecting to {}: timed out", self.hosts))
            })?
            .map_err(|e| self.state.err("connecting", e))?;
        for p in [self.jobs_path(), self.index_path()] {
            match c.mkdir(&p, &persistent()).await {
                Ok(()) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(self.state.err("creating the root path", e)),
            }
        }
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Wraps a call so that it fails (instead of waiting forever) while the server is away.
    async fn call<T, F>(&self, doing: &str, f: F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<T, zk::Error>>,
    {
        match tokio::time::timeout(self.session_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if matches!(e, zk::Error::SessionExpired | zk::Error::ClientClosed) {
                    *self.client.lock().await = None;
                }
                Err(self.state.err(doing, e))
            }
            Err(_) => Err(self.state.msg(format!("{doing}: timed out"))),
        }
    }

    fn envelope(job: &JobRecord) -> Result<Vec<u8>> {
        let env = Envelope {
            job: job.to_json()?,
            next_run_time: job.next_run_time.map(micros_ceil),
            lease_owner: job.lease.as_ref().map(|l| l.owner.clone()),
            lease_until: job.lease.as_ref().map(|l| micros_ceil(l.until)),
        };
        Ok(serde_json::to_vec(&env)?)
    }

    /// Decodes a job znode; corrupt ones are reported and `None` returned.
    fn decode(&self, node: &Node) -> Option<(JobRecord, Envelope)> {
        let id = decode_name(&node.name).unwrap_or_else(|| node.name.clone());
        let version = node.zxid.max(0) as u64;
        let text = String::from_utf8_lossy(&node.data);
        match serde_json::from_slice::<Envelope>(&node.data) {
            Ok(env) => {
                let job = self.state.decode(&id, &env.job, version, env.lease())?;
                Some((job, env))
            }
            Err(_) => {
                // Report the whole node text as the unparseable document.
                let _ = self.state.decode(&id, &text, version, None);
                None
            }
        }
    }

    /// Reads job znodes by node name in one multi-read; missing ones are left out.
    async fn read_nodes(&self, c: &zk::Client, names: &[String]) -> Result<Vec<Node>> {
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

    /// The index entries, sorted: the saved listing while the watch says nothing changed
    /// (see [`WatchState::listing`]), else a fresh one.
    async fn index(&self, c: &zk::Client) -> Result<Listing> {
        let armed = self.watch.armed.load(Ordering::SeqCst);
        let seen = self.watch.changes.load(Ordering::SeqCst);
        if armed {
            let saved = self.watch.listing.lock_unpoisoned();
            if let Some((at, listing)) = saved.as_ref() {
                if *at == seen {
                    return Ok(listing.clone());
                }
            }
        }
        let mut entries: Vec<(i64, String)> = self
            .call("listing the index", c.list_children(&self.index_path()))
            .await?
            .iter()
            .filter_map(|e| parse_index(e).map(|(t, n)| (t, n.to_string())))
            .collect();
        entries.sort();
        let entries = Arc::new(entries);
        if armed {
            *self.watch.listing.lock_unpoisoned() = Some((seen, entries.clone()));
        }
        Ok(entries)
    }

    /// Writes a job znode and its index in one `multi`: `op` on the node read at data
    /// `version`, deleting the index entries `stale` and creating `entry`. An entry already
    /// gone, or already there, is left out and the transaction retried without it, so the
    /// job and its index change together or not at all (a job can never be left without
    /// its entry). `Ok(None)` = the job changed since it was read. A `Check` whose index
    /// needs no change writes nothing.
    #[allow(clippy::too_many_arguments)]
    async fn write_job(
        &self,
        c: &zk::Client,
        node: &str,
        version: i32,
        op: JobOp<'_>,
        mut stale: Vec<String>,
        mut entry: Option<String>,
        doing: &str,
    ) -> Result<Option<Written>> {
        if let Some(e) = &entry {
            // Deleting and re-creating the same entry would change nothing: only create it
            // (which is dropped below if it exists).
            stale.retain(|s| s != e);
        }
        let path = self.job_path(node);
        let mut index_changed = false;
        // Each retry drops one op, so this ends.
        loop {
            if matches!(op, JobOp::Check) && stale.is_empty() && entry.is_none() {
                return Ok(Some(Written {
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
                    return Ok(Some(Written {
                        zxid,
                        index_changed,
                    }));
                }
                Ok(Err(zk::MultiWriteError::OperationFailed {
                    index: 0,
                    source: zk::Error::BadVersion | zk::Error::NoNode,
                })) => return Ok(None),
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
                        *self.client.lock().await = None;
                    }
                    return Err(self.state.err(doing, e));
                }
                Err(_) => return Err(self.state.msg(format!("{doing}: timed out"))),
            }
        }
    }

    /// Gives every unpaused job the index entry its document names, creating the missing
    /// ones: a job without its entry would never fire (left by an older apsched, whose
    /// repair path was not atomic, or by hand). Lists the jobs and the index once; run at
    /// start.
    async fn heal_index(&self, c: &zk::Client) -> Result<()> {
        let names = self
            .call("listing jobs", c.list_children(&self.jobs_path()))
            .await?;
        let entries: std::collections::HashSet<String> = self
            .call("listing the index", c.list_children(&self.index_path()))
            .await?
            .into_iter()
            .collect();
        for n in self.read_nodes(c, &names).await? {
            let Some(next) = serde_json::from_slice::<Envelope>(&n.data)
                .ok()
                .and_then(|env| document_next(&env))
            else {
                continue;
            };
            let want = index_name(micros_ceil(next), &n.name);
            if entries.contains(&want) {
                continue;
            }
            let id = decode_name(&n.name).unwrap_or_else(|| n.name.clone());
            match self
                .write_job(
                    c,
                    &n.name,
                    n.version,
                    JobOp::Check,
                    Vec::new(),
                    Some(want),
                    "repairing the index",
                )
                .await
            {
                Ok(Some(w)) if w.index_changed => self.state.report(
                    &id,
                    format!(
                        "the job had no index entry for its next run time {}: created",
                        next.to_rfc3339()
                    ),
                ),
                Ok(_) => {}
                Err(e) => self.state.report(&id, e.to_string()),
            }
        }
        Ok(())
    }

    /// Removes the index entry `entry` of a job znode that does not exist, in one `multi`
    /// that creates and deletes the job znode first, so it fails (and changes nothing) if
    /// the job was added meanwhile. Whether it removed the entry.
    async fn drop_orphan(&self, c: &zk::Client, node: &str, entry: &str) -> Result<bool> {
        let mut w = c.new_multi_writer();
        let path = self.job_path(node);
        let bad = |e| self.state.err("removing an index entry without a job", e);
        w.add_create(&path, &[], &persistent()).map_err(bad)?;
        w.add_delete(&path, Some(0)).map_err(bad)?;
        w.add_delete(&self.idx_path(entry), None).map_err(bad)?;
        let committed = tokio::time::timeout(self.session_timeout, w.commit()).await;
        self.watch.changed();
        match committed {
            Ok(Ok(_)) => Ok(true),
            // The job exists after all, or the entry is gone already.
            Ok(Err(zk::MultiWriteError::OperationFailed {
                source: zk::Error::NodeExists | zk::Error::NoNode,
                ..
            })) => Ok(false),
            Ok(Err(e)) => Err(bad(zk::Error::from(e))),
            Err(_) => Err(self
                .state
                .msg("removing an index entry without a job: timed out")),
        }
    }

    /// Repairs an index entry `entry` (due at `was`) that disagrees with its job: puts the
    /// job's index where its document says, or drops the entry if the job is gone. Reports
    /// what it changed; failures are reported, not returned (the claims of the pass stand).
    async fn repair(&self, c: &zk::Client, entry: &str, was: i64, node: Option<&Node>) {
        let node_name = parse_index(entry).map_or("", |(_, n)| n);
        let id = decode_name(node_name).unwrap_or_else(|| node_name.to_string());
        let r = match node {
            None => self
                .drop_orphan(c, node_name, entry)
                .await
                .map(|d| d.then(|| format!("index entry {entry} has no job: removed"))),
            Some(n) => {
                let next = serde_json::from_slice::<Envelope>(&n.data)
                    .ok()
                    .and_then(|env| document_next(&env));
                let mut stale = entries_of(&n.name, &n.data);
                if !stale.iter().any(|e| e == entry) {
                    stale.push(entry.to_string());
                }
                let want = next.map(|t| index_name(micros_ceil(t), &n.name));
                self.write_job(
                    c,
                    &n.name,
                    n.version,
                    JobOp::Check,
                    stale,
                    want,
                    "repairing an index entry",
                )
                .await
                .map(|w| {
                    w.filter(|w| w.index_changed).map(|_| {
                        format!(
                            "index entry said due {}, the job's document says {}: index repaired",
                            from_micros_saturating(was),
                            next.map_or_else(|| "paused".to_string(), |t| t.to_rfc3339())
                        )
                    })
                })
            }
        };
        match r {
            Ok(Some(what)) => self.state.report(&id, what),
            Ok(None) => {}
            Err(e) => self.state.report(&id, e.to_string()),
        }
    }

    /// Stops the watcher task, if one runs.
    fn stop_watcher(&self) {
        if let Some(stop) = self.watcher.lock_unpoisoned().take() {
            stop.cancel();
        }
        self.watch.set_armed(false);
        *self.watch.plan() = Plan::new();
    }

    /// Reads one job node, or `None`.
    async fn read_one(&self, c: &zk::Client, node: &str) -> Result<Option<Node>> {
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

    /// The earliest time this scheduler could claim a job (see [`JobStore::next_run_time`]).
    async fn earliest_claimable(&self) -> Result<Option<DateTime<Utc>>> {
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

    async fn claim_one(
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

/// The task that keeps a persistent recursive watch on `R/index` and wakes the loop (see
/// the [`ZooKeeperStore`]'s section on wake-ups).
struct Watcher {
    hosts: String,
    index: String,
    session_timeout: Duration,
    shared: Arc<WatchState>,
    ctx: StoreContext,
    stop: CancellationToken,
}

/// Why a watch session ended.
enum Ended {
    Stopped,
    /// The session is gone (expired, closed): open a new one.
    Lost(String),
    /// The server cannot watch (no `addWatch` before ZooKeeper 3.6): give up, poll instead.
    Unsupported,
}

impl Watcher {
    async fn run(self, armed: tokio::sync::oneshot::Sender<()>) {
        let mut armed = Some(armed);
        let mut delay = WATCH_MIN_BACKOFF;
        let mut healthy = true;
        loop {
            match self.session(&mut armed, &mut delay, &mut healthy).await {
                Ended::Stopped => return,
                Ended::Unsupported => {
                    tracing::warn!(
                        index = %self.index,
                        "ZooKeeper refuses persistent watches (needs 3.6+); polling every 1 s"
                    );
                    return;
                }
                Ended::Lost(why) => {
                    self.shared.set_armed(false);
                    if healthy {
                        tracing::warn!(index = %self.index, error = %why, "ZooKeeper watch lost; re-arming");
                    } else {
                        tracing::debug!(index = %self.index, error = %why, "ZooKeeper watch still down; retrying");
                    }
                    healthy = false;
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(WATCH_MAX_BACKOFF);
        }
    }

    /// One session: connect, arm the watch, follow its events until the session ends.
    async fn session(
        &self,
        armed_signal: &mut Option<tokio::sync::oneshot::Sender<()>>,
        delay: &mut Duration,
        healthy: &mut bool,
    ) -> Ended {
        let connect = zk::Client::connector()
            .with_session_timeout(self.session_timeout)
            .with_connection_timeout(Duration::from_secs(2))
            .with_fail_eagerly()
            .connect(&self.hosts);
        let client = tokio::select! {
            _ = self.stop.cancelled() => return Ended::Stopped,
            r = tokio::time::timeout(self.session_timeout, connect) => match r {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Ended::Lost(format!("connecting: {e}")),
                Err(_) => return Ended::Lost("connecting: timed out".into()),
            },
        };
        let add = client.watch(&self.index, zk::AddWatchMode::PersistentRecursive);
        let mut watcher = tokio::select! {
            _ = self.stop.cancelled() => return Ended::Stopped,
            r = tokio::time::timeout(self.session_timeout, add) => match r {
                Ok(Ok(w)) => w,
                Ok(Err(zk::Error::Unimplemented)) => return Ended::Unsupported,
                Ok(Err(e)) => return Ended::Lost(format!("adding the watch: {e}")),
                Err(_) => return Ended::Lost("adding the watch: timed out".into()),
            },
        };
        self.armed();
        if let Some(tx) = armed_signal.take() {
            let _ = tx.send(());
        } else {
            tracing::info!(index = %self.index, "ZooKeeper watch re-armed");
            // Changes made while the watch was down were not seen.
            self.ctx.wake_scheduler();
        }
        *delay = WATCH_MIN_BACKOFF;
        *healthy = true;
        let prefix = format!("{}/", self.index);
        loop {
            let event = tokio::select! {
                _ = self.stop.cancelled() => return Ended::Stopped,
                e = watcher.changed() => e,
            };
            // Any event may mean a change the saved listing lacks.
            self.shared.changed();
            match event.event_type {
                zk::EventType::Session => match event.session_state {
                    // Terminal: the watcher must not be polled again.
                    s if s.is_terminated() => return Ended::Lost(format!("session {s}")),
                    zk::SessionState::Disconnected => {
                        self.shared.set_armed(false);
                        tracing::debug!(index = %self.index, "ZooKeeper watch disconnected");
                    }
                    zk::SessionState::SyncConnected => {
                        // Same session, watch restored by the client; events may be lost.
                        self.armed();
                        self.ctx.wake_scheduler();
                    }
                    _ => {}
                },
                zk::EventType::NodeCreated => {
                    let at = event
                        .path
                        .strip_prefix(&prefix)
                        .and_then(parse_index)
                        .map_or(i64::MIN, |(t, _)| t);
                    if self.shared.entry_created(at) {
                        self.ctx.wake_scheduler();
                    }
                }
                // A removed entry or a later one never makes a job due sooner.
                _ => {}
            }
        }
    }

    fn armed(&self) {
        self.shared.set_armed(true);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_wakes_for_entries_before_the_planned_time() {
        let w = WatchState::new();
        assert!(w.entry_created(500), "nothing reported yet: always wake");
        assert!(
            !w.reported(Some(100)),
            "500 is after 100: the loop looks by then"
        );
        assert!(!w.entry_created(200), "after the planned time");
        assert!(!w.reported(Some(150)));
        assert!(w.entry_created(120), "earlier than planned");
        assert!(!w.reported(Some(120)), "the listing had it");
        // During the next pass the earliest job is claimed and an entry for 300 appears;
        // the pass reports 1000: its listing missed the entry, which must wake the loop.
        assert!(!w.entry_created(300));
        assert!(w.reported(Some(1000)));
        assert!(!w.reported(Some(1000)), "checked once");
        assert!(!w.reported(None));
        assert!(w.entry_created(i64::MAX - 1), "no jobs: always wake");
    }

    #[test]
    fn names_round_trip() {
        for id in ["a", "job/with/slashes", "..", "50%~off", "ünï", ""] {
            let n = encode(id);
            assert!(!n.contains('/') && !n.contains('~'), "{n}");
            assert_eq!(decode_name(&n).as_deref(), Some(id));
        }
    }
}
