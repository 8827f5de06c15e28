//! The Entra side: the client-credentials token endpoint (secret, certificate
//! and federated assertions) and the managed identity endpoints.
//!
//! Errors mimic Entra's JSON (`error`, `error_description` starting with the
//! AADSTS code, `error_codes`, `timestamp`, `trace_id`, `correlation_id`) so
//! that clients' error handling meets realistic bodies. AADSTS codes are the
//! ones Entra uses for these cases where known; the descriptions are shortened.

use std::collections::HashMap;

use rsa::sha2::Sha256;
use rsa::signature::Verifier;
use serde_json::{json, Value};

use crate::jwt;
use crate::records::TokenRequestRecord;
use crate::state::{
    Bot, Sim, BOTFRAMEWORK_TENANT, BOTFRAMEWORK_TENANT_ID, CLOCK_SKEW_SECS, TOKEN_EXCHANGE_AUDIENCE,
};
use crate::time::{entra_timestamp, now_ms, now_secs, rfc3339};

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// (HTTP status, JSON body).
pub type TokenReply = (u16, Value);

/// An Entra error: (status, `error`, AADSTS number, description).
pub(crate) struct AadError(
    pub(crate) u16,
    pub(crate) &'static str,
    pub(crate) u32,
    pub(crate) String,
);

pub(crate) fn aad_body(e: &AadError) -> Value {
    let AadError(_, error, code, description) = e;
    let ts = entra_timestamp(now_ms());
    let trace = uuid::Uuid::new_v4().to_string();
    let corr = uuid::Uuid::new_v4().to_string();
    json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {description} Trace ID: {trace} Correlation ID: {corr} Timestamp: {ts}"
        ),
        "error_codes": [code],
        "timestamp": ts,
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    })
}

fn down_reply() -> TokenReply {
    let e = AadError(
        503,
        "temporarily_unavailable",
        90033,
        "A transient error has occurred. Please try again. (botfleet-sim: tokenEndpointDown fault)"
            .into(),
    );
    (503, aad_body(&e))
}

struct Attempt<'a> {
    endpoint: &'static str,
    tenant: Option<&'a str>,
    client_id: &'a str,
    credential: &'static str,
    scope: Option<&'a str>,
}

fn record(sim: &Sim, a: &Attempt<'_>, status: u16, error: Option<u32>) {
    let at_ms = now_ms();
    sim.record_token_request(TokenRequestRecord {
        seq: 0,
        at_ms,
        at: rfc3339(at_ms),
        endpoint: a.endpoint,
        tenant: a.tenant.map(str::to_owned),
        client_id: a.client_id.to_owned(),
        credential: a.credential,
        scope: a.scope.map(str::to_owned),
        status,
        error: error.map(|c| format!("AADSTS{c}")),
    });
}

/// `POST /{tenant}/oauth2/v2.0/token` with a form body.
///
/// `token_urls` are the URLs a certificate assertion's `aud` may name (the
/// endpoint as the client addressed it).
pub fn client_credentials(
    sim: &Sim,
    tenant: &str,
    form: &[u8],
    token_urls: &[String],
) -> TokenReply {
    let form: HashMap<String, String> = url::form_urlencoded::parse(form).into_owned().collect();
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let client_id = get("client_id").unwrap_or_default();
    let scope = get("scope");
    let mut attempt = Attempt {
        endpoint: "token",
        tenant: Some(tenant),
        client_id,
        credential: if get("client_assertion").is_some() {
            "assertion"
        } else if get("client_secret").is_some() {
            "secret"
        } else {
            "none"
        },
        scope,
    };
    if sim.token_endpoint_down() {
        record(sim, &attempt, 503, Some(90033));
        return down_reply();
    }
    // The delegated grants (authorization code with PKCE, refresh token) of the Graph side.
    if matches!(
        get("grant_type"),
        Some("authorization_code" | "refresh_token")
    ) {
        attempt.credential = "delegated";
        return match crate::graph::delegated::grant(sim, tenant, &get, token_urls) {
            Ok(body) => {
                record(sim, &attempt, 200, None);
                (200, body)
            }
            Err(e) => {
                record(sim, &attempt, e.0, Some(e.2));
                (e.0, aad_body(&e))
            }
        };
    }
    let result = issue(sim, tenant, &get, token_urls, &mut attempt);
    match result {
        Ok((token, lifetime)) => {
            record(sim, &attempt, 200, None);
            (
                200,
                json!({
                    "token_type": "Bearer",
                    "expires_in": lifetime,
                    "ext_expires_in": lifetime,
                    "access_token": token,
                }),
            )
        }
        Err(e) => {
            record(sim, &attempt, e.0, Some(e.2));
            (e.0, aad_body(&e))
        }
    }
}

