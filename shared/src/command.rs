//! What a node asks the store to decide (`Order`: a `Command` with its idempotency key and
//! the proof of who asks), and what the decision answers (`Outcome`, or a
//! `DecisionError` that changed nothing).

use thiserror::Error;

use crate::api::ErrorCode;
use crate::domain::{CustomerId, EventName, HoldView, IdempotencyKey, Purchase, Selection, Ttl};
use crate::secret::{Secret, SecretHash};

/// A sale's or hold's request body: which tickets of which event, for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleRequest {
    pub event: EventName,
    pub selection: Selection,
    pub customer: Option<CustomerId>,
}

/// `POST /holds`: a sale request and how long to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRequest {
    pub sale: SaleRequest,
    pub ttl: Ttl,
}

/// One change a node asks of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `POST /purchases`.
    Purchase(SaleRequest),
    /// `POST /holds`.
    Hold(HoldRequest),
    /// `POST /holds/{hold_id}/confirm`.
    Confirm { hold_id: String },
    /// `POST /holds/{hold_id}/release`.
    Release { hold_id: String },
    /// `POST /purchases/{purchase_id}/cancel`.
    Cancel { purchase_id: String },
}

impl Command {
    /// What kind of request it is, for messages and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Purchase(_) => "purchase",
            Self::Hold(_) => "hold",
            Self::Confirm { .. } => "confirm",
            Self::Release { .. } => "release",
            Self::Cancel { .. } => "cancel",
        }
    }
}

/// Who asks for a change: the secret presented (`X-Ticket-Secret`) and whether the
/// operator's token was presented and matched (the node checks the token; the store checks
/// a secret against the hash it keeps).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proof {
    pub secret: Option<Secret>,
    pub operator: bool,
}

impl Proof {
    /// The operator's proof.
    pub fn operator() -> Self {
        Self {
            secret: None,
            operator: true,
        }
    }

    /// A buyer's proof: the secret they present.
    pub fn secret(secret: Secret) -> Self {
        Self {
            secret: Some(secret),
            operator: false,
        }
    }

    /// Whether this proof may change (or see the customer of) something whose secret
    /// hashes to `hash`: the operator may change anything; a secret must match, in
    /// constant time. Nothing without a stored hash is a buyer's to change.
    pub fn allows(&self, hash: Option<&SecretHash>) -> bool {
        if self.operator {
            return true;
        }
        match (&self.secret, hash) {
            (Some(secret), Some(hash)) => hash.matches(secret.as_str()),
            _ => false,
        }
    }
}

/// One command to decide in a batch, as a node queues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub command: Command,
    pub key: Option<IdempotencyKey>,
    pub proof: Proof,
}

impl Order {
    /// An order without key or proof.
    pub fn new(command: Command) -> Self {
        Self {
            command,
            key: None,
            proof: Proof::default(),
        }
    }

    pub fn with_key(mut self, key: Option<IdempotencyKey>) -> Self {
        self.key = key;
        self
    }

    pub fn with_proof(mut self, proof: Proof) -> Self {
        self.proof = proof;
        self
    }
}

/// A decided order's answer: the purchase or hold as it now is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided<T> {
    pub item: T,
    /// The secret to answer: a new purchase's or hold's (also on an idempotent repeat with
    /// the same key), or the one presented to confirm a hold (the purchase keeps the hold's
    /// secret). `None` otherwise: nowhere else does a secret appear.
    pub secret: Option<Secret>,
    /// Whether this decision changed the store (false for a repeat).
    pub changed: bool,
}

/// What an order produced. Statuses by command: purchase and confirm 201, hold 201,
/// release and cancel 200 (repeats answer the same status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A purchase (new, confirmed from a hold, or cancelled), or a repeat of one.
    Purchase(Decided<Purchase>),
    /// A hold (new or released), or a repeat of one.
    Hold(Decided<HoldView>),
}

