//! Delegated Graph access for a service integration user (docs/graph.md,
//! "Delegated access"): an operator signs the user in once through the OAuth
//! 2.0 authorization-code flow with PKCE; botfleet then keeps an access token
//! by refreshing it, on every replica, without the user.
//!
//! - **Sign-in** ([`DelegatedService::begin_sign_in`],
//!   [`DelegatedService::complete_sign_in`]): a random `state` (single use,
//!   [`DelegatedConfig::sign_in_ttl`], bound to the credential it was made
//!   for) and a PKCE S256 verifier are stored; the user's browser comes back
//!   to the admin listener's callback with `code` and `state`; the code is
//!   redeemed with the verifier.
//! - **At rest**: the refresh token and the cached access token are sealed
//!   with AES-256-GCM ([`seal`]); the store never holds a usable token.
//! - **Rotation**: Entra returns a new refresh token with every refresh
//!   (https://learn.microsoft.com/entra/identity-platform/refresh-tokens);
//!   botfleet stores it at once by compare-and-set on the record's version,
//!   so an older token never overwrites a newer one.
//! - **Single flight**: in a process one refresh per credential at a time;
//!   across replicas the refresh runs under the store lease `cred:{name}`
//!   and the others wait for the access token it stores (sealed).
//! - **Access tokens** are used until [`DelegatedConfig::refresh_margin`]
//!   (5 min) before their expiry.
//! - **Failures**: a refresh token Entra refuses for good (revoked consent,
//!   expired, unknown) marks the credential (`consent_revoked`,
//!   `refresh_expired`, `refresh_invalid`), logs an error naming the command
//!   that fixes it, marks every subscription that uses the credential
//!   (state fields `credential_status` and `last_error`), and stops calling
//!   Entra with that token until a new sign-in.

pub mod oauth;
pub mod seal;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use botfleet_auth::Secret;
use botfleet_store::graph::credentials::{CredentialRecord, CredentialStore};
use botfleet_store::graph::{GraphStore, GraphStoreError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::time::{now_ms, rfc3339};
pub use oauth::{FailureReason, OAuthClient, OAuthError};
pub use seal::{SealError, SealKeys};

/// Fields of a credential record (sealed values are `v1.<kid>.<data>`).
pub mod field {
    /// Sealed refresh token.
    pub const REFRESH: &str = "rt";
    /// Sealed access token and its expiry (ms since the Unix epoch, local clock).
    pub const ACCESS: &str = "at";
    pub const ACCESS_EXPIRES: &str = "at_exp_ms";
    /// `ok`, or a [`super::FailureReason`] that needs a new sign-in.
    pub const STATUS: &str = "status";
    pub const SIGNED_IN: &str = "signed_in_ms";
    pub const USER: &str = "user";
    pub const LAST_REFRESH: &str = "last_refresh_ms";
    pub const LAST_ERROR: &str = "last_error";
    pub const LAST_ERROR_AT: &str = "last_error_ms";
    pub const REFRESHES: &str = "refreshes";
}

/// Subscription state fields this module writes (the admin API shows them).
pub mod subscription_field {
    /// The delegated credential's failure (`consent_revoked`, ...); empty once it works.
    pub const CREDENTIAL_STATUS: &str = "credential_status";
}

/// What one configured credential is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegatedCredential {
    /// botfleet's name: 1 to 64 of `[A-Za-z0-9._-]`.
    pub name: String,
    /// The bot whose app registration is the OAuth client.
    pub bot: String,
    /// The tenant the user signs in to.
    pub tenant_id: String,
    /// Delegated permissions, e.g. `https://graph.microsoft.com/ChatMessage.Read`;
    /// `offline_access` is always added (no refresh token without it).
    pub scopes: Vec<String>,
}

impl DelegatedCredential {
    /// The scope parameter: the scopes plus `offline_access`, space separated.
    pub fn scope(&self) -> String {
        let mut s: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        if !s.contains(&"offline_access") {
            s.push("offline_access");
        }
        s.join(" ")
    }
}

