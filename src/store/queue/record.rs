//! Recording: each claim's result written back in batches, only while its claim is
//! current.

use std::collections::HashSet;

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::delivery::outcome::Resolution;
use crate::delivery::state::DeliveryState;

/// PostgreSQL text cannot hold NUL, and a partner's answer may contain it; one such
/// answer must not make its whole batch unwritable.
fn storable(text: Option<&str>) -> Option<String> {
    text.map(|text| text.replace('\0', "\u{FFFD}"))
}

/// Writes a batch of resolutions in one transaction and returns the ids written.
///
/// A resolution is only written while its claim is current: if the lease ran out and
/// another claim took the delivery, or support cancelled it, the stale result is dropped
/// (attempt and learned id included) rather than overwrite a newer state. A delivery that
/// ends makes the next waiting one of its (partner, patient) pending, in the same
/// transaction (see `order.rs`, whose locks come first).
pub async fn record(
    client: &mut impl GenericClient,
    resolutions: &[&Resolution],
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let ids: Vec<Uuid> = resolutions.iter().map(|r| r.delivery_id).collect();
    let ending: Vec<Uuid> = resolutions
        .iter()
        .filter(|r| r.state != DeliveryState::Pending)
        .map(|r| r.delivery_id)
        .collect();
    let transaction = client.transaction().await?;
    // A retry changes nothing of its patient's order: only its own row is locked (in the
    // same order as the rest, so no two transactions wait on each other).
    super::order::lock(&transaction, &ids, &ending).await?;
    let written = write(&transaction, resolutions).await?;
    let in_order: HashSet<&Uuid> = written
        .iter()
        .filter(|write| write.in_order)
        .map(|write| &write.id)
        .collect();
    let ended: Vec<Uuid> = ending
        .into_iter()
        .filter(|id| in_order.contains(id))
        .collect();
    super::order::settle(&transaction, &ended).await?;
    let mut claims: Vec<Uuid> = resolutions.iter().map(|r| r.claim_token).collect();
    claims.sort_unstable();
    claims.dedup();
    super::rescue::end_leases_recorded(&transaction, &claims).await?;
    transaction.commit().await?;
    Ok(written.into_iter().map(|write| write.id).collect())
}

/// A resolution written.
struct Written {
    id: Uuid,
    /// Its patient has another unfinished delivery to its partner, as the write saw it:
    /// if it ended, that patient's order is settled. The write starts after the locks
    /// were granted, so it sees every delivery routed or resent behind this one (they lock
    /// it first, see `order.rs`); one routed later waits for this transaction and settles
    /// itself. With none, `settle` would change nothing.
    in_order: bool,
}

