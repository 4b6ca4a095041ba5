//! What the daemon tells ops about itself: its log lines, its metrics, and its state to
//! systemd.

pub mod logging;
pub mod metrics;
pub mod systemd;
