//! The ticket API's handlers: each validates its input, runs the store operation on the
//! blocking pool (reads) or queues it for the group commit (changes) and shapes the JSON
//! answer. `dispatch` sends a parsed `Route` to its one handler.
//!
//! Who sees what ("who may change what"): a `secret` only in the answer that created a
//! purchase or hold (and an idempotent repeat of it); a `customer` in that answer, in the
//! answer to a change (which needed the secret or the operator's token), on a read of one
//! item that carries its secret or the operator's token, and in listings for the token
//! only. Filtering by customer needs the token.

use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Body;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use shared::api::{
    DecidedBody, EventBody, HealthBody, HoldBody, PageBody, PurchaseBody, StoreHealth, TicketBody,
};
use shared::{
    Command, EventName, HoldView, Inventory, Order, Outcome, Page, Proof, Purchase, hold_number,
    purchase_number,
};

use crate::NodeService;
use crate::auth;
use crate::error::ApiError;
use crate::health::StoreState;
use crate::input;
use crate::paging::{self, Paging};
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
    let proof = || auth::proof(request.headers(), node.settings.admin_token.as_ref());
    match route {
        Route::Health => health(node).await,
        Route::Metrics => Ok(metrics(node).await),
        Route::Events => events(node).await,
        Route::Event(name) => event(node, &name).await,
        Route::Tickets => tickets(node, query.as_deref()).await,
        Route::Ticket(id) => ticket(node, &id).await,
        Route::CreatePurchase => create(node, request, Kind::Purchase).await,
        Route::ListPurchases => purchases(node, query.as_deref(), proof()?).await,
        Route::Purchase(id) => purchase(node, &id, proof()?).await,
        Route::CancelPurchase(id) => {
            let command = Command::Cancel {
                purchase_id: purchase_id(&id)?,
            };
            change(node, request, command, StatusCode::OK).await
        }
        Route::CreateHold => create(node, request, Kind::Hold).await,
        Route::ListHolds => holds(node, query.as_deref(), proof()?).await,
        Route::Hold(id) => hold(node, &id, proof()?).await,
        Route::ConfirmHold(id) => {
            let command = Command::Confirm {
                hold_id: hold_id(&id)?,
            };
            change(node, request, command, StatusCode::CREATED).await
        }
        Route::ReleaseHold(id) => {
            let command = Command::Release {
                hold_id: hold_id(&id)?,
            };
            change(node, request, command, StatusCode::OK).await
        }
    }
}

pub fn shorten(path: &str) -> String {
    path.chars().take(100).collect()
}

/// A path parameter, percent-decoded (kept as sent when that is not UTF-8).
fn decode(segment: &str) -> String {
    input::decode_segment(segment).unwrap_or_else(|| segment.to_owned())
}

/// The `{id}` of `/holds/{id}/...`: one that is not of the form `h-<number>` names no hold,
/// so it is answered at once, without queueing a change.
fn hold_id(segment: &str) -> Result<String, ApiError> {
    let id = decode(segment);
    match hold_number(&id) {
        Some(_) => Ok(id),
        None => Err(ApiError::UnknownHold(shorten(&id))),
    }
}

/// The `{id}` of `/purchases/{id}/cancel`, as `hold_id` does for holds.
fn purchase_id(segment: &str) -> Result<String, ApiError> {
    let id = decode(segment);
    match purchase_number(&id) {
        Some(_) => Ok(id),
        None => Err(ApiError::UnknownPurchase(shorten(&id))),
    }
}

fn json(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    serve::json::response(status, body)
}

/// Runs `op` on the current state with the store's clock: holds past their expiry at that
/// time read as expired, whether or not the log says so yet (no sweeper is needed). Inline
/// when the store can tell at once that its cached state is current (two `stat`s on the
/// file store), otherwise on the blocking pool, so file I/O and lock waits never stall the
/// async runtime.
async fn read_state<T: Send + 'static>(
    node: &NodeService,
    op: impl FnOnce(&Inventory, SystemTime) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let now = node.store.now();
    let op = match node.store.read_now(move |inv| op(inv, now)) {
        Ok(value) => return Ok(value),
        Err(op) => op,
    };
    let store = node.store.clone();
    tokio::task::spawn_blocking(move || store.read(op))
        .await
        .map_err(|e| ApiError::Internal(format!("store task failed: {e}")))?
        .map_err(ApiError::from)
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
    let events = read_state(node, |inv, now| inv.events_at(now)).await;
    let text = node.metrics.render(events.as_deref().ok());
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    response
}

