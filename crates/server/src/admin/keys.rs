//! `/admin/v1/keys`: API keys (admin role, no bot scope). A key is shown once,
//! in the answer that creates it; the store keeps its SHA-256 only. Revoked
//! keys stay listed (with `revoked_at`) so the audit log's key ids keep a name.

use actix_web::http::header;
use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use botfleet_store::admin::{AdminStoreError, ApiKeyRecord, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{authorize, generate_key, Action};
use super::bots::PageQuery;
use super::error::AdminError;
use super::{
    from_value, no_query, now_ms, page_after, parse_rfc3339, query, read_json, rfc3339, AdminState,
};

/// A key's role, as in the roles table of docs/admin-api.md.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Role)]
pub enum RoleName {
    /// Everything, keys included.
    Admin,
    /// Reads everything, manages bots; no keys.
    Operator,
    /// Sends and reads notifications; reads bots, tenants, conversations.
    Sender,
    /// Reads bots, tenants, conversations, token status.
    Reader,
}

impl From<RoleName> for Role {
    fn from(r: RoleName) -> Self {
        match r {
            RoleName::Admin => Role::Admin,
            RoleName::Operator => Role::Operator,
            RoleName::Sender => Role::Sender,
            RoleName::Reader => Role::Reader,
        }
    }
}

impl From<Role> for RoleName {
    fn from(r: Role) -> Self {
        match r {
            Role::Admin => RoleName::Admin,
            Role::Operator => RoleName::Operator,
            Role::Sender => RoleName::Sender,
            Role::Reader => RoleName::Reader,
        }
    }
}

/// The body of `POST /keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyRequest {
    pub role: RoleName,
    /// Bots the key may reach; absent = every bot. A scoped key cannot read
    /// keys or the audit log.
    #[serde(default)]
    pub bots: Option<Vec<String>>,
    /// Who or what the key is for (at most 200 characters).
    #[serde(default)]
    pub description: Option<String>,
    /// RFC 3339 UTC (`2027-01-31T00:00:00Z`), in the future; absent = never.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// A key's record: never the key or its hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct Key {
    /// The public id (`bfk_` + 8 characters), the start of the key itself.
    pub id: String,
    pub role: RoleName,
    pub bots: Option<Vec<String>>,
    pub description: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// Id of the key that created it (`bootstrap` for the configuration's).
    pub created_by: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

impl Key {
    fn of(r: &ApiKeyRecord, now: u64) -> Self {
        let state = if r.revoked_at.is_some() {
            "revoked"
        } else if r.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else {
            "active"
        };
        Self {
            id: r.id.clone(),
            role: r.role.into(),
            bots: r.bots.clone(),
            description: r.description.clone(),
            state: state.into(),
            created_at: rfc3339(r.created_at),
            created_by: r.created_by.clone(),
            expires_at: r.expires_at.map(rfc3339),
            revoked_at: r.revoked_at.map(rfc3339),
        }
    }
}

/// The answer to `POST /keys`: the key, this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    /// The key to send as `Authorization: Bearer <key>`. Shown only here:
    /// botfleet keeps its hash and cannot show it again.
    pub key: String,
    #[serde(flatten)]
    pub record: Key,
}

/// A page of keys, by id.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyPage {
    pub items: Vec<Key>,
    pub next: Option<String>,
}

/// List API keys.
#[utoipa::path(
    tag = "keys",
    operation_id = "listKeys",
    params(PageQuery),
    responses((status = 200, description = "A page of keys (never a key or hash).", body = KeyPage)),
    security(("api_key" = []))
)]
#[get("/keys")]
pub async fn list_keys(
    req: HttpRequest,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    authorize(&req, &state, Action::KeysList, None, false).await?;
    let q: PageQuery = query(&req)?;
    let limit = q.limit()?;
    let now = now_ms();
    let keys: Vec<Key> = state
        .keys
        .list()
        .await?
        .iter()
        .map(|r| Key::of(r, now))
        .collect();
    let (items, next) = page_after(keys, |k| k.id.as_str(), q.next.as_deref(), limit);
    Ok(HttpResponse::Ok().json(KeyPage { items, next }))
}

