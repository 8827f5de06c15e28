//! botfleet's state, behind traits with a `memory` backend (the embedded default)
//! and a `redis` backend (production; single node or Redis Cluster).
//!
//! - [`admin`]: API keys, the bot registry and the audit log of the admin API;
//! - [`redis_pool`]: the pooled Redis connection every Redis backend shares;
//! - [`conversations`]: conversation references taken from validated activities;
//! - [`graph`]: Graph change-notification subscriptions, their state and inbox;
//! - [`ratelimit`]: Teams rate-limit buckets shared across replicas.
#![forbid(unsafe_code)]

pub mod admin;
pub mod conversations;
pub mod graph;
pub mod jobs;
pub mod ratelimit;
pub mod redis_pool;
pub mod token_tier;

pub use redis_pool::{RedisConn, RedisPool, RedisPoolError, KEY_SCHEMA};
