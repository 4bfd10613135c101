//! The audit's checks, on the inventory and purchases as the API listed them: pure
//! functions, so each kind of violation is tested on hand-made inputs.

use std::collections::{BTreeMap, HashMap};

use shared::api::{EventBody, PurchaseBody, TicketBody};
use shared::domain::MAX_QUANTITY;
use thiserror::Error;

/// One way the cluster's state breaks its promises.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Violation {
    #[error("ticket {0} is listed more than once by GET /tickets")]
    DuplicateTicket(u64),
    #[error("purchase id {0} is listed more than once by GET /purchases")]
    DuplicatePurchase(String),
    #[error("ticket {ticket} was sold more than once: in purchases {}", purchases.join(", "))]
    SoldTwice { ticket: u64, purchases: Vec<String> },
    #[error("ticket {0} is marked sold but no purchase holds it")]
    SoldWithoutPurchase(u64),
    #[error("ticket {ticket} is in purchase {purchase} but not marked sold")]
    NotMarkedSold { ticket: u64, purchase: String },
    #[error("purchase {purchase} holds ticket {ticket}, which is not in the inventory")]
    UnknownTicket { ticket: u64, purchase: String },
    #[error("purchase {purchase} of {purchase_event} holds ticket {ticket} of {ticket_event}")]
    WrongEvent {
        ticket: u64,
        purchase: String,
        purchase_event: String,
        ticket_event: String,
    },
    #[error(
        "purchase {purchase} says ticket {ticket} cost {in_purchase} cents; the inventory says {in_inventory}"
    )]
    PriceMismatch {
        ticket: u64,
        purchase: String,
        in_purchase: u64,
        in_inventory: u64,
    },
    #[error("purchase {purchase} has quantity {quantity} but {tickets} tickets")]
    QuantityMismatch {
        purchase: String,
        quantity: u32,
        tickets: usize,
    },
    #[error("purchase {purchase} has quantity {quantity}, outside 1 to {MAX_QUANTITY}")]
    QuantityOutOfRange { purchase: String, quantity: u32 },
    #[error("purchase {purchase} totals {total_cents} cents but its tickets sum to {sum_cents}")]
    TotalMismatch {
        purchase: String,
        total_cents: u64,
        sum_cents: u64,
    },
    #[error("event {event}: sold {sold} + available {available} != total {total}")]
    CountsDontAddUp {
        event: String,
        total: u64,
        sold: u64,
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
    pub events: u64,
    pub purchases: u64,
    pub tickets_in_purchases: u64,
    pub revenue_cents: u64,
}

/// Every violation in the listed state, in a stable order, and the totals.
pub fn check(
    tickets: &[TicketBody],
    events: &[EventBody],
    purchases: &[PurchaseBody],
) -> (Vec<Violation>, Totals) {
    let mut violations = Vec::new();
    let mut by_id: HashMap<u64, &TicketBody> = HashMap::with_capacity(tickets.len());
    for t in tickets {
        if by_id.insert(t.id, t).is_some() {
            violations.push(Violation::DuplicateTicket(t.id));
        }
    }
    violations.extend(check_purchases(&by_id, purchases));
    let holders = holders(purchases);
    let mut orphans: Vec<u64> = by_id
        .values()
        .filter(|t| t.sold && !holders.contains_key(&t.id))
        .map(|t| t.id)
        .collect();
    orphans.sort_unstable();
    violations.extend(orphans.into_iter().map(Violation::SoldWithoutPurchase));
    violations.extend(check_events(by_id.values().copied(), events));
    let totals = Totals {
        tickets: by_id.len() as u64,
        sold: by_id.values().filter(|t| t.sold).count() as u64,
        events: events.len() as u64,
        purchases: purchases.len() as u64,
        tickets_in_purchases: purchases.iter().map(|p| p.tickets.len() as u64).sum(),
        revenue_cents: purchases.iter().map(|p| p.total_cents).sum(),
    };
    (violations, totals)
}

/// Ticket id to the purchases holding it, in listing order (a ticket twice in one
/// purchase appears twice).
fn holders(purchases: &[PurchaseBody]) -> BTreeMap<u64, Vec<String>> {
    let mut holders: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for p in purchases {
        for t in &p.tickets {
            holders.entry(t.id).or_default().push(p.purchase_id.clone());
        }
    }
    holders
}

