//! The run ledger's Lua scripts (the key layout is in `runs_layout.rs`). Each script is one
//! atomic step: a run changes state together with every index that lists it.
//!
//! The claim writes its run records inside the claim script itself ([`RUNS_LIB`]'s
//! `write_planned`, called from [`CLAIM_SCRIPT`](super::scripts::CLAIM_SCRIPT)).
//!
//! Redis does not roll a script back when a command inside it fails: what ran before the
//! failure stays written. So every script first checks the types of the keys it will write
//! (`check_shared`, `check_job`) and writes nothing when one is wrong; keys of other jobs
//! or schedulers that a script only updates in passing are written with `redis.pcall`, so
//! that a key an operator broke cannot stop the script half-way.
//!
//! Run arguments (what [`push_run`](super::runs::push_run) writes for one new run): member,
//! scheduled score, state, queued (`1`/`0`), finish score (`''` for an active run), the
//! number of field/value pairs, then the pairs of the run's hash.

use redis::Script;

/// Helpers shared by the ledger scripts (prepended to each). `P` is the prefix with its
/// separator (`prefix:`), set by each script from its arguments.
pub(super) const RUNS_LIB: &str = r#"
local P = ''
local function rkey(id) return P .. 'run:' .. id end
local function jkey(kind, job) return P .. 'runs:' .. kind .. ':' .. job end
local function gkey(name) return P .. 'runs:' .. name end
local function okey(owner) return P .. 'runs:owned:' .. owner end
local function is_active(st) return st == 'claimed' or st == 'started' end
local TERMINAL = {executed = true, error = true, missed = true, skipped = true, abandoned = true, cancelled = true}

local function type_of(key) return redis.call('TYPE', key)['ok'] end

-- Why `key` cannot hold a `want`, or nil when it can (absent or of that type).
local function bad_key(key, want)
  local t = type_of(key)
  if t == 'none' or t == want then return nil end
  return 'the key ' .. key .. ' holds a ' .. t .. ' where the run ledger keeps a ' .. want .. ': rename or delete it'
end

-- Checks the ledger's shared keys (and `owner`'s set of runs, when given).
local function check_shared(owner)
  local shared = {{'all', 'zset'}, {'finished', 'zset'}, {'done_count', 'zset'}, {'stamps', 'hash'},
    {'stamp_seq', 'string'}, {'owners', 'set'}, {'queued', 'set'}, {'cancel', 'set'}}
  for _, kw in ipairs(shared) do
    local e = bad_key(gkey(kw[1]), kw[2])
    if e then return e end
  end
  if owner then
    local e = bad_key(okey(owner), 'set')
    if e then return e end
  end
  return bad_key(P .. 'heartbeats', 'zset')
end

-- The position after the `n` run arguments starting at `p`.
local function skip_runs(p, n)
  for _ = 1, n do p = p + 6 + 2 * tonumber(ARGV[p + 5]) end
  return p
end

-- Checks the keys that writing `n` new runs of `job` (arguments at `p`) and flagging the
-- `nc` runs at `c` touch.
local function check_job(job, p, n, c, nc)
  local e = bad_key(jkey('job', job), 'zset') or bad_key(jkey('done', job), 'zset') or bad_key(jkey('active', job), 'hash')
  if e then return e end
  for _ = 1, n do
    if redis.call('EXISTS', rkey(ARGV[p])) == 1 then
      return 'the run key ' .. rkey(ARGV[p]) .. ' exists already'
    end
    p = p + 6 + 2 * tonumber(ARGV[p + 5])
  end
  for k = 0, nc - 1 do
    e = bad_key(rkey(ARGV[c + k]), 'hash')
    if e then return e end
  end
  return nil
end

-- Renews the stamp of `job` (its active runs changed).
local function bump(job)
  redis.call('HSET', gkey('stamps'), job, redis.call('INCR', gkey('stamp_seq')))
end

-- Sets the job's count of finished runs (what retention looks at).
local function count_done(job)
  local n = redis.pcall('ZCARD', jkey('done', job))
  if type(n) ~= 'number' then return end
  if n > 0 then redis.call('ZADD', gkey('done_count'), n, job) else redis.call('ZREM', gkey('done_count'), job) end
end

