use async_trait::async_trait;
use botfleet_protocol::ActivityType;

use super::text_without_bot_mention;
use crate::handler::{BotHandler, HandlerError, HandlerOutcome, Turn};
use crate::outbound::Replier;

/// Replies to every message with the text it got (the bot's own mention removed).
pub struct EchoHandler {
    replier: Replier,
}

impl EchoHandler {
    pub fn new(replier: Replier) -> Self {
        Self { replier }
    }
}

#[async_trait]
impl BotHandler for EchoHandler {
    fn kind(&self) -> &'static str {
        "echo"
    }

    async fn on_turn(&self, turn: &Turn) -> Result<HandlerOutcome, HandlerError> {
        if turn.activity.activity_type() != ActivityType::Message {
            return Ok(HandlerOutcome::Done);
        }
        let text = text_without_bot_mention(&turn.activity);
        if text.is_empty() {
            return Ok(HandlerOutcome::Done);
        }
        self.replier.reply(turn, turn.activity.reply(text)).await?;
        Ok(HandlerOutcome::Done)
    }
}
