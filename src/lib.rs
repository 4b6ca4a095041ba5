//! The HelpAround webhook dispatcher: delivers events from a PostgreSQL outbox to the
//! partners of each support program, per the partner contract in `contract/`.

pub mod admin;
pub mod auth;
pub mod breaker;
pub mod check;
pub mod config;
pub mod db;
pub mod deliveries;
pub mod dispatch;
pub mod guard;
pub mod logging;
pub mod metrics;
pub mod outbox;
pub mod outcome;
pub mod payload;
pub mod reload;
mod rescue;
pub mod resend;
pub mod retention;
pub mod retry;
pub mod routing;
pub mod schema;
pub mod send;
pub mod shutdown;
pub mod signing;
pub mod support;
pub mod wakeup;
