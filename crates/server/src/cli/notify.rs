//! `botfleet notify` (send a notification and follow it to its end with a
//! progress bar) and `botfleet notifications show|cancel`. The API is
//! docs/notifications.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::client::AdminClient;
use super::error::CliError;
use super::output::{clean, key_values, Output};

/// Failed targets printed per reason (the rest are counted).
const SHOWN_PER_REASON: usize = 10;
/// Failed targets read to group them by reason.
const FAILED_READ_MAX: usize = 10_000;

/// What `botfleet notify` sends, to whom.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("to").required(true).args(["conversation", "tenant", "all", "channel", "user"])))]
#[command(group(ArgGroup::new("what").required(true).args(["text", "card", "activity"])))]
pub struct NotifyArgs {
    /// The bot that sends.
    #[arg(long)]
    bot: String,
    /// A conversation id with a stored reference (repeatable).
    #[arg(long, value_name = "ID")]
    conversation: Vec<String>,
    /// Every active conversation of the bot in this tenant.
    #[arg(long, value_name = "TENANT_ID")]
    tenant: Option<String>,
    /// Every active conversation of the bot.
    #[arg(long)]
    all: bool,
    /// A new thread in this channel (with --team).
    #[arg(long, value_name = "CHANNEL_ID", requires = "team")]
    channel: Option<String>,
    /// The team of --channel.
    #[arg(long, value_name = "TEAM_ID", requires = "channel")]
    team: Option<String>,
    /// A user by Entra object id and tenant, `OID@TENANT` (repeatable): the
    /// 1:1 chat is created when needed.
    #[arg(long, value_name = "OID@TENANT")]
    user: Vec<String>,
    /// A plain text message.
    #[arg(long)]
    text: Option<String>,
    /// An Adaptive Card (JSON file; `-`: stdin), sent as an attachment.
    #[arg(long, value_name = "FILE.json")]
    card: Option<PathBuf>,
    /// A whole Bot Framework activity (JSON file; `-`: stdin).
    #[arg(long, value_name = "FILE.json")]
    activity: Option<PathBuf>,
    /// Makes a retried command safe: the same key and request return the same
    /// job and send nothing again.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Print the job and return at once instead of following it.
    #[arg(long)]
    detach: bool,
}

#[derive(Subcommand, Debug)]
pub enum NotificationsCommand {
    /// A job: state, counts, rate, times (with --failed, its failed targets).
    Show {
        job: String,
        /// Also list the failed targets with their reasons.
        #[arg(long)]
        failed: bool,
    },
    /// Cancel what is not sent yet.
    Cancel { job: String },
    /// A bot's jobs, newest first (id, state, counts, created).
    List {
        /// The bot whose jobs to list.
        #[arg(long)]
        bot: String,
        /// Only jobs in this state: queued, running, completed, cancelled, failed.
        #[arg(long, value_parser = ["queued", "running", "completed", "cancelled", "failed"])]
        state: Option<String>,
        /// Items per request, 1 to 1000 (default 100).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
        /// Start after this cursor (the `next` of a previous page).
        #[arg(long, value_name = "CURSOR")]
        next: Option<String>,
        /// Follow every page to the end.
        #[arg(long)]
        all: bool,
    },
}

fn read_json_file(flag: &str, path: &Path) -> Result<Value, CliError> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| CliError::Usage(format!("{flag}: cannot read stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("{flag} {}: {e}", path.display())))?
    };
    serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{flag} {}: not JSON: {e}", path.display())))
}

/// The request body of `notify`'s flags.
pub fn request_body(args: &NotifyArgs) -> Result<Value, CliError> {
    let targets = if !args.conversation.is_empty() {
        json!({"conversations": args.conversation})
    } else if let Some(t) = &args.tenant {
        json!({"tenant": t})
    } else if args.all {
        json!({"all": true})
    } else if let (Some(channel), Some(team)) = (&args.channel, &args.team) {
        json!({"channel": {"team": team, "channel": channel}})
    } else {
        let mut users = Vec::new();
        for u in &args.user {
            match u.rsplit_once('@') {
                Some((oid, tenant)) if !oid.is_empty() && !tenant.is_empty() => {
                    users.push(json!({"id": oid, "tenant": tenant}))
                }
                _ => {
                    return Err(CliError::Usage(format!(
                        "--user `{u}`: expected OBJECT_ID@TENANT_ID (Teams needs the user's tenant)"
                    )))
                }
            }
        }
        json!({ "users": users })
    };
    let activity = if let Some(text) = &args.text {
        json!({"type": "message", "text": text})
    } else if let Some(card) = &args.card {
        let card = read_json_file("--card", card)?;
        if card.get("type").and_then(Value::as_str) != Some("AdaptiveCard") {
            return Err(CliError::Usage(
                "--card: the file is JSON but not an Adaptive Card (its \"type\" must be \"AdaptiveCard\")".into(),
            ));
        }
        json!({"type": "message", "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}
        ]})
    } else if let Some(file) = &args.activity {
        read_json_file("--activity", file)?
    } else {
        return Err(CliError::Usage("give --text, --card or --activity".into()));
    };
    Ok(json!({"targets": targets, "activity": activity}))
}

