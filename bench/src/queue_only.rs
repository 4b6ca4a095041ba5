//! The queue alone: PostgreSQL's ceiling for the dispatcher's own schema.
//!
//! A few tasks loop over the daemon's own statements, from its library
//! (`dispatcher::store::queue::claim_due` and `record`), with no HTTP: each claims a batch,
//! resolves every delivery as the daemon does after the partner's 200 (the library's
//! `Outcome::of_answer`, `AttemptRecord::answered`, `Resolution::after_attempt`), and
//! records the batch. What the daemon does beyond this (routing excepted: the backlog is
//! pre-routed) is HTTP, signing and its own scheduling, so the dispatcher's drain over
//! this loop's says how much of PostgreSQL's ceiling the daemon reaches.
//!
//! The statements are whatever the library in this tree runs; run against a database
//! migrated by an older `dispatcher` they must still work there (they name no index).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use deadpool_postgres::Pool;
use dispatcher::config::{Config, RetryPolicy};
use dispatcher::delivery::outcome::{AttemptRecord, Outcome, Resolution};
use dispatcher::http::client::Answer;
use dispatcher::store::{db, queue};

use crate::receiver::ACCEPTED;

/// The daemon's defaults (`[dispatch]`): claims of up to 100, 256 deliveries in flight.
const BATCH: usize = 100;
const IN_FLIGHT: usize = 256;
/// Long enough that no lease runs out during a run (nothing rescues here).
const LEASE: Duration = Duration::from_secs(300);

/// The partner's 200, as the daemon's HTTP client hands it over.
fn accepted() -> Answer {
    Answer {
        status: 200,
        retry_after: None,
        body: ACCEPTED.as_bytes().to_vec(),
        body_error: None,
    }
}

/// What the loop did.
pub struct QueueOnlyRun {
    pub delivered: u64,
    pub seconds: f64,
    pub tasks: usize,
}

pub struct QueueOnly {
    pool: Pool,
    tasks: usize,
}

impl QueueOnly {
    /// Enough tasks, each claiming a batch, to keep the daemon's in-flight count busy.
    pub async fn connect(url: &str) -> Result<QueueOnly> {
        let tasks = IN_FLIGHT.div_ceil(BATCH);
        // The daemon's own pool: the same session settings (no JIT, statement timeout)
        // and statement cache as the claimer's.
        let config = Config::parse(
            &format!("[database]\nurl = {url:?}\npool_size = {tasks}\n"),
            "queue-only",
            None,
            |_| None,
        )
        .context("the queue-only loop's database settings")?;
        let pool = db::pool(&config.database, config.database.pool_limits())
            .context("building the queue-only loop's pool")?;
        // Connect before the clock starts.
        let mut warm = Vec::with_capacity(tasks);
        for _ in 0..tasks {
            warm.push(pool.get().await.context("connecting the queue-only loop")?);
        }
        drop(warm);
        Ok(QueueOnly { pool, tasks })
    }

    /// Claims and records until a claim finds nothing due.
    pub async fn run(self) -> Result<QueueOnlyRun> {
        // Only a failed answer reads it; every answer here is the partner's 200.
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(3600),
        };
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..self.tasks {
            let pool = self.pool.clone();
            let policy = policy.clone();
            tasks.spawn(async move {
                let mut client = pool.get().await?;
                let answer = accepted();
                let mut recorded = 0u64;
                loop {
                    let claim = queue::claim_due(&mut client, BATCH, LEASE, &[])
                        .await
                        .context("claiming")?;
                    if claim.deliveries.is_empty() && claim.ended_without_body == 0 {
                        return anyhow::Ok(recorded);
                    }
                    let resolutions: Vec<Resolution> = claim
                        .deliveries
                        .iter()
                        .map(|delivery| {
                            let attempt = AttemptRecord::answered(
                                chrono::Utc::now(),
                                Duration::ZERO,
                                &answer,
                            );
                            Resolution::after_attempt(
                                delivery,
                                &policy,
                                Outcome::of_answer(&answer),
                                attempt,
                            )
                        })
                        .collect();
                    let batch: Vec<&Resolution> = resolutions.iter().collect();
                    let ids = queue::record(&mut client, &batch)
                        .await
                        .context("recording")?;
                    recorded += ids.len() as u64;
                }
            });
        }
        let mut delivered = 0;
        while let Some(done) = tasks.join_next().await {
            delivered += done??;
        }
        Ok(QueueOnlyRun {
            delivered,
            seconds: start.elapsed().as_secs_f64(),
            tasks: self.tasks,
        })
    }
}
