//! The one metrics registry: an OpenTelemetry `SdkMeterProvider` read by two
//! readers, the Prometheus exporter behind `/metrics` ([`encode`]) and, when an
//! OTLP endpoint is configured, a periodic OTLP/HTTP exporter ([`install`]).
//! Every instrument is registered once here, so both outputs carry the same
//! numbers under the same names.
//!
//! Names: the OpenTelemetry instrument is `botfleet_<what>` with its unit
//! (`s` for seconds); the Prometheus exporter adds `_seconds` for the unit and
//! `_total` for counters (the OpenTelemetry to Prometheus compatibility rules,
//! <https://opentelemetry.io/docs/specs/otel/compatibility/prometheus_and_openmetrics/>),
//! so `/metrics` shows `botfleet_activities_rejected_total` and OTLP carries
//! `botfleet_activities_rejected`. docs/observability.md lists every metric.
//!
//! Events: each observable event is one function here ([`activity_rejected`],
//! [`connector_call`], [`token_refresh_failed`], ...) that records the metric
//! and, where the event deserves one, writes its log line, so the two never
//! disagree. Labels stay low-cardinality: a bot (id or app id of a configured
//! or registered bot), a tenant only through [`tenant_label`] (capped by
//! `telemetry.tenant_label_limit`, the rest counted as `other`), and fixed
//! vocabularies (check, operation, outcome); never a conversation or user id.
//!
//! Before [`install`] (unit tests, tools), the first event builds a registry
//! without OTLP export, so events never fail and `/metrics` still works.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use parking_lot::RwLock;

use crate::throttle::{self, LogThrottle};

/// For instruments registered outside this module (observable ones reading a
/// component's counters), without a direct `opentelemetry` dependency.
pub use opentelemetry::metrics::Meter as MeterHandle;
pub use opentelemetry::KeyValue as Label;

/// The instrumentation scope of every botfleet instrument.
const SCOPE: &str = "botfleet";

/// Where and how often metrics are pushed over OTLP/HTTP (protobuf).
#[derive(Debug, Clone)]
pub struct OtlpMetrics {
    /// Full URL of the metrics endpoint (`http://collector:4318/v1/metrics`).
    /// `None`: the standard variables decide
    /// (`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` as is, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/metrics`).
    pub endpoint: Option<String>,
    /// Extra HTTP headers of each export (authentication of the collector).
    pub headers: HashMap<String, String>,
    /// Time between two exports (`telemetry.metrics_export_interval`).
    pub interval: Duration,
    /// Longest an export may take; a slow collector loses that export only.
    pub timeout: Duration,
}

/// What [`install`] builds.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// OTLP export beside `/metrics`; `None`: `/metrics` only.
    pub otlp: Option<OtlpMetrics>,
    /// Distinct tenant label values per bot before the bot's other tenants
    /// are counted as `other` (`telemetry.tenant_label_limit`).
    pub tenant_label_limit: usize,
    /// `service.name` of the exported metrics, the same resource as the
    /// spans' ([`crate::trace::TraceConfig::service_name`]): `None` leaves it
    /// to `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`, then `botfleet`.
    pub service_name: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            otlp: None,
            tenant_label_limit: DEFAULT_TENANT_LABEL_LIMIT,
            service_name: None,
        }
    }
}

/// Default of `telemetry.tenant_label_limit`.
pub const DEFAULT_TENANT_LABEL_LIMIT: usize = 100;

/// Why the registry could not be set up (start-up error, exit 1).
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics are already set up in this process (install must run once, before the first metric event)")]
    AlreadyInstalled,
    #[error("cannot build the Prometheus exporter: {0}")]
    Prometheus(String),
    #[error("cannot build the OTLP metrics exporter (check telemetry.otlp_endpoint or OTEL_EXPORTER_OTLP_ENDPOINT): {0}")]
    Otlp(String),
}

struct State {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    tenants: TenantLabels,
}

static STATE: OnceLock<State> = OnceLock::new();

