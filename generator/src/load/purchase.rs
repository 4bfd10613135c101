//! One write of a load run (a purchase, a hold, a confirm, a release, a cancel) with its
//! own Idempotency-Key, repeated with the same key while the outcome is unknown (no
//! answer, 502, 503, 504), and the first write's answer classified into an [`Outcome`].

use std::time::Duration;

use hyper::StatusCode;
use shared::api::IDEMPOTENCY_HEADER;

use super::stats::Outcome;
use crate::client::{Answer, ApiClient, ClientError};
use crate::wire::{Hold, OrderRequest, Purchase};

/// What the run needs to know about one purchase besides its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempted {
    pub outcome: Outcome,
    /// The `X-Node` of every answer received, retries included.
    pub nodes: Vec<String>,
    pub retries: u32,
    /// The target answered 404 `unknown_event`.
    pub unknown_event: bool,
}

/// One write's final answer, after its retries.
#[derive(Debug)]
pub struct Written {
    pub result: Result<Answer, ClientError>,
    /// The `X-Node` of every answer received, retries included.
    pub nodes: Vec<String>,
    pub retries: u32,
}

impl Written {
    /// Whether the target answered 404 `unknown_event`.
    pub fn unknown_event(&self) -> bool {
        matches!(&self.result, Ok(a) if a.status == StatusCode::NOT_FOUND
            && a.error_body().is_some_and(|e| e.error == "unknown_event"))
    }
}

