//! One suite for every notification job store backend: memory, a single Redis
//! and a 3-master Redis Cluster (started by scripts/test or scripts/redis-up),
//! plus a Redis restart against a redis-server of its own.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use botfleet_store::jobs::{
    BeginSend, CreateJob, DeliveryState, DeliveryStateKind, Expansion, JobSpec, JobState, JobStore,
    JobStoreError, JobStoreOptions, MemoryJobStore, RedisJobStore, SendOutcome, Target,
    TargetSelection, WorkItem, REASON_DEAD_LETTER,
};
use botfleet_store::redis_pool::testing;
use botfleet_store::RedisPool;

const LEASE: Duration = Duration::from_secs(60);

fn spec(bot: &str, key: Option<&str>, hash: &str) -> JobSpec {
    JobSpec {
        bot_id: bot.into(),
        targets: TargetSelection::Tenant {
            tenant_id: "t1".into(),
        },
        activity: serde_json::json!({"type": "message", "text": "hello"}),
        idempotency_key: key.map(str::to_owned),
        body_hash: hash.into(),
        created_by: Some("key1".into()),
    }
}

fn conv(i: usize) -> Target {
    Target::Conversation {
        conversation_id: format!("a:{i:05}"),
    }
}

fn convs(n: usize) -> Vec<Target> {
    (0..n).map(conv).collect()
}

async fn new_job(store: &dyn JobStore) -> String {
    store
        .create_job(spec("bot", None, "h"), 1_000)
        .await
        .expect("create")
        .job()
        .id
        .clone()
}

/// Takes until `want` items came or `tries` empty reads.
async fn take_n(store: &dyn JobStore, consumer: &str, want: usize, now: u64) -> Vec<WorkItem> {
    let mut out = Vec::new();
    for _ in 0..50 {
        if out.len() >= want {
            break;
        }
        let got = store
            .take(consumer, want - out.len(), Duration::from_millis(50), now)
            .await
            .expect("take");
        out.extend(got);
    }
    out
}

async fn idempotency(store: &dyn JobStore) {
    let first = store
        .create_job(spec("bot", Some("k1"), "h1"), 1_000)
        .await
        .expect("create");
    let CreateJob::Created(job) = &first else {
        panic!("expected a new job, got {first:?}")
    };
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.created_at_ms, 1_000);
    assert_eq!(job.spec, spec("bot", Some("k1"), "h1"));
    assert_eq!(job.id.len(), 32);

    let again = store
        .create_job(spec("bot", Some("k1"), "h1"), 2_000)
        .await
        .expect("create again");
    assert_eq!(again, CreateJob::Existing(job.clone()));

    match store
        .create_job(spec("bot", Some("k1"), "other"), 3_000)
        .await
    {
        Err(JobStoreError::Conflict {
            bot_id,
            key,
            job_id,
        }) => assert_eq!(
            (bot_id.as_str(), key.as_str(), job_id),
            ("bot", "k1", job.id.clone())
        ),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Keys are per bot; no key means a new job every time.
    let other_bot = store
        .create_job(spec("bot2", Some("k1"), "h1"), 1_000)
        .await
        .expect("other bot");
    assert!(matches!(other_bot, CreateJob::Created(_)));
    assert_ne!(other_bot.job().id, job.id);
    let a = new_job(store).await;
    let b = new_job(store).await;
    assert_ne!(a, b);

    assert!(matches!(
        store.create_job(spec("", None, "h"), 1).await,
        Err(JobStoreError::Invalid(_))
    ));
    assert!(matches!(
        store.create_job(spec("bot", Some(""), "h"), 1).await,
        Err(JobStoreError::Invalid(_))
    ));
    assert!(store.get_job("0000").await.expect("get").is_none());
    assert!(matches!(
        store.cancel("0000", 1).await,
        Err(JobStoreError::NotFound(_))
    ));
    assert!(matches!(
        store.add_targets("0000", &convs(1), 1).await,
        Err(JobStoreError::NotFound(_))
    ));
    assert!(matches!(
        store.list_targets("0000", None, None, 10).await,
        Err(JobStoreError::NotFound(_))
    ));

    // The bot's jobs, newest first, in pages.
    let mut ids = Vec::new();
    for at in [10_u64, 20, 20, 30] {
        let j = store
            .create_job(spec("lister", None, "h"), at)
            .await
            .expect("create");
        ids.push((at, j.job().id.clone()));
    }
    ids.sort_by(|a, b| b.cmp(a));
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_jobs("lister", cursor.as_deref(), 3)
            .await
            .expect("list");
        seen.extend(page.items.iter().map(|j| (j.created_at_ms, j.id.clone())));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen, ids);
}

