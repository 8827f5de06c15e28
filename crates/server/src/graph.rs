//! Microsoft Graph change notifications in `botfleet serve` (docs/graph.md):
//! the `[graph]` settings, the public endpoints (`POST /api/graph/notifications`
//! and `POST /api/graph/lifecycle`), the bots' Graph tokens (the shared token
//! cache, scope `{graph}/.default`, per tenant), the job action through the
//! notification job store, and the metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use async_trait::async_trait;
use botfleet_auth::outbound::{
    ClientCredential, ClientCredentialsProvider, TokenCache, TokenHandle, TokenProvider,
};
use botfleet_auth::Secret;
use botfleet_graph::model::Source;
use botfleet_graph::service::{
    GraphService, ReceiveError, StartJobError, LIFECYCLE_PATH, NOTIFICATIONS_PATH,
};
use botfleet_graph::{GraphApp, GraphApps, GraphConfig, JobStarter, SubscriptionSpec};
use botfleet_store::graph::{GraphStore, MemoryGraphStore, RedisGraphStore};
use botfleet_store::jobs::{JobSpec, JobStoreError};
use botfleet_store::RedisPool;
use futures::StreamExt as _;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::admin::notifications::NotificationsState;
use crate::settings::{duration, PreparedBot, PreparedCredential, Settings, StoreBackend};

/// `[graph]`: Graph change notifications (docs/graph.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphSettings {
    /// Base URL Graph reaches this deployment at (`https://bots.example.com`);
    /// `/api/graph/notifications` and `/api/graph/lifecycle` are appended.
    /// Empty: the public listener's own URL (tests, local runs).
    pub public_url: String,
    /// Graph v1.0 base for bots of a custom cloud (presets know theirs).
    pub graph_url: String,
    /// OpenID metadata of validation-token keys for custom clouds.
    pub openid_metadata_url: String,
    /// Lifetime asked for at creation and renewal (at most 4320m).
    #[serde(with = "duration")]
    pub lifetime: Duration,
    /// Renew when less than this fraction of `lifetime` remains (0.1 to 0.9).
    pub renew_at_fraction: f64,
    /// How often the renewing replica reads each subscription back.
    #[serde(with = "duration")]
    pub check_interval: Duration,
    /// How often `GET /subscriptions` is compared with the registry.
    #[serde(with = "duration")]
    pub reconcile_interval: Duration,
    /// A replica's lease on a subscription (renewed every third of it).
    #[serde(with = "duration")]
    pub lease: Duration,
    /// Inbox entries a replica took and did not finish for this long are
    /// processed by another one.
    #[serde(with = "duration")]
    pub reclaim_idle: Duration,
    /// The subscriptions of the configuration (read-only in the admin API).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<SubscriptionSpec>,
}

impl Default for GraphSettings {
    fn default() -> Self {
        let d = GraphConfig::default();
        Self {
            public_url: String::new(),
            graph_url: String::new(),
            openid_metadata_url: String::new(),
            lifetime: d.lifetime,
            renew_at_fraction: d.renew_at_fraction,
            check_interval: d.check_interval,
            reconcile_interval: d.reconcile_interval,
            lease: d.lease,
            reclaim_idle: d.reclaim_idle,
            subscriptions: Vec::new(),
        }
    }
}

impl GraphSettings {
    pub fn config(&self) -> GraphConfig {
        GraphConfig {
            public_url: self.public_url.trim_end_matches('/').to_owned(),
            lifetime: self.lifetime,
            renew_at_fraction: self.renew_at_fraction,
            check_interval: self.check_interval,
            reconcile_interval: self.reconcile_interval,
            lease: self.lease,
            reclaim_idle: self.reclaim_idle,
            ..GraphConfig::default()
        }
    }

