//! The PostgreSQL medium: the same log of JSON entries after a snapshot, in tables
//! (`sql` names them), so nodes on many hosts can share one strictly consistent store.
//!
//! # How a write works
//!
//! `BEGIN; SELECT pg_advisory_xact_lock(K); SELECT` the entries after this process's
//! position, in one round trip (the lock wait bounded by the session's `lock_timeout`, so
//! a stuck holder gives `LockTimeout`, a 503, not a hang); decide the batch in Rust
//! (`crate::front`, the same code as the file store); `INSERT` the batch's entries with the
//! next sequence numbers and `COMMIT`, in a second round trip (a synchronous commit:
//! durable when it returns). The lock is released by the commit. One transaction per
//! batch: group commit, and two round trips, one of them under the lock.
//!
//! # Why a read sees a gapless prefix holding every completed write
//!
//! A read takes no lock: one statement, `SELECT ... WHERE seq > $mine ORDER BY seq`, under
//! READ COMMITTED, so it sees exactly the transactions committed when its statement
//! snapshot was taken.
//!
//! 1. *Entries commit in `seq` order.* Every append holds the advisory lock from before it
//!    reads the log's end until its commit has completed: PostgreSQL marks a transaction
//!    committed (and visible to new snapshots) before it releases its locks. So the next
//!    writer's statements, which run after it acquired the lock, take snapshots that see
//!    the previous batch, number their entries after it, and commit after it. The batches
//!    are totally ordered by the lock, and seq order is commit order.
//! 2. *A snapshot that sees batch n+1 sees batch n.* Batch n's commit completed before
//!    batch n+1 even took the lock, so at any moment at which n+1 counts as committed, n
//!    already did; a statement snapshot taken then includes both. (A sequence, `nextval`,
//!    without the lock would break this: seq 5 could commit before seq 4, and a reader at 5
//!    would skip 4 for ever. That is the gap this design has not got.)
//! 3. *Every write acknowledged before a read began is in it.* `COMMIT` returns after the
//!    transaction is visible, so a statement that starts later has it in its snapshot.
//!
//! So the rows a read returns are entries `mine+1 ..= k` with no gap, for some `k` at least
//! as large as every entry acknowledged before the read began. `read_since` still checks
//! that the numbers follow on and reports a gap as corruption rather than skipping it; the
//! tests in `tests/tests/store_media.rs` race writers on two handles against a reader that
//! checks both properties.
//!
//! # Snapshots and pruning
//!
//! A writer whose log has grown starts a thread (`compact`) that reads the state at its
//! position `S` as a fresh process would and writes it as a new snapshot, without the
//! advisory lock (nothing it writes is at or after a seq a later writer uses) and without
//! this process's cache, so purchases go on meanwhile on every node; the same transaction
//! prunes the log up to the
//! *previous* snapshot, so processes that have read anything since then keep reading
//! entries; one that fell further behind gets `Since::Reload` (from `pruned_through` in the
//! meta row, read in the same statement as the entries) and loads the newest snapshot.
//!
//! # Failures
//!
//! Every session has `lock_timeout`, `statement_timeout` and
//! `idle_in_transaction_session_timeout` (so the server ends the transaction, and frees the
//! lock, of a node frozen while holding it), and connecting has a timeout. A killed server
//! gives quick errors (503s: while it is unreachable, one caller at a time tries to
//! connect, every 200 ms, and the others fail at once); dead pooled connections are replaced on their first use, so
//! service resumes as soon as the server is back. A connection lost during `COMMIT` is
//! reported as `CommitUnknown`, never as a failure: the batch may be in the log, and a
//! retry with the same idempotency key finds it.

mod compact;
mod conn;
pub mod sql;

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::{Row, SimpleQueryMessage, SimpleQueryRow};
use r2d2::Pool;
use shared::{Inventory, LogEntry};

pub use conn::PgOptions;
use conn::{Conn, Manager, is_connection_lost, statements};

use crate::medium::{Entry, LogPosition, Medium, ReadSession, Since, WriteSession};
use crate::{StoreError, fault, format};

