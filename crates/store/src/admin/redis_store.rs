//! Admin state in Redis (single node or Redis Cluster). Being implemented.

use async_trait::async_trait;
use futures::stream::BoxStream;

use super::{
    AdminStoreError, ApiKeyRecord, ApiKeyStore, AuditEntry, AuditLog, BotChange, BotRecord,
    BotRegistryStore,
};
use crate::redis_pool::RedisPool;

/// API keys, bots and the audit log in Redis.
pub struct RedisAdminStore {
    #[allow(dead_code)]
    pool: RedisPool,
    #[allow(dead_code)]
    prefix: String,
    #[allow(dead_code)]
    subscribe_urls: Vec<String>,
}

impl std::fmt::Debug for RedisAdminStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAdminStore").finish_non_exhaustive()
    }
}

impl RedisAdminStore {
    /// `key_prefix` goes before every key and channel (may be empty);
    /// `subscribe_urls` are the Redis URLs the pool was made from (the single
    /// node, or the cluster seeds): change subscriptions need a connection of
    /// their own.
    pub fn new(pool: RedisPool, key_prefix: &str, subscribe_urls: &[String]) -> Self {
        Self {
            pool,
            prefix: key_prefix.to_owned(),
            subscribe_urls: subscribe_urls.to_vec(),
        }
    }
}

fn todo_err() -> AdminStoreError {
    AdminStoreError::Unavailable("the Redis admin store is not implemented yet".into())
}

#[async_trait]
impl ApiKeyStore for RedisAdminStore {
    async fn create(&self, _record: &ApiKeyRecord) -> Result<(), AdminStoreError> {
        Err(todo_err())
    }
    async fn get(&self, _id: &str) -> Result<Option<ApiKeyRecord>, AdminStoreError> {
        Err(todo_err())
    }
    async fn list(&self) -> Result<Vec<ApiKeyRecord>, AdminStoreError> {
        Err(todo_err())
    }
    async fn revoke(&self, _id: &str, _at: u64) -> Result<bool, AdminStoreError> {
        Err(todo_err())
    }
}

#[async_trait]
impl BotRegistryStore for RedisAdminStore {
    async fn create(&self, _record: BotRecord) -> Result<BotRecord, AdminStoreError> {
        Err(todo_err())
    }
    async fn get(&self, _id: &str) -> Result<Option<BotRecord>, AdminStoreError> {
        Err(todo_err())
    }
    async fn list(&self) -> Result<Vec<BotRecord>, AdminStoreError> {
        Err(todo_err())
    }
    async fn update(&self, _r: BotRecord, _v: u64) -> Result<BotRecord, AdminStoreError> {
        Err(todo_err())
    }
    async fn delete(&self, _id: &str, _v: Option<u64>) -> Result<(), AdminStoreError> {
        Err(todo_err())
    }
    async fn revision(&self) -> Result<u64, AdminStoreError> {
        Err(todo_err())
    }
    async fn subscribe(&self) -> Result<BoxStream<'static, BotChange>, AdminStoreError> {
        Err(todo_err())
    }
}

#[async_trait]
impl AuditLog for RedisAdminStore {
    async fn append(&self, _entry: &AuditEntry) -> Result<String, AdminStoreError> {
        Err(todo_err())
    }
    async fn list(
        &self,
        _after: Option<&str>,
        _limit: usize,
    ) -> Result<(Vec<AuditEntry>, Option<String>), AdminStoreError> {
        Err(todo_err())
    }
    async fn trim(&self, _older_than: u64) -> Result<u64, AdminStoreError> {
        Err(todo_err())
    }
}
