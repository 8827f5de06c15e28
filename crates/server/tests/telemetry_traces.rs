//! Traces end to end: `botfleet serve` and `botfleet-sim` as processes, an
//! OTLP/HTTP receiver of the test's own (protobuf `ExportTraceServiceRequest`
//! decoded with `opentelemetry-proto`), a webhook bot logic that records the
//! `traceparent` it is given. One turn is one trace from the HTTP span to the
//! connector call; an upstream `traceparent` is honoured; no span carries the
//! message text, a secret or a token. Faults: collector down (serving goes
//! on, failures counted), collector slow (turns unaffected), invalid endpoint
//! (start-up error naming the key).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::{json, Value};

const WEBHOOK_SECRET: &str = "trace-webhook-secret-0123456789";
const UPSTREAM_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const UPSTREAM_SPAN: &str = "00f067aa0ba902b7";

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: HashMap<String, String>,
    /// Keys of the attributes exported as `intValue` (the semantic
    /// conventions type `http.response.status_code` as an int).
    ints: Vec<String>,
    service: String,
}

#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<Span>>>,
    requests: Arc<Mutex<u64>>,
}

impl Received {
    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn attr_text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// Starts an OTLP/HTTP receiver on its own thread; each request waits
/// `delay` before its 200 (a slow collector).
fn start_receiver(delay: Duration) -> (String, Received) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let r = received.clone();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            HttpServer::new(move || {
                let r = r.clone();
                App::new().route(
                    "/v1/traces",
                    web::post().to(move |body: web::Bytes| {
                        let r = r.clone();
                        async move {
                            *r.requests.lock().unwrap() += 1;
                            tokio::time::sleep(delay).await;
                            let Ok(req) = ExportTraceServiceRequest::decode(body.as_ref()) else {
                                return HttpResponse::BadRequest().finish();
                            };
                            let mut out = r.spans.lock().unwrap();
                            for rs in req.resource_spans {
                                let service = rs
                                    .resource
                                    .as_ref()
                                    .and_then(|res| {
                                        res.attributes.iter().find(|a| a.key == "service.name")
                                    })
                                    .map(|a| attr_text(&a.value))
                                    .unwrap_or_default();
                                for ss in rs.scope_spans {
                                    for s in ss.spans {
                                        out.push(Span {
                                            name: s.name.clone(),
                                            trace_id: hex::encode(&s.trace_id),
                                            span_id: hex::encode(&s.span_id),
                                            parent: hex::encode(&s.parent_span_id),
                                            attrs: s
                                                .attributes
                                                .iter()
                                                .map(|a| (a.key.clone(), attr_text(&a.value)))
                                                .collect(),
                                            ints: s
                                                .attributes
                                                .iter()
                                                .filter(|a| {
                                                    matches!(
                                                        a.value
                                                            .as_ref()
                                                            .and_then(|v| v.value.as_ref()),
                                                        Some(AnyValue::IntValue(_))
                                                    )
                                                })
                                                .map(|a| a.key.clone())
                                                .collect(),
                                            service: service.clone(),
                                        });
                                    }
                                }
                            }
                            HttpResponse::Ok()
                                .content_type("application/x-protobuf")
                                .finish()
                        }
                    }),
                )
            })
            .workers(2)
            .listen(listener)
            .unwrap()
            .run()
            .await
            .unwrap();
        })
    });
    (format!("http://{addr}"), received)
}

/// A webhook bot logic: records the `traceparent` of each call and answers
/// with one reply (so a connector call follows the webhook).
fn start_hook() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            HttpServer::new(move || {
                let s = s.clone();
                App::new().route(
                    "/hook",
                    web::post().to(move |req: HttpRequest| {
                        let s = s.clone();
                        async move {
                            let tp = req
                                .headers()
                                .get("traceparent")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            s.lock().unwrap().push(tp);
                            // Recorded only when sent, so an empty one shows
                            // (W3C: vendors SHOULD avoid sending it empty).
                            if let Some(ts) = req.headers().get("tracestate") {
                                s.lock()
                                    .unwrap()
                                    .push(format!("tracestate:{}", ts.to_str().unwrap_or("?")));
                            }
                            HttpResponse::Ok().json(json!({
                                "replies": [{"type": "message", "text": "webhook reply"}]
                            }))
                        }
                    }),
                )
            })
            .workers(1)
            .listen(listener)
            .unwrap()
            .run()
            .await
            .unwrap();
        })
    });
    (format!("http://{addr}/hook"), seen)
}

