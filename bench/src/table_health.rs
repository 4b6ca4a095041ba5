//! Table health under sustained load: events at a steady rate for minutes with retention
//! pruning on; the sizes of the outbox, delivery and attempt tables (and their indexes)
//! every sample, so one sees whether they stop growing once pruning catches up.
//!
//! Retention counts in days, and a run lasts minutes, so the run shifts time: a trigger
//! dates every event `2 days - keep` back when it is inserted, and every delivery's end
//! the same when it is recorded. With `payload_days = 1` and `metadata_days = 2`, an
//! event's body and the partners' answers are erased at the first pruning pass after its
//! deliveries end, and the rows are deleted `keep` after they ended: the life of a row
//! under production settings, compressed. The pruner itself is the daemon's, unchanged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use crate::database::TableSize;
use crate::producer::Producer;
use crate::report::{number, Metric};
use crate::scenarios::{wal_per_delivery, Bench, CpuWindow, Setup};

/// The autovacuum settings docs/benchmarks.md recommends for the dispatcher's tables:
/// these tables churn (every row inserted, updated a few times, deleted within the
/// retention period), so vacuum must come often and unthrottled, long before the
/// default 20% of the table is dead.
pub const RECOMMENDED_AUTOVACUUM: &str = "
ALTER TABLE dispatcher.outbox SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE dispatcher.deliveries SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE dispatcher.attempts SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE dispatcher.partner_patients SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);
";

/// The server-wide part: autovacuum looks at each database every `autovacuum_naptime`
/// (default 1 min); at thousands of rows a second that is too long between looks.
pub const RECOMMENDED_NAPTIME: &str = "10s";

#[derive(Debug, Clone)]
pub struct HealthOptions {
    pub duration: Duration,
    pub rate: u64,
    /// How long after a delivery ends its rows are deleted (compressed `metadata_days`).
    pub keep: Duration,
    pub sample_every: Duration,
    pub prune_interval: Duration,
    /// Patient ids cycle through this many: patients come back, and the partners'
    /// patient ids (kept for good) stay bounded.
    pub patients: u64,
    pub recommended_autovacuum: bool,
}

impl HealthOptions {
    pub fn smoke() -> HealthOptions {
        HealthOptions {
            duration: Duration::from_secs(20),
            rate: 200,
            keep: Duration::from_secs(5),
            sample_every: Duration::from_secs(5),
            prune_interval: Duration::from_secs(2),
            patients: 1_000,
            recommended_autovacuum: true,
        }
    }
}

/// One sample of every table.
struct Sample {
    seconds: f64,
    tables: Vec<TableSize>,
    unfinished: i64,
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

impl Sample {
    fn json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "unfinished_deliveries": self.unfinished,
            "tables": self.tables.iter().map(|t| json!({
                "table": t.table, "total_bytes": t.total_bytes, "index_bytes": t.index_bytes,
                "live_rows": t.live_rows, "dead_rows": t.dead_rows, "vacuums": t.vacuums,
            })).collect::<Vec<_>>(),
        })
    }

    fn print(&self) {
        let tables: Vec<String> = self
            .tables
            .iter()
            .map(|t| {
                format!(
                    "{} {} MiB (indexes {}, live {}, dead {})",
                    t.table,
                    number(mib(t.total_bytes)),
                    number(mib(t.index_bytes)),
                    number(t.live_rows as f64),
                    number(t.dead_rows as f64)
                )
            })
            .collect();
        eprintln!(
            "bench: table-health {:>5.0}s: unfinished {}; {}",
            self.seconds,
            self.unfinished,
            tables.join("; ")
        );
    }

    fn table(&self, name: &str) -> Option<&TableSize> {
        self.tables.iter().find(|t| t.table == name)
    }
}

