//! One suite for every conversation store backend: memory, a single Redis and a
//! 3-master Redis Cluster (started by scripts/test or scripts/redis-up).

use std::collections::HashSet;

use botfleet_protocol::{ChannelAccount, ConversationAccount, ConversationReference};
use botfleet_store::conversations::{
    ConversationStore, Counts, MemoryConversationStore, RedisConversationStore, StoreError,
    UpsertOutcome, MAX_PAGE,
};
use botfleet_store::redis_pool::testing;

fn reference(id: &str, tenant: Option<&str>, service_url: &str) -> ConversationReference {
    let mut conversation = ConversationAccount::new(id);
    conversation.tenant_id = tenant.map(str::to_owned);
    conversation.conversation_type = Some("personal".into());
    ConversationReference {
        activity_id: Some("a1".into()),
        user: Some(ChannelAccount::new("29:user").with_name("Ada")),
        bot: Some(ChannelAccount::new("28:bot")),
        conversation,
        channel_id: "msteams".into(),
        service_url: service_url.into(),
        locale: Some("en-US".into()),
        ..ConversationReference::default()
    }
}

const AMER: &str = "https://smba.trafficmanager.net/amer/";
const EMEA: &str = "https://smba.trafficmanager.net/emea/";

async fn upsert_get_and_service_url_update(store: &dyn ConversationStore) {
    let r = reference("a:1", Some("t1"), AMER);
    assert_eq!(
        store.upsert("bot", &r, 1_000).await.expect("upsert"),
        UpsertOutcome::Created
    );
    let got = store.get("bot", "a:1").await.expect("get").expect("stored");
    assert_eq!(got.bot_id, "bot");
    assert_eq!(got.tenant_id.as_deref(), Some("t1"));
    assert_eq!(got.reference, r);
    assert_eq!((got.first_seen_ms, got.last_seen_ms), (1_000, 1_000));
    assert!(got.active);
    assert_eq!((got.inactive_reason, got.inactive_since_ms), (None, None));

    // The user moved region: the new serviceUrl replaces the old one.
    let moved = reference("a:1", Some("t1"), EMEA);
    assert_eq!(
        store.upsert("bot", &moved, 2_000).await.expect("upsert"),
        UpsertOutcome::Updated
    );
    let got = store.get("bot", "a:1").await.expect("get").expect("stored");
    assert_eq!(got.reference.service_url, EMEA);
    assert_eq!((got.first_seen_ms, got.last_seen_ms), (1_000, 2_000));
    assert_eq!(
        store.count("bot", None).await.expect("count"),
        Counts {
            total: 1,
            active: 1
        }
    );
}

