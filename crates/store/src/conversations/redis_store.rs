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
//! | `<P>:bf1:conv:{<bot>}:meta` | HASH | conversation id -> `{"t":tenant,"f":first_seen,"l":last_seen,"a":0/1,"r":reason,"s":inactive_since,"g":generation,"h":reach fingerprint,"m":moved-to serviceUrl}` |
//! | `<P>:bf1:conv:{<bot>}:ids` | ZSET | every conversation id, score 0 (lexicographic order) |
//! | `<P>:bf1:conv:{<bot>}:tenant:<tenant>` | ZSET | the conversation ids of one tenant, score 0 |
//! | `<P>:bf1:conv:{<bot>}:counts` | HASH | `total`, `active`, `t:<tenant>:total`, `t:<tenant>:active` |
//! | `<P>:bf1:seen:{<bot>}:<delivery key>` | STRING | claim of one delivery of an inbound activity (`SET NX PX`); the key is 32 hex digits whatever the ids |
//!
//! - one inbound activity: one script that claims its delivery and writes the
//!   reference only when it changed, was inactive or is due a `last_seen` touch
//!   (one round trip; the claim lives in the bot's slot so the script may touch it);
//! - a send outcome: one script that applies it only to the generation the send
//!   read, and never reactivates;
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
    check_record, decode_cursor, encode_cursor, page_size, reach_fingerprint, tenant_of,
    ConversationStore, Counts, DeliveryKey, InboundChange, InboundRecord, OutcomeApplied, Page,
    Recorded, ReferenceOutcome, ReferenceWrite, StoreError, StoredConversation,
};
use crate::redis_pool::{RedisConn, RedisPool, RedisPoolError, KEY_SCHEMA};

/// A tenant change racing with another one makes the record script ask again
/// with the tenant it found; this bounds those retries.
const UPSERT_ATTEMPTS: usize = 5;

/// Helpers shared by the write scripts. `save` writes one meta record; numbers
/// are formatted with `%d` because cjson decodes them as doubles.
const PRELUDE: &str = r#"
local function str(v) if v == nil or v == cjson.null then return nil end return v end
local function num(v) if v == nil or v == cjson.null then return 0 end return tonumber(v) end
local function enc(v) if v == nil then return 'null' end return cjson.encode(v) end
local function int_or_null(v) if v == nil or v == cjson.null then return 'null' end return string.format('%d', v) end
local function save(meta, id, t_json, f, l, a, r_json, s, g, h, mv)
  redis.call('HSET', meta, id, string.format(
    '{"t":%s,"f":%d,"l":%d,"a":%d,"r":%s,"s":%s,"g":%d,"h":%s,"m":%s}',
    t_json, f, l, a, r_json, s, g, enc(h), enc(mv)))
end
"#;

/// KEYS: refs, meta, ids, counts, new tenant zset (or ids), old tenant zset
/// guess (or ids), claim key (or refs when nothing is claimed).
/// ARGV: id, mode (`seen`/`ended`), reference json, new tenant ('' = none), new
/// tenant as JSON, now_ms, guessed old tenant ('' = none), reach fingerprint,
/// touch_after_ms, claim ttl ms ('0' = no claim), reason as JSON.
/// Returns `{'duplicate'}`, `{'retry', stored tenant}` (nothing done) or
/// `{write, generation, moved-to url or ''}`.
const RECORD: &str = r#"
local id, mode, now = ARGV[1], ARGV[2], tonumber(ARGV[6])
local meta, counts = KEYS[2], KEYS[4]
local raw = redis.call('HGET', meta, id)
local m, g, old_t, mv = nil, 0, '', nil
if raw then
  m = cjson.decode(raw)
  g, old_t, mv = num(m.g), str(m.t) or '', str(m.m)
end
local write
if mode == 'seen' then
  if not m then
    write = 'created'
  else
    local same = (str(m.h) == ARGV[8])
    local active = (m.a == 1)
    if same and active then
      if now - m.l < tonumber(ARGV[9]) then write = 'unchanged' else write = 'touched' end
    elseif not active then
      write = 'reactivated'
    else
      write = 'updated'
    end
    -- Only a different reference can change the tenant, whose zset must be a declared key.
    if not same and old_t ~= ARGV[7] then return {'retry', old_t} end
  end
elseif not m then
  write = 'unknown'
elseif m.a ~= 1 then
  write = 'already_inactive'
else
  write = 'deactivated'
end
if ARGV[10] ~= '0' then
  if not redis.call('SET', KEYS[7], '1', 'NX', 'PX', ARGV[10]) then return {'duplicate'} end
end
if write == 'unchanged' or write == 'unknown' or write == 'already_inactive' then
  return {write, string.format('%d', g), mv or ''}
end
if mode == 'ended' then
  local t_json = 'null'
  if old_t ~= '' then
    redis.call('HINCRBY', counts, 't:' .. old_t .. ':active', -1)
    t_json = cjson.encode(old_t)
  end
  redis.call('HINCRBY', counts, 'active', -1)
  g = g + 1
  save(meta, id, t_json, m.f, m.l, 0, ARGV[11], string.format('%d', now), g, str(m.h), mv)
  return {write, string.format('%d', g), mv or ''}
