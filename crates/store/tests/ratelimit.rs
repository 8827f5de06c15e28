//! One suite for every rate-limiter backend: memory, a single Redis node, and a
//! Redis Cluster. Redis runs come from `scripts/redis-up` (see `redis_pool::testing`).
//! "Replica" = a second limiter instance with its own Redis pool sharing the keys.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::time::{Duration, Instant};

use botfleet_store::ratelimit::{
    acquire_within, teams, Acquired, Bucket, BucketKey, MemoryRateLimiter, Permit, RateLimitError,
    RateLimiter, RedisRateLimiter, Window,
};
use botfleet_store::redis_pool::testing;

/// Generous enough for scheduling delays on a loaded machine between the grant
/// and the moment the test reads the clock.
const MARGIN: Duration = Duration::from_millis(50);

#[derive(Clone, Copy)]
enum Kind {
    Memory,
    Single,
    Cluster,
}

struct Backend {
    kind: Kind,
    prefix: String,
    memory: Arc<MemoryRateLimiter>,
}

impl Backend {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            prefix: testing::unique_prefix("rl"),
            memory: Arc::new(MemoryRateLimiter::new(MARGIN)),
        }
    }

    /// A limiter; for Redis each call is a new replica (own pool, same keys).
    fn replica(&self) -> Arc<dyn RateLimiter> {
        match self.kind {
            Kind::Memory => self.memory.clone(),
            Kind::Single => Arc::new(RedisRateLimiter::with_prefix(
                testing::single(),
                &self.prefix,
                MARGIN,
            )),
            Kind::Cluster => Arc::new(RedisRateLimiter::with_prefix(
                testing::cluster(),
                &self.prefix,
                MARGIN,
            )),
        }
    }
}

fn bucket(group: &str, name: &str, windows: &[Window]) -> Bucket {
    Bucket::new(BucketKey::new(group, name), windows)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn wait_of(p: Permit) -> Duration {
    match p {
        Permit::Wait(d) => d,
        Permit::Granted => panic!("expected a wait, got a grant"),
    }
}

/// Most grants inside any half-open window of length `period`.
fn max_in_window(times: &[Instant], period: Duration) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort();
    let (mut best, mut i) = (0, 0);
    for j in 0..sorted.len() {
        while sorted[j].duration_since(sorted[i]) >= period {
            i += 1;
        }
        best = best.max(j - i + 1);
    }
    best
}

async fn grants_up_to_the_limit_then_says_how_long_to_wait(b: Backend) {
    let l = b.replica();
    let bk = [bucket("g", "a", &[Window::new(3, ms(300))])];
    for _ in 0..3 {
        assert_eq!(l.try_acquire(&bk).await.unwrap(), Permit::Granted);
    }
    let d = wait_of(l.try_acquire(&bk).await.unwrap());
    assert!(d > ms(200) && d <= ms(300) + MARGIN, "{d:?}");
    // Told to wait: nothing was taken, and waiting as told is enough.
    tokio::time::sleep(d).await;
    assert_eq!(l.try_acquire(&bk).await.unwrap(), Permit::Granted);
}

async fn the_tightest_window_decides(b: Backend) {
    let l = b.replica();
    let bk = [bucket(
        "g",
        "a",
        &[Window::new(2, ms(200)), Window::new(3, ms(1500))],
    )];
    assert_eq!(l.try_acquire(&bk).await.unwrap(), Permit::Granted);
    assert_eq!(l.try_acquire(&bk).await.unwrap(), Permit::Granted);
    let d = wait_of(l.try_acquire(&bk).await.unwrap());
    assert!(d <= ms(200) + MARGIN, "{d:?}");
    tokio::time::sleep(d).await;
    assert_eq!(l.try_acquire(&bk).await.unwrap(), Permit::Granted);
    // Three in 1.5 s: the long window now binds until the first grant leaves it.
    let d = wait_of(l.try_acquire(&bk).await.unwrap());
    assert!(d > ms(1000) && d <= ms(1500) + MARGIN, "{d:?}");
    tokio::time::sleep(d - ms(300)).await;
    assert!(matches!(l.try_acquire(&bk).await.unwrap(), Permit::Wait(_)));
}

