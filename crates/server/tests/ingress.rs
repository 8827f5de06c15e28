//! Ingress end to end: `botfleet serve` and `botfleet-sim serve` as processes,
//! real HTTP, real Redis. Every hostile input gets its status and names its check,
//! and nothing rejected reaches the store.

mod common;

use std::time::Duration;

use base64::Engine;
use botfleet_store::conversations::{ConversationStore, RedisConversationStore};
use botfleet_store::redis_pool::testing;
use common::*;
use serde_json::{json, Value};

struct Env {
    sim: Proc,
    bf: Botfleet,
    store: RedisConversationStore,
}

fn config(sim: &str, prefix: &str, extra_bot: &str) -> String {
    format!(
        r#"
[auth]
unknown_kid_refresh_min_secs = 1
key_refresh_secs = 3600

[store]
backend = "redis"
redis_urls = ["{redis}"]
key_prefix = "{prefix}"

{cloud}

[[bots]]
id = "e2e"
app_id = "{APP_ID}"
app_password = "{APP_SECRET}"
cloud = "sim"
{extra_bot}

[[bots]]
id = "strict"
app_id = "{OTHER_APP_ID}"
cloud = "sim"
allowed_tenants = ["{TENANT}"]
"#,
        redis = testing::single_url(),
        cloud = sim_cloud(sim),
    )
}

async fn env(name: &str) -> Env {
    let sim = start_sim();
    let prefix = testing::unique_prefix(name);
    let bf = start_botfleet(&config(&sim.url, &prefix, ""));
    let store = RedisConversationStore::new(testing::single(), &prefix);
    Env { sim, bf, store }
}

impl Env {
    fn endpoint(&self) -> String {
        format!("{}/api/messages", self.bf.url())
    }

    async fn token(&self, extra: Value) -> String {
        let mut body = json!({"appId": APP_ID, "serviceUrl": service_url(&self.sim.url)});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        mint(&self.sim.url, body).await
    }

    async fn stored(
        &self,
        conversation: &str,
    ) -> Option<botfleet_store::conversations::StoredConversation> {
        self.store
            .get("e2e", conversation)
            .await
            .expect("store get")
    }
}

