//! One Redis connection pool for a single node or a Redis Cluster.
//!
//! Every Redis-backed part of botfleet (conversation references, rate-limit
//! buckets, the shared token tier) takes a [`RedisPool`] and never cares which of
//! the two it got: keys are laid out with hash tags so that every multi-key
//! operation stays in one slot and works the same on both.

use deadpool_redis::{cluster, Runtime};
use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use thiserror::Error;

/// Version segment of every key botfleet writes; bumped when a layout changes so
/// that old and new replicas never read each other's data by accident.
pub const KEY_SCHEMA: &str = "bf1";

/// Longest wait for a pooled connection or for one command's answer. A Redis
/// that hangs (a stopped process, a network blackhole: the connection stays
/// open and nothing answers) would otherwise hold every caller forever and
/// show in no error metric; past this it fails with a timeout, counted in
/// `botfleet_redis_errors_total` and logged at ERROR. Every command botfleet
/// sends through the pool answers in milliseconds (blocking stream reads use
/// their own connection, crates/store/src/jobs/redis_store.rs).
pub const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum RedisPoolError {
    #[error("invalid Redis configuration: {0}")]
    Config(String),
    #[error("could not get a Redis connection: {0}")]
    Pool(String),
    #[error("Redis command failed: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A pooled Redis: single node (`redis://host:port/db`) or cluster (several seed URLs).
#[derive(Clone)]
pub enum RedisPool {
    Single(deadpool_redis::Pool),
    Cluster(cluster::Pool),
}

impl std::fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(_) => f.write_str("RedisPool::Single"),
            Self::Cluster(_) => f.write_str("RedisPool::Cluster"),
        }
    }
}

impl RedisPool {
    /// A pool for one node.
    pub fn single(url: &str, max_size: usize) -> Result<Self, RedisPoolError> {
        let mut cfg = deadpool_redis::Config::from_url(url);
        cfg.pool = Some(deadpool_redis::PoolConfig::new(max_size));
        cfg.create_pool(Some(Runtime::Tokio1))
            .map(Self::Single)
            .map_err(|e| RedisPoolError::Config(e.to_string()))
    }

    /// A pool for a Redis Cluster, given one or more seed node URLs.
    pub fn cluster(urls: &[String], max_size: usize) -> Result<Self, RedisPoolError> {
        if urls.is_empty() {
            return Err(RedisPoolError::Config(
                "a Redis Cluster needs at least one seed URL".into(),
            ));
        }
        let mut cfg = cluster::Config::from_urls(urls.to_vec());
        cfg.pool = Some(deadpool_redis::PoolConfig::new(max_size));
        cfg.create_pool(Some(Runtime::Tokio1))
            .map(Self::Cluster)
            .map_err(|e| RedisPoolError::Config(e.to_string()))
    }

    /// `urls` with one entry: single node; more: cluster seeds. `cluster` forces
    /// cluster mode with one seed.
    pub fn connect(
        urls: &[String],
        cluster: bool,
        max_size: usize,
    ) -> Result<Self, RedisPoolError> {
        botfleet_telemetry::metrics::redis_in_use();
        match urls {
            [] => Err(RedisPoolError::Config("no Redis URL given".into())),
            [one] if !cluster => Self::single(one, max_size),
            many => Self::cluster(many, max_size),
        }
    }

    /// A pooled connection. Checkout failures (Redis down, pool exhausted,
    /// no connection within [`COMMAND_TIMEOUT`]) are counted in
    /// `botfleet_redis_errors_total{command="checkout"}`.
    pub async fn get(&self) -> Result<RedisConn, RedisPoolError> {
        use botfleet_telemetry::metrics::{redis_command, redis_failed, RedisFailure};
        let started = std::time::Instant::now();
        let got = tokio::time::timeout(COMMAND_TIMEOUT, self.checkout()).await;
        let seconds = started.elapsed().as_secs_f64();
        match got {
            Ok(Ok(conn)) => {
                redis_command("checkout", seconds);
                Ok(conn)
            }
            Ok(Err(e)) => {
                redis_failed("checkout", seconds, RedisFailure::Error, &e);
                Err(e)
            }
            Err(_) => {
                let e = RedisPoolError::Pool(format!(
                    "no Redis connection within {}s (Redis hung or unreachable)",
                    COMMAND_TIMEOUT.as_secs()
                ));
                redis_failed("checkout", seconds, RedisFailure::TimedOut, &e);
                Err(e)
            }
        }
    }

    async fn checkout(&self) -> Result<RedisConn, RedisPoolError> {
        match self {
            Self::Single(p) => p
                .get()
                .await
                .map(RedisConn::Single)
                .map_err(|e| RedisPoolError::Pool(e.to_string())),
            Self::Cluster(p) => p
                .get()
                .await
                .map(RedisConn::Cluster)
                .map_err(|e| RedisPoolError::Pool(e.to_string())),
        }
    }

    /// Round trip to Redis, for readiness checks.
    pub async fn ping(&self) -> Result<(), RedisPoolError> {
        let mut conn = self.get().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }
}

/// A connection taken from a [`RedisPool`]; use it with any `redis` command.
pub enum RedisConn {
    Single(deadpool_redis::Connection),
    Cluster(cluster::Connection),
}

