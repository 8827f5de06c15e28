//! Teams chat and channel messages on the Graph side: posted by tests
//! (`POST /_sim/graph/chats/{id}/messages`), announced to matching
//! subscriptions, and read back by the resync reads
//! (<https://learn.microsoft.com/graph/api/chat-list-messages>,
//! <https://learn.microsoft.com/graph/api/channel-list-messages>).

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::crypto::{self, Tamper};
use super::deliver::{self, Pending};
use super::routes::GraphError;
use super::{Chat, Watched};
use crate::state::Sim;
use crate::time::rfc3339;

/// Largest `$top` of message lists (Graph: 50).
pub const MAX_TOP: usize = 50;
/// Page size when `$top` is absent.
pub const DEFAULT_TOP: usize = 20;

/// `POST /_sim/graph/chats/{id}/messages` (and the channel variant) body.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewMessage {
    pub tenant_id: String,
    pub text: String,
    #[serde(default)]
    pub from_user_id: Option<String>,
    /// `text` (default) or `html`.
    #[serde(default)]
    pub content_type: Option<String>,
}

/// `POST /_sim/graph/chats` body: a chat with its members and installed apps.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChatSpec {
    pub id: String,
    pub tenant_id: String,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub apps: Vec<String>,
}

/// Where a message lives.
#[derive(Debug, Clone)]
pub enum Place {
    Chat(String),
    Channel { team: String, channel: String },
}

impl Place {
    fn odata_path(&self, message_id: &str) -> String {
        match self {
            Place::Chat(c) => format!("chats('{c}')/messages('{message_id}')"),
            Place::Channel { team, channel } => {
                format!("teams('{team}')/channels('{channel}')/messages('{message_id}')")
            }
        }
    }
}

/// Registers (or extends) a chat.
pub fn register_chat(sim: &Sim, spec: ChatSpec) -> Result<(), String> {
    if spec.id.is_empty() || spec.tenant_id.is_empty() {
        return Err("id and tenantId must not be empty".into());
    }
    let mut inner = sim.graph.inner.lock();
    let chat = inner.chats.entry(spec.id.clone()).or_insert_with(|| Chat {
        tenant_id: spec.tenant_id.clone(),
        ..Chat::default()
    });
    if chat.tenant_id != spec.tenant_id {
        return Err(format!(
            "chat {} belongs to tenant {}, not {}",
            spec.id, chat.tenant_id, spec.tenant_id
        ));
    }
    chat.members.extend(spec.members);
    chat.apps.extend(spec.apps);
    Ok(())
}