fn assert_problem(got: &(u16, Value), status: u16, check: &str) {
    assert_eq!(got.0, status, "body: {}", got.1);
    assert_eq!(got.1["check"], check, "body: {}", got.1);
    assert_eq!(got.1["status"], status);
    assert!(got.1["type"].as_str().is_some_and(|t| t.ends_with(check)));
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[actix_web::test]
async fn valid_activity_is_accepted_and_its_reference_stored() {
    let e = env("valid").await;
    let token = e.token(json!({})).await;
    let msg = message(&e.sim.url, "a:conv-valid", "1", "hello");
    let got = post_activity(&e.endpoint(), Some(&token), &msg).await;
    assert_eq!(got.0, 200, "{}", got.1);
    let stored = e.stored("a:conv-valid").await.expect("reference stored");
    assert!(stored.active);
    assert_eq!(stored.reference.service_url, service_url(&e.sim.url));
    assert_eq!(stored.tenant_id.as_deref(), Some(TENANT));
    // the per-bot route accepts the same token
    let msg2 = message(&e.sim.url, "a:conv-valid", "2", "again");
    let got = post_activity(
        &format!("{}/api/messages/e2e", e.bf.url()),
        Some(&token),
        &msg2,
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);
}

#[actix_web::test]
async fn token_problems_are_401_and_name_the_check() {
    let e = env("tokens").await;
    let url = e.endpoint();
    let conv = "a:conv-bad-token";
    let msg = message(&e.sim.url, conv, "1", "hi");

    assert_problem(&post_activity(&url, None, &msg).await, 401, "missing_token");

    // alg none: header and claims of a real token, no signature
    let real = e.token(json!({})).await;
    let mut parts = real.split('.');
    let (_, claims) = (parts.next(), parts.next().expect("claims"));
    let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), claims);
    let got = post_activity(&url, Some(&none), &msg).await;
    assert_eq!(got.0, 401, "{}", got.1);

    // HS256 with the published RSA key material as the HMAC secret
    let jwks: Value = http()
        .get(format!("{}/v1/.well-known/keys", e.sim.url))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("jwks json");
    let key = &jwks["keys"][0];
    let secret = key["n"].as_str().expect("n").as_bytes().to_vec();
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            alg: jsonwebtoken::Algorithm::HS256,
            kid: key["kid"].as_str().map(str::to_owned),
            ..Default::default()
        },
        &serde_json::from_slice::<Value>(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .expect("claims b64"),
        )
        .expect("claims json"),
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .expect("hs256 token");
    let got = post_activity(&url, Some(&hs), &msg).await;
    assert_eq!(got.0, 401, "{}", got.1);
    assert_eq!(got.1["check"], "unsupported_algorithm");

    let garbage = post_activity(&url, Some("not.a.jwt"), &msg).await;
    assert_eq!(garbage.0, 401, "{}", garbage.1);

    let forged = e.token(json!({"key": "foreign"})).await;
    assert_problem(
        &post_activity(&url, Some(&forged), &msg).await,
        401,
        "signature",
    );

    let expired = e.token(json!({"expiredBySecs": 3600})).await;
    assert_problem(
        &post_activity(&url, Some(&expired), &msg).await,
        401,
        "expired",
    );

    let wrong_aud = e
        .token(json!({"audience": "00000000-0000-0000-0000-00000000dead"}))
        .await;
    assert_problem(
        &post_activity(&url, Some(&wrong_aud), &msg).await,
        401,
        "audience",
    );

    let wrong_iss = e.token(json!({"issuer": "https://evil.example.com"})).await;
    assert_problem(
        &post_activity(&url, Some(&wrong_iss), &msg).await,
        401,
        "issuer",
    );

    let other_url = e
        .token(json!({"tokenServiceUrl": "https://smba.trafficmanager.net/amer/"}))
        .await;
    assert_problem(
        &post_activity(&url, Some(&other_url), &msg).await,
        401,
        "service_url_claim",
    );

    // a token for the e2e bot on another bot's route
    let got = post_activity(
        &format!("{}/api/messages/strict", e.bf.url()),
        Some(&real),
        &msg,
    )
    .await;
    assert_problem(&got, 401, "audience");

    assert!(
        e.stored(conv).await.is_none(),
        "a rejected activity reached the store"
    );
}

#[actix_web::test]
async fn expiry_has_five_minutes_of_skew() {
    let e = env("skew").await;
    let msg = message(&e.sim.url, "a:conv-skew", "1", "hi");
    let recent = e.token(json!({"expiredBySecs": 120})).await;
    let got = post_activity(&e.endpoint(), Some(&recent), &msg).await;
    assert_eq!(got.0, 200, "{}", got.1);
    let old = e.token(json!({"expiredBySecs": 420})).await;
    let msg2 = message(&e.sim.url, "a:conv-skew", "2", "hi");
    assert_problem(
        &post_activity(&e.endpoint(), Some(&old), &msg2).await,
        401,
        "expired",
    );
}

