//! `botfleet-sim load`: closed-loop load on a bot endpoint with signed activities.
//!
//! Each of `--connections` tokio tasks keeps exactly one request in flight (like
//! wrk), over a reqwest pool sized to the connection count. Bodies are built
//! before the run and only get a fresh activity id spliced in per request, so the
//! generator stays cheap next to the server it measures (they share the cores).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Value};

use super::activities::{build_activity, ActivityParams, ConversationSpec, Mix};
use super::duration::parse_duration;
use super::sim_api::{ConversationRegistration, Member, SimApi, TokenRequest};
use super::ClientError;

const LOAD_AFTER_HELP: &str = "\
Closed loop: each connection keeps one request in flight. Conversations are registered with the sim \
and tokens minted by it first; request bodies are built before the run.
Prints requests/s, latency p50/p90/p99/max (HDR histogram, microseconds), answers by status, errors \
(non-2xx and timeout/connect/io), and what the sim's Bot Connector accepted or throttled meanwhile \
(Teams' limits: 50/s per app per tenant, 7/s per conversation; raise --tenants/--conversations \
for fast bots).
Exit code: 0 when at least one request got a 2xx answer, 1 when none did, 2 on usage or setup errors.";

/// Drive a bot endpoint with signed Teams activities and measure it. Closed loop:
/// each connection keeps one request in flight, so throughput is what the bot
/// sustains at that concurrency. Conversations are registered with the sim first
/// and tokens are minted by it, so the bot's replies are accepted by the sim's
/// Bot Connector. Prints requests/s, latency p50/p90/p99/max (HDR histogram,
/// microsecond resolution) and errors by HTTP status and transport failure.
/// Exits 0 when the run completed with at least one 2xx answer, 1 when no request
/// succeeded, 2 on usage or setup errors.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = LOAD_AFTER_HELP)]
pub struct LoadArgs {
    /// The bot's messaging endpoint, e.g. http://127.0.0.1:3978/api/messages.
    #[arg(long, value_name = "URL")]
    pub to: String,

    /// The running botfleet-sim (the `url` of its ready line).
    #[arg(long, value_name = "URL", env = "BOTFLEET_SIM_URL")]
    pub sim: String,

    /// The bot's Microsoft App ID (token audience, recipient `28:<id>`).
    #[arg(long, value_name = "ID")]
    pub app_id: String,

    /// Concurrent connections, each with one request in flight.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,

    /// How long to measure (after the warm-up), e.g. 15s, 2m [default: 15s].
    #[arg(long, value_parser = parse_duration, conflicts_with = "count", value_name = "DURATION")]
    pub duration: Option<Duration>,

    /// Measure exactly this many requests instead of a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub count: Option<u64>,

    /// Load the bot this long before measuring (connections, caches, JIT warm up);
    /// nothing sent during the warm-up is counted.
    #[arg(long, default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub warmup: Duration,

    /// Distinct conversations the activities cycle through (every fifth one a team
    /// channel, the others personal chats).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub conversations: u32,

    /// Distinct tenants the conversations are spread over.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub tenants: u32,

    /// Rotate N distinct tokens (defeats a bot's validated-token cache); 0 = one
    /// token reused for every request, as Teams does for about an hour.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub fresh_tokens: usize,

    /// Activity types and relative weights, e.g. `message=90,invoke=10` or
    /// `message`. Types: message, conversationUpdate-bot-added,
    /// conversationUpdate-bot-removed, installationUpdate-add,
    /// installationUpdate-remove, invoke, messageReaction.
    #[arg(long, default_value_t = Mix::default(), value_name = "TYPE=WEIGHT,...")]
    pub mix: Mix,

    /// The activities' serviceUrl [default: {sim}/amer/].
    #[arg(long, value_name = "URL")]
    pub service_url: Option<String>,

    /// A request taking longer than this counts as a `timeout` error.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// Also print the summary as one JSON line (last line of stdout).
    #[arg(long)]
    pub json: bool,
}

/// Latencies are recorded in microseconds up to this (1 h), 3 significant digits.
const HIST_MAX_US: u64 = 3_600_000_000;
/// Upper bound on pre-built bodies (~1-2 KiB each), so large runs stay small in memory.
const MAX_TEMPLATES: usize = 20_000;
/// The activity id in the templates, replaced per request.
const ID_MARKER: &str = "@@botfleet-sim-activity-id@@";

/// A pre-built request body with a hole for the activity id.
struct Template {
    prefix: Vec<u8>,
    suffix: Vec<u8>,
}

