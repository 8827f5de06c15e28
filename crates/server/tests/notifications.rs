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
