//! The delivery queue: routing events into deliveries, claiming due ones under a lease,
//! recording each claim's result, and rescuing claims whose lease ran out. Statements on
//! `dispatcher.deliveries`, `dispatcher.attempts` and `dispatcher.partner_patients` that
//! the daemon runs; what support runs is in [`super::support`].

use std::time::Duration;

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::delivery::outcome::Resolution;
use crate::delivery::state::DeliveryState;
use crate::delivery::{ClaimedDelivery, NewDelivery};

/// Inserts routed deliveries; an (event, partner) pair that already has one is skipped.
pub async fn insert(
    client: &impl GenericClient,
    deliveries: &[NewDelivery],
) -> Result<u64, tokio_postgres::Error> {
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
    let statement = client.prepare_cached(
        "INSERT INTO dispatcher.deliveries
                 (id, event_id, partner, event_name, patient_id, state, last_error, due_at, ended_at)
             SELECT id, event_id, partner, event_name, patient_id, state, last_error,
                    CASE WHEN state = 'pending' THEN now() END,
                    CASE WHEN state = 'pending' THEN NULL ELSE now() END
             FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
                  AS new(id, event_id, partner, event_name, patient_id, state, last_error)
             ON CONFLICT (event_id, partner) DO NOTHING",
    )
    .await?;
    client
        .execute(
            &statement,
            &[
                &ids,
                &event_ids,
                &partners,
                &event_names,
                &patient_ids,
                &states,
                &errors,
            ],
        )
        .await
}

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

