//! Wiring of proactive notifications in `botfleet serve`: the job store of
//! the configured backend, the notifier (`botfleet_runtime::notify`) over the
//! live bots, and the admin API's notification routes.

use std::collections::HashMap;
use std::sync::Arc;

use botfleet_connector::{BotClient, BotSettings as ConnectorBotSettings, Connector, RetryPolicy};
use botfleet_runtime::notify::{Notifier, NotifierConfig, NotifyBot, NotifyBots};
use botfleet_runtime::{BotRegistry, Counters};
use botfleet_store::jobs::{
    consumer_name, JobStore, JobStoreOptions, MemoryJobStore, RedisJobStore,
};
use botfleet_store::RedisPool;
use parking_lot::RwLock;

use crate::admin::AdminState;
use crate::settings::{Settings, StoreBackend};

/// Each bot's notification client by bot id, filled by the bot factory as
/// bots are built (from the configuration or the admin API).
#[derive(Clone, Default)]
pub struct NotifyClients(Arc<RwLock<HashMap<String, BotClient>>>);

impl NotifyClients {
    /// Records the notification client of bot `id`: its connector settings
    /// with the replies' retry policy, except that a rate-limit wait longer
    /// than [`NotifierConfig::max_rate_limit_wait`] comes back as `Throttled`
    /// (the notifier reschedules it instead of holding a worker).
    pub(crate) fn insert(
        &self,
        id: &str,
        connector: &Connector,
        settings: ConnectorBotSettings,
        retry: &RetryPolicy,
    ) {
        let retry = RetryPolicy {
            max_rate_limit_wait: NotifierConfig::default().max_rate_limit_wait,
            ..retry.clone()
        };
        let client = connector.bot(settings.with_retry(retry));
        self.0.write().insert(id.to_owned(), client);
    }
}

/// The bots the notifier sends for: those of the live registry that have a
/// credential.
struct LiveBots {
    registry: Arc<BotRegistry>,
    clients: NotifyClients,
}

impl NotifyBots for LiveBots {
    fn bot(&self, bot_id: &str) -> Option<NotifyBot> {
        // A bot removed from the registry keeps no client here.
        let bot = self.registry.get(bot_id)?;
        let client = self.clients.0.read().get(bot_id).cloned()?;
        Some(NotifyBot {
            client,
            store: bot.store.clone(),
        })
    }

    fn bot_ids(&self) -> Vec<String> {
        self.registry
            .all()
            .iter()
            .map(|b| b.id.to_string())
            .collect()
    }
}

/// Builds the job store of the configured backend, starts this process's
/// notifier, and mounts the notification routes on `admin`.
pub(crate) fn start(
    admin: AdminState,
    settings: &Settings,
    redis: Option<&RedisPool>,
    registry: Arc<BotRegistry>,
    clients: NotifyClients,
    counters: Arc<Counters>,
) -> (AdminState, Arc<Notifier>) {
    let jobs: Arc<dyn JobStore> = match (settings.store.backend, redis) {
        (StoreBackend::Redis, Some(pool)) => Arc::new(RedisJobStore::new(
            pool.clone(),
            // The store versions its keys itself (`bf1:jobs:...`).
            &settings.store.key_prefix,
            &settings.store.redis_urls,
            settings.store.redis_cluster,
            JobStoreOptions::default(),
        )),
        _ => Arc::new(MemoryJobStore::default()),
    };
    let notifier = Arc::new(Notifier::start(
        settings.notify.notifier_config(),
        jobs.clone(),
        Arc::new(LiveBots { registry, clients }),
        consumer_name(),
        counters,
    ));
    let hook = Arc::downgrade(&notifier);
    let admin = admin.with_notifications(
        jobs,
        Some(Arc::new(move |job: &str| {
            if let Some(n) = hook.upgrade() {
                n.job_created(job);
            }
        })),
    );
    (admin, notifier)
}
