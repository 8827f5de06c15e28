//! The Graph store in Redis (single node or Redis Cluster).
//!
//! # Key layout (schema `bf1`)
//!
//! `<P>` is the configured prefix. Three kinds of slots: the registry (`{s}`:
//! definitions, revision and every state hash), the inbox (`{i}`), and one per
//! lease or processed marker (its own hash tag, so they spread over a cluster).
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `<P>bf1:graph:{s}:specs` | HASH | subscription id -> definition JSON |
//! | `<P>bf1:graph:{s}:rev` | STRING | revision, incremented by every put and delete |
//! | `<P>bf1:graph:{s}:st:<id>` | HASH | state fields of one subscription |
//! | `<P>bf1:graph:lease:{<name>}` | STRING | the owner; expires with the lease (`PX`) |
//! | `<P>bf1:graph:{i}:inbox` | STREAM | one entry per received item (`p`: payload); consumer group `botfleet-graph` |
//! | `<P>bf1:graph:done:{<hex sha256 of key>}` | STRING | `1`, expiring with the marker |
//!
//! An acknowledged inbox entry is deleted (`XACK` + `XDEL` in one script), so
//! the stream holds only what is not processed yet. A stream that lost its
//! consumer group (Redis restarted without persistence, a flush) gets it again.
//! Run Redis with AOF (`appendonly yes`): without persistence a Redis restart
//! loses the inbox entries not processed yet (Graph was already answered 202).

use async_trait::async_trait;
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use redis::{FromRedisValue, Script};
use sha2::{Digest, Sha256};

use super::{GraphStore, GraphStoreError, InboxEntry, StateFields, StoredSubscription};
use crate::redis_pool::{RedisConn, RedisPool, KEY_SCHEMA};

const GROUP: &str = "botfleet-graph";

const LEASE: &str = r#"
local h = redis.call('GET', KEYS[1])
if h == false or h == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#;

const RAISE: &str = r#"
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
local v = tonumber(ARGV[2])
if cur ~= nil and cur >= v then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

const PUSH: &str = r#"
for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', 'p', ARGV[i]) end
return #ARGV
"#;

const ACK: &str = r#"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"#;

const DELETE: &str = r#"
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('INCR', KEYS[2])
return n
"#;

const PUT: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('INCR', KEYS[2])
"#;

/// [`GraphStore`] in Redis; see the module comment for the keys.
pub struct RedisGraphStore {
    pool: RedisPool,
    prefix: String,
    scripts: Scripts,
}

struct Scripts {
    lease: Script,
    release: Script,
    raise: Script,
    push: Script,
    ack: Script,
    delete: Script,
    put: Script,
}

