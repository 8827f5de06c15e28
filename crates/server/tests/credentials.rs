//! Every outbound credential kind, end to end against the sim's token endpoints:
//! the echo reaches the Bot Connector with a token obtained that way. And two
//! replicas sharing Redis share one token.

mod common;

use botfleet_store::redis_pool::testing;
use common::*;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{json, Value};

const CERT_APP: &str = "00000000-0000-4000-8000-00000000ce47";
const MI_APP: &str = "00000000-0000-4000-8000-0000000000f1";
const WI_APP: &str = "00000000-0000-4000-8000-00000000a1c5";

/// Sends one message to `bot` as Teams would and returns what the connector got
/// from `app` for that conversation, and the credential kinds of its token requests.
async fn echo_round_trip(
    sim: &str,
    bf: &Botfleet,
    app: &str,
    conv: &str,
) -> (Vec<String>, Vec<String>) {
    post_json(
        format!("{sim}/_sim/conversations"),
        json!({"conversations": [{"id": conv, "tenantId": TENANT}]}),
    )
    .await;
    let token = mint(sim, json!({"appId": app, "serviceUrl": service_url(sim)})).await;
    let mut msg = message(sim, conv, "1", "over the wire");
    msg["recipient"]["id"] = json!(format!("28:{app}"));
    let got = post_activity(&format!("{}/api/messages", bf.url()), Some(&token), &msg).await;
    assert_eq!(got.0, 200, "{}", got.1);
    let acts = get_json(format!("{sim}/_sim/activities?conversation={conv}")).await;
    let texts = acts["activities"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|r| r["appId"] == app)
        .filter_map(|r| r["body"]["text"].as_str().map(str::to_owned))
        .collect();
    let reqs = get_json(format!("{sim}/_sim/token-requests?clientId={app}")).await;
    let kinds = reqs["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter(|r| r["status"] == 200)
        .filter_map(|r| r["credential"].as_str().map(str::to_owned))
        .collect();
    (texts, kinds)
}

fn bot(id: &str, app: &str, credential: &str) -> String {
    format!(
        r#"
[[bots]]
id = "{id}"
app_id = "{app}"
cloud = "sim"
credential = {credential}
handler = {{ kind = "echo" }}
"#
    )
}

#[actix_web::test]
async fn certificate_workload_identity_and_managed_identity() {
    let sim = start_sim();
    let dir = tempfile::tempdir().expect("temp dir");

    // certificate: the sim knows the public key; botfleet signs assertions with the private key
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("key");
    let key_file = dir.path().join("bot.key.pem");
    std::fs::write(
        &key_file,
        key.to_pkcs8_pem(LineEnding::LF).expect("pem").as_bytes(),
    )
    .expect("write key");
    let public = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("public pem");
    post_json(
        format!("{}/_sim/bots", sim.url),
        json!({"appId": CERT_APP, "certificatePem": public}),
    )
    .await;

    // workload identity: a federated token the sim issued, in the file AKS would project
    let federated = post_json(
        format!("{}/_sim/federated-token", sim.url),
        json!({"subject": "system:serviceaccount:bots:botfleet"}),
    )
    .await;
    post_json(
        format!("{}/_sim/bots", sim.url),
        json!({"appId": WI_APP, "federatedSubject": "system:serviceaccount:bots:botfleet"}),
    )
    .await;
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, federated["token"].as_str().expect("token")).expect("write token");

    // managed identity: IMDS on the sim
    post_json(format!("{}/_sim/bots", sim.url), json!({"appId": MI_APP})).await;

    let config = format!(
        "{}{}{}{}",
        sim_cloud(&sim.url),
        bot(
            "cert",
            CERT_APP,
            &format!(
                r#"{{ kind = "certificate", private_key_file = "{}" }}"#,
                key_file.display()
            )
        ),
        bot(
            "wi",
            WI_APP,
            &format!(
                r#"{{ kind = "workload-identity", token_file = "{}" }}"#,
                token_file.display()
            )
        ),
        bot(
            "mi",
            MI_APP,
            &format!(
                r#"{{ kind = "managed-identity", endpoint = "{}/metadata/identity/oauth2/token" }}"#,
                sim.url
            )
        ),
    );
    let bf = start_botfleet(&config);

    let (texts, kinds) = echo_round_trip(&sim.url, &bf, CERT_APP, "a:cert").await;
    assert_eq!(texts, vec!["over the wire".to_owned()]);
    assert_eq!(kinds, vec!["certificate".to_owned()]);

    let (texts, kinds) = echo_round_trip(&sim.url, &bf, WI_APP, "a:wi").await;
    assert_eq!(texts, vec!["over the wire".to_owned()]);
    assert_eq!(kinds, vec!["federated".to_owned()]);

    let (texts, kinds) = echo_round_trip(&sim.url, &bf, MI_APP, "a:mi").await;
    assert_eq!(texts, vec!["over the wire".to_owned()]);
    assert_eq!(kinds, vec!["managedIdentity".to_owned()]);
}

