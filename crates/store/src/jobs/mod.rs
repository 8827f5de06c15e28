//! Durable proactive-notification jobs: the job records, the per-target delivery
//! state (with the exactly-once marker) and the delivery work queue.
//!
//! Two backends pass one test suite (`tests/jobs.rs`): [`MemoryJobStore`] (the
//! embedded default: the same semantics within one process, nothing survives a
//! restart) and [`RedisJobStore`] (single node or Redis Cluster, on Redis
//! Streams with a consumer group; its module comment documents the key layout).
//!
//! # How a notifier uses it
//! 1. The API calls [`JobStore::create_job`] before answering 202: the job and
//!    its [`TargetSelection`] are persisted (and the idempotency key mapped).
//! 2. One expander at a time per job (it holds [`JobStore::claim_expansion`],
//!    renewed before every page; sweeps find jobs to adopt through
//!    [`JobStore::active_jobs`]) expands the selection page by page (conversation ids as given,
//!    the conversations of a tenant, ...) and for each page calls
//!    [`JobStore::add_targets`] (records them `Pending`), [`JobStore::enqueue`]
//!    (one work item each) and then [`JobStore::set_expansion`] with the cursor
//!    of the next page (and `complete = true` after the last). A crash between
//!    these steps only makes the next owner redo the page: adding a target twice
//!    is a no-op and a duplicate work item is dropped by [`JobStore::begin_send`].
//! 3. Workers call [`JobStore::take`] (one caller per process at a time: the
//!    Redis read blocks its connection), and for each [`WorkItem`]:
//!
//!    | [`BeginSend`] | what the worker does |
//!    | --- | --- |
//!    | `Begun` | send, [`JobStore::finish_send`] the outcome, then [`JobStore::ack`] (or [`JobStore::reschedule`] when the outcome is `Retry`) |
//!    | `NotDue { at_ms }` | [`JobStore::reschedule`] the item at `at_ms` |
//!    | `InFlight { entry_id, .. }` | `ack` when `entry_id` is not this item's; otherwise leave it (it is reclaimed later and then found final) |
//!    | `AlreadyFinal(_)`, `Unknown` | `ack` |
//!
//!    A throttled send (429) is `finish_send(Retry)` + `reschedule`: it never
//!    holds a worker while it waits.
//! 4. Periodically, [`JobStore::reclaim`] takes over items another consumer
//!    took and did not ack within `min_idle` (it died); an item delivered
//!    [`JobStoreOptions::max_deliveries`] times goes to the dead-letter stream
//!    instead and its target fails with reason [`REASON_DEAD_LETTER`].
//!
//! # Exactly once, and the duplicate window
//! [`JobStore::begin_send`] atomically moves a target from `Pending`/`Retrying`
//! to `Sending` (the marker) before the connector call, and
//! [`JobStore::finish_send`] atomically records the outcome and the job's
//! counts. A second work item for the same target (a reclaim, a re-expanded
//! page) finds `Sending` (a live sender: not sent again) or a final state (not
//! sent again). The one window in which a target can be sent twice: the sender
//! dies while its send is in flight, after the request left and before
//! `finish_send` recorded the outcome (the connector call plus one store round
//! trip: Teams may have accepted a request whose answer never arrived). A
//! live sender that cannot reach the store keeps retrying `finish_send`, so a
//! store outage alone does not open the window. The marker then stays
//! `Sending` until its lease ends, and the next
//! `begin_send` after the lease takes it over (`Begun { takeover: true }`).
//! What the taker does is the bot's `ambiguous_send` policy, decided by the
//! notifier (docs/notifications.md): `report` (the default) records the target
//! as `delivery_unknown` and never sends it twice; `resend` sends again, which
//! is the only place a target can reach Teams twice. Without the takeover a
//! target whose sender died *before* sending would stay `Sending` for ever.
//!
//! All times are milliseconds since the Unix epoch (`*_ms`), passed in by the
//! caller, so tests control them; replicas' clocks must agree to well within
//! the lease.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[cfg(test)]
mod hold_tests;
mod memory;
mod redis_store;

pub use memory::MemoryJobStore;
pub use redis_store::RedisJobStore;

