//! The inbound validator: every check of the inbound flow, in order.
//!
//! The token alone first (bearer -> RS256 JWT -> key by `kid` -> signature ->
//! `iss` -> `exp`/`nbf` -> `aud`), then the token against the activity
//! (endorsements, `serviceurl`) and the bot's policy (serviceUrl host, tenant).
//! Lifetime comes before audience, as in botbuilder-js (its `jsonwebtoken.verify`
//! enforces `exp` before the app id is compared), and so that an expired token
//! answers `expired` on every path, whichever bot the path names.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use botfleet_protocol::Activity;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use moka::sync::Cache;
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use super::error::{shown, InboundError};
use super::keys::{KeyStore, KeyStoreStatus, RefreshOutcome, SigningKey};
use crate::cloud::Cloud;
use crate::policy::{ServiceUrlAllowlist, TenantPolicy};

/// Tokens longer than this are refused before any parsing (Bot Framework tokens
/// are about 1.5 KiB); keeps hostile headers from costing decode work.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Tunables of inbound validation. `Default` gives production values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundConfig {
    /// Scheduled key refresh. Bot Framework requires at least daily.
    pub refresh_interval: Duration,
    /// Least time between two refreshes caused by an unknown `kid`.
    pub unknown_kid_min_interval: Duration,
    /// Retry delay of the scheduler after a failed refresh (or before the
    /// first success).
    pub retry_interval: Duration,
    /// Allowed clock skew on `exp` and `nbf` (Bot Framework: 5 minutes).
    pub clock_skew: Duration,
    /// Verified tokens kept to skip RSA on reuse; 0 disables the cache.
    pub cache_capacity: u64,
    /// Timeout of one metadata or JWKS request.
    pub fetch_timeout: Duration,
    /// Names of the clouds whose keys without an endorsements list (or with an
    /// empty one) are accepted for any channel, as Microsoft's SDKs accept them.
    /// Empty by default: such a key endorses nothing (403 `endorsement`). The
    /// risk of naming a cloud: a key the cloud meant for another channel (Web
    /// Chat, Direct Line) but published without its list could then sign Teams
    /// activities for your bots.
    pub accept_keys_without_endorsements: Vec<String>,
}

impl Default for InboundConfig {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(6 * 3600),
            unknown_kid_min_interval: Duration::from_secs(5 * 60),
            retry_interval: Duration::from_secs(30),
            clock_skew: Duration::from_secs(5 * 60),
            cache_capacity: 10_000,
            fetch_timeout: Duration::from_secs(10),
            accept_keys_without_endorsements: Vec::new(),
        }
    }
}

/// What the validator needs to know about one bot.
#[derive(Debug, Clone)]
pub struct BotTrust {
    /// botfleet's name of the bot (route segment, store key).
    pub bot_id: String,
    /// Microsoft App ID: the `aud` of its tokens.
    pub app_id: String,
    pub cloud: Arc<Cloud>,
    pub service_urls: ServiceUrlAllowlist,
    pub tenants: TenantPolicy,
}

/// Finds a registered bot by app id (the server's bot registry).
pub trait BotResolver: Send + Sync {
    fn by_app_id(&self, app_id: &str) -> Option<Arc<BotTrust>>;
}

/// Which bot the request path names, for [`InboundValidator::check_token`].
#[derive(Debug, Clone, Copy)]
pub enum TokenRoute<'a> {
    /// `/api/messages`: the token's `aud` selects the bot.
    Any,
    /// `/api/messages/{bot}` for a registered bot: the token must be for it.
    Bot(&'a Arc<BotTrust>),
    /// `/api/messages/{bot}` naming no registered bot. The token is checked as far
    /// as it can be (signature against every cloud's keys, issuer, lifetime) and
    /// then fails `audience` with the same words a registered bot's path uses, so
    /// the answer does not tell which bot ids exist.
    Unregistered(&'a str),
}

/// The unverified `iss` and `aud` of a bearer token, made safe to log (at most 64
/// characters each, no control characters, at most 4 audiences). For the log
/// line of a refused request only: nothing here is verified, and the token
/// itself is never kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenClaimsForLog {
    pub iss: Option<String>,
    pub aud: Vec<String>,
}

