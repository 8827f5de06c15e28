//! `/admin/v1/bots/{bot}/tenants` and `/admin/v1/bots/{bot}/conversations`:
//! what the conversation store holds for a bot (references taken from
//! validated activities), with each reference's state.

use actix_web::{get, web, HttpRequest, HttpResponse};
use botfleet_store::conversations::{StoredConversation, MAX_PAGE};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{authorize, Action};
use super::bots::{find, PageQuery};
use super::error::AdminError;
use super::{page_after, query, rfc3339, AdminState};

/// Conversations read to count tenants, at most. A bot with more answers the
/// tenants seen so far with `complete: false`.
pub const TENANT_SCAN_LIMIT: usize = 200_000;
/// Store pages read to fill one page of an `active=` filtered listing.
const FILTER_PAGES: usize = 10;

/// One tenant of a bot.
#[derive(Debug, Serialize, ToSchema)]
pub struct Tenant {
    /// The Entra tenant id; `null` for conversations without one.
    pub tenant_id: Option<String>,
    /// Conversations stored for this tenant.
    pub conversations: u64,
    /// Of those, the ones still reachable.
    pub active: u64,
}

/// A page of a bot's tenants, by tenant id.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantPage {
    pub items: Vec<Tenant>,
    /// Pass as `next` for the following page; absent on the last page.
    pub next: Option<String>,
    /// Conversations of the bot, every tenant.
    pub total_conversations: u64,
    pub active_conversations: u64,
    /// False when the bot has more than 200,000 conversations: the tenants
    /// listed are those of the first 200,000 (by conversation id).
    pub complete: bool,
}

/// One conversation reference and its state.
#[derive(Debug, Serialize, ToSchema)]
pub struct Conversation {
    pub conversation_id: String,
    pub tenant_id: Option<String>,
    /// False once the bot was uninstalled or removed, or Teams answered 403/404.
    pub active: bool,
    /// Why it is inactive (e.g. `uninstalled`, `bot_removed`, `forbidden`).
    pub inactive_reason: Option<String>,
    /// RFC 3339 UTC.
    pub inactive_since: Option<String>,
    pub first_seen: String,
    pub last_seen: String,
    /// The Bot Framework conversation reference a proactive send uses
    /// (serviceUrl, conversation, bot, user, channelId, locale).
    #[schema(value_type = Object)]
    pub reference: serde_json::Value,
}

impl Conversation {
    fn of(c: StoredConversation) -> Self {
        Self {
            conversation_id: c.reference.conversation.id.clone(),
            tenant_id: c.tenant_id,
            active: c.active,
            inactive_reason: c.inactive_reason,
            inactive_since: c.inactive_since_ms.map(rfc3339),
            first_seen: rfc3339(c.first_seen_ms),
            last_seen: rfc3339(c.last_seen_ms),
            reference: serde_json::to_value(&c.reference).unwrap_or_default(),
        }
    }
}

/// A page of a bot's conversations, by conversation id.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationPage {
    /// May hold fewer than `limit` items while `next` is present (an `active`
    /// filter skipped some): follow `next` until it is absent.
    pub items: Vec<Conversation>,
    pub next: Option<String>,
}

/// Filters and paging of `GET /bots/{bot}/conversations`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConversationQuery {
    /// Only this tenant's conversations.
    pub tenant: Option<String>,
    /// Only active (`true`) or inactive (`false`) conversations.
    pub active: Option<bool>,
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub next: Option<String>,
}

/// List a bot's tenants with conversation counts.
#[utoipa::path(
    tag = "conversations",
    operation_id = "listTenants",
    params(("bot" = String, Path, description = "The bot's id."), PageQuery),
    responses((status = 200, description = "A page of tenants.", body = TenantPage)),
    security(("api_key" = []))
)]
#[get("/bots/{bot}/tenants")]
pub async fn list_tenants(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    let bot = path.into_inner();
    authorize(&req, &state, Action::TenantsList, Some(&bot), true).await?;
    let q: PageQuery = query(&req)?;
    let limit = q.limit()?;
    find(&state, &bot).await?;
    let totals = state.conversations.count(&bot, None).await?;
    // The store has no tenant index to list; its counts are exact per tenant,
    // so the scan only discovers tenant ids.
    let mut seen: std::collections::BTreeMap<Option<String>, (u64, u64)> = Default::default();
    let mut cursor: Option<String> = None;
    let mut scanned = 0usize;
    let complete = loop {
        let page = state
            .conversations
            .list(&bot, None, cursor.as_deref(), MAX_PAGE)
            .await?;
        scanned += page.items.len();
        for c in page.items {
            let e = seen.entry(c.tenant_id).or_default();
            e.0 += 1;
            e.1 += u64::from(c.active);
        }
        match page.next_cursor {
            None => break true,
            Some(_) if scanned >= TENANT_SCAN_LIMIT => break false,
            next => cursor = next,
        }
    };
    // `null` tenant sorts first, as the empty string.
    let tenants: Vec<(String, Tenant)> = seen
        .into_iter()
        .map(|(t, (count, active))| {
            (
                t.clone().unwrap_or_default(),
                Tenant {
                    tenant_id: t,
                    conversations: count,
                    active,
                },
            )
        })
        .collect();
    let (items, next) = page_after(tenants, |(k, _)| k.as_str(), q.next.as_deref(), limit);
    Ok(HttpResponse::Ok().json(TenantPage {
        items: items.into_iter().map(|(_, t)| t).collect(),
        next,
        total_conversations: totals.total,
        active_conversations: totals.active,
        complete,
    }))
}

/// List a bot's conversations, by conversation id.
#[utoipa::path(
    tag = "conversations",
    operation_id = "listConversations",
    params(("bot" = String, Path, description = "The bot's id."), ConversationQuery),
    responses((status = 200, description = "A page of conversations.", body = ConversationPage)),
    security(("api_key" = []))
)]
#[get("/bots/{bot}/conversations")]
pub async fn list_conversations(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    let bot = path.into_inner();
    authorize(&req, &state, Action::ConversationsList, Some(&bot), true).await?;
    let q: ConversationQuery = query(&req)?;
    let limit = PageQuery {
        limit: q.limit,
        next: None,
    }
    .limit()?;
    find(&state, &bot).await?;
    let mut items = Vec::new();
    let mut cursor = q.next.clone();
    for _ in 0..FILTER_PAGES {
        let page = state
            .conversations
            .list(
                &bot,
                q.tenant.as_deref(),
                cursor.as_deref(),
                limit - items.len(),
            )
            .await?;
        cursor = page.next_cursor;
        items.extend(
            page.items
                .into_iter()
                .filter(|c| q.active.is_none_or(|a| c.active == a))
                .map(Conversation::of),
        );
        if items.len() >= limit || cursor.is_none() {
            break;
        }
    }
    Ok(HttpResponse::Ok().json(ConversationPage {
        items,
        next: cursor,
    }))
}
