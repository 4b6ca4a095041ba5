//! Where log lines go and in what shape: stderr, as text for a person at a terminal or
//! as JSON lines for a log shipper (`[log] format`, or `DISPATCHER_LOG_FORMAT`).
//!
//! In JSON each line carries its span's fields under `span`, so an attempt's line has the
//! delivery id, event id, partner, attempt number, outcome and duration as fields.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
