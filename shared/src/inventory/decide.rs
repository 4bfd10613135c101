//! The decisions: each order decided against the current state at one time, all or
//! nothing, each change made through the same `commit` the log's replay uses and handed
//! back as the log entries to append. Every decision costs what its request names (a few
//! map look-ups per ticket), whatever the inventory's size.

use std::time::SystemTime;

use super::{Inventory, KeyUse, PurchaseOutcome, hold_id, purchase_id, view_of};
use crate::command::{
    Command, Decided, DecisionError, HoldRequest, Order, Outcome, Proof, SaleRequest,
};
use crate::domain::{
    Access, CustomerId, EventName, Hold, HoldState, IdempotencyKey, Purchase, PurchaseRequest,
    Quantity, Selection, SoldTicket, Timestamp,
};
use crate::log::LogEntry;
use crate::secret::{KeyHash, Salt, Secret, derive_secret};

impl Inventory {
    /// Decides one order at the node's clock `now` and applies it. The decision's time is
    /// the later of `now` and the latest time in the log. Holds expired by then are expired
    /// first, in the log too. Every change made is appended to `log`, in order: those are
    /// the entries to make durable before answering (also when the order itself is
    /// refused, when expiries were found).
    pub fn decide(
        &mut self,
        order: &Order,
        node: &str,
        now: SystemTime,
        log: &mut Vec<LogEntry>,
    ) -> Result<Outcome, DecisionError> {
        let at = self.effective_time(now);
        self.expire_due(at, log);
        let mut fresh_key = None;
        if let Some(key) = &order.key {
            let hash = KeyHash::of(key.as_str());
            match self.by_key.get(&hash).copied() {
                Some(used) => {
                    if let Some(answer) = self.repeat(used, order, key, at) {
                        return answer;
                    }
                }
                None => fresh_key = Some(hash),
            }
        }
        let proof = &order.proof;
        match &order.command {
            Command::Purchase(sale) => self
                .sell(sale, order.key.as_ref(), node, at, log)
                .map(Outcome::Purchase),
            Command::Hold(request) => self
                .make_hold(request, order.key.as_ref(), node, at, log)
                .map(Outcome::Hold),
            Command::Confirm { hold_id } => self
                .confirm(hold_id, proof, fresh_key, node, at, log)
                .map(Outcome::Purchase),
            Command::Release { hold_id } => self
                .release(hold_id, proof, fresh_key, at, log)
                .map(Outcome::Hold),
            Command::Cancel { purchase_id } => self
                .cancel(purchase_id, proof, fresh_key, at, log)
                .map(Outcome::Purchase),
        }
    }

    /// Sells `request.quantity` tickets of the event, all or none, or replays the earlier
    /// outcome of the same idempotency key, deciding at `request.requested_at`. Takes the
    /// lowest-numbered available tickets. The purchase-only form of [`Inventory::decide`],
    /// for callers that keep no log (tests, fakes).
    pub fn purchase_tickets(
        &mut self,
        request: &PurchaseRequest,
        key: Option<&IdempotencyKey>,
        node: &str,
    ) -> Result<PurchaseOutcome, DecisionError> {
        let order = Order::new(Command::Purchase(SaleRequest {
            event: request.event.clone(),
            selection: Selection::Quantity(request.quantity),
            customer: None,
        }))
        .with_key(key.cloned());
        let mut log = Vec::new();
        match self.decide(&order, node, request.requested_at, &mut log)? {
            Outcome::Purchase(decided) if decided.changed => {
                Ok(PurchaseOutcome::Created(decided.item))
            }
            Outcome::Purchase(decided) => Ok(PurchaseOutcome::Replayed(decided.item)),
            // A purchase command answers a purchase; this arm is never taken.
            Outcome::Hold(_) => Err(DecisionError::KeyReused {
                earlier: "a hold".into(),
            }),
        }
    }

    /// Applies `entry` and hands it to the log.
    fn record(&mut self, entry: LogEntry, log: &mut Vec<LogEntry>) {
        self.commit(entry.clone());
        log.push(entry);
    }

    /// Expires (and logs) every live hold whose expiry is at or before `at`.
    fn expire_due(&mut self, at: Timestamp, log: &mut Vec<LogEntry>) {
        while let Some(&(expires_at, index)) = self.expiring.first() {
            if expires_at > at {
                break;
            }
            let hold_id = self.holds[index].hold_id.clone();
            self.record(LogEntry::Expire { hold_id, at }, log);
        }
    }

    /// The answer to an order whose key was used before: the first outcome when the
    /// request is the same (for a purchase or hold; `None` for a confirm, release or cancel
    /// of the same thing, which are decided again and answer their repeat themselves), or
    /// a refusal of the key's reuse.
    fn repeat(
        &self,
        used: KeyUse,
        order: &Order,
        key: &IdempotencyKey,
        at: Timestamp,
    ) -> Option<Result<Outcome, DecisionError>> {
        let secret = |salt: Option<Salt>| salt.map(|s| derive_secret(&s, key.as_str()));
        match (used, &order.command) {
            (KeyUse::Purchase(i), Command::Purchase(sale))
                if self.purchases[i].hold_id.is_none() && same_sale(sale, &self.purchases[i]) =>
            {
                let purchase = self.purchases[i].clone();
                Some(Ok(Outcome::Purchase(Decided {
                    secret: secret(purchase.access.salt),
                    item: purchase,
                    changed: false,
                })))
            }
            (KeyUse::Purchase(i), Command::Confirm { hold_id })
                if self.purchases[i].hold_id.as_ref() == Some(hold_id) =>
            {
                None
            }
            (KeyUse::Hold(i), Command::Hold(request)) if same_hold(request, &self.holds[i]) => {
                let hold = &self.holds[i];
                Some(Ok(Outcome::Hold(Decided {
                    secret: secret(hold.access.salt),
                    item: view_of(hold, at),
                    changed: false,
                })))
            }
            (KeyUse::Release(i), Command::Release { hold_id })
                if self.holds[i].hold_id == *hold_id =>
            {
                None
            }
            (KeyUse::Cancel(i), Command::Cancel { purchase_id })
                if self.purchases[i].purchase_id == *purchase_id =>
            {
                None
            }
            _ => Some(Err(DecisionError::KeyReused {
                earlier: self.describe(used),
            })),
        }
    }