impl TokenClaimsForLog {
    /// From an `Authorization` header value; empty when there is no readable token.
    pub fn from_authorization(authorization: Option<&str>) -> Self {
        let Ok(token) = bearer_token(authorization) else {
            return Self::default();
        };
        let Some(payload) = token.split('.').nth(1) else {
            return Self::default();
        };
        let Some(claims) = b64_json::<Claims>(payload) else {
            return Self::default();
        };
        Self {
            aud: claims.audiences().take(4).map(shown).collect(),
            iss: claims.iss.as_deref().map(shown),
        }
    }
}

/// A token that passed every check of the token alone.
struct VerifiedToken {
    claims: Claims,
    key: Arc<SigningKey>,
    bot: Arc<BotTrust>,
    cached: bool,
}

/// An activity that passed every check.
#[derive(Debug, Clone)]
pub struct Validated {
    pub bot: Arc<BotTrust>,
    pub tenant_id: Option<String>,
    /// True when the token came from the verified-token cache (no RSA this time).
    pub cached: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The claims botfleet checks. Numbers as f64 because JWT NumericDate may carry
/// a fraction.
#[derive(Debug, Clone, Deserialize)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    /// Lower case on the wire (BBJS `ServiceUrlClaim = 'serviceurl'`).
    #[serde(default)]
    serviceurl: Option<String>,
}

impl Claims {
    fn audiences(&self) -> impl Iterator<Item = &str> {
        let all: &[String] = match &self.aud {
            None => &[],
            Some(Audience::One(a)) => std::slice::from_ref(a),
            Some(Audience::Many(v)) => v,
        };
        all.iter().map(String::as_str)
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<serde_json::Value>,
    kid: Option<serde_json::Value>,
}

struct CachedToken {
    claims: Claims,
    store: Arc<KeyStore>,
    key: Arc<SigningKey>,
    expires_at: SystemTime,
}

struct UntilTokenExpiry;

impl moka::Expiry<[u8; 32], Arc<CachedToken>> for UntilTokenExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<CachedToken>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(
            value
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }
}

/// Validates inbound activities for every bot of every configured cloud.
pub struct InboundValidator {
    config: InboundConfig,
    /// For the key stores of clouds added at run time.
    client: reqwest::Client,
    /// One per OpenID metadata URL; only ever grows ([`Self::add_clouds`]).
    stores: RwLock<Vec<Arc<KeyStore>>>,
    /// Accepted `iss` per metadata URL (used before the bot is known).
    issuers: RwLock<HashMap<String, Vec<String>>>,
    signature_only: Validation,
    cache: Option<Cache<[u8; 32], Arc<CachedToken>>>,
    scheduler: Mutex<Scheduler>,
}

/// The background refreshes: one task per key store, once [`InboundValidator::start`] ran.
#[derive(Default)]
struct Scheduler {
    started: bool,
    /// (metadata URL, its refresh task).
    tasks: Vec<(String, JoinHandle<()>)>,
}

impl std::fmt::Debug for InboundValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundValidator")
            .field("config", &self.config)
            .field(
                "key_stores",
                &self
                    .stores
                    .read()
                    .iter()
                    .map(|s| s.metadata_url.clone())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Drop for InboundValidator {
    fn drop(&mut self) {
        for (_, t) in self.scheduler.lock().tasks.drain(..) {
            t.abort();
        }
    }
}

/// The unknown-`kid` answer's account of the key refresh it caused (or did not).
fn describe_refresh(outcomes: &[RefreshOutcome]) -> String {
    if outcomes.contains(&RefreshOutcome::Fetched { ok: true })
        || outcomes.contains(&RefreshOutcome::Joined)
    {
        return "the keys were refreshed just now".to_owned();
    }
    if outcomes.contains(&RefreshOutcome::Fetched { ok: false }) {
        return "a key refresh was tried just now and failed (the last good keys are kept)"
            .to_owned();
    }
    match outcomes
        .iter()
        .filter_map(|o| match o {
            RefreshOutcome::RateLimited {
                since,
                min_interval,
            } => Some((*since, *min_interval)),
            _ => None,
        })
        .min()
    {
        Some((since, min)) => format!(
            "no key refresh was tried: the last one was {:.1} s ago and the rate limit allows one every {:.1} s (auth.unknown_kid_refresh_min)",
            since.as_secs_f64(),
            min.as_secs_f64()
        ),
        None => "no key refresh was tried".to_owned(),
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The token of an `Authorization` header; only the exact `Bearer ` scheme.
fn bearer_token(authorization: Option<&str>) -> Result<&str, InboundError> {
    let token = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty())
        .ok_or(InboundError::MissingToken)?;
    if token.len() > MAX_TOKEN_BYTES {
        return Err(InboundError::MalformedToken("longer than 16 KiB"));
    }
    if token.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(InboundError::MalformedToken("contains whitespace"));
    }
    Ok(token)
}

fn b64_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Header `kid` and the unverified claims (used only to find the bot; every
/// decision uses the claims returned by signature verification).
fn parse_unverified(token: &str) -> Result<(String, Claims), InboundError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(InboundError::MalformedToken(
            "not three dot-separated parts",
        ));
    };
    let header: RawHeader =
        b64_json(header).ok_or(InboundError::MalformedToken("header is not base64url JSON"))?;
    match header.alg {
        Some(serde_json::Value::String(alg)) if alg == "RS256" => {}
        Some(serde_json::Value::String(alg)) => {
            return Err(InboundError::UnsupportedAlgorithm(shown(&alg)))
        }
        _ => return Err(InboundError::MalformedToken("header has no `alg`")),
    }
    let kid = match header.kid {
        Some(serde_json::Value::String(kid)) if !kid.is_empty() => kid,
        _ => return Err(InboundError::MalformedToken("header has no `kid`")),
    };
    let claims = b64_json(payload).ok_or(InboundError::MalformedToken(
        "payload is not base64url JSON with the expected claim types",
    ))?;
    Ok((kid, claims))
}

