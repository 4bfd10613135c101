//! Records what clients did and saw (invoke time, completion time, request, outcome) and
//! checks the history against the cluster's final state, in the manner of Jepsen: nothing
//! acknowledged is lost, nothing is sold twice, reads respect real-time order, and an
//! operation whose outcome is unknown is wholly in the final state or not at all. The box
//! office's histories (holds, confirms, releases, cancels) are checked by
//! [`check_box_office`]: a held ticket is sold to no one else, a confirmed hold's purchase
//! holds exactly its tickets, a released, expired or cancelled ticket is sold at most once
//! afterwards, and a customer never has more than the limit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use generator::audit::check::{self, Listed, Violation};
use generator::wire::{DecidedBody, Event, Hold, HoldStatus, Purchase};
use hyper::StatusCode;

use crate::{Answer, HttpClient};

/// How a purchase ended, as the client saw it.
// A history holds a few thousand of these: their size does not matter, plain matching does.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Outcome {
    /// 201: the purchase as the cluster acknowledged it.
    Acknowledged(Purchase),
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

/// The cluster's state after the run, read through the API (with the operator's token
/// when customers matter): what the audit reads, so its checks take it as it is.
pub type FinalState = Listed;

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

    /// Fails the test unless the history is clean, clients saw none of `errors`, and more
    /// than `more_than` purchases were acknowledged (less load would prove nothing).
    pub fn assert_clean_under_load(&self, errors: &[String], more_than: usize) {
        assert!(self.is_clean(), "{self}");
        assert!(errors.is_empty(), "clients saw errors: {errors:?}");
        assert!(
            self.acknowledged > more_than,
            "too little load to mean anything: {}",
            self.acknowledged
        );
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

fn ticket_ids(p: &Purchase) -> Vec<u64> {
    p.ticket_ids()
}

pub fn check(ops: &[PurchaseOp], reads: &[ReadOp], state: &FinalState) -> Verdict {
    let mut verdict = Verdict {
        tried: ops.len(),
        ..Verdict::default()
    };
    let acknowledged: Vec<(&PurchaseOp, &Purchase)> = ops
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
    let final_by_id: HashMap<&str, &Purchase> = state
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
    let (violations, _) = check::check(state);
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
    match answered(answer, |status| status == StatusCode::CREATED) {
        Answered::Success(answer) => match serde_json::from_slice::<Purchase>(&answer.body) {
            Ok(body) => Outcome::Acknowledged(body),
            Err(_) => Outcome::Unknown("unreadable 201".into()),
        },
        Answered::Refused { status, code } => Outcome::Refused { status, code },
        Answered::Unknown(why) => Outcome::Unknown(why),
    }
}

/// An answer as every client sorts it before reading a success's body.
enum Answered<'a> {
    /// A status the request counts as success, to be read further.
    Success(&'a Answer),
    /// Any other status below 500: nothing was done.
    Refused { status: u16, code: String },
    /// A 5xx or no answer: it may or may not have been done.
    Unknown(String),
}

/// Sorts `answer`: a status `success` accepts is a success, a 5xx or no answer leaves
/// the outcome unknown, any other status is a refusal with the answer's error code.
fn answered(answer: &anyhow::Result<Answer>, success: impl Fn(StatusCode) -> bool) -> Answered<'_> {
    match answer {
        Ok(answer) if success(answer.status) => Answered::Success(answer),
        Ok(answer) if answer.status.is_server_error() => {
            Answered::Unknown(format!("{} {:?}", answer.status, answer.error_code()))
        }
        Ok(answer) => Answered::Refused {
            status: answer.status.as_u16(),
            code: answer.error_code().unwrap_or_default(),
        },
        Err(err) => Answered::Unknown(format!("{err:#}")),
    }
}

/// What clients would call errors in `ops`: every unknown outcome and every refusal other
/// than `sold_out`, each by its reason or error code.
pub fn client_errors(ops: &[PurchaseOp]) -> Vec<String> {
    ops.iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Unknown(why) => Some(why.clone()),
            Outcome::Refused { code, .. } if code != "sold_out" => Some(code.clone()),
            _ => None,
        })
        .collect()
}

/// Every item of every task's list in `tasks`, joined in the order the tasks finish; a
/// task that panicked fails the test.
pub async fn join_all<T: 'static>(mut tasks: tokio::task::JoinSet<Vec<T>>) -> Vec<T> {
    let mut all = Vec::new();
    while let Some(items) = tasks.join_next().await {
        all.extend(items.expect("a client task"));
    }
    all
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
    let events: Vec<Event> = serde_json::from_slice(&answer.body).ok()?;
    Some(ReadOp {
        invoked,
        completed: Instant::now(),
        sold: events
            .into_iter()
            .map(|e| (e.event, e.sold))
            .collect::<BTreeMap<_, _>>(),
    })
}

