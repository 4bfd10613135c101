//! The `node` binary: parses flags and settings, then serves the ticket API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use node::NodeSettings;
use serde::Serialize;
use shared::settings::Section;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Serves the ticket API from the shared store",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    flags: Flags,
    /// Optional TOML settings file with a [node] table
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The settings that have a flag; named as the settings' keys, so they override them.
#[derive(Debug, Args, Serialize)]
struct Flags {
    /// This node's id, sent in X-Node and recorded in its purchases [default: host name]
    #[arg(long)]
    id: Option<String>,
    /// Address to listen on; port 0 picks a free port [default: 0.0.0.0:8000]
    #[arg(long)]
    listen: Option<String>,
    /// The shared data directory holding the store [default: /data]
    #[arg(long, conflicts_with = "database")]
    data: Option<PathBuf>,
    /// The store in PostgreSQL instead: postgres://USER[:PASS]@HOST[:PORT]/DB
    #[arg(long, value_name = "URL")]
    database: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Checks that a node answers GET /health with 200 (for container health checks)
    Probe {
        #[arg(long, default_value = "http://127.0.0.1:8000/health")]
        url: String,
    },
    /// Reads the whole store (in DIR, or in the database at URL), checks every invariant,
    /// and says what is wrong if anything is; changes nothing (exit 0 when sound, 1
    /// otherwise)
    CheckStore {
        /// The data directory [default: /data]
        #[arg(long, conflicts_with = "database")]
        data: Option<PathBuf>,
        /// The PostgreSQL store's URL
        #[arg(long, value_name = "URL")]
        database: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Probe { url }) => return serve::probe::run(url),
        Some(Command::CheckStore { data, database }) => {
            return check_store(data.as_deref(), database.as_deref());
        }
        None => {}
    }
    serve::init_tracing();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("node: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_store(data: Option<&std::path::Path>, database: Option<&str>) -> ExitCode {
    let timeout = Duration::from_secs(10);
    let store = match database {
        Some(url) => match store::TicketStore::postgres(url, store::PgOptions::new(timeout)) {
            Ok(store) => store,
            Err(err) => {
                eprintln!("{err}");
                return ExitCode::FAILURE;
            }
        },
        None => store::TicketStore::new(
            data.unwrap_or(std::path::Path::new(node::settings::DEFAULT_DATA)),
            timeout,
        ),
    };
    let (snapshot, log) = if database.is_some() {
        ("snapshot after entry", "in the log after it")
    } else {
        ("generation", "in the journal")
    };
    match store.check() {
        Ok(summary) => {
            println!(
                "store at {} is sound: {snapshot} {}, {} tickets, {} sold, {} purchases, {} holds \
                 ({} log entries {log})",
                store.location(),
                summary.generation,
                summary.tickets,
                summary.sold,
                summary.purchases,
                summary.holds,
                summary.journal_entries
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = NodeSettings::load(cli.config.as_deref(), &cli.flags)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = serve::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        node::run(listener, settings, serve::shutdown_signal()).await?;
        Ok(())
    })
}