/// Creates a message and queues its `created` notifications. Returns the chatMessage.
pub fn post(sim: &Arc<Sim>, place: Place, msg: NewMessage) -> Result<Value, String> {
    if msg.tenant_id.is_empty() {
        return Err("tenantId must not be empty".into());
    }
    let content_type = msg.content_type.as_deref().unwrap_or("text");
    if !matches!(content_type, "text" | "html") {
        return Err(format!(
            "contentType must be text or html, got {content_type:?}"
        ));
    }
    let now = sim.graph.now_ms();
    let from = msg
        .from_user_id
        .clone()
        .unwrap_or_else(|| crate::state::uuid_from(&format!("sim-sender@{}", msg.tenant_id)));
    let mut inner = sim.graph.inner.lock();
    let chat = match &place {
        Place::Chat(id) => inner.chats.entry(id.clone()).or_insert_with(|| Chat {
            tenant_id: msg.tenant_id.clone(),
            ..Chat::default()
        }),
        Place::Channel { team, channel } => inner
            .channels
            .entry((team.clone(), channel.clone()))
            .or_insert_with(|| Chat {
                tenant_id: msg.tenant_id.clone(),
                ..Chat::default()
            }),
    };
    if chat.tenant_id != msg.tenant_id {
        return Err(format!(
            "this chat or channel belongs to tenant {}, not {}",
            chat.tenant_id, msg.tenant_id
        ));
    }
    if matches!(place, Place::Chat(_)) {
        chat.members.insert(from.clone());
    }
    // Ids are ms timestamps (as Teams' are), unique and increasing per chat.
    let last = chat
        .messages
        .last()
        .and_then(|m| m["id"].as_str())
        .and_then(|id| id.parse::<u64>().ok())
        .unwrap_or(0);
    let id_num = now.max(last + 1);
    let id = id_num.to_string();
    let stamp = rfc3339(now);
    let (chat_id, channel_identity) = match &place {
        Place::Chat(c) => (json!(c), Value::Null),
        Place::Channel { team, channel } => {
            (Value::Null, json!({ "teamId": team, "channelId": channel }))
        }
    };
    let message = json!({
        "id": id,
        "replyToId": null,
        "etag": id,
        "messageType": "message",
        "createdDateTime": stamp,
        "lastModifiedDateTime": stamp,
        "lastEditedDateTime": null,
        "deletedDateTime": null,
        "subject": null,
        "summary": null,
        "chatId": chat_id,
        "importance": "normal",
        "locale": "en-us",
        "webUrl": null,
        "channelIdentity": channel_identity,
        "policyViolation": null,
        "eventDetail": null,
        "from": {
            "application": null,
            "device": null,
            "user": {
                "@odata.type": "#microsoft.graph.teamworkUserIdentity",
                "id": from,
                "displayName": null,
                "userIdentityType": "aadUser",
                "tenantId": msg.tenant_id,
            }
        },
        "body": { "contentType": content_type, "content": msg.text },
        "attachments": [],
        "mentions": [],
        "reactions": [],
    });
    chat.messages.push(message.clone());
    let (members, apps) = (chat.members.clone(), chat.apps.clone());
    inner.purge_expired(now);
    let tamper = if inner.faults.tamper_encrypted_content {
        Tamper::Data
    } else {
        Tamper::None
    };
    let subs: Vec<super::Subscription> = inner
        .subscriptions
        .values()
        .filter(|s| s.tenant_id == msg.tenant_id && s.watches_created())
        .filter(|s| match (&s.watched, &place) {
            (Watched::Chat(c), Place::Chat(p)) => c == p,
            (Watched::AllChats, Place::Chat(_)) => true,
            (Watched::UserChats(u), Place::Chat(_)) => members.contains(u),
            (Watched::AppChats(a), Place::Chat(_)) => apps.contains(a),
            (
                Watched::Channel { team, channel },
                Place::Channel {
                    team: t,
                    channel: c,
                },
            ) => team == t && channel == c,
            (Watched::AllChannels, Place::Channel { .. }) => true,
            _ => false,
        })
        .cloned()
        .collect();
    drop(inner);
    let path = place.odata_path(&id);
    let mut rich_content = json!(message);
    rich_content["@odata.type"] = json!("#microsoft.graph.chatMessage");
    let plaintext = rich_content.to_string();
    for s in subs {
        let mut item = json!({
            "subscriptionId": s.id,
            "subscriptionExpirationDateTime": rfc3339(s.expiration_ms),
            "changeType": "created",
            "resource": path,
            "resourceData": {
                "id": id,
                "@odata.type": "#Microsoft.Graph.chatMessage",
                "@odata.id": path,
            },
            "clientState": s.client_state,
            "tenantId": s.tenant_id,
        });
        let mut rich = None;
        if let (true, Some(cert)) = (s.include_resource_data, &s.certificate) {
            item["encryptedContent"] = crypto::encrypt(plaintext.as_bytes(), cert, tamper)?;
            rich = Some((s.app_id.clone(), s.tenant_id.clone()));
        }
        deliver::enqueue(
            sim,
            &s.notification_url,
            Pending {
                item,
                subscription_id: s.id.clone(),
                rich,
            },
        );
    }
    Ok(message)
}

/// `GET .../messages/{id}`: one message with its `@odata.context`.
pub fn find(messages: &[Value], id: &str) -> Option<Value> {
    let mut m = messages
        .iter()
        .find(|m| m["id"].as_str() == Some(id))?
        .clone();
    m["@odata.context"] = json!("https://graph.microsoft.com/v1.0/$metadata#chatMessage/$entity");
    Some(m)
}

