//! The Bot Connector client: one [`Connector`] per process (HTTP connection
//! pool, rate limiter), one cheap [`BotClient`] per bot.
//!
//! Every call goes through the same loop:
//! 1. the serviceUrl must pass the bot's allowlist (else nothing is sent);
//! 2. a token from the bot's [`TokenSource`];
//! 3. a permit from the rate limiter for the call's thread and tenant
//!    buckets (taken right before sending, after the token, so nothing slow
//!    sits between the permit and the request);
//! 4. the request; the answer is classified by the Teams error table
//!    ([`crate::error::classify`]) and retried, refreshed, moved to GCC or
//!    returned.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use botfleet_auth::Secret;
use botfleet_protocol::{
    Activity, ChannelAccount, ConversationParameters, ConversationReference,
    ConversationResourceResponse, PagedMembersResult, ResourceResponse,
};
use botfleet_store::ratelimit::{acquire_within, teams, Acquired, RateLimiter};
use rand::Rng;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::config::{AmbiguousPolicy, BotSettings, ConnectorConfig};
use crate::error::{classify, parse_error_body, parse_retry_after, Action, Disposition, Failure};
use crate::ConnectorError;

/// Where a call goes: the reference's serviceUrl, conversation and tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub service_url: String,
    pub conversation_id: String,
    /// Tenant of the conversation: the rate-limit group (per bot per tenant limit).
    pub tenant_id: Option<String>,
}

impl Target {
    pub fn new(
        service_url: impl Into<String>,
        conversation_id: impl Into<String>,
        tenant_id: Option<&str>,
    ) -> Self {
        Self {
            service_url: service_url.into(),
            conversation_id: conversation_id.into(),
            tenant_id: tenant_id.map(str::to_owned),
        }
    }
}

impl From<&ConversationReference> for Target {
    fn from(r: &ConversationReference) -> Self {
        Self::new(&r.service_url, &r.conversation.id, r.tenant_id())
    }
}

/// A successful call.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered<T> {
    pub value: T,
    /// Requests sent, the successful one included.
    pub attempts: u32,
    /// The call succeeded at this serviceUrl instead (403 `InvalidBotApiHost`
    /// moved it to GCC): the caller should update the stored reference.
    pub service_url_moved_to: Option<String>,
}

struct Shared {
    http: reqwest::Client,
    limiter: Arc<dyn RateLimiter>,
    config: ConnectorConfig,
}

/// The process-wide connector: one HTTP connection pool (HTTP/2 where the
/// server offers it) and the rate limiter shared by every bot.
#[derive(Clone)]
pub struct Connector {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("config", &self.shared.config)
            .finish()
    }
}

impl Connector {
    pub fn new(
        config: ConnectorConfig,
        limiter: Arc<dyn RateLimiter>,
    ) -> Result<Self, ConnectorError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .tcp_keepalive(Duration::from_secs(30))
            .http2_adaptive_window(true)
            // A redirect would carry the bot's token to a host the allowlist never saw.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(&config.user_agent)
            .build()
            .map_err(|e| {
                ConnectorError::InvalidRequest(format!("HTTP client setup failed: {e}"))
            })?;
        Ok(Self {
            shared: Arc::new(Shared {
                http,
                limiter,
                config,
            }),
        })
    }

    /// The client of one bot.
    pub fn bot(&self, settings: BotSettings) -> BotClient {
        BotClient {
            shared: self.shared.clone(),
            bot: Arc::new(settings),
        }
    }

    pub fn config(&self) -> &ConnectorConfig {
        &self.shared.config
    }
}

/// One bot's Bot Connector calls. Cheap to clone.
#[derive(Clone)]
pub struct BotClient {
    shared: Arc<Shared>,
    bot: Arc<BotSettings>,
}

impl std::fmt::Debug for BotClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotClient").field("bot", &self.bot).finish()
    }
}

