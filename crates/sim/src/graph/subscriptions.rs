//! `/subscriptions` of Graph v1.0 for Teams messages
//! (<https://learn.microsoft.com/graph/api/subscription-post-subscriptions>,
//! <https://learn.microsoft.com/graph/teams-changenotifications-chatmessage>):
//! lifetimes (at most 4,320 minutes; beyond 1 hour only with a
//! `lifecycleNotificationUrl`), quotas, write throttling and the validation
//! handshake with both URLs before a subscription exists.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use super::crypto::EncryptionCertificate;
use super::routes::{Caller, GraphError};
use super::{admit, DeliveryRecord, Subscription, Watched, VALIDATION_TIMEOUT};
use crate::state::Sim;

/// Longest lifetime of a Teams message subscription (3 days).
pub const MAX_LIFETIME_MINUTES: u64 = 4320;
/// Beyond this lifetime a `lifecycleNotificationUrl` is required.
pub const LIFECYCLE_REQUIRED_AFTER_MS: u64 = 3600 * 1000;
/// Length of Graph's subscription write throttling window.
pub const WRITE_WINDOW: Duration = Duration::from_secs(20);

/// `POST /subscriptions` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateRequest {
    pub change_type: Option<String>,
    pub notification_url: Option<String>,
    pub lifecycle_notification_url: Option<String>,
    pub resource: Option<String>,
    pub expiration_date_time: Option<String>,
    pub client_state: Option<String>,
    #[serde(default)]
    pub include_resource_data: bool,
    pub encryption_certificate: Option<String>,
    pub encryption_certificate_id: Option<String>,
    #[serde(default)]
    pub latest_supported_tls_version: Option<String>,
}

/// `PATCH /subscriptions/{id}` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateRequest {
    pub expiration_date_time: Option<String>,
    pub notification_url: Option<String>,
    pub encryption_certificate: Option<String>,
    pub encryption_certificate_id: Option<String>,
}

fn invalid(message: impl Into<String>) -> GraphError {
    GraphError::new(400, "InvalidRequest", message)
}

/// Parses a Teams message resource; the forms of
/// <https://learn.microsoft.com/graph/teams-changenotifications-chatmessage>.
pub fn parse_resource(resource: &str) -> Option<Watched> {
    let path = resource.split('?').next().unwrap_or_default();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    match segs.as_slice() {
        [c, id, m] if eq(c, "chats") && eq(m, "messages") && !id.is_empty() => {
            Some(Watched::Chat((*id).to_owned()))
        }
        [c, all] if eq(c, "chats") && eq(all, "getAllMessages") => Some(Watched::AllChats),
        [t, all] if eq(t, "teams") && eq(all, "getAllMessages") => Some(Watched::AllChannels),
        [t, team, c, channel, m]
            if eq(t, "teams")
                && eq(c, "channels")
                && eq(m, "messages")
                && !team.is_empty()
                && !channel.is_empty() =>
        {
            Some(Watched::Channel {
                team: (*team).to_owned(),
                channel: (*channel).to_owned(),
            })
        }
        [u, user, c, all]
            if eq(u, "users")
                && eq(c, "chats")
                && eq(all, "getAllMessages")
                && !user.is_empty() =>
        {
            Some(Watched::UserChats((*user).to_owned()))
        }
        [a, t, app, i, all]
            if eq(a, "appCatalogs")
                && eq(t, "teamsApps")
                && eq(i, "installedToChats")
                && eq(all, "getAllMessages")
                && !app.is_empty() =>
        {
            Some(Watched::AppChats((*app).to_owned()))
        }
        _ => None,
    }
}

fn check_url(name: &str, url: &str) -> Result<(), GraphError> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        _ => Err(invalid(format!(
            "{name} must be an absolute https URL, got '{url}'"
        ))),
    }
}

