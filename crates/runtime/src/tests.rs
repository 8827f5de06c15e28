//! Actor behaviour below the validator: order, duplicates, reference writes,
//! deactivation, passivation and restarts. Validation itself is tested in
//! `botfleet-auth` and end to end in `botfleet-server`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use botfleet_auth::inbound::{BotTrust, InboundConfig, InboundValidator};
use botfleet_auth::{Cloud, ServiceUrlAllowlist, TenantPolicy};
use botfleet_protocol::Activity;
use botfleet_store::conversations::{
    ConversationStore, Counts, DeliveryKey, InboundRecord, MemoryConversationStore, OutcomeApplied,
    Page, Recorded, ReferenceOutcome, StoreError, StoredConversation,
};
use parking_lot::Mutex;
use serde_json::json;

use crate::handler::{BotHandler, HandlerError, HandlerOutcome, Turn};
use crate::ingress::Shared;
use crate::{Bot, BotRegistry, RuntimeConfig, TurnError, TurnOutcome};

/// Records texts in handling order; sleeps longer for earlier messages so that
/// concurrent handling would visibly reorder them; panics on "panic".
#[derive(Default)]
struct Probe {
    texts: Mutex<Vec<String>>,
    /// Where "gone" reports its outcome.
    store: Mutex<Option<Arc<dyn ConversationStore>>>,
}

#[async_trait]
impl BotHandler for Probe {
    async fn on_turn(&self, turn: &Turn) -> Result<HandlerOutcome, HandlerError> {
        let text = turn.activity.text.clone().unwrap_or_default();
        if text == "panic" {
            panic!("bot logic bug");
        }
        if text == "fail" {
            return Err(HandlerError::Failed("webhook said no".into()));
        }
        if text == "retry" {
            return Err(HandlerError::Retry("webhook not reachable".into()));
        }
        if text == "gone" {
            // What a reply answered 403 reports: the reference's one writer.
            let store = self.store.lock().clone().expect("store set by the fixture");
            crate::delivery::report_outcome(
                store.as_ref(),
                &turn.counters,
                &turn.bot_id,
                turn.activity.conversation_id().unwrap_or_default(),
                turn.reference.generation,
                &[ReferenceOutcome::Unreachable {
                    reason: "BotNotInConversationRoster",
                }],
            )
            .await
            .expect("outcome");
        }
        let n: u64 = text.trim_start_matches('m').parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(20u64.saturating_sub(n))).await;
        self.texts.lock().push(text);
        Ok(HandlerOutcome::Done)
    }
}

