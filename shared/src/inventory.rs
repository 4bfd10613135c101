//! The inventory as one consistent state: tickets, committed purchases and holds, the
//! queries the API answers, and (in `decide`) the all-or-nothing decisions of every order
//! and the replay of the log entries they produce. Pure logic, no I/O.
//!
//! Time: the state is the log's, up to the latest time in it (`log_time`). A hold still
//! held past its expiry at that time is expired by the next decision, which logs it; reads
//! meanwhile show it expired as of `max(now, log_time)` without changing anything, so counts
//! are right the moment a hold expires with no sweeper.

mod apply;
mod decide;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::SystemTime;

use thiserror::Error;

use crate::command::DecisionError;
use crate::domain::{
    CustomerId, EventName, EventSummary, Hold, HoldState, HoldStatus, HoldView, Purchase, Ticket,
    TicketStatus, Timestamp,
};
use crate::secret::KeyHash;

/// Why a purchase was refused: the refusals of every order ([`DecisionError`]), under the
/// name the purchase-only callers know.
pub type PurchaseError = DecisionError;

/// Why a stored state or a log entry is not a valid inventory.
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
    #[error("ticket {ticket} is held by {hold} and also sold or held by another")]
    HeldTwice { hold: String, ticket: u64 },
    #[error("hold id {0} appears more than once")]
    DuplicateHold(String),
    #[error("hold id {0:?} is not of the form h-<number>")]
    UnnumberedHold(String),
    #[error(
        "hold {hold} is numbered {seq}, but the next number is {next}: a hold is missing, repeated or out of order, or next_hold_seq is wrong"
    )]
    HoldOutOfSequence { hold: String, seq: u64, next: u64 },
    #[error("hold {hold} holds {tickets} tickets; a hold holds 1 to 10")]
    HoldSize { hold: String, tickets: usize },
    #[error("hold {hold} expires at {expires_at}, not after it was made at {created_at}")]
    HoldTimes {
        hold: String,
        created_at: Timestamp,
        expires_at: Timestamp,
    },
    #[error("a log entry ({entry}) names hold {hold}, which is not in the inventory")]
    UnknownHold { entry: &'static str, hold: String },
    #[error("a log entry ({entry}) names purchase {purchase}, which is not in the inventory")]
    UnknownPurchase {
        entry: &'static str,
        purchase: String,
    },
    #[error("a log entry ({entry}) changes hold {hold}, which is {state}, not held")]
    HoldNotHeld {
        entry: &'static str,
        hold: String,
        state: &'static str,
    },
    #[error("hold {hold} expires at {expires_at}; the log expires it earlier, at {at}")]
    ExpiredEarly {
        hold: String,
        expires_at: Timestamp,
        at: Timestamp,
    },
    #[error("purchase {purchase} confirms hold {hold} but differs from it ({what})")]
    ConfirmMismatch {
        purchase: String,
        hold: String,
        what: &'static str,
    },
    #[error("purchase {0} is cancelled already, or was logged cancelled")]
    AlreadyCancelled(String),
    #[error("a per-customer limit names {0}, which is no event of the inventory")]
    LimitOfUnknownEvent(EventName),
}

/// Filters of `GET /tickets`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TicketFilter {
    pub event: Option<EventName>,
    pub sold: Option<bool>,
}

/// Filters of `GET /purchases` and of `GET /holds`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFilter {
    pub event: Option<EventName>,
    pub customer: Option<CustomerId>,
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

/// What a purchase attempt produced (the purchase-only calls; orders answer
/// [`crate::Outcome`]).
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

/// Everything a snapshot holds, to build an inventory from ([`Inventory::restore`]).
#[derive(Debug, Clone, Default)]
pub struct Parts {
    pub tickets: Vec<Ticket>,
    /// In log order.
    pub purchases: Vec<Purchase>,
    /// In log order.
    pub holds: Vec<Hold>,
    pub next_purchase_seq: u64,
    pub next_hold_seq: u64,
    /// Per-customer limits by event.
    pub limits: BTreeMap<EventName, u32>,
    /// The latest time in the log the snapshot was folded from (entries' own times count
    /// too, so an older snapshot without it loses nothing).
    pub log_time: Timestamp,
}

