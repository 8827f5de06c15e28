//! Proactive notifications end to end: `botfleet serve` as a process (admin
//! API, notifier, real Redis), `botfleet-sim` as Teams. References exist only
//! because signed activities were sent to botfleet first, as Teams would.
//! Needs BOTFLEET_TEST_REDIS_URL (`scripts/redis-up`) and the binaries built.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use botfleet_store::redis_pool::testing;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const BOOT: &str = "notifications-test-bootstrap-key-0123456789";
const T1: &str = TENANT;
const T2: &str = OTHER_TENANT;
const T3: &str = "33333333-3333-4333-8333-333333333333";

fn config(sim: &str, prefix: &str, redis: bool) -> String {
    let store = if redis {
        format!(
            "[store]\nbackend = \"redis\"\nredis_urls = [\"{}\"]\nkey_prefix = \"{prefix}\"\n",
            testing::single_url()
        )
    } else {
        String::new()
    };
    format!(
        r#"{store}
[admin]
bootstrap_key_env = "H11_NOTIFY_BOOT"
{cloud}
[[bots]]
id = "bot"
app_id = "{APP_ID}"
app_password = "{APP_SECRET}"
cloud = "sim"
handler = {{ kind = "record" }}
"#,
        cloud = sim_cloud(sim),
    )
}

fn start(sim: &str, prefix: &str, redis: bool) -> Botfleet {
    start_botfleet_with(&config(sim, prefix, redis), &[("H11_NOTIFY_BOOT", BOOT)])
}

/// A personal chat message from `conversation` in `tenant`.
fn inbound(sim: &str, conversation: &str, tenant: &str, id: &str) -> Value {
    let mut m = message(sim, conversation, id, "hi");
    m["conversation"]["tenantId"] = json!(tenant);
    m["channelData"]["tenant"]["id"] = json!(tenant);
    m
}

