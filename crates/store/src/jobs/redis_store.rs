//! Notification jobs in Redis (single node or Redis Cluster), delivery work on a
//! Redis Stream with a consumer group.
//!
//! # Key layout (schema `bf1`)
//!
//! `<P>` is the configured prefix; `<J>` a job id (32 hex digits); `<B>` a bot
//! id, percent-escaped so `{`/`}` cannot break its hash tag. Four kinds of
//! slots: one per job (`{<J>}`: every write to a job is one Lua script over its
//! keys), one per bot (`{<B>}`: the idempotency map and the job list), one
//! for the work queue (`{q}`: the stream, the due set and the dead letters, so
//! moving an item between them is one script) and one for the index of active
//! jobs (`{a}`).
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `<P>bf1:jobs:{<J>}:rec` | HASH | `spec` (JSON), `state`, `created`, `started`, `finished`, `error` (JSON), `exp` (expansion cursor, JSON), `complete` (`0`/`1`), `xo` / `xu` (expansion claim: consumer, until ms) |
//! | `<P>bf1:jobs:{<J>}:counts` | HASH | `total`, `pending`, `sending`, `delivered`, `retrying`, `cancelled`, `f:<reason>` |
//! | `<P>bf1:jobs:{<J>}:targets` | HASH | target key -> target JSON (written once) |
//! | `<P>bf1:jobs:{<J>}:st` | HASH | target key -> `{"k":kind,"a":attempts,"u":updated_ms,"s":DeliveryState JSON}` |
//! | `<P>bf1:jobs:{<J>}:ix:all`, `...:ix:<kind>` | ZSET | target keys (all / by state), score 0: lexicographic pages |
//! | `<P>bf1:jobs:bot:{<B>}:idem` | HASH | hex SHA-256 of the idempotency key -> `{"j":job id,"h":body hash}` |
//! | `<P>bf1:jobs:bot:{<B>}:list` | ZSET | job ids scored by creation time (ms) |
//! | `<P>bf1:jobs:bot:{<B>}:users` | HASH | `<tenant>\n<user>` -> the 1:1 conversation id created with them |
//! | `<P>bf1:jobs:{a}:active` | ZSET | ids of jobs not known final, scored by creation time (ms): what sweeps read |
//! | `<P>bf1:jobs:{q}:work` | STREAM | one entry per work item: `j` job id, `t` target JSON, `a` attempt; consumer group [`JobStoreOptions::group`] |
//! | `<P>bf1:jobs:{q}:due` | ZSET | rescheduled items (`<job>\n<attempt>\n<nonce>\n<target JSON>`) scored by due time (ms) |
//! | `<P>bf1:jobs:{q}:dead` | STREAM | dead-lettered items (same fields), trimmed to about [`JobStoreOptions::dead_letter_max_len`] |
//!
//! - **Trimming**: an acknowledged entry is deleted from the work stream in the
//!   same script (`XACK` + `XDEL`), so the stream holds only work not done yet
//!   and needs no `XTRIM`; the dead-letter stream is capped with `MAXLEN ~`.
//! - **Creation**: the idempotency mapping (bot slot) is written first with the
//!   new job id, then the job (job slot) only if it does not exist. A crash in
//!   between leaves a mapping to a job that does not exist yet: the client's
//!   retry with the same key and body creates it under that id.
//! - **Active jobs**: the index entry is written (`ZADD NX`) before the job
//!   record, so a job is never running unindexed; [`JobStore::active_jobs`]
//!   drops entries of final jobs, and of missing ones a minute old (a creation
//!   that failed after the index write).
//! - **Blocking reads** (`XREADGROUP ... BLOCK`) use their own connection with a
//!   response timeout longer than the block; a timeout or a broken connection
//!   drops that connection (the next take reconnects) and is never fatal. A
//!   work stream that lost its consumer group (Redis restarted without
//!   persistence, a flush) gets it again.
//! - **Redis without persistence loses the jobs**: run Redis with AOF
//!   (`appendonly yes`) for the "nothing lost" guarantee across Redis restarts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::streams::StreamReadReply;
use redis::{FromRedisValue, Script, Value};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::memory::parse_job_cursor;
use super::{
    check_spec, decode_cursor, new_job_id, page_size, BeginSend, CreateJob, DeliveryState,
    DeliveryStateKind, Expansion, FinishSend, JobCounts, JobPage, JobRecord, JobSpec, JobState,
    JobStore, JobStoreError, JobStoreOptions, Reclaimed, SendOutcome, Target, TargetEntry,
    TargetPage, WorkItem, REASON_DEAD_LETTER,
};
use crate::redis_pool::{RedisConn, RedisPool, KEY_SCHEMA};

/// Longest block of one `take`; the blocking connection's response timeout
/// is this plus [`BLOCK_MARGIN`].
const MAX_BLOCK: Duration = Duration::from_secs(10);
const BLOCK_MARGIN: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Targets a `cancel` script call moves at most (the rest in further calls),
/// so one call never blocks Redis for long.
const CANCEL_BATCH: usize = 1000;

/// Helpers of the job scripts. KEYS of every job script: rec, counts, targets,
/// st, ix:all, ix:pending, ix:sending, ix:delivered, ix:retrying, ix:failed,
/// ix:cancelled. Numbers are written with `%d` (cjson decodes them as doubles).
const PRELUDE: &str = r#"
local REC, COUNTS, TARGETS, ST, ALL = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local IX = {pending=KEYS[6], sending=KEYS[7], delivered=KEYS[8], retrying=KEYS[9], failed=KEYS[10], cancelled=KEYS[11]}
local function is_final_job(s) return s == 'completed' or s == 'cancelled' or s == 'failed' end
local function is_final_target(k) return k == 'delivered' or k == 'failed' or k == 'cancelled' end
local function count_field(k, reason) if k == 'failed' then return 'f:' .. reason end return k end
local function reason_of(m) if m.k == 'failed' and type(m.s) == 'table' and type(m.s.reason) == 'string' then return m.s.reason end return '' end
local function put(key, k, a, u, sjson)
  redis.call('HSET', ST, key, string.format('{"k":"%s","a":%d,"u":%d,"s":%s}', k, a, u, sjson))
end
local function move(key, old_k, old_reason, new_k, new_reason)
  if old_k ~= new_k then
    redis.call('ZREM', IX[old_k], key)
    redis.call('ZADD', IX[new_k], 0, key)
  end
  redis.call('HINCRBY', COUNTS, count_field(old_k, old_reason), -1)
  redis.call('HINCRBY', COUNTS, count_field(new_k, new_reason), 1)
