//! The on-disk JSON layouts of the store, kept apart from the domain types so either can
//! change without the other: the snapshot (`tickets.json`, one JSON document with one
//! ticket, purchase or hold per line, so a person can read it and `grep` or `diff` it) and
//! the log entries (`tickets.journal`, JSON lines: a header, then one entry a line; the
//! PostgreSQL log's `entry` column holds the same objects).
//!
//! A log entry is a purchase object as earlier versions wrote it (no `kind`; a confirm is
//! a purchase with a `hold_id`), or an object with a `kind` of `hold`, `release`, `expire`
//! or `cancel`. Secrets and idempotency keys are stored as SHA-256 hashes only; a purchase
//! written before that keeps its key in clear (`idempotency_key`), hashed when read, and
//! written hashed into the next snapshot.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use shared::domain::{
    Access, Change, CustomerId, EventName, Hold, HoldState, IdempotencyKey, Purchase, Quantity,
    SoldTicket, Ticket, Timestamp,
};
use shared::secret::{KeyHash, Salt, SecretHash};
use shared::{Inventory, LogEntry, Parts};

/// The layout version this code writes. It reads every earlier one (see [`Lineage`]).
/// Format 3 adds holds, cancellations, customers, per-customer limits and hashed secrets
/// and keys.
pub const FORMAT_VERSION: u32 = 3;

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
    /// Format 3: the number of the next hold.
    #[serde(default)]
    pub next_hold_seq: Option<u64>,
    /// Format 3: the latest time in the log the snapshot folds.
    #[serde(default)]
    pub log_time: Option<String>,
    /// Format 3: per-customer limits by event.
    #[serde(default)]
    pub limits: BTreeMap<String, u32>,
    pub tickets: Vec<StoredTicket>,
    pub purchases: Vec<StoredPurchase>,
    /// Format 3: every hold, in log order.
    #[serde(default)]
    pub holds: Vec<StoredHold>,
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
        (2 | 3, Some(_), None) => Lineage::Fresh,
        (2 | 3, Some(_), Some(follows)) => Lineage::Compacted(follows),
        (1..=3, _, _) => {
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

/// A purchase, in a snapshot or as a log entry.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredPurchase {
    pub purchase_id: String,
    pub event: String,
    pub quantity: u32,
    pub tickets: Vec<StoredSoldTicket>,
    pub total_cents: u64,
    pub node: String,
    pub created_at: String,
    /// The key in clear, as versions before hashed keys wrote it; never written now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    /// Whether the buyer named the tickets.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seats: bool,
    /// The hold it confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<String>,
    /// The key hash of the request that cancelled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_key: Option<String>,
    /// The hash of its secret, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The hash of the key that made it, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// With a key: the salt its secret was derived from, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
}

/// A hold, in a snapshot (with what became of it) or as a log entry (held).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredHold {
    pub hold_id: String,
    pub event: String,
    pub tickets: Vec<StoredSoldTicket>,
    pub total_cents: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    pub node: String,
    pub created_at: String,
    pub expires_at: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seats: bool,
    /// `confirmed`, `released` or `expired`; absent while held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// When it stopped being held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// With `confirmed`: its purchase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purchase_id: Option<String>,
    /// With `released`: the key hash of the request that released it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_key: Option<String>,
    /// The hash of its secret, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The hash of the key that made it, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// With a key: the salt its secret was derived from, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
}

