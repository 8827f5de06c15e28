//! `/metrics` and what `botfleet serve` adds to the one metrics registry of
//! [`botfleet_telemetry::metrics`]: instruments read from the components'
//! own counters at each collection (the runtime's actors and turns, the
//! notifier, the bot registry, the signing keys, TLS reloads), so each number
//! has one source and `/metrics` and the OTLP export show the same.
//!
//! Every metric, its labels and what to alert on: docs/observability.md.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

use actix_web::HttpResponse;
use botfleet_telemetry::metrics::{self as m, MetricsConfig, MetricsError, OtlpMetrics};
use botfleet_telemetry::metrics::{Label as KeyValue, MeterHandle as Meter};

use crate::settings::{telemetry::parse_headers, Environment, Settings};
use crate::AppState;

/// Longest wait for one OTLP metrics export; a slow collector loses that
/// export only (the exporter runs on its own thread).
const OTLP_EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the registry is built with: OTLP export when `telemetry.otlp_endpoint`
/// (+ `/v1/metrics`), `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (as given) or
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/metrics`) names a collector, unless
/// `OTEL_METRICS_EXPORTER=none`.
pub fn metrics_config(settings: &Settings, env: &Environment) -> MetricsConfig {
    let t = &settings.telemetry;
    let var = |name: &str| env.get(name).filter(|v| !v.trim().is_empty());
    let disabled = var("OTEL_METRICS_EXPORTER").is_some_and(|v| v.trim() == "none");
    let endpoint = t
        .otlp_endpoint
        .as_deref()
        .map(metrics_url)
        .or_else(|| var("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").map(str::to_owned))
        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT").map(metrics_url));
    let otlp = endpoint.filter(|_| !disabled).map(|endpoint| OtlpMetrics {
        endpoint: Some(endpoint),
        headers: t
            .otlp_headers
            .as_ref()
            .and_then(|h| parse_headers(h.expose()).ok())
            .unwrap_or_default()
            .into_iter()
            .collect(),
        interval: t.metrics_export_interval,
        timeout: OTLP_EXPORT_TIMEOUT,
    });
    MetricsConfig {
        otlp,
        tenant_label_limit: t.tenant_label_limit,
        service_name: t.service_name.clone(),
    }
}

/// `http://collector:4318` -> `http://collector:4318/v1/metrics` (the OTLP/HTTP
/// path of metrics, https://opentelemetry.io/docs/specs/otlp/#otlphttp-request).
pub fn metrics_url(base: &str) -> String {
    botfleet_telemetry::trace::signal_url(base, "metrics")
}

/// Builds the registry from the configuration. Call once, before any async
/// runtime starts (the OTLP exporter's blocking client) and before `serve`.
/// Returns the OTLP endpoint for the start-up line, its password and query
/// redacted.
///
/// # Errors
/// The OTLP exporter refuses the endpoint, or the registry exists already.
pub fn install(settings: &Settings) -> Result<Option<String>, MetricsError> {
    let config = metrics_config(settings, &Environment::process());
    let endpoint = config
        .otlp
        .as_ref()
        .and_then(|o| o.endpoint.as_deref())
        .map(botfleet_telemetry::trace::redact_url);
    m::install(config)?;
    Ok(endpoint)
}

/// `GET /metrics` (admin listener): the Prometheus text exposition.
pub(crate) async fn handler() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(m::CONTENT_TYPE)
        .body(m::encode())
}

/// Registers the instruments read from `state`'s components. They hold only
/// a weak reference: once the state is dropped they report nothing.
pub(crate) fn register(state: &Arc<AppState>) {
    let meter = m::meter();
    runtime_metrics(&meter, Arc::downgrade(state));
    notify_metrics(&meter, Arc::downgrade(state));
    registry_metrics(&meter, Arc::downgrade(state));
    signing_key_metrics(&meter, Arc::downgrade(state));
    crate::graph::register_metrics(&meter, Arc::downgrade(state));
    if let Some(auth) = &state.admin.graph_auth {
        crate::graph_auth::register_metrics(&meter, Arc::downgrade(auth));
    }
    let _ = meter
        .u64_observable_counter("botfleet_tls_reload_failures")
        .with_description("Changed TLS certificate or key files that could not be used (the previous certificate stays in use).")
        .with_callback(|o| o.observe(crate::tls::reload_failures(), &[]))
        .build();
}