/// Tuning; [`Default`] is the production value.
#[derive(Debug, Clone)]
pub struct DelegatedConfig {
    /// A cached access token is replaced this long before its expiry.
    pub refresh_margin: Duration,
    /// The cross-replica refresh lease.
    pub lease: Duration,
    /// How long a caller waits for another replica's refresh.
    pub wait: Duration,
    /// Lifetime of a sign-in `state` (and its PKCE verifier).
    pub sign_in_ttl: Duration,
}

impl Default for DelegatedConfig {
    fn default() -> Self {
        Self {
            refresh_margin: Duration::from_secs(300),
            lease: Duration::from_secs(30),
            wait: Duration::from_secs(30),
            sign_in_ttl: Duration::from_secs(600),
        }
    }
}

/// Why a delegated operation failed. Messages say what to do; never a token.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DelegatedError {
    #[error("no delegated Graph credential `{0}` is configured ([[graph_auth.credentials]])")]
    UnknownCredential(String),
    #[error("delegated credential `{0}` was never signed in: run `botfleet graph sign-in {0}` and open the URL it prints as the integration user")]
    NeverSignedIn(String),
    #[error("delegated credential `{name}` needs a new sign-in ({}): {detail}; run `botfleet graph sign-in {name}`", reason.as_str())]
    NeedsSignIn {
        name: String,
        reason: FailureReason,
        detail: String,
    },
    #[error("delegated credential `{name}`: the token request failed ({}): {detail}", reason.as_str())]
    Refresh {
        name: String,
        reason: FailureReason,
        detail: String,
    },
    #[error("the sign-in state is unknown, expired or already used (a state lives {minutes} minutes and works once): start the sign-in again with `botfleet graph sign-in NAME`")]
    UnknownState { minutes: u64 },
    #[error("the sign-in state was issued for credential `{issued_for}`, not `{called}`: open the URL `botfleet graph sign-in {issued_for}` printed")]
    StateMismatch { issued_for: String, called: String },
    #[error("the sign-in was refused by the identity provider: {0}")]
    Denied(String),
    #[error("delegated credential `{0}`: another replica is refreshing it and did not finish in time; retry")]
    Busy(String),
    #[error("the credential store is unavailable: {0}")]
    Store(String),
    #[error("delegated credential `{name}`: the stored token does not open: {detail} (is graph_auth.token_key the key it was sealed with? keep the old one as previous_token_key while rotating)")]
    Decrypt { name: String, detail: String },
}

impl From<GraphStoreError> for DelegatedError {
    fn from(e: GraphStoreError) -> Self {
        Self::Store(e.to_string())
    }
}

impl DelegatedError {
    /// The failure counter's reason, for failures of a token request.
    pub fn reason(&self) -> Option<FailureReason> {
        match self {
            Self::NeedsSignIn { reason, .. } | Self::Refresh { reason, .. } => Some(*reason),
            Self::Decrypt { .. } => Some(FailureReason::Decrypt),
            Self::Store(_) => Some(FailureReason::Store),
            _ => None,
        }
    }
}

/// A sign-in in progress: the URL for the user's browser.
#[derive(Debug, Clone, Serialize)]
pub struct SignIn {
    pub url: String,
    /// The callback URL the app registration must list as a redirect URI.
    pub redirect_uri: String,
    /// When the state stops working (RFC 3339).
    pub expires_at: String,
}

/// A credential as the admin API shows it (no token).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CredentialStatus {
    pub name: String,
    pub bot: String,
    pub tenant_id: String,
    pub scopes: Vec<String>,
    /// `ok`, `never_signed_in`, `consent_revoked`, `refresh_expired`, `refresh_invalid`.
    pub status: String,
    /// The signed-in user's object id (from the access token), when known.
    pub user: Option<String>,
    pub signed_in_at: Option<String>,
    pub last_refresh: Option<String>,
    pub access_token_expires_at: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// Refreshes since the sign-in.
    pub refreshes: u64,
    /// The record's version (grows with every sign-in and refresh).
    pub version: u64,
}

/// Counters of this replica, for `/metrics`.
#[derive(Debug, Default)]
pub struct DelegatedCounters {
    pub refreshes: AtomicU64,
    pub sign_ins: AtomicU64,
    /// Refreshes that waited for another replica's token instead of calling Entra.
    pub shared: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
}

