//! The sim's state: keys, bots, conversations, limits, faults and records.
//!
//! Keys and bots are read-mostly (RwLock); everything a request changes sits in
//! one `Inner` behind a mutex held only for bookkeeping (never across I/O,
//! signing or sleeping), so recording stays cheap at thousands of requests/s.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use botfleet_protocol::ChannelAccount;
use parking_lot::{Mutex, RwLock};
use rsa::RsaPublicKey;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::faults::{FaultState, Faults};
use crate::jwt;
use crate::keys::{KeyChoice, KeySet, SimKey, OTHER_ENDORSEMENT};
use crate::limits::RateLimiter;
use crate::records::{
    ActivityRecord, ClientCounts, Operation, Ring, Stats, TokenRequestRecord, Violation,
};
use crate::time::{now_ms, now_secs, rfc3339};

/// The botframework.com tenant: multi-tenant bots get tokens from it.
pub const BOTFRAMEWORK_TENANT_ID: &str = "d6d49420-f39b-4df7-a1dc-d59a935871db";
pub const BOTFRAMEWORK_TENANT: &str = "botframework.com";
/// Audience of tokens the Bot Connector accepts.
pub const CONNECTOR_AUDIENCE: &str = "https://api.botframework.com";
/// Audience of workload identity (federated) tokens.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Clock skew the connector allows on `exp`/`nbf`, as Entra-protected APIs do.
pub const CLOCK_SKEW_SECS: i64 = 300;
const VERIFIED_CACHE_CAP: usize = 100_000;

/// How a bot may get tokens from the token endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BotRegistration {
    pub app_id: String,
    /// Client secret (client credentials with `client_secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Single-tenant bots: the tenant (id or domain) their token requests must name.
    /// Absent: multi-tenant, tokens from `botframework.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// PEM public key or X.509 certificate for `client_assertion` (certificate credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
    /// `sub` of a workload identity token (from `POST /_sim/federated-token`)
    /// this bot trusts as `client_assertion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federated_subject: Option<String>,
}

impl BotRegistration {
    /// Parses `APP_ID:SECRET[:TENANT]` (the `--bot` flag).
    pub fn parse_flag(s: &str) -> Result<Self, String> {
        let mut parts = s.splitn(3, ':');
        let app_id = parts.next().unwrap_or_default().trim();
        let secret = parts.next().unwrap_or_default();
        let tenant = parts.next().map(str::trim).filter(|t| !t.is_empty());
        if app_id.is_empty() || secret.is_empty() {
            return Err(format!(
                "expected APP_ID:SECRET[:TENANT], got {s:?} (the secret must not be empty)"
            ));
        }
        Ok(Self {
            app_id: app_id.to_owned(),
            secret: Some(secret.to_owned()),
            tenant: tenant.map(str::to_owned),
            ..Self::default()
        })
    }
}

#[derive(Debug, Clone)]
pub struct Bot {
    pub registration: BotRegistration,
    pub certificate_keys: Vec<RsaPublicKey>,
}

impl Bot {
    pub fn new(registration: BotRegistration) -> Result<Self, String> {
        if registration.app_id.trim().is_empty() {
            return Err("appId must not be empty".into());
        }
        let certificate_keys = match &registration.certificate_pem {
            Some(pem) => crate::keys::parse_public_keys(pem)
                .map_err(|e| format!("certificatePem of {}: {e}", registration.app_id))?,
            None => Vec::new(),
        };
        Ok(Self {
            registration,
            certificate_keys,
        })
    }

    pub fn credentials(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.registration.secret.is_some() {
            out.push("secret");
        }
        if !self.certificate_keys.is_empty() {
            out.push("certificate");
        }
        if self.registration.federated_subject.is_some() {
            out.push("federated");
        }
        out
    }
}

/// A conversation the connector knows (registered or created).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Conversation {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub members: Vec<ChannelAccount>,
    /// Bots allowed to use it; empty means any bot. Others get 403 BotNotInConversationRoster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_ids: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TokenKind {
    /// Channel -> bot token (what Teams puts on activities it posts to a bot).
    #[default]
    Channel,
    /// Bot -> connector token, as the token endpoint issues it.
    Connector,
}

