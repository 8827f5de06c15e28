//! State of the admin API: API keys, the bot registry (bots created through the
//! API, applied on every replica without a restart) and the audit log.
//!
//! Three traits, each implemented by both backends:
//!
//! - [`ApiKeyStore`]: hashed bearer keys with a role and an optional bot scope;
//! - [`BotRegistryStore`]: bot registrations with a version (the API's ETag),
//!   a change feed ([`BotRegistryStore::subscribe`]) and a revision counter that
//!   lets a replica which missed an announcement notice by polling;
//! - [`AuditLog`]: an append-only, cursor-paginated log with time-based retention.
//!
//! [`MemoryAdminStore`] is the embedded default (lost on restart, one process);
//! [`RedisAdminStore`] is shared by every replica (single node or Redis Cluster;
//! its module comment documents the key layout). Both pass one test suite
//! (`tests/admin.rs`). All times are milliseconds since the Unix epoch, given by
//! the caller: the store never reads the clock, so tests control time.

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use thiserror::Error;

mod memory;
mod redis_store;

pub use memory::MemoryAdminStore;
pub use redis_store::RedisAdminStore;

/// Largest page [`AuditLog::list`] returns, whatever the caller asks for.
pub const MAX_AUDIT_PAGE: usize = 1000;

/// What an API key may do. JSON: `"admin"`, `"operator"`, `"sender"`, `"reader"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including managing keys.
    Admin,
    /// Reads everything and manages bots; no keys.
    Operator,
    /// Sends and reads notifications.
    Sender,
    /// Reads only.
    Reader,
}

impl Role {
    /// The JSON name: `"admin"`, `"operator"`, `"sender"` or `"reader"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Sender => "sender",
            Self::Reader => "reader",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored API key. The key itself is never stored: only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public prefix of the key (e.g. `bfk_` + 8 base32 characters): names the
    /// key in logs and in the audit log; unique.
    pub id: String,
    /// Lowercase hex SHA-256 of the full key, compared in constant time by the
    /// caller.
    pub secret_hash: String,
    pub role: Role,
    /// The bots the key may reach; `None` = every bot.
    pub bots: Option<Vec<String>>,
    pub description: Option<String>,
    /// ms since the Unix epoch.
    pub created_at: u64,
    /// Id of the key that created this one (or `"bootstrap"`/`"config"`).
    pub created_by: String,
    /// ms since the Unix epoch; `None` = never expires.
    pub expires_at: Option<u64>,
    /// ms since the Unix epoch when revoked; `None` while usable.
    pub revoked_at: Option<u64>,
}

/// One bot registered through the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BotRecord {
    /// The bot's id in botfleet (its `/api/messages/{bot}` path segment); unique.
    pub id: String,
    /// The Microsoft app id (the token audience); unique across bots.
    pub app_id: String,
    /// The registration as accepted by the API, credential included: stored
    /// as given, never interpreted by the store. Never log it.
    pub spec: serde_json::Value,
    /// 1 at creation, +1 per update: the API's ETag. Assigned by the store.
    pub version: u64,
    /// ms since the Unix epoch; kept by the store across updates.
    pub created_at: u64,
    /// ms since the Unix epoch of the last change.
    pub updated_at: u64,
}

/// One change of the bot registry, as announced to every replica.
///
/// JSON: `{"kind":"upserted","id":"b","version":2}` / `{"kind":"deleted","id":"b"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BotChange {
    /// Created or updated; `version` is the new version.
    Upserted {
        id: String,
        version: u64,
    },
    Deleted {
        id: String,
    },
}

/// One audited admin call: never a secret or message text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Assigned by the store, ignored on input: `"<ms>-<seq>"` (a Redis stream
    /// id, the same shape in memory), increasing in append order; pass it as
    /// `after` to [`AuditLog::list`].
    #[serde(default)]
    pub id: String,
    /// ms since the Unix epoch.
    pub at: u64,
    /// The key that made the call; `None` when no known key was presented.
    pub key_id: Option<String>,
    pub role: Option<Role>,
    /// What was attempted, e.g. `"bots.create"`.
    pub action: String,
    /// What it was attempted on, e.g. a bot id.
    pub target: Option<String>,
    /// `"ok"`, `"denied"` or `"error"`.
    pub outcome: String,
    /// The HTTP status answered.
    pub status: u16,
    pub request_id: String,
    /// The client address, when known.
    pub client: Option<String>,
}

/// Why an admin store operation failed.
#[derive(Debug, Error)]
pub enum AdminStoreError {
    /// The backend could not be reached or answered unexpectedly; retry later.
    #[error("admin store unavailable: {0}")]
    Unavailable(String),
    /// An id or app id is taken; the message says which and by whom.
    #[error("{0}")]
    Conflict(String),
    /// The caller's version (ETag) is stale; `current` is the stored one.
    #[error("the bot changed since it was read: its current version is {current}; read it again and retry")]
    VersionMismatch { current: u64 },
    /// No such bot or key.
    #[error("no such bot or API key")]
    NotFound,
    /// An `after` cursor that is not an audit entry id (`<ms>-<seq>`).
    #[error("invalid cursor: pass back the `next` of the previous page unchanged")]
    InvalidCursor,
    /// A stored value cannot be read: written by an incompatible version or
    /// edited by hand. The message names the item, never its content.
    #[error("stored admin data cannot be read: {0}")]
    Corrupt(String),
}

