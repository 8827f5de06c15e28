//! End-to-end harness: `botfleet serve` and `botfleet-sim serve` as separate
//! processes on free loopback ports, real HTTP between them, real Redis.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

pub const APP_ID: &str = "00000000-0000-4000-8000-0000000000a1";
pub const APP_SECRET: &str = "e2e-secret-a1";
pub const OTHER_APP_ID: &str = "00000000-0000-4000-8000-0000000000b2";
pub const TENANT: &str = "11111111-1111-4111-8111-111111111111";
pub const OTHER_TENANT: &str = "22222222-2222-4222-8222-222222222222";

/// A child process killed when dropped, even when the test panics. Its stderr
/// goes to a file (`log`), shown when the test fails.
pub struct Proc {
    pub child: Child,
    pub url: String,
    /// `admin_url` of the ready line (botfleet's admin listener; empty for the sim).
    pub admin_url: String,
    pub name: &'static str,
    pub log: tempfile::NamedTempFile,
}

impl Proc {
    /// What the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log_text());
        }
    }
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_botfleet"))
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

/// Path of a workspace binary; the test script builds them all first.
pub fn workspace_bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build it first (scripts/test runs `cargo build --workspace --bins`)",
        p.display()
    );
    p
}

/// Starts a process that prints `{"ready":true,"url":...}` (botfleet adds
/// `"admin_url"`) on stdout when ready.
fn start_ready(name: &'static str, mut cmd: Command) -> Proc {
    let log = tempfile::NamedTempFile::new().expect("log file");
    let stderr = log.reopen().expect("log file handle");
    cmd.stdout(Stdio::piped()).stderr(Stdio::from(stderr));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v.get("ready") == Some(&Value::Bool(true)) {
                    let _ = tx.send((
                        v["url"].as_str().unwrap_or_default().to_owned(),
                        v["admin_url"].as_str().unwrap_or_default().to_owned(),
                    ));
                }
            }
        }
    });
    let (url, admin_url) = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(urls) => urls,
        Err(_) => {
            let _ = child.kill();
            panic!("{name} did not report ready within 30 s");
        }
    };
    Proc {
        child,
        url,
        admin_url,
        name,
        log,
    }
}

pub fn start_sim() -> Proc {
    let mut cmd = Command::new(workspace_bin("botfleet-sim"));
    cmd.args([
        "serve",
        "--port",
        "0",
        "--bot",
        &format!("{APP_ID}:{APP_SECRET}"),
        "--bot",
        &format!("{OTHER_APP_ID}:other-secret"),
    ]);
    start_ready("botfleet-sim", cmd)
}

/// The `[[clouds]]` entry that points botfleet at a sim.
pub fn sim_cloud(sim: &str) -> String {
    format!(
        r#"
[[clouds]]
name = "sim"
openid_metadata_url = "{sim}/v1/.well-known/openidconfiguration"
token_issuer = "https://api.botframework.com"
login_endpoint = "{sim}"
multi_tenant_authority = "botframework.com"
bot_scope = "https://api.botframework.com/.default"
service_url_hosts = []
"#
    )
}

pub struct Botfleet {
    pub proc: Proc,
    pub config: tempfile::NamedTempFile,
}

impl Botfleet {
    /// The public listener: `POST /api/messages[/{bot}]`.
    pub fn url(&self) -> &str {
        &self.proc.url
    }

    /// The admin listener: `/admin/v1/...`, `/metrics`, `/healthz`, `/readyz`.
    pub fn admin_url(&self) -> &str {
        &self.proc.admin_url
    }
}

/// Starts `botfleet serve` with the given TOML (both listeners are forced to
/// free ports).
pub fn start_botfleet(toml: &str) -> Botfleet {
    start_botfleet_with(toml, &[])
}

/// [`start_botfleet`] with extra environment variables (set after the
/// listeners', so they may override them).
pub fn start_botfleet_with(toml: &str, env: &[(&str, &str)]) -> Botfleet {
    let mut config = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp config");
    std::io::Write::write_all(&mut config, toml.as_bytes()).expect("write config");
    let mut cmd = Command::new(workspace_bin("botfleet"));
    cmd.args(["serve", "--config"])
        .arg(config.path())
        .env("BOTFLEET__SERVER__LISTEN", "127.0.0.1:0")
        .env("BOTFLEET__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied());
    let proc = start_ready("botfleet", cmd);
    Botfleet { proc, config }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Mints channel->bot tokens at the sim (`POST /_sim/tokens`).
pub async fn mint(sim: &str, body: Value) -> String {
    let resp = http()
        .post(format!("{sim}/_sim/tokens"))
        .json(&body)
        .send()
        .await
        .expect("mint request");
    assert!(resp.status().is_success(), "mint failed: {}", resp.status());
    let v: Value = resp.json().await.expect("mint json");
    v["tokens"][0].as_str().expect("a token").to_owned()
}

pub fn service_url(sim: &str) -> String {
    format!("{sim}/amer/")
}

/// A Teams personal-chat message for the e2e bot.
pub fn message(sim: &str, conversation: &str, id: &str, text: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "timestamp": "2026-11-23T10:33:42.3791234Z",
        "channelId": "msteams",
        "serviceUrl": service_url(sim),
        "from": {"id": "29:user-1", "name": "E2E User", "aadObjectId": "0f2ae4ec-1b54-4c33-8d2d-7a5f5b5b8c1e"},
        "conversation": {"conversationType": "personal", "tenantId": TENANT, "id": conversation},
        "recipient": {"id": format!("28:{APP_ID}"), "name": "E2E Bot"},
        "channelData": {"tenant": {"id": TENANT}},
        "text": text,
        "locale": "en-US"
    })
}

pub async fn post_activity(url: &str, token: Option<&str>, activity: &Value) -> (u16, Value) {
    let mut req = http().post(url).json(activity);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("post activity");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// GET a JSON document (the sim's inspection API).
pub async fn get_json(url: impl reqwest::IntoUrl) -> Value {
    http()
        .get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON answer")
}

/// POST JSON and insist on a 2xx answer (the sim's control API).
pub async fn post_json(url: impl reqwest::IntoUrl, body: Value) -> Value {
    let resp = http().post(url).json(&body).send().await.expect("POST");
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{status}: {v}");
    v
}

/// Registers conversations (id, tenant) with the sim's Bot Connector.
pub async fn register(sim: &str, conversations: &[(&str, &str)]) {
    let list: Vec<Value> = conversations
        .iter()
        .map(|(id, tenant)| json!({"id": id, "tenantId": tenant}))
        .collect();
    post_json(
        format!("{sim}/_sim/conversations"),
        json!({ "conversations": list }),
    )
    .await;
}

/// Replaces the sim's fault configuration.
pub async fn set_faults(sim: &str, faults: Value) {
    post_json(format!("{sim}/_sim/faults"), faults).await;
}

/// The value of one sample on botfleet's `/metrics` (`name` with its labels,
/// e.g. `botfleet_replies_total{outcome="unknown"}`); 0 when absent.
/// `admin` is the admin listener's URL ([`Botfleet::admin_url`]).
pub async fn metric(admin: &str, sample: &str) -> f64 {
    let text = http()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// `botfleet-sim send --activity-file FILE` as a separate process (Teams'
/// side: a freshly minted token, the file's body with its serviceUrl pointed
/// at the sim). Returns the status botfleet answered.
pub fn sim_send_file(sim: &str, to: &str, app_id: &str, file: &std::path::Path) -> u16 {
    let out = Command::new(workspace_bin("botfleet-sim"))
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
    line["status"].as_u64().expect("status") as u16
}