/// `POST /_sim/tokens` body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MintRequest {
    pub app_id: String,
    #[serde(default)]
    pub service_url: Option<String>,
    #[serde(default)]
    pub count: Option<usize>,
    #[serde(default)]
    pub lifetime_secs: Option<u64>,
    /// `exp` this many seconds in the past.
    #[serde(default)]
    pub expired_by_secs: Option<u64>,
    /// `nbf` this many seconds in the future.
    #[serde(default)]
    pub not_before_in_secs: Option<u64>,
    #[serde(default)]
    pub issuer: Option<String>,
    /// Overrides `aud`.
    #[serde(default)]
    pub audience: Option<String>,
    /// Overrides the `serviceurl` claim only.
    #[serde(default)]
    pub token_service_url: Option<String>,
    #[serde(default)]
    pub key: KeyChoice,
    #[serde(default)]
    pub kind: TokenKind,
}

pub const MAX_MINT: usize = 100_000;

/// Settings fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL the sim listens on (`http://127.0.0.1:PORT`).
    pub url: String,
    /// Base URL put into metadata documents (defaults to `url`).
    pub public_url: String,
    pub issuer: String,
    pub token_lifetime_secs: u64,
    pub identity_header: String,
    pub max_records: usize,
}

impl Settings {
    /// `iss` of the workload identity tokens the sim issues.
    pub fn federated_issuer(&self) -> String {
        format!("{}/federated", self.public_url)
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub conversations: HashMap<String, Conversation>,
    /// app id -> tenant id -> user ids that installed the app (personal scope).
    /// A (bot, tenant) with an entry here creates 1:1 conversations only for
    /// those users; without one, for anyone.
    pub installations: HashMap<String, HashMap<String, std::collections::HashSet<String>>>,
    pub limiter: RateLimiter,
    pub faults: FaultState,
    pub activities: Ring<ActivityRecord>,
    pub violations: Ring<Violation>,
    pub token_requests: Ring<TokenRequestRecord>,
    pub token_counts: HashMap<String, ClientCounts>,
    pub stats: Stats,
    /// Sequence number of records; assigned under the lock so lists stay ordered.
    pub seq: u64,
}

impl Inner {
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

#[derive(Debug, Clone)]
struct Verified {
    exp: i64,
    app_id: Arc<str>,
}

/// Why the connector refused a bearer token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing Authorization header")]
    Missing,
    #[error("Authorization header is not 'Bearer <token>'")]
    Scheme,
    #[error("{0}")]
    Malformed(#[from] jwt::JwtError),
    #[error("token algorithm {0:?} is not RS256")]
    Algorithm(String),
    #[error("token key id {0:?} is not one of the published keys")]
    UnknownKey(String),
    #[error("token signature is invalid")]
    Signature,
    #[error("token audience is not {CONNECTOR_AUDIENCE}")]
    Audience,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token has no appid or azp claim")]
    NoAppId,
}

pub struct Sim {
    pub settings: Settings,
    keys: RwLock<KeySet>,
    bots: RwLock<HashMap<String, Bot>>,
    pub(crate) inner: Mutex<Inner>,
    verified: Mutex<HashMap<u64, Verified>>,
    hasher: RandomState,
    /// Activity ids look like Teams' (ms since epoch) and only grow, so an id
    /// not in `[id_base, next_id)` was never issued by this sim.
    id_base: u64,
    next_id: AtomicU64,
    pub started_ms: u64,
    /// The Microsoft Graph side (subscriptions, notifications, delegated sign-in, installedApps).
    pub graph: crate::graph::GraphState,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("url", &self.settings.url)
            .finish_non_exhaustive()
    }
}

impl Sim {
    pub fn new(settings: Settings, keys: KeySet, bots: Vec<Bot>) -> Self {
        let max = settings.max_records;
        let started_ms = now_ms();
        Self {
            keys: RwLock::new(keys),
            bots: RwLock::new(
                bots.into_iter()
                    .map(|b| (b.registration.app_id.clone(), b))
                    .collect(),
            ),
            inner: Mutex::new(Inner {
                conversations: HashMap::new(),
                installations: HashMap::new(),
                limiter: RateLimiter::default(),
                faults: FaultState::default(),
                activities: Ring::new(max),
                violations: Ring::new(max),
                token_requests: Ring::new(max),
                token_counts: HashMap::new(),
                stats: Stats::default(),
                seq: 0,
            }),
            verified: Mutex::new(HashMap::new()),
            hasher: RandomState::new(),
            id_base: started_ms,
            next_id: AtomicU64::new(started_ms),
            started_ms,
            graph: crate::graph::GraphState::new(max),
            settings,
        }
    }

