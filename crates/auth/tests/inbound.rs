//! Inbound validation against a local OpenID metadata + JWKS server, with real
//! RSA keys and tokens signed by jsonwebtoken.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use botfleet_auth::inbound::{
    BotResolver, BotTrust, InboundConfig, InboundError, InboundValidator, Validated,
};
use botfleet_auth::{Cloud, ServiceUrlAllowlist, TenantPolicy};
use botfleet_protocol::{Activity, ChannelAccount, ConversationAccount};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ISSUER: &str = "https://api.botframework.test";
const APP: &str = "app-1";
const OTHER_APP: &str = "app-2";
const SERVICE_URL: &str = "https://smba.trafficmanager.net/amer/";
const TENANT: &str = "tenant-a";

fn keys() -> &'static [RsaPrivateKey; 2] {
    static KEYS: OnceLock<[RsaPrivateKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rand::thread_rng();
        [
            RsaPrivateKey::new(&mut rng, 2048).expect("rsa key"),
            RsaPrivateKey::new(&mut rng, 2048).expect("rsa key"),
        ]
    })
}

fn jwk(kid: &str, key: &RsaPrivateKey, endorsements: Option<&[&str]>) -> Value {
    let mut j = json!({
        "kty": "RSA",
        "use": "sig",
        "kid": kid,
        "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    });
    if let Some(e) = endorsements {
        j["endorsements"] = json!(e);
    }
    j
}

/// A tiny HTTP/1.1 server: `/metadata` and `/keys`, one request per connection.
struct JwksServer {
    base: String,
    jwks: Mutex<Value>,
    fail: AtomicBool,
    jwks_fetches: AtomicUsize,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = Arc::new(Self {
            base: format!("http://{addr}"),
            jwks: Mutex::new(json!({ "keys": keys })),
            fail: AtomicBool::new(false),
            jwks_fetches: AtomicUsize::new(0),
        });
        let s = Arc::clone(&server);
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let req = String::from_utf8_lossy(&buf);
                    let path = req.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let (status, body) = s.answer(&path);
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        server
    }

    fn answer(&self, path: &str) -> (&'static str, String) {
        match path {
            "/metadata" => (
                "200 OK",
                json!({
                    "issuer": ISSUER,
                    "jwks_uri": format!("{}/keys", self.base),
                    "id_token_signing_alg_values_supported": ["RS256"],
                })
                .to_string(),
            ),
            "/keys" => {
                self.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                if self.fail.load(Ordering::SeqCst) {
                    ("500 Internal Server Error", "{}".to_owned())
                } else {
                    ("200 OK", self.jwks.lock().expect("lock").to_string())
                }
            }
            _ => ("404 Not Found", "{}".to_owned()),
        }
    }

    fn set_keys(&self, keys: Vec<Value>) {
        *self.jwks.lock().expect("lock") = json!({ "keys": keys });
    }

    fn fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }
}

struct Registry(HashMap<String, Arc<BotTrust>>);

impl BotResolver for Registry {
    fn by_app_id(&self, app_id: &str) -> Option<Arc<BotTrust>> {
        self.0.get(app_id).cloned()
    }
}

struct Fixture {
    server: Arc<JwksServer>,
    validator: InboundValidator,
    registry: Registry,
}

fn cloud(server: &JwksServer) -> Arc<Cloud> {
    Arc::new(Cloud {
        name: "test".into(),
        openid_metadata_url: format!("{}/metadata", server.base),
        token_issuer: ISSUER.into(),
        login_endpoint: "http://127.0.0.1:1".into(),
        multi_tenant_authority: "botframework.com".into(),
        bot_scope: "https://api.botframework.com/.default".into(),
        service_url_hosts: vec!["smba.trafficmanager.net".into()],
    })
}

fn test_config() -> InboundConfig {
    InboundConfig {
        unknown_kid_min_interval: Duration::from_millis(200),
        retry_interval: Duration::from_millis(200),
        ..InboundConfig::default()
    }
}

impl Fixture {
    async fn new(keys: Vec<Value>, config: InboundConfig) -> Self {
        Self::with_server(JwksServer::start(keys).await, config).await
    }

    async fn with_server(server: Arc<JwksServer>, config: InboundConfig) -> Self {
        let cloud = cloud(&server);
        let bot = |bot_id: &str, app_id: &str| {
            Arc::new(BotTrust {
                bot_id: bot_id.into(),
                app_id: app_id.into(),
                cloud: Arc::clone(&cloud),
                service_urls: ServiceUrlAllowlist::new(&cloud.service_url_hosts, &[]),
                tenants: TenantPolicy::new(&[TENANT.to_owned()]),
            })
        };
        let registry = Registry(HashMap::from([
            (APP.to_owned(), bot("one", APP)),
            (OTHER_APP.to_owned(), bot("two", OTHER_APP)),
        ]));
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let validator = InboundValidator::new(client, config, [Arc::clone(&cloud)]);
        validator.start().await;
        Self {
            server,
            validator,
            registry,
        }
    }

