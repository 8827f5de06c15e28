//! The `botfleet` server: configuration, wiring, HTTP routes.
//!
//! - [`settings`]: configuration (defaults <- file <- environment), loaded and
//!   checked by one function that `serve` and `check-config` share;
//! - [`registry`]: the bots, built from the configuration and from the admin
//!   API's registry, kept current on every replica;
//! - [`ingress_http`]: `POST /api/messages[/{bot}]`, the cheap checks before the
//!   runtime's ingress actors;
//! - [`admin`]: the admin API (`/admin/v1`);
//! - [`problem`]: RFC 7807 answers.
//!
//! `serve` runs two listeners: the public one (`server.listen`) serves only the
//! messaging endpoint; the admin one (`server.admin_listen`) serves the admin
//! API, `/metrics`, `/healthz` and `/readyz` (also on the public one with
//! `server.admin_on_public`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod graph;
pub mod graph_auth;
pub mod ingress_http;
pub mod metrics;
pub mod notify;
pub mod problem;
pub mod registry;
pub mod settings;
pub mod shutdown;
pub mod tls;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use botfleet_auth::inbound::InboundValidator;
use botfleet_auth::outbound::{TokenCache, TokenCacheConfig};
use botfleet_auth::Cloud;
use botfleet_connector::Connector;
use botfleet_runtime::token_tier::RedisSharedTokens;
use botfleet_runtime::{BotRegistry, Runtime};
use botfleet_store::admin::{MemoryAdminStore, RedisAdminStore};
use botfleet_store::conversations::{
    ConversationStore, MemoryConversationStore, RedisConversationStore,
};
use botfleet_store::ratelimit::{MemoryRateLimiter, RateLimiter, RedisRateLimiter};
use botfleet_store::token_tier::RedisTokenTier;
use botfleet_store::RedisPool;
use thiserror::Error;

use admin::{AdminConfig, AdminState, AdminStores};
use registry::{BotFactory, RegistryFollower, RegistryStatus};
use settings::{Environment, LoadedConfig, LogFormat, Settings, StoreBackend};

/// Why `serve` stopped after its configuration was accepted (exit 1).
#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error("cannot connect the store: {0}")]
    Store(String),
    #[error("invalid bot configuration: {0}")]
    Bots(String),
    #[error("cannot start the admin API: {0}")]
    Admin(String),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        addr: String,
        /// The setting that names the address.
        key: &'static str,
        source: std::io::Error,
    },
    #[error("cannot use the TLS certificate: {0}")]
    Tls(String),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// What every HTTP worker shares.
pub struct AppState {
    pub settings: Settings,
    pub runtime: Runtime,
    /// For readiness: the Redis every Redis-backed part shares.
    pub redis: Option<RedisPool>,
    /// The admin API's state (keys, registry, audit).
    pub admin: web::Data<AdminState>,
    /// Applies the admin API's bots to the runtime on this replica.
    pub registry: Arc<RegistryFollower>,
    /// OpenID metadata URLs of the configuration bots' clouds: readiness waits
    /// for their keys (not for clouds only bots from the admin API use, so
    /// one registration cannot take the replica out of rotation).
    config_key_urls: HashSet<String>,
    /// Delivers notification jobs (kept so its tasks live as long as the server).
    pub notifier: Arc<botfleet_runtime::notify::Notifier>,
    /// Set on SIGTERM/SIGINT: `/readyz` answers 503 from then on.
    pub draining: Arc<shutdown::Draining>,
    /// Graph change notifications (docs/graph.md).
    pub graph: Option<Arc<botfleet_graph::GraphService>>,
}

