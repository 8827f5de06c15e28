//! Managed identity tokens (user-assigned managed identity bots, https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-use-vm-token):
//! the Azure Instance Metadata Service on VMs/VMSS/AKS nodes, or the App Service
//! / Functions identity endpoint.

use std::time::Duration;

use async_trait::async_trait;

use super::provider::{default_http_client, exchange, ExchangeContext};
use super::{AccessToken, RetryBudget, TokenError, TokenKey, TokenProvider};
use crate::{Cloud, Secret};

/// The IMDS token endpoint (link-local; no proxy must be used for it).
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// Authority part of the cache key of managed-identity tokens.
pub const MANAGED_IDENTITY_AUTHORITY: &str = "managed-identity";

/// Where the managed identity token comes from.
#[derive(Clone)]
pub enum ManagedIdentitySource {
    /// `GET {endpoint}?api-version=2018-02-01&resource=..&client_id=..` with `Metadata: true`.
    Imds { endpoint: String },
    /// `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=..&client_id=..`
    /// with `X-IDENTITY-HEADER: {IDENTITY_HEADER}`.
    AppService { endpoint: String, header: Secret },
}

impl std::fmt::Debug for ManagedIdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Imds { endpoint } => write!(f, "Imds({endpoint})"),
            Self::AppService { endpoint, .. } => write!(f, "AppService({endpoint}, [redacted])"),
        }
    }
}

impl ManagedIdentitySource {
    /// App Service when `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set, IMDS otherwise.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        match (non_empty("IDENTITY_ENDPOINT"), non_empty("IDENTITY_HEADER")) {
            (Some(endpoint), Some(header)) => Self::AppService {
                endpoint,
                header: Secret::new(header),
            },
            _ => Self::Imds {
                endpoint: IMDS_ENDPOINT.to_owned(),
            },
        }
    }

    fn endpoint(&self) -> &str {
        match self {
            Self::Imds { endpoint } | Self::AppService { endpoint, .. } => endpoint,
        }
    }
}

/// Tokens for a (usually user-assigned) managed identity. For a UAMI bot the
/// identity's client id is the bot's app id.
#[derive(Debug)]
pub struct ManagedIdentityProvider {
    key: TokenKey,
    source: ManagedIdentitySource,
    client_id: Option<String>,
    resource: String,
    http: reqwest::Client,
    retry: RetryBudget,
}

impl ManagedIdentityProvider {
    /// `client_id` selects a user-assigned identity; `None` is the system-assigned
    /// one. The resource is the cloud's Bot Framework scope without `/.default`.
    pub fn new(cloud: &Cloud, client_id: Option<&str>, source: ManagedIdentitySource) -> Self {
        let resource = cloud
            .bot_scope
            .strip_suffix("/.default")
            .unwrap_or(&cloud.bot_scope)
            .to_owned();
        Self {
            key: TokenKey::new(
                &cloud.name,
                MANAGED_IDENTITY_AUTHORITY,
                client_id.unwrap_or("system-assigned"),
                &cloud.bot_scope,
            ),
            source,
            client_id: client_id.map(str::to_owned),
            resource,
            http: default_http_client(),
            // IMDS throttles and returns 404/410 while an identity is being
            // assigned; msal-node and BBJS retry it several times.
            retry: RetryBudget {
                max_attempts: 5,
                ..RetryBudget::default()
            },
        }
    }

    /// Another resource than the cloud's Bot Framework one (e.g. `api://AzureADTokenExchange`).
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = resource.into();
        self.key.scope = format!("{}/.default", self.resource.trim_end_matches('/'));
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

    fn request(&self) -> reqwest::RequestBuilder {
        let mut query: Vec<(&str, &str)> = vec![("resource", &self.resource)];
        if let Some(id) = &self.client_id {
            query.push(("client_id", id));
        }
        match &self.source {
            ManagedIdentitySource::Imds { endpoint } => {
                query.push(("api-version", "2018-02-01"));
                self.http
                    .get(endpoint)
                    .header("Metadata", "true")
                    .query(&query)
            }
            ManagedIdentitySource::AppService { endpoint, header } => {
                query.push(("api-version", "2019-08-01"));
                let mut value = reqwest::header::HeaderValue::from_str(header.expose())
                    .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
                value.set_sensitive(true);
                self.http
                    .get(endpoint)
                    .header("X-IDENTITY-HEADER", value)
                    .query(&query)
            }
        }
        .timeout(Duration::from_secs(15))
    }
}

#[async_trait]
impl TokenProvider for ManagedIdentityProvider {
    fn key(&self) -> &TokenKey {
        &self.key
    }

    fn kind(&self) -> &'static str {
        "managed_identity"
    }

    async fn fetch(&self) -> Result<AccessToken, TokenError> {
        let redact = match &self.source {
            ManagedIdentitySource::AppService { header, .. } => Some(header.expose()),
            ManagedIdentitySource::Imds { .. } => None,
        };
        let ctx = ExchangeContext {
            endpoint: self.source.endpoint(),
            app_id: &self.key.app_id,
            redact,
            retry_not_found: true,
        };
        exchange(&self.retry, &ctx, || self.request()).await
    }
}
