//! The Graph calls botfleet makes: subscriptions
//! (https://learn.microsoft.com/graph/api/resources/subscription) and chat or
//! channel message reads (https://learn.microsoft.com/graph/api/chat-list-messages).
//! Every answer's `Date` header is kept: remaining lifetimes are
//! `expirationDateTime - Date`, robust to clock skew between botfleet and Graph.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use thiserror::Error;

use crate::time::{parse_http_date_ms, parse_rfc3339_ms};

/// Pages of a listing followed at most (50 items each for messages).
const MAX_PAGES: usize = 100;
/// A `Retry-After` longer than this is capped (Graph sends seconds).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// A Graph call that did not succeed. Messages carry Graph's error code and
/// message, never a token.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GraphError {
    #[error("Graph throttled the call (HTTP {status}); retry after {}s", retry_after.as_secs())]
    Throttled { status: u16, retry_after: Duration },
    #[error("Graph: not found ({0})")]
    NotFound(String),
    #[error("Graph refused it: quota or permission (HTTP 403: {0}); check the app's Graph permissions and the subscription quotas (1 per app per chat or channel)")]
    Forbidden(String),
    #[error("Graph refused the request (HTTP 400: {0})")]
    BadRequest(String),
    #[error("Graph refused the token (HTTP 401: {0})")]
    Unauthorized(String),
    #[error("Graph answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("Graph unreachable: {0}")]
    Http(String),
    #[error("no Graph token: {0}")]
    Token(String),
}

impl GraphError {
    /// When to try again, for throttling.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// A Graph answer and its `Date` (ms since the Unix epoch, Graph's clock).
#[derive(Debug, Clone)]
pub struct Dated<T> {
    pub value: T,
    pub date_ms: Option<u64>,
}

/// The fields of a Graph subscription botfleet reads.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GraphSubscription {
    pub id: String,
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub expiration_date_time: String,
    #[serde(default)]
    pub notification_url: Option<String>,
    #[serde(default)]
    pub client_state: Option<String>,
}

impl GraphSubscription {
    pub fn expires_ms(&self) -> Option<u64> {
        parse_rfc3339_ms(&self.expiration_date_time)
    }
}

#[derive(Deserialize)]
struct Page<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

/// Graph over HTTP for one base URL (`https://graph.microsoft.com/v1.0`).
#[derive(Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    base: String,
}

