//! The activity: every message and event between Teams and a bot.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    Attachment, ChannelAccount, ConversationAccount, ConversationReference, Entity, Extra, Mention,
    MessageReaction, TeamsChannelData,
};

/// A Bot Framework activity as Teams sends it and as a bot sends it back.
///
/// Timestamps stay strings (Teams sends 7 fractional digits that most date types
/// would round), `channelData` and `value` stay JSON, and unknown fields are kept
/// in `extra`, so parse + serialise gives back the JSON that came in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    /// `message`, `conversationUpdate`, `installationUpdate`, `invoke`, ...;
    /// see [`ActivityType`].
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_timezone: Option<String>,
    /// Where replies go. Trusted only after the token's `serviceurl` claim matched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_url: Option<String>,
    /// `msteams` for Teams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ChannelAccount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<ConversationAccount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<ChannelAccount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment_layout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members_added: Option<Vec<ChannelAccount>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members_removed: Option<Vec<ChannelAccount>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reactions_added: Option<Vec<MessageReaction>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reactions_removed: Option<Vec<MessageReaction>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_disclosed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speak: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_hint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggested_actions: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<Attachment>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entities: Option<Vec<Entity>>,
    /// Raw `channelData`; [`Activity::teams_channel_data`] gives the typed Teams view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_data: Option<Value>,
    /// installationUpdate: `add`, `remove`, `add-upgrade`, `remove-upgrade`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_type: Option<String>,
    /// Invoke payloads, card action data, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Invoke / event name, e.g. `adaptiveCard/action`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relates_to: Option<ConversationReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_for: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_highlights: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_action: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_id: Option<String>,
    /// Fields this type does not model, kept for round trips.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The activity types a Teams bot meets. Unknown ones are [`ActivityType::Other`]:
/// Teams adds event types at any time and a bot must not fail on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActivityType {
    Message,
    MessageUpdate,
    MessageDelete,
    MessageReaction,
    ConversationUpdate,
    InstallationUpdate,
    Invoke,
    Event,
    Typing,
    EndOfConversation,
    Other,
}

impl ActivityType {
    pub fn parse(kind: &str) -> Self {
        match kind {
            "message" => Self::Message,
            "messageUpdate" => Self::MessageUpdate,
            "messageDelete" => Self::MessageDelete,
            "messageReaction" => Self::MessageReaction,
            "conversationUpdate" => Self::ConversationUpdate,
            "installationUpdate" => Self::InstallationUpdate,
            "invoke" => Self::Invoke,
            "event" => Self::Event,
            "typing" => Self::Typing,
            "endOfConversation" => Self::EndOfConversation,
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::MessageUpdate => "messageUpdate",
            Self::MessageDelete => "messageDelete",
            Self::MessageReaction => "messageReaction",
            Self::ConversationUpdate => "conversationUpdate",
            Self::InstallationUpdate => "installationUpdate",
            Self::Invoke => "invoke",
            Self::Event => "event",
            Self::Typing => "typing",
            Self::EndOfConversation => "endOfConversation",
            Self::Other => "other",
        }
    }
}

/// A required field of an inbound activity that is missing or empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundShapeError {
    /// JSON path of the field, e.g. `conversation.id`.
    pub field: &'static str,
}

impl std::fmt::Display for InboundShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the activity has no `{}`; Teams always sends it",
            self.field
        )
    }
}

impl std::error::Error for InboundShapeError {}

fn non_empty(v: Option<&str>) -> bool {
    v.is_some_and(|s| !s.trim().is_empty())
}

impl Activity {
    /// A new message activity with the given text.
    pub fn message(text: impl Into<String>) -> Self {
        Self {
            kind: ActivityType::Message.as_str().to_owned(),
            text: Some(text.into()),
            ..Self::default()
        }
    }

    pub fn activity_type(&self) -> ActivityType {
        ActivityType::parse(&self.kind)
    }

