//! Built-in bot handlers, chosen per bot in configuration:
//! - [`EchoHandler`] (`echo`): answers a message with its own text (the demo bot);
//! - [`NotifyOnlyHandler`] (`notify-only`): answers every message with a fixed
//!   text, for bots that only send proactive notifications;
//! - [`WebhookHandler`] (`webhook`): forwards the validated activity to the bot
//!   owner's URL, signed, and sends back what the webhook answers.

mod echo;
mod notify;
mod webhook;

pub use echo::EchoHandler;
pub use notify::NotifyOnlyHandler;
pub use webhook::{
    sign, WebhookConfig, WebhookError, WebhookHandler, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};

use botfleet_protocol::Activity;

/// The message text without the bot's own `<at>...</at>` mention (how a channel
/// message addresses the bot), trimmed.
pub(crate) fn text_without_bot_mention(activity: &Activity) -> String {
    let mut text = activity.text.clone().unwrap_or_default();
    let bot_id = activity.recipient.as_ref().map(|r| r.id.as_str());
    for m in activity.mentions() {
        if Some(m.mentioned.id.as_str()) == bot_id {
            text = text.replace(&m.text, "");
        }
    }
    text.trim().to_owned()
}
