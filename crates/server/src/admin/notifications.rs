//! Proactive notifications: `POST /admin/v1/bots/{bot}/notifications` creates
//! a durable job (persisted before the 202), `GET /admin/v1/notifications/{job}`
//! reports it, `GET .../{job}/targets` lists its targets by state and `DELETE`
//! cancels what is not sent yet. The notifier (`botfleet_runtime::notify`)
//! delivers it. docs/notifications.md is the user's guide.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use botfleet_store::jobs::{
    DeliveryState, DeliveryStateKind, JobRecord, JobSpec, JobState, JobStore, JobStoreError,
    TargetEntry, TargetSelection, UserTarget,
};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{authorize, Action};
use super::bots::{find, PageQuery};
use super::error::AdminError;
use super::{from_value, query, rfc3339, AdminState, PREFIX};

/// Largest notification request body: 10,000 targets of ~80 bytes and an activity.
pub const NOTIFY_BODY_LIMIT: usize = 1024 * 1024;
/// Most conversation ids or users one request may name (more: several jobs,
/// or `tenant` / `all`).
pub const MAX_TARGETS: usize = 10_000;
/// Largest activity, serialized. Teams refuses bot messages over about 28 KB
/// with 413 `RequestEntityTooLarge`
/// (<https://learn.microsoft.com/en-us/microsoftteams/platform/bots/how-to/conversations/conversation-messages#status-codes-from-bot-conversational-apis>);
/// refusing here says so before any target is tried.
pub const MAX_ACTIVITY_BYTES: usize = 28 * 1024;
/// Longest id (conversation, user, tenant, team, channel) accepted.
const MAX_ID_LEN: usize = 512;
/// Longest `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// Called with a new job's id once it is persisted (the notifier starts expanding it).
pub type JobCreated = Arc<dyn Fn(&str) + Send + Sync>;

/// What the notification routes need: the job store, and the local notifier's
/// hook (optional: the notifiers' sweep finds new jobs anyway).
#[derive(Clone)]
pub struct NotificationsState {
    pub jobs: Arc<dyn JobStore>,
    pub on_created: Option<JobCreated>,
}

impl std::fmt::Debug for NotificationsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationsState").finish_non_exhaustive()
    }
}

// ------------------------------------------------------------------ bodies --

/// Who to notify: exactly one member.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetsBody {
    /// Conversation ids with stored references (1 to 10,000, duplicates ignored).
    pub conversations: Option<Vec<String>>,
    /// Every active conversation of the bot in this tenant.
    pub tenant: Option<String>,
    /// `true`: every active conversation of the bot.
    pub all: Option<bool>,
    /// A new thread in a team channel where the bot is installed.
    pub channel: Option<ChannelBody>,
    /// Users by Entra object id (or `29:` id) and tenant: botfleet creates
    /// (or reuses) the 1:1 chat and stores its reference.
    pub users: Option<Vec<UserBody>>,
    /// With `users`: install the bot's Teams app (Graph installedApps) for a
    /// user who does not have it, then create the chat again once.
    #[serde(rename = "installApp")]
    pub install_app: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelBody {
    /// The team id (`19:...@thread.tacv2`, the General channel's id).
    pub team: String,
    /// The channel id.
    pub channel: String,
    /// The team's tenant; needed when botfleet has no reference of the team.
    pub tenant: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    /// Entra object id (or the user's `29:` id).
    pub id: String,
    /// The user's tenant id (required: Teams needs it to create the chat).
    pub tenant: Option<String>,
}

/// `POST /bots/{bot}/notifications` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationRequest {
    pub targets: TargetsBody,
    /// A Bot Framework activity (`type` required; text, attachments such as
    /// Adaptive Cards, entities such as mentions), at most 28 KiB as JSON.
    #[schema(value_type = Object)]
    pub activity: serde_json::Value,
}

/// Target counts of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct Counts {
    /// Targets known so far (grows while `tenant` / `all` is expanded).
    pub total: u64,
    pub pending: u64,
    /// Being sent right now.
    pub sending: u64,
    /// Waiting for their next attempt (throttled, transient failure).
    pub retrying: u64,
    pub delivered: u64,
    pub failed: u64,
    /// Failed targets by reason (docs/notifications.md lists them).
    pub failed_by_reason: std::collections::BTreeMap<String, u64>,
    pub cancelled: u64,
}

