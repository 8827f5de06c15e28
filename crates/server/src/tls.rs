//! TLS on the public listener (`[server.tls]`): rustls, TLS 1.2 and 1.3 only
//! (RFC 8996 deprecates 1.0 and 1.1), the certificate chain and key read from
//! PEM files and reloaded when they change, as cert-manager rotates a mounted
//! Secret (https://cert-manager.io/docs/usage/certificate/).
//!
//! A certificate that cannot be used at start-up (unreadable, not PEM, no key,
//! a key that does not match, expired) stops `check-config` and `serve` with an
//! error naming the file. At reload the same faults keep the certificate in
//! use, are logged and counted (`botfleet_tls_reload_failures_total`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use thiserror::Error;

/// Failed reloads since start (a changed file that could not be used).
static RELOAD_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Why a certificate or key file cannot be used.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", file.display())]
    NoCertificate { file: PathBuf },
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", file.display())]
    NoKey { file: PathBuf },
    #[error("{} cannot be used with {}: {reason}", key.display(), cert.display())]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("the certificate in {} expired at {}; renew it", file.display(), humantime::format_rfc3339_seconds(*not_after))]
    Expired {
        file: PathBuf,
        not_after: SystemTime,
    },
    #[error("the certificate in {} has no readable validity period", file.display())]
    Validity { file: PathBuf },
}

impl TlsError {
    /// The setting naming the faulty file (`key_file` as configured).
    pub fn key(&self, key_file: &Path) -> &'static str {
        match self {
            Self::Read { file, .. } if file == key_file => "server.tls.key_file",
            Self::NoKey { .. } | Self::KeyMismatch { .. } => "server.tls.key_file",
            _ => "server.tls.cert_file",
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A usable certificate chain and key, and when the leaf expires.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub not_after: SystemTime,
}

fn read(file: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|source| TlsError::Read {
        file: file.to_owned(),
        source,
    })
}

/// Reads and checks `cert_file` (PEM chain, leaf first) and `key_file` (PEM
/// private key).
///
/// # Errors
/// [`TlsError`], naming the file.
pub fn load(cert_file: &Path, key_file: &Path) -> Result<Loaded, TlsError> {
    parse(cert_file, &read(cert_file)?, key_file, &read(key_file)?)
}

fn parse(cert_file: &Path, cert: &[u8], key_file: &Path, key: &[u8]) -> Result<Loaded, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .filter_map(Result::ok)
        .collect();
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            file: cert_file.to_owned(),
        });
    };
    let not_after = not_after(leaf).ok_or_else(|| TlsError::Validity {
        file: cert_file.to_owned(),
    })?;
    if not_after <= SystemTime::now() {
        return Err(TlsError::Expired {
            file: cert_file.to_owned(),
            not_after,
        });
    }
    let private = PrivateKeyDer::from_pem_slice(key).map_err(|_| TlsError::NoKey {
        file: key_file.to_owned(),
    })?;
    let key =
        CertifiedKey::from_der(chain, private, &provider()).map_err(|e| TlsError::KeyMismatch {
            cert: cert_file.to_owned(),
            key: key_file.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(Loaded {
        key: Arc::new(key),
        not_after,
    })
}

/// One DER element: (tag, contents, rest).
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The leaf's `notAfter` (RFC 5280 section 4.1.2.5: UTCTime `YYMMDDHHMMSSZ`
/// or GeneralizedTime `YYYYMMDDHHMMSSZ`).
fn not_after(cert: &[u8]) -> Option<SystemTime> {
    let (_, certificate, _) = tlv(cert)?;
    let (_, tbs, _) = tlv(certificate)?;
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    // serialNumber, signature, issuer, then validity.
    for _ in 0..3 {
        rest = tlv(rest)?.2;
    }
    let (_, validity, _) = tlv(rest)?;
    let (_, _, after_not_before) = tlv(validity)?;
    let (tag, time, _) = tlv(after_not_before)?;
    let text = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
    let full = match (tag, text.len()) {
        (0x17, 12) => {
            let yy: u32 = text.get(..2)?.parse().ok()?;
            format!("{}{text}", if yy >= 50 { "19" } else { "20" })
        }
        (0x18, 14) => text.to_owned(),
        _ => return None,
    };
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        full.get(..4)?,
        full.get(4..6)?,
        full.get(6..8)?,
        full.get(8..10)?,
        full.get(10..12)?,
        full.get(12..14)?
    );
    humantime::parse_rfc3339(&rfc3339).ok()
}

