//! Rich notifications: `encryptedContent` as Microsoft Graph builds it
//! (<https://learn.microsoft.com/graph/change-notifications-with-resource-data>):
//! a fresh 32-byte symmetric key per item; `data` = AES-256-CBC with PKCS7
//! padding, IV = the key's first 16 bytes; `dataSignature` = HMAC-SHA256 of the
//! ciphertext under the same key; `dataKey` = the key wrapped with RSA-OAEP
//! (SHA-1, Graph's "OaepSHA1") to the subscription certificate's public key.

use aes::Aes256;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use rand::RngCore;
use rsa::pkcs8::DecodePublicKey;
use rsa::{Oaep, RsaPublicKey};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use sha2::Sha256;
use x509_cert::der::{Decode, Encode};
use x509_cert::Certificate;

/// The public half of a subscription's `encryptionCertificate`.
#[derive(Debug, Clone)]
pub struct EncryptionCertificate {
    /// `encryptionCertificateId` as the subscriber gave it (at most 128 characters).
    pub id: String,
    /// Hex SHA-1 of the certificate DER, upper case (`encryptionCertificateThumbprint`).
    pub thumbprint: String,
    pub key: RsaPublicKey,
}

/// Largest `encryptionCertificateId` Graph accepts.
pub const MAX_CERTIFICATE_ID: usize = 128;

impl EncryptionCertificate {
    /// Reads `encryptionCertificate` (base64 DER X.509; a PEM text is accepted
    /// too). The key must be RSA of 2048 to 4096 bits, as Graph requires.
    pub fn parse(certificate: &str, id: &str) -> Result<Self, String> {
        if id.trim().is_empty() || id.len() > MAX_CERTIFICATE_ID {
            return Err(format!(
                "encryptionCertificateId is required with encryptionCertificate and must be 1..={MAX_CERTIFICATE_ID} characters"
            ));
        }
        let b64: String = certificate
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .flat_map(|l| l.chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        let der = STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| format!("encryptionCertificate is not base64: {e}"))?;
        let cert = Certificate::from_der(&der)
            .map_err(|e| format!("encryptionCertificate is not an X.509 certificate (DER): {e}"))?;
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| format!("encryptionCertificate's public key cannot be read: {e}"))?;
        let key = RsaPublicKey::from_public_key_der(&spki)
            .map_err(|e| format!("encryptionCertificate's key is not an RSA key: {e}"))?;
        let bits = rsa::traits::PublicKeyParts::size(&key) * 8;
        if !(2048..=4096).contains(&bits) {
            return Err(format!(
                "encryptionCertificate's RSA key has {bits} bits; Graph requires 2048 to 4096"
            ));
        }
        let thumbprint = Sha1::digest(&der)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        Ok(Self {
            id: id.to_owned(),
            thumbprint,
            key,
        })
    }
}

/// How to spoil an `encryptedContent` on purpose (fault injection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tamper {
    #[default]
    None,
    /// One ciphertext byte flipped after signing: `dataSignature` no longer matches.
    Data,
}

/// `encryptedContent` of `plaintext` for `cert`.
pub fn encrypt(
    plaintext: &[u8],
    cert: &EncryptionCertificate,
    tamper: Tamper,
) -> Result<Value, String> {
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    let iv: [u8; 16] = key[..16]
        .try_into()
        .map_err(|_| "IV slice is 16 bytes".to_owned())?;
    let mut data = cbc::Encryptor::<Aes256>::new(&key.into(), &iv.into())
        .encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(&key).map_err(|e| format!("HMAC key: {e}"))?;
    mac.update(&data);
    let signature = mac.finalize().into_bytes();
    if tamper == Tamper::Data {
        if let Some(b) = data.first_mut() {
            *b ^= 0x01;
        }
    }
    let wrapped = cert
        .key
        .encrypt(&mut rand::thread_rng(), Oaep::new::<Sha1>(), &key)
        .map_err(|e| format!("RSA-OAEP key wrap failed: {e}"))?;
    Ok(json!({
        "data": STANDARD.encode(&data),
        "dataSignature": STANDARD.encode(signature),
        "dataKey": STANDARD.encode(wrapped),
        "encryptionCertificateId": cert.id,
        "encryptionCertificateThumbprint": cert.thumbprint,
    }))
}