/// Checks an expiry against the Teams limits; returns it in ms.
fn check_expiry(value: &str, now: u64, has_lifecycle: bool) -> Result<u64, GraphError> {
    let at = super::clock::parse_rfc3339(value).ok_or_else(|| {
        invalid(format!(
            "expirationDateTime '{value}' is not a valid date-time"
        ))
    })?;
    if at <= now {
        return Err(invalid(format!(
            "Subscription expiration can only be 1 to {MAX_LIFETIME_MINUTES} minutes in the future; '{value}' is in the past (sim time now: {}).",
            crate::time::rfc3339(now)
        )));
    }
    if at - now > MAX_LIFETIME_MINUTES * 60 * 1000 {
        return Err(invalid(format!(
            "Subscription expiration can only be {MAX_LIFETIME_MINUTES} minutes in the future for this resource; '{value}' is {} minutes ahead (sim time now: {}).",
            (at - now) / 60_000,
            crate::time::rfc3339(now)
        )));
    }
    if at - now > LIFECYCLE_REQUIRED_AFTER_MS && !has_lifecycle {
        return Err(invalid(
            "lifecycleNotificationUrl is a required property for subscription creation on this resource when the expirationDateTime value is set to greater than 1 hour",
        ));
    }
    Ok(at)
}

/// Applies the write throttle and the injected 429s.
fn admit_write(sim: &Sim, caller: &Caller) -> Result<(), GraphError> {
    let mut inner = sim.graph.inner.lock();
    if inner.faults.throttle_next_writes > 0 {
        inner.faults.throttle_next_writes -= 1;
        let secs = inner.faults.retry_after_secs.unwrap_or(2);
        return Err(GraphError::throttled(
            secs,
            "Too many requests (botfleet-sim throttleNextWrites fault).",
        ));
    }
    let max = inner.settings.writes_per_20s;
    let window = inner
        .write_windows
        .entry((caller.app_id.clone(), caller.tenant_id.clone()))
        .or_default();
    admit(window, max, WRITE_WINDOW, Instant::now()).map_err(|wait| {
        GraphError::throttled(
            wait.as_secs().max(1),
            format!(
                "Too many requests: at most {max} subscription writes per 20 s per app per tenant."
            ),
        )
    })
}

/// The validation token Graph sends: opaque text with characters that need
/// URL-decoding (space, `:`, `+`, `<`, `&`, `%`), so a subscriber that echoes
/// the raw query value, or reflects it as HTML, fails the handshake.
pub fn new_validation_token() -> String {
    format!(
        "Validation: Testing client application reachability for subscription Request-Id: {} <b>&amp;+=%</b>",
        uuid::Uuid::new_v4()
    )
}

/// POSTs `{url}?validationToken=...` and checks the answer: 200, `text/plain`,
/// the decoded token as body, within 10 s.
pub async fn handshake(sim: &Sim, url: &str, which: &str) -> Result<(), GraphError> {
    let token = new_validation_token();
    let mut target =
        url::Url::parse(url).map_err(|e| invalid(format!("{which} is not a URL: {e}")))?;
    // Graph keeps the URL's own query and adds the token, form-encoded.
    target
        .query_pairs_mut()
        .append_pair("validationToken", &token);
    let started = Instant::now();
    let result = sim
        .graph
        .client
        .post(target)
        .header("content-type", "text/plain; charset=utf-8")
        .timeout(VALIDATION_TIMEOUT)
        .body("")
        .send()
        .await;
    let latency = started.elapsed();
    let (status, problem) = match result {
        Err(e) if e.is_timeout() => (
            None,
            Some(format!(
                "no answer within {} s",
                VALIDATION_TIMEOUT.as_secs()
            )),
        ),
        Err(e) => (None, Some(format!("cannot reach it: {e}"))),
        Ok(r) => {
            let status = r.status().as_u16();
            let content_type = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_ascii_lowercase();
            let body = r.text().await.unwrap_or_default();
            let problem = if status != 200 {
                Some(format!("answered {status}, not 200"))
            } else if !content_type.starts_with("text/plain") {
                Some(format!(
                    "answered Content-Type '{content_type}', not text/plain"
                ))
            } else if body != token {
                Some("the body is not the URL-decoded validationToken".to_owned())
            } else if latency > VALIDATION_TIMEOUT {
                Some("answered after 10 s".to_owned())
            } else {
                None
            };
            (Some(status), problem)
        }
    };
    sim.graph.record(DeliveryRecord {
        seq: 0,
        kind: "validation",
        url: url.to_owned(),
        items: 0,
        subscription_ids: Vec::new(),
        attempt: 1,
        status,
        latency_ms: Some(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX)),
        outcome: if problem.is_none() { "ok" } else { "invalid" },
        detail: problem.clone(),
        at: String::new(),
        real_at: String::new(),
    });
    match problem {
        None => Ok(()),
        Some(p) => Err(GraphError::new(
            400,
            "ValidationError",
            format!("Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request. ({which} {url}: {p})"),
        )),
    }
}

