//! `crossway`: the gateway and its operator commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use crossway::config::Settings;
use crossway::startup::Application;
use crossway::store::Store;
use crossway::telemetry;

/// Request handling allocates many short-lived JSON values across threads; mimalloc's
/// per-thread heaps do that with far less contention than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "crossway",
    version,
    about = "Social-care referral gateway: FHIR R4, HL7 v2 and a CBO API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (default: config/default.toml when present).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Apply schema migrations and exit.
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match &cli.command {
        Command::Serve { config } | Command::Migrate { config } => config.clone(),
    };
    let settings = match Settings::load(config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("crossway: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { .. } => {
                let app = Application::build(settings).await?;
                app.run_until_stopped().await?;
                Ok(())
            }
            Command::Migrate { .. } => {
                let store = Store::open(&settings.effective_database_url()).await?;
                store.close().await;
                tracing::info!(message = "Migrations applied.");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e: anyhow::Error = e;
            tracing::error!(message = "Crossway stopped.", error = %e);
            ExitCode::FAILURE
        }
    }
}
