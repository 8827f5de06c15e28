//! One hosted bot: its `[[bots]]` entry (also the admin API's registration body),
//! and the validation that turns it into what `serve` runs.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use botfleet_auth::outbound::{CertificateCredential, ManagedIdentitySource, WorkloadIdentityEnv};
use botfleet_auth::{Cloud, Secret};
use botfleet_connector::AmbiguousPolicy;
use botfleet_runtime::handlers::{WebhookConfig, WebhookHandler};
use serde::{Deserialize, Serialize};

use super::duration;
use super::error::ConfigError;
use super::sources::Environment;

/// Shortest accepted webhook secret: the HMAC key must not be guessable.
pub const MIN_WEBHOOK_SECRET_CHARS: usize = 16;

/// Longest bot id: it is a URL segment and part of every store key.
pub const MAX_BOT_ID_CHARS: usize = 64;

/// Largest credential file an admin API registration may name (PEM keys and
/// certificates, projected tokens are a few KiB); larger is refused unread.
pub const MAX_CREDENTIAL_FILE_BYTES: u64 = 1024 * 1024;

/// Which files a bot's credential may name.
#[derive(Debug, Clone, Copy)]
pub enum CredentialFiles<'a> {
    /// Any file the botfleet user can read: the configuration file's bots,
    /// written by whoever runs botfleet. Errors name the OS error.
    Any,
    /// Only regular files that resolve (symlinks and `..` followed) inside one
    /// of these absolute directories (`admin.credential_dirs`): bots registered
    /// through the admin API, whose caller must not learn anything about other
    /// files. Every refusal of a path is one message that says neither whether
    /// the file exists nor why it was refused; the reason goes to the log.
    Within(&'a [PathBuf]),
}

/// A `[[bots]]` entry. Also the body of a bot registration in the admin API,
/// so it serialises (secrets as `"[redacted]"`, see [`Secret`]) as well as it
/// deserialises (unknown keys refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotSettings {
    /// botfleet's name for the bot: `/api/messages/{id}`, store keys, admin API.
    /// Letters, digits, `-` and `_`, at most 64.
    pub id: String,
    /// Microsoft App ID of the Azure Bot registration (a GUID): the `aud` of the
    /// tokens Teams sends, and the client id of the bot's own tokens.
    pub app_id: String,
    /// Client secret, for replies and proactive messages (shorthand for
    /// `credential = { kind = "secret", secret = "..." }`). In configuration
    /// also `app_password_file` / `app_password_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_password: Option<Secret>,
    /// The bot's Entra tenant for single-tenant bots (all new registrations):
    /// its tokens come from this tenant. Absent = multi-tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// A send that timed out after it left: `report` (never a duplicate,
    /// the default) or `resend` (never a loss).
    #[serde(default)]
    pub ambiguous_send: AmbiguousPolicy,
    /// How the bot gets its Bot Connector tokens, when not by `app_password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialSettings>,
    /// The bot logic botfleet runs for this bot.
    #[serde(default)]
    pub handler: HandlerSettings,
}

fn default_cloud() -> String {
    "public".into()
}

/// A bot's outbound credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "kebab-case",
    deny_unknown_fields,
    expecting = "a table with `kind` = \"secret\", \"certificate\", \"workload-identity\" or \"managed-identity\""
)]
pub enum CredentialSettings {
    /// Client secret (in configuration also `secret_file` / `secret_env`).
    Secret { secret: Secret },
    /// Certificate: a client assertion signed with the private key (PEM, PKCS#1
    /// or PKCS#8); `certificate_file` or `thumbprint` gives the `x5t` Entra
    /// uses to find the registered certificate. Files are read at start-up.
    Certificate {
        private_key_file: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        certificate_file: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thumbprint: Option<String>,
    },
    /// AKS workload identity: the projected service-account token (re-read on
    /// every exchange) as a federated client assertion. `token_file` defaults to
    /// `AZURE_FEDERATED_TOKEN_FILE`; `AZURE_TENANT_ID` / `AZURE_AUTHORITY_HOST`
    /// are honoured.
    WorkloadIdentity {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_file: Option<PathBuf>,
    },
    /// Managed identity (user-assigned: `client_id`, default the bot's app id).
    /// App Service when `IDENTITY_ENDPOINT`/`IDENTITY_HEADER` are set, else IMDS;
    /// `endpoint` overrides the IMDS URL.
    ManagedIdentity {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
    },
}

