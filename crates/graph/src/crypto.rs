//! Rich notifications: decrypting `encryptedContent`
//! (https://learn.microsoft.com/graph/change-notifications-with-resource-data#decrypting-resource-data-from-change-notifications):
//! `dataKey` is the symmetric key encrypted with RSA-OAEP (SHA-1, Graph's
//! `OaepSHA1`) to the subscription's certificate; `dataSignature` is
//! HMAC-SHA256 of the `data` bytes with that key, checked BEFORE decrypting;
//! `data` is AES-256-CBC with PKCS#7 padding and IV = the key's first 16 bytes.
//!
//! Also the certificate side: the base64 DER Graph wants as
//! `encryptionCertificate`, and its SHA-1 thumbprint.

use std::path::Path;

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::{Oaep, RsaPrivateKey};
use sha1::{Digest, Sha1};
use sha2::Sha256;
use thiserror::Error;

use crate::model::EncryptedContent;

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// Why an encrypted item was rejected. Counted by kind; never carries content.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecryptError {
    #[error("encryptedContent is not valid base64 ({0})")]
    Encoding(&'static str),
    #[error(
        "no configured key unwraps dataKey (certificate rotated without keeping the previous key?)"
    )]
    KeyUnwrap,
    #[error("dataSignature does not match: the payload was altered (not decrypted)")]
    Signature,
    #[error("the decrypted data is not valid AES-CBC/PKCS#7 output")]
    Decrypt,
    #[error("the decrypted data is not JSON")]
    NotJson,
}

impl DecryptError {
    /// The metric label of this rejection.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Encoding(_) => "encoding",
            Self::KeyUnwrap => "key_unwrap",
            Self::Signature => "signature",
            Self::Decrypt => "decrypt",
            Self::NotJson => "not_json",
        }
    }
}

/// The private keys of a subscription, current first.
pub struct KeyRing {
    keys: Vec<RsaPrivateKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing({} keys)", self.keys.len())
    }
}

/// A key or certificate file that cannot be used.
#[derive(Debug, Error)]
#[error("{path}: {problem}")]
pub struct KeyFileError {
    pub path: String,
    pub problem: String,
}

/// Parses a PEM private key (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
pub fn parse_private_key(pem: &str) -> Result<RsaPrivateKey, String> {
    RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|_| "not a PEM RSA private key (PKCS#8 or PKCS#1)".to_owned())
}

fn read(path: &Path) -> Result<String, KeyFileError> {
    std::fs::read_to_string(path).map_err(|e| KeyFileError {
        path: path.display().to_string(),
        problem: format!("cannot read it: {e}"),
    })
}

impl KeyRing {
    pub fn new(keys: Vec<RsaPrivateKey>) -> Self {
        Self { keys }
    }

    /// Reads the current key and, when given, the previous one.
    pub fn from_files(key: &Path, previous: Option<&Path>) -> Result<Self, KeyFileError> {
        let mut keys = Vec::new();
        for p in std::iter::once(key).chain(previous) {
            let k = parse_private_key(&read(p)?).map_err(|problem| KeyFileError {
                path: p.display().to_string(),
                problem,
            })?;
            keys.push(k);
        }
        Ok(Self { keys })
    }

    /// The plaintext JSON of `content`. The HMAC is checked before any
    /// decryption: a tampered payload is never decrypted.
    pub fn decrypt(&self, content: &EncryptedContent) -> Result<serde_json::Value, DecryptError> {
        let wrapped = STANDARD
            .decode(content.data_key.trim())
            .map_err(|_| DecryptError::Encoding("dataKey"))?;
        let data = STANDARD
            .decode(content.data.trim())
            .map_err(|_| DecryptError::Encoding("data"))?;
        let signature = STANDARD
            .decode(content.data_signature.trim())
            .map_err(|_| DecryptError::Encoding("dataSignature"))?;
        let key = self
            .keys
            .iter()
            .find_map(|k| k.decrypt(Oaep::new::<Sha1>(), &wrapped).ok())
            .filter(|k| k.len() == 32)
            .ok_or(DecryptError::KeyUnwrap)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| DecryptError::KeyUnwrap)?;
        mac.update(&data);
        // verify_slice compares in constant time.
        mac.verify_slice(&signature)
            .map_err(|_| DecryptError::Signature)?;
        // IV = the key's first 16 bytes (Graph's documented scheme).
        let iv = key.get(..16).ok_or(DecryptError::Decrypt)?;
        let dec = Aes256CbcDec::new_from_slices(&key, iv).map_err(|_| DecryptError::Decrypt)?;
        let plain = dec
            .decrypt_padded_vec_mut::<Pkcs7>(&data)
            .map_err(|_| DecryptError::Decrypt)?;
        serde_json::from_slice(&plain).map_err(|_| DecryptError::NotJson)
    }
}

/// The DER bytes of the first `CERTIFICATE` block of a PEM text.
pub fn certificate_der(pem: &str) -> Result<Vec<u8>, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem
        .find(BEGIN)
        .ok_or("no `-----BEGIN CERTIFICATE-----` block")?
        + BEGIN.len();
    let end = pem
        .get(start..)
        .and_then(|rest| rest.find(END))
        .ok_or("the certificate PEM block is not terminated")?
        + start;
    let b64: String = pem
        .get(start..end)
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD
        .decode(b64)
        .map_err(|e| format!("the certificate PEM is not valid base64: {e}"))
}

/// What Graph wants for a certificate file: `encryptionCertificate` (base64
/// DER) and the upper-case hex SHA-1 thumbprint it reports back.
pub fn certificate_for_graph(path: &Path) -> Result<(String, String), KeyFileError> {
    let der = certificate_der(&read(path)?).map_err(|problem| KeyFileError {
        path: path.display().to_string(),
        problem,
    })?;
    Ok((STANDARD.encode(&der), hex::encode_upper(Sha1::digest(&der))))
}