/// A notification job.
#[derive(Debug, Serialize, ToSchema)]
pub struct Notification {
    pub id: String,
    pub bot: String,
    /// `queued`, `running`, `completed`, `cancelled` or `failed`.
    pub state: String,
    /// The target selection as requested (`kind`: conversations, tenant, all,
    /// channel, users).
    #[schema(value_type = Object)]
    pub targets: serde_json::Value,
    pub counts: Counts,
    /// Every target of the selection is known (`total` is final).
    pub targets_complete: bool,
    /// Deliveries per second since the job started (to its end when final).
    pub rate_per_sec: f64,
    /// Why the job failed (`state = failed`).
    pub error: Option<String>,
    /// The admin key id that created it.
    pub created_by: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl Notification {
    fn of(job: &JobRecord) -> Self {
        let c = &job.counts;
        let end = job.finished_at_ms.unwrap_or_else(super::now_ms);
        let rate_per_sec = match job.started_at_ms {
            Some(start) if end > start => {
                let r = c.delivered as f64 * 1000.0 / (end - start) as f64;
                (r * 10.0).round() / 10.0
            }
            _ => 0.0,
        };
        Self {
            id: job.id.clone(),
            bot: job.spec.bot_id.clone(),
            state: job.state.as_str().to_string(),
            targets: selection_json(&job.spec.targets),
            counts: Counts {
                total: c.total,
                pending: c.pending,
                sending: c.sending,
                retrying: c.retrying,
                delivered: c.delivered,
                failed: c.failed(),
                failed_by_reason: c.failed_by_reason.clone(),
                cancelled: c.cancelled,
            },
            targets_complete: job.expansion.complete,
            rate_per_sec,
            error: job.error.clone(),
            created_by: job.spec.created_by.clone(),
            created_at: rfc3339(job.created_at_ms),
            started_at: job.started_at_ms.map(rfc3339),
            finished_at: job.finished_at_ms.map(rfc3339),
        }
    }
}

/// The selection as the API shows it (a 10,000-id list is summarised).
fn selection_json(s: &TargetSelection) -> serde_json::Value {
    match s {
        TargetSelection::Conversations { ids } => {
            serde_json::json!({"kind": "conversations", "count": ids.len()})
        }
        TargetSelection::Users { users, .. } => {
            serde_json::json!({"kind": "users", "count": users.len()})
        }
        other => serde_json::to_value(other).unwrap_or_default(),
    }
}

/// The error of a failed target: close to Teams' batch "failed entries"
/// (`{id, error}`) so a later move to the Teams batch endpoints changes only
/// the backend.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetError {
    /// The failure reason (`conversation_not_found`, `reference_inactive`, ...).
    pub code: String,
    /// The Bot Connector's HTTP status, when there was a call.
    pub status: Option<u16>,
    pub message: Option<String>,
}

/// One target of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetItem {
    /// The target's id in the job (`c:<conversation>`, `u:<tenant>:<user>`,
    /// `ch:<team>:<channel>`).
    pub id: String,
    #[schema(value_type = Object)]
    pub target: serde_json::Value,
    /// `pending`, `sending`, `retrying`, `delivered`, `failed`, `cancelled`.
    pub state: String,
    /// Set for `failed` (and the last reason for `retrying`).
    pub error: Option<TargetError>,
    /// The sent activity's id (`delivered`).
    pub activity_id: Option<String>,
    pub attempts: u32,
    pub updated_at: String,
}

impl TargetItem {
    fn of(e: TargetEntry) -> Self {
        let (error, activity_id) = match &e.state {
            DeliveryState::Failed {
                reason,
                status,
                detail,
            } => (
                Some(TargetError {
                    code: reason.clone(),
                    status: *status,
                    message: detail.clone(),
                }),
                None,
            ),
            DeliveryState::Retrying { reason, .. } => (
                Some(TargetError {
                    code: reason.clone(),
                    status: None,
                    message: None,
                }),
                None,
            ),
            DeliveryState::Delivered { activity_id } => (None, activity_id.clone()),
            _ => (None, None),
        };
        Self {
            id: e.key,
            target: serde_json::to_value(&e.target).unwrap_or_default(),
            state: e.state.kind().as_str().to_string(),
            error,
            activity_id,
            attempts: e.attempts,
            updated_at: rfc3339(e.updated_at_ms),
        }
    }
}

/// A page of a job's targets, by id.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetPage {
    pub items: Vec<TargetItem>,
    /// Pass as `next` for the following page; absent on the last page.
    pub next: Option<String>,
}

