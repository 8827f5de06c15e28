//! The OAuth 2.0 authorization-code flow with PKCE against an Entra v2.0
//! endpoint (https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow,
//! RFC 7636 S256) and the refresh-token grant
//! (https://learn.microsoft.com/entra/identity-platform/refresh-tokens): the
//! confidential client (the bot's app registration) proves itself with its
//! client secret, certificate assertion or federated token, as for its
//! client-credentials tokens.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use botfleet_auth::outbound::client_credentials::JWT_BEARER_ASSERTION;
use botfleet_auth::outbound::ClientCredential;
use botfleet_auth::Secret;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Why a delegated credential cannot give a token: the status the admin API
/// shows and the `reason` label of the refresh-failure counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureReason {
    /// The user or an admin revoked the grant, the password changed, consent
    /// is missing (AADSTS50173, 50133, 65001, `interaction_required`): sign in again.
    ConsentRevoked,
    /// The refresh token expired (90 days unused: AADSTS700082, 70008): sign in again.
    RefreshExpired,
    /// Entra does not know the refresh token (AADSTS9002313, 70000, other
    /// `invalid_grant`): sign in again.
    RefreshInvalid,
    /// The app itself was refused (`invalid_client`, `unauthorized_client`):
    /// fix the bot's credential.
    ClientAuth,
    /// The token endpoint was unreachable or answered 5xx/429: retried.
    Transient,
    /// The stored token did not open (wrong or missing encryption key).
    Decrypt,
    /// The store was unavailable.
    Store,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConsentRevoked => "consent_revoked",
            Self::RefreshExpired => "refresh_expired",
            Self::RefreshInvalid => "refresh_invalid",
            Self::ClientAuth => "client_auth",
            Self::Transient => "transient",
            Self::Decrypt => "decrypt",
            Self::Store => "store",
        }
    }

    /// Needs a new sign-in (the stored refresh token will never work again).
    pub fn needs_sign_in(self) -> bool {
        matches!(
            self,
            Self::ConsentRevoked | Self::RefreshExpired | Self::RefreshInvalid
        )
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::ConsentRevoked,
            Self::RefreshExpired,
            Self::RefreshInvalid,
            Self::ClientAuth,
            Self::Transient,
            Self::Decrypt,
            Self::Store,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A refused or failed token request. The description is Entra's, without
/// its trace ids; never a token or secret.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{} ({error}{}): {description}", reason.as_str(), code.map(|c| format!(", AADSTS{c}")).unwrap_or_default())]
pub struct OAuthError {
    pub reason: FailureReason,
    /// The OAuth `error` (`invalid_grant`, ...) or `http` for transport failures.
    pub error: String,
    pub code: Option<u32>,
    pub description: String,
}

/// What the token endpoint gave.
#[derive(Debug, Clone)]
pub struct Grant {
    pub access_token: Secret,
    pub expires_in: Duration,
    pub refresh_token: Option<Secret>,
    pub scope: String,
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u32>,
}

/// PKCE: a 43-character verifier (32 random bytes, base64url) and its S256 challenge.
pub fn new_pkce() -> (Secret, String) {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    let verifier = URL_SAFE_NO_PAD.encode(b);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (Secret::new(verifier), challenge)
}

/// A random `state` (32 bytes, base64url).
pub fn new_state() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// The bot's app registration as an OAuth confidential client of one tenant.
#[derive(Clone)]
pub struct OAuthClient {
    pub app_id: String,
    /// `{login}/{tenant}/oauth2/v2.0/authorize`.
    pub authorize_url: String,
    /// `{login}/{tenant}/oauth2/v2.0/token`.
    pub token_url: String,
    credential: ClientCredential,
    http: reqwest::Client,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("app_id", &self.app_id)
            .field("token_url", &self.token_url)
            .field("credential", &self.credential)
            .finish()
    }
}

