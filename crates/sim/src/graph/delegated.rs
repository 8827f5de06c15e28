//! Delegated access for a service integration user: the OAuth 2.0
//! authorization code flow with PKCE (RFC 7636, S256 only) and refresh tokens
//! that rotate on every use, as Entra issues them
//! (<https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow>,
//! <https://learn.microsoft.com/entra/identity-platform/refresh-tokens>).
//!
//! - `GET /{tenant}/oauth2/v2.0/authorize` signs in the configured sim user
//!   without a page (auto-consent) and answers 302 to `redirect_uri?code=..&state=..`.
//! - The token endpoint's `authorization_code` grant checks the client
//!   credential, `redirect_uri` and `code_verifier`; codes live 10 sim minutes
//!   and redeem once. Its `refresh_token` grant returns a new access token (1 h
//!   of sim time) and a NEW refresh token every time; earlier refresh tokens
//!   keep working until revoked or unused for 90 sim days.
//! - A refresh token is only issued when `offline_access` is in the scope.
//! - `POST /_sim/graph/users/{id}/revoke` revokes every refresh token of a user:
//!   later refreshes answer 400 `invalid_grant` (AADSTS50173).

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::jwt;
use crate::state::{uuid_from, Sim};
use crate::token::{authenticate_client, missing, AadError};

/// Lifetime of authorization codes (sim time).
pub const CODE_LIFETIME_MS: u64 = 10 * 60 * 1000;
/// Lifetime of delegated access tokens (sim time).
pub const ACCESS_TOKEN_SECS: u64 = 3600;
/// A refresh token unused this long (sim time) expires.
pub const REFRESH_INACTIVITY_MS: u64 = 90 * 24 * 3600 * 1000;
/// Tenant of the default sign-in user when the authorize URL names none.
pub const DEFAULT_TENANT: &str = "8b1a2c3d-0000-4000-8000-00000000b0f1";

/// The user `authorize` signs in (`POST /_sim/graph/signin`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignInUser {
    pub user_id: String,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Debug, Clone)]
struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scope: String,
    user_id: String,
    tenant_id: String,
    expires_ms: u64,
    redeemed: bool,
}

#[derive(Debug, Clone)]
struct Refresh {
    client_id: String,
    user_id: String,
    tenant_id: String,
    scope: String,
    issued_ms: u64,
    last_used_ms: u64,
    revoked: bool,
}

#[derive(Debug, Default)]
pub(crate) struct DelegatedState {
    codes: HashMap<String, Code>,
    refresh: HashMap<String, Refresh>,
    pub signin: Option<SignInUser>,
    /// Refresh grants answered, for tests.
    pub refreshes: u64,
}

fn random_token(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(b))
}

fn is_generic_tenant(t: &str) -> bool {
    ["common", "organizations", "consumers"]
        .iter()
        .any(|g| g.eq_ignore_ascii_case(t))
}

/// Scopes that name no resource permission (they shape the response instead).
fn is_oidc_scope(s: &str) -> bool {
    matches!(s, "openid" | "profile" | "email" | "offline_access")
}

/// The answer of `authorize`: a redirect, or an error page when the redirect
/// URI itself cannot be trusted.
#[derive(Debug)]
pub enum AuthorizeReply {
    Redirect(String),
    Error(u16, Value),
}

