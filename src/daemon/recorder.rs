//! The recorder: writes the attempts' resolutions back in batches (`store::queue::record`),
//! and with each batch written frees its capacity for the claimer. A result the database
//! refuses costs only its own delivery a second send after its lease, never the batch.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::Instrument;
use uuid::Uuid;

use crate::delivery::outcome::Resolution;
use crate::observe::metrics::DeliveryLabels;
use crate::store::db::DbError;
use crate::store::queue;

use super::Dispatcher;

/// Resolutions written per statement.
const RECORD_BATCH: usize = 1000;

/// A claimed delivery's attempt, finished or given up, with the capacity it holds.
pub(super) struct Finished {
    pub(super) resolution: Resolution,
    pub(super) labels: DeliveryLabels,
    pub(super) _capacity: OwnedSemaphorePermit,
}

impl Dispatcher {
    /// Records until every sender (the claimer and its attempts) is gone.
    pub(super) async fn record_resolutions(self: Arc<Self>, mut pending: mpsc::Receiver<Finished>) {
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        while pending.recv_many(&mut batch, RECORD_BATCH).await > 0 {
            self.write_resolutions(&batch)
                .instrument(tracing::info_span!(
                    "record",
                    deliveries = i64::try_from(batch.len()).unwrap_or(i64::MAX)
                ))
                .await;
            // Dropping the batch frees its capacity for the claimer.
            batch.clear();
            self.wakeups.deliveries.notify_one();
        }
    }

    /// Writes one batch. If the database refuses it, writes the rows one by one, so a
    /// single bad row holds up nothing else; a refused row's delivery is sent again after
    /// its lease.
    async fn write_resolutions(&self, batch: &[Finished]) {
        // Borrowed, not cloned: a resolution may carry a 16 KiB answer.
        let resolutions: Vec<&Resolution> =
            batch.iter().map(|finished| &finished.resolution).collect();
        let mut written = HashSet::new();
        let mut refused = Vec::new();
        let give_up_at = Instant::now() + self.live.snapshot().dispatch.lease;
        match self.write_until_stored(&resolutions, give_up_at).await {
            Ok(ids) => written.extend(ids),
            // A row refused for what it holds refuses its whole batch: one by one, the
            // others are written; none is tried past the lease (it would be stale).
            Err(error) if resolutions.len() > 1 && !error.passing => {
                for resolution in &resolutions {
                    let result = if Instant::now() < give_up_at {
                        self.write_until_stored(std::slice::from_ref(resolution), give_up_at)
                            .await
                    } else {
                        Err(RefusedWrite::lease_over())
                    };
                    match result {
                        Ok(ids) => written.extend(ids),
                        Err(error) => refused.push((*resolution, error)),
                    }
                }
            }
            Err(error) => refused.extend(resolutions.iter().map(|r| (*r, error.clone()))),
        }
        for (resolution, error) in refused {
            tracing::error!(delivery_id = %resolution.delivery_id, code = %error.code, reason = %error.message,
                "the database refused this result; the delivery will be sent again after its lease");
        }
        // Counted once stored: a stale result the database discarded ended nothing.
        for finished in batch {
            if written.contains(&finished.resolution.delivery_id) {
                self.metrics
                    .resolution_recorded(&finished.labels, finished.resolution.state);
            }
        }
    }

    /// Writes resolutions, retrying while the database is unreachable, and while it fails
    /// the statement for a passing reason ([`DbError::is_passing`]) until `give_up_at` (the
    /// lease: a result written later would be stale anyway). If the database stays away
    /// past the shutdown grace period the results are dropped: the leases run out and
    /// the deliveries are sent again, never lost. Returns the ids written; Err when the
    /// database refuses the statement, or keeps failing it past `give_up_at`.
    async fn write_until_stored(
        &self,
        resolutions: &[&Resolution],
        give_up_at: Instant,
    ) -> Result<Vec<Uuid>, RefusedWrite> {
        let mut delay = Duration::from_millis(50);
        loop {
            let recorded = self
                .on_client_mut(async |client| queue::record(client, resolutions).await)
                .await;
            let error = match recorded {
                Ok(ids) => {
                    // A set, not the list: a batch may hold a thousand rows.
                    let stored: HashSet<&Uuid> = ids.iter().collect();
                    let discarded = resolutions
                        .iter()
                        .filter(|r| !stored.contains(&r.delivery_id));
                    for resolution in discarded {
                        tracing::warn!(delivery_id = %resolution.delivery_id,
                            "result discarded: the claim was no longer current (lease expired or cancelled)");
                    }
                    return Ok(ids);
                }
                Err(error) => error,
            };
            if let Some(refused) = refused_write(&error, give_up_at) {
                return Err(refused);
            }
            if self.shutdown.is_abandoning() {
                tracing::error!(%error, count = resolutions.len(),
                    "cannot record results before exiting; these deliveries will be sent again after their lease");
                return Ok(Vec::new());
            }
            tracing::warn!(%error, count = resolutions.len(), "recording results failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.abandoning() => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// Whether `error` gives the write up: the database refused the statement for what it
/// holds, or failed it for a passing reason past `give_up_at`. `None` to try again.
fn refused_write(error: &DbError, give_up_at: Instant) -> Option<RefusedWrite> {
    // Without a connection (even one PostgreSQL refused to open), results are held.
    if !matches!(error, DbError::Query(_)) {
        return None;
    }
    let (code, message) = error.answer()?;
    let passing = error.is_passing();
    (!passing || Instant::now() >= give_up_at).then(|| RefusedWrite {
        code: code.to_string(),
        message: message.to_string(),
        passing,
    })
}

/// Why results were not written: the database refused the statement for what it holds,
/// or failed it for a reason that passes ([`DbError::is_passing`]) until the lease ran out.
/// (While it is unreachable, results are held instead: see `write_until_stored`.)
#[derive(Clone)]
struct RefusedWrite {
    code: String,
    message: String,
    /// The error would pass, but the lease ran out while it lasted.
    passing: bool,
}

impl RefusedWrite {
    fn lease_over() -> RefusedWrite {
        RefusedWrite {
            code: "-".to_string(),
            message: "the lease ran out before the result could be written".to_string(),
            passing: true,
        }
    }
}