fn count(job: &Value, name: &str) -> u64 {
    job["counts"][name].as_u64().unwrap_or(0)
}

fn is_final(job: &Value) -> bool {
    matches!(
        job["state"].as_str(),
        Some("completed" | "cancelled" | "failed")
    )
}

/// `botfleet notify`.
pub async fn notify(
    client: &AdminClient,
    args: NotifyArgs,
    json: bool,
) -> Result<Output, CliError> {
    let body = request_body(&args)?;
    let extra: Vec<(&'static str, String)> = args
        .idempotency_key
        .iter()
        .map(|k| ("idempotency-key", k.clone()))
        .collect();
    let created = client
        .send_with(
            Method::POST,
            &["bots", &args.bot, "notifications"],
            &[],
            None,
            Some(&body),
            &extra,
        )
        .await
        .map_err(|e| match e.check() {
            Some("idempotency_conflict") => e.with_hint(
                "this --idempotency-key was used for another notification; pick a new one",
            ),
            _ => e,
        })?;
    let job = created.body;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    if args.detach {
        return Ok(show(&job, json).note(format!(
            "notification {id} accepted; follow it with `botfleet notifications show {id}`"
        )));
    }
    // The id first: interrupting the CLI stops following, not the job.
    eprintln!(
        "notification {id} accepted; following it (Ctrl-C stops following, not sending: `botfleet notifications show {id}`, `botfleet notifications cancel {id}`)"
    );
    let job = follow(client, &id, json).await?;
    finish(client, job, json).await
}

/// Polls the job until it is final, drawing a progress bar on stderr (not
/// with --json, nor when stderr is not a terminal).
async fn follow(client: &AdminClient, id: &str, json: bool) -> Result<Value, CliError> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
    };
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ({per_sec}, ETA {eta})")
    {
        bar.set_style(style);
    }
    loop {
        let job = client.get(&["notifications", id], &[]).await?.body;
        let done = count(&job, "delivered") + count(&job, "failed") + count(&job, "cancelled");
        bar.set_length(count(&job, "total").max(done));
        bar.set_position(done);
        bar.set_message(format!(
            "delivered {} failed {} retrying {}",
            count(&job, "delivered"),
            count(&job, "failed"),
            count(&job, "retrying")
        ));
        if is_final(&job) {
            bar.finish_and_clear();
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The job's failed targets, by reason (at most [`FAILED_READ_MAX`] read).
async fn failures(client: &AdminClient, id: &str) -> Result<Vec<Value>, CliError> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut query = vec![
            ("state", "failed".to_string()),
            ("limit", "1000".to_string()),
        ];
        if let Some(n) = &next {
            query.push(("next", n.clone()));
        }
        let page = client
            .get(&["notifications", id, "targets"], &query)
            .await?
            .body;
        if let Some(items) = page["items"].as_array() {
            out.extend(items.iter().cloned());
        }
        match page["next"].as_str() {
            Some(n) if out.len() < FAILED_READ_MAX => next = Some(n.to_string()),
            _ => return Ok(out),
        }
    }
}

/// Failed targets grouped by reason, as text lines.
fn by_reason(failed: &[Value]) -> String {
    let mut groups: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for f in failed {
        let reason = f["error"]["code"].as_str().unwrap_or("unknown").to_string();
        groups.entry(reason).or_default().push(f);
    }
    let mut out = String::new();
    for (reason, items) in groups {
        out.push_str(&format!("{} ({}):\n", clean(&reason), items.len()));
        for f in items.iter().take(SHOWN_PER_REASON) {
            let detail = f["error"]["message"].as_str().unwrap_or("");
            out.push_str(&format!(
                "  {}  {}\n",
                clean(f["id"].as_str().unwrap_or("")),
                clean(detail)
            ));
        }
        if items.len() > SHOWN_PER_REASON {
            out.push_str(&format!(
                "  ... and {} more\n",
                items.len() - SHOWN_PER_REASON
            ));
        }
    }
    out
}

