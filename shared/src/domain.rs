//! The ticket domain: events, tickets, purchase and hold requests, committed purchases and
//! holds, customers and times, with the validation every program shares.

use std::fmt;
use std::ops::RangeInclusive;
use std::time::{Duration, SystemTime};

use thiserror::Error;

use crate::secret::{KeyHash, Salt, SecretHash};

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
    #[error("customer must be 1 to 64 characters from [A-Za-z0-9._@-], got {0:?}")]
    Customer(String),
    #[error("tickets must be 1 to {MAX_QUANTITY} distinct ticket ids, got {0}")]
    Seats(String),
    #[error(
        "ttl_seconds must be a whole number from {MIN_TTL_SECONDS} to {MAX_TTL_SECONDS}, got {0}"
    )]
    Ttl(String),
    #[error("{0:?} is not an RFC 3339 time")]
    Timestamp(String),
}

/// Defines a validated name: a text of 1 to 64 bytes, each `allowed`, refused with the
/// `ValidationError` variant `invalid` (showing the text, truncated).
macro_rules! validated_name {
    ($(#[$doc:meta])* $name:ident, $allowed:expr, $invalid:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn parse(text: &str) -> Result<Self, ValidationError> {
                token(text, 64, $allowed, |text| {
                    ValidationError::$invalid(truncate_for_message(text))
                })
                .map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

validated_name!(
    /// A validated event name: 1 to 64 characters from `[a-z0-9-]`.
    EventName,
    |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-',
    EventName
);

validated_name!(
    /// Who a purchase or hold is for: 1 to 64 characters from `[A-Za-z0-9._@-]`.
    CustomerId,
    |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'),
    Customer
);

/// `text` when it is 1 to `max_len` bytes, each of them `allowed`; otherwise the error
/// `invalid` makes of it.
fn token(
    text: &str,
    max_len: usize,
    allowed: fn(u8) -> bool,
    invalid: impl FnOnce(&str) -> ValidationError,
) -> Result<String, ValidationError> {
    if (1..=max_len).contains(&text.len()) && text.bytes().all(allowed) {
        Ok(text.to_owned())
    } else {
        Err(invalid(text))
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

/// `value` when it lies in `range`; otherwise the `invalid` error, naming it.
fn within(
    value: u32,
    range: RangeInclusive<u32>,
    invalid: fn(String) -> ValidationError,
) -> Result<u32, ValidationError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(invalid(value.to_string()))
    }
}

/// A JSON number that is a whole number in `range`; a fraction, a negative or a number
/// out of range is the `invalid` error, naming the number as it was written.
fn json_within(
    value: &serde_json::Number,
    range: RangeInclusive<u32>,
    invalid: fn(String) -> ValidationError,
) -> Result<u32, ValidationError> {
    match value.as_u64().map(u32::try_from) {
        Some(Ok(whole)) if range.contains(&whole) => Ok(whole),
        _ => Err(invalid(value.to_string())),
    }
}

/// A validated number of tickets for one purchase: 1 to [`MAX_QUANTITY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(u32);

impl Quantity {
    pub fn new(quantity: u32) -> Result<Self, ValidationError> {
        within(quantity, 1..=MAX_QUANTITY, ValidationError::Quantity).map(Self)
    }

    /// Accepts any JSON number, refusing fractions, negatives and values out of range.
    pub fn from_json(value: &serde_json::Number) -> Result<Self, ValidationError> {
        json_within(value, 1..=MAX_QUANTITY, ValidationError::Quantity).map(Self)
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// The quantity of `count` tickets already known to be 1 to [`MAX_QUANTITY`] (a
    /// hold's, checked when it was made or loaded), clamped to that range.
    pub(crate) fn of_count(count: usize) -> Self {
        Self(count.clamp(1, MAX_QUANTITY as usize) as u32)
    }
}

/// A client-chosen key that makes a purchase safe to retry: 1 to 128 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(key: &str) -> Result<Self, ValidationError> {
        token(
            key,
            128,
            |b| b.is_ascii_graphic(),
            |_| ValidationError::IdempotencyKey,
        )
        .map(Self)
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

/// A committed sale: every ticket in it was sold to it and to nothing else, unless it was
/// cancelled since (then its tickets went back on sale).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    pub purchase_id: String,
    pub event: EventName,
    pub quantity: Quantity,
    pub tickets: Vec<SoldTicket>,
    pub total_cents: u64,
    /// The node that committed it.
    pub node: String,
    /// When the store decided it: the later of the node's clock and the latest time in the
    /// log, so times along the log never go back.
    pub created_at: Timestamp,
    /// Who bought it (personal data: shown only to its secret's or the operator's holder).
    pub customer: Option<CustomerId>,
    /// Whether the buyer named the tickets (`"tickets"`) rather than a count, so a retry
    /// with the same key is compared with what was asked.
    pub seats: bool,
    /// The hold this purchase confirmed, if it came from one.
    pub hold_id: Option<String>,
    /// Set once the purchase is cancelled; its tickets are then on sale again.
    pub cancelled: Option<Change>,
    /// Who may change it, and the key that made it.
    pub access: Access,
}

impl Purchase {
    /// Whether it still holds its tickets.
    pub fn is_live(&self) -> bool {
        self.cancelled.is_none()
    }
}

/// When a purchase or hold was changed (cancelled, released), and the idempotency key of
/// the request that did it, so a reuse of that key for something else is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub at: Timestamp,
    pub key: Option<KeyHash>,
}

/// What lets a purchase or hold be changed, and the key it was made with. The store keeps
/// hashes only: neither the secret nor the key is in it in clear.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// The hash of its secret; `None` only for purchases made before secrets existed
    /// (those only the operator's token changes).
    pub secret: Option<SecretHash>,
    /// The hash of the `Idempotency-Key` the creating request carried.
    pub key: Option<KeyHash>,
    /// With a key: the random salt the secret was derived from
    /// ([`crate::secret::derive_secret`]), so an idempotent repeat answers the secret again.
    pub salt: Option<Salt>,
}

/// Tickets held for a buyer until `expires_at`, unless confirmed or released first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// `h-<8 digits>`, numbered in log order.
    pub hold_id: String,
    pub event: EventName,
    pub tickets: Vec<SoldTicket>,
    pub total_cents: u64,
    pub customer: Option<CustomerId>,
    /// The node that committed it.
    pub node: String,
    /// When the store decided it (as for a purchase).
    pub created_at: Timestamp,
    /// `created_at` plus the time to live: from this moment it is expired.
    pub expires_at: Timestamp,
    /// Whether the buyer named the tickets rather than a count.
    pub seats: bool,
    /// What has become of it, as the log says. A hold still `Held` at or after
    /// `expires_at` is expired even before the log says so (see
    /// [`crate::Inventory::hold`]).
    pub state: HoldState,
    pub access: Access,
}

