//! The holder's side of the work queue on every backend (memory, single
//! Redis, Redis Cluster from `scripts/redis-up`): touching items in hand so
//! they do not look idle, giving them back on shutdown, and resuming one's
//! own marker after a lost answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use super::{
    BeginSend, JobSpec, JobStore, JobStoreOptions, MemoryJobStore, RedisJobStore, Target,
    TargetSelection, WorkItem,
};
use crate::redis_pool::testing;

const LEASE: Duration = Duration::from_secs(60);

fn opts() -> JobStoreOptions {
    JobStoreOptions {
        max_deliveries: 2,
        ..JobStoreOptions::default()
    }
}

async fn job_with(store: &dyn JobStore, n: usize) -> (String, Vec<Target>) {
    let spec = JobSpec {
        bot_id: "bot".into(),
        targets: TargetSelection::All,
        activity: serde_json::json!({"type": "message", "text": "hi"}),
        idempotency_key: None,
        body_hash: "h".into(),
        created_by: None,
    };
    let id = store
        .create_job(spec, 1_000)
        .await
        .unwrap()
        .job()
        .id
        .clone();
    let targets: Vec<Target> = (0..n)
        .map(|i| Target::Conversation {
            conversation_id: format!("c{i}"),
        })
        .collect();
    store.add_targets(&id, &targets, 1_000).await.unwrap();
    store.enqueue(&id, &targets).await.unwrap();
    (id, targets)
}

async fn take_n(store: &dyn JobStore, consumer: &str, want: usize) -> Vec<WorkItem> {
    let mut out = Vec::new();
    for _ in 0..50 {
        if out.len() >= want {
            break;
        }
        let got = store
            .take(consumer, want - out.len(), Duration::from_millis(50), 1_000)
            .await
            .unwrap();
        out.extend(got);
    }
    out
}

/// An item its holder touches is not reclaimed however long it waits, and
/// touching does not count as a delivery: once the holder stops (dies), it
/// is reclaimed, not dead-lettered (max_deliveries is 2 here).
async fn touched_items_are_not_reclaimed(store: &dyn JobStore) {
    job_with(store, 1).await;
    let item = take_n(store, "holder", 1).await.pop().unwrap();
    let idle = Duration::from_millis(300);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let lost = store
            .touch("holder", std::slice::from_ref(&item.entry_id))
            .await
            .unwrap();
        assert!(lost.is_empty(), "{lost:?}");
        let r = store.reclaim("other", idle, 10, 1_000).await.unwrap();
        assert!(r.items.is_empty() && r.dead_lettered.is_empty(), "{r:?}");
    }
    // The holder stops touching: reclaimed after the idle time, once.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = store.reclaim("other", idle, 10, 1_000).await.unwrap();
    assert!(
        r.dead_lettered.is_empty(),
        "touches counted as deliveries: {r:?}"
    );
    assert_eq!(r.items.len(), 1, "{r:?}");
    // The former holder learns that the item is no longer its own, and
    // touching does not take it back.
    let lost = store
        .touch("holder", std::slice::from_ref(&item.entry_id))
        .await
        .unwrap();
    assert_eq!(lost, vec![item.entry_id.clone()]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = store.reclaim("third", idle, 10, 1_000).await.unwrap();
    assert_eq!(r.dead_lettered.len(), 1, "still other's, idle: {r:?}");
}

/// Released items are taken by the next `take` of any consumer at once;
/// items the releaser does not own are left alone.
async fn released_items_are_taken_at_once(store: &dyn JobStore) {
    let (_, targets) = job_with(store, 3).await;
    let held = take_n(store, "leaving", 3).await;
    assert_eq!(held.len(), 3);
    assert_eq!(store.release("someone-else", &held).await.unwrap(), 0);
    assert_eq!(store.release("leaving", &held[..2]).await.unwrap(), 2);
    let got = store
        .take("staying", 10, Duration::from_millis(100), 1_000)
        .await
        .unwrap();
    let mut got_targets: Vec<Target> = got.iter().map(|i| i.target.clone()).collect();
    let mut want: Vec<Target> = held[..2].iter().map(|i| i.target.clone()).collect();
    got_targets.sort_by_key(Target::key);
    want.sort_by_key(Target::key);
    assert_eq!(got_targets, want);
    assert!(got
        .iter()
        .all(|i| !held.iter().any(|h| h.entry_id == i.entry_id)));
    assert!(targets.contains(&got[0].target));
    // The third is still the leaver's: not reclaimable by idle time yet.
    assert_eq!(
        store
            .touch("leaving", std::slice::from_ref(&held[2].entry_id))
            .await
            .unwrap(),
        Vec::<String>::new()
    );
}

