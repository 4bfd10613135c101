//! The balancer's own endpoints under `/balancer/`, answered here and never forwarded:
//! `health`, `nodes` (JSON), `metrics` (Prometheus text format) and the status page
//! (`/balancer/`, one self-contained HTML page that polls the JSON endpoints).

use std::time::Duration;

use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde::Serialize;

use crate::ResponseBody;
use crate::error::{Error, full, json_response};
use crate::metrics::{self, Metrics};
use crate::upstreams::{NodeSnapshot, Upstreams};

/// The status page: HTML, CSS and script in one file, no external assets.
const STATUS_PAGE: &str = include_str!("status.html");

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

/// One element of `GET /balancer/nodes`: the contract's fields, then the balancer's own.
#[derive(Debug, Serialize)]
struct NodeBody {
    address: String,
    up: bool,
    in_flight: u64,
    requests: u64,
    failures: u64,
    last_error: Option<String>,
    ejected: bool,
    /// The node answers its health checks but says the shared store is slow.
    store_slow: bool,
    weight: f64,
    queued: u64,
    retries: u64,
    hedges: u64,
    ejections: u64,
    rejected: u64,
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
            ejected: s.ejected,
            store_slow: s.store_slow,
            weight: s.weight,
            queued: s.queued,
            retries: s.retries,
            hedges: s.hedges,
            ejections: s.ejections,
            rejected: s.rejected,
        }
    }
}

/// Answers a request for one of the balancer's own endpoints.
pub fn answer(
    method: &Method,
    path: &str,
    upstreams: &Upstreams,
    metrics: &Metrics,
    slow_start: Duration,
) -> Result<Response<ResponseBody>, Error> {
    if *method != Method::GET && *method != Method::HEAD {
        return Err(Error::MethodNotAllowed);
    }
    let snapshots: Vec<NodeSnapshot> = upstreams
        .nodes()
        .iter()
        .map(|n| n.snapshot(slow_start))
        .collect();
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
        "/balancer/metrics" => Ok(text_response(metrics.render(), metrics::CONTENT_TYPE)),
        "/balancer" | "/balancer/" => Ok(text_response(
            STATUS_PAGE.to_owned(),
            "text/html; charset=utf-8",
        )),
        other => Err(Error::NotFound(other.to_owned())),
    }
}

fn text_response(body: String, content_type: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(full(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOW: Duration = Duration::from_secs(5);

    async fn text_of(response: Response<ResponseBody>) -> String {
        let bytes = crate::body_bytes(response).await;
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    /// The answer to `method path` over two nodes, the first up and the second down.
    async fn ask(method: Method, path: &str) -> Result<Response<ResponseBody>, Error> {
        let upstreams = crate::upstreams::two_nodes_one_down().await;
        let metrics = crate::metrics::test_metrics(&upstreams);
        answer(&method, path, &upstreams, &metrics, SLOW)
    }

    /// The JSON body of `GET path`, which must succeed.
    async fn json_of(path: &str) -> serde_json::Value {
        let response = ask(Method::GET, path).await.expect(path);
        serde_json::from_str(&text_of(response).await).expect("json")
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
        assert_eq!(
            json_of("/balancer/health").await,
            serde_json::json!({"status": "ok", "nodes_up": 1, "nodes_total": 2})
        );
    }

    #[tokio::test]
    async fn nodes_lists_each_address_with_its_state() {
        assert_eq!(
            json_of("/balancer/nodes").await,
            serde_json::json!([
                {"address": "127.0.0.1:1", "up": true, "in_flight": 0, "requests": 0,
                 "failures": 0, "last_error": null, "ejected": false, "store_slow": false,
                 "weight": 1.0, "queued": 0, "retries": 0, "hedges": 0, "ejections": 0, "rejected": 0},
                {"address": "127.0.0.1:2", "up": false, "in_flight": 0, "requests": 0,
                 "failures": 0, "last_error": "connection refused", "ejected": false,
                 "store_slow": false, "weight": 1.0, "queued": 0, "retries": 0, "hedges": 0, "ejections": 0,
                 "rejected": 0},
            ])
        );
    }

    #[tokio::test]
    async fn the_status_page_is_served_as_html_with_and_without_the_slash() {
        for path in ["/balancer/", "/balancer"] {
            let response = ask(Method::GET, path).await.expect("page");
            assert_eq!(
                response.headers()[CONTENT_TYPE],
                "text/html; charset=utf-8",
                "{path}"
            );
            let page = text_of(response).await;
            assert!(
                page.contains("/balancer/nodes"),
                "the page polls the node list"
            );
        }
    }

    #[tokio::test]
    async fn metrics_are_served_in_the_prometheus_text_format() {
        let response = ask(Method::GET, "/balancer/metrics")
            .await
            .expect("metrics");
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let text = text_of(response).await;
        assert!(text.contains("balancer_nodes_total 2"), "{text}");
    }

    #[tokio::test]
    async fn unknown_endpoints_and_other_methods_are_errors() {
        let err = ask(Method::GET, "/balancer/nope")
            .await
            .expect_err("unknown");
        assert_eq!(err.code(), "not_found");
        let err = ask(Method::POST, "/balancer/health")
            .await
            .expect_err("post");
        assert_eq!(err.code(), "method_not_allowed");
    }
}
