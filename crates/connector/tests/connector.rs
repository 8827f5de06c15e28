//! The connector against a local actix-web server playing the Bot Connector,
//! with tokens from the real `TokenCache` and the memory rate limiter.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use async_trait::async_trait;
use botfleet_auth::outbound::{
    AccessToken, TokenCache, TokenCacheConfig, TokenError, TokenKey, TokenProvider,
};
use botfleet_auth::{Cloud, Secret, ServiceUrlAllowlist};
use botfleet_connector::{
    Action, AmbiguousPolicy, BotClient, BotSettings, Connector, ConnectorConfig, ConnectorError,
    RetryPolicy, Target,
};
use botfleet_protocol::{Activity, ChannelAccount, ConversationParameters};
use botfleet_store::ratelimit::MemoryRateLimiter;
use parking_lot::Mutex;
use serde_json::{json, Value};

// ---------------------------------------------------------------- fake connector

#[derive(Clone, Debug)]
enum Reply {
    /// 201 `{"id"}` (sends), recorded as delivered.
    Created,
    Status {
        status: u16,
        body: Value,
        retry_after: Option<String>,
    },
    /// Records the delivery, then answers only after the delay (a response
    /// that is lost or late although Teams delivered).
    SlowCreated(Duration),
}

fn status(status: u16, body: Value) -> Reply {
    Reply::Status {
        status,
        body,
        retry_after: None,
    }
}

fn teams_error(code: u16, name: &str) -> Reply {
    status(
        code,
        json!({"error": {"code": name, "message": format!("{name} happened")}}),
    )
}

#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    query: String,
    auth: String,
    at: Instant,
}

#[derive(Default)]
struct Fake {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    /// Percent of otherwise successful requests answered 502 or 503.
    transient_percent: AtomicU32,
    /// When set, any other bearer token is answered 401.
    accept_token: Mutex<Option<String>>,
    delivered: Mutex<Vec<(String, Value)>>,
    n: AtomicU64,
}

impl Fake {
    fn push(&self, r: Reply) {
        self.script.lock().push_back(r);
    }
    fn received(&self) -> Vec<Received> {
        self.received.lock().clone()
    }
    fn delivered(&self) -> Vec<(String, Value)> {
        self.delivered.lock().clone()
    }
}

async fn handle(req: HttpRequest, body: web::Bytes, fake: web::Data<Fake>) -> HttpResponse {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    fake.received.lock().push(Received {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        query: req.query_string().to_owned(),
        auth: auth.clone(),
        at: Instant::now(),
    });
    if let Some(ok) = fake.accept_token.lock().clone() {
        if auth != format!("Bearer {ok}") {
            return HttpResponse::Unauthorized().json(
                json!({"error": {"code": "BotNotRegistered", "message": "Authorization has been denied"}}),
            );
        }
    }
    let scripted = fake.script.lock().pop_front();
    let reply = scripted.unwrap_or_else(|| {
        let p = fake.transient_percent.load(Ordering::SeqCst);
        if p > 0 && rand::random::<u32>() % 100 < p {
            if rand::random::<bool>() {
                status(
                    502,
                    json!({"error": {"code": "ServiceError", "message": "dependency"}}),
                )
            } else {
                status(503, Value::Null)
            }
        } else {
            Reply::Created
        }
    });
    let path = req.uri().path().to_owned();
    let record = |fake: &Fake| {
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        fake.delivered.lock().push((path.clone(), v));
    };
    let id = format!("act-{}", fake.n.fetch_add(1, Ordering::SeqCst));
    match reply {
        Reply::Created => {
            if req.method() == "GET" {
                return HttpResponse::Ok().json(json!({
                    "members": [{"id": "29:u1", "name": "U1"}],
                    "continuationToken": if req.query_string().contains("continuationToken") { Value::Null } else { json!("page-2") },
                }));
            }
            if req.method() == "DELETE" {
                return HttpResponse::Ok().finish();
            }
            record(&fake);
            if path.ends_with("/v3/conversations") {
                return HttpResponse::Created().json(json!({"id": "a:new-conversation"}));
            }
            HttpResponse::Created().json(json!({ "id": id }))
        }
        Reply::SlowCreated(d) => {
            record(&fake);
            tokio::time::sleep(d).await;
            if req.method() == "GET" {
                return HttpResponse::Ok().json(json!({"members": []}));
            }
            HttpResponse::Created().json(json!({ "id": id }))
        }
        Reply::Status {
            status,
            body,
            retry_after,
        } => {
            let mut r = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
            if let Some(ra) = retry_after {
                r.insert_header(("Retry-After", ra));
            }
            r.insert_header(("MS-CV", "cv-123"));
            if body.is_null() {
                r.finish()
            } else {
                r.json(body)
            }
        }
    }
}

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

