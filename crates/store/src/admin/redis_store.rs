//! Admin state in Redis (single node or Redis Cluster), shared by every replica.
//!
//! # Key layout (schema `bf1`)
//!
//! `<P>` is the configured prefix (tests use a unique one so they can share a
//! server). The keys of one kind share a hash tag (`{bots}`, `{keys}`), so each
//! multi-key write is one atomic Lua script whose keys all live in one cluster
//! slot. Ids are hash fields, never part of a key name, so no id can break the
//! layout. Admin state is small (bots and keys number in the hundreds), so one
//! slot per kind is no hot spot.
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `<P>bf1:admin:{bots}:specs` | HASH | bot id -> its `spec` JSON, as the API gave it (never re-encoded in Redis) |
//! | `<P>bf1:admin:{bots}:meta` | HASH | bot id -> `{"a":app_id,"v":version,"c":created_at,"u":updated_at}` |
//! | `<P>bf1:admin:{bots}:app_ids` | HASH | app id -> bot id: the uniqueness index |
//! | `<P>bf1:admin:{bots}:revision` | STRING | counter bumped by every bot change |
//! | `<P>bf1:admin:{keys}:records` | HASH | key id -> [`ApiKeyRecord`] JSON (its `revoked_at` not used) |
//! | `<P>bf1:admin:{keys}:revoked` | HASH | key id -> revocation time (ms); set once (`HSETNX`) |
//! | `<P>bf1:admin:audit` | STREAM | one entry per audited call, field `e` = [`AuditEntry`] JSON without `id` |
//!
//! Bot changes are announced on the pub/sub channel `<P>bf1:admin:bots:changes`
//! ([`BotChange`] JSON) by the same script that makes the change, so a change
//! is never stored without being announced (nor announced without being
//! stored), and announcements leave in the order the changes were made. Classic
//! pub/sub (`PUBLISH`/`SUBSCRIBE`) reaches subscribers on every node of a Redis
//! Cluster, so a subscriber can use any node
//! (<https://redis.io/docs/latest/develop/interact/pubsub/#pubsub-in-redis-cluster>).
//!
//! The audit stream's ids are `<at>-<seq>` (`XADD <at>-*`, Redis 7.0+); when the
//! stream already holds a later id (a replica's clock behind another's), or on an
//! older server, the entry gets a Redis-assigned id (`XADD *`), which never goes
//! backwards. Listing is `XRANGE` with an exclusive start and retention is
//! `XTRIM MINID` (both Redis 6.2+). No operation uses `SCAN` or `KEYS`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt as _};
use redis::aio::{PubSubSink, PubSubStream};
use redis::streams::StreamRangeReply;
use redis::Script;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{
    app_id_taken, audit_page_size, corrupt, id_taken, key_taken, parse_audit_id, AdminStoreError,
    ApiKeyRecord, ApiKeyStore, AuditEntry, AuditLog, BotChange, BotRecord, BotRegistryStore,
};
use crate::redis_pool::{RedisConn, RedisPool, KEY_SCHEMA};

