//! Conversation references in Redis (single node or Redis Cluster).
//!
//! # Key layout (schema `bf1`)
//!
//! Every key of one bot carries the hash tag `{<bot>}`, so all of them live in
//! one cluster slot and each write is one atomic Lua script that declares every
//! key it touches. `<P>` is the configured prefix (tests use a unique one so
//! they can share a server); `<bot>` and `<tenant>` are percent-escaped so that
//! `{`, `}` and other unsafe bytes cannot break the tag or the layout.
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `<P>:bf1:conv:{<bot>}:refs` | HASH | conversation id -> reference JSON (as given, never re-encoded) |
//! | `<P>:bf1:conv:{<bot>}:meta` | HASH | conversation id -> `{"t":tenant,"f":first_seen,"l":last_seen,"a":0/1,"r":reason,"s":inactive_since}` |
//! | `<P>:bf1:conv:{<bot>}:ids` | ZSET | every conversation id, score 0 (lexicographic order) |
//! | `<P>:bf1:conv:{<bot>}:tenant:<tenant>` | ZSET | the conversation ids of one tenant, score 0 |
//! | `<P>:bf1:conv:{<bot>}:counts` | HASH | `total`, `active`, `t:<tenant>:total`, `t:<tenant>:active` |
//! | `<P>:bf1:seen:<bot>:<conversation>:<activity id>` | STRING | claim of one inbound activity (`SET NX PX`), no hash tag: single-key, spread over the cluster |
//!
//! - get by id: one script reading `refs` and `meta` (one round trip);
//! - list by bot / by tenant: `ZRANGEBYLEX` after the cursor's id on `ids` /
//!   `tenant:<tenant>`, then `HMGET` of that page, in one script; no SCAN;
//! - counts: one `HMGET` on `counts`, kept exact by the write scripts.
//!
//! Why per-bot slots rather than per (bot, tenant): get-by-id then needs no
//! id -> tenant lookup in another slot, a tenant change stays atomic, and counts
//! are exact. Bots spread over the cluster; a single bot's references stay on one
//! shard (about 1 KiB each, so millions per shard). Sharding one bot by tenant
//! would be a new schema version.

use async_trait::async_trait;
use botfleet_protocol::ConversationReference;
use redis::Script;
use serde::Deserialize;

use super::{
    check_reference, decode_cursor, encode_cursor, page_size, tenant_of, ConversationStore, Counts,
    Page, StoreError, StoredConversation, UpsertOutcome,
};
use crate::redis_pool::{RedisConn, RedisPool, RedisPoolError, KEY_SCHEMA};

/// A tenant change racing with another one makes the upsert script ask again
/// with the tenant it found; this bounds those retries.
const UPSERT_ATTEMPTS: usize = 5;

/// KEYS: refs, meta, ids, counts, new tenant zset (or ids), old tenant zset guess (or ids).
/// ARGV: id, reference json, new tenant ('' = none), new tenant as JSON, now_ms,
/// guessed old tenant ('' = none).
const UPSERT: &str = r#"
local id, new_t, now, guess = ARGV[1], ARGV[3], tonumber(ARGV[5]), ARGV[6]
local counts = KEYS[4]
local raw = redis.call('HGET', KEYS[2], id)
local first = now
local outcome
if raw then
  local m = cjson.decode(raw)
  local old_t = m.t
  if old_t == nil or old_t == cjson.null then old_t = '' end
  if old_t ~= guess then return {'retry', old_t} end
  first = m.f
  local was_active = (m.a == 1)
  if was_active then
    outcome = 'updated'
  else
    outcome = 'reactivated'
    redis.call('HINCRBY', counts, 'active', 1)
  end
  if old_t ~= new_t then
    if old_t ~= '' then
      redis.call('ZREM', KEYS[6], id)
      redis.call('HINCRBY', counts, 't:' .. old_t .. ':total', -1)
      if was_active then redis.call('HINCRBY', counts, 't:' .. old_t .. ':active', -1) end
    end
    if new_t ~= '' then
      redis.call('ZADD', KEYS[5], 0, id)
      redis.call('HINCRBY', counts, 't:' .. new_t .. ':total', 1)
      redis.call('HINCRBY', counts, 't:' .. new_t .. ':active', 1)
    end
  elseif new_t ~= '' and not was_active then
    redis.call('HINCRBY', counts, 't:' .. new_t .. ':active', 1)
  end
else
  outcome = 'created'
  redis.call('ZADD', KEYS[3], 0, id)
  redis.call('HINCRBY', counts, 'total', 1)
  redis.call('HINCRBY', counts, 'active', 1)
  if new_t ~= '' then
    redis.call('ZADD', KEYS[5], 0, id)
    redis.call('HINCRBY', counts, 't:' .. new_t .. ':total', 1)
    redis.call('HINCRBY', counts, 't:' .. new_t .. ':active', 1)
  end
end
redis.call('HSET', KEYS[1], id, ARGV[2])
redis.call('HSET', KEYS[2], id,
  string.format('{"t":%s,"f":%d,"l":%d,"a":1,"r":null,"s":null}', ARGV[4], first, now))
