//! `botfleet`: hosts many Microsoft Teams bots in one deployment.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "botfleet",
    version,
    about = "Hosts many Microsoft Teams / Bot Framework bots in one deployment"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: POST /api/messages and /api/messages/{bot} for Teams on
    /// [server] listen; the admin API (/admin/v1), /healthz, /readyz and
    /// /metrics on [server] admin_listen (default 127.0.0.1:9090).
    ///
    /// Configuration: embedded defaults, then the file, then BOTFLEET__SECTION__KEY
    /// environment variables. With no configuration at all it starts on the
    /// defaults (memory store, no bots, 127.0.0.1:3978).
    Serve {
        /// TOML configuration file (see docs/configuration.md).
        #[arg(long, short, env = "BOTFLEET_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Load and check the configuration exactly as `serve` does (every key,
    /// every file a key names, no network), then print the effective
    /// configuration with secrets redacted. Exit 0 when `serve` would accept it,
    /// 2 otherwise, naming each problem by key path and file and line or
    /// environment variable: the first key of a wrong type or name, else every
    /// invalid value at once.
    CheckConfig {
        /// TOML configuration file (see docs/configuration.md).
        #[arg(long, short, env = "BOTFLEET_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Admin commands (bots, tenants, conversations, keys, audit, tokens): a
    /// client of a running botfleet's admin API, in src/cli/.
    #[command(flatten)]
    Admin(cli::AdminCommand),
}

/// Exit code of a configuration that cannot be used (`serve` and `check-config`).
const EXIT_INVALID_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let config = match botfleet_server::settings::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    // Logging is not set up yet (its format is configuration):
                    // this is the one place the error is printed.
                    eprintln!("botfleet: {e}");
                    return ExitCode::from(EXIT_INVALID_CONFIG);
                }
            };
            // Before the runtime: the span exporter's blocking HTTP client
            // must not be built inside one.
            let tracing = match botfleet_server::init_logging(&config.settings) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("botfleet: telemetry.otlp_endpoint: {e}");
                    return ExitCode::from(EXIT_INVALID_CONFIG);
                }
            };
            if let Some(endpoint) = tracing.endpoint() {
                tracing::info!(%endpoint, "exporting spans over OTLP/HTTP");
            }
            // The one metrics registry (`/metrics`, and OTLP when an endpoint
            // is configured), before the runtime for the same reason.
            match botfleet_server::metrics::install(&config.settings) {
                Ok(Some(endpoint)) => {
                    tracing::info!(%endpoint, "exporting metrics over OTLP/HTTP")
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("botfleet: telemetry: {e}");
                    return ExitCode::from(EXIT_INVALID_CONFIG);
                }
            }
            let system = actix_web::rt::System::new();
            let code = match system.block_on(botfleet_server::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "botfleet stopped");
                    ExitCode::FAILURE
                }
            };
            // Outside the runtime, after the server stopped: the spans still
            // queued are exported (bounded by the export timeout).
            botfleet_telemetry::metrics::shutdown();
            if let Err(e) = tracing.shutdown() {
                tracing::warn!(error = %e, "spans still queued at exit were not all exported");
            }
            code
        }
        Command::CheckConfig { config } => match botfleet_server::settings::load(config.as_deref())
        {
            Ok(c) => {
                let s = &c.settings;
                let mut text = format!(
                    "configuration is valid: {} bot(s), store {}, listen {}, admin {}\n",
                    s.bots.len(),
                    match s.store.backend {
                        botfleet_server::settings::StoreBackend::Memory => "memory",
                        botfleet_server::settings::StoreBackend::Redis => "redis",
                    },
                    s.server.listen,
                    s.server.admin_listen
                );
                for notice in &c.notices {
                    text.push_str(&format!("note: {notice}\n"));
                }
                text.push_str(&format!(
                    "\n# effective configuration (defaults, file and environment merged; secrets redacted)\n{}\n",
                    c.effective_toml()
                ));
                // write_all, not println!: a reader that stops early
                // (`check-config | head -2`) closes the pipe, which println!
                // turns into a panic. The verdict is the exit code.
                let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("botfleet: {e}");
                ExitCode::from(EXIT_INVALID_CONFIG)
            }
        },
        Command::Admin(command) => cli::run(command),
    }
}
