//! `TicketStore`: the shared, strictly consistent ticket store every node opens, on one of
//! two media: JSON files in a data directory (the default), or PostgreSQL.
//!
//! The store is a log of committed purchases after a snapshot of the inventory. Every
//! process keeps its parsed state and reads only the entries it has not seen, so every read
//! sees every completed write, whichever process made it, while a sale costs the same
//! whatever the inventory's size. A batch of purchases is decided under one exclusive lock
//! hold and appended in one step (group commit). The decisions live once, in `front`; what
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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shared::{IdempotencyKey, Inventory, PurchaseError, PurchaseOutcome, PurchaseRequest};
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

/// One purchase to decide in a batch.
#[derive(Debug, Clone)]
pub struct PurchaseOrder {
    pub request: PurchaseRequest,
    pub key: Option<IdempotencyKey>,
}

/// A committed batch: each order's outcome, and where the time went.
#[derive(Debug)]
pub struct CommittedBatch {
    pub outcomes: Vec<Result<PurchaseOutcome, PurchaseError>>,
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
    pub purchases: usize,
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

/// A handle on the shared store. Clones share one cache.
#[derive(Debug, Clone)]
pub struct TicketStore {
    backing: Arc<Backing>,
    /// The smallest log, in bytes, that is folded into the snapshot.
    compact_min_bytes: u64,
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
        }
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

    /// Decides `orders` in order under one exclusive lock hold and makes the new purchases
    /// durable in one step. The error means nothing was committed (or, for
    /// `CommitUnknown`, that nobody can tell); the batch's outcomes are each order's own.
    pub fn purchase_batch(
        &self,
        orders: &[PurchaseOrder],
        node: &str,
    ) -> Result<CommittedBatch, StoreError> {
        on_medium!(&*self.backing, front => front.purchase_batch(orders, node, self.compact_min_bytes))
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
