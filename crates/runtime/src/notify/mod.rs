//! Proactive notifications: the workers that deliver jobs of the job store
//! ([`botfleet_store::jobs`]) to their targets through the bots' Bot
//! Connector clients. `docs/notifications.md` is the user's guide.
//!
//! One [`Notifier`] per process, every replica alike (any replica works any
//! job; the store's consumer group shares the work):
//!
//! - **expanders** (one per job this replica expands) turn a job's target
//!   selection into targets page by page (`add_targets` + `enqueue` +
//!   `set_expansion`), and only while fewer than
//!   [`NotifierConfig::expand_ahead`] of its targets wait: a 100,000-target
//!   job never has more than a few pages of work queued, and the process never
//!   holds more than [`NotifierConfig::buffer`] conversation references;
//! - the **taker** takes work items from the store (at most `buffer` in
//!   hand), reads each conversation target's stored reference, and hands them
//!   to the dispatcher by tenant;
//! - the **dispatcher** serves the tenants round-robin ([`fair`]) with at
//!   most [`NotifierConfig::workers`] deliveries in flight and
//!   [`NotifierConfig::per_tenant`] per tenant, pausing a tenant the rate
//!   limiter says is full instead of letting its deliveries hold workers;
//! - each **delivery** ([`deliver`]) takes the target's marker
//!   (`begin_send`), calls the connector (the same client, rate limiter and
//!   buckets as replies: per thread, per bot per tenant, shared through Redis),
//!   reports what Teams said about the reference through
//!   [`crate::delivery::report_outcome`], records the outcome
//!   (`finish_send`) and only then acknowledges the item;
//! - the **reclaimer** takes over items a dead replica left unacknowledged,
//!   and the **sweeper** reads the store's index of active jobs and adopts
//!   those whose expansion claim ran out (their expander's replica died); an
//!   expander renews its claim before every page, so one job has one expander.

mod deliver;
mod fair;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use botfleet_connector::BotClient;
use botfleet_protocol::{Activity, ConversationReference};
use botfleet_store::conversations::{ConversationStore, StoreError};
use botfleet_store::jobs::{
    Expansion, JobRecord, JobState, JobStore, JobStoreError, Target, TargetSelection, WorkItem,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::metrics::Counters;
use crate::now_ms;
use deliver::{Finished, Lookup, Resolved, Tally};
use fair::FairQueue;

/// Failure and retry reasons a target can end with (`failed_by_reason` keys).
/// Teams' own 403/404 codes appear as their snake_case form
/// (`bot_not_in_conversation_roster`, `conversation_not_found`, ...).
pub mod reasons {
    /// No reference is stored for the conversation id: nothing was sent.
    pub const REFERENCE_MISSING: &str = "reference_missing";
    /// The stored reference is inactive (uninstalled, removed, or an earlier
    /// 403/404): nothing was sent.
    pub const REFERENCE_INACTIVE: &str = "reference_inactive";
    /// The local rate limiter (the Teams limits) had no room yet, or Teams
    /// answered 429 (or 503 with `Retry-After`): rescheduled for then.
    pub const THROTTLED: &str = "throttled";
    /// A 5xx, a timeout before sending, a token or Redis hiccup: retried.
    pub const TRANSIENT: &str = "transient";
    /// Transient failures [`super::NotifierConfig::max_attempts`] times.
    pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";
    /// Teams refused the activity itself (400/413): fix it, do not resend.
    pub const BAD_REQUEST: &str = "bad_request";
    /// 401 after a fresh token, or a token endpoint refusing the credential.
    pub const BOT_CREDENTIALS: &str = "bot_credentials";
    /// Teams refused it otherwise (e.g. 500).
    pub const REJECTED: &str = "rejected";
    /// Sent, but the answer was lost (timeout after sending), or the sender
    /// died mid-send and its marker was taken over, with the bot's
    /// `ambiguous_send = report`: not resent so it cannot arrive twice; it may
    /// or may not have arrived.
    pub const DELIVERY_UNKNOWN: &str = "delivery_unknown";
    /// The reference's serviceUrl is not allowed for the bot.
    pub const SERVICE_URL_REFUSED: &str = "service_url_refused";
    /// Teams refused to create the 1:1 chat with a user (403
    /// `ForbiddenOperationException`): the user has not installed the app.
    pub const APP_NOT_INSTALLED: &str = "app_not_installed";
    /// A user or channel target in a tenant with no stored conversation.
    pub const NO_SERVICE_URL: &str = "no_service_url";
    /// The job's bot is gone or has no outbound credential.
    pub const BOT_UNAVAILABLE: &str = "bot_unavailable";
    /// The job's activity cannot be parsed (written by hand or another version).
    pub const INVALID_ACTIVITY: &str = "invalid_activity";
}

/// What the notifier needs of one bot.
#[derive(Clone)]
pub struct NotifyBot {
    /// A client whose `max_rate_limit_wait` is short (see
    /// [`NotifierConfig::max_rate_limit_wait`]): a full tenant is rescheduled,
    /// not waited for.
    pub client: BotClient,
    pub store: Arc<dyn ConversationStore>,
}

/// The bots the notifier can send for; the server implements it over its
/// current bots, so a bot changed at run time is used from the next delivery on.
pub trait NotifyBots: Send + Sync + 'static {
    /// The bot, if it is registered and can send (has a credential).
    fn bot(&self, bot_id: &str) -> Option<NotifyBot>;
    /// Every registered bot (the sweeper looks for their stalled jobs).
    fn bot_ids(&self) -> Vec<String>;
}