    async fn check(&self, token: &str, activity: &Activity) -> Result<Validated, InboundError> {
        let header = format!("Bearer {token}");
        let result = self
            .validator
            .validate(Some(&header), activity, None, &self.registry)
            .await;
        if let Err(e) = &result {
            assert_no_token(e, token);
        }
        result
    }

    async fn check_route(
        &self,
        token: &str,
        activity: &Activity,
        route: &str,
    ) -> Result<Validated, InboundError> {
        let bot = self.registry.by_app_id(route).expect("bot");
        let header = format!("Bearer {token}");
        self.validator
            .validate(Some(&header), activity, Some(&bot), &self.registry)
            .await
    }
}

fn assert_no_token(e: &InboundError, token: &str) {
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(token), "error shows the token: {shown}");
    for part in token.split('.').filter(|p| p.len() > 8) {
        assert!(
            !shown.contains(part),
            "error shows part of the token: {shown}"
        );
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64
}

fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": APP,
        "exp": now() + 3600,
        "nbf": now() - 10,
        "serviceurl": SERVICE_URL,
    })
}

fn sign_with(kid: &str, key: &RsaPrivateKey, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let der = key.to_pkcs1_der().expect("der");
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_der(der.as_bytes())).expect("sign")
}

/// Signed by key 0 as `k1`, with changes to the default claims.
fn token(changes: Value) -> String {
    let mut c = claims();
    for (k, v) in changes.as_object().expect("object") {
        if v.is_null() {
            c.as_object_mut().expect("object").remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    sign_with("k1", &keys()[0], &c)
}

fn activity() -> Activity {
    let mut a = Activity::message("hi");
    a.id = Some("a1".into());
    a.channel_id = Some("msteams".into());
    a.service_url = Some(SERVICE_URL.into());
    a.from = Some(ChannelAccount::new("29:user"));
    a.recipient = Some(ChannelAccount::new("28:bot"));
    let mut conv = ConversationAccount::new("19:conv");
    conv.tenant_id = Some(TENANT.into());
    a.conversation = Some(conv);
    a
}

fn standard_keys() -> Vec<Value> {
    vec![jwk("k1", &keys()[0], Some(&["msteams"]))]
}

async fn fixture() -> Fixture {
    Fixture::new(standard_keys(), test_config()).await
}

fn check_name(r: Result<Validated, InboundError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.check(),
    }
}

#[tokio::test]
async fn valid_token_is_accepted_then_served_from_cache() {
    let f = fixture().await;
    let t = token(json!({}));
    let v = f.check(&t, &activity()).await.expect("valid");
    assert_eq!(v.bot.bot_id, "one");
    assert_eq!(v.tenant_id.as_deref(), Some(TENANT));
    assert!(!v.cached);
    let v = f.check(&t, &activity()).await.expect("valid again");
    assert!(v.cached);
    let st = f.validator.key_store_status();
    assert_eq!(st.len(), 1);
    assert!(st[0].loaded);
    assert_eq!(st[0].key_count, 1);
    assert_eq!(st[0].last_error, None);
}

#[tokio::test]
async fn bearer_scheme_is_exact() {
    let f = fixture().await;
    let t = token(json!({}));
    let a = activity();
    for header in [
        None,
        Some(String::new()),
        Some("Bearer ".to_owned()),
        Some(format!("bearer {t}")),
        Some(format!("Basic {t}")),
        Some(t.clone()),
    ] {
        let e = f
            .validator
            .validate(header.as_deref(), &a, None, &f.registry)
            .await
            .expect_err("refused");
        assert_eq!(
            (e.check(), e.status()),
            ("missing_token", 401),
            "{header:?}"
        );
        assert_no_token(&e, &t);
    }
    let e = f
        .validator
        .validate(Some(&format!("Bearer  {t}")), &a, None, &f.registry)
        .await
        .expect_err("refused");
    assert_eq!(e.check(), "malformed_token");
}

#[tokio::test]
async fn malformed_tokens() {
    let f = fixture().await;
    let a = activity();
    let t = token(json!({}));
    let parts: Vec<&str> = t.split('.').collect();
    for bad in [
        "abc".to_owned(),
        "a.b".to_owned(),
        format!("{t}.x"),
        format!("!!!.{}.{}", parts[1], parts[2]),
        format!("{}.!!!.{}", parts[0], parts[1]),
        // Header without kid.
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
            parts[1],
            parts[2]
        ),
        "x".repeat(20_000),
    ] {
        assert_eq!(
            check_name(f.check(&bad, &a).await),
            "malformed_token",
            "{bad:.40}"
        );
    }
}

#[tokio::test]
async fn alg_none_is_refused() {
    let f = fixture().await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
    for t in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}.sig"),
    ] {
        let e = f.check(&t, &activity()).await.expect_err("refused");
        assert_eq!((e.check(), e.status()), ("unsupported_algorithm", 401));
    }
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let f = fixture().await;
    let public_pem = keys()[0]
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let t = jsonwebtoken::encode(
        &header,
        &claims(),
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .expect("sign");
    assert_eq!(
        check_name(f.check(&t, &activity()).await),
        "unsupported_algorithm"
    );
}

