//! What one delivery is, and what a send's outcome does to a conversation
//! reference: the runtime side of the reference's one writer.
//!
//! A conversation reference is written only through the store's two atomic
//! operations (see [`ConversationStore`]): the conversation actor records each
//! validated inbound activity ([`ConversationStore::record_inbound`]), and
//! every sender — replies ([`crate::outbound::Replier`]) and, later, proactive
//! deliveries — reports what the Bot Connector answered through
//! [`report_outcome`]. Nothing caches a reference between activities, so no
//! copy can disagree with the store, on one replica or many. The rules are in
//! `docs/turns.md`.

use botfleet_connector::{Action, ConnectorError, Delivered};
use botfleet_protocol::Activity;
use botfleet_store::conversations::{
    ConversationStore, DeliveryKey, OutcomeApplied, ReferenceOutcome, StoreError,
};

use crate::metrics::Counters;
use crate::now_ms;

/// The identity of one delivery of an inbound event, or `None` for an activity
/// without an id (nothing to recognise a resend by).
///
/// Parts: conversation id, activity type, `channelData.eventType`, activity id
/// and `timestamp`. Teams gives `messageUpdate` (`editMessage`,
/// `undeleteMessage`) and `messageDelete` (`softDeleteMessage`) the id of the
/// message they change, and one message can be edited many times: the type and
/// event type tell an edit from a delete, the timestamp (set when Teams sends
/// the event) tells two edits apart, while a resend repeats the same body and
/// so the same key. Sources: the Bot Framework Activity spec (message update,
/// delete and reaction activities refer to the original message by `id`),
/// <https://github.com/microsoft/botframework-sdk/blob/main/specs/botframework-activity/botframework-activity.md#message-update-activity>,
/// and Teams' message events,
/// <https://learn.microsoft.com/en-us/microsoftteams/platform/bots/how-to/conversations/subscribe-to-conversation-events>;
/// more in `docs/turns.md`.
pub fn delivery_key(activity: &Activity) -> Option<DeliveryKey> {
    let id = activity.id.as_deref().filter(|s| !s.is_empty())?;
    let event_type = activity
        .channel_data
        .as_ref()
        .and_then(|cd| cd.get("eventType"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    Some(DeliveryKey::from_parts(&[
        activity.conversation_id().unwrap_or_default(),
        &activity.kind.to_ascii_lowercase(),
        event_type,
        id,
        activity.timestamp.as_deref().unwrap_or_default(),
    ]))
}

/// How one send ended, as counted on `/metrics` (`botfleet_replies_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendOutcome {
    /// Teams accepted it (2xx), perhaps after a move to the GCC host.
    Delivered,
    /// It may or may not have reached Teams (timeout or 504 after it was
    /// sent); not resent, so never twice.
    Unknown,
    /// Teams says the bot cannot reach the conversation (403 roster / blocked /
    /// disabled, 404 conversation): the reference was deactivated.
    ConversationGone,
    /// Teams refused it otherwise (500, 400, 401 after a fresh token, retries
    /// exhausted on 429/502/503).
    Rejected,
    /// Never sent: no token, Bot Connector unreachable, local rate limit,
    /// serviceUrl refused by the allowlist.
    NotSent,
}

impl SendOutcome {
    pub const ALL: [SendOutcome; 5] = [
        SendOutcome::Delivered,
        SendOutcome::Unknown,
        SendOutcome::ConversationGone,
        SendOutcome::Rejected,
        SendOutcome::NotSent,
    ];

    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            SendOutcome::Delivered => "delivered",
            SendOutcome::Unknown => "unknown",
            SendOutcome::ConversationGone => "conversation_gone",
            SendOutcome::Rejected => "rejected",
            SendOutcome::NotSent => "not_sent",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The outcome of a Bot Connector call's result.
    pub fn of<T>(result: &Result<Delivered<T>, ConnectorError>) -> Self {
        match result {
            Ok(_) => SendOutcome::Delivered,
            // A creating call whose 2xx answer was unreadable is reported as
            // delivered by the connector; any other unreadable answer is unknown.
            Err(ConnectorError::Unknown { .. } | ConnectorError::InvalidResponse(_)) => {
                SendOutcome::Unknown
            }
            Err(e) if e.deactivates_reference() => SendOutcome::ConversationGone,
            Err(ConnectorError::Failed(_)) => SendOutcome::Rejected,
            Err(
                ConnectorError::ServiceUrlRefused { .. }
                | ConnectorError::Token(_)
                | ConnectorError::RateLimiter(_)
                | ConnectorError::Throttled { .. }
                | ConnectorError::Unreachable { .. }
                | ConnectorError::InvalidRequest(_),
            ) => SendOutcome::NotSent,
        }
    }
}

/// What a Bot Connector result says about the conversation's reference, in the
/// order to apply it: a move to the GCC host (the call was redone there), then
/// a deactivation (the conversation is gone, wherever it lives).
pub fn reference_outcomes<T>(
    result: &Result<Delivered<T>, ConnectorError>,
) -> Vec<ReferenceOutcome<'_>> {
    let mut out = Vec::new();
    match result {
        Ok(delivered) => {
            if let Some(url) = &delivered.service_url_moved_to {
                out.push(ReferenceOutcome::Moved { service_url: url });
            }
        }
        Err(e) => {
            if let Some(url) = e.service_url_moved_to() {
                out.push(ReferenceOutcome::Moved { service_url: url });
            }
            if e.action() == Action::DeactivateReference {
                let reason = match e {
                    ConnectorError::Failed(f) if !f.code.is_empty() => f.code.as_str(),
                    _ => "connector_refused",
                };
                out.push(ReferenceOutcome::Unreachable { reason });
            }
        }
    }
    out
}