/// The claim: `$1` limit, `$2` lease in seconds, `$3` claim token, `$4`/`$5` the
/// configured partners and how many each can take now (0 while its slots are full or its
/// circuit holds it), `$6` the error of a delivery whose body is gone ([`BODY_ERASED`]).
///
/// Each partner's due deliveries are read on their own (`LATERAL`, on
/// `deliveries_pending`), at most as many as it has room for, so a held partner's backlog
/// is never walked; the earliest due across partners are then locked and taken. Choosing
/// before locking keeps the locks to the rows taken: locking inside each partner's read
/// would lock every partner's share, and the rows left out would stay locked (and be
/// skipped by other daemons) until the claim commits. The statement is prepared once per
/// connection and runs on a generic plan (see [`GENERIC_PLAN`]).
const CLAIM_DUE: &str = concat!(
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
     -- Locked in due order, skipping what another daemon holds, up to the limit. A row
     -- claimed and committed since this statement began is no longer pending, and the
     -- lock's recheck leaves it out.
     locked AS (
         SELECT d.id, d.event_id, d.partner, d.patient_id
         FROM candidate
         JOIN dispatcher.deliveries d ON d.id = candidate.id
         WHERE d.state = 'pending' AND d.due_at <= now()
         ORDER BY candidate.due_at
         LIMIT $1
         FOR UPDATE OF d SKIP LOCKED
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
     -- One whose body is gone is ended, not sent (it takes a place in the batch and in its
     -- partner's room, and the next claim takes the event after it).
     picked AS (
         SELECT ARRAY(SELECT id FROM due) AS ids,
                ARRAY(SELECT id FROM due WHERE event IS NULL) AS gone
     ),
     claimed AS (
         UPDATE dispatcher.deliveries d
         SET state = CASE WHEN d.id = ANY(picked.gone) THEN 'dead' ELSE 'in_flight' END,
             due_at = CASE WHEN d.id = ANY(picked.gone) THEN NULL
                           ELSE now() + make_interval(secs => $2) END,
             claim_token = CASE WHEN d.id = ANY(picked.gone) THEN NULL ELSE $3::uuid END,
             ended_at = CASE WHEN d.id = ANY(picked.gone) THEN now() END,
             last_error = CASE WHEN d.id = ANY(picked.gone) THEN $6::text ELSE d.last_error END
         FROM picked
         WHERE d.id = ANY(picked.ids)
         RETURNING d.id, d.event_id, d.partner, d.event_name,
                   d.attempt_count - d.attempts_before_resend AS attempts_used
     )
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
const GENERIC_PLAN: &str =
    "SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off";

/// Claims up to `limit` due deliveries for `lease`, and no more of a partner's than its
/// `room` (a partner not listed takes any number).
///
/// Due means pending and due; a delivery whose lease ran out comes back through
/// [`rescue_expired`] first. A delivery waits while an earlier event for the same
/// (partner, patient) is unfinished.
/// `SKIP LOCKED` lets several daemons claim side by side without waiting on each other.
///
/// A due delivery whose event body is gone cannot be sent, so it is not claimed but ended
/// `dead` with [`BODY_ERASED`] (and logged), which lets the next claim take the later
/// events of its (partner, patient).
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
            &[
                &limit,
                &lease.as_secs_f64(),
                &claim_token,
                &partners,
                &free,
                &BODY_ERASED,
            ],
        )
        .await?;
    transaction.commit().await?;
    let mut claim = Claim {
        deliveries: Vec::with_capacity(rows.len()),
        ended_without_body: 0,
    };
    for row in &rows {
        let id: Uuid = row.get(0);
        let event_id: i64 = row.get(1);
        let partner: String = row.get(2);
        let Some(event) = row.get::<_, Option<String>>(5) else {
            tracing::warn!(delivery_id = %id, event_id, %partner,
                "the event body was erased while it waited to be sent; ended the delivery dead");
            claim.ended_without_body += 1;
            continue;
        };
        claim.deliveries.push(ClaimedDelivery {
            id,
            claim_token,
            event_id,
            partner,
            event_name: row.get(3),
            attempts_used: u32::try_from(row.get::<_, i32>(4)).unwrap_or(0),
            event,
            external_id: row.get(6),
            traceparent: row.get(7),
        });
    }
    Ok(claim)
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

/// A delivery whose lease ran out with no result recorded, as [`rescue_expired`] left it.
#[derive(Debug, Clone)]
pub struct ExpiredLease {
    pub id: Uuid,
    pub event_id: i64,
    pub partner: String,
    pub event_name: String,
    /// `pending` (due at once), or `dead` when the lost attempt was its last.
    pub state: DeliveryState,
}

/// What the attempt a lost claim stands for says, for support.
const LEASE_EXPIRED: &str = "no result was recorded before the lease ran out (the daemon \
     stopped or could not reach the database); the partner may have received it";

/// Returns up to `limit` deliveries whose lease ran out while in flight to the queue:
/// their daemon died, or could not record the result before the lease ended.
///
/// The lost claim counts as an attempt (the request may have reached the partner) and is
/// recorded as one, with error kind `lease_expired`. So a delivery whose result can never
/// be recorded (say it takes its daemon down every time) ends `dead` after
/// `max_attempts` instead of being sent once a lease for ever. The claim token is
/// cleared, so a result the old holder writes late is discarded (see [`record`]).
pub async fn rescue_expired(
    client: &impl GenericClient,
    lease: Duration,
    max_attempts: u32,
    limit: usize,
) -> Result<Vec<ExpiredLease>, tokio_postgres::Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let max_attempts = i32::try_from(max_attempts).unwrap_or(i32::MAX);
    let lease_ms = i32::try_from(lease.as_millis()).unwrap_or(i32::MAX);
    let statement = client.prepare_cached(
        "WITH expired AS (
                 SELECT id, due_at AS lease_end,
                        attempt_count + 1 - attempts_before_resend >= $2 AS last_attempt
                 FROM dispatcher.deliveries
                 WHERE state = 'in_flight' AND due_at <= now()
                 ORDER BY due_at
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED
             ),
             rescued AS (
                 UPDATE dispatcher.deliveries d
                 SET state = CASE WHEN e.last_attempt THEN 'dead' ELSE 'pending' END,
                     due_at = CASE WHEN e.last_attempt THEN NULL ELSE now() END,
                     ended_at = CASE WHEN e.last_attempt THEN now() END,
                     claim_token = NULL,
                     attempt_count = d.attempt_count + 1,
                     last_status = NULL,
                     last_error = CASE WHEN e.last_attempt
                         THEN $4 || ' (gave up after ' || (d.attempt_count + 1 - d.attempts_before_resend) || ' attempts)'
                         ELSE $4 END
                 FROM expired e
                 WHERE d.id = e.id
                 RETURNING d.id, d.event_id, d.partner, d.event_name, d.state, d.attempt_count,
                           e.lease_end
             ),
             attempt AS (
                 INSERT INTO dispatcher.attempts
                     (delivery_id, number, started_at, duration_ms, error_kind, error)
                 SELECT id, attempt_count, lease_end - make_interval(secs => $3::int4 / 1000.0),
                        $3, 'lease_expired', $4
                 FROM rescued
             )
             SELECT id, event_id, partner, event_name, state FROM rescued",
    )
    .await?;
    let rows = client
        .query(
            &statement,
            &[&limit, &max_attempts, &lease_ms, &LEASE_EXPIRED],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| ExpiredLease {
            id: row.get(0),
            event_id: row.get(1),
            // Only deliveries to a partner are ever claimed.
            partner: row.get::<_, Option<String>>(2).unwrap_or_default(),
            event_name: row.get(3),
            state: row
                .get::<_, &str>(4)
                .parse()
                .unwrap_or(DeliveryState::Pending),
        })
        .collect())
}

