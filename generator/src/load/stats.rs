//! What a run has counted so far: outcomes, errors by kind, answers per node, the latency
//! histogram (microseconds, measured from each buyer's scheduled send time to the answer
//! of its first write), and the latency of each kind of follow-up request (a confirm, a
//! release, a cancel, a seat pick).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::timeline::Timeline;

/// How a buyer's first write (a purchase or a hold) ended, after any retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 201: `tickets` tickets sold for `total_cents`.
    Sold { tickets: u64, total_cents: u64 },
    /// 201: `tickets` tickets held.
    Held { tickets: u64 },
    /// A box-office refusal in the normal course of business (`tickets_unavailable`,
    /// `customer_limit`, ...), by its code.
    Refused { code: String },
    /// 409 `sold_out`: fewer than asked were left.
    SoldOut { available: u64 },
    /// Anything else, named by the error code the target sent or by what went wrong.
    Failed { kind: String },
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// The running totals of a load run.
#[derive(Debug, Clone)]
pub struct Stats {
    pub sent: u64,
    pub completed: u64,
    pub purchases: u64,
    pub tickets_sold: u64,
    pub revenue_cents: u64,
    pub sold_out: u64,
    pub retries: u64,
    pub errors: BTreeMap<String, u64>,
    /// Every outcome of the box office by name: `purchased`, `held`, `confirmed`,
    /// `released`, `cancelled`, `abandoned`, `expired`, `sold_out`, `tickets_unavailable`,
    /// `customer_limit`, ...
    pub outcomes: BTreeMap<String, u64>,
    /// Answers per `X-Node` header value, retries included.
    pub nodes: BTreeMap<String, u64>,
    /// Microseconds from scheduled send to final answer, one per completed purchase.
    latency: Histogram<u64>,
    /// Microseconds from send to final answer of each follow-up request, by kind.
    steps: BTreeMap<String, Histogram<u64>>,
    /// The same run second by second.
    pub timeline: Timeline,
}

/// The longest latency the histogram tells apart: an hour, in microseconds.
const MAX_LATENCY_MICROS: u64 = 3_600_000_000;

/// An empty latency histogram.
fn histogram() -> Histogram<u64> {
    // Fixed, valid bounds: one microsecond to an hour at three significant digits.
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
        .expect("constant histogram bounds are valid")
}