/// Exports that failed (both signals' counters live in their modules; this is
/// the metrics one).
static OTLP_METRIC_EXPORT_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Builds the registry: the Prometheus reader always, the OTLP reader when
/// `config.otlp` is set. Call once at start, outside any async runtime (the
/// OTLP exporter's blocking HTTP client must not be built inside one), before
/// the first metric event.
///
/// # Errors
/// [`MetricsError::AlreadyInstalled`] when called twice or after an event;
/// [`MetricsError::Otlp`] for an endpoint the exporter refuses.
pub fn install(config: MetricsConfig) -> Result<(), MetricsError> {
    if STATE.get().is_some() {
        return Err(MetricsError::AlreadyInstalled);
    }
    let state = build(&config)?;
    STATE.set(state).map_err(|_| MetricsError::AlreadyInstalled)
}

fn build(config: &MetricsConfig) -> Result<State, MetricsError> {
    let registry = prometheus::Registry::new();
    let prometheus = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        // Names already carry the `botfleet_` prefix; the scope label and the
        // resource's `target_info` would only repeat `botfleet` on every series
        // (`botfleet_build_info` says the version).
        .without_scope_info()
        .without_target_info()
        .build()
        .map_err(|e| MetricsError::Prometheus(e.to_string()))?;
    let mut builder = SdkMeterProvider::builder().with_reader(prometheus);
    if let Some(otlp) = &config.otlp {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let mut exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(otlp.timeout)
            .with_headers(otlp.headers.clone())
            // Prometheus semantics on both outputs: counters are totals since start.
            .with_temporality(Temporality::Cumulative);
        if let Some(endpoint) = &otlp.endpoint {
            exporter = exporter.with_endpoint(endpoint.clone());
        }
        let exporter = exporter
            .build()
            .map_err(|e| MetricsError::Otlp(e.to_string()))?;
        // The periodic reader exports on its own thread: a collector that is
        // down or slow delays only that thread, never a turn.
        let reader = PeriodicReader::builder(CountingExporter(
            exporter,
            otlp.endpoint.clone().unwrap_or_default(),
        ))
        .with_interval(otlp.interval)
        .build();
        builder = builder.with_reader(reader);
    }
    // The spans' resource (service.name, service.version and the OTEL_*
    // variables), so metrics and traces of one process join in a backend.
    let provider = builder
        .with_resource(crate::trace::resource(config.service_name.as_deref()))
        .build();
    Ok(State {
        provider,
        registry,
        tenants: TenantLabels::new(config.tenant_label_limit),
    })
}

fn state() -> &'static State {
    STATE.get_or_init(|| match build(&MetricsConfig::default()) {
        Ok(s) => s,
        Err(e) => {
            // Only the Prometheus exporter can fail here (a registry conflict);
            // events then go to a provider without readers rather than panic.
            tracing::error!(error = %e, "metrics registry not available; /metrics will be empty");
            State {
                provider: SdkMeterProvider::builder().build(),
                registry: prometheus::Registry::new(),
                tenants: TenantLabels::new(0),
            }
        }
    })
}

/// The meter every botfleet instrument comes from; for observable instruments
/// registered elsewhere (a component's counters read at each collection).
pub fn meter() -> Meter {
    state().provider.meter(SCOPE)
}

/// The Prometheus text exposition (format 0.0.4) of every metric, for
/// `/metrics` (<https://prometheus.io/docs/instrumenting/exposition_formats/>).
pub fn encode() -> String {
    use prometheus::Encoder as _;
    // Make sure the event instruments exist even before their first event, so
    // a scrape lists every metric (at zero) from the start.
    let _ = instruments();
    let families = state().registry.gather();
    let mut out = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&families, &mut out) {
        tracing::warn!(error = %e, "could not encode the metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Pushes what is pending to the OTLP endpoint and stops the exporter (at
/// shutdown; a no-op without OTLP). Blocks for at most the export timeout.
pub fn shutdown() {
    if let Some(s) = STATE.get() {
        if let Err(e) = s.provider.shutdown() {
            tracing::debug!(error = %e, "metrics provider shutdown");
        }
    }
}

/// Metric exports to the OTLP endpoint that failed since start.
pub fn otlp_metric_export_failures() -> u64 {
    OTLP_METRIC_EXPORT_FAILURES.load(Relaxed)
}

/// The OTLP exporter with its failures counted (the SDK only logs them), and
/// its endpoint, to scrub a password or key out of the error lines.
#[derive(Debug)]
struct CountingExporter<E>(E, String);

impl<E: PushMetricExporter> PushMetricExporter for CountingExporter<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let r = self.0.export(metrics).await;
        if let Err(e) = &r {
            OTLP_METRIC_EXPORT_FAILURES.fetch_add(1, Relaxed);
            tracing::warn!(
                error = %crate::trace::scrub(&e.to_string(), &self.1),
                "OTLP metrics export failed; this export is dropped"
            );
        }
        r
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self) -> Temporality {
        self.0.temporality()
    }
}

