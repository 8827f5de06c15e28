//! The endpoint's logic and rich-notification crypto, without the network:
//! handshake (hostile tokens), clientState checks, durable inbox, and
//! encrypted content built exactly as Graph documents it
//! (https://learn.microsoft.com/graph/change-notifications-with-resource-data).

use std::sync::Arc;

use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyIvInit};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use botfleet_auth::Secret;
use botfleet_graph::crypto::{DecryptError, KeyRing};
use botfleet_graph::model::EncryptedContent;
use botfleet_graph::service::{field, new_client_state, GraphService};
use botfleet_graph::{GraphApp, GraphApps, GraphConfig, SubscriptionSpec};
use botfleet_store::graph::{GraphStore, MemoryGraphStore};
use hmac::{Hmac, Mac};
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;

struct NoApps;

#[async_trait]
impl GraphApps for NoApps {
    fn app(&self, _bot: &str) -> Option<GraphApp> {
        None
    }
    async fn token(&self, _bot: &str, _tenant: &str) -> Result<Secret, String> {
        Err("none".into())
    }
}

fn spec(id: &str) -> SubscriptionSpec {
    serde_json::from_value(serde_json::json!({
        "id": id, "bot": "b1", "tenant_id": "t1", "resource": "/chats/19:a@thread.v2/messages",
        "action": {"kind": "record"}
    }))
    .expect("spec")
}

async fn service() -> (Arc<GraphService>, Arc<MemoryGraphStore>, String) {
    let store = Arc::new(MemoryGraphStore::new());
    let s = spec("alerts");
    store
        .put_subscription("alerts", &serde_json::to_string(&s).expect("json"))
        .await
        .expect("put");
    let cs = new_client_state("alerts");
    store
        .set_state("alerts", &[(field::CLIENT_STATE, cs.clone())])
        .await
        .expect("state");
    // No public URL: the actors stay idle (no Graph here).
    let svc = GraphService::new(
        store.clone(),
        Arc::new(NoApps),
        None,
        reqwest::Client::new(),
        reqwest::Client::new(),
        GraphConfig::default(),
        "r1".into(),
    );
    svc.sync().await.expect("sync");
    (svc, store, cs)
}

#[test]
fn handshake_echoes_the_decoded_token_and_caps_its_length() {
    let hostile = "<script>alert(1)</script>+:&x=\"'";
    let q = format!(
        "validationToken={}",
        url::form_urlencoded::byte_serialize(hostile.as_bytes()).collect::<String>()
    );
    assert_eq!(
        GraphService::validation_token(&q),
        Some(Ok(hostile.to_owned()))
    );
    // `+` in a query is a space (form encoding), `%2B` a plus: Graph encodes.
    assert_eq!(
        GraphService::validation_token("validationToken=a+b%2Bc%3A"),
        Some(Ok("a b+c:".to_owned()))
    );
    assert_eq!(GraphService::validation_token("other=1"), None);
    let long = "x".repeat(5000);
    assert_eq!(
        GraphService::validation_token(&format!("validationToken={long}")),
        Some(Err(()))
    );
}

#[tokio::test]
async fn wrong_client_state_is_dropped_and_counted_right_one_persisted() {
    let (svc, store, cs) = service().await;
    let wrong = format!("{}X", &cs[..cs.len() - 1]);
    let body = serde_json::json!({"value": [
        {"subscriptionId": "g1", "changeType": "created", "resource": "chats('a')/messages('1')", "tenantId": "t1", "clientState": cs},
        {"subscriptionId": "g1", "changeType": "created", "resource": "chats('a')/messages('2')", "tenantId": "t1", "clientState": wrong},
        {"subscriptionId": "g1", "changeType": "created", "resource": "chats('a')/messages('3')", "tenantId": "t1"},
        {"subscriptionId": "g2", "changeType": "created", "resource": "x", "tenantId": "t2", "clientState": "other.secret"},
        {"subscriptionId": "g1", "lifecycleEvent": "subscriptionRemoved", "tenantId": "t1", "clientState": cs}
    ]});
    let r = svc
        .receive(&serde_json::to_vec(&body).expect("json"))
        .await
        .expect("receive");
    assert_eq!((r.accepted, r.dropped), (2, 3));
    let dropped = svc.counters().dropped();
    assert_eq!(dropped.get("client_state"), Some(&2));
    assert_eq!(dropped.get("unknown_subscription"), Some(&1));
    let taken = store.inbox_take("x", 10, 0).await.expect("take");
    assert_eq!(taken.len(), 2);
    assert!(taken[0].payload.contains("messages('1')"));
    assert!(taken[1].payload.contains("subscriptionRemoved"));
    // Nothing of the refused items was stored.
    assert!(!taken.iter().any(|e| e.payload.contains("messages('2')")));
    assert!(svc.receive(b"<html>").await.is_err());
}

