//! `POST /api/messages` and `POST /api/messages/{bot}`: the door Teams knocks on.
//!
//! Cheap checks first (size, content type, JSON shape), then the runtime's
//! ingress actors validate the token and policy. A request that fails any check
//! gets a problem+json answer and reaches no actor and no store.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use botfleet_protocol::Activity;
use botfleet_runtime::{HandlerOutcome, Inbound, IngressError, Processed, TurnError, TurnOutcome};
use futures::StreamExt;

use crate::problem::{self, Problem};
use crate::AppState;

pub async fn messages(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    handle(req, payload, state, None).await
}

pub async fn bot_messages(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    bot: web::Path<String>,
) -> HttpResponse {
    handle(req, payload, state, Some(bot.into_inner())).await
}

async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    route_bot: Option<String>,
) -> HttpResponse {
    match accept(&req, payload, &state, route_bot).await {
        Ok(resp) => resp,
        Err(problem) => {
            state.count_rejection(problem.check());
            // Debug, not warn: rejections are what an attacker controls the rate of.
            tracing::debug!(
                check = problem.check(),
                status = problem.status(),
                detail = %problem.detail,
                "activity refused"
            );
            problem.response()
        }
    }
}

async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, Problem> {
    let too_large = || {
        Problem::new(
            problem::BODY_TOO_LARGE,
            format!(
                "the request body exceeds the limit of {limit} bytes (server.body_limit_bytes)"
            ),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(4096).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            Problem::new(
                problem::BODY_UNREADABLE,
                format!("the request body could not be read: {e}"),
            )
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn check_content_type(req: &HttpRequest) -> Result<(), Problem> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(Problem::new(
            problem::UNSUPPORTED_MEDIA_TYPE,
            format!("activities must be sent as application/json, not `{ct}`"),
        ))
    }
}

fn parse_activity(body: &[u8]) -> Result<Activity, Problem> {
    let activity: Activity = serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => Problem::new(
                problem::INVALID_ACTIVITY,
                format!("the body is JSON but not an activity: {e}"),
            ),
            _ => Problem::new(
                problem::MALFORMED_JSON,
                format!("the body is not valid JSON: {e}"),
            ),
        }
    })?;
    activity
        .check_inbound_shape()
        .map_err(|e| Problem::new(problem::INVALID_ACTIVITY, e.to_string()))?;
    Ok(activity)
}

async fn accept(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    route_bot: Option<String>,
) -> Result<HttpResponse, Problem> {
    // Content type before the body is read: no reason to buffer what we refuse.
    check_content_type(req)?;
    let body = read_body(req, payload, state.settings.server.body_limit_bytes).await?;
    let activity = parse_activity(&body)?;
    let route_bot = match route_bot {
        Some(id) => Some(state.runtime.bots().get(&id).cloned().ok_or_else(|| {
            Problem::new(
                problem::AUDIENCE,
                format!("no bot `{id}` is registered here"),
            )
        })?),
        None => None,
    };
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let is_invoke = activity.activity_type() == botfleet_protocol::ActivityType::Invoke;
    let processed = state
        .runtime
        .process(
            Inbound {
                authorization,
                activity,
                route_bot,
            },
            state.settings.handler_deadline(),
        )
        .await
        .map_err(|e| match e {
            IngressError::Auth(e) => Problem::new(auth_problem(&e), e.to_string()),
            IngressError::UnknownBot(id) => Problem::new(
                problem::AUDIENCE,
                format!("no bot `{id}` is registered here"),
            ),
            IngressError::Unavailable => Problem::new(
                problem::UNAVAILABLE,
                "botfleet is shutting down or not started",
            ),
        })?;
    match processed {
        Processed::Finished(Ok(TurnOutcome::Handled(HandlerOutcome::Invoke(resp)))) => {
            let status = actix_web::http::StatusCode::from_u16(resp.status)
                .unwrap_or(actix_web::http::StatusCode::OK);
            Ok(match resp.body {
                Some(body) => HttpResponse::build(status).json(body),
                None => HttpResponse::build(status).finish(),
            })
        }
        Processed::Finished(Ok(_)) => Ok(HttpResponse::Ok().finish()),
        Processed::StillRunning if is_invoke => Err(Problem::new(
            problem::HANDLER_DEADLINE,
            "the bot did not answer the invoke within server.handler_deadline_ms",
        )),
        Processed::StillRunning => Ok(HttpResponse::Accepted().finish()),
        // docs/turns.md: a 5xx only when Teams' resend is the cure and cannot
        // duplicate a reply (runtime::TurnError::resend_helps).
        Processed::Finished(Err(e)) => match e {
            TurnError::Store(_) => Err(Problem::new(problem::STORE_UNAVAILABLE, e.to_string())),
            TurnError::Busy => Err(Problem::new(problem::BUSY, e.to_string())),
            TurnError::TenantQuota(_) => Err(Problem::new(problem::TENANT_QUOTA, e.to_string())),
            // Bot logic never ran (its claim was given back), or an invoke, whose
            // answer is synchronous, failed.
            e if e.resend_helps() || is_invoke => Err(Problem::new(
                problem::HANDLER_FAILED,
                "the bot handler failed; botfleet's log has the reason",
            )),
            // Taken in and its bot logic ran: the claim stays, a resend would only
            // repeat it. The outcome is in the log and on /metrics.
            TurnError::Handler(_) | TurnError::HandlerPanicked => Ok(HttpResponse::Ok().finish()),
        },
    }
}

/// The problem row of each validation failure. Exhaustive on purpose: a new
/// [`botfleet_auth::inbound::InboundError`] variant does not compile until it has
/// a row in the problem table.
fn auth_problem(e: &botfleet_auth::inbound::InboundError) -> problem::ProblemType {
    use botfleet_auth::inbound::InboundError as E;
    match e {
        E::MissingToken => problem::MISSING_TOKEN,
        E::MalformedToken(_) => problem::MALFORMED_TOKEN,
        E::UnsupportedAlgorithm(_) => problem::UNSUPPORTED_ALGORITHM,
        E::KeysUnavailable(_) => problem::KEYS_UNAVAILABLE,
        E::UnknownKey { .. } => problem::UNKNOWN_KEY,
        E::Signature => problem::SIGNATURE,
        E::Issuer { .. } => problem::ISSUER,
        E::Audience(_) => problem::AUDIENCE,
        E::Expired => problem::EXPIRED,
        E::MissingExpiry => problem::MISSING_EXPIRY,
        E::NotYetValid => problem::NOT_YET_VALID,
        E::Endorsement(_) => problem::ENDORSEMENT,
        E::ServiceUrlClaim(_) => problem::SERVICE_URL_CLAIM,
        E::ServiceUrlHost(_) => problem::SERVICE_URL_HOST,
        E::TenantNotAllowed(_) => problem::TENANT_NOT_ALLOWED,
    }
}
