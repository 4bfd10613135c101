//! The journal file: a header line naming the snapshot generation it follows, then one
//! log entry per line. Reading replays only the lines a process has not seen;
//! appending writes a whole batch at once and syncs it; a torn last line (a writer killed
//! mid-append) is ignored by readers and cut off by the next writer.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{StoreError, fault, format, read_up_to, sync_dir, temp_path, write_temp};
use crate::format::JournalHeader;
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
    /// What the first line says (`None` when there is no journal file).
    header: Option<JournalHeader>,
    header_len: u64,
    len: u64,
}

impl Journal {
    /// Opens the journal read-only and reads its header.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut journal = Self {
            path: path.to_owned(),
            file: None,
            header: None,
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
        journal.header = Some(
            format::decode_journal_header(&head[..line_end])
                .map_err(|reason| StoreError::corrupt(path, reason))?,
        );
        journal.header_len = line_end as u64 + 1;
        journal.len = file
            .metadata()
            .map_err(StoreError::io("reading", path))?
            .len();
        journal.file = Some(file);
        Ok(journal)
    }

    /// What the header says; `None` when there is no journal.
    pub fn header(&self) -> Option<JournalHeader> {
        self.header
    }

    /// The journal's length in bytes (0 when there is none).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the journal holds nothing after its header.
    pub fn has_no_entries(&self) -> bool {
        self.len <= self.header_len
    }

    /// The length of the header line.
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// Reads the complete lines after `state` and moves `state` past them. The caller has
    /// established that this journal follows its snapshot.
    pub fn replay(&mut self, state: &mut JournalState) -> Result<Vec<Entry>, StoreError> {
        self.replay_to(state, self.len)
    }

    /// As `replay`, reading no further than byte `end` (within the journal as opened).
    pub fn replay_to(
        &mut self,
        state: &mut JournalState,
        end: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        let (start, mut entries) = match *state {
            JournalState::At { offset, entries } => (offset, entries),
            JournalState::Unread | JournalState::Stale => (self.header_len, 0),
        };
        let end = end.min(self.len);
        if start > end {
            return Err(StoreError::corrupt(
                &self.path,
                format!("the journal shrank below byte {start} without a new generation"),
            ));
        }
        let mut read = Vec::new();
        let Some(file) = self.file.as_mut() else {
            return Ok(read);
        };
        if start < end {
            let mut tail = Vec::with_capacity((end - start) as usize);
            file.seek(SeekFrom::Start(start))
                .and_then(|_| file.take(end - start).read_to_end(&mut tail))
                .map_err(StoreError::io("reading", &self.path))?;
            let mut consumed = 0;
            while let Some(end) = tail[consumed..].iter().position(|&b| b == b'\n') {
                let line = &tail[consumed..consumed + end];
                let at = start + consumed as u64;
                let entry = format::decode_journal_entry(line).map_err(|reason| {
                    StoreError::corrupt(&self.path, format!("line at byte {at}: {reason}"))
                })?;
                read.push(Entry { at, entry });
                consumed += end + 1;
                entries += 1;
            }
            // A last piece without a newline is a torn append (a writer killed inside its
            // write, before the sync, so never acknowledged): not applied, and cut off by
            // the next writer. A whole purchase missing only its newline is not what a
            // torn write leaves but what damage leaves, and may have been acknowledged:
            // refused, for an operator to decide.
            let rest = &tail[consumed..];
            if !rest.is_empty() && format::decode_journal_entry(rest).is_ok() {
                let at = start + consumed as u64;
                return Err(StoreError::corrupt(
                    &self.path,
                    format!(
                        "the last line, at byte {at}, is a whole purchase without its line end: damage, not a torn append, and it may have been acknowledged; add the line end to keep it or cut it off to drop it"
                    ),
                ));
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

    /// The open journal file's metadata now; `None` without a file or when it cannot be
    /// read.
    pub fn metadata(&self) -> Option<std::fs::Metadata> {
        self.file.as_ref()?.metadata().ok()
    }

    /// The journal's length now: it may have grown since it was opened.
    pub fn current_len(&self) -> Result<u64, StoreError> {
        match self.file.as_ref() {
            Some(file) => Ok(file
                .metadata()
                .map_err(StoreError::io("reading", &self.path))?
                .len()),
            None => Ok(0),
        }
    }

    /// Whether the file at `path` is still the journal opened (not replaced since).
    pub fn still_at(&self, path: &Path) -> bool {
        let (Some(file), Ok(there)) = (self.file.as_ref(), std::fs::metadata(path)) else {
            return false;
        };
        file.metadata()
            .is_ok_and(|held| held.dev() == there.dev() && held.ino() == there.ino())
    }

    /// The bytes of the complete lines after byte `from`: reading them checks them, as
    /// every writer's catch-up does.
    pub fn lines_after(&mut self, from: u64) -> Result<Vec<u8>, StoreError> {
        let mut state = JournalState::At {
            offset: from,
            entries: 0,
        };
        self.replay(&mut state)?;
        let JournalState::At { offset: end, .. } = state else {
            return Err(StoreError::corrupt(
                &self.path,
                "the journal could not be read to its end",
            ));
        };
        self.read_range(from, end)
    }

    /// The bytes `from..to` of the journal as opened (the caller knows they are there).
    pub fn read_range(&self, from: u64, to: u64) -> Result<Vec<u8>, StoreError> {
        let mut bytes = vec![0; to.saturating_sub(from) as usize];
        if let Some(file) = self.file.as_ref() {
            file.read_exact_at(&mut bytes, from)
                .map_err(StoreError::io("reading", &self.path))?;
        }
        Ok(bytes)
    }

    /// How many lines end in the bytes `from..to`.
    pub fn count_lines(&self, from: u64, to: u64) -> Result<usize, StoreError> {
        let bytes = self.read_range(from, to)?;
        Ok(bytes.iter().filter(|&&b| b == b'\n').count())
    }

    /// Writes a fresh, empty journal atomically.
    pub fn create(
        path: &Path,
        dir: &Path,
        header: JournalHeader,
    ) -> Result<JournalState, StoreError> {
        Self::create_with(path, dir, header, &[])
    }

    /// Writes a journal atomically: `header`, then `lines` (whole lines, `count` of them
    /// when counted by the caller). The compaction's new journal starts with the lines the
    /// snapshot does not hold.
    pub fn create_with(
        path: &Path,
        dir: &Path,
        header: JournalHeader,
        lines: &[u8],
    ) -> Result<JournalState, StoreError> {
        let header = format::encode_journal_header(header);
        let temp = temp_path(dir, super::JOURNAL_FILE);
        let written = write_temp(&temp, |out| {
            io::Write::write_all(out, &header)?;
            io::Write::write_all(out, lines)
        })
        .and_then(|()| {
            fault::abort_at("journal-create-after-temp");
            std::fs::rename(&temp, path).map_err(StoreError::io("renaming", &temp))
        });
        if let Err(err) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(err);
        }
        sync_dir(dir)?;
        Ok(JournalState::At {
            offset: (header.len() + lines.len()) as u64,
            entries: lines.iter().filter(|&&b| b == b'\n').count(),
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
            let header = JournalHeader {
                generation,
                upgrade: false,
            };
            *state = Self::create(path, dir, header)?;
        }
        let JournalState::At { offset, .. } = *state else {
            return Err(StoreError::corrupt(
                path,
                "the journal could not be started",
            ));
        };
        let (file, len) = open_for_writing(path)?;
        if len > offset {
            // Replay refused a tail that could be an acknowledged purchase; what is left
            // is a piece of a batch whose writer died before its sync, never answered.
            tracing::warn!(
                journal = %path.display(),
                at = offset,
                bytes = len - offset,
                "cutting off a torn append"
            );
            file.set_len(offset)
                .and_then(|()| file.sync_data())
                .map_err(StoreError::io("truncating a torn line of", path))?;
        }
        Ok(Self {
            path: path.to_owned(),
            file: Some(file),
            header: Some(JournalHeader {
                generation,
                upgrade: false,
            }),
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
            fault::fail("journal-sync")?;
            file.sync_data()
        });
        if let Err(err) = written {
            // Only a journal provably cut back to where it was means "not committed": the
            // bytes may have reached the file (and other processes' reads) before the
            // failure.
            let rolled_back = fault::fail("journal-rollback")
                .and_then(|()| file.set_len(self.len))
                .and_then(|()| file.sync_data());
            return Err(match rolled_back {
                Ok(()) => StoreError::io("appending to", &self.path)(err),
                Err(rollback) => StoreError::CommitUnknown(format!(
                    "appending to {} failed ({err}) and cutting it back failed too ({rollback}): the batch may be in the journal; a retry with the same Idempotency-Key returns it if it is",
                    self.path.display()
                )),
            });
        }
        fault::abort_at("journal-after-sync");
        self.len += lines.len() as u64;
        if let JournalState::At { offset, entries } = state {
            *offset = self.len;
            *entries += count;
        }
        Ok(())
    }

    /// Makes the journal durable as it now reads from byte `from` on (exclusive lock held),
    /// after an append whose outcome is unknown: the bytes are written again and synced,
    /// since after a failed sync the kernel may hold them as clean pages that no later sync
    /// writes.
    pub fn settle(path: &Path, from: u64) -> Result<(), StoreError> {
        let (file, len) = open_for_writing(path)?;
        let mut tail = vec![0; len.saturating_sub(from) as usize];
        file.read_exact_at(&mut tail, from)
            .and_then(|()| file.write_all_at(&tail, from))
            .and_then(|()| file.sync_data())
            .map_err(StoreError::io("settling", path))
    }
}

/// Opens the journal for reading and writing (exclusive lock held), with its length.
fn open_for_writing(path: &Path) -> Result<(File, u64), StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(StoreError::io("opening", path))?;
    let len = file
        .metadata()
        .map_err(StoreError::io("reading", path))?
        .len();
    Ok((file, len))
}
