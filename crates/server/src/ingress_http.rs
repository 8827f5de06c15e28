//! `POST /api/messages` and `POST /api/messages/{bot}`: the door Teams knocks on.
//!
//! Order, cheapest first, so that a caller without a valid token learns nothing:
//!
//! 1. method (405 with `Allow: POST`), content type, body size: nothing read or
//!    parsed yet;
//! 2. a path naming no registered bot: the token alone is checked and the answer
//!    is the 401 a registered bot's path gives for the same token (`audience` for a
//!    valid token of another bot), never a 404 that lists the bots;
//! 3. the body is parsed; if it is not an activity, the token alone is checked
//!    first (signature, issuer, lifetime, audience), so only a caller with a valid
//!    token is told what is wrong with its body;
//! 4. the runtime's ingress actors validate token and activity together (cached
//!    verification: no second RSA) and route it.
//!
//! A refused request gets a problem+json answer from the one table
//! ([`crate::problem`]), reaches no actor and no store, is counted by check on
//! `/metrics`, and is logged at info by [`RefusalLog`]: one line per check per
//! 10 s at most, so a flood cannot fill the disk.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use botfleet_auth::inbound::{BotResolver, InboundError, TokenClaimsForLog, TokenRoute};
use botfleet_protocol::Activity;
use botfleet_runtime::{HandlerOutcome, Inbound, IngressError, Processed, TurnError, TurnOutcome};
use futures::StreamExt;

use crate::problem::{self, Problem};
use crate::AppState;

/// Deepest nesting of arrays and objects accepted in a body. Teams activities
/// nest about ten levels, Adaptive Card payloads in `value` or `attachments`
/// more; the limit leaves room for those and stays under serde_json's own
/// recursion limit (128), which would otherwise answer first, as a syntax error.
pub const MAX_JSON_DEPTH: usize = 100;

/// The messaging routes: `POST` only; any other method answers 405 with
/// `Allow: POST` (RFC 9110 section 15.5.6).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/messages")
            .route(web::post().to(messages))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/messages/{bot}")
            .route(web::post().to(bot_messages))
            .default_service(web::to(method_not_allowed)),
    );
}

pub async fn messages(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    traced(req, payload, state, None).await
}

/// The bot id is read from the match info rather than a `web::Path` extractor,
/// whose failures would answer outside the problem table.
pub async fn bot_messages(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let bot = req.match_info().get("bot").unwrap_or_default().to_owned();
    traced(req, payload, state, Some(bot)).await
}

async fn method_not_allowed(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    botfleet_telemetry::metrics::activity_received();
    let problem = Problem::new(
        problem::METHOD_NOT_ALLOWED,
        "the messaging endpoint accepts POST only",
    )
    .with_header(header::ALLOW, "POST");
    refuse(&req, &state, problem, &Seen::default())
}

/// One request in its HTTP server span (docs/observability.md, "Traces"): a
/// child of the upstream proxy's W3C `traceparent` when it sent one, the
/// parent of every span of the turn (validation, tenant and conversation
/// actors, handler, connector calls, webhook). Attributes: route, status,
/// the check that refused it, bot, tenant, activity type; never the body or
/// the token.
async fn traced(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    route_bot: Option<String>,
) -> HttpResponse {
    use tracing::Instrument;
    let route = if route_bot.is_some() {
        "/api/messages/{bot}"
    } else {
        "/api/messages"
    };
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format_args!("POST {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = "POST",
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        botfleet.check = tracing::field::Empty,
        botfleet.bot_id = tracing::field::Empty,
        botfleet.tenant_id = tracing::field::Empty,
        botfleet.activity_type = tracing::field::Empty,
    );
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    botfleet_telemetry::trace::set_remote_parent(
        &span,
        header("traceparent"),
        header("tracestate"),
    );
    let resp = handle(req, payload, state, route_bot)
        .instrument(span.clone())
        .await;
    let status = resp.status().as_u16();
    // As i64: tracing-opentelemetry exports u16/u64 fields as strings, and
    // the semantic conventions type the status code as an int.
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
    resp
}