/// What a box-office client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `POST /purchases` (a count or named seats), for `customer` if any.
    Purchase {
        event: String,
        customer: Option<String>,
    },
    /// `POST /holds`.
    Hold {
        event: String,
        customer: Option<String>,
    },
    /// `POST /holds/{hold_id}/confirm`.
    Confirm { hold_id: String },
    /// `POST /holds/{hold_id}/release`.
    Release { hold_id: String },
    /// `POST /purchases/{purchase_id}/cancel`.
    Cancel { purchase_id: String },
}

/// How a box-office request ended, as the client saw it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum BoxOutcome {
    /// A purchase came back: the 201 of a purchase or a confirm, the 200 of a cancel.
    Purchase(Purchase),
    /// A hold came back: the 201 of a hold, the 200 of a release.
    Hold(Hold),
    /// A definite refusal (4xx): nothing changed.
    Refused { status: u16, code: String },
    /// No answer, or a 5xx: it may or may not have happened.
    Unknown(String),
}

/// One box-office request of a client's history.
#[derive(Debug, Clone)]
pub struct BoxOp {
    pub invoked: Instant,
    pub completed: Instant,
    pub action: Action,
    pub outcome: BoxOutcome,
}

/// How a client saw one box-office answer: a readable 2xx body is the purchase or hold;
/// a 5xx or no answer is unknown; any other status a refusal.
pub fn box_outcome_of(answer: &anyhow::Result<Answer>) -> BoxOutcome {
    match answered(answer, |status| status.is_success()) {
        Answered::Success(answer) => {
            if let Ok(p) = serde_json::from_slice::<Purchase>(&answer.body) {
                BoxOutcome::Purchase(p)
            } else if let Ok(h) = serde_json::from_slice::<Hold>(&answer.body) {
                BoxOutcome::Hold(h)
            } else {
                BoxOutcome::Unknown(format!("unreadable {}", answer.status))
            }
        }
        Answered::Refused { status, code } => BoxOutcome::Refused { status, code },
        Answered::Unknown(why) => BoxOutcome::Unknown(why),
    }
}

/// A time of the API (RFC 3339) as nanoseconds since the epoch.
fn instant_of(text: &str) -> Option<i128> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(time::OffsetDateTime::unix_timestamp_nanos)
}

/// One purchase's or hold's claim on its tickets, in the store's time: from its decision
/// until it was cancelled, released, expired or confirmed.
#[derive(Debug, Clone)]
struct Claim {
    /// `purchase p-1` or `hold h-1`.
    name: String,
    event: String,
    customer: Option<String>,
    tickets: Vec<u64>,
    start: i128,
    /// `None` when the end is not known (a released hold: its release has no time).
    end: Option<i128>,
}

impl Claim {
    /// Whether the claim is live at `t` for certain.
    fn live_at(&self, t: i128) -> bool {
        self.start <= t && self.end.is_none_or(|end| end > t) && !self.unknown_end()
    }

    fn unknown_end(&self) -> bool {
        self.end.is_none()
    }
}

/// Puts each of the final state's `stored` purchases or holds in `known` under its `id`,
/// over what the clients saw, keeping a `customer` only a client saw.
fn final_state_wins<T: Clone>(
    known: &mut BTreeMap<String, T>,
    stored: &[T],
    id: impl Fn(&T) -> &String,
    customer: impl Fn(&mut T) -> &mut Option<String>,
) {
    for item in stored {
        let seen = known
            .get_mut(id(item))
            .and_then(|known| customer(known).clone());
        let mut item = item.clone();
        let kept = customer(&mut item);
        *kept = kept.take().or(seen);
        known.insert(id(&item).clone(), item);
    }
}

/// What the history knows of purchases and holds: the final state's, with those a client
/// was told of and the final state lost added, so a lost one is still judged.
struct Known {
    purchases: BTreeMap<String, Purchase>,
    holds: BTreeMap<String, Hold>,
}

impl Known {
    fn new(ops: &[BoxOp], state: &FinalState) -> Self {
        let mut purchases: BTreeMap<String, Purchase> = BTreeMap::new();
        let mut holds: BTreeMap<String, Hold> = BTreeMap::new();
        for op in ops {
            match &op.outcome {
                BoxOutcome::Purchase(p) => {
                    let known = purchases.entry(p.purchase_id.clone()).or_insert(p.clone());
                    // A cancel's answer is the later state of the same purchase.
                    if p.cancelled_at.is_some() {
                        known.cancelled_at = p.cancelled_at.clone();
                    }
                    if known.customer.is_none() {
                        known.customer = p.customer.clone();
                    }
                }
                BoxOutcome::Hold(h) => {
                    let known = holds.entry(h.hold_id.clone()).or_insert(h.clone());
                    if known.customer.is_none() {
                        known.customer = h.customer.clone();
                    }
                }
                BoxOutcome::Refused { .. } | BoxOutcome::Unknown(_) => {}
            }
        }
        // The final state wins, keeping a customer only the client saw.
        final_state_wins(
            &mut purchases,
            &state.purchases,
            |p| &p.purchase_id,
            |p| &mut p.customer,
        );
        final_state_wins(
            &mut holds,
            &state.holds,
            |h| &h.hold_id,
            |h| &mut h.customer,
        );
        Self { purchases, holds }
    }