impl GraphClient {
    pub fn new(http: reqwest::Client, base: &str) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("https://") || path.starts_with("http://") {
            path.to_owned()
        } else if path.starts_with('/') {
            format!("{}{path}", self.base)
        } else {
            format!("{}/{path}", self.base)
        }
    }

    async fn call(
        &self,
        req: reqwest::RequestBuilder,
        token: &str,
    ) -> Result<(StatusCode, Option<u64>, bytes_body::Body), GraphError> {
        let r = req
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| GraphError::Http(e.without_url().to_string()))?;
        let status = r.status();
        let date_ms = r
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date_ms);
        let retry_after = r
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = r
            .bytes()
            .await
            .map_err(|e| GraphError::Http(e.without_url().to_string()))?;
        if status.is_success() {
            return Ok((status, date_ms, bytes_body::Body(body.to_vec())));
        }
        let message = error_message(&body);
        Err(match status.as_u16() {
            429 => GraphError::Throttled {
                status: 429,
                retry_after: retry_after
                    .unwrap_or(Duration::from_secs(30))
                    .min(MAX_RETRY_AFTER),
            },
            503 if retry_after.is_some() => GraphError::Throttled {
                status: 503,
                retry_after: retry_after.unwrap_or_default().min(MAX_RETRY_AFTER),
            },
            404 => GraphError::NotFound(message),
            403 => GraphError::Forbidden(message),
            400 => GraphError::BadRequest(message),
            401 => GraphError::Unauthorized(message),
            s => GraphError::Status { status: s, message },
        })
    }

    fn parse<T: serde::de::DeserializeOwned>(body: &bytes_body::Body) -> Result<T, GraphError> {
        serde_json::from_slice(&body.0).map_err(|e| GraphError::Status {
            status: 200,
            message: format!("unexpected answer: {e}"),
        })
    }

    /// `POST /subscriptions` with `body` (Graph's subscription shape).
    pub async fn create(
        &self,
        token: &str,
        body: &serde_json::Value,
    ) -> Result<Dated<GraphSubscription>, GraphError> {
        let (_, date_ms, b) = self
            .call(self.http.post(self.url("/subscriptions")).json(body), token)
            .await?;
        Ok(Dated {
            value: Self::parse(&b)?,
            date_ms,
        })
    }

    /// `GET /subscriptions/{id}`.
    pub async fn get(&self, token: &str, id: &str) -> Result<Dated<GraphSubscription>, GraphError> {
        let (_, date_ms, b) = self
            .call(
                self.http
                    .get(self.url(&format!("/subscriptions/{}", enc(id)))),
                token,
            )
            .await?;
        Ok(Dated {
            value: Self::parse(&b)?,
            date_ms,
        })
    }

    /// `PATCH /subscriptions/{id}` with a new `expirationDateTime` (RFC 3339)
    /// and, when rotating, the new `(encryptionCertificate, encryptionCertificateId)`.
    pub async fn renew(
        &self,
        token: &str,
        id: &str,
        expiration: &str,
        certificate: Option<(&str, &str)>,
    ) -> Result<Dated<GraphSubscription>, GraphError> {
        let mut body = serde_json::json!({ "expirationDateTime": expiration });
        if let Some((cert, cert_id)) = certificate {
            body["encryptionCertificate"] = cert.into();
            body["encryptionCertificateId"] = cert_id.into();
        }
        let (_, date_ms, b) = self
            .call(
                self.http
                    .patch(self.url(&format!("/subscriptions/{}", enc(id))))
                    .json(&body),
                token,
            )
            .await?;
        Ok(Dated {
            value: Self::parse(&b)?,
            date_ms,
        })
    }

    /// `POST /subscriptions/{id}/reauthorize`.
    pub async fn reauthorize(&self, token: &str, id: &str) -> Result<Option<u64>, GraphError> {
        let (_, date_ms, _) = self
            .call(
                self.http
                    .post(self.url(&format!("/subscriptions/{}/reauthorize", enc(id))))
                    .header(reqwest::header::CONTENT_LENGTH, 0),
                token,
            )
            .await?;
        Ok(date_ms)
    }

    /// `DELETE /subscriptions/{id}` (gone already counts as deleted).
    pub async fn delete(&self, token: &str, id: &str) -> Result<(), GraphError> {
        match self
            .call(
                self.http
                    .delete(self.url(&format!("/subscriptions/{}", enc(id)))),
                token,
            )
            .await
        {
            Ok(_) | Err(GraphError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `GET /subscriptions`, every page: this app's subscriptions in the
    /// token's tenant.
    pub async fn list(&self, token: &str) -> Result<Dated<Vec<GraphSubscription>>, GraphError> {
        let mut url = self.url("/subscriptions");
        let mut out = Vec::new();
        let mut date = None;
        for _ in 0..MAX_PAGES {
            let (_, date_ms, b) = self.call(self.http.get(&url), token).await?;
            date = date_ms.or(date);
            let page: Page<GraphSubscription> = Self::parse(&b)?;
            out.extend(page.value);
            match page.next_link {
                Some(next) => url = next,
                None => break,
            }
        }
        Ok(Dated {
            value: out,
            date_ms: date,
        })
    }

    /// `GET {resource}` (a message named by a notification's `resource`).
    pub async fn get_resource(
        &self,
        token: &str,
        resource: &str,
    ) -> Result<serde_json::Value, GraphError> {
        let (_, _, b) = self.call(self.http.get(self.url(resource)), token).await?;
        Self::parse(&b)
    }

    /// Messages of a chat or channel (`/chats/{id}/messages`,
    /// `/teams/{id}/channels/{id}/messages`) last modified after `since_ms`,
    /// oldest first. `$orderby=lastModifiedDateTime desc` with `$filter ... gt`
    /// and `$top=50`, the documented form for chat messages
    /// (https://learn.microsoft.com/graph/api/chat-list-messages#optional-query-parameters).
    pub async fn messages_since(
        &self,
        token: &str,
        resource: &str,
        since_ms: u64,
    ) -> Result<Vec<serde_json::Value>, GraphError> {
        let since = crate::time::rfc3339(since_ms);
        let mut url = url::Url::parse(&self.url(resource))
            .map_err(|e| GraphError::Http(format!("bad resource URL: {e}")))?;
        url.query_pairs_mut()
            .append_pair("$top", "50")
            .append_pair("$orderby", "lastModifiedDateTime desc")
            .append_pair("$filter", &format!("lastModifiedDateTime gt {since}"));
        let mut next = url.to_string();
        let mut out = Vec::new();
        'pages: for _ in 0..MAX_PAGES {
            let (_, _, b) = self.call(self.http.get(&next), token).await?;
            let page: Page<serde_json::Value> = Self::parse(&b)?;
            for m in page.value {
                let modified = m
                    .get("lastModifiedDateTime")
                    .and_then(|v| v.as_str())
                    .and_then(parse_rfc3339_ms);
                match modified {
                    // Newest first: the first older one ends the read.
                    Some(t) if t <= since_ms => break 'pages,
                    _ => out.push(m),
                }
            }
            match page.next_link {
                Some(n) => next = n,
                None => break,
            }
        }
        out.reverse();
        Ok(out)
    }
}

/// Graph's `{"error":{"code","message"}}`, cut to 300 characters.
fn error_message(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = v
        .pointer("/error/code")
        .and_then(|c| c.as_str())
        .unwrap_or("");
    let msg = v
        .pointer("/error/message")
        .and_then(|c| c.as_str())
        .unwrap_or("");
    let s = match (code.is_empty(), msg.is_empty()) {
        (true, true) => "no error details".to_owned(),
        (false, true) => code.to_owned(),
        (true, false) => msg.to_owned(),
        (false, false) => format!("{code}: {msg}"),
    };
    s.chars().filter(|c| !c.is_control()).take(300).collect()
}

fn enc(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

mod bytes_body {
    /// A response body read in full.
    pub struct Body(pub Vec<u8>);
}