impl Template {
    fn body(&self, id_prefix: &str, seq: u64) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.prefix.len() + self.suffix.len() + 32);
        body.extend_from_slice(&self.prefix);
        // Writing into a Vec cannot fail.
        let _ = write!(body, "{id_prefix}{seq:06}");
        body.extend_from_slice(&self.suffix);
        body
    }
}

/// What every worker shares.
struct Plan {
    http: reqwest::Client,
    to: reqwest::Url,
    templates: Vec<Template>,
    tokens: Vec<HeaderValue>,
    id_prefix: String,
    measure_start: Instant,
    /// Duration mode: no request starts after this.
    end: Option<Instant>,
    /// Count mode: how many measured requests to send.
    count: Option<u64>,
    seq: AtomicU64,
    measured_issued: AtomicU64,
}

/// One worker's tally, merged into the [`Summary`] at the end.
struct Tally {
    histogram: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    transport: BTreeMap<&'static str, u64>,
    last_done: Option<Instant>,
}

fn new_histogram() -> Histogram<u64> {
    // Bounds and precision are constants within hdrhistogram's limits (low >= 1,
    // high >= 2 * low, sigfig <= 5), so this cannot fail.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Runs `botfleet-sim load`. The summary is printed on stdout.
pub async fn run(args: LoadArgs) -> Result<(), ClientError> {
    let to = super::parse_http_url("--to", &args.to)?;
    let service_url = match &args.service_url {
        Some(url) => {
            super::parse_http_url("--service-url", url)?;
            url.clone()
        }
        None => super::default_service_url(&args.sim),
    };
    let connections = args.connections as usize;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(args.timeout)
        .build()
        .map_err(ClientError::HttpClient)?;
    // Setup calls to the sim get their own client: its connections must not count
    // against the pool sized for the bot.
    let sim_http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(ClientError::HttpClient)?;
    let sim = SimApi::new(&args.sim, sim_http)?;

    let conversations: Vec<ConversationSpec> = (0..args.conversations as usize)
        .map(|i| ConversationSpec::for_load(i, args.tenants as usize))
        .collect();
    let registrations: Vec<ConversationRegistration> = conversations
        .iter()
        .map(|c| ConversationRegistration {
            id: c.id.clone(),
            tenant_id: c.tenant_id.clone(),
            members: vec![Member {
                id: c.user_id.clone(),
            }],
        })
        .collect();
    sim.register_conversations(&registrations).await?;

    let token_count = args.fresh_tokens.max(1);
    let tokens = sim
        .tokens(&TokenRequest {
            app_id: args.app_id.clone(),
            service_url: service_url.clone(),
            count: token_count,
            ..TokenRequest::default()
        })
        .await?;
    let tokens = tokens
        .iter()
        .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::SimRejected {
            what: "minting tokens",
            url: args.sim.clone(),
            status: 200,
            body: format!("a token is not a valid header value: {e}"),
        })?;

    let templates = build_templates(&args.mix, &conversations, &args.app_id, &service_url)?;
    let started_ms = crate::time::now_ms();

    let duration = args.duration.unwrap_or(Duration::from_secs(15));
    let setting = RunSetting {
        to: args.to.clone(),
        connections: args.connections,
        measure: match args.count {
            Some(n) => format!("{n} requests"),
            None => format!("{:.1} s", duration.as_secs_f64()),
        },
        warmup: args.warmup,
        tokens: if args.fresh_tokens == 0 {
            "1 token reused".to_owned()
        } else {
            format!("{} tokens rotated", tokens.len())
        },
        conversations: args.conversations,
        tenants: args.tenants,
        mix: args.mix.to_string(),
    };
    eprintln!(
        "botfleet-sim load: warming up {:.1} s, then measuring {} on {} connections",
        args.warmup.as_secs_f64(),
        setting.measure,
        connections
    );

    let now = Instant::now();
    let measure_start = now + args.warmup;
    let plan = Arc::new(Plan {
        http,
        to,
        templates,
        tokens,
        id_prefix: started_ms.to_string(),
        measure_start,
        end: match args.count {
            Some(_) => None,
            None => Some(measure_start + duration),
        },
        count: args.count,
        seq: AtomicU64::new(0),
        measured_issued: AtomicU64::new(0),
    });

    let workers: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(worker(Arc::clone(&plan))))
        .collect();
    // The sim's counters when measurement starts, to report what the bot sent
    // to the connector during the measured window (a 200 from a bot does not
    // prove that its reply went out).
    let stats_before = {
        let sim = sim.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(measure_start)).await;
            sim.stats().await
        })
    };
    let mut summary = Summary::new();
    let mut last_done = None;
    for result in futures::future::join_all(workers).await {
        let tally = result.map_err(|e| ClientError::Worker(e.to_string()))?;
        summary.merge(&tally);
        last_done = last_done.max(tally.last_done);
    }
    summary.elapsed = last_done
        .map(|t| t.saturating_duration_since(measure_start))
        .unwrap_or_default();
    let stats_before = stats_before
        .await
        .map_err(|e| ClientError::Worker(e.to_string()))?;
    summary.connector = match (stats_before, sim.stats().await) {
        (Ok(before), Ok(after)) => Some(ConnectorDelta::between(&before, &after)),
        // Informational only: the bot's figures stand without it.
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("botfleet-sim load: cannot read the sim's stats: {e}");
            None
        }
    };

    print!("{}", summary.render_text(&setting));
    if args.json {
        println!("{}", summary.to_json(&setting));
    }
    if summary.ok() == 0 {
        return Err(ClientError::NothingSucceeded { url: args.to });
    }
    Ok(())
}