    /// What a key was used for, for the reuse message (no customer: that is personal).
    fn describe(&self, used: KeyUse) -> String {
        match used {
            KeyUse::Purchase(i) => {
                let p = &self.purchases[i];
                match &p.hold_id {
                    Some(hold) => format!("confirm {hold}"),
                    None => format!("purchase of {} x {}", p.event, p.quantity.get()),
                }
            }
            KeyUse::Hold(i) => {
                let h = &self.holds[i];
                format!("hold of {} x {}", h.event, h.quantity())
            }
            KeyUse::Release(i) => format!("release {}", self.holds[i].hold_id),
            KeyUse::Cancel(i) => format!("cancel {}", self.purchases[i].purchase_id),
        }
    }

    /// Which tickets a sale or hold gets, or why none: the event must exist; on an event
    /// with a per-customer limit a customer must be named and stay within it; named seats
    /// must be tickets of the event and all free; a count needs that many free.
    fn choose(&self, sale: &SaleRequest) -> Result<Vec<SoldTicket>, DecisionError> {
        let event = &sale.event;
        let index = self
            .events
            .get(event)
            .ok_or_else(|| DecisionError::UnknownEvent(event.clone()))?;
        let limit = index.summary.max_per_customer;
        if limit.is_some() && sale.customer.is_none() {
            return Err(DecisionError::CustomerRequired {
                event: event.clone(),
            });
        }
        if let Selection::Seats(seats) = &sale.selection
            && let Some(&stranger) = seats
                .ids()
                .iter()
                .find(|&&id| self.ticket(id).is_none_or(|t| t.event != *event))
        {
            return Err(DecisionError::NotOfEvent {
                event: event.clone(),
                ticket: stranger,
            });
        }
        let wanted = u64::from(sale.selection.quantity().get());
        if let (Some(limit), Some(customer)) = (limit, &sale.customer) {
            let live = self.live_tickets(event, customer);
            if live + wanted > u64::from(limit) {
                return Err(DecisionError::CustomerLimit {
                    event: event.clone(),
                    limit,
                    allowed: u64::from(limit).saturating_sub(live),
                });
            }
        }
        let ids: Vec<u64> = match &sale.selection {
            Selection::Quantity(quantity) => {
                if (index.available.len() as u64) < wanted {
                    return Err(DecisionError::SoldOut {
                        event: event.clone(),
                        requested: quantity.get(),
                        available: index.available.len() as u64,
                    });
                }
                index
                    .available
                    .iter()
                    .take(wanted as usize)
                    .copied()
                    .collect()
            }
            Selection::Seats(seats) => {
                let unavailable: Vec<u64> = seats
                    .ids()
                    .iter()
                    .copied()
                    .filter(|id| {
                        self.held_by.contains_key(id) || self.ticket(*id).is_some_and(|t| t.sold)
                    })
                    .collect();
                if !unavailable.is_empty() {
                    return Err(DecisionError::TicketsUnavailable {
                        event: event.clone(),
                        unavailable,
                    });
                }
                seats.ids().to_vec()
            }
        };
        Ok(ids
            .into_iter()
            .filter_map(|id| self.ticket(id))
            .map(|t| SoldTicket {
                id: t.id,
                price_cents: t.price_cents,
            })
            .collect())
    }

    /// Tickets of `event` in the customer's live purchases and holds (exact at a decision,
    /// which expires due holds first).
    fn live_tickets(&self, event: &EventName, customer: &CustomerId) -> u64 {
        self.customers
            .get(customer)
            .and_then(|c| c.live.get(event))
            .copied()
            .unwrap_or(0)
    }

    fn sell(
        &mut self,
        sale: &SaleRequest,
        key: Option<&IdempotencyKey>,
        node: &str,
        at: Timestamp,
        log: &mut Vec<LogEntry>,
    ) -> Result<Decided<Purchase>, DecisionError> {
        let tickets = self.choose(sale)?;
        let (secret, access) = new_access(key);
        let purchase = Purchase {
            purchase_id: purchase_id(self.next_purchase_seq),
            event: sale.event.clone(),
            quantity: sale.selection.quantity(),
            total_cents: tickets.iter().map(|t| t.price_cents).sum(),
            tickets,
            node: node.to_owned(),
            created_at: at,
            customer: sale.customer.clone(),
            seats: matches!(sale.selection, Selection::Seats(_)),
            hold_id: None,
            cancelled: None,
            access,
        };
        self.record(LogEntry::Purchase(purchase.clone()), log);
        Ok(Decided {
            item: purchase,
            secret: Some(secret),
            changed: true,
        })
    }

    fn make_hold(
        &mut self,
        request: &HoldRequest,
        key: Option<&IdempotencyKey>,
        node: &str,
        at: Timestamp,
        log: &mut Vec<LogEntry>,
    ) -> Result<Decided<crate::domain::HoldView>, DecisionError> {
        let sale = &request.sale;
        let tickets = self.choose(sale)?;
        let (secret, access) = new_access(key);
        let hold = Hold {
            hold_id: hold_id(self.next_hold_seq),
            event: sale.event.clone(),
            total_cents: tickets.iter().map(|t| t.price_cents).sum(),
            tickets,
            customer: sale.customer.clone(),
            node: node.to_owned(),
            created_at: at,
            expires_at: at.plus_seconds(u64::from(request.ttl.seconds())),
            seats: matches!(sale.selection, Selection::Seats(_)),
            state: HoldState::Held,
            access,
        };
        let view = view_of(&hold, at);
        self.record(LogEntry::Hold(hold), log);
        Ok(Decided {
            item: view,
            secret: Some(secret),
            changed: true,
        })
    }