/// Changes a subscriber may fall behind by before some are dropped (it then
/// relies on polling the revision).
const CHANGE_BUFFER: usize = 1024;
/// How often an idle subscription checks its connection with a PING: a peer
/// that vanished without closing TCP is otherwise never noticed.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Longest wait for a connection, a SUBSCRIBE or a PING reply.
const SUBSCRIBER_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection delay: doubles from the first to the last.
const RECONNECT_DELAYS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// KEYS: specs, meta, app_ids, revision.
/// ARGV: id, app id, spec json, meta json, channel, announcement.
const BOT_CREATE: &str = r#"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {'id'} end
local owner = redis.call('HGET', KEYS[3], ARGV[2])
if owner then return {'app_id', owner} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])
redis.call('INCR', KEYS[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {'ok'}
"#;

/// KEYS: specs, meta, app_ids, revision.
/// ARGV: id, app id, app id as JSON, spec json, expected version, updated_at,
/// channel, announcement. Returns {'ok', created_at} or an error tag.
const BOT_UPDATE: &str = r#"
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return {'not_found'} end
local m = cjson.decode(raw)
if m.v ~= tonumber(ARGV[5]) then return {'version', string.format('%d', m.v)} end
if m.a ~= ARGV[2] then
  local owner = redis.call('HGET', KEYS[3], ARGV[2])
  if owner and owner ~= ARGV[1] then return {'app_id', owner} end
  if redis.call('HGET', KEYS[3], m.a) == ARGV[1] then redis.call('HDEL', KEYS[3], m.a) end
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[1],
  string.format('{"a":%s,"v":%d,"c":%d,"u":%d}', ARGV[3], m.v + 1, m.c, tonumber(ARGV[6])))
redis.call('INCR', KEYS[4])
redis.call('PUBLISH', ARGV[7], ARGV[8])
return {'ok', string.format('%d', m.c)}
"#;

/// KEYS: specs, meta, app_ids, revision.
/// ARGV: id, expected version ('' = any), channel, announcement.
const BOT_DELETE: &str = r#"
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return {'not_found'} end
local m = cjson.decode(raw)
if ARGV[2] ~= '' and m.v ~= tonumber(ARGV[2]) then
  return {'version', string.format('%d', m.v)}
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[3], m.a) == ARGV[1] then redis.call('HDEL', KEYS[3], m.a) end
redis.call('INCR', KEYS[4])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return {'ok'}
"#;

/// KEYS: two hashes. ARGV: field. One round trip, one consistent read.
const HGET_BOTH: &str = r#"
return {redis.call('HGET', KEYS[1], ARGV[1]), redis.call('HGET', KEYS[2], ARGV[1])}
"#;

/// KEYS: two hashes. A consistent snapshot of both.
const HGETALL_BOTH: &str = r#"
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
"#;

/// KEYS: records, revoked. ARGV: id, record json, revoked_at ('' = not revoked).
const KEY_CREATE: &str = r#"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
else
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 1
"#;

/// KEYS: records, revoked. ARGV: id, at.
const KEY_REVOKE: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
return redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
"#;

/// KEYS: stream. ARGV: at, entry json. Returns the id.
const AUDIT_APPEND: &str = r#"
local id = redis.pcall('XADD', KEYS[1], ARGV[1] .. '-*', 'e', ARGV[2])
if type(id) == 'table' and id.err then
  id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[2])
end
return id
"#;

/// Bot fields the scripts read and write; the spec is stored beside it.
#[derive(Serialize, Deserialize)]
struct BotMeta {
    a: String,
    v: u64,
    c: u64,
    u: u64,
}

/// API keys, bots and the audit log in Redis; see the module comment for the
/// layout. Cheap to share behind an `Arc`; every call takes a pooled connection,
/// except [`subscribe`](BotRegistryStore::subscribe), which opens its own.
pub struct RedisAdminStore {
    pool: RedisPool,
    prefix: String,
    subscribe_urls: Vec<String>,
    bot_create: Script,
    bot_update: Script,
    bot_delete: Script,
    hget_both: Script,
    hgetall_both: Script,
    key_create: Script,
    key_revoke: Script,
    audit_append: Script,
}

impl std::fmt::Debug for RedisAdminStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs may carry a password: only their number is shown.
        f.debug_struct("RedisAdminStore")
            .field("pool", &self.pool)
            .field("prefix", &self.prefix)
            .field("subscribe_urls", &self.subscribe_urls.len())
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> AdminStoreError {
    AdminStoreError::Unavailable(e.to_string())
}

fn unexpected(script: &str, reply: &[String]) -> AdminStoreError {
    AdminStoreError::Unavailable(format!(
        "unexpected reply of the {script} script: {reply:?}"
    ))
}

fn version_mismatch(current: &str) -> AdminStoreError {
    match current.parse() {
        Ok(current) => AdminStoreError::VersionMismatch { current },
        Err(_) => AdminStoreError::Corrupt(format!("stored bot version `{current}`")),
    }
}

fn to_json(value: &impl Serialize) -> Result<String, AdminStoreError> {
    serde_json::to_string(value).map_err(unavailable)
}