/// A store that can be switched off, to prove nothing is lost when it fails.
struct Flaky {
    inner: MemoryConversationStore,
    down: AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("test: store is down".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ConversationStore for Flaky {
    async fn record_inbound(
        &self,
        bot_id: &str,
        record: &InboundRecord<'_>,
    ) -> Result<Recorded, StoreError> {
        self.check()?;
        self.inner.record_inbound(bot_id, record).await
    }
    async fn report_outcome(
        &self,
        bot_id: &str,
        conversation_id: &str,
        generation: u64,
        outcome: &ReferenceOutcome<'_>,
        now_ms: u64,
    ) -> Result<OutcomeApplied, StoreError> {
        self.check()?;
        self.inner
            .report_outcome(bot_id, conversation_id, generation, outcome, now_ms)
            .await
    }
    async fn release_delivery(&self, bot_id: &str, key: &DeliveryKey) -> Result<(), StoreError> {
        self.inner.release_delivery(bot_id, key).await
    }
    async fn get(
        &self,
        bot_id: &str,
        conversation_id: &str,
    ) -> Result<Option<StoredConversation>, StoreError> {
        self.inner.get(bot_id, conversation_id).await
    }
    async fn list(
        &self,
        bot_id: &str,
        tenant_id: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.inner.list(bot_id, tenant_id, cursor, limit).await
    }
    async fn count(&self, bot_id: &str, tenant_id: Option<&str>) -> Result<Counts, StoreError> {
        self.inner.count(bot_id, tenant_id).await
    }
}

struct Fixture {
    shared: Arc<Shared>,
    bot: Arc<Bot>,
    probe: Arc<Probe>,
    store: Arc<Flaky>,
    _arbiters: Vec<actix::Arbiter>,
}

fn fixture(config: RuntimeConfig) -> Fixture {
    fixture_on(
        config,
        Arc::new(Flaky {
            inner: MemoryConversationStore::new(),
            down: AtomicBool::new(false),
        }),
    )
}

/// A runtime on `store`: two fixtures on one store are two replicas sharing Redis.
fn fixture_on(config: RuntimeConfig, store: Arc<Flaky>) -> Fixture {
    let probe = Arc::new(Probe::default());
    *probe.store.lock() = Some(store.clone());
    let cloud = Arc::new(Cloud::preset("public").expect("preset"));
    let trust = Arc::new(BotTrust {
        bot_id: "b".into(),
        app_id: "app".into(),
        service_urls: ServiceUrlAllowlist::new(&cloud.service_url_hosts, &[]),
        cloud,
        tenants: TenantPolicy::default(),
    });
    let bots = Arc::new(
        BotRegistry::new(vec![Bot {
            id: Arc::from("b"),
            trust,
            handler: probe.clone(),
            store: store.clone(),
        }])
        .expect("registry"),
    );
    let bot = bots.get("b").expect("bot").clone();
    let arbiters: Vec<actix::Arbiter> = (0..2).map(|_| actix::Arbiter::new()).collect();
    let shared = Arc::new(Shared {
        validator: Arc::new(InboundValidator::new(
            reqwest::Client::new(),
            InboundConfig::default(),
            Vec::new(),
        )),
        bots,
        tenants: Arc::default(),
        config,
        counters: Arc::default(),
        arbiters: arbiters.iter().map(actix::Arbiter::handle).collect(),
    });
    Fixture {
        shared,
        bot,
        probe,
        store,
        _arbiters: arbiters,
    }
}

fn turn(conversation: &str, id: &str, text: &str) -> Turn {
    let activity: Activity = serde_json::from_value(json!({
        "type": "message",
        "id": id,
        "channelId": "msteams",
        "serviceUrl": "https://smba.trafficmanager.net/emea/",
        "from": {"id": "29:u"},
        "recipient": {"id": "28:app"},
        "conversation": {"id": conversation, "tenantId": "t1"},
        "text": text
    }))
    .expect("activity");
    Turn {
        bot_id: Arc::from("b"),
        tenant_id: Some("t1".into()),
        activity: Arc::new(activity),
        reference: Default::default(),
        counters: Arc::default(),
    }
}

impl Fixture {
    async fn run(&self, t: Turn) -> crate::TurnResult {
        self.shared
            .route(&self.bot, t)
            .await
            .expect("an outcome, not a dropped turn")
    }
}

fn quick() -> RuntimeConfig {
    RuntimeConfig {
        ingress_actors: 1,
        arbiters: 2,
        ..RuntimeConfig::default()
    }
}

#[actix::test]
async fn activities_of_a_conversation_are_handled_in_arrival_order() {
    let f = fixture(quick());
    let receivers: Vec<_> = (0..20)
        .map(|i| {
            f.shared
                .route(&f.bot, turn("c1", &format!("id{i}"), &format!("m{i}")))
        })
        .collect();
    for rx in receivers {
        assert!(matches!(rx.await, Ok(Ok(TurnOutcome::Handled(_)))));
    }
    let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(*f.probe.texts.lock(), expected);
}

#[actix::test]
async fn a_resent_activity_is_dropped() {
    let f = fixture(quick());
    assert!(matches!(
        f.run(turn("c1", "x", "m1")).await,
        Ok(TurnOutcome::Handled(_))
    ));
    assert_eq!(
        f.run(turn("c1", "x", "m1")).await,
        Ok(TurnOutcome::Duplicate)
    );
    assert_eq!(f.probe.texts.lock().len(), 1);
}

#[actix::test]
async fn the_reference_is_written_only_when_it_changed() {
    let f = fixture(quick());
    for i in 0..3 {
        f.run(turn("c1", &format!("i{i}"), "m1"))
            .await
            .expect("handled");
    }
    let tenant = (Arc::from("b"), "t1".to_owned());
    assert_eq!(f.shared.tenants.activity_count(&tenant).await, Some(3));
    assert_eq!(
        f.shared.counters.references_written.load(Ordering::Relaxed),
        1
    );
    let mut moved = turn("c1", "i9", "m1");
    Arc::make_mut(&mut moved.activity).service_url =
        Some("https://smba.trafficmanager.net/amer/".into());
    f.run(moved).await.expect("handled");
    assert_eq!(
        f.shared.counters.references_written.load(Ordering::Relaxed),
        2
    );
    let stored = f.store.get("b", "c1").await.expect("get").expect("stored");
    assert_eq!(
        stored.reference.service_url,
        "https://smba.trafficmanager.net/amer/"
    );
}

#[actix::test]
async fn uninstall_deactivates_and_reinstall_reactivates() {
    let f = fixture(quick());
    f.run(turn("c1", "1", "m1")).await.expect("handled");
    let mut remove = turn("c1", "2", "");
    {
        let a = Arc::make_mut(&mut remove.activity);
        a.kind = "installationUpdate".into();
        a.action = Some("remove".into());
    }
    f.run(remove).await.expect("handled");
    assert!(
        !f.store
            .get("b", "c1")
            .await
            .expect("get")
            .expect("known")
            .active
    );
    let mut add = turn("c1", "3", "");
    {
        let a = Arc::make_mut(&mut add.activity);
        a.kind = "installationUpdate".into();
        a.action = Some("add".into());
    }
    f.run(add).await.expect("handled");
    assert!(
        f.store
            .get("b", "c1")
            .await
            .expect("get")
            .expect("known")
            .active
    );
}

#[actix::test]
async fn a_panicking_handler_does_not_take_the_conversation_down() {
    let f = fixture(quick());
    assert_eq!(
        f.run(turn("c1", "1", "panic")).await,
        Err(TurnError::HandlerPanicked)
    );
    assert!(matches!(
        f.run(turn("c1", "2", "m2")).await,
        Ok(TurnOutcome::Handled(_))
    ));
    assert!(matches!(
        f.run(turn("c2", "3", "m3")).await,
        Ok(TurnOutcome::Handled(_))
    ));
    // bot logic that ran and failed keeps its claim: a resend could repeat it
    assert!(matches!(
        f.run(turn("c1", "4", "fail")).await,
        Err(TurnError::Handler(_))
    ));
    assert_eq!(
        f.run(turn("c1", "4", "fail")).await,
        Ok(TurnOutcome::Duplicate)
    );
    assert_eq!(
        f.run(turn("c1", "1", "panic")).await,
        Ok(TurnOutcome::Duplicate)
    );
    // bot logic that never ran gives it back: Teams' resend is handled
    let retry = f.run(turn("c1", "5", "retry")).await;
    assert!(matches!(&retry, Err(e) if e.resend_helps()), "{retry:?}");
    assert!(matches!(
        f.run(turn("c1", "5", "m5")).await,
        Ok(TurnOutcome::Handled(_))
    ));
}

#[actix::test]
async fn a_store_outage_loses_nothing() {
    let f = fixture(quick());
    f.store.down.store(true, Ordering::SeqCst);
    assert!(matches!(
        f.run(turn("c1", "1", "m1")).await,
        Err(TurnError::Store(_))
    ));
    assert!(
        f.probe.texts.lock().is_empty(),
        "handler ran without a stored reference"
    );
    f.store.down.store(false, Ordering::SeqCst);
    // Teams resends the same id once it gets a 503: now it is handled and stored
    assert!(matches!(
        f.run(turn("c1", "1", "m1")).await,
        Ok(TurnOutcome::Handled(_))
    ));
    assert!(f.store.get("b", "c1").await.expect("get").is_some());
}

#[actix::test]
async fn idle_actors_are_stopped_and_come_back_on_demand() {
    let f = fixture(RuntimeConfig {
        conversation_idle: Duration::from_millis(300),
        tenant_idle: Duration::from_millis(400),
        ..quick()
    });
    let pending: Vec<_> = (0..10)
        .map(|c| f.shared.route(&f.bot, turn(&format!("c{c}"), "1", "m19")))
        .collect();
    for rx in pending {
        assert!(matches!(rx.await, Ok(Ok(TurnOutcome::Handled(_)))));
    }
    assert_eq!(
        f.shared
            .counters
            .conversation_actors
            .load(Ordering::Relaxed),
        10
    );
    assert_eq!(f.shared.tenants.len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        f.shared
            .counters
            .conversation_actors
            .load(Ordering::Relaxed),
        0
    );
    assert_eq!(f.shared.counters.tenant_actors.load(Ordering::Relaxed), 0);
    assert_eq!(f.shared.tenants.len(), 0);
    // a passivated conversation still knows nothing of old ids, but its
    // reference is in the store and it is handled normally
    assert!(matches!(
        f.run(turn("c1", "2", "m2")).await,
        Ok(TurnOutcome::Handled(_))
    ));
    assert_eq!(
        f.shared
            .counters
            .conversation_actors
            .load(Ordering::Relaxed),
        1
    );
}

#[actix::test]
async fn a_tenant_over_its_quota_is_refused_before_any_conversation() {
    let f = fixture(RuntimeConfig {
        tenant_activities_per_sec: Some(5),
        ..quick()
    });
    let pending: Vec<_> = (0..8)
        .map(|i| f.shared.route(&f.bot, turn(&format!("q{i}"), "1", "m19")))
        .collect();
    let mut refused = 0;
    for rx in pending {
        match rx.await.expect("an outcome") {
            Ok(TurnOutcome::Handled(_)) => {}
            Err(TurnError::TenantQuota(5)) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(refused, 3);
    assert_eq!(
        f.shared
            .counters
            .conversation_actors
            .load(Ordering::Relaxed),
        5
    );
    // a second later the tenant has its quota back
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert!(matches!(
        f.run(turn("q9", "1", "m19")).await,
        Ok(TurnOutcome::Handled(_))
    ));
}

fn event(conversation: &str, id: &str, kind: &str, event_type: Option<&str>, ts: &str) -> Turn {
    let mut t = turn(conversation, id, "m19");
    let a = Arc::make_mut(&mut t.activity);
    a.kind = kind.into();
    a.timestamp = Some(ts.into());
    if let Some(e) = event_type {
        a.channel_data = Some(json!({"eventType": e, "tenant": {"id": "t1"}}));
    }
    t
}

/// Teams gives edits, deletes and undeletes the original message's id: each is
/// its own delivery, handled once; each one's resend is dropped, also by a
/// second replica sharing the store.
#[actix::test]
async fn distinct_events_sharing_an_id_are_not_resends() {
    let f = fixture(quick());
    let events = [
        event("e1", "1796", "message", None, "2026-11-30T10:00:00.001Z"),
        event(
            "e1",
            "1796",
            "messageUpdate",
            Some("editMessage"),
            "2026-11-30T10:00:09.46Z",
        ),
        event(
            "e1",
            "1796",
            "messageDelete",
            Some("softDeleteMessage"),
            "2026-11-30T10:00:13.16Z",
        ),
        event(
            "e1",
            "1796",
            "messageUpdate",
            Some("undeleteMessage"),
            "2026-11-30T10:00:20.1Z",
        ),
        // a second edit of the same message
        event(
            "e1",
            "1796",
            "messageUpdate",
            Some("editMessage"),
            "2026-11-30T10:00:31.5Z",
        ),
    ];
    for e in &events {
        let got = f.run(e.clone()).await;
        assert!(
            matches!(got, Ok(TurnOutcome::Handled(_))),
            "{:?}: {got:?}",
            e.activity.kind
        );
    }
    assert_eq!(f.probe.texts.lock().len(), events.len());
    for e in &events {
        assert_eq!(f.run(e.clone()).await, Ok(TurnOutcome::Duplicate));
    }
    let other_replica = fixture_on(quick(), f.store.clone());
    for e in &events {
        assert_eq!(
            other_replica.run(e.clone()).await,
            Ok(TurnOutcome::Duplicate)
        );
    }
    assert!(other_replica.probe.texts.lock().is_empty());
    assert_eq!(
        f.shared.counters.duplicates_dropped.load(Ordering::Relaxed),
        events.len() as u64
    );
}

/// A reference deactivated by a send outcome is active again on the user's
/// next message, on this replica or another: no actor holds a stale copy.
#[actix::test]
async fn a_send_outcome_is_seen_by_the_next_activity() {
    let f = fixture(quick());
    f.run(turn("g1", "1", "m1")).await.expect("handled");
    f.run(turn("g1", "2", "gone")).await.expect("handled");
    let stored = f.store.get("b", "g1").await.expect("get").expect("stored");
    assert!(!stored.active);
    assert_eq!(
        stored.inactive_reason.as_deref(),
        Some("BotNotInConversationRoster")
    );
    f.run(turn("g1", "3", "m3")).await.expect("handled");
    let stored = f.store.get("b", "g1").await.expect("get").expect("stored");
    assert!(stored.active, "the next message did not reactivate it");
    assert_eq!(stored.inactive_reason, None);
    // and through a second replica whose actor for g1 is already running
    let other = fixture_on(quick(), f.store.clone());
    other.run(turn("g1", "4", "m4")).await.expect("handled");
    f.run(turn("g1", "5", "gone")).await.expect("handled");
    other.run(turn("g1", "6", "m6")).await.expect("handled");
    assert!(
        f.store
            .get("b", "g1")
            .await
            .expect("get")
            .expect("stored")
            .active
    );
}
