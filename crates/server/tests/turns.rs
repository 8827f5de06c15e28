//! Turns end to end (docs/turns.md): which deliveries are resends, who writes a
//! conversation reference, and what Teams gets back. `botfleet serve` (one or
//! two replicas sharing Redis) and `botfleet-sim serve` run as processes;
//! activities are signed by the sim as Teams signs them.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use botfleet_store::conversations::{
    ConversationStore, RedisConversationStore, StoredConversation,
};
use botfleet_store::redis_pool::testing;
use common::*;
use parking_lot::Mutex;
use serde_json::{json, Value};

const WEBHOOK_SECRET: &str = "webhook-secret-0123456789";

fn config(sim: &str, prefix: &str, handler: &str) -> String {
    format!(
        r#"
[store]
backend = "redis"
redis_urls = ["{redis}"]
key_prefix = "{prefix}"
[outbound]
gcc_service_url = "{sim}/gcc/"
{cloud}
[[bots]]
id = "bot"
app_id = "{APP_ID}"
app_password = "{APP_SECRET}"
cloud = "sim"
handler = {handler}
"#,
        redis = testing::single_url(),
        cloud = sim_cloud(sim),
    )
}

const ECHO: &str = r#"{ kind = "echo" }"#;

fn webhook(url: &str) -> String {
    format!(r#"{{ kind = "webhook", url = "{url}", secret = "{WEBHOOK_SECRET}", timeout = "1s" }}"#)
}

struct Env {
    sim: Proc,
    /// Two replicas sharing one Redis prefix.
    a: Botfleet,
    b: Botfleet,
    store: RedisConversationStore,
    token: String,
}

async fn env(name: &str, handler: &str) -> Env {
    let sim = start_sim();
    let prefix = testing::unique_prefix(name);
    let toml = config(&sim.url, &prefix, handler);
    // These tests read the human log lines (`delivery_key=`, WARN lines); JSON
    // is the default when stderr is not a terminal.
    let text = [("BOTFLEET__SERVER__LOG_FORMAT", "text")];
    let a = start_botfleet_with(&toml, &text);
    let b = start_botfleet_with(&toml, &text);
    let store = RedisConversationStore::new(testing::single(), &prefix);
    let token = mint(
        &sim.url,
        json!({"appId": APP_ID, "serviceUrl": service_url(&sim.url)}),
    )
    .await;
    Env {
        sim,
        a,
        b,
        store,
        token,
    }
}

impl Env {
    async fn post(&self, replica: &Botfleet, activity: &Value) -> (u16, Value) {
        post_activity(
            &format!("{}/api/messages", replica.url()),
            Some(&self.token),
            activity,
        )
        .await
    }

    async fn stored(&self, conversation: &str) -> StoredConversation {
        self.store
            .get("bot", conversation)
            .await
            .expect("store get")
            .expect("reference stored")
    }

    /// Every Bot Connector call the sim saw for a conversation: (status, path).
    async fn calls(&self, conversation: &str) -> Vec<(u64, String)> {
        let v = get_json(format!(
            "{}/_sim/activities?conversation={conversation}&all=true",
            self.sim.url
        ))
        .await;
        v["activities"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        (
                            r["status"].as_u64().unwrap_or(0),
                            r["path"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn uninstall(sim: &str, conversation: &str, id: &str) -> Value {
    let mut a = message(sim, conversation, id, "");
    a["type"] = json!("installationUpdate");
    a["action"] = json!("remove");
    a.as_object_mut().map(|o| o.remove("text"));
    a
}

fn case_file(case: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cases")
        .join(case)
        .join(file)
}

/// A webhook bot logic that records every activity it is given and answers by
/// text: `hang` outlives botfleet's 1 s webhook timeout, `500` answers 500,
/// `reply` answers with a reply and an invoke response; anything else 200.
struct Hook {
    url: String,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    fn count(&self, id: &str) -> usize {
        self.seen.lock().iter().filter(|a| a["id"] == id).count()
    }
}

impl Hook {
    /// (type, channelData.eventType) of every activity the webhook was given.
    fn events(&self) -> Vec<(String, String)> {
        self.seen
            .lock()
            .iter()
            .map(|a| {
                (
                    a["type"].as_str().unwrap_or("").to_owned(),
                    a["channelData"]["eventType"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                )
            })
            .collect()
    }
}

/// Serves the hook on its own thread and runtime, so that a test blocked on a
/// child process (`botfleet-sim send`) does not stall it.
fn start_hook(listener: std::net::TcpListener) -> Hook {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let recorded = seen.clone();
    let addr = listener.local_addr().expect("hook address");
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                let recorded = recorded.clone();
                App::new().route(
                    "/hook",
                    web::post().to(move |body: web::Bytes| {
                        let recorded = recorded.clone();
                        async move { hook_answer(&recorded, &body).await }
                    }),
                )
            })
            .workers(1)
            .listen(listener)
            .expect("hook listens");
            let _ = server.run().await;
        })
    });
    Hook {
        url: format!("http://{addr}/hook"),
        seen,
    }
}

async fn hook_answer(recorded: &Mutex<Vec<Value>>, body: &[u8]) -> HttpResponse {
    let activity: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    recorded.lock().push(activity.clone());
    match activity["text"].as_str().unwrap_or("") {
        "hang" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            HttpResponse::Ok().finish()
        }
        "500" => HttpResponse::InternalServerError().body("bot logic down"),
        "reply" => HttpResponse::Ok().json(json!({
            "replies": [{"type": "message", "text": "from the webhook"}],
            "invokeResponse": {"status": 200, "body": {"ok": true}}
        })),
        _ => HttpResponse::Ok().finish(),
    }
}