/// Serves the current certificate to every handshake; [`CertResolver::spawn_reloader`]
/// swaps it when the files change.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|k| k.clone())
    }
}

impl CertResolver {
    /// Loads the files once.
    ///
    /// # Errors
    /// [`TlsError`], naming the file.
    pub fn new(cert_file: &Path, key_file: &Path) -> Result<Arc<Self>, TlsError> {
        let loaded = load(cert_file, key_file)?;
        tracing::info!(cert_file = %cert_file.display(), expires = %humantime::format_rfc3339_seconds(loaded.not_after), "TLS certificate loaded");
        Ok(Arc::new(Self {
            current: RwLock::new(loaded.key),
        }))
    }

    /// A rustls server configuration (TLS 1.3 and 1.2 only, ring) that takes
    /// its certificate from this resolver.
    ///
    /// # Errors
    /// When the provider rejects the protocol versions (not with ring).
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        Ok(rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone()))
    }

    /// Reads both files every `interval`; when their content changed, loads
    /// them and swaps the certificate, or keeps the old one, logs and counts.
    pub fn spawn_reloader(
        self: Arc<Self>,
        cert_file: PathBuf,
        key_file: PathBuf,
        interval: Duration,
    ) {
        let mut seen = (
            std::fs::read(&cert_file).ok(),
            std::fs::read(&key_file).ok(),
        );
        actix_web::rt::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let now = (
                    std::fs::read(&cert_file).ok(),
                    std::fs::read(&key_file).ok(),
                );
                if now == seen {
                    continue;
                }
                // cert-manager replaces both files at once (an atomic symlink
                // swap); a pair read between two plain writes fails here and
                // is tried again at the next change.
                let result = match &now {
                    (Some(c), Some(k)) => parse(&cert_file, c, &key_file, k),
                    _ => load(&cert_file, &key_file),
                };
                seen = now;
                match result {
                    Ok(loaded) => {
                        if let Ok(mut current) = self.current.write() {
                            *current = loaded.key;
                        }
                        tracing::info!(cert_file = %cert_file.display(), expires = %humantime::format_rfc3339_seconds(loaded.not_after), "TLS certificate reloaded");
                    }
                    Err(e) => {
                        RELOAD_FAILURES.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "TLS certificate not reloaded: still serving the previous one");
                    }
                }
            }
        });
    }
}

/// Changed certificate or key files that could not be used since start
/// (`botfleet_tls_reload_failures_total`).
pub fn reload_failures() -> u64 {
    RELOAD_FAILURES.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_not_after_and_refuses_expired_and_mismatched() {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.not_after = rcgen::date_time_ymd(2099, 1, 2);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.clone().self_signed(&key).expect("cert");
        let (c, k) = (cert.pem(), key.serialize_pem());
        let loaded = parse(
            Path::new("c.pem"),
            c.as_bytes(),
            Path::new("k.pem"),
            k.as_bytes(),
        )
        .expect("usable");
        assert_eq!(
            humantime::format_rfc3339_seconds(loaded.not_after).to_string(),
            "2099-01-02T00:00:00Z"
        );
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        let old = params.self_signed(&key).expect("cert");
        let e = parse(
            Path::new("c.pem"),
            old.pem().as_bytes(),
            Path::new("k.pem"),
            k.as_bytes(),
        )
        .err()
        .expect("expired");
        assert!(e.to_string().contains("c.pem expired at 2020-01-01"), "{e}");
        let other = rcgen::KeyPair::generate().expect("key");
        let e = parse(
            Path::new("c.pem"),
            c.as_bytes(),
            Path::new("k.pem"),
            other.serialize_pem().as_bytes(),
        )
        .err()
        .expect("mismatch");
        assert_eq!(e.key(Path::new("k.pem")), "server.tls.key_file", "{e}");
        let e = parse(
            Path::new("c.pem"),
            b"junk",
            Path::new("k.pem"),
            k.as_bytes(),
        )
        .err()
        .expect("no cert");
        assert!(
            e.to_string().contains("c.pem holds no PEM certificate"),
            "{e}"
        );
    }
}