end
local function maybe_complete(now)
  if is_final_job(redis.call('HGET', REC, 'state')) then return 0 end
  if redis.call('HGET', REC, 'complete') ~= '1' then return 0 end
  local c = redis.call('HMGET', COUNTS, 'pending', 'sending', 'retrying')
  if (tonumber(c[1]) or 0) + (tonumber(c[2]) or 0) + (tonumber(c[3]) or 0) > 0 then return 0 end
  redis.call('HSET', REC, 'state', 'completed', 'finished', now)
  redis.call('HSETNX', REC, 'started', now)
  return 1
end
"#;

/// KEYS: bot idem hash. ARGV: field, new job id, body hash.
/// Returns {job id, body hash} (the stored ones when the key was used before).
const IDEM: &str = r#"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  local m = cjson.decode(raw)
  return {m.j, m.h}
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode({j = ARGV[2], h = ARGV[3]}))
return {ARGV[2], ARGV[3]}
"#;

/// KEYS: rec. ARGV: spec json, now. Returns 'created' or 'existing'.
const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'existing' end
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'state', 'queued', 'created', ARGV[2], 'exp', 'null', 'complete', '0')
return 'created'
"#;

/// KEYS: rec. ARGV: consumer, lease ms, now.
/// Returns 'missing', 'done' (nothing to expand), 'held' or 'granted'.
const CLAIM_EXPANSION: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
local s = redis.call('HGET', KEYS[1], 'state')
if s == 'completed' or s == 'cancelled' or s == 'failed' then return 'done' end
if redis.call('HGET', KEYS[1], 'complete') == '1' then return 'done' end
local now = tonumber(ARGV[3])
local owner = redis.call('HGET', KEYS[1], 'xo')
local untl = tonumber(redis.call('HGET', KEYS[1], 'xu') or '0') or 0
if owner and owner ~= ARGV[1] and untl > now then return 'held' end
redis.call('HSET', KEYS[1], 'xo', ARGV[1], 'xu', string.format('%d', now + tonumber(ARGV[2])))
return 'granted'
"#;

/// KEYS: rec, counts. Returns {rec flat, counts flat}.
const GET: &str = r#"
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
"#;

/// Job KEYS. ARGV: state, error json, now. Returns 'missing' or 'ok'.
const SET_STATE: &str = r#"
if redis.call('EXISTS', REC) == 0 then return 'missing' end
local cur = redis.call('HGET', REC, 'state')
if is_final_job(cur) then return 'ok' end
local s, now = ARGV[1], ARGV[3]
redis.call('HSET', REC, 'state', s)
if s == 'running' or is_final_job(s) then redis.call('HSETNX', REC, 'started', now) end
if is_final_job(s) then redis.call('HSET', REC, 'finished', now) end
if s == 'failed' then redis.call('HSET', REC, 'error', ARGV[2]) end
return 'ok'
"#;

/// Job KEYS. ARGV: cursor json, complete '0'/'1', now.
const SET_EXPANSION: &str = r#"
if redis.call('EXISTS', REC) == 0 then return 'missing' end
redis.call('HSET', REC, 'exp', ARGV[1], 'complete', ARGV[2])
maybe_complete(ARGV[3])
return 'ok'
"#;

/// Job KEYS. ARGV: now, then (target key, target json) pairs.
/// Returns the number added, or -1 when the job is missing.
const ADD_TARGETS: &str = r#"
if redis.call('EXISTS', REC) == 0 then return -1 end
local now = tonumber(ARGV[1])
local k, sjson = 'pending', '{"state":"pending"}'
if is_final_job(redis.call('HGET', REC, 'state')) then k, sjson = 'cancelled', '{"state":"cancelled"}' end
local added = 0
for i = 2, #ARGV, 2 do
  local key = ARGV[i]
  if redis.call('HSETNX', TARGETS, key, ARGV[i + 1]) == 1 then
    put(key, k, 0, now, sjson)
    redis.call('ZADD', ALL, 0, key)
    redis.call('ZADD', IX[k], 0, key)
    added = added + 1
  end
end
if added > 0 then
  redis.call('HINCRBY', COUNTS, 'total', added)
  redis.call('HINCRBY', COUNTS, k, added)
end
return added
"#;

/// Job KEYS. ARGV: now, batch size. Marks the job cancelled (unless final)
/// and cancels up to a batch of pending/retrying targets.
/// Returns 'missing', 'final' (it was final before) or the number still open.
const CANCEL: &str = r#"
if redis.call('EXISTS', REC) == 0 then return 'missing' end
local s = redis.call('HGET', REC, 'state')
local now, batch = tonumber(ARGV[1]), tonumber(ARGV[2])
if s ~= 'cancelled' then
  if is_final_job(s) then return 'final' end
  redis.call('HSET', REC, 'state', 'cancelled', 'finished', now)
end
for _, k in ipairs({'pending', 'retrying'}) do
  local keys = redis.call('ZRANGE', IX[k], 0, batch - 1)
  for _, key in ipairs(keys) do
    local m = cjson.decode(redis.call('HGET', ST, key))
    move(key, k, '', 'cancelled', '')
    put(key, 'cancelled', m.a, now, '{"state":"cancelled"}')
  end
  batch = batch - #keys
  if batch <= 0 then break end
end
return tostring(redis.call('ZCARD', IX['pending']) + redis.call('ZCARD', IX['retrying']))
"#;

/// Job KEYS. ARGV: target key, entry id, consumer, lease ms, now, resume own
/// ('1': a `sending` marker of this consumer is taken again at once).
/// Returns {'unknown'}, {'final', kind}, {'not_due', at}, {'in_flight', entry, since}
/// or {'begun', attempt, takeover 0/1}.
const BEGIN: &str = r#"
if redis.call('EXISTS', REC) == 0 then return {'unknown'} end
local key, now = ARGV[1], tonumber(ARGV[5])
local raw = redis.call('HGET', ST, key)
if not raw then return {'unknown'} end
local m = cjson.decode(raw)
local k = m.k
if is_final_target(k) then return {'final', k} end
if k ~= 'sending' and redis.call('HGET', REC, 'state') == 'cancelled' then
  move(key, k, '', 'cancelled', '')
  put(key, 'cancelled', m.a, now, '{"state":"cancelled"}')
  return {'final', 'cancelled'}
end
if k == 'retrying' and tonumber(m.s.next_at_ms) > now then
  return {'not_due', string.format('%d', m.s.next_at_ms)}
end
local takeover = '0'
local a = (tonumber(m.a) or 0) + 1
if k == 'sending' then
  if ARGV[6] == '1' and m.s.consumer == ARGV[3] then
    -- Its own marker, whose begin's answer it lost: nothing was sent.
    a = math.max(tonumber(m.a) or 1, 1)
  elseif tonumber(m.s.since_ms) + tonumber(ARGV[4]) > now then
    return {'in_flight', m.s.entry_id, string.format('%d', m.s.since_ms)}
  else
    takeover = '1'
  end