end
local new_t = ARGV[4]
local first = now
if write == 'created' then
  g = 1
  redis.call('ZADD', KEYS[3], 0, id)
  redis.call('HINCRBY', counts, 'total', 1)
  redis.call('HINCRBY', counts, 'active', 1)
  if new_t ~= '' then
    redis.call('ZADD', KEYS[5], 0, id)
    redis.call('HINCRBY', counts, 't:' .. new_t .. ':total', 1)
    redis.call('HINCRBY', counts, 't:' .. new_t .. ':active', 1)
  end
else
  first = m.f
  local was_active = (m.a == 1)
  if not was_active then redis.call('HINCRBY', counts, 'active', 1) end
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
  if write ~= 'touched' then g = g + 1 end
  -- Teams names a new way to reach it: that wins over an earlier move.
  if str(m.h) ~= ARGV[8] then mv = nil end
end
redis.call('HSET', KEYS[1], id, ARGV[3])
save(meta, id, ARGV[5], first, now, 1, 'null', 'null', g, ARGV[8], mv)
return {write, string.format('%d', g), mv or ''}
"#;

/// KEYS: refs, meta, counts. ARGV: id, kind (`unreachable`/`moved`), the
/// generation the send read, reason as JSON / the new serviceUrl, now_ms.
/// Returns `{'unknown'}`, `{'unchanged'}`, `{'stale'}` or `{'applied', generation}`.
const OUTCOME: &str = r#"
local id, kind = ARGV[1], ARGV[2]
local raw = redis.call('HGET', KEYS[2], id)
if not raw then return {'unknown'} end
local m = cjson.decode(raw)
local g, t, mv = num(m.g), str(m.t), str(m.m)
if kind == 'unreachable' then
  if m.a ~= 1 then return {'unchanged'} end
else
  local current = mv
  if current == nil then
    local ref = redis.call('HGET', KEYS[1], id)
    if ref then current = str(cjson.decode(ref).serviceUrl) end
  end
  if current == ARGV[4] then return {'unchanged'} end
end
if g ~= tonumber(ARGV[3]) then return {'stale'} end
g = g + 1
local t_json = 'null'
if t then t_json = cjson.encode(t) end
if kind == 'unreachable' then
  if t then redis.call('HINCRBY', KEYS[3], 't:' .. t .. ':active', -1) end
  redis.call('HINCRBY', KEYS[3], 'active', -1)
  save(KEYS[2], id, t_json, m.f, m.l, 0, ARGV[4], string.format('%d', tonumber(ARGV[5])), g, str(m.h), mv)
else
  save(KEYS[2], id, t_json, m.f, m.l, m.a, enc(str(m.r)), int_or_null(m.s), g, str(m.h), ARGV[4])
end
return {'applied', string.format('%d', g)}
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
    /// Absent in records written before generations: 0.
    #[serde(default)]
    g: u64,
    /// The serviceUrl a send outcome moved the conversation to.
    #[serde(default)]
    m: Option<String>,
}

/// Conversation references in Redis; see the module comment for the layout.
pub struct RedisConversationStore {
    pool: RedisPool,
    prefix: String,
    record: Script,
    outcome: Script,
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
            record: Script::new(&format!("{PRELUDE}{RECORD}")),
            outcome: Script::new(&format!("{PRELUDE}{OUTCOME}")),
            // KEYS: ordering zset, refs, meta -> (id, reference, meta) triples.
            list: Script::new(crate::redis_pool::PAGE_BY_LEX),
            get: Script::new(GET),
        }
    }

    fn keys(&self, bot_id: &str) -> BotKeys {
        BotKeys {
            base: format!("{}{KEY_SCHEMA}:conv:{{{}}}", self.prefix, escape(bot_id)),
        }
    }

    /// One key per claimed delivery, in the bot's slot so that the script that
    /// records an inbound activity claims it and writes the reference at once.
    /// Its size is fixed but for the prefix and bot id (configuration).
    fn claim_key(&self, bot_id: &str, key: &DeliveryKey) -> String {
        format!(
            "{}{KEY_SCHEMA}:seen:{{{}}}:{key}",
            self.prefix,
            escape(bot_id)
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
        let mut reference = reference;
        if let Some(moved) = meta.m {
            reference.service_url = moved;
        }
        Ok(StoredConversation {
            bot_id: bot_id.to_owned(),
            tenant_id: meta.t,
            reference,
            first_seen_ms: meta.f,
            last_seen_ms: meta.l,
            active: meta.a == 1,
            inactive_reason: meta.r,
            inactive_since_ms: meta.s,
            generation: meta.g,
        })
    }
}

