//! Providers and cache against a small local token endpoint (actix-web) started per test.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use async_trait::async_trait;
use parking_lot::Mutex;

use super::*;
use crate::{Cloud, Secret};

const SECRET: &str = "s3cr3t-value-never-printed";

#[derive(Clone, Debug)]
enum Behaviour {
    Ok,
    /// 401 `invalid_client` with an AADSTS description.
    InvalidClient,
    /// 503 for the next n requests, then Ok.
    Unavailable(u32),
}

#[derive(Debug, Default, Clone)]
struct Seen {
    method: String,
    path: String,
    query: HashMap<String, String>,
    form: HashMap<String, String>,
    headers: HashMap<String, String>,
}

struct Fake {
    requests: AtomicU64,
    behaviour: Mutex<Behaviour>,
    expires_in: AtomicU64,
    delay_ms: AtomicU64,
    /// Answer `expires_on` (App Service) instead of `expires_in`, numbers as strings (IMDS).
    as_strings: std::sync::atomic::AtomicBool,
    expires_on_only: std::sync::atomic::AtomicBool,
    last: Mutex<Seen>,
}

impl Fake {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            requests: AtomicU64::new(0),
            behaviour: Mutex::new(Behaviour::Ok),
            expires_in: AtomicU64::new(3600),
            delay_ms: AtomicU64::new(0),
            as_strings: Default::default(),
            expires_on_only: Default::default(),
            last: Mutex::new(Seen::default()),
        })
    }
    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
    fn set(&self, b: Behaviour) {
        *self.behaviour.lock() = b;
    }
}

fn pairs(s: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(s).into_owned().collect()
}

async fn handle(req: HttpRequest, body: web::Bytes, fake: web::Data<Fake>) -> HttpResponse {
    let n = fake.requests.fetch_add(1, Ordering::SeqCst) + 1;
    *fake.last.lock() = Seen {
        method: req.method().to_string(),
        path: req.path().to_owned(),
        query: pairs(req.query_string().as_bytes()),
        form: pairs(&body),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
    };
    let delay = fake.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let behaviour = {
        let mut b = fake.behaviour.lock();
        let now = b.clone();
        if let Behaviour::Unavailable(k) = &mut *b {
            *k = k.saturating_sub(1);
            if *k == 0 {
                *b = Behaviour::Ok;
            }
        }
        now
    };
    match behaviour {
        Behaviour::InvalidClient => HttpResponse::Unauthorized().json(serde_json::json!({
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value.",
            "error_codes": [7000215],
        })),
        Behaviour::Unavailable(k) if k > 0 => HttpResponse::ServiceUnavailable().finish(),
        _ => {
            let expires_in = fake.expires_in.load(Ordering::SeqCst);
            let token = format!("tok-{n}");
            let body = if fake.expires_on_only.load(Ordering::SeqCst) {
                let on = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    + expires_in;
                serde_json::json!({"access_token": token, "expires_on": on.to_string(), "token_type": "Bearer"})
            } else if fake.as_strings.load(Ordering::SeqCst) {
                serde_json::json!({"access_token": token, "expires_in": expires_in.to_string(), "token_type": "Bearer"})
            } else {
                serde_json::json!({"access_token": token, "expires_in": expires_in, "ext_expires_in": expires_in, "token_type": "Bearer"})
            };
            HttpResponse::Ok().json(body)
        }
    }
}

/// Starts the fake endpoint on its own thread and actix system; returns its base URL.
fn serve(fake: Arc<Fake>) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let data = web::Data::from(fake);
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .default_service(web::to(handle))
            })
            .workers(2)
            .bind(("127.0.0.1", 0))
            .unwrap();
            tx.send(server.addrs()[0]).unwrap();
            server.run().await.unwrap();
        })
    });
    format!("http://{}", rx.recv().unwrap())
}

