//! Channel -> bot token validation.
//!
//! [`InboundValidator`] owns one key store per OpenID metadata URL (fetched at
//! start, refreshed on a schedule and on an unknown `kid`, rate-limited, last good
//! keys kept on failure; a cloud first used by a bot registered at run time gets
//! its store then, [`InboundValidator::add_clouds`]) and a bounded cache of
//! verified tokens. `validate` runs
//! the inbound checks in order:
//!
//! bearer token -> well-formed RS256 JWT -> key by `kid` -> signature -> `iss` ->
//! `exp`/`nbf` (skew) -> `aud` -> key endorsements contain `channelId` ->
//! `serviceurl` claim == activity.serviceUrl -> serviceUrl host allowed -> tenant
//! allowed. `check_token` runs the checks of the token alone (up to `aud`), for
//! the server to call before it describes a bad body.
//!
//! The cache only saves the RSA verification of a token seen before: every check
//! after the signature runs again for each activity, so a cached token replayed
//! with another serviceUrl, after its expiry or for another bot still fails.

mod error;
mod keys;
mod validator;

pub use error::InboundError;
pub use keys::KeyStoreStatus;
pub use validator::{
    BotResolver, BotTrust, InboundConfig, InboundValidator, TokenClaimsForLog, TokenRoute,
    Validated,
};
