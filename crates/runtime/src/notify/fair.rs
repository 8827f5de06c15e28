//! Fair scheduling of deliveries across tenants.
//!
//! Teams limits each bot per tenant (50 sends/s) independently of other
//! tenants, so a job to one huge tenant and many small ones is as fast as
//! possible only when every tenant is served side by side: one FIFO queue per
//! tenant, served round-robin, with at most `per_tenant` deliveries in flight
//! per tenant (more would only wait in the rate limiter and hold workers).
//! A tenant the rate limiter says is full is paused until it has room again;
//! its queue waits, the other tenants go on.
//!
//! Within a tenant, items are kept per job (a "lane") and the lanes are
//! served round-robin too: the tenant's 50 sends/s are shared by the jobs
//! that have work there, so a one-target job to a tenant where a 10,000-target
//! job is running goes next, not after the big job's items in hand.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// One tenant's items by lane (job), lanes in serving order.
struct Lanes<T> {
    lanes: VecDeque<(String, VecDeque<T>)>,
    len: usize,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Self {
            lanes: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> Lanes<T> {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn lane(&mut self, lane: &str) -> &mut VecDeque<T> {
        let i = match self.lanes.iter().position(|(l, _)| l == lane) {
            Some(i) => i,
            None => {
                self.lanes.push_back((lane.to_owned(), VecDeque::new()));
                self.lanes.len() - 1
            }
        };
        &mut self.lanes[i].1
    }

    fn push_back(&mut self, lane: &str, item: T) {
        self.lane(lane).push_back(item);
        self.len += 1;
    }

    fn push_front(&mut self, lane: &str, item: T) {
        self.lane(lane).push_front(item);
        self.len += 1;
    }

    /// The head of the first lane; that lane then goes to the back.
    fn pop_front(&mut self) -> Option<T> {
        let (lane, mut items) = self.lanes.pop_front()?;
        let item = items.pop_front();
        if !items.is_empty() {
            self.lanes.push_back((lane, items));
        }
        if item.is_some() {
            self.len -= 1;
        }
        item
    }

    fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.len = 0;
        self.lanes.drain(..).flat_map(|(_, items)| items)
    }
}

struct TenantQueue<T> {
    items: Lanes<T>,
    in_flight: usize,
    paused_until: Option<Instant>,
}

impl<T> Default for TenantQueue<T> {
    fn default() -> Self {
        Self {
            items: Lanes::default(),
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

    /// Queues `item` of `lane` (its job) for `tenant`.
    pub(crate) fn push(&mut self, tenant: &str, lane: &str, item: T) {
        self.entry(tenant).items.push_back(lane, item);
        self.queued += 1;
    }

    /// Puts an item back at the head of its lane (it was throttled).
    pub(crate) fn push_front(&mut self, tenant: &str, lane: &str, item: T) {
        self.entry(tenant).items.push_front(lane, item);
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

    /// Takes every queued item out (not those in flight): what a draining
    /// notifier gives back.
    pub(crate) fn take_all(&mut self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.queued);
        for q in self.queues.values_mut() {
            out.extend(q.items.drain());
            q.paused_until = None;
        }
        self.queued = 0;
        out
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
            q.push("big", "j", format!("big-{i}"));
        }
        q.push("small-1", "j", "s1".to_string());
        q.push("small-2", "j", "s2".to_string());
        let now = Instant::now();
        let first: Vec<String> = (0..3).filter_map(|_| q.next(now)).map(|(t, _)| t).collect();
        // Both small tenants start within the first round, not after 1000 big ones.
        assert_eq!(first, ["big", "small-1", "small-2"]);
        assert_eq!(q.queued(), 999);
    }

    #[test]
    fn a_tenant_at_its_in_flight_cap_or_paused_waits_while_others_go_on() {
        let mut q = FairQueue::new(1);
        q.push("a", "j", 1);
        q.push("a", "j", 2);
        q.push("b", "j", 3);
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
    fn jobs_in_one_tenant_are_served_round_robin() {
        let mut q = FairQueue::new(100);
        for i in 0..1000 {
            q.push("t", "big", format!("big-{i}"));
        }
        q.push("t", "small", "small-0".to_string());
        let now = Instant::now();
        let first: Vec<String> = (0..3).filter_map(|_| q.next(now)).map(|(_, i)| i).collect();
        // The small job's one item goes second, not after 1000 big ones.
        assert_eq!(first, ["big-0", "small-0", "big-1"]);
        let all = q.take_all();
        assert_eq!(all.len(), 998);
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn a_throttled_item_goes_back_to_the_head_of_its_queue() {
        let mut q = FairQueue::new(4);
        q.push("a", "j", 1);
        q.push("a", "j", 2);
        let now = Instant::now();
        let (t, first) = q.next(now).expect("item");
        q.push_front(&t, "j", first);
        q.done(&t);
        assert_eq!(q.next(now), Some(("a".into(), 1)));
    }
}