/// Tenant label values, per bot: the first `limit` distinct tenants a bot
/// sees keep their id, its later ones are `other`, so a bot installed in
/// thousands of tenants cannot make thousands of series, and one busy bot
/// cannot use up the labels of the others. The set of a process lives as long
/// as the process (a label never changes meaning between scrapes).
struct TenantLabels {
    limit: usize,
    seen: RwLock<HashMap<Arc<str>, HashSet<Arc<str>>>>,
}

/// The label value of tenants beyond the limit (and of activities without one).
pub const OTHER_TENANT: &str = "other";

impl TenantLabels {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            seen: RwLock::new(HashMap::new()),
        }
    }

    fn label(&self, bot: &str, tenant: Option<&str>) -> Arc<str> {
        let Some(tenant) = tenant.filter(|t| !t.is_empty()) else {
            return Arc::from(OTHER_TENANT);
        };
        if let Some(t) = self.seen.read().get(bot).and_then(|s| s.get(tenant)) {
            return t.clone();
        }
        let mut seen = self.seen.write();
        let of_bot = seen.entry(Arc::from(bot)).or_default();
        if let Some(t) = of_bot.get(tenant) {
            return t.clone();
        }
        if of_bot.len() >= self.limit {
            return Arc::from(OTHER_TENANT);
        }
        let t: Arc<str> = Arc::from(tenant);
        of_bot.insert(t.clone());
        t
    }
}

/// The tenant label value of `tenant` for `bot`'s series under
/// `telemetry.tenant_label_limit` (a budget per bot).
pub fn tenant_label(bot: &str, tenant: Option<&str>) -> Arc<str> {
    state().tenants.label(bot, tenant)
}

/// Buckets of latencies in seconds: 1 ms to 30 s (a turn's handler deadline
/// and Teams' 15 s answer window inside).
const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0,
];

/// Buckets of Redis command latencies in seconds: 100 µs to 5 s.
const REDIS_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
];

struct Instruments {
    received: Counter<u64>,
    rejected: Counter<u64>,
    ingress_duration: Histogram<f64>,
    turns: Counter<u64>,
    turn_duration: Histogram<f64>,
    passivations: Counter<u64>,
    connector_calls: Counter<u64>,
    connector_retries: Counter<u64>,
    teams_throttled: Counter<u64>,
    retry_after_wait: Counter<f64>,
    rate_limiter_wait: Histogram<f64>,
    token_cache: Counter<u64>,
    token_refreshes: Counter<u64>,
    token_refresh_failures: Counter<u64>,
    webhook_duration: Histogram<f64>,
    webhook_failures: Counter<u64>,
    redis_duration: Histogram<f64>,
    redis_errors: Counter<u64>,
}

/// The instruments of the registry; before the registry exists (an event
/// during configuration loading, before [`install`]), instruments of a
/// provider without readers, so that an early event neither fails nor takes
/// the registry's place.
fn instruments() -> &'static Instruments {
    static I: OnceLock<Instruments> = OnceLock::new();
    static EARLY: OnceLock<Instruments> = OnceLock::new();
    match STATE.get() {
        Some(state) => I.get_or_init(|| make_instruments(&state.provider.meter(SCOPE), true)),
        None => EARLY.get_or_init(|| {
            make_instruments(&SdkMeterProvider::builder().build().meter(SCOPE), false)
        }),
    }
}

