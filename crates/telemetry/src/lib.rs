//! botfleet observability: where log lines, spans and metrics are set up.
//!
//! - [`trace`]: the `tracing` subscriber (log lines with trace and span ids),
//!   the OTLP/HTTP span exporter and W3C trace-context propagation.
//! - [`metrics`]: the one metrics registry behind `/metrics` (and OTLP), and the
//!   events that emit a log line and a metric from one place.
//! - [`throttle`]: rate limits of log lines whose event can repeat fast.
//!
//! What each metric and span means: docs/observability.md.

pub mod logs;
pub mod metrics;
pub mod throttle;
pub mod trace;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter, EnvFilter, Layer};

pub use logs::{LineFormat, LineFormatter};
pub use trace::{TraceConfig, TraceError, Tracing};

/// What [`init`] sets up.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Format of the lines on stderr.
    pub lines: LineFormat,
    /// Span export (none configured: spans only give lines their ids).
    pub trace: TraceConfig,
}

/// Installs the process's `tracing` subscriber: log lines on stderr at
/// `RUST_LOG` (default `info`), and botfleet's spans (INFO and above, with
/// WARN and ERROR events as span events) as OpenTelemetry spans, exported
/// when an endpoint is configured. Call once, before any async runtime starts
/// (the exporter's blocking HTTP client must be built outside one).
///
/// Errors: [`TraceError`] (an unusable endpoint), or a subscriber already
/// installed ([`TraceError::Exporter`] naming it).
pub fn init(config: &TelemetryConfig) -> Result<Tracing, TraceError> {
    let tracing = Tracing::new(&config.trace)?;
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer()
        .event_format(LineFormatter {
            format: config.lines,
        })
        .with_writer(std::io::stderr)
        .with_filter(env);
    // Spans of botfleet's own crates, whatever RUST_LOG says about lines.
    let spans = tracing.layer().with_filter(filter::filter_fn(|meta| {
        meta.target().starts_with("botfleet")
            && if meta.is_span() {
                *meta.level() <= tracing::Level::INFO
            } else {
                *meta.level() <= tracing::Level::WARN
            }
    }));
    tracing_subscriber::registry()
        .with(spans)
        .with(lines)
        .try_init()
        .map_err(|e| TraceError::Exporter(format!("a tracing subscriber is already set: {e}")))?;
    Ok(tracing)
}
