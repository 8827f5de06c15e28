//! Starting and stopping a sim (in-process for tests, or from `serve`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};
use serde_json::{json, Value};

use crate::error::SimError;
use crate::keys::KeySet;
use crate::state::{Bot, BotRegistration, Conversation, Settings, Sim, BOTFRAMEWORK_TENANT};

/// How to start a sim.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// PEM file with the signing keys; created (with two keys) if missing.
    /// `None`: keys generated in memory, new `kid`s on every start.
    pub key_file: Option<PathBuf>,
    /// Bots the token endpoint accepts.
    pub bots: Vec<BotRegistration>,
    /// Conversations the connector knows from the start.
    pub conversations: Vec<Conversation>,
    /// `expires_in` of token endpoint tokens and default lifetime of minted tokens.
    pub token_lifetime_secs: u64,
    /// `iss` of channel -> bot tokens and of the OpenID metadata.
    pub issuer: String,
    /// Base URL written into metadata documents; default `http://127.0.0.1:PORT`.
    pub public_url: Option<String>,
    /// Value the App Service managed identity endpoint requires in `X-IDENTITY-HEADER`.
    pub identity_header: String,
    /// How many activities, violations and token requests are kept (each).
    pub max_records: usize,
    /// HTTP worker threads.
    pub workers: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            port: 0,
            key_file: None,
            bots: Vec::new(),
            conversations: Vec::new(),
            token_lifetime_secs: 3600,
            issuer: "https://api.botframework.com".into(),
            public_url: None,
            identity_header: "sim-identity-header".into(),
            max_records: 100_000,
            workers: 1,
        }
    }
}

/// A sim serving HTTP. Dropping it stops the server.
pub struct RunningSim {
    url: String,
    port: u16,
    sim: Arc<Sim>,
    handle: ServerHandle,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for RunningSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningSim")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Starts a sim on 127.0.0.1 and returns once it accepts connections.
/// Must be called within a tokio runtime.
pub async fn start(config: SimConfig) -> Result<RunningSim, SimError> {
    let listener =
        TcpListener::bind(("127.0.0.1", config.port)).map_err(|source| SimError::Bind {
            port: config.port,
            source,
        })?;
    let port = listener
        .local_addr()
        .map_err(|e| SimError::Internal(format!("cannot read the bound address: {e}")))?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let bots = config
        .bots
        .iter()
        .cloned()
        .map(Bot::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(SimError::InvalidBot)?;
    let key_file = config.key_file.clone();
    // Key generation takes a noticeable fraction of a second; not on the runtime.
    let keys = tokio::task::spawn_blocking(move || KeySet::load_or_create(key_file.as_deref()))
        .await
        .map_err(|e| SimError::Internal(format!("key loading task failed: {e}")))??;
    let public_url = config
        .public_url
        .as_deref()
        .unwrap_or(&url)
        .trim_end_matches('/')
        .to_owned();
    let settings = Settings {
        url: url.clone(),
        public_url,
        issuer: config.issuer.clone(),
        token_lifetime_secs: config.token_lifetime_secs,
        identity_header: config.identity_header.clone(),
        max_records: config.max_records,
    };
    let sim = Arc::new(Sim::new(settings, keys, bots));
    sim.register_conversations(config.conversations.clone());
    let data = web::Data::from(sim.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            // Before the connector's routes: `/_sim/graph` must win over `/_sim`.
            .configure(crate::graph::configure)
            .configure(crate::http::configure)
    })
    .workers(config.workers.max(1))
    // Signals are the embedding program's business (`serve` handles them).
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)
    .map_err(|e| SimError::Internal(format!("cannot serve on the bound socket: {e}")))?
    .run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    Ok(RunningSim {
        url,
        port,
        sim,
        handle,
        task: Some(task),
    })
}

impl RunningSim {
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The state, for tests that inspect or drive the sim without HTTP.
    pub fn sim(&self) -> &Arc<Sim> {
        &self.sim
    }

    /// A Teams-like service URL: `http://127.0.0.1:PORT/{region}/`.
    pub fn service_url(&self, region: &str) -> String {
        format!("{}/{}/", self.url, region.trim_matches('/'))
    }

    /// The token endpoint for `tenant` (`botframework.com` for multi-tenant bots).
    pub fn token_url(&self, tenant: &str) -> String {
        format!(
            "{}/{tenant}/oauth2/v2.0/token",
            self.sim.settings.public_url
        )
    }

    pub fn openid_metadata_url(&self) -> String {
        format!(
            "{}/v1/.well-known/openidconfiguration",
            self.sim.settings.public_url
        )
    }

    /// Base of the sim's Microsoft Graph: `{public url}/graph/v1.0` (no trailing slash).
    pub fn graph_url(&self) -> String {
        format!("{}/graph/v1.0", self.sim.settings.public_url)
    }

    /// The JSON `serve` prints on start, `ready` and `url` first so that a
    /// line-oriented reader can match its start.
    pub fn ready_info(&self) -> Value {
        let base = &self.sim.settings.public_url;
        json!({
            "ready": true,
            "url": self.url,
            "port": self.port,
            "pid": std::process::id(),
            "publicUrl": base,
            "serviceUrl": self.service_url("amer"),
            "openidMetadataUrl": self.openid_metadata_url(),
            "jwksUrl": format!("{base}/v1/.well-known/keys"),
            "tokenUrl": self.token_url(BOTFRAMEWORK_TENANT),
            "graphUrl": self.graph_url(),
            "graphOpenidMetadataUrl": format!("{base}/common/.well-known/openid-configuration"),
            "issuer": self.sim.settings.issuer,
            "kid": self.sim.active_kid(),
            "unendorsedKid": self.sim.unendorsed_kid(),
        })
    }

    /// [`RunningSim::ready_info`] as one line: `{"ready":true,"url":"...",...}`.
    pub fn ready_line(&self) -> String {
        let info = self.ready_info();
        let mut out = format!(r#"{{"ready":true,"url":{}"#, json!(self.url));
        if let Value::Object(map) = info {
            for (k, v) in map.iter().filter(|(k, _)| *k != "ready" && *k != "url") {
                out.push_str(&format!(",{}:{v}", json!(k)));
            }
        }
        out.push('}');
        out
    }

    /// Stops accepting connections and waits for the server to end.
    pub async fn stop(mut self) {
        self.handle.stop(true).await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Runs until the server stops (e.g. via a [`RunningSim::stop_handle`]).
    pub async fn wait(mut self) -> Result<(), SimError> {
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|e| SimError::Internal(format!("server task failed: {e}")))?
                .map_err(|e| SimError::Internal(format!("server failed: {e}"))),
            None => Ok(()),
        }
    }

    /// A handle that can stop the server from elsewhere.
    pub fn stop_handle(&self) -> ServerHandle {
        self.handle.clone()
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        if self.task.is_some() {
            // The stop command is sent when `stop` is called; the returned
            // future only waits for completion, which a drop cannot do.
            drop(self.handle.stop(false));
        }
    }
}
