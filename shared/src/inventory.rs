//! The inventory as one consistent state: tickets, committed purchases, the queries the API
//! answers and the all-or-nothing purchase decision. Pure logic, no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use thiserror::Error;

use crate::domain::{
    EventName, EventSummary, IdempotencyKey, Purchase, PurchaseRequest, SoldTicket, Ticket,
    format_timestamp,
};

/// Why a purchase was refused. None of these changes the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PurchaseError {
    #[error("no event named {0}")]
    UnknownEvent(EventName),
    #[error("{event} has {available} tickets left, fewer than the {requested} asked for")]
    SoldOut {
        event: EventName,
        requested: u32,
        available: u64,
    },
    #[error("Idempotency-Key was already used for a different purchase ({event} x {quantity})")]
    KeyReused { event: EventName, quantity: u32 },
}

/// Why a stored state is not a valid inventory.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InconsistencyError {
    #[error("ticket id {0} appears more than once")]
    DuplicateTicket(u64),
    #[error("ticket id 0 is not allowed; ids are positive")]
    ZeroTicketId,
    #[error("purchase {purchase} names ticket {ticket}, which is not in the inventory")]
    UnknownTicket { purchase: String, ticket: u64 },
    #[error("ticket {ticket} is in purchase {purchase} but not marked sold")]
    SoldFlagMissing { purchase: String, ticket: u64 },
    #[error("ticket {0} is in two purchases")]
    SoldTwice(u64),
    #[error("ticket {0} is marked sold but no purchase holds it")]
    SoldWithoutPurchase(u64),
    #[error("purchase id {0} appears more than once")]
    DuplicatePurchase(String),
    #[error("purchase id {0:?} is not of the form p-<number>")]
    UnnumberedPurchase(String),
    #[error(
        "purchase {purchase} is numbered {seq}, but the next number is {next}: a purchase is missing, repeated or out of order, or next_purchase_seq is wrong"
    )]
    OutOfSequence {
        purchase: String,
        seq: u64,
        next: u64,
    },
    #[error(
        "next_purchase_seq is {next}, but purchase {purchase} is already numbered {seq}: the next sale would reuse an id"
    )]
    NextSeqTooLow {
        purchase: String,
        seq: u64,
        next: u64,
    },
    #[error("purchase {purchase} is for {quantity} tickets but holds {tickets}")]
    QuantityMismatch {
        purchase: String,
        quantity: u32,
        tickets: usize,
    },
    #[error("purchase {purchase} is for {event} but holds ticket {ticket} of another event")]
    WrongEvent {
        purchase: String,
        event: EventName,
        ticket: u64,
    },
    #[error(
        "purchase {purchase} records ticket {ticket} at {recorded} cents; the ticket costs {price}"
    )]
    PriceMismatch {
        purchase: String,
        ticket: u64,
        recorded: u64,
        price: u64,
    },
    #[error("purchase {purchase} totals {total} cents; its tickets add up to {sum}")]
    TotalMismatch {
        purchase: String,
        total: u64,
        sum: u64,
    },
}

/// Filters of `GET /tickets`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TicketFilter {
    pub event: Option<EventName>,
    pub sold: Option<bool>,
}

/// The most items one page of a listing may hold.
pub const MAX_PAGE_LIMIT: usize = 10_000;

/// One page of a listing: at most the asked-for number of items after a key, and the key to
/// page on from (the last item's) when more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, K> {
    pub items: Vec<T>,
    /// `None` on the last page.
    pub next: Option<K>,
}

impl<T, K> Page<T, K> {
    /// Takes up to `limit` items from `items`, looking one further to learn whether a next
    /// page exists, so a page costs what its items cost and never copies the whole listing.
    fn take<'a>(items: impl Iterator<Item = &'a T>, limit: usize, key: impl Fn(&T) -> K) -> Self
    where
        T: Clone + 'a,
    {
        let mut taken: Vec<T> = items.take(limit.saturating_add(1)).cloned().collect();
        let next = if taken.len() > limit {
            taken.truncate(limit);
            taken.last().map(&key)
        } else {
            None
        };
        Self { items: taken, next }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U, K> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next: self.next,
        }
    }
}

/// What a purchase attempt produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurchaseOutcome {
    /// A new sale: the inventory changed and must be saved.
    Created(Purchase),
    /// A retry of an earlier sale with the same idempotency key: nothing changed.
    Replayed(Purchase),
}

impl PurchaseOutcome {
    pub fn purchase(&self) -> &Purchase {
        match self {
            Self::Created(p) | Self::Replayed(p) => p,
        }
    }

