//! The delivery queue: routing events into deliveries, claiming due ones under a lease
//! (`claim.rs`), recording each claim's result (`record.rs`), and rescuing claims whose
//! lease ran out (`rescue.rs`); and what keeps the claim's plan cheap (`plan.rs`).
//! Statements on `dispatcher.deliveries`, `dispatcher.attempts` and
//! `dispatcher.partner_patients` that the daemon runs; what support runs is in
//! [`super::support`].

use std::time::Duration;

use deadpool_postgres::GenericClient;

use uuid::Uuid;

use crate::delivery::{ClaimedDelivery, NewDelivery};

/// The partners that have pending deliveries, found by skipping through
/// `deliveries_pending` one partner at a time (a loose index scan): a few index probes
/// however long any partner's backlog is. Shared by the statements that read the queue
/// partner by partner.
macro_rules! partners_waiting {
    () => {
        "waiting(partner) AS (
             (SELECT partner FROM dispatcher.deliveries
              WHERE state = 'pending' AND partner IS NOT NULL
              ORDER BY partner LIMIT 1)
             UNION ALL
             SELECT (SELECT d.partner FROM dispatcher.deliveries d
                     WHERE d.state = 'pending' AND d.partner > waiting.partner
                     ORDER BY d.partner LIMIT 1)
             FROM waiting WHERE waiting.partner IS NOT NULL
         )"
    };
}

/// The lease of a claim, as the `lease` CTE of the statement that claims: one row of
/// `dispatcher.leases` with the claim's token (`$token`), its end (`$secs` from now, the
/// expression the statement sets the claimed deliveries' `leased_until` by, so the
/// rescuer's look at the lease and at its deliveries agree) and the ids of `$from`; none
/// when `$from` is empty.
macro_rules! lease_of {
    ($from:literal, $token:literal, $secs:literal) => {
        concat!(
            "lease AS (
                 INSERT INTO dispatcher.leases (claim_token, lease_end, deliveries)
                 SELECT ",
            $token,
            "::uuid, now() + make_interval(secs => ",
            $secs,
            "), array_agg(id)
                 FROM ",
            $from,
            "
                 HAVING count(*) > 0
             )"
        )
    };
}

mod claim;
mod order;
mod plan;
mod record;
mod rescue;

pub use claim::{claim_due, until_next_due, Claim, PartnerRoom, BODY_ERASED};
pub use order::release_stranded;
pub(crate) use order::{lock_patients, settle};
pub use plan::{explain_claim_due, refresh_statistics};
pub use record::record;
pub use rescue::{rescue_expired, until_next_lease_end, ExpiredLease};

/// The deliveries a routing transaction may claim for its own daemon as it inserts them:
/// `offered` (the ones its daemon holds a slot and capacity for), under `claim_token`
/// for `lease`.
///
/// A delivery claimed as it is inserted is written once, claimed, instead of inserted
/// and updated by a claim: one write of the wide row less, and one commit less between the event's commit and its request. So only
/// where a claim would have taken it at once and nothing else: it is first in its
/// patient's order (nothing else unfinished with its partner, none beside it in the
/// batch), and its partner has no delivery already due, which a claim takes first, in
/// due order. Anything else is inserted as [`insert`] says, for a claim to take.
#[derive(Debug, Clone, Copy)]
pub struct SendNow<'a> {
    pub offered: &'a [Uuid],
    pub claim_token: Uuid,
    pub lease: Duration,
}

impl SendNow<'_> {
    /// Nothing is offered: every delivery is left for a claim.
    pub const NONE: SendNow<'static> = SendNow {
        offered: &[],
        claim_token: Uuid::nil(),
        lease: Duration::ZERO,
    };
}

/// What one [`insert`] did.
#[derive(Debug, Default)]
pub struct Inserted {
    /// Deliveries left `pending` for a claim, the inserted ones and any a late event's
    /// order made pending again: when none, there is nothing to wake a claimer for.
    pub pending: usize,
    /// Claimed as they were inserted ([`SendNow`]): to be sent now, by the daemon that
    /// offered them, once the transaction has committed.
    pub claimed: Vec<ClaimedDelivery>,
}

