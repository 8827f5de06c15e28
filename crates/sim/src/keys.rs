//! RSA signing keys, their JWKs, and the key set the sim publishes.
//!
//! The sim signs with the `rsa` crate directly (not with the JWT library botfleet
//! validates with), so a bug in one library cannot hide on both sides.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, LineEnding};
use rsa::sha2::{Digest, Sha256};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};

use crate::error::SimError;

/// The channel id whose endorsement the active key carries.
pub const TEAMS_ENDORSEMENT: &str = "msteams";
/// The endorsement of the published key that Teams tokens must not be signed with.
pub const OTHER_ENDORSEMENT: &str = "webchat";
const KEY_BITS: usize = 2048;

/// One RSA key pair with its RFC 7638 `kid` and JWK parameters.
pub struct SimKey {
    pub kid: String,
    pub endorsements: Vec<String>,
    /// False: the JWK is published WITHOUT an `endorsements` member, as Microsoft
    /// has published keys (validators that required the list broke on them).
    pub publish_endorsements: bool,
    n: String,
    e: String,
    private: RsaPrivateKey,
    signing: SigningKey<Sha256>,
    verifying: VerifyingKey<Sha256>,
}

impl std::fmt::Debug for SimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimKey")
            .field("kid", &self.kid)
            .field("endorsements", &self.endorsements)
            .field("publish_endorsements", &self.publish_endorsements)
            .finish_non_exhaustive()
    }
}

impl SimKey {
    /// The same key, published without an `endorsements` member.
    pub fn without_endorsements_list(mut self) -> Self {
        self.publish_endorsements = false;
        self
    }

    pub fn new(private: RsaPrivateKey, endorsements: &[&str]) -> Self {
        let public = private.to_public_key();
        let n = URL_SAFE_NO_PAD.encode(public.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(public.e().to_bytes_be());
        let kid = thumbprint(&n, &e);
        Self {
            kid,
            endorsements: endorsements.iter().map(|s| (*s).to_owned()).collect(),
            publish_endorsements: true,
            n,
            e,
            signing: SigningKey::<Sha256>::new(private.clone()),
            verifying: VerifyingKey::<Sha256>::new(public),
            private,
        }
    }

    pub fn generate(endorsements: &[&str]) -> Result<Self, SimError> {
        let private = RsaPrivateKey::new(&mut rand::thread_rng(), KEY_BITS)
            .map_err(|e| SimError::KeyGeneration(e.to_string()))?;
        Ok(Self::new(private, endorsements))
    }

    /// RS256 signature over `input`.
    pub fn sign(&self, input: &[u8]) -> Vec<u8> {
        self.signing.sign(input).to_vec()
    }

    /// True if `signature` is a valid RS256 signature of `input` by this key.
    pub fn verify(&self, input: &[u8], signature: &[u8]) -> bool {
        match Signature::try_from(signature) {
            Ok(sig) => self.verifying.verify(input, &sig).is_ok(),
            Err(_) => false,
        }
    }

    /// The public JWK as the Bot Framework JWKS lists it (with `endorsements`,
    /// unless the key is published without the list).
    pub fn jwk(&self) -> Value {
        let mut jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "n": self.n,
            "e": self.e,
        });
        if self.publish_endorsements {
            jwk["endorsements"] = json!(self.endorsements);
        }
        jwk
    }

    pub fn to_pkcs8_pem(&self) -> Result<String, SimError> {
        self.private
            .to_pkcs8_pem(LineEnding::LF)
            .map(|z| z.to_string())
            .map_err(|e| SimError::Internal(format!("cannot encode key as PKCS#8: {e}")))
    }
}

/// RFC 7638 thumbprint of an RSA JWK: base64url(SHA-256 of the canonical JSON).
pub fn thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// Which key a minted token is signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum KeyChoice {
    /// The active key, endorsed for `msteams`.
    #[default]
    Active,
    /// A published key whose endorsements do not include `msteams`.
    Unendorsed,
    /// A key that is not published, with the active key's `kid` in the header:
    /// the token has a bad signature.
    Foreign,
}

