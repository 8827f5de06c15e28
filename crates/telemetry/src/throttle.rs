//! Rate limits for log lines whose event can repeat many times a second (a
//! Redis outage fails every command, a 429 storm retries every call): the
//! metric counts every event, the log writes the first one and then at most one
//! line per interval, saying how many it left out, so an outage is visible
//! without flooding the log pipeline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// One rate-limited log line (a `static` per kind of line).
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogThrottle {
    /// A line at most once per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this event may write its line, `n` being the events
    /// left out since the previous line (to log as `suppressed_since_last_line`);
    /// `None` when it must stay silent (it is counted for the next line).
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut last = self.last.lock();
        match *last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }
}

/// The interval of botfleet's rate-limited lines.
pub const EVERY: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_then_one_per_interval_with_the_count_left_out() {
        let t = LogThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.allow_at(t0), Some(0));
        assert_eq!(t.allow_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.allow_at(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.allow_at(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(t.allow_at(t0 + Duration::from_secs(11)), None);
        assert_eq!(t.allow_at(t0 + Duration::from_secs(30)), Some(1));
    }
}
