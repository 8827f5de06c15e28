//! RFC 7807 problem+json answers, and the ONE table of every problem type botfleet
//! answers (messaging endpoint and admin API alike).
//!
//! Every error answer has the shape
//! `{"type": "urn:botfleet:problem:<name>", "title", "status", "detail", "check": "<name>"}`
//! with `Content-Type: application/problem+json` (RFC 7807,
//! <https://www.rfc-editor.org/rfc/rfc7807>). `<name>` is a stable snake_case name
//! clients, metrics and tests match on; `detail` is the human explanation of this
//! one failure. A [`Problem`] can only be built from a [`ProblemType`] of
//! [`TABLE`], so an answer whose type is not in the table cannot be written.
//!
//! To add a type, add one row to the `problem_types!` invocation below: it defines
//! the constant and puts it in [`TABLE`] at once.

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// Prefix of every problem `type` URI.
pub const TYPE_PREFIX: &str = "urn:botfleet:problem:";

/// One row of the problem table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProblemType {
    /// Stable snake_case name: the problem `check` field and the end of its `type`.
    pub name: &'static str,
    /// HTTP status of every answer of this type.
    pub status: u16,
    /// Short human title, the same for every answer of this type (RFC 7807 `title`).
    pub title: &'static str,
    /// One line: what the type means and what the caller can do about it.
    pub description: &'static str,
}

impl ProblemType {
    /// `urn:botfleet:problem:<name>`.
    pub fn type_uri(&self) -> String {
        format!("{TYPE_PREFIX}{}", self.name)
    }

    /// The row named `name`, if the table has one.
    pub fn by_name(name: &str) -> Option<ProblemType> {
        TABLE.iter().copied().find(|t| t.name == name)
    }
}

