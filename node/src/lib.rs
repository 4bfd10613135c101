//! A ticket-selling node: the ticket API over HTTP, on the shared JSON store. Every node is
//! complete on its own; any number of them may serve the same data directory.

mod committer;
mod error;
mod input;
mod metrics;
mod paging;
mod routes;
pub mod settings;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use shared::api::NODE_HEADER;
use store::TicketStore;
use tokio::net::TcpListener;
use tracing::{debug, warn};

pub use error::ApiError;
pub use settings::NodeSettings;

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
}

impl NodeService {
    pub fn new(settings: NodeSettings) -> Result<Self, ApiError> {
        let id_header = HeaderValue::from_str(&settings.id).map_err(|_| {
            ApiError::Internal(format!("node id {:?} is not a header value", settings.id))
        })?;
        let id: Arc<str> = Arc::from(settings.id.as_str());
        let store = TicketStore::new(&settings.data, settings.lock_timeout());
        let metrics = Arc::new(metrics::Metrics::new(&settings.id));
        Ok(Self {
            committer: committer::Committer::start(
                store.clone(),
                Arc::clone(&id),
                Arc::clone(&metrics),
            ),
            id,
            id_header,
            store,
            settings: Arc::new(settings),
            metrics,
        })
    }

    /// Answers one request; never fails, since every error becomes a JSON response.
    pub async fn call(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let (route, result) = routes::dispatch(self, request).await;
        let mut response = match result {
            Ok(response) => response,
            Err(err) => routes::error_response(&err),
        };
        response
            .headers_mut()
            .insert(NODE_HEADER, self.id_header.clone());
        let status = response.status();
        let elapsed = started.elapsed();
        self.metrics.observe(route, status.as_u16(), elapsed);
        if status.is_server_error() {
            warn!(%method, %path, status = status.as_u16(), ?elapsed, "request failed");
        } else {
            debug!(%method, %path, status = status.as_u16(), ?elapsed, "request");
        }
        response
    }
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
    if let Err(err) = service.store.read(|_| ()) {
        warn!(cause = %err, "the store is not usable yet; answering 503 until it is");
    }
    serve::run(listener, service, limits, shutdown).await;
    Ok(())
}
