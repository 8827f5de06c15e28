//! Graph change notifications end to end (docs/graph.md): `botfleet serve` as
//! a process, real Redis, `botfleet-sim` as Microsoft Graph (subscriptions,
//! handshake, notifications, lifecycle events, sim clock, faults) and as the
//! Bot Connector. Sinks are the test's own webhook receiver or the sim's
//! connector; a recording proxy in front of the sim's Graph API counts the
//! subscription writes botfleet makes.
//! Needs BOTFLEET_TEST_REDIS_URL (`scripts/redis-up`), redis-server on PATH
//! and the binaries built (`cargo build --workspace --bins`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use botfleet_store::redis_pool::testing;
use common::*;
use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::{json, Value};

const BOOT: &str = "graph-e2e-bootstrap-key-0123456789abcdef";
const HOOK_SECRET: &str = "graph-e2e-webhook-secret";

// ------------------------------------------------------------------ sinks --

/// One POST the webhook receiver got.
#[derive(Debug, Clone)]
struct Hit {
    notification_id: String,
    message_id: String,
    text: String,
    signed: bool,
    /// Whether the receiver answered 2xx.
    ok: bool,
}

/// The webhook action's receiver: records every POST; answers 503 while
/// `fail` is set, after `delay_ms` when set.
struct Sink {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    delay_ms: Arc<AtomicU64>,
    fail: Arc<AtomicBool>,
}

impl Sink {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let fail = Arc::new(AtomicBool::new(false));
        let (h, d, f) = (hits.clone(), delay_ms.clone(), fail.clone());
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    let (h, d, f) = (h.clone(), d.clone(), f.clone());
                    App::new().default_service(web::to(
                        move |req: HttpRequest, body: web::Bytes| {
                            let (h, d, f) = (h.clone(), d.clone(), f.clone());
                            async move {
                                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                                let delay = d.load(Ordering::SeqCst);
                                if delay > 0 {
                                    tokio::time::sleep(Duration::from_millis(delay)).await;
                                }
                                let ok = !f.load(Ordering::SeqCst);
                                h.lock().push(Hit {
                                    notification_id: req
                                        .headers()
                                        .get("X-Botfleet-Notification-Id")
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or("")
                                        .to_owned(),
                                    message_id: v["message"]["id"]
                                        .as_str()
                                        .unwrap_or("")
                                        .to_owned(),
                                    text: v["message"]["body"]["content"]
                                        .as_str()
                                        .unwrap_or("")
                                        .to_owned(),
                                    signed: req.headers().contains_key("X-Botfleet-Signature")
                                        && req.headers().contains_key("X-Botfleet-Timestamp"),
                                    ok,
                                });
                                if ok {
                                    HttpResponse::Ok().finish()
                                } else {
                                    HttpResponse::ServiceUnavailable().finish()
                                }
                            }
                        },
                    ))
                })
                .workers(2)
                .listen(listener)
                .unwrap();
                let _ = server.run().await;
            })
        });
        Self {
            url: format!("http://{addr}/hook"),
            hits,
            delay_ms,
            fail,
        }
    }

    /// Accepted (2xx) deliveries per message id.
    fn accepted(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for h in self.hits.lock().iter().filter(|h| h.ok) {
            *out.entry(h.message_id.clone()).or_default() += 1;
        }
        out
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().clone()
    }
}

/// One Graph API call botfleet made through the proxy.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    status: u16,
    at: Instant,
    retry_after: Option<u64>,
}

/// A recording reverse proxy in front of the sim's Graph API (botfleet's
/// `graph.graph_url` points at it): counts what botfleet asked Graph, e.g.
/// exactly one PATCH per renewal across replicas.
struct Proxy {
    /// `{proxy}/graph/v1.0`.
    graph_url: String,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Proxy {
    fn start(sim: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let c = calls.clone();
        let sim = sim.to_owned();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let client = reqwest::Client::new();
                let server = HttpServer::new(move || {
                    let (c, sim, client) = (c.clone(), sim.clone(), client.clone());
                    App::new().default_service(web::to(
                        move |req: HttpRequest, body: web::Bytes| {
                            let (c, sim, client) = (c.clone(), sim.clone(), client.clone());
                            async move {
                                let target = format!("{sim}{}", req.uri());
                                let method =
                                    reqwest::Method::from_bytes(req.method().as_str().as_bytes())
                                        .unwrap();
                                let mut out = client.request(method, target).body(body.to_vec());
                                for name in ["authorization", "content-type"] {
                                    if let Some(v) = req.headers().get(name) {
                                        out = out.header(name, v.as_bytes());
                                    }
                                }
                                let Ok(resp) = out.send().await else {
                                    return HttpResponse::BadGateway().finish();
                                };
                                let status = resp.status().as_u16();
                                let headers = resp.headers().clone();
                                let bytes = resp.bytes().await.unwrap_or_default();
                                c.lock().push(Call {
                                    method: req.method().to_string(),
                                    path: req.path().to_owned(),
                                    status,
                                    at: Instant::now(),
                                    retry_after: headers
                                        .get("retry-after")
                                        .and_then(|v| v.to_str().ok())
                                        .and_then(|v| v.parse().ok()),
                                });
                                let mut answer = HttpResponse::build(
                                    actix_web::http::StatusCode::from_u16(status).unwrap(),
                                );
                                for name in ["date", "retry-after", "content-type", "location"] {
                                    if let Some(v) = headers.get(name) {
                                        answer.insert_header((name, v.as_bytes()));
                                    }
                                }
                                answer.body(bytes)
                            }
                        },
                    ))
                })
                .workers(2)
                .listen(listener)
                .unwrap();
                let _ = server.run().await;
            })
        });
        Self {
            graph_url: format!("http://{addr}/graph/v1.0"),
            calls,
        }
    }

    /// Subscription writes and reads: (method, path suffix after /subscriptions).
    fn subscription_calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .iter()
            .filter(|c| c.path.contains("/subscriptions"))
            .cloned()
            .collect()
    }

    fn count(&self, method: &str, exact_collection: bool) -> usize {
        self.subscription_calls()
            .iter()
            .filter(|c| c.method == method)
            .filter(|c| c.path.ends_with("/subscriptions") == exact_collection)
            .count()
    }
}

