//! What the command-line subcommands print.

pub mod check;
pub mod deliveries;
