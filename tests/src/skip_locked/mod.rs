//! The baseline the PostgreSQL store is measured against: what a competent user would
//! write without this project. An HTTP server with the same `POST /purchases`,
//! `GET /events` and `GET /health` over a plain `tickets` table in PostgreSQL, one
//! transaction per purchase (`SELECT ... FOR UPDATE SKIP LOCKED LIMIT quantity`, then
//! `UPDATE`), idempotency keys honoured, on the same accept loop as the node.

pub mod db;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use shared::api::{
    ErrorBody, ErrorCode, HealthBody, IDEMPOTENCY_HEADER, NODE_HEADER, PurchaseRequestBody,
};
use shared::{EventName, IdempotencyKey, Quantity};

pub use db::{BaselineError, Order};

/// The largest request body read.
const MAX_BODY: usize = 64 * 1024;

/// One baseline server's state.
#[derive(Clone)]
pub struct Baseline {
    pool: Pool,
    node: Arc<str>,
    /// Makes purchase ids unique across instances and restarts: this process's start.
    boot: u128,
    next: Arc<AtomicU64>,
}

impl Baseline {
    /// A server with id `node` over the database at `url`, with up to `pool_size`
    /// connections.
    pub fn new(node: &str, url: &str, pool_size: usize) -> anyhow::Result<Self> {
        let config: tokio_postgres::Config = url.parse()?;
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager).max_size(pool_size).build()?;
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Ok(Self {
            pool,
            node: node.into(),
            boot,
            next: Arc::new(AtomicU64::new(1)),
        })
    }

    async fn answer(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, BaselineError> {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/health") => {
                db::ping(&self.pool).await?;
                Ok(json(
                    StatusCode::OK,
                    &HealthBody {
                        status: "ok".into(),
                        node: self.node.to_string(),
                        store: None,
                    },
                ))
            }
            (&Method::GET, "/events") => Ok(json(StatusCode::OK, &db::events(&self.pool).await?)),
            (&Method::POST, "/purchases") => self.purchase(request).await,
            _ => Ok(json(
                StatusCode::NOT_FOUND,
                &ErrorBody::new(
                    ErrorCode::NotFound,
                    "the baseline serves /health, /events and POST /purchases",
                ),
            )),
        }
    }

    async fn purchase(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, BaselineError> {
        let key = match request.headers().get(IDEMPOTENCY_HEADER) {
            Some(value) => {
                let text = value
                    .to_str()
                    .map_err(|_| BaselineError::BadRequest("bad Idempotency-Key".into()))?;
                IdempotencyKey::parse(text)
                    .map_err(|e| BaselineError::BadRequest(e.to_string()))?;
                Some(text.to_owned())
            }
            None => None,
        };
        let body = Limited::new(request.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| BaselineError::BadRequest(format!("unreadable body: {e}")))?
            .to_bytes();
        let asked: PurchaseRequestBody =
            serde_json::from_slice(&body).map_err(|e| BaselineError::BadRequest(e.to_string()))?;
        let event =
            EventName::parse(&asked.event).map_err(|e| BaselineError::BadRequest(e.to_string()))?;
        let quantity =
            Quantity::new(asked.quantity).map_err(|e| BaselineError::BadRequest(e.to_string()))?;
        let created = time::OffsetDateTime::now_utc();
        let order = Order {
            event: event.as_str(),
            quantity: quantity.get(),
            key: key.as_deref(),
            purchase_id: format!(
                "{}-{:x}-{}",
                self.node,
                self.boot,
                self.next.fetch_add(1, Ordering::Relaxed)
            ),
            node: &self.node,
            created_at: created
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        };
        match db::purchase(&self.pool, &order).await {
            Ok(purchase) => Ok(json(StatusCode::CREATED, &purchase)),
            // An event with no tickets at all is not one of the inventory's.
            Err(BaselineError::SoldOut { available: 0 })
                if !self.event_exists(order.event).await? =>
            {
                Err(BaselineError::UnknownEvent(order.event.to_owned()))
            }
            Err(err) => Err(err),
        }
    }

    async fn event_exists(&self, event: &str) -> Result<bool, BaselineError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM tickets WHERE event = $1)",
                &[&event],
            )
            .await?;
        Ok(row.get(0))
    }
}

impl serve::Handler for Baseline {
    type Body = Full<Bytes>;

    async fn handle(&self, request: Request<Incoming>, _peer: SocketAddr) -> Response<Self::Body> {
        let mut response = match self.answer(request).await {
            Ok(response) => response,
            Err(err) => error_response(&err),
        };
        if let Ok(node) = HeaderValue::from_str(&self.node) {
            response.headers_mut().insert(NODE_HEADER, node);
        }
        response
    }
}

/// The one place errors become answers, in the contract's JSON shape.
fn error_response(err: &BaselineError) -> Response<Full<Bytes>> {
    let code = match err {
        BaselineError::BadRequest(_) => ErrorCode::BadRequest,
        BaselineError::UnknownEvent(_) => ErrorCode::UnknownEvent,
        BaselineError::SoldOut { .. } => ErrorCode::SoldOut,
        BaselineError::KeyReused => ErrorCode::IdempotencyKeyReused,
        BaselineError::Database(cause) => {
            tracing::warn!(%cause, "database error");
            ErrorCode::StoreUnavailable
        }
    };
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = ErrorBody::new(code, err.to_string());
    if let BaselineError::SoldOut { available } = err {
        body.available = Some(*available);
    }
    json(status, &body)
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
