//! `botfleet bots list|show|add|update|remove`.
//!
//! A registration comes from a TOML or JSON file (the fields of a `[[bots]]`
//! entry of the configuration, docs/configuration.md) and/or flags for the
//! common fields; flags win over the file. `update` sends a JSON merge patch
//! (RFC 7396, <https://www.rfc-editor.org/rfc/rfc7396>) of what it names, so
//! the rest of the registration, credential included, stays; `--replace`
//! sends the whole registration instead (`PUT`).
//!
//! Writes carry `If-Match`: the ETag of a fresh read unless `--if-match`
//! names one, so a change someone made in between is refused (412) instead of
//! silently undone.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::client::{AdminClient, Paging};
use super::error::{CliError, EXIT_CODES_HELP};
use super::output::{clean, field, key_values, table, Output};

/// The order `bots show` prints a bot's fields in (the rest follow by name).
const SHOW_ORDER: &[&str] = &[
    "id",
    "app_id",
    "app_type",
    "tenant_id",
    "cloud",
    "credential",
    "handler",
    "allowed_tenants",
    "additional_allowed_domains",
    "ambiguous_send",
    "source",
    "read_only",
    "version",
    "created_at",
    "updated_at",
];

#[derive(Subcommand, Debug)]
pub enum BotsCommand {
    /// List every bot: the configuration file's (read-only) and those
    /// registered through the admin API.
    #[command(after_help = EXIT_CODES_HELP)]
    List,
    /// Show one bot (never its credential or webhook secret) and its ETag.
    #[command(after_help = EXIT_CODES_HELP)]
    Show {
        /// The bot's id.
        bot: String,
    },
    /// Register a bot, applied on every replica without a restart
    ///
    /// From a file (--file), flags, or both (flags win). Example:
    ///   botfleet bots add --id helpdesk --app-id 9f6b4c1e-... --tenant-id 72f988bf-...
    ///     --secret-file app-secret.txt --handler webhook
    ///     --webhook-url https://logic.example.com/teams --webhook-secret-file hook.txt
    #[command(after_help = EXIT_CODES_HELP, verbatim_doc_comment)]
    Add {
        /// botfleet's name for the bot: letters, digits, `-`, `_` (also picks
        /// the entry of a file holding several `[[bots]]`).
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        registration: RegistrationArgs,
    },
    /// Change a bot registered through the API: the fields named by the flags
    /// or the file (a merge patch); the rest, credential included, stays.
    ///
    /// Sends the ETag of a fresh read as If-Match unless --if-match gives one:
    /// if the bot changed in between, nothing is written and the command
    /// exits 1 (stale ETag).
    #[command(after_help = EXIT_CODES_HELP)]
    Update {
        /// The bot's id (it cannot change).
        bot: String,
        #[command(flatten)]
        registration: RegistrationArgs,
        /// Remove an optional field, by its JSON name (tenant_id, cloud,
        /// allowed_tenants, ambiguous_send, handler.timeout, ...); repeatable.
        #[arg(long, value_name = "FIELD")]
        unset: Vec<String>,
        /// Send the file (plus flags) as the whole registration instead of a
        /// patch. The credential must be in it: answers never show it.
        #[arg(long, requires = "file")]
        replace: bool,
        /// Only change the bot if its ETag is still this (from `bots show`);
        /// `*` changes it whatever its version.
        #[arg(long, value_name = "ETAG")]
        if_match: Option<String>,
    },
    /// Remove a bot registered through the API; every replica stops accepting
    /// its tokens.
    #[command(after_help = EXIT_CODES_HELP)]
    Remove {
        /// The bot's id.
        bot: String,
        /// Only remove it if its ETag is still this (from `bots show`).
        #[arg(long, value_name = "ETAG")]
        if_match: Option<String>,
    },
}

