//! The claim: due deliveries taken under a lease, no more of a partner's than it has room
//! for, in one statement that runs on one plan shape whatever the backlog.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use super::wait_from_seconds;
use crate::delivery::outcome::Resolution;
use crate::delivery::state::DeliveryState;
use crate::delivery::ClaimedDelivery;

/// How many deliveries a partner can send now: its free `max_in_flight` slots, or fewer
/// while its circuit breaker holds it.
#[derive(Debug, Clone)]
pub struct PartnerRoom {
    pub partner: String,
    pub free: usize,
}

/// Why a delivery ended without being sent: its event's body was erased while it was
/// pending. Retention erases only events whose deliveries all ended, and a resend checks
/// the body under a lock, so this should never happen; if it does, the delivery must not
/// wait for ever, holding back every later event of its (partner, patient).
pub const BODY_ERASED: &str = "ended without sending: the event body was erased by retention \
     while this delivery waited to be sent; it cannot be sent again";

/// The claim: `$1` limit, `$2` lease in seconds, `$3` claim token, `$4`/`$5` the
/// configured partners and how many each can take now (0 while its slots are full or its
/// circuit holds it).
///
/// Each partner's due deliveries are read on their own (`LATERAL`, on
/// `deliveries_pending`), at most as many as it has room for, so a held partner's backlog
/// is never walked; the earliest due across partners are then locked and taken. Choosing
/// before locking keeps the locks to the rows taken (but for the race `locked` describes):
/// locking inside each partner's read would lock every partner's share, and the rows left
/// out would stay locked (and be skipped by other daemons) until the claim commits. The
/// statement is prepared once per connection and runs on a generic plan (see
/// [`GENERIC_PLAN`]).
pub(super) const CLAIM_DUE: &str = concat!(
    "WITH RECURSIVE ",
    partners_waiting!(),
    ",
     room AS (
         -- A partner no longer configured is claimed from too, to be postponed.
         SELECT waiting.partner, least(COALESCE(configured.free, $1), $1) AS free
         FROM waiting
         LEFT JOIN (SELECT DISTINCT ON (partner) partner, free
                    FROM unnest($4::text[], $5::int8[]) AS listed(partner, free)
                    ORDER BY partner, free) AS configured
                ON configured.partner = waiting.partner
         WHERE waiting.partner IS NOT NULL
     ),
     -- Each partner's earliest due deliveries, as many as it has room for, then the
     -- earliest of all of them: read, not locked, so a claim locks only what it takes.
     -- Twice the limit, so that rows another daemon is claiming at this moment (locked,
     -- skipped below) leave this claim enough to take. `OFFSET 0` keeps each lookup a
     -- lookup per delivery, by index, however the table looked when the generic plan was
     -- made (see GENERIC_PLAN).
     candidate AS (
         SELECT chosen.id, chosen.due_at
         FROM room CROSS JOIN LATERAL (
             SELECT d.id, d.due_at
             FROM dispatcher.deliveries d
             WHERE d.partner = room.partner
               AND d.state = 'pending'
               AND d.due_at <= now()
               -- Claimed ones keep their place in `deliveries_pending`, at the head of
               -- its due order (at most the partner's `max_in_flight` for each daemon,
               -- and lost claims until they are rescued): passed over.
               AND d.claim_token IS NULL
               AND NOT EXISTS (
                   SELECT 1 FROM dispatcher.deliveries earlier
                   WHERE earlier.partner = d.partner
                     AND earlier.patient_id = d.patient_id
                     AND earlier.event_id < d.event_id
                     AND earlier.state IN ('pending', 'in_flight')
                   OFFSET 0)
             ORDER BY d.due_at
             LIMIT room.free
         ) AS chosen
         WHERE room.free > 0
         ORDER BY chosen.due_at
         LIMIT 2 * $1
     ),
     -- Locked in due order, skipping what another daemon holds, up to the limit.
     -- Found by id, each on the primary key (`= ANY(ARRAY(...))`): a join here leaves the
     -- plan a choice, and a generic plan made beside a large backlog hashed the whole
     -- backlog, or merged along the primary key through every delivery ever made. And
     -- by id alone: with `state = 'pending'` beside it, a generic plan made beside a
     -- small table walked `deliveries_pending` in due order, the whole backlog, to find
     -- the candidates. So the state is checked above the lock, on the row as locked. A
     -- candidate changed by a transaction that committed since this statement began is
     -- still locked until this claim commits, and not taken: one claimed by another
     -- daemon holds a token (the lock's recheck of `claim_token` leaves it out of the
     -- limit); one made to wait since counts against the limit, and is left out here.
     -- Only in that race does a claim lock a row it does not take, or take fewer than it
     -- could.
     locked AS (
         SELECT taken.id, taken.event_id, taken.partner, taken.patient_id
         FROM (
             SELECT d.id, d.event_id, d.partner, d.patient_id, d.state
             FROM dispatcher.deliveries d
             WHERE d.id = ANY(ARRAY(SELECT candidate.id FROM candidate))
               AND d.due_at <= now()
               AND d.claim_token IS NULL
             ORDER BY d.due_at
             LIMIT $1
             FOR UPDATE OF d SKIP LOCKED
         ) AS taken
         WHERE taken.state = 'pending'
     ),
     due AS (
         SELECT locked.id, o.event, o.traceparent,
                (SELECT known.external_id FROM dispatcher.partner_patients known
                 WHERE known.partner = locked.partner AND known.patient_id = locked.patient_id)
                    AS external_id
         FROM locked
         CROSS JOIN LATERAL (
             SELECT o.event::text AS event, o.traceparent
             FROM dispatcher.outbox o WHERE o.id = locked.event_id
             OFFSET 0
         ) AS o
     ),
     -- In place (migration 0020): the state, `due_at` and every other indexed column
     -- stay as they are, so the new version is written beside the old one with no
     -- index entry (a HOT update) where the page has room.
     claimed AS (
         UPDATE dispatcher.deliveries d
         SET claim_token = $3::uuid,
             leased_until = now() + make_interval(secs => $2)
         WHERE d.id = ANY(ARRAY(SELECT due.id FROM due))
         RETURNING d.id, d.event_id, d.partner, d.event_name,
                   d.attempt_count - d.attempts_before_resend AS attempts_used
     ),
     -- What the rescuer finds the lease by when it runs out.
     ",
    lease_of!("claimed", "$3", "$2"),
    "
     SELECT claimed.id, claimed.event_id, claimed.partner, claimed.event_name,
            claimed.attempts_used, due.event, due.external_id, due.traceparent
     FROM claimed JOIN due ON due.id = claimed.id"
);

