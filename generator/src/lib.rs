//! The generator: seeds a fresh ticket store, drives the original system's purchase
//! stream through the public HTTP API, and audits what the cluster sold. Seeding writes
//! the store through `shared`; load and audit judge the cluster only from outside.

pub mod audit;
pub mod client;
pub mod load;
pub mod seed;
pub mod settings;
pub mod wire;
