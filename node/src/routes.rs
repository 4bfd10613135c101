//! The ticket API's handlers: each validates its input, runs the store operation on the
//! blocking pool and shapes the JSON answer. `dispatch` sends a parsed `Route` to its one
//! handler.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Body;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use shared::api::{EventBody, HealthBody, PageBody, PurchaseBody, StoreHealth, TicketBody};
use shared::{EventName, Inventory, PurchaseOutcome, PurchaseRequest};
use store::{PurchaseOrder, TicketStore};

use crate::NodeService;
use crate::error::ApiError;
use crate::health::StoreState;
use crate::input;
use crate::paging::Paging;
use crate::route::Route;

pub type HttpResponse = Response<Full<Bytes>>;

/// Answers `request` on `route`.
pub async fn dispatch<B>(
    node: &NodeService,
    route: Route,
    request: Request<B>,
) -> Result<HttpResponse, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let query = request.uri().query().map(str::to_owned);
    match route {
        Route::Health => health(node).await,
        Route::Metrics => Ok(metrics(node).await),
        Route::Events => events(node).await,
        Route::Event(name) => event(node, &name).await,
        Route::Tickets => tickets(node, query.as_deref()).await,
        Route::Ticket(id) => ticket(node, &id).await,
        Route::CreatePurchase => create_purchase(node, request).await,
        Route::ListPurchases => purchases(node, query.as_deref()).await,
        Route::Purchase(id) => purchase(node, &id).await,
    }
}

pub fn shorten(path: &str) -> String {
    path.chars().take(100).collect()
}

fn json(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    serve::json::response(status, body)
}

/// Runs a store operation on the blocking pool, so file I/O and lock waits never stall
/// the async runtime.
async fn with_store<T: Send + 'static>(
    node: &NodeService,
    op: impl FnOnce(&TicketStore) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = node.store.clone();
    tokio::task::spawn_blocking(move || op(&store))
        .await
        .map_err(|e| ApiError::Internal(format!("store task failed: {e}")))?
}

/// 200 when the node can serve: with `"store":"slow"` when the shared store did not answer
/// within the short wait (busy elsewhere, every node's trouble, not this one's); 503 when
/// the store cannot be read at all or purchases are not being committed (see `health`).
async fn health(node: &NodeService) -> Result<HttpResponse, ApiError> {
    let store = node
        .store_probe
        .check(&node.store, crate::health::STORE_WAIT)
        .await?;
    if !node.committer.running() {
        return Err(ApiError::CommitterDown);
    }
    let body = HealthBody {
        status: "ok".into(),
        node: node.id.to_string(),
        store: (store == StoreState::Slow).then_some(StoreHealth::Slow),
    };
    Ok(json(StatusCode::OK, &body))
}

/// The metrics, with the per-event stock read from the store's state now (O(events)); a
/// store that cannot be read leaves those gauges out rather than failing the scrape.
async fn metrics(node: &NodeService) -> HttpResponse {
    let events = with_store(node, |store| Ok(store.read(|inv| inv.events())?)).await;
    let text = node.metrics.render(events.as_deref().ok());
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    response
}

async fn events(node: &NodeService) -> Result<HttpResponse, ApiError> {
    read_json(node, |inv| {
        inv.events().iter().map(EventBody::from).collect::<Vec<_>>()
    })
    .await
}

/// Answers 200 with what `op` reads from the inventory, as JSON.
async fn read_json<T: Serialize + Send + 'static>(
    node: &NodeService,
    op: impl FnOnce(&Inventory) -> T + Send + 'static,
) -> Result<HttpResponse, ApiError> {
    let value = with_store(node, move |store| Ok(store.read(op)?)).await?;
    Ok(json(StatusCode::OK, &value))
}

async fn event(node: &NodeService, segment: &str) -> Result<HttpResponse, ApiError> {
    let raw = input::decode_segment(segment).unwrap_or_else(|| segment.to_owned());
    // A name that cannot be valid names no event: 404, as for any unknown event.
    let name = EventName::parse(&raw).map_err(|_| ApiError::UnknownEvent(shorten(&raw)))?;
    let summary = with_store(node, move |store| {
        store
            .read(|inv| inv.event(&name))?
            .ok_or_else(|| ApiError::UnknownEvent(name.to_string()))
    })
    .await?;
    Ok(json(StatusCode::OK, &EventBody::from(&summary)))
}

async fn tickets(node: &NodeService, query: Option<&str>) -> Result<HttpResponse, ApiError> {
    let (filter, paging) = input::ticket_filter(query)?;
    match paging {
        Some(Paging { after, limit }) => {
            read_json(node, move |inv| {
                let page = inv.page_tickets(&filter, after, limit);
                PageBody::from_page(page, |t| TicketBody::from(t))
            })
            .await
        }
        None => {
            read_json(node, move |inv| {
                let found = inv.find_tickets(&filter);
                found.iter().map(TicketBody::from).collect::<Vec<_>>()
            })
            .await
        }
    }
}

async fn ticket(node: &NodeService, segment: &str) -> Result<HttpResponse, ApiError> {
    let id = input::ticket_id(segment)?;
    let ticket = with_store(node, move |store| {
        store
            .read(|inv| inv.ticket(id).map(TicketBody::from))?
            .ok_or(ApiError::UnknownTicket(id))
    })
    .await?;
    Ok(json(StatusCode::OK, &ticket))
}

/// `POST /purchases`: reads and checks the body, queues the purchase for the next group
/// commit (`Committer::commit`) and answers its outcome.
async fn create_purchase<B>(
    node: &NodeService,
    request: Request<B>,
) -> Result<HttpResponse, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = request.into_parts();
    let key = input::idempotency_key(&parts.headers)?;
    let bytes = input::read_json_body(
        &parts.headers,
        body,
        node.settings.max_body_bytes,
        node.settings.body_timeout,
    )
    .await?;
    let input = input::parse_purchase(&bytes)?;
    let order = PurchaseOrder {
        request: PurchaseRequest::new(input.event, input.quantity),
        key,
    };
    let committed =
        node.committer.commit(order).await.ok_or_else(|| {
            ApiError::Internal("the commit thread stopped before answering".into())
        })?;
    // First the store's failure, then the purchase's own refusal.
    let outcome = committed??;
    if let PurchaseOutcome::Created(purchase) = &outcome {
        node.metrics.purchase_committed(purchase.tickets.len());
    }
    let body = PurchaseBody::from(outcome.purchase());
    Ok(json(StatusCode::CREATED, &body))
}

async fn purchases(node: &NodeService, query: Option<&str>) -> Result<HttpResponse, ApiError> {
    let (event, paging) = input::purchase_filter(query)?;
    match paging {
        Some(Paging { after, limit }) => {
            read_json(node, move |inv| {
                let page = inv.page_purchases(event.as_ref(), after, limit);
                PageBody::from_page(page, |p| PurchaseBody::from(p))
            })
            .await
        }
        None => {
            read_json(node, move |inv| {
                let found = inv.find_purchases(event.as_ref());
                found.iter().map(PurchaseBody::from).collect::<Vec<_>>()
            })
            .await
        }
    }
}

async fn purchase(node: &NodeService, segment: &str) -> Result<HttpResponse, ApiError> {
    let id = input::decode_segment(segment).unwrap_or_else(|| segment.to_owned());
    let found = with_store(node, move |store| {
        store
            .read(|inv| inv.purchase(&id).map(PurchaseBody::from))?
            .ok_or_else(|| ApiError::UnknownPurchase(shorten(&id)))
    })
    .await?;
    Ok(json(StatusCode::OK, &found))
}
