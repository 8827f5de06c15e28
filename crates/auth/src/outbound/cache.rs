//! The process-wide token cache.
//!
//! - **One entry per [`TokenKey`]** (cloud, authority, app id, scope), whatever
//!   number of bots or tasks use it.
//! - **Single flight**: at most one token request per key is in flight; every
//!   caller that needs a token meanwhile awaits that request's outcome. The
//!   request runs in its own task, so a caller that gives up does not cancel it
//!   for the others.
//! - **Refresh ahead**: a token is replaced in the background from `refresh_at`
//!   on (5 min before expiry or at 80 % of its lifetime, whichever comes first),
//!   so callers do not wait for the endpoint while the old token still works.
//!   A failed background refresh keeps serving the still-valid token, records
//!   the failure for [`TokenCache::status`] and tries again later.
//! - **Permanent failures are not retried in a loop**: after the endpoint
//!   refused a credential (e.g. `invalid_client`), callers get that error at
//!   once for a cool-down instead of each sending a doomed request.
//! - **Rejected tokens** (a 401 from the connector) are replaced at most once per
//!   rejection: [`TokenHandle::refresh_rejected`] only refreshes when the
//!   rejected token is still the current one, so 100 concurrent 401s cost one
//!   token request.
//! - **Optional shared tier** ([`SharedTokenTier`]): replicas read each other's
//!   tokens; one replica refreshes under a lock while the others wait for its
//!   result or keep using the still-valid token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::{Mutex, RwLock};
use serde::{Serialize, Serializer};

use super::{SharedToken, SharedTokenTier, TokenError, TokenKey, TokenProvider};
use crate::Secret;

/// When tokens are refreshed and how hard failures are retried.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenCacheConfig {
    /// Refresh at the latest this long before expiry (MSAL's default offset is 5 min).
    pub refresh_before_expiry: Duration,
    /// ... or once this fraction of the lifetime has passed, if that is earlier.
    pub refresh_at_fraction: f64,
    /// A token closer than this to expiry is not handed out (it could expire
    /// on the way to the connector); capped at a quarter of the token's lifetime.
    pub min_remaining: Duration,
    /// How long a permanent endpoint refusal is answered from memory.
    pub permanent_error_cooldown: Duration,
    /// Wait this long after a failed background refresh before the next one.
    pub refresh_retry_interval: Duration,
    /// Longest time one replica may hold the shared refresh lock.
    pub shared_lock_ttl: Duration,
    /// How long a replica without a usable token waits for another replica's
    /// refresh before asking the endpoint itself.
    pub shared_wait: Duration,
    /// How often a waiting replica looks for the refreshed token.
    pub shared_poll: Duration,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        Self {
            refresh_before_expiry: Duration::from_secs(300),
            refresh_at_fraction: 0.8,
            min_remaining: Duration::from_secs(60),
            permanent_error_cooldown: Duration::from_secs(60),
            refresh_retry_interval: Duration::from_secs(15),
            shared_lock_ttl: Duration::from_secs(30),
            shared_wait: Duration::from_secs(10),
            shared_poll: Duration::from_millis(100),
        }
    }
}

impl TokenCacheConfig {
    /// When a token obtained at `obtained_at` should be replaced: the earlier of
    /// `refresh_before_expiry` before expiry and `refresh_at_fraction` of the
    /// lifetime, but not before half of it (short-lived tokens would otherwise
    /// be refreshed on every use).
    pub fn refresh_at(&self, obtained_at: SystemTime, expires_at: SystemTime) -> SystemTime {
        let lifetime = expires_at
            .duration_since(obtained_at)
            .unwrap_or(Duration::ZERO);
        let by_offset = expires_at
            .checked_sub(self.refresh_before_expiry)
            .unwrap_or(obtained_at);
        let by_fraction = obtained_at + lifetime.mul_f64(self.refresh_at_fraction.clamp(0.0, 1.0));
        by_offset.min(by_fraction).max(obtained_at + lifetime / 2)
    }

    fn min_remaining_for(&self, lifetime: Duration) -> Duration {
        self.min_remaining.min(lifetime / 4)
    }
}

/// Where the current token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenOrigin {
    /// This replica asked the token endpoint.
    Endpoint,
    /// Another replica's token, read from the shared tier.
    SharedTier,
}

