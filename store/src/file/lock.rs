//! The advisory lock on the store's lock file, with a bounded wait: a stuck process that
//! holds the lock makes operations fail with `LockTimeout` instead of hanging forever.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::StoreError;

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
    _file: File,
}

/// Longest pause between two attempts; short, so a released lock is taken quickly.
const MAX_BACKOFF: Duration = Duration::from_millis(2);

pub fn acquire(path: &Path, mode: LockMode, timeout: Duration) -> Result<LockGuard, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                StoreError::Missing(path.parent().unwrap_or(path).to_owned())
            }
            _ => StoreError::io("opening", path)(e),
        })?;
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_micros(50);
    loop {
        let attempt = match mode {
            LockMode::Shared => file.try_lock_shared(),
            LockMode::Exclusive => file.try_lock(),
        };
        match attempt {
            Ok(()) => return Ok(LockGuard { _file: file }),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
