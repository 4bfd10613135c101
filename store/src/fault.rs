//! Fault injection for the crash tests: built with the `fault-injection` feature,
//! `abort_at(point)` kills the process on the spot (as SIGKILL or a power cut would stop
//! it) when `TICKETS_FAULT_ABORT_AT` names that point, after passing it
//! `TICKETS_FAULT_ABORT_SKIP` times (0 by default). Without the feature it is nothing.

/// The variable naming the point to abort at.
pub const ABORT_AT_ENV: &str = "TICKETS_FAULT_ABORT_AT";
/// The variable saying how many times to pass the point before aborting.
pub const ABORT_SKIP_ENV: &str = "TICKETS_FAULT_ABORT_SKIP";

/// The PostgreSQL store's points: after the batch's INSERT, before its COMMIT; after the
/// COMMIT, before the caller hears of it.
pub const POSTGRES_POINTS: [&str; 2] = ["postgres-before-commit", "postgres-after-commit"];

/// The file store's named points, in the order a write passes them: the append, then
/// the background compaction's steps (its snapshot written, the journal's tail copied
/// ahead, then under the lock each rename).
pub const POINTS: [&str; 8] = [
    "journal-torn-write",
    "journal-after-write",
    "journal-after-sync",
    "compaction-snapshot-temp",
    "compaction-journal-temp",
    "compaction-after-snapshot-rename",
    "compaction-after-journal-rename",
    "compaction-done",
];

/// The point of the step a writer takes first after a compaction stopped between its
/// two renames: starting the new snapshot's journal with the old one's tail.
pub const FINISH_SWITCH_POINT: &str = "journal-create-after-temp";

/// The points of upgrading a store written before the journal (its first write), in
/// order: the upgrade's journal, then its snapshot.
pub const UPGRADE_POINTS: [&str; 4] = [
    "journal-create-after-temp",
    "upgrade-after-journal",
    "snapshot-after-temp",
    "snapshot-after-rename",
];

#[cfg(feature = "fault-injection")]
pub fn abort_at(point: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PASSED: AtomicU64 = AtomicU64::new(0);
    if armed(point) {
        let skip = std::env::var(ABORT_SKIP_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if PASSED.fetch_add(1, Ordering::Relaxed) >= skip {
            std::process::abort();
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn abort_at(_point: &str) {}

/// Whether this build has the crash points (the `fault-injection` feature).
pub const ENABLED: bool = cfg!(feature = "fault-injection");

/// Whether the process is set to abort at `point` (always false without the feature).
pub fn armed(point: &str) -> bool {
    cfg!(feature = "fault-injection") && std::env::var(ABORT_AT_ENV).is_ok_and(|p| p == point)
}

/// The variable naming I/O steps to fail once: `point@n[,point@n...]` fails the n-th
/// pass (from 0) of each point with an I/O error, as a failing disk would.
pub const FAIL_ENV: &str = "TICKETS_FAULT_FAIL";

/// Fails with an injected I/O error when `TICKETS_FAULT_FAIL` names this pass of `point`.
#[cfg(feature = "fault-injection")]
pub fn fail(point: &str) -> std::io::Result<()> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static PASSED: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);
    let Ok(spec) = std::env::var(FAIL_ENV) else {
        return Ok(());
    };
    let mut passed = PASSED.lock().unwrap_or_else(|p| p.into_inner());
    let count = passed
        .get_or_insert_with(HashMap::new)
        .entry(point.to_owned())
        .or_insert(0);
    let this = *count;
    *count += 1;
    let named = spec.split(',').any(|item| {
        item.split_once('@')
            .is_some_and(|(p, n)| p == point && n.parse() == Ok(this))
    });
    if named {
        return Err(std::io::Error::other(format!(
            "injected failure at {point}"
        )));
    }
    Ok(())
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fail(_point: &str) -> std::io::Result<()> {
    Ok(())
}
