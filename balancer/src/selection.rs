//! Round-robin selection over the current healthy set: one shared counter, advanced by
//! `fetch_add(1, Relaxed)` per request, picks where a request starts; the rest of the set
//! follows in order as the nodes to retry on.

use std::sync::atomic::{AtomicUsize, Ordering};

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
        // Relaxed is enough: the counter orders nothing else, it only spreads load.
        let start = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        candidates[start..]
            .iter()
            .chain(&candidates[..start])
            .cloned()
            .collect()
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
}