macro_rules! problem_types {
    ($( $(#[$doc:meta])* $konst:ident = ($name:literal, $status:literal, $title:literal, $desc:literal); )*) => {
        $(
            $(#[$doc])*
            #[doc = concat!("`", $name, "` (HTTP ", stringify!($status), "): ", $desc)]
            pub const $konst: ProblemType = ProblemType {
                name: $name,
                status: $status,
                title: $title,
                description: $desc,
            };
        )*
        /// Every problem type botfleet answers, in the order of the table above.
        pub const TABLE: &[ProblemType] = &[$($konst),*];
    };
}

problem_types! {
    // ---- messaging endpoint: request shape (checked before the token) ----
    METHOD_NOT_ALLOWED = ("method_not_allowed", 405, "Method not allowed",
        "The messaging endpoint accepts POST only; the Allow header says so.");
    NOT_FOUND = ("not_found", 404, "Not found",
        "No resource at this path.");
    UNSUPPORTED_MEDIA_TYPE = ("unsupported_media_type", 415, "Unsupported media type",
        "Activities must be sent as application/json.");
    BODY_TOO_LARGE = ("body_too_large", 413, "Request body too large",
        "The body exceeds server.body_limit_bytes.");
    BODY_UNREADABLE = ("body_unreadable", 400, "Request body unreadable",
        "The connection failed while the body was read.");
    // ---- messaging endpoint: the bearer token (RFC 6750; 401 with WWW-Authenticate) ----
    MISSING_TOKEN = ("missing_token", 401, "Missing bearer token",
        "Send `Authorization: Bearer <jwt>` issued by the Bot Framework channel.");
    MALFORMED_TOKEN = ("malformed_token", 401, "Malformed bearer token",
        "The bearer token is not a well-formed JWT.");
    UNSUPPORTED_ALGORITHM = ("unsupported_algorithm", 401, "Unsupported token algorithm",
        "Only RS256 tokens are accepted.");
    UNKNOWN_KEY = ("unknown_key", 401, "Unknown signing key",
        "The token's `kid` is not among the cloud's published signing keys.");
    SIGNATURE = ("signature", 401, "Invalid token signature",
        "The token signature does not verify with the published key.");
    ISSUER = ("issuer", 401, "Wrong token issuer",
        "The token's `iss` is not the channel issuer of the bot's cloud.");
    EXPIRED = ("expired", 401, "Token expired",
        "The token's `exp` is past, beyond the allowed clock skew.");
    MISSING_EXPIRY = ("missing_expiry", 401, "Token without expiry",
        "The token has no `exp` claim; channel tokens always carry one.");
    NOT_YET_VALID = ("not_yet_valid", 401, "Token not valid yet",
        "The token's `nbf` is in the future, beyond the allowed clock skew.");
    AUDIENCE = ("audience", 401, "Wrong token audience",
        "The token's `aud` is not the app id of the bot this path serves.");
    // ---- messaging endpoint: the body (described only to a caller with a valid token) ----
    MALFORMED_JSON = ("malformed_json", 400, "Malformed JSON",
        "The body is not valid JSON.");
    JSON_TOO_DEEP = ("json_too_deep", 400, "JSON nested too deep",
        "The body nests arrays and objects deeper than botfleet accepts.");
    INVALID_ACTIVITY = ("invalid_activity", 400, "Invalid activity",
        "The body is JSON but not a Bot Framework activity with the fields botfleet needs.");
    // ---- messaging endpoint: the token against the activity, and the bot's policy ----
    ENDORSEMENT = ("endorsement", 403, "Signing key not endorsed",
        "The signing key is not endorsed for the activity's channelId.");
    SERVICE_URL_CLAIM = ("service_url_claim", 401, "serviceUrl claim mismatch",
        "The token's `serviceurl` claim is missing or differs from the activity's serviceUrl.");
    SERVICE_URL_HOST = ("service_url_host", 403, "serviceUrl host not allowed",
        "The activity's serviceUrl is not an https URL on a host this bot may send to.");
    TENANT_NOT_ALLOWED = ("tenant_not_allowed", 403, "Tenant not allowed",
        "The activity's tenant is not in the bot's allowed_tenants.");
    KEYS_UNAVAILABLE = ("keys_unavailable", 503, "Signing keys unavailable",
        "The cloud's signing keys have not been loaded yet; retry later.");
    // ---- messaging endpoint: after validation ----
    UNAVAILABLE = ("unavailable", 503, "Service unavailable",
        "botfleet is starting or shutting down; retry later.");
    STORE_UNAVAILABLE = ("store_unavailable", 503, "Store unavailable",
        "The conversation store could not be reached; a resend will be handled.");
    BUSY = ("busy", 503, "Busy",
        "The conversation's queue is full; retry later.");
    TENANT_QUOTA = ("tenant_quota", 429, "Tenant quota exceeded",
        "The tenant sent this bot more activities per second than runtime.tenant_activities_per_sec.");
    HANDLER_FAILED = ("handler_failed", 500, "Handler failed",
        "The bot handler failed; botfleet's log has the reason.");
    HANDLER_DEADLINE = ("handler_deadline", 504, "Handler deadline",
        "The bot did not answer the invoke within the handler deadline.");
    // ---- admin API (/admin/v1): authentication and authorization ----
    API_KEY_MISSING = ("api_key_missing", 401, "Missing API key",
        "Send `Authorization: Bearer <key>` with an admin API key.");
    API_KEY_INVALID = ("api_key_invalid", 401, "Invalid API key",
        "The key is unknown or wrong; check it was copied whole (it is shown once, at creation).");
    API_KEY_EXPIRED = ("api_key_expired", 401, "API key expired",
        "The key is past its expiry; ask an admin for a new one.");
    API_KEY_REVOKED = ("api_key_revoked", 401, "API key revoked",
        "The key was revoked; ask an admin for a new one.");
    AUTH_RATE_LIMITED = ("auth_rate_limited", 429, "Too many failed authentications",
        "This client address sent too many invalid keys; every key from it is refused for Retry-After seconds.");
    FORBIDDEN = ("forbidden", 403, "Forbidden",
        "The key is valid, but its role or bot scope does not allow this call.");
    // ---- admin API: resources and requests ----
    BOT_NOT_FOUND = ("bot_not_found", 404, "Bot not found",
        "No bot with this id, neither in the configuration file nor registered through the API.");
    KEY_NOT_FOUND = ("key_not_found", 404, "API key not found",
        "No API key with this id.");
    INVALID_FIELD = ("invalid_field", 400, "Invalid field",
        "A body field is missing, unknown or invalid; the `field` member names it (e.g. `handler.url`).");
    INVALID_QUERY = ("invalid_query", 400, "Invalid query parameter",
        "A query parameter is unknown or invalid; the `field` member names it.");
    INVALID_CURSOR = ("invalid_cursor", 400, "Invalid cursor",
        "Pass back the `next` of the previous page unchanged.");
    BOT_CONFLICT = ("bot_conflict", 409, "Bot id or app id taken",
        "Another bot has this id or app id; the detail names it.");
    BOT_READ_ONLY = ("bot_read_only", 409, "Bot defined in the configuration file",
        "Change it in the configuration file and restart; the admin API changes only bots it created.");
    NOTIFICATION_NOT_FOUND = ("notification_not_found", 404, "Notification not found",
        "No notification job with this id for the bots this key may see.");
    GRAPH_SUBSCRIPTION_NOT_FOUND = ("graph_subscription_not_found", 404, "Graph subscription not found",
        "No Graph subscription with this id for the bots this key may see.");
    GRAPH_SUBSCRIPTION_CONFLICT = ("graph_subscription_conflict", 409, "Graph subscription id taken",
        "A Graph subscription with this id exists; DELETE it first or pick another id.");
    IDEMPOTENCY_CONFLICT = ("idempotency_conflict", 409, "Idempotency-Key reused",
        "This Idempotency-Key created another notification with a different body; use a new key.");
    PRECONDITION_FAILED = ("precondition_failed", 412, "Stale ETag",
        "The bot changed since it was read; GET it again (`current_etag` gives its ETag) and retry.");
    PRECONDITION_REQUIRED = ("precondition_required", 428, "If-Match required",
        "Send the bot's ETag in If-Match (GET the bot first), or `*` to overwrite knowingly.");
    ADMIN_STORE_UNAVAILABLE = ("admin_store_unavailable", 503, "Admin store unavailable",
        "A store the admin API reads (keys, bots, audit, conversations) could not be reached; retry later.");
    INTERNAL = ("internal", 500, "Internal error",
        "botfleet failed unexpectedly; its log has the reason under the answer's X-Request-Id.");
}

/// One problem+json answer: a row of [`TABLE`] and the detail of this failure.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The row of the table this answer is.
    pub kind: ProblemType,
    /// What went wrong this time. Never a token, secret or message text.
    pub detail: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Serialize for Problem {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Problem", 5)?;
        s.serialize_field("type", &self.kind.type_uri())?;
        s.serialize_field("title", self.kind.title)?;
        s.serialize_field("status", &self.kind.status)?;
        s.serialize_field("detail", &self.detail)?;
        s.serialize_field("check", self.kind.name)?;
        s.end()
    }
}

impl Problem {
    /// A problem of type `kind` (a constant of this module) with this `detail`.
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    /// The stable name (`check` field).
    pub fn check(&self) -> &'static str {
        self.kind.name
    }

    pub fn status(&self) -> u16 {
        self.kind.status
    }

    /// Adds a response header (e.g. `Allow`, or a more precise `WWW-Authenticate`
    /// than the default). Header values that are not valid are dropped.
    pub fn with_header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.retain(|(n, _)| *n != name);
            self.headers.push((name, v));
        }
        self
    }

    /// The HTTP answer. 401 carries `WWW-Authenticate: Bearer` unless a more
    /// precise one was set (RFC 6750 section 3,
    /// <https://www.rfc-editor.org/rfc/rfc6750#section-3>); 429 and 503 carry
    /// `Retry-After: 1` unless one was set.
    pub fn response(&self) -> HttpResponse {
        use actix_web::http::header;
        let status =
            StatusCode::from_u16(self.kind.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut builder = HttpResponse::build(status);
        builder.content_type("application/problem+json");
        let has = |name: &HeaderName| self.headers.iter().any(|(n, _)| n == name);
        if self.kind.status == 401 && !has(&header::WWW_AUTHENTICATE) {
            builder.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if matches!(self.kind.status, 429 | 503) && !has(&header::RETRY_AFTER) {
            builder.insert_header((header::RETRY_AFTER, "1"));
        }
        for (name, value) in &self.headers {
            builder.insert_header((name.clone(), value.clone()));
        }
        builder.json(self)
    }
}

/// Default service: any path botfleet does not serve answers a `not_found` problem.
pub async fn not_found() -> HttpResponse {
    Problem::new(NOT_FOUND, "botfleet serves no resource at this path").response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_well_formed() {
        let mut names = std::collections::HashSet::new();
        for t in TABLE {
            assert!(names.insert(t.name), "`{}` is in the table twice", t.name);
            assert!(
                !t.name.is_empty()
                    && t.name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && !t.name.starts_with('_')
                    && !t.name.ends_with('_'),
                "`{}` is not snake_case",
                t.name
            );
            assert!(
                (400..=599).contains(&t.status),
                "`{}`: {} is not an error status",
                t.name,
                t.status
            );
            assert!(
                !t.title.is_empty() && !t.description.is_empty(),
                "{}",
                t.name
            );
            assert_eq!(ProblemType::by_name(t.name), Some(*t));
        }
        assert_eq!(ProblemType::by_name("no_such_problem"), None);
    }

    #[actix_web::test]
    async fn answers_have_the_exact_rfc7807_shape() {
        let p = Problem::new(BODY_TOO_LARGE, "too big");
        let resp = p.response();
        assert_eq!(resp.status(), 413);
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        let body = actix_web::body::to_bytes(resp.into_body())
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "type": "urn:botfleet:problem:body_too_large",
                "title": "Request body too large",
                "status": 413,
                "detail": "too big",
                "check": "body_too_large",
            })
        );
    }

    #[test]
    fn status_headers_follow_the_rfcs() {
        use actix_web::http::header;
        let r = Problem::new(MISSING_TOKEN, "x").response();
        assert_eq!(
            r.headers()
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        let r = Problem::new(SIGNATURE, "x")
            .with_header(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")
            .response();
        let all: Vec<_> = r.headers().get_all(header::WWW_AUTHENTICATE).collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].as_bytes(), b"Bearer error=\"invalid_token\"");
        let r = Problem::new(BUSY, "x").response();
        assert_eq!(
            r.headers().get(header::RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let r = Problem::new(METHOD_NOT_ALLOWED, "x")
            .with_header(header::ALLOW, "POST")
            .response();
        assert_eq!(
            r.headers().get(header::ALLOW).map(|v| v.as_bytes()),
            Some(&b"POST"[..])
        );
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
    }

    /// Every problem type is documented for users: a row added to the table
    /// without a line in docs/ fails here.
    #[test]
    fn every_problem_type_is_documented() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        let mut text = String::new();
        for entry in std::fs::read_dir(&docs).expect("docs/ exists") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "md") {
                text.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
        let missing: Vec<&str> = TABLE
            .iter()
            .map(|t| t.name)
            .filter(|n| !text.contains(&format!("`{n}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "problem types not named (in backticks) in any docs/*.md: {missing:?}"
        );
    }
}
