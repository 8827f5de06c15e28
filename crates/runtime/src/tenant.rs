//! The tenant actor: one per (bot, tenant) with recent activity.
//!
//! It counts the tenant's activities, owns (supervises) the conversation actors of
//! that tenant, restarts one that died, and passivates the ones that went idle.
//! Being the only sender to its conversation actors is what makes passivation
//! lossless: once it forgets a conversation it never sends there again, so the
//! `Passivate` it sends is the last message that actor gets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::bot::Bot;
use crate::conversation::{ConversationActor, Deliver, Passivate};
use crate::handler::Turn;
use crate::metrics::Counters;
use crate::{RuntimeConfig, TurnError, TurnResult};

/// (bot id, tenant id or "" when the activity has none).
pub type TenantKey = (Arc<str>, String);

/// The tenant actors alive in this process, shared by the ingress actors.
#[derive(Default)]
pub struct TenantDirectory {
    actors: Mutex<HashMap<TenantKey, Addr<TenantActor>>>,
}

impl TenantDirectory {
    /// The live actor for `key`, starting one (on `arbiter`) when there is none or
    /// the previous one died.
    pub(crate) fn get_or_start(
        self: &Arc<Self>,
        key: &TenantKey,
        bot: &Arc<Bot>,
        config: &RuntimeConfig,
        counters: &Arc<Counters>,
        arbiter: &actix::ArbiterHandle,
    ) -> Addr<TenantActor> {
        let mut actors = self.actors.lock();
        if let Some(addr) = actors.get(key) {
            if addr.connected() {
                return addr.clone();
            }
            counters.restarted();
        }
        let actor = TenantActor {
            recent: std::collections::VecDeque::new(),
            key: key.clone(),
            bot: bot.clone(),
            conversations: HashMap::new(),
            last_activity: Instant::now(),
            activities: 0,
            config: config.clone(),
            counters: counters.clone(),
            directory: self.clone(),
        };
        let addr = TenantActor::start_in_arbiter(arbiter, move |_| actor);
        actors.insert(key.clone(), addr.clone());
        addr
    }

    fn remove_if_same(&self, key: &TenantKey, addr: &Addr<TenantActor>) {
        let mut actors = self.actors.lock();
        if actors.get(key).is_some_and(|a| a == addr) {
            actors.remove(key);
        }
    }

    /// How many activities the live actor of `key` routed (`None` without one).
    pub async fn activity_count(&self, key: &TenantKey) -> Option<u64> {
        let addr = self.actors.lock().get(key).cloned()?;
        addr.send(ActivityCount).await.ok()
    }

    pub fn len(&self) -> usize {
        self.actors.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Route one validated activity to its conversation.
pub struct Route {
    pub turn: Turn,
    /// The bot as the registry had it when the activity was validated: a bot
    /// changed through the admin API takes effect with its next activity,
    /// even in actors started before the change.
    pub bot: Arc<Bot>,
    pub done: oneshot::Sender<TurnResult>,
    /// The span the activity was routed in (validation): the tenant actor's
    /// span is its child, across the actor hop.
    pub span: tracing::Span,
}

impl Message for Route {
    type Result = ();
}

struct ConversationEntry {
    addr: Addr<ConversationActor>,
    last_activity: Instant,
}

pub struct TenantActor {
    /// Arrival times within the last second, for the tenant quota.
    recent: std::collections::VecDeque<Instant>,
    key: TenantKey,
    /// The bot of the latest activity (what new conversation actors start with).
    bot: Arc<Bot>,
    conversations: HashMap<String, ConversationEntry>,
    last_activity: Instant,
    activities: u64,
    config: RuntimeConfig,
    counters: Arc<Counters>,
    directory: Arc<TenantDirectory>,
}

impl TenantActor {
    fn start_conversation(&self, conversation_id: &str) -> Addr<ConversationActor> {
        ConversationActor::new(
            self.bot.clone(),
            conversation_id.to_owned(),
            self.config.reference_touch_interval,
            self.config.duplicate_window,
            self.counters.clone(),
        )
        .start()
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let idle = self.config.conversation_idle;
        let now = Instant::now();
        self.conversations.retain(|_, entry| {
            let keep = now.duration_since(entry.last_activity) < idle;
            if !keep {
                entry.addr.do_send(Passivate);
                botfleet_telemetry::metrics::actor_passivated("conversation");
            }
            keep
        });
        if self.conversations.is_empty()
            && now.duration_since(self.last_activity) >= self.config.tenant_idle
        {
            // Leave the directory first so new activities start a fresh actor;
            // one that raced in is answered by the retry in `Runtime::process`.
            self.directory.remove_if_same(&self.key, &ctx.address());
            botfleet_telemetry::metrics::actor_passivated("tenant");
            ctx.stop();
        }
    }
}

impl Actor for TenantActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16_384);
        self.counters.tenant_actors_started();
        let every = (self.config.conversation_idle.min(self.config.tenant_idle) / 2)
            .max(Duration::from_millis(50));
        ctx.run_interval(every, |act, ctx| act.sweep(ctx));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.counters.tenant_actors_stopped();
        for entry in self.conversations.values() {
            entry.addr.do_send(Passivate);
        }
    }
}

