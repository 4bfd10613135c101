//! The set of upstream nodes: each configured name resolved to all of its addresses (one
//! [`Node`] per address), and the loop that re-resolves the names so nodes that appear or
//! vanish are followed.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

pub use crate::node::{InFlight, Node, NodeSnapshot};
use crate::settings::NodeName;

/// A resolver that does not answer within this leaves the name's last known addresses in
/// place, so one stuck lookup cannot hold up start-up or the other names.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Every known node, from every configured name.
#[derive(Debug)]
pub struct Upstreams {
    names: Vec<NodeName>,
    current: RwLock<Current>,
    /// Tells this set apart from any other in the threads' copies of the node list.
    id: u64,
    /// Bumped each time the node list changes, so each thread's copy knows it is stale.
    generation: AtomicU64,
}

/// The next `Upstreams::id`.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The most sets whose node list one thread keeps a copy of (one in the program; the
/// tests make many).
const LOCAL_COPIES: usize = 4;

/// One thread's copy of one set's node list: set id, generation, and the list.
type LocalCopy = (u64, u64, Arc<[Arc<Node>]>);

thread_local! {
    /// This thread's copies of node lists, each a copy of its own, so taking one on every
    /// request writes no cache line another thread reads.
    static LOCAL: std::cell::RefCell<Vec<LocalCopy>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[derive(Debug, Default)]
struct Current {
    /// Every node, ordered by address so round robin walks them in a stable order.
    nodes: Arc<[Arc<Node>]>,
    /// The addresses each name last resolved to, kept when a later resolution fails.
    known: Vec<Vec<SocketAddr>>,
    /// Whether the names have been resolved before: a node that appears after the first
    /// resolution is new to the cluster, and slow-starts.
    resolved_before: bool,
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
                resolved_before: false,
            }),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
        }
    }

    /// Every known node, as [`Upstreams::nodes`], from this thread's copy of the list:
    /// the per-request path takes no lock and shares no reference count with other
    /// threads, only reading the generation to see whether the copy is still current.
    pub fn local_nodes(&self) -> Arc<[Arc<Node>]> {
        let generation = self.generation.load(Ordering::Acquire);
        LOCAL.with_borrow_mut(|copies| {
            if let Some((_, _, nodes)) = copies
                .iter()
                .find(|(id, seen, _)| *id == self.id && *seen == generation)
            {
                return Arc::clone(nodes);
            }
            // Read before the list: a change after this is seen by the next request.
            let nodes: Arc<[Arc<Node>]> = self.nodes().to_vec().into();
            copies.retain(|(id, _, _)| *id != self.id);
            if copies.len() >= LOCAL_COPIES {
                copies.remove(0);
            }
            copies.push((self.id, generation, Arc::clone(&nodes)));
            nodes
        })
    }

    /// Every known node, ordered by address.
    pub fn nodes(&self) -> Arc<[Arc<Node>]> {
        Arc::clone(&self.read().nodes)
    }

    /// The nodes currently in rotation (up and not ejected), ordered by address.
    pub fn healthy(&self) -> Vec<Arc<Node>> {
        self.read()
            .nodes
            .iter()
            .filter(|node| node.is_healthy())
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
        let warm_new_nodes = current.resolved_before;
        for address in current.known.iter().flatten() {
            if next.contains_key(address) {
                continue;
            }
            let node = old.remove(address).unwrap_or_else(|| {
                info!(node = %address, "node added");
                let node = Node::new(*address);
                if warm_new_nodes {
                    node.start_warming();
                }
                Arc::new(node)
            });
            next.insert(*address, node);
        }
        current.resolved_before = true;
        for address in old.keys() {
            info!(node = %address, "node removed");
        }
        current.nodes = next.into_values().collect();
        self.generation.fetch_add(1, Ordering::Release);
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
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn name(s: &str) -> NodeName {
        s.parse().expect("node name")
    }

    /// What `each` says of every one of `nodes`, in their order.
    pub(crate) fn of_each<T>(nodes: &[Arc<Node>], each: impl Fn(&Node) -> T) -> Vec<T> {
        nodes.iter().map(|n| each(n)).collect()
    }

    fn addresses(upstreams: &Upstreams) -> Vec<String> {
        of_each(&upstreams.nodes(), |n| n.address.to_string())
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
    fn each_threads_copy_of_the_list_follows_every_change_of_its_own_set() {
        let local = |upstreams: &Upstreams| -> Vec<String> {
            let nodes = upstreams.local_nodes();
            nodes.iter().map(|n| n.address.to_string()).collect()
        };
        let upstreams = Upstreams::new(vec![name("a:8000")]);
        let other = Upstreams::new(vec![name("b:8000")]);
        assert!(local(&upstreams).is_empty());
        upstreams.apply(vec![Some(vec![addr("10.0.0.1:8000")])]);
        other.apply(vec![Some(vec![addr("10.0.0.7:8000")])]);
        assert_eq!(local(&upstreams), ["10.0.0.1:8000"]);
        assert_eq!(
            local(&other),
            ["10.0.0.7:8000"],
            "another set, another copy"
        );
        upstreams.apply(vec![Some(vec![
            addr("10.0.0.1:8000"),
            addr("10.0.0.2:8000"),
        ])]);
        assert_eq!(local(&upstreams), ["10.0.0.1:8000", "10.0.0.2:8000"]);
        // The copy shares the nodes themselves, and so their state.
        upstreams.nodes()[1].mark_down("refused");
        assert!(!upstreams.local_nodes()[1].is_up());
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_appears_after_start_up_slow_starts_and_the_first_ones_do_not() {
        let upstreams = Upstreams::new(vec![name("node:8000")]);
        upstreams.apply(vec![Some(vec![addr("10.0.0.2:8000")])]);
        upstreams.apply(vec![Some(vec![
            addr("10.0.0.2:8000"),
            addr("10.0.0.3:8000"),
        ])]);
        let slow_start = Duration::from_secs(5);
        let weights: Vec<f64> = upstreams
            .nodes()
            .iter()
            .map(|n| n.weight(slow_start))
            .collect();
        assert_eq!(weights[0], 1.0, "known from the start");
        assert!(weights[1] < 0.2, "a scale-up starts small: {weights:?}");
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