    /// Every claim, or the reasons some could not be timed.
    fn claims(&self, verdict: &mut Verdict) -> Vec<Claim> {
        let mut claims = Vec::new();
        let mut time = |what: &str, text: &str| {
            let t = instant_of(text);
            if t.is_none() {
                verdict
                    .violations
                    .push(format!("{what} has an unreadable time {text:?}"));
            }
            t
        };
        for p in self.purchases.values() {
            let name = format!("purchase {}", p.purchase_id);
            let Some(start) = time(&name, &p.created_at) else {
                continue;
            };
            let end = match &p.cancelled_at {
                Some(at) => match time(&name, at) {
                    Some(end) => end,
                    None => continue,
                },
                None => i128::MAX,
            };
            claims.push(Claim {
                name,
                event: p.event.clone(),
                customer: p.customer.clone(),
                tickets: p.ticket_ids(),
                start,
                end: Some(end),
            });
        }
        for h in self.holds.values() {
            let name = format!("hold {}", h.hold_id);
            let (Some(start), Some(expires)) =
                (time(&name, &h.created_at), time(&name, &h.expires_at))
            else {
                continue;
            };
            let end = match h.status {
                HoldStatus::Held | HoldStatus::Expired => Some(expires),
                // Until its purchase was decided (which then claims the tickets).
                HoldStatus::Confirmed => h
                    .purchase_id
                    .as_ref()
                    .and_then(|id| self.purchases.get(id))
                    .and_then(|p| instant_of(&p.created_at))
                    .or(Some(expires)),
                HoldStatus::Released => None,
            };
            claims.push(Claim {
                name,
                event: h.event.clone(),
                customer: h.customer.clone(),
                tickets: h.ticket_ids(),
                start,
                end,
            });
        }
        claims
    }
}

/// Checks a box-office history against the final state: the audit's checks of the state,
/// then that nothing acknowledged was lost or undone, that no ticket was claimed by two
/// purchases or holds at once (a held ticket is sold to no one else; a released, expired
/// or cancelled ticket is sold at most once afterwards), that a confirmed hold's purchase
/// holds exactly its tickets, that a hold found expired is never confirmed, and that no
/// customer ever had more of an event than its limit.
pub fn check_box_office(ops: &[BoxOp], state: &FinalState) -> Verdict {
    let mut verdict = Verdict {
        tried: ops.len(),
        ..Verdict::default()
    };
    for op in ops {
        match op.outcome {
            BoxOutcome::Purchase(_) | BoxOutcome::Hold(_) => verdict.acknowledged += 1,
            BoxOutcome::Refused { .. } => verdict.refused += 1,
            BoxOutcome::Unknown(_) => verdict.unknown += 1,
        }
    }
    check_final_state(state, &mut verdict);
    let known = Known::new(ops, state);
    check_acknowledged(ops, state, &known, &mut verdict);
    let claims = known.claims(&mut verdict);
    check_claims_per_ticket(&claims, &mut verdict);
    check_held_in_real_time(ops, &mut verdict);
    check_customer_limits(&claims, &state.events, &mut verdict);
    verdict
}

