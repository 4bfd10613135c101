//! The balancer's Prometheus metrics, kept with `prometheus-client` and rendered in the
//! Prometheus text format (0.0.4) at `GET /balancer/metrics`: the per-node state and
//! counters (read from the node set at scrape time), the answers it gave, and the time each
//! node took to answer.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::retry::RetryBudget;
use crate::selection::panicking;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::upstreams::{Node, NodeSnapshot, Upstreams};

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Latency bucket bounds in seconds, from 0.5 ms to 8 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0,
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AnswerLabels {
    /// `forwarded` for the ticket API, `admin` for the balancer's own endpoints.
    kind: &'static str,
    status: u16,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Statuses `100..=999` (all that `http` allows) have a slot in the handle caches.
const STATUSES: std::ops::RangeInclusive<u16> = 100..=999;

/// One answer series' counter and histogram, shared with (not copied from) the families.
type AnswerHandles = (Counter, Histogram);

/// Handles per status, each fetched from the families on its first use, so counting an
/// answer neither hashes a label set nor takes the family's lock after that.
fn handle_cache() -> Box<[OnceLock<AnswerHandles>]> {
    STATUSES.map(|_| OnceLock::new()).collect()
}

/// The balancer's registry and the metrics it updates as requests pass.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    answers: Family<AnswerLabels, Counter>,
    request_seconds: Family<AnswerLabels, Histogram, fn() -> Histogram>,
    upstream_seconds: Family<NodeLabel, Histogram, fn() -> Histogram>,
    /// Cached handles for forwarded answers, by status.
    forwarded: Box<[OnceLock<AnswerHandles>]>,
    /// Cached handles for the balancer's own answers, by status.
    admin: Box<[OnceLock<AnswerHandles>]>,
}