/// The bot logic botfleet runs for a bot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "kebab-case",
    deny_unknown_fields,
    expecting = "a table with `kind` = \"record\", \"echo\", \"notify-only\" or \"webhook\", e.g. { kind = \"echo\" }"
)]
pub enum HandlerSettings {
    /// Accept and record activities, reply nothing.
    #[default]
    Record,
    /// Reply to every message with its own text (needs a credential).
    Echo,
    /// Answer every message with `text` (needs a credential).
    NotifyOnly { text: String },
    /// Forward each validated activity to `url`, signed with `secret`
    /// (HMAC-SHA256 over timestamp and body); send back the replies it answers.
    Webhook {
        url: String,
        /// At least 16 characters; in configuration also `secret_file` / `secret_env`.
        secret: Secret,
        /// How long one webhook call may take (`"5s"`, `"1500ms"`).
        #[serde(default = "default_webhook_timeout", with = "duration")]
        timeout: Duration,
        /// Allow http:// to a non-loopback host.
        #[serde(default)]
        allow_insecure_http: bool,
    },
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}

impl HandlerSettings {
    /// The `kind` as written in configuration.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Record => "record",
            Self::Echo => "echo",
            Self::NotifyOnly { .. } => "notify-only",
            Self::Webhook { .. } => "webhook",
        }
    }
}

/// A bot's credential with its files read and parsed, ready to fetch tokens.
#[derive(Clone)]
pub enum PreparedCredential {
    Secret(Secret),
    Certificate(CertificateCredential),
    WorkloadIdentity(WorkloadIdentityEnv),
    ManagedIdentity {
        client_id: String,
        source: ManagedIdentitySource,
    },
}

impl std::fmt::Debug for PreparedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Secret(_) => "Secret",
            Self::Certificate(_) => "Certificate",
            Self::WorkloadIdentity(_) => "WorkloadIdentity",
            Self::ManagedIdentity { .. } => "ManagedIdentity",
        })
    }
}

/// A bot that passed every check that needs no network: what `serve` builds.
#[derive(Debug, Clone)]
pub struct PreparedBot {
    pub settings: BotSettings,
    pub cloud: Cloud,
    pub credential: Option<PreparedCredential>,
}

impl BotSettings {
    /// Every check of this bot that needs no network, with errors keyed
    /// relative to the bot (`handler.url`, `credential.private_key_file`).
    /// `custom_clouds` are the `[[clouds]]` entries besides the presets.
    /// Reads the certificate files it names; uses the process environment
    /// for workload and managed identity.
    ///
    /// Checks between bots (two bots with one id or app id) are
    /// [`super::Settings`]'s (or the admin API's) job.
    pub fn validate(&self, custom_clouds: &[Cloud]) -> Result<(), Vec<ConfigError>> {
        self.prepare(custom_clouds, &Environment::process())
            .map(|_| ())
    }

    /// [`Self::validate`] for a registration through the admin API: the
    /// credential may name files only inside `credential_dirs` (see
    /// [`CredentialFiles::Within`]; empty = no file-based credential).
    pub fn validate_registration(
        &self,
        custom_clouds: &[Cloud],
        credential_dirs: &[PathBuf],
    ) -> Result<(), Vec<ConfigError>> {
        self.prepare_with(
            custom_clouds,
            &Environment::process(),
            CredentialFiles::Within(credential_dirs),
        )
        .map(|_| ())
    }