/// Every acknowledged purchase, hold, confirm, release and cancel is in the final state;
/// a confirm's purchase holds exactly the hold's tickets; a hold answered `hold_expired`
/// is never confirmed.
fn check_acknowledged(ops: &[BoxOp], state: &FinalState, known: &Known, verdict: &mut Verdict) {
    let purchases: HashMap<&str, &Purchase> = state
        .purchases
        .iter()
        .map(|p| (p.purchase_id.as_str(), p))
        .collect();
    let holds: HashMap<&str, &Hold> = state
        .holds
        .iter()
        .map(|h| (h.hold_id.as_str(), h))
        .collect();
    for op in ops {
        match (&op.action, &op.outcome) {
            (Action::Purchase { .. } | Action::Confirm { .. }, BoxOutcome::Purchase(p)) => {
                let stored = purchases.get(p.purchase_id.as_str());
                let kept = stored.map(|stored| stored.ticket_ids());
                check_kept("purchase", &p.purchase_id, p.ticket_ids(), kept, verdict);
            }
            (Action::Hold { .. }, BoxOutcome::Hold(h)) => {
                let kept = holds
                    .get(h.hold_id.as_str())
                    .map(|stored| stored.ticket_ids());
                check_kept("hold", &h.hold_id, h.ticket_ids(), kept, verdict);
            }
            _ => {}
        }
        match (&op.action, &op.outcome) {
            (Action::Confirm { hold_id }, BoxOutcome::Purchase(p)) => {
                if p.hold_id.as_deref() != Some(hold_id.as_str()) {
                    verdict.violations.push(format!(
                        "the confirm of hold {hold_id} answered purchase {}, which names hold {:?}",
                        p.purchase_id, p.hold_id
                    ));
                }
                match known.holds.get(hold_id) {
                    Some(h) => {
                        let (mut held, mut bought) = (h.ticket_ids(), p.ticket_ids());
                        held.sort_unstable();
                        bought.sort_unstable();
                        if held != bought {
                            verdict.violations.push(format!(
                                "confirmed hold {hold_id} had tickets {held:?} but its purchase {} has {bought:?}",
                                p.purchase_id
                            ));
                        }
                        if h.status != HoldStatus::Confirmed
                            || h.purchase_id.as_deref() != Some(p.purchase_id.as_str())
                        {
                            verdict.violations.push(format!(
                                "hold {hold_id} was confirmed into {} but ends {:?} with purchase {:?}",
                                p.purchase_id, h.status, h.purchase_id
                            ));
                        }
                    }
                    None => verdict.violations.push(format!(
                        "hold {hold_id} was confirmed into {} but no hold {hold_id} is known",
                        p.purchase_id
                    )),
                }
            }
            // A release answers the hold as it then is: released, or already expired.
            (Action::Release { hold_id }, BoxOutcome::Hold(answered)) => {
                let status = holds.get(hold_id.as_str()).map(|h| h.status);
                if status != Some(answered.status) {
                    verdict.violations.push(format!(
                        "the release of hold {hold_id} was answered {:?} but the hold ends {status:?}",
                        answered.status
                    ));
                }
            }
            (Action::Cancel { purchase_id }, BoxOutcome::Purchase(_)) => {
                let cancelled = purchases
                    .get(purchase_id.as_str())
                    .map(|p| p.cancelled_at.is_some());
                if cancelled != Some(true) {
                    verdict.violations.push(format!(
                        "the cancel of purchase {purchase_id} was acknowledged but it is not cancelled in the final state"
                    ));
                }
            }
            (Action::Confirm { hold_id }, BoxOutcome::Refused { code, .. })
                if code == "hold_expired" =>
            {
                let status = holds.get(hold_id.as_str()).map(|h| h.status);
                if status != Some(HoldStatus::Expired) {
                    verdict.violations.push(format!(
                        "a confirm of hold {hold_id} was answered hold_expired but the hold ends {status:?}"
                    ));
                }
            }
            _ => {}
        }
    }
}

/// An acknowledged `kind` (purchase or hold) `id`, answered with tickets `acknowledged`,
/// is in the final state (`kept`, its tickets there, is some) with the same tickets.
fn check_kept(
    kind: &str,
    id: &str,
    acknowledged: Vec<u64>,
    kept: Option<Vec<u64>>,
    verdict: &mut Verdict,
) {
    match kept {
        None => {
            verdict.lost += 1;
            verdict.violations.push(format!(
                "acknowledged {kind} {id} is not in the final state"
            ));
        }
        Some(kept) if kept != acknowledged => {
            verdict.violations.push(format!(
                "{kind} {id} changed its tickets after it was acknowledged"
            ));
        }
        Some(_) => {}
    }
}

/// No two claims on one ticket overlap in the store's time: a held ticket is sold to no
/// one else, a ticket freed by a release, an expiry or a cancel is sold at most once
/// afterwards. A hold and the purchase it was confirmed into meet but do not overlap. A
/// released hold's end is unknown, so it is only judged by [`check_held_in_real_time`].
fn check_claims_per_ticket(claims: &[Claim], verdict: &mut Verdict) {
    let mut by_ticket: BTreeMap<u64, Vec<&Claim>> = BTreeMap::new();
    for claim in claims.iter().filter(|c| !c.unknown_end()) {
        for &ticket in &claim.tickets {
            by_ticket.entry(ticket).or_default().push(claim);
        }
    }
    for (ticket, mut on_ticket) in by_ticket {
        on_ticket.sort_by_key(|c| c.start);
        let mut latest: Option<&Claim> = None;
        for claim in on_ticket {
            if let Some(before) = latest
                && before.end.is_some_and(|end| end > claim.start)
            {
                if claim.name.starts_with("purchase") && before.name.starts_with("purchase") {
                    verdict.sold_twice += 1;
                }
                verdict.violations.push(format!(
                    "ticket {ticket} was claimed by {} while {} still had it",
                    claim.name, before.name
                ));
            }
            if latest.is_none_or(|l| claim.end > l.end) {
                latest = Some(claim);
            }
        }
    }
}