fn config(sim: &str, hook: &str, telemetry: &str) -> String {
    format!(
        r#"
[telemetry]
{telemetry}
{cloud}
[[bots]]
id = "echo"
app_id = "{APP_ID}"
app_password = "{APP_SECRET}"
cloud = "sim"
handler = {{ kind = "echo" }}
[[bots]]
id = "hook"
app_id = "{OTHER_APP_ID}"
app_password = "other-secret"
cloud = "sim"
handler = {{ kind = "webhook", url = "{hook}", secret = "{WEBHOOK_SECRET}", timeout = "5s" }}
"#,
        cloud = sim_cloud(sim),
    )
}

fn activity(sim: &str, app_id: &str, conversation: &str, id: &str, text: &str) -> Value {
    let mut a = message(sim, conversation, id, text);
    a["recipient"]["id"] = json!(format!("28:{app_id}"));
    a
}

async fn post(url: &str, token: &str, a: &Value, traceparent: Option<&str>) -> u16 {
    let mut req = http()
        .post(format!("{url}/api/messages"))
        .bearer_auth(token)
        .json(a);
    if let Some(tp) = traceparent {
        req = req
            .header("traceparent", tp)
            .header("tracestate", "proxy=1");
    }
    req.send().await.unwrap().status().as_u16()
}

async fn token(sim: &str, app_id: &str) -> String {
    mint(
        sim,
        json!({"appId": app_id, "serviceUrl": service_url(sim)}),
    )
    .await
}

/// Waits until `pred` holds for the spans received (the batch exports every
/// second).
async fn wait_for(r: &Received, what: &str, pred: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = r.spans();
        if pred(&spans) {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not received; spans so far:\n{}",
            spans
                .iter()
                .map(|s| format!("{} {} {} <- {}", s.name, s.trace_id, s.span_id, s.parent))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn one<'a>(spans: &'a [Span], trace: &str, name: &str) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id == trace && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one `{name}` span in trace {trace}: {found:?}"
    );
    found[0]
}

fn child_of<'a>(spans: &'a [Span], parent: &Span, name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.parent == parent.span_id && s.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no `{name}` span under `{}` ({}): {spans:#?}",
                parent.name, parent.span_id
            )
        })
}

