//! The file medium: the store as JSON files in a data directory that every node opens.
//!
//! The state is a snapshot, `tickets.json`, plus a journal, `tickets.journal`, of the
//! purchases committed since (JSON lines). Every session holds an advisory lock on
//! `tickets.lock` (shared to read, exclusive to write) and first catches up with the disk:
//! it reloads the snapshot only when it changed (its generation, size, time or inode), and
//! otherwise reads just the journal lines it has not seen. So every read sees every
//! completed write, whichever process made it, while a sale costs the same whatever the
//! inventory's size.
//!
//! A batch of purchases is appended to the journal in one write and made durable with one
//! `fdatasync` (group commit). A process killed mid-append leaves at worst a torn last
//! line, which readers ignore and the next writer cuts off. The journal is folded into a
//! new snapshot in the background, without the lock while the work grows with the
//! inventory, and switched to under the lock in a few milliseconds (`compact`); a
//! process already past the fold point carries on from the new snapshot without reading
//! it.

mod compact;
mod journal;
mod lock;
mod unchanged;

use std::borrow::Borrow;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use shared::{Inventory, LogEntry};

use crate::format::{Follows, JournalHeader, Lineage};
use crate::medium::{CompactionEnd, LogPosition, Medium, ReadSession, Since, WriteSession};
use crate::{StoreError, fault, format};
pub use compact::COMPACTION_LOCK_FILE;
use journal::{Journal, JournalState};
use lock::{LockGuard, LockMode};
use unchanged::LastSeen;

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
    lineage: Lineage,
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl SnapshotStamp {
    /// Whether `metadata` is that of the file this stamp was taken from, unchanged.
    fn describes(&self, metadata: &fs::Metadata) -> bool {
        metadata.ino() == self.inode
            && metadata.len() == self.len
            && metadata.modified().ok() == self.modified
    }

    /// Matches no file: a position holding it is reloaded on its next use.
    const STALE: Self = Self {
        generation: u64::MAX,
        lineage: Lineage::Fresh,
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
    /// The generation the journal's header names, so offsets are never read in another
    /// journal: the snapshot's own, or, after a compaction stopped before its new journal,
    /// the one it was folded from.
    journal_generation: u64,
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

#[derive(Debug, Clone)]
struct Paths {
    dir: PathBuf,
    snapshot: PathBuf,
    journal: PathBuf,
    lock: PathBuf,
}

/// The store in one data directory. Clones share the background compaction.
#[derive(Debug, Clone)]
pub struct FileMedium {
    paths: Paths,
    /// How long an operation waits for the lock before failing with `LockTimeout`.
    lock_timeout: Duration,
    /// This process's background compaction.
    compactor: Arc<crate::compaction::Compactor>,
    /// Where this process last saw the end of the log, for reads that need no lock.
    last_seen: Arc<LastSeen>,
}

/// Snapshots at least this large are parsed with the lock released
/// (`FileSession::load_unlocked`); smaller ones under it, in one lock hold.
const UNLOCKED_LOAD_BYTES: u64 = 1024 * 1024;

/// Tells apart the temporary files of one process's threads.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A read or a write on the file store: the lock, and the snapshot and journal as found
/// once it was taken.
#[derive(Debug)]
pub struct FileSession<'m> {
    medium: &'m FileMedium,
    /// `None` only while a large snapshot is read with the lock released.
    guard: Option<LockGuard>,
    /// Which lock the session holds, to take it again after such a read.
    mode: LockMode,
    stamp: SnapshotStamp,
    journal: Journal,
    role: JournalRole,
}

/// What the journal beside the snapshot is to it, proven when a session begins. Every
/// other pairing is refused, so a journal that may hold purchases the snapshot lacks is
/// never ignored, and never replaced by the next writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JournalRole {
    /// It follows the snapshot: its entries come after it.
    Own,
    /// The snapshot was folded from its first `from` bytes (a compaction stopped between
    /// the snapshot's rename and its new journal's), so only the lines after `from`
    /// apply; the next writer starts the snapshot's own journal with them.
    Folded { from: u64 },
    /// As `Folded`, for a format 1 snapshot that did not record what it folded: proven
    /// when the snapshot is loaded, by finding every entry of the journal in it.
    FoldedUnrecorded,
    /// No journal belongs to the snapshot (written before the journal existed); the next
    /// writer upgrades the store.
    Unjournaled,
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
            compactor: Arc::default(),
            last_seen: Arc::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.paths.dir
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

    fn begin(&self, mode: LockMode) -> Result<FileSession<'_>, StoreError> {
        let guard = lock::acquire(&self.paths.lock, mode, self.lock_timeout)?;
        self.session_under(guard, mode)
    }

    /// A session under `guard`: reads the snapshot's stamp and the journal, and proves
    /// which journal stands beside the snapshot.
    fn session_under(
        &self,
        guard: lock::LockGuard,
        mode: LockMode,
    ) -> Result<FileSession<'_>, StoreError> {
        let stamp = self.snapshot_stamp()?;
        let journal = Journal::open(&self.paths.journal)?;
        let role = self.journal_role(&stamp, &journal)?;
        Ok(FileSession {
            medium: self,
            guard: Some(guard),
            mode,
            stamp,
            journal,
            role,
        })
    }

    /// Proves which journal stands beside the snapshot, or says why it cannot.
    fn journal_role(
        &self,
        stamp: &SnapshotStamp,
        journal: &Journal,
    ) -> Result<JournalRole, StoreError> {
        let path = &self.paths.journal;
        let generation = stamp.generation;
        let Some(header) = journal.header() else {
            return match stamp.lineage {
                Lineage::Unjournaled => Ok(JournalRole::Unjournaled),
                _ => Err(StoreError::corrupt(
                    path,
                    format!(
                        "the journal is missing, and the snapshot (generation {generation}) cannot be read without it: the purchases since the snapshot are in it. Restore {JOURNAL_FILE} and {DATA_FILE} from the same backup"
                    ),
                )),
            };
        };
        let role = match stamp.lineage {
            // A crash between an upgrade's journal and its snapshot leaves exactly this.
            Lineage::Unjournaled if header.upgrade && journal.has_no_entries() => {
                Some(JournalRole::Unjournaled)
            }
            Lineage::Unjournaled => None,
            _ if header.generation == generation => Some(JournalRole::Own),
            // The lines after the fold were appended while the snapshot was being built.
            Lineage::Compacted(follows)
                if header.generation == follows.generation
                    && journal.len() >= follows.journal_len =>
            {
                Some(JournalRole::Folded {
                    from: follows.journal_len,
                })
            }
            Lineage::Unrecorded if header.generation == generation.wrapping_sub(1) => {
                Some(JournalRole::FoldedUnrecorded)
            }
            Lineage::Unrecorded | Lineage::Fresh | Lineage::Compacted(_) => None,
        };
        role.ok_or_else(|| {
            StoreError::corrupt(
                path,
                format!(
                    "the journal (generation {}, {} bytes) is not the one that follows the snapshot ({}): one of the two was replaced or restored on its own. Restore {JOURNAL_FILE} and {DATA_FILE} from the same backup",
                    header.generation,
                    journal.len(),
                    describe(stamp)
                ),
            )
        })
    }

    /// Reads the snapshot's generation from its first line, and its metadata.
    fn snapshot_stamp(&self) -> Result<SnapshotStamp, StoreError> {
        let path = &self.paths.snapshot;
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(self.snapshot_missing());
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
            Some(header) => Ok(SnapshotStamp {
                generation: header.generation,
                lineage: header.lineage,
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
                return Err(self.snapshot_missing());
            }
            Err(e) => return Err(StoreError::io("reading", path)(e)),
        };
        format::decode(&bytes).map_err(|reason| StoreError::corrupt(path, reason))
    }

    /// Reads and decodes the snapshot file opened as `file`, which `stamp` describes.
    fn decode_opened(
        &self,
        mut file: File,
        stamp: &SnapshotStamp,
    ) -> Result<format::Snapshot, StoreError> {
        let path = &self.paths.snapshot;
        let mut bytes = Vec::with_capacity(stamp.len as usize);
        file.read_to_end(&mut bytes)
            .map_err(StoreError::io("reading", path))?;
        let after = file.metadata().map_err(StoreError::io("reading", path))?;
        if !stamp.describes(&after) {
            return Err(StoreError::corrupt(
                path,
                "the snapshot was changed in place while it was read",
            ));
        }
        format::decode(&bytes).map_err(|reason| StoreError::corrupt(path, reason))
    }

    /// `Missing` when there is no store at all; a journal without its snapshot still holds
    /// acknowledged purchases, so that is a damaged store, not a missing one.
    fn snapshot_missing(&self) -> StoreError {
        if fs::symlink_metadata(&self.paths.journal).is_ok() {
            return StoreError::corrupt(
                &self.paths.snapshot,
                format!(
                    "the snapshot is missing beside a journal: restore {DATA_FILE} and {JOURNAL_FILE} from the same backup"
                ),
            );
        }
        StoreError::Missing(self.paths.dir.clone())
    }

    /// Replaces the snapshot atomically: temporary file, fsync, rename, fsync directory.
    /// An error means the old snapshot is still in place; `Ok(false)` that the new one
    /// replaced it but the directory could not be synced, so the rename may not survive a
    /// power cut.
    fn write_snapshot(
        &self,
        inventory: &Inventory,
        generation: u64,
        follows: Option<Follows>,
    ) -> Result<bool, StoreError> {
        let dir = &self.paths.dir;
        remove_stale_temp_files(dir);
        let temp_path = temp_path(dir, DATA_FILE);
        let result = write_temp(&temp_path, |out| match follows {
            Some(follows) => format::encode_folded(inventory, generation, follows, out),
            None => format::encode(inventory, generation, out),
        })
        .and_then(|()| {
            fault::abort_at("snapshot-after-temp");
            fs::rename(&temp_path, &self.paths.snapshot)
                .map_err(StoreError::io("renaming", &temp_path))
        });
        if let Err(err) = result {
            // The temporary file is ours alone; removing it keeps a full disk from filling
            // up further.
            let _ = fs::remove_file(&temp_path);
            return Err(err);
        }
        fault::abort_at("snapshot-after-rename");
        match sync_dir(dir) {
            Ok(()) => Ok(true),
            Err(err) => {
                tracing::warn!(cause = %err, "the new snapshot is in place but not synced");
                Ok(false)
            }
        }
    }

    /// Rewrites a snapshot from before the journal in the current format, with a journal
    /// of its own (exclusive lock held). The journal comes first, marked as an upgrade's,
    /// so a crash between the two leaves a state that is provably this one.
    fn upgrade(&self) -> Result<(), StoreError> {
        let snapshot = self.load_snapshot()?;
        let generation = self.write_generation(
            &snapshot.inventory,
            true,
            "upgrade-after-journal",
            "the upgraded snapshot",
        )?;
        tracing::info!(generation, "upgraded a store written before the journal");
        Ok(())
    }

    /// Writes `inventory` as a new store (exclusive lock held) and returns its generation:
    /// a random one, so no process mistakes it for one it has cached. The journal comes
    /// first, marked `upgrade` or not: a crash between the two leaves a journal without a
    /// snapshot, which is refused, never a snapshot that seems to have lost its journal.
    /// `after_journal` names the fault point between them; `what` the snapshot in errors.
    fn write_generation(
        &self,
        inventory: &Inventory,
        upgrade: bool,
        after_journal: &str,
        what: &str,
    ) -> Result<u64, StoreError> {
        let generation = rand::random::<u64>() >> 1;
        let header = JournalHeader {
            generation,
            upgrade,
        };
        Journal::create(&self.paths.journal, &self.paths.dir, header)?;
        fault::abort_at(after_journal);
        if !self.write_snapshot(inventory, generation, None)? {
            return Err(StoreError::io("syncing", &self.paths.dir)(
                io::Error::other(format!("{what} may not be durable")),
            ));
        }
        Ok(generation)
    }
}

