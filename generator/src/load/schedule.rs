//! When each request of an open-loop run leaves: offsets from the start of the run, fixed
//! in advance by the arrival process alone, never by how fast the answers come back.

use std::fmt;
use std::time::Duration;

use rand::Rng;
use serde::Serialize;

/// How the gaps between requests are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Every gap is exactly `1 / rate`.
    Steady,
    /// Exponential gaps with mean `1 / rate`: independent arrivals, like real customers.
    Poisson,
    /// No schedule (closed loop): each of the `--concurrency` clients sends its next
    /// purchase as soon as its last one is answered, as fast as the cluster answers;
    /// `--rate` is not used, and latency counts from the actual send.
    Closed,
}

/// The send times of a run, as offsets from its start. An endless iterator.
#[derive(Debug, Clone)]
pub struct Schedule<R> {
    arrivals: Arrivals,
    /// The mean gap in nanoseconds.
    mean_gap_nanos: f64,
    rng: R,
    /// How many offsets were handed out.
    count: u64,
    /// The Poisson process's running offset in nanoseconds.
    offset_nanos: f64,
}

impl fmt::Display for Arrivals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Steady => "steady",
            Self::Poisson => "poisson",
            Self::Closed => "closed",
        })
    }
}

impl<R: Rng> Schedule<R> {
    /// A schedule of `rate` requests per second on average; `rate` must be positive.
    pub fn new(arrivals: Arrivals, rate: f64, rng: R) -> Self {
        Self {
            arrivals,
            mean_gap_nanos: 1e9 / rate,
            rng,
            count: 0,
            offset_nanos: 0.0,
        }
    }
}

impl<R: Rng> Iterator for Schedule<R> {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let offset = match self.arrivals {
            // Whole nanoseconds per gap keep every steady gap exactly equal.
            Arrivals::Steady => {
                let gap = (self.mean_gap_nanos.round() as u64).max(1);
                Duration::from_nanos(gap.saturating_mul(self.count))
            }
            Arrivals::Poisson => {
                // The first request leaves at once; each later one after an exponential
                // gap, drawn by inverting the distribution (1 - u lies in (0, 1]).
                if self.count > 0 {
                    let u: f64 = self.rng.random();
                    self.offset_nanos += -(1.0 - u).ln() * self.mean_gap_nanos;
                }
                Duration::from_nanos(self.offset_nanos as u64)
            }
            // Every send is due at once; the concurrency cap paces them.
            Arrivals::Closed => Duration::ZERO,
        };
        self.count += 1;
        Some(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn gaps(arrivals: Arrivals, rate: f64, n: usize) -> Vec<Duration> {
        let offsets: Vec<Duration> = Schedule::new(arrivals, rate, StdRng::seed_from_u64(7))
            .take(n + 1)
            .collect();
        offsets.windows(2).map(|w| w[1] - w[0]).collect()
    }

    #[test]
    fn a_closed_loop_has_every_send_due_at_once() {
        for gap in gaps(Arrivals::Closed, 50.0, 100) {
            assert_eq!(gap, Duration::ZERO);
        }
    }

    #[test]
    fn steady_gaps_are_exactly_one_over_the_rate() {
        let first = Schedule::new(Arrivals::Steady, 50.0, StdRng::seed_from_u64(1)).next();
        assert_eq!(first, Some(Duration::ZERO));
        for gap in gaps(Arrivals::Steady, 50.0, 1_000) {
            assert_eq!(gap, Duration::from_millis(20));
        }
        for gap in gaps(Arrivals::Steady, 3.0, 100) {
            assert_eq!(gap, Duration::from_nanos(333_333_333));
        }
    }

    #[test]
    fn poisson_gaps_have_the_requested_mean() {
        let rate = 200.0;
        let drawn = gaps(Arrivals::Poisson, rate, 100_000);
        let mean = drawn.iter().map(Duration::as_secs_f64).sum::<f64>() / drawn.len() as f64;
        let expected = 1.0 / rate;
        assert!(
            (mean - expected).abs() < expected * 0.02,
            "mean gap {mean} far from {expected}"
        );
    }

    #[test]
    fn poisson_gaps_vary_and_never_go_backwards() {
        let drawn = gaps(Arrivals::Poisson, 100.0, 1_000);
        assert!(drawn.iter().any(|g| *g < Duration::from_millis(5)));
        assert!(drawn.iter().any(|g| *g > Duration::from_millis(20)));
        // The variance of an exponential equals its mean squared: the coefficient of
        // variation is about one, far from steady's zero.
        let mean = drawn.iter().map(Duration::as_secs_f64).sum::<f64>() / drawn.len() as f64;
        let var = drawn
            .iter()
            .map(|g| (g.as_secs_f64() - mean).powi(2))
            .sum::<f64>()
            / drawn.len() as f64;
        let cv = var.sqrt() / mean;
        assert!((0.85..1.15).contains(&cv), "coefficient of variation {cv}");
    }

    #[test]
    fn the_same_rng_seed_gives_the_same_schedule() {
        assert_eq!(
            gaps(Arrivals::Poisson, 10.0, 50),
            gaps(Arrivals::Poisson, 10.0, 50)
        );
    }
}
