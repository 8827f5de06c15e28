//! Who is calling and what they may do: API keys, roles, bot scopes, the
//! failed-attempt limiter and the audit trail of every call that changes
//! something or is refused.
//!
//! # Keys
//! A key is `bfk_<id>_<secret>`: `bfk_<id>` (`bfk_` + 8 lowercase base32
//! characters, 40 random bits) is its public id, stored in clear, named in logs
//! and the audit log; `<secret>` is 32 random bytes, base64url (43 characters).
//! Only the lowercase hex SHA-256 of the whole key is stored; the key is shown
//! once, in the answer that created it. Hashes are compared in constant time
//! (`subtle`). The bootstrap key from the configuration is any string of at
//! least [`MIN_BOOTSTRAP_KEY_LEN`] characters, held only as its hash, with role
//! `admin`, no scope and the id `bootstrap`.
//!
//! # Order of checks
//! 1. the client address is not blocked by the failed-attempt limiter (429);
//! 2. the key is present, known, matches, not revoked, not expired (401);
//! 3. the role has the action's permission and, for a bot's resource, the
//!    key's scope contains the bot (403).
//!
//! Every 401 and 403 is written to the audit log; so is the first 429 of each
//! block (the others are only counted in the log line that ends the block), so a
//! flood of bad keys cannot flood the audit log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use botfleet_store::admin::{ApiKeyRecord, AuditEntry, Role};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::AdminError;
use super::{now_ms, AdminState, RequestId};

/// Prefix of every key created through the API.
pub const KEY_PREFIX: &str = "bfk_";
/// Characters of the random part of a key id.
pub const KEY_ID_LEN: usize = 8;
/// Shortest bootstrap key accepted: 32 characters (e.g. `openssl rand -hex 16`).
pub const MIN_BOOTSTRAP_KEY_LEN: usize = 32;
/// The id the bootstrap key has in audit entries and logs.
pub const BOOTSTRAP_KEY_ID: &str = "bootstrap";
/// Longest bearer value looked at; longer ones are refused unread.
const MAX_KEY_LEN: usize = 256;
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A new key: the record to store and the key to show once.
pub struct NewKey {
    pub id: String,
    /// `bfk_<id>_<secret>`: returned to the creator, never stored or logged.
    pub key: botfleet_auth::Secret,
    /// Lowercase hex SHA-256 of `key`.
    pub secret_hash: String,
}

/// Generates a key from the operating system's CSPRNG.
pub fn generate_key() -> NewKey {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut rng = rand::rngs::OsRng;
    let mut id = String::from(KEY_PREFIX);
    let mut idbytes = [0u8; KEY_ID_LEN];
    rng.fill_bytes(&mut idbytes);
    for b in idbytes {
        id.push(char::from(BASE32[usize::from(b & 31)]));
    }
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let key = format!("{id}_{}", URL_SAFE_NO_PAD.encode(secret));
    let secret_hash = hash_hex(&key);
    NewKey {
        id,
        key: botfleet_auth::Secret::new(key),
        secret_hash,
    }
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Lowercase hex SHA-256 of a key: what the key store holds.
pub fn hash_hex(key: &str) -> String {
    hex::encode(hash(key))
}

/// The public id of a key in the `bfk_<id>_<secret>` format, if it has that
/// format. The id is safe to log: 12 characters of a fixed alphabet.
pub fn key_id_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let random = rest.get(..KEY_ID_LEN)?;
    if !random.bytes().all(|b| BASE32.contains(&b))
        || rest.as_bytes().get(KEY_ID_LEN) != Some(&b'_')
    {
        return None;
    }
    key.get(..KEY_PREFIX.len() + KEY_ID_LEN)
}

/// The bootstrap admin key, held as its hash.
#[derive(Clone)]
pub struct BootstrapKey([u8; 32]);

impl std::fmt::Debug for BootstrapKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootstrapKey([redacted])")
    }
}