/// One key's state for the admin API. Holds no token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenStatus {
    pub key: TokenKey,
    /// Credential kind of the registered provider.
    pub credential: &'static str,
    /// A token is cached and usable now.
    pub valid: bool,
    #[serde(serialize_with = "unix_secs")]
    pub expires_at: Option<SystemTime>,
    #[serde(serialize_with = "unix_secs")]
    pub refresh_at: Option<SystemTime>,
    /// Last time a token was obtained (from the endpoint or the shared tier).
    #[serde(serialize_with = "unix_secs")]
    pub last_refresh: Option<SystemTime>,
    pub origin: Option<TokenOrigin>,
    /// Last failure, kept after later successes so an operator sees flapping.
    pub last_error: Option<String>,
    #[serde(serialize_with = "unix_secs")]
    pub last_error_at: Option<SystemTime>,
    /// Token requests this replica sent to the endpoint for this key (each may
    /// include retries within the provider's budget).
    pub endpoint_requests: u64,
}

fn unix_secs<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
        Some(d) => s.serialize_some(&d.as_secs()),
        None => s.serialize_none(),
    }
}

#[derive(Clone)]
struct Cached {
    token: Secret,
    expires_at: SystemTime,
    refresh_at: SystemTime,
    /// Below this remaining lifetime the token is no longer handed out.
    min_remaining: Duration,
    origin: TokenOrigin,
}

impl Cached {
    fn usable(&self, now: SystemTime) -> bool {
        self.expires_at
            .duration_since(now)
            .is_ok_and(|left| left > self.min_remaining)
    }

    fn fresh(&self, now: SystemTime) -> bool {
        now < self.refresh_at && self.usable(now)
    }
}

type Flight = Shared<BoxFuture<'static, Result<Cached, TokenError>>>;

#[derive(Default)]
struct EntryState {
    current: Option<Cached>,
    /// The request in flight and its generation (so a finished flight never
    /// clears a newer one).
    flight: Option<(u64, Flight)>,
    last_refresh: Option<SystemTime>,
    last_error: Option<(SystemTime, TokenError)>,
    /// A permanent refusal and until when it is answered from memory.
    refused: Option<(Instant, TokenError)>,
    /// No background refresh before this instant (after a failure).
    next_background: Option<Instant>,
    endpoint_requests: u64,
}

struct Entry {
    key: TokenKey,
    provider: RwLock<Arc<dyn TokenProvider>>,
    state: Mutex<EntryState>,
}

struct Inner {
    config: TokenCacheConfig,
    shared: Option<Arc<dyn SharedTokenTier>>,
    entries: RwLock<HashMap<TokenKey, Arc<Entry>>>,
    generation: AtomicU64,
}

/// The process-wide token cache; cheap to clone (all clones share one cache).
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("keys", &self.inner.entries.read().len())
            .field("shared_tier", &self.inner.shared.is_some())
            .finish()
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(TokenCacheConfig::default())
    }
}

impl TokenCache {
    /// A cache for this process only.
    pub fn new(config: TokenCacheConfig) -> Self {
        Self::build(config, None)
    }

    /// A cache that shares tokens with other replicas through `tier`.
    pub fn with_shared_tier(config: TokenCacheConfig, tier: Arc<dyn SharedTokenTier>) -> Self {
        Self::build(config, Some(tier))
    }

    fn build(config: TokenCacheConfig, shared: Option<Arc<dyn SharedTokenTier>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                shared,
                entries: RwLock::new(HashMap::new()),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// Registers the provider for its key and returns the handle callers use.
    /// Registering a key again replaces the provider (a rotated credential)
    /// and forgets a remembered refusal, but keeps a still-valid token.
    pub fn register(&self, provider: Arc<dyn TokenProvider>) -> TokenHandle {
        let key = provider.key().clone();
        // Its failure series exist (at 0) from now on, for alert rules.
        botfleet_telemetry::metrics::bot_known(&key.app_id);
        let mut entries = self.inner.entries.write();
        let entry = match entries.get(&key) {
            Some(entry) => {
                *entry.provider.write() = provider;
                entry.state.lock().refused = None;
                entry.clone()
            }
            None => {
                let entry = Arc::new(Entry {
                    key: key.clone(),
                    provider: RwLock::new(provider),
                    state: Mutex::new(EntryState::default()),
                });
                entries.insert(key, entry.clone());
                entry
            }
        };
        TokenHandle {
            inner: self.inner.clone(),
            entry,
        }
    }

    /// The handle of a registered key.
    pub fn handle(&self, key: &TokenKey) -> Option<TokenHandle> {
        self.inner.entries.read().get(key).map(|entry| TokenHandle {
            inner: self.inner.clone(),
            entry: entry.clone(),
        })
    }

    /// Forgets a key (a bot was removed). Existing handles keep working on their own.
    pub fn unregister(&self, key: &TokenKey) -> bool {
        self.inner.entries.write().remove(key).is_some()
    }

    /// A usable token for a registered key.
    pub async fn token(&self, key: &TokenKey) -> Result<Secret, TokenError> {
        match self.handle(key) {
            Some(h) => h.token().await,
            None => Err(TokenError::NotRegistered(key.to_string())),
        }
    }

    /// Drops the cached token of `key`; the next caller fetches a new one.
    pub fn invalidate(&self, key: &TokenKey) {
        if let Some(h) = self.handle(key) {
            h.invalidate();
        }
    }

    /// Every key's state, sorted by key, for the admin API. Never contains a token.
    pub fn status(&self) -> Vec<TokenStatus> {
        let entries: Vec<Arc<Entry>> = self.inner.entries.read().values().cloned().collect();
        let mut out: Vec<TokenStatus> = entries.iter().map(|e| status_of(e)).collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Starts a task that refreshes due tokens every `every` even when nobody
    /// asks for them, so the first send after a quiet hour does not wait for
    /// the endpoint. The task ends when the cache is dropped.
    pub fn spawn_refresher(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let entries: Vec<Arc<Entry>> = inner.entries.read().values().cloned().collect();
                for entry in entries {
                    let mut st = entry.state.lock();
                    let now = SystemTime::now();
                    let due = st
                        .current
                        .as_ref()
                        .is_some_and(|c| c.usable(now) && now >= c.refresh_at);
                    if due && background_allowed(&st) {
                        let _background = start_flight(&inner, &entry, &mut st, None);
                    }
                }
            }
        })
    }
}

