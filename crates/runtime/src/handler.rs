//! The seam between botfleet and bot logic.

use std::sync::Arc;

use async_trait::async_trait;
use botfleet_protocol::{Activity, InvokeResponse};
use parking_lot::Mutex;
use thiserror::Error;

use crate::metrics::Counters;

/// One validated activity handed to a bot's handler, in conversation order.
#[derive(Debug, Clone)]
pub struct Turn {
    /// The botfleet bot id (configuration name), not the app id.
    pub bot_id: Arc<str>,
    pub tenant_id: Option<String>,
    pub activity: Arc<Activity>,
    /// The stored reference as this activity left it: what a reply needs to
    /// report its outcome and to go to the right host.
    pub reference: ReferenceState,
    /// The runtime's counters: replies to this turn are counted there by outcome.
    pub counters: Arc<Counters>,
}

/// The conversation's stored reference as the conversation actor left it for
/// one turn (set before the handler runs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferenceState {
    /// Its generation after this activity was recorded (0: none stored). A
    /// reply's outcome is applied only if the reference is still at it.
    pub generation: u64,
    /// The host a send outcome moved the conversation to (403
    /// `InvalidBotApiHost` -> GCC) while Teams still names the old one: replies
    /// go there instead of to the activity's serviceUrl.
    pub service_url_moved_to: Option<String>,
}

/// What a handler answered. Only invoke activities carry a response body: Teams
/// shows it to the user synchronously.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerOutcome {
    Done,
    Invoke(InvokeResponse),
}

/// Why a handler did not finish. The variant decides what Teams gets back
/// (`docs/turns.md`): only [`HandlerError::Retry`] makes botfleet answer 5xx and
/// give up the activity's claim, because only then can Teams' resend not
/// repeat a reply. Messages are logged, never sent into the chat.
#[derive(Debug, Error)]
pub enum HandlerError {
    /// The bot logic never ran (a webhook that could not be connected to) or
    /// asked to be run again (a webhook answering 408, 429 or 5xx), and nothing
    /// was replied: Teams gets 500 and its resend is handled.
    #[error("bot logic did not run: {0}")]
    Retry(String),
    /// The bot logic ran, or may have (a webhook that timed out after the
    /// request was sent), and failed: a resend could repeat what it did, so the
    /// activity stays claimed and Teams gets 2xx (an invoke: 500).
    #[error("bot handler failed: {0}")]
    Failed(String),
    /// A reply was not delivered. Its outcome is already recorded (warn log,
    /// `botfleet_replies_total`, the reference); the activity stays claimed and
    /// Teams gets 2xx.
    #[error(transparent)]
    Reply(#[from] crate::outbound::ReplyError),
}

/// Bot logic. Implementations: the recording handler below (tests), and the
/// built-in `echo`, `webhook` and `notify-only` handlers.
///
/// A handler is called from the conversation's actor, one activity at a time per
/// conversation, so it never sees two activities of one conversation at once.
#[async_trait]
pub trait BotHandler: Send + Sync + 'static {
    async fn on_turn(&self, turn: &Turn) -> Result<HandlerOutcome, HandlerError>;

    /// The handler kind, a fixed word for metric labels
    /// (`botfleet_turn_duration_seconds{handler}`): `echo`, `webhook`,
    /// `notify_only`; other implementations `custom`.
    fn kind(&self) -> &'static str {
        "custom"
    }
}

/// How many recent turns a [`RecordingHandler`] keeps; older ones are only counted.
const RECORDED_TURNS: usize = 1024;

/// Accepts every activity, keeps the most recent ones and counts all, for tests,
/// dry runs and ingress benchmarks. Answers invokes with 200 and no body.
#[derive(Debug, Default)]
pub struct RecordingHandler {
    seen: Mutex<std::collections::VecDeque<Turn>>,
    total: std::sync::atomic::AtomicU64,
}

impl RecordingHandler {
    pub fn new() -> Self {
        Self::default()
    }

    /// The most recent turns, oldest first.
    pub fn turns(&self) -> Vec<Turn> {
        self.seen.lock().iter().cloned().collect()
    }

    pub fn total(&self) -> u64 {
        self.total.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[async_trait]
impl BotHandler for RecordingHandler {
    async fn on_turn(&self, turn: &Turn) -> Result<HandlerOutcome, HandlerError> {
        self.total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut seen = self.seen.lock();
        if seen.len() == RECORDED_TURNS {
            seen.pop_front();
        }
        seen.push_back(turn.clone());
        drop(seen);
        if turn.activity.activity_type() == botfleet_protocol::ActivityType::Invoke {
            return Ok(HandlerOutcome::Invoke(InvokeResponse::ok(None)));
        }
        Ok(HandlerOutcome::Done)
    }
}
