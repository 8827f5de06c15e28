//! Replies from handlers, with what the Bot Connector's answer means for the
//! stored conversation reference applied on the spot.

use std::sync::Arc;

use botfleet_connector::{BotClient, ConnectorError, Target};
use botfleet_protocol::{Activity, ResourceResponse};
use botfleet_store::conversations::ConversationStore;

use crate::now_ms;

/// Sends a bot's replies through the connector.
///
/// A 403 roster/blocked/disabled or 404 answer deactivates the conversation's
/// reference (no more sends until Teams tells us otherwise); a move to the GCC
/// host rewrites it, so the next proactive send goes to the right place.
#[derive(Clone)]
pub struct Replier {
    pub bot_id: Arc<str>,
    pub client: BotClient,
    pub store: Arc<dyn ConversationStore>,
}

impl Replier {
    /// Replies to `to` (threaded with `replyToId` when it has an id).
    pub async fn reply(
        &self,
        to: &Activity,
        reply: Activity,
    ) -> Result<ResourceResponse, ConnectorError> {
        let service_url = to.service_url.clone().unwrap_or_default();
        let conversation_id = to.conversation_id().unwrap_or_default().to_owned();
        let target = Target::new(service_url, conversation_id.clone(), to.tenant_id());
        let result = match to.id.as_deref().filter(|s| !s.is_empty()) {
            Some(id) => self.client.reply(&target, id, &reply).await,
            None => self.client.send(&target, &reply).await,
        };
        match result {
            Ok(delivered) => {
                if let Some(moved) = &delivered.service_url_moved_to {
                    self.move_reference(&conversation_id, moved).await;
                }
                Ok(delivered.value)
            }
            Err(e) => {
                if let Some(moved) = e.service_url_moved_to() {
                    self.move_reference(&conversation_id, moved).await;
                }
                if e.deactivates_reference() {
                    let reason = match &e {
                        ConnectorError::Failed(f) => f.code.clone(),
                        _ => "connector_refused".to_owned(),
                    };
                    if let Err(se) = self
                        .store
                        .deactivate(&self.bot_id, &conversation_id, &reason, now_ms())
                        .await
                    {
                        tracing::error!(bot = %self.bot_id, error = %se, "could not deactivate a conversation the Bot Connector refused");
                    }
                }
                Err(e)
            }
        }
    }

    async fn move_reference(&self, conversation_id: &str, service_url: &str) {
        let stored = match self.store.get(&self.bot_id, conversation_id).await {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(bot = %self.bot_id, error = %e, "could not read a reference to move it to the GCC host");
                return;
            }
        };
        let mut reference = stored.reference;
        reference.service_url = service_url.to_owned();
        if let Err(e) = self.store.upsert(&self.bot_id, &reference, now_ms()).await {
            tracing::error!(bot = %self.bot_id, error = %e, "could not move a reference to the GCC host");
        } else {
            tracing::info!(bot = %self.bot_id, %service_url, "conversation moved to the GCC host after InvalidBotApiHost");
        }
    }
}