impl Bench {
    pub async fn table_health(&self, options: &HealthOptions) -> Result<(Vec<Metric>, Value)> {
        let keep = options.keep.as_secs_f64();
        let extra = format!(
            "[retention]\npayload_days = 1\nmetadata_days = 2\nprune_interval = \"{}ms\"\n",
            options.prune_interval.as_millis()
        );
        let setup = self
            .setup("table-health", &[self.fast_partner()], &extra)
            .await?;
        let shift = 2.0 * 86_400.0 - keep;
        setup
            .db
            .client
            .batch_execute(&format!(
                "CREATE FUNCTION public.bench_shift_created() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN NEW.created_at := NEW.created_at - make_interval(secs => {shift}); RETURN NEW; END $$;
                 CREATE TRIGGER bench_shift_created BEFORE INSERT ON dispatcher.outbox
                     FOR EACH ROW EXECUTE FUNCTION public.bench_shift_created();
                 CREATE FUNCTION public.bench_shift_ended() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN NEW.ended_at := NEW.ended_at - make_interval(secs => {shift}); RETURN NEW; END $$;
                 CREATE TRIGGER bench_shift_ended BEFORE UPDATE ON dispatcher.deliveries
                     FOR EACH ROW WHEN (NEW.ended_at IS NOT NULL AND OLD.ended_at IS NULL)
                     EXECUTE FUNCTION public.bench_shift_ended();
                 -- Where the answers' erase has got to, in the same shifted time, with a
                 -- margin longer than any transaction that ends a delivery (one that began
                 -- before a pass and commits after it has an earlier end).
                 CREATE FUNCTION public.bench_shift_erased() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN NEW.answers_erased_through := least(NEW.answers_erased_through,
                     now() - make_interval(secs => {shift}) - interval '5 minutes'); RETURN NEW; END $$;
                 CREATE TRIGGER bench_shift_erased BEFORE UPDATE ON dispatcher.retention_position
                     FOR EACH ROW EXECUTE FUNCTION public.bench_shift_erased();
                 UPDATE dispatcher.retention_position SET answers_erased_through = now();"
            ))
            .await?;
        if options.recommended_autovacuum {
            setup
                .db
                .client
                .batch_execute(RECOMMENDED_AUTOVACUUM)
                .await?;
            self.cluster
                .execute(&format!(
                    "ALTER SYSTEM SET autovacuum_naptime = '{RECOMMENDED_NAPTIME}'"
                ))
                .await?;
            self.cluster.execute("SELECT pg_reload_conf()").await?;
        }
        let result = self.table_health_run(&setup, options).await;
        if options.recommended_autovacuum {
            self.cluster
                .execute("ALTER SYSTEM RESET autovacuum_naptime")
                .await?;
            self.cluster.execute("SELECT pg_reload_conf()").await?;
        }
        self.finish(setup).await?;
        result
    }