/// Bodies for the run: template `t` talks in conversation `t % conversations`
/// and has the kind the mix gives it, shifted per round of conversations so that
/// every conversation sees every kind, not always the same one.
fn build_templates(
    mix: &Mix,
    conversations: &[ConversationSpec],
    app_id: &str,
    service_url: &str,
) -> Result<Vec<Template>, ClientError> {
    let cycle = mix.cycle();
    let n_conv = conversations.len().max(1);
    let wanted = n_conv.saturating_mul(cycle.len());
    let count = wanted.min(MAX_TEMPLATES.max(n_conv));
    let timestamp = crate::time::rfc3339(crate::time::now_ms());
    let mut templates = Vec::with_capacity(count);
    for t in 0..count {
        let kind = cycle[(t + t / n_conv) % cycle.len()];
        let activity = build_activity(&ActivityParams {
            kind,
            app_id,
            service_url,
            conversation: &conversations[t % n_conv],
            text: &format!("hello bench {t}"),
            activity_id: ID_MARKER,
            timestamp: &timestamp,
        });
        let text =
            serde_json::to_string(&activity).map_err(|e| ClientError::Usage(e.to_string()))?;
        let Some((prefix, suffix)) = text.split_once(ID_MARKER) else {
            return Err(ClientError::Usage(
                "internal: the activity id marker is missing from a template".to_owned(),
            ));
        };
        templates.push(Template {
            prefix: prefix.as_bytes().to_vec(),
            suffix: suffix.as_bytes().to_vec(),
        });
    }
    Ok(templates)
}

async fn worker(plan: Arc<Plan>) -> Tally {
    let mut tally = Tally {
        histogram: new_histogram(),
        statuses: BTreeMap::new(),
        transport: BTreeMap::new(),
        last_done: None,
    };
    loop {
        let start = Instant::now();
        if plan.end.is_some_and(|end| start >= end) {
            break;
        }
        let measured = start >= plan.measure_start;
        if measured {
            if let Some(count) = plan.count {
                if plan.measured_issued.fetch_add(1, Ordering::Relaxed) >= count {
                    break;
                }
            }
        }
        let seq = plan.seq.fetch_add(1, Ordering::Relaxed);
        // Both lists are non-empty (checked when built); `get` keeps it panic-free.
        let n_templates = plan.templates.len() as u64;
        let n_tokens = plan.tokens.len() as u64;
        let (Some(template), Some(token)) = (
            plan.templates.get((seq % n_templates.max(1)) as usize),
            plan.tokens.get((seq % n_tokens.max(1)) as usize),
        ) else {
            break;
        };
        let body = template.body(&plan.id_prefix, seq);
        let outcome = plan
            .http
            .post(plan.to.clone())
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            )
            .header(AUTHORIZATION, token.clone())
            .body(body)
            .send()
            .await;
        // Read the whole answer: the latency is until the bot finished answering,
        // and the connection can only be reused once the body is consumed.
        let outcome = match outcome {
            Ok(response) => {
                let status = response.status().as_u16();
                response.bytes().await.map(|_| status)
            }
            Err(e) => Err(e),
        };
        let done = Instant::now();
        if !measured {
            continue;
        }
        match outcome {
            Ok(status) => {
                let micros =
                    u64::try_from(done.duration_since(start).as_micros()).unwrap_or(u64::MAX);
                tally.histogram.saturating_record(micros.max(1));
                *tally.statuses.entry(status).or_default() += 1;
            }
            Err(e) => *tally.transport.entry(transport_kind(&e)).or_default() += 1,
        }
        tally.last_done = Some(done);
    }
    tally
}

