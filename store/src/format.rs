//! The on-disk JSON layouts of the store, kept apart from the domain types so either can
//! change without the other: the snapshot (`tickets.json`, one JSON document with one
//! ticket or purchase per line, so a person can read it and `grep` or `diff` it) and the
//! journal (`tickets.journal`, JSON lines: a header, then one committed purchase a line).

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use shared::Inventory;
use shared::domain::{EventName, IdempotencyKey, Purchase, Quantity, SoldTicket, Ticket};

/// The layout version this code writes. It reads every earlier one (see [`Lineage`]).
pub const FORMAT_VERSION: u32 = 2;

/// The journal a snapshot was folded from, recorded in it so that the one legitimate
/// mismatch, a crash between compaction's snapshot rename and its new journal, can be
/// proven: the old journal is still there, of this generation and exactly this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Follows {
    pub generation: u64,
    pub journal_len: u64,
}

/// Which journal may stand beside a snapshot, by the layout that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lineage {
    /// Format 1 without a generation (8bd16ec and before): written before the journal
    /// existed, so no journal belongs beside it. The first write upgrades the store.
    Unjournaled,
    /// Format 1 with a generation (422ed1a to 55edf2c): its own journal, or the journal of
    /// the generation before when the snapshot holds every entry in it (a compaction
    /// interrupted before its new journal; nothing else recorded what it folded).
    Unrecorded,
    /// Written with an empty journal of its own generation (seeding, upgrading).
    Fresh,
    /// Written by compacting the journal it names.
    Compacted(Follows),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredDatabase {
    pub format: u32,
    /// Changes whenever the snapshot is replaced, so nodes know to reload it and which
    /// journal belongs to it. Absent in format 1 before the journal.
    #[serde(default)]
    pub generation: Option<u64>,
    /// What the snapshot was folded from (format 2; `null` when written fresh).
    #[serde(default)]
    pub follows: Option<Follows>,
    pub next_purchase_seq: u64,
    pub tickets: Vec<StoredTicket>,
    pub purchases: Vec<StoredPurchase>,
}

/// What a snapshot's header says, in any format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// 0 for an unjournaled snapshot.
    pub generation: u64,
    pub lineage: Lineage,
}