impl InboundValidator {
    /// One key store per distinct OpenID metadata URL of `clouds`. Nothing is
    /// fetched until [`InboundValidator::start`].
    pub fn new(
        client: reqwest::Client,
        config: InboundConfig,
        clouds: impl IntoIterator<Item = Arc<Cloud>>,
    ) -> Self {
        let mut signature_only = Validation::new(Algorithm::RS256);
        signature_only.validate_exp = false;
        signature_only.validate_nbf = false;
        signature_only.validate_aud = false;
        signature_only.required_spec_claims.clear();
        signature_only.leeway = 0;
        let cache = (config.cache_capacity > 0).then(|| {
            Cache::builder()
                .max_capacity(config.cache_capacity)
                .expire_after(UntilTokenExpiry)
                .build()
        });
        let validator = Self {
            config,
            client,
            stores: RwLock::new(Vec::new()),
            issuers: RwLock::new(HashMap::new()),
            signature_only,
            cache,
            scheduler: Mutex::new(Scheduler::default()),
        };
        validator.insert_clouds(clouds);
        validator
    }

    /// Registers `clouds`: a cloud whose metadata URL has a key store joins it,
    /// any other gets a new store (returned, not fetched yet).
    fn insert_clouds(&self, clouds: impl IntoIterator<Item = Arc<Cloud>>) -> Vec<Arc<KeyStore>> {
        let mut stores = self.stores.write();
        let mut issuers = self.issuers.write();
        let mut created = Vec::new();
        for cloud in clouds {
            let url = &cloud.openid_metadata_url;
            let accepting = self
                .config
                .accept_keys_without_endorsements
                .contains(&cloud.name);
            match stores.iter().find(|s| s.metadata_url == *url) {
                Some(store) => store.add_cloud(&cloud.name, accepting),
                None => {
                    let store = Arc::new(KeyStore::new(
                        url.clone(),
                        vec![cloud.name.clone()],
                        if accepting {
                            vec![cloud.name.clone()]
                        } else {
                            Vec::new()
                        },
                        self.client.clone(),
                        self.config.fetch_timeout,
                    ));
                    stores.push(store.clone());
                    created.push(store);
                }
            }
            let iss = issuers.entry(url.clone()).or_default();
            if !iss.contains(&cloud.token_issuer) {
                iss.push(cloud.token_issuer.clone());
            }
        }
        created
    }