/// A short name for a failed request: `timeout`, `connect` or `io`.
fn transport_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "io"
    }
}

/// How the run was set up, for the report.
#[derive(Debug, Clone)]
struct RunSetting {
    to: String,
    connections: u32,
    measure: String,
    warmup: Duration,
    tokens: String,
    conversations: u32,
    tenants: u32,
    mix: String,
}

/// What the sim's Bot Connector saw during the measured window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectorDelta {
    /// Calls it answered 2xx (the bot's replies and sends).
    pub accepted: u64,
    /// Calls it answered 429 (Teams rate limits, or injected throttling).
    pub throttled: u64,
    /// Every other refusal (bad token, unknown conversation, injected faults).
    pub refused: u64,
}

impl ConnectorDelta {
    /// The difference of two `GET /_sim/stats` answers.
    pub fn between(before: &Value, after: &Value) -> Self {
        // The counters sit under `stats`; also accepted at the top level.
        let count = |v: &Value, pointer: &str| {
            v.pointer(&format!("/stats{pointer}"))
                .or_else(|| v.pointer(pointer))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let delta = |pointer: &str| count(after, pointer).saturating_sub(count(before, pointer));
        let requests = delta("/connectorRequests");
        let accepted = delta("/connectorOk");
        let throttled = delta("/byStatus/429");
        ConnectorDelta {
            accepted,
            throttled,
            refused: requests.saturating_sub(accepted).saturating_sub(throttled),
        }
    }
}

/// The measured results of a run.
pub struct Summary {
    /// From the start of measurement to the last measured answer.
    pub elapsed: Duration,
    /// Latency of every answered request (any status), microseconds.
    pub histogram: Histogram<u64>,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer: `timeout`, `connect`, `io`.
    pub transport: BTreeMap<&'static str, u64>,
    /// The sim's Bot Connector over the same window, when its stats could be read.
    pub connector: Option<ConnectorDelta>,
}

impl Default for Summary {
    fn default() -> Self {
        Self::new()
    }
}

impl Summary {
    pub fn new() -> Self {
        Summary {
            elapsed: Duration::ZERO,
            histogram: new_histogram(),
            statuses: BTreeMap::new(),
            transport: BTreeMap::new(),
            connector: None,
        }
    }

    fn merge(&mut self, tally: &Tally) {
        // Same bounds on both sides, so adding cannot fail; saturate if it did.
        if self.histogram.add(&tally.histogram).is_err() {
            for v in tally.histogram.iter_recorded() {
                self.histogram
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
        for (status, n) in &tally.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        for (kind, n) in &tally.transport {
            *self.transport.entry(kind).or_default() += n;
        }
    }

    /// Requests the bot answered, whatever the status.
    pub fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }

    /// Requests answered with 2xx.
    pub fn ok(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    /// Non-2xx answers plus requests that got no answer.
    pub fn errors(&self) -> u64 {
        self.answered() - self.ok() + self.transport.values().sum::<u64>()
    }

    /// Answered requests per second of measured time.
    pub fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.answered() as f64 / secs
        } else {
            0.0
        }
    }

    /// The latency at quantile `q` (0..=1) in milliseconds; 0 when nothing was answered.
    pub fn latency_ms(&self, q: f64) -> f64 {
        if self.histogram.is_empty() {
            return 0.0;
        }
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }

    fn error_breakdown(&self) -> String {
        let parts: Vec<String> = self
            .statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(s, n)| format!("{s}={n}"))
            .chain(self.transport.iter().map(|(k, n)| format!("{k}={n}")))
            .collect();
        parts.join(" ")
    }

