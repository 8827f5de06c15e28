//! Bot Framework / Microsoft Teams wire types.
//!
//! Everything Teams sends to a bot and everything a bot sends to the Bot Connector,
//! as plain serde types with no I/O. Two rules shape every type here:
//!
//! - **Nothing is lost.** Each object keeps the fields it does not model in an
//!   `extra` map, so an activity that is parsed and forwarded (to a webhook, to a
//!   store) serialises back to the same JSON. Absent fields stay absent.
//! - **Ids are opaque strings.** Teams ids (`29:...`, `a:...`, `19:...@thread.tacv2`)
//!   and timestamps (Teams sends 7 fractional digits) are kept verbatim.
//!
//! Modules:
//! - [`activity`]: [`Activity`] and its helpers (reply, conversation reference, tenant id);
//! - [`accounts`]: [`ChannelAccount`], [`ConversationAccount`], [`ConversationReference`];
//! - [`teams`]: [`TeamsChannelData`] and the Teams-specific pieces of `channelData`;
//! - [`content`]: [`Attachment`], [`Entity`], [`Mention`], [`MessageReaction`];
//! - [`connector`]: Bot Connector request and response bodies and invoke responses.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod activity;
pub mod connector;
pub mod content;
pub mod teams;

pub use accounts::{ChannelAccount, ConversationAccount, ConversationReference};
pub use activity::{Activity, ActivityType, InboundShapeError};
pub use connector::{
    ConversationParameters, ConversationResourceResponse, ErrorBody, ErrorResponse, InnerHttpError,
    InvokeResponse, PagedMembersResult, ResourceResponse,
};
pub use content::{Attachment, Entity, Mention, MessageReaction};
pub use teams::{ChannelInfo, TeamInfo, TeamsChannelData, TeamsSettings, TenantInfo};

/// A JSON object holding the fields a type does not model, kept for round trips.
pub type Extra = serde_json::Map<String, serde_json::Value>;

/// The `channelId` Teams puts on every activity.
pub const TEAMS_CHANNEL_ID: &str = "msteams";