/// The common fields of a registration, as flags.
#[derive(Args, Debug, Default)]
pub struct RegistrationArgs {
    /// TOML or JSON file with the registration: the fields of a `[[bots]]`
    /// entry of the configuration (a file with a `[[bots]]` list works too).
    /// `-` reads standard input.
    #[arg(long, short, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Microsoft App ID of the Azure Bot registration (a GUID).
    #[arg(long, value_name = "GUID")]
    app_id: Option<String>,
    /// The bot's Entra tenant (single-tenant bots).
    #[arg(long, value_name = "GUID")]
    tenant_id: Option<String>,
    /// public, gcch, dod, china or a custom cloud of the configuration.
    #[arg(long)]
    cloud: Option<String>,
    /// A tenant the bot serves (repeat for several; none = any tenant).
    #[arg(long = "allowed-tenant", value_name = "GUID")]
    allowed_tenants: Vec<String>,
    /// A serviceUrl domain allowed beside the cloud's (repeatable).
    #[arg(long = "allowed-domain", value_name = "DOMAIN")]
    allowed_domains: Vec<String>,
    /// File holding the bot's client secret (credential kind `secret`).
    #[arg(long, value_name = "FILE", conflicts_with = "secret_env")]
    secret_file: Option<PathBuf>,
    /// Environment variable holding the bot's client secret.
    #[arg(long, value_name = "VAR")]
    secret_env: Option<String>,
    /// The bot logic: record, echo, notify-only (--text) or webhook
    /// (--webhook-url, --webhook-secret-file).
    #[arg(long, value_enum)]
    handler: Option<HandlerKind>,
    /// The answer of a notify-only handler.
    #[arg(long)]
    text: Option<String>,
    /// Where a webhook handler forwards activities (https).
    #[arg(long, value_name = "URL")]
    webhook_url: Option<String>,
    /// File holding the webhook's HMAC secret (at least 16 characters).
    #[arg(long, value_name = "FILE", conflicts_with = "webhook_secret_env")]
    webhook_secret_file: Option<PathBuf>,
    /// Environment variable holding the webhook's HMAC secret.
    #[arg(long, value_name = "VAR")]
    webhook_secret_env: Option<String>,
    /// How long one webhook call may take (`5s`, `1500ms`).
    #[arg(long, value_name = "DURATION")]
    webhook_timeout: Option<String>,
    /// A send that timed out after it left: report (never a duplicate) or
    /// resend (never a loss).
    #[arg(long, value_enum)]
    ambiguous_send: Option<AmbiguousSend>,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum HandlerKind {
    Record,
    Echo,
    NotifyOnly,
    Webhook,
}

impl HandlerKind {
    fn name(self) -> &'static str {
        match self {
            Self::Record => "record",
            Self::Echo => "echo",
            Self::NotifyOnly => "notify-only",
            Self::Webhook => "webhook",
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum AmbiguousSend {
    Report,
    Resend,
}

/// Every field of every handler and credential kind: a flag that changes the
/// kind removes the others (a merge patch would otherwise keep, say, the old
/// webhook's `url` beside a new `echo`, which the API refuses).
const HANDLER_FIELDS: &[&str] = &["text", "url", "secret", "timeout", "allow_insecure_http"];
const CREDENTIAL_FIELDS: &[&str] = &[
    "secret",
    "private_key_file",
    "certificate_file",
    "thumbprint",
    "token_file",
    "client_id",
    "endpoint",
];

impl RegistrationArgs {
    /// The flags as a merge patch of a registration (`null` = remove).
    fn patch(&self) -> Result<Map<String, Value>, CliError> {
        let mut p = Map::new();
        for (name, value) in [
            ("app_id", &self.app_id),
            ("tenant_id", &self.tenant_id),
            ("cloud", &self.cloud),
        ] {
            if let Some(v) = value {
                p.insert(name.into(), Value::from(v.as_str()));
            }
        }
        if !self.allowed_tenants.is_empty() {
            p.insert("allowed_tenants".into(), json!(self.allowed_tenants));
        }
        if !self.allowed_domains.is_empty() {
            p.insert(
                "additional_allowed_domains".into(),
                json!(self.allowed_domains),
            );
        }
        if let Some(secret) = read_secret(
            self.secret_file.as_deref(),
            self.secret_env.as_deref(),
            "--secret-file",
            "--secret-env",
        )? {
            let mut credential = nulls(CREDENTIAL_FIELDS);
            credential.insert("kind".into(), "secret".into());
            credential.insert("secret".into(), secret.into());
            p.insert("credential".into(), Value::Object(credential));
            // The shorthand would be a second credential.
            p.insert("app_password".into(), Value::Null);
        }
        let mut handler = Map::new();
        if let Some(text) = &self.text {
            handler.insert("text".into(), text.as_str().into());
        }
        if let Some(url) = &self.webhook_url {
            handler.insert("url".into(), url.as_str().into());
        }
        if let Some(secret) = read_secret(
            self.webhook_secret_file.as_deref(),
            self.webhook_secret_env.as_deref(),
            "--webhook-secret-file",
            "--webhook-secret-env",
        )? {
            handler.insert("secret".into(), secret.into());
        }
        if let Some(t) = &self.webhook_timeout {
            handler.insert("timeout".into(), t.as_str().into());
        }
        match self.handler {
            Some(kind) => {
                let mut h = nulls(HANDLER_FIELDS);
                h.extend(handler);
                h.insert("kind".into(), kind.name().into());
                p.insert("handler".into(), Value::Object(h));
            }
            None if !handler.is_empty() => {
                // The fields say which kind they belong to.
                let kind = if handler.contains_key("text") {
                    HandlerKind::NotifyOnly
                } else {
                    HandlerKind::Webhook
                };
                handler.insert("kind".into(), kind.name().into());
                p.insert("handler".into(), Value::Object(handler));
            }
            None => {}
        }
        if let Some(a) = self.ambiguous_send {
            let name = match a {
                AmbiguousSend::Report => "report",
                AmbiguousSend::Resend => "resend",
            };
            p.insert("ambiguous_send".into(), name.into());
        }
        Ok(p)
    }

    /// The file's registration (an empty object without `--file`). `select`
    /// picks an entry of a file holding a `[[bots]]` list.
    fn file(&self, select: Option<&str>) -> Result<Value, CliError> {
        match &self.file {
            Some(path) => load_registration(path, select),
            None => Ok(Value::Object(Map::new())),
        }
    }
}

fn nulls(fields: &[&str]) -> Map<String, Value> {
    fields
        .iter()
        .map(|f| (f.to_string(), Value::Null))
        .collect()
}

/// A secret from a file (trailing newline removed) or an environment
/// variable. Errors name the file or variable, never the content.
fn read_secret(
    file: Option<&Path>,
    env: Option<&str>,
    file_flag: &str,
    env_flag: &str,
) -> Result<Option<String>, CliError> {
    let value = match (file, env) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("{file_flag} {}: {e}", path.display())))?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        (None, Some(var)) => std::env::var(var).map_err(|_| {
            CliError::Usage(format!(
                "{env_flag} {var}: the environment variable is not set (or not UTF-8)"
            ))
        })?,
        (None, None) => return Ok(None),
    };
    if value.is_empty() {
        let from = match (file, env) {
            (Some(p), _) => format!("{file_flag} {}", p.display()),
            (None, Some(v)) => format!("{env_flag} {v}"),
            (None, None) => String::new(),
        };
        return Err(CliError::Usage(format!("{from}: the secret is empty")));
    }
    Ok(Some(value))
}

