//! `botfleet-sim`: the Microsoft side of Teams bots, on 127.0.0.1.

use std::path::PathBuf;
use std::process::ExitCode;

use botfleet_sim::{client, BotRegistration, SimConfig};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "botfleet-sim",
    version,
    about = "A local stand-in for the Microsoft side of Teams bots: Bot Framework token issuer \
             (OpenID metadata, JWKS, signed channel tokens), Entra token endpoint, and a Bot \
             Connector that records what it receives, enforces Teams rate limits and injects faults."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the sim on 127.0.0.1 until SIGINT/SIGTERM. Prints one JSON line
    /// {"ready":true,"url":...} on stdout once it accepts connections.
    ///
    /// Serves: OpenID metadata (/v1/.well-known/openidconfiguration) and JWKS
    /// (/v1/.well-known/keys: the active key endorsed for msteams, one endorsed
    /// for webchat only); the token endpoint POST /{tenant}/oauth2/v2.0/token
    /// (client credentials of the --bot bots: secret, certificate or federated
    /// assertion); managed identity tokens at /metadata/identity/oauth2/token
    /// and /msi/token; the Bot Connector under any prefix before
    /// /v3/conversations (service URL e.g. http://127.0.0.1:PORT/amer/), which
    /// accepts only tokens this sim signed for https://api.botframework.com
    /// (from its token endpoint or managed identity endpoints), answers 404 for
    /// conversations neither registered (POST /_sim/conversations) nor created,
    /// and 429 with Retry-After when Teams' rate limits are broken; and the test
    /// API under /_sim/ (tokens, keys/rotate, bots, conversations, faults,
    /// activities, token-requests, violations, stats, reset, health).
    Serve(ServeArgs),
    /// Post one signed activity to a bot endpoint, as Teams would.
    Send(client::SendArgs),
    /// Drive a bot endpoint with signed activities and print throughput and latency.
    Load(client::LoadArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// TCP port on 127.0.0.1 (the sim never listens on other interfaces).
    /// 0 picks a free port; the ready line tells which.
    #[arg(long, default_value_t = 4100, env = "BOTFLEET_SIM_PORT")]
    port: u16,

    /// PEM file with the RSA-2048 signing keys (PKCS#8; the first key is active,
    /// the second the published key endorsed for `webchat` only). Created with
    /// fresh keys if missing, so later runs publish the same key ids. Without
    /// it, keys are generated in memory on every start. Keys made by
    /// POST /_sim/keys/rotate live in memory only.
    #[arg(long, value_name = "PATH", env = "BOTFLEET_SIM_KEY_FILE")]
    key_file: Option<PathBuf>,

    /// A bot whose client credentials the token endpoint accepts (repeatable).
    /// Without TENANT the bot is multi-tenant and gets tokens from
    /// /botframework.com/oauth2/v2.0/token; with TENANT only from
    /// /TENANT/oauth2/v2.0/token. The secret must not contain ':'. More bots
    /// (certificates, federated credentials) can be added with POST /_sim/bots.
    #[arg(long = "bot", value_name = "APP_ID:SECRET[:TENANT]", value_parser = BotRegistration::parse_flag)]
    bots: Vec<BotRegistration>,

    /// Lifetime in seconds of tokens from the token endpoint (expires_in) and
    /// the default lifetime of tokens minted with POST /_sim/tokens.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    token_lifetime: u64,

    /// Issuer (`iss`) of channel -> bot tokens and of the OpenID metadata document.
    #[arg(long, default_value = "https://api.botframework.com")]
    issuer: String,

    /// Base URL written into the metadata documents (jwks_uri, token_endpoint)
    /// when clients reach the sim through another address than
    /// http://127.0.0.1:PORT (a proxy, a TLS terminator).
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,

    /// Value the App Service managed identity endpoint (/msi/token) requires in
    /// the X-IDENTITY-HEADER request header.
    #[arg(long, value_name = "VALUE", default_value = "sim-identity-header")]
    identity_header: String,

    /// Also write the ready JSON line to this file (written once listening).
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,

    /// HTTP worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,

    /// How many recent activities, violations and token requests the
    /// inspection API keeps (each); totals are counted regardless.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    max_records: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_tracing();
            match serve(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("botfleet-sim: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Send(args) => client::exit_code(client::send::run(args).await),
        Command::Load(args) => client::exit_code(client::load::run(args).await),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(args: ServeArgs) -> Result<(), botfleet_sim::SimError> {
    let config = SimConfig {
        port: args.port,
        key_file: args.key_file,
        bots: args.bots,
        conversations: Vec::new(),
        token_lifetime_secs: args.token_lifetime,
        issuer: args.issuer,
        public_url: args.public_url,
        identity_header: args.identity_header,
        max_records: args.max_records,
        workers: args.workers,
    };
    let running = botfleet_sim::start(config).await?;
    let ready = running.ready_line();
    if let Some(path) = &args.ready_file {
        write_ready_file(path, &ready)?;
    }
    println!("{ready}");
    let handle = running.stop_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received, stopping");
        handle.stop(true).await;
    });
    running.wait().await
}

fn write_ready_file(path: &std::path::Path, ready: &str) -> Result<(), botfleet_sim::SimError> {
    let err = |source| botfleet_sim::SimError::ReadyFile {
        path: path.to_owned(),
        source,
    };
    // Rename into place so a watcher never reads half a line.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{ready}\n")).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