/// Largest page the listing methods return, whatever the caller asks for.
pub const MAX_PAGE: usize = 1000;

/// The failure reason of a target whose work item was delivered to workers
/// [`JobStoreOptions::max_deliveries`] times without being acknowledged (each
/// worker died or hung while handling it).
pub const REASON_DEAD_LETTER: &str = "dead_letter";

/// A user of a tenant, by Entra object id: botfleet creates (or reuses) the 1:1
/// conversation with them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserTarget {
    pub aad_object_id: String,
    pub tenant_id: String,
}

/// Who a job is for, as the API received it; expanded lazily into [`Target`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetSelection {
    /// These conversation ids (each must have a stored reference at send time).
    Conversations { ids: Vec<String> },
    /// Every active conversation of the bot in this tenant.
    Tenant { tenant_id: String },
    /// Every active conversation of the bot.
    All,
    /// A new thread in a team channel where the bot is installed.
    Channel {
        team_id: String,
        channel_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant_id: Option<String>,
    },
    /// 1:1 conversations with these users.
    Users {
        users: Vec<UserTarget>,
        /// Install the bot's Teams app for a user Teams refuses a 1:1 chat
        /// with (403: not installed), through Graph, then create it again once
        /// (docs/notifications.md, docs/graph.md).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        install_app: bool,
    },
}

/// One recipient of a job: what one delivery goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// A stored conversation reference, by conversation id.
    Conversation { conversation_id: String },
    /// A user's 1:1 conversation (created through the connector when needed).
    User(UserTarget),
    /// A new thread in a team channel.
    Channel {
        team_id: String,
        channel_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant_id: Option<String>,
    },
}

impl Target {
    /// The target's id within its job, unique per target and stable:
    /// `c:<conversation id>`, `u:<tenant>:<object id>`, `ch:<team>:<channel>`
    /// (ids are Teams ids, which contain no newline). Listings are ordered by it.
    pub fn key(&self) -> String {
        match self {
            Self::Conversation { conversation_id } => format!("c:{conversation_id}"),
            Self::User(u) => format!("u:{}:{}", u.tenant_id, u.aad_object_id),
            Self::Channel {
                team_id,
                channel_id,
                ..
            } => format!("ch:{team_id}:{channel_id}"),
        }
    }
}

/// What to create: persisted as given before the API answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub bot_id: String,
    pub targets: TargetSelection,
    /// The Bot Framework activity to send (validated by the API).
    pub activity: serde_json::Value,
    /// The client's `Idempotency-Key`, if any (unique per bot).
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// A hash of the request body (the API's choice, e.g. hex SHA-256): the same
    /// idempotency key with another body hash is a [`JobStoreError::Conflict`].
    pub body_hash: String,
    /// Who asked (the admin key id), for the record.
    #[serde(default)]
    pub created_by: Option<String>,
}

/// A job's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Persisted, no worker started it yet.
    Queued,
    /// Expanding and/or delivering.
    Running,
    /// Every target reached a final state (delivered, failed or cancelled).
    Completed,
    /// Cancelled: targets not sent yet were not sent.
    Cancelled,
    /// The job itself could not run (e.g. its bot was removed); see `error`.
    Failed,
}

impl JobState {
    /// Completed, Cancelled or Failed: nothing more happens.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled | Self::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "cancelled" => Self::Cancelled,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// Target counts of a job; always `total == pending + sending + retrying +
/// delivered + sum(failed_by_reason) + cancelled` (each change is atomic).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCounts {
    /// Targets added so far (grows while the selection is expanded).
    pub total: u64,
    /// Not sent yet.
    pub pending: u64,
    /// A sender holds the marker (the connector call is under way).
    pub sending: u64,
    pub delivered: u64,
    /// Waiting for their next attempt (throttled or a retryable failure).
    pub retrying: u64,
    /// Final failures by reason (e.g. `conversation_not_found`, [`REASON_DEAD_LETTER`]).
    pub failed_by_reason: BTreeMap<String, u64>,
    pub cancelled: u64,
}

impl JobCounts {
    pub fn failed(&self) -> u64 {
        self.failed_by_reason.values().sum()
    }
}

