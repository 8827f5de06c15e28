//! Every error the admin API answers, as RFC 7807 problem+json of the shared
//! problem table ([`crate::problem`]).
//!
//! Two extension members (RFC 7807 section 3.2 allows them) are added where they
//! help a client act: `field` (the JSON path or query parameter at fault, on
//! `invalid_field` / `invalid_query`) and `current_etag` (on
//! `precondition_failed`).

use std::time::Duration;

use actix_web::body::BoxBody;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use botfleet_store::admin::AdminStoreError;
use botfleet_store::conversations::StoreError;

use crate::problem::{self, Problem};

/// Why an admin call failed. Every variant maps to one row of the problem table;
/// no variant ever carries a key, a credential or a message text.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("send `Authorization: Bearer <key>` with an admin API key")]
    MissingKey,
    #[error("the API key is unknown or wrong")]
    InvalidKey,
    #[error("API key `{0}` expired; ask an admin for a new one")]
    ExpiredKey(String),
    #[error("API key `{0}` was revoked; ask an admin for a new one")]
    RevokedKey(String),
    #[error("too many failed authentications from this address; retry in {} s", retry_after_secs(*.retry_after))]
    RateLimited { retry_after: Duration },
    /// The detail names the role, the action and, for a scoped key, the bot.
    #[error("{0}")]
    Forbidden(String),
    #[error("no bot `{0}`")]
    BotNotFound(String),
    #[error("no API key `{0}`")]
    KeyNotFound(String),
    /// No such job, or one of a bot the key does not reach.
    #[error("no notification `{0}` (or it belongs to a bot this key is not scoped to)")]
    NotificationNotFound(String),
    /// No such Graph subscription, or one of a bot the key does not reach.
    #[error("no Graph subscription `{0}` (or it belongs to a bot this key is not scoped to)")]
    GraphSubscriptionNotFound(String),
    #[error("a Graph subscription `{0}` exists; DELETE it first or pick another id")]
    GraphSubscriptionConflict(String),
    /// The message names the key and the job it created.
    #[error("{0}")]
    IdempotencyConflict(String),
    #[error("the admin API serves no resource at this path with this method (docs/admin-api.md lists them)")]
    RouteNotFound,
    /// A body field is missing, unknown or invalid; `field` is its JSON path
    /// (`handler.url`), empty for the body as a whole.
    #[error("{}{problem}", if field.is_empty() { String::new() } else { format!("`{field}`: ") })]
    InvalidField { field: String, problem: String },
    /// Several fields at fault, each with its problem (the first is `field`).
    #[error("{}", .0.iter().map(|(f, p)| format!("`{f}`: {p}")).collect::<Vec<_>>().join("; "))]
    InvalidFields(Vec<(String, String)>),
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("query parameter `{field}`: {problem}")]
    InvalidQuery { field: String, problem: String },
    #[error("invalid cursor: pass back the `next` of the previous page unchanged")]
    InvalidCursor,
    #[error("the body exceeds the admin API's limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("send the body as {0}")]
    UnsupportedMediaType(&'static str),
    /// The message names the id or app id and who holds it.
    #[error("{0}")]
    BotConflict(String),
    #[error("bot `{0}` is defined in the configuration file: change it there and restart (the admin API changes only bots it created)")]
    BotReadOnly(String),
    #[error(
        "send the bot's ETag in If-Match (GET the bot first); this API refuses blind overwrites"
    )]
    PreconditionRequired,
    #[error("the bot changed since it was read: its current ETag is \"{current}\"; GET it again and retry")]
    PreconditionFailed { current: u64 },
    #[error("the admin store is unavailable; retry later")]
    StoreUnavailable,
    /// Logged with the request id; the detail sent is generic.
    #[error("internal error; botfleet's log has the reason")]
    Internal,
}

