//! Faults on the outbound side, end to end: the sim's Bot Connector and token
//! endpoint misbehave, webhooks hang or answer garbage. botfleet reports, retries
//! what may be retried, deactivates what is gone, and never crashes.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use botfleet_store::conversations::{ConversationStore, RedisConversationStore};
use botfleet_store::redis_pool::testing;
use common::*;
use serde_json::{json, Value};

fn config(sim: &str, prefix: &str, password: &str, handler: &str) -> String {
    format!(
        r#"
[store]
backend = "redis"
redis_urls = ["{redis}"]
key_prefix = "{prefix}"
[server]
handler_deadline_ms = 8000
{cloud}
[[bots]]
id = "bot"
app_id = "{APP_ID}"
app_password = "{password}"
cloud = "sim"
handler = {handler}
"#,
        redis = testing::single_url(),
        cloud = sim_cloud(sim),
    )
}

async fn token(sim: &str) -> String {
    mint(
        sim,
        json!({"appId": APP_ID, "serviceUrl": service_url(sim)}),
    )
    .await
}

async fn delivered_texts(sim: &str, conversation: &str) -> Vec<String> {
    let v = get_json(format!("{sim}/_sim/activities?conversation={conversation}")).await;
    v["activities"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["body"]["text"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[actix_web::test]
async fn transient_connector_errors_are_retried_until_delivered() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("flaky");
    let bf = start_botfleet(&config(
        &sim.url,
        &prefix,
        APP_SECRET,
        r#"{ kind = "echo" }"#,
    ));
    let convs: Vec<String> = (0..20).map(|i| format!("a:flaky-{i}")).collect();
    let pairs: Vec<(&str, &str)> = convs.iter().map(|c| (c.as_str(), TENANT)).collect();
    register(&sim.url, &pairs).await;
    // 30 % of Bot Connector calls fail with 502 or 503
    set_faults(
        &sim.url,
        json!({"errorRatio": 0.3, "errorStatus": 502, "seed": 7}),
    )
    .await;
    let t = token(&sim.url).await;
    let url = format!("{}/api/messages", bf.url());
    for (i, conv) in convs.iter().enumerate() {
        let got = post_activity(
            &url,
            Some(&t),
            &message(&sim.url, conv, &format!("f{i}"), &format!("text {i}")),
        )
        .await;
        assert_eq!(got.0, 200, "{}", got.1);
    }
    let stats = get_json(format!("{}/_sim/activities?all=true", sim.url)).await;
    let failed = stats["activities"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|r| r["status"].as_u64().is_some_and(|s| s >= 500))
        .count();
    assert!(failed > 0, "the fault was not injected");
    for (i, conv) in convs.iter().enumerate() {
        assert_eq!(
            delivered_texts(&sim.url, conv).await,
            vec![format!("text {i}")],
            "exactly one delivery"
        );
    }
}

#[actix_web::test]
async fn a_500_is_reported_not_retried() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("500");
    let bf = start_botfleet(&config(
        &sim.url,
        &prefix,
        APP_SECRET,
        r#"{ kind = "echo" }"#,
    ));
    register(&sim.url, &[("a:five", TENANT)]).await;
    set_faults(&sim.url, json!({"failNext": 1, "failNextStatus": 500})).await;
    let t = token(&sim.url).await;
    let got = post_activity(
        &format!("{}/api/messages", bf.url()),
        Some(&t),
        &message(&sim.url, "a:five", "x1", "hi"),
    )
    .await;
    // Taken in, bot logic ran: a resend would not help (docs/turns.md).
    assert_eq!(got.0, 200, "{}", got.1);
    let all = get_json(format!(
        "{}/_sim/activities?conversation=a:five&all=true",
        sim.url
    ))
    .await;
    assert_eq!(
        all["activities"].as_array().map_or(0, Vec::len),
        1,
        "500 must not be retried: {all}"
    );
}

#[actix_web::test]
async fn a_429_with_retry_after_is_waited_out_and_delivered_once() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("429");
    let bf = start_botfleet(&config(
        &sim.url,
        &prefix,
        APP_SECRET,
        r#"{ kind = "echo" }"#,
    ));
    register(&sim.url, &[("a:throttled", TENANT)]).await;
    set_faults(
        &sim.url,
        json!({"failNext": 1, "failNextStatus": 429, "retryAfterSecs": 2}),
    )
    .await;
    let t = token(&sim.url).await;
    let started = Instant::now();
    let got = post_activity(
        &format!("{}/api/messages", bf.url()),
        Some(&t),
        &message(&sim.url, "a:throttled", "t1", "later"),
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After not honoured"
    );
    assert_eq!(
        delivered_texts(&sim.url, "a:throttled").await,
        vec!["later".to_owned()]
    );
}