    /// A new Teams-looking activity id.
    pub fn new_activity_id(&self) -> String {
        self.next_id.fetch_add(1, Ordering::Relaxed).to_string()
    }

    pub fn issued_activity_id(&self, id: &str) -> bool {
        id.parse::<u64>()
            .is_ok_and(|n| n >= self.id_base && n < self.next_id.load(Ordering::Relaxed))
    }

    // ---- keys -------------------------------------------------------------

    pub fn active_kid(&self) -> String {
        self.keys.read().active.kid.clone()
    }

    pub fn unendorsed_kid(&self) -> String {
        self.keys.read().unendorsed.kid.clone()
    }

    pub fn published_kids(&self) -> Vec<String> {
        self.keys
            .read()
            .published()
            .map(|k| k.kid.clone())
            .collect()
    }

    pub fn jwks(&self) -> Value {
        self.keys.read().jwks()
    }

    pub fn find_key(&self, kid: &str) -> Option<Arc<SimKey>> {
        self.keys.read().find(kid).cloned()
    }

    pub(crate) fn active_key(&self) -> Arc<SimKey> {
        self.keys.read().active.clone()
    }

    /// Makes a new key active. The old active key stays published (tokens it
    /// signed keep verifying) unless `retire_old`, which unpublishes every
    /// earlier Teams key. `without_endorsements` publishes the new key with no
    /// `endorsements` member at all. Blocking: generates an RSA key.
    pub fn rotate_keys(
        &self,
        retire_old: bool,
        without_endorsements: bool,
    ) -> Result<Value, crate::SimError> {
        let mut fresh = SimKey::generate(&[crate::keys::TEAMS_ENDORSEMENT])?;
        if without_endorsements {
            fresh = fresh.without_endorsements_list();
        }
        let fresh = Arc::new(fresh);
        let mut keys = self.keys.write();
        let old = std::mem::replace(&mut keys.active, fresh);
        let mut retired = Vec::new();
        if retire_old {
            retired.push(old.kid.clone());
            retired.extend(keys.previous.drain(..).map(|k| k.kid.clone()));
        } else {
            keys.previous.insert(0, old);
        }
        let out = json!({
            "kid": keys.active.kid,
            "endorsementsListed": keys.active.publish_endorsements,
            "retired": retired,
            "published": keys.published().map(|k| k.kid.clone()).collect::<Vec<_>>(),
        });
        drop(keys);
        if retire_old {
            // Tokens of retired keys must stop verifying at once.
            self.verified.lock().clear();
        }
        Ok(out)
    }

    pub(crate) fn foreign_key(&self) -> Result<Arc<SimKey>, crate::SimError> {
        if let Some(k) = self.keys.read().foreign.clone() {
            return Ok(k);
        }
        let fresh = Arc::new(SimKey::generate(&[OTHER_ENDORSEMENT])?);
        let mut keys = self.keys.write();
        Ok(keys.foreign.get_or_insert(fresh).clone())
    }

    // ---- bots -------------------------------------------------------------

    pub fn register_bot(&self, registration: BotRegistration) -> Result<Vec<&'static str>, String> {
        let bot = Bot::new(registration)?;
        let creds = bot.credentials();
        self.bots
            .write()
            .insert(bot.registration.app_id.clone(), bot);
        Ok(creds)
    }

    pub fn bot(&self, app_id: &str) -> Option<Bot> {
        self.bots.read().get(app_id).cloned()
    }

    /// Registered bots without their secrets.
    pub fn bots_public(&self) -> Vec<Value> {
        let bots = self.bots.read();
        let mut out: Vec<Value> = bots
            .values()
            .map(|b| {
                json!({
                    "appId": b.registration.app_id,
                    "tenant": b.registration.tenant,
                    "credentials": b.credentials(),
                    "federatedSubject": b.registration.federated_subject,
                })
            })
            .collect();
        out.sort_by(|a, b| a["appId"].as_str().cmp(&b["appId"].as_str()));
        out
    }

    // ---- conversations ----------------------------------------------------

    pub fn register_conversations(&self, conversations: Vec<Conversation>) -> usize {
        let mut inner = self.inner.lock();
        let n = conversations.len();
        for c in conversations {
            inner.conversations.insert(c.id.clone(), c);
        }
        n
    }

