//! The medium trait: the little that differs between the store on files and the store in
//! PostgreSQL. Everything else (catching up, deciding a batch with `Inventory`,
//! idempotency, group commit, when to compact) is decided once, in `crate::front`, for
//! every medium.
//!
//! # The model a medium keeps
//!
//! The store is a **log** of committed changes (entries: purchases, holds, releases,
//! expiries, cancellations), each encoded as one JSON object by `crate::format`, plus a **snapshot**: the whole inventory as it stood after
//! some log position. The state of the store is the newest snapshot with every entry after
//! it applied in log order. Entries are only ever appended, by one writer at a time (the
//! medium's exclusive lock); a snapshot may replace the entries it covers.
//!
//! Each process keeps the state it has parsed and the [`LogPosition`] it has read up to,
//! and on every operation reads only the entries after that position. A medium promises:
//!
//! 1. **Prefix reads.** [`ReadSession::read_since`] returns the entries after a position
//!    in log order with no gap: never entry n+1 without entry n, even while writers commit
//!    concurrently.
//! 2. **Every completed write is seen.** A session begun after [`WriteSession::append`]
//!    returned `Ok` (in any process, on any host) sees the appended entries.
//! 3. **Durability.** When `append` returns `Ok` the entries survive a crash of the
//!    process, and of the machine as far as the medium can promise it (file: `fdatasync`;
//!    PostgreSQL: a synchronous commit).
//! 4. **One writer.** Between [`Medium::begin_write`] returning and `append` returning,
//!    no other writer appends: the entries the session read are the end of the log, so the
//!    batch is decided on the current state. The lock wait is bounded (`LockTimeout`), so a
//!    stuck holder gives errors, not hangs.
//! 5. **Honest failures.** An `Err` from `append` means nothing was appended, except
//!    [`crate::StoreError::CommitUnknown`], which means the medium cannot tell (a
//!    connection lost during the commit): the entries may be in the log. Either way the
//!    front forgets its cached state and reads the log again on the next operation, so an
//!    idempotency key retried after an unknown outcome finds the first outcome if there was
//!    one.
//!
//! Sessions are short: the front begins one per operation and drops it at the end, which
//! releases whatever lock it held. Calls block (file I/O, network): async callers run them
//! on the blocking pool.

use std::fmt::Debug;

use shared::{Inventory, LogEntry};

use crate::StoreError;

/// One entry read back from the log.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Where the entry is in the log, for error messages: a byte offset in the journal
    /// file, a sequence number in PostgreSQL.
    pub at: u64,
    pub entry: LogEntry,
}

/// What [`ReadSession::read_since`] found after a position.
#[derive(Debug)]
pub enum Since<P> {
    /// Every entry committed after the position, in log order, and the position after the
    /// last of them (the same position when there is nothing new).
    Entries { entries: Vec<Entry>, end: P },
    /// The position can no longer be read from: the entries after it were folded into a
    /// newer snapshot, or the snapshot it counts from was replaced (compaction, a reseed).
    /// The front loads the snapshot again.
    Reload,
}

/// A medium's cursor into its log: which snapshot a process's state starts from and how
/// many entries after it have been applied. Cheap to clone; compared to tell whether a
/// cached state moved.
pub trait LogPosition: Clone + Debug + PartialEq + Send + Sync {
    /// Names the snapshot the position counts from (the file store's generation, the
    /// PostgreSQL snapshot's sequence number), for `check`.
    fn generation(&self) -> u64;
    /// Entries applied after the snapshot.
    fn entries(&self) -> usize;
    /// Bytes of log after the snapshot, for the compaction policy.
    fn log_bytes(&self) -> u64;
    /// Bytes of the snapshot, for the compaction policy.
    fn snapshot_bytes(&self) -> u64;
}

