//! Bot -> connector access tokens (https://learn.microsoft.com/azure/bot-service/rest-api/bot-framework-rest-connector-authentication).
//!
//! - [`provider`]: [`TokenKey`], [`AccessToken`], the [`TokenProvider`] trait and
//!   the token-endpoint exchange every provider shares (AADSTS errors parsed,
//!   transient failures retried within a [`RetryBudget`]);
//! - [`client_credentials`]: client secret, certificate (signed client assertion
//!   with `x5t`) and workload identity (federated token file, re-read per exchange);
//! - [`managed_identity`]: IMDS and App Service identity endpoints;
//! - [`cache`]: [`TokenCache`], one per process: single flight, refresh ahead,
//!   failure status, forced refresh after a connector 401;
//! - [`shared`]: [`SharedTokenTier`], the optional tier that lets replicas share tokens.
//!
//! Tokens and credentials are [`crate::Secret`]s: they never appear in logs,
//! errors or `Debug` output. Typical wiring:
//!
//! ```no_run
//! # async fn demo() -> Result<(), botfleet_auth::outbound::TokenError> {
//! use std::sync::Arc;
//! use botfleet_auth::{Cloud, Secret};
//! use botfleet_auth::outbound::*;
//! let cloud = Cloud::preset("public").expect("preset");
//! let cache = TokenCache::new(TokenCacheConfig::default());
//! let provider = ClientCredentialsProvider::new(
//!     &cloud, "app-id", Some("tenant-id"), ClientCredential::Secret(Secret::new("...")));
//! let handle = cache.register(Arc::new(provider));
//! let _bearer = handle.token().await?;
//! # Ok(()) }
//! ```

pub mod cache;
pub mod client_credentials;
mod error;
pub mod managed_identity;
pub mod provider;
pub mod shared;

pub use cache::{TokenCache, TokenCacheConfig, TokenHandle, TokenOrigin, TokenStatus};
pub use client_credentials::{
    CertificateCredential, ClientCredential, ClientCredentialsProvider, WorkloadIdentityEnv,
};
pub use error::TokenError;
pub use managed_identity::{ManagedIdentityProvider, ManagedIdentitySource};
pub use provider::{default_http_client, AccessToken, RetryBudget, TokenKey, TokenProvider};
pub use shared::{SharedTierError, SharedToken, SharedTokenTier};

#[cfg(test)]
mod tests;
