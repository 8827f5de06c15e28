//! Configuration end to end: `botfleet check-config` and `botfleet serve` as
//! processes, on files and environments a user would write.
//!
//! - a bad configuration is refused by both with exit 2 and the same single
//!   message naming the key path and where the value came from;
//! - secrets come from files and environment variables, and the Bot Framework's
//!   own variables run a one-bot deployment that answers a sim-signed activity;
//! - old `_ms`/`_secs` keys still work; the effective configuration is printed
//!   with secrets redacted; the shipped example passes;
//! - the ready line waits for `/readyz`; piped logs carry no ANSI colours.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Variables that change what botfleet loads; removed so the tests see only
/// what they set.
fn hermetic(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if k.starts_with("BOTFLEET_")
            || k.starts_with("MicrosoftApp")
            || k == "PORT"
            || k == "NO_COLOR"
            || k.starts_with("HELPDESK_")
        {
            cmd.env_remove(k);
        }
    }
}

fn botfleet(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(workspace_bin("botfleet"));
    hermetic(&mut cmd);
    cmd.args(args).envs(env.iter().copied());
    cmd
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs to the end (at most 30 s: `serve` on a bad configuration must stop).
fn run(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start botfleet");
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout")));
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "botfleet did not exit within 30 s; stderr so far:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    std::io::Write::write_all(&mut f, text.as_bytes()).expect("write");
    f
}

/// 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not in the test's TOML"))
        + 1
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

const APP_B: &str = "00000000-0000-4000-8000-0000000000c3";

struct Bad {
    name: &'static str,
    toml: String,
    env: Vec<(&'static str, &'static str)>,
    /// The key path the message must name.
    key: &'static str,
    /// Where the value came from, as the message must say it.
    origin: String,
    /// What the message must explain.
    hint: &'static str,
}

fn bad_cases(file: &dyn Fn(&str) -> String) -> Vec<Bad> {
    let bot = |extra: &str| {
        format!("[[bots]]\nid = \"a\"\napp_id = \"{APP_ID}\"\napp_password = \"pw\"\n{extra}\n")
    };
    let at = |toml: &str, needle: &str| format!("{} line {}", file(toml), line_of(toml, needle));
    let mut cases = Vec::new();
    let mut case = |name, toml: String, key, needle: &str, hint| {
        let origin = at(&toml, needle);
        cases.push(Bad {
            name,
            toml,
            env: Vec::new(),
            key,
            origin,
            hint,
        });
    };
    case(
        "http webhook to another host",
        bot("handler = { kind = \"webhook\", url = \"http://hooks.example.com/teams\", secret = \"0123456789abcdef0\" }"),
        "bots[0].handler.url",
        "handler =",
        "is not https",
    );
    case(
        "webhook url that is not a url",
        bot(
            "handler = { kind = \"webhook\", url = \"not a url\", secret = \"0123456789abcdef0\" }",
        ),
        "bots[0].handler.url",
        "handler =",
        "not a valid absolute URL",
    );
    let two = format!(
        "{}[[bots]]\nid = \"b\"\napp_id = \"{APP_ID}\" # the same app id\n",
        bot("")
    );
    case(
        "two bots with one app id",
        two,
        "bots[1].app_id",
        "# the same app id",
        "also the app_id of bots[0]",
    );
    case(
        "missing certificate key file",
        format!("[[bots]]\nid = \"a\"\napp_id = \"{APP_ID}\"\ncredential = {{ kind = \"certificate\", private_key_file = \"/nonexistent/bot.key.pem\" }}\n"),
        "bots[0].credential.private_key_file",
        "credential =",
        "cannot read /nonexistent/bot.key.pem",
    );
    case(
        "unknown cloud",
        bot("cloud = \"mars\""),
        "bots[0].cloud",
        "cloud =",
        "use one of public, gcch, dod, china",
    );
    case(
        "enum value",
        "[store]\nbackend = \"mongo\"\n".into(),
        "store.backend",
        "backend",
        "expected `memory` or `redis`",
    );
    case(
        "unknown key",
        "[server]\nlisten_on = \"0.0.0.0:3978\"\n".into(),
        "server.listen_on",
        "listen_on",
        "unknown field",
    );
    case(
        "handler given as a string",
        bot("handler = \"echo\""),
        "bots[0].handler",
        "handler =",
        "`kind` = \"record\", \"echo\"",
    );
    case(
        "bad webhook timeout, inside the tagged handler table",
        bot("handler = { kind = \"webhook\", url = \"https://h.example\", secret = \"0123456789abcdef0\", timeout = \"5 parsecs\" }"),
        "bots[0].handler.timeout",
        "handler =",
        "expected a duration",
    );
    case(
        "relative credential directory",
        "[admin]\ncredential_dirs = [\"secrets\"]\n".into(),
        "admin.credential_dirs[0]",
        "credential_dirs",
        "not an absolute path",
    );
    cases.push(Bad {
        name: "environment variable",
        toml: String::new(),
        env: vec![("BOTFLEET__SERVER__LISTEN", "nowhere")],
        key: "server.listen",
        origin: "environment variable BOTFLEET__SERVER__LISTEN".into(),
        hint: "not an IP:port address",
    });
    let named = bot("").replace(
        "app_password = \"pw\"",
        "app_password_env = \"BOTFLEET_TEST_UNSET_SECRET\"",
    );
    cases.push(Bad {
        name: "secret variable not set",
        origin: at(&named, "app_password_env"),
        toml: named,
        env: Vec::new(),
        key: "bots[0].app_password_env",
        hint: "BOTFLEET_TEST_UNSET_SECRET is not set",
    });
    cases
}

#[test]
fn bad_configurations_are_refused_alike_by_check_config_and_serve() {
    // A case's file path is known only once written: origins name `FILE` first.
    let placeholder = |_: &str| "FILE".to_owned();
    for template in bad_cases(&placeholder) {
        let f = toml_file(&template.toml);
        let path = f.path().display().to_string();
        let origin = template.origin.replace("FILE", &path);
        let config = f.path().to_str().expect("utf-8 path");

        let check = run(botfleet(
            &["check-config", "--config", config],
            &template.env,
        ));
        let mut serve_env = template.env.clone();
        if !serve_env
            .iter()
            .any(|(k, _)| *k == "BOTFLEET__SERVER__LISTEN")
        {
            serve_env.push(("BOTFLEET__SERVER__LISTEN", "127.0.0.1:0"));
        }
        let serve = run(botfleet(&["serve", "--config", config], &serve_env));

        let case = template.name;
        for (what, out) in [("check-config", &check), ("serve", &serve)] {
            assert_eq!(
                out.code,
                Some(2),
                "{case}: {what} exit code; stderr:\n{}",
                out.stderr
            );
            assert_eq!(out.stdout, "", "{case}: {what} printed on stdout");
            assert_eq!(
                out.stderr.matches("invalid configuration").count(),
                1,
                "{case}: {what} must print the error once:\n{}",
                out.stderr
            );
            let want = format!("`{}` ({origin})", template.key);
            assert!(
                out.stderr.contains(&want),
                "{case}: {what} must name {want}:\n{}",
                out.stderr
            );
            assert!(
                out.stderr.contains(template.hint),
                "{case}: {what} must say `{}`:\n{}",
                template.hint,
                out.stderr
            );
        }
        assert_eq!(
            check.stderr, serve.stderr,
            "{case}: one verdict, one message"
        );
    }
}

#[test]
fn syntax_errors_and_missing_files_name_the_file() {
    let f = toml_file("[server]\nlisten = \"127.0.0.1:3978\n");
    let config = f.path().to_str().expect("utf-8 path");
    let check = run(botfleet(&["check-config", "--config", config], &[]));
    assert_eq!(check.code, Some(2));
    assert!(check.stderr.contains(config), "{}", check.stderr);
    assert!(check.stderr.contains("line 2"), "{}", check.stderr);
    let serve = run(botfleet(&["serve", "--config", config], &[]));
    assert_eq!((serve.code, &serve.stderr), (Some(2), &check.stderr));

    let missing = run(botfleet(
        &["check-config", "--config", "/nonexistent/botfleet.toml"],
        &[],
    ));
    assert_eq!(missing.code, Some(2));
    assert!(
        missing.stderr.contains("/nonexistent/botfleet.toml"),
        "{}",
        missing.stderr
    );
}

#[test]
fn syntax_errors_never_print_the_files_text() {
    // Inline secrets are allowed, so a typo on their line must not put them
    // into CI or pod logs: file, line, column and the parser's problem only.
    let secret = "TOPSECRETPASSWORD123";
    for (text, line) in [
        (format!("[[bots]]\nid = \"x\"\napp_id = \"{APP_ID}\"\napp_password = \"{secret}\nhandler = {{ kind = \"echo\" }}\n"), 4),
        (format!("[[bots]]\nid = \"x\"\napp_password = \"{secret}\" x\n"), 3),
        ("[admin]\nbootstrap_key = 123456789012345678901234567890\n".to_owned(), 2),
    ] {
        let f = toml_file(&text);
        let config = f.path().to_str().expect("utf-8 path");
        let check = run(botfleet(&["check-config", "--config", config], &[]));
        let serve = run(botfleet(
            &["serve", "--config", config],
            &[("BOTFLEET__SERVER__LISTEN", "127.0.0.1:0")],
        ));
        for (what, out) in [("check-config", &check), ("serve", &serve)] {
            assert_eq!(out.code, Some(2), "{what}: {}", out.stderr);
            let all = format!("{}{}", out.stdout, out.stderr);
            for leaked in [secret, "123456789012345678901234567890", "app_password =", "bootstrap_key ="] {
                assert!(!all.contains(leaked), "{what} printed `{leaked}`:\n{all}");
            }
            assert!(
                out.stderr.contains(&format!("{config} is not valid TOML: line {line}, column ")),
                "{what}:\n{}",
                out.stderr
            );
        }
    }
    // A value of the wrong type for a secret key: its type, never the value.
    let f = toml_file(&format!(
        "[[bots]]\nid = \"x\"\napp_id = \"{APP_ID}\"\napp_password = 8675309123\n"
    ));
    let out = run(botfleet(
        &["check-config", "--config", f.path().to_str().expect("path")],
        &[],
    ));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("`bots[0].app_password`")
            && out
                .stderr
                .contains("invalid type: integer, expected a string")
            && !out.stderr.contains("8675309123"),
        "{}",
        out.stderr
    );
}

