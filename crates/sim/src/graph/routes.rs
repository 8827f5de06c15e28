//! HTTP wiring of the Graph side: the Graph API under `/graph/v1.0`, the
//! delegated `authorize` endpoint, the OpenID configuration of
//! `validationTokens`, and the test controls under `/_sim/graph`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::delegated::{self, AuthorizeReply, SignInUser};
use super::messages::{self, ChatSpec, NewMessage, Place};
use super::{apps, subscriptions, GraphFaults, GraphSettings, GRAPH_APP_ID, GRAPH_AUDIENCE};
use crate::jwt;
use crate::state::{Sim, CLOCK_SKEW_SECS};
use crate::time::{now_secs, rfc3339};

type Data = web::Data<Sim>;

/// A Graph error answer: `{"error":{"code","message","innerError":{...}}}`
/// (<https://learn.microsoft.com/graph/errors>).
#[derive(Debug, Clone)]
pub struct GraphError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl GraphError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn throttled(retry_after_secs: u64, message: impl Into<String>) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(429, "TooManyRequests", message)
        }
    }
}

/// Who called the Graph API, from the bearer token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub app_id: String,
    pub tenant_id: String,
    /// The signed-in user of a delegated token.
    pub user_id: Option<String>,
    /// `oid` of the token (user or service principal).
    pub creator_id: String,
}

fn unauthorized(message: impl Into<String>) -> GraphError {
    GraphError::new(401, "InvalidAuthenticationToken", message)
}

/// Checks a Graph bearer token: signed by the sim, `aud` Graph, within its
/// lifetime. App tokens (from client credentials, real time) are checked
/// against the real clock; delegated ones (`scp`, issued on the sim clock)
/// against the sim clock.
pub fn authenticate(sim: &Sim, authorization: Option<&str>) -> Result<Caller, GraphError> {
    let header = authorization.ok_or_else(|| unauthorized("Access token is empty."))?;
    let (scheme, token) = header
        .split_once(' ')
        .ok_or_else(|| unauthorized("Authorization header is not 'Bearer <token>'."))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(unauthorized(
            "Authorization header is not 'Bearer <token>'.",
        ));
    }
    let claims = sim
        .verify_own_signature(token.trim())
        .map_err(|e| unauthorized(format!("Access token validation failure: {e}.")))?;
    if !jwt::audience_contains(&claims, |a| a == GRAPH_AUDIENCE || a == GRAPH_APP_ID) {
        return Err(unauthorized(format!(
            "Access token validation failure. Invalid audience (expected {GRAPH_AUDIENCE}: request the token with scope {GRAPH_AUDIENCE}/.default)."
        )));
    }
    let delegated = claims.get("scp").is_some();
    let now = if delegated {
        i64::try_from(sim.graph.now_ms() / 1000).unwrap_or(i64::MAX)
    } else {
        now_secs()
    };
    let exp = jwt::claim_secs(&claims, "exp").unwrap_or(0);
    if now > exp + CLOCK_SKEW_SECS {
        return Err(unauthorized(
            "Lifetime validation failed, the token is expired.",
        ));
    }
    let get = |k: &str| {
        jwt::claim_str(&claims, k)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let app_id = get("appid")
        .or_else(|| get("azp"))
        .ok_or_else(|| unauthorized("Access token has no appid."))?;
    let tenant_id = get("tid").ok_or_else(|| unauthorized("Access token has no tid."))?;
    let creator_id = get("oid").unwrap_or_else(|| crate::state::uuid_from(&app_id));
    Ok(Caller {
        app_id,
        tenant_id,
        user_id: if delegated {
            Some(creator_id.clone())
        } else {
            None
        },
        creator_id,
    })
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::scope("/graph/v1.0").default_service(web::to(graph_api)))
        .route("/{tenant}/oauth2/v2.0/authorize", web::get().to(authorize))
        .route(
            "/common/.well-known/openid-configuration",
            web::get().to(graph_openid),
        )
        .service(
            web::scope("/_sim/graph")
                .route("/clock", web::get().to(get_clock))
                .route("/clock", web::post().to(set_clock))
                .route("/config", web::get().to(get_config))
                .route("/config", web::post().to(set_config))
                .route("/faults", web::get().to(get_faults))
                .route("/faults", web::post().to(set_faults))
                .route("/faults", web::delete().to(clear_faults))
                .route("/delivery", web::get().to(get_delivery))
                .route("/delivery", web::post().to(set_delivery))
                .route("/deliveries", web::get().to(deliveries))
                .route("/subscriptions", web::get().to(all_subscriptions))
                .route("/subscriptions/{id}/lifecycle", web::post().to(lifecycle))
                .route("/subscriptions/{id}/expire", web::post().to(expire))
                .route("/chats", web::post().to(register_chat))
                .route("/chats/{chat}/messages", web::post().to(post_chat_message))
                .route(
                    "/teams/{team}/channels/{channel}/messages",
                    web::post().to(post_channel_message),
                )
                .route("/signin", web::get().to(get_signin))
                .route("/signin", web::post().to(set_signin))
                .route("/users/{id}/revoke", web::post().to(revoke)),
        );
}

