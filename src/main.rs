//! `dispatcher`: wires the command line to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use uuid::Uuid;

use dispatcher::admin::AdminServer;
use dispatcher::cli::{check, deliveries as support};
use dispatcher::config::live::LiveConfig;
use dispatcher::config::{Config, LogFormat, LOG_FORMAT_ENV};
use dispatcher::daemon::Dispatcher;
use dispatcher::delivery::state;
use dispatcher::observe::logging;
use dispatcher::observe::metrics::Metrics;
use dispatcher::shutdown::Shutdown;
use dispatcher::store::support::DeliveryFilter;
use dispatcher::store::{db, resend, retention, schema};

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
    /// Review and act on deliveries (for support).
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// List deliveries, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Continue after this delivery id (the last of the previous page).
        #[arg(long)]
        after: Option<Uuid>,
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
    /// Send deliveries again (back to pending, with a fresh set of attempts): the ids
    /// given, or every delivery the filter selects (failed ones unless --state says
    /// otherwise).
    Retry {
        ids: Vec<Uuid>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Stop deliveries for good.
    Cancel {
        #[arg(required = true)]
        ids: Vec<Uuid>,
    },
}

/// Selects deliveries by what they are.
#[derive(clap::Args)]
struct FilterArgs {
    /// pending (with in_flight), in_flight, delivered, rejected, dead, invalid, cancelled,
    /// unrouted, or failed (rejected, dead, invalid, unrouted).
    #[arg(long)]
    state: Option<String>,
    #[arg(long)]
    partner: Option<String>,
    #[arg(long)]
    event_name: Option<String>,
    #[arg(long = "patient")]
    patient_id: Option<String>,
    /// Created at or after this time (RFC 3339, e.g. 2026-11-25T09:00:00Z).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Created before this time (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
}

impl FilterArgs {
    fn is_empty(&self) -> bool {
        self.state.is_none()
            && self.partner.is_none()
            && self.event_name.is_none()
            && self.patient_id.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }

    fn into_filter(self, ids: Option<Vec<Uuid>>) -> anyhow::Result<DeliveryFilter> {
        Ok(DeliveryFilter {
            ids,
            states: self
                .state
                .as_deref()
                .map(state::parse_states)
                .transpose()
                .context("--state")?,
            partner: self.partner,
            event_name: self.event_name,
            patient_id: self.patient_id,
            since: self.since,
            until: self.until,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Test builds only: reads the fail points to trigger from FAILPOINTS.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    // The log format is in the file, so logging starts once it is read.
    let config = Config::load(&cli.config)
        .with_context(|| format!("invalid configuration {}", cli.config.display()));
    let configured = config.as_ref().map_or(LogFormat::Text, |c| c.log.format);
    let env_format = std::env::var(LOG_FORMAT_ENV).ok();
    let format = LogFormat::chosen(configured, env_format.as_deref());
    let in_effect = *format.as_ref().unwrap_or(&configured);
    logging::init(in_effect);
    let result = match (config, format) {
        (Ok(config), Ok(_)) => run(cli, config).await,
        (Err(error), _) => Err(error),
        (_, Err(error)) => Err(error.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            match in_effect {
                LogFormat::Text => eprintln!("Error: {error:?}"),
                LogFormat::Json => {
                    tracing::error!(error = format!("{error:#}"), "dispatcher failed")
                }
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { connect } => {
            check::describe(&config, &cli.config, &mut std::io::stdout().lock()).await?;
            if connect {
                check::connect(&config, &mut std::io::stdout().lock()).await?;
            }
        }
        Command::Migrate => {
            let pool = db::pool(&config.database)?;
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
            // Signals first, so a SIGTERM or SIGHUP during start-up is handled too.
            let shutdown = Shutdown::new();
            let grace = config.dispatch.shutdown_grace;
            tokio::spawn(
                shutdown
                    .clone()
                    .on_signals(grace)
                    .context("installing signal handlers")?,
            );
            let live = LiveConfig::new(config, &cli.config);
            tokio::spawn(
                live.clone()
                    .on_reload_signal()
                    .context("installing the SIGHUP handler")?,
            );
            let pool = db::pool(&live.snapshot().database)?;
            let client = tokio::select! {
                client = pool.get() => client.context("connecting to the database")?,
                () = shutdown.stopping() => return Ok(()),
            };
            schema::ensure_current(&client).await?;
            drop(client);
            let metrics = Metrics::new(live.clone());
            let admin = &live.snapshot().admin;
            let admin = AdminServer::bind(admin, pool.clone(), metrics.clone())
                .await
                .with_context(|| format!("starting the admin server on {}", admin.listen))?;
            let admin = tokio::spawn(admin.serve(shutdown.clone()));
            tracing::info!(
                partners = live.snapshot().partners.len(),
                "dispatcher running"
            );
            Dispatcher::new(live, pool, shutdown, metrics)?
                .run()
                .await?;
            admin.abort();
        }
        Command::Prune => {
            let pool = db::pool(&config.database)?;
            let client = pool.get().await.context("connecting to the database")?;
            schema::ensure_current(&client).await?;
            drop(client);
            let report = retention::prune(&pool, &config.retention, &Shutdown::new()).await?;
            println!("{report}");
        }
        Command::Deliveries(command) => {
            let pool = db::pool(&config.database)?;
            let mut client = pool.get().await.context("connecting to the database")?;
            schema::ensure_current(&client).await?;
            let mut out = std::io::stdout().lock();
            match command {
                DeliveriesCommand::List {
                    filter,
                    after,
                    limit,
                    json,
                } => {
                    let filter = filter.into_filter(None)?;
                    support::list(&client, &filter, after, limit, json, &mut out).await?;
                }
                DeliveriesCommand::Show { id, json } => {
                    support::show(&client, id, json, &mut out).await?
                }
                DeliveriesCommand::Retry { ids, filter } => {
                    if ids.is_empty() && filter.is_empty() {
                        bail!("name the deliveries to resend by id, or select them with --state, --partner, --event-name, --patient, --since or --until");
                    }
                    let selection = if ids.is_empty() {
                        resend::failed_unless_stated(filter.into_filter(None)?)
                    } else {
                        filter.into_filter(Some(ids))?
                    };
                    support::retry(&mut client, &selection, &mut out).await?
                }
                DeliveriesCommand::Cancel { ids } => {
                    support::cancel(&client, &ids, &mut out).await?
                }
            }
        }
    }
    Ok(())
}
