//! The balancer's own endpoints under `/balancer/`, answered here and never forwarded:
//! `health`, `nodes` (JSON) and `metrics` (Prometheus text format).

use std::fmt::Write as _;

use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde::Serialize;

use crate::ResponseBody;
use crate::error::{Error, full, json_response};
use crate::upstreams::{NodeSnapshot, Upstreams};

/// Whether `path` belongs to the balancer rather than to the nodes.
pub fn is_admin_path(path: &str) -> bool {
    path == "/balancer" || path.starts_with("/balancer/")
}

/// The body of `GET /balancer/health`.
#[derive(Debug, Serialize)]
struct HealthBody {
    status: &'static str,
    nodes_up: usize,
    nodes_total: usize,
}

/// One element of `GET /balancer/nodes`.
#[derive(Debug, Serialize)]
struct NodeBody {
    address: String,
    up: bool,
    in_flight: u64,
    requests: u64,
    failures: u64,
    last_error: Option<String>,
}

impl From<NodeSnapshot> for NodeBody {
    fn from(s: NodeSnapshot) -> Self {
        Self {
            address: s.address,
            up: s.up,
            in_flight: s.in_flight,
            requests: s.requests,
            failures: s.failures,
            last_error: s.last_error,
        }
    }
}

/// Answers a request for one of the balancer's own endpoints.
pub fn answer(
    method: &Method,
    path: &str,
    upstreams: &Upstreams,
) -> Result<Response<ResponseBody>, Error> {
    if *method != Method::GET && *method != Method::HEAD {
        return Err(Error::MethodNotAllowed);
    }
    let snapshots: Vec<NodeSnapshot> = upstreams.nodes().iter().map(|n| n.snapshot()).collect();
    match path {
        "/balancer/health" => {
            let body = HealthBody {
                status: "ok",
                nodes_up: snapshots.iter().filter(|s| s.up).count(),
                nodes_total: snapshots.len(),
            };
            Ok(json_response(StatusCode::OK, &body))
        }
        "/balancer/nodes" => {
            let body: Vec<NodeBody> = snapshots.into_iter().map(NodeBody::from).collect();
            Ok(json_response(StatusCode::OK, &body))
        }
        "/balancer/metrics" => {
            let mut response = Response::new(full(metrics_text(&snapshots)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(response)
        }
        other => Err(Error::NotFound(other.to_owned())),
    }
}

/// Renders the per-node gauges and counters in the Prometheus text exposition format.
fn metrics_text(snapshots: &[NodeSnapshot]) -> String {
    type Field = fn(&NodeSnapshot) -> u64;
    let families: [(&str, &str, &str, Field); 5] = [
        (
            "balancer_node_up",
            "gauge",
            "Whether the node takes requests (1) or is down (0).",
            |s| u64::from(s.up),
        ),
        (
            "balancer_node_in_flight",
            "gauge",
            "Requests sent to the node whose response is not fully streamed back yet.",
            |s| s.in_flight,
        ),
        (
            "balancer_node_requests_total",
            "counter",
            "Forwarding attempts sent to the node.",
            |s| s.requests,
        ),
        (
            "balancer_node_failures_total",
            "counter",
            "Forwarding attempts to the node that failed.",
            |s| s.failures,
        ),
        (
            "balancer_node_retries_total",
            "counter",
            "Requests that failed on the node and were sent on to another node.",
            |s| s.retries,
        ),
    ];
    let mut text = String::new();
    // Writing to a String cannot fail, so the results of write! are ignored.
    for (name, kind, help, field) in families {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} {kind}");
        for s in snapshots {
            let _ = writeln!(
                text,
                "{name}{{node=\"{}\"}} {}",
                escape_label(&s.address),
                field(s)
            );
        }
    }
    let up = snapshots.iter().filter(|s| s.up).count();
    let _ = writeln!(
        text,
        "# HELP balancer_nodes_up Nodes currently taking requests."
    );
    let _ = writeln!(text, "# TYPE balancer_nodes_up gauge");
    let _ = writeln!(text, "balancer_nodes_up {up}");
    let _ = writeln!(text, "# HELP balancer_nodes_total Nodes currently known.");
    let _ = writeln!(text, "# TYPE balancer_nodes_total gauge");
    let _ = writeln!(text, "balancer_nodes_total {}", snapshots.len());
    text
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::net::SocketAddr;

    async fn two_nodes_one_down() -> Upstreams {
        let upstreams = Upstreams::new(vec![
            "127.0.0.1:1".parse().expect("name"),
            "127.0.0.1:2".parse().expect("name"),
        ]);
        upstreams
            .refresh(|n: crate::settings::NodeName| async move {
                Ok(vec![SocketAddr::from(([127, 0, 0, 1], n.port))])
            })
            .await;
        upstreams.nodes()[1].mark_down("connection refused");
        upstreams
    }

    async fn text_of(response: Response<ResponseBody>) -> String {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[test]
    fn only_the_balancer_prefix_is_kept_back() {
        assert!(is_admin_path("/balancer/health"));
        assert!(is_admin_path("/balancer"));
        assert!(!is_admin_path("/balancers"));
        assert!(!is_admin_path("/health"));
    }

    #[tokio::test]
    async fn health_counts_nodes_up_and_known() {
        let upstreams = two_nodes_one_down().await;
        let response = answer(&Method::GET, "/balancer/health", &upstreams).expect("health");
        let body: serde_json::Value = serde_json::from_str(&text_of(response).await).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"status": "ok", "nodes_up": 1, "nodes_total": 2})
        );
    }

    #[tokio::test]
    async fn nodes_lists_each_address_with_its_state() {
        let upstreams = two_nodes_one_down().await;
        let response = answer(&Method::GET, "/balancer/nodes", &upstreams).expect("nodes");
        let body: serde_json::Value = serde_json::from_str(&text_of(response).await).expect("json");
        assert_eq!(
            body,
            serde_json::json!([
                {"address": "127.0.0.1:1", "up": true, "in_flight": 0, "requests": 0,
                 "failures": 0, "last_error": null},
                {"address": "127.0.0.1:2", "up": false, "in_flight": 0, "requests": 0,
                 "failures": 0, "last_error": "connection refused"},
            ])
        );
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_per_node() {
        let upstreams = two_nodes_one_down().await;
        let response = answer(&Method::GET, "/balancer/metrics", &upstreams).expect("metrics");
        let text = text_of(response).await;
        assert!(text.contains("# TYPE balancer_node_up gauge"), "{text}");
        assert!(
            text.contains("balancer_node_up{node=\"127.0.0.1:1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("balancer_node_up{node=\"127.0.0.1:2\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE balancer_node_retries_total counter"),
            "{text}"
        );
        assert!(text.contains("balancer_nodes_total 2"), "{text}");
    }

    #[tokio::test]
    async fn unknown_endpoints_and_other_methods_are_errors() {
        let upstreams = two_nodes_one_down().await;
        let err = answer(&Method::GET, "/balancer/nope", &upstreams).expect_err("unknown");
        assert_eq!(err.code(), "not_found");
        let err = answer(&Method::POST, "/balancer/health", &upstreams).expect_err("post");
        assert_eq!(err.code(), "method_not_allowed");
    }
}