/// A store medium: the file directory or the PostgreSQL database. Cheap calls; sessions
/// do the work.
pub trait Medium: Send + Sync + 'static {
    type Position: LogPosition;
    /// A read: may hold a shared lock (file) or nothing (PostgreSQL, where a statement's
    /// snapshot gives the same guarantee).
    type Reader<'m>: ReadSession<Position = Self::Position>
    where
        Self: 'm;
    /// A write: holds the exclusive lock from `begin_write` until `append` has made the
    /// batch durable (or, on PostgreSQL, until its commit), and is then used for at most a
    /// `write_snapshot`.
    type Writer<'m>: WriteSession<Position = Self::Position>
    where
        Self: 'm;

    /// Whether the log still ends at `position`, told without a session (no lock, no
    /// round trip): then a read may answer from the state at `position`. `false` whenever
    /// that cannot be told cheaply; the read then takes a session. The default never
    /// knows.
    fn unchanged_since(&self, _position: &Self::Position) -> bool {
        false
    }

    /// Starts a read. Fails with `Missing` when no store was created, `Corrupt` when what
    /// is there cannot be read, `LockTimeout` when the lock stays taken.
    fn begin_read(&self) -> Result<Self::Reader<'_>, StoreError>;

    /// Takes the exclusive lock, waiting at most the configured lock timeout, and starts a
    /// write.
    fn begin_write(&self) -> Result<Self::Writer<'_>, StoreError>;

    /// Writes `inventory` as a fresh store with an empty log, so that every process holding
    /// a position in an older store gets `Since::Reload` (a new generation). Refuses with
    /// `AlreadyExists` when a store is there, unless `force`.
    fn create(&self, inventory: &Inventory, force: bool) -> Result<(), StoreError>;

    /// Whether a store has been created here (it may still be unreadable).
    fn exists(&self) -> Result<bool, StoreError>;

    /// Whether this medium compacts in the background ([`Medium::start_compaction`])
    /// rather than in the commit path ([`WriteSession::write_snapshot`]).
    fn compacts_in_background(&self) -> bool {
        false
    }

    /// Starts folding the log up to `position` (the end of the log, just appended) into a
    /// new snapshot in the background, unless a compaction is under way (in this process or
    /// another). The work that grows with the inventory holds no lock; the switch takes the
    /// exclusive lock for a time that does not depend on the inventory's size, and a
    /// process whose state is at or past `position` then carries on from the new snapshot
    /// without reading it (its next `read_since` translates its position).
    fn start_compaction(&self, position: &Self::Position) {
        let _ = position;
    }

    /// The background compactions of this process that ended since the last call.
    fn ended_compactions(&self) -> Vec<CompactionEnd> {
        Vec::new()
    }

    /// Waits until no background compaction of this process is under way.
    fn wait_for_compaction(&self) {}
}

/// How a background compaction ended.
#[derive(Debug)]
pub struct CompactionEnd {
    /// The generation and log size it started from, for the failure backoff.
    pub generation: u64,
    pub log_bytes: u64,
    pub outcome: Result<Compacted, StoreError>,
}

/// What a background compaction that did not fail did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compacted {
    /// The new snapshot and its journal are in place.
    Switched,
    /// Another process compacted (or reseeded) first: nothing was changed.
    Superseded,
}

/// What both kinds of session can do: read the snapshot and the log.
pub trait ReadSession {
    type Position: LogPosition;

    /// Loads the newest snapshot, and the position of the state it holds (no entry after
    /// it applied yet).
    fn load_snapshot(&mut self) -> Result<(Inventory, Self::Position), StoreError>;

    /// The entries after `position` (see [`Since`]), a prefix of the log that holds every
    /// entry appended before this session began. Cheap when there is nothing new: it is
    /// called by every read.
    fn read_since(
        &mut self,
        position: &Self::Position,
    ) -> Result<Since<Self::Position>, StoreError>;

    /// The error for an entry this session returned that does not fit the state (a ticket
    /// sold twice, an unknown ticket): `Corrupt`, naming where the entry is.
    fn bad_entry(&self, at: u64, reason: String) -> StoreError;
}

/// A session holding the exclusive lock.
pub trait WriteSession: ReadSession {
    /// Appends `entries` (never empty) right after `position`, which is the end of the log
    /// as this session read it, durably and in one step for the whole batch (group
    /// commit), and returns the position after them. See the module's promises 2, 3 and 5.
    fn append(
        &mut self,
        position: &Self::Position,
        entries: &[LogEntry],
    ) -> Result<Self::Position, StoreError>;

    /// How long this session waited for the exclusive lock, when the medium takes it later
    /// than `Medium::begin_write` (PostgreSQL takes it with the session's first read);
    /// `None` means the wait was `begin_write`'s.
    fn lock_wait(&self) -> Option<std::time::Duration> {
        None
    }

    /// After an `append` from `from` ended in `CommitUnknown`, makes the log as it now
    /// reads durable, so that what this process and others may serve from it is true. The
    /// front calls it before this process's next commit, and commits nothing until it
    /// succeeds. The default does nothing: right for a medium whose reads only ever see
    /// durable entries (PostgreSQL's committed rows).
    fn settle(&mut self, from: &Self::Position) -> Result<(), StoreError> {
        let _ = from;
        Ok(())
    }

    /// Stores `inventory`, the state at `position` (just returned by `append`), as the
    /// newest snapshot, so later loads start there, and may drop the entries it covers.
    /// Returns the position to continue from. An error means the medium is as it was: the
    /// old snapshot and the log still hold every entry, and `position` is still true (the
    /// front keeps its state and tries again later). Once the new snapshot is in place the
    /// call returns `Ok`, whatever else fails after it.
    fn write_snapshot(
        &mut self,
        inventory: &Inventory,
        position: &Self::Position,
    ) -> Result<Self::Position, StoreError>;
}