/// A held ticket is sold to no one else, in real time: a purchase a client began after a
/// hold was acknowledged, and finished before anyone asked to confirm or release that
/// hold, must not have any of its tickets unless the hold had expired by then.
fn check_held_in_real_time(ops: &[BoxOp], verdict: &mut Verdict) {
    // When each hold's confirm or release was first asked for.
    let mut ended: HashMap<&str, Instant> = HashMap::new();
    for op in ops {
        if let Action::Confirm { hold_id } | Action::Release { hold_id } = &op.action {
            let at = ended.entry(hold_id.as_str()).or_insert(op.invoked);
            *at = (*at).min(op.invoked);
        }
    }
    let holds: Vec<(&BoxOp, &Hold)> = ops
        .iter()
        .filter_map(|op| match (&op.action, &op.outcome) {
            (Action::Hold { .. }, BoxOutcome::Hold(h)) => Some((op, h)),
            _ => None,
        })
        .collect();
    for op in ops {
        let BoxOutcome::Purchase(p) = &op.outcome else {
            continue;
        };
        if !matches!(op.action, Action::Purchase { .. } | Action::Confirm { .. }) {
            continue;
        }
        for (hold_op, h) in &holds {
            if p.hold_id.as_deref() == Some(h.hold_id.as_str())
                || hold_op.completed >= op.invoked
                || ended
                    .get(h.hold_id.as_str())
                    .is_some_and(|&at| at <= op.completed)
            {
                continue;
            }
            let still_held = match (instant_of(&p.created_at), instant_of(&h.expires_at)) {
                (Some(sold), Some(expires)) => sold < expires,
                _ => true,
            };
            let shared: Vec<u64> = p
                .ticket_ids()
                .into_iter()
                .filter(|t| h.tickets.iter().any(|held| held.id == *t))
                .collect();
            if still_held && !shared.is_empty() {
                verdict.violations.push(format!(
                    "purchase {} sold {shared:?}, held by hold {} at the time",
                    p.purchase_id, h.hold_id
                ));
            }
        }
    }
}

/// No customer ever had more tickets of an event with a limit, in live purchases and live
/// holds together, than the limit: checked at each of the customer's claims, counting
/// those certainly live at that moment.
fn check_customer_limits(claims: &[Claim], events: &[Event], verdict: &mut Verdict) {
    let limits: HashMap<&str, u64> = events
        .iter()
        .filter_map(|e| e.max_per_customer.map(|n| (e.event.as_str(), n)))
        .collect();
    let mut by_customer: BTreeMap<(&str, &str), Vec<&Claim>> = BTreeMap::new();
    for claim in claims {
        if let (Some(customer), true) = (&claim.customer, limits.contains_key(claim.event.as_str()))
        {
            by_customer
                .entry((claim.event.as_str(), customer.as_str()))
                .or_default()
                .push(claim);
        }
    }
    for ((event, customer), mine) in by_customer {
        let limit = limits[event];
        for claim in &mine {
            let others: u64 = mine
                .iter()
                .filter(|other| other.name != claim.name && other.live_at(claim.start))
                .map(|other| other.tickets.len() as u64)
                .sum();
            let total = others + claim.tickets.len() as u64;
            if total > limit {
                verdict.violations.push(format!(
                    "customer {customer} had {total} tickets of {event} (limit {limit}) once {} was made",
                    claim.name
                ));
            }
        }
    }
}

/// Sends one box-office request to `url` (a JSON body or none) with the key `key` and, if
/// given, the secret, repeating it with the same key while the outcome is unknown as a
/// careful client would, and records what it saw.
pub async fn box_request(
    http: &HttpClient,
    url: &str,
    action: Action,
    body: Option<&serde_json::Value>,
    key: &str,
    secret: Option<&str>,
) -> BoxOp {
    let invoked = Instant::now();
    let mut headers = vec![(shared::api::IDEMPOTENCY_HEADER, key)];
    if let Some(secret) = secret {
        headers.push((generator::wire::SECRET_HEADER, secret));
    }
    let mut outcome = BoxOutcome::Unknown("never sent".into());
    for attempt in 0..8 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        outcome = box_outcome_of(&http.post_with(url, body, &headers).await);
        if !matches!(outcome, BoxOutcome::Unknown(_)) {
            break;
        }
    }
    BoxOp {
        invoked,
        completed: Instant::now(),
        action,
        outcome,
    }
}

