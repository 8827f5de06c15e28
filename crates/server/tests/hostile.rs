//! Property tests of the messaging endpoint: random bytes, mutated real
//! activities and mutated tokens, at the body parser (in process) and through
//! HTTP at a running `botfleet serve` (a process, tokens signed by
//! `botfleet-sim`). Whatever comes in: no panic, no 5xx, and every refusal is a
//! problem+json answer whose type is a row of the problem table with that row's
//! status.

mod common;

use std::time::Duration;

use botfleet_server::ingress_http::{parse_activity, MAX_JSON_DEPTH};
use botfleet_server::problem::{ProblemType, TABLE, TYPE_PREFIX};
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

/// Real Teams activities (the protocol crate's fixtures) to mutate.
const FIXTURES: [&str; 8] = [
    include_str!("../../protocol/tests/fixtures/personal_message.json"),
    include_str!("../../protocol/tests/fixtures/channel_mention.json"),
    include_str!("../../protocol/tests/fixtures/conversation_update_bot_added.json"),
    include_str!("../../protocol/tests/fixtures/conversation_update_bot_removed.json"),
    include_str!("../../protocol/tests/fixtures/installation_update_add.json"),
    include_str!("../../protocol/tests/fixtures/installation_update_remove.json"),
    include_str!("../../protocol/tests/fixtures/invoke_adaptive_card_action.json"),
    include_str!("../../protocol/tests/fixtures/message_reaction.json"),
];

const BODY_PROBLEMS: [&str; 3] = ["malformed_json", "json_too_deep", "invalid_activity"];