/// `botfleet_replies_total{outcome}` of one replica (its admin URL).
async fn replies(admin: &str, outcome: &str) -> f64 {
    metric(
        admin,
        &format!("botfleet_replies_total{{outcome=\"{outcome}\"}}"),
    )
    .await
}

// ---- 1. Distinct events that share an activity id are not resends ----

/// Case `edit-delete-same-id`: a message, its edit, soft delete and undelete,
/// all with the original message's id. The webhook bot sees each exactly once;
/// each one's resend is dropped, by the replica that handled it and by a second
/// replica sharing Redis, and logged at debug with its delivery key.
#[actix_web::test]
async fn edit_delete_same_id_each_event_once_resends_dropped_on_any_replica() {
    let hook = start_hook(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    let e = env("editdelete", &webhook(&hook.url)).await;
    let files = [
        "0-message.json",
        "1-edit.json",
        "2-soft-delete.json",
        "3-undelete.json",
    ];
    let to_a = format!("{}/api/messages", e.a.url());
    let to_b = format!("{}/api/messages", e.b.url());
    for f in files {
        let path = case_file("edit-delete-same-id", f);
        assert_eq!(sim_send_file(&e.sim.url, &to_a, APP_ID, &path), 200, "{f}");
    }
    assert_eq!(
        hook.events(),
        vec![
            ("message".to_owned(), String::new()),
            ("messageUpdate".to_owned(), "editMessage".to_owned()),
            ("messageDelete".to_owned(), "softDeleteMessage".to_owned()),
            ("messageUpdate".to_owned(), "undeleteMessage".to_owned()),
        ],
        "the webhook bot must see each event once, in order"
    );
    // Teams resends each one: to the same replica, then to the other one.
    for to in [&to_a, &to_b] {
        for f in files {
            let path = case_file("edit-delete-same-id", f);
            assert_eq!(sim_send_file(&e.sim.url, to, APP_ID, &path), 200, "{f}");
        }
    }
    assert_eq!(hook.seen.lock().len(), 4, "a resend reached the bot");
    for bf in [&e.a, &e.b] {
        assert_eq!(
            metric(bf.admin_url(), "botfleet_activities_duplicate_total").await,
            4.0
        );
    }
    let log = e.a.proc.log_text();
    let dropped = log
        .lines()
        .filter(|l| l.contains("duplicate delivery dropped") && l.contains("delivery_key="))
        .count();
    assert_eq!(dropped, 4, "each dropped resend logs its key at debug");
    assert!(
        !log.contains("original text") && !log.contains("edited text"),
        "message text reached the log"
    );
}

// ---- 2. One owner for each conversation reference ----

/// Case `reactivate-after-403`: the reply to the first message gets 403
/// `BotNotInConversationRoster` (deactivated, answered 200, one attempt); the
/// user writes again once the bot is back: active again, reason cleared,
/// `last_seen` moved, the echo delivered.
#[actix_web::test]
async fn reactivate_after_403_the_next_message_reactivates() {
    let e = env("react403", ECHO).await;
    let conv = "a:1huntRosterConv_0003";
    set_faults(
        &e.sim.url,
        json!({"conversations": [{"conversationId": conv, "status": 403, "code": "BotNotInConversationRoster"}]}),
    )
    .await;
    let to = format!("{}/api/messages", e.a.url());
    let first = case_file("reactivate-after-403", "0-first.json");
    assert_eq!(sim_send_file(&e.sim.url, &to, APP_ID, &first), 200);
    let gone = e.stored(conv).await;
    assert!(!gone.active);
    assert_eq!(
        gone.inactive_reason.as_deref(),
        Some("BotNotInConversationRoster")
    );
    assert_eq!(e.calls(conv).await.len(), 1, "a 403 is not retried");

    set_faults(&e.sim.url, json!({})).await;
    let second = case_file("reactivate-after-403", "1-second.json");
    assert_eq!(sim_send_file(&e.sim.url, &to, APP_ID, &second), 200);
    let back = e.stored(conv).await;
    assert!(back.active, "the user's message did not reactivate it");
    assert_eq!((back.inactive_reason, back.inactive_since_ms), (None, None));
    assert!(
        back.last_seen_ms > gone.last_seen_ms,
        "last_seen did not move"
    );
    assert_eq!(back.generation, gone.generation + 1);
    let calls = e.calls(conv).await;
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].0, 201, "the echo was not delivered: {calls:?}");
}

