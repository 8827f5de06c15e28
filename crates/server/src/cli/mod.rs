//! The admin commands of `botfleet`: `bots`, `tenants`, `conversations`,
//! `keys`, `audit`, `tokens`, each a client of the admin API (`/admin/v1`,
//! docs/admin-api.md) of a running `botfleet serve`.
//!
//! - [`client`]: where the API is (`--url`, `BOTFLEET_URL`), the key
//!   (`--key`, `--key-file`, `BOTFLEET_KEY`, `BOTFLEET_KEY_FILE`), one call,
//!   every page of a listing;
//! - [`bots`], [`resources`]: one function per command;
//! - [`output`]: tables for people, the API's JSON for scripts (`--json`);
//! - [`error`]: every failure as one line and a documented exit code.
//!
//! The key is held as a [`botfleet_auth::Secret`] from the moment it is read
//! and only ever leaves the process in the `Authorization` header.

mod bots;
mod client;
mod error;
mod graph;
mod notify;
mod output;
mod resources;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use bots::BotsCommand;
use client::{parse_base_url, AdminClient, KeyInputs};
use error::{CliError, Exit, EXIT_CODES_HELP};
use output::Output;
use resources::{ConversationsCommand, KeysCommand, PageArgs, TenantsCommand};

/// How to reach the admin API; accepted by every admin command, before or
/// after its subcommand.
#[derive(Args, Debug)]
#[command(next_help_heading = "Admin API connection and output")]
pub struct ClientArgs {
    /// The admin listener (`[server] admin_listen`), e.g. http://127.0.0.1:9090
    /// or https://botfleet-admin.example.com.
    #[arg(
        long,
        env = "BOTFLEET_URL",
        default_value = "http://127.0.0.1:9090",
        global = true
    )]
    url: String,
    /// The API key. Other users of the host can see command lines: prefer
    /// --key-file or BOTFLEET_KEY (or BOTFLEET_KEY_FILE).
    #[arg(long, global = true, value_name = "KEY")]
    key: Option<String>,
    /// File whose first line is the API key (`-`: standard input).
    #[arg(long, global = true, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Print the admin API's JSON (pretty-printed) instead of tables; with
    /// --all, one document with every item. On an API error, its problem
    /// document goes to stdout too.
    #[arg(long, global = true)]
    json: bool,
    /// Give up on a request after this long (`30s`, `2m`).
    #[arg(long, global = true, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// The admin commands, flattened into `botfleet`'s subcommands.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Bots over the admin API: list, show, add, update, remove.
    #[command(after_help = EXIT_CODES_HELP)]
    Bots {
        // Boxed: the registration flags make it the largest by far.
        #[command(subcommand)]
        command: Box<BotsCommand>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A bot's tenants with conversation counts.
    #[command(after_help = EXIT_CODES_HELP)]
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A bot's conversations (the references botfleet keeps) and their state.
    #[command(after_help = EXIT_CODES_HELP)]
    Conversations {
        #[command(subcommand)]
        command: ConversationsCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Admin API keys: create, list, revoke (admin role).
    #[command(after_help = EXIT_CODES_HELP)]
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The audit log: every change and every refused call, oldest first.
    #[command(after_help = EXIT_CODES_HELP)]
    Audit {
        #[command(flatten)]
        page: PageArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send a proactive notification and follow it to its end: a progress
    /// bar (delivered, failed, retrying, rate, ETA), then the failures by
    /// reason (exit 5 when targets failed). --detach returns at once.
    #[command(after_help = EXIT_CODES_HELP)]
    Notify {
        #[command(flatten)]
        args: Box<notify::NotifyArgs>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Notification jobs: show (state, counts, failures), cancel.
    #[command(after_help = EXIT_CODES_HELP)]
    Notifications {
        #[command(subcommand)]
        command: notify::NotificationsCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delegated Graph credentials: sign-in (prints the URL), status, refresh.
    #[command(after_help = EXIT_CODES_HELP)]
    Graph {
        #[command(subcommand)]
        command: graph::GraphCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Outbound (Bot Connector) token status per bot, as the answering
    /// replica sees it: cached, expiry, last refresh, last failure. Never a
    /// token.
    #[command(after_help = EXIT_CODES_HELP)]
    Tokens {
        /// Only this bot (default: every bot).
        #[arg(long)]
        bot: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

impl AdminCommand {
    fn client_args(&self) -> &ClientArgs {
        match self {
            Self::Bots { client, .. }
            | Self::Tenants { client, .. }
            | Self::Conversations { client, .. }
            | Self::Keys { client, .. }
            | Self::Audit { client, .. }
            | Self::Tokens { client, .. }
            | Self::Notify { client, .. }
            | Self::Notifications { client, .. }
            | Self::Graph { client, .. } => client,
        }
    }
}

/// Runs an admin command: its result on stdout, notes and errors (one line
/// each) on stderr, and the exit code of [`Exit`].
pub fn run(command: AdminCommand) -> ExitCode {
    let json = command.client_args().json;
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start the async runtime: {e}")))
        .and_then(|rt| rt.block_on(dispatch(command)));
    match result {
        Ok(out) => {
            for note in &out.notes {
                eprintln!("{note}");
            }
            write_stdout(&out.stdout);
            ExitCode::from(Exit::Ok as u8)
        }
        Err(e) => {
            if json {
                if let Some(doc) = e.json() {
                    write_stdout(&Output::json(doc).stdout);
                }
            }
            eprintln!("botfleet: {e}");
            ExitCode::from(e.exit() as u8)
        }
    }
}

/// Writes stdout; a closed pipe (`| head`) is not an error worth a panic.
fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

async fn dispatch(command: AdminCommand) -> Result<Output, CliError> {
    let args = command.client_args();
    let base = parse_base_url(&args.url)?;
    let (key, source) = KeyInputs::from_env(args.key.clone(), args.key_file.clone()).resolve()?;
    let (client, warnings) = AdminClient::new(base, key, source, args.timeout)?;
    for w in warnings {
        eprintln!("botfleet: {w}");
    }
    let json = args.json;
    match command {
        AdminCommand::Bots { command, .. } => bots::run(&client, *command, json).await,
        AdminCommand::Tenants { command, .. } => resources::tenants(&client, command, json).await,
        AdminCommand::Conversations { command, .. } => {
            resources::conversations(&client, command, json).await
        }
        AdminCommand::Keys { command, .. } => resources::keys(&client, command, json).await,
        AdminCommand::Audit { page, .. } => resources::audit(&client, page, json).await,
        AdminCommand::Tokens { bot, .. } => resources::tokens(&client, bot, json).await,
        AdminCommand::Notify { args, .. } => notify::notify(&client, *args, json).await,
        AdminCommand::Notifications { command, .. } => {
            notify::notifications(&client, command, json).await
        }
        AdminCommand::Graph { command, .. } => graph::run(&client, command, json).await,
    }
}
