//! Delivering change and lifecycle notifications, as Graph does
//! (<https://learn.microsoft.com/graph/change-notifications-delivery-webhooks>):
//! background POSTs of `{"value":[...], "validationTokens"?:[...]}`, items due
//! together batched per URL; an answer must be 2xx within 3 s, else the POST is
//! retried with backoff for up to 4 hours of sim time, then dropped. While
//! delivery is paused (`POST /_sim/graph/delivery`), new notifications are
//! dropped outright, as Graph drops after long failures, so the subscriber
//! must find the gap by reading.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    DeliveryRecord, Subscription, ValidationTokenFault, ACK_DEADLINE,
    CHANGE_NOTIFICATION_PUBLISHER, NOTIFY_TIMEOUT, RETRY_WINDOW_MS,
};
use crate::jwt;
use crate::state::{uuid_from, Sim};
use crate::time::now_secs;

/// One notification item waiting for its batch.
#[derive(Debug, Clone)]
pub struct Pending {
    pub item: Value,
    pub subscription_id: String,
    /// (app, tenant) of an item with `encryptedContent`: the batch then carries
    /// one validation token per distinct pair.
    pub rich: Option<(String, String)>,
}

/// A `validationTokens` entry for `app_id` in `tenant_id`: an RS256 JWT signed
/// by the sim's active key (published in its OpenID configuration), real time.
pub fn validation_token(
    sim: &Sim,
    app_id: &str,
    tenant_id: &str,
    fault: ValidationTokenFault,
) -> String {
    let now = now_secs();
    let (nbf, exp) = match fault {
        ValidationTokenFault::Expired => (now - 7200, now - 3600),
        _ => (now - 5, now + 3600),
    };
    let iss_tenant = match fault {
        ValidationTokenFault::WrongIssuer => uuid_from(&format!("other-tenant-{tenant_id}")),
        _ => tenant_id.to_owned(),
    };
    let iss = format!("https://sts.windows.net/{iss_tenant}/");
    let claims = json!({
        "aud": match fault {
            ValidationTokenFault::WrongAudience => uuid_from(&format!("other-app-{app_id}")),
            _ => app_id.to_owned(),
        },
        "iss": iss,
        "iat": nbf,
        "nbf": nbf,
        "exp": exp,
        "appid": match fault {
            ValidationTokenFault::WrongAppId => uuid_from("not-the-graph-publisher"),
            _ => CHANGE_NOTIFICATION_PUBLISHER.to_owned(),
        },
        "appidacr": "2",
        "idp": iss,
        "oid": uuid_from(CHANGE_NOTIFICATION_PUBLISHER),
        "sub": uuid_from(CHANGE_NOTIFICATION_PUBLISHER),
        "tid": tenant_id,
        "uti": uuid::Uuid::new_v4().simple().to_string(),
        "ver": "1.0",
    });
    let active = sim.active_key();
    let signer = match fault {
        ValidationTokenFault::ForeignKey => sim.foreign_key().unwrap_or_else(|_| active.clone()),
        _ => active.clone(),
    };
    jwt::sign(&signer, &active.kid, &claims)
}

/// Queues `pending` for `url`; the first item of a batch starts the task that
/// sends the batch after the batch window.
pub fn enqueue(sim: &Arc<Sim>, url: &str, pending: Pending) {
    let start = {
        let mut inner = sim.graph.inner.lock();
        if inner.paused {
            inner.dropped_while_paused += 1;
            drop(inner);
            sim.graph.record(dropped_record(
                "notification",
                url,
                &[pending.subscription_id],
                "delivery paused",
            ));
            return;
        }
        let queue = inner.pending.entry(url.to_owned()).or_default();
        queue.push(pending);
        queue.len() == 1
    };
    if start {
        let sim = sim.clone();
        let url = url.to_owned();
        tokio::spawn(async move { flush(sim, url).await });
    }
}

fn dropped_record(kind: &'static str, url: &str, ids: &[String], why: &str) -> DeliveryRecord {
    DeliveryRecord {
        seq: 0,
        kind,
        url: url.to_owned(),
        items: ids.len(),
        subscription_ids: ids.to_vec(),
        attempt: 0,
        status: None,
        latency_ms: None,
        outcome: "dropped",
        detail: Some(why.to_owned()),
        at: String::new(),
        real_at: String::new(),
    }
}