/// 404 `ConversationNotFound` on one replica, the user's next message on the
/// other: active again there too (no replica holds a copy of the reference).
#[actix_web::test]
async fn conversation_not_found_then_a_message_on_another_replica_reactivates() {
    let e = env("react404", ECHO).await;
    let conv = "a:not-found";
    register(&e.sim.url, &[(conv, TENANT)]).await;
    set_faults(
        &e.sim.url,
        json!({"conversations": [{"conversationId": conv, "status": 404, "code": "ConversationNotFound"}]}),
    )
    .await;
    let got = e
        .post(&e.a, &message(&e.sim.url, conv, "n1", "hello"))
        .await;
    assert_eq!(got.0, 200, "{}", got.1);
    let gone = e.stored(conv).await;
    assert!(!gone.active);
    assert_eq!(
        gone.inactive_reason.as_deref(),
        Some("ConversationNotFound")
    );

    set_faults(&e.sim.url, json!({})).await;
    let got = e
        .post(&e.b, &message(&e.sim.url, conv, "n2", "again"))
        .await;
    assert_eq!(got.0, 200, "{}", got.1);
    let back = e.stored(conv).await;
    assert!(back.active);
    assert_eq!(back.inactive_reason, None);
    assert!(back.last_seen_ms > gone.last_seen_ms);
    // and back on the first replica, whose actor for this conversation is still alive
    set_faults(
        &e.sim.url,
        json!({"conversations": [{"conversationId": conv, "status": 404, "code": "ConversationNotFound"}]}),
    )
    .await;
    assert_eq!(
        e.post(&e.b, &message(&e.sim.url, conv, "n3", "x")).await.0,
        200
    );
    assert!(!e.stored(conv).await.active);
    set_faults(&e.sim.url, json!({})).await;
    assert_eq!(
        e.post(&e.a, &message(&e.sim.url, conv, "n4", "y")).await.0,
        200
    );
    assert!(e.stored(conv).await.active);
}

/// 403 `InvalidBotApiHost` at the public host: the reply is redone at the GCC
/// host and the reference moves; the next replies, from either replica, go to
/// the GCC host at once, although Teams still names the public one.
#[actix_web::test]
async fn gcc_move_the_next_reply_goes_to_the_moved_host_on_any_replica() {
    let e = env("gcc", ECHO).await;
    let conv = "a:gcc-tenant";
    register(&e.sim.url, &[(conv, TENANT)]).await;
    set_faults(
        &e.sim.url,
        json!({"conversations": [{"conversationId": conv, "status": 403, "code": "InvalidBotApiHost", "pathPrefix": "/amer/"}]}),
    )
    .await;
    let got = e.post(&e.a, &message(&e.sim.url, conv, "g1", "one")).await;
    assert_eq!(got.0, 200, "{}", got.1);
    let gcc = format!("{}/gcc/", e.sim.url);
    let stored = e.stored(conv).await;
    assert_eq!(stored.reference.service_url, gcc);
    assert!(stored.active);
    for (replica, id) in [(&e.b, "g2"), (&e.a, "g3")] {
        let got = e.post(replica, &message(&e.sim.url, conv, id, id)).await;
        assert_eq!(got.0, 200, "{}", got.1);
    }
    let calls = e.calls(conv).await;
    let statuses: Vec<u64> = calls.iter().map(|c| c.0).collect();
    assert_eq!(statuses, vec![403, 201, 201, 201], "{calls:?}");
    assert!(calls[0].1.starts_with("/amer/"), "{calls:?}");
    assert!(
        calls[1..].iter().all(|c| c.1.starts_with("/gcc/")),
        "a reply after the move went to the public host: {calls:?}"
    );
    assert_eq!(
        metric(e.a.admin_url(), "botfleet_references_moved_total").await,
        1.0
    );
}

