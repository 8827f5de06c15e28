//! Why an admin CLI command failed, and the exit code scripts see for it.
//!
//! Every error prints as one line a user can act on. None ever holds the API
//! key (it is not even in scope where errors are built) or a secret of a
//! registration.

use serde::Deserialize;
use serde_json::Value;

/// Exit codes of the admin commands (also in `--help` and docs/admin-api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Ok = 0,
    /// 1: the admin API refused the call (a 4xx other than a missing bot or
    /// key: invalid input, wrong or expired key, no permission, stale ETag,
    /// conflict, rate-limited).
    Refused = 1,
    /// 2: usage or configuration error, found before anything was sent (bad
    /// flag, unreadable file, no key, invalid URL).
    Usage = 2,
    /// 3: the admin API could not be reached or failed: connection refused,
    /// timeout, a 5xx, or an answer that is not the admin API's.
    Unavailable = 3,
    /// 4: the bot or key named does not exist (404 `bot_not_found`,
    /// `key_not_found`).
    NotFound = 4,
    /// 5: `botfleet notify` finished and some targets failed (listed by reason).
    TargetsFailed = 5,
}

/// The `Exit` table as `--help` shows it.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  done
  1  the admin API refused the call (4xx: invalid input, wrong/expired/revoked key,
     no permission, stale ETag, conflict); its problem title, detail and type are printed
  2  usage or configuration error, nothing sent (bad flag, unreadable file, no key, bad URL)
  3  the admin API cannot be reached or failed (connection refused, timeout, 5xx,
     an answer that is not the admin API's)
  4  not found: the bot, key or notification named does not exist (404)
  5  notify: the job finished and some targets failed (printed by reason)";

/// The members of an RFC 7807 problem document the CLI prints, as the admin
/// API answers them (`{"type", "title", "status", "detail", "check", ...}`;
/// docs/admin-api.md, Errors). The detail already names the field at fault or
/// the current ETag; `--json` prints the whole document. Every member is
/// optional so a proxy's or another server's problem still reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: Option<String>,
    pub title: Option<String>,
    pub detail: Option<String>,
    /// The stable name (`api_key_invalid`, `precondition_failed`, ...).
    pub check: Option<String>,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags or configuration, found before sending anything.
    #[error("{0}")]
    Usage(String),
    /// Refused before sending, from what the API answered to a read (e.g.
    /// changing a bot of the configuration file).
    #[error("{0}")]
    Refused(String),
    /// No connection or no answer in time.
    #[error("cannot reach the admin API at {url}: {reason}; is `botfleet serve` running with its admin listener there? (--url / BOTFLEET_URL, default http://127.0.0.1:9090)")]
    Unreachable { url: String, reason: String },
    /// An answer that is not the admin API's (not JSON, a route it does not
    /// serve): usually `--url` names another server or listener.
    #[error("{url} did not answer as the botfleet admin API ({reason}); is --url the admin listener ([server] admin_listen), not the messaging endpoint?")]
    NotAdminApi { url: String, reason: String },
    /// A problem answer (4xx or 5xx).
    #[error("{0}")]
    Api(Box<ApiError>),
    /// A notification job ended with failed targets (the summary names them by reason).
    #[error("{0}")]
    TargetsFailed(String),
}

/// A problem answer of the admin API (boxed in [`CliError`]: it is large).
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub problem: Problem,
    /// The problem document as received, for `--json`.
    pub raw: Value,
    pub request_id: Option<String>,
    /// What to do next, in the CLI's terms (the API's detail speaks HTTP).
    pub hint: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&api_line(
            &self.status,
            &self.problem,
            self.request_id.as_deref(),
            self.hint.as_deref(),
        ))
    }
}

