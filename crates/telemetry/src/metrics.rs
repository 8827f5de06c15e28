//! The one metrics registry (being built: see docs/observability.md).
