//! Delegated-access credentials of Microsoft Graph (a service integration
//! user signed in through the OAuth 2.0 authorization-code flow): one record
//! per credential name, and the short-lived sign-in states of flows in
//! progress.
//!
//! The store keeps opaque fields (the `botfleet-graph` crate writes them, the
//! refresh and access tokens already sealed with AES-256-GCM: nothing here is
//! a usable token) and a **version** per record. A token rotation is a
//! compare-and-set on that version ([`CredentialStore::replace_credential`]):
//! a replica that refreshed from version `n` writes only if the record is
//! still at `n`, so an older token can never overwrite a newer one.
//! Status fields (last refresh, last error) are written without the version
//! check ([`CredentialStore::set_credential_fields`]).
//!
//! Sign-in states are single use: [`CredentialStore::take_signin`] returns a
//! state's payload once and deletes it (an atomic GET+DEL in Redis); they
//! expire after their TTL.
//!
//! # Redis keys (schema `bf1`, `<P>` the configured prefix)
//! | key | type | content |
//! | --- | --- | --- |
//! | `<P>bf1:graph:cred:{<name>}` | HASH | `v` (version) and the credential's fields |
//! | `<P>bf1:graph:signin:{<hex sha256 of the state>}` | STRING | sign-in payload; `PX` = its lifetime |
//!
//! The state value itself is never a key: only its SHA-256, so a key listing
//! does not reveal states that could still be redeemed.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::Script;
use sha2::{Digest, Sha256};

use super::GraphStoreError;
use crate::redis_pool::{RedisPool, KEY_SCHEMA};

/// One credential record: its version (0 when none was ever written) and
/// fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialRecord {
    pub version: u64,
    pub fields: BTreeMap<String, String>,
}

/// Where delegated credentials and sign-in states live.
#[async_trait]
pub trait CredentialStore: Send + Sync {
    /// The record of `name` (version 0 and no fields when there is none).
    async fn get_credential(&self, name: &str) -> Result<CredentialRecord, GraphStoreError>;
    /// Sets `fields` (an empty value removes the field) and bumps the version,
    /// only if the stored version is `expected_version`: the new version, or
    /// `None` when another writer got there first (nothing written).
    async fn replace_credential(
        &self,
        name: &str,
        expected_version: u64,
        fields: &[(&str, String)],
    ) -> Result<Option<u64>, GraphStoreError>;
    /// Sets `fields` (an empty value removes the field) without touching the
    /// version: status, last refresh, last error.
    async fn set_credential_fields(
        &self,
        name: &str,
        fields: &[(&str, String)],
    ) -> Result<(), GraphStoreError>;
    /// Records a sign-in state for `ttl_ms` (ms).
    async fn put_signin(
        &self,
        state: &str,
        payload: &str,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<(), GraphStoreError>;
    /// The payload of `state` if it exists and has not expired, deleting it:
    /// a second call answers `None`.
    async fn take_signin(
        &self,
        state: &str,
        now_ms: u64,
    ) -> Result<Option<String>, GraphStoreError>;
}

fn apply(map: &mut BTreeMap<String, String>, fields: &[(&str, String)]) {
    for (k, v) in fields {
        if v.is_empty() {
            map.remove(*k);
        } else {
            map.insert((*k).to_owned(), v.clone());
        }
    }
}

/// [`CredentialStore`] in process memory (one replica, lost at restart).
#[derive(Default)]
pub struct MemoryCredentialStore {
    inner: Mutex<MemInner>,
}

#[derive(Default)]
struct MemInner {
    records: HashMap<String, CredentialRecord>,
    signins: HashMap<String, (String, u64)>,
}

impl MemoryCredentialStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl CredentialStore for MemoryCredentialStore {
    async fn get_credential(&self, name: &str) -> Result<CredentialRecord, GraphStoreError> {
        Ok(self
            .inner
            .lock()
            .records
            .get(name)
            .cloned()
            .unwrap_or_default())
    }

    async fn replace_credential(
        &self,
        name: &str,
        expected_version: u64,
        fields: &[(&str, String)],
    ) -> Result<Option<u64>, GraphStoreError> {
        let mut g = self.inner.lock();
        let rec = g.records.entry(name.to_owned()).or_default();
        if rec.version != expected_version {
            return Ok(None);
        }
        rec.version += 1;
        apply(&mut rec.fields, fields);
        Ok(Some(rec.version))
    }

    async fn set_credential_fields(
        &self,
        name: &str,
        fields: &[(&str, String)],
    ) -> Result<(), GraphStoreError> {
        let mut g = self.inner.lock();
        apply(
            &mut g.records.entry(name.to_owned()).or_default().fields,
            fields,
        );
        Ok(())
    }

    async fn put_signin(
        &self,
        state: &str,
        payload: &str,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<(), GraphStoreError> {
        let mut g = self.inner.lock();
        g.signins.retain(|_, (_, until)| *until > now_ms);
        g.signins.insert(
            state.to_owned(),
            (payload.to_owned(), now_ms.saturating_add(ttl_ms)),
        );
        Ok(())
    }

    async fn take_signin(
        &self,
        state: &str,
        now_ms: u64,
    ) -> Result<Option<String>, GraphStoreError> {
        let mut g = self.inner.lock();
        Ok(g.signins
            .remove(state)
            .filter(|(_, until)| *until > now_ms)
            .map(|(p, _)| p))
    }
}

const REPLACE: &str = r#"
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
v = v + 1
redis.call('HSET', KEYS[1], 'v', tostring(v))
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return v
"#;

const SET_FIELDS: &str = r#"
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"#;

const TAKE: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then redis.call('DEL', KEYS[1]) end
return v
"#;

/// [`CredentialStore`] in Redis (single node or Cluster: every key is its
/// own hash slot); the module comment gives the keys.
pub struct RedisCredentialStore {
    pool: RedisPool,
    prefix: String,
    replace: Script,
    set_fields: Script,
    take: Script,
}

impl RedisCredentialStore {
    /// `key_prefix` as configured (`store.key_prefix`).
    pub fn new(pool: RedisPool, key_prefix: &str) -> Self {
        let prefix = if key_prefix.is_empty() || key_prefix.ends_with(':') {
            key_prefix.to_owned()
        } else {
            format!("{key_prefix}:")
        };
        Self {
            pool,
            prefix: format!("{prefix}{KEY_SCHEMA}:graph:"),
            replace: Script::new(REPLACE),
            set_fields: Script::new(SET_FIELDS),
            take: Script::new(TAKE),
        }
    }

