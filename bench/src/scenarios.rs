//! The scenarios of issue 6 (issue 13's are in `producers` and `held_partner`, and the
//! queue-only leg of `baseline` in `queue_only`). Each one works on fresh databases of
//! its own, runs the real daemon, and reports its figures with the CPU seconds of the
//! daemon, of PostgreSQL and of the partner, the WAL written, and the daemon's peak RSS.
//!
//! Throughput is deliveries recorded delivered divided by the time from starting the
//! daemon to the last of them being recorded (`ended_at`, PostgreSQL's clock, which is
//! the machine's). PostgreSQL's CPU excludes the backends of the benchmark's own
//! connections (progress polls, the producer's inserts).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::daemon::{self, Daemon, PartnerSite};
use crate::database::{self, BenchDb, Cluster, Patients};
use crate::procfs::{self, ProcessTree};
use crate::producer::Producer;
use crate::receiver::Receiver;
use crate::report::{Metric, Target};

/// How big each scenario is.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub drain_events: u64,
    pub stream_rates: Vec<u64>,
    pub stream_seconds: u64,
    pub idle_seconds: u64,
    pub deep_small: u64,
    pub deep_large: u64,
    /// Deliveries timed out of each deep backlog.
    pub deep_window: u64,
    pub slow_events: u64,
    /// How long the fast partner is given beside the slow one.
    pub slow_cap: Duration,
    pub ordering_events: u64,
    pub two_daemon_events: u64,
    pub baseline_events: u64,
    pub baseline_workers: usize,
    /// How long each leg of the producer scenario commits, and how many times each leg
    /// runs (alternated) within one run.
    pub producer_seconds: f64,
    pub producer_rounds: usize,
    /// The producer scenario's legs in bursts: events per burst, and bursts per leg.
    pub producer_burst_events: u64,
    pub producer_bursts: usize,
    /// Events the end-to-end scenario's producers commit, and the drain it is compared with.
    pub end_to_end_events: u64,
    /// The healthy partner's due deliveries, and the held partner's behind them.
    pub held_healthy: u64,
    pub held_backlog: u64,
    /// The healthy partner's events beside a partner back from an outage, and that
    /// partner's patients, each with this many events (the first in backoff, the rest
    /// waiting behind it).
    pub waiting_healthy: u64,
    pub waiting_patients: u64,
    pub waiting_each: u64,
    /// The partner's due deliveries, the ended ones kept beside them in the live tables
    /// (younger than `payload_days`), and those in the archive (migration 0025).
    pub history_backlog: u64,
    pub history_rows: u64,
    pub history_archived: u64,
    /// The machine's calibration: iterations of the CPU loop, seconds of `pgbench -S`.
    pub calibration_iterations: u64,
    pub pgbench_seconds: u64,
    /// A run that has not finished by then failed.
    pub deadline: Duration,
}

impl Sizes {
    /// The sizes of issue 6, scaled by `scale` (event counts only).
    pub fn full(scale: f64) -> Sizes {
        let n = |count: f64| ((count * scale).round() as u64).max(100);
        Sizes {
            drain_events: n(100_000.0),
            stream_rates: vec![1_000, 5_000],
            stream_seconds: 20,
            idle_seconds: 60,
            deep_small: n(10_000.0),
            deep_large: n(1_000_000.0),
            deep_window: n(10_000.0),
            slow_events: n(20_000.0),
            slow_cap: Duration::from_secs(60),
            ordering_events: n(50_000.0),
            two_daemon_events: n(50_000.0),
            baseline_events: n(50_000.0),
            baseline_workers: 32,
            producer_seconds: 10.0,
            producer_rounds: 2,
            producer_burst_events: 200,
            producer_bursts: 40,
            end_to_end_events: n(20_000.0),
            held_healthy: n(10_000.0),
            held_backlog: n(1_000_000.0),
            waiting_healthy: n(10_000.0),
            waiting_patients: n(5_000.0),
            waiting_each: 10,
            history_backlog: n(10_000.0),
            history_rows: n(1_000_000.0),
            history_archived: n(9_000_000.0),
            calibration_iterations: 500_000_000,
            pgbench_seconds: 5,
            deadline: Duration::from_secs(900),
        }
    }

