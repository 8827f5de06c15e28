//! botfleet's actors and the seam to bot logic.
//!
//! Inbound flow: [`Runtime::process`] hands an activity to an [`ingress`] actor
//! (a pool) that validates it and routes it to the [`tenant`] actor of (bot,
//! tenant), which routes it to the [`conversation`] actor of (bot, conversation).
//! That actor handles the conversation's activities one at a time, drops resent
//! duplicates, keeps the stored conversation reference current, and calls the
//! bot's [`handler::BotHandler`].
//!
//! Actors exist only for conversations and tenants with recent activity; idle ones
//! are stopped, and a dead one is started again on its next activity.
#![forbid(unsafe_code)]

pub mod bot;
pub mod conversation;
pub mod delivery;
pub mod handler;
pub mod handlers;
pub mod ingress;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod tenant;
#[cfg(test)]
mod tests;
pub mod token_tier;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use botfleet_auth::inbound::{InboundError, InboundValidator};
use thiserror::Error;

pub use bot::{Bot, BotRegistry, BotSet, RegistryError};
pub use delivery::SendOutcome;
pub use handler::{
    BotHandler, HandlerError, HandlerOutcome, RecordingHandler, ReferenceState, Turn,
};
pub use ingress::{Inbound, Submitted};
pub use metrics::Counters;

/// Runtime tuning; every value has a default that suits production.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Ingress actors in the pool.
    pub ingress_actors: usize,
    /// Arbiter threads the tenant and conversation actors are spread over.
    pub arbiters: usize,
    /// A conversation actor with no activity for this long is stopped.
    pub conversation_idle: Duration,
    /// A tenant actor with no conversations and no activity for this long is stopped.
    pub tenant_idle: Duration,
    /// An unchanged reference is written again after this long, so `last_seen` moves.
    pub reference_touch_interval: Duration,
    /// How long a handled delivery ([`delivery::delivery_key`]) stays claimed in
    /// the store, so that Teams' resend is dropped by whichever replica gets it;
    /// `None` keeps only each conversation actor's memory (enough for one replica).
    pub duplicate_window: Option<Duration>,
    /// Most activities per second one tenant may send one bot through this
    /// replica; more are answered 429. `None`: no quota.
    pub tenant_activities_per_sec: Option<u32>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            ingress_actors: cpus * 2,
            arbiters: cpus,
            conversation_idle: Duration::from_secs(300),
            tenant_idle: Duration::from_secs(600),
            reference_touch_interval: Duration::from_secs(3600),
            duplicate_window: Some(Duration::from_secs(600)),
            tenant_activities_per_sec: None,
        }
    }
}

/// How a validated activity ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnOutcome {
    Handled(HandlerOutcome),
    /// Teams resent an activity this conversation already handled; dropped.
    Duplicate,
}

pub type TurnResult = Result<TurnOutcome, TurnError>;

/// Why a validated activity was not handled. [`TurnError::resend_helps`] says
/// what Teams gets back (`docs/turns.md`).
#[derive(Debug, Clone, Error, PartialEq)]
pub enum TurnError {
    #[error("the conversation store is unavailable: {0}")]
    Store(String),
    /// The handler did not finish; [`HandlerFailure::kind`] says whether a
    /// resend helps.
    #[error("{0}")]
    Handler(HandlerFailure),
    #[error("the bot handler panicked; the conversation actor carried on")]
    HandlerPanicked,
    #[error("botfleet is overloaded for this conversation or tenant; retry later")]
    Busy,
    #[error("this tenant sent more than its quota of {0} activities per second to this bot")]
    TenantQuota(u32),
}

/// A handler error, as a turn reports it (cloneable, so every waiter of the
/// turn can get it).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{message}")]
pub struct HandlerFailure {
    pub kind: FailureKind,
    pub message: String,
}

/// The kind of a [`HandlerError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// [`HandlerError::Retry`]: the bot logic never ran or asked to be run again.
    Retry,
    /// [`HandlerError::Failed`]: the bot logic ran (or may have) and failed.
    Failed,
    /// [`HandlerError::Reply`]: a reply was not delivered; its outcome is recorded.
    ReplyNotDelivered,
}

impl From<HandlerError> for HandlerFailure {
    fn from(e: HandlerError) -> Self {
        let kind = match &e {
            HandlerError::Retry(_) => FailureKind::Retry,
            HandlerError::Failed(_) => FailureKind::Failed,
            HandlerError::Reply(_) => FailureKind::ReplyNotDelivered,
        };
        Self {
            kind,
            message: e.to_string(),
        }
    }
}

