//! The Microsoft Graph side of the sim: change notification subscriptions for
//! Teams chat and channel messages, their delivery (plain and encrypted, with
//! the validation handshake and `validationTokens`), lifecycle events, the
//! resync reads, delegated sign-in with rotating refresh tokens, and
//! `installedApps`, all on a sim clock tests can speed up.
//!
//! Graph is served at `{sim}/graph/v1.0/...`; test controls live under
//! `/_sim/graph/...`. The shapes follow Microsoft Graph v1.0
//! (<https://learn.microsoft.com/graph/api/resources/subscription>,
//! <https://learn.microsoft.com/graph/change-notifications-delivery-webhooks>,
//! <https://learn.microsoft.com/graph/change-notifications-lifecycle-events>,
//! <https://learn.microsoft.com/graph/teams-changenotifications-chatmessage>);
//! docs/simulator.md lists every route.

pub mod apps;
pub mod clock;
pub mod crypto;
pub mod delegated;
pub mod deliver;
pub mod messages;
pub mod routes;
pub mod subscriptions;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use clock::SimClock;
pub use routes::configure;

use crate::records::Ring;

/// `aud` of Graph access tokens (the token endpoint's scope `https://graph.microsoft.com/.default`).
pub const GRAPH_AUDIENCE: &str = "https://graph.microsoft.com";
/// Graph's application id, the other `aud` form Entra issues for Graph.
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
/// `appid` of the Graph change notification publisher, the claim `validationTokens` carry
/// (<https://learn.microsoft.com/graph/change-notifications-with-resource-data#validation-tokens-in-the-change-notification>).
pub const CHANGE_NOTIFICATION_PUBLISHER: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";
/// Application permissions put into the `roles` of Graph app tokens.
pub const APP_ROLES: &[&str] = &[
    "Chat.Read.All",
    "ChatMessage.Read.All",
    "ChannelMessage.Read.All",
    "Chat.Read.WhereInstalled",
    "TeamsAppInstallation.ReadWriteForUser.All",
];
/// Graph keeps retrying a failed notification for up to 4 hours, then drops it.
pub const RETRY_WINDOW_MS: u64 = 4 * 3600 * 1000;
/// An answer slower than this is a failed delivery (Graph wants 2xx within 3 s).
pub const ACK_DEADLINE: Duration = Duration::from_secs(3);
/// How long the sim waits for any notification answer (to measure slow endpoints).
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// The validation handshake must be answered within 10 s.
pub const VALIDATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Tunables of the Graph side (`POST /_sim/graph/config`, all optional).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GraphSettings {
    /// Live subscriptions per app per chat or channel resource (Graph: 1).
    pub per_resource_quota: usize,
    /// Live `/users/{id}/chats/getAllMessages` subscriptions per user (Graph: 10).
    pub per_user_quota: usize,
    /// Live subscriptions per tenant (Graph: 10,000).
    pub per_tenant_quota: usize,
    /// Subscription writes (create, update, delete, reauthorize) per app per
    /// tenant per 20 s before 429 (Graph: 1,000).
    pub writes_per_20s: usize,
    /// installedApps POSTs per app per tenant per second (Graph: 30).
    pub installs_per_sec: usize,
    /// installedApps POSTs per app across tenants per second (Graph: 300).
    pub installs_per_sec_all_tenants: usize,
    /// Notifications due within this window (real ms) go out in one POST per URL.
    pub batch_window_ms: u64,
    /// Largest number of items in one notification POST.
    pub max_batch: usize,
    /// Real-time waits before each retry of a failed delivery; the number of
    /// entries is the number of retries (all within the 4 h sim-time window).
    pub retry_delays_ms: Vec<u64>,
    /// Page size of `GET /subscriptions`.
    pub subscriptions_page_size: usize,
}

impl Default for GraphSettings {
    fn default() -> Self {
        Self {
            per_resource_quota: 1,
            per_user_quota: 10,
            per_tenant_quota: 10_000,
            writes_per_20s: 1000,
            installs_per_sec: 30,
            installs_per_sec_all_tenants: 300,
            batch_window_ms: 50,
            max_batch: 100,
            retry_delays_ms: vec![1000, 2000, 4000, 8000],
            subscriptions_page_size: 100,
        }
    }
}

impl GraphSettings {
    fn validate(&self) -> Result<(), String> {
        if self.max_batch == 0 || self.subscriptions_page_size == 0 {
            return Err("maxBatch and subscriptionsPageSize must be at least 1".into());
        }
        if self.retry_delays_ms.len() > 20 || self.retry_delays_ms.iter().any(|d| *d > 600_000) {
            return Err("retryDelaysMs: at most 20 entries of at most 600000 ms".into());
        }
        if self.batch_window_ms > 60_000 {
            return Err("batchWindowMs must be at most 60000".into());
        }
        Ok(())
    }
}