    /// Records that `users` installed `app_id` in `tenant_id` (personal scope);
    /// from then on the tenant is checked on create. Returns the users now installed.
    pub fn install(&self, app_id: &str, tenant_id: &str, users: Vec<String>) -> usize {
        let mut inner = self.inner.lock();
        let set = inner
            .installations
            .entry(app_id.to_owned())
            .or_default()
            .entry(tenant_id.to_owned())
            .or_default();
        set.extend(users);
        set.len()
    }

    pub fn conversation(&self, id: &str) -> Option<Conversation> {
        self.inner.lock().conversations.get(id).cloned()
    }

    pub fn conversation_count(&self) -> usize {
        self.inner.lock().conversations.len()
    }

    // ---- tokens -----------------------------------------------------------

    /// Mints channel -> bot (or connector) tokens. Blocking: RSA signing.
    pub fn mint(&self, req: &MintRequest) -> Result<Vec<String>, String> {
        let count = req.count.unwrap_or(1);
        if count == 0 || count > MAX_MINT {
            return Err(format!("count must be 1..={MAX_MINT}, got {count}"));
        }
        if req.app_id.trim().is_empty() {
            return Err("appId must not be empty".into());
        }
        let service_url = match (req.kind, &req.service_url) {
            (TokenKind::Channel, None) => {
                return Err("serviceUrl is required for channel tokens".into())
            }
            (_, s) => s.clone(),
        };
        let (signer, kid) = match req.key {
            KeyChoice::Active => {
                let k = self.active_key();
                let kid = k.kid.clone();
                (k, kid)
            }
            KeyChoice::Unendorsed => {
                let k = self.keys.read().unendorsed.clone();
                let kid = k.kid.clone();
                (k, kid)
            }
            KeyChoice::Foreign => (
                self.foreign_key().map_err(|e| e.to_string())?,
                self.active_kid(),
            ),
        };
        let now = now_secs();
        let lifetime = i64::try_from(
            req.lifetime_secs
                .unwrap_or(self.settings.token_lifetime_secs),
        )
        .unwrap_or(i64::MAX / 2);
        let (nbf, exp) = match (req.expired_by_secs, req.not_before_in_secs) {
            (Some(by), _) => {
                let exp = now - i64::try_from(by).unwrap_or(0);
                (exp - lifetime, exp)
            }
            (None, Some(later)) => {
                let nbf = now + i64::try_from(later).unwrap_or(0);
                (nbf, nbf + lifetime)
            }
            (None, None) => (now - 60, now + lifetime),
        };
        let mut tokens = Vec::with_capacity(count);
        for _ in 0..count {
            let jti = uuid::Uuid::new_v4().to_string();
            let claims = match req.kind {
                TokenKind::Channel => {
                    let claim_url = req
                        .token_service_url
                        .clone()
                        .or_else(|| service_url.clone())
                        .unwrap_or_default();
                    json!({
                        "serviceurl": claim_url,
                        "nbf": nbf,
                        "exp": exp,
                        "iss": req.issuer.clone().unwrap_or_else(|| self.settings.issuer.clone()),
                        "aud": req.audience.clone().unwrap_or_else(|| req.app_id.clone()),
                        "jti": jti,
                    })
                }
                TokenKind::Connector => {
                    let mut c = self.access_token_claims(
                        &req.app_id,
                        BOTFRAMEWORK_TENANT_ID,
                        req.audience.as_deref().unwrap_or(CONNECTOR_AUDIENCE),
                        "1",
                        now,
                        exp,
                    );
                    c["nbf"] = json!(nbf);
                    if let Some(iss) = &req.issuer {
                        c["iss"] = json!(iss);
                    }
                    c
                }
            };
            tokens.push(jwt::sign(&signer, &kid, &claims));
        }
        self.inner.lock().stats.minted_tokens += count as u64;
        Ok(tokens)
    }