end
move(key, k, '', 'sending', '')
put(key, 'sending', a, now, string.format('{"state":"sending","entry_id":%s,"consumer":%s,"since_ms":%d}',
  cjson.encode(ARGV[2]), cjson.encode(ARGV[3]), now))
return {'begun', string.format('%d', a), takeover}
"#;

/// Job KEYS. ARGV: target key, outcome ('delivered'/'retry'/'failed'), now,
/// then delivered: activity id json; retry: next_at, reason json;
/// failed: reason (raw), reason json, status json, detail json.
/// Returns {'unknown'} or {applied 0/1, completed 0/1}.
const FINISH: &str = r#"
if redis.call('EXISTS', REC) == 0 then return {'unknown'} end
local key, outcome, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local raw = redis.call('HGET', ST, key)
if not raw then return {'0', '0'} end
local m = cjson.decode(raw)
if is_final_target(m.k) then return {'0', '0'} end
local a = tonumber(m.a) or 0
local new_k, reason, sjson = outcome, '', nil
if outcome == 'delivered' then
  sjson = string.format('{"state":"delivered","activity_id":%s}', ARGV[4])
elseif outcome == 'retry' then
  if redis.call('HGET', REC, 'state') == 'cancelled' then
    new_k, sjson = 'cancelled', '{"state":"cancelled"}'
  else
    new_k = 'retrying'
    sjson = string.format('{"state":"retrying","attempts":%d,"next_at_ms":%d,"reason":%s}', a, tonumber(ARGV[4]), ARGV[5])
  end
else
  reason = ARGV[4]
  sjson = string.format('{"state":"failed","reason":%s,"status":%s,"detail":%s}', ARGV[5], ARGV[6], ARGV[7])
end
move(key, m.k, '', new_k, reason)
put(key, new_k, a, now, sjson)
return {'1', tostring(maybe_complete(now))}
"#;

/// KEYS: work stream. ARGV: job id, then target jsons.
const ENQUEUE: &str = r#"
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'j', ARGV[1], 't', ARGV[i], 'a', '0')
end
return #ARGV - 1
"#;