/// The claim runs on its generic plan, made once per connection, instead of being planned
/// at every call (1.4 ms of a claim of 100 that runs in 3-5). PostgreSQL's own choice
/// (`plan_cache_mode = auto`) kept planning it, misled by estimates of the per-partner
/// LIMIT; the session's other statements keep that choice, so only the claim's
/// transaction says so.
///
/// A generic plan is made from the table as it is at that moment, and kept until an
/// ANALYZE (the router's after a burst, autovacuum's) makes PostgreSQL plan again. Made
/// while `deliveries` was nearly empty, it would read the table whole to find the rows to
/// update, and go on doing so as the backlog grew. So the claim leaves its plan no choice
/// that depends on the table's size: each lookup is forced per delivery (`OFFSET 0`), and
/// no table is read by a sequential scan (every access has its index), which is what
/// `tests/it/overload.rs` holds it to.
pub(super) const GENERIC_PLAN: &str =
    "SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off";

/// Claims up to `limit` due deliveries for `lease`, and no more of a partner's than its
/// `room` (a partner not listed takes any number).
///
/// Due means pending, due and not claimed; a delivery whose lease ran out comes back through
/// [`rescue_expired`](super::rescue_expired) first. A delivery behind an unfinished earlier
/// event for the same (partner, patient) is `waiting`, not pending, so the claim never
/// reads it; its `NOT EXISTS` still holds order for the one race `order.rs` describes.
/// `SKIP LOCKED` lets several daemons claim side by side without waiting on each other.
///
/// A due delivery whose event body is gone cannot be sent: it is claimed, then at once
/// recorded `dead` with [`BODY_ERASED`] (and logged) like any result, which makes the next
/// event of its (partner, patient) pending. Should the daemon stop in between, its lease
/// runs out and the rescue returns it to be claimed again.
pub async fn claim_due(
    client: &mut impl GenericClient,
    limit: usize,
    lease: Duration,
    room: &[PartnerRoom],
) -> Result<Claim, tokio_postgres::Error> {
    let claim_token = Uuid::new_v4();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let (partners, free): (Vec<&str>, Vec<i64>) = room
        .iter()
        .map(|r| {
            (
                r.partner.as_str(),
                i64::try_from(r.free).unwrap_or(i64::MAX),
            )
        })
        .unzip();
    let transaction = client.transaction().await?;
    transaction.batch_execute(GENERIC_PLAN).await?;
    let statement = transaction.prepare_cached(CLAIM_DUE).await?;
    let rows = transaction
        .query(
            &statement,
            &[&limit, &lease.as_secs_f64(), &claim_token, &partners, &free],
        )
        .await?;
    transaction.commit().await?;
    let mut claim = Claim {
        deliveries: Vec::with_capacity(rows.len()),
        ended_without_body: 0,
    };
    let mut gone = Vec::new();
    for row in &rows {
        if let Some(event) = row.get::<_, Option<String>>("event") {
            claim.deliveries.push(claimed(row, claim_token, event));
            continue;
        }
        let id: Uuid = row.get("id");
        let event_id: i64 = row.get("event_id");
        let partner: String = row.get("partner");
        tracing::warn!(delivery_id = %id, event_id, %partner,
                "the event body was erased while it waited to be sent; ended the delivery dead");
        gone.push(Resolution {
            delivery_id: id,
            claim_token,
            state: DeliveryState::Dead,
            due_in: None,
            last_error: Some(BODY_ERASED.to_string()),
            attempt: None,
            learned_external_id: None,
        });
    }
    if !gone.is_empty() {
        let gone: Vec<&Resolution> = gone.iter().collect();
        claim.ended_without_body = super::record(client, &gone).await?.len();
    }
    Ok(claim)
}

