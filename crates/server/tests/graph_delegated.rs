//! Delegated Graph access and app installation end to end: `botfleet serve`
//! as a process (one or two replicas on real Redis), `botfleet-sim` as Entra
//! (authorize + token endpoints with PKCE and rotating refresh tokens),
//! Graph (installedApps) and Teams. Needs BOTFLEET_TEST_REDIS_URL
//! (`scripts/redis-up`) and the binaries built.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use botfleet_store::redis_pool::testing;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const BOOT: &str = "graph-delegated-test-bootstrap-key-0123456789";
/// 32 bytes, base64: the token encryption key of these tests.
const TOKEN_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn config(sim: &str, prefix: &str, key_file: &std::path::Path, margin: &str) -> String {
    format!(
        r#"
[store]
backend = "redis"
redis_urls = ["{redis}"]
key_prefix = "{prefix}"

[admin]
bootstrap_key_env = "H25_BOOT"

[graph]
graph_url = "{sim}/graph/v1.0"
openid_metadata_url = "{sim}/common/.well-known/openid-configuration"
# Read subscriptions back every second: a Graph call each round.
check_interval = "1s"
# Compare Graph's list with the registry every second (with each identity's token).
reconcile_interval = "1s"

[graph_auth]
token_key_file = "{key}"
refresh_margin = "{margin}"

[[graph_auth.credentials]]
name = "integration"
bot = "bot"
tenant_id = "{TENANT}"
scopes = ["https://graph.microsoft.com/ChatMessage.Read"]

[[graph_auth.credentials]]
name = "other"
bot = "bot"
tenant_id = "{TENANT}"
scopes = ["https://graph.microsoft.com/Chat.Read"]
{cloud}
[[bots]]
id = "bot"
app_id = "{APP_ID}"
app_password = "{APP_SECRET}"
cloud = "sim"
handler = {{ kind = "record" }}
"#,
        redis = testing::single_url(),
        key = key_file.display(),
        cloud = sim_cloud(sim),
    )
}

fn key_file() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, format!("{TOKEN_KEY}\n").as_bytes()).unwrap();
    f
}

fn start(sim: &str, prefix: &str, key: &std::path::Path, margin: &str) -> Botfleet {
    start_botfleet_with(&config(sim, prefix, key, margin), &[("H25_BOOT", BOOT)])
}