/// Tuning; the defaults suit production.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    /// Deliveries in flight at once in this process.
    pub workers: usize,
    /// Deliveries of one tenant in flight at once (50 sends/s per bot per
    /// tenant at ~100 ms each needs about 5).
    pub per_tenant: usize,
    /// Work items held in this process at most (taken, not finished).
    pub buffer: usize,
    /// Items per `take`.
    pub take_batch: usize,
    /// How long one `take` blocks when the queue is empty.
    pub block: Duration,
    /// A `Sending` marker older than this is taken over (its sender died). Must
    /// exceed the longest connector call (retries included).
    pub lease: Duration,
    /// An item unacknowledged this long at another consumer is taken over.
    pub reclaim_idle: Duration,
    /// How long an expander's claim on a job lasts without renewal (it renews
    /// before every page): after a replica dies, its jobs' expansion is
    /// adopted within about this plus [`NotifierConfig::sweep_every`] of it.
    pub expansion_lease: Duration,
    /// Targets added per expansion step.
    pub expand_page: usize,
    /// Expansion waits while this many targets of the job are not final.
    pub expand_ahead: u64,
    /// Attempts (transient failures) before a target fails `retries_exhausted`.
    pub max_attempts: u32,
    /// Attempts before a target that Teams keeps throttling (429, or 503
    /// with `Retry-After`) fails `retries_exhausted`. Higher than
    /// [`NotifierConfig::max_attempts`]: throttling is Teams pacing the
    /// tenant, not the target failing, and each one waits its `Retry-After`.
    pub max_throttled_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A throttled item waiting at most this long stays in this process
    /// (its tenant paused); longer waits go back to the store.
    pub local_requeue_max: Duration,
    /// Finished jobs (their targets and idempotency keys) are deleted this
    /// long after they ended (`notify.retention`).
    pub retention: Duration,
    /// The `RetryPolicy::max_rate_limit_wait` the bots' notifier clients
    /// should use: longer waits come back as `Throttled` and are rescheduled.
    pub max_rate_limit_wait: Duration,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            workers: 64,
            per_tenant: 8,
            // Twice a job's expand_ahead: one big job never fills the hand,
            // so another job's items are taken at once (and served in turn
            // with it: the fair queue's lanes).
            buffer: 4000,
            take_batch: 200,
            block: Duration::from_secs(1),
            lease: Duration::from_secs(180),
            reclaim_idle: Duration::from_secs(60),
            expansion_lease: Duration::from_secs(30),
            expand_page: 500,
            expand_ahead: 2000,
            max_attempts: 8,
            max_throttled_attempts: 30,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            local_requeue_max: Duration::from_secs(3),
            max_rate_limit_wait: Duration::from_millis(200),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl NotifierConfig {
    /// How often unacknowledged items of dead consumers are looked for: a
    /// quarter of [`NotifierConfig::reclaim_idle`], between 100 ms and 15 s.
    pub fn reclaim_every(&self) -> Duration {
        (self.reclaim_idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(15))
    }

    /// How often the items in hand are touched so they do not look idle to
    /// other replicas' reclaim: a third of [`NotifierConfig::reclaim_idle`],
    /// between 100 ms and 20 s (two touches can fail before one is late).
    pub fn touch_every(&self) -> Duration {
        (self.reclaim_idle / 3).clamp(Duration::from_millis(100), Duration::from_secs(20))
    }

    /// How often finished jobs past [`NotifierConfig::retention`] are
    /// deleted: a tenth of it, between 1 s and 1 h.
    pub fn purge_every(&self) -> Duration {
        (self.retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }

    /// How often the active jobs are checked for an expansion nobody holds: a
    /// third of [`NotifierConfig::expansion_lease`], between 100 ms and 10 s.
    pub fn sweep_every(&self) -> Duration {
        (self.expansion_lease / 3).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// Exponential backoff with jitter (50-100 % of the step) before attempt
    /// `attempt + 1`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        use rand::Rng;
        let step = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)))
            .min(self.max_backoff);
        step.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}

