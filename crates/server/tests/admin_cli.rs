//! The admin CLI (`botfleet bots|tenants|conversations|keys|audit|tokens`)
//! end to end: the `botfleet` binary as a client of a `botfleet serve`
//! process's admin listener, `botfleet-sim` as Teams and the Bot Connector
//! (conversations and tokens come from sim-signed activities), real HTTP.
//! Every CLI run checks that no API key it was given appears in its output.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use common::{
    mint, post_activity, service_url, start_botfleet_with, start_sim, Botfleet, Proc, APP_ID,
    APP_SECRET, OTHER_APP_ID,
};
use serde_json::{json, Value};

const BOOTSTRAP: &str = "cli-test-bootstrap-key-0123456789abcdef-K7";
/// App ids of bots registered through the CLI (no activity is sent to them).
const APP_A: &str = "00000000-0000-4000-8000-00000000000a";
const APP_B: &str = "00000000-0000-4000-8000-00000000000b";
const TENANT_1: &str = common::TENANT;
const TENANT_2: &str = common::OTHER_TENANT;
const CLIENT_SECRET: &str = "client-secret-never-printed-Zq9";
const WEBHOOK_SECRET: &str = "webhook-secret-never-printed-0123456789";
/// The `other-secret` the sim holds for [`OTHER_APP_ID`] (see common::start_sim).
const OTHER_APP_SECRET: &str = "other-secret";

// ---------------------------------------------------------------- harness --

/// `botfleet serve` (memory store) with the sim as its cloud and two bots in
/// its configuration file: `from-config` (echo, [`APP_ID`]) and `conv`
/// (record, [`OTHER_APP_ID`]), both known to the sim.
struct Admin {
    /// The admin listener (what `--url` takes).
    url: String,
    bf: Botfleet,
    sim: Proc,
}

fn start() -> Admin {
    let sim = start_sim();
    let toml = format!(
        r#"
[admin]
bootstrap_key_env = "BF_CLI_ADMIN_KEY"
{cloud}
[[bots]]
id = "from-config"
app_id = "{APP_ID}"
app_password = "{APP_SECRET}"
cloud = "sim"
handler = {{ kind = "echo" }}

[[bots]]
id = "conv"
app_id = "{OTHER_APP_ID}"
app_password = "{OTHER_APP_SECRET}"
cloud = "sim"
handler = {{ kind = "record" }}
"#,
        cloud = common::sim_cloud(&sim.url)
    );
    let bf = start_botfleet_with(&toml, &[("BF_CLI_ADMIN_KEY", BOOTSTRAP)]);
    Admin {
        url: bf.admin_url().to_string(),
        bf,
        sim,
    }
}

/// A proxy in front of `target` that, right after forwarding the first
/// `GET .../bots/{bot}`, changes that bot itself: the CLI's fresh read is
/// stale by the time it writes, as when a colleague changes the bot between
/// the two calls.
fn start_meddling_proxy(target: &str, bot: &str) -> (String, actix_web::dev::ServerHandle) {
    struct Proxy {
        target: String,
        bot_path: String,
        meddled: std::sync::atomic::AtomicBool,
        http: reqwest::Client,
    }
    async fn forward(
        req: actix_web::HttpRequest,
        body: web::Bytes,
        p: web::Data<Proxy>,
    ) -> actix_web::HttpResponse {
        let url = format!("{}{}", p.target, req.uri());
        let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap();
        let mut out = p.http.request(method, &url).body(body.to_vec());
        for name in ["authorization", "if-match", "content-type", "x-request-id"] {
            if let Some(v) = req.headers().get(name) {
                out = out.header(name, v.to_str().unwrap());
            }
        }
        let answer = out.send().await.unwrap();
        let status = answer.status().as_u16();
        let headers: Vec<(String, String)> = answer
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let bytes = answer.bytes().await.unwrap();
        if req.method() == actix_web::http::Method::GET
            && req.path() == p.bot_path
            && !p.meddled.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let change = p
                .http
                .patch(format!("{}{}", p.target, p.bot_path))
                .bearer_auth(BOOTSTRAP)
                .header("if-match", "*")
                .header("content-type", "application/merge-patch+json")
                .body(r#"{"ambiguous_send": "resend"}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(change.status().as_u16(), 200);
        }
        let mut res =
            actix_web::HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
        for (k, v) in headers {
            if k != "content-length" && k != "transfer-encoding" {
                res.insert_header((k, v));
            }
        }
        res.body(bytes)
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let state = web::Data::new(Proxy {
        target: target.to_string(),
        bot_path: format!("/admin/v1/bots/{bot}"),
        meddled: std::sync::atomic::AtomicBool::new(false),
        http: reqwest::Client::new(),
    });
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(state.clone())
                    .default_service(web::to(forward))
            })
            .workers(1)
            .bind(("127.0.0.1", 0))
            .unwrap();
            let addr = server.addrs()[0];
            let server = server.run();
            tx.send((format!("http://{addr}"), server.handle()))
                .unwrap();
            server.await.unwrap();
        });
    });
    rx.recv_timeout(Duration::from_secs(30)).unwrap()
}

