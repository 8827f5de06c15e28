//! TLS on the public listener end to end: `botfleet serve` as a process with
//! `[server.tls]`, a real TLS client (reqwest with the test CA as its only
//! root), the openssl CLI for protocol versions, and a certificate rotation.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A CA and a leaf for `localhost` / `127.0.0.1` it signed: (CA PEM, leaf PEM, key PEM).
fn issue(not_after_year: i32) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "botfleet test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let mut leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("leaf params");
    leaf.not_before = rcgen::date_time_ymd(2020, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).expect("leaf cert");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// Replaces a file the way a Secret mount changes: write beside, then rename.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn config(sim: &str, dir: &Path) -> String {
    format!(
        r#"
[server.tls]
cert_file = "{cert}"
key_file = "{key}"
reload_interval = "1s"
{cloud}
[[bots]]
id = "echo"
app_id = "{APP_ID}"
app_password = "{APP_SECRET}"
cloud = "sim"
handler = {{ kind = "echo" }}
"#,
        cert = dir.join("tls.crt").display(),
        key = dir.join("tls.key").display(),
        cloud = sim_cloud(sim)
    )
}

/// `openssl s_client` forced to one protocol version; its output.
fn s_client(addr: &str, version: &str) -> String {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", addr, version])
        // OpenSSL 3 refuses TLS 1.1 itself at the default security level.
        .args(["-cipher", "DEFAULT@SECLEVEL=0"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn accepted(client: &reqwest::Client, url: &str, token: &str, sim: &str, id: &str) -> bool {
    client
        .post(format!("{url}/api/messages"))
        .bearer_auth(token)
        .json(&message(sim, "a:tls", id, id))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[actix_web::test]
async fn tls_listener_serves_rotates_and_refuses_old_protocols() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca1, cert1, key1) = issue(2099);
    replace(&dir.path().join("tls.crt"), &cert1);
    replace(&dir.path().join("tls.key"), &key1);
    let sim = start_sim();
    let bf = start_botfleet(&config(&sim.url, dir.path()));
    let url = bf.url().to_owned();
    assert!(url.starts_with("https://"), "{url}");
    register(&sim.url, &[("a:tls", TENANT)]).await;
    let token = mint(
        &sim.url,
        json!({"appId": APP_ID, "serviceUrl": service_url(&sim.url)}),
    )
    .await;

    // A real handshake, then a signed activity accepted and echoed.
    let first = client(&ca1);
    assert!(accepted(&first, &url, &token, &sim.url, "over-tls-1").await);

    // TLS 1.2 is spoken, TLS 1.1 refused by the server (an alert).
    let addr = url.trim_start_matches("https://");
    let v12 = s_client(addr, "-tls1_2");
    assert!(
        v12.contains("Protocol  : TLSv1.2") && !v12.contains("Cipher is (NONE)"),
        "{v12}"
    );
    // The same client offering only TLS 1.1 gets the server's alert and no cipher.
    let v11 = s_client(addr, "-tls1_1");
    assert!(
        v11.contains("Cipher is (NONE)") && v11.contains("SSL alert number"),
        "{v11}"
    );

    // A bad file at reload: the old certificate stays, the failure is counted.
    replace(&dir.path().join("tls.crt"), "not a certificate\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(bf.admin_url(), "botfleet_tls_reload_failures_total").await < 1.0 {
        assert!(Instant::now() < deadline, "the bad file was not noticed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(accepted(&client(&ca1), &url, &token, &sim.url, "over-tls-2").await);

    // Rotation: another CA's certificate is served without a restart.
    let (ca2, cert2, key2) = issue(2098);
    replace(&dir.path().join("tls.key"), &key2);
    replace(&dir.path().join("tls.crt"), &cert2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !accepted(&client(&ca2), &url, &token, &sim.url, "over-tls-3").await {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !accepted(&client(&ca1), &url, &token, &sim.url, "over-tls-4").await,
        "the old certificate is still served"
    );

    let activities = get_json(format!("{}/_sim/activities", sim.url)).await;
    let echoes: Vec<&str> = activities["activities"]
        .as_array()
        .expect("activities")
        .iter()
        .filter_map(|r| r["body"]["text"].as_str())
        .collect();
    for id in ["over-tls-1", "over-tls-2", "over-tls-3"] {
        assert_eq!(
            echoes.iter().filter(|t| **t == id).count(),
            1,
            "{id}: {echoes:?}"
        );
    }
}

#[test]
fn an_expired_or_unreadable_certificate_refuses_to_start_naming_the_file() {
    let dir = tempfile::tempdir().expect("dir");
    let (_, cert, key) = issue(2021);
    replace(&dir.path().join("tls.crt"), &cert);
    replace(&dir.path().join("tls.key"), &key);
    let config = dir.path().join("botfleet.toml");
    std::fs::write(&config, config_text(dir.path())).expect("config");
    for command in ["check-config", "serve"] {
        let out = std::process::Command::new(workspace_bin("botfleet"))
            .args([command, "--config"])
            .arg(&config)
            .env("BOTFLEET__SERVER__LISTEN", "127.0.0.1:0")
            .env("BOTFLEET__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
            .output()
            .expect("run botfleet");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(2), "{command}: {text}");
        assert!(text.contains("server.tls.cert_file"), "{command}: {text}");
        assert!(
            text.contains("tls.crt expired at 2021-01-01"),
            "{command}: {text}"
        );
    }
    std::fs::remove_file(dir.path().join("tls.key")).expect("remove key");
    replace(&dir.path().join("tls.crt"), &issue(2099).1);
    let out = std::process::Command::new(workspace_bin("botfleet"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run botfleet");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("server.tls.key_file") && text.contains("tls.key"),
        "{text}"
    );
}

fn config_text(dir: &Path) -> String {
    format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display()
    )
}
