//! The audit's checks, on the inventory, purchases and holds as the API listed them: pure
//! functions, so each kind of violation is tested on hand-made inputs.

use std::collections::{BTreeMap, HashMap};

use shared::domain::MAX_QUANTITY;
use thiserror::Error;

use crate::wire::{
    DecidedBody, Event, Hold, HoldStatus, Purchase, Ticket, TicketStatus, id_number,
};

/// One way the cluster's state breaks its promises.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Violation {
    #[error("ticket {0} is listed more than once by GET /tickets")]
    DuplicateTicket(u64),
    #[error("purchase id {0} is listed more than once by GET /purchases")]
    DuplicatePurchase(String),
    #[error("hold id {0} is listed more than once by GET /holds")]
    DuplicateHold(String),
    #[error("ticket {ticket} was sold more than once: in live purchases {}", purchases.join(", "))]
    SoldTwice { ticket: u64, purchases: Vec<String> },
    #[error("ticket {ticket} is in live holds {}", holds.join(", "))]
    HeldTwice { ticket: u64, holds: Vec<String> },
    #[error("ticket {ticket} is in live purchase {purchase} and in live hold {hold}")]
    HeldAndSold {
        ticket: u64,
        purchase: String,
        hold: String,
    },
    #[error("ticket {0} is marked sold but no live purchase holds it")]
    SoldWithoutPurchase(u64),
    #[error("ticket {0} is marked held but no live hold has it")]
    HeldWithoutHold(u64),
    #[error("ticket {ticket} is in live purchase {purchase} but not marked sold")]
    NotMarkedSold { ticket: u64, purchase: String },
    #[error("ticket {ticket} is in live hold {hold} but not marked held")]
    NotMarkedHeld { ticket: u64, hold: String },
    #[error("ticket {ticket} says sold = {sold} but status {status:?}")]
    StatusDisagrees {
        ticket: u64,
        sold: bool,
        status: TicketStatus,
    },
    #[error(
        "ticket {ticket} of cancelled purchase {purchase} is neither available nor in a later \
         purchase or hold"
    )]
    CancelledNotFreed { ticket: u64, purchase: String },
    #[error("{order} holds ticket {ticket}, which is not in the inventory")]
    UnknownTicket { ticket: u64, order: String },
    #[error("{order} of {order_event} holds ticket {ticket} of {ticket_event}")]
    WrongEvent {
        ticket: u64,
        order: String,
        order_event: String,
        ticket_event: String,
    },
    #[error(
        "{order} says ticket {ticket} cost {in_order} cents; the inventory says {in_inventory}"
    )]
    PriceMismatch {
        ticket: u64,
        order: String,
        in_order: u64,
        in_inventory: u64,
    },
    #[error("{order} has quantity {quantity} but {tickets} tickets")]
    QuantityMismatch {
        order: String,
        quantity: u32,
        tickets: usize,
    },
    #[error("{order} has quantity {quantity}, outside 1 to {MAX_QUANTITY}")]
    QuantityOutOfRange { order: String, quantity: u32 },
    #[error("{order} totals {total_cents} cents but its tickets sum to {sum_cents}")]
    TotalMismatch {
        order: String,
        total_cents: u64,
        sum_cents: u64,
    },
    #[error("confirmed hold {hold} and purchase {purchase} disagree: {reason}")]
    ConfirmMismatch {
        hold: String,
        purchase: String,
        reason: &'static str,
    },
    #[error("event {event}: sold {sold} + held {held} + available {available} != total {total}")]
    CountsDontAddUp {
        event: String,
        total: u64,
        sold: u64,
        held: u64,
        available: u64,
    },
    #[error("event {event}: GET /events says {field} = {reported}, the tickets say {counted}")]
    EventDisagrees {
        event: String,
        field: &'static str,
        reported: u64,
        counted: u64,
    },
    #[error("event {0} has tickets but is missing from GET /events")]
    EventMissing(String),
    #[error("event {0} is listed by GET /events but has no tickets")]
    EventWithoutTickets(String),
}