async fn all_or_nothing_across_buckets(b: Backend) {
    let l = b.replica();
    let a = bucket("g", "a", &[Window::new(1, Duration::from_secs(10))]);
    let c = bucket("g", "c", &[Window::new(2, Duration::from_secs(10))]);
    assert_eq!(
        l.try_acquire(std::slice::from_ref(&a)).await.unwrap(),
        Permit::Granted
    );
    for _ in 0..5 {
        assert!(matches!(
            l.try_acquire(&[a.clone(), c.clone()]).await.unwrap(),
            Permit::Wait(_)
        ));
    }
    // The refused combined attempts took nothing from `c`.
    for _ in 0..2 {
        assert_eq!(
            l.try_acquire(std::slice::from_ref(&c)).await.unwrap(),
            Permit::Granted
        );
    }
    assert!(matches!(
        l.try_acquire(std::slice::from_ref(&c)).await.unwrap(),
        Permit::Wait(_)
    ));
}

async fn a_block_holds_one_bucket_for_every_replica(b: Backend) {
    let (l1, l2) = (b.replica(), b.replica());
    let a = bucket("g", "a", &[Window::new(100, Duration::from_secs(1))]);
    let other = bucket("g", "other", &[Window::new(100, Duration::from_secs(1))]);
    l1.block(&a.key, ms(400)).await.unwrap();
    // A shorter block does not shorten a longer one.
    l1.block(&a.key, ms(50)).await.unwrap();
    let d = wait_of(l2.try_acquire(std::slice::from_ref(&a)).await.unwrap());
    assert!(d > ms(250) && d <= ms(400), "{d:?}");
    assert_eq!(
        l2.try_acquire(std::slice::from_ref(&other)).await.unwrap(),
        Permit::Granted
    );
    tokio::time::sleep(d).await;
    assert_eq!(
        l2.try_acquire(std::slice::from_ref(&a)).await.unwrap(),
        Permit::Granted
    );
}

