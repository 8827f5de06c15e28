//! Redis unreachable when `botfleet serve` starts (a Redis pod scheduled after
//! botfleet's, a wrong Service, an outage during a rollout): the process must
//! start anyway, answer `/healthz` 200 (so Kubernetes' startup and liveness
//! probes do not restart it in a loop) and `/readyz` 503 naming Redis (so no
//! traffic is routed to it), check again with backoff while logging a
//! rate-limited line per check, and become ready by itself once Redis answers.
//!
//! Real path: `botfleet serve` as a process on the Redis store, botfleet-sim
//! as Teams and the Bot Connector, a redis-server of the test's own started
//! eight seconds late (with a password, which must never reach the log).
//! Needs redis-server on the PATH (scripts/test installs it) and the binaries
//! built.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const REDIS_PASSWORD: &str = "late-redis-password-4f1c";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Killed when dropped, even when the test panics.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn status_of(url: &str) -> Option<(u16, Value)> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    Some((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

#[actix_web::test]
async fn starts_unready_without_redis_and_becomes_ready_when_it_comes_up() {
    let sim = start_sim();
    let (redis_port, public_port, admin_port) = (free_port(), free_port(), free_port());
    let redis_url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_port}");
    let config = format!(
        r#"
[store]
backend = "redis"
key_prefix = "redis-late-{pid}"
{cloud}
[[bots]]
id = "echo"
app_id = "{APP_ID}"
app_password = "{APP_SECRET}"
cloud = "sim"
handler = {{ kind = "echo" }}
"#,
        pid = std::process::id(),
        cloud = sim_cloud(&sim.url)
    );
    let mut config_file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut config_file, config.as_bytes()).unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(workspace_bin("botfleet"))
        .args(["serve", "--config"])
        .arg(config_file.path())
        .env(
            "BOTFLEET__SERVER__LISTEN",
            format!("127.0.0.1:{public_port}"),
        )
        .env(
            "BOTFLEET__SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{admin_port}"),
        )
        // The password reaches botfleet the way the chart passes it.
        .env("BOTFLEET__STORE__REDIS_URLS", &redis_url)
        .env("RUST_LOG", "info")
        // One JSON object per line: the fields below are read, not grepped.
        .env("BOTFLEET__SERVER__LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log.reopen().unwrap()))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let botfleet = Killed(child);
    let log_text = || std::fs::read_to_string(log.path()).unwrap_or_default();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if serde_json::from_str::<Value>(&line).is_ok_and(|v| v["ready"] == true) {
                let _ = ready_tx.send(Instant::now());
            }
        }
    });
    let admin = format!("http://127.0.0.1:{admin_port}");
    let messages = format!("http://127.0.0.1:{public_port}/api/messages");

    // Up without Redis: alive, not ready, and saying why.
    let started = Instant::now();
    loop {
        if let Some((200, _)) = status_of(&format!("{admin}/healthz")).await {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "/healthz never answered 200 without Redis:\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = status_of(&format!("{admin}/readyz")).await.unwrap();
    assert_eq!(status, 503, "{body}");
    let problems = body["problems"].to_string();
    assert!(
        problems.contains("redis") && problems.contains("refused"),
        "/readyz does not name Redis: {body}"
    );

    // An activity arriving now (a probe is never this fast, but a pod may be
    // in the endpoints from before) is refused with a 5xx, so Teams resends it.
    let token = mint(
        &sim.url,
        json!({"appId": APP_ID, "serviceUrl": service_url(&sim.url)}),
    )
    .await;
    register(&sim.url, &[("a:late-redis", TENANT)]).await;
    let activity = message(&sim.url, "a:late-redis", "late-1", "after the outage");
    let (status, problem) = post_activity(&messages, Some(&token), &activity).await;
    assert_eq!(status, 503, "without Redis: {problem}");

    // Redis comes up eight seconds after botfleet.
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(started.elapsed())).await;
    assert!(
        ready_rx.try_recv().is_err(),
        "botfleet announced ready without Redis"
    );
    let dir = tempfile::tempdir().unwrap();
    let redis = Killed(
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
            .args([
                "--requirepass",
                REDIS_PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server (install Redis, see scripts/test): {e}")),
    );
    let redis_up = Instant::now();

    // Ready by itself: the ready line within the backoff's largest pause (5 s)
    // plus slack, and /readyz 200.
    let ready_at = ready_rx
        .recv_timeout(Duration::from_secs(12))
        .unwrap_or_else(|_| panic!("not ready 12 s after Redis came up:\n{}", log_text()));
    let after = ready_at.saturating_duration_since(redis_up);
    let (status, body) = status_of(&format!("{admin}/readyz")).await.unwrap();
    assert_eq!(status, 200, "{body}");

    // Teams' resend of the refused activity is handled now, once.
    let (status, problem) = post_activity(&messages, Some(&token), &activity).await;
    assert_eq!(status, 200, "after Redis came up: {problem}");
    let activities = get_json(format!("{}/_sim/activities", sim.url)).await;
    let echoes = activities["activities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["body"]["text"] == "after the outage")
        .count();
    assert_eq!(echoes, 1, "{activities}");

    // The log: one start-up line naming the Redis host (never the password),
    // then one line per check, rate-limited, each with its attempt.
    let text = log_text();
    assert!(
        !text.contains(REDIS_PASSWORD),
        "the Redis password reached the log"
    );
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let message = |v: &Value, m: &str| v["message"].as_str().is_some_and(|s| s.contains(m));
    assert!(
        lines
            .iter()
            .any(|v| message(v, "Redis is not reachable at start-up")
                && v["redis"] == format!("127.0.0.1:{redis_port}")),
        "no start-up line naming Redis:\n{text}"
    );
    let waiting: Vec<&Value> = lines
        .iter()
        .filter(|v| message(v, "not ready yet"))
        .collect();
    let attempts: Vec<u64> = waiting
        .iter()
        .filter_map(|v| v["attempt"].as_u64())
        .collect();
    assert_eq!(
        attempts.len(),
        waiting.len(),
        "a line without its attempt: {waiting:#?}"
    );
    assert!(
        attempts.windows(2).all(|w| w[0] < w[1]),
        "attempts out of order: {attempts:?}"
    );
    // Over eight seconds the checks back off (0.5, 1, 2, 4 s apart: about five
    // of them); a fixed 500 ms poll would be sixteen.
    let last_attempt = attempts.last().copied().unwrap_or(0);
    assert!(
        (3..=7).contains(&last_attempt),
        "{last_attempt} checks in eight seconds: {waiting:#?}"
    );
    // Rate-limited: fewer lines than checks, but never silent for long.
    assert!(
        waiting.len() >= 3 && (waiting.len() as u64) < last_attempt,
        "{} lines for {last_attempt} checks: {waiting:#?}",
        waiting.len()
    );
    assert!(
        waiting
            .iter()
            .all(|v| v["problems"].to_string().contains("redis") && v["next_check_in"].is_string()),
        "{waiting:#?}"
    );
    eprintln!(
        "healthz 200 without Redis; {} checks, {} log lines in 8 s; ready {after:?} after Redis came up",
        last_attempt,
        waiting.len()
    );
    drop(botfleet);
    drop(redis);
}