/// Where one process is in the PostgreSQL store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgPosition {
    /// The store these numbers belong to (a new one after `generator seed --force`).
    store_id: i64,
    /// The last entry applied.
    seq: i64,
    /// The snapshot the log is counted from, for the compaction policy and `check`.
    snapshot_seq: i64,
    snapshot_bytes: u64,
    /// Bytes of entries after `snapshot_seq` (estimated when another process compacted).
    log_bytes: u64,
}

impl LogPosition for PgPosition {
    fn generation(&self) -> u64 {
        self.snapshot_seq as u64
    }

    fn entries(&self) -> usize {
        (self.seq - self.snapshot_seq).max(0) as usize
    }

    fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes
    }
}

/// The store in one PostgreSQL database.
#[derive(Debug)]
pub struct PgMedium {
    pool: Pool<Manager>,
    /// host:port/database, for messages.
    database: String,
    options: PgOptions,
    /// When the last attempt to connect failed, and why; `None` while connecting works.
    outage: Mutex<Option<(Instant, String)>>,
    /// This process's background snapshot (`compact`).
    compactor: Arc<crate::compaction::Compactor>,
}

/// How often, while the database is unreachable, one caller tries to connect again.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

impl PgMedium {
    /// A handle on the store at `url` (`postgres://USER[:PASS]@HOST[:PORT]/DB`). Connects to
    /// nothing yet: each operation reports an unreachable database.
    pub fn new(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        let config = postgres::Config::from_str(url)
            .map_err(|err| StoreError::BadDatabaseUrl(err.to_string()))?;
        Ok(Self {
            database: conn::describe(&config),
            pool: conn::pool(config, &options),
            options,
            outage: Mutex::new(None),
            compactor: Arc::default(),
        })
    }