    /// Claims of an Entra v1 app-only access token.
    pub(crate) fn access_token_claims(
        &self,
        app_id: &str,
        tenant_id: &str,
        audience: &str,
        appidacr: &str,
        now: i64,
        exp: i64,
    ) -> Value {
        let iss = format!("https://sts.windows.net/{tenant_id}/");
        let oid = uuid_from(app_id);
        let mut claims = json!({
            "aud": audience,
            "iss": iss,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "appid": app_id,
            "azp": app_id,
            "appidacr": appidacr,
            "idp": iss,
            "idtyp": "app",
            "oid": oid,
            "sub": oid,
            "tid": tenant_id,
            "uti": uuid::Uuid::new_v4().simple().to_string(),
            "ver": "1.0",
        });
        // Graph app tokens carry the application permissions granted to the app.
        if audience == crate::graph::GRAPH_AUDIENCE || audience == crate::graph::GRAPH_APP_ID {
            claims["roles"] = json!(crate::graph::APP_ROLES);
        }
        claims
    }

    /// An access token for `app_id`, signed with the active key; (token, lifetime).
    pub fn issue_access_token(
        &self,
        app_id: &str,
        tenant_id: &str,
        audience: &str,
        appidacr: &str,
    ) -> (String, u64) {
        let now = now_secs();
        let lifetime = self.settings.token_lifetime_secs;
        let exp = now.saturating_add(i64::try_from(lifetime).unwrap_or(i64::MAX / 2));
        let claims = self.access_token_claims(app_id, tenant_id, audience, appidacr, now, exp);
        let key = self.active_key();
        (jwt::sign(&key, &key.kid, &claims), lifetime)
    }