    /// Adds clouds while the validator runs (a bot of a cloud no other bot
    /// used was registered): each new OpenID metadata URL gets a key store,
    /// fetched once before this returns and then refreshed on the schedule
    /// like the others (once [`Self::start`] ran). A cloud whose URL is known
    /// only adds its name and issuer. Never fails: a store that could not be
    /// loaded answers 503 `keys_unavailable` for its bots and is retried.
    ///
    /// Returns the status of the stores it created (empty when none was new).
    pub async fn add_clouds(
        &self,
        clouds: impl IntoIterator<Item = Arc<Cloud>>,
    ) -> Vec<KeyStoreStatus> {
        let created = self.insert_clouds(clouds);
        futures::future::join_all(created.iter().map(|s| s.refresh(None))).await;
        let mut scheduler = self.scheduler.lock();
        if scheduler.started {
            for store in &created {
                self.schedule(&mut scheduler, store);
            }
        }
        created.iter().map(|s| s.status()).collect()
    }

    /// Starts the refresh task of `store` unless it has one.
    fn schedule(&self, scheduler: &mut Scheduler, store: &Arc<KeyStore>) {
        if scheduler
            .tasks
            .iter()
            .any(|(url, _)| *url == store.metadata_url)
        {
            return;
        }
        let every = self.config.refresh_interval;
        let retry = self.config.retry_interval.min(every);
        let task_store = Arc::clone(store);
        let task = tokio::spawn(async move {
            loop {
                let wait = if task_store.loaded() && !task_store.last_attempt_failed() {
                    every
                } else {
                    retry
                };
                tokio::time::sleep(wait).await;
                task_store.refresh(None).await;
            }
        });
        scheduler.tasks.push((store.metadata_url.clone(), task));
    }

    /// Fetches every key store once, then refreshes each on the schedule in the
    /// background (sooner after a failure). Never fails: a store that could not
    /// be loaded makes its bots answer 503 and shows in [`Self::key_store_status`].
    pub async fn start(&self) {
        let stores = self.stores.read().clone();
        futures::future::join_all(stores.iter().map(|s| s.refresh(None))).await;
        let mut scheduler = self.scheduler.lock();
        if scheduler.started {
            return;
        }
        scheduler.started = true;
        // Stores added meanwhile are scheduled too (by whichever of the two
        // gets here first; `schedule` skips a store that has its task).
        let stores = self.stores.read().clone();
        for store in &stores {
            self.schedule(&mut scheduler, store);
        }
    }

    /// Refreshes every key store now (admin action, tests).
    pub async fn refresh_keys(&self) {
        let stores = self.stores.read().clone();
        futures::future::join_all(stores.iter().map(|s| s.refresh(None))).await;
    }

    /// One entry per OpenID metadata URL, for `/readyz` and the admin API.
    pub fn key_store_status(&self) -> Vec<KeyStoreStatus> {
        self.stores.read().iter().map(|s| s.status()).collect()
    }

    /// Checks the token alone, without the activity: bearer, RS256 JWT, key,
    /// signature, issuer, lifetime, audience (against the bot `route` names).
    /// The server runs this before it describes a bad body, so a caller without
    /// a valid token learns nothing about its body. Verifications are cached as
    /// in [`Self::validate`], so the full validation that follows costs no RSA.
    ///
    /// Errors: the first failed check; never `Ok` for
    /// [`TokenRoute::Unregistered`].
    pub async fn check_token(
        &self,
        authorization: Option<&str>,
        route: TokenRoute<'_>,
        resolver: &dyn BotResolver,
    ) -> Result<(), InboundError> {
        self.verify_token(authorization, route, resolver)
            .await
            .map(|_| ())
    }