impl RedisAdminStore {
    /// `key_prefix` goes before every key and the change channel (may be
    /// empty), so deployments and test runs can share one Redis.
    /// `subscribe_urls` are the URLs the pool was made from (the single node,
    /// or the cluster seeds): a change subscription needs a connection of its
    /// own, to any one of them.
    pub fn new(pool: RedisPool, key_prefix: &str, subscribe_urls: &[String]) -> Self {
        let prefix = if key_prefix.is_empty() || key_prefix.ends_with(':') {
            key_prefix.to_owned()
        } else {
            format!("{key_prefix}:")
        };
        Self {
            pool,
            prefix,
            subscribe_urls: subscribe_urls.to_vec(),
            bot_create: Script::new(BOT_CREATE),
            bot_update: Script::new(BOT_UPDATE),
            bot_delete: Script::new(BOT_DELETE),
            hget_both: Script::new(HGET_BOTH),
            hgetall_both: Script::new(HGETALL_BOTH),
            key_create: Script::new(KEY_CREATE),
            key_revoke: Script::new(KEY_REVOKE),
            audit_append: Script::new(AUDIT_APPEND),
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{KEY_SCHEMA}:admin:{rest}", self.prefix)
    }

    fn bot_keys(&self) -> [String; 4] {
        [
            self.key("{bots}:specs"),
            self.key("{bots}:meta"),
            self.key("{bots}:app_ids"),
            self.key("{bots}:revision"),
        ]
    }

    fn api_keys(&self) -> [String; 2] {
        [self.key("{keys}:records"), self.key("{keys}:revoked")]
    }

    fn audit_key(&self) -> String {
        self.key("audit")
    }

    /// The pub/sub channel of bot changes.
    fn channel(&self) -> String {
        self.key("bots:changes")
    }

    async fn conn(&self) -> Result<RedisConn, AdminStoreError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// Runs a bot write script with the four bot keys.
    async fn bot_script(
        &self,
        script: &Script,
        args: &[&str],
    ) -> Result<Vec<String>, AdminStoreError> {
        let mut invocation = script.prepare_invoke();
        for key in self.bot_keys() {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let mut conn = self.conn().await?;
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }
}

fn decode_bot(id: &str, spec: &str, meta: &str) -> Result<BotRecord, AdminStoreError> {
    let meta: BotMeta =
        serde_json::from_str(meta).map_err(|e| corrupt(&format!("metadata of bot `{id}`"), &e))?;
    let spec = serde_json::from_str(spec)
        .map_err(|e| corrupt(&format!("registration of bot `{id}`"), &e))?;
    Ok(BotRecord {
        id: id.to_owned(),
        app_id: meta.a,
        spec,
        version: meta.v,
        created_at: meta.c,
        updated_at: meta.u,
    })
}

fn decode_key(
    id: &str,
    record: &str,
    revoked: Option<&str>,
) -> Result<ApiKeyRecord, AdminStoreError> {
    let mut record: ApiKeyRecord =
        serde_json::from_str(record).map_err(|e| corrupt(&format!("API key `{id}`"), &e))?;
    record.revoked_at = revoked
        .map(|at| {
            at.parse()
                .map_err(|_| AdminStoreError::Corrupt(format!("revocation time of API key `{id}`")))
        })
        .transpose()?;
    Ok(record)
}

#[async_trait]
impl ApiKeyStore for RedisAdminStore {
    async fn create(&self, record: &ApiKeyRecord) -> Result<(), AdminStoreError> {
        let [records, revoked] = self.api_keys();
        // The revocation lives in its own hash (set once, atomically); the
        // record is stored without it.
        let stored = ApiKeyRecord {
            revoked_at: None,
            ..record.clone()
        };
        let mut conn = self.conn().await?;
        let created: i64 = self
            .key_create
            .key(records)
            .key(revoked)
            .arg(&record.id)
            .arg(to_json(&stored)?)
            .arg(
                record
                    .revoked_at
                    .map(|at| at.to_string())
                    .unwrap_or_default(),
            )
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if created == 1 {
            Ok(())
        } else {
            Err(key_taken(&record.id))
        }
    }

    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, AdminStoreError> {
        let [records, revoked] = self.api_keys();
        let mut conn = self.conn().await?;
        let (record, revoked_at): (Option<String>, Option<String>) = self
            .hget_both
            .key(records)
            .key(revoked)
            .arg(id)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        record
            .map(|r| decode_key(id, &r, revoked_at.as_deref()))
            .transpose()
    }

    async fn list(&self) -> Result<Vec<ApiKeyRecord>, AdminStoreError> {
        let [records, revoked] = self.api_keys();
        let mut conn = self.conn().await?;
        let (records, revoked): (HashMap<String, String>, HashMap<String, String>) = self
            .hgetall_both
            .key(records)
            .key(revoked)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut keys = records
            .iter()
            .map(|(id, r)| decode_key(id, r, revoked.get(id).map(String::as_str)))
            .collect::<Result<Vec<_>, _>>()?;
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(keys)
    }

    async fn revoke(&self, id: &str, at: u64) -> Result<bool, AdminStoreError> {
        let [records, revoked] = self.api_keys();
        let mut conn = self.conn().await?;
        let done: i64 = self
            .key_revoke
            .key(records)
            .key(revoked)
            .arg(id)
            .arg(at)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(done == 1)
    }
}

#[async_trait]
impl BotRegistryStore for RedisAdminStore {
    async fn create(&self, mut record: BotRecord) -> Result<BotRecord, AdminStoreError> {
        record.version = 1;
        let meta = BotMeta {
            a: record.app_id.clone(),
            v: 1,
            c: record.created_at,
            u: record.updated_at,
        };
        let announcement = BotChange::Upserted {
            id: record.id.clone(),
            version: 1,
        };
        let reply = self
            .bot_script(
                &self.bot_create,
                &[
                    &record.id,
                    &record.app_id,
                    &to_json(&record.spec)?,
                    &to_json(&meta)?,
                    &self.channel(),
                    &to_json(&announcement)?,
                ],
            )
            .await?;
        match reply.as_slice() {
            [ok] if ok == "ok" => Ok(record),
            [tag] if tag == "id" => Err(id_taken(&record.id)),
            [tag, owner] if tag == "app_id" => Err(app_id_taken(&record.app_id, owner)),
            other => Err(unexpected("bot create", other)),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<BotRecord>, AdminStoreError> {
        let [specs, meta, ..] = self.bot_keys();
        let mut conn = self.conn().await?;
        let (spec, meta): (Option<String>, Option<String>) = self
            .hget_both
            .key(specs)
            .key(meta)
            .arg(id)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        match (spec, meta) {
            (None, None) => Ok(None),
            (Some(spec), Some(meta)) => decode_bot(id, &spec, &meta).map(Some),
            _ => Err(AdminStoreError::Corrupt(format!(
                "bot `{id}` has only half of its record"
            ))),
        }
    }

    async fn list(&self) -> Result<Vec<BotRecord>, AdminStoreError> {
        let [specs, meta, ..] = self.bot_keys();
        let mut conn = self.conn().await?;
        let (specs, metas): (HashMap<String, String>, HashMap<String, String>) = self
            .hgetall_both
            .key(specs)
            .key(meta)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut bots = metas
            .iter()
            .map(|(id, meta)| {
                let spec = specs.get(id).ok_or_else(|| {
                    AdminStoreError::Corrupt(format!("bot `{id}` has only half of its record"))
                })?;
                decode_bot(id, spec, meta)
            })
            .collect::<Result<Vec<_>, _>>()?;
        bots.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(bots)
    }

    async fn update(
        &self,
        mut record: BotRecord,
        expected_version: u64,
    ) -> Result<BotRecord, AdminStoreError> {
        let version = expected_version.saturating_add(1);
        let announcement = BotChange::Upserted {
            id: record.id.clone(),
            version,
        };
        let reply = self
            .bot_script(
                &self.bot_update,
                &[
                    &record.id,
                    &record.app_id,
                    &to_json(&record.app_id)?,
                    &to_json(&record.spec)?,
                    &expected_version.to_string(),
                    &record.updated_at.to_string(),
                    &self.channel(),
                    &to_json(&announcement)?,
                ],
            )
            .await?;
        match reply.as_slice() {
            [ok, created_at] if ok == "ok" => {
                record.created_at = created_at.parse().map_err(|_| {
                    AdminStoreError::Corrupt(format!("creation time of bot `{}`", record.id))
                })?;
                record.version = version;
                Ok(record)
            }
            [tag] if tag == "not_found" => Err(AdminStoreError::NotFound),
            [tag, current] if tag == "version" => Err(version_mismatch(current)),
            [tag, owner] if tag == "app_id" => Err(app_id_taken(&record.app_id, owner)),
            other => Err(unexpected("bot update", other)),
        }
    }

    async fn delete(&self, id: &str, expected_version: Option<u64>) -> Result<(), AdminStoreError> {
        let announcement = BotChange::Deleted { id: id.to_owned() };
        let reply = self
            .bot_script(
                &self.bot_delete,
                &[
                    id,
                    &expected_version.map(|v| v.to_string()).unwrap_or_default(),
                    &self.channel(),
                    &to_json(&announcement)?,
                ],
            )
            .await?;
        match reply.as_slice() {
            [ok] if ok == "ok" => Ok(()),
            [tag] if tag == "not_found" => Err(AdminStoreError::NotFound),
            [tag, current] if tag == "version" => Err(version_mismatch(current)),
            other => Err(unexpected("bot delete", other)),
        }
    }

    async fn revision(&self) -> Result<u64, AdminStoreError> {
        let [.., revision] = self.bot_keys();
        let mut conn = self.conn().await?;
        let n: Option<u64> = redis::cmd("GET")
            .arg(revision)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(n.unwrap_or(0))
    }

    async fn subscribe(&self) -> Result<BoxStream<'static, BotChange>, AdminStoreError> {
        let channel = self.channel();
        let urls = self.subscribe_urls.clone();
        // Subscribed before returning: a change made after this call returns
        // is announced to the stream.
        let (node, sink, stream) = connect_any(&urls, 0, &channel)
            .await
            .map_err(AdminStoreError::Unavailable)?;
        let (tx, rx) = mpsc::channel(CHANGE_BUFFER);
        tokio::spawn(
            Subscriber {
                urls,
                channel,
                node,
                tx,
            }
            .run(sink, stream),
        );
        Ok(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|change| (change, rx))
        })
        .boxed())
    }
}

