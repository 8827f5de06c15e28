//! Durations in configuration: read as humantime text (`"10s"`, `"1h 30m"`,
//! `"90d"`; https://docs.rs/humantime/latest/humantime/fn.parse_duration.html)
//! and written in the one unit they were most likely written in (`90d`, `6h`,
//! `1500ms`), not humantime's calendar split (`2months 29days 2h 52m 48s` for
//! 90 days). What is written reads back to the same duration.
//!
//! Use as `#[serde(with = "crate::settings::duration")]`.

use std::time::Duration;

use serde::{Deserializer, Serializer};

/// Units from the largest down, in nanoseconds, each with its humantime suffix.
/// No weeks, months or years: people write `14d` and `90d`, and humantime's
/// month and year are 30.44 and 365.25 days.
const UNITS: [(u128, &str); 7] = [
    (86_400_000_000_000, "d"),
    (3_600_000_000_000, "h"),
    (60_000_000_000, "m"),
    (1_000_000_000, "s"),
    (1_000_000, "ms"),
    (1_000, "us"),
    (1, "ns"),
];

/// `d` as a whole number of its largest unit that divides it exactly:
/// `"90d"`, `"6h"`, `"90m"`, `"1500ms"`, `"0s"`. Parseable by
/// [`humantime::parse_duration`] back to exactly `d`.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    for (size, unit) in UNITS {
        // `u128::is_multiple_of` is newer (1.87) than the MSRV (1.85).
        #[allow(clippy::manual_is_multiple_of)]
        if nanos % size == 0 {
            return format!("{}{unit}", nanos / size);
        }
    }
    // Unreachable: every count of nanoseconds is a whole number of `ns`.
    format!("{nanos}ns")
}

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    humantime_serde::deserialize(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_in_the_largest_exact_unit() {
        let cases = [
            (Duration::from_secs(90 * 24 * 3600), "90d"),
            (Duration::from_secs(6 * 3600), "6h"),
            (Duration::from_secs(36 * 3600), "36h"),
            (Duration::from_secs(90 * 60), "90m"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(250), "250us"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::ZERO, "0s"),
        ];
        for (d, text) in cases {
            assert_eq!(format(d), text);
        }
    }

    #[test]
    fn round_trips_through_humantime() {
        for d in [
            Duration::from_secs(90 * 24 * 3600),
            Duration::from_secs(3601),
            Duration::from_millis(86_400_001),
            Duration::new(12, 345_678_901),
            Duration::from_secs(u64::from(u32::MAX)),
            Duration::ZERO,
        ] {
            assert_eq!(humantime::parse_duration(&format(d)).ok(), Some(d), "{d:?}");
        }
    }
}
