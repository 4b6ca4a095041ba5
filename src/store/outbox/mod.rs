//! The outbox table: events written by the enrollment flow, waiting to be fanned out.
//!
//! No event can hold up another: an event whose deliveries PostgreSQL refuses to store
//! (a value too large to index, a constraint of the site's own) fails the batch it is in,
//! and the same batch is then routed around it ([`route_new_events_around_refusals`]):
//! that event ends `invalid` with the database's reason, the others are routed.

use std::ops::Range;

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::config::Config;
use crate::delivery::id::DeliveryIds;
use crate::delivery::routing::{self, UnroutedEvent};
use crate::delivery::state::DeliveryState;
use crate::delivery::{ClaimedDelivery, NewDelivery};
use crate::store::db::{refused_for_content, Refusal};
use crate::store::queue::{Inserted, SendNow};
use crate::store::{notify, queue};

mod position;
use position::Position;

/// What one call of [`route_new_events`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routed {
    /// This many events were fanned out; 0 when none was waiting.
    Events(usize),
    /// Another daemon holds the routing lock: it routes them.
    ByAnotherDaemon,
}

/// What one routing transaction did: the events routed (any refused ones among them),
/// the ones PostgreSQL refused, and what it left for a claim or claimed itself.
#[derive(Debug)]
pub struct RoutingRound {
    pub routed: Routed,
    /// Refused events, each ended `invalid` ([`route_new_events_around_refusals`] only).
    pub refused: Vec<RefusedEvent>,
    /// Deliveries left `pending`: when none, no claimer needs waking.
    pub pending: usize,
    /// Claimed as they were inserted ([`route_and_claim`] only), to be sent now by the
    /// daemon that offered them.
    pub claimed: Vec<ClaimedDelivery>,
}

impl RoutingRound {
    fn nothing(routed: Routed) -> RoutingRound {
        RoutingRound {
            routed,
            refused: Vec::new(),
            pending: 0,
            claimed: Vec::new(),
        }
    }
}

/// An event whose deliveries PostgreSQL refused to store; it was ended `invalid` with the
/// database's reason.
#[derive(Debug)]
pub struct RefusedEvent {
    pub event_id: i64,
    pub reason: Refusal,
}

/// Fans out up to `limit` unrouted events into deliveries, inserted in one statement, all
/// left for a claim. A value in one of them that PostgreSQL refuses (see
/// [`refused_for_content`]) fails the whole batch: then
/// [`route_new_events_around_refusals`] routes it.
pub async fn route_new_events(
    client: &mut deadpool_postgres::Client,
    config: &Config,
    limit: usize,
) -> Result<Routed, tokio_postgres::Error> {
    let round = route(client, config, limit, Refusals::FailTheBatch, &mut |_| {
        false
    })
    .await?;
    Ok(round.routed)
}

/// [`route_new_events`], claiming as it inserts them the deliveries `offer` says its
/// daemon can send now and a claim would take at once (see [`queue::SendNow`]). The
/// transaction then commits synchronously: they are sent on the strength of it.
pub async fn route_and_claim(
    client: &mut deadpool_postgres::Client,
    config: &Config,
    limit: usize,
    offer: &mut (dyn FnMut(&NewDelivery) -> bool + Send),
) -> Result<RoutingRound, tokio_postgres::Error> {
    route(client, config, limit, Refusals::FailTheBatch, offer).await
}

/// Fans out the same events as [`route_new_events`], when PostgreSQL refused that batch
/// for what it holds: finds the events whose deliveries it refuses and ends each
/// `invalid` with the database's reason (SQLSTATE and message), and routes the others,
/// in one transaction, so no event can hold up the ones after it. All are left for a
/// claim.
pub async fn route_new_events_around_refusals(
    client: &mut deadpool_postgres::Client,
    config: &Config,
    limit: usize,
) -> Result<RoutingRound, tokio_postgres::Error> {
    route(client, config, limit, Refusals::EndTheEvent, &mut |_| false).await
}

/// What routing does with an event whose deliveries PostgreSQL refuses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refusals {
    /// Fails the batch: one statement for all, the fast way while nothing is refused.
    FailTheBatch,
    /// Ends that event `invalid` and routes the rest.
    EndTheEvent,
}

/// One routing transaction, ended before it returns, whatever came of it: committed when
/// it routed events, rolled back (and waited for) otherwise. A transaction merely dropped
/// sends its ROLLBACK without waiting, so the look returned still holding the routing
/// lock, and the router's next look, on another of its pool's connections, could find it
/// taken and read that as another daemon routing: back to sleep, an event stranded until
/// the poll interval (tests/it/wakeup.rs).
async fn route(
    client: &mut deadpool_postgres::Client,
    config: &Config,
    limit: usize,
    refusals: Refusals,
    offer: &mut (dyn FnMut(&NewDelivery) -> bool + Send),
) -> Result<RoutingRound, tokio_postgres::Error> {
    let mut transaction = client.transaction().await?;
    let round = match route_in(&mut transaction, config, limit, refusals, offer).await {
        Ok(round) => round,
        Err(error) => {
            // A statement's error has already released the lock on the server; an error
            // of the client's own (a value it cannot read) has not. The error is what the
            // caller needs; a failed rollback adds nothing to it.
            let _ = transaction.rollback().await;
            return Err(error);
        }
    };
    match round.routed {
        Routed::Events(count) if count > 0 => {
            if round.claimed.is_empty() {
                // Nothing is sent on the strength of this routing alone, so it commits
                // without waiting for its WAL flush: if the server crashes before the
                // flush, the routing is lost whole, deliveries and the routing position
                // together, and the events are routed again. A claim commits
                // synchronously, which flushes the WAL up to it, this routing included.
                // One flush less between an event's commit and its request. What it
                // claimed itself is sent once it commits, so then it waits: a routing
                // lost after its requests went out would be routed again under new
                // delivery ids, and the partner would see the event twice under two
                // webhook-ids.
                transaction
                    .batch_execute("SET LOCAL synchronous_commit = off")
                    .await?;
            }
            transaction.commit().await?;
        }
        _ => transaction.rollback().await?,
    }
    Ok(round)
}