pub(crate) fn missing(param: &str) -> AadError {
    AadError(
        400,
        "invalid_request",
        900144,
        format!("The request body must contain the following parameter: '{param}'."),
    )
}

fn issue<'a>(
    sim: &Sim,
    tenant: &str,
    get: &impl Fn(&str) -> Option<&'a str>,
    token_urls: &[String],
    attempt: &mut Attempt<'_>,
) -> Result<(String, u64), AadError> {
    match get("grant_type") {
        None => return Err(missing("grant_type")),
        Some("client_credentials") => {}
        Some(other) => {
            return Err(AadError(
                400,
                "unsupported_grant_type",
                70003,
                format!("The app requested an unsupported grant type '{other}' (botfleet-sim implements client_credentials only)."),
            ))
        }
    }
    let client_id = get("client_id").ok_or_else(|| missing("client_id"))?;
    let scope = get("scope").ok_or_else(|| missing("scope"))?;
    let resource = scope
        .strip_suffix("/.default")
        .filter(|r| !r.is_empty() && !scope.contains(char::is_whitespace))
        .ok_or_else(|| {
            AadError(
                400,
                "invalid_scope",
                1002012,
                format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
            )
        })?;
    let bot = sim
        .bot(client_id)
        .ok_or_else(|| not_found(client_id, tenant))?;
    let tid = tenant_of(&bot, tenant)
        .or_else(|| graph_tenant(&bot, tenant, resource))
        .ok_or_else(|| not_found(client_id, tenant))?;
    let appidacr = if let Some(assertion) = get("client_assertion") {
        if get("client_assertion_type") != Some(JWT_BEARER) {
            return Err(AadError(
                400,
                "invalid_request",
                50027,
                format!("client_assertion_type must be {JWT_BEARER}."),
            ));
        }
        attempt.credential = verify_assertion(sim, &bot, client_id, assertion, token_urls)?;
        "2"
    } else if let Some(secret) = get("client_secret") {
        attempt.credential = "secret";
        if bot.registration.secret.as_deref() != Some(secret) {
            return Err(AadError(
                401,
                "invalid_client",
                7000215,
                format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
            ));
        }
        "1"
    } else {
        return Err(AadError(
            401,
            "invalid_client",
            7000216,
            "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.".into(),
        ));
    };
    Ok(sim.issue_access_token(client_id, &tid, resource, appidacr))
}

/// Graph tokens of a multi-tenant app come from the customer tenant that
/// consented (the sim treats every tenant as having consented).
fn graph_tenant(bot: &Bot, tenant: &str, resource: &str) -> Option<String> {
    let graph = resource == crate::graph::GRAPH_AUDIENCE || resource == crate::graph::GRAPH_APP_ID;
    let named = !["common", "organizations", "consumers"]
        .iter()
        .any(|t| t.eq_ignore_ascii_case(tenant));
    (graph && named && bot.registration.tenant.is_none()).then(|| tenant.to_owned())
}

/// Authenticates the client of a delegated grant (client secret or
/// certificate/federated assertion, checked as for client credentials).
pub(crate) fn authenticate_client<'a>(
    sim: &Sim,
    tenant: &str,
    get: &impl Fn(&str) -> Option<&'a str>,
    token_urls: &[String],
) -> Result<Bot, AadError> {
    let client_id = get("client_id").ok_or_else(|| missing("client_id"))?;
    let bot = sim
        .bot(client_id)
        .ok_or_else(|| not_found(client_id, tenant))?;
    if let Some(assertion) = get("client_assertion") {
        if get("client_assertion_type") != Some(JWT_BEARER) {
            return Err(AadError(
                400,
                "invalid_request",
                50027,
                format!("client_assertion_type must be {JWT_BEARER}."),
            ));
        }
        verify_assertion(sim, &bot, client_id, assertion, token_urls)?;
    } else if let Some(secret) = get("client_secret") {
        if bot.registration.secret.as_deref() != Some(secret) {
            return Err(invalid_client(
                7000215,
                format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
            ));
        }
    } else {
        return Err(invalid_client(
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".into(),
        ));
    }
    Ok(bot)
}

fn not_found(client_id: &str, tenant: &str) -> AadError {
    AadError(
        400,
        "unauthorized_client",
        700016,
        format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."),
    )
}