/// A log entry other than a purchase.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum StoredEntry {
    Hold(Box<StoredHold>),
    Release {
        hold_id: String,
        at: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    Expire {
        hold_id: String,
        at: String,
    },
    Cancel {
        purchase_id: String,
        at: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
}

/// Only the `kind` of a log line, to tell a purchase from the other entries.
#[derive(Deserialize)]
struct Kind {
    #[serde(default)]
    kind: Option<serde::de::IgnoredAny>,
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
    let holds = stored
        .holds
        .into_iter()
        .map(decode_hold)
        .collect::<Result<Vec<_>, String>>()?;
    let limits = stored
        .limits
        .iter()
        .map(|(event, &limit)| {
            EventName::parse(event)
                .map(|e| (e, limit))
                .map_err(|e| format!("limits: {e}"))
        })
        .collect::<Result<BTreeMap<_, _>, String>>()?;
    let log_time = stored
        .log_time
        .as_deref()
        .map(|t| Timestamp::parse(t).map_err(|e| format!("log_time: {e}")))
        .transpose()?
        .unwrap_or_default();
    let inventory = Inventory::restore(Parts {
        tickets,
        purchases,
        holds,
        next_purchase_seq: stored.next_purchase_seq,
        next_hold_seq: stored.next_hold_seq.unwrap_or(1),
        limits,
        log_time,
    })
    .map_err(|e| e.to_string())?;
    Ok(Snapshot {
        generation: header.generation,
        lineage: header.lineage,
        inventory,
    })
}

fn time(what: &str, text: &str) -> Result<Timestamp, String> {
    Timestamp::parse(text).map_err(|e| format!("{what}: {e}"))
}

fn key_hash(what: &str, hex: Option<&str>) -> Result<Option<KeyHash>, String> {
    hex.map(|h| KeyHash::from_hex(h).map_err(|e| format!("{what}: {e}")))
        .transpose()
}

fn customer(what: &str, text: Option<&str>) -> Result<Option<CustomerId>, String> {
    text.map(|c| CustomerId::parse(c).map_err(|e| format!("{what}: {e}")))
        .transpose()
}

fn sold_tickets(tickets: &[StoredSoldTicket]) -> Vec<SoldTicket> {
    tickets
        .iter()
        .map(|t| SoldTicket {
            id: t.id,
            price_cents: t.price_cents,
        })
        .collect()
}

fn stored_tickets(tickets: &[SoldTicket]) -> Vec<StoredSoldTicket> {
    tickets
        .iter()
        .map(|t| StoredSoldTicket {
            id: t.id,
            price_cents: t.price_cents,
        })
        .collect()
}

/// The secret's hash, the key's hash and the salt, in hex, as stored.
struct StoredAccess<'a> {
    secret: Option<&'a str>,
    key: Option<&'a str>,
    salt: Option<&'a str>,
}

/// Reads the hashes; an old purchase's clear key is hashed here.
fn decode_access(
    what: &str,
    access: StoredAccess<'_>,
    clear_key: Option<&str>,
) -> Result<Access, String> {
    let secret = access
        .secret
        .map(|h| SecretHash::from_hex(h).map_err(|e| format!("{what}: secret: {e}")))
        .transpose()?;
    let salt = access
        .salt
        .map(|h| Salt::from_hex(h).map_err(|e| format!("{what}: salt: {e}")))
        .transpose()?;
    let key = match (access.key, clear_key) {
        (Some(_), Some(_)) => return Err(format!("{what}: a key both hashed and in clear")),
        (hashed, None) => key_hash(what, hashed)?,
        (None, Some(clear)) => {
            let key = IdempotencyKey::parse(clear).map_err(|e| format!("{what}: {e}"))?;
            Some(KeyHash::of(key.as_str()))
        }
    };
    Ok(Access { secret, key, salt })
}

/// The secret's hash, the key's hash and the salt as written: hex.
fn encode_access(access: &Access) -> [Option<String>; 3] {
    [
        access.secret.map(|h| h.to_hex()),
        access.key.map(|h| h.to_hex()),
        access.salt.map(|s| s.to_hex()),
    ]
}

