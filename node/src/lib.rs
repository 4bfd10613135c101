//! A ticket-selling node: the ticket API over HTTP, on the shared JSON store. Every node is
//! complete on its own; any number of them may serve the same data directory.

mod auth;
mod committer;
mod error;
mod health;
mod input;
mod metrics;
mod paging;
mod route;
mod routes;
pub mod settings;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::header::{CONTENT_LENGTH, HeaderValue};
use hyper::{Method, Request, Response};
use shared::api::NODE_HEADER;
use store::TicketStore;
use tokio::net::TcpListener;
use tracing::{debug, warn};

pub use error::ApiError;
pub use settings::NodeSettings;

use route::{Route, Unrouted};

/// The node's request handler: cheap to clone, one per connection.
#[derive(Clone)]
pub struct NodeService {
    id: Arc<str>,
    /// `id` as a header value, built once.
    id_header: HeaderValue,
    store: TicketStore,
    /// Queues purchases for group commit.
    committer: committer::Committer,
    settings: Arc<NodeSettings>,
    metrics: Arc<metrics::Metrics>,
    /// `GET /health`'s store read, one at a time.
    store_probe: Arc<health::StoreProbe>,
}

impl NodeService {
    /// Builds the service and starts its commit thread.
    pub fn new(settings: NodeSettings) -> Result<Self, ApiError> {
        Self::with_restart_delay(settings, committer::RESTART_DELAY)
    }

    fn with_restart_delay(
        settings: NodeSettings,
        restart_delay: Duration,
    ) -> Result<Self, ApiError> {
        let id_header = HeaderValue::from_str(&settings.id).map_err(|_| {
            ApiError::Internal(format!("node id {:?} is not a header value", settings.id))
        })?;
        let id: Arc<str> = Arc::from(settings.id.as_str());
        let store = settings
            .open_store()
            .map_err(|err| ApiError::Internal(err.to_string()))?;
        let metrics = Arc::new(metrics::Metrics::new(&settings.id));
        let committer = committer::Committer::start(
            store.clone(),
            Arc::clone(&id),
            Arc::clone(&metrics),
            restart_delay,
        )
        .map_err(|e| ApiError::Internal(format!("cannot start the commit thread: {e}")))?;
        Ok(Self {
            committer,
            id,
            id_header,
            store,
            settings: Arc::new(settings),
            metrics,
            store_probe: Arc::default(),
        })
    }

    /// Answers one request, whatever its body type; never fails, since every error becomes
    /// a JSON response. `HEAD` is answered as `GET` without the body.
    pub async fn call<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let (name, result) = match Route::parse(&method, &path) {
            Ok(route) => (route.name(), routes::dispatch(self, route, request).await),
            Err(Unrouted::NotFound) => {
                let err = ApiError::NotFound {
                    method: method.to_string(),
                    path: routes::shorten(&path),
                };
                ("unmatched", Err(err))
            }
            Err(Unrouted::MethodNotAllowed { name, allowed }) => {
                let err = ApiError::MethodNotAllowed {
                    method: method.to_string(),
                    path: routes::shorten(&path),
                    allowed,
                };
                (name, Err(err))
            }
        };
        let mut response = result.unwrap_or_else(ApiError::into_response);
        response
            .headers_mut()
            .insert(NODE_HEADER, self.id_header.clone());
        if method == Method::HEAD {
            response = without_body(response);
        }
        let status = response.status();
        let elapsed = started.elapsed();
        self.metrics.observe(name, status.as_u16(), elapsed);
        if status.is_server_error() {
            warn!(%method, %path, status = status.as_u16(), ?elapsed, "request failed");
        } else {
            debug!(%method, %path, status = status.as_u16(), ?elapsed, "request");
        }
        response
    }
}

/// The answer to `HEAD`: the `GET` answer's status and headers, with the length of the
/// body it would have had, and no body.
fn without_body(response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let (mut parts, body) = response.into_parts();
    let length = body.size_hint().exact().unwrap_or(0);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(length));
    Response::from_parts(parts, Full::new(Bytes::new()))
}

impl serve::Handler for NodeService {
    type Body = Full<Bytes>;

    async fn handle(&self, request: Request<Incoming>, _peer: SocketAddr) -> Response<Full<Bytes>> {
        self.call(request).await
    }
}

