//! What every credential type shares: the cache key, the token, the provider
//! trait, and one token-endpoint exchange with retries and error parsing.

use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize};

use super::TokenError;
use crate::Secret;

/// What a token is cached under: tokens for different clouds, authorities
/// (multi-tenant `botframework.com` vs. the bot's tenant), apps or scopes are
/// never mixed up, however many bots share one process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TokenKey {
    /// Cloud name (`public`, `gcch`, ..., or a custom cloud's name).
    pub cloud: String,
    /// Tenant part of the authority: `botframework.com`, a tenant id, or
    /// `managed-identity` for tokens from IMDS / App Service.
    pub authority: String,
    /// The bot's Microsoft App ID (or the managed identity's client id).
    pub app_id: String,
    pub scope: String,
}

impl TokenKey {
    pub fn new(
        cloud: impl Into<String>,
        authority: impl Into<String>,
        app_id: impl Into<String>,
        scope: impl Into<String>,
    ) -> Self {
        Self {
            cloud: cloud.into(),
            authority: authority.into(),
            app_id: app_id.into(),
            scope: scope.into(),
        }
    }

    /// One string naming the key: the shared-tier key and the status listing's name.
    /// Holds no secret.
    pub fn as_string(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.cloud, self.authority, self.app_id, self.scope
        )
    }
}

impl std::fmt::Display for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_string())
    }
}

/// A bearer token and when it stops working. `Debug` never shows the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub token: Secret,
    pub expires_at: SystemTime,
    /// When it was obtained from the endpoint; with `expires_at` this gives the
    /// lifetime the refresh schedule is based on.
    pub obtained_at: SystemTime,
}

/// One way of obtaining tokens for one [`TokenKey`]. Providers do not cache;
/// [`crate::outbound::TokenCache`] does.
#[async_trait]
pub trait TokenProvider: Send + Sync + 'static {
    fn key(&self) -> &TokenKey;
    /// Credential kind for status listings: `client_secret`, `certificate`,
    /// `workload_identity`, `managed_identity`, ...
    fn kind(&self) -> &'static str;
    /// Asks the endpoint for a fresh token (retrying transient failures within
    /// the provider's budget).
    async fn fetch(&self) -> Result<AccessToken, TokenError>;
}

/// How long a provider keeps trying a token endpoint that fails transiently
/// (5xx, 429, connection errors). Permanent answers are never retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryBudget {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// No new attempt starts after this much time since the first one.
    pub max_elapsed: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(20),
        }
    }
}

impl RetryBudget {
    /// Exponential backoff with jitter (50-100 % of the step) so that replicas
    /// that failed together do not retry together.
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let step = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(retry.min(16)))
            .min(self.max_backoff);
        step.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}

/// The HTTP client providers use when none is given: short timeouts (a token
/// request that hangs would hold every caller of the key), no redirects (a
/// credential must only go to the configured endpoint).
pub fn default_http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("botfleet/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Successful token response of the v2.0 endpoint, IMDS or App Service. IMDS
/// sends numbers as strings, App Service sends only `expires_on`.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Secret,
    #[serde(default, deserialize_with = "num_or_string")]
    expires_in: Option<u64>,
    #[serde(default, deserialize_with = "num_or_string")]
    expires_on: Option<u64>,
}

/// OAuth error body (`{"error","error_description","error_codes",...}`).
#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

