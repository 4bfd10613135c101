//! Turns raw request parts into validated domain input: the purchase and hold bodies (count
//! or seats, customer, time to live), the `Idempotency-Key` header, query filters (event,
//! customer, paging) and path ids. Every refusal says what was wrong.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use serde::Deserialize;
use shared::api::IDEMPOTENCY_HEADER;
use shared::{
    CustomerId, EventName, HoldRequest, IdempotencyKey, OrderFilter, Quantity, SaleRequest, Seats,
    Selection, TicketFilter, Ttl, ValidationError,
};

use crate::error::ApiError;
use crate::paging::{self, Paging};

/// Reads a JSON request body, refusing other content types, bodies over `limit` bytes and
/// clients slower than `timeout`. A refused body is still read (up to `DRAIN_LIMIT`) so a
/// client that is still sending gets the answer instead of a broken pipe.
pub async fn read_json_body<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        drain(body, timeout).await;
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    let bytes = match collected {
        Err(_) => return Err(ApiError::BodyTimeout),
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        Ok(Err(err)) => {
            return Err(ApiError::BadRequest(format!(
                "the request body could not be read: {err}"
            )));
        }
    };
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    Ok(bytes)
}

/// The most of a refused body read and thrown away; past it the connection is closed.
const DRAIN_LIMIT: usize = 1024 * 1024;

async fn drain<B>(body: B, timeout: Duration)
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = tokio::time::timeout(timeout, Limited::new(body, DRAIN_LIMIT).collect()).await;
}

/// A purchase body as JSON has it. serde refuses missing, unknown, mistyped and
/// repeated fields; the values are checked against the domain's rules after.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurchaseJson {
    event: String,
    quantity: Option<serde_json::Number>,
    tickets: Option<Vec<serde_json::Number>>,
    customer: Option<String>,
}

/// A hold body: a purchase's fields and `ttl_seconds`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldJson {
    event: String,
    quantity: Option<serde_json::Number>,
    tickets: Option<Vec<serde_json::Number>>,
    customer: Option<String>,
    ttl_seconds: Option<serde_json::Number>,
}

/// Parses `{"event": "...", "quantity": n}` or `{"event": "...", "tickets": [ids]}`, with
/// an optional `customer`, strictly: no missing, extra, mistyped or repeated fields (a
/// filter in front that reads the first of two `quantity` fields must not see a different
/// purchase from the node's).
pub fn parse_purchase(body: &[u8]) -> Result<SaleRequest, ApiError> {
    const SHAPE: &str = "a purchase {\"event\": NAME, \"quantity\": 1 to 10 | \"tickets\": [ids], \"customer\": optional}";
    let json: PurchaseJson = from_json(body, SHAPE)?;
    sale(json.event, json.quantity, json.tickets, json.customer)
}

/// Parses a hold: a purchase's body and an optional `ttl_seconds` (10 to 3600, 600 when
/// absent).
pub fn parse_hold(body: &[u8]) -> Result<HoldRequest, ApiError> {
    const SHAPE: &str = "a hold {\"event\": NAME, \"quantity\": 1 to 10 | \"tickets\": [ids], \"customer\": optional, \"ttl_seconds\": optional}";
    let json: HoldJson = from_json(body, SHAPE)?;
    let sale = sale(json.event, json.quantity, json.tickets, json.customer)?;
    let ttl = match json.ttl_seconds {
        None => Ttl::default(),
        Some(n) => Ttl::from_json(&n).map_err(bad)?,
    };
    Ok(HoldRequest { sale, ttl })
}

fn bad(err: ValidationError) -> ApiError {
    ApiError::BadRequest(err.to_string())
}

fn from_json<T: for<'de> Deserialize<'de>>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        ApiError::BadRequest(match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                format!("the body is not valid JSON: {e}")
            }
            Category::Data => format!("the body is not {shape}: {e}"),
        })
    })
}

fn sale(
    event: String,
    quantity: Option<serde_json::Number>,
    tickets: Option<Vec<serde_json::Number>>,
    customer: Option<String>,
) -> Result<SaleRequest, ApiError> {
    let event = EventName::parse(&event).map_err(bad)?;
    let selection = match (quantity, tickets) {
        (Some(quantity), None) => Selection::Quantity(Quantity::from_json(&quantity).map_err(bad)?),
        (None, Some(ids)) => Selection::Seats(Seats::new(ticket_ids(&ids)?).map_err(bad)?),
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give quantity or tickets, not both".into(),
            ));
        }
        (None, None) => {
            return Err(ApiError::BadRequest(
                "give quantity (1 to 10) or tickets (1 to 10 ticket ids)".into(),
            ));
        }
    };
    let customer = customer.map(|c| parse_customer(&c)).transpose()?;
    Ok(SaleRequest {
        event,
        selection,
        customer,
    })
}