    fn render_text(&self, s: &RunSetting) -> String {
        let max_ms = if self.histogram.is_empty() {
            0.0
        } else {
            self.histogram.max() as f64 / 1000.0
        };
        let mean_ms = if self.histogram.is_empty() {
            0.0
        } else {
            self.histogram.mean() / 1000.0
        };
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect();
        let errors = match self.errors() {
            0 => "0".to_owned(),
            n => format!("{n}   ({})", self.error_breakdown()),
        };
        let connector = match self.connector {
            Some(c) => format!(
                "{} calls accepted, {} throttled (429), {} refused",
                c.accepted, c.throttled, c.refused
            ),
            None => "unknown (the sim's stats could not be read)".to_owned(),
        };
        let hint = match self.connector {
            Some(c) if c.throttled > 0 => {
                "note         : Teams' rate limits throttled the bot (50/s per app per tenant, \
                 7/s per conversation); use more --tenants and --conversations to measure \
                 the bot, not the limits\n"
            }
            _ => "",
        };
        format!(
            "== botfleet-sim load -> {} | {} connections, {} (+{:.1} s warm-up), {} | {} conversations in {} tenants | mix {}\n\
             requests/s   : {:.1}   ({} answered in {:.2} s)\n\
             latency      : p50 {:.2} ms | p90 {:.2} ms | p99 {:.2} ms | max {:.2} ms   (mean {:.2} ms)\n\
             answers      : {}\n\
             errors       : {}\n\
             sim connector: {}\n{}",
            s.to,
            s.connections,
            s.measure,
            s.warmup.as_secs_f64(),
            s.tokens,
            s.conversations,
            s.tenants,
            s.mix,
            self.rps(),
            self.answered(),
            self.elapsed.as_secs_f64(),
            self.latency_ms(0.50),
            self.latency_ms(0.90),
            self.latency_ms(0.99),
            max_ms,
            mean_ms,
            if statuses.is_empty() { "none".to_owned() } else { statuses.join(" ") },
            errors,
            connector,
            hint,
        )
    }

