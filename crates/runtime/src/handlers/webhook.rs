//! The webhook handler: bot logic anywhere, behind an HTTPS URL.
//!
//! botfleet forwards each validated activity as JSON with two headers:
//! `X-Botfleet-Timestamp` (unix seconds) and `X-Botfleet-Signature`
//! (`sha256=` + hex HMAC-SHA256 over `"{timestamp}.{body}"` with the bot's webhook
//! secret). The receiver checks the signature and that the timestamp is recent.
//!
//! The webhook answers 2xx with an empty body, or JSON:
//! `{"replies": [activity, ...], "invokeResponse": {"status": 200, "body": ...}}`
//! (a bare array is taken as `replies`). Replies are sent into the same
//! conversation, as replies to the activity; the webhook cannot redirect them to
//! another conversation or host.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use botfleet_auth::Secret;
use botfleet_protocol::{Activity, ActivityType, InvokeResponse};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use thiserror::Error;

use crate::handler::{BotHandler, HandlerError, HandlerOutcome, Turn};
use crate::outbound::Replier;

pub const TIMESTAMP_HEADER: &str = "X-Botfleet-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Botfleet-Signature";

/// The W3C trace-context headers of `span` (none when it has no trace).
fn trace_headers(span: &tracing::Span) -> reqwest::header::HeaderMap {
    let mut map = reqwest::header::HeaderMap::new();
    for (name, value) in botfleet_telemetry::trace::context_headers(span) {
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&value) {
            map.insert(name, v);
        }
    }
    map
}

/// Largest webhook answer read; a bigger one is an error, not a memory spike.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: Secret,
    pub timeout: Duration,
    /// Allow `http://` to a host other than loopback (off by default: the
    /// activity carries user messages).
    pub allow_insecure_http: bool,
}

#[derive(Debug, Error)]
pub enum WebhookError {
    #[error("webhook URL `{0}` is not a valid absolute URL")]
    InvalidUrl(String),
    #[error("webhook URL `{0}` is not https; use https, a loopback host, or set allow_insecure_http = true for this bot")]
    Insecure(String),
    #[error("the webhook secret is empty; set a random secret of at least 16 characters")]
    WeakSecret,
}

/// `sha256=` + hex HMAC-SHA256 of `"{timestamp}.{body}"`.
pub fn sign(secret: &Secret, timestamp: u64, body: &[u8]) -> String {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    #[serde(default)]
    replies: Vec<Activity>,
    #[serde(default)]
    invoke_response: Option<InvokeResponse>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AnswerShape {
    Object(Answer),
    Replies(Vec<Activity>),
}

pub struct WebhookHandler {
    config: WebhookConfig,
    http: reqwest::Client,
    replier: Option<Replier>,
    failures: AtomicU64,
}

impl WebhookHandler {
    /// `replier` is `None` for a bot without outbound credentials: replies in
    /// webhook answers are then an error.
    pub fn new(
        config: WebhookConfig,
        http: reqwest::Client,
        replier: Option<Replier>,
    ) -> Result<Self, WebhookError> {
        let url = url::Url::parse(&config.url)
            .map_err(|_| WebhookError::InvalidUrl(config.url.clone()))?;
        let loopback = matches!(
            url.host_str(),
            Some("localhost" | "127.0.0.1" | "[::1]" | "::1")
        );
        match url.scheme() {
            "https" => {}
            "http" if loopback || config.allow_insecure_http => {}
            _ => return Err(WebhookError::Insecure(config.url.clone())),
        }
        if config.secret.is_empty() {
            return Err(WebhookError::WeakSecret);
        }
        Ok(Self {
            config,
            http,
            replier,
            failures: AtomicU64::new(0),
        })
    }

    /// Webhook calls that failed (unreachable, timeout, non-2xx, unreadable answer).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn fail(&self, error: HandlerError) -> HandlerError {
        self.failures.fetch_add(1, Ordering::Relaxed);
        error
    }

    /// [`Self::call`], timed and counted (`botfleet_webhook_duration_seconds`,
    /// `botfleet_webhook_failures_total{reason}`: `retryable` when the
    /// webhook was not reached or asked to be called again, else `failed`).
    async fn timed_call(&self, activity: &Activity) -> Result<Answer, HandlerError> {
        let started = std::time::Instant::now();
        let r = self.call(activity).await;
        let failure = r.as_ref().err().map(|e| match e {
            HandlerError::Retry(_) => "retryable",
            _ => "failed",
        });
        botfleet_telemetry::metrics::webhook_call(started.elapsed().as_secs_f64(), failure);
        r
    }

    /// Calls the webhook. What a failure means for Teams (`docs/turns.md`):
    /// - not connected (refused, DNS, TLS): the bot logic never ran -> `Retry`;
    /// - answered 408, 429 or 5xx: the webhook asks to be called again, and
    ///   botfleet sent no reply of it -> `Retry`;
    /// - timed out or lost the connection after sending, answered another
    ///   status, or an unreadable answer: it ran, or may have -> `Failed`.
    async fn call(&self, activity: &Activity) -> Result<Answer, HandlerError> {
        use tracing::Instrument;
        // The host only: a webhook URL may carry a key in its path or query.
        let host = url::Url::parse(&self.config.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let span = tracing::info_span!(
            "webhook",
            otel.name = "POST webhook",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            server.address = %host,
            http.response.status_code = tracing::field::Empty,
            botfleet.outcome = tracing::field::Empty,
        );
        let result = self.call_untraced(activity).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(HandlerError::Retry(_)) => "retry",
            Err(_) => "failed",
        };
        span.record("botfleet.outcome", outcome);
        if result.is_err() {
            span.record("otel.status_code", "error");
        }
        result
    }

    /// One webhook request, in the current (`webhook`) span, whose W3C
    /// `traceparent` / `tracestate` it carries
    /// (https://www.w3.org/TR/trace-context/): the bot logic's spans join
    /// the turn's trace.
    async fn call_untraced(&self, activity: &Activity) -> Result<Answer, HandlerError> {
        let body = serde_json::to_vec(activity).map_err(|e| {
            self.fail(HandlerError::Failed(format!(
                "activity not serialisable: {e}"
            )))
        })?;
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let url = &self.config.url;
        let resp = self
            .http
            .post(url)
            .timeout(self.config.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(SIGNATURE_HEADER, sign(&self.config.secret, ts, &body))
            .headers(trace_headers(&tracing::Span::current()))
            .body(body)
            .send()
            .await
            .map_err(|e| {
                self.fail(if e.is_connect() {
                    HandlerError::Retry(format!("webhook {url} could not be connected to: {e}"))
                } else if e.is_timeout() {
                    HandlerError::Failed(format!(
                        "webhook {url} did not answer within {:?}; it may have acted",
                        self.config.timeout
                    ))
                } else {
                    HandlerError::Failed(format!(
                        "webhook {url} failed after the request was sent: {e}"
                    ))
                })
            })?;
        let status = resp.status();
        tracing::Span::current().record(
            "http.response.status_code",
            i64::from(status.as_u16()), // an int attribute (u16 would export as a string)
        );
        let bytes = read_limited(resp).await.map_err(|e| {
            self.fail(HandlerError::Failed(format!(
                "webhook {url} answer not read: {e}"
            )))
        })?;
        if !status.is_success() {
            let snippet: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
            let message = format!("webhook {url} answered HTTP {}: {snippet}", status.as_u16());
            let asks_again = status.is_server_error()
                || status == reqwest::StatusCode::REQUEST_TIMEOUT
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
            return Err(self.fail(if asks_again {
                HandlerError::Retry(message)
            } else {
                HandlerError::Failed(message)
            }));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Answer::default());
        }
        match serde_json::from_slice::<AnswerShape>(&bytes) {
            Ok(AnswerShape::Object(a)) => Ok(a),
            Ok(AnswerShape::Replies(replies)) => Ok(Answer {
                replies,
                invoke_response: None,
            }),
            Err(e) => Err(self.fail(HandlerError::Failed(format!(
                "webhook {url} answered something that is not {{\"replies\":[...],\"invokeResponse\":...}}: {e}"
            )))),
        }
    }
}