impl Metrics {
    /// Metrics over `upstreams` and `budget`, whose state is read at each scrape
    /// (`slow_start` to tell each node's current weight).
    pub fn new(upstreams: Arc<Upstreams>, budget: Arc<RetryBudget>, slow_start: Duration) -> Self {
        let mut registry = Registry::default();
        let answers = Family::<AnswerLabels, Counter>::default();
        let request_seconds: Family<_, _, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let upstream_seconds: Family<_, _, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "balancer_http_requests",
            "Answers the balancer gave, by kind (forwarded or admin) and status",
            answers.clone(),
        );
        registry.register(
            "balancer_http_request_duration_seconds",
            "Time from a request's arrival to its response headers, retries included, by \
             kind and status",
            request_seconds.clone(),
        );
        registry.register(
            "balancer_upstream_response_seconds",
            "Time a node took to send its response headers, per node (failed attempts \
             are counted in balancer_node_failures_total instead)",
            upstream_seconds.clone(),
        );
        registry.register_collector(Box::new(NodesCollector {
            upstreams,
            budget,
            slow_start,
        }));
        Self {
            registry,
            answers,
            request_seconds,
            upstream_seconds,
            forwarded: handle_cache(),
            admin: handle_cache(),
        }
    }

    /// Counts one answer of the balancer's.
    pub fn answered(&self, forwarded: bool, status: u16, elapsed: Duration) {
        let labels = || AnswerLabels {
            kind: if forwarded { "forwarded" } else { "admin" },
            status,
        };
        let fetch = || {
            let labels = labels();
            (
                self.answers.get_or_create(&labels).clone(),
                self.request_seconds.get_or_create(&labels).clone(),
            )
        };
        let cache = if forwarded {
            &self.forwarded
        } else {
            &self.admin
        };
        let slot = usize::from(status.wrapping_sub(*STATUSES.start()));
        let owned;
        let (counter, histogram) = match cache.get(slot) {
            Some(cell) => cell.get_or_init(fetch),
            None => {
                owned = fetch();
                &owned
            }
        };
        counter.inc();
        histogram.observe(elapsed.as_secs_f64());
    }

    /// Records how long `node` took to answer one forwarded request.
    pub fn upstream_answered(&self, node: &Node, elapsed: Duration) {
        node.upstream_seconds
            .get_or_init(|| {
                self.upstream_seconds
                    .get_or_create(&NodeLabel {
                        node: node.address.to_string(),
                    })
                    .clone()
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// Encodes the state and counters each node keeps (for `/balancer/nodes` too) as they
/// are at scrape time, so a node that is removed disappears from the next scrape.
#[derive(Debug)]
struct NodesCollector {
    upstreams: Arc<Upstreams>,
    budget: Arc<RetryBudget>,
    slow_start: Duration,
}

type Field = fn(&NodeSnapshot) -> u64;

/// Per-node gauges: name, help (with its full stop: a collector's help is written as
/// given), value.
const NODE_GAUGES: [(&str, &str, Field); 5] = [
    (
        "balancer_node_up",
        "Whether the node passes its health checks (1) or is down (0), after rise/fall.",
        |s| u64::from(s.up),
    ),
    (
        "balancer_node_ejected",
        "Whether the node is out of rotation after failing repeatedly (1) or not (0).",
        |s| u64::from(s.ejected),
    ),
    (
        "balancer_node_store_slow",
        "Whether the node answers its health checks but says the shared store is slow (1): \
         kept in rotation, since that is every node's trouble, not this one's.",
        |s| u64::from(s.store_slow),
    ),
    (
        "balancer_node_in_flight",
        "Requests sent to the node whose response is not fully streamed back yet.",
        |s| s.in_flight,
    ),
    (
        "balancer_node_queued",
        "Requests waiting for an in-flight slot on the node.",
        |s| s.queued,
    ),
];

/// Per-node counters: name (the encoder adds `_total`), help, value.
const NODE_COUNTERS: [(&str, &str, Field); 6] = [
    (
        "balancer_node_requests",
        "Forwarding attempts sent to the node.",
        |s| s.requests,
    ),
    (
        "balancer_node_failures",
        "Forwarding attempts to the node that failed.",
        |s| s.failures,
    ),
    (
        "balancer_node_retries",
        "Requests that failed on the node and were sent on to another node.",
        |s| s.retries,
    ),
    (
        "balancer_node_hedges",
        "Second attempts sent to another node because the node was slow or went down.",
        |s| s.hedges,
    ),
    (
        "balancer_node_ejections",
        "Times the node was taken out of rotation after failing repeatedly.",
        |s| s.ejections,
    ),
    (
        "balancer_node_rejected",
        "Requests answered 503 because the node's in-flight limit and queue were full.",
        |s| s.rejected,
    ),
];

impl Collector for NodesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshots: Vec<NodeSnapshot> = self
            .upstreams
            .nodes()
            .iter()
            .map(|n| n.snapshot(self.slow_start))
            .collect();
        {
            let gauge = ConstGauge::new(0.0f64);
            let mut family = encoder.encode_descriptor(
                "balancer_node_weight",
                "The share of its round-robin turns the node takes: below 1 during slow start.",
                None,
                gauge.metric_type(),
            )?;
            for s in &snapshots {
                ConstGauge::new(s.weight).encode(family.encode_family(&[("node", &s.address)])?)?;
            }
        }
        for (name, help, field) in NODE_GAUGES {
            let gauge = ConstGauge::new(0i64);
            let mut family = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            for s in &snapshots {
                let value = i64::try_from(field(s)).unwrap_or(i64::MAX);
                ConstGauge::new(value).encode(family.encode_family(&[("node", &s.address)])?)?;
            }
        }
        for (name, help, field) in NODE_COUNTERS {
            let counter = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            for s in &snapshots {
                ConstCounter::new(field(s))
                    .encode(family.encode_family(&[("node", &s.address)])?)?;
            }
        }
        let up = snapshots.iter().filter(|s| s.up).count();
        let in_rotation = snapshots.iter().filter(|s| s.up && !s.ejected).count();
        let totals = [
            (
                "balancer_nodes_up",
                "Nodes passing their health checks.",
                up,
            ),
            (
                "balancer_nodes_total",
                "Nodes currently known.",
                snapshots.len(),
            ),
            (
                "balancer_panic_mode",
                "1 while more than half the nodes look unhealthy, so every node is in \
                 rotation (the panic threshold); else 0.",
                usize::from(panicking(in_rotation, snapshots.len())),
            ),
        ];
        for (name, help, value) in totals {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let budget = [
            (
                "balancer_retries_allowed",
                "Retries and hedged attempts the retry budget allowed.",
                self.budget.allowed(),
            ),
            (
                "balancer_retries_refused",
                "Retries and hedged attempts refused because the retry budget was spent.",
                self.budget.exhausted(),
            ),
        ];
        for (name, help, value) in budget {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Metrics over `upstreams` with a fresh budget: a helper for the unit tests.
#[cfg(test)]
pub(crate) fn test_metrics(upstreams: &Arc<Upstreams>) -> Metrics {
    Metrics::new(
        Arc::clone(upstreams),
        Arc::new(RetryBudget::new(0.2, 10)),
        Duration::from_secs(5),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that the rendered `text` contains each of `lines`.
    #[track_caller]
    fn assert_contains_all(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(text.contains(line), "no {line} in:\n{text}");
        }
    }

    #[tokio::test]
    async fn node_state_is_read_at_scrape_time() {
        let upstreams = crate::upstreams::two_nodes_one_down().await;
        let metrics = test_metrics(&upstreams);
        assert_contains_all(
            &metrics.render(),
            &[
                "# TYPE balancer_node_up gauge",
                "balancer_node_up{node=\"127.0.0.1:1\"} 1",
                "balancer_node_up{node=\"127.0.0.1:2\"} 0",
                "# TYPE balancer_node_retries_total counter",
                "balancer_nodes_up 1",
                "balancer_nodes_total 2",
                "balancer_panic_mode 0",
                "balancer_retries_refused_total 0",
                "balancer_node_weight{node=\"127.0.0.1:1\"} 1",
            ],
        );

        let _guard = upstreams.nodes()[0].start_request();
        assert_contains_all(
            &metrics.render(),
            &[
                "balancer_node_requests_total{node=\"127.0.0.1:1\"} 1",
                "balancer_node_in_flight{node=\"127.0.0.1:1\"} 1",
            ],
        );
    }

    #[tokio::test]
    async fn answers_and_upstream_latency_are_histograms() {
        let upstreams = crate::upstreams::two_nodes_one_down().await;
        let metrics = test_metrics(&upstreams);
        metrics.answered(true, 201, Duration::from_millis(3));
        metrics.answered(true, 201, Duration::from_millis(30));
        metrics.answered(false, 200, Duration::from_micros(100));
        metrics.upstream_answered(&upstreams.nodes()[0], Duration::from_millis(2));
        assert_contains_all(
            &metrics.render(),
            &[
                "balancer_http_requests_total{kind=\"forwarded\",status=\"201\"} 2",
                "balancer_upstream_response_seconds_bucket{node=\"127.0.0.1:1\",le=\"0.0025\"} 1",
                "balancer_upstream_response_seconds_count{node=\"127.0.0.1:1\"} 1",
            ],
        );
    }
}