/// The tenant id to put in the token if `bot` may get tokens from `tenant`:
/// single-tenant bots only from their own tenant, multi-tenant bots only from
/// botframework.com.
fn tenant_of(bot: &Bot, tenant: &str) -> Option<String> {
    match &bot.registration.tenant {
        Some(own) if own.eq_ignore_ascii_case(tenant) => Some(own.clone()),
        Some(_) => None,
        None if tenant.eq_ignore_ascii_case(BOTFRAMEWORK_TENANT)
            || tenant.eq_ignore_ascii_case(BOTFRAMEWORK_TENANT_ID) =>
        {
            Some(BOTFRAMEWORK_TENANT_ID.to_owned())
        }
        None => None,
    }
}

fn invalid_client(code: u32, description: String) -> AadError {
    AadError(401, "invalid_client", code, description)
}

/// Checks a `client_assertion`: either a workload identity token this sim
/// issued (federated credential) or a JWT signed with the bot's certificate.
fn verify_assertion(
    sim: &Sim,
    bot: &Bot,
    client_id: &str,
    assertion: &str,
    token_urls: &[String],
) -> Result<&'static str, AadError> {
    let parsed = jwt::parse(assertion).map_err(|e| {
        AadError(
            400,
            "invalid_request",
            50027,
            format!("JWT token is invalid or malformed: {e}."),
        )
    })?;
    let claims = &parsed.claims;
    let federated_issuer = sim.settings.federated_issuer();
    let credential = if jwt::claim_str(claims, "iss") == Some(federated_issuer.as_str()) {
        sim.verify_own_signature(assertion).map_err(|e| {
            invalid_client(
                700027,
                format!("Client assertion failed signature validation: {e}."),
            )
        })?;
        let sub = jwt::claim_str(claims, "sub").unwrap_or_default();
        let aud_ok = jwt::audience_contains(claims, |a| a == TOKEN_EXCHANGE_AUDIENCE);
        if !aud_ok {
            return Err(invalid_client(
                700212,
                format!("No matching federated identity record found for presented assertion audience. The audience must be '{TOKEN_EXCHANGE_AUDIENCE}'."),
            ));
        }
        if bot.registration.federated_subject.as_deref() != Some(sub) {
            return Err(invalid_client(
                70021,
                format!("No matching federated identity record found for presented assertion. Assertion Issuer: '{federated_issuer}'. Assertion Subject: '{sub}'."),
            ));
        }
        "federated"
    } else {
        if bot.certificate_keys.is_empty() {
            return Err(invalid_client(
                700027,
                format!("The certificate used to sign the client assertion is not registered on application '{client_id}'."),
            ));
        }
        let input = parsed.signing_input.as_bytes();
        let sig = parsed.signature.as_slice();
        let verified = match parsed.header.alg.as_str() {
            "RS256" => rsa::pkcs1v15::Signature::try_from(sig).is_ok_and(|s| {
                bot.certificate_keys.iter().any(|k| {
                    rsa::pkcs1v15::VerifyingKey::<Sha256>::new(k.clone())
                        .verify(input, &s)
                        .is_ok()
                })
            }),
            "PS256" => rsa::pss::Signature::try_from(sig).is_ok_and(|s| {
                bot.certificate_keys.iter().any(|k| {
                    rsa::pss::VerifyingKey::<Sha256>::new(k.clone())
                        .verify(input, &s)
                        .is_ok()
                })
            }),
            other => {
                return Err(invalid_client(
                    5002738,
                    format!("Invalid JWT token. '{other}' is not a supported signature algorithm (RS256, PS256)."),
                ))
            }
        };
        if !verified {
            return Err(invalid_client(
                700027,
                "Client assertion failed signature validation.".into(),
            ));
        }
        if jwt::claim_str(claims, "iss") != Some(client_id)
            || jwt::claim_str(claims, "sub") != Some(client_id)
        {
            return Err(invalid_client(
                700021,
                "Client assertion application identifier doesn't match 'client_id' parameter (iss and sub must both be the client id).".into(),
            ));
        }
        if !jwt::audience_contains(claims, |a| {
            token_urls.iter().any(|u| u.eq_ignore_ascii_case(a))
        }) {
            return Err(invalid_client(
                50027,
                format!(
                    "Invalid JWT token. The client assertion audience must be the token endpoint ({}).",
                    token_urls.first().map(String::as_str).unwrap_or_default()
                ),
            ));
        }
        "certificate"
    };
    let now = now_secs();
    let exp = jwt::claim_secs(claims, "exp");
    let nbf = jwt::claim_secs(claims, "nbf");
    if exp.is_none_or(|e| now > e + CLOCK_SKEW_SECS)
        || nbf.is_some_and(|n| now + CLOCK_SKEW_SECS < n)
    {
        return Err(invalid_client(
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {now}, assertion valid from {}, expiry time of assertion {}.",
                nbf.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                exp.map(|e| e.to_string()).unwrap_or_else(|| "(missing exp)".into()),
            ),
        ));
    }
    Ok(credential)
}

