//! Records what clients did and saw (invoke time, completion time, request, outcome) and
//! checks the history against the cluster's final state, in the manner of Jepsen: nothing
//! acknowledged is lost, nothing is sold twice, reads respect real-time order, and an
//! operation whose outcome is unknown is wholly in the final state or not at all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use generator::audit::check::{self, Violation};
use hyper::StatusCode;
use shared::api::{EventBody, PurchaseBody, TicketBody};

use crate::{Answer, HttpClient};

/// How a purchase ended, as the client saw it.
// Most outcomes are acknowledged purchases, so boxing the large variant would box nearly
// every value.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Outcome {
    /// 201: the purchase as the cluster acknowledged it.
    Acknowledged(PurchaseBody),
    /// A definite refusal (sold out, bad request...): nothing was sold.
    Refused { status: u16, code: String },
    /// Timeout, cut connection or gateway error after every retry: it may or may not have
    /// been committed.
    Unknown(String),
}

#[derive(Debug, Clone)]
pub struct PurchaseOp {
    pub invoked: Instant,
    pub completed: Instant,
    pub event: String,
    pub quantity: u32,
    pub outcome: Outcome,
}

/// A read of every event's sold count.
#[derive(Debug, Clone)]
pub struct ReadOp {
    pub invoked: Instant,
    pub completed: Instant,
    pub sold: BTreeMap<String, u64>,
}

/// The cluster's state after the run, read through the API.
#[derive(Debug, Clone, Default)]
pub struct FinalState {
    pub tickets: Vec<TicketBody>,
    pub events: Vec<EventBody>,
    pub purchases: Vec<PurchaseBody>,
}

/// What the check found.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub tried: usize,
    pub acknowledged: usize,
    pub refused: usize,
    pub unknown: usize,
    pub lost: usize,
    pub sold_twice: usize,
    pub violations: Vec<String>,
}

impl Verdict {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// The one line per fault class the suite prints.
    pub fn summary_line(&self, class: &str, client_mistake_5xx: usize) -> String {
        format!(
            "fault-summary: {class}: tried {}, acknowledged {}, lost {}, sold twice {}, 5xx to client mistakes {client_mistake_5xx} (refused {}, unknown {})",
            self.tried, self.acknowledged, self.lost, self.sold_twice, self.refused, self.unknown
        )
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} violations", self.violations.len())?;
        for v in self.violations.iter().take(20) {
            writeln!(f, "  {v}")?;
        }
        Ok(())
    }
}

fn ticket_ids(p: &PurchaseBody) -> Vec<u64> {
    p.tickets.iter().map(|t| t.id).collect()
}

pub fn check(ops: &[PurchaseOp], reads: &[ReadOp], state: &FinalState) -> Verdict {
    let mut verdict = Verdict {
        tried: ops.len(),
        ..Verdict::default()
    };
    let acknowledged: Vec<(&PurchaseOp, &PurchaseBody)> = ops
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Acknowledged(p) => Some((op, p)),
            _ => None,
        })
        .collect();
    verdict.acknowledged = acknowledged.len();
    verdict.refused = ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Refused { .. }))
        .count();
    verdict.unknown = ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Unknown(_)))
        .count();

    // No ticket in two acknowledged purchases (a retried key returns the same purchase).
    let mut holder: HashMap<u64, &str> = HashMap::new();
    for (_, p) in &acknowledged {
        for id in ticket_ids(p) {
            if let Some(other) = holder.insert(id, &p.purchase_id)
                && other != p.purchase_id
            {
                verdict.sold_twice += 1;
                verdict.violations.push(format!(
                    "ticket {id} acknowledged in {other} and {}",
                    p.purchase_id
                ));
            }
        }
    }

    // Every acknowledged purchase is in the final state, unchanged.
    let final_by_id: HashMap<&str, &PurchaseBody> = state
        .purchases
        .iter()
        .map(|p| (p.purchase_id.as_str(), p))
        .collect();
    let acked_ids: HashSet<&str> = acknowledged
        .iter()
        .map(|(_, p)| p.purchase_id.as_str())
        .collect();
    for (_, p) in &acknowledged {
        match final_by_id.get(p.purchase_id.as_str()) {
            Some(stored) if ticket_ids(stored) == ticket_ids(p) => {}
            Some(_) => verdict.violations.push(format!(
                "{} changed its tickets after it was acknowledged",
                p.purchase_id
            )),
            None => {
                verdict.lost += 1;
                verdict.violations.push(format!(
                    "acknowledged {} is not in the final state",
                    p.purchase_id
                ));
            }
        }
    }

    check_final_state(state, &mut verdict);

    // Purchases nobody was told of must each belong to a distinct unknown operation.
    let mut unknown: HashMap<(&str, u32), usize> = HashMap::new();
    for op in ops {
        if matches!(op.outcome, Outcome::Unknown(_)) {
            *unknown.entry((op.event.as_str(), op.quantity)).or_default() += 1;
        }
    }
    for p in &state.purchases {
        if acked_ids.contains(p.purchase_id.as_str()) {
            continue;
        }
        match unknown.get_mut(&(p.event.as_str(), p.quantity)) {
            Some(left) if *left > 0 => *left -= 1,
            _ => verdict.violations.push(format!(
                "{} ({} x {}) was committed but no client op can account for it",
                p.purchase_id, p.event, p.quantity
            )),
        }
    }

    // Real-time order: a read that began after a purchase was acknowledged sees it.
    for read in reads {
        let mut must_see: BTreeMap<&str, u64> = BTreeMap::new();
        for (op, p) in &acknowledged {
            if op.completed < read.invoked {
                *must_see.entry(p.event.as_str()).or_default() += p.tickets.len() as u64;
            }
        }
        for (event, at_least) in must_see {
            let seen = read.sold.get(event).copied().unwrap_or(0);
            if seen < at_least {
                verdict.violations.push(format!(
                    "a read of {event} saw {seen} sold after {at_least} were acknowledged"
                ));
            }
        }
    }
    verdict
}

