//! Times: RFC 3339 (Graph's `expirationDateTime`, `lastModifiedDateTime`) and
//! HTTP dates (Graph's `Date` header), as milliseconds since the Unix epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Parses RFC 3339 (`2026-12-01T10:00:00Z`, with fractions of any length and
/// offsets) into ms since the Unix epoch.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(s.trim()).ok().or_else(|| {
        // Graph writes 7 fractional digits (`.1234567Z`); humantime takes up to 9.
        // Offsets other than Z: normalise `+00:00`.
        let z = s.trim().strip_suffix("+00:00").map(|b| format!("{b}Z"))?;
        humantime::parse_rfc3339_weak(&z).ok()
    })?;
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(d.as_millis()).ok()
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-12-01T10:00:00.000Z`.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// An HTTP `Date` header (`Tue, 01 Dec 2026 10:00:00 GMT`) in ms since the Unix epoch.
pub fn parse_http_date_ms(s: &str) -> Option<u64> {
    let t = httpdate::parse_http_date(s).ok()?;
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(d.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_graph_forms() {
        let a = parse_rfc3339_ms("2026-12-01T10:00:00Z");
        assert!(a.is_some());
        assert_eq!(
            parse_rfc3339_ms("2026-12-01T10:00:00.1234567Z"),
            a.map(|v| v + 123)
        );
        assert_eq!(parse_rfc3339_ms("2026-12-01T10:00:00+00:00"), a);
        assert_eq!(parse_rfc3339_ms("not a time"), None);
        assert_eq!(parse_http_date_ms("Tue, 01 Dec 2026 10:00:00 GMT"), a);
        assert_eq!(parse_rfc3339_ms(&rfc3339(a.unwrap_or(0))), a);
    }
}