/// One run of the binary.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    #[track_caller]
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }

    #[track_caller]
    fn exit(self, code: i32) -> Self {
        assert_eq!(self.code, code, "{self:?}");
        self
    }

    /// stderr is one line (plus any notes before it) starting `botfleet: `.
    #[track_caller]
    fn error_line(&self) -> &str {
        let last = self.stderr.lines().last().unwrap_or("");
        assert!(last.starts_with("botfleet: "), "{self:?}");
        last
    }
}

/// Runs `botfleet args...` with only the `BOTFLEET_*` variables given, and
/// checks that no key it received (variable, flag or file) is in its output.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    run_full(args, env, None)
}

/// [`run_env`] with `stdin` written to the process's standard input.
fn run_full(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_botfleet"));
    cmd.args(args);
    for var in [
        "BOTFLEET_URL",
        "BOTFLEET_KEY",
        "BOTFLEET_KEY_FILE",
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    let mut keys: Vec<String> = vec![BOOTSTRAP.into()];
    for (k, v) in env {
        cmd.env(k, v);
        if *k == "BOTFLEET_KEY" {
            keys.push(v.to_string());
        }
    }
    for pair in args.windows(2) {
        match pair[0] {
            "--key" => keys.push(pair[1].to_string()),
            "--key-file" => keys.push(std::fs::read_to_string(pair[1]).unwrap().trim().into()),
            _ => {}
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let input = stdin.unwrap_or("").to_string();
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = pipe.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    for key in keys.iter().filter(|k| !k.is_empty()) {
        // The whole key, and its secret part (after the public id).
        // `bfk_<id>_<secret>`: the secret may itself contain `_`.
        let secret_part = match key.strip_prefix("bfk_") {
            Some(rest) => rest.split_once('_').map_or(key.as_str(), |(_, s)| s),
            None => key.as_str(),
        };
        for needle in [key.as_str(), secret_part] {
            assert!(
                !run.stdout.contains(needle) && !run.stderr.contains(needle),
                "a key reached the output of {args:?}: {run:?}"
            );
        }
    }
    run
}

impl Admin {
    /// `botfleet args... --url <this API>` with the bootstrap key in
    /// `BOTFLEET_KEY`.
    fn run(&self, args: &[&str]) -> Run {
        self.run_key(args, BOOTSTRAP)
    }

    fn run_key(&self, args: &[&str], key: &str) -> Run {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--url", &self.url]);
        run_env(&all, &[("BOTFLEET_KEY", key)])
    }

    /// `n` conversations of bot `conv` (`a:conv-0000`, ...), each opened by a
    /// sim-signed message: tenant 2 for every third, tenant 1 otherwise;
    /// every fifth then uninstalled (`installationUpdate` remove).
    fn seed_conversations(&self, n: usize) {
        let sim = self.sim.url.clone();
        let endpoint = format!("{}/api/messages", self.bf.url());
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let token = mint(
                    &sim,
                    json!({"appId": OTHER_APP_ID, "serviceUrl": service_url(&sim)}),
                )
                .await;
                for i in 0..n {
                    let tenant = if i % 3 == 0 { TENANT_2 } else { TENANT_1 };
                    let conversation = format!("a:conv-{i:04}");
                    let mut activity = common::message(&sim, &conversation, &format!("m{i}"), "hi");
                    activity["conversation"]["tenantId"] = json!(tenant);
                    activity["channelData"]["tenant"]["id"] = json!(tenant);
                    activity["recipient"]["id"] = json!(format!("28:{OTHER_APP_ID}"));
                    let (status, body) = post_activity(&endpoint, Some(&token), &activity).await;
                    assert_eq!(status, 200, "{body}");
                    if i % 5 == 0 {
                        activity["id"] = json!(format!("u{i}"));
                        activity["type"] = json!("installationUpdate");
                        activity["action"] = json!("remove");
                        activity.as_object_mut().map(|o| o.remove("text"));
                        let (status, body) =
                            post_activity(&endpoint, Some(&token), &activity).await;
                        assert_eq!(status, 200, "{body}");
                    }
                }
            });
    }

    /// A message to the echo bot `from-config`: its reply makes botfleet
    /// fetch a Bot Connector token from the sim.
    fn talk_to_echo_bot(&self) {
        let sim = self.sim.url.clone();
        let endpoint = format!("{}/api/messages", self.bf.url());
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let token = mint(
                    &sim,
                    json!({"appId": APP_ID, "serviceUrl": service_url(&sim)}),
                )
                .await;
                let activity = common::message(&sim, "a:echo-1", "e1", "hello");
                let (status, body) = post_activity(&endpoint, Some(&token), &activity).await;
                assert_eq!(status, 200, "{body}");
            });
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn assert_no_secret(run: &Run) {
    for secret in [CLIENT_SECRET, WEBHOOK_SECRET, APP_SECRET, OTHER_APP_SECRET] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "a registration secret was printed: {run:?}"
        );
    }
}

