//! Installing the bot's Teams app for a user through Graph, so a proactive
//! notification reaches people who never opened the bot (docs/graph.md,
//! "Reaching users who never talked to the bot"):
//!
//! - `POST /users/{id}/teamwork/installedApps` with
//!   `{"teamsApp@odata.bind": "{graph}/appCatalogs/teamsApps/{teamsAppId}"}`
//!   -> 201 (no body); 409 = already installed, which is fine
//!   (https://learn.microsoft.com/graph/api/userteamwork-post-installedapps);
//! - the installation id from `GET /users/{id}/teamwork/installedApps?$expand=teamsApp&$filter=teamsApp/id eq '{id}'`,
//!   then `GET /users/{id}/teamwork/installedApps/{installationId}/chat` ->
//!   `{"id": "<chat id>"}`, the 1:1 chat of the bot and the user
//!   (https://learn.microsoft.com/graph/api/userscopeteamsappinstallation-get-chat).
//!
//! Installs are limited to [`INSTALLS_PER_SECOND`] per app per tenant (Graph's
//! Teams throttling limit for this API,
//! https://learn.microsoft.com/graph/throttling-limits#microsoft-teams-service-limits)
//! by an [`InstallLimiter`] shared by all callers of a process; a 429 is
//! retried after its `Retry-After` (at most [`MAX_THROTTLED_RETRIES`] times).
//! Application permission: `TeamsAppInstallation.ReadWriteForUser.All` (or the
//! self-only variant `TeamsAppInstallation.ReadWriteSelfForUser.All`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::client::GraphError;

/// Installs per second per app per tenant.
pub const INSTALLS_PER_SECOND: usize = 30;
/// 429 answers retried for one install before giving up.
pub const MAX_THROTTLED_RETRIES: u32 = 5;
/// A `Retry-After` longer than this is capped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// A sliding one-second window per (app, tenant): at most `per_second`
/// requests start in any second. Waiting callers sleep, they do not spin.
pub struct InstallLimiter {
    per_second: usize,
    windows: Mutex<HashMap<(String, String), VecDeque<Instant>>>,
}

impl Default for InstallLimiter {
    fn default() -> Self {
        Self::new(INSTALLS_PER_SECOND)
    }
}

impl InstallLimiter {
    pub fn new(per_second: usize) -> Self {
        Self {
            per_second: per_second.max(1),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until a request for (`app_id`, `tenant`) may start, and counts it.
    pub async fn acquire(&self, app_id: &str, tenant: &str) {
        loop {
            let wait = {
                let mut g = self.windows.lock();
                let w = g.entry((app_id.to_owned(), tenant.to_owned())).or_default();
                let now = Instant::now();
                while w
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
                {
                    w.pop_front();
                }
                if w.len() < self.per_second {
                    w.push_back(now);
                    return;
                }
                w.front()
                    .map(|t| Duration::from_secs(1).saturating_sub(now.duration_since(*t)))
                    .unwrap_or_default()
            };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }
}

/// The outcome of [`AppInstaller::install_and_get_chat`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstalledChat {
    pub user_id: String,
    /// `false` when the app was already installed (Graph answered 409).
    pub newly_installed: bool,
    pub installation_id: String,
    /// The bot's 1:1 chat with the user: a conversation id the bot can send to.
    pub chat_id: String,
}

/// Counters of this process.
#[derive(Debug, Default)]
pub struct InstallCounters {
    pub installed: std::sync::atomic::AtomicU64,
    pub already_installed: std::sync::atomic::AtomicU64,
    pub throttled: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
}

/// installedApps calls for one Graph base URL.
pub struct AppInstaller {
    http: reqwest::Client,
    base: String,
    limiter: std::sync::Arc<InstallLimiter>,
    counters: InstallCounters,
}

impl AppInstaller {
    /// `base` is the Graph v1.0 URL (`https://graph.microsoft.com/v1.0`); one
    /// `limiter` per process, shared by every installer of the same apps.
    pub fn new(http: reqwest::Client, base: &str, limiter: std::sync::Arc<InstallLimiter>) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            limiter,
            counters: InstallCounters::default(),
        }
    }

    pub fn counters(&self) -> &InstallCounters {
        &self.counters
    }

    fn user_url(&self, user_id: &str, rest: &str) -> String {
        format!(
            "{}/users/{}/teamwork/installedApps{rest}",
            self.base,
            enc(user_id)
        )
    }

