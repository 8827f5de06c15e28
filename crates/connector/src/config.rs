//! Connector settings: process-wide (HTTP client, GCC host) and per bot
//! (tokens, allowlist, retry budget, what to do with ambiguous timeouts).

use std::sync::Arc;
use std::time::Duration;

use botfleet_auth::ServiceUrlAllowlist;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::TokenSource;

/// The host Teams tells bots to use for GCC tenants (403 `InvalidBotApiHost`,
/// https://learn.microsoft.com/microsoftteams/platform/bots/build-conversational-capability).
pub const GCC_SERVICE_URL: &str = "https://smba.infra.gcc.teams.microsoft.com";

/// Process-wide connector settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorConfig {
    pub connect_timeout: Duration,
    /// Whole request, response included. A timeout after the request was sent
    /// is ambiguous (see [`AmbiguousPolicy`]).
    pub request_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Where a 403 `InvalidBotApiHost` call is retried (tests point it at a local server).
    pub gcc_service_url: String,
    pub user_agent: String,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
            gcc_service_url: GCC_SERVICE_URL.to_owned(),
            user_agent: concat!("botfleet/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// What to do when a request that creates something (`POST .../activities`,
/// `POST /v3/conversations`) timed out or lost its connection *after* it was
/// sent: Teams may or may not have delivered it, and it does not deduplicate
/// a replayed POST, so resending can show the user the message twice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmbiguousPolicy {
    /// Report the outcome as unknown ([`crate::ConnectorError::Unknown`]) and do
    /// not resend: a missing message is better than a duplicate for most bots.
    /// Written `report` in configuration (`report_unknown` also accepted).
    #[default]
    #[serde(rename = "report", alias = "report_unknown")]
    ReportUnknown,
    /// Resend within the retry budget: a duplicate is better than a missing
    /// message (alerts, pages).
    Resend,
}

/// How hard one call is retried. Only 412, 429, 502, 503, 504 and failures
/// before the request left are retried (https://learn.microsoft.com/microsoftteams/platform/bots/build-conversational-capability).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Requests per call, the first included.
    pub max_attempts: u32,
    /// No retry starts after this much time since the call began (waits for
    /// the rate limiter not included).
    pub max_elapsed: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest wait for the local rate limiter per request; a longer wait
    /// returns [`crate::ConnectorError::Throttled`] so the caller can reschedule.
    pub max_rate_limit_wait: Duration,
    /// When true, Teams throttling (a 429, or a 503 carrying `Retry-After`)
    /// is not waited for within the call: it comes back at once as
    /// [`crate::ConnectorError::Failed`] with `action: RetryLater`, its status
    /// and `retry_after` (the header's value when given), so a caller with a
    /// queue (the notifier) reschedules it and serves other work meanwhile.
    /// False (the default, replies): wait `Retry-After` and retry in the call.
    pub return_throttling: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            // With 30 % of requests failing transiently, 10 attempts leave a
            // 6e-6 chance per message of giving up.
            max_attempts: 10,
            max_elapsed: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            max_rate_limit_wait: Duration::from_secs(30),
            return_throttling: false,
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with jitter (50-100 % of the step) so that senders
    /// that failed together do not retry together.
    pub fn backoff(&self, retry: u32) -> Duration {
        let step = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(retry.min(16)))
            .min(self.max_backoff);
        step.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}

/// One bot's outbound settings.
#[derive(Clone)]
pub struct BotSettings {
    /// The bot's Microsoft App ID (rate-limit buckets and error messages).
    pub app_id: String,
    pub tokens: Arc<dyn TokenSource>,
    /// The bot's serviceUrl allowlist; calls to other hosts are refused unsent.
    pub allowlist: ServiceUrlAllowlist,
    pub ambiguous: AmbiguousPolicy,
    pub retry: RetryPolicy,
}

impl BotSettings {
    pub fn new(
        app_id: impl Into<String>,
        tokens: Arc<dyn TokenSource>,
        allowlist: ServiceUrlAllowlist,
    ) -> Self {
        Self {
            app_id: app_id.into(),
            tokens,
            allowlist,
            ambiguous: AmbiguousPolicy::default(),
            retry: RetryPolicy::default(),
        }
    }

    pub fn with_ambiguous(mut self, policy: AmbiguousPolicy) -> Self {
        self.ambiguous = policy;
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

impl std::fmt::Debug for BotSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotSettings")
            .field("app_id", &self.app_id)
            .field("allowlist", &self.allowlist)
            .field("ambiguous", &self.ambiguous)
            .field("retry", &self.retry)
            .finish()
    }
}