    /// [`Self::validate`], returning the credential it read and parsed.
    pub fn prepare(
        &self,
        custom_clouds: &[Cloud],
        env: &Environment,
    ) -> Result<PreparedBot, Vec<ConfigError>> {
        self.prepare_with(custom_clouds, env, CredentialFiles::Any)
    }

    /// [`Self::prepare`] with the files the credential may name.
    pub fn prepare_with(
        &self,
        custom_clouds: &[Cloud],
        env: &Environment,
        files: CredentialFiles<'_>,
    ) -> Result<PreparedBot, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut fail = |key: &str, problem: String| errors.push(ConfigError::new(key, problem));

        if self.id.is_empty()
            || self.id.chars().count() > MAX_BOT_ID_CHARS
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            fail(
                "id",
                format!("`{}` is not a bot id: use 1 to {MAX_BOT_ID_CHARS} letters, digits, `-` and `_` (it appears in URLs and store keys)", self.id),
            );
        }
        if !is_guid(&self.app_id) {
            fail(
                "app_id",
                format!("`{}` is not a Microsoft App ID: give the GUID shown as \"Microsoft App ID\" on the Azure Bot's Configuration page", self.app_id),
            );
        }
        if let Some(t) = &self.tenant_id {
            if t.trim().is_empty() || t.trim() != t {
                fail(
                    "tenant_id",
                    "give the bot's Entra tenant id (a GUID) without spaces, or remove the key for a multi-tenant bot".into(),
                );
            }
        }
        let cloud = Cloud::preset(&self.cloud)
            .or_else(|| custom_clouds.iter().find(|c| c.name == self.cloud).cloned());
        if cloud.is_none() {
            let mut names: Vec<&str> = botfleet_auth::cloud::PRESETS.to_vec();
            names.extend(custom_clouds.iter().map(|c| c.name.as_str()));
            fail(
                "cloud",
                format!(
                    "unknown cloud `{}`: use one of {} (or define it under [[clouds]])",
                    self.cloud,
                    names.join(", ")
                ),
            );
        }
        for (i, t) in self.allowed_tenants.iter().enumerate() {
            if t.trim().is_empty() || t.trim() != t {
                fail(
                    &format!("allowed_tenants[{i}]"),
                    "give a tenant id without spaces".into(),
                );
            }
        }
        for (i, d) in self.additional_allowed_domains.iter().enumerate() {
            if d.is_empty() || d.contains("://") || d.contains('/') {
                fail(
                    &format!("additional_allowed_domains[{i}]"),
                    format!("`{d}` is not a domain: give a host name such as `smba.example.com`, without scheme or path"),
                );
            }
        }
        match &self.handler {
            HandlerSettings::NotifyOnly { text } if text.trim().is_empty() => {
                fail(
                    "handler.text",
                    "give the text the bot answers every message with".into(),
                );
            }
            HandlerSettings::Webhook {
                url,
                secret,
                timeout,
                allow_insecure_http,
            } => {
                if secret.expose().chars().count() < MIN_WEBHOOK_SECRET_CHARS {
                    fail(
                        "handler.secret",
                        format!("use a random webhook secret of at least {MIN_WEBHOOK_SECRET_CHARS} characters (e.g. `openssl rand -hex 32`)"),
                    );
                }
                if timeout.is_zero() {
                    fail(
                        "handler.timeout",
                        "must be longer than zero, e.g. \"5s\"".into(),
                    );
                }
                // The very constructor `serve` uses, so both agree on what a
                // usable webhook URL is.
                let checked = WebhookHandler::new(
                    WebhookConfig {
                        url: url.clone(),
                        secret: Secret::new("x"),
                        timeout: *timeout,
                        allow_insecure_http: *allow_insecure_http,
                    },
                    webhook_check_client(),
                    None,
                );
                if let Err(e) = checked {
                    fail("handler.url", e.to_string());
                }
            }
            _ => {}
        }

        let credential = match (&self.credential, &self.app_password) {
            (Some(_), Some(_)) => {
                fail(
                    "credential",
                    "give either app_password or credential, not both".into(),
                );
                None
            }
            (None, Some(p)) if p.is_empty() => {
                fail(
                    "app_password",
                    "is empty: give the client secret, or remove the key".into(),
                );
                None
            }
            (None, Some(p)) => Some(PreparedCredential::Secret(p.clone())),
            (Some(c), None) => match self.prepare_credential(c, env, files) {
                Ok(c) => Some(c),
                Err((key, problem)) => {
                    fail(&key, problem);
                    None
                }
            },
            (None, None) => None,
        };
        if matches!(
            self.handler,
            HandlerSettings::Echo | HandlerSettings::NotifyOnly { .. }
        ) && self.credential.is_none()
            && self.app_password.is_none()
        {
            fail(
                "app_password",
                format!(
                    "the `{}` handler replies, which needs the bot's client secret (app_password, app_password_file or app_password_env) or a credential",
                    self.handler.kind()
                ),
            );
        }
        match cloud {
            Some(cloud) if errors.is_empty() => Ok(PreparedBot {
                settings: self.clone(),
                cloud,
                credential,
            }),
            _ => Err(errors),
        }
    }

    fn prepare_credential(
        &self,
        credential: &CredentialSettings,
        env: &Environment,
        files: CredentialFiles<'_>,
    ) -> Result<PreparedCredential, (String, String)> {
        Ok(match credential {
            CredentialSettings::Secret { secret } if secret.is_empty() => {
                return Err((
                    "credential.secret".into(),
                    "is empty: give the client secret".into(),
                ))
            }
            CredentialSettings::Secret { secret } => PreparedCredential::Secret(secret.clone()),
            CredentialSettings::Certificate {
                private_key_file,
                certificate_file,
                thumbprint,
            } => {
                let key = self.read_pem(private_key_file, "credential.private_key_file", files)?;
                let cert = match certificate_file {
                    Some(p) => Some(self.read_pem(p, "credential.certificate_file", files)?),
                    None => None,
                };
                let parsed = match (cert, thumbprint) {
                    (_, Some(t)) => CertificateCredential::from_pem_and_thumbprint(&key, t),
                    (cert, None) => CertificateCredential::from_pem(&key, cert.as_deref()),
                };
                PreparedCredential::Certificate(
                    parsed.map_err(|e| ("credential".to_owned(), e.to_string()))?,
                )
            }
            CredentialSettings::WorkloadIdentity { token_file } => {
                // Read at every exchange, not here: only where it may be.
                if let (Some(file), CredentialFiles::Within(dirs)) = (token_file, files) {
                    self.confine(file, "credential.token_file", dirs)?;
                }
                let from_env = WorkloadIdentityEnv::from_lookup(|k| env.get(k).map(str::to_owned));
                let wi = match (from_env, token_file) {
                    (Some(mut e), Some(file)) => {
                        e.token_file = file.clone();
                        e
                    }
                    (Some(e), None) => e,
                    (None, Some(file)) => WorkloadIdentityEnv {
                        client_id: None,
                        tenant_id: env.get("AZURE_TENANT_ID").map(str::to_owned),
                        token_file: file.clone(),
                        authority_host: env.get("AZURE_AUTHORITY_HOST").map(str::to_owned),
                    },
                    (None, None) => {
                        return Err((
                            "credential.token_file".into(),
                            "workload identity needs AZURE_FEDERATED_TOKEN_FILE (set by the AKS workload identity webhook) or credential.token_file".into(),
                        ))
                    }
                };
                PreparedCredential::WorkloadIdentity(wi)
            }
            CredentialSettings::ManagedIdentity {
                client_id,
                endpoint,
            } => {
                if let Some(e) = endpoint {
                    if url::Url::parse(e).is_err() {
                        return Err((
                            "credential.endpoint".into(),
                            format!("`{e}` is not an absolute URL"),
                        ));
                    }
                }
                PreparedCredential::ManagedIdentity {
                    client_id: client_id.clone().unwrap_or_else(|| self.app_id.clone()),
                    source: match endpoint {
                        Some(endpoint) => ManagedIdentitySource::Imds {
                            endpoint: endpoint.clone(),
                        },
                        None => {
                            ManagedIdentitySource::from_lookup(|k| env.get(k).map(str::to_owned))
                        }
                    },
                }
            }
        })
    }
}

