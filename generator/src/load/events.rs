//! Which events a run still asks for, and how many tickets of each it may ask for at once:
//! an event that answered `sold_out` with nothing left is dropped, one with a few left is
//! capped at that few.

use rand::Rng;

/// One event still on sale, as far as the run knows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OpenEvent {
    name: String,
    /// The most tickets one purchase of this event may ask for.
    cap: u32,
}

/// The events of a run.
#[derive(Debug, Clone, Default)]
pub struct EventTable {
    open: Vec<OpenEvent>,
    /// Events that answered `sold_out` with `available: 0`, in that order.
    sold_out: Vec<String>,
    /// Events the target no longer knows (404 `unknown_event`).
    gone: Vec<String>,
}

impl EventTable {
    /// Starts from `(event, available)` pairs; events with nothing available are left out.
    pub fn new(events: impl IntoIterator<Item = (String, u64)>, max_quantity: u32) -> Self {
        let open = events
            .into_iter()
            .filter(|(_, available)| *available > 0)
            .map(|(name, available)| OpenEvent {
                name,
                cap: max_quantity.min(u32::try_from(available).unwrap_or(u32::MAX)),
            })
            .collect();
        Self {
            open,
            ..Self::default()
        }
    }

    /// A random open event and a random quantity from 1 to its cap.
    pub fn pick(&self, rng: &mut impl Rng) -> Option<(String, u32)> {
        if self.open.is_empty() {
            return None;
        }
        let event = &self.open[rng.random_range(0..self.open.len())];
        Some((event.name.clone(), rng.random_range(1..=event.cap.max(1))))
    }

    /// Records a `sold_out` answer that said `available` tickets were left.
    pub fn sold_out(&mut self, event: &str, available: u64) {
        let Some(index) = self.open.iter().position(|e| e.name == event) else {
            return;
        };
        if available == 0 {
            let closed = self.open.swap_remove(index);
            self.sold_out.push(closed.name);
        } else {
            let cap = &mut self.open[index].cap;
            *cap = (*cap).min(u32::try_from(available).unwrap_or(u32::MAX));
        }
    }

    /// Records that the target does not know `event`.
    pub fn unknown(&mut self, event: &str) {
        if let Some(index) = self.open.iter().position(|e| e.name == event) {
            let closed = self.open.swap_remove(index);
            self.gone.push(closed.name);
        }
    }

    /// Whether no event is left to ask for.
    pub fn is_exhausted(&self) -> bool {
        self.open.is_empty()
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    pub fn sold_out_events(&self) -> &[String] {
        &self.sold_out
    }

    pub fn unknown_events(&self) -> &[String] {
        &self.gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn table() -> EventTable {
        EventTable::new([("a".into(), 100), ("b".into(), 3), ("c".into(), 0)], 10)
    }

    #[test]
    fn events_without_tickets_are_not_asked_for_and_small_ones_are_capped() {
        let t = table();
        assert_eq!(t.open_count(), 2);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..500 {
            let (event, quantity) = t.pick(&mut rng).expect("two open events");
            assert_ne!(event, "c");
            let cap = if event == "b" { 3 } else { 10 };
            assert!((1..=cap).contains(&quantity), "{event} x {quantity}");
        }
    }

    #[test]
    fn sold_out_with_some_left_caps_and_with_none_left_drops_the_event() {
        let mut t = table();
        t.sold_out("a", 2);
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..200 {
            let (_, quantity) = t.pick(&mut rng).expect("open");
            assert!(quantity <= 3);
        }
        t.sold_out("a", 0);
        t.unknown("b");
        assert!(t.is_exhausted());
        assert!(t.pick(&mut rng).is_none());
        assert_eq!(t.sold_out_events(), ["a"]);
        assert_eq!(t.unknown_events(), ["b"]);
    }
}
