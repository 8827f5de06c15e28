//! A wrapper that keeps secrets out of logs, errors and Debug output by construction.

use std::cell::Cell;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret value (client secret, access token, API key, webhook key).
///
/// `Debug` and `Display` print `[redacted]`; the value is only reachable through
/// [`Secret::expose`], so every place that uses it is easy to find. It can be read
/// from configuration; serialised it writes `"[redacted]"` (an empty secret writes
/// `""`), except inside [`Secret::revealing`], the one way to store it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call only where it leaves the process for its one purpose.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs `f` with secrets serialising their value instead of `"[redacted]"`,
    /// on this thread only (e.g. to store a bot registration). Nested calls are
    /// fine; the previous mode is restored when `f` returns or panics.
    pub fn revealing<T>(f: impl FnOnce() -> T) -> T {
        struct Restore(bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                REVEAL.with(|r| r.set(self.0));
            }
        }
        let _restore = Restore(REVEAL.with(|r| r.replace(true)));
        f()
    }
}

thread_local! {
    /// Set only inside [`Secret::revealing`].
    static REVEAL: Cell<bool> = const { Cell::new(false) };
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_empty() || REVEAL.with(Cell::get) {
            s.serialize_str(&self.0)
        } else {
            s.serialize_str("[redacted]")
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "hunter2");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            secret: Secret,
        }
        assert!(!format!("{:?}", Holder { secret: s }).contains("hunter2"));
    }

    #[test]
    fn serialised_redacted_unless_revealing() {
        let s = Secret::new("hunter2");
        let json = |s: &Secret| serde_json::to_string(s).unwrap_or_default();
        assert_eq!(json(&s), "\"[redacted]\"");
        assert_eq!(Secret::revealing(|| json(&s)), "\"hunter2\"");
        assert_eq!(json(&s), "\"[redacted]\"", "mode restored");
        let caught = std::panic::catch_unwind(|| Secret::revealing(|| panic!("boom")));
        assert!(caught.is_err());
        assert_eq!(json(&s), "\"[redacted]\"", "restored after a panic");
    }
}