async fn flush(sim: Arc<Sim>, url: String) {
    let (window, max_batch) = {
        let inner = sim.graph.inner.lock();
        (inner.settings.batch_window_ms, inner.settings.max_batch)
    };
    tokio::time::sleep(Duration::from_millis(window)).await;
    let (items, fault) = {
        let mut inner = sim.graph.inner.lock();
        (
            inner.pending.remove(&url).unwrap_or_default(),
            inner.faults.validation_tokens,
        )
    };
    for chunk in items.chunks(max_batch.max(1)) {
        let pairs: BTreeSet<&(String, String)> =
            chunk.iter().filter_map(|p| p.rich.as_ref()).collect();
        let mut body = json!({ "value": chunk.iter().map(|p| p.item.clone()).collect::<Vec<_>>() });
        if !pairs.is_empty() {
            let tokens: Vec<String> = pairs
                .iter()
                .map(|(app, tenant)| validation_token(&sim, app, tenant, fault))
                .collect();
            body["validationTokens"] = json!(tokens);
        }
        let ids: Vec<String> = chunk.iter().map(|p| p.subscription_id.clone()).collect();
        let sim = sim.clone();
        let url = url.clone();
        tokio::spawn(async move {
            post_with_retries(sim, "notification", url, body.to_string(), ids).await
        });
    }
}

/// Sends a lifecycle notification for `sub` to its lifecycle URL (immediately,
/// on its own). `false` if the subscription has no lifecycle URL.
pub fn lifecycle(sim: &Arc<Sim>, sub: &Subscription, event: &str) -> bool {
    let Some(url) = sub.lifecycle_url.clone() else {
        return false;
    };
    let body = json!({ "value": [{
        "subscriptionId": sub.id,
        "subscriptionExpirationDateTime": crate::time::rfc3339(sub.expiration_ms),
        "tenantId": sub.tenant_id,
        "clientState": sub.client_state,
        "lifecycleEvent": event,
    }]});
    let ids = vec![sub.id.clone()];
    let paused = {
        let mut inner = sim.graph.inner.lock();
        if inner.paused {
            inner.dropped_while_paused += 1;
        }
        inner.paused
    };
    if paused {
        sim.graph
            .record(dropped_record("lifecycle", &url, &ids, "delivery paused"));
        return true;
    }
    let sim = sim.clone();
    tokio::spawn(
        async move { post_with_retries(sim, "lifecycle", url, body.to_string(), ids).await },
    );
    true
}

/// POSTs `body` to `url` until it is acknowledged (2xx within 3 s), refused
/// (4xx other than 408/429: not retried), or the retries or the 4 h window
/// are used up. Every attempt is recorded.
async fn post_with_retries(
    sim: Arc<Sim>,
    kind: &'static str,
    url: String,
    body: String,
    ids: Vec<String>,
) {
    let first_ms = sim.graph.now_ms();
    let items = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["value"].as_array().map(Vec::len))
        .unwrap_or(0);
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let started = Instant::now();
        let result = sim
            .graph
            .client
            .post(&url)
            .header("content-type", "application/json; charset=utf-8")
            .timeout(NOTIFY_TIMEOUT)
            .body(body.clone())
            .send()
            .await;
        let latency = started.elapsed();
        let (status, outcome, detail) = match &result {
            Ok(r) if r.status().is_success() && latency <= ACK_DEADLINE => {
                (Some(r.status().as_u16()), "delivered", None)
            }
            Ok(r) if r.status().is_success() => (
                Some(r.status().as_u16()),
                "late",
                Some(format!(
                    "acknowledged after {} ms (Graph wants 2xx within 3000 ms)",
                    latency.as_millis()
                )),
            ),
            Ok(r) if r.status().is_client_error() && !matches!(r.status().as_u16(), 408 | 429) => {
                (Some(r.status().as_u16()), "rejected", None)
            }
            Ok(r) => (Some(r.status().as_u16()), "failed", None),
            Err(e) if e.is_timeout() => (
                None,
                "failed",
                Some(format!("no answer within {} s", NOTIFY_TIMEOUT.as_secs())),
            ),
            Err(e) => (
                None,
                "failed",
                Some(format!("cannot reach the endpoint: {e}")),
            ),
        };
        sim.graph.record(DeliveryRecord {
            seq: 0,
            kind,
            url: url.clone(),
            items,
            subscription_ids: ids.clone(),
            attempt,
            status,
            latency_ms: Some(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX)),
            outcome,
            detail,
            at: String::new(),
            real_at: String::new(),
        });
        if matches!(outcome, "delivered" | "rejected") {
            return;
        }
        let delay = {
            let inner = sim.graph.inner.lock();
            inner
                .settings
                .retry_delays_ms
                .get(attempt as usize - 1)
                .copied()
        };
        if let Some(ms) = delay {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        // The window is checked after the wait: the sim clock may have jumped meanwhile.
        let within_window = sim.graph.now_ms().saturating_sub(first_ms) < RETRY_WINDOW_MS;
        match delay {
            Some(_) if within_window => {}
            _ => {
                let why = if within_window {
                    "retries used up"
                } else {
                    "retry window of 4 h (sim time) passed"
                };
                let mut rec = dropped_record(kind, &url, &ids, why);
                rec.items = items;
                rec.attempt = attempt;
                sim.graph.record(rec);
                return;
            }
        }
    }
}