/// Every ticket, purchase and hold, checked consistent when built and kept consistent by
/// every change.
///
/// The indexes that grow with the log (by purchase, hold, key, held ticket and customer)
/// are B-trees, not hash maps: a hash map grows by rehashing every entry at once, and on a
/// million-ticket store that stopped every node together (each applies every entry) for
/// 175 to 225 ms each time a map doubled, around 229,000 purchases; a B-tree grows a node
/// at a time.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Sorted by id, so listings come out in order without sorting per request.
    tickets: Vec<Ticket>,
    /// In commit order, which is the order `GET /purchases` returns.
    purchases: Vec<Purchase>,
    /// In commit order, which is the order `GET /holds` returns.
    holds: Vec<Hold>,
    /// The sequence number the next purchase id is made from.
    next_purchase_seq: u64,
    /// The sequence number the next hold id is made from.
    next_hold_seq: u64,
    /// Purchase id to its index in `purchases`.
    by_purchase_id: BTreeMap<String, usize>,
    /// Hold id to its index in `holds`.
    by_hold_id: BTreeMap<String, usize>,
    /// The hash of each idempotency key to what it did.
    by_key: BTreeMap<KeyHash, KeyUse>,
    /// Per event, its running summary and its available ticket ids, so a sale and the
    /// event listing cost the same whatever the inventory's size.
    events: BTreeMap<EventName, EventIndex>,
    /// Ticket id to the index of the live hold holding it.
    held_by: BTreeMap<u64, usize>,
    /// Live holds by expiry, so the due ones are found without a scan.
    expiring: BTreeSet<(Timestamp, usize)>,
    /// Per customer: their purchases and holds, and their live tickets per event.
    customers: BTreeMap<CustomerId, CustomerIndex>,
    /// The latest time in the log.
    log_time: Timestamp,
}

#[derive(Debug, Clone)]
struct EventIndex {
    summary: EventSummary,
    /// Ticket ids neither sold nor held.
    available: BTreeSet<u64>,
    /// Positions in `Inventory::tickets` of this event's tickets, ascending, so a page of
    /// one event's tickets starts by binary search instead of a scan of every ticket.
    tickets: Vec<usize>,
    /// Positions in `Inventory::purchases` of this event's purchases, in commit order, for
    /// the same reason.
    purchases: Vec<usize>,
    /// Positions in `Inventory::holds` of this event's holds, in commit order.
    holds: Vec<usize>,
}

#[derive(Debug, Clone, Default)]
struct CustomerIndex {
    /// Positions in `Inventory::purchases`, in commit order.
    purchases: Vec<usize>,
    /// Positions in `Inventory::holds`, in commit order.
    holds: Vec<usize>,
    /// Tickets in live purchases and live holds, per event: what the limit counts.
    live: HashMap<EventName, u64>,
}

/// What an idempotency key did, to answer a repeat or refuse a reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyUse {
    /// Made the purchase at this index (a sale, or a confirm when it has a `hold_id`).
    Purchase(usize),
    /// Made the hold at this index.
    Hold(usize),
    /// Released the hold at this index.
    Release(usize),
    /// Cancelled the purchase at this index.
    Cancel(usize),
}

/// Two inventories are equal when everything they show is: their tickets, purchases and
/// holds, event summaries and limits, log time and next numbers (not how they index them).
impl PartialEq for Inventory {
    fn eq(&self, other: &Self) -> bool {
        self.tickets == other.tickets
            && self.purchases == other.purchases
            && self.holds == other.holds
            && self.events() == other.events()
            && self.limits() == other.limits()
            && self.log_time == other.log_time
            && self.next_purchase_seq == other.next_purchase_seq
            && self.next_hold_seq == other.next_hold_seq
    }
}

impl Eq for Inventory {}

impl Inventory {
    /// Builds an inventory of unsold tickets.
    pub fn from_tickets(tickets: Vec<Ticket>) -> Result<Self, InconsistencyError> {
        Self::from_parts(tickets, Vec::new(), 1)
    }

    /// Builds an inventory from the parts of a store written before holds, refusing any
    /// state that breaks an invariant.
    pub fn from_parts(
        tickets: Vec<Ticket>,
        purchases: Vec<Purchase>,
        next_purchase_seq: u64,
    ) -> Result<Self, InconsistencyError> {
        Self::restore(Parts {
            tickets,
            purchases,
            next_purchase_seq,
            next_hold_seq: 1,
            ..Parts::default()
        })
    }

