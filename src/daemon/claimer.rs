//! The claimer: waits for free capacity, claims up to that many due deliveries from the
//! partners that have room (`store::queue::claim_due`), and starts one attempt task each.
//! With nothing due it sleeps until a NOTIFY, the next retry falling due, an open
//! circuit's probe, or the poll interval.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::Config;
use crate::store::db::DbError;
use crate::store::queue::{self, PartnerRoom};

use super::recorder::Finished;
use super::Dispatcher;

/// What one turn of the claimer found.
enum ClaimOutcome {
    Claimed,
    EmptyQueue,
    /// Shutdown began while it waited for capacity: nothing was claimed, nothing is asked.
    ShuttingDown,
}

impl Dispatcher {
    /// Claims until shutdown, then waits for the attempts it started. Dropping `results`
    /// as it returns lets the recorder finish.
    pub(super) async fn claim_deliveries(self: Arc<Self>, results: mpsc::Sender<Finished>) {
        let mut attempts = JoinSet::new();
        while !self.shutdown.is_stopping() {
            let outcome = self.try_claim_batch(&mut attempts, &results).await;
            while attempts.try_join_next().is_some() {}
            match outcome {
                Ok(ClaimOutcome::Claimed) => {}
                Ok(ClaimOutcome::EmptyQueue) => self.wait_for_due_deliveries().await,
                Ok(ClaimOutcome::ShuttingDown) => break,
                Err(error) => {
                    tracing::warn!(%error, "claiming deliveries failed; retrying");
                    self.wait_after_db_error(&self.wakeups.deliveries).await;
                }
            }
        }
        while attempts.join_next().await.is_some() {}
    }

    /// Waits for free capacity, then claims up to that many due deliveries and starts an
    /// attempt for each.
    async fn try_claim_batch(
        self: &Arc<Self>,
        attempts: &mut JoinSet<()>,
        results: &mpsc::Sender<Finished>,
    ) -> Result<ClaimOutcome, DbError> {
        let Some(mut permits) = self.reserve_capacity().await else {
            return Ok(ClaimOutcome::ShuttingDown);
        };
        let mut client = self.pool.get().await?;
        let config = self.live.snapshot();
        let room = self.partner_room(&config);
        // Taken before the query: the lease starts when the database runs it.
        let claimed_at = Instant::now();
        let span = tracing::info_span!("claim", deliveries = tracing::field::Empty);
        let claim = queue::claim_due(&mut client, permits.len(), config.dispatch.lease, &room)
            .instrument(span.clone())
            .await?;
        let deliveries = i64::try_from(claim.deliveries.len()).unwrap_or(i64::MAX);
        span.record("deliveries", deliveries);
        drop(client);
        let claimed = claim.deliveries;
        if claimed.is_empty() {
            // Ending a delivery whose body was gone may have let a later one fall due.
            return Ok(match claim.ended_without_body {
                0 => ClaimOutcome::EmptyQueue,
                _ => ClaimOutcome::Claimed,
            });
        }
        tracing::debug!(count = claimed.len(), "claimed deliveries");
        self.metrics.claimed(claimed.len());
        for delivery in claimed {
            let Some(capacity) = permits.pop() else { break };
            let send_permit = config
                .partner(&delivery.partner)
                .and_then(|partner| self.partner_slots.send_permit(partner, &self.breakers));
            self.start_attempt(
                attempts,
                results,
                delivery,
                capacity,
                send_permit,
                claimed_at,
            );
        }
        Ok(ClaimOutcome::Claimed)
    }

    /// How many deliveries each configured partner can send now. (A partner no longer
    /// configured is not listed: its deliveries are claimed to be postponed.)
    fn partner_room(&self, config: &Config) -> Vec<PartnerRoom> {
        let now = Utc::now();
        config
            .partners
            .iter()
            .map(|partner| PartnerRoom {
                partner: partner.name.clone(),
                free: self.breakers.room(
                    &partner.name,
                    self.partner_slots.of(partner).available_permits(),
                    now,
                ),
            })
            .collect()
    }

    /// Up to `batch_size` capacity permits; waits for at least one. `None` on shutdown.
    async fn reserve_capacity(&self) -> Option<Vec<OwnedSemaphorePermit>> {
        let first = tokio::select! {
            permit = self.capacity.clone().acquire_owned() => permit.ok()?,
            () = self.shutdown.stopping() => return None,
        };
        let mut permits = vec![first];
        let batch_size = self.live.snapshot().dispatch.batch_size;
        while permits.len() < batch_size {
            match self.capacity.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        Some(permits)
    }

    /// Sleeps until a notification, the next retry falling due, an open circuit's probe,
    /// or the poll interval.
    async fn wait_for_due_deliveries(&self) {
        let poll = self.live.snapshot().dispatch.poll_interval;
        let until_due = self
            .on_client(async |client| queue::until_next_due(client).await)
            .await
            .ok()
            .flatten();
        // The breakers keep their own (the daemon's) time.
        let now = Utc::now();
        let until_probe = self
            .breakers
            .next_probe_after(now)
            .and_then(|probe| (probe - now).to_std().ok());
        let wait = until_due
            .into_iter()
            .chain(until_probe)
            .min()
            .map_or(poll, |wait| wait.min(poll));
        tokio::select! {
            () = self.wakeups.deliveries.notified() => {}
            () = tokio::time::sleep(wait) => {}
            () = self.shutdown.stopping() => {}
        }
    }
}