    /// Every check without the network: `(key, problem)` pairs.
    pub fn check(&self, bots: &[String]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut fail = |k: &str, p: &str| out.push((format!("graph.{k}"), p.to_owned()));
        if !self.public_url.is_empty() && url::Url::parse(&self.public_url).is_err() {
            fail(
                "public_url",
                "must be an absolute URL such as https://bots.example.com",
            );
        }
        let max = Duration::from_secs(botfleet_graph::model::MAX_LIFETIME_MINUTES * 60);
        if self.lifetime < Duration::from_secs(60) || self.lifetime > max {
            fail(
                "lifetime",
                "must be between 1m and 4320m (Graph's maximum for Teams messages), e.g. \"4200m\"",
            );
        }
        if !(0.1..=0.9).contains(&self.renew_at_fraction) {
            fail(
                "renew_at_fraction",
                "must be between 0.1 and 0.9, e.g. 0.5 (renew at half the lifetime)",
            );
        }
        for (k, d) in [
            ("check_interval", self.check_interval),
            ("reconcile_interval", self.reconcile_interval),
            ("lease", self.lease),
            ("reclaim_idle", self.reclaim_idle),
        ] {
            if d < Duration::from_millis(300) || d > Duration::from_secs(24 * 3600) {
                fail(k, "must be between 300ms and 24h");
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.subscriptions.iter().enumerate() {
            if let Err((k, p)) = s.check() {
                out.push((format!("graph.subscriptions[{i}].{k}"), p));
            }
            if !seen.insert(s.id.clone()) {
                out.push((
                    format!("graph.subscriptions[{i}].id"),
                    format!("`{}` is used twice", s.id),
                ));
            }
            if !bots.iter().any(|b| b == &s.bot) {
                out.push((
                    format!("graph.subscriptions[{i}].bot"),
                    format!("`{}` is not a bot of the configuration", s.bot),
                ));
            }
            if let Some(e) = &s.encryption {
                for (k, p) in [
                    ("certificate_file", Some(&e.certificate_file)),
                    ("key_file", Some(&e.key_file)),
                    ("previous_key_file", e.previous_key_file.as_ref()),
                ] {
                    if let Some(p) = p {
                        if !p.is_file() {
                            out.push((
                                format!("graph.subscriptions[{i}].encryption.{k}"),
                                format!("`{}` is not a readable file", p.display()),
                            ));
                        }
                    }
                }
                if let Err(e) = botfleet_graph::crypto::KeyRing::from_files(
                    &e.key_file,
                    e.previous_key_file.as_deref(),
                ) {
                    out.push((
                        format!("graph.subscriptions[{i}].encryption.key_file"),
                        e.to_string(),
                    ));
                }
                if let Err(e) = botfleet_graph::crypto::certificate_for_graph(&e.certificate_file) {
                    out.push((
                        format!("graph.subscriptions[{i}].encryption.certificate_file"),
                        e.to_string(),
                    ));
                }
            }
        }
        out
    }
}

impl GraphSettings {
    /// Each subscription naming a delegated credential names one of
    /// `[[graph_auth.credentials]]` acting as the subscription's bot in its
    /// tenant (the token's app and tenant are the subscription's owner at
    /// Graph): `(key, problem)` pairs.
    pub fn check_credentials(
        &self,
        credentials: &[botfleet_graph::delegated::DelegatedCredential],
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, s) in self.subscriptions.iter().enumerate() {
            if let Some(name) = s.credential.delegated() {
                if let Err(p) = credential_matches(s, credentials.iter().find(|c| c.name == name)) {
                    out.push((format!("graph.subscriptions[{i}].credential.name"), p));
                }
            }
        }
        out
    }
}

/// Whether `credential` (the one `spec` names) can serve `spec`; the problem
/// otherwise.
pub(crate) fn credential_matches(
    spec: &SubscriptionSpec,
    credential: Option<&botfleet_graph::delegated::DelegatedCredential>,
) -> Result<(), String> {
    let name = spec.credential.delegated().unwrap_or_default();
    let Some(c) = credential else {
        return Err(format!(
            "`{name}` is not a delegated credential of [[graph_auth.credentials]]"
        ));
    };
    if c.bot != spec.bot || c.tenant_id != spec.tenant_id {
        return Err(format!(
            "credential `{name}` acts as bot `{}` in tenant `{}`; the subscription is bot `{}` in tenant `{}`",
            c.bot, c.tenant_id, spec.bot, spec.tenant_id
        ));
    }
    Ok(())
}

// ----------------------------------------------------------------- tokens --

/// The configuration bots' Graph side: their credentials in the shared token
/// cache, one token per (bot, tenant), scope `{graph host}/.default`.
struct ServerApps {
    bots: HashMap<String, PreparedBot>,
    graph_url: String,
    openid_metadata_url: String,
    tokens: TokenCache,
    http: reqwest::Client,
    handles: Mutex<HashMap<(String, String), TokenHandle>>,
    /// The delegated credentials, set once `[graph_auth]` is built (it needs
    /// the Graph service's store, so it comes after).
    delegated: DelegatedSlot,
}

/// Where [`build`]'s token source finds the delegated credentials
/// (`crate::graph_auth::GraphAuth::delegated`), filled after both are built.
pub(crate) type DelegatedSlot =
    Arc<std::sync::OnceLock<Arc<botfleet_graph::delegated::DelegatedService>>>;

impl ServerApps {
    fn endpoints(&self, bot: &PreparedBot) -> Option<(String, String)> {
        let preset = bot.cloud.graph_endpoints();
        let graph = if self.graph_url.is_empty() {
            preset.map(|p| p.0.to_owned())?
        } else {
            self.graph_url.clone()
        };
        let meta = if self.openid_metadata_url.is_empty() {
            preset.map(|p| p.1.to_owned())?
        } else {
            self.openid_metadata_url.clone()
        };
        Some((graph, meta))
    }

