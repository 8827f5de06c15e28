//! Tokens sealed at rest with AES-256-GCM (NIST SP 800-38D; RustCrypto's
//! `aes-gcm`): a refresh token in the store is useless without the key.
//!
//! Sealed form: `v1.<key id>.<base64url(nonce(12) || ciphertext || tag(16))>`,
//! where the key id is the first 8 hex digits of SHA-256 of the key (it names
//! the key, it does not reveal it). The associated data binds each value to
//! its credential and field, so a sealed value copied to another credential
//! or field does not open. A random 96-bit nonce per seal: fine for the few
//! writes a credential sees (one per refresh).
//!
//! Rotation: values are sealed with the current key and opened with whichever
//! configured key (current or previous) their key id names; every refresh
//! rewrites the tokens, so once each credential refreshed the previous key can
//! be dropped.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Why a key or a sealed value was refused. Never contains key material.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SealError {
    #[error("the token encryption key must be 32 bytes written as base64 (44 characters, e.g. `openssl rand -base64 32`) or hex (64 digits)")]
    BadKey,
    #[error("the sealed value is not in botfleet's `v1.<key id>.<data>` form")]
    Malformed,
    #[error("the value was sealed with key `{0}`, which is neither the current nor the previous token encryption key")]
    UnknownKey(String),
    #[error("the sealed value does not open with key `{0}` (tampered, or moved from another credential)")]
    Tampered(String),
}

struct Key {
    id: String,
    cipher: Aes256Gcm,
}

/// The current key and any previous ones.
pub struct SealKeys {
    current: Key,
    previous: Vec<Key>,
}

impl std::fmt::Debug for SealKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKeys")
            .field("current", &self.current.id)
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// 32 bytes from base64 (standard or URL-safe, padded or not) or hex text;
/// surrounding whitespace (a trailing newline in a file) is ignored.
pub fn parse_key(text: &str) -> Result<[u8; 32], SealError> {
    let t = text.trim();
    let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(t).ok()
    } else {
        STANDARD
            .decode(t)
            .ok()
            .or_else(|| URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')).ok())
    };
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or(SealError::BadKey)
}

fn key(bytes: &[u8; 32]) -> Key {
    Key {
        id: hex::encode(&Sha256::digest(bytes)[..4]),
        cipher: Aes256Gcm::new(bytes.into()),
    }
}

impl SealKeys {
    /// From the key texts (see [`parse_key`]).
    pub fn from_texts(current: &str, previous: &[String]) -> Result<Self, SealError> {
        Ok(Self {
            current: key(&parse_key(current)?),
            previous: previous
                .iter()
                .map(|p| parse_key(p).map(|b| key(&b)))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Id of the key new values are sealed with.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `plain` for `context` (the credential and field it belongs to).
    pub fn seal(&self, context: &str, plain: &[u8]) -> String {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        // Encryption with a valid key and nonce cannot fail for inputs this small.
        let ct = self
            .current
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        format!("v1.{}.{}", self.current.id, URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens a value [`Self::seal`] made for the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(kid), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SealError::Malformed);
        };
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == kid)
            .ok_or_else(|| SealError::UnknownKey(kid.to_owned()))?;
        let raw = URL_SAFE_NO_PAD
            .decode(data)
            .map_err(|_| SealError::Malformed)?;
        if raw.len() < 12 + 16 {
            return Err(SealError::Malformed);
        }
        let (nonce, ct) = raw.split_at(12);
        key.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SealError::Tampered(kid.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const K2: &str = "6162636465666768696a6b6c6d6e6f707172737475767778797a303132333435";

    #[test]
    fn seals_opens_and_binds_the_context() {
        let k = SealKeys::from_texts(K1, &[]).expect("key");
        let s = k.seal("cred:a:rt", b"refresh-token-value");
        assert!(s.starts_with(&format!("v1.{}.", k.current_id())));
        assert!(!s.contains("refresh-token-value"));
        assert_eq!(
            k.open("cred:a:rt", &s).expect("open"),
            b"refresh-token-value"
        );
        assert_eq!(
            k.open("cred:b:rt", &s),
            Err(SealError::Tampered(k.current_id().to_owned()))
        );
        // Two seals of the same value differ (random nonce).
        assert_ne!(s, k.seal("cred:a:rt", b"refresh-token-value"));
        let mut bad = s.clone();
        bad.pop();
        bad.push(if s.ends_with('A') { 'B' } else { 'A' });
        assert!(k.open("cred:a:rt", &bad).is_err());
        assert_eq!(k.open("cred:a:rt", "plain"), Err(SealError::Malformed));
    }

    #[test]
    fn rotation_opens_old_values_with_the_previous_key() {
        let old = SealKeys::from_texts(K1, &[]).expect("key");
        let sealed = old.seal("c", b"x");
        let rotated = SealKeys::from_texts(K2, &[K1.to_owned()]).expect("keys");
        assert_eq!(rotated.open("c", &sealed).expect("open"), b"x");
        assert!(rotated
            .seal("c", b"y")
            .starts_with(&format!("v1.{}.", rotated.current_id())));
        let without = SealKeys::from_texts(K2, &[]).expect("key");
        assert_eq!(
            without.open("c", &sealed),
            Err(SealError::UnknownKey(old.current_id().to_owned()))
        );
    }

    #[test]
    fn key_texts() {
        assert!(parse_key(&format!("{K1}\n")).is_ok());
        assert!(parse_key(K2).is_ok());
        assert_eq!(parse_key("too short").err(), Some(SealError::BadKey));
        assert_eq!(parse_key(&"a".repeat(63)).err(), Some(SealError::BadKey));
    }
}
