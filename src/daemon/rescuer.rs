//! The rescuer: deliveries whose lease ran out go back to the queue.
//!
//! A claim ends with its result written, or handed back on shutdown. When neither happens
//! (the daemon was killed, or lost the database until after the lease), the delivery would
//! sit `in_flight` with nobody working on it. The rescuer, in every daemon, returns such
//! deliveries to `pending` as their leases run out, counting the lost claim as an attempt
//! (see [`queue::rescue_expired`]), logs each one and counts it in
//! `dispatcher_leases_expired_total`. The claim only takes pending deliveries, so every
//! lost claim passes through here and is counted.
//!
//! At start and every [`STRANDED_EVERY`] it also releases waiting deliveries that have
//! nothing unfinished ahead of them ([`queue::release_stranded`]): what a daemon from
//! before the `waiting` state, still running beside this one through an upgrade, leaves.

use std::time::Duration;

use tokio::time::Instant;

use super::wakeup::Wakeups;
use crate::config::live::LiveConfig;
use crate::delivery::state::DeliveryState;
use crate::observe::metrics::{DeliveryLabels, Metrics};
use crate::shutdown::Shutdown;
use crate::store::db::{self, Pool};
use crate::store::queue;

/// Leases that ran out ended per transaction, each of up to a claim's deliveries
/// (`dispatch.batch_size`).
const RESCUE_BATCH: usize = 10;
/// The shortest wait between looks, so a lease another rescuer is busy with is not
/// polled in a tight loop.
const SOON: Duration = Duration::from_millis(50);
/// How often the rescuer looks for waiting deliveries with nothing ahead of them. It reads
/// every waiting delivery, so not at every pass; none should be there at all (see
/// [`queue::release_stranded`]).
const STRANDED_EVERY: Duration = Duration::from_secs(60);
/// Stranded deliveries released per statement.
const STRANDED_BATCH: usize = 1000;

/// Runs until shutdown: rescues what has expired, then sleeps until the earliest lease
/// held runs out.
pub(super) async fn run(
    pool: Pool,
    live: LiveConfig,
    metrics: Metrics,
    wakeups: Wakeups,
    shutdown: Shutdown,
) {
    let mut stranded_look = Instant::now();
    while !shutdown.is_stopping() {
        if Instant::now() >= stranded_look {
            stranded_look = match release_stranded(&pool).await {
                Ok(released) if released == STRANDED_BATCH => Instant::now(),
                Ok(released) => {
                    if released > 0 {
                        wakeups.deliveries.notify_one();
                    }
                    Instant::now() + STRANDED_EVERY
                }
                Err(error) => {
                    tracing::warn!(%error, "releasing stranded waiting deliveries failed; retrying");
                    Instant::now() + db::RETRY_AFTER_ERROR
                }
            };
        }
        let wait = match rescue_once(&pool, &live, &metrics).await {
            Ok(rescued) => {
                if rescued > 0 {
                    wakeups.deliveries.notify_one();
                }
                // Until a look finds none: more leases may have run out meanwhile.
                if rescued > 0 {
                    continue;
                }
                until_next_lease_end(&pool, &live).await
            }
            Err(error) => {
                tracing::warn!(%error, "returning expired leases failed; retrying");
                live.snapshot()
                    .dispatch
                    .poll_interval
                    .min(db::RETRY_AFTER_ERROR)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.stopping() => {}
        }
    }
}

/// How long until the earliest lease held now runs out. At most `poll_interval`, and at
/// most a lease: a claim made after this look (by any daemon) runs out no sooner.
async fn until_next_lease_end(pool: &Pool, live: &LiveConfig) -> Duration {
    let dispatch = live.snapshot().dispatch.clone();
    let longest = dispatch.poll_interval.min(dispatch.lease);
    let until_end = db::on_client(pool, async |client| {
        queue::until_next_lease_end(client).await
    })
    .await;
    match until_end {
        // Zero: it ran out since the rescue, or another daemon's rescuer holds it now.
        Ok(Some(until_end)) => until_end.max(SOON).min(longest),
        Ok(None) => longest,
        Err(_) => longest.min(db::RETRY_AFTER_ERROR),
    }
}

/// Releases waiting deliveries with nothing ahead of them; returns how many.
async fn release_stranded(pool: &Pool) -> Result<usize, db::DbError> {
    let mut client = pool.get().await?;
    let released = queue::release_stranded(&mut client, STRANDED_BATCH).await?;
    for id in &released {
        tracing::warn!(delivery_id = %id,
            "a waiting delivery had nothing unfinished ahead of it (ended by a daemon from before the waiting state?); pending again");
    }
    Ok(released.len())
}

async fn rescue_once(
    pool: &Pool,
    live: &LiveConfig,
    metrics: &Metrics,
) -> Result<usize, db::DbError> {
    let config = live.snapshot();
    let mut client = pool.get().await?;
    let rescued = queue::rescue_expired(
        &mut client,
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
        metrics.lease_expired(
            &DeliveryLabels::new(&delivery.partner, &delivery.event_name),
            delivery.state,
        );
    }
    Ok(rescued.len())
}
