//! The admin API wired into `botfleet serve`, end to end: `botfleet serve`
//! processes (two replicas sharing a real Redis), `botfleet-sim` as Teams and
//! the Bot Connector, real HTTP.
//!
//! - a bot created through the admin API of one replica accepts sim-signed
//!   activities on both within a second, without a restart; an update
//!   (record -> echo) applies on both, also in a conversation whose actor
//!   already ran with the old handler; after a delete both answer 401;
//!   The same on a Redis Cluster;
//! - a replica that missed the announcement (a change made without one)
//!   converges within `admin.registry_poll`;
//! - a registration one replica cannot build (its certificate file is missing
//!   there) is logged and skipped there, listed in `/readyz`, and retried;
//!   the replica stays ready and the other replicas serve the bot;
//! - the public listener serves only the messaging endpoint (404 problem for
//!   `/metrics`, `/readyz`, `/admin/v1/...`); the admin listener serves them;
//!   `server.admin_on_public` mounts them on the public one too, with a warning;
//! - the bootstrap key comes from a file or variable and is never shown.

mod common;

use std::time::{Duration, Instant};

use botfleet_store::redis_pool::testing;
use common::*;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{json, Value};

/// The bootstrap admin key of these tests (at least 32 characters).
const KEY: &str = "e2e-bootstrap-0123456789abcdef-0123456789";
/// How fast a change made on one replica must be served by every replica.
const APPLIED_WITHIN: Duration = Duration::from_secs(1);

/// One replica's configuration: Redis with `prefix`, the sim's cloud, the
/// bootstrap key from `$BF_ADMIN_KEY`, no `[[bots]]`.
fn replica_toml(sim: &str, prefix: &str, extra: &str) -> String {
    replica_toml_on(
        sim,
        &format!("redis_urls = [\"{}\"]", testing::single_url()),
        prefix,
        extra,
    )
}

/// [`replica_toml`] on the Redis that `redis` (keys of `[store]`) names.
fn replica_toml_on(sim: &str, redis: &str, prefix: &str, extra: &str) -> String {
    format!(
        r#"
[store]
backend = "redis"
{redis}
key_prefix = "{prefix}"

[admin]
bootstrap_key_env = "BF_ADMIN_KEY"
{extra}
{cloud}
"#,
        cloud = sim_cloud(sim)
    )
}

fn start_replica(sim: &str, prefix: &str, extra: &str) -> Botfleet {
    start_botfleet_with(&replica_toml(sim, prefix, extra), &[("BF_ADMIN_KEY", KEY)])
}

