//! Configuration: embedded defaults <- file (`--config`) <- `BOTFLEET__SECTION__KEY`
//! variables <- secrets named by `*_file` / `*_env` <- the Bot Framework's own
//! variables for a one-bot deployment (see [`sources`] and docs/configuration.md).
//!
//! [`load`] is the one function that turns all of that into what `serve` runs:
//! it parses, validates every key, reads every file a key names (secrets,
//! certificates) and builds what can be built without the network. `serve` and
//! `check-config` both call it, so they cannot disagree about a configuration.
//! An error names the full key path (`bots[0].handler.url`), where the value
//! came from (file and line, or environment variable) and what to do.
//!
//! Each default is defined once, by the crate that uses the value
//! (`InboundConfig`, `ConnectorConfig`, `RetryPolicy`, `RuntimeConfig`, the
//! rate limiter's `DEFAULT_MARGIN`); the settings below start from those.

pub mod bot;
pub mod duration;
pub mod error;
pub mod sources;
pub mod telemetry;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use botfleet_auth::inbound::InboundConfig;
use botfleet_auth::{Cloud, Secret};
use botfleet_connector::{ConnectorConfig, RetryPolicy};
use botfleet_runtime::RuntimeConfig;
use serde::{Deserialize, Serialize, Serializer};

pub use bot::{
    BotSettings, CredentialFiles, CredentialSettings, HandlerSettings, PreparedBot,
    PreparedCredential,
};
pub use error::{ConfigError, Origin, SettingsError};
pub use sources::Environment;
pub use telemetry::TelemetrySettings;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub store: StoreSettings,
    pub runtime: RuntimeSettings,
    pub outbound: OutboundSettings,
    pub admin: AdminSettings,
    pub notify: NotifySettings,
    /// Traces, metrics export and log lines (`[telemetry]`, docs/observability.md).
    pub telemetry: TelemetrySettings,
    /// Graph change notifications (`[graph]`, docs/graph.md).
    pub graph: crate::graph::GraphSettings,
    /// Delegated Graph credentials (`[graph_auth]`, docs/graph.md).
    pub graph_auth: crate::graph_auth::GraphAuthSettings,
    /// Custom clouds (tests, botfleet-sim, sovereign clouds without a preset),
    /// each defined in full.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub clouds: Vec<Cloud>,
    /// The hosted bots (more can be registered through the admin API).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bots: Vec<BotSettings>,
}

/// Log line format on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal (a container's log collector),
    /// text on a terminal.
    #[default]
    Auto,
    /// One human-readable line per event; coloured only when stderr is a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// `Auto` decided by whether stderr is a terminal: `Text` or `Json`.
    pub fn resolved(self) -> Self {
        use std::io::IsTerminal;
        match self {
            Self::Auto if std::io::stderr().is_terminal() => Self::Text,
            Self::Auto => Self::Json,
            other => other,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address of the public listener (IP:port; `0.0.0.0:3978` in a
    /// container): `POST /api/messages[/{bot}]` only.
    pub listen: String,
    /// Address of the admin listener: the admin API (`/admin/v1/...`),
    /// `/metrics`, `/healthz`, `/readyz`. Loopback by default: expose it only
    /// to operators and the platform's probes and scrapers.
    pub admin_listen: String,
    /// Also serve the admin listener's routes on the public listener, for
    /// small setups with one port (warned at start-up and by check-config).
    pub admin_on_public: bool,
    /// Largest accepted request body in bytes; larger ones get 413.
    pub body_limit_bytes: usize,
    /// How long an inbound request waits for the bot handler before answering
    /// 202 (an invoke: 504) while the handler carries on. Teams resends after
    /// about 15 s.
    #[serde(with = "duration")]
    pub handler_deadline: Duration,
    /// HTTP worker threads; 0 = one per CPU.
    pub workers: usize,
    pub log_format: LogFormat,
    /// After SIGTERM/SIGINT, how long the public listener keeps accepting
    /// while `/readyz` already answers 503, so the platform removes this
    /// replica from its endpoints before connections are refused (see
    /// docs/operations.md).
    #[serde(with = "duration")]
    pub shutdown_delay: Duration,
    /// Longest time from the signal to exit: the delay, in-flight requests,
    /// notification work handed back. Keep it below the platform's kill
    /// deadline (Kubernetes `terminationGracePeriodSeconds`, default 30 s).
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// TLS on the public listener (`[server.tls]`); none = plain HTTP (a
    /// TLS-terminating ingress in front).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
}

/// `[server.tls]`: PEM files, reloaded when they change (docs/operations.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Certificate chain, leaf first (`tls.crt` of a kubernetes.io/tls Secret).
    pub cert_file: PathBuf,
    /// Private key of the leaf (`tls.key`): PKCS#8, PKCS#1 or SEC1 PEM.
    pub key_file: PathBuf,
    /// How often the files are compared with the ones in use, 1s..1h.
    #[serde(with = "duration", default = "default_tls_reload")]
    pub reload_interval: Duration,
}

fn default_tls_reload() -> Duration {
    Duration::from_secs(10)
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:3978".into(),
            admin_listen: "127.0.0.1:9090".into(),
            admin_on_public: false,
            body_limit_bytes: 256 * 1024,
            handler_deadline: Duration::from_secs(10),
            workers: 0,
            log_format: LogFormat::Auto,
            shutdown_delay: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(25),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Scheduled refresh of OpenID metadata and signing keys (at most 24 h:
    /// the Bot Framework asks for at least daily).
    #[serde(with = "duration")]
    pub key_refresh: Duration,
    /// Least time between refreshes triggered by a token with an unknown `kid`.
    #[serde(with = "duration")]
    pub unknown_kid_refresh_min: Duration,
    /// Allowed clock skew for `exp` / `nbf`.
    #[serde(with = "duration")]
    pub clock_skew: Duration,
    /// Verified tokens remembered (by hash, until expiry) to skip RSA
    /// verification; 0 turns the cache off.
    pub verified_token_cache_size: u64,
    /// Timeout of one OpenID metadata / JWKS request.
    #[serde(with = "duration")]
    pub fetch_timeout: Duration,
    /// Clouds (`public`, a `[[clouds]]` name, ...) whose signing keys published
    /// WITHOUT an endorsements list are accepted for any channel, as Microsoft's
    /// SDKs accept them. Default empty: such a key endorses nothing (403
    /// `endorsement`). See docs/security.md for the risk.
    pub accept_keys_without_endorsements: Vec<String>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        let d = InboundConfig::default();
        Self {
            key_refresh: d.refresh_interval,
            unknown_kid_refresh_min: d.unknown_kid_min_interval,
            clock_skew: d.clock_skew,
            verified_token_cache_size: d.cache_capacity,
            fetch_timeout: d.fetch_timeout,
            accept_keys_without_endorsements: d.accept_keys_without_endorsements,
        }
    }
}

impl AuthSettings {
    pub fn inbound_config(&self) -> InboundConfig {
        InboundConfig {
            refresh_interval: self.key_refresh,
            unknown_kid_min_interval: self.unknown_kid_refresh_min,
            clock_skew: self.clock_skew,
            cache_capacity: self.verified_token_cache_size,
            fetch_timeout: self.fetch_timeout,
            accept_keys_without_endorsements: self.accept_keys_without_endorsements.clone(),
            ..InboundConfig::default()
        }
    }
}

/// The admin API (docs/admin-api.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// The bootstrap admin key: a bearer key with role `admin`, at least 32
    /// characters (e.g. `openssl rand -hex 32`). Give it as
    /// `bootstrap_key_file` or `bootstrap_key_env`; shown redacted, never
    /// logged. Without it only keys created through the API work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_key: Option<Secret>,
    /// Audit log entries older than this are removed (checked hourly).
    #[serde(with = "duration")]
    pub audit_retention: Duration,
    /// How often each replica compares the bot registry's revision with the
    /// one it applied, to catch up on a change announcement it missed (a
    /// Redis reconnect). Announced changes apply at once, whatever this is.
    #[serde(with = "duration")]
    pub registry_poll: Duration,
    /// Directories whose files a bot registered through the admin API may
    /// name as its credential (`private_key_file`, `certificate_file`,
    /// `token_file`), e.g. `["/run/secrets/botfleet"]`. Absolute paths; a
    /// named file must resolve (symlinks and `..` followed) inside one of
    /// them. Default empty: the API refuses file-based credentials, so an
    /// API key cannot make botfleet read, or reveal, files of its host.
    /// The configuration file's bots may name any file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_dirs: Vec<PathBuf>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            bootstrap_key: None,
            audit_retention: crate::admin::AdminConfig::default().audit_retention,
            registry_poll: Duration::from_secs(5),
            credential_dirs: Vec::new(),
        }
    }
}

