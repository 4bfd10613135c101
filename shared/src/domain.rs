//! The ticket domain: events, tickets, purchase requests and committed purchases, with
//! the validation every program shares.

use std::fmt;
use std::time::SystemTime;

use thiserror::Error;

/// The four events of the original system; a seeded inventory always has them.
pub const ORIGINAL_EVENTS: [&str; 4] = ["concert", "sports-game", "theater-show", "movie-premiere"];

/// The most tickets one purchase may ask for.
pub const MAX_QUANTITY: u32 = 10;

/// Why a piece of client input was refused. Each variant says what was wrong, for a person.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    #[error("event name must be 1 to 64 characters from [a-z0-9-], got {0:?}")]
    EventName(String),
    #[error("quantity must be a whole number from 1 to {MAX_QUANTITY}, got {0}")]
    Quantity(String),
    #[error("Idempotency-Key must be 1 to 128 visible ASCII characters")]
    IdempotencyKey,
}

/// A validated event name: 1 to 64 characters from `[a-z0-9-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventName(String);

impl EventName {
    pub fn parse(name: &str) -> Result<Self, ValidationError> {
        let valid = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(ValidationError::EventName(truncate_for_message(name)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Keeps error messages short when a client sends a huge value.
fn truncate_for_message(value: &str) -> String {
    const LIMIT: usize = 80;
    if value.chars().count() <= LIMIT {
        value.to_owned()
    } else {
        let head: String = value.chars().take(LIMIT).collect();
        format!("{head}...")
    }
}

/// A validated number of tickets for one purchase: 1 to [`MAX_QUANTITY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(u32);

impl Quantity {
    pub fn new(quantity: u32) -> Result<Self, ValidationError> {
        if (1..=MAX_QUANTITY).contains(&quantity) {
            Ok(Self(quantity))
        } else {
            Err(ValidationError::Quantity(quantity.to_string()))
        }
    }

    /// Accepts any JSON number, refusing fractions, negatives and values out of range.
    pub fn from_json(value: &serde_json::Number) -> Result<Self, ValidationError> {
        match value.as_u64() {
            Some(q) if q <= u64::from(MAX_QUANTITY) => Self::new(q as u32),
            _ => Err(ValidationError::Quantity(value.to_string())),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// A client-chosen key that makes a purchase safe to retry: 1 to 128 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(key: &str) -> Result<Self, ValidationError> {
        let valid = (1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
        if valid {
            Ok(Self(key.to_owned()))
        } else {
            Err(ValidationError::IdempotencyKey)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One seat for sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub id: u64,
    pub event: EventName,
    pub price_cents: u64,
    pub sold: bool,
}

/// A request to buy `quantity` tickets of one event: the original system's "request".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseRequest {
    pub event: EventName,
    pub quantity: Quantity,
    /// When the node received it; becomes the purchase's `created_at`.
    pub requested_at: SystemTime,
}

impl PurchaseRequest {
    pub fn new(event: EventName, quantity: Quantity) -> Self {
        Self {
            event,
            quantity,
            requested_at: SystemTime::now(),
        }
    }
}

/// A ticket as it appears inside a purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoldTicket {
    pub id: u64,
    pub price_cents: u64,
}

/// A committed sale: every ticket in it was sold to it and to nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    pub purchase_id: String,
    pub event: EventName,
    pub quantity: Quantity,
    pub tickets: Vec<SoldTicket>,
    pub total_cents: u64,
    /// The node that committed it.
    pub node: String,
    /// RFC 3339 time at which the node received the request.
    pub created_at: String,
    /// The key the client sent, so a retry through any node finds this outcome.
    pub idempotency_key: Option<IdempotencyKey>,
}

/// The counts and price range of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSummary {
    pub event: EventName,
    pub total: u64,
    /// `total - sold - held`.
    pub available: u64,
    pub sold: u64,
    /// Tickets held for a buyer (0 until holds exist).
    pub held: u64,
    pub min_price_cents: u64,
    pub max_price_cents: u64,
}

/// Formats a time as RFC 3339 in UTC with millisecond precision.
pub fn format_timestamp(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.format(&format)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_accept_the_original_events() {
        for name in ORIGINAL_EVENTS {
            assert_eq!(
                EventName::parse(name).map(|e| e.to_string()),
                Ok(name.into())
            );
        }
    }

    #[test]
    fn event_names_refuse_bad_characters_and_lengths() {
        for bad in [
            "",
            "Rock",
            "a/b",
            "..",
            "a b",
            "caf\u{e9}",
            "tab\t",
            &"x".repeat(65),
        ] {
            assert!(EventName::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(EventName::parse(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn quantity_is_one_to_ten() {
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(1).is_ok());
        assert!(Quantity::new(10).is_ok());
        assert!(Quantity::new(11).is_err());
    }

    #[test]
    fn quantity_from_json_refuses_fractions_negatives_and_huge_numbers() {
        let parse = |s: &str| {
            let n: serde_json::Number = serde_json::from_str(s).expect("test input is a number");
            Quantity::from_json(&n)
        };
        assert_eq!(parse("3").map(Quantity::get), Ok(3));
        for bad in [
            "0",
            "-1",
            "2.5",
            "1e3",
            "18446744073709551616",
            "4294967297",
        ] {
            assert!(parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(IdempotencyKey::parse("abc-123_XYZ").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(128)).is_ok());
        for bad in ["", "has space", "tab\t", "\u{e9}", &"k".repeat(129)] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn long_bad_names_are_truncated_in_messages() {
        let err = EventName::parse(&"X".repeat(1000)).expect_err("uppercase is refused");
        assert!(err.to_string().len() < 200);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_500);
        assert_eq!(format_timestamp(at), "1970-01-01T00:00:01.500Z");
    }
}
