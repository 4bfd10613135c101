//! `generator load`: the original system's request stream, open loop. Purchases leave on
//! a schedule fixed in advance ([`schedule`]), whatever the answers do; each one's latency
//! is measured from its scheduled send time, so a slow or saturated cluster shows up as
//! latency rather than as a politely lower rate (as wrk2 does). Each send is a buyer of
//! the box-office [`mix`]: by default every buyer buys a count of tickets and keeps them;
//! with shares set, some pick seats, hold then confirm, hold and walk away, hold then
//! release, or cancel ([`buyer`]).

pub mod buyer;
pub mod chart;
pub mod events;
pub mod mix;
pub mod progress;
pub mod purchase;
pub mod report;
pub mod schedule;
pub mod stats;
pub mod timeline;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::prelude::*;
use rand::rngs::StdRng;
use shared::domain::MAX_QUANTITY;
use thiserror::Error;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::client::{ApiClient, ClientError, Target};
use crate::wire::Event;
use buyer::{Buyer, Journey};
pub use events::EventTable;
pub use mix::{Mix, MixError, Plan};
pub use progress::ProgressMode;
pub use report::{LoadReport, StopReason};
pub use schedule::{Arrivals, Schedule};
use stats::Stats;

/// The highest rate accepted: one request per microsecond.
pub const MAX_RATE: f64 = 1_000_000.0;

/// When a run stops sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopWhen {
    /// After this long.
    After(Duration),
    /// When every event has sold out.
    SoldOut,
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub target: Target,
    /// Mean purchases per second.
    pub rate: f64,
    pub stop: StopWhen,
    pub arrivals: Arrivals,
    /// Most purchases in flight at once; a full cap delays sends (shown as latency).
    pub concurrency: usize,
    /// Time limit of each HTTP request.
    pub request_timeout: Duration,
    /// Repeats of a purchase whose outcome is unknown, with the same Idempotency-Key.
    pub retries: u32,
    /// Quantities are drawn from `1..=max_quantity`.
    pub max_quantity: u32,
    /// Seed of the request stream; `None` picks one (reported).
    pub seed: Option<u64>,
    pub progress: ProgressMode,
    /// What the buyers do besides buying a count of tickets.
    pub mix: Mix,
}

/// Why a run could not start or finish.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("--rate must be a number above 0 and at most {MAX_RATE}, got {0}")]
    Rate(f64),
    #[error("--duration must be longer than zero")]
    ZeroDuration,
    #[error("--concurrency must be at least 1")]
    Concurrency,
    #[error("--max-quantity must be from 1 to {MAX_QUANTITY}, got {0}")]
    MaxQuantity(u32),
    #[error("cannot read the events from the target")]
    Events(#[source] ClientError),
    #[error("the target has no tickets for sale (every event is sold out)")]
    NothingForSale,
    #[error("cannot write the report to {path}: {reason}")]
    Report { path: PathBuf, reason: String },
    #[error(transparent)]
    Chart(#[from] chart::ChartError),
    #[error(transparent)]
    Mix(#[from] MixError),
    #[error(
        "event {0} has a per-customer limit, so every purchase and hold must name a \
         customer: give --customers N"
    )]
    CustomersNeeded(String),
}

impl LoadOptions {
    fn validate(&self) -> Result<(), LoadError> {
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= MAX_RATE) {
            return Err(LoadError::Rate(self.rate));
        }
        if self.stop == StopWhen::After(Duration::ZERO) {
            return Err(LoadError::ZeroDuration);
        }
        if self.concurrency == 0 {
            return Err(LoadError::Concurrency);
        }
        if !(1..=MAX_QUANTITY).contains(&self.max_quantity) {
            return Err(LoadError::MaxQuantity(self.max_quantity));
        }
        self.mix.validate()?;
        Ok(())
    }
}

/// What the purchase tasks share with the scheduler.
struct Run {
    client: ApiClient,
    stats: Arc<Mutex<Stats>>,
    events: Mutex<EventTable>,
    /// Signalled when the last open event sells out.
    exhausted: Notify,
    retries: u32,
}

/// Locks a mutex even if a task panicked while holding it: the counters stay usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs the load until its stop condition.
pub async fn run(options: LoadOptions) -> Result<LoadReport, LoadError> {
    run_until(options, std::future::pending()).await
}