/// Proactive notification jobs (docs/notifications.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySettings {
    /// A target's `sending` marker older than this is taken over by another
    /// replica (its sender died): the documented duplicate window closes
    /// after it. Longer than the longest send (`outbound.request_timeout` +
    /// `outbound.max_retry`).
    #[serde(with = "duration")]
    pub lease: Duration,
    /// A work item a replica took and did not acknowledge for this long is
    /// taken over by another one (looked for every quarter of it).
    #[serde(with = "duration")]
    pub reclaim_idle: Duration,
    /// A replica's claim on expanding a job lasts this long unless renewed
    /// (renewed before every page); a dead replica's jobs are adopted within
    /// about 1.3 times this.
    #[serde(with = "duration")]
    pub expansion_lease: Duration,
    /// Sends of one tenant in flight at once per replica (Teams allows 50/s
    /// per bot per tenant: at ~100 ms a send, 5 reach it).
    pub max_in_flight_per_tenant: usize,
    /// Targets a job's selection is expanded by at a time (conversations read
    /// per store page).
    pub expansion_page: usize,
    /// Finished notification jobs, their targets and idempotency keys are
    /// deleted this long after they ended (docs/notifications.md).
    #[serde(with = "duration")]
    pub retention: Duration,
}

impl Default for NotifySettings {
    fn default() -> Self {
        let d = botfleet_runtime::notify::NotifierConfig::default();
        Self {
            lease: d.lease,
            reclaim_idle: d.reclaim_idle,
            expansion_lease: d.expansion_lease,
            max_in_flight_per_tenant: d.per_tenant,
            expansion_page: d.expand_page,
            retention: d.retention,
        }
    }
}

impl NotifySettings {
    /// The notifier's configuration: these keys over its defaults.
    pub fn notifier_config(&self) -> botfleet_runtime::notify::NotifierConfig {
        botfleet_runtime::notify::NotifierConfig {
            lease: self.lease,
            reclaim_idle: self.reclaim_idle,
            expansion_lease: self.expansion_lease,
            per_tenant: self.max_in_flight_per_tenant,
            expand_page: self.expansion_page,
            retention: self.retention,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// In this process; lost on restart (the embedded default).
    #[default]
    Memory,
    /// Redis or Redis Cluster: shared by replicas, kept across restarts.
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `memory` (default; lost on restart) or `redis`.
    pub backend: StoreBackend,
    /// Redis URLs: one for a single node, several seeds for a cluster. A
    /// password in a URL is shown redacted.
    #[serde(serialize_with = "redacted_urls")]
    pub redis_urls: Vec<String>,
    /// Treat a single URL as a cluster seed.
    pub redis_cluster: bool,
    /// Connections per replica.
    pub redis_pool_size: usize,
    /// Prefix of every key, so several deployments can share one Redis.
    pub key_prefix: String,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Memory,
            redis_urls: Vec::new(),
            redis_cluster: false,
            redis_pool_size: 32,
            key_prefix: "botfleet".into(),
        }
    }
}

