//! The store's decisions, written once for every medium: catch up with the log, decide a
//! batch of orders with `Inventory` (idempotency included) under one exclusive lock hold,
//! append the entries they produced in one step (group commit), and fold the log into a
//! new snapshot when it has grown.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use shared::{Inventory, LogEntry, Order};

use crate::medium::{Compacted, Entry, LogPosition, Medium, ReadSession, Since, WriteSession};
use crate::{Clock, CommittedBatch, Decision, StoreError, StoreStats, StoreSummary};

/// How many times in a row a catch-up may be sent back to the snapshot before the store
/// is reported as unstable (a snapshot replaced faster than it can be read).
const MAX_RELOADS: usize = 3;

/// This process's parsed copy of the store, and how far into the log it has read.
#[derive(Debug)]
struct Cache<P> {
    position: P,
    inventory: Inventory,
}

/// Counters of the work behind the operations, for tests and operators.
#[derive(Debug, Default)]
struct Counters {
    snapshot_loads: AtomicU64,
    compactions: AtomicU64,
    compaction_failures: AtomicU64,
}

/// The store over one medium. `TicketStore` wraps one of these per medium.
///
/// Lock order, in every operation: the cache lock, then the medium's lock. So a commit
/// waits for this process's readers before it takes the medium's exclusive lock, never
/// while holding it, and a reader builds its answer after releasing the medium's lock.
#[derive(Debug)]
pub struct Front<M: Medium> {
    medium: M,
    cache: RwLock<Option<Cache<M::Position>>>,
    /// Where the log stood before a commit whose outcome is unknown. Until the medium has
    /// settled the log from there, this process commits nothing.
    unsettled: Mutex<Option<M::Position>>,
    /// The generation and log size at which compaction last failed: the next attempt
    /// waits until the log has doubled, so a disk with room to append but not for a
    /// snapshot does not make every sale rewrite the inventory.
    compaction_failed_at: Mutex<Option<(u64, u64)>>,
    counters: Counters,
    /// Makes the next commit panic after deciding, for the test of what a panic leaves.
    #[cfg(test)]
    panic_after_decide: std::sync::atomic::AtomicBool,
}