    /// Installs `teams_app_id` for `user_id` in `tenant` with an app token of
    /// that tenant: `Ok(true)` when installed now, `Ok(false)` when it already
    /// was (409). A 429 waits `Retry-After` and tries again, at most
    /// [`MAX_THROTTLED_RETRIES`] times.
    pub async fn install(
        &self,
        token: &str,
        teams_app_id: &str,
        tenant: &str,
        user_id: &str,
    ) -> Result<bool, GraphError> {
        use std::sync::atomic::Ordering::Relaxed;
        let body = serde_json::json!({
            "teamsApp@odata.bind": format!("{}/appCatalogs/teamsApps/{}", self.base, teams_app_id),
        });
        let mut throttled = 0;
        loop {
            self.limiter.acquire(teams_app_id, tenant).await;
            let r = self
                .http
                .post(self.user_url(user_id, ""))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .map_err(|e| GraphError::Http(e.without_url().to_string()))?;
            let status = r.status().as_u16();
            match status {
                200..=299 => {
                    self.counters.installed.fetch_add(1, Relaxed);
                    return Ok(true);
                }
                409 => {
                    self.counters.already_installed.fetch_add(1, Relaxed);
                    return Ok(false);
                }
                _ => {}
            }
            let err = error_of(r).await;
            match err.retry_after() {
                Some(wait) if throttled < MAX_THROTTLED_RETRIES => {
                    throttled += 1;
                    self.counters.throttled.fetch_add(1, Relaxed);
                    tracing::debug!(user = %user_id, wait_ms = wait.as_millis() as u64, "installedApps throttled; waiting Retry-After");
                    tokio::time::sleep(wait).await;
                }
                _ => {
                    self.counters.failed.fetch_add(1, Relaxed);
                    return Err(err);
                }
            }
        }
    }

    /// The user's installation of `teams_app_id` (its id), `None` if not installed.
    pub async fn installation_id(
        &self,
        token: &str,
        teams_app_id: &str,
        user_id: &str,
    ) -> Result<Option<String>, GraphError> {
        let mut url = url::Url::parse(&self.user_url(user_id, ""))
            .map_err(|e| GraphError::Http(format!("bad Graph URL: {e}")))?;
        url.query_pairs_mut()
            .append_pair("$expand", "teamsApp")
            .append_pair(
                "$filter",
                &format!("teamsApp/id eq '{}'", teams_app_id.replace('\'', "''")),
            );
        let v = get_json(&self.http, url.as_str(), token).await?;
        Ok(v.get("value")
            .and_then(|a| a.as_array())
            .and_then(|a| {
                a.iter().find(|i| {
                    i.pointer("/teamsApp/id")
                        .and_then(|x| x.as_str())
                        .is_none_or(|x| x == teams_app_id)
                })
            })
            .and_then(|i| i.get("id"))
            .and_then(|x| x.as_str())
            .map(str::to_owned))
    }

    /// `GET .../installedApps/{installationId}/chat`: the chat id.
    pub async fn chat_id(
        &self,
        token: &str,
        user_id: &str,
        installation_id: &str,
    ) -> Result<String, GraphError> {
        let url = self.user_url(user_id, &format!("/{}/chat", enc(installation_id)));
        let v = get_json(&self.http, &url, token).await?;
        v.get("id")
            .and_then(|x| x.as_str())
            .map(str::to_owned)
            .ok_or_else(|| GraphError::Status {
                status: 200,
                message: "the chat answer has no id".into(),
            })
    }

    /// Installs (409 counts as done), finds the installation and reads its chat id.
    pub async fn install_and_get_chat(
        &self,
        token: &str,
        teams_app_id: &str,
        tenant: &str,
        user_id: &str,
    ) -> Result<InstalledChat, GraphError> {
        let newly_installed = self.install(token, teams_app_id, tenant, user_id).await?;
        let installation_id = self
            .installation_id(token, teams_app_id, user_id)
            .await?
            .ok_or_else(|| {
                GraphError::NotFound(format!(
                    "the app {teams_app_id} is not listed among the user's installed apps right after installing it (a newly published app can take hours to reach Graph)"
                ))
            })?;
        let chat_id = self.chat_id(token, user_id, &installation_id).await?;
        Ok(InstalledChat {
            user_id: user_id.to_owned(),
            newly_installed,
            installation_id,
            chat_id,
        })
    }
}

async fn get_json(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> Result<serde_json::Value, GraphError> {
    let r = http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| GraphError::Http(e.without_url().to_string()))?;
    if !r.status().is_success() {
        return Err(error_of(r).await);
    }
    r.json()
        .await
        .map_err(|e| GraphError::Http(e.without_url().to_string()))
}

async fn error_of(r: reqwest::Response) -> GraphError {
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    let message: String = [
        v.pointer("/error/code").and_then(|x| x.as_str()),
        v.pointer("/error/message").and_then(|x| x.as_str()),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(": ")
    .chars()
    .filter(|c| !c.is_control())
    .take(300)
    .collect();
    match status {
        429 => GraphError::Throttled {
            status,
            retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
        },
        503 if retry_after.is_some() => GraphError::Throttled {
            status,
            retry_after: retry_after.unwrap_or_default(),
        },
        404 => GraphError::NotFound(message),
        403 => GraphError::Forbidden(message),
        400 => GraphError::BadRequest(message),
        401 => GraphError::Unauthorized(message),
        s => GraphError::Status { status: s, message },
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limiter_admits_at_most_the_rate_per_app_and_tenant() {
        let l = InstallLimiter::new(30);
        let start = Instant::now();
        for _ in 0..30 {
            l.acquire("app", "t1").await;
        }
        assert!(
            start.elapsed() < Duration::from_millis(200),
            "the first 30 pass at once"
        );
        // Another tenant has its own window.
        l.acquire("app", "t2").await;
        assert!(start.elapsed() < Duration::from_millis(200));
        // The 31st of t1 waits for the window to slide.
        l.acquire("app", "t1").await;
        assert!(
            start.elapsed() >= Duration::from_millis(950),
            "{:?}",
            start.elapsed()
        );
    }
}
