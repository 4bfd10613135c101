//! The on-disk JSON layouts of the store, kept apart from the domain types so either can
//! change without the other: the snapshot (`tickets.json`, one JSON document with one
//! ticket or purchase per line, so a person can read it and `grep` or `diff` it) and the
//! journal (`tickets.journal`, JSON lines: a header, then one committed purchase a line).

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use shared::Inventory;
use shared::domain::{EventName, IdempotencyKey, Purchase, Quantity, SoldTicket, Ticket};

/// The layout version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredDatabase {
    pub format: u32,
    /// Changes whenever the snapshot is replaced, so nodes know to reload it and which
    /// journal belongs to it.
    #[serde(default)]
    pub generation: u64,
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

/// The first line of a snapshot, read on every operation to learn its generation cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct SnapshotHeader {
    pub format: u32,
    pub generation: u64,
}

/// Parses the first line of a snapshot, `{"format":1,"generation":G,"next_purchase_seq":N,`.
pub fn decode_snapshot_header(first_line: &[u8]) -> Option<SnapshotHeader> {
    let line = first_line.strip_suffix(b",")?;
    let mut object = line.to_vec();
    object.push(b'}');
    serde_json::from_slice(&object).ok()
}

/// A decoded snapshot.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub inventory: Inventory,
}

/// Parses and checks a snapshot; the error says what is wrong, for an operator.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
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
    let inventory = Inventory::from_parts(tickets, purchases, stored.next_purchase_seq)
        .map_err(|e| e.to_string())?;
    Ok(Snapshot {
        generation: stored.generation,
        inventory,
    })
}

fn decode_purchase(p: StoredPurchase) -> Result<Purchase, String> {
    let context = |e: shared::domain::ValidationError| format!("purchase {}: {e}", p.purchase_id);
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

/// Writes the inventory as a snapshot: JSON with one ticket or purchase per line, the
/// first line a header that `decode_snapshot_header` reads.
pub fn encode(inventory: &Inventory, generation: u64, out: &mut impl Write) -> io::Result<()> {
    write!(
        out,
        "{{\"format\":{FORMAT_VERSION},\"generation\":{generation},\"next_purchase_seq\":{},\n\"tickets\":[",
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

/// The journal layout version.
pub const JOURNAL_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalHeader {
    journal: u32,
    generation: u64,
}

/// The journal's first line: which snapshot generation its purchases follow.
pub fn encode_journal_header(generation: u64) -> Vec<u8> {
    let mut line = serde_json::to_vec(&JournalHeader {
        journal: JOURNAL_VERSION,
        generation,
    })
    .unwrap_or_default();
    line.push(b'\n');
    line
}

/// Parses a journal's first line (without its newline) into its generation.
pub fn decode_journal_header(line: &[u8]) -> Result<u64, String> {
    let header: JournalHeader =
        serde_json::from_slice(line).map_err(|e| format!("journal header: {e}"))?;
    if header.journal != JOURNAL_VERSION {
        return Err(format!(
            "journal version {} is not supported (expected {JOURNAL_VERSION})",
            header.journal
        ));
    }
    Ok(header.generation)
}

/// Appends one committed purchase as a journal line.
pub fn encode_journal_entry(purchase: &Purchase, out: &mut Vec<u8>) {
    // Serialising a plain struct into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &encode_purchase(purchase));
    out.push(b'\n');
}

/// Parses one journal line (without its newline).
pub fn decode_journal_entry(line: &[u8]) -> Result<Purchase, String> {
    let stored: StoredPurchase = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    decode_purchase(stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::domain::PurchaseRequest;

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
        encode(&inventory, 42, &mut bytes).expect("writing to a Vec cannot fail");
        let first_line = bytes.split(|&b| b == b'\n').next().expect("a line");
        assert_eq!(
            decode_snapshot_header(first_line),
            Some(SnapshotHeader {
                format: FORMAT_VERSION,
                generation: 42
            })
        );
        let snapshot = decode(&bytes).expect("round trip");
        assert_eq!(snapshot.generation, 42);
        let decoded = snapshot.inventory;
        assert_eq!(decoded.tickets(), inventory.tickets());
        assert_eq!(decoded.purchases(), inventory.purchases());
        assert_eq!(decoded.next_purchase_seq(), inventory.next_purchase_seq());
    }

    #[test]
    fn an_empty_inventory_survives_encoding() {
        let mut bytes = Vec::new();
        encode(&Inventory::default(), 1, &mut bytes).expect("writing to a Vec cannot fail");
        assert!(decode(&bytes).is_ok());
    }

    #[test]
    fn journal_lines_round_trip() {
        let header = encode_journal_header(7);
        assert_eq!(decode_journal_header(header.trim_ascii_end()), Ok(7));
        let purchase = Purchase {
            purchase_id: "p-00000001".into(),
            event: EventName::parse("concert").expect("valid"),
            quantity: Quantity::new(1).expect("valid"),
            tickets: vec![SoldTicket {
                id: 3,
                price_cents: 100,
            }],
            total_cents: 100,
            node: "n1".into(),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            idempotency_key: None,
        };
        let mut line = Vec::new();
        encode_journal_entry(&purchase, &mut line);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(decode_journal_entry(line.trim_ascii_end()), Ok(purchase));
        assert!(decode_journal_entry(b"{\"purchase_id\":").is_err());
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
