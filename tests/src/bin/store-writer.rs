//! `store-writer`: sells tickets straight through `TicketStore`, one purchase per commit,
//! printing `committed <purchase_id> <ticket ids>` after each one is durable. The crash
//! tests run it with `TICKETS_FAULT_ABORT_AT` set, so it dies at a chosen step of a write;
//! the integrity tests with `--keys` and `TICKETS_FAULT_FAIL`, so a step fails and the
//! writer retries with the same key, printing `failed` or `unknown` for each store error.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use shared::{EventName, IdempotencyKey, PurchaseOutcome, PurchaseRequest, Quantity};
use store::{StoreError, TicketStore};

#[derive(Debug, Parser)]
struct Cli {
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "concert")]
    event: String,
    #[arg(long, default_value_t = 1)]
    quantity: u32,
    /// How many purchases to attempt.
    #[arg(long, default_value_t = 10)]
    purchases: usize,
    /// Fold the journal into the snapshot once it is this large (and half the snapshot).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    compact_bytes: u64,
    /// Give purchase i the Idempotency-Key `<PREFIX>i`, and on a store error print it and
    /// retry the same key (at most 20 times) instead of stopping.
    #[arg(long, value_name = "PREFIX")]
    keys: Option<String>,
    /// Print the store's counters at the end: `stats loads=L compactions=C failed=F`.
    #[arg(long)]
    stats: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if std::env::var_os(store::fault::ABORT_AT_ENV).is_some() && !store::fault::ENABLED {
        anyhow::bail!(
            "this store-writer has no crash points: they are compiled in for test builds only"
        );
    }
    let store = TicketStore::new(&cli.data, Duration::from_secs(5))
        .with_compaction_threshold(cli.compact_bytes);
    let event = EventName::parse(&cli.event)?;
    let quantity = Quantity::new(cli.quantity)?;
    let mut stdout = std::io::stdout().lock();
    for i in 0..cli.purchases {
        let key = cli
            .keys
            .as_ref()
            .map(|prefix| IdempotencyKey::parse(&format!("{prefix}{i}")))
            .transpose()?;
        for attempt in 0.. {
            let request = PurchaseRequest::new(event.clone(), quantity);
            let outcome = match store.purchase(&request, key.as_ref(), "store-writer") {
                Ok(outcome) => outcome,
                Err(err)
                    if attempt < 20
                        && let Some(key) = &key =>
                {
                    let kind = match err {
                        StoreError::CommitUnknown(_) => "unknown",
                        _ => "failed",
                    };
                    writeln!(stdout, "{kind} {} {err}", key.as_str())?;
                    continue;
                }
                Err(err) => return Err(err).context("store failed"),
            };
            match outcome {
                Ok(PurchaseOutcome::Created(p)) => {
                    let ids: Vec<String> = p.tickets.iter().map(|t| t.id.to_string()).collect();
                    writeln!(stdout, "committed {} {}", p.purchase_id, ids.join(","))?;
                }
                Ok(PurchaseOutcome::Replayed(p)) => {
                    let ids: Vec<String> = p.tickets.iter().map(|t| t.id.to_string()).collect();
                    writeln!(
                        stdout,
                        "committed {} {} replayed",
                        p.purchase_id,
                        ids.join(",")
                    )?;
                }
                Err(refused) => writeln!(stdout, "refused {refused}")?,
            }
            stdout.flush()?;
            break;
        }
    }
    // A compaction runs in the background: let it end before exiting, as a node's
    // shutdown would not wait for it, so that the crash tests reach its steps.
    store.wait_for_compaction();
    if cli.stats {
        let stats = store.stats();
        writeln!(
            stdout,
            "stats loads={} compactions={} failed={}",
            stats.snapshot_loads, stats.compactions, stats.compaction_failures
        )?;
    }
    Ok(())
}
