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
    pub reference: ConversationReference,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// False once the bot was uninstalled or removed, or a send got 403/404.
    pub active: bool,
    pub inactive_reason: Option<String>,
    /// When it was deactivated; `None` while active.
    #[serde(default)]
    pub inactive_since_ms: Option<u64>,
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
#[async_trait]
pub trait ConversationStore: Send + Sync {
    /// Inserts or replaces the reference of `reference.conversation.id`: marks it
    /// active, keeps `first_seen_ms`, sets `last_seen_ms = now_ms`. The tenant is
    /// the reference's `conversation.tenantId`.
    async fn upsert(
        &self,
        bot_id: &str,
        reference: &ConversationReference,
        now_ms: u64,
    ) -> Result<UpsertOutcome, StoreError>;

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

    /// Marks a conversation unreachable. False when it is unknown; true (and no
    /// change) when it already was inactive.
    async fn deactivate(
        &self,
        bot_id: &str,
        conversation_id: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError>;

    async fn count(&self, bot_id: &str, tenant_id: Option<&str>) -> Result<Counts, StoreError>;

    /// Claims the handling of one inbound activity, so that Teams' resend of it
    /// (which may reach another replica) is not handled twice. True for the first
    /// claim within `ttl`, false for every later one.
    async fn claim_activity(
        &self,
        bot_id: &str,
        conversation_id: &str,
        activity_id: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError>;

    /// Gives a claim back after the activity could not be handled, so Teams'
    /// resend gets another chance.
    async fn release_activity(
        &self,
        bot_id: &str,
        conversation_id: &str,
        activity_id: &str,
    ) -> Result<(), StoreError>;
}

/// The tenant a reference is filed under (empty ids count as none).
pub(crate) fn tenant_of(reference: &ConversationReference) -> Option<&str> {
    reference.tenant_id().filter(|t| !t.is_empty())
}

pub(crate) fn check_reference(reference: &ConversationReference) -> Result<(), StoreError> {
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
