//! Every SQL statement the dispatcher runs, one module per table or concern.

/// A delivery's state as support, the API, the CLI, the metrics and the order's look name
/// it, as SQL over the deliveries row `$alias`. Since migration 0020 a claimed delivery is
/// stored `pending` with a claim token (and `leased_until`), so that the claim changes no
/// indexed column and its update stays HOT; the people reading it still see `in_flight`,
/// as they always did. Every state read for a person, and the order's, goes through this
/// one expression.
macro_rules! shown_state {
    ($alias:literal) => {
        concat!(
            "CASE WHEN ",
            $alias,
            ".claim_token IS NOT NULL THEN 'in_flight' ELSE ",
            $alias,
            ".state END"
        )
    };
}

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