return {outcome}
"#;

/// KEYS: meta, counts. ARGV: id, reason as JSON, now_ms.
const DEACTIVATE: &str = r#"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local m = cjson.decode(raw)
if m.a ~= 1 then return 1 end
local t_json = 'null'
if m.t ~= nil and m.t ~= cjson.null then
  redis.call('HINCRBY', KEYS[2], 't:' .. m.t .. ':active', -1)
  t_json = cjson.encode(m.t)
end
redis.call('HINCRBY', KEYS[2], 'active', -1)
redis.call('HSET', KEYS[1], ARGV[1],
  string.format('{"t":%s,"f":%d,"l":%d,"a":0,"r":%s,"s":%d}', t_json, m.f, m.l, ARGV[2], tonumber(ARGV[3])))
return 1
"#;

/// KEYS: ordering zset, refs, meta. ARGV: ZRANGEBYLEX min, count.
/// Returns id, reference, meta triples.
const LIST: &str = r#"
local ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
if #ids == 0 then return out end
local refs = redis.call('HMGET', KEYS[2], unpack(ids))
local metas = redis.call('HMGET', KEYS[3], unpack(ids))
for i, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = refs[i]
  out[#out + 1] = metas[i]
end
return out
"#;

/// KEYS: refs, meta. ARGV: id.
const GET: &str = r#"
return {redis.call('HGET', KEYS[1], ARGV[1]), redis.call('HGET', KEYS[2], ARGV[1])}
"#;

#[derive(Deserialize)]
struct Meta {
    t: Option<String>,
    f: u64,
    l: u64,
    a: u8,
    r: Option<String>,
    s: Option<u64>,
}

/// Conversation references in Redis; see the module comment for the layout.
pub struct RedisConversationStore {
    pool: RedisPool,
    prefix: String,
    upsert: Script,
    deactivate: Script,
    list: Script,
    get: Script,
}

impl std::fmt::Debug for RedisConversationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConversationStore")
            .field("pool", &self.pool)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

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

struct BotKeys {
    base: String,
}

impl BotKeys {
    fn refs(&self) -> String {
        format!("{}:refs", self.base)
    }
    fn meta(&self) -> String {
        format!("{}:meta", self.base)
    }
    fn ids(&self) -> String {
        format!("{}:ids", self.base)
    }
    fn counts(&self) -> String {
        format!("{}:counts", self.base)
    }
    fn tenant(&self, tenant: &str) -> String {
        format!("{}:tenant:{}", self.base, escape(tenant))
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisConversationStore {
    /// `key_prefix` is put before every key (may be empty), so deployments and
    /// test runs can share one Redis.
    pub fn new(pool: RedisPool, key_prefix: &str) -> Self {
        let prefix = if key_prefix.is_empty() || key_prefix.ends_with(':') {
            key_prefix.to_owned()
        } else {
            format!("{key_prefix}:")
        };
        Self {
            pool,
            prefix,
            upsert: Script::new(UPSERT),
            deactivate: Script::new(DEACTIVATE),
            list: Script::new(LIST),
            get: Script::new(GET),
        }
    }

    fn keys(&self, bot_id: &str) -> BotKeys {
        BotKeys {
            base: format!("{}{KEY_SCHEMA}:conv:{{{}}}", self.prefix, escape(bot_id)),
        }
    }

    /// One key per claimed activity, without a hash tag: claims are single-key
    /// operations, so they spread over the whole cluster.
    fn claim_key(&self, bot_id: &str, conversation_id: &str, activity_id: &str) -> String {
        format!(
            "{}{KEY_SCHEMA}:seen:{}:{}:{}",
            self.prefix,
            escape(bot_id),
            escape(conversation_id),
            escape(activity_id)
        )
    }

    async fn conn(&self) -> Result<RedisConn, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e: RedisPoolError| unavailable(e))
    }

    fn decode(
        bot_id: &str,
        conversation_id: &str,
        reference: Option<String>,
        meta: Option<String>,
    ) -> Result<StoredConversation, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            bot_id: bot_id.to_owned(),
            conversation_id: conversation_id.to_owned(),
            reason,
        };
        let (Some(reference), Some(meta)) = (reference, meta) else {
            return Err(corrupt("reference or metadata missing".into()));
        };
        let reference: ConversationReference =
            serde_json::from_str(&reference).map_err(|e| corrupt(format!("reference: {e}")))?;
        let meta: Meta =
            serde_json::from_str(&meta).map_err(|e| corrupt(format!("metadata: {e}")))?;
        Ok(StoredConversation {
            bot_id: bot_id.to_owned(),
            tenant_id: meta.t,
            reference,
            first_seen_ms: meta.f,
            last_seen_ms: meta.l,
            active: meta.a == 1,
            inactive_reason: meta.r,
            inactive_since_ms: meta.s,
        })
    }
}

