//! Graph change-notification subscriptions as resources
//! (docs/graph.md): `GET|POST /admin/v1/graph/subscriptions`,
//! `GET|DELETE /admin/v1/graph/subscriptions/{id}`. A subscription acts as its
//! bot, so the bot roles and scopes apply (read: `bots` read roles; create and
//! delete: `admin`, `operator`). Subscriptions of the configuration file are
//! listed and read here, never changed. The `clientState` secret and a
//! webhook action's secret are never returned.

use std::sync::Arc;

use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use botfleet_auth::Secret;
use botfleet_graph::model::Source;
use botfleet_graph::service::StateView;
use botfleet_graph::{GraphService, SubscriptionSpec};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{authorize, Action};
use super::error::AdminError;
use super::{from_value, no_query, read_json, AdminState};

/// One subscription: its definition (secrets redacted) and its state.
#[derive(Debug, Serialize, ToSchema)]
pub struct Subscription {
    /// The definition as given (`id`, `bot`, `tenant_id`, `resource`,
    /// `change_types`, `encryption`, `action`, `credential`, `source`); the
    /// webhook secret reads `[redacted]`.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    /// Graph subscription id, expiry, last renewal, last notification, last
    /// seen message time, last resync, last error (RFC 3339 times).
    #[schema(value_type = Object)]
    pub state: serde_json::Value,
}

/// `GET /graph/subscriptions` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionList {
    pub items: Vec<Subscription>,
}

fn service(state: &AdminState) -> Result<Arc<GraphService>, AdminError> {
    state.graph.clone().ok_or(AdminError::StoreUnavailable)
}

async fn view(graph: &GraphService, spec: &SubscriptionSpec) -> Result<Subscription, AdminError> {
    let st = graph
        .store()
        .get_state(&spec.id)
        .await
        .map_err(|_| AdminError::StoreUnavailable)?;
    Ok(Subscription {
        spec: serde_json::to_value(spec).unwrap_or_default(),
        state: serde_json::to_value(StateView::of(&st)).unwrap_or_default(),
    })
}

async fn load(graph: &GraphService, id: &str) -> Result<Option<SubscriptionSpec>, AdminError> {
    let stored = graph
        .store()
        .get_subscription(id)
        .await
        .map_err(|_| AdminError::StoreUnavailable)?;
    Ok(stored.and_then(|s| serde_json::from_str(&s.spec_json).ok()))
}

/// Every subscription this key's bots own, with its state.
#[utoipa::path(
    tag = "graph",
    operation_id = "listGraphSubscriptions",
    responses((status = 200, description = "The subscriptions.", body = SubscriptionList)),
    security(("api_key" = []))
)]
#[get("/graph/subscriptions")]
pub async fn list_subscriptions(
    req: HttpRequest,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let call = authorize(&req, &state, Action::GraphSubscriptionsList, None, false).await?;
    no_query(&req)?;
    let graph = service(&state)?;
    let all = graph
        .store()
        .list_subscriptions()
        .await
        .map_err(|_| AdminError::StoreUnavailable)?;
    let mut items = Vec::new();
    for s in all {
        let Ok(spec) = serde_json::from_str::<SubscriptionSpec>(&s.spec_json) else {
            continue;
        };
        if call.principal.reaches(&spec.bot) {
            items.push(view(&graph, &spec).await?);
        }
    }
    Ok(HttpResponse::Ok().json(SubscriptionList { items }))
}

