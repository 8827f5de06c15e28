//! One delivery of a notification to one target: the marker, the connector
//! call, the outcome (recorded in the job store and, for the conversation's
//! reference, through [`crate::delivery::report_outcome`]).

use std::sync::Arc;
use std::time::Duration;

use botfleet_connector::{
    Action, AmbiguousPolicy, ConnectorError, Delivered, Target as SendTarget,
};
use botfleet_protocol::{
    Activity, ChannelAccount, ConversationAccount, ConversationParameters, ConversationReference,
    TEAMS_CHANNEL_ID,
};
use botfleet_store::conversations::{ConversationStore, StoredConversation};
use botfleet_store::jobs::{BeginSend, SendOutcome as JobOutcome, Target, UserTarget, WorkItem};

use super::{reasons, Ctx, JobInfo, NotifyBot};
use crate::delivery;
use crate::now_ms;

/// A work item with what the notifier learned before scheduling it.
pub(crate) struct Resolved {
    pub item: WorkItem,
    pub job: Arc<JobInfo>,
    /// The rate-limit group the fair queue schedules by (empty: unknown).
    pub tenant: String,
    pub lookup: Lookup,
}

/// What the resolve step found for the item's target.
pub(crate) enum Lookup {
    /// A conversation target's stored reference (None: not stored).
    Conversation(Option<Box<StoredConversation>>),
    /// Users and channels: the conversation is created at send time.
    Create,
    /// The store could not be read: try the item again later.
    StoreFailed(String),
}

/// How a delivery ended, for the dispatcher.
pub(crate) enum Finished {
    /// Recorded and acknowledged (or rescheduled through the store): done here.
    Done(Tally),
    /// Throttled (by the local rate limiter, or Teams answered 429 / 503 with
    /// `Retry-After`) for a short while: the item stays
    /// here (its target is `Retrying` in the store), back at the head of its
    /// tenant's queue, and the tenant pauses for `wait`.
    Requeue(Box<Resolved>, Duration),
}

/// What one finished delivery counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tally {
    Delivered,
    Failed,
    Retried,
    /// Nothing done: another sender has it, it was final, or not due.
    Skipped,
}

/// The Teams error code of a 403/404 as a failure reason
/// (`BotNotInConversationRoster` -> `bot_not_in_conversation_roster`).
fn snake(code: &str) -> String {
    let mut out = String::with_capacity(code.len() + 8);
    for (i, c) in code.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    out
}

/// The detail of a target reported `delivery_unknown` after a takeover.
pub(crate) const TAKEOVER_DETAIL: &str = "taken over after its sender stopped during the send (lease ended): it may have been delivered; check, and resend by hand with a new job if needed";

fn failed(reason: &str, status: Option<u16>, detail: Option<String>) -> JobOutcome {
    JobOutcome::Failed {
        reason: reason.to_owned(),
        status,
        detail,
    }
}