/// Any JSON value, a few levels deep, with the strings Teams uses.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        ".{0,24}".prop_map(Value::String),
        Just(json!("msteams")),
        Just(json!("message")),
        Just(json!("invoke")),
        Just(json!("https://smba.trafficmanager.net/amer/")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every path (as a list of keys/indexes) in `v`, the root included.
fn paths(v: &Value, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(PathStep::Key(k.clone()));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(PathStep::Index(i));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn at<'a>(v: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    let mut cur = v;
    for step in path {
        cur = match step {
            PathStep::Key(k) => cur.get_mut(k.as_str())?,
            PathStep::Index(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

/// One edit of a JSON document: replace a node, remove it, or bury it deep.
#[derive(Debug, Clone)]
enum Edit {
    Replace(prop::sample::Index, Value),
    Remove(prop::sample::Index),
    Nest(prop::sample::Index, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<prop::sample::Index>(), json_value()).prop_map(|(i, v)| Edit::Replace(i, v)),
        any::<prop::sample::Index>().prop_map(Edit::Remove),
        (any::<prop::sample::Index>(), 1usize..140).prop_map(|(i, d)| Edit::Nest(i, d)),
    ]
}

fn apply(doc: &mut Value, edits: &[Edit]) {
    for e in edits {
        let mut all = Vec::new();
        paths(doc, &mut Vec::new(), &mut all);
        let pick = |i: &prop::sample::Index| all[i.index(all.len())].clone();
        match e {
            Edit::Replace(i, v) => {
                if let Some(node) = at(doc, &pick(i)) {
                    *node = v.clone();
                }
            }
            Edit::Remove(i) => {
                let path = pick(i);
                if let Some((last, parent)) = path.split_last() {
                    match (at(doc, parent), last) {
                        (Some(Value::Object(m)), PathStep::Key(k)) => {
                            m.remove(k);
                        }
                        (Some(Value::Array(a)), PathStep::Index(i)) if *i < a.len() => {
                            a.remove(*i);
                        }
                        _ => {}
                    }
                }
            }
            Edit::Nest(i, depth) => {
                if let Some(node) = at(doc, &pick(i)) {
                    let mut v = node.take();
                    for _ in 0..*depth {
                        v = Value::Array(vec![v]);
                    }
                    *node = v;
                }
            }
        }
    }
}

/// Random bytes, mostly JSON-ish so the parser gets past the first byte.
fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        prop::collection::vec(
            prop::sample::select(b"{}[]\":,0123456789.eE+-tfnul \\abc".to_vec()),
            0..512
        ),
    ]
}

fn row(name: &str) -> ProblemType {
    ProblemType::by_name(name).unwrap_or_else(|| panic!("`{name}` is not in the problem table"))
}

fn check_body_problem(body: &[u8]) -> Result<(), TestCaseError> {
    match parse_activity(body) {
        Ok(activity) => {
            // Accepted bodies have what the ingress relies on.
            prop_assert!(activity.check_inbound_shape().is_ok());
        }
        Err(p) => {
            prop_assert!(BODY_PROBLEMS.contains(&p.check()), "{}", p.check());
            prop_assert_eq!(row(p.check()), p.kind);
            prop_assert_eq!(p.status(), 400);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_a_body_problem_or_an_activity(body in body_bytes()) {
        check_body_problem(&body)?;
    }

    #[test]
    fn mutated_real_activities_are_a_body_problem_or_an_activity(
        fixture in 0..FIXTURES.len(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let mut doc: Value = serde_json::from_str(FIXTURES[fixture]).expect("fixture JSON");
        apply(&mut doc, &edits);
        check_body_problem(doc.to_string().as_bytes())?;
    }

    /// The depth scan answers `json_too_deep` exactly above the limit, so
    /// serde_json's own recursion limit never answers first.
    #[test]
    fn depth_limit_is_exact(depth in 0usize..(2 * MAX_JSON_DEPTH), objects in any::<bool>()) {
        let (open, close) = if objects { (r#"{"a":"#, "}") } else { ("[", "]") };
        let body = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        let got = parse_activity(body.as_bytes()).err().map(|p| p.check());
        if depth > MAX_JSON_DEPTH {
            prop_assert_eq!(got, Some("json_too_deep"));
        } else {
            prop_assert_eq!(got, Some("invalid_activity"));
        }
    }
}

// ---- through HTTP --------------------------------------------------------

/// What one request sends.
#[derive(Debug, Clone)]
struct Probe {
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    token: TokenKind,
    body: Vec<u8>,
}

#[derive(Debug, Clone)]
enum TokenKind {
    None,
    Valid,
    Forged,
    Expired,
    Mutated(prop::sample::Index, u8),
    Raw(String),
}

fn probe(sim: String) -> impl Strategy<Value = Probe> {
    let path = prop_oneof![
        3 => Just("/api/messages".to_owned()),
        2 => Just("/api/messages/e2e".to_owned()),
        1 => Just("/api/messages/nobody".to_owned()),
        1 => "[A-Za-z0-9_.~-]{1,24}".prop_map(|s| format!("/api/messages/{s}")),
        1 => prop::sample::select(vec!["%2F", "%00", "%C3%28", "%E2%82", "a%20b", "..", "%2e%2e"])
            .prop_map(|s| format!("/api/messages/{s}")),
    ];
    let method = prop_oneof![8 => Just("POST"), 1 => Just("GET"), 1 => Just("PUT")];
    let content_type = prop_oneof![
        6 => Just(Some("application/json")),
        1 => Just(Some("application/json; charset=utf-8")),
        1 => Just(Some("text/plain")),
        1 => Just(None),
    ];
    let token = prop_oneof![
        2 => Just(TokenKind::None),
        4 => Just(TokenKind::Valid),
        1 => Just(TokenKind::Forged),
        1 => Just(TokenKind::Expired),
        2 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| TokenKind::Mutated(i, b)),
        1 => "[ -~]{0,64}".prop_map(TokenKind::Raw),
    ];
    let body = prop_oneof![
        2 => body_bytes(),
        4 => prop::collection::vec(edit(), 0..3).prop_map(move |edits| {
            let mut doc = message(&sim, "a:conv-prop", "1", "hi");
            apply(&mut doc, &edits);
            doc.to_string().into_bytes()
        }),
    ];
    (method, path, content_type, token, body).prop_map(
        |(method, path, content_type, token, body)| Probe {
            method,
            path,
            content_type,
            token,
            body,
        },
    )
}

struct Tokens {
    valid: String,
    forged: String,
    expired: String,
}

impl Tokens {
    fn header(&self, kind: &TokenKind) -> Option<String> {
        Some(match kind {
            TokenKind::None => return None,
            TokenKind::Valid => format!("Bearer {}", self.valid),
            TokenKind::Forged => format!("Bearer {}", self.forged),
            TokenKind::Expired => format!("Bearer {}", self.expired),
            TokenKind::Mutated(at, byte) => {
                let mut t = self.valid.clone().into_bytes();
                let i = at.index(t.len());
                // Printable ASCII, so it stays a valid header value.
                t[i] = b' ' + byte % 95;
                format!("Bearer {}", String::from_utf8_lossy(&t))
            }
            TokenKind::Raw(s) => s.clone(),
        })
    }
}

/// 64 random requests at one `botfleet serve`: every answer is 2xx or a
/// problem of the table with that row's status, never a 5xx, and the server
/// is still healthy afterwards.
#[test]
fn http_answers_are_2xx_or_table_problems_never_5xx() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let sim = start_sim();
    let bf = start_botfleet(&format!(
        r#"
[auth]
unknown_kid_refresh_min = "1h"
{cloud}
[[bots]]
id = "e2e"
app_id = "{APP_ID}"
cloud = "sim"
"#,
        cloud = sim_cloud(&sim.url)
    ));
    let mint_with = |extra: Value| {
        let mut body = json!({"appId": APP_ID, "serviceUrl": service_url(&sim.url)});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        rt.block_on(mint(&sim.url, body))
    };
    let tokens = Tokens {
        valid: mint_with(json!({})),
        forged: mint_with(json!({"key": "foreign"})),
        expired: mint_with(json!({"expiredBySecs": 3600})),
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let base = bf.url().to_owned();
    let result = runner.run(&probe(sim.url.clone()), |p| {
        let url = format!("{base}{}", p.path);
        let method = reqwest::Method::from_bytes(p.method.as_bytes()).expect("method");
        let mut req = client.request(method, &url).body(p.body.clone());
        if let Some(ct) = p.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(auth) = tokens.header(&p.token) {
            req = req.header("authorization", auth);
        }
        let (status, content_type, body) = rt.block_on(async {
            let resp = req.send().await.expect("botfleet answers");
            let status = resp.status().as_u16();
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            (status, ct, resp.bytes().await.expect("body"))
        });
        prop_assert!(
            status < 500,
            "{status} for {p:?}: {}",
            String::from_utf8_lossy(&body)
        );
        if (200..300).contains(&status) {
            return Ok(());
        }
        prop_assert_eq!(content_type.as_str(), "application/problem+json", "{:?}", p);
        let v: Value = serde_json::from_slice(&body).expect("problem JSON");
        let check = v["check"].as_str().unwrap_or_default();
        let Some(row) = TABLE.iter().find(|t| t.name == check).copied() else {
            return Err(TestCaseError::fail(format!(
                "`{check}` is not in the table: {v}"
            )));
        };
        prop_assert_eq!(status, row.status, "{}", v);
        let type_uri = format!("{TYPE_PREFIX}{check}");
        prop_assert_eq!(v["type"].as_str(), Some(type_uri.as_str()));
        prop_assert_eq!(v["title"].as_str(), Some(row.title));
        // Never the token back.
        let text = String::from_utf8_lossy(&body);
        prop_assert!(!text.contains(&tokens.valid) && !text.contains(&tokens.forged));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\n---- botfleet log ----\n{}", bf.proc.log_text());
    }
    let health = rt.block_on(async {
        client
            .get(format!("{}/healthz", bf.admin_url()))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert_eq!(health.ok(), Some(200), "botfleet is still serving");
    let log = bf.proc.log_text();
    assert!(!log.contains("panicked"), "a panic in the log:\n{log}");
    assert!(!log.contains(&tokens.valid), "a token in the log");
}
