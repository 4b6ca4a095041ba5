//! The NOTIFY channels that wake daemons, the statements that send on them, and the one
//! that listens. The outbox trigger (migrations 0001, 0006, 0008 and 0015) sends on
//! [`OUTBOX_CHANNEL`] too, but only while a router waits for it: the router says so with
//! [`router_may_sleep`] and takes it back with [`router_busy`], and the producer that
//! notifies takes it back too, so producers pay for a NOTIFY (a global lock at their
//! commit) once per sleep of the router. The daemon's listener (`daemon::wakeup`) LISTENs
//! on both channels.
//!
//! The flag and the wake-up lock are the dispatcher's own (migration 0008): an unlogged
//! sequence, so setting it takes no transaction id and waits on no WAL flush or replica,
//! and a lock on a table no other role has a right to.

use deadpool_postgres::GenericClient;
use futures_util::future::poll_fn;
use tokio_postgres::AsyncMessage;

use super::db::{DbError, ListenConnection};

/// Sent by the outbox trigger on an insert while a router waits, and when events are marked for routing again.
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

/// The router found nothing to route: marks it waiting, so producers notify from now on,
/// then checks that no producer that read "busy" is still committing (each holds the
/// wake-up lock from reading the flag to the end of its transaction). True: every such
/// commit is visible now; look at the outbox once more, and if it is empty, sleep until a
/// NOTIFY. False: a producer is mid-commit; look again shortly instead.
pub async fn router_may_sleep(client: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT dispatcher.router_may_sleep()", &[])
        .await?
        .get(0))
}

/// The router has work and looks again by itself: producers stop notifying.
pub async fn router_busy(client: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT setval('dispatcher.router_waiting', 0)", &[])
        .await
        .map(drop)
}

async fn notify(client: &impl GenericClient, channel: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_notify($1, '')", &[&channel])
        .await
        .map(drop)
}

/// Subscribes a connection to both channels; its notifications arrive on the
/// connection's message stream (read by `daemon::wakeup`).
pub async fn listen(client: &tokio_postgres::Client) -> Result<(), DbError> {
    client
        .batch_execute(&format!(
            "LISTEN {OUTBOX_CHANNEL}; LISTEN {DELIVERIES_CHANNEL};"
        ))
        .await
        .map_err(DbError::from)
}

/// What a LISTEN connection heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// On [`OUTBOX_CHANNEL`]: events wait to be routed.
    Outbox,
    /// On [`DELIVERIES_CHANNEL`]: deliveries are due.
    Deliveries,
}

/// Drives a LISTEN connection until its next notification (its client's statements
/// complete only while it is driven). `None` once the server closed it.
pub async fn next_notification(
    connection: &mut ListenConnection,
) -> Result<Option<Heard>, DbError> {
    loop {
        match poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(note))) => {
                return Ok(Some(match note.channel() {
                    OUTBOX_CHANNEL => Heard::Outbox,
                    _ => Heard::Deliveries,
                }))
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.into()),
            None => return Ok(None),
        }
    }
}
