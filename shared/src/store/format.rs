//! The on-disk JSON layout of the store, kept apart from the domain types so either can
//! change without the other. One ticket or purchase per line, so a person can read it and
//! `grep` or `diff` it.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::domain::{EventName, IdempotencyKey, Purchase, Quantity, SoldTicket, Ticket};
use crate::inventory::Inventory;

/// The layout version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredDatabase {
    pub format: u32,
    pub next_purchase_seq: u64,
    pub tickets: Vec<StoredTicket>,
    pub purchases: Vec<StoredPurchase>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredTicket {
    pub id: u64,
    pub event: String,
    pub price_cents: u64,
    pub sold: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredSoldTicket {
    pub id: u64,
    pub price_cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredPurchase {
    pub purchase_id: String,
    pub event: String,
    pub quantity: u32,
    pub tickets: Vec<StoredSoldTicket>,
    pub total_cents: u64,
    pub node: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Parses and checks a stored database; the error says what is wrong, for an operator.
pub fn decode(bytes: &[u8]) -> Result<Inventory, String> {
    let stored: StoredDatabase = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if stored.format != FORMAT_VERSION {
        return Err(format!(
            "format version {} is not supported (expected {FORMAT_VERSION})",
            stored.format
        ));
    }
    let tickets = stored
        .tickets
        .into_iter()
        .map(|t| {
            Ok(Ticket {
                id: t.id,
                event: EventName::parse(&t.event).map_err(|e| format!("ticket {}: {e}", t.id))?,
                price_cents: t.price_cents,
                sold: t.sold,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let purchases = stored
        .purchases
        .into_iter()
        .map(decode_purchase)
        .collect::<Result<Vec<_>, String>>()?;
    Inventory::from_parts(tickets, purchases, stored.next_purchase_seq).map_err(|e| e.to_string())
}

fn decode_purchase(p: StoredPurchase) -> Result<Purchase, String> {
    let context = |e: crate::domain::ValidationError| format!("purchase {}: {e}", p.purchase_id);
    Ok(Purchase {
        event: EventName::parse(&p.event).map_err(context)?,
        quantity: Quantity::new(p.quantity).map_err(context)?,
        idempotency_key: p
            .idempotency_key
            .as_deref()
            .map(IdempotencyKey::parse)
            .transpose()
            .map_err(context)?,
        tickets: p
            .tickets
            .iter()
            .map(|t| SoldTicket {
                id: t.id,
                price_cents: t.price_cents,
            })
            .collect(),
        total_cents: p.total_cents,
        node: p.node,
        created_at: p.created_at,
        purchase_id: p.purchase_id,
    })
}

fn encode_ticket(t: &Ticket) -> StoredTicket {
    StoredTicket {
        id: t.id,
        event: t.event.as_str().to_owned(),
        price_cents: t.price_cents,
        sold: t.sold,
    }
}

fn encode_purchase(p: &Purchase) -> StoredPurchase {
    StoredPurchase {
        purchase_id: p.purchase_id.clone(),
        event: p.event.as_str().to_owned(),
        quantity: p.quantity.get(),
        tickets: p
            .tickets
            .iter()
            .map(|t| StoredSoldTicket {
                id: t.id,
                price_cents: t.price_cents,
            })
            .collect(),
        total_cents: p.total_cents,
        node: p.node.clone(),
        created_at: p.created_at.clone(),
        idempotency_key: p.idempotency_key.as_ref().map(|k| k.as_str().to_owned()),
    }
}

/// Writes the inventory as JSON with one ticket or purchase per line.
pub fn encode(inventory: &Inventory, out: &mut impl Write) -> io::Result<()> {
    write!(
        out,
        "{{\"format\":{FORMAT_VERSION},\"next_purchase_seq\":{},\n\"tickets\":[",
        inventory.next_purchase_seq()
    )?;
    write_lines(out, inventory.tickets().iter().map(encode_ticket))?;
    out.write_all(b"],\n\"purchases\":[")?;
    write_lines(out, inventory.purchases().iter().map(encode_purchase))?;
    out.write_all(b"]}\n")
}

fn write_lines<T: Serialize>(
    out: &mut impl Write,
    items: impl Iterator<Item = T>,
) -> io::Result<()> {
    for (i, item) in items.enumerate() {
        out.write_all(if i == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer(&mut *out, &item)?;
    }
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PurchaseRequest;

    #[test]
    fn an_inventory_survives_encoding_and_decoding() {
        let tickets = (1..=3)
            .map(|id| Ticket {
                id,
                event: EventName::parse("concert").expect("valid"),
                price_cents: 1000 * id,
                sold: false,
            })
            .collect();
        let mut inventory = Inventory::from_tickets(tickets).expect("consistent");
        let key = IdempotencyKey::parse("key-1").expect("valid");
        let request = PurchaseRequest::new(
            EventName::parse("concert").expect("valid"),
            Quantity::new(2).expect("valid"),
        );
        inventory
            .purchase_tickets(&request, Some(&key), "n1")
            .expect("available");
        let mut bytes = Vec::new();
        encode(&inventory, &mut bytes).expect("writing to a Vec cannot fail");
        let decoded = decode(&bytes).expect("round trip");
        assert_eq!(decoded.tickets(), inventory.tickets());
        assert_eq!(decoded.purchases(), inventory.purchases());
        assert_eq!(decoded.next_purchase_seq(), inventory.next_purchase_seq());
    }

    #[test]
    fn an_empty_inventory_survives_encoding() {
        let mut bytes = Vec::new();
        encode(&Inventory::default(), &mut bytes).expect("writing to a Vec cannot fail");
        assert!(decode(&bytes).is_ok());
    }

    #[test]
    fn bad_stores_are_described() {
        let cases: [(&str, &str); 4] = [
            ("{\"format\":1", "EOF"),
            ("[]", "expected struct StoredDatabase"),
            (
                "{\"format\":1,\"next_purchase_seq\":1,\"tickets\":[{\"id\":1,\"event\":\"a\",\"price_cents\":1,\"sold\":false},{\"id\":1,\"event\":\"a\",\"price_cents\":1,\"sold\":false}],\"purchases\":[]}",
                "ticket id 1 appears more than once",
            ),
            (
                "{\"format\":2,\"next_purchase_seq\":1,\"tickets\":[],\"purchases\":[]}",
                "not supported",
            ),
        ];
        for (text, expected) in cases {
            let err = decode(text.as_bytes()).expect_err("bad store");
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }
}
