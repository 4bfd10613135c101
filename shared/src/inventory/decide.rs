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
