//! The JSON bodies of the HTTP API, shared by the node that writes them and the generator
//! and tests that read them. Converted from the domain types at the edge.

use serde::{Deserialize, Serialize};

use crate::domain::{EventSummary, Purchase, Ticket};
use crate::inventory::Page;

/// The header every node response carries, naming the node that served it.
pub const NODE_HEADER: &str = "x-node";
/// The header that makes `POST /purchases` safe to retry.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketBody {
    pub id: u64,
    pub event: String,
    pub price_cents: u64,
    pub sold: bool,
    pub status: TicketStatus,
}

/// Whether a ticket can be bought (`held` joins these with holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TicketStatus {
    Available,
    Sold,
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

impl From<&Ticket> for TicketBody {
    fn from(t: &Ticket) -> Self {
        Self {
            id: t.id,
            event: t.event.to_string(),
            price_cents: t.price_cents,
            sold: t.sold,
            status: if t.sold {
                TicketStatus::Sold
            } else {
                TicketStatus::Available
            },
        }
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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchasedTicketBody {
    pub id: u64,
    pub price_cents: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseBody {
    pub purchase_id: String,
    pub event: String,
    pub quantity: u32,
    pub tickets: Vec<PurchasedTicketBody>,
    pub total_cents: u64,
    pub node: String,
    pub created_at: String,
}

impl From<&Purchase> for PurchaseBody {
    fn from(p: &Purchase) -> Self {
        Self {
            purchase_id: p.purchase_id.clone(),
            event: p.event.to_string(),
            quantity: p.quantity.get(),
            tickets: p
                .tickets
                .iter()
                .map(|t| PurchasedTicketBody {
                    id: t.id,
                    price_cents: t.price_cents,
                })
                .collect(),
            total_cents: p.total_cents,
            node: p.node.clone(),
            created_at: p.created_at.clone(),
        }
    }
}

/// The body of a purchase request as a client sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseRequestBody {
    pub event: String,
    pub quantity: u32,
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
    UnsupportedMediaType => "unsupported_media_type", 415;
    UnknownEvent => "unknown_event", 404;
    UnknownTicket => "unknown_ticket", 404;
    UnknownPurchase => "unknown_purchase", 404;
    SoldOut => "sold_out", 409;
    IdempotencyKeyReused => "idempotency_key_reused", 422;
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
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: code.as_str().to_owned(),
            message: message.into(),
            available: None,
        }
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
