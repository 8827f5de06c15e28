//! Fair scheduling of deliveries across tenants.
//!
//! Teams limits each bot per tenant (50 sends/s) independently of other
//! tenants, so a job to one huge tenant and many small ones is as fast as
//! possible only when every tenant is served side by side: one FIFO queue per
//! tenant, served round-robin, with at most `per_tenant` deliveries in flight
//! per tenant (more would only wait in the rate limiter and hold workers).
//! A tenant the rate limiter says is full is paused until it has room again;
//! its queue waits, the other tenants go on.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

struct TenantQueue<T> {
    items: VecDeque<T>,
    in_flight: usize,
    paused_until: Option<Instant>,
}

impl<T> Default for TenantQueue<T> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            in_flight: 0,
            paused_until: None,
        }
    }
}

/// Per-tenant FIFO queues served round-robin. Not thread-safe: one owner
/// (the notifier's dispatcher) drives it.
pub(crate) struct FairQueue<T> {
    queues: HashMap<String, TenantQueue<T>>,
    /// Tenants in serving order; a tenant is in the ring while it has a queue entry.
    ring: VecDeque<String>,
    queued: usize,
    per_tenant: usize,
}

impl<T> FairQueue<T> {
    /// `per_tenant`: most deliveries of one tenant in flight at once (at least 1).
    pub(crate) fn new(per_tenant: usize) -> Self {
        Self {
            queues: HashMap::new(),
            ring: VecDeque::new(),
            queued: 0,
            per_tenant: per_tenant.max(1),
        }
    }

    /// Items waiting (not in flight).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    fn entry(&mut self, tenant: &str) -> &mut TenantQueue<T> {
        if !self.queues.contains_key(tenant) {
            self.ring.push_back(tenant.to_owned());
        }
        self.queues.entry(tenant.to_owned()).or_default()
    }

    pub(crate) fn push(&mut self, tenant: &str, item: T) {
        self.entry(tenant).items.push_back(item);
        self.queued += 1;
    }

    /// Puts an item back at the head of its tenant's queue (it was throttled).
    pub(crate) fn push_front(&mut self, tenant: &str, item: T) {
        self.entry(tenant).items.push_front(item);
        self.queued += 1;
    }

    /// No item of `tenant` starts before `until`.
    pub(crate) fn pause(&mut self, tenant: &str, until: Instant) {
        let q = self.entry(tenant);
        q.paused_until = Some(q.paused_until.map_or(until, |p| p.max(until)));
    }

    /// The next item to start, round-robin over tenants that have one, are not
    /// paused at `now` and have fewer than `per_tenant` in flight; it counts as
    /// in flight until [`FairQueue::done`].
    pub(crate) fn next(&mut self, now: Instant) -> Option<(String, T)> {
        for _ in 0..self.ring.len() {
            let tenant = self.ring.pop_front()?;
            let per_tenant = self.per_tenant;
            let Some(q) = self.queues.get_mut(&tenant) else {
                continue;
            };
            if q.paused_until.is_some_and(|p| p <= now) {
                q.paused_until = None;
            }
            let ready = q.paused_until.is_none() && q.in_flight < per_tenant;
            let item = if ready { q.items.pop_front() } else { None };
            match item {
                Some(item) => {
                    q.in_flight += 1;
                    self.queued -= 1;
                    self.ring.push_back(tenant.clone());
                    return Some((tenant, item));
                }
                None if q.items.is_empty() && q.in_flight == 0 && q.paused_until.is_none() => {
                    // Forgotten: memory follows what is queued, not every tenant ever seen.
                    self.queues.remove(&tenant);
                }
                None => self.ring.push_back(tenant),
            }
        }
        None
    }

    /// An item of `tenant` taken by [`FairQueue::next`] finished.
    pub(crate) fn done(&mut self, tenant: &str) {
        if let Some(q) = self.queues.get_mut(tenant) {
            q.in_flight = q.in_flight.saturating_sub(1);
            if q.items.is_empty() && q.in_flight == 0 && q.paused_until.is_none() {
                self.queues.remove(tenant);
                self.ring.retain(|t| t != tenant);
            }
        }
    }

    /// When the earliest pause of a tenant with queued items ends.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        self.queues
            .values()
            .filter(|q| !q.items.is_empty())
            .filter_map(|q| q.paused_until)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tenants_are_served_round_robin_whatever_their_size() {
        let mut q = FairQueue::new(100);
        for i in 0..1000 {
            q.push("big", format!("big-{i}"));
        }
        q.push("small-1", "s1".to_string());
        q.push("small-2", "s2".to_string());
        let now = Instant::now();
        let first: Vec<String> = (0..3).filter_map(|_| q.next(now)).map(|(t, _)| t).collect();
        // Both small tenants start within the first round, not after 1000 big ones.
        assert_eq!(first, ["big", "small-1", "small-2"]);
        assert_eq!(q.queued(), 999);
    }

    #[test]
    fn a_tenant_at_its_in_flight_cap_or_paused_waits_while_others_go_on() {
        let mut q = FairQueue::new(1);
        q.push("a", 1);
        q.push("a", 2);
        q.push("b", 3);
        let now = Instant::now();
        assert_eq!(q.next(now), Some(("a".into(), 1)));
        assert_eq!(q.next(now), Some(("b".into(), 3)));
        // a has one in flight: its second item waits.
        assert_eq!(q.next(now), None);
        q.done("a");
        q.pause("a", now + Duration::from_secs(1));
        assert_eq!(q.next(now), None);
        assert_eq!(q.next_wake(), Some(now + Duration::from_secs(1)));
        assert_eq!(q.next(now + Duration::from_secs(1)), Some(("a".into(), 2)));
        q.done("a");
        q.done("b");
        assert_eq!(q.queued(), 0);
        assert!(q.queues.is_empty(), "finished tenants are forgotten");
    }

    #[test]
    fn a_throttled_item_goes_back_to_the_head_of_its_queue() {
        let mut q = FairQueue::new(4);
        q.push("a", 1);
        q.push("a", 2);
        let now = Instant::now();
        let (t, first) = q.next(now).expect("item");
        q.push_front(&t, first);
        q.done(&t);
        assert_eq!(q.next(now), Some(("a".into(), 1)));
    }
}
