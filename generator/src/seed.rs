//! `generator seed`: the original ticket generator. Writes a fresh random inventory into a
//! data directory or a PostgreSQL database through `store::TicketStore`; the same seed
//! always gives the same one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use rand::distr::weighted::WeightedIndex;
use rand::prelude::*;
use rand::rngs::StdRng;
use shared::domain::ORIGINAL_EVENTS;
use shared::inventory::InconsistencyError;
use shared::{EventName, Inventory, Ticket, ValidationError};
use store::{PgOptions, StoreError, TicketStore};
use thiserror::Error;

/// The most tickets one store may hold: the store is one JSON file read on every request.
pub const MAX_TICKETS: u64 = 5_000_000;
/// Cheapest and dearest ticket, in cents.
pub const PRICE_RANGE_CENTS: (u64, u64) = (1_000, 50_000);
/// How long seeding waits for the store lock if a node is reading the same directory.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Words the extra events' names are made of, so they read like events.
const GENRES: [&str; 16] = [
    "jazz", "rock", "opera", "comedy", "ballet", "indie", "folk", "techno", "blues", "poetry",
    "magic", "circus", "choir", "hip-hop", "cinema", "dance",
];
const KINDS: [&str; 12] = [
    "night", "festival", "matinee", "gala", "showcase", "tour", "session", "marathon", "premiere",
    "live", "weekend", "revival",
];

/// Where the store is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedTarget {
    /// A data directory (created if missing).
    Files(PathBuf),
    /// A PostgreSQL database's URL (the tables are created if missing).
    Database(String),
}

impl SeedTarget {
    /// A handle on the store there.
    pub fn open(&self) -> Result<TicketStore, StoreError> {
        match self {
            Self::Files(dir) => Ok(TicketStore::new(dir, LOCK_TIMEOUT)),
            Self::Database(url) => TicketStore::postgres(url, PgOptions::new(LOCK_TIMEOUT)),
        }
    }
}

/// What to seed.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    /// Where the store is written.
    pub store: SeedTarget,
    /// How many events, at least the four original ones.
    pub events: usize,
    /// How many tickets, with ids `1..=tickets`; at least one per event.
    pub tickets: u64,
    /// The random seed; `None` picks one, reported in the summary so the run can be repeated.
    pub seed: Option<u64>,
    /// Replace an existing store.
    pub force: bool,
    /// Every event's limit of tickets per customer (live purchases and holds); `None` for
    /// no limit.
    pub max_per_customer: Option<u32>,
}

/// Why nothing was seeded.
#[derive(Debug, Error)]
pub enum SeedError {
    #[error(
        "--events must be at least {} (the original events: {}), got {got}",
        ORIGINAL_EVENTS.len(),
        ORIGINAL_EVENTS.join(", "),
        got = .0
    )]
    TooFewEvents(usize),
    #[error(
        "--tickets must be at least --events ({events}) so every event has a ticket, got {tickets}"
    )]
    TooFewTickets { tickets: u64, events: usize },
    #[error("--tickets must be at most {MAX_TICKETS}, got {0}")]
    TooManyTickets(u64),
    #[error("--max-per-customer must be at least 1, got 0")]
    ZeroLimit,
    #[error("generated an inconsistent inventory (a bug): {0}")]
    Inconsistent(#[from] InconsistencyError),
    #[error("generated an invalid event name (a bug): {0}")]
    InvalidName(#[from] ValidationError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One event of the seeded inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeededEvent {
    pub event: String,
    pub tickets: u64,
    pub min_price_cents: u64,
    pub max_price_cents: u64,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct SeedSummary {
    /// The data directory, or host:port/database.
    pub location: String,
    pub seed: u64,
    /// Whether `seed` was picked here rather than given.
    pub seed_was_picked: bool,
    pub tickets: u64,
    /// Sorted by event name.
    pub events: Vec<SeededEvent>,
    /// Every event's per-customer limit, if any.
    pub max_per_customer: Option<u32>,
}

impl fmt::Display for SeedSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "wrote {} tickets over {} events to {} (seed {})",
            self.tickets,
            self.events.len(),
            self.location,
            self.seed
        )?;
        for e in &self.events {
            writeln!(
                f,
                "  {:<24} {:>8} tickets  {} to {}",
                e.event,
                e.tickets,
                dollars(e.min_price_cents),
                dollars(e.max_price_cents)
            )?;
        }
        if let Some(limit) = self.max_per_customer {
            writeln!(f, "each customer may hold or buy {limit} tickets per event")?;
        }
        if self.seed_was_picked {
            writeln!(f, "repeat this inventory with --seed {}", self.seed)?;
        }
        Ok(())
    }
}