    /// The parts [`Inventory::restore`] rebuilds this inventory from, copied: for tests
    /// that restore a state or damage one before restoring it.
    #[cfg(test)]
    pub(crate) fn parts(&self) -> Parts {
        Parts {
            tickets: self.tickets().to_vec(),
            purchases: self.purchases().to_vec(),
            holds: self.holds().to_vec(),
            next_purchase_seq: self.next_purchase_seq(),
            next_hold_seq: self.next_hold_seq(),
            limits: self.limits(),
            log_time: self.log_time(),
        }
    }

    /// Sets the per-customer limit of `event` (`None` removes it); false when there is no
    /// such event. For seeding: a limit is part of the snapshot, not of the log.
    pub fn set_max_per_customer(&mut self, event: &EventName, limit: Option<u32>) -> bool {
        match self.events.get_mut(event) {
            Some(index) => {
                index.summary.max_per_customer = limit;
                true
            }
            None => false,
        }
    }

    pub fn tickets(&self) -> &[Ticket] {
        &self.tickets
    }

    /// Every purchase, cancelled ones included, in commit order.
    pub fn purchases(&self) -> &[Purchase] {
        &self.purchases
    }

    /// Every hold, whatever became of it, in commit order (states as the log says; see
    /// [`Inventory::hold`] for the status at a time).
    pub fn holds(&self) -> &[Hold] {
        &self.holds
    }

    pub fn next_purchase_seq(&self) -> u64 {
        self.next_purchase_seq
    }

    pub fn next_hold_seq(&self) -> u64 {
        self.next_hold_seq
    }

    /// The latest time in the log: no decision is made at an earlier time.
    pub fn log_time(&self) -> Timestamp {
        self.log_time
    }

    /// The per-customer limits, by event.
    pub fn limits(&self) -> BTreeMap<EventName, u32> {
        self.events
            .iter()
            .filter_map(|(name, i)| i.summary.max_per_customer.map(|l| (name.clone(), l)))
            .collect()
    }

    /// The time a decision or read at the node's `now` is made at: the later of `now` and
    /// the latest time in the log, so it never goes back along the log.
    pub fn effective_time(&self, now: SystemTime) -> Timestamp {
        Timestamp::from_system(now).max(self.log_time)
    }

    pub fn ticket(&self, id: u64) -> Option<&Ticket> {
        self.position(id).map(|i| &self.tickets[i])
    }

    fn position(&self, id: u64) -> Option<usize> {
        self.tickets.binary_search_by_key(&id, |t| t.id).ok()
    }

    /// A ticket's status at `now`: held only by a hold not yet expired then.
    pub fn ticket_status(&self, ticket: &Ticket, now: SystemTime) -> TicketStatus {
        if ticket.sold {
            return TicketStatus::Sold;
        }
        let at = self.effective_time(now);
        match self.held_by.get(&ticket.id) {
            Some(&hold) if self.holds[hold].expires_at > at => TicketStatus::Held,
            _ => TicketStatus::Available,
        }
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
        let filter = OrderFilter {
            event: event.cloned(),
            customer: None,
        };
        self.page_purchases_by(&filter, after, limit)
    }

