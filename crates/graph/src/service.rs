//! The Graph service of one replica: subscription actors, reconciliation, the
//! public endpoint's logic and the notification processor.
//!
//! # Guarantees (docs/graph.md)
//! - **One writer per subscription**: every replica runs an actor for every
//!   subscription, but only the holder of the subscription's lease (in the
//!   store) calls Graph for it; the others wait. Two replicas never renew the
//!   same subscription in the same round.
//! - **Nothing acknowledged is lost**: the endpoint answers 202 only after the
//!   accepted items are in the store's inbox (5xx otherwise, so Graph
//!   retries); processing happens off the request path.
//! - **Exactly once per message and subscription**: a message's action runs
//!   unless its processed marker (`subscription | chat | message id |
//!   lastModifiedDateTime`) exists; the marker is written after the action was
//!   durably started, and the inbox entry acknowledged after the marker. A
//!   job action carries an `Idempotency-Key` derived from the marker, so a
//!   crash between starting the job and writing the marker cannot start a
//!   second job. A webhook action is at least once with a stable
//!   `X-Botfleet-Notification-Id` (a crash after the POST and before the
//!   marker resends it).
//! - **Gaps are read back**: after a removal, a recreation, an outage of this
//!   replica or a takeover, the actor reads the messages modified since the
//!   newest one seen and feeds them through the same processing.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use botfleet_auth::Secret;
use botfleet_store::graph::{GraphStore, GraphStoreError, InboxEntry, StateFields};
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;
use tokio::sync::Notify;

use crate::client::{GraphClient, GraphError, GraphSubscription};
use crate::crypto::{certificate_for_graph, DecryptError, KeyRing};
use crate::model::{
    ActionRule, ChangeItem, InboxPayload, MessageView, NotificationBatch, SubscriptionSpec,
};
use crate::time::{now_ms, parse_rfc3339_ms, rfc3339};
use crate::tokens::{TokenError, TokenVerifier};

/// Path of the notification endpoint on the public listener.
pub const NOTIFICATIONS_PATH: &str = "/api/graph/notifications";
/// Path of the lifecycle endpoint on the public listener.
pub const LIFECYCLE_PATH: &str = "/api/graph/lifecycle";
/// Longest `validationToken` echoed (Graph's are a few hundred characters).
pub const MAX_VALIDATION_TOKEN: usize = 2048;
/// Largest notification body read (Graph batches up to about 1 MB).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// State fields (the admin API shows them).
pub mod field {
    pub const GRAPH_ID: &str = "graph_id";
    pub const CLIENT_STATE: &str = "client_state";
    pub const EXPIRES: &str = "expires_ms";
    /// Graph's `Date` of the newest answer, and when (local ms) it came.
    pub const DATE: &str = "date_ms";
    pub const DATE_AT: &str = "date_at_ms";
    pub const CREATED: &str = "created_ms";
    pub const LAST_RENEWAL: &str = "last_renewal_ms";
    pub const LAST_NOTIFICATION: &str = "last_notification_ms";
    pub const LAST_ERROR: &str = "last_error";
    pub const LAST_ERROR_AT: &str = "last_error_ms";
    /// Newest `lastModifiedDateTime` processed (ms).
    pub const LAST_SEEN: &str = "last_seen_ms";
    /// A lifecycle event for the lease holder: `removed`, `reauthorize`.
    pub const EVENT: &str = "event";
    pub const CERT_THUMBPRINT: &str = "cert_thumbprint";
    pub const LAST_RESYNC: &str = "last_resync_ms";
}

/// Tuning of the service; [`Default`] is the production value.
#[derive(Debug, Clone)]
pub struct GraphConfig {
    /// Base URL Graph reaches this deployment at (`https://bots.example.com`);
    /// the endpoint paths are appended.
    pub public_url: String,
    /// Lifetime asked for at each creation and renewal (at most 4,320 min).
    pub lifetime: Duration,
    /// Renew when the remaining lifetime falls below this fraction of `lifetime`.
    pub renew_at_fraction: f64,
    /// How often the lease holder reads its subscription back from Graph
    /// (finds early expiry or removal, refreshes Graph's clock).
    pub check_interval: Duration,
    /// How often one replica compares `GET /subscriptions` with the registry.
    pub reconcile_interval: Duration,
    /// How long a replica's lease on a subscription lasts unless renewed (the
    /// actor renews it every third of it).
    pub lease: Duration,
    /// An inbox entry a replica took and did not finish for this long is
    /// processed by another.
    pub reclaim_idle: Duration,
    /// How long processed markers are kept (resends older than this are
    /// processed again).
    pub done_ttl: Duration,
    /// Inbox entries taken at once.
    pub batch: usize,
    /// Timeout of a webhook action's POST.
    pub webhook_timeout: Duration,
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            public_url: String::new(),
            lifetime: Duration::from_secs(4200 * 60),
            renew_at_fraction: 0.5,
            check_interval: Duration::from_secs(300),
            reconcile_interval: Duration::from_secs(900),
            lease: Duration::from_secs(30),
            reclaim_idle: Duration::from_secs(60),
            done_ttl: Duration::from_secs(7 * 24 * 3600),
            batch: 64,
            webhook_timeout: Duration::from_secs(10),
        }
    }
}

/// The Graph side of a bot's app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphApp {
    pub app_id: String,
    /// `https://graph.microsoft.com/v1.0` (or the cloud's).
    pub graph_url: String,
    /// OpenID metadata whose keys sign validation tokens.
    pub openid_metadata_url: String,
}

/// The bots' credentials, as the server has them.
#[async_trait]
pub trait GraphApps: Send + Sync {
    /// The Graph side of `bot`, `None` for an unknown bot or one without a credential.
    fn app(&self, bot: &str) -> Option<GraphApp>;
    /// An app token for Graph as `bot` in `tenant` (client credentials).
    async fn token(&self, bot: &str, tenant: &str) -> Result<Secret, String>;
    /// A delegated access token of the `[[graph_auth.credentials]]` entry
    /// `name` (the server's [`crate::delegated::DelegatedService`]); the error
    /// says what to do (configure it, sign in). Default: none configured.
    async fn delegated_token(&self, name: &str) -> Result<Secret, String> {
        Err(format!(
            "delegated credential `{name}` is not configured ([[graph_auth.credentials]])"
        ))
    }
    /// Graph answered 401 to `token` of credential `name` (Graph checks
    /// expiry on its own clock): forget it so the next use refreshes.
    async fn invalidate_delegated(&self, _name: &str, _token: &Secret) {}
}

/// Why a job could not be started.
#[derive(Debug, Error)]
pub enum StartJobError {
    /// Will not work on retry (bad targets, unknown bot): recorded, not retried.
    #[error("{0}")]
    Permanent(String),
    /// The job store is unavailable: retried.
    #[error("{0}")]
    Transient(String),
}