/// Inserts routed deliveries; an (event, partner) pair that already has one is skipped.
/// One behind an unfinished earlier event of its patient to its partner (routed before, or
/// in this same batch) is inserted `waiting`; one of an event routed late (a producer's
/// transaction that committed after later ones, or an unrouted event routed again) makes
/// the pending ones behind it wait. The insert's own look decides in the common case; the
/// locks and `settle` that follow correct what a transaction committing meanwhile
/// changed (see `order.rs`). The caller's transaction holds it all. Of the deliveries
/// `send_now` offers, those a claim would take at once are inserted claimed. Their
/// `created_at` is its default, the transaction's `now()`, the time their ids must be of
/// (`delivery/id.rs`: routing reads it with its position).
///
/// Only a delivery whose patient has another unfinished delivery to its partner, in the
/// insert's view or in this batch, goes through the locks and `settle`: for any other the
/// locks would hold nothing but itself, unseen by other transactions until commit, and
/// `settle` would change nothing. (The one thing a later look could see is a resend of an
/// earlier event committing meanwhile: the race `order.rs` leaves to the claim. Against
/// a delivery claimed here, it is what a resend of an earlier event does against any
/// later one already in flight: both go out.) In a burst of new patients, that is every
/// delivery: the locks and settle of 1,000-delivery batches were a tenth of PostgreSQL's
/// work in the `drain` bench.
pub async fn insert(
    client: &impl GenericClient,
    deliveries: &[NewDelivery],
    send_now: SendNow<'_>,
) -> Result<Inserted, tokio_postgres::Error> {
    let mut ids = Vec::with_capacity(deliveries.len());
    let mut event_ids = Vec::with_capacity(deliveries.len());
    let mut partners = Vec::with_capacity(deliveries.len());
    let mut event_names = Vec::with_capacity(deliveries.len());
    let mut patient_ids = Vec::with_capacity(deliveries.len());
    let mut states = Vec::with_capacity(deliveries.len());
    let mut errors = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        ids.push(delivery.id);
        event_ids.push(delivery.event_id);
        partners.push(delivery.partner.as_deref());
        event_names.push(delivery.event_name.as_str());
        patient_ids.push(delivery.patient_id.as_deref());
        states.push(delivery.state.as_str());
        errors.push(delivery.last_error.as_deref());
    }
    let statement = client.prepare_cached(concat!(
        "WITH new AS (
                 SELECT *,
                        count(*) FILTER (WHERE state = 'pending') OVER (
                            PARTITION BY partner, patient_id ORDER BY event_id
                            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) > 0
                            AS behind_this_batch,
                        count(*) FILTER (WHERE state = 'pending') OVER (
                            PARTITION BY partner, patient_id) > 1
                            AS siblings_in_batch
                 FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
                      AS new(id, event_id, partner, event_name, patient_id, state, last_error)
             ),
             -- What this look sees, for each pending one: the patient's earliest
             -- unfinished delivery to its partner (one read of the order's index, in
             -- event order): ahead of it, it waits; anywhere, or any waiting one, its
             -- order is settled under the locks (see above).
             seen AS (
                 SELECT new.*,
                        new.state = 'pending' AND new.patient_id IS NOT NULL AND (
                            new.behind_this_batch
                            OR COALESCE(ahead.event_id < new.event_id, false))
                            AS behind,
                        new.state = 'pending' AND new.patient_id IS NOT NULL AND (
                            new.siblings_in_batch
                            OR ahead.event_id IS NOT NULL
                            OR EXISTS (
                                SELECT 1 FROM dispatcher.deliveries other
                                WHERE other.partner = new.partner
                                  AND other.patient_id = new.patient_id
                                  AND other.state = 'waiting'
                                -- A lookup per delivery: without it, a plan made beside a
                                -- small table hashed every waiting delivery at each batch.
                                OFFSET 0))
                            AS in_order
                 FROM new
                 LEFT JOIN LATERAL (
                     SELECT other.event_id FROM dispatcher.deliveries other
                     WHERE new.state = 'pending'
                       AND other.partner = new.partner
                       AND other.patient_id = new.patient_id
                       AND other.state IN ('pending', 'in_flight')
                     ORDER BY other.event_id
                     LIMIT 1
                 ) AS ahead ON true
             ),
             -- The offered partners with deliveries already due: a claim takes those
             -- first, so new ones of theirs wait their turn. One probe of
             -- `deliveries_pending` each, whatever plan statistics from a small table
             -- make: `LIMIT 1`, so it is never a join over every due delivery, and in
             -- due order, which only that index gives (an `EXISTS` was made a join; and
             -- unordered, the probe went by the order's index, through every unfinished
             -- delivery of the partner, dead entries included). Once per statement:
             -- inlined, it ran again for every offered delivery, over the whole batch.
             queued AS MATERIALIZED (
                 SELECT listed.partner
                 FROM (SELECT DISTINCT partner FROM new WHERE id = ANY($8)) AS listed
                 CROSS JOIN LATERAL (
                     SELECT 1 FROM dispatcher.deliveries due
                     WHERE due.partner = listed.partner AND due.state = 'pending'
                       AND due.due_at <= now()
                       -- Claimed ones (at most its `max_in_flight`) are not waiting.
                       AND due.claim_token IS NULL
                     ORDER BY due.due_at
                     LIMIT 1
                 ) AS due
             ),
             -- Claimed as inserted: offered, first in its patient's order, its partner with
             -- nothing due before it, and its event's body there to send (read in this
             -- statement's snapshot, which the final select reads it from too).
             placed AS (
                 SELECT seen.*, body.event AS body, body.traceparent,
                        body.event IS NOT NULL AS claimed
                 FROM seen
                 LEFT JOIN LATERAL (
                     SELECT o.event::text AS event, o.traceparent
                     FROM dispatcher.outbox o
                     WHERE seen.id = ANY($8) AND seen.state = 'pending' AND NOT seen.in_order
                       AND NOT EXISTS (SELECT 1 FROM queued WHERE queued.partner = seen.partner)
                       AND o.id = seen.event_id
                     -- A lookup per offered delivery: joined, the plan read and hashed
                     -- the whole outbox for a batch that offered none.
                     OFFSET 0
                 ) AS body ON true
             ),
             -- Claimed as the claim stores it (migration 0020): pending, with the
             -- claim's token and the lease's end.
             inserted AS (
                 INSERT INTO dispatcher.deliveries
                     (id, event_id, partner, event_name, patient_id, state, last_error,
                      due_at, ended_at, claim_token, leased_until)
                 SELECT id, event_id, partner, event_name, patient_id,
                        CASE WHEN behind THEN 'waiting' ELSE state END,
                        last_error,
                        CASE WHEN state = 'pending' THEN now() END,
                        CASE WHEN state = 'pending' THEN NULL ELSE now() END,
                        CASE WHEN claimed THEN $10::uuid END,
                        CASE WHEN claimed THEN now() + make_interval(secs => $9) END
                 FROM placed
                 ON CONFLICT (event_id, partner) DO NOTHING
                 RETURNING id, state, claim_token IS NOT NULL AS claimed
             ),
             ",
            lease_of!("inserted WHERE inserted.claimed", "$10", "$9"),
            "
             SELECT inserted.id, inserted.state, inserted.claimed, placed.in_order,
                    placed.event_id, placed.partner, placed.event_name, 0 AS attempts_used,
                    placed.body AS event, placed.traceparent,
                    CASE WHEN inserted.claimed THEN
                        (SELECT known.external_id FROM dispatcher.partner_patients known
                         WHERE known.partner = placed.partner
                           AND known.patient_id = placed.patient_id)
                    END AS external_id
             FROM inserted JOIN placed ON placed.id = inserted.id"
    ))
    .await?;
    let rows = client
        .query(
            &statement,
            &[
                &ids,
                &event_ids,
                &partners,
                &event_names,
                &patient_ids,
                &states,
                &errors,
                &send_now.offered,
                &send_now.lease.as_secs_f64(),
                &send_now.claim_token,
            ],
        )
        .await?;
    let mut inserted = Inserted::default();
    let mut in_order = Vec::new();
    for row in &rows {
        if row.get::<_, bool>("claimed") {
            if let Some(event) = row.get::<_, Option<String>>("event") {
                let delivery = claim::claimed(row, send_now.claim_token, event);
                inserted.claimed.push(delivery);
            }
        } else if row.get::<_, &str>("state") == "pending" {
            inserted.pending += 1;
        }
        if row.get::<_, bool>("in_order") {
            in_order.push(row.get("id"));
        }
    }
    order::lock_patients(client, &in_order).await?;
    inserted.pending += order::settle(client, &in_order).await?.len();
    Ok(inserted)
}

