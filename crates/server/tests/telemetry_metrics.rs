//! Metrics end to end: `botfleet serve` (Redis store) and `botfleet-sim` as
//! processes; activities good, resent and refused by several checks, echo
//! replies and a notification; `/metrics` on the admin listener read with a
//! Prometheus text parser and every counter compared with what was sent and
//! what the sim recorded. Also: a flood of refusals counted exactly (and its
//! log lines rate-limited), `/metrics` absent from the public listener, the
//! alert rules and the dashboard of deploy/observability checked against a
//! live scrape, and the OTLP metrics export seen by a receiver of the test's
//! own (and counted when the collector is down).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use botfleet_store::redis_pool::testing;
use common::*;
use prometheus_parse::{Scrape, Value as PromValue};
use serde_json::{json, Value};

const BOOT: &str = "telemetry-metrics-bootstrap-key-0123456789";

fn config(sim: &str, prefix: &str, extra: &str) -> String {
    format!(
        r#"
[store]
backend = "redis"
redis_urls = ["{redis}"]
key_prefix = "{prefix}"
[admin]
bootstrap_key_env = "H21B_BOOT"
{extra}
{cloud}
[[bots]]
id = "bot"
app_id = "{APP_ID}"
app_password = "{APP_SECRET}"
cloud = "sim"
handler = {{ kind = "echo" }}
"#,
        redis = testing::single_url(),
        cloud = sim_cloud(sim),
    )
}

async fn scrape(admin: &str) -> (String, Scrape) {
    let text = http()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    (text, scrape)
}

/// Sum of the samples of `name` whose labels include `labels` (a histogram:
/// its observation count).
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => *v,
            PromValue::Histogram(b) => b
                .iter()
                .find(|c| c.less_than.is_infinite())
                .map_or(0.0, |c| c.count),
            PromValue::Summary(_) => 0.0,
        })
        .sum()
}

/// Every metric name a scrape exposes, histograms with their series suffixes.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap(), it.next().unwrap_or(""));
            out.insert(name.to_owned());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{s}"));
                }
            }
        }
    }
    out
}

fn inbound(sim: &str, conversation: &str, id: &str) -> Value {
    message(sim, conversation, id, "hello metrics")
}

