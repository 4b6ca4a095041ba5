//! The HelpAround webhook dispatcher: delivers events from a PostgreSQL outbox to the
//! partners of each support program, per the partner contract in `contract/`.
//!
//! The modules are layers, listed here from the bottom up; each imports only the ones
//! above it in this list. ARCHITECTURE.md says what lives where and why.

pub mod admin;
pub mod cli;
pub mod config;
pub mod contract;
pub mod daemon;
pub mod delivery;
pub mod http;
pub mod observe;
pub mod shutdown;
pub mod store;