#[tokio::test]
async fn bad_signatures_are_refused() {
    let f = fixture().await;
    // Signed by another key under k1's kid.
    let forged = sign_with("k1", &keys()[1], &claims());
    let e = f.check(&forged, &activity()).await.expect_err("refused");
    assert_eq!((e.check(), e.status()), ("signature", 401));
    // A genuine signature over other claims.
    let t = token(json!({}));
    let parts: Vec<&str> = t.split('.').collect();
    let mut c = claims();
    c["aud"] = json!(OTHER_APP);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(c.to_string()),
        parts[2]
    );
    assert_eq!(
        check_name(f.check(&tampered, &activity()).await),
        "signature"
    );
    // An unregistered aud with a forged signature says `signature`, not
    // `audience`: no probing for registered app ids without a valid token.
    let mut c = claims();
    c["aud"] = json!("nobody");
    let forged = sign_with("k1", &keys()[1], &c);
    assert_eq!(check_name(f.check(&forged, &activity()).await), "signature");
}

#[tokio::test]
async fn issuer_and_audience() {
    let f = fixture().await;
    let a = activity();
    let e = f
        .check(&token(json!({"iss": "https://evil.example"})), &a)
        .await
        .expect_err("refused");
    assert_eq!((e.check(), e.status()), ("issuer", 401));
    assert_eq!(
        check_name(f.check(&token(json!({"iss": null})), &a).await),
        "issuer"
    );
    let e = f
        .check(&token(json!({"aud": "nobody"})), &a)
        .await
        .expect_err("refused");
    assert_eq!((e.check(), e.status()), ("audience", 401));
    assert_eq!(
        check_name(f.check(&token(json!({"aud": null})), &a).await),
        "audience"
    );
    // The route names bot two, the token is for bot one.
    let r = f.check_route(&token(json!({})), &a, OTHER_APP).await;
    assert_eq!(check_name(r), "audience");
    let r = f.check_route(&token(json!({})), &a, APP).await;
    assert_eq!(check_name(r), "ok");
    // An aud array naming the bot is accepted.
    let r = f.check(&token(json!({"aud": ["x", APP]})), &a).await;
    assert_eq!(r.expect("valid").bot.bot_id, "one");
}

#[tokio::test]
async fn clock_skew_of_five_minutes() {
    let f = fixture().await;
    let a = activity();
    let cases = [
        (json!({"exp": now() - 240}), "ok"),
        (json!({"exp": now() - 360}), "expired"),
        (json!({"nbf": now() + 240}), "ok"),
        (json!({"nbf": now() + 360}), "not_yet_valid"),
        (json!({"nbf": null}), "ok"),
        (json!({"exp": null}), "missing_expiry"),
    ];
    for (changes, want) in cases {
        let r = f.check(&token(changes.clone()), &a).await;
        assert_eq!(check_name(r), want, "{changes}");
    }
    let e = f
        .check(&token(json!({"exp": now() - 360})), &a)
        .await
        .expect_err("expired");
    assert_eq!(e.status(), 401);
}

#[tokio::test]
async fn endorsements_are_required() {
    let f = Fixture::new(
        vec![
            jwk("k1", &keys()[0], Some(&["webchat"])),
            jwk("k2", &keys()[1], None),
        ],
        test_config(),
    )
    .await;
    let a = activity();
    let e = f.check(&token(json!({})), &a).await.expect_err("refused");
    assert_eq!((e.check(), e.status()), ("endorsement", 403));
    // A key without any endorsements list fails too (closed default), and says
    // which setting would accept it.
    let t = sign_with("k2", &keys()[1], &claims());
    let e = f.check(&t, &a).await.expect_err("refused");
    assert_eq!((e.check(), e.status()), ("endorsement", 403));
    assert!(
        e.to_string().contains("accept_keys_without_endorsements"),
        "{e}"
    );
    let mut webchat = activity();
    webchat.channel_id = Some("webchat".into());
    assert_eq!(check_name(f.check(&token(json!({})), &webchat).await), "ok");
    let mut none = activity();
    none.channel_id = None;
    assert_eq!(
        check_name(f.check(&token(json!({})), &none).await),
        "endorsement"
    );
}

