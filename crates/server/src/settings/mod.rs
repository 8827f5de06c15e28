//! Configuration: embedded defaults <- file (`--config`) <- environment
//! (`BOTFLEET__SECTION__KEY`). Invalid configuration stops start-up with a message
//! that names the key and the problem.

use std::path::Path;
use std::time::Duration;

use botfleet_auth::{Cloud, Secret};
use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub store: StoreSettings,
    pub runtime: RuntimeSettings,
    pub outbound: OutboundSettings,
    /// Custom clouds (tests, botfleet-sim, sovereign clouds without a preset),
    /// each defined in full.
    pub clouds: Vec<Cloud>,
    pub bots: Vec<BotSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address the HTTP server binds.
    pub listen: String,
    /// Largest accepted request body; larger ones get 413.
    pub body_limit_bytes: usize,
    /// How long an inbound request waits for the bot handler before answering
    /// 202 while the handler carries on. Teams resends after about 15 s.
    pub handler_deadline_ms: u64,
    /// HTTP worker threads; 0 = one per CPU.
    pub workers: usize,
    /// Log format: `text` or `json`.
    pub log_format: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:3978".into(),
            body_limit_bytes: 256 * 1024,
            handler_deadline_ms: 10_000,
            workers: 0,
            log_format: "text".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Scheduled refresh of OpenID metadata and signing keys.
    pub key_refresh_secs: u64,
    /// Least time between refreshes triggered by a token with an unknown `kid`.
    pub unknown_kid_refresh_min_secs: u64,
    /// Allowed clock skew for `exp` / `nbf`.
    pub clock_skew_secs: u64,
    /// Verified tokens remembered (by hash, until expiry) to skip RSA verification.
    pub verified_token_cache_size: u64,
    /// Timeout of OpenID metadata / JWKS requests.
    pub fetch_timeout_ms: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            key_refresh_secs: 6 * 3600,
            unknown_kid_refresh_min_secs: 300,
            clock_skew_secs: 300,
            verified_token_cache_size: 100_000,
            fetch_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `memory` (default; lost on restart) or `redis`.
    pub backend: StoreBackend,
    /// Redis URLs: one for a single node, several seeds for a cluster.
    pub redis_urls: Vec<String>,
    /// Treat a single URL as a cluster seed.
    pub redis_cluster: bool,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// Ingress actors in the pool; 0 = two per CPU.
    pub ingress_actors: usize,
    /// Threads tenant and conversation actors run on; 0 = one per CPU.
    pub arbiters: usize,
    pub conversation_idle_secs: u64,
    pub tenant_idle_secs: u64,
    /// Rewrite an unchanged conversation reference after this long (last_seen).
    pub reference_touch_secs: u64,
    /// Handled activity ids are claimed in the store for this long, so Teams'
    /// resend is dropped on whichever replica it lands; 0 = per-replica memory only.
    pub duplicate_window_secs: u64,
    /// Most activities per second one tenant may send one bot through one
    /// replica (429 beyond); 0 = no quota.
    pub tenant_activities_per_sec: u32,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            ingress_actors: 0,
            arbiters: 0,
            conversation_idle_secs: 300,
            tenant_idle_secs: 600,
            reference_touch_secs: 3600,
            duplicate_window_secs: 600,
            tenant_activities_per_sec: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotSettings {
    /// botfleet's name for the bot: `/api/messages/{id}`, store keys, admin API.
    pub id: String,
    /// Microsoft App ID of the Azure Bot registration (the token audience).
    pub app_id: String,
    /// Client secret, for replies and proactive messages (shorthand for
    /// `credential = { kind = "secret", secret = "..." }`).
    #[serde(default)]
    pub app_password: Option<Secret>,
    /// How the bot gets its Bot Connector tokens, when not by `app_password`.
    #[serde(default)]
    pub credential: Option<CredentialSettings>,
    /// The bot's Entra tenant for single-tenant bots (all new registrations);
    /// absent = multi-tenant.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// `public`, `gcch`, `dod`, `china` or the name of a `[[clouds]]` entry.
    #[serde(default = "default_cloud")]
    pub cloud: String,
    /// Tenants this bot serves; empty = any tenant.
    #[serde(default)]
    pub allowed_tenants: Vec<String>,
    /// serviceUrl domains allowed beside the cloud's hosts (suffix match);
    /// `"*"` turns the host check off (warned at start-up).
    #[serde(default)]
    pub additional_allowed_domains: Vec<String>,
    #[serde(default)]
    pub handler: HandlerSettings,
    /// Policy for a send that timed out after it left (see [`AmbiguousSend`]).
    #[serde(default)]
    pub ambiguous_send: AmbiguousSend,
}

