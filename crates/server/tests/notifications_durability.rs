//! Durability of notification jobs end to end: `botfleet serve` processes
//! sharing real Redis, `botfleet-sim` as Teams, references stored only because
//! signed activities reached botfleet first (`botfleet-sim load`).
//!
//! - a replica SIGKILLed halfway through a job: the survivor adopts the
//!   expansion, reclaims the dead one's work and finishes;
//! - Redis (its own redis-server, AOF on every write) SIGKILLed and restarted
//!   mid-job: the job completes after it returns.
//!
//! In both, with the bot's default `ambiguous_send = report`, no conversation
//! gets the notification twice, the sim saw no Teams rate limit broken, and
//! every conversation gets it once except those reported `delivery_unknown`:
//! each of those must be a marker taken over after its sender's lease (the
//! sender died or lost the store mid-send, its outcome never recorded), which
//! the survivor logs with its target (or a send whose answer was lost, the
//! connector's own ambiguous case, which says so). With `ambiguous_send = resend` a taken
//! over marker is sent again instead: every conversation gets it, and one
//! that got it twice must be one of those takeovers (the documented window,
//! docs/notifications.md).
//!
//! Size: `BOTFLEET_TEST_NOTIFY_TARGETS` conversations (default 20,000, the
//! issue's figure; about 50 s on a 2-core machine with a debug build) in
//! `BOTFLEET_TEST_NOTIFY_TENANTS` tenants (default 200). Figures (seconds,
//! deliveries/s, duplicates) are printed (`--nocapture`). Needs
//! BOTFLEET_TEST_REDIS_URL (`scripts/redis-up`), redis-server on the PATH and
//! the binaries built.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use botfleet_store::redis_pool::testing;
use common::*;
use serde_json::{json, Value};

const BOOT: &str = "notifications-durability-bootstrap-key-0123456789";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// A configuration with short leases so a dead replica's work comes back in
/// seconds (the lease must exceed the longest send: request_timeout +
/// max_retry). `reclaim_idle` is 2 s, far below the 60 s default and below
/// how long items wait in a replica's hand while their tenant is paused: the
/// harder case for "a live holder's items are not reclaimed" (the holder
/// touches them every third of it). The defaults themselves (lease 180 s)
/// would make each kill test wait three minutes for the takeovers.
fn config(sim: &str, redis_url: &str, prefix: &str, ambiguous: Ambiguous) -> String {
    format!(
        r#"
[store]
backend = "redis"
redis_urls = ["{redis_url}"]
key_prefix = "{prefix}"

[outbound]
request_timeout = "2s"
max_retry = "2s"

[notify]
lease = "8s"
reclaim_idle = "2s"
expansion_lease = "3s"

[admin]
bootstrap_key_env = "H12_NOTIFY_BOOT"
{cloud}
[[bots]]
id = "bot"
app_id = "{APP_ID}"
app_password = "{APP_SECRET}"
cloud = "sim"
handler = {{ kind = "record" }}
{policy}
"#,
        cloud = sim_cloud(sim),
        policy = match ambiguous {
            // Not written: the default is what most deployments run.
            Ambiguous::Report => "",
            Ambiguous::Resend => "ambiguous_send = \"resend\"",
        },
    )
}

/// The bot's `ambiguous_send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ambiguous {
    Report,
    Resend,
}

/// The notifier's default lease and reclaim_idle (180 s, 60 s) and expansion
/// lease (30 s), a short shutdown: what a rolling update meets.
fn default_timings_config(sim: &str, redis_url: &str, prefix: &str) -> String {
    config(sim, redis_url, prefix, Ambiguous::Report)
        .replace("lease = \"8s\"\n", "")
        .replace("reclaim_idle = \"2s\"\n", "")
        .replace("expansion_lease = \"3s\"\n", "")
        .replace(
            "[outbound]",
            "[server]\nshutdown_delay = \"1s\"\nshutdown_grace = \"20s\"\n\n[outbound]",
        )
}

fn start(sim: &str, redis_url: &str, prefix: &str, ambiguous: Ambiguous) -> Botfleet {
    start_botfleet_with(
        &config(sim, redis_url, prefix, ambiguous),
        &[("H12_NOTIFY_BOOT", BOOT), ("RUST_LOG", "info")],
    )
}

