//! Installing a Teams app for a user through Graph
//! (<https://learn.microsoft.com/graph/api/userteamwork-post-installedapps>,
//! <https://learn.microsoft.com/graph/api/userscopeteamsappinstallation-get-chat>),
//! linked to the connector side: after an install, create-conversation for
//! that user works and the installation's chat id is a conversation the Bot
//! Connector knows. The sim treats the Teams app id as the bot's app id.
//!
//! POSTs are limited to 30 per second per app per tenant and 300 per second
//! per app across tenants (429 + `Retry-After`), as Graph's Teams throttling
//! limits list them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE;
use base64::Engine as _;
use botfleet_protocol::ChannelAccount;
use serde_json::{json, Value};

use super::routes::{Caller, GraphError};
use super::{admit, Chat};
use crate::state::{Conversation, Sim};

/// One user-scope installation.
#[derive(Debug, Clone)]
pub struct Installation {
    pub id: String,
    pub user_id: String,
    pub app_id: String,
    pub tenant_id: String,
    pub chat_id: String,
    pub created_ms: u64,
}

impl Installation {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "consentedPermissionSet": null,
            "teamsApp": {
                "id": self.app_id,
                "externalId": self.app_id,
                "displayName": null,
                "distributionMethod": "organization",
            },
            "teamsAppDefinition": {
                "id": URL_SAFE.encode(format!("{}##1.0.0", self.app_id)),
                "teamsAppId": self.app_id,
                "version": "1.0.0",
            },
        })
    }
}

/// Installation id of `app_id` for `user_id` (Graph's user-scope ids are
/// base64 of `{user}##{app}`; URL-safe here so they fit in a path).
pub fn installation_id(user_id: &str, app_id: &str) -> String {
    URL_SAFE.encode(format!("{user_id}##{app_id}"))
}

/// The 1:1 chat id of a bot and a user (Teams' `19:{user}_{app}@unq.gbl.spaces` form).
pub fn chat_id(user_id: &str, app_id: &str) -> String {
    format!("19:{user_id}_{app_id}@unq.gbl.spaces")
}

/// `POST /users/{id}/teamwork/installedApps {"teamsApp@odata.bind": ".../appCatalogs/teamsApps/{appId}"}`
/// -> 201 with no body; 409 if installed; 429 + `Retry-After` over the rate.
pub fn install(sim: &Sim, caller: &Caller, user_id: &str, body: &[u8]) -> Result<(), GraphError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| GraphError::new(400, "BadRequest", format!("Invalid request body: {e}")))?;
    let bind = v["teamsApp@odata.bind"].as_str().unwrap_or_default();
    let app_id = bind
        .rsplit_once("/appCatalogs/teamsApps/")
        .map(|(_, id)| id.trim_matches(|c| c == '/' || c == '\'' ))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or_else(|| {
            GraphError::new(
                400,
                "BadRequest",
                "teamsApp@odata.bind must be https://graph.microsoft.com/v1.0/appCatalogs/teamsApps/{appId}",
            )
        })?
        .to_owned();
    let now = Instant::now();
    let sim_now = sim.graph.now_ms();
    let installation = {
        let mut inner = sim.graph.inner.lock();
        let (per_tenant, per_app) = (
            inner.settings.installs_per_sec,
            inner.settings.installs_per_sec_all_tenants,
        );
        let throttled = |wait: Duration, what: &str| {
            GraphError::throttled(
                wait.as_secs().max(1),
                format!("Too many requests: installedApps allows {what}."),
            )
        };
        let w = inner
            .install_windows
            .entry((caller.app_id.clone(), caller.tenant_id.clone()))
            .or_default();
        admit(w, per_tenant, Duration::from_secs(1), now).map_err(|wait| {
            throttled(
                wait,
                &format!("{per_tenant} requests per second per app per tenant"),
            )
        })?;
        let w = inner
            .install_windows_app
            .entry(caller.app_id.clone())
            .or_default();
        admit(w, per_app, Duration::from_secs(1), now).map_err(|wait| {
            throttled(
                wait,
                &format!("{per_app} requests per second per app across tenants"),
            )
        })?;
        let key = (caller.tenant_id.clone(), user_id.to_owned(), app_id.clone());
        if inner.installations.contains_key(&key) {
            return Err(GraphError::new(
                409,
                "Conflict",
                "App is already installed for this user.",
            ));
        }
        let inst = Installation {
            id: installation_id(user_id, &app_id),
            user_id: user_id.to_owned(),
            app_id: app_id.clone(),
            tenant_id: caller.tenant_id.clone(),
            chat_id: chat_id(user_id, &app_id),
            created_ms: sim_now,
        };
        inner.installations.insert(key, inst.clone());
        let chat = inner
            .chats
            .entry(inst.chat_id.clone())
            .or_insert_with(|| Chat {
                tenant_id: inst.tenant_id.clone(),
                ..Chat::default()
            });
        chat.members.insert(user_id.to_owned());
        chat.apps.insert(app_id.clone());
        inst
    };
    // The connector side: the user now has the app (create-conversation
    // works for them) and the 1:1 chat is a conversation the bot can post to.
    sim.install(
        &installation.app_id,
        &installation.tenant_id,
        vec![user_id.to_owned()],
    );
    let member = ChannelAccount {
        aad_object_id: Some(user_id.to_owned()),
        role: Some("user".into()),
        ..ChannelAccount::new(user_id)
    };
    sim.register_conversations(vec![Conversation {
        id: installation.chat_id.clone(),
        tenant_id: Some(installation.tenant_id.clone()),
        members: vec![member],
        app_ids: vec![installation.app_id.clone()],
    }]);
    Ok(())
}