    /// host:port/database.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// A pooled connection. While the database is unreachable only one caller at a time
    /// waits for a new connection (up to the connect timeout), every `PROBE_INTERVAL`; the
    /// others fail at once with the last reason, so an outage gives prompt 503s.
    fn connect(&self) -> Result<Conn, StoreError> {
        if let Some(conn) = self.pool.try_get() {
            return Ok(conn);
        }
        let unavailable = |reason: String| StoreError::Unavailable {
            database: self.database.clone(),
            reason,
        };
        {
            let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((probed, reason)) = outage.as_mut() {
                if probed.elapsed() < PROBE_INTERVAL {
                    return Err(unavailable(reason.clone()));
                }
                // This caller probes; the others keep failing fast meanwhile.
                *probed = Instant::now();
            }
        }
        match self.pool.get() {
            Ok(conn) => {
                *self.outage.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(conn)
            }
            Err(err) => {
                let reason = err.to_string();
                *self.outage.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), reason.clone()));
                Err(unavailable(reason))
            }
        }
    }

    fn error(&self, action: &'static str) -> impl FnOnce(postgres::Error) -> StoreError + '_ {
        move |err| conn::store_error(err, action, &self.database, self.options.lock_timeout)
    }

    fn corrupt(&self, reason: impl Into<String>) -> StoreError {
        StoreError::DatabaseCorrupt {
            database: self.database.clone(),
            reason: reason.into(),
        }
    }

    /// Runs `op`, replacing the connection when it turns out dead (a restarted server), as
    /// often as the pool may hold dead ones. Only for statements that may run again.
    fn retrying<T>(
        &self,
        conn: &mut Conn,
        action: &'static str,
        mut op: impl FnMut(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut attempts = 0;
        loop {
            match op(conn) {
                Ok(value) => return Ok(value),
                Err(err) if is_connection_lost(&err) && attempts < self.options.pool_size => {
                    attempts += 1;
                    *conn = self.connect()?;
                }
                Err(err) => return Err(self.error(action)(err)),
            }
        }
    }

    /// Checks the meta row's layout version.
    fn check_layout(&self, format: i32) -> Result<(), StoreError> {
        if format == sql::LAYOUT_VERSION {
            Ok(())
        } else {
            Err(self.corrupt(format!(
                "layout version {format} is not supported (expected {})",
                sql::LAYOUT_VERSION
            )))
        }
    }

    fn load_snapshot(
        &self,
        conn: &mut Conn,
        retry: bool,
    ) -> Result<(Inventory, PgPosition), StoreError> {
        let query = |conn: &mut Conn| {
            let statement = statements(conn)?.load_snapshot;
            conn.query_opt(&statement, &[])
        };
        let row = if retry {
            self.retrying(conn, "loading the snapshot", query)?
        } else {
            query(conn).map_err(self.error("loading the snapshot"))?
        };
        let row = row.ok_or_else(|| StoreError::DatabaseMissing(self.database.clone()))?;
        let format: i32 = self.get(&row, 0)?;
        self.check_layout(format)?;
        let store_id: i64 = self.get(&row, 1)?;
        let snapshot_seq: i64 = self.get(&row, 2)?;
        let body: &str = self.get(&row, 4)?;
        let snapshot = format::decode(body.as_bytes())
            .map_err(|reason| self.corrupt(format!("snapshot {snapshot_seq}: {reason}")))?;
        if snapshot.generation != snapshot_seq as u64 {
            return Err(self.corrupt(format!(
                "snapshot {snapshot_seq} says it follows entry {}",
                snapshot.generation
            )));
        }
        let position = PgPosition {
            store_id,
            seq: snapshot_seq,
            snapshot_seq,
            snapshot_bytes: body.len() as u64,
            log_bytes: 0,
        };
        Ok((snapshot.inventory, position))
    }

    fn read_since(
        &self,
        conn: &mut Conn,
        position: &PgPosition,
        retry: bool,
    ) -> Result<Since<PgPosition>, StoreError> {
        let query = |conn: &mut Conn| {
            let statement = statements(conn)?.read_since;
            conn.query(&statement, &[&position.seq])
        };
        let rows = if retry {
            self.retrying(conn, "reading the log", query)?
        } else {
            query(conn).map_err(self.error("reading the log"))?
        };
        let mut log = Vec::with_capacity(rows.len());
        for row in &rows {
            log.push(LogRow {
                format: self.get(row, 0)?,
                store_id: self.get(row, 1)?,
                snapshot_seq: self.get(row, 2)?,
                snapshot_bytes: self.get(row, 3)?,
                pruned_through: self.get(row, 4)?,
                seq: self.get(row, 5)?,
                entry: self.get::<Option<&str>>(row, 6)?.map(str::to_owned),
            });
        }
        self.since(position, log)
    }

    /// What the rows of `sql::READ_SINCE` say about the log after `position`.
    fn since(
        &self,
        position: &PgPosition,
        rows: Vec<LogRow>,
    ) -> Result<Since<PgPosition>, StoreError> {
        let Some(meta) = rows.first() else {
            return Err(StoreError::DatabaseMissing(self.database.clone()));
        };
        self.check_layout(meta.format)?;
        if meta.store_id != position.store_id || meta.pruned_through > position.seq {
            return Ok(Since::Reload);
        }
        let mut entries = Vec::with_capacity(rows.len());
        let mut end = position.clone();
        if meta.snapshot_seq != end.snapshot_seq {
            // Another process compacted: count the log from its snapshot, estimating the
            // size of the entries this process read before it from their mean.
            let read = (end.seq - end.snapshot_seq).max(1) as u64;
            let kept = (end.seq - meta.snapshot_seq).max(0) as u64;
            end.log_bytes = end.log_bytes / read * kept;
            end.snapshot_seq = meta.snapshot_seq;
            end.snapshot_bytes = meta.snapshot_bytes as u64;
        }
        for row in rows {
            let (Some(seq), Some(text)) = (row.seq, row.entry) else {
                continue;
            };
            if seq != end.seq + 1 {
                return Err(self.corrupt(format!(
                    "the log skips from entry {} to entry {seq}",
                    end.seq
                )));
            }
            let entry = format::decode_journal_entry(text.as_bytes())
                .map_err(|reason| self.corrupt(format!("log entry {seq}: {reason}")))?;
            entries.push(Entry {
                at: seq as u64,
                entry,
            });
            end.seq = seq;
            if seq > end.snapshot_seq {
                end.log_bytes += text.len() as u64;
            }
        }
        Ok(Since::Entries { entries, end })
    }

    fn get<'r, T: postgres::types::FromSql<'r>>(
        &self,
        row: &'r Row,
        column: usize,
    ) -> Result<T, StoreError> {
        row.try_get(column)
            .map_err(|err| self.corrupt(format!("column {column}: {err}")))
    }
}

/// One row of `sql::READ_SINCE`: the meta row's columns, and an entry or none.
struct LogRow {
    format: i32,
    store_id: i64,
    snapshot_seq: i64,
    snapshot_bytes: i64,
    pruned_through: i64,
    seq: Option<i64>,
    entry: Option<String>,
}

impl LogRow {
    /// The same row received as text (the simple query protocol).
    fn from_text(row: &SimpleQueryRow) -> Result<Self, String> {
        fn number<T: FromStr>(row: &SimpleQueryRow, column: usize) -> Result<T, String> {
            row.get(column)
                .ok_or_else(|| format!("column {column} is null"))?
                .parse()
                .map_err(|_| format!("column {column} is not a number"))
        }
        Ok(Self {
            format: number(row, 0)?,
            store_id: number(row, 1)?,
            snapshot_seq: number(row, 2)?,
            snapshot_bytes: number(row, 3)?,
            pruned_through: number(row, 4)?,
            seq: match row.get(5) {
                Some(_) => Some(number(row, 5)?),
                None => None,
            },
            entry: row.get(6).map(str::to_owned),
        })
    }
}

/// Writes `text` as an SQL string literal (`standard_conforming_strings` is on in every
/// session, so only the quote needs doubling).
fn push_literal(sql: &mut String, text: &str) {
    sql.push('\'');
    for c in text.chars() {
        if c == '\'' {
            sql.push('\'');
        }
        sql.push(c);
    }
    sql.push('\'');
}

impl Medium for PgMedium {
    type Position = PgPosition;
    type Reader<'m> = PgReader<'m>;
    type Writer<'m> = PgWriter<'m>;

    fn begin_read(&self) -> Result<PgReader<'_>, StoreError> {
        Ok(PgReader {
            medium: self,
            conn: self.connect()?,
        })
    }

    fn begin_write(&self) -> Result<PgWriter<'_>, StoreError> {
        // The lock is taken by the session's first statement, together with the read that
        // follows it (one round trip): see `PgWriter::lock_and_read_since`.
        Ok(PgWriter {
            medium: self,
            conn: self.connect()?,
            in_transaction: false,
            lock_wait: None,
        })
    }

    fn create(&self, inventory: &Inventory, force: bool) -> Result<(), StoreError> {
        let mut conn = self.connect()?;
        let mut body = Vec::new();
        format::encode(inventory, 0, &mut body)
            .map_err(|err| self.corrupt(format!("encoding the snapshot: {err}")))?;
        let body = String::from_utf8(body)
            .map_err(|err| self.corrupt(format!("encoding the snapshot: {err}")))?;
        let mut tx = conn
            .transaction()
            .map_err(self.error("starting to create the store"))?;
        tx.batch_execute(&format!(
            "SET LOCAL client_min_messages = warning; SELECT pg_advisory_xact_lock({}); {}",
            sql::LOCK_KEY,
            sql::CREATE_SCHEMA
        ))
        .map_err(self.error("creating the tables"))?;
        let existing: i64 = tx
            .query_one(sql::STORE_EXISTS, &[])
            .map_err(self.error("looking for a store"))?
            .try_get(0)
            .map_err(self.error("looking for a store"))?;
        if existing > 0 {
            if !force {
                return Err(StoreError::DatabaseExists(self.database.clone()));
            }
            tx.batch_execute(sql::CLEAR)
                .map_err(self.error("clearing the old store"))?;
        }
        // A random id, so no process mistakes the new store for one it has cached.
        let store_id = (rand::random::<u64>() >> 1) as i64;
        tx.execute(sql::INSERT_SNAPSHOT, &[&0i64, &body])
            .map_err(self.error("writing the snapshot"))?;
        tx.execute(
            sql::INSERT_META,
            &[&sql::LAYOUT_VERSION, &store_id, &(body.len() as i64)],
        )
        .map_err(self.error("writing the store's meta row"))?;
        tx.commit().map_err(self.error("committing the new store"))
    }

    fn compacts_in_background(&self) -> bool {
        true
    }

    fn start_compaction(&self, position: &PgPosition) {
        compact::start(self, position.clone());
    }

    fn ended_compactions(&self) -> Vec<crate::medium::CompactionEnd> {
        self.compactor.take_ended()
    }

    fn wait_for_compaction(&self) {
        self.compactor.wait();
    }

    fn exists(&self) -> Result<bool, StoreError> {
        let mut conn = self.connect()?;
        match self.retrying(&mut conn, "looking for a store", |conn| {
            conn.query_one(sql::STORE_EXISTS, &[])
        }) {
            Ok(row) => Ok(self.get::<i64>(&row, 0)? > 0),
            Err(StoreError::DatabaseMissing(_)) => Ok(false),
            Err(err) => Err(err),
        }
    }
}

