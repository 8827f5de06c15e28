//! The shapes botfleet stores (subscription definitions, inbox payloads) and
//! the Graph JSON it reads (notification items, subscriptions, chat messages).
//!
//! Graph shapes: https://learn.microsoft.com/graph/api/resources/subscription,
//! https://learn.microsoft.com/graph/change-notifications-delivery-webhooks,
//! https://learn.microsoft.com/graph/change-notifications-lifecycle-events,
//! https://learn.microsoft.com/graph/api/resources/chatmessage.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Longest subscription id botfleet accepts (it is part of the `clientState`,
/// whose Graph maximum is 128 characters).
pub const MAX_ID_LEN: usize = 64;

/// Graph's maximum lifetime of Teams chatMessage subscriptions: 4,320 minutes
/// (https://learn.microsoft.com/graph/api/resources/subscription#subscription-lifetime).
pub const MAX_LIFETIME_MINUTES: u64 = 4320;

/// What one subscription watches and what happens with its notifications.
/// Stored as JSON; the configuration's `[[graph.subscriptions]]` and the admin
/// API's body have this shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// botfleet's name of the subscription: 1 to 64 of `[A-Za-z0-9._-]`.
    pub id: String,
    /// The bot whose app (and credential) subscribes.
    pub bot: String,
    /// The tenant the resource lives in (application tokens are per tenant).
    pub tenant_id: String,
    /// The Graph resource, e.g. `/chats/{id}/messages`,
    /// `/teams/{id}/channels/{id}/messages`, `/users/{id}/chats/getAllMessages`,
    /// `/appCatalogs/teamsApps/{id}/installedToChats/getAllMessages`.
    pub resource: String,
    /// `created`, `updated`, `deleted` (at least one).
    #[serde(default = "default_change_types")]
    pub change_types: Vec<String>,
    /// Rich notifications: the message itself arrives, encrypted to this certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSpec>,
    /// What to do with each message.
    pub action: ActionRule,
    /// How the subscription authenticates: `{"kind": "app"}` (default, the
    /// bot's app by client credentials) or `{"kind": "delegated", "name":
    /// "<credential>"}` (a `[[graph_auth.credentials]]` user, docs/graph.md
    /// "Delegated access").
    #[serde(default)]
    pub credential: CredentialRef,
    /// Where it was defined (`configuration` or `api`); set by botfleet.
    #[serde(default)]
    pub source: Source,
}

fn default_change_types() -> Vec<String> {
    vec!["created".to_owned()]
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    #[default]
    Api,
    Configuration,
}

/// The identity a subscription uses at Graph.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialRef {
    /// Application permissions: the bot's credential, client credentials,
    /// scope `https://graph.microsoft.com/.default`, token of `tenant_id`.
    #[default]
    App,
    /// Delegated permissions of a signed-in service user: the access token of
    /// the `[[graph_auth.credentials]]` entry `name` (refreshed by botfleet;
    /// https://learn.microsoft.com/graph/auth-v2-user). Its bot and tenant
    /// should be the subscription's.
    Delegated {
        /// The credential's name: 1 to 64 of `[A-Za-z0-9._-]`.
        name: String,
    },
}

impl CredentialRef {
    /// The delegated credential's name, `None` for `app`.
    pub fn delegated(&self) -> Option<&str> {
        match self {
            Self::App => None,
            Self::Delegated { name } => Some(name),
        }
    }
}

/// Rich-notification keys: files, read when used (so a rotated file is picked up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSpec {
    /// PEM X.509 certificate (RSA 2048 to 4096) sent to Graph.
    pub certificate_file: PathBuf,
    /// PEM private key of that certificate (PKCS#8 or PKCS#1).
    pub key_file: PathBuf,
    /// The key of the certificate used before the current one: notifications
    /// encrypted to it while the new one was being rolled out still decrypt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_file: Option<PathBuf>,
    /// `encryptionCertificateId` sent to Graph (at most 128 characters).
    #[serde(default = "default_certificate_id")]
    pub certificate_id: String,
}

fn default_certificate_id() -> String {
    "botfleet".to_owned()
}

