//! The admin API over HTTP: where it is, which key to send, one request, and
//! every page of a listing.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use botfleet_auth::Secret;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, ETAG, IF_MATCH,
};
use reqwest::Method;
use serde_json::Value;
use url::Url;

use super::error::{ApiError, CliError, Problem};

/// Path of the admin API under the listener's address.
const API_PATH: &str = "/admin/v1";
/// Header the admin API echoes and records in its audit log.
const REQUEST_ID: &str = "x-request-id";

/// Where the API key came from, named in errors instead of the key.
#[derive(Debug, Clone)]
pub enum KeySource {
    Flag,
    FlagFile(PathBuf),
    Env,
    EnvFile(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Flag => f.write_str("--key"),
            Self::FlagFile(p) => write!(f, "--key-file {}", p.display()),
            Self::Env => f.write_str("BOTFLEET_KEY"),
            Self::EnvFile(p) => write!(f, "BOTFLEET_KEY_FILE ({})", p.display()),
        }
    }
}

/// What the command line and environment say about the key.
#[derive(Debug, Default)]
pub struct KeyInputs {
    /// `--key` (the value).
    pub flag: Option<Secret>,
    /// `--key-file`.
    pub flag_file: Option<PathBuf>,
    /// `BOTFLEET_KEY` (empty counts as unset).
    pub env: Option<Secret>,
    /// `BOTFLEET_KEY_FILE` (empty counts as unset).
    pub env_file: Option<PathBuf>,
}

impl KeyInputs {
    /// The process's `BOTFLEET_KEY` / `BOTFLEET_KEY_FILE` beside the flags.
    pub fn from_env(flag: Option<String>, flag_file: Option<PathBuf>) -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        Self {
            flag: flag.map(Secret::new),
            flag_file,
            env: var("BOTFLEET_KEY").map(|v| Secret::new(v.to_string_lossy().into_owned())),
            env_file: var("BOTFLEET_KEY_FILE").map(PathBuf::from),
        }
    }

    /// The key to send: flags before environment; two sources at the same
    /// level are refused rather than one silently chosen.
    pub fn resolve(self) -> Result<(Secret, KeySource), CliError> {
        let (key, source) = match (self.flag, self.flag_file, self.env, self.env_file) {
            (Some(_), Some(_), _, _) => {
                return Err(CliError::Usage(
                    "give either --key or --key-file, not both".into(),
                ))
            }
            (Some(k), None, _, _) => (k, KeySource::Flag),
            (None, Some(p), _, _) => (read_key_file(&p)?, KeySource::FlagFile(p)),
            (None, None, Some(_), Some(_)) => {
                return Err(CliError::Usage(
                    "both BOTFLEET_KEY and BOTFLEET_KEY_FILE are set; unset one (or pass --key-file)"
                        .into(),
                ))
            }
            (None, None, Some(k), None) => (k, KeySource::Env),
            (None, None, None, Some(p)) => (read_key_file(&p)?, KeySource::EnvFile(p)),
            (None, None, None, None) => {
                return Err(CliError::Usage(
                    "no API key: pass --key-file FILE or set BOTFLEET_KEY (an admin API key, or the bootstrap key of the configuration)"
                        .into(),
                ))
            }
        };
        let trimmed = key.expose().trim();
        if trimmed.is_empty() {
            return Err(CliError::Usage(format!(
                "the API key from {source} is empty"
            )));
        }
        // Said without the key: a header cannot carry it, so it is not a key.
        if !trimmed.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CliError::Usage(format!(
                "the API key from {source} contains spaces or characters a key never has; an API key looks like bfk_<id>_<secret>"
            )));
        }
        Ok((Secret::new(trimmed), source))
    }
}

/// The key in a file: its first line, surrounding whitespace ignored (`-`:
/// standard input).
fn read_key_file(path: &Path) -> Result<Secret, CliError> {
    let mut text = String::new();
    let read = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    read.map_err(|e| {
        CliError::Usage(format!(
            "cannot read the API key file {}: {e}",
            path.display()
        ))
    })?;
    Ok(Secret::new(text.lines().next().unwrap_or("").trim()))
}