/// A counter read from `read(state)` at each collection.
fn observed_counter(
    meter: &Meter,
    state: &Weak<AppState>,
    name: &'static str,
    help: &'static str,
    read: fn(&AppState) -> u64,
) {
    let state = state.clone();
    let _ = meter
        .u64_observable_counter(name)
        .with_description(help)
        .with_callback(move |o| {
            if let Some(s) = state.upgrade() {
                o.observe(read(&s), &[]);
            }
        })
        .build();
}

fn runtime_metrics(meter: &Meter, state: Weak<AppState>) {
    type Read = fn(&AppState) -> u64;
    let table: [(&'static str, &'static str, Read); 9] = [
        (
            "botfleet_activities_handled",
            "Activities the bot handler completed.",
            |s| s.runtime.counters().activities_handled.load(Relaxed),
        ),
        (
            "botfleet_activities_failed",
            "Validated activities whose handling failed (store, handler, overload).",
            |s| s.runtime.counters().activities_failed.load(Relaxed),
        ),
        (
            "botfleet_activities_duplicate",
            "Resent activities dropped as duplicates.",
            |s| s.runtime.counters().duplicates_dropped.load(Relaxed),
        ),
        (
            "botfleet_references_written",
            "Conversation reference writes.",
            |s| s.runtime.counters().references_written.load(Relaxed),
        ),
        (
            "botfleet_references_deactivated",
            "Conversation references marked inactive: uninstall, removal, or a send answered 403/404.",
            |s| s.runtime.counters().references_deactivated.load(Relaxed),
        ),
        (
            "botfleet_references_moved",
            "Conversation references moved to another host by a send outcome (GCC).",
            |s| s.runtime.counters().references_moved.load(Relaxed),
        ),
        (
            "botfleet_reference_outcomes_stale",
            "Send outcomes not applied: the reference changed since the send read it.",
            |s| s.runtime.counters().reference_outcomes_stale.load(Relaxed),
        ),
        (
            "botfleet_tenant_quota_refusals",
            "Activities refused by the per-tenant quota.",
            |s| s.runtime.counters().tenant_quota_refusals.load(Relaxed),
        ),
        (
            "botfleet_actor_restarts",
            "Tenant or conversation actors started again after dying.",
            |s| s.runtime.counters().actor_restarts.load(Relaxed),
        ),
    ];
    for (name, help, read) in table {
        observed_counter(meter, &state, name, help, read);
    }
    let s = state.clone();
    let _ = meter
        .i64_observable_gauge("botfleet_actors")
        .with_description("Live actors, by kind (tenant, conversation).")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                let c = s.runtime.counters();
                o.observe(
                    c.conversation_actors.load(Relaxed),
                    &[KeyValue::new("kind", "conversation")],
                );
                o.observe(
                    c.tenant_actors.load(Relaxed),
                    &[KeyValue::new("kind", "tenant")],
                );
            }
        })
        .build();
    let s = state.clone();
    let _ = meter
        .u64_observable_counter("botfleet_actors_started")
        .with_description("Actors started, by kind (tenant, conversation).")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                let c = s.runtime.counters();
                o.observe(
                    c.conversation_actors_started_total.load(Relaxed),
                    &[KeyValue::new("kind", "conversation")],
                );
                o.observe(
                    c.tenant_actors_started_total.load(Relaxed),
                    &[KeyValue::new("kind", "tenant")],
                );
            }
        })
        .build();
    let _ = meter
        .u64_observable_counter("botfleet_replies")
        .with_description("Replies sent for bot handlers, by outcome (docs/turns.md).")
        .with_callback(move |o| {
            if let Some(s) = state.upgrade() {
                for (outcome, n) in s.runtime.counters().sends_by_outcome() {
                    o.observe(n, &[KeyValue::new("outcome", outcome)]);
                }
            }
        })
        .build();
}