async fn unknown_ids(store: &dyn ConversationStore) {
    assert!(store.get("bot", "nope").await.expect("get").is_none());
    assert!(store.get("no-bot", "nope").await.expect("get").is_none());
    assert!(!store
        .deactivate("bot", "nope", "uninstalled", 5)
        .await
        .expect("deactivate"));
    assert_eq!(
        store.count("no-bot", None).await.expect("count"),
        Counts::default()
    );
    assert_eq!(
        store.count("no-bot", Some("t")).await.expect("count"),
        Counts::default()
    );
    let page = store.list("no-bot", None, None, 10).await.expect("list");
    assert!(page.items.is_empty() && page.next_cursor.is_none());
    let page = store
        .list("no-bot", Some("t"), None, 10)
        .await
        .expect("list");
    assert!(page.items.is_empty() && page.next_cursor.is_none());
    for bad in ["%%%", "bm90LWEtY3Vyc29y", ""] {
        assert!(
            matches!(
                store.list("bot", None, Some(bad), 10).await,
                Err(StoreError::InvalidCursor)
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        store.upsert("bot", &reference("", None, AMER), 1).await,
        Err(StoreError::InvalidReference(_))
    ));
}

async fn deactivate_and_reactivate(store: &dyn ConversationStore) {
    store
        .upsert("bot", &reference("c1", Some("t1"), AMER), 10)
        .await
        .expect("upsert");
    store
        .upsert("bot", &reference("c2", Some("t1"), AMER), 10)
        .await
        .expect("upsert");
    assert!(store
        .deactivate("bot", "c1", "uninstalled", 20)
        .await
        .expect("deactivate"));
    let got = store.get("bot", "c1").await.expect("get").expect("stored");
    assert!(!got.active);
    assert_eq!(got.inactive_reason.as_deref(), Some("uninstalled"));
    assert_eq!(got.inactive_since_ms, Some(20));
    assert_eq!(got.last_seen_ms, 10);
    let both = Counts {
        total: 2,
        active: 1,
    };
    assert_eq!(store.count("bot", None).await.expect("count"), both);
    assert_eq!(store.count("bot", Some("t1")).await.expect("count"), both);

    // Deactivating again changes nothing (first reason kept, counts exact).
    assert!(store
        .deactivate("bot", "c1", "send_403", 30)
        .await
        .expect("deactivate"));
    let got = store.get("bot", "c1").await.expect("get").expect("stored");
    assert_eq!(got.inactive_reason.as_deref(), Some("uninstalled"));
    assert_eq!(store.count("bot", None).await.expect("count"), both);

    // Reinstalled: the next activity reactivates it.
    assert_eq!(
        store
            .upsert("bot", &reference("c1", Some("t1"), AMER), 40)
            .await
            .expect("upsert"),
        UpsertOutcome::Reactivated
    );
    let got = store.get("bot", "c1").await.expect("get").expect("stored");
    assert!(got.active);
    assert_eq!((got.inactive_reason, got.inactive_since_ms), (None, None));
    assert_eq!((got.first_seen_ms, got.last_seen_ms), (10, 40));
    let all = Counts {
        total: 2,
        active: 2,
    };
    assert_eq!(store.count("bot", None).await.expect("count"), all);
    assert_eq!(store.count("bot", Some("t1")).await.expect("count"), all);
}

/// 57 conversations over three tenants (and a few without), listed in pages of
/// 10 by bot and by tenant: every one exactly once, in id order.
async fn pagination_and_tenant_filter(store: &dyn ConversationStore) {
    let tenants = [Some("t-a"), Some("t-b"), Some("t{c}"), None];
    let mut expected: Vec<(String, Option<&str>)> = Vec::new();
    for i in 0..57 {
        // Ids with the characters real ones have (`:`, `@`, `;`, `{`).
        let id = format!("19:{i:03}x@thread.v2;messageid={}", 57 - i);
        let id = if i % 11 == 0 {
            format!("a:{{{i}}}")
        } else {
            id
        };
        let tenant = tenants[i % tenants.len()];
        store
            .upsert("bot", &reference(&id, tenant, AMER), i as u64)
            .await
            .expect("upsert");
        expected.push((id, tenant));
    }
    // Another bot's conversations never show up.
    store
        .upsert("other", &reference("19:000x", Some("t-a"), AMER), 1)
        .await
        .expect("upsert");
    for i in (0..57).step_by(5) {
        store
            .deactivate("bot", &expected[i].0, "bot_removed", 100)
            .await
            .expect("deactivate");
    }

    for tenant in [None, Some("t-a"), Some("t-b"), Some("t{c}"), Some("t-z")] {
        let mut want: Vec<&str> = expected
            .iter()
            .filter(|(_, t)| tenant.is_none() || *t == tenant)
            .map(|(id, _)| id.as_str())
            .collect();
        want.sort_unstable();
        let mut got: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = store
                .list("bot", tenant, cursor.as_deref(), 10)
                .await
                .expect("list");
            pages += 1;
            assert!(page.items.len() <= 10);
            for item in &page.items {
                assert_eq!(item.bot_id, "bot");
                if tenant.is_some() {
                    assert_eq!(item.tenant_id.as_deref(), tenant);
                }
            }
            got.extend(
                page.items
                    .iter()
                    .map(|c| c.reference.conversation.id.clone()),
            );
            match page.next_cursor {
                Some(c) => {
                    assert_eq!(page.items.len(), 10, "only the last page is short");
                    cursor = Some(c);
                }
                None => break,
            }
            assert!(pages < 100, "pagination does not end");
        }
        assert_eq!(got, want, "tenant {tenant:?}");
        assert_eq!(got.iter().collect::<HashSet<_>>().len(), got.len());
        if tenant.is_none() {
            assert_eq!(pages, 6);
        }
        let deactivated = (0..57)
            .step_by(5)
            .filter(|i| tenant.is_none() || expected[*i].1 == tenant)
            .count() as u64;
        assert_eq!(
            store.count("bot", tenant).await.expect("count"),
            Counts {
                total: want.len() as u64,
                active: want.len() as u64 - deactivated,
            },
            "tenant {tenant:?}"
        );
    }

    // A page of exactly the remaining items has no next cursor; limits clamp.
    let all = store.list("bot", None, None, 57).await.expect("list");
    assert_eq!((all.items.len(), all.next_cursor.is_none()), (57, true));
    let one = store.list("bot", None, None, 0).await.expect("list");
    assert_eq!(one.items.len(), 1);
    assert!(one.next_cursor.is_some());
    let big = store
        .list("bot", None, None, MAX_PAGE * 10)
        .await
        .expect("list");
    assert_eq!(big.items.len(), 57);

    // A conversation added behind the cursor is not seen; one ahead is.
    let first = store.list("bot", None, None, 10).await.expect("list");
    store
        .upsert("bot", &reference("19:000", None, AMER), 1)
        .await
        .expect("upsert");
    store
        .upsert("bot", &reference("zz:last", None, AMER), 1)
        .await
        .expect("upsert");
    let mut rest = Vec::new();
    let mut cursor = first.next_cursor;
    while let Some(c) = cursor {
        let page = store.list("bot", None, Some(&c), 10).await.expect("list");
        rest.extend(page.items.into_iter().map(|i| i.reference.conversation.id));
        cursor = page.next_cursor;
    }
    assert_eq!(rest.len(), 48);
    assert_eq!(rest.last().map(String::as_str), Some("zz:last"));
    assert!(!rest.iter().any(|id| id == "19:000"));
}