#[actix_web::test]
async fn a_missing_key_file_stops_start_up_with_its_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nope.pem");
    let config = format!(
        "{}{}",
        sim_cloud("http://127.0.0.1:9"),
        bot(
            "cert",
            CERT_APP,
            &format!(
                r#"{{ kind = "certificate", private_key_file = "{}" }}"#,
                missing.display()
            )
        ),
    );
    let file = dir.path().join("botfleet.toml");
    std::fs::write(&file, config).expect("write");
    let out = std::process::Command::new(workspace_bin("botfleet"))
        .args(["serve", "--config"])
        .arg(&file)
        .env("BOTFLEET__SERVER__LISTEN", "127.0.0.1:0")
        .output()
        .expect("run botfleet");
    // An invalid configuration: exit 2, the key path and the file named.
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nope.pem") && stderr.contains("`bots[0].credential.private_key_file`"),
        "{stderr}"
    );
}

#[actix_web::test]
async fn two_replicas_sharing_redis_share_one_token() {
    let sim = start_sim();
    let prefix = testing::unique_prefix("replicas");
    let config = format!(
        r#"
[store]
backend = "redis"
redis_urls = ["{redis}"]
key_prefix = "{prefix}"
{cloud}
[[bots]]
id = "echo"
app_id = "{APP_ID}"
app_password = "{APP_SECRET}"
cloud = "sim"
handler = {{ kind = "echo" }}
"#,
        redis = testing::single_url(),
        cloud = sim_cloud(&sim.url),
    );
    let a = start_botfleet(&config);
    let b = start_botfleet(&config);
    let convs: Vec<Value> = (0..10)
        .map(|i| json!({"id": format!("a:rep-{i}"), "tenantId": TENANT}))
        .collect();
    post_json(
        format!("{}/_sim/conversations", sim.url),
        json!({ "conversations": convs }),
    )
    .await;
    let token = mint(
        &sim.url,
        json!({"appId": APP_ID, "serviceUrl": service_url(&sim.url)}),
    )
    .await;
    for i in 0..10 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let msg = message(&sim.url, &format!("a:rep-{i}"), &format!("r{i}"), "hi");
        let got = post_activity(
            &format!("{}/api/messages", replica.url()),
            Some(&token),
            &msg,
        )
        .await;
        assert_eq!(got.0, 200, "{}", got.1);
    }
    let reqs = get_json(format!("{}/_sim/token-requests?clientId={APP_ID}", sim.url)).await;
    let ok = reqs["requests"]
        .as_array()
        .map_or(0, |r| r.iter().filter(|r| r["status"] == 200).count());
    assert_eq!(ok, 1, "two replicas asked for {ok} tokens: {reqs}");
    let acts = get_json(format!("{}/_sim/activities", sim.url)).await;
    assert_eq!(acts["activities"].as_array().map_or(0, Vec::len), 10);
}