// ---- the Graph API ------------------------------------------------------------

enum Answer {
    Json(u16, Value),
    Empty(u16),
}

async fn graph_api(sim: Data, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let answer = handle(sim.clone().into_inner(), &req, &body).await;
    let mut resp = match &answer {
        Ok(Answer::Json(status, _)) | Ok(Answer::Empty(status)) => {
            HttpResponse::build(StatusCode::from_u16(*status).unwrap_or(StatusCode::OK))
        }
        Err(e) => HttpResponse::build(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        ),
    };
    // Every Graph answer carries the SIM time: subscribers compute remaining
    // lifetimes as expirationDateTime - Date.
    if let Ok(v) = HeaderValue::from_str(&super::clock::http_date(sim.graph.now_ms())) {
        resp.insert_header((header::DATE, v));
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.insert_header(("request-id", v));
    }
    match answer {
        Ok(Answer::Json(_, v)) => resp
            .content_type("application/json; charset=utf-8")
            .body(v.to_string()),
        Ok(Answer::Empty(_)) => resp.finish(),
        Err(e) => {
            if let Some(secs) = e.retry_after_secs {
                resp.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
            }
            let body = json!({ "error": {
                "code": e.code,
                "message": e.message,
                "innerError": {
                    "date": rfc3339(sim.graph.now_ms()),
                    "request-id": request_id,
                    "client-request-id": request_id,
                }
            }});
            resp.content_type("application/json; charset=utf-8")
                .body(body.to_string())
        }
    }
}

/// Percent-decodes one path segment (Graph ids like `19:...@thread.v2` may come encoded).
fn decode_segment(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// OData key syntax `chats('19:x@thread.v2')` -> `chats`, `19:x@thread.v2`
/// (Graph accepts both forms; notification `resource`s use this one).
fn expand_key_segment(s: &str) -> Vec<String> {
    if let Some((name, rest)) = s.split_once("('") {
        if let Some(key) = rest.strip_suffix("')") {
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()) {
                return vec![name.to_owned(), key.replace("''", "'")];
            }
        }
    }
    vec![s.to_owned()]
}

