//! `TicketStore`: the JSON database in a data directory that every node opens.
//!
//! The state is a snapshot, `tickets.json`, plus a journal, `tickets.journal`, of the
//! purchases committed since (JSON lines). Every operation holds an advisory lock on
//! `tickets.lock` (shared to read, exclusive to write) and first catches up with the disk:
//! it reloads the snapshot only when it changed (its generation, size, time or inode), and
//! otherwise reads just the journal lines it has not seen. So every read sees every completed write, whichever
//! process made it, while a sale costs the same whatever the inventory's size.
//!
//! A batch of purchases is decided under one exclusive lock hold, appended to the journal
//! in one write and made durable with one `fdatasync` (group commit). A process killed
//! mid-append leaves at worst a torn last line, which readers ignore and the next writer
//! cuts off. When the journal outgrows the snapshot it is folded into a new snapshot
//! (written to a temporary file, fsynced, renamed, directory fsynced) with the next
//! generation, and every process notices and reloads.
//!
//! These calls block on file I/O and the lock: async callers run them on the blocking pool.

pub mod fault;
pub mod format;
mod journal;
mod lock;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use thiserror::Error;

use crate::domain::{IdempotencyKey, PurchaseRequest};
use crate::inventory::{Inventory, PurchaseError, PurchaseOutcome};
use journal::{Journal, JournalState};
use lock::LockMode;

/// The snapshot's file name inside the data directory.
pub const DATA_FILE: &str = "tickets.json";
/// The journal's file name inside the data directory.
pub const JOURNAL_FILE: &str = "tickets.journal";
/// The lock file's name inside the data directory. It holds no data.
pub const LOCK_FILE: &str = "tickets.lock";

/// The journal is folded into the snapshot once it is larger than this and than half the
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
        source: io::Error,
    },
}

impl StoreError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }

    fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
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
    /// Appending the batch to the journal and syncing it (zero when nothing was sold).
    pub append_and_sync: Duration,
}

/// What a store check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSummary {
    pub generation: u64,
    pub tickets: usize,
    pub sold: usize,
    pub purchases: usize,
    pub journal_entries: usize,
}

/// Identifies one version of the snapshot file: its generation and its metadata, so a
/// snapshot changed in place (by an operator or a disk fault) is reloaded, and so noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SnapshotStamp {
    generation: u64,
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl SnapshotStamp {
    /// Matches no file: a cache holding it is reloaded on its next use.
    const STALE: Self = Self {
        generation: u64::MAX,
        len: u64::MAX,
        modified: None,
        inode: u64::MAX,
    };
}

/// This process's parsed copy of the store, and how far into the journal it has read.
#[derive(Debug)]
struct Cache {
    stamp: SnapshotStamp,
    inventory: Inventory,
    journal: JournalState,
}

#[derive(Debug)]
struct Paths {
    dir: PathBuf,
    snapshot: PathBuf,
    journal: PathBuf,
    lock: PathBuf,
}

/// A handle on the shared store in one data directory. Clones share one cache.
#[derive(Debug, Clone)]
pub struct TicketStore {
    paths: Arc<Paths>,
    /// How long an operation waits for the lock before failing with `LockTimeout`.
    lock_timeout: Duration,
    /// The smallest journal that is folded into the snapshot.
    compact_min_bytes: u64,
    cache: Arc<RwLock<Option<Cache>>>,
}