fn not_found(what: &str) -> GraphError {
    GraphError::new(404, "NotFound", format!("{what} was not found."))
}

fn find(
    sim: &Sim,
    caller: &Caller,
    user_id: &str,
    installation: &str,
) -> Result<Installation, GraphError> {
    let inner = sim.graph.inner.lock();
    inner
        .installations
        .values()
        .find(|i| i.id == installation && i.user_id == user_id && i.tenant_id == caller.tenant_id)
        .cloned()
        .ok_or_else(|| not_found(&format!("Installation {installation} of user {user_id}")))
}

/// `GET /users/{id}/teamwork/installedApps` (`$filter=teamsApp/id eq '{id}'`
/// or `teamsApp/externalId eq '{id}'` supported; `$expand` ignored: the app is always included).
pub fn list(
    sim: &Sim,
    caller: &Caller,
    user_id: &str,
    query: &HashMap<String, String>,
) -> Result<Value, GraphError> {
    let wanted = match query.get("$filter") {
        None => None,
        Some(f) => {
            let parts: Vec<&str> = f.split_whitespace().collect();
            match parts.as_slice() {
                [field, "eq", value] if matches!(*field, "teamsApp/id" | "teamsApp/externalId") => {
                    Some(value.trim_matches('\'').to_owned())
                }
                _ => {
                    return Err(GraphError::new(
                        400,
                        "BadRequest",
                        format!("$filter '{f}' is not supported (teamsApp/id eq '...' or teamsApp/externalId eq '...')"),
                    ))
                }
            }
        }
    };
    let inner = sim.graph.inner.lock();
    let mut list: Vec<&Installation> = inner
        .installations
        .values()
        .filter(|i| i.user_id == user_id && i.tenant_id == caller.tenant_id)
        .filter(|i| wanted.as_ref().is_none_or(|w| *w == i.app_id))
        .collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(json!({
        "@odata.context": format!("https://graph.microsoft.com/v1.0/$metadata#users('{user_id}')/teamwork/installedApps"),
        "value": list.iter().map(|i| i.to_json()).collect::<Vec<_>>(),
    }))
}

/// `GET /users/{id}/teamwork/installedApps/{installationId}`.
pub fn get(
    sim: &Sim,
    caller: &Caller,
    user_id: &str,
    installation: &str,
) -> Result<Value, GraphError> {
    Ok(find(sim, caller, user_id, installation)?.to_json())
}

/// `GET /users/{id}/teamwork/installedApps/{installationId}/chat` -> the 1:1 chat.
pub fn chat(
    sim: &Sim,
    caller: &Caller,
    user_id: &str,
    installation: &str,
) -> Result<Value, GraphError> {
    let i = find(sim, caller, user_id, installation)?;
    let created = crate::time::rfc3339(i.created_ms);
    Ok(json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#chats/$entity",
        "id": i.chat_id,
        "topic": null,
        "createdDateTime": created,
        "lastUpdatedDateTime": created,
        "chatType": "oneOnOne",
        "webUrl": null,
        "tenantId": i.tenant_id,
    }))
}

/// `DELETE /users/{id}/teamwork/installedApps/{installationId}`: uninstalls;
/// the connector refuses new 1:1 conversations with the user again.
pub fn uninstall(
    sim: &Sim,
    caller: &Caller,
    user_id: &str,
    installation: &str,
) -> Result<(), GraphError> {
    let i = find(sim, caller, user_id, installation)?;
    sim.graph.inner.lock().installations.remove(&(
        i.tenant_id.clone(),
        i.user_id.clone(),
        i.app_id.clone(),
    ));
    let mut inner = sim.inner.lock();
    if let Some(users) = inner
        .installations
        .get_mut(&i.app_id)
        .and_then(|t| t.get_mut(&i.tenant_id))
    {
        users.remove(&i.user_id);
    }
    Ok(())
}
