//! The admin API over real HTTP: an actix server on a loopback port serving
//! `botfleet_server::admin` (memory stores; one test on Redis), called with
//! reqwest. Every log line of the server crates is captured so tests can prove
//! no secret reaches it.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use botfleet_auth::Secret;
use botfleet_server::admin::{self, AdminConfig, AdminState, AdminStores, TokenStatusSource};
use botfleet_server::settings::BotSettings;
use botfleet_store::admin::{ApiKeyRecord, ApiKeyStore, AuditLog, MemoryAdminStore, Role};
use botfleet_store::conversations::{ConversationStore, MemoryConversationStore};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const BOOTSTRAP: &str = "test-bootstrap-key-0123456789abcdef-XYZ";
const APP_A: &str = "00000000-0000-4000-8000-00000000000a";
const APP_B: &str = "00000000-0000-4000-8000-00000000000b";
const APP_CONFIG: &str = "00000000-0000-4000-8000-0000000000cf";
const TENANT_1: &str = "11111111-1111-4111-8111-111111111111";
const TENANT_2: &str = "22222222-2222-4222-8222-222222222222";

// ---------------------------------------------------------------- harness --

/// Everything the server crates log, at every level.
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        struct W;
        impl std::io::Write for W {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if let Some(l) = LOGS.get() {
                    l.lock().unwrap().extend_from_slice(buf);
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "botfleet_server=trace,botfleet_store=trace,botfleet_auth=trace,actix_web=debug,actix_http=debug",
            ))
            .with_ansi(false)
            .with_writer(|| W)
            .try_init();
        Mutex::new(Vec::new())
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

struct Admin {
    url: String,
    state: Arc<AdminState>,
    store: Arc<MemoryAdminStore>,
    conversations: Arc<MemoryConversationStore>,
    handle: actix_web::dev::ServerHandle,
}

impl Drop for Admin {
    fn drop(&mut self) {
        // The stop command is sent at once; nobody needs to wait for it.
        drop(self.handle.stop(false));
    }
}

struct Options {
    config_bots: Vec<BotSettings>,
    tokens: Arc<dyn TokenStatusSource>,
    config: AdminConfig,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config_bots: vec![config_bot()],
            tokens: Arc::new(()),
            config: AdminConfig {
                bootstrap_key: Some(Secret::new(BOOTSTRAP)),
                ..AdminConfig::default()
            },
        }
    }
}

fn config_bot() -> BotSettings {
    serde_json::from_value(json!({
        "id": "from-config",
        "app_id": APP_CONFIG,
        "app_password": "config-bot-secret-Q7",
        "handler": {"kind": "echo"},
    }))
    .unwrap()
}

async fn start() -> Admin {
    start_with(Options::default()).await
}

async fn start_with(o: Options) -> Admin {
    let store = Arc::new(MemoryAdminStore::new());
    let conversations = Arc::new(MemoryConversationStore::new());
    let stores = AdminStores::from_one(store.clone(), conversations.clone());
    serve(stores, o, store, conversations).await
}