impl TurnError {
    /// True when Teams' resend is the cure and cannot duplicate a reply: the
    /// activity was not taken in (store down, overload, quota), or its bot
    /// logic never ran or asked to be run again. Then the delivery's claim is
    /// given back and Teams gets a 4xx/5xx. False once the bot logic ran: the
    /// claim is kept (a resend is dropped) and Teams gets 2xx, except that an
    /// invoke, answered synchronously, gets 500.
    pub fn resend_helps(&self) -> bool {
        match self {
            TurnError::Store(_) | TurnError::Busy | TurnError::TenantQuota(_) => true,
            TurnError::Handler(f) => f.kind == FailureKind::Retry,
            TurnError::HandlerPanicked => false,
        }
    }
}

#[derive(Debug, Error)]
pub enum IngressError {
    #[error(transparent)]
    Auth(#[from] InboundError),
    #[error("bot `{0}` is not registered")]
    UnknownBot(String),
    #[error("the ingress pool is not running")]
    Unavailable,
}

/// What [`Runtime::process`] reports for an accepted activity.
#[derive(Debug)]
pub enum Processed {
    Finished(TurnResult),
    /// The deadline passed; the conversation actor carries on in the background.
    StillRunning,
}

/// The running actor system of one botfleet process.
pub struct Runtime {
    ingress: Vec<Addr<ingress::IngressActor>>,
    next: AtomicUsize,
    shared: Arc<ingress::Shared>,
    // Kept so the threads live as long as the runtime.
    _arbiters: Vec<Arbiter>,
}

impl Runtime {
    /// Starts the ingress pool and the arbiters. Must run inside an actix System.
    pub fn start(
        config: RuntimeConfig,
        validator: Arc<InboundValidator>,
        bots: Arc<BotRegistry>,
    ) -> Self {
        let arbiters: Vec<Arbiter> = (0..config.arbiters.max(1))
            .map(|_| Arbiter::new())
            .collect();
        let handles: Vec<_> = arbiters.iter().map(Arbiter::handle).collect();
        let shared = Arc::new(ingress::Shared {
            validator,
            bots,
            tenants: Arc::default(),
            config: config.clone(),
            counters: Arc::default(),
            arbiters: handles.clone(),
        });
        let ingress = (0..config.ingress_actors.max(1))
            .map(|i| {
                let shared = shared.clone();
                ingress::IngressActor::start_in_arbiter(&handles[i % handles.len()], move |_| {
                    ingress::IngressActor { shared }
                })
            })
            .collect();
        Self {
            ingress,
            next: AtomicUsize::new(0),
            shared,
            _arbiters: arbiters,
        }
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.shared.counters
    }

    /// The bots this process hosts; [`BotRegistry::replace`] changes them
    /// while it runs (new activities use the new set at once).
    pub fn bots(&self) -> &Arc<BotRegistry> {
        &self.shared.bots
    }

    pub fn validator(&self) -> &Arc<InboundValidator> {
        &self.shared.validator
    }

    /// Live tenant actors.
    pub fn tenant_actors(&self) -> usize {
        self.shared.tenants.len()
    }

    /// Validates and routes one activity, then waits up to `deadline` for its
    /// handler. A rejection comes back at once and nothing reaches an actor or a
    /// store. Teams resends an activity it gets no answer to within ~15 s, so the
    /// deadline bounds how long the HTTP answer waits on bot logic.
    pub async fn process(
        &self,
        inbound: Inbound,
        deadline: Duration,
    ) -> Result<Processed, IngressError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.ingress.len();
        // The caller's span (the HTTP request's) travels with the message:
        // actix runs the handler elsewhere, where it is not current.
        let submitted = self.ingress[i]
            .send(ingress::Traced(inbound, tracing::Span::current()))
            .await
            .map_err(|_| IngressError::Unavailable)??;
        let Submitted { turn, bot, done } = submitted;
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(deadline, done).await {
            Ok(Ok(result)) => Ok(Processed::Finished(result)),
            Err(_) => Ok(Processed::StillRunning),
            Ok(Err(_)) => {
                // The turn was dropped unhandled by an actor that stopped as it
                // arrived (passivation race); route it once more.
                let retry = self.shared.route(&bot, turn);
                let left = deadline.saturating_sub(started.elapsed());
                match tokio::time::timeout(left, retry).await {
                    Ok(Ok(result)) => Ok(Processed::Finished(result)),
                    Ok(Err(_)) => Ok(Processed::Finished(Err(TurnError::Busy))),
                    Err(_) => Ok(Processed::StillRunning),
                }
            }
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