/// A read: a pooled connection, no lock, one statement per call.
pub struct PgReader<'m> {
    medium: &'m PgMedium,
    conn: Conn,
}

impl ReadSession for PgReader<'_> {
    type Position = PgPosition;

    fn load_snapshot(&mut self) -> Result<(Inventory, PgPosition), StoreError> {
        self.medium.load_snapshot(&mut self.conn, true)
    }

    fn read_since(&mut self, position: &PgPosition) -> Result<Since<PgPosition>, StoreError> {
        self.medium.read_since(&mut self.conn, position, true)
    }

    fn bad_entry(&self, at: u64, reason: String) -> StoreError {
        self.medium.corrupt(format!("log entry {at}: {reason}"))
    }
}

/// A write: a transaction holding the advisory lock until `append` commits it. Dropped
/// before that, it rolls the transaction back (or the server does, when the connection is
/// gone).
pub struct PgWriter<'m> {
    medium: &'m PgMedium,
    conn: Conn,
    /// Whether the transaction (and so the lock) is open.
    in_transaction: bool,
    /// How long taking the lock took, once taken.
    lock_wait: Option<Duration>,
}

impl PgWriter<'_> {
    /// `BEGIN`, the lock and the read of the log after `position` in one round trip.
    fn lock_and_read_since(
        &mut self,
        position: &PgPosition,
    ) -> Result<Since<PgPosition>, StoreError> {
        let medium = self.medium;
        let query = format!(
            "{} {}",
            sql::BEGIN_WRITE,
            sql::READ_SINCE.replace("$1::bigint", &position.seq.to_string())
        );
        let started = Instant::now();
        self.in_transaction = true;
        let messages = medium.retrying(&mut self.conn, "taking the store lock", |conn| {
            conn.simple_query(&query)
        })?;
        // The lock is granted when its statement completes; the read after it is quick.
        self.lock_wait = Some(started.elapsed());
        let mut rows = Vec::new();
        for message in &messages {
            if let SimpleQueryMessage::Row(row) = message
                && row.len() == 7
            {
                rows.push(LogRow::from_text(row).map_err(|reason| medium.corrupt(reason))?);
            }
        }
        medium.since(position, rows)
    }
}

