//! The Lua scripts that make each write atomic in Redis: every script checks versions and
//! leases and writes document, index, version and lease in one step.

use redis::Script;

/// Every write's new version: the next value of the store's counter `P:version_seq`, and
/// above the job's old version (versions written before the counter existed). A version is
/// never reused, even by a job removed and added again under the same id, so a write based
/// on a read from before the removal is fenced (no ABA).
pub(super) const NEXT_VERSION: &str = r#"
local function next_version(seq, old)
  local nv = redis.call('INCR', seq)
  local o = tonumber(old)
  if o and o >= nv then
    nv = o + 1
    redis.call('SET', seq, nv)
  end
  return nv
end
"#;

/// KEYS: jobs, versions, leases, run_times, channel, version_seq.
/// ARGV: id, document, score ('' = paused), replace ('1'/'0'), publisher.
/// Returns the new version, or 0 when the id exists and replace is '0'.
pub(super) const ADD_SCRIPT: &str = r#"
local id = ARGV[1]
local exists = redis.call('HEXISTS', KEYS[1], id) == 1
if exists and ARGV[4] == '0' then return 0 end
local version = next_version(KEYS[6], redis.call('HGET', KEYS[2], id))
redis.call('HSET', KEYS[1], id, ARGV[2])
redis.call('HSET', KEYS[2], id, version)
redis.call('HDEL', KEYS[3], id)
if ARGV[3] == '' then redis.call('ZREM', KEYS[4], id) else redis.call('ZADD', KEYS[4], ARGV[3], id) end
redis.call('PUBLISH', KEYS[5], ARGV[5])
return version
"#;

/// KEYS: as [`ADD_SCRIPT`]. ARGV: replace ('1'/'0'), publisher, then per job: id,
/// document, score ('' = paused). Without replace, every id is checked before the first
/// write, so the batch is all or nothing (a script runs atomically). Returns the number of
/// jobs added, or `-i` when the `i`-th (1-based) id exists and replace is '0'.
pub(super) const ADD_MANY_SCRIPT: &str = r#"
local n = (#ARGV - 2) / 3
if ARGV[1] == '0' then
  for i = 1, n do
    if redis.call('HEXISTS', KEYS[1], ARGV[3 * i]) == 1 then return -i end
  end
end
for i = 1, n do
  local b = 3 * i
  local id = ARGV[b]
  local version = next_version(KEYS[6], redis.call('HGET', KEYS[2], id))
  redis.call('HSET', KEYS[1], id, ARGV[b + 1])
  redis.call('HSET', KEYS[2], id, version)
  redis.call('HDEL', KEYS[3], id)
  if ARGV[b + 2] == '' then redis.call('ZREM', KEYS[4], id) else redis.call('ZADD', KEYS[4], ARGV[b + 2], id) end
end
if n > 0 then redis.call('PUBLISH', KEYS[5], ARGV[2]) end
return n
"#;

/// KEYS: as [`ADD_SCRIPT`]. ARGV: id, expected version, document, score, publisher.
/// Returns the new version, 0 when fenced, -1 when the job is gone.
pub(super) const UPDATE_SCRIPT: &str = r#"
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[1], id) == 0 then return -1 end
local v = redis.call('HGET', KEYS[2], id) or '0'
if v ~= ARGV[2] then return 0 end
local version = next_version(KEYS[6], v)
redis.call('HSET', KEYS[1], id, ARGV[3])
redis.call('HSET', KEYS[2], id, version)
redis.call('HDEL', KEYS[3], id)
if ARGV[4] == '' then redis.call('ZREM', KEYS[4], id) else redis.call('ZADD', KEYS[4], ARGV[4], id) end
redis.call('PUBLISH', KEYS[5], ARGV[5])
return version
"#;

