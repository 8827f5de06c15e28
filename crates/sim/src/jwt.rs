//! Compact JWS (RS256) encoding and parsing, just what the sim needs.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::keys::SimKey;

/// Signs `claims` with `signer`, putting `kid` in the header. `kid` differs from
/// `signer.kid` only for deliberately forged tokens.
pub fn sign(signer: &SimKey, kid: &str, claims: &Value) -> String {
    let header = json!({ "alg": "RS256", "kid": kid, "typ": "JWT" });
    let mut input = String::with_capacity(1024);
    input.push_str(&URL_SAFE_NO_PAD.encode(header.to_string()));
    input.push('.');
    input.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = signer.sign(input.as_bytes());
    input.push('.');
    input.push_str(&URL_SAFE_NO_PAD.encode(signature));
    input
}

#[derive(Debug, Deserialize)]
pub struct Header {
    #[serde(default)]
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
}

/// A JWT split and decoded, signature not yet checked.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub header: Header,
    pub claims: Value,
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("token is not a JWT (expected three base64url parts separated by dots)")]
    Format,
    #[error("token header or claims are not base64url JSON")]
    Encoding,
}

pub fn parse(token: &str) -> Result<Parsed<'_>, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Format);
    };
    let decode = |p: &str| URL_SAFE_NO_PAD.decode(p.trim_end_matches('='));
    let header: Header = decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Encoding)?;
    let claims: Value = decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(Value::is_object)
        .ok_or(JwtError::Encoding)?;
    let signature = decode(s).map_err(|_| JwtError::Encoding)?;
    Ok(Parsed {
        header,
        claims,
        signing_input: &token[..h.len() + 1 + c.len()],
        signature,
    })
}

/// A string claim, or `None`.
pub fn claim_str<'a>(claims: &'a Value, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str)
}

/// A numeric date claim (seconds), accepting floats as some issuers write them.
pub fn claim_secs(claims: &Value, name: &str) -> Option<i64> {
    let v = claims.get(name)?;
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

/// True if `aud` (a string or an array of strings) contains `expected`.
pub fn audience_contains(claims: &Value, expected: impl Fn(&str) -> bool) -> bool {
    match claims.get("aud") {
        Some(Value::String(s)) => expected(s),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).any(expected),
        _ => false,
    }
}
