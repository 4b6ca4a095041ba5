//! The integration tests: one binary, so the crate is linked once (not once per scenario
//! file), and `support/` is one module that the compiler checks for dead code as a whole.
//!
//! Each module is a set of scenarios a partner, ops or support person would recognise;
//! `support/` is the bench they share: a database per test, partners on 127.0.0.1, the
//! real `dispatcher` binary, its configuration and admin server. Run one file's scenarios
//! with `scripts/test --test it -- faults::`.
//!
//! Nothing here changes the test process's own environment or signal handlers (the
//! daemon under test is always a child process), so every scenario can share this one.

mod support;

mod admin;
mod archive;
mod auth;
mod browser;
mod bulk;
mod check_connect;
mod cli;
mod crashes;
mod db_tls;
mod delivery;
mod deploy;
mod faults;
mod guard;
mod hostile_answers;
mod hostile_events;
mod identity;
mod isolation;
mod maintenance;
mod metrics;
mod operating;
mod overload;
mod pg_roles;
mod phi_logs;
mod received;
mod retention;
mod routing;
mod schemathesis;
mod screenshots;
mod standby;
mod systemd;
mod telemetry;
mod tidy;
mod tls;
mod upgrade;
mod waiting;
mod wakeup;