async fn lifecycle(store: &dyn JobStore) {
    let job = new_job(store).await;
    assert_eq!(
        store
            .add_targets(&job, &convs(3), 1_000)
            .await
            .expect("add"),
        3
    );
    // Re-adding (a re-expanded page) adds nothing.
    assert_eq!(
        store
            .add_targets(&job, &convs(4), 1_000)
            .await
            .expect("add"),
        1
    );
    let running = store
        .set_state(&job, JobState::Running, None, 1_500)
        .await
        .expect("running");
    assert_eq!(running.started_at_ms, Some(1_500));
    store.enqueue(&job, &convs(4)).await.expect("enqueue");
    let items = take_n(store, "c1", 4, 2_000).await;
    assert_eq!(items.len(), 4);
    let by_key: HashMap<String, WorkItem> =
        items.into_iter().map(|i| (i.target.key(), i)).collect();
    let item = |i: usize| by_key[&conv(i).key()].clone();

    // 0: delivered.
    assert_eq!(
        store
            .begin_send(&item(0), "c1", LEASE, 2_000)
            .await
            .expect("begin"),
        BeginSend::Begun {
            attempt: 1,
            takeover: false
        }
    );
    let f = store
        .finish_send(
            &job,
            &conv(0),
            &SendOutcome::Delivered {
                activity_id: Some("act-0".into()),
            },
            2_100,
        )
        .await
        .expect("finish");
    assert!(f.applied && !f.job_completed);
    store.ack(&item(0)).await.expect("ack");
    // A second finish (a late sender) changes nothing.
    let late = store
        .finish_send(
            &job,
            &conv(0),
            &SendOutcome::Failed {
                reason: "x".into(),
                status: None,
                detail: None,
            },
            2_200,
        )
        .await
        .expect("finish");
    assert!(!late.applied);
    assert_eq!(
        store
            .begin_send(&item(0), "c2", LEASE, 2_300)
            .await
            .expect("begin"),
        BeginSend::AlreadyFinal(DeliveryStateKind::Delivered)
    );

    // 1: failed without a call (inactive reference).
    store
        .finish_send(
            &job,
            &conv(1),
            &SendOutcome::Failed {
                reason: "reference_inactive".into(),
                status: None,
                detail: Some("uninstalled".into()),
            },
            2_000,
        )
        .await
        .expect("finish");
    store.ack(&item(1)).await.expect("ack");

    // 2: throttled, rescheduled at 10_000: not taken before, NotDue before.
    assert!(matches!(
        store.begin_send(&item(2), "c1", LEASE, 2_000).await,
        Ok(BeginSend::Begun { attempt: 1, .. })
    ));
    store
        .finish_send(
            &job,
            &conv(2),
            &SendOutcome::Retry {
                next_at_ms: 10_000,
                reason: "throttled".into(),
            },
            2_000,
        )
        .await
        .expect("finish");
    store
        .reschedule(&item(2), 10_000)
        .await
        .expect("reschedule");
    assert!(store
        .take("c1", 10, Duration::ZERO, 5_000)
        .await
        .expect("take")
        .is_empty());
    assert_eq!(
        store
            .begin_send(&item(2), "c1", LEASE, 5_000)
            .await
            .expect("begin"),
        BeginSend::NotDue { at_ms: 10_000 }
    );

    let rec = store.get_job(&job).await.expect("get").expect("job");
    assert_eq!(rec.counts.total, 4);
    assert_eq!(rec.counts.delivered, 1);
    assert_eq!(rec.counts.retrying, 1);
    assert_eq!(rec.counts.pending, 1);
    assert_eq!(
        rec.counts.failed_by_reason.get("reference_inactive"),
        Some(&1)
    );

    let again = take_n(store, "c1", 1, 10_000).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].target, conv(2));
    assert_eq!(again[0].attempt, 1);
    assert_eq!(
        store
            .begin_send(&again[0], "c1", LEASE, 10_000)
            .await
            .expect("begin"),
        BeginSend::Begun {
            attempt: 2,
            takeover: false
        }
    );
    store
        .finish_send(
            &job,
            &conv(2),
            &SendOutcome::Delivered { activity_id: None },
            10_100,
        )
        .await
        .expect("finish");
    store.ack(&again[0]).await.expect("ack");

    // 3: expansion complete, then the last outcome completes the job.
    let rec = store
        .set_expansion(
            &job,
            &Expansion {
                cursor: None,
                complete: true,
            },
            10_200,
        )
        .await
        .expect("expansion");
    assert_eq!(rec.state, JobState::Running);
    assert!(rec.expansion.complete);
    assert!(matches!(
        store.begin_send(&item(3), "c1", LEASE, 10_300).await,
        Ok(BeginSend::Begun { .. })
    ));
    let f = store
        .finish_send(
            &job,
            &conv(3),
            &SendOutcome::Failed {
                reason: "conversation_not_found".into(),
                status: Some(404),
                detail: None,
            },
            10_400,
        )
        .await
        .expect("finish");
    assert!(f.applied && f.job_completed);
    store.ack(&item(3)).await.expect("ack");
    let rec = store.get_job(&job).await.expect("get").expect("job");
    assert_eq!(rec.state, JobState::Completed);
    assert_eq!(rec.finished_at_ms, Some(10_400));
    assert_eq!(rec.counts.delivered, 2);
    assert_eq!(rec.counts.failed(), 2);
    assert_eq!(
        (rec.counts.pending, rec.counts.sending, rec.counts.retrying),
        (0, 0, 0)
    );

    let failed = store
        .list_targets(&job, Some(DeliveryStateKind::Failed), None, 10)
        .await
        .expect("list");
    assert_eq!(failed.items.len(), 2);
    assert_eq!(failed.items[1].target, conv(3));
    assert_eq!(
        failed.items[1].state,
        DeliveryState::Failed {
            reason: "conversation_not_found".into(),
            status: Some(404),
            detail: None
        }
    );
    assert_eq!(failed.items[1].attempts, 1);
    let delivered = store
        .list_targets(&job, Some(DeliveryStateKind::Delivered), None, 10)
        .await
        .expect("list");
    assert_eq!(
        delivered.items[0].state,
        DeliveryState::Delivered {
            activity_id: Some("act-0".into())
        }
    );
    assert_eq!(delivered.items[1].attempts, 2);
    // A final job stays final.
    let rec = store
        .set_state(&job, JobState::Running, None, 20_000)
        .await
        .expect("state");
    assert_eq!(rec.state, JobState::Completed);
    let rec = store.cancel(&job, 20_000).await.expect("cancel");
    assert_eq!(rec.state, JobState::Completed);
}