async fn handle(sim: Arc<Sim>, req: &HttpRequest, body: &[u8]) -> Result<Answer, GraphError> {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let caller = authenticate(&sim, auth)?;
    let (latency, injected) = {
        let mut inner = sim.graph.inner.lock();
        let injected = if inner.faults.error_next > 0 {
            inner.faults.error_next -= 1;
            Some(inner.faults.error_status.unwrap_or(503))
        } else {
            None
        };
        (inner.faults.latency_ms, injected)
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if let Some(status) = injected {
        let mut e = GraphError::new(
            status,
            "ServiceNotAvailable",
            "Injected by botfleet-sim (errorNext fault).",
        );
        if status == 429 || status == 503 {
            e.retry_after_secs = Some(sim.graph.inner.lock().faults.retry_after_secs.unwrap_or(2));
        }
        return Err(e);
    }
    let raw_path = req.path().strip_prefix("/graph/v1.0").unwrap_or_default();
    let segs: Vec<String> = raw_path
        .trim_matches('/')
        .split('/')
        .map(decode_segment)
        .flat_map(|s| expand_key_segment(&s))
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let query: HashMap<String, String> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let base = format!("{}/graph/v1.0{}", sim.settings.public_url, raw_path);
    let method = req.method().as_str();
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    match (method, segs.as_slice()) {
        ("POST", [s]) if eq(s, "subscriptions") => {
            subscriptions::create(&sim, &caller, body).await.map(|v| Answer::Json(201, v))
        }
        ("GET", [s]) if eq(s, "subscriptions") => {
            subscriptions::list(&sim, &caller, &query, &base).map(|v| Answer::Json(200, v))
        }
        ("GET", [s, id]) if eq(s, "subscriptions") => subscriptions::get(&sim, &caller, id).map(|v| Answer::Json(200, v)),
        ("PATCH", [s, id]) if eq(s, "subscriptions") => {
            subscriptions::update(&sim, &caller, id, body).await.map(|v| Answer::Json(200, v))
        }
        ("DELETE", [s, id]) if eq(s, "subscriptions") => {
            subscriptions::delete(&sim, &caller, id).map(|()| Answer::Empty(204))
        }
        ("POST", [s, id, r]) if eq(s, "subscriptions") && eq(r, "reauthorize") => {
            subscriptions::reauthorize(&sim, &caller, id).map(|()| Answer::Empty(204))
        }
        ("GET", [c, chat, m]) if eq(c, "chats") && eq(m, "messages") => {
            let inner = sim.graph.inner.lock();
            let chat = inner
                .chats
                .get(*chat)
                .filter(|c| c.tenant_id == caller.tenant_id)
                .ok_or_else(|| GraphError::new(404, "NotFound", format!("Chat {chat} was not found.")))?;
            messages::list(&chat.messages, &query, &base).map(|v| Answer::Json(200, v))
        }
        ("GET", [c, chat, m, id]) if eq(c, "chats") && eq(m, "messages") => {
            let inner = sim.graph.inner.lock();
            inner
                .chats
                .get(*chat)
                .filter(|c| c.tenant_id == caller.tenant_id)
                .and_then(|c| messages::find(&c.messages, id))
                .map(|v| Answer::Json(200, v))
                .ok_or_else(|| GraphError::new(404, "NotFound", format!("Message {id} of chat {chat} was not found.")))
        }
        ("GET", [t, team, c, channel, m, id])
            if eq(t, "teams") && eq(c, "channels") && eq(m, "messages") =>
        {
            let inner = sim.graph.inner.lock();
            inner
                .channels
                .get(&((*team).to_owned(), (*channel).to_owned()))
                .filter(|c| c.tenant_id == caller.tenant_id)
                .and_then(|c| messages::find(&c.messages, id))
                .map(|v| Answer::Json(200, v))
                .ok_or_else(|| GraphError::new(404, "NotFound", format!("Message {id} of channel {channel} was not found.")))
        }
        ("GET", [t, team, c, channel, m]) if eq(t, "teams") && eq(c, "channels") && eq(m, "messages") => {
            let inner = sim.graph.inner.lock();
            let chat = inner
                .channels
                .get(&((*team).to_owned(), (*channel).to_owned()))
                .filter(|c| c.tenant_id == caller.tenant_id)
                .ok_or_else(|| GraphError::new(404, "NotFound", format!("Channel {channel} of team {team} was not found.")))?;
            messages::list(&chat.messages, &query, &base).map(|v| Answer::Json(200, v))
        }
        ("POST", [u, user, t, a]) if eq(u, "users") && eq(t, "teamwork") && eq(a, "installedApps") => {
            apps::install(&sim, &caller, user, body).map(|()| Answer::Empty(201))
        }
        ("GET", [u, user, t, a]) if eq(u, "users") && eq(t, "teamwork") && eq(a, "installedApps") => {
            apps::list(&sim, &caller, user, &query).map(|v| Answer::Json(200, v))
        }
        ("GET", [u, user, t, a, id]) if eq(u, "users") && eq(t, "teamwork") && eq(a, "installedApps") => {
            apps::get(&sim, &caller, user, id).map(|v| Answer::Json(200, v))
        }
        ("DELETE", [u, user, t, a, id]) if eq(u, "users") && eq(t, "teamwork") && eq(a, "installedApps") => {
            apps::uninstall(&sim, &caller, user, id).map(|()| Answer::Empty(204))
        }
        ("GET", [u, user, t, a, id, c]) if eq(u, "users") && eq(t, "teamwork") && eq(a, "installedApps") && eq(c, "chat") => {
            apps::chat(&sim, &caller, user, id).map(|v| Answer::Json(200, v))
        }
        _ => Err(GraphError::new(
            400,
            "BadRequest",
            format!("Resource not found for the segment '{}' (botfleet-sim serves subscriptions, chat and channel messages, installedApps).", segs.first().copied().unwrap_or_default()),
        )),
    }
}

// ---- delegated sign-in and validation token keys ----------------------------

async fn authorize(sim: Data, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    match delegated::authorize(&sim, &path.into_inner(), req.query_string()) {
        AuthorizeReply::Redirect(location) => HttpResponse::Found()
            .insert_header((header::LOCATION, location))
            .finish(),
        AuthorizeReply::Error(status, body) => json_response(status, &body),
    }
}

/// The OpenID configuration whose keys sign `validationTokens` (botfleet's
/// `graph_openid_metadata_url`; Microsoft's is
/// `https://login.microsoftonline.com/common/.well-known/openid-configuration`).
async fn graph_openid(sim: Data) -> HttpResponse {
    let base = &sim.settings.public_url;
    json_response(
        200,
        &json!({
            "issuer": "https://sts.windows.net/{tenantid}/",
            "authorization_endpoint": format!("{base}/common/oauth2/v2.0/authorize"),
            "token_endpoint": format!("{base}/common/oauth2/v2.0/token"),
            "jwks_uri": format!("{base}/common/discovery/keys"),
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }),
    )
}

// ---- /_sim/graph --------------------------------------------------------------

fn json_response(status: u16, body: &Value) -> HttpResponse {
    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .content_type("application/json; charset=utf-8")
        .body(body.to_string())
}

fn bad_request(message: impl std::fmt::Display) -> HttpResponse {
    json_response(
        400,
        &json!({ "error": { "code": "BadSyntax", "message": message.to_string() } }),
    )
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Box<HttpResponse>> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| Box::new(bad_request(format!("invalid JSON body: {e}"))))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClockBody {
    scale: Option<f64>,
    advance_seconds: Option<f64>,
}

fn clock_json(sim: &Sim) -> Value {
    json!({ "now": rfc3339(sim.graph.now_ms()), "scale": sim.graph.clock.scale() })
}

async fn get_clock(sim: Data) -> HttpResponse {
    json_response(200, &clock_json(&sim))
}

async fn set_clock(sim: Data, body: web::Bytes) -> HttpResponse {
    let req: ClockBody = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    match sim.graph.clock.adjust(req.scale, req.advance_seconds) {
        Ok(_) => json_response(200, &clock_json(&sim)),
        Err(e) => bad_request(e),
    }
}

async fn get_config(sim: Data) -> HttpResponse {
    json_response(200, &json!(sim.graph.settings()))
}

async fn set_config(sim: Data, body: web::Bytes) -> HttpResponse {
    let s: GraphSettings = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    match sim.graph.set_settings(s) {
        Ok(()) => json_response(200, &json!(sim.graph.settings())),
        Err(e) => bad_request(e),
    }
}

async fn get_faults(sim: Data) -> HttpResponse {
    json_response(200, &json!(sim.graph.faults()))
}

async fn set_faults(sim: Data, body: web::Bytes) -> HttpResponse {
    let f: GraphFaults = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    match sim.graph.set_faults(f) {
        Ok(()) => json_response(200, &json!(sim.graph.faults())),
        Err(e) => bad_request(e),
    }
}

async fn clear_faults(sim: Data) -> HttpResponse {
    let _ = sim.graph.set_faults(GraphFaults::default());
    json_response(200, &json!(sim.graph.faults()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeliveryBody {
    paused: bool,
}

fn delivery_json(sim: &Sim) -> Value {
    let inner = sim.graph.inner.lock();
    json!({ "paused": inner.paused, "droppedWhilePaused": inner.dropped_while_paused })
}

async fn get_delivery(sim: Data) -> HttpResponse {
    json_response(200, &delivery_json(&sim))
}

async fn set_delivery(sim: Data, body: web::Bytes) -> HttpResponse {
    let req: DeliveryBody = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    sim.graph.inner.lock().paused = req.paused;
    json_response(200, &delivery_json(&sim))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeliveriesQuery {
    kind: Option<String>,
    since: Option<u64>,
}

async fn deliveries(sim: Data, req: HttpRequest) -> HttpResponse {
    let q = match web::Query::<DeliveriesQuery>::from_query(req.query_string()) {
        Ok(q) => q.into_inner(),
        Err(e) => return bad_request(format!("invalid query string: {e}")),
    };
    let list: Vec<super::DeliveryRecord> = sim
        .graph
        .deliveries()
        .into_iter()
        .filter(|d| q.kind.as_deref().is_none_or(|k| d.kind == k))
        .filter(|d| q.since.is_none_or(|s| d.seq > s))
        .collect();
    json_response(200, &json!({ "total": list.len(), "deliveries": list }))
}

async fn all_subscriptions(sim: Data) -> HttpResponse {
    json_response(200, &subscriptions::all(&sim))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LifecycleBody {
    event: String,
}

async fn lifecycle(sim: Data, path: web::Path<String>, body: web::Bytes) -> HttpResponse {
    let req: LifecycleBody = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    match subscriptions::lifecycle_event(&sim.clone().into_inner(), &path.into_inner(), &req.event)
    {
        Ok(v) => json_response(200, &v),
        Err(e) if e.starts_with("no live") => json_response(
            404,
            &json!({ "error": { "code": "NotFound", "message": e } }),
        ),
        Err(e) => bad_request(e),
    }
}

async fn expire(sim: Data, path: web::Path<String>) -> HttpResponse {
    let id = path.into_inner();
    if subscriptions::expire_now(&sim, &id) {
        json_response(200, &json!({ "expired": id }))
    } else {
        json_response(
            404,
            &json!({ "error": { "code": "NotFound", "message": format!("no subscription {id}") } }),
        )
    }
}

async fn register_chat(sim: Data, body: web::Bytes) -> HttpResponse {
    let spec: ChatSpec = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let id = spec.id.clone();
    match messages::register_chat(&sim, spec) {
        Ok(()) => json_response(200, &json!({ "registered": id })),
        Err(e) => bad_request(e),
    }
}

async fn post_message(sim: Data, place: Place, body: web::Bytes) -> HttpResponse {
    let msg: NewMessage = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    match messages::post(&sim.into_inner(), place, msg) {
        Ok(v) => json_response(201, &v),
        Err(e) => bad_request(e),
    }
}

async fn post_chat_message(sim: Data, path: web::Path<String>, body: web::Bytes) -> HttpResponse {
    post_message(sim, Place::Chat(path.into_inner()), body).await
}

async fn post_channel_message(
    sim: Data,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let (team, channel) = path.into_inner();
    post_message(sim, Place::Channel { team, channel }, body).await
}

async fn get_signin(sim: Data) -> HttpResponse {
    json_response(200, &delegated::summary(&sim))
}

async fn set_signin(sim: Data, body: web::Bytes) -> HttpResponse {
    let user: SignInUser = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    match delegated::set_signin(&sim, user) {
        Ok(()) => json_response(200, &delegated::summary(&sim)),
        Err(e) => bad_request(e),
    }
}

async fn revoke(sim: Data, path: web::Path<String>) -> HttpResponse {
    let user = path.into_inner();
    let n = delegated::revoke(&sim, &user);
    json_response(200, &json!({ "userId": user, "revokedRefreshTokens": n }))
}