/// A redis-server of this test alone (AOF, fsync always), on a free port:
/// restarted or paused without disturbing other tests.
struct OwnRedis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Self::spawn(port, dir.path());
        let me = Self { child, port, dir };
        me.wait_ready();
        me
    }

    fn spawn(port: u16, dir: &std::path::Path) -> Child {
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH")
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        while self.cli(&["PING"]) != "PONG" {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (SIGKILL: no final save; AOF keeps what was written)
    /// and starts it again on the same port and data directory.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.port, self.dir.path());
        self.wait_ready();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------ the sim side --

async fn sim_clock(sim: &str, body: Value) -> Value {
    post_json(format!("{sim}/_sim/graph/clock"), body).await
}

/// Registers a chat at the sim's Graph side.
async fn sim_chat(sim: &str, chat: &str) {
    post_json(
        format!("{sim}/_sim/graph/chats"),
        json!({"id": chat, "tenantId": TENANT, "members": ["user-1"]}),
    )
    .await;
}

/// Posts a message to a chat (Teams' side); its Graph id.
async fn post_message(sim: &str, chat: &str, text: &str) -> String {
    let v = post_json(
        format!("{sim}/_sim/graph/chats/{}/messages", urlencode(chat)),
        json!({"tenantId": TENANT, "text": text, "fromUserId": "user-1"}),
    )
    .await;
    v["id"].as_str().expect("message id").to_owned()
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The live Graph subscriptions whose resource is `resource`.
async fn sim_subs(sim: &str, resource: &str) -> Vec<Value> {
    get_json(format!("{sim}/_sim/graph/subscriptions")).await["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["resource"].as_str() == Some(resource))
        .cloned()
        .collect()
}

async fn sim_deliveries(sim: &str, kind: &str) -> Vec<Value> {
    get_json(format!("{sim}/_sim/graph/deliveries?kind={kind}")).await["deliveries"]
        .as_array()
        .unwrap()
        .clone()
}

async fn sim_graph_faults(sim: &str, faults: Value) {
    post_json(format!("{sim}/_sim/graph/faults"), faults).await;
}

async fn sim_delivery_paused(sim: &str, paused: bool) {
    post_json(
        format!("{sim}/_sim/graph/delivery"),
        json!({"paused": paused}),
    )
    .await;
}

/// Polls `f` until it gives `Some` (or panics after `within`, naming `what`).
async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The one live subscription of `resource` (waits for it), as the sim has it.
async fn live_sub(sim: &str, resource: &str, not: &[String]) -> Value {
    wait_for(
        Duration::from_secs(15),
        "a live Graph subscription",
        || async {
            let subs = sim_subs(sim, resource).await;
            match subs.as_slice() {
                [one] if !not.iter().any(|n| one["id"].as_str() == Some(n)) => Some(one.clone()),
                _ => None,
            }
        },
    )
    .await
}

// --------------------------------------------------------- botfleet's side --

/// Sum of the samples of `name` on `/metrics` whose labels include `labels`.
async fn metric_sum(admin: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = http()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let (n, rest) = match head.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (head, ""),
            };
            if n != name {
                return None;
            }
            if !labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// The `[[graph.subscriptions]]` entry of a chat with a webhook action.
fn webhook_sub(id: &str, resource: &str, hook: &str, extra: &str) -> String {
    format!(
        r#"
[[graph.subscriptions]]
id = "{id}"
bot = "bot"
tenant_id = "{TENANT}"
resource = "{resource}"
action = {{ kind = "webhook", url = "{hook}", secret = "{HOOK_SECRET}" }}
{extra}
"#
    )
}

/// botfleet's configuration: the sim's cloud, Redis at `redis` (key prefix
/// `prefix`), short Graph intervals, and `subs`.
fn config(sim: &str, graph_url: &str, redis: &str, prefix: &str, subs: &str) -> String {
    format!(
        r#"
[store]
backend = "redis"
redis_urls = ["{redis}"]
key_prefix = "{prefix}"

[admin]
bootstrap_key_env = "H26_GRAPH_BOOT"
{cloud}
[[bots]]
id = "bot"
app_id = "{APP_ID}"
app_password = "{APP_SECRET}"
cloud = "sim"
handler = {{ kind = "record" }}

[graph]
graph_url = "{graph_url}"
openid_metadata_url = "{sim}/common/.well-known/openid-configuration"
check_interval = "400ms"
reconcile_interval = "2s"
lease = "1500ms"
reclaim_idle = "1s"
{subs}
"#,
        cloud = sim_cloud(sim),
    )
}

fn start(toml: &str) -> Botfleet {
    start_botfleet_with(toml, &[("H26_GRAPH_BOOT", BOOT)])
}

async fn admin(
    bf: &Botfleet,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = http()
        .request(method, format!("{}/admin/v1{path}", bf.admin_url()))
        .bearer_auth(BOOT);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Waits until the sink accepted every message of `ids`.
async fn all_accepted(sink: &Sink, ids: &[String], within: Duration) {
    wait_for(within, "every message at the webhook", || async {
        let got = sink.accepted();
        ids.iter().all(|i| got.contains_key(i)).then_some(())
    })
    .await;
}

/// Each of `ids` accepted exactly once, nothing else.
fn assert_exactly_once(sink: &Sink, ids: &[String]) {
    let got = sink.accepted();
    for id in ids {
        assert_eq!(got.get(id), Some(&1), "message {id}: {got:?}");
    }
    assert_eq!(
        got.len(),
        ids.len(),
        "unexpected messages: {got:?} vs {ids:?}"
    );
}

// ------------------------------------------------------------------ tests --

/// Issue 12's first check: a subscription declared in the configuration is
/// created (both handshakes answered), renewed across simulated days (one
/// PATCH each time its remaining lifetime drops below half), recreated after
/// `subscriptionRemoved` and after the sim expires it early, and every
/// message posted throughout (also while delivery was paused and while the
/// subscription was gone) reaches the webhook exactly once.
#[actix_web::test]
async fn a_subscription_lives_through_days_of_renewals_removal_and_early_expiry_without_losing_a_message(
) {
    let sim = start_sim();
    let sink = Sink::start();
    let proxy = Proxy::start(&sim.url);
    let chat = "19:lives@thread.v2";
    let resource = format!("/chats/{chat}/messages");
    sim_chat(&sim.url, chat).await;
    let prefix = testing::unique_prefix("graph-lives");
    let bf = start(&config(
        &sim.url,
        &proxy.graph_url,
        &testing::single_url(),
        &prefix,
        &webhook_sub("lives", &resource, &sink.url, ""),
    ));
    let first = live_sub(&sim.url, &resource, &[]).await;
    let gid1 = first["id"].as_str().unwrap().to_owned();
    // Both URLs passed the handshake (the sim's token has `+`, `<`, `&`, `%`).
    let validations = sim_deliveries(&sim.url, "validation").await;
    assert_eq!(validations.len(), 2, "{validations:?}");
    assert!(
        validations.iter().all(|v| v["outcome"] == "ok"),
        "{validations:?}"
    );
    assert!(first["lifecycleNotificationUrl"]
        .as_str()
        .unwrap()
        .ends_with("/api/graph/lifecycle"));

    let mut posted = Vec::new();
    for i in 0..2 {
        posted.push(post_message(&sim.url, chat, &format!("hello {i}")).await);
    }
    all_accepted(&sink, &posted, Duration::from_secs(10)).await;

    // Day one and two: 20 h, then 40 h in; at 40 h less than half of the
    // 70 h lifetime is left, so it is renewed (same Graph id, later expiry).
    let expiry = |s: &Value| s["expirationDateTime"].as_str().unwrap().to_owned();
    let mut last_expiry = expiry(&first);
    sim_clock(&sim.url, json!({"advanceSeconds": 20 * 3600})).await;
    posted.push(post_message(&sim.url, chat, "day one").await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        proxy.count("PATCH", false),
        0,
        "no renewal while more than half is left"
    );
    let mut renewals = 0;
    for hours in [20, 36, 36] {
        sim_clock(&sim.url, json!({"advanceSeconds": hours * 3600})).await;
        let renewed = wait_for(Duration::from_secs(10), "a renewal", || async {
            let s = live_sub(&sim.url, &resource, &[]).await;
            (expiry(&s) != last_expiry).then_some(s)
        })
        .await;
        renewals += 1;
        assert_eq!(renewed["id"], gid1.as_str(), "renewed, not recreated");
        last_expiry = expiry(&renewed);
        posted.push(post_message(&sim.url, chat, &format!("after renewal {renewals}")).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        proxy.count("PATCH", false),
        renewals,
        "one PATCH per renewal"
    );
    assert_eq!(proxy.count("POST", true), 1, "created once");

    // Delivery paused: these are dropped by Graph; a removal follows, and a
    // message is posted while the subscription is gone.
    sim_delivery_paused(&sim.url, true).await;
    posted.push(post_message(&sim.url, chat, "while paused 1").await);
    posted.push(post_message(&sim.url, chat, "while paused 2").await);
    sim_delivery_paused(&sim.url, false).await;
    post_json(
        format!("{}/_sim/graph/subscriptions/{gid1}/lifecycle", sim.url),
        json!({"event": "subscriptionRemoved"}),
    )
    .await;
    posted.push(post_message(&sim.url, chat, "while removed").await);
    let second = live_sub(&sim.url, &resource, std::slice::from_ref(&gid1)).await;
    let gid2 = second["id"].as_str().unwrap().to_owned();
    posted.push(post_message(&sim.url, chat, "after recreation").await);
    all_accepted(&sink, &posted, Duration::from_secs(15)).await;

    // The sim expires it early (no event): found by the next check, recreated, gap read.
    post_json(
        format!("{}/_sim/graph/subscriptions/{gid2}/expire", sim.url),
        json!({}),
    )
    .await;
    posted.push(post_message(&sim.url, chat, "while expired").await);
    let third = live_sub(&sim.url, &resource, &[gid1.clone(), gid2.clone()]).await;
    posted.push(post_message(&sim.url, chat, "after early expiry").await);
    all_accepted(&sink, &posted, Duration::from_secs(15)).await;
    assert_ne!(third["id"], gid2.as_str());

    // Late resends or resync overlaps must not show up as second deliveries.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_exactly_once(&sink, &posted);
    assert!(sink
        .hits()
        .iter()
        .all(|h| h.signed && h.notification_id.len() == 64));
    let texts: Vec<String> = sink.hits().iter().map(|h| h.text.clone()).collect();
    assert!(texts.iter().any(|t| t == "while paused 2"), "{texts:?}");
    let admin_url = bf.admin_url();
    assert!(metric_sum(admin_url, "botfleet_graph_resyncs_total", &[]).await >= 2.0);
    assert_eq!(
        metric_sum(
            admin_url,
            "botfleet_graph_subscription_creations_total",
            &[]
        )
        .await,
        3.0
    );
    assert_eq!(
        metric_sum(
            admin_url,
            "botfleet_graph_subscription_renewal_failures_total",
            &[]
        )
        .await,
        0.0
    );
    assert_eq!(proxy.count("POST", true), 3, "created, recreated twice");
}

/// Makes botfleet store a conversation reference in `TENANT` (a signed
/// activity from Teams' side), so it knows the tenant's serviceUrl, and
/// registers the on-call channel with the sim's connector.
async fn seed_on_call(sim: &str, bf: &Botfleet) {
    register(sim, &[("a:anchor-1", TENANT)]).await;
    post_json(
        format!("{sim}/_sim/conversations"),
        json!({"conversations": [
            {"id": "19:general-1@thread.tacv2", "tenantId": TENANT},
            {"id": "19:oncall-1@thread.tacv2", "tenantId": TENANT},
        ]}),
    )
    .await;
    let token = mint(
        sim,
        json!({"appId": APP_ID, "serviceUrl": service_url(sim)}),
    )
    .await;
    let (status, body) = post_activity(
        &format!("{}/api/messages", bf.url()),
        Some(&token),
        &message(sim, "a:anchor-1", "in-anchor", "hi"),
    )
    .await;
    assert!((200..300).contains(&status), "{status} {body}");
}

/// The sim connector's create-conversation calls (a channel target posts a
/// new thread with the activity).
async fn connector_creates(sim: &str) -> Vec<Value> {
    get_json(format!("{sim}/_sim/activities?all=true&operation=create")).await["activities"]
        .as_array()
        .unwrap()
        .clone()
}

/// Issue 12's second check: an emergency message in a watched chat becomes
/// exactly one alert in the on-call channel (a notification job, template
/// filled from the message), other messages none; and when botfleet
/// acknowledges late (its Redis paused for 4 s, so the 202 comes after
/// Graph's 3 s), the sim redelivers the batch and there is still one alert.
#[actix_web::test]
async fn an_emergency_message_gives_exactly_one_alert_in_the_on_call_channel_even_when_redelivered()
{
    let redis = OwnRedis::start();
    let sim = start_sim();
    let chat = "19:emergency@thread.v2";
    let resource = format!("/chats/{chat}/messages");
    sim_chat(&sim.url, chat).await;
    let sub = format!(
        r#"
[[graph.subscriptions]]
id = "emergency"
bot = "bot"
tenant_id = "{TENANT}"
resource = "{resource}"
action = {{ kind = "job", targets = {{ channel = {{ team = "19:general-1@thread.tacv2", channel = "19:oncall-1@thread.tacv2", tenant = "{TENANT}" }} }}, text = "ALERT in {{{{chat}}}}: {{{{text}}}}", contains = ["emergency"] }}
"#
    );
    let graph_url = format!("{}/graph/v1.0", sim.url);
    let bf = start(&config(
        &sim.url,
        &graph_url,
        &redis.url(),
        "h26-alert",
        &sub,
    ));
    seed_on_call(&sim.url, &bf).await;
    live_sub(&sim.url, &resource, &[]).await;

    post_message(&sim.url, chat, "lunch at noon?").await;
    let emergency = post_message(&sim.url, chat, "EMERGENCY: smoke on floor 4").await;
    let creates = wait_for(Duration::from_secs(20), "the alert thread", || async {
        let c = connector_creates(&sim.url).await;
        (!c.is_empty()).then_some(c)
    })
    .await;
    assert_eq!(creates.len(), 1, "{creates:?}");
    assert_eq!(creates[0]["status"], 201, "{}", creates[0]);
    assert_eq!(
        creates[0]["body"]["channelData"]["channel"]["id"],
        "19:oncall-1@thread.tacv2"
    );
    assert_eq!(
        creates[0]["body"]["activity"]["text"],
        format!("ALERT in {chat}: EMERGENCY: smoke on floor 4")
    );
    assert!(!emergency.is_empty());

    // A late acknowledgement: every write waits 4 s, the sim gives up on the
    // answer after 3 s, counts it late and sends the batch again.
    let before = sim_deliveries(&sim.url, "notification").await.len();
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "4000", "WRITE"]), "OK");
    post_message(&sim.url, chat, "second emergency: the lift is stuck").await;
    let retried = wait_for(Duration::from_secs(25), "a redelivery", || async {
        let d = sim_deliveries(&sim.url, "notification").await;
        let later: Vec<Value> = d.into_iter().skip(before).collect();
        let redelivered = later
            .iter()
            .any(|x| x["attempt"].as_u64().unwrap_or(0) >= 2 && x["outcome"] == "delivered");
        redelivered.then_some(later)
    })
    .await;
    assert!(
        retried.iter().any(|x| x["outcome"] == "late"),
        "the first answer came after 3 s: {retried:?}"
    );
    wait_for(Duration::from_secs(20), "the second alert", || async {
        (connector_creates(&sim.url).await.len() >= 2).then_some(())
    })
    .await;
    // Time for a duplicate job to be created and sent, if there were one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let creates = connector_creates(&sim.url).await;
    let texts: Vec<&str> = creates
        .iter()
        .map(|c| c["body"]["activity"]["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        texts,
        vec![
            format!("ALERT in {chat}: EMERGENCY: smoke on floor 4"),
            format!("ALERT in {chat}: second emergency: the lift is stuck"),
        ],
        "one alert per emergency message"
    );
    let admin_url = bf.admin_url();
    assert!(metric_sum(admin_url, "botfleet_graph_duplicates_total", &[]).await >= 1.0);
    assert_eq!(
        metric_sum(admin_url, "botfleet_graph_filtered_total", &[]).await,
        1.0
    );
}

/// The endpoint's checks: a wrong clientState (and an unknown subscription)
/// is dropped and counted, never processed; a hostile validation token is
/// echoed byte for byte as `text/plain` with `nosniff`, never as HTML; an
/// oversized one is refused.
#[actix_web::test]
async fn the_endpoint_drops_a_wrong_client_state_and_echoes_a_hostile_token_as_plain_text() {
    let sim = start_sim();
    let sink = Sink::start();
    let chat = "19:endpoint@thread.v2";
    let resource = format!("/chats/{chat}/messages");
    sim_chat(&sim.url, chat).await;
    let graph_url = format!("{}/graph/v1.0", sim.url);
    let prefix = testing::unique_prefix("graph-endpoint");
    let bf = start(&config(
        &sim.url,
        &graph_url,
        &testing::single_url(),
        &prefix,
        &webhook_sub("endpoint", &resource, &sink.url, ""),
    ));
    let sub = live_sub(&sim.url, &resource, &[]).await;
    let gid = sub["id"].as_str().unwrap();
    let ok = post_message(&sim.url, chat, "a real one").await;
    all_accepted(&sink, std::slice::from_ref(&ok), Duration::from_secs(10)).await;

    // A message Graph did not deliver (paused), announced by someone who
    // does not know the clientState.
    sim_delivery_paused(&sim.url, true).await;
    let hidden = post_message(&sim.url, chat, "forged announcement").await;
    let notify = format!("{}/api/graph/notifications", bf.url());
    let item = |client_state: &str| {
        json!({
            "subscriptionId": gid,
            "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z",
            "changeType": "created",
            "resource": format!("chats('{chat}')/messages('{hidden}')"),
            "resourceData": {"id": hidden, "@odata.type": "#Microsoft.Graph.chatMessage", "@odata.id": format!("chats('{chat}')/messages('{hidden}')")},
            "clientState": client_state,
            "tenantId": TENANT,
        })
    };
    let resp = http()
        .post(&notify)
        .json(&json!({"value": [item("endpoint.AAAAwrong"), item("nobody.secret"), item("")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let admin_url = bf.admin_url();
    wait_for(Duration::from_secs(5), "the drops counted", || async {
        let cs = metric_sum(
            admin_url,
            "botfleet_graph_items_dropped_total",
            &[("reason", "client_state")],
        )
        .await;
        let unknown = metric_sum(
            admin_url,
            "botfleet_graph_items_dropped_total",
            &[("reason", "unknown_subscription")],
        )
        .await;
        (cs == 2.0 && unknown == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        metric_sum(admin_url, "botfleet_graph_items_accepted_total", &[]).await,
        1.0
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !sink.accepted().contains_key(&hidden),
        "a forged item was processed"
    );
    sim_delivery_paused(&sim.url, false).await;

    // The handshake with a hostile token: decoded, echoed as text, never HTML.
    let hostile = "<script>alert('x')</script> &amp; +=% \"quoted\" Validation: Request-Id: 1";
    let resp = http()
        .post(format!("{notify}?validationToken={}", urlencode(hostile)))
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "{h:?}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["content-security-policy"], "default-src 'none'");
    assert_eq!(resp.text().await.unwrap(), hostile);
    // The lifecycle URL answers the same way; a token over 2,048 bytes is refused.
    let resp = http()
        .post(format!(
            "{}/api/graph/lifecycle?validationToken=a%2Bb",
            bf.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "a+b");
    let resp = http()
        .post(format!("{notify}?validationToken={}", "x".repeat(3000)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
}

/// A webhook that takes 5 s to answer does not hold Graph's acknowledgement:
/// every notification POST of the sim was answered 2xx well within 3 s, and
/// the message still reaches the webhook once.
#[actix_web::test]
async fn a_slow_webhook_does_not_delay_the_acknowledgement() {
    let sim = start_sim();
    let sink = Sink::start();
    sink.delay_ms.store(5000, Ordering::SeqCst);
    let chat = "19:slow@thread.v2";
    let resource = format!("/chats/{chat}/messages");
    sim_chat(&sim.url, chat).await;
    let graph_url = format!("{}/graph/v1.0", sim.url);
    let prefix = testing::unique_prefix("graph-slow");
    let _bf = start(&config(
        &sim.url,
        &graph_url,
        &testing::single_url(),
        &prefix,
        &webhook_sub("slow", &resource, &sink.url, ""),
    ));
    live_sub(&sim.url, &resource, &[]).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(post_message(&sim.url, chat, &format!("slow {i}")).await);
    }
    all_accepted(&sink, &ids, Duration::from_secs(25)).await;
    let d = sim_deliveries(&sim.url, "notification").await;
    assert!(!d.is_empty());
    for x in &d {
        assert_eq!(x["outcome"], "delivered", "{x}");
        assert_eq!(x["attempt"], 1, "{x}");
        assert!(x["latencyMs"].as_u64().unwrap() < 3000, "{x}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_exactly_once(&sink, &ids);
}

/// Writes an RSA certificate and key (openssl CLI) for rich notifications.
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=botfleet-e2e",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl on PATH");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// Rich notifications (encryptedContent): a forged validation token (signed
/// by a key the OpenID document does not publish), an expired one and a
/// tampered ciphertext are refused and counted, never processed; a correct
/// one is decrypted and reaches the webhook.
#[actix_web::test]
async fn rich_notifications_with_a_forged_or_expired_token_or_tampered_content_are_refused() {
    let sim = start_sim();
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let chat = "19:rich@thread.v2";
    let resource = format!("/chats/{chat}/messages");
    sim_chat(&sim.url, chat).await;
    let graph_url = format!("{}/graph/v1.0", sim.url);
    let prefix = testing::unique_prefix("graph-rich");
    let enc = format!(
        "encryption = {{ certificate_file = \"{}\", key_file = \"{}\", certificate_id = \"e2e-1\" }}",
        cert.display(),
        key.display()
    );
    let bf = start(&config(
        &sim.url,
        &graph_url,
        &testing::single_url(),
        &prefix,
        &webhook_sub("rich", &resource, &sink.url, &enc),
    ));
    let sub = live_sub(&sim.url, &resource, &[]).await;
    assert_eq!(sub["includeResourceData"], true, "{sub}");
    let admin_url = bf.admin_url();
    let rejected = |reason: &'static str| async move {
        metric_sum(
            admin_url,
            "botfleet_graph_items_rejected_total",
            &[("reason", reason)],
        )
        .await
    };
    let mut refused = Vec::new();
    for (fault, reason, text) in [
        (
            json!({"validationTokens": "foreignKey"}),
            "token_invalid",
            "forged token",
        ),
        (
            json!({"validationTokens": "expired"}),
            "token_invalid",
            "expired token",
        ),
        (
            json!({"tamperEncryptedContent": true}),
            "signature",
            "tampered",
        ),
    ] {
        let before = rejected(reason).await;
        sim_graph_faults(&sim.url, fault).await;
        refused.push(post_message(&sim.url, chat, text).await);
        wait_for(Duration::from_secs(10), reason, || async {
            (rejected(reason).await > before).then_some(())
        })
        .await;
    }
    post_json(format!("{}/_sim/graph/faults", sim.url), json!({})).await;
    let good = post_message(&sim.url, chat, "a genuine rich one").await;
    all_accepted(&sink, std::slice::from_ref(&good), Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_exactly_once(&sink, std::slice::from_ref(&good));
    assert_eq!(sink.hits()[0].text, "a genuine rich one");
    assert_eq!(rejected("token_invalid").await, 2.0);
    assert_eq!(rejected("signature").await, 1.0);
}

/// Two replicas (same Redis, same configuration) race for every renewal:
/// the subscription's lease lets exactly one of them write, so Graph sees one
/// creation and one PATCH per renewal.
#[actix_web::test]
async fn two_replicas_make_one_creation_and_one_patch_per_renewal() {
    let sim = start_sim();
    let sink = Sink::start();
    let proxy = Proxy::start(&sim.url);
    let chat = "19:replicas@thread.v2";
    let resource = format!("/chats/{chat}/messages");
    sim_chat(&sim.url, chat).await;
    let prefix = testing::unique_prefix("graph-replicas");
    let toml = config(
        &sim.url,
        &proxy.graph_url,
        &testing::single_url(),
        &prefix,
        &webhook_sub("replicas", &resource, &sink.url, ""),
    );
    let a = start(&toml);
    let b = start(&toml);
    let first = live_sub(&sim.url, &resource, &[]).await;
    let expiry = |s: &Value| s["expirationDateTime"].as_str().unwrap().to_owned();
    let mut last = expiry(&first);
    for round in 1..=3 {
        sim_clock(&sim.url, json!({"advanceSeconds": 36 * 3600})).await;
        let renewed = wait_for(Duration::from_secs(10), "a renewal", || async {
            let s = live_sub(&sim.url, &resource, &[]).await;
            (expiry(&s) != last).then_some(s)
        })
        .await;
        assert_eq!(renewed["id"], first["id"]);
        last = expiry(&renewed);
        // Several check intervals of both replicas: a second writer would show.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            proxy.count("PATCH", false),
            round,
            "{:?}",
            proxy.subscription_calls()
        );
    }
    assert_eq!(proxy.count("POST", true), 1);
    let renewals = metric_sum(
        a.admin_url(),
        "botfleet_graph_subscription_renewals_total",
        &[],
    )
    .await
        + metric_sum(
            b.admin_url(),
            "botfleet_graph_subscription_renewals_total",
            &[],
        )
        .await;
    assert_eq!(renewals, 3.0);
    // Notifications land on either replica; each message is processed once.
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(post_message(&sim.url, chat, &format!("replicated {i}")).await);
    }
    all_accepted(&sink, &ids, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_exactly_once(&sink, &ids);
}

/// Redis restarted between persisting a notification and processing it (the
/// webhook refuses with 503 meanwhile, so the item waits in the inbox): once
/// Redis is back (AOF) and the webhook accepts, the message is processed
/// exactly once, and messages after the restart flow normally.
#[actix_web::test]
async fn redis_restarted_between_persisting_and_processing_loses_and_repeats_nothing() {
    let mut redis = OwnRedis::start();
    let sim = start_sim();
    let sink = Sink::start();
    sink.fail.store(true, Ordering::SeqCst);
    let chat = "19:restart@thread.v2";
    let resource = format!("/chats/{chat}/messages");
    sim_chat(&sim.url, chat).await;
    let graph_url = format!("{}/graph/v1.0", sim.url);
    let bf = start(&config(
        &sim.url,
        &graph_url,
        &redis.url(),
        "h26-restart",
        &webhook_sub("restart", &resource, &sink.url, ""),
    ));
    live_sub(&sim.url, &resource, &[]).await;
    let first = post_message(&sim.url, chat, "before the restart").await;
    // Acknowledged (persisted) and tried at least once, not processed.
    wait_for(
        Duration::from_secs(10),
        "a refused webhook call",
        || async {
            sink.hits()
                .iter()
                .any(|h| h.message_id == first)
                .then_some(())
        },
    )
    .await;
    let d = sim_deliveries(&sim.url, "notification").await;
    assert!(d.iter().any(|x| x["outcome"] == "delivered"), "{d:?}");
    redis.restart();
    sink.fail.store(false, Ordering::SeqCst);
    all_accepted(&sink, std::slice::from_ref(&first), Duration::from_secs(20)).await;
    let second = post_message(&sim.url, chat, "after the restart").await;
    let ids = vec![first, second];
    all_accepted(&sink, &ids, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_exactly_once(&sink, &ids);
    assert_eq!(
        metric_sum(bf.admin_url(), "botfleet_graph_persist_failures_total", &[]).await,
        0.0
    );
}

/// The admin API: a subscription created there is subscribed at Graph even
/// through a 429 storm (Retry-After honoured between attempts, the 429 shown
/// as `last_error` meanwhile), its state shows the Graph id, expiry, last
/// renewal and last notification, and DELETE removes it at Graph too. A
/// missing one answers `graph_subscription_not_found`.
#[actix_web::test]
async fn admin_api_creates_shows_and_deletes_a_subscription_through_a_429_storm() {
    let sim = start_sim();
    let sink = Sink::start();
    let proxy = Proxy::start(&sim.url);
    let chat = "19:admin@thread.v2";
    let resource = format!("/chats/{chat}/messages");
    sim_chat(&sim.url, chat).await;
    let prefix = testing::unique_prefix("graph-admin");
    let bf = start(&config(
        &sim.url,
        &proxy.graph_url,
        &testing::single_url(),
        &prefix,
        "",
    ));
    sim_graph_faults(
        &sim.url,
        json!({"throttleNextWrites": 3, "retryAfterSecs": 2}),
    )
    .await;
    let (status, _, body) = admin(
        &bf,
        reqwest::Method::POST,
        "/graph/subscriptions",
        Some(json!({
            "id": "from-api",
            "bot": "bot",
            "tenant_id": TENANT,
            "resource": resource,
            "action": {"kind": "webhook", "url": sink.url, "secret": HOOK_SECRET},
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["spec"]["source"], "api");
    assert_eq!(body["spec"]["action"]["secret"], "[redacted]", "{body}");
    let throttled = wait_for(Duration::from_secs(5), "the 429 as last_error", || async {
        let (_, _, b) = admin(
            &bf,
            reqwest::Method::GET,
            "/graph/subscriptions/from-api",
            None,
        )
        .await;
        let e = b["state"]["last_error"].as_str().unwrap_or("").to_owned();
        e.contains("429").then_some(b)
    })
    .await;
    assert!(
        throttled["state"]["graph_subscription_id"].is_null(),
        "{throttled}"
    );
    let sub = wait_for(
        Duration::from_secs(20),
        "the subscription at Graph",
        || async { sim_subs(&sim.url, &resource).await.into_iter().next() },
    )
    .await;
    // Three 429s then the creation, each attempt at least Retry-After later.
    let writes: Vec<Call> = proxy
        .subscription_calls()
        .into_iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/subscriptions"))
        .collect();
    let statuses: Vec<u16> = writes.iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![429, 429, 429, 201], "{writes:?}");
    for pair in writes.windows(2) {
        let waited = pair[1].at.duration_since(pair[0].at);
        let asked = Duration::from_secs(pair[0].retry_after.unwrap());
        assert!(
            waited >= asked - Duration::from_millis(50),
            "waited {waited:?}, asked {asked:?}"
        );
    }
    assert!(metric_sum(bf.admin_url(), "botfleet_graph_throttled_total", &[]).await >= 3.0);

    let id = post_message(&sim.url, chat, "seen through the API").await;
    all_accepted(&sink, std::slice::from_ref(&id), Duration::from_secs(10)).await;
    let state = wait_for(Duration::from_secs(5), "last_notification", || async {
        let (s, _, b) = admin(
            &bf,
            reqwest::Method::GET,
            "/graph/subscriptions/from-api",
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        (!b["state"]["last_notification"].is_null()).then_some(b["state"].clone())
    })
    .await;
    assert_eq!(state["graph_subscription_id"], sub["id"], "{state}");
    assert!(
        state["last_error"].is_null(),
        "cleared after the creation: {state}"
    );
    for f in ["expires_at", "last_renewal", "last_seen_message"] {
        assert!(state[f].is_string(), "{f}: {state}");
    }
    let expires = state["expires_at"].as_str().unwrap();
    assert_eq!(
        expires[..19],
        sub["expirationDateTime"].as_str().unwrap()[..19],
        "{state} vs {sub}"
    );
    let (s, _, b) = admin(
        &bf,
        reqwest::Method::POST,
        "/graph/subscriptions",
        Some(json!({
            "id": "from-api",
            "bot": "bot",
            "tenant_id": TENANT,
            "resource": "/chats/19:other@thread.v2/messages",
            "action": {"kind": "record"},
        })),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(
        b["type"], "urn:botfleet:problem:graph_subscription_conflict",
        "{b}"
    );
    let (s, _, list) = admin(&bf, reqwest::Method::GET, "/graph/subscriptions", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");

    let (s, _, b) = admin(
        &bf,
        reqwest::Method::DELETE,
        "/graph/subscriptions/from-api",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    assert!(
        sim_subs(&sim.url, &resource).await.is_empty(),
        "deleted at Graph too"
    );
    assert_eq!(proxy.count("DELETE", false), 1);
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let (s, h, b) = admin(&bf, method, "/graph/subscriptions/from-api", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
        assert_eq!(h["content-type"], "application/problem+json");
        assert_eq!(
            b["type"], "urn:botfleet:problem:graph_subscription_not_found",
            "{b}"
        );
        assert!(b["detail"].as_str().unwrap().contains("from-api"), "{b}");
    }
}

/// Percentile `p` (0..=100) of sorted `v`.
fn percentile(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Measurement for docs/benchmarks.md (run by hand: `cargo test -p
/// botfleet-server --test graph_e2e -- --ignored --nocapture`): the
/// notification endpoint's acknowledgement latency as the sim measures it
/// over ~1,000 single-item deliveries, then processing throughput of a
/// burst of 2,000 messages delivered in Graph's batches (record action).
#[actix_web::test]
#[ignore = "a measurement, not a check: run by hand"]
async fn graph_ack_latency_and_processing_throughput() {
    let sim = start_sim();
    let chat = "19:bench@thread.v2";
    let resource = format!("/chats/{chat}/messages");
    sim_chat(&sim.url, chat).await;
    let graph_url = format!("{}/graph/v1.0", sim.url);
    let prefix = testing::unique_prefix("graph-bench");
    let sub = format!(
        "[[graph.subscriptions]]\nid = \"bench\"\nbot = \"bot\"\ntenant_id = \"{TENANT}\"\nresource = \"{resource}\"\naction = {{ kind = \"record\" }}\n"
    );
    let bf = start(&config(
        &sim.url,
        &graph_url,
        &testing::single_url(),
        &prefix,
        &sub,
    ));
    live_sub(&sim.url, &resource, &[]).await;
    let processed = || async {
        metric_sum(
            bf.admin_url(),
            "botfleet_graph_actions_total",
            &[("kind", "record")],
        )
        .await
    };

    // Phase 1: one item per POST (no batching window, one poster).
    post_json(
        format!("{}/_sim/graph/config", sim.url),
        json!({"batchWindowMs": 0}),
    )
    .await;
    let n = 1000usize;
    let started = Instant::now();
    let sim_url = sim.url.clone();
    for i in 0..n {
        post_message(&sim_url, chat, &format!("bench {i}")).await;
    }
    wait_for(Duration::from_secs(300), "phase 1 processed", || async {
        (processed().await >= n as f64).then_some(())
    })
    .await;
    let phase1 = started.elapsed();
    let d = sim_deliveries(&sim.url, "notification").await;
    let mut lat: Vec<u64> = d.iter().filter_map(|x| x["latencyMs"].as_u64()).collect();
    lat.sort_unstable();
    let items: u64 = d.iter().filter_map(|x| x["items"].as_u64()).sum();
    let late = d.iter().filter(|x| x["outcome"] != "delivered").count();
    println!(
        "GRAPH-BENCH ack latency over {} POSTs ({items} items): p50 {} ms, p90 {} ms, p99 {} ms, max {} ms; not delivered first time: {late}; {n} processed in {:.1} s ({:.0}/s)",
        lat.len(),
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or(0),
        phase1.as_secs_f64(),
        n as f64 / phase1.as_secs_f64()
    );

    // Phase 2: Graph's batching (50 ms window), 2,000 messages from 16 posters.
    post_json(
        format!("{}/_sim/graph/config", sim.url),
        json!({"batchWindowMs": 50}),
    )
    .await;
    let before = sim_deliveries(&sim.url, "notification").await.len();
    let m = 2000usize;
    let started = Instant::now();
    futures::future::join_all((0..16).map(|w| {
        let sim_url = sim_url.clone();
        async move {
            for i in (w..m).step_by(16) {
                post_message(&sim_url, chat, &format!("burst {i}")).await;
            }
        }
    }))
    .await;
    let posted = started.elapsed();
    wait_for(Duration::from_secs(300), "phase 2 processed", || async {
        (processed().await >= (n + m) as f64).then_some(())
    })
    .await;
    let phase2 = started.elapsed();
    let d: Vec<Value> = sim_deliveries(&sim.url, "notification")
        .await
        .into_iter()
        .skip(before)
        .collect();
    let mut lat: Vec<u64> = d.iter().filter_map(|x| x["latencyMs"].as_u64()).collect();
    lat.sort_unstable();
    println!(
        "GRAPH-BENCH burst: {m} messages posted in {:.1} s, {} POSTs (p50 {} ms, p99 {} ms), all processed after {:.1} s ({:.0}/s)",
        posted.as_secs_f64(),
        d.len(),
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        phase2.as_secs_f64(),
        m as f64 / phase2.as_secs_f64()
    );
    assert_eq!(
        metric_sum(bf.admin_url(), "botfleet_graph_duplicates_total", &[]).await,
        0.0
    );
}

/// botfleet down while messages are posted (Graph's retries run out and
/// drop them), then started again at another address: the new process takes
/// the lease, moves the subscription to its own notification URL (recreated
/// there: the old one would keep delivering to a dead address), reads the
/// gap back, and a `reauthorizationRequired` is answered with a
/// reauthorization. Every message exactly once.
#[actix_web::test]
async fn messages_posted_while_botfleet_is_down_are_read_back_and_a_moved_endpoint_is_followed() {
    let sim = start_sim();
    let sink = Sink::start();
    let proxy = Proxy::start(&sim.url);
    let chat = "19:outage@thread.v2";
    let resource = format!("/chats/{chat}/messages");
    sim_chat(&sim.url, chat).await;
    // Failed deliveries are dropped at once (Graph gives up after about 4 h).
    post_json(
        format!("{}/_sim/graph/config", sim.url),
        json!({"retryDelaysMs": []}),
    )
    .await;
    let prefix = testing::unique_prefix("graph-outage");
    let toml = config(
        &sim.url,
        &proxy.graph_url,
        &testing::single_url(),
        &prefix,
        &webhook_sub("outage", &resource, &sink.url, ""),
    );
    let bf = start(&toml);
    let first = live_sub(&sim.url, &resource, &[]).await;
    let gid1 = first["id"].as_str().unwrap().to_owned();
    let mut ids = vec![post_message(&sim.url, chat, "before the outage").await];
    all_accepted(&sink, &ids, Duration::from_secs(10)).await;
    drop(bf);
    ids.push(post_message(&sim.url, chat, "during the outage 1").await);
    ids.push(post_message(&sim.url, chat, "during the outage 2").await);
    wait_for(
        Duration::from_secs(10),
        "the dropped deliveries",
        || async {
            let d = sim_deliveries(&sim.url, "notification").await;
            (d.iter().filter(|x| x["outcome"] == "dropped").count() >= 1).then_some(())
        },
    )
    .await;

    let bf = start(&toml);
    let moved = live_sub(&sim.url, &resource, std::slice::from_ref(&gid1)).await;
    assert_eq!(
        moved["notificationUrl"],
        format!("{}/api/graph/notifications", bf.url()),
        "{moved}"
    );
    all_accepted(&sink, &ids, Duration::from_secs(15)).await;
    ids.push(post_message(&sim.url, chat, "after the restart").await);
    all_accepted(&sink, &ids, Duration::from_secs(10)).await;

    let gid2 = moved["id"].as_str().unwrap().to_owned();
    post_json(
        format!("{}/_sim/graph/subscriptions/{gid2}/lifecycle", sim.url),
        json!({"event": "reauthorizationRequired"}),
    )
    .await;
    wait_for(Duration::from_secs(10), "the reauthorization", || async {
        let s = live_sub(&sim.url, &resource, &[]).await;
        let asked = proxy.subscription_calls().iter().any(|c| {
            c.method == "POST"
                && c.path.ends_with(&format!("{gid2}/reauthorize"))
                && c.status == 204
        });
        (asked && s["reauthorizationRequired"] == false).then_some(())
    })
    .await;
    ids.push(post_message(&sim.url, chat, "after the reauthorization").await);
    all_accepted(&sink, &ids, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_exactly_once(&sink, &ids);
    assert_eq!(
        metric_sum(
            bf.admin_url(),
            "botfleet_graph_subscription_reauthorizations_total",
            &[]
        )
        .await,
        1.0
    );
}

/// The encryption certificate rotated in place (new certificate and key in
/// the configured files, the old key moved to `previous_key_file`): botfleet
/// sends the new certificate to Graph at once, and messages encrypted to
/// either certificate are decrypted; none is lost.
#[actix_web::test]
async fn a_rotated_encryption_certificate_loses_no_notification() {
    let sim = start_sim();
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let old = tempfile::tempdir().unwrap();
    let new = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let (_, older_key) = certificate(old.path());
    let prev = dir.path().join("previous.pem");
    std::fs::copy(&older_key, &prev).unwrap();
    let chat = "19:rotate@thread.v2";
    let resource = format!("/chats/{chat}/messages");
    sim_chat(&sim.url, chat).await;
    let graph_url = format!("{}/graph/v1.0", sim.url);
    let prefix = testing::unique_prefix("graph-rotate");
    let enc = format!(
        "encryption = {{ certificate_file = \"{}\", key_file = \"{}\", previous_key_file = \"{}\", certificate_id = \"e2e-1\" }}",
        cert.display(),
        key.display(),
        prev.display()
    );
    let bf = start(&config(
        &sim.url,
        &graph_url,
        &testing::single_url(),
        &prefix,
        &webhook_sub("rotate", &resource, &sink.url, &enc),
    ));
    live_sub(&sim.url, &resource, &[]).await;
    let mut ids = vec![post_message(&sim.url, chat, "before the rotation").await];
    all_accepted(&sink, &ids, Duration::from_secs(10)).await;

    // Rotate: the current key becomes the previous one.
    let (new_cert, new_key) = certificate(new.path());
    std::fs::copy(&key, &prev).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    let admin_url = bf.admin_url();
    wait_for(
        Duration::from_secs(10),
        "the new certificate sent",
        || async {
            (metric_sum(admin_url, "botfleet_graph_subscription_renewals_total", &[]).await >= 1.0)
                .then_some(())
        },
    )
    .await;
    ids.push(post_message(&sim.url, chat, "after the rotation").await);
    all_accepted(&sink, &ids, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_exactly_once(&sink, &ids);
    assert_eq!(
        metric_sum(admin_url, "botfleet_graph_items_rejected_total", &[]).await,
        0.0
    );
}

/// A gap of several pages (120 messages dropped while delivery was paused,
/// Graph pages resync reads by 50) is read back whole after the removal that
/// follows, oldest first, each message once.
#[actix_web::test]
async fn a_gap_of_several_pages_is_read_back_whole() {
    let sim = start_sim();
    let sink = Sink::start();
    let chat = "19:pages@thread.v2";
    let resource = format!("/chats/{chat}/messages");
    sim_chat(&sim.url, chat).await;
    let graph_url = format!("{}/graph/v1.0", sim.url);
    let prefix = testing::unique_prefix("graph-pages");
    let _bf = start(&config(
        &sim.url,
        &graph_url,
        &testing::single_url(),
        &prefix,
        &webhook_sub("pages", &resource, &sink.url, ""),
    ));
    let sub = live_sub(&sim.url, &resource, &[]).await;
    let mut ids = vec![post_message(&sim.url, chat, "seen live").await];
    all_accepted(&sink, &ids, Duration::from_secs(10)).await;
    sim_delivery_paused(&sim.url, true).await;
    for i in 0..120 {
        ids.push(post_message(&sim.url, chat, &format!("gap {i}")).await);
    }
    sim_delivery_paused(&sim.url, false).await;
    let gid = sub["id"].as_str().unwrap();
    post_json(
        format!("{}/_sim/graph/subscriptions/{gid}/lifecycle", sim.url),
        json!({"event": "subscriptionRemoved"}),
    )
    .await;
    all_accepted(&sink, &ids, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_exactly_once(&sink, &ids);
    // Processed in the order they were written.
    let order: Vec<String> = sink.hits().iter().map(|h| h.message_id.clone()).collect();
    assert_eq!(order, ids);
}

/// The sim clock running at 10 simulated hours per real second for about
/// 8 s (over three simulated days): the subscription is renewed in time
/// again and again (never recreated), and every message posted meanwhile
/// arrives once.
#[actix_web::test]
async fn a_fast_sim_clock_over_three_days_never_lets_the_subscription_lapse() {
    let sim = start_sim();
    let sink = Sink::start();
    let chat = "19:scaled@thread.v2";
    let resource = format!("/chats/{chat}/messages");
    sim_chat(&sim.url, chat).await;
    let graph_url = format!("{}/graph/v1.0", sim.url);
    let prefix = testing::unique_prefix("graph-scaled");
    let bf = start(&config(
        &sim.url,
        &graph_url,
        &testing::single_url(),
        &prefix,
        &webhook_sub("scaled", &resource, &sink.url, ""),
    ));
    let first = live_sub(&sim.url, &resource, &[]).await;
    sim_clock(&sim.url, json!({"scale": 36000.0})).await;
    let started = Instant::now();
    let mut ids = Vec::new();
    while started.elapsed() < Duration::from_secs(8) {
        ids.push(post_message(&sim.url, chat, &format!("tick {}", ids.len())).await);
        let live = sim_subs(&sim.url, &resource).await;
        assert_eq!(live.len(), 1, "the subscription lapsed: {live:?}");
        assert_eq!(live[0]["id"], first["id"], "recreated: it had lapsed");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    sim_clock(&sim.url, json!({"scale": 1.0})).await;
    all_accepted(&sink, &ids, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_exactly_once(&sink, &ids);
    let admin_url = bf.admin_url();
    assert!(metric_sum(admin_url, "botfleet_graph_subscription_renewals_total", &[]).await >= 2.0);
    assert_eq!(
        metric_sum(
            admin_url,
            "botfleet_graph_subscription_creations_total",
            &[]
        )
        .await,
        1.0
    );
}
