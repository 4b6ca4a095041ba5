//! `dispatcher`: wires the command line to the library.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use dispatcher::cli::{self, check, deliveries, Cli, Command};
use dispatcher::config::{Config, DatabaseConfig, LogFormat, SupportConfig, LOG_FORMAT_ENV};
use dispatcher::daemon;
use dispatcher::observe::logging;
use dispatcher::observe::traces::Traces;
use dispatcher::shutdown::Shutdown;
use dispatcher::store::schema::MigrateOptions;
use dispatcher::store::{db, retention, schema};

#[tokio::main]
async fn main() -> ExitCode {
    // Test builds only: reads the fail points to trigger from FAILPOINTS.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    // Prints SQL from its flags alone: no configuration, no database.
    if let Command::Db(command) = cli.command {
        return match cli::db::run(command, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("Error: {error:?}");
                ExitCode::FAILURE
            }
        };
    }
    // Support's reads need the database only, not every partner's secrets.
    if let Command::Deliveries {
        database_url,
        command,
    } = cli.command
    {
        let env_format = std::env::var(LOG_FORMAT_ENV).ok();
        let format = LogFormat::chosen(LogFormat::Text, env_format.as_deref());
        let in_effect = *format.as_ref().unwrap_or(&LogFormat::Text);
        logging::init(in_effect, None);
        let result = match format {
            Ok(_) => support(&cli.config, database_url, command).await,
            Err(error) => Err(error.into()),
        };
        return exit(result, in_effect);
    }
    // The log format is in the file, so logging starts once it is read.
    let config = Config::load(&cli.config)
        .with_context(|| format!("invalid configuration {}", cli.config.display()));
    let configured = config.as_ref().map_or(LogFormat::Text, |c| c.log.format);
    let env_format = std::env::var(LOG_FORMAT_ENV).ok();
    let format = LogFormat::chosen(configured, env_format.as_deref());
    let in_effect = *format.as_ref().unwrap_or(&configured);
    // Only the daemon's spans are exported (`[telemetry]`); the other commands make none.
    let traces = match (&config, &cli.command) {
        (Ok(config), Command::Run) => config.telemetry.as_ref().map(Traces::start).transpose(),
        _ => Ok(None),
    };
    logging::init(in_effect, traces.as_ref().ok().and_then(Option::as_ref));
    let result = match (config, format, traces) {
        (Ok(config), Ok(_), Ok(traces)) => {
            let result = run(cli, config).await;
            if let Some(traces) = traces {
                traces.stop();
            }
            result
        }
        (Err(error), _, _) => Err(error),
        (_, Err(error), _) => Err(error.into()),
        (_, _, Err(error)) => Err(error.into()),
    };
    exit(result, in_effect)
}

fn exit(result: anyhow::Result<()>, format: LogFormat) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            match format {
                LogFormat::Text => eprintln!("Error: {error:?}"),
                LogFormat::Json => {
                    tracing::error!(error = format!("{error:#}"), "dispatcher failed")
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// `dispatcher deliveries …`: `[database]` of the file (or `--database-url`) and
/// `[support]` (list and show read its standby), nothing else.
async fn support(
    config: &Path,
    database_url: Option<String>,
    command: deliveries::DeliveriesCommand,
) -> anyhow::Result<()> {
    let invalid = || format!("invalid configuration {}", config.display());
    let database = DatabaseConfig::load(config, database_url).with_context(invalid)?;
    let support = SupportConfig::load(config).with_context(invalid)?;
    // The schema is checked on the primary, where the writes go.
    let (primary, mut client) = connected(&database).await?;
    let standby = support
        .standby
        .as_ref()
        .map(|standby| db::standby_pool(standby, standby.pool_limits()))
        .transpose()?;
    let readers = deliveries::Readers { primary, standby };
    deliveries::run(
        command,
        &mut client,
        &readers,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
    .await
}

/// A connection to a database that has every migration this binary knows, and the pool
/// it came from: what each command but `migrate` and `run` starts with. The connect
/// error is worded by `DbError`, so no driver error (whose chain can print a DETAIL)
/// reaches the message.
async fn connected(database: &DatabaseConfig) -> anyhow::Result<(db::Pool, db::Client)> {
    let pool = db::pool(database, database.pool_limits())?;
    let client = pool
        .get()
        .await
        .map_err(db::DbError::from)
        .context("connecting to the database")?;
    schema::ensure_current(&client).await?;
    Ok((pool, client))
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { connect } => {
            check::describe(&config, &cli.config, &mut std::io::stdout().lock()).await?;
            if connect {
                check::connect(&config, &mut std::io::stdout().lock()).await?;
            }
        }
        Command::Migrate {
            lock_timeout,
            lock_retries,
        } => {
            let pool = db::pool(&config.database, config.database.pool_limits())?;
            let options = MigrateOptions {
                lock_timeout,
                lock_retries,
            };
            let applied = schema::migrate(&pool, &options).await?;
            cli::migrated(&applied, &mut std::io::stdout().lock())?;
        }
        Command::Run => daemon::run(config, &cli.config).await?,
        Command::Prune => {
            let (pool, client) = connected(&config.database).await?;
            drop(client);
            let report = retention::prune(&pool, &config.retention, &Shutdown::new()).await?;
            println!("{report}");
        }
        Command::Deliveries {
            database_url,
            command,
        } => support(&cli.config, database_url, command).await?,
        Command::Tokens(command) => {
            let (_, client) = connected(&config.database).await?;
            cli::tokens::run(command, &client, &mut std::io::stdout().lock()).await?;
        }
        Command::Audit(command) => {
            let (_, client) = connected(&config.database).await?;
            cli::tokens::audit(command, &client, &mut std::io::stdout().lock()).await?;
        }
        Command::Db(_) => unreachable!("handled before the configuration is read"),
    }
    Ok(())
}