fn encrypt(plain: &[u8], public: &RsaPublicKey, key: [u8; 32]) -> EncryptedContent {
    type Enc = cbc::Encryptor<aes::Aes256>;
    let data = Enc::new_from_slices(&key, &key[..16])
        .expect("aes")
        .encrypt_padded_vec_mut::<Pkcs7>(plain);
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("hmac");
    mac.update(&data);
    let wrapped = public
        .encrypt(&mut rand::thread_rng(), Oaep::new::<sha1::Sha1>(), &key)
        .expect("oaep");
    EncryptedContent {
        data: STANDARD.encode(&data),
        data_signature: STANDARD.encode(mac.finalize().into_bytes()),
        data_key: STANDARD.encode(wrapped),
        encryption_certificate_id: Some("c1".into()),
        encryption_certificate_thumbprint: None,
    }
}

#[test]
fn rich_content_decrypts_and_tampering_is_refused_before_decryption() {
    let mut rng = rand::thread_rng();
    let old = RsaPrivateKey::new(&mut rng, 2048).expect("key");
    let new = RsaPrivateKey::new(&mut rng, 2048).expect("key");
    let msg = serde_json::json!({"id": "1", "body": {"content": "fire"}});
    let plain = serde_json::to_vec(&msg).expect("json");
    let c = encrypt(&plain, &RsaPublicKey::from(&new), [7u8; 32]);
    let ring = KeyRing::new(vec![new.clone(), old.clone()]);
    assert_eq!(ring.decrypt(&c).expect("decrypt"), msg);

    // Rotation: an item still encrypted to the previous certificate.
    let in_flight = encrypt(&plain, &RsaPublicKey::from(&old), [9u8; 32]);
    assert_eq!(ring.decrypt(&in_flight).expect("previous key"), msg);
    // Without the previous key it cannot be read, and says so.
    assert_eq!(
        KeyRing::new(vec![new.clone()]).decrypt(&in_flight),
        Err(DecryptError::KeyUnwrap)
    );

    // One flipped ciphertext bit: refused by the HMAC (a padding or JSON
    // error would mean it was decrypted first).
    let mut tampered = c.clone();
    let mut bytes = STANDARD.decode(&tampered.data).expect("b64");
    bytes[0] ^= 1;
    tampered.data = STANDARD.encode(&bytes);
    assert_eq!(ring.decrypt(&tampered), Err(DecryptError::Signature));
    // A forged signature over the right data.
    let mut forged = c.clone();
    forged.data_signature = STANDARD.encode([0u8; 32]);
    assert_eq!(ring.decrypt(&forged), Err(DecryptError::Signature));
    let mut junk = c;
    junk.data_key = "***".into();
    assert!(matches!(
        ring.decrypt(&junk),
        Err(DecryptError::Encoding(_))
    ));
}

#[test]
fn resync_resources_and_templates() {
    use botfleet_graph::service::{fill, resync_resource};
    assert!(resync_resource("/chats/19:a@thread.v2/messages").is_some());
    assert!(resync_resource("/teams/t/channels/c/messages").is_some());
    assert!(resync_resource("/chats/getAllMessages").is_none());
    assert!(resync_resource("/users/u/chats/getAllMessages").is_none());
    let m = serde_json::json!({"id": "1", "chatId": "19:a", "createdDateTime": "2026-12-01T10:00:00Z",
        "lastModifiedDateTime": "2026-12-01T10:00:00Z",
        "body": {"contentType": "html", "content": "<p>EMERGENCY &amp; fire</p>"},
        "from": {"user": {"displayName": "Ann"}}});
    let v = botfleet_graph::model::MessageView::of(&m).expect("view");
    assert_eq!(v.text, "EMERGENCY & fire");
    assert_eq!(
        fill(
            "[{{subscription}}] {{from}}: {{text}} ({{chat}})",
            "s",
            "t",
            &v
        ),
        "[s] Ann: EMERGENCY & fire (19:a)"
    );
}