#[actix_web::test]
async fn a_403_deactivates_the_reference_without_retry() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("403");
    let bf = start_botfleet(&config(
        &sim.url,
        &prefix,
        APP_SECRET,
        r#"{ kind = "echo" }"#,
    ));
    register(&sim.url, &[("a:gone", TENANT)]).await;
    set_faults(
        &sim.url,
        json!({"conversations": [{"conversationId": "a:gone", "status": 403, "code": "BotNotInConversationRoster"}]}),
    )
    .await;
    let t = token(&sim.url).await;
    let got = post_activity(
        &format!("{}/api/messages", bf.url()),
        Some(&t),
        &message(&sim.url, "a:gone", "g1", "hi"),
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);
    let all = get_json(format!(
        "{}/_sim/activities?conversation=a:gone&all=true",
        sim.url
    ))
    .await;
    assert_eq!(
        all["activities"].as_array().map_or(0, Vec::len),
        1,
        "no retry: {all}"
    );
    let store = RedisConversationStore::new(testing::single(), &prefix);
    let stored = store
        .get("bot", "a:gone")
        .await
        .expect("get")
        .expect("stored");
    assert!(
        !stored.active,
        "403 BotNotInConversationRoster must deactivate the reference"
    );
    assert_eq!(
        stored.inactive_reason.as_deref(),
        Some("BotNotInConversationRoster")
    );
}

#[actix_web::test]
async fn a_wrong_client_secret_is_surfaced_and_not_retried_in_a_loop() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("badsecret");
    let bf = start_botfleet(&config(
        &sim.url,
        &prefix,
        "not-the-secret",
        r#"{ kind = "echo" }"#,
    ));
    register(&sim.url, &[("a:nosecret", TENANT)]).await;
    let t = token(&sim.url).await;
    let url = format!("{}/api/messages", bf.url());
    for i in 0..3 {
        let got = post_activity(
            &url,
            Some(&t),
            &message(&sim.url, "a:nosecret", &format!("s{i}"), "hi"),
        )
        .await;
        // The reply was never sent; the outcome (not_sent) is logged and counted.
        assert_eq!(got.0, 200, "{}", got.1);
    }
    let requests = get_json(format!("{}/_sim/token-requests?clientId={APP_ID}", sim.url)).await;
    let n = requests["requests"].as_array().map_or(0, Vec::len);
    assert!(n >= 1, "the token endpoint was never asked");
    assert!(
        n <= 2,
        "a permanent AADSTS error was retried {n} times for 3 messages"
    );
    assert!(requests["requests"][0]["error"]
        .as_str()
        .is_some_and(|e| e.contains("7000215")));
    assert!(delivered_texts(&sim.url, "a:nosecret").await.is_empty());
}

#[actix_web::test]
async fn token_endpoint_down_later_keeps_the_cached_token_serving() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("tokendown");
    let bf = start_botfleet(&config(
        &sim.url,
        &prefix,
        APP_SECRET,
        r#"{ kind = "echo" }"#,
    ));
    register(&sim.url, &[("a:cached", TENANT)]).await;
    let t = token(&sim.url).await;
    let url = format!("{}/api/messages", bf.url());
    assert_eq!(
        post_activity(&url, Some(&t), &message(&sim.url, "a:cached", "c1", "one"))
            .await
            .0,
        200
    );
    set_faults(&sim.url, json!({"tokenEndpointDown": true})).await;
    assert_eq!(
        post_activity(&url, Some(&t), &message(&sim.url, "a:cached", "c2", "two"))
            .await
            .0,
        200
    );
    assert_eq!(delivered_texts(&sim.url, "a:cached").await.len(), 2);
}