#[actix_web::test]
async fn one_trace_per_turn_across_the_actor_hops_to_the_connector_and_the_webhook() {
    let (collector, received) = start_receiver(Duration::ZERO);
    let (hook, hook_seen) = start_hook();
    let sim = start_sim();
    let bf = start_botfleet(&config(
        &sim.url,
        &hook,
        &format!("otlp_endpoint = \"{collector}\"\nservice_name = \"bf-traces\""),
    ));
    let echo_token = token(&sim.url, APP_ID).await;
    let hook_token = token(&sim.url, OTHER_APP_ID).await;
    register(
        &sim.url,
        &[("a:conv-echo", TENANT), ("a:conv-hook", TENANT)],
    )
    .await;

    // The echo bot, behind a proxy that started the trace.
    let upstream = format!("00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01");
    let a = activity(&sim.url, APP_ID, "a:conv-echo", "m1", "SECRET-TEXT-echo");
    assert_eq!(post(bf.url(), &echo_token, &a, Some(&upstream)).await, 200);
    // The webhook bot, no upstream trace.
    let h = activity(
        &sim.url,
        OTHER_APP_ID,
        "a:conv-hook",
        "m2",
        "SECRET-TEXT-hook",
    );
    assert_eq!(post(bf.url(), &hook_token, &h, None).await, 200);
    // A refusal: a token that is not one.
    let r = activity(&sim.url, APP_ID, "a:conv-echo", "m3", "x");
    assert_eq!(post(bf.url(), "not.a.token", &r, None).await, 401);

    let spans = wait_for(
        &received,
        "both turns' connector calls and the refusal",
        |s| {
            s.iter()
                .filter(|x| x.name.starts_with("Bot Connector"))
                .count()
                >= 2
                && s.iter()
                    .any(|x| x.attrs.get("botfleet.check").is_some_and(|c| !c.is_empty()))
        },
    )
    .await;

    // Echo: the upstream trace, HTTP span -> validate -> tenant -> conversation
    // -> handler -> connector call -> token.
    let http_span = one(&spans, UPSTREAM_TRACE, "POST /api/messages");
    assert_eq!(http_span.parent, UPSTREAM_SPAN, "child of the proxy's span");
    assert_eq!(http_span.service, "bf-traces");
    assert_eq!(http_span.attrs["http.response.status_code"], "200");
    assert_eq!(http_span.attrs["http.route"], "/api/messages");
    assert_eq!(http_span.attrs["botfleet.tenant_id"], TENANT);
    assert_eq!(http_span.attrs["botfleet.activity_type"], "message");
    let validate = child_of(&spans, http_span, "validate");
    assert_eq!(validate.attrs["botfleet.bot_id"], "echo");
    let tenant = child_of(&spans, validate, "tenant actor");
    assert_eq!(tenant.attrs["botfleet.tenant_id"], TENANT);
    let conversation = child_of(&spans, tenant, "conversation actor");
    assert_eq!(
        conversation.attrs["botfleet.conversation_id"],
        "a:conv-echo"
    );
    assert_eq!(conversation.attrs["botfleet.outcome"], "handled");
    let handler = child_of(&spans, conversation, "handler");
    assert_eq!(handler.attrs["botfleet.outcome"], "handled");
    let connector = child_of(&spans, handler, "Bot Connector Send");
    assert_eq!(connector.attrs["http.response.status_code"], "201");
    assert_eq!(connector.attrs["botfleet.retry_count"], "0");
    for key in ["http.response.status_code", "botfleet.retry_count"] {
        assert!(
            connector.ints.contains(&key.to_owned()),
            "{key} not an int: {connector:?}"
        );
    }
    assert!(
        http_span
            .ints
            .contains(&"http.response.status_code".to_owned()),
        "{http_span:?}"
    );
    assert_eq!(connector.attrs["botfleet.outcome"], "delivered");
    let token_span = child_of(&spans, connector, "token");
    assert!(
        ["hit", "miss"].contains(&token_span.attrs["botfleet.token.cache"].as_str()),
        "{token_span:?}"
    );

    // Webhook: its own trace, and the bot logic was given that trace.
    let webhook = spans
        .iter()
        .find(|s| s.name == "POST webhook")
        .expect("a webhook span");
    assert_ne!(webhook.trace_id, UPSTREAM_TRACE);
    assert_eq!(webhook.attrs["http.response.status_code"], "200");
    assert!(
        webhook
            .ints
            .contains(&"http.response.status_code".to_owned()),
        "{webhook:?}"
    );
    let hook_http = one(&spans, &webhook.trace_id, "POST /api/messages");
    assert_eq!(hook_http.parent, "", "a new trace starts at the HTTP span");
    let hook_handler = spans
        .iter()
        .find(|s| s.span_id == webhook.parent)
        .expect("the webhook span's parent");
    assert_eq!(hook_handler.name, "handler");
    assert_eq!(hook_handler.trace_id, webhook.trace_id);
    let given = hook_seen.lock().unwrap().clone();
    assert_eq!(
        given,
        vec![format!("00-{}-{}-01", webhook.trace_id, webhook.span_id)],
        "the webhook got the traceparent of its call, and no empty tracestate"
    );
    // The webhook's reply went out in the same trace.
    child_of(&spans, hook_handler, "Bot Connector Send");

    // The refusal names its check on the HTTP span.
    let refused = spans
        .iter()
        .find(|s| s.attrs.get("http.response.status_code").map(String::as_str) == Some("401"))
        .expect("the refused request's span");
    assert_eq!(refused.attrs["botfleet.check"], "malformed_token");

    // Nothing secret or personal in any span.
    let everything = format!("{spans:?}");
    for secret in [
        "SECRET-TEXT",
        APP_SECRET,
        "other-secret",
        WEBHOOK_SECRET,
        echo_token.as_str(),
        hook_token.as_str(),
        "E2E User",
        "Bearer",
    ] {
        assert!(!everything.contains(secret), "`{secret}` in a span");
    }

    // The log lines of the turn carry its trace id.
    let log = bf.proc.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("\"trace_id\":\"{UPSTREAM_TRACE}\""))),
        "no JSON log line with the upstream trace id:\n{log}"
    );
}