/// Where API keys live.
#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    /// Stores a new key as given. `Conflict` when `record.id` exists.
    async fn create(&self, record: &ApiKeyRecord) -> Result<(), AdminStoreError>;

    /// The key with this id, revoked or expired ones included.
    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, AdminStoreError>;

    /// Every key, revoked and expired ones included, ordered by id.
    async fn list(&self) -> Result<Vec<ApiKeyRecord>, AdminStoreError>;

    /// Sets `revoked_at = at` once. False when the key is unknown or already
    /// revoked (the first revocation time is kept).
    async fn revoke(&self, id: &str, at: u64) -> Result<bool, AdminStoreError>;
}

/// Where bots registered through the admin API live.
///
/// Every change bumps [`revision`](Self::revision) and is announced to every
/// [`subscribe`](Self::subscribe) stream, atomically with the change itself.
#[async_trait]
pub trait BotRegistryStore: Send + Sync {
    /// Stores a new bot with `version = 1`; `created_at` and `updated_at` are
    /// taken from `record`. `Conflict` when the id or the app id is taken (both
    /// checked and claimed atomically: of two concurrent creates of one app id,
    /// exactly one wins). Returns the stored record.
    async fn create(&self, record: BotRecord) -> Result<BotRecord, AdminStoreError>;

    async fn get(&self, id: &str) -> Result<Option<BotRecord>, AdminStoreError>;

    /// Every bot, ordered by id.
    async fn list(&self) -> Result<Vec<BotRecord>, AdminStoreError>;

    /// Replaces bot `record.id`'s app id and spec if its version is still
    /// `expected_version`; sets `version = expected_version + 1` and
    /// `updated_at = record.updated_at`, keeps the stored `created_at`
    /// (`record.version` and `record.created_at` are ignored). Errors:
    /// `NotFound`, `VersionMismatch` (stale version), `Conflict` (the new app
    /// id belongs to another bot). Returns the stored record.
    async fn update(
        &self,
        record: BotRecord,
        expected_version: u64,
    ) -> Result<BotRecord, AdminStoreError>;

    /// Removes a bot and frees its app id; with `Some(v)`, only if its version
    /// is still `v` (`VersionMismatch` otherwise). `NotFound` when unknown.
    async fn delete(&self, id: &str, expected_version: Option<u64>) -> Result<(), AdminStoreError>;

    /// A counter bumped by every create, update and delete (0 before the
    /// first). A replica compares it with the revision it last loaded to
    /// notice announcements it missed.
    async fn revision(&self) -> Result<u64, AdminStoreError>;

    /// Changes made from now on, by this or any other instance sharing the
    /// backend, in the order they were made. Best effort: a change can be
    /// missed (a Redis reconnect, a slow consumer), so consumers also poll
    /// [`revision`](Self::revision). `Unavailable` when the backend cannot be
    /// reached now; once returned, the stream reconnects by itself and ends
    /// only when dropped.
    async fn subscribe(&self) -> Result<BoxStream<'static, BotChange>, AdminStoreError>;
}

/// Where the audit log lives: append-only, oldest first.
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends `entry` (its `id` is ignored) and returns the id assigned,
    /// greater than every earlier one. The id is `"<at>-<seq>"` unless a later
    /// id was already assigned (another replica's clock ahead of this one):
    /// then it gets a later time (the latest one in memory, Redis' choice in
    /// Redis), so ids never go backwards and retention may keep it longer.
    async fn append(&self, entry: &AuditEntry) -> Result<String, AdminStoreError>;

    /// Up to `limit` (clamped to `1..=MAX_AUDIT_PAGE`) entries with an id
    /// greater than `after`, oldest first, and the cursor of the next page
    /// (`None` on the last page). `InvalidCursor` when `after` is not an id.
    async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, Option<String>), AdminStoreError>;

    /// Removes every entry whose id time is before `older_than` (ms since the
    /// Unix epoch); returns how many were removed.
    async fn trim(&self, older_than: u64) -> Result<u64, AdminStoreError>;
}

/// Audit ids are `"<ms>-<seq>"`, compared numerically.
pub(crate) fn parse_audit_id(id: &str) -> Result<(u64, u64), AdminStoreError> {
    let (ms, seq) = id.split_once('-').ok_or(AdminStoreError::InvalidCursor)?;
    let n = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AdminStoreError::InvalidCursor);
        }
        s.parse::<u64>().map_err(|_| AdminStoreError::InvalidCursor)
    };
    Ok((n(ms)?, n(seq)?))
}

pub(crate) fn audit_page_size(limit: usize) -> usize {
    limit.clamp(1, MAX_AUDIT_PAGE)
}

/// The `Conflict` errors, one wording for both backends.
pub(crate) fn id_taken(id: &str) -> AdminStoreError {
    AdminStoreError::Conflict(format!("a bot with id `{id}` already exists"))
}

pub(crate) fn app_id_taken(app_id: &str, owner: &str) -> AdminStoreError {
    AdminStoreError::Conflict(format!(
        "app id `{app_id}` is already registered by bot `{owner}`"
    ))
}

pub(crate) fn key_taken(id: &str) -> AdminStoreError {
    AdminStoreError::Conflict(format!("an API key with id `{id}` already exists"))
}

/// A `Corrupt` error naming what could not be read and where serde stopped,
/// without serde's message: it can quote the stored value, which may hold a
/// credential.
pub(crate) fn corrupt(what: &str, e: &serde_json::Error) -> AdminStoreError {
    AdminStoreError::Corrupt(format!(
        "{what}: {:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    ))
}