impl<M: Medium> Front<M> {
    pub fn new(medium: M) -> Self {
        Self {
            medium,
            cache: RwLock::new(None),
            unsettled: Mutex::new(None),
            compaction_failed_at: Mutex::new(None),
            counters: Counters::default(),
            #[cfg(test)]
            panic_after_decide: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn medium(&self) -> &M {
        &self.medium
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            snapshot_loads: self.counters.snapshot_loads.load(Ordering::Relaxed),
            compactions: self.counters.compactions.load(Ordering::Relaxed),
            compaction_failures: self.counters.compaction_failures.load(Ordering::Relaxed),
        }
    }

    /// Runs `f` on the current state: every entry committed before the call began applied.
    /// `f` runs after the medium's lock is released, so a large answer built from the state
    /// keeps no writer of any process waiting.
    pub fn read<T>(&self, f: impl FnOnce(&Inventory) -> T) -> Result<T, StoreError> {
        self.read_through(true, f)
    }

    /// Reads through a session of the medium even when the cache is known to be current:
    /// a probe of what a read costs when the store is busy (the lock, or a round trip),
    /// for a health check.
    pub fn probe(&self) -> Result<(), StoreError> {
        self.read_through(false, |_| ())
    }

    fn read_through<T>(
        &self,
        lock_free: bool,
        f: impl FnOnce(&Inventory) -> T,
    ) -> Result<T, StoreError> {
        // Most reads find nothing new: those need only the shared cache lock.
        {
            let cache = self.cache_read();
            if let Some(cached) = cache.as_ref() {
                if lock_free && self.medium.unchanged_since(&cached.position) {
                    return Ok(f(&cached.inventory));
                }
                let mut session = self.medium.begin_read()?;
                if let Since::Entries { entries, end } = session.read_since(&cached.position)?
                    && entries.is_empty()
                    && end == cached.position
                {
                    drop(session);
                    return Ok(f(&cached.inventory));
                }
            }
        }
        for _ in 0..MAX_RELOADS {
            {
                let mut cache = self.cache_for_update();
                let mut session = self.medium.begin_read()?;
                let mut caught_up = CacheReset::new(&mut cache);
                catch_up(&mut session, caught_up.cache, &self.counters)?;
                caught_up.keep();
            }
            // Another thread may have moved the state on meanwhile (never back: a failed
            // commit empties it instead), which this read may show.
            let cache = self.cache_read();
            if let Some(cached) = cache.as_ref() {
                return Ok(f(&cached.inventory));
            }
        }
        Err(StoreError::Unstable(
            "the cached state kept being dropped by failed commits".into(),
        ))
    }

    /// Runs `f` on the current state if that needs no waiting: no commit of this process
    /// holds the cached state, and the medium can tell without a session that the log
    /// still ends where the cache does. Otherwise hands `f` back, for `read` on a thread
    /// that may block.
    pub fn read_now<T, F: FnOnce(&Inventory) -> T>(&self, f: F) -> Result<T, F> {
        let Ok(cache) = self.cache.try_read() else {
            return Err(f);
        };
        match cache.as_ref() {
            Some(cached) if self.medium.unchanged_since(&cached.position) => {
                Ok(f(&cached.inventory))
            }
            _ => Err(f),
        }
    }

    /// Decides `orders` in order under one exclusive lock hold, at `clock`'s time once
    /// the lock is held, and appends the entries they produced in one step. The error
    /// means nothing was committed, or, for `CommitUnknown`, that the medium cannot tell;
    /// the batch's outcomes are each order's own. A panic while committing is caught and
    /// answered as an error of the same kind, with the cached state dropped, never left
    /// half applied.
    ///
    /// `joining` is called once the lock is held and the state caught up: the orders it
    /// returns are decided after `orders`, in the same commit (orders that arrived while
    /// this one waited for the lock), and their outcomes follow those of `orders`.
    pub fn commit_batch(
        &self,
        orders: &[Order],
        joining: &mut dyn FnMut() -> Vec<Order>,
        node: &str,
        clock: &Clock,
        compact_min_bytes: u64,
    ) -> Result<CommittedBatch<Decision>, StoreError> {
        let mut cache = self.cache_for_update();
        let waiting = Instant::now();
        let mut session = self.medium.begin_write()?;
        let lock_wait = waiting.elapsed();
        let mut unsettled = self.unsettled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(from) = unsettled.as_ref() {
            session.settle(from)?;
            *unsettled = None;
        }
        let mut guard = CacheReset::new(&mut cache);
        let mut appending_from = None;
        let committed = catch_unwind(AssertUnwindSafe(|| {
            self.commit(
                &mut session,
                guard.cache,
                Orders { orders, joining },
                (node, clock),
                compact_min_bytes,
                &mut appending_from,
            )
        }));
        let (outcomes, append_and_sync) = match committed {
            Ok(Ok(committed)) => committed,
            Ok(Err(err)) => {
                if matches!(err, StoreError::CommitUnknown(_)) {
                    *unsettled = appending_from;
                }
                return Err(err);
            }
            Err(panic) => {
                let what = panic_message(&panic);
                return Err(match appending_from {
                    Some(from) => {
                        *unsettled = Some(from);
                        StoreError::CommitUnknown(format!(
                            "a commit panicked after its append began: {what}"
                        ))
                    }
                    None => StoreError::Unstable(format!(
                        "a commit panicked before appending anything: {what}"
                    )),
                });
            }
        };
        guard.keep();
        Ok(CommittedBatch {
            outcomes,
            lock_wait: session.lock_wait().unwrap_or(lock_wait),
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
        let current = catch_up(&mut session, &mut cache, &self.counters)?;
        let inventory = &current.inventory;
        Ok(StoreSummary {
            generation: current.position.generation(),
            tickets: inventory.tickets().len(),
            sold: inventory.tickets().iter().filter(|t| t.sold).count(),
            purchases: inventory.purchases().len(),
            holds: inventory.holds().len(),
            journal_entries: current.position.entries(),
        })
    }

    /// Catches up, decides every order (then those `joining` adds), appends the entries
    /// they produced and compacts when due. Returns the outcomes and the time spent appending. `appending_from` is set
    /// to the log position just before the append starts.
    fn commit<S: WriteSession<Position = M::Position>>(
        &self,
        session: &mut S,
        cache: &mut Option<Cache<M::Position>>,
        Orders { orders, joining }: Orders<'_>,
        (node, clock): (&str, &Clock),
        compact_min_bytes: u64,
        appending_from: &mut Option<M::Position>,
    ) -> Result<(Vec<Decision>, Duration), StoreError> {
        let current = catch_up(session, cache, &self.counters)?;
        let joined = joining();
        // The clock is read with the lock held and the log read, so no entry decided
        // before this batch is missing from the time it is decided at; and after the
        // joining orders are taken, so none is decided at a time before it arrived.
        let now = clock.now();
        let mut created: Vec<LogEntry> = Vec::new();
        let outcomes: Vec<Decision> = orders
            .iter()
            .chain(&joined)
            .map(|order| current.inventory.decide(order, node, now, &mut created))
            .collect();
        #[cfg(test)]
        if self.panic_after_decide.swap(false, Ordering::Relaxed) {
            panic!("injected panic after deciding a batch");
        }
        if created.is_empty() {
            return Ok((outcomes, Duration::ZERO));
        }
        let appending = Instant::now();
        *appending_from = Some(current.position.clone());
        current.position = session.append(&current.position, &created)?;
        let append_and_sync = appending.elapsed();
        self.maybe_compact(session, current, compact_min_bytes);
        Ok((outcomes, append_and_sync))
    }

    /// Folds the log into a new snapshot once it is larger than `min_bytes` and than half
    /// the snapshot, so the cost of compaction per sale stays constant. A failure loses
    /// nothing (the medium is as it was, the log holds every purchase, and the cached state
    /// is still true); the next attempt waits until the log has doubled.
    fn maybe_compact<S: WriteSession<Position = M::Position>>(
        &self,
        session: &mut S,
        current: &mut Cache<M::Position>,
        min_bytes: u64,
    ) {
        let position = &current.position;
        let (generation, log_bytes) = (position.generation(), position.log_bytes());
        let background = self.medium.compacts_in_background();
        if background {
            self.record_ended_compactions();
        }
        if log_bytes < min_bytes.max(position.snapshot_bytes() / 2) {
            return;
        }
        let mut failed_at = self
            .compaction_failed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((failed_generation, failed_bytes)) = *failed_at
            && failed_generation == generation
            && log_bytes < failed_bytes.saturating_mul(2)
        {
            return;
        }
        if background {
            self.medium.start_compaction(position);
            return;
        }
        match session.write_snapshot(&current.inventory, position) {
            Ok(position) => {
                current.position = position;
                *failed_at = None;
                self.counters.compactions.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                tracing::warn!(cause = %err, log_bytes, "compaction failed; the log keeps every purchase, and the next attempt waits until it has doubled");
                *failed_at = Some((generation, log_bytes));
                self.counters
                    .compaction_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts the background compactions that ended, and sets the failure backoff as
    /// `write_snapshot`'s failures do.
    fn record_ended_compactions(&self) {
        for ended in self.medium.ended_compactions() {
            match ended.outcome {
                Ok(Compacted::Switched) => {
                    *self
                        .compaction_failed_at
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = None;
                    self.counters.compactions.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Compacted::Superseded) => {}
                Err(err) => {
                    tracing::warn!(cause = %err, log_bytes = ended.log_bytes, "compaction failed; the log keeps every purchase, and the next attempt waits until it has doubled");
                    *self
                        .compaction_failed_at
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) =
                        Some((ended.generation, ended.log_bytes));
                    self.counters
                        .compaction_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Waits for this process's background compaction, if one runs, and counts it.
    pub fn wait_for_compaction(&self) {
        self.medium.wait_for_compaction();
        self.record_ended_compactions();
    }

    /// The shared cache lock. A lock poisoned by a panic elsewhere may guard a half-applied
    /// state: it is emptied first.
    fn cache_read(&self) -> RwLockReadGuard<'_, Option<Cache<M::Position>>> {
        match self.cache.read() {
            Ok(cache) => cache,
            Err(poisoned) => {
                drop(poisoned);
                drop(self.cache_for_update());
                self.cache.read().unwrap_or_else(|p| p.into_inner())
            }
        }
    }

    fn cache_for_update(&self) -> RwLockWriteGuard<'_, Option<Cache<M::Position>>> {
        self.cache.write().unwrap_or_else(|poisoned| {
            let mut cache = poisoned.into_inner();
            *cache = None;
            self.cache.clear_poison();
            cache
        })
    }
}

/// The orders of one commit: those it was given, then those `joining` returns once the
/// lock is held.
struct Orders<'o> {
    orders: &'o [Order],
    joining: &'o mut dyn FnMut() -> Vec<Order>,
}

/// Empties the cached state when dropped, unless `keep` was called: an error or a panic
/// between the two may have left it half updated.
struct CacheReset<'c, P> {
    cache: &'c mut Option<Cache<P>>,
    keep: bool,
}

impl<'c, P> CacheReset<'c, P> {
    fn new(cache: &'c mut Option<Cache<P>>) -> Self {
        Self { cache, keep: false }
    }

    fn keep(&mut self) {
        self.keep = true;
    }
}

impl<P> Drop for CacheReset<'_, P> {
    fn drop(&mut self) {
        if !self.keep {
            *self.cache = None;
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Applies entries read from the log, in order.
fn apply(
    session: &impl ReadSession,
    inventory: &mut Inventory,
    entries: Vec<Entry>,
) -> Result<(), StoreError> {
    for entry in entries {
        inventory
            .apply_entry(entry.entry)
            .map_err(|reason| session.bad_entry(entry.at, reason.to_string()))?;
    }
    Ok(())
}

/// Brings `cache` up to date with the medium and returns it. On an error the cache is left
/// empty, so the next operation starts again from the snapshot.
fn catch_up<'c, S: ReadSession>(
    session: &mut S,
    cache: &'c mut Option<Cache<S::Position>>,
    counters: &Counters,
) -> Result<&'c mut Cache<S::Position>, StoreError> {
    let mut current = match cache.take() {
        Some(current) => current,
        None => load(session, counters)?,
    };
    for _ in 0..MAX_RELOADS {
        match session.read_since(&current.position)? {
            Since::Entries { entries, end } => {
                apply(session, &mut current.inventory, entries)?;
                current.position = end;
                return Ok(cache.insert(current));
            }
            Since::Reload => current = load(session, counters)?,
        }
    }
    Err(StoreError::Unstable(format!(
        "the snapshot was replaced {MAX_RELOADS} times while being read"
    )))
}

fn load<S: ReadSession>(
    session: &mut S,
    counters: &Counters,
) -> Result<Cache<S::Position>, StoreError> {
    counters.snapshot_loads.fetch_add(1, Ordering::Relaxed);
    let (inventory, position) = session.load_snapshot()?;
    Ok(Cache {
        position,
        inventory,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::FileMedium;
    use crate::testing::{inventory, order};

    fn sold(front: &Front<FileMedium>) -> usize {
        front
            .read(|inv| inv.tickets().iter().filter(|t| t.sold).count())
            .expect("readable")
    }

    #[test]
    fn a_panic_inside_a_commit_leaves_no_half_applied_state_and_commits_go_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let front = Front::new(FileMedium::new(dir.path().into(), Duration::from_secs(5)));
        front.create(&inventory(6), false).expect("created");
        front
            .commit_batch(&[order(1)], &mut Vec::new, "n", &Clock::system(), u64::MAX)
            .expect("committed");

        front.panic_after_decide.store(true, Ordering::Relaxed);
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            front.commit_batch(&[order(2)], &mut Vec::new, "n", &Clock::system(), u64::MAX)
        }));
        assert!(
            matches!(panicked, Ok(Err(StoreError::Unstable(_)))),
            "{panicked:?}"
        );
        assert_eq!(sold(&front), 1, "the undecided batch shows in the state");
        front
            .commit_batch(&[order(2)], &mut Vec::new, "n", &Clock::system(), u64::MAX)
            .expect("the next commit works");
        assert_eq!(sold(&front), 3);
    }
}