/// `POST /subscriptions`.
pub async fn create(sim: &Arc<Sim>, caller: &Caller, body: &[u8]) -> Result<Value, GraphError> {
    let req: CreateRequest = serde_json::from_slice(body)
        .map_err(|e| GraphError::new(400, "BadRequest", format!("Invalid request body: {e}")))?;
    let need = |v: &Option<String>, name: &str| {
        v.clone().filter(|s| !s.trim().is_empty()).ok_or_else(|| {
            invalid(format!(
                "{name} is a required property for subscription creation."
            ))
        })
    };
    let change_type = need(&req.change_type, "changeType")?;
    for c in change_type.split(',') {
        if !matches!(c.trim(), "created" | "updated" | "deleted") {
            return Err(invalid(format!(
                "changeType '{c}' is not one of created, updated, deleted"
            )));
        }
    }
    let notification_url = need(&req.notification_url, "notificationUrl")?;
    check_url("notificationUrl", &notification_url)?;
    let lifecycle_url = req
        .lifecycle_notification_url
        .clone()
        .filter(|s| !s.trim().is_empty());
    if let Some(l) = &lifecycle_url {
        check_url("lifecycleNotificationUrl", l)?;
    }
    let resource = need(&req.resource, "resource")?;
    let watched = parse_resource(&resource).ok_or_else(|| {
        invalid(format!("Resource '{resource}' is not supported by botfleet-sim (Teams chat and channel messages: /chats/{{id}}/messages, /chats/getAllMessages, /teams/{{id}}/channels/{{id}}/messages, /teams/getAllMessages, /users/{{id}}/chats/getAllMessages, /appCatalogs/teamsApps/{{id}}/installedToChats/getAllMessages)"))
    })?;
    let expiration = need(&req.expiration_date_time, "expirationDateTime")?;
    let client_state = req.client_state.clone();
    if client_state.as_ref().is_some_and(|c| c.len() > 128) {
        return Err(invalid("clientState must be at most 128 characters"));
    }
    let certificate = if req.include_resource_data {
        let (Some(cert), Some(id)) = (&req.encryption_certificate, &req.encryption_certificate_id)
        else {
            return Err(invalid("encryptionCertificate and encryptionCertificateId are required when includeResourceData is true"));
        };
        Some(EncryptionCertificate::parse(cert, id).map_err(invalid)?)
    } else {
        None
    };
    let now = sim.graph.now_ms();
    let expiration_ms = check_expiry(&expiration, now, lifecycle_url.is_some())?;
    admit_write(sim, caller)?;
    check_quota(sim, caller, &watched, now)?;
    // Both URLs are validated, twice if they are the same (as Graph does).
    handshake(sim, &notification_url, "notificationUrl").await?;
    if let Some(l) = &lifecycle_url {
        handshake(sim, l, "lifecycleNotificationUrl").await?;
    }
    let sub = Subscription {
        id: uuid::Uuid::new_v4().to_string(),
        app_id: caller.app_id.clone(),
        tenant_id: caller.tenant_id.clone(),
        creator_id: caller.creator_id.clone(),
        resource,
        watched,
        change_type,
        notification_url,
        lifecycle_url,
        expiration_ms,
        client_state,
        include_resource_data: req.include_resource_data,
        encryption_certificate: req
            .encryption_certificate
            .clone()
            .filter(|_| certificate.is_some()),
        certificate,
        created_ms: sim.graph.now_ms(),
        reauthorization_required: false,
        ends_ms: expiration_ms,
    };
    // The handshakes took time: the quota is checked again before the subscription exists.
    check_quota(sim, caller, &sub.watched, sim.graph.now_ms())?;
    let mut out = sub.to_json();
    out["@odata.context"] =
        json!("https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity");
    sim.graph
        .inner
        .lock()
        .subscriptions
        .insert(sub.id.clone(), sub);
    Ok(out)
}