/// One key's tokens. Cheap to clone; what the connector holds per bot.
#[derive(Clone)]
pub struct TokenHandle {
    inner: Arc<Inner>,
    entry: Arc<Entry>,
}

impl std::fmt::Debug for TokenHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenHandle")
            .field("key", &self.entry.key)
            .finish()
    }
}

impl TokenHandle {
    pub fn key(&self) -> &TokenKey {
        &self.entry.key
    }

    /// A usable token: from memory when there is one, otherwise from the one
    /// request in flight for this key.
    pub async fn token(&self) -> Result<Secret, TokenError> {
        use tracing::Instrument;
        get(&self.inner, &self.entry, None)
            .instrument(token_span(&self.entry.key, "use"))
            .await
    }

    /// A token other than `rejected` (which the connector answered with 401).
    /// Only the first caller reporting a given token triggers a request; the
    /// others get the replacement.
    pub async fn refresh_rejected(&self, rejected: &Secret) -> Result<Secret, TokenError> {
        use tracing::Instrument;
        get(&self.inner, &self.entry, Some(rejected))
            .instrument(token_span(&self.entry.key, "rejected"))
            .await
    }

    /// Drops the cached token; the next caller fetches a new one.
    pub fn invalidate(&self) {
        self.entry.state.lock().current = None;
    }

    pub fn status(&self) -> TokenStatus {
        status_of(&self.entry)
    }
}

fn status_of(entry: &Entry) -> TokenStatus {
    let credential = entry.provider.read().kind();
    let st = entry.state.lock();
    let now = SystemTime::now();
    TokenStatus {
        key: entry.key.clone(),
        credential,
        valid: st.current.as_ref().is_some_and(|c| c.usable(now)),
        expires_at: st.current.as_ref().map(|c| c.expires_at),
        refresh_at: st.current.as_ref().map(|c| c.refresh_at),
        last_refresh: st.last_refresh,
        origin: st.current.as_ref().map(|c| c.origin),
        last_error: st.last_error.as_ref().map(|(_, e)| e.to_string()),
        last_error_at: st.last_error.as_ref().map(|(t, _)| *t),
        endpoint_requests: st.endpoint_requests,
    }
}

fn background_allowed(st: &EntryState) -> bool {
    st.flight.is_none() && st.next_background.is_none_or(|t| Instant::now() >= t)
}

/// The span of one token acquisition: the app id and whether the cache
/// answered (`hit`) or a request to the token endpoint (or the shared tier)
/// was waited for (`miss`); never the token.
fn token_span(key: &TokenKey, reason: &'static str) -> tracing::Span {
    tracing::info_span!(
        "token",
        botfleet.app_id = %key.app_id,
        botfleet.token.reason = reason,
        botfleet.token.cache = tracing::field::Empty,
    )
}

