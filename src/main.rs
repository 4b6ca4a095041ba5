//! `dispatcher`: wires the command line to the library.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use uuid::Uuid;

use dispatcher::config::Config;
use dispatcher::dispatch::Dispatcher;
use dispatcher::shutdown::Shutdown;
use dispatcher::{db, logging, retention, schema, support};

#[derive(Parser)]
#[command(
    name = "dispatcher",
    version,
    about = "Delivers HelpAround outbox events to partner webhooks"
)]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, default_value = "dispatcher.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or upgrade the `dispatcher` schema in the database.
    Migrate,
    /// Run the daemon until SIGTERM or SIGINT.
    Run,
    /// Erase event bodies and partners' answers past `[retention] payload_days`, delete
    /// deliveries and events past `metadata_days` (the daemon does this by itself too).
    Prune,
    /// Review and act on deliveries (for support).
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// List deliveries, newest first.
    List {
        /// pending, in_flight, delivered, rejected, dead, invalid, cancelled, unrouted, or
        /// failed (= rejected, dead, invalid, unrouted).
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        partner: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Show one delivery with every attempt and the partner's answers.
    Show {
        id: Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Send deliveries again (back to pending, with a fresh set of attempts).
    Retry {
        #[arg(required = true)]
        ids: Vec<Uuid>,
    },
    /// Stop deliveries for good.
    Cancel {
        #[arg(required = true)]
        ids: Vec<Uuid>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logging::init();
    let cli = Cli::parse();
    let config = Config::load(&cli.config)
        .with_context(|| format!("invalid configuration {}", cli.config.display()))?;
    let pool = db::pool(&config.database)?;
    match cli.command {
        Command::Migrate => {
            let mut client = pool.get().await.context("connecting to the database")?;
            let applied = schema::migrate(&mut client).await?;
            if applied.is_empty() {
                println!(
                    "database schema is up to date (version {})",
                    schema::latest_version()
                );
            } else {
                println!(
                    "applied migrations {applied:?}; schema is at version {}",
                    schema::latest_version()
                );
            }
        }
        Command::Run => {
            // Signals first, so a SIGTERM during start-up is a clean stop too.
            let shutdown = Shutdown::new();
            let grace = config.dispatch.shutdown_grace;
            tokio::spawn(
                shutdown
                    .clone()
                    .on_signals(grace)
                    .context("installing signal handlers")?,
            );
            let client = tokio::select! {
                client = pool.get() => client.context("connecting to the database")?,
                () = shutdown.stopping() => return Ok(()),
            };
            schema::ensure_current(&client).await?;
            drop(client);
            tracing::info!(partners = config.partners.len(), "dispatcher running");
            Dispatcher::new(Arc::new(config), pool, shutdown)?
                .run()
                .await?;
        }
        Command::Prune => {
            let client = pool.get().await.context("connecting to the database")?;
            schema::ensure_current(&client).await?;
            drop(client);
            let report = retention::prune(&pool, &config.retention, &Shutdown::new()).await?;
            println!("{report}");
        }
        Command::Deliveries(command) => {
            let mut client = pool.get().await.context("connecting to the database")?;
            schema::ensure_current(&client).await?;
            let mut out = std::io::stdout().lock();
            match command {
                DeliveriesCommand::List {
                    state,
                    partner,
                    limit,
                    json,
                } => {
                    let states = state
                        .as_deref()
                        .map(support::parse_state_filter)
                        .transpose()?;
                    support::list(
                        &client,
                        states.as_deref(),
                        partner.as_deref(),
                        limit,
                        json,
                        &mut out,
                    )
                    .await?;
                }
                DeliveriesCommand::Show { id, json } => {
                    support::show(&client, id, json, &mut out).await?
                }
                DeliveriesCommand::Retry { ids } => {
                    support::retry(&mut client, &ids, &mut out).await?
                }
                DeliveriesCommand::Cancel { ids } => {
                    support::cancel(&client, &ids, &mut out).await?
                }
            }
        }
    }
    Ok(())
}