/// `redis://user:secret@host` -> `redis://user:[redacted]@host`.
fn redacted_urls<S: Serializer>(urls: &[String], s: S) -> Result<S::Ok, S::Error> {
    let shown: Vec<String> = urls
        .iter()
        .map(|u| match url::Url::parse(u) {
            Ok(mut parsed) if parsed.password().is_some() => {
                if parsed.set_password(Some("[redacted]")).is_ok() {
                    parsed.to_string()
                } else {
                    "[redacted]".to_owned()
                }
            }
            Ok(_) => u.clone(),
            // Unparseable: it may still hold a password.
            Err(_) => "[redacted]".to_owned(),
        })
        .collect();
    shown.serialize(s)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// Ingress actors in the pool; 0 = two per CPU.
    pub ingress_actors: usize,
    /// Threads tenant and conversation actors run on; 0 = one per CPU.
    pub arbiters: usize,
    /// An idle conversation actor is stopped after this long.
    #[serde(with = "duration")]
    pub conversation_idle: Duration,
    /// An idle tenant actor is stopped after this long.
    #[serde(with = "duration")]
    pub tenant_idle: Duration,
    /// Rewrite an unchanged conversation reference after this long (last_seen).
    #[serde(with = "duration")]
    pub reference_touch: Duration,
    /// Handled activity ids are claimed in the store for this long, so Teams'
    /// resend is dropped on whichever replica it lands; 0 = per-replica memory only.
    #[serde(with = "duration")]
    pub duplicate_window: Duration,
    /// Most activities per second one tenant may send one bot through one
    /// replica (429 beyond); 0 = no quota.
    pub tenant_activities_per_sec: u32,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        let d = RuntimeConfig::default();
        Self {
            ingress_actors: 0,
            arbiters: 0,
            conversation_idle: d.conversation_idle,
            tenant_idle: d.tenant_idle,
            reference_touch: d.reference_touch_interval,
            duplicate_window: d.duplicate_window.unwrap_or(Duration::ZERO),
            tenant_activities_per_sec: d.tenant_activities_per_sec.unwrap_or(0),
        }
    }
}

impl RuntimeSettings {
    // `..d`: a field the runtime adds before it has a setting keeps its default.
    #[allow(clippy::needless_update)]
    pub fn runtime_config(&self) -> RuntimeConfig {
        let d = RuntimeConfig::default();
        RuntimeConfig {
            ingress_actors: if self.ingress_actors == 0 {
                d.ingress_actors
            } else {
                self.ingress_actors
            },
            arbiters: if self.arbiters == 0 {
                d.arbiters
            } else {
                self.arbiters
            },
            conversation_idle: self.conversation_idle,
            tenant_idle: self.tenant_idle,
            reference_touch_interval: self.reference_touch,
            duplicate_window: (!self.duplicate_window.is_zero()).then_some(self.duplicate_window),
            tenant_activities_per_sec: (self.tenant_activities_per_sec > 0)
                .then_some(self.tenant_activities_per_sec),
            ..d
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundSettings {
    /// Timeout of one Bot Connector request, response included.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Attempts of one call, the first included (412/429/502/503/504 and
    /// failures before the request left are retried).
    pub max_attempts: u32,
    /// No retry starts after this long since the call began.
    #[serde(with = "duration")]
    pub max_retry: Duration,
    /// Longest wait for the local Teams rate limiter per request.
    #[serde(with = "duration")]
    pub max_rate_limit_wait: Duration,
    /// Where a 403 `InvalidBotApiHost` call is retried (the GCC Teams host).
    pub gcc_service_url: String,
    /// Added to every Teams rate-limit window. Teams counts arrivals; botfleet
    /// counts departures, and delays between the two compress bursts. A margin
    /// larger than that jitter means a paced sender is never throttled.
    #[serde(with = "duration")]
    pub rate_limit_margin: Duration,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        let c = ConnectorConfig::default();
        let r = RetryPolicy::default();
        Self {
            request_timeout: c.request_timeout,
            connect_timeout: c.connect_timeout,
            max_attempts: r.max_attempts,
            max_retry: r.max_elapsed,
            max_rate_limit_wait: r.max_rate_limit_wait,
            gcc_service_url: c.gcc_service_url,
            rate_limit_margin: botfleet_store::ratelimit::DEFAULT_MARGIN,
        }
    }
}

impl OutboundSettings {
    pub fn connector_config(&self) -> ConnectorConfig {
        ConnectorConfig {
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            gcc_service_url: self.gcc_service_url.clone(),
            ..ConnectorConfig::default()
        }
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            max_elapsed: self.max_retry,
            max_rate_limit_wait: self.max_rate_limit_wait,
            ..RetryPolicy::default()
        }
    }
}

/// A configuration that passed [`load`]: the settings, each bot ready to build,
/// and notes for the user that are not errors (old key names, ignored variables).
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub settings: Settings,
    pub bots: Vec<PreparedBot>,
    pub notices: Vec<String>,
}

impl LoadedConfig {
    /// Checks settings built in code (tests, embedding) exactly as [`load`]
    /// checks a file; errors carry key paths but no origin.
    pub fn from_settings(settings: Settings) -> Result<Self, SettingsError> {
        let mut notices = Vec::new();
        let bots = settings.check(&Environment::process(), &mut notices)?;
        Ok(Self {
            settings,
            bots,
            notices,
        })
    }

    /// The effective configuration as TOML, secrets shown as `"[redacted]"`.
    pub fn effective_toml(&self) -> String {
        toml::to_string(&self.settings)
            .unwrap_or_else(|e| format!("# cannot show the configuration: {e}\n"))
    }
}

/// Loads and checks the configuration `serve` would run, from `file` (if any)
/// and the process environment.
///
/// Errors: [`SettingsError::Read`] (the file), [`SettingsError::Syntax`] (not
/// TOML: the parser's line and column), [`SettingsError::Invalid`] (every
/// problem found, each with key path and origin).
pub fn load(file: Option<&Path>) -> Result<LoadedConfig, SettingsError> {
    load_with(file, &Environment::process())
}

