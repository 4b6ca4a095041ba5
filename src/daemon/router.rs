//! The router: fans new outbox events out into deliveries, one short transaction per
//! batch (`store::outbox`), and wakes the claimer for them. After a burst it refreshes
//! the deliveries' statistics, so the claim's plan keeps up with the backlog.

use std::sync::Arc;

use tracing::Instrument;

use crate::config::Config;
use crate::store::db::DbError;
use crate::store::{outbox, queue};

use super::Dispatcher;

/// Outbox events routed per transaction.
const ROUTE_BATCH: usize = 1000;
/// In a burst of routing, the deliveries' statistics are refreshed once this many events
/// are routed, then each time the burst doubles (see `queue::refresh_statistics`).
const STATISTICS_AFTER: usize = 10_000;

impl Dispatcher {
    /// Routes until shutdown: at once while batches come back full, otherwise after a
    /// NOTIFY from the outbox or the poll interval.
    pub(super) async fn route_events(self: Arc<Self>) {
        let (mut burst, mut refresh_at) = (0, STATISTICS_AFTER);
        while !self.shutdown.is_stopping() {
            let config = self.live.snapshot();
            let routed = self.route_batch(&config).await;
            if let Ok(count) = routed {
                burst += count;
                if burst >= refresh_at {
                    self.refresh_statistics().await;
                    refresh_at = burst * 2;
                }
                if count < ROUTE_BATCH {
                    (burst, refresh_at) = (0, STATISTICS_AFTER);
                }
            }
            match routed {
                Ok(count) if count == ROUTE_BATCH => {
                    self.wakeups.deliveries.notify_one();
                    continue;
                }
                Ok(count) => {
                    if count > 0 {
                        tracing::debug!(events = count, "routed");
                        self.wakeups.deliveries.notify_one();
                    }
                    tokio::select! {
                        () = self.wakeups.outbox.notified() => {}
                        () = tokio::time::sleep(config.dispatch.poll_interval) => {}
                        () = self.shutdown.stopping() => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "routing new events failed; retrying");
                    self.wait_after_db_error(&self.wakeups.outbox).await;
                }
            }
        }
    }

    /// Routes up to [`ROUTE_BATCH`] events, in a `route` span; how many it routed.
    async fn route_batch(&self, config: &Config) -> Result<usize, DbError> {
        let span = tracing::info_span!("route", events = tracing::field::Empty);
        async {
            let mut client = self.pool.get().await?;
            let routed = outbox::route_new_events(&mut client, config, ROUTE_BATCH).await?;
            let events = i64::try_from(routed).unwrap_or(i64::MAX);
            tracing::Span::current().record("events", events);
            Ok(routed)
        }
        .instrument(span)
        .await
    }

    async fn refresh_statistics(&self) {
        let refreshed = self
            .on_client(async |client| queue::refresh_statistics(client).await)
            .await;
        if let Err(error) = refreshed {
            tracing::warn!(%error, "refreshing the statistics of the deliveries failed");
        }
    }
}