async fn serve(
    stores: AdminStores,
    o: Options,
    store: Arc<MemoryAdminStore>,
    conversations: Arc<MemoryConversationStore>,
) -> Admin {
    logs();
    let state = Arc::new(AdminState::new(stores, o.config_bots, o.tokens, o.config).unwrap());
    let data = web::Data::from(state.clone());
    let server = HttpServer::new(move || {
        let data = data.clone();
        App::new().configure(move |c| admin::configure(c, data))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Admin {
        url: format!("http://{addr}/admin/v1"),
        state,
        store,
        conversations,
        handle,
    }
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
    text: String,
}

impl Answer {
    fn check(&self) -> &str {
        self.body["check"].as_str().unwrap_or("")
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    #[track_caller]
    fn expect(&self, status: u16, check: &str) -> &Self {
        assert_eq!(
            (self.status.as_u16(), self.check()),
            (status, check),
            "{}",
            self.text
        );
        self
    }
}

fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .build()
        .unwrap()
}

async fn call_with(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let mut req = client.request(method, url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

impl Admin {
    async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        self.call_h(method, path, key, &[], body).await
    }

    async fn call_h(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Answer {
        static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
        let client = CLIENT.get_or_init(reqwest::Client::new);
        call_with(
            client,
            method,
            &format!("{}{path}", self.url),
            key,
            headers,
            body,
        )
        .await
    }

    async fn get(&self, path: &str, key: &str) -> Answer {
        self.call(Method::GET, path, Some(key), None).await
    }

    /// Creates a key through the API with the bootstrap key; returns the key.
    async fn key(&self, body: Value) -> String {
        let a = self
            .call(Method::POST, "/keys", Some(BOOTSTRAP), Some(body))
            .await;
        a.expect(201, "");
        a.body["key"].as_str().unwrap().to_owned()
    }

    async fn audit(&self) -> Vec<Value> {
        let a = self.get("/audit?limit=1000", BOOTSTRAP).await;
        a.expect(200, "");
        a.body["items"].as_array().unwrap().clone()
    }
}

fn registration(id: &str, app_id: &str) -> Value {
    json!({
        "id": id,
        "app_id": app_id,
        "credential": {"kind": "secret", "secret": format!("client-secret-of-{id}-Zq9")},
        "tenant_id": TENANT_1,
        "handler": {"kind": "webhook", "url": "https://logic.example/hook", "secret": format!("webhook-secret-of-{id}-0123456789")},
    })
}

// ------------------------------------------------------------------ tests --

#[actix_web::test]
async fn no_key_is_refused_and_audited() {
    let a = start().await;
    let r = a.call(Method::GET, "/bots", None, None).await;
    r.expect(401, "api_key_missing");
    assert!(
        r.header("www-authenticate").starts_with("Bearer"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("content-type"), "application/problem+json");
    assert_eq!(r.body["type"], "urn:botfleet:problem:api_key_missing");
    a.call_h(
        Method::GET,
        "/bots",
        None,
        &[("authorization", "Basic YWRtaW46YWRtaW4=")],
        None,
    )
    .await
    .expect(401, "api_key_missing");
    let audit = a.audit().await;
    let denied: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "bots.list" && e["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 2, "{audit:?}");
    assert_eq!(denied[0]["status"], 401);
    assert!(denied[0]["key_id"].is_null());
    assert_eq!(denied[0]["client"], "127.0.0.1");
    assert_eq!(denied[0]["request_id"].as_str().unwrap().len(), 36);
}

#[actix_web::test]
async fn wrong_keys_are_refused() {
    let a = start().await;
    let good = a.key(json!({"role": "reader"})).await;
    // The right id with a wrong secret, an unknown id, garbage, the bootstrap
    // key with one character changed.
    let id = &good[..12];
    let wrong_secret = format!("{id}_{}", "A".repeat(43));
    let mut near_bootstrap = BOOTSTRAP.to_string();
    near_bootstrap.pop();
    near_bootstrap.push('Q');
    for k in [
        wrong_secret.as_str(),
        "bfk_aaaaaaaa_nope",
        "garbage",
        near_bootstrap.as_str(),
    ] {
        let r = a.get("/bots", k).await;
        r.expect(401, "api_key_invalid");
        assert!(r.header("www-authenticate").contains("invalid_token"));
    }
    a.get("/bots", &good).await.expect(200, "");
    // The refused attempt with a known id names the key in the audit log.
    let audit = a.audit().await;
    assert!(audit
        .iter()
        .any(|e| e["key_id"] == id && e["outcome"] == "denied" && e["status"] == 401));
}

#[actix_web::test]
async fn expired_key_is_refused() {
    let a = start().await;
    let new = admin::auth::generate_key();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    a.store
        .create(&ApiKeyRecord {
            id: new.id.clone(),
            secret_hash: new.secret_hash.clone(),
            role: Role::Admin,
            bots: None,
            description: None,
            created_at: now - 10_000,
            created_by: "bootstrap".into(),
            expires_at: Some(now - 1_000),
            revoked_at: None,
        })
        .await
        .unwrap();
    let r = a.get("/bots", new.key.expose()).await;
    r.expect(401, "api_key_expired");
    assert!(r.body["detail"].as_str().unwrap().contains(&new.id));
    let keys = a.get("/keys", BOOTSTRAP).await;
    let listed = keys.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == new.id.as_str())
        .unwrap()
        .clone();
    assert_eq!(listed["state"], "expired");
    // Creating a key that expires in the past is refused, naming the field.
    let r = a
        .call(
            Method::POST,
            "/keys",
            Some(BOOTSTRAP),
            Some(json!({"role": "reader", "expires_at": "2001-01-01T00:00:00Z"})),
        )
        .await;
    r.expect(400, "invalid_field");
    assert_eq!(r.body["field"], "expires_at");
}

#[actix_web::test]
async fn revoked_key_is_refused_everywhere_at_once() {
    let a = start().await;
    let k = a
        .key(json!({"role": "operator", "description": "ci pipeline", "expires_at": "2999-01-01T00:00:00Z"}))
        .await;
    assert!(k.starts_with("bfk_") && k.len() == 12 + 1 + 43, "{k}");
    a.get("/bots", &k).await.expect(200, "");
    let id = &k[..12];
    let listed = a.get("/keys", BOOTSTRAP).await;
    let entry = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(entry["state"], "active");
    assert_eq!(entry["created_by"], "bootstrap");
    assert_eq!(entry["expires_at"], "2999-01-01T00:00:00.000Z");
    assert!(
        !listed.text.contains(&k[13..]),
        "the key is shown only once"
    );
    assert!(!listed.text.contains("secret_hash"));
    a.call(
        Method::DELETE,
        &format!("/keys/{id}"),
        Some(BOOTSTRAP),
        None,
    )
    .await
    .expect(204, "");
    let r = a.get("/bots", &k).await;
    r.expect(401, "api_key_revoked");
    // Again: idempotent. An unknown key: 404.
    a.call(
        Method::DELETE,
        &format!("/keys/{id}"),
        Some(BOOTSTRAP),
        None,
    )
    .await
    .expect(204, "");
    a.call(Method::DELETE, "/keys/bfk_zzzzzzzz", Some(BOOTSTRAP), None)
        .await
        .expect(404, "key_not_found");
    let audit = a.audit().await;
    assert!(audit.iter().any(|e| e["action"] == "keys.create"
        && e["target"] == id
        && e["outcome"] == "ok"
        && e["status"] == 201
        && e["key_id"] == "bootstrap"
        && e["role"] == "admin"));
    assert!(audit
        .iter()
        .any(|e| e["action"] == "keys.revoke" && e["target"] == id && e["status"] == 204));
}

#[actix_web::test]
async fn roles_decide_what_a_key_may_do() {
    let a = start().await;
    let sender = a.key(json!({"role": "sender"})).await;
    let reader = a.key(json!({"role": "reader"})).await;
    let operator = a.key(json!({"role": "operator"})).await;

    // A sender key on bot management: 403, audited with its id and role.
    let r = a
        .call(
            Method::POST,
            "/bots",
            Some(&sender),
            Some(registration("s1", APP_A)),
        )
        .await;
    r.expect(403, "forbidden");
    assert!(
        r.body["detail"].as_str().unwrap().contains("sender"),
        "{}",
        r.text
    );
    a.call_h(
        Method::DELETE,
        "/bots/from-config",
        Some(&sender),
        &[("if-match", "*")],
        None,
    )
    .await
    .expect(403, "forbidden");
    // ... it still reads bots.
    a.get("/bots", &sender).await.expect(200, "");
    a.get("/bots/from-config/token", &sender)
        .await
        .expect(403, "forbidden");
    a.get("/bots/from-config/token", &reader)
        .await
        .expect(200, "");
    a.get("/audit", &reader).await.expect(403, "forbidden");
    a.get("/audit", &operator).await.expect(200, "");
    a.get("/keys", &operator).await.expect(403, "forbidden");
    a.call(
        Method::POST,
        "/keys",
        Some(&operator),
        Some(json!({"role": "admin"})),
    )
    .await
    .expect(403, "forbidden");
    a.call(
        Method::POST,
        "/bots",
        Some(&operator),
        Some(registration("op1", APP_A)),
    )
    .await
    .expect(201, "");

    let audit = a.audit().await;
    let sender_id = &sender[..12];
    let denied: Vec<&Value> = audit
        .iter()
        .filter(|e| e["key_id"] == sender_id && e["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 3, "{denied:?}");
    assert!(denied
        .iter()
        .all(|e| e["role"] == "sender" && e["status"] == 403));
    assert_eq!(denied[0]["action"], "bots.create");
    assert_eq!(denied[1]["action"], "bots.delete");
    assert_eq!(denied[1]["target"], "from-config");
}

#[actix_web::test]
async fn a_key_scoped_to_bot_a_cannot_reach_bot_b() {
    let a = start().await;
    for (id, app) in [("bot-a", APP_A), ("bot-b", APP_B)] {
        a.call(
            Method::POST,
            "/bots",
            Some(BOOTSTRAP),
            Some(registration(id, app)),
        )
        .await
        .expect(201, "");
    }
    let scoped = a.key(json!({"role": "operator", "bots": ["bot-a"]})).await;
    a.get("/bots/bot-a", &scoped).await.expect(200, "");
    for path in [
        "/bots/bot-b",
        "/bots/bot-b/tenants",
        "/bots/bot-b/conversations",
        "/bots/bot-b/token",
        // Existence is not revealed: an unknown bot outside the scope is 403 too.
        "/bots/nope",
        "/audit",
        "/keys",
    ] {
        a.get(path, &scoped).await.expect(403, "forbidden");
    }
    let list = a.get("/bots", &scoped).await;
    let ids: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["bot-a"]);
    // Nor create or change bot B.
    a.call(
        Method::POST,
        "/bots",
        Some(&scoped),
        Some(registration(
            "bot-c",
            "00000000-0000-4000-8000-00000000000c",
        )),
    )
    .await
    .expect(403, "forbidden");
    a.call_h(
        Method::PATCH,
        "/bots/bot-b",
        Some(&scoped),
        &[("if-match", "*")],
        Some(json!({"allowed_tenants": []})),
    )
    .await
    .expect(403, "forbidden");
    // A scoped admin manages no keys (it could mint an unscoped one).
    let scoped_admin = a.key(json!({"role": "admin", "bots": ["bot-a"]})).await;
    a.call(
        Method::POST,
        "/keys",
        Some(&scoped_admin),
        Some(json!({"role": "admin"})),
    )
    .await
    .expect(403, "forbidden");
}

#[actix_web::test]
async fn invalid_registrations_name_the_field() {
    let a = start().await;
    let post = |body: Value| a.call(Method::POST, "/bots", Some(BOOTSTRAP), Some(body));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut r = registration("v1", APP_A);
        f(&mut r);
        r
    };
    let cases: Vec<(Value, &str, &str)> = vec![
        (with(&|r| r["app_id"] = json!("my-bot")), "app_id", "GUID"),
        (
            with(&|r| r["cloud"] = json!("mars")),
            "cloud",
            "public, gcch, dod, china",
        ),
        (
            with(&|r| r["handler"]["url"] = json!("http://logic.example/hook")),
            "handler.url",
            "http",
        ),
        (
            with(&|r| r["colour"] = json!("blue")),
            "colour",
            "unknown field",
        ),
        (
            with(&|r| r["handler"]["retries"] = json!(3)),
            "handler.retries",
            "unknown field",
        ),
        (
            with(&|r| r["handler"] = json!({"kind": "carrier-pigeon"})),
            "handler.kind",
            "webhook",
        ),
        (
            with(&|r| r["id"] = json!("has space")),
            "id",
            "letters, digits",
        ),
        (
            with(&|r| r["handler"]["secret"] = json!("short")),
            "handler.secret",
            "16 characters",
        ),
        (with(&|r| r["app_id"] = json!(42)), "app_id", "string"),
    ];
    for (body, field, hint) in cases {
        let r = post(body).await;
        r.expect(400, "invalid_field");
        assert_eq!(r.body["field"], field, "{}", r.text);
        assert!(
            r.body["detail"].as_str().unwrap().contains(hint),
            "{field}: {}",
            r.text
        );
    }
    // Not JSON, not JSON content, too large.
    let r = a
        .call_h(
            Method::POST,
            "/bots",
            Some(BOOTSTRAP),
            &[("content-type", "application/json")],
            None,
        )
        .await;
    r.expect(400, "malformed_json");
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/bots", a.url))
        .bearer_auth(BOOTSTRAP)
        .header("content-type", "text/plain")
        .body("id=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let big = json!({"id": "x".repeat(70_000)});
    post(big).await.expect(413, "body_too_large");
    // Unknown query parameters are refused too.
    let r = a.get("/bots?limit=5&colour=blue", BOOTSTRAP).await;
    r.expect(400, "invalid_query");
    assert_eq!(r.body["field"], "colour");
    let r = a.get("/bots?limit=0", BOOTSTRAP).await;
    r.expect(400, "invalid_query");
    assert_eq!(r.body["field"], "limit");
    let r = a.get("/bots?limit=many", BOOTSTRAP).await;
    r.expect(400, "invalid_query");
    assert_eq!(r.body["field"], "limit");
    // Nothing was stored; every refusal of a change was audited as an error.
    assert!(a.get("/bots/v1", BOOTSTRAP).await.status == 404);
    let audit = a.audit().await;
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["action"] == "bots.create" && e["outcome"] == "error")
            .count(),
        12
    );
}

/// A PKCS#8 PEM RSA key, as a certificate credential's `private_key_file` holds.
fn rsa_key_pem() -> String {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
}

fn certificate_registration(id: &str, app_id: &str, key_file: &str) -> Value {
    json!({
        "id": id,
        "app_id": app_id,
        "handler": {"kind": "echo"},
        "credential": {
            "kind": "certificate",
            "private_key_file": key_file,
            "thumbprint": "00112233445566778899aabbccddeeff00112233",
        },
    })
}

#[actix_web::test]
async fn a_registration_cannot_probe_the_hosts_files() {
    // Layout: allowed/ (admin.credential_dirs) and outside/, each with a key.
    let root = tempfile::tempdir().unwrap();
    let allowed = root.path().join("allowed");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(allowed.join("a-directory")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let pem = rsa_key_pem();
    std::fs::write(allowed.join("bot.key.pem"), &pem).unwrap();
    std::fs::write(outside.join("bot.key.pem"), &pem).unwrap();
    std::os::unix::fs::symlink(outside.join("bot.key.pem"), allowed.join("link.pem")).unwrap();
    let unreadable = allowed.join("unreadable.pem");
    std::fs::write(&unreadable, &pem).unwrap();
    std::fs::set_permissions(
        &unreadable,
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    // Root reads a mode-000 file anyway: then only the other unreadable cases count.
    let unreadable_for_us = std::fs::read(&unreadable).is_err();
    let p = |p: &std::path::Path| p.to_str().unwrap().to_owned();

    // Default: no directory allowed, so no file-based credential, and the
    // answer says which setting allows them, without looking at the path.
    let closed = start().await;
    let operator = closed.key(json!({"role": "operator"})).await;
    let r = closed
        .call(
            Method::POST,
            "/bots",
            Some(&operator),
            Some(certificate_registration(
                "c1",
                APP_A,
                &p(&allowed.join("bot.key.pem")),
            )),
        )
        .await;
    r.expect(400, "invalid_field");
    assert_eq!(r.body["field"], "credential.private_key_file", "{}", r.text);
    assert!(r.text.contains("admin.credential_dirs"), "{}", r.text);

    let a = start_with(Options {
        config: AdminConfig {
            bootstrap_key: Some(Secret::new(BOOTSTRAP)),
            credential_dirs: vec![allowed.clone()],
            ..AdminConfig::default()
        },
        ..Options::default()
    })
    .await;
    let operator = a.key(json!({"role": "operator"})).await;
    let mut refused = vec![
        p(&allowed.join("nonexistent.pem")),
        p(&outside.join("bot.key.pem")),
        format!("{}/../outside/bot.key.pem", p(&allowed)),
        p(&allowed.join("link.pem")),
        p(&allowed.join("a-directory")),
        p(&allowed),
        "/proc/self/environ".into(),
        "/nonexistent/x".into(),
        "/root".into(),
    ];
    if unreadable_for_us {
        refused.push(p(&unreadable));
    }
    let mut answers = Vec::new();
    for path in &refused {
        let r = a
            .call(
                Method::POST,
                "/bots",
                Some(&operator),
                Some(certificate_registration("c1", APP_A, path)),
            )
            .await;
        r.expect(400, "invalid_field");
        assert_eq!(r.body["field"], "credential.private_key_file", "{}", r.text);
        assert!(
            !r.text.contains("os error") && !r.text.contains("RSA"),
            "{path}: {}",
            r.text
        );
        // One answer whatever the path: only the caller's own text differs.
        answers.push(
            r.body["detail"]
                .as_str()
                .unwrap()
                .replace(&format!("`{path}`"), "`PATH`"),
        );
    }
    assert!(answers.iter().all(|d| *d == answers[0]), "{answers:#?}");
    assert!(answers[0].contains(&p(&allowed)), "{}", answers[0]);
    // The server log, not the caller, says why.
    let logs = log_text();
    assert!(
        logs.contains("credential file refused") && logs.contains("No such file"),
        "{logs}"
    );

    // The certificate and the workload identity token file are held to it too.
    let mut r = certificate_registration("c1", APP_A, &p(&allowed.join("bot.key.pem")));
    r["credential"] = json!({
        "kind": "certificate",
        "private_key_file": p(&allowed.join("bot.key.pem")),
        "certificate_file": p(&outside.join("bot.key.pem")),
    });
    let r = a
        .call(Method::POST, "/bots", Some(&operator), Some(r))
        .await;
    r.expect(400, "invalid_field");
    assert_eq!(r.body["field"], "credential.certificate_file", "{}", r.text);
    let mut r = certificate_registration("c1", APP_A, "");
    r["credential"] =
        json!({"kind": "workload-identity", "token_file": p(&outside.join("bot.key.pem"))});
    let r = a
        .call(Method::POST, "/bots", Some(&operator), Some(r))
        .await;
    r.expect(400, "invalid_field");
    assert_eq!(r.body["field"], "credential.token_file", "{}", r.text);
    assert_eq!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .replace(&format!("`{}`", p(&outside.join("bot.key.pem"))), "`PATH`"),
        answers[0].replace("private_key_file", "token_file")
    );

    // A key inside the allowed directory works, `..` and all.
    let inside = format!("{}/a-directory/../bot.key.pem", p(&allowed));
    let r = a
        .call(
            Method::POST,
            "/bots",
            Some(&operator),
            Some(certificate_registration("c1", APP_A, &inside)),
        )
        .await;
    r.expect(201, "");
    assert_eq!(r.body["credential"], "certificate", "{}", r.text);
    assert!(!r.text.contains("bot.key.pem"), "{}", r.text);
}

#[actix_web::test]
async fn errors_inside_handler_and_credential_name_the_field() {
    let a = start().await;
    let mut r = registration("t1", APP_A);
    r["handler"]["timeout"] = json!("5 parsecs");
    let r = a
        .call(Method::POST, "/bots", Some(BOOTSTRAP), Some(r))
        .await;
    r.expect(400, "invalid_field");
    assert_eq!(r.body["field"], "handler.timeout", "{}", r.text);
    let mut r = registration("t1", APP_A);
    r["handler"]["allow_insecure_http"] = json!("yes");
    let r = a
        .call(Method::POST, "/bots", Some(BOOTSTRAP), Some(r))
        .await;
    r.expect(400, "invalid_field");
    assert_eq!(r.body["field"], "handler.allow_insecure_http", "{}", r.text);
}

#[actix_web::test]
async fn duplicate_ids_and_app_ids_conflict() {
    let a = start().await;
    let post = |body: Value| a.call(Method::POST, "/bots", Some(BOOTSTRAP), Some(body));
    post(registration("dup", APP_A)).await.expect(201, "");
    let r = post(registration("dup", APP_B)).await;
    r.expect(409, "bot_conflict");
    assert!(r.body["detail"].as_str().unwrap().contains("dup"));
    let r = post(registration("other", APP_A)).await;
    r.expect(409, "bot_conflict");
    assert!(
        r.body["detail"].as_str().unwrap().contains(APP_A),
        "{}",
        r.text
    );
    // The configuration file's bot id and app id are taken too.
    let r = post(registration("from-config", APP_B)).await;
    r.expect(409, "bot_conflict");
    assert!(r.body["detail"].as_str().unwrap().contains("configuration"));
    let r = post(registration("fresh", APP_CONFIG)).await;
    r.expect(409, "bot_conflict");
    assert!(r.body["detail"].as_str().unwrap().contains("from-config"));
}

#[actix_web::test]
async fn etags_guard_every_change() {
    let a = start().await;
    let r = a
        .call(
            Method::POST,
            "/bots",
            Some(BOOTSTRAP),
            Some(registration("e1", APP_A)),
        )
        .await;
    r.expect(201, "");
    assert_eq!(r.header("etag"), "\"1\"");
    assert_eq!(r.header("location"), "/admin/v1/bots/e1");
    assert_eq!(r.body["version"], 1);

    let patch = json!({"allowed_tenants": [TENANT_2]});
    // No If-Match: 428; stale: 412 with the current ETag.
    a.call(
        Method::PATCH,
        "/bots/e1",
        Some(BOOTSTRAP),
        Some(patch.clone()),
    )
    .await
    .expect(428, "precondition_required");
    let r = a
        .call_h(
            Method::PATCH,
            "/bots/e1",
            Some(BOOTSTRAP),
            &[("if-match", "\"1\"")],
            Some(patch.clone()),
        )
        .await;
    r.expect(200, "");
    assert_eq!(r.header("etag"), "\"2\"");
    assert_eq!(r.body["allowed_tenants"], json!([TENANT_2]));
    // The merge patch kept the write-only credential.
    assert_eq!(r.body["credential"], "secret");
    let stored = botfleet_store::admin::BotRegistryStore::get(a.store.as_ref(), "e1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.spec["credential"]["secret"],
        "client-secret-of-e1-Zq9"
    );
    assert_eq!(
        stored.spec["handler"]["secret"],
        "webhook-secret-of-e1-0123456789"
    );

    let r = a
        .call_h(
            Method::PUT,
            "/bots/e1",
            Some(BOOTSTRAP),
            &[("if-match", "\"1\"")],
            Some(registration("e1", APP_A)),
        )
        .await;
    r.expect(412, "precondition_failed");
    assert_eq!(r.body["current_etag"], "\"2\"");
    a.call_h(
        Method::DELETE,
        "/bots/e1",
        Some(BOOTSTRAP),
        &[("if-match", "\"1\"")],
        None,
    )
    .await
    .expect(412, "precondition_failed");
    a.call_h(
        Method::PUT,
        "/bots/e1",
        Some(BOOTSTRAP),
        &[("if-match", "W/\"2\"")],
        Some(registration("e1", APP_A)),
    )
    .await
    .expect(412, "precondition_failed");
    // A PUT may not rename the bot.
    let r = a
        .call_h(
            Method::PUT,
            "/bots/e1",
            Some(BOOTSTRAP),
            &[("if-match", "\"2\"")],
            Some(registration("e2", APP_A)),
        )
        .await;
    r.expect(400, "invalid_field");
    assert_eq!(r.body["field"], "id");
    let r = a
        .call_h(
            Method::PUT,
            "/bots/e1",
            Some(BOOTSTRAP),
            &[("if-match", "\"2\"")],
            Some(registration("e1", APP_B)),
        )
        .await;
    r.expect(200, "");
    assert_eq!(r.header("etag"), "\"3\"");
    assert_eq!(r.body["app_id"], APP_B);
    assert_eq!(a.get("/bots/e1", BOOTSTRAP).await.header("etag"), "\"3\"");
    a.call_h(
        Method::DELETE,
        "/bots/e1",
        Some(BOOTSTRAP),
        &[("if-match", "\"3\"")],
        None,
    )
    .await
    .expect(204, "");
    a.get("/bots/e1", BOOTSTRAP)
        .await
        .expect(404, "bot_not_found");
    // The freed app id can be registered again.
    a.call(
        Method::POST,
        "/bots",
        Some(BOOTSTRAP),
        Some(registration("e3", APP_B)),
    )
    .await
    .expect(201, "");
}

#[actix_web::test]
async fn configuration_bots_are_listed_read_only() {
    let a = start().await;
    let list = a.get("/bots", BOOTSTRAP).await;
    list.expect(200, "");
    let bot = &list.body["items"][0];
    assert_eq!(bot["id"], "from-config");
    assert_eq!(bot["read_only"], true);
    assert_eq!(bot["source"], "configuration");
    assert_eq!(bot["credential"], "secret");
    assert!(bot["version"].is_null());
    assert!(!list.text.contains("config-bot-secret-Q7"));
    for m in [Method::PUT, Method::PATCH] {
        a.call_h(
            m,
            "/bots/from-config",
            Some(BOOTSTRAP),
            &[("if-match", "*")],
            Some(registration("from-config", APP_CONFIG)),
        )
        .await
        .expect(409, "bot_read_only");
    }
    a.call_h(
        Method::DELETE,
        "/bots/from-config",
        Some(BOOTSTRAP),
        &[("if-match", "*")],
        None,
    )
    .await
    .expect(409, "bot_read_only");
}

#[actix_web::test]
async fn secrets_never_leave_in_answers_audit_or_logs() {
    let a = start().await;
    let key = a
        .key(json!({"role": "admin", "description": "leak check"}))
        .await;
    let created = a
        .call(
            Method::POST,
            "/bots",
            Some(&key),
            Some(registration("leak", APP_A)),
        )
        .await;
    created.expect(201, "");
    let patched = a
        .call_h(
            Method::PATCH,
            "/bots/leak",
            Some(&key),
            &[("if-match", "\"1\"")],
            Some(json!({"credential": {"kind": "secret", "secret": "rotated-secret-Vv3"}})),
        )
        .await;
    patched.expect(200, "");
    // A refused registration that carries a secret.
    let mut bad = registration("leak2", "not-a-guid");
    bad["credential"]["secret"] = json!("refused-secret-Kk8");
    a.call(Method::POST, "/bots", Some(&key), Some(bad))
        .await
        .expect(400, "invalid_field");

    let mut seen = vec![created.text, patched.text];
    seen.push(a.get("/bots", &key).await.text);
    seen.push(a.get("/bots/leak", &key).await.text);
    seen.push(a.get("/bots/leak/token", &key).await.text);
    seen.push(a.get("/keys", &key).await.text);
    seen.push(serde_json::to_string(&a.audit().await).unwrap());
    let (entries, _) = AuditLog::list(a.store.as_ref(), None, 1000).await.unwrap();
    seen.push(serde_json::to_string(&entries).unwrap());
    seen.push(log_text());
    let secrets = [
        "client-secret-of-leak-Zq9",
        "webhook-secret-of-leak-0123456789",
        "rotated-secret-Vv3",
        "refused-secret-Kk8",
        "config-bot-secret-Q7",
        BOOTSTRAP,
        &key[13..],
    ];
    for (i, text) in seen.iter().enumerate() {
        for s in secrets {
            assert!(!text.contains(s), "secret {s:?} leaked in item {i}: {text}");
        }
    }
    assert!(seen[2].contains("\"credential\":\"secret\""), "{}", seen[2]);
    // The log did record the calls (so the capture works), by key id.
    assert!(log_text().contains(&key[..12]), "admin calls are logged");
}

#[actix_web::test]
async fn a_thousand_wrong_keys_from_one_address_are_rate_limited() {
    let a = start().await;
    let attacker = client_from([127, 0, 0, 2]);
    let operator = client_from([127, 0, 0, 1]);
    let url = format!("{}/bots", a.url);
    let (mut unauthorized, mut limited) = (0, 0);
    let mut retry_after = 0u64;
    for i in 0..1000 {
        let k = format!("bfk_aaaaaaaa_guess{i}");
        let r = call_with(&attacker, Method::GET, &url, Some(&k), &[], None).await;
        match r.status.as_u16() {
            401 => unauthorized += 1,
            429 => {
                limited += 1;
                assert_eq!(r.check(), "auth_rate_limited");
                retry_after = r.header("retry-after").parse().unwrap();
            }
            s => panic!("unexpected {s}: {}", r.text),
        }
    }
    assert_eq!((unauthorized, limited), (20, 980));
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // The right key from another address still works; from the blocked one not.
    call_with(&operator, Method::GET, &url, Some(BOOTSTRAP), &[], None)
        .await
        .expect(200, "");
    call_with(&attacker, Method::GET, &url, Some(BOOTSTRAP), &[], None)
        .await
        .expect(429, "auth_rate_limited");
    // The audit log holds the 20 refusals and one entry for the block, not 1000.
    let audit = a.audit().await;
    let from_attacker: Vec<&Value> = audit
        .iter()
        .filter(|e| e["client"] == "127.0.0.2")
        .collect();
    assert_eq!(from_attacker.len(), 21);
    assert_eq!(from_attacker[20]["status"], 429);
}

#[actix_web::test]
async fn tenants_and_conversations_with_state_and_paging() {
    let a = start().await;
    a.call(
        Method::POST,
        "/bots",
        Some(BOOTSTRAP),
        Some(registration("conv", APP_A)),
    )
    .await
    .expect(201, "");
    let store = a.conversations.clone();
    for (i, tenant) in [(1, TENANT_1), (2, TENANT_1), (3, TENANT_2)] {
        let reference: botfleet_protocol::ConversationReference = serde_json::from_value(json!({
            "conversation": {"id": format!("a:conv-{i}"), "tenantId": tenant, "conversationType": "personal"},
            "channelId": "msteams",
            "serviceUrl": "https://smba.trafficmanager.net/amer/",
            "user": {"id": format!("29:user-{i}"), "name": "User"},
            "bot": {"id": format!("28:{APP_A}")},
        }))
        .unwrap();
        store
            .upsert("conv", &reference, 1_700_000_000_000 + i)
            .await
            .unwrap();
    }
    store
        .deactivate("conv", "a:conv-2", "uninstalled", 1_700_000_100_000)
        .await
        .unwrap();

    let r = a.get("/bots/conv/tenants", BOOTSTRAP).await;
    r.expect(200, "");
    assert_eq!(r.body["total_conversations"], 3);
    assert_eq!(r.body["active_conversations"], 2);
    assert_eq!(r.body["complete"], true);
    assert_eq!(
        r.body["items"],
        json!([
            {"tenant_id": TENANT_1, "conversations": 2, "active": 1},
            {"tenant_id": TENANT_2, "conversations": 1, "active": 1},
        ])
    );
    let r = a.get("/bots/conv/tenants?limit=1", BOOTSTRAP).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    let next = r.body["next"].as_str().unwrap().to_owned();
    let r = a
        .get(
            &format!("/bots/conv/tenants?limit=1&next={next}"),
            BOOTSTRAP,
        )
        .await;
    assert_eq!(r.body["items"][0]["tenant_id"], TENANT_2);
    assert!(r.body["next"].is_null());

    let r = a
        .get(
            &format!("/bots/conv/conversations?tenant={TENANT_1}&active=false"),
            BOOTSTRAP,
        )
        .await;
    r.expect(200, "");
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", r.text);
    assert_eq!(items[0]["conversation_id"], "a:conv-2");
    assert_eq!(items[0]["active"], false);
    assert_eq!(items[0]["inactive_reason"], "uninstalled");
    assert_eq!(items[0]["inactive_since"], "2023-11-14T22:15:00.000Z");
    assert_eq!(
        items[0]["reference"]["serviceUrl"],
        "https://smba.trafficmanager.net/amer/"
    );

    // Paging through everything, one per page.
    let mut ids = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(n) => format!("/bots/conv/conversations?limit=1&next={n}"),
            None => "/bots/conv/conversations?limit=1".to_string(),
        };
        let r = a.get(&path, BOOTSTRAP).await;
        r.expect(200, "");
        for c in r.body["items"].as_array().unwrap() {
            ids.push(c["conversation_id"].as_str().unwrap().to_owned());
        }
        match r.body["next"].as_str() {
            Some(n) => next = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(ids, ["a:conv-1", "a:conv-2", "a:conv-3"]);
    a.get("/bots/conv/conversations?next=%00garbage", BOOTSTRAP)
        .await
        .expect(400, "invalid_cursor");
    a.get("/bots/nope/conversations", BOOTSTRAP)
        .await
        .expect(404, "bot_not_found");
    a.get("/bots/conv/conversations?active=maybe", BOOTSTRAP)
        .await
        .expect(400, "invalid_query");
}

/// A provider that hands out a fixed token, to fill a real token cache.
struct FixedToken(botfleet_auth::outbound::TokenKey);

#[async_trait::async_trait]
impl botfleet_auth::outbound::TokenProvider for FixedToken {
    fn key(&self) -> &botfleet_auth::outbound::TokenKey {
        &self.0
    }
    fn kind(&self) -> &'static str {
        "client_secret"
    }
    async fn fetch(
        &self,
    ) -> Result<botfleet_auth::outbound::AccessToken, botfleet_auth::outbound::TokenError> {
        let now = std::time::SystemTime::now();
        Ok(botfleet_auth::outbound::AccessToken {
            token: Secret::new("eyJ-the-access-token-Mm5"),
            expires_at: now + Duration::from_secs(3600),
            obtained_at: now,
        })
    }
}

#[actix_web::test]
async fn token_status_shows_state_never_the_token() {
    use botfleet_auth::outbound::{TokenCache, TokenCacheConfig, TokenKey};
    let cache = TokenCache::new(TokenCacheConfig::default());
    let handle = cache.register(Arc::new(FixedToken(TokenKey::new(
        "public",
        "botframework.com",
        APP_CONFIG,
        "https://api.botframework.com/.default",
    ))));
    let a = start_with(Options {
        tokens: Arc::new(cache),
        ..Options::default()
    })
    .await;
    let r = a.get("/bots/from-config/token", BOOTSTRAP).await;
    r.expect(200, "");
    assert_eq!(r.body["cached"], false);
    assert_eq!(r.body["entries"][0]["cached"], false);
    handle.token().await.unwrap();
    let r = a.get("/bots/from-config/token", BOOTSTRAP).await;
    assert_eq!(r.body["cached"], true, "{}", r.text);
    assert_eq!(r.body["credential"], "secret");
    let e = &r.body["entries"][0];
    assert_eq!(e["authority"], "botframework.com");
    assert_eq!(e["origin"], "endpoint");
    assert!(e["expires_at"].as_str().unwrap().ends_with('Z'));
    assert!(!r.text.contains("eyJ-the-access-token-Mm5"));
    assert!(!log_text().contains("eyJ-the-access-token-Mm5"));
    a.get("/bots/nope/token", BOOTSTRAP)
        .await
        .expect(404, "bot_not_found");
}

#[actix_web::test]
async fn every_answer_carries_a_request_id() {
    let a = start().await;
    let r = a
        .call_h(
            Method::GET,
            "/bots",
            Some(BOOTSTRAP),
            &[("x-request-id", "trace-me.42")],
            None,
        )
        .await;
    assert_eq!(r.header("x-request-id"), "trace-me.42");
    let r = a
        .call_h(
            Method::POST,
            "/bots",
            None,
            &[("x-request-id", "bad id with spaces")],
            None,
        )
        .await;
    r.expect(401, "api_key_missing");
    let id = r.header("x-request-id").to_owned();
    assert_eq!(id.len(), 36);
    let audit = a.audit().await;
    assert!(audit.iter().any(|e| e["request_id"] == id.as_str()));
    let r = a.get("/nothing-here", BOOTSTRAP).await;
    r.expect(404, "not_found");
    assert_eq!(r.header("x-request-id").len(), 36);
}

#[actix_web::test]
async fn bootstrap_key_must_be_long() {
    let stores = AdminStores::from_one(
        Arc::new(MemoryAdminStore::new()),
        Arc::new(MemoryConversationStore::new()),
    );
    let e = AdminState::new(
        stores,
        Vec::new(),
        Arc::new(()),
        AdminConfig {
            bootstrap_key: Some(Secret::new("too-short-key")),
            ..AdminConfig::default()
        },
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("32") && !text.contains("too-short-key"),
        "{text}"
    );
}

#[actix_web::test]
async fn audit_is_paginated_and_trimmed_by_retention() {
    let a = start_with(Options {
        config: AdminConfig {
            bootstrap_key: Some(Secret::new(BOOTSTRAP)),
            audit_retention: Duration::from_millis(300),
            ..AdminConfig::default()
        },
        ..Options::default()
    })
    .await;
    for i in 0..5 {
        a.call(
            Method::DELETE,
            &format!("/keys/bfk_none000{i}"),
            Some(BOOTSTRAP),
            None,
        )
        .await
        .expect(404, "key_not_found");
    }
    let first = a.get("/audit?limit=2", BOOTSTRAP).await;
    assert_eq!(first.body["items"].as_array().unwrap().len(), 2);
    let next = first.body["next"].as_str().unwrap();
    let second = a
        .get(&format!("/audit?limit=10&next={next}"), BOOTSTRAP)
        .await;
    assert_eq!(second.body["items"].as_array().unwrap().len(), 3);
    assert_eq!(second.body["items"][0]["target"], "bfk_none0002");
    assert!(second.body["next"].is_null());
    a.get("/audit?next=not-a-cursor", BOOTSTRAP)
        .await
        .expect(400, "invalid_cursor");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let task = a.state.spawn_audit_retention(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(200)).await;
    task.abort();
    let (left, _) = AuditLog::list(a.store.as_ref(), None, 100).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}

// ---------------------------------------------------------------- OpenAPI --

fn committed_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

/// docs/openapi.json is what the code generates; `BOTFLEET_UPDATE_OPENAPI=1`
/// rewrites it.
#[test]
fn committed_openapi_document_is_current() {
    let generated = admin::openapi::document_json();
    let path = committed_path();
    if std::env::var("BOTFLEET_UPDATE_OPENAPI").as_deref() == Ok("1") {
        std::fs::write(&path, generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from the document the code generates: run `BOTFLEET_UPDATE_OPENAPI=1 cargo test -p botfleet-server --test admin_api committed_openapi` and commit it"
    );
}

#[test]
fn openapi_document_validates_against_the_openapi_3_1_schema() {
    let doc: Value = serde_json::from_str(admin::openapi::document_json()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    file.write_all(admin::openapi::document_json().as_bytes())
        .unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
        .arg(file.path())
        .output()
        .expect("python3 runs (the OpenAPI validator is a Python package)");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document (install it with `python3 -m pip install openapi-spec-validator` if it is missing):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every route the server serves is in the document, and the document lists
/// nothing the server does not serve: each documented operation reaches a
/// handler (not the `not_found` default), and every other method on each path
/// reaches the default. Routes can only be mounted through `service(handler)`
/// (which puts them in the document): the module uses no `route`/`resource`.
#[actix_web::test]
async fn openapi_document_lists_exactly_the_served_routes() {
    let a = start().await;
    let doc: Value = serde_json::from_str(admin::openapi::document_json()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 9, "{paths:?}");
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];
    let mut documented = 0;
    for (path, item) in paths {
        let rel = path
            .strip_prefix("/admin/v1")
            .unwrap_or_else(|| panic!("{path} is outside /admin/v1"))
            .replace("{bot}", "probe-bot")
            .replace("{key}", "bfk_probe000");
        for m in &methods {
            let listed = item.get(m.as_str().to_lowercase()).is_some();
            let r = a.call(m.clone(), &rel, Some(BOOTSTRAP), None).await;
            if listed {
                documented += 1;
                assert_ne!(
                    r.check(),
                    "not_found",
                    "{m} {path} is documented but not served: {}",
                    r.text
                );
            } else {
                assert_eq!(
                    (r.status.as_u16(), r.check()),
                    (404, "not_found"),
                    "{m} {path} is served but not documented: {}",
                    r.text
                );
            }
        }
    }
    assert_eq!(documented, 30);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/admin");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for banned in [".route(", "web::resource(", "Resource::new(", "Scope::new("] {
            assert!(
                !text.contains(banned),
                "{} mounts a route with `{banned}`, which the OpenAPI document does not see: use service(handler) with #[utoipa::path]",
                path.display()
            );
        }
        // Scopes only from utoipa-actix-web, which collects what they mount.
        assert_eq!(
            text.matches("scope(").count(),
            text.matches("utoipa_actix_web::scope(").count(),
            "{} mounts a plain actix scope",
            path.display()
        );
    }
    // The served document is the committed one.
    let r = reqwest::get(format!("{}/openapi.json", a.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), admin::openapi::document_json());
}

/// Every problem type the admin API answers is in the shared table.
#[test]
fn admin_problem_types_are_in_the_shared_table() {
    let doc = admin::openapi::document_json();
    for name in [
        "api_key_missing",
        "api_key_invalid",
        "api_key_expired",
        "api_key_revoked",
        "auth_rate_limited",
        "forbidden",
        "bot_not_found",
        "key_not_found",
        "invalid_field",
        "invalid_query",
        "invalid_cursor",
        "bot_conflict",
        "bot_read_only",
        "precondition_failed",
        "precondition_required",
        "admin_store_unavailable",
        "internal",
        "malformed_json",
        "body_too_large",
        "unsupported_media_type",
        "not_found",
    ] {
        assert!(
            botfleet_server::problem::ProblemType::by_name(name).is_some(),
            "{name} is not in the problem table"
        );
        if name != "not_found" {
            assert!(
                doc.contains(&format!("`{name}`")),
                "{name} is not in the OpenAPI document"
            );
        }
    }
}

// ------------------------------------------------------------------ Redis --

/// Two replicas sharing Redis: a bot and a key created on one are seen by the
/// other; a key revoked on one stops working on the other at once.
#[actix_web::test]
async fn replicas_sharing_redis_share_bots_keys_and_audit() {
    use botfleet_store::admin::RedisAdminStore;
    use botfleet_store::redis_pool::testing;
    let prefix = testing::unique_prefix("admin-api");
    let url = testing::single_url();
    let replica = || {
        let store = Arc::new(RedisAdminStore::new(
            testing::single(),
            &prefix,
            std::slice::from_ref(&url),
        ));
        AdminStores::from_one(store, Arc::new(MemoryConversationStore::new()))
    };
    let one = serve(
        replica(),
        Options::default(),
        Arc::new(MemoryAdminStore::new()),
        Arc::new(MemoryConversationStore::new()),
    )
    .await;
    let two = serve(
        replica(),
        Options::default(),
        Arc::new(MemoryAdminStore::new()),
        Arc::new(MemoryConversationStore::new()),
    )
    .await;

    one.call(
        Method::POST,
        "/bots",
        Some(BOOTSTRAP),
        Some(registration("shared", APP_A)),
    )
    .await
    .expect(201, "");
    let r = two.get("/bots/shared", BOOTSTRAP).await;
    r.expect(200, "");
    assert_eq!(r.header("etag"), "\"1\"");
    two.call(
        Method::POST,
        "/bots",
        Some(BOOTSTRAP),
        Some(registration("clash", APP_A)),
    )
    .await
    .expect(409, "bot_conflict");
    let key = one.key(json!({"role": "reader"})).await;
    two.get("/bots", &key).await.expect(200, "");
    one.call(
        Method::DELETE,
        &format!("/keys/{}", &key[..12]),
        Some(BOOTSTRAP),
        None,
    )
    .await
    .expect(204, "");
    two.get("/bots", &key).await.expect(401, "api_key_revoked");
    let r = two
        .call_h(
            Method::PATCH,
            "/bots/shared",
            Some(BOOTSTRAP),
            &[("if-match", "\"1\"")],
            Some(json!({"cloud": "gcch"})),
        )
        .await;
    r.expect(200, "");
    one.call_h(
        Method::DELETE,
        "/bots/shared",
        Some(BOOTSTRAP),
        &[("if-match", "\"1\"")],
        None,
    )
    .await
    .expect(412, "precondition_failed");
    let audit = one.audit().await;
    let actions: Vec<&str> = audit
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in [
        "bots.create",
        "keys.create",
        "keys.revoke",
        "bots.patch",
        "bots.delete",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    assert!(!serde_json::to_string(&audit)
        .unwrap()
        .contains("client-secret-of-shared"));
}

/// Redis down: the admin API answers 503 `admin_store_unavailable` (retry
/// later), not 401 or 500, and does not count it as a failed authentication.
#[actix_web::test]
async fn store_outage_answers_503() {
    use botfleet_store::admin::RedisAdminStore;
    // A port nothing listens on: connections are refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", closed.local_addr().unwrap());
    drop(closed);
    let pool = botfleet_store::RedisPool::single(&url, 2).unwrap();
    let store = Arc::new(RedisAdminStore::new(
        pool,
        "outage",
        std::slice::from_ref(&url),
    ));
    let a = serve(
        AdminStores::from_one(store, Arc::new(MemoryConversationStore::new())),
        Options::default(),
        Arc::new(MemoryAdminStore::new()),
        Arc::new(MemoryConversationStore::new()),
    )
    .await;
    let r = a.get("/bots", BOOTSTRAP).await;
    r.expect(503, "admin_store_unavailable");
    assert!(!r.header("retry-after").is_empty());
    for _ in 0..25 {
        a.get("/bots", "bfk_aaaaaaaa_whatever")
            .await
            .expect(503, "admin_store_unavailable");
    }
}