// ---------------------------------------------------------------- tokens

/// Issues `tok-1`, `tok-2`, ... and counts requests.
struct CountingProvider {
    key: TokenKey,
    fetches: AtomicU64,
}

#[async_trait]
impl TokenProvider for CountingProvider {
    fn key(&self) -> &TokenKey {
        &self.key
    }
    fn kind(&self) -> &'static str {
        "test"
    }
    async fn fetch(&self) -> Result<AccessToken, TokenError> {
        let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
        let now = SystemTime::now();
        Ok(AccessToken {
            token: Secret::new(format!("tok-{n}")),
            expires_at: now + Duration::from_secs(3600),
            obtained_at: now,
        })
    }
}

struct Harness {
    fake: Arc<Fake>,
    base: String,
    provider: Arc<CountingProvider>,
    connector: Connector,
    tokens: TokenCache,
}

impl Harness {
    fn new() -> Self {
        Self::with_config(ConnectorConfig::default())
    }

    fn with_config(mut config: ConnectorConfig) -> Self {
        let fake = Arc::new(Fake::default());
        let base = serve(fake.clone());
        config.gcc_service_url = format!("{base}/gcc");
        let provider = Arc::new(CountingProvider {
            key: TokenKey::new("test", "botframework.com", "app-1", "scope"),
            fetches: AtomicU64::new(0),
        });
        Self {
            fake,
            base,
            provider,
            connector: Connector::new(config, Arc::new(MemoryRateLimiter::default())).unwrap(),
            tokens: TokenCache::new(TokenCacheConfig::default()),
        }
    }

    fn bot(&self, f: impl FnOnce(BotSettings) -> BotSettings) -> BotClient {
        let handle = self.tokens.register(self.provider.clone());
        let settings = BotSettings::new(
            "app-1",
            Arc::new(handle),
            ServiceUrlAllowlist::new(&[], &[]),
        )
        .with_retry(fast_retry());
        self.connector.bot(f(settings))
    }

    fn target(&self, conversation: &str) -> Target {
        Target::new(
            format!("{}/amer/", self.base),
            conversation,
            Some("tenant-1"),
        )
    }

    fn fetches(&self) -> u64 {
        self.provider.fetches.load(Ordering::SeqCst)
    }
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 10,
        max_elapsed: Duration::from_secs(20),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_rate_limit_wait: Duration::from_secs(30),
        return_throttling: false,
    }
}

fn msg(text: &str) -> Activity {
    Activity::message(text)
}

