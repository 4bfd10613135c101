//! One buyer of a load run, from its scheduled time to its last request: it may pick its
//! seats (`GET /tickets?event=E&sold=false&limit=..`), then buys or holds, then confirms,
//! releases or cancels with the secret of the 201 answer. Every write carries its own
//! Idempotency-Key (the buyer's key, suffixed for each step) and is repeated with it while
//! its outcome is unknown.

use std::time::Duration;

use hyper::StatusCode;
use rand::Rng;
use rand::seq::IndexedRandom;
use tokio::time::Instant;

use super::mix::Plan;
use super::purchase::{Written, classify, refusal, write};
use super::stats::Outcome;
use crate::client::{ApiClient, ClientError};
use crate::wire::{Hold, HoldStatus, OrderRequest, Purchase, SECRET_HEADER, Ticket, TicketStatus};

/// How many unsold tickets one seat pick reads to choose from.
pub const PICK_WINDOW: usize = 64;

/// What one buyer is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buyer {
    pub plan: Plan,
    pub event: String,
    pub quantity: u32,
    /// Name seats picked from the unsold tickets instead of asking for a count; starting
    /// the pick after this ticket id (a random place, so buyers spread over the hall).
    pub seats_after: Option<u64>,
    pub customer: Option<String>,
    pub ttl_seconds: Option<u64>,
    /// The Idempotency-Key of the first write; each later step adds a suffix.
    pub key: String,
}

/// A request after the first write, and how long it took from its own send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub kind: &'static str,
    pub latency: Duration,
}

/// Everything a buyer did, for the run's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journey {
    /// How the first write (the purchase or the hold) ended.
    pub first: Outcome,
    /// When the first write's answer came (the end of its latency).
    pub first_answered: Instant,
    /// Outcomes after the first write: `confirmed`, `released`, `cancelled`,
    /// `abandoned`, `expired`, `hold_released`, `no_seats`, ...
    pub later: Vec<String>,
    /// Errors after the first write, by kind.
    pub later_errors: Vec<String>,
    /// Tickets and cents sold by a confirm.
    pub confirmed_sale: Option<(u64, u64)>,
    pub steps: Vec<Step>,
    /// The `X-Node` of every answer received.
    pub nodes: Vec<String>,
    pub retries: u32,
    /// The target answered 404 `unknown_event` to the first write.
    pub unknown_event: bool,
}

impl Journey {
    fn new(first: Outcome) -> Self {
        Self {
            first,
            first_answered: Instant::now(),
            later: Vec::new(),
            later_errors: Vec::new(),
            confirmed_sale: None,
            steps: Vec::new(),
            nodes: Vec::new(),
            retries: 0,
            unknown_event: false,
        }
    }

    fn absorb(&mut self, written: &Written) {
        self.nodes.extend(written.nodes.iter().cloned());
        self.retries += written.retries;
    }

    /// Counts a later answer: its outcome when expected, its error otherwise. A release
    /// of a hold that had already expired answers 200 with the hold `expired`: counted so.
    fn later_answer(&mut self, expected: StatusCode, name: &str, written: &Written) {
        match &written.result {
            Ok(answer)
                if answer.status == expected
                    && serde_json::from_slice::<Hold>(&answer.body)
                        .is_ok_and(|h| h.status == HoldStatus::Expired) =>
            {
                self.later.push("expired".into());
            }
            Ok(answer) if answer.status == expected => self.later.push(name.to_owned()),
            Ok(answer) => match refusal(answer) {
                Outcome::Refused { code } if code == "hold_expired" => {
                    self.later.push("expired".into());
                }
                Outcome::Refused { code } => self.later.push(code),
                Outcome::Failed { kind } => self.later_errors.push(kind),
                other => self.later_errors.push(format!("{other:?}")),
            },
            Err(err) => self.later_errors.push(err.kind().to_owned()),
        }
    }
}

/// Runs one buyer to its end.
pub async fn run(client: &ApiClient, buyer: &Buyer, retries: u32, rng: &mut impl Rng) -> Journey {
    let mut seats = None;
    let mut pick_step = None;
    if let Some(after) = buyer.seats_after {
        let sent = Instant::now();
        let picked = pick_seats(client, &buyer.event, buyer.quantity, after, rng).await;
        pick_step = Some(Step {
            kind: "pick",
            latency: sent.elapsed(),
        });
        match picked {
            Ok(ids) if ids.is_empty() => {
                let mut journey = Journey::new(Outcome::Refused {
                    code: "no_seats".into(),
                });
                journey.steps.extend(pick_step);
                return journey;
            }
            Ok(ids) => seats = Some(ids),
            Err(err) => {
                let mut journey = Journey::new(Outcome::Failed {
                    kind: err.kind().to_owned(),
                });
                journey.steps.extend(pick_step);
                return journey;
            }
        }
    }
    let holds = matches!(
        buyer.plan,
        Plan::HoldConfirm | Plan::HoldAbandon | Plan::HoldRelease
    );
    let order = OrderRequest {
        event: buyer.event.clone(),
        quantity: if seats.is_some() {
            None
        } else {
            Some(buyer.quantity)
        },
        tickets: seats,
        customer: buyer.customer.clone(),
        ttl_seconds: if holds { buyer.ttl_seconds } else { None },
    };
    let path = if holds { "/holds" } else { "/purchases" };
    let written = write(client, path, Some(&order), &buyer.key, &[], retries).await;
    let body = match &written.result {
        Ok(answer) if answer.status == StatusCode::CREATED => Some(answer.body.clone()),
        _ => None,
    };
    let unknown_event = written.unknown_event();
    let mut journey = Journey::new(classify(&written.result));
    journey.absorb(&written);
    journey.unknown_event = unknown_event;
    journey.steps.extend(pick_step);
    let Some(body) = body else {
        return journey;
    };
    match buyer.plan {
        Plan::Buy => {}
        Plan::HoldAbandon => journey.later.push("abandoned".into()),
        Plan::BuyCancel => {
            let Ok(purchase) = serde_json::from_slice::<Purchase>(&body) else {
                return journey;
            };
            let path = format!("/purchases/{}/cancel", purchase.purchase_id);
            follow_up(
                client,
                &mut journey,
                (&path, "cancel", &buyer.key),
                purchase.secret.as_deref(),
                (StatusCode::OK, "cancelled"),
                retries,
            )
            .await;
        }
        Plan::HoldConfirm | Plan::HoldRelease => {
            let Ok(hold) = serde_json::from_slice::<Hold>(&body) else {
                return journey;
            };
            let (action, expected, name) = if buyer.plan == Plan::HoldConfirm {
                ("confirm", StatusCode::CREATED, "confirmed")
            } else {
                ("release", StatusCode::OK, "released")
            };
            let path = format!("/holds/{}/{action}", hold.hold_id);
            let written = follow_up(
                client,
                &mut journey,
                (&path, action, &buyer.key),
                hold.secret.as_deref(),
                (expected, name),
                retries,
            )
            .await;
            if let Some(Ok(answer)) = written.map(|w| w.result)
                && answer.status == StatusCode::CREATED
                && let Ok(p) = serde_json::from_slice::<Purchase>(&answer.body)
            {
                journey.confirmed_sale = Some((p.tickets.len() as u64, p.total_cents));
            }
        }
    }
    journey
}

