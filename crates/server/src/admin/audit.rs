//! `/admin/v1/audit`: every call that changed something and every refused call,
//! oldest first, kept for the configured retention. Entries name the key, the
//! action, the target and the outcome; never a secret, a body or a message text.

use actix_web::{get, web, HttpRequest, HttpResponse};
use botfleet_store::admin::AuditEntry;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{authorize, Action};
use super::bots::PageQuery;
use super::error::AdminError;
use super::keys::RoleName;
use super::{query, rfc3339, AdminState};

/// One audited call.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditRecord {
    /// Increasing; the cursor of the listing.
    pub id: String,
    /// RFC 3339 UTC.
    pub at: String,
    /// The key that called (`bootstrap` for the configuration's); absent when
    /// no known key was sent.
    pub key_id: Option<String>,
    pub role: Option<RoleName>,
    /// What was attempted: `bots.create`, `bots.replace`, `bots.patch`,
    /// `bots.delete`, `keys.create`, `keys.revoke`, or for a refused call any
    /// action (`bots.list`, `conversations.list`, `audit.list`, ...).
    pub action: String,
    /// A bot id or key id.
    pub target: Option<String>,
    /// `ok`, `denied` (401, 403, 429) or `error` (the call was refused for
    /// what it asked, e.g. 400, 409, 412).
    pub outcome: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The `X-Request-Id` of the call.
    pub request_id: String,
    /// The client's address.
    pub client: Option<String>,
}

impl From<AuditEntry> for AuditRecord {
    fn from(e: AuditEntry) -> Self {
        Self {
            id: e.id,
            at: rfc3339(e.at),
            key_id: e.key_id,
            role: e.role.map(Into::into),
            action: e.action,
            target: e.target,
            outcome: e.outcome,
            status: e.status,
            request_id: e.request_id,
            client: e.client,
        }
    }
}

/// A page of the audit log, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditRecord>,
    /// Pass as `next` for the following page; absent on the last page (ask
    /// again later with the last id seen to follow the log).
    pub next: Option<String>,
}

/// Read the audit log.
#[utoipa::path(
    tag = "audit",
    operation_id = "listAudit",
    params(PageQuery),
    responses((status = 200, description = "A page of the audit log, oldest first.", body = AuditPage)),
    security(("api_key" = []))
)]
#[get("/audit")]
pub async fn list_audit(
    req: HttpRequest,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    authorize(&req, &state, Action::AuditList, None, false).await?;
    let q: PageQuery = query(&req)?;
    let limit = q.limit()?;
    let (entries, next) = state.audit.list(q.next.as_deref(), limit).await?;
    Ok(HttpResponse::Ok().json(AuditPage {
        items: entries.into_iter().map(Into::into).collect(),
        next,
    }))
}
