//! The entries of the store's log: every change to the inventory, in the order the store
//! decided it. Replaying them after a snapshot gives the current state
//! ([`crate::Inventory::apply_entry`]). Every entry carries its time; along the log times
//! never go back, because a decision takes the later of the node's clock and the latest time
//! already in the log.

use crate::domain::{Hold, Purchase, Timestamp};
use crate::secret::KeyHash;

/// One change, as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEntry {
    /// A sale. With `hold_id` set it confirms that hold (and takes exactly its tickets).
    Purchase(Purchase),
    /// Tickets held until `expires_at`.
    Hold(Hold),
    /// A hold given back: its tickets are on sale again.
    Release {
        hold_id: String,
        at: Timestamp,
        key: Option<KeyHash>,
    },
    /// A hold a decision at `at` (on or after its `expires_at`) found expired: from here on
    /// no node confirms it, whatever its clock says.
    Expire { hold_id: String, at: Timestamp },
    /// A purchase cancelled: its tickets are on sale again; it stays readable.
    Cancel {
        purchase_id: String,
        at: Timestamp,
        key: Option<KeyHash>,
    },
}

impl LogEntry {
    /// When the store decided it.
    pub fn at(&self) -> Timestamp {
        match self {
            Self::Purchase(p) => p.created_at,
            Self::Hold(h) => h.created_at,
            Self::Release { at, .. } | Self::Expire { at, .. } | Self::Cancel { at, .. } => *at,
        }
    }

    /// A short name of its kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Purchase(p) if p.hold_id.is_some() => "confirm",
            Self::Purchase(_) => "purchase",
            Self::Hold(_) => "hold",
            Self::Release { .. } => "release",
            Self::Expire { .. } => "expire",
            Self::Cancel { .. } => "cancel",
        }
    }

    /// The purchase or hold it is about, for messages.
    pub fn subject(&self) -> &str {
        match self {
            Self::Purchase(p) => &p.purchase_id,
            Self::Hold(h) => &h.hold_id,
            Self::Release { hold_id, .. } | Self::Expire { hold_id, .. } => hold_id,
            Self::Cancel { purchase_id, .. } => purchase_id,
        }
    }
}
