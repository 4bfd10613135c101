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
//!
//! # A frozen holder: the limit, made visible
//!
//! `flock` belongs to the open file, not to a lease: a holder frozen while it holds the lock
//! (SIGSTOP, `docker pause`, a paused VM, a stuck disk) keeps every writer of the store
//! waiting until it wakes, and each of them fails with `LockTimeout` meanwhile. Nothing
//! can safely take the lock from it: on waking it would finish its append, and only a
//! journal that refuses writes from a holder whose turn has passed (fencing: one
//! create-if-absent per log position) could stop that, which this store does not have.
//! So the wait is made visible instead: a wait longer than [`SLOW_WAIT`] is logged once,
//! naming the holder's process as `/proc/locks` shows it (on this host), how long this
//! process has waited, and what the limit is.

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

/// A wait longer than this is logged, once per wait, with the holder's process.
pub const SLOW_WAIT: Duration = Duration::from_millis(500);

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
    let started = Instant::now();
    let mut reported = false;
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
            tracing::warn!(
                lock = %path.display(),
                holder = %describe_holder(file),
                waited_ms = started.elapsed().as_millis() as u64,
                "gave up waiting for the store lock: a holder that is frozen keeps it until it wakes (the file store cannot take it away safely)"
            );
            return Err(StoreError::LockTimeout(timeout));
        }
        if !reported && now - started >= SLOW_WAIT {
            reported = true;
            tracing::warn!(
                lock = %path.display(),
                holder = %describe_holder(file),
                waited_ms = (now - started).as_millis() as u64,
                timeout_ms = timeout.as_millis() as u64,
                "slow wait for the store lock: its holder is slow or frozen, and every writer of the store waits for it"
            );
        }
        thread::sleep(backoff.min(deadline - now));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The process holding an exclusive `flock` on `file`'s inode, as `/proc/locks` tells it on
/// this host: its id, and its command line when this process may read it.
pub fn describe_holder(file: &File) -> String {
    let Ok(metadata) = file.metadata() else {
        return "unknown (the lock file cannot be read)".into();
    };
    match exclusive_holder(&metadata) {
        Some(pid) => {
            let command = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|bytes| {
                    String::from_utf8_lossy(&bytes)
                        .split('\0')
                        .filter(|part| !part.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // The state follows the command name, which is in parentheses.
                    let after = stat.rsplit_once(')')?.1;
                    after.split_whitespace().next().map(str::to_owned)
                })
                .map(|state| match state.as_str() {
                    "T" | "t" => " (stopped)".to_owned(),
                    "D" => " (waiting on I/O)".to_owned(),
                    _ => String::new(),
                })
                .unwrap_or_default();
            format!("pid {pid}{state} {command}").trim_end().to_owned()
        }
        None => "not visible on this host (another host, or another pid namespace)".into(),
    }
}

/// The first process with an exclusive `flock` on the inode `metadata` describes, from
/// `/proc/locks` (`N: FLOCK ADVISORY WRITE PID MAJOR:MINOR:INODE 0 EOF`, device numbers in
/// hex); `None` when it is not listed or the pid is hidden (0).
fn exclusive_holder(metadata: &std::fs::Metadata) -> Option<u32> {
    let dev = metadata.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let wanted = format!("{major:02x}:{minor:02x}:{}", metadata.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A waiter's line reads `N: -> FLOCK ...`: only holders count.
        match fields.as_slice() {
            [_, "FLOCK", _, "WRITE", pid, file, ..] if *file == wanted => {
                pid.parse().ok().filter(|&pid| pid != 0)
            }
            _ => None,
        }
    })
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

    /// A temporary directory and the path of a lock file in it, not yet created.
    fn lock_file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l");
        (dir, path)
    }

    /// The lock at `path`, which must be free within a second.
    fn take(path: &Path, mode: LockMode) -> LockGuard {
        acquire(path, mode, Duration::from_secs(1)).expect("free")
    }

    #[test]
    fn an_exclusive_lock_held_elsewhere_times_out() {
        let (_dir, path) = lock_file();
        let _held = take(&path, LockMode::Exclusive);
        let started = Instant::now();
        let err = acquire(&path, LockMode::Shared, Duration::from_millis(50)).expect_err("held");
        assert!(matches!(err, StoreError::LockTimeout(_)));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn the_holder_of_an_exclusive_lock_is_named() {
        let (_dir, path) = lock_file();
        let held = take(&path, LockMode::Exclusive);
        let other = File::open(&path).expect("lock file");
        let holder = describe_holder(&other);
        assert!(
            holder.starts_with(&format!("pid {} ", std::process::id())),
            "{holder}"
        );
        drop(held);
        assert!(describe_holder(&other).starts_with("not visible"));
    }

    #[test]
    fn a_stopped_holder_in_another_process_is_named_as_stopped() {
        use std::os::unix::process::ExitStatusExt;
        let (_dir, path) = lock_file();
        File::create(&path).expect("lock file");
        // A process that takes the lock itself (`/proc/locks` names the process that took
        // a lock) and waits.
        let mut holder = std::process::Command::new("python3")
            .arg("-c")
            .arg("import fcntl, sys, time; f = open(sys.argv[1], 'r+'); fcntl.flock(f, fcntl.LOCK_EX); time.sleep(60)")
            .arg(&path)
            .spawn()
            .expect("python3 runs");
        let pid = holder.id();
        let file = File::open(&path).expect("lock file");
        poll_until("the shell holds the lock", || {
            describe_holder(&file).starts_with(&format!("pid {pid} "))
        });
        let stopped = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(stopped.success());
        poll_until("the holder shows as stopped", || {
            let holder = describe_holder(&file);
            holder.starts_with(&format!("pid {pid} (stopped) ")) && holder.contains("python3")
        });
        let waited = acquire(
            &path,
            LockMode::Exclusive,
            Duration::from_millis(SLOW_WAIT.as_millis() as u64 + 100),
        );
        assert!(matches!(waited, Err(StoreError::LockTimeout(_))));
        holder.kill().expect("kill");
        let status = holder.wait().expect("reaped");
        assert_eq!(status.signal(), Some(9));
        acquire(&path, LockMode::Exclusive, Duration::from_secs(5)).expect("free once it is gone");
    }

    #[test]
    fn shared_locks_coexist_and_release_on_drop() {
        let (_dir, path) = lock_file();
        let a = take(&path, LockMode::Shared);
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
        let (_dir, path) = lock_file();
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
        let (_dir, path) = lock_file();
        let held = take(&path, LockMode::Exclusive);
        assert!(held.still_at(&path));
        std::fs::remove_file(&path).expect("delete");
        assert!(!held.still_at(&path));
        File::create(&path).expect("replace");
        assert!(!held.still_at(&path));
    }

    #[test]
    fn a_waiting_writer_keeps_new_readers_out() {
        let (dir, path) = lock_file();
        let reader = take(&path, LockMode::Shared);
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
