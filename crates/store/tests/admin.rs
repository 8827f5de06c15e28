//! One suite for every admin store backend: memory, a single Redis and a
//! 3-master Redis Cluster (started by scripts/test or scripts/redis-up).
//!
//! Each test gets two store instances over one backend (two `RedisAdminStore`
//! with their own pools on one Redis, standing for two replicas; the same
//! memory store twice), so what one writes the other must see.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use botfleet_store::admin::{
    AdminStoreError, ApiKeyRecord, ApiKeyStore, AuditEntry, AuditLog, BotChange, BotRecord,
    BotRegistryStore, MemoryAdminStore, RedisAdminStore, Role, MAX_AUDIT_PAGE,
};
use botfleet_store::redis_pool::testing;
use botfleet_store::RedisPool;
use futures::stream::{BoxStream, StreamExt as _};
use serde_json::json;

trait Admin: ApiKeyStore + BotRegistryStore + AuditLog + 'static {}
impl<T: ApiKeyStore + BotRegistryStore + AuditLog + 'static> Admin for T {}

/// Two instances over one backend.
struct Pair<S> {
    a: Arc<S>,
    b: Arc<S>,
    /// The key prefix of both (Redis), for tests that reach raw keys.
    prefix: String,
}

fn memory() -> Pair<MemoryAdminStore> {
    let a = Arc::new(MemoryAdminStore::new());
    Pair {
        a: a.clone(),
        b: a,
        prefix: String::new(),
    }
}

fn redis(pool: impl Fn() -> RedisPool, urls: &[String]) -> Pair<RedisAdminStore> {
    let prefix = testing::unique_prefix("admin");
    Pair {
        a: Arc::new(RedisAdminStore::new(pool(), &prefix, urls)),
        b: Arc::new(RedisAdminStore::new(pool(), &prefix, urls)),
        prefix: format!("{prefix}:"),
    }
}

fn redis_single() -> Pair<RedisAdminStore> {
    redis(testing::single, &[testing::single_url()])
}

fn redis_cluster() -> Pair<RedisAdminStore> {
    redis(testing::cluster, &testing::cluster_urls())
}

fn key(id: &str, role: Role) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        secret_hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        role,
        bots: Some(vec!["bot-a".into(), "bot-b".into()]),
        description: Some("CI deploys".into()),
        created_at: 1_000,
        created_by: "bootstrap".into(),
        expires_at: Some(9_000),
        revoked_at: None,
    }
}

/// A spec with what a naive JSON round trip in Lua would break: an empty
/// array (cjson writes `{}`), a large integer, nested objects, non-ASCII.
fn spec(app_id: &str) -> serde_json::Value {
    json!({
        "app_id": app_id,
        "credential": {"kind": "secret", "secret": "not-logged"},
        "allowed_tenants": [],
        "additional_domains": ["bots.example.com"],
        "handler": {"kind": "webhook", "url": "https://example.com/hook", "timeout_ms": 9_007_199_254_740_993u64},
        "name": "Bénédicte ✓",
    })
}

fn bot(id: &str, app_id: &str, at: u64) -> BotRecord {
    BotRecord {
        id: id.into(),
        app_id: app_id.into(),
        spec: spec(app_id),
        version: 42, // ignored: the store assigns versions
        created_at: at,
        updated_at: at,
    }
}

fn entry(at: u64, action: &str) -> AuditEntry {
    AuditEntry {
        id: "ignored".into(),
        at,
        key_id: Some("bfk_ABCDEFGH".into()),
        role: Some(Role::Operator),
        action: action.into(),
        target: Some("bot-a".into()),
        outcome: "ok".into(),
        status: 201,
        request_id: format!("req-{at}-{action}"),
        client: Some("10.0.0.7".into()),
    }
}

fn conflict_message(e: AdminStoreError) -> String {
    match e {
        AdminStoreError::Conflict(m) => m,
        other => panic!("expected Conflict, got {other:?}"),
    }
}

