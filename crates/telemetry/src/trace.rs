//! Spans and their export over OTLP/HTTP (protobuf), and W3C trace context.
//!
//! botfleet's spans are ordinary `tracing` spans; [`Tracing::layer`] turns them
//! into OpenTelemetry spans (the `tracing-opentelemetry` layer) and a batch
//! processor exports them from its own thread with the blocking HTTP client,
//! so a collector that is down or slow never holds up a turn: spans wait in a
//! bounded queue ([`QUEUE_SIZE`]) and beyond it are dropped and counted
//! ([`dropped_spans`], [`export_failures`]).
//!
//! Trace context travels as W3C `traceparent` / `tracestate` headers
//! (https://www.w3.org/TR/trace-context/): [`set_remote_parent`] joins an
//! upstream proxy's trace, [`context_headers`] gives the headers for an
//! outbound call (the webhook), so bot logic joins the turn's trace.
//!
//! What each span means: docs/observability.md.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use opentelemetry_sdk::Resource;
use thiserror::Error;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::throttle::LogThrottle;

/// Spans waiting for export at most; more are dropped (and counted) rather
/// than held in memory while a collector is down.
pub const QUEUE_SIZE: usize = 2048;

/// Spans sent to the collector in one request at most.
pub const BATCH_SIZE: usize = 512;

/// How long the batch waits before exporting what it has.
pub const SCHEDULED_DELAY: Duration = Duration::from_secs(1);

/// Longest wait for one export request (the blocking client's timeout; the
/// standard `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` / `OTEL_EXPORTER_OTLP_TIMEOUT`
/// variables, in milliseconds, replace it).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Service name when neither the configuration nor `OTEL_SERVICE_NAME` /
/// `OTEL_RESOURCE_ATTRIBUTES` (`service.name=...`) names one.
pub const DEFAULT_SERVICE_NAME: &str = "botfleet";

/// Where and how spans are exported. Build it from the configuration
/// (`[telemetry]`); `OTEL_*` variables the fields leave open apply.
#[derive(Debug, Clone, Default)]
pub struct TraceConfig {
    /// The full OTLP/HTTP traces URL (`http://collector:4318/v1/traces`).
    /// `None`: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as given) or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/traces`) when set, else no
    /// export (spans still give log lines their trace and span ids).
    pub endpoint: Option<String>,
    /// Extra request headers (authentication of a hosted collector), beside
    /// those of `OTEL_EXPORTER_OTLP_HEADERS`.
    pub headers: Vec<(String, String)>,
    /// Share of new traces sampled, 0.0..=1.0; a trace started upstream
    /// follows the upstream decision (parent-based).
    pub sampling_ratio: f64,
    /// `service.name` of the resource; `None`: `OTEL_SERVICE_NAME`, then
    /// `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, then `botfleet`.
    pub service_name: Option<String>,
}

impl TraceConfig {
    /// The endpoint spans go to: the configured one, else the standard
    /// variables (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as given, or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`); `None` without any.
    pub fn resolved_endpoint(&self) -> Option<String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        self.endpoint
            .clone()
            .or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| traces_url(&base)))
    }
}

/// `http://collector:4318` -> `http://collector:4318/v1/traces` (the OTLP/HTTP
/// path of traces, https://opentelemetry.io/docs/specs/otlp/#otlphttp-request).
pub fn traces_url(base: &str) -> String {
    signal_url(base, "traces")
}

/// `base` with `/v1/{signal}` appended to its path, before any query string
/// (`http://c:4318/?k=1` -> `http://c:4318/v1/traces?k=1`). A `base` that is
/// not a URL is joined as text (the endpoint check refuses it anyway).
pub fn signal_url(base: &str, signal: &str) -> String {
    match url::Url::parse(base) {
        Ok(mut url) if !url.cannot_be_a_base() => {
            let path = format!("{}/v1/{signal}", url.path().trim_end_matches('/'));
            url.set_path(&path);
            url.to_string()
        }
        _ => format!("{}/v1/{signal}", base.trim_end_matches('/')),
    }
}

/// `endpoint` fit for a log line or `check-config`: a password in the URL and
/// the query string (hosted collectors may take a key there) are replaced by
/// `REDACTED`; the user name stays. Text that is not a URL is shown as
/// `<not a URL>` (it may be anything).
pub fn redact_url(endpoint: &str) -> String {
    let Ok(mut url) = url::Url::parse(endpoint) else {
        return "<not a URL>".to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("REDACTED"));
    }
    if url.query().is_some() {
        url.set_query(Some("REDACTED"));
    }
    url.to_string()
}

