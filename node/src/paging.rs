//! The `after` and `limit` query parameters of the paged listings (`GET /tickets`,
//! `GET /purchases`, `GET /holds`): when either is given the answer is one page, else the
//! whole list.

use shared::{MAX_PAGE_LIMIT, hold_number, purchase_number};

use crate::error::ApiError;

/// Where a page starts and how many items it holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    /// The key of the item the page follows: a ticket id, or a purchase's or hold's number.
    pub after: Option<u64>,
    pub limit: usize,
}

/// Reads `after` and `limit` of `GET /tickets`: `after` a ticket id. `None` when neither
/// was given (the whole list is asked for).
pub fn ticket_paging(after: Option<&str>, limit: Option<&str>) -> Result<Option<Paging>, ApiError> {
    paging(after, limit, |text| {
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
            .ok_or_else(|| bad(format!("after must be a ticket id, got {:?}", short(text))))
    })
}

/// Reads `after` and `limit` of `GET /purchases`: `after` a purchase id (`p-<number>`).
pub fn purchase_paging(
    after: Option<&str>,
    limit: Option<&str>,
) -> Result<Option<Paging>, ApiError> {
    paging(after, limit, |text| {
        purchase_number(text).ok_or_else(|| {
            bad(format!(
                "after must be a purchase id, got {:?}",
                short(text)
            ))
        })
    })
}

/// Reads `after` and `limit` of `GET /holds`: `after` a hold id (`h-<number>`).
pub fn hold_paging(after: Option<&str>, limit: Option<&str>) -> Result<Option<Paging>, ApiError> {
    paging(after, limit, |text| {
        hold_number(text)
            .ok_or_else(|| bad(format!("after must be a hold id, got {:?}", short(text))))
    })
}

fn paging(
    after: Option<&str>,
    limit: Option<&str>,
    parse_after: impl Fn(&str) -> Result<u64, ApiError>,
) -> Result<Option<Paging>, ApiError> {
    if after.is_none() && limit.is_none() {
        return Ok(None);
    }
    let after = after.map(parse_after).transpose()?;
    // `after` alone pages as much as a page may hold.
    let limit = match limit {
        None => MAX_PAGE_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_LIMIT).contains(n))
            .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                bad(format!(
                    "limit must be a number from 1 to {MAX_PAGE_LIMIT}, got {:?}",
                    short(text)
                ))
            })?,
    };
    Ok(Some(Paging { after, limit }))
}

fn bad(message: String) -> ApiError {
    ApiError::BadRequest(message)
}

fn short(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neither_parameter_asks_for_the_whole_list() {
        assert_eq!(ticket_paging(None, None).expect("valid"), None);
        assert_eq!(purchase_paging(None, None).expect("valid"), None);
    }

    #[test]
    fn after_and_limit_are_read_and_after_alone_takes_the_largest_page() {
        let page = ticket_paging(Some("17"), Some("5")).expect("valid");
        assert_eq!(
            page,
            Some(Paging {
                after: Some(17),
                limit: 5
            })
        );
        let page = purchase_paging(Some("p-00000042"), None).expect("valid");
        assert_eq!(
            page,
            Some(Paging {
                after: Some(42),
                limit: MAX_PAGE_LIMIT
            })
        );
        let page = purchase_paging(None, Some("10000")).expect("valid");
        assert_eq!(page.map(|p| (p.after, p.limit)), Some((None, 10_000)));
    }

    #[test]
    fn limits_outside_one_to_ten_thousand_and_bad_afters_are_refused() {
        for limit in [
            "0",
            "10001",
            "-1",
            "+5",
            "abc",
            "",
            "1.5",
            "99999999999999999999999",
        ] {
            assert!(ticket_paging(None, Some(limit)).is_err(), "limit {limit}");
        }
        for after in ["", "-1", "abc", "p-1", "99999999999999999999999"] {
            assert!(
                ticket_paging(Some(after), None).is_err(),
                "ticket after {after}"
            );
        }
        for after in ["", "17", "p-", "p-x", "q-1", "h-1"] {
            assert!(
                purchase_paging(Some(after), None).is_err(),
                "purchase after {after}"
            );
        }
        for after in ["", "17", "h-", "h-x", "p-1"] {
            assert!(
                hold_paging(Some(after), None).is_err(),
                "hold after {after}"
            );
        }
        let page = hold_paging(Some("h-00000003"), Some("2")).expect("valid");
        assert_eq!(page.map(|p| (p.after, p.limit)), Some((Some(3), 2)));
    }
}