fn check_purchases(
    by_id: &HashMap<u64, &TicketBody>,
    purchases: &[PurchaseBody],
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut seen_ids: HashMap<&str, ()> = HashMap::new();
    for p in purchases {
        let purchase = || p.purchase_id.clone();
        if seen_ids.insert(&p.purchase_id, ()).is_some() {
            violations.push(Violation::DuplicatePurchase(purchase()));
        }
        if !(1..=MAX_QUANTITY).contains(&p.quantity) {
            violations.push(Violation::QuantityOutOfRange {
                purchase: purchase(),
                quantity: p.quantity,
            });
        }
        if p.quantity as usize != p.tickets.len() {
            violations.push(Violation::QuantityMismatch {
                purchase: purchase(),
                quantity: p.quantity,
                tickets: p.tickets.len(),
            });
        }
        let sum_cents: u64 = p.tickets.iter().map(|t| t.price_cents).sum();
        if sum_cents != p.total_cents {
            violations.push(Violation::TotalMismatch {
                purchase: purchase(),
                total_cents: p.total_cents,
                sum_cents,
            });
        }
        for held in &p.tickets {
            let Some(ticket) = by_id.get(&held.id) else {
                violations.push(Violation::UnknownTicket {
                    ticket: held.id,
                    purchase: purchase(),
                });
                continue;
            };
            if !ticket.sold {
                violations.push(Violation::NotMarkedSold {
                    ticket: held.id,
                    purchase: purchase(),
                });
            }
            if ticket.event != p.event {
                violations.push(Violation::WrongEvent {
                    ticket: held.id,
                    purchase: purchase(),
                    purchase_event: p.event.clone(),
                    ticket_event: ticket.event.clone(),
                });
            }
            if ticket.price_cents != held.price_cents {
                violations.push(Violation::PriceMismatch {
                    ticket: held.id,
                    purchase: purchase(),
                    in_purchase: held.price_cents,
                    in_inventory: ticket.price_cents,
                });
            }
        }
    }
    for (ticket, purchases) in holders(purchases) {
        if purchases.len() > 1 {
            violations.push(Violation::SoldTwice { ticket, purchases });
        }
    }
    violations
}

/// What the tickets of one event add up to.
#[derive(Debug, Default)]
struct Counted {
    total: u64,
    sold: u64,
    min_price: u64,
    max_price: u64,
}

