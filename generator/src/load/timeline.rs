//! A load run second by second: purchases sent, answers, tickets sold and errors per
//! second, and the p50 / p99 latency of the answers that arrived in each second, for the
//! report's `per_second` list, the live rate and the `--chart`.

use std::time::Duration;

use serde::Serialize;

use super::stats::Outcome;

/// One second of a run, as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecondPoint {
    /// Seconds since the run's first scheduled send: this point covers `[second, second+1)`.
    pub second: u64,
    /// Purchases scheduled to leave in this second that were sent.
    pub sent: u64,
    /// Purchases whose final answer (or error) arrived in this second.
    pub answered: u64,
    pub tickets_sold: u64,
    pub errors: u64,
    /// Latency percentiles of this second's answers, in milliseconds; 0 with no answers.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Default)]
struct Second {
    sent: u64,
    tickets_sold: u64,
    errors: u64,
    /// Latencies in microseconds, kept only until the second is sealed.
    latencies: Vec<u64>,
    answered: u64,
    /// `(p50, p99)` in milliseconds, once sealed.
    sealed: Option<(f64, f64)>,
}

impl Second {
    fn seal(&mut self) {
        if self.sealed.is_none() {
            self.sealed = Some(percentiles(&mut self.latencies));
            self.latencies = Vec::new();
        }
    }

    fn percentiles(&self) -> (f64, f64) {
        self.sealed
            .unwrap_or_else(|| percentiles(&mut self.latencies.clone()))
    }
}

/// The p50 and p99 (nearest rank) of `micros`, in milliseconds.
fn percentiles(micros: &mut [u64]) -> (f64, f64) {
    if micros.is_empty() {
        return (0.0, 0.0);
    }
    micros.sort_unstable();
    let rank = |q: f64| {
        let index = ((q * micros.len() as f64).ceil() as usize).clamp(1, micros.len()) - 1;
        micros[index] as f64 / 1_000.0
    };
    (rank(0.50), rank(0.99))
}

/// Answers arriving this many seconds after their second are still counted in it; older
/// seconds are sealed, keeping three numbers instead of every latency.
const OPEN_SECONDS: u64 = 2;

/// The per-second history of a run. Memory is a few numbers per second plus the
/// latencies of the last [`OPEN_SECONDS`] seconds.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    seconds: Vec<Second>,
}

impl Timeline {
    fn at(&mut self, second: u64) -> &mut Second {
        let index = usize::try_from(second).unwrap_or(usize::MAX);
        if index >= self.seconds.len() {
            // A second beyond memory's reach cannot occur in a run that fits in memory.
            self.seconds
                .resize_with(index.saturating_add(1), Second::default);
            let open_from = index.saturating_sub(OPEN_SECONDS as usize);
            for earlier in &mut self.seconds[..open_from] {
                earlier.seal();
            }
        }
        &mut self.seconds[index]
    }

    /// Counts a purchase sent in `second`.
    pub fn sent(&mut self, second: u64) {
        self.at(second).sent += 1;
    }

    /// Counts a purchase answered in `second` after `latency`.
    pub fn answered(&mut self, second: u64, latency: Duration, outcome: &Outcome) {
        let s = self.at(second);
        s.answered += 1;
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        match &mut s.sealed {
            // A straggler for a sealed second still counts, but its latency is not
            // folded into the percentiles already computed.
            Some(_) => {}
            None => s.latencies.push(micros),
        }
        match outcome {
            Outcome::Sold { tickets, .. } => s.tickets_sold += tickets,
            Outcome::Held { .. } | Outcome::Refused { .. } | Outcome::SoldOut { .. } => {}
            Outcome::Failed { .. } => s.errors += 1,
        }
    }

    /// Counts `tickets` sold in `second` by a later step (a confirmed hold).
    pub fn sold(&mut self, second: u64, tickets: u64) {
        self.at(second).tickets_sold += tickets;
    }

    /// Purchases sent in `second`, 0 if none or not yet reached.
    pub fn sent_in(&self, second: u64) -> u64 {
        usize::try_from(second)
            .ok()
            .and_then(|i| self.seconds.get(i))
            .map_or(0, |s| s.sent)
    }

    /// Every second from the first to the last one with anything in it.
    pub fn points(&self) -> Vec<SecondPoint> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (p50_ms, p99_ms) = s.percentiles();
                SecondPoint {
                    second: i as u64,
                    sent: s.sent,
                    answered: s.answered,
                    tickets_sold: s.tickets_sold,
                    errors: s.errors,
                    p50_ms,
                    p99_ms,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sold(tickets: u64) -> Outcome {
        Outcome::Sold {
            tickets,
            total_cents: 100,
        }
    }

    #[test]
    fn each_second_counts_its_sends_answers_and_latency_percentiles() {
        let mut t = Timeline::default();
        for ms in 1..=100 {
            t.sent(0);
            t.answered(0, Duration::from_millis(ms), &sold(1));
        }
        t.sent(2);
        t.answered(
            2,
            Duration::from_millis(7),
            &Outcome::Failed {
                kind: "timeout".into(),
            },
        );
        let points = t.points();
        assert_eq!(points.len(), 3, "the quiet second 1 is there too");
        assert_eq!((points[0].sent, points[0].answered), (100, 100));
        assert_eq!(points[0].tickets_sold, 100);
        assert_eq!((points[0].p50_ms, points[0].p99_ms), (50.0, 99.0));
        assert_eq!((points[1].answered, points[1].p99_ms), (0, 0.0));
        assert_eq!((points[2].errors, points[2].p50_ms), (1, 7.0));
        assert_eq!(t.sent_in(2), 1);
        assert_eq!(t.sent_in(9), 0);
    }

    #[test]
    fn old_seconds_are_sealed_and_keep_their_percentiles() {
        let mut t = Timeline::default();
        t.answered(0, Duration::from_millis(5), &sold(1));
        t.answered(10, Duration::from_millis(1), &sold(1));
        assert!(t.seconds[0].latencies.is_empty(), "second 0 was sealed");
        // A straggler is counted but leaves the sealed percentiles alone.
        t.answered(0, Duration::from_millis(900), &sold(2));
        let first = &t.points()[0];
        assert_eq!((first.answered, first.tickets_sold), (2, 3));
        assert_eq!((first.p50_ms, first.p99_ms), (5.0, 5.0));
    }
}
