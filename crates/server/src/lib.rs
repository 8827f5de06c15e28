//! The `botfleet` server: configuration, wiring, HTTP routes.
//!
//! - [`settings`]: configuration (defaults <- file <- environment), loaded and
//!   checked by one function that `serve` and `check-config` share;
//! - [`ingress_http`]: `POST /api/messages[/{bot}]`, the cheap checks before the
//!   runtime's ingress actors;
//! - [`problem`]: RFC 7807 answers.
#![forbid(unsafe_code)]

pub mod admin;
pub mod ingress_http;
pub mod problem;
pub mod settings;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use botfleet_auth::inbound::{BotTrust, InboundValidator};
use botfleet_auth::outbound::{
    ClientCredential, ClientCredentialsProvider, ManagedIdentityProvider, TokenCache,
    TokenCacheConfig, TokenProvider,
};
use botfleet_auth::Cloud;
use botfleet_auth::{ServiceUrlAllowlist, TenantPolicy};
use botfleet_connector::{BotSettings as ConnectorBotSettings, Connector};
use botfleet_runtime::handlers::{EchoHandler, NotifyOnlyHandler, WebhookConfig, WebhookHandler};
use botfleet_runtime::outbound::Replier;
use botfleet_runtime::token_tier::RedisSharedTokens;
use botfleet_runtime::{Bot, BotHandler, BotRegistry, RecordingHandler, Runtime};
use botfleet_store::conversations::{
    ConversationStore, MemoryConversationStore, RedisConversationStore,
};
use botfleet_store::ratelimit::{MemoryRateLimiter, RateLimiter, RedisRateLimiter};
use botfleet_store::token_tier::RedisTokenTier;
use botfleet_store::RedisPool;
use thiserror::Error;

use settings::{
    HandlerSettings, LoadedConfig, LogFormat, PreparedBot, PreparedCredential, Settings,
    StoreBackend,
};

/// Why `serve` stopped after its configuration was accepted (exit 1).
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
    /// For readiness: the Redis every Redis-backed part shares.
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

/// Logs to stderr at `RUST_LOG` (default `info`). Text lines carry ANSI colours
/// only when stderr is a terminal and `NO_COLOR` is unset (https://no-color.org),
/// so files and log collectors get plain text.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn build_handler(
    bot_id: &str,
    settings: &HandlerSettings,
    replier: Option<Replier>,
    http: &reqwest::Client,
) -> Result<Arc<dyn BotHandler>, StartError> {
    let needs = |r: Option<Replier>| {
        r.ok_or_else(|| {
            StartError::Bots(format!(
                "bot `{bot_id}`: this handler replies and needs app_password"
            ))
        })
    };
    Ok(match settings {
        HandlerSettings::Record => Arc::new(RecordingHandler::new()),
        HandlerSettings::Echo => Arc::new(EchoHandler::new(needs(replier)?)),
        HandlerSettings::NotifyOnly { text } => {
            Arc::new(NotifyOnlyHandler::new(needs(replier)?, text.clone()))
        }
        HandlerSettings::Webhook {
            url,
            secret,
            timeout,
            allow_insecure_http,
        } => Arc::new(
            WebhookHandler::new(
                WebhookConfig {
                    url: url.clone(),
                    secret: secret.clone(),
                    timeout: *timeout,
                    allow_insecure_http: *allow_insecure_http,
                },
                http.clone(),
                replier,
            )
            .map_err(|e| StartError::Bots(format!("bot `{bot_id}`: {e}")))?,
        ),
    })
}

/// The token provider of one bot's credential, read and parsed by
/// [`settings::load`] (so a bad key file stops start-up, not the first reply).
fn token_provider(
    bot: &PreparedBot,
    credential: &PreparedCredential,
    http: &reqwest::Client,
) -> Arc<dyn TokenProvider> {
    let (cloud, app_id) = (&bot.cloud, bot.settings.app_id.as_str());
    let tenant = bot.settings.tenant_id.as_deref();
    let client = |c: ClientCredential| {
        ClientCredentialsProvider::new(cloud, app_id, tenant, c).with_http_client(http.clone())
    };
    match credential {
        PreparedCredential::Secret(secret) => {
            Arc::new(client(ClientCredential::Secret(secret.clone())))
        }
        PreparedCredential::Certificate(c) => {
            Arc::new(client(ClientCredential::Certificate(c.clone())))
        }
        PreparedCredential::WorkloadIdentity(env) => Arc::new(
            ClientCredentialsProvider::workload_identity(cloud, app_id, tenant, env)
                .with_http_client(http.clone()),
        ),
        PreparedCredential::ManagedIdentity { client_id, source } => Arc::new(
            ManagedIdentityProvider::new(cloud, Some(client_id), source.clone())
                .with_http_client(http.clone()),
        ),
    }
}

