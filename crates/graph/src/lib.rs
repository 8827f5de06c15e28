//! botfleet's Microsoft Graph change notifications for Teams messages
//! (docs/graph.md is the user's guide):
//!
//! - [`model`]: subscription definitions, action rules, inbox payloads and the
//!   Graph JSON read;
//! - [`client`]: the Graph calls (subscriptions, message reads), each answer's
//!   `Date` kept;
//! - [`crypto`]: rich notifications (RSA-OAEP key unwrap, HMAC-SHA256 checked
//!   before AES-256-CBC decryption), certificate encoding;
//! - [`tokens`]: `validationTokens` verification (signature, issuer, audience,
//!   publisher app id);
//! - [`service`]: the subscription actors (create, renew, recreate, reauthorize,
//!   resync under a per-subscription lease), the reconciliation, the public
//!   endpoint's logic (handshake, clientState, durable inbox) and the
//!   processor that routes each message to its action exactly once.
#![forbid(unsafe_code)]

pub mod apps;
pub mod client;
pub mod crypto;
pub mod delegated;
pub mod model;
pub mod service;
pub mod time;
pub mod tokens;

pub use model::{ActionRule, SubscriptionSpec};
pub use service::{GraphApp, GraphApps, GraphConfig, GraphService, JobStarter};