/// Reads a registration from a TOML or JSON file: `.json` is JSON, `.toml`
/// TOML, anything else (or `-`) JSON when it starts with `{`, else TOML. A
/// document with a `bots` list (a configuration file or an excerpt) yields the
/// entry whose `id` is `select`, or its only entry.
///
/// Errors give the file and line, never the file's text (it holds secrets).
pub fn load_registration(path: &Path, select: Option<&str>) -> Result<Value, CliError> {
    let shown = path.display();
    let text = if path == Path::new("-") {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .map_err(|e| CliError::Usage(format!("--file -: cannot read standard input: {e}")))?;
        t
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("--file {shown}: {e}")))?
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let is_json = match ext.as_deref() {
        Some("json") => true,
        Some("toml") => false,
        _ => text.trim_start().starts_with('{'),
    };
    let doc: Value = if is_json {
        // serde_json's message gives line and column, not the content.
        serde_json::from_str(&text)
            .map_err(|e| CliError::Usage(format!("--file {shown}: not valid JSON: {e}")))?
    } else {
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            // toml's Display quotes the offending line, which may be a secret.
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            CliError::Usage(match line {
                Some(l) => format!("--file {shown} line {l}: not valid TOML: {}", e.message()),
                None => format!("--file {shown}: not valid TOML: {}", e.message()),
            })
        })?;
        serde_json::to_value(table).map_err(|e| CliError::Usage(format!("--file {shown}: {e}")))?
    };
    let Value::Object(mut map) = doc else {
        return Err(CliError::Usage(format!(
            "--file {shown}: a registration is an object (the fields of a [[bots]] entry)"
        )));
    };
    if !map.contains_key("app_id") {
        if let Some(Value::Array(bots)) = map.remove("bots") {
            return pick_entry(bots, select, &shown.to_string());
        }
    }
    Ok(Value::Object(map))
}