/// The work of [`route`]'s transaction, up to its end.
async fn route_in(
    transaction: &mut deadpool_postgres::Transaction<'_>,
    config: &Config,
    limit: usize,
    refusals: Refusals,
    offer: &mut (dyn FnMut(&NewDelivery) -> bool + Send),
) -> Result<RoutingRound, tokio_postgres::Error> {
    // The routing position's row lock is the routing lock: only one daemon routes at a
    // time, in order, so per-patient ordering holds across daemons.
    let Some(mut position) = Position::lock(&*transaction).await? else {
        return Ok(RoutingRound::nothing(Routed::ByAnotherDaemon));
    };
    let rows = position.next_events(&*transaction, limit).await?;
    if rows.is_empty() {
        return Ok(RoutingRound::nothing(Routed::Events(0)));
    }
    // Of the database's clock, not this daemon's: the ids' time is the `created_at` the
    // insert stores (its default, this transaction's `now()`), so support reads a window
    // of them by the primary key.
    let mut ids = DeliveryIds::made_at(position.now);
    let mut events = Vec::with_capacity(rows.len());
    let mut planned = Vec::with_capacity(rows.len());
    // Event i's deliveries are planned[starts[i]..starts[i + 1]].
    let mut starts = Vec::with_capacity(rows.len() + 1);
    for row in rows.iter().map(|(_, row)| row) {
        let event = UnroutedEvent {
            id: row.get("id"),
            event_name: row.get("event_name"),
            is_object: row.get::<_, Option<bool>>("is_object").unwrap_or(false),
            support_program_id: row.get("support_program_id"),
            patient_id: row.get("patient_id"),
        };
        starts.push(planned.len());
        planned.extend(routing::route(config, &event, &mut ids));
        events.push(event);
    }
    starts.push(planned.len());
    let (inserted, refused) = match refusals {
        Refusals::FailTheBatch => {
            let offered: Vec<Uuid> = planned
                .iter()
                .filter(|delivery| delivery.state == DeliveryState::Pending && offer(delivery))
                .map(|delivery| delivery.id)
                .collect();
            let send_now = SendNow {
                offered: &offered,
                claim_token: Uuid::new_v4(),
                lease: config.dispatch.lease,
            };
            (
                queue::insert(&*transaction, &planned, send_now).await?,
                Vec::new(),
            )
        }
        Refusals::EndTheEvent => {
            insert_around_refusals(transaction, &events, &planned, &starts, &mut ids).await?
        }
    };
    position.passed(&*transaction, &rows).await?;
    if inserted.pending > 0 {
        notify::notify_deliveries(&*transaction).await?;
    }
    Ok(RoutingRound {
        routed: Routed::Events(rows.len()),
        refused,
        pending: inserted.pending,
        claimed: inserted.claimed,
    })
}

/// Inserts the planned deliveries of `events` (event i's are
/// `planned[starts[i]..starts[i + 1]]`), halving the events under a savepoint wherever
/// PostgreSQL refuses what they hold, down to the single events it refuses; each of
/// those gets one `invalid` delivery with the database's reason instead
/// ([`routing::refused`], its id of `ids`). A refusal of that delivery too, or any error
/// but a refusal of content, fails the whole: then the refusal was not of the event, and
/// routing is tried again later.
async fn insert_around_refusals(
    transaction: &mut deadpool_postgres::Transaction<'_>,
    events: &[UnroutedEvent],
    planned: &[NewDelivery],
    starts: &[usize],
    ids: &mut DeliveryIds,
) -> Result<(Inserted, Vec<RefusedEvent>), tokio_postgres::Error> {
    let mut all = Inserted::default();
    let mut refused = Vec::new();
    // A stack of ranges of events, the earliest on top.
    let mut parts: Vec<Range<usize>> = Vec::new();
    parts.push(0..events.len());
    while let Some(part) = parts.pop() {
        let savepoint = transaction.savepoint("route_part").await?;
        let deliveries = &planned[starts[part.start]..starts[part.end]];
        let inserted = queue::insert(&savepoint, deliveries, SendNow::NONE).await;
        let reason = match inserted {
            Ok(inserted) => {
                savepoint.commit().await?;
                all.pending += inserted.pending;
                continue;
            }
            Err(error) => match refused_for_content(&error) {
                Some(reason) => reason,
                None => return Err(error),
            },
        };
        savepoint.rollback().await?;
        if part.len() > 1 {
            let middle = part.start + part.len() / 2;
            parts.push(middle..part.end);
            parts.push(part.start..middle);
            continue;
        }
        let event = &events[part.start];
        let invalid = [routing::refused(event, &reason, ids)];
        // Ended `invalid`: nothing pending, nothing claimed.
        queue::insert(&*transaction, &invalid, SendNow::NONE).await?;
        refused.push(RefusedEvent {
            event_id: event.id,
            reason,
        });
    }
    Ok((all, refused))
}

/// Marks events for routing again, e.g. after a partner for their program was added.
pub async fn route_again(
    client: &impl GenericClient,
    event_ids: &[i64],
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO dispatcher.outbox_route_again (event_id)
             SELECT unnest($1::int8[]) ON CONFLICT DO NOTHING",
            &[&event_ids],
        )
        .await?;
    notify::notify_outbox(client).await
}
