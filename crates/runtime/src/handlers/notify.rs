use async_trait::async_trait;
use botfleet_protocol::ActivityType;

use crate::handler::{BotHandler, HandlerError, HandlerOutcome, Turn};
use crate::outbound::Replier;

/// Answers every message with one configured text ("This bot only sends
/// notifications; ask in #help"), so users who write to it are not left hanging.
pub struct NotifyOnlyHandler {
    replier: Replier,
    text: String,
}

impl NotifyOnlyHandler {
    pub fn new(replier: Replier, text: impl Into<String>) -> Self {
        Self {
            replier,
            text: text.into(),
        }
    }
}

#[async_trait]
impl BotHandler for NotifyOnlyHandler {
    fn kind(&self) -> &'static str {
        "notify_only"
    }

    async fn on_turn(&self, turn: &Turn) -> Result<HandlerOutcome, HandlerError> {
        if turn.activity.activity_type() != ActivityType::Message {
            return Ok(HandlerOutcome::Done);
        }
        self.replier
            .reply(turn, turn.activity.reply(self.text.clone()))
            .await?;
        Ok(HandlerOutcome::Done)
    }
}