#[actix_web::test]
async fn every_outcome_is_counted_exactly_and_alerts_and_dashboard_use_real_metrics() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("metrics");
    let bf = start_botfleet_with(
        &config(&sim.url, &prefix, ""),
        &[("H21B_BOOT", BOOT), ("RUST_LOG", "info")],
    );
    let url = format!("{}/api/messages", bf.url());
    let convs = ["a:m-1", "a:m-2", "a:m-3"];
    register(&sim.url, &convs.map(|c| (c, TENANT))).await;
    let token = mint(
        &sim.url,
        json!({"appId": APP_ID, "serviceUrl": service_url(&sim.url)}),
    )
    .await;
    let other = mint(
        &sim.url,
        json!({"appId": OTHER_APP_ID, "serviceUrl": service_url(&sim.url)}),
    )
    .await;

    let mut received = 0u64;
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    let mut refuse = |status: u16, body: &Value| {
        assert!(status >= 400, "{status} {body}");
        *refused
            .entry(body["check"].as_str().unwrap().to_owned())
            .or_default() += 1;
    };
    // 12 good activities, 4 of them resent.
    for i in 0..12 {
        let a = inbound(&sim.url, convs[i % 3], &format!("m-{i}"));
        let (status, body) = post_activity(&url, Some(&token), &a).await;
        assert_eq!(status, 200, "{body}");
        received += 1;
    }
    for i in 0..4 {
        let a = inbound(&sim.url, convs[i % 3], &format!("m-{i}"));
        let (status, body) = post_activity(&url, Some(&token), &a).await;
        assert_eq!(status, 200, "{body}");
        received += 1;
    }
    // Refusals by several checks.
    for i in 0..5 {
        let (s, b) =
            post_activity(&url, None, &inbound(&sim.url, convs[0], &format!("x-{i}"))).await;
        refuse(s, &b);
        received += 1;
    }
    for i in 0..3 {
        let (s, b) = post_activity(
            &url,
            Some(&other),
            &inbound(&sim.url, convs[0], &format!("y-{i}")),
        )
        .await;
        refuse(s, &b);
        received += 1;
    }
    for _ in 0..2 {
        let resp = http()
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        let s = resp.status().as_u16();
        refuse(s, &resp.json().await.unwrap());
        received += 1;
    }
    for _ in 0..2 {
        let resp = http().get(&url).send().await.unwrap();
        let s = resp.status().as_u16();
        refuse(s, &resp.json().await.unwrap());
        received += 1;
    }
    // A flood of refusals: counted exactly, logged a few times only.
    let flood = 300u64;
    let sends = (0..flood).map(|i| {
        let url = url.clone();
        let a = inbound(&sim.url, convs[1], &format!("f-{i}"));
        async move { post_activity(&url, Some("not-a-jwt"), &a).await }
    });
    for (s, b) in futures::future::join_all(sends).await {
        refuse(s, &b);
        received += 1;
    }
    // One notification to every conversation.
    let resp = http()
        .post(format!("{}/admin/v1/bots/bot/notifications", bf.admin_url()))
        .bearer_auth(BOOT)
        .json(&json!({"targets": {"all": true}, "activity": {"type": "message", "text": "metrics notice"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);

    // Wait for the notification's three deliveries.
    let started = Instant::now();
    let (text, s) = loop {
        let (text, s) = scrape(bf.admin_url()).await;
        let delivered = value(
            &s,
            "botfleet_notification_deliveries_total",
            &[("outcome", "delivered")],
        );
        if delivered >= 3.0 || started.elapsed() > Duration::from_secs(30) {
            break (text, s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // What the sim recorded.
    let acts = get_json(format!("{}/_sim/activities", sim.url)).await;
    let recorded = acts["activities"].as_array().unwrap();
    let replies = recorded
        .iter()
        .filter(|r| {
            r["operation"] == "reply"
                && r["body"]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("hello metrics"))
        })
        .count() as f64;
    let notices = recorded
        .iter()
        .filter(|r| r["operation"] == "send" && r["body"]["text"] == "metrics notice")
        .count() as f64;
    assert_eq!(replies, 12.0, "one echo per new activity: {acts}");
    assert_eq!(notices, 3.0);

    let v = |name: &str, labels: &[(&str, &str)]| value(&s, name, labels);
    assert_eq!(
        v("botfleet_activities_received_total", &[]),
        received as f64,
        "{text}"
    );
    let refused_total: u64 = refused.values().sum();
    assert!(refused.len() >= 4, "several checks: {refused:?}");
    for (check, n) in &refused {
        assert_eq!(
            v("botfleet_activities_rejected_total", &[("check", check)]),
            *n as f64,
            "{check}: {text}"
        );
    }
    assert_eq!(
        v("botfleet_activities_rejected_total", &[]),
        refused_total as f64
    );
    assert_eq!(v("botfleet_activities_handled_total", &[]), 12.0);
    assert_eq!(v("botfleet_activities_duplicate_total", &[]), 4.0);
    assert_eq!(
        v(
            "botfleet_turns_total",
            &[
                ("bot", "bot"),
                ("tenant", TENANT),
                ("handler", "echo"),
                ("outcome", "handled")
            ]
        ),
        12.0
    );
    assert_eq!(v("botfleet_turns_total", &[("outcome", "duplicate")]), 4.0);
    assert_eq!(
        v("botfleet_turn_duration_seconds", &[("handler", "echo")]),
        16.0
    );
    assert_eq!(
        v("botfleet_replies_total", &[("outcome", "delivered")]),
        replies
    );
    assert_eq!(
        v(
            "botfleet_connector_calls_total",
            &[("operation", "reply"), ("status_class", "2xx")]
        ),
        replies
    );
    assert_eq!(
        v(
            "botfleet_connector_calls_total",
            &[("operation", "send"), ("status_class", "2xx")]
        ),
        notices
    );
    assert_eq!(v("botfleet_connector_retries_total", &[]), 0.0);
    assert_eq!(
        v(
            "botfleet_notification_deliveries_total",
            &[("outcome", "delivered")]
        ),
        notices
    );
    // Every Bot Connector call asked the token cache once.
    assert_eq!(
        v("botfleet_token_cache_lookups_total", &[("app_id", APP_ID)]),
        replies + notices,
        "{text}"
    );
    assert!(v("botfleet_token_refreshes_total", &[("app_id", APP_ID)]) >= 1.0);
    assert_eq!(
        v(
            "botfleet_token_refresh_failures_total",
            &[("app_id", APP_ID)]
        ),
        0.0
    );
    // Requests answered by the POST route (the 405s are answered before it).
    let posts = received - refused.get("method_not_allowed").copied().unwrap_or(0);
    assert_eq!(
        v("botfleet_ingress_request_duration_seconds", &[]),
        posts as f64
    );
    assert_eq!(
        v(
            "botfleet_ingress_request_duration_seconds",
            &[("status_class", "2xx")]
        ),
        16.0
    );
    assert!(v("botfleet_redis_command_duration_seconds", &[]) > 0.0);
    assert_eq!(v("botfleet_redis_errors_total", &[]), 0.0);
    assert_eq!(v("botfleet_actors", &[("kind", "conversation")]), 3.0);
    assert_eq!(v("botfleet_build_info", &[]), 1.0);
    assert!(s.samples.iter().any(|x| x.metric == "botfleet_build_info"
        && x.labels.get("version") == Some(env!("CARGO_PKG_VERSION"))));
    // Never a conversation id as a label.
    assert!(!text.contains("a:m-1"), "{text}");

    // The flood's refusals were logged a few lines at most, each line saying
    // how many it stands for.
    let log = bf.proc.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("activity refused"))
        .count() as u64;
    assert!(
        lines < 20,
        "{lines} refusal lines for {refused_total} refusals"
    );

    // /metrics is not on the public listener.
    let resp = http()
        .get(format!("{}/metrics", bf.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    check_alerts_and_dashboard(&text);
}

/// Every alert expression parses as PromQL and names only metrics of the
/// live scrape; the dashboard is valid JSON whose queries do the same.
fn check_alerts_and_dashboard(scrape_text: &str) {
    let exposed = names(scrape_text);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/observability");
    let metric_re = |expr: &str| -> Vec<String> {
        let mut out = Vec::new();
        let bytes = expr.as_bytes();
        let mut i = 0;
        while let Some(pos) = expr[i..].find("botfleet_") {
            let start = i + pos;
            let ok_start = start == 0
                || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
                end += 1;
            }
            if ok_start {
                out.push(expr[start..end].to_owned());
            }
            i = end;
        }
        out
    };
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("alerts.yaml")).unwrap()).unwrap();
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            let expr = rule["expr"].as_str().unwrap();
            promql_parser::parser::parse(expr)
                .unwrap_or_else(|e| panic!("{name}: not PromQL: {e}\n{expr}"));
            let used = metric_re(expr);
            assert!(!used.is_empty(), "{name} names no botfleet metric");
            for m in used {
                assert!(exposed.contains(&m), "{name} uses {m}, not on /metrics");
            }
            alerts += 1;
        }
    }
    assert!(alerts >= 10);
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let documented = std::fs::read_to_string(root.join("../../docs/observability.md")).unwrap();
    let mut queries = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            // Grafana's interval variable is not PromQL; its value is.
            let promql = expr.replace("$__rate_interval", "5m");
            promql_parser::parser::parse(&promql)
                .unwrap_or_else(|e| panic!("dashboard: not PromQL: {e}\n{expr}"));
            // A panel may show a series this run did not produce (webhook
            // latency with an echo bot): then the metric must at least be one
            // docs/observability.md lists, so a typo still fails.
            for m in metric_re(expr) {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| m.strip_suffix(s))
                    .unwrap_or(&m);
                assert!(
                    exposed.contains(&m) || documented.contains(&format!("`{base}`")),
                    "dashboard uses {m}: not on /metrics nor in docs/observability.md"
                );
            }
            queries += 1;
        }
    }
    assert!(queries >= 20);
}