fn make_instruments(m: &Meter, registry: bool) -> Instruments {
    {
        let counter = |name: &'static str, help: &'static str| {
            m.u64_counter(name).with_description(help).build()
        };
        let seconds = |name: &'static str, help: &'static str, buckets: &[f64]| {
            m.f64_histogram(name)
                .with_description(help)
                .with_unit("s")
                .with_boundaries(buckets.to_vec())
                .build()
        };
        if registry {
            build_info(m);
            otlp_failures(m);
        }
        let i = Instruments {
            received: counter(
                "botfleet_activities_received",
                "Requests to the messaging endpoint (POST /api/messages[/{bot}]), before any check.",
            ),
            rejected: counter(
                "botfleet_activities_rejected",
                "Requests refused before reaching an actor, by failed check.",
            ),
            ingress_duration: seconds(
                "botfleet_ingress_request_duration",
                "Time from the request's arrival to the answer of the messaging endpoint, by status class.",
                &LATENCY_BUCKETS,
            ),
            turns: counter(
                "botfleet_turns",
                "Turns finished by the bot handler, by bot, tenant (capped), handler kind and outcome.",
            ),
            turn_duration: seconds(
                "botfleet_turn_duration",
                "Time of a turn in the conversation actor (store claim, handler, replies), by handler kind and outcome.",
                &LATENCY_BUCKETS,
            ),
            passivations: counter(
                "botfleet_actor_passivations",
                "Actors stopped because they went idle, by kind (tenant, conversation).",
            ),
            connector_calls: counter(
                "botfleet_connector_calls",
                "HTTP attempts to the Bot Connector API, by operation and status class (2xx, 4xx, 5xx, transport).",
            ),
            connector_retries: counter(
                "botfleet_connector_retries",
                "Bot Connector attempts repeated after a transient failure, by operation and reason.",
            ),
            teams_throttled: counter(
                "botfleet_teams_throttled",
                "Bot Connector answers that throttled us (429, or 503 with Retry-After), by status.",
            ),
            retry_after_wait: m
                .f64_counter("botfleet_teams_retry_after_wait")
                .with_description("Waits Teams asked for in Retry-After, summed.")
                .with_unit("s")
                .build(),
            rate_limiter_wait: seconds(
                "botfleet_rate_limiter_wait",
                "Time a Bot Connector call waited for a permit of the local Teams rate limiter.",
                &LATENCY_BUCKETS,
            ),
            token_cache: counter(
                "botfleet_token_cache_lookups",
                "Access token lookups, by app id and result (hit: a usable token was cached; miss: the caller waited for a fetch).",
            ),
            token_refreshes: counter(
                "botfleet_token_refreshes",
                "Access tokens obtained, by app id and origin (endpoint, shared_tier).",
            ),
            token_refresh_failures: counter(
                "botfleet_token_refresh_failures",
                "Failed access token fetches, by app id and whether the error is permanent.",
            ),
            webhook_duration: seconds(
                "botfleet_webhook_duration",
                "Time of a webhook call to bot logic, by outcome (ok, failed).",
                &LATENCY_BUCKETS,
            ),
            webhook_failures: counter(
                "botfleet_webhook_failures",
                "Webhook calls that failed, by reason (retryable, failed).",
            ),
            redis_duration: seconds(
                "botfleet_redis_command_duration",
                "Time of a Redis command or pipeline, by command.",
                &REDIS_BUCKETS,
            ),
            redis_errors: counter(
                "botfleet_redis_errors",
                "Redis commands (or connection checkouts) that failed, by command.",
            ),
        };
        // Series without labels, and those with a fixed label set, start at 0
        // so that a scrape (and an alert rule over them) sees them before the
        // first event (https://prometheus.io/docs/practices/instrumentation/#avoid-missing-metrics).
        i.received.add(0, &[]);
        i.retry_after_wait.add(0.0, &[]);
        for status in [429, 503] {
            i.teams_throttled
                .add(0, &[KeyValue::new("status", i64::from(status))]);
        }
        i
    }
}

/// Starts the per-bot series of a configured or registered bot (by its app
/// id) at 0, so alert rules over them see the bot before its first failure.
pub fn bot_known(app_id: &str) {
    let i = instruments();
    for permanent in [false, true] {
        i.token_refresh_failures.add(
            0,
            &[
                KeyValue::new("app_id", app_id.to_owned()),
                KeyValue::new("permanent", permanent),
            ],
        );
    }
}

/// Starts the Redis error series at 0 (a Redis-backed store is in use).
pub fn redis_in_use() {
    instruments()
        .redis_errors
        .add(0, &[KeyValue::new("command", "checkout")]);
}