fn mi_error(status: u16, description: &str) -> TokenReply {
    (
        status,
        json!({ "error": "invalid_request", "error_description": description }),
    )
}

/// The identity a managed identity request names; registered bots are the
/// user-assigned identities the sim knows.
fn mi_identity(sim: &Sim, query: &HashMap<String, String>) -> Result<(Bot, String), &'static str> {
    let client_id = query
        .get("client_id")
        .filter(|v| !v.is_empty())
        .ok_or("Identity not found: pass client_id (the user-assigned identity's client id)")?;
    let bot = sim
        .bot(client_id)
        .ok_or("Identity not found: no bot with this client_id is registered with botfleet-sim")?;
    let tid = bot
        .registration
        .tenant
        .clone()
        .unwrap_or_else(|| BOTFRAMEWORK_TENANT_ID.to_owned());
    Ok((bot, tid))
}

/// Which managed identity endpoint is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagedIdentityKind {
    /// VM / VMSS IMDS: `GET /metadata/identity/oauth2/token`, header `Metadata: true`.
    Imds,
    /// App Service: `GET /msi/token`, header `X-IDENTITY-HEADER`.
    AppService,
}

/// A managed identity token request. `header` is the value of the header the
/// endpoint requires (`Metadata` or `X-IDENTITY-HEADER`).
pub fn managed_identity(
    sim: &Sim,
    kind: ManagedIdentityKind,
    query: &str,
    header: Option<&str>,
) -> TokenReply {
    let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let client_id = q.get("client_id").cloned().unwrap_or_default();
    let resource = q.get("resource").cloned();
    let attempt = Attempt {
        endpoint: match kind {
            ManagedIdentityKind::Imds => "imds",
            ManagedIdentityKind::AppService => "appService",
        },
        tenant: None,
        client_id: &client_id,
        credential: "managedIdentity",
        scope: resource.as_deref(),
    };
    let reject = |status: u16, description: &str| {
        record(sim, &attempt, status, None);
        mi_error(status, description)
    };
    if sim.token_endpoint_down() {
        record(sim, &attempt, 503, Some(90033));
        return down_reply();
    }
    match kind {
        ManagedIdentityKind::Imds if header != Some("true") => {
            return reject(400, "Required metadata header not specified")
        }
        ManagedIdentityKind::AppService if header != Some(sim.settings.identity_header.as_str()) => {
            return reject(401, "X-IDENTITY-HEADER is missing or does not match the value the sim was started with (--identity-header)")
        }
        _ => {}
    }
    if q.get("api-version").is_none_or(|v| v.is_empty()) {
        return reject(400, "Required query variable 'api-version' is missing");
    }
    let Some(resource) = resource.as_deref().filter(|r| !r.is_empty()) else {
        return reject(400, "Required query variable 'resource' is missing");
    };
    let (bot, tid) = match mi_identity(sim, &q) {
        Ok(x) => x,
        Err(msg) => return reject(400, msg),
    };
    let audience = resource.strip_suffix("/.default").unwrap_or(resource);
    let app_id = bot.registration.app_id.clone();
    let (token, lifetime) = sim.issue_access_token(&app_id, &tid, audience, "2");
    record(sim, &attempt, 200, None);
    let now = now_secs();
    let expires_on = (now + i64::try_from(lifetime).unwrap_or(0)).to_string();
    let body = match kind {
        ManagedIdentityKind::Imds => json!({
            "access_token": token,
            "client_id": app_id,
            "expires_in": lifetime.to_string(),
            "expires_on": expires_on,
            "ext_expires_in": lifetime.to_string(),
            "not_before": now.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }),
        ManagedIdentityKind::AppService => json!({
            "access_token": token,
            "expires_on": expires_on,
            "resource": resource,
            "token_type": "Bearer",
            "client_id": app_id,
        }),
    };
    (200, body)
}