#[async_trait]
impl ConversationStore for RedisConversationStore {
    async fn upsert(
        &self,
        bot_id: &str,
        reference: &ConversationReference,
        now_ms: u64,
    ) -> Result<UpsertOutcome, StoreError> {
        check_reference(reference)?;
        let id = &reference.conversation.id;
        let tenant = tenant_of(reference);
        let keys = self.keys(bot_id);
        let reference_json = serde_json::to_string(reference).map_err(unavailable)?;
        let tenant_json = serde_json::to_string(&tenant).map_err(unavailable)?;
        let new_tenant_key = tenant.map_or_else(|| keys.ids(), |t| keys.tenant(t));
        let mut conn = self.conn().await?;
        // The tenant rarely changes: guess it did not, and let the script tell
        // us the stored one if it did (it must be a declared key to touch it).
        let mut guess = tenant.unwrap_or_default().to_owned();
        for _ in 0..UPSERT_ATTEMPTS {
            let old_tenant_key = if guess.is_empty() {
                keys.ids()
            } else {
                keys.tenant(&guess)
            };
            let reply: Vec<String> = self
                .upsert
                .key(keys.refs())
                .key(keys.meta())
                .key(keys.ids())
                .key(keys.counts())
                .key(&new_tenant_key)
                .key(old_tenant_key)
                .arg(id)
                .arg(&reference_json)
                .arg(tenant.unwrap_or_default())
                .arg(&tenant_json)
                .arg(now_ms)
                .arg(&guess)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            match reply.as_slice() {
                [o] if o == "created" => return Ok(UpsertOutcome::Created),
                [o] if o == "updated" => return Ok(UpsertOutcome::Updated),
                [o] if o == "reactivated" => return Ok(UpsertOutcome::Reactivated),
                [retry, stored] if retry == "retry" => guess = stored.clone(),
                other => {
                    return Err(unavailable(format!(
                        "unexpected upsert script reply {other:?}"
                    )))
                }
            }
        }
        Err(StoreError::Contended(id.clone()))
    }

    async fn get(
        &self,
        bot_id: &str,
        conversation_id: &str,
    ) -> Result<Option<StoredConversation>, StoreError> {
        let keys = self.keys(bot_id);
        let mut conn = self.conn().await?;
        let (reference, meta): (Option<String>, Option<String>) = self
            .get
            .key(keys.refs())
            .key(keys.meta())
            .arg(conversation_id)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if reference.is_none() && meta.is_none() {
            return Ok(None);
        }
        Self::decode(bot_id, conversation_id, reference, meta).map(Some)
    }

    async fn list(
        &self,
        bot_id: &str,
        tenant_id: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let after = decode_cursor(cursor)?;
        let size = page_size(limit);
        let keys = self.keys(bot_id);
        let order = tenant_id.map_or_else(|| keys.ids(), |t| keys.tenant(t));
        let min = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let mut conn = self.conn().await?;
        let flat: Vec<Option<String>> = self
            .list
            .key(order)
            .key(keys.refs())
            .key(keys.meta())
            .arg(min)
            .arg(size + 1)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut items = Vec::with_capacity(flat.len() / 3);
        let mut triples = flat.into_iter();
        while let (Some(id), Some(reference), Some(meta)) =
            (triples.next(), triples.next(), triples.next())
        {
            let id = id.unwrap_or_default();
            items.push(Self::decode(bot_id, &id, reference, meta)?);
        }
        let next_cursor = if items.len() > size {
            items.truncate(size);
            items
                .last()
                .map(|c| encode_cursor(&c.reference.conversation.id))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn deactivate(
        &self,
        bot_id: &str,
        conversation_id: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let keys = self.keys(bot_id);
        let reason_json = serde_json::to_string(reason).map_err(unavailable)?;
        let mut conn = self.conn().await?;
        let known: i64 = self
            .deactivate
            .key(keys.meta())
            .key(keys.counts())
            .arg(conversation_id)
            .arg(reason_json)
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(known == 1)
    }

    async fn count(&self, bot_id: &str, tenant_id: Option<&str>) -> Result<Counts, StoreError> {
        let keys = self.keys(bot_id);
        let (total, active) = match tenant_id {
            None => ("total".to_owned(), "active".to_owned()),
            Some(t) => (format!("t:{t}:total"), format!("t:{t}:active")),
        };
        let mut conn = self.conn().await?;
        let (total, active): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(keys.counts())
            .arg(total)
            .arg(active)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let n = |v: Option<i64>| u64::try_from(v.unwrap_or(0)).unwrap_or(0);
        Ok(Counts {
            total: n(total),
            active: n(active),
        })
    }

    async fn claim_activity(
        &self,
        bot_id: &str,
        conversation_id: &str,
        activity_id: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = redis::cmd("SET")
            .arg(self.claim_key(bot_id, conversation_id, activity_id))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(set.is_some())
    }

    async fn release_activity(
        &self,
        bot_id: &str,
        conversation_id: &str,
        activity_id: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let _: i64 = redis::cmd("DEL")
            .arg(self.claim_key(bot_id, conversation_id, activity_id))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