/// KEYS: jobs, versions, leases, run_times, version_seq.
/// ARGV: now, owner, lease value, prefix (`P:`), whether any job below writes runs
/// (`1`/`0`), then per job: id, expected version, mode ('u'/'d'), document, score ('' =
/// paused), the stamp of its active runs as read (`-` = no ledger: nothing below is
/// written), the number of runs, the runs, the number of runs to flag, their members (see
/// `runs_scripts.rs` for the run arguments and the helpers, [`RUNS_LIB`](super::runs_scripts::RUNS_LIB),
/// prepended to this script).
///
/// Returns per job: its new version (1 for a removed job) when won, 0 when lost (changed
/// or leased by another scheduler), -1 when its active runs changed since they were read
/// (plan again), or a text saying which of its ledger keys cannot be written (nothing of
/// the job was written).
pub(super) const CLAIM_SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local owner = ARGV[2]
P = ARGV[4]
if ARGV[5] == '1' then
  local e = check_shared(owner)
  if e then return redis.error_reply(e) end
end
local out = {}
local a = 6
local i = 0
while a <= #ARGV do
  local id = ARGV[a]
  local stamp = ARGV[a + 5]
  local nr = tonumber(ARGV[a + 6])
  local runs_at = a + 7
  local c = skip_runs(runs_at, nr)
  local nc = tonumber(ARGV[c])
  local ok = 1
  if redis.call('HEXISTS', KEYS[1], id) == 0 then ok = 0 end
  local v = '0'
  if ok == 1 then
    v = redis.call('HGET', KEYS[2], id) or '0'
    if v ~= ARGV[a + 1] then ok = 0 end
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
  if ok == 1 and stamp ~= '-' then
    if (redis.call('HGET', gkey('stamps'), id) or '') ~= stamp then
      ok = -1
    else
      local e = check_job(id, runs_at, nr, c + 1, nc)
      if e then ok = e end
    end
  end
  if ok == 1 then
    if stamp ~= '-' then write_planned(id, owner, runs_at, nr, c + 1, nc) end
    if ARGV[a + 2] == 'd' then
      redis.call('HDEL', KEYS[1], id)
      redis.call('HDEL', KEYS[2], id)
      redis.call('HDEL', KEYS[3], id)
      redis.call('ZREM', KEYS[4], id)
    else
      ok = next_version(KEYS[5], v)
      redis.call('HSET', KEYS[1], id, ARGV[a + 3])
      redis.call('HSET', KEYS[2], id, ok)
      redis.call('HSET', KEYS[3], id, ARGV[3])
      if ARGV[a + 4] == '' then redis.call('ZREM', KEYS[4], id) else redis.call('ZADD', KEYS[4], ARGV[a + 4], id) end
    end
  end
  i = i + 1
  out[i] = ok
  a = c + 1 + nc
end
return out
"#;

/// Puts a job's index entry where its document says (the document is the truth), or drops
/// an entry whose job is gone. KEYS: jobs, versions, run_times. ARGV: id, expected version,
/// score ('' = paused). Returns 1 if it changed the index.
pub(super) const REPAIR_SCRIPT: &str = r#"
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[1], id) == 0 then
  return redis.call('ZREM', KEYS[3], id)
end
local v = redis.call('HGET', KEYS[2], id) or '0'
if v ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  return redis.call('ZREM', KEYS[3], id)
end
redis.call('ZADD', KEYS[3], ARGV[3], id)
return 1
"#;

/// ARGV: owner, then per job: id, version.
pub(super) const RELEASE_SCRIPT: &str = r#"
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

pub(super) struct Scripts {
    pub(super) add: Script,
    pub(super) add_many: Script,
    pub(super) update: Script,
    pub(super) claim: Script,
    pub(super) release: Script,
    pub(super) repair: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            add: Script::new(&format!("{NEXT_VERSION}{ADD_SCRIPT}")),
            add_many: Script::new(&format!("{NEXT_VERSION}{ADD_MANY_SCRIPT}")),
            update: Script::new(&format!("{NEXT_VERSION}{UPDATE_SCRIPT}")),
            claim: Script::new(&format!(
                "{NEXT_VERSION}{}{CLAIM_SCRIPT}",
                super::runs_scripts::RUNS_LIB
            )),
            release: Script::new(RELEASE_SCRIPT),
            repair: Script::new(REPAIR_SCRIPT),
        }
    }
}