/// Sets up log lines and spans ([`botfleet_telemetry::init`]): lines on
/// stderr at `RUST_LOG` (default `info`), JSON or text as `server.log_format`
/// says (`auto`: JSON unless stderr is a terminal); text carries ANSI colours
/// only on a terminal with `NO_COLOR` unset (https://no-color.org). Spans are
/// exported over OTLP/HTTP when `[telemetry]` or the `OTEL_*` variables name
/// an endpoint. Call before any async runtime starts; keep the returned
/// [`botfleet_telemetry::Tracing`] and call its `shutdown` after `serve`
/// returns, to flush the spans still queued.
///
/// Errors: the exporter cannot be built (an endpoint `check` did not catch).
pub fn init_logging(
    settings: &Settings,
) -> Result<botfleet_telemetry::Tracing, botfleet_telemetry::TraceError> {
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let lines = match settings.server.log_format.resolved() {
        LogFormat::Json => botfleet_telemetry::LineFormat::Json,
        _ => botfleet_telemetry::LineFormat::Text { ansi: colour },
    };
    botfleet_telemetry::init(&botfleet_telemetry::TelemetryConfig {
        lines,
        trace: settings.telemetry.trace_config(&Environment::process()),
    })
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

/// Builds the stores, bots (the configuration's, then the admin API's),
/// validator, actor runtime and admin API from a checked configuration
/// ([`settings::load`] or [`LoadedConfig::from_settings`]), and starts the task
/// that follows the bot registry.
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

    let (store, redis, admin_stores): (Arc<dyn ConversationStore>, Option<RedisPool>, AdminStores) =
        match settings.store.backend {
            StoreBackend::Memory => {
                let store: Arc<dyn ConversationStore> = Arc::new(MemoryConversationStore::new());
                let admin = AdminStores::from_one(Arc::new(MemoryAdminStore::new()), store.clone());
                (store, None, admin)
            }
            StoreBackend::Redis => {
                let pool = RedisPool::connect(
                    &settings.store.redis_urls,
                    settings.store.redis_cluster,
                    settings.store.redis_pool_size,
                )
                .map_err(|e| StartError::Store(e.to_string()))?;
                if let Err(e) = redis_ping(&pool).await {
                    // Keep starting: /readyz answers 503 naming Redis,
                    // `announce_when_ready` checks again with backoff, and
                    // the store recovers when Redis comes back.
                    tracing::error!(
                        redis = %redis_hosts(&settings.store.redis_urls),
                        error = %e,
                        "Redis is not reachable at start-up; serving /healthz, /readyz answers 503 and the check is retried with backoff until Redis answers"
                    );
                }
                let store: Arc<dyn ConversationStore> = Arc::new(RedisConversationStore::new(
                    pool.clone(),
                    &settings.store.key_prefix,
                ));
                let admin = AdminStores::from_one(
                    Arc::new(RedisAdminStore::new(
                        pool.clone(),
                        &settings.store.key_prefix,
                        &settings.store.redis_urls,
                    )),
                    store.clone(),
                );
                (store, Some(pool), admin)
            }
        };
    if settings.store.backend == StoreBackend::Memory {
        tracing::warn!("conversation references, API keys, bots registered through the admin API and the audit log are kept in memory and lost on restart; set store.backend = \"redis\" in production");
    }

    let outbound = build_outbound(&settings, redis.as_ref())?;
    let webhook_http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| StartError::Http(e.to_string()))?;
    let factory = BotFactory {
        store: store.clone(),
        tokens: outbound.tokens.clone(),
        connector: outbound.connector.clone(),
        token_http: outbound.token_http.clone(),
        webhook_http,
        retry: settings.outbound.retry_policy(),
        notify_clients: notify::NotifyClients::default(),
    };
    let notify_clients = factory.notify_clients.clone();
    let mut config_bots = Vec::new();
    let mut clouds: Vec<Arc<Cloud>> = Vec::new();
    for p in &prepared {
        let built = factory
            .build(p)
            .map_err(|e| StartError::Bots(e.to_string()))?;
        if !clouds.iter().any(|c| c.name == built.cloud.name) {
            clouds.push(built.cloud.clone());
        }
        config_bots.push(built);
    }
    let config_key_urls = clouds
        .iter()
        .map(|c| c.openid_metadata_url.clone())
        .collect();
    let registry = Arc::new(BotRegistry::default());
    registry
        .replace(config_bots.iter().map(|b| b.bot.clone()))
        .map_err(|e| StartError::Bots(e.to_string()))?;

    let validator = Arc::new(InboundValidator::new(
        http,
        settings.auth.inbound_config(),
        clouds,
    ));
    validator.start().await;

    let runtime = Runtime::start(
        settings.runtime.runtime_config(),
        validator.clone(),
        registry.clone(),
    );

    // The admin API's bots beside the configuration's, now and on every change.
    let follower = Arc::new(RegistryFollower::new(
        factory,
        admin_stores.bots.clone(),
        registry.clone(),
        validator,
        config_bots,
        settings.clouds.clone(),
        Environment::process(),
        settings.admin.credential_dirs.clone(),
    ));
    // Bounded: a Redis that accepts connections but never answers must not
    // keep the listeners (and /healthz, the startup probe) from starting.
    match tokio::time::timeout(STARTUP_STORE_READ, follower.sync())
        .await
        .unwrap_or_else(|_| Err(startup_read_timed_out()))
    {
        Ok(_) => {
            let st = follower.status();
            tracing::info!(
                served = st.served,
                failed = st.failed.len(),
                revision = ?st.revision,
                "bots from the admin API loaded"
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the bots registered through the admin API; they are applied once the admin store is reachable")
        }
    }
    follower.clone().spawn(settings.admin.registry_poll);
    if registry.is_empty() {
        tracing::warn!("no bots: every activity will be refused (add [[bots]] to the configuration, or register bots through the admin API)");
    }

    let admin = AdminState::new(
        admin_stores.clone(),
        settings.bots.clone(),
        Arc::new(outbound.tokens.clone()),
        AdminConfig {
            bootstrap_key: settings.admin.bootstrap_key.clone(),
            audit_retention: settings.admin.audit_retention,
            clouds: settings.clouds.clone(),
            credential_dirs: settings.admin.credential_dirs.clone(),
            ..AdminConfig::default()
        },
    )
    .map_err(|e| StartError::Admin(e.to_string()))?;
    let (admin, notifier) = notify::start(
        admin,
        &settings,
        redis.as_ref(),
        registry.clone(),
        notify_clients,
        runtime.counters().clone(),
    );
    let delegated = graph::DelegatedSlot::default();
    let graph = graph::build(
        &settings,
        redis.as_ref(),
        &prepared,
        outbound.tokens.clone(),
        admin.notifications.clone(),
        delegated.clone(),
    )
    .await
    .map_err(|e| StartError::Store(format!("Graph subscriptions: {e}")))?;
    let admin = admin.with_graph(graph.clone());
    let graph_auth = graph_auth::build(
        &settings,
        redis.as_ref(),
        &prepared,
        outbound.tokens.clone(),
        graph.store().clone(),
    )
    .await
    .map_err(|e| StartError::Store(format!("Graph delegated credentials: {e}")))?;
    if let Some(d) = &graph_auth.delegated {
        let _ = delegated.set(d.clone());
    }
    notifier.set_app_installer(graph_auth.clone());
    let admin = admin.with_graph_auth(graph_auth);
    let admin = Arc::new(admin);
    admin.spawn_audit_retention(Duration::from_secs(3600));
    if settings.admin.bootstrap_key.is_none() {
        match tokio::time::timeout(STARTUP_STORE_READ, admin_stores.keys.list())
            .await
            .unwrap_or_else(|_| Err(startup_read_timed_out()))
        {
            Ok(keys) if keys.is_empty() => tracing::warn!(
                "the admin API has no bootstrap key and no API key exists: nobody can use it; set [admin] bootstrap_key_file (or bootstrap_key_env) to a random key of at least 32 characters"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot tell whether any admin API key exists"),
        }
    }

    Ok(AppState {
        settings,
        runtime,
        redis,
        admin: web::Data::from(admin),
        registry: follower,
        config_key_urls,
        notifier,
        draining: Arc::default(),
        graph: Some(graph),
    })
}

/// Longest wait for each read of the admin store during start-up (the bots
/// and keys registered through the admin API); past it start-up carries on as
/// if the store were unreachable, and the registry follower retries.
const STARTUP_STORE_READ: Duration = Duration::from_secs(3);

fn startup_read_timed_out() -> botfleet_store::admin::AdminStoreError {
    botfleet_store::admin::AdminStoreError::Unavailable(format!(
        "no answer within {} at start-up",
        humantime::format_duration(STARTUP_STORE_READ)
    ))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

/// Readiness of this replica. `problems` keep it out of rotation (Redis
/// unreachable, signing keys of a configuration bot's cloud not loaded);
/// `warnings` do not (a registration this replica cannot build, keys of a
/// cloud only bots from the admin API use, the registry unreadable).
async fn readiness(state: &AppState) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    if state.draining.is_draining() {
        // First, and without waiting on Redis: the platform must see it at once.
        problems.push("shutting down".to_owned());
        return (problems, warnings);
    }
    if let Some(redis) = &state.redis {
        if let Err(e) = redis_ping(redis).await {
            problems.push(format!("redis: {e}"));
        }
    }
    for ks in state.runtime.validator().key_store_status() {
        if !ks.loaded {
            let line = format!(
                "signing keys of {} not loaded yet: {}",
                ks.metadata_url,
                ks.last_error.as_deref().unwrap_or("first fetch pending")
            );
            if state.config_key_urls.contains(&ks.metadata_url) {
                problems.push(line);
            } else {
                warnings.push(line);
            }
        }
    }
    let registry = state.registry.status();
    if let Some(e) = &registry.store_error {
        warnings.push(format!("bot registry: {e}"));
    }
    for (bot, e) in &registry.failed {
        warnings.push(format!(
            "bot `{bot}` from the admin API is not served here: {e}"
        ));
    }
    (problems, warnings)
}

/// How long a readiness check waits for Redis's PONG. Below the chart's probe
/// timeout (2 s), so that a Redis that drops packets (no connection refused)
/// is reported by name instead of every probe and the start-up check hanging
/// for the kernel's connect timeout (about two minutes on Linux).
const REDIS_PING_TIMEOUT: Duration = Duration::from_millis(1500);

async fn redis_ping(pool: &RedisPool) -> Result<(), String> {
    match tokio::time::timeout(REDIS_PING_TIMEOUT, pool.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer to PING within {}",
            humantime::format_duration(REDIS_PING_TIMEOUT)
        )),
    }
}

