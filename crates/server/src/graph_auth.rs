//! Delegated Graph access and app installation in `botfleet serve`
//! (docs/graph.md, "Delegated access" and "Reaching users who never talked to
//! the bot"): the `[graph_auth]` settings, the delegated-credential service
//! ([`botfleet_graph::delegated`]) over the store, and the installedApps
//! client with the bots' Graph app tokens.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use botfleet_auth::outbound::{
    ClientCredential, ClientCredentialsProvider, TokenCache, TokenHandle, TokenProvider,
};
use botfleet_auth::Secret;
use botfleet_graph::apps::{AppInstaller, InstallLimiter, InstalledChat};
use botfleet_graph::delegated::{
    valid_name, DelegatedConfig, DelegatedCredential, DelegatedService, OAuthClient, SealKeys,
};
use botfleet_store::graph::credentials::{
    CredentialStore, MemoryCredentialStore, RedisCredentialStore,
};
use botfleet_store::graph::GraphStore;
use botfleet_store::RedisPool;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::settings::{duration, PreparedBot, PreparedCredential, Settings, StoreBackend};

/// `[graph_auth]`: delegated Graph credentials and the key that seals their
/// tokens at rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphAuthSettings {
    /// File holding the token encryption key: 32 bytes as base64 or hex
    /// (`openssl rand -base64 32`). Required when credentials are configured.
    pub token_key_file: Option<PathBuf>,
    /// Environment variable holding the key instead.
    pub token_key_env: Option<String>,
    /// The key used before a rotation (still opens tokens sealed with it).
    pub previous_token_key_file: Option<PathBuf>,
    pub previous_token_key_env: Option<String>,
    /// Access tokens are replaced this long before they expire.
    #[serde(with = "duration")]
    pub refresh_margin: Duration,
    /// How long a sign-in URL works.
    #[serde(with = "duration")]
    pub sign_in_ttl: Duration,
    /// The admin listener's URL as the user's browser reaches it
    /// (`https://botfleet-admin.example.com`); the redirect URI is
    /// `{this}/admin/v1/graph/credentials/{name}/callback`. Empty: the URL
    /// the sign-in request was made to.
    pub redirect_base_url: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<DelegatedCredential>,
}

impl Default for GraphAuthSettings {
    fn default() -> Self {
        let d = DelegatedConfig::default();
        Self {
            token_key_file: None,
            token_key_env: None,
            previous_token_key_file: None,
            previous_token_key_env: None,
            refresh_margin: d.refresh_margin,
            sign_in_ttl: d.sign_in_ttl,
            redirect_base_url: String::new(),
            credentials: Vec::new(),
        }
    }
}

fn read_secret(
    file: &Option<PathBuf>,
    env: &Option<String>,
    key: &str,
) -> Result<Option<String>, (String, String)> {
    if let Some(p) = file {
        return std::fs::read_to_string(p).map(Some).map_err(|e| {
            (
                format!("graph_auth.{key}_file"),
                format!("cannot read `{}`: {e}", p.display()),
            )
        });
    }
    if let Some(v) = env {
        return std::env::var(v).map(Some).map_err(|_| {
            (
                format!("graph_auth.{key}_env"),
                format!("the environment variable `{v}` is not set"),
            )
        });
    }
    Ok(None)
}

impl GraphAuthSettings {
    /// The sealing keys; `Ok(None)` when no key is configured.
    pub fn keys(&self) -> Result<Option<SealKeys>, (String, String)> {
        let Some(current) = read_secret(&self.token_key_file, &self.token_key_env, "token_key")?
        else {
            return Ok(None);
        };
        let previous: Vec<String> = read_secret(
            &self.previous_token_key_file,
            &self.previous_token_key_env,
            "previous_token_key",
        )?
        .into_iter()
        .collect();
        SealKeys::from_texts(&current, &previous)
            .map(Some)
            .map_err(|e| ("graph_auth.token_key_file".to_owned(), e.to_string()))
    }

