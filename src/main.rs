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
    /// Feed messages that were not applied (dead letters, rejected, identity conflicts).
    Dlq {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The person index: conflicts to review, merges and unlinks.
    Identity {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: IdentityCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// One line per message waiting for a human, oldest first.
    List,
    /// One message in full, with its raw text.
    Show { id: String },
    /// Re-run messages through the current mappings.
    Replay {
        /// Message id (from `dlq list`).
        id: Option<String>,
        /// Every message in the list.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Messages whose identifiers named several persons.
    Conflicts,
    /// Who an identifier (`system|value`) names, with all of that person's identifiers.
    Show { identifier: String },
    /// Retire the person named by `--retired` into the one named by `--survivor`.
    Merge {
        #[arg(long)]
        survivor: String,
        #[arg(long)]
        retired: String,
    },
    /// Undo the merge that made `identifier` an alias.
    Unmerge { identifier: String },
}

mod operator {
    //! Operator commands: print for people, exit non-zero when something failed.

    use super::{DlqCommand, IdentityCommand};
    use crossway::config::Settings;
    use crossway::fhir::datetime::format_instant;
    use crossway::identity::Identifier;
    use crossway::startup::operator_tools;

    fn identifier(token: &str) -> anyhow::Result<Identifier> {
        match token.split_once('|') {
            Some((system, value)) if !system.is_empty() && !value.is_empty() => {
                Ok(Identifier::new(system, value, None))
            }
            _ => anyhow::bail!("identifier {token:?} must be system|value"),
        }
    }

    pub async fn dlq(settings: &Settings, command: DlqCommand) -> anyhow::Result<()> {
        let (store, feed) = operator_tools(settings).await?;
        match command {
            DlqCommand::List => {
                for m in store.dead_letters().await? {
                    println!(
                        "{}  {}  {}  {}  {}  {}  {}",
                        m.id,
                        format_instant(m.received_at),
                        m.status,
                        m.source,
                        m.control_id,
                        m.event,
                        m.error.unwrap_or_default()
                    );
                }
            }
            DlqCommand::Show { id } => {
                let m = store
                    .inbound_message(&id)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no message {id}"))?;
                println!(
                    "id: {}\nreceived: {}\nstatus: {}\nsource: {}\ncontrol id: {}\nformat: {}\nevent: {}\nerror: {}\n",
                    m.id,
                    format_instant(m.received_at),
                    m.status,
                    m.source,
                    m.control_id,
                    m.format,
                    m.event,
                    m.error.as_deref().unwrap_or("")
                );
                println!("{}", m.body.replace('\r', "\n"));
            }
            DlqCommand::Replay { id, all } => {
                let messages = match (id, all) {
                    (Some(id), _) => vec![
                        store
                            .inbound_message(&id)
                            .await?
                            .ok_or_else(|| anyhow::anyhow!("no message {id}"))?,
                    ],
                    (None, true) => store.dead_letters().await?,
                    (None, false) => anyhow::bail!("name a message id or pass --all"),
                };
                let mut failed = 0;
                for m in &messages {
                    match feed.replay(m).await {
                        Ok(taken) => println!("{}  replayed: {taken:?}", m.id),
                        Err(e) => {
                            failed += 1;
                            println!("{}  still failing: {e}", m.id);
                        }
                    }
                }
                if failed > 0 {
                    anyhow::bail!("{failed} of {} messages still fail", messages.len());
                }
            }
        }
        Ok(())
    }

    pub async fn identity(settings: &Settings, command: IdentityCommand) -> anyhow::Result<()> {
        let (store, feed) = operator_tools(settings).await?;
        match command {
            IdentityCommand::Conflicts => {
                for c in store.open_conflicts().await? {
                    println!(
                        "{}  {}  {}  {}  {}  persons: {}",
                        c.id,
                        format_instant(c.created_at),
                        c.source,
                        c.message_id,
                        c.reason,
                        c.persons.join(", ")
                    );
                }
            }
            IdentityCommand::Show { identifier: token } => {
                let id = identifier(&token)?;
                let person = store
                    .identifier_owner(&id)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("nobody is named {token}"))?;
                println!("person {}  client_ref {}", person.id, person.client_ref);
                for (i, retired) in store.person_identifiers(&person.id).await? {
                    let alias = if retired { "  (retired alias)" } else { "" };
                    println!("  {}{alias}", i.token());
                }
            }
            IdentityCommand::Merge { survivor, retired } => {
                let (survivor, retired) = (identifier(&survivor)?, identifier(&retired)?);
                for id in [&survivor, &retired] {
                    if store.identifier_owner(id).await?.is_none() {
                        anyhow::bail!("nobody is named {}", id.token());
                    }
                }
                let taken = feed.operator(Some(survivor), retired).await?;
                println!("merged: {taken:?}");
            }
            IdentityCommand::Unmerge { identifier: token } => {
                let taken = feed.operator(None, identifier(&token)?).await?;
                println!("unmerged: {taken:?}");
            }
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match &cli.command {
        Command::Serve { config }
        | Command::Migrate { config }
        | Command::Dlq { config, .. }
        | Command::Identity { config, .. } => config.clone(),
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
            Command::Dlq { command, .. } => operator::dlq(&settings, command).await,
            Command::Identity { command, .. } => operator::identity(&settings, command).await,
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