// ------------------------------------------------------------------ tests --

#[test]
fn bots_add_show_update_remove_round_trip() {
    let a = start();
    let dir = tempfile::tempdir().unwrap();
    // A `[[bots]]` entry as it would be in the configuration file.
    let file = write(
        dir.path(),
        "helpdesk.toml",
        &format!(
            r#"
[[bots]]
id = "helpdesk"
app_id = "{APP_A}"
cloud = "sim"
tenant_id = "{TENANT_1}"
credential = {{ kind = "secret", secret = "{CLIENT_SECRET}" }}
allowed_tenants = ["{TENANT_1}"]

[bots.handler]
kind = "webhook"
url = "https://logic.example/teams"
secret = "{WEBHOOK_SECRET}"
"#
        ),
    );
    let r = a.run(&["bots", "add", "--file", &file]).ok();
    assert_no_secret(&r);
    assert!(
        r.stderr.contains("bot helpdesk registered (version 1)"),
        "{r:?}"
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("app_id ") && l.ends_with(APP_A)),
        "{r:?}"
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("handler.url") && l.ends_with("https://logic.example/teams")),
        "{r:?}"
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("etag") && l.ends_with("\"1\"")),
        "{r:?}"
    );

    // The second bot from flags alone, its secret from a file.
    let secret_file = write(dir.path(), "secret.txt", &format!("{CLIENT_SECRET}\n"));
    let r = a
        .run(&[
            "bots",
            "add",
            "--id",
            "alerts",
            "--app-id",
            APP_B,
            "--cloud",
            "sim",
            "--secret-file",
            &secret_file,
            "--handler",
            "notify-only",
            "--text",
            "alerts only",
            "--json",
        ])
        .ok();
    assert_no_secret(&r);
    let bot = r.json();
    assert_eq!(bot["id"], "alerts");
    assert_eq!(bot["credential"], "secret");
    assert_eq!(
        bot["handler"],
        json!({"kind": "notify-only", "text": "alerts only"})
    );
    assert_eq!(bot["version"], 1);

    // JSON on standard input.
    let body = json!({"id": "piped", "app_id": "00000000-0000-4000-8000-0000000000dd", "cloud": "sim", "handler": {"kind": "record"}});
    let r = run_full(
        &["bots", "add", "--file", "-", "--json", "--url", &a.url],
        &[("BOTFLEET_KEY", BOOTSTRAP)],
        Some(&body.to_string()),
    )
    .ok();
    assert_eq!(r.json()["handler"], json!({"kind": "record"}));
    a.run(&["bots", "remove", "piped"]).ok();

    // The table: every bot, the configuration's marked as such.
    let r = a.run(&["bots", "list"]).ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{r:?}");
    assert!(
        lines[0].starts_with("ID ") && lines[0].contains("APP ID"),
        "{r:?}"
    );
    let row = |id: &str| -> Vec<&str> {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row {id}: {r:?}"))
            .split_whitespace()
            .collect()
    };
    assert_eq!(
        row("alerts"),
        [
            "alerts",
            APP_B,
            "multi_tenant",
            "notify-only",
            "secret",
            "sim",
            "api",
            "1"
        ]
    );
    assert_eq!(
        row("from-config"),
        [
            "from-config",
            APP_ID,
            "multi_tenant",
            "echo",
            "secret",
            "sim",
            "configuration",
            "-"
        ]
    );
    assert_eq!(row("helpdesk")[2], "single_tenant");
    // Columns are aligned: every row's second column starts where the header's does.
    let col = lines[0].find("APP ID").unwrap();
    for l in &lines[1..] {
        assert!(
            l[..col].ends_with("  ") && l[col..].starts_with("00000000-"),
            "{r:?}"
        );
    }

    // Update from flags: a merge patch; the credential stays.
    let r = a
        .run(&[
            "bots",
            "update",
            "helpdesk",
            "--allowed-tenant",
            TENANT_1,
            "--allowed-tenant",
            TENANT_2,
            "--json",
        ])
        .ok();
    let bot = r.json();
    assert_eq!(bot["version"], 2);
    assert_eq!(bot["allowed_tenants"], json!([TENANT_1, TENANT_2]));
    assert_eq!(bot["credential"], "secret");
    assert_eq!(bot["handler"]["kind"], "webhook");

    // Switching the handler kind drops the webhook's fields; --unset removes one.
    let r = a
        .run(&[
            "bots",
            "update",
            "helpdesk",
            "--handler",
            "echo",
            "--unset",
            "allowed_tenants",
        ])
        .ok();
    assert!(
        r.stderr.contains("bot helpdesk updated (version 3)"),
        "{r:?}"
    );
    let bot = a.run(&["bots", "show", "helpdesk", "--json"]).ok().json();
    assert_eq!(bot["handler"], json!({"kind": "echo"}));
    assert_eq!(bot["allowed_tenants"], json!([]));
    assert_eq!(bot["tenant_id"], TENANT_1);

    // A JSON file as a patch.
    let patch = write(dir.path(), "patch.json", r#"{"ambiguous_send": "resend"}"#);
    let bot = a
        .run(&["bots", "update", "helpdesk", "--file", &patch, "--json"])
        .ok()
        .json();
    assert_eq!(
        (bot["ambiguous_send"].as_str(), bot["version"].as_u64()),
        (Some("resend"), Some(4))
    );

    // --replace: the whole registration (the credential must be sent again).
    let whole = write(
        dir.path(),
        "whole.json",
        &json!({"id": "helpdesk", "app_id": APP_A, "cloud": "sim", "app_password": CLIENT_SECRET, "handler": {"kind": "record"}}).to_string(),
    );
    let bot = a
        .run(&[
            "bots",
            "update",
            "helpdesk",
            "--replace",
            "--file",
            &whole,
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(bot["handler"], json!({"kind": "record"}));
    assert!(
        bot["tenant_id"].is_null() && bot["ambiguous_send"] == "report",
        "{bot}"
    );

    // Remove, then it is gone: show exits 4.
    let r = a.run(&["bots", "remove", "helpdesk"]).ok();
    assert_eq!(r.stdout, "removed bot helpdesk\n");
    let r = a.run(&["bots", "show", "helpdesk"]).exit(4);
    assert!(
        r.error_line()
            .contains("Bot not found (HTTP 404): no bot `helpdesk`"),
        "{r:?}"
    );
    let r = a.run(&["bots", "remove", "helpdesk"]).exit(4);
    assert!(r.error_line().contains("bot_not_found"), "{r:?}");

    // The configuration's bots are read-only, said before anything is sent.
    let r = a
        .run(&["bots", "update", "from-config", "--cloud", "gcch"])
        .exit(1);
    assert!(
        r.error_line().contains("defined in the configuration file"),
        "{r:?}"
    );
}

#[test]
fn invalid_registrations_are_refused_with_the_field_named() {
    let a = start();
    let r = a
        .run(&["bots", "add", "--id", "bad", "--app-id", "not-a-guid"])
        .exit(1);
    let line = r.error_line();
    assert!(line.contains("Invalid field (HTTP 400)"), "{r:?}");
    assert!(line.contains("app_id"), "{r:?}");
    assert!(
        line.contains("[urn:botfleet:problem:invalid_field]"),
        "{r:?}"
    );
    // --json: the problem document on stdout as well.
    let r = a
        .run(&[
            "bots",
            "add",
            "--id",
            "bad",
            "--app-id",
            "not-a-guid",
            "--json",
        ])
        .exit(1);
    let p = r.json();
    assert_eq!(
        (p["check"].as_str(), p["status"].as_u64()),
        (Some("invalid_field"), Some(400))
    );
    assert_eq!(p["field"], "app_id");

    // Taken id: 409, exit 1.
    let r = a
        .run(&["bots", "add", "--id", "from-config", "--app-id", APP_A])
        .exit(1);
    assert!(r.error_line().contains("bot_conflict"), "{r:?}");

    // A file that cannot be read or parsed: exit 2, nothing sent, no content shown.
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.toml",
        &format!("id = \"x\"\napp_password = \"{CLIENT_SECRET}\n"),
    );
    let r = a.run(&["bots", "add", "--file", &bad]).exit(2);
    assert!(r.error_line().contains("line 2: not valid TOML"), "{r:?}");
    assert_no_secret(&r);
    let r = a
        .run(&["bots", "add", "--file", "/nonexistent/bot.toml"])
        .exit(2);
    assert!(r.error_line().contains("/nonexistent/bot.toml"), "{r:?}");
    let r = a.run(&["bots", "update", "x"]).exit(2);
    assert!(r.error_line().contains("nothing to change"), "{r:?}");
    // Nothing reached the API: the audit log holds only the two refused creations.
    let audit = a.run(&["audit", "--json"]).ok().json();
    let actions: Vec<(&str, u64)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("bots.create", 400),
            ("bots.create", 400),
            ("bots.create", 409)
        ]
    );
}

