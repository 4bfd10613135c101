//! The check a read makes before it takes the lock: whether the journal is exactly as a
//! session of this process last saw it under the lock, at the end of the log. If so,
//! nothing was appended, cut or replaced since, the state cached at that position is the
//! newest, and the read needs no lock, no turnstile and no open: a `stat` of the
//! journal's path, and one of the snapshot's, so that damage to it is still noticed.
//!
//! # Why it gives the same guarantee as the lock
//!
//! - A write is acknowledged only after its bytes were written to the journal at the path
//!   (and synced), so a read that starts after the acknowledgement finds the file there
//!   longer than it was, or another file (a compaction or a seeding renames a new journal
//!   into place).
//! - Committed bytes are never taken out of a journal in place. The only cuts are of
//!   bytes never acknowledged (a failed append cut back, a torn last line), so a length
//!   back where it was after a cut means a state that did not change. A recording is
//!   taken only at a clean end (the position ends exactly where the file does), so no
//!   torn tail can be cut and refilled to the same length behind it.
//! - The device, inode, length and both times must all match, so a later journal that
//!   happens to get the freed inode number of an old one is not taken for it.
//! - A snapshot is never replaced without its journal: a compaction renames the new
//!   journal right after the new snapshot (between the two the state is the same by
//!   construction), a seeding writes the journal first.
//!
//! Anything else (another file, any change, an error) sends the read down the locked
//! path, as before.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use super::FilePosition;
use super::journal::JournalState;

/// What identifies the journal file and its contents' extent at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JournalSeen {
    dev: u64,
    ino: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl JournalSeen {
    fn of(metadata: &fs::Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
            len: metadata.len(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// The last position at which a session of this process saw the journal, under the lock.
#[derive(Debug, Default)]
pub(super) struct LastSeen(Mutex<Option<(FilePosition, JournalSeen)>>);

impl LastSeen {
    /// Records that the journal, opened under the lock the caller still holds, was
    /// `metadata` while the log ended at `position`; kept only at a clean end.
    pub(super) fn record(&self, position: FilePosition, metadata: &fs::Metadata) {
        let JournalState::At { offset, .. } = position.journal else {
            return;
        };
        if offset != metadata.len() {
            return;
        }
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((position, JournalSeen::of(metadata)));
    }

    /// Whether the log still ends at `position`: its recording is the last one, the file
    /// at `journal` matches it exactly, and the file at `snapshot` is still the one
    /// `position` was read from (a snapshot damaged or replaced by hand is noticed, as a
    /// locked read notices it).
    pub(super) fn unchanged_since(
        &self,
        position: &FilePosition,
        journal: &Path,
        snapshot: &Path,
    ) -> bool {
        let seen = match *self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            Some((at, seen)) if at == *position => seen,
            _ => return false,
        };
        fs::metadata(journal).is_ok_and(|now| JournalSeen::of(&now) == seen)
            && fs::metadata(snapshot).is_ok_and(|now| position.stamp.describes(&now))
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{File, OpenOptions};
    use std::time::Duration;

    use crate::testing::{buy, inventory, sold_count};
    use crate::{JOURNAL_FILE, LOCK_FILE, StoreError, TicketStore};

    /// Two handles on one data directory, as two nodes have, with a short lock wait.
    fn two_handles(dir: &std::path::Path) -> (TicketStore, TicketStore) {
        let wait = Duration::from_millis(200);
        let first = TicketStore::new(dir, wait);
        first.create(&inventory(20), false).expect("created");
        (first, TicketStore::new(dir, wait))
    }

    /// The store's lock taken exclusively by someone else (a writer frozen before it wrote).
    fn lock_elsewhere(dir: &std::path::Path) -> File {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .expect("lock file");
        file.lock().expect("locked");
        file
    }

    #[test]
    fn a_read_that_finds_the_journal_as_it_left_it_needs_no_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (reader, writer) = two_handles(dir.path());
        buy(&writer, 2).expect("sold");
        assert_eq!(sold_count(&reader), 2, "the first read takes the lock");
        let held = lock_elsewhere(dir.path());
        assert_eq!(
            sold_count(&reader),
            2,
            "nothing changed: answered without the lock"
        );
        assert_eq!(reader.read_now(|inv| inv.tickets().len()).ok(), Some(20));
        // A writer still waits for the lock, and so does a read after any change.
        let waited = writer.purchase(&crate::testing::request(1), None, "w");
        assert!(
            matches!(waited, Err(StoreError::LockTimeout(_))),
            "{waited:?}"
        );
        drop(held);
    }

    #[test]
    fn every_write_by_another_process_sends_the_next_read_through_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (reader, writer) = two_handles(dir.path());
        assert_eq!(sold_count(&reader), 0);
        for sold in 1..=5 {
            buy(&writer, 1).expect("sold");
            assert!(reader.read_now(|_| ()).is_err(), "the journal grew");
            assert_eq!(sold_count(&reader), sold);
        }
        // A compaction replaces the journal (another file, shorter): noticed too.
        let compacting =
            TicketStore::new(dir.path(), Duration::from_secs(5)).with_compaction_threshold(0);
        buy(&compacting, 1).expect("sold");
        compacting.wait_for_compaction();
        buy(&writer, 1).expect("sold after the compaction");
        assert_eq!(sold_count(&reader), 7);
    }

    #[test]
    fn a_snapshot_damaged_under_a_current_cache_is_still_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (reader, _writer) = two_handles(dir.path());
        assert_eq!(sold_count(&reader), 0);
        std::fs::write(dir.path().join(crate::DATA_FILE), b"not a store").expect("damaged");
        assert!(reader.read_now(|_| ()).is_err());
        let refused = reader.read(|_| ());
        assert!(
            matches!(refused, Err(StoreError::Corrupt { .. })),
            "{refused:?}"
        );
    }

    #[test]
    fn a_journal_changed_in_place_to_the_same_length_is_not_taken_for_the_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (reader, _writer) = two_handles(dir.path());
        assert_eq!(sold_count(&reader), 0);
        assert!(reader.read_now(|_| ()).is_ok());
        // Rewritten with the same bytes: its length stays, its time does not (set far off,
        // so a coarse clock cannot hide the change).
        let journal = dir.path().join(JOURNAL_FILE);
        let bytes = std::fs::read(&journal).expect("journal");
        std::fs::write(&journal, &bytes).expect("rewritten");
        let far_off = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        OpenOptions::new()
            .write(true)
            .open(&journal)
            .and_then(|file| file.set_modified(far_off))
            .expect("time set");
        assert!(reader.read_now(|_| ()).is_err());
        assert_eq!(sold_count(&reader), 0);
        assert!(reader.read_now(|_| ()).is_ok(), "seen again under the lock");
    }
}