    /// Seconds, not minutes: keeps the benchmark working in CI (figures mean nothing).
    pub fn smoke() -> Sizes {
        Sizes {
            drain_events: 1_000,
            stream_rates: vec![100, 500],
            stream_seconds: 2,
            idle_seconds: 3,
            deep_small: 500,
            deep_large: 5_000,
            deep_window: 500,
            slow_events: 300,
            slow_cap: Duration::from_secs(10),
            ordering_events: 1_000,
            two_daemon_events: 1_000,
            baseline_events: 1_000,
            baseline_workers: 8,
            producer_seconds: 1.0,
            producer_rounds: 1,
            producer_burst_events: 20,
            producer_bursts: 3,
            end_to_end_events: 300,
            held_healthy: 200,
            held_backlog: 2_000,
            waiting_healthy: 200,
            waiting_patients: 100,
            waiting_each: 10,
            history_backlog: 200,
            history_rows: 2_000,
            history_archived: 20_000,
            calibration_iterations: 20_000_000,
            pgbench_seconds: 1,
            deadline: Duration::from_secs(120),
        }
    }

    /// Every scenario's name, in the order they run.
    pub fn scenario_names(&self) -> Vec<String> {
        let mut names = vec!["drain".to_string()];
        names.extend(
            self.stream_rates
                .iter()
                .map(|rate| format!("stream-{rate}")),
        );
        names.extend(
            [
                "idle",
                "deep-backlog",
                "slow-partner",
                "ordering",
                "two-daemons",
                "baseline",
                "producer",
                "producer-end-to-end",
                "held-partner",
                "waiting-backlog",
                "history",
            ]
            .map(String::from),
        );
        names
    }
}

/// The fast partner: nginx answering the contract's 200, started by scripts/bench.
pub struct Nginx {
    pub base_url: String,
    pub server: Option<ProcessTree>,
    pub http: reqwest::Client,
}

impl Nginx {
    /// Requests nginx has handled so far (`stub_status`), this one included.
    async fn requests(&self) -> Result<u64> {
        let text = self
            .http
            .get(format!("{}/nginx_status", self.base_url))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .context("reading nginx's stub_status (scripts/bench configures it)")?
            .text()
            .await?;
        // "Active connections: 1\nserver accepts handled requests\n 12 12 34\n..."
        text.lines()
            .nth(2)
            .and_then(|line| line.split_whitespace().nth(2))
            .and_then(|requests| requests.parse().ok())
            .with_context(|| format!("unexpected stub_status: {text}"))
    }
}

/// Which partner's requests tell a run's progress: counting them costs nothing, unlike
/// asking the database (whose CPU is being measured) every 100 ms.
#[derive(Clone, Copy)]
pub(crate) enum Arrivals<'a> {
    Nginx,
    Receiver(&'a Receiver),
}

/// Requests that reached the partner since it was started.
pub(crate) struct ArrivalCounter<'a> {
    arrivals: Arrivals<'a>,
    start: u64,
    polls: u64,
}

impl<'a> ArrivalCounter<'a> {
    pub(crate) async fn start(bench: &Bench, arrivals: Arrivals<'a>) -> Result<ArrivalCounter<'a>> {
        let start = match arrivals {
            Arrivals::Nginx => bench.nginx.requests().await?,
            Arrivals::Receiver(receiver) => receiver.distinct() as u64,
        };
        Ok(ArrivalCounter {
            arrivals,
            start,
            polls: 0,
        })
    }

    pub(crate) async fn count(&mut self, bench: &Bench) -> Result<u64> {
        Ok(match self.arrivals {
            Arrivals::Nginx => {
                self.polls += 1;
                let requests = bench.nginx.requests().await?;
                requests.saturating_sub(self.start + self.polls)
            }
            Arrivals::Receiver(receiver) => (receiver.distinct() as u64).saturating_sub(self.start),
        })
    }
}

/// Everything a scenario needs.
pub struct Bench {
    pub cluster: Cluster,
    pub dispatcher: PathBuf,
    pub nginx: Nginx,
    /// Daemon configurations and logs, and pg_stat_statements dumps.
    pub work_dir: PathBuf,
    pub sizes: Sizes,
}

/// CPU used by everything on the machine that the benchmark knows about, between two
/// samples.
pub(crate) struct CpuWindow {
    postgres: ProcessTree,
    nginx: Option<ProcessTree>,
    postgres_start: f64,
    nginx_start: f64,
    bench_start: f64,
    started: Instant,
}

pub(crate) struct CpuUsed {
    pub(crate) postgres: f64,
    pub(crate) nginx: f64,
    pub(crate) bench: f64,
    pub(crate) seconds: f64,
}

impl CpuWindow {
    pub(crate) fn open(bench: &Bench, excluded: &[u32]) -> CpuWindow {
        let mut postgres = bench.cluster.server.clone();
        postgres.forget_excluded();
        postgres.exclude(excluded.iter().copied());
        let nginx = bench.nginx.server.clone();
        CpuWindow {
            postgres_start: postgres.cpu_seconds(),
            nginx_start: nginx.as_ref().map_or(0.0, ProcessTree::cpu_seconds),
            bench_start: procfs::own_process_cpu_seconds(),
            postgres,
            nginx,
            started: Instant::now(),
        }
    }