#[test]
fn effective_durations_read_back_as_written() {
    let toml = r#"
[admin]
registry_poll = "1500ms"
[runtime]
conversation_idle = "90m"
tenant_idle = "36h"
"#;
    let f = toml_file(toml);
    let first = run(botfleet(
        &["check-config", "--config", f.path().to_str().expect("path")],
        &[],
    ));
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    for shown in [
        "audit_retention = \"90d\"",
        "registry_poll = \"1500ms\"",
        "conversation_idle = \"90m\"",
        "tenant_idle = \"36h\"",
        "key_refresh = \"6h\"",
    ] {
        assert!(
            first.stdout.contains(shown),
            "`{shown}` missing:\n{}",
            first.stdout
        );
    }
    // The effective configuration is itself a configuration that loads to
    // the same values: written back, it prints identically.
    let effective = first
        .stdout
        .split_once("# effective configuration")
        .and_then(|(_, rest)| rest.split_once('\n'))
        .map(|(_, t)| t.to_owned())
        .expect("effective configuration printed");
    let again = toml_file(&effective);
    let second = run(botfleet(
        &[
            "check-config",
            "--config",
            again.path().to_str().expect("path"),
        ],
        &[],
    ));
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    let effective_again = second
        .stdout
        .split_once("# effective configuration")
        .and_then(|(_, rest)| rest.split_once('\n'))
        .map(|(_, t)| t.to_owned())
        .expect("effective configuration printed");
    assert_eq!(effective, effective_again);
}