/// The process-wide outbound machinery: token cache, rate limiter, connector.
struct Outbound {
    tokens: TokenCache,
    connector: Connector,
    token_http: reqwest::Client,
}

fn build_outbound(settings: &Settings, redis: Option<&RedisPool>) -> Result<Outbound, StartError> {
    let prefix = format!(
        "{}:{}",
        settings.store.key_prefix,
        botfleet_store::KEY_SCHEMA
    );
    let margin = settings.outbound.rate_limit_margin;
    let (tokens, limiter): (TokenCache, Arc<dyn RateLimiter>) = match redis {
        Some(pool) => (
            TokenCache::with_shared_tier(
                TokenCacheConfig::default(),
                Arc::new(RedisSharedTokens(RedisTokenTier::with_prefix(
                    pool.clone(),
                    prefix.clone(),
                ))),
            ),
            Arc::new(RedisRateLimiter::with_prefix(pool.clone(), prefix, margin)),
        ),
        None => (
            TokenCache::new(TokenCacheConfig::default()),
            Arc::new(MemoryRateLimiter::new(margin)),
        ),
    };
    let connector = Connector::new(settings.outbound.connector_config(), limiter)
        .map_err(|e| StartError::Http(e.to_string()))?;
    // Refresh ahead of expiry so no reply ever waits on the token endpoint.
    tokens.spawn_refresher(Duration::from_secs(15));
    Ok(Outbound {
        tokens,
        connector,
        token_http: botfleet_auth::outbound::default_http_client(),
    })
}

