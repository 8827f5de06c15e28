//! The bots `serve` runs: built from the configuration file and from the admin
//! API's bot registry by one code path ([`BotFactory`]), and kept current on
//! every replica by [`RegistryFollower`].
//!
//! A bot registered, changed or removed through the admin API (on any replica)
//! is announced by the registry store ([`BotRegistryStore::subscribe`]); each
//! replica's follower then reads the registry, rebuilds what changed (settings
//! -> [`BotSettings::prepare`] -> handler, token provider, connector client,
//! trust) and swaps the runtime's set of bots at once
//! ([`BotRegistry::replace`]). A replica that missed an announcement (a Redis
//! reconnect) notices within `admin.registry_poll` by comparing
//! [`BotRegistryStore::revision`] with the revision it applied.
//!
//! Failures stay local: a registration that cannot be built on this replica (a
//! certificate file missing here, a cloud this configuration does not define)
//! is logged at error with its bot id, not served here (its tokens get 401
//! `audience`, as for an unknown bot: failing closed, never serving an older
//! version of a changed bot), retried at every poll, and listed in `/readyz`
//! and `/metrics`. It does not make the replica unready: one bad registration
//! must not take every bot out of rotation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use botfleet_auth::inbound::{BotTrust, InboundValidator};
use botfleet_auth::outbound::{
    ClientCredential, ClientCredentialsProvider, ManagedIdentityProvider, TokenCache, TokenKey,
    TokenProvider,
};
use botfleet_auth::{Cloud, ServiceUrlAllowlist, TenantPolicy};
use botfleet_connector::{BotSettings as ConnectorBotSettings, Connector, RetryPolicy};
use botfleet_runtime::handlers::{EchoHandler, NotifyOnlyHandler, WebhookConfig, WebhookHandler};
use botfleet_runtime::outbound::Replier;
use botfleet_runtime::{Bot, BotHandler, BotRegistry, RecordingHandler};
use botfleet_store::admin::{AdminStoreError, BotChange, BotRecord, BotRegistryStore};
use botfleet_store::conversations::ConversationStore;
use futures::stream::BoxStream;
use futures::{FutureExt as _, StreamExt as _};
use thiserror::Error;

use crate::settings::{
    BotSettings, CredentialFiles, Environment, HandlerSettings, PreparedBot, PreparedCredential,
};

/// Why one bot could not be built. The message names the bot's key that is
/// wrong (`credential.private_key_file: cannot read ...`), never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct BuildError(pub String);

/// One bot, ready to serve.
pub struct BuiltBot {
    pub bot: Arc<Bot>,
    /// The token cache key its replies use (`None`: it has no credential).
    pub token_key: Option<TokenKey>,
    pub cloud: Arc<Cloud>,
}

/// What building a [`Bot`] needs: the process-wide store, token cache and
/// connector, shared by every bot, whichever source it comes from.
pub struct BotFactory {
    pub(crate) store: Arc<dyn ConversationStore>,
    pub(crate) tokens: TokenCache,
    pub(crate) connector: Connector,
    /// For token endpoints (Entra, IMDS).
    pub(crate) token_http: reqwest::Client,
    /// For webhooks: never follows redirects.
    pub(crate) webhook_http: reqwest::Client,
    pub(crate) retry: RetryPolicy,
    /// Each bot's client for notifications (its rate-limit wait is short: a
    /// full tenant is rescheduled by the notifier, not waited for), by bot id.
    pub(crate) notify_clients: crate::notify::NotifyClients,
}

impl BotFactory {
    /// Builds one checked bot. Registers its token provider with the token
    /// cache (replacing the provider of the same key: a rotated credential
    /// applies to the next token request).
    pub fn build(&self, p: &PreparedBot) -> Result<BuiltBot, BuildError> {
        let b = &p.settings;
        let cloud = Arc::new(p.cloud.clone());
        let service_urls =
            ServiceUrlAllowlist::new(&cloud.service_url_hosts, &b.additional_allowed_domains);
        if service_urls.allows_any_host() {
            tracing::warn!(bot = %b.id, "additional_allowed_domains contains \"*\": serviceUrl host checking is OFF for this bot; its credentials can be sent to any https host named in an authentic activity");
        }
        let trust = Arc::new(BotTrust {
            bot_id: b.id.clone(),
            app_id: b.app_id.clone(),
            cloud: cloud.clone(),
            service_urls,
            tenants: TenantPolicy::new(&b.allowed_tenants),
        });
        let id: Arc<str> = Arc::from(b.id.as_str());
        let provider = p
            .credential
            .as_ref()
            .map(|c| token_provider(p, c, &self.token_http));
        let token_key = provider.as_ref().map(|p| p.key().clone());
        let replier = provider.map(|provider| {
            let handle = self.tokens.register(provider);
            let settings =
                ConnectorBotSettings::new(&b.app_id, Arc::new(handle), trust.service_urls.clone())
                    .with_ambiguous(b.ambiguous_send);
            self.notify_clients
                .insert(&b.id, &self.connector, settings.clone(), &self.retry);
            let client = self.connector.bot(settings.with_retry(self.retry.clone()));
            Replier {
                bot_id: id.clone(),
                client,
                store: self.store.clone(),
            }
        });
        let handler = build_handler(&b.id, &b.handler, replier, &self.webhook_http)?;
        Ok(BuiltBot {
            bot: Arc::new(Bot {
                id,
                trust,
                handler,
                store: self.store.clone(),
            }),
            token_key,
            cloud,
        })
    }
}