    fn to_json(&self, s: &RunSetting) -> Value {
        let us = |q: f64| {
            if self.histogram.is_empty() {
                0
            } else {
                self.histogram.value_at_quantile(q)
            }
        };
        let statuses: serde_json::Map<String, Value> = self
            .statuses
            .iter()
            .map(|(s, n)| (s.to_string(), json!(n)))
            .collect();
        let transport: serde_json::Map<String, Value> = self
            .transport
            .iter()
            .map(|(k, n)| ((*k).to_owned(), json!(n)))
            .collect();
        json!({
            "to": s.to,
            "connections": s.connections,
            "measure": s.measure,
            "warmupSecs": s.warmup.as_secs_f64(),
            "tokens": s.tokens,
            "conversations": s.conversations,
            "tenants": s.tenants,
            "mix": s.mix,
            "elapsedSecs": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "answered": self.answered(),
            "ok": self.ok(),
            "rps": (self.rps() * 10.0).round() / 10.0,
            "latencyUs": {
                "mean": self.histogram.mean().round() as u64,
                "p50": us(0.50), "p90": us(0.90), "p99": us(0.99), "p999": us(0.999),
                "max": if self.histogram.is_empty() { 0 } else { self.histogram.max() },
            },
            "statuses": statuses,
            "errors": {"total": self.errors(), "transport": transport},
            "simConnector": self.connector.map(|c| json!({
                "accepted": c.accepted, "throttled": c.throttled, "refused": c.refused,
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::activities::ActivityKind;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn parse(extra: &[&str]) -> Result<LoadArgs, clap::Error> {
        let mut argv = vec![
            "load",
            "--to",
            "http://127.0.0.1:1/api/messages",
            "--sim",
            "http://127.0.0.1:2",
            "--app-id",
            "app",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|c| c.load)
    }

    #[test]
    fn defaults_and_conflicts() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.connections, 32);
        assert_eq!(args.conversations, 100);
        assert_eq!(args.tenants, 10);
        assert_eq!(args.fresh_tokens, 0);
        assert_eq!(args.duration, None);
        assert_eq!(args.warmup, Duration::ZERO);
        assert_eq!(args.mix, Mix::default());
        let args = parse(&["--duration", "2m", "--mix", "message=3,invoke=1"]).unwrap();
        assert_eq!(args.duration, Some(Duration::from_secs(120)));
        assert_eq!(args.mix.to_string(), "message=3,invoke=1");
        assert!(parse(&["--duration", "1s", "--count", "5"]).is_err());
        assert!(parse(&["--connections", "0"]).is_err());
        assert!(parse(&["--mix", "typing"]).is_err());
        assert!(parse(&["--duration", "soon"]).is_err());
    }

    fn setting() -> RunSetting {
        RunSetting {
            to: "http://127.0.0.1:1/api/messages".into(),
            connections: 2,
            measure: "2.0 s".into(),
            warmup: Duration::ZERO,
            tokens: "1 token reused".into(),
            conversations: 3,
            tenants: 1,
            mix: "message=1".into(),
        }
    }

    #[test]
    fn summary_math() {
        let mut a = Tally {
            histogram: new_histogram(),
            statuses: BTreeMap::new(),
            transport: BTreeMap::new(),
            last_done: None,
        };
        // 1..=100 ms, one answer each: p50 = 50 ms, p99 = 99 ms, max = 100 ms.
        for ms in 1..=100u64 {
            a.histogram.record(ms * 1000).unwrap();
        }
        a.statuses.insert(200, 97);
        a.statuses.insert(401, 3);
        let mut b = Tally {
            histogram: new_histogram(),
            statuses: BTreeMap::new(),
            transport: BTreeMap::new(),
            last_done: None,
        };
        b.transport.insert("timeout", 2);
        b.statuses.insert(200, 0);

        let mut summary = Summary::new();
        summary.merge(&a);
        summary.merge(&b);
        summary.elapsed = Duration::from_secs(2);
        assert_eq!(summary.answered(), 100);
        assert_eq!(summary.ok(), 97);
        assert_eq!(summary.errors(), 5);
        assert!((summary.rps() - 50.0).abs() < 1e-9);
        assert!((summary.latency_ms(0.5) - 50.0).abs() < 0.1);
        assert!((summary.latency_ms(0.99) - 99.0).abs() < 0.1);
        assert_eq!(summary.error_breakdown(), "401=3 timeout=2");

        let text = summary.render_text(&setting());
        assert!(
            text.contains("requests/s   : 50.0   (100 answered in 2.00 s)"),
            "{text}"
        );
        assert!(
            text.contains("errors       : 5   (401=3 timeout=2)"),
            "{text}"
        );
        let json = summary.to_json(&setting());
        assert_eq!(json["rps"], 50.0);
        assert_eq!(json["statuses"]["401"], 3);
        assert_eq!(json["errors"]["total"], 5);
        assert_eq!(json["errors"]["transport"]["timeout"], 2);
        assert_eq!(json["latencyUs"]["max"], 100_000 + 31); // HDR bucket of 100 ms, 3 digits
    }

    #[test]
    fn connector_delta_from_stats() {
        let before =
            json!({"connectorRequests": 10, "connectorOk": 8, "byStatus": {"201": 8, "429": 1}});
        let after = json!({"stats": {"connectorRequests": 110, "connectorOk": 100, "byStatus": {"201": 100, "429": 6}}});
        assert_eq!(
            ConnectorDelta::between(&before, &after),
            ConnectorDelta {
                accepted: 92,
                throttled: 5,
                refused: 3
            }
        );
        // Missing or reset counters never underflow.
        assert_eq!(
            ConnectorDelta::between(&after, &json!({})),
            ConnectorDelta::default()
        );
    }

    #[test]
    fn empty_summary_has_no_nan() {
        let summary = Summary::new();
        assert_eq!(summary.rps(), 0.0);
        assert_eq!(summary.latency_ms(0.99), 0.0);
        let text = summary.render_text(&setting());
        assert!(!text.contains("NaN"), "{text}");
        assert!(text.contains("answers      : none"));
    }

    #[test]
    fn templates_splice_unique_ids_and_cover_the_mix() {
        let conversations: Vec<_> = (0..3).map(|i| ConversationSpec::for_load(i, 2)).collect();
        let mix: Mix = "message=2,invoke=1".parse().unwrap();
        let templates =
            build_templates(&mix, &conversations, "app", "http://127.0.0.1:2/amer/").unwrap();
        assert_eq!(templates.len(), 9);
        let mut kinds = BTreeMap::new();
        for (t, template) in templates.iter().enumerate() {
            let body = template.body("1700000000000", t as u64);
            let value: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(value["id"], format!("1700000000000{t:06}"));
            assert_eq!(
                value["conversation"]["id"],
                conversations[t % 3].id.as_str()
            );
            *kinds
                .entry(value["type"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        assert_eq!(kinds["message"], 6);
        assert_eq!(kinds["invoke"], 3);
        // Every conversation gets an invoke somewhere in the cycle.
        let invoked: std::collections::BTreeSet<usize> = (0..9)
            .filter(|t| {
                let v: Value = serde_json::from_slice(&templates[*t].body("", 0)).unwrap();
                v["type"] == ActivityKind::Invoke.name()
            })
            .map(|t| t % 3)
            .collect();
        assert_eq!(invoked.len(), 3);
    }
}
