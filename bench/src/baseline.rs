//! The baseline: the simplest worker a team would write instead of the dispatcher.
//!
//! N tasks, each with its own connection, each looping: BEGIN; claim ONE due delivery
//! with `FOR UPDATE SKIP LOCKED`; POST its event; mark it delivered; COMMIT. Against the
//! same tables, the same database and the same partner as the dispatcher, so the ratio
//! of the two is what the dispatcher's batching and pipelining buy. It does less per
//! delivery than the dispatcher (no signature, no attempt row, no contract check, no
//! partner id learned, no per-patient ordering), which favours the baseline.
//!
//! Also the `baseline` scenario, which runs the dispatcher, these workers and the
//! queue-only loop (`queue_only`) on the same backlog.

use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::database::{self, ENROLLMENT};
use crate::queue_only::QueueOnly;
use crate::report::{Metric, Target};
use crate::scenarios::{wal_per_delivery, Arrivals, Bench, CpuUsed, CpuWindow, Until};

/// What the workers did.
pub struct BaselineRun {
    pub delivered: u64,
    pub seconds: f64,
}

pub struct Baseline {
    clients: Vec<tokio_postgres::Client>,
}

impl Baseline {
    pub async fn connect(url: &str, workers: usize) -> Result<Baseline> {
        let mut clients = Vec::with_capacity(workers);
        for _ in 0..workers.max(1) {
            // Their backends' CPU is the baseline's PostgreSQL work: not excluded.
            let (client, _backend) = database::connect(url).await?;
            clients.push(client);
        }
        // The index such a team would make for its one query: pending deliveries in due
        // order. The dispatcher's schema reads its queue partner by partner (since issue
        // 13) and has no such index; without it each claim would sort the backlog.
        if let Some(first) = clients.first() {
            first
                .batch_execute(
                    "CREATE INDEX IF NOT EXISTS baseline_pending_due
                         ON dispatcher.deliveries (due_at) WHERE state = 'pending';
                     ANALYZE dispatcher.deliveries",
                )
                .await
                .context("the baseline's own index")?;
        }
        Ok(Baseline { clients })
    }