/// What the `validationTokens` of rich notifications look like (fault injection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ValidationTokenFault {
    /// Correct tokens.
    #[default]
    Valid,
    /// `exp` an hour in the past.
    Expired,
    /// `aud` another application.
    WrongAudience,
    /// `appid` not the Graph publisher.
    WrongAppId,
    /// `iss` another tenant.
    WrongIssuer,
    /// Signed with a key the OpenID configuration does not publish.
    ForeignKey,
}

/// Faults of the Graph API and its deliveries (`POST /_sim/graph/faults`, replaces all).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GraphFaults {
    /// The next N subscription writes answer 429 with `Retry-After`.
    pub throttle_next_writes: u32,
    /// `Retry-After` seconds of injected 429s (default 2).
    pub retry_after_secs: Option<u64>,
    /// The next N Graph API requests (any) answer `errorStatus`.
    pub error_next: u32,
    /// Status of injected errors (default 503).
    pub error_status: Option<u16>,
    /// Every Graph API request waits this long before answering.
    pub latency_ms: u64,
    /// `validationTokens` of rich notifications.
    pub validation_tokens: ValidationTokenFault,
    /// Flip a ciphertext byte after signing each `encryptedContent`.
    pub tamper_encrypted_content: bool,
}

impl GraphFaults {
    fn validate(&self) -> Result<(), String> {
        if let Some(s) = self.error_status {
            if !(400..=599).contains(&s) {
                return Err(format!("errorStatus must be 400..=599, got {s}"));
            }
        }
        if self.latency_ms > 120_000 {
            return Err("latencyMs must be at most 120000".into());
        }
        Ok(())
    }
}

/// Which messages a subscription's resource watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    /// `/chats/{id}/messages`
    Chat(String),
    /// `/teams/{id}/channels/{id}/messages`
    Channel { team: String, channel: String },
    /// `/chats/getAllMessages` (every chat of the tenant)
    AllChats,
    /// `/teams/getAllMessages` (every channel of the tenant)
    AllChannels,
    /// `/users/{id}/chats/getAllMessages` (chats the user is a member of)
    UserChats(String),
    /// `/appCatalogs/teamsApps/{id}/installedToChats/getAllMessages` (chats the app is installed in)
    AppChats(String),
}

/// A subscription as the sim keeps it.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: String,
    pub app_id: String,
    pub tenant_id: String,
    /// Object id of the creator: the signed-in user (delegated) or the app's service principal.
    pub creator_id: String,
    pub resource: String,
    pub watched: Watched,
    pub change_type: String,
    pub notification_url: String,
    pub lifecycle_url: Option<String>,
    pub expiration_ms: u64,
    pub client_state: Option<String>,
    pub include_resource_data: bool,
    pub encryption_certificate: Option<String>,
    pub certificate: Option<crypto::EncryptionCertificate>,
    pub created_ms: u64,
    /// A `reauthorizationRequired` was sent and no reauthorize/renewal followed yet.
    pub reauthorization_required: bool,
    /// Sim time the subscription disappears: its expiry, or earlier when a
    /// test expires it early (`POST /_sim/graph/subscriptions/{id}/expire`).
    pub ends_ms: u64,
}

impl Subscription {
    /// The Graph `subscription` resource.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.app_id,
            "changeType": self.change_type,
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": null,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": crate::time::rfc3339(self.expiration_ms),
            "creatorId": self.creator_id,
            "includeResourceData": self.include_resource_data,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": self.encryption_certificate,
            "encryptionCertificateId": self.certificate.as_ref().map(|c| c.id.clone()),
            "notificationUrlAppId": null,
        })
    }

    pub fn watches_created(&self) -> bool {
        self.change_type
            .split(',')
            .any(|c| c.trim().eq_ignore_ascii_case("created"))
    }
}

/// One chat as the Graph side knows it.
#[derive(Debug, Clone, Default)]
pub struct Chat {
    pub tenant_id: String,
    pub members: std::collections::BTreeSet<String>,
    /// Teams apps installed in the chat.
    pub apps: std::collections::BTreeSet<String>,
    pub messages: Vec<Value>,
}

/// One HTTP POST the sim made (or dropped) toward a subscriber.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    pub seq: u64,
    /// `validation`, `notification` or `lifecycle`.
    pub kind: &'static str,
    pub url: String,
    pub items: usize,
    pub subscription_ids: Vec<String>,
    /// 1 for the first try.
    pub attempt: u32,
    /// HTTP status, absent when no answer came.
    pub status: Option<u16>,
    pub latency_ms: Option<u64>,
    /// `delivered`, `late` (2xx after 3 s: retried), `failed` (retried),
    /// `rejected` (4xx: not retried), `dropped` (paused, or retries used up),
    /// `ok`/`invalid` for validation handshakes.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Sim time.
    pub at: String,
    pub real_at: String,
}