/// Runs the load until its stop condition or until `interrupt` completes.
pub async fn run_until(
    options: LoadOptions,
    interrupt: impl Future<Output = ()>,
) -> Result<LoadReport, LoadError> {
    options.validate()?;
    let client = ApiClient::new(
        options.target.clone(),
        options.request_timeout,
        options.concurrency,
    );
    let listed: Vec<Event> = client
        .get_json("/events")
        .await
        .map_err(LoadError::Events)?;
    if options.mix.customers == 0
        && let Some(limited) = listed.iter().find(|e| e.max_per_customer.is_some())
    {
        return Err(LoadError::CustomersNeeded(limited.event.clone()));
    }
    // Seed inventories number their tickets from 1: seat picks start at a random id below
    // this, so buyers spread over the hall instead of all reaching for the first seats.
    let tickets_total: u64 = listed.iter().map(|e| e.total).sum();
    let table = EventTable::new(
        listed.into_iter().map(|e| (e.event, e.available)),
        options.max_quantity,
    );
    if table.is_exhausted() && options.stop != StopWhen::SoldOut {
        return Err(LoadError::NothingForSale);
    }
    info!(events = table.open_count(), target = %options.target, "events on sale");
    let seed = options.seed.unwrap_or_else(|| rand::rng().random());
    let run = Arc::new(Run {
        client,
        stats: Arc::new(Mutex::new(Stats::new())),
        events: Mutex::new(table),
        exhausted: Notify::new(),
        retries: options.retries,
    });
    let mut rng = StdRng::seed_from_u64(seed);
    let mut schedule = Schedule::new(
        options.arrivals,
        options.rate,
        StdRng::seed_from_u64(rng.random()),
    );
    // Keys must be unique across runs too: a repeat of a key replays its first outcome.
    let run_id: u64 = rand::rng().random();
    let slots = Arc::new(Semaphore::new(options.concurrency));
    let start = Instant::now();
    let planned = match options.stop {
        StopWhen::After(d) => Some(d),
        StopWhen::SoldOut => None,
    };
    let deadline = planned.map(|d| start + d);
    let progress = progress::Progress::start(options.progress, run.stats.clone(), start, planned);
    // The purchases in flight; `abandon` stops those still unanswered after the drain.
    let tasks = TaskTracker::new();
    let abandon = CancellationToken::new();
    let mut behind_schedule = 0;
    let mut seq: u64 = 0;
    tokio::pin!(interrupt);

    let stopped_because = loop {
        // The schedule never ends; an offset past what an Instant holds ends the run.
        let Some(at) = schedule.next().and_then(|offset| start.checked_add(offset)) else {
            break StopReason::Duration;
        };
        let closed = options.arrivals == Arrivals::Closed;
        if deadline.is_some_and(|d| at >= d || (closed && Instant::now() >= d)) {
            break StopReason::Duration;
        }
        tokio::select! {
            biased;
            () = &mut interrupt => break StopReason::Interrupted,
            () = run.exhausted.notified() => break StopReason::SoldOut,
            () = tokio::time::sleep_until(at) => {}
        }
        let Some((event, quantity)) = lock(&run.events).pick(&mut rng) else {
            break StopReason::SoldOut;
        };
        let (plan, picks_seats) = options.mix.draw(&mut rng);
        let customer = options.mix.customer(&mut rng);
        // Drawn only for seat pickers, so a run without them repeats the original stream.
        let (seats_after, buyer_seed) = if picks_seats {
            (
                Some(rng.random_range(0..tickets_total.max(1))),
                rng.random(),
            )
        } else {
            (None, 0)
        };
        // Waiting for a free slot delays this send but not the schedule: later sends
        // keep their times, and each one's latency still counts from its own time.
        let permit = tokio::select! {
            biased;
            () = &mut interrupt => break StopReason::Interrupted,
            () = run.exhausted.notified() => break StopReason::SoldOut,
            () = sleep_until_opt(deadline) => {
                // This send and those scheduled after it before the deadline never left:
                // about `rate` per second of what remained (exact for steady arrivals).
                let remaining = deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(at));
                if !closed {
                    behind_schedule = ((remaining.as_secs_f64() * options.rate).ceil() as u64).max(1);
                }
                break StopReason::Duration;
            }
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break StopReason::Interrupted,
            },
        };
        // A closed loop's purchase is due when a client is free to send it.
        let at = if closed { Instant::now() } else { at };
        seq += 1;
        {
            let mut stats = lock(&run.stats);
            stats.sent += 1;
            stats
                .timeline
                .sent(at.saturating_duration_since(start).as_secs());
        }
        let buyer = Buyer {
            plan,
            event,
            quantity,
            seats_after,
            customer,
            ttl_seconds: options.mix.ttl_seconds(),
            key: format!("gen-{run_id:016x}-{seq}"),
        };
        let task_run = run.clone();
        let abandoned = abandon.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = one_buyer(&task_run, buyer, buyer_seed, at, start) => {}
                () = abandoned.cancelled() => {}
            }
            drop(permit);
        });
    };
    let sending = start.elapsed();
    debug!(reason = ?stopped_because, in_flight = tasks.len(), "stopped sending");
    drain(&tasks, &abandon, &run, &options).await;
    progress.finish().await;

    let elapsed = start.elapsed();
    let stats = lock(&run.stats).clone();
    let table = lock(&run.events).clone();
    let sending_seconds = sending.as_secs_f64();
    Ok(LoadReport {
        target: options.target.to_string(),
        arrivals: options.arrivals,
        rate: options.rate,
        concurrency: options.concurrency,
        seed,
        stopped_because,
        sending_seconds,
        elapsed_seconds: elapsed.as_secs_f64(),
        sent: stats.sent,
        behind_schedule,
        achieved_rate: if sending_seconds > 0.0 {
            stats.sent as f64 / sending_seconds
        } else {
            0.0
        },
        completed: stats.completed,
        purchases: stats.purchases,
        tickets_sold: stats.tickets_sold,
        revenue_cents: stats.revenue_cents,
        sold_out: stats.sold_out,
        events_sold_out: table.sold_out_events().to_vec(),
        retries: stats.retries,
        errors_total: stats.errors_total(),
        errors: stats.errors.clone(),
        outcomes: stats.outcomes.clone(),
        latency_ms: stats.latency(),
        step_latency_ms: stats.step_latency(),
        nodes: stats.nodes.clone(),
        per_second: stats.timeline.points(),
    })
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Runs one buyer and records its outcomes and what it taught about its event.
async fn one_buyer(run: &Run, buyer: Buyer, seed: u64, scheduled: Instant, start: Instant) {
    let mut rng = StdRng::seed_from_u64(seed);
    let journey = if buyer.plan == Plan::Buy && buyer.seats_after.is_none() {
        // The original buyer: one purchase.
        let body = crate::wire::OrderRequest {
            event: buyer.event.clone(),
            quantity: Some(buyer.quantity),
            tickets: None,
            customer: buyer.customer.clone(),
            ttl_seconds: None,
        };
        let attempted = purchase::purchase(&run.client, &body, &buyer.key, run.retries).await;
        Journey {
            first: attempted.outcome,
            first_answered: Instant::now(),
            later: Vec::new(),
            later_errors: Vec::new(),
            confirmed_sale: None,
            steps: Vec::new(),
            nodes: attempted.nodes,
            retries: attempted.retries,
            unknown_event: attempted.unknown_event,
        }
    } else {
        buyer::run(&run.client, &buyer, run.retries, &mut rng).await
    };
    let latency = journey.first_answered.saturating_duration_since(scheduled);
    {
        let mut stats = lock(&run.stats);
        stats.record(&journey.first, latency);
        let second = start.elapsed().as_secs();
        stats.timeline.answered(second, latency, &journey.first);
        for name in &journey.later {
            stats.outcome(name);
        }
        for kind in &journey.later_errors {
            stats.error(kind);
        }
        if let Some((tickets, cents)) = journey.confirmed_sale {
            stats.sale(tickets, cents);
            stats.timeline.sold(second, tickets);
        }
        for step in &journey.steps {
            stats.step(step.kind, step.latency);
        }
        stats.retries += u64::from(journey.retries);
        for node in &journey.nodes {
            stats.answered_by(node);
        }
    }
    let event = buyer.event;
    let mut table = lock(&run.events);
    let was_open = !table.is_exhausted();
    if let stats::Outcome::SoldOut { available } = journey.first {
        table.sold_out(&event, available);
    }
    if journey.unknown_event {
        warn!(
            event,
            "the target no longer knows this event; not asking for it again"
        );
        table.unknown(&event);
    }
    if was_open && table.is_exhausted() {
        info!("every event has sold out");
        run.exhausted.notify_one();
    }
}

/// Waits for the purchases still in flight, each bounded by its timeouts and retries,
/// and counts any that still have not finished after that as `abandoned`.
async fn drain(tasks: &TaskTracker, abandon: &CancellationToken, run: &Run, options: &LoadOptions) {
    // A box-office buyer makes up to three requests in a row (a seat pick, the first
    // write, a confirm, release or cancel), each with its retries.
    let requests = if options.mix.is_box_office() { 3 } else { 1 };
    let limit = options.request_timeout * (options.retries + 1) * requests + Duration::from_secs(2);
    tasks.close();
    if tokio::time::timeout(limit, tasks.wait()).await.is_err() {
        let abandoned = tasks.len();
        warn!(abandoned, "purchases still unanswered; giving up on them");
        {
            let mut stats = lock(&run.stats);
            for _ in 0..abandoned {
                stats.error("abandoned");
            }
        }
        abandon.cancel();
        tasks.wait().await;
    }
}
