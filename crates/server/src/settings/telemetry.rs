//! `[telemetry]`: where spans (and metrics) are exported over OTLP/HTTP, how
//! many traces are sampled, and the limits of metric labels
//! (docs/observability.md).
//!
//! Every key is optional. What a key leaves open, the OpenTelemetry SDK
//! variables decide (https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/):
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER_ARG`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`.

use std::time::Duration;

use botfleet_auth::Secret;
use serde::{Deserialize, Deserializer, Serialize};

use super::error::ConfigError;
use super::sources::Environment;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// Base URL of an OTLP/HTTP collector, e.g. `http://otel-collector:4318`:
    /// spans go to `{otlp_endpoint}/v1/traces`, metrics to `/v1/metrics`.
    /// Unset: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (as given) or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; none of them: nothing is exported.
    /// Shown (`check-config`) with a password and a query string redacted.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted_endpoint"
    )]
    pub otlp_endpoint: Option<String>,
    /// Headers sent with every OTLP request (a hosted collector's key), as
    /// `name=value` pairs separated by commas, the format of
    /// `OTEL_EXPORTER_OTLP_HEADERS`. A secret: give it as `otlp_headers_file`
    /// or `otlp_headers_env`; shown redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_headers: Option<Secret>,
    /// Share of new traces recorded and exported, 0.0 to 1.0 (default 1.0,
    /// or `OTEL_TRACES_SAMPLER_ARG`). A trace started by an upstream proxy
    /// (`traceparent`) follows that proxy's decision.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_ratio"
    )]
    pub sampling_ratio: Option<f64>,
    /// `service.name` of spans and metrics (default `botfleet`, or
    /// `OTEL_SERVICE_NAME`, or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// How often metrics are pushed to the OTLP endpoint (when there is one),
    /// 1s to 1h.
    #[serde(with = "super::duration")]
    pub metrics_export_interval: Duration,
    /// Most distinct tenants a metric is labelled with per bot; activity of
    /// further tenants is counted under `tenant="other"` (1 to 10,000).
    pub tenant_label_limit: usize,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_headers: None,
            sampling_ratio: None,
            service_name: None,
            metrics_export_interval: Duration::from_secs(60),
            tenant_label_limit: 100,
        }
    }
}

fn redacted_endpoint<S: serde::Serializer>(
    endpoint: &Option<String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match endpoint {
        Some(e) => s.serialize_some(&botfleet_telemetry::trace::redact_url(e)),
        None => s.serialize_none(),
    }
}

/// A number, or a number as text (`BOTFLEET__TELEMETRY__SAMPLING_RATIO=0.1`:
/// a variable for a key without a default arrives as text).
fn lenient_ratio<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ratio {
        Float(f64),
        Int(i64),
        Text(String),
    }
    match Ratio::deserialize(d)? {
        Ratio::Float(f) => Ok(Some(f)),
        Ratio::Int(i) => Ok(Some(i as f64)),
        Ratio::Text(t) => t.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("`{t}` is not a number between 0.0 and 1.0"))
        }),
    }
}

