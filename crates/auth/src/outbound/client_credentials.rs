//! Client-credentials grant against an Entra v2.0 token endpoint
//! (https://learn.microsoft.com/azure/bot-service/rest-api/bot-framework-rest-connector-authentication)
//! with a client secret, a certificate (signed client assertion) or a
//! workload-identity federated token.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use serde::Serialize;
use sha1::{Digest, Sha1};

use super::provider::{default_http_client, exchange, ExchangeContext};
use super::{AccessToken, RetryBudget, TokenError, TokenKey, TokenProvider};
use crate::{Cloud, Secret};

/// `client_assertion_type` for certificate and federated credentials.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How a bot proves it is its app registration. `Debug` shows only the kind.
#[derive(Clone)]
pub enum ClientCredential {
    /// `client_secret`.
    Secret(Secret),
    /// A client assertion JWT signed with the certificate's private key.
    Certificate(CertificateCredential),
    /// Workload identity (AKS): the projected service-account token in this
    /// file is the client assertion. The file is read again for every
    /// exchange, because the kubelet rotates it (https://learn.microsoft.com/azure/aks/workload-identity-overview).
    FederatedTokenFile(PathBuf),
}

impl ClientCredential {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Secret(_) => "client_secret",
            Self::Certificate(_) => "certificate",
            Self::FederatedTokenFile(_) => "workload_identity",
        }
    }
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::FederatedTokenFile(p) => write!(f, "FederatedTokenFile({})", p.display()),
            other => write!(f, "{}([redacted])", other.kind()),
        }
    }
}

/// A certificate credential: the private key that signs client assertions and,
/// when the certificate is known, its SHA-1 thumbprint for the `x5t` header
/// (Entra uses it to find the registered certificate).
#[derive(Clone)]
pub struct CertificateCredential {
    key: EncodingKey,
    x5t: Option<String>,
}

impl std::fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateCredential")
            .field("key", &"[redacted]")
            .field("x5t", &self.x5t)
            .finish()
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

impl CertificateCredential {
    /// From an RSA private key (PKCS#1 or PKCS#8 PEM) and optionally the
    /// certificate (PEM) whose thumbprint becomes `x5t`. The key is tried once
    /// here so that a bad key is reported at configuration time, not at the
    /// first send.
    pub fn from_pem(
        private_key_pem: &str,
        certificate_pem: Option<&str>,
    ) -> Result<Self, TokenError> {
        let bad = TokenError::InvalidCertificate;
        let key = EncodingKey::from_rsa_pem(private_key_pem.as_bytes()).map_err(|e| {
            bad(format!(
                "the private key is not an RSA key in PEM form (PKCS#1 or PKCS#8): {e}"
            ))
        })?;
        let x5t = match certificate_pem {
            Some(pem) => Some(x5t_of_certificate_pem(pem).map_err(bad)?),
            None => None,
        };
        let cred = Self { key, x5t };
        cred.assertion("check", "https://check.invalid/")
            .map_err(|e| bad(format!("the private key cannot sign RS256: {e}")))?;
        Ok(cred)
    }

    /// Like [`Self::from_pem`] with the thumbprint given as hex (as the Azure
    /// portal shows it) instead of the certificate.
    pub fn from_pem_and_thumbprint(
        private_key_pem: &str,
        sha1_thumbprint_hex: &str,
    ) -> Result<Self, TokenError> {
        let mut cred = Self::from_pem(private_key_pem, None)?;
        let cleaned: String = sha1_thumbprint_hex
            .chars()
            .filter(|c| !c.is_whitespace() && *c != ':')
            .collect();
        let bytes = hex::decode(&cleaned)
            .ok()
            .filter(|b| b.len() == 20)
            .ok_or_else(|| {
                TokenError::InvalidCertificate(
                    "the certificate thumbprint must be 40 hex digits (SHA-1)".into(),
                )
            })?;
        cred.x5t = Some(URL_SAFE_NO_PAD.encode(bytes));
        Ok(cred)
    }

    /// The `x5t` header value (base64url SHA-1 of the certificate DER), if known.
    pub fn x5t(&self) -> Option<&str> {
        self.x5t.as_deref()
    }

    /// A signed client assertion for `app_id` at `token_url`: RS256, `aud` = the
    /// token URL, `iss` = `sub` = the app id, a random `jti`, valid for 10 minutes.
    pub fn assertion(&self, app_id: &str, token_url: &str) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut jti = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut jti);
        let claims = AssertionClaims {
            aud: token_url,
            iss: app_id,
            sub: app_id,
            jti: hex::encode(jti),
            nbf: now,
            iat: now,
            exp: now + 600,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.x5t = self.x5t.clone();
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| e.to_string())
    }
}

/// base64url(SHA-1(DER)) of the first `CERTIFICATE` block of a PEM text.
pub fn x5t_of_certificate_pem(pem: &str) -> Result<String, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem
        .find(BEGIN)
        .ok_or("no `-----BEGIN CERTIFICATE-----` block in the certificate PEM")?
        + BEGIN.len();
    let end = pem[start..]
        .find(END)
        .ok_or("the certificate PEM block is not terminated")?
        + start;
    let b64: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = STANDARD
        .decode(b64)
        .map_err(|e| format!("the certificate PEM is not valid base64: {e}"))?;
    Ok(URL_SAFE_NO_PAD.encode(Sha1::digest(&der)))
}

/// Workload identity settings the AKS webhook injects (https://learn.microsoft.com/azure/aks/workload-identity-overview).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadIdentityEnv {
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
    pub token_file: PathBuf,
    /// `AZURE_AUTHORITY_HOST`, e.g. `https://login.microsoftonline.com/`.
    pub authority_host: Option<String>,
}