#[tokio::test]
async fn service_url_claim_host_and_tenant() {
    let f = fixture().await;
    let a = activity();
    let e = f
        .check(&token(json!({"serviceurl": null})), &a)
        .await
        .expect_err("refused");
    assert_eq!((e.check(), e.status()), ("service_url_claim", 401));
    // Exact compare: even a missing trailing slash differs.
    let r = f
        .check(
            &token(json!({"serviceurl": "https://smba.trafficmanager.net/amer"})),
            &a,
        )
        .await;
    assert_eq!(check_name(r), "service_url_claim");

    // Signed for a hostile host, activity agrees: the host allowlist stops it.
    let evil = "https://evil.example/amer/";
    let mut hostile = activity();
    hostile.service_url = Some(evil.into());
    let e = f
        .check(&token(json!({"serviceurl": evil})), &hostile)
        .await
        .expect_err("refused");
    assert_eq!((e.check(), e.status()), ("service_url_host", 403));

    let mut foreign = activity();
    foreign.conversation.as_mut().expect("conv").tenant_id = Some("tenant-b".into());
    let e = f
        .check(&token(json!({})), &foreign)
        .await
        .expect_err("refused");
    assert_eq!((e.check(), e.status()), ("tenant_not_allowed", 403));
    let mut no_tenant = activity();
    no_tenant.conversation.as_mut().expect("conv").tenant_id = None;
    assert_eq!(
        check_name(f.check(&token(json!({})), &no_tenant).await),
        "tenant_not_allowed"
    );
}

/// Each case fails two checks; the earlier one in docs/security.md's order is reported.
#[tokio::test]
async fn checks_run_in_order() {
    let f = fixture().await;
    let evil = "https://evil.example/";
    let mut no_endorsement = activity();
    no_endorsement.channel_id = Some("webchat".into());
    let mut evil_host = activity();
    evil_host.service_url = Some(evil.into());
    let mut evil_host_foreign = evil_host.clone();
    evil_host_foreign
        .conversation
        .as_mut()
        .expect("conv")
        .tenant_id = Some("tenant-b".into());

    let forged_and_wrong_iss = {
        let mut c = claims();
        c["iss"] = json!("https://evil.example");
        sign_with("k1", &keys()[1], &c)
    };
    let cases: Vec<(String, &Activity, &str)> = vec![
        (forged_and_wrong_iss, activity_ref(), "signature"),
        (
            token(json!({"exp": now() - 3600, "iss": "https://evil.example"})),
            activity_ref(),
            "issuer",
        ),
        (
            token(json!({"iss": "https://evil.example", "aud": "nobody"})),
            activity_ref(),
            "issuer",
        ),
        // Lifetime before audience (as botbuilder-js): an expired token answers
        // `expired` whichever bot it names.
        (
            token(json!({"aud": "nobody", "exp": now() - 3600})),
            activity_ref(),
            "expired",
        ),
        (
            token(json!({"aud": "nobody", "exp": null})),
            activity_ref(),
            "missing_expiry",
        ),
        (token(json!({"aud": "nobody"})), &no_endorsement, "audience"),
        (
            token(json!({"exp": now() - 3600})),
            &no_endorsement,
            "expired",
        ),
        (
            token(json!({"nbf": now() + 3600})),
            &no_endorsement,
            "not_yet_valid",
        ),
        (
            token(json!({"serviceurl": "https://other/"})),
            &no_endorsement,
            "endorsement",
        ),
        (token(json!({})), &evil_host, "service_url_claim"),
        (
            token(json!({"serviceurl": evil})),
            &evil_host_foreign,
            "service_url_host",
        ),
    ];
    for (t, a, want) in cases {
        assert_eq!(check_name(f.check(&t, a).await), want);
    }
}

/// Polls for up to 10 s: the machine running the tests may be busy.
async fn eventually(cond: impl Fn() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within 10 s");
}

fn activity_ref() -> &'static Activity {
    static A: OnceLock<Activity> = OnceLock::new();
    A.get_or_init(activity)
}

#[tokio::test]
async fn cached_token_still_gets_every_claim_check() {
    let f = fixture().await;
    let t = token(json!({}));
    assert!(!f.check(&t, &activity()).await.expect("valid").cached);
    assert!(f.check(&t, &activity()).await.expect("valid").cached);

    // Replayed against another serviceUrl: refused although the token is cached.
    let mut replay = activity();
    replay.service_url = Some("https://smba.trafficmanager.net/emea/".into());
    assert_eq!(check_name(f.check(&t, &replay).await), "service_url_claim");
    let mut foreign = activity();
    foreign.conversation.as_mut().expect("conv").tenant_id = Some("tenant-b".into());
    assert_eq!(
        check_name(f.check(&t, &foreign).await),
        "tenant_not_allowed"
    );
    // Replayed at another bot's route.
    assert_eq!(
        check_name(f.check_route(&t, &activity(), OTHER_APP).await),
        "audience"
    );
    // Still cached and valid for what it was issued for.
    assert!(f.check(&t, &activity()).await.expect("valid").cached);

    // Expired within the cache's lifetime (exp + skew): the time check runs again.
    let old = token(json!({"exp": now() - 200}));
    assert!(!f.check(&old, &activity()).await.expect("valid").cached);
    assert!(f.check(&old, &activity()).await.expect("valid").cached);
}

#[tokio::test]
async fn cache_can_be_disabled() {
    let f = Fixture::new(
        standard_keys(),
        InboundConfig {
            cache_capacity: 0,
            ..test_config()
        },
    )
    .await;
    let t = token(json!({}));
    assert!(!f.check(&t, &activity()).await.expect("valid").cached);
    assert!(!f.check(&t, &activity()).await.expect("valid").cached);
}