/// Serves the ticket API on `listener` until `shutdown` completes, then drains.
pub async fn run(
    listener: TcpListener,
    settings: NodeSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ApiError> {
    let limits = settings.server_limits();
    let service = NodeService::new(settings)?;
    // On the blocking pool: the store's calls block (files, or the PostgreSQL client).
    let store = service.store.clone();
    let first_read = tokio::task::spawn_blocking(move || store.read(|_| ())).await;
    if let Ok(Err(err)) = first_read {
        warn!(cause = %err, "the store is not usable yet; answering 503 until it is");
    }
    serve::run(listener, service, limits, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::assert_has;
    use http_body_util::BodyExt;

    fn service(dir: &std::path::Path, restart_delay: Duration) -> NodeService {
        cluster::seed_store(dir, &[("concert", 5, 100)]).expect("seed");
        let settings = NodeSettings {
            id: "n1".into(),
            data: Some(dir.to_path_buf()),
            ..NodeSettings::default()
        };
        NodeService::with_restart_delay(settings, restart_delay).expect("service")
    }

    fn request(method: &str, path: &str, body: &str) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request")
    }

    async fn call(node: &NodeService, method: &str, path: &str, body: &str) -> (u16, String) {
        send(node, request(method, path, body)).await
    }

    async fn send(node: &NodeService, request: Request<Full<Bytes>>) -> (u16, String) {
        let response = node.call(request).await;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.expect("body");
        (
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        )
    }

    const BUY: &str = r#"{"event":"concert","quantity":1}"#;

    const TOKEN: &str = "unit-test-operator-token";

    fn with_header(
        mut request: Request<Full<Bytes>>,
        name: &'static str,
        value: &str,
    ) -> Request<Full<Bytes>> {
        request
            .headers_mut()
            .insert(name, HeaderValue::from_str(value).expect("header value"));
        request
    }

    fn field(body: &str, name: &str) -> serde_json::Value {
        let value: serde_json::Value = serde_json::from_str(body).expect("JSON");
        value[name].clone()
    }

    #[tokio::test]
    async fn a_hold_answers_its_secret_once_and_changes_only_with_it_or_the_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        cluster::seed_store(dir.path(), &[("concert", 5, 100)]).expect("seed");
        let settings = NodeSettings {
            id: "n1".into(),
            data: Some(dir.path().to_path_buf()),
            admin_token: Some(settings::AdminToken::new(TOKEN)),
            ..NodeSettings::default()
        };
        let node = NodeService::new(settings).expect("service");
        let hold = r#"{"event":"concert","tickets":[2,3],"customer":"ada","ttl_seconds":60}"#;
        let (status, made) = call(&node, "POST", "/holds", hold).await;
        assert_eq!(status, 201, "{made}");
        let id = field(&made, "hold_id");
        let id = id.as_str().expect("an id");
        let secret = field(&made, "secret");
        let secret = secret.as_str().expect("a secret");
        assert_eq!(field(&made, "customer"), "ada");

        let path = format!("/holds/{id}");
        let (status, read) = call(&node, "GET", &path, "").await;
        assert_eq!(status, 200);
        assert!(!read.contains(secret) && !read.contains("ada"), "{read}");
        let (_, read) = send(
            &node,
            with_header(request("GET", &path, ""), "x-ticket-secret", secret),
        )
        .await;
        assert_eq!(field(&read, "customer"), "ada");

        // A change reads no body: none, `{}` or anything, with or without a content type.
        let other = r#"{"event":"concert","quantity":1}"#;
        let (_, other) = call(&node, "POST", "/holds", other).await;
        let other_id = field(&other, "hold_id");
        let release = Request::builder()
            .method("POST")
            .uri(format!(
                "/holds/{}/release",
                other_id.as_str().expect("an id")
            ))
            .header(
                "x-ticket-secret",
                field(&other, "secret").as_str().expect("a secret"),
            )
            .body(Full::new(Bytes::from_static(b"not json at all")))
            .expect("request");
        let (status, released) = send(&node, release).await;
        assert_eq!(
            (status, field(&released, "status")),
            (200, "released".into()),
            "{released}"
        );

        let confirm = format!("/holds/{id}/confirm");
        let (status, refused) = call(&node, "POST", &confirm, "").await;
        assert_eq!(
            (status, field(&refused, "error")),
            (403, "forbidden".into())
        );
        let wrong = with_header(
            request("POST", &confirm, ""),
            "authorization",
            "Bearer nope",
        );
        assert_eq!(send(&node, wrong).await.0, 403);
        let (_, tickets) = call(&node, "GET", "/tickets/2", "").await;
        assert_eq!(field(&tickets, "status"), "held");

        let bearer = format!("Bearer {TOKEN}");
        let right = with_header(request("POST", &confirm, ""), "authorization", &bearer);
        let (status, purchase) = send(&node, right).await;
        assert_eq!(status, 201, "{purchase}");
        assert_eq!(field(&purchase, "hold_id"), id);
        let (_, events) = call(&node, "GET", "/events/concert", "").await;
        assert_eq!(
            (field(&events, "sold"), field(&events, "held")),
            (2.into(), 0.into())
        );
        let (_, list) = call(&node, "GET", "/holds?customer=ada", "").await;
        assert_eq!(field(&list, "error"), "forbidden");
        let listed = with_header(
            request("GET", "/holds?customer=ada", ""),
            "authorization",
            &bearer,
        );
        let (status, list) = send(&node, listed).await;
        assert_eq!(status, 200, "{list}");
        assert!(
            list.contains(id) && list.contains("ada") && !list.contains(secret),
            "{list}"
        );
        // Each route is measured under its own name; held tickets have their gauge.
        let (_, metrics) = call(&node, "GET", "/metrics", "").await;
        assert_has(
            &metrics,
            &[
                "route=\"POST /holds\"",
                "route=\"GET /holds/{id}\"",
                "route=\"POST /holds/{id}/confirm\"",
                "route=\"GET /holds\"",
                "tickets_event_held{node=\"n1\",event=\"concert\"} 0",
            ],
        );
    }

    #[tokio::test]
    async fn a_node_whose_commit_thread_died_answers_503_on_health_until_it_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = service(dir.path(), Duration::from_secs(3600));
        assert_eq!(call(&node, "GET", "/health", "").await.0, 200);
        assert_eq!(call(&node, "POST", "/purchases", BUY).await.0, 201);
        node.committer.kill_for_test().await;
        let (status, body) = call(&node, "GET", "/health", "").await;
        assert_eq!(status, 503, "{body}");
        assert!(
            body.contains("store_unavailable") && body.contains("commit thread"),
            "{body}"
        );
        // HEAD says the same.
        assert_eq!(call(&node, "HEAD", "/health", "").await.0, 503);
    }

    /// `GET /health` as JSON.
    async fn health(node: &NodeService) -> (u16, serde_json::Value) {
        let (status, body) = call(node, "GET", "/health", "").await;
        (status, serde_json::from_str(&body).expect("JSON"))
    }

    #[tokio::test]
    async fn a_store_locked_elsewhere_is_slow_not_broken_and_an_unreadable_one_is_503() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = service(dir.path(), Duration::from_secs(3600));
        assert_eq!(
            health(&node).await,
            (200, serde_json::json!({"status": "ok", "node": "n1"}))
        );
        // Another process frozen while holding the store's lock (its lock wait is 5 s).
        let holder = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.path().join(store::LOCK_FILE))
            .expect("lock file");
        holder.lock().expect("lock taken");
        let slow = serde_json::json!({"status": "ok", "node": "n1", "store": "slow"});
        for _ in 0..3 {
            // The first check's read still waits: later ones answer without another.
            let started = Instant::now();
            assert_eq!(health(&node).await, (200, slow.clone()));
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{:?}",
                started.elapsed()
            );
        }
        holder.unlock().expect("unlock");
        // The waiting read goes through now; the checks say so once it has.
        let deadline = Instant::now() + Duration::from_secs(10);
        while health(&node).await.1 == slow {
            assert!(
                Instant::now() < deadline,
                "still slow after the lock was released"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(health(&node).await.0, 200);
        // A store that cannot be read at all is this node's failure to serve: 503.
        std::fs::write(dir.path().join(store::DATA_FILE), b"not a store").expect("corrupt");
        let (status, body) = health(&node).await;
        assert_eq!(
            (status, &body["error"]),
            (503, &serde_json::json!("store_unavailable"))
        );
    }

    #[tokio::test]
    async fn a_killed_commit_thread_is_restarted_and_the_node_sells_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = service(dir.path(), Duration::from_millis(10));
        node.committer.kill_for_test().await;
        let (status, body) = call(&node, "POST", "/purchases", BUY).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(call(&node, "GET", "/health", "").await.0, 200);
        assert_eq!(node.committer.restarts(), 1);
    }

    #[tokio::test]
    async fn head_has_the_get_status_headers_and_length_and_no_body() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = service(dir.path(), Duration::from_secs(1));
        for path in [
            "/events",
            "/events/concert",
            "/tickets/1",
            "/tickets/x",
            "/purchases",
            "/holds",
            "/holds?limit=1",
            "/holds/h-00000001",
            "/holds?customer=x",
        ] {
            let get = node.call(request("GET", path, "")).await;
            let head = node.call(request("HEAD", path, "")).await;
            assert_eq!(head.status(), get.status(), "{path}");
            let length = get.body().size_hint().exact().expect("a known length");
            assert_eq!(head.headers()[CONTENT_LENGTH], length.to_string(), "{path}");
            assert_eq!(
                head.headers()["content-type"],
                get.headers()["content-type"]
            );
            assert_eq!(head.body().size_hint().exact(), Some(0), "{path}");
        }
    }
}