/// How far the job actor got expanding the selection, so that another replica
/// resumes where a dead one stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expansion {
    /// Opaque cursor of the next page to expand (the conversation store's, or
    /// an index into a given list); `None` = start over / nothing more.
    pub cursor: Option<String>,
    /// Every target has been added: the job completes when none is left to send.
    pub complete: bool,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// 32 lowercase hex digits.
    pub id: String,
    pub spec: JobSpec,
    pub state: JobState,
    pub counts: JobCounts,
    pub expansion: Expansion,
    /// Why the job failed (`state == Failed`).
    #[serde(default)]
    pub error: Option<String>,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
}

/// What [`JobStore::create_job`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", content = "job", rename_all = "snake_case")]
pub enum CreateJob {
    Created(JobRecord),
    /// The idempotency key was used before with the same body: that job.
    Existing(JobRecord),
}

impl CreateJob {
    pub fn job(&self) -> &JobRecord {
        match self {
            Self::Created(j) | Self::Existing(j) => j,
        }
    }
}

/// One target's delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    /// The marker written before the send: `entry_id` is the work item that
    /// holds it, since `since_ms`.
    Sending {
        entry_id: String,
        consumer: String,
        since_ms: u64,
    },
    Delivered {
        /// The id the connector gave the sent activity, if any.
        activity_id: Option<String>,
    },
    Retrying {
        /// Sends attempted so far.
        attempts: u32,
        next_at_ms: u64,
        /// Why the last attempt did not deliver (e.g. `throttled`).
        reason: String,
    },
    Failed {
        /// Machine-readable, e.g. `conversation_not_found`, `reference_inactive`.
        reason: String,
        /// The connector's HTTP status, when there was a call.
        status: Option<u16>,
        /// Human-readable detail (never message text or a token).
        detail: Option<String>,
    },
    Cancelled,
}

/// [`DeliveryState`] without its data: listing filters and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStateKind {
    Pending,
    Sending,
    Delivered,
    Retrying,
    Failed,
    Cancelled,
}

impl DeliveryStateKind {
    pub const ALL: [Self; 6] = [
        Self::Pending,
        Self::Sending,
        Self::Delivered,
        Self::Retrying,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sending => "sending",
            Self::Delivered => "delivered",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// `pending`, `sending`, `delivered`, `retrying`, `failed`, `cancelled`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Delivered, Failed or Cancelled.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Failed | Self::Cancelled)
    }
}

impl DeliveryState {
    pub fn kind(&self) -> DeliveryStateKind {
        match self {
            Self::Pending => DeliveryStateKind::Pending,
            Self::Sending { .. } => DeliveryStateKind::Sending,
            Self::Delivered { .. } => DeliveryStateKind::Delivered,
            Self::Retrying { .. } => DeliveryStateKind::Retrying,
            Self::Failed { .. } => DeliveryStateKind::Failed,
            Self::Cancelled => DeliveryStateKind::Cancelled,
        }
    }
}

/// One target of a job with its state (the API maps it to a shape close to
/// Teams' batch "failed entries": `id`, `error`, status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetEntry {
    /// [`Target::key`].
    pub key: String,
    pub target: Target,
    pub state: DeliveryState,
    /// Sends begun so far.
    pub attempts: u32,
    pub updated_at_ms: u64,
}

/// One page of targets, by [`Target::key`] (byte order); `next_cursor` is
/// `None` on the last page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetPage {
    pub items: Vec<TargetEntry>,
    pub next_cursor: Option<String>,
}

/// One page of a bot's jobs, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobPage {
    pub items: Vec<JobRecord>,
    pub next_cursor: Option<String>,
}

/// One unit of delivery work taken from the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    /// The queue entry (a Redis Stream id on Redis); what `ack` acknowledges.
    pub entry_id: String,
    pub job_id: String,
    pub target: Target,
    /// 0 for the first enqueue, +1 on every [`JobStore::reschedule`].
    pub attempt: u32,
}

/// What [`JobStore::reclaim`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Items idle too long at another consumer, now this consumer's.
    pub items: Vec<WorkItem>,
    /// Items delivered `max_deliveries` times: moved to the dead-letter stream,
    /// acknowledged, and their targets failed with [`REASON_DEAD_LETTER`]
    /// (unless already final).
    pub dead_lettered: Vec<WorkItem>,
}