/// Totals the audit saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub tickets: u64,
    pub sold: u64,
    pub held: u64,
    pub events: u64,
    /// Every purchase listed, cancelled ones included.
    pub purchases: u64,
    pub cancelled: u64,
    /// Tickets in live purchases.
    pub tickets_in_purchases: u64,
    /// Revenue of live purchases.
    pub revenue_cents: u64,
    /// Every hold listed, and those of them live (`held`).
    pub holds: u64,
    pub live_holds: u64,
}

/// What the audit reads: every ticket, event, purchase and hold.
#[derive(Debug, Clone, Default)]
pub struct Listed {
    pub tickets: Vec<Ticket>,
    pub events: Vec<Event>,
    pub purchases: Vec<Purchase>,
    pub holds: Vec<Hold>,
}

/// A purchase or a hold, for the checks they share.
struct Order<'a> {
    /// `purchase p-1` or `hold h-1`.
    name: String,
    event: &'a str,
    quantity: u32,
    tickets: &'a [crate::wire::PricedTicket],
    total_cents: u64,
}

/// Every violation in the listed state, in a stable order, and the totals.
pub fn check(listed: &Listed) -> (Vec<Violation>, Totals) {
    let Listed {
        tickets,
        events,
        purchases,
        holds,
    } = listed;
    let mut violations = Vec::new();
    let mut by_id: HashMap<u64, &Ticket> = HashMap::with_capacity(tickets.len());
    for t in tickets {
        if by_id.insert(t.id, t).is_some() {
            violations.push(Violation::DuplicateTicket(t.id));
        }
        if t.sold != (t.status() == TicketStatus::Sold) {
            violations.push(Violation::StatusDisagrees {
                ticket: t.id,
                sold: t.sold,
                status: t.status(),
            });
        }
    }
    let orders = purchases
        .iter()
        .map(|p| Order {
            name: format!("purchase {}", p.purchase_id),
            event: &p.event,
            quantity: p.quantity,
            tickets: &p.tickets,
            total_cents: p.total_cents,
        })
        .chain(holds.iter().map(|h| Order {
            name: format!("hold {}", h.hold_id),
            event: &h.event,
            quantity: h.quantity,
            tickets: &h.tickets,
            total_cents: h.total_cents,
        }));
    for order in orders {
        check_order(&by_id, &order, &mut violations);
    }
    violations.extend(check_duplicate_ids(purchases, holds));
    let sold_by = live_purchases_by_ticket(purchases);
    let held_by = live_holds_by_ticket(holds);
    for (ticket, purchases) in &sold_by {
        if purchases.len() > 1 {
            violations.push(Violation::SoldTwice {
                ticket: *ticket,
                purchases: purchases.iter().map(|p| p.purchase_id.clone()).collect(),
            });
        }
        if let Some(t) = by_id.get(ticket)
            && t.status() != TicketStatus::Sold
        {
            violations.push(Violation::NotMarkedSold {
                ticket: *ticket,
                purchase: purchases[0].purchase_id.clone(),
            });
        }
    }
    for (ticket, holds) in &held_by {
        if holds.len() > 1 {
            violations.push(Violation::HeldTwice {
                ticket: *ticket,
                holds: holds.iter().map(|h| h.hold_id.clone()).collect(),
            });
        }
        if let Some(p) = sold_by.get(ticket) {
            violations.push(Violation::HeldAndSold {
                ticket: *ticket,
                purchase: p[0].purchase_id.clone(),
                hold: holds[0].hold_id.clone(),
            });
        } else if let Some(t) = by_id.get(ticket)
            && t.status() != TicketStatus::Held
        {
            violations.push(Violation::NotMarkedHeld {
                ticket: *ticket,
                hold: holds[0].hold_id.clone(),
            });
        }
    }
    let mut ids: Vec<u64> = by_id.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        match by_id[&id].status() {
            TicketStatus::Sold if !sold_by.contains_key(&id) => {
                violations.push(Violation::SoldWithoutPurchase(id));
            }
            TicketStatus::Held if !held_by.contains_key(&id) => {
                violations.push(Violation::HeldWithoutHold(id));
            }
            _ => {}
        }
    }
    violations.extend(check_cancelled(&by_id, purchases, &sold_by, &held_by));
    violations.extend(check_confirmed(purchases, holds));
    violations.extend(check_events(by_id.values().copied(), events));
    let live: Vec<&Purchase> = purchases.iter().filter(|p| p.is_live()).collect();
    let totals = Totals {
        tickets: by_id.len() as u64,
        sold: by_id
            .values()
            .filter(|t| t.status() == TicketStatus::Sold)
            .count() as u64,
        held: by_id
            .values()
            .filter(|t| t.status() == TicketStatus::Held)
            .count() as u64,
        events: events.len() as u64,
        purchases: purchases.len() as u64,
        cancelled: (purchases.len() - live.len()) as u64,
        tickets_in_purchases: live.iter().map(|p| p.tickets.len() as u64).sum(),
        revenue_cents: live.iter().map(|p| p.total_cents).sum(),
        holds: holds.len() as u64,
        live_holds: holds
            .iter()
            .filter(|h| h.status == HoldStatus::Held)
            .count() as u64,
    };
    (violations, totals)
}