/// The events' counts at this moment: holds past their expiry count as available,
/// whether or not the log says so yet.
async fn events(node: &NodeService) -> Result<HttpResponse, ApiError> {
    read_json(node, |inv, now| {
        inv.events_at(now)
            .iter()
            .map(EventBody::from)
            .collect::<Vec<_>>()
    })
    .await
}

/// Answers 200 with what `op` reads from the inventory, as JSON.
async fn read_json<T: Serialize + Send + 'static>(
    node: &NodeService,
    op: impl FnOnce(&Inventory, SystemTime) -> T + Send + 'static,
) -> Result<HttpResponse, ApiError> {
    let value = read_state(node, op).await?;
    Ok(json(StatusCode::OK, &value))
}

async fn event(node: &NodeService, segment: &str) -> Result<HttpResponse, ApiError> {
    let raw = input::decode_segment(segment).unwrap_or_else(|| segment.to_owned());
    // A name that cannot be valid names no event: 404, as for any unknown event.
    let name = EventName::parse(&raw).map_err(|_| ApiError::UnknownEvent(shorten(&raw)))?;
    let summary = read_state(node, move |inv, now| inv.event_at(&name, now).ok_or(name))
        .await?
        .map_err(|name| ApiError::UnknownEvent(name.to_string()))?;
    Ok(json(StatusCode::OK, &EventBody::from(&summary)))
}

async fn tickets(node: &NodeService, query: Option<&str>) -> Result<HttpResponse, ApiError> {
    let (filter, paging) = input::ticket_filter(query)?;
    read_json(node, move |inv, now| {
        Listing::of(
            paging,
            |after, limit| inv.page_tickets(&filter, after, limit),
            || inv.find_tickets(&filter),
            |t| TicketBody::with_status(t, inv.ticket_status(t, now)),
        )
    })
    .await
}

async fn ticket(node: &NodeService, segment: &str) -> Result<HttpResponse, ApiError> {
    let id = input::ticket_id(segment)?;
    let ticket = read_state(node, move |inv, now| {
        inv.ticket(id)
            .map(|t| TicketBody::with_status(t, inv.ticket_status(t, now)))
    })
    .await?
    .ok_or(ApiError::UnknownTicket(id))?;
    Ok(json(StatusCode::OK, &ticket))
}

/// What `POST /purchases` and `POST /holds` create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Purchase,
    Hold,
}

/// `POST /purchases` and `POST /holds`: reads and checks the body, queues the order for
/// the next group commit (`Committer::commit`) and answers 201 with what it created (or,
/// for a repeat with the same `Idempotency-Key`, created before), its secret and customer
/// included.
async fn create<B>(
    node: &NodeService,
    request: Request<B>,
    kind: Kind,
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
    let command = match kind {
        Kind::Purchase => Command::Purchase(input::parse_purchase(&bytes)?),
        Kind::Hold => Command::Hold(input::parse_hold(&bytes)?),
    };
    let outcome = decide(node, Order::new(command).with_key(key)).await?;
    Ok(answer(StatusCode::CREATED, &outcome))
}

/// `POST /holds/{id}/confirm`, `POST /holds/{id}/release`, `POST /purchases/{id}/cancel`:
/// queues the change with the request's proof (the store checks a secret against the
/// hash it keeps) and answers `status` with the purchase or hold as it now is. The body,
/// if any, is not read: these take none.
async fn change<B>(
    node: &NodeService,
    request: Request<B>,
    command: Command,
    status: StatusCode,
) -> Result<HttpResponse, ApiError> {
    let headers = request.headers();
    let key = input::idempotency_key(headers)?;
    let proof = auth::proof(headers, node.settings.admin_token.as_ref())?;
    let order = Order::new(command).with_key(key).with_proof(proof);
    let outcome = decide(node, order).await?;
    Ok(answer(status, &outcome))
}

/// Has the commit thread decide `order`, and counts the sales this node made.
async fn decide(node: &NodeService, order: Order) -> Result<Outcome, ApiError> {
    let committed =
        node.committer.commit(order).await.ok_or_else(|| {
            ApiError::Internal("the commit thread stopped before answering".into())
        })?;
    // First the store's failure, then the order's own refusal.
    let outcome = committed??;
    if let Outcome::Purchase(decided) = &outcome
        && decided.changed
        && decided.item.is_live()
    {
        node.metrics.purchase_committed(decided.item.tickets.len());
    }
    Ok(outcome)
}