/// Reads the `tickets` of a body as ticket ids: positive integers that fit in 64 bits
/// (how many, and whether distinct, is `Seats::new`'s check).
fn ticket_ids(ids: &[serde_json::Number]) -> Result<Vec<u64>, ApiError> {
    ids.iter()
        .map(|id| {
            id.as_u64().filter(|&v| v > 0).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "a ticket id is a positive integer, got {}",
                    truncate(&id.to_string())
                ))
            })
        })
        .collect()
}

/// A customer: 1 to 64 characters from `[A-Za-z0-9._@-]`.
pub fn parse_customer(text: &str) -> Result<CustomerId, ApiError> {
    CustomerId::parse(text).map_err(bad)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The `Idempotency-Key` header, if sent; more than one, or a malformed one, is refused.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(
            "send at most one Idempotency-Key header".into(),
        ));
    }
    let text = value.to_str().map_err(|_| {
        ApiError::BadRequest("Idempotency-Key must be 1 to 128 visible ASCII characters".into())
    })?;
    IdempotencyKey::parse(text)
        .map(Some)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// The query of `GET /tickets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TicketQuery {
    event: Option<String>,
    sold: Option<bool>,
    after: Option<String>,
    limit: Option<String>,
}

/// The query of `GET /purchases` and of `GET /holds`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerQuery {
    event: Option<String>,
    customer: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

impl CustomerQuery {
    /// The event and the customer filtered by, each checked.
    fn filter(&self) -> Result<OrderFilter, ApiError> {
        Ok(OrderFilter {
            event: self.event.as_deref().map(event_filter).transpose()?,
            customer: self.customer.as_deref().map(parse_customer).transpose()?,
        })
    }
}

/// Parses a query string into `T`; unknown, repeated and mistyped parameters are refused.
fn query<T: for<'de> Deserialize<'de>>(query: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| {
        ApiError::BadRequest(format!("bad query string: {}", truncate(&e.to_string())))
    })
}

/// Parses the query of `GET /tickets`: `event=E` and `sold=true|false`, both optional, and
/// the paging parameters `after` and `limit`.
pub fn ticket_filter(text: Option<&str>) -> Result<(TicketFilter, Option<Paging>), ApiError> {
    let parsed: TicketQuery = query(text)?;
    let filter = TicketFilter {
        event: parsed.event.as_deref().map(event_filter).transpose()?,
        sold: parsed.sold,
    };
    let paging = paging::ticket_paging(parsed.after.as_deref(), parsed.limit.as_deref())?;
    Ok((filter, paging))
}

/// Reads `after` and `limit` of one listing ([`paging::purchase_paging`] or
/// [`paging::hold_paging`]).
pub type ReadPaging = fn(Option<&str>, Option<&str>) -> Result<Option<Paging>, ApiError>;

/// Parses the query of `GET /purchases` or `GET /holds`: `event=E` and `customer=C`, both
/// optional, and the paging parameters `after` and `limit`, read by `paging` (`after` a
/// purchase id or a hold id). (Who may filter by customer is the route's check.)
pub fn order_filter(
    text: Option<&str>,
    paging: ReadPaging,
) -> Result<(OrderFilter, Option<Paging>), ApiError> {
    let parsed: CustomerQuery = query(text)?;
    let filter = parsed.filter()?;
    let paging = paging(parsed.after.as_deref(), parsed.limit.as_deref())?;
    Ok((filter, paging))
}

fn event_filter(value: &str) -> Result<EventName, ApiError> {
    EventName::parse(value).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// Parses the `{id}` of `/tickets/{id}`: a positive integer that fits in 64 bits.
pub fn ticket_id(segment: &str) -> Result<u64, ApiError> {
    if segment.is_empty() || !segment.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::BadRequest(format!(
            "ticket id must be a positive integer, got {:?}",
            truncate(segment)
        )));
    }
    segment.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "ticket id {} is too large (the limit is {})",
            truncate(segment),
            u64::MAX
        ))
    })
}

