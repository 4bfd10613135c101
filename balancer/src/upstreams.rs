//! The set of upstream nodes: each configured name resolved to all of its addresses (one
//! [`Node`] per address), and the loop that re-resolves the names so nodes that appear or
//! vanish are followed.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
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
        }
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
    use std::sync::Mutex;

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
