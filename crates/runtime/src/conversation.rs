//! The conversation actor: one per (bot, conversation) with recent activity.
//!
//! It owns what must be decided in one place and in order for a conversation:
//! arrival order of its activities and the deliveries it already handled
//! (Teams resends an activity it thinks went unanswered). It keeps no copy of
//! the stored reference: each activity is recorded in one atomic store
//! operation that claims its delivery and writes the reference only when it
//! changed ([`ConversationStore::record_inbound`]), so a reference deactivated
//! or moved by a send outcome, here or on another replica, is seen by the very
//! next activity. It is passivated by its tenant actor when idle, so memory
//! follows activity, not history.
//!
//! [`ConversationStore::record_inbound`]: botfleet_store::conversations::ConversationStore::record_inbound

use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use botfleet_store::conversations::{
    DeliveryKey, InboundChange, InboundRecord, Recorded, ReferenceWrite, StoreError,
};
use futures::FutureExt;
use tokio::sync::oneshot;

use crate::bot::Bot;
use crate::delivery::delivery_key;
use crate::handler::{HandlerOutcome, ReferenceState, Turn};
use crate::metrics::Counters;
use crate::{now_ms, FailureKind, HandlerFailure, TurnError, TurnOutcome, TurnResult};

/// How many recent deliveries a conversation remembers for duplicate detection
/// (grown on demand: most conversations see a handful of activities).
/// Teams resends within seconds, so a short memory is enough.
const SEEN_DELIVERIES: usize = 256;

/// An activity for this conversation, with the channel its outcome goes back on.
pub struct Deliver {
    pub turn: Turn,
    /// The bot the activity was validated for: its handler and store handle
    /// this turn (see [`crate::tenant::Route::bot`]).
    pub bot: Arc<Bot>,
    pub done: oneshot::Sender<TurnResult>,
    /// The tenant actor's span: this conversation's span is its child.
    pub span: tracing::Span,
}

impl Message for Deliver {
    type Result = ();
}

/// Sent by the tenant actor after it forgot this conversation: everything queued
/// before it has been handled, so stopping loses nothing.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Passivate;

pub struct ConversationActor {
    bot: Arc<Bot>,
    conversation_id: String,
    /// Rewrite an unchanged reference this often, to keep `last_seen` meaningful.
    touch_interval: Duration,
    /// How long a claimed delivery stays claimed in the store; `None` leaves
    /// duplicate detection to this actor's memory (one replica).
    claim_ttl: Option<Duration>,
    /// Recent delivery keys (as `u128`), oldest first, and the same as a set.
    seen: VecDeque<u128>,
    seen_set: HashSet<u128>,
    counters: Arc<Counters>,
}

impl ConversationActor {
    pub fn new(
        bot: Arc<Bot>,
        conversation_id: String,
        touch_interval: Duration,
        claim_ttl: Option<Duration>,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            bot,
            conversation_id,
            touch_interval,
            claim_ttl,
            seen: VecDeque::new(),
            seen_set: HashSet::new(),
            counters,
        }
    }

    fn remember(&mut self, key: u128) {
        if self.seen.len() == SEEN_DELIVERIES {
            if let Some(old) = self.seen.pop_front() {
                self.seen_set.remove(&old);
            }
        }
        self.seen.push_back(key);
        self.seen_set.insert(key);
    }

    fn forget(&mut self, key: u128) {
        self.seen_set.remove(&key);
        self.seen.retain(|k| *k != key);
    }
}

/// One line per dropped resend, at debug: resends are normal and the sender
/// controls their rate; the key lets a reader match it with the original.
fn log_duplicate(bot: &str, key: &DeliveryKey, turn: &Turn, seen_by: &'static str) {
    tracing::debug!(
        bot,
        delivery_key = %key,
        activity_type = %turn.activity.kind,
        seen_by,
        "duplicate delivery dropped: Teams resent an activity already taken in"
    );
}

impl Actor for ConversationActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Backpressure lives in the tenant actor's try_send; this only bounds a burst.
        ctx.set_mailbox_capacity(4096);
        self.counters.conversation_actors_started();
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.counters.conversation_actors_stopped();
    }
}

impl Handler<Passivate> for ConversationActor {
    type Result = ();

