//! Every SQL statement the dispatcher runs, one module per table or concern.

pub mod audit;
pub mod circuits;
pub mod db;
pub mod grants;
pub mod idempotency;
pub mod migration;
pub mod notify;
pub mod outbox;
pub mod queue;
pub mod retention;
pub mod schema;
pub mod sessions;
pub mod standby;
pub mod support;
pub mod tokens;