/// The notifier's counters (`botfleet_runtime::notify::NotifyCounters`,
/// through its public accessors). Job gauges describe every replica's jobs as
/// of this replica's last sweep: aggregate them with `max`, not `sum`.
fn notify_metrics(meter: &Meter, state: Weak<AppState>) {
    let s = state.clone();
    let _ = meter
        .u64_observable_gauge("botfleet_notification_jobs")
        .with_description(
            "Notification jobs not final, by state (every replica's, as of the last sweep).",
        )
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                let c = s.notifier.counters();
                o.observe(
                    c.jobs_queued.load(Relaxed),
                    &[KeyValue::new("state", "queued")],
                );
                o.observe(
                    c.jobs_running.load(Relaxed),
                    &[KeyValue::new("state", "running")],
                );
            }
        })
        .build();
    let s = state.clone();
    let _ = meter
        .u64_observable_gauge("botfleet_notification_backlog")
        .with_description("Targets of active notification jobs not final yet (pending, sending, retrying), every replica's.")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                o.observe(s.notifier.counters().backlog.load(Relaxed), &[]);
            }
        })
        .build();
    let s = state.clone();
    let _ = meter
        .u64_observable_gauge("botfleet_notification_items_in_hand")
        .with_description("Work items this replica took and has not finished.")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                o.observe(u64::try_from(s.notifier.in_hand()).unwrap_or(u64::MAX), &[]);
            }
        })
        .build();
    type Read = fn(&AppState) -> u64;
    let table: [(&'static str, &'static str, Read); 3] = [
        (
            "botfleet_notification_jobs_completed",
            "Notification jobs whose last outcome this replica recorded.",
            |s| s.notifier.counters().jobs_completed.load(Relaxed),
        ),
        (
            "botfleet_notification_throttled",
            "Notification attempts throttled (the local Teams rate limiter had no room, or Teams answered 429).",
            |s| s.notifier.counters().throttled.load(Relaxed),
        ),
        (
            "botfleet_notification_reclaimed",
            "Work items taken over from a replica that stopped acknowledging them.",
            |s| s.notifier.counters().reclaimed.load(Relaxed),
        ),
    ];
    for (name, help, read) in table {
        observed_counter(meter, &state, name, help, read);
    }
    let s = state.clone();
    let _ = meter
        .f64_observable_counter("botfleet_notification_throttled_wait")
        .with_description("Waits given to throttled notification attempts, summed.")
        .with_unit("s")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                let ms = s.notifier.counters().throttled_wait_ms.load(Relaxed);
                o.observe(ms as f64 / 1000.0, &[]);
            }
        })
        .build();
    let _ = meter
        .u64_observable_counter("botfleet_notification_deliveries")
        .with_description(
            "Notification attempts by outcome (delivered, failed, retried) and reason.",
        )
        .with_callback(move |o| {
            if let Some(s) = state.upgrade() {
                let rows = s.notifier.counters().by_reason();
                // delivered and failed exist from the start (at 0), so rates
                // and alert rules over them have a series before the first job.
                for outcome in ["delivered", "failed"] {
                    if !rows.iter().any(|((o, _), _)| *o == outcome) {
                        o.observe(
                            0,
                            &[
                                KeyValue::new("outcome", outcome),
                                KeyValue::new("reason", ""),
                            ],
                        );
                    }
                }
                for ((outcome, reason), n) in rows {
                    o.observe(
                        n,
                        &[
                            KeyValue::new("outcome", outcome),
                            KeyValue::new("reason", reason),
                        ],
                    );
                }
            }
        })
        .build();
}

