//! The ingress actors: a pool that validates inbound activities and routes the
//! authentic, allowed ones to their tenant actor.

use std::sync::Arc;

use actix::prelude::*;
use botfleet_auth::inbound::InboundValidator;
use botfleet_protocol::Activity;
use tokio::sync::oneshot;

use crate::bot::{Bot, BotRegistry};
use crate::handler::Turn;
use crate::metrics::Counters;
use crate::tenant::{Route, TenantDirectory};
use crate::{IngressError, RuntimeConfig, TurnResult};

/// An activity as it came off the wire, with the `Authorization` header.
pub struct Inbound {
    pub authorization: Option<String>,
    pub activity: Activity,
    /// Set for `/api/messages/{bot}`: the token must be for this bot.
    pub route_bot: Option<Arc<Bot>>,
}

/// A validated activity on its way; `done` yields the handler's outcome.
pub struct Submitted {
    pub turn: Turn,
    pub bot: Arc<Bot>,
    pub done: oneshot::Receiver<TurnResult>,
}

impl Message for Inbound {
    type Result = Result<Submitted, IngressError>;
}

/// An [`Inbound`] with the span it arrived in (the HTTP request's): the
/// validation span is its child, and the turn's spans follow from there
/// across the tenant and conversation actors (docs/observability.md).
pub(crate) struct Traced(pub Inbound, pub tracing::Span);

impl Message for Traced {
    type Result = Result<Submitted, IngressError>;
}

/// What every ingress actor shares.
pub(crate) struct Shared {
    pub validator: Arc<InboundValidator>,
    pub bots: Arc<BotRegistry>,
    pub tenants: Arc<TenantDirectory>,
    pub config: RuntimeConfig,
    pub counters: Arc<Counters>,
    pub arbiters: Vec<actix::ArbiterHandle>,
}

impl Shared {
    /// Hands a validated turn to its tenant actor. Tenants are spread over the
    /// arbiters by hash, so one busy tenant does not hold up the others.
    pub(crate) fn route(&self, bot: &Arc<Bot>, turn: Turn) -> oneshot::Receiver<TurnResult> {
        use std::hash::{Hash, Hasher};
        let (tx, rx) = oneshot::channel();
        let key = (bot.id.clone(), turn.tenant_id.clone().unwrap_or_default());
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let arbiter = &self.arbiters[(h.finish() as usize) % self.arbiters.len()];
        let mut route = Route {
            turn,
            bot: bot.clone(),
            done: tx,
            span: tracing::Span::current(),
        };
        for _ in 0..2 {
            let addr = self
                .tenants
                .get_or_start(&key, bot, &self.config, &self.counters, arbiter);
            match addr.try_send(route) {
                Ok(()) => return rx,
                Err(SendError::Full(r)) => {
                    let _ = r.done.send(Err(crate::TurnError::Busy));
                    return rx;
                }
                // Died or stopping: the directory starts a new one on the next try.
                Err(SendError::Closed(r)) => route = r,
            }
        }
        let _ = route.done.send(Err(crate::TurnError::Busy));
        rx
    }
}

pub struct IngressActor {
    pub(crate) shared: Arc<Shared>,
}

impl Actor for IngressActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16_384);
    }
}

impl Handler<Traced> for IngressActor {
    type Result = ResponseFuture<Result<Submitted, IngressError>>;

    fn handle(&mut self, Traced(msg, parent): Traced, _: &mut Self::Context) -> Self::Result {
        use tracing::Instrument;
        let shared = self.shared.clone();
        let span = tracing::info_span!(
            parent: &parent,
            "validate",
            botfleet.check = tracing::field::Empty,
            botfleet.bot_id = tracing::field::Empty,
            botfleet.tenant_id = tracing::field::Empty,
            botfleet.activity_type = msg.activity.activity_type().as_str(),
        );
        // ResponseFuture runs concurrently with the actor's next messages: a slow
        // key refresh for one token does not stall the pool.
        Box::pin(
            async move {
                let Inbound {
                    authorization,
                    activity,
                    route_bot,
                } = msg;
                // One set of bots for the whole validation: the bot the token
                // selects is the one the turn runs with, even if the registry
                // changes meanwhile.
                let bots = shared.bots.snapshot();
                let validated = shared
                    .validator
                    .validate(
                        authorization.as_deref(),
                        &activity,
                        route_bot.as_ref().map(|b| &b.trust),
                        &*bots,
                    )
                    .await
                    .inspect_err(|e| {
                        tracing::Span::current().record("botfleet.check", e.check());
                    })?;
                let bot = match route_bot {
                    Some(bot) => bot,
                    None => bots
                        .get(&validated.bot.bot_id)
                        .cloned()
                        .ok_or_else(|| IngressError::UnknownBot(validated.bot.bot_id.clone()))?,
                };
                let span = tracing::Span::current();
                span.record("botfleet.bot_id", &*bot.id);
                if let Some(tenant) = &validated.tenant_id {
                    span.record("botfleet.tenant_id", tenant.as_str());
                }
                let turn = Turn {
                    bot_id: bot.id.clone(),
                    tenant_id: validated.tenant_id,
                    activity: Arc::new(activity),
                    // Set by the conversation actor once the activity is recorded.
                    reference: Default::default(),
                    counters: shared.counters.clone(),
                };
                let done = shared.route(&bot, turn.clone());
                Ok(Submitted { turn, bot, done })
            }
            .instrument(span),
        )
    }
}
