//! The baseline: the simplest worker a team would write instead of the dispatcher.
//!
//! N tasks, each with its own connection, each looping: BEGIN; claim ONE due delivery
//! with `FOR UPDATE SKIP LOCKED`; POST its event; mark it delivered; COMMIT. Against the
//! same tables, the same database and the same partner as the dispatcher, so the ratio
//! of the two is what the dispatcher's batching and pipelining buy. It does less per
//! delivery than the dispatcher (no signature, no attempt row, no contract check, no
//! partner id learned, no per-patient ordering), which favours the baseline.

use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::database::{self, ENROLLMENT};

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
