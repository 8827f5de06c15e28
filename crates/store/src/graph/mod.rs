//! Microsoft Graph change notifications: the subscription registry, each
//! subscription's state, the leases that make one replica the writer of a
//! subscription, the durable inbox of received notifications and the
//! processed-notification markers.
//!
//! Two backends pass one test suite (`tests/graph.rs`): [`MemoryGraphStore`]
//! (one process, nothing survives a restart) and [`RedisGraphStore`] (single
//! node or Redis Cluster; its module comment gives the key layout).
//!
//! The store keeps subscription definitions as opaque JSON (the
//! `botfleet-graph` crate owns their shape) and state as a flat map of fields,
//! so the subscription actor (Graph id, expiry, renewal) and the notification
//! processor (last notification, last seen `lastModifiedDateTime`) update
//! their own fields without overwriting each other's.
//!
//! # How botfleet-graph uses it
//! 1. The public endpoint checks each item's `clientState`, then
//!    [`GraphStore::inbox_push`]es the accepted items (all or nothing) before
//!    answering 202 (a failure answers 5xx: Graph retries the batch).
//! 2. Processors [`GraphStore::inbox_take`] items, skip those whose
//!    [`GraphStore::is_done`] marker exists, act, [`GraphStore::mark_done`],
//!    then [`GraphStore::inbox_ack`]. Items a dead processor held come back
//!    through [`GraphStore::inbox_reclaim`].
//! 3. Subscription actors write a subscription's Graph-side state only while
//!    they hold its [`GraphStore::lease`].
//!
//! Times are milliseconds since the Unix epoch passed in by the caller.

use async_trait::async_trait;
use std::collections::BTreeMap;
use thiserror::Error;

pub mod credentials;
mod memory;
mod redis_store;

pub use memory::MemoryGraphStore;
pub use redis_store::RedisGraphStore;

/// Why a store call failed.
#[derive(Debug, Error)]
pub enum GraphStoreError {
    /// The store cannot be reached (Redis down): retry later.
    #[error("the Graph store is unavailable: {0}")]
    Unavailable(String),
    /// Stored data is not what this version wrote.
    #[error("corrupt Graph store entry `{key}`: {reason}")]
    Corrupt { key: String, reason: String },
}

impl From<crate::RedisPoolError> for GraphStoreError {
    fn from(e: crate::RedisPoolError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<redis::RedisError> for GraphStoreError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// One stored subscription definition (JSON written by `botfleet-graph`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    pub id: String,
    pub spec_json: String,
}

/// One inbox entry: its store id (for ack) and the payload pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    /// Opaque store id (a stream entry id in Redis).
    pub id: String,
    pub payload: String,
    /// How many times the entry was handed to a processor (1 the first time).
    pub deliveries: u32,
}

/// The state fields of one subscription.
pub type StateFields = BTreeMap<String, String>;

#[async_trait]
pub trait GraphStore: Send + Sync {
    /// Creates or replaces a subscription definition; bumps the revision.
    async fn put_subscription(&self, id: &str, spec_json: &str) -> Result<(), GraphStoreError>;
    async fn get_subscription(
        &self,
        id: &str,
    ) -> Result<Option<StoredSubscription>, GraphStoreError>;
    /// Every definition, by id.
    async fn list_subscriptions(&self) -> Result<Vec<StoredSubscription>, GraphStoreError>;
    /// Removes a definition and its state; `false` if there was none. Bumps the revision.
    async fn delete_subscription(&self, id: &str) -> Result<bool, GraphStoreError>;
    /// Changes with every put or delete: replicas poll it to follow the registry.
    async fn revision(&self) -> Result<u64, GraphStoreError>;

    /// The state fields of subscription `id` (empty when none were written).
    async fn get_state(&self, id: &str) -> Result<StateFields, GraphStoreError>;
    /// Sets these fields (an empty value removes the field).
    async fn set_state(&self, id: &str, fields: &[(&str, String)]) -> Result<(), GraphStoreError>;
    /// Sets numeric field `field` to `value` only when it is larger than the
    /// stored one (or absent): `true` when it was raised.
    async fn raise_state(&self, id: &str, field: &str, value: u64)
        -> Result<bool, GraphStoreError>;

    /// Takes or renews lease `name` for `owner` until `now_ms + ttl_ms`:
    /// `true` when granted (free, expired, or already `owner`'s).
    async fn lease(
        &self,
        name: &str,
        owner: &str,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<bool, GraphStoreError>;
    /// Gives lease `name` up if `owner` holds it.
    async fn release(&self, name: &str, owner: &str) -> Result<(), GraphStoreError>;

    /// Appends payloads to the inbox, all or none.
    async fn inbox_push(&self, payloads: &[String]) -> Result<(), GraphStoreError>;
    /// Up to `max` entries never handed out before, for `consumer`.
    async fn inbox_take(
        &self,
        consumer: &str,
        max: usize,
        now_ms: u64,
    ) -> Result<Vec<InboxEntry>, GraphStoreError>;
    /// Entries handed out at least `min_idle_ms` ago and not acked, re-handed
    /// to `consumer` (their `deliveries` grows).
    async fn inbox_reclaim(
        &self,
        consumer: &str,
        min_idle_ms: u64,
        max: usize,
        now_ms: u64,
    ) -> Result<Vec<InboxEntry>, GraphStoreError>;
    /// Removes a processed entry.
    async fn inbox_ack(&self, id: &str) -> Result<(), GraphStoreError>;
    /// Entries not acked yet (handed out or not).
    async fn inbox_len(&self) -> Result<u64, GraphStoreError>;

    /// Whether notification `key` was processed (marker not expired).
    async fn is_done(&self, key: &str, now_ms: u64) -> Result<bool, GraphStoreError>;
    /// Records notification `key` as processed for `ttl_ms`.
    async fn mark_done(&self, key: &str, ttl_ms: u64, now_ms: u64) -> Result<(), GraphStoreError>;
}