#[test]
fn the_example_configuration_passes_check_config() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../botfleet.example.toml");
    let example = example.to_str().expect("utf-8 path");
    let secrets = [
        ("HELPDESK_APP_PASSWORD", "example-client-secret"),
        (
            "HELPDESK_WEBHOOK_SECRET",
            "example-webhook-secret-0123456789",
        ),
        (
            "BOTFLEET_ADMIN_KEY",
            "example-admin-key-0123456789abcdef0123",
        ),
    ];
    let ok = run(botfleet(&["check-config", "--config", example], &secrets));
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    assert!(
        ok.stdout
            .starts_with("configuration is valid: 2 bot(s), store redis"),
        "{}",
        ok.stdout
    );
    for (_, secret) in secrets {
        assert!(!ok.stdout.contains(secret), "secret shown:\n{}", ok.stdout);
    }
    // Without its variables it says which one is missing, and where it is named.
    let missing = run(botfleet(
        &["check-config", "--config", example],
        &secrets[1..],
    ));
    assert_eq!(missing.code, Some(2));
    assert!(
        missing.stderr.contains("`bots[0].app_password_env`")
            && missing.stderr.contains("HELPDESK_APP_PASSWORD is not set"),
        "{}",
        missing.stderr
    );
}

#[test]
fn check_config_prints_the_effective_configuration_with_secrets_redacted() {
    let toml = format!(
        r#"
[store]
backend = "redis"
redis_urls = ["redis://default:redis-pass-7@127.0.0.1:6379"]

[[bots]]
id = "a"
app_id = "{APP_ID}"
app_password = "literal-secret-1"
handler = {{ kind = "webhook", url = "https://hooks.example.com/teams", secret_env = "HOOK_SECRET" }}
"#
    );
    let f = toml_file(&toml);
    let out = run(botfleet(
        &["check-config", "--config", f.path().to_str().expect("path")],
        &[("HOOK_SECRET", "env-secret-0123456789")],
    ));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for secret in ["literal-secret-1", "env-secret-0123456789", "redis-pass-7"] {
        assert!(
            !out.stdout.contains(secret),
            "{secret} shown:\n{}",
            out.stdout
        );
    }
    // The whole effective configuration: the file, the defaults, the secrets redacted.
    let effective = out
        .stdout
        .split_once("# effective configuration")
        .map(|(_, rest)| rest)
        .expect("effective configuration printed");
    let effective = effective.split_once('\n').map_or("", |(_, t)| t);
    let v: toml::Table = toml::from_str(effective).expect("the effective configuration is TOML");
    assert_eq!(v["bots"][0]["app_password"].as_str(), Some("[redacted]"));
    assert_eq!(
        v["bots"][0]["handler"]["secret"].as_str(),
        Some("[redacted]")
    );
    assert_eq!(v["auth"]["key_refresh"].as_str(), Some("6h"));
    assert_eq!(v["outbound"]["rate_limit_margin"].as_str(), Some("200ms"));
    assert_eq!(
        v["auth"]["verified_token_cache_size"].as_integer(),
        Some(10_000)
    );
}

