//! One suite for every conversation store backend: memory, a single Redis and a
//! 3-master Redis Cluster (started by scripts/test or scripts/redis-up).

use std::collections::HashSet;
use std::time::Duration;

use botfleet_protocol::{ChannelAccount, ConversationAccount, ConversationReference};
use botfleet_store::conversations::{
    ConversationStore, Counts, DeliveryKey, InboundChange, InboundRecord, MemoryConversationStore,
    OutcomeApplied, Recorded, RedisConversationStore, ReferenceOutcome, ReferenceWrite, StoreError,
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

fn seen(reference: &ConversationReference, touch_after: Duration) -> InboundChange<'_> {
    InboundChange::Seen {
        reference,
        touch_after,
    }
}

fn record<'a>(
    conversation_id: &'a str,
    claim: Option<DeliveryKey>,
    change: InboundChange<'a>,
    now_ms: u64,
) -> InboundRecord<'a> {
    InboundRecord {
        conversation_id,
        claim: claim.map(|k| (k, Duration::from_millis(400))),
        change,
        now_ms,
    }
}

fn generation_of(r: &Recorded) -> u64 {
    match r {
        Recorded::Recorded { generation, .. } => *generation,
        Recorded::Duplicate => panic!("unexpected duplicate"),
    }
}

fn write_of(r: &Recorded) -> ReferenceWrite {
    match r {
        Recorded::Recorded { write, .. } => *write,
        Recorded::Duplicate => panic!("unexpected duplicate"),
    }
}

/// A claimed delivery is a duplicate until it expires or is released; a
/// duplicate writes nothing.
async fn delivery_claims(store: &dyn ConversationStore) {
    let k1 = DeliveryKey::from_parts(&["c", "message", "", "a1", "t0"]);
    let k2 = DeliveryKey::from_parts(&["c", "messageUpdate", "editMessage", "a1", "t1"]);
    let r = reference("c", Some("t1"), AMER);
    let first = store
        .record_inbound("bot", &record("c", Some(k1), seen(&r, HOUR), 1_000))
        .await
        .expect("record");
    assert_eq!(write_of(&first), ReferenceWrite::Created);
    let moved = reference("c", Some("t1"), EMEA);
    assert_eq!(
        store
            .record_inbound("bot", &record("c", Some(k1), seen(&moved, HOUR), 2_000))
            .await
            .expect("record"),
        Recorded::Duplicate,
        "second claim won"
    );
    let got = store.get("bot", "c").await.expect("get").expect("stored");
    assert_eq!(
        (got.reference.service_url.as_str(), got.last_seen_ms),
        (AMER, 1_000),
        "a duplicate wrote the reference"
    );
    // other deliveries and bots are independent
    for (bot, key) in [("bot", k2), ("bot2", k1)] {
        assert_ne!(
            store
                .record_inbound(bot, &record("c", Some(key), seen(&r, HOUR), 3_000))
                .await
                .expect("record"),
            Recorded::Duplicate,
            "{bot} {key}"
        );
    }
    // released: claimable again (the bot logic never ran; Teams' resend gets a chance)
    store.release_delivery("bot", &k2).await.expect("release");
    assert_ne!(
        store
            .record_inbound("bot", &record("c", Some(k2), seen(&r, HOUR), 4_000))
            .await
            .expect("record"),
        Recorded::Duplicate
    );
    // an uninstall is claimed the same way
    let k3 = DeliveryKey::from_parts(&["c", "installationUpdate", "", "u1", "t3"]);
    let ended = InboundChange::Ended {
        reason: "uninstalled",
    };
    assert_eq!(
        write_of(
            &store
                .record_inbound("bot", &record("c", Some(k3), ended, 5_000))
                .await
                .expect("record")
        ),
        ReferenceWrite::Deactivated
    );
    assert_eq!(
        store
            .record_inbound("bot", &record("c", Some(k3), ended, 5_001))
            .await
            .expect("record"),
        Recorded::Duplicate
    );
    // expired: claimable again
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_ne!(
        store
            .record_inbound("bot", &record("c", Some(k1), seen(&r, HOUR), 6_000))
            .await
            .expect("record"),
        Recorded::Duplicate
    );
}

const HOUR: Duration = Duration::from_secs(3600);

