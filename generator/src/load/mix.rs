//! The box-office mix of a load run: what share of buyers pick their seats, hold then
//! confirm, hold and walk away, hold then release, or cancel after buying. Every share is
//! a fraction from 0 to 1, all 0 by default: then every buyer is the original system's,
//! buying a count of tickets and keeping them.

use std::time::Duration;

use rand::Rng;
use thiserror::Error;

/// What one buyer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plan {
    /// Buys and keeps the tickets.
    Buy,
    /// Holds, then confirms the hold into a purchase.
    HoldConfirm,
    /// Holds and walks away: the hold is left to expire.
    HoldAbandon,
    /// Holds, then releases the hold.
    HoldRelease,
    /// Buys, then cancels the purchase.
    BuyCancel,
}

/// The shortest and longest hold the contract accepts (`ttl_seconds`).
pub const TTL_RANGE: std::ops::RangeInclusive<u64> = 10..=3600;

/// The shares of a run, as given by the flags.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Mix {
    /// Buyers who name their seats (picked from the unsold tickets) instead of a count,
    /// whatever they do next.
    pub seats: f64,
    pub hold_confirm: f64,
    pub hold_abandon: f64,
    pub hold_release: f64,
    pub cancel: f64,
    /// `ttl_seconds` of every hold; `None` leaves the node's default (600 s).
    pub hold_ttl: Option<Duration>,
    /// Buyers are drawn from this many customers (`c00000` ...); 0 sends no customer.
    pub customers: u32,
}

/// A mix the flags cannot mean.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum MixError {
    #[error("--{flag} must be a fraction from 0 to 1, got {value}")]
    Share { flag: &'static str, value: f64 },
    #[error(
        "--hold-confirm-share, --hold-abandon-share, --hold-release-share and --cancel-share \
         add up to {0}, more than 1"
    )]
    Total(f64),
    #[error("--hold-ttl must be from 10 s to 3600 s in whole seconds, got {0:?}")]
    Ttl(Duration),
}

impl Mix {
    pub fn validate(&self) -> Result<(), MixError> {
        let shares = [
            ("seats-share", self.seats),
            ("hold-confirm-share", self.hold_confirm),
            ("hold-abandon-share", self.hold_abandon),
            ("hold-release-share", self.hold_release),
            ("cancel-share", self.cancel),
        ];
        for (flag, value) in shares {
            if !(value.is_finite() && (0.0..=1.0).contains(&value)) {
                return Err(MixError::Share { flag, value });
            }
        }
        let total = self.hold_confirm + self.hold_abandon + self.hold_release + self.cancel;
        // A little slack, so 0.7 + 0.2 + 0.1 is not refused for its rounding.
        if total > 1.0 + 1e-9 {
            return Err(MixError::Total(total));
        }
        if let Some(ttl) = self.hold_ttl
            && (ttl.subsec_nanos() != 0 || !TTL_RANGE.contains(&ttl.as_secs()))
        {
            return Err(MixError::Ttl(ttl));
        }
        Ok(())
    }

    /// Whether any buyer does more than buy a count of tickets.
    pub fn is_box_office(&self) -> bool {
        self.seats > 0.0
            || self.hold_confirm > 0.0
            || self.hold_abandon > 0.0
            || self.hold_release > 0.0
            || self.cancel > 0.0
            || self.customers > 0
    }

    /// The hold time to live to send, in seconds.
    pub fn ttl_seconds(&self) -> Option<u64> {
        self.hold_ttl.map(|ttl| ttl.as_secs())
    }

    /// Draws what the next buyer does and whether it picks seats. With every share 0 this
    /// draws nothing from `rng`, so a seeded run of the original mix repeats exactly.
    pub fn draw(&self, rng: &mut impl Rng) -> (Plan, bool) {
        let plan = if self.hold_confirm + self.hold_abandon + self.hold_release + self.cancel > 0.0
        {
            let x: f64 = rng.random();
            let mut edge = 0.0;
            let mut chosen = Plan::Buy;
            for (plan, share) in [
                (Plan::HoldConfirm, self.hold_confirm),
                (Plan::HoldAbandon, self.hold_abandon),
                (Plan::HoldRelease, self.hold_release),
                (Plan::BuyCancel, self.cancel),
            ] {
                edge += share;
                if x < edge {
                    chosen = plan;
                    break;
                }
            }
            chosen
        } else {
            Plan::Buy
        };
        let seats = self.seats > 0.0 && rng.random::<f64>() < self.seats;
        (plan, seats)
    }

