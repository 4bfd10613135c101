//! What every program of the ticket cluster shares: the domain and the inventory's
//! decisions, the HTTP API's JSON bodies and layered settings. Nothing here serves HTTP or
//! opens the store (that is the `store` crate).

pub mod api;
pub mod domain;
pub mod inventory;
pub mod secret;
pub mod settings;

pub use domain::{
    EventName, EventSummary, IdempotencyKey, Purchase, PurchaseRequest, Quantity, SoldTicket,
    Ticket, ValidationError,
};
pub use inventory::{
    Inventory, MAX_PAGE_LIMIT, Page, PurchaseError, PurchaseOutcome, TicketFilter, purchase_number,
};