/// What happens with each message of a subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionRule {
    /// POST the message as JSON to a URL, signed like the bot webhook
    /// (`X-Botfleet-Timestamp`, `X-Botfleet-Signature`), with
    /// `X-Botfleet-Notification-Id` stable across retries.
    Webhook {
        url: String,
        /// HMAC secret (`secret_file` / `secret_env` in configuration).
        secret: botfleet_auth::Secret,
        /// Only messages whose text contains one of these (case-insensitive).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        contains: Vec<String>,
        #[serde(default)]
        allow_insecure_http: bool,
    },
    /// Start a proactive notification job of `bot` (docs/notifications.md)
    /// whose activity is `text` (and an optional Adaptive Card) with
    /// `{{text}}`, `{{from}}`, `{{chat}}`, `{{time}}`, `{{tenant}}`,
    /// `{{subscription}}` filled from the message.
    Job {
        /// The bot that sends (default: the subscription's bot).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bot: Option<String>,
        /// The job's targets, as the notification API takes them
        /// (`{"channel": {...}}`, `{"conversations": [...]}`, `{"users": [...]}`, ...).
        targets: serde_json::Value,
        /// The message text template.
        text: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        contains: Vec<String>,
    },
    /// Only record it (state and metrics): for trying a subscription out.
    Record {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        contains: Vec<String>,
    },
}

impl ActionRule {
    pub fn contains(&self) -> &[String] {
        match self {
            Self::Webhook { contains, .. }
            | Self::Job { contains, .. }
            | Self::Record { contains } => contains,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Webhook { .. } => "webhook",
            Self::Job { .. } => "job",
            Self::Record { .. } => "record",
        }
    }
}

impl SubscriptionSpec {
    /// Checks every field; errors are `(field, problem)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let f = |k: &str, p: &str| Err((k.to_owned(), p.to_owned()));
        if self.id.is_empty()
            || self.id.len() > MAX_ID_LEN
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return f("id", "must be 1 to 64 of A-Z a-z 0-9 . _ -");
        }
        if self.bot.trim().is_empty() {
            return f("bot", "must name a bot");
        }
        if self.tenant_id.trim().is_empty() || self.tenant_id.chars().any(char::is_control) {
            return f("tenant_id", "must be the tenant id the resource lives in");
        }
        if !self.resource.starts_with('/')
            || self.resource.len() > 512
            || self.resource.chars().any(|c| c.is_control() || c == ' ')
        {
            return f(
                "resource",
                "must be a Graph resource path such as /chats/{id}/messages",
            );
        }
        if self.change_types.is_empty() {
            return f(
                "change_types",
                "name at least one of created, updated, deleted",
            );
        }
        for c in &self.change_types {
            if !matches!(c.as_str(), "created" | "updated" | "deleted") {
                return f("change_types", "each must be created, updated or deleted");
            }
        }
        if let Some(e) = &self.encryption {
            if e.certificate_id.is_empty() || e.certificate_id.len() > 128 {
                return f("encryption.certificate_id", "must be 1 to 128 characters");
            }
        }
        if let Some(name) = self.credential.delegated() {
            if !crate::delegated::valid_name(name) {
                return f(
                    "credential.name",
                    "must name a [[graph_auth.credentials]] entry: 1 to 64 of A-Z a-z 0-9 . _ -",
                );
            }
        }
        match &self.action {
            ActionRule::Webhook {
                url,
                secret,
                allow_insecure_http,
                ..
            } => {
                let Ok(u) = url::Url::parse(url) else {
                    return f("action.url", "must be an absolute URL");
                };
                let loopback = matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
                if u.scheme() != "https"
                    && !(u.scheme() == "http" && (loopback || *allow_insecure_http))
                {
                    return f(
                        "action.url",
                        "must be https (http only to loopback or with allow_insecure_http)",
                    );
                }
                if secret.expose().len() < 16 {
                    return f("action.secret", "must be at least 16 characters");
                }
            }
            ActionRule::Job { targets, text, .. } => {
                if !targets.is_object() {
                    return f("action.targets", "must be a targets object of the notification API, e.g. {\"channel\": {\"team\": \"...\", \"channel\": \"...\"}}");
                }
                if text.trim().is_empty() {
                    return f("action.text", "must not be empty");
                }
            }
            ActionRule::Record { .. } => {}
        }
        Ok(())
    }
}

