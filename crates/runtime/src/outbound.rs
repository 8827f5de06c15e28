//! Replies from handlers. What the Bot Connector answers is reported through
//! [`crate::delivery::report_outcome`] (the reference's one writer), counted
//! by outcome, and logged when the reply failed.

use std::sync::Arc;

use botfleet_connector::{BotClient, ConnectorError, Target};
use botfleet_protocol::{Activity, ResourceResponse};
use botfleet_store::conversations::ConversationStore;
use thiserror::Error;

use crate::delivery::{self, SendOutcome};
use crate::handler::Turn;

/// Sends a bot's replies through the connector.
///
/// A 403 roster/blocked/disabled or 404 `ConversationNotFound` answer
/// deactivates the conversation's reference, a 403 `InvalidBotApiHost` moves it
/// to the GCC host; both only if no newer inbound activity changed it since
/// the turn began (its generation), and neither ever reactivates it.
#[derive(Clone)]
pub struct Replier {
    pub bot_id: Arc<str>,
    pub client: BotClient,
    pub store: Arc<dyn ConversationStore>,
}

/// A reply that was not delivered (or may not have been), with its outcome,
/// already counted, logged and applied to the reference.
#[derive(Debug, Error)]
#[error("reply not delivered ({}): {error}", outcome.label())]
pub struct ReplyError {
    pub outcome: SendOutcome,
    #[source]
    pub error: ConnectorError,
}

impl Replier {
    /// Replies to the turn's activity (threaded with `replyToId` when it has an
    /// id), at the host the conversation was moved to if it was.
    ///
    /// Errors: [`ReplyError`] with the connector's error; its outcome is
    /// recorded before this returns, so callers need not log it again.
    pub async fn reply(
        &self,
        turn: &Turn,
        reply: Activity,
    ) -> Result<ResourceResponse, ReplyError> {
        let to = &turn.activity;
        let service_url = turn
            .reference
            .service_url_moved_to
            .clone()
            .or_else(|| to.service_url.clone())
            .unwrap_or_default();
        let conversation_id = to.conversation_id().unwrap_or_default();
        let target = Target::new(service_url, conversation_id, to.tenant_id());
        let result = match to.id.as_deref().filter(|s| !s.is_empty()) {
            Some(id) => self.client.reply(&target, id, &reply).await,
            None => self.client.send(&target, &reply).await,
        };
        let outcome = SendOutcome::of(&result);
        turn.counters.sent(outcome);
        // Errors are logged inside; the reply's own outcome stands either way.
        let _ = delivery::report_outcome(
            self.store.as_ref(),
            &turn.counters,
            &self.bot_id,
            conversation_id,
            turn.reference.generation,
            &delivery::reference_outcomes(&result),
        )
        .await;
        match result {
            Ok(delivered) => Ok(delivered.value),
            Err(error) => {
                let tenant = turn.tenant_id.as_deref().unwrap_or("");
                let status = error.status();
                // ERROR when botfleet could not send at all (no token, Bot
                // Connector unreachable: the reply is lost and the cause is
                // on the operator's side); WARN when Teams refused it or the
                // conversation is gone (decided for this one conversation)
                // or its fate is unknown (docs/observability.md, "Logs").
                if outcome == SendOutcome::NotSent {
                    tracing::error!(
                        bot = %self.bot_id,
                        tenant,
                        outcome = outcome.label(),
                        status,
                        error = %error,
                        "reply not delivered; Teams was answered 2xx, a resend would not help"
                    );
                } else {
                    tracing::warn!(
                        bot = %self.bot_id,
                        tenant,
                        outcome = outcome.label(),
                        status,
                        error = %error,
                        "reply not delivered; Teams was answered 2xx, a resend would not help"
                    );
                }
                Err(ReplyError { outcome, error })
            }
        }
    }
}