async fn tenant_change_moves_the_conversation(store: &dyn ConversationStore) {
    store
        .upsert("bot", &reference("c", None, AMER), 1)
        .await
        .expect("upsert");
    assert_eq!(
        store.count("bot", None).await.expect("count"),
        Counts {
            total: 1,
            active: 1
        }
    );
    store
        .upsert("bot", &reference("c", Some("t1"), AMER), 2)
        .await
        .expect("upsert");
    store
        .deactivate("bot", "c", "x", 3)
        .await
        .expect("deactivate");
    store
        .upsert("bot", &reference("c", Some("t2"), AMER), 4)
        .await
        .expect("upsert");
    let ids = |p: botfleet_store::conversations::Page| {
        p.items
            .into_iter()
            .map(|c| c.reference.conversation.id)
            .collect::<Vec<_>>()
    };
    let t1 = store.list("bot", Some("t1"), None, 10).await.expect("list");
    let t2 = store.list("bot", Some("t2"), None, 10).await.expect("list");
    assert!(ids(t1).is_empty());
    assert_eq!(ids(t2), vec!["c".to_owned()]);
    assert_eq!(
        store.count("bot", Some("t1")).await.expect("count"),
        Counts::default()
    );
    let one = Counts {
        total: 1,
        active: 1,
    };
    assert_eq!(store.count("bot", Some("t2")).await.expect("count"), one);
    assert_eq!(store.count("bot", None).await.expect("count"), one);
    let got = store.get("bot", "c").await.expect("get").expect("stored");
    assert_eq!(got.tenant_id.as_deref(), Some("t2"));
    assert_eq!(got.first_seen_ms, 1);
}

async fn bots_are_isolated(store: &dyn ConversationStore) {
    // Bot ids with characters that would break a hash tag.
    for bot in ["b{1}", "b}1{", "b 1"] {
        store
            .upsert(bot, &reference("same", Some("t"), AMER), 1)
            .await
            .expect("upsert");
    }
    store
        .deactivate("b{1}", "same", "gone", 2)
        .await
        .expect("deactivate");
    assert!(
        !store
            .get("b{1}", "same")
            .await
            .expect("get")
            .expect("x")
            .active
    );
    assert!(
        store
            .get("b}1{", "same")
            .await
            .expect("get")
            .expect("x")
            .active
    );
    assert!(
        store
            .get("b 1", "same")
            .await
            .expect("get")
            .expect("x")
            .active
    );
    assert!(store.get("b", "same").await.expect("get").is_none());
}

async fn activity_claims(store: &dyn ConversationStore) {
    use std::time::Duration;
    let ttl = Duration::from_millis(400);
    assert!(store
        .claim_activity("bot", "c", "a1", ttl)
        .await
        .expect("claim"));
    assert!(
        !store
            .claim_activity("bot", "c", "a1", ttl)
            .await
            .expect("claim"),
        "second claim won"
    );
    // other ids, conversations and bots are independent
    assert!(store
        .claim_activity("bot", "c", "a2", ttl)
        .await
        .expect("claim"));
    assert!(store
        .claim_activity("bot", "c2", "a1", ttl)
        .await
        .expect("claim"));
    assert!(store
        .claim_activity("bot2", "c", "a1", ttl)
        .await
        .expect("claim"));
    // released: claimable again (a failed turn gives Teams' resend a chance)
    store
        .release_activity("bot", "c", "a2")
        .await
        .expect("release");
    assert!(store
        .claim_activity("bot", "c", "a2", ttl)
        .await
        .expect("claim"));
    // expired: claimable again
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(store
        .claim_activity("bot", "c", "a1", ttl)
        .await
        .expect("claim"));
}

macro_rules! suite {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn upsert_get_and_service_url_update() {
                super::upsert_get_and_service_url_update(&$make).await;
            }
            #[tokio::test]
            async fn unknown_ids() {
                super::unknown_ids(&$make).await;
            }
            #[tokio::test]
            async fn deactivate_and_reactivate() {
                super::deactivate_and_reactivate(&$make).await;
            }
            #[tokio::test]
            async fn pagination_and_tenant_filter() {
                super::pagination_and_tenant_filter(&$make).await;
            }
            #[tokio::test]
            async fn tenant_change_moves_the_conversation() {
                super::tenant_change_moves_the_conversation(&$make).await;
            }
            #[tokio::test]
            async fn bots_are_isolated() {
                super::bots_are_isolated(&$make).await;
            }
            #[tokio::test]
            async fn activity_claims() {
                super::activity_claims(&$make).await;
            }
        }
    };
}

suite!(memory, MemoryConversationStore::new());
suite!(
    redis_single,
    RedisConversationStore::new(testing::single(), &testing::unique_prefix("conv"))
);
suite!(
    redis_cluster,
    RedisConversationStore::new(testing::cluster(), &testing::unique_prefix("conv"))
);
