//! `TicketStore`: the JSON database in a data directory that every node opens. Every
//! operation holds an advisory lock on `tickets.lock` and reads the current state from
//! disk, so every node sees every completed write; a write replaces `tickets.json`
//! atomically (temporary file, fsync, rename, fsync of the directory), so a process killed
//! at any instant leaves either the old or the new state whole.
//!
//! These calls block on file I/O and the lock: async callers run them on the blocking pool.

pub mod format;
mod lock;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;

use crate::inventory::Inventory;
use lock::LockMode;

/// The database file's name inside the data directory.
pub const DATA_FILE: &str = "tickets.json";
/// The lock file's name inside the data directory. It holds no data.
pub const LOCK_FILE: &str = "tickets.lock";

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
}

/// A handle on the shared JSON store in one data directory. Cheap to clone into tasks.
#[derive(Debug, Clone)]
pub struct TicketStore {
    dir: PathBuf,
    data_path: PathBuf,
    lock_path: PathBuf,
    /// How long an operation waits for the lock before failing with `LockTimeout`.
    lock_timeout: Duration,
}

/// Makes temporary file names unique among the threads of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TicketStore {
    /// A handle on the store in `dir`. Touches nothing on disk: a missing or broken store is
    /// reported by each operation, so a node can start before the store is seeded.
    pub fn new(dir: impl Into<PathBuf>, lock_timeout: Duration) -> Self {
        let dir = dir.into();
        Self {
            data_path: dir.join(DATA_FILE),
            lock_path: dir.join(LOCK_FILE),
            dir,
            lock_timeout,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `f` on the current state under the shared lock.
    pub fn read<T>(&self, f: impl FnOnce(&Inventory) -> T) -> Result<T, StoreError> {
        let _guard = lock::acquire(&self.lock_path, LockMode::Shared, self.lock_timeout)?;
        let inventory = self.load()?;
        Ok(f(&inventory))
    }

    /// Runs `f` on the current state under the exclusive lock and saves the state if `f`
    /// says it changed (`f` returns `(result, changed)`).
    pub fn update<T>(&self, f: impl FnOnce(&mut Inventory) -> (T, bool)) -> Result<T, StoreError> {
        let _guard = lock::acquire(&self.lock_path, LockMode::Exclusive, self.lock_timeout)?;
        let mut inventory = self.load()?;
        let (result, changed) = f(&mut inventory);
        if changed {
            self.save(&inventory)?;
        }
        Ok(result)
    }

    /// Writes `inventory` as a fresh store, creating the directory if needed. Refuses to
    /// replace an existing store unless `force`.
    pub fn create(&self, inventory: &Inventory, force: bool) -> Result<(), StoreError> {
        fs::create_dir_all(&self.dir).map_err(StoreError::io("creating", &self.dir))?;
        let _guard = lock::acquire(&self.lock_path, LockMode::Exclusive, self.lock_timeout)?;
        if !force && self.data_path.exists() {
            return Err(StoreError::AlreadyExists(self.data_path.clone()));
        }
        self.save(inventory)
    }

    /// Whether a store file exists (it may still be unreadable).
    pub fn exists(&self) -> bool {
        self.data_path.exists()
    }

    fn load(&self) -> Result<Inventory, StoreError> {
        let bytes = match fs::read(&self.data_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(self.data_path.clone()));
            }
            Err(e) => return Err(StoreError::io("reading", &self.data_path)(e)),
        };
        format::decode(&bytes).map_err(|reason| StoreError::Corrupt {
            path: self.data_path.clone(),
            reason,
        })
    }

    /// Replaces the data file atomically: temporary file, fsync, rename, fsync directory.
    fn save(&self, inventory: &Inventory) -> Result<(), StoreError> {
        let temp_path = self.dir.join(format!(
            ".{DATA_FILE}.{}.{}.tmp",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = self.write_temp(&temp_path, inventory).and_then(|()| {
            fs::rename(&temp_path, &self.data_path).map_err(StoreError::io("renaming", &temp_path))
        });
        if result.is_err() {
            // The temporary file is ours alone; removing it keeps a full disk from filling up
            // further. If removal fails too, the next successful write is unaffected.
            let _ = fs::remove_file(&temp_path);
            return result;
        }
        sync_dir(&self.dir)
    }

    fn write_temp(&self, temp_path: &Path, inventory: &Inventory) -> Result<(), StoreError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(temp_path)
            .map_err(StoreError::io("creating", temp_path))?;
        let mut out = BufWriter::with_capacity(256 * 1024, file);
        format::encode(inventory, &mut out).map_err(StoreError::io("writing", temp_path))?;
        let file = out
            .into_inner()
            .map_err(|e| StoreError::io("writing", temp_path)(e.into_error()))?;
        file.sync_all()
            .map_err(StoreError::io("syncing", temp_path))
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("syncing", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventName, PurchaseRequest, Quantity, Ticket};
    use crate::inventory::PurchaseOutcome;

    fn seeded(dir: &Path, tickets: u64) -> TicketStore {
        let store = TicketStore::new(dir, Duration::from_secs(5));
        let tickets = (1..=tickets)
            .map(|id| Ticket {
                id,
                event: EventName::parse("concert").expect("valid"),
                price_cents: 100,
                sold: false,
            })
            .collect();
        let inventory = Inventory::from_tickets(tickets).expect("consistent");
        store.create(&inventory, false).expect("fresh directory");
        store
    }

    fn buy(store: &TicketStore, quantity: u32) -> Result<PurchaseOutcome, crate::PurchaseError> {
        let request = PurchaseRequest::new(
            EventName::parse("concert").expect("valid"),
            Quantity::new(quantity).expect("valid"),
        );
        store
            .update(|inv| {
                let outcome = inv.purchase_tickets(&request, None, "test");
                let changed = matches!(outcome, Ok(PurchaseOutcome::Created(_)));
                (outcome, changed)
            })
            .expect("store works")
    }

    #[test]
    fn a_write_is_seen_by_another_handle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = seeded(dir.path(), 5);
        buy(&store, 2).expect("available");
        let other = TicketStore::new(dir.path(), Duration::from_secs(5));
        let sold = other
            .read(|inv| inv.tickets().iter().filter(|t| t.sold).count())
            .expect("readable");
        assert_eq!(sold, 2);
    }

    #[test]
    fn seeding_refuses_to_overwrite_unless_forced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = seeded(dir.path(), 1);
        let again = store.create(&Inventory::default(), false);
        assert!(matches!(again, Err(StoreError::AlreadyExists(_))));
        store
            .create(&Inventory::default(), true)
            .expect("forced overwrite");
        assert_eq!(store.read(|inv| inv.tickets().len()).expect("readable"), 0);
    }

    #[test]
    fn a_missing_store_is_reported_as_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TicketStore::new(dir.path(), Duration::from_secs(1));
        assert!(matches!(store.read(|_| ()), Err(StoreError::Missing(_))));
    }

    #[test]
    fn a_corrupt_store_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = seeded(dir.path(), 1);
        fs::write(dir.path().join(DATA_FILE), b"{not json").expect("write");
        let err = store.update(|_| ((), true)).expect_err("corrupt");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert_eq!(
            fs::read(dir.path().join(DATA_FILE)).expect("read"),
            b"{not json"
        );
    }

    #[test]
    fn writes_leave_no_temporary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = seeded(dir.path(), 3);
        buy(&store, 1).expect("available");
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [DATA_FILE, LOCK_FILE]);
    }

    #[test]
    fn threads_racing_for_a_small_inventory_never_sell_a_ticket_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = seeded(dir.path(), 50);
        let sold: Vec<u32> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let store = store.clone();
                    s.spawn(move || {
                        let mut sold = 0;
                        for round in 0..10 {
                            let q = 1 + (i + round) % 3;
                            if buy(&store, q).is_ok() {
                                sold += q;
                            }
                        }
                        sold
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("no panic"))
                .collect()
        });
        let (sold_flags, purchased) = store
            .read(|inv| {
                let flags = inv.tickets().iter().filter(|t| t.sold).count() as u32;
                let purchased: u32 = inv.purchases().iter().map(|p| p.tickets.len() as u32).sum();
                (flags, purchased)
            })
            .expect("readable");
        assert_eq!(sold.iter().sum::<u32>(), purchased);
        assert_eq!(sold_flags, purchased);
    }
}