/// The base URL: `http(s)://host[:port]`, optionally ending in `/admin/v1`.
pub fn parse_base_url(raw: &str) -> Result<Url, CliError> {
    // A URL with userinfo is not repeated: it may hold a password.
    let shown = if raw.contains('@') {
        "(not shown: it contains @)".to_string()
    } else {
        format!("`{raw}`")
    };
    let bad = |why: &str| {
        CliError::Usage(format!(
            "--url / BOTFLEET_URL {shown} {why}; give the admin listener like http://127.0.0.1:9090"
        ))
    };
    let mut url = Url::parse(raw.trim()).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("is not http or https"));
    }
    if url.host().is_none() {
        return Err(bad("has no host"));
    }
    // A password in the URL would end up in error messages and shell history.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "carries credentials; pass the key with --key-file or BOTFLEET_KEY",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("has a query or fragment"));
    }
    let path = url.path().trim_end_matches('/');
    let prefix = path.strip_suffix(API_PATH).unwrap_or(path).to_string();
    url.set_path(&format!("{prefix}{API_PATH}"));
    Ok(url)
}

/// True for loopback hosts, where plain http does not expose the key.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A successful answer.
#[derive(Debug)]
pub struct Answer {
    /// The JSON body; `Null` for 204.
    pub body: Value,
    /// The `ETag` header (stored bots).
    pub etag: Option<String>,
}