async fn concurrent_replicas_never_exceed_any_window(b: Backend) {
    let windows = [Window::new(4, ms(200)), Window::new(6, ms(500))];
    let replicas = [b.replica(), b.replica()];
    let run_for = ms(1600);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let l = replicas[i % 2].clone();
        let bk = vec![
            bucket("tenant-x", "thread", &windows),
            bucket("tenant-x", "tenant", &[Window::new(1000, ms(1000))]),
        ];
        tasks.push(tokio::spawn(async move {
            let mut grants = Vec::new();
            while started.elapsed() < run_for {
                match acquire_within(l.as_ref(), &bk, Duration::from_secs(5))
                    .await
                    .unwrap()
                {
                    Acquired::Granted { .. } => grants.push(Instant::now()),
                    Acquired::TooLong { .. } => panic!("budget is ample"),
                }
            }
            grants
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert!(max_in_window(&all, ms(200)) <= 4, "200 ms window exceeded");
    assert!(max_in_window(&all, ms(500)) <= 6, "500 ms window exceeded");
    // Waiting as told keeps the buckets busy: 6 per ~550 ms over 1.6 s.
    assert!(all.len() >= 14, "only {} grants", all.len());
}

async fn acquire_within_gives_up_instead_of_sleeping_too_long(b: Backend) {
    let l = b.replica();
    let bk = [bucket(
        "g",
        "slow",
        &[Window::new(1, Duration::from_secs(30))],
    )];
    assert!(matches!(
        acquire_within(l.as_ref(), &bk, ms(100)).await.unwrap(),
        Acquired::Granted { .. }
    ));
    let t0 = Instant::now();
    match acquire_within(l.as_ref(), &bk, ms(500)).await.unwrap() {
        Acquired::TooLong { retry_after } => assert!(retry_after > Duration::from_secs(29)),
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() < ms(200), "did not sleep through the budget");
}

async fn teams_send_limits(b: Backend) {
    let l = b.replica();
    let conv = "19:abc@thread.tacv2;messageid=1";
    let send = |c: &str| teams::buckets(teams::Operation::Send, "bot-1", Some("Tenant-1"), c);
    for _ in 0..7 {
        assert_eq!(l.try_acquire(&send(conv)).await.unwrap(), Permit::Granted);
    }
    // Another reply chain of the same channel is the same thread.
    let d = wait_of(
        l.try_acquire(&send("19:abc@thread.tacv2;messageid=2"))
            .await
            .unwrap(),
    );
    assert!(d <= Duration::from_secs(1) + MARGIN, "{d:?}");
    // Another bot has its own per-bot thread bucket but shares the all-bots one (14/s).
    let other_bot = teams::buckets(teams::Operation::Send, "bot-2", Some("tenant-1"), conv);
    for _ in 0..7 {
        assert_eq!(l.try_acquire(&other_bot).await.unwrap(), Permit::Granted);
    }
    // Members calls are limited separately from sends.
    let members = teams::buckets(teams::Operation::Members, "bot-1", Some("tenant-1"), conv);
    assert_eq!(l.try_acquire(&members).await.unwrap(), Permit::Granted);
    // 50 per second per bot per tenant: 7 sends + 1 members call used 8 of bot-1's.
    for i in 0..42 {
        assert_eq!(
            l.try_acquire(&send(&format!("a:user-{i}"))).await.unwrap(),
            Permit::Granted,
            "conversation {i}"
        );
    }
    assert!(matches!(
        l.try_acquire(&send("a:user-last")).await.unwrap(),
        Permit::Wait(_)
    ));
    // Another tenant is not affected.
    assert_eq!(
        l.try_acquire(&teams::buckets(
            teams::Operation::Send,
            "bot-1",
            Some("tenant-2"),
            "a:user-last"
        ))
        .await
        .unwrap(),
        Permit::Granted
    );
}

async fn buckets_of_different_groups_are_refused(b: Backend) {
    let l = b.replica();
    let w = [Window::new(1, ms(100))];
    let err = l
        .try_acquire(&[bucket("g1", "a", &w), bucket("g2", "b", &w)])
        .await
        .unwrap_err();
    assert!(matches!(err, RateLimitError::Invalid(_)), "{err}");
    assert!(matches!(
        l.try_acquire(&[]).await,
        Err(RateLimitError::Invalid(_))
    ));
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Backend::new(super::Kind::Memory)).await })*
        }
        mod redis_single {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Backend::new(super::Kind::Single)).await })*
        }
        mod redis_cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Backend::new(super::Kind::Cluster)).await })*
        }
    };
}

suite!(
    grants_up_to_the_limit_then_says_how_long_to_wait,
    the_tightest_window_decides,
    all_or_nothing_across_buckets,
    a_block_holds_one_bucket_for_every_replica,
    concurrent_replicas_never_exceed_any_window,
    acquire_within_gives_up_instead_of_sleeping_too_long,
    teams_send_limits,
    buckets_of_different_groups_are_refused,
);

#[test]
fn redis_keys_of_one_tenant_share_a_hash_slot() {
    let l = RedisRateLimiter::with_prefix(
        botfleet_store::RedisPool::single("redis://127.0.0.1:1", 1).unwrap(),
        "bf1",
        MARGIN,
    );
    let keys: Vec<String> = teams::buckets(teams::Operation::Send, "bot", Some("T1"), "a:x")
        .iter()
        .map(|b| l.log_key(&b.key))
        .collect();
    assert_eq!(keys[0], "bf1:rl:{t1}:b:bot:send:a:x");
    assert_eq!(keys[1], "bf1:rl:{t1}:t:send:a:x");
    assert_eq!(keys[2], "bf1:rl:{t1}:a:bot");
    assert_eq!(
        teams::thread_of("19:c@thread.tacv2;messageid=9"),
        "19:c@thread.tacv2"
    );
}