/// A bot's outbound credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CredentialSettings {
    /// Client secret.
    Secret { secret: Secret },
    /// Certificate: a client assertion signed with the private key (PEM, PKCS#1
    /// or PKCS#8); `certificate_file` or `thumbprint` gives the `x5t` Entra
    /// uses to find the registered certificate.
    Certificate {
        private_key_file: std::path::PathBuf,
        #[serde(default)]
        certificate_file: Option<std::path::PathBuf>,
        #[serde(default)]
        thumbprint: Option<String>,
    },
    /// AKS workload identity: the projected service-account token (re-read on
    /// every exchange) as a federated client assertion. `token_file` defaults to
    /// `AZURE_FEDERATED_TOKEN_FILE`; `AZURE_TENANT_ID` / `AZURE_AUTHORITY_HOST`
    /// are honoured.
    WorkloadIdentity {
        #[serde(default)]
        token_file: Option<std::path::PathBuf>,
    },
    /// Managed identity (user-assigned: `client_id`, default the bot's app id).
    /// App Service when `IDENTITY_ENDPOINT`/`IDENTITY_HEADER` are set, else IMDS;
    /// `endpoint` overrides the IMDS URL.
    ManagedIdentity {
        #[serde(default)]
        client_id: Option<String>,
        #[serde(default)]
        endpoint: Option<String>,
    },
}

impl BotSettings {
    /// The bot's outbound credential, `app_password` included.
    pub fn outbound_credential(&self) -> Option<CredentialSettings> {
        match (&self.credential, &self.app_password) {
            (Some(c), _) => Some(c.clone()),
            (None, Some(p)) if !p.is_empty() => {
                Some(CredentialSettings::Secret { secret: p.clone() })
            }
            _ => None,
        }
    }
}

fn default_cloud() -> String {
    "public".into()
}

/// The bot logic botfleet runs for a bot.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum HandlerSettings {
    /// Accept and record activities, reply nothing.
    #[default]
    Record,
    /// Reply to every message with its own text (needs `app_password`).
    Echo,
    /// Answer every message with `text` (needs `app_password`).
    NotifyOnly { text: String },
    /// Forward each validated activity to `url`, signed with `secret`
    /// (HMAC-SHA256 over timestamp and body); send back the replies it answers.
    Webhook {
        url: String,
        secret: Secret,
        #[serde(default = "default_webhook_timeout_ms")]
        timeout_ms: u64,
        /// Allow http:// to a non-loopback host.
        #[serde(default)]
        allow_insecure_http: bool,
    },
}

fn default_webhook_timeout_ms() -> u64 {
    5_000
}

/// What to do when a send timed out after it left: Teams may or may not have
/// delivered it, and it does not deduplicate a resent message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AmbiguousSend {
    /// Report the delivery as unknown (logged, counted); never a duplicate.
    #[default]
    Report,
    /// Send again: never a loss, possibly a duplicate in the chat.
    Resend,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundSettings {
    /// Timeout of one Bot Connector request.
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Attempts of one call, the first included (412/429/502/503/504 and
    /// connection failures are retried).
    pub max_attempts: u32,
    /// No retry starts after this long since the call began.
    pub max_retry_ms: u64,
    /// Longest wait for the local Teams rate limiter per request.
    pub max_rate_limit_wait_ms: u64,
    /// Where a 403 `InvalidBotApiHost` call is retried (the GCC Teams host).
    pub gcc_service_url: String,
    /// Added to every Teams rate-limit window. Teams counts arrivals; botfleet
    /// counts departures, and delays between the two compress bursts. A margin
    /// larger than that jitter means a paced sender is never throttled.
    pub rate_limit_margin_ms: u64,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            request_timeout_ms: 30_000,
            connect_timeout_ms: 5_000,
            max_attempts: 10,
            max_retry_ms: 60_000,
            max_rate_limit_wait_ms: 30_000,
            gcc_service_url: "https://smba.infra.gcc.teams.microsoft.com".into(),
            rate_limit_margin_ms: 200,
        }
    }
}