async fn begin_send_race(store: Arc<dyn JobStore>) {
    let job = new_job(store.as_ref()).await;
    store.add_targets(&job, &convs(1), 1).await.expect("add");
    // The same target queued twice (a re-expanded page).
    store.enqueue(&job, &convs(1)).await.expect("enqueue");
    store.enqueue(&job, &convs(1)).await.expect("enqueue");
    let items = take_n(store.as_ref(), "c1", 2, 1).await;
    assert_eq!(items.len(), 2);
    let mut tasks = Vec::new();
    for (n, item) in items.into_iter().enumerate() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .begin_send(&item, &format!("c{n}"), LEASE, 5)
                .await
                .expect("begin")
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    let begun = answers
        .iter()
        .filter(|a| matches!(a, BeginSend::Begun { .. }))
        .count();
    assert_eq!(begun, 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .any(|a| matches!(a, BeginSend::InFlight { since_ms: 5, .. })),
        "{answers:?}"
    );
    let rec = store.get_job(&job).await.expect("get").expect("job");
    assert_eq!(rec.counts.sending, 1);
}

async fn reclaim_after_consumer_dies(store: &dyn JobStore) {
    let job = new_job(store).await;
    store.add_targets(&job, &convs(2), 1).await.expect("add");
    store.enqueue(&job, &convs(2)).await.expect("enqueue");
    let dead = take_n(store, "dead-consumer", 2, 1).await;
    assert_eq!(dead.len(), 2);
    // The dead consumer began sending item 0 (then died), never item 1.
    let mut sorted = dead.clone();
    sorted.sort_by_key(|i| i.target.key());
    assert!(matches!(
        store
            .begin_send(&sorted[0], "dead-consumer", LEASE, 1_000)
            .await,
        Ok(BeginSend::Begun { .. })
    ));
    // Not idle long enough yet.
    let early = store
        .reclaim("survivor", Duration::from_secs(30), 10, 1_000)
        .await
        .expect("reclaim");
    assert!(early.items.is_empty());
    tokio::time::sleep(Duration::from_millis(150)).await;
    let got = store
        .reclaim("survivor", Duration::from_millis(100), 10, 2_000)
        .await
        .expect("reclaim");
    assert_eq!(got.items.len(), 2, "{got:?}");
    assert!(got.dead_lettered.is_empty());
    let mut got = got.items;
    got.sort_by_key(|i| i.target.key());
    assert_eq!(got[0].entry_id, sorted[0].entry_id);
    // Item 1: never begun, the survivor sends it.
    assert!(matches!(
        store.begin_send(&got[1], "survivor", LEASE, 2_000).await,
        Ok(BeginSend::Begun {
            takeover: false,
            ..
        })
    ));
    // Item 0: the marker is held within its lease: not sent again now...
    assert_eq!(
        store
            .begin_send(&got[0], "survivor", LEASE, 2_000)
            .await
            .expect("begin"),
        BeginSend::InFlight {
            entry_id: sorted[0].entry_id.clone(),
            since_ms: 1_000
        }
    );
    // ...and taken over once the lease is over (the documented duplicate window).
    assert_eq!(
        store
            .begin_send(&got[0], "survivor", LEASE, 1_000 + 60_000)
            .await
            .expect("begin"),
        BeginSend::Begun {
            attempt: 2,
            takeover: true
        }
    );
    for item in &got {
        store
            .finish_send(
                &job,
                &item.target,
                &SendOutcome::Delivered { activity_id: None },
                62_000,
            )
            .await
            .expect("finish");
        store.ack(item).await.expect("ack");
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after = store
        .reclaim("survivor", Duration::from_millis(100), 10, 70_000)
        .await
        .expect("reclaim");
    assert!(after.items.is_empty(), "acked items are not reclaimed");
    let rec = store.get_job(&job).await.expect("get").expect("job");
    assert_eq!(rec.counts.delivered, 2);
}

async fn dead_letter_after_n(store: &dyn JobStore) {
    // The store was built with max_deliveries = 2.
    let job = new_job(store).await;
    store.add_targets(&job, &convs(1), 1).await.expect("add");
    store.enqueue(&job, &convs(1)).await.expect("enqueue");
    assert_eq!(take_n(store, "a", 1, 1).await.len(), 1);
    let idle = Duration::from_millis(50);
    tokio::time::sleep(Duration::from_millis(80)).await;
    let second = store.reclaim("b", idle, 10, 2).await.expect("reclaim");
    assert_eq!(second.items.len(), 1);
    assert!(second.dead_lettered.is_empty());
    tokio::time::sleep(Duration::from_millis(80)).await;
    let third = store.reclaim("c", idle, 10, 3).await.expect("reclaim");
    assert!(third.items.is_empty());
    assert_eq!(third.dead_lettered.len(), 1);
    assert_eq!(third.dead_lettered[0].target, conv(0));
    let dead = store.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].job_id, job);
    let failed = store
        .list_targets(&job, Some(DeliveryStateKind::Failed), None, 10)
        .await
        .expect("list");
    assert!(matches!(
        &failed.items[0].state,
        DeliveryState::Failed { reason, .. } if reason == REASON_DEAD_LETTER
    ));
    tokio::time::sleep(Duration::from_millis(80)).await;
    let later = store.reclaim("d", idle, 10, 4).await.expect("reclaim");
    assert!(later.items.is_empty() && later.dead_lettered.is_empty());
}