/// The final state agrees with itself (every sold ticket in exactly one purchase, every
/// purchase all-or-nothing, the event counts add up): the generator's audit checks.
fn check_final_state(state: &FinalState, verdict: &mut Verdict) {
    let (violations, _) = check::check(&state.tickets, &state.events, &state.purchases);
    for violation in violations {
        if let Violation::SoldTwice { purchases, .. } = &violation {
            verdict.sold_twice += purchases.len().saturating_sub(1);
        }
        verdict.violations.push(violation.to_string());
    }
}

/// How a client saw one purchase's answer: a readable 201 is acknowledged; a 5xx, an
/// unreadable 201 or no answer leaves the outcome unknown; any other status is a refusal.
pub fn outcome_of(answer: &anyhow::Result<Answer>) -> Outcome {
    match answer {
        Ok(answer) if answer.status == StatusCode::CREATED => {
            match serde_json::from_slice::<PurchaseBody>(&answer.body) {
                Ok(body) => Outcome::Acknowledged(body),
                Err(_) => Outcome::Unknown("unreadable 201".into()),
            }
        }
        Ok(answer) if answer.status.is_server_error() => {
            Outcome::Unknown(format!("{} {:?}", answer.status, answer.error_code()))
        }
        Ok(answer) => Outcome::Refused {
            status: answer.status.as_u16(),
            code: answer.error_code().unwrap_or_default(),
        },
        Err(err) => Outcome::Unknown(format!("{err:#}")),
    }
}

/// Buys with an Idempotency-Key, retrying the same key while the outcome is unknown, as a
/// careful client would, and records what it saw.
pub async fn keyed_purchase(
    http: &HttpClient,
    base: &str,
    event: &str,
    quantity: u32,
    key: &str,
) -> PurchaseOp {
    let invoked = Instant::now();
    let mut outcome = Outcome::Unknown("never sent".into());
    for attempt in 0..8 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        outcome = outcome_of(&http.buy(base, event, quantity, Some(key)).await);
        if matches!(outcome, Outcome::Acknowledged(_) | Outcome::Refused { .. }) {
            break;
        }
    }
    PurchaseOp {
        invoked,
        completed: Instant::now(),
        event: event.to_owned(),
        quantity,
        outcome,
    }
}

/// One load client's history: while `go_on()` holds, client number `client` buys 1 to 3
/// tickets at a time with [`keyed_purchase`], cycling through `events`, with the keys
/// `<tag>-<client>-<i>`.
pub async fn keyed_client(
    http: &HttpClient,
    base: &str,
    events: &[&str],
    client: u32,
    tag: &str,
    go_on: impl Fn() -> bool,
) -> Vec<PurchaseOp> {
    let mut ops = Vec::new();
    let mut i = 0u32;
    while go_on() {
        let event = events[(client + i) as usize % events.len()];
        let quantity = 1 + (client * 7 + i) % 3;
        let key = format!("{tag}-{client}-{i}");
        ops.push(keyed_purchase(http, base, event, quantity, &key).await);
        i += 1;
    }
    ops
}

