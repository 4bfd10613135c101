//! The JSON bodies of the HTTP API, shared by the node that writes them and the generator
//! and tests that read them. Converted from the domain types at the edge.

use serde::{Deserialize, Serialize};

use crate::command::DecisionError;
use crate::domain::{self, CustomerId, EventSummary, HoldView, Purchase, SoldTicket, Ticket};
use crate::inventory::Page;
use crate::secret::Secret;

/// The header every node response carries, naming the node that served it.
pub const NODE_HEADER: &str = "x-node";
/// The header that makes `POST /purchases` safe to retry.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The header a buyer presents their purchase's or hold's secret in.
pub const SECRET_HEADER: &str = "x-ticket-secret";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketBody {
    pub id: u64,
    pub event: String,
    pub price_cents: u64,
    pub sold: bool,
    pub status: TicketStatus,
}

/// Whether a ticket can be bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TicketStatus {
    Available,
    Held,
    Sold,
}

impl From<domain::TicketStatus> for TicketStatus {
    fn from(status: domain::TicketStatus) -> Self {
        match status {
            domain::TicketStatus::Available => Self::Available,
            domain::TicketStatus::Held => Self::Held,
            domain::TicketStatus::Sold => Self::Sold,
        }
    }
}

/// One page of a listing (`GET /tickets`, `GET /purchases` with `after` or `limit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageBody<T, K> {
    pub items: Vec<T>,
    /// What to pass as `after` for the next page; null on the last.
    pub next: Option<K>,
}

impl<T, K> PageBody<T, K> {
    /// Converts a page of domain items with `f`.
    pub fn from_page<D>(page: Page<D, K>, f: impl FnMut(&D) -> T) -> Self {
        Self {
            items: page.items.iter().map(f).collect(),
            next: page.next,
        }
    }
}

impl TicketBody {
    /// A ticket with its status at the time of reading (`Inventory::ticket_status`).
    pub fn with_status(t: &Ticket, status: domain::TicketStatus) -> Self {
        Self {
            id: t.id,
            event: t.event.to_string(),
            price_cents: t.price_cents,
            sold: t.sold,
            status: status.into(),
        }
    }
}