fn decode_purchase(p: StoredPurchase) -> Result<Purchase, String> {
    let what = format!("purchase {}", p.purchase_id);
    let context = |e: shared::domain::ValidationError| format!("{what}: {e}");
    let cancelled = match (&p.cancelled_at, &p.cancel_key) {
        (Some(at), key) => Some(Change {
            at: time(&what, at)?,
            key: key_hash(&what, key.as_deref())?,
        }),
        (None, Some(_)) => return Err(format!("{what}: a cancel key without cancelled_at")),
        (None, None) => None,
    };
    Ok(Purchase {
        event: EventName::parse(&p.event).map_err(context)?,
        quantity: Quantity::new(p.quantity).map_err(context)?,
        access: decode_access(
            &what,
            StoredAccess {
                secret: p.secret.as_deref(),
                key: p.key.as_deref(),
                salt: p.salt.as_deref(),
            },
            p.idempotency_key.as_deref(),
        )?,
        tickets: sold_tickets(&p.tickets),
        total_cents: p.total_cents,
        node: p.node,
        created_at: time(&what, &p.created_at)?,
        customer: customer(&what, p.customer.as_deref())?,
        seats: p.seats,
        hold_id: p.hold_id,
        cancelled,
        purchase_id: p.purchase_id,
    })
}