    /// A page of the purchases matching `filter`, in commit order, after the purchase
    /// numbered `after`. With a customer it walks that customer's purchases only.
    pub fn page_purchases_by(
        &self,
        filter: &OrderFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Page<Purchase, String> {
        let after = after.unwrap_or(0);
        let positions = self.listed_positions(
            filter.customer.as_ref(),
            filter.event.as_ref(),
            |c| &c.purchases[..],
            |i| &i.purchases[..],
        );
        page_in_commit_order(
            &self.purchases,
            positions,
            |p| sequence_of(p).is_ok_and(|seq| seq <= after),
            |p| filter.event.as_ref().is_none_or(|e| &p.event == e),
            limit,
            |p| p.purchase_id.clone(),
        )
    }

    /// Where a listing by `customer` or `event` walks: the customer's positions when it has
    /// one (its event is filtered afterwards), else the event's, else `None` for all.
    fn listed_positions(
        &self,
        customer: Option<&CustomerId>,
        event: Option<&EventName>,
        of_customer: fn(&CustomerIndex) -> &[usize],
        of_event: fn(&EventIndex) -> &[usize],
    ) -> Option<&[usize]> {
        match (customer, event) {
            (Some(customer), _) => Some(self.customers.get(customer).map_or(&[], of_customer)),
            (None, Some(event)) => Some(self.events.get(event).map_or(&[], of_event)),
            (None, None) => None,
        }
    }

    /// One summary per event, sorted by event name, as of the latest time in the log (see
    /// [`Inventory::events_at`] for the counts at a node's clock).
    pub fn events(&self) -> Vec<EventSummary> {
        self.events.values().map(|i| i.summary.clone()).collect()
    }

    pub fn event(&self, event: &EventName) -> Option<EventSummary> {
        self.events.get(event).map(|i| i.summary.clone())
    }

    /// One summary per event at `now`: holds expired by then count as available. Costs
    /// the number of events, plus the holds that expired since the last decision.
    pub fn events_at(&self, now: SystemTime) -> Vec<EventSummary> {
        let mut summaries = self.events();
        for hold in self.due(now) {
            if let Ok(i) = summaries.binary_search_by(|s| s.event.cmp(&hold.event)) {
                release_counts(&mut summaries[i], hold.tickets.len() as u64);
            }
        }
        summaries
    }

    /// One event's summary at `now` (see [`Inventory::events_at`]).
    pub fn event_at(&self, event: &EventName, now: SystemTime) -> Option<EventSummary> {
        let mut summary = self.event(event)?;
        for hold in self.due(now).filter(|h| &h.event == event) {
            release_counts(&mut summary, hold.tickets.len() as u64);
        }
        Some(summary)
    }

    /// Live holds (as the log says) that have expired by `now`.
    fn due(&self, now: SystemTime) -> impl Iterator<Item = &Hold> {
        let at = self.effective_time(now);
        self.expiring
            .range(..=(at, usize::MAX))
            .map(|&(_, i)| &self.holds[i])
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

    /// The purchases matching `filter`, in commit order.
    pub fn find_purchases_by(&self, filter: &OrderFilter) -> Vec<Purchase> {
        every_page(
            |after| self.page_purchases_by(filter, after, MAX_PAGE_LIMIT),
            purchase_number,
        )
    }

    /// A hold with its status at `now`: still held past its expiry, it shows expired.
    pub fn hold(&self, hold_id: &str, now: SystemTime) -> Option<HoldView> {
        let at = self.effective_time(now);
        self.by_hold_id
            .get(hold_id)
            .map(|&i| view_of(&self.holds[i], at))
    }

    /// A page of the holds matching `filter` with their status at `now`, in commit order,
    /// after the hold numbered `after` (see [`hold_number`]).
    pub fn page_holds(
        &self,
        filter: &OrderFilter,
        after: Option<u64>,
        limit: usize,
        now: SystemTime,
    ) -> Page<HoldView, String> {
        let at = self.effective_time(now);
        let after = after.unwrap_or(0);
        let positions = self.listed_positions(
            filter.customer.as_ref(),
            filter.event.as_ref(),
            |c| &c.holds[..],
            |i| &i.holds[..],
        );
        page_in_commit_order(
            &self.holds,
            positions,
            |h| hold_sequence(h).is_ok_and(|seq| seq <= after),
            |h| filter.event.as_ref().is_none_or(|e| &h.event == e),
            limit,
            |h| h.hold_id.clone(),
        )
        .map(|h| view_of(&h, at))
    }

    /// The holds matching `filter` with their status at `now`, in commit order.
    pub fn find_holds(&self, filter: &OrderFilter, now: SystemTime) -> Vec<HoldView> {
        every_page(
            |after| self.page_holds(filter, after, MAX_PAGE_LIMIT, now),
            hold_number,
        )
    }

    /// How many tickets of `event` the customer has in live purchases and holds at `now`
    /// (what the per-customer limit counts).
    pub fn customer_tickets(
        &self,
        event: &EventName,
        customer: &CustomerId,
        now: SystemTime,
    ) -> u64 {
        let live = self
            .customers
            .get(customer)
            .and_then(|c| c.live.get(event))
            .copied()
            .unwrap_or(0);
        let expired: u64 = self
            .due(now)
            .filter(|h| &h.event == event && h.customer.as_ref() == Some(customer))
            .map(|h| h.tickets.len() as u64)
            .sum();
        live - expired.min(live)
    }
}

/// Moves `count` held tickets back to available in a summary.
/// A page of `items`, held in commit order, after the last one `at_or_before` accepts
/// (numbers rise in commit order, so it is found by binary search): with `positions` (an
/// index's, in commit order) those of them `keep` accepts, else any of all `items`.
fn page_in_commit_order<T: Clone>(
    items: &[T],
    positions: Option<&[usize]>,
    at_or_before: impl Fn(&T) -> bool,
    keep: impl Fn(&&T) -> bool,
    limit: usize,
    key: impl Fn(&T) -> String,
) -> Page<T, String> {
    let Some(positions) = positions else {
        let start = items.partition_point(at_or_before);
        return Page::take(items[start..].iter(), limit, key);
    };
    let start = positions.partition_point(|&p| at_or_before(&items[p]));
    let found = positions[start..].iter().map(|&p| &items[p]);
    Page::take(found.filter(keep), limit, key)
}

/// Every item of a listing, read page by page from the start with `page`; `number` reads a
/// page's `next` key back as the `after` of the page that follows.
fn every_page<T>(
    mut page: impl FnMut(Option<u64>) -> Page<T, String>,
    number: impl Fn(&str) -> Option<u64>,
) -> Vec<T> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = page(after);
        all.extend(page.items);
        match page.next.as_deref().and_then(&number) {
            Some(next) => after = Some(next),
            None => return all,
        }
    }
}