    /// Runs the workers until no delivery is left pending.
    pub async fn run(self, partner_base_url: &str) -> Result<BaselineRun> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(self.clients.len())
            .build()
            .context("building the baseline's HTTP client")?;
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for mut client in self.clients {
            let http = http.clone();
            let base = partner_base_url.to_string();
            tasks.spawn(async move {
                let mut delivered = 0u64;
                loop {
                    let transaction = client.transaction().await?;
                    let Some(row) = transaction
                        .query_opt(
                            "SELECT d.id::text, d.event_name, o.event::text
                             FROM dispatcher.deliveries d
                             JOIN dispatcher.outbox o ON o.id = d.event_id
                             WHERE d.state = 'pending' AND d.due_at <= now()
                             ORDER BY d.due_at
                             LIMIT 1
                             FOR UPDATE OF d SKIP LOCKED",
                            &[],
                        )
                        .await?
                    else {
                        transaction.commit().await?;
                        return anyhow::Ok(delivered);
                    };
                    let id: String = row.get(0);
                    let event_name: String = row.get(1);
                    let path = if event_name == ENROLLMENT {
                        "/webhook/user-enrollment"
                    } else {
                        "/webhook/user-action"
                    };
                    let answer = http
                        .post(format!("{base}{path}"))
                        .header("content-type", "application/json")
                        .header("webhook-id", &id)
                        .body(row.get::<_, String>(2))
                        .send()
                        .await?;
                    let status = i32::from(answer.status().as_u16());
                    let _ = answer.bytes().await?;
                    if !(200..300).contains(&status) {
                        bail!("the partner answered {status}");
                    }
                    transaction
                        .execute(
                            "UPDATE dispatcher.deliveries
                             SET state = 'delivered', due_at = NULL, ended_at = now(),
                                 attempt_count = attempt_count + 1, last_status = $2
                             WHERE id = $1::text::uuid",
                            &[&id, &status],
                        )
                        .await?;
                    transaction.commit().await?;
                    delivered += 1;
                }
            });
        }
        let mut delivered = 0;
        while let Some(done) = tasks.join_next().await {
            delivered += done??;
        }
        Ok(BaselineRun {
            delivered,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

impl Bench {
    /// The dispatcher against the simplest worker a team would write, and against the
    /// queue alone (its own claim and record, no HTTP), on the same backlog of pending
    /// deliveries (see `baseline` and `queue_only`).
    pub(crate) async fn baseline(&self) -> Result<Vec<Metric>> {
        let events = self.sizes.baseline_events;
        let mut metrics = Vec::new();

        let setup = self
            .pre_routed("baseline-dispatcher", events, "baseline-")
            .await?;
        let outcome = self
            .run_dispatcher(&setup, 1, Arrivals::Nginx, Until::all(events), None)
            .await?;
        self.finish(setup).await?;
        let dispatcher_rate = outcome.per_second();
        metrics.extend(outcome.metrics("dispatcher"));

        let setup = self
            .pre_routed("baseline-workers", events, "baseline-")
            .await?;
        let workers = Baseline::connect(&setup.db.url, self.sizes.baseline_workers).await?;
        let wal_start = self.cluster.wal_bytes().await?;
        let window = CpuWindow::open(self, &[setup.db.backend]);
        let run = workers.run(&self.nginx.base_url).await?;
        let cpu = window.close();
        let wal_bytes = self.cluster.wal_bytes().await? - wal_start;
        if !setup.db.all_ended(None).await? || run.delivered != events {
            bail!(
                "baseline: {} of {events} delivered ({})",
                run.delivered,
                setup.db.states().await?
            );
        }
        self.finish(setup).await?;
        let baseline_rate = run.delivered as f64 / run.seconds;
        metrics.extend(unattended_metrics(
            "baseline",
            "worker",
            run.delivered,
            run.seconds,
            &cpu,
            wal_bytes,
        ));
        metrics.push(Metric::new(
            "baseline.workers",
            "",
            self.sizes.baseline_workers as f64,
        ));

        let setup = self
            .pre_routed("baseline-queue-only", events, "baseline-")
            .await?;
        let queue = QueueOnly::connect(&setup.db.url).await?;
        let wal_start = self.cluster.wal_bytes().await?;
        let window = CpuWindow::open(self, &[setup.db.backend]);
        let run = queue.run().await?;
        let cpu = window.close();
        let wal_bytes = self.cluster.wal_bytes().await? - wal_start;
        if !setup.db.all_ended(None).await? || run.delivered != events {
            bail!(
                "queue-only: {} of {events} recorded ({})",
                run.delivered,
                setup.db.states().await?
            );
        }
        setup.db.expect_no_failures().await?;
        self.dump_statements(&setup).await?;
        self.finish(setup).await?;
        let queue_rate = run.delivered as f64 / run.seconds;
        metrics.extend(unattended_metrics(
            "queue_only",
            "loop",
            run.delivered,
            run.seconds,
            &cpu,
            wal_bytes,
        ));
        metrics.push(Metric::new("queue_only.tasks", "", run.tasks as f64));

        metrics.push(
            Metric::new(
                "dispatcher_to_baseline",
                "x",
                dispatcher_rate / baseline_rate,
            )
            .target(Target::AtLeast(5.0)),
        );
        // An aim, not a target of the issue's: reported without a verdict.
        metrics.push(Metric::new(
            "dispatcher_to_queue_only",
            "x",
            dispatcher_rate / queue_rate,
        ));
        Ok(metrics)
    }
}

/// The figures of a leg run by the benchmark's own process instead of the daemon (the
/// baseline's workers, the queue-only loop): its CPU is the bench's, named `cpu_name`.
fn unattended_metrics(
    prefix: &str,
    cpu_name: &str,
    delivered: u64,
    seconds: f64,
    cpu: &CpuUsed,
    wal_bytes: i64,
) -> Vec<Metric> {
    let per_delivery = |cpu: f64| cpu * 1000.0 / delivered.max(1) as f64;
    vec![
        Metric::new(
            format!("{prefix}.deliveries_per_s"),
            "/s",
            delivered as f64 / seconds,
        ),
        Metric::new(format!("{prefix}.seconds"), "s", seconds),
        Metric::new(format!("{prefix}.{cpu_name}_cpu_s"), "s", cpu.bench),
        Metric::new(format!("{prefix}.postgres_cpu_s"), "s", cpu.postgres),
        Metric::new(format!("{prefix}.partner_cpu_s"), "s", cpu.nginx),
        Metric::new(
            format!("{prefix}.{cpu_name}_cpu_ms_per_delivery"),
            "ms",
            per_delivery(cpu.bench),
        ),
        Metric::new(
            format!("{prefix}.postgres_cpu_ms_per_delivery"),
            "ms",
            per_delivery(cpu.postgres),
        ),
        Metric {
            name: format!("{prefix}.wal_bytes_per_delivery"),
            ..wal_per_delivery(wal_bytes, delivered as f64)
        },
    ]
}
