//! What the daemon tells ops about itself: its log lines and its metrics.

pub mod logging;
pub mod metrics;
