//! What went wrong with a Bot Connector call, and what the caller should do
//! about it: the Teams error table (https://learn.microsoft.com/microsoftteams/platform/bots/build-conversational-capability) as code.

use std::time::{Duration, SystemTime};

use botfleet_auth::outbound::TokenError;
use botfleet_auth::PolicyError;
use botfleet_protocol::ErrorResponse;
use botfleet_store::ratelimit::RateLimitError;
use serde::Serialize;
use thiserror::Error;

/// What the caller should do with the conversation reference or the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Nothing special: report the failure.
    Report,
    /// The bot cannot reach this conversation any more (removed, blocked,
    /// disabled by the admin, conversation gone): mark the reference inactive
    /// until the next `installationUpdate` / message re-initiates it.
    DeactivateReference,
    /// The activity id is unknown to Teams (deleted message): drop it.
    ForgetActivityId,
    /// The request itself is wrong (bad payload, too large): fix, do not resend.
    FixRequest,
    /// The bot's registration or credentials are wrong (401 after a fresh token).
    CheckBotRegistration,
    /// Transient: try again later (after `retry_after` when given).
    RetryLater,
}

/// How the retry loop treats an HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// 412 / 429 / 502 / 503 / 504: retry with backoff, honouring Retry-After.
    Retry,
    /// 401: refresh the token once and retry once.
    RefreshToken,
    /// 403 `InvalidBotApiHost`: retry once at the GCC host.
    MoveToGcc,
    /// Not retried.
    Permanent(Action),
}

/// Teams error table (https://learn.microsoft.com/microsoftteams/platform/bots/build-conversational-capability). `code` is the ErrorResponse code (or
/// the sub-code found in a non-standard body), compared case-insensitively.
pub fn classify(status: u16, code: &str) -> Disposition {
    let code = code.to_ascii_lowercase();
    match status {
        401 => Disposition::RefreshToken,
        403 if code == "invalidbotapihost" => Disposition::MoveToGcc,
        403 if matches!(
            code.as_str(),
            "botnotinconversationroster"
                | "conversationblockedbyuser"
                | "botdisabledbyadmin"
                | "messagewritesblocked"
        ) =>
        {
            Disposition::Permanent(Action::DeactivateReference)
        }
        404 if code == "conversationnotfound" => {
            Disposition::Permanent(Action::DeactivateReference)
        }
        404 if code == "activitynotfoundinconversation" => {
            Disposition::Permanent(Action::ForgetActivityId)
        }
        412 | 429 | 502 | 503 | 504 => Disposition::Retry,
        400 | 413 => Disposition::Permanent(Action::FixRequest),
        _ => Disposition::Permanent(Action::Report),
    }
}

/// Code and message of an error answer: the Bot Connector's ErrorResponse, or
/// Teams' `{"errorCode":209,"message":"{... \"subCode\": \"MessageWritesBlocked\" ...}"}`
/// for blocked/uninstalled 1:1 chats, or the raw text.
pub fn parse_error_body(body: &[u8]) -> (String, String) {
    if let Ok(e) = serde_json::from_slice::<ErrorResponse>(body) {
        if !e.error.code.is_empty() || !e.error.message.is_empty() {
            return (e.error.code, e.error.message);
        }
    }
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let message = v
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_owned();
        if message.contains("MessageWritesBlocked") {
            return ("MessageWritesBlocked".into(), message);
        }
        let code = match v.get("errorCode").or_else(|| v.get("code")) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) if !other.is_null() => other.to_string(),
            _ => String::new(),
        };
        if !code.is_empty() || !message.is_empty() {
            return (code, truncate(&message));
        }
    }
    (String::new(), truncate(&text))
}

fn truncate(s: &str) -> String {
    const MAX: usize = 500;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// `Retry-After` as delay-seconds (fractions accepted) or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A call the Bot Connector answered with an error that was not (or no longer) retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub status: u16,
    /// Teams error code (`BotNotInConversationRoster`, `Throttled`, ...); may be empty.
    pub code: String,
    pub message: String,
    pub action: Action,
    /// Requests sent for this call.
    pub attempts: u32,
    /// From the last `Retry-After`, when the budget ran out while throttled.
    pub retry_after: Option<Duration>,
    /// Set when the call moved to the GCC host (403 `InvalidBotApiHost`) and
    /// failed there: the reference should still be updated.
    pub service_url_moved_to: Option<String>,
    /// `X-Correlating-OperationId` / `MS-CV` of the last answer, for Microsoft support.
    pub correlation_id: Option<String>,
}

