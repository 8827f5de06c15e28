//! The `botfleet` server: configuration, wiring, HTTP routes.
//!
//! - [`settings`]: configuration (defaults <- file <- environment), validated;
//! - [`ingress_http`]: `POST /api/messages[/{bot}]`, the cheap checks before the
//!   runtime's ingress actors;
//! - [`problem`]: RFC 7807 answers.
#![forbid(unsafe_code)]

pub mod ingress_http;
pub mod problem;
pub mod settings;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use botfleet_auth::inbound::{BotTrust, InboundConfig, InboundValidator};
use botfleet_auth::{ServiceUrlAllowlist, TenantPolicy};
use botfleet_runtime::{Bot, BotHandler, BotRegistry, RecordingHandler, Runtime, RuntimeConfig};
use botfleet_store::conversations::{
    ConversationStore, MemoryConversationStore, RedisConversationStore,
};
use botfleet_store::RedisPool;
use thiserror::Error;

use settings::{HandlerSettings, Settings, StoreBackend};

#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error("cannot connect the store: {0}")]
    Store(String),
    #[error("invalid bot configuration: {0}")]
    Bots(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// What every HTTP worker shares.
pub struct AppState {
    pub settings: Settings,
    pub runtime: Runtime,
    pub store: Arc<dyn ConversationStore>,
    pub redis: Option<RedisPool>,
    rejections: Mutex<BTreeMap<&'static str, u64>>,
}

impl AppState {
    pub(crate) fn count_rejection(&self, check: &'static str) {
        if let Ok(mut m) = self.rejections.lock() {
            *m.entry(check).or_default() += 1;
        }
    }
}

pub fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn build_handler(settings: &HandlerSettings) -> Arc<dyn BotHandler> {
    match settings {
        HandlerSettings::Record => Arc::new(RecordingHandler::new()),
    }
}

/// Builds the store, bots, validator and actor runtime from settings.
pub async fn build(settings: Settings) -> Result<AppState, StartError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(settings.auth.fetch_timeout_ms))
        .build()
        .map_err(|e| StartError::Http(e.to_string()))?;

    let (store, redis): (Arc<dyn ConversationStore>, Option<RedisPool>) =
        match settings.store.backend {
            StoreBackend::Memory => (Arc::new(MemoryConversationStore::new()), None),
            StoreBackend::Redis => {
                let pool = RedisPool::connect(
                    &settings.store.redis_urls,
                    settings.store.redis_cluster,
                    settings.store.redis_pool_size,
                )
                .map_err(|e| StartError::Store(e.to_string()))?;
                if let Err(e) = pool.ping().await {
                    // Keep starting: /readyz reports it and the store recovers
                    // when Redis comes back.
                    tracing::error!(error = %e, "Redis is not reachable at start-up");
                }
                (
                    Arc::new(RedisConversationStore::new(
                        pool.clone(),
                        &settings.store.key_prefix,
                    )),
                    Some(pool),
                )
            }
        };
    if settings.store.backend == StoreBackend::Memory {
        tracing::warn!("conversation references are kept in memory and lost on restart; set store.backend = \"redis\" in production");
    }

    let mut clouds = Vec::new();
    let mut bots = Vec::new();
    for b in &settings.bots {
        let cloud = settings.cloud(&b.cloud).ok_or_else(|| {
            StartError::Bots(format!("bot `{}`: unknown cloud `{}`", b.id, b.cloud))
        })?;
        let cloud = Arc::new(cloud);
        if !clouds
            .iter()
            .any(|c: &Arc<botfleet_auth::Cloud>| c.name == cloud.name)
        {
            clouds.push(cloud.clone());
        }
        let service_urls =
            ServiceUrlAllowlist::new(&cloud.service_url_hosts, &b.additional_allowed_domains);
        if service_urls.allows_any_host() {
            tracing::warn!(bot = %b.id, "additional_allowed_domains contains \"*\": serviceUrl host checking is OFF for this bot; its credentials can be sent to any https host named in an authentic activity");
        }
        let trust = Arc::new(BotTrust {
            bot_id: b.id.clone(),
            app_id: b.app_id.clone(),
            cloud,
            service_urls,
            tenants: TenantPolicy::new(&b.allowed_tenants),
        });
        bots.push(Bot {
            id: Arc::from(b.id.as_str()),
            trust,
            handler: build_handler(&b.handler),
            store: store.clone(),
        });
    }
    if bots.is_empty() {
        tracing::warn!("no bots are configured: every activity will be refused (add [[bots]] to the configuration)");
    }
    let registry = Arc::new(BotRegistry::new(bots).map_err(|e| StartError::Bots(e.to_string()))?);

    let validator = Arc::new(InboundValidator::new(
        http,
        InboundConfig {
            refresh_interval: Duration::from_secs(settings.auth.key_refresh_secs),
            unknown_kid_min_interval: Duration::from_secs(
                settings.auth.unknown_kid_refresh_min_secs,
            ),
            clock_skew: Duration::from_secs(settings.auth.clock_skew_secs),
            cache_capacity: settings.auth.verified_token_cache_size,
            fetch_timeout: Duration::from_millis(settings.auth.fetch_timeout_ms),
            ..InboundConfig::default()
        },
        clouds,
    ));
    validator.start().await;

    let defaults = RuntimeConfig::default();
    let rt = &settings.runtime;
    let runtime = Runtime::start(
        RuntimeConfig {
            ingress_actors: if rt.ingress_actors == 0 {
                defaults.ingress_actors
            } else {
                rt.ingress_actors
            },
            arbiters: if rt.arbiters == 0 {
                defaults.arbiters
            } else {
                rt.arbiters
            },
            conversation_idle: Duration::from_secs(rt.conversation_idle_secs),
            tenant_idle: Duration::from_secs(rt.tenant_idle_secs),
            reference_touch_interval: Duration::from_secs(rt.reference_touch_secs),
        },
        validator,
        registry,
    );
    Ok(AppState {
        settings,
        runtime,
        store,
        redis,
        rejections: Mutex::new(BTreeMap::new()),
    })
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let mut problems = Vec::new();
    if let Some(redis) = &state.redis {
        if let Err(e) = redis.ping().await {
            problems.push(format!("redis: {e}"));
        }
    }
    for ks in state.runtime.validator().key_store_status() {
        if !ks.loaded {
            problems.push(format!(
                "signing keys of {} not loaded yet: {}",
                ks.metadata_url,
                ks.last_error.as_deref().unwrap_or("first fetch pending")
            ));
        }
    }
    if problems.is_empty() {
        HttpResponse::Ok().json(serde_json::json!({"ready": true}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"ready": false, "problems": problems}))
    }
}

/// Serves until SIGINT/SIGTERM. Prints one JSON line `{"ready":true,"url":...}`
/// on stdout once listening, so scripts and tests can find a port-0 server.
pub async fn serve(settings: Settings) -> Result<(), StartError> {
    let listen = settings.server.listen.clone();
    let workers = settings.server.workers;
    let state = web::Data::new(build(settings).await?);
    let app_state = state.clone();
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .route("/api/messages", web::post().to(ingress_http::messages))
            .route(
                "/api/messages/{bot}",
                web::post().to(ingress_http::bot_messages),
            )
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
    })
    .shutdown_timeout(15);
    if workers > 0 {
        server = server.workers(workers);
    }
    let server = server.bind(&listen).map_err(|source| StartError::Bind {
        addr: listen.clone(),
        source,
    })?;
    let addrs = server.addrs();
    let url = addrs
        .first()
        .map(|a| format!("http://{a}"))
        .unwrap_or_default();
    tracing::info!(%url, bots = state.runtime.bots().len(), "botfleet listening");
    println!("{}", serde_json::json!({"ready": true, "url": url}));
    server.run().await?;
    Ok(())
}
