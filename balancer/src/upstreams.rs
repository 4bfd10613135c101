//! The set of upstream nodes: each configured name resolved to all of its addresses, the
//! state and counters kept per resolved address, and the loop that re-resolves the names
//! so nodes that appear or vanish are followed.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use hyper::http::uri::Authority;
use prometheus_client::metrics::histogram::Histogram;

use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::settings::NodeName;

/// One resolved node address and what the balancer knows about it.
#[derive(Debug)]
pub struct Node {
    pub address: SocketAddr,
    /// `address` as a URI authority, made once so forwarding a request formats nothing.
    authority: Authority,
    /// This node's child of the per-node latency histogram family, fetched on its first
    /// answer, so later answers neither allocate nor hash a label.
    pub(crate) upstream_seconds: OnceLock<Histogram>,
    /// Whether requests may be sent here; cleared by a connection failure or a failed
    /// health check, set again by a passing health check.
    up: AtomicBool,
    /// Requests sent here whose response has not been fully streamed back yet.
    in_flight: AtomicU64,
    /// Every attempt to forward a request here.
    requests: AtomicU64,
    /// Forwarding attempts here that failed (no connection, dropped, or too slow).
    failures: AtomicU64,
    /// Requests that failed here and were then sent on to another node.
    retries: AtomicU64,
    /// The last failure seen here, by a request or a health check, for `/balancer/nodes`.
    last_error: Mutex<Option<String>>,
}

/// A node's state and counters at one moment, for the admin endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSnapshot {
    pub address: String,
    pub up: bool,
    pub in_flight: u64,
    pub requests: u64,
    pub failures: u64,
    pub retries: u64,
    pub last_error: Option<String>,
}

impl Node {
    /// A newly seen address starts up: a connection failure marks it down at once and
    /// costs the request nothing, and the next health check settles it either way.
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
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
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

    /// Marks the node up; true when it was down before.
    pub fn mark_up(&self) -> bool {
        !self.up.swap(true, Ordering::Relaxed)
    }

    /// Marks the node down for `reason`; true when it was up before.
    pub fn mark_down(&self, reason: impl Into<String>) -> bool {
        self.set_last_error(reason.into());
        self.up.swap(false, Ordering::Relaxed)
    }

