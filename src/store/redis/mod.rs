//! The Redis job store (cargo feature `redis`): the store and its [`JobStore`]
//! implementation here; the Lua scripts in `scripts`, keys and stored values in `layout`,
//! reading records and repairing the index in `records`, the pub/sub listener in `listen`.

mod layout;
mod listen;
mod records;
mod scripts;

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use self::layout::{
    from_score, parse_lease, parse_version, score, score_of, with_default_host, Keys, EXACT_SCORES,
};
use self::listen::listen;
use self::scripts::Scripts;
use super::common::{
    claimable_at, from_micros_saturating, held_by_other, lease_until, micros_ceil, sort_jobs,
};
use super::documents::StoreState;
use super::{DueJob, JobStore, StoreContext};
use crate::error::{Error, Result};
use crate::job::{JobRecord, Lease, StoredJob};
use crate::sync::MutexExt;

/// How many sorted-set entries are read per round trip when scanning for due jobs.
const PAGE: usize = 256;

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
/// | `P:jobs` | hash | job id → JSON document ([`StoredJob`]) |
/// | `P:versions` | hash | job id → version (a new value of `P:version_seq` at every write) |
/// | `P:version_seq` | string | counter: versions never repeat, even across remove and re-add |
/// | `P:leases` | hash | job id → `"<until, µs since epoch> <scheduler id>"` |
/// | `P:run_times` | sorted set | job id, scored by next run time (µs since epoch rounded up to a double; the document has the exact time); paused jobs are absent |
/// | `P:wakeup` | pub/sub channel | the id of a scheduler that changed a job |
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
pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    poll_interval: Option<Duration>,
    response_timeout: Duration,
    conn: Mutex<Option<ConnectionManager>>,
    state: StoreState,
    stop: Mutex<Option<CancellationToken>>,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
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
        let state = StoreState::new("redis");
        let client = redis::Client::open(with_default_host(url).as_ref())
            .map_err(|e| state.err("invalid Redis URL", e))?;
        Ok(RedisStore {
            client,
            prefix: "apsched".into(),
            poll_interval: Some(Duration::from_secs(30)),
            response_timeout: Duration::from_secs(5),
            conn: Mutex::new(None),
            state,
            stop: Mutex::new(None),
            scripts: Scripts::new(),
        })
    }

    /// Sets the key prefix (default `apsched`); every key this store uses starts with
    /// `prefix:`.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
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
        self.response_timeout = timeout;
        self
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn keys(&self) -> Keys {
        let p = &self.prefix;
        Keys {
            jobs: format!("{p}:jobs"),
            versions: format!("{p}:versions"),
            leases: format!("{p}:leases"),
            run_times: format!("{p}:run_times"),
            channel: format!("{p}:wakeup"),
            version_seq: format!("{p}:version_seq"),
        }
    }

    async fn conn(&self) -> Result<ConnectionManager> {
        if let Some(c) = self.conn.lock_unpoisoned().clone() {
            return Ok(c);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let c = self
            .client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| self.state.err("connecting", e))?;
        *self.conn.lock_unpoisoned() = Some(c.clone());
        Ok(c)
    }
}

