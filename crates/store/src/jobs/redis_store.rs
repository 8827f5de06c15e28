//! Stub (being implemented).
use super::*;
use async_trait::async_trait;
use std::time::Duration;

/// Stub.
#[derive(Debug)]
pub struct RedisJobStore;

impl RedisJobStore {
    /// `key_prefix` goes before every key (may be empty). `urls` / `cluster`
    /// are what `pool` was made from: blocking reads open their own connection.
    pub fn new(
        pool: crate::RedisPool,
        key_prefix: &str,
        urls: &[String],
        cluster: bool,
        options: JobStoreOptions,
    ) -> Self {
        let _ = (pool, key_prefix, urls, cluster, options);
        Self
    }
}

#[async_trait]
impl JobStore for RedisJobStore {
    async fn create_job(&self, __spec: JobSpec, _now_ms: u64) -> Result<CreateJob, JobStoreError> {
        Err(JobStoreError::Unavailable("not implemented yet".into()))
    }
    async fn get_job(&self, __job_id: &str) -> Result<Option<JobRecord>, JobStoreError> {
        Err(JobStoreError::Unavailable("not implemented yet".into()))
    }
    async fn list_jobs(
        &self,
        __bot_id: &str,
        _cursor: Option<&str>,
        _limit: usize,
    ) -> Result<JobPage, JobStoreError> {
        Err(JobStoreError::Unavailable("not implemented yet".into()))
    }
    async fn set_state(
        &self,
        __job_id: &str,
        _state: JobState,
        _error: Option<&str>,
        _now_ms: u64,
    ) -> Result<JobRecord, JobStoreError> {
        Err(JobStoreError::Unavailable("not implemented yet".into()))
    }
    async fn set_expansion(
        &self,
        __job_id: &str,
        _expansion: &Expansion,
        _now_ms: u64,
    ) -> Result<JobRecord, JobStoreError> {
        Err(JobStoreError::Unavailable("not implemented yet".into()))
    }
    async fn add_targets(
        &self,
        __job_id: &str,
        _targets: &[Target],
        _now_ms: u64,
    ) -> Result<u64, JobStoreError> {
        Err(JobStoreError::Unavailable("not implemented yet".into()))
    }
    async fn list_targets(
        &self,
        __job_id: &str,
        _state: Option<DeliveryStateKind>,
        _cursor: Option<&str>,
        _limit: usize,
    ) -> Result<TargetPage, JobStoreError> {
        Err(JobStoreError::Unavailable("not implemented yet".into()))
    }
    async fn cancel(&self, __job_id: &str, _now_ms: u64) -> Result<JobRecord, JobStoreError> {
        Err(JobStoreError::Unavailable("not implemented yet".into()))
    }
    async fn enqueue(&self, __job_id: &str, _targets: &[Target]) -> Result<(), JobStoreError> {
        Err(JobStoreError::Unavailable("not implemented yet".into()))
    }
    async fn take(
        &self,
        __consumer: &str,
        _max: usize,
        _block: Duration,
        _now_ms: u64,
    ) -> Result<Vec<WorkItem>, JobStoreError> {
        Err(JobStoreError::Unavailable("not implemented yet".into()))
    }
    async fn ack(&self, __item: &WorkItem) -> Result<(), JobStoreError> {
        Err(JobStoreError::Unavailable("not implemented yet".into()))
    }
    async fn reschedule(&self, __item: &WorkItem, _at_ms: u64) -> Result<(), JobStoreError> {
        Err(JobStoreError::Unavailable("not implemented yet".into()))
    }
    async fn reclaim(
        &self,
        __consumer: &str,
        _min_idle: Duration,
        _max: usize,
        _now_ms: u64,
    ) -> Result<Reclaimed, JobStoreError> {
        Err(JobStoreError::Unavailable("not implemented yet".into()))
    }
    async fn dead_letters(&self, __limit: usize) -> Result<Vec<WorkItem>, JobStoreError> {
        Err(JobStoreError::Unavailable("not implemented yet".into()))
    }
    async fn begin_send(
        &self,
        __item: &WorkItem,
        _consumer: &str,
        _lease: Duration,
        _now_ms: u64,
    ) -> Result<BeginSend, JobStoreError> {
        Err(JobStoreError::Unavailable("not implemented yet".into()))
    }
    async fn finish_send(
        &self,
        __job_id: &str,
        _target: &Target,
        _outcome: &SendOutcome,
        _now_ms: u64,
    ) -> Result<FinishSend, JobStoreError> {
        Err(JobStoreError::Unavailable("not implemented yet".into()))
    }
}