    /// The Redis key of credential `name` (tests read it raw).
    pub fn credential_key(&self, name: &str) -> String {
        format!("{}cred:{{{name}}}", self.prefix)
    }

    fn signin_key(&self, state: &str) -> String {
        format!(
            "{}signin:{{{}}}",
            self.prefix,
            hex::encode(Sha256::digest(state.as_bytes()))
        )
    }
}

#[async_trait]
impl CredentialStore for RedisCredentialStore {
    async fn get_credential(&self, name: &str) -> Result<CredentialRecord, GraphStoreError> {
        let mut c = self.pool.get().await?;
        let mut fields: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.credential_key(name))
            .query_async(&mut c)
            .await?;
        let version = match fields.remove("v") {
            None => 0,
            Some(v) => v.parse().map_err(|_| GraphStoreError::Corrupt {
                key: self.credential_key(name),
                reason: "the version field `v` is not a number".into(),
            })?,
        };
        Ok(CredentialRecord { version, fields })
    }

    async fn replace_credential(
        &self,
        name: &str,
        expected_version: u64,
        fields: &[(&str, String)],
    ) -> Result<Option<u64>, GraphStoreError> {
        let mut c = self.pool.get().await?;
        let mut inv = self.replace.key(self.credential_key(name));
        inv.arg(expected_version);
        for (k, v) in fields {
            inv.arg(*k).arg(v);
        }
        let v: i64 = inv.invoke_async(&mut c).await?;
        Ok(u64::try_from(v).ok())
    }

    async fn set_credential_fields(
        &self,
        name: &str,
        fields: &[(&str, String)],
    ) -> Result<(), GraphStoreError> {
        if fields.is_empty() {
            return Ok(());
        }
        let mut c = self.pool.get().await?;
        let mut inv = self.set_fields.key(self.credential_key(name));
        for (k, v) in fields {
            inv.arg(*k).arg(v);
        }
        let _: i64 = inv.invoke_async(&mut c).await?;
        Ok(())
    }

    async fn put_signin(
        &self,
        state: &str,
        payload: &str,
        ttl_ms: u64,
        _now_ms: u64,
    ) -> Result<(), GraphStoreError> {
        let mut c = self.pool.get().await?;
        let _: () = redis::cmd("SET")
            .arg(self.signin_key(state))
            .arg(payload)
            .arg("PX")
            .arg(ttl_ms.max(1))
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    async fn take_signin(
        &self,
        state: &str,
        _now_ms: u64,
    ) -> Result<Option<String>, GraphStoreError> {
        let mut c = self.pool.get().await?;
        let v: Option<String> = self
            .take
            .key(self.signin_key(state))
            .invoke_async(&mut c)
            .await?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract every backend keeps (memory, a real Redis, a
    /// Redis Cluster).
    async fn contract(s: &dyn CredentialStore) {
        let r = s.get_credential("c1").await.expect("get");
        assert_eq!(r, CredentialRecord::default());
        let v1 = s
            .replace_credential("c1", 0, &[("rt", "sealed-1".into()), ("x", "1".into())])
            .await
            .expect("replace");
        assert_eq!(v1, Some(1));
        // A writer that read version 0 loses: the newer token stays.
        let stale = s
            .replace_credential("c1", 0, &[("rt", "older".into())])
            .await
            .expect("replace");
        assert_eq!(stale, None);
        let r = s.get_credential("c1").await.expect("get");
        assert_eq!(r.version, 1);
        assert_eq!(r.fields.get("rt").map(String::as_str), Some("sealed-1"));
        s.set_credential_fields("c1", &[("status", "ok".into()), ("x", String::new())])
            .await
            .expect("set");
        let r = s.get_credential("c1").await.expect("get");
        assert_eq!(r.version, 1, "status writes keep the version");
        assert_eq!(r.fields.get("status").map(String::as_str), Some("ok"));
        assert!(!r.fields.contains_key("x"));

        s.put_signin("state-a", "{\"p\":1}", 60_000, 1_000)
            .await
            .expect("put");
        assert_eq!(
            s.take_signin("state-a", 2_000)
                .await
                .expect("take")
                .as_deref(),
            Some("{\"p\":1}")
        );
        assert_eq!(s.take_signin("state-a", 2_000).await.expect("take"), None);
        assert_eq!(s.take_signin("never", 2_000).await.expect("take"), None);
    }

    #[tokio::test]
    async fn memory_backend_keeps_the_contract() {
        contract(&MemoryCredentialStore::new()).await;
        let s = MemoryCredentialStore::new();
        s.put_signin("old", "p", 10, 1_000).await.expect("put");
        assert_eq!(s.take_signin("old", 1_011).await.expect("take"), None);
    }

    #[tokio::test]
    async fn redis_and_cluster_backends_keep_the_contract() {
        use crate::redis_pool::testing;
        for pool in [testing::single(), testing::cluster()] {
            let s = RedisCredentialStore::new(pool, &testing::unique_prefix("cred"));
            contract(&s).await;
        }
    }
}