/// Deliveries by how they ended, in this process, and the jobs' state as the
/// last sweep saw it (for `/metrics`).
#[derive(Debug, Default)]
pub struct NotifyCounters {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    /// Attempts that will be retried (throttled, transient).
    pub retried: AtomicU64,
    /// Items taken over from a dead consumer.
    pub reclaimed: AtomicU64,
    /// Attempts throttled: the local rate limiter (the Teams limits) had no
    /// room, or Teams answered 429.
    pub throttled: AtomicU64,
    /// What throttled attempts were told to wait, summed (milliseconds).
    pub throttled_wait_ms: AtomicU64,
    /// Jobs whose last outcome this replica recorded (they completed here).
    pub jobs_completed: AtomicU64,
    /// Active jobs by state and their targets not final yet, across bots and
    /// replicas, as of the last sweep (the same on every replica).
    pub jobs_queued: AtomicU64,
    pub jobs_running: AtomicU64,
    pub backlog: AtomicU64,
    /// Outcomes by (outcome, reason): `delivered` (reason empty), `failed`
    /// and `retried` with their reason.
    by_reason: Mutex<BTreeMap<(&'static str, String), u64>>,
}

/// Distinct (outcome, reason) pairs counted; further reasons count as `other`
/// (reasons come from Teams' error codes: a bound keeps /metrics small).
const MAX_REASONS: usize = 100;

impl NotifyCounters {
    fn outcome(&self, outcome: &'static str, reason: &str) {
        // Retry reasons may carry detail after a colon; the metric keeps the code.
        let reason = reason.split(':').next().unwrap_or("").trim();
        let mut map = self.by_reason.lock();
        let key = (outcome, reason.to_owned());
        if map.contains_key(&key) || map.len() < MAX_REASONS {
            *map.entry(key).or_default() += 1;
        } else {
            *map.entry((outcome, "other".to_owned())).or_default() += 1;
        }
    }
    fn delivered(&self) {
        self.delivered.fetch_add(1, Relaxed);
        self.outcome("delivered", "");
    }
    fn failed(&self, reason: &str) {
        self.failed.fetch_add(1, Relaxed);
        self.outcome("failed", reason);
    }
    fn retried(&self, reason: &str) {
        self.retried.fetch_add(1, Relaxed);
        self.outcome("retried", reason);
    }
    fn throttled(&self, wait: Duration) {
        self.throttled.fetch_add(1, Relaxed);
        self.throttled_wait_ms
            .fetch_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Outcomes so far by (outcome, reason), e.g. `("failed",
    /// "conversation_not_found")`; `delivered` has an empty reason.
    pub fn by_reason(&self) -> Vec<((&'static str, String), u64)> {
        self.by_reason
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// A job as deliveries need it (cached per job).
pub(crate) struct JobInfo {
    bot_id: String,
    /// A `users` target with `installApp`.
    install_app: bool,
    /// `None` when the stored activity does not parse.
    activity: Option<Activity>,
}

/// What every task of the notifier shares.
pub(crate) struct Ctx {
    jobs: Arc<dyn JobStore>,
    bots: Arc<dyn NotifyBots>,
    config: NotifierConfig,
    consumer: String,
    counters: Arc<NotifyCounters>,
    runtime_counters: Arc<Counters>,
    /// (bot, tenant) -> a reference of that tenant, for users and channels.
    anchors: Mutex<HashMap<(String, String), ConversationReference>>,
    /// Jobs this process is expanding.
    expanding: Mutex<HashSet<String>>,
    /// Items in hand (taken, not finished), for the taker's backpressure.
    in_hand: AtomicUsize,
    /// Entry ids of the items in hand: the toucher keeps them from looking
    /// idle to other replicas' reclaim while they wait here.
    held: Mutex<HashSet<String>>,
    /// (job, target key) of the sends this process has begun and not yet
    /// recorded (or whose outcome it failed to record: those stay, so they
    /// are never resumed as unsent). A marker of this consumer for a target
    /// not in here was never sent under: it may be resumed at once.
    sending: Mutex<HashSet<(String, String)>>,
    /// Set by [`Notifier::drain`]: take nothing more, give back what waits.
    draining: watch::Sender<bool>,
    /// Set by the dispatcher once draining and nothing is in flight.
    drained: watch::Sender<Option<DrainReport>>,
    /// Installs the app for users Teams refuses a chat with (set by the server).
    installer: std::sync::OnceLock<Arc<dyn AppInstaller>>,
}

/// Installs a bot's Teams app for a user (the server's Graph installedApps,
/// https://learn.microsoft.com/graph/api/userteamwork-post-installedapps),
/// for `users` targets with `installApp`.
#[async_trait::async_trait]
pub trait AppInstaller: Send + Sync {
    /// Installs `bot`'s app for `user` (Entra object id) of `tenant`; done
    /// when already installed. The error says why, for the target's outcome.
    async fn install_for_user(&self, bot: &str, tenant: &str, user: &str) -> Result<(), String>;
}

/// What [`Notifier::drain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Items given back to the consumer group (taken here, not started): any
    /// replica's next take gets them.
    pub released: usize,
    /// Items that could not be given back (the store refused); they are
    /// reclaimed after `reclaim_idle` like a dead replica's.
    pub not_released: usize,
    /// Sends that were in flight when the drain began (they finished).
    pub finished_in_flight: usize,
}

/// The running notifier of this process; dropping it stops its tasks.
pub struct Notifier {
    ctx: Arc<Ctx>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("consumer", &self.ctx.consumer)
            .finish_non_exhaustive()
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Notifier {
    /// Starts the tasks on the current tokio runtime. `consumer` must be unique
    /// per process ([`botfleet_store::jobs::consumer_name`]).
    pub fn start(
        config: NotifierConfig,
        jobs: Arc<dyn JobStore>,
        bots: Arc<dyn NotifyBots>,
        consumer: String,
        runtime_counters: Arc<Counters>,
    ) -> Self {
        let ctx = Arc::new(Ctx {
            jobs,
            bots,
            config,
            consumer,
            counters: Arc::default(),
            runtime_counters,
            anchors: Mutex::new(HashMap::new()),
            expanding: Mutex::new(HashSet::new()),
            in_hand: AtomicUsize::new(0),
            held: Mutex::new(HashSet::new()),
            sending: Mutex::new(HashSet::new()),
            draining: watch::Sender::new(false),
            drained: watch::Sender::new(None),
            installer: std::sync::OnceLock::new(),
        });
        let (items_tx, items_rx) = mpsc::channel::<Vec<Resolved>>(16);
        // The dispatcher and the toucher first: a drain stops the others.
        let tasks = vec![
            tokio::spawn(dispatch_loop(ctx.clone(), items_rx)),
            tokio::spawn(touch_loop(ctx.clone())),
            tokio::spawn(take_loop(ctx.clone(), items_tx.clone())),
            tokio::spawn(reclaim_loop(ctx.clone(), items_tx)),
            tokio::spawn(sweep_loop(ctx.clone())),
            tokio::spawn(purge_loop(ctx.clone())),
        ];
        tracing::info!(consumer = %ctx.consumer, workers = ctx.config.workers, "notifier started");
        Self { ctx, tasks }
    }

    /// Starts expanding a job just created (the API calls this after the 202
    /// is decided; the sweeper would find it later anyway).
    pub fn job_created(&self, job_id: &str) {
        spawn_expander(self.ctx.clone(), job_id.to_owned());
    }

    pub fn counters(&self) -> &Arc<NotifyCounters> {
        &self.ctx.counters
    }

    /// Sets what installs the app for `users` targets with `installApp`
    /// (once; later calls are ignored). Without it such a target fails as
    /// `app_not_installed`, as without the option.
    pub fn set_app_installer(&self, installer: Arc<dyn AppInstaller>) {
        let _ = self.ctx.installer.set(installer);
    }

    /// Hands this replica's work back for a graceful shutdown (SIGTERM):
    /// takes no more items, reclaims nothing, stops expanding (and ends its
    /// expansion claims at once, so another replica adopts those jobs at its
    /// next sweep), gives every item it holds and has not started back to
    /// the consumer group ([`JobStore::release`]: another replica takes them
    /// at once, not after `reclaim_idle`), and waits for the sends in flight
    /// to finish and be recorded (each within the connector's request
    /// timeout and retries); a throttled item that comes back meanwhile is
    /// given back too. Bound it with the shutdown grace: a send still in
    /// flight when the process exits keeps its `sending` marker, taken over
    /// after `lease` (docs/notifications.md). Calling it again waits for the
    /// same drain.
    pub async fn drain(&self) -> DrainReport {
        let ctx = &self.ctx;
        if !ctx.draining.send_replace(true) {
            tracing::info!(
                in_hand = self.in_hand(),
                "notifier: draining; giving back the work this replica holds"
            );
            // The taker and the reclaimer stop at their next turn, the
            // sweeper now; the dispatcher and the toucher go on until the
            // sends in flight are done.
            for t in self.tasks.iter().skip(4) {
                // The sweeper and the purger.
                t.abort();
            }
            let jobs: Vec<String> = ctx.expanding.lock().iter().cloned().collect();
            for job in jobs {
                // A zero lease ends this replica's claim now (expanders stop
                // at their next step because `draining` is set).
                let _ = ctx
                    .jobs
                    .claim_expansion(&job, &ctx.consumer, Duration::ZERO, now_ms())
                    .await;
            }
        }
        let mut rx = ctx.drained.subscribe();
        let report = rx.wait_for(Option::is_some).await.ok().and_then(|r| *r);
        report.unwrap_or_default()
    }

    /// Work items this process holds (taken, not finished).
    pub fn in_hand(&self) -> usize {
        self.ctx.in_hand.load(Relaxed)
    }

    /// This process's consumer name in the job store.
    pub fn consumer(&self) -> &str {
        &self.ctx.consumer
    }
}

// ---------------------------------------------------------------- expansion --

fn spawn_expander(ctx: Arc<Ctx>, job_id: String) {
    if !ctx.expanding.lock().insert(job_id.clone()) {
        return;
    }
    // One span per expansion of a job on this replica (docs/observability.md):
    // its bot and job id; the deliveries it queues have their own spans.
    let span = tracing::info_span!(
        "notification job",
        botfleet.job_id = %job_id,
        botfleet.bot_id = tracing::field::Empty,
        botfleet.outcome = tracing::field::Empty,
    );
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            expand(&ctx, &job_id).await;
            ctx.expanding.lock().remove(&job_id);
        },
        span,
    ));
}

/// Expands one job until its selection is complete, the job is final, or
/// another consumer holds its expansion claim (renewed before every step, so
/// a live expander keeps it and a dead one's ends with its lease).
async fn expand(ctx: &Ctx, job_id: &str) {
    let mut failures = 0u32;
    loop {
        // The job span's `botfleet.outcome`: how this expansion run ended.
        let ended = |outcome: &'static str| {
            tracing::Span::current().record("botfleet.outcome", outcome);
        };
        if *ctx.draining.borrow() {
            ended("draining");
            return;
        }
        match ctx
            .jobs
            .claim_expansion(job_id, &ctx.consumer, ctx.config.expansion_lease, now_ms())
            .await
        {
            Ok(true) => {}
            Ok(false) | Err(JobStoreError::NotFound(_)) => {
                ended("claimed_elsewhere");
                return;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(job = %job_id, error = %e, "notification job: cannot renew the expansion claim; retrying");
                tokio::time::sleep(ctx.config.backoff(failures.min(6))).await;
                continue;
            }
        }
        match expand_step(ctx, job_id).await {
            Ok(Step::Again) => failures = 0,
            Ok(Step::Wait) => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(Step::Done) => {
                ended("expanded");
                return;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(job = %job_id, error = %e, "notification job: expansion step failed; retrying");
                tokio::time::sleep(ctx.config.backoff(failures.min(6))).await;
            }
        }
    }
}

enum Step {
    Again,
    Wait,
    Done,
}

#[derive(Debug, thiserror::Error)]
enum ExpandError {
    #[error(transparent)]
    Jobs(#[from] JobStoreError),
    #[error(transparent)]
    Conversations(#[from] StoreError),
}

async fn expand_step(ctx: &Ctx, job_id: &str) -> Result<Step, ExpandError> {
    let jobs = ctx.jobs.as_ref();
    let Some(mut job) = jobs.get_job(job_id).await? else {
        return Ok(Step::Done);
    };
    tracing::Span::current().record("botfleet.bot_id", job.spec.bot_id.as_str());
    if job.state.is_final() || job.expansion.complete {
        return Ok(Step::Done);
    }
    if job.state == JobState::Queued {
        job = jobs
            .set_state(job_id, JobState::Running, None, now_ms())
            .await?;
    }
    let c = &job.counts;
    if c.pending + c.retrying + c.sending >= ctx.config.expand_ahead {
        return Ok(Step::Wait);
    }
    let (targets, next) = match next_page(ctx, &job).await? {
        Some(page) => page,
        None => {
            let error = format!(
                "bot `{}` is not registered or has no outbound credential",
                job.spec.bot_id
            );
            tracing::warn!(job = %job_id, %error, "notification job failed");
            jobs.set_state(job_id, JobState::Failed, Some(&error), now_ms())
                .await?;
            return Ok(Step::Done);
        }
    };
    if !targets.is_empty() {
        jobs.add_targets(job_id, &targets, now_ms()).await?;
        jobs.enqueue(job_id, &targets).await?;
    }
    let complete = next.is_none();
    jobs.set_expansion(
        job_id,
        &Expansion {
            cursor: next,
            complete,
        },
        now_ms(),
    )
    .await?;
    Ok(if complete { Step::Done } else { Step::Again })
}

/// The targets of the next page of `job`'s selection and the cursor after it
/// (`None`: that was the last). `Ok(None)`: the bot is gone.
async fn next_page(
    ctx: &Ctx,
    job: &JobRecord,
) -> Result<Option<(Vec<Target>, Option<String>)>, ExpandError> {
    let page = ctx.config.expand_page.max(1);
    let cursor = job.expansion.cursor.as_deref();
    // Index cursors for the lists given in the request.
    let index = cursor.and_then(|c| c.parse::<usize>().ok()).unwrap_or(0);
    let slice = |len: usize| {
        let end = (index + page).min(len);
        (index.min(end)..end, (end < len).then(|| end.to_string()))
    };
    Ok(Some(match &job.spec.targets {
        TargetSelection::Conversations { ids } => {
            let (range, next) = slice(ids.len());
            let targets = ids[range]
                .iter()
                .map(|id| Target::Conversation {
                    conversation_id: id.clone(),
                })
                .collect();
            (targets, next)
        }
        TargetSelection::Users { users, .. } => {
            let (range, next) = slice(users.len());
            (
                users[range].iter().cloned().map(Target::User).collect(),
                next,
            )
        }
        TargetSelection::Channel {
            team_id,
            channel_id,
            tenant_id,
        } => (
            vec![Target::Channel {
                team_id: team_id.clone(),
                channel_id: channel_id.clone(),
                tenant_id: tenant_id.clone(),
            }],
            None,
        ),
        TargetSelection::Tenant { .. } | TargetSelection::All => {
            let tenant = match &job.spec.targets {
                TargetSelection::Tenant { tenant_id } => Some(tenant_id.as_str()),
                _ => None,
            };
            let Some(bot) = ctx.bots.bot(&job.spec.bot_id) else {
                return Ok(None);
            };
            let listed = bot
                .store
                .list(&job.spec.bot_id, tenant, cursor, page)
                .await?;
            let targets = listed
                .items
                .into_iter()
                .filter(|c| c.active)
                .map(|c| Target::Conversation {
                    conversation_id: c.reference.conversation.id,
                })
                .collect();
            (targets, listed.next_cursor)
        }
    }))
}

/// Adopts active jobs (the store's index, across bots) of bots this replica
/// serves whose expansion nobody holds: queued jobs nobody started, and jobs
/// whose expander's replica died (its claim ran out). The claim is taken
/// here, so of several sweeping replicas exactly one adopts a job.
async fn sweep_loop(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(ctx.config.sweep_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut cursor: Option<String> = None;
        let (mut queued, mut running, mut backlog) = (0u64, 0u64, 0u64);
        let mut complete_listing = false;
        loop {
            let page = match ctx.jobs.active_jobs(cursor.as_deref(), 200, now_ms()).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = %e, "notifier sweep: cannot list active jobs; next sweep retries");
                    break;
                }
            };
            for job in page.items {
                match job.state {
                    JobState::Queued => queued += 1,
                    _ => running += 1,
                }
                let c = &job.counts;
                backlog += c.pending + c.sending + c.retrying;
                if job.expansion.complete || ctx.expanding.lock().contains(&job.id) {
                    continue;
                }
                // A bot this replica does not serve (yet): another replica's job.
                if ctx.bots.bot(&job.spec.bot_id).is_none() {
                    continue;
                }
                match ctx
                    .jobs
                    .claim_expansion(&job.id, &ctx.consumer, ctx.config.expansion_lease, now_ms())
                    .await
                {
                    Ok(true) => {
                        tracing::info!(job = %job.id, "notifier: adopting a job nobody is expanding");
                        spawn_expander(ctx.clone(), job.id.clone());
                    }
                    Ok(false) | Err(JobStoreError::NotFound(_)) => {}
                    Err(e) => {
                        tracing::debug!(job = %job.id, error = %e, "notifier sweep: cannot claim a job; next sweep retries");
                    }
                }
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => {
                    complete_listing = true;
                    break;
                }
            }
        }
        if complete_listing {
            let c = &ctx.counters;
            c.jobs_queued.store(queued, Relaxed);
            c.jobs_running.store(running, Relaxed);
            c.backlog.store(backlog, Relaxed);
        }
    }
}