/// Every command of every store goes through these two methods: the one place
/// Redis latency and errors are measured (`botfleet_redis_command_duration_seconds`,
/// `botfleet_redis_errors_total`, by command name).
impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let fut = match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        };
        Box::pin(observed(command_name(cmd), fut))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let fut = match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        };
        Box::pin(observed("pipeline", fut))
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Times `fut`, bounds it by [`COMMAND_TIMEOUT`] and counts its failure.
/// `NOSCRIPT` is not a failure: the `redis` crate's `Script` answers it by
/// loading the script (EVALSHA, then EVAL), as designed.
async fn observed<T>(
    command: &'static str,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    use botfleet_telemetry::metrics::{redis_command, redis_failed, RedisFailure};
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(COMMAND_TIMEOUT, fut).await;
    let seconds = started.elapsed().as_secs_f64();
    match r {
        Ok(Err(e)) if e.kind() != redis::ErrorKind::NoScriptError => {
            redis_failed(command, seconds, RedisFailure::Error, &e);
            Err(e)
        }
        Ok(r) => {
            redis_command(command, seconds);
            r
        }
        Err(_) => {
            let e = redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("Redis did not answer within {}s", COMMAND_TIMEOUT.as_secs()),
            ));
            redis_failed(command, seconds, RedisFailure::TimedOut, &e);
            Err(e)
        }
    }
}

/// The command's name as a metric label: one of the commands the stores use,
/// else `other`, so a label never carries a key or an argument.
fn command_name(cmd: &Cmd) -> &'static str {
    const KNOWN: &[&str] = &[
        "EVALSHA",
        "EVAL",
        "SCRIPT",
        "GET",
        "SET",
        "DEL",
        "EXPIRE",
        "PEXPIRE",
        "HGET",
        "HSET",
        "HMGET",
        "HGETALL",
        "HDEL",
        "HINCRBY",
        "ZADD",
        "ZREM",
        "ZRANGE",
        "ZRANGEBYLEX",
        "ZRANGEBYSCORE",
        "ZCARD",
        "SCAN",
        "XADD",
        "XREADGROUP",
        "XACK",
        "XAUTOCLAIM",
        "XCLAIM",
        "XGROUP",
        "XPENDING",
        "XLEN",
        "XDEL",
        "XINFO",
        "PING",
        "INCR",
        "INCRBY",
        "MGET",
        "EXISTS",
        "PTTL",
        "TTL",
        "SADD",
        "SREM",
        "SMEMBERS",
        "PUBLISH",
    ];
    let Some(redis::Arg::Simple(name)) = cmd.args_iter().next() else {
        return "other";
    };
    KNOWN
        .iter()
        .find(|k| k.as_bytes().eq_ignore_ascii_case(name))
        .copied()
        .unwrap_or("other")
}

/// Test support: the Redis servers `scripts/test` started.
///
/// `BOTFLEET_TEST_REDIS_URL` (single node) and `BOTFLEET_TEST_REDIS_CLUSTER`
/// (comma-separated seed URLs). Tests that need Redis fail with a message naming
/// the script when these are missing, rather than silently passing.
pub mod testing {
    use super::RedisPool;

    pub fn single_url() -> String {
        std::env::var("BOTFLEET_TEST_REDIS_URL").unwrap_or_else(|_| {
            panic!("BOTFLEET_TEST_REDIS_URL is not set: run the tests with scripts/test, which starts Redis")
        })
    }

    pub fn cluster_urls() -> Vec<String> {
        let v = std::env::var("BOTFLEET_TEST_REDIS_CLUSTER").unwrap_or_else(|_| {
            panic!("BOTFLEET_TEST_REDIS_CLUSTER is not set: run the tests with scripts/test, which starts a Redis Cluster")
        });
        v.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub fn single() -> RedisPool {
        RedisPool::single(&single_url(), 16).unwrap_or_else(|e| panic!("test Redis: {e}"))
    }

    pub fn cluster() -> RedisPool {
        RedisPool::cluster(&cluster_urls(), 16)
            .unwrap_or_else(|e| panic!("test Redis Cluster: {e}"))
    }

    /// A key prefix unique to one test run, so tests sharing a server never collide.
    pub fn unique_prefix(name: &str) -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!(
            "t{}-{}-{}-{}",
            std::process::id(),
            nanos,
            N.fetch_add(1, Ordering::Relaxed),
            name
        )
    }
}

/// One page of a lexicographic index and the two hash fields of each member, in
/// one round trip: the listing shape the conversation store (references and
/// their metadata) and the job store (targets and their delivery states) share.
///
/// KEYS: ordering zset, first hash, second hash. ARGV: `ZRANGEBYLEX` min (e.g.
/// `(last-member` to continue after it, `-` from the start), count.
/// Returns flat (member, first hash value, second hash value) triples.
pub(crate) const PAGE_BY_LEX: &str = r#"
local ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
if #ids == 0 then return out end
local first = redis.call('HMGET', KEYS[2], unpack(ids))
local second = redis.call('HMGET', KEYS[3], unpack(ids))
for i, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = first[i]
  out[#out + 1] = second[i]
end
return out
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// A Redis that accepts connections and never answers (a stopped
    /// process, a network blackhole) fails the caller within the command
    /// timeout (checkout and command, at most twice it) and counts as an
    /// error, instead of holding the caller forever and showing nowhere.
    #[tokio::test]
    async fn a_hung_redis_times_out_and_counts_as_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket); // open, silent
            }
        });
        let errors = || {
            botfleet_telemetry::metrics::encode()
                .lines()
                .filter(|l| l.starts_with("botfleet_redis_errors_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        let before = errors();
        let pool = RedisPool::single(&format!("redis://{addr}"), 4).expect("pool");
        let started = std::time::Instant::now();
        let r = pool.ping().await;
        let took = started.elapsed();
        let e = r.expect_err("a silent Redis cannot answer PING");
        assert!(
            took < COMMAND_TIMEOUT * 2 + std::time::Duration::from_secs(1),
            "{took:?}"
        );
        assert!(
            e.to_string().contains("within"),
            "the error says it timed out: {e}"
        );
        assert!(errors() >= before + 1.0, "the timeout is counted");
    }
}
