//! Adapts the Redis token tier of `botfleet-store` to the shared-tier trait of
//! `botfleet-auth`, which do not know each other.

use std::time::Duration;

use async_trait::async_trait;
use botfleet_auth::outbound::{SharedTierError, SharedToken, SharedTokenTier};
use botfleet_auth::Secret;
use botfleet_store::token_tier::RedisTokenTier;

pub struct RedisSharedTokens(pub RedisTokenTier);

fn err(e: impl std::fmt::Display) -> SharedTierError {
    SharedTierError(e.to_string())
}

#[async_trait]
impl SharedTokenTier for RedisSharedTokens {
    async fn get(&self, key: &str) -> Result<Option<SharedToken>, SharedTierError> {
        Ok(self.0.get(key).await.map_err(err)?.map(|t| SharedToken {
            token: Secret::new(t.token),
            expires_at: t.expires_at,
            refresh_at: t.refresh_at,
        }))
    }

    async fn put(&self, key: &str, token: &SharedToken) -> Result<(), SharedTierError> {
        self.0
            .put(
                key,
                token.token.expose(),
                token.expires_at,
                token.refresh_at,
            )
            .await
            .map_err(err)
    }

    async fn try_lock(&self, key: &str, ttl: Duration) -> Result<Option<String>, SharedTierError> {
        self.0.try_lock(key, ttl).await.map_err(err)
    }

    async fn unlock(&self, key: &str, lock_id: &str) -> Result<(), SharedTierError> {
        self.0.unlock(key, lock_id).await.map(|_| ()).map_err(err)
    }
}