    /// Checks that an inbound activity has what routing and replying need:
    /// `type`, `channelId`, `serviceUrl`, `conversation.id`, `from.id`, `recipient.id`.
    pub fn check_inbound_shape(&self) -> Result<(), InboundShapeError> {
        let checks: [(&'static str, bool); 6] = [
            ("type", !self.kind.trim().is_empty()),
            ("channelId", non_empty(self.channel_id.as_deref())),
            ("serviceUrl", non_empty(self.service_url.as_deref())),
            (
                "conversation.id",
                non_empty(self.conversation.as_ref().map(|c| c.id.as_str())),
            ),
            (
                "from.id",
                non_empty(self.from.as_ref().map(|c| c.id.as_str())),
            ),
            (
                "recipient.id",
                non_empty(self.recipient.as_ref().map(|c| c.id.as_str())),
            ),
        ];
        match checks.iter().find(|(_, ok)| !ok) {
            Some((field, _)) => Err(InboundShapeError { field }),
            None => Ok(()),
        }
    }

    /// The tenant: `channelData.tenant.id`, else `conversation.tenantId`.
    pub fn tenant_id(&self) -> Option<&str> {
        self.channel_data
            .as_ref()
            .and_then(|cd| cd.get("tenant"))
            .and_then(|t| t.get("id"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .or_else(|| {
                self.conversation
                    .as_ref()
                    .and_then(|c| c.tenant_id.as_deref())
                    .filter(|s| !s.is_empty())
            })
    }

    /// `channelData` parsed as Teams channel data; `None` when absent or not an object.
    pub fn teams_channel_data(&self) -> Option<TeamsChannelData> {
        self.channel_data
            .as_ref()
            .filter(|v| v.is_object())
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    pub fn conversation_id(&self) -> Option<&str> {
        self.conversation.as_ref().map(|c| c.id.as_str())
    }

    /// The reference to reach this activity's conversation later; `None` when the
    /// activity lacks a conversation, channel id or service URL.
    pub fn conversation_reference(&self) -> Option<ConversationReference> {
        let mut conversation = self.conversation.clone()?;
        // The tenant is a property of the conversation for a proactive send
        // (create-conversation needs it), so keep it there even when Teams only
        // put it in channelData.
        if conversation.tenant_id.is_none() {
            conversation.tenant_id = self.tenant_id().map(str::to_owned);
        }
        Some(ConversationReference {
            activity_id: self.id.clone(),
            user: self.from.clone(),
            bot: self.recipient.clone(),
            conversation,
            channel_id: self.channel_id.clone()?,
            service_url: self.service_url.clone()?,
            locale: self.locale.clone(),
            extra: Extra::new(),
        })
    }

    /// A reply to this activity: from the bot to the sender, in the same
    /// conversation, `replyToId` set to this activity's id.
    pub fn reply(&self, text: impl Into<String>) -> Activity {
        Activity {
            kind: ActivityType::Message.as_str().to_owned(),
            text: Some(text.into()),
            from: self.recipient.clone(),
            recipient: self.from.clone(),
            conversation: self.conversation.clone(),
            reply_to_id: self.id.clone(),
            service_url: self.service_url.clone(),
            channel_id: self.channel_id.clone(),
            locale: self.locale.clone(),
            ..Activity::default()
        }
    }

    /// The mentions in `entities[]`.
    pub fn mentions(&self) -> Vec<Mention> {
        self.entities
            .iter()
            .flatten()
            .filter_map(Entity::as_mention)
            .collect()
    }

    /// conversationUpdate that adds the bot itself (its id is `recipient.id`).
    pub fn adds_bot(&self) -> bool {
        self.recipient_in(self.members_added.as_deref())
    }

    /// conversationUpdate that removes the bot itself.
    pub fn removes_bot(&self) -> bool {
        self.recipient_in(self.members_removed.as_deref())
    }

    fn recipient_in(&self, members: Option<&[ChannelAccount]>) -> bool {
        match (&self.recipient, members) {
            (Some(bot), Some(members)) => members.iter().any(|m| m.id == bot.id),
            _ => false,
        }
    }

    /// installationUpdate `remove` (not `remove-upgrade`, which is half of an app
    /// upgrade), or the bot removed from the conversation: the conversation can no
    /// longer be reached.
    pub fn ends_bot_membership(&self) -> bool {
        match self.activity_type() {
            ActivityType::InstallationUpdate => self.action.as_deref() == Some("remove"),
            ActivityType::ConversationUpdate => self.removes_bot(),
            _ => false,
        }
    }
}

impl ConversationReference {
    /// Addresses an outgoing activity to this conversation: sets conversation,
    /// `from` (the bot), `recipient` (the user), service URL and channel id.
    pub fn address(&self, mut activity: Activity) -> Activity {
        activity.conversation = Some(self.conversation.clone());
        activity.from = self.bot.clone();
        activity.recipient = self.user.clone();
        activity.service_url = Some(self.service_url.clone());
        activity.channel_id = Some(self.channel_id.clone());
        if activity.locale.is_none() {
            activity.locale = self.locale.clone();
        }
        activity
    }

    /// The tenant of the conversation.
    pub fn tenant_id(&self) -> Option<&str> {
        self.conversation.tenant_id.as_deref()
    }
}