#[tokio::test]
async fn unknown_kid_refreshes_once_within_the_rate_limit() {
    let f = Fixture::new(
        standard_keys(),
        InboundConfig {
            unknown_kid_min_interval: Duration::from_secs(2),
            ..test_config()
        },
    )
    .await;
    assert_eq!(f.server.fetches(), 1);
    // Right after start the rate limit holds: no refresh at all.
    let stranger = sign_with("k9", &keys()[1], &claims());
    let e = f.check(&stranger, &activity()).await.expect_err("refused");
    assert_eq!((e.check(), e.status()), ("unknown_key", 401));
    assert_eq!(f.server.fetches(), 1);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    // A burst of unknown kids, concurrent then sequential: exactly one refresh.
    let a = activity();
    let results = futures::future::join_all((0..8).map(|_| f.check(&stranger, &a))).await;
    for r in results {
        assert_eq!(check_name(r), "unknown_key");
    }
    for _ in 0..5 {
        assert_eq!(check_name(f.check(&stranger, &a).await), "unknown_key");
    }
    assert_eq!(f.server.fetches(), 2);
    // Known kids are unaffected.
    assert_eq!(check_name(f.check(&token(json!({})), &a).await), "ok");
}

#[tokio::test]
async fn rotation_new_kid_accepted_after_refresh_old_kid_dropped() {
    let f = fixture().await;
    let old = token(json!({}));
    assert_eq!(check_name(f.check(&old, &activity()).await), "ok");

    f.server
        .set_keys(vec![jwk("k2", &keys()[1], Some(&["msteams"]))]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let new = sign_with("k2", &keys()[1], &claims());
    // Unknown kid -> refresh -> accepted.
    assert_eq!(check_name(f.check(&new, &activity()).await), "ok");
    assert_eq!(f.server.fetches(), 2);
    // The old key is no longer published: its tokens fail, cached or not.
    assert_eq!(check_name(f.check(&old, &activity()).await), "unknown_key");
}

#[tokio::test]
async fn failed_refresh_keeps_the_last_good_keys() {
    let f = fixture().await;
    f.server.fail.store(true, Ordering::SeqCst);
    f.validator.refresh_keys().await;
    let st = &f.validator.key_store_status()[0];
    assert!(st.loaded);
    assert_eq!(st.key_count, 1);
    let err = st.last_error.as_deref().expect("error recorded");
    assert!(err.contains("500"), "{err}");
    assert_eq!(f.server.fetches(), 2);
    // A new token (not cached) still verifies with the kept key.
    let t = token(json!({"exp": now() + 1800}));
    let v = f.check(&t, &activity()).await.expect("valid");
    assert!(!v.cached);

    // Recovery clears the error.
    f.server.fail.store(false, Ordering::SeqCst);
    f.validator.refresh_keys().await;
    assert_eq!(f.validator.key_store_status()[0].last_error, None);
}

#[tokio::test]
async fn keys_never_loaded_answer_503_until_they_are() {
    let server = JwksServer::start(standard_keys()).await;
    server.fail.store(true, Ordering::SeqCst);
    let f = Fixture::with_server(server, test_config()).await;
    let st = &f.validator.key_store_status()[0];
    assert!(!st.loaded);
    assert!(st.last_error.is_some());
    let e = f
        .check(&token(json!({})), &activity())
        .await
        .expect_err("refused");
    assert_eq!((e.check(), e.status()), ("keys_unavailable", 503));

    // The background retry loads them once the endpoint works.
    f.server.fail.store(false, Ordering::SeqCst);
    eventually(|| f.validator.key_store_status()[0].loaded).await;
    assert_eq!(
        check_name(f.check(&token(json!({})), &activity()).await),
        "ok"
    );
}

#[tokio::test]
async fn scheduled_refresh_picks_up_new_keys() {
    let f = Fixture::new(
        standard_keys(),
        InboundConfig {
            refresh_interval: Duration::from_millis(300),
            // No unknown-kid refresh can happen in this test.
            unknown_kid_min_interval: Duration::from_secs(3600),
            ..test_config()
        },
    )
    .await;
    f.server.set_keys(vec![
        jwk("k1", &keys()[0], Some(&["msteams"])),
        jwk("k2", &keys()[1], Some(&["msteams"])),
    ]);
    let new = sign_with("k2", &keys()[1], &claims());
    assert_eq!(check_name(f.check(&new, &activity()).await), "unknown_key");
    eventually(|| f.validator.key_store_status()[0].key_count == 2).await;
    assert_eq!(check_name(f.check(&new, &activity()).await), "ok");
}

#[tokio::test]
async fn non_rsa_and_non_signing_keys_are_ignored() {
    let mut enc = jwk("k2", &keys()[1], Some(&["msteams"]));
    enc["use"] = json!("enc");
    let f = Fixture::new(
        vec![
            json!({"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"}),
            enc,
            json!({"kty": "RSA", "kid": "broken"}),
            jwk("k1", &keys()[0], Some(&["msteams"])),
        ],
        test_config(),
    )
    .await;
    assert_eq!(f.validator.key_store_status()[0].key_count, 1);
    let t = sign_with("k2", &keys()[1], &claims());
    assert_eq!(check_name(f.check(&t, &activity()).await), "unknown_key");
}

/// Keys published without an endorsements list (or with an empty one): refused
/// by default, accepted for any channel when the cloud opts in (as Microsoft's
/// SDKs accept them); keys with a list are checked against it either way.
#[tokio::test]
async fn keys_without_endorsements_follow_the_cloud_setting() {
    let published = || {
        vec![
            jwk("k1", &keys()[0], Some(&["webchat"])),
            jwk("k2", &keys()[1], None),
        ]
    };
    let unlisted = sign_with("k2", &keys()[1], &claims());
    let listed = token(json!({}));

    let closed = Fixture::new(published(), test_config()).await;
    assert_eq!(
        check_name(closed.check(&unlisted, &activity()).await),
        "endorsement"
    );
    let st = &closed.validator.key_store_status()[0];
    assert_eq!(st.keys_without_endorsements, 1);
    assert_eq!(st.fetches_with_keys_without_endorsements, 1);

    let open = Fixture::new(
        published(),
        InboundConfig {
            accept_keys_without_endorsements: vec!["test".into()],
            ..test_config()
        },
    )
    .await;
    assert_eq!(check_name(open.check(&unlisted, &activity()).await), "ok");
    let mut webchat = activity();
    webchat.channel_id = Some("webchat".into());
    assert_eq!(check_name(open.check(&unlisted, &webchat).await), "ok");
    // A key WITH a list is still held to it.
    assert_eq!(
        check_name(open.check(&listed, &activity()).await),
        "endorsement"
    );
    // Every later check still runs for the accepted key.
    let mut foreign = activity();
    foreign.conversation.as_mut().expect("conv").tenant_id = Some("tenant-b".into());
    assert_eq!(
        check_name(open.check(&unlisted, &foreign).await),
        "tenant_not_allowed"
    );
    // Naming another cloud does not open this one.
    let other = Fixture::new(
        published(),
        InboundConfig {
            accept_keys_without_endorsements: vec!["public".into()],
            ..test_config()
        },
    )
    .await;
    assert_eq!(
        check_name(other.check(&unlisted, &activity()).await),
        "endorsement"
    );

    // An empty list counts as no list (botbuilder-js checks only non-empty lists).
    let empty = Fixture::new(
        vec![jwk("k2", &keys()[1], Some(&[]))],
        InboundConfig {
            accept_keys_without_endorsements: vec!["test".into()],
            ..test_config()
        },
    )
    .await;
    assert_eq!(
        empty.validator.key_store_status()[0].keys_without_endorsements,
        1
    );
    assert_eq!(check_name(empty.check(&unlisted, &activity()).await), "ok");
}

/// The unknown-kid answer says whether a refresh was tried or skipped.
#[tokio::test]
async fn unknown_kid_answer_says_what_the_refresh_did() {
    let f = Fixture::new(
        standard_keys(),
        InboundConfig {
            unknown_kid_min_interval: Duration::from_secs(1),
            ..test_config()
        },
    )
    .await;
    let stranger = sign_with("k9", &keys()[1], &claims());
    let e = f.check(&stranger, &activity()).await.expect_err("refused");
    let text = e.to_string();
    assert!(text.contains("no key refresh was tried"), "{text}");
    assert!(text.contains("rate limit allows one every 1.0 s"), "{text}");
    assert!(
        !text.contains(&f.server.base),
        "names no metadata URL: {text}"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = f.check(&stranger, &activity()).await.expect_err("refused");
    assert!(e.to_string().contains("refreshed just now"), "{e}");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    f.server.fail.store(true, Ordering::SeqCst);
    let e = f.check(&stranger, &activity()).await.expect_err("refused");
    assert!(e.to_string().contains("tried just now and failed"), "{e}");
}

/// `check_token` runs the checks of the token alone; a path naming no
/// registered bot answers exactly as a registered bot's path does.
#[tokio::test]
async fn check_token_answers_the_same_for_unknown_and_known_bot_paths() {
    use botfleet_auth::inbound::TokenRoute;
    let f = fixture().await;
    let one = f.registry.by_app_id(APP).expect("bot one");
    let two = f.registry.by_app_id(OTHER_APP).expect("bot two");
    let bearer = |t: &str| Some(format!("Bearer {t}"));
    let forged = sign_with("k1", &keys()[1], &claims());
    let stale = token(json!({"exp": now() - 3600}));
    let for_one = token(json!({}));
    let for_two = token(json!({"aud": OTHER_APP}));
    // Without a valid token: the same answer, word for word.
    for auth in [
        None,
        Some("Basic abc".to_owned()),
        bearer("not.a.jwt"),
        bearer(&forged),
        bearer(&stale),
    ] {
        let known = check_token(&f, auth.clone(), TokenRoute::Bot(&two)).await;
        let unknown = check_token(&f, auth.clone(), TokenRoute::Unregistered("two")).await;
        assert!(known.is_err(), "{auth:?}");
        assert_eq!(known, unknown, "{auth:?}");
    }
    // A valid token for another bot: `audience` on either path, same words.
    let known = check_token(&f, bearer(&for_one), TokenRoute::Bot(&two)).await;
    let unknown = check_token(&f, bearer(&for_one), TokenRoute::Unregistered("two")).await;
    assert_eq!(check_name_unit(&known), "audience");
    assert_eq!(known, unknown);
    // The right bot's token passes on its path and on the aud-routed path,
    // and never on an unregistered path.
    assert!(check_token(&f, bearer(&for_two), TokenRoute::Bot(&two))
        .await
        .is_ok());
    assert!(check_token(&f, bearer(&for_one), TokenRoute::Any)
        .await
        .is_ok());
    assert!(check_token(&f, bearer(&for_one), TokenRoute::Bot(&one))
        .await
        .is_ok());
    assert_eq!(
        check_name_unit(
            &check_token(&f, bearer(&for_one), TokenRoute::Unregistered("one-typo")).await
        ),
        "audience"
    );
}

async fn check_token(
    f: &Fixture,
    auth: Option<String>,
    route: botfleet_auth::inbound::TokenRoute<'_>,
) -> Result<(), InboundError> {
    f.validator
        .check_token(auth.as_deref(), route, &f.registry)
        .await
}

fn check_name_unit(r: &Result<(), InboundError>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(e) => e.check(),
    }
}

#[test]
fn token_claims_for_log_are_sanitised_and_never_the_token() {
    use botfleet_auth::inbound::TokenClaimsForLog;
    let t = token(
        json!({"iss": "https://api.botframework.test\n\u{1b}[31mX", "aud": ["a", "b", "c", "d", "e"]}),
    );
    let got = TokenClaimsForLog::from_authorization(Some(&format!("Bearer {t}")));
    assert_eq!(got.aud, vec!["a", "b", "c", "d"]);
    let iss = got.iss.expect("iss");
    assert!(!iss.chars().any(char::is_control), "{iss:?}");
    let long = token(json!({"aud": "x".repeat(500)}));
    let got = TokenClaimsForLog::from_authorization(Some(&format!("Bearer {long}")));
    assert_eq!(got.aud[0].len(), 64);
    assert_eq!(
        TokenClaimsForLog::from_authorization(Some("Bearer garbage")),
        TokenClaimsForLog::default()
    );
    assert_eq!(
        TokenClaimsForLog::from_authorization(None),
        TokenClaimsForLog::default()
    );
}

/// Property tests: hostile tokens and activities never panic the validator,
/// never pass unless they are exactly what was issued, and always fail with a
/// 401/403 check (keys are loaded, so never a 5xx).
mod hostile {
    use super::*;
    use proptest::prelude::*;

    /// One validator (and its JWKS server) for every case: a multi-thread
    /// runtime keeps the server task running between `block_on` calls.
    fn shared() -> &'static (tokio::runtime::Runtime, Fixture) {
        static SHARED: OnceLock<(tokio::runtime::Runtime, Fixture)> = OnceLock::new();
        SHARED.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let f = rt.block_on(Fixture::new(
                standard_keys(),
                InboundConfig {
                    // Random kids must not turn the test into a JWKS load test.
                    unknown_kid_min_interval: Duration::from_secs(3600),
                    ..test_config()
                },
            ));
            (rt, f)
        })
    }

    fn run(auth: Option<&str>, activity: &Activity) -> Result<Validated, InboundError> {
        let (rt, f) = shared();
        rt.block_on(f.validator.validate(auth, activity, None, &f.registry))
    }

    fn assert_refusal(e: &InboundError) {
        assert!(
            matches!(e.status(), 401 | 403),
            "{} answered {}",
            e.check(),
            e.status()
        );
    }

    fn valid_token() -> &'static str {
        static T: OnceLock<String> = OnceLock::new();
        T.get_or_init(|| token(json!({"exp": now() + 7200})))
    }

    /// Any JSON value, a few levels deep.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|n| json!(n)),
            ".{0,40}".prop_map(Value::String),
            Just(json!(APP)),
            Just(json!(ISSUER)),
            Just(json!(SERVICE_URL)),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Random header values, bearer or not.
        #[test]
        fn random_authorization_headers_are_refused(
            raw in prop::collection::vec(any::<u8>(), 0..600),
            bearer in any::<bool>(),
        ) {
            let text = String::from_utf8_lossy(&raw);
            let header = if bearer { format!("Bearer {text}") } else { text.into_owned() };
            let e = run(Some(&header), activity_ref()).expect_err("random header accepted");
            assert_refusal(&e);
        }

        /// A real token with bytes flipped, inserted, removed or cut off: refused
        /// unless the mutation gave back the very same token.
        #[test]
        fn mutated_tokens_are_refused(
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 1..4),
        ) {
            let original = valid_token();
            let mut t = original.as_bytes().to_vec();
            for (at, op, byte) in edits {
                if t.is_empty() { break; }
                let i = at.index(t.len());
                // Mostly token-alphabet bytes, so mutations reach the deeper checks.
                let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
                let b = if byte < 200 { alphabet[usize::from(byte) % alphabet.len()] } else { byte };
                match op {
                    0 => t[i] = b,
                    1 => t.insert(i, b),
                    2 => { t.remove(i); }
                    _ => t.truncate(i),
                }
            }
            let mutated = String::from_utf8_lossy(&t).into_owned();
            let got = run(Some(&format!("Bearer {mutated}")), activity_ref());
            if mutated == original {
                prop_assert!(got.is_ok());
            } else {
                let e = got.expect_err("a mutated token was accepted");
                assert_refusal(&e);
                // (A token cut to a few characters is a substring of any message.)
                if mutated.len() >= 16 {
                    assert_no_token(&e, &mutated);
                }
            }
        }

        /// Claims of any type and value, signed with the published key: accepted
        /// only when every claim is what the bot requires.
        #[test]
        fn arbitrary_signed_claims_are_checked(
            iss in prop_oneof![Just(json!(ISSUER)), json_value()],
            aud in prop_oneof![Just(json!(APP)), Just(json!([APP, "x"])), json_value()],
            exp in prop_oneof![Just(json!(now() + 3600)), json_value()],
            nbf in prop_oneof![Just(Value::Null), Just(json!(now() - 60)), json_value()],
            serviceurl in prop_oneof![Just(json!(SERVICE_URL)), json_value()],
        ) {
            let mut c = json!({});
            for (k, v) in [("iss", &iss), ("aud", &aud), ("exp", &exp), ("nbf", &nbf), ("serviceurl", &serviceurl)] {
                if !v.is_null() { c[k] = v.clone(); }
            }
            let t = sign_with("k1", &keys()[0], &c);
            match run(Some(&format!("Bearer {t}")), activity_ref()) {
                Ok(v) => {
                    prop_assert_eq!(&iss, &json!(ISSUER));
                    prop_assert_eq!(&serviceurl, &json!(SERVICE_URL));
                    prop_assert_eq!(v.bot.app_id.as_str(), APP);
                    let exp = exp.as_f64().expect("accepted exp is a number");
                    prop_assert!(exp + 300.0 >= now() as f64);
                    if let Some(nbf) = nbf.as_f64() { prop_assert!(nbf - 300.0 <= now() as f64); }
                    else { prop_assert!(nbf.is_null()); }
                }
                Err(e) => assert_refusal(&e),
            }
        }

        /// Activities with any channel, serviceUrl and tenant under a valid token:
        /// accepted only for msteams, the signed serviceUrl and the allowed tenant.
        #[test]
        fn hostile_activities_under_a_valid_token(
            channel in prop::option::of(prop_oneof![Just("msteams".to_owned()), ".{0,12}"]),
            service_url in prop::option::of(prop_oneof![Just(SERVICE_URL.to_owned()), ".{0,40}"]),
            tenant in prop::option::of(prop_oneof![Just(TENANT.to_owned()), ".{0,12}"]),
        ) {
            let mut a = activity();
            a.channel_id = channel.clone();
            a.service_url = service_url.clone();
            a.conversation.as_mut().expect("conv").tenant_id = tenant.clone();
            match run(Some(&format!("Bearer {}", valid_token())), &a) {
                Ok(v) => {
                    prop_assert_eq!(channel.as_deref(), Some("msteams"));
                    prop_assert_eq!(service_url.as_deref(), Some(SERVICE_URL));
                    prop_assert_eq!(v.tenant_id.as_deref(), Some(TENANT));
                }
                Err(e) => assert_refusal(&e),
            }
        }
    }
}

/// A validator without any cloud (no bots configured) answers 401 `audience`,
/// not 503: no key will ever load, and no bot could accept the token.
#[tokio::test]
async fn no_clouds_means_no_bot_not_unavailable() {
    use botfleet_auth::inbound::TokenRoute;
    let validator = InboundValidator::new(reqwest::Client::new(), test_config(), []);
    validator.start().await;
    let registry = Registry(HashMap::new());
    let header = format!("Bearer {}", token(json!({})));
    for route in [TokenRoute::Any, TokenRoute::Unregistered("nobody")] {
        let e = validator
            .check_token(Some(&header), route, &registry)
            .await
            .expect_err("refused");
        assert_eq!((e.check(), e.status()), ("audience", 401));
    }
    let e = validator
        .validate(Some(&header), &activity(), None, &registry)
        .await
        .expect_err("refused");
    assert_eq!((e.check(), e.status()), ("audience", 401));
    let e = validator
        .check_token(None, TokenRoute::Any, &registry)
        .await
        .expect_err("refused");
    assert_eq!(e.check(), "missing_token");
}