/// Percent-encodes a path segment like JavaScript's `encodeURIComponent`, as
/// the Bot Framework SDKs do (`:`, `@`, `;`, `/`, `?`, `#` and the rest escaped).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'!'
            | b'~'
            | b'*'
            | b'\''
            | b'('
            | b')' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The operation label of a call on `/metrics` (`botfleet_connector_calls_total{operation}`).
fn operation_label(call: &Call<'_>) -> &'static str {
    match call.op {
        teams::Operation::Create => "create_conversation",
        teams::Operation::Members => "members",
        teams::Operation::Send if call.method == Method::PUT => "update",
        teams::Operation::Send if call.method == Method::DELETE => "delete",
        // `/v3/conversations/{id}/activities/{activityId}` (the id segment is
        // encoded, so it has no `/`): a reply.
        teams::Operation::Send if call.path.matches('/').count() > 4 => "reply",
        teams::Operation::Send => "send",
    }
}

struct Call<'a> {
    method: Method,
    service_url: &'a str,
    /// Path from `/v3/...`, segments already encoded.
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    op: teams::Operation,
    tenant: Option<&'a str>,
    /// Rate-limit thread: the conversation (or the member for create).
    thread: &'a str,
    /// A POST that creates something: replaying it after an ambiguous failure
    /// can duplicate it.
    creates: bool,
}

/// Why the last attempt failed, for the error returned when the budget runs out.
enum LastFailure {
    Http(Failure),
    Transport(String),
}

impl BotClient {
    pub fn app_id(&self) -> &str {
        &self.bot.app_id
    }

    /// The bot's policy for a send that may or may not have reached Teams;
    /// callers that find such a send themselves (a notifier taking over a
    /// dead sender's marker) follow it too.
    pub fn ambiguous_policy(&self) -> AmbiguousPolicy {
        self.bot.ambiguous
    }

    /// `POST /v3/conversations/{id}/activities`: a new message in the conversation.
    pub async fn send(
        &self,
        to: &Target,
        activity: &Activity,
    ) -> Result<Delivered<ResourceResponse>, ConnectorError> {
        self.execute(Call {
            method: Method::POST,
            service_url: &to.service_url,
            path: format!(
                "/v3/conversations/{}/activities",
                encode_segment(&to.conversation_id)
            ),
            query: vec![],
            body: Some(to_json(activity)?),
            op: teams::Operation::Send,
            tenant: to.tenant_id.as_deref(),
            thread: &to.conversation_id,
            creates: true,
        })
        .await
    }

    /// `POST /v3/conversations/{id}/activities/{activityId}`: a reply to an activity.
    pub async fn reply(
        &self,
        to: &Target,
        reply_to_id: &str,
        activity: &Activity,
    ) -> Result<Delivered<ResourceResponse>, ConnectorError> {
        self.execute(Call {
            method: Method::POST,
            service_url: &to.service_url,
            path: activity_path(&to.conversation_id, reply_to_id),
            query: vec![],
            body: Some(to_json(activity)?),
            op: teams::Operation::Send,
            tenant: to.tenant_id.as_deref(),
            thread: &to.conversation_id,
            creates: true,
        })
        .await
    }

    /// `PUT /v3/conversations/{id}/activities/{activityId}`: replaces an activity.
    pub async fn update(
        &self,
        to: &Target,
        activity_id: &str,
        activity: &Activity,
    ) -> Result<Delivered<ResourceResponse>, ConnectorError> {
        self.execute(Call {
            method: Method::PUT,
            service_url: &to.service_url,
            path: activity_path(&to.conversation_id, activity_id),
            query: vec![],
            body: Some(to_json(activity)?),
            op: teams::Operation::Send,
            tenant: to.tenant_id.as_deref(),
            thread: &to.conversation_id,
            creates: false,
        })
        .await
    }