/// The answer of [`JobStore::begin_send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginSend {
    /// The marker is this item's now: send. `takeover` = a previous sender's
    /// marker had outlived its lease (that sender may have sent: the documented
    /// duplicate window). `attempt` counts sends begun, this one included.
    Begun { attempt: u32, takeover: bool },
    /// A retry that is not due before `at_ms`: reschedule the item then.
    NotDue { at_ms: u64 },
    /// Another item holds the marker within its lease: do not send.
    InFlight { entry_id: String, since_ms: u64 },
    /// The target is final already: do not send, ack.
    AlreadyFinal(DeliveryStateKind),
    /// No such job or target (the job was deleted): ack.
    Unknown,
}

/// What a send did, for [`JobStore::finish_send`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SendOutcome {
    Delivered {
        activity_id: Option<String>,
    },
    /// Try again at `next_at_ms` (throttled, a retryable 5xx, ...).
    Retry {
        next_at_ms: u64,
        reason: String,
    },
    /// Final failure (also without a call: a missing or inactive reference).
    Failed {
        reason: String,
        status: Option<u16>,
        detail: Option<String>,
    },
}

/// The answer of [`JobStore::finish_send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishSend {
    /// False when the target was final already (another sender finished it,
    /// or the job was cancelled): nothing was changed.
    pub applied: bool,
    /// This outcome was the job's last: it is `Completed` now.
    pub job_completed: bool,
}

/// Settings of a store.
#[derive(Debug, Clone)]
pub struct JobStoreOptions {
    /// Deliveries of one work item (take + reclaims) before it is dead-lettered.
    pub max_deliveries: u32,
    /// Dead-letter entries kept (older ones are trimmed, approximately on Redis).
    pub dead_letter_max_len: u64,
    /// The consumer group of the work stream.
    pub group: String,
}

impl Default for JobStoreOptions {
    fn default() -> Self {
        Self {
            max_deliveries: 5,
            dead_letter_max_len: 100_000,
            group: "notifiers".into(),
        }
    }
}

#[derive(Debug, Error)]
pub enum JobStoreError {
    #[error("job store unavailable (retry): {0}")]
    Unavailable(String),
    #[error("no notification job `{0}`")]
    NotFound(String),
    #[error("idempotency key `{key}` of bot `{bot_id}` was used for job `{job_id}` with another request body; use a new key for a different notification")]
    Conflict {
        bot_id: String,
        key: String,
        job_id: String,
    },
    #[error("invalid cursor: pass back the `next_cursor` of the previous page unchanged")]
    InvalidCursor,
    #[error("invalid job request: {0}")]
    Invalid(String),
    #[error("notification job `{job_id}` cannot be read ({reason}); it was written by an incompatible version or edited by hand")]
    Corrupt { job_id: String, reason: String },
}

