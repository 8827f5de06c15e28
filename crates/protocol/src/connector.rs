//! Bot Connector REST bodies (`/v3/conversations/...`) and invoke responses.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Activity, ChannelAccount, Extra};

/// Answer to send / reply / update: the id the service gave the activity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceResponse {
    #[serde(default)]
    pub id: String,
}

/// Body of `POST /v3/conversations` (create a conversation, e.g. a 1:1 chat).
///
/// For a Teams 1:1: `isGroup: false`, exactly one `29:` member and `tenantId`.
/// Group chats cannot be created; channel threads need `activity`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationParameters {
    #[serde(default)]
    pub is_group: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot: Option<ChannelAccount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<ChannelAccount>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Box<Activity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_data: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Answer to `POST /v3/conversations`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationResourceResponse {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_url: Option<String>,
}

/// Answer to `GET /v3/conversations/{id}/pagedmembers`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PagedMembersResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation_token: Option<String>,
    #[serde(default)]
    pub members: Vec<ChannelAccount>,
}

/// The Bot Connector's error body: `{"error":{"code","message","innerHttpError"}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Teams error code: `BotNotInConversationRoster`, `ConversationNotFound`, `Throttled`, ...
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_http_error: Option<InnerHttpError>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InnerHttpError {
    pub status_code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

impl ErrorResponse {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorBody {
                code: code.into(),
                message: message.into(),
                inner_http_error: None,
            },
        }
    }
}

/// What a bot answers, synchronously, to an `invoke` activity (card actions,
/// message extensions, ...): the HTTP status and body Teams shows the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvokeResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

impl InvokeResponse {
    pub fn ok(body: Option<Value>) -> Self {
        Self { status: 200, body }
    }
}