/// Builds the store, bots, validator and actor runtime from a checked
/// configuration ([`settings::load`] or [`LoadedConfig::from_settings`]).
pub async fn build(config: LoadedConfig) -> Result<AppState, StartError> {
    let LoadedConfig {
        settings,
        bots: prepared,
        notices,
    } = config;
    for notice in &notices {
        tracing::warn!("configuration: {notice}");
    }
    let http = reqwest::Client::builder()
        .timeout(settings.auth.fetch_timeout)
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

    let outbound = build_outbound(&settings, redis.as_ref())?;
    let webhook_http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| StartError::Http(e.to_string()))?;
    let mut clouds = Vec::new();
    let mut bots = Vec::new();
    for p in &prepared {
        let b = &p.settings;
        let cloud = Arc::new(p.cloud.clone());
        if !clouds.iter().any(|c: &Arc<Cloud>| c.name == cloud.name) {
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
        let id: Arc<str> = Arc::from(b.id.as_str());
        let provider = p
            .credential
            .as_ref()
            .map(|c| token_provider(p, c, &outbound.token_http));
        let replier = provider.map(|provider| {
            let handle = outbound.tokens.register(provider);
            let client = outbound.connector.bot(
                ConnectorBotSettings::new(&b.app_id, Arc::new(handle), trust.service_urls.clone())
                    .with_ambiguous(b.ambiguous_send)
                    .with_retry(settings.outbound.retry_policy()),
            );
            Replier {
                bot_id: id.clone(),
                client,
                store: store.clone(),
            }
        });
        bots.push(Bot {
            id: id.clone(),
            trust,
            handler: build_handler(&b.id, &b.handler, replier, &webhook_http)?,
            store: store.clone(),
        });
    }
    if bots.is_empty() {
        tracing::warn!("no bots are configured: every activity will be refused (add [[bots]] to the configuration)");
    }
    let registry = Arc::new(BotRegistry::new(bots).map_err(|e| StartError::Bots(e.to_string()))?);

    let validator = Arc::new(InboundValidator::new(
        http,
        settings.auth.inbound_config(),
        clouds,
    ));
    validator.start().await;

    let runtime = Runtime::start(settings.runtime.runtime_config(), validator, registry);
    Ok(AppState {
        settings,
        runtime,
        redis,
        rejections: Mutex::new(BTreeMap::new()),
    })
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

/// Prometheus text exposition of the runtime's counters. Labels stay
/// low-cardinality: the failed check, never a bot, tenant or conversation.
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let c = state.runtime.counters();
    let mut out = String::new();
    let n = |v: &std::sync::atomic::AtomicU64| i64::try_from(v.load(Relaxed)).unwrap_or(i64::MAX);
    let table: [(&str, &str, &str, i64); 11] = [
        (
            "botfleet_activities_handled_total",
            "counter",
            "Activities the bot handler completed.",
            n(&c.activities_handled),
        ),
        (
            "botfleet_activities_failed_total",
            "counter",
            "Validated activities whose handling failed (store, handler, overload).",
            n(&c.activities_failed),
        ),
        (
            "botfleet_activities_duplicate_total",
            "counter",
            "Resent activities dropped as duplicates.",
            n(&c.duplicates_dropped),
        ),
        (
            "botfleet_references_written_total",
            "counter",
            "Conversation reference writes.",
            n(&c.references_written),
        ),
        (
            "botfleet_references_deactivated_total",
            "counter",
            "Conversation references marked inactive: uninstall, removal, or a send answered 403/404.",
            n(&c.references_deactivated),
        ),
        (
            "botfleet_references_moved_total",
            "counter",
            "Conversation references moved to another host by a send outcome (GCC).",
            n(&c.references_moved),
        ),
        (
            "botfleet_reference_outcomes_stale_total",
            "counter",
            "Send outcomes not applied: the reference changed since the send read it.",
            n(&c.reference_outcomes_stale),
        ),
        (
            "botfleet_tenant_quota_refusals_total",
            "counter",
            "Activities refused by the per-tenant quota.",
            n(&c.tenant_quota_refusals),
        ),
        (
            "botfleet_actor_restarts_total",
            "counter",
            "Tenant or conversation actors started again after dying.",
            n(&c.actor_restarts),
        ),
        (
            "botfleet_conversation_actors",
            "gauge",
            "Live conversation actors.",
            c.conversation_actors.load(Relaxed),
        ),
        (
            "botfleet_tenant_actors",
            "gauge",
            "Live tenant actors.",
            c.tenant_actors.load(Relaxed),
        ),
    ];
    for (name, kind, help, value) in table {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP botfleet_activities_rejected_total Requests refused before reaching an actor, by failed check.\n# TYPE botfleet_activities_rejected_total counter"
    );
    if let Ok(rejections) = state.rejections.lock() {
        for (check, count) in rejections.iter() {
            let _ = writeln!(
                out,
                "botfleet_activities_rejected_total{{check=\"{check}\"}} {count}"
            );
        }
    }
    ingress_http::write_signing_key_metrics(
        &mut out,
        &state.runtime.validator().key_store_status(),
    );
    let _ = writeln!(
        out,
        "# HELP botfleet_replies_total Replies sent for bot handlers, by outcome (docs/turns.md).\n# TYPE botfleet_replies_total counter"
    );
    for (outcome, count) in c.sends_by_outcome() {
        let _ = writeln!(
            out,
            "botfleet_replies_total{{outcome=\"{outcome}\"}} {count}"
        );
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}

/// What keeps this replica from serving: Redis unreachable, signing keys not
/// loaded. Empty = ready; `/readyz` and the ready line both ask this.
async fn readiness(state: &AppState) -> Vec<String> {
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
    problems
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let problems = readiness(&state).await;
    if problems.is_empty() {
        HttpResponse::Ok().json(serde_json::json!({"ready": true}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"ready": false, "problems": problems}))
    }
}

/// Serves until SIGINT/SIGTERM. Prints one JSON line `{"ready":true,"url":...}`
/// on stdout once `/readyz` would answer 200 (listening, Redis reachable,
/// signing keys loaded), so scripts and tests can find a port-0 server and
/// send to it at once; until then it logs what it waits for.
pub async fn serve(config: LoadedConfig) -> Result<(), StartError> {
    let listen = config.settings.server.listen.clone();
    let workers = config.settings.server.workers;
    let state = web::Data::new(build(config).await?);
    let app_state = state.clone();
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .configure(ingress_http::configure)
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .default_service(web::to(problem::not_found))
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
    let server = server.run();
    actix_web::rt::spawn(announce_when_ready(state, url));
    server.await?;
    Ok(())
}

/// Prints the ready line once [`readiness`] finds nothing missing, logging what
/// is missing (when it changes) until then.
async fn announce_when_ready(state: web::Data<AppState>, url: String) {
    let mut last: Vec<String> = Vec::new();
    loop {
        let problems = readiness(&state).await;
        if problems.is_empty() {
            tracing::info!(%url, "botfleet ready");
            println!("{}", serde_json::json!({"ready": true, "url": url}));
            return;
        }
        if problems != last {
            tracing::warn!(problems = ?problems, "botfleet is listening but not ready yet");
            last = problems;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
