//! The ZooKeeper job store (cargo feature `zookeeper`).
//!
//! The files are layered; each imports only from the layers below it:
//! 1. `envelope.rs`: the data of a job znode: a leaf; `names.rs`: znode names (encoded ids,
//!    index entries named by run time, the entries a job's data names);
//! 2. `watch.rs`: the watch state and the watcher task that wakes the scheduler loop;
//! 3. `client.rs`: `Client`, what every operation needs (ensemble, root, session, store
//!    and watch state) and the znode paths;
//! 4. operations of `Client`, each file using those before it: `session.rs` (connecting,
//!    calls bounded by the session timeout), `runs.rs` (the run ledger's znodes, reading
//!    them, the `multi` ops writing them), `nodes.rs` (job znodes: reading, writing a job
//!    with its index entry and any ledger ops), `index.rs` (listing and healing the index),
//!    `claim.rs` (next run time, claiming with the claim's run records, releasing; reading
//!    a job with its ledger state), `ledger.rs` (starting, finishing, manual runs,
//!    queries), `tick.rs` (the ledger's periodic pass);
//! 5. this module: [`ZooKeeperStore`], its settings and its [`JobStore`] impl (adding,
//!    updating, removing and reading jobs here; the claim in `claim.rs`).

mod claim;
mod client;
mod envelope;
mod index;
mod ledger;
mod names;
mod nodes;
mod runs;
mod session;
mod tick;
mod watch;

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use self::client::Client;
use self::names::{encode, entries_of, index_name, persistent};
use self::nodes::JobOp;
use self::watch::{Plan, Watcher, UNWATCHED_POLL};
use super::common::micros_ceil;
use super::{DueJob, JobStore, StoreContext};
use crate::error::{Error, Result};
use crate::job::{JobRecord, RunId};
use crate::ledger::{RunFilter, RunOutcome, RunRecord, RunTick};
use crate::store::common::{export_order, loaded};
use crate::store::export::UnloadableRecord;
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
/// | `R/runs/<run id, 20 digits>` | a run record: [`RunRecord`]'s JSON (`RunRecord::to_json`) |
/// | `R/history/j-<id>/<scheduled µs, 20 digits>~<run id, 20 digits>` | empty: one per record of the job (kept after the job is removed) |
/// | `R/active/j-<id>` | empty; its data version is the job's ledger lock |
/// | `R/active/j-<id>/<run id, 20 digits>~q\|r` | empty: one per active (claimed or started) run, `q` queued, `r` holding an instance |
/// | `R/owners/s-<scheduler id>` | `{"alive_until": <µs>, "alive_until_utc": "<RFC 3339>"}`: the scheduler's heartbeat |
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
/// # Run ledger
/// When the scheduler keeps a ledger, the claim's multi-read also reads each due job's
/// `R/active/j-<id>` (data version and children) and the existence of its history
/// directory; the claim's records are planned from those markers ([`DueJob::plan_runs`])
/// and written in the claim's own `multi`: the record, its history entry and, for an active
/// run, its marker, plus `set_data` on `R/active/j-<id>` at the version read (and the
/// `cancel_requested` flags, by the records' data versions). Every write that adds an
/// instance-holding run (claims, manual runs, retries, promotions of queued runs) sets that
/// lock at the version it read, so two of them cannot both count the same free instance; a
/// refused lock makes the writer read and plan again. A crash cannot leave a claimed slot
/// without its record: both are in one transaction. The periodic pass
/// ([`JobStore::tick_runs`]) writes this scheduler's heartbeat, takes over the active runs
/// of schedulers whose heartbeat expired (by data version, so two takers never both take
/// a run), promotes queued runs, and prunes (at most 1000 records a pass). Queries list the
/// history entries, whose names carry the scheduled time and run id, and read records
/// newest first until the page is full.
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
    client: Client,
    poll_interval: Option<Duration>,
    watcher: std::sync::Mutex<Option<CancellationToken>>,
}

