//! `/admin/v1/bots`: bots registered through the API, and the configuration
//! file's bots (listed with `read_only: true`, never changed here).
//!
//! A registration is a `[[bots]]` entry of the configuration in JSON, checked by
//! the same validation as the file's (errors name the field, e.g.
//! `handler.url`). It is stored as given, credential included; answers never
//! contain a credential or webhook secret: only the credential's `kind`.
//!
//! Concurrency: every stored bot has a version, its `ETag` (`"3"`). `PUT`,
//! `PATCH` and `DELETE` require `If-Match` (428 without it: a blind overwrite
//! could undo someone else's change) and answer 412 when it is stale. `*`
//! matches any version, for scripts that knowingly overwrite.

use actix_web::http::header;
use actix_web::{delete, get, patch, post, put, web, HttpRequest, HttpResponse};
use botfleet_store::admin::{AdminStoreError, BotRecord};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{authorize, Action, Call};
use super::error::AdminError;
use super::{
    from_value, no_query, now_ms, page_after, query, read_json, rfc3339, AdminState, PREFIX,
};
use botfleet_connector::AmbiguousPolicy;

use crate::settings::{BotSettings, CredentialSettings, HandlerSettings};

/// Bots per page unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// Most bots per page.
const MAX_LIMIT: usize = 1000;

/// A bot registration: the body of `POST /bots` and `PUT /bots/{bot}`, the same
/// fields as a `[[bots]]` entry of the configuration file.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BotRegistration {
    /// botfleet's name for the bot: `/api/messages/{id}`, store keys, admin
    /// URLs. Letters, digits, `-` and `_`, at most 64.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", example = "helpdesk")]
    pub id: String,
    /// Microsoft App ID of the Azure Bot registration (a GUID): the audience of
    /// the channel's tokens. Unique across bots.
    #[schema(example = "9f6b4c1e-1d2a-4c8e-9f00-2b1c3d4e5f60")]
    pub app_id: String,
    /// Client secret (shorthand for `credential = {kind: "secret", ...}`).
    /// Write-only: never returned.
    #[serde(default)]
    #[schema(write_only)]
    pub app_password: Option<String>,
    /// How the bot gets Bot Connector tokens for replies and proactive
    /// messages. Write-only: answers give only its `kind`.
    #[serde(default)]
    #[schema(write_only)]
    pub credential: Option<CredentialSpec>,
    /// The bot's Entra tenant for a single-tenant bot (all new Azure Bot
    /// registrations); absent = multi-tenant.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// `public` (default), `gcch`, `dod`, `china` or a custom cloud of the
    /// configuration.
    #[serde(default)]
    #[schema(example = "public")]
    pub cloud: Option<String>,
    /// Tenants the bot serves; empty = any.
    #[serde(default)]
    pub allowed_tenants: Vec<String>,
    /// serviceUrl domains allowed beside the cloud's hosts (suffix match).
    #[serde(default)]
    pub additional_allowed_domains: Vec<String>,
    /// The bot logic botfleet runs; default `record`.
    #[serde(default)]
    pub handler: Option<HandlerSpec>,
    /// A send that timed out after it left: `report` (default; never a
    /// duplicate) or `resend` (never a loss).
    #[serde(default)]
    pub ambiguous_send: Option<AmbiguousSendSpec>,
}

/// A bot's outbound credential (as in the configuration file).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
#[schema(as = Credential)]
pub enum CredentialSpec {
    /// Client secret.
    Secret { secret: String },
    /// Certificate: PEM files on every botfleet host, absolute paths inside
    /// one of `admin.credential_dirs` (refused otherwise, with one message that
    /// does not say whether the file exists); `certificate_file` or
    /// `thumbprint` gives the `x5t` Entra matches.
    Certificate {
        private_key_file: String,
        #[serde(default)]
        certificate_file: Option<String>,
        #[serde(default)]
        thumbprint: Option<String>,
    },
    /// AKS workload identity (federated service-account token).
    WorkloadIdentity {
        #[serde(default)]
        token_file: Option<String>,
    },
    /// Managed identity (user-assigned: `client_id`).
    ManagedIdentity {
        #[serde(default)]
        client_id: Option<String>,
        #[serde(default)]
        endpoint: Option<String>,
    },
}