/// [`load`] with an explicit environment (tests).
pub fn load_with(file: Option<&Path>, env: &Environment) -> Result<LoadedConfig, SettingsError> {
    let defaults = match toml::Table::try_from(Settings::default()) {
        Ok(t) => t,
        Err(e) => {
            return Err(ConfigError::new("", format!("embedded defaults: {e}")).into());
        }
    };
    let layered = sources::layered(file, env, &defaults)?;
    let settings: Settings = match parse(&layered.tree) {
        Ok(s) => s,
        Err(e) => {
            let (key, problem) = describe(&e);
            let key = refine_tagged(&layered.tree, key, &problem);
            let problem = without_secret_value(&key, problem);
            return Err(layered
                .origins
                .attach(vec![ConfigError::new(key, problem)])
                .into());
        }
    };
    let mut notices = layered.notices;
    let bots = settings
        .check(env, &mut notices)
        .map_err(|errors| SettingsError::Invalid(layered.origins.attach(errors)))?;
    Ok(LoadedConfig {
        settings,
        bots,
        notices,
    })
}

type ParseError = serde_path_to_error::Error<toml::de::Error>;

fn parse(tree: &toml::Table) -> Result<Settings, ParseError> {
    serde_path_to_error::deserialize(toml::Value::Table(tree.clone()))
}

/// serde loses the path inside an internally tagged enum (`handler`,
/// `credential`): a bad `handler.timeout` is reported at `handler`. Finds the
/// key by taking each of the table's keys out in turn: the one whose absence
/// changes the error is the one at fault. Only on the error path, a handful
/// of re-parses of the tree.
fn refine_tagged(tree: &toml::Table, key: String, problem: &str) -> String {
    let Some(children) = sources::tagged_table_keys(tree, &key) else {
        return key;
    };
    for child in children {
        let changed = match parse(&sources::without(tree, &key, &child)) {
            Ok(_) => true,
            Err(e) => {
                let (k, p) = describe(&e);
                k != key || p != problem
            }
        };
        if changed {
            return format!("{key}.{child}");
        }
    }
    key
}

/// serde quotes the value it refused (`invalid type: integer \`123\``); for a
/// secret key (or a tagged table it may sit in) keep only the value's type.
fn without_secret_value(key: &str, problem: String) -> String {
    let last = key.rsplit('.').next().unwrap_or(key);
    let secretive =
        sources::SECRET_KEYS.contains(&last) || ["handler", "credential"].contains(&last);
    if !secretive {
        return problem;
    }
    for lead in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = problem.strip_prefix(lead) {
            if let Some((unexpected, expected)) = rest.split_once(", expected ") {
                let kind = unexpected.split([' ', '`', '"', '\'']).next().unwrap_or("");
                return format!("{lead}{kind}, expected {expected}");
            }
        }
    }
    problem
}

/// Key path and a message without Rust type names for a deserialisation error.
fn describe(e: &serde_path_to_error::Error<toml::de::Error>) -> (String, String) {
    let mut key = e.path().to_string();
    if key == "." {
        key.clear();
    }
    let message = e.inner().message().to_owned();
    // serde reports an unknown or missing key at its table; name the key itself.
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))
        .and_then(|rest| rest.split('`').next())
    {
        if !key.ends_with(field) {
            key = if key.is_empty() {
                field.to_owned()
            } else {
                format!("{key}.{field}")
            };
        }
    }
    (key, humane(&message))
}

/// serde's wording with Rust type names replaced by what to write.
fn humane(message: &str) -> String {
    let mut m = message.to_owned();
    for (rust, plain) in [
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected u16", "expected a whole number (0 or more)"),
        (
            "expected a sequence",
            "expected a list, e.g. [\"a\", \"b\"]",
        ),
        ("expected a map", "expected a table"),
        (
            "expected a duration",
            "expected a duration such as \"10s\", \"200ms\" or \"1h 30m\"",
        ),
    ] {
        m = m.replace(rust, plain);
    }
    if let Some(at) = m.find("expected struct ") {
        m.truncate(at);
        m.push_str("expected a table");
    }
    m
}

impl Settings {
    /// A preset or a custom cloud by name.
    pub fn cloud(&self, name: &str) -> Option<Cloud> {
        Cloud::preset(name).or_else(|| self.clouds.iter().find(|c| c.name == name).cloned())
    }

    pub fn handler_deadline(&self) -> Duration {
        self.server.handler_deadline
    }