fn dollars(cents: u64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

/// Checks the options, generates the inventory and writes it as a fresh store.
pub fn seed(options: &SeedOptions) -> Result<SeedSummary, SeedError> {
    validate(options.events, options.tickets)?;
    if options.max_per_customer == Some(0) {
        return Err(SeedError::ZeroLimit);
    }
    let (seed, seed_was_picked) = match options.seed {
        Some(seed) => (seed, false),
        None => (rand::rng().random(), true),
    };
    let tickets = generate(options.events, options.tickets, seed)?;
    let events = summarise(&tickets);
    let mut inventory = Inventory::from_tickets(tickets)?;
    for event in &events {
        let name = EventName::parse(&event.event)?;
        inventory.set_max_per_customer(&name, options.max_per_customer);
    }
    let store = options.store.open()?;
    store.create(&inventory, options.force)?;
    Ok(SeedSummary {
        location: store.location(),
        seed,
        seed_was_picked,
        tickets: options.tickets,
        events,
        max_per_customer: options.max_per_customer,
    })
}

fn validate(events: usize, tickets: u64) -> Result<(), SeedError> {
    if events < ORIGINAL_EVENTS.len() {
        return Err(SeedError::TooFewEvents(events));
    }
    if tickets > MAX_TICKETS {
        return Err(SeedError::TooManyTickets(tickets));
    }
    if tickets < events as u64 {
        return Err(SeedError::TooFewTickets { tickets, events });
    }
    Ok(())
}

/// The seeded tickets, ids `1..=tickets`, all unsold. Deterministic in `seed`.
pub fn generate(events: usize, tickets: u64, seed: u64) -> Result<Vec<Ticket>, SeedError> {
    validate(events, tickets)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let names = event_names(events, &mut rng)?;
    // Each event has a popularity (its share of the tickets) and a price level.
    let weights: Vec<u32> = names.iter().map(|_| rng.random_range(1..=10)).collect();
    let levels: Vec<u64> = names
        .iter()
        .map(|_| rng.random_range(2_000..=15_000))
        .collect();
    let pick = WeightedIndex::new(&weights).map_err(|_| SeedError::TooFewEvents(events))?;
    // Every event gets one ticket first; the rest follow popularity. Shuffling spreads
    // each event's tickets over the id range, as the original generator did.
    let mut owners: Vec<usize> = (0..names.len()).collect();
    owners.extend((names.len() as u64..tickets).map(|_| pick.sample(&mut rng)));
    owners.shuffle(&mut rng);
    Ok(owners
        .into_iter()
        .zip(1..)
        .map(|(owner, id)| Ticket {
            id,
            event: names[owner].clone(),
            price_cents: price(levels[owner], &mut rng),
            sold: false,
        })
        .collect())
}

/// A price around the event's level, rounded to 50 cents, within [`PRICE_RANGE_CENTS`].
fn price(level: u64, rng: &mut StdRng) -> u64 {
    let factor: f64 = rng.random_range(0.5..2.0);
    let cents = (level as f64 * factor / 50.0).round() as u64 * 50;
    cents.clamp(PRICE_RANGE_CENTS.0, PRICE_RANGE_CENTS.1)
}

/// The four original events followed by `count - 4` distinct made-up ones.
fn event_names(count: usize, rng: &mut StdRng) -> Result<Vec<EventName>, ValidationError> {
    let mut names: Vec<String> = ORIGINAL_EVENTS.iter().map(|s| s.to_string()).collect();
    while names.len() < count {
        let genre = GENRES[rng.random_range(0..GENRES.len())];
        let kind = KINDS[rng.random_range(0..KINDS.len())];
        let mut name = format!("{genre}-{kind}");
        // Once the word pairs run out, a number keeps names distinct.
        let mut n = 2;
        while names.contains(&name) {
            name = format!("{genre}-{kind}-{n}");
            n += 1;
        }
        names.push(name);
    }
    names.iter().map(|n| EventName::parse(n)).collect()
}

fn summarise(tickets: &[Ticket]) -> Vec<SeededEvent> {
    let mut by_event: BTreeMap<&str, SeededEvent> = BTreeMap::new();
    for t in tickets {
        let e = by_event
            .entry(t.event.as_str())
            .or_insert_with(|| SeededEvent {
                event: t.event.to_string(),
                tickets: 0,
                min_price_cents: t.price_cents,
                max_price_cents: t.price_cents,
            });
        e.tickets += 1;
        e.min_price_cents = e.min_price_cents.min(t.price_cents);
        e.max_price_cents = e.max_price_cents.max(t.price_cents);
    }
    by_event.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn generated(events: usize, tickets: u64, seed: u64) -> Vec<Ticket> {
        generate(events, tickets, seed).expect("valid sizes")
    }

    #[test]
    fn the_same_seed_gives_identical_tickets() {
        assert_eq!(generated(12, 500, 42), generated(12, 500, 42));
    }

    #[test]
    fn a_different_seed_gives_different_tickets() {
        assert_ne!(generated(12, 500, 42), generated(12, 500, 43));
    }

    #[test]
    fn ids_run_from_one_to_the_ticket_count_unsold() {
        let tickets = generated(6, 300, 7);
        let ids: Vec<u64> = tickets.iter().map(|t| t.id).collect();
        assert_eq!(ids, (1..=300).collect::<Vec<_>>());
        assert!(tickets.iter().all(|t| !t.sold));
    }

    #[test]
    fn the_four_original_events_are_always_included() {
        for seed in 0..20 {
            let tickets = generated(4 + seed as usize, 200, seed);
            let names: HashSet<&str> = tickets.iter().map(|t| t.event.as_str()).collect();
            for original in ORIGINAL_EVENTS {
                assert!(names.contains(original), "seed {seed} lacks {original}");
            }
        }
    }

    #[test]
    fn every_event_gets_at_least_one_ticket() {
        // As many events as tickets: each must get exactly one.
        let tickets = generated(150, 150, 3);
        let names: HashSet<&str> = tickets.iter().map(|t| t.event.as_str()).collect();
        assert_eq!(names.len(), 150);
        let summary = summarise(&generated(30, 1_000, 9));
        assert_eq!(summary.len(), 30);
        assert!(summary.iter().all(|e| e.tickets >= 1));
    }

    #[test]
    fn extra_event_names_are_valid_and_distinct() {
        let mut rng = StdRng::seed_from_u64(1);
        let names = event_names(500, &mut rng).expect("valid names");
        assert_eq!(names.len(), 500);
        let distinct: HashSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), 500);
    }

    #[test]
    fn prices_are_whole_cents_within_the_range() {
        for t in generated(10, 2_000, 5) {
            assert!((PRICE_RANGE_CENTS.0..=PRICE_RANGE_CENTS.1).contains(&t.price_cents));
            assert_eq!(t.price_cents % 50, 0);
        }
    }

    #[test]
    fn too_few_events_or_tickets_are_refused() {
        assert!(matches!(
            generate(3, 100, 1),
            Err(SeedError::TooFewEvents(3))
        ));
        assert!(matches!(
            generate(8, 7, 1),
            Err(SeedError::TooFewTickets {
                tickets: 7,
                events: 8
            })
        ));
        assert!(matches!(
            generate(4, MAX_TICKETS + 1, 1),
            Err(SeedError::TooManyTickets(_))
        ));
    }

    /// The options that seed 50 tickets over 5 events with seed 11 into a `data` store
    /// under `dir`.
    fn fifty_tickets_in(dir: &std::path::Path, max_per_customer: Option<u32>) -> SeedOptions {
        SeedOptions {
            store: SeedTarget::Files(dir.join("data")),
            events: 5,
            tickets: 50,
            seed: Some(11),
            force: false,
            max_per_customer,
        }
    }

    #[test]
    fn seeding_writes_a_store_and_refuses_to_overwrite_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = fifty_tickets_in(dir.path(), None);
        let summary = seed(&options).expect("fresh directory");
        assert_eq!(summary.tickets, 50);
        assert_eq!(summary.events.iter().map(|e| e.tickets).sum::<u64>(), 50);
        let err = seed(&options).expect_err("store exists");
        assert!(matches!(
            err,
            SeedError::Store(StoreError::AlreadyExists(_))
        ));
        options.force = true;
        seed(&options).expect("force replaces it");
        let stored = options
            .store
            .open()
            .expect("a directory")
            .read(|inv| inv.tickets().to_vec())
            .expect("readable");
        assert_eq!(stored, generated(5, 50, 11));
    }

    #[test]
    fn a_per_customer_limit_is_stored_for_every_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = fifty_tickets_in(dir.path(), Some(4));
        let summary = seed(&options).expect("fresh directory");
        assert!(
            summary.to_string().contains("4 tickets per event"),
            "{summary}"
        );
        let limits = options
            .store
            .open()
            .expect("a directory")
            .read(|inv| {
                inv.events()
                    .iter()
                    .map(|e| e.max_per_customer)
                    .collect::<Vec<_>>()
            })
            .expect("readable");
        assert_eq!(limits, vec![Some(4); 5]);
        options.max_per_customer = Some(0);
        options.force = true;
        assert!(matches!(seed(&options), Err(SeedError::ZeroLimit)));
    }
}
