//! `TicketStore`: the shared, strictly consistent ticket store every node opens, on one of
//! two media: JSON files in a data directory (the default), or PostgreSQL.
//!
//! The store is a log of committed changes (`shared::LogEntry`: purchases, holds,
//! confirms, releases, expiries, cancellations) after a snapshot of the inventory. Every
//! process keeps its parsed state and reads only the entries it has not seen, so every read
//! sees every completed write, whichever process made it, while a sale costs the same
//! whatever the inventory's size. A batch of orders is decided under one exclusive lock
//! hold, at the later of the store's clock and the log's latest time, and its entries are
//! appended in one step (group commit). The decisions live once, in `front`; what
//! differs per medium is the small trait in `medium`, implemented by `file` and
//! `pg`.
//!
//! These calls block on I/O and on the lock: async callers run them on the blocking pool.

mod compaction;
pub mod fault;
pub mod file;
pub mod format;
mod front;
pub mod medium;
pub mod pg;
#[cfg(any(test, feature = "fault-injection"))]
pub mod testing;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shared::{
    Command, DecisionError, IdempotencyKey, Inventory, Order, Outcome, PurchaseError,
    PurchaseOutcome, PurchaseRequest, SaleRequest, Selection,
};
use thiserror::Error;

pub use file::{COMPACTION_LOCK_FILE, DATA_FILE, FileMedium, JOURNAL_FILE, LOCK_FILE};
use front::Front;
use medium::Medium;
pub use pg::{PgMedium, PgOptions};

/// The log is folded into the snapshot once it is larger than this and than half the
/// snapshot, so the cost of compaction per sale stays constant.
const COMPACT_MIN_BYTES: u64 = 4 * 1024 * 1024;

/// Why the store could not serve an operation. Every variant means "try again later or
/// ask an operator", never "the client did something wrong".
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("no store at {0}: seed one with `generator seed --data DIR`")]
    Missing(PathBuf),
    #[error("the store at {path} is unreadable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("gave up waiting for the store lock after {0:?}")]
    LockTimeout(Duration),
    #[error("a store already exists at {0}; pass --force to replace it")]
    AlreadyExists(PathBuf),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the store is changing too fast to read: {0}")]
    Unstable(String),
    /// The medium lost touch while committing and cannot tell whether the batch was
    /// committed. Retrying with the same idempotency key returns the first outcome if
    /// there was one.
    #[error("the outcome of the commit is unknown: {0}")]
    CommitUnknown(String),
    #[error("no store in the database {0}: seed one with `generator seed --database URL`")]
    DatabaseMissing(String),
    #[error("a store already exists in the database {0}; pass --force to replace it")]
    DatabaseExists(String),
    #[error("the store in the database {database} is unreadable: {reason}")]
    DatabaseCorrupt { database: String, reason: String },
    #[error("cannot reach the database {database}: {reason}")]
    Unavailable { database: String, reason: String },
    #[error("not a PostgreSQL URL (postgres://USER[:PASS]@HOST[:PORT]/DB): {0}")]
    BadDatabaseUrl(String),
    #[error("{action} in the database {database}: {source}")]
    Database {
        action: &'static str,
        database: String,
        #[source]
        source: postgres::Error,
    },
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// One purchase to decide in a batch (the purchase-only form of [`shared::Order`]).
#[derive(Debug, Clone)]
pub struct PurchaseOrder {
    pub request: PurchaseRequest,
    pub key: Option<IdempotencyKey>,
}

impl PurchaseOrder {
    /// The same purchase as an order (without customer or proof).
    pub fn to_order(&self) -> Order {
        Order::new(Command::Purchase(SaleRequest {
            event: self.request.event.clone(),
            selection: Selection::Quantity(self.request.quantity),
            customer: None,
        }))
        .with_key(self.key.clone())
    }
}

/// What one order of a batch came to: its outcome, or the refusal that changed nothing.
pub type Decision = Result<Outcome, DecisionError>;

/// A committed batch: each order's outcome, and where the time went.
#[derive(Debug)]
pub struct CommittedBatch<O = Result<PurchaseOutcome, PurchaseError>> {
    /// One per order, in order.
    pub outcomes: Vec<O>,
    /// Waiting for the exclusive lock.
    pub lock_wait: Duration,
    /// Appending the batch to the log and making it durable (zero when nothing was sold).
    pub append_and_sync: Duration,
}

/// What a store check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSummary {
    /// Names the snapshot the state starts from.
    pub generation: u64,
    pub tickets: usize,
    pub sold: usize,
    /// Purchases, cancelled ones included.
    pub purchases: usize,
    /// Holds, whatever became of them.
    pub holds: usize,
    /// Log entries after the snapshot.
    pub journal_entries: usize,
}

