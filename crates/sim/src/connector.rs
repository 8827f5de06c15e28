//! The Bot Connector REST API (`{serviceUrl}v3/conversations/...`).
//!
//! Independent of the HTTP framework: [`handle`] takes the request parts and
//! returns a [`Reply`], so the rules can be read (and tested) in one place.

use std::sync::Arc;
use std::time::Instant;

use botfleet_protocol::{
    Activity, ChannelAccount, ConversationParameters, ConversationResourceResponse, ErrorResponse,
    PagedMembersResult, ResourceResponse,
};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::faults::Injected;
use crate::records::{ActivityRecord, Operation, Violation};
use crate::state::{Conversation, Inner, Sim};

const MAX_PAGE_SIZE: usize = 500;
const DEFAULT_PAGE_SIZE: usize = 200;

/// The answer to a connector call.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after_secs: Option<u64>,
}

impl Reply {
    fn json<T: Serialize>(status: u16, value: &T) -> Self {
        Self {
            status,
            body: serde_json::to_vec(value).unwrap_or_default(),
            retry_after_secs: None,
        }
    }

    fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self::json(status, &ErrorResponse::new(code, message))
    }

    fn empty(status: u16) -> Self {
        Self {
            status,
            body: Vec::new(),
            retry_after_secs: None,
        }
    }

    fn throttled(retry_after_secs: u64, message: String) -> Self {
        let mut r = Self::error(429, "Throttled", message);
        r.retry_after_secs = Some(retry_after_secs);
        r
    }

    fn code(&self) -> Option<String> {
        if self.status < 400 {
            return None;
        }
        serde_json::from_slice::<ErrorResponse>(&self.body)
            .ok()
            .map(|e| e.error.code)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub operation: Operation,
    /// Absent for create.
    pub conversation_id: Option<String>,
    pub activity_id: Option<String>,
    pub member_id: Option<String>,
    /// The path as received (still percent-encoded).
    pub path: String,
}

/// Recognises a connector path under any prefix (`/amer/v3/conversations/...`).
/// Path segments are percent-decoded: conversation ids carry `:`, `;` and `@`.
pub fn parse_route(method: &str, raw_path: &str) -> Option<Route> {
    const MARK: &str = "/v3/conversations";
    let idx = raw_path.find(MARK)?;
    let rest = &raw_path[idx + MARK.len()..];
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let rest = rest.trim_start_matches('/');
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let segs: Vec<String> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').map(percent_decode).collect()
    };
    if segs.iter().any(String::is_empty) {
        return None;
    }
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let route = |operation,
                 conversation_id: Option<&str>,
                 activity_id: Option<&str>,
                 member_id: Option<&str>| {
        Some(Route {
            operation,
            conversation_id: conversation_id.map(str::to_owned),
            activity_id: activity_id.map(str::to_owned),
            member_id: member_id.map(str::to_owned),
            path: raw_path.to_owned(),
        })
    };
    match (method, s.as_slice()) {
        ("POST", []) => route(Operation::Create, None, None, None),
        ("POST", [c, "activities"]) => route(Operation::Send, Some(c), None, None),
        ("POST", [c, "activities", a]) => route(Operation::Reply, Some(c), Some(a), None),
        ("PUT", [c, "activities", a]) => route(Operation::Update, Some(c), Some(a), None),
        ("DELETE", [c, "activities", a]) => route(Operation::Delete, Some(c), Some(a), None),
        ("GET", [c, "activities", a, "members"]) => {
            route(Operation::ActivityMembers, Some(c), Some(a), None)
        }
        ("GET", [c, "members"]) => route(Operation::Members, Some(c), None, None),
        ("GET", [c, "members", m]) => route(Operation::Member, Some(c), None, Some(m)),
        ("GET", [c, "pagedmembers"]) => route(Operation::PagedMembers, Some(c), None, None),
        _ => None,
    }
}

