//! actix-web routes: metadata documents, token endpoints, the inspection API
//! under `/_sim/`, and (as the default service) the Bot Connector.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use botfleet_protocol::ErrorResponse;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::faults::Faults;
use crate::state::{ActivityFilter, BotRegistration, Conversation, MintRequest, Sim};
use crate::token::{self, ManagedIdentityKind};

type Data = web::Data<Sim>;

/// Largest request body accepted (connector activities, registrations).
pub const MAX_BODY: usize = 16 * 1024 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(MAX_BODY))
        .route("/v1/.well-known/openidconfiguration", web::get().to(openid))
        .route(
            "/v1/.well-known/openid-configuration",
            web::get().to(openid),
        )
        .route("/v1/.well-known/keys", web::get().to(jwks))
        .route("/v1/keys", web::get().to(jwks))
        .route(
            "/common/discovery/instance",
            web::get().to(instance_discovery),
        )
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            web::get().to(entra_openid),
        )
        .route("/{tenant}/discovery/v2.0/keys", web::get().to(jwks))
        .route("/{tenant}/discovery/keys", web::get().to(jwks))
        .route(
            "/{tenant}/oauth2/v2.0/token",
            web::post().to(token_endpoint),
        )
        .route("/metadata/identity/oauth2/token", web::get().to(imds))
        .route("/msi/token", web::get().to(app_service_msi))
        .service(
            web::scope("/_sim")
                .route("/health", web::get().to(health))
                .route("/tokens", web::post().to(mint))
                .route("/federated-token", web::post().to(federated_token))
                .route("/keys", web::get().to(keys))
                .route("/keys/rotate", web::post().to(rotate))
                .route("/bots", web::get().to(list_bots))
                .route("/bots", web::post().to(register_bot))
                .route("/conversations", web::get().to(list_conversations))
                .route("/conversations", web::post().to(register_conversations))
                .route("/installations", web::post().to(install))
                .route("/faults", web::get().to(get_faults))
                .route("/faults", web::post().to(set_faults))
                .route("/faults", web::delete().to(clear_faults))
                .route("/activities", web::get().to(activities))
                .route("/token-requests", web::get().to(token_requests))
                .route("/violations", web::get().to(violations))
                .route("/stats", web::get().to(stats))
                .route("/reset", web::post().to(reset)),
        )
        .default_service(web::to(connector));
}

fn json_response(status: u16, body: &Value) -> HttpResponse {
    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .content_type("application/json; charset=utf-8")
        .body(body.to_string())
}

fn bad_request(message: impl Into<String>) -> HttpResponse {
    HttpResponse::BadRequest().json(ErrorResponse::new("BadSyntax", message))
}

/// Parses a JSON body; an empty body counts as `{}`.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Box<HttpResponse>> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| Box::new(bad_request(format!("invalid JSON body: {e}"))))
}

fn parse_query<T: DeserializeOwned>(req: &HttpRequest) -> Result<T, Box<HttpResponse>> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| Box::new(bad_request(format!("invalid query string: {e}"))))
}

// ---- metadata -------------------------------------------------------------

async fn openid(sim: Data) -> HttpResponse {
    sim.inner.lock().stats.openid_requests += 1;
    let base = &sim.settings.public_url;
    // Same shape as login.botframework.com's document.
    json_response(
        200,
        &json!({
            "issuer": sim.settings.issuer,
            "authorization_endpoint": format!("{base}/v1/authorize"),
            "jwks_uri": format!("{base}/v1/.well-known/keys"),
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        }),
    )
}

async fn jwks(sim: Data) -> HttpResponse {
    sim.inner.lock().stats.jwks_requests += 1;
    json_response(200, &sim.jwks())
}