    fn confirm(
        &mut self,
        hold_id: &str,
        proof: &Proof,
        key: Option<KeyHash>,
        node: &str,
        at: Timestamp,
        log: &mut Vec<LogEntry>,
    ) -> Result<Decided<Purchase>, DecisionError> {
        let hold = self.authorised_hold(hold_id, proof)?;
        // The purchase keeps the hold's secret: a holder who confirmed with it is answered
        // it again; the operator is answered none.
        let secret = proof
            .secret
            .clone()
            .filter(|s| hold.access.secret.is_some_and(|h| h.matches(s.as_str())));
        match &hold.state {
            HoldState::Confirmed { purchase_id, .. } => {
                let purchase = self
                    .purchase(purchase_id)
                    .cloned()
                    .ok_or_else(|| DecisionError::UnknownPurchase(purchase_id.clone()))?;
                Ok(Decided {
                    item: purchase,
                    secret,
                    changed: false,
                })
            }
            HoldState::Released(_) => Err(DecisionError::HoldReleased(hold_id.to_owned())),
            HoldState::Expired { .. } => Err(DecisionError::HoldExpired(hold_id.to_owned())),
            HoldState::Held => {
                let purchase = Purchase {
                    purchase_id: purchase_id(self.next_purchase_seq),
                    event: hold.event.clone(),
                    quantity: Quantity::of_count(hold.tickets.len()),
                    tickets: hold.tickets.clone(),
                    total_cents: hold.total_cents,
                    node: node.to_owned(),
                    created_at: at,
                    customer: hold.customer.clone(),
                    seats: hold.seats,
                    hold_id: Some(hold.hold_id.clone()),
                    cancelled: None,
                    access: Access {
                        secret: hold.access.secret,
                        key,
                        salt: None,
                    },
                };
                self.record(LogEntry::Purchase(purchase.clone()), log);
                Ok(Decided {
                    item: purchase,
                    secret,
                    changed: true,
                })
            }
        }
    }

    fn release(
        &mut self,
        hold_id: &str,
        proof: &Proof,
        key: Option<KeyHash>,
        at: Timestamp,
        log: &mut Vec<LogEntry>,
    ) -> Result<Decided<crate::domain::HoldView>, DecisionError> {
        let hold = self.authorised_hold(hold_id, proof)?;
        match &hold.state {
            HoldState::Confirmed { purchase_id, .. } => Err(DecisionError::HoldConfirmed {
                hold_id: hold_id.to_owned(),
                purchase_id: purchase_id.clone(),
            }),
            // Released already, or expired: its tickets are on sale; answered as it is.
            HoldState::Released(_) | HoldState::Expired { .. } => Ok(Decided {
                item: view_of(hold, at),
                secret: None,
                changed: false,
            }),
            HoldState::Held => {
                let entry = LogEntry::Release {
                    hold_id: hold_id.to_owned(),
                    at,
                    key,
                };
                let index = self.by_hold_id.get(hold_id).copied();
                self.record(entry, log);
                let view = index
                    .map(|i| view_of(&self.holds[i], at))
                    .ok_or_else(|| DecisionError::UnknownHold(hold_id.to_owned()))?;
                Ok(Decided {
                    item: view,
                    secret: None,
                    changed: true,
                })
            }
        }
    }

    fn cancel(
        &mut self,
        purchase_id: &str,
        proof: &Proof,
        key: Option<KeyHash>,
        at: Timestamp,
        log: &mut Vec<LogEntry>,
    ) -> Result<Decided<Purchase>, DecisionError> {
        let unknown = || DecisionError::UnknownPurchase(purchase_id.to_owned());
        let purchase = self.purchase(purchase_id).ok_or_else(unknown)?;
        if !proof.allows(purchase.access.secret.as_ref()) {
            return Err(DecisionError::Forbidden);
        }
        let changed = purchase.is_live();
        if changed {
            let entry = LogEntry::Cancel {
                purchase_id: purchase_id.to_owned(),
                at,
                key,
            };
            self.record(entry, log);
        }
        let purchase = self.purchase(purchase_id).cloned().ok_or_else(unknown)?;
        Ok(Decided {
            item: purchase,
            secret: None,
            changed,
        })
    }

    /// The hold `hold_id`, if `proof` may change it.
    fn authorised_hold(&self, hold_id: &str, proof: &Proof) -> Result<&Hold, DecisionError> {
        let hold = self
            .by_hold_id
            .get(hold_id)
            .map(|&i| &self.holds[i])
            .ok_or_else(|| DecisionError::UnknownHold(hold_id.to_owned()))?;
        if !proof.allows(hold.access.secret.as_ref()) {
            return Err(DecisionError::Forbidden);
        }
        Ok(hold)
    }
}

/// A new purchase's or hold's secret and what the store keeps of it: with a key, the
/// secret derived from the key and a new salt (so a repeat answers it again); without,
/// a random one.
fn new_access(key: Option<&IdempotencyKey>) -> (Secret, Access) {
    match key {
        Some(key) => {
            let salt = Salt::generate();
            let secret = derive_secret(&salt, key.as_str());
            let access = Access {
                secret: Some(secret.hash()),
                key: Some(KeyHash::of(key.as_str())),
                salt: Some(salt),
            };
            (secret, access)
        }
        None => {
            let secret = Secret::generate();
            let access = Access {
                secret: Some(secret.hash()),
                key: None,
                salt: None,
            };
            (secret, access)
        }
    }
}

/// Whether a sale request asks for what `purchase` was made from: its event, customer and
/// the same count or the same seats.
fn same_sale(sale: &SaleRequest, purchase: &Purchase) -> bool {
    same_selection(
        sale,
        &purchase.event,
        purchase.customer.as_ref(),
        purchase.seats,
        &purchase.tickets,
    )
}

