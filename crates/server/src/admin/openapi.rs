//! The OpenAPI 3.1 document of the admin API, generated from the routes
//! themselves (`utoipa` + `utoipa-actix-web`: the handlers' annotations and the
//! `service(...)` calls that mount them), served at `/admin/v1/openapi.json`
//! and committed as docs/openapi.json (a test fails when they differ).
//!
//! The error answers every operation shares (401, 403, 429, ...) are added
//! here from the problem table rather than repeated on every handler.

use std::sync::OnceLock;

use actix_web::{get, HttpResponse};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, Response};
use utoipa::{OpenApi as _, ToSchema};
use utoipa_actix_web::AppExt as _;

/// An RFC 7807 problem (`Content-Type: application/problem+json`).
#[derive(ToSchema)]
#[schema(as = Problem)]
#[allow(dead_code)] // documents the answer's shape; answers are built by crate::problem
pub struct ProblemDoc {
    /// `urn:botfleet:problem:<check>`.
    #[schema(rename = "type", example = "urn:botfleet:problem:invalid_field")]
    kind: String,
    title: String,
    status: u16,
    /// What went wrong this time.
    detail: String,
    /// The stable name of the problem type (docs/admin-api.md lists them).
    #[schema(example = "invalid_field")]
    check: String,
    /// `invalid_field` / `invalid_query`: the JSON path or query parameter at
    /// fault (`handler.url`).
    field: Option<String>,
    /// `precondition_failed`: the bot's current ETag.
    current_etag: Option<String>,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "botfleet admin API",
        description = "Register and change bots without a redeploy, see their tenants, conversations and token status, manage API keys and read the audit log. Authenticate with `Authorization: Bearer <key>`. Errors are RFC 7807 problem+json; `check` names the problem type. Guide: docs/admin-api.md.",
        license(name = "MIT", identifier = "MIT"),
    ),
    components(schemas(ProblemDoc)),
    tags(
        (name = "bots", description = "Bots registered through the API (read-write) and from the configuration file (read-only)."),
        (name = "conversations", description = "A bot's tenants and conversation references."),
        (name = "tokens", description = "A bot's outbound token status (never a token)."),
        (name = "keys", description = "API keys (admin role, no bot scope)."),
        (name = "audit", description = "Changes and refused calls (admin and operator roles, no bot scope)."),
        (name = "notifications", description = "Proactive notifications: durable jobs, their state and per-target outcomes (docs/notifications.md)."),
        (name = "meta", description = "This document."),
    )
)]
struct ApiDoc;

/// Builds the document from the same routes the server mounts.
pub(crate) fn build() -> OpenApi {
    let (_, mut api) = actix_web::App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .service(super::routes())
        .split_for_parts();
    if let Some(components) = api.components.as_mut() {
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("bfk_<id>_<secret>, or the bootstrap key")
                    .description(Some("An admin API key: `Authorization: Bearer <key>`."))
                    .build(),
            ),
        );
    }
    for (path, item) in api.paths.paths.iter_mut() {
        let ops = [
            ("get", item.get.as_mut()),
            ("post", item.post.as_mut()),
            ("put", item.put.as_mut()),
            ("patch", item.patch.as_mut()),
            ("delete", item.delete.as_mut()),
        ];
        for (method, op) in ops {
            if let Some(op) = op {
                add_problems(path, method, op);
            }
        }
    }
    api
}

fn problem(description: &str) -> Response {
    let mut r = Response::new(description);
    r.content.insert(
        "application/problem+json".into(),
        Content::new(Some(Ref::from_schema_name("Problem"))),
    );
    r
}

/// The shared error answers of one operation, by what it takes.
fn add_problems(path: &str, method: &str, op: &mut Operation) {
    if op.security.is_none() {
        return;
    }
    let mut add = |status: &str, description: &str| {
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| problem(description).into());
    };
    let body = matches!(method, "post" | "put" | "patch");
    add(
        "400",
        if body {
            "`invalid_field` (the body; `field` names it), `malformed_json`, `invalid_query`, `invalid_cursor`."
        } else {
            "`invalid_query` (`field` names the parameter), `invalid_cursor`."
        },
    );
    add(
        "401",
        "`api_key_missing`, `api_key_invalid`, `api_key_expired`, `api_key_revoked`; with `WWW-Authenticate: Bearer`.",
    );
    add(
        "403",
        "`forbidden`: the key's role or bot scope does not allow this call.",
    );
    if path.contains("{bot}") {
        add("404", "`bot_not_found`.");
    } else if path.contains("{key}") {
        add("404", "`key_not_found`.");
    }
    if path.contains("{bot}") && matches!(method, "put" | "patch" | "delete") {
        add(
            "409",
            "`bot_read_only` (a bot of the configuration file), `bot_conflict` (the app id is taken).",
        );
        add("412", "`precondition_failed`: the ETag in If-Match is stale; `current_etag` gives the current one.");
        add("428", "`precondition_required`: send If-Match.");
    }
    if body {
        add("413", "`body_too_large`: over 64 KiB.");
        add("415", "`unsupported_media_type`: send `application/json`.");
    }
    add(
        "429",
        "`auth_rate_limited`: too many failed authentications from this address; wait `Retry-After` seconds.",
    );
    add(
        "500",
        "`internal`: the log has the reason under the request id.",
    );
    add(
        "503",
        "`admin_store_unavailable`: a store could not be reached; retry.",
    );
}

/// The document as served and committed: pretty JSON with a final newline.
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut s = build()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        s.push('\n');
        s
    })
}

/// This OpenAPI 3.1 document.
///
/// Needs no key: it describes the API, holds no data.
#[utoipa::path(
    tag = "meta",
    operation_id = "getOpenApi",
    responses((status = 200, description = "The OpenAPI 3.1 document of the admin API.", content_type = "application/json", body = Object))
)]
#[get("/openapi.json")]
pub async fn get_openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document_json())
}
