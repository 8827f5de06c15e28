//! The bits of the running sim's `/_sim/` API the client uses: minting channel
//! tokens and registering conversations its Bot Connector will accept.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ClientError;

/// `POST /_sim/tokens` body: what Teams' channel service would sign, plus the
/// tampering knobs tests use. `None` fields are left to the sim's defaults.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenRequest {
    pub app_id: String,
    pub service_url: String,
    pub count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired_by_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_service_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Deserialize)]
struct TokensResponse {
    tokens: Vec<String>,
}

/// One conversation for `POST /_sim/conversations`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConversationRegistration {
    pub id: String,
    pub tenant_id: String,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Member {
    pub id: String,
}

/// A handle on a running sim.
#[derive(Clone)]
pub(crate) struct SimApi {
    base: String,
    http: reqwest::Client,
}

/// The sim mints at most this many tokens per call here, so that a large
/// `--fresh-tokens` is fetched in pieces rather than in one giant response.
const TOKENS_PER_CALL: usize = 1000;

impl SimApi {
    pub fn new(base: &str, http: reqwest::Client) -> Result<Self, ClientError> {
        super::parse_http_url("--sim", base)?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    /// Channel->bot tokens as Teams would sign them; `count` of them.
    pub async fn tokens(&self, request: &TokenRequest) -> Result<Vec<String>, ClientError> {
        let mut all = Vec::with_capacity(request.count);
        while all.len() < request.count {
            let piece = TokenRequest {
                count: (request.count - all.len()).min(TOKENS_PER_CALL),
                ..request.clone()
            };
            let body = self.post("minting tokens", "/_sim/tokens", &piece).await?;
            let parsed: TokensResponse =
                serde_json::from_str(&body).map_err(|e| ClientError::SimRejected {
                    what: "minting tokens",
                    url: format!("{}/_sim/tokens", self.base),
                    status: 200,
                    body: format!("unexpected body ({e}): {body}"),
                })?;
            if parsed.tokens.is_empty() {
                // A sim that mints nothing would make this loop forever.
                return Err(ClientError::SimRejected {
                    what: "minting tokens",
                    url: format!("{}/_sim/tokens", self.base),
                    status: 200,
                    body: "no tokens in the answer".to_owned(),
                });
            }
            all.extend(parsed.tokens);
        }
        all.truncate(request.count);
        Ok(all)
    }

    /// Makes the sim's Bot Connector accept these conversations (it answers 404
    /// for conversations it does not know, as Teams does).
    pub async fn register_conversations(
        &self,
        conversations: &[ConversationRegistration],
    ) -> Result<(), ClientError> {
        #[derive(Serialize)]
        struct Body<'a> {
            conversations: &'a [ConversationRegistration],
        }
        for chunk in conversations.chunks(5000) {
            self.post(
                "registering conversations",
                "/_sim/conversations",
                &Body {
                    conversations: chunk,
                },
            )
            .await?;
        }
        Ok(())
    }

    /// `GET /_sim/stats`: the sim's counters (connector calls, throttling, ...).
    pub async fn stats(&self) -> Result<Value, ClientError> {
        let url = format!("{}/_sim/stats", self.base);
        let unreachable = |source| ClientError::SimUnreachable {
            url: self.base.clone(),
            source,
        };
        let response = self.http.get(&url).send().await.map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(ClientError::SimRejected {
                what: "reading stats",
                url,
                status: status.as_u16(),
                body: text,
            });
        }
        serde_json::from_str(&text).map_err(|e| ClientError::SimRejected {
            what: "reading stats",
            url,
            status: status.as_u16(),
            body: format!("not JSON ({e}): {text}"),
        })
    }

    async fn post<T: Serialize>(
        &self,
        what: &'static str,
        path: &str,
        body: &T,
    ) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |source| ClientError::SimUnreachable {
            url: self.base.clone(),
            source,
        };
        let response = self
            .http
            .post(&url)
            .json(body)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(ClientError::SimRejected {
                what,
                url,
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_request_is_camel_case_and_omits_defaults() {
        let request = TokenRequest {
            app_id: "app".into(),
            service_url: "http://127.0.0.1:1/amer/".into(),
            count: 1,
            expired_by_secs: Some(3600),
            key: Some("foreign".into()),
            ..TokenRequest::default()
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "appId": "app",
                "serviceUrl": "http://127.0.0.1:1/amer/",
                "count": 1,
                "expiredBySecs": 3600,
                "key": "foreign"
            })
        );
    }
}
