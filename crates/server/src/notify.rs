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
    /// than [`NotifierConfig::max_rate_limit_wait`] comes back as `Throttled`,
    /// and Teams throttling (429, 503 with `Retry-After`) comes back at once
    /// (`RetryPolicy::return_throttling`): the notifier reschedules both
    /// instead of holding a worker. Replies keep waiting within the call.
    pub(crate) fn insert(
        &self,
        id: &str,
        connector: &Connector,
        settings: ConnectorBotSettings,
        retry: &RetryPolicy,
    ) {
        let retry = RetryPolicy {
            max_rate_limit_wait: NotifierConfig::default().max_rate_limit_wait,
            return_throttling: true,
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

/// Appends the notifier's metrics to a Prometheus text exposition (the
/// format of `/metrics`: https://prometheus.io/docs/instrumenting/exposition_formats/).
/// Counters are this process's; the job gauges (`botfleet_notification_jobs`,
/// `botfleet_notification_backlog`) describe every replica's jobs as of this
/// replica's last sweep, so they are the same on every replica (aggregate
/// them with `max`, not `sum`).
// Superseded by the registry (crate::metrics reads the same accessors); kept
// until the notifier's owner removes it.
#[allow(dead_code)]
pub(crate) fn write_metrics(out: &mut String, notifier: &Notifier) {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let c = notifier.counters();
    let _ = writeln!(
        out,
        "# HELP botfleet_notification_jobs Notification jobs not final, by state (every replica's, as of the last sweep).\n# TYPE botfleet_notification_jobs gauge\nbotfleet_notification_jobs{{state=\"queued\"}} {}\nbotfleet_notification_jobs{{state=\"running\"}} {}",
        c.jobs_queued.load(Relaxed),
        c.jobs_running.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP botfleet_notification_jobs_completed_total Notification jobs whose last outcome this replica recorded.\n# TYPE botfleet_notification_jobs_completed_total counter\nbotfleet_notification_jobs_completed_total {}",
        c.jobs_completed.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP botfleet_notification_backlog Targets of active notification jobs not final yet (pending, sending, retrying), every replica's.\n# TYPE botfleet_notification_backlog gauge\nbotfleet_notification_backlog {}",
        c.backlog.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP botfleet_notification_items_in_hand Work items this replica took and has not finished.\n# TYPE botfleet_notification_items_in_hand gauge\nbotfleet_notification_items_in_hand {}",
        notifier.in_hand()
    );
    let _ = writeln!(
        out,
        "# HELP botfleet_notification_deliveries_total Notification attempts by outcome (delivered, failed, retried) and reason.\n# TYPE botfleet_notification_deliveries_total counter"
    );
    for ((outcome, reason), n) in c.by_reason() {
        let _ = writeln!(
            out,
            "botfleet_notification_deliveries_total{{outcome=\"{outcome}\",reason=\"{}\"}} {n}",
            escape_label(&reason)
        );
    }
    let _ = writeln!(
        out,
        "# HELP botfleet_notification_throttled_total Notification attempts throttled (the local Teams rate limiter had no room, or Teams answered 429).\n# TYPE botfleet_notification_throttled_total counter\nbotfleet_notification_throttled_total {}\n# HELP botfleet_notification_throttled_wait_seconds_total Waits given to throttled notification attempts, summed.\n# TYPE botfleet_notification_throttled_wait_seconds_total counter\nbotfleet_notification_throttled_wait_seconds_total {:.3}",
        c.throttled.load(Relaxed),
        c.throttled_wait_ms.load(Relaxed) as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "# HELP botfleet_notification_reclaimed_total Work items taken over from a replica that stopped acknowledging them.\n# TYPE botfleet_notification_reclaimed_total counter\nbotfleet_notification_reclaimed_total {}",
        c.reclaimed.load(Relaxed)
    );
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