#[test]
fn stale_if_match_is_a_clear_conflict_and_changes_nothing() {
    let a = start();
    a.run(&[
        "bots", "add", "--id", "b", "--app-id", APP_A, "--cloud", "sim",
    ])
    .ok();
    // Someone changes it (version 2) after we read version 1.
    a.run(&[
        "bots",
        "update",
        "b",
        "--if-match",
        "1",
        "--ambiguous-send",
        "resend",
    ])
    .ok();
    let r = a
        .run(&[
            "bots",
            "update",
            "b",
            "--if-match",
            "\"1\"",
            "--allowed-tenant",
            TENANT_2,
        ])
        .exit(1);
    let line = r.error_line();
    assert!(line.contains("Stale ETag (HTTP 412)"), "{r:?}");
    assert!(line.contains("its current ETag is \"2\""), "{r:?}");
    assert!(
        line.contains("[urn:botfleet:problem:precondition_failed]"),
        "{r:?}"
    );
    assert!(line.contains("botfleet bots show b"), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    let bot = a.run(&["bots", "show", "b", "--json"]).ok().json();
    assert_eq!(
        (bot["version"].as_u64(), bot["allowed_tenants"].clone()),
        (Some(2), json!([]))
    );
    // The same for remove; the bot stays.
    let r = a.run(&["bots", "remove", "b", "--if-match", "1"]).exit(1);
    assert!(r.error_line().contains("precondition_failed"), "{r:?}");
    a.run(&["bots", "show", "b"]).ok();
    // The human view names the ETag to use.
    let r = a.run(&["bots", "show", "b"]).ok();
    assert!(
        r.stdout
            .lines()
            .any(|l| l == "etag                        \"2\""),
        "{r:?}"
    );
    a.run(&["bots", "remove", "b", "--if-match", "2"]).ok();
}

#[test]
fn a_change_between_read_and_write_is_not_overwritten() {
    let a = start();
    a.run(&[
        "bots", "add", "--id", "b", "--app-id", APP_A, "--cloud", "sim",
    ])
    .ok();
    let (proxy, handle) = start_meddling_proxy(&a.url, "b");
    // The CLI reads version 1; the proxy's change makes it 2 before the write.
    let r = run_env(
        &[
            "bots",
            "update",
            "b",
            "--allowed-tenant",
            TENANT_1,
            "--url",
            &proxy,
        ],
        &[("BOTFLEET_KEY", BOOTSTRAP)],
    )
    .exit(1);
    let line = r.error_line();
    assert!(line.contains("Stale ETag (HTTP 412)"), "{r:?}");
    assert!(
        line.contains("someone changed bot b while this command ran; nothing was changed"),
        "{r:?}"
    );
    // The other change stands; the CLI's did not apply.
    let bot = a.run(&["bots", "show", "b", "--json"]).ok().json();
    assert_eq!(
        (
            bot["version"].as_u64(),
            bot["ambiguous_send"].as_str(),
            bot["allowed_tenants"].clone()
        ),
        (Some(2), Some("resend"), json!([]))
    );
    // Run again (no more meddling): it applies to the current version.
    let bot = run_env(
        &[
            "bots",
            "update",
            "b",
            "--allowed-tenant",
            TENANT_1,
            "--url",
            &proxy,
            "--json",
        ],
        &[("BOTFLEET_KEY", BOOTSTRAP)],
    )
    .ok()
    .json();
    assert_eq!(
        (
            bot["version"].as_u64(),
            bot["ambiguous_send"].as_str(),
            bot["allowed_tenants"].clone()
        ),
        (Some(3), Some("resend"), json!([TENANT_1]))
    );
    drop(handle.stop(false));
}

#[test]
fn wrong_or_missing_key_exit_without_showing_the_key() {
    let a = start();
    let wrong = "bfk_abcdefgh_WrongSecretPart0123456789abcdefABCDEF";
    let r = a.run_key(&["bots", "list"], wrong).exit(1);
    let line = r.error_line();
    assert!(line.contains("Invalid API key (HTTP 401)"), "{r:?}");
    assert!(
        line.contains("[urn:botfleet:problem:api_key_invalid]"),
        "{r:?}"
    );
    assert!(line.contains("the key came from BOTFLEET_KEY"), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");

    // From a file: the error names the file (run_env checks the key is absent).
    let dir = tempfile::tempdir().unwrap();
    let key_file = write(dir.path(), "key", &format!("{wrong}\n"));
    let r = run_env(
        &[
            "keys",
            "list",
            "--url",
            &a.url,
            "--key-file",
            &key_file,
            "--json",
        ],
        &[],
    )
    .exit(1);
    assert!(
        r.error_line()
            .contains(&format!("the key came from --key-file {key_file}")),
        "{r:?}"
    );
    assert_eq!(r.json()["check"], "api_key_invalid");

    // The right key from a file works (first line, newline ignored).
    let good = write(dir.path(), "good", &format!("{BOOTSTRAP}\n"));
    run_env(&["bots", "list", "--url", &a.url, "--key-file", &good], &[]).ok();
    run_env(
        &["bots", "list", "--url", &a.url],
        &[("BOTFLEET_KEY_FILE", &good)],
    )
    .ok();

    // No key at all, or two: exit 2 before anything is sent.
    let r = run_env(&["bots", "list", "--url", &a.url], &[]).exit(2);
    assert!(r.error_line().contains("no API key"), "{r:?}");
    let r = run_env(
        &[
            "bots",
            "list",
            "--url",
            &a.url,
            "--key",
            wrong,
            "--key-file",
            &good,
        ],
        &[],
    )
    .exit(2);
    assert!(
        r.error_line().contains("either --key or --key-file"),
        "{r:?}"
    );
    // A key with a space is refused without being repeated.
    let r = run_env(
        &["bots", "list", "--url", &a.url],
        &[("BOTFLEET_KEY", "bfk_x y-OtherSecret")],
    )
    .exit(2);
    assert!(!r.stderr.contains("OtherSecret"), "{r:?}");
    // Bad usage (clap) and a bad URL: 2.
    run_env(&["bots", "frobnicate"], &[("BOTFLEET_KEY", BOOTSTRAP)]).exit(2);
    let r = run_env(
        &["bots", "list", "--url", "ftp://127.0.0.1:9"],
        &[("BOTFLEET_KEY", BOOTSTRAP)],
    )
    .exit(2);
    assert!(r.error_line().contains("is not http or https"), "{r:?}");
}

#[test]
fn unreachable_or_foreign_servers_exit_3() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let r = run_env(
        &["bots", "list", "--url", &url],
        &[("BOTFLEET_KEY", BOOTSTRAP)],
    )
    .exit(3);
    let line = r.error_line();
    assert!(
        line.contains(&format!("cannot reach the admin API at {url}")),
        "{r:?}"
    );
    assert!(line.to_lowercase().contains("connection refused"), "{r:?}");

    // A server that accepts and never answers: --timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let hold = std::thread::spawn(move || {
        let conn = silent.accept();
        std::thread::sleep(Duration::from_secs(3));
        drop(conn);
    });
    let started = std::time::Instant::now();
    let r = run_env(
        &["audit", "--url", &silent_url, "--timeout", "1s"],
        &[("BOTFLEET_KEY", BOOTSTRAP)],
    )
    .exit(3);
    assert!(r.error_line().contains("no answer in time"), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    hold.join().unwrap();

    // Something that is not the admin API (here: plain text over HTTP).
    let (other_url, serve) = answer_once("404 Not Found", "text/html", &[], "not here!");
    let r = run_env(
        &["bots", "list", "--url", &other_url],
        &[("BOTFLEET_KEY", BOOTSTRAP)],
    )
    .exit(3);
    assert!(
        r.error_line()
            .contains("did not answer as the botfleet admin API"),
        "{r:?}"
    );
    serve.join().unwrap();

    // A botfleet problem with a 5xx: exit 3, with the request id to look up
    // in the server's log.
    let problem = json!({
        "type": "urn:botfleet:problem:admin_store_unavailable",
        "title": "Admin store unavailable", "status": 503,
        "detail": "the admin store is unavailable; retry later",
        "check": "admin_store_unavailable",
    });
    let (down_url, serve) = answer_once(
        "503 Service Unavailable",
        "application/problem+json",
        &[("x-request-id", "req-42")],
        &problem.to_string(),
    );
    let r = run_env(
        &["audit", "--url", &down_url],
        &[("BOTFLEET_KEY", BOOTSTRAP)],
    )
    .exit(3);
    assert_eq!(
        r.error_line(),
        "botfleet: Admin store unavailable (HTTP 503): the admin store is unavailable; retry later [urn:botfleet:problem:admin_store_unavailable] (request id req-42)"
    );
    serve.join().unwrap();

    // The right server, wrong path: its answers have no problem document.
    let a = start();
    let r = run_env(
        &["bots", "list", "--url", &format!("{}/elsewhere", a.url)],
        &[("BOTFLEET_KEY", BOOTSTRAP)],
    )
    .exit(3);
    assert!(
        r.error_line()
            .contains("did not answer as the botfleet admin API"),
        "{r:?}"
    );
}