    /// The customer of the next buyer, if the run sends customers.
    pub fn customer(&self, rng: &mut impl Rng) -> Option<String> {
        (self.customers > 0).then(|| format!("c{:05}", rng.random_range(0..self.customers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::HashMap;

    #[test]
    fn the_default_mix_buys_only_and_draws_nothing() {
        let mix = Mix::default();
        assert!(mix.validate().is_ok());
        assert!(!mix.is_box_office());
        let mut rng = StdRng::seed_from_u64(3);
        let mut untouched = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            assert_eq!(mix.draw(&mut rng), (Plan::Buy, false));
            assert_eq!(mix.customer(&mut rng), None);
        }
        assert_eq!(rng.random::<u64>(), untouched.random::<u64>());
    }

    #[test]
    fn plans_are_drawn_in_their_shares() {
        let mix = Mix {
            seats: 0.5,
            hold_confirm: 0.4,
            hold_abandon: 0.2,
            hold_release: 0.1,
            cancel: 0.1,
            ..Mix::default()
        };
        assert!(mix.validate().is_ok());
        let mut rng = StdRng::seed_from_u64(11);
        let mut counts: HashMap<Plan, u32> = HashMap::new();
        let mut seats = 0;
        let n = 20_000;
        for _ in 0..n {
            let (plan, picks) = mix.draw(&mut rng);
            *counts.entry(plan).or_default() += 1;
            seats += u32::from(picks);
        }
        let share = |count: u32| f64::from(count) / f64::from(n);
        for (plan, expected) in [
            (Plan::HoldConfirm, 0.4),
            (Plan::HoldAbandon, 0.2),
            (Plan::HoldRelease, 0.1),
            (Plan::BuyCancel, 0.1),
            (Plan::Buy, 0.2),
        ] {
            let got = share(counts.get(&plan).copied().unwrap_or(0));
            assert!((got - expected).abs() < 0.02, "{plan:?}: {got}");
        }
        assert!((share(seats) - 0.5).abs() < 0.02, "seats: {}", share(seats));
    }

    #[test]
    fn shares_out_of_range_or_adding_past_one_and_bad_ttls_are_refused() {
        let bad = Mix {
            cancel: 1.5,
            ..Mix::default()
        };
        assert_eq!(
            bad.validate(),
            Err(MixError::Share {
                flag: "cancel-share",
                value: 1.5
            })
        );
        let nan = Mix {
            seats: f64::NAN,
            ..Mix::default()
        };
        assert!(matches!(
            nan.validate(),
            Err(MixError::Share {
                flag: "seats-share",
                ..
            })
        ));
        let over = Mix {
            hold_confirm: 0.6,
            cancel: 0.5,
            ..Mix::default()
        };
        assert!(matches!(over.validate(), Err(MixError::Total(_))));
        let exact = Mix {
            hold_confirm: 0.7,
            hold_abandon: 0.2,
            cancel: 0.1,
            ..Mix::default()
        };
        assert_eq!(exact.validate(), Ok(()));
        for ttl in [
            Duration::from_secs(9),
            Duration::from_secs(3601),
            Duration::from_millis(10_500),
        ] {
            let mix = Mix {
                hold_ttl: Some(ttl),
                ..Mix::default()
            };
            assert_eq!(mix.validate(), Err(MixError::Ttl(ttl)));
        }
        let ok = Mix {
            hold_ttl: Some(Duration::from_secs(10)),
            ..Mix::default()
        };
        assert_eq!(ok.ttl_seconds(), Some(10));
    }

    #[test]
    fn customers_come_from_a_pool_of_the_size_asked() {
        let mix = Mix {
            customers: 3,
            ..Mix::default()
        };
        assert!(mix.is_box_office());
        let mut rng = StdRng::seed_from_u64(5);
        let mut seen: Vec<String> = (0..200).filter_map(|_| mix.customer(&mut rng)).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, ["c00000", "c00001", "c00002"]);
    }
}