/// A page of a bot's notification jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationPage {
    pub items: Vec<Notification>,
    /// Pass as `next` for the following page; absent on the last page.
    pub next: Option<String>,
}

/// Filter and paging of `GET /bots/{bot}/notifications`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NotificationQuery {
    /// Only jobs in this state: `queued`, `running`, `completed`,
    /// `cancelled` or `failed`.
    pub state: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub next: Option<String>,
}

/// Filter and paging of `GET /notifications/{job}/targets`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TargetQuery {
    /// Only targets in this state (`failed`, `delivered`, `pending`, ...).
    pub state: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub next: Option<String>,
}

// --------------------------------------------------------------- validation --

fn check_id(field: String, id: &str) -> Result<(), AdminError> {
    if id.trim().is_empty() {
        return Err(AdminError::field(field, "must not be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(AdminError::field(
            field,
            format!("longer than {MAX_ID_LEN} bytes"),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(AdminError::field(field, "contains control characters"));
    }
    Ok(())
}

fn check_list_len(field: &str, len: usize) -> Result<(), AdminError> {
    if len == 0 {
        return Err(AdminError::field(field, "must name at least one target"));
    }
    if len > MAX_TARGETS {
        return Err(AdminError::field(
            field,
            format!("{len} targets; at most {MAX_TARGETS} per request (use several requests, or `tenant` / `all`)"),
        ));
    }
    Ok(())
}

/// The selection of a request body. Errors name the field (`targets.users[2].tenant`).
pub fn selection(t: TargetsBody) -> Result<TargetSelection, AdminError> {
    let given = [
        t.conversations.is_some(),
        t.tenant.is_some(),
        t.all.is_some(),
        t.channel.is_some(),
        t.users.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        return Err(AdminError::field(
            "targets",
            "give exactly one of `conversations`, `tenant`, `all`, `channel`, `users`",
        ));
    }
    if t.install_app.is_some() && t.users.is_none() {
        return Err(AdminError::field(
            "targets.installApp",
            "only a `users` target installs the app (for users who do not have it)",
        ));
    }
    if let Some(ids) = t.conversations {
        check_list_len("targets.conversations", ids.len())?;
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        let mut unique = Vec::with_capacity(ids.len());
        for (i, id) in ids.into_iter().enumerate() {
            check_id(format!("targets.conversations[{i}]"), &id)?;
            if seen.insert(id.clone()) {
                unique.push(id);
            }
        }
        return Ok(TargetSelection::Conversations { ids: unique });
    }
    if let Some(tenant) = t.tenant {
        check_id("targets.tenant".into(), &tenant)?;
        return Ok(TargetSelection::Tenant { tenant_id: tenant });
    }
    if let Some(all) = t.all {
        if !all {
            return Err(AdminError::field(
                "targets.all",
                "must be true (to send to every active conversation of the bot)",
            ));
        }
        return Ok(TargetSelection::All);
    }
    if let Some(c) = t.channel {
        check_id("targets.channel.team".into(), &c.team)?;
        check_id("targets.channel.channel".into(), &c.channel)?;
        if let Some(tenant) = &c.tenant {
            check_id("targets.channel.tenant".into(), tenant)?;
        }
        return Ok(TargetSelection::Channel {
            team_id: c.team,
            channel_id: c.channel,
            tenant_id: c.tenant,
        });
    }
    let install_app = t.install_app.unwrap_or(false);
    let users = t.users.unwrap_or_default();
    check_list_len("targets.users", users.len())?;
    let mut out: Vec<UserTarget> = Vec::with_capacity(users.len());
    let mut seen = std::collections::HashSet::with_capacity(users.len());
    for (i, u) in users.into_iter().enumerate() {
        check_id(format!("targets.users[{i}].id"), &u.id)?;
        let Some(tenant) = u.tenant else {
            return Err(AdminError::field(
                format!("targets.users[{i}].tenant"),
                "a user target needs the user's tenant id (Teams creates the 1:1 chat in that tenant)",
            ));
        };
        check_id(format!("targets.users[{i}].tenant"), &tenant)?;
        let user = UserTarget {
            aad_object_id: u.id,
            tenant_id: tenant,
        };
        if seen.insert(user.clone()) {
            out.push(user);
        }
    }
    Ok(TargetSelection::Users {
        users: out,
        install_app,
    })
}

/// Checks that `activity` is a Bot Framework activity botfleet can send.
pub fn check_activity(activity: &serde_json::Value) -> Result<(), AdminError> {
    if !activity.is_object() {
        return Err(AdminError::field(
            "activity",
            "must be a Bot Framework activity object (e.g. {\"type\": \"message\", \"text\": \"...\"})",
        ));
    }
    let size = serde_json::to_vec(activity).map(|v| v.len()).unwrap_or(0);
    if size > MAX_ACTIVITY_BYTES {
        return Err(AdminError::field(
            "activity",
            format!("{size} bytes as JSON; Teams refuses bot messages over about {MAX_ACTIVITY_BYTES} bytes (413 RequestEntityTooLarge)"),
        ));
    }
    match activity.get("type") {
        Some(serde_json::Value::String(t)) if t == "message" => {}
        Some(serde_json::Value::String(t)) if !t.trim().is_empty() => {
            // Teams' proactive messaging sends messages; other types are
            // inbound events or turn-scoped (typing), and Teams would drop or
            // refuse them after the job had counted them delivered.
            return Err(AdminError::field(
                "activity.type",
                format!("must be \"message\" (a proactive notification is a message), not {t:?}"),
            ));
        }
        _ => return Err(AdminError::field("activity.type", "required: \"message\"")),
    }
    // Routing comes from the stored reference of each target; an activity
    // that names a conversation or parties would either be ignored or send
    // one target's message into another's conversation.
    for field in ["conversation", "from", "recipient"] {
        if activity.get(field).is_some() {
            return Err(AdminError::field(
                format!("activity.{field}"),
                format!("must not be set: botfleet fills `{field}` for each target from its stored conversation reference (remove it)"),
            ));
        }
    }
    let has_text = activity
        .get("text")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|t| !t.trim().is_empty());
    let has_attachments = activity
        .get("attachments")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if !has_text && !has_attachments {
        return Err(AdminError::field(
            "activity.text",
            "a message needs non-blank text or at least one attachment (Teams answers an empty message with 400)",
        ));
    }
    serde_json::from_value::<botfleet_protocol::Activity>(activity.clone())
        .map(|_| ())
        .map_err(|e| AdminError::field("activity", format!("not a Bot Framework activity: {e}")))
}

/// Hex SHA-256 of the request as parsed (object keys sorted), so the same
/// request sent with other whitespace or key order has the same hash.
fn body_hash(body: &serde_json::Value) -> String {
    use sha2::Digest;
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(&bytes))
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, AdminError> {
    let Some(v) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let bad = |p: &str| AdminError::field("Idempotency-Key", p);
    let v = v.to_str().map_err(|_| bad("must be visible ASCII"))?.trim();
    if v.is_empty() || v.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(bad("must be 1 to 128 characters (a UUID is a good key)"));
    }
    if !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("must be visible ASCII without spaces"));
    }
    Ok(Some(v.to_string()))
}

