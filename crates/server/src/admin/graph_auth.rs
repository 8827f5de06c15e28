//! Delegated Graph credentials and app installation (docs/graph.md):
//!
//! - `GET /admin/v1/graph/credentials`, `GET /admin/v1/graph/credentials/{name}`:
//!   status (`ok`, `never_signed_in`, `consent_revoked`, `refresh_expired`,
//!   `refresh_invalid`), user, last refresh, last error; never a token.
//! - `POST /admin/v1/graph/credentials/{name}/sign-in`: a sign-in URL for the
//!   integration user (what `botfleet graph sign-in NAME` prints).
//! - `GET /admin/v1/graph/credentials/{name}/callback?code&state`: the
//!   redirect URI to register on the app; no API key (the user's browser
//!   comes here), the single-use `state` is the authentication.
//! - `POST /admin/v1/graph/credentials/{name}/refresh`: refresh now (one
//!   refresh across replicas), to check the credential works.
//! - `POST /admin/v1/bots/{bot}/graph/installed-apps`: install the bot's
//!   Teams app for users and read their 1:1 chat ids.
//!
//! Credentials act as their bot: bot roles and scopes apply (read: bots
//! read; sign-in, refresh, install: bots write).

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use botfleet_graph::delegated::{DelegatedError, DelegatedService};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

use super::auth::{authorize, Action};
use super::error::AdminError;
use super::{from_value, no_query, read_json, AdminState};

/// `GET /graph/credentials` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialList {
    /// Each credential's status (`name`, `bot`, `tenant_id`, `scopes`,
    /// `status`, `user`, `signed_in_at`, `last_refresh`,
    /// `access_token_expires_at`, `last_error`, `last_error_at`,
    /// `refreshes`, `version`).
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
}

fn delegated(state: &AdminState) -> Result<Arc<DelegatedService>, AdminError> {
    state
        .graph_auth
        .as_ref()
        .and_then(|g| g.delegated.clone())
        .ok_or_else(|| {
            AdminError::field(
                "name",
                "no delegated Graph credentials are configured ([[graph_auth.credentials]])",
            )
        })
}

fn admin_error(e: DelegatedError) -> AdminError {
    match e {
        DelegatedError::UnknownCredential(_) => AdminError::field("name", e.to_string()),
        DelegatedError::Store(_) => AdminError::StoreUnavailable,
        other => AdminError::BotConflict(other.to_string()),
    }
}

/// The bot a credential acts as (for the key's scope), or an error.
fn bot_of(state: &AdminState, name: &str) -> Result<String, AdminError> {
    let d = delegated(state)?;
    state
        .graph_auth
        .as_ref()
        .and_then(|g| g.bot_of(name))
        .filter(|_| d.names().iter().any(|n| n == name))
        .ok_or_else(|| admin_error(DelegatedError::UnknownCredential(name.to_owned())))
}

/// Every delegated credential this key's bots own, with its status.
#[utoipa::path(
    tag = "graph",
    operation_id = "listGraphCredentials",
    responses((status = 200, description = "The credentials.", body = CredentialList)),
    security(("api_key" = []))
)]
#[get("/graph/credentials")]
pub async fn list_credentials(
    req: HttpRequest,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let call = authorize(&req, &state, Action::GraphCredentialsGet, None, false).await?;
    no_query(&req)?;
    let d = delegated(&state)?;
    let mut items = Vec::new();
    for s in d.statuses().await.map_err(admin_error)? {
        if call.principal.reaches(&s.bot) {
            items.push(serde_json::to_value(s).unwrap_or_default());
        }
    }
    Ok(HttpResponse::Ok().json(CredentialList { items }))
}

/// One credential's status.
#[utoipa::path(
    tag = "graph",
    operation_id = "getGraphCredential",
    params(("name" = String, Path, description = "The credential's name.")),
    responses((status = 200, description = "The status.", body = Object)),
    security(("api_key" = []))
)]
#[get("/graph/credentials/{name}")]
pub async fn get_credential(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let name = path.into_inner();
    let bot = bot_of(&state, &name).ok();
    let call = authorize(
        &req,
        &state,
        Action::GraphCredentialsGet,
        bot.as_deref(),
        true,
    )
    .await?;
    let result = async {
        no_query(&req)?;
        bot_of(&state, &name)?;
        delegated(&state)?.status(&name).await.map_err(admin_error)
    }
    .await;
    let status = call.finish(&state, result).await?;
    Ok(HttpResponse::Ok().json(status))
}