fn registry_metrics(meter: &Meter, state: Weak<AppState>) {
    let s = state.clone();
    let _ = meter
        .u64_observable_gauge("botfleet_bots")
        .with_description(
            "Bots served by this replica, by where they are defined (configuration, api).",
        )
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                let served = s.registry.status().served;
                let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
                o.observe(
                    n(s.settings.bots.len()),
                    &[KeyValue::new("source", "configuration")],
                );
                o.observe(n(served), &[KeyValue::new("source", "api")]);
            }
        })
        .build();
    let s = state.clone();
    let _ = meter
        .u64_observable_gauge("botfleet_registry_bots_failed")
        .with_description(
            "Bots registered through the admin API that this replica cannot build (see /readyz).",
        )
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                let failed = s.registry.status().failed.len();
                o.observe(u64::try_from(failed).unwrap_or(u64::MAX), &[]);
            }
        })
        .build();
    let s = state.clone();
    let _ = meter
        .u64_observable_gauge("botfleet_registry_revision")
        .with_description(
            "Bot registry revision this replica applied (equal on every replica once converged).",
        )
        .with_callback(move |o| {
            if let Some(rev) = s.upgrade().and_then(|s| s.registry.status().revision) {
                o.observe(rev, &[]);
            }
        })
        .build();
    observed_counter(
        meter,
        &state,
        "botfleet_registry_changes_applied",
        "Bots from the admin API added, changed or removed on this replica.",
        |s| s.registry.status().applied,
    );
    observed_counter(
        meter,
        &state,
        "botfleet_registry_read_failures",
        "Failed reads of the bot registry (admin store unreachable).",
        |s| s.registry.status().store_failures,
    );
}

/// Signing key stores, one label value per OpenID metadata URL (a handful).
fn signing_key_metrics(meter: &Meter, state: Weak<AppState>) {
    let url = |u: &str| KeyValue::new("metadata_url", u.to_owned());
    let s = state.clone();
    let _ = meter
        .u64_observable_gauge("botfleet_signing_keys")
        .with_description("Signing keys in use (the last good set), by OpenID metadata URL.")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                for k in s.runtime.validator().key_store_status() {
                    o.observe(
                        u64::try_from(k.key_count).unwrap_or(u64::MAX),
                        &[url(&k.metadata_url)],
                    );
                }
            }
        })
        .build();
    let s = state.clone();
    let _ = meter
        .f64_observable_gauge("botfleet_signing_keys_last_success_timestamp")
        .with_description("Unix time of the last successful signing key fetch, by OpenID metadata URL (absent before the first).")
        .with_unit("s")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                for k in s.runtime.validator().key_store_status() {
                    if let Some(ms) = k.last_success_unix_ms {
                        o.observe(ms as f64 / 1000.0, &[url(&k.metadata_url)]);
                    }
                }
            }
        })
        .build();
    let s = state.clone();
    let _ = meter
        .u64_observable_gauge("botfleet_signing_keys_without_endorsements")
        .with_description("Signing keys of the current set published without an endorsements list (refused unless auth.accept_keys_without_endorsements names the cloud).")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                for k in s.runtime.validator().key_store_status() {
                    o.observe(
                        u64::try_from(k.keys_without_endorsements).unwrap_or(u64::MAX),
                        &[url(&k.metadata_url)],
                    );
                }
            }
        })
        .build();
    let _ = meter
        .u64_observable_counter("botfleet_signing_key_fetches_with_keys_without_endorsements")
        .with_description(
            "Signing key fetches whose key set contained keys without an endorsements list.",
        )
        .with_callback(move |o| {
            if let Some(s) = state.upgrade() {
                for k in s.runtime.validator().key_store_status() {
                    o.observe(
                        k.fetches_with_keys_without_endorsements,
                        &[url(&k.metadata_url)],
                    );
                }
            }
        })
        .build();
}
