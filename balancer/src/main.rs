//! The `balancer` program: parses flags and settings, starts tracing, binds the listener
//! and hands over to the library; `balancer probe` is the container health check.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use balancer::Settings;
use clap::{Parser, Subcommand};

/// Round-robin HTTP load balancer over the ticket nodes.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on [default: 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Nodes to balance over; a name resolving to several addresses stands for all of them.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]")]
    nodes: Option<String>,
    /// TOML settings file (its `[balancer]` table).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Exits 0 if the balancer answers its health endpoint with a 2xx, else 1.
    Probe {
        #[arg(long, default_value = "http://127.0.0.1:8080/balancer/health")]
        url: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Probe { url }) = &cli.command {
        return serve::probe::run(url);
    }
    serve::init_tracing();
    match serve_balancer(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve_balancer(cli: Cli) -> anyhow::Result<()> {
    let mut flags = Vec::new();
    if let Some(listen) = cli.listen {
        flags.push(("listen", listen));
    }
    if let Some(nodes) = cli.nodes {
        flags.push(("nodes", nodes));
    }
    let settings = Settings::load(cli.config.as_deref(), &flags)?;
    // This thread is worker 0; `run` starts the others, each with a runtime of its own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = balancer::workers::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        balancer::run(listener, settings, serve::shutdown_signal()).await;
        Ok(())
    })
}