-- Takes run `id` of `job` out of the active indexes (and out of `owner`'s set when given).
local function deactivate(job, id, owner)
  local akey = jkey('active', job)
  redis.pcall('HDEL', akey, id)
  if redis.call('EXISTS', akey) == 0 then redis.call('HDEL', gkey('stamps'), job) end
  if owner then
    redis.pcall('SREM', okey(owner), id)
    if redis.call('EXISTS', okey(owner)) == 0 then redis.call('SREM', gkey('owners'), owner) end
  end
  redis.call('SREM', gkey('cancel'), id)
end

-- Files run `id` of `job`, which just reached its terminal state at score `fscore`.
local function settle(job, id, owner, fscore)
  deactivate(job, id, owner)
  local s = redis.pcall('ZSCORE', jkey('job', job), id)
  if type(s) == 'string' then redis.pcall('ZADD', jkey('done', job), s, id) end
  redis.call('ZADD', gkey('finished'), fscore, id)
  count_done(job)
end

-- Deletes the oldest finished runs of `job` beyond the newest `keep` (a record whose state
-- is unreadable is never deleted).
local function trim(job, keep)
  local dkey = jkey('done', job)
  local n = redis.pcall('ZCARD', dkey)
  if type(n) ~= 'number' or n <= keep then return end
  local old = redis.pcall('ZRANGE', dkey, 0, n - keep - 1)
  if old.err then return end
  for _, id in ipairs(old) do
    local key = rkey(id)
    local t = type_of(key)
    local gone = t == 'none'
    if t == 'hash' and TERMINAL[redis.call('HGET', key, 'state')] then
      redis.call('DEL', key)
      gone = true
    end
    if gone then
      redis.call('ZREM', gkey('all'), id)
      redis.call('ZREM', gkey('finished'), id)
      redis.pcall('ZREM', jkey('job', job), id)
      redis.pcall('ZREM', dkey, id)
    end
  end
  count_done(job)
end

-- Writes the new run of `job` whose arguments start at `p`, owned by `owner`. Returns the
-- position after it and whether it is active.
local function write_run(job, owner, p)
  local id, sc, st, q, fs = ARGV[p], ARGV[p + 1], ARGV[p + 2], ARGV[p + 3], ARGV[p + 4]
  local n = tonumber(ARGV[p + 5])
  redis.call('HSET', rkey(id), unpack(ARGV, p + 6, p + 5 + 2 * n))
  redis.call('ZADD', jkey('job', job), sc, id)
  redis.call('ZADD', gkey('all'), sc, id)
  local next_p = p + 6 + 2 * n
  if is_active(st) then
    local v = st
    if q == '1' then
      v = 'queued'
      redis.call('SADD', gkey('queued'), job)
    end
    redis.call('HSET', jkey('active', job), id, v)
    redis.call('SADD', okey(owner), id)
    redis.call('SADD', gkey('owners'), owner)
    return next_p, true
  end
  redis.call('ZADD', jkey('done', job), sc, id)
  redis.call('ZADD', gkey('finished'), fs, id)
  return next_p, false
end

-- Writes the `n` planned runs of `job` at `p` and flags the `nc` runs at `c` for
-- cancellation (those still active). The keys were checked by `check_job`.
local function write_planned(job, owner, p, n, c, nc)
  local active, done = false, false
  for _ = 1, n do
    local a
    p, a = write_run(job, owner, p)
    if a then active = true else done = true end
  end
  if done then count_done(job) end
  if active then bump(job) end
  for k = 0, nc - 1 do
    local id = ARGV[c + k]
    if is_active(redis.call('HGET', rkey(id), 'state')) then
      redis.call('HSET', rkey(id), 'cancel_requested', '1')
      redis.call('SADD', gkey('cancel'), id)
    end
  end
end
"#;

/// Manual runs (`run_now`, `backfill`). KEYS: jobs, versions. ARGV: prefix, owner, job id,
/// the job's version as read, its stamp as read (`''` = none), the number of runs, the
/// runs, the number of runs to flag, their members. Returns 1 when written, 0 when the job
/// is gone, -1 when the job or its active runs changed since they were read (read again).
pub(super) const MANUAL_SCRIPT: &str = r#"
P = ARGV[1]
local owner, job = ARGV[2], ARGV[3]
local e = check_shared(owner)
if e then return redis.error_reply(e) end
if redis.call('HEXISTS', KEYS[1], job) == 0 then return 0 end
if (redis.call('HGET', KEYS[2], job) or '0') ~= ARGV[4] then return -1 end
if (redis.call('HGET', gkey('stamps'), job) or '') ~= ARGV[5] then return -1 end
local n = tonumber(ARGV[6])
local c = skip_runs(7, n)
local nc = tonumber(ARGV[c])
e = check_job(job, 7, n, c + 1, nc)
if e then return redis.error_reply(e) end
write_planned(job, owner, 7, n, c + 1, nc)
return 1
"#;

/// Runs made outside a claim (retries, [`JobStore::add_runs`](crate::store::JobStore::add_runs)).
/// ARGV: prefix, then per run: job id, owner, its slot (the `scheduled` field's text for a
/// scheduled run, `''` for a manual one), attempt, then the run's arguments. Every key the
/// batch writes is checked first (a bad one writes nothing). A run is written as the claim
/// writes one ([`RUNS_LIB`]'s `write_run`), unless its run key exists or, for a scheduled
/// run, a scheduled run of the job with the same `scheduled` and `attempt` is stored: the
/// Redis ledger has no slot key (the claim's compare-and-swap on the job makes each slot
/// claimed once), so the slot is looked up in the job's index at the run's score. Returns
/// how many runs it wrote.
pub(super) const ADD_SCRIPT: &str = r#"
P = ARGV[1]
local e = check_shared(nil)
if e then return redis.error_reply(e) end
local b = 2
while b <= #ARGV do
  local job, owner = ARGV[b], ARGV[b + 1]
  e = bad_key(jkey('job', job), 'zset') or bad_key(jkey('done', job), 'zset')
    or bad_key(jkey('active', job), 'hash') or bad_key(okey(owner), 'set')
  if e then return redis.error_reply(e) end
  b = skip_runs(b + 4, 1)
end
-- Whether a scheduled run of `job` at `slot` (score `sc`) with `attempt` is stored.
local function slot_taken(job, slot, sc, attempt)
  for _, m in ipairs(redis.call('ZRANGE', jkey('job', job), sc, sc, 'BYSCORE')) do
    local key = rkey(m)
    if type_of(key) == 'hash' then
      local f = redis.call('HMGET', key, 'manual', 'scheduled', 'attempt')
      if f[1] == '0' and f[2] == slot and f[3] == attempt then return true end
    end
  end
  return false
end
local n = 0
local active, done = {}, {}
b = 2
while b <= #ARGV do
  local job, owner, slot, attempt = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local p = b + 4
  if redis.call('EXISTS', rkey(ARGV[p])) == 1 or (slot ~= '' and slot_taken(job, slot, ARGV[p + 1], attempt)) then
    b = skip_runs(p, 1)
  else
    local a
    b, a = write_run(job, owner, p)
    if a then active[job] = true else done[job] = true end
    n = n + 1
  end
end
for job, _ in pairs(done) do count_done(job) end
for job, _ in pairs(active) do bump(job) end
return n
"#;

/// `claimed` → `started`. ARGV: prefix, owner, now (text), members. Only runs still claimed
/// and owned by `owner` change; returns their members.
pub(super) const START_SCRIPT: &str = r#"
P = ARGV[1]
local owner, now = ARGV[2], ARGV[3]
local e = check_shared(nil)
if e then return redis.error_reply(e) end
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local key = rkey(id)
  if type_of(key) == 'hash' then
    local f = redis.call('HMGET', key, 'state', 'owner', 'job_id')
    if f[1] == 'claimed' and f[2] == owner and f[3] then
      redis.call('HSET', key, 'state', 'started', 'started_at', now, 'queued', '0')
      redis.pcall('HSET', jkey('active', f[3]), id, 'started')
      bump(f[3])
      out[#out + 1] = id
    end
  end
end
return out
"#;

/// Terminal outcomes, as [`RunRecord::apply`](crate::ledger::RunRecord::apply) applies
/// them, then the per-job retention of the jobs they finished (so that a storm of runs
/// cannot outgrow the periodic pass's pruning). ARGV: prefix, finished runs kept per job,
/// then per outcome: member, state, finished_at (text), finish score,
/// which optional values follow (three `1`/`0`: started_at, error, output), started_at,
/// error, output. A run already terminal (or unknown) is left alone. Returns how many runs
/// changed.
pub(super) const FINISH_SCRIPT: &str = r#"
P = ARGV[1]
local keep = tonumber(ARGV[2])
local e = check_shared(nil)
if e then return redis.error_reply(e) end
local n = 0
local jobs = {}
for b = 3, #ARGV, 8 do
  local id = ARGV[b]
  local key = rkey(id)
  if type_of(key) == 'hash' then
    local f = redis.call('HMGET', key, 'state', 'job_id', 'owner')
    if is_active(f[1]) and f[2] then
      local has = ARGV[b + 4]
      redis.call('HSET', key, 'state', ARGV[b + 1], 'finished_at', ARGV[b + 2], 'queued', '0')
      if ARGV[b + 1] == 'missed' then
        -- A missed run never started (it was marked started when it was handed to an
        -- executor that found it too late).
        redis.call('HDEL', key, 'started_at')
      elseif string.sub(has, 1, 1) == '1' then
        redis.call('HSET', key, 'started_at', ARGV[b + 5])
      end
      if string.sub(has, 2, 2) == '1' then redis.call('HSET', key, 'error', ARGV[b + 6]) else redis.call('HDEL', key, 'error') end
      if string.sub(has, 3, 3) == '1' then redis.call('HSET', key, 'output', ARGV[b + 7]) else redis.call('HDEL', key, 'output') end
      settle(f[2], id, f[3], ARGV[b + 3])
      jobs[f[2]] = true
      n = n + 1
    end
  end
end
for job, _ in pairs(jobs) do trim(job, keep) end
return n
"#;

/// The start of the periodic pass. ARGV: prefix, owner, alive until (score), forget
/// heartbeats before (score). Records the heartbeat and returns what the rest of the pass
/// needs: {schedulers with active runs and their heartbeat score (`''` = none) as pairs,
/// this scheduler's started runs flagged for cancellation, jobs that may have queued runs}.
pub(super) const TICK_SCRIPT: &str = r#"
P = ARGV[1]
local me = ARGV[2]
local e = check_shared(me)
if e then return redis.error_reply(e) end
local hb = P .. 'heartbeats'
redis.call('ZREMRANGEBYSCORE', hb, '-inf', '(' .. ARGV[4])
redis.call('ZADD', hb, ARGV[3], me)
local owners = {}
for _, o in ipairs(redis.call('SMEMBERS', gkey('owners'))) do
  owners[#owners + 1] = o
  owners[#owners + 1] = redis.call('ZSCORE', hb, o) or ''
end
local cancel = {}
for _, id in ipairs(redis.call('SMEMBERS', gkey('cancel'))) do
  local key = rkey(id)
  local f = {false, false}
  if type_of(key) == 'hash' then f = redis.call('HMGET', key, 'state', 'owner') end
  if f[1] == 'started' and f[2] == me then
    cancel[#cancel + 1] = id
  elseif not is_active(f[1]) then
    redis.call('SREM', gkey('cancel'), id)
  end
end
return {owners, cancel, redis.call('SMEMBERS', gkey('queued'))}
"#;

/// Takes over the runs of schedulers no longer alive. ARGV: prefix, owner (the taker), now
/// (score), now (text), then per scheduler: its id, its heartbeat score as read (`''` =
/// none), the error text for its started runs. A scheduler whose heartbeat changed since it
/// was read, or is not over at `now`, is left alone. Its claimed runs become the taker's
/// (queued ones stay queued); its started runs become `abandoned`. Returns {members of the
/// claimed runs taken that are not queued, members of the runs abandoned}.
pub(super) const TAKEOVER_SCRIPT: &str = r#"
P = ARGV[1]
local me, now, now_text = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local e = check_shared(me)
if e then return redis.error_reply(e) end
local hb = P .. 'heartbeats'
local dispatch, abandoned = {}, {}
for b = 5, #ARGV, 3 do
  local o = ARGV[b]
  local s = redis.call('ZSCORE', hb, o) or ''
  local set = okey(o)
  if o ~= me and s == ARGV[b + 1] and (s == '' or tonumber(s) < now) and type_of(set) == 'set' then
    for _, id in ipairs(redis.call('SMEMBERS', set)) do
      local key = rkey(id)
      if type_of(key) == 'hash' then
        local f = redis.call('HMGET', key, 'state', 'queued', 'job_id', 'owner')
        if f[4] == o and f[3] then
          if f[1] == 'claimed' then
            redis.call('HSET', key, 'owner', me)
            redis.call('SADD', okey(me), id)
            redis.call('SADD', gkey('owners'), me)
            if f[2] ~= '1' then dispatch[#dispatch + 1] = id end
          elseif f[1] == 'started' then
            redis.call('HSET', key, 'state', 'abandoned', 'finished_at', now_text, 'error', ARGV[b + 2], 'queued', '0')
            settle(f[3], id, nil, ARGV[3])
            abandoned[#abandoned + 1] = id
          end
        end
      end
    end
    redis.call('DEL', set)
    redis.call('SREM', gkey('owners'), o)
  end
end
return {dispatch, abandoned}
"#;

/// Promotes queued runs. ARGV: prefix, owner, then per job: id, its stamp as read, the
/// number of runs to promote, their members (oldest first). A job whose stamp changed
/// since it was read is left for the next pass. A promoted run stops being queued and
/// becomes the owner's. Jobs left without queued runs leave the set of queued jobs.
/// Returns the members promoted.
pub(super) const PROMOTE_SCRIPT: &str = r#"
P = ARGV[1]
local me = ARGV[2]
local e = check_shared(me)
if e then return redis.error_reply(e) end
local out = {}
local b = 3
while b <= #ARGV do
  local job, stamp, n = ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 2])
  local akey = jkey('active', job)
  local t = type_of(akey)
  if (t == 'hash' or t == 'none') and (redis.call('HGET', gkey('stamps'), job) or '') == stamp then
    local promoted = false
    for k = 0, n - 1 do
      local id = ARGV[b + 3 + k]
      local key = rkey(id)
      if redis.call('HGET', akey, id) == 'queued' and type_of(key) == 'hash' then
        local prev = redis.call('HGET', key, 'owner')
        redis.call('HSET', key, 'queued', '0', 'owner', me)
        redis.call('HSET', akey, id, 'claimed')
        if prev and prev ~= me then
          redis.pcall('SREM', okey(prev), id)
          if redis.call('EXISTS', okey(prev)) == 0 then redis.call('SREM', gkey('owners'), prev) end
        end
        redis.call('SADD', okey(me), id)
        redis.call('SADD', gkey('owners'), me)
        out[#out + 1] = id
        promoted = true
      end
    end
    if promoted then bump(job) end
    local left = false
    for _, v in ipairs(redis.call('HVALS', akey)) do
      if v == 'queued' then left = true break end
    end
    if not left then redis.call('SREM', gkey('queued'), job) end
  end
  b = b + 3 + n
end
return out
"#;

/// Retention. ARGV: prefix, then pairs: member, its job (`''` = unknown). Deletes the runs
/// whose state is terminal (an active run or a record whose state is unreadable is never
/// deleted) with their index entries; drops the index entries of runs already gone.
/// Returns how many runs it deleted.
pub(super) const PRUNE_SCRIPT: &str = r#"
P = ARGV[1]
local e = check_shared(nil)
if e then return redis.error_reply(e) end
local n = 0
local jobs = {}
for b = 2, #ARGV, 2 do
  local id, job = ARGV[b], ARGV[b + 1]
  local key = rkey(id)
  local t = type_of(key)
  local gone = t == 'none'
  if t == 'hash' then
    local f = redis.call('HMGET', key, 'state', 'job_id')
    if TERMINAL[f[1]] and f[2] then
      redis.call('DEL', key)
      job = f[2]
      n = n + 1
      gone = true
    end
  end
  if gone then
    redis.call('ZREM', gkey('all'), id)
    redis.call('ZREM', gkey('finished'), id)
    if job ~= '' then
      redis.pcall('ZREM', jkey('job', job), id)
      redis.pcall('ZREM', jkey('done', job), id)
      jobs[job] = true
    end
  end
end
for job, _ in pairs(jobs) do count_done(job) end
return n
"#;

/// The ledger's scripts, compiled once per store.
pub(super) struct RunScripts {
    pub(super) manual: Script,
    pub(super) add: Script,
    pub(super) start: Script,
    pub(super) finish: Script,
    pub(super) tick: Script,
    pub(super) takeover: Script,
    pub(super) promote: Script,
    pub(super) prune: Script,
}

impl RunScripts {
    pub(super) fn new() -> Self {
        let with_lib = |body: &str| Script::new(&format!("{RUNS_LIB}{body}"));
        RunScripts {
            manual: with_lib(MANUAL_SCRIPT),
            add: with_lib(ADD_SCRIPT),
            start: with_lib(START_SCRIPT),
            finish: with_lib(FINISH_SCRIPT),
            tick: with_lib(TICK_SCRIPT),
            takeover: with_lib(TAKEOVER_SCRIPT),
            promote: with_lib(PROMOTE_SCRIPT),
            prune: with_lib(PRUNE_SCRIPT),
        }
    }
}