async fn entra_openid(sim: Data, path: web::Path<String>) -> HttpResponse {
    sim.inner.lock().stats.openid_requests += 1;
    let base = &sim.settings.public_url;
    let tenant = path.into_inner();
    json_response(
        200,
        &json!({
            "issuer": format!("{base}/{tenant}/v2.0"),
            "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
            "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
            "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
            "response_types_supported": ["code", "id_token", "token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
        }),
    )
}

/// MSAL's instance discovery, answered so MSAL-based clients can treat the sim
/// as their authority without calling Microsoft.
async fn instance_discovery(sim: Data) -> HttpResponse {
    let base = &sim.settings.public_url;
    let host = url::Url::parse(base)
        .ok()
        .and_then(|u| {
            u.host_str()
                .map(|h| u.port().map_or(h.to_owned(), |p| format!("{h}:{p}")))
        })
        .unwrap_or_default();
    json_response(
        200,
        &json!({
            "tenant_discovery_endpoint": format!("{base}/common/v2.0/.well-known/openid-configuration"),
            "api-version": "1.1",
            "metadata": [{ "preferred_network": host, "preferred_cache": host, "aliases": [host] }],
        }),
    )
}

// ---- token endpoints ------------------------------------------------------

async fn token_endpoint(
    sim: Data,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let tenant = path.into_inner();
    let suffix = format!("/{tenant}/oauth2/v2.0/token");
    let mut urls = vec![
        format!("{}{suffix}", sim.settings.public_url),
        format!("{}{suffix}", sim.settings.url),
        format!("https://login.microsoftonline.com{suffix}"),
    ];
    if let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        urls.push(format!("http://{host}{suffix}"));
    }
    let (status, body) = token::client_credentials(&sim, &tenant, &body, &urls);
    json_response(status, &body)
}

async fn imds(sim: Data, req: HttpRequest) -> HttpResponse {
    let header = req.headers().get("Metadata").and_then(|h| h.to_str().ok());
    let (status, body) =
        token::managed_identity(&sim, ManagedIdentityKind::Imds, req.query_string(), header);
    json_response(status, &body)
}

async fn app_service_msi(sim: Data, req: HttpRequest) -> HttpResponse {
    let header = req
        .headers()
        .get("X-IDENTITY-HEADER")
        .and_then(|h| h.to_str().ok());
    let (status, body) = token::managed_identity(
        &sim,
        ManagedIdentityKind::AppService,
        req.query_string(),
        header,
    );
    json_response(status, &body)
}

// ---- /_sim ----------------------------------------------------------------

async fn health(sim: Data) -> HttpResponse {
    json_response(
        200,
        &json!({
            "ok": true,
            "url": sim.settings.url,
            "kid": sim.active_kid(),
            "uptimeMs": crate::time::now_ms().saturating_sub(sim.started_ms),
        }),
    )
}

