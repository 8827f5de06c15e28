//! Rate-limit buckets: the Teams limits (https://learn.microsoft.com/microsoftteams/platform/bots/how-to/rate-limit) as exact sliding windows,
//! in memory (one replica) or in Redis (shared by every replica, single node or
//! Redis Cluster).
//!
//! Each bucket keeps the time of every permit it granted within its longest
//! window (a sliding log), so the counts are exact for any alignment of bursts.
//! A token bucket or GCRA would be simpler but admits up to twice the limit in
//! some sliding window, and Teams (and botfleet-sim) count sliding windows: a
//! sender that waits as told here is never throttled there.
//!
//! One acquisition takes a permit from several buckets at once or from none
//! (a send counts against its conversation thread *and* its tenant, and a
//! blocked thread must not use up tenant budget). In Redis that is one Lua
//! script; all buckets of one acquisition share a *group* (the tenant), which
//! becomes the key's hash tag, so the script's keys live in one cluster slot.
//!
//! Times: the memory backend uses the monotonic clock; the Redis backend uses
//! Redis `TIME`, so replicas with skewed clocks still agree.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use thiserror::Error;

use crate::redis_pool::{RedisPool, RedisPoolError, KEY_SCHEMA};

/// At most `limit` permits in any window of length `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub limit: u32,
    pub period: Duration,
}

impl Window {
    pub const fn new(limit: u32, period: Duration) -> Self {
        Self { limit, period }
    }

    pub const fn per_secs(limit: u32, secs: u64) -> Self {
        Self::new(limit, Duration::from_secs(secs))
    }
}

/// Names one bucket. Buckets acquired together must share `group`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketKey {
    /// Atomicity group (the Redis hash tag): the tenant for the Teams buckets.
    pub group: String,
    pub name: String,
}

impl BucketKey {
    pub fn new(group: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            name: name.into(),
        }
    }
}

/// A bucket and its windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub key: BucketKey,
    pub windows: Vec<Window>,
}

impl Bucket {
    pub fn new(key: BucketKey, windows: &[Window]) -> Self {
        Self {
            key,
            windows: windows.to_vec(),
        }
    }
}

/// Outcome of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// One permit was taken from every bucket.
    Granted,
    /// Nothing was taken; no attempt can succeed before this much time has passed.
    Wait(Duration),
}

/// Outcome of [`acquire_within`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// Granted after waiting this long.
    Granted { waited: Duration },
    /// Granting would need waiting longer than allowed; nothing was taken.
    /// The caller should come back after `retry_after` (e.g. reschedule a delivery).
    TooLong { retry_after: Duration },
}

#[derive(Debug, Error)]
pub enum RateLimitError {
    #[error("rate-limit backend failed: {0}; check that Redis is reachable (sends wait for it rather than risk Teams throttling)")]
    Backend(String),
    #[error("invalid rate-limit request: {0}")]
    Invalid(String),
}

impl From<RedisPoolError> for RateLimitError {
    fn from(e: RedisPoolError) -> Self {
        Self::Backend(e.to_string())
    }
}

impl From<redis::RedisError> for RateLimitError {
    fn from(e: redis::RedisError) -> Self {
        Self::Backend(e.to_string())
    }
}

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Takes one permit from every bucket, atomically, or none.
    async fn try_acquire(&self, buckets: &[Bucket]) -> Result<Permit, RateLimitError>;

    /// No permits from `key` for `duration` (e.g. the Retry-After of a 429, so
    /// that other senders and replicas do not run into it too).
    async fn block(&self, key: &BucketKey, duration: Duration) -> Result<(), RateLimitError>;
}