impl WorkloadIdentityEnv {
    /// From the process environment; `None` when `AZURE_FEDERATED_TOKEN_FILE` is unset.
    pub fn from_env() -> Option<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// From any variable lookup (tests pass a map instead of touching the process environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        Some(Self {
            token_file: PathBuf::from(non_empty("AZURE_FEDERATED_TOKEN_FILE")?),
            client_id: non_empty("AZURE_CLIENT_ID"),
            tenant_id: non_empty("AZURE_TENANT_ID"),
            authority_host: non_empty("AZURE_AUTHORITY_HOST"),
        })
    }
}

/// Client-credentials provider for one bot: token URL, app id, scope, credential.
pub struct ClientCredentialsProvider {
    key: TokenKey,
    token_url: String,
    app_id: String,
    scope: String,
    credential: ClientCredential,
    http: reqwest::Client,
    retry: RetryBudget,
}

impl std::fmt::Debug for ClientCredentialsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentialsProvider")
            .field("key", &self.key)
            .field("token_url", &self.token_url)
            .field("credential", &self.credential)
            .finish()
    }
}

impl ClientCredentialsProvider {
    /// A provider for `app_id` in `cloud`: the cloud's multi-tenant authority
    /// when `tenant` is `None`, the bot's tenant for single-tenant bots.
    pub fn new(
        cloud: &Cloud,
        app_id: impl Into<String>,
        tenant: Option<&str>,
        credential: ClientCredential,
    ) -> Self {
        let app_id = app_id.into();
        let authority = tenant.unwrap_or(&cloud.multi_tenant_authority).to_owned();
        Self {
            key: TokenKey::new(&cloud.name, authority, &app_id, &cloud.bot_scope),
            token_url: cloud.token_url(tenant),
            scope: cloud.bot_scope.clone(),
            app_id,
            credential,
            http: default_http_client(),
            retry: RetryBudget::default(),
        }
    }

    /// Workload identity from the AKS-injected environment: the app id is the
    /// bot's (the federated credential is configured on its registration), the
    /// tenant is the bot's or `AZURE_TENANT_ID`, and `AZURE_AUTHORITY_HOST`
    /// overrides the cloud's login endpoint.
    pub fn workload_identity(
        cloud: &Cloud,
        app_id: impl Into<String>,
        tenant: Option<&str>,
        env: &WorkloadIdentityEnv,
    ) -> Self {
        let tenant = tenant.or(env.tenant_id.as_deref());
        let mut p = Self::new(
            cloud,
            app_id,
            tenant,
            ClientCredential::FederatedTokenFile(env.token_file.clone()),
        );
        if let Some(host) = &env.authority_host {
            p.token_url = format!(
                "{}/{}/oauth2/v2.0/token",
                host.trim_end_matches('/'),
                tenant.unwrap_or(&cloud.multi_tenant_authority)
            );
        }
        p
    }

    /// Sends token requests here instead (tests, botfleet-sim, proxies). The
    /// cache key is unchanged.
    pub fn with_token_url(mut self, url: impl Into<String>) -> Self {
        self.token_url = url.into();
        self
    }

    /// Another scope than the cloud's Bot Framework scope (e.g. Graph).
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self.key.scope = self.scope.clone();
        self
    }

    pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    pub fn with_retry(mut self, retry: RetryBudget) -> Self {
        self.retry = retry;
        self
    }

    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// The form fields that prove the credential, built fresh for each exchange.
    async fn credential_fields(&self) -> Result<(&'static str, Secret), TokenError> {
        let unusable = |detail: String| TokenError::Credential {
            app_id: self.app_id.clone(),
            detail,
        };
        match &self.credential {
            ClientCredential::Secret(s) => Ok(("client_secret", s.clone())),
            ClientCredential::Certificate(c) => c
                .assertion(&self.app_id, &self.token_url)
                .map(|a| ("client_assertion", Secret::new(a)))
                .map_err(|e| unusable(format!("signing the client assertion failed: {e}"))),
            ClientCredential::FederatedTokenFile(path) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                    unusable(format!(
                        "cannot read the federated token file {}: {e} \
                         (is workload identity enabled for this pod?)",
                        path.display()
                    ))
                })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(unusable(format!(
                        "the federated token file {} is empty",
                        path.display()
                    )));
                }
                Ok(("client_assertion", Secret::new(token)))
            }
        }
    }
}

#[async_trait]
impl TokenProvider for ClientCredentialsProvider {
    fn key(&self) -> &TokenKey {
        &self.key
    }

    fn kind(&self) -> &'static str {
        self.credential.kind()
    }

    async fn fetch(&self) -> Result<AccessToken, TokenError> {
        let (field, proof) = self.credential_fields().await?;
        let ctx = ExchangeContext {
            endpoint: &self.token_url,
            app_id: &self.app_id,
            redact: Some(proof.expose()),
            retry_not_found: false,
        };
        exchange(&self.retry, &ctx, || {
            let mut form: Vec<(&str, &str)> = vec![
                ("grant_type", "client_credentials"),
                ("client_id", &self.app_id),
                ("scope", &self.scope),
                (field, proof.expose()),
            ];
            if field == "client_assertion" {
                form.push(("client_assertion_type", JWT_BEARER_ASSERTION));
            }
            self.http
                .post(&self.token_url)
                .timeout(Duration::from_secs(15))
                .form(&form)
        })
        .await
    }
}
