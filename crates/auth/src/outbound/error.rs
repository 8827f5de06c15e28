//! Why a bot could not get an access token.
//!
//! Errors are `Clone` because one token request serves every caller waiting on
//! the same key (single flight): all of them receive the same outcome. Messages
//! carry the endpoint, the app id and what Entra said (`error`,
//! `error_description`), never the credential or a token.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// The token endpoint refused the request (wrong secret, unknown app, wrong
    /// tenant, ...). Permanent: asking again with the same credential gives the
    /// same answer, so the cache does not retry it in a loop.
    #[error(
        "token endpoint {endpoint} refused app `{app_id}` (HTTP {status}): {error}: {description} \
         -- check the bot's app id, its tenant (single- vs multi-tenant) and its credential"
    )]
    Rejected {
        endpoint: String,
        app_id: String,
        status: u16,
        /// OAuth `error`, e.g. `invalid_client`.
        error: String,
        /// Entra's `error_description` (starts with the `AADSTS...` code).
        description: String,
    },
    /// The endpoint could not be reached or kept failing (5xx, 429, connection
    /// errors) for the whole retry budget. Transient: later calls try again.
    #[error(
        "token endpoint {endpoint} unavailable for app `{app_id}` after {attempts} attempt(s): \
         {detail} -- check network access to the endpoint; botfleet retries on the next request"
    )]
    Unavailable {
        endpoint: String,
        app_id: String,
        attempts: u32,
        detail: String,
    },
    /// The endpoint answered 2xx with a body that is not a token response.
    #[error("token endpoint {endpoint} answered app `{app_id}` with an unreadable token response: {detail}")]
    InvalidResponse {
        endpoint: String,
        app_id: String,
        detail: String,
    },
    /// The credential itself is unusable (bad PEM key, unreadable federated token file).
    #[error("the credential of app `{app_id}` is unusable: {detail}")]
    Credential { app_id: String, detail: String },
    /// A certificate credential could not be loaded (bad key or certificate PEM).
    #[error("invalid certificate credential: {0}")]
    InvalidCertificate(String),
    /// [`crate::outbound::TokenCache::token`] was asked for a key no provider was registered for.
    #[error("no token provider is registered for {0}; register the bot's credential with the token cache first")]
    NotRegistered(String),
    /// The background task fetching the token died (a bug, or the runtime shutting down).
    #[error("the token fetch task failed: {0}")]
    Internal(String),
}

impl TokenError {
    /// True when repeating the same request cannot succeed until the configuration changes.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::Rejected { .. }
                | Self::Credential { .. }
                | Self::InvalidCertificate(_)
                | Self::NotRegistered(_)
        )
    }
}
