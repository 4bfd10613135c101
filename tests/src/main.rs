//! `cargo run --release -p cluster`: builds the programs, seeds a store if there is none,
//! and runs nodes and a balancer on localhost until Ctrl-C.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use clap::Parser;
use cluster::{LocalCluster, Medium, run_generator};

#[derive(Debug, Parser)]
#[command(about = "Runs a local ticket cluster: a seeded store, nodes and a balancer")]
struct Cli {
    /// How many nodes to start
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Where the balancer listens
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// The data directory shared by the nodes
    #[arg(long, default_value = ".local-cluster/data")]
    data: PathBuf,
    /// Events to seed when the store is new (at least the original four)
    #[arg(long, default_value_t = 6)]
    events: u32,
    /// Tickets to seed when the store is new
    #[arg(long, default_value_t = 1000)]
    tickets: u64,
    /// Replace an existing store with a freshly seeded one
    #[arg(long)]
    fresh: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    build_programs()?;
    let data = cli.data.to_string_lossy().into_owned();
    let store_exists = cli.data.join(store::DATA_FILE).exists();
    if cli.fresh || !store_exists {
        let (events, tickets) = (cli.events.to_string(), cli.tickets.to_string());
        let mut args = vec![
            "seed",
            "--data",
            &data,
            "--events",
            &events,
            "--tickets",
            &tickets,
        ];
        if cli.fresh {
            args.push("--force");
        }
        let (code, stdout, stderr) = run_generator(&args)?;
        if code != 0 {
            bail!("seeding failed:\n{stdout}{stderr}");
        }
        print!("{stdout}");
    } else {
        println!("using the existing store in {data} (pass --fresh to reseed)");
    }
    let mut cluster = LocalCluster::start_on_with(
        cli.nodes,
        &Medium::Files(cli.data.clone()),
        &cli.listen,
        &[],
    )?;
    println!();
    for node in &cluster.nodes {
        println!("node {:<4} {}", node.name, node.url());
    }
    let balancer = cluster.balancer_url();
    println!("balancer  {balancer}");
    println!("status    {balancer}/balancer/  (nodes: {balancer}/balancer/nodes)");
    println!();
    println!("try:  curl {balancer}/events");
    println!("load: target/release/generator load --target {balancer} --rate 200 --duration 20s");
    println!("Ctrl-C (or SIGTERM) stops the cluster.");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        anyhow::Ok(())
    })?;
    println!("stopping");
    if let Some(balancer) = cluster.balancer.as_mut() {
        balancer.terminate()?;
    }
    for node in &mut cluster.nodes {
        node.terminate()?;
    }
    Ok(())
}

/// Builds the three programs in this profile, so the cluster runs what is checked out.
fn build_programs() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "-p", "node", "-p", "balancer", "-p", "generator"]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let status = command.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    Ok(())
}