/// Counters of the work behind a handle's operations since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Whole snapshots read (a sale or a read normally reads only new log entries).
    pub snapshot_loads: u64,
    /// Logs folded into a new snapshot.
    pub compactions: u64,
    /// Compactions that failed (the log kept every purchase).
    pub compaction_failures: u64,
}

/// The store on one of its media.
#[derive(Debug)]
enum Backing {
    File(Front<FileMedium>),
    Postgres(Front<PgMedium>),
}

/// Calls the same method on whichever medium backs the store.
macro_rules! on_medium {
    ($backing:expr, $front:ident => $call:expr) => {
        match $backing {
            Backing::File($front) => $call,
            Backing::Postgres($front) => $call,
        }
    };
}

/// Where the store takes "now" when it decides a batch, and a node when it reads: the
/// system clock, or for tests a clock set ahead or behind (as another host's may be).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Arc::new(SystemTime::now))
    }

    /// The system clock set `ahead` into the future.
    pub fn ahead(ahead: Duration) -> Self {
        Self(Arc::new(move || SystemTime::now() + ahead))
    }

    /// The system clock set `behind` into the past.
    pub fn behind(behind: Duration) -> Self {
        Self(Arc::new(move || {
            SystemTime::now()
                .checked_sub(behind)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }))
    }

    /// Any clock (a test's, moved by hand).
    pub fn from_fn(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    pub fn now(&self) -> SystemTime {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock(..)")
    }
}

/// A handle on the shared store. Clones share one cache.
#[derive(Debug, Clone)]
pub struct TicketStore {
    backing: Arc<Backing>,
    /// The smallest log, in bytes, that is folded into the snapshot.
    compact_min_bytes: u64,
    /// The time decisions are made at (the later of it and the log's latest time).
    clock: Clock,
}

impl TicketStore {
    /// A handle on the file store in `dir`. Touches nothing on disk: a missing or broken
    /// store is reported by each operation, so a node can start before the store is seeded.
    pub fn new(dir: impl Into<PathBuf>, lock_timeout: Duration) -> Self {
        Self::on(Backing::File(Front::new(FileMedium::new(
            dir.into(),
            lock_timeout,
        ))))
    }

    /// A handle on the PostgreSQL store at `url`. Connects to nothing yet; fails only on a
    /// URL that cannot be parsed.
    pub fn postgres(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        Ok(Self::on(Backing::Postgres(Front::new(PgMedium::new(
            url, options,
        )?))))
    }

    fn on(backing: Backing) -> Self {
        Self {
            backing: Arc::new(backing),
            compact_min_bytes: COMPACT_MIN_BYTES,
            clock: Clock::system(),
        }
    }

    /// Makes decisions (and [`TicketStore::now`]) use `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The store's clock: what a read passes as `now` to `Inventory::events_at`,
    /// `hold`, `ticket_status` and the like.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Sets the smallest log, in bytes, that is folded into the snapshot.
    pub fn with_compaction_threshold(mut self, bytes: u64) -> Self {
        self.compact_min_bytes = bytes;
        self
    }

    /// The data directory of a file store.
    pub fn dir(&self) -> Option<&Path> {
        match &*self.backing {
            Backing::File(front) => Some(front.medium().dir()),
            Backing::Postgres(_) => None,
        }
    }

    /// Whether a store has been created (it may still be unreadable); false when the
    /// medium cannot be reached to tell.
    pub fn exists(&self) -> bool {
        on_medium!(&*self.backing, front => front.medium().exists()).unwrap_or(false)
    }

    /// Where the store is, for messages: the data directory, or host:port/database.
    pub fn location(&self) -> String {
        match &*self.backing {
            Backing::File(front) => front.medium().dir().display().to_string(),
            Backing::Postgres(front) => front.medium().database().to_owned(),
        }
    }

    /// Runs `f` on the current state: every purchase committed before the call began, by
    /// any process, is in it.
    pub fn read<T>(&self, f: impl FnOnce(&Inventory) -> T) -> Result<T, StoreError> {
        on_medium!(&*self.backing, front => front.read(f))
    }

    /// Reads the store as a read does when something changed: through the lock on the file
    /// store (a round trip on PostgreSQL), even when no lock is needed to know the cached
    /// state is current. A health check's probe of whether the store is busy.
    pub fn probe(&self) -> Result<(), StoreError> {
        on_medium!(&*self.backing, front => front.probe())
    }