/// Reads the JSON body (up to [`NOTIFY_BODY_LIMIT`]).
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<serde_json::Value, AdminError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(AdminError::UnsupportedMediaType("application/json"));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|_| AdminError::MalformedJson("the body could not be read".into()))?;
        if body.len() + chunk.len() > NOTIFY_BODY_LIMIT {
            return Err(AdminError::BodyTooLarge(NOTIFY_BODY_LIMIT));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| AdminError::MalformedJson(e.to_string()))
}

fn jobs_of(state: &AdminState) -> Result<&NotificationsState, AdminError> {
    state.notifications.as_ref().ok_or_else(|| {
        tracing::error!("admin API: notification routes called but no job store is configured");
        AdminError::StoreUnavailable
    })
}

impl From<JobStoreError> for AdminError {
    fn from(e: JobStoreError) -> Self {
        match e {
            JobStoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "job store unavailable");
                Self::StoreUnavailable
            }
            JobStoreError::NotFound(id) => Self::NotificationNotFound(id),
            JobStoreError::Conflict { key, job_id, .. } => {
                Self::IdempotencyConflict(format!("Idempotency-Key `{key}` was used for notification `{job_id}` with another body; use a new key for a different notification"))
            }
            JobStoreError::InvalidCursor => Self::InvalidCursor,
            other => {
                tracing::error!(error = %other, "job store error");
                Self::Internal
            }
        }
    }
}

// ------------------------------------------------------------------ routes --