/// Reads the header fields of any format into what they mean.
fn header(
    format: u32,
    generation: Option<u64>,
    follows: Option<Follows>,
) -> Result<SnapshotHeader, String> {
    let lineage = match (format, generation, follows) {
        (1, None, None) => Lineage::Unjournaled,
        (1, Some(_), None) => Lineage::Unrecorded,
        (2, Some(_), None) => Lineage::Fresh,
        (2, Some(_), Some(follows)) => Lineage::Compacted(follows),
        (1 | 2, _, _) => {
            return Err(format!(
                "a format {format} header with generation {generation:?} and follows {follows:?} is not a layout any version wrote"
            ));
        }
        _ => {
            return Err(format!(
                "format version {format} is not supported (expected 1 to {FORMAT_VERSION})"
            ));
        }
    };
    Ok(SnapshotHeader {
        generation: generation.unwrap_or(0),
        lineage,
    })
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

/// The first line of a snapshot as written, read on every operation to learn its
/// generation cheaply.
#[derive(Debug, Deserialize)]
struct HeaderLine {
    format: u32,
    #[serde(default)]
    generation: Option<u64>,
    #[serde(default)]
    follows: Option<Follows>,
}

/// Parses the first line of a snapshot,
/// `{"format":2,"generation":G,"follows":F,"next_purchase_seq":N,` (or an earlier format's).
pub fn decode_snapshot_header(first_line: &[u8]) -> Option<SnapshotHeader> {
    let line = first_line.strip_suffix(b",")?;
    let mut object = line.to_vec();
    object.push(b'}');
    let line: HeaderLine = serde_json::from_slice(&object).ok()?;
    header(line.format, line.generation, line.follows).ok()
}

/// A decoded snapshot.
#[derive(Debug)]
pub struct Snapshot {
    /// 0 for an unjournaled snapshot.
    pub generation: u64,
    pub lineage: Lineage,
    pub inventory: Inventory,
}

/// Parses and checks a snapshot of any format; the error says what is wrong, for an
/// operator.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    let stored: StoredDatabase = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let header = header(stored.format, stored.generation, stored.follows)?;
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
        generation: header.generation,
        lineage: header.lineage,
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

/// Writes the inventory as a snapshot of a store written fresh (with an empty log of its
/// own) in the current format: JSON with one ticket or purchase per line, the first line a
/// header that `decode_snapshot_header` reads.
pub fn encode(inventory: &Inventory, generation: u64, out: &mut impl Write) -> io::Result<()> {
    encode_with(inventory, generation, None, out)
}

/// As `encode`, for a snapshot folded from the journal `follows` names.
pub fn encode_folded(
    inventory: &Inventory,
    generation: u64,
    follows: Follows,
    out: &mut impl Write,
) -> io::Result<()> {
    encode_with(inventory, generation, Some(follows), out)
}

fn encode_with(
    inventory: &Inventory,
    generation: u64,
    follows: Option<Follows>,
    out: &mut impl Write,
) -> io::Result<()> {
    let follows = match follows {
        Some(f) => format!(
            "{{\"generation\":{},\"journal_len\":{}}}",
            f.generation, f.journal_len
        ),
        None => "null".to_owned(),
    };
    write!(
        out,
        "{{\"format\":{FORMAT_VERSION},\"generation\":{generation},\"follows\":{follows},\"next_purchase_seq\":{},\n\"tickets\":[",
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
struct StoredJournalHeader {
    journal: u32,
    generation: u64,
    /// Set on the journal written first when upgrading a snapshot from before the
    /// journal, so that a crash before the new snapshot is provably that and nothing else.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    upgrade: bool,
}

/// What a journal's first line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalHeader {
    /// The snapshot generation its purchases follow.
    pub generation: u64,
    /// Written by an upgrade of an unjournaled store, before its new snapshot.
    pub upgrade: bool,
}

/// The journal's first line.
pub fn encode_journal_header(header: JournalHeader) -> Vec<u8> {
    let mut line = serde_json::to_vec(&StoredJournalHeader {
        journal: JOURNAL_VERSION,
        generation: header.generation,
        upgrade: header.upgrade,
    })
    .unwrap_or_default();
    line.push(b'\n');
    line
}

/// Parses a journal's first line (without its newline).
pub fn decode_journal_header(line: &[u8]) -> Result<JournalHeader, String> {
    let header: StoredJournalHeader =
        serde_json::from_slice(line).map_err(|e| format!("journal header: {e}"))?;
    if header.journal != JOURNAL_VERSION {
        return Err(format!(
            "journal version {} is not supported (expected {JOURNAL_VERSION})",
            header.journal
        ));
    }
    Ok(JournalHeader {
        generation: header.generation,
        upgrade: header.upgrade,
    })
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
        let follows = Follows {
            generation: 41,
            journal_len: 900,
        };
        let mut bytes = Vec::new();
        encode_folded(&inventory, 42, follows, &mut bytes).expect("writing to a Vec cannot fail");
        let first_line = bytes.split(|&b| b == b'\n').next().expect("a line");
        let header = SnapshotHeader {
            generation: 42,
            lineage: Lineage::Compacted(follows),
        };
        assert_eq!(decode_snapshot_header(first_line), Some(header));
        let snapshot = decode(&bytes).expect("round trip");
        assert_eq!(
            (snapshot.generation, snapshot.lineage),
            (42, header.lineage)
        );
        let decoded = snapshot.inventory;
        assert_eq!(decoded.tickets(), inventory.tickets());
        assert_eq!(decoded.purchases(), inventory.purchases());
        assert_eq!(decoded.next_purchase_seq(), inventory.next_purchase_seq());
    }

    #[test]
    fn an_empty_inventory_survives_encoding() {
        let mut bytes = Vec::new();
        encode(&Inventory::default(), 1, &mut bytes).expect("writing to a Vec cannot fail");
        let snapshot = decode(&bytes).expect("decodes");
        assert_eq!(snapshot.lineage, Lineage::Fresh);
    }

    #[test]
    fn journal_lines_round_trip() {
        for header in [
            JournalHeader {
                generation: 7,
                upgrade: false,
            },
            JournalHeader {
                generation: 8,
                upgrade: true,
            },
        ] {
            let line = encode_journal_header(header);
            assert_eq!(decode_journal_header(line.trim_ascii_end()), Ok(header));
        }
        assert_eq!(
            encode_journal_header(JournalHeader {
                generation: 7,
                upgrade: false
            }),
            b"{\"journal\":1,\"generation\":7}\n",
            "the header earlier versions wrote and read"
        );
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
    fn every_earlier_header_is_read_for_what_it_means() {
        let cases = [
            (
                &b"{\"format\":1,\"next_purchase_seq\":3,"[..],
                0,
                Lineage::Unjournaled,
            ),
            (
                b"{\"format\":1,\"generation\":9,\"next_purchase_seq\":1,",
                9,
                Lineage::Unrecorded,
            ),
            (
                b"{\"format\":2,\"generation\":9,\"follows\":null,\"next_purchase_seq\":1,",
                9,
                Lineage::Fresh,
            ),
        ];
        for (line, generation, lineage) in cases {
            assert_eq!(
                decode_snapshot_header(line),
                Some(SnapshotHeader {
                    generation,
                    lineage
                }),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(
            decode_snapshot_header(b"{\"format\":2,\"next_purchase_seq\":1,"),
            None,
            "format 2 always names its generation"
        );
    }

    #[test]
    fn bad_stores_are_described() {
        let cases: [(&str, &str); 5] = [
            ("{\"format\":1", "EOF"),
            ("[]", "expected struct StoredDatabase"),
            (
                "{\"format\":1,\"next_purchase_seq\":1,\"tickets\":[{\"id\":1,\"event\":\"a\",\"price_cents\":1,\"sold\":false},{\"id\":1,\"event\":\"a\",\"price_cents\":1,\"sold\":false}],\"purchases\":[]}",
                "ticket id 1 appears more than once",
            ),
            (
                "{\"format\":3,\"next_purchase_seq\":1,\"tickets\":[],\"purchases\":[]}",
                "not supported",
            ),
            (
                "{\"format\":2,\"next_purchase_seq\":1,\"tickets\":[],\"purchases\":[]}",
                "not a layout any version wrote",
            ),
        ];
        for (text, expected) in cases {
            let err = decode(text.as_bytes()).expect_err("bad store");
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }
}