/// One box-office client's history through `base`: `rounds` times it holds one or two
/// tickets of `event` for `customer`, then releases the hold (rounds 0, 3, ...), or buys
/// instead and cancels the purchase (1, 4, ...), or confirms the hold (2, 5, ...), with the
/// keys `<tag>-<client>-<round>-<step>`. Sales come last in each three rounds, so a few
/// seats last long enough for every kind of change.
pub async fn box_client(
    http: &HttpClient,
    base: &str,
    event: &str,
    customer: Option<&str>,
    (client, tag): (u32, &str),
    rounds: u32,
) -> Vec<BoxOp> {
    let mut ops = Vec::new();
    for round in 0..rounds {
        let key = |step: &str| format!("{tag}-{client}-{round}-{step}");
        let mut body = serde_json::json!({"event": event, "quantity": 1 + (client + round) % 2});
        if let Some(customer) = customer {
            body["customer"] = customer.into();
        }
        let customer = customer.map(str::to_owned);
        if round % 3 == 1 {
            let action = Action::Purchase {
                event: event.to_owned(),
                customer,
            };
            let url = format!("{base}/purchases");
            let op = box_request(http, &url, action, Some(&body), &key("buy"), None).await;
            let bought = match &op.outcome {
                BoxOutcome::Purchase(p) => Some((p.purchase_id.clone(), p.secret.clone())),
                _ => None,
            };
            ops.push(op);
            if let Some((purchase_id, secret)) = bought {
                let url = format!("{base}/purchases/{purchase_id}/cancel");
                let action = Action::Cancel { purchase_id };
                let key = key("cancel");
                let op = box_request(http, &url, action, None, &key, secret.as_deref()).await;
                ops.push(op);
            }
            continue;
        }
        let action = Action::Hold {
            event: event.to_owned(),
            customer,
        };
        let (url, key_hold) = (format!("{base}/holds"), key("hold"));
        let op = box_request(http, &url, action, Some(&body), &key_hold, None).await;
        let hold = match &op.outcome {
            BoxOutcome::Hold(h) => Some((h.hold_id.clone(), h.secret.clone())),
            _ => None,
        };
        ops.push(op);
        let Some((hold_id, secret)) = hold else {
            continue;
        };
        let (verb, action) = if round % 3 == 2 {
            (
                "confirm",
                Action::Confirm {
                    hold_id: hold_id.clone(),
                },
            )
        } else {
            (
                "release",
                Action::Release {
                    hold_id: hold_id.clone(),
                },
            )
        };
        let url = format!("{base}/holds/{hold_id}/{verb}");
        ops.push(box_request(http, &url, action, None, &key(verb), secret.as_deref()).await);
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use generator::wire::{PricedTicket, Ticket, TicketStatus};

    /// `tickets` at one cent each.
    fn priced(tickets: &[u64]) -> Vec<PricedTicket> {
        tickets
            .iter()
            .map(|&id| PricedTicket { id, price_cents: 1 })
            .collect()
    }

    fn purchase(id: &str, event: &str, tickets: &[u64]) -> Purchase {
        Purchase {
            purchase_id: id.into(),
            event: event.into(),
            quantity: tickets.len() as u32,
            tickets: priced(tickets),
            total_cents: tickets.len() as u64,
            node: "n".into(),
            created_at: "t".into(),
            hold_id: None,
            cancelled_at: None,
            customer: None,
            secret: None,
        }
    }

    fn state(tickets: u64, purchases: Vec<Purchase>) -> FinalState {
        let sold: HashSet<u64> = purchases.iter().flat_map(ticket_ids).collect();
        FinalState {
            tickets: (1..=tickets)
                .map(|id| Ticket {
                    id,
                    event: "e".into(),
                    price_cents: 1,
                    sold: sold.contains(&id),
                    status: Some(if sold.contains(&id) {
                        TicketStatus::Sold
                    } else {
                        TicketStatus::Available
                    }),
                })
                .collect(),
            events: vec![Event {
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
            holds: Vec::new(),
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

    /// The box office's histories: a store time `sec` seconds into the run.
    fn at(sec: u64) -> String {
        format!("2024-01-01T00:{:02}:{:02}.000Z", sec / 60, sec % 60)
    }

    fn bought(id: &str, tickets: &[u64], sec: u64) -> Purchase {
        let mut p = purchase(id, "e", tickets);
        p.created_at = at(sec);
        p
    }

    fn held(id: &str, tickets: &[u64], sec: u64, status: HoldStatus) -> Hold {
        Hold {
            hold_id: id.into(),
            event: "e".into(),
            quantity: tickets.len() as u32,
            tickets: priced(tickets),
            total_cents: tickets.len() as u64,
            customer: None,
            node: "n".into(),
            created_at: at(sec),
            expires_at: at(sec + 10),
            status,
            purchase_id: None,
            secret: None,
        }
    }

    /// A consistent final state of `tickets` tickets of event `e` with these purchases and
    /// holds: ticket statuses and counts follow from the live ones.
    fn box_state(tickets: u64, purchases: Vec<Purchase>, holds: Vec<Hold>) -> FinalState {
        let sold: HashSet<u64> = purchases
            .iter()
            .filter(|p| p.is_live())
            .flat_map(ticket_ids)
            .collect();
        let on_hold: HashSet<u64> = holds
            .iter()
            .filter(|h| h.status == HoldStatus::Held)
            .flat_map(Hold::ticket_ids)
            .collect();
        let mut state = state(tickets, purchases);
        for t in &mut state.tickets {
            t.sold = sold.contains(&t.id);
            t.status = Some(if t.sold {
                TicketStatus::Sold
            } else if on_hold.contains(&t.id) {
                TicketStatus::Held
            } else {
                TicketStatus::Available
            });
        }
        let e = &mut state.events[0];
        e.sold = sold.len() as u64;
        e.held = on_hold.len() as u64;
        e.available = tickets - e.sold - e.held;
        state.holds = holds;
        state
    }

    fn box_op(action: Action, outcome: BoxOutcome, invoked: Instant, completed: Instant) -> BoxOp {
        BoxOp {
            invoked,
            completed,
            action,
            outcome,
        }
    }

    fn buy_action() -> Action {
        Action::Purchase {
            event: "e".into(),
            customer: None,
        }
    }

    fn hold_action() -> Action {
        Action::Hold {
            event: "e".into(),
            customer: None,
        }
    }

    fn caught(verdict: &Verdict, needle: &str) -> bool {
        verdict.violations.iter().any(|v| v.contains(needle))
    }

    /// Asserts that checking `ops` against `state` finds a violation saying `needle`; the
    /// verdict, for further checks.
    fn assert_caught(ops: &[BoxOp], state: &FinalState, needle: &str) -> Verdict {
        let verdict = check_box_office(ops, state);
        assert!(caught(&verdict, needle), "{verdict}");
        verdict
    }

    /// Ticket 1 held by h-1 and confirmed into p-2; ticket 2 bought in p-1, cancelled and
    /// bought again in p-3; ticket 3 held by h-2 and released; ticket 4 held by h-3, left
    /// to expire and bought in p-4 after.
    fn box_history() -> (Vec<BoxOp>, FinalState) {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut h1 = held("h-1", &[1], 1, HoldStatus::Held);
        let mut p2 = bought("p-2", &[1], 3);
        p2.hold_id = Some("h-1".into());
        let mut p1 = bought("p-1", &[2], 2);
        let p1_answer = p1.clone();
        p1.cancelled_at = Some(at(4));
        let p3 = bought("p-3", &[2], 5);
        let h2 = held("h-2", &[3], 6, HoldStatus::Held);
        let h3 = held("h-3", &[4], 7, HoldStatus::Held);
        let p4 = bought("p-4", &[4], 17);
        let ops = vec![
            box_op(hold_action(), BoxOutcome::Hold(h1.clone()), ms(0), ms(1)),
            box_op(buy_action(), BoxOutcome::Purchase(p1_answer), ms(2), ms(3)),
            box_op(
                Action::Confirm {
                    hold_id: "h-1".into(),
                },
                BoxOutcome::Purchase(p2.clone()),
                ms(4),
                ms(5),
            ),
            box_op(
                Action::Cancel {
                    purchase_id: "p-1".into(),
                },
                BoxOutcome::Purchase(p1.clone()),
                ms(6),
                ms(7),
            ),
            box_op(buy_action(), BoxOutcome::Purchase(p3.clone()), ms(8), ms(9)),
            box_op(hold_action(), BoxOutcome::Hold(h2.clone()), ms(10), ms(11)),
            box_op(
                Action::Release {
                    hold_id: "h-2".into(),
                },
                BoxOutcome::Hold(Hold {
                    status: HoldStatus::Released,
                    ..h2.clone()
                }),
                ms(12),
                ms(13),
            ),
            box_op(hold_action(), BoxOutcome::Hold(h3.clone()), ms(14), ms(15)),
            box_op(
                Action::Confirm {
                    hold_id: "h-3".into(),
                },
                BoxOutcome::Refused {
                    status: 409,
                    code: "hold_expired".into(),
                },
                ms(16),
                ms(17),
            ),
            box_op(
                buy_action(),
                BoxOutcome::Purchase(p4.clone()),
                ms(18),
                ms(19),
            ),
        ];
        h1.status = HoldStatus::Confirmed;
        h1.purchase_id = Some("p-2".into());
        let h2 = Hold {
            status: HoldStatus::Released,
            ..h2
        };
        let h3 = Hold {
            status: HoldStatus::Expired,
            ..h3
        };
        let state = box_state(6, vec![p1, p2, p3, p4], vec![h1, h2, h3]);
        (ops, state)
    }

    #[test]
    fn a_consistent_box_office_history_passes() {
        let (ops, state) = box_history();
        let verdict = check_box_office(&ops, &state);
        assert!(verdict.is_clean(), "{verdict}");
        assert_eq!(
            (verdict.tried, verdict.acknowledged, verdict.refused),
            (10, 9, 1)
        );
    }

    #[test]
    fn a_held_ticket_sold_to_someone_else_is_caught() {
        let (mut ops, mut state) = box_history();
        // Ticket 5 is held by h-4 from second 20 to 30; p-5 buys it at second 21.
        let t = ops[9].completed + Duration::from_millis(1);
        let h4 = held("h-4", &[5], 20, HoldStatus::Held);
        let p5 = bought("p-5", &[5], 21);
        ops.push(box_op(hold_action(), BoxOutcome::Hold(h4.clone()), t, t));
        let later = t + Duration::from_millis(1);
        ops.push(box_op(
            buy_action(),
            BoxOutcome::Purchase(p5.clone()),
            later,
            later,
        ));
        state.purchases.push(p5);
        state.holds.push(h4);
        assert_caught(
            &ops,
            &state,
            "ticket 5 was claimed by purchase p-5 while hold h-4",
        );
        assert_caught(&ops, &state, "purchase p-5 sold [5], held by hold h-4");
    }

    #[test]
    fn a_confirm_whose_purchase_is_not_exactly_the_held_tickets_is_caught() {
        let (mut ops, mut state) = box_history();
        // h-1 held ticket 1, but its purchase p-2 took tickets 1 and 6.
        let BoxOutcome::Purchase(p2) = &mut ops[2].outcome else {
            panic!("op 2 is the confirm");
        };
        *p2 = {
            let mut p = bought("p-2", &[1, 6], 3);
            p.hold_id = Some("h-1".into());
            p
        };
        state.purchases[1] = p2.clone();
        assert_caught(
            &ops,
            &state,
            "confirmed hold h-1 had tickets [1] but its purchase p-2 has [1, 6]",
        );
        assert_caught(&ops, &state, "their tickets differ");
    }

    #[test]
    fn a_cancelled_released_or_expired_ticket_sold_twice_afterwards_is_caught() {
        // Cancelled ticket 2 is sold again in p-3 and in p-5.
        let (ops, mut state) = box_history();
        state.purchases.push(bought("p-5", &[2], 6));
        let verdict = assert_caught(
            &ops,
            &state,
            "ticket 2 was claimed by purchase p-5 while purchase p-3",
        );
        assert!(verdict.sold_twice >= 1);
        // Expired h-3's ticket 4 is sold in p-4 and by a late confirm of h-3 in p-5.
        let (ops, mut state) = box_history();
        let mut late = bought("p-5", &[4], 18);
        late.hold_id = Some("h-3".into());
        state.purchases.push(late);
        state.holds[2].status = HoldStatus::Confirmed;
        state.holds[2].purchase_id = Some("p-5".into());
        assert_caught(
            &ops,
            &state,
            "ticket 4 was claimed by purchase p-5 while purchase p-4",
        );
        assert_caught(
            &ops,
            &state,
            "a confirm of hold h-3 was answered hold_expired",
        );
        // Released h-2's ticket 3 is sold in p-5 and in p-6, both live.
        let (ops, mut state) = box_history();
        state.purchases.push(bought("p-5", &[3], 20));
        state.purchases.push(bought("p-6", &[3], 21));
        assert_caught(
            &ops,
            &state,
            "ticket 3 was claimed by purchase p-6 while purchase p-5",
        );
    }

    #[test]
    fn a_customer_past_the_limit_is_caught_and_one_at_it_is_not() {
        let mut state = box_state(6, Vec::new(), Vec::new());
        state.events[0].max_per_customer = Some(2);
        let mine = |mut p: Purchase| {
            p.customer = Some("ann".into());
            p
        };
        let mut hold = held("h-1", &[1, 2], 1, HoldStatus::Held);
        hold.customer = Some("ann".into());
        // At the limit: a hold of two, released... then bought after it expired.
        let mut after_expiry = state.clone();
        after_expiry.holds = vec![Hold {
            status: HoldStatus::Expired,
            ..hold.clone()
        }];
        after_expiry.purchases = vec![mine(bought("p-1", &[3, 4], 11))];
        let verdict = check_box_office(&[], &after_expiry);
        assert!(!caught(&verdict, "customer ann"), "{verdict}");
        // Past it: a purchase of one more while the hold of two is live.
        let mut over = state.clone();
        over.holds = vec![hold];
        over.purchases = vec![mine(bought("p-1", &[3], 5))];
        assert_caught(
            &[],
            &over,
            "customer ann had 3 tickets of e (limit 2) once purchase p-1 was made",
        );
        // A customer the final state hides is taken from what the client sent and saw.
        let t = Instant::now();
        let mut hidden = over.clone();
        let seen = hidden.purchases[0].clone();
        hidden.purchases[0].customer = None;
        let ops = vec![box_op(
            Action::Purchase {
                event: "e".into(),
                customer: Some("ann".into()),
            },
            BoxOutcome::Purchase(seen),
            t,
            t,
        )];
        assert_caught(&ops, &hidden, "customer ann had 3 tickets");
    }

    #[test]
    fn acknowledged_holds_cancels_and_releases_that_the_state_lost_are_caught() {
        let (ops, mut state) = box_history();
        state.purchases[0].cancelled_at = None;
        state.holds[1].status = HoldStatus::Expired;
        state.holds.remove(2);
        let verdict = check_box_office(&ops, &state);
        for needle in [
            "the cancel of purchase p-1 was acknowledged but it is not cancelled",
            "the release of hold h-2 was answered Released but the hold ends Some(Expired)",
            "acknowledged hold h-3 is not in the final state",
        ] {
            assert!(caught(&verdict, needle), "{needle}: {verdict}");
        }
        assert_eq!(verdict.lost, 1);
    }
}