/// A resync read: `$top` (<= 50), `$orderby` (`lastModifiedDateTime desc` or
/// `createdDateTime desc`), `$filter` (`lastModifiedDateTime gt|lt|ge|le <date>`,
/// clauses joined by `and`), `$skiptoken` (from `@odata.nextLink`).
/// `next_base` is the absolute URL of the list without its query.
pub fn list(
    messages: &[Value],
    query: &HashMap<String, String>,
    next_base: &str,
) -> Result<Value, GraphError> {
    let bad = |m: String| GraphError::new(400, "BadRequest", m);
    let top = match query.get("$top") {
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_TOP).contains(n))
            .ok_or_else(|| bad(format!("Invalid page size specified: '{t}'. Must be between 1 and {MAX_TOP} inclusive.")))?,
        None => DEFAULT_TOP,
    };
    let order_field =
        match query
            .get("$orderby")
            .map(|o| o.split_whitespace().collect::<Vec<_>>())
        {
            None => "lastModifiedDateTime",
            Some(parts) => match parts.as_slice() {
                [f, "desc"] if matches!(*f, "lastModifiedDateTime" | "createdDateTime") => {
                    if *f == "createdDateTime" {
                        "createdDateTime"
                    } else {
                        "lastModifiedDateTime"
                    }
                }
                _ => return Err(bad(
                    "$orderby supports 'lastModifiedDateTime desc' and 'createdDateTime desc' only"
                        .into(),
                )),
            },
        };
    let mut clauses: Vec<(String, String, u64)> = Vec::new();
    if let Some(filter) = query.get("$filter") {
        for clause in filter.split(" and ") {
            let parts: Vec<&str> = clause.split_whitespace().collect();
            let [field, op, value] = parts.as_slice() else {
                return Err(bad(format!("Invalid $filter clause '{clause}': expected '<property> gt|lt|ge|le <date-time>'")));
            };
            if !matches!(*field, "lastModifiedDateTime" | "createdDateTime") {
                return Err(bad(format!(
                    "$filter on '{field}' is not supported (lastModifiedDateTime, createdDateTime)"
                )));
            }
            if !matches!(*op, "gt" | "lt" | "ge" | "le") {
                return Err(bad(format!(
                    "$filter operator '{op}' is not supported (gt, lt, ge, le)"
                )));
            }
            let ms = super::clock::parse_rfc3339(value.trim_matches('\''))
                .ok_or_else(|| bad(format!("'{value}' is not a date-time")))?;
            clauses.push(((*field).to_owned(), (*op).to_owned(), ms));
        }
    }
    let stamp = |m: &Value, f: &str| {
        m[f].as_str()
            .and_then(super::clock::parse_rfc3339)
            .unwrap_or(0)
    };
    let id_of = |m: &Value| {
        m["id"]
            .as_str()
            .and_then(|i| i.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut selected: Vec<&Value> = messages
        .iter()
        .filter(|m| {
            clauses.iter().all(|(f, op, at)| {
                let v = stamp(m, f);
                match op.as_str() {
                    "gt" => v > *at,
                    "lt" => v < *at,
                    "ge" => v >= *at,
                    _ => v <= *at,
                }
            })
        })
        .collect();
    selected.sort_by_key(|m| std::cmp::Reverse((stamp(m, order_field), id_of(m))));
    // The skiptoken is the (time, id) of the last item returned: stable while
    // new messages arrive (they sort before it).
    if let Some(token) = query.get("$skiptoken") {
        let decoded = URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                let (t, i) = s.split_once('_')?;
                Some((t.parse::<u64>().ok()?, i.parse::<u64>().ok()?))
            })
            .ok_or_else(|| bad("Invalid $skiptoken".into()))?;
        selected.retain(|m| (stamp(m, order_field), id_of(m)) < decoded);
    }
    let more = selected.len() > top;
    selected.truncate(top);
    let mut body = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(chatMessage)",
        "@odata.count": selected.len(),
        "value": selected,
    });
    if let (true, Some(last)) = (more, selected.last()) {
        let token = URL_SAFE_NO_PAD.encode(format!("{}_{}", stamp(last, order_field), id_of(last)));
        let mut next = url::Url::parse(next_base)
            .map_err(|e| GraphError::new(500, "InternalServerError", e.to_string()))?;
        {
            let mut pairs = next.query_pairs_mut();
            for (k, v) in query.iter().filter(|(k, _)| *k != "$skiptoken") {
                pairs.append_pair(k, v);
            }
            pairs.append_pair("$skiptoken", &token);
        }
        body["@odata.nextLink"] = json!(next.to_string());
    }
    Ok(body)
}