/// An unchanged reference is not written until the touch interval passed; a
/// touch moves `last_seen` without a new generation; a change is a new one.
async fn inbound_writes_only_what_changed(store: &dyn ConversationStore) {
    let r = reference("w", Some("t1"), AMER);
    let touch = Duration::from_millis(10_000);
    let got = store
        .record_inbound("bot", &record("w", None, seen(&r, touch), 1_000))
        .await
        .expect("record");
    assert_eq!(
        (write_of(&got), generation_of(&got)),
        (ReferenceWrite::Created, 1)
    );
    let mut other_activity = r.clone();
    other_activity.activity_id = Some("a2".into());
    let got = store
        .record_inbound(
            "bot",
            &record("w", None, seen(&other_activity, touch), 5_000),
        )
        .await
        .expect("record");
    assert_eq!(
        (write_of(&got), generation_of(&got)),
        (ReferenceWrite::Unchanged, 1)
    );
    let stored = store.get("bot", "w").await.expect("get").expect("stored");
    assert_eq!((stored.last_seen_ms, stored.generation), (1_000, 1));
    let got = store
        .record_inbound("bot", &record("w", None, seen(&r, touch), 11_000))
        .await
        .expect("record");
    assert_eq!(
        (write_of(&got), generation_of(&got)),
        (ReferenceWrite::Touched, 1)
    );
    let stored = store.get("bot", "w").await.expect("get").expect("stored");
    assert_eq!((stored.last_seen_ms, stored.generation), (11_000, 1));
    let moved = reference("w", Some("t1"), EMEA);
    let got = store
        .record_inbound("bot", &record("w", None, seen(&moved, touch), 12_000))
        .await
        .expect("record");
    assert_eq!(
        (write_of(&got), generation_of(&got)),
        (ReferenceWrite::Updated, 2)
    );
    let stored = store.get("bot", "w").await.expect("get").expect("stored");
    assert_eq!(stored.reference.service_url, EMEA);
    assert_eq!((stored.first_seen_ms, stored.last_seen_ms), (1_000, 12_000));
    // an uninstall of a conversation never stored leaves nothing behind
    let got = store
        .record_inbound(
            "bot",
            &record("never", None, InboundChange::Ended { reason: "x" }, 1),
        )
        .await
        .expect("record");
    assert_eq!(
        (write_of(&got), generation_of(&got)),
        (ReferenceWrite::Unknown, 0)
    );
    assert!(store.get("bot", "never").await.expect("get").is_none());
}

const GCC: &str = "https://smba.infra.gcc.teams.microsoft.com/";