async fn pagination_and_cancel(store: &dyn JobStore) {
    let job = new_job(store).await;
    store.add_targets(&job, &convs(25), 1).await.expect("add");
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_targets(&job, None, cursor.as_deref(), 10)
            .await
            .expect("list");
        assert!(page.items.len() <= 10);
        keys.extend(page.items.into_iter().map(|t| t.key));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    let expected: Vec<String> = convs(25).iter().map(Target::key).collect();
    assert_eq!(keys, expected);
    assert!(matches!(
        store
            .list_targets(&job, None, Some("not-a-cursor"), 10)
            .await,
        Err(JobStoreError::InvalidCursor)
    ));

    // Two targets under way when the job is cancelled.
    store.enqueue(&job, &convs(2)).await.expect("enqueue");
    let items = take_n(store, "c", 2, 1).await;
    for item in &items {
        assert!(matches!(
            store.begin_send(item, "c", LEASE, 2).await,
            Ok(BeginSend::Begun { .. })
        ));
    }
    let rec = store.cancel(&job, 3).await.expect("cancel");
    assert_eq!(rec.state, JobState::Cancelled);
    assert_eq!(rec.finished_at_ms, Some(3));
    assert_eq!(rec.counts.cancelled, 23);
    assert_eq!(rec.counts.sending, 2);
    // The sends under way record their outcome; nothing else is sent.
    for item in &items {
        let f = store
            .finish_send(
                &job,
                &item.target,
                &SendOutcome::Delivered { activity_id: None },
                4,
            )
            .await
            .expect("finish");
        assert!(f.applied);
    }
    store.enqueue(&job, &[conv(7)]).await.expect("enqueue");
    let late = take_n(store, "c", 1, 5).await;
    assert_eq!(
        store
            .begin_send(&late[0], "c", LEASE, 5)
            .await
            .expect("begin"),
        BeginSend::AlreadyFinal(DeliveryStateKind::Cancelled)
    );
    let rec = store.get_job(&job).await.expect("get").expect("job");
    assert_eq!(rec.state, JobState::Cancelled);
    assert_eq!(
        (rec.counts.delivered, rec.counts.cancelled, rec.counts.total),
        (2, 23, 25)
    );
    let cancelled = store
        .list_targets(&job, Some(DeliveryStateKind::Cancelled), None, 1000)
        .await
        .expect("list");
    assert_eq!(cancelled.items.len(), 23);
    // Targets added to a cancelled job are cancelled.
    assert_eq!(
        store.add_targets(&job, &[conv(99)], 6).await.expect("add"),
        1
    );
    let rec = store.get_job(&job).await.expect("get").expect("job");
    assert_eq!(rec.counts.cancelled, 24);
}

