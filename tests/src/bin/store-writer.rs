//! `store-writer`: sells tickets straight through `TicketStore`, one purchase per commit,
//! printing `committed <purchase_id> <ticket ids>` after each one is durable. The crash
//! tests run it with `TICKETS_FAULT_ABORT_AT` set, so it dies at a chosen step of a write;
//! the integrity tests with `--keys` and `TICKETS_FAULT_FAIL`, so a step fails and the
//! writer retries with the same key, printing `failed` or `unknown` for each store error.
//!
//! With `--box-office` it makes every kind of log entry instead, one order per commit, in
//! rounds of seven (hold, confirm it, hold, release it, purchase, cancel it, a hold left to
//! expire), on a clock that moves 4 seconds a commit so the abandoned holds expire (10 s),
//! printing `box <kind> <id> <ticket ids> [<hold id>]` after each one is durable.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use shared::{
    Command, CustomerId, EventName, HoldRequest, IdempotencyKey, Order, Outcome, Proof,
    PurchaseOutcome, PurchaseRequest, Quantity, SaleRequest, Selection, Ttl,
};
use store::{Clock, StoreError, TicketStore};

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
    /// Make every kind of entry (see the module's doc); `--purchases` counts the orders.
    #[arg(long)]
    box_office: bool,
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
    // With --box-office its rounds take the place of the purchases.
    let purchases = if cli.box_office {
        box_office(&store, &event, quantity, cli.purchases, &mut stdout)?;
        0
    } else {
        cli.purchases
    };
    for i in 0..purchases {
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

/// The rounds of `--box-office`: `orders` orders, one commit each.
fn box_office(
    store: &TicketStore,
    event: &EventName,
    quantity: Quantity,
    orders: usize,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    // Starts at the log's latest time (a writer before this one may have run ahead of the
    // system clock) and moves 4 seconds a commit.
    let start = store
        .read(|inv| inv.log_time())
        .context("store failed")?
        .to_system()
        .max(std::time::SystemTime::now());
    let commits = Arc::new(AtomicU64::new(0));
    let clock = Clock::from_fn(move || {
        start + Duration::from_secs(4 * commits.fetch_add(1, Ordering::Relaxed))
    });
    // A clone shares the handle's cache and medium, with its own clock.
    let store = store.clone().with_clock(clock);
    let sale = |i: usize| SaleRequest {
        event: event.clone(),
        selection: Selection::Quantity(quantity),
        customer: CustomerId::parse(&format!("customer-{}", i % 3)).ok(),
    };
    let ttl = Ttl::new(10)?;
    let hold = |i: usize| Command::Hold(HoldRequest { sale: sale(i), ttl });
    let mut last = String::new();
    for i in 0..orders {
        let command = match i % 7 {
            0 | 2 | 6 => hold(i),
            1 => Command::Confirm {
                hold_id: last.clone(),
            },
            3 => Command::Release {
                hold_id: last.clone(),
            },
            4 => Command::Purchase(sale(i)),
            _ => Command::Cancel {
                purchase_id: last.clone(),
            },
        };
        let order = Order::new(command).with_proof(Proof::operator());
        let outcome = store
            .commit(&order, "store-writer")
            .context("store failed")?;
        let line = match outcome {
            Ok(Outcome::Purchase(decided)) => {
                let p = decided.item;
                last = p.purchase_id.clone();
                let kind = match (i % 7, &p.hold_id) {
                    (5, _) => "cancel",
                    (_, Some(_)) => "confirm",
                    (_, None) => "purchase",
                };
                let hold = p.hold_id.as_deref().unwrap_or("");
                format!("box {kind} {} {} {hold}", p.purchase_id, ids(&p.tickets))
            }
            Ok(Outcome::Hold(decided)) => {
                let h = decided.item.hold;
                last = h.hold_id.clone();
                let kind = if i % 7 == 3 { "release" } else { "hold" };
                format!("box {kind} {} {}", h.hold_id, ids(&h.tickets))
            }
            Err(refused) => format!("refused {refused}"),
        };
        writeln!(out, "{}", line.trim_end())?;
        out.flush()?;
    }
    Ok(())
}

fn ids(tickets: &[shared::SoldTicket]) -> String {
    let ids: Vec<String> = tickets.iter().map(|t| t.id.to_string()).collect();
    ids.join(",")
}
