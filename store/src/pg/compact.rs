//! The PostgreSQL store's compaction, off the commit path: a thread of its own reads the
//! newest snapshot and the log up to the position that made the log due, as a fresh
//! process would, and writes the state there as the newest snapshot, with the statements
//! the commit path used (`PgWriter::write_snapshot`). Nothing of it holds the advisory
//! lock, nor this process's cache: purchases go on, on every node. The other processes
//! follow the new snapshot from the meta row without reading it (the log is pruned only up
//! to the snapshot before).

use std::sync::Mutex;

use super::conn::Conn;
use super::{PgMedium, PgPosition, PgWriter};
use crate::StoreError;
use crate::medium::{Compacted, LogPosition, Medium, ReadSession, Since, WriteSession};

/// Starts a job snapshotting the state at `target` unless one of this process runs.
pub fn start(medium: &PgMedium, target: PgPosition) {
    let job = PgMedium {
        pool: medium.pool.clone(),
        database: medium.database.clone(),
        options: medium.options.clone(),
        outage: Mutex::new(None),
        compactor: medium.compactor.clone(),
    };
    medium
        .compactor
        .start(target.generation(), target.log_bytes(), move || {
            snapshot_at(&job, &target)
        });
}

/// The session-level advisory lock a snapshot job holds, so only one process builds one at
/// a time: "snapshot" in ASCII. Not the store lock: appends go on.
const SNAPSHOT_LOCK_KEY: i64 = 0x0073_6e61_7073_686f;

/// The snapshot lock, released (or its connection closed) when dropped.
struct Claim {
    conn: Conn,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let unlocked = self
            .conn
            .query_one("SELECT pg_advisory_unlock($1)", &[&SNAPSHOT_LOCK_KEY])
            .ok()
            .and_then(|row| row.try_get::<_, bool>(0).ok());
        if unlocked != Some(true) {
            // A connection that may still hold the lock must not go back to the pool.
            let _ = self
                .conn
                .batch_execute("SELECT pg_terminate_backend(pg_backend_pid())");
        }
    }
}

/// Writes the state at `target` as the newest snapshot, unless a newer one is there.
fn snapshot_at(medium: &PgMedium, target: &PgPosition) -> Result<Compacted, StoreError> {
    let mut conn = medium.connect()?;
    let claimed: bool = conn
        .query_one("SELECT pg_try_advisory_lock($1)", &[&SNAPSHOT_LOCK_KEY])
        .and_then(|row| row.try_get(0))
        .map_err(medium.error("taking the snapshot lock"))?;
    if !claimed {
        return Ok(Compacted::Superseded);
    }
    let _claim = Claim { conn };
    let mut reader = medium.begin_read()?;
    let (mut inventory, mut position) = reader.load_snapshot()?;
    if position.store_id != target.store_id || position.seq >= target.seq {
        return Ok(Compacted::Superseded);
    }
    let Since::Entries { entries, .. } = reader.read_since(&position)? else {
        return Ok(Compacted::Superseded);
    };
    for entry in entries {
        if entry.at as i64 > target.seq {
            break;
        }
        inventory
            .apply_entry(entry.entry)
            .map_err(|reason| reader.bad_entry(entry.at, reason.to_string()))?;
        position.seq = entry.at as i64;
    }
    if position.seq != target.seq {
        return Ok(Compacted::Superseded);
    }
    let mut writer = PgWriter {
        medium,
        conn: reader.conn,
        in_transaction: false,
        lock_wait: None,
    };
    let written = writer.write_snapshot(&inventory, &position)?;
    Ok(if written.snapshot_seq == target.seq {
        Compacted::Switched
    } else {
        Compacted::Superseded
    })
}
