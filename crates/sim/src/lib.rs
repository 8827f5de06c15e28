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
//!
//! # HTTP API (JSON bodies are camelCase; errors are Bot Connector `ErrorResponse`s)
//!
//! | Route | Body / query | Answer |
//! |---|---|---|
//! | `GET /v1/.well-known/openidconfiguration` (also `openid-configuration`) | | Bot Framework metadata document |
//! | `GET /v1/.well-known/keys`, `/v1/keys`, `/{tenant}/discovery/v2.0/keys` | | JWKS: `kty,use,kid,n,e,endorsements` |
//! | `POST /{tenant}/oauth2/v2.0/token` | form: client credentials (secret or `client_assertion`) | Entra token response / AADSTS error |
//! | `GET /metadata/identity/oauth2/token` (header `Metadata: true`), `GET /msi/token` (header `X-IDENTITY-HEADER`) | `api-version`, `resource`, `client_id` | managed identity token |
//! | `{prefix}/v3/conversations...` | Bot Connector (send, reply, update, delete, create, members, pagedmembers, member) | as Teams |
//! | `POST /_sim/tokens` | [`MintRequest`] | `{tokens:[..], kid}` |
//! | `POST /_sim/federated-token` | `{subject, audience?, lifetimeSecs?}` | `{token, issuer}` |
//! | `GET /_sim/keys`; `POST /_sim/keys/rotate` | `{retireOld?, withoutEndorsements?}` | `{active, unendorsed, published}`; `{kid, endorsementsListed, retired, published}` |
//! | `GET`/`POST /_sim/bots` | [`BotRegistration`] | `{bots:[..]}` / `{appId, credentials}` |
//! | `GET`/`POST /_sim/conversations` | `?id=` / `{conversations:[`[`Conversation`]`]}` | `{total, conversations}` / `{registered, total}` |
//! | `GET`/`POST`/`DELETE /_sim/faults` | [`Faults`] (POST replaces) | `{faults, failNextRemaining, injected}` |
//! | `GET /_sim/activities` | [`ActivityFilter`]: `conversation, since, appId, operation, all, limit` | `{total, last, activities:[`[`ActivityRecord`]`]}` |
//! | `GET /_sim/token-requests` | `?clientId=` | `{total, byClient:{id:{total,ok,rejected}}, requests:[..]}` |
//! | `GET /_sim/violations` | | `{total, violations:[`[`Violation`]`]}` |
//! | `GET /_sim/stats`, `GET /_sim/health`, `POST /_sim/reset` | | counters; `{ok, url, kid}`; `{reset:true}` |
//! | `/graph/v1.0/...`, `GET /{tenant}/oauth2/v2.0/authorize`, `/_sim/graph/...` | | the Microsoft Graph side: see [`graph`] |

pub mod client;
pub mod connector;
pub mod error;
pub mod faults;
pub mod graph;
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
