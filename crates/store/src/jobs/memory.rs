//! Notification jobs in process memory: the embedded default. Same semantics
//! as the Redis backend within one process (one lock makes every operation
//! atomic); nothing survives a restart.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{
    check_spec, decode_cursor, new_job_id, page_size, BeginSend, CreateJob, DeliveryState,
    DeliveryStateKind, Expansion, FinishSend, JobCounts, JobPage, JobRecord, JobSpec, JobState,
    JobStore, JobStoreError, JobStoreOptions, Reclaimed, SendOutcome, Target, TargetEntry,
    TargetPage, WorkItem, REASON_DEAD_LETTER,
};

#[derive(Debug)]
struct Job {
    record: JobRecord,
    targets: BTreeMap<String, TargetEntry>,
    by_state: HashMap<DeliveryStateKind, BTreeSet<String>>,
    /// Who may expand the job, and until when (ms).
    expansion_claim: Option<(String, u64)>,
}

#[derive(Debug)]
struct Taken {
    item: WorkItem,
    consumer: String,
    delivered_at: Instant,
    deliveries: u32,
}

#[derive(Debug, Default)]
struct Inner {
    jobs: HashMap<String, Job>,
    /// (bot, idempotency key) -> (job id, body hash).
    idempotency: HashMap<(String, String), (String, String)>,
    /// bot -> (created_at_ms, job id), listed newest first.
    bot_jobs: HashMap<String, BTreeSet<(u64, String)>>,
    /// (created_at_ms, job id) of jobs not known final yet, oldest first;
    /// final ones are dropped when `active_jobs` meets them.
    active: BTreeSet<(u64, String)>,
    /// (bot, tenant, user) -> the 1:1 conversation created with them.
    user_conversations: HashMap<(String, String, String), String>,
    ready: VecDeque<WorkItem>,
    taken: BTreeMap<u64, Taken>,
    due: BTreeMap<(u64, u64), WorkItem>,
    dead: VecDeque<WorkItem>,
    seq: u64,
}

/// Notification jobs in memory; see the module comment.
#[derive(Debug)]
pub struct MemoryJobStore {
    inner: Mutex<Inner>,
    ready: Notify,
    options: JobStoreOptions,
}

impl Default for MemoryJobStore {
    fn default() -> Self {
        Self::new(JobStoreOptions::default())
    }
}

fn counts_add(counts: &mut JobCounts, state: &DeliveryState, delta: i64) {
    let apply = |v: &mut u64| *v = v.saturating_add_signed(delta);
    match state {
        DeliveryState::Pending => apply(&mut counts.pending),
        DeliveryState::Sending { .. } => apply(&mut counts.sending),
        DeliveryState::Delivered { .. } => apply(&mut counts.delivered),
        DeliveryState::Retrying { .. } => apply(&mut counts.retrying),
        DeliveryState::Cancelled => apply(&mut counts.cancelled),
        DeliveryState::Failed { reason, .. } => {
            let v = counts.failed_by_reason.entry(reason.clone()).or_insert(0);
            apply(v);
            if *v == 0 {
                counts.failed_by_reason.remove(reason);
            }
        }
    }
}

impl Job {
    /// Moves one target to `state`, keeping the counts and the state index.
    fn set_target(&mut self, key: &str, state: DeliveryState, now_ms: u64) {
        let Some(entry) = self.targets.get_mut(key) else {
            return;
        };
        let old = std::mem::replace(&mut entry.state, state);
        entry.updated_at_ms = now_ms;
        counts_add(&mut self.record.counts, &old, -1);
        counts_add(&mut self.record.counts, &entry.state, 1);
        let new_kind = entry.state.kind();
        if old.kind() != new_kind {
            if let Some(set) = self.by_state.get_mut(&old.kind()) {
                set.remove(key);
            }
            self.by_state
                .entry(new_kind)
                .or_default()
                .insert(key.to_owned());
        }
    }

    /// Completes the job when expansion is over and nothing is left to send.
    fn maybe_complete(&mut self, now_ms: u64) -> bool {
        let r = &mut self.record;
        let open = r.counts.pending + r.counts.sending + r.counts.retrying;
        if !r.state.is_final() && r.expansion.complete && open == 0 {
            r.state = JobState::Completed;
            r.finished_at_ms = Some(now_ms);
            r.started_at_ms.get_or_insert(now_ms);
            return true;
        }
        false
    }
}