/// `botfleet_build_info{version, git_sha} 1`.
fn build_info(m: &Meter) {
    let attrs = [
        KeyValue::new("version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("git_sha", env!("BOTFLEET_GIT_SHA")),
    ];
    let _ = m
        .u64_observable_gauge("botfleet_build_info")
        .with_description(
            "The running version and, when built from a git checkout, its commit (always 1).",
        )
        .with_callback(move |o| o.observe(1, &attrs))
        .build();
}

/// `botfleet_otlp_export_failures_total{signal}`: spans and metrics exports the
/// collector did not take (each export dropped, serving goes on).
fn otlp_failures(m: &Meter) {
    let _ = m
        .u64_observable_counter("botfleet_otlp_export_failures")
        .with_description("OTLP exports that failed (collector down, slow or refusing); the data of each is dropped, by signal.")
        .with_callback(|o| {
            o.observe(
                crate::trace::export_failures(),
                &[KeyValue::new("signal", "traces")],
            );
            o.observe(otlp_metric_export_failures(), &[KeyValue::new("signal", "metrics")]);
        })
        .build();
    let _ = m
        .u64_observable_counter("botfleet_otlp_dropped_spans")
        .with_description("Spans that never reached the collector: the export queue was full (collector slow or down) or their export failed.")
        .with_callback(|o| o.observe(crate::trace::dropped_spans(), &[]))
        .build();
}

/// Status class label of an HTTP status: `2xx` .. `5xx`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

// ---- ingress -------------------------------------------------------------

/// A request reached the messaging endpoint.
pub fn activity_received() {
    instruments().received.add(1, &[]);
}

/// A request was refused by `check` (a problem type name of docs/security.md).
/// Counted exactly; its log line is rate-limited by the server's refusal log.
pub fn activity_rejected(check: &'static str) {
    instruments()
        .rejected
        .add(1, &[KeyValue::new("check", check)]);
}

/// The messaging endpoint answered `status` after `seconds`.
pub fn ingress_request(seconds: f64, status: u16) {
    instruments().ingress_duration.record(
        seconds,
        &[KeyValue::new("status_class", status_class(status))],
    );
}

// ---- runtime -------------------------------------------------------------

/// Outcome label of a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnOutcome {
    /// The handler completed.
    Handled,
    /// A resend already taken in (dropped).
    Duplicate,
    /// Handling failed (store, handler, panic, reply not delivered).
    Failed,
}

impl TurnOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Handled => "handled",
            Self::Duplicate => "duplicate",
            Self::Failed => "failed",
        }
    }
}

/// A turn ended in the conversation actor after `seconds`. `handler` is the
/// handler kind (`echo`, `webhook`, ...), `tenant` goes through
/// [`tenant_label`].
pub fn turn_finished(
    bot: &str,
    tenant: Option<&str>,
    handler: &'static str,
    outcome: TurnOutcome,
    seconds: f64,
) {
    let i = instruments();
    let tenant = tenant_label(bot, tenant);
    i.turns.add(
        1,
        &[
            KeyValue::new("bot", bot.to_owned()),
            KeyValue::new("tenant", tenant.to_string()),
            KeyValue::new("handler", handler),
            KeyValue::new("outcome", outcome.label()),
        ],
    );
    i.turn_duration.record(
        seconds,
        &[
            KeyValue::new("handler", handler),
            KeyValue::new("outcome", outcome.label()),
        ],
    );
}

/// An idle actor of `kind` (`tenant`, `conversation`) was stopped.
pub fn actor_passivated(kind: &'static str) {
    instruments()
        .passivations
        .add(1, &[KeyValue::new("kind", kind)]);
}

// ---- connector -----------------------------------------------------------

/// One HTTP attempt to the Bot Connector API for `operation` ended with
/// `status` (`None`: no answer, a transport error).
pub fn connector_call(operation: &'static str, status: Option<u16>) {
    let class = status.map_or("transport", status_class);
    instruments().connector_calls.add(
        1,
        &[
            KeyValue::new("operation", operation),
            KeyValue::new("status_class", class),
        ],
    );
}