/// As [`same_sale`], for a hold, with the same time to live.
fn same_hold(request: &HoldRequest, hold: &Hold) -> bool {
    u64::from(request.ttl.seconds()) == hold.ttl_seconds()
        && same_selection(
            &request.sale,
            &hold.event,
            hold.customer.as_ref(),
            hold.seats,
            &hold.tickets,
        )
}

fn same_selection(
    sale: &SaleRequest,
    event: &EventName,
    customer: Option<&CustomerId>,
    seats: bool,
    tickets: &[SoldTicket],
) -> bool {
    sale.event == *event
        && sale.customer.as_ref() == customer
        && match &sale.selection {
            Selection::Quantity(q) => !seats && q.get() as usize == tickets.len(),
            Selection::Seats(s) => {
                seats && s.ids().iter().copied().eq(tickets.iter().map(|t| t.id))
            }
        }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::domain::{HoldStatus, Seats, Ticket, TicketStatus, Ttl};
    use crate::inventory::OrderFilter;

    fn event(name: &str) -> EventName {
        EventName::parse(name).expect("valid")
    }

    fn customer(name: &str) -> CustomerId {
        CustomerId::parse(name).expect("valid")
    }

    /// Five concert tickets (ids 1 to 5, 100 cents each) and two theater tickets (6, 7).
    fn inventory() -> Inventory {
        let ticket = |id: u64, name: &str| Ticket {
            id,
            event: event(name),
            price_cents: 100 * id,
            sold: false,
        };
        let mut tickets: Vec<Ticket> = (1..=5).map(|id| ticket(id, "concert")).collect();
        tickets.extend([ticket(6, "theater"), ticket(7, "theater")]);
        Inventory::from_tickets(tickets).expect("consistent")
    }

    /// `seconds` after a fixed start.
    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    fn sale(selection: Selection, who: Option<&str>) -> SaleRequest {
        SaleRequest {
            event: event("concert"),
            selection,
            customer: who.map(customer),
        }
    }

    fn count(n: u32) -> Selection {
        Selection::Quantity(Quantity::new(n).expect("valid"))
    }

    fn seats(ids: &[u64]) -> Selection {
        Selection::Seats(Seats::new(ids.to_vec()).expect("valid"))
    }

    fn buy(selection: Selection) -> Order {
        Order::new(Command::Purchase(sale(selection, None)))
    }

    fn hold(selection: Selection, ttl: u32) -> Order {
        Order::new(Command::Hold(HoldRequest {
            sale: sale(selection, None),
            ttl: Ttl::new(ttl).expect("valid"),
        }))
    }

    fn confirm(hold_id: &str) -> Order {
        Order::new(Command::Confirm {
            hold_id: hold_id.into(),
        })
        .with_proof(Proof::operator())
    }

    fn release(hold_id: &str) -> Order {
        Order::new(Command::Release {
            hold_id: hold_id.into(),
        })
        .with_proof(Proof::operator())
    }

    fn cancel(purchase_id: &str) -> Order {
        Order::new(Command::Cancel {
            purchase_id: purchase_id.into(),
        })
        .with_proof(Proof::operator())
    }

    /// Decides `order` at `now`, returning the outcome and the entries logged.
    fn run(
        inv: &mut Inventory,
        order: &Order,
        now: SystemTime,
    ) -> (Result<Outcome, DecisionError>, Vec<LogEntry>) {
        let mut log = Vec::new();
        let outcome = inv.decide(order, "n1", now, &mut log);
        (outcome, log)
    }

    fn purchased(outcome: Result<Outcome, DecisionError>) -> Decided<Purchase> {
        match outcome {
            Ok(Outcome::Purchase(d)) => d,
            other => panic!("expected a purchase, got {other:?}"),
        }
    }

    fn held(outcome: Result<Outcome, DecisionError>) -> Decided<crate::domain::HoldView> {
        match outcome {
            Ok(Outcome::Hold(d)) => d,
            other => panic!("expected a hold, got {other:?}"),
        }
    }

    fn ids(tickets: &[SoldTicket]) -> Vec<u64> {
        tickets.iter().map(|t| t.id).collect()
    }

    fn concert(inv: &Inventory, now: SystemTime) -> (u64, u64, u64) {
        let s = inv.event_at(&event("concert"), now).expect("an event");
        (s.available, s.held, s.sold)
    }

    #[test]
    fn named_seats_are_sold_all_or_nothing() {
        let mut inv = inventory();
        let p = purchased(run(&mut inv, &buy(seats(&[4, 2])), at(0)).0);
        assert_eq!(ids(&p.item.tickets), [2, 4]);
        assert_eq!(p.item.total_cents, 600);
        assert!(p.item.seats);
        let (outcome, log) = run(&mut inv, &buy(seats(&[1, 2, 4])), at(1));
        assert_eq!(
            outcome,
            Err(DecisionError::TicketsUnavailable {
                event: event("concert"),
                unavailable: vec![2, 4],
            })
        );
        assert!(log.is_empty(), "a refusal logs nothing");
        assert!(inv.ticket(1).is_some_and(|t| !t.sold), "nothing more sold");
        let (outcome, _) = run(&mut inv, &buy(seats(&[1, 6])), at(1));
        assert_eq!(
            outcome,
            Err(DecisionError::NotOfEvent {
                event: event("concert"),
                ticket: 6,
            })
        );
        let (outcome, _) = run(&mut inv, &buy(seats(&[99])), at(1));
        assert!(matches!(
            outcome,
            Err(DecisionError::NotOfEvent { ticket: 99, .. })
        ));
        assert_eq!(concert(&inv, at(1)), (3, 0, 2));
    }

    #[test]
    fn a_hold_takes_its_tickets_off_sale_until_it_expires_with_no_decision_needed() {
        let mut inv = inventory();
        let h = held(run(&mut inv, &hold(count(2), 60), at(0)).0);
        assert_eq!(h.item.hold.hold_id, "h-00000001");
        assert_eq!(h.item.status, HoldStatus::Held);
        assert_eq!(ids(&h.item.hold.tickets), [1, 2]);
        assert_eq!(h.item.hold.expires_at, Timestamp::from_system(at(60)));
        assert_eq!(concert(&inv, at(59)), (3, 2, 0));
        let one = inv.ticket(1).expect("ticket").clone();
        assert_eq!(inv.ticket_status(&one, at(59)), TicketStatus::Held);
        let (outcome, _) = run(&mut inv, &buy(seats(&[1])), at(30));
        assert!(matches!(
            outcome,
            Err(DecisionError::TicketsUnavailable { .. })
        ));
        let (outcome, _) = run(&mut inv, &buy(count(4)), at(30));
        assert!(matches!(
            outcome,
            Err(DecisionError::SoldOut { available: 3, .. })
        ));
        // At its expiry the reads count its tickets available, though nothing was logged.
        assert_eq!(concert(&inv, at(60)), (5, 0, 0));
        assert_eq!(inv.ticket_status(&one, at(60)), TicketStatus::Available);
        let view = inv.hold("h-00000001", at(60)).expect("the hold");
        assert_eq!(view.status, HoldStatus::Expired);
        assert_eq!(inv.events_at(at(60))[0].held, 0);
        assert_eq!(
            inv.events()[0].held,
            2,
            "the log's own time is still before it"
        );
    }

    #[test]
    fn confirming_makes_a_purchase_of_exactly_the_held_tickets_and_a_repeat_answers_it() {
        let mut inv = inventory();
        purchased(run(&mut inv, &buy(count(1)), at(0)).0);
        let h = held(run(&mut inv, &hold(seats(&[3, 5]), 60), at(1)).0);
        let c = purchased(run(&mut inv, &confirm(&h.item.hold.hold_id), at(2)).0);
        assert!(c.changed);
        assert_eq!(ids(&c.item.tickets), [3, 5]);
        assert_eq!(c.item.hold_id.as_deref(), Some("h-00000001"));
        assert_eq!(c.item.purchase_id, "p-00000002");
        assert_eq!(
            concert(&inv, at(100)),
            (2, 0, 3),
            "a confirmed hold never expires"
        );
        let again = purchased(run(&mut inv, &confirm("h-00000001"), at(200)).0);
        assert!(!again.changed);
        assert_eq!(again.item, c.item);
        let view = inv.hold("h-00000001", at(200)).expect("the hold");
        assert_eq!(
            view.status,
            HoldStatus::Confirmed {
                purchase_id: "p-00000002".into()
            }
        );
        assert_eq!(
            run(&mut inv, &release("h-00000001"), at(200)).0,
            Err(DecisionError::HoldConfirmed {
                hold_id: "h-00000001".into(),
                purchase_id: "p-00000002".into(),
            })
        );
    }

    #[test]
    fn a_confirm_found_expired_is_logged_so_no_slower_clock_confirms_it_later() {
        let mut inv = inventory();
        held(run(&mut inv, &hold(count(2), 10), at(0)).0);
        let (outcome, log) = run(&mut inv, &confirm("h-00000001"), at(10));
        assert_eq!(
            outcome,
            Err(DecisionError::HoldExpired("h-00000001".into()))
        );
        assert_eq!(
            log,
            [LogEntry::Expire {
                hold_id: "h-00000001".into(),
                at: Timestamp::from_system(at(10)),
            }]
        );
        // A node whose clock is behind decides at the log's time, not its own.
        let (outcome, log) = run(&mut inv, &confirm("h-00000001"), at(5));
        assert_eq!(
            outcome,
            Err(DecisionError::HoldExpired("h-00000001".into()))
        );
        assert!(log.is_empty());
        assert_eq!(inv.log_time(), Timestamp::from_system(at(10)));
        assert_eq!(concert(&inv, at(5)), (5, 0, 0));
    }

    #[test]
    fn selling_a_ticket_of_an_expired_hold_expires_it_first_in_the_log() {
        let mut inv = inventory();
        held(run(&mut inv, &hold(seats(&[2]), 10), at(0)).0);
        let (outcome, log) = run(&mut inv, &buy(seats(&[2])), at(11));
        let p = purchased(outcome);
        assert_eq!(ids(&p.item.tickets), [2]);
        assert_eq!(log.len(), 2);
        assert!(matches!(&log[0], LogEntry::Expire { hold_id, .. } if hold_id == "h-00000001"));
        assert_eq!(log[1], LogEntry::Purchase(p.item));
        let (outcome, _) = run(&mut inv, &confirm("h-00000001"), at(11));
        assert_eq!(
            outcome,
            Err(DecisionError::HoldExpired("h-00000001".into()))
        );
    }

    #[test]
    fn a_released_hold_puts_its_tickets_on_sale_at_once_and_cannot_be_confirmed() {
        let mut inv = inventory();
        held(run(&mut inv, &hold(count(3), 600), at(0)).0);
        let r = held(run(&mut inv, &release("h-00000001"), at(1)).0);
        assert!(r.changed);
        assert_eq!(r.item.status, HoldStatus::Released);
        assert_eq!(concert(&inv, at(1)), (5, 0, 0));
        let again = held(run(&mut inv, &release("h-00000001"), at(2)).0);
        assert!(!again.changed);
        assert_eq!(again.item.status, HoldStatus::Released);
        assert_eq!(
            run(&mut inv, &confirm("h-00000001"), at(2)).0,
            Err(DecisionError::HoldReleased("h-00000001".into()))
        );
        let p = purchased(run(&mut inv, &buy(count(5)), at(3)).0);
        assert_eq!(ids(&p.item.tickets), [1, 2, 3, 4, 5]);
        assert_eq!(
            run(&mut inv, &release("h-00000009"), at(3)).0,
            Err(DecisionError::UnknownHold("h-00000009".into()))
        );
    }

    #[test]
    fn a_cancelled_purchase_stays_readable_and_its_tickets_sell_again() {
        let mut inv = inventory();
        let p = purchased(run(&mut inv, &buy(count(2)), at(0)).0);
        let c = purchased(run(&mut inv, &cancel(&p.item.purchase_id), at(1)).0);
        assert!(c.changed);
        assert_eq!(
            c.item.cancelled.as_ref().map(|c| c.at),
            Some(Timestamp::from_system(at(1)))
        );
        assert_eq!(inv.purchase("p-00000001"), Some(&c.item));
        assert_eq!(concert(&inv, at(1)), (5, 0, 0));
        let again = purchased(run(&mut inv, &cancel("p-00000001"), at(2)).0);
        assert!(!again.changed);
        assert_eq!(again.item, c.item);
        let p2 = purchased(run(&mut inv, &buy(seats(&[1, 2])), at(3)).0);
        assert_eq!(ids(&p2.item.tickets), [1, 2]);
        assert_eq!(
            run(&mut inv, &cancel("p-00000099"), at(3)).0,
            Err(DecisionError::UnknownPurchase("p-00000099".into()))
        );
    }

    #[test]
    fn changes_need_the_secret_or_the_operator() {
        let mut inv = inventory();
        let p = purchased(run(&mut inv, &buy(count(1)), at(0)).0);
        let h = held(run(&mut inv, &hold(count(1), 60), at(0)).0);
        let h2 = held(run(&mut inv, &hold(count(1), 60), at(0)).0);
        let p_secret = p.secret.clone().expect("a new purchase has a secret");
        let h_secret = h.secret.clone().expect("a new hold has a secret");
        assert_ne!(p_secret, h_secret);
        assert!(
            p.item
                .access
                .secret
                .is_some_and(|s| s.matches(p_secret.as_str()))
        );
        assert!(!format!("{:?}", p.item).contains(p_secret.as_str()));
        let without = |command: Command| Order::new(command);
        let with = |command: Command, secret: &Secret| {
            Order::new(command).with_proof(Proof::secret(secret.clone()))
        };
        let cancel_p = Command::Cancel {
            purchase_id: p.item.purchase_id.clone(),
        };
        let confirm_h = Command::Confirm {
            hold_id: h.item.hold.hold_id.clone(),
        };
        let release_h2 = Command::Release {
            hold_id: h2.item.hold.hold_id.clone(),
        };
        for order in [
            without(cancel_p.clone()),
            with(cancel_p.clone(), &h_secret),
            without(confirm_h.clone()),
            with(confirm_h.clone(), &p_secret),
            with(release_h2.clone(), &h_secret),
            with(
                cancel_p.clone(),
                &Secret::presented(p_secret.as_str().to_uppercase()),
            ),
        ] {
            let (outcome, log) = run(&mut inv, &order, at(1));
            assert_eq!(outcome, Err(DecisionError::Forbidden), "{order:?}");
            assert!(log.is_empty());
        }
        let c = purchased(run(&mut inv, &with(confirm_h, &h_secret), at(1)).0);
        assert_eq!(
            c.secret,
            Some(h_secret.clone()),
            "the holder's secret, echoed"
        );
        assert_eq!(c.item.access.secret, h.item.hold.access.secret);
        // The confirmed purchase is the holder's to cancel with the same secret.
        let cancel_c = Command::Cancel {
            purchase_id: c.item.purchase_id.clone(),
        };
        assert!(purchased(run(&mut inv, &with(cancel_c, &h_secret), at(2)).0).changed);
        assert!(purchased(run(&mut inv, &with(cancel_p, &p_secret), at(2)).0).changed);
        let released = held(run(&mut inv, &release(&h2.item.hold.hold_id), at(2)).0);
        assert!(released.changed, "the operator may release anything");
        assert_eq!(released.secret, None);
    }

    #[test]
    fn a_keyed_repeat_answers_the_same_item_and_secret_and_a_reused_key_is_refused() {
        let mut inv = inventory();
        let key = IdempotencyKey::parse("k-1").expect("valid");
        let order = |selection, who: Option<&str>| {
            Order::new(Command::Purchase(sale(selection, who))).with_key(Some(key.clone()))
        };
        let first = purchased(run(&mut inv, &order(count(2), Some("ann")), at(0)).0);
        assert!(first.changed);
        assert_eq!(first.item.access.key, Some(KeyHash::of("k-1")));
        let (outcome, log) = run(&mut inv, &order(count(2), Some("ann")), at(1));
        let again = purchased(outcome);
        assert!(log.is_empty());
        assert!(!again.changed);
        assert_eq!(again.item, first.item);
        assert_eq!(again.secret, first.secret, "the secret again, from the key");
        for (different, what) in [
            (order(count(3), Some("ann")), "count"),
            (order(count(2), Some("bob")), "customer"),
            (order(count(2), None), "no customer"),
            (order(seats(&[1, 2]), Some("ann")), "seats for a count"),
        ] {
            let (outcome, log) = run(&mut inv, &different, at(2));
            assert!(
                matches!(&outcome, Err(DecisionError::KeyReused { earlier }) if earlier == "purchase of concert x 2"),
                "{what}: {outcome:?}"
            );
            assert!(log.is_empty());
        }
        let as_hold = Order::new(Command::Hold(HoldRequest {
            sale: sale(count(2), Some("ann")),
            ttl: Ttl::default(),
        }))
        .with_key(Some(key.clone()));
        assert!(matches!(
            run(&mut inv, &as_hold, at(2)).0,
            Err(DecisionError::KeyReused { .. })
        ));

        let hold_key = IdempotencyKey::parse("k-2").expect("valid");
        let keyed_hold = |ttl| {
            Order::new(Command::Hold(HoldRequest {
                sale: sale(seats(&[5]), None),
                ttl: Ttl::new(ttl).expect("valid"),
            }))
            .with_key(Some(hold_key.clone()))
        };
        let h = held(run(&mut inv, &keyed_hold(30), at(3)).0);
        let h_again = held(run(&mut inv, &keyed_hold(30), at(4)).0);
        assert_eq!(
            (h_again.item.hold.clone(), h_again.secret.clone()),
            (h.item.hold, h.secret)
        );
        assert!(matches!(
            run(&mut inv, &keyed_hold(40), at(4)).0,
            Err(DecisionError::KeyReused { .. })
        ));
        // Unkeyed purchases get a fresh random secret each.
        let a = purchased(run(&mut inv, &buy(count(1)), at(5)).0);
        let b = purchased(run(&mut inv, &buy(count(1)), at(5)).0);
        assert_ne!(a.secret, b.secret);
    }

    #[test]
    fn keys_on_confirm_release_and_cancel_answer_repeats_and_refuse_other_requests() {
        let mut inv = inventory();
        let key = |k: &str| Some(IdempotencyKey::parse(k).expect("valid"));
        held(run(&mut inv, &hold(count(1), 60), at(0)).0);
        held(run(&mut inv, &hold(count(1), 60), at(0)).0);
        let c1 = purchased(run(&mut inv, &confirm("h-00000001").with_key(key("c")), at(1)).0);
        let c2 = purchased(run(&mut inv, &confirm("h-00000001").with_key(key("c")), at(2)).0);
        assert_eq!((c1.changed, c2.changed, c1.item), (true, false, c2.item));
        assert!(matches!(
            run(&mut inv, &confirm("h-00000002").with_key(key("c")), at(2)).0,
            Err(DecisionError::KeyReused { .. })
        ));
        assert!(held(run(&mut inv, &release("h-00000002").with_key(key("r")), at(3)).0).changed);
        assert!(!held(run(&mut inv, &release("h-00000002").with_key(key("r")), at(3)).0).changed);
        assert!(matches!(
            run(&mut inv, &cancel("p-00000001").with_key(key("r")), at(3)).0,
            Err(DecisionError::KeyReused { .. })
        ));
        assert!(
            purchased(run(&mut inv, &cancel("p-00000001").with_key(key("x")), at(4)).0).changed
        );
        assert!(matches!(
            run(&mut inv, &buy(count(1)).with_key(key("x")), at(4)).0,
            Err(DecisionError::KeyReused { .. })
        ));
    }

    #[test]
    fn the_per_customer_limit_counts_live_purchases_and_holds() {
        let mut inv = inventory();
        assert!(inv.set_max_per_customer(&event("concert"), Some(3)));
        let limited =
            |selection, who: Option<&str>| Order::new(Command::Purchase(sale(selection, who)));
        let limited_hold = |selection, who: Option<&str>, ttl| {
            Order::new(Command::Hold(HoldRequest {
                sale: sale(selection, who),
                ttl: Ttl::new(ttl).expect("valid"),
            }))
        };
        assert_eq!(
            run(&mut inv, &limited(count(1), None), at(0)).0,
            Err(DecisionError::CustomerRequired {
                event: event("concert")
            })
        );
        purchased(run(&mut inv, &limited(count(1), Some("ann")), at(0)).0);
        held(run(&mut inv, &limited_hold(count(1), Some("ann"), 10), at(0)).0);
        let (outcome, _) = run(&mut inv, &limited(count(2), Some("ann")), at(1));
        assert_eq!(
            outcome,
            Err(DecisionError::CustomerLimit {
                event: event("concert"),
                limit: 3,
                allowed: 1,
            })
        );
        assert_eq!(
            inv.customer_tickets(&event("concert"), &customer("ann"), at(1)),
            2
        );
        // Another customer is not limited by ann's tickets.
        purchased(run(&mut inv, &limited(count(2), Some("bob")), at(1)).0);
        // The hold expires: its ticket no longer counts.
        assert_eq!(
            inv.customer_tickets(&event("concert"), &customer("ann"), at(10)),
            1
        );
        purchased(run(&mut inv, &limited(count(2), Some("ann")), at(10)).0);
        assert!(matches!(
            run(&mut inv, &limited(count(1), Some("ann")), at(11)).0,
            Err(DecisionError::CustomerLimit { allowed: 0, .. })
        ));
        // A cancel gives tickets back to the limit; a confirm keeps them counted.
        purchased(run(&mut inv, &cancel("p-00000001"), at(12)).0);
        let h = held(run(&mut inv, &limited_hold(count(1), Some("ann"), 60), at(12)).0);
        purchased(run(&mut inv, &confirm(&h.item.hold.hold_id), at(13)).0);
        assert_eq!(
            inv.customer_tickets(&event("concert"), &customer("ann"), at(13)),
            3
        );
        // Events without a limit take no customer.
        let theater = Order::new(Command::Purchase(SaleRequest {
            event: event("theater"),
            selection: count(1),
            customer: None,
        }));
        purchased(run(&mut inv, &theater, at(14)).0);
        assert_eq!(
            inv.event(&event("concert"))
                .and_then(|e| e.max_per_customer),
            Some(3)
        );
        assert_eq!(
            inv.event(&event("theater"))
                .and_then(|e| e.max_per_customer),
            None
        );
    }

    #[test]
    fn lists_filter_by_customer_and_holds_page_like_purchases() {
        let mut inv = inventory();
        let order = |who: &str| Order::new(Command::Purchase(sale(count(1), Some(who))));
        let hold_for = |who: &str| {
            Order::new(Command::Hold(HoldRequest {
                sale: sale(count(1), Some(who)),
                ttl: Ttl::default(),
            }))
        };
        for who in ["ann", "bob", "ann"] {
            purchased(run(&mut inv, &order(who), at(0)).0);
        }
        held(run(&mut inv, &hold_for("bob"), at(0)).0);
        held(run(&mut inv, &hold_for("ann"), at(0)).0);
        let ann = OrderFilter {
            event: None,
            customer: Some(customer("ann")),
        };
        let found: Vec<String> = inv
            .find_purchases_by(&ann)
            .into_iter()
            .map(|p| p.purchase_id)
            .collect();
        assert_eq!(found, ["p-00000001", "p-00000003"]);
        let page = inv.page_purchases_by(&ann, Some(1), 1);
        assert_eq!(page.items[0].purchase_id, "p-00000003");
        assert_eq!(page.next, None);
        let all = OrderFilter::default();
        let page = inv.page_holds(&all, None, 1, at(1));
        assert_eq!(page.items[0].hold.hold_id, "h-00000001");
        assert_eq!(page.next.as_deref(), Some("h-00000001"));
        let after = page.next.as_deref().and_then(crate::inventory::hold_number);
        let page = inv.page_holds(&all, after, 1, at(1));
        assert_eq!(page.items[0].hold.hold_id, "h-00000002");
        assert_eq!(page.next, None);
        let bobs = OrderFilter {
            event: Some(event("concert")),
            customer: Some(customer("bob")),
        };
        let found = inv.find_holds(&bobs, at(1));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].hold.hold_id, "h-00000001");
        let nobody = OrderFilter {
            event: None,
            customer: Some(customer("nobody")),
        };
        assert!(inv.find_holds(&nobody, at(1)).is_empty());
    }

    mod replay_property {
        use super::*;
        use proptest::prelude::*;

        /// One random order: its kind, a number for counts, seats and targets, and the
        /// time step before it.
        fn any_order() -> impl Strategy<Value = (u8, u8, u8, bool)> {
            (0..6u8, 0..8u8, 0..40u8, any::<bool>())
        }

        fn order_of(inv: &Inventory, (kind, n, _, keyed): (u8, u8, u8, bool)) -> Order {
            let n = u64::from(n);
            let who = ["ann", "bob"][(n % 2) as usize];
            let selection = if n % 3 == 0 {
                seats(&[1 + n % 5, 1 + (n + 2) % 5])
            } else {
                count(1 + (n % 3) as u32)
            };
            let hold_id = format!("h-{:08}", 1 + n % inv.next_hold_seq().max(1));
            let purchase_id = format!("p-{:08}", 1 + n % inv.next_purchase_seq().max(1));
            let order = match kind {
                0 => Order::new(Command::Purchase(sale(selection, Some(who)))),
                1 => Order::new(Command::Hold(HoldRequest {
                    sale: sale(selection, Some(who)),
                    ttl: Ttl::new(10 + (n as u32 % 3) * 10).expect("valid"),
                })),
                2 => confirm(&hold_id),
                3 => release(&hold_id),
                4 => cancel(&purchase_id),
                _ => Order::new(Command::Purchase(sale(selection, None))),
            };
            let key = IdempotencyKey::parse(&format!("k{}", n % 4)).expect("valid");
            order.with_key(keyed.then_some(key))
        }

        proptest! {
            /// Whatever orders are decided, replaying the entries they logged on the
            /// starting state, or restoring the result's parts, gives the same state; no
            /// ticket is ever both sold and held; and a read at a later time shows what a
            /// decision then would find, with no sweeper.
            #[test]
            fn the_log_replays_to_the_decided_state(
                orders in proptest::collection::vec(any_order(), 1..40),
            ) {
                let start = {
                    let mut inv = inventory();
                    inv.set_max_per_customer(&event("concert"), Some(4));
                    inv
                };
                let mut decided = start.clone();
                let mut log = Vec::new();
                let mut clock = 0;
                for raw in orders {
                    clock += u64::from(raw.2);
                    let order = order_of(&decided, raw);
                    let _ = decided.decide(&order, "n1", at(clock), &mut log);
                    for ticket in decided.tickets() {
                        prop_assert!(
                            !(ticket.sold
                                && decided.ticket_status(ticket, at(clock)) != TicketStatus::Sold)
                        );
                    }
                    let summary = decided.event_at(&event("concert"), at(clock)).expect("concert");
                    prop_assert_eq!(summary.available + summary.held + summary.sold, summary.total);
                    // What a read shows a little later, with no decision in between, is what
                    // a decision then would find: holds due by then count as expired.
                    let later = at(clock + u64::from(raw.1) * 3);
                    let mut swept = decided.clone();
                    let _ = swept.decide(&cancel("p-99999999"), "n1", later, &mut Vec::new());
                    prop_assert_eq!(decided.events_at(later), swept.events());
                    for (mine, theirs) in decided.tickets().iter().zip(swept.tickets()) {
                        prop_assert_eq!(
                            decided.ticket_status(mine, later),
                            swept.ticket_status(theirs, later)
                        );
                    }
                    for hold in swept.holds() {
                        prop_assert_eq!(
                            decided.hold(&hold.hold_id, later).map(|v| v.status),
                            swept.hold(&hold.hold_id, later).map(|v| v.status)
                        );
                    }
                    for who in ["ann", "bob"] {
                        prop_assert_eq!(
                            decided.customer_tickets(&event("concert"), &customer(who), later),
                            swept.customer_tickets(&event("concert"), &customer(who), later)
                        );
                    }
                }
                let mut replayed = start.clone();
                for entry in log {
                    prop_assert_eq!(replayed.apply_entry(entry.clone()), Ok(()), "{:?}", entry);
                }
                let restored =
                    Inventory::restore(decided.parts()).expect("the decided state restores");
                for other in [&replayed, &restored] {
                    prop_assert_eq!(other, &decided);
                    // The indexes too: a restore builds them in bulk, a replay one by one.
                    prop_assert_eq!(&other.by_key, &decided.by_key);
                    prop_assert_eq!(&other.by_purchase_id, &decided.by_purchase_id);
                    prop_assert_eq!(&other.by_hold_id, &decided.by_hold_id);
                    for who in ["ann", "bob"] {
                        prop_assert_eq!(
                            other.customer_tickets(&event("concert"), &customer(who), at(clock)),
                            decided.customer_tickets(&event("concert"), &customer(who), at(clock))
                        );
                    }
                }
            }
        }
    }
}