#[async_trait::async_trait]
impl JobStore for RedisStore {
    async fn start(&self, ctx: StoreContext) -> Result<()> {
        self.state.set_ctx(Some(ctx.clone()));
        self.state.forget_all_corrupt();
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.state.err("connecting", e))?;
        let stop = CancellationToken::new();
        if let Some(old) = self.stop.lock_unpoisoned().replace(stop.clone()) {
            old.cancel();
        }
        tokio::spawn(listen(self.client.clone(), self.keys().channel, ctx, stop));
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
        let k = self.keys();
        let mut conn = self.conn().await?;
        let added: i64 = self
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
            .arg(self.state.owner())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.state.err("adding a job", e))?;
        if added == 0 {
            return Err(Error::ConflictingId(job.id));
        }
        self.state.forget_corrupt(&job.id);
        Ok(())
    }

    /// One script call (`ADD_MANY_SCRIPT`): all or nothing, one PUBLISH.
    async fn add_jobs(&self, jobs: Vec<JobRecord>, replace_existing: bool) -> Result<()> {
        let jobs = super::dedupe_batch(jobs, replace_existing)?;
        if jobs.is_empty() {
            return Ok(());
        }
        let k = self.keys();
        let mut invocation = self.scripts.add_many.prepare_invoke();
        invocation
            .key(&k.jobs)
            .key(&k.versions)
            .key(&k.leases)
            .key(&k.run_times)
            .key(&k.channel)
            .key(&k.version_seq)
            .arg(if replace_existing { "1" } else { "0" })
            .arg(self.state.owner());
        for job in &jobs {
            invocation
                .arg(&job.id)
                .arg(job.to_json()?)
                .arg(score(job.next_run_time));
        }
        let mut conn = self.conn().await?;
        let r: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.state.err("adding jobs", e))?;
        if r < 0 {
            let taken = usize::try_from(-r - 1)
                .ok()
                .and_then(|i| jobs.get(i))
                .map_or_else(String::new, |j| j.id.clone());
            return Err(Error::ConflictingId(taken));
        }
        for job in &jobs {
            self.state.forget_corrupt(&job.id);
        }
        Ok(())
    }

    async fn update_job(&self, mut job: JobRecord) -> Result<JobRecord> {
        let doc = job.to_json()?;
        let k = self.keys();
        let mut conn = self.conn().await?;
        let r: i64 = self
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
            .arg(self.state.owner())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.state.err("updating a job", e))?;
        match r {
            -1 => Err(Error::JobLookup(job.id)),
            0 => Err(Error::Fenced(job.id)),
            version => {
                self.state.forget_corrupt(&job.id);
                job.version = version.max(0) as u64;
                job.lease = None;
                Ok(job)
            }
        }
    }

    async fn remove_job(&self, id: &str) -> Result<()> {
        let k = self.keys();
        let mut conn = self.conn().await?;
        let (n,): (i64,) = redis::pipe()
            .atomic()
            .hdel(&k.jobs, id)
            .hdel(&k.versions, id)
            .ignore()
            .hdel(&k.leases, id)
            .ignore()
            .zrem(&k.run_times, id)
            .ignore()
            .publish(&k.channel, self.state.owner())
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|e| self.state.err("removing a job", e))?;
        self.state.forget_corrupt(id);
        if n == 0 {
            return Err(Error::JobLookup(id.to_string()));
        }
        Ok(())
    }

    async fn remove_all_jobs(&self) -> Result<()> {
        let k = self.keys();
        let mut conn = self.conn().await?;
        let () = redis::pipe()
            .atomic()
            .del(&[&k.jobs, &k.versions, &k.leases, &k.run_times])
            .ignore()
            .publish(&k.channel, self.state.owner())
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|e| self.state.err("removing all jobs", e))?;
        self.state.forget_all_corrupt();
        Ok(())
    }

    async fn lookup_job(&self, id: &str) -> Result<Option<JobRecord>> {
        let mut conn = self.conn().await?;
        let ids = [id.to_string()];
        let (docs, versions, leases) = self.fetch(&mut conn, &ids).await?;
        let (Some(Some(doc)), Some(v), Some(l)) = (
            docs.into_iter().next(),
            versions.into_iter().next(),
            leases.into_iter().next(),
        ) else {
            return Ok(None);
        };
        let version = parse_version(v);
        match self.state.decode(id, &doc, version, parse_lease(l)) {
            Some(job) => Ok(Some(job)),
            None => Err(Error::CorruptJob {
                id: id.to_string(),
                reason: self
                    .state
                    .check(id, &doc)
                    .err()
                    .unwrap_or_else(|| "unreadable".into()),
            }),
        }
    }

    async fn get_all_jobs(&self) -> Result<Vec<JobRecord>> {
        let k = self.keys();
        let mut conn = self.conn().await?;
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
            .map_err(|e| self.state.err("reading all jobs", e))?;
        let mut versions = versions;
        let mut leases = leases;
        let mut jobs: Vec<JobRecord> = docs
            .into_iter()
            .filter_map(|(id, doc)| {
                let version = parse_version(versions.remove(&id));
                let lease = parse_lease(leases.remove(&id));
                self.state.decode(&id, &doc, version, lease)
            })
            .collect();
        sort_jobs(&mut jobs);
        Ok(jobs)
    }

    async fn next_run_time(&self) -> Result<Option<DateTime<Utc>>> {
        let k = self.keys();
        let me = self.state.owner();
        let now = self.state.now();
        let mut conn = self.conn().await?;
        let mut offset = 0isize;
        let mut best: Option<DateTime<Utc>> = None;
        loop {
            let page: Vec<(String, f64)> = conn
                .zrange_withscores(&k.run_times, offset, offset + PAGE as isize - 1)
                .await
                .map_err(|e| self.state.err("reading next run times", e))?;
            if page.is_empty() {
                return Ok(best);
            }
            let ids: Vec<&str> = page.iter().map(|(id, _)| id.as_str()).collect();
            // Scores beyond 2^53 µs are rounded up; those jobs' documents have the exact time.
            let inexact: Vec<&str> = page
                .iter()
                .filter(|(_, s)| *s >= EXACT_SCORES)
                .map(|(id, _)| id.as_str())
                .collect();
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET").arg(&k.leases).arg(&ids);
            if !inexact.is_empty() {
                pipe.cmd("HMGET").arg(&k.jobs).arg(&inexact);
            }
            let mut read: Vec<Vec<Option<String>>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.state.err("reading leases", e))?;
            let docs = if inexact.is_empty() {
                Vec::new()
            } else {
                read.pop().unwrap_or_default()
            };
            let leases = read.pop().unwrap_or_default();
            let mut exact: std::collections::HashMap<&str, DateTime<Utc>> = inexact
                .iter()
                .zip(docs)
                .filter_map(|(id, doc)| {
                    let stored: StoredJob = serde_json::from_str(&doc?).ok()?;
                    Some((*id, stored.next_run_time?))
                })
                .collect();
            let last = from_score(page[page.len() - 1].1);
            for ((id, s), l) in page.iter().zip(leases) {
                if self.state.is_corrupt(id) {
                    continue;
                }
                let next = exact.remove(id.as_str()).unwrap_or_else(|| from_score(*s));
                let at = claimable_at(next, parse_lease(l).as_ref(), &me, now);
                best = Some(best.map_or(at, |b| b.min(at)));
            }
            // Entries further on are due no earlier than `last`.
            if page.len() < PAGE || best.is_some_and(|b| b <= last) {
                return Ok(best);
            }
            offset += PAGE as isize;
        }
    }

    async fn acquire_due_jobs(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueJob>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let k = self.keys();
        let me = self.state.owner();
        let lease_until = lease_until(now, self.state.lease());
        let lease_value = format!("{} {me}", micros_ceil(lease_until));
        let mut conn = self.conn().await?;
        let page = limit.clamp(16, 1024);
        let mut offset = 0usize;
        let mut claims: Vec<(DueJob, u64)> = Vec::new();
        // Index entries that disagree with their job: (id, None) for an entry without a
        // job, (id, Some((version, next))) for a job whose document is not due.
        let mut repairs: Vec<(String, f64, Option<(u64, Option<DateTime<Utc>>)>)> = Vec::new();
        let now_us = now.timestamp_micros();
        // Scores are rounded up (`score_of`), so the bound is too: a job due at `now` is found.
        let bound = score_of(now_us).to_string();
        while claims.len() < limit {
            let entries: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(&k.run_times)
                .arg("-inf")
                .arg(&bound)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(offset)
                .arg(page)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await
                .map_err(|e| self.state.err("reading due jobs", e))?;
            if entries.is_empty() {
                break;
            }
            let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
            let (docs, versions, leases) = self.fetch(&mut conn, &ids).await?;
            for ((((id, s), doc), v), l) in entries.iter().zip(docs).zip(versions).zip(leases) {
                if claims.len() >= limit {
                    break;
                }
                let Some(doc) = doc else {
                    repairs.push((id.clone(), *s, None));
                    continue;
                };
                let version = parse_version(v);
                let lease = parse_lease(l);
                if held_by_other(lease.as_ref(), &me, now)
                    || self.state.is_known_corrupt(id, &doc, version)
                {
                    continue;
                }
                let Some(job) = self.state.decode(id, &doc, version, lease) else {
                    continue;
                };
                let mut due = DueJob::claim(job, now);
                if due.run_times.is_empty() {
                    // The index says due, the document says paused or later. The document is
                    // the truth; left alone, the entry would make every pass retry it.
                    let next = due.job.next_run_time;
                    if next.map(|t| score_of(micros_ceil(t))) != Some(*s) {
                        repairs.push((id.clone(), *s, Some((version, next))));
                    }
                    continue;
                }
                due.job.lease = Some(Lease {
                    owner: me.clone(),
                    until: lease_until,
                });
                claims.push((due, version));
            }
            if entries.len() < page {
                break;
            }
            offset += page;
        }
        let won = if claims.is_empty() {
            Vec::new()
        } else {
            let mut inv = self.scripts.claim.prepare_invoke();
            inv.key(&k.jobs)
                .key(&k.versions)
                .key(&k.leases)
                .key(&k.run_times)
                .key(&k.version_seq)
                .arg(now_us)
                .arg(&me)
                .arg(&lease_value);
            for (due, version) in &claims {
                inv.arg(&due.job.id).arg(version.to_string());
                if due.removed {
                    inv.arg("d").arg("").arg("");
                } else {
                    inv.arg("u")
                        .arg(due.job.to_json()?)
                        .arg(score(due.job.next_run_time));
                }
            }
            let won: Vec<i64> = inv
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.state.err("claiming due jobs", e))?;
            claims
                .into_iter()
                .zip(won)
                .filter(|(_, w)| *w != 0)
                .map(|((mut d, _), w)| {
                    d.job.version = w.max(0) as u64;
                    d
                })
                .collect()
        };
        for (id, s, fix) in repairs {
            self.repair(&mut conn, &id, s, fix).await;
        }
        Ok(won)
    }

    async fn release_jobs(&self, jobs: &[DueJob]) -> Result<()> {
        let jobs: Vec<&DueJob> = jobs.iter().filter(|d| !d.removed).collect();
        if jobs.is_empty() {
            return Ok(());
        }
        let k = self.keys();
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(&k.versions).key(&k.leases).arg(self.state.owner());
        for d in jobs {
            inv.arg(&d.job.id).arg(d.job.version.to_string());
        }
        let _: i64 = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.state.err("releasing jobs", e))?;
        Ok(())
    }

    fn poll_interval(&self) -> Option<Duration> {
        self.poll_interval
    }

    fn is_persistent(&self) -> bool {
        true
    }
}