/// `host:port` of each Redis URL, for log lines: never the URL itself, which
/// may carry the password.
fn redis_hosts(urls: &[String]) -> String {
    urls.iter()
        .map(|u| match url::Url::parse(u) {
            Ok(p) => format!(
                "{}:{}",
                p.host_str().unwrap_or("?"),
                p.port().unwrap_or(6379)
            ),
            Err(_) => "(unparseable URL)".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `{"ready":true}` (200) or `{"ready":false,"problems":[...]}` (503), with
/// `warnings` when there are any and the bot registry's state:
/// `"registry":{"revision":7,"served":3,"failed":["b"]}`.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (problems, warnings) = readiness(&state).await;
    let RegistryStatus {
        revision,
        served,
        failed,
        ..
    } = state.registry.status();
    let mut body = serde_json::json!({
        "ready": problems.is_empty(),
        "registry": {
            "revision": revision,
            "served": served,
            "failed": failed.keys().collect::<Vec<_>>(),
        },
    });
    if !problems.is_empty() {
        body["problems"] = serde_json::json!(problems);
    }
    if !warnings.is_empty() {
        body["warnings"] = serde_json::json!(warnings);
    }
    if problems.is_empty() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// The admin listener's routes: the admin API, `/metrics`, `/healthz`,
/// `/readyz` (also mounted on the public listener with
/// `server.admin_on_public`).
fn operations(cfg: &mut web::ServiceConfig, state: &web::Data<AppState>) {
    admin::configure(cfg, state.admin.clone());
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics::handler));
}

/// HTTP workers of the admin listener: it serves operators, probes and
/// scrapers, not Teams' traffic.
const ADMIN_WORKERS: usize = 2;

/// Serves until SIGINT/SIGTERM, then shuts down gracefully within
/// `server.shutdown_grace` ([`shutdown`]: readiness off at once, the public
/// listener accepting for `server.shutdown_delay`, in-flight requests
/// finished). Prints one JSON line
/// `{"ready":true,"url":"http://PUBLIC","admin_url":"http://ADMIN"}` on stdout
/// once `/readyz` would answer 200 (both listeners bound, Redis reachable,
/// signing keys loaded), so scripts and tests can find port-0 listeners and
/// send at once; until then it logs what it waits for.
pub async fn serve(config: LoadedConfig) -> Result<(), StartError> {
    let server = config.settings.server.clone();
    let state = web::Data::new(build(config).await?);
    metrics::register(&state.clone().into_inner());
    let timings = shutdown::Timings {
        delay: server.shutdown_delay,
        grace: server.shutdown_grace,
    };

    let public_state = state.clone();
    let admin_on_public = server.admin_on_public;
    let mut public = HttpServer::new(move || {
        let state = public_state.clone();
        App::new()
            .app_data(state.clone())
            .configure(ingress_http::configure)
            .configure(graph::configure)
            .configure(|cfg| {
                if admin_on_public {
                    operations(cfg, &state);
                }
            })
            .default_service(web::to(problem::not_found))
    })
    // Signals are handled by `shutdown::on_signal`, in its order.
    .disable_signals()
    .shutdown_timeout(timings.drain_secs());
    if server.workers > 0 {
        public = public.workers(server.workers);
    }
    let bind_error = |source| StartError::Bind {
        addr: server.listen.clone(),
        key: "server.listen",
        source,
    };
    let (public, scheme) = match &server.tls {
        None => (public.bind(&server.listen).map_err(bind_error)?, "http"),
        Some(tls) => {
            let resolver = tls::CertResolver::new(&tls.cert_file, &tls.key_file)
                .map_err(|e| StartError::Tls(e.to_string()))?;
            let config = resolver
                .server_config()
                .map_err(|e| StartError::Tls(e.to_string()))?;
            resolver.spawn_reloader(
                tls.cert_file.clone(),
                tls.key_file.clone(),
                tls.reload_interval,
            );
            (
                public
                    .bind_rustls_0_23(&server.listen, config)
                    .map_err(bind_error)?,
                "https",
            )
        }
    };

    let admin_state = state.clone();
    let admin = HttpServer::new(move || {
        let state = admin_state.clone();
        App::new()
            .app_data(state.clone())
            .configure(|cfg| operations(cfg, &state))
            .default_service(web::to(problem::not_found))
    })
    .workers(ADMIN_WORKERS)
    .disable_signals()
    .shutdown_timeout(timings.drain_secs())
    .bind(&server.admin_listen)
    .map_err(|source| StartError::Bind {
        addr: server.admin_listen.clone(),
        key: "server.admin_listen",
        source,
    })?;

    let url_of = |scheme: &str, addrs: Vec<std::net::SocketAddr>| {
        addrs
            .first()
            .map(|a| format!("{scheme}://{a}"))
            .unwrap_or_default()
    };
    let url = url_of(scheme, public.addrs());
    let admin_url = url_of("http", admin.addrs());
    tracing::info!(%url, %admin_url, bots = state.runtime.bots().len(), "botfleet listening");
    if admin_on_public {
        tracing::warn!(
            %url,
            "server.admin_on_public = true: the admin API, /metrics, /healthz and /readyz are served on the PUBLIC listener too; everyone who reaches the messaging endpoint reaches them (keys still apply). Turn it off once the admin listener is reachable by your operators"
        );
    }
    let (public, admin) = (public.run(), admin.run());
    let (public_handle, admin_handle) = (public.handle(), admin.handle());
    let draining = state.draining.clone();
    if let Some(g) = &state.graph {
        // Graph must reach this URL: `graph.public_url` when set, else the listener's.
        g.set_public_url(&url);
        g.start();
    }
    let notifier = state.notifier.clone();
    actix_web::rt::spawn(announce_when_ready(state, url, admin_url));
    actix_web::rt::spawn(async move {
        let hand_back = async move {
            notifier.drain().await;
        };
        shutdown::on_signal(&draining, timings, public_handle, admin_handle, hand_back).await;
    });
    let (public, admin) = futures::future::join(public, admin).await;
    public?;
    admin?;
    Ok(())
}

/// First and largest pause between start-up readiness checks: they back off
/// (doubling) from the first to the second, so a replica waiting for Redis
/// asks it a dozen times a minute, not twice a second, and announces readiness
/// at most 5 s after Redis answers (`/readyz` itself checks on every request).
const READY_RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(5));
/// Longest gap between two "not ready yet" lines while nothing changes: one
/// line per check at first, the gaps doubling up to this.
const READY_LOG_MAX_GAP: Duration = Duration::from_secs(30);

