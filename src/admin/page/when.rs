//! How the support page writes a moment: one format for every time it shows, so the
//! overview, a delivery's page and its timeline read alike.

use chrono::{DateTime, Utc};

pub(super) fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}
