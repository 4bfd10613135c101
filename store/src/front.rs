//! The store's decisions, written once for every medium: catch up with the log, decide a
//! batch of purchases with `Inventory` (idempotency included) under one exclusive lock
//! hold, append it in one step (group commit), and fold the log into a new snapshot when it
//! has grown.

use std::sync::{RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

use shared::{Inventory, Purchase, PurchaseError, PurchaseOutcome};

use crate::medium::{Entry, LogPosition, Medium, ReadSession, Since, WriteSession};
use crate::{CommittedBatch, PurchaseOrder, StoreError, StoreSummary};

/// How many times in a row a catch-up may be sent back to the snapshot before the store
/// is reported as unstable (a snapshot replaced faster than it can be read).
const MAX_RELOADS: usize = 3;

/// This process's parsed copy of the store, and how far into the log it has read.
#[derive(Debug)]
struct Cache<P> {
    position: P,
    inventory: Inventory,
}

/// The store over one medium. `TicketStore` wraps one of these per medium.
#[derive(Debug)]
pub struct Front<M: Medium> {
    medium: M,
    cache: RwLock<Option<Cache<M::Position>>>,
}

impl<M: Medium> Front<M> {
    pub fn new(medium: M) -> Self {
        Self {
            medium,
            cache: RwLock::new(None),
        }
    }

    pub fn medium(&self) -> &M {
        &self.medium
    }

    /// Runs `f` on the current state: every entry committed before the call began applied.
    pub fn read<T>(&self, f: impl FnOnce(&Inventory) -> T) -> Result<T, StoreError> {
        let mut session = self.medium.begin_read()?;
        // Most reads find nothing new: answer those under the shared cache lock, so reads
        // in one process do not queue behind each other.
        let news = {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            match cache.as_ref() {
                Some(cache) => match session.read_since(&cache.position)? {
                    Since::Entries { entries, end }
                        if entries.is_empty() && end == cache.position =>
                    {
                        return Ok(f(&cache.inventory));
                    }
                    since => Some((cache.position.clone(), since)),
                },
                None => None,
            }
        };
        let mut cache = self.cache_for_update();
        let current = match news {
            // Nobody moved the cache meanwhile: apply what was just read.
            Some((from, Since::Entries { entries, end }))
                if cache.as_ref().is_some_and(|c| c.position == from) =>
            {
                let mut current = cache.take().ok_or_else(unreachable_cache)?;
                apply(&session, &mut current.inventory, entries)?;
                current.position = end;
                cache.insert(current)
            }
            _ => catch_up(&mut session, &mut cache)?,
        };
        Ok(f(&current.inventory))
    }

    /// Decides `orders` in order under one exclusive lock hold and appends the new
    /// purchases in one step. The error means nothing was committed, or, for
    /// `CommitUnknown`, that the medium cannot tell; the batch's outcomes are each order's
    /// own.
    pub fn purchase_batch(
        &self,
        orders: &[PurchaseOrder],
        node: &str,
        compact_min_bytes: u64,
    ) -> Result<CommittedBatch, StoreError> {
        let waiting = Instant::now();
        let mut session = self.medium.begin_write()?;
        let lock_wait = waiting.elapsed();
        let mut cache = self.cache_for_update();
        let result = commit(&mut session, &mut cache, orders, node, compact_min_bytes);
        let (outcomes, append_and_sync, keep_cache) = match result {
            Ok(committed) => committed,
            Err(err) => {
                // The in-memory state may hold decisions that never reached the medium.
                *cache = None;
                return Err(err);
            }
        };
        if !keep_cache {
            *cache = None;
        }
        Ok(CommittedBatch {
            outcomes,
            lock_wait,
            append_and_sync,
        })
    }

    /// Writes `inventory` as a fresh store; see `Medium::create`.
    pub fn create(&self, inventory: &Inventory, force: bool) -> Result<(), StoreError> {
        self.medium.create(inventory, force)?;
        *self.cache_for_update() = None;
        Ok(())
    }

    /// Reads the whole store from the medium, bypassing the cache, and checks every
    /// invariant on the way (`Inventory` refuses an inconsistent state).
    pub fn check(&self) -> Result<StoreSummary, StoreError> {
        let mut session = self.medium.begin_read()?;
        let mut cache = None;
        let current = catch_up(&mut session, &mut cache)?;
        let inventory = &current.inventory;
        Ok(StoreSummary {
            generation: current.position.generation(),
            tickets: inventory.tickets().len(),
            sold: inventory.tickets().iter().filter(|t| t.sold).count(),
            purchases: inventory.purchases().len(),
            journal_entries: current.position.entries(),
        })
    }

    fn cache_for_update(&self) -> RwLockWriteGuard<'_, Option<Cache<M::Position>>> {
        self.cache.write().unwrap_or_else(|poisoned| {
            let mut cache = poisoned.into_inner();
            *cache = None;
            cache
        })
    }
}