// ------------------------------------------------------------------ taking --

/// Reads the reference of conversation targets and the job of each item.
async fn resolve(
    ctx: &Ctx,
    items: Vec<WorkItem>,
    job_cache: &mut HashMap<String, Arc<JobInfo>>,
) -> Vec<Resolved> {
    let mut out = Vec::with_capacity(items.len());
    for item in &items {
        if !job_cache.contains_key(&item.job_id) {
            let info = match ctx.jobs.get_job(&item.job_id).await {
                Ok(Some(job)) => JobInfo {
                    install_app: matches!(
                        job.spec.targets,
                        TargetSelection::Users {
                            install_app: true,
                            ..
                        }
                    ),
                    activity: serde_json::from_value::<Activity>(job.spec.activity.clone()).ok(),
                    bot_id: job.spec.bot_id,
                },
                // A deleted job: its items are dropped by begin_send (Unknown).
                Ok(None) => JobInfo {
                    install_app: false,
                    bot_id: String::new(),
                    activity: None,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "notifier: cannot read a job; its items are retried after reclaim");
                    continue;
                }
            };
            if job_cache.len() >= 1024 {
                job_cache.clear();
            }
            job_cache.insert(item.job_id.clone(), Arc::new(info));
        }
    }
    let lookups = futures::future::join_all(items.into_iter().map(|item| {
        let job = job_cache.get(&item.job_id).cloned();
        async move {
            let job = job?;
            let (tenant, lookup) = match &item.target {
                Target::Conversation { conversation_id } => match ctx.bots.bot(&job.bot_id) {
                    Some(bot) => match bot.store.get(&job.bot_id, conversation_id).await {
                        Ok(c) => (
                            c.as_ref()
                                .and_then(|c| c.tenant_id.clone())
                                .unwrap_or_default(),
                            Lookup::Conversation(c.map(Box::new)),
                        ),
                        Err(e) => (String::new(), Lookup::StoreFailed(e.to_string())),
                    },
                    // The delivery fails it as bot_unavailable.
                    None => (String::new(), Lookup::Create),
                },
                Target::User(u) => (u.tenant_id.clone(), Lookup::Create),
                Target::Channel { tenant_id, .. } => {
                    (tenant_id.clone().unwrap_or_default(), Lookup::Create)
                }
            };
            Some(Resolved {
                item,
                job,
                tenant,
                lookup,
            })
        }
    }))
    .await;
    out.extend(lookups.into_iter().flatten());
    out
}