/// The published keys: the active one (endorsed for msteams), keys it replaced
/// that were not retired, and one key endorsed for another channel.
#[derive(Debug, Clone)]
pub struct KeySet {
    pub active: Arc<SimKey>,
    pub unendorsed: Arc<SimKey>,
    /// Earlier active keys still published (rotation without retiring).
    pub previous: Vec<Arc<SimKey>>,
    /// Never published; generated on first use because key generation is slow.
    pub foreign: Option<Arc<SimKey>>,
}

impl KeySet {
    /// Every published key, active first.
    pub fn published(&self) -> impl Iterator<Item = &Arc<SimKey>> {
        std::iter::once(&self.active)
            .chain(self.previous.iter())
            .chain(std::iter::once(&self.unendorsed))
    }

    pub fn find(&self, kid: &str) -> Option<&Arc<SimKey>> {
        self.published().find(|k| k.kid == kid)
    }

    pub fn jwks(&self) -> Value {
        json!({ "keys": self.published().map(|k| k.jwk()).collect::<Vec<_>>() })
    }

    /// Loads the keys from `file` (PEM private keys: the first is the active key,
    /// the second the unendorsed key) or generates them. A missing file is created
    /// with both keys so the next run publishes the same `kid`s.
    pub fn load_or_create(file: Option<&Path>) -> Result<Self, SimError> {
        let Some(path) = file else {
            return Self::generated(Vec::new());
        };
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| key_err(path, e.to_string()))?;
            let keys = parse_private_keys(&text).map_err(|m| key_err(path, m))?;
            if keys.is_empty() {
                return Err(key_err(
                    path,
                    "no PEM private key in the file (expected -----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)".into(),
                ));
            }
            // A one-key file (e.g. shared with another fake IdP) keeps its key
            // active; the unendorsed key is then generated in memory.
            return Self::generated(keys);
        }
        let set = Self::generated(Vec::new())?;
        let pem = format!(
            "{}{}",
            set.active.to_pkcs8_pem()?,
            set.unendorsed.to_pkcs8_pem()?
        );
        write_private(path, &pem).map_err(|e| key_err(path, format!("cannot create: {e}")))?;
        Ok(set)
    }

    fn generated(mut keys: Vec<RsaPrivateKey>) -> Result<Self, SimError> {
        let mut take = || -> Result<RsaPrivateKey, SimError> {
            if keys.is_empty() {
                RsaPrivateKey::new(&mut rand::thread_rng(), KEY_BITS)
                    .map_err(|e| SimError::KeyGeneration(e.to_string()))
            } else {
                Ok(keys.remove(0))
            }
        };
        let active = take()?;
        let unendorsed = take()?;
        Ok(Self {
            active: Arc::new(SimKey::new(active, &[TEAMS_ENDORSEMENT])),
            unendorsed: Arc::new(SimKey::new(unendorsed, &[OTHER_ENDORSEMENT])),
            previous: Vec::new(),
            foreign: None,
        })
    }
}

fn key_err(path: &Path, message: String) -> SimError {
    SimError::KeyFile {
        path: PathBuf::from(path),
        message,
    }
}

/// Writes atomically (temp file + rename) so a concurrent reader never sees half
/// a key, and with mode 0600 because it is a private key.
fn write_private(path: &Path, pem: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        std::io::Write::write_all(&mut f, pem.as_bytes())?;
    }
    std::fs::rename(&tmp, path)
}

/// The PEM blocks of `text` as (label, DER bytes).
pub fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let Some(label_end) = after.find("-----") else {
            return Err("unterminated PEM header".into());
        };
        let label = after[..label_end].to_owned();
        let body_start = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = body_start.find(&end_marker) else {
            return Err(format!("PEM block {label} has no END line"));
        };
        let b64: String = body_start[..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let der = STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| format!("PEM block {label} is not valid base64: {e}"))?;
        out.push((label, der));
        rest = &body_start[end + end_marker.len()..];
    }
    Ok(out)
}

