//! In-process conversation store: the embedded default, lost on restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use botfleet_protocol::ConversationReference;
use parking_lot::RwLock;

use super::{
    check_reference, decode_cursor, encode_cursor, page_size, tenant_of, ConversationStore, Counts,
    Page, StoreError, StoredConversation, UpsertOutcome,
};

#[derive(Default)]
struct BotConversations {
    /// By conversation id; a BTreeMap so cursors ("after id") are stable.
    by_id: BTreeMap<String, StoredConversation>,
    /// Conversation ids per tenant, for tenant listings without a full scan.
    by_tenant: HashMap<String, BTreeSet<String>>,
}

/// Conversation references in memory, per bot.
#[derive(Default)]
pub struct MemoryConversationStore {
    bots: RwLock<HashMap<String, BotConversations>>,
    claims: parking_lot::Mutex<Claims>,
}

/// A claim is known by a keyed 64-bit hash of (bot, conversation, activity id):
/// 16 bytes a claim instead of three strings, and the per-process random key
/// keeps senders from aiming collisions at other activities.
type ClaimKey = u64;

/// Claimed activities -> expiry, plus the order they were claimed in, so
/// expired and excess claims leave in O(1).
#[derive(Default)]
struct Claims {
    hasher: std::collections::hash_map::RandomState,
    until: HashMap<ClaimKey, Instant>,
    order: std::collections::VecDeque<(ClaimKey, Instant)>,
}

impl Claims {
    fn key(&self, bot_id: &str, conversation_id: &str, activity_id: &str) -> ClaimKey {
        use std::hash::BuildHasher;
        self.hasher.hash_one((bot_id, conversation_id, activity_id))
    }
}

/// At most this many claims are kept. One process only needs them to outlive
/// its conversation actors' own memory of recent ids; at 30,000 activities/s
/// this still covers the seconds in which Teams resends.
const MAX_CLAIMS: usize = 200_000;

impl MemoryConversationStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for MemoryConversationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryConversationStore")
            .field("bots", &self.bots.read().len())
            .finish()
    }
}

fn after(id: &Option<String>) -> Bound<&str> {
    match id {
        Some(id) => Bound::Excluded(id.as_str()),
        None => Bound::Unbounded,
    }
}

fn page(mut items: Vec<StoredConversation>, size: usize) -> Page {
    let next_cursor = if items.len() > size {
        items.truncate(size);
        items
            .last()
            .map(|c| encode_cursor(&c.reference.conversation.id))
    } else {
        None
    };
    Page { items, next_cursor }
}

#[async_trait]
impl ConversationStore for MemoryConversationStore {
    async fn upsert(
        &self,
        bot_id: &str,
        reference: &ConversationReference,
        now_ms: u64,
    ) -> Result<UpsertOutcome, StoreError> {
        check_reference(reference)?;
        let id = reference.conversation.id.clone();
        let tenant = tenant_of(reference).map(str::to_owned);
        let mut bots = self.bots.write();
        let bot = bots.entry(bot_id.to_owned()).or_default();
        let (outcome, first_seen_ms, old_tenant) = match bot.by_id.get(&id) {
            None => (UpsertOutcome::Created, now_ms, None),
            Some(old) if old.active => (
                UpsertOutcome::Updated,
                old.first_seen_ms,
                old.tenant_id.clone(),
            ),
            Some(old) => (
                UpsertOutcome::Reactivated,
                old.first_seen_ms,
                old.tenant_id.clone(),
            ),
        };
        if old_tenant != tenant {
            if let Some(old) = &old_tenant {
                if let Some(set) = bot.by_tenant.get_mut(old) {
                    set.remove(&id);
                    if set.is_empty() {
                        bot.by_tenant.remove(old);
                    }
                }
            }
        }
        if let Some(t) = &tenant {
            bot.by_tenant
                .entry(t.clone())
                .or_default()
                .insert(id.clone());
        }
        bot.by_id.insert(
            id,
            StoredConversation {
                bot_id: bot_id.to_owned(),
                tenant_id: tenant,
                reference: reference.clone(),
                first_seen_ms,
                last_seen_ms: now_ms,
                active: true,
                inactive_reason: None,
                inactive_since_ms: None,
            },
        );
        Ok(outcome)
    }

