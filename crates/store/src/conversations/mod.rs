//! Conversation references taken from validated inbound activities: what a
//! proactive send needs (serviceUrl, conversation, tenant, bot, user, channelId,
//! locale), plus first/last seen and whether the conversation is still reachable.
//!
//! Two backends pass one test suite (`tests/conversations.rs`):
//! [`MemoryConversationStore`] (the embedded default) and
//! [`RedisConversationStore`] (single node or Redis Cluster; its module comment
//! documents the key layout).
//!
//! Listing is ordered by conversation id (byte order) in both backends, and a
//! cursor is "after this id", so pages stay stable while conversations are added:
//! a page never repeats or skips an item that existed when listing started.

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use botfleet_protocol::ConversationReference;
use serde::{Deserialize, Serialize};
use thiserror::Error;

mod memory;
mod redis_store;

pub use memory::MemoryConversationStore;
pub use redis_store::RedisConversationStore;

/// Largest page `list` returns, whatever the caller asks for.
pub const MAX_PAGE: usize = 1000;

/// A stored conversation reference of one bot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredConversation {
    pub bot_id: String,
    pub tenant_id: Option<String>,
    /// The reference of the last inbound activity, with `service_url` replaced by
    /// the host a send outcome moved the conversation to (403 `InvalidBotApiHost`
    /// -> GCC), if any: this is where a proactive send goes.
    pub reference: ConversationReference,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// False once the bot was uninstalled or removed, or a send got 403/404.
    pub active: bool,
    pub inactive_reason: Option<String>,
    /// When it was deactivated; `None` while active.
    #[serde(default)]
    pub inactive_since_ms: Option<u64>,
    /// Version of this reference: 1 when created, +1 on every change of where or
    /// whether it can be reached (a rewrite, a (re)activation, a deactivation, a
    /// move), unchanged by a `last_seen` touch. A send reports its outcome
    /// against the version it read ([`ConversationStore::report_outcome`]), so an
    /// outcome that raced with a newer inbound activity is not applied.
    #[serde(default)]
    pub generation: u64,
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpsertOutcome {
    Created,
    Updated,
    /// It existed but was inactive; it is active again.
    Reactivated,
}

/// The identity of one delivery of an inbound event: the first 128 bits of
/// SHA-256 over its parts (each length-prefixed, so `("ab", "c")` and
/// `("a", "bc")` differ). Fixed-size whatever the ids, so a claim costs the same
/// small key in memory and in Redis. Which parts identify a delivery is the
/// runtime's rule (`docs/turns.md`); the store only claims keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryKey([u8; 16]);

impl DeliveryKey {
    pub fn from_parts(parts: &[&str]) -> Self {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in parts {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let digest = h.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        Self(key)
    }

    pub fn as_u128(&self) -> u128 {
        u128::from_be_bytes(self.0)
    }
}

/// 32 lowercase hex digits.
impl std::fmt::Display for DeliveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for DeliveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeliveryKey({self})")
    }
}

/// What one validated inbound activity says about its conversation.
#[derive(Debug, Clone, Copy)]
pub enum InboundChange<'a> {
    /// The conversation is reachable this way: store the reference when it is
    /// new, differs from the stored one in how the conversation is reached
    /// (serviceUrl, conversation, channel, bot, user, locale), is inactive (it
    /// is reactivated and its reason cleared), or was last written
    /// `touch_after` ago or longer (so `last_seen_ms` stays meaningful).
    Seen {
        reference: &'a ConversationReference,
        touch_after: std::time::Duration,
    },
    /// The bot was uninstalled or removed from the conversation: deactivate it
    /// with `reason` (an unknown conversation stays unknown).
    Ended { reason: &'a str },
}

/// One validated inbound activity, recorded in one atomic store operation (one
/// Redis round trip): the claim of its delivery, then its reference change.
#[derive(Debug, Clone, Copy)]
pub struct InboundRecord<'a> {
    pub conversation_id: &'a str,
    /// Claim this delivery for a duration, so that Teams' resend of it (which
    /// may reach another replica) is recognised; `None` claims nothing.
    pub claim: Option<(DeliveryKey, std::time::Duration)>,
    pub change: InboundChange<'a>,
    pub now_ms: u64,
}

/// What recording an inbound activity did to the stored reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceWrite {
    Created,
    /// Rewritten: it is reached differently now.
    Updated,
    /// It was inactive; it is active again, its reason cleared.
    Reactivated,
    /// Same reference, `last_seen_ms` moved after the touch interval.
    Touched,
    /// Same reference, recently written: nothing written.
    Unchanged,
    /// `Ended` on an active reference.
    Deactivated,
    /// `Ended` on a reference that already was inactive (its first reason stays).
    AlreadyInactive,
    /// `Ended` on a conversation never stored.
    Unknown,
}