/// Ticket id to the live purchases holding it, in listing order.
fn live_purchases_by_ticket(purchases: &[Purchase]) -> BTreeMap<u64, Vec<&Purchase>> {
    let mut by: BTreeMap<u64, Vec<&Purchase>> = BTreeMap::new();
    for p in purchases.iter().filter(|p| p.is_live()) {
        for t in &p.tickets {
            by.entry(t.id).or_default().push(p);
        }
    }
    by
}

/// Ticket id to the live holds (status `held`) having it, in listing order.
fn live_holds_by_ticket(holds: &[Hold]) -> BTreeMap<u64, Vec<&Hold>> {
    let mut by: BTreeMap<u64, Vec<&Hold>> = BTreeMap::new();
    for h in holds.iter().filter(|h| h.status == HoldStatus::Held) {
        for t in &h.tickets {
            by.entry(t.id).or_default().push(h);
        }
    }
    by
}

fn check_duplicate_ids(purchases: &[Purchase], holds: &[Hold]) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut seen: HashMap<&str, ()> = HashMap::new();
    for p in purchases {
        if seen.insert(&p.purchase_id, ()).is_some() {
            violations.push(Violation::DuplicatePurchase(p.purchase_id.clone()));
        }
    }
    for h in holds {
        if seen.insert(&h.hold_id, ()).is_some() {
            violations.push(Violation::DuplicateHold(h.hold_id.clone()));
        }
    }
    violations
}

/// A purchase's or hold's own consistency, and its tickets against the inventory.
fn check_order(by_id: &HashMap<u64, &Ticket>, o: &Order<'_>, violations: &mut Vec<Violation>) {
    let order = || o.name.clone();
    if !(1..=MAX_QUANTITY).contains(&o.quantity) {
        violations.push(Violation::QuantityOutOfRange {
            order: order(),
            quantity: o.quantity,
        });
    }
    if o.quantity as usize != o.tickets.len() {
        violations.push(Violation::QuantityMismatch {
            order: order(),
            quantity: o.quantity,
            tickets: o.tickets.len(),
        });
    }
    let sum_cents: u64 = o.tickets.iter().map(|t| t.price_cents).sum();
    if sum_cents != o.total_cents {
        violations.push(Violation::TotalMismatch {
            order: order(),
            total_cents: o.total_cents,
            sum_cents,
        });
    }
    for held in o.tickets {
        let Some(ticket) = by_id.get(&held.id) else {
            violations.push(Violation::UnknownTicket {
                ticket: held.id,
                order: order(),
            });
            continue;
        };
        if ticket.event != o.event {
            violations.push(Violation::WrongEvent {
                ticket: held.id,
                order: order(),
                order_event: o.event.to_owned(),
                ticket_event: ticket.event.clone(),
            });
        }
        if ticket.price_cents != held.price_cents {
            violations.push(Violation::PriceMismatch {
                ticket: held.id,
                order: order(),
                in_order: held.price_cents,
                in_inventory: ticket.price_cents,
            });
        }
    }
}