    /// `https://graph.microsoft.com/.default` for the public cloud and any
    /// custom cloud (botfleet-sim issues Graph tokens for that audience);
    /// the sovereign Graph host's own otherwise.
    fn scope(graph_url: &str) -> String {
        match url::Url::parse(graph_url) {
            Ok(u)
                if u.host_str().is_some_and(|h| {
                    h.starts_with("graph.")
                        || h.ends_with("-graph.microsoft.us")
                        || h.starts_with("microsoftgraph.")
                }) =>
            {
                format!(
                    "{}://{}/.default",
                    u.scheme(),
                    u.host_str().unwrap_or_default()
                )
            }
            _ => "https://graph.microsoft.com/.default".to_owned(),
        }
    }
}

#[async_trait]
impl GraphApps for ServerApps {
    fn app(&self, bot: &str) -> Option<GraphApp> {
        let b = self.bots.get(bot)?;
        b.credential.as_ref()?;
        let (graph_url, openid_metadata_url) = self.endpoints(b)?;
        Some(GraphApp {
            app_id: b.settings.app_id.clone(),
            graph_url,
            openid_metadata_url,
        })
    }

    async fn token(&self, bot: &str, tenant: &str) -> Result<Secret, String> {
        let key = (bot.to_owned(), tenant.to_owned());
        let handle = self.handles.lock().get(&key).cloned();
        let handle = match handle {
            Some(h) => h,
            None => {
                let b = self
                    .bots
                    .get(bot)
                    .ok_or_else(|| format!("bot `{bot}` is not a configuration bot"))?;
                let (graph_url, _) = self
                    .endpoints(b)
                    .ok_or("no Graph URL for this cloud: set graph.graph_url")?;
                let scope = Self::scope(&graph_url);
                let cloud = &b.cloud;
                let app = b.settings.app_id.as_str();
                let provider: Arc<dyn TokenProvider> = match &b.credential {
                    Some(PreparedCredential::Secret(s)) => Arc::new(
                        ClientCredentialsProvider::new(cloud, app, Some(tenant), ClientCredential::Secret(s.clone()))
                            .with_scope(scope)
                            .with_http_client(self.http.clone()),
                    ),
                    Some(PreparedCredential::Certificate(c)) => Arc::new(
                        ClientCredentialsProvider::new(cloud, app, Some(tenant), ClientCredential::Certificate(c.clone()))
                            .with_scope(scope)
                            .with_http_client(self.http.clone()),
                    ),
                    Some(PreparedCredential::WorkloadIdentity(env)) => Arc::new(
                        ClientCredentialsProvider::workload_identity(cloud, app, Some(tenant), env)
                            .with_scope(scope)
                            .with_http_client(self.http.clone()),
                    ),
                    Some(PreparedCredential::ManagedIdentity { .. }) => {
                        return Err("Graph subscriptions need a client secret, certificate or workload identity (managed identity is not supported for Graph yet)".into())
                    }
                    None => return Err(format!("bot `{bot}` has no credential")),
                };
                let h = self.tokens.register(provider);
                self.handles.lock().insert(key, h.clone());
                h
            }
        };
        handle.token().await.map_err(|e| e.to_string())
    }

