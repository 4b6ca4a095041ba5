//! What the daemon tells ops about itself: its log lines, its metrics, its traces (with
//! `[telemetry]`), and its state to systemd.

pub mod logging;
pub mod metrics;
mod otlp;
pub mod systemd;
pub mod traces;

/// The dispatcher's own targets (library and binary alike are named `dispatcher`): what
/// the log lines and the traces take in full, beside the dependencies' capped levels.
const OWN_TARGET: &str = "dispatcher";
