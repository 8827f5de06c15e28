//! In-process conversation store: the embedded default, lost on restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::RwLock;

use super::{
    check_record, decode_cursor, encode_cursor, page_size, reach_fingerprint, tenant_of,
    ConversationStore, Counts, DeliveryKey, InboundChange, InboundRecord, OutcomeApplied, Page,
    Recorded, ReferenceOutcome, ReferenceWrite, StoreError, StoredConversation,
};

/// One stored conversation and what the write decisions need besides it.
#[derive(Clone)]
struct Entry {
    /// As written by the last inbound activity (its own serviceUrl).
    conversation: StoredConversation,
    /// [`reach_fingerprint`] of that inbound reference.
    fingerprint: String,
    /// The host a send outcome moved the conversation to, while inbound
    /// activities still name the old one.
    moved_to: Option<String>,
}

impl Entry {
    /// What readers see: the reference with the moved host applied.
    fn view(&self) -> StoredConversation {
        let mut c = self.conversation.clone();
        if let Some(url) = &self.moved_to {
            c.reference.service_url = url.clone();
        }
        c
    }
}

#[derive(Default)]
struct BotConversations {
    /// By conversation id; a BTreeMap so cursors ("after id") are stable.
    by_id: BTreeMap<String, Entry>,
    /// Conversation ids per tenant, for tenant listings without a full scan.
    by_tenant: HashMap<String, BTreeSet<String>>,
}

impl BotConversations {
    fn file_under_tenant(&mut self, id: &str, old: Option<&str>, new: Option<&str>) {
        if old == new {
            return;
        }
        if let Some(old) = old {
            if let Some(set) = self.by_tenant.get_mut(old) {
                set.remove(id);
                if set.is_empty() {
                    self.by_tenant.remove(old);
                }
            }
        }
        if let Some(t) = new {
            self.by_tenant
                .entry(t.to_owned())
                .or_default()
                .insert(id.to_owned());
        }
    }
}

/// Conversation references in memory, per bot.
#[derive(Default)]
pub struct MemoryConversationStore {
    bots: RwLock<HashMap<String, BotConversations>>,
    claims: parking_lot::Mutex<Claims>,
}

/// A claim is known by a keyed 64-bit hash of (bot, delivery key): 16 bytes a
/// claim, and the per-process random key keeps senders from aiming collisions
/// at other activities.
type ClaimKey = u64;

/// Claimed deliveries -> expiry, plus the order they were claimed in, so
/// expired and excess claims leave in O(1).
#[derive(Default)]
struct Claims {
    hasher: std::collections::hash_map::RandomState,
    until: HashMap<ClaimKey, Instant>,
    order: std::collections::VecDeque<(ClaimKey, Instant)>,
}

impl Claims {
    fn key(&self, bot_id: &str, key: &DeliveryKey) -> ClaimKey {
        use std::hash::BuildHasher;
        self.hasher.hash_one((bot_id, key.as_u128()))
    }

    /// True when this claim is the first within `ttl`.
    fn claim(&mut self, key: ClaimKey, ttl: Duration) -> bool {
        let now = Instant::now();
        let Claims { until, order, .. } = self;
        while let Some((k, at)) = order.front() {
            if *at > now && order.len() < MAX_CLAIMS {
                break;
            }
            // Only drop the map entry if it is this claim (not a newer one of the same key).
            if until.get(k) == Some(at) {
                until.remove(k);
            }
            order.pop_front();
        }
        if until.get(&key).is_some_and(|at| *at > now) {
            return false;
        }
        let at = now + ttl;
        until.insert(key, at);
        order.push_back((key, at));
        true
    }
}

/// At most this many claims are kept. One process only needs them to outlive
/// its conversation actors' own memory of recent deliveries; at 30,000
/// activities/s this still covers the seconds in which Teams resends.
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

fn recorded(write: ReferenceWrite, entry: Option<&Entry>) -> Recorded {
    Recorded::Recorded {
        write,
        generation: entry.map_or(0, |e| e.conversation.generation),
        service_url_moved_to: entry.and_then(|e| e.moved_to.clone()),
    }
}