impl Drop for PgWriter<'_> {
    fn drop(&mut self) {
        if self.in_transaction && !self.conn.is_closed() {
            let _ = self.conn.batch_execute("ROLLBACK");
        }
    }
}

impl ReadSession for PgWriter<'_> {
    type Position = PgPosition;

    /// Loads the snapshot outside the transaction, as the file store parses a large
    /// snapshot with its lock released: no other node waits while it is decoded, and the
    /// transaction never sits idle for that long (`idle_in_transaction_session_timeout`
    /// would end it). The next `read_since` takes the lock again with its read, which
    /// brings the entries after the snapshot.
    fn load_snapshot(&mut self) -> Result<(Inventory, PgPosition), StoreError> {
        if self.in_transaction {
            // Nothing was appended in this transaction: an append ends it.
            self.in_transaction = false;
            self.conn.batch_execute("ROLLBACK").map_err(
                self.medium
                    .error("releasing the store lock to load the snapshot"),
            )?;
        }
        self.medium.load_snapshot(&mut self.conn, true)
    }

    fn read_since(&mut self, position: &PgPosition) -> Result<Since<PgPosition>, StoreError> {
        if !self.in_transaction {
            return self.lock_and_read_since(position);
        }
        self.medium.read_since(&mut self.conn, position, false)
    }

    fn bad_entry(&self, at: u64, reason: String) -> StoreError {
        self.medium.corrupt(format!("log entry {at}: {reason}"))
    }
}

