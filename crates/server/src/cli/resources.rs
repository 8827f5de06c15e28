//! `botfleet tenants|conversations|keys|audit|tokens`: read-mostly views of
//! the admin API, and key management.

use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand, ValueEnum};
use futures::{StreamExt as _, TryStreamExt as _};
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{AdminClient, Paging};
use super::error::{CliError, EXIT_CODES_HELP};
use super::output::{clean, field, shell_quote, table, Output};

/// `--limit`, `--next`, `--all` of a paginated listing.
#[derive(Args, Debug, Clone, Default)]
pub struct PageArgs {
    /// Items per request, 1 to 1000 (default 100). Without --all only the
    /// first page is shown, and a note says how to get the next.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: Option<u32>,
    /// Start after this cursor (the `next` of a previous page).
    #[arg(long, value_name = "CURSOR")]
    next: Option<String>,
    /// Follow every page to the end (--json: one document with every item).
    #[arg(long)]
    all: bool,
}

impl PageArgs {
    fn paging(&self) -> Paging {
        Paging {
            // Fewer, bigger requests when reading everything.
            limit: self.limit.or(self.all.then_some(1000)),
            next: self.next.clone(),
            all: self.all,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum TenantsCommand {
    /// A bot's tenants with their conversation counts (every tenant).
    #[command(after_help = EXIT_CODES_HELP)]
    List {
        /// The bot's id.
        #[arg(long)]
        bot: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConversationsCommand {
    /// A bot's conversations, by id: tenant, state (active, or why not) and
    /// when last seen.
    #[command(after_help = EXIT_CODES_HELP)]
    List {
        /// The bot's id.
        #[arg(long)]
        bot: String,
        /// Only this tenant's conversations.
        #[arg(long, value_name = "TENANT")]
        tenant: Option<String>,
        /// Only active (true) or inactive (false) conversations.
        #[arg(long, value_name = "true|false")]
        active: Option<bool>,
        #[command(flatten)]
        page: PageArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create an API key and print it (on stdout, alone): it is shown this
    /// once. Admin role, unscoped key.
    #[command(after_help = EXIT_CODES_HELP)]
    Create {
        /// admin (everything), operator (bots, reads), sender
        /// (notifications, reads), reader (reads).
        #[arg(long, value_enum)]
        role: Role,
        /// Limit the key to this bot (repeatable); none = every bot.
        #[arg(long = "bot", value_name = "BOT")]
        bots: Vec<String>,
        /// Who or what the key is for (shown in listings).
        #[arg(long)]
        description: Option<String>,
        /// Expiry as RFC 3339 UTC (2027-01-31T00:00:00Z).
        #[arg(long, value_name = "TIME", conflicts_with = "expires_in")]
        expires_at: Option<String>,
        /// Expiry from now (90d, 12h).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List API keys (never a key or its hash): id, role, scope, state.
    #[command(after_help = EXIT_CODES_HELP)]
    List,
    /// Revoke an API key, at once on every replica.
    #[command(after_help = EXIT_CODES_HELP)]
    Revoke {
        /// The key's id (`bfk_` and 8 characters, from `keys list`).
        id: String,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Role {
    Admin,
    Operator,
    Sender,
    Reader,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Sender => "sender",
            Self::Reader => "reader",
        }
    }
}

/// "more: ..." on stderr when a page has a next one.
fn more_note(out: Output, next: Option<String>, all: bool, what: &str, rerun: &str) -> Output {
    match next {
        Some(n) if !all => out.note(format!(
            "more {what}: add --all, or {rerun} --next {}",
            shell_quote(&n)
        )),
        _ => out,
    }
}

fn items(doc: &Value) -> &[Value] {
    doc.get("items")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

pub async fn tenants(
    client: &AdminClient,
    command: TenantsCommand,
    json: bool,
) -> Result<Output, CliError> {
    let TenantsCommand::List { bot } = command;
    let (doc, _) = client
        .list(
            &["bots", &bot, "tenants"],
            Vec::new(),
            &Paging::everything(),
        )
        .await?;
    if json {
        return Ok(Output::json(&doc));
    }
    let rows: Vec<Vec<String>> = items(&doc)
        .iter()
        .map(|t| {
            vec![
                field(t, "tenant_id"),
                field(t, "conversations"),
                field(t, "active"),
            ]
        })
        .collect();
    let mut out = Output::text(if rows.is_empty() {
        String::new()
    } else {
        table(&["TENANT", "CONVERSATIONS", "ACTIVE"], &rows)
    });
    out = out.note(format!(
        "bot {}: {} tenant(s), {} conversation(s), {} active",
        clean(&bot),
        rows.len(),
        field(&doc, "total_conversations"),
        field(&doc, "active_conversations")
    ));
    if doc.get("complete").and_then(Value::as_bool) == Some(false) {
        out = out.note(
            "incomplete: the bot has more conversations than the API scans for tenants; counts are exact, the tenant list covers the first 200,000 conversations",
        );
    }
    Ok(out)
}

pub async fn conversations(
    client: &AdminClient,
    command: ConversationsCommand,
    json: bool,
) -> Result<Output, CliError> {
    let ConversationsCommand::List {
        bot,
        tenant,
        active,
        page,
    } = command;
    let mut query = Vec::new();
    if let Some(t) = &tenant {
        query.push(("tenant", t.clone()));
    }
    if let Some(a) = active {
        query.push(("active", a.to_string()));
    }
    let (doc, next) = client
        .list(&["bots", &bot, "conversations"], query, &page.paging())
        .await?;
    if json {
        return Ok(Output::json(&doc));
    }
    let rows: Vec<Vec<String>> = items(&doc)
        .iter()
        .map(|c| {
            vec![
                field(c, "conversation_id"),
                field(c, "tenant_id"),
                yes_no(c.get("active")),
                field(c, "inactive_reason"),
                field(c, "inactive_since"),
                field(c, "last_seen"),
            ]
        })
        .collect();
    let out = if rows.is_empty() {
        Output::default().note("no conversations on this page")
    } else {
        Output::text(table(
            &[
                "CONVERSATION",
                "TENANT",
                "ACTIVE",
                "INACTIVE REASON",
                "INACTIVE SINCE",
                "LAST SEEN",
            ],
            &rows,
        ))
    };
    Ok(more_note(
        out,
        next,
        page.all,
        "conversations",
        "rerun with",
    ))
}

fn yes_no(v: Option<&Value>) -> String {
    match v.and_then(Value::as_bool) {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

pub async fn keys(
    client: &AdminClient,
    command: KeysCommand,
    json: bool,
) -> Result<Output, CliError> {
    match command {
        KeysCommand::Create {
            role,
            bots,
            description,
            expires_at,
            expires_in,
        } => {
            let mut body = json!({"role": role.name()});
            if !bots.is_empty() {
                body["bots"] = json!(bots);
            }
            if let Some(d) = description {
                body["description"] = d.into();
            }
            let expires = match (expires_at, expires_in) {
                (Some(at), _) => Some(at),
                (None, Some(d)) => Some(
                    SystemTime::now()
                        .checked_add(d)
                        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                        .ok_or_else(|| {
                            CliError::Usage("--expires-in is too far in the future".into())
                        })?,
                ),
                (None, None) => None,
            };
            if let Some(e) = expires {
                body["expires_at"] = e.into();
            }
            let created = client
                .send(Method::POST, &["keys"], &[], None, Some(&body))
                .await?
                .body;
            if json {
                return Ok(Output::json(&created));
            }
            let key = created.get("key").and_then(Value::as_str).ok_or_else(|| {
                CliError::NotAdminApi {
                    url: client.origin(),
                    reason: "a created key without `key`".into(),
                }
            })?;
            Ok(Output::text(format!("{key}\n")).note(format!(
                "created API key {} (role {}, bots {}, expires {}); store it now: it is shown this once",
                field(&created, "id"),
                field(&created, "role"),
                scope(&created),
                field(&created, "expires_at"),
            )))
        }
        KeysCommand::List => {
            let (doc, _) = client
                .list(&["keys"], Vec::new(), &Paging::everything())
                .await?;
            if json {
                return Ok(Output::json(&doc));
            }
            let rows: Vec<Vec<String>> = items(&doc)
                .iter()
                .map(|k| {
                    vec![
                        field(k, "id"),
                        field(k, "role"),
                        scope(k),
                        field(k, "state"),
                        field(k, "expires_at"),
                        field(k, "created_at"),
                        field(k, "created_by"),
                        field(k, "description"),
                    ]
                })
                .collect();
            if rows.is_empty() {
                return Ok(Output::default().note("no API keys (only the bootstrap key works)"));
            }
            Ok(Output::text(table(
                &[
                    "ID",
                    "ROLE",
                    "BOTS",
                    "STATE",
                    "EXPIRES",
                    "CREATED",
                    "CREATED BY",
                    "DESCRIPTION",
                ],
                &rows,
            )))
        }
        KeysCommand::Revoke { id } => {
            client
                .send(Method::DELETE, &["keys", &id], &[], None, None)
                .await?;
            Ok(if json {
                Output::default()
            } else {
                Output::text(format!("revoked API key {}\n", clean(&id)))
            })
        }
    }
}

/// A key's bot scope: `*` for every bot.
fn scope(key: &Value) -> String {
    match key.get("bots") {
        Some(Value::Array(_)) => field(key, "bots"),
        _ => "*".into(),
    }
}

pub async fn audit(client: &AdminClient, page: PageArgs, json: bool) -> Result<Output, CliError> {
    let (doc, next) = client.list(&["audit"], Vec::new(), &page.paging()).await?;
    if json {
        return Ok(Output::json(&doc));
    }
    let rows: Vec<Vec<String>> = items(&doc)
        .iter()
        .map(|e| {
            vec![
                field(e, "id"),
                field(e, "at"),
                field(e, "key_id"),
                field(e, "role"),
                field(e, "action"),
                field(e, "target"),
                field(e, "outcome"),
                field(e, "status"),
                field(e, "client"),
                field(e, "request_id"),
            ]
        })
        .collect();
    let out = if rows.is_empty() {
        Output::default().note("no audit entries")
    } else {
        Output::text(table(
            &[
                "ID",
                "AT",
                "KEY",
                "ROLE",
                "ACTION",
                "TARGET",
                "OUTCOME",
                "STATUS",
                "CLIENT",
                "REQUEST ID",
            ],
            &rows,
        ))
    };
    Ok(more_note(out, next, page.all, "entries", "rerun with"))
}

/// Token reports fetched at once: enough to be quick, few enough not to
/// look like a flood to the server.
const TOKEN_FETCHES: usize = 8;

pub async fn tokens(
    client: &AdminClient,
    bot: Option<String>,
    json: bool,
) -> Result<Output, CliError> {
    let one_bot = bot.is_some();
    let reports: Vec<Value> = match bot {
        Some(b) => vec![client.get(&["bots", &b, "token"], &[]).await?.body],
        None => {
            let (doc, _) = client
                .list(&["bots"], Vec::new(), &Paging::everything())
                .await?;
            let ids: Vec<String> = items(&doc)
                .iter()
                .filter_map(|b| b.get("id").and_then(Value::as_str).map(str::to_string))
                .collect();
            futures::stream::iter(ids)
                .map(|id| async move {
                    match client.get(&["bots", &id, "token"], &[]).await {
                        Ok(a) => Ok(Some(a.body)),
                        // Removed since the listing: nothing to report.
                        Err(e) if e.check() == Some("bot_not_found") => Ok(None),
                        Err(e) => Err(e),
                    }
                })
                .buffered(TOKEN_FETCHES)
                .try_filter_map(|r| async move { Ok(r) })
                .try_collect()
                .await?
        }
    };
    if json {
        // One bot: its report as the API answers it; every bot: the reports
        // as a listing.
        return Ok(Output::json(&match (one_bot, reports.first()) {
            (true, Some(report)) => report.clone(),
            _ => json!({"items": reports}),
        }));
    }
    let mut rows = Vec::new();
    for r in &reports {
        let entries = items_of(r, "entries");
        if entries.is_empty() {
            rows.push(vec![
                field(r, "bot"),
                field(r, "credential"),
                "no".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                if r.get("credential").is_some_and(Value::is_null) {
                    "no credential: the bot cannot reply".into()
                } else {
                    "no token requested yet".into()
                },
            ]);
        }
        for e in entries {
            rows.push(vec![
                field(r, "bot"),
                field(e, "credential"),
                yes_no(e.get("cached")),
                field(e, "authority"),
                field(e, "expires_at"),
                field(e, "last_refresh"),
                field(e, "last_error_at"),
                field(e, "last_error"),
            ]);
        }
    }
    if rows.is_empty() {
        return Ok(Output::default().note("no bots"));
    }
    Ok(Output::text(table(
        &[
            "BOT",
            "CREDENTIAL",
            "CACHED",
            "AUTHORITY",
            "EXPIRES",
            "LAST REFRESH",
            "LAST ERROR AT",
            "LAST ERROR",
        ],
        &rows,
    )))
}

fn items_of<'a>(v: &'a Value, name: &str) -> &'a [Value] {
    v.get(name)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}