/// The answer to a decided order: the purchase or hold with its customer (the asker made
/// it, or proved the right to change it) and the secret the decision answers, if any.
fn answer(status: StatusCode, outcome: &Outcome) -> HttpResponse {
    match outcome {
        Outcome::Purchase(decided) => {
            let body = PurchaseBody::from(&decided.item)
                .with_customer(decided.item.customer.as_ref())
                .with_secret(decided.secret.as_ref());
            json(status, &body)
        }
        Outcome::Hold(decided) => {
            let body = HoldBody::from(&decided.item)
                .with_customer(decided.item.hold.customer.as_ref())
                .with_secret(decided.secret.as_ref());
            json(status, &body)
        }
    }
}

/// A purchase as a reader sees it: with its customer only for its secret's or the
/// operator's holder.
fn purchase_body(purchase: &Purchase, proof: &Proof) -> PurchaseBody {
    let body = PurchaseBody::from(purchase);
    if proof.allows(purchase.access.secret.as_ref()) {
        body.with_customer(purchase.customer.as_ref())
    } else {
        body
    }
}

/// A hold as a reader sees it, as for a purchase.
fn hold_body(view: &HoldView, proof: &Proof) -> HoldBody {
    let body = HoldBody::from(view);
    if proof.allows(view.hold.access.secret.as_ref()) {
        body.with_customer(view.hold.customer.as_ref())
    } else {
        body
    }
}

/// Refuses a filter by customer unless the operator's token came with it, and returns what
/// a listing's items may show: only the operator sees customers there, as a secret is one
/// item's.
fn listing_proof(filtered: bool, proof: Proof) -> Result<Proof, ApiError> {
    if filtered && !proof.operator {
        return Err(ApiError::Forbidden(
            "listing by customer needs the operator's token (Authorization: Bearer <token>)",
        ));
    }
    Ok(Proof {
        secret: None,
        operator: proof.operator,
    })
}

/// A listing's answer: one page of it when paging was asked for, else all of it.
#[derive(Serialize)]
#[serde(untagged)]
enum Listing<B, K> {
    Page(PageBody<B, K>),
    All(Vec<B>),
}

impl<B, K> Listing<B, K> {
    /// Reads a page with `page` when `paging` asks for one, else everything with `all`, and
    /// shapes each item with `body`.
    fn of<D>(
        paging: Option<Paging>,
        page: impl FnOnce(Option<u64>, usize) -> Page<D, K>,
        all: impl FnOnce() -> Vec<D>,
        body: impl FnMut(&D) -> B,
    ) -> Self {
        match paging {
            Some(Paging { after, limit }) => {
                Self::Page(PageBody::from_page(page(after, limit), body))
            }
            None => Self::All(all().iter().map(body).collect()),
        }
    }
}

async fn purchases(
    node: &NodeService,
    query: Option<&str>,
    proof: Proof,
) -> Result<HttpResponse, ApiError> {
    let (filter, paging) = input::order_filter(query, paging::purchase_paging)?;
    let proof = listing_proof(filter.customer.is_some(), proof)?;
    read_json(node, move |inv, _| {
        Listing::of(
            paging,
            |after, limit| inv.page_purchases_by(&filter, after, limit),
            || inv.find_purchases_by(&filter),
            |p| purchase_body(p, &proof),
        )
    })
    .await
}

async fn purchase(
    node: &NodeService,
    segment: &str,
    proof: Proof,
) -> Result<HttpResponse, ApiError> {
    let id = decode(segment);
    let found = read_state(node, move |inv, _| {
        inv.purchase(&id)
            .map(|p| purchase_body(p, &proof))
            .ok_or(id)
    })
    .await?
    .map_err(|id| ApiError::UnknownPurchase(shorten(&id)))?;
    Ok(json(StatusCode::OK, &found))
}

async fn holds(
    node: &NodeService,
    query: Option<&str>,
    proof: Proof,
) -> Result<HttpResponse, ApiError> {
    let (filter, paging) = input::order_filter(query, paging::hold_paging)?;
    let proof = listing_proof(filter.customer.is_some(), proof)?;
    read_json(node, move |inv, now| {
        Listing::of(
            paging,
            |after, limit| inv.page_holds(&filter, after, limit, now),
            || inv.find_holds(&filter, now),
            |h| hold_body(h, &proof),
        )
    })
    .await
}

async fn hold(node: &NodeService, segment: &str, proof: Proof) -> Result<HttpResponse, ApiError> {
    let id = hold_id(segment)?;
    let found = read_state(node, move |inv, now| {
        inv.hold(&id, now)
            .map(|view| hold_body(&view, &proof))
            .ok_or(id)
    })
    .await?
    .map_err(|id| ApiError::UnknownHold(shorten(&id)))?;
    Ok(json(StatusCode::OK, &found))
}