/// A client of one admin API with one key.
pub struct AdminClient {
    /// `http(s)://host:port[/prefix]/admin/v1`.
    base: Url,
    key: Secret,
    key_source: KeySource,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client of the API at `base` (see [`parse_base_url`]); warnings (plain
    /// http to another host) are returned for the caller to print.
    pub fn new(
        base: Url,
        key: Secret,
        key_source: KeySource,
        timeout: Duration,
    ) -> Result<(Self, Vec<String>), CliError> {
        let mut warnings = Vec::new();
        if base.scheme() == "http" && !is_loopback(&base) {
            warnings.push(format!(
                "warning: the API key goes unencrypted to {}; use https beyond this host",
                base.host_str().unwrap_or("")
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("botfleet-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Usage(format!("cannot set up the HTTP client: {e}")))?;
        Ok((
            Self {
                base,
                key,
                key_source,
                http,
            },
            warnings,
        ))
    }

    /// The URL of `segments` (each percent-encoded as one path segment) with
    /// `query`.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    /// Where the API is, for messages: scheme, host and port.
    pub fn origin(&self) -> String {
        self.base.origin().ascii_serialization()
    }

    /// `GET segments?query`.
    pub async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Answer, CliError> {
        self.send(Method::GET, segments, query, None, None).await
    }

    /// One call. `body` is sent as JSON (`application/merge-patch+json` for
    /// PATCH); `if_match` is the `If-Match` header. Errors: [`CliError::Api`]
    /// for a problem answer, [`CliError::Unreachable`] without an answer,
    /// [`CliError::NotAdminApi`] for an answer that is not the API's.
    pub async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        if_match: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Answer, CliError> {
        self.send_with(method, segments, query, if_match, body, &[])
            .await
    }

    /// [`AdminClient::send`] with extra request headers (`Idempotency-Key`).
    pub async fn send_with(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        if_match: Option<&str>,
        body: Option<&Value>,
        extra: &[(&'static str, String)],
    ) -> Result<Answer, CliError> {
        let url = self.url(segments, query);
        let mut headers = HeaderMap::new();
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", self.key.expose())).map_err(|_| {
                CliError::Usage(format!(
                    "the API key from {} cannot be sent in a header",
                    self.key_source
                ))
            })?;
        // Kept out of reqwest's Debug output and HTTP/2 header compression tables.
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        let request_id = uuid::Uuid::new_v4().to_string();
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            headers.insert(REQUEST_ID, v);
        }
        if let Some(tag) = if_match {
            let v = HeaderValue::from_str(tag)
                .map_err(|_| CliError::Usage(format!("--if-match `{tag}` is not a valid ETag")))?;
            headers.insert(IF_MATCH, v);
        }
        for (name, value) in extra {
            let v = HeaderValue::from_str(value).map_err(|_| {
                CliError::Usage(format!("{name} `{value}` is not a valid header value"))
            })?;
            headers.insert(HeaderName::from_static(name), v);
        }
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .headers(headers);
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body)
                .map_err(|e| CliError::Usage(format!("cannot encode the request: {e}")))?;
            let content_type = if method == Method::PATCH {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            request = request.header(CONTENT_TYPE, content_type).body(bytes);
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status().as_u16();
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let answered_id = response
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        if (200..300).contains(&status) {
            if bytes.is_empty() {
                return Ok(Answer {
                    body: Value::Null,
                    etag,
                });
            }
            let body = serde_json::from_slice(&bytes).map_err(|_| CliError::NotAdminApi {
                url: self.origin(),
                reason: format!("HTTP {status} with a body that is not JSON"),
            })?;
            return Ok(Answer { body, etag });
        }
        let raw: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let problem: Problem = serde_json::from_value(raw.clone()).unwrap_or_default();
        // The admin API names every problem; an answer without `check` (a
        // proxy's page, another server) or a route it does not serve means
        // --url points elsewhere.
        if problem.check.is_none() && status < 500 {
            return Err(CliError::NotAdminApi {
                url: self.origin(),
                reason: format!("HTTP {status} without a botfleet problem document"),
            });
        }
        if problem.check.as_deref() == Some("not_found") {
            return Err(CliError::NotAdminApi {
                url: self.origin(),
                reason: format!("it serves no {method} {}", url.path()),
            });
        }
        let hint = match problem.check.as_deref() {
            Some("api_key_missing" | "api_key_invalid" | "api_key_expired" | "api_key_revoked") => {
                Some(format!("the key came from {}", self.key_source))
            }
            _ => None,
        };
        Err(CliError::Api(Box::new(ApiError {
            status,
            problem,
            raw,
            request_id: answered_id.or(Some(request_id)),
            hint,
        })))
    }

    fn unreachable(&self, e: &reqwest::Error) -> CliError {
        let reason = if e.is_timeout() {
            "no answer in time (--timeout)".to_string()
        } else {
            // The innermost cause says what happened ("Connection refused");
            // reqwest's own message repeats the URL.
            let mut cause: &dyn std::error::Error = e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            cause.to_string()
        };
        CliError::Unreachable {
            url: self.origin(),
            reason: super::error::single_line(&reason),
        }
    }

    /// A listing: one page (`limit`, `next` as given), or with `all` every
    /// page merged into the first one's shape (`items` concatenated, `next`
    /// removed). Returns the document and the cursor of the page after it.
    pub async fn list(
        &self,
        segments: &[&str],
        mut query: Vec<(&str, String)>,
        page: &Paging,
    ) -> Result<(Value, Option<String>), CliError> {
        if let Some(limit) = page.limit {
            query.push(("limit", limit.to_string()));
        }
        let base_len = query.len();
        let mut cursor = page.next.clone();
        let mut merged: Option<Value> = None;
        loop {
            query.truncate(base_len);
            if let Some(c) = &cursor {
                query.push(("next", c.clone()));
            }
            let mut doc = self.get(segments, &query).await?.body;
            let next = doc.get("next").and_then(Value::as_str).map(str::to_string);
            let items = match doc.get_mut("items").map(Value::take) {
                Some(Value::Array(items)) => items,
                _ => {
                    return Err(CliError::NotAdminApi {
                        url: self.origin(),
                        reason: "a listing without `items`".into(),
                    })
                }
            };
            match &mut merged {
                None => {
                    doc["items"] = Value::Array(items);
                    merged = Some(doc);
                }
                Some(m) => {
                    if let Some(Value::Array(all)) = m.get_mut("items") {
                        all.extend(items);
                    }
                }
            }
            if !page.all || next.is_none() {
                let mut doc = merged.unwrap_or(Value::Null);
                if page.all {
                    if let Some(o) = doc.as_object_mut() {
                        o.remove("next");
                    }
                }
                return Ok((doc, next));
            }
            if next == cursor {
                return Err(CliError::NotAdminApi {
                    url: self.origin(),
                    reason: "a listing that answers the same page forever".into(),
                });
            }
            cursor = next;
        }
    }
}

/// Which part of a listing to fetch.
#[derive(Debug, Clone, Default)]
pub struct Paging {
    /// Items per request (1 to 1000); `None` = the API's default (100).
    pub limit: Option<u32>,
    /// Start after this cursor (a previous page's `next`).
    pub next: Option<String>,
    /// Follow `next` to the end.
    pub all: bool,
}

impl Paging {
    /// Every page, 1000 per request: for collections read whole (bots, keys,
    /// tenants).
    pub fn everything() -> Self {
        Self {
            limit: Some(1000),
            next: None,
            all: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        for (raw, want) in [
            ("http://127.0.0.1:9090", "http://127.0.0.1:9090/admin/v1"),
            ("http://127.0.0.1:9090/", "http://127.0.0.1:9090/admin/v1"),
            ("http://h:9090/admin/v1", "http://h:9090/admin/v1"),
            ("http://h:9090/admin/v1/", "http://h:9090/admin/v1"),
            ("https://h/botfleet", "https://h/botfleet/admin/v1"),
        ] {
            assert_eq!(parse_base_url(raw).expect(raw).as_str(), want);
        }
        for raw in [
            "127.0.0.1:9090",
            "ftp://h",
            "http://user:pw@h:9090",
            "http://h/?x=1",
            "not a url",
        ] {
            let e = parse_base_url(raw).expect_err(raw);
            assert!(matches!(e, CliError::Usage(_)), "{raw}");
            assert!(!e.to_string().contains("pw@"), "{e}");
        }
    }

    #[test]
    fn url_segments_are_encoded() {
        let (c, _) = AdminClient::new(
            parse_base_url("http://127.0.0.1:9090").expect("url"),
            Secret::new("k"),
            KeySource::Flag,
            Duration::from_secs(1),
        )
        .expect("client");
        assert_eq!(
            c.url(&["bots", "a/b?c"], &[("tenant", "t&u".into())])
                .as_str(),
            "http://127.0.0.1:9090/admin/v1/bots/a%2Fb%3Fc?tenant=t%26u"
        );
    }

    #[test]
    fn key_sources_and_their_precedence() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("key");
        std::fs::write(&file, "bfk_abcdefgh_secret\n").expect("write");
        let resolve = |i: KeyInputs| {
            i.resolve()
                .map(|(k, s)| (k.expose().to_string(), s.to_string()))
        };

        let got = resolve(KeyInputs {
            flag_file: Some(file.clone()),
            env: Some(Secret::new("from-env")),
            ..KeyInputs::default()
        })
        .expect("file");
        assert_eq!(got.0, "bfk_abcdefgh_secret");
        assert!(got.1.starts_with("--key-file"));

        let got = resolve(KeyInputs {
            env: Some(Secret::new("  from-env\n")),
            ..KeyInputs::default()
        })
        .expect("env");
        assert_eq!(got, ("from-env".into(), "BOTFLEET_KEY".into()));

        for inputs in [
            KeyInputs::default(),
            KeyInputs {
                flag: Some(Secret::new("a")),
                flag_file: Some(file.clone()),
                ..KeyInputs::default()
            },
            KeyInputs {
                env: Some(Secret::new("a")),
                env_file: Some(file.clone()),
                ..KeyInputs::default()
            },
            KeyInputs {
                flag_file: Some(dir.path().join("missing")),
                ..KeyInputs::default()
            },
        ] {
            assert!(matches!(resolve(inputs), Err(CliError::Usage(_))));
        }
        // A malformed key is refused without being repeated.
        let e = resolve(KeyInputs {
            flag: Some(Secret::new("two words-SECRETPART")),
            ..KeyInputs::default()
        })
        .expect_err("spaces");
        assert!(!e.to_string().contains("SECRETPART"), "{e}");
    }
}