fn check_events<'a>(
    tickets: impl Iterator<Item = &'a TicketBody>,
    events: &[EventBody],
) -> Vec<Violation> {
    let mut counted: BTreeMap<&str, Counted> = BTreeMap::new();
    for t in tickets {
        let c = counted.entry(&t.event).or_insert(Counted {
            min_price: t.price_cents,
            max_price: t.price_cents,
            ..Counted::default()
        });
        c.total += 1;
        c.sold += u64::from(t.sold);
        c.min_price = c.min_price.min(t.price_cents);
        c.max_price = c.max_price.max(t.price_cents);
    }
    let mut violations = Vec::new();
    let mut listed: HashMap<&str, ()> = HashMap::new();
    for e in events {
        listed.insert(&e.event, ());
        if e.sold.checked_add(e.available) != Some(e.total) {
            violations.push(Violation::CountsDontAddUp {
                event: e.event.clone(),
                total: e.total,
                sold: e.sold,
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
            ("available", e.available, c.total - c.sold),
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
    use shared::api::{PurchasedTicketBody, TicketStatus};

    fn ticket(id: u64, event: &str, price_cents: u64, sold: bool) -> TicketBody {
        TicketBody {
            id,
            event: event.into(),
            price_cents,
            sold,
            status: if sold {
                TicketStatus::Sold
            } else {
                TicketStatus::Available
            },
        }
    }

    fn purchase(id: &str, event: &str, tickets: &[(u64, u64)]) -> PurchaseBody {
        PurchaseBody {
            purchase_id: id.into(),
            event: event.into(),
            quantity: tickets.len() as u32,
            tickets: tickets
                .iter()
                .map(|&(id, price_cents)| PurchasedTicketBody { id, price_cents })
                .collect(),
            total_cents: tickets.iter().map(|t| t.1).sum(),
            node: "n1".into(),
            created_at: "2024-01-01T00:00:00.000Z".into(),
            customer: None,
            hold_id: None,
            cancelled_at: None,
            secret: None,
        }
    }

    fn event(name: &str, total: u64, sold: u64, min: u64, max: u64) -> EventBody {
        EventBody {
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
    fn consistent() -> (Vec<TicketBody>, Vec<EventBody>, Vec<PurchaseBody>) {
        (
            vec![
                ticket(1, "concert", 100, true),
                ticket(2, "concert", 200, true),
                ticket(3, "concert", 300, false),
                ticket(4, "theater-show", 500, false),
            ],
            vec![
                event("concert", 3, 2, 100, 300),
                event("theater-show", 1, 0, 500, 500),
            ],
            vec![purchase("p1", "concert", &[(1, 100), (2, 200)])],
        )
    }

    fn violations(
        (t, e, p): &(Vec<TicketBody>, Vec<EventBody>, Vec<PurchaseBody>),
    ) -> Vec<Violation> {
        check(t, e, p).0
    }

    #[test]
    fn a_consistent_state_has_no_violations_and_is_totalled() {
        let state = consistent();
        let (found, totals) = check(&state.0, &state.1, &state.2);
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
            }
        );
    }

    #[test]
    fn a_ticket_in_two_purchases_is_caught() {
        let mut state = consistent();
        state.0[2].sold = true;
        state.1[0] = event("concert", 3, 3, 100, 300);
        state
            .2
            .push(purchase("p2", "concert", &[(2, 200), (3, 300)]));
        assert_eq!(
            violations(&state),
            [Violation::SoldTwice {
                ticket: 2,
                purchases: vec!["p1".into(), "p2".into()]
            }]
        );
    }

    #[test]
    fn a_sold_ticket_without_a_purchase_is_caught() {
        let mut state = consistent();
        state.0[2].sold = true;
        state.1[0] = event("concert", 3, 3, 100, 300);
        assert_eq!(violations(&state), [Violation::SoldWithoutPurchase(3)]);
    }

    #[test]
    fn a_purchased_ticket_not_marked_sold_is_caught() {
        let mut state = consistent();
        state.0[1].sold = false;
        state.1[0] = event("concert", 3, 1, 100, 300);
        assert_eq!(
            violations(&state),
            [Violation::NotMarkedSold {
                ticket: 2,
                purchase: "p1".into()
            }]
        );
    }

    #[test]
    fn quantity_and_total_mismatches_are_caught() {
        let mut state = consistent();
        state.2[0].quantity = 3;
        state.2[0].total_cents = 999;
        assert_eq!(
            violations(&state),
            [
                Violation::QuantityMismatch {
                    purchase: "p1".into(),
                    quantity: 3,
                    tickets: 2
                },
                Violation::TotalMismatch {
                    purchase: "p1".into(),
                    total_cents: 999,
                    sum_cents: 300
                },
            ]
        );
    }

    #[test]
    fn a_purchase_of_unknown_or_foreign_or_mispriced_tickets_is_caught() {
        let mut state = consistent();
        state.2[0] = purchase("p1", "concert", &[(1, 100), (2, 250)]);
        let found = violations(&state);
        assert!(found.contains(&Violation::PriceMismatch {
            ticket: 2,
            purchase: "p1".into(),
            in_purchase: 250,
            in_inventory: 200
        }));
        let mut state = consistent();
        state.0[3].sold = true;
        state.1[1] = event("theater-show", 1, 1, 500, 500);
        state.2.push(purchase("p2", "concert", &[(4, 500), (9, 1)]));
        let found = violations(&state);
        assert!(found.contains(&Violation::WrongEvent {
            ticket: 4,
            purchase: "p2".into(),
            purchase_event: "concert".into(),
            ticket_event: "theater-show".into()
        }));
        assert!(found.contains(&Violation::UnknownTicket {
            ticket: 9,
            purchase: "p2".into()
        }));
    }

    #[test]
    fn event_counts_that_do_not_add_up_or_disagree_with_tickets_are_caught() {
        let mut state = consistent();
        state.1[0].available = 5;
        let found = violations(&state);
        assert!(found.contains(&Violation::CountsDontAddUp {
            event: "concert".into(),
            total: 3,
            sold: 2,
            available: 5
        }));
        assert!(found.contains(&Violation::EventDisagrees {
            event: "concert".into(),
            field: "available",
            reported: 5,
            counted: 1
        }));
        let mut state = consistent();
        state.1[0] = event("concert", 3, 1, 100, 300);
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
        state.1.pop();
        state.1.push(event("opera", 0, 0, 0, 0));
        state.0.push(ticket(3, "concert", 300, false));
        state.2.push(state.2[0].clone());
        let found = violations(&state);
        for expected in [
            Violation::EventMissing("theater-show".into()),
            Violation::EventWithoutTickets("opera".into()),
            Violation::DuplicateTicket(3),
            Violation::DuplicatePurchase("p1".into()),
        ] {
            assert!(
                found.contains(&expected),
                "{expected} not found in {found:?}"
            );
        }
    }
}