/// KEYS: work stream, due zset. ARGV: now, max. Moves due items to the stream.
const PROMOTE: &str = r#"
local items = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(items) do
  local j, a, n, t = string.match(member, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n(.*)$')
  if j then redis.call('XADD', KEYS[1], '*', 'j', j, 't', t, 'a', a) end
  redis.call('ZREM', KEYS[2], member)
end
return #items
"#;

/// KEYS: work stream. ARGV: group, entry id.
const ACK: &str = r#"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"#;

/// KEYS: work stream. ARGV: group, consumer, entry ids. Restarts the idle
/// time of the entries this consumer still owns (`XCLAIM ... JUSTID` to
/// itself: the delivery count is unchanged); returns the ids it does not own.
const TOUCH: &str = r#"
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"#;

/// KEYS: work stream. ARGV: group, consumer, entry ids. Queues each entry this
/// consumer owns again as a new entry (same fields) and acknowledges the old
/// one; returns how many.
const RELEASE: &str = r#"
local n = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    local r = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
    if r[1] then
      redis.call('XADD', KEYS[1], '*', unpack(r[1][2]))
      n = n + 1
    end
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    redis.call('XDEL', KEYS[1], ARGV[i])
  end
end
return n
"#;

/// KEYS: bot idem hash. ARGV: field, job id. Deletes the idempotency entry
/// if it still maps to that job.
const IDEM_FORGET: &str = r#"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw and cjson.decode(raw).j == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
"#;

/// KEYS: work stream, due zset. ARGV: group, entry id, due at, member.
const RESCHEDULE: &str = r#"
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"#;

/// KEYS: work stream, dead stream. ARGV: group, consumer, min idle ms, max,
/// max deliveries, dead max len. Returns {claimed, dead}, each a flat list of
/// (id, j, t, a).
const RECLAIM: &str = r#"
local group, min_idle, max = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
local function fields(list)
  local f = {}
  for i = 1, #list, 2 do f[list[i]] = list[i + 1] end
  return f
end
local dead = {}
local pending = redis.call('XPENDING', KEYS[1], group, 'IDLE', min_idle, '-', '+', max)
for _, e in ipairs(pending) do
  if tonumber(e[4]) >= tonumber(ARGV[5]) then
    local r = redis.call('XRANGE', KEYS[1], e[1], e[1])
    if r[1] then
      local f = fields(r[1][2])
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'j', f.j or '', 't', f.t or '', 'a', f.a or '0')
      dead[#dead + 1] = e[1]
      dead[#dead + 1] = f.j or ''
      dead[#dead + 1] = f.t or ''
      dead[#dead + 1] = f.a or '0'
    end
    redis.call('XACK', KEYS[1], group, e[1])
    redis.call('XDEL', KEYS[1], e[1])
  end
end
local claimed = {}
local c = redis.call('XAUTOCLAIM', KEYS[1], group, ARGV[2], min_idle, '0-0', 'COUNT', max)
for _, entry in ipairs(c[2]) do
  if type(entry) == 'table' and type(entry[2]) == 'table' then
    local f = fields(entry[2])
    claimed[#claimed + 1] = entry[1]
    claimed[#claimed + 1] = f.j or ''
    claimed[#claimed + 1] = f.t or ''
    claimed[#claimed + 1] = f.a or '0'
  end
end
return {claimed, dead}
"#;

/// Keeps `[A-Za-z0-9._@:-]`, percent-escapes every other byte: injective, and
/// no `{`/`}` can reach a key name.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._@:-".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unavailable(e: impl std::fmt::Display) -> JobStoreError {
    JobStoreError::Unavailable(e.to_string())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The connection blocking reads use (never one of the pool's).
enum BlockingConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl BlockingConn {
    async fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Self::Single(c) => cmd.query_async(c).await,
            Self::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// The connection of the per-delivery hot path (`begin_send`, `finish_send`,
/// `ack`, `reschedule`, `touch`): one multiplexed connection (a cluster
/// connection on Redis Cluster) shared by every delivery of the process.
/// Both are cloneable handles that pipeline concurrent requests on one
/// socket, so a delivery pays no pool checkout (deadpool-redis sends `UNWATCH`
/// and `PING` on every checkout: two extra round trips per script).
#[derive(Clone)]
enum HotConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for HotConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Response timeout of the hot connection: a store call that takes longer
/// is reported unavailable (the notifier retries it), and the connection is
/// opened again.
const HOT_TIMEOUT: Duration = Duration::from_secs(5);

/// Notification jobs in Redis; see the module comment for the layout.
pub struct RedisJobStore {
    pool: RedisPool,
    prefix: String,
    urls: Vec<String>,
    cluster: bool,
    options: JobStoreOptions,
    group_ready: AtomicBool,
    blocking: Mutex<Option<BlockingConn>>,
    hot: parking_lot::Mutex<Option<HotConn>>,
    scripts: Scripts,
}

struct Scripts {
    idem: Script,
    create: Script,
    get: Script,
    set_state: Script,
    set_expansion: Script,
    add_targets: Script,
    cancel: Script,
    list_targets: Script,
    begin: Script,
    finish: Script,
    enqueue: Script,
    promote: Script,
    ack: Script,
    reschedule: Script,
    reclaim: Script,
    claim_expansion: Script,
    touch: Script,
    release: Script,
    idem_forget: Script,
}

impl std::fmt::Debug for RedisJobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisJobStore")
            .field("pool", &self.pool)
            .field("prefix", &self.prefix)
            .field("cluster", &self.cluster)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

struct JobKeys {
    base: String,
}

impl JobKeys {
    fn rec(&self) -> String {
        format!("{}:rec", self.base)
    }
    fn counts(&self) -> String {
        format!("{}:counts", self.base)
    }
    fn targets(&self) -> String {
        format!("{}:targets", self.base)
    }
    fn st(&self) -> String {
        format!("{}:st", self.base)
    }
    fn ix(&self, kind: Option<DeliveryStateKind>) -> String {
        format!("{}:ix:{}", self.base, kind.map_or("all", |k| k.as_str()))
    }
    /// The KEYS of every job script, in the order PRELUDE names them.
    fn all(&self) -> Vec<String> {
        let mut keys = vec![
            self.rec(),
            self.counts(),
            self.targets(),
            self.st(),
            self.ix(None),
        ];
        keys.extend(DeliveryStateKind::ALL.iter().map(|k| self.ix(Some(*k))));
        keys
    }
}

fn script_with_keys<'a>(script: &'a Script, keys: &[String]) -> redis::ScriptInvocation<'a> {
    let mut inv = script.prepare_invoke();
    for k in keys {
        inv.key(k);
    }
    inv
}

#[derive(Deserialize)]
struct StoredState {
    a: u32,
    u: u64,
    s: DeliveryState,
}

impl RedisJobStore {
    /// `key_prefix` goes before every key (may be empty). `urls` / `cluster`
    /// are what `pool` was made from (as in [`RedisPool::connect`]): blocking
    /// reads open their own connection with them.
    pub fn new(
        pool: RedisPool,
        key_prefix: &str,
        urls: &[String],
        cluster: bool,
        options: JobStoreOptions,
    ) -> Self {
        let prefix = if key_prefix.is_empty() || key_prefix.ends_with(':') {
            key_prefix.to_owned()
        } else {
            format!("{key_prefix}:")
        };
        let job = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Self {
            pool,
            prefix,
            urls: urls.to_vec(),
            cluster: cluster || urls.len() > 1,
            options,
            group_ready: AtomicBool::new(false),
            blocking: Mutex::new(None),
            hot: parking_lot::Mutex::new(None),
            scripts: Scripts {
                idem: Script::new(IDEM),
                create: Script::new(CREATE),
                get: Script::new(GET),
                set_state: job(SET_STATE),
                set_expansion: job(SET_EXPANSION),
                add_targets: job(ADD_TARGETS),
                cancel: job(CANCEL),
                // KEYS: zset, targets, st -> (key, target json, st json) triples.
                list_targets: Script::new(crate::redis_pool::PAGE_BY_LEX),
                begin: job(BEGIN),
                finish: job(FINISH),
                enqueue: Script::new(ENQUEUE),
                promote: Script::new(PROMOTE),
                ack: Script::new(ACK),
                reschedule: Script::new(RESCHEDULE),
                reclaim: Script::new(RECLAIM),
                claim_expansion: Script::new(CLAIM_EXPANSION),
                touch: Script::new(TOUCH),
                release: Script::new(RELEASE),
                idem_forget: Script::new(IDEM_FORGET),
            },
        }
    }

    fn job_keys(&self, job_id: &str) -> JobKeys {
        JobKeys {
            base: format!("{}{KEY_SCHEMA}:jobs:{{{}}}", self.prefix, escape(job_id)),
        }
    }

    fn bot_key(&self, bot_id: &str, what: &str) -> String {
        format!(
            "{}{KEY_SCHEMA}:jobs:bot:{{{}}}:{what}",
            self.prefix,
            escape(bot_id)
        )
    }

    fn active_key(&self) -> String {
        format!("{}{KEY_SCHEMA}:jobs:{{a}}:active", self.prefix)
    }

    fn queue_key(&self, what: &str) -> String {
        format!("{}{KEY_SCHEMA}:jobs:{{q}}:{what}", self.prefix)
    }

    async fn conn(&self) -> Result<RedisConn, JobStoreError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// The hot path's shared connection (opened on first use, and again
    /// after a connection error: see [`RedisJobStore::hot_result`]).
    async fn hot(&self) -> Result<HotConn, JobStoreError> {
        if let Some(c) = self.hot.lock().clone() {
            return Ok(c);
        }
        let conn = if self.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(self.urls.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(HOT_TIMEOUT)
                .build()
                .map_err(unavailable)?;
            HotConn::Cluster(client.get_async_connection().await.map_err(unavailable)?)
        } else {
            let url = self
                .urls
                .first()
                .ok_or_else(|| unavailable("no Redis URL for the job store"))?;
            let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_response_timeout(HOT_TIMEOUT);
            HotConn::Single(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(unavailable)?,
            )
        };
        // Two first callers may both connect; the first stored one is kept.
        Ok(self.hot.lock().get_or_insert(conn).clone())
    }

    /// Maps a hot-path result, dropping the shared connection after an error
    /// that may have broken it (the next call opens a new one).
    fn hot_result<T>(&self, r: redis::RedisResult<T>) -> Result<T, JobStoreError> {
        r.map_err(|e| {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.is_connection_refusal()
            {
                *self.hot.lock() = None;
            }
            unavailable(e)
        })
    }

    /// Creates the consumer group (reading from the start, so entries added
    /// before it are delivered too); an existing group is fine.
    async fn ensure_group(&self, force: bool) -> Result<(), JobStoreError> {
        if !force && self.group_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let created: redis::RedisResult<String> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.queue_key("work"))
            .arg(&self.options.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(unavailable(e)),
        }
        self.group_ready.store(true, Ordering::Release);
        Ok(())
    }

    async fn blocking_conn(&self) -> Result<BlockingConn, JobStoreError> {
        let timeout = MAX_BLOCK + BLOCK_MARGIN;
        if self.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(self.urls.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(timeout)
                .build()
                .map_err(unavailable)?;
            let conn = client.get_async_connection().await.map_err(unavailable)?;
            Ok(BlockingConn::Cluster(conn))
        } else {
            let url = self
                .urls
                .first()
                .ok_or_else(|| unavailable("no Redis URL for the job queue's blocking reads"))?;
            let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_response_timeout(timeout);
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(unavailable)?;
            Ok(BlockingConn::Single(conn))
        }
    }

    async fn read_group(
        &self,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<WorkItem>, JobStoreError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.options.group)
            .arg(consumer)
            .arg("COUNT")
            .arg(max);
        // BLOCK 0 would wait forever.
        let block = block.min(MAX_BLOCK);
        if !block.is_zero() {
            cmd.arg("BLOCK").arg(ms(block).max(1));
        }
        cmd.arg("STREAMS").arg(self.queue_key("work")).arg(">");
        let mut guard = self.blocking.lock().await;
        let mut conn = match guard.take() {
            Some(c) => c,
            None => self.blocking_conn().await?,
        };
        let reply: redis::RedisResult<Option<StreamReadReply>> = conn.query(&cmd).await;
        match reply {
            Ok(reply) => {
                *guard = Some(conn);
                let mut items = Vec::new();
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    for id in key.ids {
                        let field = |name: &str| -> Option<String> {
                            id.map
                                .get(name)
                                .and_then(|v| String::from_redis_value(v).ok())
                        };
                        if let Some(item) = work_item(&id.id, field("j"), field("t"), field("a")) {
                            items.push(item);
                        } else {
                            tracing::warn!(entry = %id.id, "dropping a malformed work entry");
                            self.ack_entry(&id.id).await?;
                        }
                    }
                }
                Ok(items)
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                *guard = Some(conn);
                drop(guard);
                self.ensure_group(true).await?;
                Ok(Vec::new())
            }
            // A timeout or a broken connection: reconnect on the next take.
            Err(e) if e.is_timeout() => Ok(Vec::new()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn ack_entry(&self, entry_id: &str) -> Result<(), JobStoreError> {
        let mut conn = self.hot().await?;
        let r: redis::RedisResult<i64> = self
            .scripts
            .ack
            .key(self.queue_key("work"))
            .arg(&self.options.group)
            .arg(entry_id)
            .invoke_async(&mut conn)
            .await;
        self.hot_result(r)?;
        Ok(())
    }

    fn decode_job(
        job_id: &str,
        rec: Vec<String>,
        counts: Vec<String>,
    ) -> Result<Option<JobRecord>, JobStoreError> {
        if rec.is_empty() {
            return Ok(None);
        }
        let corrupt = |reason: String| JobStoreError::Corrupt {
            job_id: job_id.to_owned(),
            reason,
        };
        let pairs = |flat: Vec<String>| {
            let mut it = flat.into_iter();
            let mut out = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            out
        };
        let mut spec = None;
        let mut state = None;
        let (mut created, mut started, mut finished) = (0, None, None);
        let mut error = None;
        let mut expansion = Expansion::default();
        for (k, v) in pairs(rec) {
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| corrupt(format!("{k} is not a number")))
            };
            match k.as_str() {
                "spec" => {
                    spec = Some(
                        serde_json::from_str::<JobSpec>(&v)
                            .map_err(|e| corrupt(format!("spec: {e}")))?,
                    )
                }
                "state" => state = JobState::parse(&v),
                "created" => created = num(&v)?,
                "started" => started = Some(num(&v)?),
                "finished" => finished = Some(num(&v)?),
                "error" => error = serde_json::from_str::<Option<String>>(&v).ok().flatten(),
                "exp" => {
                    expansion.cursor = serde_json::from_str::<Option<String>>(&v)
                        .map_err(|e| corrupt(format!("expansion cursor: {e}")))?
                }
                "complete" => expansion.complete = v == "1",
                _ => {}
            }
        }
        let spec = spec.ok_or_else(|| corrupt("no spec".into()))?;
        let state = state.ok_or_else(|| corrupt("no or unknown state".into()))?;
        let mut c = JobCounts::default();
        for (k, v) in pairs(counts) {
            let n = u64::try_from(v.parse::<i64>().unwrap_or(0)).unwrap_or(0);
            match k.as_str() {
                "total" => c.total = n,
                "pending" => c.pending = n,
                "sending" => c.sending = n,
                "delivered" => c.delivered = n,
                "retrying" => c.retrying = n,
                "cancelled" => c.cancelled = n,
                other => {
                    if let Some(reason) = other.strip_prefix("f:") {
                        if n > 0 {
                            c.failed_by_reason.insert(reason.to_owned(), n);
                        }
                    }
                }
            }
        }
        Ok(Some(JobRecord {
            id: job_id.to_owned(),
            spec,
            state,
            counts: c,
            expansion,
            error,
            created_at_ms: created,
            started_at_ms: started,
            finished_at_ms: finished,
        }))
    }

    async fn must_get(&self, job_id: &str) -> Result<JobRecord, JobStoreError> {
        self.get_job(job_id)
            .await?
            .ok_or_else(|| JobStoreError::NotFound(job_id.to_owned()))
    }
}

fn work_item(
    entry_id: &str,
    job: Option<String>,
    target: Option<String>,
    attempt: Option<String>,
) -> Option<WorkItem> {
    let job_id = job.filter(|j| !j.is_empty())?;
    let target: Target = serde_json::from_str(&target?).ok()?;
    let attempt = attempt.and_then(|a| a.parse().ok()).unwrap_or(0);
    Some(WorkItem {
        entry_id: entry_id.to_owned(),
        job_id,
        target,
        attempt,
    })
}

fn work_items(flat: Vec<String>) -> Vec<WorkItem> {
    let mut out = Vec::new();
    let mut it = flat.into_iter();
    while let (Some(id), Some(j), Some(t), Some(a)) = (it.next(), it.next(), it.next(), it.next()) {
        match work_item(&id, Some(j), Some(t), Some(a)) {
            Some(item) => out.push(item),
            None => tracing::warn!(entry = %id, "ignoring a malformed work entry"),
        }
    }
    out
}

fn idem_field(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

#[async_trait]
impl JobStore for RedisJobStore {
    async fn create_job(&self, spec: JobSpec, now_ms: u64) -> Result<CreateJob, JobStoreError> {
        check_spec(&spec)?;
        let mut conn = self.conn().await?;
        let mut job_id = new_job_id();
        if let Some(key) = &spec.idempotency_key {
            let (stored_id, stored_hash): (String, String) = self
                .scripts
                .idem
                .key(self.bot_key(&spec.bot_id, "idem"))
                .arg(idem_field(key))
                .arg(&job_id)
                .arg(&spec.body_hash)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if stored_hash != spec.body_hash {
                return Err(JobStoreError::Conflict {
                    bot_id: spec.bot_id.clone(),
                    key: key.clone(),
                    job_id: stored_id,
                });
            }
            job_id = stored_id;
        }
        // Indexed before it exists, so no running job is ever missing from
        // the index (a failed creation's entry is dropped by active_jobs).
        let _: i64 = redis::cmd("ZADD")
            .arg(self.active_key())
            .arg("NX")
            .arg(now_ms)
            .arg(&job_id)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let spec_json = serde_json::to_string(&spec).map_err(unavailable)?;
        let created: String = self
            .scripts
            .create
            .key(self.job_keys(&job_id).rec())
            .arg(spec_json)
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let record = self.must_get(&job_id).await?;
        if created == "created" {
            let _: i64 = redis::cmd("ZADD")
                .arg(self.bot_key(&spec.bot_id, "list"))
                .arg(record.created_at_ms)
                .arg(&job_id)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(CreateJob::Created(record))
        } else {
            Ok(CreateJob::Existing(record))
        }
    }

    async fn get_job(&self, job_id: &str) -> Result<Option<JobRecord>, JobStoreError> {
        let keys = self.job_keys(job_id);
        let mut conn = self.conn().await?;
        let (rec, counts): (Vec<String>, Vec<String>) = self
            .scripts
            .get
            .key(keys.rec())
            .key(keys.counts())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Self::decode_job(job_id, rec, counts)
    }

    async fn list_jobs(
        &self,
        bot_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, JobStoreError> {
        let after = match decode_cursor(cursor)? {
            None => None,
            Some(a) => Some(parse_job_cursor(&a)?),
        };
        let size = page_size(limit);
        let max = after
            .as_ref()
            .map_or_else(|| "+inf".to_owned(), |(at, _)| at.to_string());
        let mut conn = self.conn().await?;
        // Ties on the creation time are resolved below: fetch enough to skip them.
        let raw: Vec<(String, f64)> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(self.bot_key(bot_id, "list"))
            .arg(max)
            .arg("-inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(size + 1 + 1000)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        drop(conn);
        let mut ids: Vec<(u64, String)> = raw
            .into_iter()
            .map(|(id, score)| (score as u64, id))
            .collect();
        ids.sort_by(|a, b| b.cmp(a));
        let mut items = Vec::new();
        for (at, id) in ids {
            if let Some(a) = &after {
                if (at, id.clone()) >= *a {
                    continue;
                }
            }
            if items.len() > size {
                break;
            }
            if let Some(job) = self.get_job(&id).await? {
                items.push(job);
            }
        }
        Ok(JobPage::from_overfetched(items, size))
    }

    async fn active_jobs(
        &self,
        cursor: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Result<JobPage, JobStoreError> {
        /// A missing job this old was never created (see the module comment).
        const ABANDONED_MS: u64 = 60_000;
        let after = match decode_cursor(cursor)? {
            None => None,
            Some(a) => Some(parse_job_cursor(&a)?),
        };
        let size = page_size(limit);
        let min = after
            .as_ref()
            .map_or_else(|| "-inf".to_owned(), |(at, _)| at.to_string());
        let mut conn = self.conn().await?;
        // Ties on the creation time are resolved below: fetch enough to skip them.
        let raw: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.active_key())
            .arg(min)
            .arg("+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(size + 1 + 1000)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        drop(conn);
        let mut ids: Vec<(u64, String)> = raw
            .into_iter()
            .map(|(id, score)| (score as u64, id))
            .collect();
        ids.sort();
        let mut items = Vec::new();
        let mut drop_ids = Vec::new();
        for (at, id) in ids {
            if let Some(a) = &after {
                if (at, id.clone()) <= *a {
                    continue;
                }
            }
            if items.len() > size {
                break;
            }
            match self.get_job(&id).await? {
                Some(job) if !job.state.is_final() => items.push(job),
                Some(_) => drop_ids.push(id),
                None if at.saturating_add(ABANDONED_MS) < now_ms => drop_ids.push(id),
                None => {}
            }
        }
        if !drop_ids.is_empty() {
            let mut conn = self.conn().await?;
            let _: i64 = redis::cmd("ZREM")
                .arg(self.active_key())
                .arg(&drop_ids)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        Ok(JobPage::from_overfetched(items, size))
    }

    async fn claim_expansion(
        &self,
        job_id: &str,
        consumer: &str,
        lease: Duration,
        now_ms: u64,
    ) -> Result<bool, JobStoreError> {
        let mut conn = self.conn().await?;
        let reply: String = self
            .scripts
            .claim_expansion
            .key(self.job_keys(job_id).rec())
            .arg(consumer)
            .arg(ms(lease))
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        match reply.as_str() {
            "missing" => Err(JobStoreError::NotFound(job_id.to_owned())),
            "granted" => Ok(true),
            _ => Ok(false),
        }
    }

    async fn user_conversation(
        &self,
        bot_id: &str,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<Option<String>, JobStoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("HGET")
            .arg(self.bot_key(bot_id, "users"))
            .arg(format!("{tenant_id}\n{user_id}"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn set_user_conversation(
        &self,
        bot_id: &str,
        tenant_id: &str,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<(), JobStoreError> {
        let mut conn = self.conn().await?;
        let _: i64 = redis::cmd("HSET")
            .arg(self.bot_key(bot_id, "users"))
            .arg(format!("{tenant_id}\n{user_id}"))
            .arg(conversation_id)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn set_state(
        &self,
        job_id: &str,
        state: JobState,
        error: Option<&str>,
        now_ms: u64,
    ) -> Result<JobRecord, JobStoreError> {
        let keys = self.job_keys(job_id).all();
        let mut conn = self.conn().await?;
        let reply: String = script_with_keys(&self.scripts.set_state, &keys)
            .arg(state.as_str())
            .arg(serde_json::to_string(&error).map_err(unavailable)?)
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if reply == "missing" {
            return Err(JobStoreError::NotFound(job_id.to_owned()));
        }
        self.must_get(job_id).await
    }

    async fn set_expansion(
        &self,
        job_id: &str,
        expansion: &Expansion,
        now_ms: u64,
    ) -> Result<JobRecord, JobStoreError> {
        let keys = self.job_keys(job_id).all();
        let mut conn = self.conn().await?;
        let reply: String = script_with_keys(&self.scripts.set_expansion, &keys)
            .arg(serde_json::to_string(&expansion.cursor).map_err(unavailable)?)
            .arg(if expansion.complete { "1" } else { "0" })
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if reply == "missing" {
            return Err(JobStoreError::NotFound(job_id.to_owned()));
        }
        self.must_get(job_id).await
    }

    async fn add_targets(
        &self,
        job_id: &str,
        targets: &[Target],
        now_ms: u64,
    ) -> Result<u64, JobStoreError> {
        let keys = self.job_keys(job_id).all();
        let mut added = 0;
        let mut conn = self.conn().await?;
        for chunk in targets.chunks(500) {
            let mut inv = script_with_keys(&self.scripts.add_targets, &keys);
            inv.arg(now_ms);
            for t in chunk {
                inv.arg(t.key())
                    .arg(serde_json::to_string(t).map_err(unavailable)?);
            }
            let n: i64 = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
            if n < 0 {
                return Err(JobStoreError::NotFound(job_id.to_owned()));
            }
            added += u64::try_from(n).unwrap_or(0);
        }
        if targets.is_empty() {
            // Still say whether the job exists.
            self.must_get(job_id).await?;
        }
        Ok(added)
    }

    async fn list_targets(
        &self,
        job_id: &str,
        state: Option<DeliveryStateKind>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<TargetPage, JobStoreError> {
        let after = decode_cursor(cursor)?;
        let size = page_size(limit);
        let keys = self.job_keys(job_id);
        let min = after.map_or_else(|| "-".to_owned(), |k| format!("({k}"));
        let mut conn = self.conn().await?;
        let exists: i64 = redis::cmd("EXISTS")
            .arg(keys.rec())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if exists == 0 {
            return Err(JobStoreError::NotFound(job_id.to_owned()));
        }
        let flat: Vec<Option<String>> = self
            .scripts
            .list_targets
            .key(keys.ix(state))
            .key(keys.targets())
            .key(keys.st())
            .arg(min)
            .arg(size + 1)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let corrupt = |reason: String| JobStoreError::Corrupt {
            job_id: job_id.to_owned(),
            reason,
        };
        let mut items = Vec::with_capacity(flat.len() / 3);
        let mut it = flat.into_iter();
        while let (Some(key), Some(target), Some(st)) = (it.next(), it.next(), it.next()) {
            let key = key.unwrap_or_default();
            let (Some(target), Some(st)) = (target, st) else {
                return Err(corrupt(format!("target {key:?} is missing its record")));
            };
            let target: Target = serde_json::from_str(&target)
                .map_err(|e| corrupt(format!("target {key:?}: {e}")))?;
            let st: StoredState = serde_json::from_str(&st)
                .map_err(|e| corrupt(format!("state of target {key:?}: {e}")))?;
            items.push(TargetEntry {
                key,
                target,
                state: st.s,
                attempts: st.a,
                updated_at_ms: st.u,
            });
        }
        Ok(TargetPage::from_overfetched(items, size))
    }

    async fn cancel(&self, job_id: &str, now_ms: u64) -> Result<JobRecord, JobStoreError> {
        let keys = self.job_keys(job_id).all();
        let mut conn = self.conn().await?;
        loop {
            let reply: String = script_with_keys(&self.scripts.cancel, &keys)
                .arg(now_ms)
                .arg(CANCEL_BATCH)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            match reply.as_str() {
                "missing" => return Err(JobStoreError::NotFound(job_id.to_owned())),
                "final" | "0" => break,
                _ => {}
            }
        }
        drop(conn);
        self.must_get(job_id).await
    }

    async fn enqueue(&self, job_id: &str, targets: &[Target]) -> Result<(), JobStoreError> {
        self.ensure_group(false).await?;
        let mut conn = self.conn().await?;
        for chunk in targets.chunks(500) {
            let mut inv = self.scripts.enqueue.prepare_invoke();
            inv.key(self.queue_key("work")).arg(job_id);
            for t in chunk {
                inv.arg(serde_json::to_string(t).map_err(unavailable)?);
            }
            let _: i64 = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn take(
        &self,
        consumer: &str,
        max: usize,
        block: Duration,
        now_ms: u64,
    ) -> Result<Vec<WorkItem>, JobStoreError> {
        let max = max.max(1);
        self.ensure_group(false).await?;
        {
            let mut conn = self.conn().await?;
            let _: i64 = self
                .scripts
                .promote
                .key(self.queue_key("work"))
                .key(self.queue_key("due"))
                .arg(now_ms)
                .arg(max)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        // Block no longer than until the next due item.
        let mut block = block;
        if !block.is_zero() {
            let mut conn = self.conn().await?;
            let next: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(self.queue_key("due"))
                .arg(0)
                .arg(0)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if let Some((_, at)) = next.first() {
                let wait = Duration::from_millis((*at as u64).saturating_sub(now_ms));
                block = block.min(wait.max(Duration::from_millis(1)));
            }
        }
        self.read_group(consumer, max, block).await
    }

    async fn ack(&self, item: &WorkItem) -> Result<(), JobStoreError> {
        self.ack_entry(&item.entry_id).await
    }

    async fn reschedule(&self, item: &WorkItem, at_ms: u64) -> Result<(), JobStoreError> {
        let member = format!(
            "{}\n{}\n{:016x}\n{}",
            item.job_id,
            item.attempt.saturating_add(1),
            rand::random::<u64>(),
            serde_json::to_string(&item.target).map_err(unavailable)?
        );
        let mut conn = self.hot().await?;
        let r: redis::RedisResult<i64> = self
            .scripts
            .reschedule
            .key(self.queue_key("work"))
            .key(self.queue_key("due"))
            .arg(&self.options.group)
            .arg(&item.entry_id)
            .arg(at_ms)
            .arg(member)
            .invoke_async(&mut conn)
            .await;
        self.hot_result(r)?;
        Ok(())
    }

    async fn reclaim(
        &self,
        consumer: &str,
        min_idle: Duration,
        max: usize,
        now_ms: u64,
    ) -> Result<Reclaimed, JobStoreError> {
        self.ensure_group(false).await?;
        let mut conn = self.conn().await?;
        let reply: redis::RedisResult<(Vec<String>, Vec<String>)> = self
            .scripts
            .reclaim
            .key(self.queue_key("work"))
            .key(self.queue_key("dead"))
            .arg(&self.options.group)
            .arg(consumer)
            .arg(ms(min_idle))
            .arg(max.max(1))
            .arg(self.options.max_deliveries.max(1))
            .arg(self.options.dead_letter_max_len)
            .invoke_async(&mut conn)
            .await;
        drop(conn);
        let (claimed, dead) = match reply {
            Ok(r) => r,
            Err(e) if e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP") => {
                self.ensure_group(true).await?;
                return Ok(Reclaimed::default());
            }
            Err(e) => return Err(unavailable(e)),
        };
        let dead = work_items(dead);
        for item in &dead {
            let outcome = SendOutcome::Failed {
                reason: REASON_DEAD_LETTER.into(),
                status: None,
                detail: Some(format!(
                    "the work item was taken {} times without being acknowledged",
                    self.options.max_deliveries
                )),
            };
            match self
                .finish_send(&item.job_id, &item.target, &outcome, now_ms)
                .await
            {
                Ok(_) | Err(JobStoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Reclaimed {
            items: work_items(claimed),
            dead_lettered: dead,
        })
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<WorkItem>, JobStoreError> {
        let mut conn = self.conn().await?;
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.queue_key("dead"))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(page_size(limit))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(reply
            .ids
            .iter()
            .filter_map(|id| {
                let field = |name: &str| -> Option<String> {
                    id.map
                        .get(name)
                        .and_then(|v: &Value| String::from_redis_value(v).ok())
                };
                work_item(&id.id, field("j"), field("t"), field("a"))
            })
            .collect())
    }

    async fn purge_finished(
        &self,
        bot_id: &str,
        finished_before_ms: u64,
        max: usize,
    ) -> Result<usize, JobStoreError> {
        let max = max.max(1);
        let mut conn = self.conn().await?;
        // Oldest first; a job finished before the cutoff was created before it.
        // Jobs still running are skipped, so read a few more than `max`.
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.bot_key(bot_id, "list"))
            .arg("-inf")
            .arg(format!("({finished_before_ms}"))
            .arg("LIMIT")
            .arg(0)
            .arg(max.saturating_mul(4))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        drop(conn);
        let mut purged = 0;
        for id in ids {
            if purged >= max {
                break;
            }
            let job = match self.get_job(&id).await {
                Ok(j) => j,
                // Unreadable: kept for a person to look at.
                Err(JobStoreError::Corrupt { .. }) => continue,
                Err(e) => return Err(e),
            };
            if let Some(job) = &job {
                let ended_before = job.state.is_final()
                    && job.finished_at_ms.is_some_and(|f| f < finished_before_ms);
                if !ended_before {
                    continue;
                }
            }
            let mut conn = self.conn().await?;
            // The job's keys share its hash tag: one DEL.
            let _: i64 = redis::cmd("DEL")
                .arg(self.job_keys(&id).all())
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if let Some(key) = job.as_ref().and_then(|j| j.spec.idempotency_key.as_ref()) {
                let _: i64 = self
                    .scripts
                    .idem_forget
                    .key(self.bot_key(bot_id, "idem"))
                    .arg(idem_field(key))
                    .arg(&id)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
            }
            let _: i64 = redis::cmd("ZREM")
                .arg(self.bot_key(bot_id, "list"))
                .arg(&id)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            purged += 1;
        }
        Ok(purged)
    }

    async fn touch(
        &self,
        consumer: &str,
        entry_ids: &[String],
    ) -> Result<Vec<String>, JobStoreError> {
        let mut lost = Vec::new();
        if entry_ids.is_empty() {
            return Ok(lost);
        }
        let mut conn = self.hot().await?;
        // Batches keep each script call short (Redis runs one at a time).
        for chunk in entry_ids.chunks(500) {
            let mut inv = self.scripts.touch.prepare_invoke();
            inv.key(self.queue_key("work"))
                .arg(&self.options.group)
                .arg(consumer);
            for id in chunk {
                inv.arg(id);
            }
            let gone: redis::RedisResult<Vec<String>> = inv.invoke_async(&mut conn).await;
            lost.extend(self.hot_result(gone)?);
        }
        Ok(lost)
    }

    async fn release(&self, consumer: &str, items: &[WorkItem]) -> Result<usize, JobStoreError> {
        if items.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn().await?;
        let mut released = 0;
        for chunk in items.chunks(500) {
            let mut inv = self.scripts.release.prepare_invoke();
            inv.key(self.queue_key("work"))
                .arg(&self.options.group)
                .arg(consumer);
            for item in chunk {
                inv.arg(&item.entry_id);
            }
            let n: i64 = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
            released += usize::try_from(n).unwrap_or(0);
        }
        Ok(released)
    }

    async fn begin_send_resuming(
        &self,
        item: &WorkItem,
        consumer: &str,
        lease: Duration,
        now_ms: u64,
        resume_own: bool,
    ) -> Result<BeginSend, JobStoreError> {
        let keys = self.job_keys(&item.job_id).all();
        let mut conn = self.hot().await?;
        let reply: redis::RedisResult<Vec<String>> = script_with_keys(&self.scripts.begin, &keys)
            .arg(item.target.key())
            .arg(&item.entry_id)
            .arg(consumer)
            .arg(ms(lease))
            .arg(now_ms)
            .arg(if resume_own { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await;
        let reply = self.hot_result(reply)?;
        let num = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| unavailable(format!("unexpected begin script number {s:?}")))
        };
        match reply.as_slice() {
            [u] if u == "unknown" => Ok(BeginSend::Unknown),
            [f, kind] if f == "final" => DeliveryStateKind::parse(kind)
                .map(BeginSend::AlreadyFinal)
                .ok_or_else(|| unavailable(format!("unexpected target state {kind:?}"))),
            [n, at] if n == "not_due" => Ok(BeginSend::NotDue { at_ms: num(at)? }),
            [i, entry, since] if i == "in_flight" => Ok(BeginSend::InFlight {
                entry_id: entry.clone(),
                since_ms: num(since)?,
            }),
            [b, attempt, takeover] if b == "begun" => Ok(BeginSend::Begun {
                attempt: u32::try_from(num(attempt)?).unwrap_or(u32::MAX),
                takeover: takeover == "1",
            }),
            other => Err(unavailable(format!(
                "unexpected begin script reply {other:?}"
            ))),
        }
    }

    async fn finish_send(
        &self,
        job_id: &str,
        target: &Target,
        outcome: &SendOutcome,
        now_ms: u64,
    ) -> Result<FinishSend, JobStoreError> {
        let keys = self.job_keys(job_id).all();
        let json = |v: &dyn erased::Json| v.json();
        let mut conn = self.hot().await?;
        let mut inv = script_with_keys(&self.scripts.finish, &keys);
        inv.arg(target.key());
        match outcome {
            SendOutcome::Delivered { activity_id } => {
                inv.arg("delivered").arg(now_ms).arg(json(activity_id)?);
            }
            SendOutcome::Retry { next_at_ms, reason } => {
                inv.arg("retry")
                    .arg(now_ms)
                    .arg(*next_at_ms)
                    .arg(json(reason)?);
            }
            SendOutcome::Failed {
                reason,
                status,
                detail,
            } => {
                inv.arg("failed")
                    .arg(now_ms)
                    .arg(reason)
                    .arg(json(reason)?)
                    .arg(json(status)?)
                    .arg(json(detail)?);
            }
        }
        let reply: redis::RedisResult<Vec<String>> = inv.invoke_async(&mut conn).await;
        let reply = self.hot_result(reply)?;
        match reply.as_slice() {
            [u] if u == "unknown" => Err(JobStoreError::NotFound(job_id.to_owned())),
            [applied, completed] => Ok(FinishSend {
                applied: applied == "1",
                job_completed: completed == "1",
            }),
            other => Err(unavailable(format!(
                "unexpected finish script reply {other:?}"
            ))),
        }
    }
}

/// JSON of the few value types the scripts embed verbatim.
mod erased {
    use super::{unavailable, JobStoreError};

    pub(super) trait Json {
        fn json(&self) -> Result<String, JobStoreError>;
    }

    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Result<String, JobStoreError> {
            serde_json::to_string(self).map_err(unavailable)
        }
    }
}
