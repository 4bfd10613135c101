//! The PostgreSQL store's schema and statements, in one place.
//!
//! - `tickets_meta`: one row: the layout version, a random `store_id` that changes when
//!   the store is created again (so every process drops what it cached of the old one),
//!   the newest snapshot's `snapshot_seq` and size, and `pruned_through`: log entries up to
//!   it have been deleted.
//! - `tickets_log`: the log, one log entry per row, `seq` 1, 2, 3... with no gap;
//!   `entry` is the same JSON object the file store's journal line holds.
//! - `tickets_snapshot`: the inventory as it stood after entry `seq`, in the file store's
//!   snapshot layout (`crate::format`).

/// The layout version in `tickets_meta.format`.
pub const LAYOUT_VERSION: i32 = 1;

/// The advisory lock every append holds: "tickets" in ASCII.
pub const LOCK_KEY: i64 = 0x0074_6963_6b65_7473;

/// Creates the tables if missing (under the advisory lock, in `create`'s transaction).
pub const CREATE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tickets_meta (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    format integer NOT NULL,
    store_id bigint NOT NULL,
    snapshot_seq bigint NOT NULL,
    snapshot_bytes bigint NOT NULL,
    pruned_through bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS tickets_log (
    seq bigint PRIMARY KEY,
    entry jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS tickets_snapshot (
    seq bigint PRIMARY KEY,
    body text NOT NULL
);";

/// Starts a write: a transaction holding the advisory lock. The session's `lock_timeout`
/// bounds the wait. Sent as one simple query: one round trip.
pub const BEGIN_WRITE: &str = "BEGIN; SELECT pg_advisory_xact_lock(32766973022925939);";

/// Every entry after `$1`, with the meta row, in one statement (so one snapshot of the
/// database): at least one row, the meta row with NULLs when nothing is new. A writer sends
/// it after `BEGIN_WRITE` in the same round trip, with `$1::bigint` replaced by the number.
/// The meta table holds one row; `LIMIT 1` tells the planner so (it never analyses a table
/// of one row, and its guess of a thousand rows made the plan look costly enough to
/// compile).
pub const READ_SINCE: &str = "
SELECT m.format, m.store_id, m.snapshot_seq, m.snapshot_bytes, m.pruned_through,
       l.seq, l.entry::text
FROM (SELECT * FROM tickets_meta LIMIT 1) m LEFT JOIN tickets_log l ON l.seq > $1::bigint
ORDER BY l.seq";

/// The newest snapshot, with the meta row.
pub const LOAD_SNAPSHOT: &str = "
SELECT m.format, m.store_id, m.snapshot_seq, m.pruned_through, s.body
FROM tickets_meta m JOIN tickets_snapshot s ON s.seq = m.snapshot_seq";

/// Whether a store exists (`create` refuses to replace one without `force`).
pub const STORE_EXISTS: &str = "SELECT count(*) FROM tickets_meta";

/// Empties a store being created again.
pub const CLEAR: &str = "TRUNCATE tickets_log, tickets_snapshot, tickets_meta";

/// `$1` store id, `$2` snapshot bytes: the meta row of a fresh store, whose snapshot is at 0.
pub const INSERT_META: &str = "
INSERT INTO tickets_meta (format, store_id, snapshot_seq, snapshot_bytes, pruned_through)
VALUES ($1::integer, $2::bigint, 0, $3::bigint, 0)";

/// `$1` seq, `$2` body (the state after entry `$1` is the same whoever writes it).
pub const INSERT_SNAPSHOT: &str = "
INSERT INTO tickets_snapshot (seq, body) VALUES ($1::bigint, $2::text)
ON CONFLICT (seq) DO UPDATE SET body = EXCLUDED.body";

/// Makes the snapshot at `$1` (`$2` bytes) the newest, if it is newer, for store `$3`; the
/// caller then writes it and prunes the log up to the previous snapshot: a process that has read anything since that
/// one goes on reading entries rather than reloading. Returns the new `pruned_through`.
pub const ADVANCE_SNAPSHOT: &str = "
UPDATE tickets_meta
SET snapshot_seq = $1::bigint, snapshot_bytes = $2::bigint, pruned_through = snapshot_seq
WHERE store_id = $3::bigint AND snapshot_seq < $1::bigint
RETURNING pruned_through";

/// `$1` pruned through: deletes the entries and snapshots no process needs any more.
pub const PRUNE_LOG: &str = "DELETE FROM tickets_log WHERE seq <= $1::bigint";
pub const PRUNE_SNAPSHOTS: &str =
    "DELETE FROM tickets_snapshot WHERE seq < (SELECT snapshot_seq FROM tickets_meta)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_key_in_begin_write_is_the_constant() {
        assert!(BEGIN_WRITE.contains(&LOCK_KEY.to_string()));
    }
}
