//! The node's Prometheus metrics, kept with `prometheus-client` and rendered in the
//! Prometheus text format (0.0.4) at `GET /metrics`: requests and latency by route, group
//! commits (duration and batch size), sales, and per-event stock read at scrape time.

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use shared::domain::EventSummary;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Latency bucket bounds in seconds, from 0.5 ms to 8 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0,
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteStatus {
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabel {
    event: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every metric of one node, registered once with the node's id as a constant label.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    request_seconds: HistogramFamily<RouteLabel>,
    /// One `TicketStore::commit_batch` call: lock wait, decision, append and sync.
    commit_seconds: Histogram,
    commit_batch_size: Histogram,
    /// Time a group commit waited for the store's exclusive lock.
    lock_wait_seconds: Histogram,
    /// Time a group commit spent appending to the journal and syncing it.
    sync_seconds: Histogram,
    commit_failures: Counter,
    purchases_committed: Counter,
    tickets_sold: Counter,
    event_available: Family<EventLabel, Gauge>,
    event_sold: Family<EventLabel, Gauge>,
    /// Tickets of the event in live holds.
    event_held: Family<EventLabel, Gauge>,
    event_total: Family<EventLabel, Gauge>,
    /// Serialises scrapes, so one scrape's refresh of the event gauges is not mixed with
    /// another's.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new("")
    }
}