async fn take_loop(ctx: Arc<Ctx>, tx: mpsc::Sender<Vec<Resolved>>) {
    let mut job_cache: HashMap<String, Arc<JobInfo>> = HashMap::new();
    let mut failures = 0u32;
    let draining = ctx.draining.subscribe();
    loop {
        if *draining.borrow() {
            return;
        }
        let room = ctx.config.buffer.saturating_sub(ctx.in_hand.load(Relaxed));
        if room == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let max = room.min(ctx.config.take_batch.max(1));
        let items = match ctx
            .jobs
            .take(&ctx.consumer, max, ctx.config.block, now_ms())
            .await
        {
            Ok(items) => {
                failures = 0;
                items
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "notifier: cannot take work from the job store; retrying");
                tokio::time::sleep(ctx.config.backoff(failures.min(6))).await;
                continue;
            }
        };
        if items.is_empty() {
            continue;
        }
        // Job infos are re-read now and then, so a cancelled or changed job is seen.
        if job_cache.len() > 256 {
            job_cache.clear();
        }
        let resolved = resolve(&ctx, items, &mut job_cache).await;
        hold(&ctx, &resolved);
        if tx.send(resolved).await.is_err() {
            return;
        }
    }
}

/// Counts items as in hand (taken, not finished) and remembers their entries
/// for the toucher.
fn hold(ctx: &Ctx, items: &[Resolved]) {
    ctx.in_hand.fetch_add(items.len(), Relaxed);
    let mut held = ctx.held.lock();
    for r in items {
        held.insert(r.item.entry_id.clone());
    }
}