/// `GET /{tenant}/oauth2/v2.0/authorize?client_id&redirect_uri&response_type=code&scope&state&code_challenge&code_challenge_method=S256`.
pub fn authorize(sim: &Sim, tenant: &str, query: &str) -> AuthorizeReply {
    let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let page = |e: AadError| AuthorizeReply::Error(e.0, crate::token::aad_body(&e));
    let Some(client_id) = get("client_id") else {
        return page(missing("client_id"));
    };
    let Some(bot) = sim.bot(client_id) else {
        return page(AadError(
            400,
            "unauthorized_client",
            700016,
            format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'."),
        ));
    };
    if let Some(own) = &bot.registration.tenant {
        if !is_generic_tenant(tenant) && !own.eq_ignore_ascii_case(tenant) {
            return page(AadError(
                400,
                "unauthorized_client",
                700016,
                format!("Application with identifier '{client_id}' was not found in the directory '{tenant}' (it is single-tenant in '{own}')."),
            ));
        }
    }
    let Some(redirect_uri) = get("redirect_uri") else {
        return page(missing("redirect_uri"));
    };
    let mut target = match url::Url::parse(redirect_uri) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.fragment().is_none() => u,
        _ => {
            return page(AadError(
                400,
                "invalid_request",
                50011,
                format!("The redirect URI '{redirect_uri}' specified in the request is not an absolute http(s) URL without a fragment."),
            ))
        }
    };
    let state = get("state").map(str::to_owned);
    let fail = |mut target: url::Url, error: &str, code: u32, description: &str| {
        {
            let mut pairs = target.query_pairs_mut();
            pairs.append_pair("error", error);
            pairs.append_pair("error_description", &format!("AADSTS{code}: {description}"));
            if let Some(s) = &state {
                pairs.append_pair("state", s);
            }
        }
        AuthorizeReply::Redirect(target.to_string())
    };
    if get("response_type") != Some("code") {
        return fail(
            target,
            "unsupported_response_type",
            700054,
            "botfleet-sim supports response_type=code only.",
        );
    }
    let Some(scope) = get("scope") else {
        return fail(
            target,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'scope'.",
        );
    };
    let Some(challenge) = get("code_challenge") else {
        return fail(
            target,
            "invalid_request",
            501491,
            "Invalid size of Code_Challenge parameter: PKCE is required (code_challenge with code_challenge_method=S256).",
        );
    };
    if get("code_challenge_method") != Some("S256") {
        return fail(
            target,
            "invalid_request",
            501481,
            "code_challenge_method must be S256 (botfleet-sim does not accept plain).",
        );
    }
    if challenge.len() != 43 || URL_SAFE_NO_PAD.decode(challenge).is_err() {
        return fail(
            target,
            "invalid_request",
            501491,
            "Invalid size of Code_Challenge parameter: an S256 challenge is 43 base64url characters.",
        );
    }
    let now = sim.graph.now_ms();
    let code = random_token("0.sim.");
    {
        let mut inner = sim.graph.inner.lock();
        let user = inner.delegated.signin.clone();
        let tenant_id = user
            .as_ref()
            .and_then(|u| u.tenant_id.clone())
            .or_else(|| bot.registration.tenant.clone())
            .unwrap_or_else(|| {
                if is_generic_tenant(tenant) {
                    DEFAULT_TENANT.to_owned()
                } else {
                    tenant.to_owned()
                }
            });
        let user_id = user
            .map(|u| u.user_id)
            .unwrap_or_else(|| uuid_from(&format!("botfleet-sim-user@{tenant_id}")));
        inner
            .delegated
            .codes
            .retain(|_, c| c.expires_ms > now && !c.redeemed);
        inner.delegated.codes.insert(
            code.clone(),
            Code {
                client_id: client_id.to_owned(),
                redirect_uri: redirect_uri.to_owned(),
                challenge: challenge.to_owned(),
                scope: scope.to_owned(),
                user_id,
                tenant_id,
                expires_ms: now + CODE_LIFETIME_MS,
                redeemed: false,
            },
        );
    }
    {
        let mut pairs = target.query_pairs_mut();
        pairs.append_pair("code", &code);
        if let Some(s) = &state {
            pairs.append_pair("state", s);
        }
        pairs.append_pair("session_state", &uuid::Uuid::new_v4().to_string());
    }
    AuthorizeReply::Redirect(target.to_string())
}

fn invalid_grant(code: u32, description: impl Into<String>) -> AadError {
    AadError(400, "invalid_grant", code, description.into())
}

