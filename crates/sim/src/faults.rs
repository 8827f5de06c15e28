//! Fault injection for the Bot Connector and the token endpoint.
//!
//! Ratios are applied deterministically (an accumulator fires every time it
//! reaches 1, so `0.25` fails exactly every 4th call) and jitter comes from a
//! seeded RNG, so tests that use faults are not flaky.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Teams error codes a conversation can be made to answer with.
pub const CONVERSATION_CODES: &[&str] = &[
    "BotNotInConversationRoster",
    "ConversationBlockedByUser",
    "BotDisabledByAdmin",
    "ConversationNotFound",
    "InvalidBotApiHost",
    "ForbiddenOperationException",
    "NotEnoughPermissions",
];

/// The fault configuration (`POST /_sim/faults` body; every field optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Faults {
    /// Added to every connector call before it is answered.
    pub latency_ms: u64,
    /// Extra latency, uniform in `0..=jitterMs`, from the seeded RNG.
    pub jitter_ms: u64,
    /// Fraction (0..=1) of connector calls answered with `errorStatus`.
    pub error_ratio: f64,
    /// 500, 502, 503 or 504.
    pub error_status: u16,
    /// Fraction (0..=1) of connector calls answered 429 `Throttled`.
    pub throttle_ratio: f64,
    /// `Retry-After` of injected 429s.
    pub retry_after_secs: u64,
    /// Conversations that answer with a fixed Teams error.
    pub conversations: Vec<ConversationFault>,
    /// Token endpoint (and managed identity endpoints) answer 503.
    pub token_endpoint_down: bool,
    /// The next N connector calls fail with `failNextStatus`.
    pub fail_next: u64,
    pub fail_next_status: u16,
    /// Seed of the jitter RNG.
    pub seed: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            jitter_ms: 0,
            error_ratio: 0.0,
            error_status: 503,
            throttle_ratio: 0.0,
            retry_after_secs: 1,
            conversations: Vec::new(),
            token_endpoint_down: false,
            fail_next: 0,
            fail_next_status: 503,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConversationFault {
    pub conversation_id: String,
    /// 403 or 404.
    pub status: u16,
    /// One of [`CONVERSATION_CODES`].
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Only calls whose path starts with this (e.g. `/amer/`): a conversation
    /// that answers 403 `InvalidBotApiHost` at the public host and succeeds
    /// at the GCC one, as Teams does for a GCC tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

impl Faults {
    /// Rejects values the sim cannot act on, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, r) in [
            ("errorRatio", self.error_ratio),
            ("throttleRatio", self.throttle_ratio),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("{name} must be between 0 and 1, got {r}"));
            }
        }
        if ![500, 502, 503, 504].contains(&self.error_status) {
            return Err(format!(
                "errorStatus must be 500, 502, 503 or 504, got {}",
                self.error_status
            ));
        }
        if !(400..=599).contains(&self.fail_next_status) {
            return Err(format!(
                "failNextStatus must be an HTTP error status (400-599), got {}",
                self.fail_next_status
            ));
        }
        for c in &self.conversations {
            if c.status != 403 && c.status != 404 {
                return Err(format!(
                    "conversations[{}].status must be 403 or 404, got {}",
                    c.conversation_id, c.status
                ));
            }
            if !CONVERSATION_CODES.contains(&c.code.as_str()) {
                return Err(format!(
                    "conversations[{}].code must be one of {}, got {}",
                    c.conversation_id,
                    CONVERSATION_CODES.join(", "),
                    c.code
                ));
            }
        }
        Ok(())
    }
}

/// What an injected fault makes the connector answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Injected {
    Error {
        status: u16,
        code: String,
        message: String,
    },
    Throttle {
        retry_after_secs: u64,
    },
}

#[derive(Debug)]
pub struct FaultState {
    pub config: Faults,
    fail_next_left: u64,
    error_acc: f64,
    throttle_acc: f64,
    rng: StdRng,
    pub injected: u64,
}

impl Default for FaultState {
    fn default() -> Self {
        Self::new(Faults::default())
    }
}

impl FaultState {
    pub fn new(config: Faults) -> Self {
        Self {
            fail_next_left: config.fail_next,
            rng: StdRng::seed_from_u64(config.seed),
            error_acc: 0.0,
            throttle_acc: 0.0,
            injected: 0,
            config,
        }
    }

    pub fn fail_next_left(&self) -> u64 {
        self.fail_next_left
    }

    pub fn is_active(&self) -> bool {
        self.config != Faults::default() || self.fail_next_left > 0
    }

    /// Latency to add to this call.
    pub fn latency(&mut self) -> Option<Duration> {
        let jitter = if self.config.jitter_ms > 0 {
            self.rng.gen_range(0..=self.config.jitter_ms)
        } else {
            0
        };
        let total = self.config.latency_ms.saturating_add(jitter);
        (total > 0).then(|| Duration::from_millis(total))
    }