async fn mint(sim: Data, body: web::Bytes) -> HttpResponse {
    let req: MintRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let sim2 = sim.clone();
    // RSA signing is CPU work; keep it off the worker's event loop.
    match web::block(move || sim2.mint(&req)).await {
        Ok(Ok(tokens)) => json_response(200, &json!({ "tokens": tokens, "kid": sim.active_kid() })),
        Ok(Err(msg)) => bad_request(msg),
        Err(e) => HttpResponse::InternalServerError()
            .json(ErrorResponse::new("ServiceError", e.to_string())),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FederatedRequest {
    subject: String,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    lifetime_secs: Option<u64>,
}

async fn federated_token(sim: Data, body: web::Bytes) -> HttpResponse {
    let req: FederatedRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if req.subject.is_empty() {
        return bad_request("subject must not be empty");
    }
    let token = sim.issue_federated_token(&req.subject, req.audience.as_deref(), req.lifetime_secs);
    json_response(
        200,
        &json!({ "token": token, "issuer": sim.settings.federated_issuer() }),
    )
}

async fn keys(sim: Data) -> HttpResponse {
    json_response(
        200,
        &json!({
            "active": sim.active_kid(),
            "unendorsed": sim.unendorsed_kid(),
            "published": sim.published_kids(),
        }),
    )
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RotateRequest {
    #[serde(default)]
    retire_old: bool,
    /// Publish the new active key without an `endorsements` list.
    #[serde(default)]
    without_endorsements: bool,
}

async fn rotate(sim: Data, body: web::Bytes) -> HttpResponse {
    let req: RotateRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let sim2 = sim.clone();
    match web::block(move || sim2.rotate_keys(req.retire_old, req.without_endorsements)).await {
        Ok(Ok(v)) => json_response(200, &v),
        Ok(Err(e)) => HttpResponse::InternalServerError()
            .json(ErrorResponse::new("ServiceError", e.to_string())),
        Err(e) => HttpResponse::InternalServerError()
            .json(ErrorResponse::new("ServiceError", e.to_string())),
    }
}

async fn list_bots(sim: Data) -> HttpResponse {
    json_response(200, &json!({ "bots": sim.bots_public() }))
}

async fn register_bot(sim: Data, body: web::Bytes) -> HttpResponse {
    let reg: BotRegistration = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let app_id = reg.app_id.clone();
    match sim.register_bot(reg) {
        Ok(creds) => json_response(200, &json!({ "appId": app_id, "credentials": creds })),
        Err(msg) => bad_request(msg),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConversationsBody {
    conversations: Vec<Conversation>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InstallBody {
    app_id: String,
    tenant_id: String,
    users: Vec<String>,
}

/// `POST /_sim/installations {appId, tenantId, users}`: these users installed
/// the app; create-conversation for other users of that tenant is refused.
async fn install(sim: Data, body: web::Bytes) -> HttpResponse {
    let req: InstallBody = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if req.app_id.is_empty() || req.tenant_id.is_empty() {
        return bad_request("appId and tenantId must not be empty");
    }
    if req.users.iter().any(String::is_empty) {
        return bad_request("user ids must not be empty");
    }
    let n = sim.install(&req.app_id, &req.tenant_id, req.users);
    json_response(200, &json!({ "installed": n }))
}

async fn register_conversations(sim: Data, body: web::Bytes) -> HttpResponse {
    let req: ConversationsBody = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if let Some(c) = req.conversations.iter().find(|c| c.id.is_empty()) {
        return bad_request(format!("conversation id must not be empty: {c:?}"));
    }
    let n = sim.register_conversations(req.conversations);
    json_response(
        200,
        &json!({ "registered": n, "total": sim.conversation_count() }),
    )
}

#[derive(Deserialize)]
struct ConversationQuery {
    id: Option<String>,
}

async fn list_conversations(sim: Data, req: HttpRequest) -> HttpResponse {
    let q: ConversationQuery = match parse_query(&req) {
        Ok(q) => q,
        Err(resp) => return *resp,
    };
    match q.id {
        Some(id) => match sim.conversation(&id) {
            Some(c) => json_response(200, &json!({ "total": 1, "conversations": [c] })),
            None => HttpResponse::NotFound().json(ErrorResponse::new(
                "ConversationNotFound",
                "Conversation not found.",
            )),
        },
        None => {
            let inner = sim.inner.lock();
            let list: Vec<&Conversation> = inner.conversations.values().collect();
            json_response(200, &json!({ "total": list.len(), "conversations": list }))
        }
    }
}

async fn get_faults(sim: Data) -> HttpResponse {
    json_response(200, &sim.faults())
}

async fn set_faults(sim: Data, body: web::Bytes) -> HttpResponse {
    let faults: Faults = match parse_body(&body) {
        Ok(f) => f,
        Err(resp) => return *resp,
    };
    match sim.set_faults(faults) {
        Ok(()) => json_response(200, &sim.faults()),
        Err(msg) => bad_request(msg),
    }
}

async fn clear_faults(sim: Data) -> HttpResponse {
    // Default faults always validate.
    let _ = sim.set_faults(Faults::default());
    json_response(200, &sim.faults())
}

async fn activities(sim: Data, req: HttpRequest) -> HttpResponse {
    let filter: ActivityFilter = match parse_query(&req) {
        Ok(f) => f,
        Err(resp) => return *resp,
    };
    let list = sim.activities(&filter);
    let last = list.last().map(|r| r.seq);
    json_response(
        200,
        &json!({ "total": sim.activities_total(), "last": last, "activities": list }),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRequestsQuery {
    client_id: Option<String>,
}

async fn token_requests(sim: Data, req: HttpRequest) -> HttpResponse {
    let q: TokenRequestsQuery = match parse_query(&req) {
        Ok(q) => q,
        Err(resp) => return *resp,
    };
    json_response(200, &sim.token_requests(q.client_id.as_deref()))
}

async fn violations(sim: Data) -> HttpResponse {
    let (total, list) = sim.violations();
    json_response(200, &json!({ "total": total, "violations": list }))
}

async fn stats(sim: Data) -> HttpResponse {
    let stats = sim.stats();
    json_response(
        200,
        &json!({
            "stats": stats,
            "activitiesRecorded": sim.activities_total(),
            "violations": sim.violations().0,
            "conversations": sim.conversation_count(),
        }),
    )
}

async fn reset(sim: Data) -> HttpResponse {
    sim.reset();
    json_response(200, &json!({ "reset": true }))
}

// ---- connector --------------------------------------------------------------

async fn connector(sim: Data, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let reply = crate::connector::handle(
        &sim,
        req.method().as_str(),
        req.path(),
        req.query_string(),
        auth,
        &body,
    )
    .await;
    let mut resp = HttpResponse::build(
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    );
    if let Some(secs) = reply.retry_after_secs {
        resp.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
    }
    if reply.body.is_empty() {
        resp.finish()
    } else {
        resp.content_type("application/json; charset=utf-8")
            .body(reply.body)
    }
}
