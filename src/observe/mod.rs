//! What the daemon tells ops about itself: its log lines, its metrics, its traces (with
//! `[telemetry]`), and its state to systemd.

pub mod logging;
pub mod metrics;
mod otlp;
pub mod systemd;
pub mod traces;