/// What was learnt about a request before it was refused, for the log line.
#[derive(Debug, Default)]
struct Seen {
    /// The registered bot the path names.
    bot: Option<String>,
    tenant: Option<String>,
}

async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    route_bot: Option<String>,
) -> HttpResponse {
    let started = Instant::now();
    botfleet_telemetry::metrics::activity_received();
    let mut seen = Seen::default();
    let resp = match accept(&req, payload, &state, route_bot, &mut seen).await {
        Ok(resp) => resp,
        Err(problem) => refuse(&req, &state, problem, &seen),
    };
    botfleet_telemetry::metrics::ingress_request(
        started.elapsed().as_secs_f64(),
        resp.status().as_u16(),
    );
    resp
}

/// Counts (exactly), logs (rate-limited) and answers one refusal: the one
/// place both come from.
fn refuse(req: &HttpRequest, state: &AppState, problem: Problem, seen: &Seen) -> HttpResponse {
    tracing::Span::current().record("botfleet.check", problem.check());
    botfleet_telemetry::metrics::activity_rejected(problem.check());
    if let Some(suppressed) = refusal_log().admit(problem.check(), Instant::now()) {
        log_refusal(req, state, &problem, seen, suppressed);
    }
    problem.response()
}

/// One info line: the check, the bot, the tenant, the token's unverified `aud`
/// and `iss` (sanitised), never the token. The detail is left out for body
/// problems, whose serde message may quote the body.
fn log_refusal(
    req: &HttpRequest,
    state: &AppState,
    problem: &Problem,
    seen: &Seen,
    suppressed: u64,
) {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let claims = TokenClaimsForLog::from_authorization(authorization);
    let bot = seen.bot.clone().or_else(|| {
        claims
            .aud
            .iter()
            .find_map(|aud| state.runtime.bots().by_app(aud))
            .map(|b| b.id.to_string())
    });
    let body_problem = matches!(
        problem.check(),
        "malformed_json" | "json_too_deep" | "invalid_activity"
    );
    // Values from the request (tenant, serviceUrl host in a policy detail) are
    // cut and stripped of control characters: one refusal, one log line.
    let clean = |s: &str, max: usize| -> String {
        s.chars().filter(|c| !c.is_control()).take(max).collect()
    };
    let detail = if body_problem {
        String::new()
    } else {
        clean(&problem.detail, 300)
    };
    let path = clean(req.path(), 96);
    let tenant = clean(seen.tenant.as_deref().unwrap_or("-"), 64);
    tracing::info!(
        check = %problem.check(),
        status = problem.status(),
        path = %path,
        bot = %bot.as_deref().unwrap_or("-"),
        tenant = %tenant,
        aud = %if claims.aud.is_empty() { "-".to_owned() } else { claims.aud.join(",") },
        iss = %claims.iss.as_deref().unwrap_or("-"),
        suppressed_since_last_line = suppressed,
        detail = %detail,
        "activity refused"
    );
}

/// Rate limit of the refusal log: at most one line per check per window. A
/// suppressed refusal is counted and the count is written in the next line of
/// that check (`suppressed_since_last_line`); `/metrics` counts every refusal.
#[derive(Debug)]
pub struct RefusalLog {
    window: Duration,
    checks: Mutex<HashMap<&'static str, CheckWindow>>,
}

#[derive(Debug, Clone, Copy)]
struct CheckWindow {
    logged_at: Instant,
    suppressed: u64,
}

impl RefusalLog {
    /// Least time between two lines of one check.
    pub const WINDOW: Duration = Duration::from_secs(10);