/// Send a notification: creates a durable job and answers 202 once it is
/// persisted. With `Idempotency-Key`, the same key and body return the same
/// job (nothing is sent again); the same key with another body is 409.
#[utoipa::path(
    tag = "notifications",
    operation_id = "createNotification",
    params(
        ("bot" = String, Path, description = "The bot's id."),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 128 visible ASCII characters; makes a retried request safe."),
    ),
    request_body = NotificationRequest,
    responses(
        (status = 202, description = "The job (new, or the one this Idempotency-Key created); `Location` is its URL.", body = Notification),
    ),
    security(("api_key" = []))
)]
#[post("/bots/{bot}/notifications")]
pub async fn create_notification(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, AdminError> {
    let bot = path.into_inner();
    let mut call = authorize(&req, &state, Action::NotificationsCreate, Some(&bot), true).await?;
    let result = async {
        super::no_query(&req)?;
        let notifications = jobs_of(&state)?;
        let key = idempotency_key(&req)?;
        find(&state, &bot).await?;
        let raw = read_body(&req, payload).await?;
        for (field, what) in [
            ("targets", "who to notify: one of `conversations`, `tenant`, `all`, `channel`, `users`"),
            ("activity", "the Bot Framework activity to send, e.g. {\"type\": \"message\", \"text\": \"...\"}"),
        ] {
            if raw.is_object() && raw.get(field).is_none() {
                return Err(AdminError::field(field, format!("required: {what}")));
            }
        }
        let hash = body_hash(&raw);
        let body: NotificationRequest = from_value(raw)?;
        let targets = selection(body.targets)?;
        check_activity(&body.activity)?;
        let created = notifications
            .jobs
            .create_job(
                JobSpec {
                    bot_id: bot.clone(),
                    targets,
                    activity: body.activity,
                    idempotency_key: key,
                    body_hash: hash,
                    created_by: Some(call.principal.key_id.clone()),
                },
                super::now_ms(),
            )
            .await?;
        let replayed = matches!(created, botfleet_store::jobs::CreateJob::Existing(_));
        let job = created.job().clone();
        if !replayed {
            if let Some(hook) = &notifications.on_created {
                hook(&job.id);
            }
        }
        Ok((job, replayed))
    }
    .await;
    if let Ok((job, _)) = &result {
        call.set_target(format!("{bot}/{}", job.id));
    }
    let (job, replayed) = call.finish(&state, result).await?;
    let mut answer = HttpResponse::Accepted();
    answer.insert_header((
        header::LOCATION,
        format!("{PREFIX}/notifications/{}", job.id),
    ));
    if replayed {
        answer.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(answer.json(Notification::of(&job)))
}

/// A bot's notification jobs, newest first, with their state and counts;
/// `state=running` lists what is under way. With `state`, a page may be
/// shorter than `limit` (even empty) and still have a `next`: one request
/// reads at most 10,000 jobs; keep following `next`.
#[utoipa::path(
    tag = "notifications",
    operation_id = "listNotifications",
    params(("bot" = String, Path, description = "The bot's id."), NotificationQuery),
    responses((status = 200, description = "A page of jobs, newest first.", body = NotificationPage)),
    security(("api_key" = []))
)]
#[get("/bots/{bot}/notifications")]
pub async fn list_notifications(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    let bot = path.into_inner();
    authorize(&req, &state, Action::NotificationsGet, Some(&bot), true).await?;
    let q: NotificationQuery = query(&req)?;
    let limit = PageQuery {
        limit: q.limit,
        next: None,
    }
    .limit()?;
    let job_state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| AdminError::InvalidQuery {
            field: "state".into(),
            problem: "one of queued, running, completed, cancelled, failed".into(),
        })?),
    };
    let notifications = jobs_of(&state)?;
    find(&state, &bot).await?;
    let page = notifications
        .jobs
        .list_jobs_in_state(&bot, job_state, q.next.as_deref(), limit)
        .await?;
    Ok(HttpResponse::Ok().json(NotificationPage {
        items: page.items.iter().map(Notification::of).collect(),
        next: page.next_cursor,
    }))
}

/// The job `id` if the caller's key reaches its bot; 404 otherwise (a key
/// scoped to other bots learns nothing about the job, not even that it exists).
async fn visible_job(
    state: &AdminState,
    call: &super::auth::Call,
    id: &str,
) -> Result<JobRecord, AdminError> {
    let notifications = jobs_of(state)?;
    let not_found = || AdminError::NotificationNotFound(id.to_string());
    let job = notifications
        .jobs
        .get_job(id)
        .await?
        .ok_or_else(not_found)?;
    if !call.principal.reaches(&job.spec.bot_id) {
        let error = not_found();
        call.deny(state, &error).await;
        return Err(error);
    }
    Ok(job)
}