fn cloud(base: &str) -> Cloud {
    Cloud {
        name: "test".into(),
        openid_metadata_url: format!("{base}/v1/.well-known/openidconfiguration"),
        token_issuer: "https://api.botframework.com".into(),
        login_endpoint: base.into(),
        multi_tenant_authority: "botframework.com".into(),
        bot_scope: "https://api.botframework.com/.default".into(),
        service_url_hosts: vec![],
    }
}

fn fast_retry() -> RetryBudget {
    RetryBudget {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
        max_elapsed: Duration::from_secs(5),
    }
}

fn secret_provider(base: &str, tenant: Option<&str>) -> ClientCredentialsProvider {
    ClientCredentialsProvider::new(
        &cloud(base),
        "app-1",
        tenant,
        ClientCredential::Secret(Secret::new(SECRET)),
    )
    .with_retry(fast_retry())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_secret_posts_the_v2_form_to_the_authority() {
    let fake = Fake::new();
    let base = serve(fake.clone());
    let p = secret_provider(&base, None);
    assert_eq!(
        p.token_url(),
        format!("{base}/botframework.com/oauth2/v2.0/token")
    );
    assert_eq!(
        p.key(),
        &TokenKey::new(
            "test",
            "botframework.com",
            "app-1",
            "https://api.botframework.com/.default"
        )
    );
    let t = p.fetch().await.unwrap();
    assert_eq!(t.token.expose(), "tok-1");
    let left = t.expires_at.duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));
    let seen = fake.last.lock().clone();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/botframework.com/oauth2/v2.0/token");
    assert_eq!(seen.form["grant_type"], "client_credentials");
    assert_eq!(seen.form["client_id"], "app-1");
    assert_eq!(seen.form["scope"], "https://api.botframework.com/.default");
    assert_eq!(seen.form["client_secret"], SECRET);

    // Single-tenant bots use their tenant as authority, and it is part of the key.
    let st = secret_provider(&base, Some("tenant-9"));
    assert_eq!(st.token_url(), format!("{base}/tenant-9/oauth2/v2.0/token"));
    assert_eq!(st.key().authority, "tenant-9");
    st.fetch().await.unwrap();
    assert_eq!(fake.last.lock().path, "/tenant-9/oauth2/v2.0/token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_secret_is_surfaced_once_and_not_retried_in_a_loop() {
    let fake = Fake::new();
    fake.set(Behaviour::InvalidClient);
    let base = serve(fake.clone());
    let cache = TokenCache::default();
    let h = cache.register(Arc::new(secret_provider(&base, None)));
    let err = h.token().await.unwrap_err();
    match &err {
        TokenError::Rejected {
            status,
            error,
            description,
            ..
        } => {
            assert_eq!(*status, 401);
            assert_eq!(error, "invalid_client");
            assert!(description.starts_with("AADSTS7000215"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.is_permanent());
    let text = format!("{err} {err:?}");
    assert!(text.contains("invalid_client") && text.contains("app-1"));
    assert!(!text.contains(SECRET));
    assert_eq!(fake.requests(), 1, "a refusal is not retried");
    // Later callers get the remembered refusal without new requests.
    for _ in 0..20 {
        assert_eq!(h.token().await.unwrap_err(), err);
    }
    assert_eq!(fake.requests(), 1);
    let status = cache.status();
    assert_eq!(status.len(), 1);
    assert!(status[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("AADSTS7000215"));
    assert!(!status[0].valid);
    // A rotated credential (re-registration) is tried at once.
    fake.set(Behaviour::Ok);
    let h = cache.register(Arc::new(secret_provider(&base, None)));
    assert_eq!(h.token().await.unwrap().expose(), "tok-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_failures_are_retried_within_the_budget() {
    let fake = Fake::new();
    fake.set(Behaviour::Unavailable(2));
    let base = serve(fake.clone());
    let t = secret_provider(&base, None).fetch().await.unwrap();
    assert_eq!(t.token.expose(), "tok-3");
    assert_eq!(fake.requests(), 3);

    fake.set(Behaviour::Unavailable(100));
    let err = secret_provider(&base, None).fetch().await.unwrap_err();
    assert!(
        matches!(err, TokenError::Unavailable { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(!err.is_permanent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoint_down_gives_a_clear_transient_error() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let cache = TokenCache::default();
    let h = cache.register(Arc::new(secret_provider(&base, None)));
    let err = h.token().await.unwrap_err();
    assert!(matches!(err, TokenError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains(&base), "{err}");
    assert!(!format!("{err:?}").contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_callers_on_a_cold_key_cause_one_request() {
    let fake = Fake::new();
    fake.delay_ms.store(200, Ordering::SeqCst);
    let base = serve(fake.clone());
    let cache = TokenCache::default();
    let h = cache.register(Arc::new(secret_provider(&base, None)));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.token().await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().expose(), "tok-1");
    }
    assert_eq!(fake.requests(), 1);
    // Warm key: served from memory.
    for _ in 0..100 {
        cache.token(h.key()).await.unwrap();
    }
    assert_eq!(fake.requests(), 1);
    assert_eq!(cache.status()[0].endpoint_requests, 1);
}

fn short_config() -> TokenCacheConfig {
    TokenCacheConfig {
        min_remaining: Duration::from_millis(500),
        refresh_retry_interval: Duration::from_millis(200),
        ..TokenCacheConfig::default()
    }
}

#[test]
fn refresh_schedule() {
    let c = TokenCacheConfig::default();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    // 1 h token: 80 % (48 min) comes before 5 min before expiry (55 min).
    assert_eq!(
        c.refresh_at(t0, t0 + Duration::from_secs(3600)),
        t0 + Duration::from_secs(2880)
    );
    // 90 min token: 5 min before expiry (85 min) vs 80 % (72 min).
    assert_eq!(
        c.refresh_at(t0, t0 + Duration::from_secs(5400)),
        t0 + Duration::from_secs(4320)
    );
    // 8 min token: 5 min before expiry would be at 3 min, below half-life (4 min).
    assert_eq!(
        c.refresh_at(t0, t0 + Duration::from_secs(480)),
        t0 + Duration::from_secs(240)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refreshes_ahead_in_the_background() {
    let fake = Fake::new();
    fake.expires_in.store(4, Ordering::SeqCst);
    let base = serve(fake.clone());
    let cache = TokenCache::new(short_config());
    let h = cache.register(Arc::new(secret_provider(&base, None)));
    assert_eq!(h.token().await.unwrap().expose(), "tok-1");
    // 4 s lifetime -> refresh due at half-life (2 s).
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // Due: still answered from memory at once, the refresh runs behind.
    assert_eq!(h.token().await.unwrap().expose(), "tok-1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.token().await.unwrap().expose(), "tok-2");
    assert_eq!(fake.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn background_refresher_refreshes_without_callers() {
    let fake = Fake::new();
    fake.expires_in.store(2, Ordering::SeqCst);
    let base = serve(fake.clone());
    let cache = TokenCache::new(short_config());
    let h = cache.register(Arc::new(secret_provider(&base, None)));
    h.token().await.unwrap();
    let task = cache.spawn_refresher(Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(1400)).await;
    assert_eq!(fake.requests(), 2);
    assert_eq!(h.token().await.unwrap().expose(), "tok-2");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_refresh_keeps_serving_the_valid_token_and_reports() {
    let fake = Fake::new();
    fake.expires_in.store(4, Ordering::SeqCst);
    let base = serve(fake.clone());
    let cache = TokenCache::new(short_config());
    let h = cache.register(Arc::new(secret_provider(&base, None)));
    assert_eq!(h.token().await.unwrap().expose(), "tok-1");
    fake.set(Behaviour::Unavailable(1000));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Due for refresh, endpoint down: the old token keeps serving.
    for _ in 0..5 {
        assert_eq!(h.token().await.unwrap().expose(), "tok-1");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let st = h.status();
    assert!(st.valid);
    assert!(st.last_error.as_deref().unwrap().contains("unavailable"));
    assert!(st.last_error_at.is_some());
    // Once the token is too close to expiry, callers see the endpoint error.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = h.token().await.unwrap_err();
    assert!(matches!(err, TokenError::Unavailable { .. }), "{err:?}");
    // The endpoint comes back: the next caller gets a token.
    fake.set(Behaviour::Ok);
    assert!(h.token().await.unwrap().expose().starts_with("tok-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rejected_token_is_replaced_once_for_many_callers() {
    let fake = Fake::new();
    let base = serve(fake.clone());
    let cache = TokenCache::default();
    let h = cache.register(Arc::new(secret_provider(&base, None)));
    let old = h.token().await.unwrap();
    fake.delay_ms.store(100, Ordering::SeqCst);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (h, old) = (h.clone(), old.clone());
            tokio::spawn(async move { h.refresh_rejected(&old).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().expose(), "tok-2");
    }
    assert_eq!(fake.requests(), 2);
    // Invalidate drops the token; the next call fetches.
    cache.invalidate(h.key());
    assert_eq!(h.token().await.unwrap().expose(), "tok-3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_key_is_a_clear_error() {
    let cache = TokenCache::default();
    let err = cache
        .token(&TokenKey::new("public", "x", "y", "z"))
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::NotRegistered(_)));
}

fn rsa_key_pem() -> (String, String) {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let private = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let public = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    (private, public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificate_sends_a_signed_client_assertion_with_x5t() {
    let (private, public) = rsa_key_pem();
    // x5t is the SHA-1 of the certificate's DER bytes; "abc" stands in for a DER here.
    let cert_pem = "-----BEGIN CERTIFICATE-----\nYWJj\n-----END CERTIFICATE-----\n";
    let cred = CertificateCredential::from_pem(&private, Some(cert_pem)).unwrap();
    // SHA-1("abc") = a9993e364706816aba3e25717850c26c9cd0d89d
    assert_eq!(cred.x5t(), Some("qZk-NkcGgWq6PiVxeFDCbJzQ2J0"));
    let by_thumbprint = CertificateCredential::from_pem_and_thumbprint(
        &private,
        "A9:99:3E:36:47:06:81:6A:BA:3E:25:71:78:50:C2:6C:9C:D0:D8:9D",
    )
    .unwrap();
    assert_eq!(by_thumbprint.x5t(), cred.x5t());
    assert!(!format!("{cred:?}").contains("PRIVATE"));

    let fake = Fake::new();
    let base = serve(fake.clone());
    let p = ClientCredentialsProvider::new(
        &cloud(&base),
        "app-cert",
        Some("tenant-1"),
        ClientCredential::Certificate(cred),
    );
    assert_eq!(p.kind(), "certificate");
    p.fetch().await.unwrap();
    let seen = fake.last.lock().clone();
    assert_eq!(
        seen.form["client_assertion_type"],
        client_credentials::JWT_BEARER_ASSERTION
    );
    assert!(!seen.form.contains_key("client_secret"));
    let assertion = &seen.form["client_assertion"];
    let header = jsonwebtoken::decode_header(assertion).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(header.x5t.as_deref(), Some("qZk-NkcGgWq6PiVxeFDCbJzQ2J0"));
    let token_url = format!("{base}/tenant-1/oauth2/v2.0/token");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[&token_url]);
    v.set_issuer(&["app-cert"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(
        assertion,
        &jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).unwrap(),
        &v,
    )
    .unwrap();
    let c = data.claims;
    assert_eq!(c["sub"], "app-cert");
    assert!(c["jti"].as_str().unwrap().len() >= 16);
    assert!(c["exp"].as_u64().unwrap() > c["nbf"].as_u64().unwrap());

    assert!(matches!(
        CertificateCredential::from_pem("not a key", None),
        Err(TokenError::InvalidCertificate(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workload_identity_rereads_the_token_file_on_every_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, "federated-1\n").unwrap();
    let fake = Fake::new();
    let base = serve(fake.clone());
    let env = WorkloadIdentityEnv::from_lookup(|k| match k {
        "AZURE_FEDERATED_TOKEN_FILE" => Some(file.display().to_string()),
        "AZURE_TENANT_ID" => Some("tenant-wi".into()),
        "AZURE_AUTHORITY_HOST" => Some(format!("{base}/")),
        _ => None,
    })
    .unwrap();
    // The login endpoint of the cloud is unreachable: AZURE_AUTHORITY_HOST wins.
    let p = ClientCredentialsProvider::workload_identity(
        &cloud("http://127.0.0.1:9"),
        "app-wi",
        None,
        &env,
    )
    .with_retry(fast_retry());
    assert_eq!(p.kind(), "workload_identity");
    assert_eq!(p.token_url(), format!("{base}/tenant-wi/oauth2/v2.0/token"));
    let cache = TokenCache::default();
    let h = cache.register(Arc::new(p));
    h.token().await.unwrap();
    assert_eq!(fake.last.lock().form["client_assertion"], "federated-1");
    assert_eq!(
        fake.last.lock().form["client_assertion_type"],
        client_credentials::JWT_BEARER_ASSERTION
    );
    std::fs::write(&file, "federated-2").unwrap();
    h.invalidate();
    h.token().await.unwrap();
    assert_eq!(fake.last.lock().form["client_assertion"], "federated-2");

    std::fs::remove_file(&file).unwrap();
    h.invalidate();
    let err = h.token().await.unwrap_err();
    assert!(matches!(err, TokenError::Credential { .. }), "{err:?}");
    assert!(err.to_string().contains("azure-identity-token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn managed_identity_imds_and_app_service() {
    let fake = Fake::new();
    fake.as_strings.store(true, Ordering::SeqCst);
    let base = serve(fake.clone());
    let c = cloud(&base);
    let imds = ManagedIdentityProvider::new(
        &c,
        Some("uami-1"),
        ManagedIdentitySource::Imds {
            endpoint: format!("{base}/metadata/identity/oauth2/token"),
        },
    );
    assert_eq!(imds.key().authority, "managed-identity");
    assert_eq!(imds.key().app_id, "uami-1");
    let t = imds.fetch().await.unwrap();
    assert!(t.expires_at > SystemTime::now() + Duration::from_secs(3000));
    let seen = fake.last.lock().clone();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path, "/metadata/identity/oauth2/token");
    assert_eq!(seen.query["api-version"], "2018-02-01");
    assert_eq!(seen.query["resource"], "https://api.botframework.com");
    assert_eq!(seen.query["client_id"], "uami-1");
    assert_eq!(seen.headers["metadata"], "true");

    fake.as_strings.store(false, Ordering::SeqCst);
    fake.expires_on_only.store(true, Ordering::SeqCst);
    let source = ManagedIdentitySource::from_lookup(|k| match k {
        "IDENTITY_ENDPOINT" => Some(format!("{base}/msi/token")),
        "IDENTITY_HEADER" => Some("identity-header-secret".into()),
        _ => None,
    });
    assert!(!format!("{source:?}").contains("identity-header-secret"));
    let app_service = ManagedIdentityProvider::new(&c, Some("uami-1"), source);
    let t = app_service.fetch().await.unwrap();
    assert!(t.expires_at > SystemTime::now() + Duration::from_secs(3000));
    let seen = fake.last.lock().clone();
    assert_eq!(seen.path, "/msi/token");
    assert_eq!(seen.query["api-version"], "2019-08-01");
    assert_eq!(seen.query["resource"], "https://api.botframework.com");
    assert_eq!(seen.headers["x-identity-header"], "identity-header-secret");
    assert!(matches!(
        ManagedIdentitySource::from_lookup(|_| None),
        ManagedIdentitySource::Imds { .. }
    ));
}

/// A shared tier in memory, as two replicas would see Redis.
#[derive(Default)]
struct MemoryTier {
    tokens: Mutex<HashMap<String, SharedToken>>,
    locks: Mutex<HashMap<String, String>>,
    fail: std::sync::atomic::AtomicBool,
    n: AtomicU64,
}

#[async_trait]
impl SharedTokenTier for MemoryTier {
    async fn get(&self, key: &str) -> Result<Option<SharedToken>, SharedTierError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(SharedTierError("down".into()));
        }
        Ok(self.tokens.lock().get(key).cloned())
    }
    async fn put(&self, key: &str, token: &SharedToken) -> Result<(), SharedTierError> {
        self.tokens.lock().insert(key.to_owned(), token.clone());
        Ok(())
    }
    async fn try_lock(&self, key: &str, _ttl: Duration) -> Result<Option<String>, SharedTierError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(SharedTierError("down".into()));
        }
        let mut locks = self.locks.lock();
        if locks.contains_key(key) {
            return Ok(None);
        }
        let id = self.n.fetch_add(1, Ordering::SeqCst).to_string();
        locks.insert(key.to_owned(), id.clone());
        Ok(Some(id))
    }
    async fn unlock(&self, key: &str, lock_id: &str) -> Result<(), SharedTierError> {
        let mut locks = self.locks.lock();
        if locks.get(key).map(String::as_str) == Some(lock_id) {
            locks.remove(key);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_token_through_the_shared_tier() {
    let fake = Fake::new();
    fake.delay_ms.store(150, Ordering::SeqCst);
    let base = serve(fake.clone());
    let tier = Arc::new(MemoryTier::default());
    let replicas: Vec<TokenCache> = (0..3)
        .map(|_| TokenCache::with_shared_tier(TokenCacheConfig::default(), tier.clone()))
        .collect();
    let mut tasks = Vec::new();
    for r in &replicas {
        let h = r.register(Arc::new(secret_provider(&base, None)));
        for _ in 0..300 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move { h.token().await }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().expose(), "tok-1");
    }
    assert_eq!(fake.requests(), 1, "one token request across all replicas");
    let origins: Vec<_> = replicas
        .iter()
        .map(|r| r.status()[0].origin.unwrap())
        .collect();
    assert_eq!(
        origins
            .iter()
            .filter(|o| **o == TokenOrigin::Endpoint)
            .count(),
        1
    );

    // A 401 on one replica replaces the shared token; the others pick it up
    // when they report the same rejection.
    let h0 = replicas[0].handle(&replicas[0].status()[0].key).unwrap();
    let old = h0.token().await.unwrap();
    assert_eq!(h0.refresh_rejected(&old).await.unwrap().expose(), "tok-2");
    let h1 = replicas[1].handle(h0.key()).unwrap();
    assert_eq!(h1.refresh_rejected(&old).await.unwrap().expose(), "tok-2");
    assert_eq!(fake.requests(), 2);

    // A failing tier never blocks tokens: the endpoint is asked directly.
    tier.fail.store(true, Ordering::SeqCst);
    let lonely = TokenCache::with_shared_tier(TokenCacheConfig::default(), tier.clone());
    let h = lonely.register(Arc::new(secret_provider(&base, None)));
    assert_eq!(h.token().await.unwrap().expose(), "tok-3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_secret_in_debug_or_status() {
    let fake = Fake::new();
    let base = serve(fake.clone());
    let cache = TokenCache::default();
    let p = Arc::new(secret_provider(&base, None));
    let provider_debug = format!("{p:?}");
    let h = cache.register(p);
    let token = h.token().await.unwrap();
    let status = cache.status();
    let json = serde_json::to_string(&status).unwrap();
    let all = format!("{provider_debug} {h:?} {cache:?} {status:?} {json} {token:?} {token}");
    assert!(!all.contains(SECRET), "{all}");
    assert!(!all.contains("tok-1"), "{all}");
    assert!(json.contains("\"credential\":\"client_secret\""));
    assert!(json.contains("\"expires_at\":1") || json.contains("\"expires_at\":2"));
}
