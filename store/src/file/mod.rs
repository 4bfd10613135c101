//! The file medium: the store as JSON files in a data directory that every node opens.
//!
//! The state is a snapshot, `tickets.json`, plus a journal, `tickets.journal`, of the
//! purchases committed since (JSON lines). Every session holds an advisory lock on
//! `tickets.lock` (shared to read, exclusive to write) and first catches up with the disk:
//! it reloads the snapshot only when it changed (its generation, size, time or inode), and
//! otherwise reads just the journal lines it has not seen. So every read sees every completed write, whichever
//! process made it, while a sale costs the same whatever the inventory's size.
//!
//! A batch of purchases is appended to the journal in one write and made durable with one
//! `fdatasync` (group commit). A process killed mid-append leaves at worst a torn last
//! line, which readers ignore and the next writer cuts off. A new snapshot is written to a
//! temporary file, fsynced, renamed, directory fsynced, with the next generation, and
//! every process notices and reloads.

mod journal;
mod lock;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use shared::{Inventory, Purchase};

use crate::medium::{LogPosition, Medium, ReadSession, Since, WriteSession};
use crate::{StoreError, fault, format};
use journal::{Journal, JournalState};
use lock::{LockGuard, LockMode};

/// The snapshot's file name inside the data directory.
pub const DATA_FILE: &str = "tickets.json";
/// The journal's file name inside the data directory.
pub const JOURNAL_FILE: &str = "tickets.journal";
/// The lock file's name inside the data directory. It holds no data.
pub const LOCK_FILE: &str = "tickets.lock";

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
    /// Matches no file: a position holding it is reloaded on its next use.
    const STALE: Self = Self {
        generation: u64::MAX,
        len: u64::MAX,
        modified: None,
        inode: u64::MAX,
    };
}

/// How far into the file store a process has read: which snapshot, and how much of the
/// journal that follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilePosition {
    stamp: SnapshotStamp,
    journal: JournalState,
}

impl LogPosition for FilePosition {
    fn generation(&self) -> u64 {
        self.stamp.generation
    }

    fn entries(&self) -> usize {
        self.journal.entries()
    }

    fn log_bytes(&self) -> u64 {
        match self.journal {
            JournalState::At { offset, .. } => offset,
            JournalState::Unread | JournalState::Stale => 0,
        }
    }

    fn snapshot_bytes(&self) -> u64 {
        self.stamp.len
    }
}

#[derive(Debug)]
struct Paths {
    dir: PathBuf,
    snapshot: PathBuf,
    journal: PathBuf,
    lock: PathBuf,
}

/// The store in one data directory.
#[derive(Debug)]
pub struct FileMedium {
    paths: Paths,
    /// How long an operation waits for the lock before failing with `LockTimeout`.
    lock_timeout: Duration,
}

/// Makes temporary file names unique among the threads of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A read or a write on the file store: the lock, and the snapshot and journal as found
/// once it was taken.
#[derive(Debug)]
pub struct FileSession<'m> {
    medium: &'m FileMedium,
    _guard: LockGuard,
    stamp: SnapshotStamp,
    journal: Journal,
}

impl FileMedium {
    /// A handle on the store in `dir`. Touches nothing on disk.
    pub fn new(dir: PathBuf, lock_timeout: Duration) -> Self {
        Self {
            paths: Paths {
                snapshot: dir.join(DATA_FILE),
                journal: dir.join(JOURNAL_FILE),
                lock: dir.join(LOCK_FILE),
                dir,
            },
            lock_timeout,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.paths.dir
    }

    fn begin(&self, mode: LockMode) -> Result<FileSession<'_>, StoreError> {
        let guard = lock::acquire(&self.paths.lock, mode, self.lock_timeout)?;
        let stamp = self.snapshot_stamp()?;
        let journal = Journal::open(&self.paths.journal)?;
        Ok(FileSession {
            medium: self,
            _guard: guard,
            stamp,
            journal,
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

impl Medium for FileMedium {
    type Position = FilePosition;
    type Reader<'m> = FileSession<'m>;
    type Writer<'m> = FileSession<'m>;

    fn begin_read(&self) -> Result<FileSession<'_>, StoreError> {
        self.begin(LockMode::Shared)
    }

    fn begin_write(&self) -> Result<FileSession<'_>, StoreError> {
        self.begin(LockMode::Exclusive)
    }

    fn create(&self, inventory: &Inventory, force: bool) -> Result<(), StoreError> {
        fs::create_dir_all(&self.paths.dir).map_err(StoreError::io("creating", &self.paths.dir))?;
        let _guard = lock::acquire(&self.paths.lock, LockMode::Exclusive, self.lock_timeout)?;
        if !force && self.paths.snapshot.exists() {
            return Err(StoreError::AlreadyExists(self.paths.snapshot.clone()));
        }
        // A random generation, so no process mistakes the new store for one it has cached.
        let generation = rand::random::<u64>() >> 1;
        self.write_snapshot(inventory, generation)?;
        Journal::create(&self.paths.journal, &self.paths.dir, generation)?;
        Ok(())
    }

    fn exists(&self) -> Result<bool, StoreError> {
        Ok(self.paths.snapshot.exists())
    }
}

impl ReadSession for FileSession<'_> {
    type Position = FilePosition;

    fn load_snapshot(&mut self) -> Result<(Inventory, FilePosition), StoreError> {
        let snapshot = self.medium.load_snapshot()?;
        if snapshot.generation != self.stamp.generation {
            return Err(StoreError::corrupt(
                &self.medium.paths.snapshot,
                "the snapshot changed while the lock was held",
            ));
        }
        let position = FilePosition {
            stamp: self.stamp,
            journal: JournalState::Unread,
        };
        Ok((snapshot.inventory, position))
    }

    fn read_since(&mut self, position: &FilePosition) -> Result<Since<FilePosition>, StoreError> {
        if position.stamp != self.stamp {
            return Ok(Since::Reload);
        }
        let mut journal = position.journal;
        let entries = self.journal.replay(&mut journal, self.stamp.generation)?;
        Ok(Since::Entries {
            entries,
            end: FilePosition {
                stamp: self.stamp,
                journal,
            },
        })
    }

    fn bad_entry(&self, at: u64, reason: String) -> StoreError {
        StoreError::corrupt(
            &self.medium.paths.journal,
            format!("line at byte {at}: {reason}"),
        )
    }
}

impl WriteSession for FileSession<'_> {
    fn append(
        &mut self,
        position: &FilePosition,
        entries: &[Purchase],
    ) -> Result<FilePosition, StoreError> {
        let paths = &self.medium.paths;
        let mut state = position.journal;
        let mut journal = Journal::prepare_for_append(
            &paths.journal,
            &paths.dir,
            self.stamp.generation,
            &mut state,
        )?;
        let mut lines = Vec::new();
        for purchase in entries {
            format::encode_journal_entry(purchase, &mut lines);
        }
        journal.append(&mut state, &lines, entries.len())?;
        Ok(FilePosition {
            stamp: position.stamp,
            journal: state,
        })
    }

    fn write_snapshot(
        &mut self,
        inventory: &Inventory,
        position: &FilePosition,
    ) -> Result<FilePosition, StoreError> {
        let medium = self.medium;
        let next = position.stamp.generation.wrapping_add(1);
        medium.write_snapshot(inventory, next)?;
        let journal = Journal::create(&medium.paths.journal, &medium.paths.dir, next)?;
        fault::abort_at("compaction-done");
        self.stamp = medium.snapshot_stamp().unwrap_or(SnapshotStamp::STALE);
        Ok(FilePosition {
            stamp: self.stamp,
            journal,
        })
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