    /// Validates one inbound activity. `route_bot` is the bot named by the route
    /// (`/api/messages/{bot}`); without it the bot is the one whose app id is the
    /// token's `aud`. Checks run in the order of the module documentation and the
    /// first failure is returned.
    pub async fn validate(
        &self,
        authorization: Option<&str>,
        activity: &Activity,
        route_bot: Option<&Arc<BotTrust>>,
        resolver: &dyn BotResolver,
    ) -> Result<Validated, InboundError> {
        let route = match route_bot {
            Some(b) => TokenRoute::Bot(b),
            None => TokenRoute::Any,
        };
        let VerifiedToken {
            claims,
            key,
            bot,
            cached,
        } = self.verify_token(authorization, route, resolver).await?;

        // Endorsements: the key must be endorsed for the activity's channel. A
        // key without a list endorses nothing unless its cloud opted in.
        let channel = activity.channel_id.as_deref().unwrap_or_default();
        if key.lacks_endorsements() {
            if !self
                .config
                .accept_keys_without_endorsements
                .contains(&bot.cloud.name)
            {
                return Err(InboundError::NoEndorsements {
                    kid: shown(&key.kid),
                    cloud: bot.cloud.name.clone(),
                });
            }
        } else {
            let endorsed = !channel.is_empty()
                && key
                    .endorsements
                    .as_ref()
                    .is_some_and(|e| e.iter().any(|c| c == channel));
            if !endorsed {
                return Err(InboundError::Endorsement(shown(channel)));
            }
        }

        // The serviceUrl was signed by the channel; exact compare as BBJS does.
        let service_url = match (
            claims.serviceurl.as_deref(),
            activity.service_url.as_deref(),
        ) {
            (_, None) => {
                return Err(InboundError::ServiceUrlClaim(
                    "cannot be checked: the activity has no serviceUrl",
                ))
            }
            (None, _) => return Err(InboundError::ServiceUrlClaim("is missing")),
            (Some(claim), Some(url)) if claim != url => {
                return Err(InboundError::ServiceUrlClaim(
                    "does not equal the activity's serviceUrl",
                ))
            }
            (Some(_), Some(url)) => url,
        };

        bot.service_urls
            .check(service_url)
            .map_err(InboundError::ServiceUrlHost)?;

        let tenant_id = activity.tenant_id();
        bot.tenants
            .check(tenant_id)
            .map_err(InboundError::TenantNotAllowed)?;

        Ok(Validated {
            tenant_id: tenant_id.map(str::to_owned),
            bot,
            cached,
        })
    }