    pub fn new(window: Duration) -> Self {
        Self {
            window,
            checks: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)` when a line is due for `check` at `now`: `n` refusals of it were
    /// suppressed since its last line. `None` when this one is suppressed. The
    /// map has one entry per problem type at most (`check` comes from the table).
    pub fn admit(&self, check: &'static str, now: Instant) -> Option<u64> {
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        match checks.get_mut(check) {
            Some(w) if now.saturating_duration_since(w.logged_at) < self.window => {
                w.suppressed += 1;
                None
            }
            Some(w) => {
                let n = w.suppressed;
                *w = CheckWindow {
                    logged_at: now,
                    suppressed: 0,
                };
                Some(n)
            }
            None => {
                checks.insert(
                    check,
                    CheckWindow {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

/// One limiter per process: the log it protects is the process's.
fn refusal_log() -> &'static RefusalLog {
    static LOG: OnceLock<RefusalLog> = OnceLock::new();
    LOG.get_or_init(|| RefusalLog::new(RefusalLog::WINDOW))
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
        let shown: String = ct.chars().filter(|c| !c.is_control()).take(64).collect();
        Err(Problem::new(
            problem::UNSUPPORTED_MEDIA_TYPE,
            format!("activities must be sent as application/json, not `{shown}`"),
        ))
    }
}

/// True when `body` nests arrays/objects deeper than `max` (outside strings).
/// One pass over the bytes, no allocation; on broken JSON the answer may be
/// either, and the parser then reports what is broken.
pub fn json_depth_exceeds(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The body as an activity botfleet can handle, or the body problem
/// (`json_too_deep`, `malformed_json`, `invalid_activity`).
pub fn parse_activity(body: &[u8]) -> Result<Activity, Problem> {
    if json_depth_exceeds(body, MAX_JSON_DEPTH) {
        return Err(Problem::new(
            problem::JSON_TOO_DEEP,
            format!("the body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep"),
        ));
    }
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
    seen: &mut Seen,
) -> Result<HttpResponse, Problem> {
    // Content type before the body is read: no reason to buffer what we refuse.
    check_content_type(req)?;
    let body = read_body(req, payload, state.settings.server.body_limit_bytes).await?;
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let validator = state.runtime.validator();
    let bots = state.runtime.bots();
    let resolver: &dyn BotResolver = &**bots;
    let route_bot = match route_bot {
        Some(id) => match bots.get(&id) {
            Some(bot) => {
                seen.bot = Some(bot.id.to_string());
                tracing::Span::current().record("botfleet.bot_id", &*bot.id);
                Some(bot.clone())
            }
            None => {
                // Answer as a registered bot's path would: the token decides.
                let checked = validator
                    .check_token(
                        authorization.as_deref(),
                        TokenRoute::Unregistered(&id),
                        resolver,
                    )
                    .await;
                return Err(match checked {
                    Err(e) => auth_refusal(&e),
                    Ok(()) => Problem::new(problem::AUDIENCE, "no bot is registered at this path"),
                });
            }
        },
        None => None,
    };
    let activity = match parse_activity(&body) {
        Ok(activity) => activity,
        Err(body_problem) => {
            // Describe the body only to a caller with a valid token.
            let route = match &route_bot {
                Some(bot) => TokenRoute::Bot(&bot.trust),
                None => TokenRoute::Any,
            };
            validator
                .check_token(authorization.as_deref(), route, resolver)
                .await
                .map_err(|e| auth_refusal(&e))?;
            return Err(body_problem);
        }
    };
    seen.tenant = activity.tenant_id().map(str::to_owned);
    let span = tracing::Span::current();
    span.record("botfleet.activity_type", activity.activity_type().as_str());
    if let Some(tenant) = &seen.tenant {
        span.record("botfleet.tenant_id", tenant.as_str());
    }
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
            IngressError::Auth(e) => auth_refusal(&e),
            // The bot vanished between validation and routing: to the caller,
            // its token no longer names a registered bot.
            IngressError::UnknownBot(_) => Problem::new(
                problem::AUDIENCE,
                "the token audience is not the app id of a registered bot",
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
            // The store's own error (a Redis address, its wording) stays in
            // botfleet's log: this answer goes to any caller with a token.
            TurnError::Store(_) => Err(Problem::new(
                problem::STORE_UNAVAILABLE,
                "the conversation store did not answer; botfleet's log has the reason",
            )),
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

/// The answer to a validation failure. 401s for a token that was sent say
/// `error="invalid_token"` (RFC 6750 section 3.1); a missing token gets the bare
/// `Bearer` challenge.
fn auth_refusal(e: &InboundError) -> Problem {
    let p = Problem::new(auth_problem(e), e.to_string());
    if p.status() == 401 && !matches!(e, InboundError::MissingToken) {
        p.with_header(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")
    } else {
        p
    }
}

/// The problem row of each validation failure. Exhaustive on purpose: a new
/// [`InboundError`] variant does not compile until it has a row in the table.
fn auth_problem(e: &InboundError) -> problem::ProblemType {
    use InboundError as E;
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
        E::Endorsement(_) | E::NoEndorsements { .. } => problem::ENDORSEMENT,
        E::ServiceUrlClaim(_) => problem::SERVICE_URL_CLAIM,
        E::ServiceUrlHost(_) => problem::SERVICE_URL_HOST,
        E::TenantNotAllowed(_) => problem::TENANT_NOT_ALLOWED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_rows_agree_with_the_auth_crate() {
        use botfleet_auth::PolicyError;
        let all = [
            InboundError::MissingToken,
            InboundError::MalformedToken("x"),
            InboundError::UnsupportedAlgorithm("HS256".into()),
            InboundError::KeysUnavailable("x".into()),
            InboundError::UnknownKey {
                kid: "k".into(),
                refresh: "x".into(),
            },
            InboundError::Signature,
            InboundError::Issuer {
                expected: "x".into(),
            },
            InboundError::Audience("x".into()),
            InboundError::Expired,
            InboundError::MissingExpiry,
            InboundError::NotYetValid,
            InboundError::Endorsement("msteams".into()),
            InboundError::NoEndorsements {
                kid: "k".into(),
                cloud: "public".into(),
            },
            InboundError::ServiceUrlClaim("x"),
            InboundError::ServiceUrlHost(PolicyError::InvalidServiceUrl("x".into())),
            InboundError::TenantNotAllowed(PolicyError::TenantMissing),
        ];
        for e in all {
            let row = auth_problem(&e);
            assert_eq!((row.name, row.status), (e.check(), e.status()), "{e:?}");
            assert_eq!(problem::ProblemType::by_name(row.name), Some(row));
        }
    }

    #[test]
    fn refusal_log_writes_one_line_per_check_per_window_and_counts_the_rest() {
        let log = RefusalLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.admit("signature", t0), Some(0));
        for i in 1..1000u64 {
            assert_eq!(log.admit("signature", t0 + Duration::from_millis(i)), None);
        }
        // Another check has its own window.
        assert_eq!(log.admit("expired", t0 + Duration::from_secs(1)), Some(0));
        // The next line of the flooded check reports what it suppressed.
        assert_eq!(
            log.admit("signature", t0 + Duration::from_secs(10)),
            Some(999)
        );
        assert_eq!(log.admit("signature", t0 + Duration::from_secs(11)), None);
        assert_eq!(
            log.admit("signature", t0 + Duration::from_secs(25)),
            Some(1)
        );
    }

    #[test]
    fn depth_scan_ignores_brackets_in_strings() {
        let deep = format!("{}{}", "[".repeat(101), "]".repeat(101));
        assert!(json_depth_exceeds(deep.as_bytes(), 100));
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(!json_depth_exceeds(ok.as_bytes(), 100));
        let quoted = format!(r#"{{"text":"{}\"{}"}}"#, "[".repeat(500), "{".repeat(500));
        assert!(!json_depth_exceeds(quoted.as_bytes(), 100));
        let p = parse_activity(deep.as_bytes()).expect_err("too deep");
        assert_eq!(p.check(), "json_too_deep");
    }
}