/// The bot logic (as in the configuration file).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
#[schema(as = Handler)]
pub enum HandlerSpec {
    /// Accept and record activities, reply nothing.
    Record,
    /// Reply with the message's own text (needs a credential).
    Echo,
    /// Answer every message with `text` (needs a credential).
    NotifyOnly { text: String },
    /// Forward each validated activity to `url` (https), HMAC-signed with
    /// `secret` (at least 16 characters; write-only).
    Webhook {
        url: String,
        #[schema(write_only)]
        secret: String,
        /// How long one call may take: a duration like `5s` or `1500ms`
        /// (default `5s`).
        #[serde(default)]
        #[schema(example = "5s")]
        timeout: Option<String>,
        #[serde(default)]
        allow_insecure_http: Option<bool>,
    },
}

/// What to do with a send that timed out after it left.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
#[schema(as = AmbiguousSend)]
pub enum AmbiguousSendSpec {
    Report,
    Resend,
}

/// The bot's app type, derived from its registration.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AppType {
    SingleTenant,
    MultiTenant,
    UserAssignedMsi,
}

/// Where a bot is defined.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BotSource {
    /// The configuration file: read-only here.
    Configuration,
    /// Created through the admin API.
    Api,
}

/// A bot as the API shows it: never a credential or webhook secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct Bot {
    pub id: String,
    pub app_id: String,
    pub app_type: AppType,
    pub tenant_id: Option<String>,
    pub cloud: String,
    pub allowed_tenants: Vec<String>,
    pub additional_allowed_domains: Vec<String>,
    /// The credential's kind (`secret`, `certificate`, `workload-identity`,
    /// `managed-identity`); `null` when the bot has none (it cannot reply).
    pub credential: Option<String>,
    pub handler: HandlerView,
    pub ambiguous_send: AmbiguousSendSpec,
    pub source: BotSource,
    /// True for the configuration file's bots: PUT, PATCH and DELETE answer
    /// 409 `bot_read_only`.
    pub read_only: bool,
    /// Stored bots: the version, also the `ETag` (`"<version>"`).
    pub version: Option<u64>,
    /// RFC 3339 UTC; stored bots only.
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// A bot's handler without its secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum HandlerView {
    Record,
    Echo,
    NotifyOnly {
        text: String,
    },
    Webhook {
        url: String,
        /// A duration like `5s`.
        timeout: String,
        allow_insecure_http: bool,
    },
}

/// One page of bots.
#[derive(Debug, Serialize, ToSchema)]
pub struct BotPage {
    pub items: Vec<Bot>,
    /// Pass as `next` for the following page; absent on the last page.
    pub next: Option<String>,
}

/// `limit` and `next` of a listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub next: Option<String>,
}

impl PageQuery {
    pub(crate) fn limit(&self) -> Result<usize, AdminError> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            Some(_) => Err(AdminError::InvalidQuery {
                field: "limit".into(),
                problem: format!("must be between 1 and {MAX_LIMIT}"),
            }),
        }
    }
}

impl Bot {
    pub(crate) fn of(settings: &BotSettings, record: Option<&BotRecord>) -> Self {
        let credential = match (&settings.credential, &settings.app_password) {
            (Some(c), _) => Some(credential_kind(c)),
            (None, Some(p)) if !p.is_empty() => Some("secret"),
            _ => None,
        };
        let app_type = match (&settings.credential, &settings.tenant_id) {
            (Some(CredentialSettings::ManagedIdentity { .. }), _) => AppType::UserAssignedMsi,
            (_, Some(_)) => AppType::SingleTenant,
            _ => AppType::MultiTenant,
        };
        let handler = match &settings.handler {
            HandlerSettings::Record => HandlerView::Record,
            HandlerSettings::Echo => HandlerView::Echo,
            HandlerSettings::NotifyOnly { text } => HandlerView::NotifyOnly { text: text.clone() },
            HandlerSettings::Webhook {
                url,
                timeout,
                allow_insecure_http,
                ..
            } => HandlerView::Webhook {
                url: url.clone(),
                timeout: crate::settings::duration::format(*timeout),
                allow_insecure_http: *allow_insecure_http,
            },
        };
        Self {
            id: settings.id.clone(),
            app_id: settings.app_id.clone(),
            app_type,
            tenant_id: settings.tenant_id.clone(),
            cloud: settings.cloud.clone(),
            allowed_tenants: settings.allowed_tenants.clone(),
            additional_allowed_domains: settings.additional_allowed_domains.clone(),
            credential: credential.map(str::to_string),
            handler,
            ambiguous_send: match settings.ambiguous_send {
                AmbiguousPolicy::ReportUnknown => AmbiguousSendSpec::Report,
                AmbiguousPolicy::Resend => AmbiguousSendSpec::Resend,
            },
            source: if record.is_some() {
                BotSource::Api
            } else {
                BotSource::Configuration
            },
            read_only: record.is_none(),
            version: record.map(|r| r.version),
            created_at: record.map(|r| rfc3339(r.created_at)),
            updated_at: record.map(|r| rfc3339(r.updated_at)),
        }
    }
}