/// Every cancelled purchase's tickets are available, or in a purchase decided after it
/// or a hold made after its cancellation.
fn check_cancelled(
    by_id: &HashMap<u64, &Ticket>,
    purchases: &[Purchase],
    sold_by: &BTreeMap<u64, Vec<&Purchase>>,
    held_by: &BTreeMap<u64, Vec<&Hold>>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    for p in purchases {
        let Some(cancelled_at) = &p.cancelled_at else {
            continue;
        };
        for t in &p.tickets {
            let Some(ticket) = by_id.get(&t.id) else {
                continue;
            };
            let freed = match ticket.status() {
                TicketStatus::Available => true,
                TicketStatus::Sold => sold_by.get(&t.id).is_some_and(|live| {
                    live.iter().any(|q| {
                        id_number(&q.purchase_id) > id_number(&p.purchase_id)
                            && not_before(&q.created_at, cancelled_at)
                    })
                }),
                TicketStatus::Held => held_by.get(&t.id).is_some_and(|live| {
                    live.iter().any(|h| not_before(&h.created_at, cancelled_at))
                }),
            };
            if !freed {
                violations.push(Violation::CancelledNotFreed {
                    ticket: t.id,
                    purchase: p.purchase_id.clone(),
                });
            }
        }
    }
    violations
}

/// Whether the time `a` is not before `b`. Both are RFC 3339 UTC times of one format
/// (`2024-01-01T00:00:00.000Z`), which sort as text; times of another shape are not
/// judged (taken as in order).
fn not_before(a: &str, b: &str) -> bool {
    a.len() != b.len() || a >= b
}

/// A confirmed hold names its purchase, which names the hold back and holds exactly
/// the hold's tickets; a purchase naming a hold was confirmed from it.
fn check_confirmed(purchases: &[Purchase], holds: &[Hold]) -> Vec<Violation> {
    let mut violations = Vec::new();
    let by_purchase: HashMap<&str, &Purchase> = purchases
        .iter()
        .map(|p| (p.purchase_id.as_str(), p))
        .collect();
    let by_hold: HashMap<&str, &Hold> = holds.iter().map(|h| (h.hold_id.as_str(), h)).collect();
    let mismatch = |hold: &str, purchase: &str, reason| Violation::ConfirmMismatch {
        hold: hold.to_owned(),
        purchase: purchase.to_owned(),
        reason,
    };
    for h in holds.iter().filter(|h| h.status == HoldStatus::Confirmed) {
        let Some(purchase_id) = &h.purchase_id else {
            violations.push(mismatch(&h.hold_id, "-", "the hold names no purchase"));
            continue;
        };
        let Some(p) = by_purchase.get(purchase_id.as_str()) else {
            violations.push(mismatch(
                &h.hold_id,
                purchase_id,
                "the purchase is not listed",
            ));
            continue;
        };
        if p.hold_id.as_deref() != Some(h.hold_id.as_str()) {
            violations.push(mismatch(
                &h.hold_id,
                purchase_id,
                "the purchase names another hold",
            ));
        }
        let (mut held, mut bought) = (h.ticket_ids(), p.ticket_ids());
        held.sort_unstable();
        bought.sort_unstable();
        if held != bought {
            violations.push(mismatch(&h.hold_id, purchase_id, "their tickets differ"));
        }
    }
    for p in purchases {
        let Some(hold_id) = &p.hold_id else {
            continue;
        };
        match by_hold.get(hold_id.as_str()) {
            None => violations.push(mismatch(hold_id, &p.purchase_id, "the hold is not listed")),
            Some(h)
                if h.status != HoldStatus::Confirmed
                    || h.purchase_id.as_deref() != Some(p.purchase_id.as_str()) =>
            {
                violations.push(mismatch(
                    hold_id,
                    &p.purchase_id,
                    "the hold was not confirmed into this purchase",
                ));
            }
            Some(_) => {}
        }
    }
    violations
}

