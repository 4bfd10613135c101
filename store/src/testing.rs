//! Test support shared by the store's unit tests and the cluster's store suites: the
//! one-event inventory they seed and the purchases they make. Compiled only for tests and
//! under the `fault-injection` feature, which only test builds enable.

use shared::{
    Command, EventName, Inventory, Order, PurchaseError, PurchaseOutcome, PurchaseRequest,
    Quantity, SaleRequest, Selection, Ticket,
};

use crate::TicketStore;

/// An inventory of `tickets` unsold tickets for "concert", ids 1 to `tickets`, at 100 cents.
pub fn inventory(tickets: u64) -> Inventory {
    let tickets = (1..=tickets)
        .map(|id| Ticket {
            id,
            event: EventName::parse("concert").expect("valid"),
            price_cents: 100,
            sold: false,
        })
        .collect();
    Inventory::from_tickets(tickets).expect("consistent")
}

/// A request for `quantity` tickets for "concert".
pub fn request(quantity: u32) -> PurchaseRequest {
    PurchaseRequest::new(
        EventName::parse("concert").expect("valid"),
        Quantity::new(quantity).expect("valid"),
    )
}

/// An order for `quantity` tickets for "concert", without key, customer or proof.
pub fn order(quantity: u32) -> Order {
    Order::new(Command::Purchase(SaleRequest {
        event: EventName::parse("concert").expect("valid"),
        selection: Selection::Quantity(Quantity::new(quantity).expect("valid")),
        customer: None,
    }))
}

/// Buys `quantity` tickets without an idempotency key; the store itself must not fail.
pub fn buy(store: &TicketStore, quantity: u32) -> Result<PurchaseOutcome, PurchaseError> {
    store
        .purchase(&request(quantity), None, "test")
        .expect("store works")
}

/// How many tickets `store` sees sold.
pub fn sold_count(store: &TicketStore) -> usize {
    store
        .read(|inv| inv.tickets().iter().filter(|t| t.sold).count())
        .expect("readable")
}

/// Eight threads, each with its own handle from `handle`, each making ten purchases of 1 to
/// 3 tickets; how many tickets each thread bought.
pub fn racing_buyers(handle: impl Fn() -> TicketStore) -> Vec<u32> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let store = handle();
                s.spawn(move || {
                    let mut sold = 0;
                    for round in 0..10 {
                        let q = 1 + (i + round) % 3;
                        if buy(&store, q).is_ok() {
                            sold += q;
                        }
                    }
                    sold
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    })
}
