//! The API's answers as the generator reads them. Purchases and holds are the API's own
//! bodies (`shared::api`), read from outside through HTTP like any client's; tickets and
//! events are the generator's own reading of the contract (shared/spec/api.md), because
//! it also reads nodes from before the box office: fields they do not send take their
//! defaults. Fields the contract adds later are ignored.

use serde::{Deserialize, Serialize};

pub use shared::api::{
    DecidedBody, HoldBody as Hold, HoldStatus, PurchaseBody as Purchase,
    PurchasedTicketBody as PricedTicket, SECRET_HEADER, TicketStatus,
};

/// A ticket of `GET /tickets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: u64,
    pub event: String,
    pub price_cents: u64,
    /// True for a sold ticket only (a held one is not sold).
    pub sold: bool,
    /// Absent from a node before the box office: then `sold` says it all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TicketStatus>,
}

impl Ticket {
    /// The ticket's status, from `sold` when the node does not send one.
    pub fn status(&self) -> TicketStatus {
        self.status.unwrap_or(if self.sold {
            TicketStatus::Sold
        } else {
            TicketStatus::Available
        })
    }
}

/// An entry of `GET /events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub event: String,
    pub total: u64,
    pub available: u64,
    pub sold: u64,
    #[serde(default)]
    pub held: u64,
    pub min_price_cents: u64,
    pub max_price_cents: u64,
    /// The per-customer limit, when the event has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_customer: Option<u64>,
}

/// The number in an id like `p-00000042` or `h-00000007`: the order the store decided
/// them in, within their kind.
pub fn id_number(id: &str) -> Option<u64> {
    let (prefix, digits) = id.split_once('-')?;
    if prefix.is_empty() || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The request body of `POST /purchases` and `POST /holds`: a count or named seats, an
/// optional customer, and for a hold an optional time to live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderRequest {
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tickets: Option<Vec<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_before_the_box_office_still_reads() {
        let t: Ticket = serde_json::from_str(r#"{"id":1,"event":"e","price_cents":5,"sold":true}"#)
            .expect("reads");
        assert_eq!(t.status(), TicketStatus::Sold);
        let e: Event = serde_json::from_str(
            r#"{"event":"e","total":3,"available":3,"sold":0,"min_price_cents":1,"max_price_cents":2}"#,
        )
        .expect("reads");
        assert_eq!((e.held, e.max_per_customer), (0, None));
    }

    #[test]
    fn a_hold_and_a_cancelled_purchase_read_with_their_new_fields() {
        let h: Hold = serde_json::from_str(
            r#"{"hold_id":"h-00000003","event":"e","quantity":1,"tickets":[{"id":4,"price_cents":5}],
            "total_cents":5,"customer":"ann","node":"n1","created_at":"2024-01-01T00:00:00.000Z",
            "expires_at":"2024-01-01T00:10:00.000Z","status":"confirmed","purchase_id":"p-00000009",
            "secret":"abc"}"#,
        )
        .expect("reads");
        assert_eq!(h.status, HoldStatus::Confirmed);
        assert_eq!(h.ticket_ids(), [4]);
        let p: Purchase = serde_json::from_str(
            r#"{"purchase_id":"p-00000009","event":"e","quantity":1,"tickets":[{"id":4,"price_cents":5}],
            "total_cents":5,"node":"n1","created_at":"t","hold_id":"h-00000003","cancelled_at":"u"}"#,
        )
        .expect("reads");
        assert!(!p.is_live());
        assert_eq!(p.hold_id.as_deref(), Some("h-00000003"));
    }

    #[test]
    fn ids_are_numbered_after_their_dash() {
        assert_eq!(id_number("p-00000042"), Some(42));
        assert_eq!(id_number("h-7"), Some(7));
        for bad in ["p-", "-1", "p42", "p-4x", ""] {
            assert_eq!(id_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_order_names_a_count_or_seats_and_leaves_out_what_is_unset() {
        let by_count = OrderRequest {
            event: "e".into(),
            quantity: Some(2),
            tickets: None,
            customer: None,
            ttl_seconds: None,
        };
        assert_eq!(
            serde_json::to_string(&by_count).expect("serialises"),
            r#"{"event":"e","quantity":2}"#
        );
        let seats = OrderRequest {
            event: "e".into(),
            quantity: None,
            tickets: Some(vec![3, 4]),
            customer: Some("c1".into()),
            ttl_seconds: Some(30),
        };
        assert_eq!(
            serde_json::to_string(&seats).expect("serialises"),
            r#"{"event":"e","tickets":[3,4],"customer":"c1","ttl_seconds":30}"#
        );
    }
}