/// How long until the earliest lease held now runs out (zero if it has), by the
/// database's clock, which is the one leases are measured by. `None` when none is held.
pub async fn until_next_lease_end(
    client: &impl GenericClient,
) -> Result<Option<Duration>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT EXTRACT(EPOCH FROM min(due_at) - now())::float8
             FROM dispatcher.deliveries WHERE state = 'in_flight'",
            &[],
        )
        .await?;
    Ok(wait_from_seconds(row.get(0)))
}

/// A wait the database measured in seconds (negative when already past), as a Duration.
fn wait_from_seconds(seconds: Option<f64>) -> Option<Duration> {
    seconds.map(|seconds| Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX))
}

/// The diagnostic for the claim's plan: the generic plan [`claim_due`] would make now,
/// with the same settings, one line per row of `EXPLAIN`, built from the very statement
/// the claimer runs. (A connection keeps the plan it made at its first claim until an
/// ANALYZE; the settings leave that plan no other shape.) It answers whether a claim walks
/// an index or the whole backlog (tests/it/overload.rs pins that; an operator can ask the
/// same of a live database). Public for that question only: nothing in the daemon calls
/// it.
pub async fn explain_claim_due(
    client: &mut impl GenericClient,
    limit: usize,
    lease: Duration,
) -> Result<Vec<String>, tokio_postgres::Error> {
    const NAME: &str = "dispatcher_claim_plan";
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // A prepared statement outlives its transaction: one left by an explain that was
    // interrupted on this connection is removed first.
    let left = client
        .query_opt(
            "SELECT 1 FROM pg_prepared_statements WHERE name = $1",
            &[&NAME],
        )
        .await?;
    if left.is_some() {
        client.batch_execute(&format!("DEALLOCATE {NAME}")).await?;
    }
    let explained = {
        let transaction = client.transaction().await?;
        transaction.batch_execute(GENERIC_PLAN).await?;
        transaction
            .batch_execute(&format!(
                "PREPARE {NAME}(int8, float8, uuid, text[], int8[], text) AS {CLAIM_DUE}"
            ))
            .await?;
        // Typed numbers, formatted: no text of anyone's reaches the statement.
        transaction
            .query(
                &format!(
                    "EXPLAIN EXECUTE {NAME}({limit}, {lease}, NULL, '{{}}', '{{}}', '')",
                    lease = lease.as_secs_f64()
                ),
                &[],
            )
            .await
        // Rolled back: nothing was changed.
    };
    let deallocated = client.batch_execute(&format!("DEALLOCATE {NAME}")).await;
    let explained = explained?;
    deallocated?;
    Ok(explained.iter().map(|row| row.get(0)).collect())
}

