//! Log lines, spans and their OTLP export (being built: see docs/observability.md).