/// The token endpoint's `authorization_code` and `refresh_token` grants.
pub(crate) fn grant<'a>(
    sim: &Sim,
    tenant: &str,
    get: &impl Fn(&str) -> Option<&'a str>,
    token_urls: &[String],
) -> Result<Value, AadError> {
    let bot = authenticate_client(sim, tenant, get, token_urls)?;
    let client_id = bot.registration.app_id.as_str();
    let now = sim.graph.now_ms();
    let (user_id, tenant_id, scope) = match get("grant_type") {
        Some("authorization_code") => {
            let code = get("code").ok_or_else(|| missing("code"))?;
            let redirect_uri = get("redirect_uri").ok_or_else(|| missing("redirect_uri"))?;
            let verifier = get("code_verifier").ok_or_else(|| missing("code_verifier"))?;
            let mut inner = sim.graph.inner.lock();
            let Some(c) = inner.delegated.codes.get_mut(code) else {
                return Err(invalid_grant(
                    9002313,
                    "Invalid request. Request is malformed or invalid: the authorization code is unknown.",
                ));
            };
            if c.redeemed {
                return Err(invalid_grant(54005, "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token."));
            }
            if c.expires_ms <= now {
                return Err(invalid_grant(70008, "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource."));
            }
            if c.client_id != client_id {
                return Err(invalid_grant(
                    70000,
                    "The provided value for the 'code' parameter is not valid: the code was issued to another client.",
                ));
            }
            if c.redirect_uri != redirect_uri {
                return Err(invalid_grant(
                    70000,
                    "The provided value for the 'redirect_uri' parameter does not match the one of the authorization request.",
                ));
            }
            let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
            if computed != c.challenge {
                return Err(invalid_grant(
                    501481,
                    "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                ));
            }
            c.redeemed = true;
            (c.user_id.clone(), c.tenant_id.clone(), c.scope.clone())
        }
        Some("refresh_token") => {
            let token = get("refresh_token").ok_or_else(|| missing("refresh_token"))?;
            let mut inner = sim.graph.inner.lock();
            let Some(r) = inner.delegated.refresh.get_mut(token) else {
                return Err(invalid_grant(
                    9002313,
                    "Invalid request. Request is malformed or invalid: the refresh token is unknown.",
                ));
            };
            if r.client_id != client_id {
                return Err(invalid_grant(
                    70000,
                    "The provided value for the 'refresh_token' parameter is not valid: it was issued to another client.",
                ));
            }
            if r.revoked {
                return Err(invalid_grant(50173, "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password."));
            }
            if now.saturating_sub(r.last_used_ms) >= REFRESH_INACTIVITY_MS {
                return Err(invalid_grant(
                    700082,
                    format!(
                        "The refresh token has expired due to inactivity. The token was issued on {} and was inactive for 90.00:00:00.",
                        crate::time::rfc3339(r.issued_ms)
                    ),
                ));
            }
            r.last_used_ms = now;
            let out = (r.user_id.clone(), r.tenant_id.clone(), r.scope.clone());
            inner.delegated.refreshes += 1;
            out
        }
        _ => return Err(missing("grant_type")),
    };
    let requested = get("scope").unwrap_or(&scope);
    let offline = requested.split_whitespace().any(|s| s == "offline_access")
        || scope.split_whitespace().any(|s| s == "offline_access");
    let granted: Vec<&str> = requested
        .split_whitespace()
        .filter(|s| !is_oidc_scope(s))
        .collect();
    let scp: Vec<&str> = granted
        .iter()
        .map(|s| s.rsplit('/').next().unwrap_or(s))
        .filter(|s| *s != ".default")
        .collect();
    let now_secs = i64::try_from(now / 1000).unwrap_or(i64::MAX / 2);
    let exp = now_secs + ACCESS_TOKEN_SECS as i64;
    let iss = format!("https://sts.windows.net/{tenant_id}/");
    let claims = json!({
        "aud": super::GRAPH_AUDIENCE,
        "iss": iss,
        "iat": now_secs,
        "nbf": now_secs,
        "exp": exp,
        "appid": client_id,
        "azp": client_id,
        "appidacr": "1",
        "idp": iss,
        "idtyp": "user",
        "oid": user_id,
        "sub": uuid_from(&format!("{user_id}|{client_id}")),
        "tid": tenant_id,
        "scp": scp.join(" "),
        "uti": uuid::Uuid::new_v4().simple().to_string(),
        "ver": "1.0",
    });
    let key = sim.active_key();
    let access_token = jwt::sign(&key, &key.kid, &claims);
    let mut body = json!({
        "token_type": "Bearer",
        "scope": granted.join(" "),
        "expires_in": ACCESS_TOKEN_SECS,
        "ext_expires_in": ACCESS_TOKEN_SECS,
        "access_token": access_token,
    });
    if offline {
        let rt = random_token("1.sim.");
        sim.graph.inner.lock().delegated.refresh.insert(
            rt.clone(),
            Refresh {
                client_id: client_id.to_owned(),
                user_id,
                tenant_id,
                scope: scope.clone(),
                issued_ms: now,
                last_used_ms: now,
                revoked: false,
            },
        );
        body["refresh_token"] = json!(rt);
    }
    Ok(body)
}

/// Revokes every refresh token of `user_id`; returns how many.
pub fn revoke(sim: &Sim, user_id: &str) -> usize {
    let mut inner = sim.graph.inner.lock();
    let mut n = 0;
    for r in inner.delegated.refresh.values_mut() {
        if r.user_id == user_id && !r.revoked {
            r.revoked = true;
            n += 1;
        }
    }
    n
}

/// Sets the user `authorize` signs in.
pub fn set_signin(sim: &Sim, user: SignInUser) -> Result<(), String> {
    if user.user_id.trim().is_empty() {
        return Err("userId must not be empty".into());
    }
    sim.graph.inner.lock().delegated.signin = Some(user);
    Ok(())
}

/// `{refreshTokens, revoked, refreshes}` for `GET /_sim/graph/signin`.
pub fn summary(sim: &Sim) -> Value {
    let inner = sim.graph.inner.lock();
    let d = &inner.delegated;
    json!({
        "signin": d.signin,
        "refreshTokens": d.refresh.len(),
        "revoked": d.refresh.values().filter(|r| r.revoked).count(),
        "refreshes": d.refreshes,
    })
}