#[async_trait]
impl ConversationStore for MemoryConversationStore {
    async fn record_inbound(
        &self,
        bot_id: &str,
        record: &InboundRecord<'_>,
    ) -> Result<Recorded, StoreError> {
        let reference = check_record(record)?;
        let id = record.conversation_id;
        let now_ms = record.now_ms;
        // Hashed before the lock: every activity of every bot takes it.
        let fingerprint = reference.map(reach_fingerprint).unwrap_or_default();
        let mut bots = self.bots.write();
        // Claim under the same lock as the write, as the Redis script does: a
        // resend racing its original sees either nothing or both.
        if let Some((key, ttl)) = &record.claim {
            let mut claims = self.claims.lock();
            let key = claims.key(bot_id, key);
            if !claims.claim(key, *ttl) {
                return Ok(Recorded::Duplicate);
            }
        }
        let bot = bots.entry(bot_id.to_owned()).or_default();
        match (record.change, reference) {
            (InboundChange::Ended { reason }, _) => {
                let Some(entry) = bot.by_id.get_mut(id) else {
                    return Ok(recorded(ReferenceWrite::Unknown, None));
                };
                let c = &mut entry.conversation;
                if !c.active {
                    return Ok(recorded(ReferenceWrite::AlreadyInactive, Some(entry)));
                }
                c.active = false;
                c.inactive_reason = Some(reason.to_owned());
                c.inactive_since_ms = Some(now_ms);
                c.generation += 1;
                Ok(recorded(ReferenceWrite::Deactivated, Some(entry)))
            }
            (InboundChange::Seen { touch_after, .. }, Some(reference)) => {
                let tenant = tenant_of(reference).map(str::to_owned);
                let touch_after_ms = u64::try_from(touch_after.as_millis()).unwrap_or(u64::MAX);
                if let Some(e) = bot.by_id.get_mut(id) {
                    let same = e.fingerprint == fingerprint;
                    let c = &e.conversation;
                    let touch_due = now_ms.saturating_sub(c.last_seen_ms) >= touch_after_ms;
                    let write = match (same, c.active) {
                        (true, true) if !touch_due => {
                            return Ok(recorded(ReferenceWrite::Unchanged, Some(e)))
                        }
                        (true, true) => ReferenceWrite::Touched,
                        (_, false) => ReferenceWrite::Reactivated,
                        (false, true) => ReferenceWrite::Updated,
                    };
                    if !same {
                        // Teams names a new way to reach it: that wins over a move.
                        e.moved_to = None;
                        e.fingerprint = fingerprint;
                    }
                    let c = &mut e.conversation;
                    if write != ReferenceWrite::Touched {
                        c.generation += 1;
                    }
                    let old_tenant = std::mem::replace(&mut c.tenant_id, tenant.clone());
                    c.reference = reference.clone();
                    c.last_seen_ms = now_ms;
                    c.active = true;
                    c.inactive_reason = None;
                    c.inactive_since_ms = None;
                    let result = recorded(write, Some(e));
                    bot.file_under_tenant(id, old_tenant.as_deref(), tenant.as_deref());
                    return Ok(result);
                }
                let entry = Entry {
                    conversation: StoredConversation {
                        bot_id: bot_id.to_owned(),
                        tenant_id: tenant.clone(),
                        reference: reference.clone(),
                        first_seen_ms: now_ms,
                        last_seen_ms: now_ms,
                        active: true,
                        inactive_reason: None,
                        inactive_since_ms: None,
                        generation: 1,
                    },
                    fingerprint,
                    moved_to: None,
                };
                let result = recorded(ReferenceWrite::Created, Some(&entry));
                bot.file_under_tenant(id, None, tenant.as_deref());
                bot.by_id.insert(id.to_owned(), entry);
                Ok(result)
            }
            (InboundChange::Seen { .. }, None) => Err(StoreError::InvalidReference(
                "an inbound reference is missing",
            )),
        }
    }

    async fn report_outcome(
        &self,
        bot_id: &str,
        conversation_id: &str,
        generation: u64,
        outcome: &ReferenceOutcome<'_>,
        now_ms: u64,
    ) -> Result<OutcomeApplied, StoreError> {
        let mut bots = self.bots.write();
        let Some(entry) = bots
            .get_mut(bot_id)
            .and_then(|b| b.by_id.get_mut(conversation_id))
        else {
            return Ok(OutcomeApplied::Unknown);
        };
        let already = match outcome {
            ReferenceOutcome::Unreachable { .. } => !entry.conversation.active,
            ReferenceOutcome::Moved { service_url } => {
                entry.view().reference.service_url == *service_url
            }
        };
        if already {
            return Ok(OutcomeApplied::Unchanged);
        }
        if entry.conversation.generation != generation {
            return Ok(OutcomeApplied::Stale);
        }
        match outcome {
            ReferenceOutcome::Unreachable { reason } => {
                let c = &mut entry.conversation;
                c.active = false;
                c.inactive_reason = Some((*reason).to_owned());
                c.inactive_since_ms = Some(now_ms);
            }
            ReferenceOutcome::Moved { service_url } => {
                entry.moved_to = Some((*service_url).to_owned());
            }
        }
        entry.conversation.generation += 1;
        Ok(OutcomeApplied::Applied {
            generation: entry.conversation.generation,
        })
    }

    async fn release_delivery(&self, bot_id: &str, key: &DeliveryKey) -> Result<(), StoreError> {
        let mut claims = self.claims.lock();
        let key = claims.key(bot_id, key);
        claims.until.remove(&key);
        Ok(())
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
            .map(Entry::view))
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
                .map(|(_, e)| e.view())
                .collect(),
            Some(t) => match bot.by_tenant.get(t) {
                None => Vec::new(),
                Some(ids) => ids
                    .range::<str, _>(range)
                    .take(size + 1)
                    .filter_map(|id| bot.by_id.get(id).map(Entry::view))
                    .collect(),
            },
        };
        Ok(page(items, size))
    }

    async fn count(&self, bot_id: &str, tenant_id: Option<&str>) -> Result<Counts, StoreError> {
        let bots = self.bots.read();
        let Some(bot) = bots.get(bot_id) else {
            return Ok(Counts::default());
        };
        let tally = |e: &Entry, n: &mut Counts| {
            n.total += 1;
            n.active += u64::from(e.conversation.active);
        };
        let mut n = Counts::default();
        match tenant_id {
            None => bot.by_id.values().for_each(|e| tally(e, &mut n)),
            Some(t) => bot
                .by_tenant
                .get(t)
                .into_iter()
                .flatten()
                .filter_map(|id| bot.by_id.get(id))
                .for_each(|e| tally(e, &mut n)),
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_stay_bounded() {
        let mut claims = Claims::default();
        let ttl = Duration::from_secs(600);
        let key = |i: usize| claims_key(i);
        for i in 0..MAX_CLAIMS + 10 {
            assert!(claims.claim(key(i), ttl));
        }
        assert!(claims.until.len() <= MAX_CLAIMS);
        assert!(claims.order.len() <= MAX_CLAIMS);
        // the oldest claims made room; the newest still hold
        assert!(claims.claim(key(0), ttl));
        assert!(!claims.claim(key(MAX_CLAIMS + 9), ttl));
    }

    fn claims_key(i: usize) -> ClaimKey {
        i as u64
    }
}
