//! Waking the daemon when there is work: PostgreSQL LISTEN/NOTIFY, with polling as the
//! fallback for anything a notification misses (e.g. while the listener reconnects).
//! The channels, and the statements that send on them, are `store::notify`'s. The outbox
//! trigger notifies only while a router says it waits (`router` keeps that flag).

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::Notify;

use crate::shutdown::Shutdown;
use crate::store::db::ConnectionConfig;
use crate::store::notify::{self, Heard};

/// The two things the daemon waits for: new outbox events (the router) and deliveries
/// that became due (the claimer). A wake-up sent while nobody waits is kept for the next
/// wait, so none is lost between a check and a sleep.
#[derive(Clone, Default)]
pub struct Wakeups {
    pub outbox: Arc<Notify>,
    pub deliveries: Arc<Notify>,
}

impl Wakeups {
    fn wake_all(&self) {
        self.outbox.notify_one();
        self.deliveries.notify_one();
    }
}

/// Keeps a LISTEN connection open until shutdown, reconnecting with backoff. It goes over
/// the same TLS as the pool's connections.
pub async fn listen(database: ConnectionConfig, wakeups: Wakeups, shutdown: Shutdown) {
    let reconnect = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times();
    loop {
        let connect = || database.connect();
        let connected = tokio::select! {
            connected = connect
                .retry(reconnect)
                .notify(|error, delay| tracing::warn!(%error, ?delay, "cannot reach the database to listen for new events; retrying")) => connected,
            () = shutdown.stopping() => return,
        };
        let Ok((client, mut connection)) = connected else {
            continue;
        };
        let driver = async {
            loop {
                match notify::next_notification(&mut connection).await {
                    Ok(Some(Heard::Outbox)) => wakeups.outbox.notify_one(),
                    Ok(Some(Heard::Deliveries)) => wakeups.deliveries.notify_one(),
                    Ok(None) => return "connection closed".to_string(),
                    Err(error) => return error.to_string(),
                }
            }
        };
        let subscribe = notify::listen(&client);
        tokio::pin!(driver);
        // The connection is driven by `driver`, so the LISTEN can only complete beside it.
        let subscribed = tokio::select! {
            subscribed = subscribe => subscribed,
            reason = &mut driver => { tracing::warn!(%reason, "listen connection lost"); continue; }
        };
        if let Err(error) = subscribed {
            tracing::warn!(%error, "LISTEN failed; reconnecting");
            continue;
        }
        tracing::debug!("listening for new events");
        // Anything that arrived while we were not listening is picked up now.
        wakeups.wake_all();
        tokio::select! {
            reason = &mut driver => tracing::warn!(%reason, "listen connection lost; reconnecting"),
            () = shutdown.stopping() => return,
        }
    }
}