/// The result of [`ConversationStore::record_inbound`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The delivery was claimed before (Teams resent it): nothing was written.
    Duplicate,
    Recorded {
        write: ReferenceWrite,
        /// The reference's [`StoredConversation::generation`] after this
        /// activity (0 when none is stored): what a reply reports its outcome against.
        generation: u64,
        /// Set when a send outcome moved the conversation to another host and
        /// this activity still names the old one: replies go here.
        service_url_moved_to: Option<String>,
    },
}

/// What a Bot Connector answer to a send says about the conversation's reference
/// (Teams' status codes:
/// <https://learn.microsoft.com/en-us/microsoftteams/platform/bots/how-to/conversations/conversation-messages#status-codes-from-bot-conversational-apis>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceOutcome<'a> {
    /// The bot cannot reach the conversation (403 `BotNotInConversationRoster`,
    /// `ConversationBlockedByUser`, `BotDisabledByAdmin`, `MessageWritesBlocked`,
    /// 404 `ConversationNotFound`): deactivate it with this reason.
    Unreachable { reason: &'a str },
    /// Teams answered 403 `InvalidBotApiHost` and the send was redone at this
    /// host (the GCC one): later sends go there.
    Moved { service_url: &'a str },
}

/// The result of [`ConversationStore::report_outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeApplied {
    /// Applied; the reference is at this generation now.
    Applied { generation: u64 },
    /// The reference already says so (inactive, or at that host): nothing written.
    Unchanged,
    /// The reference changed since the send read it (a newer inbound activity,
    /// an uninstall, another outcome): not applied; the next send learns anew.
    Stale,
    /// No such conversation is stored.
    Unknown,
}

/// One page of a listing; `next_cursor` is `None` on the last page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub items: Vec<StoredConversation>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: u64,
    pub active: u64,
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("conversation store unavailable: {0}")]
    Unavailable(String),
    #[error("invalid cursor: pass back the `next_cursor` of the previous page unchanged")]
    InvalidCursor,
    #[error("conversation reference not stored: {0}")]
    InvalidReference(&'static str),
    #[error("stored conversation `{conversation_id}` of bot `{bot_id}` cannot be read ({reason}); it was written by an incompatible version or edited by hand")]
    Corrupt {
        bot_id: String,
        conversation_id: String,
        reason: String,
    },
    #[error("conversation `{0}` changed tenant concurrently too often; retry the upsert")]
    Contended(String),
}

/// Where conversation references live.
///
/// # One writer
/// A reference changes only through two operations, each one atomic in the
/// store (one Lua script on Redis), so no copy held elsewhere can disagree:
/// - [`record_inbound`](Self::record_inbound): a *validated inbound activity*,
///   the only thing that creates, rewrites or (re)activates a reference;
/// - [`report_outcome`](Self::report_outcome): what a send learned (gone ->
///   deactivate, moved -> new host), applied only to the generation the send
///   read and never reactivating.
///
/// [`upsert`](Self::upsert) and [`deactivate`](Self::deactivate) are
/// `record_inbound` without a claim.
#[async_trait]
pub trait ConversationStore: Send + Sync {
    /// Records one validated inbound activity: claims its delivery (when asked)
    /// and, unless it is a duplicate, applies its [`InboundChange`].
    async fn record_inbound(
        &self,
        bot_id: &str,
        record: &InboundRecord<'_>,
    ) -> Result<Recorded, StoreError>;

    /// Applies what a send to `conversation_id` learned, if the reference is
    /// still at `generation` (the one the send read). Never reactivates.
    async fn report_outcome(
        &self,
        bot_id: &str,
        conversation_id: &str,
        generation: u64,
        outcome: &ReferenceOutcome<'_>,
        now_ms: u64,
    ) -> Result<OutcomeApplied, StoreError>;

    /// Gives a claim back after the activity could not be taken in or its bot
    /// logic never ran, so Teams' resend gets another chance.
    async fn release_delivery(&self, bot_id: &str, key: &DeliveryKey) -> Result<(), StoreError>;

    async fn get(
        &self,
        bot_id: &str,
        conversation_id: &str,
    ) -> Result<Option<StoredConversation>, StoreError>;