#[test]
fn old_duration_keys_keep_working() {
    let toml = format!(
        r#"
[server]
handler_deadline_ms = 8000
[auth]
key_refresh_secs = 3600
[runtime]
duplicate_window_secs = 0
[[bots]]
id = "a"
app_id = "{APP_ID}"
handler = {{ kind = "webhook", url = "https://hooks.example.com/teams", secret = "0123456789abcdef0", timeout_ms = 1500 }}
"#
    );
    let f = toml_file(&toml);
    let out = run(botfleet(
        &["check-config", "--config", f.path().to_str().expect("path")],
        &[("BOTFLEET__OUTBOUND__MAX_RETRY_MS", "20000")],
    ));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for shown in [
        "handler_deadline = \"8s\"",
        "key_refresh = \"1h\"",
        "duplicate_window = \"0s\"",
        "timeout = \"1500ms\"",
        "max_retry = \"20s\"",
    ] {
        assert!(
            out.stdout.contains(shown),
            "`{shown}` missing:\n{}",
            out.stdout
        );
    }
    assert!(
        out.stdout.contains(
            "note: `server.handler_deadline_ms` is the old name of `server.handler_deadline`"
        ),
        "{}",
        out.stdout
    );
    // Old and new name together: which one would win is not guessed.
    let f = toml_file("[server]\nhandler_deadline_ms = 8000\nhandler_deadline = \"8s\"\n");
    let out = run(botfleet(
        &["check-config", "--config", f.path().to_str().expect("path")],
        &[],
    ));
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("keep only `handler_deadline`"),
        "{}",
        out.stderr
    );
}