    /// `DELETE /v3/conversations/{id}/activities/{activityId}`.
    pub async fn delete(
        &self,
        to: &Target,
        activity_id: &str,
    ) -> Result<Delivered<()>, ConnectorError> {
        self.execute::<Ignored>(Call {
            method: Method::DELETE,
            service_url: &to.service_url,
            path: activity_path(&to.conversation_id, activity_id),
            query: vec![],
            body: None,
            op: teams::Operation::Send,
            tenant: to.tenant_id.as_deref(),
            thread: &to.conversation_id,
            creates: false,
        })
        .await
        .map(|d| Delivered {
            value: (),
            attempts: d.attempts,
            service_url_moved_to: d.service_url_moved_to,
        })
    }

    /// `POST /v3/conversations`: e.g. a 1:1 chat with one `29:` member (needs
    /// `tenantId`). Rate-limited per bot per member (or per channel for a new
    /// channel thread).
    pub async fn create_conversation(
        &self,
        service_url: &str,
        params: &ConversationParameters,
    ) -> Result<Delivered<ConversationResourceResponse>, ConnectorError> {
        // The thread a creation counts against: the channel for a new channel
        // thread, the member for a 1:1 (Teams returns the same chat per member).
        let channel = params
            .channel_data
            .as_ref()
            .and_then(|d| d.get("channel"))
            .and_then(|c| c.get("id"))
            .and_then(|id| id.as_str());
        let thread = channel
            .or_else(|| {
                params
                    .members
                    .as_ref()
                    .and_then(|m| m.first())
                    .map(|m| m.id.as_str())
            })
            .unwrap_or("-");
        let tenant = params.tenant_id.as_deref();
        self.execute(Call {
            method: Method::POST,
            service_url,
            path: "/v3/conversations".into(),
            query: vec![],
            body: Some(to_json(params)?),
            op: teams::Operation::Create,
            tenant,
            thread,
            creates: true,
        })
        .await
    }

    /// `GET /v3/conversations/{id}/pagedmembers`: one page of members.
    pub async fn get_paged_members(
        &self,
        to: &Target,
        page_size: Option<u32>,
        continuation_token: Option<&str>,
    ) -> Result<Delivered<PagedMembersResult>, ConnectorError> {
        let mut query = vec![];
        if let Some(n) = page_size {
            query.push(("pageSize", n.to_string()));
        }
        if let Some(t) = continuation_token {
            query.push(("continuationToken", t.to_owned()));
        }
        self.execute(Call {
            method: Method::GET,
            service_url: &to.service_url,
            path: format!(
                "/v3/conversations/{}/pagedmembers",
                encode_segment(&to.conversation_id)
            ),
            query,
            body: None,
            op: teams::Operation::Members,
            tenant: to.tenant_id.as_deref(),
            thread: &to.conversation_id,
            creates: false,
        })
        .await
    }