impl Settings {
    /// Reads defaults, then the file (if any), then `BOTFLEET__*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.exists() {
                return Err(invalid(
                    "--config",
                    format!("file {} does not exist", path.display()),
                ));
            }
            builder = builder.add_source(config::File::from(path));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("BOTFLEET")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("store.redis_urls"),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.listen",
                format!("`{}` is not an IP:port address", self.server.listen),
            ));
        }
        if self.server.body_limit_bytes < 1024 {
            return Err(invalid("server.body_limit_bytes", "must be at least 1024"));
        }
        if !matches!(self.server.log_format.as_str(), "text" | "json") {
            return Err(invalid("server.log_format", "must be `text` or `json`"));
        }
        if self.store.backend == StoreBackend::Redis && self.store.redis_urls.is_empty() {
            return Err(invalid(
                "store.redis_urls",
                "the redis backend needs at least one URL",
            ));
        }
        for (i, c) in self.clouds.iter().enumerate() {
            if Cloud::preset(&c.name).is_some() {
                return Err(invalid(
                    format!("clouds[{i}].name"),
                    format!(
                        "`{}` is a preset name; give the custom cloud another name",
                        c.name
                    ),
                ));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for (i, b) in self.bots.iter().enumerate() {
            let key = |k: &str| format!("bots[{i}].{k}");
            if b.id.is_empty()
                || !b
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    key("id"),
                    "use letters, digits, `-` and `_` only (it appears in URLs)",
                ));
            }
            if !ids.insert(b.id.as_str()) {
                return Err(invalid(key("id"), format!("`{}` is used twice", b.id)));
            }
            if b.app_id.trim().is_empty() {
                return Err(invalid(key("app_id"), "is required"));
            }
            let replies = matches!(
                b.handler,
                HandlerSettings::Echo | HandlerSettings::NotifyOnly { .. }
            );
            if b.credential.is_some() && b.app_password.is_some() {
                return Err(invalid(
                    key("credential"),
                    "give either app_password or credential, not both",
                ));
            }
            if replies && b.outbound_credential().is_none() {
                return Err(invalid(
                    key("app_password"),
                    "this bot's handler replies, which needs app_password or a credential",
                ));
            }
            if let HandlerSettings::Webhook { secret, .. } = &b.handler {
                if secret.expose().len() < 16 {
                    return Err(invalid(
                        key("handler.secret"),
                        "use a random webhook secret of at least 16 characters",
                    ));
                }
            }
            self.cloud(&b.cloud).ok_or_else(|| {
                invalid(
                    key("cloud"),
                    format!(
                        "unknown cloud `{}`; use public, gcch, dod, china or define it under [[clouds]]",
                        b.cloud
                    ),
                )
            })?;
        }
        Ok(())
    }

    /// A preset or a custom cloud by name.
    pub fn cloud(&self, name: &str) -> Option<Cloud> {
        Cloud::preset(name).or_else(|| self.clouds.iter().find(|c| c.name == name).cloned())
    }

    pub fn handler_deadline(&self) -> Duration {
        Duration::from_millis(self.server.handler_deadline_ms)
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

    #[test]
    fn defaults_need_nothing() {
        let s = Settings::load(None).expect("defaults load");
        assert_eq!(s.server.body_limit_bytes, 256 * 1024);
        assert_eq!(s.store.backend, StoreBackend::Memory);
        assert!(s.bots.is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let f = write("[[bots]]\nid = \"a\"\napp_id = \"x\"\ncloud = \"mars\"\n");
        let e = Settings::load(Some(f.path())).expect_err("rejected");
        assert!(e.to_string().contains("bots[0].cloud"), "{e}");

        let f = write("[server]\nlisten = \"nowhere\"\n");
        let e = Settings::load(Some(f.path())).expect_err("rejected");
        assert!(e.to_string().contains("server.listen"), "{e}");

        let f = write("[server]\nlisten_on = \"127.0.0.1:1\"\n");
        let e = Settings::load(Some(f.path())).expect_err("unknown key rejected");
        assert!(e.to_string().contains("listen_on"), "{e}");

        let f = write("[store]\nbackend = \"redis\"\n");
        let e = Settings::load(Some(f.path())).expect_err("rejected");
        assert!(e.to_string().contains("store.redis_urls"), "{e}");
    }

    #[test]
    fn secrets_do_not_print() {
        let f = write("[[bots]]\nid = \"a\"\napp_id = \"x\"\napp_password = \"hunter2\"\n");
        let s = Settings::load(Some(f.path())).expect("loads");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