    /// Every check that needs no network; the bots it prepared on success.
    /// Errors carry full key paths (`bots[1].app_id`) but no origin.
    pub fn check(
        &self,
        env: &Environment,
        notices: &mut Vec<String>,
    ) -> Result<Vec<PreparedBot>, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut fail = |key: &str, problem: String| errors.push(ConfigError::new(key, problem));
        let s = &self.server;
        if s.listen.parse::<SocketAddr>().is_err() {
            fail(
                "server.listen",
                format!(
                    "`{}` is not an IP:port address, e.g. 127.0.0.1:3978 or 0.0.0.0:3978",
                    s.listen
                ),
            );
        }
        if s.admin_listen.parse::<SocketAddr>().is_err() {
            fail(
                "server.admin_listen",
                format!(
                    "`{}` is not an IP:port address, e.g. 127.0.0.1:9090 (or 0.0.0.0:9090 in a container whose port is reachable only by the platform)",
                    s.admin_listen
                ),
            );
        } else if s.admin_listen == s.listen && !s.listen.ends_with(":0") {
            fail(
                "server.admin_listen",
                format!(
                    "is the address of server.listen ({}): give the admin listener its own port, or set server.admin_on_public = true to serve the admin routes on the public listener as well",
                    s.listen
                ),
            );
        }
        if s.shutdown_grace <= s.shutdown_delay || s.shutdown_grace > Duration::from_secs(3600) {
            fail(
                "server.shutdown_grace",
                format!(
                    "must be longer than server.shutdown_delay ({}) and at most 1h: in-flight requests need time after the listener stops accepting",
                    duration::format(s.shutdown_delay)
                ),
            );
        }
        if let Some(tls) = &s.tls {
            if let Err(e) = crate::tls::load(&tls.cert_file, &tls.key_file) {
                fail(e.key(&tls.key_file), e.to_string());
            }
            if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&tls.reload_interval)
            {
                fail(
                    "server.tls.reload_interval",
                    "must be between 1s and 1h".into(),
                );
            }
        }
        if s.admin_on_public {
            notices.push(
                "server.admin_on_public = true: the admin API, /metrics, /healthz and /readyz are served on the public listener too, so everyone who reaches the messaging endpoint reaches them; use it only when that listener is not exposed beyond your operators".into(),
            );
        }
        self.telemetry.check(env, &mut errors);
        let mut fail = |key: &str, problem: String| errors.push(ConfigError::new(key, problem));
        let ad = &self.admin;
        if let Some(key) = &ad.bootstrap_key {
            if let Err(problem) = crate::admin::auth::BootstrapKey::new(key) {
                fail("admin.bootstrap_key", problem);
            }
        }
        if ad.audit_retention < Duration::from_secs(3600) {
            fail(
                "admin.audit_retention",
                "must be at least 1h: the audit log is trimmed hourly, e.g. \"90d\"".into(),
            );
        }
        if ad.registry_poll < Duration::from_millis(100)
            || ad.registry_poll > Duration::from_secs(3600)
        {
            fail(
                "admin.registry_poll",
                "must be between 100ms and 1h, e.g. \"5s\": a replica that missed a change announcement applies it within this time".into(),
            );
        }
        for (i, dir) in ad.credential_dirs.iter().enumerate() {
            if !dir.is_absolute() {
                fail(
                    &format!("admin.credential_dirs[{i}]"),
                    format!("`{}` is not an absolute path: give the directory the bots' credential files are mounted in, e.g. \"/run/secrets/botfleet\"", dir.display()),
                );
            } else if !dir.is_dir() {
                fail(
                    &format!("admin.credential_dirs[{i}]"),
                    format!("`{}` is not a directory botfleet can reach: create it (or mount the secrets there) or remove it from the list", dir.display()),
                );
            }
        }
        let n = &self.notify;
        let longest_send = self.outbound.request_timeout + self.outbound.max_retry;
        if n.lease <= longest_send || n.lease > Duration::from_secs(24 * 3600) {
            fail(
                "notify.lease",
                format!(
                    "must be longer than the longest send (outbound.request_timeout + outbound.max_retry = {}) and at most 24h, e.g. \"180s\": a shorter lease lets another replica resend a target whose send is still under way",
                    duration::format(longest_send)
                ),
            );
        }
        for (key, d) in [
            ("notify.reclaim_idle", n.reclaim_idle),
            ("notify.expansion_lease", n.expansion_lease),
        ] {
            if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
                fail(
                    key,
                    "must be between 1s and 1h, e.g. \"60s\": work a dead replica left waits this long".into(),
                );
            }
        }
        if n.retention < Duration::from_secs(1) || n.retention > Duration::from_secs(3650 * 86_400)
        {
            fail(
                "notify.retention",
                "must be between 1s and 3650d, e.g. \"7d\": finished notification jobs are deleted that long after they ended".into(),
            );
        }
        if !(1..=64).contains(&n.max_in_flight_per_tenant) {
            fail(
                "notify.max_in_flight_per_tenant",
                "must be between 1 and 64, e.g. 8 (Teams allows 50 sends/s per bot per tenant)"
                    .into(),
            );
        }
        if !(1..=botfleet_store::conversations::MAX_PAGE).contains(&n.expansion_page) {
            fail(
                "notify.expansion_page",
                format!(
                    "must be between 1 and {}, e.g. 500",
                    botfleet_store::conversations::MAX_PAGE
                ),
            );
        }
        if s.body_limit_bytes < 1024 {
            fail("server.body_limit_bytes", "must be at least 1024".into());
        }
        if s.handler_deadline.is_zero() {
            fail(
                "server.handler_deadline",
                "must be longer than zero; Teams resends after about 15 s, so stay below that, e.g. \"10s\"".into(),
            );
        }
        let a = &self.auth;
        if a.key_refresh.is_zero() || a.key_refresh > Duration::from_secs(24 * 3600) {
            fail(
                "auth.key_refresh",
                "must be between 1s and 24h: the Bot Framework asks for a refresh at least daily"
                    .into(),
            );
        }
        if a.fetch_timeout.is_zero() {
            fail("auth.fetch_timeout", "must be longer than zero".into());
        }
        let st = &self.store;
        match st.backend {
            StoreBackend::Redis if st.redis_urls.is_empty() => fail(
                "store.redis_urls",
                "the redis backend needs at least one URL, e.g. [\"redis://redis:6379\"]".into(),
            ),
            StoreBackend::Redis => {
                // The constructor `serve` uses; it parses URLs and connects nothing.
                if let Err(e) = botfleet_store::RedisPool::connect(
                    &st.redis_urls,
                    st.redis_cluster,
                    st.redis_pool_size.max(1),
                ) {
                    fail("store.redis_urls", e.to_string());
                }
            }
            StoreBackend::Memory if !st.redis_urls.is_empty() => notices.push(
                "store.redis_urls is set but store.backend is \"memory\": Redis is not used".into(),
            ),
            StoreBackend::Memory => {}
        }
        if st.redis_pool_size == 0 {
            fail("store.redis_pool_size", "must be at least 1".into());
        }
        if st.key_prefix.is_empty() || st.key_prefix.contains(char::is_whitespace) {
            fail(
                "store.key_prefix",
                "give a non-empty prefix without spaces".into(),
            );
        }
        let r = &self.runtime;
        for (key, d) in [
            ("runtime.conversation_idle", r.conversation_idle),
            ("runtime.tenant_idle", r.tenant_idle),
            ("runtime.reference_touch", r.reference_touch),
        ] {
            if d.is_zero() {
                fail(key, "must be longer than zero".into());
            }
        }
        let o = &self.outbound;
        if o.max_attempts == 0 {
            fail(
                "outbound.max_attempts",
                "must be at least 1 (the first attempt counts)".into(),
            );
        }
        for (key, d) in [
            ("outbound.request_timeout", o.request_timeout),
            ("outbound.connect_timeout", o.connect_timeout),
        ] {
            if d.is_zero() {
                fail(key, "must be longer than zero".into());
            }
        }
        if url::Url::parse(&o.gcc_service_url).is_err() {
            fail(
                "outbound.gcc_service_url",
                format!("`{}` is not an absolute URL", o.gcc_service_url),
            );
        }
        let mut cloud_names = HashMap::new();
        for (i, c) in self.clouds.iter().enumerate() {
            let key = |k: &str| format!("clouds[{i}].{k}");
            if Cloud::preset(&c.name).is_some() {
                fail(
                    &key("name"),
                    format!(
                        "`{}` is a preset name; give the custom cloud another name",
                        c.name
                    ),
                );
            } else if c.name.is_empty() {
                fail(&key("name"), "give the cloud a name".into());
            } else if let Some(first) = cloud_names.insert(c.name.as_str(), i) {
                fail(
                    &key("name"),
                    format!("`{}` is also the name of clouds[{first}]", c.name),
                );
            }
            for (k, v) in [
                ("openid_metadata_url", &c.openid_metadata_url),
                ("login_endpoint", &c.login_endpoint),
            ] {
                if url::Url::parse(v).is_err() {
                    fail(&key(k), format!("`{v}` is not an absolute URL"));
                }
            }
        }

        for (i, name) in self
            .auth
            .accept_keys_without_endorsements
            .iter()
            .enumerate()
        {
            if Cloud::preset(name).is_none() && !cloud_names.contains_key(name.as_str()) {
                fail(
                    &format!("auth.accept_keys_without_endorsements[{i}]"),
                    format!(
                        "unknown cloud `{name}`: use public, gcch, dod, china or a [[clouds]] name"
                    ),
                );
            }
        }

        let mut bots = Vec::new();
        let mut ids = HashMap::new();
        let mut app_ids = HashMap::new();
        for (i, b) in self.bots.iter().enumerate() {
            let prefix = format!("bots[{i}].");
            match b.prepare(&self.clouds, env) {
                Ok(p) => bots.push(p),
                Err(errs) => errors.extend(errs.into_iter().map(|e| e.prefixed(&prefix))),
            }
            if let Some(first) = ids.insert(b.id.as_str(), i) {
                errors.push(ConfigError::new(
                    format!("{prefix}id"),
                    format!("`{}` is also the id of bots[{first}]", b.id),
                ));
            }
            // The token's audience selects the bot: one app id, one bot.
            if let Some(first) = app_ids.insert(b.app_id.to_ascii_lowercase(), i) {
                errors.push(ConfigError::new(
                    format!("{prefix}app_id"),
                    format!(
                        "`{}` is also the app_id of bots[{first}]: Teams' tokens name the app id, so it can select only one bot",
                        b.app_id
                    ),
                ));
            }
        }
        let bot_ids: Vec<String> = self.bots.iter().map(|b| b.id.clone()).collect();
        for (key, problem) in self.graph.check(&bot_ids) {
            errors.push(ConfigError::new(key, problem));
        }
        for (key, problem) in self.graph_auth.check(&bot_ids) {
            errors.push(ConfigError::new(key, problem));
        }
        for (key, problem) in self.graph.check_credentials(&self.graph_auth.credentials) {
            errors.push(ConfigError::new(key, problem));
        }
        if errors.is_empty() {
            Ok(bots)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        std::io::Write::write_all(&mut f, content.as_bytes()).expect("write");
        f
    }

    const APP: &str = "00000000-0000-4000-8000-000000000001";

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<LoadedConfig, SettingsError> {
        let f = write(text);
        load_with(
            Some(f.path()),
            &Environment::from_pairs(env.iter().copied()),
        )
    }

    fn only_error(r: Result<LoadedConfig, SettingsError>) -> ConfigError {
        match r {
            Err(SettingsError::Invalid(mut errors)) if errors.len() == 1 => errors.remove(0),
            Err(e) => panic!("expected one invalid key, got {e}"),
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn defaults_need_nothing() {
        let c = load_with(None, &Environment::default()).expect("defaults load");
        assert_eq!(c.settings.server.body_limit_bytes, 256 * 1024);
        assert_eq!(c.settings.store.backend, StoreBackend::Memory);
        assert!(c.settings.bots.is_empty());
    }

    #[test]
    fn one_definition_per_default() {
        let s = Settings::default();
        assert_eq!(
            s.auth.verified_token_cache_size,
            InboundConfig::default().cache_capacity
        );
        assert_eq!(
            s.outbound.rate_limit_margin,
            botfleet_store::ratelimit::DEFAULT_MARGIN
        );
        assert_eq!(s.auth.inbound_config(), InboundConfig::default());
        assert_eq!(s.outbound.retry_policy(), RetryPolicy::default());
        assert_eq!(s.outbound.connector_config(), ConnectorConfig::default());
    }

    #[test]
    fn errors_name_key_file_and_line() {
        let e = only_error(load_text(
            &format!("[server]\nworkers = 1\n\n[[bots]]\nid = \"a\"\napp_id = \"{APP}\"\ncloud = \"mars\"\n"),
            &[],
        ));
        assert_eq!(e.key, "bots[0].cloud");
        assert!(
            matches!(&e.origin, Some(Origin::File { line: Some(7), .. })),
            "{e}"
        );

        let e = only_error(load_text("[server]\nlisten_on = \"127.0.0.1:1\"\n", &[]));
        assert_eq!(e.key, "server.listen_on");
        assert!(
            matches!(&e.origin, Some(Origin::File { line: Some(2), .. })),
            "{e}"
        );

        let e = only_error(load_text("[store]\nbackend = \"mongo\"\n", &[]));
        assert_eq!(e.key, "store.backend");
        assert!(e.problem.contains("`memory` or `redis`"), "{e}");

        let e = only_error(load_text("[server]\nworkers = -1\n", &[]));
        assert!(!e.problem.contains("usize"), "{e}");
    }

    #[test]
    fn env_values_name_their_variable() {
        let e = only_error(load_text("", &[("BOTFLEET__SERVER__LISTEN", "nowhere")]));
        assert_eq!(e.key, "server.listen");
        assert_eq!(
            e.origin,
            Some(Origin::Env {
                var: "BOTFLEET__SERVER__LISTEN".into()
            })
        );
        let c = load_text(
            "",
            &[
                ("BOTFLEET__SERVER__WORKERS", "3"),
                (
                    "BOTFLEET__STORE__REDIS_URLS",
                    "redis://a:6379,redis://b:6379",
                ),
                ("BOTFLEET__STORE__BACKEND", "redis"),
            ],
        )
        .expect("loads");
        assert_eq!(c.settings.server.workers, 3);
        assert_eq!(c.settings.store.redis_urls.len(), 2);
    }

    #[test]
    fn old_duration_keys_still_work() {
        let c = load_text(
            "[server]\nhandler_deadline_ms = 8000\n[auth]\nkey_refresh_secs = 3600\n",
            &[("BOTFLEET__OUTBOUND__RATE_LIMIT_MARGIN_MS", "150")],
        )
        .expect("loads");
        assert_eq!(c.settings.server.handler_deadline, Duration::from_secs(8));
        assert_eq!(c.settings.auth.key_refresh, Duration::from_secs(3600));
        assert_eq!(
            c.settings.outbound.rate_limit_margin,
            Duration::from_millis(150)
        );
        assert!(
            c.notices
                .iter()
                .any(|n| n.contains("handler_deadline = \"8000ms\"")),
            "{:?}",
            c.notices
        );
        let e = only_error(load_text(
            "[server]\nhandler_deadline_ms = 8000\nhandler_deadline = \"8s\"\n",
            &[],
        ));
        assert_eq!(e.key, "server.handler_deadline_ms");
    }

    #[test]
    fn secrets_from_files_and_variables() {
        let pw = write("from-a-file\n");
        let c = load_text(
            &format!(
                "[[bots]]\nid = \"a\"\napp_id = \"{APP}\"\napp_password_file = \"{}\"\nhandler = {{ kind = \"webhook\", url = \"https://h.example\", secret_env = \"HOOK\" }}\n",
                pw.path().display()
            ),
            &[("HOOK", "0123456789abcdef0123")],
        )
        .expect("loads");
        let b = &c.settings.bots[0];
        assert_eq!(
            b.app_password.as_ref().map(|s| s.expose()),
            Some("from-a-file")
        );
        let HandlerSettings::Webhook { secret, .. } = &b.handler else {
            panic!("webhook");
        };
        assert_eq!(secret.expose(), "0123456789abcdef0123");
        let shown = c.effective_toml();
        assert!(
            !shown.contains("from-a-file") && !shown.contains("0123456789abcdef0123"),
            "{shown}"
        );

        let e = only_error(load_text(
            &format!("[[bots]]\nid = \"a\"\napp_id = \"{APP}\"\napp_password_env = \"NOPE\"\n"),
            &[],
        ));
        assert_eq!(e.key, "bots[0].app_password_env");
        assert!(e.problem.contains("NOPE"), "{e}");
    }

    #[test]
    fn bot_framework_variables_make_one_bot() {
        let c = load_text(
            "",
            &[
                ("MicrosoftAppId", APP),
                ("MicrosoftAppPassword", "pw"),
                ("MicrosoftAppType", "SingleTenant"),
                ("MicrosoftAppTenantId", "tenant-1"),
                ("PORT", "8080"),
                ("BOTFLEET__BOTS__0__HANDLER__KIND", "echo"),
            ],
        )
        .expect("loads");
        let b = &c.settings.bots[0];
        assert_eq!((b.id.as_str(), b.app_id.as_str()), ("bot", APP));
        assert_eq!(b.tenant_id.as_deref(), Some("tenant-1"));
        assert!(matches!(b.handler, HandlerSettings::Echo));
        assert_eq!(c.settings.server.listen, "0.0.0.0:8080");

        let e = only_error(load_text(
            "[[bots]]\nid = \"a\"\napp_id = \"00000000-0000-4000-8000-000000000002\"\n",
            &[("MicrosoftAppId", APP)],
        ));
        assert_eq!(e.key, "bots[0].app_id");
        assert!(e.problem.contains("MicrosoftAppId"), "{e}");

        let e = only_error(load_text(
            "",
            &[("MicrosoftAppId", APP), ("MicrosoftAppType", "Multi")],
        ));
        assert!(
            e.problem
                .contains("MultiTenant, SingleTenant, UserAssignedMSI"),
            "{e}"
        );
    }

    #[test]
    fn two_bots_one_app_id() {
        let e = only_error(load_text(
            &format!("[[bots]]\nid = \"a\"\napp_id = \"{APP}\"\n[[bots]]\nid = \"b\"\napp_id = \"{APP}\"\n"),
            &[],
        ));
        assert_eq!(e.key, "bots[1].app_id");
        assert!(
            matches!(&e.origin, Some(Origin::File { line: Some(6), .. })),
            "{e}"
        );
    }

    #[test]
    fn admin_listener_and_admin_section() {
        let c = load_with(None, &Environment::default()).expect("defaults load");
        assert_eq!(c.settings.server.admin_listen, "127.0.0.1:9090");
        assert!(!c.settings.server.admin_on_public);
        assert_eq!(c.settings.admin.registry_poll, Duration::from_secs(5));
        assert_eq!(
            c.settings.admin.audit_retention,
            Duration::from_secs(90 * 24 * 3600)
        );

        let e = only_error(load_text("[server]\nadmin_listen = \"9090\"\n", &[]));
        assert_eq!(e.key, "server.admin_listen");
        let e = only_error(load_text(
            "[server]\nlisten = \"0.0.0.0:3978\"\nadmin_listen = \"0.0.0.0:3978\"\n",
            &[],
        ));
        assert!(e.problem.contains("admin_on_public"), "{e}");
        // Two port-0 listeners are two free ports.
        load_text(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n",
            &[],
        )
        .expect("loads");

        let e = only_error(load_text("[admin]\nregistry_poll = \"10ms\"\n", &[]));
        assert_eq!(e.key, "admin.registry_poll");
        let e = only_error(load_text("[admin]\naudit_retention = \"10m\"\n", &[]));
        assert_eq!(e.key, "admin.audit_retention");

        let e = only_error(load_text(
            "[admin]\nbootstrap_key_env = \"ADMIN_KEY\"\n",
            &[("ADMIN_KEY", "too-short")],
        ));
        assert_eq!(e.key, "admin.bootstrap_key");
        assert!(!e.to_string().contains("too-short"), "{e}");
        let key = "k".repeat(32);
        let c = load_text(
            "[server]\nadmin_on_public = true\n[admin]\nbootstrap_key_env = \"ADMIN_KEY\"\n",
            &[("ADMIN_KEY", key.as_str())],
        )
        .expect("loads");
        assert!(
            c.notices.iter().any(|n| n.contains("admin_on_public")),
            "{:?}",
            c.notices
        );
        let shown = c.effective_toml();
        assert!(
            !shown.contains(&key) && shown.contains("bootstrap_key = \"[redacted]\""),
            "{shown}"
        );
    }

    #[test]
    fn notify_section() {
        let c = load_with(None, &Environment::default()).expect("defaults load");
        let n = c.settings.notify.notifier_config();
        assert_eq!(n.lease, Duration::from_secs(180));
        assert_eq!(n.per_tenant, 8);
        let c = load_text(
            "[outbound]\nrequest_timeout = \"2s\"\nmax_retry = \"2s\"\n[notify]\nlease = \"5s\"\nreclaim_idle = \"2s\"\nexpansion_lease = \"3s\"\nmax_in_flight_per_tenant = 4\nexpansion_page = 250\n",
            &[],
        )
        .expect("loads");
        let n = c.settings.notify.notifier_config();
        assert_eq!(
            (
                n.lease,
                n.reclaim_idle,
                n.expansion_lease,
                n.per_tenant,
                n.expand_page
            ),
            (
                Duration::from_secs(5),
                Duration::from_secs(2),
                Duration::from_secs(3),
                4,
                250
            )
        );
        // A lease shorter than a send could last would let a live send be resent.
        let e = only_error(load_text("[notify]\nlease = \"60s\"\n", &[]));
        assert_eq!(e.key, "notify.lease");
        assert!(e.problem.contains("outbound.max_retry"), "{e}");
        for (text, key) in [
            ("reclaim_idle = \"10ms\"", "notify.reclaim_idle"),
            ("expansion_lease = \"2h\"", "notify.expansion_lease"),
            (
                "max_in_flight_per_tenant = 0",
                "notify.max_in_flight_per_tenant",
            ),
            ("expansion_page = 5000", "notify.expansion_page"),
        ] {
            let e = only_error(load_text(&format!("[notify]\n{text}\n"), &[]));
            assert_eq!(e.key, key, "{text}");
        }
    }

    #[test]
    fn redis_passwords_are_redacted() {
        let c = load_text(
            "[store]\nbackend = \"redis\"\nredis_urls = [\"redis://user:hunter2@r:6379\"]\n",
            &[],
        )
        .expect("loads");
        let shown = c.effective_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("redis://user:%5Bredacted%5D@r:6379") || shown.contains("[redacted]"),
            "{shown}"
        );
    }

    #[test]
    fn shutdown_timings() {
        let c = load_with(None, &Environment::default()).expect("defaults load");
        assert_eq!(c.settings.server.shutdown_delay, Duration::from_secs(5));
        assert_eq!(c.settings.server.shutdown_grace, Duration::from_secs(25));
        let c = load_text(
            "[server]\nshutdown_delay = \"0s\"\nshutdown_grace = \"2s\"\n",
            &[],
        )
        .expect("loads");
        assert_eq!(c.settings.server.shutdown_grace, Duration::from_secs(2));
        // No time left for in-flight requests after the delay.
        let e = only_error(load_text(
            "[server]\nshutdown_delay = \"30s\"\nshutdown_grace = \"30s\"\n",
            &[],
        ));
        assert_eq!(e.key, "server.shutdown_grace");
        assert!(e.problem.contains("30s"), "{e}");
    }

    #[test]
    fn redis_urls_from_a_file_or_a_variable() {
        // A mounted Secret: one URL per line, or comma-separated, final newline.
        let file = write(
            "redis://u:hunter2@a:6379\nredis://u:hunter2@b:6379, redis://u:hunter2@c:6379\n\n",
        );
        let path = file.path().display().to_string();
        let c = load_text(
            &format!("[store]\nbackend = \"redis\"\nredis_urls_file = \"{path}\"\n"),
            &[],
        )
        .expect("loads");
        assert_eq!(
            c.settings.store.redis_urls,
            [
                "redis://u:hunter2@a:6379",
                "redis://u:hunter2@b:6379",
                "redis://u:hunter2@c:6379"
            ]
        );
        assert!(!c.effective_toml().contains("hunter2"));
        let c = load_text(
            "[store]\nbackend = \"redis\"\nredis_urls_env = \"REDIS\"\n",
            &[("REDIS", "redis://x:6379,redis://y:6379")],
        )
        .expect("loads");
        assert_eq!(
            c.settings.store.redis_urls,
            ["redis://x:6379", "redis://y:6379"]
        );
        // Both spellings, an unset variable, or an empty file: the key is named.
        let e = only_error(load_text(
            "[store]\nredis_urls = [\"redis://a\"]\nredis_urls_env = \"REDIS\"\n",
            &[("REDIS", "redis://b")],
        ));
        assert!(e.key.starts_with("store.redis_urls"), "{e}");
        let e = only_error(load_text(
            "[store]\nbackend = \"redis\"\nredis_urls_env = \"NOPE\"\n",
            &[],
        ));
        assert_eq!(e.key, "store.redis_urls_env");
        let empty = write("\n");
        let e = only_error(load_text(
            &format!(
                "[store]\nbackend = \"redis\"\nredis_urls_file = \"{}\"\n",
                empty.path().display()
            ),
            &[],
        ));
        assert_eq!(e.key, "store.redis_urls_file");
    }
}
