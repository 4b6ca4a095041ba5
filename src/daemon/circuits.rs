//! Keeps `dispatcher.partner_circuits` in step with this daemon's circuit breakers: loads
//! them at start, writes their changes as they happen, and once more on the way out. The
//! breakers themselves decide in memory (`delivery::breaker`); this is only their I/O.

use std::sync::Arc;
use std::time::Duration;

use crate::delivery::breaker::Breakers;
use crate::shutdown::Shutdown;
use crate::store::circuits;
use crate::store::db::{self, DbError, Pool};

/// How long to wait before writing states again after the database refused them.
const WRITE_RETRY: Duration = Duration::from_secs(1);

/// Starts from the circuits as recorded, so a restart keeps holding a failing
/// partner. Without the database it starts with every circuit closed.
pub(super) async fn load(breakers: &Breakers, pool: &Pool) {
    let loaded = db::on_client(pool, async |client| circuits::recorded(client).await).await;
    match loaded {
        Ok(recorded) => breakers.restore(recorded),
        Err(error) => {
            tracing::warn!(%error, "cannot read the recorded circuit breaker states; starting closed")
        }
    }
}

/// Writes changes to `dispatcher.partner_circuits` as they happen, until shutdown
/// begins. While the database is away they wait, and the latest state is written.
pub(super) async fn record_changes(breakers: Arc<Breakers>, pool: Pool, shutdown: Shutdown) {
    while !shutdown.is_stopping() {
        tokio::select! {
            () = breakers.changed() => {}
            () = shutdown.stopping() => {}
        }
        while let Err(error) = write_changes(&breakers, &pool).await {
            tracing::warn!(%error, "cannot record circuit breaker states; retrying");
            tokio::select! {
                () = tokio::time::sleep(WRITE_RETRY) => {}
                () = shutdown.stopping() => return,
            }
        }
    }
}

/// Writes the states changed since the last write; on failure they wait for the next.
pub(super) async fn write_changes(breakers: &Breakers, pool: &Pool) -> Result<(), DbError> {
    let changes = breakers.take_changes();
    if changes.is_empty() {
        return Ok(());
    }
    let written = db::on_client(pool, async |client| circuits::save(client, &changes).await).await;
    if written.is_err() {
        breakers.unwritten(changes);
    }
    written
}