/// Stores `n` references in `tenants` tenants through botfleet's messaging
/// endpoint: one signed message per conversation from `botfleet-sim load`
/// (which registers the conversations with the sim's Bot Connector).
/// Returns the conversation ids (personal chats and, every fifth, a channel).
fn seed(sim: &str, bf: &Botfleet, n: usize, tenants: usize) -> Vec<String> {
    let started = Instant::now();
    let out = Command::new(workspace_bin("botfleet-sim"))
        .args(["load", "--to"])
        .arg(format!("{}/api/messages", bf.url()))
        .args([
            "--sim", sim, "--app-id", APP_ID, "--mix", "message", "--json",
        ])
        .args(["--connections", "32", "--timeout", "30s"])
        .args(["--count", &n.to_string()])
        .args(["--conversations", &n.to_string()])
        .args(["--tenants", &tenants.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("botfleet-sim load printed no JSON summary:\n{stdout}"));
    assert!(out.status.success(), "{stdout}");
    let ok = summary["statuses"]["200"].as_u64().unwrap_or(0)
        + summary["statuses"]["201"].as_u64().unwrap_or(0)
        + summary["statuses"]["202"].as_u64().unwrap_or(0);
    assert_eq!(ok as usize, n, "every seeding activity accepted: {summary}");
    eprintln!(
        "seeded {n} references in {tenants} tenants in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The ids `botfleet-sim load` uses (ConversationSpec::for_load).
    (0..n)
        .map(|i| {
            if i % 5 == 4 {
                format!("19:botfleetsimload{i:06}@thread.tacv2")
            } else {
                format!("a:1botfleet-sim-load-{i:06}")
            }
        })
        .collect()
}

async fn admin(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut req = http().request(method, url).bearer_auth(BOOT);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn create_job(bf: &Botfleet, text: &str) -> String {
    let (status, body) = admin(
        reqwest::Method::POST,
        format!("{}/admin/v1/bots/bot/notifications", bf.admin_url()),
        Some(json!({"targets": {"all": true}, "activity": {"type": "message", "text": text}})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// The job as `bf` reports it; `None` while the admin API cannot answer
/// (e.g. Redis is down).
async fn job(bf: &Botfleet, id: &str) -> Option<Value> {
    let resp = http()
        .get(format!("{}/admin/v1/notifications/{id}", bf.admin_url()))
        .bearer_auth(BOOT)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

fn is_final(job: &Value) -> bool {
    ["completed", "cancelled", "failed"].contains(&job["state"].as_str().unwrap_or(""))
}

async fn wait_final(bf: &Botfleet, id: &str, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        if let Some(j) = job(bf, id).await {
            if is_final(&j) {
                return j;
            }
            assert!(
                started.elapsed() < within,
                "job not final after {within:?}: {j}\n{}",
                bf.proc.log_text()
            );
        } else {
            assert!(started.elapsed() < within, "job unreadable for {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Accepted sends with `text`, per conversation, by the sim's record (it
/// keeps the last 100,000 calls).
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

/// The conversation ids of the job's failed targets, by reason (every page).
async fn failed_by_reason(bf: &Botfleet, job: &str) -> HashMap<String, Vec<(String, String)>> {
    let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut next: Option<String> = None;
    loop {
        let mut query = vec![("state", "failed".to_owned()), ("limit", "500".to_owned())];
        if let Some(n) = &next {
            query.push(("next", n.clone()));
        }
        let url = reqwest::Url::parse_with_params(
            &format!("{}/admin/v1/notifications/{job}/targets", bf.admin_url()),
            &query,
        )
        .unwrap();
        let (status, page) = admin(reqwest::Method::GET, url.to_string(), None).await;
        assert_eq!(status, 200, "{page}");
        for t in page["items"].as_array().unwrap() {
            let id = t["id"].as_str().unwrap();
            let conversation = id.strip_prefix("c:").unwrap_or(id).to_owned();
            let reason = t["error"]["code"].as_str().unwrap_or("").to_owned();
            let message = t["error"]["message"].as_str().unwrap_or("").to_owned();
            out.entry(reason).or_default().push((conversation, message));
        }
        match page["next"].as_str() {
            Some(n) => next = Some(n.to_owned()),
            None => return out,
        }
    }
}

/// What a run ended with, for the figures.
struct Checked {
    /// Conversations that got the text twice.
    twice: usize,
    /// Targets reported `delivery_unknown` (of them: lost answers rather than
    /// takeovers, and how many got it once).
    unknown: usize,
    timed_out: usize,
    unknown_received: usize,
}

/// Checks the final job and the sim's record against the conversations.
/// `report`: no conversation got the text twice; each got it once except the
/// targets failed `delivery_unknown`, each of which `taken_over` names.
/// `resend`: each got it, and each that got it twice is one `taken_over`
/// names (the documented window). Either way the Teams limits held.
async fn check_sends(
    bf: &Botfleet,
    sim: &str,
    job: &Value,
    text: &str,
    conversations: &[String],
    taken_over: &HashSet<String>,
    ambiguous: Ambiguous,
) -> Checked {
    let n = conversations.len() as u64;
    let id = job["id"].as_str().unwrap();
    let counts = &job["counts"];
    assert_eq!(counts["total"], n, "{job}");
    let failed = failed_by_reason(bf, id).await;
    let unknown_detail: HashMap<String, String> = failed
        .get("delivery_unknown")
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let unknown: HashSet<String> = unknown_detail.keys().cloned().collect();
    let others: Vec<(&String, usize)> = failed
        .iter()
        .filter(|(r, _)| *r != "delivery_unknown")
        .map(|(r, v)| (r, v.len()))
        .collect();
    assert!(
        others.is_empty(),
        "targets failed for another reason: {others:?}"
    );
    assert_eq!(
        counts["delivered"].as_u64().unwrap() + unknown.len() as u64,
        n,
        "{job}"
    );
    // A send whose answer was lost (the connector's request timeout on a
    // loaded machine) is reported the same way, by the same policy; it names
    // itself ("delivery unknown after N attempt(s)") and is counted apart.
    let timed_out = unknown_detail
        .values()
        .filter(|m| m.starts_with("delivery unknown after"))
        .count();
    let not_taken: Vec<(&String, &String)> = unknown_detail
        .iter()
        .filter(|(c, m)| !taken_over.contains(*c) && !m.starts_with("delivery unknown after"))
        .take(5)
        .collect();
    assert!(
        not_taken.is_empty(),
        "reported delivery_unknown without a takeover: {not_taken:?}"
    );
    if ambiguous == Ambiguous::Resend {
        assert!(unknown.is_empty(), "resend reported {unknown:?}");
    }

    let sent = sends_by_conversation(sim, text).await;
    let missing: Vec<&String> = conversations
        .iter()
        .filter(|c| !sent.contains_key(*c) && !unknown.contains(*c))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "never sent to: {missing:?}");
    let known: HashSet<&String> = conversations.iter().collect();
    assert!(
        sent.keys().all(|c| known.contains(c)),
        "sends to unknown conversations"
    );
    let twice: Vec<(&String, &usize)> = sent.iter().filter(|(_, n)| **n > 1).collect();
    match ambiguous {
        Ambiguous::Report => assert!(
            twice.is_empty(),
            "sent twice with ambiguous_send = report: {twice:?}"
        ),
        Ambiguous::Resend => {
            assert!(
                twice.iter().all(|(_, n)| **n == 2),
                "a conversation got it more than twice: {twice:?}"
            );
            let outside: Vec<&&String> = twice
                .iter()
                .map(|(c, _)| c)
                .filter(|c| !taken_over.contains(**c))
                .collect();
            assert!(
                outside.is_empty(),
                "sent twice outside the documented window (no marker taken over): {outside:?}"
            );
        }
    }
    assert_eq!(violations(sim).await, 0, "the Teams limits were broken");
    Checked {
        twice: twice.len(),
        unknown: unknown.len(),
        timed_out,
        unknown_received: unknown.iter().filter(|c| sent.contains_key(*c)).count(),
    }
}

/// The conversations whose marker `bf` took over after its sender's lease
/// ended (its log names each target: `marker=c:<conversation id>` in text
/// logs, `"marker":"c:<conversation id>"` in JSON ones).
fn takeovers(bf: &Botfleet) -> HashSet<String> {
    bf.proc
        .log_text()
        .lines()
        .filter(|l| l.contains("taking over a marker"))
        .filter_map(|l| {
            if let Some(at) = l.find("\"marker\":\"c:") {
                let rest = &l[at + "\"marker\":\"c:".len()..];
                return Some(rest.split('"').next()?.to_owned());
            }
            let rest = &l[l.find("marker=c:")? + "marker=c:".len()..];
            Some(rest.split_whitespace().next()?.to_owned())
        })
        .collect()
}

#[actix_web::test]
async fn a_replica_killed_halfway_the_survivor_reclaims_and_finishes() {
    replica_kill(Ambiguous::Report, 20_000).await;
}

/// The same with `ambiguous_send = resend` (smaller by default: it checks the
/// window, the default run measures the rate).
#[actix_web::test]
async fn a_replica_killed_halfway_with_resend_duplicates_only_takeovers() {
    replica_kill(Ambiguous::Resend, 5_000).await;
}

/// One tenant paused on both replicas again and again (the sim answers a
/// tenth of the sends 429 with `Retry-After: 3`, longer than `reclaim_idle`,
/// and 400 targets at 50/s wait up to 8 s in hand anyway): the items each
/// replica holds meanwhile are its own until it sends them. Nothing is
/// reclaimed (no replica died), nothing dead-lettered, every conversation
/// gets the notification once.
#[actix_web::test]
async fn a_paused_tenant_on_two_replicas_is_not_reclaimed_or_sent_twice() {
    let n = 400;
    let sim = start_sim();
    let prefix = testing::unique_prefix("notify-pause");
    let redis = testing::single_url();
    let a = start(&sim.url, &redis, &prefix, Ambiguous::Report);
    let b = start(&sim.url, &redis, &prefix, Ambiguous::Report);
    let conversations = seed(&sim.url, &a, n, 1);
    set_faults(
        &sim.url,
        json!({"latencyMs": 30, "throttleRatio": 0.1, "retryAfterSecs": 3}),
    )
    .await;
    let text = "paused-tenant notification";
    let id = create_job(&a, text).await;
    let done = wait_final(&b, &id, Duration::from_secs(120)).await;
    assert_eq!(done["state"], "completed", "{done}");
    let c = check_sends(
        &b,
        &sim.url,
        &done,
        text,
        &conversations,
        &HashSet::new(),
        Ambiguous::Report,
    )
    .await;
    assert_eq!(c.unknown, 0, "{done}");
    assert_eq!(done["counts"]["delivered"], n as u64, "{done}");
    let mut throttled = 0.0;
    for bf in [&a, &b] {
        let log = bf.proc.log_text();
        assert!(!log.contains("dead-lettered"), "{log}");
        assert_eq!(
            metric(bf.admin_url(), "botfleet_notification_reclaimed_total").await,
            0.0,
            "a live replica's items were taken over:\n{log}"
        );
        throttled += metric(
            bf.admin_url(),
            "botfleet_notification_deliveries_total{outcome=\"retried\",reason=\"throttled\"}",
        )
        .await;
    }
    // The tenant was paused for the sim's Retry-After (3 s > reclaim_idle).
    assert!(throttled >= 10.0, "only {throttled} throttled reschedules");
}

/// SIGTERM to one of two replicas mid-job, with the default lease (180 s) and
/// reclaim_idle (60 s): the leaving replica gives back what it holds, the
/// survivor takes it at once (it reclaims nothing: nothing waits for
/// reclaim_idle) and finishes within seconds; no conversation gets the
/// notification twice, none is left out, and the leaver exits 0.
#[actix_web::test]
async fn a_replica_stopped_with_sigterm_hands_its_work_back() {
    let n = env_usize("BOTFLEET_TEST_NOTIFY_SIGTERM_TARGETS", 3_000);
    let tenants = 30;
    let sim = start_sim();
    let prefix = testing::unique_prefix("notify-term");
    let redis = testing::single_url();
    let toml = default_timings_config(&sim.url, &redis, &prefix);
    let env = [("H12_NOTIFY_BOOT", BOOT), ("RUST_LOG", "info")];
    let mut a = start_botfleet_with(&toml, &env);
    let b = start_botfleet_with(&toml, &env);
    let conversations = seed(&sim.url, &a, n, tenants);
    set_faults(&sim.url, json!({"latencyMs": 30})).await;
    let text = "sigterm notification";
    // Created through A: A expands it (and holds its expansion claim).
    let id = create_job(&a, text).await;
    loop {
        let j = job(&b, &id).await.unwrap();
        assert!(!is_final(&j), "the job ended before the SIGTERM: {j}");
        if j["counts"]["delivered"].as_u64().unwrap() as usize >= n / 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &a.proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let termed = Instant::now();
    let exit = a.proc.child.wait().unwrap();
    let exited_after = termed.elapsed();
    assert!(exit.success(), "{exit:?}\n{}", a.proc.log_text());
    let log_a = a.proc.log_text();
    let drained = log_a
        .lines()
        .find(|l| l.contains("notifier: drained"))
        .unwrap_or_else(|| panic!("no drain logged:\n{log_a}"))
        .to_owned();
    let done = wait_final(&b, &id, Duration::from_secs(60)).await;
    let took_over = termed.elapsed();
    assert_eq!(done["state"], "completed", "{done}");
    // Far below reclaim_idle (60 s): handed back, not reclaimed.
    assert!(
        took_over < Duration::from_secs(45),
        "the survivor needed {took_over:?}"
    );
    assert_eq!(
        metric(b.admin_url(), "botfleet_notification_reclaimed_total").await,
        0.0,
        "the survivor had to reclaim: {drained}"
    );
    let c = check_sends(
        &b,
        &sim.url,
        &done,
        text,
        &conversations,
        &HashSet::new(),
        Ambiguous::Report,
    )
    .await;
    assert_eq!(c.twice, 0);
    eprintln!(
        "sigterm: {n} targets in {tenants} tenants; the leaver exited {:.1} s after SIGTERM ({drained}); the job completed {:.1} s after it; {} delivery_unknown (lost answers)",
        exited_after.as_secs_f64(),
        took_over.as_secs_f64(),
        c.unknown
    );
}

async fn replica_kill(ambiguous: Ambiguous, default_n: usize) {
    let n = env_usize("BOTFLEET_TEST_NOTIFY_TARGETS", default_n);
    let tenants = env_usize("BOTFLEET_TEST_NOTIFY_TENANTS", 200);
    let sim = start_sim();
    let prefix = testing::unique_prefix("notify-kill");
    let redis = testing::single_url();
    let mut a = start(&sim.url, &redis, &prefix, ambiguous);
    let b = start(&sim.url, &redis, &prefix, ambiguous);
    let conversations = seed(&sim.url, &a, n, tenants);

    // Teams takes tens to hundreds of milliseconds to accept a send; a sim
    // answering in one would make nearly every send in flight at the kill
    // one already accepted, which is not what a replica dying meets.
    set_faults(&sim.url, json!({"latencyMs": 30})).await;
    let text = "replica-kill notification";
    let started = Instant::now();
    // Created through A, so A expands it; both replicas deliver.
    let id = create_job(&a, text).await;
    let mut killed_at = None;
    let mut delivered_at_kill = 0;
    let mut expanded_at_kill = true;
    while killed_at.is_none() {
        let j = job(&b, &id).await.unwrap();
        assert!(!is_final(&j), "the job ended before the kill: {j}");
        let delivered = j["counts"]["delivered"].as_u64().unwrap();
        if delivered as usize >= n / 2 {
            // SIGKILL: no shutdown, no acknowledgement, markers left as they are.
            a.proc.child.kill().unwrap();
            a.proc.child.wait().unwrap();
            killed_at = Some(started.elapsed());
            delivered_at_kill = delivered;
            expanded_at_kill = j["targets_complete"].as_bool().unwrap();
            // The sweep (every second here) reports the running job's backlog.
            assert!(
                metric(b.admin_url(), "botfleet_notification_backlog").await > 0.0,
                "no backlog reported while the job runs"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = wait_final(&b, &id, Duration::from_secs(240)).await;
    let elapsed = started.elapsed();
    assert_eq!(done["state"], "completed", "{done}\n{}", b.proc.log_text());
    let log = b.proc.log_text();
    // A expanded at most 2,000 targets ahead of the deliveries, so with more
    // than 5,000 the expansion was still under way when it died.
    assert!(
        expanded_at_kill || log.contains("adopting a job nobody is expanding"),
        "the survivor did not adopt the expansion"
    );
    assert!(
        log.contains("took over work items another replica left unacknowledged"),
        "the survivor reclaimed nothing"
    );
    // The next sweeps see no active job and no backlog.
    let settled = Instant::now();
    while metric(b.admin_url(), "botfleet_notification_backlog").await > 0.0
        || metric(
            b.admin_url(),
            r#"botfleet_notification_jobs{state="running"}"#,
        )
        .await
            > 0.0
    {
        assert!(
            settled.elapsed() < Duration::from_secs(10),
            "the backlog gauge stays up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric(b.admin_url(), "botfleet_notification_reclaimed_total").await > 0.0);
    let taken_over = takeovers(&b);
    let c = check_sends(
        &b,
        &sim.url,
        &done,
        text,
        &conversations,
        &taken_over,
        ambiguous,
    )
    .await;
    let taken_over = taken_over.len();
    let killed_at = killed_at.unwrap_or_default();
    eprintln!(
        "replica kill ({ambiguous:?}): {n} targets in {tenants} tenants, {:.1} s ({:.0} deliveries/s); killed at {:.1} s with {delivered_at_kill} delivered (expansion complete: {expanded_at_kill}); survivor finished {:.1} s later; {taken_over} markers taken over, {} reported delivery_unknown ({} of them lost answers, not takeovers; {} had reached the sim), {} conversations sent twice",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        killed_at.as_secs_f64(),
        (elapsed - killed_at).as_secs_f64(),
        c.unknown,
        c.timed_out,
        c.unknown_received,
        c.twice,
    );
    drop(a);
}

/// A redis-server of this test's own, AOF fsynced on every write.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl OwnRedis {
    fn spawn(port: u16, dir: &std::path::Path) -> std::process::Child {
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server (install Redis, see scripts/test): {e}"));
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return child;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server on {port} did not start");
    }

    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let child = Self::spawn(port, dir.path());
        Self { port, dir, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL (only what AOF already has survives), then the same server again.
    fn kill_and_restart(&mut self, down_for: Duration) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::thread::sleep(down_for);
        self.child = Self::spawn(self.port, self.dir.path());
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[actix_web::test]
async fn redis_restarted_mid_job_the_job_completes_and_loses_nothing() {
    let n = env_usize("BOTFLEET_TEST_NOTIFY_RESTART_TARGETS", 1_500);
    let tenants = 30;
    let mut redis = OwnRedis::start();
    let sim = start_sim();
    let bf = start(&sim.url, &redis.url(), "restart", Ambiguous::Report);
    let conversations = seed(&sim.url, &bf, n, tenants);

    let text = "redis-restart notification";
    let started = Instant::now();
    let id = create_job(&bf, text).await;
    loop {
        let j = job(&bf, &id).await.unwrap();
        assert!(!is_final(&j), "the job ended before the restart: {j}");
        if j["counts"]["delivered"].as_u64().unwrap() as usize >= n / 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.kill_and_restart(Duration::from_secs(2));
    let done = wait_final(&bf, &id, Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    assert_eq!(done["state"], "completed", "{done}\n{}", bf.proc.log_text());
    let log = bf.proc.log_text();
    assert!(
        log.contains("cannot take work from the job store")
            || log.contains("cannot record an outcome"),
        "the notifier never noticed Redis was gone"
    );
    let taken_over = takeovers(&bf);
    let c = check_sends(
        &bf,
        &sim.url,
        &done,
        text,
        &conversations,
        &taken_over,
        Ambiguous::Report,
    )
    .await;
    let taken_over = taken_over.len();
    // The only replica never died: every marker whose begin answer was lost
    // with the connection is its own, resumed at once, never taken over
    // after the lease (what remains `delivery_unknown` are sends whose own
    // HTTP answer was lost, which name themselves; check_sends checks that).
    assert_eq!(
        taken_over, 0,
        "a live owner's marker waited out its lease and was taken over"
    );
    eprintln!(
        "redis restart: {n} targets in {tenants} tenants, {:.1} s; {taken_over} markers taken over, {} reported delivery_unknown, {} conversations sent twice",
        elapsed.as_secs_f64(),
        c.unknown,
        c.twice
    );
}