    fn handle(&mut self, _: Passivate, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Deliver> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        use tracing::Instrument;
        let Deliver {
            turn,
            bot,
            done,
            span: parent,
        } = msg;
        // The conversation id is a span attribute only (never a metric label).
        let span = tracing::info_span!(
            parent: &parent,
            "conversation actor",
            botfleet.bot_id = %bot.id,
            botfleet.conversation_id = %self.conversation_id,
            botfleet.activity_type = turn.activity.activity_type().as_str(),
            botfleet.outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        // The registry's current version of the bot: a handler changed through
        // the admin API applies from this activity on, in arrival order.
        self.bot = bot;
        let key = delivery_key(&turn.activity);
        if let Some(key) = &key {
            if self.seen_set.contains(&key.as_u128()) {
                log_duplicate(&self.bot.id, key, &turn, "conversation actor");
                span.record("botfleet.outcome", "duplicate");
                self.counters.duplicate();
                botfleet_telemetry::metrics::turn_finished(
                    &self.bot.id,
                    turn.tenant_id.as_deref(),
                    self.bot.handler.kind(),
                    botfleet_telemetry::metrics::TurnOutcome::Duplicate,
                    started.elapsed().as_secs_f64(),
                );
                let _ = done.send(Ok(TurnOutcome::Duplicate));
                return;
            }
            self.remember(key.as_u128());
        }

        let tenant = turn.tenant_id.clone().unwrap_or_default();
        let bot = self.bot.clone();
        let conversation_id = self.conversation_id.clone();
        let counters = self.counters.clone();
        let touch_after = self.touch_interval;
        let claim = key.zip(self.claim_ttl);
        let work = async move {
            let store = &bot.store;
            let store_err = |e: StoreError| TurnError::Store(e.to_string());
            let activity = turn.activity.clone();
            let reference = activity.conversation_reference();
            // A removal must not write the reference back as active.
            let change = match (activity.ends_bot_membership(), &reference) {
                (true, _) => InboundChange::Ended {
                    reason: deactivation_reason(&turn),
                },
                (false, Some(reference)) => InboundChange::Seen {
                    reference,
                    touch_after,
                },
                // Validation requires what a reference is made of; a turn
                // without one is a bug upstream, not something to store.
                (false, None) => {
                    return Err(TurnError::Handler(HandlerFailure {
                        kind: FailureKind::Failed,
                        message: "activity without serviceUrl, channelId or conversation".into(),
                    }))
                }
            };
            // One store operation: the claim (Teams resends to whichever replica
            // the load balancer picks) and the reference, atomically.
            let recorded = store
                .record_inbound(
                    &bot.id,
                    &InboundRecord {
                        conversation_id: &conversation_id,
                        claim,
                        change,
                        now_ms: now_ms(),
                    },
                )
                .await
                .map_err(store_err)?;
            let (write, generation, service_url_moved_to) = match recorded {
                Recorded::Duplicate => {
                    if let Some((key, _)) = &claim {
                        log_duplicate(&bot.id, key, &turn, "store claim");
                    }
                    return Ok(TurnOutcome::Duplicate);
                }
                Recorded::Recorded {
                    write,
                    generation,
                    service_url_moved_to,
                } => (write, generation, service_url_moved_to),
            };
            match write {
                ReferenceWrite::Created
                | ReferenceWrite::Updated
                | ReferenceWrite::Reactivated
                | ReferenceWrite::Touched => counters.reference_written(),
                ReferenceWrite::Deactivated => counters.deactivated(),
                ReferenceWrite::Unchanged
                | ReferenceWrite::AlreadyInactive
                | ReferenceWrite::Unknown => {}
            }
            let turn = Turn {
                reference: ReferenceState {
                    generation,
                    service_url_moved_to,
                },
                ..turn
            };
            let handler_span = tracing::info_span!(
                "handler",
                botfleet.bot_id = %bot.id,
                botfleet.activity_type = turn.activity.activity_type().as_str(),
                botfleet.outcome = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            let handled = AssertUnwindSafe(bot.handler.on_turn(&turn))
                .catch_unwind()
                .instrument(handler_span.clone())
                .await;
            let (outcome, failed) = match &handled {
                Ok(Ok(_)) => ("handled", false),
                Ok(Err(crate::HandlerError::Retry(_))) => ("retry", true),
                Ok(Err(crate::HandlerError::Reply(_))) => ("reply_not_delivered", true),
                Ok(Err(_)) => ("failed", true),
                Err(_) => ("panicked", true),
            };
            handler_span.record("botfleet.outcome", outcome);
            if failed {
                handler_span.record("otel.status_code", "error");
            }
            let result = match handled {
                Ok(Ok(outcome)) => Ok(TurnOutcome::Handled(outcome)),
                Ok(Err(e)) => Err(TurnError::Handler(HandlerFailure::from(e))),
                Err(_) => Err(TurnError::HandlerPanicked),
            };
            if let (Err(e), Some((key, _))) = (&result, &claim) {
                if e.resend_helps() {
                    // The bot logic never ran: give the claim back so that
                    // Teams' resend (answered 5xx now) is handled.
                    if let Err(se) = store.release_delivery(&bot.id, key).await {
                        tracing::warn!(bot = %bot.id, delivery_key = %key, error = %se, "could not release the claim of an activity whose bot logic never ran; its resend will be dropped until the claim expires");
                    }
                }
            }
            result
        };
        // ctx.wait: the next activity of this conversation waits until this one
        // is done, which is what keeps them in arrival order.
        ctx.wait(work.instrument(span.clone()).into_actor(self).map(move |result, act, _| {
            if let (Err(e), Some(key)) = (&result, &key) {
                if e.resend_helps() {
                    act.forget(key.as_u128());
                }
            }
            {
                use botfleet_telemetry::metrics::TurnOutcome as Label;
                let label = match &result {
                    Ok(TurnOutcome::Handled(_)) => Label::Handled,
                    Ok(TurnOutcome::Duplicate) => Label::Duplicate,
                    Err(_) => Label::Failed,
                };
                botfleet_telemetry::metrics::turn_finished(
                    &act.bot.id,
                    Some(tenant.as_str()),
                    act.bot.handler.kind(),
                    label,
                    started.elapsed().as_secs_f64(),
                );
            }
            match &result {
                Ok(TurnOutcome::Handled(HandlerOutcome::Invoke(_) | HandlerOutcome::Done)) => {
                    act.counters.handled()
                }
                Ok(TurnOutcome::Duplicate) => act.counters.duplicate(),
                Err(e) => {
                    act.counters.failed();
                    // Inside the turn's span: the line carries its trace and
                    // span ids and is an event of the trace.
                    span.in_scope(|| match e {
                        // The Replier logged it with its outcome already.
                        TurnError::Handler(HandlerFailure {
                            kind: FailureKind::ReplyNotDelivered,
                            ..
                        }) => {
                            tracing::debug!(bot = %act.bot.id, %tenant, error = %e, "activity taken in, reply not delivered")
                        }
                        // A bug in bot logic, and the activity is lost:
                        // ERROR (docs/observability.md, "Logs").
                        TurnError::HandlerPanicked => tracing::error!(
                            bot = %act.bot.id,
                            %tenant,
                            resend_helps = e.resend_helps(),
                            error = %e,
                            "activity not handled: the handler panicked"
                        ),
                        // Teams resends what was answered with an error, and a
                        // failing store logs its own ERROR at the Redis choke
                        // point: WARN here.
                        _ => tracing::warn!(
                            bot = %act.bot.id,
                            %tenant,
                            resend_helps = e.resend_helps(),
                            error = %e,
                            "activity not handled"
                        ),
                    });
                }
            }
            span.record("botfleet.outcome", outcome_label(&result));
            if result.is_err() {
                span.record("otel.status_code", "error");
            }
            let _ = done.send(result);
        }));
    }
}

/// The `botfleet.outcome` attribute of a turn's span.
fn outcome_label(result: &TurnResult) -> &'static str {
    match result {
        Ok(TurnOutcome::Handled(_)) => "handled",
        Ok(TurnOutcome::Duplicate) => "duplicate",
        Err(TurnError::Store(_)) => "store_unavailable",
        Err(TurnError::Handler(f)) => match f.kind {
            FailureKind::ReplyNotDelivered => "reply_not_delivered",
            _ => "handler_failed",
        },
        Err(TurnError::HandlerPanicked) => "handler_panicked",
        Err(TurnError::Busy) => "busy",
        Err(TurnError::TenantQuota(_)) => "tenant_quota",
    }
}

fn deactivation_reason(turn: &Turn) -> &'static str {
    match turn.activity.activity_type() {
        botfleet_protocol::ActivityType::InstallationUpdate => "uninstalled",
        _ => "bot_removed",
    }
}