/// Starts proactive notification jobs (the server's job store and notifier).
#[async_trait]
pub trait JobStarter: Send + Sync {
    /// Creates a job of `bot` to `targets` (the notification API's targets
    /// object) sending `activity`, idempotent on `idempotency_key`; the job id.
    async fn start(
        &self,
        bot: &str,
        targets: &serde_json::Value,
        activity: serde_json::Value,
        idempotency_key: &str,
        created_by: &str,
    ) -> Result<String, StartJobError>;
}

/// Counters of this replica, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub items_received: AtomicU64,
    pub items_accepted: AtomicU64,
    pub batches_persist_failed: AtomicU64,
    pub validations: AtomicU64,
    /// Dropped at the endpoint, by reason (`client_state`, `unknown_subscription`, `malformed`).
    dropped: Mutex<BTreeMap<&'static str, u64>>,
    /// Rejected by the processor, by reason (`signature`, `token_invalid`, ...).
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Actions run, by kind.
    actions: Mutex<BTreeMap<&'static str, u64>>,
    pub action_failures: AtomicU64,
    pub duplicates: AtomicU64,
    pub filtered: AtomicU64,
    pub creations: AtomicU64,
    pub renewals: AtomicU64,
    pub renewal_failures: AtomicU64,
    pub reauthorizations: AtomicU64,
    pub removals: AtomicU64,
    pub resyncs: AtomicU64,
    pub resynced_messages: AtomicU64,
    pub throttled: AtomicU64,
    pub reconcile_missing: AtomicU64,
    pub orphans_deleted: AtomicU64,
}

impl Counters {
    fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, k: &'static str) {
        *map.lock().entry(k).or_default() += 1;
    }
    pub fn dropped(&self) -> BTreeMap<&'static str, u64> {
        self.dropped.lock().clone()
    }
    pub fn rejected(&self) -> BTreeMap<&'static str, u64> {
        self.rejected.lock().clone()
    }
    pub fn actions(&self) -> BTreeMap<&'static str, u64> {
        self.actions.lock().clone()
    }
}

/// Why a notification POST was not accepted.
#[derive(Debug, Error)]
pub enum ReceiveError {
    /// Not a notification body: 400 (Graph never sends one).
    #[error("the body is not a change notification collection")]
    Malformed,
    /// The inbox could not be written: 503, so Graph retries the batch.
    #[error("the notifications could not be persisted: {0}")]
    Persist(GraphStoreError),
}

/// What the endpoint accepted of one POST.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Received {
    pub accepted: usize,
    pub dropped: usize,
}

/// A subscription this replica knows.
struct Entry {
    spec: SubscriptionSpec,
    spec_json: String,
    client_state: RwLock<Option<Secret>>,
    last_reload: Mutex<Option<Instant>>,
    wake: Notify,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    keys: Mutex<Option<(Instant, Arc<KeyRing>)>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
    }
}

/// One replica's Graph service. Create with [`GraphService::new`], then
/// [`GraphService::start`].
pub struct GraphService {
    store: Arc<dyn GraphStore>,
    apps: Arc<dyn GraphApps>,
    jobs: Option<Arc<dyn JobStarter>>,
    http: reqwest::Client,
    webhook_http: reqwest::Client,
    verifier: TokenVerifier,
    config: RwLock<GraphConfig>,
    owner: String,
    subs: RwLock<HashMap<String, Arc<Entry>>>,
    counters: Counters,
    processor_wake: Notify,
    revision: Mutex<Option<u64>>,
}

/// What one inbox entry's processing ended with.
enum Outcome {
    /// Acknowledge it (done, duplicate, rejected, or not processable).
    Ack,
    /// Leave it: it is handed out again after `reclaim_idle`.
    Retry,
}

