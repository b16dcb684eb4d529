//! The Redis job store (cargo feature `redis`).
//!
//! The files are layered; each imports only from the layers below it:
//! 1. `layout.rs` (keys under the prefix; leases, versions and run times as stored values)
//!    and `scripts.rs` (the Lua scripts): leaves;
//!    `runs_layout.rs` (the run ledger's keys and a run as hash fields) and
//!    `runs_scripts.rs` (the ledger's Lua scripts, and the helpers the claim script uses
//!    to write run records) are leaves too;
//! 2. `client.rs`: `Client`, what every operation needs (client, connection, keys, scripts,
//!    store state); `listen.rs`: the pub/sub listener;
//! 3. `records.rs` (reading records in batches, repairing the index), `runs.rs` (the
//!    ledger's write path: what the claim reads and writes, starting, finishing and manual
//!    runs), `claim.rs` (next run time, claiming and releasing due jobs, with their run
//!    records), `runs_query.rs` (reading runs) and `runs_tick.rs` (the ledger's periodic
//!    pass): operations of `Client`;
//! 4. this module: [`RedisStore`], its settings and its [`JobStore`] impl (adding, updating,
//!    removing and reading jobs here; the claim in `claim.rs`, the ledger in `runs*.rs`).

mod claim;
mod client;
mod layout;
mod listen;
mod records;
mod runs;
mod runs_layout;
mod runs_query;
mod runs_scripts;
mod runs_tick;
mod scripts;

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use self::client::Client;
use self::layout::{parse_lease, parse_version, score};
use self::listen::listen;
use super::{DueJob, JobStore, StoreContext};
use crate::error::{Error, Result};
use crate::job::{JobRecord, RunId};
use crate::ledger::{RunFilter, RunOutcome, RunRecord, RunTick};
use crate::store::common::{export_order, loaded};
use crate::store::export::UnloadableRecord;
use crate::sync::MutexExt;

/// Keeps jobs in Redis; several schedulers (processes) may share one prefix. See the
/// sections below for the data layout and the claim protocol.
///
/// ```no_run
/// # async fn f() -> apsched::Result<()> {
/// use apsched::store::RedisStore;
/// let store = RedisStore::new("redis://127.0.0.1/")?.with_prefix("myapp:jobs");
/// # Ok(()) }
/// ```
///
/// # Data layout
/// Under a configurable key prefix `P` (default `apsched`), so several applications can
/// share one Redis:
///
/// | key | type | content |
/// |---|---|---|
/// | `P:jobs` | hash | job id → JSON document ([`StoredJob`](crate::job::StoredJob)) |
/// | `P:versions` | hash | job id → version (a new value of `P:version_seq` at every write) |
/// | `P:version_seq` | string | counter: versions never repeat, even across remove and re-add |
/// | `P:leases` | hash | job id → `"<until, µs since epoch> <scheduler id>"` |
/// | `P:run_times` | sorted set | job id, scored by next run time (µs since epoch rounded up to a double; the document has the exact time); paused jobs are absent |
/// | `P:wakeup` | pub/sub channel | the id of a scheduler that changed a job |
///
/// The run ledger's keys (see [Run ledger](#run-ledger); `<run>` is the run id zero-padded
/// to 19 digits, times in records are RFC 3339 text, scores are µs since the epoch):
///
/// | key | type | content |
/// |---|---|---|
/// | `P:run:<run>` | hash | one run: `run_id`, `job_id`, `scheduled`, `owner`, `manual` (0/1), `attempt`, `state`, `queued` (0/1), `cancel_requested` (0/1), `submitted_at`, and when set `retry_at`, `started_at`, `finished_at`, `error`, `output` |
/// | `P:runs:all` | sorted set | every run, scored by scheduled time |
/// | `P:runs:job:<job id>` | sorted set | the job's runs, scored by scheduled time |
/// | `P:runs:done:<job id>` | sorted set | the job's finished runs, scored by scheduled time |
/// | `P:runs:finished` | sorted set | every finished run, scored by finish time |
/// | `P:runs:done_count` | sorted set | job id, scored by its number of finished runs |
/// | `P:runs:active:<job id>` | hash | the job's active runs: run → `claimed`, `queued` or `started` |
/// | `P:runs:stamps` | hash | job id → stamp of its active runs (from `P:runs:stamp_seq`) |
/// | `P:runs:owned:<scheduler id>` | set | the scheduler's active runs |
/// | `P:runs:owners` | set | schedulers with active runs |
/// | `P:runs:queued` | set | jobs that may have queued runs |
/// | `P:runs:cancel` | set | active runs flagged `cancel_requested` |
/// | `P:heartbeats` | sorted set | scheduler id, scored by the time it is alive until |
///
/// # Claiming
/// [`JobStore::acquire_due_jobs`] reads the due candidates from the sorted set, applies the
/// due-run rule ([`DueJob::claim`]) in Rust, then writes the results back with one Lua
/// script that, per job, checks that the version is unchanged and that no other scheduler
/// holds an unexpired lease, and only then writes document, score, version and lease
/// (compare-and-swap). A scheduler that loses the race for a job skips it, so no
/// scheduled time of a job is submitted by two schedulers. A due index entry whose
/// document is not due (or that has no job) is repaired to what the document says and
/// reported, so the loop never spins on it.
///
/// # Run ledger
/// Each run is a hash `P:run:<run>`, listed by sorted sets scored by its scheduled time
/// (`P:runs:all`, `P:runs:job:<job id>`); the table above has every key. The claim script writes a claim's run records together with the claim, so a crash
/// never leaves a claimed slot without its record. The overlap rule counts the job's
/// active runs (`P:runs:active:<job id>`), read with the candidates; the script writes
/// only if the job's stamp (`P:runs:stamps`, renewed whenever the job gains an active run,
/// one starts or one is promoted) is still the one read, else the job is read and planned
/// again. Schedulers record heartbeats in `P:heartbeats` (alive-until times from the
/// scheduler's clock); the periodic pass takes over the runs of those that stopped.
/// Retries ([`JobStore::add_runs`]) are written by one script as the claim writes a run,
/// skipping a run id or (for scheduled runs) a job, scheduled time and attempt already
/// stored. Removing a job keeps its runs; retention deletes them.
pub struct RedisStore {
    client: Client,
    poll_interval: Option<Duration>,
    stop: Mutex<Option<CancellationToken>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.client.prefix)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on the Redis server at `url` (`redis://[user:password@]host[:port][/db]`),
    /// with the key prefix `apsched`. Parts left out get redis-cli's defaults: host
    /// `localhost` (so `redis://` alone works), port 6379, database 0. Connects when the
    /// scheduler starts.
    pub fn new(url: &str) -> Result<Self> {
        Ok(RedisStore {
            client: Client::new(url)?,
            poll_interval: Some(Duration::from_secs(30)),
            stop: Mutex::new(None),
        })
    }

    /// Sets the key prefix (default `apsched`); every key this store uses starts with
    /// `prefix:`.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.client.prefix = prefix.into();
        self
    }

    /// How often the scheduler looks at the store even without a pub/sub wake-up (a
    /// safety net for messages lost while disconnected). Default 30 s; `None` disables it.
    pub fn with_poll_interval(mut self, interval: Option<Duration>) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long one Redis call may take before it fails with a store error (default 5 s).
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.client.response_timeout = timeout;
        self
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.client.prefix
    }
}

