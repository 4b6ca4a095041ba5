//! The NOTIFY channels that wake daemons, the statements that send on them, and the one
//! that listens. The
//! outbox trigger (migration 0001) sends on [`OUTBOX_CHANNEL`] too; the daemon's
//! listener (`daemon::wakeup`) LISTENs on both.

use deadpool_postgres::GenericClient;

/// Sent by the outbox trigger on every insert, and when events are marked for routing again.
pub const OUTBOX_CHANNEL: &str = "dispatcher_outbox";
/// Sent when deliveries become due: routed, resent by support.
pub const DELIVERIES_CHANNEL: &str = "dispatcher_deliveries";

/// Tells every daemon that deliveries are due. Inside a transaction, it is sent at commit.
pub async fn notify_deliveries(client: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    notify(client, DELIVERIES_CHANNEL).await
}

/// Tells every daemon that outbox events wait to be routed.
pub async fn notify_outbox(client: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    notify(client, OUTBOX_CHANNEL).await
}

async fn notify(client: &impl GenericClient, channel: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_notify($1, '')", &[&channel])
        .await
        .map(drop)
}

/// Subscribes a connection to both channels; its notifications arrive on the
/// connection's message stream (read by `daemon::wakeup`).
pub async fn listen(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "LISTEN {OUTBOX_CHANNEL}; LISTEN {DELIVERIES_CHANNEL};"
        ))
        .await
}
