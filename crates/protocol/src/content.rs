//! What an activity carries besides text: attachments, entities, mentions, reactions.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ChannelAccount, Extra};

/// A file, card or other rich content (`attachments[]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// MIME type, e.g. `application/vnd.microsoft.card.adaptive`.
    pub content_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_url: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Attachment {
    pub const ADAPTIVE_CARD: &'static str = "application/vnd.microsoft.card.adaptive";

    /// An Adaptive Card attachment with the given card JSON.
    pub fn adaptive_card(card: Value) -> Self {
        Self {
            content_type: Self::ADAPTIVE_CARD.to_owned(),
            content: Some(card),
            ..Self::default()
        }
    }
}

/// Metadata attached to an activity (`entities[]`): mentions, client info, ...
///
/// Entity shapes vary by `type`, so everything but the type is kept as JSON;
/// typed views such as [`Entity::as_mention`] parse on demand.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub properties: Extra,
}

impl Entity {
    /// This entity as a mention, when it is one.
    pub fn as_mention(&self) -> Option<Mention> {
        if self.kind != Mention::TYPE {
            return None;
        }
        let mut obj = self.properties.clone();
        obj.insert("type".to_owned(), Value::String(self.kind.clone()));
        serde_json::from_value(Value::Object(obj)).ok()
    }
}

/// An @mention of a user or bot; `text` is the `<at>Name</at>` span in the activity text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mention {
    pub mentioned: ChannelAccount,
    pub text: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl Mention {
    pub const TYPE: &'static str = "mention";

    pub fn new(mentioned: ChannelAccount, text: impl Into<String>) -> Self {
        Self {
            mentioned,
            text: text.into(),
            kind: Self::TYPE.to_owned(),
        }
    }

    /// This mention as an entry for `entities[]`.
    pub fn to_entity(&self) -> Entity {
        let mut properties = Extra::new();
        properties.insert(
            "mentioned".to_owned(),
            serde_json::to_value(&self.mentioned).unwrap_or(Value::Null),
        );
        properties.insert("text".to_owned(), Value::String(self.text.clone()));
        Entity {
            kind: Self::TYPE.to_owned(),
            properties,
        }
    }
}

/// A reaction in `reactionsAdded[]` / `reactionsRemoved[]` (`like`, `heart`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageReaction {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub extra: Extra,
}
