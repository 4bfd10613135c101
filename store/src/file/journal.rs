//! The journal file: a header line naming the snapshot generation it follows, then one
//! committed purchase per line. Reading replays only the lines a process has not seen;
//! appending writes a whole batch at once and syncs it; a torn last line (a writer killed
//! mid-append) is ignored by readers and cut off by the next writer.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{StoreError, fault, format, read_up_to, sync_dir, temp_path, write_temp};
use crate::medium::Entry;

/// How much of the journal a process has applied to its cached inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalState {
    /// Nothing read yet (a snapshot was just loaded).
    Unread,
    /// The journal is missing or belongs to an older snapshot: nothing in it applies.
    Stale,
    /// Every complete line before byte `offset` is applied; `entries` of them.
    At { offset: u64, entries: usize },
}

impl JournalState {
    pub fn entries(&self) -> usize {
        match self {
            Self::At { entries, .. } => *entries,
            Self::Unread | Self::Stale => 0,
        }
    }
}

/// The journal as found on disk at one moment, under the store lock.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// `None` when there is no journal file.
    file: Option<File>,
    /// The generation in the header.
    generation: u64,
    header_len: u64,
    len: u64,
}

impl Journal {
    /// Opens the journal read-only and reads its header.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut journal = Self {
            path: path.to_owned(),
            file: None,
            generation: 0,
            header_len: 0,
            len: 0,
        };
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(journal),
            Err(e) => return Err(StoreError::io("opening", path)(e)),
        };
        let mut head = [0u8; 128];
        let n = read_up_to(&mut file, &mut head).map_err(StoreError::io("reading", path))?;
        let line_end = head[..n]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| StoreError::corrupt(path, "the journal has no header line"))?;
        journal.generation = format::decode_journal_header(&head[..line_end])
            .map_err(|reason| StoreError::corrupt(path, reason))?;
        journal.header_len = line_end as u64 + 1;
        journal.len = file
            .metadata()
            .map_err(StoreError::io("reading", path))?
            .len();
        journal.file = Some(file);
        Ok(journal)
    }

    fn belongs_to(&self, generation: u64) -> bool {
        self.file.is_some() && self.generation == generation
    }

    /// Reads the complete lines after `state` and moves `state` past them.
    pub fn replay(
        &mut self,
        state: &mut JournalState,
        generation: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        if !self.belongs_to(generation) {
            *state = JournalState::Stale;
            return Ok(Vec::new());
        }
        let (start, mut entries) = match *state {
            JournalState::At { offset, entries } => (offset, entries),
            JournalState::Unread | JournalState::Stale => (self.header_len, 0),
        };
        if start > self.len {
            return Err(StoreError::corrupt(
                &self.path,
                format!("the journal shrank below byte {start} without a new generation"),
            ));
        }
        let mut read = Vec::new();
        let Some(file) = self.file.as_mut() else {
            return Ok(read);
        };
        if start < self.len {
            let mut tail = Vec::with_capacity((self.len - start) as usize);
            file.seek(SeekFrom::Start(start))
                .and_then(|_| file.take(self.len - start).read_to_end(&mut tail))
                .map_err(StoreError::io("reading", &self.path))?;
            let mut consumed = 0;
            // A last piece without a newline is a torn append: never acknowledged, not
            // applied.
            while let Some(end) = tail[consumed..].iter().position(|&b| b == b'\n') {
                let line = &tail[consumed..consumed + end];
                let at = start + consumed as u64;
                let purchase = format::decode_journal_entry(line).map_err(|reason| {
                    StoreError::corrupt(&self.path, format!("line at byte {at}: {reason}"))
                })?;
                read.push(Entry { at, purchase });
                consumed += end + 1;
                entries += 1;
            }
            *state = JournalState::At {
                offset: start + consumed as u64,
                entries,
            };
        } else {
            *state = JournalState::At {
                offset: start,
                entries,
            };
        }
        Ok(read)
    }

    /// Writes a fresh, empty journal for `generation` atomically.
    pub fn create(path: &Path, dir: &Path, generation: u64) -> Result<JournalState, StoreError> {
        let header = format::encode_journal_header(generation);
        let temp = temp_path(dir, super::JOURNAL_FILE);
        let written = write_temp(&temp, |out| io::Write::write_all(out, &header)).and_then(|()| {
            fault::abort_at("journal-create-after-temp");
            std::fs::rename(&temp, path).map_err(StoreError::io("renaming", &temp))
        });
        if let Err(err) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(err);
        }
        sync_dir(dir)?;
        Ok(JournalState::At {
            offset: header.len() as u64,
            entries: 0,
        })
    }

    /// Readies the journal for appending after a replay (exclusive lock held): starts a new
    /// one if it is missing or stale, and cuts off a torn last line.
    pub fn prepare_for_append(
        path: &Path,
        dir: &Path,
        generation: u64,
        state: &mut JournalState,
    ) -> Result<Self, StoreError> {
        if !matches!(state, JournalState::At { .. }) {
            *state = Self::create(path, dir, generation)?;
        }
        let JournalState::At { offset, .. } = *state else {
            return Err(StoreError::corrupt(
                path,
                "the journal could not be started",
            ));
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(StoreError::io("opening", path))?;
        let len = file
            .metadata()
            .map_err(StoreError::io("reading", path))?
            .len();
        if len > offset {
            file.set_len(offset)
                .and_then(|()| file.sync_data())
                .map_err(StoreError::io("truncating a torn line of", path))?;
        }
        Ok(Self {
            path: path.to_owned(),
            file: Some(file),
            generation,
            header_len: 0,
            len: offset,
        })
    }

    /// Appends `lines` (holding `count` entries) in one write and syncs them. On failure
    /// the journal is cut back to where it was, as far as the disk allows.
    pub fn append(
        &mut self,
        state: &mut JournalState,
        lines: &[u8],
        count: usize,
    ) -> Result<(), StoreError> {
        let Some(file) = self.file.as_ref() else {
            return Err(StoreError::corrupt(
                &self.path,
                "appending to a journal not opened for writing",
            ));
        };
        if fault::armed("journal-torn-write") {
            // Half a batch reaches the file, as when a writer dies inside write(2).
            let _ = file.write_all_at(&lines[..lines.len() / 2], self.len);
            fault::abort_at("journal-torn-write");
            let _ = file.set_len(self.len);
        }
        let written = file.write_all_at(lines, self.len).and_then(|()| {
            fault::abort_at("journal-after-write");
            file.sync_data()
        });
        if let Err(err) = written {
            let _ = file.set_len(self.len).and_then(|()| file.sync_data());
            return Err(StoreError::io("appending to", &self.path)(err));
        }
        fault::abort_at("journal-after-sync");
        self.len += lines.len() as u64;
        if let JournalState::At { offset, entries } = state {
            *offset = self.len;
            *entries += count;
        }
        Ok(())
    }
}