impl OAuthClient {
    /// `token_url` is the tenant's v2.0 token endpoint; the authorize
    /// endpoint is its sibling.
    pub fn new(
        app_id: impl Into<String>,
        token_url: impl Into<String>,
        credential: ClientCredential,
        http: reqwest::Client,
    ) -> Self {
        let token_url = token_url.into();
        let authorize_url = match token_url.strip_suffix("/token") {
            Some(base) => format!("{base}/authorize"),
            None => token_url.clone(),
        };
        Self {
            app_id: app_id.into(),
            authorize_url,
            token_url,
            credential,
            http,
        }
    }

    /// The URL the integration user opens to sign in.
    pub fn sign_in_url(
        &self,
        redirect_uri: &str,
        scope: &str,
        state: &str,
        challenge: &str,
    ) -> String {
        let q: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.app_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("response_mode", "query")
            .append_pair("scope", scope)
            .append_pair("state", state)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        format!("{}?{q}", self.authorize_url)
    }

    /// `grant_type=authorization_code`.
    pub async fn redeem_code(
        &self,
        code: &str,
        verifier: &Secret,
        redirect_uri: &str,
        scope: &str,
    ) -> Result<Grant, OAuthError> {
        self.request(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier.expose()),
            ("scope", scope),
        ])
        .await
    }

    /// `grant_type=refresh_token`: a new access token and (Entra rotates
    /// them) a new refresh token.
    pub async fn refresh(&self, refresh_token: &Secret, scope: &str) -> Result<Grant, OAuthError> {
        self.request(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
            ("scope", scope),
        ])
        .await
    }

    async fn proof(&self) -> Result<(&'static str, Secret), OAuthError> {
        let fail = |d: String| OAuthError {
            reason: FailureReason::ClientAuth,
            error: "client_credential".into(),
            code: None,
            description: d,
        };
        match &self.credential {
            ClientCredential::Secret(s) => Ok(("client_secret", s.clone())),
            ClientCredential::Certificate(c) => c
                .assertion(&self.app_id, &self.token_url)
                .map(|a| ("client_assertion", Secret::new(a)))
                .map_err(|e| fail(format!("signing the client assertion failed: {e}"))),
            ClientCredential::FederatedTokenFile(p) => tokio::fs::read_to_string(p)
                .await
                .map(|t| ("client_assertion", Secret::new(t.trim())))
                .map_err(|e| {
                    fail(format!(
                        "cannot read the federated token file {}: {e}",
                        p.display()
                    ))
                }),
        }
    }

    async fn request(&self, fields: &[(&str, &str)]) -> Result<Grant, OAuthError> {
        let (kind, proof) = self.proof().await?;
        let mut form: Vec<(&str, &str)> = vec![("client_id", &self.app_id)];
        form.extend_from_slice(fields);
        form.push((kind, proof.expose()));
        if kind == "client_assertion" {
            form.push(("client_assertion_type", JWT_BEARER_ASSERTION));
        }
        let transient = |d: String| OAuthError {
            reason: FailureReason::Transient,
            error: "http".into(),
            code: None,
            description: d,
        };
        let r = self
            .http
            .post(&self.token_url)
            .timeout(Duration::from_secs(20))
            .form(&form)
            .send()
            .await
            .map_err(|e| transient(format!("token endpoint unreachable: {}", e.without_url())))?;
        let status = r.status();
        let body = r.bytes().await.map_err(|e| {
            transient(format!(
                "token endpoint answer unreadable: {}",
                e.without_url()
            ))
        })?;
        if status.is_success() {
            let t: TokenBody = serde_json::from_slice(&body).map_err(|e| {
                transient(format!(
                    "the token endpoint's answer is not a token response: {e}"
                ))
            })?;
            let secs = match t.expires_in {
                Some(serde_json::Value::Number(n)) => n.as_u64(),
                Some(serde_json::Value::String(s)) => s.parse().ok(),
                _ => None,
            }
            .unwrap_or(3600);
            return Ok(Grant {
                access_token: Secret::new(t.access_token),
                expires_in: Duration::from_secs(secs),
                refresh_token: t.refresh_token.filter(|r| !r.is_empty()).map(Secret::new),
                scope: t.scope.unwrap_or_default(),
            });
        }
        let e: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
        Err(classify(status.as_u16(), e))
    }
}