fn failure(e: ConnectorError) -> botfleet_connector::Failure {
    match e {
        ConnectorError::Failed(f) => *f,
        other => panic!("expected a Bot Connector failure, got {other:?}"),
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_use_the_documented_routes_with_encoded_ids() {
    let h = Harness::new();
    let bot = h.bot(|s| s);
    let to = h.target("19:abc@thread.tacv2;messageid=1");
    let sent = bot.send(&to, &msg("hi")).await.unwrap();
    assert_eq!(sent.value.id, "act-0");
    assert_eq!(sent.attempts, 1);
    assert_eq!(sent.service_url_moved_to, None);
    bot.reply(&to, "1:x", &msg("re")).await.unwrap();
    bot.update(&to, "act-0", &msg("edited")).await.unwrap();
    bot.delete(&to, "act-0").await.unwrap();
    let members = bot.get_all_members(&to).await.unwrap();
    assert_eq!(members.len(), 2, "two pages");
    let created = bot
        .create_conversation(
            &to.service_url,
            &ConversationParameters {
                members: Some(vec![ChannelAccount::new("29:user")]),
                tenant_id: Some("tenant-1".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(created.value.id, "a:new-conversation");

    let conv = "19%3Aabc%40thread.tacv2%3Bmessageid%3D1";
    let got: Vec<(String, String)> = h
        .fake
        .received()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    let want = [
        ("POST", format!("/amer/v3/conversations/{conv}/activities")),
        (
            "POST",
            format!("/amer/v3/conversations/{conv}/activities/1%3Ax"),
        ),
        (
            "PUT",
            format!("/amer/v3/conversations/{conv}/activities/act-0"),
        ),
        (
            "DELETE",
            format!("/amer/v3/conversations/{conv}/activities/act-0"),
        ),
        ("GET", format!("/amer/v3/conversations/{conv}/pagedmembers")),
        ("GET", format!("/amer/v3/conversations/{conv}/pagedmembers")),
        ("POST", "/amer/v3/conversations".to_owned()),
    ];
    assert_eq!(
        got,
        want.iter()
            .map(|(m, p)| (m.to_string(), p.clone()))
            .collect::<Vec<_>>()
    );
    let r = h.fake.received();
    assert_eq!(r[4].query, "pageSize=500");
    assert_eq!(r[5].query, "pageSize=500&continuationToken=page-2");
    assert!(r.iter().all(|r| r.auth == "Bearer tok-1"));
    assert_eq!(h.fetches(), 1, "one token for every call");
    assert_eq!(h.fake.delivered()[0].1["text"], "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_return_throttling_a_429_and_a_503_with_retry_after_come_back_at_once() {
    let h = Harness::new();
    let bot = h.bot(|s| {
        s.with_retry(RetryPolicy {
            return_throttling: true,
            ..fast_retry()
        })
    });
    h.fake.push(Reply::Status {
        status: 429,
        body: json!({"error": {"code": "Throttled", "message": "slow down"}}),
        retry_after: Some("7".into()),
    });
    let t0 = Instant::now();
    let e = bot.send(&h.target("a:one"), &msg("one")).await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(2), "the call waited");
    match &e {
        ConnectorError::Failed(f) => {
            assert_eq!(
                (f.status, f.action, f.attempts),
                (429, Action::RetryLater, 1)
            );
            assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
        }
        other => panic!("expected Failed 429, got {other:?}"),
    }
    h.fake.push(Reply::Status {
        status: 503,
        body: json!({}),
        retry_after: Some("2".into()),
    });
    let e = bot.send(&h.target("a:two"), &msg("two")).await.unwrap_err();
    assert_eq!(e.status(), Some(503));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    // A 503 without Retry-After is still retried within the call.
    h.fake.push(Reply::Status {
        status: 503,
        body: json!({}),
        retry_after: None,
    });
    let ok = bot.send(&h.target("a:three"), &msg("three")).await.unwrap();
    assert_eq!(ok.attempts, 2);
    assert_eq!(h.fake.delivered().len(), 1, "only the third was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttled_429_waits_at_least_retry_after_then_delivers_once() {
    let h = Harness::new();
    let bot = h.bot(|s| s);
    h.fake.push(Reply::Status {
        status: 429,
        body: json!({"error": {"code": "Throttled", "message": "slow down"}}),
        retry_after: Some("1".into()),
    });
    let to = h.target("a:one");
    let t0 = Instant::now();
    let first = {
        let (bot, to) = (bot.clone(), to.clone());
        tokio::spawn(async move { bot.send(&to, &msg("one")).await })
    };
    // Another send to the same conversation after the 429 must not run into it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = bot.send(&to, &msg("two")).await.unwrap();
    let first = first.await.unwrap().unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(first.attempts, 2);
    assert_eq!(second.attempts, 1);
    let r = h.fake.received();
    assert_eq!(r.len(), 3, "the 429 and one delivery per message");
    for later in &r[1..] {
        assert!(
            later.at.duration_since(r[0].at) >= Duration::from_secs(1),
            "a request went out during Retry-After"
        );
    }
    let mut texts: Vec<String> = h
        .fake
        .delivered()
        .iter()
        .map(|(_, v)| v["text"].as_str().unwrap().to_owned())
        .collect();
    texts.sort();
    assert_eq!(texts, ["one", "two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_as_http_date_is_honoured() {
    let h = Harness::new();
    let bot = h.bot(|s| s);
    let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
    h.fake.push(Reply::Status {
        status: 503,
        body: Value::Null,
        retry_after: Some(at),
    });
    let t0 = Instant::now();
    bot.send(&h.target("a:date"), &msg("x")).await.unwrap();
    // HTTP dates have whole seconds: at least 1 s of the 2 s remain.
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_beyond_the_budget_is_returned_not_slept() {
    let h = Harness::new();
    let bot = h.bot(|s| s);
    h.fake.push(Reply::Status {
        status: 429,
        body: json!({"error": {"code": "Throttled", "message": "later"}}),
        retry_after: Some("120".into()),
    });
    let t0 = Instant::now();
    let e = bot.send(&h.target("a:later"), &msg("x")).await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(e.is_transient());
    let ra = e.retry_after().unwrap();
    assert!(ra >= Duration::from_secs(120), "{ra:?}");
    let f = failure(e);
    assert_eq!(
        (f.status, f.code.as_str(), f.action),
        (429, "Throttled", Action::RetryLater)
    );
    assert_eq!(f.correlation_id.as_deref(), Some("cv-123"));
    assert_eq!(h.fake.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_percent_502_503_are_all_delivered_once() {
    let h = Harness::new();
    let bot = h.bot(|s| s);
    h.fake.transient_percent.store(30, Ordering::SeqCst);
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let (bot, to) = (bot.clone(), h.target(&format!("a:conv-{i}")));
            tokio::spawn(async move { bot.send(&to, &msg(&format!("m{i}"))).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let delivered = h.fake.delivered();
    assert_eq!(delivered.len(), 60);
    let mut per_conv: HashMap<String, usize> = HashMap::new();
    for (path, _) in delivered {
        *per_conv.entry(path).or_default() += 1;
    }
    assert!(
        per_conv.values().all(|n| *n == 1),
        "a message was delivered twice"
    );
    assert!(
        h.fake.received().len() > 60,
        "some requests failed and were retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn internal_500_is_reported_not_retried() {
    let h = Harness::new();
    let bot = h.bot(|s| s);
    h.fake.push(teams_error(500, "ServiceError"));
    let e = bot.send(&h.target("a:x"), &msg("x")).await.unwrap_err();
    assert!(!e.is_transient() && !e.deactivates_reference());
    let text = e.to_string();
    assert!(
        text.contains("500") && text.contains("ServiceError happened"),
        "{text}"
    );
    let f = failure(e);
    assert_eq!(
        (f.status, f.code.as_str(), f.action, f.attempts),
        (500, "ServiceError", Action::Report, 1)
    );
    assert_eq!(h.fake.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gone_conversations_deactivate_the_reference_without_retry() {
    let h = Harness::new();
    let bot = h.bot(|s| s);
    let cases = [
        teams_error(403, "BotNotInConversationRoster"),
        teams_error(403, "ConversationBlockedByUser"),
        teams_error(403, "BotDisabledByAdmin"),
        teams_error(404, "ConversationNotFound"),
        status(
            403,
            json!({"errorCode": 209, "message": "{\"subCode\": \"MessageWritesBlocked\"}"}),
        ),
    ];
    for (i, reply) in cases.into_iter().enumerate() {
        h.fake.push(reply);
        let before = h.fake.received().len();
        let e = bot
            .send(&h.target(&format!("a:gone-{i}")), &msg("x"))
            .await
            .unwrap_err();
        assert!(e.deactivates_reference(), "case {i}: {e}");
        assert_eq!(h.fake.received().len(), before + 1, "case {i} was retried");
    }
    // Not every 403 deactivates.
    h.fake.push(teams_error(403, "NotEnoughPermissions"));
    let e = bot.send(&h.target("a:perm"), &msg("x")).await.unwrap_err();
    assert!(!e.deactivates_reference());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unauthorized_401_refreshes_the_token_once_and_retries_once() {
    let h = Harness::new();
    let bot = h.bot(|s| s);
    *h.fake.accept_token.lock() = Some("tok-2".into());
    let sent = bot.send(&h.target("a:auth"), &msg("x")).await.unwrap();
    assert_eq!(sent.attempts, 2);
    assert_eq!(h.fetches(), 2);
    let auths: Vec<String> = h.fake.received().iter().map(|r| r.auth.clone()).collect();
    assert_eq!(auths, ["Bearer tok-1", "Bearer tok-2"]);
    // The refreshed token is cached: the next call needs no refresh.
    bot.send(&h.target("a:auth"), &msg("y")).await.unwrap();
    assert_eq!(h.fetches(), 2);

    // Still 401 with a fresh token: one refresh, one retry, then a clear error.
    *h.fake.accept_token.lock() = Some("never".into());
    let before = h.fake.received().len();
    let e = bot.send(&h.target("a:auth"), &msg("z")).await.unwrap_err();
    let f = failure(e);
    assert_eq!(
        (f.status, f.action, f.attempts),
        (401, Action::CheckBotRegistration, 2)
    );
    assert_eq!(f.code, "BotNotRegistered");
    assert_eq!(h.fake.received().len(), before + 2);
    assert_eq!(h.fetches(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_bot_api_host_moves_to_gcc_and_reports_it() {
    let h = Harness::new();
    let bot = h.bot(|s| s);
    h.fake.push(teams_error(403, "InvalidBotApiHost"));
    let sent = bot.send(&h.target("a:gcc"), &msg("x")).await.unwrap();
    assert_eq!(sent.service_url_moved_to, Some(format!("{}/gcc", h.base)));
    let r = h.fake.received();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].path, "/amer/v3/conversations/a%3Agcc/activities");
    assert_eq!(r[1].path, "/gcc/v3/conversations/a%3Agcc/activities");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disallowed_service_url_is_refused_without_any_request() {
    let h = Harness::new();
    let public_hosts = Cloud::preset("public").unwrap().service_url_hosts;
    let handle = h.tokens.register(h.provider.clone());
    let bot = h.connector.bot(BotSettings::new(
        "app-1",
        Arc::new(handle),
        ServiceUrlAllowlist::new(&public_hosts, &[]),
    ));
    for url in [
        "https://evil.example.com/amer/",
        "http://smba.trafficmanager.net/amer/",
        "not a url",
    ] {
        let e = bot
            .send(&Target::new(url, "a:x", Some("t")), &msg("x"))
            .await
            .unwrap_err();
        assert!(
            matches!(e, ConnectorError::ServiceUrlRefused { .. }),
            "{url}: {e}"
        );
        assert_eq!(e.action(), Action::FixRequest);
    }
    assert!(h.fake.received().is_empty());
    assert_eq!(h.fetches(), 0, "not even a token was fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ambiguous_timeouts_follow_the_bot_policy() {
    let h = Harness::with_config(ConnectorConfig {
        request_timeout: Duration::from_millis(300),
        ..ConnectorConfig::default()
    });

    // Default: report unknown, never resend.
    let careful = h.bot(|s| s);
    h.fake.push(Reply::SlowCreated(Duration::from_secs(1)));
    let e = careful
        .send(&h.target("a:slow"), &msg("once"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ConnectorError::Unknown { attempts: 1, .. }),
        "{e}"
    );
    assert_eq!(e.action(), Action::Report);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(h.fake.delivered().len(), 1);
    assert_eq!(h.fake.received().len(), 1);

    // A 504 on a send is just as ambiguous.
    h.fake.push(status(504, Value::Null));
    let e = careful
        .send(&h.target("a:gw"), &msg("x"))
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Unknown { .. }), "{e}");

    // Resend: delivered, possibly twice (the documented price).
    let eager = h.bot(|s| s.with_ambiguous(AmbiguousPolicy::Resend));
    h.fake.push(Reply::SlowCreated(Duration::from_secs(1)));
    let sent = eager
        .send(&h.target("a:slow2"), &msg("twice"))
        .await
        .unwrap();
    assert_eq!(sent.attempts, 2);
    let twice = h
        .fake
        .delivered()
        .iter()
        .filter(|(_, v)| v["text"] == "twice")
        .count();
    assert_eq!(twice, 2);

    // Reads are safe to repeat whatever the policy.
    h.fake.push(Reply::SlowCreated(Duration::from_secs(1)));
    let page = careful
        .get_paged_members(&h.target("a:slow3"), None, None)
        .await
        .unwrap();
    assert_eq!(page.attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_failures_before_sending_are_retried_then_reported() {
    let h = Harness::new();
    let bot = h.bot(|s| {
        s.with_retry(RetryPolicy {
            max_attempts: 3,
            ..fast_retry()
        })
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let to = Target::new(format!("http://127.0.0.1:{port}/amer/"), "a:x", Some("t"));
    let e = bot.send(&to, &msg("x")).await.unwrap_err();
    assert!(
        matches!(e, ConnectorError::Unreachable { attempts: 3, .. }),
        "a refused connection is not ambiguous: {e}"
    );
    assert!(e.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_to_one_conversation_are_paced_to_the_teams_limits() {
    let h = Harness::new();
    let bot = h.bot(|s| s);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (bot, to) = (bot.clone(), h.target("19:busy@thread.v2"));
            tokio::spawn(async move { bot.send(&to, &msg(&format!("m{i}"))).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().attempts, 1);
    }
    let mut at: Vec<Instant> = h.fake.received().iter().map(|r| r.at).collect();
    at.sort();
    assert_eq!(at.len(), 20);
    let max_in = |period: Duration| {
        let mut best = 0;
        let mut i = 0;
        for j in 0..at.len() {
            while at[j].duration_since(at[i]) >= period {
                i += 1;
            }
            best = best.max(j - i + 1);
        }
        best
    };
    assert!(
        max_in(Duration::from_secs(1)) <= 7,
        "more than 7 in a second"
    );
    assert!(
        max_in(Duration::from_secs(2)) <= 8,
        "more than 8 in 2 seconds"
    );
    // 8 per 2 s: the 20th send goes out after about 4 s, not much later.
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_wait_beyond_the_budget_is_returned_as_throttled() {
    let h = Harness::new();
    let bot = h.bot(|s| {
        s.with_retry(RetryPolicy {
            max_rate_limit_wait: Duration::from_millis(200),
            ..fast_retry()
        })
    });
    let to = h.target("a:burst");
    let mut throttled = 0;
    for _ in 0..10 {
        match bot.send(&to, &msg("x")).await {
            Ok(_) => {}
            Err(ConnectorError::Throttled { retry_after }) => {
                assert!(retry_after > Duration::from_millis(200));
                throttled += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(throttled >= 2, "the 8th and later sends exceed 8 per 2 s");
    assert_eq!(h.fake.received().len(), 10 - throttled);
}