async fn get(
    inner: &Arc<Inner>,
    entry: &Arc<Entry>,
    rejected: Option<&Secret>,
) -> Result<Secret, TokenError> {
    let mut first_round = true;
    loop {
        let flight = {
            let mut st = entry.state.lock();
            let now = SystemTime::now();
            if let Some(rejected) = rejected {
                if st.current.as_ref().is_some_and(|c| c.token == *rejected) {
                    st.current = None;
                }
            }
            if let Some(cur) = st.current.as_ref().filter(|c| c.usable(now)) {
                let token = cur.token.clone();
                if first_round {
                    botfleet_telemetry::metrics::token_lookup(&entry.key.app_id, true);
                }
                if now >= cur.refresh_at && background_allowed(&st) {
                    // Refresh ahead: nobody waits for this flight.
                    let _background = start_flight(inner, entry, &mut st, None);
                }
                tracing::Span::current().record("botfleet.token.cache", "hit");
                return Ok(token);
            }
            if let Some((until, err)) = &st.refused {
                if Instant::now() < *until {
                    return Err(err.clone());
                }
            }
            if first_round {
                botfleet_telemetry::metrics::token_lookup(&entry.key.app_id, false);
            }
            match &st.flight {
                Some((_, f)) => f.clone(),
                None => start_flight(inner, entry, &mut st, rejected.cloned()),
            }
        };
        tracing::Span::current().record("botfleet.token.cache", "miss");
        let got = flight.await?;
        // A flight that started before the rejection may bring the rejected
        // token back (e.g. from the shared tier); ask once more in that case.
        match rejected {
            Some(r) if got.token == *r && first_round => first_round = false,
            _ => return Ok(got.token),
        }
    }
}

/// Clears the flight slot when the fetch task ends, including by panic.
struct FlightGuard {
    entry: Arc<Entry>,
    generation: u64,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut st = self.entry.state.lock();
        if st
            .flight
            .as_ref()
            .is_some_and(|(g, _)| *g == self.generation)
        {
            st.flight = None;
        }
    }
}

/// Starts the one request for `entry`; called with its state locked.
fn start_flight(
    inner: &Arc<Inner>,
    entry: &Arc<Entry>,
    st: &mut EntryState,
    rejected: Option<Secret>,
) -> Flight {
    let generation = inner.generation.fetch_add(1, Ordering::Relaxed);
    let (task_inner, task_entry) = (inner.clone(), entry.clone());
    // Inside the span of the lookup that started it (the first waiter's token
    // span), so the fetch's lines (`token refresh failed`, retries) carry that
    // turn's trace and span ids and are events of its trace.
    let task = tokio::spawn(tracing::Instrument::instrument(
        async move {
            let _guard = FlightGuard {
                entry: task_entry.clone(),
                generation,
            };
            fetch_and_store(&task_inner, &task_entry, rejected).await
        },
        tracing::Span::current(),
    ));
    let flight: Flight = async move {
        task.await
            .unwrap_or_else(|e| Err(TokenError::Internal(e.to_string())))
    }
    .boxed()
    .shared();
    st.flight = Some((generation, flight.clone()));
    flight
}

async fn fetch_and_store(
    inner: &Inner,
    entry: &Entry,
    rejected: Option<Secret>,
) -> Result<Cached, TokenError> {
    let provider = entry.provider.read().clone();
    let outcome = match &inner.shared {
        Some(tier) => via_shared(inner, entry, tier.as_ref(), provider, rejected.as_ref()).await,
        None => from_endpoint(inner, entry, provider)
            .await
            .map(|c| (c, false)),
    };
    let mut st = entry.state.lock();
    let now = SystemTime::now();
    match &outcome {
        Ok((cached, stale)) => {
            botfleet_telemetry::metrics::token_refreshed(
                &entry.key.app_id,
                match cached.origin {
                    TokenOrigin::Endpoint => "endpoint",
                    TokenOrigin::SharedTier => "shared_tier",
                },
            );
            st.current = Some(cached.clone());
            st.last_refresh = Some(now);
            st.refused = None;
            // A still-valid shared token another replica is replacing: look
            // again shortly instead of on every use.
            st.next_background = stale.then(|| Instant::now() + Duration::from_secs(1));
        }
        Err(e) => {
            let keeps_serving = st.current.as_ref().is_some_and(|c| c.usable(now));
            botfleet_telemetry::metrics::token_refresh_failed(
                &entry.key.app_id,
                &entry.key,
                e,
                e.is_permanent(),
                keeps_serving,
            );
            st.last_error = Some((now, e.clone()));
            st.next_background = Some(Instant::now() + inner.config.refresh_retry_interval);
            if e.is_permanent() {
                st.refused = Some((
                    Instant::now() + inner.config.permanent_error_cooldown,
                    e.clone(),
                ));
            }
        }
    }
    outcome.map(|(c, _)| c)
}