fn parse_private_keys(text: &str) -> Result<Vec<RsaPrivateKey>, String> {
    let mut keys = Vec::new();
    for (label, der) in pem_blocks(text)? {
        let key = match label.as_str() {
            "PRIVATE KEY" => RsaPrivateKey::from_pkcs8_der(&der)
                .map_err(|e| format!("PKCS#8 key is not an RSA key: {e}"))?,
            "RSA PRIVATE KEY" => RsaPrivateKey::from_pkcs1_der(&der)
                .map_err(|e| format!("invalid PKCS#1 RSA key: {e}"))?,
            _ => continue,
        };
        if key.size() * 8 < KEY_BITS {
            return Err(format!(
                "RSA key has {} bits; at least {KEY_BITS} are required",
                key.size() * 8
            ));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// RSA public keys from a PEM text: `PUBLIC KEY` (SPKI), `RSA PUBLIC KEY`
/// (PKCS#1) or `CERTIFICATE` (X.509; its subject public key is used).
pub fn parse_public_keys(text: &str) -> Result<Vec<RsaPublicKey>, String> {
    let mut keys = Vec::new();
    for (label, der) in pem_blocks(text)? {
        let key = match label.as_str() {
            "PUBLIC KEY" => RsaPublicKey::from_public_key_der(&der)
                .map_err(|e| format!("SPKI public key is not an RSA key: {e}"))?,
            "RSA PUBLIC KEY" => RsaPublicKey::from_pkcs1_der(&der)
                .map_err(|e| format!("invalid PKCS#1 public key: {e}"))?,
            "CERTIFICATE" => {
                let spki = certificate_spki(&der)
                    .ok_or_else(|| "certificate is not valid X.509 DER".to_owned())?;
                RsaPublicKey::from_public_key_der(spki)
                    .map_err(|e| format!("certificate key is not an RSA key: {e}"))?
            }
            _ => continue,
        };
        keys.push(key);
    }
    if keys.is_empty() {
        return Err("no PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE PEM block found".into());
    }
    Ok(keys)
}

/// One DER TLV at the start of `input`: (tag, whole TLV, content, rest).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

fn der_tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let tag = *input.first()?;
    let first = *input.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let whole = input.get(..end)?;
    Some((tag, whole, &whole[header..], &input[end..]))
}

/// The SubjectPublicKeyInfo TLV of an X.509 certificate (RFC 5280 4.1), found by
/// walking tbsCertificate: [0] version?, serial, signature alg, issuer, validity,
/// subject, subjectPublicKeyInfo.
fn certificate_spki(cert: &[u8]) -> Option<&[u8]> {
    let (tag, _, cert_body, _) = der_tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, _, mut tbs, _) = der_tlv(cert_body)?;
    if tag != 0x30 {
        return None;
    }
    if tbs.first() == Some(&0xa0) {
        tbs = der_tlv(tbs)?.3;
    }
    for _ in 0..5 {
        tbs = der_tlv(tbs)?.3;
    }
    let (tag, whole, _, _) = der_tlv(tbs)?;
    (tag == 0x30).then_some(whole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::EncodePublicKey;

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // RFC 7638 section 3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(
            thumbprint(n, "AQAB"),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            out.push(0x82);
            out.push((len >> 8) as u8);
            out.push(len as u8);
        }
        out.extend_from_slice(content);
        out
    }

    #[test]
    fn public_key_from_certificate_spki_and_pkcs1() {
        let key = SimKey::generate(&[]).expect("keygen");
        let public = key.private.to_public_key();
        let spki = public.to_public_key_der().expect("spki");
        // Structurally valid certificate around the key; contents elsewhere are dummies.
        let tbs = [
            tlv(0xa0, &tlv(0x02, &[2])),
            tlv(0x02, &[1]),
            tlv(0x30, &[]),
            tlv(0x30, &[]),
            tlv(0x30, &[]),
            tlv(0x30, &[]),
            spki.as_bytes().to_vec(),
        ]
        .concat();
        let cert = tlv(
            0x30,
            &[tlv(0x30, &tbs), tlv(0x30, &[]), tlv(0x03, &[0])].concat(),
        );
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            STANDARD.encode(&cert)
        );
        assert_eq!(parse_public_keys(&pem).expect("cert"), vec![public.clone()]);
        let spki_pem = public.to_public_key_pem(LineEnding::LF).expect("pem");
        assert_eq!(parse_public_keys(&spki_pem).expect("spki"), vec![public]);
        assert!(parse_public_keys("nothing here").is_err());
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let key = SimKey::generate(&[TEAMS_ENDORSEMENT]).expect("keygen");
        let sig = key.sign(b"hello");
        assert!(key.verify(b"hello", &sig));
        assert!(!key.verify(b"hellO", &sig));
        assert!(!key.verify(b"hello", &sig[1..]));
    }
}