fn classify(status: u16, e: ErrorBody) -> OAuthError {
    // Entra appends trace and correlation ids; keep the sentence.
    let description: String = e
        .error_description
        .split(" Trace ID:")
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(400)
        .collect();
    let code = e.error_codes.first().copied().or_else(|| {
        description
            .strip_prefix("AADSTS")
            .and_then(|r| r.split(':').next())
            .and_then(|n| n.parse().ok())
    });
    let reason = match (status, e.error.as_str(), code) {
        (429 | 500..=599, _, _) | (_, "temporarily_unavailable", _) => FailureReason::Transient,
        (_, "invalid_client" | "unauthorized_client", _) => FailureReason::ClientAuth,
        (_, "interaction_required" | "consent_required", _) => FailureReason::ConsentRevoked,
        (_, _, Some(50173 | 50133 | 65001 | 65004 | 50055 | 50057 | 50053)) => {
            FailureReason::ConsentRevoked
        }
        (_, _, Some(700082 | 70008 | 700084)) => FailureReason::RefreshExpired,
        (_, "invalid_grant", _) => FailureReason::RefreshInvalid,
        (_, _, Some(7000215 | 7000222 | 700027 | 700016)) => FailureReason::ClientAuth,
        _ => FailureReason::Transient,
    };
    OAuthError {
        reason,
        error: if e.error.is_empty() {
            format!("http_{status}")
        } else {
            e.error
        },
        code,
        description: if description.is_empty() {
            format!("HTTP {status} without an error description")
        } else {
            description
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: u16, error: &str, code: u32) -> OAuthError {
        classify(
            status,
            ErrorBody {
                error: error.into(),
                error_description: format!("AADSTS{code}: words. Trace ID: abc Correlation ID: d"),
                error_codes: vec![code],
            },
        )
    }

    #[test]
    fn classifies_entra_errors() {
        assert_eq!(
            err(400, "invalid_grant", 50173).reason,
            FailureReason::ConsentRevoked
        );
        assert_eq!(
            err(400, "invalid_grant", 700082).reason,
            FailureReason::RefreshExpired
        );
        assert_eq!(
            err(400, "invalid_grant", 9002313).reason,
            FailureReason::RefreshInvalid
        );
        assert_eq!(
            err(401, "invalid_client", 7000215).reason,
            FailureReason::ClientAuth
        );
        assert_eq!(
            err(503, "temporarily_unavailable", 90033).reason,
            FailureReason::Transient
        );
        let e = err(400, "invalid_grant", 50173);
        assert_eq!(e.description, "AADSTS50173: words.");
        assert_eq!(
            e.to_string(),
            "consent_revoked (invalid_grant, AADSTS50173): AADSTS50173: words."
        );
    }

    #[test]
    fn pkce_is_s256_of_the_verifier() {
        let (v, c) = new_pkce();
        assert_eq!(v.expose().len(), 43);
        assert_eq!(
            c,
            URL_SAFE_NO_PAD.encode(Sha256::digest(v.expose().as_bytes()))
        );
        assert_ne!(new_state(), new_state());
    }

    #[test]
    fn sign_in_url_names_everything_the_flow_needs() {
        let c = OAuthClient::new(
            "app",
            "https://login.example/t1/oauth2/v2.0/token",
            ClientCredential::Secret(Secret::new("s")),
            reqwest::Client::new(),
        );
        let u = c.sign_in_url(
            "http://127.0.0.1:9090/cb",
            "offline_access Chat.Read",
            "st",
            "ch",
        );
        assert!(u.starts_with("https://login.example/t1/oauth2/v2.0/authorize?client_id=app&response_type=code&redirect_uri=http%3A%2F%2F127.0.0.1%3A9090%2Fcb"));
        assert!(u.contains("&state=st&code_challenge=ch&code_challenge_method=S256"));
        assert!(u.contains("scope=offline_access+Chat.Read"));
        assert!(!u.contains("client_secret"));
    }
}