#[async_trait::async_trait]
impl JobStore for RedisStore {
    async fn start(&self, ctx: StoreContext) -> Result<()> {
        self.client.state.set_ctx(Some(ctx.clone()));
        self.client.state.forget_all_corrupt();
        let mut conn = self.client.conn().await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.client.state.err("connecting", e))?;
        let stop = CancellationToken::new();
        if let Some(old) = self.stop.lock_unpoisoned().replace(stop.clone()) {
            old.cancel();
        }
        tokio::spawn(listen(
            self.client.redis.clone(),
            self.client.keys().channel,
            ctx,
            stop,
        ));
        Ok(())
    }

    async fn shutdown(&self) -> Result<()> {
        if let Some(stop) = self.stop.lock_unpoisoned().take() {
            stop.cancel();
        }
        Ok(())
    }

    async fn add_job(&self, job: JobRecord, replace_existing: bool) -> Result<()> {
        let doc = job.to_json()?;
        let k = self.client.keys();
        let mut conn = self.client.conn().await?;
        let added: i64 = self
            .client
            .scripts
            .add
            .key(&k.jobs)
            .key(&k.versions)
            .key(&k.leases)
            .key(&k.run_times)
            .key(&k.channel)
            .key(&k.version_seq)
            .arg(&job.id)
            .arg(&doc)
            .arg(score(job.next_run_time))
            .arg(if replace_existing { "1" } else { "0" })
            .arg(self.client.state.owner())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.client.state.err("adding a job", e))?;
        if added == 0 {
            return Err(Error::ConflictingId(job.id));
        }
        self.client.state.forget_corrupt(&job.id);
        Ok(())
    }

    /// One script call (`ADD_MANY_SCRIPT`): all or nothing, one PUBLISH.
    async fn add_jobs(&self, jobs: Vec<JobRecord>, replace_existing: bool) -> Result<()> {
        let jobs = super::dedupe_batch(jobs, replace_existing)?;
        if jobs.is_empty() {
            return Ok(());
        }
        let k = self.client.keys();
        let mut invocation = self.client.scripts.add_many.prepare_invoke();
        invocation
            .key(&k.jobs)
            .key(&k.versions)
            .key(&k.leases)
            .key(&k.run_times)
            .key(&k.channel)
            .key(&k.version_seq)
            .arg(if replace_existing { "1" } else { "0" })
            .arg(self.client.state.owner());
        for job in &jobs {
            invocation
                .arg(&job.id)
                .arg(job.to_json()?)
                .arg(score(job.next_run_time));
        }
        let mut conn = self.client.conn().await?;
        let r: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.client.state.err("adding jobs", e))?;
        if r < 0 {
            let taken = usize::try_from(-r - 1)
                .ok()
                .and_then(|i| jobs.get(i))
                .map_or_else(String::new, |j| j.id.clone());
            return Err(Error::ConflictingId(taken));
        }
        for job in &jobs {
            self.client.state.forget_corrupt(&job.id);
        }
        Ok(())
    }

    async fn update_job(&self, mut job: JobRecord) -> Result<JobRecord> {
        let doc = job.to_json()?;
        let k = self.client.keys();
        let mut conn = self.client.conn().await?;
        let r: i64 = self
            .client
            .scripts
            .update
            .key(&k.jobs)
            .key(&k.versions)
            .key(&k.leases)
            .key(&k.run_times)
            .key(&k.channel)
            .key(&k.version_seq)
            .arg(&job.id)
            .arg(job.version.to_string())
            .arg(&doc)
            .arg(score(job.next_run_time))
            .arg(self.client.state.owner())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.client.state.err("updating a job", e))?;
        match r {
            -1 => Err(Error::JobLookup(job.id)),
            0 => Err(Error::Fenced(job.id)),
            version => {
                self.client.state.forget_corrupt(&job.id);
                job.version = version.max(0) as u64;
                job.lease = None;
                Ok(job)
            }
        }
    }

    async fn remove_job(&self, id: &str) -> Result<()> {
        let k = self.client.keys();
        let mut conn = self.client.conn().await?;
        let (n,): (i64,) = redis::pipe()
            .atomic()
            .hdel(&k.jobs, id)
            .hdel(&k.versions, id)
            .ignore()
            .hdel(&k.leases, id)
            .ignore()
            .zrem(&k.run_times, id)
            .ignore()
            .publish(&k.channel, self.client.state.owner())
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|e| self.client.state.err("removing a job", e))?;
        self.client.state.forget_corrupt(id);
        if n == 0 {
            return Err(Error::JobLookup(id.to_string()));
        }
        Ok(())
    }

    async fn remove_all_jobs(&self) -> Result<()> {
        let k = self.client.keys();
        let mut conn = self.client.conn().await?;
        let () = redis::pipe()
            .atomic()
            .del(&[&k.jobs, &k.versions, &k.leases, &k.run_times])
            .ignore()
            .publish(&k.channel, self.client.state.owner())
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|e| self.client.state.err("removing all jobs", e))?;
        self.client.state.forget_all_corrupt();
        Ok(())
    }

    async fn lookup_job(&self, id: &str) -> Result<Option<JobRecord>> {
        let mut conn = self.client.conn().await?;
        let ids = [id.to_string()];
        let (docs, versions, leases) = self.client.fetch(&mut conn, &ids).await?;
        let (Some(Some(doc)), Some(v), Some(l)) = (
            docs.into_iter().next(),
            versions.into_iter().next(),
            leases.into_iter().next(),
        ) else {
            return Ok(None);
        };
        let version = parse_version(v);
        match self.client.state.decode(id, &doc, version, parse_lease(l)) {
            Ok(job) => Ok(Some(job)),
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
        let k = self.client.keys();
        let mut conn = self.client.conn().await?;
        let (docs, versions, leases): (
            std::collections::HashMap<String, String>,
            std::collections::HashMap<String, String>,
            std::collections::HashMap<String, String>,
        ) = redis::pipe()
            .atomic()
            .hgetall(&k.jobs)
            .hgetall(&k.versions)
            .hgetall(&k.leases)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.client.state.err("reading all jobs", e))?;
        let mut versions = versions;
        let mut leases = leases;
        Ok(export_order(
            docs.into_iter()
                .map(|(id, doc)| {
                    let version = parse_version(versions.remove(&id));
                    let lease = parse_lease(leases.remove(&id));
                    self.client.state.decode(&id, &doc, version, lease)
                })
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

    /// One script per call (`START_SCRIPT`).
    async fn start_runs(&self, run_ids: &[RunId], now: DateTime<Utc>) -> Result<Vec<RunId>> {
        self.client.start_runs(run_ids, now).await
    }

    /// One script per call (`FINISH_SCRIPT`).
    async fn finish_runs(&self, outcomes: &[RunOutcome]) -> Result<()> {
        self.client.finish_runs(outcomes).await
    }

    /// One script per call (`ADD_SCRIPT`).
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
        self.poll_interval
    }

    fn is_persistent(&self) -> bool {
        true
    }
}
