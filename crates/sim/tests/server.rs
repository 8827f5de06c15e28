//! botfleet-sim's server half over real HTTP: a sim started in-process on a
//! free port, driven with reqwest, its tokens checked with `jsonwebtoken` (a
//! library the sim does not use itself).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use botfleet_sim::{start, BotRegistration, RunningSim, SimConfig};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const APP: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "s3cret~value";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CONV: &str = "a:1conv-personal";

/// Shared across tests (and runs) so that they do not each generate RSA keys.
fn key_file() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("botfleet-sim-test-keys.pem")
}

async fn sim() -> RunningSim {
    sim_with(vec![BotRegistration {
        app_id: APP.into(),
        secret: Some(SECRET.into()),
        ..BotRegistration::default()
    }])
    .await
}

async fn sim_with(bots: Vec<BotRegistration>) -> RunningSim {
    start(SimConfig {
        key_file: Some(key_file()),
        bots,
        ..SimConfig::default()
    })
    .await
    .expect("sim starts")
}

fn http() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn get(url: &str) -> Value {
    let r = http().get(url).send().await.expect("GET");
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.json().await.expect("json")
}

async fn post_json(url: &str, body: &Value) -> (StatusCode, Value) {
    let r = http().post(url).json(body).send().await.expect("POST");
    let status = r.status();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn mint(s: &RunningSim, body: Value) -> Vec<String> {
    let (status, v) = post_json(&format!("{}/_sim/tokens", s.url()), &body).await;
    assert_eq!(status, 200, "{v}");
    v["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_str().expect("str").to_owned())
        .collect()
}

async fn client_credentials(
    s: &RunningSim,
    tenant: &str,
    form: &[(&str, &str)],
) -> (StatusCode, Value) {
    let r = http()
        .post(s.token_url(tenant))
        .form(form)
        .send()
        .await
        .expect("token request");
    let status = r.status();
    (status, r.json().await.expect("json"))
}

async fn connector_token(s: &RunningSim) -> String {
    let (status, v) = client_credentials(
        s,
        "botframework.com",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("client_secret", SECRET),
            ("scope", "https://api.botframework.com/.default"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["access_token"].as_str().expect("access_token").to_owned()
}

async fn register(s: &RunningSim, conversations: Value) {
    let (status, v) = post_json(
        &format!("{}/_sim/conversations", s.url()),
        &json!({ "conversations": conversations }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

fn message(text: &str) -> Value {
    json!({ "type": "message", "text": text, "conversation": { "id": CONV, "tenantId": TENANT } })
}

/// `{serviceUrl}v3/conversations/{id}/...` with the id percent-encoded.
fn conversations_url(s: &RunningSim, parts: &[&str]) -> String {
    let mut url = format!("{}v3/conversations", s.service_url("amer"));
    for p in parts {
        url.push('/');
        url.push_str(&url::form_urlencoded::byte_serialize(p.as_bytes()).collect::<String>());
    }
    url
}

async fn send(s: &RunningSim, token: &str, conversation: &str, body: &Value) -> reqwest::Response {
    http()
        .post(conversations_url(s, &[conversation, "activities"]))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("send")
}

fn jwk_for<'a>(jwks: &'a Value, kid: &str) -> &'a Value {
    jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("kid {kid} not in {jwks}"))
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("header")
        .kid
        .expect("kid")
}

fn verify(token: &str, jwk: &Value, aud: &str, iss: &str) -> jsonwebtoken::errors::Result<Value> {
    let key = DecodingKey::from_rsa_components(
        jwk["n"].as_str().expect("n"),
        jwk["e"].as_str().expect("e"),
    )?;
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[aud]);
    v.set_issuer(&[iss]);
    v.leeway = 0;
    v.validate_nbf = true;
    jsonwebtoken::decode::<Value>(token, &key, &v).map(|d| d.claims)
}

#[tokio::test]
async fn openid_metadata_and_jwks_have_the_bot_framework_shape() {
    let s = sim().await;
    for path in [
        "/v1/.well-known/openidconfiguration",
        "/v1/.well-known/openid-configuration",
    ] {
        let doc = get(&format!("{}{path}", s.url())).await;
        assert_eq!(doc["issuer"], "https://api.botframework.com");
        assert_eq!(
            doc["id_token_signing_alg_values_supported"],
            json!(["RS256"])
        );
        assert_eq!(
            doc["jwks_uri"],
            format!("{}/v1/.well-known/keys", s.url()).as_str()
        );
    }
    let jwks = get(&format!("{}/v1/.well-known/keys", s.url())).await;
    assert_eq!(jwks, get(&format!("{}/v1/keys", s.url())).await);
    let keys = jwks["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2);
    for k in keys {
        assert_eq!(k["kty"], "RSA");
        assert_eq!(k["use"], "sig");
        assert_eq!(k["e"], "AQAB");
        let n = k["n"].as_str().expect("n");
        assert_eq!(URL_SAFE_NO_PAD.decode(n).expect("b64url n").len(), 256);
        // RFC 7638 thumbprint, computed independently here.
        let canonical = format!(r#"{{"e":"AQAB","kty":"RSA","n":"{n}"}}"#);
        let thumb = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        assert_eq!(k["kid"], thumb.as_str());
        assert!(k["endorsements"].is_array());
    }
    let teams: Vec<&Value> = keys
        .iter()
        .filter(|k| {
            k["endorsements"]
                .as_array()
                .expect("e")
                .contains(&json!("msteams"))
        })
        .collect();
    assert_eq!(teams.len(), 1, "exactly one msteams key: {jwks}");
    assert_eq!(teams[0]["kid"], s.sim().active_kid().as_str());
    assert_eq!(
        jwk_for(&jwks, &s.sim().unendorsed_kid())["endorsements"],
        json!(["webchat"])
    );
}

#[tokio::test]
async fn minted_channel_tokens_verify_against_the_published_jwk() {
    let s = sim().await;
    let jwks = get(&format!("{}/v1/.well-known/keys", s.url())).await;
    let service_url = s.service_url("amer");
    let tokens = mint(
        &s,
        json!({ "appId": APP, "serviceUrl": service_url, "count": 2 }),
    )
    .await;
    assert_eq!(tokens.len(), 2);
    let kid = kid_of(&tokens[0]);
    assert_eq!(kid, s.sim().active_kid());
    let claims = verify(
        &tokens[0],
        jwk_for(&jwks, &kid),
        APP,
        "https://api.botframework.com",
    )
    .expect("valid token");
    assert_eq!(claims["serviceurl"], service_url.as_str());
    assert!(claims["nbf"].as_i64().expect("nbf") <= claims["exp"].as_i64().expect("exp"));
    let jti = |t: &str| {
        verify(t, jwk_for(&jwks, &kid), APP, "https://api.botframework.com").expect("valid")["jti"]
            .clone()
    };
    assert_ne!(
        jti(&tokens[0]),
        jti(&tokens[1]),
        "each token has its own jti"
    );

    // Overrides: the serviceurl claim alone, audience, issuer.
    let t = &mint(&s, json!({ "appId": APP, "serviceUrl": service_url,
        "tokenServiceUrl": "https://evil.example/", "audience": "other-app", "issuer": "https://x" }))
    .await[0];
    let c = verify(t, jwk_for(&jwks, &kid), "other-app", "https://x").expect("overridden");
    assert_eq!(c["serviceurl"], "https://evil.example/");

    // Tampered tokens fail with a real JWT library too.
    let foreign = &mint(
        &s,
        json!({ "appId": APP, "serviceUrl": service_url, "key": "foreign" }),
    )
    .await[0];
    assert_eq!(
        kid_of(foreign),
        kid,
        "foreign token carries the published kid"
    );
    assert!(verify(
        foreign,
        jwk_for(&jwks, &kid),
        APP,
        "https://api.botframework.com"
    )
    .is_err());
    let expired = &mint(
        &s,
        json!({ "appId": APP, "serviceUrl": service_url, "expiredBySecs": 600 }),
    )
    .await[0];
    let err = verify(
        expired,
        jwk_for(&jwks, &kid),
        APP,
        "https://api.botframework.com",
    )
    .expect_err("expired");
    assert_eq!(
        *err.kind(),
        jsonwebtoken::errors::ErrorKind::ExpiredSignature
    );
    let early = &mint(
        &s,
        json!({ "appId": APP, "serviceUrl": service_url, "notBeforeInSecs": 600 }),
    )
    .await[0];
    let err = verify(
        early,
        jwk_for(&jwks, &kid),
        APP,
        "https://api.botframework.com",
    )
    .expect_err("not yet valid");
    assert_eq!(
        *err.kind(),
        jsonwebtoken::errors::ErrorKind::ImmatureSignature
    );
    let unendorsed = &mint(
        &s,
        json!({ "appId": APP, "serviceUrl": service_url, "key": "unendorsed" }),
    )
    .await[0];
    let ukid = kid_of(unendorsed);
    assert_eq!(ukid, s.sim().unendorsed_kid());
    verify(
        unendorsed,
        jwk_for(&jwks, &ukid),
        APP,
        "https://api.botframework.com",
    )
    .expect("validly signed by a key without the msteams endorsement");

    // Bad requests are refused with a reason.
    let (status, v) = post_json(
        &format!("{}/_sim/tokens", s.url()),
        &json!({ "appId": APP }),
    )
    .await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("serviceUrl"));
    let (status, _) = post_json(
        &format!("{}/_sim/tokens", s.url()),
        &json!({ "appId": APP, "bogus": 1 }),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn token_endpoint_checks_credentials_and_counts_requests() {
    let s = sim_with(vec![
        BotRegistration {
            app_id: APP.into(),
            secret: Some(SECRET.into()),
            ..BotRegistration::default()
        },
        BotRegistration::parse_flag(&format!("single-tenant-app:pw:{TENANT}")).expect("flag"),
    ])
    .await;
    let jwks = get(&format!("{}/v1/.well-known/keys", s.url())).await;
    let form = |id: &'static str, secret: &'static str| {
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
            ("scope", "https://api.botframework.com/.default"),
        ]
    };

    let (status, v) = client_credentials(&s, "botframework.com", &form(APP, SECRET)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);
    assert_eq!(v["ext_expires_in"], 3600);
    let token = v["access_token"].as_str().expect("token");
    let claims = verify(
        token,
        jwk_for(&jwks, &kid_of(token)),
        "https://api.botframework.com",
        "https://sts.windows.net/d6d49420-f39b-4df7-a1dc-d59a935871db/",
    )
    .expect("access token verifies");
    assert_eq!(claims["appid"], APP);
    assert_eq!(claims["azp"], APP);
    assert_eq!(claims["tid"], "d6d49420-f39b-4df7-a1dc-d59a935871db");

    let (status, v) = client_credentials(&s, "botframework.com", &form(APP, "wrong")).await;
    assert_eq!(status, 401);
    assert_eq!(v["error"], "invalid_client");
    assert_eq!(v["error_codes"], json!([7000215]));
    assert!(v["error_description"]
        .as_str()
        .expect("description")
        .starts_with("AADSTS7000215: Invalid client secret provided."));
    for field in ["timestamp", "trace_id", "correlation_id"] {
        assert!(v[field].is_string(), "{field} in {v}");
    }

    let (status, v) = client_credentials(&s, "botframework.com", &form("nobody", "x")).await;
    assert_eq!(status, 400);
    assert_eq!(v["error_codes"], json!([700016]));

    let mut bad_grant = form(APP, SECRET);
    bad_grant[0].1 = "password";
    let (status, v) = client_credentials(&s, "botframework.com", &bad_grant).await;
    assert_eq!(
        (status.as_u16(), v["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let mut bad_scope = form(APP, SECRET);
    bad_scope[3].1 = "https://api.botframework.com";
    let (status, v) = client_credentials(&s, "botframework.com", &bad_scope).await;
    assert_eq!(
        (status.as_u16(), v["error"].as_str()),
        (400, Some("invalid_scope"))
    );

    // Single-tenant: only its own tenant's endpoint; multi-tenant: only botframework.com.
    let (status, v) =
        client_credentials(&s, "botframework.com", &form("single-tenant-app", "pw")).await;
    assert_eq!(
        (status.as_u16(), &v["error_codes"]),
        (400, &json!([700016]))
    );
    let (status, v) = client_credentials(&s, TENANT, &form("single-tenant-app", "pw")).await;
    assert_eq!(status, 200, "{v}");
    let t = v["access_token"].as_str().expect("token");
    let claims = verify(
        t,
        jwk_for(&jwks, &kid_of(t)),
        "https://api.botframework.com",
        &format!("https://sts.windows.net/{TENANT}/"),
    )
    .expect("single-tenant token");
    assert_eq!(claims["tid"], TENANT);
    let (status, _) = client_credentials(&s, TENANT, &form(APP, SECRET)).await;
    assert_eq!(status, 400);

    let counts = get(&format!("{}/_sim/token-requests", s.url())).await;
    assert_eq!(
        counts["byClient"][APP],
        json!({ "total": 5, "ok": 1, "rejected": 4 })
    );
    assert_eq!(counts["byClient"]["single-tenant-app"]["total"], 2);
    assert_eq!(counts["total"], 8);
    let wrong = counts["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .find(|r| r["status"] == 401)
        .expect("the wrong-secret request");
    assert_eq!(wrong["error"], "AADSTS7000215");
    assert_eq!(wrong["clientId"], APP);
    let only = get(&format!("{}/_sim/token-requests?clientId=nobody", s.url())).await;
    assert_eq!(only["requests"].as_array().expect("list").len(), 1);
}

#[tokio::test]
async fn connector_authenticates_records_and_answers_like_teams() {
    let s = sim().await;
    let conv = "19:abc@thread.tacv2;messageid=1700000000000";
    register(
        &s,
        json!([
            { "id": CONV, "tenantId": TENANT, "members": [{ "id": "29:user", "aadObjectId": "aad-1", "name": "U" }] },
            { "id": conv, "tenantId": TENANT }
        ]),
    )
    .await;
    let token = connector_token(&s).await;

    let r = send(&s, &token, CONV, &message("hello")).await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // Encoded `:` `;` `@` `=` in the path are decoded.
    let r = send(&s, &token, conv, &message("in a channel thread")).await;
    assert_eq!(r.status(), 201);

    let reply = http()
        .post(conversations_url(&s, &[CONV, "activities", "inbound-1"]))
        .bearer_auth(&token)
        .json(&message("reply"))
        .send()
        .await
        .expect("reply");
    assert_eq!(reply.status(), 201);
    let update = http()
        .put(conversations_url(&s, &[CONV, "activities", &id]))
        .bearer_auth(&token)
        .json(&message("edited"))
        .send()
        .await
        .expect("update");
    assert_eq!(update.status(), 200);
    assert_eq!(
        update.json::<Value>().await.expect("json")["id"],
        id.as_str()
    );
    let delete = http()
        .delete(conversations_url(&s, &[CONV, "activities", &id]))
        .bearer_auth(&token)
        .send()
        .await
        .expect("delete");
    assert_eq!(delete.status(), 200);
    let missing = http()
        .put(conversations_url(&s, &[CONV, "activities", "123"]))
        .bearer_auth(&token)
        .json(&message("x"))
        .send()
        .await
        .expect("update unknown");
    assert_eq!(missing.status(), 404);

    let members: Value = http()
        .get(conversations_url(&s, &[CONV, "members"]))
        .bearer_auth(&token)
        .send()
        .await
        .expect("members")
        .json()
        .await
        .expect("json");
    assert_eq!(members[0]["id"], "29:user");
    let paged: Value = http()
        .get(format!(
            "{}?pageSize=10",
            conversations_url(&s, &[CONV, "pagedmembers"])
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("paged")
        .json()
        .await
        .expect("json");
    assert_eq!(paged["members"][0]["aadObjectId"], "aad-1");
    assert!(paged.get("continuationToken").is_none());
    let member = http()
        .get(conversations_url(&s, &[CONV, "members", "aad-1"]))
        .bearer_auth(&token)
        .send()
        .await
        .expect("member");
    assert_eq!(member.status(), 200);

    // What Teams rejects.
    let foreign = &mint(
        &s,
        json!({ "appId": APP, "kind": "connector", "key": "foreign" }),
    )
    .await[0];
    let expired = &mint(
        &s,
        json!({ "appId": APP, "kind": "connector", "expiredBySecs": 600 }),
    )
    .await[0];
    let channel_token = &mint(
        &s,
        json!({ "appId": APP, "serviceUrl": s.service_url("amer") }),
    )
    .await[0];
    let fine = &mint(&s, json!({ "appId": APP, "kind": "connector" })).await[0];
    let graph = &mint(
        &s,
        json!({ "appId": APP, "kind": "connector", "audience": "https://graph.microsoft.com" }),
    )
    .await[0];
    for (what, t) in [
        ("foreign signature", foreign.as_str()),
        ("expired", expired),
        ("channel token", channel_token),
        ("wrong audience", graph),
    ] {
        let r = send(&s, t, CONV, &message("x")).await;
        assert_eq!(r.status(), 401, "{what}");
        let body: Value = r.json().await.expect("ErrorResponse");
        assert_eq!(body["error"]["code"], "Unauthorized", "{what}");
    }
    assert_eq!(send(&s, fine, CONV, &message("minted")).await.status(), 201);
    let r = http()
        .post(conversations_url(&s, &[CONV, "activities"]))
        .json(&message("no token"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);

    let r = send(&s, &token, "a:unknown", &message("x")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"]["code"],
        "ConversationNotFound"
    );
    let r = http()
        .post(conversations_url(&s, &[CONV, "activities"]))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"]["code"],
        "BadSyntax"
    );

    // Records: accepted calls by default, every call with all=true.
    let recorded = get(&format!(
        "{}/_sim/activities?conversation={}",
        s.url(),
        url::form_urlencoded::byte_serialize(CONV.as_bytes()).collect::<String>()
    ))
    .await;
    let list = recorded["activities"].as_array().expect("list");
    let ops: Vec<&str> = list
        .iter()
        .map(|r| r["operation"].as_str().expect("op"))
        .collect();
    assert_eq!(
        ops,
        [
            "send",
            "reply",
            "update",
            "delete",
            "members",
            "pagedMembers",
            "member",
            "send"
        ]
    );
    assert_eq!(list[0]["body"]["text"], "hello");
    assert_eq!(list[0]["appId"], APP);
    assert_eq!(list[0]["activityId"], id.as_str());
    assert_eq!(list[0]["tenantId"], TENANT);
    assert_eq!(list[0]["method"], "POST");
    assert_eq!(list[1]["replyToId"], "inbound-1");
    let all = get(&format!(
        "{}/_sim/activities?all=true&operation=send",
        s.url()
    ))
    .await;
    let statuses: Vec<u64> = all["activities"]
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["status"].as_u64().expect("status"))
        .collect();
    assert_eq!(statuses, [201, 201, 201, 404, 400]);
    let since = list[5]["seq"].as_u64().expect("seq");
    let newer = get(&format!("{}/_sim/activities?since={since}", s.url())).await;
    assert_eq!(newer["activities"].as_array().expect("list").len(), 2);

    let stats = get(&format!("{}/_sim/stats", s.url())).await;
    assert_eq!(stats["stats"]["authRejected"], 5);
    assert_eq!(stats["stats"]["unknownConversation"], 1);

    s.sim().reset();
    let stats = get(&format!("{}/_sim/stats", s.url())).await;
    assert_eq!(stats["stats"]["connectorRequests"], 0);
    assert_eq!(stats["conversations"], 2, "reset keeps conversations");
}

#[tokio::test]
async fn rate_limits_throttle_bursts_but_never_paced_senders() {
    let s = sim_with(vec![
        BotRegistration::parse_flag(&format!("{APP}:{SECRET}")).expect("flag"),
        BotRegistration::parse_flag("bot-b:b").expect("flag"),
        BotRegistration::parse_flag("bot-c:c").expect("flag"),
    ])
    .await;
    let burst = "a:burst";
    let paced = "a:paced";
    let mut convs = vec![
        json!({ "id": burst, "tenantId": TENANT }),
        json!({ "id": paced, "tenantId": TENANT }),
    ];
    convs.extend((0..51).map(|i| json!({ "id": format!("a:t{i}"), "tenantId": "tenant-rps" })));
    convs.push(json!({ "id": "19:shared@thread.v2", "tenantId": TENANT }));
    register(&s, Value::Array(convs)).await;
    let token = connector_token(&s).await;

    // 9 quick sends to one conversation: the 8th breaks 7 per second.
    let mut throttled = Vec::new();
    for i in 0..9 {
        let r = send(&s, &token, burst, &message(&format!("burst {i}"))).await;
        if r.status() == 429 {
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("seconds");
            assert!((1..=2).contains(&retry), "Retry-After {retry}");
            let body: Value = r.json().await.expect("json");
            assert_eq!(body["error"]["code"], "Throttled");
            throttled.push(i);
        } else {
            assert_eq!(r.status(), 201);
        }
    }
    assert_eq!(throttled, [7, 8]);
    let v = get(&format!("{}/_sim/violations", s.url())).await;
    assert_eq!(v["total"], 2);
    let first = &v["violations"][0];
    assert_eq!(first["scope"], "perBotPerThread");
    assert_eq!(first["class"], "send");
    assert_eq!(first["windowSecs"], 1);
    assert_eq!(first["maxRequests"], 7);
    assert_eq!(first["appId"], APP);
    assert_eq!(first["conversationId"], burst);
    assert_eq!(first["tenantId"], TENANT);

    // A sender that keeps to the limits: bursts of 7, the next burst after the
    // 2 s window has passed, gets no 429.
    for round in 0..2 {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(2100)).await;
        }
        for i in 0..7 {
            let r = send(&s, &token, paced, &message(&format!("paced {round}/{i}"))).await;
            assert_eq!(r.status(), 201, "paced send {round}/{i}");
        }
    }

    // Per app per tenant: 50 requests per second across conversations.
    // Concurrent, so that all 51 surely land within one second.
    let fan_out = (0..51).map(|i| {
        let (s, token) = (&s, &token);
        async move {
            send(s, token, &format!("a:t{i}"), &message("fan-out"))
                .await
                .status()
                .as_u16()
        }
    });
    let statuses = futures::future::join_all(fan_out).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        50,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "{statuses:?}"
    );

    // Per thread, all bots: 14 per second.
    let mut tokens = vec![token.clone()];
    for (id, secret) in [("bot-b", "b"), ("bot-c", "c")] {
        let (_, v) = client_credentials(
            &s,
            "botframework.com",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", secret),
                ("scope", "https://api.botframework.com/.default"),
            ],
        )
        .await;
        tokens.push(v["access_token"].as_str().expect("token").to_owned());
    }
    let mut statuses = Vec::new();
    for i in 0..15 {
        let t = &tokens[i / 7];
        statuses.push(
            send(&s, t, "19:shared@thread.v2", &message("x"))
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses[..14], [201; 14]);
    assert_eq!(statuses[14], 429);

    let v = get(&format!("{}/_sim/violations", s.url())).await;
    let scopes: Vec<&str> = v["violations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|x| x["scope"].as_str().expect("scope"))
        .collect();
    assert_eq!(
        scopes,
        [
            "perBotPerThread",
            "perBotPerThread",
            "perAppPerTenant",
            "perThread"
        ]
    );
    assert!(v["violations"]
        .as_array()
        .expect("list")
        .iter()
        .all(|x| x["conversationId"] != paced));
}

#[tokio::test]
async fn faults_are_injected_deterministically() {
    let s = sim().await;
    register(
        &s,
        json!([{ "id": CONV, "tenantId": TENANT }, { "id": "a:blocked", "tenantId": TENANT }]),
    )
    .await;
    let token = connector_token(&s).await;
    let faults_url = format!("{}/_sim/faults", s.url());

    // failNext, then the conversation fault, then ratios.
    let (status, v) = post_json(
        &faults_url,
        &json!({
            "failNext": 2, "failNextStatus": 500,
            "conversations": [{ "conversationId": "a:blocked", "status": 403, "code": "ConversationBlockedByUser" }],
            "errorRatio": 0.5, "errorStatus": 502
        }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["failNextRemaining"], 2);
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(
            send(&s, &token, CONV, &message("x"))
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(got, [500, 500, 201, 502, 201, 502]);
    let r = send(&s, &token, "a:blocked", &message("x")).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"]["code"],
        "ConversationBlockedByUser"
    );

    // Injected 429s carry Retry-After and are not limit violations.
    let (status, _) = post_json(
        &faults_url,
        &json!({ "throttleRatio": 1.0, "retryAfterSecs": 7 }),
    )
    .await;
    assert_eq!(status, 200);
    let r = send(&s, &token, CONV, &message("x")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    assert_eq!(
        get(&format!("{}/_sim/violations", s.url())).await["total"],
        0
    );

    // Latency.
    post_json(&faults_url, &json!({ "latencyMs": 300 })).await;
    let t0 = Instant::now();
    assert_eq!(send(&s, &token, CONV, &message("slow")).await.status(), 201);
    assert!(t0.elapsed() >= Duration::from_millis(300));

    // The token endpoint goes down, and comes back when faults are cleared.
    post_json(&faults_url, &json!({ "tokenEndpointDown": true })).await;
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", APP),
        ("client_secret", SECRET),
        ("scope", "https://api.botframework.com/.default"),
    ];
    let (status, _) = client_credentials(&s, "botframework.com", &form).await;
    assert_eq!(status, 503);
    let cleared: Value = http()
        .delete(&faults_url)
        .send()
        .await
        .expect("delete")
        .json()
        .await
        .expect("json");
    assert_eq!(cleared["faults"]["tokenEndpointDown"], false);
    assert_eq!(
        client_credentials(&s, "botframework.com", &form).await.0,
        200
    );
    assert_eq!(get(&faults_url).await["faults"]["latencyMs"], 0);

    // Unusable fault settings are refused with the field named.
    let (status, v) = post_json(&faults_url, &json!({ "errorRatio": 2 })).await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("errorRatio"));
    let (status, _) = post_json(&faults_url, &json!({ "latencyMS": 5 })).await;
    assert_eq!(status, 400, "unknown fields are refused");
}

#[tokio::test]
async fn create_conversation_follows_teams_rules() {
    let s = sim().await;
    let token = connector_token(&s).await;
    let create = |body: Value| {
        let s = &s;
        let token = token.clone();
        async move {
            let r = http()
                .post(conversations_url(s, &[]))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .expect("create");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let one_to_one =
        json!({ "isGroup": false, "members": [{ "id": "29:alice" }], "tenantId": TENANT });
    let (status, v) = create(one_to_one.clone()).await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("a:"), "{id}");
    assert!(v.get("activityId").is_none());
    let (status, again) = create(one_to_one).await;
    assert_eq!(
        (status, again["id"].as_str()),
        (201, Some(id.as_str())),
        "idempotent"
    );
    // With the tenant in channelData (the official sample's shape) and a first message.
    let (status, v) = create(json!({
        "bot": { "id": format!("28:{APP}") },
        "members": [{ "id": "29:bob" }],
        "channelData": { "tenant": { "id": TENANT } },
        "activity": { "type": "message", "text": "welcome" }
    }))
    .await;
    assert_eq!(status, 201, "{v}");
    let bob = v["id"].as_str().expect("id").to_owned();
    assert_ne!(bob, id);

    // The created conversation is known: sends work and members list the user.
    assert_eq!(
        send(&s, &token, &id, &message("hi alice")).await.status(),
        201
    );
    let members: Value = http()
        .get(conversations_url(&s, &[&id, "members"]))
        .bearer_auth(&token)
        .send()
        .await
        .expect("members")
        .json()
        .await
        .expect("json");
    assert_eq!(members, json!([{ "id": "29:alice" }]));

    for (what, body) in [
        ("no tenant", json!({ "members": [{ "id": "29:alice" }] })),
        (
            "two members",
            json!({ "members": [{ "id": "29:a" }, { "id": "29:b" }], "tenantId": TENANT }),
        ),
        ("no members", json!({ "tenantId": TENANT })),
        (
            "group chat",
            json!({ "isGroup": true, "members": [{ "id": "29:a" }, { "id": "29:b" }], "tenantId": TENANT }),
        ),
        (
            "thread without activity",
            json!({ "isGroup": true, "tenantId": TENANT, "channelData": { "channel": { "id": "19:c@thread.tacv2" } } }),
        ),
    ] {
        let (status, v) = create(body).await;
        assert_eq!(status, 400, "{what}: {v}");
        assert_eq!(v["error"]["code"], "BadSyntax", "{what}");
    }

    let (status, v) = create(json!({
        "isGroup": true,
        "tenantId": TENANT,
        "channelData": { "channel": { "id": "19:c@thread.tacv2" } },
        "activity": { "type": "message", "text": "new thread" }
    }))
    .await;
    assert_eq!(status, 201, "{v}");
    let activity_id = v["activityId"].as_str().expect("activityId");
    assert_eq!(
        v["id"],
        format!("19:c@thread.tacv2;messageid={activity_id}").as_str()
    );

    let created = get(&format!("{}/_sim/activities?operation=create", s.url())).await;
    let list = created["activities"].as_array().expect("list");
    assert_eq!(list.len(), 4);
    assert_eq!(list[2]["body"]["activity"]["text"], "welcome");
}

#[tokio::test]
async fn create_conversation_needs_the_app_installed_once_installations_are_registered() {
    let s = sim().await;
    let token = connector_token(&s).await;
    let create = |body: Value| {
        let s = &s;
        let token = token.clone();
        async move {
            let r = http()
                .post(conversations_url(s, &[]))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .expect("create");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let one_to_one = |user: &str, tenant: &str| json!({ "isGroup": false, "members": [{ "id": user }], "tenantId": tenant });
    let (status, v) = post_json(
        &format!("{}/_sim/installations", s.url()),
        &json!({ "appId": APP, "tenantId": TENANT, "users": ["29:installed"] }),
    )
    .await;
    assert_eq!((status.as_u16(), &v["installed"]), (200, &json!(1)), "{v}");
    let (status, v) = create(one_to_one("29:installed", TENANT)).await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = create(one_to_one("29:stranger", TENANT)).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["code"], "ForbiddenOperationException");
    // Tenants without registered installations still create for anyone.
    let (status, v) = create(one_to_one("29:stranger", "other-tenant")).await;
    assert_eq!(status, 201, "{v}");

    // Channel threads: an unknown channel of a checked tenant is 404, a channel
    // of other bots is 403, a channel the bot is in gets a new thread.
    register(
        &s,
        json!([
            { "id": "19:ours@thread.tacv2", "tenantId": TENANT, "appIds": [APP] },
            { "id": "19:theirs@thread.tacv2", "tenantId": TENANT, "appIds": ["someone-else"] }
        ]),
    )
    .await;
    let thread = |channel: &str| {
        json!({
            "isGroup": true,
            "tenantId": TENANT,
            "channelData": { "channel": { "id": channel } },
            "activity": { "type": "message", "text": "news" }
        })
    };
    let (status, v) = create(thread("19:unknown@thread.tacv2")).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (404, &json!("ConversationNotFound")),
        "{v}"
    );
    let (status, v) = create(thread("19:theirs@thread.tacv2")).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (403, &json!("BotNotInConversationRoster")),
        "{v}"
    );
    let (status, v) = create(thread("19:ours@thread.tacv2")).await;
    assert_eq!(status, 201, "{v}");
    assert!(v["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("19:ours@thread.tacv2;messageid=")));

    let (status, _) = post_json(
        &format!("{}/_sim/installations", s.url()),
        &json!({ "appId": APP, "tenantId": "", "users": [] }),
    )
    .await;
    assert_eq!(status.as_u16(), 400);
}

#[tokio::test]
async fn key_rotation_keeps_old_keys_until_retired() {
    let s = sim().await;
    register(&s, json!([{ "id": CONV, "tenantId": TENANT }])).await;
    let old_kid = s.sim().active_kid();
    let old_token = connector_token(&s).await;
    let rotate_url = format!("{}/_sim/keys/rotate", s.url());

    let (status, v) = post_json(&rotate_url, &json!({ "retireOld": false })).await;
    assert_eq!(status, 200, "{v}");
    let new_kid = v["kid"].as_str().expect("kid").to_owned();
    assert_ne!(new_kid, old_kid);
    let jwks = get(&format!("{}/v1/.well-known/keys", s.url())).await;
    assert_eq!(jwk_for(&jwks, &new_kid)["endorsements"], json!(["msteams"]));
    jwk_for(&jwks, &old_kid);
    let fresh = &mint(
        &s,
        json!({ "appId": APP, "serviceUrl": s.service_url("amer") }),
    )
    .await[0];
    assert_eq!(kid_of(fresh), new_kid, "new tokens use the new key");
    assert_eq!(
        send(&s, &old_token, CONV, &message("old key"))
            .await
            .status(),
        201
    );

    let (status, v) = post_json(&rotate_url, &json!({ "retireOld": true })).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["retired"].as_array().expect("retired").len(), 2);
    let jwks = get(&format!("{}/v1/.well-known/keys", s.url())).await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid"))
        .collect();
    assert_eq!(kids.len(), 2, "active + unendorsed");
    assert!(!kids.contains(&old_kid.as_str()) && !kids.contains(&new_kid.as_str()));
    assert_eq!(
        send(&s, &old_token, CONV, &message("retired key"))
            .await
            .status(),
        401
    );
}

/// `withoutEndorsements`: the new active key is published with no
/// `endorsements` member at all, and tokens are signed with it.
#[tokio::test]
async fn a_key_can_be_published_without_an_endorsements_list() {
    let s = sim().await;
    let (status, v) = post_json(
        &format!("{}/_sim/keys/rotate", s.url()),
        &json!({ "withoutEndorsements": true }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["endorsementsListed"], false);
    let kid = v["kid"].as_str().expect("kid").to_owned();
    let jwks = get(&format!("{}/v1/.well-known/keys", s.url())).await;
    let jwk = jwk_for(&jwks, &kid);
    assert!(jwk.get("endorsements").is_none(), "{jwk}");
    assert_eq!(jwk["kty"], "RSA");
    let token = &mint(
        &s,
        json!({ "appId": APP, "serviceUrl": s.service_url("amer") }),
    )
    .await[0];
    assert_eq!(
        kid_of(token),
        kid,
        "tokens are signed with the unlisted key"
    );
    // The next ordinary rotation lists endorsements again.
    let (_, v) = post_json(&format!("{}/_sim/keys/rotate", s.url()), &json!({})).await;
    assert_eq!(v["endorsementsListed"], true);
}

fn assertion(key_pem: &str, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(key_pem.as_bytes()).expect("encoding key");
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).expect("sign")
}

#[tokio::test]
async fn certificate_federated_and_managed_identity_credentials() {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let s = sim().await;
    let cert_key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("keygen");
    let private_pem = cert_key
        .to_pkcs8_pem(LineEnding::LF)
        .expect("pem")
        .to_string();
    let public_pem = cert_key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    let (status, v) = post_json(
        &format!("{}/_sim/bots", s.url()),
        &json!({ "appId": "cert-app", "certificatePem": public_pem, "tenant": TENANT,
                 "federatedSubject": "system:serviceaccount:bots:cert-app" }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["credentials"], json!(["certificate", "federated"]));

    let token_url = s.token_url(TENANT);
    let now = botfleet_sim::time::now_secs();
    let good = json!({ "aud": token_url, "iss": "cert-app", "sub": "cert-app", "exp": now + 600, "nbf": now, "jti": "1" });
    let with_assertion = |a: String| {
        vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", "cert-app".to_owned()),
            ("scope", "https://api.botframework.com/.default".to_owned()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
            ),
            ("client_assertion", a),
        ]
    };
    let request = |form: Vec<(&'static str, String)>| {
        let url = token_url.clone();
        async move {
            let r = http().post(url).form(&form).send().await.expect("token");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("json"))
        }
    };
    let (status, v) = request(with_assertion(assertion(&private_pem, &good))).await;
    assert_eq!(status, 200, "{v}");

    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("https://elsewhere/token");
    let (status, v) = request(with_assertion(assertion(&private_pem, &wrong_aud))).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (401, Some("invalid_client")),
        "{v}"
    );
    let mut expired = good.clone();
    expired["exp"] = json!(now - 3600);
    expired["nbf"] = json!(now - 7200);
    let (status, v) = request(with_assertion(assertion(&private_pem, &expired))).await;
    assert_eq!((status, &v["error_codes"]), (401, &json!([700024])), "{v}");
    // A key the sim knows (its own signing key) but not registered for this app.
    let sim_keys = std::fs::read_to_string(key_file()).expect("key file");
    let end = "-----END PRIVATE KEY-----";
    let other_key = &sim_keys[..sim_keys.find(end).expect("pem") + end.len()];
    let (status, v) = request(with_assertion(assertion(other_key, &good))).await;
    assert_eq!((status, &v["error_codes"]), (401, &json!([700027])), "{v}");

    // Workload identity: a token the sim issued for the bot's federated subject.
    let (_, fed) = post_json(
        &format!("{}/_sim/federated-token", s.url()),
        &json!({ "subject": "system:serviceaccount:bots:cert-app" }),
    )
    .await;
    let (status, v) = request(with_assertion(
        fed["token"].as_str().expect("token").to_owned(),
    ))
    .await;
    assert_eq!(status, 200, "{v}");
    let (_, fed) = post_json(
        &format!("{}/_sim/federated-token", s.url()),
        &json!({ "subject": "system:serviceaccount:bots:intruder" }),
    )
    .await;
    let (status, v) = request(with_assertion(
        fed["token"].as_str().expect("token").to_owned(),
    ))
    .await;
    assert_eq!((status, &v["error_codes"]), (401, &json!([70021])), "{v}");

    // Managed identity endpoints.
    let imds = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://api.botframework.com&client_id=cert-app",
        s.url()
    );
    let r = http()
        .get(&imds)
        .header("Metadata", "true")
        .send()
        .await
        .expect("imds");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["client_id"], "cert-app");
    assert!(v["expires_on"].is_string());
    let token = v["access_token"].as_str().expect("token").to_owned();
    register(&s, json!([{ "id": CONV, "tenantId": TENANT }])).await;
    assert_eq!(
        send(&s, &token, CONV, &message("via managed identity"))
            .await
            .status(),
        201
    );
    let r = http().get(&imds).send().await.expect("imds");
    assert_eq!(r.status(), 400, "Metadata header required");

    let msi = format!(
        "{}/msi/token?api-version=2019-08-01&resource=https://api.botframework.com&client_id=cert-app",
        s.url()
    );
    let r = http()
        .get(&msi)
        .header("X-IDENTITY-HEADER", "sim-identity-header")
        .send()
        .await
        .expect("msi");
    assert_eq!(r.status(), 200);
    let r = http()
        .get(&msi)
        .header("X-IDENTITY-HEADER", "nope")
        .send()
        .await
        .expect("msi");
    assert_eq!(r.status(), 401);

    let counts = get(&format!(
        "{}/_sim/token-requests?clientId=cert-app",
        s.url()
    ))
    .await;
    let creds: Vec<&str> = counts["requests"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|r| r["status"] == 200)
        .map(|r| r["credential"].as_str().expect("credential"))
        .collect();
    assert_eq!(
        creds,
        [
            "certificate",
            "federated",
            "managedIdentity",
            "managedIdentity"
        ]
    );
}

#[test]
fn serve_prints_a_ready_line_and_answers() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let ready_file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sim-ready.json");
    let _ = std::fs::remove_file(&ready_file);
    let mut child = Command::new(env!("CARGO_BIN_EXE_botfleet-sim"))
        .args(["serve", "--port", "0", "--bot", "cli-app:pw", "--key-file"])
        .arg(key_file())
        .arg("--ready-file")
        .arg(&ready_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn botfleet-sim serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    let result = std::panic::catch_unwind(|| {
        assert!(
            line.starts_with(r#"{"ready":true,"url":"http://127.0.0.1:"#),
            "{line}"
        );
        let ready: Value = serde_json::from_str(&line).expect("json");
        let file: Value =
            serde_json::from_str(&std::fs::read_to_string(&ready_file).expect("ready file"))
                .expect("json");
        assert_eq!(file, ready);
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let url = ready["url"].as_str().expect("url");
            let health = get(&format!("{url}/_sim/health")).await;
            assert_eq!(health["ok"], true);
            assert_eq!(health["kid"], ready["kid"]);
        });
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