fn api_line(status: &u16, p: &Problem, request_id: Option<&str>, hint: Option<&str>) -> String {
    let title = p.title.as_deref().unwrap_or("the server failed");
    let mut line = format!("{title} (HTTP {status})");
    if let Some(detail) = p.detail.as_deref().filter(|d| !d.is_empty()) {
        line.push_str(": ");
        line.push_str(detail);
    }
    if let Some(t) = &p.type_uri {
        line.push_str(&format!(" [{t}]"));
    }
    if *status >= 500 {
        if let Some(id) = request_id {
            line.push_str(&format!(" (request id {id})"));
        }
    }
    if let Some(h) = hint {
        line.push_str("; ");
        line.push_str(h);
    }
    single_line(&line)
}

/// Control characters (newlines included) as spaces: an error is one line,
/// and a server's text cannot move the cursor of the terminal it lands on.
pub(crate) fn single_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl CliError {
    /// The exit code of this error.
    pub fn exit(&self) -> Exit {
        match self {
            Self::Usage(_) => Exit::Usage,
            Self::Refused(_) => Exit::Refused,
            Self::Unreachable { .. } | Self::NotAdminApi { .. } => Exit::Unavailable,
            Self::Api(e) if e.status >= 500 => Exit::Unavailable,
            Self::Api(e) if e.status == 404 => Exit::NotFound,
            Self::Api(_) => Exit::Refused,
            Self::TargetsFailed(_) => Exit::TargetsFailed,
        }
    }

    /// The problem's stable name, when the API answered one.
    pub fn check(&self) -> Option<&str> {
        match self {
            Self::Api(e) => e.problem.check.as_deref(),
            _ => None,
        }
    }

    /// Adds (or replaces) the CLI's advice on an API error.
    pub fn with_hint(mut self, text: impl Into<String>) -> Self {
        if let Self::Api(e) = &mut self {
            e.hint = Some(text.into());
        }
        self
    }

    /// The problem document to print on stdout under `--json`.
    pub fn json(&self) -> Option<&Value> {
        match self {
            Self::Api(e) if e.raw.is_object() => Some(&e.raw),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, check: &str) -> CliError {
        CliError::Api(Box::new(ApiError {
            status,
            problem: Problem {
                type_uri: Some(format!("urn:botfleet:problem:{check}")),
                title: Some("Title".into()),
                detail: Some("what\nhappened".into()),
                check: Some(check.into()),
            },
            raw: Value::Null,
            request_id: Some("r-1".into()),
            hint: None,
        }))
    }

    #[test]
    fn exit_codes_follow_the_documented_table() {
        assert_eq!(api(400, "invalid_field").exit(), Exit::Refused);
        assert_eq!(api(401, "api_key_invalid").exit(), Exit::Refused);
        assert_eq!(api(412, "precondition_failed").exit(), Exit::Refused);
        assert_eq!(api(404, "bot_not_found").exit(), Exit::NotFound);
        assert_eq!(api(500, "internal").exit(), Exit::Unavailable);
        assert_eq!(
            api(503, "admin_store_unavailable").exit(),
            Exit::Unavailable
        );
        assert_eq!(CliError::Usage("x".into()).exit(), Exit::Usage);
        assert_eq!(
            CliError::Unreachable {
                url: "u".into(),
                reason: "r".into()
            }
            .exit(),
            Exit::Unavailable
        );
        for (exit, code) in [
            (Exit::Ok, "0"),
            (Exit::Refused, "1"),
            (Exit::Usage, "2"),
            (Exit::Unavailable, "3"),
            (Exit::NotFound, "4"),
        ] {
            assert!(
                EXIT_CODES_HELP.contains(&format!("\n  {code}  ")),
                "{exit:?} is documented"
            );
            assert_eq!((exit as u8).to_string(), code);
        }
    }

    #[test]
    fn api_errors_are_one_line_with_title_detail_type() {
        let line = api(412, "precondition_failed")
            .with_hint("run it again")
            .to_string();
        assert_eq!(
            line,
            "Title (HTTP 412): what happened [urn:botfleet:problem:precondition_failed]; run it again"
        );
        // 5xx: the request id, so the server's log can be searched.
        assert!(api(500, "internal")
            .to_string()
            .contains("(request id r-1)"));
    }
}