/// The statement that writes the resolutions.
async fn write(
    client: &impl GenericClient,
    resolutions: &[&Resolution],
) -> Result<Vec<Written>, tokio_postgres::Error> {
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
                 SELECT r.*, r.attempted AND r.state <> 'pending' AS last_attempt
                 FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::float8[],
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
                     leased_until = NULL,
                     attempt_count = d.attempt_count + r.attempted::int,
                     last_status = CASE WHEN r.attempted THEN r.http_status ELSE d.last_status END,
                     last_error = CASE WHEN r.attempted OR r.error IS NOT NULL THEN r.error
                                       ELSE d.last_error END,
                     ended_at = CASE WHEN r.state = 'pending' THEN NULL ELSE now() END,
                     -- A delivery that ends at its first attempt keeps it in its row
                     -- (migration 0024); a retried one's attempts are rows of `attempts`,
                     -- so its row carries no answer through its retries' claims.
                     -- `d.attempt_count` is the count before this attempt.
                     first_attempt_started_at = CASE WHEN r.last_attempt AND d.attempt_count = 0
                         THEN r.started_at ELSE d.first_attempt_started_at END,
                     first_attempt_duration_ms = CASE WHEN r.last_attempt AND d.attempt_count = 0
                         THEN r.duration_ms ELSE d.first_attempt_duration_ms END,
                     first_attempt_http_status = CASE WHEN r.last_attempt AND d.attempt_count = 0
                         THEN r.http_status ELSE d.first_attempt_http_status END,
                     first_attempt_error_kind = CASE WHEN r.last_attempt AND d.attempt_count = 0
                         THEN r.error_kind ELSE d.first_attempt_error_kind END,
                     first_attempt_error = CASE WHEN r.last_attempt AND d.attempt_count = 0
                         THEN r.attempt_error ELSE d.first_attempt_error END,
                     first_attempt_response_body = CASE WHEN r.last_attempt AND d.attempt_count = 0
                         THEN r.response_body ELSE d.first_attempt_response_body END
                 FROM result r
                 -- By primary key, and the current claim's token, which means claimed
                 -- (migration 0020's constraint): a state beside them (`in_flight`
                 -- before 0020) let the generic plan read that state's index whole
                 -- instead, with the dead entry each delivery sent since the last vacuum
                 -- left there.
                 WHERE d.id = ANY($1) AND d.id = r.id AND d.claim_token = r.claim_token
                 RETURNING d.id, r.claim_token, d.attempt_count, d.partner, d.patient_id,
                           r.state <> 'pending' AND d.patient_id IS NOT NULL AND (
                               EXISTS (SELECT 1 FROM dispatcher.deliveries other
                                       WHERE other.partner = d.partner
                                         AND other.patient_id = d.patient_id
                                         AND other.id <> d.id
                                         AND other.state IN ('pending', 'in_flight'))
                               OR EXISTS (SELECT 1 FROM dispatcher.deliveries other
                                          WHERE other.partner = d.partner
                                            AND other.patient_id = d.patient_id
                                            AND other.state = 'waiting'))
                               AS in_order
             ),
             attempt AS (
                 INSERT INTO dispatcher.attempts
                     (delivery_id, number, started_at, duration_ms, http_status, error_kind, error, response_body)
                 SELECT u.id, u.attempt_count, r.started_at, r.duration_ms, r.http_status,
                        r.error_kind, r.attempt_error, r.response_body
                 FROM updated u JOIN result r ON r.id = u.id AND r.claim_token = u.claim_token
                 WHERE r.attempted AND NOT (r.last_attempt AND u.attempt_count = 1)
             ),
             learned AS (
                 SELECT DISTINCT ON (u.partner, u.patient_id)
                        u.partner, u.patient_id, r.learned_external_id AS external_id
                 FROM updated u JOIN result r ON r.id = u.id AND r.claim_token = u.claim_token
                 WHERE r.learned_external_id IS NOT NULL AND u.patient_id IS NOT NULL
             ),
             -- The same id confirmed again (each 200 of a known patient's tracker views)
             -- is not sent at all (`Resolution::after_attempt`); one the row holds
             -- already, however it got there, writes nothing here either.
             changed AS (
                 UPDATE dispatcher.partner_patients known
                 SET external_id = learned.external_id, learned_at = now()
                 FROM learned
                 WHERE known.partner = learned.partner AND known.patient_id = learned.patient_id
                   AND known.external_id IS DISTINCT FROM learned.external_id
             ),
             -- Not `ON CONFLICT`, whose speculative insertion writes a confirm record
             -- (48 B of WAL for each new patient). Only a 200 teaches an id, and it ends
             -- its delivery, so two records that teach one (partner, patient) lock that
             -- patient's unfinished deliveries, each other's among them (`order.rs`),
             -- and run one after the other: this statement, which starts after the
             -- locks, sees the row the one before wrote. Were that ever not so, the key
             -- would refuse the batch, and the recorder's write of it row by row would
             -- see the row.
             first_learned AS (
                 INSERT INTO dispatcher.partner_patients (partner, patient_id, external_id)
                 SELECT learned.partner, learned.patient_id, learned.external_id
                 FROM learned
                 WHERE NOT EXISTS (SELECT 1 FROM dispatcher.partner_patients known
                                   WHERE known.partner = learned.partner
                                     AND known.patient_id = learned.patient_id)
             )
             SELECT id, in_order FROM updated",
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
    Ok(rows
        .iter()
        .map(|row| Written {
            id: row.get("id"),
            in_order: row.get("in_order"),
        })
        .collect())
}