/// Prints the ready line once [`readiness`] finds nothing missing; until then
/// checks again with backoff ([`READY_RETRY`]) and logs what is missing, with
/// the attempt and the next check (rate-limited: [`READY_LOG_MAX_GAP`]; at
/// once when the problems change).
async fn announce_when_ready(state: web::Data<AppState>, url: String, admin_url: String) {
    let started = std::time::Instant::now();
    let mut last: Vec<String> = Vec::new();
    let (mut delay, max_delay) = READY_RETRY;
    let mut logged: Option<(std::time::Instant, Duration)> = None;
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        let (problems, _) = readiness(&state).await;
        if problems.is_empty() {
            tracing::info!(%url, %admin_url, attempt, waited = %humantime::format_duration(round_ms(started.elapsed())), "botfleet ready");
            println!(
                "{}",
                serde_json::json!({"ready": true, "url": url, "admin_url": admin_url})
            );
            return;
        }
        let due = match logged {
            None => true,
            Some((at, gap)) => problems != last || at.elapsed() >= gap,
        };
        if due {
            let gap = logged.map_or(Duration::from_secs(1), |(_, g)| {
                (g * 2).min(READY_LOG_MAX_GAP)
            });
            tracing::warn!(
                attempt,
                waited = %humantime::format_duration(round_ms(started.elapsed())),
                next_check_in = %humantime::format_duration(delay),
                problems = ?problems,
                "botfleet is listening but not ready yet (/readyz answers 503); checking again"
            );
            logged = Some((std::time::Instant::now(), gap));
            last = problems;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(max_delay);
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