impl Hold {
    pub fn quantity(&self) -> usize {
        self.tickets.len()
    }

    /// The time to live it was asked with, in seconds.
    pub fn ttl_seconds(&self) -> u64 {
        self.expires_at
            .millis()
            .saturating_sub(self.created_at.millis())
            / 1000
    }
}

/// What the log says of a hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldState {
    /// Its tickets are held (until `expires_at`).
    Held,
    /// Turned into the purchase `purchase_id` at `at`.
    Confirmed { purchase_id: String, at: Timestamp },
    /// Given back by its holder or the operator.
    Released(Change),
    /// Expired: a decision at `at` (on or after `expires_at`) found it so and logged it.
    Expired { at: Timestamp },
}

/// A hold's status as the API shows it, at a given time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldStatus {
    Held,
    Confirmed { purchase_id: String },
    Released,
    Expired,
}

impl HoldStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Confirmed { .. } => "confirmed",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }
}

/// A hold with its status at the time it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldView {
    pub hold: Hold,
    pub status: HoldStatus,
}

/// A ticket's status at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketStatus {
    Available,
    Held,
    Sold,
}

/// The counts and price range of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSummary {
    pub event: EventName,
    pub total: u64,
    /// `total - sold - held`.
    pub available: u64,
    pub sold: u64,
    /// Tickets in live holds.
    pub held: u64,
    pub min_price_cents: u64,
    pub max_price_cents: u64,
    /// The most tickets one customer may have in live purchases and holds of this event.
    pub max_per_customer: Option<u32>,
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