/// One partner's unfinished deliveries, as the metrics report them.
#[derive(Debug, Clone, PartialEq)]
pub struct PartnerQueue {
    pub partner: String,
    /// Waiting ones included: as before they had a state of their own, the gauge counts
    /// every delivery not yet claimed.
    pub pending: i64,
    pub in_flight: i64,
    /// Seconds the oldest due delivery (due and not yet claimed, or its lease run out)
    /// has waited past its due time; 0 when none is due.
    pub oldest_due_seconds: f64,
}

/// Every partner's queue in one grouped scan of the unfinished deliveries, each state on
/// its own partial index (`deliveries_pending`, which holds the claimed ones too, and
/// `deliveries_waiting`), so reading it at each scrape costs little.
pub async fn queue_by_partner(
    client: &impl GenericClient,
) -> Result<Vec<PartnerQueue>, tokio_postgres::Error> {
    let rows = client
        .query(
            concat!(
                "SELECT partner,
                        count(*) FILTER (WHERE state <> 'in_flight') AS pending,
                        count(*) FILTER (WHERE state = 'in_flight') AS in_flight,
                        COALESCE(EXTRACT(EPOCH FROM now() - min(due) FILTER (WHERE due <= now())), 0)::float8
                            AS oldest_due_seconds
                 FROM (SELECT d.partner, ",
                shown_state!("d"),
                " AS state,
                              -- A claimed one is due again when its lease ends.
                              CASE WHEN d.claim_token IS NULL THEN d.due_at ELSE d.leased_until END
                                  AS due
                       FROM dispatcher.deliveries d
                       WHERE d.state = 'pending' AND d.partner IS NOT NULL
                       UNION ALL
                       SELECT partner, state, due_at FROM dispatcher.deliveries
                       WHERE state = 'waiting' AND partner IS NOT NULL) AS unfinished
                 GROUP BY partner"
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| PartnerQueue {
            partner: row.get("partner"),
            pending: row.get("pending"),
            in_flight: row.get("in_flight"),
            oldest_due_seconds: row.get("oldest_due_seconds"),
        })
        .collect())
}

/// A wait the database measured in seconds (negative when already past), as a Duration.
fn wait_from_seconds(seconds: Option<f64>) -> Option<Duration> {
    seconds.map(|seconds| Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX))
}