    async fn table_health_run(
        &self,
        setup: &Setup,
        options: &HealthOptions,
    ) -> Result<(Vec<Metric>, Value)> {
        let producer = Arc::new(
            Producer::connect(&setup.db.url, Producer::connections_for(options.rate)).await?,
        );
        // One log line per delivery for minutes is gigabytes: warnings only, unless
        // RUST_LOG says otherwise.
        let mut daemons = vec![self.start_daemon(setup, 0, Some("warn"))?];
        self.wait_listening(setup, &mut daemons).await?;

        let mut excluded = producer.backends.clone();
        excluded.push(setup.db.backend);
        let wal_start = self.cluster.wal_bytes().await?;
        let window = CpuWindow::open(self, &excluded);
        let started = Instant::now();
        let sample = |seconds: f64| async move {
            anyhow::Ok(Sample {
                seconds,
                tables: setup.db.table_sizes().await?,
                unfinished: setup
                    .db
                    .client
                    .query_one(
                        // Each state on its own partial index (see `all_ended`).
                        "SELECT (SELECT count(*) FROM dispatcher.deliveries WHERE state = 'pending')
                              + (SELECT count(*) FROM dispatcher.deliveries WHERE state = 'waiting')",
                        &[],
                    )
                    .await?
                    .get(0),
            })
        };
        let mut samples = vec![sample(0.0).await?];
        samples[0].print();
        let production = {
            let producer = producer.clone();
            let (rate, duration, patients) = (options.rate, options.duration, options.patients);
            tokio::spawn(async move {
                producer
                    .run(rate, duration, "health-", Some(patients))
                    .await
            })
        };
        let mut next = started + options.sample_every;
        while !production.is_finished() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            daemons[0].check_running()?;
            if Instant::now() >= next {
                next += options.sample_every;
                let taken = sample(started.elapsed().as_secs_f64()).await?;
                taken.print();
                samples.push(taken);
            }
        }
        let produced = production.await??;
        if samples
            .last()
            .is_some_and(|s| started.elapsed().as_secs_f64() - s.seconds > 1.0)
        {
            let end = sample(started.elapsed().as_secs_f64()).await?;
            end.print();
            samples.push(end);
        }
        let cpu = window.close();
        let wal_bytes = self.cluster.wal_bytes().await? - wal_start;
        self.dump_statements(setup).await?;
        let daemon_cpu = daemons[0].cpu_seconds();
        let peak_rss_mib = daemons[0].peak_rss_mib();
        for daemon in daemons {
            daemon.stop(Duration::from_secs(30)).await?;
        }

        let seconds = produced.seconds;
        let mut metrics = vec![
            Metric::new(
                "events_per_s",
                "/s",
                produced.commits.len() as f64 / seconds,
            ),
            Metric::new("seconds", "s", seconds),
        ];
        let last = &samples[samples.len() - 1];
        // Half-way through: pruning has long caught up (after `keep` and a pass or two),
        // so growth from here on is what does not get reused.
        let middle = samples
            .iter()
            .find(|s| s.seconds >= last.seconds / 2.0)
            .unwrap_or(last);
        for table in ["outbox", "deliveries", "attempts", "partner_patients"] {
            let (Some(mid), Some(end)) = (middle.table(table), last.table(table)) else {
                continue;
            };
            metrics.push(Metric::new(
                format!("{table}.mib_half_way"),
                "MiB",
                mib(mid.total_bytes),
            ));
            metrics.push(Metric::new(
                format!("{table}.mib_end"),
                "MiB",
                mib(end.total_bytes),
            ));
            metrics.push(Metric::new(
                format!("{table}.index_mib_end"),
                "MiB",
                mib(end.index_bytes),
            ));
            metrics.push(Metric::new(
                format!("{table}.growth_second_half"),
                "%",
                (end.total_bytes - mid.total_bytes) as f64 * 100.0 / mid.total_bytes.max(1) as f64,
            ));
            metrics.push(Metric::new(
                format!("{table}.vacuums"),
                "",
                end.vacuums as f64,
            ));
        }
        metrics.extend([
            Metric::new("unfinished_at_end", "", last.unfinished as f64),
            Metric::new("daemon_cpu_s", "s", daemon_cpu),
            Metric::new("postgres_cpu_s", "s", cpu.postgres),
            Metric::new("partner_cpu_s", "s", cpu.nginx),
            // Per event produced, the pruner's deletes included; the deliveries still
            // unfinished at the end are few.
            wal_per_delivery(wal_bytes, produced.commits.len() as f64),
            Metric::new("daemon_peak_rss_mib", "MiB", peak_rss_mib),
        ]);
        let detail = json!({
            "rate": options.rate,
            "seconds": options.duration.as_secs_f64(),
            "keep_seconds": options.keep.as_secs_f64(),
            "prune_interval_seconds": options.prune_interval.as_secs_f64(),
            "recommended_autovacuum": options.recommended_autovacuum,
            "samples": samples.iter().map(Sample::json).collect::<Vec<_>>(),
        });
        Ok((metrics, detail))
    }
}