/// A reply in flight while the user uninstalls on another replica: its late
/// outcome (a move to GCC) must not rewrite, let alone reactivate, the
/// uninstalled reference.
#[actix_web::test]
async fn a_late_reply_outcome_does_not_undo_an_uninstall() {
    let e = env("lateoutcome", ECHO).await;
    let conv = "a:late";
    register(&e.sim.url, &[(conv, TENANT)]).await;
    set_faults(
        &e.sim.url,
        json!({"latencyMs": 2000, "conversations": [{"conversationId": conv, "status": 403, "code": "InvalidBotApiHost", "pathPrefix": "/amer/"}]}),
    )
    .await;
    let url_a = format!("{}/api/messages", e.a.url());
    let token = e.token.clone();
    let msg = message(&e.sim.url, conv, "l1", "slow");
    let in_flight =
        actix_web::rt::spawn(async move { post_activity(&url_a, Some(&token), &msg).await });
    // The reply is on its way to the public host (2 s), then to GCC (2 s).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let removed = e.post(&e.b, &uninstall(&e.sim.url, conv, "u1")).await;
    assert_eq!(removed.0, 200, "{}", removed.1);
    let uninstalled = e.stored(conv).await;
    assert!(!uninstalled.active);
    let got = in_flight.await.expect("reply task");
    assert_eq!(got.0, 200, "{}", got.1);
    let after = e.stored(conv).await;
    assert!(
        !after.active,
        "a late reply outcome reactivated an uninstalled conversation"
    );
    assert_eq!(after.inactive_reason.as_deref(), Some("uninstalled"));
    assert_eq!(after.reference.service_url, service_url(&e.sim.url));
    assert_eq!(after.generation, uninstalled.generation);
    assert_eq!(
        metric(e.a.admin_url(), "botfleet_reference_outcomes_stale_total").await,
        1.0
    );
}

// ---- 3. What Teams gets back says whether a resend helps ----