impl Inner {
    fn next_entry(&mut self) -> (u64, String) {
        self.seq += 1;
        (self.seq, format!("0-{}", self.seq))
    }

    fn push_ready(&mut self, job_id: &str, target: Target, attempt: u32) {
        let (_, entry_id) = self.next_entry();
        self.ready.push_back(WorkItem {
            entry_id,
            job_id: job_id.to_owned(),
            target,
            attempt,
        });
    }

    fn promote_due(&mut self, now_ms: u64) -> bool {
        let mut moved = false;
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let item = entry.remove();
            self.push_ready(&item.job_id, item.target, item.attempt);
            moved = true;
        }
        moved
    }

    fn job(&mut self, job_id: &str) -> Result<&mut Job, JobStoreError> {
        self.jobs
            .get_mut(job_id)
            .ok_or_else(|| JobStoreError::NotFound(job_id.to_owned()))
    }
}

fn entry_seq(entry_id: &str) -> Option<u64> {
    entry_id.strip_prefix("0-")?.parse().ok()
}

impl MemoryJobStore {
    pub fn new(options: JobStoreOptions) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ready: Notify::new(),
            options,
        }
    }

    fn try_take(&self, consumer: &str, max: usize, now_ms: u64) -> Vec<WorkItem> {
        let mut inner = self.inner.lock();
        inner.promote_due(now_ms);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = inner.ready.pop_front() else {
                break;
            };
            let Some(seq) = entry_seq(&item.entry_id) else {
                continue;
            };
            inner.taken.insert(
                seq,
                Taken {
                    item: item.clone(),
                    consumer: consumer.to_owned(),
                    delivered_at: Instant::now(),
                    deliveries: 1,
                },
            );
            out.push(item);
        }
        out
    }
}

#[async_trait]
impl JobStore for MemoryJobStore {
    async fn create_job(&self, spec: JobSpec, now_ms: u64) -> Result<CreateJob, JobStoreError> {
        check_spec(&spec)?;
        let mut inner = self.inner.lock();
        if let Some(key) = &spec.idempotency_key {
            let map_key = (spec.bot_id.clone(), key.clone());
            if let Some((job_id, hash)) = inner.idempotency.get(&map_key) {
                if *hash != spec.body_hash {
                    return Err(JobStoreError::Conflict {
                        bot_id: spec.bot_id.clone(),
                        key: key.clone(),
                        job_id: job_id.clone(),
                    });
                }
                let job_id = job_id.clone();
                return inner
                    .jobs
                    .get(&job_id)
                    .map(|j| CreateJob::Existing(j.record.clone()))
                    .ok_or(JobStoreError::NotFound(job_id));
            }
            let id = new_job_id();
            inner
                .idempotency
                .insert(map_key, (id.clone(), spec.body_hash.clone()));
            return Ok(CreateJob::Created(insert_job(&mut inner, id, spec, now_ms)));
        }
        let id = new_job_id();
        Ok(CreateJob::Created(insert_job(&mut inner, id, spec, now_ms)))
    }

    async fn get_job(&self, job_id: &str) -> Result<Option<JobRecord>, JobStoreError> {
        Ok(self.inner.lock().jobs.get(job_id).map(|j| j.record.clone()))
    }

