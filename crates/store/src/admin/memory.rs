//! In-process admin store: the embedded default, one process, lost on restart.

use std::collections::{BTreeMap, HashMap, VecDeque};

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt as _};
use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::{
    app_id_taken, audit_page_size, id_taken, key_taken, parse_audit_id, AdminStoreError,
    ApiKeyRecord, ApiKeyStore, AuditEntry, AuditLog, BotChange, BotRecord, BotRegistryStore,
};

/// Changes a subscriber may fall behind by before it skips some (it then
/// relies on polling the revision, as with Redis).
const CHANGE_BUFFER: usize = 1024;

#[derive(Default)]
struct Bots {
    by_id: BTreeMap<String, BotRecord>,
    /// app id -> bot id: the uniqueness index.
    by_app_id: HashMap<String, String>,
    revision: u64,
}

#[derive(Default)]
struct Audit {
    /// Oldest first; ids increase.
    entries: VecDeque<((u64, u64), AuditEntry)>,
    last: Option<(u64, u64)>,
}

/// API keys, bots and the audit log in memory. Bot changes reach
/// [`subscribe`](BotRegistryStore::subscribe) streams through a tokio
/// broadcast channel. The audit log grows until [`AuditLog::trim`] is called.
pub struct MemoryAdminStore {
    keys: Mutex<BTreeMap<String, ApiKeyRecord>>,
    bots: Mutex<Bots>,
    audit: Mutex<Audit>,
    changes: broadcast::Sender<BotChange>,
}

impl Default for MemoryAdminStore {
    fn default() -> Self {
        Self {
            keys: Mutex::default(),
            bots: Mutex::default(),
            audit: Mutex::default(),
            changes: broadcast::channel(CHANGE_BUFFER).0,
        }
    }
}

impl MemoryAdminStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for MemoryAdminStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryAdminStore")
            .field("keys", &self.keys.lock().len())
            .field("bots", &self.bots.lock().by_id.len())
            .field("audit", &self.audit.lock().entries.len())
            .finish()
    }
}

