//! The `generator` program: parses flags and settings, starts tracing and hands each
//! subcommand to the library. Exit status: 0 success, 1 the audit found violations,
//! 2 the command could not run (bad flags, unreachable target, I/O).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use generator::client::Target;
use generator::load::{Arrivals, LoadOptions, Mix, ProgressMode, StopWhen};
use generator::seed::{SeedError, SeedOptions, SeedTarget};
use generator::settings::Settings;
use serde::Serialize;
use shared::settings::Section;
use store::StoreError;

/// How long a load run lasts when neither --duration nor --until-sold-out is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(30);

/// Seeds, loads and audits the ticket cluster.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML settings file; its [generator] table sets target, request_timeout,
    /// concurrency and retries (TICKETS_GENERATOR__* variables and flags win over it).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a fresh random inventory into a data directory or a PostgreSQL database.
    Seed(SeedArgs),
    /// Send an open-loop stream of random buyers (purchases, or the box-office mix) and
    /// report what happened.
    Load(LoadArgs),
    /// Read everything through the API and check nothing was sold twice.
    Audit(AuditArgs),
}

#[derive(Debug, Args)]
struct SeedArgs {
    /// Data directory to write the store into (created if missing).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "database",
        conflicts_with = "database"
    )]
    data: Option<PathBuf>,
    /// PostgreSQL database to write the store into instead (tables created if missing):
    /// postgres://USER[:PASS]@HOST[:PORT]/DB
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// Number of events, at least 4 (the original four are always included).
    #[arg(long, value_name = "N", default_value_t = 4)]
    events: usize,
    /// Number of tickets (ids 1..=N), at least one per event.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    tickets: u64,
    /// Random seed; the same seed gives the same inventory. Picked and printed if absent.
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Replace an existing store.
    #[arg(long)]
    force: bool,
    /// Leave an existing store alone and succeed (for a one-shot seeding container).
    #[arg(long, conflicts_with = "force")]
    keep_existing: bool,
    /// Limit every event to N tickets per customer (live purchases and holds together);
    /// purchases and holds must then name a customer.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_per_customer: Option<u32>,
}

/// The settings flags of `audit` (and of `load`, with `LoadFlags`); named as the settings'
/// keys, so they override them.
#[derive(Debug, Args, Serialize)]
struct TargetArgs {
    /// Node or balancer to talk to [default: http://127.0.0.1:8080, or from settings].
    #[arg(long, value_name = "URL")]
    target: Option<String>,
    /// Time limit of each request, e.g. 5s or 500ms [default: 5s, or from settings].
    #[arg(long, value_name = "DURATION")]
    #[serde(rename = "request_timeout")]
    timeout: Option<String>,
}

/// The settings flags of `load`.
#[derive(Debug, Args, Serialize)]
struct LoadFlags {
    #[command(flatten)]
    #[serde(flatten)]
    target: TargetArgs,
    /// Most purchases in flight at once [default: 256, or from settings].
    #[arg(long, value_name = "C")]
    concurrency: Option<usize>,
    /// Repeats (same Idempotency-Key) of a purchase whose outcome is unknown [default: 2,
    /// or from settings].
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
}

#[derive(Debug, Args)]
struct LoadArgs {
    #[command(flatten)]
    flags: LoadFlags,
    /// Mean purchases per second (above 0).
    #[arg(long, value_name = "R")]
    rate: f64,
    /// How long to send, e.g. 30s, 2m, 500ms [default: 30s when --until-sold-out is absent].
    #[arg(long, value_name = "D", value_parser = parse_duration, conflicts_with = "until_sold_out")]
    duration: Option<Duration>,
    /// Send until every event has sold out.
    #[arg(long)]
    until_sold_out: bool,
    /// Gaps between purchases: exactly 1/R, or exponential with mean 1/R.
    #[arg(long, value_enum, default_value_t = Arrivals::Steady)]
    arrivals: Arrivals,
    /// Quantities are drawn from 1 to this.
    #[arg(long, value_name = "Q", default_value_t = shared::domain::MAX_QUANTITY)]
    max_quantity: u32,
    /// Seed of the request stream, to repeat it. Picked (and reported) if absent.
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Also write the summary as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Also draw the run second by second (p50/p99 latency, achieved rate) as SVG to FILE.
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
    /// Show no progress while running.
    #[arg(long)]
    no_progress: bool,
    #[command(flatten)]
    mix: MixArgs,
}