/// Creates a subscription: botfleet generates its clientState, creates it
/// at Graph (the validation handshake reaches the public endpoint) and keeps
/// it alive. Encryption files must lie in `admin.credential_dirs`.
#[utoipa::path(
    tag = "graph",
    operation_id = "createGraphSubscription",
    request_body(content = Object, description = "`{id, bot, tenant_id, resource, change_types?, encryption?: {certificate_file, key_file, previous_key_file?, certificate_id?}, action: {kind: webhook|job|record, ...}, credential?: {kind: app} | {kind: delegated, name}}`"),
    responses((status = 201, description = "Created; Graph is subscribed within seconds (see `state`).", body = Subscription)),
    security(("api_key" = []))
)]
#[post("/graph/subscriptions")]
pub async fn create_subscription(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let body = read_json(&req, payload, &["application/json"]).await?;
    let bot = body
        .get("bot")
        .and_then(|b| b.as_str())
        .unwrap_or("")
        .to_owned();
    let call = authorize(
        &req,
        &state,
        Action::GraphSubscriptionsCreate,
        Some(&bot),
        true,
    )
    .await?;
    let result = async {
        no_query(&req)?;
        let graph = service(&state)?;
        let mut spec: SubscriptionSpec = from_value(body)?;
        spec.source = Source::Api;
        spec.check().map_err(|(f, p)| AdminError::field(f, p))?;
        if let Some(name) = spec.credential.delegated() {
            let c = state.graph_auth.as_ref().and_then(|a| a.credential(name));
            crate::graph::credential_matches(&spec, c)
                .map_err(|p| AdminError::field("credential.name", p))?;
        }
        if let Some(e) = &spec.encryption {
            for (k, p) in [
                ("encryption.certificate_file", Some(&e.certificate_file)),
                ("encryption.key_file", Some(&e.key_file)),
                ("encryption.previous_key_file", e.previous_key_file.as_ref()),
            ] {
                let Some(p) = p else { continue };
                if !state.credential_dirs.iter().any(|d| p.starts_with(d)) {
                    return Err(AdminError::field(
                        k,
                        "must be a file inside one of admin.credential_dirs",
                    ));
                }
            }
            botfleet_graph::crypto::KeyRing::from_files(
                &e.key_file,
                e.previous_key_file.as_deref(),
            )
            .map_err(|err| AdminError::field("encryption.key_file", err.to_string()))?;
            botfleet_graph::crypto::certificate_for_graph(&e.certificate_file)
                .map_err(|err| AdminError::field("encryption.certificate_file", err.to_string()))?;
        }
        if load(&graph, &spec.id).await?.is_some() {
            return Err(AdminError::GraphSubscriptionConflict(spec.id.clone()));
        }
        let json =
            Secret::revealing(|| serde_json::to_string(&spec)).map_err(|_| AdminError::Internal)?;
        graph
            .store()
            .put_subscription(&spec.id, &json)
            .await
            .map_err(|_| AdminError::StoreUnavailable)?;
        let _ = graph.sync().await;
        view(&graph, &spec).await
    }
    .await;
    let created = call.finish(&state, result).await?;
    Ok(HttpResponse::Created().json(created))
}

/// One subscription and its state.
#[utoipa::path(
    tag = "graph",
    operation_id = "getGraphSubscription",
    params(("id" = String, Path, description = "The subscription id.")),
    responses((status = 200, description = "The subscription.", body = Subscription)),
    security(("api_key" = []))
)]
#[get("/graph/subscriptions/{id}")]
pub async fn get_subscription(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let id = path.into_inner();
    let call = authorize(
        &req,
        &state,
        Action::GraphSubscriptionsGet,
        Some(&id),
        false,
    )
    .await?;
    no_query(&req)?;
    let graph = service(&state)?;
    match load(&graph, &id).await? {
        Some(spec) if call.principal.reaches(&spec.bot) => {
            Ok(HttpResponse::Ok().json(view(&graph, &spec).await?))
        }
        _ => Err(AdminError::GraphSubscriptionNotFound(id)),
    }
}

/// Deletes a subscription made through the API (at Graph too).
#[utoipa::path(
    tag = "graph",
    operation_id = "deleteGraphSubscription",
    params(("id" = String, Path, description = "The subscription id.")),
    responses((status = 204, description = "Deleted.")),
    security(("api_key" = []))
)]
#[delete("/graph/subscriptions/{id}")]
pub async fn delete_subscription(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let id = path.into_inner();
    let call = authorize(
        &req,
        &state,
        Action::GraphSubscriptionsDelete,
        Some(&id),
        false,
    )
    .await?;
    let result = async {
        no_query(&req)?;
        let graph = service(&state)?;
        let spec = match load(&graph, &id).await? {
            Some(s) if call.principal.reaches(&s.bot) => s,
            _ => return Err(AdminError::GraphSubscriptionNotFound(id.clone())),
        };
        if spec.source == Source::Configuration {
            return Err(AdminError::Forbidden(format!(
                "Graph subscription `{id}` is defined in the configuration file: remove it there and restart"
            )));
        }
        graph
            .delete(&id)
            .await
            .map_err(|_| AdminError::StoreUnavailable)?;
        let _ = graph.sync().await;
        Ok(())
    }
    .await;
    call.finish(&state, result).await?;
    Ok(HttpResponse::NoContent().finish())
}