    /// Runs `f` on the current state if that needs no lock and no waiting (the file store
    /// finds its journal exactly as this process last left it, and no commit of this
    /// process is under way); otherwise hands `f` back, for `read` on a thread that may
    /// block. The same guarantee as `read` when it answers.
    pub fn read_now<T, F: FnOnce(&Inventory) -> T>(&self, f: F) -> Result<T, F> {
        on_medium!(&*self.backing, front => front.read_now(f))
    }

    /// Decides `orders` (purchases, holds, confirms, releases, cancels) in order under one
    /// exclusive lock hold, at the store clock's time then (or the log's latest time, if
    /// later), and makes every entry they produced durable in one step. The error means
    /// nothing was committed (or, for `CommitUnknown`, that nobody can tell); the batch's
    /// outcomes are each order's own.
    pub fn commit_batch(
        &self,
        orders: &[Order],
        node: &str,
    ) -> Result<CommittedBatch<Decision>, StoreError> {
        self.commit_batch_joining(orders, &mut Vec::new, node)
    }

    /// `commit_batch`, and then the orders `joining` returns, in the same commit:
    /// `joining` is called once the exclusive lock is held, so orders that arrived while
    /// the commit waited for it are decided in it rather than waiting for the next one.
    /// Their outcomes follow those of `orders`.
    pub fn commit_batch_joining(
        &self,
        orders: &[Order],
        joining: &mut dyn FnMut() -> Vec<Order>,
        node: &str,
    ) -> Result<CommittedBatch<Decision>, StoreError> {
        on_medium!(&*self.backing, front => front.commit_batch(orders, joining, node, &self.clock, self.compact_min_bytes))
    }

    /// One order: `commit_batch` of one.
    pub fn commit(&self, order: &Order, node: &str) -> Result<Decision, StoreError> {
        let mut batch = self.commit_batch(std::slice::from_ref(order), node)?;
        batch
            .outcomes
            .pop()
            .ok_or_else(|| StoreError::Unstable("a batch of one decided nothing".into()))
    }

    /// Purchases only: `commit_batch` of each order's purchase, answered as
    /// `PurchaseOutcome`s.
    pub fn purchase_batch(
        &self,
        orders: &[PurchaseOrder],
        node: &str,
    ) -> Result<CommittedBatch, StoreError> {
        let orders: Vec<Order> = orders.iter().map(PurchaseOrder::to_order).collect();
        let batch = self.commit_batch(&orders, node)?;
        Ok(CommittedBatch {
            outcomes: batch
                .outcomes
                .into_iter()
                .map(|decided| purchase_outcome(decided?))
                .collect(),
            lock_wait: batch.lock_wait,
            append_and_sync: batch.append_and_sync,
        })
    }

    /// One purchase: `purchase_batch` of one.
    pub fn purchase(
        &self,
        request: &PurchaseRequest,
        key: Option<&IdempotencyKey>,
        node: &str,
    ) -> Result<Result<PurchaseOutcome, PurchaseError>, StoreError> {
        let order = PurchaseOrder {
            request: request.clone(),
            key: key.cloned(),
        };
        let mut batch = self.purchase_batch(std::slice::from_ref(&order), node)?;
        batch
            .outcomes
            .pop()
            .ok_or_else(|| StoreError::Unstable("a batch of one decided nothing".into()))
    }

    /// Writes `inventory` as a fresh store. Refuses to replace an existing store unless
    /// `force`.
    pub fn create(&self, inventory: &Inventory, force: bool) -> Result<(), StoreError> {
        on_medium!(&*self.backing, front => front.create(inventory, force))
    }

    /// Waits until no compaction of this process runs in the background (a file store
    /// folds its journal on a thread of its own), so that a program about to exit leaves
    /// no half-built snapshot and `stats` counts it.
    pub fn wait_for_compaction(&self) {
        on_medium!(&*self.backing, front => front.wait_for_compaction())
    }

    /// What this handle (and its clones) did so far.
    pub fn stats(&self) -> StoreStats {
        on_medium!(&*self.backing, front => front.stats())
    }

    /// Reads the whole store from its medium, bypassing the cache, and checks every
    /// invariant.
    pub fn check(&self) -> Result<StoreSummary, StoreError> {
        on_medium!(&*self.backing, front => front.check())
    }
}

/// A purchase order's outcome as the purchase-only calls answer it.
fn purchase_outcome(outcome: Outcome) -> Result<PurchaseOutcome, PurchaseError> {
    match outcome {
        Outcome::Purchase(decided) if decided.changed => Ok(PurchaseOutcome::Created(decided.item)),
        Outcome::Purchase(decided) => Ok(PurchaseOutcome::Replayed(decided.item)),
        // A purchase order answers a purchase; a key used for a hold is refused as reused.
        Outcome::Hold(_) => Err(DecisionError::KeyReused {
            earlier: "a hold".into(),
        }),
    }
}