#[actix_web::test]
async fn policy_problems_are_403_and_store_nothing() {
    let e = env("policy").await;
    let url = e.endpoint();

    let unendorsed = e.token(json!({"key": "unendorsed"})).await;
    let msg = message(&e.sim.url, "a:conv-endorse", "1", "hi");
    assert_problem(
        &post_activity(&url, Some(&unendorsed), &msg).await,
        403,
        "endorsement",
    );
    assert!(e.stored("a:conv-endorse").await.is_none());

    // an authentic token for a hostile serviceUrl: the token matches the activity,
    // but the host is not Teams
    let evil = "https://evil.example.com/amer/";
    let token = mint(&e.sim.url, json!({"appId": APP_ID, "serviceUrl": evil})).await;
    let mut msg = message(&e.sim.url, "a:conv-evil", "1", "hi");
    msg["serviceUrl"] = json!(evil);
    assert_problem(
        &post_activity(&url, Some(&token), &msg).await,
        403,
        "service_url_host",
    );
    assert!(e.stored("a:conv-evil").await.is_none());

    // the strict bot serves one tenant only
    let token = mint(
        &e.sim.url,
        json!({"appId": OTHER_APP_ID, "serviceUrl": service_url(&e.sim.url)}),
    )
    .await;
    let mut msg = message(&e.sim.url, "a:conv-tenant", "1", "hi");
    msg["recipient"]["id"] = json!(format!("28:{OTHER_APP_ID}"));
    msg["conversation"]["tenantId"] = json!(OTHER_TENANT);
    msg["channelData"]["tenant"]["id"] = json!(OTHER_TENANT);
    assert_problem(
        &post_activity(&url, Some(&token), &msg).await,
        403,
        "tenant_not_allowed",
    );
    let strict = RedisConversationStore::new(testing::single(), &e.bf_prefix());
    assert!(strict
        .get("strict", "a:conv-tenant")
        .await
        .expect("get")
        .is_none());
}