impl TelemetrySettings {
    /// Checks every key and the `OTEL_*` variables botfleet reads itself;
    /// pushes one error per problem.
    pub fn check(&self, env: &Environment, errors: &mut Vec<ConfigError>) {
        let mut fail = |key: &str, problem: String| errors.push(ConfigError::new(key, problem));
        // Errors name the endpoint redacted: it may carry a password or key.
        let check = |endpoint: &str| {
            botfleet_telemetry::trace::check_endpoint(endpoint).map_err(|e| match e {
                botfleet_telemetry::TraceError::InvalidEndpoint { reason, .. } => format!(
                    "`{}` is not a usable http(s) URL: {reason}",
                    botfleet_telemetry::trace::redact_url(endpoint)
                ),
                other => other.to_string(),
            })
        };
        if let Some(endpoint) = &self.otlp_endpoint {
            if let Err(e) = check(endpoint) {
                fail(
                    "telemetry.otlp_endpoint",
                    format!(
                        "{e}; give the collector's base URL, e.g. \"http://otel-collector:4318\""
                    ),
                );
            } else if let Some(signal) = ["/v1/traces", "/v1/metrics"].into_iter().find(|p| {
                url::Url::parse(endpoint).is_ok_and(|u| u.path().trim_end_matches('/').ends_with(p))
            }) {
                fail(
                    "telemetry.otlp_endpoint",
                    format!("is the collector's base URL: botfleet appends /v1/traces and /v1/metrics itself; drop the trailing {signal}"),
                );
            }
        } else {
            for var in [
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ] {
                if let Some(v) = env.get(var).filter(|v| !v.trim().is_empty()) {
                    if let Err(e) = check(v) {
                        fail(
                            "telemetry.otlp_endpoint",
                            format!("from the environment variable {var}: {e}"),
                        );
                    }
                }
            }
            // Used for metrics only when the file names no endpoint.
            if let Some(v) = env
                .get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
                .filter(|v| !v.trim().is_empty())
            {
                if let Err(e) = check(v) {
                    fail(
                        "telemetry.otlp_endpoint",
                        format!("from the environment variable OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: {e}"),
                    );
                }
            }
        }
        if let Some(v) = env.get("OTEL_EXPORTER_OTLP_HEADERS") {
            if let Err(problem) = parse_headers(v) {
                fail(
                    "telemetry.otlp_headers",
                    format!("from the environment variable OTEL_EXPORTER_OTLP_HEADERS: {problem}"),
                );
            }
        }
        if let Some(headers) = &self.otlp_headers {
            if let Err(problem) = parse_headers(headers.expose()) {
                fail("telemetry.otlp_headers", problem);
            }
        }
        match self.sampling_ratio {
            Some(r) if !(0.0..=1.0).contains(&r) => fail(
                "telemetry.sampling_ratio",
                format!("{r} is not between 0.0 and 1.0, e.g. 0.1 to keep one trace in ten"),
            ),
            Some(_) => {}
            None => {
                if let Some(arg) = env.get("OTEL_TRACES_SAMPLER_ARG") {
                    if !arg
                        .trim()
                        .parse::<f64>()
                        .is_ok_and(|r| (0.0..=1.0).contains(&r))
                    {
                        fail(
                            "telemetry.sampling_ratio",
                            format!("from the environment variable OTEL_TRACES_SAMPLER_ARG: `{arg}` is not between 0.0 and 1.0"),
                        );
                    }
                }
            }
        }
        if self
            .service_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            fail(
                "telemetry.service_name",
                "give a non-empty name, e.g. \"botfleet\"".into(),
            );
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600))
            .contains(&self.metrics_export_interval)
        {
            fail(
                "telemetry.metrics_export_interval",
                "must be between 1s and 1h, e.g. \"60s\"".into(),
            );
        }
        if !(1..=10_000).contains(&self.tenant_label_limit) {
            fail(
                "telemetry.tenant_label_limit",
                "must be between 1 and 10000, e.g. 100: each tenant label is a time series per metric".into(),
            );
        }
    }

    /// What the span exporter needs: the traces URL (configured base +
    /// `/v1/traces`; `None` leaves it to the `OTEL_*` variables), headers,
    /// ratio (the key, else `OTEL_TRACES_SAMPLER_ARG`, else 1.0), name.
    pub fn trace_config(&self, env: &Environment) -> botfleet_telemetry::TraceConfig {
        botfleet_telemetry::TraceConfig {
            endpoint: self
                .otlp_endpoint
                .as_deref()
                .map(botfleet_telemetry::trace::traces_url),
            headers: self
                .otlp_headers
                .as_ref()
                .and_then(|h| parse_headers(h.expose()).ok())
                .unwrap_or_default(),
            sampling_ratio: self
                .sampling_ratio
                .or_else(|| {
                    env.get("OTEL_TRACES_SAMPLER_ARG")
                        .and_then(|a| a.trim().parse().ok())
                })
                .unwrap_or(1.0),
            service_name: self.service_name.clone(),
        }
    }
}