impl RedisGraphStore {
    /// `key_prefix` as configured (`store.key_prefix`); the schema version is added here.
    pub fn new(pool: RedisPool, key_prefix: &str) -> Self {
        let prefix = if key_prefix.is_empty() || key_prefix.ends_with(':') {
            key_prefix.to_owned()
        } else {
            format!("{key_prefix}:")
        };
        Self {
            pool,
            prefix: format!("{prefix}{KEY_SCHEMA}:graph:"),
            scripts: Scripts {
                lease: Script::new(LEASE),
                release: Script::new(RELEASE),
                raise: Script::new(RAISE),
                push: Script::new(PUSH),
                ack: Script::new(ACK),
                delete: Script::new(DELETE),
                put: Script::new(PUT),
            },
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn state_key(&self, id: &str) -> String {
        self.key(&format!("{{s}}:st:{id}"))
    }

    fn inbox(&self) -> String {
        self.key("{i}:inbox")
    }

    async fn conn(&self) -> Result<RedisConn, GraphStoreError> {
        Ok(self.pool.get().await?)
    }

    async fn ensure_group(&self, conn: &mut RedisConn) -> Result<(), GraphStoreError> {
        let r: redis::RedisResult<String> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.inbox())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn entries(ids: Vec<redis::streams::StreamId>, deliveries: u32) -> Vec<InboxEntry> {
        ids.into_iter()
            .filter_map(|id| {
                let payload = id
                    .map
                    .get("p")
                    .and_then(|v| String::from_redis_value(v).ok())?;
                Some(InboxEntry {
                    id: id.id,
                    payload,
                    deliveries,
                })
            })
            .collect()
    }
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

#[async_trait]
impl GraphStore for RedisGraphStore {
    async fn put_subscription(&self, id: &str, spec_json: &str) -> Result<(), GraphStoreError> {
        let mut c = self.conn().await?;
        let _: i64 = self
            .scripts
            .put
            .key(self.key("{s}:specs"))
            .key(self.key("{s}:rev"))
            .arg(id)
            .arg(spec_json)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    async fn get_subscription(
        &self,
        id: &str,
    ) -> Result<Option<StoredSubscription>, GraphStoreError> {
        let mut c = self.conn().await?;
        let v: Option<String> = redis::cmd("HGET")
            .arg(self.key("{s}:specs"))
            .arg(id)
            .query_async(&mut c)
            .await?;
        Ok(v.map(|spec_json| StoredSubscription {
            id: id.to_owned(),
            spec_json,
        }))
    }

    async fn list_subscriptions(&self) -> Result<Vec<StoredSubscription>, GraphStoreError> {
        let mut c = self.conn().await?;
        let all: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key("{s}:specs"))
            .query_async(&mut c)
            .await?;
        Ok(all
            .into_iter()
            .map(|(id, spec_json)| StoredSubscription { id, spec_json })
            .collect())
    }

    async fn delete_subscription(&self, id: &str) -> Result<bool, GraphStoreError> {
        let mut c = self.conn().await?;
        let n: i64 = self
            .scripts
            .delete
            .key(self.key("{s}:specs"))
            .key(self.key("{s}:rev"))
            .key(self.state_key(id))
            .arg(id)
            .invoke_async(&mut c)
            .await?;
        Ok(n > 0)
    }

    async fn revision(&self) -> Result<u64, GraphStoreError> {
        let mut c = self.conn().await?;
        let v: Option<u64> = redis::cmd("GET")
            .arg(self.key("{s}:rev"))
            .query_async(&mut c)
            .await?;
        Ok(v.unwrap_or(0))
    }

    async fn get_state(&self, id: &str) -> Result<StateFields, GraphStoreError> {
        let mut c = self.conn().await?;
        Ok(redis::cmd("HGETALL")
            .arg(self.state_key(id))
            .query_async(&mut c)
            .await?)
    }

    async fn set_state(&self, id: &str, fields: &[(&str, String)]) -> Result<(), GraphStoreError> {
        let key = self.state_key(id);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (k, v) in fields {
            if v.is_empty() {
                pipe.cmd("HDEL").arg(&key).arg(*k).ignore();
            } else {
                pipe.cmd("HSET").arg(&key).arg(*k).arg(v).ignore();
            }
        }
        let mut c = self.conn().await?;
        let _: () = pipe.query_async(&mut c).await?;
        Ok(())
    }

    async fn raise_state(
        &self,
        id: &str,
        field: &str,
        value: u64,
    ) -> Result<bool, GraphStoreError> {
        let mut c = self.conn().await?;
        let n: i64 = self
            .scripts
            .raise
            .key(self.state_key(id))
            .arg(field)
            .arg(value)
            .invoke_async(&mut c)
            .await?;
        Ok(n == 1)
    }

    async fn lease(
        &self,
        name: &str,
        owner: &str,
        ttl_ms: u64,
        _now_ms: u64,
    ) -> Result<bool, GraphStoreError> {
        let mut c = self.conn().await?;
        let n: i64 = self
            .scripts
            .lease
            .key(self.key(&format!("lease:{{{name}}}")))
            .arg(owner)
            .arg(ttl_ms.max(1))
            .invoke_async(&mut c)
            .await?;
        Ok(n == 1)
    }

    async fn release(&self, name: &str, owner: &str) -> Result<(), GraphStoreError> {
        let mut c = self.conn().await?;
        let _: i64 = self
            .scripts
            .release
            .key(self.key(&format!("lease:{{{name}}}")))
            .arg(owner)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    async fn inbox_push(&self, payloads: &[String]) -> Result<(), GraphStoreError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        let mut inv = self.scripts.push.key(self.inbox());
        for p in payloads {
            inv.arg(p);
        }
        let _: i64 = inv.invoke_async(&mut c).await?;
        Ok(())
    }

    async fn inbox_take(
        &self,
        consumer: &str,
        max: usize,
        _now_ms: u64,
    ) -> Result<Vec<InboxEntry>, GraphStoreError> {
        let mut c = self.conn().await?;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(max.max(1))
            .arg("STREAMS")
            .arg(self.inbox())
            .arg(">");
        let reply: Option<StreamReadReply> = match cmd.query_async(&mut c).await {
            Ok(r) => r,
            Err(e) if is_nogroup(&e) => {
                self.ensure_group(&mut c).await?;
                cmd.query_async(&mut c).await?
            }
            Err(e) => return Err(e.into()),
        };
        let ids = reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default();
        Ok(Self::entries(ids, 1))
    }

    async fn inbox_reclaim(
        &self,
        consumer: &str,
        min_idle_ms: u64,
        max: usize,
        _now_ms: u64,
    ) -> Result<Vec<InboxEntry>, GraphStoreError> {
        let mut c = self.conn().await?;
        let r: redis::RedisResult<StreamAutoClaimReply> = redis::cmd("XAUTOCLAIM")
            .arg(self.inbox())
            .arg(GROUP)
            .arg(consumer)
            .arg(min_idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(max.max(1))
            .query_async(&mut c)
            .await;
        match r {
            // The exact count is in XPENDING; "handed out again" is what matters.
            Ok(reply) => Ok(Self::entries(reply.claimed, 2)),
            Err(e) if is_nogroup(&e) => {
                self.ensure_group(&mut c).await?;
                Ok(Vec::new())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn inbox_ack(&self, id: &str) -> Result<(), GraphStoreError> {
        let mut c = self.conn().await?;
        let _: i64 = self
            .scripts
            .ack
            .key(self.inbox())
            .arg(GROUP)
            .arg(id)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    async fn inbox_len(&self) -> Result<u64, GraphStoreError> {
        let mut c = self.conn().await?;
        Ok(redis::cmd("XLEN")
            .arg(self.inbox())
            .query_async(&mut c)
            .await?)
    }

    async fn is_done(&self, key: &str, _now_ms: u64) -> Result<bool, GraphStoreError> {
        let mut c = self.conn().await?;
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.done_key(key))
            .query_async(&mut c)
            .await?;
        Ok(n > 0)
    }

    async fn mark_done(&self, key: &str, ttl_ms: u64, _now_ms: u64) -> Result<(), GraphStoreError> {
        let mut c = self.conn().await?;
        let _: () = redis::cmd("SET")
            .arg(self.done_key(key))
            .arg("1")
            .arg("PX")
            .arg(ttl_ms.max(1))
            .query_async(&mut c)
            .await?;
        Ok(())
    }
}

impl RedisGraphStore {
    fn done_key(&self, key: &str) -> String {
        self.key(&format!("done:{{{}}}", hex::encode(Sha256::digest(key))))
    }
}
