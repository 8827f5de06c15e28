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
    // These tests read the human log lines (`check=signature`); JSON is the
    // default when stderr is not a terminal.
    let bf = start_botfleet_with(
        &config(&sim.url, &prefix, ""),
        &[("BOTFLEET__SERVER__LOG_FORMAT", "text")],
    );
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
async fn hostile_bodies_are_described_only_to_a_valid_token() {
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
    // deep nesting where an activity allows any JSON (`value`), or at the top:
    // refused by the depth scan before the parser recurses
    let deep = format!(
        r#"{{"type":"message","value":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_problem(
        &send(deep.into_bytes(), "application/json").await,
        400,
        "json_too_deep",
    );
    let top = format!("{}{}", "[".repeat(101), "]".repeat(101));
    assert_problem(
        &send(top.into_bytes(), "application/json").await,
        400,
        "json_too_deep",
    );
    // 100 levels are still an activity's business (here: not an activity)
    let top = format!("{}{}", "[".repeat(100), "]".repeat(100));
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
    // The answer says what the refresh did: `newest` refreshed the keys just
    // before, so the rate limit held this time.
    let detail = got.1["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("no key refresh was tried") && detail.contains("rate limit"),
        "{detail}"
    );
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

/// Issue 7 item 5: without a valid token, every bot path and every body gets
/// the same 401, word for word, with `WWW-Authenticate: Bearer`: a 404 for
/// unknown bots would list the hosted ones, a body problem would describe what
/// an anonymous caller sent.
#[actix_web::test]
async fn unauthenticated_callers_get_the_same_401_on_every_path_and_body() {
    let e = env("anonymous").await;
    let base = e.bf.url().to_owned();
    let paths = [
        format!("{base}/api/messages"),
        format!("{base}/api/messages/e2e"),
        format!("{base}/api/messages/strict"),
        format!("{base}/api/messages/nobody"),
    ];
    let valid = message(&e.sim.url, "a:conv-anon", "1", "hi").to_string();
    let bodies: Vec<String> = vec![
        valid,
        "{\"type\": \"message\",".to_owned(),
        "{\"type\": \"message\"}".to_owned(),
        format!("{}{}", "[".repeat(500), "]".repeat(500)),
        "[]".to_owned(),
    ];
    let forged = e.token(json!({"key": "foreign"})).await;
    let expired = e.token(json!({"expiredBySecs": 3600})).await;
    let evil_iss = e.token(json!({"issuer": "https://evil.example.com"})).await;
    let tokens: Vec<(&str, Option<String>, &str)> = vec![
        ("none", None, "missing_token"),
        (
            "basic",
            Some("Basic dXNlcjpwYXNz".to_owned()),
            "missing_token",
        ),
        (
            "garbage",
            Some("Bearer not.a.jwt".to_owned()),
            "malformed_token",
        ),
        ("forged", Some(format!("Bearer {forged}")), "signature"),
        ("expired", Some(format!("Bearer {expired}")), "expired"),
        ("issuer", Some(format!("Bearer {evil_iss}")), "issuer"),
    ];
    let client = http();
    for (name, auth, check) in &tokens {
        let mut first: Option<(u16, String, Value)> = None;
        for path in &paths {
            for body in &bodies {
                let mut req = client
                    .post(path)
                    .header("content-type", "application/json")
                    .body(body.clone());
                if let Some(a) = auth {
                    req = req.header("authorization", a);
                }
                let resp = req.send().await.expect("post");
                let status = resp.status().as_u16();
                let challenge = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let v: Value = resp.json().await.unwrap_or(Value::Null);
                assert_eq!(status, 401, "{name} at {path}: {v}");
                assert_eq!(v["check"], *check, "{name} at {path}: {v}");
                assert!(challenge.starts_with("Bearer"), "{name}: `{challenge}`");
                let got = (status, challenge, v);
                match &first {
                    None => first = Some(got),
                    Some(f) => assert_eq!(
                        &got, f,
                        "{name}: {path} with body {:.40} answered differently",
                        body
                    ),
                }
            }
        }
    }
    // A valid token for another bot at a path naming no bot: 401 audience, as at
    // a registered bot's path, with the same words for the same path name.
    let token = e.token(json!({})).await;
    let msg = message(&e.sim.url, "a:conv-anon", "2", "hi");
    let known = post_activity(&format!("{base}/api/messages/strict"), Some(&token), &msg).await;
    let unknown = post_activity(&format!("{base}/api/messages/nobody"), Some(&token), &msg).await;
    assert_problem(&known, 401, "audience");
    assert_problem(&unknown, 401, "audience");
    assert_eq!(
        known.1["detail"].as_str().map(|d| d.replace("strict", "X")),
        unknown.1["detail"]
            .as_str()
            .map(|d| d.replace("nobody", "X")),
    );
    assert!(e.stored("a:conv-anon").await.is_none());
}

/// Only POST on the messaging paths (405 with `Allow: POST`); unknown paths are
/// a `not_found` problem. Every answer is problem+json from the table.
#[actix_web::test]
async fn other_methods_get_405_and_unknown_paths_404() {
    let e = env("methods").await;
    let base = e.bf.url().to_owned();
    let client = http();
    for (method, path) in [
        (reqwest::Method::GET, "/api/messages"),
        (reqwest::Method::PUT, "/api/messages"),
        (reqwest::Method::DELETE, "/api/messages/e2e"),
        (reqwest::Method::PATCH, "/api/messages/nobody"),
        (reqwest::Method::OPTIONS, "/api/messages"),
    ] {
        let resp = client
            .request(method.clone(), format!("{base}{path}"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status().as_u16(), 405, "{method} {path}");
        assert_eq!(
            resp.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some("POST"),
            "{method} {path}"
        );
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        let v: Value = resp.json().await.expect("problem json");
        assert_eq!(v["check"], "method_not_allowed");
    }
    let resp = client
        .post(format!("{base}/api/nothing"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 404);
    let v: Value = resp.json().await.expect("problem json");
    assert_eq!(v["check"], "not_found");
}

/// Case `key-without-endorsements` (crates/server/tests/cases): the sim's JWKS
/// publishes its active key with no `endorsements` list and `botfleet-sim send`
/// posts the case's activity signed by it. Closed by default (403 endorsement,
/// a warning, a metric); accepted when the cloud is named in
/// `auth.accept_keys_without_endorsements`, while a key WITH a list that lacks
/// msteams is still refused.
#[actix_web::test]
async fn case_key_without_endorsements_follows_the_cloud_setting() {
    const CASE_APP: &str = "00000000-0000-4000-8000-0000000ec002";
    let sim = start_sim();
    post_json(
        format!("{}/_sim/keys/rotate", sim.url),
        json!({"withoutEndorsements": true}),
    )
    .await;
    let case = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cases/key-without-endorsements/message.json");
    for accept in [false, true] {
        let setting = if accept {
            "accept_keys_without_endorsements = [\"sim\"]"
        } else {
            ""
        };
        let bf = start_botfleet(&format!(
            "[auth]\n{setting}\n{cloud}\n[[bots]]\nid = \"endorse\"\napp_id = \"{CASE_APP}\"\ncloud = \"sim\"\n",
            cloud = sim_cloud(&sim.url)
        ));
        let to = format!("{}/api/messages", bf.url());
        let (status, body) = sim_send(&sim.url, &to, CASE_APP, &case);
        if accept {
            assert_eq!(status, 200, "accepted when the cloud opts in: {body}");
        } else {
            assert_eq!(status, 403, "{body}");
            assert_eq!(body["check"], "endorsement");
            assert!(
                body["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("accept_keys_without_endorsements")),
                "{body}"
            );
        }
        // Either way the operator is told: a warning and the metrics.
        let metrics = http()
            .get(format!("{}/metrics", bf.admin_url()))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        let sample = |name: &str| {
            metrics
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(-1.0)
        };
        assert_eq!(
            sample("botfleet_signing_keys_without_endorsements{"),
            1.0,
            "{metrics}"
        );
        assert!(
            sample("botfleet_signing_key_fetches_with_keys_without_endorsements_total{") >= 1.0,
            "{metrics}"
        );
        let log = bf.proc.log_text();
        assert!(
            log.contains("keys without an endorsements list"),
            "no warning in the log:\n{log}"
        );
        // A key that HAS a list is held to it, whatever the setting.
        let unendorsed = mint(
            &sim.url,
            json!({"appId": CASE_APP, "serviceUrl": service_url(&sim.url), "key": "unendorsed"}),
        )
        .await;
        let mut msg = message(&sim.url, "a:conv-listed", "1", "hi");
        msg["recipient"]["id"] = json!(format!("28:{CASE_APP}"));
        assert_problem(
            &post_activity(&to, Some(&unendorsed), &msg).await,
            403,
            "endorsement",
        );
    }
}

/// `botfleet-sim send --activity-file` as Teams would post: (status, body).
fn sim_send(sim: &str, to: &str, app_id: &str, file: &std::path::Path) -> (u16, Value) {
    let out = std::process::Command::new(workspace_bin("botfleet-sim"))
        .args(["send", "--to", to, "--sim", sim, "--app-id", app_id])
        .arg("--activity-file")
        .arg(file)
        .output()
        .expect("run botfleet-sim send");
    let line: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "botfleet-sim send printed no JSON line: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let status = line["status"].as_u64().and_then(|s| u16::try_from(s).ok());
    (status.expect("status"), line["body"].clone())
}

/// Issue 7 item 7: a refusal is one info line naming the check, bot, tenant and
/// the token's aud/iss; a flood of 1,000 is not 1,000 lines (one per check per
/// 10 s, the next line counting the suppressed ones), and no token is logged.
#[actix_web::test]
async fn a_refusal_flood_logs_one_line_per_check_and_never_the_token() {
    let e = env("refusal-log").await;
    let url = e.endpoint();
    let forged = e.token(json!({"key": "foreign"})).await;
    let msg = message(&e.sim.url, "a:conv-flood", "1", "hi");
    // A tenant id with a line break cannot forge a log line.
    let mut injected = msg.clone();
    injected["conversation"]["tenantId"] = json!("t1\nFORGED refusal line");
    injected["channelData"]["tenant"]["id"] = json!("t1\nFORGED refusal line");
    assert_eq!(post_activity(&url, None, &injected).await.0, 401);
    let started = std::time::Instant::now();
    for _ in 0..1000 {
        assert_eq!(post_activity(&url, Some(&forged), &msg).await.0, 401);
    }
    let elapsed = started.elapsed();
    let log = strip_ansi(&e.bf.proc.log_text());
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("activity refused") && l.contains("check=signature"))
        .collect();
    // One line per started 10 s window of the flood.
    let allowed = 1 + usize::try_from(elapsed.as_secs() / 10).unwrap_or(usize::MAX);
    assert!(
        !lines.is_empty() && lines.len() <= allowed,
        "{} lines for 1000 refusals in {elapsed:?}:\n{}",
        lines.len(),
        lines.join("\n")
    );
    let first = lines[0];
    assert!(first.contains(" INFO "), "{first}");
    for want in [
        "bot=e2e",
        &format!("tenant={TENANT}"),
        &format!("aud={APP_ID}"),
        "iss=https://api.botframework.com",
    ] {
        assert!(first.contains(want), "`{want}` missing: {first}");
    }
    // Every refusal is still counted.
    let metrics = http()
        .get(format!("{}/metrics", e.bf.admin_url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("botfleet_activities_rejected_total{check=\"signature\"} 1000"),
        "{metrics}"
    );
    let missing: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("activity refused") && l.contains("check=missing_token"))
        .collect();
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(
        missing[0].contains("tenant=t1FORGED refusal line"),
        "{}",
        missing[0]
    );
    assert!(!log.lines().any(|l| l.starts_with("FORGED")));
    // No token, nor any part of one, in the log.
    assert!(!log.contains(&forged));
    for part in forged.split('.') {
        assert!(!log.contains(part), "a token part is in the log");
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The setting names clouds: an unknown name is a configuration error naming
/// the key, from `check-config` as from `serve`.
#[test]
fn accept_keys_without_endorsements_names_known_clouds() {
    let mut config = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp config");
    std::io::Write::write_all(
        &mut config,
        b"[auth]\naccept_keys_without_endorsements = [\"public\", \"mars\"]\n",
    )
    .expect("write");
    let out = std::process::Command::new(workspace_bin("botfleet"))
        .args(["check-config", "--config"])
        .arg(config.path())
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("auth.accept_keys_without_endorsements[1]") && stderr.contains("mars"),
        "{stderr}"
    );
}