/// `text` (an exporter's error, which may quote the URL it called) with the
/// password and query of `endpoint` replaced by `REDACTED`.
pub fn scrub(text: &str, endpoint: &str) -> String {
    let Ok(url) = url::Url::parse(endpoint) else {
        return text.to_owned();
    };
    let mut out = text.to_owned();
    for secret in [url.password(), url.query()].into_iter().flatten() {
        if !secret.is_empty() {
            out = out.replace(secret, "REDACTED");
        }
    }
    out
}

/// Why spans cannot be exported as configured (start-up error).
#[derive(Debug, Error)]
pub enum TraceError {
    #[error("the OTLP endpoint `{endpoint}` is not a usable http(s) URL: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(String),
}

/// Spans dropped without reaching a collector: the queue was full (collector
/// down or slow) or their export request failed.
pub fn dropped_spans() -> u64 {
    STATS.dropped.load(Ordering::Relaxed)
}

/// Export requests (batches of spans) that failed: collector unreachable,
/// timed out, or answered an error.
pub fn export_failures() -> u64 {
    STATS.failures.load(Ordering::Relaxed)
}

/// Spans the collector accepted.
pub fn exported_spans() -> u64 {
    STATS.exported.load(Ordering::Relaxed)
}

struct Stats {
    dropped: AtomicU64,
    /// The part of `dropped` refused by a full queue.
    queue_full: AtomicU64,
    failures: AtomicU64,
    exported: AtomicU64,
}

static STATS: Stats = Stats {
    dropped: AtomicU64::new(0),
    queue_full: AtomicU64::new(0),
    failures: AtomicU64::new(0),
    exported: AtomicU64::new(0),
};

/// The tracer provider and whether it exports. Keep it until shutdown, then
/// call [`Tracing::shutdown`] (outside any async runtime) to flush.
pub struct Tracing {
    provider: SdkTracerProvider,
    endpoint: Option<String>,
}

impl Tracing {
    /// Builds the provider; with an endpoint (configured or from the `OTEL_*`
    /// variables) a batch exporter on its own thread. Call it outside any
    /// async runtime (the blocking HTTP client must not be created inside one).
    ///
    /// Errors: [`TraceError::InvalidEndpoint`] (not an absolute http(s) URL),
    /// [`TraceError::Exporter`].
    pub fn new(config: &TraceConfig) -> Result<Self, TraceError> {
        let endpoint = config.resolved_endpoint();
        let resource = resource(config.service_name.as_deref());
        let ratio = config.sampling_ratio.clamp(0.0, 1.0);
        let mut builder = SdkTracerProvider::builder().with_resource(resource);
        builder = match &endpoint {
            Some(endpoint) => {
                check_endpoint(endpoint)?;
                let exporter = build_exporter(endpoint, &config.headers)?;
                let pending = Arc::new(AtomicUsize::new(0));
                let batch = BatchSpanProcessor::builder(CountingExporter {
                    inner: exporter,
                    pending: pending.clone(),
                    endpoint: endpoint.clone(),
                })
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_max_queue_size(QUEUE_SIZE)
                        .with_max_export_batch_size(BATCH_SIZE)
                        .with_scheduled_delay(SCHEDULED_DELAY)
                        .build(),
                )
                .build();
                builder
                    .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                        ratio,
                    ))))
                    .with_span_processor(BoundedProcessor {
                        inner: batch,
                        pending,
                    })
            }
            // No collector: ids for log lines and propagation, nothing
            // recorded unless an upstream caller sampled the trace.
            None => builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff))),
        };
        Ok(Self {
            provider: builder.build(),
            endpoint: endpoint.as_deref().map(redact_url),
        })
    }

    /// The URL spans are exported to, if any, with its password and query
    /// redacted ([`redact_url`]): for log lines.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// The `tracing` layer that makes OpenTelemetry spans of botfleet's spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("botfleet"))
            // Code locations and thread names add bytes, not answers.
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_error_events_to_status(true)
    }

    /// Exports what is queued (waiting up to the export timeout) and stops
    /// the exporter thread. Call once, after the server stopped, outside any
    /// async runtime.
    pub fn shutdown(&self) -> Result<(), String> {
        self.provider.shutdown().map_err(|e| e.to_string())
    }
}