/// Workers drain a job whose every target was queued twice, with random
/// outcomes: each target is begun exactly once and the counts add up.
async fn concurrent_workers(store: Arc<dyn JobStore>, n: usize) {
    let job = new_job(store.as_ref()).await;
    let targets = convs(n);
    store.add_targets(&job, &targets, 1).await.expect("add");
    store.enqueue(&job, &targets).await.expect("enqueue");
    store.enqueue(&job, &targets).await.expect("enqueue");
    store
        .set_expansion(
            &job,
            &Expansion {
                cursor: None,
                complete: true,
            },
            1,
        )
        .await
        .expect("expansion");
    let begun = Arc::new(AtomicU64::new(0));
    let clock = Arc::new(AtomicU64::new(10));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (store, begun, clock) = (store.clone(), begun.clone(), clock.clone());
        tasks.push(tokio::spawn(async move {
            let consumer = format!("w{w}");
            let mut idle = 0;
            while idle < 5 {
                let now = clock.fetch_add(1, Ordering::Relaxed);
                let items = store
                    .take(&consumer, 16, Duration::from_millis(20), now)
                    .await
                    .expect("take");
                if items.is_empty() {
                    idle += 1;
                    continue;
                }
                idle = 0;
                for item in items {
                    match store
                        .begin_send(&item, &consumer, LEASE, now)
                        .await
                        .expect("begin")
                    {
                        BeginSend::Begun { attempt, .. } => {
                            if attempt == 1 {
                                begun.fetch_add(1, Ordering::Relaxed);
                            }
                            let outcome = match rand::random::<u8>() % 4 {
                                0 => SendOutcome::Failed {
                                    reason: "conversation_not_found".into(),
                                    status: Some(404),
                                    detail: None,
                                },
                                1 if attempt == 1 => SendOutcome::Retry {
                                    next_at_ms: now,
                                    reason: "throttled".into(),
                                },
                                _ => SendOutcome::Delivered { activity_id: None },
                            };
                            let retry = matches!(outcome, SendOutcome::Retry { .. });
                            store
                                .finish_send(&item.job_id, &item.target, &outcome, now)
                                .await
                                .expect("finish");
                            if retry {
                                store.reschedule(&item, now).await.expect("reschedule");
                            } else {
                                store.ack(&item).await.expect("ack");
                            }
                        }
                        BeginSend::NotDue { at_ms } => {
                            store.reschedule(&item, at_ms).await.expect("reschedule")
                        }
                        BeginSend::InFlight { entry_id, .. } if entry_id == item.entry_id => {}
                        _ => store.ack(&item).await.expect("ack"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    assert_eq!(begun.load(Ordering::Relaxed), n as u64);
    let rec = store.get_job(&job).await.expect("get").expect("job");
    let c = &rec.counts;
    assert_eq!(c.total, n as u64);
    assert_eq!(c.delivered + c.failed(), n as u64, "{c:?}");
    assert_eq!(
        (c.pending, c.sending, c.retrying, c.cancelled),
        (0, 0, 0, 0)
    );
    assert_eq!(rec.state, JobState::Completed);
    let mut listed = BTreeSet::new();
    let mut cursor = None;
    for kind in [DeliveryStateKind::Delivered, DeliveryStateKind::Failed] {
        loop {
            let page = store
                .list_targets(&job, Some(kind), cursor.as_deref(), 100)
                .await
                .expect("list");
            listed.extend(page.items.into_iter().map(|t| t.key));
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
    }
    assert_eq!(listed.len(), n);
}

/// The index of active jobs lists non-final jobs of every bot, oldest first,
/// page by page; the expansion claim admits one expander per job at a time;
/// the 1:1 conversations created with users are remembered per bot and tenant.
async fn active_jobs_and_expansion_claim(store: Arc<dyn JobStore>) {
    let mut ids = Vec::new();
    for (i, bot) in ["b1", "b2", "b1", "b3"].iter().enumerate() {
        let at = 1_000 * (i as u64 + 1);
        let job = store
            .create_job(spec(bot, None, "h"), at)
            .await
            .expect("create");
        ids.push(job.job().id.clone());
    }
    let listed = |page: &botfleet_store::jobs::JobPage| {
        page.items.iter().map(|j| j.id.clone()).collect::<Vec<_>>()
    };
    let first = store.active_jobs(None, 3, 10_000).await.expect("active");
    assert_eq!(listed(&first), ids[..3], "oldest first, across bots");
    let rest = store
        .active_jobs(first.next_cursor.as_deref(), 3, 10_000)
        .await
        .expect("next page");
    assert_eq!(listed(&rest), ids[3..]);
    assert!(rest.next_cursor.is_none());
    assert!(matches!(
        store.active_jobs(Some("nope"), 3, 10_000).await,
        Err(JobStoreError::InvalidCursor)
    ));

    // Final jobs leave the listing: cancelled, completed (nothing to send), failed.
    store.cancel(&ids[1], 5_000).await.expect("cancel");
    store
        .set_expansion(
            &ids[0],
            &Expansion {
                cursor: None,
                complete: true,
            },
            5_000,
        )
        .await
        .expect("complete");
    store
        .set_state(&ids[3], JobState::Failed, Some("bot gone"), 5_000)
        .await
        .expect("fail");
    let page = store.active_jobs(None, 10, 10_000).await.expect("active");
    assert_eq!(listed(&page), [ids[2].clone()]);

    // One expander at a time; renewals by the holder; takeover after the lease.
    let job = &ids[2];
    let lease = Duration::from_secs(10);
    assert!(store
        .claim_expansion(job, "w1", lease, 20_000)
        .await
        .expect("claim"));
    assert!(!store
        .claim_expansion(job, "w2", lease, 21_000)
        .await
        .expect("held"));
    assert!(store
        .claim_expansion(job, "w1", lease, 25_000)
        .await
        .expect("renew"));
    assert!(
        !store
            .claim_expansion(job, "w2", lease, 34_999)
            .await
            .expect("held until 35 000"),
        "the renewal extended the lease"
    );
    assert!(store
        .claim_expansion(job, "w2", lease, 35_001)
        .await
        .expect("expired"));
    assert!(!store
        .claim_expansion(job, "w1", lease, 35_002)
        .await
        .expect("lost"));
    // Jobs that need no expansion are never claimed.
    assert!(!store
        .claim_expansion(&ids[0], "w1", lease, 40_000)
        .await
        .expect("completed"));
    assert!(!store
        .claim_expansion(&ids[1], "w1", lease, 40_000)
        .await
        .expect("cancelled"));
    assert!(matches!(
        store
            .claim_expansion("0123456789abcdef0123456789abcdef", "w1", lease, 1)
            .await,
        Err(JobStoreError::NotFound(_))
    ));

    // Racing claimants of an unclaimed job: exactly one wins.
    let fresh = store
        .create_job(spec("b4", None, "h"), 50_000)
        .await
        .expect("create")
        .job()
        .id
        .clone();
    let claims = futures::future::join_all((0..8).map(|i| {
        let store = store.clone();
        let fresh = fresh.clone();
        async move {
            store
                .claim_expansion(&fresh, &format!("c{i}"), lease, 50_000)
                .await
                .expect("claim")
        }
    }))
    .await;
    assert_eq!(claims.iter().filter(|c| **c).count(), 1, "{claims:?}");

    // The 1:1 conversations created with users, per bot and tenant.
    assert_eq!(
        store
            .user_conversation("b1", "t1", "u1")
            .await
            .expect("get"),
        None
    );
    store
        .set_user_conversation("b1", "t1", "u1", "a:1x")
        .await
        .expect("set");
    assert_eq!(
        store
            .user_conversation("b1", "t1", "u1")
            .await
            .expect("get")
            .as_deref(),
        Some("a:1x")
    );
    for (bot, tenant, user) in [("b2", "t1", "u1"), ("b1", "t2", "u1"), ("b1", "t1", "u2")] {
        assert_eq!(
            store
                .user_conversation(bot, tenant, user)
                .await
                .expect("get"),
            None,
            "{bot} {tenant} {user}"
        );
    }
    store
        .set_user_conversation("b1", "t1", "u1", "a:1y")
        .await
        .expect("replace");
    assert_eq!(
        store
            .user_conversation("b1", "t1", "u1")
            .await
            .expect("get")
            .as_deref(),
        Some("a:1y")
    );
}

fn opts() -> JobStoreOptions {
    JobStoreOptions {
        max_deliveries: 2,
        ..JobStoreOptions::default()
    }
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

macro_rules! suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn idempotency() {
                super::idempotency(&$make("idem")).await;
            }
            #[tokio::test]
            async fn lifecycle() {
                super::lifecycle(&$make("life")).await;
            }
            #[tokio::test]
            async fn begin_send_race() {
                super::begin_send_race(Arc::new($make("race"))).await;
            }
            #[tokio::test]
            async fn reclaim_after_consumer_dies() {
                super::reclaim_after_consumer_dies(&$make("reclaim")).await;
            }
            #[tokio::test]
            async fn dead_letter_after_n() {
                super::dead_letter_after_n(&$make("dead")).await;
            }
            #[tokio::test]
            async fn pagination_and_cancel() {
                super::pagination_and_cancel(&$make("page")).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn active_jobs_and_expansion_claim() {
                super::active_jobs_and_expansion_claim(Arc::new($make("active"))).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_workers() {
                super::concurrent_workers(Arc::new($make("conc")), 300).await;
            }
        }
    };
}

suite!(memory, |_: &str| MemoryJobStore::new(opts()));
suite!(redis, single);
suite!(redis_cluster, cluster);

/// A redis-server of this test's own with AOF on every write, on a free port.
struct OwnRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start(port: u16, dir: &std::path::Path) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server (install Redis, see scripts/test): {e}"));
        let me = Self {
            port,
            dir: dir.to_owned(),
            child: Some(child),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return me;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on {port} did not start");
    }

    /// SIGKILL: no shutdown save, only what AOF already has.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        *self = Self::start(self.port, &self.dir.clone());
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn retry<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, JobStoreError>>,
{
    for _ in 0..100 {
        match f().await {
            Ok(v) => return v,
            Err(JobStoreError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("Redis did not come back");
}

#[tokio::test]
async fn redis_restart_mid_job_loses_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let dir = std::env::temp_dir().join(format!("bf-jobs-restart-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut redis = OwnRedis::start(port, &dir);
    let url = format!("redis://127.0.0.1:{port}");
    let pool = RedisPool::single(&url, 4).expect("pool");
    let store = RedisJobStore::new(pool, "restart", &[url], false, JobStoreOptions::default());
    let job = new_job(&store).await;
    let n = 40;
    store.add_targets(&job, &convs(n), 1).await.expect("add");
    store.enqueue(&job, &convs(n)).await.expect("enqueue");
    store
        .set_expansion(
            &job,
            &Expansion {
                cursor: None,
                complete: true,
            },
            1,
        )
        .await
        .expect("expansion");
    let mut sent = HashMap::<String, u32>::new();
    let mut restarted = false;
    let mut now = 10;
    // Half of the work, the restart, then the rest: the taken-but-unacked
    // items come back through reclaim, the rest through take.
    loop {
        now += 1;
        let mut items = retry(|| store.take("w", 7, Duration::from_millis(20), now)).await;
        if items.is_empty() {
            let r = retry(|| store.reclaim("w", Duration::ZERO, 100, now)).await;
            items = r.items;
        }
        if items.is_empty() {
            let rec = retry(|| store.get_job(&job)).await.expect("job");
            if rec.state == JobState::Completed {
                break;
            }
            continue;
        }
        for (i, item) in items.iter().enumerate() {
            if !restarted && sent.len() >= n / 2 && i == 3 {
                // Items 3.. of this batch were taken and never acked.
                redis.restart();
                restarted = true;
                break;
            }
            if let BeginSend::Begun { .. } =
                retry(|| store.begin_send(item, "w", Duration::from_secs(60), now)).await
            {
                *sent.entry(item.target.key()).or_default() += 1;
                retry(|| {
                    store.finish_send(
                        &item.job_id,
                        &item.target,
                        &SendOutcome::Delivered { activity_id: None },
                        now,
                    )
                })
                .await;
            }
            retry(|| store.ack(item)).await;
        }
    }
    assert!(restarted);
    assert_eq!(sent.len(), n, "every target sent");
    assert!(sent.values().all(|&c| c == 1), "none sent twice: {sent:?}");
    let rec = store.get_job(&job).await.expect("get").expect("job");
    assert_eq!(rec.counts.delivered, n as u64);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
