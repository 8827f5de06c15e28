//! Who is talking, where, and the reference a bot keeps to talk there again.

use serde::{Deserialize, Serialize};

use crate::Extra;

/// A user or bot in a channel (`from`, `recipient`, `membersAdded[]`, ...).
///
/// Teams user ids (`29:...`) are per bot: the same person has a different id for
/// every bot, so ids are never shared across bots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelAccount {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Entra (Azure AD) object id of a user; what back-office systems know people by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aad_object_id: Option<String>,
    /// `user` or `bot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Teams member details (givenName, email, userPrincipalName, tenantId, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChannelAccount {
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            ..Self::default()
        }
    }

    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// The conversation an activity belongs to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationAccount {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `personal`, `groupChat` or `channel` in Teams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// True for group chats and channels; absent for personal chats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_group: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aad_object_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl ConversationAccount {
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            ..Self::default()
        }
    }
}

/// Everything a bot needs to send into a conversation later (proactively).
///
/// Keep the whole reference, `service_url` included: the conversation id alone is
/// not enough to reach a conversation, and the service URL can differ per region
/// and per user. It is trusted only when it came from a validated inbound activity,
/// because the bot's credentials are sent there.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationReference {
    /// The id of the activity this reference was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity_id: Option<String>,
    /// The user (the `from` of the inbound activity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<ChannelAccount>,
    /// The bot (the `recipient` of the inbound activity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot: Option<ChannelAccount>,
    pub conversation: ConversationAccount,
    pub channel_id: String,
    pub service_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}