/// The snapshot's header, for an operator.
fn describe(stamp: &SnapshotStamp) -> String {
    let generation = stamp.generation;
    match stamp.lineage {
        Lineage::Unjournaled => "format 1, written before the journal existed".to_owned(),
        Lineage::Unrecorded => format!("generation {generation}, format 1"),
        Lineage::Fresh => format!("generation {generation}, written fresh"),
        Lineage::Compacted(follows) => format!(
            "generation {generation}, folded from the journal of generation {} at {} bytes",
            follows.generation, follows.journal_len
        ),
    }
}

impl Medium for FileMedium {
    type Position = FilePosition;
    type Reader<'m> = FileSession<'m>;
    type Writer<'m> = FileSession<'m>;

    fn begin_read(&self) -> Result<FileSession<'_>, StoreError> {
        self.begin(LockMode::Shared)
    }

    fn unchanged_since(&self, position: &FilePosition) -> bool {
        self.last_seen
            .unchanged_since(position, &self.paths.journal, &self.paths.snapshot)
    }

    fn begin_write(&self) -> Result<FileSession<'_>, StoreError> {
        let mut session = self.begin(LockMode::Exclusive)?;
        match session.role {
            // Appending beside a snapshot from before the journal could not be told apart
            // from a deleted journal later: upgrade first, then look again.
            JournalRole::Unjournaled => self.upgrade()?,
            // A compaction stopped before its new journal: start it, then look again.
            JournalRole::Folded { from } => session.start_own_journal(from)?,
            JournalRole::Own | JournalRole::FoldedUnrecorded => return Ok(session),
        }
        let Some(guard) = session.guard.take() else {
            return self.begin_write();
        };
        self.session_under(guard, LockMode::Exclusive)
    }

    fn create(&self, inventory: &Inventory, force: bool) -> Result<(), StoreError> {
        // Checked before anything is created, and again under the lock.
        self.refuse_existing(force)?;
        fs::create_dir_all(&self.paths.dir).map_err(StoreError::io("creating", &self.paths.dir))?;
        let _guard = lock::acquire(&self.paths.lock, LockMode::Exclusive, self.lock_timeout)?;
        self.refuse_existing(force)?;
        self.write_generation(inventory, false, "create-after-journal", "the new snapshot")?;
        Ok(())
    }

    fn exists(&self) -> Result<bool, StoreError> {
        Ok(self.paths.snapshot.exists())
    }

    fn compacts_in_background(&self) -> bool {
        true
    }

    fn start_compaction(&self, position: &FilePosition) {
        // Only from the snapshot's own journal: after an interrupted switch, the next
        // writer first starts it.
        if position.journal_generation == position.stamp.generation
            && matches!(position.journal, JournalState::At { .. })
        {
            compact::start(self, *position);
        }
    }

    fn ended_compactions(&self) -> Vec<CompactionEnd> {
        self.compactor.take_ended()
    }

    fn wait_for_compaction(&self) {
        self.compactor.wait();
    }
}