    async fn list_jobs(
        &self,
        bot_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, JobStoreError> {
        let after = decode_cursor(cursor)?;
        let after = match after {
            None => None,
            Some(a) => Some(parse_job_cursor(&a)?),
        };
        let size = page_size(limit);
        let inner = self.inner.lock();
        let Some(set) = inner.bot_jobs.get(bot_id) else {
            return Ok(JobPage::default());
        };
        let items: Vec<JobRecord> = set
            .iter()
            .rev()
            .filter(|k| after.as_ref().is_none_or(|a| *k < a))
            .take(size + 1)
            .filter_map(|(_, id)| inner.jobs.get(id).map(|j| j.record.clone()))
            .collect();
        Ok(JobPage::from_overfetched(items, size))
    }

    async fn active_jobs(
        &self,
        cursor: Option<&str>,
        limit: usize,
        _now_ms: u64,
    ) -> Result<JobPage, JobStoreError> {
        let after = match decode_cursor(cursor)? {
            None => None,
            Some(a) => Some(parse_job_cursor(&a)?),
        };
        let size = page_size(limit);
        let mut inner = self.inner.lock();
        let mut items = Vec::new();
        let mut finished = Vec::new();
        let bound = match &after {
            Some(a) => std::ops::Bound::Excluded(a.clone()),
            None => std::ops::Bound::Unbounded,
        };
        for key in inner.active.range((bound, std::ops::Bound::Unbounded)) {
            match inner.jobs.get(&key.1) {
                Some(j) if !j.record.state.is_final() => {
                    items.push(j.record.clone());
                    if items.len() > size {
                        break;
                    }
                }
                _ => finished.push(key.clone()),
            }
        }
        for key in finished {
            inner.active.remove(&key);
        }
        Ok(JobPage::from_overfetched(items, size))
    }

    async fn claim_expansion(
        &self,
        job_id: &str,
        consumer: &str,
        lease: Duration,
        now_ms: u64,
    ) -> Result<bool, JobStoreError> {
        let mut inner = self.inner.lock();
        let job = inner.job(job_id)?;
        if job.record.state.is_final() || job.record.expansion.complete {
            return Ok(false);
        }
        if let Some((owner, until)) = &job.expansion_claim {
            if owner != consumer && *until > now_ms {
                return Ok(false);
            }
        }
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        job.expansion_claim = Some((consumer.to_owned(), now_ms.saturating_add(lease_ms)));
        Ok(true)
    }

    async fn user_conversation(
        &self,
        bot_id: &str,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<Option<String>, JobStoreError> {
        let key = (bot_id.to_owned(), tenant_id.to_owned(), user_id.to_owned());
        Ok(self.inner.lock().user_conversations.get(&key).cloned())
    }

    async fn set_user_conversation(
        &self,
        bot_id: &str,
        tenant_id: &str,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<(), JobStoreError> {
        let key = (bot_id.to_owned(), tenant_id.to_owned(), user_id.to_owned());
        self.inner
            .lock()
            .user_conversations
            .insert(key, conversation_id.to_owned());
        Ok(())
    }

    async fn set_state(
        &self,
        job_id: &str,
        state: JobState,
        error: Option<&str>,
        now_ms: u64,
    ) -> Result<JobRecord, JobStoreError> {
        let mut inner = self.inner.lock();
        let job = inner.job(job_id)?;
        let r = &mut job.record;
        if !r.state.is_final() {
            r.state = state;
            if state == JobState::Running || state.is_final() {
                r.started_at_ms.get_or_insert(now_ms);
            }
            if state.is_final() {
                r.finished_at_ms = Some(now_ms);
            }
            if state == JobState::Failed {
                r.error = error.map(str::to_owned);
            }
        }
        Ok(job.record.clone())
    }

    async fn set_expansion(
        &self,
        job_id: &str,
        expansion: &Expansion,
        now_ms: u64,
    ) -> Result<JobRecord, JobStoreError> {
        let mut inner = self.inner.lock();
        let job = inner.job(job_id)?;
        job.record.expansion = expansion.clone();
        job.maybe_complete(now_ms);
        Ok(job.record.clone())
    }

    async fn add_targets(
        &self,
        job_id: &str,
        targets: &[Target],
        now_ms: u64,
    ) -> Result<u64, JobStoreError> {
        let mut inner = self.inner.lock();
        let job = inner.job(job_id)?;
        let state = if job.record.state.is_final() {
            DeliveryState::Cancelled
        } else {
            DeliveryState::Pending
        };
        let mut added = 0;
        for target in targets {
            let key = target.key();
            if job.targets.contains_key(&key) {
                continue;
            }
            job.targets.insert(
                key.clone(),
                TargetEntry {
                    key: key.clone(),
                    target: target.clone(),
                    state: state.clone(),
                    attempts: 0,
                    updated_at_ms: now_ms,
                },
            );
            job.by_state.entry(state.kind()).or_default().insert(key);
            job.record.counts.total += 1;
            counts_add(&mut job.record.counts, &state, 1);
            added += 1;
        }
        Ok(added)
    }

    async fn list_targets(
        &self,
        job_id: &str,
        state: Option<DeliveryStateKind>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<TargetPage, JobStoreError> {
        let after = decode_cursor(cursor)?;
        let size = page_size(limit);
        let mut inner = self.inner.lock();
        let job = inner.job(job_id)?;
        let bound = match &after {
            Some(a) => std::ops::Bound::Excluded(a.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let range = (bound, std::ops::Bound::Unbounded);
        let keys: Vec<String> = match state {
            None => job
                .targets
                .range::<String, _>(range)
                .take(size + 1)
                .map(|(k, _)| k.clone())
                .collect(),
            Some(kind) => job
                .by_state
                .get(&kind)
                .map(|set| {
                    set.range::<String, _>(range)
                        .take(size + 1)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
        };
        let items: Vec<TargetEntry> = keys
            .iter()
            .filter_map(|k| job.targets.get(k).cloned())
            .collect();
        Ok(TargetPage::from_overfetched(items, size))
    }

    async fn cancel(&self, job_id: &str, now_ms: u64) -> Result<JobRecord, JobStoreError> {
        let mut inner = self.inner.lock();
        let job = inner.job(job_id)?;
        if job.record.state.is_final() {
            return Ok(job.record.clone());
        }
        let open: Vec<String> = [DeliveryStateKind::Pending, DeliveryStateKind::Retrying]
            .iter()
            .filter_map(|k| job.by_state.get(k))
            .flat_map(|set| set.iter().cloned())
            .collect();
        for key in open {
            job.set_target(&key, DeliveryState::Cancelled, now_ms);
        }
        let r = &mut job.record;
        r.state = JobState::Cancelled;
        r.finished_at_ms = Some(now_ms);
        Ok(job.record.clone())
    }

    async fn enqueue(&self, job_id: &str, targets: &[Target]) -> Result<(), JobStoreError> {
        {
            let mut inner = self.inner.lock();
            for target in targets {
                inner.push_ready(job_id, target.clone(), 0);
            }
        }
        self.ready.notify_waiters();
        Ok(())
    }

    async fn take(
        &self,
        consumer: &str,
        max: usize,
        block: Duration,
        now_ms: u64,
    ) -> Result<Vec<WorkItem>, JobStoreError> {
        let max = max.max(1);
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + block;
        loop {
            let notified = self.ready.notified();
            let elapsed = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            let items = self.try_take(consumer, max, now_ms.saturating_add(elapsed));
            if !items.is_empty() {
                return Ok(items);
            }
            // Wake for new work, for the next due item, or at the deadline.
            let next_due = self.inner.lock().due.keys().next().map(|(at, _)| *at);
            let mut wake = deadline;
            if let Some(at) = next_due {
                let now = now_ms.saturating_add(elapsed);
                let due_in = Duration::from_millis(at.saturating_sub(now));
                wake = wake.min(tokio::time::Instant::now() + due_in);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            let _ = tokio::time::timeout_at(wake, notified).await;
        }
    }

    async fn ack(&self, item: &WorkItem) -> Result<(), JobStoreError> {
        if let Some(seq) = entry_seq(&item.entry_id) {
            self.inner.lock().taken.remove(&seq);
        }
        Ok(())
    }

    async fn reschedule(&self, item: &WorkItem, at_ms: u64) -> Result<(), JobStoreError> {
        {
            let mut inner = self.inner.lock();
            if let Some(seq) = entry_seq(&item.entry_id) {
                inner.taken.remove(&seq);
            }
            let (seq, _) = inner.next_entry();
            let mut next = item.clone();
            next.entry_id = String::new();
            next.attempt = item.attempt.saturating_add(1);
            inner.due.insert((at_ms, seq), next);
        }
        self.ready.notify_waiters();
        Ok(())
    }

    async fn reclaim(
        &self,
        consumer: &str,
        min_idle: Duration,
        max: usize,
        now_ms: u64,
    ) -> Result<Reclaimed, JobStoreError> {
        let mut dead = Vec::new();
        let mut items = Vec::new();
        {
            let mut inner = self.inner.lock();
            let idle: Vec<u64> = inner
                .taken
                .iter()
                .filter(|(_, t)| t.delivered_at.elapsed() >= min_idle)
                .map(|(seq, _)| *seq)
                .take(max.max(1))
                .collect();
            for seq in idle {
                let Some(taken) = inner.taken.get_mut(&seq) else {
                    continue;
                };
                if taken.deliveries >= self.options.max_deliveries {
                    if let Some(t) = inner.taken.remove(&seq) {
                        inner.dead.push_back(t.item.clone());
                        let cap =
                            usize::try_from(self.options.dead_letter_max_len).unwrap_or(usize::MAX);
                        while inner.dead.len() > cap {
                            inner.dead.pop_front();
                        }
                        dead.push(t.item);
                    }
                } else {
                    taken.deliveries += 1;
                    taken.consumer = consumer.to_owned();
                    taken.delivered_at = Instant::now();
                    items.push(taken.item.clone());
                }
            }
        }
        for item in &dead {
            let outcome = SendOutcome::Failed {
                reason: REASON_DEAD_LETTER.into(),
                status: None,
                detail: Some(format!(
                    "the work item was taken {} times without being acknowledged",
                    self.options.max_deliveries
                )),
            };
            match self
                .finish_send(&item.job_id, &item.target, &outcome, now_ms)
                .await
            {
                Ok(_) | Err(JobStoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Reclaimed {
            items,
            dead_lettered: dead,
        })
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<WorkItem>, JobStoreError> {
        Ok(self
            .inner
            .lock()
            .dead
            .iter()
            .take(page_size(limit))
            .cloned()
            .collect())
    }

    async fn purge_finished(
        &self,
        bot_id: &str,
        finished_before_ms: u64,
        max: usize,
    ) -> Result<usize, JobStoreError> {
        let mut inner = self.inner.lock();
        let Some(set) = inner.bot_jobs.get(bot_id) else {
            return Ok(0);
        };
        // A job finished before the cutoff was created before it too.
        let old: Vec<(u64, String)> = set
            .iter()
            .take_while(|(created, _)| *created < finished_before_ms)
            .filter(|(_, id)| {
                inner.jobs.get(id).is_none_or(|j| {
                    j.record.state.is_final()
                        && j.record
                            .finished_at_ms
                            .is_some_and(|f| f < finished_before_ms)
                })
            })
            .take(max.max(1))
            .cloned()
            .collect();
        for key in &old {
            if let Some(set) = inner.bot_jobs.get_mut(bot_id) {
                set.remove(key);
            }
            inner.active.remove(key);
            if let Some(job) = inner.jobs.remove(&key.1) {
                if let Some(k) = job.record.spec.idempotency_key {
                    let idem = (bot_id.to_owned(), k);
                    if inner
                        .idempotency
                        .get(&idem)
                        .is_some_and(|(j, _)| *j == key.1)
                    {
                        inner.idempotency.remove(&idem);
                    }
                }
            }
        }
        Ok(old.len())
    }

    async fn touch(
        &self,
        consumer: &str,
        entry_ids: &[String],
    ) -> Result<Vec<String>, JobStoreError> {
        let mut inner = self.inner.lock();
        let mut lost = Vec::new();
        for id in entry_ids {
            match entry_seq(id).and_then(|seq| inner.taken.get_mut(&seq)) {
                Some(t) if t.consumer == consumer => t.delivered_at = Instant::now(),
                _ => lost.push(id.clone()),
            }
        }
        Ok(lost)
    }

    async fn release(&self, consumer: &str, items: &[WorkItem]) -> Result<usize, JobStoreError> {
        let mut released = 0;
        {
            let mut inner = self.inner.lock();
            for item in items {
                let Some(seq) = entry_seq(&item.entry_id) else {
                    continue;
                };
                if inner
                    .taken
                    .get(&seq)
                    .is_some_and(|t| t.consumer == consumer)
                {
                    if let Some(t) = inner.taken.remove(&seq) {
                        inner.push_ready(&t.item.job_id, t.item.target, t.item.attempt);
                        released += 1;
                    }
                }
            }
        }
        if released > 0 {
            self.ready.notify_waiters();
        }
        Ok(released)
    }

    async fn begin_send_resuming(
        &self,
        item: &WorkItem,
        consumer: &str,
        lease: Duration,
        now_ms: u64,
        resume_own: bool,
    ) -> Result<BeginSend, JobStoreError> {
        let mut inner = self.inner.lock();
        let Some(job) = inner.jobs.get_mut(&item.job_id) else {
            return Ok(BeginSend::Unknown);
        };
        let key = item.target.key();
        let Some(entry) = job.targets.get(&key) else {
            return Ok(BeginSend::Unknown);
        };
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let takeover = match &entry.state {
            DeliveryState::Pending => false,
            DeliveryState::Retrying { next_at_ms, .. } if *next_at_ms > now_ms => {
                return Ok(BeginSend::NotDue { at_ms: *next_at_ms })
            }
            DeliveryState::Retrying { .. } => false,
            DeliveryState::Sending {
                consumer: owner, ..
            } if resume_own && owner == consumer => {
                // Its own marker, whose begin's answer it lost: nothing was sent.
                job.set_target(
                    &key,
                    DeliveryState::Sending {
                        entry_id: item.entry_id.clone(),
                        consumer: consumer.to_owned(),
                        since_ms: now_ms,
                    },
                    now_ms,
                );
                let attempt = job.targets.get(&key).map_or(1, |e| e.attempts.max(1));
                return Ok(BeginSend::Begun {
                    attempt,
                    takeover: false,
                });
            }
            DeliveryState::Sending {
                entry_id, since_ms, ..
            } => {
                if since_ms.saturating_add(lease_ms) > now_ms {
                    return Ok(BeginSend::InFlight {
                        entry_id: entry_id.clone(),
                        since_ms: *since_ms,
                    });
                }
                true
            }
            final_state => return Ok(BeginSend::AlreadyFinal(final_state.kind())),
        };
        let attempt = entry.attempts.saturating_add(1);
        job.set_target(
            &key,
            DeliveryState::Sending {
                entry_id: item.entry_id.clone(),
                consumer: consumer.to_owned(),
                since_ms: now_ms,
            },
            now_ms,
        );
        if let Some(e) = job.targets.get_mut(&key) {
            e.attempts = attempt;
        }
        Ok(BeginSend::Begun { attempt, takeover })
    }

    async fn finish_send(
        &self,
        job_id: &str,
        target: &Target,
        outcome: &SendOutcome,
        now_ms: u64,
    ) -> Result<FinishSend, JobStoreError> {
        let mut inner = self.inner.lock();
        let job = inner.job(job_id)?;
        let key = target.key();
        let Some(entry) = job.targets.get(&key) else {
            return Ok(FinishSend {
                applied: false,
                job_completed: false,
            });
        };
        if entry.state.kind().is_final() {
            return Ok(FinishSend {
                applied: false,
                job_completed: false,
            });
        }
        let state = match outcome {
            SendOutcome::Delivered { activity_id } => DeliveryState::Delivered {
                activity_id: activity_id.clone(),
            },
            SendOutcome::Retry { next_at_ms, reason } => DeliveryState::Retrying {
                attempts: entry.attempts,
                next_at_ms: *next_at_ms,
                reason: reason.clone(),
            },
            SendOutcome::Failed {
                reason,
                status,
                detail,
            } => DeliveryState::Failed {
                reason: reason.clone(),
                status: *status,
                detail: detail.clone(),
            },
        };
        // A retry of a cancelled job is not tried again.
        let state = match (&state, job.record.state) {
            (DeliveryState::Retrying { .. }, JobState::Cancelled) => DeliveryState::Cancelled,
            _ => state,
        };
        job.set_target(&key, state, now_ms);
        let job_completed = job.maybe_complete(now_ms);
        Ok(FinishSend {
            applied: true,
            job_completed,
        })
    }
}

fn insert_job(inner: &mut Inner, id: String, spec: JobSpec, now_ms: u64) -> JobRecord {
    let record = JobRecord {
        id: id.clone(),
        spec,
        state: JobState::Queued,
        counts: JobCounts::default(),
        expansion: Expansion::default(),
        error: None,
        created_at_ms: now_ms,
        started_at_ms: None,
        finished_at_ms: None,
    };
    inner
        .bot_jobs
        .entry(record.spec.bot_id.clone())
        .or_default()
        .insert((now_ms, id.clone()));
    inner.active.insert((now_ms, id.clone()));
    inner.jobs.insert(
        id,
        Job {
            record: record.clone(),
            targets: BTreeMap::new(),
            by_state: HashMap::new(),
            expansion_claim: None,
        },
    );
    record
}

/// A job listing cursor: "after (created_at_ms, id)" in newest-first order.
pub(super) fn job_cursor(created_at_ms: u64, id: &str) -> String {
    format!("{created_at_ms:020}:{id}")
}

pub(super) fn parse_job_cursor(s: &str) -> Result<(u64, String), JobStoreError> {
    let (at, id) = s.split_once(':').ok_or(JobStoreError::InvalidCursor)?;
    let at = at.parse().map_err(|_| JobStoreError::InvalidCursor)?;
    Ok((at, id.to_owned()))
}