#[derive(Debug)]
pub(crate) struct GraphInner {
    pub settings: GraphSettings,
    pub faults: GraphFaults,
    pub paused: bool,
    pub subscriptions: BTreeMap<String, Subscription>,
    pub chats: HashMap<String, Chat>,
    /// (team, channel) -> tenant and messages.
    pub channels: HashMap<(String, String), Chat>,
    /// Subscription writes per (app, tenant), real instants.
    pub write_windows: HashMap<(String, String), VecDeque<Instant>>,
    pub install_windows: HashMap<(String, String), VecDeque<Instant>>,
    pub install_windows_app: HashMap<String, VecDeque<Instant>>,
    /// (tenant, user, app) -> installation.
    pub installations: HashMap<(String, String, String), apps::Installation>,
    pub deliveries: Ring<DeliveryRecord>,
    /// URL -> items waiting for the batch window.
    pub pending: HashMap<String, Vec<deliver::Pending>>,
    pub delegated: delegated::DelegatedState,
    pub seq: u64,
    pub dropped_while_paused: u64,
}

impl GraphInner {
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Removes subscriptions whose time is up (expired ones just disappear:
    /// Graph sends no lifecycle event for an expiry).
    pub fn purge_expired(&mut self, now_ms: u64) {
        self.subscriptions.retain(|_, s| s.ends_ms > now_ms);
    }
}

/// The Graph side's state, one per sim.
#[derive(Debug)]
pub struct GraphState {
    pub clock: SimClock,
    pub(crate) inner: Mutex<GraphInner>,
    pub(crate) client: reqwest::Client,
}

impl GraphState {
    pub fn new(max_records: usize) -> Self {
        let client = reqwest::Client::builder()
            // Subscribers are usually on loopback; a proxy from the environment must not intercept.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            clock: SimClock::default(),
            inner: Mutex::new(GraphInner {
                settings: GraphSettings::default(),
                faults: GraphFaults::default(),
                paused: false,
                subscriptions: BTreeMap::new(),
                chats: HashMap::new(),
                channels: HashMap::new(),
                write_windows: HashMap::new(),
                install_windows: HashMap::new(),
                install_windows_app: HashMap::new(),
                installations: HashMap::new(),
                deliveries: Ring::new(max_records),
                pending: HashMap::new(),
                delegated: delegated::DelegatedState::default(),
                seq: 0,
                dropped_while_paused: 0,
            }),
            client,
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Records a delivery (assigns `seq` and timestamps).
    pub(crate) fn record(&self, mut rec: DeliveryRecord) {
        let now = self.now_ms();
        let mut inner = self.inner.lock();
        rec.seq = inner.next_seq();
        rec.at = crate::time::rfc3339(now);
        rec.real_at = crate::time::rfc3339(crate::time::now_ms());
        inner.deliveries.push(rec);
    }

    pub fn settings(&self) -> GraphSettings {
        self.inner.lock().settings.clone()
    }

    pub fn set_settings(&self, settings: GraphSettings) -> Result<(), String> {
        settings.validate()?;
        self.inner.lock().settings = settings;
        Ok(())
    }

    pub fn set_faults(&self, faults: GraphFaults) -> Result<(), String> {
        faults.validate()?;
        self.inner.lock().faults = faults;
        Ok(())
    }

    pub fn faults(&self) -> GraphFaults {
        self.inner.lock().faults.clone()
    }

    /// Clears delivery records, faults, the pause and throttling windows
    /// (`POST /_sim/reset`); subscriptions, chats, installations and the clock stay.
    pub fn reset(&self) {
        let mut inner = self.inner.lock();
        inner.deliveries.clear();
        inner.faults = GraphFaults::default();
        inner.paused = false;
        inner.dropped_while_paused = 0;
        inner.write_windows.clear();
        inner.install_windows.clear();
        inner.install_windows_app.clear();
    }

    /// Every delivery record, oldest first.
    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.inner.lock().deliveries.iter().cloned().collect()
    }
}

/// Sliding window admission: true if one more event fits `max` per `window`.
pub(crate) fn admit(
    window: &mut VecDeque<Instant>,
    max: usize,
    per: Duration,
    now: Instant,
) -> Result<(), Duration> {
    while window
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= per)
    {
        window.pop_front();
    }
    if window.len() >= max {
        let oldest = window.front().copied().unwrap_or(now);
        return Err(per.saturating_sub(now.saturating_duration_since(oldest)));
    }
    window.push_back(now);
    Ok(())
}