/// `%XX` decoding; malformed escapes are kept verbatim.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The parsed request body of a writing operation.
enum Payload {
    None,
    Activity(Box<Activity>),
    Create(Box<ConversationParameters>),
}

/// Handles one connector call.
pub async fn handle(
    sim: &Sim,
    method: &str,
    raw_path: &str,
    query: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Reply {
    let Some(route) = parse_route(method, raw_path) else {
        return Reply::error(
            404,
            "NotFound",
            format!("no Bot Connector operation {method} {raw_path}"),
        );
    };
    let app_id = match sim.authenticate_connector(authorization) {
        Ok(a) => a,
        Err(e) => {
            let reply = Reply::error(
                401,
                "Unauthorized",
                format!("Authorization has been denied for this request: {e}"),
            );
            let mut inner = sim.inner.lock();
            inner.stats.auth_rejected += 1;
            count_locked(&mut inner, Some(route.operation), &reply);
            return reply;
        }
    };

    let (latency, injected) = {
        let mut inner = sim.inner.lock();
        let latency = inner.faults.latency();
        let injected = inner
            .faults
            .decide(route.conversation_id.as_deref(), &route.path);
        (latency, injected)
    };
    if let Some(d) = latency {
        tokio::time::sleep(d).await;
    }

    let raw: Option<Arc<RawValue>> = match route.operation {
        Operation::Send | Operation::Reply | Operation::Update | Operation::Create => {
            match serde_json::from_slice::<Box<RawValue>>(body) {
                Ok(r) => Some(Arc::from(r)),
                Err(e) => {
                    let reply = Reply::error(
                        400,
                        "BadSyntax",
                        format!("request body is not valid JSON: {e}"),
                    );
                    return finish(sim, &route, &app_id, None, None, None, reply);
                }
            }
        }
        _ => None,
    };

    if let Some(fault) = injected {
        let reply = match fault {
            Injected::Error {
                status,
                code,
                message,
            } => Reply::error(status, &code, message),
            Injected::Throttle { retry_after_secs } => Reply::throttled(
                retry_after_secs,
                "Too many requests (injected fault)".into(),
            ),
        };
        sim.inner.lock().stats.faults_injected += 1;
        return finish(sim, &route, &app_id, None, raw, None, reply);
    }

    let payload = match (&raw, route.operation) {
        (Some(r), Operation::Create) => {
            match serde_json::from_str::<ConversationParameters>(r.get()) {
                Ok(p) => Payload::Create(Box::new(p)),
                Err(e) => {
                    let reply = Reply::error(
                        400,
                        "BadSyntax",
                        format!("invalid ConversationParameters: {e}"),
                    );
                    return finish(sim, &route, &app_id, None, raw, None, reply);
                }
            }
        }
        (Some(r), _) => match serde_json::from_str::<Activity>(r.get()) {
            Ok(a) => Payload::Activity(Box::new(a)),
            Err(e) => {
                let reply = Reply::error(400, "BadSyntax", format!("invalid activity: {e}"));
                return finish(sim, &route, &app_id, None, raw, None, reply);
            }
        },
        (None, _) => Payload::None,
    };

    match payload {
        Payload::Create(params) => create(sim, &route, &app_id, *params, raw),
        other => {
            let activity = match other {
                Payload::Activity(a) => Some(a),
                _ => None,
            };
            existing(sim, &route, &app_id, activity.as_deref(), raw, query)
        }
    }
}

/// Operations on a conversation that must already exist.
fn existing(
    sim: &Sim,
    route: &Route,
    app_id: &Arc<str>,
    activity: Option<&Activity>,
    raw: Option<Arc<RawValue>>,
    query: &str,
) -> Reply {
    let conv_id = route.conversation_id.clone().unwrap_or_default();
    let op = route.operation;
    if let Some(a) = activity {
        if a.kind.trim().is_empty() {
            let reply = Reply::error(400, "BadArgument", "Activity type is required");
            return finish(sim, route, app_id, None, raw, None, reply);
        }
    }
    let mut inner = sim.inner.lock();
    let Some(conv) = inner.conversations.get(&conv_id) else {
        inner.stats.unknown_conversation += 1;
        let tenant = activity.and_then(|a| a.tenant_id()).map(str::to_owned);
        let reply = Reply::error(404, "ConversationNotFound", "Conversation not found.");
        return record(&mut inner, route, app_id, tenant, raw, None, reply);
    };
    if !conv.app_ids.is_empty() && !conv.app_ids.iter().any(|a| **a == **app_id) {
        let tenant = conv.tenant_id.clone();
        let reply = Reply::error(
            403,
            "BotNotInConversationRoster",
            "The bot is not part of the conversation roster.",
        );
        return record(&mut inner, route, app_id, tenant, raw, None, reply);
    }
    let tenant = conv
        .tenant_id
        .clone()
        .or_else(|| activity.and_then(|a| a.tenant_id()).map(str::to_owned));
    let members = match op {
        Operation::Members
        | Operation::PagedMembers
        | Operation::Member
        | Operation::ActivityMembers => conv.members.clone(),
        _ => Vec::new(),
    };
    if matches!(op, Operation::Update | Operation::Delete) {
        let id = route.activity_id.as_deref().unwrap_or_default();
        if !sim.issued_activity_id(id) {
            let reply = Reply::error(
                404,
                "ActivityNotFoundInConversation",
                format!("Activity {id} was not found in the conversation."),
            );
            return record(&mut inner, route, app_id, tenant, raw, None, reply);
        }
    }
    if let Err(reply) = admit(&mut inner, op, app_id, &conv_id, tenant.as_deref()) {
        return record(&mut inner, route, app_id, tenant, raw, None, reply);
    }
    let (reply, activity_id) = match op {
        Operation::Send | Operation::Reply => {
            let id = sim.new_activity_id();
            (
                Reply::json(201, &ResourceResponse { id: id.clone() }),
                Some(id),
            )
        }
        Operation::Update => {
            let id = route.activity_id.clone().unwrap_or_default();
            (
                Reply::json(200, &ResourceResponse { id: id.clone() }),
                Some(id),
            )
        }
        Operation::Delete => (Reply::empty(200), route.activity_id.clone()),
        Operation::Members | Operation::ActivityMembers => (Reply::json(200, &members), None),
        Operation::PagedMembers => (paged(&members, query), None),
        Operation::Member => {
            let wanted = route.member_id.as_deref().unwrap_or_default();
            match members.iter().find(|m| member_matches(m, wanted)) {
                Some(m) => (Reply::json(200, m), None),
                None => (
                    Reply::error(
                        404,
                        "MemberNotFoundInConversation",
                        format!("Member {wanted} was not found in the conversation."),
                    ),
                    None,
                ),
            }
        }
        Operation::Create => (Reply::error(500, "ServiceError", "unexpected route"), None),
    };
    record(&mut inner, route, app_id, tenant, raw, activity_id, reply)
}

fn member_matches(m: &ChannelAccount, wanted: &str) -> bool {
    m.id == wanted
        || m.aad_object_id.as_deref() == Some(wanted)
        || ["userPrincipalName", "email"].iter().any(|k| {
            m.extra
                .get(*k)
                .and_then(Value::as_str)
                .is_some_and(|v| v.eq_ignore_ascii_case(wanted))
        })
}

fn paged(members: &[ChannelAccount], query: &str) -> Reply {
    let mut page_size = DEFAULT_PAGE_SIZE;
    let mut offset = 0usize;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "pageSize" => match v.parse::<usize>() {
                Ok(n) if n > 0 => page_size = n.min(MAX_PAGE_SIZE),
                _ => return Reply::error(400, "BadArgument", format!("invalid pageSize {v:?}")),
            },
            "continuationToken" if !v.is_empty() => match v.parse::<usize>() {
                Ok(n) => offset = n,
                Err(_) => {
                    return Reply::error(
                        400,
                        "BadArgument",
                        format!("invalid continuationToken {v:?}"),
                    )
                }
            },
            _ => {}
        }
    }
    let end = offset.saturating_add(page_size).min(members.len());
    let page = members
        .get(offset.min(end)..end)
        .unwrap_or_default()
        .to_vec();
    Reply::json(
        200,
        &PagedMembersResult {
            continuation_token: (end < members.len()).then(|| end.to_string()),
            members: page,
        },
    )
}