    pub fn into_purchase(self) -> Purchase {
        match self {
            Self::Created(p) | Self::Replayed(p) => p,
        }
    }
}

/// Every ticket and every committed purchase, checked consistent when built.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Sorted by id, so listings come out in order without sorting per request.
    tickets: Vec<Ticket>,
    /// In commit order, which is the order `GET /purchases` returns.
    purchases: Vec<Purchase>,
    /// The sequence number the next purchase id is made from.
    next_purchase_seq: u64,
    /// Purchase id to its index in `purchases`.
    by_purchase_id: HashMap<String, usize>,
    /// Idempotency key to the index of the purchase it produced.
    by_key: HashMap<String, usize>,
    /// Per event, its running summary and its unsold ticket ids, so a sale and the event
    /// listing cost the same whatever the inventory's size.
    events: BTreeMap<EventName, EventIndex>,
}

#[derive(Debug, Clone)]
struct EventIndex {
    summary: EventSummary,
    available: BTreeSet<u64>,
    /// Positions in `Inventory::tickets` of this event's tickets, ascending, so a page of
    /// one event's tickets starts by binary search instead of a scan of every ticket.
    tickets: Vec<usize>,
    /// Positions in `Inventory::purchases` of this event's purchases, in commit order, for
    /// the same reason.
    purchases: Vec<usize>,
}

impl Inventory {
    /// Builds an inventory of unsold tickets.
    pub fn from_tickets(tickets: Vec<Ticket>) -> Result<Self, InconsistencyError> {
        Self::from_parts(tickets, Vec::new(), 1)
    }

    /// Builds an inventory from stored parts, refusing any state that breaks an invariant.
    pub fn from_parts(
        mut tickets: Vec<Ticket>,
        purchases: Vec<Purchase>,
        next_purchase_seq: u64,
    ) -> Result<Self, InconsistencyError> {
        tickets.sort_by_key(|t| t.id);
        for pair in tickets.windows(2) {
            if pair[0].id == pair[1].id {
                return Err(InconsistencyError::DuplicateTicket(pair[0].id));
            }
        }
        if tickets.first().is_some_and(|t| t.id == 0) {
            return Err(InconsistencyError::ZeroTicketId);
        }
        let mut inventory = Self {
            tickets,
            purchases: Vec::with_capacity(purchases.len()),
            next_purchase_seq,
            by_purchase_id: HashMap::with_capacity(purchases.len()),
            by_key: HashMap::new(),
            events: BTreeMap::new(),
        };
        inventory.index_events();
        let mut held = HashSet::new();
        // Purchases are stored in commit order, so their numbers rise, and every one is
        // below the number the next sale gets: otherwise a sale would reuse an id.
        let mut last_seq = None;
        for purchase in purchases {
            for sold in &purchase.tickets {
                let ticket =
                    inventory
                        .ticket(sold.id)
                        .ok_or_else(|| InconsistencyError::UnknownTicket {
                            purchase: purchase.purchase_id.clone(),
                            ticket: sold.id,
                        })?;
                if !ticket.sold {
                    return Err(InconsistencyError::SoldFlagMissing {
                        purchase: purchase.purchase_id.clone(),
                        ticket: sold.id,
                    });
                }
                if !held.insert(sold.id) {
                    return Err(InconsistencyError::SoldTwice(sold.id));
                }
            }
            inventory.check_purchase(&purchase)?;
            let seq = sequence_of(&purchase)?;
            if let Some(last) = last_seq.filter(|&last| seq <= last) {
                return Err(InconsistencyError::OutOfSequence {
                    purchase: purchase.purchase_id,
                    seq,
                    next: last + 1,
                });
            }
            if seq >= next_purchase_seq {
                return Err(InconsistencyError::NextSeqTooLow {
                    purchase: purchase.purchase_id,
                    seq,
                    next: next_purchase_seq,
                });
            }
            last_seq = Some(seq);
            if inventory.by_purchase_id.contains_key(&purchase.purchase_id) {
                return Err(InconsistencyError::DuplicatePurchase(purchase.purchase_id));
            }
            inventory.index_purchase(purchase);
        }
        if let Some(orphan) = inventory
            .tickets
            .iter()
            .find(|t| t.sold && !held.contains(&t.id))
        {
            return Err(InconsistencyError::SoldWithoutPurchase(orphan.id));
        }
        Ok(inventory)
    }