/// A ticket as if no hold existed (`sold` or `available`); use
/// [`TicketBody::with_status`] to show holds.
impl From<&Ticket> for TicketBody {
    fn from(t: &Ticket) -> Self {
        let status = if t.sold {
            domain::TicketStatus::Sold
        } else {
            domain::TicketStatus::Available
        };
        Self::with_status(t, status)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBody {
    pub event: String,
    pub total: u64,
    pub available: u64,
    pub sold: u64,
    pub held: u64,
    pub min_price_cents: u64,
    pub max_price_cents: u64,
    /// The per-customer limit; absent when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_customer: Option<u32>,
}

impl From<&EventSummary> for EventBody {
    fn from(s: &EventSummary) -> Self {
        Self {
            event: s.event.to_string(),
            total: s.total,
            available: s.available,
            sold: s.sold,
            held: s.held,
            min_price_cents: s.min_price_cents,
            max_price_cents: s.max_price_cents,
            max_per_customer: s.max_per_customer,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchasedTicketBody {
    pub id: u64,
    pub price_cents: u64,
}

/// A purchase as the API shows it. `customer` and `secret` are filled only where the
/// contract allows (see [`DecidedBody`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseBody {
    pub purchase_id: String,
    pub event: String,
    pub quantity: u32,
    pub tickets: Vec<PurchasedTicketBody>,
    pub total_cents: u64,
    pub node: String,
    pub created_at: String,
    /// Personal data: only in the 201 answer and its repeats, and for its secret's or the
    /// operator's holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    /// The hold it confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<String>,
    /// Only in the 201 answer and an idempotent repeat of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// What the bodies of a purchase and a hold share: their tickets, and a `customer` and
/// `secret` shown only where the contract allows (the public view leaves both out).
pub trait DecidedBody: Sized {
    fn tickets(&self) -> &[PurchasedTicketBody];

    /// The body's `customer` and `secret`.
    fn private_fields(&mut self) -> (&mut Option<String>, &mut Option<String>);

    fn ticket_ids(&self) -> Vec<u64> {
        self.tickets().iter().map(|t| t.id).collect()
    }

    /// Adds the order's customer, for an answer that may show it.
    fn with_customer(mut self, customer: Option<&CustomerId>) -> Self {
        *self.private_fields().0 = customer.map(CustomerId::to_string);
        self
    }

    /// Adds the secret to answer (a creation and its repeats).
    fn with_secret(mut self, secret: Option<&Secret>) -> Self {
        *self.private_fields().1 = secret.map(|s| s.as_str().to_owned());
        self
    }
}

fn ticket_bodies(tickets: &[SoldTicket]) -> Vec<PurchasedTicketBody> {
    tickets
        .iter()
        .map(|t| PurchasedTicketBody {
            id: t.id,
            price_cents: t.price_cents,
        })
        .collect()
}

/// The public view: no customer, no secret.
impl From<&Purchase> for PurchaseBody {
    fn from(p: &Purchase) -> Self {
        Self {
            purchase_id: p.purchase_id.clone(),
            event: p.event.to_string(),
            quantity: p.quantity.get(),
            tickets: ticket_bodies(&p.tickets),
            total_cents: p.total_cents,
            node: p.node.clone(),
            created_at: p.created_at.to_string(),
            customer: None,
            hold_id: p.hold_id.clone(),
            cancelled_at: p.cancelled.as_ref().map(|c| c.at.to_string()),
            secret: None,
        }
    }
}

impl PurchaseBody {
    /// Whether the purchase still stands (not cancelled).
    pub fn is_live(&self) -> bool {
        self.cancelled_at.is_none()
    }
}

/// A hold as the API shows it; `customer` and `secret` as for a purchase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldBody {
    pub hold_id: String,
    pub event: String,
    pub quantity: u32,
    pub tickets: Vec<PurchasedTicketBody>,
    pub total_cents: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    pub node: String,
    pub created_at: String,
    pub expires_at: String,
    pub status: HoldStatus,
    /// With `confirmed`: the purchase it became.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purchase_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// What became of a hold, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldStatus {
    Held,
    Confirmed,
    Released,
    Expired,
}

impl From<&domain::HoldStatus> for HoldStatus {
    fn from(status: &domain::HoldStatus) -> Self {
        match status {
            domain::HoldStatus::Held => Self::Held,
            domain::HoldStatus::Confirmed { .. } => Self::Confirmed,
            domain::HoldStatus::Released => Self::Released,
            domain::HoldStatus::Expired => Self::Expired,
        }
    }
}

/// The public view: no customer, no secret.
impl From<&HoldView> for HoldBody {
    fn from(view: &HoldView) -> Self {
        let h = &view.hold;
        Self {
            hold_id: h.hold_id.clone(),
            event: h.event.to_string(),
            quantity: h.tickets.len() as u32,
            tickets: ticket_bodies(&h.tickets),
            total_cents: h.total_cents,
            customer: None,
            node: h.node.clone(),
            created_at: h.created_at.to_string(),
            expires_at: h.expires_at.to_string(),
            status: (&view.status).into(),
            purchase_id: match &view.status {
                domain::HoldStatus::Confirmed { purchase_id } => Some(purchase_id.clone()),
                _ => None,
            },
            secret: None,
        }
    }
}

/// Implements [`DecidedBody`] for bodies with `tickets`, `customer` and `secret` fields.
macro_rules! decided_body {
    ($($body:ty),*) => {$(
        impl DecidedBody for $body {
            fn tickets(&self) -> &[PurchasedTicketBody] {
                &self.tickets
            }

            fn private_fields(&mut self) -> (&mut Option<String>, &mut Option<String>) {
                (&mut self.customer, &mut self.secret)
            }
        }
    )*};
}

decided_body!(PurchaseBody, HoldBody);

/// The body of a purchase request as a client sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseRequestBody {
    pub event: String,
    pub quantity: u32,
}

/// The body of `POST /purchases` or `POST /holds` with every optional field of the box
/// office: `quantity` or `tickets`, `customer`, and for a hold `ttl_seconds`. Absent
/// fields are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderBody {
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tickets: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u32>,
}

/// The body of a node's `GET /health` 200: `{"status":"ok","node":ID}`, with
/// `"store":"slow"` added when the node itself is fine but the shared store did not answer
/// it in time (another process holds the store's lock, say): a balancer keeps such a node
/// in rotation, since every node shares that trouble.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthBody {
    pub status: String,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreHealth>,
}

/// The shared store as one node's health check found it, when not simply readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreHealth {
    /// Not read within the health check's short wait: busy elsewhere, not broken here.
    Slow,
}

