//! Compaction off the commit path: the journal is folded into a new snapshot by a thread
//! of its own, while sales go on appending, and the switch takes the exclusive lock only
//! for a time that does not depend on the inventory's size.
//!
//! # Steps
//!
//! A commit that finds the journal of generation G grown past the policy's limit starts a
//! job for its position: G, and L, the journal's length once the commit was durable. At
//! most one job runs at a time in the whole store (a `try_lock` on
//! `tickets.compaction.lock`); another process's commit that finds it taken leaves it.
//!
//! 1. **Build, with no lock.** Read the snapshot of generation G (the very file the
//!    position names: same inode, length and time) and the journal of generation G up to
//!    L, as a fresh process would, and write the state as the snapshot of generation G + 1
//!    that *follows journal G up to L* (format 2's `follows`) to a temporary file, synced.
//!    Both files are immutable up to there: a snapshot is only ever replaced by a rename,
//!    and a journal's bytes before a durable position are never rewritten.
//! 2. **Copy the tail ahead, with a shared lock for a moment.** The journal's length read
//!    under a shared lock is made of lines that are in the log for good (no writer is
//!    half-way through an append then); the lines from L to there are copied, after a new
//!    header naming G + 1, into a temporary journal, synced, a few rounds while the tail
//!    is long.
//! 3. **Switch, with the exclusive lock.** Check that the snapshot and journal are still
//!    those of generation G, copy the lines appended since step 2 (a few milliseconds'
//!    worth), sync, rename the snapshot into place, sync the directory, rename the journal
//!    into place, sync the directory.
//!
//! # What a crash leaves
//!
//! - Before the snapshot's rename: the old store, untouched, and temporary files that
//!   the next job removes.
//! - Between the two renames: the snapshot G + 1, following journal G up to L, beside
//!   journal G, which may be longer than L. Readers apply journal G's lines after L (the
//!   `Folded` role); the next writer first starts journal G + 1 with them, then appends.
//! - After the journal's rename: the new store.
//!
//! Each of these has a crash test (`tests/tests/crash.rs`), as every earlier step has.
//!
//! # Handover
//!
//! No process reads the new snapshot unless it must: a process whose state is at or past
//! L in journal G translates its position to the same point in journal G + 1 (which
//! starts with journal G's lines after L) on its next read. Only a process behind L, or a
//! new one, loads the snapshot.

use std::borrow::Borrow;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::journal::{Journal, JournalState};
use super::lock::{self, LockMode};
use super::{
    FileMedium, FilePosition, JournalRole, remove_temp_files, sync_dir, temp_path_ending, write_new,
};
use crate::format::{self, Follows, JournalHeader};
use crate::medium::{Compacted, LogPosition};
use crate::{StoreError, fault};

/// The file a compaction holds locked while it runs, in every process. It holds no data.
pub const COMPACTION_LOCK_FILE: &str = "tickets.compaction.lock";

/// A tail longer than this after a round of copying is copied again before the switch,
/// so the exclusive lock is held for only a few milliseconds' worth of appends.
const SHORT_TAIL: u64 = 256 * 1024;
/// At most this many rounds of copying before the switch.
const COPY_ROUNDS: usize = 4;

/// Starts a job folding the journal up to `from` unless one of this process runs.
pub fn start(medium: &FileMedium, from: FilePosition) {
    let job = medium.clone();
    medium
        .compactor
        .start(from.generation(), from.log_bytes(), move || {
            compact(&job, &from)
        });
}

