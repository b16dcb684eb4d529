//! The Redis job store (cargo feature `redis`).
//!
//! # Data layout
//! Under a configurable key prefix `P` (default `apsched`), so several applications can
//! share one Redis:
//!
//! | key | type | content |
//! |---|---|---|
//! | `P:jobs` | hash | job id → JSON document ([`StoredJob`](crate::job::StoredJob)) |
//! | `P:versions` | hash | job id → version (incremented by every write) |
//! | `P:leases` | hash | job id → `"<until, µs since epoch> <scheduler id>"` |
//! | `P:run_times` | sorted set | job id, scored by next run time (µs since epoch); paused jobs are absent |
//! | `P:wakeup` | pub/sub channel | the id of a scheduler that changed a job |
//!
//! # Claiming
//! [`JobStore::acquire_due_jobs`] reads the due candidates from the sorted set, applies the
//! due-run rule ([`DueJob::claim`]) in Rust, then writes the results back with one Lua
//! script that, per job, checks that the version is unchanged and that no other scheduler
//! holds an unexpired lease, and only then writes document, score, version and lease
//! (compare-and-swap). A scheduler that loses the race for a job skips it, so each
//! scheduled time of a job is submitted by exactly one scheduler.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio_util::sync::CancellationToken;

use super::nosql_common::{claimable_at, from_us, held_by_other, sort_jobs, to_us, StoreState};
use super::{DueJob, JobStore, StoreContext};
use crate::error::{Error, Result};
use crate::job::{JobRecord, Lease};

/// How many sorted-set entries are read per round trip when scanning for due jobs.
const PAGE: usize = 256;

const ADD_SCRIPT: &str = r#"
local id = ARGV[1]
local exists = redis.call('HEXISTS', KEYS[1], id) == 1
if exists and ARGV[4] == '0' then return 0 end
local version = ARGV[5]
if exists then
  local old = redis.call('HGET', KEYS[2], id)
  version = tostring((tonumber(old) or 0) + 1)
end
redis.call('HSET', KEYS[1], id, ARGV[2])
redis.call('HSET', KEYS[2], id, version)
redis.call('HDEL', KEYS[3], id)
if ARGV[3] == '' then redis.call('ZREM', KEYS[4], id) else redis.call('ZADD', KEYS[4], ARGV[3], id) end
redis.call('PUBLISH', KEYS[5], ARGV[6])
return 1
"#;

const UPDATE_SCRIPT: &str = r#"
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[1], id) == 0 then return -1 end
local v = redis.call('HGET', KEYS[2], id) or '0'
if v ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], id, ARGV[3])
redis.call('HSET', KEYS[2], id, ARGV[5])
redis.call('HDEL', KEYS[3], id)
if ARGV[4] == '' then redis.call('ZREM', KEYS[4], id) else redis.call('ZADD', KEYS[4], ARGV[4], id) end
redis.call('PUBLISH', KEYS[5], ARGV[6])
return 1
"#;