/// A 504 on the reply is ambiguous (Teams may have delivered it) and
/// `ambiguous_send = "report"` promises never to resend it. botfleet answers
/// 200 and keeps the claim, so Teams' resend, to either replica, never makes a
/// second reply.
#[actix_web::test]
async fn a_resend_after_a_504_on_the_reply_never_sends_a_second_reply() {
    let e = env("resend504", ECHO).await;
    let conv = "a:gateway";
    register(&e.sim.url, &[(conv, TENANT)]).await;
    set_faults(&e.sim.url, json!({"failNext": 1, "failNextStatus": 504})).await;
    let msg = message(&e.sim.url, conv, "r1", "once");
    let got = e.post(&e.a, &msg).await;
    assert_eq!(got.0, 200, "{}", got.1);
    for replica in [&e.a, &e.b, &e.a] {
        let got = e.post(replica, &msg).await;
        assert_eq!(got.0, 200, "{}", got.1);
    }
    assert_eq!(
        e.calls(conv).await,
        vec![(
            504,
            format!("/amer/v3/conversations/{}/activities/r1", "a%3Agateway")
        )],
        "one reply attempt, whatever Teams resends"
    );
    assert_eq!(
        metric(
            e.a.admin_url(),
            "botfleet_replies_total{outcome=\"unknown\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(e.a.admin_url(), "botfleet_activities_duplicate_total").await,
        2.0
    );
    assert_eq!(
        metric(e.b.admin_url(), "botfleet_activities_duplicate_total").await,
        1.0
    );
}

/// 403, 404 and 500 on the reply: 200 to Teams, one attempt each, the outcome
/// on /metrics and in a warn line naming bot, tenant and outcome; resends dropped.
#[actix_web::test]
async fn failed_replies_are_answered_2xx_once_with_their_outcome_recorded() {
    let e = env("replyfail", ECHO).await;
    let cases = [
        (
            "a:roster",
            json!({"conversationId": "a:roster", "status": 403, "code": "BotNotInConversationRoster"}),
        ),
        (
            "a:missing",
            json!({"conversationId": "a:missing", "status": 404, "code": "ConversationNotFound"}),
        ),
    ];
    register(
        &e.sim.url,
        &[
            ("a:roster", TENANT),
            ("a:missing", TENANT),
            ("a:error", TENANT),
        ],
    )
    .await;
    set_faults(
        &e.sim.url,
        json!({"conversations": cases.iter().map(|c| c.1.clone()).collect::<Vec<_>>()}),
    )
    .await;
    for (conv, _) in &cases {
        let msg = message(&e.sim.url, conv, "f1", "hi");
        assert_eq!(e.post(&e.a, &msg).await.0, 200, "{conv}");
        assert_eq!(e.post(&e.b, &msg).await.0, 200, "{conv} resend");
        assert_eq!(e.calls(conv).await.len(), 1, "{conv}: one attempt");
        assert!(!e.stored(conv).await.active, "{conv}");
    }
    set_faults(&e.sim.url, json!({"failNext": 1, "failNextStatus": 500})).await;
    let msg = message(&e.sim.url, "a:error", "f1", "hi");
    assert_eq!(e.post(&e.a, &msg).await.0, 200);
    assert_eq!(e.post(&e.a, &msg).await.0, 200, "resend");
    assert_eq!(e.calls("a:error").await.len(), 1, "a 500 is not retried");
    assert!(
        e.stored("a:error").await.active,
        "a 500 says nothing about the conversation"
    );
    assert_eq!(replies(e.a.admin_url(), "conversation_gone").await, 2.0);
    assert_eq!(replies(e.a.admin_url(), "rejected").await, 1.0);
    assert_eq!(replies(e.a.admin_url(), "delivered").await, 0.0);
    let warned =
        e.a.proc
            .log_text()
            .lines()
            .filter(|l| {
                l.contains("WARN")
                    && l.contains("reply not delivered")
                    && l.contains("bot=bot")
                    && l.contains(TENANT)
                    && l.contains("outcome=")
            })
            .count();
    assert_eq!(warned, 3, "one warn line per failed reply");
}

/// The webhook cases: not connected -> 500 and the claim given back (Teams'
/// resend is handled once the bot logic is up); a timeout after sending -> 200
/// and kept (the logic may have acted); 5xx -> 500 and given back (the
/// webhook asks to be called again); a failed invoke -> 500 (its answer is
/// synchronous); a failed reply inside an invoke -> the invoke's answer stands.
#[actix_web::test]
async fn webhook_answers_say_whether_a_resend_helps() {
    // A port with nothing listening yet: the webhook is down at first.
    let parked = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = parked.local_addr().expect("addr").port();
    drop(parked);
    let e = env(
        "webhookanswers",
        &webhook(&format!("http://127.0.0.1:{port}/hook")),
    )
    .await;
    let conv = "a:hook";
    register(&e.sim.url, &[(conv, TENANT), ("a:hook-gone", TENANT)]).await;

    let down = message(&e.sim.url, conv, "w1", "hello");
    let got = e.post(&e.a, &down).await;
    assert_eq!(got.0, 500, "{}", got.1);
    assert_eq!(got.1["check"], "handler_failed");

    let hook = start_hook(std::net::TcpListener::bind(("127.0.0.1", port)).expect("rebind"));
    assert_eq!(
        e.post(&e.b, &down).await.0,
        200,
        "the resend after the outage"
    );
    assert_eq!(hook.count("w1"), 1);

    let hang = message(&e.sim.url, conv, "w2", "hang");
    let started = Instant::now();
    assert_eq!(e.post(&e.a, &hang).await.0, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(e.post(&e.a, &hang).await.0, 200);
    assert_eq!(e.post(&e.b, &hang).await.0, 200);
    assert_eq!(
        hook.count("w2"),
        1,
        "a webhook that may have acted was called again"
    );

    let failing = message(&e.sim.url, conv, "w3", "500");
    for replica in [&e.a, &e.b] {
        let got = e.post(replica, &failing).await;
        assert_eq!(got.0, 500, "{}", got.1);
    }
    assert_eq!(
        hook.count("w3"),
        2,
        "a 5xx from the webhook asks for Teams' resend"
    );

    let mut invoke = message(&e.sim.url, conv, "w4", "500");
    invoke["type"] = json!("invoke");
    invoke["name"] = json!("adaptiveCard/action");
    assert_eq!(e.post(&e.a, &invoke).await.0, 500);

    set_faults(
        &e.sim.url,
        json!({"conversations": [{"conversationId": "a:hook-gone", "status": 403, "code": "BotNotInConversationRoster"}]}),
    )
    .await;
    let mut invoke = message(&e.sim.url, "a:hook-gone", "w5", "reply");
    invoke["type"] = json!("invoke");
    invoke["name"] = json!("adaptiveCard/action");
    let got = e.post(&e.a, &invoke).await;
    assert_eq!((got.0, &got.1), (200, &json!({"ok": true})));
    assert_eq!(
        metric(
            e.a.admin_url(),
            "botfleet_replies_total{outcome=\"conversation_gone\"}"
        )
        .await,
        1.0
    );
    assert!(!e.stored("a:hook-gone").await.active);
}