enum Plan {
    Personal { member: ChannelAccount },
    Thread { channel: String },
}

enum CreateTarget<'a> {
    User(&'a str),
    Channel(&'a str),
}

fn plan_target(plan: &Plan) -> CreateTarget<'_> {
    match plan {
        Plan::Personal { member } => CreateTarget::User(&member.id),
        Plan::Thread { channel } => CreateTarget::Channel(channel),
    }
}

/// Why Teams would refuse to create this conversation for `app_id`: a user of a
/// tenant with registered installations who did not install the app gets 403
/// `ForbiddenOperationException` (the app is not installed in their personal
/// scope); a channel the bot is not in gets 403 `BotNotInConversationRoster`,
/// or 404 `ConversationNotFound` when the sim does not know it and the tenant
/// has registered installations
/// (<https://learn.microsoft.com/en-us/microsoftteams/platform/bots/how-to/conversations/conversation-messages#status-codes-from-bot-conversational-apis>).
fn not_installed(
    inner: &Inner,
    app_id: &str,
    tenant: Option<&str>,
    target: &CreateTarget<'_>,
) -> Option<Reply> {
    let installed = tenant.and_then(|t| inner.installations.get(app_id)?.get(t));
    match target {
        CreateTarget::User(user) => match installed {
            Some(users) if !users.contains(*user) => Some(Reply::error(
                403,
                "ForbiddenOperationException",
                "The bot is not installed for this user (personal scope); install the app first.",
            )),
            _ => None,
        },
        CreateTarget::Channel(channel) => match inner.conversations.get(*channel) {
            Some(c) if !c.app_ids.is_empty() && !c.app_ids.iter().any(|a| a == app_id) => {
                Some(Reply::error(
                    403,
                    "BotNotInConversationRoster",
                    "The bot is not part of the conversation roster.",
                ))
            }
            None if installed.is_some() => Some(Reply::error(
                404,
                "ConversationNotFound",
                "Conversation not found.",
            )),
            _ => None,
        },
    }
}

