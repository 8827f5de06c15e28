//! Bot Connector REST client for botfleet
//! (https://learn.microsoft.com/azure/bot-service/rest-api/bot-framework-rest-connector-api-reference;
//! limits: https://learn.microsoft.com/microsoftteams/platform/bots/how-to/rate-limit).
//!
//! - [`client`] has [`Connector`] (one per process: connection pool, rate
//!   limiter) and [`BotClient`] (one per bot): send, reply, update, delete,
//!   create conversation, (paged) members;
//! - [`config`] has [`ConnectorConfig`], the per-bot [`BotSettings`],
//!   [`RetryPolicy`] and [`AmbiguousPolicy`];
//! - [`error`] has [`ConnectorError`] and the Teams error table: what is
//!   retried, what deactivates a reference, what moves it to GCC.
//!
//! Guarantees: no request to a serviceUrl outside the bot's allowlist; no
//! request the local Teams rate limits (per thread, per bot per tenant) would
//! reject; only 412/429/502/503/504 and failures before sending are retried;
//! a creating request whose fate is unknown is never resent silently.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod error;

use async_trait::async_trait;
use botfleet_auth::outbound::{TokenError, TokenHandle};
use botfleet_auth::Secret;

pub use client::{encode_segment, BotClient, Connector, Delivered, Target};
pub use config::{AmbiguousPolicy, BotSettings, ConnectorConfig, RetryPolicy, GCC_SERVICE_URL};
pub use error::{Action, ConnectorError, Failure};

/// Where a bot's bearer tokens come from. [`TokenHandle`] (the shared token
/// cache) implements it; tests and other runtimes can supply their own.
#[async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// A usable token.
    async fn token(&self) -> Result<Secret, TokenError>;
    /// A token other than `rejected`, which the Bot Connector answered with 401.
    async fn refresh_rejected(&self, rejected: &Secret) -> Result<Secret, TokenError>;
}

#[async_trait]
impl TokenSource for TokenHandle {
    async fn token(&self) -> Result<Secret, TokenError> {
        TokenHandle::token(self).await
    }

    async fn refresh_rejected(&self, rejected: &Secret) -> Result<Secret, TokenError> {
        TokenHandle::refresh_rejected(self, rejected).await
    }
}
