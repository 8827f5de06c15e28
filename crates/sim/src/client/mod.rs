//! The client half of botfleet-sim: plays Teams' channel service *towards a bot*.
//!
//! - [`send`] (`botfleet-sim send`): posts one activity, signed with a token the
//!   running sim minted, to a bot endpoint, and prints the bot's answer.
//! - [`load`] (`botfleet-sim load`): drives a bot endpoint with signed activities
//!   from many connections and prints throughput, latency percentiles and errors.
//!
//! Both talk to a running `botfleet-sim serve` over its `/_sim/` API (tokens come
//! from it and the conversations get registered there, so the bot's replies are
//! accepted by the sim's Bot Connector). Nothing here signs tokens itself: the
//! client must stay a pure user of the sim, like a test would be.

pub mod activities;
pub mod duration;
pub mod load;
pub mod send;
mod sim_api;

use std::process::ExitCode;

pub use load::LoadArgs;
pub use send::SendArgs;

/// What `send` and `load` can fail with. Messages say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad command-line input that clap could not catch (mix, durations, files).
    #[error("{0}")]
    Usage(String),

    #[error("`{value}` is not a usable {what} URL: {reason}")]
    BadUrl {
        what: &'static str,
        value: String,
        reason: String,
    },

    #[error("cannot read the activity file {path}: {source}")]
    ActivityFile {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("the activity file {path} is not a JSON object: {reason}")]
    ActivityFileJson { path: String, reason: String },

    #[error(
        "cannot reach botfleet-sim at {url}: {}. Is `botfleet-sim serve` running there? \
         Pass the URL from its ready line with --sim",
        describe(.source)
    )]
    SimUnreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("botfleet-sim answered {status} to {what} ({url}): {body}")]
    SimRejected {
        what: &'static str,
        url: String,
        status: u16,
        body: String,
    },

    #[error(
        "cannot reach the bot at {url}: {}. Is the bot running, and is --to its messaging endpoint?",
        describe(.source)
    )]
    BotUnreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("a load worker stopped unexpectedly: {0}")]
    Worker(String),

    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),

    /// `send`: the bot answered, but not with 2xx. The answer was already printed.
    #[error("the bot answered HTTP {status}")]
    BotRejected { status: u16 },

    /// `load`: the run finished but not one request got a 2xx answer, so there is
    /// nothing to measure. The summary was already printed.
    #[error("no request got a 2xx answer from {url}: check --to, --app-id and that the bot trusts this sim (summary above)")]
    NothingSucceeded { url: String },
}

impl ClientError {
    /// Process exit code: 1 when the bot answered but refused (tests assert on it),
    /// 2 for usage, setup and connection errors.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::BotRejected { .. } | ClientError::NothingSucceeded { .. } => 1,
            _ => 2,
        }
    }
}

/// Turns the result of [`send::run`] or [`load::run`] into the process exit code,
/// printing the error on stderr (the bot's answer itself is on stdout already).
pub fn exit_code(result: Result<(), ClientError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("botfleet-sim: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// An error with its causes (`error sending request: ...: Connection refused`):
/// reqwest's own message alone does not say what went wrong.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Checks that `value` is an absolute http(s) URL; `what` names it in the error.
fn parse_http_url(what: &'static str, value: &str) -> Result<url::Url, ClientError> {
    let bad = |reason: String| ClientError::BadUrl {
        what,
        value: value.to_owned(),
        reason,
    };
    let url = url::Url::parse(value).map_err(|e| bad(e.to_string()))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(bad(format!("scheme `{other}` (want http or https)"))),
    }
}

/// The service URL the activities carry when none is given: the sim's connector in
/// the `amer` region, like `https://smba.trafficmanager.net/amer/`.
fn default_service_url(sim: &str) -> String {
    format!("{}/amer/", sim.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_separate_refusals_from_setup_errors() {
        assert_eq!(ClientError::BotRejected { status: 401 }.exit_code(), 1);
        assert_eq!(ClientError::Usage("x".into()).exit_code(), 2);
    }

    #[test]
    fn urls_must_be_http() {
        assert!(parse_http_url("bot", "http://127.0.0.1:1/api/messages").is_ok());
        assert!(parse_http_url("bot", "ftp://x/").is_err());
        assert!(parse_http_url("bot", "127.0.0.1:80").is_err());
        assert_eq!(
            default_service_url("http://127.0.0.1:4100/"),
            "http://127.0.0.1:4100/amer/"
        );
    }
}