    async fn delegated_token(&self, name: &str) -> Result<Secret, String> {
        let d = self.delegated.get().ok_or_else(|| {
            format!("delegated credential `{name}` is not configured: add it to [[graph_auth.credentials]]")
        })?;
        d.access_token(name).await.map_err(|e| e.to_string())
    }

    async fn invalidate_delegated(&self, name: &str, token: &Secret) {
        if let Some(d) = self.delegated.get() {
            if let Err(e) = d.invalidate(name, token).await {
                tracing::warn!(credential = %name, error = %e, "cannot drop the delegated access token Graph refused; it is used until its expiry");
            }
        }
    }
}

// ------------------------------------------------------------------- jobs --

/// The job action: a proactive notification job through the job store, as
/// `POST /admin/v1/bots/{bot}/notifications` would create it.
struct ServerJobs(NotificationsState);

#[async_trait]
impl JobStarter for ServerJobs {
    async fn start(
        &self,
        bot: &str,
        targets: &serde_json::Value,
        activity: serde_json::Value,
        idempotency_key: &str,
        created_by: &str,
    ) -> Result<String, StartJobError> {
        use crate::admin::notifications::{check_activity, selection, TargetsBody};
        let body: TargetsBody = serde_json::from_value(targets.clone())
            .map_err(|e| StartJobError::Permanent(format!("action.targets: {e}")))?;
        let targets = selection(body).map_err(|e| StartJobError::Permanent(e.to_string()))?;
        check_activity(&activity).map_err(|e| StartJobError::Permanent(e.to_string()))?;
        let spec = JobSpec {
            bot_id: bot.to_owned(),
            targets,
            activity,
            idempotency_key: Some(idempotency_key.to_owned()),
            // The key is derived from the message: the same key is the same body.
            body_hash: idempotency_key.to_owned(),
            created_by: Some(created_by.to_owned()),
        };
        let created = self
            .0
            .jobs
            .create_job(spec, crate::admin::now_ms())
            .await
            .map_err(|e| match e {
                JobStoreError::Unavailable(m) => StartJobError::Transient(m),
                other => StartJobError::Permanent(other.to_string()),
            })?;
        let id = created.job().id.clone();
        if let Some(hook) = &self.0.on_created {
            hook(&id);
        }
        Ok(id)
    }
}

// ------------------------------------------------------------------ start --

/// Builds the Graph service: its store, the configuration's subscriptions
/// written to the registry (those removed from the configuration deleted),
/// the token source and the job action. [`GraphService::start`] is called
/// once the public URL is known.
pub(crate) async fn build(
    settings: &Settings,
    redis: Option<&RedisPool>,
    prepared: &[PreparedBot],
    tokens: TokenCache,
    notifications: Option<NotificationsState>,
    delegated: DelegatedSlot,
) -> Result<Arc<GraphService>, String> {
    let store: Arc<dyn GraphStore> = match (settings.store.backend, redis) {
        (StoreBackend::Redis, Some(pool)) => Arc::new(RedisGraphStore::new(
            pool.clone(),
            &settings.store.key_prefix,
        )),
        _ => Arc::new(MemoryGraphStore::new()),
    };
    let g = &settings.graph;
    let apps = Arc::new(ServerApps {
        bots: prepared
            .iter()
            .map(|p| (p.settings.id.clone(), p.clone()))
            .collect(),
        graph_url: g.graph_url.trim_end_matches('/').to_owned(),
        openid_metadata_url: g.openid_metadata_url.clone(),
        tokens,
        http: botfleet_auth::outbound::default_http_client(),
        handles: Mutex::new(HashMap::new()),
        delegated,
    });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let webhook_http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let jobs = notifications.map(|n| Arc::new(ServerJobs(n)) as Arc<dyn JobStarter>);
    let owner = botfleet_store::jobs::consumer_name();
    let service = GraphService::new(
        store.clone(),
        apps,
        jobs,
        http,
        webhook_http,
        g.config(),
        owner,
    );
    // The configuration's subscriptions, stored so every replica runs them.
    // A store that does not answer at start-up must not stop the process (a
    // restart loop on Kubernetes whenever Redis is late): the configuration is
    // published by a task that retries with backoff, and the service's own
    // sync loop starts the actors once the registry answers.
    if let Err(e) = publish_configured(&store, &service, &g.subscriptions).await {
        tracing::error!(
            error = %e,
            "Graph: the store did not answer at start-up; the configured subscriptions are stored when it does (retried with backoff)"
        );
        let (store, service, subs) = (store.clone(), service.clone(), g.subscriptions.clone());
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(500);
            loop {
                tokio::time::sleep(wait).await;
                match publish_configured(&store, &service, &subs).await {
                    Ok(()) => {
                        tracing::info!("Graph: the configured subscriptions are stored");
                        break;
                    }
                    Err(e) => {
                        wait = (wait * 2).min(Duration::from_secs(30));
                        tracing::warn!(error = %e, retry_in = ?wait, "Graph: the store still does not answer; the configured subscriptions are not stored yet");
                    }
                }
            }
        });
    }
    Ok(service)
}