    fn index_events(&mut self) {
        for (position, ticket) in self.tickets.iter().enumerate() {
            let index = self
                .events
                .entry(ticket.event.clone())
                .or_insert_with(|| EventIndex {
                    summary: EventSummary {
                        event: ticket.event.clone(),
                        total: 0,
                        available: 0,
                        sold: 0,
                        held: 0,
                        min_price_cents: ticket.price_cents,
                        max_price_cents: ticket.price_cents,
                    },
                    available: BTreeSet::new(),
                    tickets: Vec::new(),
                    purchases: Vec::new(),
                });
            index.tickets.push(position);
            let summary = &mut index.summary;
            summary.total += 1;
            if ticket.sold {
                summary.sold += 1;
            } else {
                summary.available += 1;
                index.available.insert(ticket.id);
            }
            summary.min_price_cents = summary.min_price_cents.min(ticket.price_cents);
            summary.max_price_cents = summary.max_price_cents.max(ticket.price_cents);
        }
    }

    fn index_purchase(&mut self, purchase: Purchase) {
        let index = self.purchases.len();
        self.by_purchase_id
            .insert(purchase.purchase_id.clone(), index);
        if let Some(key) = &purchase.idempotency_key {
            self.by_key.insert(key.as_str().to_owned(), index);
        }
        if let Some(event) = self.events.get_mut(&purchase.event) {
            event.purchases.push(index);
        }
        self.purchases.push(purchase);
    }

    /// Marks one ticket sold, keeping the event index in step.
    fn mark_sold(&mut self, position: usize) {
        let ticket = &mut self.tickets[position];
        ticket.sold = true;
        if let Some(index) = self.events.get_mut(&ticket.event) {
            index.available.remove(&ticket.id);
            index.summary.available -= 1;
            index.summary.sold += 1;
        }
    }

    /// Replays a purchase committed elsewhere (read back from the store's journal),
    /// refusing one that conflicts with this state.
    pub fn apply_committed(&mut self, purchase: Purchase) -> Result<(), InconsistencyError> {
        if self.by_purchase_id.contains_key(&purchase.purchase_id) {
            return Err(InconsistencyError::DuplicatePurchase(purchase.purchase_id));
        }
        self.check_purchase(&purchase)?;
        // Each sale takes the next number, so the log holds them with no gap or repeat.
        let seq = sequence_of(&purchase)?;
        if seq != self.next_purchase_seq {
            return Err(InconsistencyError::OutOfSequence {
                purchase: purchase.purchase_id,
                seq,
                next: self.next_purchase_seq,
            });
        }
        let mut positions = Vec::with_capacity(purchase.tickets.len());
        for sold in &purchase.tickets {
            let position = self
                .tickets
                .binary_search_by_key(&sold.id, |t| t.id)
                .map_err(|_| InconsistencyError::UnknownTicket {
                    purchase: purchase.purchase_id.clone(),
                    ticket: sold.id,
                })?;
            if self.tickets[position].sold || positions.contains(&position) {
                return Err(InconsistencyError::SoldTwice(sold.id));
            }
            positions.push(position);
        }
        for position in positions {
            self.mark_sold(position);
        }
        self.next_purchase_seq += 1;
        self.index_purchase(purchase);
        Ok(())
    }

    /// Checks what a purchase says of itself against the tickets it names: as many
    /// tickets as its quantity, all of its event, each at the ticket's price, and a total
    /// that is their sum. Whether the tickets are free to sell is the caller's check.
    fn check_purchase(&self, purchase: &Purchase) -> Result<(), InconsistencyError> {
        let id = || purchase.purchase_id.clone();
        if purchase.tickets.len() != purchase.quantity.get() as usize {
            return Err(InconsistencyError::QuantityMismatch {
                purchase: id(),
                quantity: purchase.quantity.get(),
                tickets: purchase.tickets.len(),
            });
        }
        let mut sum: u64 = 0;
        for sold in &purchase.tickets {
            let ticket = self
                .ticket(sold.id)
                .ok_or_else(|| InconsistencyError::UnknownTicket {
                    purchase: id(),
                    ticket: sold.id,
                })?;
            if ticket.event != purchase.event {
                return Err(InconsistencyError::WrongEvent {
                    purchase: id(),
                    event: purchase.event.clone(),
                    ticket: sold.id,
                });
            }
            if ticket.price_cents != sold.price_cents {
                return Err(InconsistencyError::PriceMismatch {
                    purchase: id(),
                    ticket: sold.id,
                    recorded: sold.price_cents,
                    price: ticket.price_cents,
                });
            }
            sum = sum.saturating_add(sold.price_cents);
        }
        if sum != purchase.total_cents {
            return Err(InconsistencyError::TotalMismatch {
                purchase: id(),
                total: purchase.total_cents,
                sum,
            });
        }
        Ok(())
    }

