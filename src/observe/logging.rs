//! Logging to stderr: text for a person at a terminal or JSON lines for a log shipper
//! (`[log] format`, or `DISPATCHER_LOG_FORMAT`), with health data kept out of it at
//! every level.
//!
//! In JSON each line carries its span's fields under `span`, so an attempt's line has the
//! delivery id, event id, partner, attempt number, outcome and duration as fields.
//!
//! `RUST_LOG` chooses what is logged, but only the dispatcher's own code may log below
//! `info`. Every dependency is capped at `info` whatever `RUST_LOG` says, because their
//! debug and trace output carries data: tokio-postgres logs every statement's parameters
//! at debug (partners' answers, which may echo a patient's name or phone number), and
//! hyper, h2, reqwest and rustls log connections, headers and frames at trace. The cap is a
//! filter of its own beside `RUST_LOG`'s, so no directive (`tokio_postgres::query=trace`
//! included) can lift it.

use std::io::IsTerminal;

use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use super::OWN_TARGET;
use crate::config::LogFormat;
use crate::observe::traces::Traces;

/// The most any dependency may log.
pub const DEPENDENCY_CAP: LevelFilter = LevelFilter::INFO;

/// What may be logged at all, whatever `RUST_LOG` asks for.
pub fn caps() -> Targets {
    Targets::new()
        .with_default(DEPENDENCY_CAP)
        .with_target(OWN_TARGET, LevelFilter::TRACE)
}

/// Installs the stderr logger: `RUST_LOG` (default `info`) within [`caps`]. Records of
/// the `log` crate (tokio-postgres uses it) go through the same filters. With `traces`
/// (`[telemetry]`), the dispatcher's spans are exported too, whatever `RUST_LOG` says.
pub fn init(format: LogFormat, traces: Option<&Traces>) {
    let requested = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(lines.with_filter(requested.and(caps())))
        .with(traces.map(Traces::layer))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn dependencies_are_capped_at_info_and_our_code_is_not() {
        let caps = caps();
        for target in [
            "tokio_postgres::query",
            "tokio_postgres",
            "postgres_protocol",
            "hyper_util::client::legacy::pool",
            "h2::codec::framed_write",
            "reqwest::connect",
            "rustls::client::hs",
        ] {
            assert!(caps.would_enable(target, &Level::INFO), "{target} at info");
            assert!(
                !caps.would_enable(target, &Level::DEBUG),
                "{target} at debug"
            );
        }
        assert!(caps.would_enable("dispatcher::daemon", &Level::TRACE));
        assert!(caps.would_enable("dispatcher", &Level::TRACE));
    }
}