/// One admin API call with the bootstrap key: (status, ETag, JSON body).
async fn admin(
    method: reqwest::Method,
    url: String,
    body: Option<(&str, Value)>,
    if_match: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut req = http().request(method, url).bearer_auth(KEY);
    if let Some((content_type, body)) = body {
        req = req
            .header("content-type", content_type)
            .body(body.to_string());
    }
    if let Some(tag) = if_match {
        req = req.header("if-match", tag);
    }
    let resp = req.send().await.expect("admin request");
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        etag,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The registration of the e2e bot, on the sim's cloud.
fn registration(id: &str, handler: Value) -> Value {
    json!({
        "id": id,
        "app_id": APP_ID,
        "app_password": APP_SECRET,
        "cloud": "sim",
        "handler": handler,
    })
}

/// Posts sim-signed messages (a new id each time) to `replica` until one is
/// answered `want`, or `within` has passed; returns how long it took.
/// Statuses other than 200 and 401 fail at once.
async fn answered_within(
    sim: &str,
    replica: &Botfleet,
    conversation: &str,
    want: u16,
    within: Duration,
) -> Duration {
    let token = mint(
        sim,
        json!({"appId": APP_ID, "serviceUrl": service_url(sim)}),
    )
    .await;
    let url = format!("{}/api/messages", replica.url());
    let started = Instant::now();
    let mut n = 0u32;
    loop {
        n += 1;
        let activity = message(sim, conversation, &format!("{conversation}-{n}"), "hi");
        let (status, body) = post_activity(&url, Some(&token), &activity).await;
        if status == want {
            if want == 401 {
                assert_eq!(body["check"], "audience", "{body}");
            }
            return started.elapsed();
        }
        assert!(
            matches!(status, 200 | 401),
            "{} answered {status}: {body}",
            replica.url()
        );
        assert!(
            started.elapsed() < within,
            "{} still answers {status} after {within:?}: {body}\n---- log ----\n{}",
            replica.url(),
            replica.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Posts `text` in `conversation` to `replica` (200 expected) and reports
/// whether the bot's echo of it reached the sim's Bot Connector within
/// `within`.
async fn echoed(
    sim: &str,
    replica: &Botfleet,
    conversation: &str,
    text: &str,
    within: Duration,
) -> bool {
    let token = mint(
        sim,
        json!({"appId": APP_ID, "serviceUrl": service_url(sim)}),
    )
    .await;
    let activity = message(sim, conversation, text, text);
    let (status, body) = post_activity(
        &format!("{}/api/messages", replica.url()),
        Some(&token),
        &activity,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + within;
    loop {
        let got = get_json(format!("{sim}/_sim/activities?conversation={conversation}")).await;
        let seen = got["activities"].as_array().is_some_and(|list| {
            list.iter()
                .any(|r| r["appId"] == APP_ID && r["body"]["text"] == text)
        });
        if seen || Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn a_bot_created_on_one_replica_serves_on_both_within_a_second() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("admin-e2e");
    // The default registry_poll (5 s): what is measured here is the
    // announcement, not the poll.
    let a = start_replica(&sim.url, &prefix, "");
    let b = start_replica(&sim.url, &prefix, "");
    let conv = "a:admin-e2e-live";
    register(&sim.url, &[(conv, TENANT)]).await;

    // Not registered yet: the token names no bot on either replica.
    for replica in [&a, &b] {
        answered_within(&sim.url, replica, conv, 401, Duration::ZERO).await;
    }

    // Created on A ...
    let (status, etag, body) = admin(
        reqwest::Method::POST,
        format!("{}/admin/v1/bots", a.admin_url()),
        Some((
            "application/json",
            registration("live", json!({"kind": "record"})),
        )),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(etag.as_deref(), Some("\"1\""));
    // ... served by both, without a restart.
    for replica in [&a, &b] {
        let took = answered_within(&sim.url, replica, conv, 200, APPLIED_WITHIN).await;
        assert!(took < APPLIED_WITHIN, "{}: {took:?}", replica.url());
        eprintln!("created: {} serves it after {took:?}", replica.url());
    }
    // The record handler replies nothing.
    assert!(
        !echoed(
            &sim.url,
            &a,
            conv,
            "before-update",
            Duration::from_millis(300)
        )
        .await
    );

    // Updated (record -> echo) through B: both echo, in the conversation whose
    // actors already ran with the record handler.
    let (status, etag, body) = admin(
        reqwest::Method::PATCH,
        format!("{}/admin/v1/bots/live", b.admin_url()),
        Some((
            "application/merge-patch+json",
            json!({"handler": {"kind": "echo"}}),
        )),
        Some("\"1\""),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(etag.as_deref(), Some("\"2\""));
    let updated = Instant::now();
    for (i, replica) in [&a, &b].into_iter().enumerate() {
        let mut n = 0;
        loop {
            n += 1;
            let text = format!("after-update-{i}-{n}");
            if echoed(&sim.url, replica, conv, &text, Duration::from_millis(200)).await {
                break;
            }
            assert!(
                updated.elapsed() < APPLIED_WITHIN,
                "{} does not echo {APPLIED_WITHIN:?} after the update",
                replica.url()
            );
        }
        eprintln!(
            "updated: {} echoes after {:?}",
            replica.url(),
            updated.elapsed()
        );
    }

    // Deleted through A: both answer 401 for its tokens.
    let (status, _, body) = admin(
        reqwest::Method::DELETE,
        format!("{}/admin/v1/bots/live", a.admin_url()),
        None,
        Some("\"2\""),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    for replica in [&a, &b] {
        let took = answered_within(&sim.url, replica, conv, 401, APPLIED_WITHIN).await;
        assert!(took < APPLIED_WITHIN, "{}: {took:?}", replica.url());
        eprintln!("deleted: {} refuses it after {took:?}", replica.url());
    }

    // Each replica says what it applied; no credential in any log.
    for replica in [&a, &b] {
        let log = replica.proc.log_text();
        assert!(log.contains("bot from the admin API applied"), "{log}");
        assert!(log.contains("bot from the admin API removed"), "{log}");
        assert!(
            !log.contains(APP_SECRET) && !log.contains(KEY),
            "a secret in the log"
        );
        let ready = get_json(format!("{}/readyz", replica.admin_url())).await;
        assert_eq!(ready["ready"], true, "{ready}");
        assert_eq!(ready["registry"]["served"], 0, "{ready}");
        assert_eq!(ready["registry"]["revision"], 3, "{ready}");
    }
    assert_eq!(
        metric(a.admin_url(), "botfleet_registry_changes_applied_total").await,
        3.0
    );
}

#[actix_web::test]
async fn on_redis_cluster_a_bot_is_applied_and_removed_on_both_replicas() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("admin-e2e-cluster");
    let seeds: Vec<String> = testing::cluster_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let redis = format!("redis_urls = [{}]\nredis_cluster = true", seeds.join(", "));
    let toml = replica_toml_on(&sim.url, &redis, &prefix, "");
    let a = start_botfleet_with(&toml, &[("BF_ADMIN_KEY", KEY)]);
    let b = start_botfleet_with(&toml, &[("BF_ADMIN_KEY", KEY)]);
    let conv = "a:admin-e2e-cluster";
    register(&sim.url, &[(conv, TENANT)]).await;
    let (status, _, body) = admin(
        reqwest::Method::POST,
        format!("{}/admin/v1/bots", b.admin_url()),
        Some((
            "application/json",
            registration("clustered", json!({"kind": "record"})),
        )),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    for replica in [&a, &b] {
        let took = answered_within(&sim.url, replica, conv, 200, APPLIED_WITHIN).await;
        assert!(took < APPLIED_WITHIN, "{}: {took:?}", replica.url());
    }
    let (status, _, body) = admin(
        reqwest::Method::DELETE,
        format!("{}/admin/v1/bots/clustered", a.admin_url()),
        None,
        Some("*"),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    for replica in [&a, &b] {
        let took = answered_within(&sim.url, replica, conv, 401, APPLIED_WITHIN).await;
        assert!(took < APPLIED_WITHIN, "{}: {took:?}", replica.url());
    }
}

/// `redis-cli` against the test Redis.
fn redis_cli(args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-u", &testing::single_url()])
        .args(args)
        .output()
        .expect("redis-cli on PATH (scripts/test installs Redis)");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[actix_web::test]
async fn a_replica_that_missed_the_announcement_converges_by_polling() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("admin-e2e-poll");
    let poll = Duration::from_millis(300);
    let a = start_replica(&sim.url, &prefix, "registry_poll = \"300ms\"");
    let b = start_replica(&sim.url, &prefix, "registry_poll = \"300ms\"");
    let conv = "a:admin-e2e-poll";
    register(&sim.url, &[(conv, TENANT)]).await;
    let (status, _, body) = admin(
        reqwest::Method::POST,
        format!("{}/admin/v1/bots", a.admin_url()),
        Some((
            "application/json",
            registration("polled", json!({"kind": "record"})),
        )),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    for replica in [&a, &b] {
        answered_within(&sim.url, replica, conv, 200, APPLIED_WITHIN).await;
    }

    // The bot is removed from the registry without an announcement (as when
    // a replica's subscription was down): only the revision moves. Key layout:
    // crates/store/src/admin/redis_store.rs.
    let key = |k: &str| format!("{prefix}:bf1:admin:{{bots}}:{k}");
    assert_eq!(redis_cli(&["HDEL", &key("specs"), "polled"]), "1");
    assert_eq!(redis_cli(&["HDEL", &key("meta"), "polled"]), "1");
    assert_eq!(redis_cli(&["HDEL", &key("app_ids"), APP_ID]), "1");
    assert_eq!(redis_cli(&["INCR", &key("revision")]), "2");
    for replica in [&a, &b] {
        let took = answered_within(&sim.url, replica, conv, 401, poll * 4).await;
        eprintln!(
            "missed announcement: {} converged after {took:?}",
            replica.url()
        );
    }
}

#[actix_web::test]
async fn a_registration_one_replica_cannot_build_is_skipped_there_and_retried() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("admin-e2e-cert");
    let dir = tempfile::tempdir().expect("temp dir");
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("key");
    let pem = key.to_pkcs8_pem(LineEnding::LF).expect("pem");
    let key_file = dir.path().join("bot.key.pem");
    std::fs::write(&key_file, pem.as_bytes()).expect("write key");
    let public = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("public pem");
    post_json(
        format!("{}/_sim/bots", sim.url),
        json!({"appId": APP_ID, "certificatePem": public}),
    )
    .await;
    // Registrations may name credential files only inside admin.credential_dirs.
    let dirs = format!("credential_dirs = [\"{}\"]", dir.path().display());
    let a = start_replica(&sim.url, &prefix, &dirs);
    let conv = "a:admin-e2e-cert";
    register(&sim.url, &[(conv, TENANT)]).await;
    let (status, _, body) = admin(
        reqwest::Method::POST,
        format!("{}/admin/v1/bots", a.admin_url()),
        Some((
            "application/json",
            json!({
                "id": "cert",
                "app_id": APP_ID,
                "cloud": "sim",
                "credential": {"kind": "certificate", "private_key_file": key_file.to_str().expect("path")},
                "handler": {"kind": "echo"},
            }),
        )),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    answered_within(&sim.url, &a, conv, 200, APPLIED_WITHIN).await;

    // A replica where the key file is missing: it starts, is ready, says why
    // it does not serve the bot, and refuses the bot's tokens.
    std::fs::remove_file(&key_file).expect("remove key");
    let c = start_replica(
        &sim.url,
        &prefix,
        &format!("registry_poll = \"200ms\"\n{dirs}"),
    );
    let ready = get_json(format!("{}/readyz", c.admin_url())).await;
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["registry"]["failed"], json!(["cert"]), "{ready}");
    let warnings = ready["warnings"].to_string();
    assert!(
        warnings.contains("`cert`") && warnings.contains("bot.key.pem"),
        "{ready}"
    );
    answered_within(&sim.url, &c, conv, 401, Duration::ZERO).await;
    assert_eq!(
        metric(c.admin_url(), "botfleet_registry_bots_failed").await,
        1.0
    );
    let log = c.proc.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("cannot be built on this replica"))
        .unwrap_or_else(|| panic!("no error line:\n{log}"));
    assert!(
        line.contains("ERROR") && line.contains("cert") && line.contains("bot.key.pem"),
        "{line}"
    );
    // Logged once, not at every retry.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let errors = c
        .proc
        .log_text()
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("cannot be built on this replica"))
        .count();
    assert_eq!(errors, 1);
    // The other replica serves it all along.
    assert!(echoed(&sim.url, &a, conv, "served-by-a", Duration::from_secs(5)).await);

    // The file appears (a secret mounted late): the next poll builds the bot.
    std::fs::write(&key_file, pem.as_bytes()).expect("write key again");
    answered_within(&sim.url, &c, conv, 200, Duration::from_secs(2)).await;
    assert!(echoed(&sim.url, &c, conv, "served-by-c", Duration::from_secs(5)).await);
    let ready = get_json(format!("{}/readyz", c.admin_url())).await;
    assert_eq!(ready["registry"]["failed"], json!([]), "{ready}");
    assert!(ready.get("warnings").is_none(), "{ready}");
}

/// `GET url`: (status, content type, body).
async fn get(url: String) -> (u16, String, String) {
    let resp = http().get(url).send().await.expect("GET");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, resp.text().await.unwrap_or_default())
}

fn memory_toml(sim: &str, extra_server: &str) -> String {
    format!(
        "[server]\n{extra_server}\n[admin]\nbootstrap_key_env = \"BF_ADMIN_KEY\"\n{}",
        sim_cloud(sim)
    )
}

#[actix_web::test]
async fn the_public_listener_serves_only_the_messaging_endpoint() {
    let sim = start_sim();
    let bf = start_botfleet_with(&memory_toml(&sim.url, ""), &[("BF_ADMIN_KEY", KEY)]);
    assert_ne!(bf.url(), bf.admin_url());

    for path in [
        "/metrics",
        "/readyz",
        "/healthz",
        "/admin/v1/bots",
        "/admin/v1/openapi.json",
    ] {
        let (status, content_type, body) = get(format!("{}{path}", bf.url())).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(content_type, "application/problem+json", "{path}");
        let v: Value = serde_json::from_str(&body).expect("problem JSON");
        assert_eq!(v["check"], "not_found", "{path}: {v}");
    }
    let (status, _, _) = get(format!("{}/api/messages", bf.url())).await;
    assert_eq!(
        status, 405,
        "the messaging endpoint is on the public listener"
    );

    // The admin listener serves them, and not the messaging endpoint.
    let (status, content_type, body) = get(format!("{}/metrics", bf.admin_url())).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(body.contains("botfleet_activities_handled_total"), "{body}");
    assert!(body.contains("botfleet_bots{source=\"api\"} 0"), "{body}");
    assert_eq!(get(format!("{}/healthz", bf.admin_url())).await.0, 200);
    let ready = get_json(format!("{}/readyz", bf.admin_url())).await;
    assert_eq!(ready["ready"], true, "{ready}");
    let (status, _, _) = get(format!("{}/admin/v1/bots", bf.admin_url())).await;
    assert_eq!(status, 401, "the admin API wants a key");
    let (status, _, body) = admin(
        reqwest::Method::GET,
        format!("{}/admin/v1/bots", bf.admin_url()),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = get(format!("{}/api/messages", bf.admin_url())).await;
    assert_eq!(status, 404, "{body}");

    // The memory admin store: a bot created through the API is served at once.
    let conv = "a:admin-e2e-memory";
    register(&sim.url, &[(conv, TENANT)]).await;
    let (status, _, body) = admin(
        reqwest::Method::POST,
        format!("{}/admin/v1/bots", bf.admin_url()),
        Some((
            "application/json",
            registration("mem", json!({"kind": "echo"})),
        )),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    answered_within(&sim.url, &bf, conv, 200, APPLIED_WITHIN).await;
    assert!(echoed(&sim.url, &bf, conv, "from-memory", Duration::from_secs(5)).await);
    assert_eq!(
        metric(bf.admin_url(), "botfleet_bots{source=\"api\"}").await,
        1.0
    );
}

#[actix_web::test]
async fn admin_on_public_serves_the_admin_routes_on_the_public_listener_with_a_warning() {
    let sim = start_sim();
    let toml = memory_toml(&sim.url, "admin_on_public = true");
    let bf = start_botfleet_with(&toml, &[("BF_ADMIN_KEY", KEY)]);
    for base in [bf.url(), bf.admin_url()] {
        assert_eq!(get(format!("{base}/metrics")).await.0, 200, "{base}");
        assert_eq!(get(format!("{base}/readyz")).await.0, 200, "{base}");
        let (status, _, body) = admin(
            reqwest::Method::GET,
            format!("{base}/admin/v1/bots"),
            None,
            None,
        )
        .await;
        assert_eq!(status, 200, "{base}: {body}");
    }
    let log = bf.proc.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("admin_on_public") && l.contains(bf.url())),
        "no warning naming the public URL:\n{log}"
    );

    // check-config says so too.
    let mut file = tempfile::NamedTempFile::new().expect("config file");
    std::io::Write::write_all(&mut file, toml.as_bytes()).expect("write");
    let out = std::process::Command::new(workspace_bin("botfleet"))
        .args(["check-config", "--config"])
        .arg(file.path())
        .env("BF_ADMIN_KEY", KEY)
        .output()
        .expect("check-config");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("note: server.admin_on_public = true")),
        "{stdout}"
    );
}

#[actix_web::test]
async fn the_bootstrap_key_comes_from_a_file_or_variable_and_is_never_shown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("admin-key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("write key");
    let config = dir.path().join("botfleet.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nadmin_listen = \"127.0.0.1:0\"\n[admin]\nbootstrap_key_file = \"{}\"\naudit_retention = \"30d\"\n",
            key_file.display()
        ),
    )
    .expect("write config");
    let check = |config: &std::path::Path| {
        std::process::Command::new(workspace_bin("botfleet"))
            .args(["check-config", "--config"])
            .arg(config)
            .output()
            .expect("check-config")
    };
    let out = check(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(!stdout.contains(KEY), "the key was printed:\n{stdout}");
    assert!(stdout.contains("[admin]"), "{stdout}");
    assert!(
        stdout.contains("bootstrap_key = \"[redacted]\""),
        "{stdout}"
    );
    assert!(stdout.contains("audit_retention = \"30d\""), "{stdout}");
    assert!(stdout.contains("registry_poll = \"5s\""), "{stdout}");

    // The file's key opens the admin API of a running botfleet.
    let bf = start_botfleet(&std::fs::read_to_string(&config).expect("config"));
    let (status, _, body) = admin(
        reqwest::Method::GET,
        format!("{}/admin/v1/bots", bf.admin_url()),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(!bf.proc.log_text().contains(KEY), "the key was logged");

    // A short key is refused by check-config and serve alike, by key path.
    std::fs::write(&key_file, "short\n").expect("write key");
    let out = check(&config);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`admin.bootstrap_key`") && stderr.contains("at least 32"),
        "{stderr}"
    );
    assert!(!stderr.contains("short"), "the key was printed: {stderr}");
}

#[actix_web::test]
async fn without_any_admin_key_serve_warns_that_nobody_can_use_the_admin_api() {
    let bf = start_botfleet("");
    let log = bf.proc.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("no bootstrap key and no API key exists")),
        "{log}"
    );
}