fn credential_kind(c: &CredentialSettings) -> &'static str {
    match c {
        CredentialSettings::Secret { .. } => "secret",
        CredentialSettings::Certificate { .. } => "certificate",
        CredentialSettings::WorkloadIdentity { .. } => "workload-identity",
        CredentialSettings::ManagedIdentity { .. } => "managed-identity",
    }
}

/// A stored registration, read back. A spec that no longer parses (written by
/// another version) is reported without its content.
pub(crate) fn settings_of(record: &BotRecord) -> Result<BotSettings, AdminError> {
    serde_json::from_value(record.spec.clone()).map_err(|e| {
        tracing::error!(bot = %record.id, line = e.line(), column = e.column(), "stored bot registration cannot be read by this version");
        AdminError::Internal
    })
}

/// A registration body: checked field by field against the documented schema,
/// then read as the configuration's bot type and validated by the very rules
/// of the configuration file (errors keyed relative to the bot: `handler.url`).
/// Returns the bot and the spec to store (secrets included).
fn registration(
    state: &AdminState,
    spec: serde_json::Value,
) -> Result<(BotSettings, serde_json::Value), AdminError> {
    let _: BotRegistration = refined_from_value(&spec)?;
    let bot: BotSettings = refined_from_value(&spec)?;
    bot.validate_registration(&state.clouds, &state.credential_dirs)
        .map_err(|errors| {
            AdminError::InvalidFields(errors.into_iter().map(|e| (e.key, e.problem)).collect())
        })?;
    // Stored in the configuration type's own shape, so what is stored is
    // exactly what was validated (defaults filled in).
    let stored = botfleet_auth::Secret::revealing(|| serde_json::to_value(&bot)).map_err(|e| {
        tracing::error!(line = e.line(), "a bot registration cannot be serialised");
        AdminError::Internal
    })?;
    Ok((bot, stored))
}

/// [`from_value`], naming the field inside `handler` / `credential` (serde
/// reports an error inside an internally tagged enum at the enum: a bad
/// `handler.timeout` at `handler`). The field is found by taking each key of
/// that object out in turn: the one whose absence changes the error is at
/// fault. Only on the error path.
fn refined_from_value<T: serde::de::DeserializeOwned>(
    spec: &serde_json::Value,
) -> Result<T, AdminError> {
    let error = match from_value(spec.clone()) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let AdminError::InvalidField { field, problem } = &error else {
        return Err(error);
    };
    let Some(serde_json::Value::Object(tagged)) = spec.get(field.as_str()) else {
        return Err(error);
    };
    if !tagged.contains_key("kind") {
        return Err(error);
    }
    for child in tagged.keys().filter(|k| *k != "kind") {
        let mut trial = spec.clone();
        if let Some(serde_json::Value::Object(t)) = trial.get_mut(field.as_str()) {
            t.remove(child);
        }
        let changed = match from_value::<T>(trial) {
            Ok(_) => true,
            Err(AdminError::InvalidField {
                field: f,
                problem: p,
            }) => f != *field || p != *problem,
            Err(_) => true,
        };
        if changed {
            return Err(AdminError::field(
                format!("{field}.{child}"),
                problem.clone(),
            ));
        }
    }
    Err(error)
}

