//! What every program of the ticket cluster shares: the domain, the JSON-file store, the
//! HTTP API's JSON bodies and layered settings. Nothing here serves HTTP.

pub mod api;
pub mod domain;
pub mod inventory;
pub mod settings;
pub mod store;

pub use domain::{
    EventName, EventSummary, IdempotencyKey, Purchase, PurchaseRequest, Quantity, SoldTicket,
    Ticket, ValidationError,
};
pub use inventory::{Inventory, PurchaseError, PurchaseOutcome, TicketFilter};
pub use store::{StoreError, TicketStore};
