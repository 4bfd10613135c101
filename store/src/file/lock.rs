//! The advisory lock on the store's lock file, with a bounded wait: a stuck process that
//! holds the lock makes operations fail with `LockTimeout` instead of hanging forever.
//!
//! Two rules on top of `flock`:
//! - **The file locked is the file at the path.** A lock file deleted or replaced while
//!   held would let a newcomer lock a fresh file beside the holder: after locking, the
//!   locked file's identity is compared with the path's, and on a mismatch the lock is
//!   taken again on the file now there. A holder checks again before it writes.
//! - **A waiting writer gets its turn.** `flock` grants a shared lock whenever no exclusive
//!   one is held, so readers that overlap could keep a writer out for ever. Everyone first
//!   takes a turnstile, an exclusive `flock` on the data directory: readers only while
//!   they take the shared lock, writers from before they wait for the exclusive one until
//!   they let it go, so once a writer waits no new reader gets in, and writers of this
//!   version exclude each other even if the lock file is deleted under them.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Many readers at once.
    Shared,
    /// One writer, no readers.
    Exclusive,
}

/// Holds the lock until dropped (closing the file releases it).
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    /// A writer keeps the turnstile for its whole hold, so writers of this version exclude
    /// each other and every reader even if the lock file is deleted under them.
    _turnstile: Option<File>,
}

impl LockGuard {
    /// Whether the file this guard locked is still the one at `path`.
    pub fn still_at(&self, path: &Path) -> bool {
        same_file(&self.file, path).unwrap_or(false)
    }
}

/// Longest pause between two attempts; short, so a released lock is taken quickly.
const MAX_BACKOFF: Duration = Duration::from_millis(2);

pub fn acquire(path: &Path, mode: LockMode, timeout: Duration) -> Result<LockGuard, StoreError> {
    let deadline = Instant::now() + timeout;
    let missing = || StoreError::Missing(path.parent().unwrap_or(path).to_owned());
    let dir = path.parent().unwrap_or(Path::new("."));
    let turnstile = File::open(dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => missing(),
        _ => StoreError::io("opening", dir)(e),
    })?;
    wait_for(&turnstile, dir, LockMode::Exclusive, deadline, timeout)?;
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => missing(),
                _ => StoreError::io("opening", path)(e),
            })?;
        wait_for(&file, path, mode, deadline, timeout)?;
        // Replaced or deleted while this process waited: the lock that counts is on the
        // file at the path now.
        if same_file(&file, path).map_err(StoreError::io("reading", path))? {
            let turnstile = (mode == LockMode::Exclusive).then_some(turnstile);
            return Ok(LockGuard {
                file,
                _turnstile: turnstile,
            });
        }
        tracing::warn!(lock = %path.display(), "the lock file was replaced; locking the new one");
    }
}

/// Takes `mode` on `file`, polling until `deadline`.
fn wait_for(
    file: &File,
    path: &Path,
    mode: LockMode,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), StoreError> {
    let mut backoff = Duration::from_micros(50);
    loop {
        let attempt = match mode {
            LockMode::Shared => file.try_lock_shared(),
            LockMode::Exclusive => file.try_lock(),
        };
        match attempt {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(StoreError::io("locking", path)(e)),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(StoreError::LockTimeout(timeout));
        }
        thread::sleep(backoff.min(deadline - now));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Whether `file` is the file at `path` (false when nothing is there).
fn same_file(file: &File, path: &Path) -> io::Result<bool> {
    let held = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(there) => Ok(held.dev() == there.dev() && held.ino() == there.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn an_exclusive_lock_held_elsewhere_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l");
        let _held = acquire(&path, LockMode::Exclusive, Duration::from_secs(1)).expect("free");
        let started = Instant::now();
        let err = acquire(&path, LockMode::Shared, Duration::from_millis(50)).expect_err("held");
        assert!(matches!(err, StoreError::LockTimeout(_)));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn shared_locks_coexist_and_release_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l");
        let a = acquire(&path, LockMode::Shared, Duration::from_secs(1)).expect("free");
        let _b = acquire(&path, LockMode::Shared, Duration::from_millis(10)).expect("shared");
        assert!(acquire(&path, LockMode::Exclusive, Duration::from_millis(10)).is_err());
        drop(a);
        drop(_b);
        assert!(acquire(&path, LockMode::Exclusive, Duration::from_millis(10)).is_ok());
    }

    /// How many of this process's open files are the file at `path`.
    fn open_handles(path: &Path) -> usize {
        let Ok(target) = std::fs::metadata(path) else {
            return 0;
        };
        std::fs::read_dir("/proc/self/fd")
            .expect("proc")
            .flatten()
            .filter(|fd| {
                std::fs::metadata(fd.path())
                    .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
            })
            .count()
    }

    fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_lock_file_replaced_while_a_process_waits_is_locked_anew_not_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l");
        // Processes of an earlier version lock the file alone, with no turnstile.
        let held = File::create(&path).expect("lock file");
        held.lock().expect("free");
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let path = path.clone();
            thread::spawn(move || {
                let got = acquire(&path, LockMode::Exclusive, Duration::from_secs(2)).map(|_| ());
                let _ = tx.send(());
                got
            })
        };
        // The waiter has opened the old file and waits for it.
        poll_until("the waiter opened the lock file", || {
            open_handles(&path) >= 2
        });
        std::fs::remove_file(&path).expect("delete the lock file");
        // Another such process creates and locks a new one.
        let newcomer = File::create(&path).expect("new lock file");
        newcomer.lock().expect("the new file is free");
        drop(held);
        let got = waiter.join().expect("no panic");
        assert!(
            matches!(got, Err(StoreError::LockTimeout(_))),
            "the waiter took the old file's lock while the newcomer held the new one: {got:?}"
        );
        assert!(rx.try_recv().is_ok());
        drop(newcomer);
        acquire(&path, LockMode::Exclusive, Duration::from_secs(1)).expect("free again");
    }

    #[test]
    fn a_holder_whose_lock_file_was_replaced_knows_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l");
        let held = acquire(&path, LockMode::Exclusive, Duration::from_secs(1)).expect("free");
        assert!(held.still_at(&path));
        std::fs::remove_file(&path).expect("delete");
        assert!(!held.still_at(&path));
        File::create(&path).expect("replace");
        assert!(!held.still_at(&path));
    }

    #[test]
    fn a_waiting_writer_keeps_new_readers_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l");
        let reader = acquire(&path, LockMode::Shared, Duration::from_secs(1)).expect("free");
        let writer = {
            let path = path.clone();
            thread::spawn(move || {
                acquire(&path, LockMode::Exclusive, Duration::from_secs(10)).map(|_| ())
            })
        };
        // The writer waits, holding the turnstile.
        poll_until("the writer holds the turnstile", || {
            let turnstile = File::open(dir.path()).expect("dir");
            match turnstile.try_lock() {
                Ok(()) => false,
                Err(_) => true,
            }
        });
        let late = acquire(&path, LockMode::Shared, Duration::from_millis(100));
        assert!(
            matches!(late, Err(StoreError::LockTimeout(_))),
            "a new reader got in ahead of the waiting writer"
        );
        drop(reader);
        writer
            .join()
            .expect("no panic")
            .expect("the writer gets its turn");
    }
}
