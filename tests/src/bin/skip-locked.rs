//! `skip-locked`: the SKIP LOCKED baseline server (see `cluster::skip_locked`), and its
//! seeding from a file store so it sells the same inventory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cluster::skip_locked::{Baseline, db};

#[derive(Debug, Parser)]
#[command(about = "The plain SELECT ... FOR UPDATE SKIP LOCKED ticket server, for comparison")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serves POST /purchases, GET /events and GET /health
    Serve {
        #[arg(long, default_value = "baseline")]
        id: String,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// postgres://USER@HOST:PORT/DB
        #[arg(long)]
        database: String,
        /// Connections in the pool
        #[arg(long, default_value_t = 16)]
        pool: usize,
    },
    /// Creates the tables in an empty database and loads the tickets of the file store
    /// in DIR (seeded by `generator seed`)
    Seed {
        #[arg(long)]
        database: String,
        #[arg(long)]
        from: PathBuf,
    },
}

fn main() -> ExitCode {
    serve::init_tracing();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("skip-locked: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve {
                id,
                listen,
                database,
                pool,
            } => {
                let baseline = Baseline::new(&id, &database, pool)?;
                let listener = serve::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                serve::run(
                    listener,
                    baseline,
                    serve::ServerLimits::default(),
                    serve::shutdown_signal(),
                )
                .await;
                Ok(())
            }
            Command::Seed { database, from } => {
                let tickets = store::TicketStore::new(&from, Duration::from_secs(10))
                    .read(|inventory| inventory.tickets().to_vec())
                    .with_context(|| format!("reading the store in {}", from.display()))?;
                let (client, connection) =
                    tokio_postgres::connect(&database, tokio_postgres::NoTls)
                        .await
                        .with_context(|| format!("connecting to {database}"))?;
                tokio::spawn(connection);
                db::seed(&client, &tickets).await?;
                println!("seeded {} tickets", tickets.len());
                Ok(())
            }
        }
    })
}
