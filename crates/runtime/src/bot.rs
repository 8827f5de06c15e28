//! The bots this process hosts: who they are (trust), what runs them (handler),
//! where their conversation references live (store).
//!
//! The set of bots changes while the process runs (bots registered, changed or
//! removed through the admin API, on every replica): [`BotRegistry`] holds an
//! immutable [`BotSet`] and swaps it as a whole, so a reader always sees one
//! consistent set, never half of an update.

use std::collections::HashMap;
use std::sync::Arc;

use botfleet_auth::inbound::{BotResolver, BotTrust};
use botfleet_store::conversations::ConversationStore;
use parking_lot::RwLock;

use crate::handler::BotHandler;

pub struct Bot {
    /// The configuration name, used in routes (`/api/messages/{bot}`) and store keys.
    pub id: Arc<str>,
    pub trust: Arc<BotTrust>,
    pub handler: Arc<dyn BotHandler>,
    pub store: Arc<dyn ConversationStore>,
}

impl std::fmt::Debug for Bot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bot")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("bot id `{0}` is configured twice")]
    DuplicateId(String),
    #[error("app id `{app_id}` is used by bots `{first}` and `{second}`; each bot needs its own app id because the token audience selects the bot")]
    DuplicateAppId {
        app_id: String,
        first: String,
        second: String,
    },
}

/// One immutable set of bots: lookup by botfleet id and by Microsoft app id
/// (the token's `aud`).
#[derive(Debug, Default)]
pub struct BotSet {
    by_id: HashMap<String, Arc<Bot>>,
    by_app_id: HashMap<String, Arc<Bot>>,
}

impl BotSet {
    /// Errors: two bots with one id, or with one app id.
    pub fn new(bots: impl IntoIterator<Item = Arc<Bot>>) -> Result<Self, RegistryError> {
        let mut set = Self::default();
        for bot in bots {
            if set.by_id.contains_key(&*bot.id) {
                return Err(RegistryError::DuplicateId(bot.id.to_string()));
            }
            if let Some(first) = set.by_app_id.get(&bot.trust.app_id) {
                return Err(RegistryError::DuplicateAppId {
                    app_id: bot.trust.app_id.clone(),
                    first: first.id.to_string(),
                    second: bot.id.to_string(),
                });
            }
            set.by_app_id.insert(bot.trust.app_id.clone(), bot.clone());
            set.by_id.insert(bot.id.to_string(), bot);
        }
        Ok(set)
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Bot>> {
        self.by_id.get(id)
    }

    pub fn by_app(&self, app_id: &str) -> Option<&Arc<Bot>> {
        self.by_app_id.get(app_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Bot>> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

impl BotResolver for BotSet {
    fn by_app_id(&self, app_id: &str) -> Option<Arc<BotTrust>> {
        self.by_app_id.get(app_id).map(|b| b.trust.clone())
    }
}

/// The current [`BotSet`] of the process, replaced as a whole by
/// [`BotRegistry::replace`]. The lookups below read the set current at the
/// call; a caller that needs several answers from one set takes a
/// [`BotRegistry::snapshot`].
#[derive(Debug, Default)]
pub struct BotRegistry {
    current: RwLock<Arc<BotSet>>,
}

impl BotRegistry {
    /// Errors: two bots with one id, or with one app id.
    pub fn new(bots: Vec<Bot>) -> Result<Self, RegistryError> {
        let set = BotSet::new(bots.into_iter().map(Arc::new))?;
        Ok(Self {
            current: RwLock::new(Arc::new(set)),
        })
    }

    /// The set current now; later replacements do not change it.
    pub fn snapshot(&self) -> Arc<BotSet> {
        self.current.read().clone()
    }

    /// Makes `bots` the current set, atomically: every lookup after this call
    /// sees the new set. A removed bot's tokens then fail `audience`; turns
    /// already routed finish with the bot they were routed with. On error the
    /// current set is kept.
    pub fn replace(&self, bots: impl IntoIterator<Item = Arc<Bot>>) -> Result<(), RegistryError> {
        let set = Arc::new(BotSet::new(bots)?);
        *self.current.write() = set;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<Arc<Bot>> {
        self.current.read().get(id).cloned()
    }

    pub fn by_app(&self, app_id: &str) -> Option<Arc<Bot>> {
        self.current.read().by_app(app_id).cloned()
    }

    /// The current bots, in no particular order.
    pub fn all(&self) -> Vec<Arc<Bot>> {
        self.current.read().iter().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.current.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.read().is_empty()
    }
}

impl BotResolver for BotRegistry {
    fn by_app_id(&self, app_id: &str) -> Option<Arc<BotTrust>> {
        self.current.read().by_app_id(app_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::RecordingHandler;
    use botfleet_auth::{Cloud, ServiceUrlAllowlist, TenantPolicy};
    use botfleet_store::conversations::MemoryConversationStore;

    fn bot(id: &str, app_id: &str) -> Arc<Bot> {
        let cloud = Arc::new(Cloud::preset("public").expect("preset"));
        Arc::new(Bot {
            id: Arc::from(id),
            trust: Arc::new(BotTrust {
                bot_id: id.into(),
                app_id: app_id.into(),
                service_urls: ServiceUrlAllowlist::new(&cloud.service_url_hosts, &[]),
                cloud,
                tenants: TenantPolicy::default(),
            }),
            handler: Arc::new(RecordingHandler::new()),
            store: Arc::new(MemoryConversationStore::new()),
        })
    }

    #[test]
    fn replace_swaps_the_whole_set_and_keeps_snapshots() {
        let registry = BotRegistry::default();
        registry
            .replace([bot("a", "app-a"), bot("b", "app-b")])
            .expect("two bots");
        let before = registry.snapshot();
        let b2 = bot("b", "app-b2");
        registry.replace([b2.clone()]).expect("one bot");

        // Every lookup sees the new set at once ...
        assert!(registry.get("a").is_none());
        assert!(registry.by_app("app-b").is_none());
        assert!(registry.by_app_id("app-b").is_none());
        assert!(registry
            .by_app("app-b2")
            .is_some_and(|b| Arc::ptr_eq(&b, &b2)));
        assert_eq!(registry.len(), 1);
        // ... while a snapshot taken before keeps the set it had.
        assert_eq!(before.len(), 2);
        assert!(before.by_app("app-b").is_some());
    }

    #[test]
    fn a_set_with_a_duplicate_is_refused_and_the_current_one_kept() {
        let registry = BotRegistry::default();
        registry.replace([bot("a", "app-a")]).expect("one bot");
        let err = registry
            .replace([bot("a", "app-a"), bot("c", "app-a")])
            .expect_err("one app id, two bots");
        assert!(matches!(err, RegistryError::DuplicateAppId { .. }), "{err}");
        let err = registry
            .replace([bot("a", "app-a"), bot("a", "app-x")])
            .expect_err("one id, two bots");
        assert!(matches!(err, RegistryError::DuplicateId(_)), "{err}");
        assert_eq!(registry.all().len(), 1);
        assert!(registry.get("a").is_some());
    }
}