    pub(crate) fn close(&self) -> CpuUsed {
        CpuUsed {
            postgres: self.postgres.cpu_seconds() - self.postgres_start,
            nginx: self
                .nginx
                .as_ref()
                .map_or(0.0, |n| n.cpu_seconds() - self.nginx_start),
            bench: procfs::own_process_cpu_seconds() - self.bench_start,
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// When a dispatcher run is over. Both wait for the partner to have received `expected`
/// requests first, then confirm in the database.
#[derive(Debug, Clone)]
pub(crate) enum Until {
    /// Every event routed and every delivery (to this partner, if named) ended.
    AllEnded {
        partner: Option<String>,
        expected: u64,
    },
    /// This many deliveries recorded delivered.
    Delivered(u64),
}

impl Until {
    /// Every delivery to `partner` ended, `expected` of them reaching the partner.
    pub(crate) fn ended_for(partner: &str, expected: u64) -> Until {
        Until::AllEnded {
            partner: Some(partner.into()),
            expected,
        }
    }

    pub(crate) fn all(expected: u64) -> Until {
        Until::AllEnded {
            partner: None,
            expected,
        }
    }

    fn expected(&self) -> u64 {
        match self {
            Until::AllEnded { expected, .. } => *expected,
            Until::Delivered(count) => *count,
        }
    }
}

/// A database migrated for the given partners, and the configuration the daemons use.
pub(crate) struct Setup {
    pub(crate) db: BenchDb,
    config: PathBuf,
    label: String,
}

/// What a dispatcher run measured.
pub(crate) struct RunOutcome {
    pub(crate) delivered: i64,
    seconds: f64,
    daemon_cpu: f64,
    peak_rss_mib: f64,
    cpu: CpuUsed,
    pub(crate) claim: Option<(f64, i64)>,
    /// The cluster's WAL over the run.
    wal_bytes: i64,
}

/// A two-leg scenario's figures as its legs run: each leg's metrics under its label, and
/// its rate and mean claim time, for the ratios of the second leg to the first.
#[derive(Default)]
pub(crate) struct Legs {
    metrics: Vec<Metric>,
    rates: Vec<f64>,
    claims: Vec<f64>,
}

impl Legs {
    /// A leg's run, its figures named `<label>.<figure>`.
    pub(crate) fn ran(&mut self, label: &str, outcome: &RunOutcome) {
        self.metrics.extend(outcome.metrics(label));
        self.rates.push(outcome.per_second());
        self.claims
            .push(outcome.claim.map_or(f64::NAN, |(mean, _)| mean));
    }

    /// A figure of the scenario's own.
    pub(crate) fn push(&mut self, metric: Metric) {
        self.metrics.push(metric);
    }

    /// Every figure, then the second leg against the first: the ratio of their rates,
    /// named `rate_name` and held to `target`, and of their mean claim times, named
    /// `claim_name`.
    pub(crate) fn second_to_first(
        mut self,
        rate_name: &str,
        claim_name: &str,
        target: Target,
    ) -> Vec<Metric> {
        self.against_first(1, rate_name, claim_name, target);
        self.metrics
    }

    /// The leg run `leg`-th (from 0) against the first: the ratio of their rates, named
    /// `rate_name` and held to `target`, and of their mean claim times, `claim_name`.
    pub(crate) fn against_first(
        &mut self,
        leg: usize,
        rate_name: &str,
        claim_name: &str,
        target: Target,
    ) {
        let ratio = |figures: &[f64]| match (figures.first(), figures.get(leg)) {
            (Some(first), Some(other)) => other / first,
            _ => f64::NAN,
        };
        self.metrics
            .push(Metric::new(rate_name, "x", ratio(&self.rates)).target(target));
        self.metrics
            .push(Metric::new(claim_name, "x", ratio(&self.claims)));
    }
}

/// WAL bytes per delivery, the figure every scenario reports next to its CPU.
pub(crate) fn wal_per_delivery(wal_bytes: i64, deliveries: f64) -> Metric {
    Metric::new(
        "wal_bytes_per_delivery",
        "B",
        wal_bytes as f64 / deliveries.max(1.0),
    )
}

impl RunOutcome {
    pub(crate) fn per_second(&self) -> f64 {
        self.delivered as f64 / self.seconds
    }

    /// The figures every throughput run reports, named `<prefix>.<figure>`.
    pub(crate) fn metrics(&self, prefix: &str) -> Vec<Metric> {
        let name = |figure: &str| {
            if prefix.is_empty() {
                figure.to_string()
            } else {
                format!("{prefix}.{figure}")
            }
        };
        let per_delivery = |cpu: f64| cpu * 1000.0 / self.delivered.max(1) as f64;
        let mut metrics = vec![
            Metric::new(name("deliveries_per_s"), "/s", self.per_second()),
            Metric::new(name("deliveries"), "", self.delivered as f64),
            Metric::new(name("seconds"), "s", self.seconds),
            Metric::new(name("daemon_cpu_s"), "s", self.daemon_cpu),
            Metric::new(name("postgres_cpu_s"), "s", self.cpu.postgres),
            Metric::new(name("partner_cpu_s"), "s", self.cpu.nginx),
            Metric::new(name("bench_cpu_s"), "s", self.cpu.bench),
            Metric::new(
                name("daemon_cpu_ms_per_delivery"),
                "ms",
                per_delivery(self.daemon_cpu),
            ),
            Metric::new(
                name("postgres_cpu_ms_per_delivery"),
                "ms",
                per_delivery(self.cpu.postgres),
            ),
            Metric {
                name: name("wal_bytes_per_delivery"),
                ..wal_per_delivery(self.wal_bytes, self.delivered as f64)
            },
            Metric::new(name("daemon_peak_rss_mib"), "MiB", self.peak_rss_mib),
        ];
        if let Some((mean_ms, calls)) = self.claim {
            metrics.push(Metric::new(name("claim_mean_ms"), "ms", mean_ms));
            metrics.push(Metric::new(name("claims"), "", calls as f64));
        }
        metrics
    }
}

impl Bench {
    pub async fn run_scenario(&self, name: &str) -> Result<Vec<Metric>> {
        if let Some(rate) = name.strip_prefix("stream-") {
            return self.stream(rate.parse().context("stream-<rate>")?).await;
        }
        match name {
            "drain" => self.drain().await,
            "idle" => self.idle().await,
            "deep-backlog" => self.deep_backlog().await,
            "slow-partner" => self.slow_partner().await,
            "ordering" => self.ordering().await,
            "two-daemons" => self.two_daemons().await,
            "baseline" => self.baseline().await,
            "producer" => self.producer().await,
            "producer-end-to-end" => self.end_to_end().await,
            "held-partner" => self.held_partner().await,
            "waiting-backlog" => self.waiting_backlog().await,
            "history" => self.history().await,
            other => bail!("no scenario `{other}`"),
        }
    }

    pub(crate) fn fast_partner(&self) -> PartnerSite {
        PartnerSite {
            name: "fast".into(),
            base_url: self.nginx.base_url.clone(),
            // nginx answers ~100,000 POSTs/s on loopback: ops would raise its limit, and
            // at the default 64 the drain is bound by it (about 4,300/s instead of 6,500/s).
            max_in_flight: Some(256),
        }
    }

    /// A fresh database, migrated by `dispatcher migrate` with the configuration the
    /// daemons will use.
    pub(crate) async fn setup(
        &self,
        label: &str,
        partners: &[PartnerSite],
        extra: &str,
    ) -> Result<Setup> {
        let db = self.cluster.create_database(label).await?;
        let text = daemon::config_text(&db.url, partners, &database::program(), extra);
        std::fs::create_dir_all(&self.work_dir)?;
        let config = self.work_dir.join(format!("{label}.toml"));
        std::fs::write(&config, text)?;
        daemon::migrate(&self.dispatcher, &config).await?;
        Ok(Setup {
            db,
            config,
            label: label.to_string(),
        })
    }

    /// A fresh database holding `events` pending deliveries to the fast partner, already
    /// routed (patients `<patients><n>`, one event each), vacuumed and analyzed.
    pub(crate) async fn pre_routed(
        &self,
        label: &str,
        events: u64,
        patients: &str,
    ) -> Result<Setup> {
        let setup = self.setup(label, &[self.fast_partner()], "").await?;
        setup
            .db
            .seed_routed_backlog("fast", events, Patients::Distinct, patients, Duration::ZERO)
            .await?;
        setup.db.settle().await?;
        Ok(setup)
    }

    pub(crate) fn start_daemon(
        &self,
        setup: &Setup,
        number: usize,
        rust_log: Option<&str>,
    ) -> Result<Daemon> {
        let log = self.work_dir.join(format!("{}-{number}.log", setup.label));
        Daemon::start(&self.dispatcher, &setup.config, &log, rust_log)
    }

    /// The statements that took PostgreSQL's time, for whoever profiles the daemon.
    pub(crate) async fn dump_statements(&self, setup: &Setup) -> Result<()> {
        let statements = setup.db.top_statements(&self.cluster, 25).await?;
        let path = self
            .work_dir
            .join(format!("{}-pg_stat_statements.tsv", setup.label));
        std::fs::write(&path, statements).with_context(|| format!("writing {}", path.display()))
    }

    pub(crate) async fn finish(&self, setup: Setup) -> Result<()> {
        self.cluster.drop_database(setup.db).await
    }

    /// Waits until `daemons` daemons listen for notifications: they are ready for events.
    pub(crate) async fn wait_listening(&self, setup: &Setup, daemons: &mut [Daemon]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let listening: i64 = setup
                .db
                .client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
                    &[],
                )
                .await?
                .get(0);
            if listening >= daemons.len() as i64 {
                return Ok(());
            }
            for daemon in daemons.iter_mut() {
                daemon.check_running()?;
            }
            if Instant::now() > deadline {
                bail!("the dispatcher did not start listening within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts `daemons` daemons on a seeded database and waits until `until`; with `cap`,
    /// stops at the cap instead of failing.
    pub(crate) async fn run_dispatcher(
        &self,
        setup: &Setup,
        daemons: usize,
        arrivals: Arrivals<'_>,
        until: Until,
        cap: Option<Duration>,
    ) -> Result<RunOutcome> {
        let db = &setup.db;
        db.reset_statement_stats(&self.cluster).await?;
        let mut counter = ArrivalCounter::start(self, arrivals).await?;
        let wal_start = self.cluster.wal_bytes().await?;
        let wal_from = self.cluster.wal_position().await?;
        let window = CpuWindow::open(self, &[db.backend]);
        let mut running = Vec::with_capacity(daemons);
        for number in 0..daemons {
            running.push(self.start_daemon(setup, number, None)?);
        }
        let started_unix = running[0].started_unix;
        let limit = cap.unwrap_or(self.sizes.deadline);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for daemon in &mut running {
                daemon.check_running()?;
            }
            let done = counter.count(self).await? >= until.expected()
                && match &until {
                    Until::AllEnded { partner, .. } => db.all_ended(partner.as_deref()).await?,
                    Until::Delivered(count) => db.delivered_count().await? >= *count as i64,
                };
            if done {
                break;
            }
            if window.started.elapsed() > limit {
                if cap.is_some() {
                    break;
                }
                bail!(
                    "{}: not finished after {limit:?} ({}); end of the daemon's log:\n{}",
                    setup.label,
                    db.states().await?,
                    running[0].log_tail(20)
                );
            }
        }
        let daemon_cpu: f64 = running.iter().map(Daemon::cpu_seconds).sum();
        let peak_rss_mib = running.iter().map(Daemon::peak_rss_mib).fold(0.0, f64::max);
        let cpu = window.close();
        let wal_bytes = self.cluster.wal_bytes().await? - wal_start;
        if std::env::var_os("BENCH_WAL_RECORDS").is_some() {
            let records = self.cluster.wal_records(&wal_from).await?;
            let path = self
                .work_dir
                .join(format!("{}-wal-records.txt", setup.label));
            std::fs::write(&path, records)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        for daemon in running {
            daemon.stop(Duration::from_secs(30)).await?;
        }
        let (delivered, last_end) = match &until {
            Until::AllEnded { partner, .. } => db.delivered(partner.as_deref()).await?,
            Until::Delivered(count) => (*count as i64, db.nth_delivered_at(*count as i64).await?),
        };
        if delivered == 0 {
            bail!(
                "{}: nothing was delivered ({})",
                setup.label,
                db.states().await?
            );
        }
        let claim = db.claim_time(&self.cluster).await?;
        self.dump_statements(setup).await?;
        db.expect_no_failures().await?;
        Ok(RunOutcome {
            delivered,
            seconds: last_end - started_unix,
            daemon_cpu,
            peak_rss_mib,
            cpu,
            claim,
            wal_bytes,
        })
    }

    /// Backlog drain: enrollment events for distinct patients already in the outbox when
    /// the daemon starts.
    async fn drain(&self) -> Result<Vec<Metric>> {
        let events = self.sizes.drain_events;
        let setup = self.setup("drain", &[self.fast_partner()], "").await?;
        setup
            .db
            .seed_events(events, Patients::Distinct, "drain-", false)
            .await?;
        setup.db.settle().await?;
        let outcome = self
            .run_dispatcher(&setup, 1, Arrivals::Nginx, Until::all(events), None)
            .await?;
        self.finish(setup).await?;
        if outcome.delivered != events as i64 {
            bail!("drain: {} of {events} delivered", outcome.delivered);
        }
        let mut metrics = outcome.metrics("");
        for metric in &mut metrics {
            match metric.name.as_str() {
                "deliveries_per_s" => metric.target = Some(Target::AtLeast(10_000.0)),
                "daemon_peak_rss_mib" => metric.target = Some(Target::Below(100.0)),
                _ => {}
            }
        }
        Ok(metrics)
    }

    /// Steady stream: a producer commits one event per transaction at `rate`; latency
    /// from its commit to the partner's receipt.
    async fn stream(&self, rate: u64) -> Result<Vec<Metric>> {
        let receiver = Receiver::start(Duration::ZERO).await?;
        let partner = PartnerSite {
            name: "receiver".into(),
            base_url: receiver.base_url.clone(),
            max_in_flight: None,
        };
        let setup = self
            .setup(&format!("stream-{rate}"), &[partner], "")
            .await?;
        let producer = Producer::connect(&setup.db.url, Producer::connections_for(rate)).await?;
        let mut daemons = vec![self.start_daemon(&setup, 0, None)?];
        self.wait_listening(&setup, &mut daemons).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;

        let mut excluded = producer.backends.clone();
        excluded.push(setup.db.backend);
        setup.db.reset_statement_stats(&self.cluster).await?;
        let wal_start = self.cluster.wal_bytes().await?;
        let window = CpuWindow::open(self, &excluded);
        let daemon_cpu_start = daemons[0].cpu_seconds();
        let produced = producer
            .run(
                rate,
                Duration::from_secs(self.sizes.stream_seconds),
                "stream-",
                None,
            )
            .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while receiver.distinct() < produced.commits.len() {
            daemons[0].check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "stream: {} of {} events reached the partner within 60 s of the last commit",
                    receiver.distinct(),
                    produced.commits.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu = window.close();
        let wal_bytes = self.cluster.wal_bytes().await? - wal_start;
        let daemon_cpu = daemons[0].cpu_seconds() - daemon_cpu_start;
        let peak_rss_mib = daemons[0].peak_rss_mib();
        for daemon in daemons {
            daemon.stop(Duration::from_secs(30)).await?;
        }
        setup.db.expect_no_failures().await?;
        self.dump_statements(&setup).await?;

        let event_of: HashMap<String, i64> =
            setup.db.event_of_delivery().await?.into_iter().collect();
        let mut seen = std::collections::HashSet::new();
        let mut latencies_ms: Vec<f64> = receiver
            .arrivals()
            .into_iter()
            .filter(|arrival| seen.insert(arrival.webhook_id.clone()))
            .filter_map(|arrival| {
                let committed = produced.commits.get(event_of.get(&arrival.webhook_id)?)?;
                Some(
                    arrival
                        .at
                        .saturating_duration_since(*committed)
                        .as_secs_f64()
                        * 1000.0,
                )
            })
            .collect();
        latencies_ms.sort_by(f64::total_cmp);
        self.finish(setup).await?;
        if latencies_ms.len() != produced.commits.len() {
            bail!(
                "stream: matched {} arrivals to {} commits",
                latencies_ms.len(),
                produced.commits.len()
            );
        }
        let percentile = |p: f64| {
            let rank = ((p / 100.0) * latencies_ms.len() as f64).ceil() as usize;
            latencies_ms[rank.clamp(1, latencies_ms.len()) - 1]
        };
        let p99 = Metric::new("latency_p99_ms", "ms", percentile(99.0));
        let seconds = produced.seconds;
        let events = produced.commits.len() as f64;
        Ok(vec![
            Metric::new("events_per_s", "/s", events / seconds),
            Metric::new("latency_p50_ms", "ms", percentile(50.0)),
            if rate == 1_000 {
                p99.target(Target::Below(20.0))
            } else {
                p99
            },
            Metric::new("latency_max_ms", "ms", percentile(100.0)),
            Metric::new("daemon_cpu_s", "s", daemon_cpu),
            Metric::new("postgres_cpu_s", "s", cpu.postgres),
            Metric::new("bench_cpu_s", "s", cpu.bench),
            Metric::new(
                "daemon_cpu_ms_per_delivery",
                "ms",
                daemon_cpu * 1000.0 / events,
            ),
            Metric::new(
                "postgres_cpu_ms_per_delivery",
                "ms",
                cpu.postgres * 1000.0 / events,
            ),
            wal_per_delivery(wal_bytes, events),
            Metric::new("daemon_peak_rss_mib", "MiB", peak_rss_mib),
        ])
    }

    /// Idle: CPU of a daemon with nothing to do.
    async fn idle(&self) -> Result<Vec<Metric>> {
        let setup = self.setup("idle", &[self.fast_partner()], "").await?;
        let mut daemons = vec![self.start_daemon(&setup, 0, None)?];
        self.wait_listening(&setup, &mut daemons).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let wal_start = self.cluster.wal_bytes().await?;
        let window = CpuWindow::open(self, &[setup.db.backend]);
        let daemon_cpu_start = daemons[0].cpu_seconds();
        tokio::time::sleep(Duration::from_secs(self.sizes.idle_seconds)).await;
        daemons[0].check_running()?;
        let cpu = window.close();
        let wal_bytes = self.cluster.wal_bytes().await? - wal_start;
        let daemon_cpu = daemons[0].cpu_seconds() - daemon_cpu_start;
        let peak_rss_mib = daemons[0].peak_rss_mib();
        for daemon in daemons {
            daemon.stop(Duration::from_secs(30)).await?;
        }
        self.finish(setup).await?;
        Ok(vec![
            Metric::new("daemon_cpu_percent", "%", daemon_cpu * 100.0 / cpu.seconds)
                .target(Target::Below(1.0)),
            Metric::new(
                "postgres_cpu_percent",
                "%",
                cpu.postgres * 100.0 / cpu.seconds,
            ),
            Metric::new("seconds", "s", cpu.seconds),
            // No deliveries: the WAL an idle daemon causes (the cluster's, so with
            // autovacuum's and checkpoints').
            Metric::new("wal_bytes_per_s", "B", wal_bytes as f64 / cpu.seconds),
            Metric::new("daemon_peak_rss_mib", "MiB", peak_rss_mib),
        ])
    }

    /// Deep backlog: the same number of deliveries taken from a small and from a large
    /// backlog of pending (already routed) deliveries.
    async fn deep_backlog(&self) -> Result<Vec<Metric>> {
        let window = self.sizes.deep_window.min(self.sizes.deep_small);
        let mut legs = Legs::default();
        for (label, backlog) in [
            ("small", self.sizes.deep_small),
            ("large", self.sizes.deep_large),
        ] {
            let setup = self
                .pre_routed(&format!("deep-{label}"), backlog, "deep-")
                .await?;
            let outcome = self
                .run_dispatcher(&setup, 1, Arrivals::Nginx, Until::Delivered(window), None)
                .await?;
            self.finish(setup).await?;
            legs.push(Metric::new(
                format!("{label}.backlog_rows"),
                "",
                backlog as f64,
            ));
            legs.ran(label, &outcome);
        }
        Ok(legs.second_to_first(
            "large_to_small_throughput",
            "large_to_small_claim_time",
            Target::AtLeast(0.8),
        ))
    }

    /// One slow partner (every answer takes 2 s) beside the fast one, both taking the
    /// same support program: the fast partner's throughput alone and beside it.
    async fn slow_partner(&self) -> Result<Vec<Metric>> {
        let events = self.sizes.slow_events;
        let mut metrics = Vec::new();
        let mut rates = Vec::new();
        let slow = Receiver::start(Duration::from_secs(2)).await?;
        let alone = vec![self.fast_partner()];
        let mut beside = alone.clone();
        beside.push(PartnerSite {
            name: "slow".into(),
            base_url: slow.base_url.clone(),
            max_in_flight: None,
        });
        for (label, partners) in [("alone", alone), ("with_slow", beside)] {
            let setup = self.setup(&format!("slow-{label}"), &partners, "").await?;
            setup
                .db
                .seed_events(events, Patients::Distinct, "slow-", false)
                .await?;
            setup.db.settle().await?;
            let outcome = self
                .run_dispatcher(
                    &setup,
                    1,
                    Arrivals::Nginx,
                    Until::ended_for("fast", events),
                    Some(self.sizes.slow_cap),
                )
                .await?;
            if partners.len() > 1 {
                let (slow_delivered, _) = setup.db.delivered(Some("slow")).await?;
                metrics.push(Metric::new(
                    "with_slow.slow_deliveries",
                    "",
                    slow_delivered as f64,
                ));
            }
            self.finish(setup).await?;
            rates.push(outcome.per_second());
            metrics.extend(outcome.metrics(label));
        }
        metrics.push(
            Metric::new("fast_with_slow_to_alone", "x", rates[1] / rates[0])
                .target(Target::AtLeast(0.9)),
        );
        Ok(metrics)
    }

    /// Ordering: 10 events per patient (one after another) against distinct patients.
    async fn ordering(&self) -> Result<Vec<Metric>> {
        let events = self.sizes.ordering_events;
        let mut metrics = Vec::new();
        let mut rates = Vec::new();
        for (label, patients) in [
            ("distinct", Patients::Distinct),
            ("ten_per_patient", Patients::EventsEach(10)),
        ] {
            let setup = self
                .setup(&format!("ordering-{label}"), &[self.fast_partner()], "")
                .await?;
            setup
                .db
                .seed_events(events, patients, "ordering-", false)
                .await?;
            setup.db.settle().await?;
            let outcome = self
                .run_dispatcher(&setup, 1, Arrivals::Nginx, Until::all(events), None)
                .await?;
            self.finish(setup).await?;
            rates.push(outcome.per_second());
            metrics.extend(outcome.metrics(label));
        }
        metrics.push(
            Metric::new("ten_per_patient_to_distinct", "x", rates[1] / rates[0])
                .target(Target::AtLeast(0.8)),
        );
        Ok(metrics)
    }

    /// Two daemons on one database against one: combined throughput, and no delivery
    /// sent twice (the receiver counts repeated webhook-ids).
    async fn two_daemons(&self) -> Result<Vec<Metric>> {
        let events = self.sizes.two_daemon_events;
        let mut metrics = Vec::new();
        let mut rates = Vec::new();
        for (label, daemons) in [("one", 1), ("two", 2)] {
            let receiver = Receiver::start(Duration::ZERO).await?;
            let partner = PartnerSite {
                name: "receiver".into(),
                base_url: receiver.base_url.clone(),
                max_in_flight: None,
            };
            let setup = self
                .setup(&format!("daemons-{label}"), &[partner], "")
                .await?;
            setup
                .db
                .seed_events(events, Patients::Distinct, "daemons-", false)
                .await?;
            setup.db.settle().await?;
            let outcome = self
                .run_dispatcher(
                    &setup,
                    daemons,
                    Arrivals::Receiver(&receiver),
                    Until::all(events),
                    None,
                )
                .await?;
            self.finish(setup).await?;
            let duplicates = receiver.duplicates();
            let distinct = receiver.distinct();
            if distinct as u64 != events {
                bail!(
                    "two-daemons ({label}): the partner received {distinct} of {events} deliveries"
                );
            }
            rates.push(outcome.per_second());
            metrics.extend(outcome.metrics(label));
            metrics.push(
                Metric::new(format!("{label}.sent_twice"), "", duplicates as f64)
                    .target(Target::AtMost(0.0)),
            );
        }
        metrics.push(Metric::new("two_to_one", "x", rates[1] / rates[0]));
        Ok(metrics)
    }
}
