//! The admin API under `/admin/v1`: bots, their tenants, conversations and
//! token status, API keys and the audit log, for operators and their scripts.
//! docs/admin-api.md is the user's guide; docs/openapi.json the reference,
//! generated from this module by [`openapi`].
//!
//! - [`auth`]: API keys, roles and scopes, failed-attempt limiting, auditing of
//!   refusals and changes;
//! - [`bots`]: bots registered through the API (stored in the admin store) and
//!   the configuration file's bots (listed, read-only);
//! - [`conversations`]: a bot's tenants and conversation references;
//! - [`tokens`]: a bot's outbound token status (never a token);
//! - [`keys`], [`audit`]: key management and the audit log;
//! - [`error`]: every error, as a row of the shared problem table.
//!
//! Wiring (the admin listener):
//!
//! ```ignore
//! let state = Arc::new(AdminState::new(
//!     AdminStores::from_one(admin_store, conversation_store), // Memory/RedisAdminStore
//!     config_bots,                 // the configuration file's [[bots]]: read-only here
//!     Arc::new(token_cache.clone()), // or Arc::new(()) for none
//!     AdminConfig { bootstrap_key, audit_retention, clouds, ..AdminConfig::default() },
//! )?);
//! state.spawn_audit_retention(Duration::from_secs(3600));
//! let data = web::Data::from(state);
//! HttpServer::new(move || {
//!     let data = data.clone();
//!     App::new().configure(move |c| admin::configure(c, data))
//! })
//! ```
//!
//! Applying registry changes to the running bots (on every replica) is not
//! this module's job: it writes the registry; [`crate::registry`] follows
//! `BotRegistryStore::subscribe` / `revision` on every replica.

pub mod audit;
pub mod auth;
pub mod bots;
pub mod conversations;
pub mod error;
pub mod graph;
pub mod graph_auth;
pub mod keys;
pub mod notifications;
pub mod openapi;
pub mod tokens;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest};
use botfleet_auth::Cloud;
use botfleet_store::admin::{ApiKeyStore, AuditEntry, AuditLog, BotRegistryStore};
use botfleet_store::conversations::ConversationStore;
use futures::StreamExt as _;
use serde::de::DeserializeOwned;

use crate::settings::BotSettings;
use auth::{BootstrapKey, FailureLimit, FailureLimiter};
use error::AdminError;
pub use tokens::TokenStatusSource;

/// Path prefix of every admin route.
pub const PREFIX: &str = "/admin/v1";
/// Largest request body the admin API reads.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Header carrying the request id, echoed on every admin answer.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Settings of the admin API that are not stores.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// The bootstrap admin key (file or environment; never logged), at least
    /// [`auth::MIN_BOOTSTRAP_KEY_LEN`] characters. `None` = only keys created
    /// through the API work (so with none yet, nobody gets in).
    pub bootstrap_key: Option<botfleet_auth::Secret>,
    /// Audit entries older than this are removed by
    /// [`AdminState::spawn_audit_retention`].
    pub audit_retention: Duration,
    /// Failed authentications allowed per client address.
    pub failure_limit: FailureLimit,
    /// Custom clouds of the configuration, so registrations may name them.
    pub clouds: Vec<Cloud>,
    /// `admin.credential_dirs`: the only directories whose files a
    /// registration's credential may name (empty = none).
    pub credential_dirs: Vec<std::path::PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            bootstrap_key: None,
            audit_retention: Duration::from_secs(90 * 24 * 3600),
            failure_limit: FailureLimit::default(),
            clouds: Vec::new(),
            credential_dirs: Vec::new(),
        }
    }
}

/// The stores the admin API works on.
#[derive(Clone)]
pub struct AdminStores {
    pub keys: Arc<dyn ApiKeyStore>,
    pub bots: Arc<dyn BotRegistryStore>,
    pub audit: Arc<dyn AuditLog>,
    pub conversations: Arc<dyn ConversationStore>,
}

impl AdminStores {
    /// One store implementing all three admin traits (memory or Redis) and the
    /// conversation store.
    pub fn from_one<S>(store: Arc<S>, conversations: Arc<dyn ConversationStore>) -> Self
    where
        S: ApiKeyStore + BotRegistryStore + AuditLog + 'static,
    {
        Self {
            keys: store.clone(),
            bots: store.clone(),
            audit: store,
            conversations,
        }
    }
}

/// Why the admin API cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AdminSetupError {
    #[error("invalid admin bootstrap key: {0}")]
    BootstrapKey(String),
}