#[async_trait]
impl ApiKeyStore for MemoryAdminStore {
    async fn create(&self, record: &ApiKeyRecord) -> Result<(), AdminStoreError> {
        let mut keys = self.keys.lock();
        if keys.contains_key(&record.id) {
            return Err(key_taken(&record.id));
        }
        keys.insert(record.id.clone(), record.clone());
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, AdminStoreError> {
        Ok(self.keys.lock().get(id).cloned())
    }

    async fn list(&self) -> Result<Vec<ApiKeyRecord>, AdminStoreError> {
        Ok(self.keys.lock().values().cloned().collect())
    }

    async fn revoke(&self, id: &str, at: u64) -> Result<bool, AdminStoreError> {
        match self.keys.lock().get_mut(id) {
            Some(key) if key.revoked_at.is_none() => {
                key.revoked_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl MemoryAdminStore {
    /// Bumps the revision and announces, under the registry lock so that
    /// subscribers see changes in the order they were made.
    fn changed(&self, bots: &mut Bots, change: BotChange) {
        bots.revision += 1;
        // No subscriber is not an error.
        let _ = self.changes.send(change);
    }
}

#[async_trait]
impl BotRegistryStore for MemoryAdminStore {
    async fn create(&self, mut record: BotRecord) -> Result<BotRecord, AdminStoreError> {
        let mut bots = self.bots.lock();
        if bots.by_id.contains_key(&record.id) {
            return Err(id_taken(&record.id));
        }
        if let Some(owner) = bots.by_app_id.get(&record.app_id) {
            return Err(app_id_taken(&record.app_id, owner));
        }
        record.version = 1;
        bots.by_app_id
            .insert(record.app_id.clone(), record.id.clone());
        bots.by_id.insert(record.id.clone(), record.clone());
        self.changed(
            &mut bots,
            BotChange::Upserted {
                id: record.id.clone(),
                version: 1,
            },
        );
        Ok(record)
    }

    async fn get(&self, id: &str) -> Result<Option<BotRecord>, AdminStoreError> {
        Ok(self.bots.lock().by_id.get(id).cloned())
    }

    async fn list(&self) -> Result<Vec<BotRecord>, AdminStoreError> {
        Ok(self.bots.lock().by_id.values().cloned().collect())
    }

    async fn update(
        &self,
        mut record: BotRecord,
        expected_version: u64,
    ) -> Result<BotRecord, AdminStoreError> {
        let mut bots = self.bots.lock();
        let (current, created_at, old_app_id) = match bots.by_id.get(&record.id) {
            None => return Err(AdminStoreError::NotFound),
            Some(old) => (old.version, old.created_at, old.app_id.clone()),
        };
        if current != expected_version {
            return Err(AdminStoreError::VersionMismatch { current });
        }
        if old_app_id != record.app_id {
            if let Some(owner) = bots.by_app_id.get(&record.app_id) {
                return Err(app_id_taken(&record.app_id, owner));
            }
            bots.by_app_id.remove(&old_app_id);
            bots.by_app_id
                .insert(record.app_id.clone(), record.id.clone());
        }
        record.version = current + 1;
        record.created_at = created_at;
        bots.by_id.insert(record.id.clone(), record.clone());
        self.changed(
            &mut bots,
            BotChange::Upserted {
                id: record.id.clone(),
                version: record.version,
            },
        );
        Ok(record)
    }

    async fn delete(&self, id: &str, expected_version: Option<u64>) -> Result<(), AdminStoreError> {
        let mut bots = self.bots.lock();
        let (current, app_id) = match bots.by_id.get(id) {
            None => return Err(AdminStoreError::NotFound),
            Some(old) => (old.version, old.app_id.clone()),
        };
        if expected_version.is_some_and(|v| v != current) {
            return Err(AdminStoreError::VersionMismatch { current });
        }
        bots.by_id.remove(id);
        bots.by_app_id.remove(&app_id);
        self.changed(&mut bots, BotChange::Deleted { id: id.to_owned() });
        Ok(())
    }

    async fn revision(&self) -> Result<u64, AdminStoreError> {
        Ok(self.bots.lock().revision)
    }

    async fn subscribe(&self) -> Result<BoxStream<'static, BotChange>, AdminStoreError> {
        let rx = self.changes.subscribe();
        Ok(futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(change) => return Some((change, rx)),
                    // Fell behind: the skipped changes are gone; the consumer's
                    // revision polling catches up.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed())
    }
}

#[async_trait]
impl AuditLog for MemoryAdminStore {
    async fn append(&self, entry: &AuditEntry) -> Result<String, AdminStoreError> {
        let mut audit = self.audit.lock();
        // Same rule as a Redis stream id `<at>-*` falling back to `*`: never
        // below the last id.
        let key = match audit.last {
            Some((ms, seq)) if ms >= entry.at => (ms, seq + 1),
            // `0-0` is no valid stream id; Redis starts time 0 at `0-1`.
            _ if entry.at == 0 => (0, 1),
            _ => (entry.at, 0),
        };
        let id = format!("{}-{}", key.0, key.1);
        let mut stored = entry.clone();
        stored.id.clone_from(&id);
        audit.entries.push_back((key, stored));
        audit.last = Some(key);
        Ok(id)
    }

    async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, Option<String>), AdminStoreError> {
        let after = after.map(parse_audit_id).transpose()?;
        let size = audit_page_size(limit);
        let audit = self.audit.lock();
        let start = after.map_or(0, |a| audit.entries.partition_point(|(k, _)| *k <= a));
        let mut items: Vec<AuditEntry> = audit
            .entries
            .iter()
            .skip(start)
            .take(size + 1)
            .map(|(_, e)| e.clone())
            .collect();
        let next = if items.len() > size {
            items.truncate(size);
            items.last().map(|e| e.id.clone())
        } else {
            None
        };
        Ok((items, next))
    }

    async fn trim(&self, older_than: u64) -> Result<u64, AdminStoreError> {
        let mut audit = self.audit.lock();
        let n = audit
            .entries
            .partition_point(|((ms, _), _)| *ms < older_than);
        audit.entries.drain(..n);
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }
}
