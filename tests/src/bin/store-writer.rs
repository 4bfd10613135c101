//! `store-writer`: sells tickets straight through `TicketStore`, one purchase per commit,
//! printing `committed <purchase_id> <ticket ids>` after each one is durable. The crash
//! tests run it with `TICKETS_FAULT_ABORT_AT` set, so it dies at a chosen step of a write.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use shared::{EventName, PurchaseOutcome, PurchaseRequest, Quantity};
use store::TicketStore;

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let store = TicketStore::new(&cli.data, Duration::from_secs(5))
        .with_compaction_threshold(cli.compact_bytes);
    let event = EventName::parse(&cli.event)?;
    let quantity = Quantity::new(cli.quantity)?;
    let mut stdout = std::io::stdout().lock();
    for _ in 0..cli.purchases {
        let request = PurchaseRequest::new(event.clone(), quantity);
        match store
            .purchase(&request, None, "store-writer")
            .context("store failed")?
        {
            Ok(PurchaseOutcome::Created(p)) | Ok(PurchaseOutcome::Replayed(p)) => {
                let ids: Vec<String> = p.tickets.iter().map(|t| t.id.to_string()).collect();
                writeln!(stdout, "committed {} {}", p.purchase_id, ids.join(","))?;
                stdout.flush()?;
            }
            Err(refused) => {
                writeln!(stdout, "refused {refused}")?;
                stdout.flush()?;
            }
        }
    }
    Ok(())
}