/// A reader's history: the sold counts read through `base` every 40 ms while `go_on()`
/// holds.
pub async fn reads_while(http: &HttpClient, base: &str, go_on: impl Fn() -> bool) -> Vec<ReadOp> {
    let mut reads = Vec::new();
    while go_on() {
        if let Some(read) = read_sold(http, base).await {
            reads.push(read);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    reads
}

/// Reads every event's sold count, as a [`ReadOp`]; `None` when there was no good answer.
pub async fn read_sold(http: &HttpClient, base: &str) -> Option<ReadOp> {
    let invoked = Instant::now();
    let answer = http.get(&format!("{base}/events")).await.ok()?;
    let events: Vec<EventBody> = serde_json::from_slice(&answer.body).ok()?;
    Some(ReadOp {
        invoked,
        completed: Instant::now(),
        sold: events
            .into_iter()
            .map(|e| (e.event, e.sold))
            .collect::<BTreeMap<_, _>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::api::{PurchasedTicketBody, TicketStatus};

    fn purchase(id: &str, event: &str, tickets: &[u64]) -> PurchaseBody {
        PurchaseBody {
            purchase_id: id.into(),
            event: event.into(),
            quantity: tickets.len() as u32,
            tickets: tickets
                .iter()
                .map(|&id| PurchasedTicketBody { id, price_cents: 1 })
                .collect(),
            total_cents: tickets.len() as u64,
            node: "n".into(),
            created_at: "t".into(),
            customer: None,
            hold_id: None,
            cancelled_at: None,
            secret: None,
        }
    }

    fn state(tickets: u64, purchases: Vec<PurchaseBody>) -> FinalState {
        let sold: HashSet<u64> = purchases.iter().flat_map(ticket_ids).collect();
        FinalState {
            tickets: (1..=tickets)
                .map(|id| TicketBody {
                    id,
                    event: "e".into(),
                    price_cents: 1,
                    sold: sold.contains(&id),
                    status: if sold.contains(&id) {
                        TicketStatus::Sold
                    } else {
                        TicketStatus::Available
                    },
                })
                .collect(),
            events: vec![EventBody {
                event: "e".into(),
                total: tickets,
                available: tickets - sold.len() as u64,
                sold: sold.len() as u64,
                held: 0,
                min_price_cents: 1,
                max_price_cents: 1,
                max_per_customer: None,
            }],
            purchases,
        }
    }

    fn op(at: Instant, outcome: Outcome, quantity: u32) -> PurchaseOp {
        PurchaseOp {
            invoked: at,
            completed: at,
            event: "e".into(),
            quantity,
            outcome,
        }
    }

    #[test]
    fn a_consistent_history_passes() {
        let now = Instant::now();
        let p = purchase("p1", "e", &[1, 2]);
        let ops = vec![
            op(now, Outcome::Acknowledged(p.clone()), 2),
            op(now, Outcome::Unknown("cut".into()), 1),
        ];
        let extra = purchase("p2", "e", &[3]);
        let reads = vec![ReadOp {
            invoked: now + std::time::Duration::from_millis(1),
            completed: now,
            sold: BTreeMap::from([("e".to_string(), 2)]),
        }];
        let verdict = check(&ops, &reads, &state(5, vec![p, extra]));
        assert!(verdict.is_clean(), "{verdict}");
        assert_eq!((verdict.acknowledged, verdict.unknown), (1, 1));
    }

    #[test]
    fn a_lost_purchase_a_phantom_and_a_stale_read_are_caught() {
        let now = Instant::now();
        let p = purchase("p1", "e", &[1]);
        let ops = vec![op(now, Outcome::Acknowledged(p), 1)];
        let phantom = purchase("p9", "e", &[2]);
        let reads = vec![ReadOp {
            invoked: now + std::time::Duration::from_millis(1),
            completed: now,
            sold: BTreeMap::from([("e".to_string(), 0)]),
        }];
        let verdict = check(&ops, &reads, &state(3, vec![phantom]));
        assert_eq!(verdict.lost, 1);
        assert!(
            verdict
                .violations
                .iter()
                .any(|v| v.contains("no client op"))
        );
        assert!(verdict.violations.iter().any(|v| v.contains("saw 0 sold")));
    }

    #[test]
    fn a_ticket_in_two_purchases_is_caught() {
        let now = Instant::now();
        let a = purchase("p1", "e", &[1]);
        let b = purchase("p2", "e", &[1]);
        let ops = vec![
            op(now, Outcome::Acknowledged(a.clone()), 1),
            op(now, Outcome::Acknowledged(b.clone()), 1),
        ];
        let verdict = check(&ops, &[], &state(2, vec![a, b]));
        assert!(verdict.sold_twice >= 1, "{verdict}");
    }
}
