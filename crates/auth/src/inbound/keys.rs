//! The signing keys of one OpenID metadata URL (one cloud, or several clouds that
//! share it, like gcch and dod).
//!
//! Keys are fetched metadata -> `jwks_uri` -> JWKS. A failed refresh never throws
//! away keys that worked: Teams keeps signing with known keys, and a JWKS outage
//! must not turn into an outage of every bot. Refreshes are single flight so a
//! burst of tokens with a new `kid` costs one fetch, not one per request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::DecodingKey;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Biggest metadata or JWKS document accepted; the real ones are a few KiB.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// One RSA signing key from the JWKS.
pub(crate) struct SigningKey {
    pub(crate) kid: String,
    n: String,
    e: String,
    /// Channel ids this key may sign for; `None` when the JWK had no list.
    pub(crate) endorsements: Option<Vec<String>>,
    pub(crate) decoding: DecodingKey,
}

impl SigningKey {
    /// True when the JWK has no endorsements list, or an empty one. Microsoft's
    /// SDKs check endorsements only when the list is present and non-empty
    /// (botbuilder-js `JwtTokenExtractor.validateToken`,
    /// <https://github.com/microsoft/botbuilder-js/blob/main/libraries/botframework-connector/src/auth/jwtTokenExtractor.ts>);
    /// botfleet refuses such keys unless the cloud is named in
    /// `auth.accept_keys_without_endorsements`.
    pub(crate) fn lacks_endorsements(&self) -> bool {
        self.endorsements.as_ref().is_none_or(|e| e.is_empty())
    }

    /// Same key material and endorsements (a refresh builds new `Arc`s, so a
    /// cached token compares by value to know its key is still published).
    pub(crate) fn same_as(&self, other: &SigningKey) -> bool {
        self.kid == other.kid
            && self.n == other.n
            && self.e == other.e
            && self.endorsements == other.endorsements
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("endorsements", &self.endorsements)
            .finish_non_exhaustive()
    }
}

/// Why fetching keys failed. Names the URL and what was wrong with it; none of
/// these documents are secret.
#[derive(Debug, Error)]
pub(crate) enum FetchError {
    #[error("GET {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url} is not the expected JSON document: {reason}")]
    Json { url: String, reason: String },
    #[error("jwks_uri `{jwks_uri}` of https metadata `{url}` is not https")]
    InsecureJwksUri { url: String, jwks_uri: String },
    #[error("{url} holds no usable RS256 signing key (kty RSA with kid, n, e)")]
    NoUsableKeys { url: String },
}

#[derive(Deserialize)]
struct Metadata {
    jwks_uri: String,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    endorsements: Option<Vec<String>>,
}

/// Keys by `kid`.
type KeySet = HashMap<String, Arc<SigningKey>>;

/// Readiness view of one key store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyStoreStatus {
    pub metadata_url: String,
    /// Names of the clouds using this metadata URL.
    pub clouds: Vec<String>,
    /// Keys currently usable (the last good set).
    pub key_count: usize,
    /// False until a fetch has succeeded once; validation answers 503 until then.
    pub loaded: bool,
    /// Unix ms of the last successful refresh.
    pub last_success_unix_ms: Option<u64>,
    /// Unix ms of the last refresh attempt, successful or not.
    pub last_attempt_unix_ms: Option<u64>,
    /// The error of the last attempt, `None` when it succeeded.
    pub last_error: Option<String>,
    /// Refresh attempts since start.
    pub refreshes: u64,
    /// Keys of the current set without an endorsements list (or with an empty
    /// one): they endorse nothing unless the cloud accepts such keys.
    pub keys_without_endorsements: usize,
    /// Successful fetches since start whose key set contained such keys.
    pub fetches_with_keys_without_endorsements: u64,
}

/// What one call of [`KeyStore::refresh`] did; the unknown-`kid` answer says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshOutcome {
    /// This call fetched: `ok` is false when the fetch failed (last good keys kept).
    Fetched { ok: bool },
    /// Another caller's fetch finished while this one waited; its keys are current.
    Joined,
    /// Skipped by the rate limit: the last attempt was `since` ago, less than
    /// `min_interval`.
    RateLimited {
        since: Duration,
        min_interval: Duration,
    },
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    last_attempt_at: Option<SystemTime>,
    last_success_at: Option<SystemTime>,
    last_error: Option<String>,
    refreshes: u64,
    fetches_with_keys_without_endorsements: u64,
}