/// Starts a sign-in: the URL the integration user opens (valid 10 minutes,
/// once). The app registration must list `redirectUri` as a web redirect URI.
#[utoipa::path(
    tag = "graph",
    operation_id = "signInGraphCredential",
    params(("name" = String, Path, description = "The credential's name.")),
    responses((status = 200, description = "`{url, redirect_uri, expires_at}`.", body = Object)),
    security(("api_key" = []))
)]
#[post("/graph/credentials/{name}/sign-in")]
pub async fn sign_in(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let name = path.into_inner();
    let bot = bot_of(&state, &name).ok();
    let call = authorize(
        &req,
        &state,
        Action::GraphCredentialsSignIn,
        bot.as_deref(),
        true,
    )
    .await?;
    let result = async {
        no_query(&req)?;
        bot_of(&state, &name)?;
        let base = state
            .graph_auth
            .as_ref()
            .map(|g| g.redirect_base_url.clone())
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| {
                let c = req.connection_info();
                format!("{}://{}", c.scheme(), c.host())
            });
        let redirect = format!("{base}{}/graph/credentials/{name}/callback", super::PREFIX);
        delegated(&state)?
            .begin_sign_in(&name, &redirect)
            .await
            .map_err(admin_error)
    }
    .await;
    let signin = call.finish(&state, result).await?;
    Ok(HttpResponse::Ok().json(signin))
}

#[derive(Deserialize)]
struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

fn page(status: actix_web::http::StatusCode, text: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Content-Security-Policy", "default-src 'none'"))
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(text)
}

/// The OAuth redirect URI: the identity provider sends the user's browser
/// here with `code` and `state`. 200 (plain text) once the tokens are
/// stored; 400 for an unknown, expired, used or foreign state, or a refused
/// sign-in. Needs no API key: the state is single use and bound to the
/// credential.
#[utoipa::path(
    tag = "graph",
    operation_id = "graphCredentialCallback",
    params(
        ("name" = String, Path, description = "The credential's name."),
        ("code" = Option<String>, Query, description = "Authorization code."),
        ("state" = Option<String>, Query, description = "The state of the sign-in URL."),
    ),
    responses(
        (status = 200, description = "Signed in.", content_type = "text/plain"),
        (status = 400, description = "Unknown, expired or used state, or a refused sign-in.", content_type = "text/plain"),
    )
)]
#[get("/graph/credentials/{name}/callback")]
pub async fn callback(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AdminState>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let name = path.into_inner();
    let Ok(q) = web::Query::<CallbackQuery>::from_query(req.query_string()) else {
        return page(
            StatusCode::BAD_REQUEST,
            "botfleet: the callback's query is malformed.\n".into(),
        );
    };
    let Ok(d) = delegated(&state) else {
        return page(
            StatusCode::NOT_FOUND,
            "botfleet: no delegated Graph credentials are configured.\n".into(),
        );
    };
    let Some(st) = q.state.as_deref().filter(|s| !s.is_empty()) else {
        return page(StatusCode::BAD_REQUEST, "botfleet: the callback carries no `state`: open the URL `botfleet graph sign-in NAME` printed.\n".into());
    };
    let error = q.error.as_ref().map(|e| {
        format!(
            "{e}: {}",
            q.error_description.as_deref().unwrap_or("no description")
        )
    });
    match d.complete_sign_in(&name, st, q.code.as_deref(), error).await {
        Ok(s) => page(
            StatusCode::OK,
            format!(
                "botfleet: delegated Graph credential `{}` is signed in (status {}). You can close this window.\n",
                s.name, s.status
            ),
        ),
        Err(DelegatedError::Store(_)) => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "botfleet: the store is unavailable; start the sign-in again later.\n".into(),
        ),
        Err(DelegatedError::UnknownCredential(_)) => page(
            StatusCode::NOT_FOUND,
            "botfleet: no delegated Graph credential of this name is configured.\n".into(),
        ),
        // The messages name only the credential and what to do, never the query.
        Err(e) => page(StatusCode::BAD_REQUEST, format!("botfleet: {e}\n")),
    }
}

