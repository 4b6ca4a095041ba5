//! The rescuer: deliveries whose lease ran out go back to the queue.
//!
//! A claim ends with its result written, or handed back on shutdown. When neither happens
//! (the daemon was killed, or lost the database until after the lease), the delivery would
//! sit `in_flight` with nobody working on it. The rescuer, in every daemon, returns such
//! deliveries to `pending` as their leases run out, counting the lost claim as an attempt
//! (see [`deliveries::rescue_expired`]), logs each one and counts it in
//! `dispatcher_leases_expired_total`. The claim only takes pending deliveries, so every
//! lost claim passes through here and is counted.

use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::Pool;

use crate::db;
use crate::deliveries::{self, DeliveryState};
use crate::metrics::Metrics;
use crate::reload::LiveConfig;
use crate::shutdown::Shutdown;
use crate::wakeup::Wakeups;

/// Deliveries rescued per statement.
const RESCUE_BATCH: usize = 1000;

/// Runs until shutdown: rescues what has expired, then sleeps until the earliest lease held
/// runs out (at most `poll_interval`, as another daemon may claim meanwhile).
pub(crate) async fn run(
    pool: Pool,
    live: LiveConfig,
    metrics: Metrics,
    wakeups: Wakeups,
    shutdown: Shutdown,
) {
    while !shutdown.is_stopping() {
        let config = live.snapshot();
        let poll = config.dispatch.poll_interval;
        let wait = match rescue_once(&pool, &live, &metrics).await {
            Ok(rescued) if rescued > 0 => {
                wakeups.deliveries.notify_one();
                if rescued == RESCUE_BATCH {
                    continue;
                }
                poll
            }
            Ok(_) => match pool.get().await {
                Ok(client) => deliveries::next_lease_end(&client)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|end| (end - Utc::now()).to_std().ok())
                    .map_or(poll, |until_end| until_end.min(poll)),
                Err(_) => poll,
            },
            Err(error) => {
                tracing::warn!(%error, "returning expired leases failed; retrying");
                poll.min(db::RETRY_AFTER_ERROR)
            }
        };
        tokio::select! {
            // A little past the lease's end, so it has run out by the database's clock too.
            () = tokio::time::sleep(wait + Duration::from_millis(10)) => {}
            () = shutdown.stopping() => {}
        }
    }
}

async fn rescue_once(
    pool: &Pool,
    live: &LiveConfig,
    metrics: &Metrics,
) -> Result<usize, db::DbError> {
    let config = live.snapshot();
    let client = pool.get().await?;
    let rescued = deliveries::rescue_expired(
        &client,
        config.dispatch.lease,
        config.retry.max_attempts,
        RESCUE_BATCH,
    )
    .await?;
    for delivery in &rescued {
        match delivery.state {
            DeliveryState::Dead => {
                tracing::warn!(delivery_id = %delivery.id, event_id = delivery.event_id,
                partner = %delivery.partner, "lease expired with no result recorded; that was the last attempt")
            }
            _ => tracing::warn!(delivery_id = %delivery.id, event_id = delivery.event_id,
                partner = %delivery.partner, "lease expired with no result recorded; sending again"),
        }
        metrics.lease_expired(&delivery.partner, &delivery.event_name, delivery.state);
    }
    Ok(rescued.len())
}