/// `botfleet_otlp_export_failures_total{signal="traces",...}` on `/metrics`.
async fn trace_export_failures(admin: &str) -> f64 {
    let text = http()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("botfleet_otlp_export_failures_total{") && l.contains("signal=\"traces\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[actix_web::test]
async fn a_collector_that_is_down_costs_no_turn_and_is_counted() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (hook, _) = start_hook();
    let sim = start_sim();
    // With a password and a key in the URL: neither may reach the log.
    let bf = start_botfleet(&config(
        &sim.url,
        &hook,
        &format!("otlp_endpoint = \"http://user:PASSW0RD@127.0.0.1:{port}/?api_key=QUERYKEY\""),
    ));
    let t = token(&sim.url, APP_ID).await;
    for i in 0..10 {
        let a = activity(&sim.url, APP_ID, "a:conv-down", &format!("d{i}"), "hello");
        assert_eq!(post(bf.url(), &t, &a, None).await, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while trace_export_failures(bf.admin_url()).await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "botfleet_otlp_export_failures_total{{signal=\"traces\"}} never counted"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Still serving.
    let a = activity(&sim.url, APP_ID, "a:conv-down", "d-last", "hello");
    assert_eq!(post(bf.url(), &t, &a, None).await, 200);
    // The lost spans are counted on /metrics, and the failure has its line.
    let text = http()
        .get(format!("{}/metrics", bf.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped: f64 = text
        .lines()
        .find(|l| l.starts_with("botfleet_otlp_dropped_spans_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no botfleet_otlp_dropped_spans_total:\n{text}"));
    assert!(dropped >= 1.0, "{dropped}");
    let log = bf.proc.log_text();
    assert!(
        log.contains("OTLP span export failed"),
        "no line for the failed export:\n{log}"
    );
    // At INFO and above (the HTTP client's own DEBUG lines name the URL it
    // connects to; docs/observability.md says so).
    let shown: String = log
        .lines()
        .filter(|l| !l.contains("\"level\":\"DEBUG\"") && !l.contains("\"level\":\"TRACE\""))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        shown.contains("user:REDACTED@127.0.0.1")
            && !shown.contains("PASSW0RD")
            && !shown.contains("QUERYKEY"),
        "the endpoint's password or key in the log:\n{shown}"
    );
}

#[actix_web::test]
async fn a_slow_collector_does_not_slow_turns() {
    // Longer than the exporter's 10 s request timeout: the export thread is
    // stuck on it for the whole test.
    let (collector, received) = start_receiver(Duration::from_secs(15));
    let (hook, _) = start_hook();
    let sim = start_sim();
    let bf = start_botfleet(&config(
        &sim.url,
        &hook,
        &format!("otlp_endpoint = \"{collector}\""),
    ));
    let t = token(&sim.url, APP_ID).await;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let a = activity(&sim.url, APP_ID, "a:conv-slow", &format!("s{i}"), "hello");
        let t0 = Instant::now();
        assert_eq!(post(bf.url(), &t, &a, None).await, 200);
        slowest = slowest.max(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The exporter was blocked on the receiver while the turns ran.
    assert!(
        *received.requests.lock().unwrap() >= 1,
        "the exporter never reached the slow collector"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "a turn took {slowest:?} while the collector was slow"
    );
    // All 30 turns ran while the first export request was still waiting.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(received.spans().is_empty(), "the receiver answered already");
}

#[test]
fn an_invalid_endpoint_is_a_start_up_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("botfleet.toml");
    for (toml, env, expect) in [
        (
            "[telemetry]\notlp_endpoint = \"collector:4318\"\n",
            None,
            "telemetry.otlp_endpoint",
        ),
        (
            "",
            Some(("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")),
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
    ] {
        std::fs::write(&file, toml).unwrap();
        let mut cmd = std::process::Command::new(workspace_bin("botfleet"));
        cmd.args(["serve", "--config"]).arg(&file);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("telemetry.otlp_endpoint") && stderr.contains(expect),
            "{stderr}"
        );
    }
}

/// A notification: the job's expansion is a `notification job` span, each
/// delivery a `notification delivery` span (bot, tenant, job id, outcome,
/// retry count; the conversation id as an attribute) whose child is the Bot
/// Connector call.
#[actix_web::test]
async fn a_notification_is_a_job_span_and_delivery_spans_over_their_connector_calls() {
    const BOOT: &str = "telemetry-traces-bootstrap-key-0123456789";
    let (collector, received) = start_receiver(Duration::ZERO);
    let (hook, _) = start_hook();
    let sim = start_sim();
    let toml = format!(
        "[admin]\nbootstrap_key_env = \"H27_TRACES_BOOT\"\n{}",
        config(&sim.url, &hook, &format!("otlp_endpoint = \"{collector}\""))
    );
    let bf = start_botfleet_with(&toml, &[("H27_TRACES_BOOT", BOOT)]);
    let t = token(&sim.url, APP_ID).await;
    register(&sim.url, &[("a:conv-notify", TENANT)]).await;
    // A turn stores the conversation's reference.
    let a = activity(&sim.url, APP_ID, "a:conv-notify", "n1", "hello");
    assert_eq!(post(bf.url(), &t, &a, None).await, 200);
    let resp = http()
        .post(format!("{}/admin/v1/bots/echo/notifications", bf.admin_url()))
        .bearer_auth(BOOT)
        .json(&json!({"targets": {"all": true}, "activity": {"type": "message", "text": "SECRET-TEXT-notice"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let job = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let spans = wait_for(&received, "the job and delivery spans", |s| {
        s.iter().any(|x| x.name == "notification delivery")
            && s.iter()
                .any(|x| x.name == "notification job" && x.attrs.contains_key("botfleet.outcome"))
    })
    .await;
    let job_span = spans.iter().find(|s| s.name == "notification job").unwrap();
    assert_eq!(job_span.attrs["botfleet.job_id"], job);
    assert_eq!(job_span.attrs["botfleet.bot_id"], "echo");
    let delivery = spans
        .iter()
        .find(|s| s.name == "notification delivery")
        .unwrap();
    assert_eq!(delivery.attrs["botfleet.job_id"], job);
    assert_eq!(delivery.attrs["botfleet.bot_id"], "echo");
    assert_eq!(delivery.attrs["botfleet.tenant_id"], TENANT);
    assert_eq!(delivery.attrs["botfleet.target_kind"], "conversation");
    assert_eq!(delivery.attrs["botfleet.conversation_id"], "a:conv-notify");
    assert_eq!(delivery.attrs["botfleet.outcome"], "delivered");
    assert_eq!(delivery.attrs["botfleet.retry_count"], "0");
    assert!(
        delivery.ints.contains(&"botfleet.retry_count".to_owned()),
        "{delivery:?}"
    );
    let call = spans
        .iter()
        .find(|s| s.parent == delivery.span_id && s.name.starts_with("Bot Connector"))
        .unwrap_or_else(|| panic!("no connector call under the delivery span: {spans:#?}"));
    assert_eq!(call.trace_id, delivery.trace_id);
    assert_eq!(call.attrs["botfleet.outcome"], "delivered");
    let everything = format!("{spans:?}");
    for secret in ["SECRET-TEXT", APP_SECRET, BOOT, t.as_str()] {
        assert!(!everything.contains(secret), "`{secret}` in a span");
    }
}