fn retry_after_secs(d: Duration) -> u64 {
    // Round up: a client that waits the advertised time must not be refused.
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl AdminError {
    /// The row of the problem table this error answers with.
    pub fn problem_type(&self) -> problem::ProblemType {
        use problem as p;
        match self {
            Self::MissingKey => p::API_KEY_MISSING,
            Self::InvalidKey => p::API_KEY_INVALID,
            Self::ExpiredKey(_) => p::API_KEY_EXPIRED,
            Self::RevokedKey(_) => p::API_KEY_REVOKED,
            Self::RateLimited { .. } => p::AUTH_RATE_LIMITED,
            Self::Forbidden(_) => p::FORBIDDEN,
            Self::BotNotFound(_) => p::BOT_NOT_FOUND,
            Self::KeyNotFound(_) => p::KEY_NOT_FOUND,
            Self::NotificationNotFound(_) => p::NOTIFICATION_NOT_FOUND,
            Self::GraphSubscriptionNotFound(_) => p::GRAPH_SUBSCRIPTION_NOT_FOUND,
            Self::GraphSubscriptionConflict(_) => p::GRAPH_SUBSCRIPTION_CONFLICT,
            Self::IdempotencyConflict(_) => p::IDEMPOTENCY_CONFLICT,
            Self::RouteNotFound => p::NOT_FOUND,
            Self::InvalidField { .. } | Self::InvalidFields(_) => p::INVALID_FIELD,
            Self::MalformedJson(_) => p::MALFORMED_JSON,
            Self::InvalidQuery { .. } => p::INVALID_QUERY,
            Self::InvalidCursor => p::INVALID_CURSOR,
            Self::BodyTooLarge(_) => p::BODY_TOO_LARGE,
            Self::UnsupportedMediaType(_) => p::UNSUPPORTED_MEDIA_TYPE,
            Self::BotConflict(_) => p::BOT_CONFLICT,
            Self::BotReadOnly(_) => p::BOT_READ_ONLY,
            Self::PreconditionRequired => p::PRECONDITION_REQUIRED,
            Self::PreconditionFailed { .. } => p::PRECONDITION_FAILED,
            Self::StoreUnavailable => p::ADMIN_STORE_UNAVAILABLE,
            Self::Internal => p::INTERNAL,
        }
    }

    /// The HTTP status answered (the problem type's).
    pub fn status(&self) -> u16 {
        self.problem_type().status
    }

    pub(crate) fn field(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            problem: problem.into(),
        }
    }

    fn problem(&self) -> Problem {
        let mut p = Problem::new(self.problem_type(), self.to_string());
        match self {
            Self::RateLimited { retry_after } => {
                p = p.with_header(
                    header::RETRY_AFTER,
                    &retry_after_secs(*retry_after).to_string(),
                );
            }
            Self::MissingKey => {
                p = p.with_header(header::WWW_AUTHENTICATE, "Bearer realm=\"botfleet-admin\"");
            }
            // RFC 6750 section 3.1: a presented but unusable token is `invalid_token`.
            Self::InvalidKey | Self::ExpiredKey(_) | Self::RevokedKey(_) => {
                p = p.with_header(
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"botfleet-admin\", error=\"invalid_token\"",
                );
            }
            _ => {}
        }
        p
    }

    /// Extension members beside the standard ones.
    fn extensions(&self) -> Vec<(&'static str, serde_json::Value)> {
        match self {
            Self::InvalidField { field, .. } | Self::InvalidQuery { field, .. } => {
                vec![("field", serde_json::Value::from(field.as_str()))]
            }
            Self::InvalidFields(errors) => {
                let list: Vec<serde_json::Value> = errors
                    .iter()
                    .map(|(f, p)| serde_json::json!({"field": f, "problem": p}))
                    .collect();
                vec![
                    (
                        "field",
                        serde_json::Value::from(
                            errors.first().map(|(f, _)| f.as_str()).unwrap_or(""),
                        ),
                    ),
                    ("errors", serde_json::Value::from(list)),
                ]
            }
            Self::PreconditionFailed { current } => {
                vec![(
                    "current_etag",
                    serde_json::Value::from(format!("\"{current}\"")),
                )]
            }
            _ => Vec::new(),
        }
    }
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        let problem = self.problem();
        let response = problem.response();
        let extensions = self.extensions();
        if extensions.is_empty() {
            return response;
        }
        let mut body = match serde_json::to_value(&problem) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => return response,
        };
        for (k, v) in extensions {
            body.insert(k.to_string(), v);
        }
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        response.set_body(BoxBody::new(bytes))
    }
}

impl From<AdminStoreError> for AdminError {
    fn from(e: AdminStoreError) -> Self {
        match e {
            AdminStoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "admin store unavailable");
                Self::StoreUnavailable
            }
            AdminStoreError::Conflict(message) => Self::BotConflict(message),
            AdminStoreError::VersionMismatch { current } => Self::PreconditionFailed { current },
            // Callers that can name the item map NotFound themselves.
            AdminStoreError::NotFound => Self::Internal,
            AdminStoreError::InvalidCursor => Self::InvalidCursor,
            AdminStoreError::Corrupt(what) => {
                tracing::error!(%what, "admin store holds data this version cannot read");
                Self::Internal
            }
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidCursor => Self::InvalidCursor,
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "conversation store unavailable");
                Self::StoreUnavailable
            }
            other => {
                tracing::error!(error = %other, "conversation store error");
                Self::Internal
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: AdminError) -> (u16, serde_json::Value) {
        let resp = e.error_response();
        let status = resp.status().as_u16();
        let bytes = actix_web::body::to_bytes(resp.into_body())
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    #[actix_web::test]
    async fn answers_have_the_exact_shape() {
        assert_eq!(
            body(AdminError::field("handler.url", "must be https")).await,
            (
                400,
                serde_json::json!({
                    "type": "urn:botfleet:problem:invalid_field",
                    "title": "Invalid field",
                    "status": 400,
                    "detail": "`handler.url`: must be https",
                    "check": "invalid_field",
                    "field": "handler.url",
                })
            )
        );
        assert_eq!(
            body(AdminError::InvalidFields(vec![
                ("id".into(), "bad".into()),
                ("cloud".into(), "unknown".into()),
            ]))
            .await
            .1,
            serde_json::json!({
                "type": "urn:botfleet:problem:invalid_field",
                "title": "Invalid field",
                "status": 400,
                "detail": "`id`: bad; `cloud`: unknown",
                "check": "invalid_field",
                "field": "id",
                "errors": [
                    {"field": "id", "problem": "bad"},
                    {"field": "cloud", "problem": "unknown"},
                ],
            })
        );
        assert_eq!(
            body(AdminError::PreconditionFailed { current: 7 }).await.1["current_etag"],
            "\"7\""
        );
    }

    #[test]
    fn rate_limit_answers_round_up_retry_after() {
        let resp = AdminError::RateLimited {
            retry_after: Duration::from_millis(1500),
        }
        .error_response();
        assert_eq!(resp.status().as_u16(), 429);
        assert_eq!(
            resp.headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("2")
        );
        let resp = AdminError::InvalidKey.error_response();
        assert_eq!(
            resp.headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok()),
            Some("Bearer realm=\"botfleet-admin\", error=\"invalid_token\"")
        );
    }
}