/// An item in hand finished here (acknowledged, rescheduled or left for reclaim).
fn release_hold(ctx: &Ctx, entry_id: &str) {
    ctx.in_hand.fetch_sub(1, Relaxed);
    ctx.held.lock().remove(entry_id);
}

/// Keeps the items in hand from looking idle to other replicas' reclaim
/// (`JobStore::touch` every [`NotifierConfig::touch_every`]). Without it, an
/// item waiting here while its tenant is paused (rate limit, `Retry-After`,
/// the per-tenant in-flight cap) for longer than `reclaim_idle` would be
/// taken over by a replica that thinks this one died, again and again, until
/// it is dead-lettered.
async fn touch_loop(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(ctx.config.touch_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ids: Vec<String> = ctx.held.lock().iter().cloned().collect();
        if ids.is_empty() {
            continue;
        }
        match ctx.jobs.touch(&ctx.consumer, &ids).await {
            Ok(lost) if !lost.is_empty() => {
                // Acknowledged meanwhile (normal), or taken over because an
                // earlier touch came too late (the marker keeps it single).
                let mut held = ctx.held.lock();
                for id in &lost {
                    held.remove(id);
                }
                tracing::debug!(
                    count = lost.len(),
                    "notifier: items in hand no longer this replica's"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "notifier: cannot refresh the items in hand; next tick retries (if it stays down past reclaim_idle other replicas may take them over)");
            }
        }
    }
}

