//! Graceful shutdown end to end: `botfleet serve` as a process receives
//! SIGTERM while botfleet-sim's signed activities stream in to an echo bot.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// What one request got: an HTTP status, or no answer (connection refused or
/// closed) once the listener stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Status(u16),
    NoAnswer,
}

fn config(sim: &str) -> String {
    format!(
        r#"
[server]
shutdown_delay = "2s"
shutdown_grace = "10s"
{cloud}
[[bots]]
id = "echo"
app_id = "{APP_ID}"
app_password = "{APP_SECRET}"
cloud = "sim"
handler = {{ kind = "echo" }}
"#,
        cloud = sim_cloud(sim)
    )
}

fn sigterm(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed");
}

#[actix_web::test]
async fn sigterm_under_load_loses_nothing_and_sends_nothing_twice() {
    let sim = start_sim();
    let mut bf = start_botfleet(&config(&sim.url));
    let conversations: Vec<String> = (0..20).map(|c| format!("a:shutdown-{c}")).collect();
    let pairs: Vec<(&str, &str)> = conversations.iter().map(|c| (c.as_str(), TENANT)).collect();
    register(&sim.url, &pairs).await;
    let token = mint(
        &sim.url,
        json!({"appId": APP_ID, "serviceUrl": service_url(&sim.url)}),
    )
    .await;

    let url = format!("{}/api/messages", bf.url());
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<BTreeMap<String, (Outcome, Instant)>>> = Arc::default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let mut workers = Vec::new();
    for w in 0..16 {
        let (stop, outcomes, client, url, token, sim_url, convs) = (
            stop.clone(),
            outcomes.clone(),
            client.clone(),
            url.clone(),
            token.clone(),
            sim.url.clone(),
            conversations.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let text = format!("w{w}-m{i}");
                let activity = message(&sim_url, &convs[(w + i) % convs.len()], &text, &text);
                let outcome = match client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&activity)
                    .send()
                    .await
                {
                    Ok(resp) => Outcome::Status(resp.status().as_u16()),
                    Err(_) => Outcome::NoAnswer,
                };
                if let Ok(mut o) = outcomes.lock() {
                    o.insert(text, (outcome, Instant::now()));
                }
                if outcome == Outcome::NoAnswer {
                    // The listener is gone; the next attempt would be refused too.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                i += 1;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = bf.proc.child.id();
    let signalled = Instant::now();
    sigterm(pid);

    // Readiness goes false at once, while the listeners still answer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = http()
        .get(format!("{}/readyz", bf.admin_url()))
        .send()
        .await
        .expect("GET /readyz during the shutdown delay");
    assert_eq!(ready.status().as_u16(), 503);
    let body: Value = ready.json().await.expect("readyz JSON");
    assert_eq!(body["ready"], false, "{body}");

    // The process exits 0 within the grace period.
    let exit = loop {
        if let Some(status) = bf.proc.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "botfleet did not exit within server.shutdown_grace (10 s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = signalled.elapsed();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.expect("load worker");
    }
    assert!(
        exit.success(),
        "exit status {exit:?}: {}",
        bf.proc.log_text()
    );
    assert!(
        took >= Duration::from_secs(2),
        "exited after {took:?}, before server.shutdown_delay"
    );

    let outcomes = outcomes.lock().expect("outcomes").clone();
    let server_errors: Vec<_> = outcomes
        .iter()
        .filter(|(_, (o, _))| matches!(o, Outcome::Status(s) if *s >= 500))
        .collect();
    assert!(server_errors.is_empty(), "5xx answers: {server_errors:?}");
    let accepted: Vec<&String> = outcomes
        .iter()
        .filter(|(_, (o, _))| matches!(o, Outcome::Status(s) if (200..300).contains(s)))
        .map(|(t, _)| t)
        .collect();
    let accepted_while_draining = outcomes
        .values()
        .filter(|(o, at)| {
            matches!(o, Outcome::Status(s) if (200..300).contains(s))
                && *at > signalled + Duration::from_millis(500)
        })
        .count();
    assert!(
        accepted_while_draining > 0,
        "no activity accepted during server.shutdown_delay"
    );
    assert!(
        outcomes.values().any(|(o, _)| *o == Outcome::NoAnswer),
        "the listener never stopped accepting"
    );

    let activities = get_json(format!("{}/_sim/activities", sim.url)).await;
    let mut echoes: BTreeMap<String, usize> = BTreeMap::new();
    for r in activities["activities"].as_array().expect("activities") {
        let ok = r["status"]
            .as_u64()
            .is_some_and(|s| (200..300).contains(&s));
        if ok && r["appId"] == APP_ID {
            if let Some(text) = r["body"]["text"].as_str() {
                *echoes.entry(text.to_owned()).or_default() += 1;
            }
        }
    }
    let twice: Vec<_> = echoes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "replies sent twice: {twice:?}");
    let lost: Vec<_> = accepted
        .iter()
        .filter(|t| !echoes.contains_key(t.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} accepted activities got no echo: {lost:?}",
        lost.len(),
        accepted.len()
    );
    // Nothing was processed behind the caller's back: an activity whose request
    // got no answer (connection refused or closed as the listener stopped) must
    // not have been echoed either, or Teams would resend one that was handled.
    let unanswered_but_handled: Vec<_> = outcomes
        .iter()
        .filter(|(t, (o, _))| *o == Outcome::NoAnswer && echoes.contains_key(t.as_str()))
        .map(|(t, _)| t)
        .collect();
    assert!(
        unanswered_but_handled.is_empty(),
        "handled (echoed) but the request got no answer: {unanswered_but_handled:?}"
    );
    // Every echo at the sim belongs to an activity this test sent and saw
    // answered: nothing reached Teams that the caller was not told about.
    let unexplained: Vec<_> = echoes
        .keys()
        .filter(|t| {
            !outcomes
                .get(t.as_str())
                .is_some_and(|(o, _)| matches!(o, Outcome::Status(s) if (200..300).contains(s)))
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "echoes of activities not answered 2xx: {unexplained:?}"
    );
    eprintln!(
        "requests {}, accepted {} ({} after SIGTERM), exit after {took:?}",
        outcomes.len(),
        accepted.len(),
        accepted_while_draining
    );
}
