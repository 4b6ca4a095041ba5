//! `dispatcher`: wires the command line to the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use dispatcher::admin::AdminServer;
use dispatcher::cli::{self, check, deliveries, Cli, Command};
use dispatcher::config::live::LiveConfig;
use dispatcher::config::{Config, LogFormat, LOG_FORMAT_ENV};
use dispatcher::daemon::Dispatcher;
use dispatcher::observe::logging;
use dispatcher::observe::metrics::Metrics;
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
        Command::Check => {
            check::describe(&config, &cli.config, &mut std::io::stdout().lock()).await?;
        }
        Command::Migrate => {
            let pool = db::pool(&config.database)?;
            let mut client = pool.get().await.context("connecting to the database")?;
            let applied = schema::migrate(&mut client).await?;
            cli::migrated(&applied, &mut std::io::stdout().lock())?;
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
            deliveries::run(command, &mut client, &mut std::io::stdout().lock()).await?;
        }
    }
    Ok(())
}