/// ARGV: now, owner, lease value, then per job: id, expected version, mode ('u'/'d'),
/// document, score ('' = paused).
const CLAIM_SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local owner = ARGV[2]
local out = {}
local n = (#ARGV - 3) / 5
for i = 0, n - 1 do
  local b = 3 + i * 5
  local id = ARGV[b + 1]
  local ok = 1
  if redis.call('HEXISTS', KEYS[1], id) == 0 then ok = 0 end
  if ok == 1 then
    local v = redis.call('HGET', KEYS[2], id) or '0'
    if v ~= ARGV[b + 2] then ok = 0 end
  end
  if ok == 1 then
    local l = redis.call('HGET', KEYS[3], id)
    if l then
      local sp = string.find(l, ' ', 1, true)
      if sp then
        local u = tonumber(string.sub(l, 1, sp - 1)) or 0
        local o = string.sub(l, sp + 1)
        if u > now and o ~= owner then ok = 0 end
      end
    end
  end
  if ok == 1 then
    if ARGV[b + 3] == 'd' then
      redis.call('HDEL', KEYS[1], id)
      redis.call('HDEL', KEYS[2], id)
      redis.call('HDEL', KEYS[3], id)
      redis.call('ZREM', KEYS[4], id)
    else
      redis.call('HSET', KEYS[1], id, ARGV[b + 4])
      redis.call('HSET', KEYS[2], id, tostring(tonumber(ARGV[b + 2]) + 1))
      redis.call('HSET', KEYS[3], id, ARGV[3])
      if ARGV[b + 5] == '' then redis.call('ZREM', KEYS[4], id) else redis.call('ZADD', KEYS[4], ARGV[b + 5], id) end
    end
  end
  out[i + 1] = ok
end
return out
"#;

/// ARGV: owner, then per job: id, version.
const RELEASE_SCRIPT: &str = r#"
local owner = ARGV[1]
local n = (#ARGV - 1) / 2
local released = 0
for i = 0, n - 1 do
  local id = ARGV[2 + i * 2]
  local v = redis.call('HGET', KEYS[1], id)
  if v == ARGV[3 + i * 2] then
    local l = redis.call('HGET', KEYS[2], id)
    if l then
      local sp = string.find(l, ' ', 1, true)
      if sp and string.sub(l, sp + 1) == owner then
        redis.call('HDEL', KEYS[2], id)
        released = released + 1
      end
    end
  end
end
return released
"#;

/// Keeps jobs in Redis; several schedulers (processes) may share one prefix. See the
/// [module docs](self) for the data layout and the claim protocol.
///
/// ```no_run
/// # async fn f() -> apsched::Result<()> {
/// use apsched::store::RedisStore;
/// let store = RedisStore::new("redis://127.0.0.1/")?.with_prefix("myapp:jobs");
/// # Ok(()) }
/// ```
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

struct Scripts {
    add: Script,
    update: Script,
    claim: Script,
    release: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

struct Keys {
    jobs: String,
    versions: String,
    leases: String,
    run_times: String,
    channel: String,
}

fn parse_lease(v: Option<String>) -> Option<Lease> {
    let v = v?;
    let (until, owner) = v.split_once(' ')?;
    Some(Lease {
        owner: owner.to_string(),
        until: from_us(until.parse().ok()?),
    })
}

fn parse_version(v: Option<String>) -> u64 {
    v.and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn score(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(String::new, |t| to_us(t).to_string())
}

impl RedisStore {
    /// A store on the Redis server at `url` (`redis://[user:password@]host[:port][/db]`),
    /// with the key prefix `apsched`. Connects when the scheduler starts.
    pub fn new(url: &str) -> Result<Self> {
        let state = StoreState::new("redis");
        let client = redis::Client::open(url).map_err(|e| state.err("invalid Redis URL", e))?;
        Ok(RedisStore {
            client,
            prefix: "apsched".into(),
            poll_interval: Some(Duration::from_secs(30)),
            response_timeout: Duration::from_secs(5),
            conn: Mutex::new(None),
            state,
            stop: Mutex::new(None),
            scripts: Scripts {
                add: Script::new(ADD_SCRIPT),
                update: Script::new(UPDATE_SCRIPT),
                claim: Script::new(CLAIM_SCRIPT),
                release: Script::new(RELEASE_SCRIPT),
            },
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
        }
    }

    async fn conn(&self) -> Result<ConnectionManager> {
        if let Some(c) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone() {
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
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        Ok(c)
    }

    fn now(&self) -> DateTime<Utc> {
        self.state.ctx().map_or_else(Utc::now, |c| c.clock.now())
    }

    /// Reads documents, versions and leases of `ids` in one round trip.
    #[allow(clippy::type_complexity)]
    async fn fetch(
        &self,
        conn: &mut ConnectionManager,
        ids: &[String],
    ) -> Result<(
        Vec<Option<String>>,
        Vec<Option<String>>,
        Vec<Option<String>>,
    )> {
        let k = self.keys();
        redis::pipe()
            .cmd("HMGET")
            .arg(&k.jobs)
            .arg(ids)
            .cmd("HMGET")
            .arg(&k.versions)
            .arg(ids)
            .cmd("HMGET")
            .arg(&k.leases)
            .arg(ids)
            .query_async(conn)
            .await
            .map_err(|e| self.state.err("reading jobs", e))
    }
}

async fn listen(
    client: redis::Client,
    channel: String,
    me: String,
    wakeup: std::sync::Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let mut first = true;
    loop {
        let attempt = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let ps = tokio::select! {
            _ = stop.cancelled() => return,
            r = attempt => r,
        };
        match ps {
            Ok(mut ps) => {
                if !first {
                    // Messages may have been lost while disconnected: look again.
                    wakeup.notify_one();
                }
                first = false;
                let mut stream = ps.on_message();
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => return,
                        m = stream.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    let from: String = msg.get_payload().unwrap_or_default();
                    if from != me {
                        wakeup.notify_one();
                    }
                }
                tracing::warn!(%channel, "Redis pub/sub connection lost; reconnecting");
            }
            Err(e) => {
                tracing::debug!(%channel, error = %e, "Redis pub/sub connect failed; retrying");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[async_trait::async_trait]
impl JobStore for RedisStore {
    async fn start(&self, ctx: StoreContext) -> Result<()> {
        let wakeup = ctx.wakeup.clone();
        let me = ctx.scheduler_id.clone();
        self.state.set_ctx(Some(ctx));
        self.state.forget_all_corrupt();
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.state.err("connecting", e))?;
        let stop = CancellationToken::new();
        if let Some(old) = self
            .stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(stop.clone())
        {
            old.cancel();
        }
        tokio::spawn(listen(
            self.client.clone(),
            self.keys().channel,
            me,
            wakeup,
            stop,
        ));
        Ok(())
    }

    async fn shutdown(&self) -> Result<()> {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
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
            .arg(&job.id)
            .arg(&doc)
            .arg(score(job.next_run_time))
            .arg(if replace_existing { "1" } else { "0" })
            .arg(job.version.to_string())
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
            .arg(&job.id)
            .arg(job.version.to_string())
            .arg(&doc)
            .arg(score(job.next_run_time))
            .arg((job.version + 1).to_string())
            .arg(self.state.owner())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.state.err("updating a job", e))?;
        match r {
            -1 => Err(Error::JobLookup(job.id)),
            0 => Err(Error::Fenced(job.id)),
            _ => {
                self.state.forget_corrupt(&job.id);
                job.version += 1;
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
                    .check(&doc)
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
        let now = self.now();
        let mut conn = self.conn().await?;
        let mut offset = 0isize;
        let mut best: Option<DateTime<Utc>> = None;
        loop {
            let page: Vec<(String, i64)> = conn
                .zrange_withscores(&k.run_times, offset, offset + PAGE as isize - 1)
                .await
                .map_err(|e| self.state.err("reading next run times", e))?;
            if page.is_empty() {
                return Ok(best);
            }
            let ids: Vec<String> = page.iter().map(|(id, _)| id.clone()).collect();
            let leases: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(&k.leases)
                .arg(&ids)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.state.err("reading leases", e))?;
            let last = from_us(page[page.len() - 1].1);
            for ((id, s), l) in page.iter().zip(leases) {
                if self.state.is_corrupt(id) {
                    continue;
                }
                let at = claimable_at(from_us(*s), parse_lease(l).as_ref(), &me, now);
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
        let lease_until =
            now + chrono::Duration::from_std(self.state.lease()).unwrap_or(chrono::Duration::MAX);
        let lease_value = format!("{} {me}", to_us(lease_until));
        let mut conn = self.conn().await?;
        let page = limit.clamp(16, 1024);
        let mut offset = 0usize;
        let mut claims: Vec<(DueJob, u64)> = Vec::new();
        let now_us = now.timestamp_micros();
        while claims.len() < limit {
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(&k.run_times)
                .arg("-inf")
                .arg(now_us)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(offset)
                .arg(page)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.state.err("reading due jobs", e))?;
            if ids.is_empty() {
                break;
            }
            let (docs, versions, leases) = self.fetch(&mut conn, &ids).await?;
            for (((id, doc), v), l) in ids.iter().zip(docs).zip(versions).zip(leases) {
                if claims.len() >= limit {
                    break;
                }
                let Some(doc) = doc else { continue };
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
                    continue;
                }
                due.job.version = version + 1;
                due.job.lease = Some(Lease {
                    owner: me.clone(),
                    until: lease_until,
                });
                claims.push((due, version));
            }
            if ids.len() < page {
                break;
            }
            offset += page;
        }
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.claim.prepare_invoke();
        inv.key(&k.jobs)
            .key(&k.versions)
            .key(&k.leases)
            .key(&k.run_times)
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
        Ok(claims
            .into_iter()
            .zip(won)
            .filter(|(_, w)| *w == 1)
            .map(|((d, _), _)| d)
            .collect())
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