fn check_quota(sim: &Sim, caller: &Caller, watched: &Watched, now: u64) -> Result<(), GraphError> {
    let mut inner = sim.graph.inner.lock();
    inner.purge_expired(now);
    let s = inner.settings.clone();
    let tenant_subs: Vec<&Subscription> = inner
        .subscriptions
        .values()
        .filter(|x| x.tenant_id == caller.tenant_id)
        .collect();
    let quota_error = |m: String| GraphError::new(403, "ExtensionError", m);
    if tenant_subs.len() >= s.per_tenant_quota {
        return Err(quota_error(format!(
            "Operation: Create; Exception: [Status Code: Forbidden; Reason: The tenant has reached its limit of {} subscriptions.]",
            s.per_tenant_quota
        )));
    }
    match watched {
        Watched::UserChats(user) => {
            let n = tenant_subs.iter().filter(|x| x.watched == *watched).count();
            if n >= s.per_user_quota {
                return Err(quota_error(format!(
                    "Operation: Create; Exception: [Status Code: Forbidden; Reason: User {user} has reached its limit of {} subscriptions for /users/{{id}}/chats/getAllMessages.]",
                    s.per_user_quota
                )));
            }
        }
        _ => {
            let n = tenant_subs
                .iter()
                .filter(|x| x.watched == *watched && x.app_id == caller.app_id)
                .count();
            if n >= s.per_resource_quota {
                return Err(quota_error(format!(
                    "Operation: Create; Exception: [Status Code: Forbidden; Reason: The application has reached its limit of {} subscription(s) for this resource.]",
                    s.per_resource_quota
                )));
            }
        }
    }
    Ok(())
}

fn not_found(id: &str) -> GraphError {
    GraphError::new(
        404,
        "ResourceNotFound",
        format!("The object was not found: subscription {id} does not exist (it may have expired or been removed)."),
    )
}

/// The caller's live subscription `id`, cloned.
fn find(sim: &Sim, caller: &Caller, id: &str) -> Result<Subscription, GraphError> {
    let now = sim.graph.now_ms();
    let mut inner = sim.graph.inner.lock();
    inner.purge_expired(now);
    inner
        .subscriptions
        .get(id)
        .filter(|s| s.app_id == caller.app_id && s.tenant_id == caller.tenant_id)
        .cloned()
        .ok_or_else(|| not_found(id))
}

/// `GET /subscriptions/{id}`.
pub fn get(sim: &Sim, caller: &Caller, id: &str) -> Result<Value, GraphError> {
    let mut out = find(sim, caller, id)?.to_json();
    out["@odata.context"] =
        json!("https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity");
    Ok(out)
}

/// `GET /subscriptions`: this app's subscriptions in the caller's tenant,
/// paged with `@odata.nextLink` (`$skiptoken` = the last id of the page).
pub fn list(
    sim: &Sim,
    caller: &Caller,
    query: &HashMap<String, String>,
    base: &str,
) -> Result<Value, GraphError> {
    let now = sim.graph.now_ms();
    let mut inner = sim.graph.inner.lock();
    inner.purge_expired(now);
    let page = inner.settings.subscriptions_page_size;
    let after = query.get("$skiptoken").cloned();
    let mine: Vec<&Subscription> = inner
        .subscriptions
        .values()
        .filter(|s| s.app_id == caller.app_id && s.tenant_id == caller.tenant_id)
        .filter(|s| after.as_ref().is_none_or(|a| s.id.as_str() > a.as_str()))
        .collect();
    let more = mine.len() > page;
    let value: Vec<Value> = mine.iter().take(page).map(|s| s.to_json()).collect();
    let mut out = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions",
        "value": value,
    });
    if more {
        if let Some(last) = mine.get(page - 1) {
            let mut next = url::Url::parse(base)
                .map_err(|e| GraphError::new(500, "InternalServerError", e.to_string()))?;
            next.query_pairs_mut().append_pair("$skiptoken", &last.id);
            out["@odata.nextLink"] = json!(next.to_string());
        }
    }
    Ok(out)
}