/// Deletes every bot's jobs that ended more than `retention` ago (every
/// replica does it; deleting twice is harmless).
async fn purge_loop(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(ctx.config.purge_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let cutoff = now_ms()
            .saturating_sub(u64::try_from(ctx.config.retention.as_millis()).unwrap_or(u64::MAX));
        for bot in ctx.bots.bot_ids() {
            let mut total = 0;
            loop {
                match ctx.jobs.purge_finished(&bot, cutoff, 500).await {
                    Ok(n) => {
                        total += n;
                        if n < 500 {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(bot = %bot, error = %e, "notifier: cannot delete finished jobs past their retention; next round retries");
                        break;
                    }
                }
            }
            if total > 0 {
                tracing::info!(bot = %bot, jobs = total, "notifier: deleted finished notification jobs past their retention");
            }
        }
    }
}

async fn reclaim_loop(ctx: Arc<Ctx>, tx: mpsc::Sender<Vec<Resolved>>) {
    let mut job_cache: HashMap<String, Arc<JobInfo>> = HashMap::new();
    let mut tick = tokio::time::interval(ctx.config.reclaim_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = ctx.draining.subscribe();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = draining.wait_for(|d| *d) => return,
        }
        if *draining.borrow() {
            return;
        }
        let reclaimed = match ctx
            .jobs
            .reclaim(
                &ctx.consumer,
                ctx.config.reclaim_idle,
                ctx.config.take_batch.max(1),
                now_ms(),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "notifier: reclaim failed; next tick retries");
                continue;
            }
        };
        if !reclaimed.dead_lettered.is_empty() {
            tracing::warn!(count = reclaimed.dead_lettered.len(), "notifier: work items dead-lettered after too many deliveries; their targets failed `dead_letter`");
        }
        if reclaimed.items.is_empty() {
            continue;
        }
        ctx.counters
            .reclaimed
            .fetch_add(reclaimed.items.len() as u64, Relaxed);
        tracing::info!(
            count = reclaimed.items.len(),
            "notifier: took over work items another replica left unacknowledged"
        );
        job_cache.clear();
        let resolved = resolve(&ctx, reclaimed.items, &mut job_cache).await;
        hold(&ctx, &resolved);
        if tx.send(resolved).await.is_err() {
            return;
        }
    }
}