/// Refuses ids and app ids of the configuration file's bots.
fn check_config_conflicts(state: &AdminState, bot: &BotSettings) -> Result<(), AdminError> {
    for c in &state.config_bots {
        if c.id == bot.id {
            return Err(AdminError::BotConflict(format!(
                "bot id `{}` is defined in the configuration file",
                bot.id
            )));
        }
        if c.app_id.eq_ignore_ascii_case(&bot.app_id) {
            return Err(AdminError::BotConflict(format!(
                "app id `{}` is already registered by bot `{}` of the configuration file",
                bot.app_id, c.id
            )));
        }
    }
    Ok(())
}

fn config_bot<'a>(state: &'a AdminState, id: &str) -> Option<&'a BotSettings> {
    state.config_bots.iter().find(|b| b.id == id)
}

/// The registration of bot `id` (configuration first) and its stored record
/// (`None` for a configuration bot), or 404.
pub(crate) async fn find_settings(
    state: &AdminState,
    id: &str,
) -> Result<(BotSettings, Option<BotRecord>), AdminError> {
    if let Some(b) = config_bot(state, id) {
        return Ok((b.clone(), None));
    }
    let record = state
        .bots
        .get(id)
        .await?
        .ok_or_else(|| AdminError::BotNotFound(id.to_string()))?;
    Ok((settings_of(&record)?, Some(record)))
}

/// The bot `id` as the API shows it, or 404.
pub(crate) async fn find(state: &AdminState, id: &str) -> Result<Bot, AdminError> {
    let (settings, record) = find_settings(state, id).await?;
    Ok(Bot::of(&settings, record.as_ref()))
}

fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// What `If-Match` asks for.
#[derive(Debug, PartialEq, Eq)]
enum IfMatch {
    Any,
    /// Versions listed; weak or malformed tags never match (RFC 9110 section
    /// 13.1.1 compares If-Match strongly).
    Versions(Vec<u64>),
}

fn if_match(req: &HttpRequest) -> Result<IfMatch, AdminError> {
    let mut versions = Vec::new();
    let mut seen = false;
    for value in req.headers().get_all(header::IF_MATCH) {
        seen = true;
        let value = value.to_str().unwrap_or("");
        for tag in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if tag == "*" {
                return Ok(IfMatch::Any);
            }
            if let Some(v) = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .and_then(|t| t.parse::<u64>().ok())
            {
                versions.push(v);
            }
        }
    }
    if !seen {
        return Err(AdminError::PreconditionRequired);
    }
    Ok(IfMatch::Versions(versions))
}

/// The version the change may apply to: the one `If-Match` names if it is
/// current, else 412.
fn expected_version(m: &IfMatch, current: u64) -> Result<u64, AdminError> {
    match m {
        IfMatch::Any => Ok(current),
        IfMatch::Versions(v) if v.contains(&current) => Ok(current),
        IfMatch::Versions(_) => Err(AdminError::PreconditionFailed { current }),
    }
}

fn with_etag(mut builder: actix_web::HttpResponseBuilder, bot: &Bot) -> HttpResponse {
    if let Some(v) = bot.version {
        builder.insert_header((header::ETAG, etag(v)));
    }
    builder.json(bot)
}

/// List bots.
///
/// The configuration file's bots and the stored ones, by id; a key scoped to
/// bots sees only those.
#[utoipa::path(
    tag = "bots",
    operation_id = "listBots",
    params(PageQuery),
    responses((status = 200, description = "A page of bots.", body = BotPage)),
    security(("api_key" = []))
)]
#[get("/bots")]
pub async fn list_bots(
    req: HttpRequest,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let call = authorize(&req, &state, Action::BotsList, None, false).await?;
    let q: PageQuery = query(&req)?;
    let limit = q.limit()?;
    let mut bots: Vec<Bot> = state.config_bots.iter().map(|b| Bot::of(b, None)).collect();
    for record in state.bots.list().await? {
        if config_bot(&state, &record.id).is_some() {
            tracing::warn!(bot = %record.id, "a bot of the configuration file has the id of a bot created through the admin API; the configuration's is used");
            continue;
        }
        bots.push(Bot::of(&settings_of(&record)?, Some(&record)));
    }
    bots.retain(|b| call.principal.reaches(&b.id));
    bots.sort_by(|a, b| a.id.cmp(&b.id));
    let (items, next) = page_after(bots, |b| b.id.as_str(), q.next.as_deref(), limit);
    Ok(HttpResponse::Ok().json(BotPage { items, next }))
}