/// The job-store outcome of a connector error on attempt `attempt`
/// (1-based), and whether it is a local throttle (nothing was sent).
pub(crate) fn classify(ctx: &Ctx, error: &ConnectorError, attempt: u32) -> JobOutcome {
    let status = error.status();
    let now = now_ms();
    let retry = |reason: &str, hint: Option<Duration>| {
        let limit = if reason == reasons::THROTTLED {
            ctx.config.max_throttled_attempts
        } else {
            ctx.config.max_attempts
        };
        if attempt >= limit {
            return failed(
                reasons::RETRIES_EXHAUSTED,
                status,
                Some(format!("{attempt} attempts; last: {}", one_line(error))),
            );
        }
        // Teams' Retry-After is a floor; backoff grows with the attempts.
        let backoff = ctx.config.backoff(attempt);
        let wait = hint.map_or(backoff, |h| h.max(backoff));
        JobOutcome::Retry {
            next_at_ms: now + millis(wait),
            reason: reason.to_owned(),
        }
    };
    match error {
        ConnectorError::Throttled { retry_after } => JobOutcome::Retry {
            // Our own limiter: it says exactly when there is room, and no
            // attempt was made, so it never counts towards giving up.
            next_at_ms: now + millis(*retry_after),
            reason: reasons::THROTTLED.into(),
        },
        ConnectorError::Failed(f) => match f.action {
            Action::DeactivateReference => {
                failed(&snake(&f.code), Some(f.status), Some(one_line(error)))
            }
            // The notifier's client returns Teams throttling at once (see
            // `RetryPolicy::return_throttling`): rescheduled here for its
            // Retry-After, the worker free for other tenants meanwhile.
            Action::RetryLater => retry(
                if f.status == 429 || (f.status == 503 && f.retry_after.is_some()) {
                    reasons::THROTTLED
                } else {
                    reasons::TRANSIENT
                },
                f.retry_after,
            ),
            Action::FixRequest | Action::ForgetActivityId => {
                failed(reasons::BAD_REQUEST, Some(f.status), Some(one_line(error)))
            }
            Action::CheckBotRegistration => failed(
                reasons::BOT_CREDENTIALS,
                Some(f.status),
                Some(one_line(error)),
            ),
            Action::Report => failed(reasons::REJECTED, Some(f.status), Some(one_line(error))),
        },
        ConnectorError::Unknown { .. } | ConnectorError::InvalidResponse(_) => {
            failed(reasons::DELIVERY_UNKNOWN, status, Some(one_line(error)))
        }
        ConnectorError::ServiceUrlRefused { .. } => {
            failed(reasons::SERVICE_URL_REFUSED, None, Some(one_line(error)))
        }
        ConnectorError::InvalidRequest(_) => {
            failed(reasons::BAD_REQUEST, None, Some(one_line(error)))
        }
        ConnectorError::Token(e) if e.is_permanent() => {
            failed(reasons::BOT_CREDENTIALS, None, Some(one_line(error)))
        }
        ConnectorError::Token(_)
        | ConnectorError::RateLimiter(_)
        | ConnectorError::Unreachable { .. } => retry(reasons::TRANSIENT, error.retry_after()),
    }
}