fn show(job: &Value, json: bool) -> Output {
    if json {
        return Output::json(job);
    }
    let mut flat = job.clone();
    if let Some(obj) = flat.as_object_mut() {
        for name in [
            "total",
            "pending",
            "sending",
            "retrying",
            "delivered",
            "failed",
            "cancelled",
        ] {
            obj.insert(name.into(), job["counts"][name].clone());
        }
        let reasons: Vec<String> = job["counts"]["failed_by_reason"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
            .unwrap_or_default();
        obj.insert("failed_by_reason".into(), Value::from(reasons.join(", ")));
    }
    Output::text(key_values(
        &flat,
        &[
            "id",
            "bot",
            "state",
            "total",
            "delivered",
            "failed",
            "failed_by_reason",
            "retrying",
            "pending",
            "cancelled",
            "rate_per_sec",
            "created_at",
            "started_at",
            "finished_at",
            "error",
        ],
    ))
}

/// Prints the final job; failed targets make the exit code 5.
async fn finish(client: &AdminClient, job: Value, json: bool) -> Result<Output, CliError> {
    let id = job["id"].as_str().unwrap_or_default().to_string();
    let failed_count = count(&job, "failed");
    if count(&job, "total") == 0 && job["state"] == "completed" {
        return Ok(show(&job, json).note(
            "no conversation matched the targets: nothing was sent (check the tenant, conversation or channel ids)",
        ));
    }
    if failed_count == 0 && job["state"] != "failed" {
        return Ok(show(&job, json));
    }
    let failed = failures(client, &id).await?;
    let out = if json {
        Output::json(&json!({"notification": job, "failed": failed}))
    } else {
        let mut text = show(&job, false).stdout;
        text.push_str(&format!(
            "\nfailed targets by reason:\n{}",
            by_reason(&failed)
        ));
        Output::text(text)
    };
    super::write_stdout(&out.stdout);
    Err(CliError::TargetsFailed(match job["error"].as_str() {
        Some(e) => format!("notification {id} failed: {}", clean(e)),
        None => format!(
            "notification {id}: {failed_count} target(s) failed (listed above by reason; `botfleet notifications show {id} --failed`)"
        ),
    }))
}

/// `botfleet notifications show|cancel`.
pub async fn notifications(
    client: &AdminClient,
    command: NotificationsCommand,
    json: bool,
) -> Result<Output, CliError> {
    match command {
        NotificationsCommand::Show { job, failed } => {
            let doc = client.get(&["notifications", &job], &[]).await?.body;
            if !failed {
                return Ok(show(&doc, json));
            }
            let list = failures(client, &job).await?;
            if json {
                return Ok(Output::json(&json!({"notification": doc, "failed": list})));
            }
            let mut text = show(&doc, false).stdout;
            text.push_str(&format!(
                "\nfailed targets by reason:\n{}",
                by_reason(&list)
            ));
            Ok(Output::text(text))
        }
        NotificationsCommand::List {
            bot,
            state,
            limit,
            next,
            all,
        } => {
            let mut query = Vec::new();
            if let Some(s) = state {
                query.push(("state", s));
            }
            let paging = super::client::Paging {
                limit: limit.or(all.then_some(1000)),
                next,
                all,
            };
            let (doc, next) = client
                .list(&["bots", &bot, "notifications"], query, &paging)
                .await?;
            if json {
                return Ok(Output::json(&doc));
            }
            let rows: Vec<Vec<String>> = doc["items"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|j| {
                    let c = &j["counts"];
                    vec![
                        super::output::field(j, "id"),
                        super::output::field(j, "state"),
                        super::output::cell(&c["total"]),
                        super::output::cell(&c["delivered"]),
                        super::output::cell(&c["failed"]),
                        super::output::field(j, "created_at"),
                    ]
                })
                .collect();
            let mut out = Output::text(super::output::table(
                &["ID", "STATE", "TOTAL", "DELIVERED", "FAILED", "CREATED"],
                &rows,
            ));
            if let Some(n) = next {
                out = out.note(format!("more: --next {}", super::output::shell_quote(&n)));
            }
            Ok(out)
        }
        NotificationsCommand::Cancel { job } => {
            let doc = client
                .send(Method::DELETE, &["notifications", &job], &[], None, None)
                .await?
                .body;
            let note = match doc["state"].as_str() {
                Some("cancelled") => {
                    format!("notification {job} cancelled: targets not sent yet will not be sent")
                }
                state => format!(
                    "notification {job} had already ended ({}): nothing to cancel",
                    state.unwrap_or("unknown")
                ),
            };
            Ok(show(&doc, json).note(note))
        }
    }
}
