//! The enrollment flow: one event per transaction (a plain INSERT into the outbox,
//! autocommitted), spread over several connections, either at a steady rate with each
//! commit's time recorded, or as fast as the connections can.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::database::{self, ENROLLMENT};

/// How late an event may be sent before it is skipped.
const MAX_LAG: Duration = Duration::from_millis(100);

pub struct Producer {
    clients: Vec<Arc<Client>>,
    /// Their backends, excluded from PostgreSQL's CPU: the enrollment flow's inserts are
    /// not the dispatcher's work.
    pub backends: Vec<u32>,
}

/// What was produced: each event's commit time, by event id.
pub struct Produced {
    pub commits: HashMap<i64, Instant>,
    pub seconds: f64,
}

impl Producer {
    /// Enough connections that commit latency (a WAL flush each, shared by the commits
    /// that come together; tens of ms on a busy machine) does not hold the rate back.
    pub fn connections_for(rate: u64) -> usize {
        (rate / 50).clamp(8, 100) as usize
    }

    pub async fn connect(url: &str, connections: usize) -> Result<Producer> {
        let mut clients = Vec::with_capacity(connections);
        let mut backends = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let (client, backend) = database::connect(url).await?;
            clients.push(Arc::new(client));
            backends.push(backend);
        }
        Ok(Producer { clients, backends })
    }

    /// Commits `rate` events per second for `duration`, each for a patient of its own
    /// (`<prefix><n>`, n below `patients` when given: patients come back). Event n is due
    /// at start + n / rate; an event the connections could not send within `MAX_LAG` of
    /// its time is skipped, so on a machine that cannot keep up the rate reached,
    /// `commits.len() / seconds`, is lower but still steady.
    pub async fn run(
        &self,
        rate: u64,
        duration: Duration,
        prefix: &str,
        patients: Option<u64>,
    ) -> Result<Produced> {
        let total = (rate as f64 * duration.as_secs_f64()).round() as u64;
        let next = Arc::new(AtomicU64::new(0));
        let template = database::example_event(ENROLLMENT);
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for client in &self.clients {
            let client = client.clone();
            let next = next.clone();
            let mut event = template.clone();
            let prefix = prefix.to_string();
            tasks.spawn(async move {
                let insert = client
                    .prepare(
                        "INSERT INTO dispatcher.outbox (event_name, event)
                         VALUES ($1, $2::text::jsonb) RETURNING id",
                    )
                    .await?;
                let mut commits = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
                    // A slot missed by more than this is skipped, not caught up later in
                    // a burst: the rate stays steady, at most `rate`.
                    if Instant::now() > due + MAX_LAG {
                        continue;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    let patient = patients.map_or(n, |count| n % count.max(1));
                    event["patient"]["id"] = format!("{prefix}{patient}").into();
                    let row = client
                        .query_one(&insert, &[&ENROLLMENT, &event.to_string()])
                        .await
                        .context("inserting an outbox event")?;
                    commits.push((row.get::<_, i64>(0), Instant::now()));
                }
                anyhow::Ok(commits)
            });
        }
        let mut commits = HashMap::with_capacity(total as usize);
        while let Some(done) = tasks.join_next().await {
            commits.extend(done??);
        }
        Ok(Produced {
            commits,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Commits events one per transaction (a plain autocommitted `INSERT` of the
    /// contract's example into `table`, as the enrollment flow does) as fast as the
    /// connections can, until `stop`; each for a patient of its own (`<prefix><n>`).
    pub async fn flat_out(&self, table: &str, stop: Stop, prefix: &str) -> Result<FlatOut> {
        let next = Arc::new(AtomicU64::new(0));
        let template = database::example_event(ENROLLMENT);
        let sql = format!("INSERT INTO {table} (event_name, event) VALUES ($1, $2::text::jsonb)");
        let mut prepared = Vec::with_capacity(self.clients.len());
        for client in &self.clients {
            prepared.push(
                client
                    .prepare(&sql)
                    .await
                    .with_context(|| format!("preparing the insert into {table}"))?,
            );
        }
        let started_unix = crate::daemon::unix_now();
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (client, insert) in self.clients.iter().zip(prepared) {
            let client = client.clone();
            let next = next.clone();
            let mut event = template.clone();
            let prefix = prefix.to_string();
            tasks.spawn(async move {
                let mut commits = 0u64;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let over = match stop {
                        Stop::After(duration) => start.elapsed() >= duration,
                        Stop::Events(total) => n >= total,
                    };
                    if over {
                        return anyhow::Ok(commits);
                    }
                    event["patient"]["id"] = format!("{prefix}{n}").into();
                    client
                        .execute(&insert, &[&ENROLLMENT, &event.to_string()])
                        .await
                        .context("inserting an outbox event")?;
                    commits += 1;
                }
            });
        }
        let mut commits = 0;
        while let Some(done) = tasks.join_next().await {
            commits += done??;
        }
        Ok(FlatOut {
            commits,
            seconds: start.elapsed().as_secs_f64(),
            started_unix,
        })
    }
}

/// When [`Producer::flat_out`] stops.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// No insert starts after this long.
    After(Duration),
    /// After this many events in all.
    Events(u64),
}

/// What [`Producer::flat_out`] committed, and when it started (Unix seconds, to compare
/// with times PostgreSQL recorded).
pub struct FlatOut {
    pub commits: u64,
    pub seconds: f64,
    pub started_unix: f64,
}