    pub fn tickets(&self) -> &[Ticket] {
        &self.tickets
    }

    pub fn purchases(&self) -> &[Purchase] {
        &self.purchases
    }

    pub fn next_purchase_seq(&self) -> u64 {
        self.next_purchase_seq
    }

    pub fn ticket(&self, id: u64) -> Option<&Ticket> {
        self.tickets
            .binary_search_by_key(&id, |t| t.id)
            .ok()
            .map(|i| &self.tickets[i])
    }

    /// The tickets matching `filter`, sorted by id.
    pub fn find_tickets(&self, filter: &TicketFilter) -> Vec<Ticket> {
        self.tickets
            .iter()
            .filter(|t| filter.event.as_ref().is_none_or(|e| &t.event == e))
            .filter(|t| filter.sold.is_none_or(|s| t.sold == s))
            .cloned()
            .collect()
    }

    /// A page of the tickets matching `filter`, sorted by id, starting after ticket id
    /// `after`. With an event filter it starts by binary search in that event's tickets.
    pub fn page_tickets(
        &self,
        filter: &TicketFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Page<Ticket, u64> {
        let after = after.unwrap_or(0);
        let sold = |t: &&Ticket| filter.sold.is_none_or(|s| t.sold == s);
        match &filter.event {
            Some(event) => {
                let positions = self.events.get(event).map_or(&[][..], |i| &i.tickets);
                let start = positions.partition_point(|&p| self.tickets[p].id <= after);
                let found = positions[start..].iter().map(|&p| &self.tickets[p]);
                Page::take(found.filter(sold), limit, |t| t.id)
            }
            None => {
                let start = self.tickets.partition_point(|t| t.id <= after);
                Page::take(self.tickets[start..].iter().filter(sold), limit, |t| t.id)
            }
        }
    }

    /// A page of purchases in commit order, optionally of one event, starting after the
    /// purchase numbered `after` (see [`purchase_number`]); that purchase need not exist.
    pub fn page_purchases(
        &self,
        event: Option<&EventName>,
        after: Option<u64>,
        limit: usize,
    ) -> Page<Purchase, String> {
        let after = after.unwrap_or(0);
        // Purchases are held in commit order, so their numbers rise along the list.
        let at_or_before = |p: &Purchase| sequence_of(p).is_ok_and(|seq| seq <= after);
        let id = |p: &Purchase| p.purchase_id.clone();
        match event {
            Some(event) => {
                let positions = self.events.get(event).map_or(&[][..], |i| &i.purchases);
                let start = positions.partition_point(|&p| at_or_before(&self.purchases[p]));
                let found = positions[start..].iter().map(|&p| &self.purchases[p]);
                Page::take(found, limit, id)
            }
            None => {
                let start = self.purchases.partition_point(at_or_before);
                Page::take(self.purchases[start..].iter(), limit, id)
            }
        }
    }

    /// One summary per event, sorted by event name.
    pub fn events(&self) -> Vec<EventSummary> {
        self.events.values().map(|i| i.summary.clone()).collect()
    }

    pub fn event(&self, event: &EventName) -> Option<EventSummary> {
        self.events.get(event).map(|i| i.summary.clone())
    }

    pub fn purchase(&self, purchase_id: &str) -> Option<&Purchase> {
        self.by_purchase_id
            .get(purchase_id)
            .map(|&i| &self.purchases[i])
    }

    /// Purchases in commit order, optionally of one event.
    pub fn find_purchases(&self, event: Option<&EventName>) -> Vec<Purchase> {
        self.purchases
            .iter()
            .filter(|p| event.is_none_or(|e| &p.event == e))
            .cloned()
            .collect()
    }

    /// Sells `request.quantity` tickets of the event, all or none, or replays the earlier
    /// outcome of the same idempotency key. Takes the lowest-numbered available tickets.
    pub fn purchase_tickets(
        &mut self,
        request: &PurchaseRequest,
        key: Option<&IdempotencyKey>,
        node: &str,
    ) -> Result<PurchaseOutcome, PurchaseError> {
        if let Some(key) = key
            && let Some(&index) = self.by_key.get(key.as_str())
        {
            let earlier = &self.purchases[index];
            if earlier.event == request.event && earlier.quantity == request.quantity {
                return Ok(PurchaseOutcome::Replayed(earlier.clone()));
            }
            return Err(PurchaseError::KeyReused {
                event: earlier.event.clone(),
                quantity: earlier.quantity.get(),
            });
        }
        let wanted = request.quantity.get() as usize;
        let index = self
            .events
            .get(&request.event)
            .ok_or_else(|| PurchaseError::UnknownEvent(request.event.clone()))?;
        if index.available.len() < wanted {
            return Err(PurchaseError::SoldOut {
                event: request.event.clone(),
                requested: request.quantity.get(),
                available: index.available.len() as u64,
            });
        }
        let chosen: Vec<u64> = index.available.iter().take(wanted).copied().collect();
        let mut tickets = Vec::with_capacity(wanted);
        for id in chosen {
            let position = self
                .tickets
                .binary_search_by_key(&id, |t| t.id)
                .expect("the event index only holds ids of tickets in the inventory");
            tickets.push(SoldTicket {
                id,
                price_cents: self.tickets[position].price_cents,
            });
            self.mark_sold(position);
        }
        let purchase = Purchase {
            purchase_id: purchase_id(self.next_purchase_seq),
            event: request.event.clone(),
            quantity: request.quantity,
            total_cents: tickets.iter().map(|t| t.price_cents).sum(),
            tickets,
            node: node.to_owned(),
            created_at: format_timestamp(request.requested_at),
            idempotency_key: key.cloned(),
        };
        self.next_purchase_seq += 1;
        self.index_purchase(purchase.clone());
        Ok(PurchaseOutcome::Created(purchase))
    }
}

/// The id of the purchase numbered `seq`.
fn purchase_id(seq: u64) -> String {
    format!("p-{seq:08}")
}

/// The number in a purchase id of the form `p-<number>`, as paging's `after` takes it.
pub fn purchase_number(purchase_id: &str) -> Option<u64> {
    purchase_id
        .strip_prefix("p-")
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse().ok())
}