    async fn get(
        &self,
        bot_id: &str,
        conversation_id: &str,
    ) -> Result<Option<StoredConversation>, StoreError> {
        Ok(self
            .bots
            .read()
            .get(bot_id)
            .and_then(|b| b.by_id.get(conversation_id))
            .cloned())
    }

    async fn list(
        &self,
        bot_id: &str,
        tenant_id: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let after_id = decode_cursor(cursor)?;
        let size = page_size(limit);
        let bots = self.bots.read();
        let Some(bot) = bots.get(bot_id) else {
            return Ok(Page::default());
        };
        let range = (after(&after_id), Bound::Unbounded);
        let items: Vec<StoredConversation> = match tenant_id {
            None => bot
                .by_id
                .range::<str, _>(range)
                .take(size + 1)
                .map(|(_, c)| c.clone())
                .collect(),
            Some(t) => match bot.by_tenant.get(t) {
                None => Vec::new(),
                Some(ids) => ids
                    .range::<str, _>(range)
                    .take(size + 1)
                    .filter_map(|id| bot.by_id.get(id).cloned())
                    .collect(),
            },
        };
        Ok(page(items, size))
    }

    async fn deactivate(
        &self,
        bot_id: &str,
        conversation_id: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut bots = self.bots.write();
        let Some(c) = bots
            .get_mut(bot_id)
            .and_then(|b| b.by_id.get_mut(conversation_id))
        else {
            return Ok(false);
        };
        if c.active {
            c.active = false;
            c.inactive_reason = Some(reason.to_owned());
            c.inactive_since_ms = Some(now_ms);
        }
        Ok(true)
    }

    async fn count(&self, bot_id: &str, tenant_id: Option<&str>) -> Result<Counts, StoreError> {
        let bots = self.bots.read();
        let Some(bot) = bots.get(bot_id) else {
            return Ok(Counts::default());
        };
        let tally = |c: &StoredConversation, n: &mut Counts| {
            n.total += 1;
            n.active += u64::from(c.active);
        };
        let mut n = Counts::default();
        match tenant_id {
            None => bot.by_id.values().for_each(|c| tally(c, &mut n)),
            Some(t) => bot
                .by_tenant
                .get(t)
                .into_iter()
                .flatten()
                .filter_map(|id| bot.by_id.get(id))
                .for_each(|c| tally(c, &mut n)),
        }
        Ok(n)
    }

    async fn claim_activity(
        &self,
        bot_id: &str,
        conversation_id: &str,
        activity_id: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut claims = self.claims.lock();
        let key = claims.key(bot_id, conversation_id, activity_id);
        let Claims { until, order, .. } = &mut *claims;
        while let Some((key, at)) = order.front() {
            if *at > now && order.len() < MAX_CLAIMS {
                break;
            }
            // Only drop the map entry if it is this claim (not a newer one of the same key).
            if until.get(key) == Some(at) {
                until.remove(key);
            }
            order.pop_front();
        }
        if until.get(&key).is_some_and(|at| *at > now) {
            return Ok(false);
        }
        let at = now + ttl;
        until.insert(key, at);
        order.push_back((key, at));
        Ok(true)
    }

    async fn release_activity(
        &self,
        bot_id: &str,
        conversation_id: &str,
        activity_id: &str,
    ) -> Result<(), StoreError> {
        let mut claims = self.claims.lock();
        let key = claims.key(bot_id, conversation_id, activity_id);
        claims.until.remove(&key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn claims_stay_bounded() {
        let store = MemoryConversationStore::new();
        let ttl = Duration::from_secs(600);
        for i in 0..MAX_CLAIMS + 10 {
            assert!(store
                .claim_activity("b", "c", &i.to_string(), ttl)
                .await
                .expect("claim"));
        }
        {
            let claims = store.claims.lock();
            assert!(claims.until.len() <= MAX_CLAIMS);
            assert!(claims.order.len() <= MAX_CLAIMS);
        }
        // the oldest claims made room; the newest still hold
        assert!(store
            .claim_activity("b", "c", "0", ttl)
            .await
            .expect("claim"));
        let newest = (MAX_CLAIMS + 9).to_string();
        assert!(!store
            .claim_activity("b", "c", &newest, ttl)
            .await
            .expect("claim"));
    }
}