/// POSTs `body` (or nothing) to `path` with the Idempotency-Key `key` and the `extra`
/// headers, repeating it up to `retries` times with the same key while the outcome is
/// unknown.
pub async fn write(
    client: &ApiClient,
    path: &str,
    body: Option<&OrderRequest>,
    key: &str,
    extra: &[(&'static str, &str)],
    retries: u32,
) -> Written {
    let mut headers = vec![(IDEMPOTENCY_HEADER, key)];
    headers.extend_from_slice(extra);
    let mut nodes = Vec::new();
    let mut attempt = 0;
    loop {
        let result = match body {
            Some(body) => client.post_json(path, body, &headers).await,
            None => client.post_empty(path, &headers).await,
        };
        if let Ok(Answer { node: Some(n), .. }) = &result {
            nodes.push(n.clone());
        }
        if outcome_unknown(&result) && attempt < retries {
            attempt += 1;
            tokio::time::sleep(backoff(attempt)).await;
            continue;
        }
        return Written {
            result,
            nodes,
            retries: attempt,
        };
    }
}

/// Sends one purchase, retrying up to `retries` times with the same key.
pub async fn purchase(
    client: &ApiClient,
    body: &OrderRequest,
    key: &str,
    retries: u32,
) -> Attempted {
    let written = write(client, "/purchases", Some(body), key, &[], retries).await;
    let unknown_event = written.unknown_event();
    Attempted {
        outcome: classify(&written.result),
        nodes: written.nodes,
        retries: written.retries,
        unknown_event,
    }
}

/// Whether the purchase may or may not have happened, so repeating it is the only way
/// to learn (and is safe under the same Idempotency-Key).
fn outcome_unknown(result: &Result<Answer, ClientError>) -> bool {
    match result {
        Ok(answer) => matches!(
            answer.status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ),
        Err(err) => err.outcome_unknown(),
    }
}

/// A short pause before retry `attempt` (1-based), growing with each try.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50 * u64::from(attempt.min(10)))
}

/// Names the final answer of a purchase or a hold (a 201 is told apart by its body).
pub fn classify(result: &Result<Answer, ClientError>) -> Outcome {
    let answer = match result {
        Ok(answer) => answer,
        Err(err) => {
            return Outcome::Failed {
                kind: err.kind().to_owned(),
            };
        }
    };
    if answer.status == StatusCode::CREATED {
        if let Ok(p) = serde_json::from_slice::<Purchase>(&answer.body) {
            return Outcome::Sold {
                tickets: p.tickets.len() as u64,
                total_cents: p.total_cents,
            };
        }
        if let Ok(h) = serde_json::from_slice::<Hold>(&answer.body) {
            return Outcome::Held {
                tickets: h.tickets.len() as u64,
            };
        }
        return Outcome::Failed {
            kind: "bad_response".into(),
        };
    }
    refusal(answer)
}

/// Names an answer that is not a success: `sold_out` with what is left, the box office's
/// expected refusals, or a failure by its code or status.
pub fn refusal(answer: &Answer) -> Outcome {
    match answer.error_body() {
        Some(e) if answer.status == StatusCode::CONFLICT && e.error == "sold_out" => {
            Outcome::SoldOut {
                available: e.available.unwrap_or(0),
            }
        }
        Some(e) if answer.status == StatusCode::CONFLICT && is_refusal(&e.error) => {
            Outcome::Refused { code: e.error }
        }
        Some(e) => Outcome::Failed { kind: e.error },
        None => Outcome::Failed {
            kind: format!("http_{}", answer.status.as_u16()),
        },
    }
}

/// The 409 codes a box office answers in the normal course of business: a buyer lost a
/// race for a seat, hit the customer limit, or came back to a hold that had ended.
pub const REFUSALS: [&str; 5] = [
    "tickets_unavailable",
    "customer_limit",
    "hold_expired",
    "hold_released",
    "hold_confirmed",
];

fn is_refusal(code: &str) -> bool {
    REFUSALS.contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn answer(status: u16, body: &str) -> Result<Answer, ClientError> {
        Ok(Answer {
            status: StatusCode::from_u16(status).expect("valid status"),
            node: Some("n1".into()),
            body: Bytes::from(body.to_owned()),
        })
    }

    #[test]
    fn a_201_counts_the_tickets_sold() {
        let body = r#"{"purchase_id":"p-1","event":"concert","quantity":2,
            "tickets":[{"id":1,"price_cents":100},{"id":2,"price_cents":250}],
            "total_cents":350,"node":"n1","created_at":"2024-01-01T00:00:00.000Z"}"#;
        assert_eq!(
            classify(&answer(201, body)),
            Outcome::Sold {
                tickets: 2,
                total_cents: 350
            }
        );
    }

    #[test]
    fn a_201_hold_counts_its_tickets_and_box_office_409s_are_refusals() {
        let body = r#"{"hold_id":"h-1","event":"concert","quantity":1,
            "tickets":[{"id":7,"price_cents":100}],"total_cents":100,"node":"n1",
            "created_at":"2024-01-01T00:00:00.000Z","expires_at":"2024-01-01T00:10:00.000Z",
            "status":"held","secret":"s"}"#;
        assert_eq!(classify(&answer(201, body)), Outcome::Held { tickets: 1 });
        for code in REFUSALS {
            let body = format!(r#"{{"error":"{code}","message":"m"}}"#);
            assert_eq!(
                classify(&answer(409, &body)),
                Outcome::Refused { code: code.into() }
            );
        }
        let forbidden = r#"{"error":"forbidden","message":"m"}"#;
        assert_eq!(
            classify(&answer(403, forbidden)),
            Outcome::Failed {
                kind: "forbidden".into()
            }
        );
    }

    #[test]
    fn a_sold_out_409_carries_what_is_left() {
        let body = r#"{"error":"sold_out","message":"m","available":3}"#;
        assert_eq!(
            classify(&answer(409, body)),
            Outcome::SoldOut { available: 3 }
        );
    }

    #[test]
    fn other_failures_are_named_by_code_or_status() {
        let coded = r#"{"error":"store_unavailable","message":"m"}"#;
        assert_eq!(
            classify(&answer(503, coded)),
            Outcome::Failed {
                kind: "store_unavailable".into()
            }
        );
        assert_eq!(
            classify(&answer(502, "<html>")),
            Outcome::Failed {
                kind: "http_502".into()
            }
        );
        assert_eq!(
            classify(&answer(201, "not json")),
            Outcome::Failed {
                kind: "bad_response".into()
            }
        );
    }

    #[test]
    fn only_gateway_failures_and_lost_answers_are_retried() {
        assert!(outcome_unknown(&answer(503, "")));
        assert!(outcome_unknown(&answer(504, "")));
        assert!(!outcome_unknown(&answer(409, "")));
        assert!(!outcome_unknown(&answer(500, "")));
        assert!(!outcome_unknown(&answer(201, "")));
    }
}