/// Create an API key.
///
/// The answer holds the key: store it now, it is never shown again.
#[utoipa::path(
    tag = "keys",
    operation_id = "createKey",
    request_body(content = NewKeyRequest, content_type = "application/json"),
    responses((status = 201, description = "Created; `key` is shown this once.", body = CreatedKey)),
    security(("api_key" = []))
)]
#[post("/keys")]
pub async fn create_key(
    req: HttpRequest,
    state: web::Data<AdminState>,
    payload: web::Payload,
) -> Result<HttpResponse, AdminError> {
    let mut call = authorize(&req, &state, Action::KeysCreate, None, false).await?;
    let result = async {
        no_query(&req)?;
        let body = read_json(&req, payload, &["application/json"]).await?;
        let body: NewKeyRequest = from_value(body)?;
        let now = now_ms();
        let expires_at = match &body.expires_at {
            None => None,
            Some(s) => {
                let at = parse_rfc3339(s).ok_or_else(|| {
                    AdminError::field(
                        "expires_at",
                        format!("`{s}` is not an RFC 3339 UTC time like 2027-01-31T00:00:00Z"),
                    )
                })?;
                if at <= now {
                    return Err(AdminError::field("expires_at", "is in the past"));
                }
                Some(at)
            }
        };
        if let Some(bots) = &body.bots {
            if bots.is_empty() {
                return Err(AdminError::field(
                    "bots",
                    "an empty scope reaches nothing; omit `bots` for every bot",
                ));
            }
            for (i, b) in bots.iter().enumerate() {
                if b.is_empty()
                    || b.len() > 64
                    || !b
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
                {
                    return Err(AdminError::field(
                        format!("bots[{i}]"),
                        "is not a bot id (letters, digits, `-`, `_`)",
                    ));
                }
            }
        }
        if body
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 200)
        {
            return Err(AdminError::field(
                "description",
                "use at most 200 characters",
            ));
        }
        // 40 random bits of id: a collision is rare; try again with new ones.
        for _ in 0..3 {
            let new = generate_key();
            let record = ApiKeyRecord {
                id: new.id.clone(),
                secret_hash: new.secret_hash,
                role: body.role.into(),
                bots: body.bots.clone(),
                description: body.description.clone(),
                created_at: now,
                created_by: call.principal.key_id.clone(),
                expires_at,
                revoked_at: None,
            };
            match state.keys.create(&record).await {
                Ok(()) => {
                    return Ok(CreatedKey {
                        key: new.key.expose().to_string(),
                        record: Key::of(&record, now),
                    })
                }
                Err(AdminStoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AdminError::Internal)
    }
    .await;
    if let Ok(created) = &result {
        call.set_target(created.record.id.clone());
    }
    let created = call.finish(&state, result).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(created))
}

/// Revoke an API key.
///
/// At once, on every replica (keys are read from the store on each call).
/// Revoking a revoked key changes nothing and answers 204.
#[utoipa::path(
    tag = "keys",
    operation_id = "revokeKey",
    params(("key" = String, Path, description = "The key's id (`bfk_...`).")),
    responses((status = 204, description = "Revoked.")),
    security(("api_key" = []))
)]
#[delete("/keys/{key}")]
pub async fn revoke_key(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    let id = path.into_inner();
    let call = authorize(&req, &state, Action::KeysRevoke, Some(&id), false).await?;
    let result = async {
        no_query(&req)?;
        if state.keys.revoke(&id, now_ms()).await? {
            return Ok(());
        }
        match state.keys.get(&id).await? {
            Some(_) => Ok(()),
            None => Err(AdminError::KeyNotFound(id.clone())),
        }
    }
    .await;
    call.finish(&state, result).await?;
    Ok(HttpResponse::NoContent().finish())
}