fn release_counts(summary: &mut EventSummary, count: u64) {
    summary.held = summary.held.saturating_sub(count);
    summary.available += count;
}

/// A hold with its status at `at`.
fn view_of(hold: &Hold, at: Timestamp) -> HoldView {
    let status = match &hold.state {
        HoldState::Held if hold.expires_at <= at => HoldStatus::Expired,
        HoldState::Held => HoldStatus::Held,
        HoldState::Confirmed { purchase_id, .. } => HoldStatus::Confirmed {
            purchase_id: purchase_id.clone(),
        },
        HoldState::Released(_) => HoldStatus::Released,
        HoldState::Expired { .. } => HoldStatus::Expired,
    };
    HoldView {
        hold: hold.clone(),
        status,
    }
}

/// A state's name, for messages.
fn state_name(state: &HoldState) -> &'static str {
    match state {
        HoldState::Held => "held",
        HoldState::Confirmed { .. } => "confirmed",
        HoldState::Released(_) => "released",
        HoldState::Expired { .. } => "expired",
    }
}

/// The id of the purchase numbered `seq`.
fn purchase_id(seq: u64) -> String {
    format!("p-{seq:08}")
}

/// The id of the hold numbered `seq`.
fn hold_id(seq: u64) -> String {
    format!("h-{seq:08}")
}

/// The number in a purchase id of the form `p-<number>`, as paging's `after` takes it.
pub fn purchase_number(purchase_id: &str) -> Option<u64> {
    number_after(purchase_id, "p-")
}

/// The number in a hold id of the form `h-<number>`, as paging's `after` takes it.
pub fn hold_number(hold_id: &str) -> Option<u64> {
    number_after(hold_id, "h-")
}

fn number_after(id: &str, prefix: &str) -> Option<u64> {
    id.strip_prefix(prefix)
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse().ok())
}

/// The number in a purchase's id, `p-<number>`.
fn sequence_of(purchase: &Purchase) -> Result<u64, InconsistencyError> {
    purchase_number(&purchase.purchase_id)
        .ok_or_else(|| InconsistencyError::UnnumberedPurchase(purchase.purchase_id.clone()))
}

/// The number in a hold's id, `h-<number>`.
fn hold_sequence(hold: &Hold) -> Result<u64, InconsistencyError> {
    hold_number(&hold.hold_id)
        .ok_or_else(|| InconsistencyError::UnnumberedHold(hold.hold_id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{IdempotencyKey, PurchaseRequest, Quantity, SoldTicket};

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
        assert!(
            matches!(&err, PurchaseError::KeyReused { earlier } if earlier == "purchase of concert x 1"),
            "{err:?}"
        );
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
