//! What every program of the ticket cluster shares: the domain and the inventory's
//! decisions, the HTTP API's JSON bodies and layered settings. Nothing here serves HTTP or
//! opens the store (that is the `store` crate).

pub mod api;
pub mod command;
pub mod domain;
pub mod inventory;
pub mod log;
pub mod secret;
pub mod settings;

pub use command::{
    Command, Decided, DecisionError, HoldRequest, Order, Outcome, Proof, SaleRequest,
};
pub use domain::{
    Access, Change, CustomerId, EventName, EventSummary, Hold, HoldState, HoldStatus, HoldView,
    IdempotencyKey, Purchase, PurchaseRequest, Quantity, Seats, Selection, SoldTicket, Ticket,
    TicketStatus, Timestamp, Ttl, ValidationError,
};
pub use inventory::{
    Inventory, MAX_PAGE_LIMIT, OrderFilter, Page, Parts, PurchaseError, PurchaseOutcome,
    TicketFilter, hold_number, purchase_number,
};
pub use log::LogEntry;