// ------------------------------------------------------------ Graph JSON --

/// `POST {notificationUrl}` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationBatch {
    #[serde(default)]
    pub value: Vec<serde_json::Value>,
    #[serde(default)]
    pub validation_tokens: Vec<String>,
}

/// One change notification item (the fields botfleet reads).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeItem {
    #[serde(default)]
    pub subscription_id: String,
    #[serde(default)]
    pub change_type: String,
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub tenant_id: String,
    #[serde(default)]
    pub client_state: Option<String>,
    #[serde(default)]
    pub resource_data: Option<serde_json::Value>,
    #[serde(default)]
    pub encrypted_content: Option<EncryptedContent>,
    #[serde(default)]
    pub lifecycle_event: Option<String>,
}

/// `encryptedContent` of a rich notification.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptedContent {
    pub data: String,
    pub data_signature: String,
    pub data_key: String,
    #[serde(default)]
    pub encryption_certificate_id: Option<String>,
    #[serde(default)]
    pub encryption_certificate_thumbprint: Option<String>,
}

/// What the inbox holds: one received item, or one message read by a resync.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum InboxPayload {
    /// A change notification item as received (clientState already checked),
    /// with the batch's validation tokens when it carries encrypted content.
    Change {
        sub: String,
        item: Box<ChangeItem>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tokens: Vec<String>,
        /// When botfleet received it (ms since the Unix epoch).
        at: u64,
    },
    /// A lifecycle notification (clientState already checked).
    Lifecycle { sub: String, event: String, at: u64 },
    /// A message read by a resync after a gap.
    Message {
        sub: String,
        tenant: String,
        message: serde_json::Value,
        at: u64,
    },
}

impl InboxPayload {
    pub fn sub(&self) -> &str {
        match self {
            Self::Change { sub, .. } | Self::Lifecycle { sub, .. } | Self::Message { sub, .. } => {
                sub
            }
        }
    }

    /// The tenant whose order the processor keeps (empty for lifecycle events).
    pub fn tenant(&self) -> &str {
        match self {
            Self::Change { item, .. } => &item.tenant_id,
            Self::Lifecycle { .. } => "",
            Self::Message { tenant, .. } => tenant,
        }
    }
}

/// The parts of a chatMessage botfleet uses
/// (https://learn.microsoft.com/graph/api/resources/chatmessage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    pub id: String,
    pub chat_or_channel: String,
    pub last_modified: String,
    pub last_modified_ms: u64,
    /// The body as plain text (HTML tags removed).
    pub text: String,
    pub from: String,
    pub created: String,
}

impl MessageView {
    /// From a chatMessage JSON; `None` without an id or a parsable
    /// `lastModifiedDateTime` (or `createdDateTime`).
    pub fn of(m: &serde_json::Value) -> Option<Self> {
        let s = |p: &str| {
            m.pointer(p)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned()
        };
        let id = s("/id");
        if id.is_empty() {
            return None;
        }
        let created = s("/createdDateTime");
        let mut last_modified = s("/lastModifiedDateTime");
        if last_modified.is_empty() {
            last_modified = created.clone();
        }
        let last_modified_ms = crate::time::parse_rfc3339_ms(&last_modified)?;
        let chat = s("/chatId");
        let chat_or_channel = if chat.is_empty() {
            s("/channelIdentity/channelId")
        } else {
            chat
        };
        let mut from = s("/from/user/displayName");
        if from.is_empty() {
            from = s("/from/user/id");
        }
        let content = s("/body/content");
        let text = if m.pointer("/body/contentType").and_then(|v| v.as_str()) == Some("html")
            || content.contains('<')
        {
            strip_html(&content)
        } else {
            content
        };
        Some(Self {
            id,
            chat_or_channel,
            last_modified,
            last_modified_ms,
            text,
            from,
            created,
        })
    }
}

/// Text of an HTML fragment: tags dropped, the five XML entities decoded.
pub fn strip_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
        .trim()
        .to_owned()
}