fn build_handler(
    bot_id: &str,
    settings: &HandlerSettings,
    replier: Option<Replier>,
    http: &reqwest::Client,
) -> Result<Arc<dyn BotHandler>, BuildError> {
    let needs = |r: Option<Replier>| {
        r.ok_or_else(|| {
            BuildError(format!(
                "bot `{bot_id}`: the `{}` handler replies and needs app_password or a credential",
                settings.kind()
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
            .map_err(|e| BuildError(format!("bot `{bot_id}`: handler.url: {e}")))?,
        ),
    })
}

/// The token provider of one bot's credential, read and parsed by
/// [`BotSettings::prepare`] (so a bad key file is reported before any reply).
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

/// What `/readyz` and `/metrics` show about the admin API's bots on this
/// replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryStatus {
    /// The registry revision last applied; `None` before the first read.
    pub revision: Option<u64>,
    /// Bots from the admin API served now.
    pub served: usize,
    /// Registrations not served here, by bot id, with the reason.
    pub failed: BTreeMap<String, String>,
    /// Why the last read of the registry failed, while it fails.
    pub store_error: Option<String>,
    /// Reads of the registry that failed since start.
    pub store_failures: u64,
    /// Registry changes applied (bots added, changed or removed) since start.
    pub applied: u64,
}

/// One registration as this replica last saw it.
struct Applied {
    version: u64,
    /// `None`: not served (the reason is in `error`).
    bot: Option<BuiltBot>,
    error: Option<String>,
}

/// Keeps the runtime's bots equal to the configuration's bots plus the
/// registry's, on this replica. See the module documentation.
pub struct RegistryFollower {
    factory: BotFactory,
    store: Arc<dyn BotRegistryStore>,
    bots: Arc<BotRegistry>,
    validator: Arc<InboundValidator>,
    /// Built once at start-up; never changed here.
    config_bots: Vec<BuiltBot>,
    /// The configuration's `[[clouds]]`, which registrations may name.
    custom_clouds: Vec<Cloud>,
    /// For workload and managed identity credentials of registrations.
    env: Environment,
    /// `admin.credential_dirs`: a stored registration is held to the same
    /// rule as when it was registered, so one registered before a directory
    /// left the list does not keep reading files there.
    credential_dirs: Vec<std::path::PathBuf>,
    /// Serialises syncs: one reader of the registry at a time.
    applied: tokio::sync::Mutex<HashMap<String, Applied>>,
    status: parking_lot::Mutex<RegistryStatus>,
}

impl RegistryFollower {
    /// `config_bots` are the configuration's bots, built by `factory` and
    /// already in `bots`.
    // Each argument is a separate piece of start-up state; a struct for them
    // would be built and taken apart in the one place that calls this.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        factory: BotFactory,
        store: Arc<dyn BotRegistryStore>,
        bots: Arc<BotRegistry>,
        validator: Arc<InboundValidator>,
        config_bots: Vec<BuiltBot>,
        custom_clouds: Vec<Cloud>,
        env: Environment,
        credential_dirs: Vec<std::path::PathBuf>,
    ) -> Self {
        Self {
            factory,
            store,
            bots,
            validator,
            config_bots,
            custom_clouds,
            env,
            credential_dirs,
            applied: tokio::sync::Mutex::new(HashMap::new()),
            status: parking_lot::Mutex::new(RegistryStatus::default()),
        }
    }

    pub fn status(&self) -> RegistryStatus {
        self.status.lock().clone()
    }

    /// Reads the whole registry and applies what changed since the last sync:
    /// new and changed registrations are built, removed ones dropped, and the
    /// runtime's bots replaced in one step. Registrations whose version this
    /// replica already serves are not rebuilt; ones that failed are tried
    /// again. Returns whether the served bots changed.
    ///
    /// Errors: the registry store could not be read (nothing changed then).
    pub async fn sync(&self) -> Result<bool, AdminStoreError> {
        let mut applied = self.applied.lock().await;
        // The revision first: a change made while the list is read bumps it
        // past this value, so the next poll reads the registry again.
        let read = async {
            let revision = self.store.revision().await?;
            let records = self.store.list().await?;
            Ok::<_, AdminStoreError>((revision, records))
        }
        .await;
        let (revision, records) = match read {
            Ok(r) => r,
            Err(e) => {
                let mut st = self.status.lock();
                st.store_failures += 1;
                st.store_error = Some(e.to_string());
                return Err(e);
            }
        };
        let mut previous = std::mem::take(&mut *applied);
        let mut next: HashMap<String, Applied> = HashMap::new();
        // Registrations served before this sync and not after it as they were:
        // removed, rebuilt or failing now.
        let mut dropped: Vec<Applied> = Vec::new();
        let mut changes = 0u64;
        let mut new_clouds: Vec<Arc<Cloud>> = Vec::new();
        for record in records {
            let prev = previous.remove(&record.id);
            let unchanged = prev
                .as_ref()
                .is_some_and(|p| p.version == record.version && p.bot.is_some());
            if unchanged {
                if let Some(p) = prev {
                    next.insert(record.id.clone(), p);
                }
                continue;
            }
            let was_served = prev.as_ref().is_some_and(|p| p.bot.is_some());
            match self.build(&record) {
                Ok(built) => {
                    tracing::info!(
                        bot = %record.id,
                        version = record.version,
                        change = if was_served { "updated" } else { "added" },
                        "bot from the admin API applied"
                    );
                    new_clouds.push(built.cloud.clone());
                    next.insert(
                        record.id.clone(),
                        Applied {
                            version: record.version,
                            bot: Some(built),
                            error: None,
                        },
                    );
                    changes += 1;
                }
                Err(e) => {
                    let repeated = prev.as_ref().is_some_and(|p| {
                        p.version == record.version && p.error.as_deref() == Some(e.0.as_str())
                    });
                    if repeated {
                        tracing::debug!(bot = %record.id, version = record.version, error = %e, "bot from the admin API still cannot be built on this replica");
                    } else {
                        tracing::error!(
                            bot = %record.id,
                            version = record.version,
                            error = %e,
                            "bot from the admin API cannot be built on this replica: it is not served here (its activities get 401) until the registration or this replica is fixed; retried every admin.registry_poll"
                        );
                    }
                    if was_served {
                        changes += 1;
                    }
                    next.insert(
                        record.id.clone(),
                        Applied {
                            version: record.version,
                            bot: None,
                            error: Some(e.0),
                        },
                    );
                }
            }
            dropped.extend(prev);
        }
        for (id, gone) in previous {
            if gone.bot.is_some() {
                tracing::info!(bot = %id, "bot from the admin API removed");
                changes += 1;
            }
            dropped.push(gone);
        }
        if !new_clouds.is_empty() {
            // Keys first, so the bot's first activity does not meet an empty
            // key store (503 keys_unavailable).
            let added = self.validator.add_clouds(new_clouds).await;
            for ks in added {
                tracing::info!(metadata_url = %ks.metadata_url, clouds = ?ks.clouds, loaded = ks.loaded, "signing keys of a cloud added for bots from the admin API");
            }
        }
        if changes > 0 {
            let served = self.config_bots.iter().map(|b| b.bot.clone()).chain(
                next.values()
                    .filter_map(|a| a.bot.as_ref().map(|b| b.bot.clone())),
            );
            if let Err(e) = self.bots.replace(served) {
                // Cannot happen: the store keeps ids and app ids unique and
                // `build` refuses the configuration's. Keep serving the
                // current set rather than none.
                tracing::error!(error = %e, "bots from the admin API not applied");
            }
        }
        self.forget_unused_tokens(&dropped, &next);
        let mut st = self.status.lock();
        st.revision = Some(revision);
        st.served = next.values().filter(|a| a.bot.is_some()).count();
        st.failed = next
            .iter()
            .filter_map(|(id, a)| a.error.clone().map(|e| (id.clone(), e)))
            .collect();
        st.store_error = None;
        st.applied += changes;
        drop(st);
        *applied = next;
        Ok(changes > 0)
    }

    /// Unregisters the token keys of removed or replaced bots that no served
    /// bot uses any more, so the cache stops refreshing tokens nobody needs.
    fn forget_unused_tokens(&self, dropped: &[Applied], next: &HashMap<String, Applied>) {
        let in_use: HashSet<&TokenKey> = self
            .config_bots
            .iter()
            .filter_map(|b| b.token_key.as_ref())
            .chain(
                next.values()
                    .filter_map(|a| a.bot.as_ref().and_then(|b| b.token_key.as_ref())),
            )
            .collect();
        let stale = dropped
            .iter()
            .filter_map(|a| a.bot.as_ref().and_then(|b| b.token_key.as_ref()));
        for key in stale {
            if !in_use.contains(key) {
                self.factory.tokens.unregister(key);
            }
        }
    }

    /// One registration: its stored spec, checked exactly as a `[[bots]]`
    /// entry of the file, then built.
    fn build(&self, record: &BotRecord) -> Result<BuiltBot, BuildError> {
        for c in &self.config_bots {
            if *c.bot.id == record.id {
                return Err(BuildError(format!(
                    "the configuration file defines a bot with id `{}`, which wins",
                    record.id
                )));
            }
            if c.bot.trust.app_id.eq_ignore_ascii_case(&record.app_id) {
                return Err(BuildError(format!(
                    "app id `{}` belongs to bot `{}` of the configuration file, which wins",
                    record.app_id, c.bot.id
                )));
            }
        }
        // The spec is a `[[bots]]` entry as JSON (secrets included: never log
        // it, nor serde's message, which may quote it).
        let settings: BotSettings = serde_json::from_value(record.spec.clone()).map_err(|e| {
            BuildError(format!(
                "the stored registration cannot be read by this version of botfleet ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        if settings.id != record.id {
            return Err(BuildError(format!(
                "the stored registration names bot `{}`",
                settings.id
            )));
        }
        let prepared = settings
            .prepare_with(
                &self.custom_clouds,
                &self.env,
                CredentialFiles::Within(&self.credential_dirs),
            )
            .map_err(|errors| {
                BuildError(
                    errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })?;
        self.factory.build(&prepared)
    }

    /// Follows the registry until the process ends: applies each announced
    /// change at once and, every `poll`, compares the registry's revision with
    /// the one applied (and retries registrations that failed). Also
    /// re-subscribes after the store was unreachable.
    pub fn spawn(self: Arc<Self>, poll: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.follow(poll).await })
    }

    async fn follow(&self, poll: Duration) {
        let mut changes: Option<BoxStream<'static, BotChange>> = None;
        let mut subscribe_failed = false;
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            if changes.is_none() {
                match self.store.subscribe().await {
                    Ok(stream) => {
                        changes = Some(stream);
                        if subscribe_failed {
                            tracing::info!("bot registry: following change announcements again");
                        }
                        subscribe_failed = false;
                        // Changes made before the subscription existed.
                        self.sync_logged().await;
                    }
                    Err(e) => {
                        if !subscribe_failed {
                            tracing::warn!(error = %e, "bot registry: cannot follow change announcements; polling every admin.registry_poll until it works");
                        }
                        subscribe_failed = true;
                    }
                }
            }
            tokio::select! {
                change = next_change(&mut changes) => match change {
                    Some(change) => {
                        tracing::debug!(change = ?change, "bot registry change announced");
                        // Apply a burst of announcements with one read.
                        if let Some(stream) = changes.as_mut() {
                            while let Some(Some(_)) = stream.next().now_or_never() {}
                        }
                        self.sync_logged().await;
                    }
                    None => {
                        tracing::warn!("bot registry: the change announcements ended; subscribing again");
                        changes = None;
                    }
                },
                _ = tick.tick() => self.poll().await,
            }
        }
    }

    /// Syncs when the registry's revision is not the one applied, or some
    /// registration failed (a missing file may have appeared).
    async fn poll(&self) {
        let (applied, failing) = {
            let st = self.status.lock();
            (
                st.revision,
                !st.failed.is_empty() || st.store_error.is_some(),
            )
        };
        match self.store.revision().await {
            Ok(revision) if Some(revision) == applied && !failing => {}
            Ok(revision) => {
                if Some(revision) != applied {
                    tracing::debug!(applied = ?applied, revision, "bot registry revision moved without an announcement seen here; applying it");
                }
                self.sync_logged().await;
            }
            Err(e) => {
                let mut st = self.status.lock();
                st.store_failures += 1;
                if st.store_error.is_none() {
                    tracing::warn!(error = %e, "bot registry unreachable; the bots from the admin API stay as they are until it is back");
                }
                st.store_error = Some(e.to_string());
            }
        }
    }

    async fn sync_logged(&self) {
        let had_error = self.status.lock().store_error.is_some();
        match self.sync().await {
            Ok(_) if had_error => tracing::info!("bot registry reachable again"),
            Ok(_) => {}
            Err(e) if had_error => {
                tracing::debug!(error = %e, "bot registry still unreachable")
            }
            Err(e) => {
                tracing::warn!(error = %e, "bot registry unreachable; the bots from the admin API stay as they are until it is back")
            }
        }
    }
}

async fn next_change(stream: &mut Option<BoxStream<'static, BotChange>>) -> Option<BotChange> {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}