/// A receiver of OTLP/HTTP metric exports: the bodies it was sent.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let b = bodies.clone();
    let server = HttpServer::new(move || {
        let b = b.clone();
        App::new().route(
            "/v1/metrics",
            web::post().to(move |body: web::Bytes| {
                let b = b.clone();
                async move {
                    b.lock().unwrap().push(body.to_vec());
                    HttpResponse::Ok()
                        .content_type("application/x-protobuf")
                        .finish()
                }
            }),
        )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    actix_web::rt::spawn(server.run());
    (format!("http://{addr}"), bodies)
}

#[actix_web::test]
async fn metrics_reach_an_otlp_receiver_and_a_down_collector_is_counted() {
    let sim = start_sim();
    let (receiver, bodies) = otlp_receiver().await;
    let prefix = testing::unique_prefix("metrics-otlp");
    let extra = format!(
        "[telemetry]\notlp_endpoint = \"{receiver}\"\nmetrics_export_interval = \"1s\"\nsampling_ratio = 0.0\n"
    );
    let bf = start_botfleet_with(&config(&sim.url, &prefix, &extra), &[("H21B_BOOT", BOOT)]);
    let (status, _) = post_activity(
        &format!("{}/api/messages", bf.url()),
        None,
        &inbound(&sim.url, "a:o", "o-1"),
    )
    .await;
    assert_eq!(status, 401);
    let started = Instant::now();
    loop {
        let seen = bodies.lock().unwrap().iter().any(|b| {
            let s = String::from_utf8_lossy(b);
            s.contains("botfleet_activities_rejected") && s.contains("botfleet_activities_received")
        });
        if seen {
            // The spans' resource: `service.name` is botfleet's default, not
            // the SDK's `unknown_service` (metrics and traces join).
            let all = bodies.lock().unwrap().concat();
            let all = String::from_utf8_lossy(&all);
            assert!(
                all.contains("service.name") && !all.contains("unknown_service"),
                "the metrics resource has no service.name of botfleet"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no metrics export arrived\n{}",
            bf.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(bf);

    // A collector that is not there: botfleet serves, and counts the failures.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let extra = format!(
        "[telemetry]\notlp_endpoint = \"{dead}\"\nmetrics_export_interval = \"1s\"\nsampling_ratio = 0.0\n"
    );
    let bf = start_botfleet_with(&config(&sim.url, &prefix, &extra), &[("H21B_BOOT", BOOT)]);
    let started = Instant::now();
    loop {
        let (_, s) = scrape(bf.admin_url()).await;
        if value(
            &s,
            "botfleet_otlp_export_failures_total",
            &[("signal", "metrics")],
        ) >= 1.0
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no failed export counted"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (status, _) = post_activity(
        &format!("{}/api/messages", bf.url()),
        None,
        &inbound(&sim.url, "a:o", "o-2"),
    )
    .await;
    assert_eq!(status, 401, "still serving");
}