#[derive(Debug, Error)]
pub enum ConnectorError {
    /// The serviceUrl failed the bot's allowlist; no request was made, the
    /// bot's token went nowhere.
    #[error("serviceUrl refused for bot `{app_id}`, no request made: {source}")]
    ServiceUrlRefused {
        app_id: String,
        #[source]
        source: PolicyError,
    },
    /// The bot's token could not be obtained (the message names the app id).
    #[error("no access token: {0}")]
    Token(#[source] TokenError),
    #[error("the rate limiter failed, nothing was sent: {0}")]
    RateLimiter(#[source] RateLimitError),
    /// The Teams limits for this conversation/tenant allow the next call only
    /// after `retry_after`, longer than the call may wait; nothing was sent.
    #[error("throttled locally to stay within the Teams rate limits; nothing was sent, retry in {retry_after:?}")]
    Throttled { retry_after: Duration },
    /// The Bot Connector refused the call (permanently, or transiently until
    /// the retry budget ran out: then `action` is `RetryLater`).
    #[error("Bot Connector answered HTTP {} `{}`: {} (after {} attempt(s); action: {:?})", .0.status, .0.code, .0.message, .0.attempts, .0.action)]
    Failed(Box<Failure>),
    /// Transport failure (connection refused, DNS, TLS) before any request
    /// left, until the retry budget ran out. Nothing was delivered.
    #[error("could not reach the Bot Connector after {attempts} attempt(s): {detail}; nothing was delivered, retry later")]
    Unreachable { attempts: u32, detail: String },
    /// A creating request timed out or lost its connection after it was sent:
    /// Teams may or may not have delivered it (see `AmbiguousPolicy`).
    #[error("delivery unknown after {attempts} attempt(s): {detail}; the message may or may not have reached Teams (not resent: AmbiguousPolicy::ReportUnknown)")]
    Unknown { attempts: u32, detail: String },
    /// A 2xx answer whose body could not be read for a call that is safe to repeat.
    #[error("unreadable Bot Connector answer: {0}")]
    InvalidResponse(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl ConnectorError {
    /// What to do with the reference / delivery.
    pub fn action(&self) -> Action {
        match self {
            Self::Failed(f) => f.action,
            Self::Token(source) if source.is_permanent() => Action::CheckBotRegistration,
            Self::ServiceUrlRefused { .. } | Self::InvalidRequest(_) => Action::FixRequest,
            Self::Unknown { .. } | Self::InvalidResponse(_) => Action::Report,
            _ => Action::RetryLater,
        }
    }

    /// The reference should be marked inactive (403 roster/blocked/disabled, 404 conversation).
    pub fn deactivates_reference(&self) -> bool {
        self.action() == Action::DeactivateReference
    }

    /// Worth trying again later (as a new call).
    pub fn is_transient(&self) -> bool {
        self.action() == Action::RetryLater
    }

    /// When to try again, if known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after } => Some(*retry_after),
            Self::Failed(f) => f.retry_after,
            _ => None,
        }
    }

    /// HTTP status of the Bot Connector's answer, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Failed(f) => Some(f.status),
            _ => None,
        }
    }

    /// Set when the reference must move to a new serviceUrl even though the call failed.
    pub fn service_url_moved_to(&self) -> Option<&str> {
        match self {
            Self::Failed(f) => f.service_url_moved_to.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teams_error_table() {
        use Disposition::*;
        for s in [412, 429, 502, 503, 504] {
            assert_eq!(classify(s, ""), Retry, "{s}");
        }
        assert_eq!(classify(401, "BotNotRegistered"), RefreshToken);
        assert_eq!(classify(403, "InvalidBotApiHost"), MoveToGcc);
        for code in [
            "BotNotInConversationRoster",
            "ConversationBlockedByUser",
            "BotDisabledByAdmin",
            "MessageWritesBlocked",
        ] {
            assert_eq!(
                classify(403, code),
                Permanent(Action::DeactivateReference),
                "{code}"
            );
        }
        assert_eq!(
            classify(404, "ConversationNotFound"),
            Permanent(Action::DeactivateReference)
        );
        assert_eq!(
            classify(404, "ActivityNotFoundInConversation"),
            Permanent(Action::ForgetActivityId)
        );
        assert_eq!(
            classify(403, "ForbiddenOperationException"),
            Permanent(Action::Report)
        );
        assert_eq!(
            classify(403, "NotEnoughPermissions"),
            Permanent(Action::Report)
        );
        assert_eq!(classify(400, "BadSyntax"), Permanent(Action::FixRequest));
        assert_eq!(
            classify(413, "MessageSizeTooBig"),
            Permanent(Action::FixRequest)
        );
        assert_eq!(classify(500, "ServiceError"), Permanent(Action::Report));
        assert_eq!(classify(408, ""), Permanent(Action::Report));
    }

    #[test]
    fn error_bodies() {
        let b = br#"{"error":{"code":"BotNotInConversationRoster","message":"The bot is not part of the conversation roster."}}"#;
        assert_eq!(
            parse_error_body(b),
            (
                "BotNotInConversationRoster".into(),
                "The bot is not part of the conversation roster.".into()
            )
        );
        let blocked = br#"{"errorCode":209,"message":"{\r\n  \"subCode\": \"MessageWritesBlocked\",\r\n  \"details\": \"Thread is blocked from message writes.\"\r\n}"}"#;
        let (code, message) = parse_error_body(blocked);
        assert_eq!(code, "MessageWritesBlocked");
        assert!(message.contains("blocked"));
        assert_eq!(
            classify(403, &code),
            Disposition::Permanent(Action::DeactivateReference)
        );
        assert_eq!(
            parse_error_body(br#"{"errorCode":42,"message":"x"}"#),
            ("42".into(), "x".into())
        );
        assert_eq!(
            parse_error_body(b"gateway exploded"),
            (String::new(), "gateway exploded".into())
        );
        assert!(parse_error_body(&[b'x'; 2000]).1.len() < 600);
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after(" 0.5 ", now),
            Some(Duration::from_millis(500))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