    /// A workload identity token (`client_assertion` for federated credentials).
    pub fn issue_federated_token(
        &self,
        subject: &str,
        audience: Option<&str>,
        lifetime_secs: Option<u64>,
    ) -> String {
        let now = now_secs();
        let lifetime = i64::try_from(lifetime_secs.unwrap_or(3600)).unwrap_or(3600);
        let claims = json!({
            "iss": self.settings.federated_issuer(),
            "sub": subject,
            "aud": audience.unwrap_or(TOKEN_EXCHANGE_AUDIENCE),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let key = self.active_key();
        jwt::sign(&key, &key.kid, &claims)
    }

    /// Checks a token signed by one of the published keys; returns its claims.
    pub fn verify_own_signature(&self, token: &str) -> Result<Value, AuthError> {
        let parsed = jwt::parse(token)?;
        if parsed.header.alg != "RS256" {
            return Err(AuthError::Algorithm(parsed.header.alg));
        }
        let kid = parsed.header.kid.clone().unwrap_or_default();
        let key = self.find_key(&kid).ok_or(AuthError::UnknownKey(kid))?;
        if !key.verify(parsed.signing_input.as_bytes(), &parsed.signature) {
            return Err(AuthError::Signature);
        }
        Ok(parsed.claims)
    }

    /// Authenticates a Bot Connector call: a token this sim issued, for the
    /// connector audience, within its validity (5 min skew). Returns the app id.
    pub fn authenticate_connector(
        &self,
        authorization: Option<&str>,
    ) -> Result<Arc<str>, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let (scheme, token) = header.split_once(' ').ok_or(AuthError::Scheme)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(AuthError::Scheme);
        }
        let token = token.trim();
        let now = now_secs();
        let h = self.hasher.hash_one(token);
        if let Some(v) = self.verified.lock().get(&h) {
            if now <= v.exp + CLOCK_SKEW_SECS {
                return Ok(v.app_id.clone());
            }
        }
        let claims = self.verify_own_signature(token)?;
        if !jwt::audience_contains(&claims, |a| a == CONNECTOR_AUDIENCE) {
            return Err(AuthError::Audience);
        }
        let exp = jwt::claim_secs(&claims, "exp").ok_or(AuthError::Expired)?;
        if now > exp + CLOCK_SKEW_SECS {
            return Err(AuthError::Expired);
        }
        if jwt::claim_secs(&claims, "nbf").is_some_and(|nbf| now + CLOCK_SKEW_SECS < nbf) {
            return Err(AuthError::NotYetValid);
        }
        let app_id: Arc<str> = jwt::claim_str(&claims, "appid")
            .or_else(|| jwt::claim_str(&claims, "azp"))
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::NoAppId)?
            .into();
        let mut cache = self.verified.lock();
        if cache.len() >= VERIFIED_CACHE_CAP {
            cache.clear();
        }
        cache.insert(
            h,
            Verified {
                exp,
                app_id: app_id.clone(),
            },
        );
        Ok(app_id)
    }

    // ---- records and inspection ---------------------------------------------

    pub(crate) fn record_token_request(&self, mut rec: TokenRequestRecord) {
        let ok = (200..300).contains(&rec.status);
        let mut inner = self.inner.lock();
        rec.seq = inner.next_seq();
        inner.stats.token_requests += 1;
        if ok {
            inner.stats.tokens_issued += 1;
        } else {
            inner.stats.token_requests_rejected += 1;
        }
        let counts = inner.token_counts.entry(rec.client_id.clone()).or_default();
        counts.total += 1;
        if ok {
            counts.ok += 1;
        } else {
            counts.rejected += 1;
        }
        inner.token_requests.push(rec);
    }

    pub fn token_requests(&self, client_id: Option<&str>) -> Value {
        let inner = self.inner.lock();
        let requests: Vec<&TokenRequestRecord> = inner
            .token_requests
            .iter()
            .filter(|r| client_id.is_none_or(|c| r.client_id == c))
            .collect();
        let counts: BTreeMap<&String, &ClientCounts> = inner.token_counts.iter().collect();
        json!({
            "total": inner.token_requests.total(),
            "byClient": counts,
            "requests": requests,
        })
    }

    pub fn activities(&self, filter: &ActivityFilter) -> Vec<ActivityRecord> {
        let inner = self.inner.lock();
        let mut out: Vec<ActivityRecord> = inner
            .activities
            .iter()
            .rev()
            .take_while(|r| filter.since.is_none_or(|s| r.seq > s))
            .filter(|r| filter.matches(r))
            .take(filter.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        out.reverse();
        out
    }

    pub fn activities_total(&self) -> u64 {
        self.inner.lock().activities.total()
    }

    pub fn violations(&self) -> (u64, Vec<Violation>) {
        let inner = self.inner.lock();
        (
            inner.violations.total(),
            inner.violations.iter().cloned().collect(),
        )
    }

    pub fn stats(&self) -> Stats {
        self.inner.lock().stats.clone()
    }

    pub fn set_faults(&self, faults: Faults) -> Result<(), String> {
        faults.validate()?;
        self.inner.lock().faults = FaultState::new(faults);
        Ok(())
    }

    pub fn faults(&self) -> Value {
        let inner = self.inner.lock();
        json!({
            "faults": inner.faults.config,
            "failNextRemaining": inner.faults.fail_next_left(),
            "injected": inner.faults.injected,
        })
    }

    pub fn token_endpoint_down(&self) -> bool {
        self.inner.lock().faults.config.token_endpoint_down
    }

    /// Clears records, counters, rate-limit windows and faults (Graph's too);
    /// keeps keys, bots, conversations and Graph subscriptions, chats and the clock.
    pub fn reset(&self) {
        let mut inner = self.inner.lock();
        inner.activities.clear();
        inner.violations.clear();
        inner.token_requests.clear();
        inner.token_counts.clear();
        inner.stats = Stats::default();
        inner.limiter.clear();
        inner.faults = FaultState::default();
        drop(inner);
        self.graph.reset();
    }

    pub(crate) fn now_stamp() -> (u64, String) {
        let ms = now_ms();
        (ms, rfc3339(ms))
    }
}

/// Filter of `GET /_sim/activities`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityFilter {
    pub conversation: Option<String>,
    /// Only records with `seq` greater than this.
    pub since: Option<u64>,
    pub app_id: Option<String>,
    /// Comma-separated operations (`send,reply`).
    pub operation: Option<String>,
    /// Include calls the sim rejected (4xx/5xx); default: accepted only.
    #[serde(default)]
    pub all: bool,
    pub limit: Option<usize>,
}

impl ActivityFilter {
    fn matches(&self, r: &ActivityRecord) -> bool {
        (self.all || (200..300).contains(&r.status))
            && self
                .conversation
                .as_deref()
                .is_none_or(|c| r.conversation_id == c)
            && self.app_id.as_deref().is_none_or(|a| r.app_id == a)
            && self.operation.as_deref().is_none_or(|ops| {
                ops.split(',')
                    .filter_map(|o| Operation::parse(o.trim()))
                    .any(|o| o == r.operation)
            })
    }
}

/// A stable UUID-shaped id derived from `s` (service principal object ids).
pub fn uuid_from(s: &str) -> String {
    use rsa::sha2::{Digest, Sha256};
    let d = Sha256::digest(s.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}