/// Send outcomes apply only to the generation the send read, never reactivate,
/// and a move survives inbound activities that still name the old host.
async fn outcomes_follow_generations(store: &dyn ConversationStore) {
    let r = reference("o", Some("t1"), AMER);
    let gone = ReferenceOutcome::Unreachable {
        reason: "BotNotInConversationRoster",
    };
    let to_gcc = ReferenceOutcome::Moved { service_url: GCC };
    let count = |active| Counts { total: 1, active };
    assert_eq!(
        store
            .report_outcome("bot", "o", 0, &gone, 1)
            .await
            .expect("outcome"),
        OutcomeApplied::Unknown
    );
    let g1 = generation_of(
        &store
            .record_inbound("bot", &record("o", None, seen(&r, HOUR), 1_000))
            .await
            .expect("record"),
    );
    // 403: deactivated, once
    assert_eq!(
        store
            .report_outcome("bot", "o", g1, &gone, 2_000)
            .await
            .expect("outcome"),
        OutcomeApplied::Applied { generation: g1 + 1 }
    );
    assert_eq!(
        store
            .report_outcome("bot", "o", g1 + 1, &gone, 2_500)
            .await
            .expect("outcome"),
        OutcomeApplied::Unchanged
    );
    let stored = store.get("bot", "o").await.expect("get").expect("stored");
    assert!(!stored.active);
    assert_eq!(
        (stored.inactive_reason.as_deref(), stored.inactive_since_ms),
        (Some("BotNotInConversationRoster"), Some(2_000))
    );
    assert_eq!(
        store.count("bot", Some("t1")).await.expect("count"),
        count(0)
    );
    // a move does not reactivate
    assert_eq!(
        store
            .report_outcome("bot", "o", g1 + 1, &to_gcc, 2_600)
            .await
            .expect("outcome"),
        OutcomeApplied::Applied { generation: g1 + 2 }
    );
    let stored = store.get("bot", "o").await.expect("get").expect("stored");
    assert!(!stored.active);
    assert_eq!(stored.reference.service_url, GCC);
    // the user writes again (from the old host): active, reason cleared, still moved
    let got = store
        .record_inbound("bot", &record("o", None, seen(&r, HOUR), 3_000))
        .await
        .expect("record");
    assert_eq!(
        got,
        Recorded::Recorded {
            write: ReferenceWrite::Reactivated,
            generation: g1 + 3,
            service_url_moved_to: Some(GCC.to_owned()),
        }
    );
    let stored = store.get("bot", "o").await.expect("get").expect("stored");
    assert!(stored.active);
    assert_eq!(
        (
            stored.inactive_reason,
            stored.inactive_since_ms,
            stored.last_seen_ms
        ),
        (None, None, 3_000)
    );
    assert_eq!(stored.reference.service_url, GCC);
    assert_eq!(
        store.count("bot", Some("t1")).await.expect("count"),
        count(1)
    );
    assert_eq!(store.count("bot", None).await.expect("count"), count(1));
    // a 403 of a send that read an older generation is stale
    assert_eq!(
        store
            .report_outcome("bot", "o", g1 + 2, &gone, 3_100)
            .await
            .expect("outcome"),
        OutcomeApplied::Stale
    );
    assert!(
        store
            .get("bot", "o")
            .await
            .expect("get")
            .expect("stored")
            .active
    );
    // Teams names a new host: it wins over the move
    let emea = reference("o", Some("t1"), EMEA);
    let got = store
        .record_inbound("bot", &record("o", None, seen(&emea, HOUR), 4_000))
        .await
        .expect("record");
    assert_eq!(
        got,
        Recorded::Recorded {
            write: ReferenceWrite::Updated,
            generation: g1 + 4,
            service_url_moved_to: None,
        }
    );
    assert_eq!(
        store
            .get("bot", "o")
            .await
            .expect("get")
            .expect("stored")
            .reference
            .service_url,
        EMEA
    );
    // uninstalled while a send was in flight: its late outcomes change nothing
    let before_uninstall = g1 + 4;
    assert_eq!(
        write_of(
            &store
                .record_inbound(
                    "bot",
                    &record(
                        "o",
                        None,
                        InboundChange::Ended {
                            reason: "uninstalled"
                        },
                        5_000
                    )
                )
                .await
                .expect("record")
        ),
        ReferenceWrite::Deactivated
    );
    assert_eq!(
        store
            .report_outcome("bot", "o", before_uninstall, &to_gcc, 5_100)
            .await
            .expect("outcome"),
        OutcomeApplied::Stale
    );
    assert_eq!(
        store
            .report_outcome("bot", "o", before_uninstall, &gone, 5_200)
            .await
            .expect("outcome"),
        OutcomeApplied::Unchanged
    );
    let stored = store.get("bot", "o").await.expect("get").expect("stored");
    assert!(!stored.active);
    assert_eq!(stored.inactive_reason.as_deref(), Some("uninstalled"));
    assert_eq!(stored.reference.service_url, EMEA);
    assert_eq!(stored.generation, g1 + 5);
    assert_eq!(
        store.count("bot", Some("t1")).await.expect("count"),
        count(0)
    );
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
            async fn delivery_claims() {
                super::delivery_claims(&$make).await;
            }
            #[tokio::test]
            async fn inbound_writes_only_what_changed() {
                super::inbound_writes_only_what_changed(&$make).await;
            }
            #[tokio::test]
            async fn outcomes_follow_generations() {
                super::outcomes_follow_generations(&$make).await;
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

/// Claim keys are fixed-size whatever the ids: 10 KB of activity id and
/// conversation id make a key no longer than a short one.
#[tokio::test]
async fn redis_claim_keys_stay_bounded() {
    let prefix = testing::unique_prefix("claimsize");
    let pool = testing::single();
    let store = RedisConversationStore::new(pool.clone(), &prefix);
    let long = "x".repeat(10_000);
    let conversation = format!("a:{long}");
    let r = reference(&conversation, Some("t1"), AMER);
    let key = DeliveryKey::from_parts(&[&conversation, "message", "", &long, "t"]);
    store
        .record_inbound("bot", &record(&conversation, Some(key), seen(&r, HOUR), 1))
        .await
        .expect("record");
    let mut conn = pool.get().await.expect("conn");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*:seen:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].len() < prefix.len() + 64, "{}", keys[0]);
}

#[test]
fn delivery_keys_are_fixed_size_and_unambiguous() {
    let a = DeliveryKey::from_parts(&["ab", "c"]);
    assert_ne!(a, DeliveryKey::from_parts(&["a", "bc"]));
    assert_ne!(a, DeliveryKey::from_parts(&["abc"]));
    assert_eq!(a, DeliveryKey::from_parts(&["ab", "c"]));
    assert_eq!(a.to_string().len(), 32);
    let huge = "x".repeat(100_000);
    assert_eq!(DeliveryKey::from_parts(&[&huge]).to_string().len(), 32);
}