/// The number in a purchase's id, `p-<number>`.
fn sequence_of(purchase: &Purchase) -> Result<u64, InconsistencyError> {
    purchase_number(&purchase.purchase_id)
        .ok_or_else(|| InconsistencyError::UnnumberedPurchase(purchase.purchase_id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Quantity;

    fn event(name: &str) -> EventName {
        EventName::parse(name).expect("test event names are valid")
    }

    fn ticket(id: u64, name: &str, price_cents: u64) -> Ticket {
        Ticket {
            id,
            event: event(name),
            price_cents,
            sold: false,
        }
    }

    fn request(name: &str, quantity: u32) -> PurchaseRequest {
        PurchaseRequest::new(
            event(name),
            Quantity::new(quantity).expect("test quantities are valid"),
        )
    }

    fn sample() -> Inventory {
        Inventory::from_tickets(vec![
            ticket(3, "concert", 3000),
            ticket(1, "concert", 1000),
            ticket(2, "concert", 2000),
            ticket(4, "theater-show", 5000),
        ])
        .expect("sample is consistent")
    }

    #[test]
    fn a_purchase_sells_the_lowest_available_tickets_and_totals_their_prices() {
        let mut inv = sample();
        let outcome = inv
            .purchase_tickets(&request("concert", 2), None, "n1")
            .expect("two are available");
        let PurchaseOutcome::Created(p) = outcome else {
            panic!("expected a new purchase");
        };
        assert_eq!(p.tickets.iter().map(|t| t.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(p.total_cents, 3000);
        assert_eq!(p.node, "n1");
        assert!(inv.ticket(1).is_some_and(|t| t.sold));
        assert!(inv.ticket(3).is_some_and(|t| !t.sold));
        assert_eq!(inv.purchase(&p.purchase_id), Some(&p));
    }

    #[test]
    fn a_purchase_larger_than_what_is_left_sells_nothing() {
        let mut inv = sample();
        let err = inv
            .purchase_tickets(&request("concert", 4), None, "n1")
            .expect_err("only three exist");
        assert!(matches!(err, PurchaseError::SoldOut { available: 3, .. }));
        assert!(inv.tickets().iter().all(|t| !t.sold));
        assert!(inv.purchases().is_empty());
    }

    #[test]
    fn an_unknown_event_is_refused() {
        let mut inv = sample();
        let err = inv
            .purchase_tickets(&request("opera", 1), None, "n1")
            .expect_err("no such event");
        assert_eq!(err, PurchaseError::UnknownEvent(event("opera")));
    }

    #[test]
    fn a_sold_out_event_reports_zero_available() {
        let mut inv = sample();
        inv.purchase_tickets(&request("theater-show", 1), None, "n1")
            .expect("one is available");
        let err = inv
            .purchase_tickets(&request("theater-show", 1), None, "n1")
            .expect_err("sold out");
        assert!(matches!(err, PurchaseError::SoldOut { available: 0, .. }));
    }

    #[test]
    fn a_repeated_idempotency_key_replays_the_first_purchase() {
        let mut inv = sample();
        let key = IdempotencyKey::parse("k1").expect("valid key");
        let first = inv
            .purchase_tickets(&request("concert", 1), Some(&key), "n1")
            .expect("available");
        let again = inv
            .purchase_tickets(&request("concert", 1), Some(&key), "n2")
            .expect("replayed");
        assert!(matches!(again, PurchaseOutcome::Replayed(_)));
        assert_eq!(first.purchase(), again.purchase());
        assert_eq!(inv.purchases().len(), 1);
    }

    #[test]
    fn a_reused_idempotency_key_with_another_body_is_refused() {
        let mut inv = sample();
        let key = IdempotencyKey::parse("k1").expect("valid key");
        inv.purchase_tickets(&request("concert", 1), Some(&key), "n1")
            .expect("available");
        let err = inv
            .purchase_tickets(&request("concert", 2), Some(&key), "n1")
            .expect_err("different quantity");
        assert!(matches!(err, PurchaseError::KeyReused { quantity: 1, .. }));
    }

    #[test]
    fn events_are_summarised_and_sorted() {
        let mut inv = sample();
        inv.purchase_tickets(&request("concert", 1), None, "n1")
            .expect("available");
        let events = inv.events();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event.as_str(), "concert");
        assert_eq!(
            (events[0].total, events[0].sold, events[0].available),
            (3, 1, 2)
        );
        assert_eq!(
            (events[0].min_price_cents, events[0].max_price_cents),
            (1000, 3000)
        );
        assert_eq!(events[1].event.as_str(), "theater-show");
    }

    #[test]
    fn ticket_filters_combine() {
        let mut inv = sample();
        inv.purchase_tickets(&request("concert", 1), None, "n1")
            .expect("available");
        let unsold_concert = inv.find_tickets(&TicketFilter {
            event: Some(event("concert")),
            sold: Some(false),
        });
        assert_eq!(
            unsold_concert.iter().map(|t| t.id).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(inv.find_tickets(&TicketFilter::default()).len(), 4);
    }

    #[test]
    fn inconsistent_states_are_refused() {
        let dup = Inventory::from_tickets(vec![ticket(1, "a", 1), ticket(1, "b", 1)]);
        assert_eq!(dup.err(), Some(InconsistencyError::DuplicateTicket(1)));

        let mut sold = ticket(1, "a", 1);
        sold.sold = true;
        let orphan = Inventory::from_tickets(vec![sold]);
        assert_eq!(
            orphan.err(),
            Some(InconsistencyError::SoldWithoutPurchase(1))
        );

        let mut inv = sample();
        let p = inv
            .purchase_tickets(&request("concert", 1), None, "n1")
            .expect("available")
            .into_purchase();
        let twice = Inventory::from_parts(inv.tickets().to_vec(), vec![p.clone(), p], 9);
        assert_eq!(twice.err(), Some(InconsistencyError::SoldTwice(1)));
    }

    /// The sample after one concert purchase of two tickets: its parts, and the purchase.
    fn sold_parts() -> (Vec<Ticket>, Purchase) {
        let mut inv = sample();
        let p = inv
            .purchase_tickets(&request("concert", 2), None, "n1")
            .expect("available")
            .into_purchase();
        (inv.tickets().to_vec(), p)
    }

    #[test]
    fn a_next_purchase_seq_not_above_every_purchase_id_is_refused() {
        let (tickets, p) = sold_parts();
        assert!(Inventory::from_parts(tickets.clone(), vec![p.clone()], 2).is_ok());
        for next in [0, 1] {
            let err = Inventory::from_parts(tickets.clone(), vec![p.clone()], next).err();
            assert!(
                matches!(err, Some(InconsistencyError::NextSeqTooLow { seq: 1, .. })),
                "next_purchase_seq {next}: {err:?}"
            );
        }
        let mut unnumbered = p;
        unnumbered.purchase_id = "bought".into();
        let err = Inventory::from_parts(tickets, vec![unnumbered], 2).err();
        assert!(
            matches!(err, Some(InconsistencyError::UnnumberedPurchase(_))),
            "{err:?}"
        );
    }

    #[test]
    fn a_purchase_whose_quantity_event_price_or_total_disagrees_is_refused_on_load_and_replay() {
        let (tickets, good) = sold_parts();
        let mut quantity = good.clone();
        quantity.quantity = Quantity::new(3).expect("valid");
        let mut total = good.clone();
        total.total_cents += 1;
        let mut price = good.clone();
        price.tickets[0].price_cents += 1;
        price.total_cents += 1;
        let mut other_event = good.clone();
        other_event.event = event("theater-show");
        let cases: [(&str, Purchase); 4] = [
            ("quantity", quantity),
            ("total", total),
            ("price", price),
            ("event", other_event),
        ];
        for (what, bad) in cases {
            let loaded = Inventory::from_parts(tickets.clone(), vec![bad.clone()], 2);
            let expected = |err: &InconsistencyError| match what {
                "quantity" => matches!(err, InconsistencyError::QuantityMismatch { .. }),
                "total" => matches!(err, InconsistencyError::TotalMismatch { .. }),
                "price" => matches!(err, InconsistencyError::PriceMismatch { .. }),
                _ => matches!(err, InconsistencyError::WrongEvent { .. }),
            };
            let err = loaded.err();
            assert!(
                err.as_ref().is_some_and(expected),
                "{what} on load: {err:?}"
            );
            let err = sample().apply_committed(bad).err();
            assert!(
                err.as_ref().is_some_and(expected),
                "{what} on replay: {err:?}"
            );
        }
        sample()
            .apply_committed(good)
            .expect("the good purchase replays");
    }

    #[test]
    fn a_replayed_purchase_out_of_sequence_is_refused() {
        let (_, first) = sold_parts();
        let mut inv = sample();
        let mut skipped = first.clone();
        skipped.purchase_id = "p-00000002".into();
        let err = inv.apply_committed(skipped).err();
        assert!(
            matches!(
                err,
                Some(InconsistencyError::OutOfSequence {
                    seq: 2,
                    next: 1,
                    ..
                })
            ),
            "{err:?}"
        );
        inv.apply_committed(first.clone()).expect("in sequence");
        let mut again = first;
        again.tickets = vec![SoldTicket {
            id: 3,
            price_cents: 3000,
        }];
        again.quantity = Quantity::new(1).expect("valid");
        again.total_cents = 3000;
        let err = inv.apply_committed(again).err();
        assert!(
            matches!(err, Some(InconsistencyError::DuplicatePurchase(_))),
            "{err:?}"
        );
    }

    /// Reads every page of tickets with `filter`, `limit` at a time, checking each
    /// page's `next` is its last id.
    fn all_ticket_pages(inv: &Inventory, filter: &TicketFilter, limit: usize) -> Vec<Vec<u64>> {
        let mut pages = Vec::new();
        let mut after = None;
        loop {
            let page = inv.page_tickets(filter, after, limit);
            let ids: Vec<u64> = page.items.iter().map(|t| t.id).collect();
            pages.push(ids.clone());
            match page.next {
                Some(next) => {
                    assert_eq!(Some(&next), ids.last(), "next is the page's last id");
                    after = Some(next);
                }
                None => return pages,
            }
        }
    }

    #[test]
    fn ticket_pages_follow_each_other_and_the_last_has_no_next() {
        let inv = sample();
        let all = TicketFilter::default();
        assert_eq!(all_ticket_pages(&inv, &all, 3), [vec![1, 2, 3], vec![4]]);
        assert_eq!(all_ticket_pages(&inv, &all, 2), [vec![1, 2], vec![3, 4]]);
        assert_eq!(all_ticket_pages(&inv, &all, 10), [vec![1, 2, 3, 4]]);
        let page = inv.page_tickets(&all, Some(4), 5);
        assert!(page.items.is_empty());
        assert_eq!(page.next, None);
    }

    #[test]
    fn ticket_pages_apply_the_event_and_sold_filters() {
        let mut inv = sample();
        inv.purchase_tickets(&request("concert", 1), None, "n1")
            .expect("available");
        let concert = TicketFilter {
            event: Some(event("concert")),
            sold: None,
        };
        assert_eq!(all_ticket_pages(&inv, &concert, 2), [vec![1, 2], vec![3]]);
        let unsold_concert = TicketFilter {
            sold: Some(false),
            ..concert.clone()
        };
        assert_eq!(
            all_ticket_pages(&inv, &unsold_concert, 1),
            [vec![2], vec![3]]
        );
        let sold = TicketFilter {
            event: None,
            sold: Some(true),
        };
        assert_eq!(all_ticket_pages(&inv, &sold, 5), [vec![1]]);
        // An `after` that is no ticket's id starts at the next id above it.
        let page = inv.page_tickets(&concert, Some(1), 5);
        assert_eq!(page.items.iter().map(|t| t.id).collect::<Vec<_>>(), [2, 3]);
        let unknown = TicketFilter {
            event: Some(event("no-such-event")),
            sold: None,
        };
        assert!(inv.page_tickets(&unknown, None, 5).items.is_empty());
    }

    #[test]
    fn purchase_pages_are_in_commit_order_and_filter_by_event() {
        let mut inv = sample();
        for name in ["concert", "theater-show", "concert", "concert"] {
            inv.purchase_tickets(&request(name, 1), None, "n1")
                .expect("available");
        }
        let ids = |page: &Page<Purchase, String>| {
            page.items
                .iter()
                .map(|p| p.purchase_id.clone())
                .collect::<Vec<_>>()
        };
        let first = inv.page_purchases(None, None, 3);
        assert_eq!(ids(&first), ["p-00000001", "p-00000002", "p-00000003"]);
        assert_eq!(first.next.as_deref(), Some("p-00000003"));
        let after = first.next.as_deref().and_then(purchase_number);
        let second = inv.page_purchases(None, after, 3);
        assert_eq!(ids(&second), ["p-00000004"]);
        assert_eq!(second.next, None);

        let concert = event("concert");
        let page = inv.page_purchases(Some(&concert), Some(1), 1);
        assert_eq!(ids(&page), ["p-00000003"]);
        assert_eq!(page.next.as_deref(), Some("p-00000003"));
        let page = inv.page_purchases(Some(&concert), Some(3), 1);
        assert_eq!(ids(&page), ["p-00000004"]);
        assert_eq!(page.next, None);
    }

    #[test]
    fn a_purchase_number_is_read_only_from_p_and_digits() {
        assert_eq!(purchase_number("p-00000042"), Some(42));
        assert_eq!(purchase_number("p-7"), Some(7));
        for bad in ["p-", "p-x1", "q-1", "42", "p--1", "p-1 "] {
            assert_eq!(purchase_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn loaded_purchases_are_paged_by_event_like_new_ones() {
        let mut inv = sample();
        inv.purchase_tickets(&request("theater-show", 1), None, "n1")
            .expect("available");
        inv.purchase_tickets(&request("concert", 2), None, "n1")
            .expect("available");
        let loaded = Inventory::from_parts(
            inv.tickets().to_vec(),
            inv.purchases().to_vec(),
            inv.next_purchase_seq(),
        )
        .expect("consistent");
        let concert = event("concert");
        assert_eq!(
            loaded.page_purchases(Some(&concert), None, 5),
            inv.page_purchases(Some(&concert), None, 5)
        );
        assert_eq!(loaded.event(&concert), inv.event(&concert));
    }

    mod pages_property {
        use super::*;
        use proptest::prelude::*;

        const EVENTS: [&str; 3] = ["concert", "sports-game", "theater-show"];

        proptest! {
            /// Whatever the inventory, filter and page size, the pages read one after
            /// another are exactly the whole filtered list, and only the last has no next.
            #[test]
            fn pages_put_together_are_the_whole_list(
                events in proptest::collection::vec(0..3usize, 1..60),
                buys in proptest::collection::vec((0..3usize, 1..4u32), 0..12),
                event_filter in proptest::option::of(0..3usize),
                sold_filter in proptest::option::of(any::<bool>()),
                limit in 1..8usize,
            ) {
                let tickets = events
                    .iter()
                    .enumerate()
                    .map(|(i, &e)| ticket(i as u64 * 3 + 1, EVENTS[e], 100))
                    .collect();
                let mut inv = Inventory::from_tickets(tickets).expect("consistent");
                for (e, quantity) in buys {
                    let _ = inv.purchase_tickets(&request(EVENTS[e], quantity), None, "n1");
                }
                let filter = TicketFilter {
                    event: event_filter.map(|e| event(EVENTS[e])),
                    sold: sold_filter,
                };
                let mut paged = Vec::new();
                let mut after = None;
                loop {
                    let page = inv.page_tickets(&filter, after, limit);
                    prop_assert!(page.items.len() <= limit);
                    paged.extend(page.items);
                    match page.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                prop_assert_eq!(paged, inv.find_tickets(&filter));

                let event = filter.event.as_ref();
                let mut paged = Vec::new();
                let mut after = None;
                loop {
                    let page = inv.page_purchases(event, after, limit);
                    paged.extend(page.items);
                    match page.next {
                        Some(next) => after = purchase_number(&next),
                        None => break,
                    }
                }
                prop_assert_eq!(paged, inv.find_purchases(event));
            }
        }
    }
}