/// A Bot Connector attempt failed transiently and is repeated after `delay`;
/// logs the warning line with the metric. `status`: the HTTP status, `None`
/// for a transport error (`detail` then says which).
pub fn connector_retry(
    operation: &'static str,
    app_id: &str,
    status: Option<u16>,
    code: &str,
    detail: &str,
    attempts: u32,
    delay: Duration,
) {
    let reason = match status {
        Some(429) => "throttled",
        Some(_) => "http",
        None => "transport",
    };
    instruments().connector_retries.add(
        1,
        &[
            KeyValue::new("operation", operation),
            KeyValue::new("reason", reason),
        ],
    );
    // One line per attempt would be a flood in a 429 storm: the counter has
    // every retry, the log the first and then one per interval.
    static LINE: LogThrottle = LogThrottle::new(throttle::EVERY);
    let Some(suppressed) = LINE.allow() else {
        return;
    };
    let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    match status {
        Some(status) => tracing::warn!(
            target: "botfleet_connector",
            app_id,
            status,
            code,
            attempts,
            retry_in_ms,
            suppressed_since_last_line = suppressed,
            "Bot Connector call failed transiently; retrying"
        ),
        None => tracing::warn!(
            target: "botfleet_connector",
            app_id,
            error = detail,
            attempts,
            retry_in_ms,
            suppressed_since_last_line = suppressed,
            "Bot Connector unreachable; retrying"
        ),
    }
}

/// Teams throttled a call (`status` 429, or 503 with `Retry-After`) and asked
/// to wait `retry_after` (`None`: no header).
pub fn teams_throttled(status: u16, retry_after: Option<Duration>) {
    let i = instruments();
    i.teams_throttled
        .add(1, &[KeyValue::new("status", i64::from(status))]);
    if let Some(wait) = retry_after {
        i.retry_after_wait.add(wait.as_secs_f64(), &[]);
    }
}

/// A call waited `wait` for a permit of the local Teams rate limiter
/// (zero when one was free at once).
pub fn rate_limiter_waited(wait: Duration) {
    instruments()
        .rate_limiter_wait
        .record(wait.as_secs_f64(), &[]);
}

// ---- tokens --------------------------------------------------------------

/// A token lookup for `app_id`: `hit` when a usable token was cached.
pub fn token_lookup(app_id: &str, hit: bool) {
    instruments().token_cache.add(
        1,
        &[
            KeyValue::new("app_id", app_id.to_owned()),
            KeyValue::new("result", if hit { "hit" } else { "miss" }),
        ],
    );
}

/// A token for `app_id` was obtained from `origin` (`endpoint`, `shared_tier`).
pub fn token_refreshed(app_id: &str, origin: &'static str) {
    instruments().token_refreshes.add(
        1,
        &[
            KeyValue::new("app_id", app_id.to_owned()),
            KeyValue::new("origin", origin),
        ],
    );
}

/// A token fetch for `app_id` failed; logs its line with the metric.
/// `key` names the cache entry (app id and scope, no secret); `keeps_serving`:
/// a still-valid token stays in use.
///
/// Level (docs/observability.md, "Logs"): WARN while a still-valid token keeps
/// serving and the error is transient (it recovers by itself); ERROR when no
/// token serves (the bot's replies fail now) or the error is permanent (a
/// wrong secret or app id: an operator must act). Rate-limited to one line per
/// interval per level; the counter has every failure.
pub fn token_refresh_failed(
    app_id: &str,
    key: &dyn std::fmt::Display,
    error: &dyn std::fmt::Display,
    permanent: bool,
    keeps_serving: bool,
) {
    instruments().token_refresh_failures.add(
        1,
        &[
            KeyValue::new("app_id", app_id.to_owned()),
            KeyValue::new("permanent", permanent),
        ],
    );
    static WARN_LINE: LogThrottle = LogThrottle::new(throttle::EVERY);
    static ERROR_LINE: LogThrottle = LogThrottle::new(throttle::EVERY);
    if permanent || !keeps_serving {
        if let Some(suppressed) = ERROR_LINE.allow() {
            tracing::error!(target: "botfleet_auth", key = %key, error = %error, permanent, keeps_serving, suppressed_since_last_line = suppressed, "token refresh failed; replies of this bot fail until a token is obtained");
        }
    } else if let Some(suppressed) = WARN_LINE.allow() {
        tracing::warn!(target: "botfleet_auth", key = %key, error = %error, permanent, keeps_serving, suppressed_since_last_line = suppressed, "token refresh failed; the current token keeps serving");
    }
}

// ---- webhook -------------------------------------------------------------

