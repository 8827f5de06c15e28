//! One suite for every Graph store backend: memory, a single Redis and a
//! 3-master Redis Cluster (started by scripts/test or scripts/redis-up).

use std::sync::Arc;

use botfleet_store::graph::{GraphStore, MemoryGraphStore, RedisGraphStore};
use botfleet_store::redis_pool::testing;

fn backends(name: &str) -> Vec<(&'static str, Arc<dyn GraphStore>)> {
    vec![
        ("memory", Arc::new(MemoryGraphStore::new())),
        (
            "redis",
            Arc::new(RedisGraphStore::new(
                testing::single(),
                &testing::unique_prefix(name),
            )),
        ),
        (
            "cluster",
            Arc::new(RedisGraphStore::new(
                testing::cluster(),
                &testing::unique_prefix(name),
            )),
        ),
    ]
}

#[tokio::test]
async fn registry_put_list_delete_and_revision() {
    for (name, s) in backends("registry") {
        let r0 = s.revision().await.expect("rev");
        s.put_subscription("a", "{\"x\":1}").await.expect("put");
        s.put_subscription("b", "{\"x\":2}").await.expect("put");
        s.put_subscription("a", "{\"x\":3}").await.expect("put");
        assert!(s.revision().await.expect("rev") >= r0 + 3, "{name}");
        let all = s.list_subscriptions().await.expect("list");
        assert_eq!(all.len(), 2, "{name}");
        assert_eq!(
            s.get_subscription("a")
                .await
                .expect("get")
                .map(|x| x.spec_json),
            Some("{\"x\":3}".to_owned()),
            "{name}"
        );
        s.set_state("a", &[("graph_id", "g1".into())])
            .await
            .expect("state");
        assert!(s.delete_subscription("a").await.expect("del"), "{name}");
        assert!(!s.delete_subscription("a").await.expect("del"), "{name}");
        assert!(s.get_state("a").await.expect("state").is_empty(), "{name}");
        assert!(s.get_subscription("a").await.expect("get").is_none());
    }
}

#[tokio::test]
async fn state_fields_and_raise() {
    for (name, s) in backends("state") {
        s.set_state("a", &[("x", "1".into()), ("y", "2".into())])
            .await
            .expect("set");
        s.set_state("a", &[("x", String::new())])
            .await
            .expect("set");
        let st = s.get_state("a").await.expect("get");
        assert_eq!(st.get("x"), None, "{name}");
        assert_eq!(st.get("y").map(String::as_str), Some("2"), "{name}");
        assert!(s.raise_state("a", "seen", 10).await.expect("raise"));
        assert!(!s.raise_state("a", "seen", 9).await.expect("raise"));
        assert!(!s.raise_state("a", "seen", 10).await.expect("raise"));
        assert!(s.raise_state("a", "seen", 11).await.expect("raise"));
        let st = s.get_state("a").await.expect("get");
        assert_eq!(st.get("seen").map(String::as_str), Some("11"), "{name}");
    }
}

#[tokio::test]
async fn lease_has_one_holder_until_it_expires_or_is_released() {
    for (name, s) in backends("lease") {
        let now = 1_000_000;
        assert!(
            s.lease("sub1", "r1", 300, now).await.expect("lease"),
            "{name}"
        );
        assert!(
            !s.lease("sub1", "r2", 300, now + 1).await.expect("lease"),
            "{name}"
        );
        assert!(
            s.lease("sub1", "r1", 300, now + 2).await.expect("renew"),
            "{name}"
        );
        s.release("sub1", "r2").await.expect("release other");
        assert!(
            !s.lease("sub1", "r2", 300, now + 3).await.expect("lease"),
            "{name}"
        );
        s.release("sub1", "r1").await.expect("release");
        assert!(
            s.lease("sub1", "r2", 300, now + 4).await.expect("lease"),
            "{name}"
        );
        // Expiry (Redis expires by its own clock; memory by the given time).
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert!(
            s.lease("sub1", "r3", 300, now + 1000).await.expect("lease"),
            "{name}"
        );
    }
}

#[tokio::test]
async fn inbox_hands_each_entry_out_once_until_reclaimed_and_acked() {
    for (name, s) in backends("inbox") {
        let now = 5_000_000;
        s.inbox_push(&["a".into(), "b".into(), "c".into()])
            .await
            .expect("push");
        assert_eq!(s.inbox_len().await.expect("len"), 3, "{name}");
        let first = s.inbox_take("p1", 2, now).await.expect("take");
        assert_eq!(
            first.iter().map(|e| e.payload.as_str()).collect::<Vec<_>>(),
            ["a", "b"],
            "{name}"
        );
        let second = s.inbox_take("p2", 10, now).await.expect("take");
        assert_eq!(second.len(), 1, "{name}");
        assert_eq!(second[0].payload, "c");
        assert!(s.inbox_take("p2", 10, now).await.expect("take").is_empty());
        s.inbox_ack(&first[0].id).await.expect("ack");
        s.inbox_ack(&second[0].id).await.expect("ack");
        assert_eq!(s.inbox_len().await.expect("len"), 1, "{name}");
        // "b" was taken by p1, which died: after the idle time p2 gets it.
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        let again = s
            .inbox_reclaim("p2", 50, 10, now + 60)
            .await
            .expect("reclaim");
        assert_eq!(again.len(), 1, "{name}");
        assert_eq!(again[0].payload, "b");
        assert!(again[0].deliveries >= 2);
        s.inbox_ack(&again[0].id).await.expect("ack");
        assert_eq!(s.inbox_len().await.expect("len"), 0, "{name}");
        assert!(s
            .inbox_reclaim("p2", 0, 10, now + 100)
            .await
            .expect("reclaim")
            .is_empty());
    }
}

#[tokio::test]
async fn done_markers() {
    for (name, s) in backends("done") {
        let now = 7_000_000;
        assert!(!s.is_done("k1", now).await.expect("done"), "{name}");
        s.mark_done("k1", 60_000, now).await.expect("mark");
        assert!(s.is_done("k1", now + 1).await.expect("done"), "{name}");
        assert!(!s.is_done("k2", now + 1).await.expect("done"), "{name}");
    }
}
