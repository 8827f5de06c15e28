//! What the sim remembers about the traffic it saw: bounded lists plus totals.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::limits::{Breach, LimitClass};

/// A list that keeps the last `cap` items and counts everything ever pushed.
#[derive(Debug)]
pub struct Ring<T> {
    items: VecDeque<T>,
    cap: usize,
    total: u64,
}

impl<T> Ring<T> {
    pub fn new(cap: usize) -> Self {
        Self {
            items: VecDeque::new(),
            cap: cap.max(1),
            total: 0,
        }
    }

    pub fn push(&mut self, item: T) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back(item);
        self.total += 1;
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.items.iter()
    }

    pub fn clear(&mut self) {
        self.items.clear();
        self.total = 0;
    }
}

/// A Bot Connector operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Operation {
    Send,
    Reply,
    Update,
    Delete,
    Create,
    Members,
    PagedMembers,
    Member,
    ActivityMembers,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Send => "send",
            Operation::Reply => "reply",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::Create => "create",
            Operation::Members => "members",
            Operation::PagedMembers => "pagedMembers",
            Operation::Member => "member",
            Operation::ActivityMembers => "activityMembers",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Operation::Send,
            Operation::Reply,
            Operation::Update,
            Operation::Delete,
            Operation::Create,
            Operation::Members,
            Operation::PagedMembers,
            Operation::Member,
            Operation::ActivityMembers,
        ]
        .into_iter()
        .find(|o| o.as_str().eq_ignore_ascii_case(s))
    }

    pub fn limit_class(self) -> LimitClass {
        match self {
            Operation::Send | Operation::Reply | Operation::Update | Operation::Delete => {
                LimitClass::Send
            }
            Operation::Create => LimitClass::Create,
            Operation::Members
            | Operation::PagedMembers
            | Operation::Member
            | Operation::ActivityMembers => LimitClass::Members,
        }
    }
}

fn raw_body<S: Serializer>(v: &Option<Arc<RawValue>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(raw) => raw.as_ref().serialize(s),
        None => s.serialize_none(),
    }
}

/// One authenticated Bot Connector request and how the sim answered it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityRecord {
    pub seq: u64,
    pub at_ms: u64,
    pub at: String,
    pub method: &'static str,
    pub path: String,
    pub operation: Operation,
    pub conversation_id: String,
    /// The id the sim assigned (send, reply, channel-thread create) or the id in the path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activity_id: Option<String>,
    /// For replies: the activity replied to (from the path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to_id: Option<String>,
    /// The calling bot (`appid`/`azp` claim of its token).
    pub app_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    pub status: u16,
    /// Teams error code when the call was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The JSON body as received.
    #[serde(serialize_with = "raw_body", skip_serializing_if = "Option::is_none")]
    pub body: Option<Arc<RawValue>>,
}

/// A request that broke a Teams rate limit.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    pub seq: u64,
    pub at_ms: u64,
    pub at: String,
    pub app_id: String,
    pub conversation_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    pub operation: Operation,
    #[serde(flatten)]
    pub limit: Breach,
}

/// One request to the token endpoint or a managed identity endpoint.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequestRecord {
    pub seq: u64,
    pub at_ms: u64,
    pub at: String,
    /// `token`, `imds` or `appService`.
    pub endpoint: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub client_id: String,
    /// `secret`, `certificate`, `federated`, `managedIdentity` or `none`.
    pub credential: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub status: u16,
    /// `AADSTS7000215`, ... when rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientCounts {
    pub total: u64,
    pub ok: u64,
    pub rejected: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub connector_requests: u64,
    pub connector_ok: u64,
    pub auth_rejected: u64,
    pub bad_requests: u64,
    pub unknown_conversation: u64,
    pub throttled_by_limits: u64,
    pub faults_injected: u64,
    pub by_operation: BTreeMap<&'static str, u64>,
    pub by_status: BTreeMap<u16, u64>,
    pub token_requests: u64,
    pub tokens_issued: u64,
    pub token_requests_rejected: u64,
    pub minted_tokens: u64,
    pub openid_requests: u64,
    pub jwks_requests: u64,
}