/// What every admin handler shares.
pub struct AdminState {
    pub(crate) keys: Arc<dyn ApiKeyStore>,
    pub(crate) bots: Arc<dyn BotRegistryStore>,
    pub(crate) audit: Arc<dyn AuditLog>,
    pub(crate) conversations: Arc<dyn ConversationStore>,
    /// The configuration file's `[[bots]]`: listed, never changed.
    pub(crate) config_bots: Vec<BotSettings>,
    pub(crate) tokens: Arc<dyn TokenStatusSource>,
    pub(crate) bootstrap: Option<BootstrapKey>,
    pub(crate) limiter: FailureLimiter,
    pub(crate) audit_retention: Duration,
    pub(crate) clouds: Vec<Cloud>,
    pub(crate) credential_dirs: Vec<std::path::PathBuf>,
    /// Notification jobs; `None` answers the notification routes 503.
    pub(crate) notifications: Option<notifications::NotificationsState>,
    /// Graph subscriptions; `None` answers the Graph routes 503.
    pub(crate) graph: Option<Arc<botfleet_graph::GraphService>>,
    /// Delegated Graph credentials and app installation.
    pub(crate) graph_auth: Option<Arc<crate::graph_auth::GraphAuth>>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("config_bots", &self.config_bots.len())
            .field("bootstrap", &self.bootstrap.is_some())
            .field("audit_retention", &self.audit_retention)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// `config_bots` are the configuration file's bots (already validated by
    /// the settings); `tokens` reports outbound token status (a
    /// `botfleet_auth::outbound::TokenCache`, or `()` for none).
    pub fn new(
        stores: AdminStores,
        config_bots: Vec<BotSettings>,
        tokens: Arc<dyn TokenStatusSource>,
        config: AdminConfig,
    ) -> Result<Self, AdminSetupError> {
        let bootstrap = match &config.bootstrap_key {
            Some(key) => Some(BootstrapKey::new(key).map_err(AdminSetupError::BootstrapKey)?),
            None => None,
        };
        if bootstrap.is_none() {
            tracing::info!("admin API: no bootstrap key configured; only keys created through the API are accepted");
        }
        Ok(Self {
            keys: stores.keys,
            bots: stores.bots,
            audit: stores.audit,
            conversations: stores.conversations,
            config_bots,
            tokens,
            bootstrap,
            limiter: FailureLimiter::new(config.failure_limit),
            audit_retention: config.audit_retention,
            clouds: config.clouds,
            credential_dirs: config.credential_dirs,
            notifications: None,
            graph: None,
            graph_auth: None,
        })
    }

    /// Serves the notification routes from this job store; `on_created` is
    /// told each new job's id (the local notifier starts on it at once).
    pub fn with_notifications(
        mut self,
        jobs: Arc<dyn botfleet_store::jobs::JobStore>,
        on_created: Option<notifications::JobCreated>,
    ) -> Self {
        self.notifications = Some(notifications::NotificationsState { jobs, on_created });
        self
    }

    /// Serves the Graph subscription routes from this service.
    pub fn with_graph(mut self, graph: Arc<botfleet_graph::GraphService>) -> Self {
        self.graph = Some(graph);
        self
    }

    /// Serves the delegated-credential and app-installation routes.
    pub fn with_graph_auth(mut self, auth: Arc<crate::graph_auth::GraphAuth>) -> Self {
        self.graph_auth = Some(auth);
        self
    }

    /// Appends to the audit log. A failure is logged, not returned: the call it
    /// records has already happened (or been refused).
    pub(crate) async fn audit(&self, entry: AuditEntry) {
        if let Err(e) = self.audit.append(&entry).await {
            tracing::error!(error = %e, action = %entry.action, request_id = %entry.request_id, "admin API: cannot write the audit log");
        }
    }

    /// Removes audit entries older than the retention now, then every `every`,
    /// until the state is dropped.
    pub fn spawn_audit_retention(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(state) = weak.upgrade() else { break };
                let cutoff = now_ms().saturating_sub(
                    u64::try_from(state.audit_retention.as_millis()).unwrap_or(u64::MAX),
                );
                match state.audit.trim(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(removed = n, "audit log: entries past retention removed")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "audit log: retention trim failed; retrying later")
                    }
                }
            }
        })
    }
}

/// Mounts the admin API (`/admin/v1/...`) with its state on an actix
/// `ServiceConfig`: `App::new().configure(|c| admin::configure(c, state.clone()))`.
pub fn configure(cfg: &mut web::ServiceConfig, state: web::Data<AdminState>) {
    cfg.service(routes().app_data(state));
}