impl Handler<Route> for TenantActor {
    type Result = ();

    fn handle(&mut self, msg: Route, _: &mut Self::Context) {
        let span = tracing::info_span!(
            parent: &msg.span,
            "tenant actor",
            botfleet.bot_id = %self.key.0,
            botfleet.tenant_id = %self.key.1,
            botfleet.outcome = tracing::field::Empty,
        );
        let _entered = span.enter();
        let now = Instant::now();
        if let Some(limit) = self.config.tenant_activities_per_sec {
            // Sliding one-second window: a tenant flooding one bot is refused
            // here, before it costs a conversation actor or a store write.
            while self
                .recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
            {
                self.recent.pop_front();
            }
            if self.recent.len() >= limit as usize {
                self.counters.tenant_quota_refused();
                span.record("botfleet.outcome", "tenant_quota");
                let _ = msg.done.send(Err(TurnError::TenantQuota(limit)));
                return;
            }
            self.recent.push_back(now);
        }
        self.activities += 1;
        self.last_activity = now;
        self.bot = msg.bot.clone();
        let conversation_id = msg
            .turn
            .activity
            .conversation_id()
            .unwrap_or_default()
            .to_owned();
        let mut deliver = Deliver {
            turn: msg.turn,
            bot: msg.bot,
            done: msg.done,
            span: span.clone(),
        };
        // Two attempts: the known actor, then a fresh one if that one died.
        for attempt in 0..2 {
            let addr = match self.conversations.get_mut(&conversation_id) {
                Some(entry) if attempt == 0 => {
                    entry.last_activity = now;
                    entry.addr.clone()
                }
                _ => {
                    if attempt > 0 {
                        self.counters.restarted();
                    }
                    let addr = self.start_conversation(&conversation_id);
                    self.conversations.insert(
                        conversation_id.clone(),
                        ConversationEntry {
                            addr: addr.clone(),
                            last_activity: now,
                        },
                    );
                    addr
                }
            };
            match addr.try_send(deliver) {
                Ok(()) => return,
                Err(SendError::Full(d)) => {
                    let _ = d.done.send(Err(TurnError::Busy));
                    return;
                }
                Err(SendError::Closed(d)) => deliver = d,
            }
        }
        let _ = deliver.done.send(Err(TurnError::Busy));
    }
}

/// How many activities this tenant actor routed (for tests and status).
#[derive(Message)]
#[rtype(result = "u64")]
pub struct ActivityCount;

impl Handler<ActivityCount> for TenantActor {
    type Result = u64;

    fn handle(&mut self, _: ActivityCount, _: &mut Self::Context) -> u64 {
        self.activities
    }
}