impl ReadSession for FileSession<'_> {
    type Position = FilePosition;

    fn load_snapshot(&mut self) -> Result<(Inventory, FilePosition), StoreError> {
        if self.stamp.len >= UNLOCKED_LOAD_BYTES && self.role != JournalRole::FoldedUnrecorded {
            return self.load_unlocked();
        }
        let snapshot = self.medium.load_snapshot()?;
        if snapshot.generation != self.stamp.generation || snapshot.lineage != self.stamp.lineage {
            return Err(StoreError::corrupt(
                &self.medium.paths.snapshot,
                "the snapshot changed while the lock was held",
            ));
        }
        if self.role == JournalRole::FoldedUnrecorded {
            self.prove_folded(&snapshot.inventory)?;
        }
        let journal = match self.role {
            JournalRole::Folded { from } => JournalState::At {
                offset: from,
                entries: 0,
            },
            _ => JournalState::Unread,
        };
        let position = FilePosition {
            stamp: self.stamp,
            journal,
            journal_generation: self.journal_generation(),
        };
        Ok((snapshot.inventory, position))
    }

    fn read_since(&mut self, position: &FilePosition) -> Result<Since<FilePosition>, StoreError> {
        let Some(position) = self.hand_over(position)? else {
            return Ok(Since::Reload);
        };
        let mut journal = position.journal;
        let entries = match self.role {
            JournalRole::Own | JournalRole::Folded { .. } => self.journal.replay(&mut journal)?,
            // Nothing in the journal beside the snapshot applies to it.
            JournalRole::FoldedUnrecorded | JournalRole::Unjournaled => {
                journal = JournalState::Stale;
                Vec::new()
            }
        };
        let end = FilePosition {
            journal,
            ..position
        };
        self.note_end(end, &self.journal);
        Ok(Since::Entries { entries, end })
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
        entries: &[LogEntry],
    ) -> Result<FilePosition, StoreError> {
        let paths = &self.medium.paths;
        // A lock file deleted or replaced since this session locked it no longer keeps
        // others out: write nothing.
        if !self.guard.as_ref().is_some_and(|g| g.still_at(&paths.lock)) {
            return Err(StoreError::Unstable(format!(
                "{} was deleted or replaced while this writer held it; nothing was written",
                paths.lock.display()
            )));
        }
        if self.journal_generation() != position.journal_generation
            && position.journal != JournalState::Stale
        {
            return Err(StoreError::Unstable(
                "appending at a position in another journal; nothing was written".into(),
            ));
        }
        let mut state = position.journal;
        let mut journal = Journal::prepare_for_append(
            &paths.journal,
            &paths.dir,
            self.stamp.generation,
            &mut state,
        )?;
        let mut lines = Vec::new();
        for entry in entries {
            format::encode_journal_entry(entry, &mut lines);
        }
        journal.append(&mut state, &lines, entries.len())?;
        let end = FilePosition {
            stamp: position.stamp,
            journal: state,
            journal_generation: self.stamp.generation,
        };
        self.note_end(end, &journal);
        Ok(end)
    }

    fn settle(&mut self, from: &FilePosition) -> Result<(), StoreError> {
        // A journal replaced since (compaction, reseed) was synced by whoever replaced it.
        if from.stamp != self.stamp
            || from.journal_generation != self.journal_generation()
            || self.role != JournalRole::Own
        {
            return Ok(());
        }
        Journal::settle(&self.medium.paths.journal, from.log_bytes())
    }

    fn write_snapshot(
        &mut self,
        inventory: &Inventory,
        position: &FilePosition,
    ) -> Result<FilePosition, StoreError> {
        let medium = self.medium;
        let next = position.stamp.generation.wrapping_add(1);
        let follows = Follows {
            generation: position.stamp.generation,
            journal_len: position.log_bytes(),
        };
        let synced = medium.write_snapshot(inventory, next, Some(follows))?;
        self.stamp = medium.snapshot_stamp().unwrap_or(SnapshotStamp::STALE);
        // The new snapshot is in place: from here on the state holds whatever happens to
        // its journal. Without one, the old journal is still the one it folded, which the
        // next writer replaces.
        let header = JournalHeader {
            generation: next,
            upgrade: false,
        };
        let journal = if synced {
            Journal::create(&medium.paths.journal, &medium.paths.dir, header)
        } else {
            Err(StoreError::io("syncing", &medium.paths.dir)(
                io::Error::other("the new snapshot's rename may not be durable yet"),
            ))
        };
        let journal = match journal {
            Ok(journal) => journal,
            Err(err) => {
                tracing::warn!(cause = %err, "the new snapshot has no journal yet; the next write starts it");
                self.role = JournalRole::Folded {
                    from: follows.journal_len,
                };
                return Ok(FilePosition {
                    stamp: self.stamp,
                    journal: position.journal,
                    journal_generation: follows.generation,
                });
            }
        };
        fault::abort_at("compaction-done");
        Ok(FilePosition {
            stamp: self.stamp,
            journal,
            journal_generation: next,
        })
    }
}

