//! `botfleet-sim send` (a separate process, as Teams would post) against
//! `botfleet serve` with a Redis store: after a run mixing authentic and hostile
//! activities, the stored conversation references are exactly those of the
//! accepted ones.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use botfleet_store::conversations::{ConversationStore, RedisConversationStore};
use botfleet_store::redis_pool::testing;
use common::*;

fn send(sim: &str, to: &str, conversation: &str, tenant: &str, extra: &[&str]) -> bool {
    let out = Command::new(workspace_bin("botfleet-sim"))
        .args([
            "send",
            "--to",
            to,
            "--sim",
            sim,
            "--app-id",
            APP_ID,
            "--text",
            "hello from the sim",
            "--conversation",
            conversation,
            "--tenant",
            tenant,
        ])
        .args(extra)
        .output()
        .expect("run botfleet-sim send");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!(
            "botfleet-sim send failed to run ({other:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[actix_web::test]
async fn stored_references_are_exactly_the_accepted_ones() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("sim-send");
    let toml = format!(
        r#"
[store]
backend = "redis"
redis_urls = ["{redis}"]
key_prefix = "{prefix}"
{cloud}
[[bots]]
id = "e2e"
app_id = "{APP_ID}"
cloud = "sim"
allowed_tenants = ["{TENANT}"]
"#,
        redis = testing::single_url(),
        cloud = sim_cloud(&sim.url),
    );
    let bf = start_botfleet(&toml);
    let to = format!("{}/api/messages", bf.url());

    let mut accepted = BTreeSet::new();
    for i in 0..5 {
        let conv = format!("a:accepted-{i}");
        assert!(
            send(&sim.url, &to, &conv, TENANT, &[]),
            "authentic activity refused"
        );
        accepted.insert(conv);
    }
    let hostile: [(&str, &[&str]); 6] = [
        ("a:hostile-expired", &["--expired"]),
        ("a:hostile-forged", &["--key", "foreign"]),
        ("a:hostile-unendorsed", &["--key", "unendorsed"]),
        (
            "a:hostile-issuer",
            &["--issuer", "https://evil.example.com"],
        ),
        (
            "a:hostile-url",
            &[
                "--token-service-url",
                "https://smba.trafficmanager.net/amer/",
            ],
        ),
        ("a:hostile-notoken", &["--no-token"]),
    ];
    for (conv, flags) in hostile {
        assert!(
            !send(&sim.url, &to, conv, TENANT, flags),
            "{conv} was accepted"
        );
    }
    assert!(
        !send(&sim.url, &to, "a:hostile-tenant", OTHER_TENANT, &[]),
        "foreign tenant accepted"
    );

    let store = RedisConversationStore::new(testing::single(), &prefix);
    let mut stored = BTreeSet::new();
    let mut cursor = None;
    loop {
        let page = store
            .list("e2e", None, cursor.as_deref(), 2)
            .await
            .expect("list");
        stored.extend(page.items.into_iter().map(|c| c.reference.conversation.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(stored, accepted);
}
