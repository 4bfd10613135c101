//! Request and sale counters, rendered in the Prometheus text format at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency bucket bounds in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Default)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    /// Cumulative counts per bucket in `BUCKETS`.
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<&'static str, RouteStats>>,
    purchases_committed: AtomicU64,
    tickets_sold: AtomicU64,
}

impl Metrics {
    pub fn observe(&self, route: &'static str, status: u16, elapsed: Duration) {
        let Ok(mut routes) = self.routes.lock() else {
            return;
        };
        let stats = routes.entry(route).or_default();
        *stats.by_status.entry(status).or_default() += 1;
        let seconds = elapsed.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(stats.buckets.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        stats.count += 1;
        stats.sum_seconds += seconds;
    }

    pub fn purchase_committed(&self, tickets: usize) {
        self.purchases_committed.fetch_add(1, Ordering::Relaxed);
        self.tickets_sold
            .fetch_add(tickets as u64, Ordering::Relaxed);
    }

    pub fn render(&self, node: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP tickets_http_requests_total Requests answered, by route and status.\n\
             # TYPE tickets_http_requests_total counter"
        );
        let routes = match self.routes.lock() {
            Ok(routes) => routes,
            Err(poisoned) => poisoned.into_inner(),
        };
        for (route, stats) in routes.iter() {
            for (status, count) in &stats.by_status {
                let _ = writeln!(
                    out,
                    "tickets_http_requests_total{{node=\"{node}\",route=\"{route}\",status=\"{status}\"}} {count}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP tickets_http_request_duration_seconds Time to answer a request, by route.\n\
             # TYPE tickets_http_request_duration_seconds histogram"
        );
        for (route, stats) in routes.iter() {
            let labels = format!("node=\"{node}\",route=\"{route}\"");
            for (bound, count) in BUCKETS.iter().zip(stats.buckets.iter()) {
                let _ = writeln!(
                    out,
                    "tickets_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "tickets_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
                 tickets_http_request_duration_seconds_sum{{{labels}}} {}\n\
                 tickets_http_request_duration_seconds_count{{{labels}}} {}",
                stats.count, stats.sum_seconds, stats.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP tickets_purchases_committed_total Purchases this node committed.\n\
             # TYPE tickets_purchases_committed_total counter\n\
             tickets_purchases_committed_total{{node=\"{node}\"}} {}\n\
             # HELP tickets_sold_total Tickets this node sold.\n\
             # TYPE tickets_sold_total counter\n\
             tickets_sold_total{{node=\"{node}\"}} {}",
            self.purchases_committed.load(Ordering::Relaxed),
            self.tickets_sold.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observed_requests_appear_in_the_text_format() {
        let m = Metrics::default();
        m.observe("GET /events", 200, Duration::from_millis(3));
        m.observe("GET /events", 200, Duration::from_millis(30));
        m.purchase_committed(2);
        let text = m.render("n1");
        assert!(text.contains(
            "tickets_http_requests_total{node=\"n1\",route=\"GET /events\",status=\"200\"} 2"
        ));
        assert!(text.contains("le=\"0.005\"} 1"));
        assert!(text.contains("le=\"+Inf\"} 2"));
        assert!(text.contains("tickets_sold_total{node=\"n1\"} 2"));
    }
}
