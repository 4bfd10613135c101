//! Where a request goes: round robin over the nodes in rotation (one shared counter,
//! advanced by `fetch_add(1, Relaxed)` per request), with slow start (a warming node takes
//! only its share of its turns) and the panic threshold (when more than half the nodes
//! look unhealthy at once, every node is in rotation, as Envoy does: the trouble is more
//! likely shared than theirs). The rest of the set follows in ring order as the nodes to
//! retry on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::node::Node;

/// The round-robin position shared by every request.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new() -> Self {
        Self::default()
    }

    /// The order in which one request tries `candidates`: starting at the next round-robin
    /// position, then every other candidate once. Empty when there are no candidates.
    pub fn order<T: Clone>(&self, candidates: &[T]) -> Vec<T> {
        if candidates.is_empty() {
            return Vec::new();
        }
        let start = self.advance() % candidates.len();
        candidates[start..]
            .iter()
            .chain(&candidates[..start])
            .cloned()
            .collect()
    }

    fn advance(&self) -> usize {
        // Relaxed is enough: the counter orders nothing else, it only spreads load.
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// Whether more than half of `total` nodes are out of rotation, `healthy` being in it.
pub fn panicking(healthy: usize, total: usize) -> bool {
    healthy * 2 < total
}

/// A number in `0..1` spread evenly over successive turns, with no random source.
fn turn_fraction(turn: usize) -> f64 {
    // The golden ratio's fractional part visits [0, 1) evenly (a Weyl sequence).
    (turn as f64 * 0.618_033_988_749_895).fract()
}

/// Picks the order of nodes for one request.
#[derive(Debug, Default)]
pub struct Selector {
    round_robin: RoundRobin,
    slow_start: Duration,
}

impl Selector {
    pub fn new(slow_start: Duration) -> Self {
        Self {
            round_robin: RoundRobin::new(),
            slow_start,
        }
    }

    /// The order in which one request tries `nodes`: the nodes in rotation (or all of
    /// them when panicking), starting at the next round-robin position; a warming node
    /// that sits out this turn goes to the end.
    pub fn order<'a>(&self, nodes: &'a [Arc<Node>]) -> Vec<&'a Arc<Node>> {
        let healthy = nodes.iter().filter(|n| n.is_healthy()).count();
        let panic = panicking(healthy, nodes.len());
        let candidates = if panic { nodes.len() } else { healthy };
        if candidates == 0 {
            return Vec::new();
        }
        let turn = self.round_robin.advance();
        let start = turn % candidates;
        let mut order = Vec::with_capacity(candidates);
        order.extend(
            nodes
                .iter()
                .filter(|n| panic || n.is_healthy())
                .cycle()
                .skip(start)
                .take(candidates),
        );
        let weight = order[0].weight(self.slow_start);
        if weight < 1.0 && turn_fraction(turn) >= weight {
            order.rotate_left(1);
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firsts(rr: &RoundRobin, set: &[char], n: usize) -> String {
        (0..n)
            .filter_map(|_| rr.order(set).first().copied())
            .collect()
    }

    #[test]
    fn requests_start_on_each_node_in_turn() {
        let rr = RoundRobin::new();
        assert_eq!(firsts(&rr, &['a', 'b', 'c'], 7), "abcabca");
    }

    #[test]
    fn every_candidate_is_tried_once_in_ring_order() {
        let rr = RoundRobin::new();
        let _ = rr.order(&['a', 'b', 'c']);
        assert_eq!(rr.order(&['a', 'b', 'c']), vec!['b', 'c', 'a']);
    }

    #[test]
    fn a_changing_set_is_still_covered_evenly() {
        let rr = RoundRobin::new();
        // A node goes down: the survivors share the load evenly.
        let picks = firsts(&rr, &['a', 'c'], 6);
        assert_eq!(picks.matches('a').count(), 3);
        assert_eq!(picks.matches('c').count(), 3);
        // It comes back, and a new one joins: every node gets its turn.
        let picks = firsts(&rr, &['a', 'b', 'c', 'd'], 8);
        for node in ['a', 'b', 'c', 'd'] {
            assert_eq!(picks.matches(node).count(), 2, "{picks}");
        }
    }

    #[test]
    fn an_empty_set_gives_nothing_to_try() {
        let rr = RoundRobin::new();
        assert!(rr.order::<char>(&[]).is_empty());
    }

    #[test]
    fn the_counter_wrapping_around_does_not_panic() {
        let rr = RoundRobin {
            next: AtomicUsize::new(usize::MAX),
        };
        assert_eq!(rr.order(&['a', 'b', 'c']).len(), 3);
        assert_eq!(rr.order(&['a', 'b', 'c']).len(), 3);
    }

    fn nodes(n: u16) -> Vec<Arc<Node>> {
        (1..=n)
            .map(|port| Arc::new(Node::new(([127, 0, 0, 1], port).into())))
            .collect()
    }

    fn first_ports(selector: &Selector, nodes: &[Arc<Node>], turns: usize) -> Vec<u16> {
        (0..turns)
            .map(|_| selector.order(nodes)[0].address.port())
            .collect()
    }

    #[test]
    fn nodes_out_of_rotation_are_tried_last_or_not_at_all() {
        let nodes = nodes(3);
        nodes[1].mark_down("refused");
        let selector = Selector::new(Duration::ZERO);
        let order = selector.order(&nodes);
        assert_eq!(order.len(), 2);
        assert_eq!(first_ports(&selector, &nodes, 4), [3, 1, 3, 1]);
    }

    #[test]
    fn when_more_than_half_look_unhealthy_every_node_is_in_rotation() {
        let nodes = nodes(3);
        let selector = Selector::new(Duration::ZERO);
        nodes[0].mark_down("store busy");
        assert_eq!(selector.order(&nodes).len(), 2, "one of three: no panic");
        nodes[1].mark_down("store busy");
        assert!(panicking(1, 3));
        assert_eq!(selector.order(&nodes).len(), 3, "two of three: panic");
        let mut firsts = first_ports(&selector, &nodes, 6);
        firsts.sort_unstable();
        assert_eq!(firsts, [1, 1, 2, 2, 3, 3], "round robin over all of them");
        assert!(!panicking(1, 2), "exactly half is not more than half");
    }

    #[tokio::test(start_paused = true)]
    async fn a_warming_node_takes_a_growing_share_of_its_turns() {
        let nodes = nodes(2);
        let slow_start = Duration::from_secs(10);
        let selector = Selector::new(slow_start);
        nodes[1].mark_down("restarting");
        nodes[1].mark_up();
        let share = |selector: &Selector| {
            let picks = first_ports(selector, &nodes, 1000);
            picks.iter().filter(|&&p| p == 2).count()
        };
        // Its turns are half of all; at first it takes a tenth of those.
        let early = share(&selector);
        assert!((40..=60).contains(&early), "{early}");
        tokio::time::advance(Duration::from_secs(5)).await;
        let middle = share(&selector);
        assert!((250..=300).contains(&middle), "{middle}");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(share(&selector), 500);
    }
}