async fn keys_create_get_list_revoke<S: Admin>(p: Pair<S>) {
    let (a, b) = (&*p.a, &*p.b);
    let k1 = key("bfk_BBBBBBBB", Role::Operator);
    let k2 = ApiKeyRecord {
        bots: None,
        description: None,
        expires_at: None,
        ..key("bfk_AAAAAAAA", Role::Admin)
    };
    ApiKeyStore::create(a, &k1).await.expect("create k1");
    ApiKeyStore::create(a, &k2).await.expect("create k2");
    let dup = ApiKeyStore::create(b, &key("bfk_BBBBBBBB", Role::Reader))
        .await
        .expect_err("duplicate id");
    assert!(conflict_message(dup).contains("bfk_BBBBBBBB"));

    assert_eq!(
        ApiKeyStore::get(b, "bfk_BBBBBBBB").await.expect("get"),
        Some(k1.clone())
    );
    assert_eq!(
        ApiKeyStore::get(b, "bfk_AAAAAAAA").await.expect("get"),
        Some(k2.clone())
    );
    assert_eq!(ApiKeyStore::get(b, "bfk_nope").await.expect("get"), None);
    assert_eq!(
        ApiKeyStore::list(b).await.expect("list"),
        vec![k2.clone(), k1.clone()],
        "ordered by id, as stored"
    );

    assert!(a.revoke("bfk_BBBBBBBB", 5_000).await.expect("revoke"));
    assert!(!b.revoke("bfk_BBBBBBBB", 6_000).await.expect("revoke again"));
    assert!(!b.revoke("bfk_nope", 6_000).await.expect("revoke unknown"));
    let revoked = ApiKeyStore::get(b, "bfk_BBBBBBBB")
        .await
        .expect("get")
        .expect("still listed");
    assert_eq!(
        revoked.revoked_at,
        Some(5_000),
        "the first revocation is kept"
    );
    assert_eq!(ApiKeyStore::get(a, "bfk_nope").await.expect("get"), None);
    let listed = ApiKeyStore::list(a).await.expect("list");
    assert_eq!(
        listed.iter().map(|k| k.revoked_at).collect::<Vec<_>>(),
        vec![None, Some(5_000)]
    );

    // A record created revoked stays revoked.
    let pre = ApiKeyRecord {
        revoked_at: Some(7),
        ..key("bfk_CCCCCCCC", Role::Sender)
    };
    ApiKeyStore::create(a, &pre).await.expect("create revoked");
    assert_eq!(
        ApiKeyStore::get(b, "bfk_CCCCCCCC").await.expect("get"),
        Some(pre)
    );
    assert!(!b.revoke("bfk_CCCCCCCC", 8).await.expect("revoke"));
}

