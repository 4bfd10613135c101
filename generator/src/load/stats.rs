//! What a run has counted so far: outcomes, errors by kind, answers per node, and the
//! latency histogram (microseconds, measured from each request's scheduled send time).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::timeline::Timeline;

/// How one purchase ended, after any retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 201: `tickets` tickets sold for `total_cents`.
    Sold { tickets: u64, total_cents: u64 },
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
    /// Answers per `X-Node` header value, retries included.
    pub nodes: BTreeMap<String, u64>,
    /// Microseconds from scheduled send to final answer, one per completed purchase.
    latency: Histogram<u64>,
    /// The same run second by second.
    pub timeline: Timeline,
}

/// The longest latency the histogram tells apart: an hour, in microseconds.
const MAX_LATENCY_MICROS: u64 = 3_600_000_000;

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        // Fixed, valid bounds: one microsecond to an hour at three significant digits.
        let latency = Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
            .expect("constant histogram bounds are valid");
        Self {
            sent: 0,
            completed: 0,
            purchases: 0,
            tickets_sold: 0,
            revenue_cents: 0,
            sold_out: 0,
            retries: 0,
            errors: BTreeMap::new(),
            nodes: BTreeMap::new(),
            latency,
            timeline: Timeline::default(),
        }
    }

    /// Counts one finished purchase.
    pub fn record(&mut self, outcome: &Outcome, latency: Duration) {
        self.completed += 1;
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(micros.max(1));
        match outcome {
            Outcome::Sold {
                tickets,
                total_cents,
            } => {
                self.purchases += 1;
                self.tickets_sold += tickets;
                self.revenue_cents += total_cents;
            }
            Outcome::SoldOut { .. } => self.sold_out += 1,
            Outcome::Failed { kind } => self.error(kind),
        }
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
        let h = &self.latency;
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