impl Env {
    fn bf_prefix(&self) -> String {
        let text = std::fs::read_to_string(self.bf.config.path()).expect("config");
        text.lines()
            .find_map(|l| l.strip_prefix("key_prefix = \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("prefix in config")
            .to_owned()
    }
}

#[actix_web::test]
async fn hostile_bodies_are_refused_before_auth() {
    let e = env("bodies").await;
    let url = e.endpoint();
    let token = e.token(json!({})).await;
    let client = http();
    let send = |body: Vec<u8>, ct: &'static str| {
        let req = client
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", ct)
            .body(body);
        async move {
            let resp = req.send().await.expect("send");
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            (status, v)
        }
    };
    assert_problem(
        &send(b"{\"type\": \"message\",".to_vec(), "application/json").await,
        400,
        "malformed_json",
    );
    assert_problem(
        &send(b"{\"type\": \"message\"}".to_vec(), "application/json").await,
        400,
        "invalid_activity",
    );
    let mut no_conv = message(&e.sim.url, "a:x", "1", "hi");
    no_conv
        .as_object_mut()
        .expect("object")
        .remove("conversation");
    let got = send(no_conv.to_string().into_bytes(), "application/json").await;
    assert_problem(&got, 400, "invalid_activity");
    assert!(got.1["detail"]
        .as_str()
        .is_some_and(|d| d.contains("conversation.id")));
    // deep nesting where an activity allows any JSON (`value`): serde_json's
    // recursion limit stops it
    let deep = format!(
        r#"{{"type":"message","value":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_problem(
        &send(deep.into_bytes(), "application/json").await,
        400,
        "malformed_json",
    );
    let top = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_problem(
        &send(top.into_bytes(), "application/json").await,
        400,
        "invalid_activity",
    );
    let big = vec![b' '; 10 * 1024 * 1024];
    assert_problem(&send(big, "application/json").await, 413, "body_too_large");
    let msg = message(&e.sim.url, "a:conv-ct", "1", "hi");
    assert_problem(
        &send(msg.to_string().into_bytes(), "text/plain").await,
        415,
        "unsupported_media_type",
    );
    let got = post_activity(
        &format!("{}/api/messages/nobody", e.bf.url()),
        Some(&token),
        &msg,
    )
    .await;
    // an unknown bot answers like a known one: a token for another bot is an
    // audience failure, not a 404 that lists which bots exist
    assert_problem(&got, 401, "audience");
    // the token never comes back in an answer
    assert!(!got.1.to_string().contains(&token));
}

#[actix_web::test]
async fn removal_marks_the_reference_inactive_and_duplicates_are_dropped() {
    let e = env("lifecycle").await;
    let token = e.token(json!({})).await;
    let conv = "a:conv-life";
    let msg = message(&e.sim.url, conv, "m1", "hi");
    assert_eq!(
        post_activity(&e.endpoint(), Some(&token), &msg).await.0,
        200
    );
    // Teams resends the same activity id: answered, not handled twice
    assert_eq!(
        post_activity(&e.endpoint(), Some(&token), &msg).await.0,
        200
    );
    let mut remove = message(&e.sim.url, conv, "u1", "");
    remove["type"] = json!("installationUpdate");
    remove["action"] = json!("remove");
    assert_eq!(
        post_activity(&e.endpoint(), Some(&token), &remove).await.0,
        200
    );
    let stored = e.stored(conv).await.expect("still known");
    assert!(!stored.active, "uninstall must deactivate the reference");
    let mut add = remove.clone();
    add["id"] = json!("u2");
    add["action"] = json!("add");
    assert_eq!(
        post_activity(&e.endpoint(), Some(&token), &add).await.0,
        200
    );
    assert!(e.stored(conv).await.expect("known").active);
}

#[actix_web::test]
async fn key_rotation_is_picked_up_on_unknown_kid() {
    let e = env("rotation").await;
    let before = e.token(json!({})).await;
    let rotate = |retire: bool| {
        let url = format!("{}/_sim/keys/rotate", e.sim.url);
        async move {
            let r = http()
                .post(url)
                .json(&json!({"retireOld": retire}))
                .send()
                .await
                .expect("rotate");
            assert!(r.status().is_success());
        }
    };
    rotate(false).await;
    let after = e.token(json!({})).await;
    // unknown-kid refreshes are rate-limited (1 s here) from the start-up fetch
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let msg = message(&e.sim.url, "a:conv-rot", "1", "hi");
    let got = post_activity(&e.endpoint(), Some(&after), &msg).await;
    assert_eq!(got.0, 200, "new kid accepted after a refresh: {}", got.1);
    let msg = message(&e.sim.url, "a:conv-rot", "2", "hi");
    assert_eq!(
        post_activity(&e.endpoint(), Some(&before), &msg).await.0,
        200,
        "old kid still published"
    );

    // retire every old key: once botfleet refreshes, an old-kid token is refused
    rotate(true).await;
    let newest = e.token(json!({})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // the unknown-kid refresh rate limit
    let msg = message(&e.sim.url, "a:conv-rot", "3", "hi");
    assert_eq!(
        post_activity(&e.endpoint(), Some(&newest), &msg).await.0,
        200
    );
    // `after` was accepted (and cached) before its key was retired: it must not
    // outlive the key.
    let msg = message(&e.sim.url, "a:conv-rot", "4", "hi");
    let got = post_activity(&e.endpoint(), Some(&after), &msg).await;
    assert_problem(&got, 401, "unknown_key");
}

#[actix_web::test]
async fn a_tenant_over_its_quota_gets_429() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("quota");
    let toml = config(&sim.url, &prefix, "").replace(
        "[auth]",
        "[runtime]\ntenant_activities_per_sec = 2\n\n[auth]",
    );
    let bf = start_botfleet(&toml);
    let token = mint(
        &sim.url,
        json!({"appId": APP_ID, "serviceUrl": service_url(&sim.url)}),
    )
    .await;
    let url = format!("{}/api/messages", bf.url());
    let mut statuses = Vec::new();
    for i in 0..4 {
        let msg = message(&sim.url, &format!("a:quota-{i}"), "1", "hi");
        let got = post_activity(&url, Some(&token), &msg).await;
        if got.0 == 429 {
            assert_eq!(got.1["check"], "tenant_quota");
        }
        statuses.push(got.0);
    }
    assert_eq!(statuses, vec![200, 200, 429, 429]);
}