/// The compaction lock, held for the whole job; `None` when another job holds it.
fn claim(dir: &Path) -> Result<Option<File>, StoreError> {
    let path = dir.join(COMPACTION_LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(StoreError::io("opening", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(StoreError::io("locking", &path)(e)),
    }
}

/// The temporary files of one job, removed when it ends unless renamed into place.
struct Temps {
    snapshot: PathBuf,
    journal: PathBuf,
    snapshot_placed: bool,
    journal_placed: bool,
}

impl Drop for Temps {
    fn drop(&mut self) {
        if !self.snapshot_placed {
            let _ = fs::remove_file(&self.snapshot);
        }
        if !self.journal_placed {
            let _ = fs::remove_file(&self.journal);
        }
    }
}

/// The suffix of a compaction's temporary files, which only a compaction removes (the
/// writers' own temporary files end in `.tmp`).
const TEMP_SUFFIX: &str = ".compacting";

fn temp_path(dir: &Path, name: &str) -> PathBuf {
    temp_path_ending(dir, name, TEMP_SUFFIX)
}

/// Removes the temporary files of jobs that died (the compaction lock held, so none runs).
fn remove_dead_jobs_files(dir: &Path) {
    remove_temp_files(dir, TEMP_SUFFIX);
}

/// One job: the three steps of the module's documentation.
pub(super) fn compact(medium: &FileMedium, from: &FilePosition) -> Result<Compacted, StoreError> {
    let paths = &medium.paths;
    let Some(_claim) = claim(&paths.dir)? else {
        return Ok(Compacted::Superseded);
    };
    remove_dead_jobs_files(&paths.dir);
    let generation = from.stamp.generation;
    let fold_at = from.log_bytes();
    let next = generation.wrapping_add(1);

    // 1. The state at (G, L), from the files, with no lock.
    let Some((inventory, journal)) = state_at(medium, from)? else {
        return Ok(Compacted::Superseded);
    };
    let mut temps = Temps {
        snapshot: temp_path(&paths.dir, super::DATA_FILE),
        journal: temp_path(&paths.dir, super::JOURNAL_FILE),
        snapshot_placed: false,
        journal_placed: false,
    };
    let follows = Follows {
        generation,
        journal_len: fold_at,
    };
    write_synced_as_it_goes(&temps.snapshot, |out| {
        format::encode_folded(&inventory, next, follows, out)
    })?;
    drop(inventory);
    fault::abort_at("compaction-snapshot-temp");

    // 2. The tail appended meanwhile, copied ahead of the switch.
    let header = format::encode_journal_header(JournalHeader {
        generation: next,
        upgrade: false,
    });
    let new_journal = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temps.journal)
        .map_err(StoreError::io("creating", &temps.journal))?;
    let mut written = header.len() as u64;
    new_journal
        .write_all_at(&header, 0)
        .map_err(StoreError::io("writing", &temps.journal))?;
    let mut copied = fold_at;
    for _ in 0..COPY_ROUNDS {
        let durable = {
            let _shared = lock::acquire(&paths.lock, LockMode::Shared, medium.lock_timeout)?;
            if !journal.still_at(&paths.journal) {
                return Ok(Compacted::Superseded);
            }
            journal.current_len()?
        };
        let tail = journal.read_range(copied, durable)?;
        let whole = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        // In pieces synced one by one, as the snapshot was written.
        for piece in tail[..whole].chunks(SYNC_EVERY as usize) {
            new_journal
                .write_all_at(piece, written)
                .and_then(|()| new_journal.sync_data())
                .map_err(StoreError::io("writing", &temps.journal))?;
            written += piece.len() as u64;
        }
        copied += whole as u64;
        if (whole as u64) < SHORT_TAIL {
            break;
        }
    }
    new_journal
        .sync_data()
        .map_err(StoreError::io("syncing", &temps.journal))?;
    fault::abort_at("compaction-journal-temp");

    // 3. The switch, under the exclusive lock.
    let guard = lock::acquire(&paths.lock, LockMode::Exclusive, medium.lock_timeout)?;
    let mut session = medium.session_under(guard, LockMode::Exclusive)?;
    if session.stamp != from.stamp
        || session.role != JournalRole::Own
        || session.journal_generation() != generation
    {
        return Ok(Compacted::Superseded);
    }
    if !session
        .guard
        .as_ref()
        .is_some_and(|g| g.still_at(&paths.lock))
    {
        return Err(StoreError::Unstable(format!(
            "{} was deleted or replaced during a compaction; nothing was switched",
            paths.lock.display()
        )));
    }
    let last = session.journal.lines_after(copied)?;
    new_journal
        .write_all_at(&last, written)
        .and_then(|()| new_journal.sync_data())
        .map_err(StoreError::io("writing", &temps.journal))?;
    drop(new_journal);
    fs::rename(&temps.snapshot, &paths.snapshot)
        .map_err(StoreError::io("renaming", &temps.snapshot))?;
    temps.snapshot_placed = true;
    fault::abort_at("compaction-after-snapshot-rename");
    // From here on the new snapshot is in place, and every failure leaves the state the
    // next writer completes (the `Folded` role): the compaction is done either way.
    if let Err(err) = sync_dir(&paths.dir) {
        tracing::warn!(cause = %err, "the new snapshot is in place but not synced; the next writer starts its journal");
        return Ok(Compacted::Switched);
    }
    if let Err(err) = fs::rename(&temps.journal, &paths.journal) {
        tracing::warn!(cause = %err, "the new snapshot has no journal yet; the next writer starts it");
        return Ok(Compacted::Switched);
    }
    temps.journal_placed = true;
    fault::abort_at("compaction-after-journal-rename");
    if let Err(err) = sync_dir(&paths.dir) {
        tracing::warn!(cause = %err, "the new journal is in place but not synced");
    }
    fault::abort_at("compaction-done");
    Ok(Compacted::Switched)
}

/// The state at `from`, read from the snapshot file it names and the journal up to its
/// offset, with the journal (for the copy of its tail); `None` when the snapshot or the
/// journal was replaced since (another process compacted, or reseeded).
fn state_at(
    medium: &FileMedium,
    from: &FilePosition,
) -> Result<Option<(shared::Inventory, Journal)>, StoreError> {
    let paths = &medium.paths;
    let mut file = match File::open(&paths.snapshot) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("opening", &paths.snapshot)(e)),
    };
    let metadata = file
        .metadata()
        .map_err(StoreError::io("reading", &paths.snapshot))?;
    let stamp = &from.stamp;
    if !stamp.describes(&metadata) {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    io::Read::read_to_end(&mut file, &mut bytes)
        .map_err(StoreError::io("reading", &paths.snapshot))?;
    let snapshot =
        format::decode(&bytes).map_err(|reason| StoreError::corrupt(&paths.snapshot, reason))?;
    drop(bytes);
    if snapshot.generation != stamp.generation || snapshot.lineage != stamp.lineage {
        return Ok(None);
    }
    let mut inventory = snapshot.inventory;
    let mut journal = Journal::open(&paths.journal)?;
    if journal.header().map(|h| h.generation) != Some(stamp.generation)
        || journal.len() < from.log_bytes()
    {
        return Ok(None);
    }
    let mut state = JournalState::Unread;
    for entry in journal.replay_to(&mut state, from.log_bytes())? {
        inventory.apply_entry(entry.entry).map_err(|reason| {
            StoreError::corrupt(
                &paths.journal,
                format!("line at byte {}: {reason}", entry.at),
            )
        })?;
    }
    if !matches!(state, JournalState::At { offset, .. } if offset == from.log_bytes()) {
        return Err(StoreError::corrupt(
            &paths.journal,
            format!("byte {} is not the end of a line", from.log_bytes()),
        ));
    }
    Ok(Some((inventory, journal)))
}

/// Dirty data a compaction lets pile up before it syncs: the snapshot is written to disk
/// as it goes, rather than all at once by its final sync (or by the kernel at a moment of
/// its choosing), so the journal's syncs never queue behind tens of megabytes.
const SYNC_EVERY: u64 = 1024 * 1024;

/// A file that syncs its data every `SYNC_EVERY` bytes written.
struct SyncingFile {
    file: File,
    unsynced: u64,
}

impl Borrow<File> for SyncingFile {
    fn borrow(&self) -> &File {
        &self.file
    }
}

impl Write for SyncingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.unsynced += written as u64;
        if self.unsynced >= SYNC_EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Creates `path`, fills it through `fill`, syncing as it goes and at the end.
fn write_synced_as_it_goes(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<SyncingFile>) -> io::Result<()>,
) -> Result<(), StoreError> {
    write_new(path, |file| SyncingFile { file, unsynced: 0 }, fill)
}
