//! The bots this process hosts: who they are (trust), what runs them (handler),
//! where their conversation references live (store).

use std::collections::HashMap;
use std::sync::Arc;

use botfleet_auth::inbound::{BotResolver, BotTrust};
use botfleet_store::conversations::ConversationStore;

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

/// Lookup by configuration id and by Microsoft app id (the token's `aud`).
#[derive(Debug, Default)]
pub struct BotRegistry {
    by_id: HashMap<String, Arc<Bot>>,
    by_app_id: HashMap<String, Arc<Bot>>,
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

impl BotRegistry {
    pub fn new(bots: Vec<Bot>) -> Result<Self, RegistryError> {
        let mut reg = Self::default();
        for bot in bots {
            let bot = Arc::new(bot);
            if reg.by_id.contains_key(&*bot.id) {
                return Err(RegistryError::DuplicateId(bot.id.to_string()));
            }
            if let Some(first) = reg.by_app_id.get(&bot.trust.app_id) {
                return Err(RegistryError::DuplicateAppId {
                    app_id: bot.trust.app_id.clone(),
                    first: first.id.to_string(),
                    second: bot.id.to_string(),
                });
            }
            reg.by_app_id.insert(bot.trust.app_id.clone(), bot.clone());
            reg.by_id.insert(bot.id.to_string(), bot);
        }
        Ok(reg)
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

impl BotResolver for BotRegistry {
    fn by_app_id(&self, app_id: &str) -> Option<Arc<BotTrust>> {
        self.by_app_id.get(app_id).map(|b| b.trust.clone())
    }
}