/// The box-office mix of `load`: shares of buyers, fractions from 0 to 1 (all 0: every
/// buyer buys a count of tickets and keeps them).
#[derive(Debug, Args)]
struct MixArgs {
    /// Share of buyers who pick their seats (from GET /tickets?sold=false) instead of a count.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    seats_share: f64,
    /// Share of buyers who hold, then confirm the hold.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    hold_confirm_share: f64,
    /// Share of buyers who hold and walk away (the hold is left to expire).
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    hold_abandon_share: f64,
    /// Share of buyers who hold, then release the hold.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    hold_release_share: f64,
    /// Share of buyers who cancel their purchase after buying.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    cancel_share: f64,
    /// Time to live of every hold, 10s to 3600s [default: the node's, 600s].
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    hold_ttl: Option<Duration>,
    /// Buyers are drawn from N customers (c00000, c00001, ...); needed on events with a
    /// per-customer limit. 0 sends no customer.
    #[arg(long, value_name = "N", default_value_t = 0)]
    customers: u32,
}

impl From<MixArgs> for Mix {
    fn from(a: MixArgs) -> Self {
        Mix {
            seats: a.seats_share,
            hold_confirm: a.hold_confirm_share,
            hold_abandon: a.hold_abandon_share,
            hold_release: a.hold_release_share,
            cancel: a.cancel_share,
            hold_ttl: a.hold_ttl,
            customers: a.customers,
        }
    }
}

#[derive(Debug, Args)]
struct AuditArgs {
    #[command(flatten)]
    target: TargetArgs,
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value)
        .map_err(|e| format!("{e}; write a duration like 30s, 2m or 500ms"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    serve::init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Seed(args) => {
            let store = match (args.database, args.data) {
                (Some(url), _) => SeedTarget::Database(url),
                (None, Some(dir)) => SeedTarget::Files(dir),
                (None, None) => anyhow::bail!("give --data DIR or --database URL"),
            };
            let seeded = generator::seed::seed(&SeedOptions {
                store,
                events: args.events,
                tickets: args.tickets,
                seed: args.seed,
                force: args.force,
                max_per_customer: args.max_per_customer,
            });
            match seeded {
                Ok(summary) => print!("{summary}"),
                Err(SeedError::Store(StoreError::AlreadyExists(path))) if args.keep_existing => {
                    println!(
                        "a store already exists at {}; left as it is",
                        path.display()
                    );
                }
                Err(SeedError::Store(StoreError::DatabaseExists(database)))
                    if args.keep_existing =>
                {
                    println!("a store already exists in the database {database}; left as it is");
                }
                Err(err) => return Err(err.into()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Load(args) => load(cli.config, args),
        Command::Audit(args) => {
            let settings = Settings::load(cli.config.as_deref(), &args.target)?;
            let target = Target::parse(&settings.target)?;
            let report =
                runtime()?.block_on(generator::audit::audit(target, settings.request_timeout))?;
            print!("{report}");
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn load(config: Option<PathBuf>, args: LoadArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(config.as_deref(), &args.flags)?;
    let stop = match (args.duration, args.until_sold_out) {
        (_, true) => StopWhen::SoldOut,
        (Some(d), false) => StopWhen::After(d),
        (None, false) => {
            eprintln!(
                "note: neither --duration nor --until-sold-out given; running for {}",
                humantime::format_duration(DEFAULT_DURATION)
            );
            StopWhen::After(DEFAULT_DURATION)
        }
    };
    let options = LoadOptions {
        target: Target::parse(&settings.target)?,
        rate: args.rate,
        stop,
        arrivals: args.arrivals,
        concurrency: settings.concurrency,
        request_timeout: settings.request_timeout,
        retries: settings.retries,
        max_quantity: args.max_quantity,
        seed: args.seed,
        progress: if args.no_progress {
            ProgressMode::Off
        } else {
            ProgressMode::Auto
        },
        mix: args.mix.into(),
    };
    let report = runtime()?.block_on(generator::load::run_until(
        options,
        serve::shutdown_signal(),
    ))?;
    print!("{report}");
    if let Some(path) = &args.report {
        report.write_json(path)?;
        println!("report written to {}", path.display());
    }
    if let Some(path) = &args.chart {
        report.write_chart(path)?;
        println!("chart written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
