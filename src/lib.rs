//! The HelpAround webhook dispatcher: delivers events from a PostgreSQL outbox to the
//! partners of each support program, per the partner contract in `contract/`.
//!
//! The modules are layers. ARCHITECTURE.md's code map lists them from the bottom up with
//! the layers each may import (`tests/it/tidy.rs` holds the code to it), and says what
//! lives where and why.

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