/// Tries until granted, sleeping as long as the limiter says, for at most
/// `max_wait` in total. A wait that would exceed the budget is returned at once
/// as [`Acquired::TooLong`] instead of being slept through.
pub async fn acquire_within(
    limiter: &dyn RateLimiter,
    buckets: &[Bucket],
    max_wait: Duration,
) -> Result<Acquired, RateLimitError> {
    let started = Instant::now();
    loop {
        match limiter.try_acquire(buckets).await? {
            Permit::Granted => {
                return Ok(Acquired::Granted {
                    waited: started.elapsed(),
                })
            }
            Permit::Wait(d) => {
                if started.elapsed() + d > max_wait {
                    return Ok(Acquired::TooLong { retry_after: d });
                }
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// Safety margin added to every window by default. A permit is counted when
/// it is granted, Teams counts the request when it arrives; two requests can
/// travel differently fast, so a margin keeps arrivals inside the limit too.
/// The server's `outbound.rate_limit_margin` defaults to this value.
pub const DEFAULT_MARGIN: Duration = Duration::from_millis(200);

fn validate(buckets: &[Bucket]) -> Result<(), RateLimitError> {
    let Some(first) = buckets.first() else {
        return Err(RateLimitError::Invalid("no bucket given".into()));
    };
    for b in buckets {
        if b.key.group != first.key.group {
            return Err(RateLimitError::Invalid(format!(
                "buckets `{}` and `{}` are in different groups (`{}`, `{}`); one acquisition must stay in one group",
                first.key.name, b.key.name, first.key.group, b.key.group
            )));
        }
        if b.windows.is_empty() || b.windows.iter().any(|w| w.period.is_zero()) {
            return Err(RateLimitError::Invalid(format!(
                "bucket `{}` needs at least one window with a non-zero period",
                b.key.name
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- memory

struct Log {
    grants: VecDeque<Instant>,
    blocked_until: Option<Instant>,
    longest: Duration,
}

/// Buckets in this process only (the embedded default, and single-replica setups).
pub struct MemoryRateLimiter {
    margin: Duration,
    logs: Mutex<HashMap<BucketKey, Log>>,
    calls: AtomicU64,
}

impl std::fmt::Debug for MemoryRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRateLimiter")
            .field("margin", &self.margin)
            .field("buckets", &self.logs.lock().len())
            .finish()
    }
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_MARGIN)
    }
}

impl MemoryRateLimiter {
    pub fn new(margin: Duration) -> Self {
        Self {
            margin,
            logs: Mutex::new(HashMap::new()),
            calls: AtomicU64::new(0),
        }
    }

    /// Drops buckets with nothing inside their longest window, so memory
    /// follows recent traffic rather than every conversation ever seen.
    fn sweep(logs: &mut HashMap<BucketKey, Log>, now: Instant) {
        logs.retain(|_, log| {
            log.blocked_until.is_some_and(|t| t > now)
                || log
                    .grants
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < log.longest)
        });
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn try_acquire(&self, buckets: &[Bucket]) -> Result<Permit, RateLimitError> {
        validate(buckets)?;
        let now = Instant::now();
        let mut logs = self.logs.lock();
        if self.calls.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            Self::sweep(&mut logs, now);
        }
        let mut wait = Duration::ZERO;
        for b in buckets {
            let Some(log) = logs.get(&b.key) else {
                continue;
            };
            if let Some(until) = log.blocked_until {
                wait = wait.max(until.saturating_duration_since(now));
            }
            for w in &b.windows {
                let period = w.period + self.margin;
                // Grants strictly inside (now - period, now].
                let first_inside = log
                    .grants
                    .partition_point(|t| now.duration_since(*t) >= period);
                let inside = log.grants.len() - first_inside;
                if inside >= w.limit as usize {
                    // The grant that leaves `limit - 1` newer ones behind it must leave the window.
                    let blocking = log.grants[log.grants.len() - w.limit as usize];
                    wait = wait.max((blocking + period).saturating_duration_since(now));
                }
            }
        }
        if !wait.is_zero() {
            return Ok(Permit::Wait(wait));
        }
        for b in buckets {
            let longest = b
                .windows
                .iter()
                .map(|w| w.period + self.margin)
                .max()
                .unwrap_or_default();
            let log = logs.entry(b.key.clone()).or_insert_with(|| Log {
                grants: VecDeque::new(),
                blocked_until: None,
                longest,
            });
            log.longest = log.longest.max(longest);
            while log
                .grants
                .front()
                .is_some_and(|t| now.duration_since(*t) >= log.longest)
            {
                log.grants.pop_front();
            }
            log.grants.push_back(now);
        }
        Ok(Permit::Granted)
    }

    async fn block(&self, key: &BucketKey, duration: Duration) -> Result<(), RateLimitError> {
        let until = Instant::now() + duration;
        let mut logs = self.logs.lock();
        let log = logs.entry(key.clone()).or_insert_with(|| Log {
            grants: VecDeque::new(),
            blocked_until: None,
            longest: Duration::ZERO,
        });
        log.blocked_until = Some(log.blocked_until.map_or(until, |t| t.max(until)));
        Ok(())
    }
}

// ---------------------------------------------------------------- redis

/// KEYS: per bucket, its log (sorted set of grant times in µs) and its block
/// key. ARGV: member id, bucket count, then per bucket the window count and
/// (limit, period µs) pairs. Returns {1, 0} when granted, {0, µs to wait} when not.
///
/// Numbers are formatted with `%.0f` before they reach Redis: Lua's default
/// number-to-string conversion keeps 14 digits and would round µs timestamps.
const ACQUIRE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local member = ARGV[1]
local n = tonumber(ARGV[2])
local argi = 3
local wait = 0
local longest = {}
local function f(x) return string.format('%.0f', x) end
for b = 1, n do
  local log = KEYS[2 * b - 1]
  local blk = KEYS[2 * b]
  local pttl = redis.call('PTTL', blk)
  if pttl > 0 and pttl * 1000 > wait then wait = pttl * 1000 end
  local nwin = tonumber(ARGV[argi]); argi = argi + 1
  local maxp = 0
  for w = 1, nwin do
    local limit = tonumber(ARGV[argi]); local period = tonumber(ARGV[argi + 1]); argi = argi + 2
    if period > maxp then maxp = period end
    local from = '(' .. f(now - period)
    local inside = redis.call('ZCOUNT', log, from, '+inf')
    if inside >= limit then
      local e = redis.call('ZRANGEBYSCORE', log, from, '+inf', 'WITHSCORES', 'LIMIT', inside - limit, 1)
      local need = tonumber(e[2]) + period - now
      if need > wait then wait = need end
    end
  end
  longest[b] = maxp
end
if wait > 0 then return {0, math.ceil(wait)} end
for b = 1, n do
  local log = KEYS[2 * b - 1]
  redis.call('ZREMRANGEBYSCORE', log, '-inf', f(now - longest[b]))
  redis.call('ZADD', log, f(now), member)
  redis.call('PEXPIRE', log, math.ceil(longest[b] / 1000) + 1000)
end
return {1, 0}
"#;

/// Buckets in Redis, shared by every replica. Works on a single node and on
/// Redis Cluster.
///
/// Key layout (`{prefix}` defaults to [`KEY_SCHEMA`]):
/// - `{prefix}:rl:{<group>}:<name>`: sorted set, one member per grant, score =
///   Redis time in µs; expires one longest-window after the last grant;
/// - `{prefix}:rl:{<group>}:<name>:blk`: present (with a TTL) while the bucket is
///   blocked after a 429.
pub struct RedisRateLimiter {
    pool: RedisPool,
    prefix: String,
    margin: Duration,
    script: redis::Script,
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("pool", &self.pool)
            .field("prefix", &self.prefix)
            .field("margin", &self.margin)
            .finish()
    }
}

impl RedisRateLimiter {
    pub fn new(pool: RedisPool) -> Self {
        Self::with_prefix(pool, KEY_SCHEMA, DEFAULT_MARGIN)
    }

    /// `prefix` must not contain `{` (it would take over the hash tag).
    pub fn with_prefix(pool: RedisPool, prefix: impl Into<String>, margin: Duration) -> Self {
        Self {
            pool,
            prefix: prefix.into().replace(['{', '}'], "_"),
            margin,
            script: redis::Script::new(ACQUIRE_LUA),
        }
    }

    /// The Redis key of a bucket's log.
    pub fn log_key(&self, key: &BucketKey) -> String {
        format!(
            "{}:rl:{{{}}}:{}",
            self.prefix,
            key.group.replace(['{', '}'], "_"),
            key.name
        )
    }

    fn block_key(&self, key: &BucketKey) -> String {
        format!("{}:blk", self.log_key(key))
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn try_acquire(&self, buckets: &[Bucket]) -> Result<Permit, RateLimitError> {
        validate(buckets)?;
        let mut inv = self.script.prepare_invoke();
        for b in buckets {
            inv.key(self.log_key(&b.key)).key(self.block_key(&b.key));
        }
        inv.arg(format!("{:016x}", rand::random::<u64>()))
            .arg(buckets.len());
        for b in buckets {
            inv.arg(b.windows.len());
            for w in &b.windows {
                inv.arg(w.limit).arg(micros(w.period + self.margin));
            }
        }
        let mut conn = self.pool.get().await?;
        let (granted, wait_us): (i64, i64) = inv.invoke_async(&mut conn).await?;
        Ok(if granted == 1 {
            Permit::Granted
        } else {
            // The script already rounded up to whole µs; at least 1 µs so a
            // caller never busy-loops on a zero wait.
            Permit::Wait(Duration::from_micros(wait_us.max(1) as u64))
        })
    }

    async fn block(&self, key: &BucketKey, duration: Duration) -> Result<(), RateLimitError> {
        let ms = u64::try_from(duration.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut conn = self.pool.get().await?;
        // Keep the later of an existing block and this one.
        let current: i64 = redis::cmd("PTTL")
            .arg(self.block_key(key))
            .query_async(&mut conn)
            .await?;
        if current < ms as i64 {
            let _: () = redis::cmd("SET")
                .arg(self.block_key(key))
                .arg(1)
                .arg("PX")
                .arg(ms)
                .query_async(&mut conn)
                .await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- Teams

/// The Teams bot limits (https://learn.microsoft.com/microsoftteams/platform/bots/how-to/rate-limit) and the buckets one call counts against.
pub mod teams {
    use super::{Bucket, BucketKey, Window};

    /// Send / reply / update / delete and create conversation, per bot per thread.
    pub const SEND_PER_BOT_THREAD: [Window; 4] = [
        Window::per_secs(7, 1),
        Window::per_secs(8, 2),
        Window::per_secs(60, 30),
        Window::per_secs(1800, 3600),
    ];
    /// Get (paged) members and get conversations, per bot per thread.
    pub const MEMBERS_PER_BOT_THREAD: [Window; 4] = [
        Window::per_secs(14, 1),
        Window::per_secs(16, 2),
        Window::per_secs(120, 30),
        Window::per_secs(3600, 3600),
    ];
    /// Sends per thread, all bots combined (botfleet hosts many bots).
    pub const SEND_PER_THREAD: [Window; 2] = [Window::per_secs(14, 1), Window::per_secs(16, 2)];
    pub const MEMBERS_PER_THREAD: [Window; 2] = [Window::per_secs(28, 1), Window::per_secs(32, 2)];
    /// Every call of one app in one tenant (current docs: 50 RPS).
    pub const PER_BOT_TENANT: [Window; 1] = [Window::per_secs(50, 1)];

    /// Which limit family a call belongs to.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Operation {
        /// Send, reply, update, delete.
        Send,
        /// Create conversation (the "thread" is the member it is created with).
        Create,
        /// Get members, paged members, member.
        Members,
    }

    impl Operation {
        fn name(self) -> &'static str {
            match self {
                Self::Send => "send",
                Self::Create => "create",
                Self::Members => "members",
            }
        }
    }

    /// The thread a conversation id belongs to: a channel reply chain
    /// (`19:...@thread.tacv2;messageid=123`) counts against its channel.
    pub fn thread_of(conversation_id: &str) -> &str {
        conversation_id
            .split_once(";messageid=")
            .map_or(conversation_id, |(thread, _)| thread)
    }

    fn group(tenant: Option<&str>) -> String {
        tenant
            .filter(|t| !t.is_empty())
            .map_or_else(|| "-".to_owned(), str::to_ascii_lowercase)
    }

    /// The per-bot per-thread bucket: what a 429 for this call blocks.
    pub fn thread_bucket(
        op: Operation,
        bot: &str,
        tenant: Option<&str>,
        thread: &str,
    ) -> BucketKey {
        BucketKey::new(
            group(tenant),
            format!("b:{bot}:{}:{}", op.name(), thread_of(thread)),
        )
    }

    /// Every bucket a call counts against: per bot per thread, per thread (all
    /// bots) and per bot per tenant. All share the tenant as group.
    pub fn buckets(op: Operation, bot: &str, tenant: Option<&str>, thread: &str) -> Vec<Bucket> {
        let (per_bot_thread, per_thread): (&[Window], &[Window]) = match op {
            Operation::Send | Operation::Create => (&SEND_PER_BOT_THREAD, &SEND_PER_THREAD),
            Operation::Members => (&MEMBERS_PER_BOT_THREAD, &MEMBERS_PER_THREAD),
        };
        let g = group(tenant);
        vec![
            Bucket::new(thread_bucket(op, bot, tenant, thread), per_bot_thread),
            Bucket::new(
                BucketKey::new(&g, format!("t:{}:{}", op.name(), thread_of(thread))),
                per_thread,
            ),
            Bucket::new(BucketKey::new(&g, format!("a:{bot}")), &PER_BOT_TENANT),
        ]
    }
}