impl Metrics {
    /// The metrics of the node `node`, which every series carries as its `node` label.
    pub fn new(node: &str) -> Self {
        let labels = [(Cow::Borrowed("node"), Cow::Owned(node.to_owned()))];
        let mut registry = Registry::with_labels(labels.into_iter());
        let metrics = Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            commit_seconds: latency_histogram(),
            commit_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            lock_wait_seconds: latency_histogram(),
            sync_seconds: latency_histogram(),
            commit_failures: Counter::default(),
            purchases_committed: Counter::default(),
            tickets_sold: Counter::default(),
            event_available: Family::default(),
            event_sold: Family::default(),
            event_held: Family::default(),
            event_total: Family::default(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "tickets_http_requests",
            "Requests answered, by route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "tickets_http_request_duration_seconds",
            "Time to answer a request, by route",
            metrics.request_seconds.clone(),
        );
        registry.register(
            "tickets_commit_duration_seconds",
            "Time of one group commit as the node sees it: waiting for the store's write \
             lock, deciding the batch, appending it to the journal and syncing it",
            metrics.commit_seconds.clone(),
        );
        registry.register(
            "tickets_commit_batch_size",
            "Purchases decided together in one group commit",
            metrics.commit_batch_size.clone(),
        );
        registry.register(
            "tickets_store_lock_wait_seconds",
            "Time a group commit waited for the store's exclusive lock (other nodes' commits)",
            metrics.lock_wait_seconds.clone(),
        );
        registry.register(
            "tickets_store_sync_seconds",
            "Time a group commit spent appending to the journal and fdatasyncing it",
            metrics.sync_seconds.clone(),
        );
        registry.register(
            "tickets_commit_failures",
            "Group commits the store refused (every purchase in them answered 503)",
            metrics.commit_failures.clone(),
        );
        registry.register(
            "tickets_purchases_committed",
            "Purchases this node committed",
            metrics.purchases_committed.clone(),
        );
        registry.register(
            "tickets_sold",
            "Tickets this node sold",
            metrics.tickets_sold.clone(),
        );
        registry.register(
            "tickets_event_available",
            "Tickets of the event still for sale, in the whole store, read at scrape time",
            metrics.event_available.clone(),
        );
        registry.register(
            "tickets_event_sold",
            "Tickets of the event sold by any node, read at scrape time",
            metrics.event_sold.clone(),
        );
        registry.register(
            "tickets_event_held",
            "Tickets of the event in live holds, read at scrape time",
            metrics.event_held.clone(),
        );
        registry.register(
            "tickets_event_total",
            "Tickets of the event in the inventory",
            metrics.event_total.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Counts one answered request.
    pub fn observe(&self, route: &'static str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RouteStatus { route, status })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabel { route })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one group commit of `batch` purchases that took `elapsed`.
    pub fn commit_observed(&self, batch: usize, elapsed: Duration, succeeded: bool) {
        self.commit_seconds.observe(elapsed.as_secs_f64());
        self.commit_batch_size.observe(batch as f64);
        if !succeeded {
            self.commit_failures.inc();
        }
    }

    /// Records where a successful group commit's time went inside the store.
    pub fn store_timings(&self, lock_wait: Duration, append_and_sync: Duration) {
        self.lock_wait_seconds.observe(lock_wait.as_secs_f64());
        if !append_and_sync.is_zero() {
            self.sync_seconds.observe(append_and_sync.as_secs_f64());
        }
    }

    /// Counts one purchase of `tickets` tickets that this node created.
    pub fn purchase_committed(&self, tickets: usize) {
        self.purchases_committed.inc();
        self.tickets_sold.inc_by(tickets as u64);
    }

    /// The text exposition, with the per-event gauges set from `events` (the store's state
    /// now), or left out when the store could not be read.
    pub fn render(&self, events: Option<&[EventSummary]>) -> String {
        let _scrape = self
            .scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for family in [
            &self.event_available,
            &self.event_sold,
            &self.event_held,
            &self.event_total,
        ] {
            family.clear();
        }
        for summary in events.unwrap_or_default() {
            let label = EventLabel {
                event: summary.event.to_string(),
            };
            let gauge = |family: &Family<EventLabel, Gauge>, value: u64| {
                family
                    .get_or_create(&label)
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            };
            gauge(&self.event_available, summary.available);
            gauge(&self.event_sold, summary.sold);
            gauge(&self.event_held, summary.held);
            gauge(&self.event_total, summary.total);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shared::EventName;

    fn summary(event: &str, total: u64, sold: u64) -> EventSummary {
        EventSummary {
            event: EventName::parse(event).expect("event name"),
            total,
            available: total - sold,
            sold,
            held: 0,
            min_price_cents: 100,
            max_price_cents: 200,
            max_per_customer: None,
        }
    }

    /// Asserts that the rendered `text` holds each of `wanted`.
    pub(crate) fn assert_has(text: &str, wanted: &[&str]) {
        for line in wanted {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }

    #[test]
    fn observed_requests_appear_in_the_text_format() {
        let m = Metrics::new("n1");
        m.observe("GET /events", 200, Duration::from_millis(3));
        m.observe("GET /events", 200, Duration::from_millis(30));
        m.purchase_committed(2);
        let text = m.render(None);
        assert_has(
            &text,
            &[
                "tickets_http_requests_total{node=\"n1\",route=\"GET /events\",status=\"200\"} 2",
                "le=\"0.005\"} 1",
                "le=\"+Inf\"} 2",
                "tickets_sold_total{node=\"n1\"} 2",
                "# TYPE tickets_http_request_duration_seconds histogram",
            ],
        );
    }

    #[test]
    fn group_commits_are_timed_and_their_batch_sizes_counted() {
        let m = Metrics::new("n1");
        m.commit_observed(3, Duration::from_millis(2), true);
        m.commit_observed(1, Duration::from_millis(4), false);
        let text = m.render(None);
        assert_has(
            &text,
            &[
                "tickets_commit_duration_seconds_count{node=\"n1\"} 2",
                "tickets_commit_batch_size_sum{node=\"n1\"} 4.0",
                "tickets_commit_batch_size_bucket{node=\"n1\",le=\"2\"} 1",
                "tickets_commit_failures_total{node=\"n1\"} 1",
            ],
        );
    }

    #[test]
    fn event_gauges_follow_the_store_at_each_scrape() {
        let m = Metrics::new("n1");
        let mut held = summary("concert", 10, 3);
        held.held = 2;
        held.available = 5;
        let text = m.render(Some(&[held, summary("opera", 5, 0)]));
        assert_has(
            &text,
            &[
                "tickets_event_held{node=\"n1\",event=\"concert\"} 2",
                "tickets_event_available{node=\"n1\",event=\"concert\"} 5",
                "tickets_event_sold{node=\"n1\",event=\"concert\"} 3",
            ],
        );
        // An event gone from the store disappears from the next scrape.
        let text = m.render(Some(&[summary("concert", 10, 4)]));
        assert_has(
            &text,
            &["tickets_event_available{node=\"n1\",event=\"concert\"} 6"],
        );
        assert!(!text.contains("opera"), "{text}");
    }
}