fn decode_hold(h: StoredHold) -> Result<Hold, String> {
    let what = format!("hold {}", h.hold_id);
    let ended_at = || match &h.ended_at {
        Some(at) => time(&what, at),
        None => Err(format!("{what}: no ended_at for its status")),
    };
    let state = match (h.status.as_deref(), &h.purchase_id) {
        (None, None) => HoldState::Held,
        (Some("confirmed"), Some(purchase_id)) => HoldState::Confirmed {
            purchase_id: purchase_id.clone(),
            at: ended_at()?,
        },
        (Some("released"), None) => HoldState::Released(Change {
            at: ended_at()?,
            key: key_hash(&what, h.release_key.as_deref())?,
        }),
        (Some("expired"), None) => HoldState::Expired { at: ended_at()? },
        (status, purchase_id) => {
            return Err(format!(
                "{what}: status {status:?} with purchase {purchase_id:?} is no state of a hold"
            ));
        }
    };
    Ok(Hold {
        event: EventName::parse(&h.event).map_err(|e| format!("{what}: {e}"))?,
        tickets: sold_tickets(&h.tickets),
        total_cents: h.total_cents,
        customer: customer(&what, h.customer.as_deref())?,
        node: h.node.clone(),
        created_at: time(&what, &h.created_at)?,
        expires_at: time(&what, &h.expires_at)?,
        seats: h.seats,
        state,
        access: decode_access(
            &what,
            StoredAccess {
                secret: h.secret.as_deref(),
                key: h.key.as_deref(),
                salt: h.salt.as_deref(),
            },
            None,
        )?,
        hold_id: h.hold_id,
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
    let [secret, key, salt] = encode_access(&p.access);
    StoredPurchase {
        purchase_id: p.purchase_id.clone(),
        event: p.event.as_str().to_owned(),
        quantity: p.quantity.get(),
        tickets: stored_tickets(&p.tickets),
        total_cents: p.total_cents,
        node: p.node.clone(),
        created_at: p.created_at.to_string(),
        idempotency_key: None,
        customer: p.customer.as_ref().map(|c| c.as_str().to_owned()),
        seats: p.seats,
        hold_id: p.hold_id.clone(),
        cancelled_at: p.cancelled.as_ref().map(|c| c.at.to_string()),
        cancel_key: p.cancelled.as_ref().and_then(|c| c.key).map(|k| k.to_hex()),
        secret,
        key,
        salt,
    }
}

fn encode_hold(h: &Hold) -> StoredHold {
    let (status, ended_at, purchase_id, release_key) = match &h.state {
        HoldState::Held => (None, None, None, None),
        HoldState::Confirmed { purchase_id, at } => {
            (Some("confirmed"), Some(at), Some(purchase_id.clone()), None)
        }
        HoldState::Released(change) => (
            Some("released"),
            Some(&change.at),
            None,
            change.key.map(|k| k.to_hex()),
        ),
        HoldState::Expired { at } => (Some("expired"), Some(at), None, None),
    };
    let [secret, key, salt] = encode_access(&h.access);
    StoredHold {
        hold_id: h.hold_id.clone(),
        event: h.event.as_str().to_owned(),
        tickets: stored_tickets(&h.tickets),
        total_cents: h.total_cents,
        customer: h.customer.as_ref().map(|c| c.as_str().to_owned()),
        node: h.node.clone(),
        created_at: h.created_at.to_string(),
        expires_at: h.expires_at.to_string(),
        seats: h.seats,
        status: status.map(str::to_owned),
        ended_at: ended_at.map(|t| t.to_string()),
        purchase_id,
        release_key,
        secret,
        key,
        salt,
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
        "{{\"format\":{FORMAT_VERSION},\"generation\":{generation},\"follows\":{follows},\"next_purchase_seq\":{},\n\"next_hold_seq\":{},\"log_time\":\"{}\",\"limits\":",
        inventory.next_purchase_seq(),
        inventory.next_hold_seq(),
        inventory.log_time(),
    )?;
    let limits: BTreeMap<String, u32> = inventory
        .limits()
        .into_iter()
        .map(|(event, limit)| (event.as_str().to_owned(), limit))
        .collect();
    serde_json::to_writer(&mut *out, &limits)?;
    out.write_all(b",\n\"tickets\":[")?;
    write_lines(out, inventory.tickets().iter().map(encode_ticket))?;
    out.write_all(b"],\n\"purchases\":[")?;
    write_lines(out, inventory.purchases().iter().map(encode_purchase))?;
    out.write_all(b"],\n\"holds\":[")?;
    write_lines(out, inventory.holds().iter().map(encode_hold))?;
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

/// Appends one log entry as a journal line (the same object is a PostgreSQL log row).
pub fn encode_journal_entry(entry: &LogEntry, out: &mut Vec<u8>) {
    // Serialising a plain struct into a Vec cannot fail.
    let _ = match entry {
        LogEntry::Purchase(purchase) => {
            serde_json::to_writer(&mut *out, &encode_purchase(purchase))
        }
        LogEntry::Hold(hold) => {
            serde_json::to_writer(&mut *out, &StoredEntry::Hold(Box::new(encode_hold(hold))))
        }
        LogEntry::Release { hold_id, at, key } => serde_json::to_writer(
            &mut *out,
            &StoredEntry::Release {
                hold_id: hold_id.clone(),
                at: at.to_string(),
                key: key.map(|k| k.to_hex()),
            },
        ),
        LogEntry::Expire { hold_id, at } => serde_json::to_writer(
            &mut *out,
            &StoredEntry::Expire {
                hold_id: hold_id.clone(),
                at: at.to_string(),
            },
        ),
        LogEntry::Cancel {
            purchase_id,
            at,
            key,
        } => serde_json::to_writer(
            &mut *out,
            &StoredEntry::Cancel {
                purchase_id: purchase_id.clone(),
                at: at.to_string(),
                key: key.map(|k| k.to_hex()),
            },
        ),
    };
    out.push(b'\n');
}

/// Parses one journal line (without its newline) or PostgreSQL log row: a purchase, as
/// every version wrote it, or an entry with a `kind`.
pub fn decode_journal_entry(line: &[u8]) -> Result<LogEntry, String> {
    // Purchases are most of the log: read as one first, and only a line that is not one
    // is looked at for its kind.
    let as_purchase = match serde_json::from_slice::<StoredPurchase>(line) {
        Ok(stored) => return decode_purchase(stored).map(LogEntry::Purchase),
        Err(err) => err,
    };
    match serde_json::from_slice::<Kind>(line) {
        Ok(Kind { kind: Some(_) }) => {}
        _ => return Err(as_purchase.to_string()),
    }
    let stored: StoredEntry = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    Ok(match stored {
        StoredEntry::Hold(hold) => {
            if hold.status.is_some() {
                return Err(format!("hold {}: a hold entry is held", hold.hold_id));
            }
            LogEntry::Hold(decode_hold(*hold)?)
        }
        StoredEntry::Release { hold_id, at, key } => LogEntry::Release {
            at: time(&hold_id, &at)?,
            key: key_hash(&hold_id, key.as_deref())?,
            hold_id,
        },
        StoredEntry::Expire { hold_id, at } => LogEntry::Expire {
            at: time(&hold_id, &at)?,
            hold_id,
        },
        StoredEntry::Cancel {
            purchase_id,
            at,
            key,
        } => LogEntry::Cancel {
            at: time(&purchase_id, &at)?,
            key: key_hash(&purchase_id, key.as_deref())?,
            purchase_id,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::domain::PurchaseRequest;

    /// An inventory of one event, `concert`, with tickets `1..=count` unsold, ticket `id`
    /// priced `id * cents_per_id`.
    fn unsold_concert(count: u64, cents_per_id: u64) -> Inventory {
        let tickets = (1..=count)
            .map(|id| Ticket {
                id,
                event: EventName::parse("concert").expect("valid"),
                price_cents: cents_per_id * id,
                sold: false,
            })
            .collect();
        Inventory::from_tickets(tickets).expect("consistent")
    }

    #[test]
    fn an_inventory_survives_encoding_and_decoding() {
        let mut inventory = unsold_concert(3, 1000);
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
        let at = Timestamp::parse("2026-01-01T00:00:00.000Z").expect("valid");
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
            created_at: at,
            customer: None,
            seats: false,
            hold_id: None,
            cancelled: None,
            access: Access::default(),
        };
        let mut line = Vec::new();
        encode_journal_entry(&LogEntry::Purchase(purchase.clone()), &mut line);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(
            decode_journal_entry(line.trim_ascii_end()),
            Ok(LogEntry::Purchase(purchase))
        );
        assert!(decode_journal_entry(b"{\"purchase_id\":").is_err());
    }

    /// A concert of six tickets after every kind of change: a purchase by a customer, a
    /// cancelled one, holds confirmed, released, expired and still held, keyed requests,
    /// and a per-customer limit; with the entries that made it.
    fn box_office() -> (Inventory, Inventory, Vec<LogEntry>) {
        use shared::{Command, HoldRequest, Order, Proof, SaleRequest, Seats, Selection, Ttl};
        let mut start = unsold_concert(6, 100);
        let concert = EventName::parse("concert").expect("valid");
        start.set_max_per_customer(&concert, Some(5));
        let ann = Some(CustomerId::parse("ann@example.org").expect("valid"));
        let sale = |selection| SaleRequest {
            event: concert.clone(),
            selection,
            customer: ann.clone(),
        };
        let one = || Selection::Quantity(Quantity::new(1).expect("valid"));
        let hold = |selection| {
            Command::Hold(HoldRequest {
                sale: sale(selection),
                ttl: Ttl::new(10).expect("valid"),
            })
        };
        let key = |k: &str| Some(IdempotencyKey::parse(k).expect("valid"));
        let orders = [
            Order::new(Command::Purchase(sale(one()))).with_key(key("a")),
            Order::new(Command::Purchase(sale(Selection::Seats(
                Seats::new(vec![5]).expect("valid"),
            )))),
            Order::new(hold(one())).with_key(key("b")),
            Order::new(hold(one())),
            Order::new(hold(one())),
            Order::new(Command::Confirm {
                hold_id: "h-00000001".into(),
            }),
            Order::new(Command::Release {
                hold_id: "h-00000002".into(),
            })
            .with_key(key("c")),
            Order::new(Command::Cancel {
                purchase_id: "p-00000002".into(),
            })
            .with_key(key("d")),
            // Finds h-00000003 expired.
            Order::new(hold(one())),
        ];
        let mut inventory = start.clone();
        let mut log = Vec::new();
        let base =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        for (i, order) in orders.iter().enumerate() {
            let order = order.clone().with_proof(Proof::operator());
            let now = base + std::time::Duration::from_secs(if i == 8 { 60 } else { i as u64 });
            inventory
                .decide(&order, "n1", now, &mut log)
                .expect("decided");
        }
        (start, inventory, log)
    }

    #[test]
    fn every_kind_of_entry_survives_a_journal_line_and_snapshots_carry_all_of_it() {
        let (start, inventory, log) = box_office();
        let kinds: std::collections::BTreeSet<&str> = log.iter().map(LogEntry::kind).collect();
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            ["cancel", "confirm", "expire", "hold", "purchase", "release"]
        );
        let mut replayed = start;
        for entry in &log {
            let mut line = Vec::new();
            encode_journal_entry(entry, &mut line);
            let text = String::from_utf8(line.clone()).expect("utf-8");
            let decoded = decode_journal_entry(line.trim_ascii_end()).expect("decodes");
            assert_eq!(&decoded, entry, "{text}");
            // PostgreSQL's jsonb reorders keys and adds spaces: still the same entry.
            let value: serde_json::Value = serde_json::from_slice(&line).expect("json");
            let reordered = serde_json::to_string_pretty(&value).expect("json");
            assert_eq!(
                decode_journal_entry(reordered.as_bytes()).as_ref(),
                Ok(entry)
            );
            replayed.apply_entry(decoded).expect("fits");
        }
        assert_eq!(replayed, inventory);

        let mut bytes = Vec::new();
        encode(&inventory, 3, &mut bytes).expect("writing to a Vec cannot fail");
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert!(!text.contains("\"idempotency_key\""), "keys are hashed");
        assert_eq!(
            decode_snapshot_header(text.lines().next().expect("a line").as_bytes()),
            Some(SnapshotHeader {
                generation: 3,
                lineage: Lineage::Fresh
            })
        );
        let decoded = decode(&bytes).expect("round trip").inventory;
        assert_eq!(decoded, inventory);
    }

    #[test]
    fn a_purchase_line_of_an_earlier_version_reads_with_its_key_hashed() {
        let line = br#"{"purchase_id":"p-00000001","event":"concert","quantity":1,"tickets":[{"id":3,"price_cents":100}],"total_cents":100,"node":"n1","created_at":"2026-01-01T00:00:00.000Z","idempotency_key":"retry-7"}"#;
        let Ok(LogEntry::Purchase(purchase)) = decode_journal_entry(line) else {
            panic!("an old purchase line reads");
        };
        assert_eq!(purchase.access.key, Some(KeyHash::of("retry-7")));
        assert_eq!((purchase.access.secret, purchase.access.salt), (None, None));
        let mut again = Vec::new();
        encode_journal_entry(&LogEntry::Purchase(purchase), &mut again);
        assert!(!String::from_utf8_lossy(&again).contains("retry-7"));
        for bad in [
            &br#"{"kind":"expire","hold_id":"h-00000001"}"#[..],
            br#"{"kind":"refund","purchase_id":"p-00000001","at":"2026-01-01T00:00:00.000Z"}"#,
            br#"{"kind":"expire","hold_id":"h-00000001","at":"yesterday"}"#,
            br#"{"kind":"expire","hold_id":"h-00000001","at":"2026-01-01T00:00:00.000Z","by":"x"}"#,
            br#"{"purchase_id":"p-00000001","event":"concert","quantity":1,"tickets":[{"id":3,"price_cents":100}],"total_cents":100,"node":"n1","created_at":"2026-01-01T00:00:00.000Z","refunded":true}"#,
        ] {
            assert!(
                decode_journal_entry(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
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
                "{\"format\":4,\"next_purchase_seq\":1,\"tickets\":[],\"purchases\":[]}",
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
