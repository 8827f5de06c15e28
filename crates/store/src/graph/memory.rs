//! The in-process Graph store: the embedded default (one replica, nothing
//! survives a restart).

use std::collections::{BTreeMap, HashMap, VecDeque};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{GraphStore, GraphStoreError, InboxEntry, StateFields, StoredSubscription};

#[derive(Default)]
struct Inner {
    specs: BTreeMap<String, String>,
    states: HashMap<String, StateFields>,
    revision: u64,
    leases: HashMap<String, (String, u64)>,
    next_entry: u64,
    /// Not handed out yet, in push order.
    fresh: VecDeque<(String, String)>,
    /// Handed out, not acked: id -> (payload, taken at, deliveries).
    pending: BTreeMap<String, (String, u64, u32)>,
    done: HashMap<String, u64>,
}

/// [`GraphStore`] in memory.
#[derive(Default)]
pub struct MemoryGraphStore {
    inner: Mutex<Inner>,
}

impl MemoryGraphStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl GraphStore for MemoryGraphStore {
    async fn put_subscription(&self, id: &str, spec_json: &str) -> Result<(), GraphStoreError> {
        let mut g = self.inner.lock();
        g.specs.insert(id.to_owned(), spec_json.to_owned());
        g.revision += 1;
        Ok(())
    }

    async fn get_subscription(
        &self,
        id: &str,
    ) -> Result<Option<StoredSubscription>, GraphStoreError> {
        Ok(self.inner.lock().specs.get(id).map(|s| StoredSubscription {
            id: id.to_owned(),
            spec_json: s.clone(),
        }))
    }

    async fn list_subscriptions(&self) -> Result<Vec<StoredSubscription>, GraphStoreError> {
        Ok(self
            .inner
            .lock()
            .specs
            .iter()
            .map(|(id, s)| StoredSubscription {
                id: id.clone(),
                spec_json: s.clone(),
            })
            .collect())
    }

    async fn delete_subscription(&self, id: &str) -> Result<bool, GraphStoreError> {
        let mut g = self.inner.lock();
        let existed = g.specs.remove(id).is_some();
        g.states.remove(id);
        g.revision += 1;
        Ok(existed)
    }

    async fn revision(&self) -> Result<u64, GraphStoreError> {
        Ok(self.inner.lock().revision)
    }

    async fn get_state(&self, id: &str) -> Result<StateFields, GraphStoreError> {
        Ok(self
            .inner
            .lock()
            .states
            .get(id)
            .cloned()
            .unwrap_or_default())
    }

    async fn set_state(&self, id: &str, fields: &[(&str, String)]) -> Result<(), GraphStoreError> {
        let mut g = self.inner.lock();
        let st = g.states.entry(id.to_owned()).or_default();
        for (k, v) in fields {
            if v.is_empty() {
                st.remove(*k);
            } else {
                st.insert((*k).to_owned(), v.clone());
            }
        }
        Ok(())
    }

    async fn raise_state(
        &self,
        id: &str,
        field: &str,
        value: u64,
    ) -> Result<bool, GraphStoreError> {
        let mut g = self.inner.lock();
        let st = g.states.entry(id.to_owned()).or_default();
        let current = st.get(field).and_then(|v| v.parse::<u64>().ok());
        if current.is_some_and(|c| c >= value) {
            return Ok(false);
        }
        st.insert(field.to_owned(), value.to_string());
        Ok(true)
    }

    async fn lease(
        &self,
        name: &str,
        owner: &str,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<bool, GraphStoreError> {
        let mut g = self.inner.lock();
        let granted = match g.leases.get(name) {
            Some((holder, until)) => holder == owner || *until <= now_ms,
            None => true,
        };
        if granted {
            g.leases
                .insert(name.to_owned(), (owner.to_owned(), now_ms + ttl_ms));
        }
        Ok(granted)
    }

    async fn release(&self, name: &str, owner: &str) -> Result<(), GraphStoreError> {
        let mut g = self.inner.lock();
        if g.leases.get(name).is_some_and(|(h, _)| h == owner) {
            g.leases.remove(name);
        }
        Ok(())
    }

    async fn inbox_push(&self, payloads: &[String]) -> Result<(), GraphStoreError> {
        let mut g = self.inner.lock();
        for p in payloads {
            g.next_entry += 1;
            let id = format!("{:020}", g.next_entry);
            g.fresh.push_back((id, p.clone()));
        }
        Ok(())
    }

    async fn inbox_take(
        &self,
        _consumer: &str,
        max: usize,
        now_ms: u64,
    ) -> Result<Vec<InboxEntry>, GraphStoreError> {
        let mut g = self.inner.lock();
        let mut out = Vec::new();
        while out.len() < max {
            let Some((id, payload)) = g.fresh.pop_front() else {
                break;
            };
            g.pending.insert(id.clone(), (payload.clone(), now_ms, 1));
            out.push(InboxEntry {
                id,
                payload,
                deliveries: 1,
            });
        }
        Ok(out)
    }

    async fn inbox_reclaim(
        &self,
        _consumer: &str,
        min_idle_ms: u64,
        max: usize,
        now_ms: u64,
    ) -> Result<Vec<InboxEntry>, GraphStoreError> {
        let mut g = self.inner.lock();
        let mut out = Vec::new();
        for (id, (payload, at, n)) in g.pending.iter_mut() {
            if out.len() >= max {
                break;
            }
            if now_ms.saturating_sub(*at) >= min_idle_ms {
                *at = now_ms;
                *n += 1;
                out.push(InboxEntry {
                    id: id.clone(),
                    payload: payload.clone(),
                    deliveries: *n,
                });
            }
        }
        Ok(out)
    }

    async fn inbox_ack(&self, id: &str) -> Result<(), GraphStoreError> {
        self.inner.lock().pending.remove(id);
        Ok(())
    }

    async fn inbox_len(&self) -> Result<u64, GraphStoreError> {
        let g = self.inner.lock();
        Ok((g.fresh.len() + g.pending.len()) as u64)
    }

    async fn is_done(&self, key: &str, now_ms: u64) -> Result<bool, GraphStoreError> {
        Ok(self
            .inner
            .lock()
            .done
            .get(key)
            .is_some_and(|until| *until > now_ms))
    }

    async fn mark_done(&self, key: &str, ttl_ms: u64, now_ms: u64) -> Result<(), GraphStoreError> {
        let mut g = self.inner.lock();
        g.done.retain(|_, until| *until > now_ms);
        g.done.insert(key.to_owned(), now_ms + ttl_ms);
        Ok(())
    }
}
