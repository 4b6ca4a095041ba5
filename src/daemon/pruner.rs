//! The pruner: the daemon's retention pass at start, then one every `prune_interval`,
//! until shutdown. What is erased or deleted, and how, is `store::retention`'s.

use crate::config::RetentionConfig;
use crate::shutdown::Shutdown;
use crate::store::db::Pool;
use crate::store::retention;

pub(super) async fn run(pool: Pool, retention: RetentionConfig, shutdown: Shutdown) {
    loop {
        let started = std::time::Instant::now();
        match retention::prune(&pool, &retention, &shutdown).await {
            Ok(report) if report.is_empty() => tracing::debug!("nothing to prune"),
            Ok(report) => tracing::info!(
                event_bodies_erased = report.event_bodies_erased,
                answers_erased = report.answers_erased,
                deliveries_archived = report.deliveries_archived,
                archived_weeks_dropped = report.archived_weeks_dropped,
                deliveries_deleted = report.deliveries_deleted,
                events_deleted = report.events_deleted,
                audit_entries_deleted = report.audit_entries_deleted,
                sessions_deleted = report.sessions_deleted,
                idempotency_keys_deleted = report.idempotency_keys_deleted,
                duration_ms = started.elapsed().as_millis() as u64,
                "pruned"
            ),
            Err(error) => {
                tracing::warn!(%error, "pruning failed; trying again at the next interval")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(retention.prune_interval) => {}
            () = shutdown.stopping() => return,
        }
    }
}
