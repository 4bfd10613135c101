//! The bookkeeping of background compactions, for the media that have them
//! ([`crate::medium::Medium::start_compaction`]): at most one job per process at a time,
//! how each ended (for the front's counters and failure backoff), and a wait for the one
//! under way. The job's thread runs at a lower CPU priority than sales.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::StoreError;
use crate::medium::{Compacted, CompactionEnd};

/// After a job found the compaction done or taken by another process, no new one starts
/// before this long: the commits meanwhile would each start a thread for nothing.
const QUIET_AFTER_SUPERSEDED: Duration = Duration::from_millis(250);

/// One process's background compaction.
#[derive(Debug, Default)]
pub struct Compactor {
    state: Mutex<State>,
    /// Signalled when a job ends.
    idle: Condvar,
}

#[derive(Debug, Default)]
struct State {
    running: bool,
    ended: Vec<CompactionEnd>,
    quiet_until: Option<Instant>,
}

impl Compactor {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The jobs that ended since the last call.
    pub fn take_ended(&self) -> Vec<CompactionEnd> {
        let mut state = self.state();
        if state.ended.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut state.ended)
    }

    /// Waits until no job of this process runs.
    pub fn wait(&self) {
        let mut state = self.state();
        while state.running {
            state = self.idle.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Runs `job` on a thread of its own unless one runs (or one was superseded a moment
    /// ago). `generation` and `log_bytes` are where it starts from, for the backoff.
    pub fn start(
        self: &std::sync::Arc<Self>,
        generation: u64,
        log_bytes: u64,
        job: impl FnOnce() -> Result<Compacted, StoreError> + Send + 'static,
    ) {
        {
            let mut state = self.state();
            if state.running || state.quiet_until.is_some_and(|t| Instant::now() < t) {
                return;
            }
            state.running = true;
        }
        let compactor = self.clone();
        let spawned = thread::Builder::new()
            .name("store-compaction".into())
            .spawn(move || {
                lower_priority();
                let started = Instant::now();
                let outcome = catch_unwind(AssertUnwindSafe(job)).unwrap_or_else(|_| {
                    Err(StoreError::Unstable("the compaction panicked".into()))
                });
                if let Ok(Compacted::Switched) = outcome {
                    tracing::info!(
                        generation,
                        folded_log_bytes = log_bytes,
                        took_ms = started.elapsed().as_millis() as u64,
                        "compacted the log into a new snapshot in the background"
                    );
                }
                compactor.end(generation, log_bytes, outcome);
            });
        if let Err(err) = spawned {
            self.end(
                generation,
                log_bytes,
                Err(StoreError::Unstable(format!(
                    "cannot start a compaction thread: {err}"
                ))),
            );
        }
    }

    fn end(&self, generation: u64, log_bytes: u64, outcome: Result<Compacted, StoreError>) {
        let mut state = self.state();
        state.running = false;
        if let Ok(Compacted::Superseded) = outcome {
            state.quiet_until = Some(Instant::now() + QUIET_AFTER_SUPERSEDED);
        }
        state.ended.push(CompactionEnd {
            generation,
            log_bytes,
            outcome,
        });
        self.idle.notify_all();
    }
}

/// The nice value of a compaction thread: its work (parsing and writing the whole
/// inventory) waits while sales want the CPU. The lowest priority there is: measured at
/// 300,000 tickets under 32 closed-loop buyers, a job took as long as at 10 (0.7 to 1.6 s;
/// the buyers wait on syncs often enough to leave it the CPU), and sales stalled less.
const COMPACTION_NICE: i32 = 19;

/// Lowers the calling thread's CPU priority (on Linux, `setpriority` on a thread id is that
/// thread's alone). Best effort: a compaction at normal priority is only slower for sales.
fn lower_priority() {
    let thread = rustix::thread::gettid();
    if let Err(err) = rustix::process::setpriority_process(Some(thread), COMPACTION_NICE) {
        tracing::debug!(cause = %err, "cannot lower the compaction thread's priority");
    }
}