    /// The fault for this connector call (at `path`), if any. Order:
    /// failNext, the conversation's fault, errorRatio, throttleRatio.
    pub fn decide(&mut self, conversation_id: Option<&str>, path: &str) -> Option<Injected> {
        let out = self.decide_inner(conversation_id, path);
        if out.is_some() {
            self.injected += 1;
        }
        out
    }

    fn decide_inner(&mut self, conversation_id: Option<&str>, path: &str) -> Option<Injected> {
        if self.fail_next_left > 0 {
            self.fail_next_left -= 1;
            let status = self.config.fail_next_status;
            // A 429 from Teams always says when to come back.
            if status == 429 {
                return Some(Injected::Throttle {
                    retry_after_secs: self.config.retry_after_secs,
                });
            }
            return Some(Injected::Error {
                status,
                code: code_for_status(status).into(),
                message: "injected failure (failNext)".into(),
            });
        }
        if let Some(id) = conversation_id {
            if let Some(f) = self.config.conversations.iter().find(|f| {
                f.conversation_id == id
                    && f.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
            }) {
                return Some(Injected::Error {
                    status: f.status,
                    code: f.code.clone(),
                    message: f
                        .message
                        .clone()
                        .unwrap_or_else(|| default_message(&f.code).into()),
                });
            }
        }
        if fires(&mut self.error_acc, self.config.error_ratio) {
            let status = self.config.error_status;
            return Some(Injected::Error {
                status,
                code: code_for_status(status).into(),
                message: "injected failure (errorRatio)".into(),
            });
        }
        if fires(&mut self.throttle_acc, self.config.throttle_ratio) {
            return Some(Injected::Throttle {
                retry_after_secs: self.config.retry_after_secs,
            });
        }
        None
    }
}

fn fires(acc: &mut f64, ratio: f64) -> bool {
    if ratio <= 0.0 {
        return false;
    }
    *acc += ratio;
    // The epsilon keeps 0.1 * 10 from landing just under 1.0.
    if *acc >= 1.0 - 1e-9 {
        *acc -= 1.0;
        true
    } else {
        false
    }
}

fn code_for_status(status: u16) -> &'static str {
    match status {
        400 => "BadSyntax",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        412 => "PreconditionFailed",
        413 => "MessageSizeTooBig",
        429 => "Throttled",
        500 | 502 => "ServiceError",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => "Error",
    }
}

fn default_message(code: &str) -> &'static str {
    match code {
        "BotNotInConversationRoster" => "The bot is not part of the conversation roster.",
        "ConversationBlockedByUser" => "User blocked the conversation with the bot.",
        "BotDisabledByAdmin" => "The tenant admin disabled this bot",
        "ConversationNotFound" => "Conversation not found.",
        "InvalidBotApiHost" => {
            "Invalid bot api host. For GCC tenants, please call https://smba.infra.gcc.teams.microsoft.com."
        }
        _ => "Forbidden.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_exact_and_fail_next_counts_down() {
        let mut s = FaultState::new(Faults {
            error_ratio: 0.25,
            fail_next: 2,
            fail_next_status: 500,
            ..Faults::default()
        });
        let hits: Vec<bool> = (0..10).map(|_| s.decide(None, "/").is_some()).collect();
        assert_eq!(
            hits,
            [true, true, false, false, false, true, false, false, false, true]
        );
        assert_eq!(s.fail_next_left(), 0);
        let mut s = FaultState::new(Faults {
            throttle_ratio: 0.1,
            ..Faults::default()
        });
        assert_eq!(
            (0..100).filter(|_| s.decide(None, "/").is_some()).count(),
            10
        );
    }

    #[test]
    fn a_conversation_fault_can_be_limited_to_a_path() {
        let mut s = FaultState::new(Faults {
            conversations: vec![ConversationFault {
                conversation_id: "a:gcc".into(),
                status: 403,
                code: "InvalidBotApiHost".into(),
                message: None,
                path_prefix: Some("/amer/".into()),
            }],
            ..Faults::default()
        });
        let path = "/amer/v3/conversations/a%3Agcc/activities";
        assert!(matches!(
            s.decide(Some("a:gcc"), path),
            Some(Injected::Error { status: 403, .. })
        ));
        assert_eq!(
            s.decide(Some("a:gcc"), "/gcc/v3/conversations/a%3Agcc/activities"),
            None
        );
        assert_eq!(s.decide(Some("a:other"), path), None);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = Faults {
            error_status: 418,
            ..Faults::default()
        };
        assert!(bad.validate().unwrap_err().contains("errorStatus"));
        let bad = Faults {
            conversations: vec![ConversationFault {
                conversation_id: "a:1".into(),
                status: 403,
                code: "Nope".into(),
                message: None,
                path_prefix: None,
            }],
            ..Faults::default()
        };
        assert!(bad.validate().unwrap_err().contains("code must be one of"));
    }
}
