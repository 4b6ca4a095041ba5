//! Refreshing the deliveries' statistics after a burst of routing
//! (`store::queue::refresh_statistics`), in a task of its own: the router only asks for
//! it, and goes on routing. An ANALYZE takes a lock that a VACUUM of the table holds for
//! as long as it runs; even skipping a locked table, an ANALYZE of a large one takes a
//! while, and no event should wait for it.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::shutdown::Shutdown;
use crate::store::db::{self, Pool};
use crate::store::queue;

/// Refreshes the statistics each time `due` is notified, until shutdown. Requests made
/// while one runs count as one (`Notify` keeps a single permit), so ANALYZEs never queue.
pub(super) async fn run(pool: Pool, due: Arc<Notify>, shutdown: Shutdown) {
    loop {
        tokio::select! {
            () = due.notified() => {}
            () = shutdown.stopping() => return,
        }
        let refreshed = db::on_client(&pool, async |client| {
            queue::refresh_statistics(client).await
        })
        .await;
        if let Err(error) = refreshed {
            tracing::warn!(%error, "refreshing the statistics of the deliveries failed");
        }
    }
}