/// Opens a pub/sub connection to the first node, from `start` on, that
/// accepts a SUBSCRIBE. The error names no URL: they may carry a password.
async fn connect_any(
    urls: &[String],
    start: usize,
    channel: &str,
) -> Result<(usize, PubSubSink, PubSubStream), String> {
    if urls.is_empty() {
        return Err("no Redis URL to subscribe to bot changes with".into());
    }
    let mut last_error = String::new();
    for i in 0..urls.len() {
        let node = (start + i) % urls.len();
        let Some(url) = urls.get(node) else { continue };
        match connect(url, channel).await {
            Ok((sink, stream)) => return Ok((node, sink, stream)),
            Err(e) => last_error = format!("Redis node #{node} of {}: {e}", urls.len()),
        }
    }
    Err(format!(
        "could not subscribe to bot changes on any Redis node; last error: {last_error}"
    ))
}

async fn connect(url: &str, channel: &str) -> Result<(PubSubSink, PubSubStream), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let pubsub = tokio::time::timeout(SUBSCRIBER_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| "connection timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (mut sink, stream) = pubsub.split();
    tokio::time::timeout(SUBSCRIBER_TIMEOUT, sink.subscribe(channel))
        .await
        .map_err(|_| "SUBSCRIBE timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok((sink, stream))
}

/// The task behind one [`RedisAdminStore::subscribe`] stream: forwards
/// announcements, reconnects when the connection is lost, ends when the
/// stream is dropped.
struct Subscriber {
    urls: Vec<String>,
    channel: String,
    /// The node currently (or last) subscribed to.
    node: usize,
    tx: mpsc::Sender<BotChange>,
}

enum Lost {
    /// The stream was dropped: stop.
    Dropped,
    /// The connection failed: reconnect.
    Connection(String),
}

impl Subscriber {
    async fn run(mut self, mut sink: PubSubSink, mut stream: PubSubStream) {
        loop {
            match self.forward(&mut sink, &mut stream).await {
                Lost::Dropped => return,
                Lost::Connection(why) => tracing::warn!(
                    node = self.node,
                    error = %why,
                    "lost the Redis subscription to bot changes; reconnecting (changes made meanwhile are found by polling the revision)"
                ),
            }
            match self.reconnect().await {
                Some((s, st)) => (sink, stream) = (s, st),
                None => return,
            }
            tracing::info!(node = self.node, "resubscribed to bot changes");
        }
    }

    async fn forward(&self, sink: &mut PubSubSink, stream: &mut PubSubStream) -> Lost {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                () = self.tx.closed() => return Lost::Dropped,
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return Lost::Connection("connection closed".into());
                    };
                    let change = msg
                        .get_payload::<String>()
                        .ok()
                        .and_then(|p| serde_json::from_str::<BotChange>(&p).ok());
                    let Some(change) = change else {
                        tracing::warn!(channel = %self.channel, "ignored an unreadable bot change announcement");
                        continue;
                    };
                    match self.tx.try_send(change) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => tracing::warn!(
                            "a bot change subscriber fell behind; a change announcement was dropped (it is found by polling the revision)"
                        ),
                        Err(mpsc::error::TrySendError::Closed(_)) => return Lost::Dropped,
                    }
                }
                _ = heartbeat.tick() => {
                    match tokio::time::timeout(SUBSCRIBER_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Lost::Connection(format!("PING failed: {e}")),
                        Err(_) => return Lost::Connection("PING timed out".into()),
                    }
                }
            }
        }
    }

    /// Retries every node with a doubling delay until one accepts; `None` when
    /// the stream was dropped meanwhile.
    async fn reconnect(&mut self) -> Option<(PubSubSink, PubSubStream)> {
        let mut delay = RECONNECT_DELAYS.0;
        loop {
            tokio::select! {
                () = self.tx.closed() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            // Start with the next node: the last one just failed.
            match connect_any(&self.urls, self.node + 1, &self.channel).await {
                Ok((node, sink, stream)) => {
                    self.node = node;
                    return Some((sink, stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot resubscribe to bot changes yet");
                    delay = (delay * 2).min(RECONNECT_DELAYS.1);
                }
            }
        }
    }
}

#[async_trait]
impl AuditLog for RedisAdminStore {
    async fn append(&self, entry: &AuditEntry) -> Result<String, AdminStoreError> {
        let mut conn = self.conn().await?;
        self.audit_append
            .key(self.audit_key())
            .arg(entry.at)
            .arg(to_json(&StoredAudit::from(entry))?)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, Option<String>), AdminStoreError> {
        let start = match after {
            Some(after) => {
                let (ms, seq) = parse_audit_id(after)?;
                format!("({ms}-{seq}")
            }
            None => "-".to_owned(),
        };
        let size = audit_page_size(limit);
        let mut conn = self.conn().await?;
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.audit_key())
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(size + 1)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut items = reply
            .ids
            .iter()
            .map(|item| {
                let what = || format!("audit entry `{}`", item.id);
                let json: String = item.get("e").ok_or_else(|| {
                    AdminStoreError::Corrupt(format!("{} has no `e` field", what()))
                })?;
                let mut entry: AuditEntry =
                    serde_json::from_str(&json).map_err(|e| corrupt(&what(), &e))?;
                entry.id.clone_from(&item.id);
                Ok(entry)
            })
            .collect::<Result<Vec<_>, AdminStoreError>>()?;
        let next = if items.len() > size {
            items.truncate(size);
            items.last().map(|e| e.id.clone())
        } else {
            None
        };
        Ok((items, next))
    }

    async fn trim(&self, older_than: u64) -> Result<u64, AdminStoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("XTRIM")
            .arg(self.audit_key())
            .arg("MINID")
            .arg(older_than)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)
    }
}

/// An audit entry as stored: without its id, which is the stream's.
#[derive(Serialize)]
struct StoredAudit<'a> {
    at: u64,
    key_id: &'a Option<String>,
    role: &'a Option<super::Role>,
    action: &'a str,
    target: &'a Option<String>,
    outcome: &'a str,
    status: u16,
    request_id: &'a str,
    client: &'a Option<String>,
}

impl<'a> From<&'a AuditEntry> for StoredAudit<'a> {
    fn from(e: &'a AuditEntry) -> Self {
        Self {
            at: e.at,
            key_id: &e.key_id,
            role: &e.role,
            action: &e.action,
            target: &e.target,
            outcome: &e.outcome,
            status: e.status,
            request_id: &e.request_id,
            client: &e.client,
        }
    }
}