    /// Counts a failed forwarding attempt.
    pub fn record_failure(&self, reason: impl Into<String>) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.set_last_error(reason.into());
    }

    /// Counts a request that failed here and goes on to another node.
    pub fn record_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request sent here; it stays in flight until the guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    pub fn snapshot(&self) -> NodeSnapshot {
        NodeSnapshot {
            address: self.address.to_string(),
            up: self.is_up(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            last_error: self.lock_last_error().clone(),
        }
    }

    fn set_last_error(&self, reason: String) {
        *self.lock_last_error() = Some(reason);
    }

    fn lock_last_error(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A panic while holding this lock cannot leave a half-written Option behind.
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Keeps a request counted as in flight on its node until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Node>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A resolver that does not answer within this leaves the name's last known addresses in
/// place, so one stuck lookup cannot hold up start-up or the other names.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Every known node, from every configured name.
#[derive(Debug)]
pub struct Upstreams {
    names: Vec<NodeName>,
    current: RwLock<Current>,
}

#[derive(Debug, Default)]
struct Current {
    /// Every node, ordered by address so round robin walks them in a stable order.
    nodes: Arc<[Arc<Node>]>,
    /// The addresses each name last resolved to, kept when a later resolution fails.
    known: Vec<Vec<SocketAddr>>,
}

impl Upstreams {
    /// An empty set for `names`; [`Upstreams::refresh`] fills it.
    pub fn new(names: Vec<NodeName>) -> Self {
        let known = vec![Vec::new(); names.len()];
        Self {
            names,
            current: RwLock::new(Current {
                nodes: Arc::from(Vec::new()),
                known,
            }),
        }
    }

    /// Every known node, ordered by address.
    pub fn nodes(&self) -> Arc<[Arc<Node>]> {
        Arc::clone(&self.read().nodes)
    }

    /// The nodes currently up, ordered by address.
    pub fn healthy(&self) -> Vec<Arc<Node>> {
        self.read()
            .nodes
            .iter()
            .filter(|node| node.is_up())
            .cloned()
            .collect()
    }

    /// Resolves every name with `resolve` and applies the result.
    pub async fn refresh<R, F>(&self, resolve: R)
    where
        R: Fn(NodeName) -> F,
        F: Future<Output = io::Result<Vec<SocketAddr>>>,
    {
        let mut results = Vec::with_capacity(self.names.len());
        for name in &self.names {
            let result = match tokio::time::timeout(RESOLVE_TIMEOUT, resolve(name.clone())).await {
                Ok(Ok(addresses)) if addresses.is_empty() => {
                    Err(io::Error::other("resolves to no address"))
                }
                Ok(other) => other,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer from the resolver within {RESOLVE_TIMEOUT:?}"),
                )),
            };
            if let Err(err) = &result {
                warn!(node = %name, cause = %err, "cannot resolve node; keeping its last known addresses");
            }
            results.push(result.ok());
        }
        self.apply(results);
    }

    /// Replaces each name's addresses with its new resolution (`None` keeps the last known
    /// ones), keeping the state of addresses seen before and dropping vanished ones.
    fn apply(&self, resolved: Vec<Option<Vec<SocketAddr>>>) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (known, fresh) in current.known.iter_mut().zip(resolved) {
            if let Some(addresses) = fresh {
                *known = addresses;
            }
        }
        let mut old: BTreeMap<SocketAddr, Arc<Node>> = current
            .nodes
            .iter()
            .map(|node| (node.address, Arc::clone(node)))
            .collect();
        let mut next: BTreeMap<SocketAddr, Arc<Node>> = BTreeMap::new();
        for address in current.known.iter().flatten() {
            if next.contains_key(address) {
                continue;
            }
            let node = old.remove(address).unwrap_or_else(|| {
                info!(node = %address, "node added");
                Arc::new(Node::new(*address))
            });
            next.insert(*address, node);
        }
        for address in old.keys() {
            info!(node = %address, "node removed");
        }
        current.nodes = next.into_values().collect();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Resolves a node name through the system resolver (DNS, `/etc/hosts`, IP literals).
pub async fn resolve_dns(name: NodeName) -> io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host((name.host.as_str(), name.port))
        .await?
        .collect())
}

/// Re-resolves every name every `interval`, for as long as the task runs.
pub async fn keep_resolving<R, F>(upstreams: Arc<Upstreams>, interval: Duration, resolve: R)
where
    R: Fn(NodeName) -> F,
    F: Future<Output = io::Result<Vec<SocketAddr>>>,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is immediate, and `run` has just resolved once.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        upstreams.refresh(&resolve).await;
    }
}