/// `POST /v3/conversations`, following the behaviour observed on Teams
/// (https://github.com/microsoft/teams.net/blob/main/docs/CreateConversation-API-Behavior.md): 1:1 needs exactly one member and a tenant and is
/// idempotent; channel threads need an activity; group chats cannot be created.
fn create(
    sim: &Sim,
    route: &Route,
    app_id: &Arc<str>,
    params: ConversationParameters,
    raw: Option<Arc<RawValue>>,
) -> Reply {
    let channel_data_tenant = params
        .channel_data
        .as_ref()
        .and_then(|cd| cd.pointer("/tenant/id"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let tenant = params
        .tenant_id
        .clone()
        .filter(|s| !s.is_empty())
        .or(channel_data_tenant);
    let bad = |msg: &str| Reply::error(400, "BadSyntax", msg.to_owned());
    let channel_id = params
        .channel_data
        .as_ref()
        .and_then(|cd| cd.pointer("/channel/id"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);

    let plan = if !params.is_group {
        match params.members.as_deref() {
            Some([member]) if !member.id.is_empty() => Ok(Plan::Personal {
                member: member.clone(),
            }),
            _ => Err(bad("Incorrect conversation creation parameters: a 1:1 conversation needs exactly one member with an id")),
        }
    } else if let Some(channel) = channel_id {
        if params.activity.is_none() {
            Err(bad("Incorrect conversation creation parameters: creating a channel thread requires an activity"))
        } else {
            Ok(Plan::Thread { channel })
        }
    } else {
        Err(bad(
            "Incorrect conversation creation parameters: group chats cannot be created",
        ))
    };
    let plan = match (plan, &tenant) {
        (Ok(_), None) => Err(bad(
            "Incorrect conversation creation parameters: tenantId is required",
        )),
        (other, _) => other,
    };
    let plan = match plan {
        Ok(p) => p,
        Err(reply) => {
            let mut inner = sim.inner.lock();
            return record(&mut inner, route, app_id, tenant, raw, None, reply);
        }
    };
    if let Some(a) = &params.activity {
        if a.kind.trim().is_empty() {
            let mut inner = sim.inner.lock();
            let reply = Reply::error(400, "BadArgument", "Activity type is required");
            return record(&mut inner, route, app_id, tenant, raw, None, reply);
        }
    }
    let (conv_id, activity_id, answer_activity_id) = match &plan {
        Plan::Personal { member } => {
            let t = tenant.as_deref().unwrap_or_default();
            let id = format!(
                "a:1{}",
                crate::state::uuid_from(&format!("{app_id}|{t}|{}", member.id)).replace('-', "")
            );
            (
                id,
                params.activity.as_ref().map(|_| sim.new_activity_id()),
                false,
            )
        }
        Plan::Thread { channel } => {
            let aid = sim.new_activity_id();
            (format!("{channel};messageid={aid}"), Some(aid), true)
        }
    };
    let mut route = route.clone();
    route.conversation_id = Some(conv_id.clone());
    let mut inner = sim.inner.lock();
    if let Some(reply) = not_installed(&inner, app_id, tenant.as_deref(), &plan_target(&plan)) {
        return record(&mut inner, &route, app_id, tenant, raw, None, reply);
    }
    if let Err(reply) = admit(
        &mut inner,
        Operation::Create,
        app_id,
        &conv_id,
        tenant.as_deref(),
    ) {
        return record(&mut inner, &route, app_id, tenant, raw, None, reply);
    }
    let conversation = match plan {
        Plan::Personal { member } => Conversation {
            id: conv_id.clone(),
            tenant_id: tenant.clone(),
            members: vec![member],
            app_ids: vec![app_id.to_string()],
        },
        Plan::Thread { channel } => {
            let parent = inner.conversations.get(&channel);
            Conversation {
                id: conv_id.clone(),
                tenant_id: tenant.clone(),
                members: parent.map(|p| p.members.clone()).unwrap_or_default(),
                app_ids: parent.map(|p| p.app_ids.clone()).unwrap_or_default(),
            }
        }
    };
    inner
        .conversations
        .entry(conv_id.clone())
        .or_insert(conversation);
    let reply = Reply::json(
        201,
        &ConversationResourceResponse {
            id: conv_id,
            activity_id: if answer_activity_id {
                activity_id.clone()
            } else {
                None
            },
            service_url: None,
        },
    );
    record(&mut inner, &route, app_id, tenant, raw, activity_id, reply)
}

/// Applies the Teams rate limits; on a breach records the violation.
fn admit(
    inner: &mut Inner,
    op: Operation,
    app_id: &str,
    conversation_id: &str,
    tenant: Option<&str>,
) -> Result<(), Reply> {
    match inner.limiter.admit(
        op.limit_class(),
        app_id,
        conversation_id,
        tenant,
        Instant::now(),
    ) {
        Ok(()) => Ok(()),
        Err(breach) => {
            inner.stats.throttled_by_limits += 1;
            let (at_ms, at) = Sim::now_stamp();
            let message = format!(
                "Too many requests: {} limit of {} requests per {} s exceeded; retry after {} s",
                breach.scope, breach.max_requests, breach.window_secs, breach.retry_after_secs
            );
            let retry = breach.retry_after_secs;
            let seq = inner.next_seq();
            inner.violations.push(Violation {
                seq,
                at_ms,
                at,
                app_id: app_id.to_owned(),
                conversation_id: conversation_id.to_owned(),
                tenant_id: tenant.map(str::to_owned),
                operation: op,
                limit: breach,
            });
            Err(Reply::throttled(retry, message))
        }
    }
}

fn finish(
    sim: &Sim,
    route: &Route,
    app_id: &Arc<str>,
    tenant: Option<String>,
    raw: Option<Arc<RawValue>>,
    activity_id: Option<String>,
    reply: Reply,
) -> Reply {
    let mut inner = sim.inner.lock();
    if reply.status == 400 {
        inner.stats.bad_requests += 1;
    }
    record(&mut inner, route, app_id, tenant, raw, activity_id, reply)
}

#[allow(clippy::too_many_arguments)]
fn record(
    inner: &mut Inner,
    route: &Route,
    app_id: &Arc<str>,
    tenant: Option<String>,
    body: Option<Arc<RawValue>>,
    activity_id: Option<String>,
    reply: Reply,
) -> Reply {
    let (at_ms, at) = Sim::now_stamp();
    let op = route.operation;
    let (activity_id, reply_to_id) = match op {
        Operation::Reply => (activity_id, route.activity_id.clone()),
        _ => (activity_id.or_else(|| route.activity_id.clone()), None),
    };
    count_locked(inner, Some(op), &reply);
    let seq = inner.next_seq();
    inner.activities.push(ActivityRecord {
        seq,
        at_ms,
        at,
        method: method_of(op),
        path: route.path.clone(),
        operation: op,
        conversation_id: route.conversation_id.clone().unwrap_or_default(),
        activity_id,
        reply_to_id,
        app_id: app_id.to_string(),
        tenant_id: tenant,
        status: reply.status,
        error: reply.code(),
        body,
    });
    reply
}

fn method_of(op: Operation) -> &'static str {
    match op {
        Operation::Send | Operation::Reply | Operation::Create => "POST",
        Operation::Update => "PUT",
        Operation::Delete => "DELETE",
        _ => "GET",
    }
}

fn count_locked(inner: &mut Inner, op: Option<Operation>, reply: &Reply) {
    let s = &mut inner.stats;
    s.connector_requests += 1;
    if (200..300).contains(&reply.status) {
        s.connector_ok += 1;
    }
    if let Some(op) = op {
        *s.by_operation.entry(op.as_str()).or_default() += 1;
    }
    *s.by_status.entry(reply.status).or_default() += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_under_any_prefix_with_encoded_ids() {
        let r = parse_route(
            "POST",
            "/amer/v3/conversations/19%3Aabc%40thread.tacv2%3Bmessageid%3D42/activities/42",
        )
        .expect("reply route");
        assert_eq!(r.operation, Operation::Reply);
        assert_eq!(
            r.conversation_id.as_deref(),
            Some("19:abc@thread.tacv2;messageid=42")
        );
        assert_eq!(r.activity_id.as_deref(), Some("42"));
        assert_eq!(
            parse_route("POST", "/v3/conversations").map(|r| r.operation),
            Some(Operation::Create)
        );
        assert_eq!(
            parse_route("GET", "/x/v3/conversations/a:1/pagedmembers").map(|r| r.operation),
            Some(Operation::PagedMembers)
        );
        assert_eq!(
            parse_route("PATCH", "/v3/conversations/a:1/activities/1"),
            None
        );
        assert_eq!(parse_route("POST", "/v3/conversationsX"), None);
        assert_eq!(percent_decode("a%3A%zz%4"), "a:%zz%4");
    }
}