impl BootstrapKey {
    /// `Err` (naming the problem, never the key) when the key is shorter than
    /// [`MIN_BOOTSTRAP_KEY_LEN`].
    pub fn new(key: &botfleet_auth::Secret) -> Result<Self, String> {
        let len = key.expose().chars().count();
        if len < MIN_BOOTSTRAP_KEY_LEN {
            return Err(format!(
                "the bootstrap admin key has {len} characters; use at least {MIN_BOOTSTRAP_KEY_LEN} random ones (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(Self(hash(key.expose())))
    }

    fn matches(&self, presented: &[u8; 32]) -> bool {
        bool::from(self.0.ct_eq(presented))
    }
}

/// What a permission check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    BotsRead,
    BotsWrite,
    /// Tenants and conversations of a bot.
    ConversationsRead,
    TokensRead,
    /// Create, list and revoke keys.
    Keys,
    AuditRead,
    /// Send proactive notifications (routes of the notification issue).
    NotificationsSend,
    /// Read notifications and their delivery state.
    NotificationsRead,
}

impl Permission {
    /// The roles that have this permission (the roles table of
    /// docs/admin-api.md).
    pub fn roles(self) -> &'static [Role] {
        use Role::*;
        match self {
            Self::BotsRead | Self::ConversationsRead | Self::NotificationsRead => {
                &[Admin, Operator, Sender, Reader]
            }
            Self::NotificationsSend => &[Admin, Operator, Sender],
            Self::TokensRead => &[Admin, Operator, Reader],
            Self::BotsWrite | Self::AuditRead => &[Admin, Operator],
            Self::Keys => &[Admin],
        }
    }

    /// Keys, audit: resources of the whole deployment, closed to keys scoped to bots.
    pub fn needs_unscoped_key(self) -> bool {
        matches!(self, Self::Keys | Self::AuditRead)
    }
}

/// Every call the admin API audits or authorizes, with its audit name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    BotsList,
    BotsGet,
    BotsCreate,
    BotsReplace,
    BotsPatch,
    BotsDelete,
    TenantsList,
    ConversationsList,
    TokenGet,
    KeysList,
    KeysCreate,
    KeysRevoke,
    AuditList,
    NotificationsCreate,
    NotificationsGet,
    NotificationsCancel,
    GraphSubscriptionsList,
    GraphSubscriptionsGet,
    GraphSubscriptionsCreate,
    GraphSubscriptionsDelete,
    GraphCredentialsGet,
    GraphCredentialsSignIn,
    GraphAppsInstall,
}

impl Action {
    /// The name in the audit log (`bots.create`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::BotsList => "bots.list",
            Self::BotsGet => "bots.get",
            Self::BotsCreate => "bots.create",
            Self::BotsReplace => "bots.replace",
            Self::BotsPatch => "bots.patch",
            Self::BotsDelete => "bots.delete",
            Self::TenantsList => "tenants.list",
            Self::ConversationsList => "conversations.list",
            Self::TokenGet => "token.get",
            Self::KeysList => "keys.list",
            Self::KeysCreate => "keys.create",
            Self::KeysRevoke => "keys.revoke",
            Self::AuditList => "audit.list",
            Self::NotificationsCreate => "notifications.create",
            Self::NotificationsGet => "notifications.get",
            Self::NotificationsCancel => "notifications.cancel",
            Self::GraphSubscriptionsList => "graph.subscriptions.list",
            Self::GraphSubscriptionsGet => "graph.subscriptions.get",
            Self::GraphSubscriptionsCreate => "graph.subscriptions.create",
            Self::GraphSubscriptionsDelete => "graph.subscriptions.delete",
            Self::GraphCredentialsGet => "graph.credentials.get",
            Self::GraphCredentialsSignIn => "graph.credentials.sign_in",
            Self::GraphAppsInstall => "graph.apps.install",
        }
    }

    pub fn permission(self) -> Permission {
        match self {
            Self::BotsList | Self::BotsGet => Permission::BotsRead,
            Self::BotsCreate | Self::BotsReplace | Self::BotsPatch | Self::BotsDelete => {
                Permission::BotsWrite
            }
            Self::TenantsList | Self::ConversationsList => Permission::ConversationsRead,
            Self::TokenGet => Permission::TokensRead,
            Self::KeysList | Self::KeysCreate | Self::KeysRevoke => Permission::Keys,
            Self::AuditList => Permission::AuditRead,
            Self::NotificationsCreate | Self::NotificationsCancel => Permission::NotificationsSend,
            Self::NotificationsGet => Permission::NotificationsRead,
            // A subscription acts as its bot: bot roles and scopes apply.
            Self::GraphSubscriptionsList | Self::GraphSubscriptionsGet => Permission::BotsRead,
            Self::GraphSubscriptionsCreate | Self::GraphSubscriptionsDelete => {
                Permission::BotsWrite
            }
            // A credential and an installation act as their bot.
            Self::GraphCredentialsGet => Permission::BotsRead,
            Self::GraphCredentialsSignIn | Self::GraphAppsInstall => Permission::BotsWrite,
        }
    }

    /// Changes state: audited whatever its outcome (reads are audited only
    /// when refused).
    pub fn mutating(self) -> bool {
        matches!(
            self,
            Self::BotsCreate
                | Self::BotsReplace
                | Self::BotsPatch
                | Self::BotsDelete
                | Self::KeysCreate
                | Self::KeysRevoke
                | Self::NotificationsCreate
                | Self::NotificationsCancel
                | Self::GraphSubscriptionsCreate
                | Self::GraphSubscriptionsDelete
                | Self::GraphCredentialsSignIn
                | Self::GraphAppsInstall
        )
    }
}