/// A claimed delivery from a row of the claim's columns (`id`, `event_id`, `partner`,
/// `event_name`, `attempts_used`, `external_id`, `traceparent`) and its event's body. The
/// claim and routing's claim as it inserts (`insert`) return the same columns.
pub(super) fn claimed(row: &Row, claim_token: Uuid, event: String) -> ClaimedDelivery {
    ClaimedDelivery {
        id: row.get("id"),
        claim_token,
        event_id: row.get("event_id"),
        partner: row.get("partner"),
        event_name: row.get("event_name"),
        attempts_used: u32::try_from(row.get::<_, i32>("attempts_used")).unwrap_or(0),
        event,
        external_id: row.get("external_id"),
        traceparent: row.get("traceparent"),
    }
}

/// What one [`claim_due`] did.
#[derive(Debug)]
pub struct Claim {
    /// Claimed under the lease: to be sent now.
    pub deliveries: Vec<ClaimedDelivery>,
    /// Due deliveries ended `dead` because their event body was gone; each may have
    /// freed a later event of its (partner, patient), due at once.
    pub ended_without_body: usize,
}

/// How long until the next pending delivery falls due, if one is waiting for a later
/// time, by the database's clock (the one the claim compares `due_at` with).
pub async fn until_next_due(
    client: &impl GenericClient,
) -> Result<Option<Duration>, tokio_postgres::Error> {
    // Partner by partner, on `deliveries_pending`: the first delivery due later of each.
    let row = client
        .query_one(
            concat!(
                "WITH RECURSIVE ",
                partners_waiting!(),
                "
                 SELECT EXTRACT(EPOCH FROM min(next.due_at) - now())::float8
                 FROM waiting CROSS JOIN LATERAL (
                     SELECT d.due_at FROM dispatcher.deliveries d
                     WHERE d.partner = waiting.partner AND d.state = 'pending'
                       AND d.due_at > now() AND d.claim_token IS NULL
                     ORDER BY d.due_at
                     LIMIT 1
                 ) AS next"
            ),
            &[],
        )
        .await?;
    Ok(wait_from_seconds(row.get(0)))
}