/// Get a bot.
#[utoipa::path(
    tag = "bots",
    operation_id = "getBot",
    params(("bot" = String, Path, description = "The bot's id.")),
    responses((status = 200, description = "The bot; stored bots carry an `ETag`.", body = Bot,
        headers(("ETag" = String, description = "`\"<version>\"`, for If-Match")))),
    security(("api_key" = []))
)]
#[get("/bots/{bot}")]
pub async fn get_bot(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    let id = path.into_inner();
    authorize(&req, &state, Action::BotsGet, Some(&id), true).await?;
    no_query(&req)?;
    let bot = find(&state, &id).await?;
    Ok(with_etag(HttpResponse::Ok(), &bot))
}

/// Register a bot.
///
/// Applied on every replica without a restart. The credential is stored and
/// never returned.
#[utoipa::path(
    tag = "bots",
    operation_id = "createBot",
    request_body(content = BotRegistration, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = Bot,
            headers(("ETag" = String, description = "`\"1\"`"), ("Location" = String, description = "The bot's URL"))),
        (status = 409, description = "The id or app id is taken (`bot_conflict`).", body = super::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
#[post("/bots")]
pub async fn create_bot(
    req: HttpRequest,
    state: web::Data<AdminState>,
    payload: web::Payload,
) -> Result<HttpResponse, AdminError> {
    let mut call = authorize(&req, &state, Action::BotsCreate, None, false).await?;
    let spec = match no_query(&req) {
        Ok(()) => read_json(&req, payload, &["application/json"]).await,
        Err(e) => Err(e),
    };
    let spec = match spec {
        Ok(spec) => spec,
        Err(e) => return call.finish(&state, Err(e)).await,
    };
    if let Some(id) = spec.get("id").and_then(|v| v.as_str()) {
        call.set_target(id.chars().take(64).collect::<String>());
        call.require_bot(&state, id).await?;
    }
    let result = insert_bot(&state, spec).await;
    let bot = call.finish(&state, result).await?;
    let mut builder = HttpResponse::Created();
    builder.insert_header((header::LOCATION, format!("{PREFIX}/bots/{}", bot.id)));
    Ok(with_etag(builder, &bot))
}

async fn insert_bot(state: &AdminState, spec: serde_json::Value) -> Result<Bot, AdminError> {
    let (bot, spec) = registration(state, spec)?;
    check_config_conflicts(state, &bot)?;
    let now = now_ms();
    let record = state
        .bots
        .create(BotRecord {
            id: bot.id.clone(),
            app_id: bot.app_id.clone(),
            spec,
            version: 1,
            created_at: now,
            updated_at: now,
        })
        .await?;
    Ok(Bot::of(&bot, Some(&record)))
}

/// Replace a bot's registration.
///
/// The whole registration, credential included (answers never show it, so a
/// `PUT` must send it again; `PATCH` keeps what it does not name).
#[utoipa::path(
    tag = "bots",
    operation_id = "replaceBot",
    params(
        ("bot" = String, Path, description = "The bot's id."),
        ("If-Match" = String, Header, description = "The bot's ETag (`\"<version>\"`) or `*`."),
    ),
    request_body(content = BotRegistration, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced.", body = Bot, headers(("ETag" = String, description = "The new version"))),
    ),
    security(("api_key" = []))
)]
#[put("/bots/{bot}")]
pub async fn replace_bot(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, AdminError> {
    let id = path.into_inner();
    let call = authorize(&req, &state, Action::BotsReplace, Some(&id), true).await?;
    let result = async {
        no_query(&req)?;
        let m = if_match(&req)?;
        if config_bot(&state, &id).is_some() {
            return Err(AdminError::BotReadOnly(id.clone()));
        }
        let spec = read_json(&req, payload, &["application/json"]).await?;
        update_bot(&state, &id, &m, |_| Ok(spec)).await
    }
    .await;
    let bot = call.finish(&state, result).await?;
    Ok(with_etag(HttpResponse::Ok(), &bot))
}

/// Change some fields of a bot (JSON merge patch, RFC 7396).
///
/// Fields the patch does not name keep their value, the credential included;
/// `null` removes an optional field.
#[utoipa::path(
    tag = "bots",
    operation_id = "patchBot",
    params(
        ("bot" = String, Path, description = "The bot's id."),
        ("If-Match" = String, Header, description = "The bot's ETag (`\"<version>\"`) or `*`."),
    ),
    request_body(content = Object, content_type = "application/merge-patch+json",
        description = "Fields of a BotRegistration to change; `null` removes one.",
        example = json!({"allowed_tenants": ["72f988bf-86f1-41af-91ab-2d7cd011db47"]})),
    responses(
        (status = 200, description = "Changed.", body = Bot, headers(("ETag" = String, description = "The new version"))),
    ),
    security(("api_key" = []))
)]
#[patch("/bots/{bot}")]
pub async fn patch_bot(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, AdminError> {
    let id = path.into_inner();
    let call = authorize(&req, &state, Action::BotsPatch, Some(&id), true).await?;
    let result = async {
        no_query(&req)?;
        let m = if_match(&req)?;
        if config_bot(&state, &id).is_some() {
            return Err(AdminError::BotReadOnly(id.clone()));
        }
        let changes = read_json(
            &req,
            payload,
            &["application/merge-patch+json", "application/json"],
        )
        .await?;
        if !changes.is_object() {
            return Err(AdminError::field("", "a merge patch is a JSON object"));
        }
        update_bot(&state, &id, &m, |stored| {
            let mut spec = stored.clone();
            merge_patch(&mut spec, &changes);
            Ok(spec)
        })
        .await
    }
    .await;
    let bot = call.finish(&state, result).await?;
    Ok(with_etag(HttpResponse::Ok(), &bot))
}

/// Applies `new_spec(stored spec)` to bot `id` if `If-Match` allows it.
async fn update_bot(
    state: &AdminState,
    id: &str,
    m: &IfMatch,
    new_spec: impl FnOnce(&serde_json::Value) -> Result<serde_json::Value, AdminError>,
) -> Result<Bot, AdminError> {
    let stored = state
        .bots
        .get(id)
        .await?
        .ok_or_else(|| AdminError::BotNotFound(id.to_string()))?;
    let expected = expected_version(m, stored.version)?;
    let (bot, spec) = registration(state, new_spec(&stored.spec)?)?;
    if bot.id != id {
        return Err(AdminError::field(
            "id",
            format!("is `{}` but the URL names bot `{id}`; a bot's id cannot change (create a new bot and delete this one)", bot.id),
        ));
    }
    check_config_conflicts(state, &bot)?;
    let record = state
        .bots
        .update(
            BotRecord {
                id: id.to_string(),
                app_id: bot.app_id.clone(),
                spec,
                version: expected + 1,
                created_at: stored.created_at,
                updated_at: now_ms(),
            },
            expected,
        )
        .await
        .map_err(|e| match e {
            AdminStoreError::NotFound => AdminError::BotNotFound(id.to_string()),
            other => other.into(),
        })?;
    Ok(Bot::of(&bot, Some(&record)))
}

/// RFC 7396 JSON merge patch.
fn merge_patch(target: &mut serde_json::Value, changes: &serde_json::Value) {
    use serde_json::Value;
    let Value::Object(changes) = changes else {
        *target = changes.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(map) = target {
        for (k, v) in changes {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Remove a bot.
///
/// Every replica stops accepting its tokens.
#[utoipa::path(
    tag = "bots",
    operation_id = "deleteBot",
    params(
        ("bot" = String, Path, description = "The bot's id."),
        ("If-Match" = String, Header, description = "The bot's ETag (`\"<version>\"`) or `*`."),
    ),
    responses((status = 204, description = "Removed.")),
    security(("api_key" = []))
)]
#[delete("/bots/{bot}")]
pub async fn delete_bot(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    let id = path.into_inner();
    let call = authorize(&req, &state, Action::BotsDelete, Some(&id), true).await?;
    let result = async {
        no_query(&req)?;
        let m = if_match(&req)?;
        if config_bot(&state, &id).is_some() {
            return Err(AdminError::BotReadOnly(id.clone()));
        }
        let stored = state
            .bots
            .get(&id)
            .await?
            .ok_or_else(|| AdminError::BotNotFound(id.clone()))?;
        let expected = expected_version(&m, stored.version)?;
        state
            .bots
            .delete(&id, Some(expected))
            .await
            .map_err(|e| match e {
                AdminStoreError::NotFound => AdminError::BotNotFound(id.clone()),
                other => other.into(),
            })
    }
    .await;
    call.finish(&state, result).await?;
    Ok(HttpResponse::NoContent().finish())
}

impl Call {
    /// For a call whose bot is known only from its body: refuses (and audits)
    /// a key whose scope does not contain `bot`.
    pub(crate) async fn require_bot(
        &self,
        state: &AdminState,
        bot: &str,
    ) -> Result<(), AdminError> {
        if self.principal.reaches(bot) {
            return Ok(());
        }
        let e = AdminError::Forbidden(format!(
            "key `{}` is scoped to other bots than `{bot}`",
            self.principal.key_id
        ));
        self.deny(state, &e).await;
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7396() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"a": [1]});
        merge_patch(&mut t, &json!({"a": [2], "b": {"x": 1}}));
        assert_eq!(t, json!({"a": [2], "b": {"x": 1}}));
    }

    #[test]
    fn if_match_parsing() {
        let req = actix_web::test::TestRequest::default()
            .insert_header((header::IF_MATCH, "\"3\", W/\"4\", \"x\""))
            .to_http_request();
        assert_eq!(if_match(&req).expect("parsed"), IfMatch::Versions(vec![3]));
        let req = actix_web::test::TestRequest::default()
            .insert_header((header::IF_MATCH, "*"))
            .to_http_request();
        assert_eq!(if_match(&req).expect("parsed"), IfMatch::Any);
        let req = actix_web::test::TestRequest::default().to_http_request();
        assert!(matches!(
            if_match(&req),
            Err(AdminError::PreconditionRequired)
        ));
        assert!(matches!(
            expected_version(&IfMatch::Versions(vec![3]), 4),
            Err(AdminError::PreconditionFailed { current: 4 })
        ));
    }

    /// The documented registration and the configuration's bot type accept the
    /// same fields: every variant of a full registration parses as both.
    #[test]
    fn documented_registration_matches_the_configuration_type() {
        let credentials = [
            json!({"kind": "secret", "secret": "s"}),
            json!({"kind": "certificate", "private_key_file": "/k.pem", "certificate_file": "/c.pem", "thumbprint": "AB"}),
            json!({"kind": "workload-identity", "token_file": "/t"}),
            json!({"kind": "managed-identity", "client_id": "c", "endpoint": "http://169.254.169.254/x"}),
        ];
        let handlers = [
            json!({"kind": "record"}),
            json!({"kind": "echo"}),
            json!({"kind": "notify-only", "text": "hi"}),
            json!({"kind": "webhook", "url": "https://x", "secret": "0123456789abcdef", "timeout": "5s", "allow_insecure_http": false}),
        ];
        for c in &credentials {
            for h in &handlers {
                let spec = json!({
                    "id": "a", "app_id": "9f6b4c1e-1d2a-4c8e-9f00-2b1c3d4e5f60",
                    "credential": c, "tenant_id": "t", "cloud": "public",
                    "allowed_tenants": ["t"], "additional_allowed_domains": ["x.example"],
                    "handler": h, "ambiguous_send": "resend",
                });
                from_value::<BotRegistration>(spec.clone()).expect("documented schema");
                from_value::<BotSettings>(spec).expect("configuration type");
            }
        }
        let spec = json!({"id": "a", "app_id": "x", "app_password": "p"});
        from_value::<BotRegistration>(spec.clone()).expect("documented schema");
        from_value::<BotSettings>(spec).expect("configuration type");
    }
}
