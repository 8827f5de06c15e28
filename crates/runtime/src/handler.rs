//! The seam between botfleet and bot logic.

use std::sync::Arc;

use async_trait::async_trait;
use botfleet_protocol::{Activity, InvokeResponse};
use parking_lot::Mutex;
use thiserror::Error;

/// One validated activity handed to a bot's handler, in conversation order.
#[derive(Debug, Clone)]
pub struct Turn {
    /// The botfleet bot id (configuration name), not the app id.
    pub bot_id: Arc<str>,
    pub tenant_id: Option<String>,
    pub activity: Arc<Activity>,
}

/// What a handler answered. Only invoke activities carry a response body: Teams
/// shows it to the user synchronously.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerOutcome {
    Done,
    Invoke(InvokeResponse),
}

#[derive(Debug, Error)]
pub enum HandlerError {
    /// The bot logic failed; the message is logged, never sent into the chat.
    #[error("bot handler failed: {0}")]
    Failed(String),
}

/// Bot logic. Implementations: the recording handler below (tests), and the
/// built-in `echo`, `webhook` and `notify-only` handlers.
///
/// A handler is called from the conversation's actor, one activity at a time per
/// conversation, so it never sees two activities of one conversation at once.
#[async_trait]
pub trait BotHandler: Send + Sync + 'static {
    async fn on_turn(&self, turn: &Turn) -> Result<HandlerOutcome, HandlerError>;
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