async fn admin(method: reqwest::Method, url: String) -> (StatusCode, Value) {
    let r = http()
        .request(method, url)
        .bearer_auth(BOOT)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `botfleet graph sign-in NAME` against the admin listener: the URL it prints.
fn cli_sign_in(bf: &Botfleet, name: &str) -> String {
    let out = std::process::Command::new(workspace_bin("botfleet"))
        .args([
            "graph",
            "sign-in",
            name,
            "--url",
            bf.admin_url(),
            "--key",
            BOOT,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/admin/v1/graph/credentials/"), "{stderr}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Opens the sign-in URL as the user's browser would: the sim's authorize
/// answers 302 to the admin callback, which is followed.
async fn browser(url: &str) -> (StatusCode, String, String) {
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND, "authorize did not redirect");
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let cb = no_redirect.get(&location).send().await.unwrap();
    let status = cb.status();
    (status, location, cb.text().await.unwrap())
}

/// `redis-cli` on the test Redis: the raw stored value, as an attacker who
/// reads the store would see it.
fn redis_cli(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("redis-cli")
        .args(["-u", &testing::single_url(), "--raw"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = String::from_utf8(out.stdout)
        .unwrap()
        .trim_end_matches('\n')
        .to_owned();
    (!v.is_empty()).then_some(v)
}

async fn redis_hget(key: &str, field: &str) -> Option<String> {
    redis_cli(&["HGET", key, field])
}

async fn admin_post(url: String, body: Value) -> (StatusCode, Value) {
    let r = http()
        .post(url)
        .bearer_auth(BOOT)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls the subscription's admin view until `ok` holds for it.
async fn sub_state_until(
    bf: &Botfleet,
    id: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let url = format!("{}/admin/v1/graph/subscriptions/{id}", bf.admin_url());
    let started = std::time::Instant::now();
    loop {
        let (s, v) = admin(reqwest::Method::GET, url.clone()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if ok(&v["state"]) {
            return v["state"].clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Posts a message to a chat at the sim (Teams' side).
async fn post_message(sim: &str, chat: &str, text: &str) {
    let chat: String = url::form_urlencoded::byte_serialize(chat.as_bytes()).collect();
    post_json(
        format!("{sim}/_sim/graph/chats/{chat}/messages"),
        json!({"tenantId": TENANT, "text": text}),
    )
    .await;
}

async fn sim_refreshes(sim: &str) -> u64 {
    get_json(format!("{sim}/_sim/graph/signin")).await["refreshes"]
        .as_u64()
        .unwrap()
}

#[actix_web::test]
async fn sign_in_through_the_printed_url_refreshes_rotate_sealed_and_revocation_marks_subscriptions(
) {
    let sim = start_sim();
    let prefix = testing::unique_prefix("graph-delegated");
    let key = key_file();
    let bf = start(&sim.url, &prefix, key.path(), "5m");
    let creds = format!("{}/admin/v1/graph/credentials", bf.admin_url());

    let (s, v) = admin(reqwest::Method::GET, format!("{creds}/integration")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "never_signed_in");
    let (s, v) = admin(
        reqwest::Method::POST,
        format!("{creds}/integration/refresh"),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v.to_string().contains("botfleet graph sign-in integration"),
        "{v}"
    );

    // A subscription that names the credential, through the admin API; one
    // naming an unknown credential is refused, naming the field.
    let chat = "19:delegated@thread.v2";
    let subs = format!("{}/admin/v1/graph/subscriptions", bf.admin_url());
    let spec = json!({"id": "watched", "bot": "bot", "tenant_id": TENANT,
        "resource": format!("/chats/{chat}/messages"), "action": {"kind": "record"},
        "credential": {"kind": "delegated", "name": "integration"}});
    let mut unknown = spec.clone();
    unknown["id"] = json!("unknown");
    unknown["credential"]["name"] = json!("nobody");
    let (s, v) = admin_post(subs.clone(), unknown).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("credential.name"), "{v}");
    let (s, v) = admin_post(subs.clone(), spec).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["spec"]["credential"]["name"], "integration", "{v}");
    // Not signed in yet: the round fails, saying what to do.
    sub_state_until(&bf, "watched", "the sign-in error", |st| {
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("botfleet graph sign-in integration"))
    })
    .await;

    // Sign-in through the URL the CLI prints.
    let url = cli_sign_in(&bf, "integration");
    assert!(
        url.starts_with(&format!("{}/{TENANT}/oauth2/v2.0/authorize?", sim.url)),
        "{url}"
    );
    assert!(url.contains("code_challenge_method=S256") && url.contains("offline_access"));
    let (status, callback, text) = browser(&url).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("`integration` is signed in"), "{text}");
    let (_, v) = admin(reqwest::Method::GET, format!("{creds}/integration")).await;
    assert_eq!(v["status"], "ok", "{v}");
    let user = v["user"].as_str().unwrap().to_owned();
    let v1 = v["version"].as_u64().unwrap();

    // Signed in: the subscription is created at Graph with the user's token
    // and a plain notification's message is read with it too.
    let st = sub_state_until(&bf, "watched", "the Graph subscription", |st| {
        st["graph_subscription_id"].is_string()
    })
    .await;
    assert!(st["credential_status"].is_null(), "{st}");
    let graph_id = st["graph_subscription_id"].clone();
    post_message(&sim.url, chat, "first").await;
    let st = sub_state_until(&bf, "watched", "the first notification", |st| {
        st["last_seen_message"].is_string()
    })
    .await;
    let first_seen = st["last_seen_message"].clone();
    // Two hours pass at Graph: the access token botfleet still thinks good
    // (its clock) is expired there. The next read-back gets 401, the token is
    // dropped and refreshed without an operator, and messages flow on.
    let refreshes_before = sim_refreshes(&sim.url).await;
    post_json(
        format!("{}/_sim/graph/clock", sim.url),
        json!({"advanceSeconds": 7200}),
    )
    .await;
    let started = std::time::Instant::now();
    while sim_refreshes(&sim.url).await == refreshes_before {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the token Graph refused was not refreshed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(bf
        .proc
        .log_text()
        .contains("Graph refused the delegated access token"));
    post_message(&sim.url, chat, "second").await;
    let st = sub_state_until(&bf, "watched", "the second notification", |st| {
        st["last_seen_message"].is_string() && st["last_seen_message"] != first_seen
    })
    .await;
    // Reconciliation (every second, listing with the user's token) never
    // took it for missing: the same subscription throughout, one at Graph.
    assert_eq!(st["graph_subscription_id"], graph_id, "{st}");
    let live = get_json(format!("{}/_sim/graph/subscriptions", sim.url)).await;
    let ours: Vec<&Value> = live["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["resource"] == format!("/chats/{chat}/messages"))
        .collect();
    assert_eq!(ours.len(), 1, "{live}");
    let (_, v) = admin(reqwest::Method::GET, format!("{creds}/integration")).await;
    let v1 = v1.max(v["version"].as_u64().unwrap());

    // The same callback again: the state is single use.
    let again = http().get(&callback).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    let body = again.text().await.unwrap();
    assert!(body.contains("unknown, expired or already used"), "{body}");
    // A made-up state: the same clear 400.
    let forged = http()
        .get(format!("{creds}/integration/callback?code=x&state=forged"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
    // A state issued for another credential does not sign this one in.
    let other_url = cli_sign_in(&bf, "other");
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let loc = no_redirect.get(&other_url).send().await.unwrap().headers()["location"]
        .to_str()
        .unwrap()
        .replace("/credentials/other/", "/credentials/integration/");
    let crossed = http().get(&loc).send().await.unwrap();
    assert_eq!(crossed.status(), StatusCode::BAD_REQUEST);
    assert!(crossed
        .text()
        .await
        .unwrap()
        .contains("issued for credential `other`"));

    // Refreshes rotate the refresh token; the store holds only sealed values.
    let rkey = format!("{prefix}:bf1:graph:cred:{{integration}}");
    let mut seen = vec![redis_hget(&rkey, "rt").await.unwrap()];
    let before = sim_refreshes(&sim.url).await;
    for _ in 0..2 {
        let (s, v) = admin(
            reqwest::Method::POST,
            format!("{creds}/integration/refresh"),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["status"], "ok");
        seen.push(redis_hget(&rkey, "rt").await.unwrap());
    }
    assert_eq!(sim_refreshes(&sim.url).await, before + 2);
    let (_, v) = admin(reqwest::Method::GET, format!("{creds}/integration")).await;
    assert_eq!(v["version"].as_u64().unwrap(), v1 + 2, "{v}");
    assert!(v["refreshes"].as_u64().unwrap() >= 3, "{v}");
    for (i, raw) in seen.iter().enumerate() {
        assert!(raw.starts_with("v1."), "{raw}");
        assert!(!raw.contains("1.sim."), "a refresh token in clear: {raw}");
        assert!(!seen[..i].contains(raw), "the refresh token did not rotate");
    }
    let at = redis_hget(&rkey, "at").await.unwrap();
    assert!(at.starts_with("v1.") && !at.contains("eyJ"), "{at}");

    // Consent revoked: the status says so, the subscription is marked, the
    // log says what to do; Entra is not asked again with the dead token.
    post_json(
        format!("{}/_sim/graph/users/{user}/revoke", sim.url),
        json!({}),
    )
    .await;
    let (s, v) = admin(
        reqwest::Method::POST,
        format!("{creds}/integration/refresh"),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v.to_string().contains("consent_revoked"), "{v}");
    let (_, v) = admin(reqwest::Method::GET, format!("{creds}/integration")).await;
    assert_eq!(v["status"], "consent_revoked", "{v}");
    assert!(
        v["last_error"].as_str().unwrap().contains("AADSTS50173"),
        "{v}"
    );
    let st = sub_state_until(&bf, "watched", "the credential mark", |st| {
        st["credential_status"] == "consent_revoked"
    })
    .await;
    assert!(
        st["last_error"].as_str().unwrap().contains("integration"),
        "{st}"
    );
    let refreshes = sim_refreshes(&sim.url).await;
    let (s, _) = admin(
        reqwest::Method::POST,
        format!("{creds}/integration/refresh"),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(
        sim_refreshes(&sim.url).await,
        refreshes,
        "the revoked token was sent again"
    );
    let log = bf.proc.log_text();
    assert!(log.contains("needs a new sign-in"), "no clear log line");
    assert!(!log.contains("1.sim."), "a refresh token was logged");

    // A new sign-in brings it back and clears the subscription's mark.
    let (status, _, text) = browser(&cli_sign_in(&bf, "integration")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (_, v) = admin(reqwest::Method::GET, format!("{creds}/integration")).await;
    assert_eq!(v["status"], "ok", "{v}");
    sub_state_until(&bf, "watched", "the mark cleared", |st| {
        st["credential_status"].is_null()
    })
    .await;
}

#[actix_web::test]
async fn two_replicas_needing_a_token_at_once_refresh_once_and_share_the_newest() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("graph-delegated-2");
    let key = key_file();
    // Access tokens live 3600 s at the sim; with this margin one is "fresh"
    // for 10 s only, so both replicas need a refresh after that.
    let a = start(&sim.url, &prefix, key.path(), "3590s");
    let b = start(&sim.url, &prefix, key.path(), "3590s");
    let (status, _, text) = browser(&cli_sign_in(&a, "integration")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    tokio::time::sleep(Duration::from_secs(11)).await;
    let before = sim_refreshes(&sim.url).await;
    let check = |bf: &Botfleet| {
        admin(
            reqwest::Method::POST,
            format!(
                "{}/admin/v1/graph/credentials/integration/check",
                bf.admin_url()
            ),
        )
    };
    let ((sa, va), (sb, vb)) = futures::join!(check(&a), check(&b));
    assert_eq!((sa, sb), (StatusCode::OK, StatusCode::OK), "{va} {vb}");
    assert_eq!(sim_refreshes(&sim.url).await, before + 1, "{va} {vb}");
    assert_eq!(va["version"], vb["version"], "{va} {vb}");
    assert_eq!(va["refreshes"], 1);
}

#[actix_web::test]
async fn installing_the_app_for_users_who_never_talked_to_the_bot_then_notifying_them() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("graph-install");
    let key = key_file();
    let bf = start(&sim.url, &prefix, key.path(), "5m");
    // One conversation of the tenant tells botfleet where its Bot Connector is.
    register(&sim.url, &[("a:anchor", TENANT)]).await;
    let token = mint(
        &sim.url,
        json!({"appId": APP_ID, "serviceUrl": service_url(&sim.url)}),
    )
    .await;
    let mut anchor = message(&sim.url, "a:anchor", "in-0", "hi");
    anchor["conversation"]["tenantId"] = json!(TENANT);
    anchor["channelData"]["tenant"]["id"] = json!(TENANT);
    let (s, b) = post_activity(&format!("{}/api/messages", bf.url()), Some(&token), &anchor).await;
    assert!((200..300).contains(&s), "{s} {b}");

    let users = [
        "7c0a0000-0000-4000-8000-000000000001",
        "7c0a0000-0000-4000-8000-000000000002",
    ];
    let targets = json!({"users": users.iter().map(|u| json!({"id": u, "tenant": TENANT})).collect::<Vec<_>>()});
    let install = |body: Value| {
        let url = format!("{}/admin/v1/bots/bot/graph/installed-apps", bf.admin_url());
        async move {
            let r = http()
                .post(url)
                .bearer_auth(BOOT)
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, v) = install(json!({"tenantId": TENANT, "users": users})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for (i, u) in users.iter().enumerate() {
        let item = &v["items"][i];
        assert_eq!(item["userId"], *u, "{v}");
        assert_eq!(item["newlyInstalled"], true, "{v}");
        assert_eq!(
            item["chatId"],
            format!("19:{u}_{APP_ID}@unq.gbl.spaces"),
            "{v}"
        );
    }
    // Again: Graph answers 409, which is fine.
    let (s, v) = install(json!({"tenantId": TENANT, "users": [users[0]]})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["items"][0]["newlyInstalled"], false, "{v}");

    // The notification reaches both.
    let r = http()
        .post(format!(
            "{}/admin/v1/bots/bot/notifications",
            bf.admin_url()
        ))
        .bearer_auth(BOOT)
        .json(
            &json!({"targets": targets, "activity": {"type": "message", "text": "welcome aboard"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let job = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = std::time::Instant::now();
    let done = loop {
        let (_, v) = admin(
            reqwest::Method::GET,
            format!("{}/admin/v1/notifications/{job}", bf.admin_url()),
        )
        .await;
        if ["completed", "cancelled", "failed"].contains(&v["state"].as_str().unwrap_or("")) {
            break v;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["counts"]["delivered"], 2, "{done}");
    let sent = get_json(format!("{}/_sim/activities?operation=send", sim.url)).await;
    let n = sent["activities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["body"]["text"] == "welcome aboard")
        .count();
    assert_eq!(n, 2);
}

#[actix_web::test]
async fn installs_over_graphs_rate_wait_out_each_429_and_all_succeed() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("graph-install-429");
    let key = key_file();
    let bf = start(&sim.url, &prefix, key.path(), "5m");
    // The sim allows 2 installs per second: 6 at once get 429s with Retry-After.
    post_json(
        format!("{}/_sim/graph/config", sim.url),
        json!({"installsPerSec": 2}),
    )
    .await;
    let users: Vec<String> = (1..=6)
        .map(|i| format!("7c0b0000-0000-4000-8000-00000000000{i}"))
        .collect();
    let started = std::time::Instant::now();
    let r = http()
        .post(format!(
            "{}/admin/v1/bots/bot/graph/installed-apps",
            bf.admin_url()
        ))
        .bearer_auth(BOOT)
        .json(&json!({"tenantId": TENANT, "users": users}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    for (i, u) in users.iter().enumerate() {
        assert_eq!(v["items"][i]["userId"], *u, "{v}");
        assert_eq!(v["items"][i]["newlyInstalled"], true, "{v}");
        assert!(v["items"][i].get("error").is_none(), "{v}");
    }
    // 6 at 2/s cannot all pass in the first second: the 429s were waited out.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn credentials_without_a_token_key_are_refused_at_start_naming_the_setting() {
    let cfg = config(
        "http://127.0.0.1:9",
        "unused",
        std::path::Path::new("/unused"),
        "5m",
    )
    .replace("token_key_file = \"/unused\"\n", "");
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut f, cfg.as_bytes()).unwrap();
    let out = std::process::Command::new(workspace_bin("botfleet"))
        .args(["check-config", "--config"])
        .arg(f.path())
        .env("H25_BOOT", BOOT)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("graph_auth.token_key_file"), "{text}");
    assert!(text.contains("openssl rand -base64 32"), "{text}");
}

#[test]
fn a_configured_subscription_naming_an_unknown_or_foreign_credential_is_refused_naming_it() {
    let key = key_file();
    let check = |subscriptions: &str| {
        let cfg = config("http://127.0.0.1:9", "unused", key.path(), "5m")
            .replace("[graph_auth]", &format!("{subscriptions}\n[graph_auth]"));
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::io::Write::write_all(&mut f, cfg.as_bytes()).unwrap();
        let out = std::process::Command::new(workspace_bin("botfleet"))
            .args(["check-config", "--config"])
            .arg(f.path())
            .env("H25_BOOT", BOOT)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let sub = |name: &str, tenant: &str| {
        format!(
            "[[graph.subscriptions]]\nid = \"s\"\nbot = \"bot\"\ntenant_id = \"{tenant}\"\nresource = \"/chats/19:a@thread.v2/messages\"\naction = {{ kind = \"record\" }}\ncredential = {{ kind = \"delegated\", name = \"{name}\" }}\n"
        )
    };
    let (code, text) = check(&sub("integration", TENANT));
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = check(&sub("nobody", TENANT));
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("graph.subscriptions[0].credential.name") && text.contains("`nobody`"),
        "{text}"
    );
    let (code, text) = check(&sub("integration", "another-tenant"));
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("acts as bot `bot` in tenant"), "{text}");
}

/// Creates a notification job of `bot` to `targets`; waits until it is final.
async fn notify_and_wait(bf: &Botfleet, targets: Value, text: &str) -> (Value, Vec<Value>) {
    let (s, v) = admin_post(
        format!("{}/admin/v1/bots/bot/notifications", bf.admin_url()),
        json!({"targets": targets, "activity": {"type": "message", "text": text}}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let job = v["id"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let done = loop {
        let (_, v) = admin(
            reqwest::Method::GET,
            format!("{}/admin/v1/notifications/{job}", bf.admin_url()),
        )
        .await;
        if ["completed", "cancelled", "failed"].contains(&v["state"].as_str().unwrap_or("")) {
            break v;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_, t) = admin(
        reqwest::Method::GET,
        format!(
            "{}/admin/v1/notifications/{job}/targets?state=failed",
            bf.admin_url()
        ),
    )
    .await;
    let failed = t["items"].as_array().cloned().unwrap_or_default();
    (done, failed)
}

#[actix_web::test]
async fn a_users_job_with_install_app_installs_it_for_users_without_it_then_delivers() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("graph-install-app");
    let key = key_file();
    let bf = start(&sim.url, &prefix, key.path(), "5m");
    register(&sim.url, &[("a:anchor", TENANT)]).await;
    let token = mint(
        &sim.url,
        json!({"appId": APP_ID, "serviceUrl": service_url(&sim.url)}),
    )
    .await;
    let mut anchor = message(&sim.url, "a:anchor", "in-0", "hi");
    anchor["conversation"]["tenantId"] = json!(TENANT);
    anchor["channelData"]["tenant"]["id"] = json!(TENANT);
    let (s, b) = post_activity(&format!("{}/api/messages", bf.url()), Some(&token), &anchor).await;
    assert!((200..300).contains(&s), "{s} {b}");
    // The tenant has installations, so Teams refuses a chat with anyone else.
    post_json(
        format!("{}/_sim/installations", sim.url),
        json!({"appId": APP_ID, "tenantId": TENANT, "users": ["7c0a0000-0000-4000-8000-0000000000aa"]}),
    )
    .await;
    let users = [
        "7c0a0000-0000-4000-8000-000000000011",
        "7c0a0000-0000-4000-8000-000000000012",
    ];
    let list = |ids: &[&str]| -> Vec<Value> {
        ids.iter()
            .map(|u| json!({"id": u, "tenant": TENANT}))
            .collect()
    };

    // Without the option: refused as not installed.
    let (done, failed) = notify_and_wait(&bf, json!({"users": list(&users[..1])}), "plain").await;
    assert_eq!(
        done["counts"]["failed_by_reason"],
        json!({"app_not_installed": 1}),
        "{done}"
    );
    assert_eq!(failed.len(), 1, "{failed:?}");

    // With installApp: installed through Graph, the chat created, delivered.
    let (done, _) = notify_and_wait(
        &bf,
        json!({"users": list(&users), "installApp": true}),
        "installed and welcome",
    )
    .await;
    assert_eq!(done["counts"]["delivered"], 2, "{done}");
    let sent = get_json(format!("{}/_sim/activities?operation=send", sim.url)).await;
    let n = sent["activities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["body"]["text"] == "installed and welcome")
        .count();
    assert_eq!(n, 2);
    assert!(bf
        .proc
        .log_text()
        .contains("installed the app for a user through Graph"));

    // A failing install: failed, saying so.
    post_json(
        format!("{}/_sim/graph/faults", sim.url),
        json!({"errorNext": 1, "errorStatus": 500}),
    )
    .await;
    let (done, failed) = notify_and_wait(
        &bf,
        json!({"users": list(&["7c0a0000-0000-4000-8000-000000000013"]), "installApp": true}),
        "never",
    )
    .await;
    assert_eq!(
        done["counts"]["failed_by_reason"],
        json!({"app_not_installed": 1}),
        "{done}"
    );
    let message = failed[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("installing it through Graph failed"),
        "{message}"
    );

    // installApp on another kind of target: 400 naming it.
    let (s, v) = admin_post(
        format!("{}/admin/v1/bots/bot/notifications", bf.admin_url()),
        json!({"targets": {"all": true, "installApp": true}, "activity": {"type": "message", "text": "x"}}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("targets.installApp"), "{v}");
}
