//! Building an inventory from a snapshot's parts, replaying log entries (each checked
//! against the state first, so a bad log is refused, never half applied), and the state
//! changes both they and the decisions make.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::{
    CustomerIndex, EventIndex, InconsistencyError, Inventory, KeyUse, Parts, hold_sequence,
    sequence_of, state_name,
};
use crate::domain::{
    Change, CustomerId, EventName, EventSummary, Hold, HoldState, Purchase, SoldTicket, Ticket,
};
use crate::log::LogEntry;
use crate::secret::KeyHash;

impl Inventory {
    /// Builds an inventory from a snapshot's parts, refusing any state that breaks an
    /// invariant: a ticket in two live purchases or holds, a sold flag without a live
    /// purchase, numbers out of order, a confirmed hold without its purchase.
    pub fn restore(parts: Parts) -> Result<Self, InconsistencyError> {
        let Parts {
            mut tickets,
            purchases,
            holds,
            next_purchase_seq,
            next_hold_seq,
            limits,
            log_time,
        } = parts;
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
            holds: Vec::with_capacity(holds.len()),
            next_purchase_seq,
            next_hold_seq,
            log_time,
            ..Self::default()
        };
        inventory.index_events();
        for (event, limit) in limits {
            if !inventory.set_max_per_customer(&event, Some(limit)) {
                return Err(InconsistencyError::LimitOfUnknownEvent(event));
            }
        }
        inventory.restore_purchases(purchases)?;
        inventory.restore_holds(holds)?;
        for purchase in &inventory.purchases {
            if let Some(hold_id) = &purchase.hold_id {
                let confirmed = inventory.by_hold_id.get(hold_id).is_some_and(|&h| {
                    matches!(&inventory.holds[h].state,
                        HoldState::Confirmed { purchase_id, .. } if *purchase_id == purchase.purchase_id)
                });
                if !confirmed {
                    return Err(InconsistencyError::ConfirmMismatch {
                        purchase: purchase.purchase_id.clone(),
                        hold: hold_id.clone(),
                        what: "the hold is not confirmed as this purchase",
                    });
                }
            }
        }
        Ok(inventory)
    }

    fn restore_purchases(&mut self, purchases: Vec<Purchase>) -> Result<(), InconsistencyError> {
        let mut sold_by = HashSet::new();
        // Purchases are stored in commit order, so their numbers rise, and every one is
        // below the number the next sale gets: otherwise a sale would reuse an id.
        let mut last_seq = None;
        for purchase in purchases {
            if purchase.is_live() {
                for sold in &purchase.tickets {
                    let ticket =
                        self.ticket(sold.id)
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
                    if !sold_by.insert(sold.id) {
                        return Err(InconsistencyError::SoldTwice(sold.id));
                    }
                }
            }
            self.check_purchase(&purchase)?;
            let seq = sequence_of(&purchase)?;
            if let Some(last) = last_seq.filter(|&last| seq <= last) {
                return Err(InconsistencyError::OutOfSequence {
                    purchase: purchase.purchase_id,
                    seq,
                    next: last + 1,
                });
            }
            if seq >= self.next_purchase_seq {
                return Err(InconsistencyError::NextSeqTooLow {
                    purchase: purchase.purchase_id,
                    seq,
                    next: self.next_purchase_seq,
                });
            }
            // The same id twice has the same number twice, refused just above: no lookup.
            last_seq = Some(seq);
            self.log_time = self.log_time.max(purchase.created_at);
            if let Some(cancelled) = &purchase.cancelled {
                self.log_time = self.log_time.max(cancelled.at);
            }
            self.list_purchase(purchase);
        }
        self.by_purchase_id = ids_in_order(&self.purchases, |p| &p.purchase_id);
        if let Some(orphan) = self
            .tickets
            .iter()
            .find(|t| t.sold && !sold_by.contains(&t.id))
        {
            return Err(InconsistencyError::SoldWithoutPurchase(orphan.id));
        }
        Ok(())
    }

    fn restore_holds(&mut self, holds: Vec<Hold>) -> Result<(), InconsistencyError> {
        let mut last_seq = None;
        for hold in holds {
            self.check_hold(&hold)?;
            let seq = hold_sequence(&hold)?;
            // As for purchases: numbers rise, and stay below the next hold's.
            if last_seq.is_some_and(|last| seq <= last) || seq >= self.next_hold_seq {
                return Err(InconsistencyError::HoldOutOfSequence {
                    hold: hold.hold_id,
                    seq,
                    next: last_seq.map_or(1, |last: u64| last + 1),
                });
            }
            // The same id twice has the same number twice, refused just above: no lookup.
            last_seq = Some(seq);
            let index = self.holds.len();
            match &hold.state {
                HoldState::Held => {
                    self.check_free(&hold.hold_id, &hold.tickets)?;
                    for sold in &hold.tickets {
                        self.hold_ticket(sold.id, index);
                    }
                }
                HoldState::Confirmed { purchase_id, at } => {
                    self.log_time = self.log_time.max(*at);
                    let purchase = self.purchase(purchase_id).ok_or_else(|| {
                        InconsistencyError::UnknownPurchase {
                            entry: "confirmed hold",
                            purchase: purchase_id.clone(),
                        }
                    })?;
                    confirms(purchase, &hold)?;
                }
                HoldState::Released(change) => self.log_time = self.log_time.max(change.at),
                HoldState::Expired { at } => self.log_time = self.log_time.max(*at),
            }
            self.log_time = self.log_time.max(hold.created_at);
            self.list_hold(hold);
        }
        self.by_hold_id = ids_in_order(&self.holds, |h| &h.hold_id);
        self.by_key = first_uses(
            self.purchases
                .iter()
                .enumerate()
                .flat_map(|(index, purchase)| purchase_keys(purchase, index))
                .chain(
                    self.holds
                        .iter()
                        .enumerate()
                        .flat_map(|(index, hold)| hold_keys(hold, index)),
                ),
        );
        Ok(())
    }

    pub(super) fn index_events(&mut self) {
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
                        max_per_customer: None,
                    },
                    available: BTreeSet::new(),
                    tickets: Vec::new(),
                    purchases: Vec::new(),
                    holds: Vec::new(),
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

    /// Replays an entry committed elsewhere (read back from the store's log), refusing one
    /// that does not fit this state; a refused entry changes nothing.
    pub fn apply_entry(&mut self, entry: LogEntry) -> Result<(), InconsistencyError> {
        self.check_entry(&entry)?;
        self.commit(entry);
        Ok(())
    }

    /// Replays a purchase committed elsewhere: [`Inventory::apply_entry`] of a purchase.
    pub fn apply_committed(&mut self, purchase: Purchase) -> Result<(), InconsistencyError> {
        self.apply_entry(LogEntry::Purchase(purchase))
    }

    /// Whether this state already holds what `entry` records, as it was written (a
    /// purchase or hold may have changed since: a cancel, or a hold's end). For proving
    /// which log a snapshot was folded from.
    pub fn contains_entry(&self, entry: &LogEntry) -> bool {
        let hold = |id: &str| self.by_hold_id.get(id).map(|&i| &self.holds[i]);
        match entry {
            LogEntry::Purchase(p) => self.purchase(&p.purchase_id).is_some_and(|mine| {
                let mut as_written = mine.clone();
                as_written.cancelled = p.cancelled.clone();
                as_written == *p
            }),
            LogEntry::Hold(h) => hold(&h.hold_id).is_some_and(|mine| {
                let mut as_written = mine.clone();
                as_written.state = h.state.clone();
                as_written == *h
            }),
            LogEntry::Release { hold_id, at, key } => hold(hold_id)
                .is_some_and(|h| h.state == HoldState::Released(Change { at: *at, key: *key })),
            LogEntry::Expire { hold_id, at } => {
                hold(hold_id).is_some_and(|h| h.state == HoldState::Expired { at: *at })
            }
            LogEntry::Cancel {
                purchase_id,
                at,
                key,
            } => self
                .purchase(purchase_id)
                .is_some_and(|p| p.cancelled == Some(Change { at: *at, key: *key })),
        }
    }

    /// Whether `entry` fits this state as the next entry of the log.
    fn check_entry(&self, entry: &LogEntry) -> Result<(), InconsistencyError> {
        let kind = entry.kind();
        match entry {
            LogEntry::Purchase(purchase) => {
                if self.by_purchase_id.contains_key(&purchase.purchase_id) {
                    return Err(InconsistencyError::DuplicatePurchase(
                        purchase.purchase_id.clone(),
                    ));
                }
                if !purchase.is_live() {
                    return Err(InconsistencyError::AlreadyCancelled(
                        purchase.purchase_id.clone(),
                    ));
                }
                self.check_purchase(purchase)?;
                // Each sale takes the next number, so the log holds them with no gap or
                // repeat.
                let seq = sequence_of(purchase)?;
                if seq != self.next_purchase_seq {
                    return Err(InconsistencyError::OutOfSequence {
                        purchase: purchase.purchase_id.clone(),
                        seq,
                        next: self.next_purchase_seq,
                    });
                }
                match &purchase.hold_id {
                    Some(hold_id) => {
                        let hold = self.live_hold(kind, hold_id)?;
                        confirms(purchase, hold)
                    }
                    None => self.check_free(&purchase.purchase_id, &purchase.tickets),
                }
            }
            LogEntry::Hold(hold) => {
                if self.by_hold_id.contains_key(&hold.hold_id) {
                    return Err(InconsistencyError::DuplicateHold(hold.hold_id.clone()));
                }
                if hold.state != HoldState::Held {
                    return Err(InconsistencyError::HoldNotHeld {
                        entry: kind,
                        hold: hold.hold_id.clone(),
                        state: state_name(&hold.state),
                    });
                }
                self.check_hold(hold)?;
                let seq = hold_sequence(hold)?;
                if seq != self.next_hold_seq {
                    return Err(InconsistencyError::HoldOutOfSequence {
                        hold: hold.hold_id.clone(),
                        seq,
                        next: self.next_hold_seq,
                    });
                }
                self.check_free(&hold.hold_id, &hold.tickets)
            }
            LogEntry::Release { hold_id, .. } => self.live_hold(kind, hold_id).map(|_| ()),
            LogEntry::Expire { hold_id, at } => {
                let hold = self.live_hold(kind, hold_id)?;
                if *at < hold.expires_at {
                    return Err(InconsistencyError::ExpiredEarly {
                        hold: hold_id.clone(),
                        expires_at: hold.expires_at,
                        at: *at,
                    });
                }
                Ok(())
            }
            LogEntry::Cancel { purchase_id, .. } => match self.purchase(purchase_id) {
                None => Err(InconsistencyError::UnknownPurchase {
                    entry: kind,
                    purchase: purchase_id.clone(),
                }),
                Some(p) if !p.is_live() => {
                    Err(InconsistencyError::AlreadyCancelled(purchase_id.clone()))
                }
                Some(_) => Ok(()),
            },
        }
    }

    /// The hold `hold_id`, which an entry of `kind` changes: it must exist and be held.
    fn live_hold(&self, kind: &'static str, hold_id: &str) -> Result<&Hold, InconsistencyError> {
        let hold = self
            .by_hold_id
            .get(hold_id)
            .map(|&i| &self.holds[i])
            .ok_or_else(|| InconsistencyError::UnknownHold {
                entry: kind,
                hold: hold_id.to_owned(),
            })?;
        if hold.state != HoldState::Held {
            return Err(InconsistencyError::HoldNotHeld {
                entry: kind,
                hold: hold_id.to_owned(),
                state: state_name(&hold.state),
            });
        }
        Ok(hold)
    }

    /// Whether every ticket is neither sold nor held, and none is named twice.
    fn check_free(&self, owner: &str, tickets: &[SoldTicket]) -> Result<(), InconsistencyError> {
        for (i, sold) in tickets.iter().enumerate() {
            let ticket = self
                .ticket(sold.id)
                .ok_or_else(|| InconsistencyError::UnknownTicket {
                    purchase: owner.to_owned(),
                    ticket: sold.id,
                })?;
            if ticket.sold || tickets[..i].iter().any(|t| t.id == sold.id) {
                return Err(InconsistencyError::SoldTwice(sold.id));
            }
            if self.held_by.contains_key(&sold.id) {
                return Err(InconsistencyError::HeldTwice {
                    hold: owner.to_owned(),
                    ticket: sold.id,
                });
            }
        }
        Ok(())
    }

    /// Checks what a purchase says of itself against the tickets it names: as many
    /// tickets as its quantity, all of its event, each at the ticket's price, and a total
    /// that is their sum. Whether the tickets are free to sell is the caller's check.
    pub(super) fn check_purchase(&self, purchase: &Purchase) -> Result<(), InconsistencyError> {
        if purchase.tickets.len() != purchase.quantity.get() as usize {
            return Err(InconsistencyError::QuantityMismatch {
                purchase: purchase.purchase_id.clone(),
                quantity: purchase.quantity.get(),
                tickets: purchase.tickets.len(),
            });
        }
        self.check_tickets(
            &purchase.purchase_id,
            &purchase.event,
            &purchase.tickets,
            purchase.total_cents,
        )
    }

    /// As [`Inventory::check_purchase`], for a hold: 1 to 10 tickets, and an expiry after
    /// its making.
    fn check_hold(&self, hold: &Hold) -> Result<(), InconsistencyError> {
        if !(1..=crate::domain::MAX_QUANTITY as usize).contains(&hold.tickets.len()) {
            return Err(InconsistencyError::HoldSize {
                hold: hold.hold_id.clone(),
                tickets: hold.tickets.len(),
            });
        }
        if hold.expires_at <= hold.created_at {
            return Err(InconsistencyError::HoldTimes {
                hold: hold.hold_id.clone(),
                created_at: hold.created_at,
                expires_at: hold.expires_at,
            });
        }
        self.check_tickets(&hold.hold_id, &hold.event, &hold.tickets, hold.total_cents)
    }

    fn check_tickets(
        &self,
        owner: &str,
        event: &EventName,
        tickets: &[SoldTicket],
        total_cents: u64,
    ) -> Result<(), InconsistencyError> {
        let id = || owner.to_owned();
        let mut sum: u64 = 0;
        for sold in tickets {
            let ticket = self
                .ticket(sold.id)
                .ok_or_else(|| InconsistencyError::UnknownTicket {
                    purchase: id(),
                    ticket: sold.id,
                })?;
            if ticket.event != *event {
                return Err(InconsistencyError::WrongEvent {
                    purchase: id(),
                    event: event.clone(),
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
        if sum != total_cents {
            return Err(InconsistencyError::TotalMismatch {
                purchase: id(),
                total: total_cents,
                sum,
            });
        }
        Ok(())
    }

    /// Applies an entry known to fit (checked, or just decided): the one place the state
    /// changes after loading.
    pub(super) fn commit(&mut self, entry: LogEntry) {
        self.log_time = self.log_time.max(entry.at());
        match entry {
            LogEntry::Purchase(purchase) => {
                match purchase
                    .hold_id
                    .as_ref()
                    .and_then(|h| self.by_hold_id.get(h))
                {
                    Some(&hold) => {
                        let confirmed = HoldState::Confirmed {
                            purchase_id: purchase.purchase_id.clone(),
                            at: purchase.created_at,
                        };
                        self.end_hold(hold, confirmed, false);
                    }
                    None => {
                        for sold in &purchase.tickets {
                            self.take_available(sold.id);
                        }
                    }
                }
                for sold in &purchase.tickets {
                    self.set_sold(sold.id, true);
                }
                self.next_purchase_seq += 1;
                self.index_purchase(purchase);
            }
            LogEntry::Hold(hold) => {
                let index = self.holds.len();
                for sold in &hold.tickets {
                    self.take_available(sold.id);
                    self.hold_ticket(sold.id, index);
                }
                self.next_hold_seq += 1;
                self.index_hold(hold);
            }
            LogEntry::Release { hold_id, at, key } => {
                if let Some(&hold) = self.by_hold_id.get(&hold_id) {
                    self.end_hold(hold, HoldState::Released(Change { at, key }), true);
                    if let Some(key) = key {
                        self.by_key.entry(key).or_insert(KeyUse::Release(hold));
                    }
                }
            }
            LogEntry::Expire { hold_id, at } => {
                if let Some(&hold) = self.by_hold_id.get(&hold_id) {
                    self.end_hold(hold, HoldState::Expired { at }, true);
                }
            }
            LogEntry::Cancel {
                purchase_id,
                at,
                key,
            } => {
                if let Some(&index) = self.by_purchase_id.get(&purchase_id) {
                    let tickets: Vec<u64> =
                        self.purchases[index].tickets.iter().map(|t| t.id).collect();
                    for &id in &tickets {
                        self.set_sold(id, false);
                        self.put_available(id);
                    }
                    let purchase = &mut self.purchases[index];
                    purchase.cancelled = Some(Change { at, key });
                    let (event, customer) = (purchase.event.clone(), purchase.customer.clone());
                    self.count_live(customer.as_ref(), &event, tickets.len() as u64, false);
                    if let Some(key) = key {
                        self.by_key.entry(key).or_insert(KeyUse::Cancel(index));
                    }
                }
            }
        }
    }

    /// Ends a live hold: its tickets are no longer held, and, unless it was confirmed, on
    /// sale again.
    fn end_hold(&mut self, index: usize, state: HoldState, back_on_sale: bool) {
        let hold = &self.holds[index];
        self.expiring.remove(&(hold.expires_at, index));
        let tickets: Vec<u64> = hold.tickets.iter().map(|t| t.id).collect();
        let (event, customer) = (hold.event.clone(), hold.customer.clone());
        for &id in &tickets {
            self.unhold_ticket(id);
            if back_on_sale {
                self.put_available(id);
            }
        }
        self.count_live(customer.as_ref(), &event, tickets.len() as u64, false);
        self.holds[index].state = state;
    }

    /// Adds a purchase to the lists and indexes (its tickets are the caller's).
    fn index_purchase(&mut self, purchase: Purchase) {
        let index = self.purchases.len();
        self.by_purchase_id
            .insert(purchase.purchase_id.clone(), index);
        for (key, used) in purchase_keys(&purchase, index) {
            self.by_key.entry(key).or_insert(used);
        }
        self.list_purchase(purchase);
    }

    /// Adds a purchase to the lists and the indexes other than by id and by key.
    fn list_purchase(&mut self, purchase: Purchase) {
        let index = self.purchases.len();
        if let Some(event) = self.events.get_mut(&purchase.event) {
            event.purchases.push(index);
        }
        if let Some(customer) = &purchase.customer {
            self.customers
                .entry(customer.clone())
                .or_default()
                .purchases
                .push(index);
        }
        if purchase.is_live() {
            let count = purchase.tickets.len() as u64;
            self.count_live(purchase.customer.as_ref(), &purchase.event, count, true);
        }
        self.purchases.push(purchase);
    }

    /// Adds a hold to the lists and indexes (its tickets are the caller's).
    fn index_hold(&mut self, hold: Hold) {
        let index = self.holds.len();
        self.by_hold_id.insert(hold.hold_id.clone(), index);
        for (key, used) in hold_keys(&hold, index) {
            self.by_key.entry(key).or_insert(used);
        }
        self.list_hold(hold);
    }

    /// Adds a hold to the lists and the indexes other than by id and by key.
    fn list_hold(&mut self, hold: Hold) {
        let index = self.holds.len();
        if let Some(event) = self.events.get_mut(&hold.event) {
            event.holds.push(index);
        }
        if let Some(customer) = &hold.customer {
            self.customers
                .entry(customer.clone())
                .or_default()
                .holds
                .push(index);
        }
        if hold.state == HoldState::Held {
            self.expiring.insert((hold.expires_at, index));
            let count = hold.tickets.len() as u64;
            self.count_live(hold.customer.as_ref(), &hold.event, count, true);
        }
        self.holds.push(hold);
    }

    /// Adds (or takes away) `count` live tickets of `event` to a customer's tally.
    fn count_live(
        &mut self,
        customer: Option<&CustomerId>,
        event: &EventName,
        count: u64,
        add: bool,
    ) {
        let Some(customer) = customer else {
            return;
        };
        let index: &mut CustomerIndex = self.customers.entry(customer.clone()).or_default();
        let live = index.live.entry(event.clone()).or_insert(0);
        *live = if add {
            *live + count
        } else {
            live.saturating_sub(count)
        };
    }

    fn event_of_ticket(&mut self, id: u64) -> Option<(&mut Ticket, Option<&mut EventIndex>)> {
        let position = self.tickets.binary_search_by_key(&id, |t| t.id).ok()?;
        let ticket = &mut self.tickets[position];
        let index = self.events.get_mut(&ticket.event);
        Some((ticket, index))
    }

    /// Takes a ticket out of the available set (for a sale or a hold).
    fn take_available(&mut self, id: u64) {
        if let Some((_, Some(index))) = self.event_of_ticket(id)
            && index.available.remove(&id)
        {
            index.summary.available -= 1;
        }
    }

    /// Puts a ticket back on sale.
    fn put_available(&mut self, id: u64) {
        if let Some((_, Some(index))) = self.event_of_ticket(id)
            && index.available.insert(id)
        {
            index.summary.available += 1;
        }
    }

    fn set_sold(&mut self, id: u64, sold: bool) {
        if let Some((ticket, index)) = self.event_of_ticket(id)
            && ticket.sold != sold
        {
            ticket.sold = sold;
            if let Some(index) = index {
                if sold {
                    index.summary.sold += 1;
                } else {
                    index.summary.sold -= 1;
                }
            }
        }
    }

    fn hold_ticket(&mut self, id: u64, hold: usize) {
        if let Some((_, Some(index))) = self.event_of_ticket(id) {
            if index.available.remove(&id) {
                index.summary.available -= 1;
            }
            index.summary.held += 1;
            self.held_by.insert(id, hold);
        }
    }

    fn unhold_ticket(&mut self, id: u64) {
        if self.held_by.remove(&id).is_some()
            && let Some((_, Some(index))) = self.event_of_ticket(id)
        {
            index.summary.held -= 1;
        }
    }
}

/// Whether `purchase` is the confirmation of `hold`: the same event, tickets and customer.
fn confirms(purchase: &Purchase, hold: &Hold) -> Result<(), InconsistencyError> {
    let what = if purchase.event != hold.event {
        "event"
    } else if purchase.tickets != hold.tickets {
        "tickets"
    } else if purchase.customer != hold.customer {
        "customer"
    } else if purchase.hold_id.as_deref() != Some(hold.hold_id.as_str()) {
        "hold id"
    } else {
        return Ok(());
    };
    Err(InconsistencyError::ConfirmMismatch {
        purchase: purchase.purchase_id.clone(),
        hold: hold.hold_id.clone(),
        what,
    })
}

/// The keys a purchase used, and for what: buying it, and cancelling it.
fn purchase_keys(purchase: &Purchase, index: usize) -> impl Iterator<Item = (KeyHash, KeyUse)> {
    let cancelled = purchase.cancelled.as_ref().and_then(|c| c.key);
    key_uses([
        (purchase.access.key, KeyUse::Purchase(index)),
        (cancelled, KeyUse::Cancel(index)),
    ])
}

/// The keys a hold used, and for what: taking it, and releasing it.
fn hold_keys(hold: &Hold, index: usize) -> impl Iterator<Item = (KeyHash, KeyUse)> {
    let released = match &hold.state {
        HoldState::Released(Change { key: Some(key), .. }) => Some(*key),
        _ => None,
    };
    key_uses([
        (hold.access.key, KeyUse::Hold(index)),
        (released, KeyUse::Release(index)),
    ])
}

/// The uses that had a key, in order.
fn key_uses(uses: [(Option<KeyHash>, KeyUse); 2]) -> impl Iterator<Item = (KeyHash, KeyUse)> {
    uses.into_iter()
        .filter_map(|(key, used)| key.map(|key| (key, used)))
}

// A restored state's indexes are built in bulk from sorted runs, not entry by entry: on a
// million-ticket store, inserting each random key into the B-tree on its own was most of
// the time the B-trees added to a node's start.

/// Id to position, for items whose ids are distinct (their numbers rise).
fn ids_in_order<T>(items: &[T], id: impl Fn(&T) -> &String) -> BTreeMap<String, usize> {
    items
        .iter()
        .enumerate()
        .map(|(index, item)| (id(item).clone(), index))
        .collect()
}

/// Each key's first use, as applying the entries one by one (`or_insert`) keeps it.
fn first_uses(uses: impl Iterator<Item = (KeyHash, KeyUse)>) -> BTreeMap<KeyHash, KeyUse> {
    let mut uses: Vec<_> = uses.collect();
    // Stable: of equal keys, the first used stays first, and dedup keeps it.
    uses.sort_by_key(|&(key, _)| key);
    uses.dedup_by_key(|&mut (key, _)| key);
    uses.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::command::{Command, HoldRequest, Order, Proof, SaleRequest};
    use crate::domain::{Quantity, Selection, Timestamp, Ttl};

    fn concert() -> EventName {
        EventName::parse("concert").expect("valid")
    }

    fn inventory() -> Inventory {
        let tickets = (1..=4)
            .map(|id| Ticket {
                id,
                event: concert(),
                price_cents: 100,
                sold: false,
            })
            .collect();
        Inventory::from_tickets(tickets).expect("consistent")
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    fn sale(n: u32) -> SaleRequest {
        SaleRequest {
            event: concert(),
            selection: Selection::Quantity(Quantity::new(n).expect("valid")),
            customer: None,
        }
    }

    /// Decides `command` (as the operator) at `seconds` and returns what it logged.
    fn logged(inv: &mut Inventory, command: Command, seconds: u64) -> Vec<LogEntry> {
        let mut log = Vec::new();
        let order = Order::new(command).with_proof(Proof::operator());
        inv.decide(&order, "n1", at(seconds), &mut log)
            .expect("decided");
        log
    }

    fn hold_of(n: u32, ttl: u32) -> Command {
        Command::Hold(HoldRequest {
            sale: sale(n),
            ttl: Ttl::new(ttl).expect("valid"),
        })
    }

    #[test]
    fn entries_that_do_not_fit_are_refused_and_change_nothing() {
        let mut decided = inventory();
        let hold = logged(&mut decided, hold_of(2, 10), 0).remove(0);
        let LogEntry::Hold(h) = hold.clone() else {
            panic!("a hold entry");
        };
        let mut replayed = inventory();
        replayed.apply_entry(hold.clone()).expect("fits");
        let expire_early = LogEntry::Expire {
            hold_id: h.hold_id.clone(),
            at: Timestamp::from_system(at(9)),
        };
        let sell_held = logged(&mut inventory(), Command::Purchase(sale(1)), 1).remove(0);
        let cases = [
            (expire_early, "expires at"),
            (hold.clone(), "appears more than once"),
            (sell_held, "held by"),
            (
                LogEntry::Cancel {
                    purchase_id: "p-00000001".into(),
                    at: Timestamp::from_system(at(1)),
                    key: None,
                },
                "names purchase p-00000001",
            ),
            (
                LogEntry::Release {
                    hold_id: "h-00000002".into(),
                    at: Timestamp::from_system(at(1)),
                    key: None,
                },
                "names hold h-00000002",
            ),
        ];
        for (entry, expected) in cases {
            let before = (replayed.tickets().to_vec(), replayed.holds().to_vec());
            let err = replayed.apply_entry(entry).expect_err("refused");
            assert!(
                err.to_string().contains(expected),
                "{err} lacks {expected:?}"
            );
            assert_eq!(
                before,
                (replayed.tickets().to_vec(), replayed.holds().to_vec())
            );
        }
        // Released, the hold can be neither released nor confirmed again.
        let release = logged(
            &mut decided,
            Command::Release {
                hold_id: h.hold_id.clone(),
            },
            1,
        );
        replayed.apply_entry(release[0].clone()).expect("fits");
        let err = replayed
            .apply_entry(release[0].clone())
            .expect_err("released twice");
        assert!(err.to_string().contains("released, not held"), "{err}");
        let purchase = Purchase {
            purchase_id: "p-00000001".into(),
            event: concert(),
            quantity: Quantity::new(2).expect("valid"),
            tickets: h.tickets.clone(),
            total_cents: h.total_cents,
            node: "n1".into(),
            created_at: Timestamp::from_system(at(2)),
            customer: None,
            seats: false,
            hold_id: Some(h.hold_id.clone()),
            cancelled: None,
            access: h.access.clone(),
        };
        let err = replayed
            .apply_entry(LogEntry::Purchase(purchase))
            .expect_err("a released hold is never confirmed");
        assert!(err.to_string().contains("released, not held"), "{err}");
    }

    #[test]
    fn a_stored_state_with_a_ticket_held_twice_or_a_confirm_without_its_purchase_is_refused() {
        let mut inv = inventory();
        logged(&mut inv, hold_of(1, 60), 0);
        let mut twice = inv.parts();
        let mut second = twice.holds[0].clone();
        second.hold_id = "h-00000002".into();
        twice.holds.push(second);
        twice.next_hold_seq = 3;
        let err = Inventory::restore(twice).expect_err("held twice");
        assert!(
            matches!(err, InconsistencyError::HeldTwice { ticket: 1, .. }),
            "{err}"
        );

        logged(
            &mut inv,
            Command::Confirm {
                hold_id: "h-00000001".into(),
            },
            1,
        );
        let restored = Inventory::restore(inv.parts()).expect("consistent");
        assert_eq!(restored.holds(), inv.holds());
        let mut orphan = inv.parts();
        orphan.purchases.clear();
        orphan.tickets.iter_mut().for_each(|t| t.sold = false);
        let err = Inventory::restore(orphan).expect_err("the confirm's purchase is missing");
        assert!(err.to_string().contains("p-00000001"), "{err}");
    }
}