/// The resource of spans and metrics: `service.name` (the configured one,
/// else the `OTEL_*` variables, else [`DEFAULT_SERVICE_NAME`]) and
/// `service.version`.
pub(crate) fn resource(service_name: Option<&str>) -> Resource {
    // Resource::builder() reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
    let from_env = Resource::builder().build();
    let named_by_env = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| {
            a.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    let name = match service_name {
        Some(name) => Some(name.to_owned()),
        None if named_by_env => None,
        None => Some(DEFAULT_SERVICE_NAME.to_owned()),
    };
    let mut builder = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if let Some(name) = name {
        builder = builder.with_service_name(name);
    }
    drop(from_env);
    builder.build()
}

/// An absolute http(s) URL with a host.
pub fn check_endpoint(endpoint: &str) -> Result<(), TraceError> {
    let invalid = |reason: &str| TraceError::InvalidEndpoint {
        // The error is printed: never with the URL's password or key.
        endpoint: redact_url(endpoint),
        reason: reason.to_owned(),
    };
    let url = url::Url::parse(endpoint).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https (OTLP over HTTP)"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    Ok(())
}

fn build_exporter(
    endpoint: &str,
    headers: &[(String, String)],
) -> Result<opentelemetry_otlp::SpanExporter, TraceError> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint);
    let timeout_set = [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some());
    if !timeout_set {
        builder = builder.with_timeout(EXPORT_TIMEOUT);
    }
    if !headers.is_empty() {
        builder = builder.with_headers(headers.iter().cloned().collect());
    }
    builder
        .build()
        .map_err(|e| TraceError::Exporter(e.to_string()))
}

/// The OTLP exporter, counting what it exported and what it lost.
#[derive(Debug)]
struct CountingExporter {
    inner: opentelemetry_otlp::SpanExporter,
    /// Spans handed to the batch processor and not yet through an export.
    pending: Arc<AtomicUsize>,
    /// For scrubbing its password and query out of error lines.
    endpoint: String,
}

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.pending.fetch_sub(n, Ordering::Relaxed);
        match &result {
            Ok(()) => {
                STATS.exported.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                STATS.failures.fetch_add(1, Ordering::Relaxed);
                STATS.dropped.fetch_add(n as u64, Ordering::Relaxed);
                static LINE: LogThrottle = LogThrottle::new(crate::throttle::EVERY);
                if let Some(suppressed) = LINE.allow() {
                    tracing::warn!(
                        error = %scrub(&e.to_string(), &self.endpoint),
                        spans = n,
                        suppressed_since_last_line = suppressed,
                        "OTLP span export failed; these spans are dropped"
                    );
                }
            }
        }
        // Spans the queue refused since the last line (the processor counts
        // them on the hot path and cannot log there: it runs as spans close).
        // This runs on the exporter's thread, outside any span.
        report_queue_drops();
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The batch processor behind a count of the spans it holds: beyond
/// [`QUEUE_SIZE`] a span is dropped and counted here (the batch processor
/// would drop it too, but only reports that at shutdown).
#[derive(Debug)]
struct BoundedProcessor {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::Relaxed) >= QUEUE_SIZE {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            STATS.dropped.fetch_add(1, Ordering::Relaxed);
            STATS.queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Spans refused by a full queue that a log line already reported.
static REPORTED_QUEUE_DROPS: AtomicU64 = AtomicU64::new(0);

fn report_queue_drops() {
    static LINE: LogThrottle = LogThrottle::new(crate::throttle::EVERY);
    let now = STATS.queue_full.load(Ordering::Relaxed);
    let before = REPORTED_QUEUE_DROPS.load(Ordering::Relaxed);
    if now > before && LINE.allow().is_some() {
        REPORTED_QUEUE_DROPS.store(now, Ordering::Relaxed);
        tracing::warn!(
            dropped = now - before,
            queue_size = QUEUE_SIZE,
            "spans dropped: the export queue is full (the collector is slower than the span rate); see botfleet_otlp_dropped_spans_total"
        );
    }
}

struct HeaderPairs<'a>(&'a [(&'a str, &'a str)]);

