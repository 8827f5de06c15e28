//! The sim's Graph clock: `start + real elapsed x scale + advances`, so tests can
//! live through days of subscription renewals in seconds.
//!
//! Only the Graph side runs on it (subscription expiry, `Date` headers,
//! `createdDateTime` of messages, delegated token and refresh token lifetimes,
//! the 4 h retry window of deliveries). Tokens botfleet validates with its own
//! clock (app access tokens, `validationTokens`) stay in real time.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::time::now_ms;

#[derive(Debug)]
struct Anchor {
    real: Instant,
    sim_ms: f64,
    scale: f64,
}

/// A scalable, advanceable clock in milliseconds since the unix epoch.
#[derive(Debug)]
pub struct SimClock {
    anchor: Mutex<Anchor>,
}

impl Default for SimClock {
    fn default() -> Self {
        Self {
            anchor: Mutex::new(Anchor {
                real: Instant::now(),
                sim_ms: now_ms() as f64,
                scale: 1.0,
            }),
        }
    }
}

/// Largest accepted `scale` (a sim day per real 0.1 s is plenty).
pub const MAX_SCALE: f64 = 1_000_000.0;

impl SimClock {
    /// Sim time now, ms since the unix epoch.
    pub fn now_ms(&self) -> u64 {
        let a = self.anchor.lock();
        Self::at(&a, Instant::now())
    }

    fn at(a: &Anchor, real: Instant) -> u64 {
        let elapsed = real.saturating_duration_since(a.real).as_secs_f64() * 1000.0;
        (a.sim_ms + elapsed * a.scale).max(0.0) as u64
    }

    /// Current scale (sim seconds per real second).
    pub fn scale(&self) -> f64 {
        self.anchor.lock().scale
    }

    /// Changes the scale from now on and/or jumps ahead; returns the new now.
    /// `scale` must be in `0..=MAX_SCALE` (0 freezes the clock) and
    /// `advance_secs` must not be negative: sim time never goes back.
    pub fn adjust(&self, scale: Option<f64>, advance_secs: Option<f64>) -> Result<u64, String> {
        if let Some(s) = scale {
            if !s.is_finite() || !(0.0..=MAX_SCALE).contains(&s) {
                return Err(format!("scale must be between 0 and {MAX_SCALE}, got {s}"));
            }
        }
        if let Some(a) = advance_secs {
            if !a.is_finite() || a < 0.0 {
                return Err(format!(
                    "advanceSeconds must be a non-negative number (sim time never goes back), got {a}"
                ));
            }
        }
        let mut a = self.anchor.lock();
        let real = Instant::now();
        a.sim_ms = Self::at(&a, real) as f64 + advance_secs.unwrap_or(0.0) * 1000.0;
        a.real = real;
        if let Some(s) = scale {
            a.scale = s;
        }
        Ok(Self::at(&a, real))
    }

    /// How long to wait in real time for `sim_ms` of sim time to pass (at
    /// least 1 ms; a frozen clock waits `max`).
    pub fn real_wait(&self, sim_ms: u64, max: Duration) -> Duration {
        let scale = self.scale();
        if scale <= 0.0 {
            return max;
        }
        Duration::from_secs_f64((sim_ms as f64 / scale / 1000.0).max(0.001)).min(max)
    }
}

/// An HTTP `Date` header value (RFC 9110 IMF-fixdate) for `ms`.
pub fn http_date(ms: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms))
}

/// Parses an RFC 3339 / ISO 8601 date-time as Graph accepts it
/// (`2026-12-01T10:00:00Z`, fractional seconds up to 7 digits, `+01:00`
/// offsets) into ms since the unix epoch. `None` if it is not one.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        "" => 0, // Graph reads a date-time without an offset as UTC.
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let h: i64 = o.get(1..3)?.parse().ok()?;
            let m: i64 = o.get(4..6)?.parse().ok()?;
            let v = h * 3600 + m * 60;
            if o.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    u64::try_from(secs * 1000 + millis).ok()
}

/// Days since 1970-01-01 (Howard Hinnant's days-from-civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `SystemTime` for `ms` (for libraries that want one).
pub fn system_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::rfc3339;

    #[test]
    fn parses_what_it_formats_and_graph_forms() {
        for ms in [0u64, 951_782_400_123, 1_796_000_000_000] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        }
        assert_eq!(
            parse_rfc3339("2000-02-29T01:00:00+01:00"),
            parse_rfc3339("2000-02-29T00:00:00Z")
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00.1234567Z"),
            Some(951_782_400_123)
        );
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00"), Some(951_782_400_000));
        for bad in [
            "",
            "yesterday",
            "2000-13-01T00:00:00Z",
            "2000-02-29T00:00:00.Z",
            "2000-02-29T00:00:00+0100",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn clock_scales_and_advances_but_never_goes_back() {
        let c = SimClock::default();
        let t0 = c.now_ms();
        let t1 = c.adjust(Some(0.0), Some(86_400.0)).expect("adjust");
        assert!(t1 >= t0 + 86_400_000);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c.now_ms(), t1, "scale 0 freezes the clock");
        assert!(c.adjust(None, Some(-1.0)).is_err());
        assert!(c.adjust(Some(-2.0), None).is_err());
        c.adjust(Some(3600.0), None).expect("scale");
        std::thread::sleep(Duration::from_millis(20));
        assert!(c.now_ms() >= t1 + 60_000, "20 ms at x3600 is over a minute");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