impl GraphService {
    /// `owner` names this replica in leases (unique per process).
    pub fn new(
        store: Arc<dyn GraphStore>,
        apps: Arc<dyn GraphApps>,
        jobs: Option<Arc<dyn JobStarter>>,
        http: reqwest::Client,
        webhook_http: reqwest::Client,
        config: GraphConfig,
        owner: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            apps,
            jobs,
            verifier: TokenVerifier::new(http.clone()),
            http,
            webhook_http,
            config: RwLock::new(config),
            owner,
            subs: RwLock::new(HashMap::new()),
            counters: Counters::default(),
            processor_wake: Notify::new(),
            revision: Mutex::new(None),
        })
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The token `spec` calls Graph with: the bot's app token of its tenant,
    /// or its delegated credential's access token.
    async fn token_of(&self, spec: &SubscriptionSpec) -> Result<Secret, String> {
        match spec.credential.delegated() {
            None => self.apps.token(&spec.bot, &spec.tenant_id).await,
            Some(name) => self.apps.delegated_token(name).await,
        }
    }

    /// After Graph answered `err` to a call made with `token` of `spec`: a
    /// 401 to a delegated token drops it from the cache (it can expire at
    /// Graph before botfleet's clock says so), so the next round refreshes.
    async fn after_graph_error(&self, spec: &SubscriptionSpec, token: &Secret, err: &GraphError) {
        if let (GraphError::Unauthorized(_), Some(name)) = (err, spec.credential.delegated()) {
            tracing::info!(subscription = %spec.id, credential = %name, "Graph refused the delegated access token (401); it is refreshed on the next use");
            self.apps.invalidate_delegated(name, token).await;
        }
    }

    pub fn store(&self) -> &Arc<dyn GraphStore> {
        &self.store
    }

    /// Sets the public base URL once the listener is bound (when the
    /// configuration names none).
    pub fn set_public_url(&self, url: &str) {
        let mut c = self.config.write();
        if c.public_url.is_empty() {
            c.public_url = url.trim_end_matches('/').to_owned();
        }
    }

    fn cfg(&self) -> GraphConfig {
        self.config.read().clone()
    }

    fn notification_url(&self) -> String {
        format!("{}{NOTIFICATIONS_PATH}", self.cfg().public_url)
    }

    fn lifecycle_url(&self) -> String {
        format!("{}{LIFECYCLE_PATH}", self.cfg().public_url)
    }

    /// Starts the registry follower, the processor and the reconciliation.
    pub fn start(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(s) = me.upgrade() else { break };
                if let Err(e) = s.sync().await {
                    tracing::warn!(error = %e, "Graph: cannot read the subscription registry; retrying");
                }
                drop(s);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
        let me = Arc::downgrade(self);
        tokio::spawn(async move { process_loop(me).await });
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(s) = me.upgrade() else { break };
                let every = s.cfg().reconcile_interval;
                if let Err(e) = s.reconcile().await {
                    tracing::warn!(error = %e, "Graph: reconciliation failed; retrying at the next round");
                }
                drop(s);
                tokio::time::sleep(every).await;
            }
        });
    }

    /// Applies the stored registry: starts actors of new or changed
    /// subscriptions, stops those of removed ones.
    pub async fn sync(self: &Arc<Self>) -> Result<(), GraphStoreError> {
        let rev = self.store.revision().await?;
        if *self.revision.lock() == Some(rev) {
            return Ok(());
        }
        let all = self.store.list_subscriptions().await?;
        let mut next: HashMap<String, Arc<Entry>> = HashMap::new();
        let current = self.subs.read().clone();
        for s in all {
            if let Some(e) = current.get(&s.id) {
                if e.spec_json == s.spec_json {
                    next.insert(s.id.clone(), e.clone());
                    continue;
                }
            }
            let spec: SubscriptionSpec = match serde_json::from_str(&s.spec_json) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(subscription = %s.id, error = %e, "Graph: stored subscription unreadable; skipped");
                    continue;
                }
            };
            let entry = Arc::new(Entry {
                spec,
                spec_json: s.spec_json.clone(),
                client_state: RwLock::new(None),
                last_reload: Mutex::new(None),
                wake: Notify::new(),
                task: Mutex::new(None),
                keys: Mutex::new(None),
            });
            let me = Arc::downgrade(self);
            let weak = Arc::downgrade(&entry);
            *entry.task.lock() = Some(tokio::spawn(async move { actor(me, weak).await }));
            next.insert(s.id, entry);
        }
        // Replaced and removed entries abort their actors when dropped.
        *self.subs.write() = next;
        *self.revision.lock() = Some(rev);
        Ok(())
    }

    fn entry(&self, id: &str) -> Option<Arc<Entry>> {
        self.subs.read().get(id).cloned()
    }

    /// Wakes the actor of `id` on this replica.
    pub fn wake(&self, id: &str) {
        if let Some(e) = self.entry(id) {
            e.wake.notify_one();
        }
    }

    // ------------------------------------------------------------ endpoint --

    /// The validation handshake: the URL-decoded `validationToken` of a query
    /// string, `None` when the query has none. `Err` when it is longer than
    /// [`MAX_VALIDATION_TOKEN`] (answer 400). The caller answers 200
    /// `text/plain` with `X-Content-Type-Options: nosniff`, never HTML
    /// (https://learn.microsoft.com/graph/change-notifications-delivery-webhooks#notificationurl-validation).
    pub fn validation_token(query: &str) -> Option<Result<String, ()>> {
        let token = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "validationToken")
            .map(|(_, v)| v.into_owned())?;
        if token.len() > MAX_VALIDATION_TOKEN {
            return Some(Err(()));
        }
        Some(Ok(token))
    }

    /// Checks every item's `clientState` (constant time) and persists the
    /// accepted ones to the inbox, all or none. Items of unknown subscriptions
    /// or with a wrong `clientState` are dropped and counted, never processed.
    pub async fn receive(&self, body: &[u8]) -> Result<Received, ReceiveError> {
        let batch: NotificationBatch =
            serde_json::from_slice(body).map_err(|_| ReceiveError::Malformed)?;
        let at = now_ms();
        let mut payloads = Vec::with_capacity(batch.value.len());
        let mut out = Received::default();
        for raw in batch.value {
            self.counters.items_received.fetch_add(1, Relaxed);
            let Ok(item) = serde_json::from_value::<ChangeItem>(raw) else {
                Counters::bump(&self.counters.dropped, "malformed");
                out.dropped += 1;
                continue;
            };
            let Some(sub) = self.check_client_state(item.client_state.as_deref()).await else {
                out.dropped += 1;
                continue;
            };
            let payload = match item.lifecycle_event.clone() {
                Some(event) => InboxPayload::Lifecycle { sub, event, at },
                None => {
                    let tokens = if item.encrypted_content.is_some() {
                        batch.validation_tokens.clone()
                    } else {
                        Vec::new()
                    };
                    InboxPayload::Change {
                        sub,
                        item: Box::new(item),
                        tokens,
                        at,
                    }
                }
            };
            match serde_json::to_string(&payload) {
                Ok(p) => payloads.push(p),
                Err(_) => {
                    Counters::bump(&self.counters.dropped, "malformed");
                    out.dropped += 1;
                }
            }
        }
        if payloads.is_empty() {
            return Ok(out);
        }
        if let Err(e) = self.store.inbox_push(&payloads).await {
            self.counters.batches_persist_failed.fetch_add(1, Relaxed);
            return Err(ReceiveError::Persist(e));
        }
        out.accepted = payloads.len();
        self.counters
            .items_accepted
            .fetch_add(out.accepted as u64, Relaxed);
        self.processor_wake.notify_one();
        Ok(out)
    }

    /// The botfleet subscription whose clientState this is, or `None`
    /// (dropped and counted). A clientState is `<subscription id>.<secret>`.
    async fn check_client_state(&self, presented: Option<&str>) -> Option<String> {
        let Some(presented) = presented else {
            Counters::bump(&self.counters.dropped, "client_state");
            return None;
        };
        let Some((id, _)) = presented.split_once('.') else {
            Counters::bump(&self.counters.dropped, "client_state");
            return None;
        };
        let Some(entry) = self.entry(id) else {
            Counters::bump(&self.counters.dropped, "unknown_subscription");
            return None;
        };
        let matches = |e: &Entry| {
            e.client_state
                .read()
                .as_ref()
                .is_some_and(|s| bool::from(s.expose().as_bytes().ct_eq(presented.as_bytes())))
        };
        if matches(&entry) {
            return Some(id.to_owned());
        }
        // Another replica may have created the subscription: read the stored
        // clientState, at most once a second per subscription.
        let reload = {
            let mut last = entry.last_reload.lock();
            let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if reload {
            if let Ok(st) = self.store.get_state(id).await {
                if let Some(cs) = st.get(field::CLIENT_STATE) {
                    *entry.client_state.write() = Some(Secret::new(cs.clone()));
                }
            }
            if matches(&entry) {
                return Some(id.to_owned());
            }
        }
        Counters::bump(&self.counters.dropped, "client_state");
        None
    }

    // ---------------------------------------------------------- processing --

    async fn handle(&self, e: &InboxEntry) -> Outcome {
        let Ok(payload) = serde_json::from_str::<InboxPayload>(&e.payload) else {
            Counters::bump(&self.counters.rejected, "corrupt");
            return Outcome::Ack;
        };
        let Some(entry) = self.entry(payload.sub()) else {
            // Deleted since: nothing to do with it.
            return Outcome::Ack;
        };
        match payload {
            InboxPayload::Lifecycle { sub, event, .. } => {
                self.lifecycle(&entry, &sub, &event).await
            }
            InboxPayload::Change {
                sub, item, tokens, ..
            } => self.change(&entry, &sub, *item, &tokens).await,
            InboxPayload::Message {
                sub,
                tenant,
                message,
                ..
            } => match MessageView::of(&message) {
                Some(view) => self.act(&entry, &sub, &tenant, &view, &message).await,
                None => {
                    Counters::bump(&self.counters.rejected, "unreadable_message");
                    Outcome::Ack
                }
            },
        }
    }

    async fn lifecycle(&self, entry: &Entry, sub: &str, event: &str) -> Outcome {
        let flag = match event {
            "subscriptionRemoved" => "removed",
            "reauthorizationRequired" => "reauthorize",
            // `missed` exists only for Outlook resources: a resync covers it.
            "missed" => "removed",
            _ => {
                Counters::bump(&self.counters.rejected, "unknown_lifecycle_event");
                return Outcome::Ack;
            }
        };
        tracing::info!(subscription = %sub, event, "Graph lifecycle event");
        if self
            .store
            .set_state(sub, &[(field::EVENT, flag.to_owned())])
            .await
            .is_err()
        {
            return Outcome::Retry;
        }
        entry.wake.notify_one();
        Outcome::Ack
    }

    async fn change(
        &self,
        entry: &Entry,
        sub: &str,
        item: ChangeItem,
        tokens: &[String],
    ) -> Outcome {
        let spec = &entry.spec;
        let Some(app) = self.apps.app(&spec.bot) else {
            self.error(
                sub,
                &format!("bot `{}` is not served here or has no credential", spec.bot),
            )
            .await;
            return Outcome::Retry;
        };
        let message = if let Some(content) = &item.encrypted_content {
            // Validation tokens first, then HMAC, then decryption.
            match self
                .verifier
                .verify_any(
                    tokens,
                    &app.openid_metadata_url,
                    &app.app_id,
                    &item.tenant_id,
                )
                .await
            {
                Ok(()) => {}
                Err(TokenError::Keys(e)) => {
                    self.error(sub, &format!("validation token keys: {e}"))
                        .await;
                    return Outcome::Retry;
                }
                Err(e) => {
                    tracing::warn!(subscription = %sub, reason = e.reason(), error = %e, "Graph: rich notification refused");
                    Counters::bump(&self.counters.rejected, e.reason());
                    return Outcome::Ack;
                }
            }
            let Some(ring) = self.key_ring(entry, false).await else {
                return Outcome::Retry;
            };
            let mut decrypted = ring.decrypt(content);
            if matches!(decrypted, Err(DecryptError::KeyUnwrap)) {
                // The key files may have been rotated since the ring was
                // cached (Graph already encrypts to the new certificate):
                // read them again before refusing.
                let Some(ring) = self.key_ring(entry, true).await else {
                    return Outcome::Retry;
                };
                decrypted = ring.decrypt(content);
            }
            match decrypted {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(subscription = %sub, reason = e.reason(), error = %e, "Graph: encrypted content refused");
                    Counters::bump(&self.counters.rejected, e.reason());
                    return Outcome::Ack;
                }
            }
        } else {
            if item.resource.is_empty() {
                Counters::bump(&self.counters.rejected, "no_resource");
                return Outcome::Ack;
            }
            let token = match self.token_of(spec).await {
                Ok(t) => t,
                Err(e) => {
                    self.error(sub, &format!("Graph token: {e}")).await;
                    return Outcome::Retry;
                }
            };
            let client = GraphClient::new(self.http.clone(), &app.graph_url);
            match client.get_resource(token.expose(), &item.resource).await {
                Ok(m) => m,
                Err(GraphError::NotFound(_)) => {
                    Counters::bump(&self.counters.rejected, "message_gone");
                    return Outcome::Ack;
                }
                Err(e) => {
                    self.after_graph_error(spec, &token, &e).await;
                    self.error(sub, &format!("reading the message: {e}")).await;
                    return Outcome::Retry;
                }
            }
        };
        let Some(view) = MessageView::of(&message) else {
            Counters::bump(&self.counters.rejected, "unreadable_message");
            return Outcome::Ack;
        };
        let tenant = item.tenant_id.clone();
        self.act(entry, sub, &tenant, &view, &message).await
    }

    /// Runs the subscription's action for one message, exactly once per
    /// (subscription, message, lastModifiedDateTime).
    async fn act(
        &self,
        entry: &Entry,
        sub: &str,
        tenant: &str,
        view: &MessageView,
        message: &serde_json::Value,
    ) -> Outcome {
        let cfg = self.cfg();
        let now = now_ms();
        let key = format!(
            "{sub}|{}|{}|{}",
            view.chat_or_channel, view.id, view.last_modified_ms
        );
        match self.store.is_done(&key, now).await {
            Ok(true) => {
                self.counters.duplicates.fetch_add(1, Relaxed);
                return Outcome::Ack;
            }
            Ok(false) => {}
            Err(_) => return Outcome::Retry,
        }
        let spec = &entry.spec;
        let words = spec.action.contains();
        let lower = view.text.to_lowercase();
        let wanted = words.is_empty() || words.iter().any(|w| lower.contains(&w.to_lowercase()));
        let notification_id = hex::encode(Sha256::digest(key.as_bytes()));
        if wanted {
            let result = match &spec.action {
                ActionRule::Record { .. } => Ok(()),
                ActionRule::Webhook { url, secret, .. } => {
                    self.webhook(
                        url,
                        secret,
                        &notification_id,
                        sub,
                        tenant,
                        message,
                        cfg.webhook_timeout,
                    )
                    .await
                }
                ActionRule::Job {
                    bot, targets, text, ..
                } => {
                    let bot = bot.as_deref().unwrap_or(&spec.bot);
                    let activity = serde_json::json!({
                        "type": "message",
                        "text": fill(text, sub, tenant, view),
                    });
                    match &self.jobs {
                        None => Err((false, "notification jobs are not available".to_owned())),
                        Some(j) => j
                            .start(bot, targets, activity, &format!("graph-{}", &notification_id[..40]), &format!("graph:{sub}"))
                            .await
                            .map(|job| tracing::info!(subscription = %sub, job = %job, "Graph: notification job started"))
                            .map_err(|e| match e {
                                StartJobError::Permanent(m) => (false, m),
                                StartJobError::Transient(m) => (true, m),
                            }),
                    }
                }
            };
            match result {
                Ok(()) => Counters::bump(&self.counters.actions, spec.action.kind()),
                Err((transient, m)) => {
                    self.counters.action_failures.fetch_add(1, Relaxed);
                    self.error(sub, &format!("{} action: {m}", spec.action.kind()))
                        .await;
                    if transient {
                        return Outcome::Retry;
                    }
                }
            }
        } else {
            self.counters.filtered.fetch_add(1, Relaxed);
        }
        if self
            .store
            .mark_done(&key, ms(cfg.done_ttl), now)
            .await
            .is_err()
        {
            return Outcome::Retry;
        }
        let _ = self
            .store
            .raise_state(sub, field::LAST_SEEN, view.last_modified_ms)
            .await;
        let _ = self
            .store
            .set_state(sub, &[(field::LAST_NOTIFICATION, now.to_string())])
            .await;
        Outcome::Ack
    }

    #[allow(clippy::too_many_arguments)]
    async fn webhook(
        &self,
        url: &str,
        secret: &Secret,
        notification_id: &str,
        sub: &str,
        tenant: &str,
        message: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(), (bool, String)> {
        let body = serde_json::json!({
            "type": "graph.message",
            "id": notification_id,
            "subscription": sub,
            "tenantId": tenant,
            "message": message,
        });
        let body = serde_json::to_vec(&body).map_err(|e| (false, e.to_string()))?;
        let ts = now_ms() / 1000;
        let sig = botfleet_runtime::handlers::sign(secret, ts, &body);
        let r = self
            .webhook_http
            .post(url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(botfleet_runtime::handlers::TIMESTAMP_HEADER, ts.to_string())
            .header(botfleet_runtime::handlers::SIGNATURE_HEADER, sig)
            .header("X-Botfleet-Notification-Id", notification_id)
            .body(body)
            .send()
            .await
            .map_err(|e| (true, format!("POST failed: {}", e.without_url())))?;
        let status = r.status();
        if status.is_success() {
            Ok(())
        } else {
            // 4xx other than 408/429: the receiver refuses it; retrying will not help.
            let transient =
                status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
            Err((
                transient,
                format!("the webhook answered HTTP {}", status.as_u16()),
            ))
        }
    }

    /// The subscription's keys, read from their files at most once a minute
    /// unless `fresh` (a payload none of the cached keys unwraps).
    async fn key_ring(&self, entry: &Entry, fresh: bool) -> Option<Arc<KeyRing>> {
        let enc = entry.spec.encryption.as_ref()?;
        if let Some((at, ring)) = entry.keys.lock().as_ref() {
            if !fresh && at.elapsed() < Duration::from_secs(60) {
                return Some(ring.clone());
            }
        }
        match KeyRing::from_files(&enc.key_file, enc.previous_key_file.as_deref()) {
            Ok(r) => {
                let r = Arc::new(r);
                *entry.keys.lock() = Some((Instant::now(), r.clone()));
                Some(r)
            }
            Err(e) => {
                self.error(&entry.spec.id, &format!("encryption key: {e}"))
                    .await;
                None
            }
        }
    }

    async fn error(&self, sub: &str, message: &str) {
        tracing::warn!(subscription = %sub, error = %message, "Graph subscription error");
        let _ = self
            .store
            .set_state(
                sub,
                &[
                    (field::LAST_ERROR, message.chars().take(500).collect()),
                    (field::LAST_ERROR_AT, now_ms().to_string()),
                ],
            )
            .await;
    }

    // ------------------------------------------------------ reconciliation --

    /// One round (under the `reconcile` lease): for each bot and tenant,
    /// `GET /subscriptions`; a subscription of the registry that Graph no
    /// longer has is marked removed (its actor recreates it and resyncs); a
    /// Graph subscription pointing at this deployment with a clientState of no
    /// registered subscription is deleted.
    pub async fn reconcile(&self) -> Result<(), String> {
        let cfg = self.cfg();
        if cfg.public_url.is_empty() {
            return Ok(());
        }
        let ttl = ms(cfg.reconcile_interval).max(10_000);
        if !self
            .store
            .lease("reconcile", &self.owner, ttl, now_ms())
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(());
        }
        let subs = self.subs.read().clone();
        // One listing per identity: a delegated credential lists what its
        // user's token sees, the app what the app's token sees.
        type Group = (String, String, Option<String>);
        let mut groups: BTreeMap<Group, Vec<Arc<Entry>>> = BTreeMap::new();
        for e in subs.values() {
            let cred = e.spec.credential.delegated().map(str::to_owned);
            groups
                .entry((e.spec.bot.clone(), e.spec.tenant_id.clone(), cred))
                .or_default()
                .push(e.clone());
        }
        let ours = self.notification_url();
        for ((bot, _, cred), entries) in groups {
            let Some(app) = self.apps.app(&bot) else {
                continue;
            };
            let Some(first) = entries.first() else {
                continue;
            };
            let token = match self.token_of(&first.spec).await {
                Ok(t) => t,
                Err(e) if cred.is_some() => {
                    // The credential's own failure is on its subscriptions'
                    // state already; the other groups still reconcile.
                    tracing::warn!(bot = %bot, error = %e, "Graph reconciliation: no delegated token");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let client = GraphClient::new(self.http.clone(), &app.graph_url);
            let listed = match client.list(token.expose()).await {
                Ok(l) => l.value,
                Err(e) => {
                    self.after_graph_error(&first.spec, &token, &e).await;
                    tracing::warn!(bot = %bot, error = %e, "Graph reconciliation: cannot list subscriptions");
                    continue;
                }
            };
            for e in &entries {
                let st = self
                    .store
                    .get_state(&e.spec.id)
                    .await
                    .map_err(|e| e.to_string())?;
                let Some(gid) = st.get(field::GRAPH_ID) else {
                    continue;
                };
                let created = num(&st, field::DATE_AT).unwrap_or(0);
                // A subscription created during this listing is not missing.
                if now_ms().saturating_sub(created) < 10_000 {
                    continue;
                }
                if !listed.iter().any(|g| &g.id == gid) {
                    tracing::warn!(subscription = %e.spec.id, "Graph reconciliation: the subscription is gone at Graph; recreating it");
                    self.counters.reconcile_missing.fetch_add(1, Relaxed);
                    self.store
                        .set_state(&e.spec.id, &[(field::EVENT, "removed".to_owned())])
                        .await
                        .map_err(|e| e.to_string())?;
                    e.wake.notify_one();
                }
            }
            for g in &listed {
                if g.notification_url.as_deref() != Some(ours.as_str()) {
                    continue;
                }
                let owner = g
                    .client_state
                    .as_deref()
                    .and_then(|c| c.split_once('.'))
                    .map(|(id, _)| id.to_owned());
                if owner.as_deref().is_some_and(|id| !subs.contains_key(id)) {
                    tracing::info!(graph_subscription = %g.id, "Graph reconciliation: deleting a subscription no registered one owns");
                    if client.delete(token.expose(), &g.id).await.is_ok() {
                        self.counters.orphans_deleted.fetch_add(1, Relaxed);
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes subscription `id` at Graph (best effort) and from the registry.
    pub async fn delete(&self, id: &str) -> Result<bool, GraphStoreError> {
        let st = self.store.get_state(id).await?;
        if let (Some(gid), Some(e)) = (st.get(field::GRAPH_ID), self.entry(id)) {
            if let Some(app) = self.apps.app(&e.spec.bot) {
                if let Ok(token) = self.token_of(&e.spec).await {
                    let client = GraphClient::new(self.http.clone(), &app.graph_url);
                    if let Err(err) = client.delete(token.expose(), gid).await {
                        tracing::warn!(subscription = %id, error = %err, "Graph: deleting the subscription at Graph failed; it expires on its own");
                    }
                }
            }
        }
        self.store.delete_subscription(id).await
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn num(st: &StateFields, f: &str) -> Option<u64> {
    st.get(f).and_then(|v| v.parse().ok())
}

/// `{{text}}`, `{{from}}`, `{{chat}}`, `{{time}}`, `{{tenant}}`, `{{subscription}}`.
pub fn fill(template: &str, sub: &str, tenant: &str, v: &MessageView) -> String {
    let text: String = v.text.chars().take(4000).collect();
    template
        .replace("{{text}}", &text)
        .replace("{{from}}", &v.from)
        .replace("{{chat}}", &v.chat_or_channel)
        .replace("{{time}}", &v.created)
        .replace("{{tenant}}", tenant)
        .replace("{{subscription}}", sub)
}

/// A new clientState for subscription `id`: `<id>.<43 random base64url chars>`.
pub fn new_client_state(id: &str) -> String {
    use rand::RngCore as _;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("{id}.{}", URL_SAFE_NO_PAD.encode(b))
}

/// The resource a resync can read (`/chats/{id}/messages`,
/// `/teams/{id}/channels/{id}/messages`); `None` for tenant- or user-wide ones.
pub fn resync_resource(resource: &str) -> Option<&str> {
    let parts: Vec<&str> = resource.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["chats", id, "messages"] if !id.is_empty() && *id != "getAllMessages" => Some(resource),
        ["teams", t, "channels", c, "messages"] if !t.is_empty() && !c.is_empty() => Some(resource),
        _ => None,
    }
}

// ---------------------------------------------------------------- processor --

async fn process_loop(me: std::sync::Weak<GraphService>) {
    let consumer = match me.upgrade() {
        Some(s) => s.owner.clone(),
        None => return,
    };
    let mut last_reclaim = Instant::now();
    loop {
        let Some(s) = me.upgrade() else { break };
        let cfg = s.cfg();
        let now = now_ms();
        let mut entries = match s.store.inbox_take(&consumer, cfg.batch, now).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "Graph: cannot read the inbox; retrying");
                drop(s);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if entries.is_empty() && last_reclaim.elapsed() >= cfg.reclaim_idle / 4 {
            last_reclaim = Instant::now();
            entries = s
                .store
                .inbox_reclaim(&consumer, ms(cfg.reclaim_idle), cfg.batch, now)
                .await
                .unwrap_or_default();
        }
        if entries.is_empty() {
            // Holding `s` for at most 500 ms keeps the service alive that long.
            let _ =
                tokio::time::timeout(Duration::from_millis(500), s.processor_wake.notified()).await;
            continue;
        }
        // Per tenant in order; tenants side by side.
        let mut by_tenant: BTreeMap<String, Vec<InboxEntry>> = BTreeMap::new();
        for e in entries {
            let tenant = serde_json::from_str::<InboxPayload>(&e.payload)
                .map(|p| p.tenant().to_owned())
                .unwrap_or_default();
            by_tenant.entry(tenant).or_default().push(e);
        }
        let s2 = s.clone();
        futures::future::join_all(by_tenant.into_values().map(|group| {
            let s = s2.clone();
            async move {
                for e in group {
                    if let Outcome::Ack = s.handle(&e).await {
                        if let Err(err) = s.store.inbox_ack(&e.id).await {
                            tracing::warn!(error = %err, "Graph: cannot acknowledge an inbox entry; it will be seen again (and found processed)");
                        }
                    } else {
                        // Keep this tenant's order: what follows waits for the retry.
                        break;
                    }
                }
            }
        }))
        .await;
    }
}

// -------------------------------------------------------------------- actor --

/// The actor of one subscription on one replica: acts only while it holds the
/// subscription's lease.
async fn actor(me: std::sync::Weak<GraphService>, mine: std::sync::Weak<Entry>) {
    let Some(id) = mine.upgrade().map(|e| e.spec.id.clone()) else {
        return;
    };
    let mut held = false;
    let mut not_before: Option<Instant> = None;
    let mut failures: u32 = 0;
    loop {
        let Some(s) = me.upgrade() else { break };
        // A replaced or removed definition ends this actor (its successor has its own).
        let Some(entry) = mine.upgrade() else { break };
        let cfg = s.cfg();
        let tick = (cfg.lease / 3)
            .min(cfg.check_interval)
            .max(Duration::from_millis(100));
        if !cfg.public_url.is_empty() && not_before.is_none_or(|t| Instant::now() >= t) {
            match s
                .store
                .lease(&format!("sub:{id}"), &s.owner, ms(cfg.lease), now_ms())
                .await
            {
                Ok(true) => {
                    let first = !held;
                    held = true;
                    match s.round(&entry, first).await {
                        Ok(()) => {
                            failures = 0;
                            not_before = None;
                        }
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            let wait = match e.retry_after() {
                                Some(d) => {
                                    s.counters.throttled.fetch_add(1, Relaxed);
                                    d
                                }
                                None => Duration::from_secs(5)
                                    .saturating_mul(1 << failures.min(6))
                                    .min(Duration::from_secs(300)),
                            };
                            // Under the sim clock "later" can be seconds; never busy-loop.
                            not_before = Some(Instant::now() + wait.max(tick));
                            s.error(&id, &e.to_string()).await;
                        }
                    }
                }
                Ok(false) => held = false,
                Err(e) => {
                    held = false;
                    tracing::debug!(subscription = %id, error = %e, "Graph: lease unavailable");
                }
            }
        }
        let _ = tokio::time::timeout(tick, entry.wake.notified()).await;
    }
}

/// An actor round's failure.
#[derive(Debug, Error)]
enum RoundError {
    #[error("{0}")]
    Graph(#[from] GraphError),
    #[error("{0}")]
    Store(#[from] GraphStoreError),
    #[error("{0}")]
    Other(String),
}

impl RoundError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Graph(g) => g.retry_after(),
            _ => None,
        }
    }
}

impl GraphService {
    /// One round of the lease holder.
    async fn round(&self, entry: &Entry, first_hold: bool) -> Result<(), RoundError> {
        let spec = &entry.spec;
        let id = spec.id.as_str();
        let cfg = self.cfg();
        let app = self.apps.app(&spec.bot).ok_or_else(|| {
            RoundError::Other(format!(
                "bot `{}` is not served here or has no credential",
                spec.bot
            ))
        })?;
        let mut st = self.store.get_state(id).await?;
        if !st.contains_key(field::CLIENT_STATE) {
            let cs = new_client_state(id);
            self.store
                .set_state(id, &[(field::CLIENT_STATE, cs.clone())])
                .await?;
            st.insert(field::CLIENT_STATE.to_owned(), cs);
        }
        if let Some(cs) = st.get(field::CLIENT_STATE) {
            *entry.client_state.write() = Some(Secret::new(cs.clone()));
        }
        let token = self
            .token_of(spec)
            .await
            .map_err(|e| RoundError::Graph(GraphError::Token(e)))?;
        let client = GraphClient::new(self.http.clone(), &app.graph_url);
        let r = self
            .round_with(entry, first_hold, &cfg, &client, &token, st)
            .await;
        if let Err(RoundError::Graph(e)) = &r {
            self.after_graph_error(spec, &token, e).await;
        }
        r
    }

    /// The Graph calls of a round, with `token` of the subscription's credential.
    async fn round_with(
        &self,
        entry: &Entry,
        first_hold: bool,
        cfg: &GraphConfig,
        client: &GraphClient,
        token: &Secret,
        st: StateFields,
    ) -> Result<(), RoundError> {
        let id = entry.spec.id.as_str();
        let event = st.get(field::EVENT).cloned().unwrap_or_default();
        let graph_id = st.get(field::GRAPH_ID).cloned();

        let Some(graph_id) = graph_id.filter(|_| event != "removed") else {
            let had = st.contains_key(field::GRAPH_ID) || st.contains_key(field::LAST_SEEN);
            if event == "removed" {
                self.counters.removals.fetch_add(1, Relaxed);
            }
            self.create(entry, client, token.expose(), &st).await?;
            if had {
                self.resync(entry, client, token.expose()).await?;
            }
            return Ok(());
        };

        if event == "reauthorize" {
            match client.reauthorize(token.expose(), &graph_id).await {
                Ok(_) => {
                    self.counters.reauthorizations.fetch_add(1, Relaxed);
                    self.store
                        .set_state(id, &[(field::EVENT, String::new())])
                        .await?;
                    // Renew too: a reauthorization request also comes near expiry.
                    self.renew(entry, client, token.expose(), &graph_id).await?;
                }
                Err(GraphError::NotFound(_)) => {
                    self.create(entry, client, token.expose(), &st).await?;
                    self.resync(entry, client, token.expose()).await?;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }

        let now = now_ms();
        let checked = num(&st, field::DATE_AT).unwrap_or(0);
        let graph_now = num(&st, field::DATE)
            .map(|d| d + now.saturating_sub(checked))
            .unwrap_or(now);
        let remaining = num(&st, field::EXPIRES)
            .unwrap_or(0)
            .saturating_sub(graph_now);
        let renew_below = (cfg.lifetime.as_secs_f64() * cfg.renew_at_fraction * 1000.0) as u64;
        let cert_changed = self.certificate_changed(entry, &st);
        if remaining <= renew_below
            || now.saturating_sub(checked) >= ms(cfg.check_interval)
            || cert_changed
        {
            match self.renew(entry, client, token.expose(), &graph_id).await {
                Ok(()) => {}
                Err(RoundError::Graph(GraphError::NotFound(_))) => {
                    tracing::warn!(subscription = %id, "Graph: the subscription is gone (expired or removed); recreating it");
                    self.create(entry, client, token.expose(), &st).await?;
                    self.resync(entry, client, token.expose()).await?;
                    return Ok(());
                }
                Err(e) => {
                    self.counters.renewal_failures.fetch_add(1, Relaxed);
                    return Err(e);
                }
            }
        }
        if first_hold {
            // Start-up or takeover: what arrived while nobody held it.
            self.resync(entry, client, token.expose()).await?;
        }
        Ok(())
    }

    fn certificate_changed(&self, entry: &Entry, st: &StateFields) -> bool {
        let Some(enc) = &entry.spec.encryption else {
            return false;
        };
        match certificate_for_graph(&enc.certificate_file) {
            Ok((_, thumb)) => st.get(field::CERT_THUMBPRINT) != Some(&thumb),
            Err(_) => false,
        }
    }

    /// Reads the subscription back (fresh `Date`, existence) and renews it
    /// when its remaining lifetime (`expirationDateTime - Date`) is below the
    /// threshold or the certificate changed.
    async fn renew(
        &self,
        entry: &Entry,
        client: &GraphClient,
        token: &str,
        graph_id: &str,
    ) -> Result<(), RoundError> {
        let id = entry.spec.id.as_str();
        let cfg = self.cfg();
        let got = client.get(token, graph_id).await?;
        let ours = self.notification_url();
        if got
            .value
            .notification_url
            .as_deref()
            .is_some_and(|u| u != ours)
        {
            // `graph.public_url` changed (a move, or a run without one on a
            // new port): Graph would keep posting to the old address, and its
            // lifecycle URL cannot be changed by PATCH. Delete it and answer
            // "gone", so the caller recreates it here and reads the gap back.
            tracing::warn!(subscription = %id, "Graph: the subscription points at another notification URL (graph.public_url changed); recreating it at this one");
            client.delete(token, graph_id).await?;
            return Err(RoundError::Graph(GraphError::NotFound(
                "moved to this deployment's notification URL".into(),
            )));
        }
        let local = now_ms();
        let date = got.date_ms.unwrap_or(local);
        let expires = got.value.expires_ms().unwrap_or(0);
        let remaining = expires.saturating_sub(date);
        let renew_below = (cfg.lifetime.as_secs_f64() * cfg.renew_at_fraction * 1000.0) as u64;
        let st = self.store.get_state(id).await?;
        let cert_changed = self.certificate_changed(entry, &st);
        let mut fields = vec![
            (field::DATE, date.to_string()),
            (field::DATE_AT, local.to_string()),
            (field::EXPIRES, expires.to_string()),
        ];
        if remaining <= renew_below || cert_changed {
            let cert = match (&entry.spec.encryption, cert_changed) {
                (Some(enc), true) => Some((
                    certificate_for_graph(&enc.certificate_file)
                        .map_err(|e| RoundError::Other(e.to_string()))?,
                    enc.certificate_id.clone(),
                )),
                _ => None,
            };
            let target = rfc3339(date + ms(cfg.lifetime));
            let renewed = client
                .renew(
                    token,
                    graph_id,
                    &target,
                    cert.as_ref()
                        .map(|((c, _), cid)| (c.as_str(), cid.as_str())),
                )
                .await?;
            let local = now_ms();
            self.counters.renewals.fetch_add(1, Relaxed);
            tracing::info!(subscription = %id, expires = %renewed.value.expiration_date_time, "Graph subscription renewed");
            fields = vec![
                (field::DATE, renewed.date_ms.unwrap_or(date).to_string()),
                (field::DATE_AT, local.to_string()),
                (
                    field::EXPIRES,
                    renewed.value.expires_ms().unwrap_or(expires).to_string(),
                ),
                (field::LAST_RENEWAL, local.to_string()),
                (field::LAST_ERROR, String::new()),
            ];
            if let Some(((_, thumb), _)) = cert {
                fields.push((field::CERT_THUMBPRINT, thumb));
            }
        }
        self.store.set_state(id, &fields).await?;
        Ok(())
    }

    /// Creates the subscription at Graph (after deleting a leftover of ours
    /// for the same resource, which would hit the one-per-chat quota).
    async fn create(
        &self,
        entry: &Entry,
        client: &GraphClient,
        token: &str,
        st: &StateFields,
    ) -> Result<(), RoundError> {
        let spec = &entry.spec;
        let id = spec.id.as_str();
        let cfg = self.cfg();
        let client_state = st
            .get(field::CLIENT_STATE)
            .cloned()
            .ok_or_else(|| RoundError::Other("no clientState".into()))?;
        let listed = client.list(token).await?;
        let ours = self.notification_url();
        for g in &listed.value {
            let same_owner = g
                .client_state
                .as_deref()
                .is_none_or(|c| c.starts_with(&format!("{id}.")));
            if g.notification_url.as_deref() == Some(ours.as_str())
                && g.resource.trim_matches('/') == spec.resource.trim_matches('/')
                && same_owner
            {
                client.delete(token, &g.id).await?;
            }
        }
        let date = listed.date_ms.unwrap_or_else(now_ms);
        let mut body = serde_json::json!({
            "changeType": spec.change_types.join(","),
            "notificationUrl": ours,
            "lifecycleNotificationUrl": self.lifecycle_url(),
            "resource": spec.resource,
            "expirationDateTime": rfc3339(date + ms(cfg.lifetime)),
            "clientState": client_state,
        });
        let mut thumb = None;
        if let Some(enc) = &spec.encryption {
            let (cert, t) = certificate_for_graph(&enc.certificate_file)
                .map_err(|e| RoundError::Other(e.to_string()))?;
            body["includeResourceData"] = true.into();
            body["encryptionCertificate"] = cert.into();
            body["encryptionCertificateId"] = enc.certificate_id.clone().into();
            thumb = Some(t);
        }
        let created: crate::client::Dated<GraphSubscription> = client.create(token, &body).await?;
        let local = now_ms();
        let gdate = created.date_ms.unwrap_or(date);
        self.counters.creations.fetch_add(1, Relaxed);
        tracing::info!(subscription = %id, graph_subscription = %created.value.id, expires = %created.value.expiration_date_time, "Graph subscription created");
        let mut fields = vec![
            (field::GRAPH_ID, created.value.id.clone()),
            (field::DATE, gdate.to_string()),
            (field::DATE_AT, local.to_string()),
            (field::CREATED, gdate.to_string()),
            (
                field::EXPIRES,
                created
                    .value
                    .expires_ms()
                    .unwrap_or(gdate + ms(cfg.lifetime))
                    .to_string(),
            ),
            (field::LAST_RENEWAL, local.to_string()),
            (field::EVENT, String::new()),
            (field::LAST_ERROR, String::new()),
        ];
        if let Some(t) = thumb {
            fields.push((field::CERT_THUMBPRINT, t));
        }
        self.store.set_state(id, &fields).await?;
        Ok(())
    }

    /// Reads what changed since the newest message seen (or since the
    /// subscription's creation) and queues it through the inbox.
    async fn resync(
        &self,
        entry: &Entry,
        client: &GraphClient,
        token: &str,
    ) -> Result<(), RoundError> {
        let spec = &entry.spec;
        let Some(resource) = resync_resource(&spec.resource) else {
            tracing::debug!(subscription = %spec.id, "Graph: this resource cannot be read back; a gap is covered only by Graph's own retries");
            return Ok(());
        };
        let st = self.store.get_state(&spec.id).await?;
        let Some(since) = num(&st, field::LAST_SEEN).or_else(|| num(&st, field::CREATED)) else {
            return Ok(());
        };
        let messages = client.messages_since(token, resource, since).await?;
        self.counters.resyncs.fetch_add(1, Relaxed);
        let at = now_ms();
        let payloads: Vec<String> = messages
            .into_iter()
            .filter_map(|m| {
                serde_json::to_string(&InboxPayload::Message {
                    sub: spec.id.clone(),
                    tenant: spec.tenant_id.clone(),
                    message: m,
                    at,
                })
                .ok()
            })
            .collect();
        self.counters
            .resynced_messages
            .fetch_add(payloads.len() as u64, Relaxed);
        tracing::info!(subscription = %spec.id, messages = payloads.len(), since = %rfc3339(since), "Graph resync read");
        self.store.inbox_push(&payloads).await?;
        self.store
            .set_state(&spec.id, &[(field::LAST_RESYNC, at.to_string())])
            .await?;
        self.processor_wake.notify_one();
        Ok(())
    }
}

/// A subscription's state as the admin API shows it (no secret).
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct StateView {
    pub graph_subscription_id: Option<String>,
    pub expires_at: Option<String>,
    pub last_renewal: Option<String>,
    pub last_notification: Option<String>,
    pub last_seen_message: Option<String>,
    pub last_resync: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// The delegated credential's failure when it needs a new sign-in
    /// (`consent_revoked`, `refresh_expired`, `refresh_invalid`); absent
    /// while it works or for app credentials.
    pub credential_status: Option<String>,
    /// A lifecycle event waiting for the lease holder.
    pub pending_event: Option<String>,
}

impl StateView {
    pub fn of(st: &StateFields) -> Self {
        let t = |f: &str| num(st, f).map(rfc3339);
        // Cleared fields are stored as "" (a set, not a delete): shown as absent.
        let text = |f: &str| st.get(f).filter(|v| !v.is_empty()).cloned();
        Self {
            graph_subscription_id: text(field::GRAPH_ID),
            expires_at: t(field::EXPIRES),
            last_renewal: t(field::LAST_RENEWAL),
            last_notification: t(field::LAST_NOTIFICATION),
            last_seen_message: t(field::LAST_SEEN),
            last_resync: t(field::LAST_RESYNC),
            last_error: text(field::LAST_ERROR),
            last_error_at: t(field::LAST_ERROR_AT),
            credential_status: text(crate::delegated::subscription_field::CREDENTIAL_STATUS),
            pending_event: text(field::EVENT),
        }
    }
}

/// Parses an RFC 3339 time (re-exported for callers of the admin API).
pub fn parse_time(s: &str) -> Option<u64> {
    parse_rfc3339_ms(s)
}
