//! `dispatcher`: wires the command line to the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use dispatcher::cli::{self, check, deliveries, Cli, Command};
use dispatcher::config::{Config, LogFormat, LOG_FORMAT_ENV};
use dispatcher::daemon;
use dispatcher::observe::logging;
use dispatcher::observe::traces::Traces;
use dispatcher::shutdown::Shutdown;
use dispatcher::store::{db, retention, schema};

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
            let pool = db::pool(&config.database, config.database.pool_limits())?;
            let mut client = pool.get().await.context("connecting to the database")?;
            let applied = schema::migrate(&mut client).await?;
            cli::migrated(&applied, &mut std::io::stdout().lock())?;
        }
        Command::Run => daemon::run(config, &cli.config).await?,
        Command::Prune => {
            let pool = db::pool(&config.database, config.database.pool_limits())?;
            let client = pool.get().await.context("connecting to the database")?;
            schema::ensure_current(&client).await?;
            drop(client);
            let report = retention::prune(&pool, &config.retention, &Shutdown::new()).await?;
            println!("{report}");
        }
        Command::Deliveries(command) => {
            let pool = db::pool(&config.database, config.database.pool_limits())?;
            let mut client = pool.get().await.context("connecting to the database")?;
            schema::ensure_current(&client).await?;
            deliveries::run(command, &mut client, &mut std::io::stdout().lock()).await?;
        }
    }
    Ok(())
}