async fn bots_crud_and_versions<S: Admin>(p: Pair<S>) {
    let (a, b) = (&*p.a, &*p.b);
    let created = BotRegistryStore::create(a, bot("bot-b", "app-b", 1_000))
        .await
        .expect("create");
    assert_eq!(created.version, 1);
    assert_eq!((created.created_at, created.updated_at), (1_000, 1_000));
    assert_eq!(
        BotRegistryStore::get(b, "bot-b").await.expect("get"),
        Some(created.clone())
    );
    assert_eq!(BotRegistryStore::get(b, "nope").await.expect("get"), None);
    BotRegistryStore::create(b, bot("bot-a", "app-a", 1_500))
        .await
        .expect("create");

    // Update: the store keeps created_at and assigns the version.
    let mut change = created.clone();
    change.spec["handler"] = json!({"kind": "echo"});
    change.created_at = 99;
    change.updated_at = 2_000;
    let updated = b.update(change.clone(), 1).await.expect("update");
    assert_eq!(updated.version, 2);
    assert_eq!((updated.created_at, updated.updated_at), (1_000, 2_000));
    assert_eq!(updated.spec, change.spec);
    assert_eq!(
        BotRegistryStore::get(a, "bot-b").await.expect("get"),
        Some(updated.clone())
    );

    // A stale version (the ETag a client read before) is refused.
    match a.update(change.clone(), 1).await {
        Err(AdminStoreError::VersionMismatch { current: 2 }) => {}
        other => panic!("expected VersionMismatch {{ current: 2 }}, got {other:?}"),
    }
    match a.update(bot("nope", "app-nope", 1), 1).await {
        Err(AdminStoreError::NotFound) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(
        BotRegistryStore::get(b, "bot-b").await.expect("get"),
        Some(updated),
        "failed updates change nothing"
    );

    let listed = BotRegistryStore::list(b).await.expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|r| (r.id.as_str(), r.version))
            .collect::<Vec<_>>(),
        vec![("bot-a", 1), ("bot-b", 2)]
    );

    match a.delete("bot-b", Some(1)).await {
        Err(AdminStoreError::VersionMismatch { current: 2 }) => {}
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    a.delete("bot-b", Some(2)).await.expect("delete");
    assert_eq!(BotRegistryStore::get(b, "bot-b").await.expect("get"), None);
    match b.delete("bot-b", None).await {
        Err(AdminStoreError::NotFound) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    b.delete("bot-a", None)
        .await
        .expect("delete without a version");
    assert!(BotRegistryStore::list(a).await.expect("list").is_empty());
}

async fn app_ids_are_unique<S: Admin>(p: Pair<S>) {
    let (a, b) = (&*p.a, &*p.b);
    BotRegistryStore::create(a, bot("bot-a", "app-x", 1))
        .await
        .expect("create");
    let taken = BotRegistryStore::create(b, bot("bot-b", "app-x", 2))
        .await
        .expect_err("app id taken");
    let m = conflict_message(taken);
    assert!(m.contains("app-x") && m.contains("bot-a"), "{m}");
    let taken = BotRegistryStore::create(b, bot("bot-a", "app-y", 2))
        .await
        .expect_err("id taken");
    assert!(conflict_message(taken).contains("bot-a"));

    let b_bot = BotRegistryStore::create(b, bot("bot-b", "app-b", 3))
        .await
        .expect("create");
    // Moving bot-b onto bot-a's app id is refused and changes nothing.
    let mut onto_x = b_bot.clone();
    onto_x.app_id = "app-x".into();
    let m = conflict_message(a.update(onto_x.clone(), 1).await.expect_err("taken"));
    assert!(m.contains("app-x") && m.contains("bot-a"), "{m}");
    assert_eq!(
        BotRegistryStore::get(a, "bot-b").await.expect("get"),
        Some(b_bot)
    );

    // Moving bot-a to another app id frees app-x ...
    let mut a_bot = BotRegistryStore::get(a, "bot-a")
        .await
        .expect("get")
        .expect("stored");
    a_bot.app_id = "app-z".into();
    b.update(a_bot, 1).await.expect("move bot-a to app-z");
    let moved = a.update(onto_x, 1).await.expect("app-x is free now");
    assert_eq!((moved.app_id.as_str(), moved.version), ("app-x", 2));
    // ... and app-z stays taken by bot-a.
    let m = conflict_message(
        BotRegistryStore::create(a, bot("bot-c", "app-z", 4))
            .await
            .expect_err("app-z taken"),
    );
    assert!(m.contains("bot-a"), "{m}");

    // Deleting frees the app id; re-creating an id starts at version 1.
    b.delete("bot-a", None).await.expect("delete");
    let again = BotRegistryStore::create(a, bot("bot-a", "app-z", 5))
        .await
        .expect("app-z free again");
    assert_eq!(again.version, 1);
    // Keeping one's own app id is no conflict.
    let same = a.update(again, 1).await.expect("same app id");
    assert_eq!(same.version, 2);
}

/// Ids with bytes that matter to Redis keys, Lua or JSON, and real
/// timestamps (past 2^32 ms), survive every write path unchanged.
async fn odd_ids_and_real_times<S: Admin>(p: Pair<S>) {
    let (a, b) = (&*p.a, &*p.b);
    let now = 1_760_000_000_123u64;
    let id = "we{ird} \"bot\"/ü:%20*";
    let app = "app \"x\" {y} ü\\n";
    let created = BotRegistryStore::create(a, bot(id, app, now))
        .await
        .expect("create");
    assert_eq!(
        BotRegistryStore::get(b, id).await.expect("get"),
        Some(created.clone())
    );
    let mut moved = created.clone();
    moved.app_id = "app ü 2".into();
    moved.updated_at = now + 1;
    let updated = b.update(moved, 1).await.expect("update");
    assert_eq!((updated.created_at, updated.updated_at), (now, now + 1));
    assert_eq!(
        BotRegistryStore::get(a, id).await.expect("get"),
        Some(updated.clone())
    );
    // The old app id was freed, the new one is taken.
    BotRegistryStore::create(a, bot("other", app, now))
        .await
        .expect("old app id free");
    let m = conflict_message(
        BotRegistryStore::create(a, bot("third", "app ü 2", now))
            .await
            .expect_err("new app id taken"),
    );
    assert!(m.contains(id), "{m}");
    a.delete(id, Some(2)).await.expect("delete");

    let k = key(id, Role::Reader);
    ApiKeyStore::create(a, &k).await.expect("create key");
    assert!(b.revoke(id, now).await.expect("revoke"));
    let got = ApiKeyStore::get(a, id).await.expect("get").expect("stored");
    assert_eq!(got.revoked_at, Some(now));

    let audit_id = a.append(&entry(now, id)).await.expect("append");
    assert_eq!(audit_id, format!("{now}-0"));
    let (items, _) = AuditLog::list(b, None, 10).await.expect("list");
    assert_eq!(items.first().map(|e| e.action.as_str()), Some(id));
}

/// Of many concurrent creates of one app id (through two instances), exactly
/// one wins; likewise for one bot id, and the losers' app ids stay free.
async fn concurrent_creates<S: Admin>(p: Pair<S>) {
    const N: usize = 16;
    let mut tasks = Vec::new();
    for i in 0..N {
        let store = if i % 2 == 0 { p.a.clone() } else { p.b.clone() };
        tasks.push(tokio::spawn(async move {
            BotRegistryStore::create(&*store, bot(&format!("racer-{i}"), "app-race", 1)).await
        }));
    }
    let mut won = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.expect("task") {
            Ok(r) => won.push(r.id),
            Err(AdminStoreError::Conflict(m)) => assert!(m.contains("app-race"), "{m}"),
            Err(e) => panic!("racer {i}: {e:?}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one create of app-race wins: {won:?}");
    let bots = BotRegistryStore::list(&*p.a).await.expect("list");
    assert_eq!(bots.len(), 1);
    assert_eq!(bots.first().map(|b| &b.id), won.first());

    let mut tasks = Vec::new();
    for i in 0..N {
        let store = if i % 2 == 0 { p.a.clone() } else { p.b.clone() };
        tasks.push(tokio::spawn(async move {
            BotRegistryStore::create(&*store, bot("same-id", &format!("app-{i}"), 1)).await
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(r) => winners.push(r.app_id),
            Err(AdminStoreError::Conflict(m)) => assert!(m.contains("same-id"), "{m}"),
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create of same-id wins");
    for i in 0..N {
        let app = format!("app-{i}");
        if winners.contains(&app) {
            continue;
        }
        // A losing create claimed nothing.
        BotRegistryStore::create(&*p.b, bot(&format!("later-{i}"), &app, 2))
            .await
            .expect("a loser's app id is free");
    }
}

/// Of concurrent updates from one version (two replicas acting on one ETag),
/// exactly one wins.
async fn concurrent_updates<S: Admin>(p: Pair<S>) {
    let created = BotRegistryStore::create(&*p.a, bot("bot", "app", 1))
        .await
        .expect("create");
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let store = if i % 2 == 0 { p.a.clone() } else { p.b.clone() };
        let mut record = created.clone();
        record.updated_at = 10 + i;
        tasks.push(tokio::spawn(async move { store.update(record, 1).await }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(r) => {
                ok += 1;
                assert_eq!(r.version, 2);
            }
            Err(AdminStoreError::VersionMismatch { current: 2 }) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(ok, 1);
}

async fn revision_counts_every_change<S: Admin>(p: Pair<S>) {
    let (a, b) = (&*p.a, &*p.b);
    assert_eq!(a.revision().await.expect("revision"), 0);
    let r = BotRegistryStore::create(a, bot("bot", "app", 1))
        .await
        .expect("create");
    assert_eq!(b.revision().await.expect("revision"), 1);
    let r = b.update(r, 1).await.expect("update");
    assert_eq!(a.revision().await.expect("revision"), 2);
    // Refused changes do not count.
    assert!(a.update(r.clone(), 1).await.is_err());
    assert!(BotRegistryStore::create(a, bot("bot", "other", 1))
        .await
        .is_err());
    assert!(BotRegistryStore::create(a, bot("other", "app", 1))
        .await
        .is_err());
    assert!(a.delete("bot", Some(1)).await.is_err());
    assert!(a.delete("nope", None).await.is_err());
    assert_eq!(b.revision().await.expect("revision"), 2);
    a.delete("bot", Some(2)).await.expect("delete");
    assert_eq!(b.revision().await.expect("revision"), 3);
}

async fn next_change(stream: &mut BoxStream<'static, BotChange>) -> BotChange {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a change within 5 s")
        .expect("the stream does not end")
}

/// A subscriber on one instance sees, in order, the changes made through the
/// other; refused changes announce nothing.
async fn subscribe_sees_changes_of_another_instance<S: Admin>(p: &Pair<S>) {
    let (a, b) = (&*p.a, &*p.b);
    let mut changes = a.subscribe().await.expect("subscribe");
    let r = BotRegistryStore::create(b, bot("bot", "app", 1))
        .await
        .expect("create");
    assert_eq!(
        next_change(&mut changes).await,
        BotChange::Upserted {
            id: "bot".into(),
            version: 1
        }
    );
    assert!(b.update(r.clone(), 7).await.is_err());
    assert!(BotRegistryStore::create(b, bot("bot2", "app", 1))
        .await
        .is_err());
    b.update(r, 1).await.expect("update");
    assert_eq!(
        next_change(&mut changes).await,
        BotChange::Upserted {
            id: "bot".into(),
            version: 2
        }
    );
    b.delete("bot", None).await.expect("delete");
    assert_eq!(
        next_change(&mut changes).await,
        BotChange::Deleted { id: "bot".into() }
    );
    // A second subscriber gets its own copy.
    let mut second = b.subscribe().await.expect("subscribe");
    BotRegistryStore::create(a, bot("bot3", "app3", 1))
        .await
        .expect("create");
    let expected = BotChange::Upserted {
        id: "bot3".into(),
        version: 1,
    };
    assert_eq!(next_change(&mut changes).await, expected);
    assert_eq!(next_change(&mut second).await, expected);
}

async fn audit_pagination<S: Admin>(p: Pair<S>) {
    let (a, b) = (&*p.a, &*p.b);
    let (empty, next) = AuditLog::list(a, None, 10).await.expect("list");
    assert!(empty.is_empty() && next.is_none());
    // Time 0 exists in both backends as `0-1` (`0-0` is no stream id).
    assert_eq!(a.append(&entry(0, "epoch")).await.expect("append"), "0-1");
    assert_eq!(a.trim(1).await.expect("trim"), 1);

    // Times in order, some equal (one request audited twice in one ms).
    let times: Vec<u64> = (0..25u64).map(|i| 1_000 + (i / 2) * 10).collect();
    let mut ids = Vec::new();
    for (i, at) in times.iter().enumerate() {
        let store = if i % 2 == 0 { a } else { b };
        let id = store
            .append(&entry(*at, &format!("bots.update.{i}")))
            .await
            .expect("append");
        assert!(
            id.starts_with(&format!("{at}-")),
            "id {id} follows the entry time {at}"
        );
        ids.push(id);
    }
    let parsed: Vec<(u64, u64)> = ids.iter().map(|id| split_id(id)).collect();
    assert!(
        parsed.windows(2).all(|w| w[0] < w[1]),
        "ids increase: {ids:?}"
    );

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let store = if pages.len() % 2 == 0 { a } else { b };
        let (items, next) = AuditLog::list(store, cursor.as_deref(), 10)
            .await
            .expect("list");
        pages.push(items.len());
        seen.extend(items);
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(pages, vec![10, 10, 5]);
    assert_eq!(seen.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ids);
    for (i, e) in seen.iter().enumerate() {
        let mut expected = entry(times[i], &format!("bots.update.{i}"));
        expected.id.clone_from(&ids[i]);
        assert_eq!(e, &expected, "entry {i} round trips");
    }
    // A page that ends exactly at the end has no next cursor.
    let (items, next) = AuditLog::list(a, ids.get(14).map(String::as_str), 10)
        .await
        .expect("list");
    assert_eq!((items.len(), next), (10, None));
    let (items, next) = AuditLog::list(a, ids.last().map(String::as_str), 10)
        .await
        .expect("list");
    assert!(items.is_empty() && next.is_none());
    // limit is clamped to 1..=MAX_AUDIT_PAGE.
    let (items, next) = AuditLog::list(b, None, 0).await.expect("list");
    assert_eq!(items.len(), 1);
    assert_eq!(next.as_deref(), ids.first().map(String::as_str));
    let (items, _) = AuditLog::list(b, None, MAX_AUDIT_PAGE * 10)
        .await
        .expect("list");
    assert_eq!(items.len(), 25);
    // An id not in the log is a valid cursor: listing resumes after it.
    let (items, _) = AuditLog::list(b, Some("1055-0"), 100).await.expect("list");
    assert_eq!(items.first().map(|e| e.at), Some(1_060));

    for bad in [
        "",
        "abc",
        "1-",
        "-1",
        "1-2-3",
        "1.5-0",
        "+1-0",
        "99999999999999999999-0",
    ] {
        match AuditLog::list(a, Some(bad), 10).await {
            Err(AdminStoreError::InvalidCursor) => {}
            other => panic!("cursor {bad:?}: expected InvalidCursor, got {other:?}"),
        }
    }

    // A replica whose clock is behind still appends after the latest entry.
    let late = a.append(&entry(500, "bots.delete")).await.expect("append");
    assert!(split_id(&late) > parsed[24], "{late} after {}", ids[24]);
    let (items, _) = AuditLog::list(b, ids.last().map(String::as_str), 10)
        .await
        .expect("list");
    assert_eq!(
        items
            .iter()
            .map(|e| (e.id.as_str(), e.at))
            .collect::<Vec<_>>(),
        vec![(late.as_str(), 500)]
    );
}

fn split_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("<ms>-<seq>");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

async fn audit_trim<S: Admin>(p: Pair<S>) {
    let (a, b) = (&*p.a, &*p.b);
    for at in [1_000, 2_000, 3_000, 3_000, 4_000] {
        a.append(&entry(at, "keys.create")).await.expect("append");
    }
    assert_eq!(b.trim(0).await.expect("trim"), 0);
    assert_eq!(
        b.trim(3_000).await.expect("trim"),
        2,
        "entries before 3000 go"
    );
    assert_eq!(a.trim(3_000).await.expect("trim"), 0);
    let (left, _) = AuditLog::list(a, None, 10).await.expect("list");
    assert_eq!(
        left.iter().map(|e| e.at).collect::<Vec<_>>(),
        vec![3_000, 3_000, 4_000]
    );
    assert_eq!(b.trim(10_000).await.expect("trim"), 3);
    assert!(AuditLog::list(a, None, 10)
        .await
        .expect("list")
        .0
        .is_empty());
    // Appending after a full trim still never reuses an id.
    let id = a
        .append(&entry(4_000, "keys.revoke"))
        .await
        .expect("append");
    assert!(split_id(&id) > (4_000, 0), "{id}");
}

/// Kills every pub/sub connection on every node; the subscription reconnects
/// by itself and sees changes again. Changes made while it was down are not
/// announced to it, so this retries a change until one gets through.
async fn subscription_reconnects(p: &Pair<RedisAdminStore>, urls: &[String]) {
    let mut changes = p.a.subscribe().await.expect("subscribe");
    let created = BotRegistryStore::create(&*p.b, bot("re", "app-re", 1))
        .await
        .expect("create");
    assert_eq!(
        next_change(&mut changes).await,
        BotChange::Upserted {
            id: "re".into(),
            version: 1
        }
    );
    let mut killed = 0;
    for url in urls {
        let client = redis::Client::open(url.as_str()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let n: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut conn)
            .await
            .expect("CLIENT KILL");
        killed += n;
    }
    assert!(killed >= 1, "the subscription's connection was killed");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut record = created;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscription did not come back within 15 s"
        );
        record =
            p.b.update(record.clone(), record.version)
                .await
                .expect("update");
        match tokio::time::timeout(Duration::from_millis(300), changes.next()).await {
            Ok(Some(BotChange::Upserted { id, version })) => {
                assert_eq!(id, "re");
                assert!(version >= 2 && version <= record.version);
                break;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => {} // not back yet
        }
    }
}

/// Garbage in Redis is reported as Corrupt, naming the bot and never quoting
/// the stored value (a spec holds a credential).
async fn corrupt_records_are_reported_without_content(p: Pair<RedisAdminStore>, pool: RedisPool) {
    BotRegistryStore::create(&*p.a, bot("ok", "app-ok", 1))
        .await
        .expect("create");
    let meta_key = format!("{}bf1:admin:{{bots}}:meta", p.prefix);
    let specs_key = format!("{}bf1:admin:{{bots}}:specs", p.prefix);
    let mut conn = pool.get().await.expect("conn");
    let _: () = redis::cmd("HSET")
        .arg(&specs_key)
        .arg("bad")
        .arg(r#"{"credential":{"secret":"s3cr3t-value"#)
        .query_async(&mut conn)
        .await
        .expect("hset");
    let _: () = redis::cmd("HSET")
        .arg(&meta_key)
        .arg("bad")
        .arg(r#"{"a":"app-bad","v":1,"c":1,"u":1}"#)
        .query_async(&mut conn)
        .await
        .expect("hset");
    for result in [
        BotRegistryStore::get(&*p.b, "bad").await.map(|_| ()),
        BotRegistryStore::list(&*p.b).await.map(|_| ()),
    ] {
        match result {
            Err(AdminStoreError::Corrupt(m)) => {
                assert!(m.contains("bad"), "{m}");
                assert!(!m.contains("s3cr3t"), "the stored value leaked: {m}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    assert!(BotRegistryStore::get(&*p.b, "ok")
        .await
        .expect("get")
        .is_some());
}

macro_rules! suite {
    ($module:ident, $make:expr) => {
        mod $module {

            #[tokio::test]
            async fn keys_create_get_list_revoke() {
                super::keys_create_get_list_revoke($make).await;
            }
            #[tokio::test]
            async fn bots_crud_and_versions() {
                super::bots_crud_and_versions($make).await;
            }
            #[tokio::test]
            async fn app_ids_are_unique() {
                super::app_ids_are_unique($make).await;
            }
            #[tokio::test]
            async fn odd_ids_and_real_times() {
                super::odd_ids_and_real_times($make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_creates() {
                super::concurrent_creates($make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_updates() {
                super::concurrent_updates($make).await;
            }
            #[tokio::test]
            async fn revision_counts_every_change() {
                super::revision_counts_every_change($make).await;
            }
            #[tokio::test]
            async fn audit_pagination() {
                super::audit_pagination($make).await;
            }
            #[tokio::test]
            async fn audit_trim() {
                super::audit_trim($make).await;
            }
        }
    };
}

suite!(memory, super::memory());
suite!(redis_single, super::redis_single());
suite!(redis_cluster, super::redis_cluster());

#[tokio::test]
async fn memory_subscription() {
    subscribe_sees_changes_of_another_instance(&memory()).await;
}

/// One test per server subscribes, because the reconnect part kills every
/// pub/sub connection on it.
#[tokio::test]
async fn redis_single_subscription() {
    let p = redis_single();
    subscribe_sees_changes_of_another_instance(&p).await;
    subscription_reconnects(&p, &[testing::single_url()]).await;
}

#[tokio::test]
async fn redis_cluster_subscription() {
    let p = redis_cluster();
    subscribe_sees_changes_of_another_instance(&p).await;
    subscription_reconnects(&p, &testing::cluster_urls()).await;
}

#[tokio::test]
async fn redis_single_corrupt_records() {
    corrupt_records_are_reported_without_content(redis_single(), testing::single()).await;
}

#[tokio::test]
async fn redis_cluster_corrupt_records() {
    corrupt_records_are_reported_without_content(redis_cluster(), testing::cluster()).await;
}

/// Redis down: every call says Unavailable (no hang, no panic), and so does
/// subscribe.
#[tokio::test]
async fn redis_unreachable_is_unavailable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let url = format!("redis://127.0.0.1:{port}");
    let store = RedisAdminStore::new(
        RedisPool::single(&url, 2).expect("pool"),
        "down",
        std::slice::from_ref(&url),
    );
    let unavailable = |r: Result<(), AdminStoreError>| match r {
        Err(AdminStoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    };
    unavailable(BotRegistryStore::get(&store, "x").await.map(|_| ()));
    unavailable(
        BotRegistryStore::create(&store, bot("x", "y", 1))
            .await
            .map(|_| ()),
    );
    unavailable(store.revision().await.map(|_| ()));
    unavailable(ApiKeyStore::get(&store, "x").await.map(|_| ()));
    unavailable(store.append(&entry(1, "x")).await.map(|_| ()));
    unavailable(store.subscribe().await.map(|_| ()));
    let no_urls = RedisAdminStore::new(RedisPool::single(&url, 2).expect("pool"), "down", &[]);
    unavailable(no_urls.subscribe().await.map(|_| ()));
}

#[test]
fn wire_shapes() {
    assert_eq!(
        serde_json::to_value(BotChange::Upserted {
            id: "b".into(),
            version: 2
        })
        .expect("json"),
        json!({"kind": "upserted", "id": "b", "version": 2})
    );
    assert_eq!(
        serde_json::to_value(BotChange::Deleted { id: "b".into() }).expect("json"),
        json!({"kind": "deleted", "id": "b"})
    );
    let roles: HashSet<String> = [Role::Admin, Role::Operator, Role::Sender, Role::Reader]
        .iter()
        .map(|r| {
            let v = serde_json::to_value(r).expect("json");
            assert_eq!(v, json!(r.as_str()));
            r.to_string()
        })
        .collect();
    assert_eq!(roles.len(), 4);
    assert!(serde_json::from_value::<Role>(json!("Admin")).is_err());
}