/// An authenticated key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub role: Role,
    /// `None` = every bot.
    pub bots: Option<Vec<String>>,
}

impl Principal {
    /// Whether the key's scope contains `bot`.
    pub fn reaches(&self, bot: &str) -> bool {
        self.bots
            .as_ref()
            .is_none_or(|bots| bots.iter().any(|b| b == bot))
    }

    /// `Ok` when this key may do `action` (on `bot`, for a bot's resource).
    fn check(&self, action: Action, bot: Option<&str>) -> Result<(), AdminError> {
        let permission = action.permission();
        if !permission.roles().contains(&self.role) {
            return Err(AdminError::Forbidden(format!(
                "key `{}` has role `{}`, which may not do `{}` (allowed: {})",
                self.key_id,
                self.role,
                action.name(),
                permission
                    .roles()
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if permission.needs_unscoped_key() && self.bots.is_some() {
            return Err(AdminError::Forbidden(format!(
                "key `{}` is scoped to bots; `{}` needs a key without a bot scope",
                self.key_id,
                action.name()
            )));
        }
        if let Some(bot) = bot {
            if !self.reaches(bot) {
                return Err(AdminError::Forbidden(format!(
                    "key `{}` is scoped to other bots than `{bot}`",
                    self.key_id
                )));
            }
        }
        Ok(())
    }
}

/// An authorized call: who, what, on what. Mutating handlers end it with
/// [`Call::finish`] so its outcome is audited.
#[derive(Debug)]
pub struct Call {
    pub principal: Principal,
    pub action: Action,
    pub target: Option<String>,
    request_id: String,
    client: Option<String>,
}

/// Authenticates the request and checks that its key may do `action` on
/// `target` (a bot id when `bot_scoped`, else e.g. a key id). Refusals (401,
/// 403, 429) are audited here.
pub async fn authorize(
    req: &HttpRequest,
    state: &AdminState,
    action: Action,
    target: Option<&str>,
    bot_scoped: bool,
) -> Result<Call, AdminError> {
    let request_id = RequestId::of(req);
    let peer = req.peer_addr().map(|a| a.ip());
    let mut call = Call {
        principal: Principal {
            key_id: String::new(),
            role: Role::Reader,
            bots: Some(Vec::new()),
        },
        action,
        target: target.map(str::to_string),
        request_id,
        client: peer.map(|ip| ip.to_string()),
    };

    if let Some(block) = state.limiter.blocked(peer) {
        let error = AdminError::RateLimited {
            retry_after: block.retry_after,
        };
        if block.first {
            tracing::warn!(client = ?call.client, retry_after_secs = block.retry_after.as_secs(), "admin API: too many failed authentications; refusing this address for a while");
            state
                .audit(call.entry(None, "denied", error.status()))
                .await;
        }
        return Err(error);
    }

    match authenticate(req, state).await {
        Ok(p) => call.principal = p,
        Err((key_id, error)) => {
            if matches!(error, AdminError::StoreUnavailable | AdminError::Internal) {
                return Err(error);
            }
            state.limiter.failed(peer);
            tracing::debug!(key_id = ?key_id, client = ?call.client, action = action.name(), check = error.problem_type().name, "admin API: authentication refused");
            let mut entry = call.entry(None, "denied", error.status());
            entry.key_id = key_id;
            state.audit(entry).await;
            return Err(error);
        }
    }

    let bot = if bot_scoped { target } else { None };
    if let Err(error) = call.principal.check(action, bot) {
        call.deny(state, &error).await;
        return Err(error);
    }
    Ok(call)
}

/// The key of the request, or the refusal and the public id of the key that
/// was refused (when it had the `bfk_` format).
async fn authenticate(
    req: &HttpRequest,
    state: &AdminState,
) -> Result<Principal, (Option<String>, AdminError)> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or((None, AdminError::MissingKey))?;
    let value = value.to_str().map_err(|_| (None, AdminError::InvalidKey))?;
    let (scheme, key) = value
        .split_once(' ')
        .ok_or((None, AdminError::MissingKey))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err((None, AdminError::MissingKey));
    }
    let key = key.trim();
    if key.is_empty() {
        return Err((None, AdminError::MissingKey));
    }
    if key.len() > MAX_KEY_LEN {
        return Err((None, AdminError::InvalidKey));
    }
    let presented = hash(key);
    if let Some(bootstrap) = &state.bootstrap {
        if bootstrap.matches(&presented) {
            return Ok(Principal {
                key_id: BOOTSTRAP_KEY_ID.into(),
                role: Role::Admin,
                bots: None,
            });
        }
    }
    let id = key_id_of(key).ok_or((None, AdminError::InvalidKey))?;
    let refused = |e: AdminError| (Some(id.to_string()), e);
    let record: ApiKeyRecord = state
        .keys
        .get(id)
        .await
        .map_err(|e| refused(AdminError::from(e)))?
        .ok_or_else(|| refused(AdminError::InvalidKey))?;
    let stored = hex::decode(&record.secret_hash).unwrap_or_default();
    if stored.len() != presented.len() || !bool::from(stored.as_slice().ct_eq(&presented)) {
        return Err(refused(AdminError::InvalidKey));
    }
    // The caller proved it holds the key: telling it why the key no longer
    // works reveals nothing it could not know.
    if record.revoked_at.is_some() {
        return Err(refused(AdminError::RevokedKey(record.id)));
    }
    if record.expires_at.is_some_and(|at| at <= now_ms()) {
        return Err(refused(AdminError::ExpiredKey(record.id)));
    }
    Ok(Principal {
        key_id: record.id,
        role: record.role,
        bots: record.bots,
    })
}

impl Call {
    fn entry(&self, principal: Option<&Principal>, outcome: &str, status: u16) -> AuditEntry {
        AuditEntry {
            id: String::new(),
            at: now_ms(),
            key_id: principal.map(|p| p.key_id.clone()),
            role: principal.map(|p| p.role),
            action: self.action.name().to_string(),
            target: self.target.clone(),
            outcome: outcome.into(),
            status,
            request_id: self.request_id.clone(),
            client: self.client.clone(),
        }
    }

    /// Audits (and logs) the refusal of an authenticated call.
    pub(crate) async fn deny(&self, state: &AdminState, error: &AdminError) {
        tracing::info!(key_id = %self.principal.key_id, role = %self.principal.role, action = self.action.name(), target = ?self.target, request_id = %self.request_id, "admin API: call refused");
        state
            .audit(self.entry(Some(&self.principal), "denied", error.status()))
            .await;
    }

    /// Audits the outcome of a mutating call and hands the result back.
    pub async fn finish<T>(
        &self,
        state: &AdminState,
        result: Result<T, AdminError>,
    ) -> Result<T, AdminError> {
        let (outcome, status) = match &result {
            Ok(_) => ("ok", self.ok_status()),
            Err(e) => ("error", e.status()),
        };
        tracing::info!(
            key_id = %self.principal.key_id,
            role = %self.principal.role,
            action = self.action.name(),
            target = ?self.target,
            outcome,
            status,
            request_id = %self.request_id,
            "admin API call"
        );
        state
            .audit(self.entry(Some(&self.principal), outcome, status))
            .await;
        result
    }

    /// The target the call ends on (a created key's id is known only then).
    pub fn set_target(&mut self, target: impl Into<String>) {
        self.target = Some(target.into());
    }

    fn ok_status(&self) -> u16 {
        match self.action {
            Action::BotsCreate | Action::KeysCreate | Action::GraphSubscriptionsCreate => 201,
            Action::NotificationsCreate => 202,
            Action::BotsDelete | Action::KeysRevoke | Action::GraphSubscriptionsDelete => 204,
            _ => 200,
        }
    }
}

/// The limiter's settings: at most `max_failures` failed authentications per
/// client address within `window`; beyond, the address is refused with 429
/// for `window`, whatever key it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureLimit {
    pub max_failures: u32,
    pub window: Duration,
}

impl Default for FailureLimit {
    fn default() -> Self {
        Self {
            max_failures: 20,
            window: Duration::from_secs(60),
        }
    }
}

/// A refusal by the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    pub retry_after: Duration,
    /// The first refusal of this block (audited; the rest are not).
    pub first: bool,
}

