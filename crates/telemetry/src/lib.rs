//! botfleet observability: where log lines, spans and metrics are set up.
//!
//! - [`trace`]: the `tracing` subscriber (log lines with trace and span ids),
//!   the OTLP/HTTP span exporter and W3C trace-context propagation.
//! - [`metrics`]: the one metrics registry behind `/metrics` (and OTLP), and the
//!   events that emit a log line and a metric from one place.
//!
//! What each metric and span means: docs/observability.md.

pub mod metrics;
pub mod trace;