    /// Every check without the network: `(key, problem)` pairs.
    pub fn check(&self, bots: &[String]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.credentials.is_empty() {
            return out;
        }
        match self.keys() {
            Ok(Some(_)) => {}
            Ok(None) => out.push((
                "graph_auth.token_key_file".to_owned(),
                "delegated credentials are configured ([[graph_auth.credentials]]) but no key seals their tokens: set graph_auth.token_key_file (or token_key_env) to 32 random bytes in base64, e.g. `openssl rand -base64 32 > /etc/botfleet/graph-token.key`".to_owned(),
            )),
            Err(e) => out.push(e),
        }
        if !self.redirect_base_url.is_empty() && url::Url::parse(&self.redirect_base_url).is_err() {
            out.push((
                "graph_auth.redirect_base_url".into(),
                "must be an absolute URL such as https://botfleet-admin.example.com".into(),
            ));
        }
        if self.refresh_margin >= Duration::from_secs(3600) {
            out.push((
                "graph_auth.refresh_margin".into(),
                "must be less than 1h (access tokens live about an hour)".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, c) in self.credentials.iter().enumerate() {
            let k = |f: &str| format!("graph_auth.credentials[{i}].{f}");
            if !valid_name(&c.name) {
                out.push((k("name"), "must be 1 to 64 of A-Z a-z 0-9 . _ -".into()));
            }
            if !seen.insert(c.name.clone()) {
                out.push((k("name"), format!("`{}` is used twice", c.name)));
            }
            if !bots.iter().any(|b| b == &c.bot) {
                out.push((
                    k("bot"),
                    format!("`{}` is not a bot of the configuration", c.bot),
                ));
            }
            if c.tenant_id.trim().is_empty() || c.tenant_id.contains('/') {
                out.push((
                    k("tenant_id"),
                    "must be the tenant id the user signs in to".into(),
                ));
            }
            if c.scopes.is_empty()
                || c.scopes
                    .iter()
                    .any(|s| s.trim().is_empty() || s.contains(' '))
            {
                out.push((
                    k("scopes"),
                    "name the delegated permissions, one per entry, e.g. [\"https://graph.microsoft.com/ChatMessage.Read\"]".into(),
                ));
            }
        }
        out
    }
}

/// The server's delegated credentials and app installer.
pub struct GraphAuth {
    /// `None` without `[[graph_auth.credentials]]`.
    pub delegated: Option<Arc<DelegatedService>>,
    pub redirect_base_url: String,
    /// Credential name -> its bot.
    credential_bots: HashMap<String, String>,
    /// The configured credentials.
    credentials: Vec<DelegatedCredential>,
    bots: HashMap<String, PreparedBot>,
    graph_url: String,
    tokens: TokenCache,
    http: reqwest::Client,
    handles: Mutex<HashMap<(String, String), TokenHandle>>,
    limiter: Arc<InstallLimiter>,
    installers: Mutex<HashMap<String, Arc<AppInstaller>>>,
}

fn client_credential(c: &PreparedCredential, app: &str) -> Result<ClientCredential, String> {
    match c {
        PreparedCredential::Secret(s) => Ok(ClientCredential::Secret(s.clone())),
        PreparedCredential::Certificate(c) => Ok(ClientCredential::Certificate(c.clone())),
        PreparedCredential::WorkloadIdentity(env) => {
            Ok(ClientCredential::FederatedTokenFile(env.token_file.clone()))
        }
        PreparedCredential::ManagedIdentity { .. } => Err(format!(
            "bot with app id {app}: delegated access and app installation need a client secret, certificate or workload identity (managed identity cannot be an OAuth client)"
        )),
    }
}

impl GraphAuth {
    /// The bot a delegated credential acts as.
    pub fn bot_of(&self, credential: &str) -> Option<String> {
        self.credential_bots.get(credential).cloned()
    }

    /// The configured delegated credential `name`.
    pub fn credential(&self, name: &str) -> Option<&DelegatedCredential> {
        self.credentials.iter().find(|c| c.name == name)
    }

    fn graph_url(&self, bot: &PreparedBot) -> Option<String> {
        if !self.graph_url.is_empty() {
            return Some(self.graph_url.clone());
        }
        bot.cloud.graph_endpoints().map(|p| p.0.to_owned())
    }

    /// An app token for Graph as `bot` in `tenant` (client credentials,
    /// through the shared token cache).
    async fn app_token(&self, bot: &str, tenant: &str) -> Result<Secret, String> {
        let key = (bot.to_owned(), tenant.to_owned());
        let existing = self.handles.lock().get(&key).cloned();
        let handle = match existing {
            Some(h) => h,
            None => {
                let b = self
                    .bots
                    .get(bot)
                    .ok_or_else(|| format!("bot `{bot}` is not a configuration bot"))?;
                let app = b.settings.app_id.as_str();
                let cred = b
                    .credential
                    .as_ref()
                    .ok_or_else(|| format!("bot `{bot}` has no credential"))?;
                let provider: Arc<dyn TokenProvider> = Arc::new(
                    ClientCredentialsProvider::new(
                        &b.cloud,
                        app,
                        Some(tenant),
                        client_credential(cred, app)?,
                    )
                    .with_scope("https://graph.microsoft.com/.default")
                    .with_http_client(self.http.clone()),
                );
                let h = self.tokens.register(provider);
                self.handles.lock().insert(key, h.clone());
                h
            }
        };
        handle.token().await.map_err(|e| e.to_string())
    }

    /// Installs the bot's Teams app (`teams_app_id`, default the bot's app
    /// id) for each user of `tenant` and reads each 1:1 chat id. One result
    /// per user, in order.
    pub async fn install_for_users(
        &self,
        bot: &str,
        tenant: &str,
        teams_app_id: Option<&str>,
        users: &[String],
    ) -> Result<Vec<Result<InstalledChat, String>>, String> {
        let b = self.bots.get(bot).ok_or_else(|| {
            format!("bot `{bot}` is not a configuration bot: app installation needs its credential")
        })?;
        let graph_url = self
            .graph_url(b)
            .ok_or("no Graph URL for this bot's cloud: set graph.graph_url")?;
        let installer = {
            let mut g = self.installers.lock();
            g.entry(graph_url.clone())
                .or_insert_with(|| {
                    Arc::new(AppInstaller::new(
                        self.http.clone(),
                        &graph_url,
                        self.limiter.clone(),
                    ))
                })
                .clone()
        };
        let token = self.app_token(bot, tenant).await?;
        let app = teams_app_id.unwrap_or(&b.settings.app_id).to_owned();
        let results = futures::future::join_all(users.iter().map(|u| {
            let (installer, token, app) = (installer.clone(), token.clone(), app.clone());
            async move {
                installer
                    .install_and_get_chat(token.expose(), &app, tenant, u)
                    .await
                    .map_err(|e| e.to_string())
            }
        }))
        .await;
        Ok(results)
    }
}

/// `installApp` of proactive `users` targets: the bot's app for one user,
/// with the bot's Graph app token of the user's tenant (already installed is
/// fine; throttling waits `Retry-After`).
#[async_trait::async_trait]
impl botfleet_runtime::notify::AppInstaller for GraphAuth {
    async fn install_for_user(&self, bot: &str, tenant: &str, user: &str) -> Result<(), String> {
        let mut results = self
            .install_for_users(bot, tenant, None, &[user.to_owned()])
            .await?;
        match results.pop() {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(format!("Graph installedApps: {e}")),
            None => Err("Graph installedApps gave no result".into()),
        }
    }
}

/// Builds the delegated credentials (each bot's app registration as the
/// OAuth client of its tenant) and the installer.
pub(crate) async fn build(
    settings: &Settings,
    redis: Option<&RedisPool>,
    prepared: &[PreparedBot],
    tokens: TokenCache,
    subscriptions: Arc<dyn GraphStore>,
) -> Result<Arc<GraphAuth>, String> {
    let s = &settings.graph_auth;
    let http = botfleet_auth::outbound::default_http_client();
    let bots: HashMap<String, PreparedBot> = prepared
        .iter()
        .map(|p| (p.settings.id.clone(), p.clone()))
        .collect();
    let delegated = if s.credentials.is_empty() {
        None
    } else {
        let keys = s.keys().map_err(|(k, p)| format!("{k}: {p}"))?.ok_or(
            "graph_auth.token_key_file: delegated credentials need a token encryption key",
        )?;
        // The subscription store of the Graph service: its leases, and the
        // subscriptions marked when a credential fails.
        let graph = subscriptions;
        let store: Arc<dyn CredentialStore> = match (settings.store.backend, redis) {
            (StoreBackend::Redis, Some(pool)) => Arc::new(RedisCredentialStore::new(
                pool.clone(),
                &settings.store.key_prefix,
            )),
            _ => Arc::new(MemoryCredentialStore::new()),
        };
        let mut creds = Vec::new();
        for c in &s.credentials {
            let b = bots.get(&c.bot).ok_or_else(|| {
                format!("graph_auth.credentials: bot `{}` is not configured", c.bot)
            })?;
            let app = b.settings.app_id.as_str();
            let cred = b.credential.as_ref().ok_or_else(|| {
                format!("graph_auth.credentials: bot `{}` has no credential", c.bot)
            })?;
            let client = OAuthClient::new(
                app,
                b.cloud.token_url(Some(&c.tenant_id)),
                client_credential(cred, app)?,
                http.clone(),
            );
            creds.push((c.clone(), client));
        }
        tracing::info!(
            credentials = creds.len(),
            "Graph delegated credentials configured; tokens sealed with AES-256-GCM"
        );
        Some(DelegatedService::new(
            creds,
            store,
            graph,
            keys,
            DelegatedConfig {
                refresh_margin: s.refresh_margin,
                sign_in_ttl: s.sign_in_ttl,
                ..DelegatedConfig::default()
            },
            botfleet_store::jobs::consumer_name(),
        ))
    };
    Ok(Arc::new(GraphAuth {
        delegated,
        redirect_base_url: s.redirect_base_url.trim_end_matches('/').to_owned(),
        credential_bots: s
            .credentials
            .iter()
            .map(|c| (c.name.clone(), c.bot.clone()))
            .collect(),
        credentials: s.credentials.clone(),
        bots,
        graph_url: settings.graph.graph_url.trim_end_matches('/').to_owned(),
        tokens,
        http,
        handles: Mutex::new(HashMap::new()),
        limiter: Arc::new(InstallLimiter::default()),
        installers: Mutex::new(HashMap::new()),
    }))
}

/// Registers the delegated-credential metrics: refreshes, sign-ins,
/// refreshes served by another replica's token, and refresh failures by
/// reason (`consent_revoked`, `refresh_expired`, `refresh_invalid`,
/// `client_auth`, `transient`, `decrypt`, `store`): alert on any increase.
/// For the metrics registry's owner to call next to the other Graph metrics.
pub fn register_metrics(
    meter: &botfleet_telemetry::metrics::MeterHandle,
    auth: std::sync::Weak<GraphAuth>,
) {
    use botfleet_telemetry::metrics::Label;
    use std::sync::atomic::Ordering::Relaxed;
    let a = auth.clone();
    let _ = meter
        .u64_observable_counter("botfleet_graph_delegated_refresh_failures")
        .with_description(
            "Delegated Graph token refreshes that failed, by reason: alert on any increase.",
        )
        .with_callback(move |o| {
            use botfleet_graph::delegated::FailureReason as R;
            let seen = a
                .upgrade()
                .and_then(|a| a.delegated.clone())
                .map(|d| d.counters().refresh_failures())
                .unwrap_or_default();
            // Every reason from zero: `increase()` needs a sample before the
            // first failure, or the first one never alerts.
            for r in [
                R::ConsentRevoked,
                R::RefreshExpired,
                R::RefreshInvalid,
                R::ClientAuth,
                R::Transient,
                R::Decrypt,
                R::Store,
            ] {
                let k = r.as_str();
                o.observe(
                    seen.get(k).copied().unwrap_or(0),
                    &[Label::new("reason", k)],
                );
            }
        })
        .build();
    let a = auth;
    let _ = meter
        .u64_observable_counter("botfleet_graph_delegated_refreshes")
        .with_description("Delegated Graph token refreshes made by this replica.")
        .with_callback(move |o| {
            let d = a.upgrade().and_then(|a| a.delegated.clone());
            o.observe(d.map_or(0, |d| d.counters().refreshes.load(Relaxed)), &[]);
        })
        .build();
}