/// Where notification jobs, their targets and their delivery work live. See
/// the module documentation for the protocol a notifier follows.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Persists a new `Queued` job (id chosen by the store), or returns the job
    /// an earlier request with the same (bot, idempotency key) and body hash
    /// created. Errors: `Conflict` (same key, other body hash), `Invalid`
    /// (empty bot id or body hash).
    async fn create_job(&self, spec: JobSpec, now_ms: u64) -> Result<CreateJob, JobStoreError>;

    async fn get_job(&self, job_id: &str) -> Result<Option<JobRecord>, JobStoreError>;

    /// A bot's jobs, newest first; `limit` clamped to `1..=MAX_PAGE`.
    async fn list_jobs(
        &self,
        bot_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, JobStoreError>;

    /// A bot's jobs in `state` (all with `None`), newest first; `limit`
    /// clamped to `1..=MAX_PAGE`. Pages [`JobStore::list_jobs`] and filters:
    /// one call reads at most 10,000 jobs of the bot and, when it has not
    /// filled the page by then, answers what it found with a cursor after
    /// the last job it read (a page may then be short, even empty, with a
    /// `next_cursor`: keep following it).
    async fn list_jobs_in_state(
        &self,
        bot_id: &str,
        state: Option<JobState>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, JobStoreError> {
        const SCAN_PAGE: usize = 200;
        const SCAN_MAX: usize = 10_000;
        let Some(state) = state else {
            return self.list_jobs(bot_id, cursor, limit).await;
        };
        let size = page_size(limit);
        let mut items = Vec::new();
        let mut cursor = cursor.map(str::to_owned);
        let mut scanned = 0;
        let mut last_read: Option<String> = None;
        while scanned < SCAN_MAX {
            let page = self.list_jobs(bot_id, cursor.as_deref(), SCAN_PAGE).await?;
            for job in page.items {
                scanned += 1;
                last_read = Some(encode_cursor(&memory::job_cursor(
                    job.created_at_ms,
                    &job.id,
                )));
                if job.state == state {
                    items.push(job);
                    if items.len() > size {
                        return Ok(JobPage::from_overfetched(items, size));
                    }
                }
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => {
                    return Ok(JobPage {
                        items,
                        next_cursor: None,
                    })
                }
            }
        }
        Ok(JobPage {
            items,
            next_cursor: last_read,
        })
    }

    /// Jobs of every bot that are not final, oldest first (by creation time,
    /// then id), after `cursor`; `limit` clamped to `1..=MAX_PAGE`. Backed by an
    /// index of active jobs, so a sweep reads what is running, not every bot's
    /// history. Final jobs are dropped from the index as they are met (a job
    /// whose record does not exist a minute after the index entry was written
    /// too: its creation failed).
    async fn active_jobs(
        &self,
        cursor: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Result<JobPage, JobStoreError>;

    /// Takes or renews the right to expand `job_id` until `now_ms + lease`:
    /// granted (`true`) when no other consumer holds an unexpired claim
    /// (`consumer`'s own claim is renewed). `false` when another consumer
    /// holds it, or the job needs no expansion (final, or every target added).
    /// One expander per job at a time: without it, two replicas adopting the
    /// same job would both expand it and queue every target twice (harmless
    /// thanks to [`JobStore::begin_send`], but twice the queue). An expander
    /// renews before each page and stops when refused; a dead one's claim
    /// ends with its lease. `NotFound` when there is no job.
    async fn claim_expansion(
        &self,
        job_id: &str,
        consumer: &str,
        lease: Duration,
        now_ms: u64,
    ) -> Result<bool, JobStoreError>;

    /// The 1:1 conversation botfleet created with user `user_id` (Entra object
    /// id or `29:` id) of `tenant_id` for `bot_id`, if one was remembered
    /// ([`JobStore::set_user_conversation`]): later `users` jobs send to its
    /// stored reference instead of creating the chat again.
    async fn user_conversation(
        &self,
        bot_id: &str,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<Option<String>, JobStoreError>;

    /// Remembers the 1:1 conversation created with a user (replacing any
    /// earlier one: Teams answers a create with the chat that exists).
    async fn set_user_conversation(
        &self,
        bot_id: &str,
        tenant_id: &str,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<(), JobStoreError>;

    /// Moves a job to `state` (`Running` sets `started_at_ms` once; a final
    /// state sets `finished_at_ms`; `error` is kept for `Failed`). A final job
    /// stays as it is (returns it unchanged). `NotFound` when there is no job.
    async fn set_state(
        &self,
        job_id: &str,
        state: JobState,
        error: Option<&str>,
        now_ms: u64,
    ) -> Result<JobRecord, JobStoreError>;

    /// Records how far expansion got; with `complete` and nothing left to send,
    /// the job is `Completed`. Returns the job.
    async fn set_expansion(
        &self,
        job_id: &str,
        expansion: &Expansion,
        now_ms: u64,
    ) -> Result<JobRecord, JobStoreError>;

    /// Adds targets as `Pending` (a target already there is left as it is);
    /// returns how many were new. On a cancelled job they are added `Cancelled`.
    async fn add_targets(
        &self,
        job_id: &str,
        targets: &[Target],
        now_ms: u64,
    ) -> Result<u64, JobStoreError>;

    /// A job's targets (those in `state` when given), by key after `cursor`;
    /// `limit` clamped to `1..=MAX_PAGE`. `NotFound` when there is no job.
    async fn list_targets(
        &self,
        job_id: &str,
        state: Option<DeliveryStateKind>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<TargetPage, JobStoreError>;

    /// Cancels a job: every target not final and not `Sending` becomes
    /// `Cancelled` (a send under way still records its outcome); the job is
    /// `Cancelled` unless it was final already. Returns the job.
    async fn cancel(&self, job_id: &str, now_ms: u64) -> Result<JobRecord, JobStoreError>;

    /// Queues one work item per target (attempt 0).
    async fn enqueue(&self, job_id: &str, targets: &[Target]) -> Result<(), JobStoreError>;

    /// Takes up to `max` items for `consumer` (first moving due rescheduled
    /// items to the queue), waiting up to `block` when none is ready. An empty
    /// result is normal. One caller per process at a time: on Redis the read
    /// holds its own connection while it blocks.
    async fn take(
        &self,
        consumer: &str,
        max: usize,
        block: Duration,
        now_ms: u64,
    ) -> Result<Vec<WorkItem>, JobStoreError>;

    /// Acknowledges (and drops) an item: only after its outcome was recorded.
    async fn ack(&self, item: &WorkItem) -> Result<(), JobStoreError>;

    /// Acknowledges an item and queues it again (attempt + 1) once `at_ms` has passed.
    async fn reschedule(&self, item: &WorkItem, at_ms: u64) -> Result<(), JobStoreError>;

    /// Takes over up to `max` items other consumers took more than `min_idle`
    /// ago without acknowledging; dead-letters those delivered
    /// `max_deliveries` times (see [`Reclaimed`]).
    async fn reclaim(
        &self,
        consumer: &str,
        min_idle: Duration,
        max: usize,
        now_ms: u64,
    ) -> Result<Reclaimed, JobStoreError>;

    /// The dead-letter queue, oldest first (at most `limit`).
    async fn dead_letters(&self, limit: usize) -> Result<Vec<WorkItem>, JobStoreError>;

    /// Takes the marker of `item.target` (see [`BeginSend`]); a `Sending`
    /// marker older than `lease` is taken over.
    async fn begin_send(
        &self,
        item: &WorkItem,
        consumer: &str,
        lease: Duration,
        now_ms: u64,
    ) -> Result<BeginSend, JobStoreError> {
        self.begin_send_resuming(item, consumer, lease, now_ms, false)
            .await
    }

    /// [`JobStore::begin_send`], and with `resume_own` a `Sending` marker
    /// that `consumer` itself wrote is taken again at once, within its lease,
    /// as `Begun { takeover: false }` (its attempt count unchanged).
    ///
    /// The caller asserts with `resume_own` that it has no send of this
    /// target under way and never sent under that marker: the marker is left
    /// over from a `begin_send` whose answer it lost (a Redis restart or a
    /// broken connection after the script ran), so nothing was sent and
    /// waiting out the lease (then reporting `delivery_unknown`) would only
    /// delay the target. Consumer names are unique per process
    /// ([`consumer_name`]), so only the process that wrote the marker can
    /// resume it.
    async fn begin_send_resuming(
        &self,
        item: &WorkItem,
        consumer: &str,
        lease: Duration,
        now_ms: u64,
        resume_own: bool,
    ) -> Result<BeginSend, JobStoreError>;

    /// Retention: deletes up to `max` of `bot_id`'s jobs that ended (final
    /// state) before `finished_before_ms`, with their targets, their delivery
    /// states and their idempotency key (the same key then creates a new
    /// job). Jobs not final are kept whatever their age. Returns how many
    /// were deleted; call again while it returns `max`.
    async fn purge_finished(
        &self,
        bot_id: &str,
        finished_before_ms: u64,
        max: usize,
    ) -> Result<usize, JobStoreError>;

    /// Keeps items `consumer` still holds (taken, not finished: waiting in
    /// its queues while their tenant is paused, or in flight) from looking
    /// idle, so [`JobStore::reclaim`] elsewhere does not take them over
    /// while their holder is alive: their idle time restarts at zero and
    /// their delivery count is unchanged (Redis: `XCLAIM <id> JUSTID` to
    /// the same consumer, only for entries it still owns). A holder touches
    /// its items well within `reclaim_idle`; a dead holder stops touching,
    /// so its items are reclaimed after `reclaim_idle` as before.
    ///
    /// Returns the entry ids that are no longer `consumer`'s (acknowledged,
    /// or reclaimed by another consumer): the holder should drop them.
    async fn touch(
        &self,
        consumer: &str,
        entry_ids: &[String],
    ) -> Result<Vec<String>, JobStoreError>;

    /// Gives items `consumer` holds and will not start back to the consumer
    /// group (graceful shutdown): each is queued again as a new entry, ready
    /// for any consumer's next [`JobStore::take`] at once (not after
    /// `reclaim_idle`), and its old entry acknowledged. Items no longer
    /// `consumer`'s are skipped. Their targets' state is not changed (they
    /// are `Pending` or `Retrying`: nothing was begun). Returns how many were
    /// given back.
    async fn release(&self, consumer: &str, items: &[WorkItem]) -> Result<usize, JobStoreError>;

    /// Records a target's outcome and the job's counts atomically (from
    /// `Pending`, `Retrying` or `Sending`; a final target is left as it is).
    async fn finish_send(
        &self,
        job_id: &str,
        target: &Target,
        outcome: &SendOutcome,
        now_ms: u64,
    ) -> Result<FinishSend, JobStoreError>;
}

/// A consumer name unique to this process: the pod name (`POD_NAME`, else
/// `HOSTNAME`, else `botfleet`) and 8 random hex digits. A fixed name would
/// let a restarted pod inherit (and never reclaim) its predecessor's items.
pub fn consumer_name() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "botfleet".into());
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// A new job id: 32 random lowercase hex digits.
pub(crate) fn new_job_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

pub(crate) fn page_size(limit: usize) -> usize {
    limit.clamp(1, MAX_PAGE)
}

pub(crate) fn check_spec(spec: &JobSpec) -> Result<(), JobStoreError> {
    if spec.bot_id.is_empty() {
        return Err(JobStoreError::Invalid("empty bot id".into()));
    }
    if spec.body_hash.is_empty() {
        return Err(JobStoreError::Invalid("empty body hash".into()));
    }
    if spec.idempotency_key.as_deref() == Some("") {
        return Err(JobStoreError::Invalid("empty idempotency key".into()));
    }
    Ok(())
}

const CURSOR_TAG: &str = "j1:";

impl TargetPage {
    /// A page from up to `size + 1` targets read in order: the extra one only
    /// says that a next page exists.
    pub(crate) fn from_overfetched(mut items: Vec<TargetEntry>, size: usize) -> Self {
        let next_cursor = overfetched_cursor(&mut items, size, |t| t.key.clone());
        Self { items, next_cursor }
    }
}

impl JobPage {
    /// A page from up to `size + 1` jobs read newest first: the extra one only
    /// says that a next page exists.
    pub(crate) fn from_overfetched(mut items: Vec<JobRecord>, size: usize) -> Self {
        let next_cursor = overfetched_cursor(&mut items, size, |j| {
            memory::job_cursor(j.created_at_ms, &j.id)
        });
        Self { items, next_cursor }
    }
}

/// Cuts `items` to `size` and, when there was more, returns the cursor after
/// the last item kept.
fn overfetched_cursor<T>(
    items: &mut Vec<T>,
    size: usize,
    key: impl Fn(&T) -> String,
) -> Option<String> {
    if items.len() <= size {
        return None;
    }
    items.truncate(size);
    items.last().map(|last| encode_cursor(&key(last)))
}

/// Cursors are opaque to callers: base64url of a versioned "after this key".
pub(crate) fn encode_cursor(after: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{CURSOR_TAG}{after}"))
}

pub(crate) fn decode_cursor(cursor: Option<&str>) -> Result<Option<String>, JobStoreError> {
    use base64::Engine as _;
    let Some(cursor) = cursor else {
        return Ok(None);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| JobStoreError::InvalidCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| JobStoreError::InvalidCursor)?;
    text.strip_prefix(CURSOR_TAG)
        .filter(|k| !k.is_empty())
        .map(|k| Some(k.to_owned()))
        .ok_or(JobStoreError::InvalidCursor)
}
