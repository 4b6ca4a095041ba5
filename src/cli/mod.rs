//! The command line: what `dispatcher` accepts (the clap definitions) and what each
//! subcommand prints. `main.rs` parses, loads the configuration, opens the database and
//! hands over to the subcommand here; the daemon itself is in `daemon/`.

pub mod check;
pub mod db;
pub mod deliveries;
pub mod selection;
pub mod tokens;

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::store::schema;

pub use deliveries::DeliveriesCommand;

#[derive(Parser)]
#[command(
    name = "dispatcher",
    version,
    about = "Delivers HelpAround outbox events to partner webhooks"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, global = true, default_value = "dispatcher.toml")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create or upgrade the `dispatcher` schema in the database, one migration at a
    /// time, beside a running daemon and enrollment flow (README, "Upgrading").
    Migrate {
        /// The longest a migration waits for a table's lock (behind a long transaction)
        /// before it rolls back and tries again; the inserts into that table wait behind
        /// it meanwhile. 0 waits as long as it takes.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        lock_timeout: Duration,
        /// How many times a migration that could not take its lock is tried again, after
        /// pauses of 1s, 2s, 4s..., before `migrate` gives up.
        #[arg(long, default_value_t = 3)]
        lock_retries: usize,
    },
    /// Run the daemon until SIGTERM or SIGINT; SIGHUP re-reads the configuration.
    Run,
    /// Validate the configuration and print each partner's routes. Looks up partners' host
    /// names to warn about addresses the destination guard refuses; connects to nothing
    /// unless --connect.
    Check {
        /// Also connect to every partner URL and token endpoint as a delivery would (DNS,
        /// destination guard, TCP, TLS, OAuth token), sending no event; exit 1 if any fails.
        #[arg(long)]
        connect: bool,
    },
    /// Erase event bodies and partners' answers past `[retention] payload_days`, delete
    /// deliveries and events past `metadata_days` (the daemon does this by itself too).
    Prune,
    /// Review and act on deliveries (for support). Reads only `[database]` of the config
    /// file: no partner's secret is needed.
    Deliveries {
        /// The database to read, instead of `[database] url` (and of
        /// DISPATCHER_DATABASE_URL); then the config file may be absent.
        #[arg(long, global = true, value_name = "URL")]
        database_url: Option<String>,
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// Personal API tokens for scripts: create (shown once), list, revoke.
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
    /// The audit trail: sign-ins, reads of partners' answers, every action.
    Audit(tokens::AuditCommand),
    /// Setting up PostgreSQL: the roles' grants.
    #[command(subcommand)]
    Db(db::DbCommand),
}

/// What `dispatcher migrate` did: the migrations it applied, and the version now.
pub fn migrated(applied: &[i32], out: &mut impl Write) -> io::Result<()> {
    let version = schema::latest_version();
    if applied.is_empty() {
        writeln!(out, "database schema is up to date (version {version})")
    } else {
        writeln!(
            out,
            "applied migrations {applied:?}; schema is at version {version}"
        )
    }
}