/// A loopback HTTP server answering one request with this status line,
/// content type, headers and body; its URL and thread.
fn answer_once(
    status: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        response.push_str(&format!("{k}: {v}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(body);
    let serve = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 8192];
        let _ = s.read(&mut buf);
        let _ = s.write_all(response.as_bytes());
    });
    (url, serve)
}

#[test]
fn listings_page_with_limit_next_and_all() {
    const N: usize = 30;
    let a = start();
    a.seed_conversations(N);

    // One page: --limit rows and a note saying how to go on.
    let r = a
        .run(&["conversations", "list", "--bot", "conv", "--limit", "10"])
        .ok();
    assert_eq!(r.stdout.lines().count(), 11, "{r:?}");
    assert!(
        r.stdout.lines().nth(1).unwrap().starts_with("a:conv-0000 "),
        "{r:?}"
    );
    let note = r
        .stderr
        .lines()
        .find(|l| l.starts_with("more conversations"))
        .unwrap();
    let cursor = note.rsplit("--next ").next().unwrap().trim_matches('\'');
    let r = a
        .run(&[
            "conversations",
            "list",
            "--bot",
            "conv",
            "--limit",
            "10",
            "--next",
            cursor,
            "--json",
        ])
        .ok();
    let page = r.json();
    assert_eq!(page["items"][0]["conversation_id"], "a:conv-0010");
    assert!(
        page["next"].is_string(),
        "one page, as the API answers it: {page}"
    );

    // --all: one document, every item, no cursor; small pages give the same.
    let all = a
        .run(&["conversations", "list", "--bot", "conv", "--all", "--json"])
        .ok()
        .json();
    let ids = |doc: &Value| -> Vec<String> {
        doc["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["conversation_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&all).len(), N);
    assert!(all.get("next").is_none(), "{}", all["next"]);
    let small = a
        .run(&[
            "conversations",
            "list",
            "--bot",
            "conv",
            "--all",
            "--limit",
            "7",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(ids(&small), ids(&all));
    let mut sorted = ids(&all);
    sorted.sort();
    assert_eq!(sorted, ids(&all));

    // Filters: inactive ones of tenant 2 (i % 3 == 0 and i % 5 == 0).
    let filtered = a
        .run(&[
            "conversations",
            "list",
            "--bot",
            "conv",
            "--tenant",
            TENANT_2,
            "--active",
            "false",
            "--all",
            "--limit",
            "10",
            "--json",
        ])
        .ok()
        .json();
    let want: Vec<String> = (0..N)
        .filter(|i| i % 15 == 0)
        .map(|i| format!("a:conv-{i:04}"))
        .collect();
    assert_eq!(ids(&filtered), want);
    assert!(filtered["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["inactive_reason"] == "uninstalled"));
    let r = a
        .run(&[
            "conversations",
            "list",
            "--bot",
            "conv",
            "--active",
            "false",
            "--limit",
            "3",
        ])
        .ok();
    let header = r.stdout.lines().next().unwrap();
    assert!(
        header.starts_with("CONVERSATION") && header.contains("INACTIVE REASON"),
        "{r:?}"
    );
    assert!(
        r.stdout
            .lines()
            .skip(1)
            .all(|l| l.contains(" no ") && l.contains("uninstalled")),
        "{r:?}"
    );
    a.run(&[
        "conversations",
        "list",
        "--bot",
        "conv",
        "--active",
        "maybe",
    ])
    .exit(2);
    a.run(&["conversations", "list", "--bot", "conv", "--limit", "0"])
        .exit(2);
    a.run(&["conversations", "list", "--bot", "nope"]).exit(4);

    // Tenants: every tenant with counts.
    let t = a
        .run(&["tenants", "list", "--bot", "conv", "--json"])
        .ok()
        .json();
    assert_eq!(t["total_conversations"], N);
    assert_eq!(t["items"].as_array().unwrap().len(), 2);
    let r = a.run(&["tenants", "list", "--bot", "conv"]).ok();
    assert!(r.stdout.starts_with("TENANT "), "{r:?}");
    assert!(
        r.stderr
            .contains("2 tenant(s), 30 conversation(s), 24 active"),
        "{r:?}"
    );

    // The audit log in pages of 2 equals it read at once.
    a.run(&[
        "bots", "add", "--id", "aud", "--app-id", APP_A, "--cloud", "sim",
    ])
    .ok();
    for _ in 0..4 {
        a.run(&["bots", "update", "aud", "--ambiguous-send", "resend"])
            .ok();
    }
    let whole = a.run(&["audit", "--json"]).ok().json();
    let paged = a
        .run(&["audit", "--all", "--limit", "2", "--json"])
        .ok()
        .json();
    assert_eq!(whole["items"].as_array().unwrap().len(), 5);
    assert_eq!(paged["items"], whole["items"]);
    let r = a.run(&["audit", "--limit", "2"]).ok();
    assert_eq!(r.stdout.lines().count(), 3, "{r:?}");
    assert!(
        r.stdout.lines().nth(1).unwrap().contains("bots.create"),
        "{r:?}"
    );
    assert!(
        r.stderr
            .contains("more entries: add --all, or rerun with --next "),
        "{r:?}"
    );
}

#[test]
fn keys_create_list_revoke_and_use() {
    let a = start();
    a.run(&[
        "bots", "add", "--id", "helpdesk", "--app-id", APP_A, "--cloud", "sim",
    ])
    .ok();
    let r = a
        .run(&[
            "keys",
            "create",
            "--role",
            "reader",
            "--bot",
            "helpdesk",
            "--description",
            "CI",
            "--expires-in",
            "1d",
        ])
        .ok();
    // stdout is the key alone, for `> file` or `$(...)`.
    let key = r.stdout.trim().to_string();
    assert_eq!(r.stdout, format!("{key}\n"));
    assert!(key.starts_with("bfk_"), "{r:?}");
    let id: String = key.splitn(3, '_').take(2).collect::<Vec<_>>().join("_");
    assert!(
        r.stderr.contains(&format!(
            "created API key {id} (role reader, bots helpdesk, expires "
        )),
        "{r:?}"
    );

    // The new key reads its bot only; the key itself never shows (run_key checks).
    let r = a.run_key(&["bots", "list", "--json"], &key).ok();
    let listed = r.json();
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["helpdesk"]);
    let r = a
        .run_key(&["bots", "add", "--id", "other", "--app-id", APP_B], &key)
        .exit(1);
    assert!(r.error_line().contains("Forbidden (HTTP 403)"), "{r:?}");

    let r = a.run(&["keys", "list"]).ok();
    let row: Vec<&str> = r
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..4], [id.as_str(), "reader", "helpdesk", "active"]);
    assert!(r.stdout.ends_with("CI\n"), "{r:?}");

    let r = a.run(&["keys", "revoke", &id]).ok();
    assert_eq!(r.stdout, format!("revoked API key {id}\n"));
    let r = a.run_key(&["bots", "list"], &key).exit(1);
    assert!(
        r.error_line().contains("API key revoked (HTTP 401)"),
        "{r:?}"
    );
    let keys = a.run(&["keys", "list", "--json"]).ok().json();
    assert_eq!(keys["items"][0]["state"], "revoked");
    assert!(keys["items"][0].get("key").is_none());
    a.run(&["keys", "revoke", "bfk_nosuchk"]).exit(4);

    // --json: the API's answer, key included (the one place it is shown).
    let created = a
        .run(&["keys", "create", "--role", "operator", "--json"])
        .ok()
        .json();
    assert!(created["key"]
        .as_str()
        .unwrap()
        .starts_with(created["id"].as_str().unwrap()));
    assert_eq!(created["role"], "operator");
    assert!(created["bots"].is_null());
    a.run(&["keys", "create", "--role", "wizard"]).exit(2);
}

#[test]
fn token_status_table_and_json() {
    let a = start();
    a.run(&[
        "bots", "add", "--id", "quiet", "--app-id", APP_A, "--cloud", "sim",
    ])
    .ok();
    // Before any reply: the credential is known, no token cached yet.
    let r = a.run(&["tokens", "--bot", "from-config"]).ok();
    let row: Vec<&str> = r
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        [
            "from-config",
            "client_secret",
            "no",
            "botframework.com",
            "-",
            "-",
            "-",
            "-"
        ],
        "{r:?}"
    );

    // The echo bot replies through the sim's Bot Connector with a token from
    // the sim's token endpoint.
    a.talk_to_echo_bot();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let one = loop {
        let one = a
            .run(&["tokens", "--bot", "from-config", "--json"])
            .ok()
            .json();
        if one["cached"] == true || std::time::Instant::now() > deadline {
            break one;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(one["bot"], "from-config");
    assert_eq!(one["cached"], true, "{one}");
    assert_eq!(one["entries"][0]["credential"], "client_secret", "{one}");
    assert_eq!(one["entries"][0]["endpoint_requests"], 1, "{one}");
    assert!(one["entries"][0]["last_error"].is_null(), "{one}");

    let r = a.run(&["tokens"]).ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines[0].starts_with("BOT ") && lines[0].contains("LAST ERROR"),
        "{r:?}"
    );
    let config_row: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("from-config "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        config_row[..4],
        ["from-config", "client_secret", "yes", "botframework.com"],
        "{r:?}"
    );
    // Times, then no error: `-` twice.
    assert_eq!(config_row[6..], ["-", "-"], "{r:?}");
    let quiet_row = lines.iter().find(|l| l.starts_with("quiet ")).unwrap();
    assert!(
        quiet_row.ends_with("no credential: the bot cannot reply"),
        "{r:?}"
    );
    // The tokens never appear, only their status.
    assert!(!r.stdout.contains("eyJ"), "{r:?}");

    let all = a.run(&["tokens", "--json"]).ok().json();
    let bots: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["bot"].as_str().unwrap())
        .collect();
    assert_eq!(bots, ["conv", "from-config", "quiet"]);
    a.run(&["tokens", "--bot", "nope"]).exit(4);
}