/// `name=value,name2=value2` (values may be percent-encoded, as in
/// `OTEL_EXPORTER_OTLP_HEADERS`) -> pairs. The error never quotes a value.
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, pair) in text.split(',').enumerate() {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let Some((name, value)) = pair.split_once('=') else {
            return Err(format!(
                "entry {} is not `name=value`: write e.g. `authorization=Bearer%20KEY,x-tenant=a`",
                i + 1
            ));
        };
        let name = name.trim();
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_name {
            return Err(format!(
                "entry {}: `{}` is not an HTTP header name",
                i + 1,
                name.chars()
                    .filter(|c| !c.is_control())
                    .take(40)
                    .collect::<String>()
            ));
        }
        let value = percent_decode(value.trim());
        if value.bytes().any(|b| b.is_ascii_control()) {
            return Err(format!(
                "entry {} (`{name}`): the value has control characters",
                i + 1
            ));
        }
        out.push((name.to_ascii_lowercase(), value));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi * 16 + lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{load_with, LoadedConfig, SettingsError};

    fn load(text: &str, env: &[(&str, &str)]) -> Result<LoadedConfig, SettingsError> {
        let mut f = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        std::io::Write::write_all(&mut f, text.as_bytes()).expect("write");
        load_with(
            Some(f.path()),
            &Environment::from_pairs(env.iter().copied()),
        )
    }

    fn problems(r: Result<LoadedConfig, SettingsError>) -> String {
        match r {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_export_nothing_and_sample_everything() {
        let c = load("", &[]).expect("defaults");
        let t = &c.settings.telemetry;
        assert_eq!(t.metrics_export_interval, Duration::from_secs(60));
        assert_eq!(t.tenant_label_limit, 100);
        let tc = t.trace_config(&Environment::default());
        assert_eq!((tc.endpoint, tc.sampling_ratio), (None, 1.0));
        assert_eq!(
            c.settings.server.log_format,
            crate::settings::LogFormat::Auto
        );
    }

    #[test]
    fn keys_files_and_variables() {
        let dir = tempfile::tempdir().expect("dir");
        let headers = dir.path().join("otlp-headers");
        std::fs::write(&headers, "authorization=Bearer%20s3cr3t\n").expect("write");
        let c = load(
            &format!(
                "[telemetry]\notlp_endpoint = \"http://collector:4318/\"\notlp_headers_file = {:?}\nservice_name = \"bf-eu\"\n",
                headers.display().to_string()
            ),
            &[
                ("BOTFLEET__TELEMETRY__SAMPLING_RATIO", "0.25"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.9"),
            ],
        )
        .expect("valid");
        let tc = c.settings.telemetry.trace_config(&Environment::default());
        assert_eq!(
            tc.endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            tc.headers,
            vec![("authorization".to_owned(), "Bearer s3cr3t".to_owned())]
        );
        // The key wins over OTEL_TRACES_SAMPLER_ARG.
        assert_eq!(tc.sampling_ratio, 0.25);
        assert_eq!(tc.service_name.as_deref(), Some("bf-eu"));
        let shown = c.effective_toml();
        assert!(!shown.contains("s3cr3t"), "{shown}");
        // A password or key in the endpoint URL is not shown either.
        let c = load(
            "[telemetry]\notlp_endpoint = \"http://u:PASSW0RD@c:4318/?api_key=QUERYKEY\"\n",
            &[],
        )
        .expect("valid");
        let shown = c.effective_toml();
        assert!(
            !shown.contains("PASSW0RD") && !shown.contains("QUERYKEY") && shown.contains("c:4318"),
            "{shown}"
        );
        let tc = c.settings.telemetry.trace_config(&Environment::default());
        assert_eq!(
            tc.endpoint.as_deref(),
            Some("http://u:PASSW0RD@c:4318/v1/traces?api_key=QUERYKEY")
        );
        // Without the key, the standard variable applies.
        let c = load("", &[("OTEL_TRACES_SAMPLER_ARG", "0.1")]).expect("valid");
        let env = Environment::from_pairs([("OTEL_TRACES_SAMPLER_ARG", "0.1")]);
        assert_eq!(c.settings.telemetry.trace_config(&env).sampling_ratio, 0.1);
    }

    #[test]
    fn invalid_values_name_their_key() {
        let e = problems(load(
            "[telemetry]\notlp_endpoint = \"collector:4318\"\nsampling_ratio = 1.5\nmetrics_export_interval = \"0s\"\ntenant_label_limit = 0\n",
            &[],
        ));
        for key in [
            "telemetry.otlp_endpoint",
            "telemetry.sampling_ratio",
            "telemetry.metrics_export_interval",
            "telemetry.tenant_label_limit",
        ] {
            assert!(e.contains(key), "{key} not named in:\n{e}");
        }
        let e = problems(load("", &[("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")]));
        assert!(
            e.contains("telemetry.otlp_endpoint") && e.contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
            "{e}"
        );
        for bad in ["garbage", "ftp://x/v1/metrics"] {
            let e = problems(load("", &[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", bad)]));
            assert!(e.contains("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"), "{e}");
        }
        let e = problems(load("", &[("OTEL_EXPORTER_OTLP_HEADERS", "garbage")]));
        assert!(e.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{e}");
        let e = problems(load(
            "[telemetry]\notlp_endpoint = \"http://c:4318/v1/traces\"\n",
            &[],
        ));
        assert!(e.contains("drop the trailing /v1/traces"), "{e}");
        let e = problems(load(
            "[telemetry]\notlp_endpoint = \"ftp://u:PASSW0RD@c:4318/\"\n",
            &[],
        ));
        assert!(
            e.contains("telemetry.otlp_endpoint") && !e.contains("PASSW0RD"),
            "{e}"
        );
        let e = problems(load(
            "[telemetry]\notlp_headers = \"authorization Bearer hunter2\"\n",
            &[],
        ));
        assert!(
            e.contains("telemetry.otlp_headers") && !e.contains("hunter2"),
            "{e}"
        );
    }

    #[test]
    fn headers_parse_like_otel_exporter_otlp_headers() {
        assert_eq!(
            parse_headers("Authorization=Bearer%20k1, x-scope = a ,").expect("valid"),
            vec![
                ("authorization".to_owned(), "Bearer k1".to_owned()),
                ("x-scope".to_owned(), "a".to_owned())
            ]
        );
        let e = parse_headers("authorization").expect_err("no =");
        assert!(e.contains("entry 1"), "{e}");
        let e = parse_headers("ok=1,bad name=secretvalue").expect_err("bad name");
        assert!(e.contains("entry 2") && !e.contains("secretvalue"), "{e}");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%41%zz"), "A%zz");
    }
}