/// Refreshes the credential now (one refresh however many replicas are
/// asked at once) and answers its status; a refused refresh token answers
/// 409 naming the status (`consent_revoked`, ...) and the fix.
#[utoipa::path(
    tag = "graph",
    operation_id = "refreshGraphCredential",
    params(("name" = String, Path, description = "The credential's name.")),
    responses((status = 200, description = "The status after the refresh.", body = Object)),
    security(("api_key" = []))
)]
#[post("/graph/credentials/{name}/refresh")]
pub async fn refresh(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    token_call(req, path.into_inner(), state, true).await
}

/// Makes sure a usable access token exists (refreshing only when the cached
/// one is within the refresh margin of expiry) and answers the status.
#[utoipa::path(
    tag = "graph",
    operation_id = "checkGraphCredential",
    params(("name" = String, Path, description = "The credential's name.")),
    responses((status = 200, description = "The status.", body = Object)),
    security(("api_key" = []))
)]
#[post("/graph/credentials/{name}/check")]
pub async fn check(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    token_call(req, path.into_inner(), state, false).await
}

async fn token_call(
    req: HttpRequest,
    name: String,
    state: web::Data<AdminState>,
    force: bool,
) -> Result<HttpResponse, AdminError> {
    let bot = bot_of(&state, &name).ok();
    let call = authorize(
        &req,
        &state,
        Action::GraphCredentialsSignIn,
        bot.as_deref(),
        true,
    )
    .await?;
    let result = async {
        no_query(&req)?;
        bot_of(&state, &name)?;
        let d = delegated(&state)?;
        if force {
            d.refresh_now(&name).await.map_err(admin_error)
        } else {
            d.access_token(&name).await.map_err(admin_error)?;
            d.status(&name).await.map_err(admin_error)
        }
    }
    .await;
    let status = call.finish(&state, result).await?;
    Ok(HttpResponse::Ok().json(status))
}

/// `POST /bots/{bot}/graph/installed-apps` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InstallBody {
    /// The users' tenant.
    pub tenant_id: String,
    /// Azure AD object ids of the users (at most 1,000 per call).
    pub users: Vec<String>,
    /// The Teams app catalog id (default: the bot's app id, which is the
    /// catalog id of apps whose manifest id is the bot id).
    #[serde(default)]
    pub teams_app_id: Option<String>,
}

/// Installs the bot's Teams app for users who never talked to it (30
/// installs/s per app per tenant; 409 "already installed" counts as done)
/// and answers each 1:1 chat id: `{items: [{userId, newlyInstalled,
/// installationId, chatId} | {userId, error}]}`. Then a notification to the
/// `users` target reaches them.
#[utoipa::path(
    tag = "graph",
    operation_id = "installGraphApp",
    params(("bot" = String, Path, description = "The bot.")),
    request_body(content = InstallBody),
    responses((status = 200, description = "One result per user.", body = Object)),
    security(("api_key" = []))
)]
#[post("/bots/{bot}/graph/installed-apps")]
pub async fn install_app(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let bot = path.into_inner();
    let call = authorize(&req, &state, Action::GraphAppsInstall, Some(&bot), true).await?;
    let result = async {
        no_query(&req)?;
        let body: InstallBody = from_value(read_json(&req, payload, &["application/json"]).await?)?;
        if body.users.is_empty() || body.users.len() > 1000 {
            return Err(AdminError::field(
                "users",
                "name 1 to 1,000 user object ids",
            ));
        }
        if body.tenant_id.trim().is_empty() {
            return Err(AdminError::field(
                "tenantId",
                "must be the users' tenant id",
            ));
        }
        let g = state
            .graph_auth
            .clone()
            .ok_or(AdminError::StoreUnavailable)?;
        let results = g
            .install_for_users(
                &bot,
                &body.tenant_id,
                body.teams_app_id.as_deref(),
                &body.users,
            )
            .await
            .map_err(AdminError::BotConflict)?;
        let items: Vec<serde_json::Value> = body
            .users
            .iter()
            .zip(results)
            .map(|(u, r)| match r {
                Ok(chat) => serde_json::to_value(chat).unwrap_or_default(),
                Err(e) => serde_json::json!({ "userId": u, "error": e }),
            })
            .collect();
        Ok(serde_json::json!({ "items": items }))
    }
    .await;
    let out = call.finish(&state, result).await?;
    Ok(HttpResponse::Ok().json(out))
}