#[derive(Debug)]
struct AddressState {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
    refusals: u64,
}

/// Failed authentications per client address, in this process (each replica
/// counts its own: an attacker spread over N replicas gets N times the budget,
/// still far too little to guess a 256-bit secret).
///
/// Addresses are the TCP peer, never a forwarding header a client could forge;
/// IPv6 addresses count per /64, the block one host usually controls. At most
/// [`FailureLimiter::MAX_ADDRESSES`] are tracked: when full, expired entries
/// go first, then the oldest windows.
#[derive(Debug, Clone)]
pub struct FailureLimiter {
    limit: FailureLimit,
    state: Arc<Mutex<HashMap<Option<IpAddr>, AddressState>>>,
}

impl FailureLimiter {
    pub const MAX_ADDRESSES: usize = 65_536;

    pub fn new(limit: FailureLimit) -> Self {
        Self {
            limit,
            state: Arc::default(),
        }
    }

    fn key(addr: Option<IpAddr>) -> Option<IpAddr> {
        match addr {
            Some(IpAddr::V6(v6)) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return Some(IpAddr::V4(v4));
                }
                let s = v6.segments();
                Some(IpAddr::V6(std::net::Ipv6Addr::new(
                    s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                )))
            }
            other => other,
        }
    }

    /// `Some` while the address is refused.
    pub fn blocked(&self, addr: Option<IpAddr>) -> Option<Blocked> {
        let now = Instant::now();
        let mut map = self.state.lock();
        let entry = map.get_mut(&Self::key(addr))?;
        let until = entry.blocked_until?;
        if now >= until {
            if entry.refusals > 1 {
                tracing::info!(client = ?addr, refused = entry.refusals, "admin API: failed-authentication block over");
            }
            map.remove(&Self::key(addr));
            return None;
        }
        entry.refusals += 1;
        Some(Blocked {
            retry_after: until - now,
            first: entry.refusals == 1,
        })
    }

    /// Counts one failed authentication from `addr`.
    pub fn failed(&self, addr: Option<IpAddr>) {
        let now = Instant::now();
        let window = self.limit.window;
        let mut map = self.state.lock();
        let key = Self::key(addr);
        if map.len() >= Self::MAX_ADDRESSES && !map.contains_key(&key) {
            map.retain(|_, s| {
                s.blocked_until.is_some_and(|u| u > now) || now - s.window_start < window
            });
            while map.len() >= Self::MAX_ADDRESSES {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, s)| s.window_start)
                    .map(|(k, _)| *k);
                match oldest {
                    Some(k) => {
                        map.remove(&k);
                    }
                    None => break,
                }
            }
        }
        let entry = map.entry(key).or_insert(AddressState {
            window_start: now,
            failures: 0,
            blocked_until: None,
            refusals: 0,
        });
        if now - entry.window_start >= window {
            entry.window_start = now;
            entry.failures = 0;
        }
        entry.failures += 1;
        if entry.failures >= self.limit.max_failures && entry.blocked_until.is_none() {
            entry.blocked_until = Some(now + window);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let k = generate_key();
        let key = k.key.expose();
        assert_eq!(key_id_of(key), Some(k.id.as_str()));
        assert_eq!(k.id.len(), KEY_PREFIX.len() + KEY_ID_LEN);
        assert_eq!(key.len(), k.id.len() + 1 + 43);
        assert_eq!(k.secret_hash, hash_hex(key));
        assert_eq!(k.secret_hash.len(), 64);
        assert_ne!(generate_key().id, k.id);
    }

    #[test]
    fn key_ids_are_parsed_strictly() {
        assert_eq!(key_id_of("bfk_abcdefgh_xyz"), Some("bfk_abcdefgh"));
        for bad in [
            "bfk_abcdefg_xyz",
            "bfk_ABCDEFGH_xyz",
            "bfk_abcdefgh",
            "bfk_abcdefghx",
            "bfk_abcdefg1_x",
            "xyz",
            "bfk_é",
        ] {
            assert_eq!(key_id_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn bootstrap_key_must_be_long() {
        assert!(BootstrapKey::new(&botfleet_auth::Secret::new("short")).is_err());
        let long = "x".repeat(MIN_BOOTSTRAP_KEY_LEN);
        let b = BootstrapKey::new(&botfleet_auth::Secret::new(long.clone())).expect("long enough");
        assert!(b.matches(&hash(&long)));
        assert!(!b.matches(&hash("y")));
        assert!(!format!("{b:?}").contains(&long));
    }

    #[test]
    fn limiter_blocks_one_address_only() {
        let l = FailureLimiter::new(FailureLimit {
            max_failures: 3,
            window: Duration::from_secs(60),
        });
        let a = Some("10.0.0.1".parse().expect("ip"));
        let b = Some("10.0.0.2".parse().expect("ip"));
        for _ in 0..2 {
            l.failed(a);
            assert!(l.blocked(a).is_none());
        }
        l.failed(a);
        let first = l.blocked(a).expect("blocked");
        assert!(first.first && first.retry_after <= Duration::from_secs(60));
        assert!(!l.blocked(a).expect("still blocked").first);
        assert!(l.blocked(b).is_none());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let l = FailureLimiter::new(FailureLimit {
            max_failures: 2,
            window: Duration::from_secs(60),
        });
        l.failed(Some("2001:db8::1".parse().expect("ip")));
        l.failed(Some("2001:db8::2".parse().expect("ip")));
        assert!(l
            .blocked(Some("2001:db8::3".parse().expect("ip")))
            .is_some());
        assert!(l
            .blocked(Some("2001:db9::3".parse().expect("ip")))
            .is_none());
    }

    #[test]
    fn roles_table() {
        use Role::*;
        let p = |role, bots: Option<Vec<&str>>| Principal {
            key_id: "k".into(),
            role,
            bots: bots.map(|b| b.into_iter().map(String::from).collect()),
        };
        assert!(p(Sender, None)
            .check(Action::BotsCreate, Some("a"))
            .is_err());
        assert!(p(Sender, None).check(Action::BotsGet, Some("a")).is_ok());
        assert!(p(Reader, None).check(Action::TokenGet, Some("a")).is_ok());
        assert!(p(Operator, None).check(Action::KeysCreate, None).is_err());
        assert!(p(Operator, None)
            .check(Action::BotsDelete, Some("a"))
            .is_ok());
        assert!(p(Operator, Some(vec!["a"]))
            .check(Action::BotsGet, Some("b"))
            .is_err());
        assert!(p(Operator, Some(vec!["a"]))
            .check(Action::BotsGet, Some("a"))
            .is_ok());
        assert!(p(Admin, Some(vec!["a"]))
            .check(Action::KeysList, None)
            .is_err());
        assert!(p(Admin, None).check(Action::KeysList, None).is_ok());
    }
}