impl Outcome {
    pub fn changed(&self) -> bool {
        match self {
            Self::Purchase(d) => d.changed,
            Self::Hold(d) => d.changed,
        }
    }

    pub fn secret(&self) -> Option<&Secret> {
        match self {
            Self::Purchase(d) => d.secret.as_ref(),
            Self::Hold(d) => d.secret.as_ref(),
        }
    }
}

/// Why an order was refused. None of these changes the store (a confirm refused as
/// `HoldExpired` may still log the expiry that it found, which is no change of what any
/// reader sees).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecisionError {
    #[error("no event named {0}")]
    UnknownEvent(EventName),
    #[error("{event} has {available} tickets left, fewer than the {requested} asked for")]
    SoldOut {
        event: EventName,
        requested: u32,
        available: u64,
    },
    #[error("tickets {unavailable:?} of {event} are sold or held")]
    TicketsUnavailable {
        event: EventName,
        unavailable: Vec<u64>,
    },
    #[error("ticket {ticket} is not a ticket of {event}")]
    NotOfEvent { event: EventName, ticket: u64 },
    #[error("{event} limits tickets per customer, so a purchase or hold must name a customer")]
    CustomerRequired { event: EventName },
    #[error("{event} allows {limit} tickets per customer; this customer may take {allowed} more")]
    CustomerLimit {
        event: EventName,
        limit: u32,
        allowed: u64,
    },
    #[error("Idempotency-Key was already used for a different request ({earlier})")]
    KeyReused { earlier: String },
    #[error("no hold with id {0:?}")]
    UnknownHold(String),
    #[error("no purchase with id {0:?}")]
    UnknownPurchase(String),
    #[error("changing this needs its secret in X-Ticket-Secret or the operator's token")]
    Forbidden,
    #[error("hold {0} has expired")]
    HoldExpired(String),
    #[error("hold {0} was released")]
    HoldReleased(String),
    #[error("hold {hold_id} was confirmed as purchase {purchase_id}")]
    HoldConfirmed {
        hold_id: String,
        purchase_id: String,
    },
}

impl DecisionError {
    /// The API's code for this refusal (which fixes its status).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownEvent(_) => ErrorCode::UnknownEvent,
            Self::SoldOut { .. } => ErrorCode::SoldOut,
            Self::TicketsUnavailable { .. } => ErrorCode::TicketsUnavailable,
            Self::NotOfEvent { .. } | Self::CustomerRequired { .. } => ErrorCode::BadRequest,
            Self::CustomerLimit { .. } => ErrorCode::CustomerLimit,
            Self::KeyReused { .. } => ErrorCode::IdempotencyKeyReused,
            Self::UnknownHold(_) => ErrorCode::UnknownHold,
            Self::UnknownPurchase(_) => ErrorCode::UnknownPurchase,
            Self::Forbidden => ErrorCode::Forbidden,
            Self::HoldExpired(_) => ErrorCode::HoldExpired,
            Self::HoldReleased(_) => ErrorCode::HoldReleased,
            Self::HoldConfirmed { .. } => ErrorCode::HoldConfirmed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_allows_the_operator_or_the_matching_secret_only() {
        let secret = Secret::generate();
        let hash = secret.hash();
        assert!(Proof::operator().allows(Some(&hash)));
        assert!(Proof::operator().allows(None));
        assert!(Proof::secret(secret.clone()).allows(Some(&hash)));
        assert!(!Proof::secret(secret).allows(None));
        assert!(!Proof::secret(Secret::generate()).allows(Some(&hash)));
        assert!(!Proof::default().allows(Some(&hash)));
    }

    #[test]
    fn refusals_have_their_contract_codes() {
        assert_eq!(DecisionError::Forbidden.code().status(), 403);
        assert_eq!(
            DecisionError::HoldExpired("h".into()).code(),
            "hold_expired"
        );
        assert_eq!(
            DecisionError::NotOfEvent {
                event: EventName::parse("a").expect("valid"),
                ticket: 1
            }
            .code(),
            "bad_request"
        );
    }
}