/// Writes the configuration's subscriptions to the registry (those removed
/// from the configuration deleted) and applies the registry.
async fn publish_configured(
    store: &Arc<dyn GraphStore>,
    service: &Arc<GraphService>,
    subscriptions: &[SubscriptionSpec],
) -> Result<(), String> {
    let stored = store
        .list_subscriptions()
        .await
        .map_err(|e| e.to_string())?;
    for s in subscriptions {
        let mut spec = s.clone();
        spec.source = Source::Configuration;
        let json = Secret::revealing(|| serde_json::to_string(&spec)).map_err(|e| e.to_string())?;
        if !stored
            .iter()
            .any(|x| x.id == spec.id && x.spec_json == json)
        {
            store
                .put_subscription(&spec.id, &json)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    for x in stored {
        let from_config = serde_json::from_str::<SubscriptionSpec>(&x.spec_json)
            .map(|s| s.source == Source::Configuration)
            .unwrap_or(false);
        if from_config && !subscriptions.iter().any(|s| s.id == x.id) {
            tracing::info!(subscription = %x.id, "Graph: a subscription removed from the configuration is deleted");
            let _ = service.delete(&x.id).await;
        }
    }
    service.sync().await.map_err(|e| e.to_string())
}

// --------------------------------------------------------------- endpoint --

/// Mounts the two public endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(NOTIFICATIONS_PATH, web::post().to(notifications))
        .route(LIFECYCLE_PATH, web::post().to(notifications));
}

/// Both paths: the validation handshake (`?validationToken=`: the decoded
/// token as `text/plain`, 200, `nosniff`), else a notification collection:
/// 202 once persisted, 400 malformed, 503 when the inbox cannot be written
/// (Graph retries).
async fn notifications(
    req: HttpRequest,
    mut payload: web::Payload,
    state: web::Data<crate::AppState>,
) -> HttpResponse {
    let Some(graph) = state.graph.clone() else {
        return HttpResponse::NotFound().finish();
    };
    if let Some(token) = GraphService::validation_token(req.query_string()) {
        graph
            .counters()
            .validations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return match token {
            Ok(t) => HttpResponse::Ok()
                .content_type("text/plain; charset=utf-8")
                .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                .insert_header((header::CONTENT_SECURITY_POLICY, "default-src 'none'"))
                .body(t),
            Err(()) => HttpResponse::BadRequest()
                .content_type("text/plain; charset=utf-8")
                .body("validationToken too long"),
        };
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else {
            return HttpResponse::BadRequest().finish();
        };
        if body.len() + chunk.len() > botfleet_graph::service::MAX_BODY_BYTES {
            return HttpResponse::PayloadTooLarge().finish();
        }
        body.extend_from_slice(&chunk);
    }
    match graph.receive(&body).await {
        Ok(_) => HttpResponse::Accepted().finish(),
        Err(ReceiveError::Malformed) => HttpResponse::BadRequest().finish(),
        Err(ReceiveError::Persist(e)) => {
            tracing::error!(error = %e, "Graph notifications not persisted; answered 503 so Graph retries");
            HttpResponse::ServiceUnavailable().finish()
        }
    }
}

/// Registers the Graph metrics (counters of this replica) on the metrics
/// registry: items received/accepted/dropped/rejected, actions, duplicates,
/// subscription creations, renewals and renewal failures (alert on any),
/// reauthorizations, removals, resyncs, throttling.
pub(crate) fn register_metrics(
    meter: &botfleet_telemetry::metrics::MeterHandle,
    state: std::sync::Weak<crate::AppState>,
) {
    use botfleet_graph::service::Counters;
    use botfleet_telemetry::metrics::Label;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    type Read = fn(&Counters) -> &AtomicU64;
    let plain: [(&'static str, &'static str, Read); 16] = [
        (
            "botfleet_graph_items_received",
            "Change and lifecycle notification items received.",
            |c| &c.items_received,
        ),
        (
            "botfleet_graph_items_accepted",
            "Items whose clientState matched, persisted to the inbox before the 202.",
            |c| &c.items_accepted,
        ),
        (
            "botfleet_graph_persist_failures",
            "Notification POSTs answered 503 because the inbox could not be written.",
            |c| &c.batches_persist_failed,
        ),
        (
            "botfleet_graph_validations",
            "Validation handshakes answered.",
            |c| &c.validations,
        ),
        (
            "botfleet_graph_duplicates",
            "Messages found already processed (resends, resync overlaps).",
            |c| &c.duplicates,
        ),
        (
            "botfleet_graph_filtered",
            "Messages the action's `contains` filter skipped.",
            |c| &c.filtered,
        ),
        (
            "botfleet_graph_action_failures",
            "Actions that failed (retried when transient).",
            |c| &c.action_failures,
        ),
        (
            "botfleet_graph_subscription_creations",
            "Subscriptions created (first time or recreated).",
            |c| &c.creations,
        ),
        (
            "botfleet_graph_subscription_renewals",
            "Subscriptions renewed.",
            |c| &c.renewals,
        ),
        (
            "botfleet_graph_subscription_renewal_failures",
            "Renewals that failed: alert on any increase.",
            |c| &c.renewal_failures,
        ),
        (
            "botfleet_graph_subscription_reauthorizations",
            "Subscriptions reauthorized after reauthorizationRequired.",
            |c| &c.reauthorizations,
        ),
        (
            "botfleet_graph_subscription_removals",
            "Subscriptions recreated after subscriptionRemoved or reconciliation.",
            |c| &c.removals,
        ),
        (
            "botfleet_graph_resyncs",
            "Gap reads (after removal, recreation, start-up or takeover).",
            |c| &c.resyncs,
        ),
        (
            "botfleet_graph_resynced_messages",
            "Messages read back by resyncs.",
            |c| &c.resynced_messages,
        ),
        (
            "botfleet_graph_throttled",
            "Graph calls answered 429 (or 503 with Retry-After).",
            |c| &c.throttled,
        ),
        (
            "botfleet_graph_reconcile_missing",
            "Subscriptions reconciliation found missing at Graph.",
            |c| &c.reconcile_missing,
        ),
    ];
    for (name, help, read) in plain {
        let s = state.clone();
        let _ = meter
            .u64_observable_counter(name)
            .with_description(help)
            .with_callback(move |o| {
                if let Some(g) = s.upgrade().and_then(|s| s.graph.clone()) {
                    o.observe(read(g.counters()).load(Relaxed), &[]);
                }
            })
            .build();
    }
    type ReadMap = fn(&Counters) -> std::collections::BTreeMap<&'static str, u64>;
    let maps: [(&'static str, &'static str, &'static str, ReadMap); 3] = [
        ("botfleet_graph_items_dropped", "Items dropped at the endpoint, never processed, by reason (client_state, unknown_subscription, malformed).", "reason", |c| c.dropped()),
        ("botfleet_graph_items_rejected", "Items refused by the processor (signature, token_invalid, key_unwrap, ...), by reason.", "reason", |c| c.rejected()),
        ("botfleet_graph_actions", "Actions run, by kind (webhook, job, record).", "kind", |c| c.actions()),
    ];
    for (name, help, label, read) in maps {
        let s = state.clone();
        let _ = meter
            .u64_observable_counter(name)
            .with_description(help)
            .with_callback(move |o| {
                if let Some(g) = s.upgrade().and_then(|s| s.graph.clone()) {
                    for (k, v) in read(g.counters()) {
                        o.observe(v, &[Label::new(label, k)]);
                    }
                }
            })
            .build();
    }
}
