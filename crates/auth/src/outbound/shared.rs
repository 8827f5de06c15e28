//! The optional tier that lets N replicas share one token per key.
//!
//! `auth` does not depend on `store` (nor the other way round): the Redis
//! implementation lives in `botfleet_store::token_tier` with a plain
//! strings-and-times interface, and the runtime adapts it to this trait in a
//! few lines. Any other backend only has to provide these four operations.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use thiserror::Error;

use crate::Secret;

/// A token as the replicas share it. `Debug` never shows the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedToken {
    pub token: Secret,
    pub expires_at: SystemTime,
    /// When replicas should start replacing it (the writer's refresh schedule).
    pub refresh_at: SystemTime,
}

/// The shared tier failed. The cache then asks the token endpoint itself, so a
/// tier outage costs extra token requests, never a failed send.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("shared token tier: {0}")]
pub struct SharedTierError(pub String);

#[async_trait]
pub trait SharedTokenTier: Send + Sync + 'static {
    /// The token stored under `key`, if any (an expired one may be returned;
    /// the cache checks `expires_at`).
    async fn get(&self, key: &str) -> Result<Option<SharedToken>, SharedTierError>;
    /// Stores `token` under `key` until it expires.
    async fn put(&self, key: &str, token: &SharedToken) -> Result<(), SharedTierError>;
    /// Tries to become the one replica refreshing `key` for at most `ttl`.
    /// `Some(lock id)` when won; `None` when another replica holds the lock.
    async fn try_lock(&self, key: &str, ttl: Duration) -> Result<Option<String>, SharedTierError>;
    /// Releases the lock if `lock_id` still holds it (it may have expired and
    /// been taken by another replica, which must keep it).
    async fn unlock(&self, key: &str, lock_id: &str) -> Result<(), SharedTierError>;
}
