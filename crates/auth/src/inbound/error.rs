//! Why an inbound activity was refused.
//!
//! Each variant is one check, with a stable snake_case name for problem+json
//! bodies, metrics and tests, and the HTTP status the server answers. Messages
//! never contain the token; the few values taken from it (algorithm, kid) are
//! shortened and stripped of control characters before they are shown.

use thiserror::Error;

use crate::policy::PolicyError;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InboundError {
    #[error("no bearer token: send `Authorization: Bearer <jwt>`")]
    MissingToken,
    #[error("the bearer token is not a well-formed JWT: {0}")]
    MalformedToken(&'static str),
    #[error("token algorithm `{0}` is not accepted; only RS256 is")]
    UnsupportedAlgorithm(String),
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
    /// `refresh` says whether a key refresh was tried for this token (and how it
    /// went) or skipped by the unknown-`kid` rate limit. The metadata URL is not
    /// named: the answer must not tell which cloud a bot path belongs to.
    #[error("the token's signing key `{kid}` is not among the cloud's published signing keys; {refresh}")]
    UnknownKey { kid: String, refresh: String },
    #[error("the token signature does not verify with the published key")]
    Signature,
    #[error("the token issuer is not `{expected}`")]
    Issuer { expected: String },
    #[error("the token audience is not {0}")]
    Audience(String),
    #[error("the token has expired (beyond the allowed clock skew)")]
    Expired,
    #[error("the token has no `exp` claim")]
    MissingExpiry,
    #[error("the token is not valid yet (beyond the allowed clock skew)")]
    NotYetValid,
    #[error("the signing key is not endorsed for channel `{0}`")]
    Endorsement(String),
    /// The key has no endorsements list (or an empty one) and the bot's cloud is
    /// not named in `auth.accept_keys_without_endorsements`.
    #[error("the signing key `{kid}` publishes no endorsements list, which cloud `{cloud}` treats as endorsing nothing (auth.accept_keys_without_endorsements)")]
    NoEndorsements { kid: String, cloud: String },
    #[error("the token's `serviceurl` claim {0}")]
    ServiceUrlClaim(&'static str),
    #[error("{0}")]
    ServiceUrlHost(PolicyError),
    #[error("{0}")]
    TenantNotAllowed(PolicyError),
}

impl InboundError {
    /// Stable name of the failed check.
    pub fn check(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::MalformedToken(_) => "malformed_token",
            Self::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            Self::KeysUnavailable(_) => "keys_unavailable",
            Self::UnknownKey { .. } => "unknown_key",
            Self::Signature => "signature",
            Self::Issuer { .. } => "issuer",
            Self::Audience(_) => "audience",
            Self::Expired => "expired",
            Self::MissingExpiry => "missing_expiry",
            Self::NotYetValid => "not_yet_valid",
            Self::Endorsement(_) | Self::NoEndorsements { .. } => "endorsement",
            Self::ServiceUrlClaim(_) => "service_url_claim",
            Self::ServiceUrlHost(_) => "service_url_host",
            Self::TenantNotAllowed(_) => "tenant_not_allowed",
        }
    }

    /// The HTTP status: 401 for an unauthenticated caller (as Microsoft's SDKs
    /// answer), 403 for an authentic token that is not allowed here, 503 while
    /// keys are not loaded (our problem, the caller should retry).
    pub fn status(&self) -> u16 {
        match self {
            Self::KeysUnavailable(_) => 503,
            Self::Endorsement(_)
            | Self::NoEndorsements { .. }
            | Self::ServiceUrlHost(_)
            | Self::TenantNotAllowed(_) => 403,
            _ => 401,
        }
    }
}

/// A token-supplied value made safe to show: at most 64 characters, no control
/// characters (log and header injection).
pub(crate) fn shown(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}
