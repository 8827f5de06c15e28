//! The conversation actor: one per (bot, conversation) with recent activity.
//!
//! It owns what must be decided in one place and in order for a conversation:
//! arrival order of its activities, the ids it already handled (Teams resends an
//! activity it thinks went unanswered), and whether the stored conversation
//! reference is still current. It is passivated by its tenant actor when idle,
//! so memory follows activity, not history.

use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use botfleet_protocol::ConversationReference;
use futures::FutureExt;
use tokio::sync::oneshot;

use crate::bot::Bot;
use crate::handler::{HandlerOutcome, Turn};
use crate::metrics::Counters;
use crate::{now_ms, TurnError, TurnOutcome, TurnResult};

/// How many recent activity ids a conversation remembers for duplicate detection
/// (grown on demand: most conversations see a handful of activities).
/// Teams resends within seconds, so a short memory is enough.
const SEEN_IDS: usize = 256;

/// An activity for this conversation, with the channel its outcome goes back on.
pub struct Deliver {
    pub turn: Turn,
    pub done: oneshot::Sender<TurnResult>,
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
    /// The reference as last written to the store by this actor.
    stored: Option<ConversationReference>,
    stored_at: Option<Instant>,
    /// Rewrite an unchanged reference this often, to keep `last_seen` meaningful.
    touch_interval: Duration,
    /// How long a claimed activity id stays claimed in the store; `None` leaves
    /// duplicate detection to this actor's memory (one replica).
    claim_ttl: Option<Duration>,
    seen: VecDeque<String>,
    seen_set: HashSet<String>,
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
            stored: None,
            stored_at: None,
            touch_interval,
            claim_ttl,
            seen: VecDeque::new(),
            seen_set: HashSet::new(),
            counters,
        }
    }

    fn remember(&mut self, id: &str) {
        if self.seen.len() == SEEN_IDS {
            if let Some(old) = self.seen.pop_front() {
                self.seen_set.remove(&old);
            }
        }
        self.seen.push_back(id.to_owned());
        self.seen_set.insert(id.to_owned());
    }

    fn forget(&mut self, id: &str) {
        self.seen_set.remove(id);
        self.seen.retain(|s| s != id);
    }

    fn needs_write(&self, reference: &ConversationReference) -> bool {
        match (&self.stored, self.stored_at) {
            (Some(stored), Some(at)) => {
                !same_reference(stored, reference) || at.elapsed() >= self.touch_interval
            }
            _ => true,
        }
    }
}

/// Two references reach the same place the same way. The activity id differs on
/// every activity and says nothing about how to reach the conversation.
fn same_reference(a: &ConversationReference, b: &ConversationReference) -> bool {
    a.service_url == b.service_url
        && a.conversation == b.conversation
        && a.channel_id == b.channel_id
        && a.bot == b.bot
        && a.user.as_ref().map(|u| &u.id) == b.user.as_ref().map(|u| &u.id)
        && a.locale == b.locale
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
        let Deliver { turn, done } = msg;
        let activity_id = turn.activity.id.clone().filter(|s| !s.is_empty());
        if let Some(id) = &activity_id {
            if self.seen_set.contains(id) {
                self.counters.duplicate();
                let _ = done.send(Ok(TurnOutcome::Duplicate));
                return;
            }
            self.remember(id);
        }
        let deactivate = turn.activity.ends_bot_membership();
        // A removal must not write the reference back as active.
        let write = if deactivate {
            None
        } else {
            turn.activity
                .conversation_reference()
                .filter(|r| self.needs_write(r))
        };

        let bot = self.bot.clone();
        let conversation_id = self.conversation_id.clone();
        let counters = self.counters.clone();
        // ctx.wait: the next activity of this conversation waits until this one
        // is done, which is what keeps them in arrival order.
        let claim_ttl = self.claim_ttl;
        let claim_id = activity_id.clone().filter(|_| claim_ttl.is_some());
        let work = async move {
            let store = &bot.store;
            let store_err =
                |e: botfleet_store::conversations::StoreError| TurnError::Store(e.to_string());
            // Teams resends to whichever replica the load balancer picks: the
            // claim in the shared store is what makes a resend a duplicate there too.
            if let (Some(id), Some(ttl)) = (&claim_id, claim_ttl) {
                if !store
                    .claim_activity(&bot.id, &conversation_id, id, ttl)
                    .await
                    .map_err(store_err)?
                {
                    return Ok((None, Ok(TurnOutcome::Duplicate)));
                }
            }
            let result = async {
                if deactivate {
                    store
                        .deactivate(
                            &bot.id,
                            &conversation_id,
                            deactivation_reason(&turn),
                            now_ms(),
                        )
                        .await
                        .map_err(store_err)?;
                    counters.deactivated();
                }
                let written = match write {
                    Some(reference) => {
                        store
                            .upsert(&bot.id, &reference, now_ms())
                            .await
                            .map_err(store_err)?;
                        counters.reference_written();
                        Some(reference)
                    }
                    None => None,
                };
                let handled = AssertUnwindSafe(bot.handler.on_turn(&turn))
                    .catch_unwind()
                    .await;
                let outcome = match handled {
                    Ok(Ok(outcome)) => Ok(TurnOutcome::Handled(outcome)),
                    Ok(Err(e)) => Err(TurnError::Handler(e.to_string())),
                    Err(_) => Err(TurnError::HandlerPanicked),
                };
                Ok::<_, TurnError>((written, outcome))
            }
            .await;
            let failed = !matches!(&result, Ok((_, Ok(_))));
            if let (true, Some(id)) = (failed, &claim_id) {
                // Not handled: give the claim back so Teams' resend gets a chance.
                if let Err(e) = store.release_activity(&bot.id, &conversation_id, id).await {
                    tracing::warn!(bot = %bot.id, error = %e, "could not release the claim of an unhandled activity; its resend will be dropped until the claim expires");
                }
            }
            result
        };
        let id_for_retry = activity_id;
        ctx.wait(work.into_actor(self).map(move |result, act, _| {
            if let Ok((Some(reference), _)) = &result {
                act.stored = Some(reference.clone());
                act.stored_at = Some(Instant::now());
            }
            if deactivate {
                act.stored = None;
                act.stored_at = None;
            }
            let result = result.and_then(|(_, outcome)| outcome);
            if result.is_err() {
                // Not handled: let Teams' resend of this id through.
                if let Some(id) = &id_for_retry {
                    act.forget(id);
                }
            }
            match &result {
                Ok(TurnOutcome::Handled(HandlerOutcome::Invoke(_) | HandlerOutcome::Done)) => {
                    act.counters.handled()
                }
                Ok(TurnOutcome::Duplicate) => act.counters.duplicate(),
                Err(e) => {
                    act.counters.failed();
                    tracing::warn!(bot = %act.bot.id, error = %e, "activity not handled");
                }
            }
            let _ = done.send(result);
        }));
    }
}

fn deactivation_reason(turn: &Turn) -> &'static str {
    match turn.activity.activity_type() {
        botfleet_protocol::ActivityType::InstallationUpdate => "uninstalled",
        _ => "bot_removed",
    }
}
