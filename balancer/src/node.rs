//! One node as the balancer sees it: its health verdict (rise/fall over health checks),
//! slow start after it appears, passive ejection after repeated failures, its in-flight
//! limit and queue, and its counters. Shared by every worker thread, so everything here is
//! an atomic or a short lock, and the per-request path reads only atomics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hyper::http::uri::Authority;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// One resolved node address and what the balancer knows about it.
#[derive(Debug)]
pub struct Node {
    pub address: SocketAddr,
    /// `address` as a URI authority, made once so forwarding a request formats nothing.
    authority: Authority,
    /// This node's child of the per-node latency histogram family, fetched on its first
    /// answer, so later answers neither allocate nor hash a label.
    pub(crate) upstream_seconds: OnceLock<Histogram>,
    /// Whether requests may be sent here: the health checks' verdict (rise/fall), cleared
    /// at once by a refused connection.
    up: AtomicBool,
    /// Consecutive health checks that passed (positive) or failed (negative).
    streak: Mutex<i32>,
    /// Whether the node's last passed health check said the shared store is slow: the
    /// node answers, and stays in rotation, but its store reads wait (as every node's do).
    store_slow: AtomicBool,
    /// Bumped each time the node is marked down, so requests in flight here can be sent
    /// elsewhere at once.
    down_signal: watch::Sender<u64>,
    /// How many times the node has been marked down: a request notes it when it starts,
    /// to tell later whether its node went down meanwhile without subscribing.
    downs: AtomicU64,
    /// True while the node's share ramps up after it appeared or came back (slow start).
    warming: AtomicBool,
    /// When the node last appeared or came back up.
    up_since: Mutex<Instant>,
    /// Consecutive failed forwarding attempts (5xx answers, broken connections, timeouts).
    consecutive_failures: AtomicU32,
    /// True while the node is out of rotation after repeated failures (outlier ejection).
    ejected: AtomicBool,
    /// When an ejection ends.
    ejected_until: Mutex<Instant>,
    /// Requests sent here whose response has not been fully streamed back yet.
    in_flight: AtomicU64,
    /// Requests waiting for an in-flight slot here.
    queued: AtomicU64,
    /// Woken when an in-flight slot frees up, for the queued requests.
    slot_freed: Notify,
    /// Every attempt to forward a request here.
    requests: AtomicU64,
    /// Forwarding attempts here that failed (no connection, dropped, too slow, or 5xx).
    failures: AtomicU64,
    /// Requests that failed here and were then sent on to another node.
    retries: AtomicU64,
    /// Second attempts sent elsewhere because this node was slow to answer (hedges).
    hedges: AtomicU64,
    /// Times this node was ejected from rotation.
    ejections: AtomicU64,
    /// Requests refused because this node's in-flight limit and queue were full.
    rejected: AtomicU64,
    /// The last failure seen here, by a request or a health check, for `/balancer/nodes`.
    last_error: Mutex<Option<String>>,
}