/// A webhook call ended after `seconds`: `failure` is `None` when it
/// succeeded, else a fixed reason (`retryable`: not reached, or it asked to
/// be called again; `failed`: it ran or may have, and failed).
pub fn webhook_call(seconds: f64, failure: Option<&'static str>) {
    let i = instruments();
    let outcome = if failure.is_some() { "failed" } else { "ok" };
    i.webhook_duration
        .record(seconds, &[KeyValue::new("outcome", outcome)]);
    if let Some(reason) = failure {
        i.webhook_failures
            .add(1, &[KeyValue::new("reason", reason)]);
    }
}

// ---- redis ---------------------------------------------------------------

/// A Redis command (`EVALSHA`, `GET`, `pipeline`, `checkout` for taking a
/// pooled connection, ...) took `seconds` and succeeded (see [`redis_failed`]).
pub fn redis_command(command: &'static str, seconds: f64) {
    instruments()
        .redis_duration
        .record(seconds, &[KeyValue::new("command", command)]);
}

/// Why a Redis command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFailure {
    /// Redis answered an error, or the connection failed.
    Error,
    /// No answer within the command timeout (a hung or unreachable Redis:
    /// a stopped process, a network blackhole).
    TimedOut,
}

/// A Redis command (or connection checkout) failed after `seconds`: counted
/// in `botfleet_redis_errors_total{command}` and logged at ERROR (turns and
/// notifications that need Redis fail until it answers: an operator must
/// act), one line per interval with the count left out. `error` must not
/// carry a URL (it may hold the password); the pool's errors do not.
pub fn redis_failed(
    command: &'static str,
    seconds: f64,
    failure: RedisFailure,
    error: &dyn std::fmt::Display,
) {
    let i = instruments();
    let attrs = [KeyValue::new("command", command)];
    i.redis_duration.record(seconds, &attrs);
    i.redis_errors.add(1, &attrs);
    static LINE: LogThrottle = LogThrottle::new(throttle::EVERY);
    if let Some(suppressed) = LINE.allow() {
        let after_ms = (seconds * 1000.0) as u64;
        match failure {
            RedisFailure::TimedOut => tracing::error!(
                target: "botfleet_store",
                command,
                after_ms,
                suppressed_since_last_line = suppressed,
                "Redis did not answer in time (hung, overloaded or unreachable); the operation failed"
            ),
            RedisFailure::Error => tracing::error!(
                target: "botfleet_store",
                command,
                error = %error,
                suppressed_since_last_line = suppressed,
                "Redis command failed"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_beyond_the_limit_are_other() {
        let t = TenantLabels::new(2);
        assert_eq!(&*t.label("echo", Some("a")), "a");
        assert_eq!(&*t.label("echo", Some("b")), "b");
        assert_eq!(&*t.label("echo", Some("c")), OTHER_TENANT);
        assert_eq!(&*t.label("echo", Some("a")), "a");
        assert_eq!(&*t.label("echo", None), OTHER_TENANT);
        assert_eq!(&*t.label("echo", Some("")), OTHER_TENANT);
        // The budget is per bot: a second bot still labels its own tenants.
        assert_eq!(&*t.label("hook", Some("c")), "c");
        assert_eq!(&*t.label("hook", Some("d")), "d");
        assert_eq!(&*t.label("hook", Some("e")), OTHER_TENANT);
    }

    #[test]
    fn events_show_on_the_prometheus_text_with_their_suffixes() {
        // The registry (as `install` would build it), before the events.
        let _ = meter();
        activity_rejected("audience");
        activity_rejected("audience");
        connector_call("send", Some(429));
        teams_throttled(429, Some(Duration::from_millis(1500)));
        ingress_request(0.003, 200);
        let text = encode();
        assert!(
            text.contains("botfleet_activities_rejected_total{check=\"audience\"} 2"),
            "{text}"
        );
        assert!(text
            .contains("botfleet_connector_calls_total{operation=\"send\",status_class=\"4xx\"} 1"));
        assert!(text.contains("botfleet_teams_retry_after_wait_seconds_total 1.5"));
        assert!(text.contains(
            "botfleet_ingress_request_duration_seconds_bucket{status_class=\"2xx\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("botfleet_build_info{"));
        assert!(!text.contains("otel_scope"), "{text}");
    }
}