impl Extractor for HeaderPairs<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| *v)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// Makes `span` a child of the trace in `traceparent` (and `tracestate`) of
/// an upstream caller. An absent or malformed `traceparent` is ignored (the
/// span starts a new trace), as the W3C recommendation asks. Call it before
/// the span is first entered.
pub fn set_remote_parent(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let mut pairs = vec![("traceparent", traceparent)];
    if let Some(state) = tracestate {
        pairs.push(("tracestate", state));
    }
    let cx = TraceContextPropagator::new().extract(&HeaderPairs(&pairs));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

struct Headers(Vec<(&'static str, String)>);

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        let key = match key {
            "traceparent" => "traceparent",
            // An empty tracestate is not sent (W3C trace-context: vendors
            // SHOULD avoid sending it empty).
            "tracestate" if value.is_empty() => return,
            "tracestate" => "tracestate",
            _ => return,
        };
        self.0.push((key, value));
    }
}

/// The W3C `traceparent` (and `tracestate` when there is one) of `span`, for
/// an outbound request; empty when the span has no trace (tracing off).
pub fn context_headers(span: &tracing::Span) -> Vec<(&'static str, String)> {
    let cx = span.context();
    let mut headers = Headers(Vec::new());
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut headers);
    }
    headers.0
}

/// The trace id (32 hex digits) of `span`, if it has one.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn endpoints_must_be_http_urls_with_a_host() {
        assert!(check_endpoint("http://127.0.0.1:4318/v1/traces").is_ok());
        assert!(check_endpoint("https://otel.example.com/v1/traces").is_ok());
        for bad in [
            "collector:4318",
            "ftp://x/v1/traces",
            "not a url",
            "http://",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
        assert_eq!(
            traces_url("http://c:4318/"),
            "http://c:4318/v1/traces".to_owned()
        );
        assert_eq!(
            signal_url("http://c:4318/otlp/?api_key=k", "metrics"),
            "http://c:4318/otlp/v1/metrics?api_key=k".to_owned()
        );
    }

    #[test]
    fn urls_for_logs_hide_passwords_and_queries() {
        let url = "http://user:PASSW0RD@c:4318/v1/traces?api_key=QUERYKEY";
        let shown = redact_url(url);
        assert_eq!(shown, "http://user:REDACTED@c:4318/v1/traces?REDACTED");
        assert_eq!(
            scrub(&format!("error sending request for url ({url})"), url),
            "error sending request for url (http://user:REDACTED@c:4318/v1/traces?REDACTED)"
        );
        assert_eq!(redact_url("http://c:4318"), "http://c:4318/");
        assert_eq!(redact_url("garbage PASSW0RD"), "<not a URL>");
    }

    #[test]
    fn no_empty_tracestate_goes_out() {
        let tracing = Tracing::new(&TraceConfig::default()).expect("no exporter");
        let subscriber = tracing_subscriber::registry().with(tracing.layer());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request");
            set_remote_parent(
                &span,
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                None,
            );
            let headers = context_headers(&span);
            assert!(headers.iter().any(|(k, _)| *k == "traceparent"));
            assert!(
                !headers.iter().any(|(k, _)| *k == "tracestate"),
                "{headers:?}"
            );
        });
    }

    #[test]
    fn traceparent_in_and_out() {
        let tracing = Tracing::new(&TraceConfig::default()).expect("no exporter");
        let subscriber = tracing_subscriber::registry().with(tracing.layer());
        tracing::subscriber::with_default(subscriber, || {
            let upstream = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let span = tracing::info_span!("request");
            set_remote_parent(&span, Some(upstream), Some("vendor=1"));
            let _in = span.enter();
            let child = tracing::info_span!("call");
            let headers = context_headers(&child);
            let tp = &headers
                .iter()
                .find(|(k, _)| *k == "traceparent")
                .expect("traceparent")
                .1;
            assert!(
                tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{tp}"
            );
            assert!(tp.ends_with("-01"), "upstream sampled: {tp}");
            assert!(!tp.contains("00f067aa0ba902b7"), "a new span id: {tp}");
            assert!(headers.contains(&("tracestate", "vendor=1".to_owned())));
            assert_eq!(
                trace_id(&child).as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            );
            drop(_in);
            // A malformed one starts a new trace.
            let fresh = tracing::info_span!("request");
            set_remote_parent(&fresh, Some("00-zz-zz-01"), None);
            let id = trace_id(&fresh).expect("a new trace");
            assert_ne!(id, "4bf92f3577b34da6a3ce929d0e0e4736");
        });
    }
}