/// Sends a confirm, release or cancel (`what` is its path, its step kind and the buyer's
/// key) with the secret of the 201, and counts its answer as `expect`ed or not. Without a
/// secret (a node before the box office) nothing is sent and `no_secret` is counted.
async fn follow_up(
    client: &ApiClient,
    journey: &mut Journey,
    (path, kind, key): (&str, &'static str, &str),
    secret: Option<&str>,
    (expected, name): (StatusCode, &str),
    retries: u32,
) -> Option<Written> {
    let Some(secret) = secret else {
        journey.later_errors.push("no_secret".into());
        return None;
    };
    let key = format!("{key}-{kind}");
    let sent = Instant::now();
    let written = write(
        client,
        path,
        None,
        &key,
        &[(SECRET_HEADER, secret)],
        retries,
    )
    .await;
    journey.steps.push(Step {
        kind,
        latency: sent.elapsed(),
    });
    journey.absorb(&written);
    journey.later_answer(expected, name, &written);
    Some(written)
}

/// Up to `quantity` available seats of `event`, chosen at random among the unsold
/// tickets listed after ticket `after` (or from the first, when none are there).
pub async fn pick_seats(
    client: &ApiClient,
    event: &str,
    quantity: u32,
    after: u64,
    rng: &mut impl Rng,
) -> Result<Vec<u64>, ClientError> {
    let mut found = available_after(client, event, Some(after)).await?;
    if found.is_empty() && after > 0 {
        found = available_after(client, event, None).await?;
    }
    let mut ids: Vec<u64> = found
        .choose_multiple(rng, quantity as usize)
        .copied()
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// The ids of the available (neither sold nor held) tickets of `event` on one page.
async fn available_after(
    client: &ApiClient,
    event: &str,
    after: Option<u64>,
) -> Result<Vec<u64>, ClientError> {
    let mut path = format!("/tickets?event={event}&sold=false&limit={PICK_WINDOW}");
    if let Some(after) = after {
        path.push_str(&format!("&after={after}"));
    }
    let page: shared::api::PageBody<Ticket, u64> = client.get_json(&path).await?;
    Ok(page
        .items
        .into_iter()
        .filter(|t| t.status() == TicketStatus::Available)
        .map(|t| t.id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Answer;
    use bytes::Bytes;

    fn written(status: u16, body: &str) -> Written {
        Written {
            result: Ok(Answer {
                status: StatusCode::from_u16(status).expect("valid status"),
                node: Some("n1".into()),
                body: Bytes::from(body.to_owned()),
            }),
            nodes: vec!["n1".into()],
            retries: 0,
        }
    }

    fn hold_body(status: &str) -> String {
        format!(
            r#"{{"hold_id":"h-1","event":"e","quantity":1,"tickets":[{{"id":1,"price_cents":5}}],
            "total_cents":5,"node":"n1","created_at":"t","expires_at":"u","status":"{status}"}}"#
        )
    }

    #[test]
    fn later_answers_are_named_by_what_happened() {
        let mut journey = Journey::new(Outcome::Held { tickets: 1 });
        journey.later_answer(
            StatusCode::OK,
            "released",
            &written(200, &hold_body("released")),
        );
        // A release that found the hold already expired.
        journey.later_answer(
            StatusCode::OK,
            "released",
            &written(200, &hold_body("expired")),
        );
        let expired = r#"{"error":"hold_expired","message":"m"}"#;
        journey.later_answer(StatusCode::CREATED, "confirmed", &written(409, expired));
        let released = r#"{"error":"hold_released","message":"m"}"#;
        journey.later_answer(StatusCode::CREATED, "confirmed", &written(409, released));
        let forbidden = r#"{"error":"forbidden","message":"m"}"#;
        journey.later_answer(StatusCode::OK, "cancelled", &written(403, forbidden));
        assert_eq!(
            journey.later,
            ["released", "expired", "expired", "hold_released"]
        );
        assert_eq!(journey.later_errors, ["forbidden"]);
    }
}