// -------------------------------------------------------------- dispatching --

/// Gives items back to the consumer group (a draining notifier); they leave
/// this replica's hand either way (not given back: reclaimed after
/// `reclaim_idle`).
async fn give_back(ctx: &Ctx, items: Vec<Resolved>, report: &mut DrainReport) {
    if items.is_empty() {
        return;
    }
    let work: Vec<WorkItem> = items.iter().map(|r| r.item.clone()).collect();
    match ctx.jobs.release(&ctx.consumer, &work).await {
        Ok(n) => {
            report.released += n;
            report.not_released += work.len().saturating_sub(n);
        }
        Err(e) => {
            report.not_released += work.len();
            tracing::warn!(error = %e, count = work.len(), "notifier: cannot give work back; other replicas reclaim it after reclaim_idle");
        }
    }
    for item in &work {
        release_hold(ctx, &item.entry_id);
    }
}

async fn dispatch_loop(ctx: Arc<Ctx>, mut items: mpsc::Receiver<Vec<Resolved>>) {
    let mut queue: FairQueue<Resolved> = FairQueue::new(ctx.config.per_tenant);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, String, Finished)>();
    let mut in_flight = 0usize;
    let mut draining = ctx.draining.subscribe();
    let mut drain: Option<DrainReport> = None;
    let mut closed = false;
    loop {
        if *draining.borrow_and_update() && drain.is_none() {
            let mut report = DrainReport {
                finished_in_flight: in_flight,
                ..DrainReport::default()
            };
            give_back(&ctx, queue.take_all(), &mut report).await;
            drain = Some(report);
        }
        if let Some(report) = drain {
            // The taker and the reclaimer stop at their next turn (closing
            // the channel); what they hand over meanwhile is given back.
            if in_flight == 0 && closed {
                tracing::info!(
                    released = report.released,
                    not_released = report.not_released,
                    finished_in_flight = report.finished_in_flight,
                    "notifier: drained"
                );
                ctx.drained.send_replace(Some(report));
                return;
            }
        }
        let now = Instant::now();
        while drain.is_none() && in_flight < ctx.config.workers.max(1) {
            let Some((tenant, r)) = queue.next(now) else {
                break;
            };
            in_flight += 1;
            let ctx = ctx.clone();
            let done = done_tx.clone();
            tokio::spawn(async move {
                let entry = r.item.entry_id.clone();
                let finished = deliver::run(ctx, r).await;
                let _ = done.send((tenant, entry, finished));
            });
        }
        let wake = queue
            .next_wake()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = draining.changed(), if drain.is_none() => {}
            batch = items.recv(), if !closed => match (batch, drain.as_mut()) {
                (Some(batch), Some(report)) => give_back(&ctx, batch, report).await,
                (Some(batch), None) => {
                    for r in batch {
                        let tenant = r.tenant.clone();
                        let job = r.item.job_id.clone();
                        queue.push(&tenant, &job, r);
                    }
                }
                (None, Some(_)) => closed = true,
                (None, None) => return,
            },
            Some((tenant, entry, finished)) = done_rx.recv() => {
                in_flight -= 1;
                match finished {
                    Finished::Done(tally) => {
                        release_hold(&ctx, &entry);
                        if tally == Tally::Retried {
                            tracing::trace!("notification attempt rescheduled");
                        }
                    }
                    Finished::Requeue(r, wait) => {
                        ctx.counters.retried(reasons::THROTTLED);
                        ctx.counters.throttled(wait);
                        if let Some(report) = drain.as_mut() {
                            // Its target is `retrying`: whoever takes it
                            // waits for the time recorded there.
                            give_back(&ctx, vec![*r], report).await;
                        } else {
                            let job = r.item.job_id.clone();
                            queue.push_front(&tenant, &job, *r);
                            queue.pause(&tenant, Instant::now() + wait);
                        }
                    }
                }
                queue.done(&tenant);
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}
