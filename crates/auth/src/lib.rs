//! Authentication and trust for botfleet.
//!
//! - [`cloud`]: Bot Framework cloud presets (public, gcch, dod, china) and custom clouds;
//! - [`policy`]: the serviceUrl host allowlist and the tenant allowlist of a bot;
//! - [`inbound`]: channel -> bot JWT validation (OpenID metadata + JWKS key store,
//!   verified-token cache);
//! - [`outbound`]: bot -> connector access tokens (client secret, certificate,
//!   workload identity, managed identity) behind one shared, single-flight cache;
//! - [`secret`]: [`Secret`], which never prints its value.
#![forbid(unsafe_code)]

pub mod cloud;
pub mod inbound;
pub mod outbound;
pub mod policy;
pub mod secret;

pub use cloud::Cloud;
pub use policy::{PolicyError, ServiceUrlAllowlist, TenantPolicy};
pub use secret::Secret;