impl BotSettings {
    fn read_pem(
        &self,
        path: &Path,
        key: &str,
        files: CredentialFiles<'_>,
    ) -> Result<String, (String, String)> {
        let CredentialFiles::Within(dirs) = files else {
            return std::fs::read_to_string(path).map_err(|e| {
                (
                    key.to_owned(),
                    format!("cannot read {}: {e}", path.display()),
                )
            });
        };
        let resolved = self.confine(path, key, dirs)?;
        std::fs::read_to_string(&resolved)
            .map_err(|e| self.refuse(path, key, dirs, &format!("cannot read it: {e}")))
    }

    /// `path` resolved, if it is a regular file of at most
    /// [`MAX_CREDENTIAL_FILE_BYTES`] inside one of `dirs`. The path is first
    /// checked as written (`..` applied by its text), so nothing outside the
    /// directories is looked up at all; then resolved, so a symlink cannot
    /// lead out.
    fn confine(
        &self,
        path: &Path,
        key: &str,
        dirs: &[PathBuf],
    ) -> Result<PathBuf, (String, String)> {
        if dirs.is_empty() {
            return Err((
                key.to_owned(),
                "a bot registered through the admin API may name credential files only inside the directories the server's configuration lists in `admin.credential_dirs` (none are): add the directory the files are mounted in there, use a `secret` or `managed-identity` credential, or define the bot in the configuration file".into(),
            ));
        }
        if !path.is_absolute() {
            return Err((
                key.to_owned(),
                format!("give an absolute path inside {}", list_dirs(dirs)),
            ));
        }
        let written = normalise(path);
        let resolved_dirs: Vec<PathBuf> = dirs
            .iter()
            .filter_map(|d| std::fs::canonicalize(d).ok())
            .collect();
        let within = |p: &Path| {
            dirs.iter()
                .map(|d| normalise(d))
                .chain(resolved_dirs.iter().cloned())
                .any(|d| p.starts_with(&d) && p != d)
        };
        if !within(&written) {
            return Err(self.refuse(path, key, dirs, "outside admin.credential_dirs as written"));
        }
        let resolved = std::fs::canonicalize(path)
            .map_err(|e| self.refuse(path, key, dirs, &format!("cannot resolve it: {e}")))?;
        if !resolved_dirs.iter().any(|d| resolved.starts_with(d)) {
            return Err(self.refuse(
                path,
                key,
                dirs,
                &format!(
                    "it resolves to {}, outside admin.credential_dirs",
                    resolved.display()
                ),
            ));
        }
        match std::fs::metadata(&resolved) {
            Ok(m) if m.is_file() && m.len() <= MAX_CREDENTIAL_FILE_BYTES => Ok(resolved),
            Ok(m) if m.is_file() => Err(self.refuse(path, key, dirs, "larger than 1 MiB")),
            Ok(_) => Err(self.refuse(path, key, dirs, "not a regular file")),
            Err(e) => Err(self.refuse(path, key, dirs, &format!("cannot stat it: {e}"))),
        }
    }