impl std::fmt::Debug for ZooKeeperStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperStore")
            .field("hosts", &self.client.hosts)
            .field("root", &self.client.root)
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
        Ok(ZooKeeperStore {
            client: Client::new(hosts),
            poll_interval: Some(Duration::from_secs(30)),
            watcher: std::sync::Mutex::new(None),
        })
    }

    /// Sets the root path (default `/apsched`); created if missing.
    pub fn with_root(mut self, root: impl Into<String>) -> Self {
        let root: String = root.into();
        let root = root.trim_end_matches('/');
        self.client.root = if root.starts_with('/') {
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
        self.client.session_timeout = timeout.min(Duration::from_millis(i32::MAX as u64));
        self
    }

    /// The root path.
    pub fn root(&self) -> &str {
        &self.client.root
    }

    /// Stops the watcher task, if one runs.
    fn stop_watcher(&self) {
        if let Some(stop) = self.watcher.lock_unpoisoned().take() {
            stop.cancel();
        }
        self.client.watch.set_armed(false);
        *self.client.watch.plan() = Plan::new();
    }
}

#[async_trait::async_trait]
impl JobStore for ZooKeeperStore {
    async fn start(&self, ctx: StoreContext) -> Result<()> {
        self.client.state.set_ctx(Some(ctx.clone()));
        self.client.state.forget_all_corrupt();
        let c = self.client.session().await?;
        if let Err(e) = self.client.heal_index(&c).await {
            tracing::warn!(root = %self.client.root, error = %e, "could not check the index at start");
        }
        self.stop_watcher();
        let stop = CancellationToken::new();
        *self.watcher.lock_unpoisoned() = Some(stop.clone());
        let (armed_tx, armed_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(
            Watcher {
                hosts: self.client.hosts.clone(),
                index: self.client.index_path(),
                session_timeout: self.client.session_timeout,
                shared: self.client.watch.clone(),
                ctx,
                stop,
            }
            .run(armed_tx),
        );
        // Changes made after `start` returns must not be missed: wait for the watch (a
        // failure here is not fatal, the store polls every second until it is armed).
        if tokio::time::timeout(self.client.session_timeout, armed_rx)
            .await
            .is_err()
        {
            tracing::warn!(root = %self.client.root, "ZooKeeper watch not armed yet; polling meanwhile");
        }
        Ok(())
    }

    async fn shutdown(&self) -> Result<()> {
        self.stop_watcher();
        *self.client.session.lock().await = None;
        Ok(())
    }

    async fn add_job(&self, mut job: JobRecord, replace_existing: bool) -> Result<()> {
        job.lease = None;
        let data = Client::envelope(&job)?;
        let c = self.client.session().await?;
        let node = encode(&job.id);
        let entry = job.next_run_time.map(|t| index_name(micros_ceil(t), &node));
        loop {
            match self.client.read_one(&c, &node).await? {
                None => {
                    let mut w = c.new_multi_writer();
                    let bad = |e| self.client.state.err("adding a job", e);
                    w.add_create(&self.client.job_path(&node), &data, &persistent())
                        .map_err(bad)?;
                    if let Some(e) = &entry {
                        w.add_create(&self.client.idx_path(e), &[], &persistent())
                            .map_err(bad)?;
                    }
                    let committed =
                        tokio::time::timeout(self.client.session_timeout, w.commit()).await;
                    self.client.watch.changed();
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
                            w.add_create(&self.client.job_path(&node), &data, &persistent())
                                .map_err(bad)?;
                            let committed = self
                                .client
                                .call("adding a job", async {
                                    w.commit().await.map_err(zk::Error::from)
                                })
                                .await;
                            self.client.watch.changed();
                            committed?;
                            break;
                        }
                        Ok(Err(e)) => {
                            return Err(self.client.state.err("adding a job", zk::Error::from(e)))
                        }
                        Err(_) => return Err(self.client.state.msg("adding a job: timed out")),
                    }
                }
                Some(old) => {
                    if !replace_existing {
                        return Err(Error::ConflictingId(job.id));
                    }
                    let stale = entries_of(&node, &old.data);
                    if self
                        .client
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
        self.client.state.forget_corrupt(&job.id);
        Ok(())
    }

    async fn update_job(&self, mut job: JobRecord) -> Result<JobRecord> {
        job.lease = None;
        let data = Client::envelope(&job)?;
        let c = self.client.session().await?;
        let node = encode(&job.id);
        let Some(old) = self.client.read_one(&c, &node).await? else {
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
            .client
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
        self.client.state.forget_corrupt(&job.id);
        job.version = w.zxid.max(0) as u64;
        Ok(job)
    }

    async fn remove_job(&self, id: &str) -> Result<()> {
        let c = self.client.session().await?;
        let node = encode(id);
        loop {
            let Some(old) = self.client.read_one(&c, &node).await? else {
                return Err(Error::JobLookup(id.to_string()));
            };
            let stale = entries_of(&node, &old.data);
            if self
                .client
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
                self.client.state.forget_corrupt(id);
                return Ok(());
            }
        }
    }

    async fn remove_all_jobs(&self) -> Result<()> {
        let c = self.client.session().await?;
        for parent in [self.client.index_path(), self.client.jobs_path()] {
            let children = self
                .client
                .call("removing all jobs", c.list_children(&parent))
                .await?;
            for ch in children {
                match self
                    .client
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
        self.client.watch.changed();
        self.client.state.forget_all_corrupt();
        Ok(())
    }

    async fn lookup_job(&self, id: &str) -> Result<Option<JobRecord>> {
        let c = self.client.session().await?;
        let node = encode(id);
        let Some(n) = self.client.read_one(&c, &node).await? else {
            return Ok(None);
        };
        match self.client.decode(&n) {
            Ok((job, _)) => Ok(Some(job)),
            Err(u) => Err(Error::CorruptJob {
                id: id.to_string(),
                reason: u.reason,
            }),
        }
    }

    async fn get_all_jobs(&self) -> Result<Vec<JobRecord>> {
        Ok(loaded(self.export_records().await?))
    }

    async fn export_records(
        &self,
    ) -> Result<Vec<std::result::Result<JobRecord, UnloadableRecord>>> {
        let c = self.client.session().await?;
        let names = self
            .client
            .call("listing jobs", c.list_children(&self.client.jobs_path()))
            .await?;
        let nodes = self.client.read_nodes(&c, &names).await?;
        Ok(export_order(
            nodes
                .iter()
                .map(|n| self.client.decode(n).map(|(j, _)| j))
                .collect(),
        ))
    }

    async fn next_run_time(&self) -> Result<Option<DateTime<Utc>>> {
        self.client.next_run_time().await
    }

    async fn acquire_due_jobs(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueJob>> {
        self.client.acquire_due_jobs(now, limit).await
    }

    async fn release_jobs(&self, jobs: &[DueJob]) -> Result<()> {
        self.client.release_jobs(jobs).await
    }

    fn keeps_runs(&self) -> bool {
        true
    }

    async fn start_runs(&self, run_ids: &[RunId], now: DateTime<Utc>) -> Result<Vec<RunId>> {
        self.client.start_runs(run_ids, now).await
    }

    async fn finish_runs(&self, outcomes: &[RunOutcome]) -> Result<()> {
        self.client.finish_runs(outcomes).await
    }

    async fn add_runs(&self, runs: &[RunRecord]) -> Result<()> {
        self.client.add_runs(runs).await
    }

    async fn add_manual_runs(
        &self,
        job_id: &str,
        slots: &[DateTime<Utc>],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunRecord>> {
        self.client.add_manual_runs(job_id, slots, now).await
    }

    async fn tick_runs(&self, now: DateTime<Utc>) -> Result<RunTick> {
        self.client.tick_runs(now).await
    }

    async fn heartbeat(&self, now: DateTime<Utc>) -> Result<()> {
        self.client.heartbeat(now).await
    }

    async fn query_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        self.client.query_runs(filter).await
    }

    async fn get_run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
        self.client.get_run(run_id).await
    }

    fn poll_interval(&self) -> Option<Duration> {
        if self.client.watch.armed.load(Ordering::SeqCst) {
            self.poll_interval
        } else {
            self.poll_interval.map(|p| p.min(UNWATCHED_POLL))
        }
    }

    fn is_persistent(&self) -> bool {
        true
    }
}
