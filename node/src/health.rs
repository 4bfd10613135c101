//! `GET /health`: tells "this node is broken" from "the shared store is slow".
//!
//! Every node reads the same store, so when one process holds the store's lock for long (a
//! node frozen mid-commit, a stuck disk) every node's reads wait together; a health check
//! that waited for its read would time out on every node at once, and a balancer would
//! take them all out of rotation for a trouble none of them has. So the check waits for
//! its read only briefly ([`STORE_WAIT`]):
//! - read in time: 200 `{"status":"ok","node":ID}`;
//! - not read in time, or the store gave up waiting for its lock: 200 with
//!   `"store":"slow"` added. The node itself answers, so it stays in rotation; its
//!   requests wait for the store as every node's do;
//! - the store cannot be read at all (missing, corrupt, I/O error, database unreachable)
//!   or the commit thread is down: 503 `store_unavailable`, as the API says.
//!
//! At most one health read is under way at a time: a check that finds the previous one
//! still waiting for the store answers "slow" at once instead of queueing another
//! blocking read behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use store::{StoreError, TicketStore};

use crate::error::ApiError;

/// How long a health check waits for its store read: well within a balancer's health
/// check timeout (1 s by default), so a slow store never makes the check itself time out.
pub const STORE_WAIT: Duration = Duration::from_millis(250);

/// What a health check found the store to be, when the node can answer at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreState {
    /// Read within the wait.
    Readable,
    /// Busy elsewhere: not read within the wait, or the lock wait ran out.
    Slow,
}

/// The health checks' store read, one at a time.
#[derive(Debug, Default)]
pub struct StoreProbe {
    /// True while a health read is under way (possibly still waiting for the lock).
    busy: Arc<AtomicBool>,
}

/// Clears the probe's busy flag when the read ends, however it ends.
struct Done(Arc<AtomicBool>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl StoreProbe {
    /// Probes `store` through its lock (`TicketStore::probe`: a read that may answer from
    /// the cache without the lock would not see a busy store) on the blocking pool,
    /// waiting at most `wait` for the answer.
    pub async fn check(&self, store: &TicketStore, wait: Duration) -> Result<StoreState, ApiError> {
        if self.busy.swap(true, Ordering::AcqRel) {
            // The previous check's read still waits for the store.
            return Ok(StoreState::Slow);
        }
        let done = Done(Arc::clone(&self.busy));
        let store = store.clone();
        let read = tokio::task::spawn_blocking(move || {
            let _done = done;
            store.probe()
        });
        match tokio::time::timeout(wait, read).await {
            // Still waiting: it goes on in the background and clears `busy` when it ends.
            Err(_) => Ok(StoreState::Slow),
            Ok(Err(join)) => Err(ApiError::Internal(format!("health read failed: {join}"))),
            Ok(Ok(Ok(()))) => Ok(StoreState::Readable),
            Ok(Ok(Err(StoreError::LockTimeout(_) | StoreError::Unstable(_)))) => {
                Ok(StoreState::Slow)
            }
            Ok(Ok(Err(err))) => Err(err.into()),
        }
    }
}