    /// Conversations of a bot (of one tenant when given), active or not, by
    /// conversation id; `limit` is clamped to `1..=MAX_PAGE`.
    async fn list(
        &self,
        bot_id: &str,
        tenant_id: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError>;

    async fn count(&self, bot_id: &str, tenant_id: Option<&str>) -> Result<Counts, StoreError>;

    /// An inbound activity's reference, written whatever the stored one is:
    /// marks it active, keeps `first_seen_ms`, sets `last_seen_ms = now_ms`.
    /// The tenant is the reference's `conversation.tenantId`.
    async fn upsert(
        &self,
        bot_id: &str,
        reference: &ConversationReference,
        now_ms: u64,
    ) -> Result<UpsertOutcome, StoreError> {
        let record = InboundRecord {
            conversation_id: &reference.conversation.id,
            claim: None,
            change: InboundChange::Seen {
                reference,
                touch_after: std::time::Duration::ZERO,
            },
            now_ms,
        };
        match self.record_inbound(bot_id, &record).await? {
            Recorded::Recorded {
                write: ReferenceWrite::Created,
                ..
            } => Ok(UpsertOutcome::Created),
            Recorded::Recorded {
                write: ReferenceWrite::Reactivated,
                ..
            } => Ok(UpsertOutcome::Reactivated),
            _ => Ok(UpsertOutcome::Updated),
        }
    }

    /// An inbound uninstall / removal: marks a conversation unreachable. False
    /// when it is unknown; true (and no change) when it already was inactive.
    async fn deactivate(
        &self,
        bot_id: &str,
        conversation_id: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let record = InboundRecord {
            conversation_id,
            claim: None,
            change: InboundChange::Ended { reason },
            now_ms,
        };
        Ok(!matches!(
            self.record_inbound(bot_id, &record).await?,
            Recorded::Recorded {
                write: ReferenceWrite::Unknown,
                ..
            }
        ))
    }
}

/// Hex SHA-256 of how a reference reaches its conversation (serviceUrl,
/// conversation, channel, bot, user id, locale). The activity id differs on
/// every activity and says nothing about how to reach the conversation.
pub(crate) fn reach_fingerprint(reference: &ConversationReference) -> String {
    use sha2::Digest;
    let reach = (
        &reference.service_url,
        &reference.conversation,
        &reference.channel_id,
        &reference.bot,
        reference.user.as_ref().map(|u| &u.id),
        &reference.locale,
    );
    // These types always serialise; the Debug form is a stand-in that still
    // tells different references apart.
    let bytes = serde_json::to_vec(&reach).unwrap_or_else(|_| format!("{reach:?}").into_bytes());
    hex::encode(sha2::Sha256::digest(&bytes))
}

/// The record's reference, checked against its conversation id.
pub(crate) fn check_record<'a>(
    record: &InboundRecord<'a>,
) -> Result<Option<&'a ConversationReference>, StoreError> {
    if record.conversation_id.is_empty() {
        return Err(StoreError::InvalidReference("empty conversation id"));
    }
    match record.change {
        InboundChange::Seen { reference, .. } => {
            check_reference(reference)?;
            if reference.conversation.id != record.conversation_id {
                return Err(StoreError::InvalidReference(
                    "the reference is of another conversation than the record",
                ));
            }
            Ok(Some(reference))
        }
        InboundChange::Ended { .. } => Ok(None),
    }
}

/// The tenant a reference is filed under (empty ids count as none).
pub(crate) fn tenant_of(reference: &ConversationReference) -> Option<&str> {
    reference.tenant_id().filter(|t| !t.is_empty())
}

fn check_reference(reference: &ConversationReference) -> Result<(), StoreError> {
    if reference.conversation.id.is_empty() {
        return Err(StoreError::InvalidReference("empty conversation id"));
    }
    Ok(())
}

pub(crate) fn page_size(limit: usize) -> usize {
    limit.clamp(1, MAX_PAGE)
}

const CURSOR_TAG: &str = "c1:";

/// Cursors are opaque to callers: base64url of a versioned "after this id".
pub(crate) fn encode_cursor(after_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_TAG}{after_id}"))
}

pub(crate) fn decode_cursor(cursor: Option<&str>) -> Result<Option<String>, StoreError> {
    let Some(cursor) = cursor else {
        return Ok(None);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::InvalidCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| StoreError::InvalidCursor)?;
    text.strip_prefix(CURSOR_TAG)
        .filter(|id| !id.is_empty())
        .map(|id| Some(id.to_owned()))
        .ok_or(StoreError::InvalidCursor)
}