/// The routes, from which both the server and the OpenAPI document are built,
/// so neither can list a route the other lacks.
pub(crate) fn routes() -> utoipa_actix_web::scope::Scope<
    impl actix_web::dev::ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    utoipa_actix_web::scope(PREFIX)
        .wrap(actix_web::middleware::from_fn(request_id))
        .service(bots::list_bots)
        .service(bots::create_bot)
        .service(bots::get_bot)
        .service(bots::replace_bot)
        .service(bots::patch_bot)
        .service(bots::delete_bot)
        .service(conversations::list_tenants)
        .service(conversations::list_conversations)
        .service(tokens::get_token)
        .service(keys::list_keys)
        .service(keys::create_key)
        .service(keys::revoke_key)
        .service(audit::list_audit)
        .service(notifications::create_notification)
        .service(notifications::list_notifications)
        .service(notifications::get_notification)
        .service(notifications::list_targets)
        .service(notifications::cancel_notification)
        .service(graph::list_subscriptions)
        .service(graph::create_subscription)
        .service(graph::get_subscription)
        .service(graph::delete_subscription)
        .service(graph_auth::list_credentials)
        .service(graph_auth::get_credential)
        .service(graph_auth::sign_in)
        .service(graph_auth::callback)
        .service(graph_auth::refresh)
        .service(graph_auth::check)
        .service(graph_auth::install_app)
        .service(openapi::get_openapi)
        .default_service(web::to(not_found))
}

/// The OpenAPI 3.1 document of the admin API (what `/admin/v1/openapi.json`
/// serves and docs/openapi.json holds).
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi::build()
}

async fn not_found() -> Result<actix_web::HttpResponse, AdminError> {
    Err(AdminError::RouteNotFound)
}

/// The id of one admin request: the caller's `X-Request-Id` when it is 1 to 64
/// characters of `[A-Za-z0-9._-]`, else a new UUID. Echoed in the answer's
/// `X-Request-Id` and written to the audit log.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    pub(crate) fn of(req: &HttpRequest) -> String {
        req.extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    }

    fn from_header(req: &ServiceRequest) -> String {
        req.headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            })
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    }
}

async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = RequestId::from_header(&req);
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut res = next.call(req).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    Ok(res)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds (`2026-01-31T12:00:00.000Z`) of a time in ms
/// since the Unix epoch: every time the admin API answers has this format.
pub(crate) fn rfc3339(ms: u64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses an RFC 3339 time into ms since the Unix epoch.
pub(crate) fn parse_rfc3339(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    let d = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    u64::try_from(d.as_millis()).ok()
}

/// The query string as `T` (whose fields deny unknown names); errors name the
/// parameter.
pub(crate) fn query<T: DeserializeOwned>(req: &HttpRequest) -> Result<T, AdminError> {
    let qs = req.query_string();
    let de = serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(qs.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let problem = e.into_inner().to_string();
        AdminError::InvalidQuery {
            field: if field == "." {
                unknown_field_name(&problem).unwrap_or_default()
            } else {
                field
            },
            problem,
        }
    })
}

/// The query of a route that takes no parameters: any is refused, so a typo
/// (`?limt=5`) is not silently ignored.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoQuery {}

/// Refuses any query parameter.
pub(crate) fn no_query(req: &HttpRequest) -> Result<(), AdminError> {
    query::<NoQuery>(req).map(|_| ())
}

/// The name in serde's "unknown field `x`, expected ..." message.
fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// Reads a JSON body of at most [`BODY_LIMIT`] bytes whose `Content-Type` is
/// one of `types`, into a JSON value (the caller deserializes it).
pub(crate) async fn read_json(
    req: &HttpRequest,
    mut payload: web::Payload,
    types: &'static [&'static str],
) -> Result<serde_json::Value, AdminError> {
    let ct = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if !types.iter().any(|t| essence.eq_ignore_ascii_case(t)) {
        return Err(AdminError::UnsupportedMediaType(
            types.first().copied().unwrap_or("application/json"),
        ));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|_| AdminError::MalformedJson("the body could not be read".into()))?;
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(AdminError::BodyTooLarge(BODY_LIMIT));
        }
        body.extend_from_slice(&chunk);
    }
    // serde_json's message gives the line and column, never the content.
    serde_json::from_slice(&body).map_err(|e| AdminError::MalformedJson(e.to_string()))
}

/// Deserializes a JSON value into `T`; errors name the field (`handler.url`).
pub(crate) fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, AdminError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut field = e.path().to_string();
        let problem = e.into_inner().to_string();
        if let Some(unknown) = unknown_field_name(&problem) {
            // serde_path_to_error ends the path with the unknown field for
            // structs, not for internally tagged enums: add it where missing.
            if field == "." {
                field = unknown;
            } else if field.rsplit('.').next() != Some(unknown.as_str()) {
                field = format!("{field}.{unknown}");
            }
        } else if field == "." {
            field = String::new();
        }
        AdminError::field(field, problem)
    })
}

/// A page of `items` (sorted by `key`) after the cursor `next`, at most `limit`
/// long, and the cursor of the following page.
pub(crate) fn page_after<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> &str,
    next: Option<&str>,
    limit: usize,
) -> (Vec<T>, Option<String>) {
    let mut rest: Vec<T> = match next {
        Some(after) => items.into_iter().filter(|i| key(i) > after).collect(),
        None => items,
    };
    let more = rest.len() > limit;
    rest.truncate(limit);
    let next = if more {
        rest.last().map(|i| key(i).to_string())
    } else {
        None
    };
    (rest, next)
}