async fn from_endpoint(
    inner: &Inner,
    entry: &Entry,
    provider: Arc<dyn TokenProvider>,
) -> Result<Cached, TokenError> {
    entry.state.lock().endpoint_requests += 1;
    let t = provider.fetch().await?;
    let lifetime = t
        .expires_at
        .duration_since(t.obtained_at)
        .unwrap_or(Duration::ZERO);
    tracing::debug!(key = %entry.key, lifetime_s = lifetime.as_secs(), "token obtained from the endpoint");
    Ok(Cached {
        refresh_at: inner.config.refresh_at(t.obtained_at, t.expires_at),
        min_remaining: inner.config.min_remaining_for(lifetime),
        expires_at: t.expires_at,
        token: t.token,
        origin: TokenOrigin::Endpoint,
    })
}

fn from_shared(inner: &Inner, t: SharedToken, now: SystemTime) -> Cached {
    let left = t.expires_at.duration_since(now).unwrap_or(Duration::ZERO);
    Cached {
        token: t.token,
        expires_at: t.expires_at,
        refresh_at: t.refresh_at,
        min_remaining: inner.config.min_remaining_for(left),
        origin: TokenOrigin::SharedTier,
    }
}

/// Shared-tier read, else refresh under the tier's lock, else wait for the
/// replica holding it. Returns the token and whether it is stale (usable but
/// due for replacement by another replica). Any tier failure falls back to the
/// endpoint: the tier saves requests, it never blocks a token.
async fn via_shared(
    inner: &Inner,
    entry: &Entry,
    tier: &dyn SharedTokenTier,
    provider: Arc<dyn TokenProvider>,
    rejected: Option<&Secret>,
) -> Result<(Cached, bool), TokenError> {
    let key = entry.key.as_string();
    let cfg = &inner.config;
    let read = |t: Option<SharedToken>| {
        let now = SystemTime::now();
        t.filter(|t| rejected.is_none_or(|r| t.token != *r))
            .map(|t| from_shared(inner, t, now))
            .filter(|c| c.usable(now))
    };
    let tier_failed = |e: super::SharedTierError| {
        tracing::warn!(key = %entry.key, error = %e, "shared token tier failed; asking the token endpoint directly");
    };
    match tier.get(&key).await {
        Ok(t) => {
            if let Some(c) = read(t).filter(|c| c.fresh(SystemTime::now())) {
                return Ok((c, false));
            }
        }
        Err(e) => {
            tier_failed(e);
            return from_endpoint(inner, entry, provider)
                .await
                .map(|c| (c, false));
        }
    }
    let deadline = Instant::now() + cfg.shared_wait;
    loop {
        match tier.try_lock(&key, cfg.shared_lock_ttl).await {
            Ok(Some(lock_id)) => {
                // Another replica may have stored a token between our read and our lock.
                let stored = tier.get(&key).await.ok().flatten();
                let result = match read(stored).filter(|c| c.fresh(SystemTime::now())) {
                    Some(c) => Ok((c, false)),
                    None => {
                        let r = from_endpoint(inner, entry, provider).await;
                        if let Ok(c) = &r {
                            let put = SharedToken {
                                token: c.token.clone(),
                                expires_at: c.expires_at,
                                refresh_at: c.refresh_at,
                            };
                            if let Err(e) = tier.put(&key, &put).await {
                                tracing::warn!(key = %entry.key, error = %e, "could not store the token in the shared tier");
                            }
                        }
                        r.map(|c| (c, false))
                    }
                };
                if let Err(e) = tier.unlock(&key, &lock_id).await {
                    // The lock expires on its own after `shared_lock_ttl`.
                    tracing::debug!(key = %entry.key, error = %e, "could not release the shared token lock");
                }
                return result;
            }
            Ok(None) => {
                // Another replica is refreshing. A still-valid token serves
                // meanwhile; without one, wait for the other replica's result.
                match tier.get(&key).await {
                    Ok(t) => {
                        if let Some(c) = read(t) {
                            let stale = !c.fresh(SystemTime::now());
                            return Ok((c, stale));
                        }
                    }
                    Err(e) => {
                        tier_failed(e);
                        return from_endpoint(inner, entry, provider)
                            .await
                            .map(|c| (c, false));
                    }
                }
                if Instant::now() >= deadline {
                    tracing::warn!(key = %entry.key, "no token from the replica holding the refresh lock; asking the token endpoint directly");
                    return from_endpoint(inner, entry, provider)
                        .await
                        .map(|c| (c, false));
                }
                tokio::time::sleep(cfg.shared_poll).await;
            }
            Err(e) => {
                tier_failed(e);
                return from_endpoint(inner, entry, provider)
                    .await
                    .map(|c| (c, false));
            }
        }
    }
}