fn unreachable_cache() -> StoreError {
    StoreError::Unstable("the cached state vanished under its lock".into())
}

/// Applies entries read from the log, in order.
fn apply(
    session: &impl ReadSession,
    inventory: &mut Inventory,
    entries: Vec<Entry>,
) -> Result<(), StoreError> {
    for entry in entries {
        inventory
            .apply_committed(entry.purchase)
            .map_err(|reason| session.bad_entry(entry.at, reason.to_string()))?;
    }
    Ok(())
}

/// Brings `cache` up to date with the medium and returns it. On an error the cache is left
/// empty, so the next operation starts again from the snapshot.
fn catch_up<'c, S: ReadSession>(
    session: &mut S,
    cache: &'c mut Option<Cache<S::Position>>,
) -> Result<&'c mut Cache<S::Position>, StoreError> {
    let mut current = match cache.take() {
        Some(current) => current,
        None => load(session)?,
    };
    for _ in 0..MAX_RELOADS {
        match session.read_since(&current.position)? {
            Since::Entries { entries, end } => {
                apply(session, &mut current.inventory, entries)?;
                current.position = end;
                return Ok(cache.insert(current));
            }
            Since::Reload => current = load(session)?,
        }
    }
    Err(StoreError::Unstable(format!(
        "the snapshot was replaced {MAX_RELOADS} times while being read"
    )))
}

fn load<S: ReadSession>(session: &mut S) -> Result<Cache<S::Position>, StoreError> {
    let (inventory, position) = session.load_snapshot()?;
    Ok(Cache {
        position,
        inventory,
    })
}

type Outcomes = Vec<Result<PurchaseOutcome, PurchaseError>>;

/// Catches up, decides every order, appends the new purchases and compacts when due.
/// Returns the outcomes, the time spent appending, and whether the cache is still valid.
fn commit<S: WriteSession>(
    session: &mut S,
    cache: &mut Option<Cache<S::Position>>,
    orders: &[PurchaseOrder],
    node: &str,
    compact_min_bytes: u64,
) -> Result<(Outcomes, Duration, bool), StoreError> {
    let current = catch_up(session, cache)?;
    let mut created: Vec<Purchase> = Vec::new();
    let outcomes: Outcomes = orders
        .iter()
        .map(|order| {
            let outcome =
                current
                    .inventory
                    .purchase_tickets(&order.request, order.key.as_ref(), node);
            if let Ok(PurchaseOutcome::Created(purchase)) = &outcome {
                created.push(purchase.clone());
            }
            outcome
        })
        .collect();
    if created.is_empty() {
        return Ok((outcomes, Duration::ZERO, true));
    }
    let appending = Instant::now();
    current.position = session.append(&current.position, &created)?;
    let append_and_sync = appending.elapsed();
    let keep_cache = maybe_compact(session, current, compact_min_bytes);
    Ok((outcomes, append_and_sync, keep_cache))
}

/// Folds the log into a new snapshot once it is larger than `min_bytes` and than half the
/// snapshot, so the cost of compaction per sale stays constant. A failure loses nothing
/// (the log still holds every purchase) and is retried on a later write; it returns false,
/// so the cache is dropped and the next operation reloads whatever the medium holds.
fn maybe_compact<S: WriteSession>(
    session: &mut S,
    current: &mut Cache<S::Position>,
    min_bytes: u64,
) -> bool {
    let position = &current.position;
    if position.log_bytes() < min_bytes.max(position.snapshot_bytes() / 2) {
        return true;
    }
    match session.write_snapshot(&current.inventory, position) {
        Ok(position) => {
            current.position = position;
            true
        }
        Err(err) => {
            tracing::warn!(cause = %err, "compaction failed; the log keeps every purchase");
            false
        }
    }
}