impl FileSession<'_> {
    /// Records, for the reads that check without the lock, that the log ends at `end` in
    /// `journal` (opened under this session's lock, which is held). Only the snapshot's own
    /// journal counts: in every other pairing a read must work out what applies.
    fn note_end(&self, end: FilePosition, journal: &Journal) {
        if self.guard.is_none() || self.role != JournalRole::Own {
            return;
        }
        if let Some(metadata) = journal.metadata() {
            self.medium.last_seen.record(end, &metadata);
        }
    }

    /// Loads a large snapshot with the lock released, so no other process waits while it
    /// is parsed: the file is opened under the lock (it is then the one the session found,
    /// and a snapshot is only ever replaced by a rename, never changed in place), read
    /// without it, and the lock is taken again, with a fresh look at the store. If the store
    /// moved on meanwhile, the position returned is the loaded snapshot's, and the next
    /// `read_since` hands it over or sends the caller back to the snapshot.
    fn load_unlocked(&mut self) -> Result<(Inventory, FilePosition), StoreError> {
        let medium = self.medium;
        let path = &medium.paths.snapshot;
        let file = File::open(path).map_err(StoreError::io("opening", path))?;
        let opened = file.metadata().map_err(StoreError::io("reading", path))?;
        let stamp = self.stamp;
        if !stamp.describes(&opened) {
            return Err(StoreError::corrupt(
                path,
                "the snapshot changed while the lock was held",
            ));
        }
        let (role, journal_generation) = (self.role, self.journal_generation());
        // Released: the other processes read and write while this one parses.
        self.guard = None;
        let loaded = medium.decode_opened(file, &stamp);
        *self = match self.mode {
            LockMode::Exclusive => medium.begin_write()?,
            LockMode::Shared => medium.begin_read()?,
        };
        let snapshot = loaded?;
        if snapshot.generation != stamp.generation || snapshot.lineage != stamp.lineage {
            return Err(StoreError::corrupt(
                path,
                "the snapshot's header changed while it was read",
            ));
        }
        let journal = match role {
            JournalRole::Folded { from } => JournalState::At {
                offset: from,
                entries: 0,
            },
            _ => JournalState::Unread,
        };
        let position = FilePosition {
            stamp,
            journal,
            journal_generation,
        };
        Ok((snapshot.inventory, position))
    }

    /// The generation the journal beside the snapshot names (the snapshot's when there is
    /// no journal).
    fn journal_generation(&self) -> u64 {
        self.journal
            .header()
            .map_or(self.stamp.generation, |h| h.generation)
    }

    /// `position` as a position in the store as this session found it, without reading the
    /// snapshot: itself when nothing was replaced, its translation when the snapshot was
    /// folded from the journal it reads at a point it has passed (a compaction by any
    /// process), `None` when only a reload can tell (the process is behind the fold, or
    /// the store was replaced).
    fn hand_over(&self, position: &FilePosition) -> Result<Option<FilePosition>, StoreError> {
        if position.stamp == self.stamp
            && (position.journal_generation == self.journal_generation()
                || position.journal == JournalState::Stale)
        {
            return Ok(Some(*position));
        }
        let Lineage::Compacted(follows) = self.stamp.lineage else {
            return Ok(None);
        };
        let JournalState::At { offset, .. } = position.journal else {
            return Ok(None);
        };
        let read_the_folded_journal = position.journal_generation == follows.generation
            && (position.stamp.generation == follows.generation || position.stamp == self.stamp);
        if !read_the_folded_journal || offset < follows.journal_len {
            return Ok(None);
        }
        // The new journal holds the folded one's lines after the fold, from its header on.
        let (offset, entries_from) = match self.role {
            JournalRole::Folded { from } => (offset, from),
            JournalRole::Own => {
                let start = self.journal.header_len();
                (offset - follows.journal_len + start, start)
            }
            JournalRole::FoldedUnrecorded | JournalRole::Unjournaled => return Ok(None),
        };
        if offset > self.journal.len() {
            return Ok(None);
        }
        Ok(Some(FilePosition {
            stamp: self.stamp,
            journal: JournalState::At {
                offset,
                entries: self.journal.count_lines(entries_from, offset)?,
            },
            journal_generation: self.journal_generation(),
        }))
    }

    /// Starts the snapshot's own journal with the lines of the journal it was folded from
    /// after `from` (exclusive lock held): the step a compaction stopped before.
    fn start_own_journal(&mut self, from: u64) -> Result<(), StoreError> {
        let tail = self.journal.lines_after(from)?;
        let header = JournalHeader {
            generation: self.stamp.generation,
            upgrade: false,
        };
        let paths = &self.medium.paths;
        Journal::create_with(&paths.journal, &paths.dir, header, &tail)?;
        tracing::info!(
            generation = self.stamp.generation,
            bytes = tail.len(),
            "started the journal of a snapshot whose compaction stopped before it"
        );
        Ok(())
    }

    /// Proves that a format 1 snapshot was folded from the journal of the generation
    /// before it: every entry of that journal is in the snapshot, as it was written.
    fn prove_folded(&mut self, inventory: &Inventory) -> Result<(), StoreError> {
        let mut state = JournalState::Unread;
        for entry in self.journal.replay(&mut state)? {
            if !inventory.contains_entry(&entry.entry) {
                return Err(StoreError::corrupt(
                    &self.medium.paths.journal,
                    format!(
                        "the journal of the generation before the snapshot's holds {} (line at byte {}), which the snapshot lacks: it is not the journal the snapshot was folded from. Restore {JOURNAL_FILE} and {DATA_FILE} from the same backup",
                        entry.entry.subject(),
                        entry.at
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Removes temporary files left by a process killed mid-write. Called with the exclusive
/// lock held, when no other process can be writing one.
fn remove_stale_temp_files(dir: &Path) {
    remove_temp_files(dir, WRITER_TEMP_SUFFIX);
}

/// Removes the temporary files in `dir` whose names end in `suffix`.
fn remove_temp_files(dir: &Path, suffix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".tickets.") && name.ends_with(suffix) {
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

/// A temporary file's name: the process id and a counter are not enough, since every
/// container runs its node as PID 1, so 64 random bits go in too. Temporary files are only
/// written under the exclusive lock, and created with `create_new`, so a clash could at
/// worst fail a write, never mix two.
fn temp_path(dir: &Path, name: &str) -> PathBuf {
    temp_path_ending(dir, name, WRITER_TEMP_SUFFIX)
}

/// The suffix of the writers' temporary files.
const WRITER_TEMP_SUFFIX: &str = ".tmp";

/// A temporary file's name as `temp_path` makes it, ending in `suffix`.
fn temp_path_ending(dir: &Path, name: &str, suffix: &str) -> PathBuf {
    dir.join(format!(
        ".{name}.{}.{}.{:016x}{suffix}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u64>()
    ))
}

/// Creates `path`, fills it through `fill`, and fsyncs it.
fn write_temp(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<(), StoreError> {
    write_new(path, |file| file, fill)
}

/// Creates `path`, fills it through `fill` writing into `wrap` of the new file (buffered),
/// and fsyncs it once all is written.
fn write_new<W: Write + Borrow<File>>(
    path: &Path,
    wrap: impl FnOnce(File) -> W,
    fill: impl FnOnce(&mut BufWriter<W>) -> io::Result<()>,
) -> Result<(), StoreError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(StoreError::io("creating", path))?;
    let mut out = BufWriter::with_capacity(256 * 1024, wrap(file));
    fill(&mut out).map_err(StoreError::io("writing", path))?;
    let written = out
        .into_inner()
        .map_err(|e| StoreError::io("writing", path)(e.into_error()))?;
    written
        .borrow()
        .sync_all()
        .map_err(StoreError::io("syncing", path))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("syncing", dir))
}

#[cfg(test)]
mod tests;