/// What the tickets of one event add up to.
#[derive(Debug, Default)]
struct Counted {
    total: u64,
    sold: u64,
    held: u64,
    min_price: u64,
    max_price: u64,
}

fn check_events<'a>(tickets: impl Iterator<Item = &'a Ticket>, events: &[Event]) -> Vec<Violation> {
    let mut counted: BTreeMap<&str, Counted> = BTreeMap::new();
    for t in tickets {
        let c = counted.entry(&t.event).or_insert(Counted {
            min_price: t.price_cents,
            max_price: t.price_cents,
            ..Counted::default()
        });
        c.total += 1;
        c.sold += u64::from(t.status() == TicketStatus::Sold);
        c.held += u64::from(t.status() == TicketStatus::Held);
        c.min_price = c.min_price.min(t.price_cents);
        c.max_price = c.max_price.max(t.price_cents);
    }
    let mut violations = Vec::new();
    let mut listed: HashMap<&str, ()> = HashMap::new();
    for e in events {
        listed.insert(&e.event, ());
        if e.sold
            .checked_add(e.held)
            .and_then(|n| n.checked_add(e.available))
            != Some(e.total)
        {
            violations.push(Violation::CountsDontAddUp {
                event: e.event.clone(),
                total: e.total,
                sold: e.sold,
                held: e.held,
                available: e.available,
            });
        }
        let Some(c) = counted.get(e.event.as_str()) else {
            violations.push(Violation::EventWithoutTickets(e.event.clone()));
            continue;
        };
        let fields = [
            ("total", e.total, c.total),
            ("sold", e.sold, c.sold),
            ("held", e.held, c.held),
            ("available", e.available, c.total - c.sold - c.held),
            ("min_price_cents", e.min_price_cents, c.min_price),
            ("max_price_cents", e.max_price_cents, c.max_price),
        ];
        for (field, reported, counted) in fields {
            if reported != counted {
                violations.push(Violation::EventDisagrees {
                    event: e.event.clone(),
                    field,
                    reported,
                    counted,
                });
            }
        }
    }
    for event in counted.keys() {
        if !listed.contains_key(event) {
            violations.push(Violation::EventMissing((*event).to_owned()));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PricedTicket;

    fn ticket(id: u64, event: &str, price_cents: u64, sold: bool) -> Ticket {
        Ticket {
            id,
            event: event.into(),
            price_cents,
            sold,
            status: Some(if sold {
                TicketStatus::Sold
            } else {
                TicketStatus::Available
            }),
        }
    }

    fn priced(tickets: &[(u64, u64)]) -> Vec<PricedTicket> {
        tickets
            .iter()
            .map(|&(id, price_cents)| PricedTicket { id, price_cents })
            .collect()
    }

    fn purchase(id: &str, event: &str, tickets: &[(u64, u64)]) -> Purchase {
        Purchase {
            purchase_id: id.into(),
            event: event.into(),
            quantity: tickets.len() as u32,
            tickets: priced(tickets),
            total_cents: tickets.iter().map(|t| t.1).sum(),
            node: "n1".into(),
            created_at: "2024-01-01T00:00:01.000Z".into(),
            hold_id: None,
            cancelled_at: None,
            customer: None,
            secret: None,
        }
    }

    fn hold(id: &str, event: &str, tickets: &[(u64, u64)], status: HoldStatus) -> Hold {
        Hold {
            hold_id: id.into(),
            event: event.into(),
            quantity: tickets.len() as u32,
            tickets: priced(tickets),
            total_cents: tickets.iter().map(|t| t.1).sum(),
            customer: None,
            node: "n1".into(),
            created_at: "2024-01-01T00:00:02.000Z".into(),
            expires_at: "2024-01-01T00:10:02.000Z".into(),
            status,
            purchase_id: None,
            secret: None,
        }
    }

    fn event(name: &str, total: u64, sold: u64, min: u64, max: u64) -> Event {
        Event {
            event: name.into(),
            total,
            available: total - sold,
            sold,
            held: 0,
            min_price_cents: min,
            max_price_cents: max,
            max_per_customer: None,
        }
    }

    /// Three concert tickets (1 and 2 sold in p1) and one theater ticket.
    fn consistent() -> Listed {
        Listed {
            tickets: vec![
                ticket(1, "concert", 100, true),
                ticket(2, "concert", 200, true),
                ticket(3, "concert", 300, false),
                ticket(4, "theater-show", 500, false),
            ],
            events: vec![
                event("concert", 3, 2, 100, 300),
                event("theater-show", 1, 0, 500, 500),
            ],
            purchases: vec![purchase("p-1", "concert", &[(1, 100), (2, 200)])],
            holds: Vec::new(),
        }
    }

    /// `consistent`, with ticket 3 held by live hold h-1.
    fn with_a_hold() -> Listed {
        let mut state = consistent();
        state.tickets[2].status = Some(TicketStatus::Held);
        state.events[0].held = 1;
        state.events[0].available = 0;
        state
            .holds
            .push(hold("h-1", "concert", &[(3, 300)], HoldStatus::Held));
        state
    }

    fn violations(state: &Listed) -> Vec<Violation> {
        check(state).0
    }

    /// Asserts that checking `state` finds every one of `expected`, among any others.
    fn assert_caught(state: &Listed, expected: &[Violation]) {
        let found = violations(state);
        for violation in expected {
            assert!(
                found.contains(violation),
                "{violation} not found in {found:?}"
            );
        }
    }

    /// The concert's counts of 3 tickets, 2 sold, that do not add up with these.
    fn counts_dont_add_up(held: u64, available: u64) -> Violation {
        Violation::CountsDontAddUp {
            event: "concert".into(),
            total: 3,
            sold: 2,
            held,
            available,
        }
    }

    #[test]
    fn a_consistent_state_has_no_violations_and_is_totalled() {
        let (found, totals) = check(&consistent());
        assert_eq!(found, []);
        assert_eq!(
            totals,
            Totals {
                tickets: 4,
                sold: 2,
                events: 2,
                purchases: 1,
                tickets_in_purchases: 2,
                revenue_cents: 300,
                ..Totals::default()
            }
        );
        let (found, totals) = check(&with_a_hold());
        assert_eq!(found, []);
        assert_eq!((totals.held, totals.holds, totals.live_holds), (1, 1, 1));
    }

    #[test]
    fn a_ticket_in_two_purchases_is_caught() {
        let mut state = consistent();
        state.tickets[2] = ticket(3, "concert", 300, true);
        state.events[0] = event("concert", 3, 3, 100, 300);
        state
            .purchases
            .push(purchase("p-2", "concert", &[(2, 200), (3, 300)]));
        assert_eq!(
            violations(&state),
            [Violation::SoldTwice {
                ticket: 2,
                purchases: vec!["p-1".into(), "p-2".into()]
            }]
        );
    }

    #[test]
    fn a_ticket_in_a_live_purchase_and_a_live_hold_or_in_two_holds_is_caught() {
        let mut state = with_a_hold();
        state
            .holds
            .push(hold("h-2", "concert", &[(2, 200)], HoldStatus::Held));
        state
            .holds
            .push(hold("h-3", "concert", &[(3, 300)], HoldStatus::Held));
        assert_caught(
            &state,
            &[
                Violation::HeldAndSold {
                    ticket: 2,
                    purchase: "p-1".into(),
                    hold: "h-2".into(),
                },
                Violation::HeldTwice {
                    ticket: 3,
                    holds: vec!["h-1".into(), "h-3".into()],
                },
            ],
        );
    }

    /// `consistent`, with p-1 cancelled and ticket 2 bought again after it in p-2 (ticket
    /// 1 still marked sold).
    fn cancelled_and_bought_again() -> Listed {
        let mut state = consistent();
        state.purchases[0].cancelled_at = Some("2024-01-01T00:00:05.000Z".into());
        let mut again = purchase("p-2", "concert", &[(2, 200)]);
        again.created_at = "2024-01-01T00:00:06.000Z".into();
        state.purchases.push(again);
        state
    }

    #[test]
    fn a_cancelled_purchase_frees_its_tickets_and_they_may_be_sold_again_later() {
        let mut state = cancelled_and_bought_again();
        state.tickets[0] = ticket(1, "concert", 100, false);
        state.events[0] = event("concert", 3, 1, 100, 300);
        let (found, totals) = check(&state);
        assert_eq!(found, []);
        assert_eq!((totals.cancelled, totals.tickets_in_purchases), (1, 1));
    }

    #[test]
    fn a_cancelled_purchase_whose_tickets_stay_sold_or_were_resold_before_it_is_caught() {
        // The cancel did not free ticket 1: still sold, in no live purchase.
        let state = cancelled_and_bought_again();
        assert_caught(
            &state,
            &[
                Violation::CancelledNotFreed {
                    ticket: 1,
                    purchase: "p-1".into(),
                },
                Violation::SoldWithoutPurchase(1),
            ],
        );
        // Ticket 2 is in a live purchase decided before the cancelled one.
        let mut state = consistent();
        state.purchases[0].purchase_id = "p-2".into();
        state.purchases[0].cancelled_at = Some("2024-01-01T00:00:05.000Z".into());
        state
            .purchases
            .push(purchase("p-1", "concert", &[(2, 200)]));
        state.tickets[0] = ticket(1, "concert", 100, false);
        state.events[0] = event("concert", 3, 1, 100, 300);
        assert_eq!(
            violations(&state),
            [Violation::CancelledNotFreed {
                ticket: 2,
                purchase: "p-2".into()
            }]
        );
    }

    #[test]
    fn a_confirmed_hold_and_its_purchase_must_agree() {
        let mut state = consistent();
        let mut confirmed = hold(
            "h-1",
            "concert",
            &[(1, 100), (2, 200)],
            HoldStatus::Confirmed,
        );
        confirmed.purchase_id = Some("p-1".into());
        state.purchases[0].hold_id = Some("h-1".into());
        state.holds.push(confirmed);
        assert_eq!(violations(&state), []);
        // The purchase took another ticket than the hold had.
        let mut wrong = state.clone();
        wrong.holds[0] = hold(
            "h-1",
            "concert",
            &[(1, 100), (3, 300)],
            HoldStatus::Confirmed,
        );
        wrong.holds[0].purchase_id = Some("p-1".into());
        assert_eq!(
            violations(&wrong),
            [Violation::ConfirmMismatch {
                hold: "h-1".into(),
                purchase: "p-1".into(),
                reason: "their tickets differ"
            }]
        );
        // A purchase naming a hold that was released.
        let mut released = state.clone();
        released.holds[0].status = HoldStatus::Released;
        assert_eq!(
            violations(&released),
            [Violation::ConfirmMismatch {
                hold: "h-1".into(),
                purchase: "p-1".into(),
                reason: "the hold was not confirmed into this purchase"
            }]
        );
    }

    #[test]
    fn a_held_ticket_without_a_hold_or_a_held_one_not_marked_is_caught() {
        let mut state = with_a_hold();
        state.holds[0].status = HoldStatus::Expired;
        let found = violations(&state);
        assert_eq!(found, [Violation::HeldWithoutHold(3)]);
        let mut state = with_a_hold();
        state.tickets[2].status = Some(TicketStatus::Available);
        assert_caught(
            &state,
            &[Violation::NotMarkedHeld {
                ticket: 3,
                hold: "h-1".into(),
            }],
        );
        assert!(
            violations(&state)
                .iter()
                .any(|v| matches!(v, Violation::EventDisagrees { field: "held", .. }))
        );
    }

    #[test]
    fn held_counts_must_add_up_and_sold_must_agree_with_status() {
        let mut state = with_a_hold();
        state.events[0].held = 0;
        assert_caught(&state, &[counts_dont_add_up(0, 0)]);
        let mut state = consistent();
        state.tickets[0].status = Some(TicketStatus::Held);
        assert_caught(
            &state,
            &[Violation::StatusDisagrees {
                ticket: 1,
                sold: true,
                status: TicketStatus::Held,
            }],
        );
    }

    #[test]
    fn a_sold_ticket_without_a_purchase_is_caught() {
        let mut state = consistent();
        state.tickets[2] = ticket(3, "concert", 300, true);
        state.events[0] = event("concert", 3, 3, 100, 300);
        assert_eq!(violations(&state), [Violation::SoldWithoutPurchase(3)]);
    }

    #[test]
    fn a_purchased_ticket_not_marked_sold_is_caught() {
        let mut state = consistent();
        state.tickets[1] = ticket(2, "concert", 200, false);
        state.events[0] = event("concert", 3, 1, 100, 300);
        assert_eq!(
            violations(&state),
            [Violation::NotMarkedSold {
                ticket: 2,
                purchase: "p-1".into()
            }]
        );
    }

    #[test]
    fn quantity_and_total_mismatches_are_caught() {
        let mut state = consistent();
        state.purchases[0].quantity = 3;
        state.purchases[0].total_cents = 999;
        assert_eq!(
            violations(&state),
            [
                Violation::QuantityMismatch {
                    order: "purchase p-1".into(),
                    quantity: 3,
                    tickets: 2
                },
                Violation::TotalMismatch {
                    order: "purchase p-1".into(),
                    total_cents: 999,
                    sum_cents: 300
                },
            ]
        );
    }

    #[test]
    fn a_purchase_of_unknown_or_foreign_or_mispriced_tickets_is_caught() {
        let mut state = consistent();
        state.purchases[0] = purchase("p-1", "concert", &[(1, 100), (2, 250)]);
        assert_caught(
            &state,
            &[Violation::PriceMismatch {
                ticket: 2,
                order: "purchase p-1".into(),
                in_order: 250,
                in_inventory: 200,
            }],
        );
        let mut state = consistent();
        state.tickets[3] = ticket(4, "theater-show", 500, true);
        state.events[1] = event("theater-show", 1, 1, 500, 500);
        state
            .purchases
            .push(purchase("p-2", "concert", &[(4, 500), (9, 1)]));
        assert_caught(
            &state,
            &[
                Violation::WrongEvent {
                    ticket: 4,
                    order: "purchase p-2".into(),
                    order_event: "concert".into(),
                    ticket_event: "theater-show".into(),
                },
                Violation::UnknownTicket {
                    ticket: 9,
                    order: "purchase p-2".into(),
                },
            ],
        );
    }

    #[test]
    fn event_counts_that_do_not_add_up_or_disagree_with_tickets_are_caught() {
        let mut state = consistent();
        state.events[0].available = 5;
        assert_caught(
            &state,
            &[
                counts_dont_add_up(0, 5),
                Violation::EventDisagrees {
                    event: "concert".into(),
                    field: "available",
                    reported: 5,
                    counted: 1,
                },
            ],
        );
        let mut state = consistent();
        state.events[0] = event("concert", 3, 1, 100, 300);
        assert_eq!(
            violations(&state),
            [
                Violation::EventDisagrees {
                    event: "concert".into(),
                    field: "sold",
                    reported: 1,
                    counted: 2
                },
                Violation::EventDisagrees {
                    event: "concert".into(),
                    field: "available",
                    reported: 2,
                    counted: 1
                },
            ]
        );
    }

    #[test]
    fn missing_and_empty_events_and_duplicate_ids_are_caught() {
        let mut state = consistent();
        state.events.pop();
        state.events.push(event("opera", 0, 0, 0, 0));
        state.tickets.push(ticket(3, "concert", 300, false));
        state.purchases.push(state.purchases[0].clone());
        assert_caught(
            &state,
            &[
                Violation::EventMissing("theater-show".into()),
                Violation::EventWithoutTickets("opera".into()),
                Violation::DuplicateTicket(3),
                Violation::DuplicatePurchase("p-1".into()),
            ],
        );
    }
}