/// Reports what a send to `conversation_id` learned, through the store's one
/// outcome operation: applied only if the reference is still at `generation`
/// (the one the send read: [`crate::Turn::reference`] for a reply, the stored
/// reference's `generation` for a proactive send), never reactivating. Several
/// outcomes of one call are applied in order, each against the generation the
/// previous one left. Counted on the runtime's counters; a store failure is
/// logged and returned (the next send learns the outcome again).
pub async fn report_outcome(
    store: &dyn ConversationStore,
    counters: &Counters,
    bot_id: &str,
    conversation_id: &str,
    generation: u64,
    outcomes: &[ReferenceOutcome<'_>],
) -> Result<(), StoreError> {
    let mut generation = generation;
    for outcome in outcomes {
        let applied = store
            .report_outcome(bot_id, conversation_id, generation, outcome, now_ms())
            .await
            .inspect_err(|e| {
                // WARN, not ERROR: nothing is lost for good and nobody needs
                // to act (docs/observability.md, "Logs").
                tracing::warn!(bot = %bot_id, error = %e, "could not record what the Bot Connector said about a conversation; the next send will learn it again");
            })?;
        match (applied, outcome) {
            (
                OutcomeApplied::Applied { generation: g },
                ReferenceOutcome::Unreachable { reason },
            ) => {
                generation = g;
                counters.deactivated();
                tracing::info!(bot = %bot_id, %reason, "conversation deactivated: the Bot Connector says the bot cannot reach it");
            }
            (
                OutcomeApplied::Applied { generation: g },
                ReferenceOutcome::Moved { service_url },
            ) => {
                generation = g;
                counters.moved();
                tracing::info!(bot = %bot_id, %service_url, "conversation moved to the GCC host after InvalidBotApiHost");
            }
            (OutcomeApplied::Stale, _) => {
                counters.outcome_stale();
                tracing::debug!(bot = %bot_id, generation, "send outcome not applied: the reference changed since the send read it");
            }
            (OutcomeApplied::Unchanged | OutcomeApplied::Unknown, _) => {}
        }
    }
    Ok(())
}