/// Makes botfleet store a reference for each (conversation, tenant) by
/// sending it a signed activity from there, and registers them at the sim.
async fn seed(sim: &str, bf: &Botfleet, conversations: &[(String, &str)]) {
    let pairs: Vec<(&str, &str)> = conversations
        .iter()
        .map(|(c, t)| (c.as_str(), *t))
        .collect();
    register(sim, &pairs).await;
    let token = mint(
        sim,
        json!({"appId": APP_ID, "serviceUrl": service_url(sim)}),
    )
    .await;
    for (i, (c, t)) in conversations.iter().enumerate() {
        let (status, body) = post_activity(
            &format!("{}/api/messages", bf.url()),
            Some(&token),
            &inbound(sim, c, t, &format!("in-{i}")),
        )
        .await;
        assert!((200..300).contains(&status), "{status} {body}");
    }
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn call(
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Option<Value>,
    idempotency_key: Option<&str>,
) -> Answer {
    let mut req = http().request(method, url).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(k) = idempotency_key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

async fn notify(bf: &Botfleet, body: Value, key: Option<&str>) -> Answer {
    call(
        reqwest::Method::POST,
        format!("{}/admin/v1/bots/bot/notifications", bf.admin_url()),
        BOOT,
        Some(body),
        key,
    )
    .await
}

/// Polls the job until it is final (or panics after `within`).
async fn wait_final(bf: &Botfleet, job: &str, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let a = call(
            reqwest::Method::GET,
            format!("{}/admin/v1/notifications/{job}", bf.admin_url()),
            BOOT,
            None,
            None,
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        if ["completed", "cancelled", "failed"].contains(&a.body["state"].as_str().unwrap_or("")) {
            return a.body;
        }
        assert!(
            started.elapsed() < within,
            "job not final after {within:?}: {}\n{}",
            a.body,
            bf.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Accepted sends (`POST .../activities`) per conversation with this text.
async fn sends_by_conversation(sim: &str, text: &str) -> HashMap<String, usize> {
    let v = get_json(format!("{sim}/_sim/activities?operation=send")).await;
    let mut out = HashMap::new();
    for r in v["activities"].as_array().unwrap() {
        if r["body"]["text"].as_str() == Some(text) {
            *out.entry(r["conversationId"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    out
}

async fn violations(sim: &str) -> u64 {
    get_json(format!("{sim}/_sim/violations")).await["total"]
        .as_u64()
        .unwrap()
}

fn conversations(prefix: &str, tenant: &'static str, n: usize) -> Vec<(String, &'static str)> {
    (0..n)
        .map(|i| (format!("a:{prefix}-{i}"), tenant))
        .collect()
}

#[actix_web::test]
async fn a_job_to_every_conversation_of_several_tenants_delivers_each_once_within_the_limits() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("notify-all");
    let bf = start(&sim.url, &prefix, true);
    // One big tenant and two small ones: the small ones are not starved.
    let mut convs = conversations("big", T1, 120);
    convs.extend(conversations("small2", T2, 15));
    convs.extend(conversations("small3", T3, 15));
    seed(&sim.url, &bf, &convs).await;

    let body = json!({
        "targets": {"all": true},
        "activity": {"type": "message", "text": "maintenance at 6pm"},
    });
    let a = notify(&bf, body.clone(), Some("job-all-1")).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let job = a.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        a.headers.get("location").unwrap().to_str().unwrap(),
        format!("/admin/v1/notifications/{job}")
    );

    let done = wait_final(&bf, &job, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["counts"]["total"], 150, "{done}");
    assert_eq!(done["counts"]["delivered"], 150, "{done}");
    assert_eq!(done["counts"]["failed"], 0, "{done}");
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());

    let sent = sends_by_conversation(&sim.url, "maintenance at 6pm").await;
    assert_eq!(sent.len(), 150);
    for (c, _) in &convs {
        assert_eq!(sent.get(c), Some(&1), "{c} got {:?} sends", sent.get(c));
    }
    assert_eq!(
        violations(&sim.url).await,
        0,
        "the Teams limits were broken"
    );
    // /metrics counts the deliveries and the job this replica completed.
    assert_eq!(
        metric(
            bf.admin_url(),
            r#"botfleet_notification_deliveries_total{outcome="delivered",reason=""}"#
        )
        .await,
        150.0
    );
    assert_eq!(
        metric(bf.admin_url(), "botfleet_notification_jobs_completed_total").await,
        1.0
    );
    // 120 sends to one tenant meet its 50/s limit: attempts were throttled by
    // the local limiter and waited, instead of being sent into a 429.
    assert!(metric(bf.admin_url(), "botfleet_notification_throttled_total").await > 0.0);
    assert!(
        metric(
            bf.admin_url(),
            "botfleet_notification_throttled_wait_seconds_total"
        )
        .await
            > 0.0
    );

    // The same key and body: the same job, nothing sent again.
    let again = notify(&bf, body, Some("job-all-1")).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body["id"], job.as_str());
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    // The same key with another body: refused.
    let other = notify(
        &bf,
        json!({"targets": {"all": true}, "activity": {"type": "message", "text": "other"}}),
        Some("job-all-1"),
    )
    .await;
    assert_eq!(other.status, StatusCode::CONFLICT, "{}", other.body);
    assert_eq!(other.body["check"], "idempotency_conflict");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = sends_by_conversation(&sim.url, "maintenance at 6pm").await;
    assert!(
        sent.values().all(|n| *n == 1),
        "a replayed request sent again"
    );
    assert!(sends_by_conversation(&sim.url, "other").await.is_empty());
}

#[actix_web::test]
async fn forbidden_and_missing_targets_fail_with_their_reason_and_403_deactivates() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("notify-403");
    let bf = start(&sim.url, &prefix, true);
    let convs = conversations("f", T1, 6);
    seed(&sim.url, &bf, &convs).await;
    set_faults(
        &sim.url,
        json!({"conversations": [
            {"conversationId": "a:f-1", "status": 403, "code": "BotNotInConversationRoster"},
            {"conversationId": "a:f-4", "status": 404, "code": "ConversationNotFound"},
        ]}),
    )
    .await;
    let mut ids: Vec<String> = convs.iter().map(|(c, _)| c.clone()).collect();
    ids.push("a:never-seen".into());
    let body = json!({
        "targets": {"conversations": ids},
        "activity": {"type": "message", "text": "first"},
    });
    let a = notify(&bf, body, None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let job = a.body["id"].as_str().unwrap().to_owned();
    let done = wait_final(&bf, &job, Duration::from_secs(60)).await;
    assert_eq!(done["counts"]["delivered"], 4, "{done}");
    assert_eq!(
        done["counts"]["failed_by_reason"],
        json!({"bot_not_in_conversation_roster": 1, "conversation_not_found": 1, "reference_missing": 1}),
        "{done}"
    );

    let failed = call(
        reqwest::Method::GET,
        format!(
            "{}/admin/v1/notifications/{job}/targets?state=failed&limit=2",
            bf.admin_url()
        ),
        BOOT,
        None,
        None,
    )
    .await;
    assert_eq!(failed.status, StatusCode::OK, "{}", failed.body);
    let mut items = failed.body["items"].as_array().unwrap().clone();
    let next = failed.body["next"].as_str().unwrap();
    let rest = call(
        reqwest::Method::GET,
        format!(
            "{}/admin/v1/notifications/{job}/targets?state=failed&next={next}",
            bf.admin_url()
        ),
        BOOT,
        None,
        None,
    )
    .await;
    items.extend(rest.body["items"].as_array().unwrap().iter().cloned());
    assert!(rest.body["next"].is_null());
    let by_id: HashMap<&str, &Value> = items
        .iter()
        .map(|i| (i["id"].as_str().unwrap(), &i["error"]))
        .collect();
    assert_eq!(by_id["c:a:f-1"]["code"], "bot_not_in_conversation_roster");
    assert_eq!(by_id["c:a:f-1"]["status"], 403);
    assert_eq!(by_id["c:a:f-4"]["status"], 404);
    assert_eq!(by_id["c:a:never-seen"]["code"], "reference_missing");
    for (reason, n) in [
        ("bot_not_in_conversation_roster", 1.0),
        ("conversation_not_found", 1.0),
        ("reference_missing", 1.0),
    ] {
        let sample = format!(
            r#"botfleet_notification_deliveries_total{{outcome="failed",reason="{reason}"}}"#
        );
        assert_eq!(metric(bf.admin_url(), &sample).await, n, "{sample}");
    }
    assert!(by_id["c:a:never-seen"]["status"].is_null());

    // The references were deactivated through their one writer ...
    let listed = call(
        reqwest::Method::GET,
        format!(
            "{}/admin/v1/bots/bot/conversations?active=false",
            bf.admin_url()
        ),
        BOOT,
        None,
        None,
    )
    .await;
    let inactive: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["conversation_id"].as_str().unwrap())
        .collect();
    assert_eq!(inactive, ["a:f-1", "a:f-4"], "{}", listed.body);

    // ... so the next job fails them without a call.
    let calls_before = get_json(format!(
        "{}/_sim/activities?all=true&conversation=a:f-1",
        sim.url
    ))
    .await["activities"]
        .as_array()
        .unwrap()
        .len();
    let a = notify(
        &bf,
        json!({"targets": {"tenant": T1}, "activity": {"type": "message", "text": "second"}}),
        None,
    )
    .await;
    let done = wait_final(&bf, a.body["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    // `tenant` selects active conversations only: the two gone ones are not targets.
    assert_eq!(done["counts"]["total"], 4, "{done}");
    assert_eq!(done["counts"]["delivered"], 4, "{done}");
    let b = notify(
        &bf,
        json!({"targets": {"conversations": ["a:f-1"]}, "activity": {"type": "message", "text": "third"}}),
        None,
    )
    .await;
    let done = wait_final(&bf, b.body["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(
        done["counts"]["failed_by_reason"],
        json!({"reference_inactive": 1}),
        "{done}"
    );
    let calls_after = get_json(format!(
        "{}/_sim/activities?all=true&conversation=a:f-1",
        sim.url
    ))
    .await["activities"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        calls_before, calls_after,
        "an inactive reference was called"
    );
    assert_eq!(violations(&sim.url).await, 0);
}

#[actix_web::test]
async fn half_the_sends_answered_429_with_retry_after_all_arrive_once() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("notify-429");
    let bf = start(&sim.url, &prefix, true);
    let convs = conversations("t", T2, 20);
    seed(&sim.url, &bf, &convs).await;
    set_faults(&sim.url, json!({"throttleRatio": 0.5, "retryAfterSecs": 1})).await;
    let a = notify(
        &bf,
        json!({"targets": {"tenant": T2}, "activity": {"type": "message", "text": "throttled"}}),
        Some("k-429"),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let done = wait_final(&bf, a.body["id"].as_str().unwrap(), Duration::from_secs(90)).await;
    assert_eq!(done["counts"]["delivered"], 20, "{done}");
    let refused = get_json(format!(
        "{}/_sim/activities?all=true&operation=send",
        sim.url
    ))
    .await;
    let throttled = refused["activities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == 429)
        .count();
    assert!(throttled >= 10, "the sim throttled only {throttled} sends");
    let sent = sends_by_conversation(&sim.url, "throttled").await;
    assert_eq!(sent.len(), 20);
    assert!(sent.values().all(|n| *n == 1), "{sent:?}");
    // Every 429 came back to the notifier at once and was rescheduled (the
    // target `retrying` until its Retry-After), not waited for inside the
    // call: one throttled reschedule per 429 at least (local throttles add).
    let rescheduled = metric(
        bf.admin_url(),
        "botfleet_notification_deliveries_total{outcome=\"retried\",reason=\"throttled\"}",
    )
    .await;
    assert!(
        rescheduled >= throttled as f64,
        "{throttled} answers 429 but {rescheduled} throttled reschedules"
    );
    let counted = metric(bf.admin_url(), "botfleet_notification_throttled_total").await;
    assert!(counted >= throttled as f64, "throttled_total {counted}");
}

#[actix_web::test]
async fn bad_requests_are_refused_naming_the_field() {
    let sim = start_sim();
    let bf = start(&sim.url, "", false);
    let ok_activity = json!({"type": "message", "text": "x"});
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"targets": {"conversations": []}, "activity": ok_activity}),
            400,
            "invalid_field",
            "targets.conversations",
        ),
        (
            json!({"targets": {"conversations": (0..10_001).map(|i| format!("a:{i}")).collect::<Vec<_>>()}, "activity": ok_activity}),
            400,
            "invalid_field",
            "targets.conversations",
        ),
        (
            json!({"targets": {"conversations": ["a:1", 5]}, "activity": ok_activity}),
            400,
            "invalid_field",
            "targets.conversations[1]",
        ),
        (
            json!({"targets": {}, "activity": ok_activity}),
            400,
            "invalid_field",
            "targets",
        ),
        (
            json!({"targets": {"all": true, "tenant": T1}, "activity": ok_activity}),
            400,
            "invalid_field",
            "targets",
        ),
        (
            json!({"targets": {"users": [{"id": "0f2ae4ec"}]}, "activity": ok_activity}),
            400,
            "invalid_field",
            "targets.users[0].tenant",
        ),
        (
            json!({"targets": {"all": true}, "activity": "hello"}),
            400,
            "invalid_field",
            "activity",
        ),
        (
            json!({"targets": {"all": true}, "activity": {"text": "no type"}}),
            400,
            "invalid_field",
            "activity.type",
        ),
        (
            json!({"targets": {"all": true}, "activity": {"type": "message", "text": "x".repeat(30_000)}}),
            400,
            "invalid_field",
            "activity",
        ),
        (
            json!({"targets": {"all": true}}),
            400,
            "invalid_field",
            "activity",
        ),
    ];
    for (body, status, check, field) in cases {
        let a = notify(&bf, body.clone(), None).await;
        assert_eq!(a.status.as_u16(), status, "{body:.200}: {}", a.body);
        assert_eq!(a.body["check"], check, "{}", a.body);
        assert_eq!(a.body["field"], field, "{}", a.body);
    }
    // Not JSON at all.
    let resp = http()
        .post(format!(
            "{}/admin/v1/bots/bot/notifications",
            bf.admin_url()
        ))
        .bearer_auth(BOOT)
        .header("content-type", "application/json")
        .body("{\"targets\":")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["check"], "malformed_json");
    // Unknown bot.
    let a = call(
        reqwest::Method::POST,
        format!("{}/admin/v1/bots/nobody/notifications", bf.admin_url()),
        BOOT,
        Some(json!({"targets": {"all": true}, "activity": ok_activity})),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.body["check"], "bot_not_found");
    // A key scoped to another bot neither sends for this one nor sees its jobs.
    let job = notify(
        &bf,
        json!({"targets": {"all": true}, "activity": ok_activity}),
        None,
    )
    .await;
    assert_eq!(job.status, StatusCode::ACCEPTED, "{}", job.body);
    let key = call(
        reqwest::Method::POST,
        format!("{}/admin/v1/keys", bf.admin_url()),
        BOOT,
        Some(json!({"description": "scoped", "role": "sender", "bots": ["other"]})),
        None,
    )
    .await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.body);
    let scoped = key.body["key"].as_str().unwrap();
    let a = call(
        reqwest::Method::POST,
        format!("{}/admin/v1/bots/bot/notifications", bf.admin_url()),
        scoped,
        Some(json!({"targets": {"all": true}, "activity": ok_activity})),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let a = call(
            method,
            format!(
                "{}/admin/v1/notifications/{}",
                bf.admin_url(),
                job.body["id"].as_str().unwrap()
            ),
            scoped,
            None,
            None,
        )
        .await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
        assert_eq!(a.body["check"], "notification_not_found");
    }
    let a = call(
        reqwest::Method::GET,
        format!("{}/admin/v1/notifications/0123", bf.admin_url()),
        BOOT,
        None,
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

/// `botfleet <args>` against `bf`'s admin API: (exit code, stdout, stderr).
fn cli(bf: &Botfleet, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(workspace_bin("botfleet"))
        .args(args)
        .args(["--url", bf.admin_url()])
        .env("BOTFLEET_KEY", BOOT)
        .env_remove("BOTFLEET_URL")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        !stdout.contains(BOOT) && !stderr.contains(BOOT),
        "the key was printed"
    );
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

#[actix_web::test]
async fn the_cli_sends_follows_and_reports_failures_by_reason() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("notify-cli");
    let bf = start(&sim.url, &prefix, true);
    let convs = conversations("cli", T3, 5);
    seed(&sim.url, &bf, &convs).await;

    // Follows the job to its end; everything delivered: exit 0.
    let (code, out, err) = cli(
        &bf,
        &[
            "notify",
            "--bot",
            "bot",
            "--tenant",
            T3,
            "--text",
            "from the cli",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("completed") && out.contains("delivered"),
        "{out}"
    );
    assert_eq!(
        sends_by_conversation(&sim.url, "from the cli").await.len(),
        5
    );

    // A card file that is not JSON is refused before anything is sent.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "{not json").unwrap();
    let (code, _, err) = cli(
        &bf,
        &[
            "notify",
            "--bot",
            "bot",
            "--all",
            "--card",
            bad.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not JSON"), "{err}");
    let (code, _, err) = cli(
        &bf,
        &[
            "notify",
            "--bot",
            "bot",
            "--user",
            "no-tenant",
            "--text",
            "x",
        ],
    );
    assert_eq!(code, 2, "{err}");

    // Some targets fail: exit 5, failures printed by reason.
    set_faults(
        &sim.url,
        json!({"conversations": [
            {"conversationId": "a:cli-2", "status": 403, "code": "ConversationBlockedByUser"},
        ]}),
    )
    .await;
    let (code, out, err) = cli(
        &bf,
        &[
            "notify",
            "--bot",
            "bot",
            "--conversation",
            "a:cli-1",
            "--conversation",
            "a:cli-2",
            "--conversation",
            "a:nobody",
            "--text",
            "partly",
        ],
    );
    assert_eq!(code, 5, "{out}\n{err}");
    assert!(out.contains("conversation_blocked_by_user (1):"), "{out}");
    assert!(out.contains("c:a:cli-2"), "{out}");
    assert!(out.contains("reference_missing (1):"), "{out}");
    assert!(err.contains("2 target(s) failed"), "{err}");

    // --detach --json returns the job at once; show --failed and cancel work on it.
    let (code, out, err) = cli(
        &bf,
        &[
            "notify",
            "--bot",
            "bot",
            "--conversation",
            "a:nobody",
            "--text",
            "detached",
            "--detach",
            "--json",
            "--idempotency-key",
            "cli-detach",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let job: Value = serde_json::from_str(&out).unwrap();
    let id = job["id"].as_str().unwrap();
    wait_final(&bf, id, Duration::from_secs(30)).await;
    let (code, out, _) = cli(&bf, &["notifications", "show", id, "--failed", "--json"]);
    assert_eq!(code, 0);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["failed"][0]["error"]["code"], "reference_missing");
    let (code, out, _) = cli(&bf, &["notifications", "cancel", id, "--json"]);
    assert_eq!(code, 0);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc["state"], "completed",
        "cancelling a finished job changes nothing"
    );
    let (code, _, err) = cli(&bf, &["notifications", "show", "0000"]);
    assert_eq!(code, 4, "{err}");
}

/// The sim's Bot Connector calls of `operation` (all, refused ones included).
async fn calls(sim: &str, operation: &str) -> Vec<Value> {
    get_json(format!(
        "{sim}/_sim/activities?all=true&operation={operation}"
    ))
    .await["activities"]
        .as_array()
        .unwrap()
        .clone()
}

async fn failed_targets(bf: &Botfleet, job: &str) -> Vec<Value> {
    let a = call(
        reqwest::Method::GET,
        format!(
            "{}/admin/v1/notifications/{job}/targets?state=failed",
            bf.admin_url()
        ),
        BOOT,
        None,
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    a.body["items"].as_array().unwrap().clone()
}

#[actix_web::test]
async fn users_get_a_created_1_1_chat_reused_by_the_next_job_and_without_the_app_fail_clearly() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("notify-users");
    let bf = start(&sim.url, &prefix, true);
    // One conversation of the tenant tells botfleet where its Bot Connector is.
    seed(&sim.url, &bf, &conversations("anchor", T1, 1)).await;
    post_json(
        format!("{}/_sim/installations", sim.url),
        json!({"appId": APP_ID, "tenantId": T1, "users": ["0f2ae4ec-0000-4000-8000-000000000001", "0f2ae4ec-0000-4000-8000-000000000002"]}),
    )
    .await;
    let users = json!([
        {"id": "0f2ae4ec-0000-4000-8000-000000000001", "tenant": T1},
        {"id": "0f2ae4ec-0000-4000-8000-000000000002", "tenant": T1},
        {"id": "0f2ae4ec-0000-4000-8000-0000000000ff", "tenant": T1},
    ]);
    let a = notify(
        &bf,
        json!({"targets": {"users": users}, "activity": {"type": "message", "text": "to users"}}),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let job = a.body["id"].as_str().unwrap().to_owned();
    let done = wait_final(&bf, &job, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["counts"]["delivered"], 2, "{done}");
    assert_eq!(
        done["counts"]["failed_by_reason"],
        json!({"app_not_installed": 1}),
        "{done}"
    );
    let failed = failed_targets(&bf, &job).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0]["id"],
        format!("u:{T1}:0f2ae4ec-0000-4000-8000-0000000000ff")
    );
    assert_eq!(failed[0]["error"]["code"], "app_not_installed");
    assert_eq!(failed[0]["error"]["status"], 403);
    let message = failed[0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("not installed the app"), "{message}");

    // Two chats created (and one refused), each sent the activity once.
    let creates = calls(&sim.url, "create").await;
    let created: Vec<&str> = creates
        .iter()
        .filter(|c| c["status"] == 201 || c["status"] == 200)
        .map(|c| c["conversationId"].as_str().unwrap())
        .collect();
    assert_eq!(created.len(), 2, "{creates:?}");
    assert_eq!(creates.iter().filter(|c| c["status"] == 403).count(), 1);
    let sent = sends_by_conversation(&sim.url, "to users").await;
    for c in &created {
        assert_eq!(sent.get(*c), Some(&1), "{c}: {sent:?}");
    }
    // Their references are stored, as if the users had written first.
    let listed = call(
        reqwest::Method::GET,
        format!("{}/admin/v1/bots/bot/conversations", bf.admin_url()),
        BOOT,
        None,
        None,
    )
    .await;
    let stored: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["conversation_id"].as_str().unwrap())
        .collect();
    for c in &created {
        assert!(stored.contains(c), "{c} not stored: {}", listed.body);
    }

    // The next job to a user reuses the stored chat: no create call.
    let b = notify(
        &bf,
        json!({"targets": {"users": [{"id": "0f2ae4ec-0000-4000-8000-000000000001", "tenant": T1}]},
               "activity": {"type": "message", "text": "again"}}),
        None,
    )
    .await;
    let done = wait_final(&bf, b.body["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(done["counts"]["delivered"], 1, "{done}");
    assert_eq!(
        calls(&sim.url, "create").await.len(),
        creates.len(),
        "the chat was created again"
    );
    let again = sends_by_conversation(&sim.url, "again").await;
    assert_eq!(again.len(), 1);
    assert!(
        created.contains(&again.keys().next().unwrap().as_str()),
        "{again:?}"
    );
    assert_eq!(violations(&sim.url).await, 0);
}

#[actix_web::test]
async fn a_channel_target_gets_a_new_thread_and_a_channel_of_another_bot_fails() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("notify-channel");
    let bf = start(&sim.url, &prefix, true);
    seed(&sim.url, &bf, &conversations("anchor", T2, 1)).await;
    post_json(
        format!("{}/_sim/conversations", sim.url),
        json!({"conversations": [
            {"id": "19:general-1@thread.tacv2", "tenantId": T2},
            {"id": "19:ops-1@thread.tacv2", "tenantId": T2},
            {"id": "19:other-bot@thread.tacv2", "tenantId": T2, "appIds": [OTHER_APP_ID]},
        ]}),
    )
    .await;
    let a = notify(
        &bf,
        json!({"targets": {"channel": {"team": "19:general-1@thread.tacv2", "channel": "19:ops-1@thread.tacv2", "tenant": T2}},
               "activity": {"type": "message", "text": "deploy finished"}}),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let done = wait_final(&bf, a.body["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(done["counts"]["total"], 1, "{done}");
    assert_eq!(done["counts"]["delivered"], 1, "{done}");
    // One create with the channel and the activity: a new thread, posted once.
    let creates = calls(&sim.url, "create").await;
    assert_eq!(creates.len(), 1, "{creates:?}");
    let thread = &creates[0];
    assert_eq!(thread["status"], 201, "{thread}");
    assert!(
        thread["conversationId"]
            .as_str()
            .unwrap()
            .starts_with("19:ops-1@thread.tacv2;messageid="),
        "{thread}"
    );
    assert_eq!(thread["body"]["isGroup"], true);
    assert_eq!(
        thread["body"]["channelData"]["channel"]["id"],
        "19:ops-1@thread.tacv2"
    );
    assert_eq!(thread["body"]["activity"]["text"], "deploy finished");

    // A channel whose roster does not have the bot: failed with Teams' reason.
    let b = notify(
        &bf,
        json!({"targets": {"channel": {"team": "19:general-1@thread.tacv2", "channel": "19:other-bot@thread.tacv2", "tenant": T2}},
               "activity": {"type": "message", "text": "not yours"}}),
        None,
    )
    .await;
    let job = b.body["id"].as_str().unwrap().to_owned();
    let done = wait_final(&bf, &job, Duration::from_secs(60)).await;
    assert_eq!(
        done["counts"]["failed_by_reason"],
        json!({"bot_not_in_conversation_roster": 1}),
        "{done}"
    );
    let failed = failed_targets(&bf, &job).await;
    assert_eq!(
        failed[0]["id"],
        "ch:19:general-1@thread.tacv2:19:other-bot@thread.tacv2"
    );
    assert_eq!(failed[0]["error"]["status"], 403);
    assert_eq!(violations(&sim.url).await, 0);
}

/// Fairness across jobs: a one-target job to a tenant where a 600-target job
/// is running (about 13 s at the tenant's 50 sends/s) finishes within
/// seconds, while the big job is still running: the jobs take turns in the
/// tenant's queue instead of the small one waiting behind every item of the
/// big one this replica holds.
#[actix_web::test]
async fn a_one_target_job_does_not_wait_behind_a_big_job_to_the_same_tenant() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("notify-fair");
    let bf = start(&sim.url, &prefix, true);
    let mut convs = conversations("fair-big", T1, 600);
    convs.push(("a:fair-small".to_owned(), T1));
    seed(&sim.url, &bf, &convs).await;
    let ids: Vec<&str> = convs[..600].iter().map(|(c, _)| c.as_str()).collect();
    let big = notify(
        &bf,
        json!({"targets": {"conversations": ids}, "activity": {"type": "message", "text": "big job"}}),
        None,
    )
    .await;
    assert_eq!(big.status, StatusCode::ACCEPTED, "{}", big.body);
    let big = big.body["id"].as_str().unwrap().to_owned();
    let job_url = |id: &str| format!("{}/admin/v1/notifications/{id}", bf.admin_url());
    // The big job is under way (its items are in the replica's hand).
    loop {
        let j = call(reqwest::Method::GET, job_url(&big), BOOT, None, None).await;
        if j.body["counts"]["delivered"].as_u64().unwrap_or(0) >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let small = notify(
        &bf,
        json!({"targets": {"conversations": ["a:fair-small"]}, "activity": {"type": "message", "text": "small job"}}),
        None,
    )
    .await;
    assert_eq!(small.status, StatusCode::ACCEPTED, "{}", small.body);
    let small = small.body["id"].as_str().unwrap().to_owned();
    let done = wait_final(&bf, &small, Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert_eq!(done["counts"]["delivered"], 1, "{done}");
    let big_now = call(reqwest::Method::GET, job_url(&big), BOOT, None, None).await;
    let delivered = big_now.body["counts"]["delivered"].as_u64().unwrap();
    assert!(
        delivered < 600,
        "the big job ended first ({delivered} delivered): no contention was tested"
    );
    assert!(
        took < Duration::from_secs(3),
        "the one-target job took {took:?} behind the big job ({delivered} of 600 delivered)"
    );
    let done_big = wait_final(&bf, &big, Duration::from_secs(60)).await;
    assert_eq!(done_big["counts"]["delivered"], 600, "{done_big}");
    assert_eq!(violations(&sim.url).await, 0);
    eprintln!(
        "fairness: the one-target job finished {:.2} s after it was created, with {delivered} of the big job's 600 delivered",
        took.as_secs_f64()
    );
}

/// `GET /bots/{bot}/notifications`: newest first, cursor pages, a state
/// filter, bad filters named; `botfleet notifications list`; an activity
/// that names its own routing (`conversation`, `from`, `recipient`) is refused
/// naming the field.
#[actix_web::test]
async fn jobs_are_listed_newest_first_by_page_and_state() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("notify-list");
    let bf = start(&sim.url, &prefix, true);
    let convs = conversations("list", T3, 2);
    seed(&sim.url, &bf, &convs).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let a = notify(
            &bf,
            json!({"targets": {"tenant": T3}, "activity": {"type": "message", "text": format!("list {i}")}}),
            None,
        )
        .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
        let id = a.body["id"].as_str().unwrap().to_owned();
        wait_final(&bf, &id, Duration::from_secs(30)).await;
        ids.push(id);
    }
    let list = |query: &str| {
        call(
            reqwest::Method::GET,
            format!("{}/admin/v1/bots/bot/notifications{query}", bf.admin_url()),
            BOOT,
            None,
            None,
        )
    };
    let all = list("").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    let got: Vec<&str> = all.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(got, newest_first);
    assert!(all.body["next"].is_null(), "{}", all.body);
    // Pages of one, following `next`.
    let mut paged = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let q = match &next {
            Some(n) => format!("?limit=1&next={n}"),
            None => "?limit=1".to_owned(),
        };
        let page = list(&q).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        for j in page.body["items"].as_array().unwrap() {
            paged.push(j["id"].as_str().unwrap().to_owned());
        }
        match page.body["next"].as_str() {
            Some(n) => next = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, newest_first);
    // By state: every job completed, none running.
    let completed = list("?state=completed").await;
    assert_eq!(completed.body["items"].as_array().unwrap().len(), 3);
    let running = list("?state=running").await;
    assert_eq!(running.body["items"], json!([]), "{}", running.body);
    let bad = list("?state=done").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert!(bad.body.to_string().contains("state"), "{}", bad.body);
    let unknown = call(
        reqwest::Method::GET,
        format!("{}/admin/v1/bots/nobot/notifications", bf.admin_url()),
        BOOT,
        None,
        None,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);

    // The CLI lists the same jobs.
    let (code, out, err) = cli(&bf, &["notifications", "list", "--bot", "bot"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("STATE") && ids.iter().all(|id| out.contains(id.as_str())),
        "{out}"
    );
    let (code, out, err) = cli(
        &bf,
        &[
            "notifications",
            "list",
            "--bot",
            "bot",
            "--state",
            "running",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["items"], json!([]), "{out}");

    // Routing comes from the stored references: naming it is refused.
    for field in ["conversation", "from", "recipient"] {
        let mut activity = json!({"type": "message", "text": "x"});
        activity[field] = json!({"id": "29:someone"});
        let a = notify(
            &bf,
            json!({"targets": {"all": true}, "activity": activity}),
            None,
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
        assert_eq!(a.body["field"], format!("activity.{field}"), "{}", a.body);
    }
}

/// `notify.retention`: a finished job, its targets and its idempotency key
/// are deleted that long after it ended (here 2 s; checked every second):
/// the job answers 404, it leaves the bot's list, and the same
/// Idempotency-Key and body create a new job (which is sent again).
#[actix_web::test]
async fn finished_jobs_are_deleted_after_the_retention() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("notify-retention");
    let toml = format!(
        "{}\n[notify]\nretention = \"2s\"\n",
        config(&sim.url, &prefix, true)
    );
    let bf = start_botfleet_with(&toml, &[("H11_NOTIFY_BOOT", BOOT)]);
    let convs = conversations("retention", T3, 2);
    seed(&sim.url, &bf, &convs).await;
    let body =
        json!({"targets": {"tenant": T3}, "activity": {"type": "message", "text": "kept 2 s"}});
    let first = notify(&bf, body.clone(), Some("retained-key")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let id = first.body["id"].as_str().unwrap().to_owned();
    wait_final(&bf, &id, Duration::from_secs(30)).await;
    let job_url = format!("{}/admin/v1/notifications/{id}", bf.admin_url());
    let started = Instant::now();
    loop {
        let a = call(reqwest::Method::GET, job_url.clone(), BOOT, None, None).await;
        if a.status == StatusCode::NOT_FOUND {
            break;
        }
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the finished job is still there after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Not deleted before the retention ran out.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let targets = call(
        reqwest::Method::GET,
        format!("{job_url}/targets"),
        BOOT,
        None,
        None,
    )
    .await;
    assert_eq!(targets.status, StatusCode::NOT_FOUND, "{}", targets.body);
    let list = call(
        reqwest::Method::GET,
        format!("{}/admin/v1/bots/bot/notifications", bf.admin_url()),
        BOOT,
        None,
        None,
    )
    .await;
    assert_eq!(list.body["items"], json!([]), "{}", list.body);
    let second = notify(&bf, body, Some("retained-key")).await;
    assert_eq!(second.status, StatusCode::ACCEPTED, "{}", second.body);
    assert_ne!(second.body["id"].as_str().unwrap(), id);
    assert!(second.headers.get("idempotent-replayed").is_none());
    let second = second.body["id"].as_str().unwrap().to_owned();
    wait_final(&bf, &second, Duration::from_secs(30)).await;
    let sent = sends_by_conversation(&sim.url, "kept 2 s").await;
    assert!(sent.values().all(|n| *n == 2), "{sent:?}");
}
