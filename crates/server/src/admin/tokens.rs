//! `/admin/v1/bots/{bot}/token`: the state of a bot's outbound (Bot Connector)
//! token in this replica's token cache. Never a token value.

use std::time::SystemTime;

use actix_web::{get, web, HttpRequest, HttpResponse};
use botfleet_auth::outbound::{TokenCache, TokenStatus};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{authorize, Action};
use super::bots::{find_settings, Bot};
use super::error::AdminError;
use super::{no_query, rfc3339, AdminState};
use crate::settings::CredentialSettings;

/// Where token status comes from: the process's token cache.
pub trait TokenStatusSource: Send + Sync {
    /// Every cached token key's status (never a token).
    fn token_status(&self) -> Vec<TokenStatus>;
}

impl TokenStatusSource for TokenCache {
    fn token_status(&self) -> Vec<TokenStatus> {
        self.status()
    }
}

/// No token cache (tests, or a deployment whose bots never reply).
impl TokenStatusSource for () {
    fn token_status(&self) -> Vec<TokenStatus> {
        Vec::new()
    }
}

/// One token key of the bot (one per cloud, authority and scope it uses).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenEntry {
    /// The credential kind that obtains it (`client_secret`, `certificate`, ...).
    pub credential: String,
    pub cloud: String,
    /// The Entra tenant of the authority (`botframework.com` for multi-tenant
    /// bots, the tenant id for single-tenant ones, `managed-identity`).
    pub authority: String,
    pub scope: String,
    /// A usable token is cached now.
    pub cached: bool,
    /// RFC 3339 UTC.
    pub expires_at: Option<String>,
    /// When the cache replaces it ahead of expiry.
    pub refresh_at: Option<String>,
    /// When a token was last obtained (endpoint or shared tier).
    pub last_refresh: Option<String>,
    /// `endpoint` or `shared_tier`.
    pub origin: Option<String>,
    /// The last failure, kept after later successes so flapping shows.
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// Token requests this replica sent for this key.
    pub endpoint_requests: u64,
}

/// A bot's token status in the replica that answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenReport {
    pub bot: String,
    pub app_id: String,
    /// The bot's credential kind; `null` when it has none (it never asks for
    /// a token).
    pub credential: Option<String>,
    /// A usable token is cached for every key of the bot (false when none is).
    pub cached: bool,
    /// Empty until the bot first needs a token.
    pub entries: Vec<TokenEntry>,
}

fn time(t: Option<SystemTime>) -> Option<String> {
    let ms = t?.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis();
    Some(rfc3339(u64::try_from(ms).ok()?))
}

/// A bot's outbound token status.
///
/// As seen by the replica that answers (each keeps its own cache, filled from
/// the shared Redis tier when there is one). Never a token value.
#[utoipa::path(
    tag = "tokens",
    operation_id = "getTokenStatus",
    params(("bot" = String, Path, description = "The bot's id.")),
    responses((status = 200, description = "The token status.", body = TokenReport)),
    security(("api_key" = []))
)]
#[get("/bots/{bot}/token")]
pub async fn get_token(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    let id = path.into_inner();
    authorize(&req, &state, Action::TokenGet, Some(&id), true).await?;
    no_query(&req)?;
    let (settings, record) = find_settings(&state, &id).await?;
    let bot = Bot::of(&settings, record.as_ref());
    // Tokens are keyed by the client id that obtains them: the app id, or a
    // user-assigned managed identity's own client id.
    let mut client_ids = vec![settings.app_id.clone()];
    if let Some(CredentialSettings::ManagedIdentity {
        client_id: Some(c), ..
    }) = &settings.credential
    {
        client_ids.push(c.clone());
    }
    let entries: Vec<TokenEntry> = state
        .tokens
        .token_status()
        .into_iter()
        .filter(|s| {
            client_ids
                .iter()
                .any(|c| s.key.app_id.eq_ignore_ascii_case(c))
        })
        .map(|s| TokenEntry {
            credential: s.credential.to_string(),
            cloud: s.key.cloud.clone(),
            authority: s.key.authority.clone(),
            scope: s.key.scope.clone(),
            cached: s.valid,
            expires_at: time(s.expires_at),
            refresh_at: time(s.refresh_at),
            last_refresh: time(s.last_refresh),
            origin: s.origin.and_then(|o| {
                serde_json::to_value(o)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
            }),
            last_error: s.last_error,
            last_error_at: time(s.last_error_at),
            endpoint_requests: s.endpoint_requests,
        })
        .collect();
    Ok(HttpResponse::Ok().json(TokenReport {
        cached: !entries.is_empty() && entries.iter().all(|e| e.cached),
        bot: bot.id,
        app_id: bot.app_id,
        credential: bot.credential,
        entries,
    }))
}
