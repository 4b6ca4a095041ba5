//! `dispatcher-bench`: the dispatcher's benchmark (issues 6 and 13). Run it through
//! `scripts/bench`, which builds the binaries, starts a throwaway PostgreSQL and nginx
//! (the fast partner) on 127.0.0.1 and passes their addresses in the environment.
//!
//! Every scenario runs the real `dispatcher` binary as a child process against fresh
//! databases, prints one table of figures (each the median of `--runs` runs, with the
//! targets of issues 6 and 13) and writes the same figures as JSON, with a calibration
//! of the machine.

mod baseline;
mod calibration;
mod daemon;
mod database;
mod held_partner;
mod history;
mod notifications;
mod procfs;
mod producer;
mod producers;
mod queue_only;
mod receiver;
mod report;
mod scenarios;
mod table_health;
mod waiting_backlog;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::database::Cluster;
use crate::procfs::ProcessTree;
use crate::report::ScenarioResult;
use crate::scenarios::{Bench, Nginx, Sizes};
use crate::table_health::HealthOptions;

#[derive(Parser)]
#[command(about = "Benchmarks the dispatcher; run it through scripts/bench")]
struct Cli {
    /// The dispatcher binary to measure.
    #[arg(long, default_value = "target/release/dispatcher")]
    dispatcher: PathBuf,
    /// Where results.json, the daemons' logs and configurations go.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
    /// Tiny sizes, seconds in all: keeps the benchmark working (CI); figures mean nothing.
    #[arg(long, global = true)]
    smoke: bool,
    /// Runs of each scenario; each figure is the median (default 3, 1 with --smoke).
    #[arg(long)]
    runs: Option<usize>,
    /// Only this scenario (repeatable): drain, stream-1000, stream-5000 (or `stream` for
    /// both), idle, deep-backlog, slow-partner, ordering, two-daemons, baseline,
    /// producer, producer-end-to-end (`producer` selects both), held-partner,
    /// waiting-backlog, history; with
    /// --smoke also table-health (otherwise a mode of its own: `table-health`).
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// Multiplies every scenario's event count (e.g. 0.1 for a quick look).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// The `history` scenario's archived deliveries, instead of 9,000,000 times --scale
    /// (issue 22's large history: 99000000 beside the live 1,000,000).
    #[arg(long, value_name = "N")]
    history_archived: Option<u64>,
    /// A superuser URL of the PostgreSQL server (scripts/with-postgres sets it).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The fast partner: nginx answering the contract's 200 (scripts/bench starts it).
    #[arg(long, env = "BENCH_NGINX_URL")]
    nginx_url: String,
    /// nginx's master process, to count its CPU.
    #[arg(long, env = "BENCH_NGINX_PID")]
    nginx_pid: Option<u32>,
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Subcommand)]
enum Mode {
    /// Sustained load with retention pruning on: table and index sizes over time.
    TableHealth(HealthArgs),
}

#[derive(Args, Clone)]
struct HealthArgs {
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Events per second, one per transaction.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Seconds a delivery's rows are kept after it ended (the compressed metadata_days).
    #[arg(long, default_value_t = 120)]
    keep_seconds: u64,
    /// Seconds between two size samples.
    #[arg(long, default_value_t = 60)]
    sample_seconds: u64,
    /// The daemon's retention.prune_interval, in seconds.
    #[arg(long, default_value_t = 10)]
    prune_interval_seconds: u64,
    /// Patient ids cycle through this many.
    #[arg(long, default_value_t = 100_000)]
    patients: u64,
    /// Leave PostgreSQL's autovacuum defaults (the recommended settings are applied
    /// otherwise), to compare.
    #[arg(long)]
    default_autovacuum: bool,
}