fn one_line(e: &impl std::fmt::Display) -> String {
    let s = e.to_string().replace(['\n', '\r'], " ");
    if s.len() <= 300 {
        return s;
    }
    let mut end = 300;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs one delivery to its end. Store failures leave the item
/// unacknowledged: it is reclaimed and tried again (its marker stops a
/// second send while the lease runs).
///
/// Each delivery is one span (`notification delivery`, a trace of its own;
/// docs/observability.md) whose children are the connector calls: bot,
/// tenant, job id, target kind, retry count, outcome and reason; the
/// conversation id only for a conversation target (never a user id).
pub(crate) async fn run(ctx: Arc<Ctx>, r: Resolved) -> Finished {
    let (kind, conversation) = match &r.item.target {
        Target::Conversation { conversation_id } => ("conversation", conversation_id.as_str()),
        Target::User(_) => ("user", ""),
        Target::Channel { .. } => ("channel", ""),
    };
    let span = tracing::info_span!(
        "notification delivery",
        botfleet.bot_id = %r.job.bot_id,
        botfleet.tenant_id = %r.tenant,
        botfleet.job_id = %r.item.job_id,
        botfleet.target_kind = kind,
        botfleet.conversation_id = tracing::field::Empty,
        // i64: tracing-opentelemetry exports unsigned fields as strings.
        botfleet.retry_count = i64::from(r.item.attempt),
        botfleet.outcome = tracing::field::Empty,
        botfleet.reason = tracing::field::Empty,
    );
    if !conversation.is_empty() {
        span.record("botfleet.conversation_id", conversation);
    }
    let result = tracing::Instrument::instrument(deliver(&ctx, r), span.clone()).await;
    let finished = match result {
        Ok(f) => f,
        Err(e) => {
            span.in_scope(|| tracing::warn!(error = %e, "notification delivery: job store failed; the item will be reclaimed and retried"));
            span.record("botfleet.reason", "store_unavailable");
            Finished::Done(Tally::Skipped)
        }
    };
    span.record(
        "botfleet.outcome",
        match &finished {
            Finished::Done(Tally::Delivered) => "delivered",
            Finished::Done(Tally::Failed) => "failed",
            Finished::Done(Tally::Retried) => "retried",
            Finished::Done(Tally::Skipped) => "skipped",
            Finished::Requeue(..) => "throttled",
        },
    );
    finished
}

type StoreResult<T> = Result<T, botfleet_store::jobs::JobStoreError>;

async fn deliver(ctx: &Ctx, r: Resolved) -> StoreResult<Finished> {
    let jobs = ctx.jobs.as_ref();
    let item = &r.item;
    let Some(bot) = ctx.bots.bot(&r.job.bot_id) else {
        let outcome = failed(
            reasons::BOT_UNAVAILABLE,
            None,
            Some(format!(
                "bot `{}` is not registered or has no credential for outbound calls",
                r.job.bot_id
            )),
        );
        return finish(ctx, item, outcome).await;
    };
    let Some(activity) = r.job.activity.clone() else {
        let outcome = failed(
            reasons::INVALID_ACTIVITY,
            None,
            Some("the job's activity is not a Bot Framework activity".into()),
        );
        return finish(ctx, item, outcome).await;
    };
    // Targets that cannot be sent to fail without a call (and without a marker).
    let stored = match &r.lookup {
        Lookup::StoreFailed(e) => {
            tracing::warn!(error = %e, "notification delivery: conversation store unavailable; retrying later");
            jobs.reschedule(
                item,
                now_ms() + millis(ctx.config.backoff(item.attempt + 1)),
            )
            .await?;
            return Ok(Finished::Done(Tally::Retried));
        }
        Lookup::Conversation(None) => {
            let outcome = failed(
                reasons::REFERENCE_MISSING,
                None,
                Some("no conversation reference is stored for this conversation id".into()),
            );
            return finish(ctx, item, outcome).await;
        }
        Lookup::Conversation(Some(c)) if !c.active => {
            let outcome = failed(
                reasons::REFERENCE_INACTIVE,
                None,
                Some(format!(
                    "the conversation is inactive ({})",
                    c.inactive_reason.as_deref().unwrap_or("no reason recorded")
                )),
            );
            return finish(ctx, item, outcome).await;
        }
        Lookup::Conversation(Some(c)) => Some(c.as_ref()),
        Lookup::Create => None,
    };

    // No send of this target under way here (and none whose outcome was
    // lost): a `sending` marker of this consumer is one whose begin's answer
    // was lost, and is resumed instead of waiting out its lease.
    let marker = (item.job_id.clone(), item.target.key());
    let resume_own = ctx.sending.lock().insert(marker.clone());
    let begun = while_unavailable(ctx, item, "take the target's marker", || {
        jobs.begin_send_resuming(item, &ctx.consumer, ctx.config.lease, now_ms(), resume_own)
    })
    .await;
    if resume_own && !matches!(begun, Ok(BeginSend::Begun { .. })) {
        // Nothing begun by this call (or its answer is lost for good, in which
        // case nothing was sent either): not a send under way.
        ctx.sending.lock().remove(&marker);
    }
    let attempt = match begun? {
        BeginSend::Begun { attempt, takeover } => {
            if takeover {
                // The previous sender died with its send in flight: Teams may
                // have it (it does not deduplicate a replayed POST). Same
                // choice as an ambiguous reply: the bot's `ambiguous_send`.
                if bot.client.ambiguous_policy() == AmbiguousPolicy::ReportUnknown {
                    tracing::warn!(job = %item.job_id, marker = %item.target.key(), "notification delivery: taking over a marker whose sender's lease ended; reporting delivery_unknown, not resending (ambiguous_send = report)");
                    let outcome = failed(
                        reasons::DELIVERY_UNKNOWN,
                        None,
                        Some(TAKEOVER_DETAIL.into()),
                    );
                    let finished = finish(ctx, item, outcome).await;
                    if resume_own {
                        // Nothing sent by this process under this marker.
                        ctx.sending.lock().remove(&marker);
                    }
                    return finished;
                }
                tracing::warn!(job = %item.job_id, marker = %item.target.key(), "notification delivery: taking over a marker whose sender's lease ended and sending again (ambiguous_send = resend: the documented duplicate window)");
            }
            attempt
        }
        BeginSend::NotDue { at_ms } => {
            jobs.reschedule(item, at_ms).await?;
            return Ok(Finished::Done(Tally::Skipped));
        }
        BeginSend::InFlight { entry_id, since_ms } => {
            if entry_id != item.entry_id {
                // A duplicate item (a re-expanded page): the marker's own item
                // finishes the target.
                jobs.ack(item).await?;
            } else {
                // This very item, reclaimed from a sender that took the marker
                // and has not finished: alive and slow, or dead. Come back when
                // its lease ends (then the target is final, or taken over),
                // instead of being reclaimed again and again towards the
                // dead-letter limit.
                let lease_end = since_ms.saturating_add(millis(ctx.config.lease));
                jobs.reschedule(item, lease_end.saturating_add(100)).await?;
            }
            return Ok(Finished::Done(Tally::Skipped));
        }
        BeginSend::AlreadyFinal(_) | BeginSend::Unknown => {
            jobs.ack(item).await?;
            return Ok(Finished::Done(Tally::Skipped));
        }
    };

    let outcome = match (&item.target, stored) {
        (Target::Conversation { .. }, Some(stored)) => {
            send_to_reference(ctx, &bot, &activity, stored, attempt).await
        }
        (Target::User(user), _) => {
            let install_app = r.job.install_app;
            send_to_user(
                ctx,
                &bot,
                &r.job.bot_id,
                &activity,
                user,
                install_app,
                attempt,
            )
            .await
        }
        (
            Target::Channel {
                team_id,
                channel_id,
                tenant_id,
            },
            _,
        ) => {
            send_to_channel(
                ctx,
                &bot,
                &r.job.bot_id,
                &activity,
                team_id,
                channel_id,
                tenant_id.as_deref(),
                attempt,
            )
            .await
        }
        // A conversation target always has its lookup; defensive.
        (Target::Conversation { .. }, None) => failed(reasons::REFERENCE_MISSING, None, None),
    };

    let recorded = record_outcome(ctx, item, &outcome).await;
    if recorded.is_ok() || !resume_own {
        // Recorded: no longer under way. (Not inserted by this call: a
        // duplicate's; left to the send that owns it.) A send whose outcome
        // could not be recorded stays in the set, so this process never
        // resumes its marker as unsent.
        if resume_own {
            ctx.sending.lock().remove(&marker);
        }
    }
    let done = recorded?;
    if let JobOutcome::Retry { next_at_ms, reason } = &outcome {
        let wait = Duration::from_millis(next_at_ms.saturating_sub(now_ms()));
        if reason == reasons::THROTTLED && wait <= ctx.config.local_requeue_max {
            return Ok(Finished::Requeue(Box::new(r), wait));
        }
    }
    settle(ctx, item, outcome, done).await
}

/// Records `outcome`, then acknowledges the item (or queues it again for a retry).
async fn finish(ctx: &Ctx, item: &WorkItem, outcome: JobOutcome) -> StoreResult<Finished> {
    let done = record_outcome(ctx, item, &outcome).await?;
    settle(ctx, item, outcome, done).await
}

/// After `outcome` was recorded (`done`): acknowledges the item, or queues
/// it again for a retry, and counts it.
async fn settle(
    ctx: &Ctx,
    item: &WorkItem,
    outcome: JobOutcome,
    done: botfleet_store::jobs::FinishSend,
) -> StoreResult<Finished> {
    let jobs = ctx.jobs.as_ref();
    // The delivery span's `botfleet.reason` (a fixed vocabulary,
    // docs/notifications.md).
    if let JobOutcome::Retry { reason, .. } | JobOutcome::Failed { reason, .. } = &outcome {
        tracing::Span::current().record("botfleet.reason", reason.as_str());
    }
    let tally = match &outcome {
        JobOutcome::Retry { next_at_ms, reason } => {
            jobs.reschedule(item, *next_at_ms).await?;
            ctx.counters.retried(reason);
            if reason == reasons::THROTTLED {
                ctx.counters
                    .throttled(Duration::from_millis(next_at_ms.saturating_sub(now_ms())));
            }
            return Ok(Finished::Done(Tally::Retried));
        }
        JobOutcome::Delivered { .. } => Tally::Delivered,
        JobOutcome::Failed { reason, status, .. } => {
            tracing::info!(job = %item.job_id, target = %item.target.key(), %reason, status = ?status, "notification target failed");
            Tally::Failed
        }
    };
    jobs.ack(item).await?;
    if done.applied {
        match &outcome {
            JobOutcome::Delivered { .. } => ctx.counters.delivered(),
            JobOutcome::Failed { reason, .. } => ctx.counters.failed(reason),
            JobOutcome::Retry { .. } => {}
        }
    }
    if done.job_completed {
        ctx.counters
            .jobs_completed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(job = %item.job_id, "notification job completed");
    }
    Ok(Finished::Done(tally))
}

/// `finish_send`, retried while the store is unavailable (a Redis restart or
/// failover) for up to the marker's lease: the outcome of a send that was
/// made is kept here rather than lost, because a lost outcome means the
/// target is sent again once the lease ends (the duplicate window).
async fn record_outcome(
    ctx: &Ctx,
    item: &WorkItem,
    outcome: &JobOutcome,
) -> StoreResult<botfleet_store::jobs::FinishSend> {
    while_unavailable(ctx, item, "record an outcome", || {
        ctx.jobs
            .finish_send(&item.job_id, &item.target, outcome, now_ms())
    })
    .await
}

/// Runs `call` again while the job store is unavailable, for up to the
/// marker's lease (a Redis restart or failover takes seconds): a lost answer
/// is retried by the live sender that knows what it did, rather than left
/// for the lease to end and another replica to guess.
async fn while_unavailable<T, F, Fut>(
    ctx: &Ctx,
    item: &WorkItem,
    what: &str,
    mut call: F,
) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<T>>,
{
    let give_up = std::time::Instant::now() + ctx.config.lease;
    let mut failures = 0u32;
    loop {
        match call().await {
            Err(botfleet_store::jobs::JobStoreError::Unavailable(e))
                if std::time::Instant::now() < give_up =>
            {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(job = %item.job_id, error = %e, "notification delivery: cannot {what} (job store unavailable); retrying until it is back");
                }
                let wait = Duration::from_millis(100)
                    .saturating_mul(failures.min(10))
                    .min(Duration::from_secs(1));
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// The job-store outcome of a send's result, after reporting what it says
/// about the conversation's reference through its one writer.
#[allow(clippy::too_many_arguments)]
async fn outcome_of<T>(
    ctx: &Ctx,
    store: &dyn ConversationStore,
    bot_id: &str,
    conversation_id: &str,
    generation: u64,
    result: &Result<Delivered<T>, ConnectorError>,
    activity_id: impl FnOnce(&T) -> Option<String>,
    attempt: u32,
) -> JobOutcome {
    let reference = delivery::reference_outcomes(result);
    if !reference.is_empty() && generation > 0 {
        // Errors are logged inside; the target's own outcome stands either way.
        let _ = delivery::report_outcome(
            store,
            &ctx.runtime_counters,
            bot_id,
            conversation_id,
            generation,
            &reference,
        )
        .await;
    }
    match result {
        Ok(d) => JobOutcome::Delivered {
            activity_id: activity_id(&d.value),
        },
        Err(e) => classify(ctx, e, attempt),
    }
}

async fn send_to_reference(
    ctx: &Ctx,
    bot: &NotifyBot,
    activity: &Activity,
    stored: &StoredConversation,
    attempt: u32,
) -> JobOutcome {
    let target = SendTarget::from(&stored.reference);
    let result = bot.client.send(&target, activity).await;
    outcome_of(
        ctx,
        bot.store.as_ref(),
        &stored.bot_id,
        &stored.reference.conversation.id,
        stored.generation,
        &result,
        |v| Some(v.id.clone()).filter(|s| !s.is_empty()),
        attempt,
    )
    .await
}

/// A stored conversation of the bot in `tenant` (any active one): where the
/// tenant's Bot Connector is (`serviceUrl`, regional) and who the bot is there.
async fn tenant_anchor(
    ctx: &Ctx,
    bot: &NotifyBot,
    bot_id: &str,
    tenant: &str,
) -> Result<Option<ConversationReference>, String> {
    let key = (bot_id.to_owned(), tenant.to_owned());
    if let Some(r) = ctx.anchors.lock().get(&key) {
        return Ok(Some(r.clone()));
    }
    let mut cursor: Option<String> = None;
    // A few pages at most: any active conversation will do.
    for _ in 0..5 {
        let page = bot
            .store
            .list(bot_id, Some(tenant), cursor.as_deref(), 100)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(c) = page.items.into_iter().find(|c| c.active) {
            let mut anchors = ctx.anchors.lock();
            if anchors.len() > 10_000 {
                anchors.clear();
            }
            anchors.insert(key, c.reference.clone());
            return Ok(Some(c.reference));
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok(None)
}

fn no_anchor(tenant: &str) -> JobOutcome {
    failed(
        reasons::NO_SERVICE_URL,
        None,
        Some(format!(
            "no active conversation of this bot is stored for tenant `{tenant}`, so its Bot Connector serviceUrl is unknown; install the bot in the tenant (or wait for any activity from it) first"
        )),
    )
}

/// A 1:1 conversation with the user: the one an earlier job created when its
/// reference is stored and active (no create call); else created (Teams
/// returns the existing chat when there is one), its reference stored through
/// the conversation store's one writer and remembered for the user, then the
/// activity sent into it.
async fn send_to_user(
    ctx: &Ctx,
    bot: &NotifyBot,
    bot_id: &str,
    activity: &Activity,
    user: &UserTarget,
    install_app: bool,
    attempt: u32,
) -> JobOutcome {
    // Lookups are best effort: on a store error the chat is created again.
    if let Ok(Some(conversation_id)) = ctx
        .jobs
        .user_conversation(bot_id, &user.tenant_id, &user.aad_object_id)
        .await
    {
        if let Ok(Some(stored)) = bot.store.get(bot_id, &conversation_id).await {
            if stored.active {
                return send_to_reference(ctx, bot, activity, &stored, attempt).await;
            }
        }
    }
    let anchor = match tenant_anchor(ctx, bot, bot_id, &user.tenant_id).await {
        Ok(Some(a)) => a,
        Ok(None) => return no_anchor(&user.tenant_id),
        Err(e) => {
            return JobOutcome::Retry {
                next_at_ms: now_ms() + millis(ctx.config.backoff(attempt)),
                reason: format!("{}: {e}", reasons::TRANSIENT),
            }
        }
    };
    let member = if user.aad_object_id.starts_with("29:") {
        ChannelAccount::new(&user.aad_object_id)
    } else {
        ChannelAccount {
            aad_object_id: Some(user.aad_object_id.clone()),
            ..ChannelAccount::new(&user.aad_object_id)
        }
    };
    let bot_account = anchor
        .bot
        .clone()
        .unwrap_or_else(|| ChannelAccount::new(format!("28:{}", bot.client.app_id())));
    // Teams: members [{id}], tenantId, and the tenant in channelData
    // (https://learn.microsoft.com/en-us/microsoftteams/platform/bots/how-to/conversations/send-proactive-messages#create-the-conversation).
    let params = ConversationParameters {
        is_group: false,
        bot: Some(bot_account.clone()),
        members: Some(vec![member.clone()]),
        tenant_id: Some(user.tenant_id.clone()),
        channel_data: Some(serde_json::json!({"tenant": {"id": user.tenant_id}})),
        ..ConversationParameters::default()
    };
    let mut created = bot
        .client
        .create_conversation(&anchor.service_url, &params)
        .await;
    let not_installed = |r: &Result<_, ConnectorError>| matches!(r, Err(ConnectorError::Failed(f)) if f.status == 403 && f.code == "ForbiddenOperationException");
    // `installApp`: install the app for the user through Graph, then create
    // the chat again, once (a second 403 fails below as without the option).
    if install_app && not_installed(&created) {
        if let Some(installer) = ctx.installer.get() {
            if let Err(e) = installer
                .install_for_user(bot_id, &user.tenant_id, &user.aad_object_id)
                .await
            {
                return failed(
                    reasons::APP_NOT_INSTALLED,
                    Some(403),
                    Some(format!(
                        "Teams refused to create the 1:1 chat (the app is not installed for the user) and installing it through Graph failed: {}",
                        one_line(&e)
                    )),
                );
            }
            tracing::info!(bot = %bot_id, "notification delivery: installed the app for a user through Graph; creating the 1:1 chat again");
            created = bot
                .client
                .create_conversation(&anchor.service_url, &params)
                .await;
        }
    }
    let created = match created {
        Ok(c) => c,
        Err(ConnectorError::Failed(f)) if f.status == 403 && f.code == "ForbiddenOperationException" => {
            return failed(
                reasons::APP_NOT_INSTALLED,
                Some(403),
                Some(format!(
                    "Teams refused to create the 1:1 chat (403 ForbiddenOperationException): the user has not installed the app; install it for them (Teams admin center, or Graph's installedApps for the user) and send again. {}",
                    one_line(&f.message)
                )),
            )
        }
        Err(e) => return classify(ctx, &e, attempt),
    };
    let service_url = created
        .value
        .service_url
        .clone()
        .or(created.service_url_moved_to.clone())
        .unwrap_or_else(|| anchor.service_url.clone());
    let conversation_id = created.value.id.clone();
    if conversation_id.is_empty() {
        return failed(
            reasons::REJECTED,
            None,
            Some("the Bot Connector created the conversation but did not say its id".into()),
        );
    }
    let reference = ConversationReference {
        activity_id: None,
        user: Some(member),
        bot: Some(bot_account),
        conversation: ConversationAccount {
            conversation_type: Some("personal".into()),
            tenant_id: Some(user.tenant_id.clone()),
            ..ConversationAccount::new(&conversation_id)
        },
        channel_id: TEAMS_CHANNEL_ID.into(),
        service_url: service_url.clone(),
        locale: None,
        extra: Default::default(),
    };
    // Stored so that later sends (and the admin API) see the conversation.
    // Best effort: the send below does not depend on it.
    if let Err(e) = bot.store.upsert(bot_id, &reference, now_ms()).await {
        tracing::warn!(bot = %bot_id, error = %e, "could not store the reference of a created 1:1 conversation; the next notification creates it again");
    } else if let Err(e) = ctx
        .jobs
        .set_user_conversation(
            bot_id,
            &user.tenant_id,
            &user.aad_object_id,
            &conversation_id,
        )
        .await
    {
        tracing::warn!(bot = %bot_id, error = %e, "could not remember the 1:1 conversation created with a user; the next notification creates it again");
    }
    let generation = match bot.store.get(bot_id, &conversation_id).await {
        Ok(Some(c)) => c.generation,
        _ => 0,
    };
    let target = SendTarget::new(service_url, &conversation_id, Some(&user.tenant_id));
    let result = bot.client.send(&target, activity).await;
    outcome_of(
        ctx,
        bot.store.as_ref(),
        bot_id,
        &conversation_id,
        generation,
        &result,
        |v| Some(v.id.clone()).filter(|s| !s.is_empty()),
        attempt,
    )
    .await
}

/// A new thread in a team channel: `POST /v3/conversations` with `isGroup`,
/// the channel in channelData and the activity.
#[allow(clippy::too_many_arguments)]
async fn send_to_channel(
    ctx: &Ctx,
    bot: &NotifyBot,
    bot_id: &str,
    activity: &Activity,
    team_id: &str,
    channel_id: &str,
    tenant_id: Option<&str>,
    attempt: u32,
) -> JobOutcome {
    // The channel's (or the team's General channel's) stored reference knows
    // the serviceUrl and the tenant; else any conversation of the tenant.
    let mut anchor: Option<ConversationReference> = None;
    for id in [channel_id, team_id] {
        match bot.store.get(bot_id, id).await {
            Ok(Some(c)) if c.active => {
                anchor = Some(c.reference);
                break;
            }
            Ok(_) => {}
            Err(e) => {
                return JobOutcome::Retry {
                    next_at_ms: now_ms() + millis(ctx.config.backoff(attempt)),
                    reason: format!("{}: {e}", reasons::TRANSIENT),
                }
            }
        }
    }
    let tenant = tenant_id.map(str::to_owned).or_else(|| {
        anchor
            .as_ref()
            .and_then(|a| a.tenant_id().map(str::to_owned))
    });
    let Some(tenant) = tenant else {
        return failed(
            reasons::NO_SERVICE_URL,
            None,
            Some("the team is not stored and no tenant was given: botfleet cannot tell where its Bot Connector is".into()),
        );
    };
    if anchor.is_none() {
        anchor = match tenant_anchor(ctx, bot, bot_id, &tenant).await {
            Ok(a) => a,
            Err(e) => {
                return JobOutcome::Retry {
                    next_at_ms: now_ms() + millis(ctx.config.backoff(attempt)),
                    reason: format!("{}: {e}", reasons::TRANSIENT),
                }
            }
        };
    }
    let Some(anchor) = anchor else {
        return no_anchor(&tenant);
    };
    let params = ConversationParameters {
        is_group: true,
        bot: anchor.bot.clone(),
        tenant_id: Some(tenant.clone()),
        activity: Some(Box::new(activity.clone())),
        channel_data: Some(serde_json::json!({
            "channel": {"id": channel_id},
            "team": {"id": team_id},
            "tenant": {"id": tenant},
        })),
        ..ConversationParameters::default()
    };
    let result = bot
        .client
        .create_conversation(&anchor.service_url, &params)
        .await;
    outcome_of(
        ctx,
        bot.store.as_ref(),
        bot_id,
        channel_id,
        // A new thread has no stored reference whose state it could change.
        0,
        &result,
        |v| v.activity_id.clone(),
        attempt,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::snake;

    #[test]
    fn teams_codes_become_snake_case_reasons() {
        assert_eq!(
            snake("BotNotInConversationRoster"),
            "bot_not_in_conversation_roster"
        );
        assert_eq!(snake("ConversationNotFound"), "conversation_not_found");
        assert_eq!(snake("MessageWritesBlocked"), "message_writes_blocked");
    }
}
