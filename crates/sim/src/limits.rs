//! The Teams bot rate limits (https://learn.microsoft.com/microsoftteams/platform/bots/how-to/rate-limit) as exact sliding windows.
//!
//! Every admitted request's arrival time is kept (up to the longest window), so a
//! client that keeps every window at or under its limit is never throttled, and
//! one that exceeds any window is, however its bursts are aligned.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Which family of operations a request is limited as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LimitClass {
    /// Send, reply, update and delete of activities.
    Send,
    /// Create conversation.
    Create,
    /// Get (paged) members, get member, activity members.
    Members,
}

/// (window in seconds, max requests in any such window).
type Windows = &'static [(u64, usize)];

const BOT_THREAD_SEND: Windows = &[(1, 7), (2, 8), (30, 60), (3600, 1800)];
const BOT_THREAD_MEMBERS: Windows = &[(1, 14), (2, 16), (30, 120), (3600, 3600)];
const THREAD_SEND: Windows = &[(1, 14), (2, 16)];
const THREAD_MEMBERS: Windows = &[(1, 28), (2, 32)];
const APP_TENANT: Windows = &[(1, 50)];
const LONGEST: Duration = Duration::from_secs(3600);
const SWEEP_EVERY: Duration = Duration::from_secs(30);

fn bot_thread(class: LimitClass) -> Windows {
    match class {
        LimitClass::Send | LimitClass::Create => BOT_THREAD_SEND,
        LimitClass::Members => BOT_THREAD_MEMBERS,
    }
}

fn thread(class: LimitClass) -> Windows {
    match class {
        LimitClass::Send | LimitClass::Create => THREAD_SEND,
        LimitClass::Members => THREAD_MEMBERS,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    BotThread(LimitClass, String, String),
    Thread(LimitClass, String),
    AppTenant(String, String),
}

impl Key {
    fn windows(&self) -> Windows {
        match self {
            Key::BotThread(c, ..) => bot_thread(*c),
            Key::Thread(c, _) => thread(*c),
            Key::AppTenant(..) => APP_TENANT,
        }
    }

    fn scope(&self) -> &'static str {
        match self {
            Key::BotThread(..) => "perBotPerThread",
            Key::Thread(..) => "perThread",
            Key::AppTenant(..) => "perAppPerTenant",
        }
    }
}

/// A limit the request would break.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Breach {
    /// `perBotPerThread`, `perThread` or `perAppPerTenant`.
    pub scope: &'static str,
    /// `send`, `create` or `members`; absent for the per-tenant limit (all operations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<LimitClass>,
    pub window_secs: u64,
    pub max_requests: usize,
    /// Whole seconds until the request would be admitted.
    pub retry_after_secs: u64,
}

#[derive(Debug)]
pub struct RateLimiter {
    arrivals: HashMap<Key, VecDeque<Instant>>,
    last_sweep: Instant,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self {
            arrivals: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }
}

impl RateLimiter {
    /// Admits (and counts) one request, or returns the first limit it breaks
    /// without counting it: throttled requests do not use up the budget.
    pub fn admit(
        &mut self,
        class: LimitClass,
        app_id: &str,
        conversation_id: &str,
        tenant_id: Option<&str>,
        now: Instant,
    ) -> Result<(), Breach> {
        if now.saturating_duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.sweep(now);
        }
        let mut keys = Vec::with_capacity(3);
        keys.push(Key::BotThread(
            class,
            app_id.to_owned(),
            conversation_id.to_owned(),
        ));
        keys.push(Key::Thread(class, conversation_id.to_owned()));
        if let Some(t) = tenant_id.filter(|t| !t.is_empty()) {
            keys.push(Key::AppTenant(app_id.to_owned(), t.to_owned()));
        }
        for key in &keys {
            if let Some(arrivals) = self.arrivals.get(key) {
                if let Some(breach) = check(key, arrivals, now) {
                    return Err(breach);
                }
            }
        }
        for key in keys {
            let arrivals = self.arrivals.entry(key).or_default();
            while arrivals
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= LONGEST)
            {
                arrivals.pop_front();
            }
            arrivals.push_back(now);
        }
        Ok(())
    }

    /// Drops keys with no arrival inside the longest window, keeping memory flat.
    fn sweep(&mut self, now: Instant) {
        self.arrivals.retain(|_, a| {
            a.back()
                .is_some_and(|t| now.saturating_duration_since(*t) < LONGEST)
        });
        self.last_sweep = now;
    }

    pub fn clear(&mut self) {
        self.arrivals.clear();
    }
}