/// A node's state and counters at one moment, for the admin endpoints and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSnapshot {
    pub address: String,
    pub up: bool,
    pub ejected: bool,
    /// The node's last passed health check said the shared store is slow.
    pub store_slow: bool,
    /// The share of a full turn the node gets now: below 1 during slow start.
    pub weight: f64,
    pub in_flight: u64,
    pub queued: u64,
    pub requests: u64,
    pub failures: u64,
    pub retries: u64,
    pub hedges: u64,
    pub ejections: u64,
    pub rejected: u64,
    pub last_error: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every value behind these locks is written whole, so a panic cannot leave half of one.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Node {
    /// A newly seen address starts up: a connection failure marks it down at once and
    /// costs the request nothing, and the health checks settle it either way.
    pub fn new(address: SocketAddr) -> Self {
        // A socket address always makes a valid authority; the fallback is never used.
        let authority = address
            .to_string()
            .parse()
            .unwrap_or_else(|_| Authority::from_static("0.0.0.0"));
        Self {
            address,
            authority,
            upstream_seconds: OnceLock::new(),
            up: AtomicBool::new(true),
            streak: Mutex::new(0),
            store_slow: AtomicBool::new(false),
            down_signal: watch::Sender::new(0),
            downs: AtomicU64::new(0),
            warming: AtomicBool::new(false),
            up_since: Mutex::new(Instant::now()),
            consecutive_failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            ejected_until: Mutex::new(Instant::now()),
            in_flight: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            slot_freed: Notify::new(),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            hedges: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// The node's address as a URI authority (`IP:PORT`, an IPv6 address in brackets).
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Whether the node is in rotation: up and not ejected.
    pub fn is_healthy(&self) -> bool {
        self.is_up() && !self.ejected.load(Ordering::Relaxed)
    }

    /// Starts slow start: from now the node's share grows from a tenth to a full one.
    pub fn start_warming(&self) {
        *lock(&self.up_since) = Instant::now();
        self.warming.store(true, Ordering::Relaxed);
    }

    /// The share of its turns this node takes now: 1 once warmed up, during slow start
    /// growing linearly from 0.1 to 1 over `slow_start`. Ends slow start when it is over.
    pub fn weight(&self, slow_start: Duration) -> f64 {
        if !self.warming.load(Ordering::Relaxed) || slow_start.is_zero() {
            return 1.0;
        }
        let elapsed = lock(&self.up_since).elapsed();
        if elapsed >= slow_start {
            self.warming.store(false, Ordering::Relaxed);
            return 1.0;
        }
        (0.1 + 0.9 * elapsed.as_secs_f64() / slow_start.as_secs_f64()).min(1.0)
    }

    /// Records one health check's outcome and applies rise/fall: the node comes up after
    /// `rise` passes in a row and goes down after `fall` failures in a row. Returns the
    /// change, if the verdict changed.
    pub fn health_checked(&self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        let streak = {
            let mut streak = lock(&self.streak);
            *streak = match (passed, *streak) {
                (true, s) if s > 0 => s.saturating_add(1),
                (true, _) => 1,
                (false, s) if s < 0 => s.saturating_sub(1),
                (false, _) => -1,
            };
            *streak
        };
        let up = self.is_up();
        if !up && passed && streak >= i32::try_from(rise).unwrap_or(i32::MAX) {
            self.mark_up();
            return Some(true);
        }
        if up && !passed && -streak >= i32::try_from(fall).unwrap_or(i32::MAX) {
            self.mark_down_quietly();
            return Some(false);
        }
        None
    }

    /// Records what the node's passed health check said of the shared store; true when
    /// that changed.
    pub fn set_store_slow(&self, slow: bool) -> bool {
        self.store_slow.swap(slow, Ordering::Relaxed) != slow
    }

    /// Whether the node's last passed health check said the shared store is slow.
    pub fn store_slow(&self) -> bool {
        self.store_slow.load(Ordering::Relaxed)
    }

    /// Marks the node up (and starts its slow start); true when it was down before.
    pub fn mark_up(&self) -> bool {
        let was_down = !self.up.swap(true, Ordering::Relaxed);
        if was_down {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.start_warming();
        }
        was_down
    }

    /// Marks the node down for `reason`; true when it was up before. Requests in flight
    /// here that may be sent again go elsewhere at once.
    pub fn mark_down(&self, reason: impl Into<String>) -> bool {
        self.set_last_error(reason.into());
        // A refused connection counts as a failed check: the passes to come back start anew.
        *lock(&self.streak) = -1;
        self.mark_down_quietly()
    }

    fn mark_down_quietly(&self) -> bool {
        let was_up = self.up.swap(false, Ordering::Relaxed);
        if was_up {
            self.downs.fetch_add(1, Ordering::Relaxed);
            self.down_signal.send_modify(|generation| *generation += 1);
        }
        was_up
    }

    /// How many times the node has been marked down so far.
    pub fn downs(&self) -> u64 {
        self.downs.load(Ordering::Relaxed)
    }

    /// Completes when the node is next marked down.
    pub fn went_down(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut signal = self.down_signal.subscribe();
        async move {
            // The sender lives as long as the node; a closed channel just never fires.
            if signal.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Counts a successful answer: the failure streak ends. Reads before it writes, so the
    /// usual case touches no shared cache line for writing.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failed forwarding attempt; returns the failures in a row so far.
    pub fn record_failure(&self, reason: impl Into<String>) -> u32 {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.set_last_error(reason.into());
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Takes the node out of rotation until `until`; false if it already was.
    pub fn eject(&self, until: Instant) -> bool {
        if self.ejected.swap(true, Ordering::Relaxed) {
            return false;
        }
        *lock(&self.ejected_until) = until;
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        true
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Ends an ejection whose time is up (the node then slow-starts); true if it ended.
    pub fn end_ejection_if_due(&self, now: Instant) -> bool {
        if !self.is_ejected() || *lock(&self.ejected_until) > now {
            return false;
        }
        self.ejected.store(false, Ordering::Relaxed);
        self.start_warming();
        true
    }

    /// Counts a request that failed here and goes on to another node.
    pub fn record_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a hedged second attempt sent elsewhere because this node was slow.
    pub fn record_hedge(&self) {
        self.hedges.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request refused because this node was full.
    pub fn record_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests in flight here now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Takes an in-flight slot if fewer than `limit` are taken.
    pub fn try_start_request(self: &Arc<Self>, limit: u64) -> Option<InFlight> {
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.requests.fetch_add(1, Ordering::Relaxed);
                    return Some(InFlight(Arc::clone(self)));
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Waits up to `wait` in this node's queue (of at most `queue_size`) for an in-flight
    /// slot; `None` when the queue is full or the wait ran out.
    pub async fn queue_for_slot(
        self: &Arc<Self>,
        limit: u64,
        queue_size: u64,
        wait: Duration,
    ) -> Option<InFlight> {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= queue_size {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let deadline = Instant::now() + wait;
        let slot = loop {
            let freed = self.slot_freed.notified();
            tokio::pin!(freed);
            // Registered before trying, so a slot freed in between is not missed.
            freed.as_mut().enable();
            if let Some(slot) = self.try_start_request(limit) {
                break Some(slot);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break None;
            }
        };
        self.queued.fetch_sub(1, Ordering::Relaxed);
        slot
    }

    /// Counts a request sent here with no limit (health-independent uses and tests).
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    pub fn snapshot(&self, slow_start: Duration) -> NodeSnapshot {
        NodeSnapshot {
            address: self.address.to_string(),
            up: self.is_up(),
            ejected: self.is_ejected(),
            store_slow: self.store_slow(),
            weight: self.weight(slow_start),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            hedges: self.hedges.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// Keeps `reason` as the node's last error, for `/balancer/nodes`.
    pub fn note_error(&self, reason: String) {
        self.set_last_error(reason);
    }

    fn set_last_error(&self, reason: String) {
        *lock(&self.last_error) = Some(reason);
    }
}

/// Keeps a request counted as in flight on its node until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Node>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.0.queued.load(Ordering::Relaxed) > 0 {
            self.0.slot_freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Arc<Node> {
        Arc::new(Node::new("127.0.0.1:1".parse().expect("address")))
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let node = node();
        let guard = node.start_request();
        assert_eq!(node.snapshot(Duration::ZERO).in_flight, 1);
        drop(guard);
        let snapshot = node.snapshot(Duration::ZERO);
        assert_eq!((snapshot.in_flight, snapshot.requests), (0, 1));
    }

    #[test]
    fn a_node_goes_down_after_fall_failures_and_up_after_rise_passes() {
        let node = node();
        assert_eq!(node.health_checked(false, 2, 3), None);
        assert_eq!(node.health_checked(false, 2, 3), None);
        assert!(node.is_up(), "two failures are not yet three");
        // A pass in between starts the count again.
        assert_eq!(node.health_checked(true, 2, 3), None);
        for _ in 0..2 {
            assert_eq!(node.health_checked(false, 2, 3), None);
        }
        assert_eq!(node.health_checked(false, 2, 3), Some(false));
        assert!(!node.is_up());
        assert_eq!(node.health_checked(true, 2, 3), None);
        assert!(!node.is_up(), "one pass is not yet two");
        assert_eq!(node.health_checked(true, 2, 3), Some(true));
        assert!(node.is_up());
    }

    #[test]
    fn a_refused_connection_marks_down_at_once_and_rise_still_applies() {
        let node = node();
        assert!(node.mark_down("refused"));
        assert!(!node.is_up());
        assert_eq!(node.health_checked(true, 2, 3), None);
        assert_eq!(node.health_checked(true, 2, 3), Some(true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_comes_back_ramps_its_share_up_over_slow_start() {
        let node = node();
        let slow_start = Duration::from_secs(10);
        assert_eq!(node.weight(slow_start), 1.0, "a node known from the start");
        node.mark_down("refused");
        node.mark_up();
        assert!((node.weight(slow_start) - 0.1).abs() < 1e-9);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!((node.weight(slow_start) - 0.55).abs() < 1e-9);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(node.weight(slow_start), 1.0);
        assert_eq!(node.weight(Duration::ZERO), 1.0, "slow start off");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejection_ends_when_its_time_is_up() {
        let node = node();
        assert!(node.eject(Instant::now() + Duration::from_secs(10)));
        assert!(!node.is_healthy());
        assert!(
            !node.eject(Instant::now() + Duration::from_secs(10)),
            "once"
        );
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!node.end_ejection_if_due(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(node.end_ejection_if_due(Instant::now()));
        assert!(node.is_healthy());
        assert_eq!(node.snapshot(Duration::ZERO).ejections, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_the_limit_a_request_queues_and_gets_the_next_free_slot() {
        let node = node();
        let first = node.try_start_request(1).expect("a free slot");
        assert!(node.try_start_request(1).is_none(), "the limit is 1");
        let waiter = {
            let node = Arc::clone(&node);
            tokio::spawn(async move {
                node.queue_for_slot(1, 1, Duration::from_secs(1))
                    .await
                    .is_some()
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(node.snapshot(Duration::ZERO).queued, 1);
        // The queue holds one: a second waiter is refused at once.
        assert!(
            node.queue_for_slot(1, 1, Duration::from_secs(1))
                .await
                .is_none()
        );
        drop(first);
        assert!(
            waiter.await.expect("waiter"),
            "the queued request got the slot"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_gives_up_after_its_wait() {
        let node = node();
        let _held = node.try_start_request(1).expect("a free slot");
        let started = Instant::now();
        assert!(
            node.queue_for_slot(1, 4, Duration::from_millis(100))
                .await
                .is_none()
        );
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert_eq!(node.snapshot(Duration::ZERO).queued, 0);
    }

    #[tokio::test]
    async fn marking_down_wakes_the_requests_in_flight_there() {
        let node = node();
        let down = node.went_down();
        node.mark_down("refused");
        tokio::time::timeout(Duration::from_secs(5), down)
            .await
            .expect("woken");
    }
}