fn pick_entry(bots: Vec<Value>, select: Option<&str>, shown: &str) -> Result<Value, CliError> {
    let ids: Vec<String> = bots
        .iter()
        .map(|b| {
            b.get("id")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    let chosen = match select {
        Some(id) => bots
            .into_iter()
            .find(|b| b.get("id").and_then(Value::as_str) == Some(id)),
        None if bots.len() == 1 => bots.into_iter().next(),
        None => {
            return Err(CliError::Usage(format!(
                "--file {shown} defines {} bots ({}); name the one to use with --id",
                ids.len(),
                clean(&ids.join(", "))
            )))
        }
    };
    match chosen {
        Some(entry @ Value::Object(_)) => Ok(entry),
        Some(_) => Err(CliError::Usage(format!(
            "--file {shown}: a [[bots]] entry is a table of the bot's fields"
        ))),
        None => Err(CliError::Usage(format!(
            "--file {shown} defines no bot{} (it has: {})",
            select
                .map(|s| format!(" `{}`", clean(s)))
                .unwrap_or_default(),
            clean(&ids.join(", "))
        ))),
    }
}

/// RFC 7396: applies `patch` to `target` (`null` removes).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(map) = target {
        for (k, v) in changes {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Two patches as one: `later` applied after `earlier` (its `null`s kept,
/// so the result still removes what `later` removes).
fn compose(earlier: &mut Value, later: &Value) {
    match (earlier, later) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => compose(existing, v),
                    _ => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (e, l) => *e = l.clone(),
    }
}

/// The merge patch removing `field`; dots name nested fields
/// (`handler.timeout` is `{"handler": {"timeout": null}}`).
fn unset_patch(field: &str) -> Value {
    field
        .rsplit('.')
        .fold(Value::Null, |inner, name| json!({ name: inner }))
}

/// `"3"` from `3`, `"3"` or `*` as given (what `--if-match` accepts).
fn etag_arg(raw: &str) -> String {
    let t = raw.trim();
    if t == "*" || t.starts_with('"') || t.starts_with("W/") {
        t.to_string()
    } else {
        format!("\"{t}\"")
    }
}

pub async fn run(
    client: &AdminClient,
    command: BotsCommand,
    json: bool,
) -> Result<Output, CliError> {
    match command {
        BotsCommand::List => list(client, json).await,
        BotsCommand::Show { bot } => {
            let answer = client.get(&["bots", &bot], &[]).await?;
            Ok(if json {
                Output::json(&answer.body)
            } else {
                Output::text(show_text(&answer.body, answer.etag.as_deref()))
            })
        }
        BotsCommand::Add { id, registration } => {
            let mut body = registration.file(id.as_deref())?;
            if let Some(id) = &id {
                body["id"] = Value::from(id.as_str());
            }
            merge_patch(&mut body, &Value::Object(registration.patch()?));
            if body.get("id").is_none() {
                return Err(CliError::Usage(
                    "the registration has no id: pass --id or put `id` in the file".into(),
                ));
            }
            let answer = client
                .send(Method::POST, &["bots"], &[], None, Some(&body))
                .await?;
            Ok(written(
                &answer.body,
                answer.etag.as_deref(),
                json,
                "registered",
            ))
        }
        BotsCommand::Update {
            bot,
            registration,
            unset,
            replace,
            if_match,
        } => update(client, &bot, registration, unset, replace, if_match, json).await,
        BotsCommand::Remove { bot, if_match } => {
            let explicit = if_match.is_some();
            let tag = match if_match {
                Some(t) => etag_arg(&t),
                None => fresh_etag(client, &bot).await?,
            };
            client
                .send(Method::DELETE, &["bots", &bot], &[], Some(&tag), None)
                .await
                .map_err(|e| stale_hint(e, &bot, explicit))?;
            Ok(if json {
                Output::default()
            } else {
                Output::text(format!("removed bot {}\n", clean(&bot)))
            })
        }
    }
}

async fn update(
    client: &AdminClient,
    bot: &str,
    registration: RegistrationArgs,
    unset: Vec<String>,
    replace: bool,
    if_match: Option<String>,
    json: bool,
) -> Result<Output, CliError> {
    let mut flags = Value::Object(registration.patch()?);
    for f in &unset {
        compose(&mut flags, &unset_patch(f));
    }
    let mut body = registration.file(Some(bot))?;
    let method = if replace {
        merge_patch(&mut body, &flags);
        if body.get("id").is_none() {
            body["id"] = Value::from(bot);
        }
        Method::PUT
    } else {
        compose(&mut body, &flags);
        if body.as_object().is_some_and(Map::is_empty) {
            return Err(CliError::Usage(
                "nothing to change: give --file or flags (e.g. --allowed-tenant, --handler, --unset)"
                    .into(),
            ));
        }
        Method::PATCH
    };
    let explicit = if_match.is_some();
    let tag = match if_match {
        Some(t) => etag_arg(&t),
        None => fresh_etag(client, bot).await?,
    };
    let answer = client
        .send(method, &["bots", bot], &[], Some(&tag), Some(&body))
        .await
        .map_err(|e| stale_hint(e, bot, explicit))?;
    Ok(written(
        &answer.body,
        answer.etag.as_deref(),
        json,
        "updated",
    ))
}

/// The ETag of a fresh read, or why the bot cannot be changed.
async fn fresh_etag(client: &AdminClient, bot: &str) -> Result<String, CliError> {
    let answer = client.get(&["bots", bot], &[]).await?;
    if answer.body.get("read_only").and_then(Value::as_bool) == Some(true) {
        return Err(CliError::Refused(format!(
            "bot `{}` is defined in the configuration file: change it there and restart (the admin API changes only bots it registered)",
            clean(bot)
        )));
    }
    answer.etag.ok_or_else(|| {
        CliError::Refused(format!(
            "the admin API gave no ETag for bot `{}`; pass --if-match",
            clean(bot)
        ))
    })
}

/// A stale ETag, told in the CLI's terms.
fn stale_hint(e: CliError, bot: &str, explicit: bool) -> CliError {
    if e.check() != Some("precondition_failed") {
        return e;
    }
    let bot = clean(bot);
    if explicit {
        e.with_hint(format!(
            "nothing was changed; review the bot with `botfleet bots show {bot}` and retry with its current ETag (or without --if-match)"
        ))
    } else {
        e.with_hint(format!(
            "someone changed bot {bot} while this command ran; nothing was changed: review it with `botfleet bots show {bot}` and run the command again"
        ))
    }
}

fn written(bot: &Value, etag: Option<&str>, json: bool, what: &str) -> Output {
    if json {
        return Output::json(bot);
    }
    Output::text(show_text(bot, etag)).note(format!(
        "bot {} {what} (version {})",
        field(bot, "id"),
        field(bot, "version")
    ))
}

fn show_text(bot: &Value, etag: Option<&str>) -> String {
    let mut v = bot.clone();
    if let (Some(tag), Some(o)) = (etag, v.as_object_mut()) {
        o.insert("etag".into(), tag.into());
    }
    let mut order = SHOW_ORDER.to_vec();
    order.push("etag");
    key_values(&v, &order)
}

async fn list(client: &AdminClient, json: bool) -> Result<Output, CliError> {
    let (doc, _) = client
        .list(&["bots"], Vec::new(), &Paging::everything())
        .await?;
    if json {
        return Ok(Output::json(&doc));
    }
    let items = doc["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return Ok(Output::default().note("no bots"));
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|b| {
            vec![
                field(b, "id"),
                field(b, "app_id"),
                field(b, "app_type"),
                b.get("handler")
                    .map(|h| field(h, "kind"))
                    .unwrap_or_else(|| "-".into()),
                field(b, "credential"),
                field(b, "cloud"),
                field(b, "source"),
                field(b, "version"),
            ]
        })
        .collect();
    Ok(Output::text(table(
        &[
            "ID",
            "APP ID",
            "APP TYPE",
            "HANDLER",
            "CREDENTIAL",
            "CLOUD",
            "SOURCE",
            "VERSION",
        ],
        &rows,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RegistrationArgs {
        RegistrationArgs::default()
    }

    #[test]
    fn flags_make_a_patch_that_switches_kinds_cleanly() {
        let dir = tempfile::tempdir().expect("dir");
        let secret = dir.path().join("s");
        std::fs::write(&secret, "hook-secret-0123456789\n").expect("write");
        let a = RegistrationArgs {
            handler: Some(HandlerKind::Webhook),
            webhook_url: Some("https://x.example/hook".into()),
            webhook_secret_file: Some(secret),
            allowed_tenants: vec!["t1".into(), "t2".into()],
            ..args()
        };
        let p = Value::Object(a.patch().expect("patch"));
        assert_eq!(
            p,
            json!({
                "allowed_tenants": ["t1", "t2"],
                "handler": {"kind": "webhook", "url": "https://x.example/hook",
                    "secret": "hook-secret-0123456789", "text": null, "timeout": null,
                    "allow_insecure_http": null},
            })
        );
        // Applied to a stored webhook bot switched to echo, nothing of the
        // webhook is left.
        let mut stored =
            json!({"id": "b", "handler": {"kind": "webhook", "url": "u", "secret": "s"}});
        let echo = RegistrationArgs {
            handler: Some(HandlerKind::Echo),
            ..args()
        };
        merge_patch(&mut stored, &Value::Object(echo.patch().expect("patch")));
        assert_eq!(stored, json!({"id": "b", "handler": {"kind": "echo"}}));
        // A field alone implies its kind and merges into the stored handler.
        let url_only = RegistrationArgs {
            webhook_url: Some("https://new".into()),
            ..args()
        };
        let mut stored = json!({"handler": {"kind": "webhook", "url": "u", "secret": "s"}});
        merge_patch(
            &mut stored,
            &Value::Object(url_only.patch().expect("patch")),
        );
        assert_eq!(
            stored,
            json!({"handler": {"kind": "webhook", "url": "https://new", "secret": "s"}})
        );
    }

    #[test]
    fn secrets_are_never_in_errors() {
        let e = read_secret(
            None,
            Some("BOTFLEET_TEST_SURELY_UNSET_VAR"),
            "--secret-file",
            "--secret-env",
        )
        .expect_err("unset");
        assert!(e.to_string().contains("BOTFLEET_TEST_SURELY_UNSET_VAR"));
        let dir = tempfile::tempdir().expect("dir");
        let bad = dir.path().join("bot.toml");
        std::fs::write(
            &bad,
            "id = \"a\"\napp_password = \"TOPSECRET-unterminated\n",
        )
        .expect("write");
        let e = load_registration(&bad, None).expect_err("bad toml");
        let msg = e.to_string();
        assert!(msg.contains("line 2"), "{msg}");
        assert!(!msg.contains("TOPSECRET"), "{msg}");
    }

    #[test]
    fn files_in_toml_json_and_configuration_shape() {
        let dir = tempfile::tempdir().expect("dir");
        let toml_file = dir.path().join("bot.toml");
        std::fs::write(
            &toml_file,
            "id = \"a\"\napp_id = \"x\"\n[handler]\nkind = \"echo\"\n",
        )
        .expect("write");
        assert_eq!(
            load_registration(&toml_file, None).expect("toml"),
            json!({"id": "a", "app_id": "x", "handler": {"kind": "echo"}})
        );
        let json_file = dir.path().join("bot.txt");
        std::fs::write(&json_file, " {\"id\": \"a\", \"app_id\": \"x\"}").expect("write");
        assert_eq!(
            load_registration(&json_file, None).expect("json"),
            json!({"id": "a", "app_id": "x"})
        );
        let config = dir.path().join("botfleet.toml");
        std::fs::write(
            &config,
            "[server]\nlisten = \"0.0.0.0:3978\"\n[[bots]]\nid = \"a\"\napp_id = \"x\"\n[[bots]]\nid = \"b\"\napp_id = \"y\"\n",
        )
        .expect("write");
        assert_eq!(
            load_registration(&config, Some("b")).expect("pick b"),
            json!({"id": "b", "app_id": "y"})
        );
        let e = load_registration(&config, None).expect_err("two bots");
        assert!(e.to_string().contains("defines 2 bots (a, b)"), "{e}");
        assert!(load_registration(&config, Some("c")).is_err());
        // Entries that are not tables are refused, not indexed.
        let odd = dir.path().join("odd.json");
        std::fs::write(&odd, r#"{"bots": [1]}"#).expect("write");
        assert!(matches!(
            load_registration(&odd, None),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn patches_compose_and_etags_normalise() {
        let mut a = json!({"handler": {"url": "u"}, "cloud": "public"});
        compose(&mut a, &json!({"handler": {"secret": "s"}, "cloud": null}));
        assert_eq!(
            a,
            json!({"handler": {"url": "u", "secret": "s"}, "cloud": null})
        );
        assert_eq!(etag_arg("3"), "\"3\"");
        assert_eq!(etag_arg("\"3\""), "\"3\"");
        assert_eq!(etag_arg("*"), "*");
        assert_eq!(unset_patch("cloud"), json!({"cloud": null}));
        assert_eq!(
            unset_patch("handler.timeout"),
            json!({"handler": {"timeout": null}})
        );
    }
}