impl HealthArgs {
    fn options(&self, smoke: bool) -> HealthOptions {
        if smoke {
            return HealthOptions {
                recommended_autovacuum: !self.default_autovacuum,
                ..HealthOptions::smoke()
            };
        }
        HealthOptions {
            duration: Duration::from_secs_f64(self.minutes * 60.0),
            rate: self.rate,
            keep: Duration::from_secs(self.keep_seconds),
            sample_every: Duration::from_secs(self.sample_seconds.max(1)),
            prune_interval: Duration::from_secs(self.prune_interval_seconds.max(1)),
            patients: self.patients,
            recommended_autovacuum: !self.default_autovacuum,
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut sizes = if cli.smoke {
        Sizes::smoke()
    } else {
        Sizes::full(cli.scale)
    };
    if let Some(archived) = cli.history_archived {
        sizes.history_archived = archived;
    }
    let runs = cli.runs.unwrap_or(if cli.smoke { 1 } else { 3 }).max(1);
    let known = sizes.scenario_names();
    let (names, health): (Vec<String>, Option<HealthOptions>) = match &cli.mode {
        Some(Mode::TableHealth(args)) => (Vec::new(), Some(args.options(cli.smoke))),
        None if cli.scenarios.is_empty() => (
            known.clone(),
            // The long table-health run is a mode of its own; the smoke run includes a
            // tiny one so it keeps working.
            cli.smoke.then(HealthOptions::smoke),
        ),
        None => {
            let mut names = Vec::new();
            let mut health = None;
            for wanted in &cli.scenarios {
                if wanted == "table-health" && cli.smoke {
                    health = Some(HealthOptions::smoke());
                    continue;
                }
                let matching: Vec<&String> = known
                    .iter()
                    .filter(|name| *name == wanted || name.starts_with(&format!("{wanted}-")))
                    .collect();
                if matching.is_empty() {
                    bail!(
                        "no scenario `{wanted}`; the scenarios are {} (and, as a mode of its own, table-health)",
                        known.join(", ")
                    );
                }
                names.extend(matching.into_iter().cloned());
            }
            (names, health)
        }
    };

    if !cli.dispatcher.exists() {
        bail!(
            "{} not found: build it first (scripts/bench does)",
            cli.dispatcher.display()
        );
    }
    let cluster = Cluster::connect(&cli.database_url).await?;
    let nginx = Nginx {
        base_url: cli.nginx_url.trim_end_matches('/').to_string(),
        server: cli.nginx_pid.map(ProcessTree::new).transpose()?,
        http: reqwest::Client::new(),
    };
    let work_dir = cli.out_dir.join(if cli.smoke { "smoke" } else { "work" });
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let load_before = procfs::load_average();
    let bench = Bench {
        cluster,
        dispatcher: cli.dispatcher.clone(),
        nginx,
        work_dir,
        sizes: sizes.clone(),
    };
    let calibration = calibration::calibrate(
        &bench.cluster,
        sizes.calibration_iterations,
        sizes.pgbench_seconds,
    )
    .await
    .context("calibrating the machine")?;
    eprintln!("bench: {}", calibration.describe());
    if !bench.cluster.has_statement_stats {
        eprintln!("bench: pg_stat_statements is not preloaded: no claim times (scripts/bench loads it when the server has it)");
    }

    let mut results: Vec<ScenarioResult> = names
        .iter()
        .map(|name| ScenarioResult {
            name: name.clone(),
            ..ScenarioResult::default()
        })
        .collect();
    for run in 1..=runs {
        for result in &mut results {
            eprintln!("bench: {} (run {run} of {runs})", result.name);
            let metrics = bench
                .run_scenario(&result.name)
                .await
                .with_context(|| format!("scenario {}", result.name))?;
            if let Some(first) = metrics.first() {
                eprintln!(
                    "bench: {}: {} {} {}",
                    result.name,
                    first.name,
                    report::number(first.value),
                    first.unit
                );
            }
            result.runs.push(metrics);
        }
    }
    if let Some(options) = &health {
        let mut result = ScenarioResult {
            name: "table-health".into(),
            ..ScenarioResult::default()
        };
        eprintln!(
            "bench: table-health: {} events/s for {:?}",
            options.rate, options.duration
        );
        let (metrics, detail) = bench.table_health(options).await.context("table-health")?;
        result.runs.push(metrics);
        result.detail = Some(detail);
        results.push(result);
    }

    let table = format!("{}{}\n", report::table(&results), calibration.describe());
    println!("{table}");
    let context = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "smoke": cli.smoke,
        "runs": runs,
        "sizes": format!("{sizes:?}"),
        "machine": {
            "cpus": std::thread::available_parallelism().map_or(0, usize::from),
            "cpu_model": procfs::cpu_model(),
            "memory_gib": procfs::memory_gib(),
            "kernel": procfs::kernel(),
            "postgres": bench.cluster.version,
            "pg_stat_statements": bench.cluster.has_statement_stats,
            "load_average_1m_before": load_before,
            "load_average_1m_after": procfs::load_average(),
        },
        "calibration": calibration.json(),
        "finished_unix": daemon::unix_now(),
    });
    let name = match (&cli.mode, cli.smoke) {
        (Some(Mode::TableHealth(_)), false) => "table-health.json",
        (Some(Mode::TableHealth(_)), true) => "table-health-smoke.json",
        (None, false) => "results.json",
        (None, true) => "results-smoke.json",
    };
    let path = cli.out_dir.join(name);
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&report::json(&results, context))?,
    )
    .with_context(|| format!("writing {}", path.display()))?;
    std::fs::write(path.with_extension("txt"), &table)?;
    eprintln!("bench: figures written to {}", path.display());
    Ok(())
}
