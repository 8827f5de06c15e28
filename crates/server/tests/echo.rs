//! The outbound path end to end: Teams (botfleet-sim) posts messages, botfleet's
//! echo bot answers through the Bot Connector with a token from the shared
//! cache, under the Teams rate limits.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};

fn echo_config(sim: &str, extra: &str) -> String {
    format!(
        r#"
{cloud}
[outbound]
gcc_service_url = "{sim}/gcc"

[[bots]]
id = "echo"
app_id = "{APP_ID}"
app_password = "{APP_SECRET}"
cloud = "sim"
handler = {{ kind = "echo" }}
{extra}
"#,
        cloud = sim_cloud(sim)
    )
}

fn successful_token_requests(v: &Value, client: &str) -> usize {
    v["requests"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter(|r| r["clientId"] == client && r["status"] == 200)
                .count()
        })
        .unwrap_or(0)
}

#[actix_web::test]
async fn thousand_messages_from_hundred_conversations_get_thousand_echoes() {
    let sim = start_sim();
    let bf = start_botfleet(&echo_config(&sim.url, ""));
    let tenants: Vec<String> = (0..10)
        .map(|t| format!("00000000-0000-4000-8000-{t:012}"))
        .collect();
    let conversations: Vec<(String, String)> = (0..100)
        .map(|c| (format!("a:echo-conv-{c}"), tenants[c % 10].clone()))
        .collect();
    let pairs: Vec<(&str, &str)> = conversations
        .iter()
        .map(|(id, t)| (id.as_str(), t.as_str()))
        .collect();
    register(&sim.url, &pairs).await;
    let token = Arc::new(
        mint(
            &sim.url,
            json!({"appId": APP_ID, "serviceUrl": service_url(&sim.url)}),
        )
        .await,
    );
    let url = Arc::new(format!("{}/api/messages", bf.url()));
    let sent: BTreeSet<String> = (0..1000).map(|i| format!("message {i}")).collect();
    let statuses: Vec<u16> = futures::stream::iter(0..1000)
        .map(|i| {
            let (conv, tenant) = conversations[i % 100].clone();
            let token = token.clone();
            let url = url.clone();
            let sim = sim.url.clone();
            async move {
                let mut a = message(&sim, &conv, &format!("id-{i}"), &format!("message {i}"));
                a["conversation"]["tenantId"] = json!(tenant);
                a["channelData"]["tenant"]["id"] = json!(tenant);
                post_activity(&url, Some(&token), &a).await.0
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "non-200 answers: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );

    let activities = get_json(format!("{}/_sim/activities", sim.url)).await;
    let echoed: Vec<String> = activities["activities"]
        .as_array()
        .expect("activities")
        .iter()
        .filter(|r| {
            r["status"]
                .as_u64()
                .is_some_and(|s| (200..300).contains(&s))
        })
        .filter(|r| r["appId"] == APP_ID)
        .filter_map(|r| r["body"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(echoed.len(), 1000, "exactly one echo per message");
    assert_eq!(echoed.into_iter().collect::<BTreeSet<_>>(), sent);

    let tokens = get_json(format!("{}/_sim/token-requests", sim.url)).await;
    assert_eq!(
        successful_token_requests(&tokens, APP_ID),
        1,
        "one token for the whole run: {tokens}"
    );
    let violations = get_json(format!("{}/_sim/violations", sim.url)).await;
    assert_eq!(
        violations["total"], 0,
        "Teams rate limits broken: {violations}"
    );
}

#[actix_web::test]
async fn a_blocked_conversation_is_deactivated_and_not_retried() {
    let sim = start_sim();
    let bf = start_botfleet(&echo_config(&sim.url, ""));
    register(&sim.url, &[("a:blocked", TENANT)]).await;
    set_faults(
        &sim.url,
        json!({"conversations": [{"conversationId": "a:blocked", "status": 403, "code": "ConversationBlockedByUser"}]}),
    )
    .await;
    let token = mint(
        &sim.url,
        json!({"appId": APP_ID, "serviceUrl": service_url(&sim.url)}),
    )
    .await;
    let got = post_activity(
        &format!("{}/api/messages", bf.url()),
        Some(&token),
        &message(&sim.url, "a:blocked", "b1", "hello"),
    )
    .await;
    // the bot could not answer: logged and counted, never sent into the chat,
    // and answered 200 since Teams' resend would not help (docs/turns.md)
    assert_eq!(got.0, 200, "{}", got.1);
    let activities = get_json(format!(
        "{}/_sim/activities?conversation=a:blocked&all=true",
        sim.url
    ))
    .await;
    let calls = activities["activities"].as_array().map_or(0, Vec::len);
    assert_eq!(
        calls, 1,
        "a permanent 403 must not be retried: {activities}"
    );
}

#[actix_web::test]
async fn a_resend_to_another_replica_is_not_handled_twice() {
    use botfleet_store::redis_pool::testing;
    let sim = start_sim();
    let prefix = testing::unique_prefix("resend");
    let store = format!(
        "[store]\nbackend = \"redis\"\nredis_urls = [\"{}\"]\nkey_prefix = \"{prefix}\"\n",
        testing::single_url()
    );
    let config = format!("{store}{}", echo_config(&sim.url, ""));
    let a = start_botfleet(&config);
    let b = start_botfleet(&config);
    register(&sim.url, &[("a:resent", TENANT)]).await;
    let token = mint(
        &sim.url,
        json!({"appId": APP_ID, "serviceUrl": service_url(&sim.url)}),
    )
    .await;
    let msg = message(&sim.url, "a:resent", "same-id", "only once");
    for replica in [&a, &b, &a] {
        let got = post_activity(
            &format!("{}/api/messages", replica.url()),
            Some(&token),
            &msg,
        )
        .await;
        assert_eq!(got.0, 200, "{}", got.1);
    }
    let acts = get_json(format!("{}/_sim/activities?conversation=a:resent", sim.url)).await;
    assert_eq!(
        acts["activities"].as_array().map_or(0, Vec::len),
        1,
        "{acts}"
    );
}
