//! The ticket API: matches a request to its route, validates its input, runs the store
//! operation on the blocking pool and shapes the JSON answer.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use shared::api::{EventBody, HealthBody, PageBody, PurchaseBody, TicketBody};
use shared::{EventName, PurchaseOutcome, PurchaseRequest};
use store::{PurchaseOrder, TicketStore};

use crate::NodeService;
use crate::error::ApiError;
use crate::input;
use crate::paging::Paging;

pub type HttpResponse = Response<Full<Bytes>>;

/// A route's name for metrics and logs, and its answer.
pub type Routed = (&'static str, Result<HttpResponse, ApiError>);

pub async fn dispatch(node: &NodeService, request: Request<Incoming>) -> Routed {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = request.method().clone();
    let (route, allowed) = match segments.as_slice() {
        ["health"] => ("GET /health", "GET"),
        ["metrics"] => ("GET /metrics", "GET"),
        ["events"] => ("GET /events", "GET"),
        ["events", _] => ("GET /events/{event}", "GET"),
        ["tickets"] => ("GET /tickets", "GET"),
        ["tickets", _] => ("GET /tickets/{id}", "GET"),
        ["purchases"] if method == Method::POST => ("POST /purchases", "GET, POST"),
        ["purchases"] => ("GET /purchases", "GET, POST"),
        ["purchases", _] => ("GET /purchases/{id}", "GET"),
        _ => {
            let err = ApiError::NotFound {
                method: method.to_string(),
                path: shorten(&path),
            };
            return ("unmatched", Err(err));
        }
    };
    if !allowed.split(", ").any(|m| m == method.as_str()) {
        let err = ApiError::MethodNotAllowed {
            method: method.to_string(),
            path: shorten(&path),
            allowed,
        };
        return (route, Err(err));
    }
    let result = match (route, segments.get(1).copied()) {
        ("GET /health", _) => health(node).await,
        ("GET /metrics", _) => Ok(metrics(node).await),
        ("GET /events", _) => events(node).await,
        ("GET /events/{event}", Some(name)) => event(node, name).await,
        ("GET /tickets", _) => tickets(node, request.uri().query()).await,
        ("GET /tickets/{id}", Some(id)) => ticket(node, id).await,
        ("POST /purchases", _) => create_purchase(node, request).await,
        ("GET /purchases", _) => purchases(node, request.uri().query()).await,
        ("GET /purchases/{id}", Some(id)) => purchase(node, id).await,
        _ => Err(ApiError::Internal(format!("route {route} has no handler"))),
    };
    (route, result)
}

fn shorten(path: &str) -> String {
    path.chars().take(100).collect()
}

pub fn json(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    // Serialising these plain structs cannot fail; an empty body would still be answered.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub fn error_response(err: &ApiError) -> HttpResponse {
    let (status, body) = err.to_response_parts();
    let mut response = json(status, &body);
    if let ApiError::MethodNotAllowed { allowed, .. } = err {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allowed));
    }
    response
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

async fn health(node: &NodeService) -> Result<HttpResponse, ApiError> {
    with_store(node, |store| Ok(store.read(|_| ())?)).await?;
    let body = HealthBody {
        status: "ok".into(),
        node: node.id.to_string(),
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
    let events = with_store(node, |store| {
        Ok(store.read(|inv| inv.events().iter().map(EventBody::from).collect::<Vec<_>>())?)
    })
    .await?;
    Ok(json(StatusCode::OK, &events))
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
    if let Some(Paging { after, limit }) = paging {
        let page = with_store(node, move |store| {
            Ok(store.read(|inv| {
                PageBody::from_page(inv.page_tickets(&filter, after, limit), |t| {
                    TicketBody::from(t)
                })
            })?)
        })
        .await?;
        return Ok(json(StatusCode::OK, &page));
    }
    let tickets = with_store(node, move |store| {
        Ok(store.read(|inv| {
            inv.find_tickets(&filter)
                .iter()
                .map(TicketBody::from)
                .collect::<Vec<_>>()
        })?)
    })
    .await?;
    Ok(json(StatusCode::OK, &tickets))
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

async fn create_purchase(
    node: &NodeService,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let (parts, body) = request.into_parts();
    let key = input::idempotency_key(&parts.headers)?;
    let bytes = input::read_json_body(
        &parts.headers,
        body,
        node.settings.max_body_bytes,
        node.settings.body_timeout(),
    )
    .await?;
    let input = input::parse_purchase(&bytes)?;
    let order = PurchaseOrder {
        request: PurchaseRequest::new(input.event, input.quantity),
        key,
    };
    let committed = node
        .committer
        .commit(order)
        .await
        .ok_or_else(|| ApiError::Internal("the commit thread has stopped".into()))?;
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
    if let Some(Paging { after, limit }) = paging {
        let page = with_store(node, move |store| {
            Ok(store.read(|inv| {
                let page = inv.page_purchases(event.as_ref(), after, limit);
                PageBody::from_page(page, |p| PurchaseBody::from(p))
            })?)
        })
        .await?;
        return Ok(json(StatusCode::OK, &page));
    }
    let purchases = with_store(node, move |store| {
        Ok(store.read(|inv| {
            inv.find_purchases(event.as_ref())
                .iter()
                .map(PurchaseBody::from)
                .collect::<Vec<_>>()
        })?)
    })
    .await?;
    Ok(json(StatusCode::OK, &purchases))
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