async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The webhook's activity as a reply to `inbound`: addressing always comes from
/// the validated inbound activity.
fn addressed(inbound: &Activity, mut reply: Activity) -> Activity {
    let base = inbound.reply(String::new());
    reply.from = base.from;
    reply.recipient = base.recipient;
    reply.conversation = base.conversation;
    reply.reply_to_id = base.reply_to_id;
    reply.service_url = base.service_url;
    reply.channel_id = base.channel_id;
    if reply.kind.is_empty() {
        reply.kind = ActivityType::Message.as_str().to_owned();
    }
    reply
}

#[async_trait]
impl BotHandler for WebhookHandler {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    async fn on_turn(&self, turn: &Turn) -> Result<HandlerOutcome, HandlerError> {
        let answer = self.timed_call(&turn.activity).await?;
        let mut undelivered = None;
        if !answer.replies.is_empty() {
            let replier = self.replier.as_ref().ok_or_else(|| {
                self.fail(HandlerError::Failed("the webhook answered with replies but this bot has no app_password to send them".into()))
            })?;
            for reply in answer.replies {
                // The first failure ends the batch: later replies would arrive
                // without the one before them.
                if let Err(e) = replier.reply(turn, addressed(&turn.activity, reply)).await {
                    undelivered = Some(e);
                    break;
                }
            }
        }
        if turn.activity.activity_type() == ActivityType::Invoke {
            // The invoke's answer is synchronous and stands; a failed reply is
            // already recorded.
            return Ok(HandlerOutcome::Invoke(
                answer.invoke_response.unwrap_or(InvokeResponse::ok(None)),
            ));
        }
        match undelivered {
            Some(e) => Err(HandlerError::Reply(e)),
            None => Ok(HandlerOutcome::Done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_over_timestamp_and_body() {
        let s = sign(&Secret::new("k"), 1700000000, b"{}");
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"k",b"1700000000.{}",hashlib.sha256).hexdigest())'
        assert_eq!(
            s,
            "sha256=c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146"
        );
        assert_ne!(s, sign(&Secret::new("k"), 1700000001, b"{}"));
        assert_ne!(s, sign(&Secret::new("other"), 1700000000, b"{}"));
    }

    #[test]
    fn urls_must_be_https_unless_loopback_or_allowed() {
        let cfg = |url: &str, allow: bool| WebhookConfig {
            url: url.into(),
            secret: Secret::new("0123456789abcdef"),
            timeout: Duration::from_secs(1),
            allow_insecure_http: allow,
        };
        let http = reqwest::Client::new();
        assert!(WebhookHandler::new(
            cfg("https://bots.example.com/hook", false),
            http.clone(),
            None
        )
        .is_ok());
        assert!(
            WebhookHandler::new(cfg("http://127.0.0.1:9/hook", false), http.clone(), None).is_ok()
        );
        assert!(matches!(
            WebhookHandler::new(
                cfg("http://bots.example.com/hook", false),
                http.clone(),
                None
            ),
            Err(WebhookError::Insecure(_))
        ));
        assert!(WebhookHandler::new(
            cfg("http://bots.example.com/hook", true),
            http.clone(),
            None
        )
        .is_ok());
        assert!(matches!(
            WebhookHandler::new(cfg("not a url", false), http, None),
            Err(WebhookError::InvalidUrl(_))
        ));
    }
}
