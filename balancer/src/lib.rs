//! The balancer: a round-robin HTTP reverse proxy over the nodes, with active health
//! checks (rise/fall), slow start, outlier ejection, hedged and budgeted retries, per-node
//! in-flight limits and a panic threshold, and re-resolution of node names. [`run`] serves
//! it on a bound listener with one single-threaded runtime per worker (see `workers`);
//! [`Balancer`] is the request handler, usable without a socket.

pub mod admin;
pub mod error;
pub mod front;
pub mod h1;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod node;
pub mod pool;
pub mod proxy;
pub mod retry;
pub mod selection;
pub mod settings;
pub mod upstreams;
pub mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use shared::api::NODE_HEADER;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

pub use error::Error;
pub use settings::Settings;

use proxy::Proxy;
use retry::RetryBudget;
use selection::Selector;
use upstreams::Upstreams;

/// Every response body the balancer sends: a node's (whole or streamed) or one of its own.
pub type ResponseBody = h1::BodyStream;

/// The whole body of an in-memory response: a helper for the unit tests.
#[cfg(test)]
pub(crate) async fn body_bytes(response: Response<ResponseBody>) -> Bytes {
    use http_body_util::BodyExt;
    response
        .into_body()
        .collect()
        .await
        .expect("in-memory body")
        .to_bytes()
}

/// The request handler: answers `/balancer/*` itself and forwards everything else.
#[derive(Debug, Clone)]
pub struct Balancer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    upstreams: Arc<Upstreams>,
    selector: Selector,
    proxy: Proxy,
    budget: Arc<RetryBudget>,
    metrics: Arc<metrics::Metrics>,
    slow_start: std::time::Duration,
}

impl Balancer {
    /// A balancer over `settings.nodes`, with no addresses known until the first
    /// [`Upstreams::refresh`] (which [`run`] does before serving).
    pub fn new(settings: &Settings) -> Self {
        let upstreams = Arc::new(Upstreams::new(settings.node_names()));
        let budget = Arc::new(RetryBudget::new(
            settings.retry_budget,
            settings.retry_min_per_second,
        ));
        let metrics = Arc::new(metrics::Metrics::new(
            Arc::clone(&upstreams),
            Arc::clone(&budget),
            settings.slow_start,
        ));
        let proxy =
            Proxy::new(settings.clone(), Arc::clone(&budget)).with_metrics(Arc::clone(&metrics));
        Self {
            inner: Arc::new(Inner {
                upstreams,
                selector: Selector::new(settings.slow_start),
                proxy,
                budget,
                metrics,
                slow_start: settings.slow_start,
            }),
        }
    }

    /// The node set this balancer forwards to.
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.inner.upstreams
    }

    /// Answers one request from `peer`, whatever its body type, and logs it: one line at
    /// debug per request, at warn when the answer is a 5xx.
    pub async fn respond<B>(&self, request: Request<B>, peer: SocketAddr) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let inner = &self.inner;
        let method = request.method().clone();
        // The URI shares its bytes with the request, so keeping a copy for the log is cheap.
        let uri = request.uri().clone();
        let path = uri.path();
        let admin = admin::is_admin_path(path);
        let outcome = if admin {
            admin::answer(
                &method,
                path,
                &inner.upstreams,
                &inner.metrics,
                inner.slow_start,
            )
        } else {
            inner
                .proxy
                .forward(&inner.upstreams, &inner.selector, request, peer)
                .await
        };
        let response = outcome.unwrap_or_else(Error::into_response);
        // Time to the response headers: a body is streamed on after this.
        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        inner.metrics.answered(!admin, status, elapsed);
        // The node's name is only looked up when a line is logged.
        let node = || {
            response
                .headers()
                .get(NODE_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
        };
        if response.status().is_server_error() {
            warn!(%method, %path, status, node = node(), ?elapsed, %peer, "request failed");
        } else {
            debug!(%method, %path, status, node = node(), ?elapsed, "request");
        }
        response
    }
}

impl serve::Handler for Balancer {
    type Body = ResponseBody;

    fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Self::Body>> + Send {
        self.respond(request, peer)
    }
}

/// Serves the balancer on `listener` until `shutdown` completes, then drains open requests
/// (within the drain timeout) and returns. The health checks, re-resolution and the retry
/// budget's clock run on the calling runtime; requests are served by `settings.workers`
/// single-threaded runtimes (see [`workers`]).
pub async fn run(listener: TcpListener, settings: Settings, shutdown: impl Future<Output = ()>) {
    let balancer = Balancer::new(&settings);
    let upstreams = Arc::clone(balancer.upstreams());
    upstreams.refresh(upstreams::resolve_dns).await;
    info!(
        nodes = upstreams.nodes().len(),
        names = settings.nodes.0.len(),
        "resolved the nodes"
    );

    let resolving = tokio::spawn(upstreams::keep_resolving(
        Arc::clone(&upstreams),
        settings.resolve_interval,
        upstreams::resolve_dns,
    ));
    let checking = {
        let client = health::node_client(settings.connect_timeout);
        let timeout = settings.health_timeout;
        let counts = health::RiseFall {
            rise: settings.health_rise,
            fall: settings.health_fall,
        };
        tokio::spawn(health::keep_checking(
            Arc::clone(&upstreams),
            settings.health_interval,
            counts,
            move |address| health::check_http(client.clone(), address, timeout),
        ))
    };
    let decaying = tokio::spawn(retry::keep_decaying(Arc::clone(&balancer.inner.budget)));

    workers::serve(listener, balancer, &settings, shutdown).await;
    resolving.abort();
    checking.abort();
    decaying.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn settings(nodes: &str) -> Settings {
        let settings = Settings {
            nodes: serde_json::from_value(serde_json::json!(nodes)).expect("node list"),
            ..Settings::default()
        };
        settings.validate().expect("valid settings");
        settings
    }

    async fn call(balancer: &Balancer, method: &str, path: &str) -> (u16, serde_json::Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
        let response = balancer.respond(request, peer).await;
        let status = response.status().as_u16();
        let bytes = crate::body_bytes(response).await;
        (status, serde_json::from_slice(&bytes).expect("JSON body"))
    }

    #[tokio::test]
    async fn the_handler_answers_its_own_endpoints_and_forwards_the_rest() {
        // Nothing is resolved yet, so there is nowhere to forward to.
        let balancer = Balancer::new(&settings("127.0.0.1:1"));
        let (status, body) = call(&balancer, "GET", "/balancer/health").await;
        assert_eq!(status, 200);
        assert_eq!(body["nodes_total"], 0);
        let (status, body) = call(&balancer, "GET", "/events").await;
        assert_eq!(status, 503);
        assert_eq!(body["error"], "no_healthy_nodes");
        let (status, body) = call(&balancer, "DELETE", "/balancer/nodes").await;
        assert_eq!(status, 405);
        assert_eq!(body["error"], "method_not_allowed");
    }
}