    /// The one answer to every refused path (so the caller learns nothing
    /// about the file); `why` goes to the server log only.
    fn refuse(&self, path: &Path, key: &str, dirs: &[PathBuf], why: &str) -> (String, String) {
        tracing::warn!(
            bot = ?self.id,
            key,
            path = ?path,
            why,
            "admin API registration: credential file refused"
        );
        (
            key.to_owned(),
            format!(
                "`{}` is not a readable credential file inside {}",
                path.display(),
                list_dirs(dirs)
            ),
        )
    }
}

/// `admin.credential_dirs (/a, /b)` for messages.
fn list_dirs(dirs: &[PathBuf]) -> String {
    let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    format!("admin.credential_dirs ({})", shown.join(", "))
}

/// `path` with `.` dropped and `..` applied to the text (never above the
/// root), without touching the filesystem.
fn normalise(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// A client only for constructing a [`WebhookHandler`] as a check; never sends.
fn webhook_check_client() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new).clone()
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, hex digits in any case.
pub(crate) fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bot(toml_text: &str) -> BotSettings {
        toml::from_str(toml_text).expect("bot parses")
    }

    const APP: &str = "00000000-0000-4000-8000-000000000001";

    #[test]
    fn errors_are_relative_to_the_bot() {
        let b = bot(&format!(
            "id = \"a b\"\napp_id = \"{APP}\"\ncloud = \"mars\"\nhandler = {{ kind = \"webhook\", url = \"not a url\", secret = \"short\" }}\n"
        ));
        let errors = b.validate(&[]).expect_err("invalid");
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["id", "cloud", "handler.secret", "handler.url"]);
        assert!(
            errors[1].problem.contains("public, gcch, dod, china"),
            "{}",
            errors[1].problem
        );
    }

    #[test]
    fn app_id_must_be_a_guid() {
        let b = bot("id = \"a\"\napp_id = \"my-bot\"\n");
        let errors = b.validate(&[]).expect_err("invalid");
        assert_eq!(errors[0].key, "app_id");
        assert!(bot(&format!("id = \"a\"\napp_id = \"{APP}\"\n"))
            .validate(&[])
            .is_ok());
    }

    #[test]
    fn serialises_with_secrets_redacted() {
        let b = bot(&format!(
            "id = \"a\"\napp_id = \"{APP}\"\napp_password = \"hunter2\"\nhandler = {{ kind = \"webhook\", url = \"https://x.example\", secret = \"0123456789abcdefXYZ\" }}\n"
        ));
        let json = serde_json::to_string(&b).expect("serialises");
        assert!(
            !json.contains("hunter2") && !json.contains("0123456789abcdefXYZ"),
            "{json}"
        );
        assert!(json.contains("[redacted]"), "{json}");
        let stored = Secret::revealing(|| serde_json::to_string(&b)).expect("serialises");
        let back: BotSettings = serde_json::from_str(&stored).expect("round trip");
        assert_eq!(
            back.app_password.map(|s| s.expose().to_owned()).as_deref(),
            Some("hunter2")
        );
    }

    #[test]
    fn enums_name_their_values() {
        let e = toml::from_str::<BotSettings>(&format!(
            "id = \"a\"\napp_id = \"{APP}\"\nhandler = \"echo\"\n"
        ))
        .expect_err("string handler");
        assert!(
            e.to_string().contains("kind` = \"record\", \"echo\""),
            "{e}"
        );
        let e = toml::from_str::<BotSettings>(&format!(
            "id = \"a\"\napp_id = \"{APP}\"\nambiguous_send = \"maybe\"\n"
        ))
        .expect_err("bad policy");
        assert!(e.to_string().contains("`report`"), "{e}");
    }

    #[test]
    fn guid() {
        assert!(is_guid(APP));
        assert!(is_guid("ABCDEF00-0000-4000-8000-000000000001"));
        assert!(!is_guid("00000000-0000-4000-8000-00000000001"));
        assert!(!is_guid("00000000000040008000000000000001"));
        assert!(!is_guid("g0000000-0000-4000-8000-000000000001"));
    }
}