/// A notification job: state, counts (failed by reason), rate, times.
#[utoipa::path(
    tag = "notifications",
    operation_id = "getNotification",
    params(("job" = String, Path, description = "The job id.")),
    responses((status = 200, description = "The job.", body = Notification)),
    security(("api_key" = []))
)]
#[get("/notifications/{job}")]
pub async fn get_notification(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    let id = path.into_inner();
    let call = authorize(&req, &state, Action::NotificationsGet, Some(&id), false).await?;
    super::no_query(&req)?;
    let job = visible_job(&state, &call, &id).await?;
    Ok(HttpResponse::Ok().json(Notification::of(&job)))
}

/// A job's targets with their delivery state, by target id; `state=failed`
/// gives the failures with their reasons.
#[utoipa::path(
    tag = "notifications",
    operation_id = "listNotificationTargets",
    params(("job" = String, Path, description = "The job id."), TargetQuery),
    responses((status = 200, description = "A page of targets.", body = TargetPage)),
    security(("api_key" = []))
)]
#[get("/notifications/{job}/targets")]
pub async fn list_targets(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    let id = path.into_inner();
    let call = authorize(&req, &state, Action::NotificationsGet, Some(&id), false).await?;
    let q: TargetQuery = query(&req)?;
    let limit = PageQuery {
        limit: q.limit,
        next: None,
    }
    .limit()?;
    let kind = match q.state.as_deref() {
        None => None,
        Some(s) => Some(
            DeliveryStateKind::parse(s).ok_or_else(|| AdminError::InvalidQuery {
                field: "state".into(),
                problem: "one of pending, sending, retrying, delivered, failed, cancelled".into(),
            })?,
        ),
    };
    visible_job(&state, &call, &id).await?;
    let page = jobs_of(&state)?
        .jobs
        .list_targets(&id, kind, q.next.as_deref(), limit)
        .await?;
    Ok(HttpResponse::Ok().json(TargetPage {
        items: page.items.into_iter().map(TargetItem::of).collect(),
        next: page.next_cursor,
    }))
}

/// Cancel a job: targets not sent yet are not sent (`cancelled`); a send under
/// way still records its outcome. Cancelling a finished job changes nothing.
#[utoipa::path(
    tag = "notifications",
    operation_id = "cancelNotification",
    params(("job" = String, Path, description = "The job id.")),
    responses((status = 200, description = "The job after cancelling.", body = Notification)),
    security(("api_key" = []))
)]
#[delete("/notifications/{job}")]
pub async fn cancel_notification(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    let id = path.into_inner();
    let call = authorize(&req, &state, Action::NotificationsCancel, Some(&id), false).await?;
    super::no_query(&req)?;
    // Refusals (unknown or out-of-scope job) are audited by visible_job.
    visible_job(&state, &call, &id).await?;
    let result = async { Ok(jobs_of(&state)?.jobs.cancel(&id, super::now_ms()).await?) }.await;
    let job = call.finish(&state, result).await?;
    Ok(HttpResponse::Ok().json(Notification::of(&job)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused_field(activity: serde_json::Value) -> Option<String> {
        match check_activity(&activity) {
            Ok(()) => None,
            Err(AdminError::InvalidField { field, .. }) => Some(field),
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }

    #[test]
    fn routing_fields_are_refused_by_name() {
        for field in ["conversation", "from", "recipient"] {
            let mut a = json!({"type": "message", "text": "hi"});
            a[field] = json!({"id": "x"});
            assert_eq!(refused_field(a), Some(format!("activity.{field}")));
        }
    }

    #[test]
    fn a_notification_is_a_message_with_something_to_show() {
        assert_eq!(
            refused_field(json!({"type": "message", "text": "build failed"})),
            None
        );
        let card = json!({"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": {}}]});
        assert_eq!(refused_field(card), None);
        for empty in [
            json!({"type": "message"}),
            json!({"type": "message", "text": ""}),
            json!({"type": "message", "text": "   "}),
            json!({"type": "message", "attachments": []}),
        ] {
            assert_eq!(
                refused_field(empty.clone()).as_deref(),
                Some("activity.text"),
                "{empty}"
            );
        }
        for kind in ["bogus", "typing", "invoke", "conversationUpdate"] {
            let activity = json!({"type": kind, "text": "x"});
            assert_eq!(
                refused_field(activity).as_deref(),
                Some("activity.type"),
                "{kind}"
            );
        }
        assert_eq!(
            refused_field(json!({"text": "x"})).as_deref(),
            Some("activity.type")
        );
    }
}
