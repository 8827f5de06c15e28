//! `validationTokens` of rich notifications
//! (https://learn.microsoft.com/graph/change-notifications-with-resource-data#validation-tokens-in-the-change-notification):
//! RS256 JWTs from Microsoft's identity platform, one per app and tenant of a
//! batch. botfleet accepts an item only when a token of the batch has a valid
//! signature (keys from the cloud's OpenID metadata `jwks_uri`), is not
//! expired, and has `iss = https://sts.windows.net/{tenantId}/` (the item's
//! tenant), `aud` = the subscription's app id and `appid` = the Graph change
//! notification publisher [`GRAPH_PUBLISHER_APP_ID`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde::Deserialize;
use thiserror::Error;

/// The app id of Graph's change-notification publisher (the `appid` claim of
/// every validation token).
pub const GRAPH_PUBLISHER_APP_ID: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";

/// Keys are fetched again after this long (Microsoft rotates them).
const KEYS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// An unknown `kid` refetches the keys at most this often.
const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(60);
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    #[error("the batch has no validation token for this app and tenant")]
    Missing,
    #[error("validation token refused: {0}")]
    Invalid(String),
    #[error("the signing keys cannot be fetched: {0}")]
    Keys(String),
}

impl TokenError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::Invalid(_) => "token_invalid",
            Self::Keys(_) => "token_keys",
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    appid: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    tid: Option<String>,
}

struct Cached {
    at: Instant,
    keys: HashMap<String, DecodingKey>,
}

/// Verifies validation tokens; caches each metadata URL's keys.
pub struct TokenVerifier {
    http: reqwest::Client,
    cache: Mutex<HashMap<String, Cached>>,
    fetch: tokio::sync::Mutex<()>,
}

impl TokenVerifier {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            cache: Mutex::new(HashMap::new()),
            fetch: tokio::sync::Mutex::new(()),
        }
    }

    /// `Ok` when one of `tokens` is valid for `app_id` and `tenant_id`.
    /// Errors say why the last candidate failed.
    pub async fn verify_any(
        &self,
        tokens: &[String],
        metadata_url: &str,
        app_id: &str,
        tenant_id: &str,
    ) -> Result<(), TokenError> {
        let mut last = TokenError::Missing;
        for t in tokens {
            match self.verify(t, metadata_url, app_id, tenant_id).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn verify(
        &self,
        token: &str,
        metadata_url: &str,
        app_id: &str,
        tenant_id: &str,
    ) -> Result<(), TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("not a JWT: {e}")))?;
        if header.alg != Algorithm::RS256 {
            return Err(TokenError::Invalid(format!(
                "alg {:?} is not RS256",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Invalid("no kid".into()))?;
        let key = self.key(metadata_url, &kid).await?;
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&[app_id]);
        v.set_issuer(&[format!("https://sts.windows.net/{tenant_id}/")]);
        v.set_required_spec_claims(&["exp", "aud", "iss"]);
        v.leeway = 300;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let appid = data.claims.appid.or(data.claims.azp).unwrap_or_default();
        if appid != GRAPH_PUBLISHER_APP_ID {
            return Err(TokenError::Invalid(
                "appid is not the Graph change-notification publisher".into(),
            ));
        }
        if data.claims.tid.is_some_and(|t| t != tenant_id) {
            return Err(TokenError::Invalid("tid is another tenant".into()));
        }
        Ok(())
    }

    /// The key `kid` of `metadata_url`: from the cache while it is younger
    /// than a day; an unknown kid refetches at most once a minute.
    async fn key(&self, metadata_url: &str, kid: &str) -> Result<DecodingKey, TokenError> {
        enum Look {
            Found(DecodingKey),
            Unknown,
            Refetch,
        }
        let look = |c: &HashMap<String, Cached>| match c.get(metadata_url) {
            Some(k) if k.at.elapsed() < KEYS_MAX_AGE => match k.keys.get(kid) {
                Some(key) => Look::Found(key.clone()),
                None if k.at.elapsed() < UNKNOWN_KID_REFETCH => Look::Unknown,
                None => Look::Refetch,
            },
            _ => Look::Refetch,
        };
        let unknown = || TokenError::Invalid(format!("unknown kid `{kid}`"));
        match look(&self.cache.lock()) {
            Look::Found(k) => return Ok(k),
            Look::Unknown => return Err(unknown()),
            Look::Refetch => {}
        }
        let _one = self.fetch.lock().await;
        match look(&self.cache.lock()) {
            Look::Found(k) => return Ok(k),
            Look::Unknown => return Err(unknown()),
            Look::Refetch => {}
        }
        let keys = self.fetch_keys(metadata_url).await?;
        let found = keys.get(kid).cloned();
        self.cache.lock().insert(
            metadata_url.to_owned(),
            Cached {
                at: Instant::now(),
                keys,
            },
        );
        found.ok_or_else(unknown)
    }

    async fn fetch_keys(
        &self,
        metadata_url: &str,
    ) -> Result<HashMap<String, DecodingKey>, TokenError> {
        #[derive(Deserialize)]
        struct Metadata {
            jwks_uri: String,
        }
        #[derive(Deserialize)]
        struct Jwk {
            kty: String,
            kid: Option<String>,
            n: Option<String>,
            e: Option<String>,
        }
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<Jwk>,
        }
        let meta: Metadata = self.get_json(metadata_url).await?;
        if metadata_url.starts_with("https://") && !meta.jwks_uri.starts_with("https://") {
            return Err(TokenError::Keys("jwks_uri is not https".into()));
        }
        let jwks: Jwks = self.get_json(&meta.jwks_uri).await?;
        let mut out = HashMap::new();
        for k in jwks.keys {
            if let (true, Some(kid), Some(n), Some(e)) = (k.kty == "RSA", k.kid, k.n, k.e) {
                if let Ok(d) = DecodingKey::from_rsa_components(&n, &e) {
                    out.insert(kid, d);
                }
            }
        }
        if out.is_empty() {
            return Err(TokenError::Keys(format!("{metadata_url} lists no RSA key")));
        }
        Ok(out)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, TokenError> {
        let r = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| TokenError::Keys(format!("GET {url}: {e}")))?;
        if !r.status().is_success() {
            return Err(TokenError::Keys(format!("GET {url}: HTTP {}", r.status())));
        }
        let body = r
            .bytes()
            .await
            .map_err(|e| TokenError::Keys(format!("GET {url}: {e}")))?;
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(TokenError::Keys(format!("{url} is too large")));
        }
        serde_json::from_slice(&body).map_err(|e| TokenError::Keys(format!("{url}: {e}")))
    }
}