fn num_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrString {
        Num(u64),
        Float(f64),
        Str(String),
    }
    Ok(match Option::<NumOrString>::deserialize(d)? {
        Some(NumOrString::Num(n)) => Some(n),
        Some(NumOrString::Float(f)) if f >= 0.0 => Some(f as u64),
        // Old App Service versions put a date string here; ignore what is not a number.
        Some(NumOrString::Str(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

/// Who is asking, for error messages, and what to keep out of them.
pub(crate) struct ExchangeContext<'a> {
    pub endpoint: &'a str,
    pub app_id: &'a str,
    /// A credential value that must never appear in an error, even if an
    /// endpoint echoed it.
    pub redact: Option<&'a str>,
    /// Managed-identity endpoints answer 404/410 while an identity is being
    /// assigned; those are worth retrying there and nowhere else.
    pub retry_not_found: bool,
}

impl ExchangeContext<'_> {
    fn clean(&self, text: &str) -> String {
        let mut out: String = text.chars().take(500).collect();
        if let Some(r) = self.redact.filter(|r| r.len() >= 4) {
            out = out.replace(r, "[redacted]");
        }
        out
    }
}

enum Attempt {
    Done(Result<AccessToken, TokenError>),
    Retry {
        detail: String,
        retry_after: Option<Duration>,
    },
}

/// Sends the request `build` makes, retrying transient failures within
/// `budget`, and turns the answer into a token or a [`TokenError`].
pub(crate) async fn exchange(
    budget: &RetryBudget,
    ctx: &ExchangeContext<'_>,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<AccessToken, TokenError> {
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let outcome = match build().send().await {
            Ok(resp) => read_response(ctx, resp).await,
            Err(e) => Attempt::Retry {
                // reqwest errors name the URL (no secret in it) and the cause.
                detail: ctx.clean(&error_chain(&e)),
                retry_after: None,
            },
        };
        match outcome {
            Attempt::Done(r) => return r,
            Attempt::Retry {
                detail,
                retry_after,
            } => {
                let delay = retry_after
                    .map(|d| d.min(budget.max_backoff))
                    .unwrap_or_else(|| budget.backoff(attempt - 1));
                let out_of_budget = attempt >= budget.max_attempts.max(1)
                    || started.elapsed() + delay > budget.max_elapsed;
                if out_of_budget {
                    return Err(TokenError::Unavailable {
                        endpoint: ctx.endpoint.to_owned(),
                        app_id: ctx.app_id.to_owned(),
                        attempts: attempt,
                        detail,
                    });
                }
                tracing::warn!(
                    endpoint = ctx.endpoint,
                    app_id = ctx.app_id,
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    %detail,
                    "token request failed; retrying"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The error and its sources on one line (reqwest's Display alone hides the cause).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn read_response(ctx: &ExchangeContext<'_>, resp: reqwest::Response) -> Attempt {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return Attempt::Retry {
                detail: format!("HTTP {status}, body unreadable: {}", error_chain(&e)),
                retry_after,
            }
        }
    };
    let invalid = |detail: String| {
        Attempt::Done(Err(TokenError::InvalidResponse {
            endpoint: ctx.endpoint.to_owned(),
            app_id: ctx.app_id.to_owned(),
            detail,
        }))
    };
    if (200..300).contains(&status) {
        let parsed: TokenResponse = match serde_json::from_slice(&body) {
            Ok(p) => p,
            // serde's message names the missing or mistyped field, never its value.
            Err(e) => return invalid(format!("HTTP {status}: {e}")),
        };
        if parsed.access_token.is_empty() {
            return invalid("empty access_token".into());
        }
        let now = SystemTime::now();
        let expires_at = match (parsed.expires_in, parsed.expires_on) {
            (Some(secs), _) => now + Duration::from_secs(secs),
            (None, Some(unix)) => SystemTime::UNIX_EPOCH + Duration::from_secs(unix),
            (None, None) => return invalid("neither expires_in nor expires_on".into()),
        };
        if expires_at <= now {
            return invalid("the token is already expired".into());
        }
        return Attempt::Done(Ok(AccessToken {
            token: parsed.access_token,
            expires_at,
            obtained_at: now,
        }));
    }
    let oauth: Option<OAuthError> = serde_json::from_slice(&body).ok();
    let transient = status >= 500
        || status == 429
        || status == 408
        || (ctx.retry_not_found && (status == 404 || status == 410))
        || oauth
            .as_ref()
            .is_some_and(|o| o.error == "temporarily_unavailable");
    match oauth {
        Some(o) if !transient => Attempt::Done(Err(TokenError::Rejected {
            endpoint: ctx.endpoint.to_owned(),
            app_id: ctx.app_id.to_owned(),
            status,
            error: ctx.clean(&o.error),
            description: ctx.clean(o.error_description.as_deref().unwrap_or("")),
        })),
        Some(o) => Attempt::Retry {
            detail: format!(
                "HTTP {status}: {}: {}",
                ctx.clean(&o.error),
                ctx.clean(o.error_description.as_deref().unwrap_or(""))
            ),
            retry_after,
        },
        None if transient => Attempt::Retry {
            detail: format!("HTTP {status}"),
            retry_after,
        },
        None => Attempt::Done(Err(TokenError::Rejected {
            endpoint: ctx.endpoint.to_owned(),
            app_id: ctx.app_id.to_owned(),
            status,
            error: format!("http_{status}"),
            description: ctx.clean(&String::from_utf8_lossy(&body)),
        })),
    }
}
