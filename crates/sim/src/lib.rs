//! botfleet-sim: a local stand-in for the Microsoft side of Teams bots.
//!
//! One server on 127.0.0.1 that plays:
//! - the Bot Framework channel token issuer (OpenID metadata, JWKS with
//!   `endorsements`, RS256 channel -> bot tokens, key rotation);
//! - the Entra token endpoint (client credentials with secret, certificate or
//!   federated assertion) and managed identity endpoints;
//! - the Bot Connector REST API, with Teams' rate limits and fault injection,
//!   recording everything it receives;
//! - an inspection API under `/_sim/` for tests.
//!
//! Start one in-process with [`start`]; see [`SimConfig`] and [`RunningSim`].
//! It depends on no botfleet crate but `botfleet-protocol`, so its checks
//! cannot share a bug with botfleet's own validation.

pub mod client;
pub mod connector;
pub mod error;
pub mod faults;
pub mod http;
pub mod jwt;
pub mod keys;
pub mod limits;
pub mod records;
pub mod server;
pub mod state;
pub mod time;
pub mod token;

pub use error::SimError;
pub use faults::{ConversationFault, Faults};
pub use keys::KeyChoice;
pub use records::{ActivityRecord, Operation, TokenRequestRecord, Violation};
pub use server::{start, RunningSim, SimConfig};
pub use state::{
    ActivityFilter, BotRegistration, Conversation, MintRequest, Sim, TokenKind,
    BOTFRAMEWORK_TENANT, BOTFRAMEWORK_TENANT_ID, CONNECTOR_AUDIENCE,
};