impl WriteSession for PgWriter<'_> {
    fn append(
        &mut self,
        position: &PgPosition,
        entries: &[LogEntry],
    ) -> Result<PgPosition, StoreError> {
        let medium = self.medium;
        let mut end = position.clone();
        let mut seqs = Vec::with_capacity(entries.len());
        let mut texts = Vec::with_capacity(entries.len());
        for entry in entries {
            let mut line = Vec::new();
            format::encode_journal_entry(entry, &mut line);
            line.pop();
            let text = String::from_utf8(line)
                .map_err(|err| medium.corrupt(format!("encoding an entry: {err}")))?;
            end.seq += 1;
            end.log_bytes += text.len() as u64;
            seqs.push(end.seq);
            texts.push(text);
        }
        if !self.in_transaction {
            return Err(StoreError::Unstable(
                "appending without the store lock".into(),
            ));
        }
        // The INSERT and the COMMIT in one round trip, the entries as literals.
        let mut sql = String::with_capacity(64 + texts.iter().map(|t| t.len() + 24).sum::<usize>());
        sql.push_str("INSERT INTO tickets_log (seq, entry) VALUES ");
        for (i, (seq, text)) in seqs.iter().zip(&texts).enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            sql.push_str(&seq.to_string());
            sql.push(',');
            push_literal(&mut sql, text);
            sql.push(')');
        }
        sql.push_str("; COMMIT");
        fault::abort_at("postgres-before-commit");
        match self.conn.batch_execute(&sql) {
            Ok(()) => self.in_transaction = false,
            // The server answered with an error: the INSERT or the COMMIT was refused, so
            // nothing was committed (dropping the session rolls back what is left).
            Err(err) if err.as_db_error().is_some() => {
                return Err(medium.error("appending")(err));
            }
            Err(err) => {
                self.in_transaction = false;
                return Err(StoreError::CommitUnknown(format!(
                    "the connection to {} failed during INSERT and COMMIT: {err}",
                    medium.database
                )));
            }
        }
        fault::abort_at("postgres-after-commit");
        Ok(end)
    }

    fn lock_wait(&self) -> Option<Duration> {
        self.lock_wait
    }

    fn write_snapshot(
        &mut self,
        inventory: &Inventory,
        position: &PgPosition,
    ) -> Result<PgPosition, StoreError> {
        let medium = self.medium;
        let mut body = Vec::new();
        format::encode(inventory, position.seq as u64, &mut body)
            .map_err(|err| medium.corrupt(format!("encoding the snapshot: {err}")))?;
        let body = String::from_utf8(body)
            .map_err(|err| medium.corrupt(format!("encoding the snapshot: {err}")))?;
        let bytes = body.len() as i64;
        let mut tx = self
            .conn
            .transaction()
            .map_err(medium.error("writing a snapshot"))?;
        // Advancing the meta row first locks it, and checks that the store is still the
        // one this state belongs to, before anything is written.
        let advanced = tx
            .query_opt(
                sql::ADVANCE_SNAPSHOT,
                &[&position.seq, &bytes, &position.store_id],
            )
            .map_err(medium.error("writing a snapshot"))?;
        if let Some(row) = &advanced {
            let pruned: i64 = medium.get(row, 0)?;
            tx.execute(sql::INSERT_SNAPSHOT, &[&position.seq, &body])
                .map_err(medium.error("writing a snapshot"))?;
            tx.execute(sql::PRUNE_LOG, &[&pruned])
                .map_err(medium.error("pruning the log"))?;
            tx.execute(sql::PRUNE_SNAPSHOTS, &[])
                .map_err(medium.error("pruning old snapshots"))?;
        }
        tx.commit().map_err(medium.error("writing a snapshot"))?;
        let mut end = position.clone();
        if advanced.is_some() {
            end.snapshot_seq = position.seq;
            end.snapshot_bytes = bytes as u64;
            end.log_bytes = 0;
        }
        Ok(end)
    }
}