    /// Every member, page by page (500 per page, the Teams maximum).
    pub async fn get_all_members(
        &self,
        to: &Target,
    ) -> Result<Vec<ChannelAccount>, ConnectorError> {
        let mut members = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .get_paged_members(to, Some(500), token.as_deref())
                .await?
                .value;
            members.extend(page.members);
            match page.continuation_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok(members),
            }
        }
    }

    async fn token(&self, rejected: Option<&Secret>) -> Result<Secret, ConnectorError> {
        let r = match rejected {
            Some(r) => self.bot.tokens.refresh_rejected(r).await,
            None => self.bot.tokens.token().await,
        };
        r.map_err(ConnectorError::Token)
    }

    /// One Bot Connector call in its client span (docs/observability.md):
    /// operation, HTTP status of the last answer, retries; never the body or
    /// the token.
    async fn execute<T: DeserializeOwned + Default>(
        &self,
        call: Call<'_>,
    ) -> Result<Delivered<T>, ConnectorError> {
        use tracing::Instrument;
        let host = url::Url::parse(call.service_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let span = tracing::info_span!(
            "bot_connector",
            otel.name = %format_args!("Bot Connector {:?}", call.op),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = %call.method,
            server.address = %host,
            botfleet.operation = ?call.op,
            botfleet.app_id = %self.bot.app_id,
            http.response.status_code = tracing::field::Empty,
            botfleet.retry_count = tracing::field::Empty,
            botfleet.outcome = tracing::field::Empty,
        );
        let result = self.attempts(call).instrument(span.clone()).await;
        let attempts = match &result {
            Ok(d) => Some(d.attempts),
            Err(ConnectorError::Failed(f)) => Some(f.attempts),
            Err(
                ConnectorError::Unreachable { attempts, .. }
                | ConnectorError::Unknown { attempts, .. },
            ) => Some(*attempts),
            Err(_) => None,
        };
        if let Some(n) = attempts {
            // i64: tracing-opentelemetry exports unsigned fields as strings.
            span.record("botfleet.retry_count", i64::from(n.saturating_sub(1)));
        }
        match &result {
            Ok(_) => {
                span.record("botfleet.outcome", "delivered");
            }
            Err(e) => {
                span.record("botfleet.outcome", format!("{:?}", e.action()).as_str());
                span.record("otel.status_code", "error");
            }
        }
        result
    }

    /// [`Self::execute`] without its span: the attempts of one call.
    async fn attempts<T: DeserializeOwned + Default>(
        &self,
        call: Call<'_>,
    ) -> Result<Delivered<T>, ConnectorError> {
        let bot = &*self.bot;
        let policy = &bot.retry;
        let started = Instant::now();
        let buckets = teams::buckets(call.op, &bot.app_id, call.tenant, call.thread);
        let thread_bucket = teams::thread_bucket(call.op, &bot.app_id, call.tenant, call.thread);
        let mut service_url = call.service_url.to_owned();
        let mut moved: Option<String> = None;
        let mut attempts = 0u32;
        let mut retries = 0u32;
        let mut refreshed = false;
        // An earlier attempt of a creating call may have been delivered.
        let mut maybe_delivered = false;
        let check = |url: &str| {
            bot.allowlist
                .check(url)
                .map_err(|source| ConnectorError::ServiceUrlRefused {
                    app_id: bot.app_id.clone(),
                    source,
                })
        };
        // Before the token: a refused host gets nothing, not even a token fetch.
        check(&service_url)?;
        let mut token = self.token(None).await?;
        let operation = operation_label(&call);
        loop {
            check(&service_url)?;
            let waiting = Instant::now();
            match acquire_within(
                self.shared.limiter.as_ref(),
                &buckets,
                policy.max_rate_limit_wait,
            )
            .await
            {
                Ok(Acquired::Granted { .. }) => {
                    botfleet_telemetry::metrics::rate_limiter_waited(waiting.elapsed());
                }
                Ok(Acquired::TooLong { retry_after }) => {
                    return Err(if maybe_delivered {
                        unknown(attempts, "throttled before the next resend".into())
                    } else {
                        ConnectorError::Throttled { retry_after }
                    })
                }
                Err(e) => return Err(ConnectorError::RateLimiter(e)),
            }
            attempts += 1;
            let url = format!("{}{}", service_url.trim_end_matches('/'), call.path);
            let mut bearer =
                HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                    ConnectorError::InvalidRequest(
                        "the access token is not a valid HTTP header value".into(),
                    )
                })?;
            bearer.set_sensitive(true);
            let mut req = self
                .shared
                .http
                .request(call.method.clone(), &url)
                .header(AUTHORIZATION, bearer);
            if !call.query.is_empty() {
                req = req.query(&call.query);
            }
            if let Some(body) = &call.body {
                req = req
                    .header(CONTENT_TYPE, "application/json; charset=utf-8")
                    .body(body.clone());
            }
            let (retry_after, last) = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    tracing::Span::current().record("http.response.status_code", i64::from(status));
                    botfleet_telemetry::metrics::connector_call(operation, Some(status));
                    let correlation_id = ["x-correlating-operationid", "ms-cv"]
                        .iter()
                        .find_map(|h| resp.headers().get(*h))
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let retry_after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    let body = resp.bytes().await;
                    if (200..300).contains(&status) {
                        let parsed = match &body {
                            Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(T::default()),
                            Ok(b) => serde_json::from_slice::<T>(b).map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        match parsed {
                            Ok(value) => {
                                tracing::debug!(app_id = %bot.app_id, method = %call.method, status, attempts, "Bot Connector call succeeded");
                                return Ok(Delivered {
                                    value,
                                    attempts,
                                    service_url_moved_to: moved,
                                });
                            }
                            // Teams accepted it; an unreadable answer must not make
                            // the caller resend a message that was delivered.
                            Err(e) if call.creates => {
                                tracing::warn!(app_id = %bot.app_id, status, error = %e, "Bot Connector accepted the request but its answer is unreadable");
                                return Ok(Delivered {
                                    value: T::default(),
                                    attempts,
                                    service_url_moved_to: moved,
                                });
                            }
                            Err(e) => (
                                None,
                                LastFailure::Transport(format!(
                                    "HTTP {status} with an unreadable body: {e}"
                                )),
                            ),
                        }
                    } else {
                        let body = body.unwrap_or_default();
                        let (code, message) = parse_error_body(&body);
                        let failure = |action: Action| Failure {
                            status,
                            code: code.clone(),
                            message: message.clone(),
                            action,
                            attempts,
                            retry_after,
                            service_url_moved_to: moved.clone(),
                            correlation_id: correlation_id.clone(),
                        };
                        match classify(status, &code) {
                            Disposition::RefreshToken if !refreshed => {
                                tracing::info!(app_id = %bot.app_id, code = %code, "Bot Connector answered 401; refreshing the token and retrying once");
                                refreshed = true;
                                token = self.token(Some(&token)).await?;
                                continue;
                            }
                            Disposition::RefreshToken => {
                                return Err(ConnectorError::Failed(Box::new(failure(
                                    Action::CheckBotRegistration,
                                ))))
                            }
                            Disposition::MoveToGcc if moved.is_none() => {
                                let gcc = self.shared.config.gcc_service_url.clone();
                                tracing::info!(app_id = %bot.app_id, from = %service_url, to = %gcc, "InvalidBotApiHost: retrying at the GCC host");
                                service_url = gcc.clone();
                                moved = Some(gcc);
                                continue;
                            }
                            Disposition::MoveToGcc => {
                                return Err(ConnectorError::Failed(Box::new(failure(
                                    Action::Report,
                                ))))
                            }
                            Disposition::Permanent(action) => {
                                return Err(ConnectorError::Failed(Box::new(failure(action))))
                            }
                            Disposition::Retry => {
                                // A gateway timeout on a creating POST is as ambiguous
                                // as a client-side timeout: Teams may have delivered it.
                                if status == 504 && call.creates {
                                    maybe_delivered = true;
                                    if bot.ambiguous == AmbiguousPolicy::ReportUnknown {
                                        return Err(unknown(
                                            attempts,
                                            "HTTP 504 gateway timeout".into(),
                                        ));
                                    }
                                }
                                if status == 429 || (status == 503 && retry_after.is_some()) {
                                    botfleet_telemetry::metrics::teams_throttled(
                                        status,
                                        retry_after,
                                    );
                                }
                                if status == 429 {
                                    // Tell every sender (and replica) of this thread, not just this call.
                                    let hold = retry_after.unwrap_or(Duration::from_secs(1));
                                    if let Err(e) =
                                        self.shared.limiter.block(&thread_bucket, hold).await
                                    {
                                        tracing::warn!(error = %e, "could not record the 429 in the rate limiter");
                                    }
                                }
                                // Teams is pacing us: a caller that reschedules gets it
                                // at once instead of a call held for Retry-After.
                                if policy.return_throttling
                                    && (status == 429 || (status == 503 && retry_after.is_some()))
                                {
                                    return Err(if maybe_delivered {
                                        unknown(
                                            attempts,
                                            format!("HTTP {status} before the next resend"),
                                        )
                                    } else {
                                        ConnectorError::Failed(Box::new(failure(
                                            Action::RetryLater,
                                        )))
                                    });
                                }
                                (retry_after, LastFailure::Http(failure(Action::RetryLater)))
                            }
                        }
                    }
                }
                Err(e) => {
                    botfleet_telemetry::metrics::connector_call(operation, None);
                    let detail = error_chain(&e);
                    // Connect errors (refused, DNS, TLS, connect timeout) happen
                    // before any byte of the request left: always safe to retry.
                    if !e.is_connect() && call.creates {
                        maybe_delivered = true;
                        if bot.ambiguous == AmbiguousPolicy::ReportUnknown {
                            tracing::warn!(app_id = %bot.app_id, attempts, %detail, "Bot Connector request failed after it was sent; delivery unknown, not resending");
                            return Err(unknown(attempts, detail));
                        }
                    }
                    (None, LastFailure::Transport(detail))
                }
            };
            let delay = match retry_after {
                // At least what the server asked for, plus a little jitter so
                // throttled senders do not return in lockstep.
                Some(ra) => {
                    ra + ra
                        .mul_f64(rand::thread_rng().gen_range(0.0..0.1))
                        .min(Duration::from_secs(1))
                }
                None => policy.backoff(retries),
            };
            retries += 1;
            if attempts >= policy.max_attempts || started.elapsed() + delay > policy.max_elapsed {
                return Err(match last {
                    _ if maybe_delivered => unknown(
                        attempts,
                        "retry budget exhausted after an ambiguous attempt".into(),
                    ),
                    LastFailure::Http(mut f) => {
                        f.retry_after = Some(retry_after.unwrap_or(delay));
                        ConnectorError::Failed(Box::new(f))
                    }
                    LastFailure::Transport(detail) => {
                        ConnectorError::Unreachable { attempts, detail }
                    }
                });
            }
            // The warning line and `botfleet_connector_retries_total` come from one place.
            match &last {
                LastFailure::Http(f) => botfleet_telemetry::metrics::connector_retry(
                    operation,
                    &bot.app_id,
                    Some(f.status),
                    &f.code,
                    "",
                    attempts,
                    delay,
                ),
                LastFailure::Transport(d) => botfleet_telemetry::metrics::connector_retry(
                    operation,
                    &bot.app_id,
                    None,
                    "",
                    d,
                    attempts,
                    delay,
                ),
            }
            tokio::time::sleep(delay).await;
        }
    }
}

fn unknown(attempts: u32, detail: String) -> ConnectorError {
    ConnectorError::Unknown { attempts, detail }
}

fn activity_path(conversation_id: &str, activity_id: &str) -> String {
    format!(
        "/v3/conversations/{}/activities/{}",
        encode_segment(conversation_id),
        encode_segment(activity_id)
    )
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, ConnectorError> {
    serde_json::to_vec(v).map_err(|e| ConnectorError::InvalidRequest(e.to_string()))
}

/// The error and its sources on one line (reqwest's Display alone hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A body that is not read (DELETE answers).
#[derive(Default)]
struct Ignored;

impl<'de> serde::Deserialize<'de> for Ignored {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Ignored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_ids_are_encoded_like_encode_uri_component() {
        assert_eq!(
            encode_segment("19:abc@thread.tacv2;messageid=1"),
            "19%3Aabc%40thread.tacv2%3Bmessageid%3D1"
        );
        assert_eq!(encode_segment("a:1/2?x#y z"), "a%3A1%2F2%3Fx%23y%20z");
        assert_eq!(encode_segment("é"), "%C3%A9");
        assert_eq!(encode_segment("A-z_0.9!~*'()"), "A-z_0.9!~*'()");
    }
}