#[actix_web::test]
async fn token_endpoint_down_at_start_recovers_when_it_comes_back() {
    let sim = start_sim();
    set_faults(&sim.url, json!({"tokenEndpointDown": true})).await;
    let prefix = testing::unique_prefix("tokenstart");
    let bf = start_botfleet(&config(
        &sim.url,
        &prefix,
        APP_SECRET,
        r#"{ kind = "echo" }"#,
    ));
    register(&sim.url, &[("a:later", TENANT)]).await;
    let t = token(&sim.url).await;
    let url = format!("{}/api/messages", bf.url());
    let got = post_activity(&url, Some(&t), &message(&sim.url, "a:later", "l1", "first")).await;
    assert_eq!(got.0, 200, "no token, no reply, but taken in: {}", got.1);
    set_faults(&sim.url, json!({})).await;
    let got = post_activity(
        &url,
        Some(&t),
        &message(&sim.url, "a:later", "l2", "second"),
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(
        delivered_texts(&sim.url, "a:later").await,
        vec!["second".to_owned()]
    );
}

/// A webhook that behaves per the message text: `hang`, `garbage`, `500`, or
/// answers with a reply and (for invokes) an invoke response. It checks the
/// signature on every call.
async fn start_webhook(secret: &'static str) -> (String, Arc<AtomicUsize>) {
    let bad_signatures = Arc::new(AtomicUsize::new(0));
    let bad = bad_signatures.clone();
    let server = HttpServer::new(move || {
        let bad = bad.clone();
        App::new().route(
            "/hook",
            web::post().to(move |req: HttpRequest, body: web::Bytes| {
                let bad = bad.clone();
                async move {
                    let ts: u64 = req
                        .headers()
                        .get("x-botfleet-timestamp")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let sig = req
                        .headers()
                        .get("x-botfleet-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let expected = botfleet_runtime::handlers::sign(
                        &botfleet_auth::Secret::new(secret),
                        ts,
                        &body,
                    );
                    if sig != expected {
                        bad.fetch_add(1, Ordering::SeqCst);
                        return HttpResponse::Unauthorized().finish();
                    }
                    let activity: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    match activity["text"].as_str().unwrap_or("") {
                        "hang" => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            HttpResponse::Ok().finish()
                        }
                        "garbage" => HttpResponse::Ok().body("<html>oops</html>"),
                        "500" => HttpResponse::InternalServerError().body("boom"),
                        text => HttpResponse::Ok().json(json!({
                            "replies": [{"type": "message", "text": format!("webhook saw: {text}"),
                                          "conversation": {"id": "a:someone-else"}, "serviceUrl": "https://evil.example.com/"}],
                            "invokeResponse": {"status": 200, "body": {"statusCode": 200, "type": "application/vnd.microsoft.activity.message", "value": "approved"}}
                        })),
                    }
                }
            }),
        )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .expect("bind webhook");
    let addr = server.addrs()[0];
    actix_web::rt::spawn(server.run());
    (format!("http://{addr}/hook"), bad_signatures)
}

#[actix_web::test]
async fn webhook_replies_invokes_and_failures() {
    let sim = start_sim();
    let secret = "webhook-secret-0123456789";
    let (hook, bad_signatures) = start_webhook(secret).await;
    let prefix = testing::unique_prefix("webhook");
    let handler = format!(
        r#"{{ kind = "webhook", url = "{hook}", secret = "{secret}", timeout_ms = 1000 }}"#
    );
    let bf = start_botfleet(&config(&sim.url, &prefix, APP_SECRET, &handler));
    register(&sim.url, &[("a:hook", TENANT)]).await;
    let t = token(&sim.url).await;
    let url = format!("{}/api/messages", bf.url());

    let got = post_activity(&url, Some(&t), &message(&sim.url, "a:hook", "w1", "hello")).await;
    assert_eq!(got.0, 200, "{}", got.1);
    // the reply went to the activity's own conversation and host, whatever the webhook said
    assert_eq!(
        delivered_texts(&sim.url, "a:hook").await,
        vec!["webhook saw: hello".to_owned()]
    );

    let mut invoke = message(&sim.url, "a:hook", "w2", "approve");
    invoke["type"] = json!("invoke");
    invoke["name"] = json!("adaptiveCard/action");
    let got = post_activity(&url, Some(&t), &invoke).await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(
        got.1["value"], "approved",
        "invoke response comes back synchronously: {}",
        got.1
    );

    // A webhook that may have acted is not called again through Teams' resend
    // (200); one that answered 5xx asks for it (500). docs/turns.md.
    for (i, (text, status)) in [("hang", 200), ("garbage", 200), ("500", 500)]
        .iter()
        .enumerate()
    {
        let started = Instant::now();
        let got = post_activity(
            &url,
            Some(&t),
            &message(&sim.url, "a:hook", &format!("bad{i}"), text),
        )
        .await;
        assert_eq!(got.0, *status, "{text}: {}", got.1);
        if *status == 500 {
            assert_eq!(got.1["check"], "handler_failed");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{text} held the answer too long"
        );
    }
    // still serving after all that
    let got = post_activity(&url, Some(&t), &message(&sim.url, "a:hook", "w9", "again")).await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(
        bad_signatures.load(Ordering::SeqCst),
        0,
        "botfleet's signature did not verify"
    );
}

#[actix_web::test]
async fn slow_bot_logic_never_holds_the_answer_past_the_deadline() {
    let sim = start_sim();
    let secret = "webhook-secret-0123456789";
    let (hook, _) = start_webhook(secret).await;
    let prefix = testing::unique_prefix("deadline");
    let handler = format!(
        r#"{{ kind = "webhook", url = "{hook}", secret = "{secret}", timeout_ms = 5000 }}"#
    );
    let config = config(&sim.url, &prefix, APP_SECRET, &handler)
        .replace("handler_deadline_ms = 8000", "handler_deadline_ms = 300");
    let bf = start_botfleet(&config);
    register(&sim.url, &[("a:slow", TENANT)]).await;
    let t = token(&sim.url).await;
    let url = format!("{}/api/messages", bf.url());
    let started = Instant::now();
    let got = post_activity(&url, Some(&t), &message(&sim.url, "a:slow", "d1", "hang")).await;
    assert_eq!(
        got.0, 202,
        "a message past the deadline is accepted, not failed: {}",
        got.1
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answer waited on the webhook"
    );
    let mut invoke = message(&sim.url, "a:slow2", "d2", "hang");
    invoke["type"] = json!("invoke");
    register(&sim.url, &[("a:slow2", TENANT)]).await;
    let got = post_activity(&url, Some(&t), &invoke).await;
    assert_eq!(got.0, 504, "{}", got.1);
    assert_eq!(got.1["check"], "handler_deadline");
}