pub(crate) struct KeyStore {
    pub(crate) metadata_url: String,
    /// Names of the clouds using this metadata URL (more join at run time,
    /// see [`KeyStore::add_cloud`]).
    clouds: RwLock<Vec<String>>,
    /// The clouds of `clouds` that accept keys without endorsements (for the
    /// warning's wording only; the check itself is per bot's cloud).
    accepting_unendorsed: RwLock<Vec<String>>,
    client: reqwest::Client,
    fetch_timeout: Duration,
    /// `None` until the first successful fetch.
    keys: RwLock<Option<Arc<KeySet>>>,
    state: Mutex<RefreshState>,
    /// Held for the whole fetch: the single flight.
    flight: tokio::sync::Mutex<()>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl KeyStore {
    pub(crate) fn new(
        metadata_url: String,
        clouds: Vec<String>,
        accepting_unendorsed: Vec<String>,
        client: reqwest::Client,
        fetch_timeout: Duration,
    ) -> Self {
        Self {
            metadata_url,
            clouds: RwLock::new(clouds),
            accepting_unendorsed: RwLock::new(accepting_unendorsed),
            client,
            fetch_timeout,
            keys: RwLock::new(None),
            state: Mutex::new(RefreshState::default()),
            flight: tokio::sync::Mutex::new(()),
        }
    }

    /// Names one more cloud that uses this metadata URL (a bot of that cloud
    /// registered at run time); `accepting` as in the constructor.
    pub(crate) fn add_cloud(&self, name: &str, accepting: bool) {
        let mut clouds = self.clouds.write();
        if clouds.iter().any(|c| c == name) {
            return;
        }
        clouds.push(name.to_owned());
        if accepting {
            self.accepting_unendorsed.write().push(name.to_owned());
        }
    }

    pub(crate) fn key(&self, kid: &str) -> Option<Arc<SigningKey>> {
        self.keys.read().as_ref().and_then(|k| k.get(kid).cloned())
    }

    pub(crate) fn loaded(&self) -> bool {
        self.keys.read().is_some()
    }

    pub(crate) fn status(&self) -> KeyStoreStatus {
        let (key_count, keys_without_endorsements) =
            self.keys.read().as_ref().map_or((0, 0), |k| {
                (
                    k.len(),
                    k.values().filter(|k| k.lacks_endorsements()).count(),
                )
            });
        let st = self.state.lock();
        KeyStoreStatus {
            metadata_url: self.metadata_url.clone(),
            clouds: self.clouds.read().clone(),
            key_count,
            loaded: self.loaded(),
            last_success_unix_ms: st.last_success_at.map(unix_ms),
            last_attempt_unix_ms: st.last_attempt_at.map(unix_ms),
            last_error: st.last_error.clone(),
            refreshes: st.refreshes,
            keys_without_endorsements,
            fetches_with_keys_without_endorsements: st.fetches_with_keys_without_endorsements,
        }
    }

    /// True when the last refresh attempt failed (the scheduler then retries sooner).
    pub(crate) fn last_attempt_failed(&self) -> bool {
        self.state.lock().last_error.is_some()
    }

    /// Refreshes the keys unless another refresh finished while this caller waited
    /// for the flight (it joins that one), or, with `min_interval`, unless the last
    /// attempt is more recent than that (the unknown-`kid` rate limit: forged
    /// tokens with random kids must not make us hammer the JWKS endpoint).
    pub(crate) async fn refresh(&self, min_interval: Option<Duration>) -> RefreshOutcome {
        let asked = Instant::now();
        let _flight = self.flight.lock().await;
        {
            let mut st = self.state.lock();
            if let Some(last) = st.last_attempt {
                if last >= asked {
                    return RefreshOutcome::Joined;
                }
                let since = last.elapsed();
                if let Some(min) = min_interval.filter(|min| since < *min) {
                    return RefreshOutcome::RateLimited {
                        since,
                        min_interval: min,
                    };
                }
            }
            st.last_attempt = Some(Instant::now());
            st.last_attempt_at = Some(SystemTime::now());
            st.refreshes += 1;
        }
        let result = self.fetch().await;
        let mut st = self.state.lock();
        let ok = result.is_ok();
        match result {
            Ok(keys) => {
                tracing::info!(
                    metadata_url = %self.metadata_url,
                    keys = keys.len(),
                    "inbound signing keys refreshed"
                );
                let mut unendorsed: Vec<&str> = keys
                    .values()
                    .filter(|k| k.lacks_endorsements())
                    .map(|k| k.kid.as_str())
                    .collect();
                if !unendorsed.is_empty() {
                    unendorsed.sort_unstable();
                    st.fetches_with_keys_without_endorsements += 1;
                    let accepting = self.accepting_unendorsed.read().clone();
                    let refused: Vec<String> = self
                        .clouds
                        .read()
                        .iter()
                        .filter(|c| !accepting.contains(c))
                        .cloned()
                        .collect();
                    tracing::warn!(
                        metadata_url = %self.metadata_url,
                        kids = %unendorsed.join(","),
                        accepted_for = %accepting.join(","),
                        refused_for = %refused.join(","),
                        "the signing key set has keys without an endorsements list: tokens they sign are refused (403 endorsement) for the clouds in refused_for; auth.accept_keys_without_endorsements lists the clouds that accept them"
                    );
                }
                *self.keys.write() = Some(Arc::new(keys));
                st.last_success_at = Some(SystemTime::now());
                st.last_error = None;
            }
            Err(e) => {
                let kept = self.keys.read().as_ref().map_or(0, |k| k.len());
                tracing::warn!(
                    metadata_url = %self.metadata_url,
                    error = %e,
                    kept_keys = kept,
                    "inbound signing key refresh failed; keeping the last good keys"
                );
                st.last_error = Some(e.to_string());
            }
        }
        RefreshOutcome::Fetched { ok }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, FetchError> {
        let resp = self
            .client
            .get(url)
            .timeout(self.fetch_timeout)
            .send()
            .await
            .map_err(|source| FetchError::Http {
                url: url.to_owned(),
                source,
            })?;
        if !resp.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: resp.status().as_u16(),
            });
        }
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(FetchError::TooLarge {
                url: url.to_owned(),
            });
        }
        let body = resp.bytes().await.map_err(|source| FetchError::Http {
            url: url.to_owned(),
            source,
        })?;
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(FetchError::TooLarge {
                url: url.to_owned(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| FetchError::Json {
            url: url.to_owned(),
            reason: e.to_string(),
        })
    }

    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let meta: Metadata = self.get_json(&self.metadata_url).await?;
        // Keys fetched over http could be swapped by anyone on the path; an https
        // metadata document must not downgrade us.
        if self.metadata_url.starts_with("https://") && !meta.jwks_uri.starts_with("https://") {
            return Err(FetchError::InsecureJwksUri {
                url: self.metadata_url.clone(),
                jwks_uri: meta.jwks_uri,
            });
        }
        let jwks: Jwks = self.get_json(&meta.jwks_uri).await?;
        let mut keys = HashMap::new();
        for raw in jwks.keys {
            let Ok(jwk) = serde_json::from_value::<RawJwk>(raw) else {
                continue;
            };
            if let Some(key) = usable(jwk) {
                keys.entry(key.kid.clone()).or_insert_with(|| Arc::new(key));
            }
        }
        if keys.is_empty() {
            return Err(FetchError::NoUsableKeys { url: meta.jwks_uri });
        }
        Ok(keys)
    }
}

/// RSA signing keys only (BBJS does the same): other key types cannot verify RS256.
fn usable(jwk: RawJwk) -> Option<SigningKey> {
    if jwk.kty != "RSA" {
        return None;
    }
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    if jwk.alg.as_deref().is_some_and(|a| a != "RS256") {
        return None;
    }
    let (kid, n, e) = (jwk.kid?, jwk.n?, jwk.e?);
    let decoding = match DecodingKey::from_rsa_components(&n, &e) {
        Ok(d) => d,
        Err(err) => {
            tracing::warn!(kid = %kid, error = %err, "skipping a JWKS key with invalid RSA components");
            return None;
        }
    };
    Some(SigningKey {
        kid,
        n,
        e,
        endorsements: jwk.endorsements,
        decoding,
    })
}
