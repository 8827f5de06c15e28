//! Log lines on stderr: one event per line, its sentence first and its fields
//! beside it, with the trace and span ids of the span it happened in.
//!
//! JSON (`{"timestamp":..,"level":"INFO","message":"..","bot":"b",..,
//! "target":"botfleet_runtime::conversation","trace_id":"<32 hex>",
//! "span_id":"<16 hex>"}`) for log collectors, or text for a terminal. Span
//! fields are not repeated on each line (they belong to the trace, and a
//! conversation id is a span attribute, not a log field): the ids link the
//! line to its spans.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// One JSON object per line.
    Json,
    /// `2026-12-01T10:00:00.123Z  INFO message key=value ... trace_id=..`;
    /// the level coloured when `ansi`.
    Text { ansi: bool },
}

/// The event formatter of botfleet's log lines (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct LineFormatter {
    pub format: LineFormat,
}

/// Names a field may not take on a JSON line (they are the line's own).
const RESERVED: [&str; 6] = [
    "timestamp",
    "level",
    "message",
    "target",
    "trace_id",
    "span_id",
];

#[derive(Default)]
struct Fields {
    message: String,
    fields: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name == "message" {
            self.message = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            return;
        }
        // `log` crate records come through as `log.target` etc.: not wanted.
        if name.starts_with("log.") {
            return;
        }
        let key = if RESERVED.contains(&name) {
            format!("field.{name}")
        } else {
            name.to_owned()
        };
        self.fields.insert(key, value);
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}

/// Trace and span id of the innermost span around the event that has them.
fn ids<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<(String, String)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let span = ctx.lookup_current()?;
    for s in span.scope() {
        let ext = s.extensions();
        if let Some(data) = ext.get::<tracing_opentelemetry::OtelData>() {
            if let (Some(t), Some(sp)) = (data.trace_id(), data.span_id()) {
                if t != opentelemetry::TraceId::INVALID {
                    return Some((t.to_string(), sp.to_string()));
                }
            }
        }
    }
    None
}

fn now_rfc3339() -> String {
    // UTC with milliseconds, without pulling in a date crate.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm,
    // https://howardhinnant.github.io/date_algorithms.html#civil_from_days).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        now.subsec_millis()
    )
}

impl<S, N> FormatEvent<S, N> for LineFormatter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let ids = ids(ctx);
        match self.format {
            LineFormat::Json => {
                // Written key by key, not as a map (serde_json's map sorts
                // its keys): timestamp, level and message first, as a reader
                // scans them, then the fields, then target and the ids.
                let mut pairs: Vec<(String, Value)> = vec![
                    ("timestamp".into(), Value::String(now_rfc3339())),
                    ("level".into(), Value::String(meta.level().to_string())),
                    ("message".into(), Value::String(fields.message)),
                ];
                pairs.extend(fields.fields);
                pairs.push(("target".into(), Value::String(meta.target().to_owned())));
                if let Some((trace_id, span_id)) = ids {
                    pairs.push(("trace_id".into(), Value::String(trace_id)));
                    pairs.push(("span_id".into(), Value::String(span_id)));
                }
                let mut text = String::from("{");
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    text.push_str(&serde_json::to_string(k).map_err(|_| fmt::Error)?);
                    text.push(':');
                    text.push_str(&serde_json::to_string(v).map_err(|_| fmt::Error)?);
                }
                text.push('}');
                writeln!(writer, "{text}")
            }
            LineFormat::Text { ansi } => {
                let level = meta.level();
                let (on, off) = match (ansi, *level) {
                    (false, _) => ("", ""),
                    (true, tracing::Level::ERROR) => ("\x1b[31m", "\x1b[0m"),
                    (true, tracing::Level::WARN) => ("\x1b[33m", "\x1b[0m"),
                    (true, tracing::Level::INFO) => ("\x1b[32m", "\x1b[0m"),
                    (true, _) => ("\x1b[2m", "\x1b[0m"),
                };
                write!(
                    writer,
                    "{} {on}{level:>5}{off} {}: {}",
                    now_rfc3339(),
                    meta.target(),
                    fields.message
                )?;
                for (k, v) in &fields.fields {
                    match v {
                        Value::String(s) => write!(writer, " {k}={s}")?,
                        other => write!(writer, " {k}={other}")?,
                    }
                }
                if let Some((trace_id, span_id)) = ids {
                    write!(writer, " trace_id={trace_id} span_id={span_id}")?;
                }
                writeln!(writer)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{TraceConfig, Tracing};
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(buf: &Buf, format: LineFormat, f: impl FnOnce()) -> Vec<String> {
        let tracing = Tracing::new(&TraceConfig::default()).expect("tracing");
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry().with(tracing.layer()).with(
            tracing_subscriber::fmt::layer()
                .event_format(LineFormatter { format })
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().expect("buf").clone()).expect("utf-8");
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn json_lines_carry_the_ids_of_their_span() {
        let buf = Buf::default();
        let mut expected = None;
        let got = lines(&buf, LineFormat::Json, || {
            tracing::info!(bot = "b", "outside any span");
            let span = tracing::info_span!("turn", conversation = "secret-conv");
            let _in = span.enter();
            let inner = tracing::info_span!("handler");
            let _in2 = inner.enter();
            tracing::warn!(status = 429u64, level = "x", "reply throttled");
            expected = Some((crate::trace::trace_id(&inner).expect("trace id"), {
                use opentelemetry::trace::TraceContextExt;
                use tracing_opentelemetry::OpenTelemetrySpanExt;
                inner.context().span().span_context().span_id().to_string()
            }));
        });
        assert_eq!(got.len(), 2, "{got:?}");
        let first: Value = serde_json::from_str(&got[0]).expect("json");
        assert_eq!(first["message"], "outside any span");
        assert_eq!(first["bot"], "b");
        assert!(first.get("trace_id").is_none(), "{first}");
        assert!(
            got[0].starts_with("{\"timestamp\":")
                && got[0].contains("\"level\":\"INFO\",\"message\":"),
            "timestamp, level, message first: {}",
            got[0]
        );
        let second: Value = serde_json::from_str(&got[1]).expect("json");
        let (trace_id, span_id) = expected.expect("ids");
        assert_eq!(second["trace_id"], Value::String(trace_id));
        assert_eq!(second["span_id"], Value::String(span_id));
        assert_eq!(second["level"], "WARN");
        assert_eq!(second["field.level"], "x");
        assert_eq!(second["status"], 429);
        assert!(
            !got[1].contains("secret-conv"),
            "span fields stay off log lines: {}",
            got[1]
        );
        assert!(second["timestamp"]
            .as_str()
            .is_some_and(|t| t.len() == 24 && t.ends_with('Z')));
    }

    #[test]
    fn text_lines_are_one_sentence_and_fields() {
        let buf = Buf::default();
        let got = lines(&buf, LineFormat::Text { ansi: false }, || {
            let span = tracing::info_span!("turn");
            let _in = span.enter();
            tracing::info!(bot = "b", n = 3u64, "activity handled");
        });
        assert_eq!(got.len(), 1);
        assert!(
            got[0].contains(" INFO ") && got[0].contains(": activity handled bot=b n=3 trace_id="),
            "{}",
            got[0]
        );
        assert!(!got[0].contains('\u{1b}'));
    }

    #[test]
    fn dates_are_civil() {
        let t = now_rfc3339();
        assert!(t.starts_with("20"), "{t}");
        assert_eq!(&t[4..5], "-");
        assert_eq!(&t[10..11], "T");
    }
}
