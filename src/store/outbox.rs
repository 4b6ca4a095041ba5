//! The outbox table: events written by the enrollment flow, waiting to be fanned out.

use deadpool_postgres::GenericClient;

use crate::config::Config;
use crate::delivery::routing::{self, UnroutedEvent};
use crate::store::{notify, queue};

/// Only one daemon routes at a time, in outbox order, so per-patient ordering holds
/// across daemons. Routing is one short transaction per batch, so this costs little.
const ROUTING_LOCK: i64 = 0x6865_6c70_726f_7574; // "helprout"

/// What one call of [`route_new_events`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routed {
    /// This many events were fanned out; 0 when none was waiting.
    Events(usize),
    /// Another daemon holds the routing lock: it routes them.
    ByAnotherDaemon,
}

/// Fans out up to `limit` unrouted events into deliveries.
pub async fn route_new_events(
    client: &mut deadpool_postgres::Client,
    config: &Config,
    limit: usize,
) -> Result<Routed, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    // Routing commits without waiting for its WAL flush: if the server crashes before
    // the flush, the routing is lost whole, deliveries and `routed_at` together, and the
    // events are routed again. Nothing is sent on the strength of it alone: a claim
    // commits synchronously, which flushes the WAL up to it, this routing included. One
    // flush less between an event's commit and its request.
    transaction
        .batch_execute("SET LOCAL synchronous_commit = off")
        .await?;
    let try_lock = transaction
        .prepare_cached("SELECT pg_try_advisory_xact_lock($1)")
        .await?;
    let locked: bool = transaction
        .query_one(&try_lock, &[&ROUTING_LOCK])
        .await?
        .get(0);
    if !locked {
        return Ok(Routed::ByAnotherDaemon);
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let unrouted = transaction
        .prepare_cached(
            "SELECT id, event_name,
                    jsonb_typeof(event) = 'object' AS is_object,
                    CASE WHEN jsonb_typeof(event -> 'supportProgramId') = 'string'
                         THEN event ->> 'supportProgramId' END AS support_program_id,
                    CASE WHEN jsonb_typeof(event -> 'patient' -> 'id') = 'string'
                         THEN event -> 'patient' ->> 'id' END AS patient_id
             FROM dispatcher.outbox
             WHERE routed_at IS NULL
             ORDER BY id
             LIMIT $1",
        )
        .await?;
    let rows = transaction.query(&unrouted, &[&limit]).await?;
    if rows.is_empty() {
        return Ok(Routed::Events(0));
    }
    let mut event_ids = Vec::with_capacity(rows.len());
    let mut planned = Vec::with_capacity(rows.len());
    for row in &rows {
        let event = UnroutedEvent {
            id: row.get("id"),
            event_name: row.get("event_name"),
            is_object: row.get::<_, Option<bool>>("is_object").unwrap_or(false),
            support_program_id: row.get("support_program_id"),
            patient_id: row.get("patient_id"),
        };
        event_ids.push(event.id);
        planned.extend(routing::route(config, &event));
    }
    queue::insert(&transaction, &planned).await?;
    let mark_routed = transaction
        .prepare_cached("UPDATE dispatcher.outbox SET routed_at = now() WHERE id = ANY($1)")
        .await?;
    transaction.execute(&mark_routed, &[&event_ids]).await?;
    notify::notify_deliveries(&transaction).await?;
    transaction.commit().await?;
    Ok(Routed::Events(rows.len()))
}

/// Marks events for routing again, e.g. after a partner for their program was added.
pub async fn route_again(
    client: &impl GenericClient,
    event_ids: &[i64],
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE dispatcher.outbox SET routed_at = NULL WHERE id = ANY($1)",
            &[&event_ids],
        )
        .await?;
    notify::notify_outbox(client).await
}