/// Makes temporary file names unique among the threads of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TicketStore {
    /// A handle on the store in `dir`. Touches nothing on disk: a missing or broken store is
    /// reported by each operation, so a node can start before the store is seeded.
    pub fn new(dir: impl Into<PathBuf>, lock_timeout: Duration) -> Self {
        let dir = dir.into();
        Self {
            paths: Arc::new(Paths {
                snapshot: dir.join(DATA_FILE),
                journal: dir.join(JOURNAL_FILE),
                lock: dir.join(LOCK_FILE),
                dir,
            }),
            lock_timeout,
            compact_min_bytes: COMPACT_MIN_BYTES,
            cache: Arc::default(),
        }
    }

    /// Sets the smallest journal, in bytes, that is folded into the snapshot.
    pub fn with_compaction_threshold(mut self, bytes: u64) -> Self {
        self.compact_min_bytes = bytes;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.paths.dir
    }

    /// Whether a snapshot file exists (it may still be unreadable).
    pub fn exists(&self) -> bool {
        self.paths.snapshot.exists()
    }

    /// Unless `force`, fails if any file holding store data exists: a journal without its
    /// snapshot still holds acknowledged purchases. The lock file holds none (a node started
    /// before seeding creates it).
    fn refuse_existing(&self, force: bool) -> Result<(), StoreError> {
        if force {
            return Ok(());
        }
        for path in [&self.paths.snapshot, &self.paths.journal] {
            match fs::symlink_metadata(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Present, or unknowable: either way not ours to replace.
                _ => return Err(StoreError::AlreadyExists(path.clone())),
            }
        }
        Ok(())
    }

    /// Runs `f` on the current state under the shared lock.
    pub fn read<T>(&self, f: impl FnOnce(&Inventory) -> T) -> Result<T, StoreError> {
        let _guard = lock::acquire(&self.paths.lock, LockMode::Shared, self.lock_timeout)?;
        let stamp = self.snapshot_stamp()?;
        let journal = Journal::open(&self.paths.journal)?;
        {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            if let Some(cache) = cache.as_ref()
                && cache.stamp == stamp
                && journal.is_caught_up(&cache.journal, stamp.generation)
            {
                return Ok(f(&cache.inventory));
            }
        }
        let mut cache = self.cache_for_update();
        let current = self.catch_up(&mut cache, stamp, journal)?;
        Ok(f(&current.inventory))
    }

    /// Decides `orders` in order under one exclusive lock hold and makes the new purchases
    /// durable with one sync. The error means nothing was committed; the batch's outcomes
    /// are each order's own.
    pub fn purchase_batch(
        &self,
        orders: &[PurchaseOrder],
        node: &str,
    ) -> Result<CommittedBatch, StoreError> {
        let waiting = Instant::now();
        let _guard = lock::acquire(&self.paths.lock, LockMode::Exclusive, self.lock_timeout)?;
        let lock_wait = waiting.elapsed();
        let stamp = self.snapshot_stamp()?;
        let journal = Journal::open(&self.paths.journal)?;
        let mut cache = self.cache_for_update();
        let result = self.commit(&mut cache, stamp, journal, orders, node);
        if result.is_err() {
            // The in-memory state may hold decisions that never reached the disk.
            *cache = None;
        }
        let (outcomes, append_and_sync) = result?;
        Ok(CommittedBatch {
            outcomes,
            lock_wait,
            append_and_sync,
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
        batch.outcomes.pop().ok_or_else(|| {
            StoreError::corrupt(&self.paths.journal, "a batch of one decided nothing")
        })
    }

    /// Writes `inventory` as a fresh store, creating the directory if needed. Refuses to
    /// replace an existing store unless `force`.
    pub fn create(&self, inventory: &Inventory, force: bool) -> Result<(), StoreError> {
        // Checked before anything is created, and again under the lock.
        self.refuse_existing(force)?;
        fs::create_dir_all(&self.paths.dir).map_err(StoreError::io("creating", &self.paths.dir))?;
        let _guard = lock::acquire(&self.paths.lock, LockMode::Exclusive, self.lock_timeout)?;
        self.refuse_existing(force)?;
        // A random generation, so no process mistakes the new store for one it has cached.
        let generation = rand::random::<u64>() >> 1;
        self.write_snapshot(inventory, generation)?;
        Journal::create(&self.paths.journal, &self.paths.dir, generation)?;
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    /// Reads the whole store from disk, bypassing the cache, and checks every invariant.
    pub fn check(&self) -> Result<StoreSummary, StoreError> {
        let _guard = lock::acquire(&self.paths.lock, LockMode::Shared, self.lock_timeout)?;
        let stamp = self.snapshot_stamp()?;
        let journal = Journal::open(&self.paths.journal)?;
        let mut cache = None;
        let current = self.catch_up(&mut cache, stamp, journal)?;
        let entries = current.inventory.purchases().len();
        let inventory = &current.inventory;
        Ok(StoreSummary {
            generation: stamp.generation,
            tickets: inventory.tickets().len(),
            sold: inventory.tickets().iter().filter(|t| t.sold).count(),
            purchases: entries,
            journal_entries: current.journal.entries(),
        })
    }

    fn cache_for_update(&self) -> RwLockWriteGuard<'_, Option<Cache>> {
        self.cache.write().unwrap_or_else(|poisoned| {
            let mut cache = poisoned.into_inner();
            *cache = None;
            cache
        })
    }

    /// Reads the snapshot's generation from its first line, and its metadata.
    fn snapshot_stamp(&self) -> Result<SnapshotStamp, StoreError> {
        let path = &self.paths.snapshot;
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(path.clone()));
            }
            Err(e) => return Err(StoreError::io("opening", path)(e)),
        };
        let metadata = file.metadata().map_err(StoreError::io("reading", path))?;
        let mut head = [0u8; 256];
        let filled = read_up_to(&mut file, &mut head).map_err(StoreError::io("reading", path))?;
        let first_line = head[..filled]
            .split(|&b| b == b'\n')
            .next()
            .unwrap_or_default();
        match format::decode_snapshot_header(first_line) {
            Some(header) if header.format == format::FORMAT_VERSION => Ok(SnapshotStamp {
                generation: header.generation,
                len: metadata.len(),
                modified: metadata.modified().ok(),
                inode: metadata.ino(),
            }),
            // Not our layout: a full decode says precisely what is wrong.
            _ => Err(self.load_snapshot().err().unwrap_or_else(|| {
                StoreError::corrupt(path, "the first line is not a snapshot header")
            })),
        }
    }

    fn load_snapshot(&self) -> Result<format::Snapshot, StoreError> {
        let path = &self.paths.snapshot;
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(path.clone()));
            }
            Err(e) => return Err(StoreError::io("reading", path)(e)),
        };
        format::decode(&bytes).map_err(|reason| StoreError::corrupt(path, reason))
    }

    /// Brings `cache` up to date with the disk (lock held) and returns it.
    fn catch_up<'c>(
        &self,
        cache: &'c mut Option<Cache>,
        stamp: SnapshotStamp,
        mut journal: Journal,
    ) -> Result<&'c mut Cache, StoreError> {
        let generation = stamp.generation;
        let reusable = cache.take().filter(|c| c.stamp == stamp);
        let mut current = match reusable {
            Some(current) => current,
            None => {
                let snapshot = self.load_snapshot()?;
                if snapshot.generation != generation {
                    return Err(StoreError::corrupt(
                        &self.paths.snapshot,
                        "the snapshot changed while the lock was held",
                    ));
                }
                Cache {
                    stamp,
                    inventory: snapshot.inventory,
                    journal: JournalState::Unread,
                }
            }
        };
        journal.replay(&mut current.journal, generation, &mut current.inventory)?;
        Ok(cache.insert(current))
    }

    fn commit(
        &self,
        cache: &mut Option<Cache>,
        stamp: SnapshotStamp,
        journal: Journal,
        orders: &[PurchaseOrder],
        node: &str,
    ) -> Result<(Vec<Result<PurchaseOutcome, PurchaseError>>, Duration), StoreError> {
        let current = self.catch_up(cache, stamp, journal)?;
        let mut journal = Journal::prepare_for_append(
            &self.paths.journal,
            &self.paths.dir,
            stamp.generation,
            &mut current.journal,
        )?;
        let mut lines = Vec::new();
        let outcomes: Vec<_> = orders
            .iter()
            .map(|order| {
                let outcome =
                    current
                        .inventory
                        .purchase_tickets(&order.request, order.key.as_ref(), node);
                if let Ok(PurchaseOutcome::Created(purchase)) = &outcome {
                    format::encode_journal_entry(purchase, &mut lines);
                }
                outcome
            })
            .collect();
        let mut append_and_sync = Duration::ZERO;
        if !lines.is_empty() {
            let appended = lines.iter().filter(|&&b| b == b'\n').count();
            let appending = Instant::now();
            journal.append(&mut current.journal, &lines, appended)?;
            append_and_sync = appending.elapsed();
            self.maybe_compact(current, journal.len());
        }
        Ok((outcomes, append_and_sync))
    }

    /// Folds the journal into a new snapshot once it is large; a failure here loses
    /// nothing (the journal still holds every purchase) and is retried on a later write.
    fn maybe_compact(&self, current: &mut Cache, journal_len: u64) {
        if journal_len < self.compact_min_bytes.max(current.stamp.len / 2) {
            return;
        }
        let next = current.stamp.generation.wrapping_add(1);
        let compacted = self
            .write_snapshot(&current.inventory, next)
            .and_then(|()| Journal::create(&self.paths.journal, &self.paths.dir, next));
        match compacted {
            Ok(state) => {
                fault::abort_at("compaction-done");
                current.stamp = self.snapshot_stamp().unwrap_or(SnapshotStamp::STALE);
                current.journal = state;
            }
            Err(err) => {
                tracing::warn!(cause = %err, "compaction failed; the journal keeps every purchase");
                // If the snapshot was replaced but the journal was not, the next operation
                // must reload; forgetting the stamp forces that.
                current.stamp = SnapshotStamp::STALE;
            }
        }
    }

    /// Replaces the snapshot atomically: temporary file, fsync, rename, fsync directory.
    fn write_snapshot(&self, inventory: &Inventory, generation: u64) -> Result<(), StoreError> {
        let dir = &self.paths.dir;
        remove_stale_temp_files(dir);
        let temp_path = temp_path(dir, DATA_FILE);
        let result = write_temp(&temp_path, |out| format::encode(inventory, generation, out))
            .and_then(|()| {
                fault::abort_at("snapshot-after-temp");
                fs::rename(&temp_path, &self.paths.snapshot)
                    .map_err(StoreError::io("renaming", &temp_path))
            });
        if result.is_err() {
            // The temporary file is ours alone; removing it keeps a full disk from filling
            // up further.
            let _ = fs::remove_file(&temp_path);
            return result;
        }
        fault::abort_at("snapshot-after-rename");
        sync_dir(dir)
    }
}

/// Removes temporary files left by a process killed mid-write. Called with the exclusive
/// lock held, when no other process can be writing one.
fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".tickets.") && name.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Reads until `buf` is full or the file ends.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn temp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Creates `path`, fills it through `fill`, and fsyncs it.
fn write_temp(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<(), StoreError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(StoreError::io("creating", path))?;
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    fill(&mut out).map_err(StoreError::io("writing", path))?;
    let file = out
        .into_inner()
        .map_err(|e| StoreError::io("writing", path)(e.into_error()))?;
    file.sync_all().map_err(StoreError::io("syncing", path))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("syncing", dir))
}

#[cfg(test)]
mod tests;
