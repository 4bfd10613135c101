//! The open connections of one server, so that when every slot is taken the longest-idle
//! keep-alive connection can be closed to admit a new one (as nginx does), instead of the
//! new client waiting until some idle connection times out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What every connection of a server shares.
#[derive(Debug, Default)]
struct Shared {
    /// Ticks once per request ended: the order of last activity, exact and with no clock.
    clock: AtomicU64,
    /// Whether a new connection is waiting for a slot; only then is `idle` notified.
    waiting: AtomicBool,
    /// Notified when a connection goes idle while a new one waits.
    idle: Notify,
}

/// One connection's activity, updated per request without taking the registry's lock.
#[derive(Debug)]
pub struct Activity {
    /// Requests being answered on this connection now.
    in_flight: AtomicUsize,
    /// When the last request ended (or the connection opened), as a tick of `Shared::clock`.
    last_active: AtomicU64,
    /// Cancelled to ask the connection to close gracefully: evicted, or server shutdown.
    pub close: CancellationToken,
    shared: Arc<Shared>,
}

impl Activity {
    /// The activity of a connection served outside any server's registry (a test of a
    /// per-connection server): never evicted, closed only through `close`.
    pub fn standalone(close: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            last_active: AtomicU64::new(0),
            close,
            shared: Arc::default(),
        })
    }

    /// Marks a request started.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a request answered: the connection is idle from now if it was the last one.
    pub fn end(&self) {
        let now = self.shared.clock.fetch_add(1, Ordering::Relaxed);
        self.last_active.store(now, Ordering::Relaxed);
        let was = self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if was == 1 && self.shared.waiting.load(Ordering::Relaxed) {
            self.shared.idle.notify_one();
        }
    }
}

/// Every open connection of a server.
#[derive(Debug)]
pub struct Connections {
    shared: Arc<Shared>,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
}

/// Removes its connection from the registry when dropped.
pub struct Registered {
    pub activity: Arc<Activity>,
    id: u64,
    connections: Arc<Connections>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
    }
}

impl Connections {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            shared: Arc::default(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        // The map stays consistent whatever panicked while holding it.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection, idle from now; `close` is cancelled with `shutdown`.
    pub fn add(self: &Arc<Self>, shutdown: &CancellationToken) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last_active: AtomicU64::new(self.shared.clock.fetch_add(1, Ordering::Relaxed)),
            close: shutdown.child_token(),
            shared: Arc::clone(&self.shared),
        });
        self.lock().insert(id, Arc::clone(&activity));
        Registered {
            activity,
            id,
            connections: Arc::clone(self),
        }
    }

    /// Says whether a new connection is waiting for a slot, so that connections going idle
    /// wake `became_idle`.
    pub fn set_waiting(&self, waiting: bool) {
        self.shared.waiting.store(waiting, Ordering::Relaxed);
    }

    /// Completes when a connection went idle while `set_waiting(true)` (or had, since the
    /// last call).
    pub async fn became_idle(&self) {
        self.shared.idle.notified().await;
    }

    /// Asks the connection idle the longest (no request in flight) to close; false when
    /// every connection is busy or already closing.
    pub fn evict_longest_idle(&self) -> bool {
        let open = self.lock();
        let idlest = open
            .values()
            .filter(|a| a.in_flight.load(Ordering::Relaxed) == 0 && !a.close.is_cancelled())
            .min_by_key(|a| a.last_active.load(Ordering::Relaxed));
        match idlest {
            Some(activity) => {
                activity.close.cancel();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_idle_connection_is_evicted_and_busy_ones_never() {
        let connections = Connections::new();
        let shutdown = CancellationToken::new();
        let first = connections.add(&shutdown);
        let second = connections.add(&shutdown);
        let busy = connections.add(&shutdown);
        busy.activity.begin();
        // `second` answered a request after `first` opened: `first` is the idlest.
        second.activity.begin();
        second.activity.end();
        assert!(connections.evict_longest_idle());
        assert!(first.activity.close.is_cancelled());
        assert!(!second.activity.close.is_cancelled());
        assert!(connections.evict_longest_idle());
        assert!(second.activity.close.is_cancelled());
        assert!(!connections.evict_longest_idle(), "only a busy one is left");
        assert!(!busy.activity.close.is_cancelled());
        drop(first);
        assert_eq!(connections.lock().len(), 2);
        shutdown.cancel();
        assert!(busy.activity.close.is_cancelled());
    }
}