fn check(key: &Key, arrivals: &VecDeque<Instant>, now: Instant) -> Option<Breach> {
    for &(secs, max) in key.windows() {
        let window = Duration::from_secs(secs);
        // Arrivals strictly inside (now - window, now].
        let first_inside =
            arrivals.partition_point(|t| now.saturating_duration_since(*t) >= window);
        let inside = arrivals.len() - first_inside;
        if inside >= max {
            // Admitted once the arrival that leaves `max - 1` behind it is out of the window.
            let oldest_blocking = arrivals[arrivals.len() - max];
            let wait = window.saturating_sub(now.saturating_duration_since(oldest_blocking));
            let retry_after_secs = wait.as_millis().div_ceil(1000).max(1) as u64;
            return Some(Breach {
                scope: key.scope(),
                class: match key {
                    Key::BotThread(c, ..) | Key::Thread(c, _) => Some(*c),
                    Key::AppTenant(..) => None,
                },
                window_secs: secs,
                max_requests: max,
                retry_after_secs,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eighth_send_in_a_second_is_throttled_but_paced_sends_are_not() {
        let mut rl = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..7 {
            rl.admit(
                LimitClass::Send,
                "a",
                "c",
                None,
                t0 + Duration::from_millis(i),
            )
            .expect("under limit");
        }
        let breach = rl
            .admit(
                LimitClass::Send,
                "a",
                "c",
                None,
                t0 + Duration::from_millis(10),
            )
            .expect_err("8th in 1s");
        assert_eq!(breach.scope, "perBotPerThread");
        assert_eq!(breach.window_secs, 1);
        assert_eq!(breach.retry_after_secs, 1);
        // Another conversation is independent.
        rl.admit(
            LimitClass::Send,
            "a",
            "other",
            None,
            t0 + Duration::from_millis(10),
        )
        .expect("other thread");
        // One second after the first arrival, the 1 s window has room again, but
        // the 2 s window (8) now allows exactly one more.
        rl.admit(
            LimitClass::Send,
            "a",
            "c",
            None,
            t0 + Duration::from_millis(1000),
        )
        .expect("window slid");
        let breach = rl
            .admit(
                LimitClass::Send,
                "a",
                "c",
                None,
                t0 + Duration::from_millis(1001),
            )
            .expect_err("2s window");
        assert_eq!(breach.window_secs, 2);
    }

    #[test]
    fn paced_at_the_limit_never_breaches() {
        let mut rl = RateLimiter::default();
        let t0 = Instant::now();
        // 4 per second is under 7/1s, 8/2s, 60/30s (120 in 30 s would breach: stop at 15 s).
        for i in 0..60u64 {
            rl.admit(
                LimitClass::Send,
                "a",
                "c",
                Some("t"),
                t0 + Duration::from_millis(i * 250),
            )
            .expect("paced");
        }
        let breach = rl
            .admit(
                LimitClass::Send,
                "a",
                "c",
                Some("t"),
                t0 + Duration::from_millis(60 * 250),
            )
            .expect_err("61st within 30 s");
        assert_eq!(breach.window_secs, 30);
        assert_eq!(breach.retry_after_secs, 15);
    }

    #[test]
    fn per_thread_all_bots_and_per_tenant() {
        let mut rl = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..14 {
            let app = if i % 2 == 0 { "a" } else { "b" };
            rl.admit(LimitClass::Send, app, "c", None, t0)
                .expect("14 across bots");
        }
        let breach = rl
            .admit(LimitClass::Send, "z", "c", None, t0)
            .expect_err("15th");
        assert_eq!(breach.scope, "perThread");

        let mut rl = RateLimiter::default();
        for i in 0..50 {
            rl.admit(LimitClass::Send, "a", &format!("c{i}"), Some("t"), t0)
                .expect("50 rps");
        }
        let breach = rl
            .admit(LimitClass::Members, "a", "c99", Some("t"), t0)
            .expect_err("51st");
        assert_eq!(breach.scope, "perAppPerTenant");
        assert_eq!(breach.class, None);
        rl.admit(LimitClass::Send, "a", "c99", Some("other"), t0)
            .expect("other tenant");
    }
}