fn micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The percentiles of `h` in milliseconds; all zero when it is empty.
fn summary(h: &Histogram<u64>) -> LatencySummary {
    let ms = |micros: u64| micros as f64 / 1_000.0;
    LatencySummary {
        count: h.len(),
        mean: if h.is_empty() {
            0.0
        } else {
            h.mean() / 1_000.0
        },
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Self {
            sent: 0,
            completed: 0,
            purchases: 0,
            tickets_sold: 0,
            revenue_cents: 0,
            sold_out: 0,
            retries: 0,
            errors: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            nodes: BTreeMap::new(),
            latency: histogram(),
            steps: BTreeMap::new(),
            timeline: Timeline::default(),
        }
    }

    /// Counts one buyer's first write, finished.
    pub fn record(&mut self, outcome: &Outcome, latency: Duration) {
        self.completed += 1;
        self.latency.saturating_record(micros(latency));
        match outcome {
            Outcome::Sold {
                tickets,
                total_cents,
            } => {
                self.sale(*tickets, *total_cents);
                self.outcome("purchased");
            }
            Outcome::Held { .. } => self.outcome("held"),
            Outcome::Refused { code } => self.outcome(code),
            Outcome::SoldOut { .. } => {
                self.sold_out += 1;
                self.outcome("sold_out");
            }
            Outcome::Failed { kind } => self.error(kind),
        }
    }

    /// Counts a purchase made: by a buyer's first write or by a confirmed hold.
    pub fn sale(&mut self, tickets: u64, total_cents: u64) {
        self.purchases += 1;
        self.tickets_sold += tickets;
        self.revenue_cents += total_cents;
    }

    /// Counts one outcome by name.
    pub fn outcome(&mut self, name: &str) {
        *self.outcomes.entry(name.to_owned()).or_default() += 1;
    }

    /// Records the latency of one follow-up request of kind `kind`.
    pub fn step(&mut self, kind: &str, latency: Duration) {
        self.steps
            .entry(kind.to_owned())
            .or_insert_with(histogram)
            .saturating_record(micros(latency));
    }

    /// The latency percentiles of each kind of follow-up request.
    pub fn step_latency(&self) -> BTreeMap<String, LatencySummary> {
        self.steps
            .iter()
            .map(|(kind, h)| (kind.clone(), summary(h)))
            .collect()
    }

    /// Counts an error that ended a purchase.
    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn answered_by(&mut self, node: &str) {
        *self.nodes.entry(node.to_owned()).or_default() += 1;
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The latency percentiles so far; all zero before the first answer.
    pub fn latency(&self) -> LatencySummary {
        summary(&self.latency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected * 0.01
    }

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let mut stats = Stats::new();
        for ms in 1..=1_000u64 {
            stats.record(
                &Outcome::SoldOut { available: 0 },
                Duration::from_millis(ms),
            );
        }
        let l = stats.latency();
        assert_eq!(l.count, 1_000);
        assert!(close(l.p50, 500.0), "p50 {}", l.p50);
        assert!(close(l.p90, 900.0), "p90 {}", l.p90);
        assert!(close(l.p99, 990.0), "p99 {}", l.p99);
        assert!(close(l.max, 1_000.0), "max {}", l.max);
        assert!(close(l.mean, 500.5), "mean {}", l.mean);
    }

    #[test]
    fn an_empty_run_has_zero_latencies() {
        let l = Stats::new().latency();
        assert_eq!((l.count, l.p99, l.max, l.mean), (0, 0.0, 0.0, 0.0));
    }

    #[test]
    fn outcomes_are_counted_by_kind() {
        let mut stats = Stats::new();
        let ms = Duration::from_millis(1);
        stats.record(
            &Outcome::Sold {
                tickets: 3,
                total_cents: 900,
            },
            ms,
        );
        stats.record(&Outcome::SoldOut { available: 1 }, ms);
        for kind in ["timeout", "timeout", "store_unavailable"] {
            stats.record(&Outcome::Failed { kind: kind.into() }, ms);
        }
        stats.answered_by("n1");
        stats.answered_by("n1");
        stats.answered_by("n2");
        assert_eq!(
            (stats.completed, stats.purchases, stats.tickets_sold),
            (5, 1, 3)
        );
        assert_eq!((stats.revenue_cents, stats.sold_out), (900, 1));
        assert_eq!(stats.errors.get("timeout"), Some(&2));
        assert_eq!(stats.errors_total(), 3);
        assert_eq!(stats.nodes.get("n1"), Some(&2));
        assert_eq!(stats.outcomes.get("purchased"), Some(&1));
        assert_eq!(stats.outcomes.get("sold_out"), Some(&1));
    }

    #[test]
    fn holds_refusals_confirms_and_steps_are_counted_apart() {
        let mut stats = Stats::new();
        let ms = Duration::from_millis(2);
        stats.record(&Outcome::Held { tickets: 2 }, ms);
        stats.record(
            &Outcome::Refused {
                code: "customer_limit".into(),
            },
            ms,
        );
        assert_eq!((stats.purchases, stats.errors_total()), (0, 0));
        // The hold is confirmed: a sale, counted apart from the first write.
        stats.sale(2, 500);
        stats.outcome("confirmed");
        stats.step("confirm", Duration::from_millis(4));
        stats.step("confirm", Duration::from_millis(6));
        assert_eq!((stats.completed, stats.purchases), (2, 1));
        assert_eq!((stats.tickets_sold, stats.revenue_cents), (2, 500));
        for (name, count) in [("held", 1), ("customer_limit", 1), ("confirmed", 1)] {
            assert_eq!(stats.outcomes.get(name), Some(&count), "{name}");
        }
        let steps = stats.step_latency();
        assert_eq!(steps["confirm"].count, 2);
        assert!(steps["confirm"].max >= 5.9, "{:?}", steps["confirm"]);
    }

    #[test]
    fn latencies_beyond_an_hour_saturate_instead_of_failing() {
        let mut stats = Stats::new();
        stats.record(
            &Outcome::Failed {
                kind: "timeout".into(),
            },
            Duration::from_secs(10_000),
        );
        assert_eq!(stats.latency().count, 1);
    }
}