fn parse_write(write: &str) -> Result<ReferenceWrite, StoreError> {
    Ok(match write {
        "created" => ReferenceWrite::Created,
        "updated" => ReferenceWrite::Updated,
        "reactivated" => ReferenceWrite::Reactivated,
        "touched" => ReferenceWrite::Touched,
        "unchanged" => ReferenceWrite::Unchanged,
        "deactivated" => ReferenceWrite::Deactivated,
        "already_inactive" => ReferenceWrite::AlreadyInactive,
        "unknown" => ReferenceWrite::Unknown,
        other => {
            return Err(unavailable(format!(
                "unexpected record script write {other:?}"
            )))
        }
    })
}

#[async_trait]
impl ConversationStore for RedisConversationStore {
    async fn record_inbound(
        &self,
        bot_id: &str,
        record: &InboundRecord<'_>,
    ) -> Result<Recorded, StoreError> {
        let reference = check_record(record)?;
        let id = record.conversation_id;
        let keys = self.keys(bot_id);
        let (mode, reference_json, tenant, fingerprint, touch_ms, reason_json) =
            match (record.change, reference) {
                (InboundChange::Seen { touch_after, .. }, Some(r)) => (
                    "seen",
                    serde_json::to_string(r).map_err(unavailable)?,
                    tenant_of(r),
                    reach_fingerprint(r),
                    u64::try_from(touch_after.as_millis()).unwrap_or(u64::MAX),
                    "null".to_owned(),
                ),
                (InboundChange::Ended { reason }, _) => (
                    "ended",
                    String::new(),
                    None,
                    String::new(),
                    0,
                    serde_json::to_string(reason).map_err(unavailable)?,
                ),
                (InboundChange::Seen { .. }, None) => {
                    return Err(StoreError::InvalidReference(
                        "an inbound reference is missing",
                    ))
                }
            };
        let tenant_json = serde_json::to_string(&tenant).map_err(unavailable)?;
        let new_tenant_key = tenant.map_or_else(|| keys.ids(), |t| keys.tenant(t));
        let (claim_key, claim_ttl_ms) = match &record.claim {
            Some((key, ttl)) => (
                self.claim_key(bot_id, key),
                u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            ),
            None => (keys.refs(), 0),
        };
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
                .record
                .key(keys.refs())
                .key(keys.meta())
                .key(keys.ids())
                .key(keys.counts())
                .key(&new_tenant_key)
                .key(old_tenant_key)
                .key(&claim_key)
                .arg(id)
                .arg(mode)
                .arg(&reference_json)
                .arg(tenant.unwrap_or_default())
                .arg(&tenant_json)
                .arg(record.now_ms)
                .arg(&guess)
                .arg(&fingerprint)
                .arg(touch_ms)
                .arg(claim_ttl_ms)
                .arg(&reason_json)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            match reply.as_slice() {
                [d] if d == "duplicate" => return Ok(Recorded::Duplicate),
                [retry, stored] if retry == "retry" => guess = stored.clone(),
                [write, generation, moved] => {
                    return Ok(Recorded::Recorded {
                        write: parse_write(write)?,
                        generation: generation.parse::<u64>().map_err(|_| {
                            unavailable(format!(
                                "unexpected record script generation {generation:?}"
                            ))
                        })?,
                        service_url_moved_to: Some(moved.clone()).filter(|m| !m.is_empty()),
                    })
                }
                other => {
                    return Err(unavailable(format!(
                        "unexpected record script reply {other:?}"
                    )))
                }
            }
        }
        Err(StoreError::Contended(id.to_owned()))
    }

    async fn report_outcome(
        &self,
        bot_id: &str,
        conversation_id: &str,
        generation: u64,
        outcome: &ReferenceOutcome<'_>,
        now_ms: u64,
    ) -> Result<OutcomeApplied, StoreError> {
        let keys = self.keys(bot_id);
        let (kind, value) = match outcome {
            ReferenceOutcome::Unreachable { reason } => (
                "unreachable",
                serde_json::to_string(reason).map_err(unavailable)?,
            ),
            ReferenceOutcome::Moved { service_url } => ("moved", (*service_url).to_owned()),
        };
        let mut conn = self.conn().await?;
        let reply: Vec<String> = self
            .outcome
            .key(keys.refs())
            .key(keys.meta())
            .key(keys.counts())
            .arg(conversation_id)
            .arg(kind)
            .arg(generation)
            .arg(value)
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        match reply.as_slice() {
            [o] if o == "unknown" => Ok(OutcomeApplied::Unknown),
            [o] if o == "unchanged" => Ok(OutcomeApplied::Unchanged),
            [o] if o == "stale" => Ok(OutcomeApplied::Stale),
            [o, g] if o == "applied" => g
                .parse::<u64>()
                .map(|generation| OutcomeApplied::Applied { generation })
                .map_err(|_| unavailable(format!("unexpected outcome script generation {g:?}"))),
            other => Err(unavailable(format!(
                "unexpected outcome script reply {other:?}"
            ))),
        }
    }

    async fn release_delivery(&self, bot_id: &str, key: &DeliveryKey) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let _: i64 = redis::cmd("DEL")
            .arg(self.claim_key(bot_id, key))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
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
}