/// A `botfleet serve` started with its own environment; stdout lines arrive on
/// `lines`, stderr goes to a file.
struct Served {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: tempfile::NamedTempFile,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- botfleet log ----\n{}",
                std::fs::read_to_string(self.log.path()).unwrap_or_default()
            );
        }
    }
}

fn serve(config: &Path, env: &[(&str, &str)]) -> Served {
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut cmd = botfleet(&["serve", "--config", config.to_str().expect("path")], env);
    // Tests run side by side: none may take the default admin port (9090)
    // unless it asks for a port itself.
    if !env
        .iter()
        .any(|(k, _)| *k == "BOTFLEET__SERVER__ADMIN_LISTEN")
        && !std::fs::read_to_string(config).is_ok_and(|t| t.contains("admin_listen"))
    {
        cmd.env("BOTFLEET__SERVER__ADMIN_LISTEN", "127.0.0.1:0");
    }
    cmd.env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log.reopen().expect("log handle")));
    let mut child = cmd.spawn().expect("start botfleet serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Served { child, lines, log }
}

impl Served {
    /// The (public) URL of the ready line.
    fn ready(&self, within: Duration) -> String {
        self.ready_urls(within).0
    }

    /// The public and admin URLs of the ready line.
    fn ready_urls(&self, within: Duration) -> (String, String) {
        let line = self
            .lines
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("no ready line within {within:?}"));
        let v: Value = serde_json::from_str(&line).expect("ready line is JSON");
        assert_eq!(v["ready"], true, "{line}");
        (
            v["url"].as_str().expect("url").to_owned(),
            v["admin_url"].as_str().expect("admin_url").to_owned(),
        )
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

/// Posts a sim-signed message to `endpoint` and waits for the echo to reach
/// the sim's Bot Connector.
async fn echoed(sim: &str, endpoint: &str, app_id: &str, text: &str) {
    let token = mint(
        sim,
        json!({"appId": app_id, "serviceUrl": service_url(sim)}),
    )
    .await;
    let conversation = format!("a:config-{text}");
    register(sim, &[(conversation.as_str(), TENANT)]).await;
    let mut activity = message(sim, &conversation, "1", text);
    activity["recipient"]["id"] = json!(format!("28:{app_id}"));
    let (status, body) = post_activity(endpoint, Some(&token), &activity).await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = get_json(format!("{sim}/_sim/activities")).await;
        let delivered = got["activities"].as_array().is_some_and(|list| {
            list.iter().any(|r| {
                r["appId"] == app_id
                    && r["body"]["text"] == text
                    && r["status"]
                        .as_u64()
                        .is_some_and(|s| (200..300).contains(&s))
            })
        });
        if delivered {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no echo of `{text}` from {app_id}: {got}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn secrets_come_from_files_and_environment_variables() {
    let sim = start_sim();
    let mut password_file = tempfile::NamedTempFile::new().expect("secret file");
    // As `kubectl create secret --from-file` or an editor leaves it: a final newline.
    std::io::Write::write_all(&mut password_file, format!("{APP_SECRET}\n").as_bytes())
        .expect("write secret");
    let toml = format!(
        r#"
{cloud}
[[bots]]
id = "from-file"
app_id = "{APP_ID}"
app_password_file = "{file}"
cloud = "sim"
handler = {{ kind = "echo" }}

[[bots]]
id = "from-env"
app_id = "{OTHER_APP_ID}"
app_password_env = "OTHER_BOT_PASSWORD"
cloud = "sim"
handler = {{ kind = "echo" }}
"#,
        cloud = sim_cloud(&sim.url),
        file = password_file.path().display()
    );
    let f = toml_file(&toml);
    let env = [
        ("OTHER_BOT_PASSWORD", "other-secret"),
        ("BOTFLEET__SERVER__LISTEN", "127.0.0.1:0"),
    ];
    let bf = serve(f.path(), &env);
    let url = bf.ready(Duration::from_secs(30));
    echoed(&sim.url, &format!("{url}/api/messages"), APP_ID, "file").await;
    echoed(
        &sim.url,
        &format!("{url}/api/messages"),
        OTHER_APP_ID,
        "env",
    )
    .await;
    let log = bf.log_text();
    assert!(
        !log.contains(APP_SECRET) && !log.contains("other-secret"),
        "a secret reached the log:\n{log}"
    );
}

#[actix_web::test]
async fn bot_framework_variables_run_a_one_bot_deployment() {
    let sim = start_sim();
    // The file only says where tokens come from (the sim) and what the bot does;
    // who the bot is comes from the variables an Azure Bot deployment sets.
    let toml = format!(
        "{}\n[[bots]]\ncloud = \"sim\"\nhandler = {{ kind = \"echo\" }}\n",
        sim_cloud(&sim.url)
    );
    let f = toml_file(&toml);
    let port = free_port().to_string();
    let env = [
        ("MicrosoftAppId", APP_ID),
        ("MicrosoftAppPassword", APP_SECRET),
        ("MicrosoftAppType", "MultiTenant"),
        ("PORT", port.as_str()),
    ];
    let check = run(botfleet(
        &["check-config", "--config", f.path().to_str().expect("path")],
        &env,
    ));
    assert_eq!(check.code, Some(0), "{}", check.stderr);
    assert!(
        check
            .stdout
            .contains(&format!("listen = \"0.0.0.0:{port}\"")),
        "{}",
        check.stdout
    );
    assert!(check.stdout.contains("id = \"bot\""), "{}", check.stdout);

    let bf = serve(f.path(), &env);
    let url = bf.ready(Duration::from_secs(30));
    assert_eq!(url, format!("http://0.0.0.0:{port}"));
    let endpoint = format!("http://127.0.0.1:{port}/api/messages");
    echoed(&sim.url, &endpoint, APP_ID, "hello").await;
    echoed(
        &sim.url,
        &format!("http://127.0.0.1:{port}/api/messages/bot"),
        APP_ID,
        "by-path",
    )
    .await;

    // A second bot in the file makes the variables ambiguous: refused, not guessed.
    let two = format!("{toml}\n[[bots]]\nid = \"other\"\napp_id = \"{APP_B}\"\ncloud = \"sim\"\n");
    let f2 = toml_file(&two);
    let out = run(botfleet(
        &[
            "check-config",
            "--config",
            f2.path().to_str().expect("path"),
        ],
        &env,
    ));
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("environment variable MicrosoftAppId")
            && out.stderr.contains("2 [[bots]]"),
        "{}",
        out.stderr
    );
}

/// A `redis-server` on `port`, stopped when dropped.
struct RedisServer(Child, PathBuf);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn redis_server(port: u16) -> RedisServer {
    let dir = tempfile::tempdir().expect("redis dir").keep();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (scripts/test installs it)");
    RedisServer(child, dir)
}

async fn readyz(base: &str) -> Option<u16> {
    http()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[actix_web::test]
async fn the_ready_line_waits_until_readyz_answers_200() {
    let redis_port = free_port();
    let listen_port = free_port();
    let admin_port = free_port();
    let base = format!("http://127.0.0.1:{listen_port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    let f = toml_file(&format!(
        "[server]\nlisten = \"127.0.0.1:{listen_port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n[store]\nbackend = \"redis\"\nredis_urls = [\"redis://127.0.0.1:{redis_port}\"]\n"
    ));
    let bf = serve(f.path(), &[]);

    // Listening, Redis down: /readyz answers 503 and no ready line is printed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while readyz(&admin).await.is_none() {
        assert!(Instant::now() < deadline, "botfleet never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(readyz(&admin).await, Some(503));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        bf.lines.try_recv().is_err(),
        "ready line printed while /readyz answers 503"
    );
    assert_eq!(readyz(&admin).await, Some(503));

    // Redis comes up: the ready line follows, and /readyz agrees.
    let _redis = redis_server(redis_port);
    let (url, admin_url) = bf.ready_urls(Duration::from_secs(20));
    assert_eq!((url, admin_url.as_str()), (base.clone(), admin.as_str()));
    assert_eq!(readyz(&admin).await, Some(200));
    // The public listener serves the messaging endpoint only.
    assert_eq!(readyz(&base).await, Some(404));
}

#[actix_web::test]
async fn logs_carry_no_ansi_colours_when_stderr_is_not_a_terminal() {
    for format in ["text", "json"] {
        let f = toml_file(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nlog_format = \"{format}\"\n"
        ));
        let bf = serve(f.path(), &[]);
        let url = bf.ready(Duration::from_secs(30));
        // A refused request logs too.
        let _ = http()
            .post(format!("{url}/api/messages"))
            .body("{}")
            .send()
            .await;
        let log = bf.log_text();
        assert!(
            log.contains("botfleet ready"),
            "{format}: nothing logged:\n{log}"
        );
        assert!(
            !log.contains('\u{1b}'),
            "{format}: ANSI escape in a piped log:\n{log}"
        );
        if format == "json" {
            for line in log.lines() {
                assert!(
                    serde_json::from_str::<Value>(line).is_ok(),
                    "not JSON: {line}"
                );
            }
        }
    }
}

/// Every key botfleet reads is in docs/configuration.md, so the reference cannot
/// fall behind the code.
#[test]
fn docs_name_every_key() {
    use botfleet_server::settings::{sources, BotSettings, Settings};
    let docs = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .expect("docs/configuration.md");
    let bot: BotSettings = toml::from_str(&format!(
        "id = \"a\"\napp_id = \"{APP_ID}\"\napp_password = \"x\"\ntenant_id = \"t\"\n"
    ))
    .expect("a bot");
    let mut settings = Settings::default();
    settings.bots.push(bot);
    settings.clouds.push(
        settings
            .cloud("public")
            .map(|mut c| {
                c.name = "custom".into();
                c
            })
            .expect("preset"),
    );
    let tree = toml::Table::try_from(&settings).expect("settings as TOML");
    let mut missing = Vec::new();
    let mut check = |key: &str| {
        let named = [
            format!("{key} ="),
            format!("`{key}`"),
            format!("[{key}]"),
            format!("[[{key}]]"),
        ];
        if !named.iter().any(|n| docs.contains(n.as_str())) {
            missing.push(key.to_owned());
        }
    };
    fn walk(t: &toml::Table, check: &mut dyn FnMut(&str)) {
        for (k, v) in t {
            check(k);
            match v {
                toml::Value::Table(t) => walk(t, check),
                toml::Value::Array(items) => {
                    for item in items {
                        if let toml::Value::Table(t) = item {
                            walk(t, check);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    walk(&tree, &mut check);
    for key in sources::DURATION_KEYS {
        check(key);
    }
    for var in sources::BOT_FRAMEWORK_VARS {
        check(var);
    }
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md: {missing:?}"
    );
}