/// Decodes a percent-encoded path segment; `None` if it is not UTF-8.
pub fn decode_segment(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(body: &str) -> String {
        match parse_purchase(body.as_bytes()) {
            Err(ApiError::BadRequest(message)) => message,
            other => panic!("{body:?} gave {other:?}, not a bad request"),
        }
    }

    #[test]
    fn a_well_formed_purchase_parses() {
        let input = parse_purchase(br#"{"event":"concert","quantity":2}"#).expect("valid");
        assert_eq!(input.event.as_str(), "concert");
        assert_eq!(
            input.selection,
            Selection::Quantity(Quantity::new(2).expect("valid"))
        );
        assert_eq!(input.customer, None);
        let input =
            parse_purchase(br#"{"event":"concert","tickets":[18,17],"customer":"a.b@c-d_E9"}"#)
                .expect("valid");
        assert_eq!(input.selection.quantity().get(), 2);
        let Selection::Seats(seats) = &input.selection else {
            panic!("{input:?}");
        };
        assert_eq!(seats.ids(), [17, 18]);
        assert_eq!(
            input.customer.as_ref().map(CustomerId::as_str),
            Some("a.b@c-d_E9")
        );
    }

    #[test]
    fn seats_are_one_to_ten_distinct_positive_ids_and_exclude_a_quantity() {
        for (tickets, says) in [
            ("[]", "1 to 10 distinct ticket ids"),
            ("[1,2,3,4,5,6,7,8,9,10,11]", "1 to 10 distinct ticket ids"),
            ("[1,1]", "1 to 10 distinct ticket ids"),
            ("[0]", "positive integer"),
            ("[-3]", "positive integer"),
            ("[1.5]", "positive integer"),
            ("[99999999999999999999999]", "positive integer"),
            (r#"["1"]"#, "invalid type"),
            ("1", "invalid type"),
        ] {
            let body = format!(r#"{{"event":"concert","tickets":{tickets}}}"#);
            assert!(bad(&body).contains(says), "{tickets}: {}", bad(&body));
        }
        assert!(bad(r#"{"event":"concert","quantity":1,"tickets":[1]}"#).contains("not both"));
        assert!(bad(r#"{"event":"concert"}"#).contains("give quantity"));
        let ten = parse_purchase(br#"{"event":"concert","tickets":[1,2,3,4,5,6,7,8,9,10]}"#);
        assert!(ten.is_ok(), "{ten:?}");
    }

    #[test]
    fn customers_are_one_to_sixty_four_of_the_allowed_characters() {
        assert!(parse_customer(&"c".repeat(64)).is_ok());
        for customer in [
            "",
            "has space",
            "a/b",
            "caf\u{e9}",
            "a+b",
            "quote'",
            &"c".repeat(65),
        ] {
            let body = format!(r#"{{"event":"concert","quantity":1,"customer":"{customer}"}}"#);
            assert!(
                bad(&body).contains("customer must be"),
                "{customer:?}: {}",
                bad(&body)
            );
        }
        assert!(bad(r#"{"event":"concert","quantity":1,"customer":7}"#).contains("invalid type"));
    }

    #[test]
    fn holds_take_a_purchase_body_and_a_ttl_of_ten_seconds_to_an_hour() {
        let hold = parse_hold(br#"{"event":"concert","quantity":1}"#).expect("valid");
        assert_eq!(hold.ttl.seconds(), 600);
        let hold =
            parse_hold(br#"{"event":"concert","tickets":[3],"ttl_seconds":10}"#).expect("valid");
        assert_eq!(hold.ttl.seconds(), 10);
        assert!(matches!(&hold.sale.selection, Selection::Seats(s) if s.ids() == [3]));
        assert_eq!(
            parse_hold(br#"{"event":"concert","quantity":1,"ttl_seconds":3600}"#)
                .map(|h| h.ttl.seconds())
                .ok(),
            Some(3600)
        );
        for ttl in ["9", "3601", "0", "-10", "10.5", "1e3", r#""60""#] {
            let body = format!(r#"{{"event":"concert","quantity":1,"ttl_seconds":{ttl}}}"#);
            match parse_hold(body.as_bytes()) {
                Err(ApiError::BadRequest(message)) => {
                    assert!(message.contains("ttl_seconds"), "{ttl}: {message}")
                }
                other => panic!("{ttl}: {other:?}"),
            }
        }
        // A purchase has no time to live.
        assert!(
            bad(r#"{"event":"concert","quantity":1,"ttl_seconds":60}"#).contains("unknown field")
        );
        let twice = br#"{"event":"concert","quantity":1,"ttl_seconds":60,"ttl_seconds":70}"#;
        assert!(
            matches!(parse_hold(twice), Err(ApiError::BadRequest(m)) if m.contains("duplicate field"))
        );
    }

    #[test]
    fn malformed_purchases_say_what_is_wrong() {
        assert!(bad("{").contains("not valid JSON"));
        assert!(bad("[]").contains("not a purchase"));
        assert!(bad(r#"{"quantity":1}"#).contains("missing field `event`"));
        assert!(bad(r#"{"event":"concert"}"#).contains("give quantity"));
        assert!(bad(r#"{"event":1,"quantity":1}"#).contains("invalid type: integer `1`"));
        assert!(bad(r#"{"event":"concert","quantity":"1"}"#).contains("invalid type: string"));
        assert!(bad(r#"{"event":"concert","quantity":1,"x":1}"#).contains("unknown field `x`"));
        assert!(
            bad(r#"{"event":"concert","quantity":1,"quantity":10}"#)
                .contains("duplicate field `quantity`")
        );
        assert!(
            bad(r#"{"event":"concert","event":"concert","quantity":1}"#)
                .contains("duplicate field `event`")
        );
        for q in ["0", "-1", "11", "2.5", "1e100", "99999999999999999999"] {
            let body = format!(r#"{{"event":"concert","quantity":{q}}}"#);
            assert!(bad(&body).contains("quantity"), "{q}");
        }
        for name in ["", "../x", "a/b", "Caps", "\u{e9}", "\\u0000"] {
            let body = format!(r#"{{"event":"{name}","quantity":1}}"#);
            assert!(bad(&body).contains("event name"), "{name:?}");
        }
    }

    #[test]
    fn ticket_filters_parse_and_refuse_bad_values() {
        let (f, paging) = ticket_filter(Some("event=concert&sold=false")).expect("valid");
        assert_eq!(f.event.map(|e| e.to_string()), Some("concert".into()));
        assert_eq!(f.sold, Some(false));
        assert_eq!(paging, None);
        assert_eq!(
            ticket_filter(None).expect("empty"),
            (TicketFilter::default(), None)
        );
        let (_, paging) = ticket_filter(Some("sold=true&after=5&limit=2")).expect("valid");
        assert_eq!(paging.map(|p| (p.after, p.limit)), Some((Some(5), 2)));
        for q in [
            "sold=yes",
            "event=Bad",
            "event=%2F",
            "colour=red",
            "limit=0",
            "after=x",
            "limit=5&limit=6",
            "event=concert&event=theater-show",
        ] {
            assert!(ticket_filter(Some(q)).is_err(), "{q}");
        }
    }

    #[test]
    fn ticket_ids_must_be_positive_integers_that_fit() {
        assert_eq!(ticket_id("17").expect("valid"), 17);
        for bad in ["", "-1", "abc", "1.5", "99999999999999999999999"] {
            assert!(ticket_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn idempotency_keys_are_checked() {
        let mut headers = HeaderMap::new();
        assert_eq!(idempotency_key(&headers).expect("absent"), None);
        headers.insert(IDEMPOTENCY_HEADER, "abc".parse().expect("valid header"));
        assert!(idempotency_key(&headers).expect("valid").is_some());
        headers.append(IDEMPOTENCY_HEADER, "def".parse().expect("valid header"));
        assert!(idempotency_key(&headers).is_err());
    }

    mod fuzz {
        //! Bounded property runs over the request decoding: no input panics, and whatever
        //! is accepted is within the contract.
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            #[test]
            fn any_bytes_are_parsed_or_refused_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = parse_purchase(&body);
                let _ = parse_hold(&body);
            }

            #[test]
            fn any_json_purchase_shape_is_accepted_only_within_the_contract(
                event in "\\PC{0,70}",
                quantity in any::<i64>(),
                extra in proptest::option::of("[a-z]{1,8}"),
            ) {
                let mut object = serde_json::json!({"event": event, "quantity": quantity});
                if let Some(key) = extra {
                    object[key] = serde_json::json!(1);
                }
                let body = serde_json::to_vec(&object).expect("serialisable");
                match parse_purchase(&body) {
                    Ok(input) => {
                        let Selection::Quantity(quantity) = input.selection else {
                            panic!("a body with a quantity gave seats");
                        };
                        prop_assert!((1..=10).contains(&quantity.get()));
                        prop_assert!(input.event.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
                        prop_assert!((1..=64).contains(&input.event.as_str().len()));
                    }
                    Err(ApiError::BadRequest(message)) => prop_assert!(!message.is_empty()),
                    Err(other) => prop_assert!(false, "unexpected error {other:?}"),
                }
            }

            #[test]
            fn any_query_or_id_is_parsed_or_refused_without_panicking(text in "\\PC{0,80}") {
                let _ = ticket_filter(Some(&text));
                let _ = order_filter(Some(&text), paging::purchase_paging);
                let _ = order_filter(Some(&text), paging::hold_paging);
                let _ = ticket_id(&text);
                let _ = decode_segment(&text);
            }
        }
    }
}