/// Defines `ErrorCode` from one table of variant, wire code and HTTP status.
macro_rules! error_codes {
    ($($variant:ident => $code:literal, $status:literal;)*) => {
        /// Every error code of the API with the HTTP status it is answered with: the one
        /// table nodes, the balancer and test fakes answer from. A code is a stable machine
        /// name; the message beside it is for a person.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            /// Every code, in the table's order.
            pub const ALL: &[ErrorCode] = &[$(Self::$variant,)*];

            /// The code as it appears in the `error` field.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $code,)*
                }
            }

            /// The HTTP status answered with this code.
            pub const fn status(self) -> u16 {
                match self {
                    $(Self::$variant => $status,)*
                }
            }
        }
    };
}

error_codes! {
    BadRequest => "bad_request", 400;
    NotFound => "not_found", 404;
    MethodNotAllowed => "method_not_allowed", 405;
    RequestTimeout => "request_timeout", 408;
    PayloadTooLarge => "payload_too_large", 413;
    HeadersTooLarge => "headers_too_large", 431;
    UnsupportedMediaType => "unsupported_media_type", 415;
    UnknownEvent => "unknown_event", 404;
    UnknownTicket => "unknown_ticket", 404;
    UnknownPurchase => "unknown_purchase", 404;
    SoldOut => "sold_out", 409;
    IdempotencyKeyReused => "idempotency_key_reused", 422;
    TicketsUnavailable => "tickets_unavailable", 409;
    CustomerLimit => "customer_limit", 409;
    UnknownHold => "unknown_hold", 404;
    HoldExpired => "hold_expired", 409;
    HoldReleased => "hold_released", 409;
    HoldConfirmed => "hold_confirmed", 409;
    Forbidden => "forbidden", 403;
    StoreUnavailable => "store_unavailable", 503;
    NoHealthyNodes => "no_healthy_nodes", 503;
    NodesBusy => "nodes_busy", 503;
    BadGateway => "bad_gateway", 502;
    UpstreamTimeout => "upstream_timeout", 504;
    InternalError => "internal_error", 500;
}

/// A code equals its name, so tests can compare with the wire text.
impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every error response: a stable machine code and a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    /// With `sold_out`: how many tickets of the event are left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<u64>,
    /// With `tickets_unavailable`: the asked-for tickets that are sold or held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<Vec<u64>>,
    /// With `customer_limit`: how many more tickets the customer may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<u64>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: code.as_str().to_owned(),
            message: message.into(),
            available: None,
            unavailable: None,
            allowed: None,
        }
    }

    /// The body of a refused order: its code, its message and the extra field its code
    /// carries (`available`, `unavailable` or `allowed`).
    pub fn for_decision(err: &DecisionError) -> Self {
        let mut body = Self::new(err.code(), err.to_string());
        match err {
            DecisionError::SoldOut { available, .. } => body.available = Some(*available),
            DecisionError::TicketsUnavailable { unavailable, .. } => {
                body.unavailable = Some(unavailable.clone());
            }
            DecisionError::CustomerLimit { allowed, .. } => body.allowed = Some(*allowed),
            _ => {}
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_is_snake_case_with_a_client_or_server_error_status() {
        for code in ErrorCode::ALL {
            assert!((400..600).contains(&code.status()), "{code}");
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
        }
        assert_eq!(ErrorCode::SoldOut.status(), 409);
        assert_eq!(ErrorBody::new(ErrorCode::SoldOut, "m").error, "sold_out");
    }
}
