//! The Redis tier of the outbound token cache: replicas share one token per key,
//! and one replica at a time refreshes it under a lock.
//!
//! `store` does not depend on `auth`; this is a plain strings-and-times API that
//! the runtime adapts to `botfleet_auth::outbound::SharedTokenTier` in a few
//! lines. The cache key string comes from the auth side and names no secret.
//!
//! Key layout (`{prefix}` defaults to [`KEY_SCHEMA`]):
//! - `{prefix}:tok:{<key>}`: JSON `{"t": token, "e": expires_at_ms, "r": refresh_at_ms}`,
//!   expiring with the token;
//! - `{prefix}:tok:{<key>}:lock`: the refresh lock (`SET NX PX`), value = the
//!   holder's random lock id; released by a compare-and-delete script.
//!
//! The token is stored as Redis holds every other value: Redis access must be
//! restricted (ACL, TLS, private network) as for any credential store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::redis_pool::{RedisPool, RedisPoolError, KEY_SCHEMA};

#[derive(Debug, Error)]
pub enum TokenTierError {
    #[error(
        "shared token tier (Redis) failed: {0}; replicas fall back to their own token requests"
    )]
    Redis(String),
    #[error("shared token tier holds an unreadable entry for `{key}`: {detail}; it will be overwritten at the next refresh")]
    Corrupt { key: String, detail: String },
}

impl From<RedisPoolError> for TokenTierError {
    fn from(e: RedisPoolError) -> Self {
        Self::Redis(e.to_string())
    }
}

impl From<redis::RedisError> for TokenTierError {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(e.to_string())
    }
}

/// A token as stored. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub token: String,
    pub expires_at: SystemTime,
    pub refresh_at: SystemTime,
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("refresh_at", &self.refresh_at)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    t: String,
    e: u64,
    r: u64,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

const UNLOCK_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Shared token storage and refresh lock in Redis (single node or cluster).
pub struct RedisTokenTier {
    pool: RedisPool,
    prefix: String,
    unlock: redis::Script,
}

impl std::fmt::Debug for RedisTokenTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTokenTier")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisTokenTier {
    pub fn new(pool: RedisPool) -> Self {
        Self::with_prefix(pool, KEY_SCHEMA)
    }

    /// `prefix` must not contain `{` (it would take over the hash tag).
    pub fn with_prefix(pool: RedisPool, prefix: impl Into<String>) -> Self {
        Self {
            pool,
            prefix: prefix.into().replace(['{', '}'], "_"),
            unlock: redis::Script::new(UNLOCK_LUA),
        }
    }

    /// The Redis key holding the token of `key`.
    pub fn token_key(&self, key: &str) -> String {
        format!("{}:tok:{{{}}}", self.prefix, key.replace(['{', '}'], "_"))
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}:lock", self.token_key(key))
    }

    /// The stored token of `key`, if any and not yet expired.
    pub async fn get(&self, key: &str) -> Result<Option<StoredToken>, TokenTierError> {
        let mut conn = self.pool.get().await?;
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.token_key(key))
            .query_async(&mut conn)
            .await?;
        let Some(raw) = raw else { return Ok(None) };
        // serde's message names the field, not the token.
        let w: Wire = serde_json::from_str(&raw).map_err(|e| TokenTierError::Corrupt {
            key: key.to_owned(),
            detail: e.to_string(),
        })?;
        let t = StoredToken {
            token: w.t,
            expires_at: UNIX_EPOCH + Duration::from_millis(w.e),
            refresh_at: UNIX_EPOCH + Duration::from_millis(w.r),
        };
        Ok((t.expires_at > SystemTime::now()).then_some(t))
    }

    /// Stores a token until it expires. An already-expired token is not stored.
    pub async fn put(
        &self,
        key: &str,
        token: &str,
        expires_at: SystemTime,
        refresh_at: SystemTime,
    ) -> Result<(), TokenTierError> {
        let Ok(ttl) = expires_at.duration_since(SystemTime::now()) else {
            return Ok(());
        };
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let value = serde_json::to_string(&Wire {
            t: token.to_owned(),
            e: ms(expires_at),
            r: ms(refresh_at),
        })
        .map_err(|e| TokenTierError::Redis(e.to_string()))?;
        let mut conn = self.pool.get().await?;
        let _: () = redis::cmd("SET")
            .arg(self.token_key(key))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// `SET NX PX`: `Some(lock id)` when this caller now holds the refresh lock.
    pub async fn try_lock(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<String>, TokenTierError> {
        let id = format!("{:032x}", rand::random::<u128>());
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.pool.get().await?;
        let ok: Option<String> = redis::cmd("SET")
            .arg(self.lock_key(key))
            .arg(&id)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(ok.map(|_| id))
    }

    /// Releases the lock if `lock_id` still holds it; true when it did.
    pub async fn unlock(&self, key: &str, lock_id: &str) -> Result<bool, TokenTierError> {
        let mut conn = self.pool.get().await?;
        let n: i64 = self
            .unlock
            .key(self.lock_key(key))
            .arg(lock_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_pool::testing;

    async fn exercise(pool: RedisPool) {
        let tier = RedisTokenTier::with_prefix(pool, testing::unique_prefix("tok"));
        let key = "public|botframework.com|app|https://api.botframework.com/.default";
        assert!(tier.get(key).await.unwrap().is_none());
        let now = SystemTime::now();
        tier.put(
            key,
            "tok-1",
            now + Duration::from_secs(60),
            now + Duration::from_secs(30),
        )
        .await
        .unwrap();
        let t = tier.get(key).await.unwrap().unwrap();
        assert_eq!(t.token, "tok-1");
        assert!(!format!("{t:?}").contains("tok-1"));
        assert_eq!(ms(t.refresh_at), ms(now + Duration::from_secs(30)));

        let lock = tier
            .try_lock(key, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert!(tier
            .try_lock(key, Duration::from_secs(5))
            .await
            .unwrap()
            .is_none());
        assert!(!tier.unlock(key, "someone-else").await.unwrap());
        assert!(tier.unlock(key, &lock).await.unwrap());
        assert!(tier
            .try_lock(key, Duration::from_millis(100))
            .await
            .unwrap()
            .is_some());
        // An expired lock can be taken by another replica.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(tier
            .try_lock(key, Duration::from_secs(5))
            .await
            .unwrap()
            .is_some());

        tier.put(
            key,
            "tok-2",
            SystemTime::now() + Duration::from_millis(100),
            SystemTime::now(),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            tier.get(key).await.unwrap().is_none(),
            "expires with the token"
        );
    }

    #[tokio::test]
    async fn single_node() {
        exercise(testing::single()).await;
    }

    #[tokio::test]
    async fn cluster() {
        exercise(testing::cluster()).await;
    }
}