/// A point in time to the millisecond (since the Unix epoch), as the log records it and
/// decisions compare it. Shown as RFC 3339 in UTC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    pub const fn millis(self) -> u64 {
        self.0
    }

    /// The time `at`, cut to the millisecond; a time before 1970 is the epoch.
    pub fn from_system(at: SystemTime) -> Self {
        let since = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Self(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn to_system(self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// Reads an RFC 3339 time (as [`Timestamp`]'s `Display` writes it, or any offset).
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        let bad = || ValidationError::Timestamp(truncate_for_message(text));
        let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map_err(|_| bad())?;
        let millis = at.unix_timestamp_nanos() / 1_000_000;
        u64::try_from(millis).map(Self).map_err(|_| bad())
    }

    pub fn plus_seconds(self, seconds: u64) -> Self {
        Self(self.0.saturating_add(seconds.saturating_mul(1000)))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_timestamp(self.to_system()))
    }
}

/// Named tickets to buy or hold: 1 to [`MAX_QUANTITY`] distinct ids, kept sorted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Seats(Vec<u64>);

impl Seats {
    pub fn new(mut ids: Vec<u64>) -> Result<Self, ValidationError> {
        let described = || format!("{ids:?}");
        if ids.is_empty() || ids.len() > MAX_QUANTITY as usize {
            return Err(ValidationError::Seats(described()));
        }
        let given = described();
        ids.sort_unstable();
        if ids.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(ValidationError::Seats(given));
        }
        Ok(Self(ids))
    }

    pub fn ids(&self) -> &[u64] {
        &self.0
    }

    pub fn quantity(&self) -> Quantity {
        Quantity(self.0.len() as u32)
    }
}

/// Which tickets a purchase or hold asks for: a count (the lowest-numbered available
/// ones) or named seats.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selection {
    Quantity(Quantity),
    Seats(Seats),
}

impl Selection {
    pub fn quantity(&self) -> Quantity {
        match self {
            Self::Quantity(q) => *q,
            Self::Seats(s) => s.quantity(),
        }
    }
}

/// The shortest time to live of a hold, in seconds.
pub const MIN_TTL_SECONDS: u32 = 10;
/// The longest time to live of a hold, in seconds.
pub const MAX_TTL_SECONDS: u32 = 3600;
/// The time to live of a hold that names none, in seconds.
pub const DEFAULT_TTL_SECONDS: u32 = 600;

/// How long a hold lasts: [`MIN_TTL_SECONDS`] to [`MAX_TTL_SECONDS`] seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ttl(u32);

impl Ttl {
    pub fn new(seconds: u32) -> Result<Self, ValidationError> {
        within(
            seconds,
            MIN_TTL_SECONDS..=MAX_TTL_SECONDS,
            ValidationError::Ttl,
        )
        .map(Self)
    }

    /// Accepts any JSON number, refusing fractions, negatives and values out of range.
    pub fn from_json(value: &serde_json::Number) -> Result<Self, ValidationError> {
        json_within(
            value,
            MIN_TTL_SECONDS..=MAX_TTL_SECONDS,
            ValidationError::Ttl,
        )
        .map(Self)
    }

    pub fn seconds(self) -> u32 {
        self.0
    }
}

impl Default for Ttl {
    fn default() -> Self {
        Self(DEFAULT_TTL_SECONDS)
    }
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