/// Brings PostgreSQL's statistics of the deliveries up to date. A burst of events outruns
/// autovacuum, which looks once a minute. Before the claim kept one plan shape (see
/// [`GENERIC_PLAN`]), a claim planned on statistics from before the burst sorted and
/// hashed every unfinished delivery (0.3 s per claim at 30,000 unfinished instead of
/// 5 ms); now the ANALYZE makes each connection plan its claim again on the backlog as it
/// is, and keeps the daemon's other statements planned on it. ANALYZE reads a fixed-size
/// sample, so this costs the same at any size.
///
/// `SKIP_LOCKED`: while a VACUUM of the table runs (autovacuum's, anti-wraparound
/// included), or anything else holds a lock ANALYZE would wait for, it skips the table at
/// once (PostgreSQL says so in a WARNING) instead of waiting up to the statement timeout.
/// The next burst, or autovacuum's own ANALYZE, brings the statistics up to date.
pub async fn refresh_statistics(client: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute("ANALYZE (SKIP_LOCKED) dispatcher.deliveries")
        .await
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
                       AND d.due_at > now()
                     ORDER BY d.due_at
                     LIMIT 1
                 ) AS next"
            ),
            &[],
        )
        .await?;
    Ok(wait_from_seconds(row.get(0)))
}

/// One partner's unfinished deliveries, as the metrics report them.
#[derive(Debug, Clone, PartialEq)]
pub struct PartnerQueue {
    pub partner: String,
    pub pending: i64,
    pub in_flight: i64,
    /// Seconds the oldest due delivery (due and not yet claimed, or its lease run out)
    /// has waited past its due time; 0 when none is due.
    pub oldest_due_seconds: f64,
}

/// Every partner's queue in one grouped scan of the unfinished deliveries (the partial
/// index `deliveries_unfinished_by_patient`), so reading it at each scrape costs little.
pub async fn queue_by_partner(
    client: &impl GenericClient,
) -> Result<Vec<PartnerQueue>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT partner,
                    count(*) FILTER (WHERE state = 'pending'),
                    count(*) FILTER (WHERE state = 'in_flight'),
                    COALESCE(EXTRACT(EPOCH FROM now() - min(due_at) FILTER (WHERE due_at <= now())), 0)::float8
             FROM dispatcher.deliveries
             WHERE state IN ('pending', 'in_flight') AND partner IS NOT NULL
             GROUP BY partner",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| PartnerQueue {
            partner: row.get(0),
            pending: row.get(1),
            in_flight: row.get(2),
            oldest_due_seconds: row.get(3),
        })
        .collect())
}

/// PostgreSQL text cannot hold NUL, and a partner's answer may contain it; one such
/// answer must not make its whole batch unwritable.
fn storable(text: Option<&str>) -> Option<String> {
    text.map(|text| text.replace('\0', "\u{FFFD}"))
}