/// A consumer's own `sending` marker is resumed at once when it says it has
/// no send under way; anybody else still meets `InFlight` within the lease.
async fn own_marker_is_resumed(store: &dyn JobStore) {
    job_with(store, 1).await;
    let item = take_n(store, "owner", 1).await.pop().unwrap();
    assert_eq!(
        store
            .begin_send(&item, "owner", LEASE, 2_000)
            .await
            .unwrap(),
        BeginSend::Begun {
            attempt: 1,
            takeover: false
        }
    );
    // (The answer above "was lost".) Others, and the owner without the
    // assertion, see a send in flight.
    for (consumer, resume) in [("other", true), ("owner", false)] {
        let r = store
            .begin_send_resuming(&item, consumer, LEASE, 3_000, resume)
            .await
            .unwrap();
        assert!(matches!(r, BeginSend::InFlight { .. }), "{consumer}: {r:?}");
    }
    assert_eq!(
        store
            .begin_send_resuming(&item, "owner", LEASE, 3_000, true)
            .await
            .unwrap(),
        BeginSend::Begun {
            attempt: 1,
            takeover: false
        }
    );
}

/// Finished jobs older than the cutoff go with their idempotency key (the
/// key then creates a new job); running ones and newer ones stay.
async fn finished_jobs_are_purged(store: &dyn JobStore) {
    use super::{Expansion, JobState};
    let spec = |key: &str| JobSpec {
        bot_id: "purge-bot".into(),
        targets: TargetSelection::All,
        activity: serde_json::json!({"type": "message", "text": "hi"}),
        idempotency_key: Some(key.into()),
        body_hash: "h".into(),
        created_by: None,
    };
    let old = store
        .create_job(spec("old"), 1_000)
        .await
        .unwrap()
        .job()
        .id
        .clone();
    let running = store
        .create_job(spec("running"), 1_000)
        .await
        .unwrap()
        .job()
        .id
        .clone();
    let recent = store
        .create_job(spec("recent"), 1_000)
        .await
        .unwrap()
        .job()
        .id
        .clone();
    for (id, at) in [(&old, 2_000), (&recent, 9_000)] {
        let done = Expansion {
            cursor: None,
            complete: true,
        };
        let j = store.set_expansion(id, &done, at).await.unwrap();
        assert_eq!(j.state, JobState::Completed);
    }
    assert_eq!(
        store.purge_finished("purge-bot", 5_000, 10).await.unwrap(),
        1
    );
    assert!(store.get_job(&old).await.unwrap().is_none());
    assert!(store.get_job(&running).await.unwrap().is_some());
    assert!(store.get_job(&recent).await.unwrap().is_some());
    let listed = store.list_jobs("purge-bot", None, 10).await.unwrap();
    assert_eq!(listed.items.len(), 2);
    let again = store.create_job(spec("old"), 6_000).await.unwrap();
    assert!(matches!(again, super::CreateJob::Created(_)), "{again:?}");
    assert_ne!(again.job().id, old);
    let same = store.create_job(spec("recent"), 6_000).await.unwrap();
    assert!(matches!(same, super::CreateJob::Existing(_)), "{same:?}");
    assert_eq!(
        store.purge_finished("purge-bot", 5_000, 10).await.unwrap(),
        0
    );
}

macro_rules! suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn touched_items_are_not_reclaimed() {
                super::touched_items_are_not_reclaimed(&$make("touch")).await;
            }
            #[tokio::test]
            async fn released_items_are_taken_at_once() {
                super::released_items_are_taken_at_once(&$make("release")).await;
            }
            #[tokio::test]
            async fn finished_jobs_are_purged() {
                super::finished_jobs_are_purged(&$make("purge")).await;
            }
            #[tokio::test]
            async fn own_marker_is_resumed() {
                super::own_marker_is_resumed(&$make("resume")).await;
            }
        }
    };
}

fn memory(_: &str) -> MemoryJobStore {
    MemoryJobStore::new(opts())
}

fn single(name: &str) -> RedisJobStore {
    RedisJobStore::new(
        testing::single(),
        &testing::unique_prefix(name),
        &[testing::single_url()],
        false,
        opts(),
    )
}

fn cluster(name: &str) -> RedisJobStore {
    RedisJobStore::new(
        testing::cluster(),
        &testing::unique_prefix(name),
        &testing::cluster_urls(),
        true,
        opts(),
    )
}

suite!(on_memory, memory);
suite!(on_redis, single);
suite!(on_redis_cluster, cluster);