    /// Every check of the token alone, in order.
    async fn verify_token(
        &self,
        authorization: Option<&str>,
        route: TokenRoute<'_>,
        resolver: &dyn BotResolver,
    ) -> Result<VerifiedToken, InboundError> {
        let token = bearer_token(authorization)?;
        let (kid, unverified) = parse_unverified(token)?;
        // The bot picks the cloud and so the keys. An unverified aud is only a
        // hint here: a forged aud cannot pass the signature of that cloud's keys.
        let bot = match route {
            TokenRoute::Bot(b) => Some(Arc::clone(b)),
            TokenRoute::Any => unverified
                .audiences()
                .find_map(|aud| resolver.by_app_id(aud)),
            TokenRoute::Unregistered(_) => None,
        };
        // Without a bot, still verify the signature (against every cloud) before
        // answering `audience`, so unsigned tokens cannot probe which app ids
        // or bot ids are registered.
        let candidates = match &bot {
            Some(b) => vec![self.store_for(&b.cloud)?],
            None => self.stores.read().clone(),
        };
        if candidates.is_empty() {
            // No cloud configured (no bots): nothing can verify the token, and no
            // bot could accept it. A 401, not a 503: waiting will not help.
            return Err(InboundError::Audience(match route {
                TokenRoute::Unregistered(name) => format!("the app id of bot `{}`", shown(name)),
                _ => "the app id of a registered bot".to_owned(),
            }));
        }

        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let (claims, store, key, cached) = match self.cache_hit(&digest, &candidates) {
            Some(hit) => (
                hit.claims.clone(),
                Arc::clone(&hit.store),
                Arc::clone(&hit.key),
                true,
            ),
            None => {
                let (store, key) = self.find_key(&candidates, &kid).await?;
                let claims = self.verify_signature(token, &key)?;
                self.remember(digest, &claims, &store, &key);
                (claims, store, key, false)
            }
        };

        // Issuer.
        let expected_issuers: Vec<String> = match &bot {
            Some(b) => vec![b.cloud.token_issuer.clone()],
            None => self
                .issuers
                .read()
                .get(&store.metadata_url)
                .cloned()
                .unwrap_or_default(),
        };
        if !claims
            .iss
            .as_deref()
            .is_some_and(|iss| expected_issuers.iter().any(|e| e == iss))
        {
            return Err(InboundError::Issuer {
                expected: expected_issuers.join("` or `"),
            });
        }

        // Lifetime, with skew for clocks that disagree.
        let now = now_secs();
        let skew = self.config.clock_skew.as_secs_f64();
        let exp = claims.exp.ok_or(InboundError::MissingExpiry)?;
        if now > exp + skew {
            return Err(InboundError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now + skew < nbf) {
            return Err(InboundError::NotYetValid);
        }

        // Audience. A path naming a bot gets the same words whether that bot
        // exists or not.
        let named = |name: &str| format!("the app id of bot `{}`", shown(name));
        let bot = match (route, bot) {
            (TokenRoute::Unregistered(name), _) => return Err(InboundError::Audience(named(name))),
            (_, None) => {
                return Err(InboundError::Audience(
                    "the app id of a registered bot".to_owned(),
                ))
            }
            (_, Some(bot)) => bot,
        };
        if !claims.audiences().any(|aud| aud == bot.app_id) {
            return Err(InboundError::Audience(named(&bot.bot_id)));
        }
        Ok(VerifiedToken {
            claims,
            key,
            bot,
            cached,
        })
    }

    fn store_for(&self, cloud: &Cloud) -> Result<Arc<KeyStore>, InboundError> {
        self.stores
            .read()
            .iter()
            .find(|s| s.metadata_url == cloud.openid_metadata_url)
            .cloned()
            .ok_or_else(|| {
                InboundError::KeysUnavailable(format!(
                    "cloud `{}` ({}) was not given to the validator",
                    cloud.name, cloud.openid_metadata_url
                ))
            })
    }

    /// A cached verification counts only if it was made with one of the
    /// candidate key stores and that key is still published unchanged; so a
    /// removed key stops cached tokens too.
    fn cache_hit(
        &self,
        digest: &[u8; 32],
        candidates: &[Arc<KeyStore>],
    ) -> Option<Arc<CachedToken>> {
        let hit = self.cache.as_ref()?.get(digest)?;
        let store_ok = candidates.iter().any(|s| Arc::ptr_eq(s, &hit.store));
        let key_ok = hit
            .store
            .key(&hit.key.kid)
            .is_some_and(|k| k.same_as(&hit.key));
        (store_ok && key_ok).then_some(hit)
    }

    fn remember(
        &self,
        digest: [u8; 32],
        claims: &Claims,
        store: &Arc<KeyStore>,
        key: &Arc<SigningKey>,
    ) {
        let (Some(cache), Some(exp)) = (&self.cache, claims.exp) else {
            return;
        };
        let until = exp + self.config.clock_skew.as_secs_f64();
        if !until.is_finite() || until <= now_secs() {
            return;
        }
        // Capped at a day: a token claiming a far-future exp still fails nothing
        // here, but need not pin memory for years.
        let until = until.min(now_secs() + 86_400.0);
        cache.insert(
            digest,
            Arc::new(CachedToken {
                claims: claims.clone(),
                store: Arc::clone(store),
                key: Arc::clone(key),
                expires_at: UNIX_EPOCH + Duration::from_secs_f64(until),
            }),
        );
    }

    async fn find_key(
        &self,
        stores: &[Arc<KeyStore>],
        kid: &str,
    ) -> Result<(Arc<KeyStore>, Arc<SigningKey>), InboundError> {
        let lookup = || {
            stores
                .iter()
                .find_map(|s| s.key(kid).map(|k| (Arc::clone(s), k)))
        };
        if let Some(found) = lookup() {
            return Ok(found);
        }
        // A new kid may be a rotation we have not seen: refresh, rate-limited.
        // Stores never loaded retry at the scheduler's pace at most.
        let outcomes = futures::future::join_all(stores.iter().map(|s| {
            let min = if s.loaded() {
                self.config.unknown_kid_min_interval
            } else {
                self.config
                    .retry_interval
                    .min(self.config.unknown_kid_min_interval)
            };
            s.refresh(Some(min))
        }))
        .await;
        if let Some(found) = lookup() {
            return Ok(found);
        }
        if !stores.iter().any(|s| s.loaded()) {
            let urls = stores
                .iter()
                .map(|s| s.metadata_url.as_str())
                .collect::<Vec<_>>()
                .join("`, `");
            return Err(InboundError::KeysUnavailable(format!(
                "`{urls}` not loaded yet; retry later (see the key store status)"
            )));
        }
        Err(InboundError::UnknownKey {
            kid: shown(kid),
            refresh: describe_refresh(&outcomes),
        })
    }

    fn verify_signature(&self, token: &str, key: &SigningKey) -> Result<Claims, InboundError> {
        jsonwebtoken::decode::<Claims>(token, &key.decoding, &self.signature_only)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                    InboundError::MalformedToken("signature is not base64url")
                }
                ErrorKind::Json(_) => {
                    InboundError::MalformedToken("claims do not have the expected types")
                }
                _ => InboundError::Signature,
            })
    }
}