/// Two nodes, the second marked down: a fixture for the admin and metrics tests.
#[cfg(test)]
pub(crate) async fn two_nodes_one_down() -> Arc<Upstreams> {
    let upstreams = Arc::new(Upstreams::new(vec![
        "127.0.0.1:1".parse().expect("name"),
        "127.0.0.1:2".parse().expect("name"),
    ]));
    upstreams
        .refresh(|n: crate::settings::NodeName| async move {
            Ok(vec![std::net::SocketAddr::from(([127, 0, 0, 1], n.port))])
        })
        .await;
    upstreams.nodes()[1].mark_down("connection refused");
    upstreams
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn name(s: &str) -> NodeName {
        s.parse().expect("node name")
    }

    fn addresses(upstreams: &Upstreams) -> Vec<String> {
        upstreams
            .nodes()
            .iter()
            .map(|n| n.address.to_string())
            .collect()
    }

    #[test]
    fn a_name_stands_for_all_its_addresses_and_state_survives_re_resolution() {
        let upstreams = Upstreams::new(vec![name("node:8000"), name("other:9000")]);
        upstreams.apply(vec![
            Some(vec![addr("10.0.0.3:8000"), addr("10.0.0.2:8000")]),
            Some(vec![addr("10.0.0.9:9000")]),
        ]);
        assert_eq!(
            addresses(&upstreams),
            ["10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.9:9000"]
        );
        upstreams.nodes()[0].mark_down("refused");

        // A scale-up adds a replica; the known one keeps its state.
        upstreams.apply(vec![
            Some(vec![
                addr("10.0.0.2:8000"),
                addr("10.0.0.3:8000"),
                addr("10.0.0.4:8000"),
            ]),
            Some(vec![addr("10.0.0.9:9000")]),
        ]);
        let nodes = upstreams.nodes();
        assert_eq!(nodes.len(), 4);
        assert!(!nodes[0].is_up());
        assert_eq!(upstreams.healthy().len(), 3);

        // A scale-down removes one.
        upstreams.apply(vec![
            Some(vec![addr("10.0.0.2:8000")]),
            Some(vec![addr("10.0.0.9:9000")]),
        ]);
        assert_eq!(addresses(&upstreams), ["10.0.0.2:8000", "10.0.0.9:9000"]);
    }

    #[test]
    fn a_name_that_fails_to_resolve_keeps_its_last_addresses() {
        let upstreams = Upstreams::new(vec![name("node:8000")]);
        upstreams.apply(vec![Some(vec![addr("10.0.0.2:8000")])]);
        upstreams.apply(vec![None]);
        assert_eq!(addresses(&upstreams), ["10.0.0.2:8000"]);
    }

    #[test]
    fn two_names_for_one_address_make_one_node() {
        let upstreams = Upstreams::new(vec![name("a:1"), name("b:1")]);
        upstreams.apply(vec![
            Some(vec![addr("127.0.0.1:1")]),
            Some(vec![addr("127.0.0.1:1")]),
        ]);
        assert_eq!(upstreams.nodes().len(), 1);
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let node = Arc::new(Node::new(addr("127.0.0.1:1")));
        let guard = node.start_request();
        assert_eq!(node.snapshot().in_flight, 1);
        drop(guard);
        let snapshot = node.snapshot();
        assert_eq!((snapshot.in_flight, snapshot.requests), (0, 1));
    }

    #[tokio::test]
    async fn refresh_keeps_addresses_when_the_resolver_fails_or_finds_nothing() {
        let upstreams = Upstreams::new(vec![name("a:1"), name("b:2")]);
        upstreams
            .refresh(
                |n: NodeName| async move { Ok(vec![SocketAddr::from(([127, 0, 0, 1], n.port))]) },
            )
            .await;
        assert_eq!(addresses(&upstreams), ["127.0.0.1:1", "127.0.0.1:2"]);
        upstreams
            .refresh(|n: NodeName| async move {
                match n.host.as_str() {
                    "a" => Err(io::Error::other("no such host")),
                    _ => Ok(Vec::new()),
                }
            })
            .await;
        assert_eq!(addresses(&upstreams), ["127.0.0.1:1", "127.0.0.1:2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn names_are_resolved_again_every_interval() {
        let upstreams = Arc::new(Upstreams::new(vec![name("node:8000")]));
        let replicas = Arc::new(Mutex::new(HashMap::from([("node", 1u8)])));
        let resolve = {
            let replicas = Arc::clone(&replicas);
            move |n: NodeName| {
                let count = replicas.lock().expect("lock").get("node").copied();
                async move {
                    let count = count.unwrap_or(0);
                    Ok((1..=count)
                        .map(|i| SocketAddr::from(([10, 0, 0, i], n.port)))
                        .collect())
                }
            }
        };
        upstreams.refresh(&resolve).await;
        assert_eq!(upstreams.nodes().len(), 1);
        let task = tokio::spawn(keep_resolving(
            Arc::clone(&upstreams),
            Duration::from_secs(2),
            resolve,
        ));

        replicas.lock().expect("lock").insert("node", 3);
        tokio::time::sleep(Duration::from_millis(1_900)).await;
        assert_eq!(upstreams.nodes().len(), 1, "not yet re-resolved");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(upstreams.nodes().len(), 3, "re-resolved after the interval");
        task.abort();
    }
}