/// `PATCH /subscriptions/{id}`: a new expiry (and/or notificationUrl,
/// encryption certificate); renewing clears a pending reauthorization.
pub async fn update(
    sim: &Arc<Sim>,
    caller: &Caller,
    id: &str,
    body: &[u8],
) -> Result<Value, GraphError> {
    let req: UpdateRequest = serde_json::from_slice(body)
        .map_err(|e| GraphError::new(400, "BadRequest", format!("Invalid request body: {e}")))?;
    let current = find(sim, caller, id)?;
    let now = sim.graph.now_ms();
    let expiration_ms = match &req.expiration_date_time {
        Some(v) => Some(check_expiry(v, now, current.lifecycle_url.is_some())?),
        None => None,
    };
    let certificate = match (&req.encryption_certificate, &req.encryption_certificate_id) {
        (Some(c), Some(i)) => Some((
            c.clone(),
            EncryptionCertificate::parse(c, i).map_err(invalid)?,
        )),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "encryptionCertificate and encryptionCertificateId are updated together",
            ))
        }
    };
    if let Some(u) = &req.notification_url {
        check_url("notificationUrl", u)?;
    }
    admit_write(sim, caller)?;
    if let Some(u) = &req.notification_url {
        if *u != current.notification_url {
            handshake(sim, u, "notificationUrl").await?;
        }
    }
    let mut inner = sim.graph.inner.lock();
    let sub = inner
        .subscriptions
        .get_mut(id)
        .ok_or_else(|| not_found(id))?;
    if let Some(at) = expiration_ms {
        sub.expiration_ms = at;
        sub.ends_ms = at;
        sub.reauthorization_required = false;
    }
    if let Some((text, cert)) = certificate {
        sub.encryption_certificate = Some(text);
        sub.certificate = Some(cert);
    }
    if let Some(u) = req.notification_url {
        sub.notification_url = u;
    }
    let mut out = sub.to_json();
    out["@odata.context"] =
        json!("https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity");
    Ok(out)
}

/// `DELETE /subscriptions/{id}`.
pub fn delete(sim: &Sim, caller: &Caller, id: &str) -> Result<(), GraphError> {
    find(sim, caller, id)?;
    admit_write(sim, caller)?;
    sim.graph.inner.lock().subscriptions.remove(id);
    Ok(())
}

/// `POST /subscriptions/{id}/reauthorize`.
pub fn reauthorize(sim: &Sim, caller: &Caller, id: &str) -> Result<(), GraphError> {
    find(sim, caller, id)?;
    admit_write(sim, caller)?;
    if let Some(s) = sim.graph.inner.lock().subscriptions.get_mut(id) {
        s.reauthorization_required = false;
    }
    Ok(())
}

/// Every live subscription (all apps and tenants) for `GET /_sim/graph/subscriptions`.
pub fn all(sim: &Sim) -> Value {
    let now = sim.graph.now_ms();
    let mut inner = sim.graph.inner.lock();
    inner.purge_expired(now);
    let list: Vec<Value> = inner
        .subscriptions
        .values()
        .map(|s| {
            let mut v = s.to_json();
            v["tenantId"] = json!(s.tenant_id);
            v["reauthorizationRequired"] = json!(s.reauthorization_required);
            v["createdDateTime"] = json!(crate::time::rfc3339(s.created_ms));
            v["remainingSeconds"] = json!(s.ends_ms.saturating_sub(now) / 1000);
            v
        })
        .collect();
    json!({ "now": crate::time::rfc3339(now), "total": list.len(), "subscriptions": list })
}

/// `POST /_sim/graph/subscriptions/{id}/lifecycle`: `reauthorizationRequired`
/// marks the subscription and notifies; `subscriptionRemoved` deletes it, then notifies.
pub fn lifecycle_event(sim: &Arc<Sim>, id: &str, event: &str) -> Result<Value, String> {
    let now = sim.graph.now_ms();
    let sub = {
        let mut inner = sim.graph.inner.lock();
        inner.purge_expired(now);
        let Some(sub) = inner.subscriptions.get_mut(id) else {
            return Err(format!("no live subscription {id}"));
        };
        match event {
            "reauthorizationRequired" => {
                sub.reauthorization_required = true;
                sub.clone()
            }
            "subscriptionRemoved" => {
                let s = sub.clone();
                inner.subscriptions.remove(id);
                s
            }
            other => {
                return Err(format!(
                    "event must be reauthorizationRequired or subscriptionRemoved (Graph sends no other lifecycle event for Teams resources), got {other:?}"
                ))
            }
        }
    };
    let sent = super::deliver::lifecycle(sim, &sub, event);
    Ok(
        json!({ "subscriptionId": id, "event": event, "sent": sent, "removed": event == "subscriptionRemoved" }),
    )
}

/// `POST /_sim/graph/subscriptions/{id}/expire`: the subscription disappears
/// now, without a lifecycle event (as an expired one does).
pub fn expire_now(sim: &Sim, id: &str) -> bool {
    sim.graph.inner.lock().subscriptions.remove(id).is_some()
}
