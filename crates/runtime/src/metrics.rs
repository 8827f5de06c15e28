//! Counters the runtime keeps for metrics and tests. Labels stay low-cardinality:
//! nothing here is per conversation.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::delivery::SendOutcome;

#[derive(Debug, Default)]
pub struct Counters {
    pub activities_handled: AtomicU64,
    pub activities_failed: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    pub references_written: AtomicU64,
    pub references_deactivated: AtomicU64,
    pub conversation_actors: AtomicI64,
    pub conversation_actors_started_total: AtomicU64,
    pub tenant_actors: AtomicI64,
    pub tenant_actors_started_total: AtomicU64,
    pub actor_restarts: AtomicU64,
    pub tenant_quota_refusals: AtomicU64,
    /// Sends (replies) by [`SendOutcome`], indexed in [`SendOutcome::ALL`] order.
    pub sends: [AtomicU64; SendOutcome::ALL.len()],
    /// References moved to another host by a send outcome (GCC).
    pub references_moved: AtomicU64,
    /// Send outcomes not applied because the reference changed since the send read it.
    pub reference_outcomes_stale: AtomicU64,
}

impl Counters {
    pub(crate) fn handled(&self) {
        self.activities_handled.fetch_add(1, Relaxed);
    }
    pub(crate) fn failed(&self) {
        self.activities_failed.fetch_add(1, Relaxed);
    }
    pub(crate) fn duplicate(&self) {
        self.duplicates_dropped.fetch_add(1, Relaxed);
    }
    pub(crate) fn reference_written(&self) {
        self.references_written.fetch_add(1, Relaxed);
    }
    pub(crate) fn deactivated(&self) {
        self.references_deactivated.fetch_add(1, Relaxed);
    }
    pub(crate) fn conversation_actors_started(&self) {
        self.conversation_actors.fetch_add(1, Relaxed);
        self.conversation_actors_started_total.fetch_add(1, Relaxed);
    }
    pub(crate) fn conversation_actors_stopped(&self) {
        self.conversation_actors.fetch_sub(1, Relaxed);
    }
    pub(crate) fn tenant_actors_started(&self) {
        self.tenant_actors.fetch_add(1, Relaxed);
        self.tenant_actors_started_total.fetch_add(1, Relaxed);
    }
    pub(crate) fn tenant_actors_stopped(&self) {
        self.tenant_actors.fetch_sub(1, Relaxed);
    }
    pub(crate) fn tenant_quota_refused(&self) {
        self.tenant_quota_refusals.fetch_add(1, Relaxed);
    }
    pub(crate) fn moved(&self) {
        self.references_moved.fetch_add(1, Relaxed);
    }
    pub(crate) fn outcome_stale(&self) {
        self.reference_outcomes_stale.fetch_add(1, Relaxed);
    }
    pub(crate) fn sent(&self, outcome: SendOutcome) {
        self.sends[outcome.index()].fetch_add(1, Relaxed);
    }
    /// Sends by outcome label, for `/metrics`: `(label, count)` in
    /// [`SendOutcome::ALL`] order, every label present (zero included).
    pub fn sends_by_outcome(&self) -> [(&'static str, u64); SendOutcome::ALL.len()] {
        SendOutcome::ALL.map(|o| (o.label(), self.sends[o.index()].load(Relaxed)))
    }
    pub(crate) fn restarted(&self) {
        self.actor_restarts.fetch_add(1, Relaxed);
    }
}