impl DelegatedCounters {
    /// Refresh failures by reason ([`FailureReason::as_str`]).
    pub fn refresh_failures(&self) -> BTreeMap<&'static str, u64> {
        self.failures.lock().clone()
    }
    fn fail(&self, r: FailureReason) {
        *self.failures.lock().entry(r.as_str()).or_default() += 1;
    }
}

#[derive(Serialize, Deserialize)]
struct SignInState {
    credential: String,
    /// Sealed PKCE verifier.
    verifier: String,
    redirect_uri: String,
}

struct Cred {
    spec: DelegatedCredential,
    client: OAuthClient,
    cached: Mutex<Option<(Secret, u64)>>,
    flight: tokio::sync::Mutex<()>,
}

/// The delegated credentials of one replica.
pub struct DelegatedService {
    creds: HashMap<String, Arc<Cred>>,
    store: Arc<dyn CredentialStore>,
    graph: Arc<dyn GraphStore>,
    keys: SealKeys,
    config: DelegatedConfig,
    owner: String,
    counters: DelegatedCounters,
}

fn ctx(name: &str, f: &str) -> String {
    format!("botfleet-graph-credential:{name}:{f}")
}

fn num(r: &CredentialRecord, f: &str) -> Option<u64> {
    r.fields.get(f).and_then(|v| v.parse().ok())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The `oid` (else `upn`) claim of a JWT access token, for display only (not
/// verified: the token came straight from the token endpoint over TLS).
fn user_of(token: &Secret) -> Option<String> {
    let payload = token.expose().split('.').nth(1)?;
    let v: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    v.get("oid")
        .or_else(|| v.get("upn"))
        .and_then(|x| x.as_str())
        .map(str::to_owned)
}

impl DelegatedService {
    /// `owner` names this replica in leases; `graph` is the subscription
    /// store (leases, and the subscriptions marked on failure).
    pub fn new(
        credentials: Vec<(DelegatedCredential, OAuthClient)>,
        store: Arc<dyn CredentialStore>,
        graph: Arc<dyn GraphStore>,
        keys: SealKeys,
        config: DelegatedConfig,
        owner: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            creds: credentials
                .into_iter()
                .map(|(spec, client)| {
                    (
                        spec.name.clone(),
                        Arc::new(Cred {
                            spec,
                            client,
                            cached: Mutex::new(None),
                            flight: tokio::sync::Mutex::new(()),
                        }),
                    )
                })
                .collect(),
            store,
            graph,
            keys,
            config,
            owner,
            counters: DelegatedCounters::default(),
        })
    }

    pub fn counters(&self) -> &DelegatedCounters {
        &self.counters
    }

    /// Names of the configured credentials, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.creds.keys().cloned().collect();
        v.sort();
        v
    }

    fn cred(&self, name: &str) -> Result<&Arc<Cred>, DelegatedError> {
        self.creds
            .get(name)
            .ok_or_else(|| DelegatedError::UnknownCredential(name.to_owned()))
    }

    /// Starts a sign-in: stores a fresh `state` and PKCE verifier and returns
    /// the authorize URL. `redirect_uri` is the admin listener's callback of
    /// this credential (`.../admin/v1/graph/credentials/{name}/callback`).
    pub async fn begin_sign_in(
        &self,
        name: &str,
        redirect_uri: &str,
    ) -> Result<SignIn, DelegatedError> {
        let c = self.cred(name)?;
        let (verifier, challenge) = oauth::new_pkce();
        let state = oauth::new_state();
        let payload = SignInState {
            credential: name.to_owned(),
            verifier: self
                .keys
                .seal(&ctx(name, "pkce"), verifier.expose().as_bytes()),
            redirect_uri: redirect_uri.to_owned(),
        };
        let json =
            serde_json::to_string(&payload).map_err(|e| DelegatedError::Store(e.to_string()))?;
        let now = now_ms();
        self.store
            .put_signin(&state, &json, ms(self.config.sign_in_ttl), now)
            .await?;
        tracing::info!(credential = %name, "Graph delegated sign-in started; waiting for the callback");
        Ok(SignIn {
            url: c
                .client
                .sign_in_url(redirect_uri, &c.spec.scope(), &state, &challenge),
            redirect_uri: redirect_uri.to_owned(),
            expires_at: rfc3339(now + ms(self.config.sign_in_ttl)),
        })
    }

    /// The callback: checks `state` (known, unexpired, unused, made for
    /// `name`), redeems `code` with the verifier and stores the tokens.
    /// `error` is the callback's `error`/`error_description` when the
    /// identity provider refused. Returns the new status.
    pub async fn complete_sign_in(
        &self,
        name: &str,
        state: &str,
        code: Option<&str>,
        error: Option<String>,
    ) -> Result<CredentialStatus, DelegatedError> {
        let c = self.cred(name)?.clone();
        let minutes = self.config.sign_in_ttl.as_secs() / 60;
        let taken = self.store.take_signin(state, now_ms()).await?;
        let Some(json) = taken else {
            tracing::warn!(credential = %name, "Graph delegated sign-in callback with an unknown, expired or used state");
            return Err(DelegatedError::UnknownState { minutes });
        };
        let st: SignInState =
            serde_json::from_str(&json).map_err(|_| DelegatedError::UnknownState { minutes })?;
        if st.credential != name {
            return Err(DelegatedError::StateMismatch {
                issued_for: st.credential,
                called: name.to_owned(),
            });
        }
        if let Some(e) = error {
            tracing::warn!(credential = %name, error = %e, "Graph delegated sign-in refused by the identity provider");
            return Err(DelegatedError::Denied(e));
        }
        let Some(code) = code.filter(|c| !c.is_empty()) else {
            return Err(DelegatedError::Denied(
                "the callback carried no `code`".into(),
            ));
        };
        let verifier = self
            .keys
            .open(&ctx(name, "pkce"), &st.verifier)
            .map_err(|e| DelegatedError::Decrypt {
                name: name.to_owned(),
                detail: e.to_string(),
            })?;
        let verifier = Secret::new(String::from_utf8_lossy(&verifier).into_owned());
        let grant = c
            .client
            .redeem_code(code, &verifier, &st.redirect_uri, &c.spec.scope())
            .await
            .map_err(|e| DelegatedError::Denied(e.to_string()))?;
        let Some(rt) = grant.refresh_token.clone() else {
            return Err(DelegatedError::Denied(
                "the token endpoint returned no refresh token (the scope must include offline_access)".into(),
            ));
        };
        let now = now_ms();
        let exp = now + ms(grant.expires_in);
        let mut fields = self.token_fields(name, &rt, &grant.access_token, exp);
        fields.extend([
            (field::STATUS, "ok".to_owned()),
            (field::SIGNED_IN, now.to_string()),
            (
                field::USER,
                user_of(&grant.access_token).unwrap_or_default(),
            ),
            (field::LAST_REFRESH, now.to_string()),
            (field::LAST_ERROR, String::new()),
            (field::LAST_ERROR_AT, String::new()),
            (field::REFRESHES, "0".to_owned()),
        ]);
        // A sign-in is the newest token by definition: retry the
        // compare-and-set until it lands.
        loop {
            let rec = self.store.get_credential(name).await?;
            if self
                .store
                .replace_credential(name, rec.version, &fields)
                .await?
                .is_some()
            {
                break;
            }
        }
        *c.cached.lock() = Some((grant.access_token.clone(), exp));
        self.counters.sign_ins.fetch_add(1, Relaxed);
        self.mark_subscriptions(name, None).await;
        tracing::info!(credential = %name, "Graph delegated credential signed in; its refresh token is stored encrypted");
        self.status(name).await
    }

    fn token_fields(
        &self,
        name: &str,
        rt: &Secret,
        at: &Secret,
        exp: u64,
    ) -> Vec<(&'static str, String)> {
        vec![
            (
                field::REFRESH,
                self.keys
                    .seal(&ctx(name, field::REFRESH), rt.expose().as_bytes()),
            ),
            (
                field::ACCESS,
                self.keys
                    .seal(&ctx(name, field::ACCESS), at.expose().as_bytes()),
            ),
            (field::ACCESS_EXPIRES, exp.to_string()),
        ]
    }

    fn open(&self, name: &str, f: &str, sealed: &str) -> Result<Secret, DelegatedError> {
        self.keys
            .open(&ctx(name, f), sealed)
            .map(|b| Secret::new(String::from_utf8_lossy(&b).into_owned()))
            .map_err(|e| DelegatedError::Decrypt {
                name: name.to_owned(),
                detail: e.to_string(),
            })
    }

    /// A stored access token still good for `refresh_margin`.
    fn fresh_access(&self, name: &str, rec: &CredentialRecord) -> Option<(Secret, u64)> {
        let exp = num(rec, field::ACCESS_EXPIRES)?;
        if exp <= now_ms() + ms(self.config.refresh_margin) {
            return None;
        }
        let t = self
            .open(name, field::ACCESS, rec.fields.get(field::ACCESS)?)
            .ok()?;
        Some((t, exp))
    }

    /// A delegated access token for Graph as the credential's user: cached
    /// until 5 minutes before expiry, else refreshed (once across replicas).
    pub async fn access_token(&self, name: &str) -> Result<Secret, DelegatedError> {
        self.token(name, false).await
    }

    /// Refreshes now (an operator's check that the credential works): one
    /// refresh however many replicas are asked at once; callers that find a
    /// refresh newer than their request take its token.
    pub async fn refresh_now(&self, name: &str) -> Result<CredentialStatus, DelegatedError> {
        self.token(name, true).await?;
        self.status(name).await
    }

    async fn token(&self, name: &str, force: bool) -> Result<Secret, DelegatedError> {
        let c = self.cred(name)?.clone();
        let margin = ms(self.config.refresh_margin);
        let cached_ok = || {
            c.cached
                .lock()
                .clone()
                .filter(|(_, exp)| !force && *exp > now_ms() + margin)
                .map(|(t, _)| t)
        };
        if let Some(t) = cached_ok() {
            return Ok(t);
        }
        // The version before this request: a refresh that raised it was done
        // after the request was made and serves it too.
        let asked_at = self.store.get_credential(name).await?.version;
        let _one = c.flight.lock().await;
        if let Some(t) = cached_ok() {
            return Ok(t);
        }
        let r = self.refresh_shared(&c, force.then_some(asked_at)).await;
        if let Err(e) = &r {
            if let Some(reason) = e.reason() {
                self.counters.fail(reason);
            }
        }
        r
    }

    /// Forgets the cached access token (Graph answered 401 with it); the
    /// next [`Self::access_token`] refreshes.
    pub async fn invalidate(&self, name: &str, rejected: &Secret) -> Result<(), DelegatedError> {
        let c = self.cred(name)?;
        {
            let mut g = c.cached.lock();
            if g.as_ref()
                .is_some_and(|(t, _)| t.expose() == rejected.expose())
            {
                *g = None;
            }
        }
        let rec = self.store.get_credential(name).await?;
        if let Some(s) = rec.fields.get(field::ACCESS) {
            if self
                .open(name, field::ACCESS, s)
                .is_ok_and(|t| t.expose() == rejected.expose())
            {
                self.store
                    .set_credential_fields(name, &[(field::ACCESS_EXPIRES, "0".into())])
                    .await?;
            }
        }
        Ok(())
    }

    /// `forced`: the record version when a forced refresh was asked for; a
    /// stored access token counts only once the version moved past it.
    async fn refresh_shared(
        &self,
        c: &Cred,
        forced: Option<u64>,
    ) -> Result<Secret, DelegatedError> {
        let name = c.spec.name.as_str();
        let lease = format!("cred:{name}");
        let deadline = now_ms() + ms(self.config.wait);
        let mut waited = false;
        loop {
            let rec = self.store.get_credential(name).await?;
            let newer = forced.is_none_or(|v| rec.version > v);
            if let Some((t, exp)) = self.fresh_access(name, &rec).filter(|_| newer) {
                if waited {
                    self.counters.shared.fetch_add(1, Relaxed);
                }
                *c.cached.lock() = Some((t.clone(), exp));
                return Ok(t);
            }
            self.check_usable(name, &rec)?;
            if self
                .graph
                .lease(&lease, &self.owner, ms(self.config.lease), now_ms())
                .await?
            {
                let r = self.refresh_held(c, forced).await;
                if let Err(e) = self.graph.release(&lease, &self.owner).await {
                    tracing::debug!(credential = %name, error = %e, "lease release failed; it expires");
                }
                return r;
            }
            if now_ms() >= deadline {
                return Err(DelegatedError::Busy(name.to_owned()));
            }
            waited = true;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Refuses to call Entra with a refresh token it refused for good.
    fn check_usable(&self, name: &str, rec: &CredentialRecord) -> Result<(), DelegatedError> {
        if !rec.fields.contains_key(field::REFRESH) {
            return Err(DelegatedError::NeverSignedIn(name.to_owned()));
        }
        if let Some(reason) = rec
            .fields
            .get(field::STATUS)
            .and_then(|s| FailureReason::parse(s))
            .filter(|r| r.needs_sign_in())
        {
            return Err(DelegatedError::NeedsSignIn {
                name: name.to_owned(),
                reason,
                detail: rec
                    .fields
                    .get(field::LAST_ERROR)
                    .cloned()
                    .unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Under the lease: refresh and store the rotated tokens.
    async fn refresh_held(&self, c: &Cred, forced: Option<u64>) -> Result<Secret, DelegatedError> {
        let name = c.spec.name.as_str();
        // Another replica may have finished just before the lease was ours.
        let rec = self.store.get_credential(name).await?;
        let newer = forced.is_none_or(|v| rec.version > v);
        if let Some((t, exp)) = self.fresh_access(name, &rec).filter(|_| newer) {
            self.counters.shared.fetch_add(1, Relaxed);
            *c.cached.lock() = Some((t.clone(), exp));
            return Ok(t);
        }
        self.check_usable(name, &rec)?;
        let sealed = rec.fields.get(field::REFRESH).cloned().unwrap_or_default();
        let rt = self.open(name, field::REFRESH, &sealed)?;
        match c.client.refresh(&rt, &c.spec.scope()).await {
            Ok(grant) => {
                let now = now_ms();
                let exp = now + ms(grant.expires_in);
                // Entra rotates refresh tokens; keep the old one if none came.
                let new_rt = grant.refresh_token.clone().unwrap_or(rt);
                let mut fields = self.token_fields(name, &new_rt, &grant.access_token, exp);
                fields.extend([
                    (field::STATUS, "ok".to_owned()),
                    (field::LAST_REFRESH, now.to_string()),
                    (field::LAST_ERROR, String::new()),
                    (field::LAST_ERROR_AT, String::new()),
                    (
                        field::REFRESHES,
                        (num(&rec, field::REFRESHES).unwrap_or(0) + 1).to_string(),
                    ),
                ]);
                match self
                    .store
                    .replace_credential(name, rec.version, &fields)
                    .await?
                {
                    Some(v) => {
                        tracing::info!(credential = %name, version = v, expires_in_s = grant.expires_in.as_secs(), "Graph delegated token refreshed; the rotated refresh token is stored");
                    }
                    None => {
                        // Our lease lapsed and someone stored a newer token:
                        // keep theirs (never overwrite newer with older).
                        tracing::warn!(credential = %name, "Graph delegated token refreshed but a newer one was stored meanwhile; kept the newer one");
                    }
                }
                self.counters.refreshes.fetch_add(1, Relaxed);
                *c.cached.lock() = Some((grant.access_token.clone(), exp));
                Ok(grant.access_token)
            }
            Err(e) => Err(self.failed(name, &rec, e).await),
        }
    }

    async fn failed(&self, name: &str, rec: &CredentialRecord, e: OAuthError) -> DelegatedError {
        let now = now_ms();
        let detail = e.to_string();
        let mut fields = vec![
            (field::LAST_ERROR, detail.clone()),
            (field::LAST_ERROR_AT, now.to_string()),
        ];
        if e.reason.needs_sign_in() {
            fields.push((field::STATUS, e.reason.as_str().to_owned()));
            // Only if nobody signed in meanwhile (same version): a new
            // sign-in's status stays `ok`.
            let current = self.store.get_credential(name).await.ok();
            if current.is_some_and(|r| r.version == rec.version) {
                if let Err(se) = self.store.set_credential_fields(name, &fields).await {
                    tracing::warn!(credential = %name, error = %se, "cannot record the credential's status");
                }
                self.mark_subscriptions(name, Some((e.reason, &detail)))
                    .await;
            }
            tracing::error!(credential = %name, reason = e.reason.as_str(), error = %detail, "Graph delegated credential needs a new sign-in: run `botfleet graph sign-in {name}`; its subscriptions cannot be renewed until then");
            return DelegatedError::NeedsSignIn {
                name: name.to_owned(),
                reason: e.reason,
                detail,
            };
        }
        if let Err(se) = self.store.set_credential_fields(name, &fields).await {
            tracing::warn!(credential = %name, error = %se, "cannot record the credential's last error");
        }
        tracing::warn!(credential = %name, reason = e.reason.as_str(), error = %detail, "Graph delegated token refresh failed; retried on next use");
        DelegatedError::Refresh {
            name: name.to_owned(),
            reason: e.reason,
            detail,
        }
    }

    /// Marks (or, with `None`, clears the mark of) every subscription whose
    /// definition names this credential (`"credential": {"kind":
    /// "delegated", "name": ...}`).
    async fn mark_subscriptions(&self, name: &str, failure: Option<(FailureReason, &str)>) {
        let subs = match self.graph.list_subscriptions().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(credential = %name, error = %e, "cannot list the subscriptions to mark");
                return;
            }
        };
        let now = now_ms().to_string();
        for s in subs {
            let uses = serde_json::from_str::<serde_json::Value>(&s.spec_json)
                .ok()
                .is_some_and(|v| credential_of(&v) == Some(name));
            if !uses {
                continue;
            }
            let fields: Vec<(&str, String)> = match failure {
                Some((reason, detail)) => vec![
                    (
                        subscription_field::CREDENTIAL_STATUS,
                        reason.as_str().to_owned(),
                    ),
                    (
                        crate::service::field::LAST_ERROR,
                        format!(
                            "delegated credential `{name}` needs a new sign-in ({}): {detail}",
                            reason.as_str()
                        ),
                    ),
                    (crate::service::field::LAST_ERROR_AT, now.clone()),
                ],
                None => vec![(subscription_field::CREDENTIAL_STATUS, String::new())],
            };
            if let Err(e) = self.graph.set_state(&s.id, &fields).await {
                tracing::warn!(credential = %name, subscription = %s.id, error = %e, "cannot mark the subscription");
            } else if failure.is_some() {
                tracing::error!(credential = %name, subscription = %s.id, "Graph subscription marked: its delegated credential needs a new sign-in");
            }
        }
    }

    /// The status of one credential.
    pub async fn status(&self, name: &str) -> Result<CredentialStatus, DelegatedError> {
        let c = self.cred(name)?;
        let rec = self.store.get_credential(name).await?;
        let t = |f: &str| num(&rec, f).filter(|v| *v > 0).map(rfc3339);
        let status = if !rec.fields.contains_key(field::REFRESH) {
            "never_signed_in".to_owned()
        } else {
            rec.fields
                .get(field::STATUS)
                .cloned()
                .unwrap_or_else(|| "ok".to_owned())
        };
        Ok(CredentialStatus {
            name: name.to_owned(),
            bot: c.spec.bot.clone(),
            tenant_id: c.spec.tenant_id.clone(),
            scopes: c.spec.scopes.clone(),
            status,
            user: rec.fields.get(field::USER).cloned(),
            signed_in_at: t(field::SIGNED_IN),
            last_refresh: t(field::LAST_REFRESH),
            access_token_expires_at: t(field::ACCESS_EXPIRES),
            last_error: rec.fields.get(field::LAST_ERROR).cloned(),
            last_error_at: t(field::LAST_ERROR_AT),
            refreshes: num(&rec, field::REFRESHES).unwrap_or(0),
            version: rec.version,
        })
    }

    /// Every credential's status, by name.
    pub async fn statuses(&self) -> Result<Vec<CredentialStatus>, DelegatedError> {
        let mut out = Vec::new();
        for n in self.names() {
            out.push(self.status(&n).await?);
        }
        Ok(out)
    }
}

/// The delegated credential a subscription definition names
/// (`"credential": {"kind": "delegated", "name": "..."}`), if any.
pub fn credential_of(spec: &serde_json::Value) -> Option<&str> {
    let c = spec.get("credential")?;
    if c.get("kind")?.as_str()? != "delegated" {
        return None;
    }
    c.get("name")?.as_str()
}

/// Checks a credential name: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