/// Writes a batch of resolutions in one statement and returns the ids written.
///
/// A resolution is only written while its claim is current: if the lease ran out and
/// another claim took the delivery, or support cancelled it, the stale result is dropped
/// (attempt and learned id included) rather than overwrite a newer state.
pub async fn record(
    client: &impl GenericClient,
    resolutions: &[&Resolution],
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let mut ids = Vec::with_capacity(resolutions.len());
    let mut tokens = Vec::with_capacity(resolutions.len());
    let mut states = Vec::with_capacity(resolutions.len());
    let mut due = Vec::with_capacity(resolutions.len());
    let mut errors = Vec::with_capacity(resolutions.len());
    let mut attempted = Vec::with_capacity(resolutions.len());
    let mut statuses: Vec<Option<i32>> = Vec::with_capacity(resolutions.len());
    let mut started = Vec::with_capacity(resolutions.len());
    let mut durations = Vec::with_capacity(resolutions.len());
    let mut error_kinds = Vec::with_capacity(resolutions.len());
    let mut attempt_errors = Vec::with_capacity(resolutions.len());
    let mut bodies = Vec::with_capacity(resolutions.len());
    let mut learned = Vec::with_capacity(resolutions.len());
    for resolution in resolutions {
        ids.push(resolution.delivery_id);
        tokens.push(resolution.claim_token);
        states.push(resolution.state.as_str());
        due.push(resolution.due_in.map(|wait| wait.as_secs_f64()));
        errors.push(storable(resolution.last_error.as_deref()));
        let attempt = resolution.attempt.as_ref();
        attempted.push(attempt.is_some());
        statuses.push(attempt.and_then(|a| a.http_status).map(i32::from));
        started.push(attempt.map(|a| a.started_at));
        durations.push(attempt.map(|a| i32::try_from(a.duration.as_millis()).unwrap_or(i32::MAX)));
        error_kinds.push(attempt.and_then(|a| a.error_kind));
        attempt_errors.push(storable(attempt.and_then(|a| a.error.as_deref())));
        bodies.push(storable(attempt.and_then(|a| a.response_body.as_deref())));
        learned.push(storable(resolution.learned_external_id.as_deref()));
    }
    let statement = client
        .prepare_cached(
            "WITH result AS (
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::float8[],
                                      $5::text[], $6::bool[], $7::int4[], $8::timestamptz[],
                                      $9::int4[], $10::text[], $11::text[], $12::text[], $13::text[])
                     AS r(id, claim_token, state, due_in, error, attempted, http_status,
                          started_at, duration_ms, error_kind, attempt_error, response_body,
                          learned_external_id)
             ),
             updated AS (
                 UPDATE dispatcher.deliveries d
                 SET state = r.state,
                     due_at = now() + make_interval(secs => r.due_in),
                     claim_token = NULL,
                     attempt_count = d.attempt_count + r.attempted::int,
                     last_status = CASE WHEN r.attempted THEN r.http_status ELSE d.last_status END,
                     last_error = CASE WHEN r.attempted OR r.error IS NOT NULL THEN r.error
                                       ELSE d.last_error END,
                     ended_at = CASE WHEN r.state = 'pending' THEN NULL ELSE now() END
                 FROM result r
                 WHERE d.id = r.id AND d.claim_token = r.claim_token AND d.state = 'in_flight'
                 RETURNING d.id, r.claim_token, d.attempt_count, d.partner, d.patient_id
             ),
             attempt AS (
                 INSERT INTO dispatcher.attempts
                     (delivery_id, number, started_at, duration_ms, http_status, error_kind, error, response_body)
                 SELECT u.id, u.attempt_count, r.started_at, r.duration_ms, r.http_status,
                        r.error_kind, r.attempt_error, r.response_body
                 FROM updated u JOIN result r ON r.id = u.id AND r.claim_token = u.claim_token
                 WHERE r.attempted
             ),
             learned AS (
                 INSERT INTO dispatcher.partner_patients (partner, patient_id, external_id)
                 SELECT DISTINCT ON (u.partner, u.patient_id) u.partner, u.patient_id, r.learned_external_id
                 FROM updated u JOIN result r ON r.id = u.id AND r.claim_token = u.claim_token
                 WHERE r.learned_external_id IS NOT NULL AND u.patient_id IS NOT NULL
                 ON CONFLICT (partner, patient_id)
                 DO UPDATE SET external_id = excluded.external_id, learned_at = now()
             )
             SELECT id FROM updated",
        )
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &ids,
                &tokens,
                &states,
                &due,
                &errors,
                &attempted,
                &statuses,
                &started,
                &durations,
                &error_kinds,
                &attempt_errors,
                &bodies,
                &learned,
            ],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
