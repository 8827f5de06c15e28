//! `botfleet`: hosts many Microsoft Teams bots in one deployment.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Run the server: POST /api/messages and /api/messages/{bot} for Teams,
    /// /healthz, /readyz and /metrics for the platform.
    ///
    /// Configuration: embedded defaults, then the file, then BOTFLEET__SECTION__KEY
    /// environment variables. With no configuration at all it starts on the
    /// defaults (memory store, no bots, 127.0.0.1:3978).
    Serve {
        /// TOML configuration file (see docs/configuration.md).
        #[arg(long, short, env = "BOTFLEET_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Load and validate the configuration, print what would run, and exit:
    /// 0 when valid, 2 with a message naming the bad key otherwise.
    CheckConfig {
        #[arg(long, short, env = "BOTFLEET_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let settings = match botfleet_server::settings::Settings::load(config.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("botfleet: {e}");
                    return ExitCode::from(2);
                }
            };
            botfleet_server::init_logging(&settings.server.log_format);
            let system = actix_web::rt::System::new();
            match system.block_on(botfleet_server::serve(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "botfleet stopped");
                    eprintln!("botfleet: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config } => {
            match botfleet_server::settings::Settings::load(config.as_deref()) {
                Ok(s) => {
                    println!(
                        "configuration is valid: {} bot(s), store {:?}, listen {}",
                        s.bots.len(),
                        s.store.backend,
                        s.server.listen
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("botfleet: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
