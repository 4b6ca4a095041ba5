//! The rescue: deliveries whose lease ran out while in flight (their daemon died, or
//! could not record the result) go back to the queue, the lost claim counted as an attempt.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::wait_from_seconds;
use crate::delivery::state::DeliveryState;

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

/// Ends up to `limit` leases that ran out (`dispatcher.leases`, one per claim) and returns
/// to the queue the deliveries that still held them: their daemon died, or could not
/// record the result before the lease ended.
///
/// The lost claim counts as an attempt (the request may have reached the partner) and is
/// recorded as one, with error kind `lease_expired`. So a delivery whose result can never
/// be recorded (say it takes its daemon down every time) ends `dead` after
/// `max_attempts` instead of being sent once a lease for ever. The claim token is
/// cleared, so a result the old holder writes late is discarded (see [`record`](super::record)).
/// One that ends `dead` makes the next waiting delivery of its (partner, patient) pending,
/// in the same transaction.
pub async fn rescue_expired(
    client: &mut impl GenericClient,
    lease: Duration,
    max_attempts: u32,
    limit: usize,
) -> Result<Vec<ExpiredLease>, tokio_postgres::Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let max_attempts = i32::try_from(max_attempts).unwrap_or(i32::MAX);
    let lease_ms = i32::try_from(lease.as_millis()).unwrap_or(i32::MAX);
    let transaction = client.transaction().await?;
    // The leases that ran out, each taken by one rescuer (`SKIP LOCKED`), and of their
    // deliveries those that still hold them (the others were recorded or handed back).
    // Then those are locked with their (partner, patient)s in the order every
    // transaction that changes a patient's order locks (see `order.rs`), and checked
    // again by the update.
    let found = transaction
        .prepare_cached(
            "SELECT ended.claim_token, held.id
             FROM (SELECT l.claim_token, l.deliveries FROM dispatcher.leases l
                   WHERE l.lease_end <= now()
                   ORDER BY l.lease_end
                   LIMIT $1
                   FOR UPDATE SKIP LOCKED) AS ended
             LEFT JOIN LATERAL (
                 SELECT d.id FROM dispatcher.deliveries d
                 WHERE d.id = ANY(ended.deliveries) AND d.claim_token = ended.claim_token
                 -- By primary key, one lease at a time, whatever the table looked like
                 -- when the plan was made.
                 OFFSET 0
             ) AS held ON true",
        )
        .await?;
    let mut leases = Vec::new();
    let mut expired = Vec::new();
    for row in transaction.query(&found, &[&limit]).await? {
        leases.push(row.get::<_, Uuid>("claim_token"));
        if let Some(id) = row.get::<_, Option<Uuid>>("id") {
            expired.push(id);
        }
    }
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    leases.dedup();
    super::order::lock_patients(&transaction, &expired).await?;
    let statement = transaction.prepare_cached(
        "WITH expired AS (
                 SELECT id, leased_until AS lease_end,
                        attempt_count + 1 - attempts_before_resend >= $2 AS last_attempt
                 FROM dispatcher.deliveries
                 WHERE id = ANY($1) AND claim_token = ANY($5) AND leased_until <= now()
             ),
             rescued AS (
                 UPDATE dispatcher.deliveries d
                 SET state = CASE WHEN e.last_attempt THEN 'dead' ELSE 'pending' END,
                     due_at = CASE WHEN e.last_attempt THEN NULL ELSE now() END,
                     ended_at = CASE WHEN e.last_attempt THEN now() END,
                     claim_token = NULL,
                     leased_until = NULL,
                     attempt_count = d.attempt_count + 1,
                     last_status = NULL,
                     last_error = CASE WHEN e.last_attempt
                         THEN $4 || ' (gave up after ' || (d.attempt_count + 1 - d.attempts_before_resend) || ' attempts)'
                         ELSE $4 END,
                     -- A delivery that gives up at its first attempt keeps it in its row,
                     -- as the record keeps one (migration 0024); any other is a row of
                     -- `attempts`.
                     first_attempt_started_at = CASE WHEN e.last_attempt AND d.attempt_count = 0
                         THEN e.lease_end - make_interval(secs => $3::int4 / 1000.0)
                         ELSE d.first_attempt_started_at END,
                     first_attempt_duration_ms = CASE WHEN e.last_attempt AND d.attempt_count = 0
                         THEN $3 ELSE d.first_attempt_duration_ms END,
                     first_attempt_error_kind = CASE WHEN e.last_attempt AND d.attempt_count = 0
                         THEN 'lease_expired' ELSE d.first_attempt_error_kind END,
                     first_attempt_error = CASE WHEN e.last_attempt AND d.attempt_count = 0
                         THEN $4 ELSE d.first_attempt_error END
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
                 WHERE NOT (state = 'dead' AND attempt_count = 1)
             )
             SELECT id, event_id, partner, event_name, state FROM rescued",
    )
    .await?;
    let rows = transaction
        .query(
            &statement,
            &[&expired, &max_attempts, &lease_ms, &LEASE_EXPIRED, &leases],
        )
        .await?;
    let ended = transaction
        .prepare_cached("DELETE FROM dispatcher.leases WHERE claim_token = ANY($1)")
        .await?;
    transaction.execute(&ended, &[&leases]).await?;
    let dead: Vec<Uuid> = rows
        .iter()
        .filter(|row| row.get::<_, &str>("state") == "dead")
        .map(|row| row.get("id"))
        .collect();
    super::order::settle(&transaction, &dead).await?;
    transaction.commit().await?;
    Ok(rows
        .iter()
        .map(|row| ExpiredLease {
            id: row.get("id"),
            event_id: row.get("event_id"),
            // Only deliveries to a partner are ever claimed.
            partner: row.get::<_, Option<String>>("partner").unwrap_or_default(),
            event_name: row.get("event_name"),
            state: row
                .get::<_, &str>("state")
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
            "SELECT EXTRACT(EPOCH FROM min(lease_end) - now())::float8
             FROM dispatcher.leases",
            &[],
        )
        .await?;
    Ok(wait_from_seconds(row.get(0)))
}

/// Ends the leases of `claims` whose deliveries were all recorded or handed back, so the
/// rescuer does not wake for them. Run by the record, in its transaction, after its
/// writes. A lease a rescuer holds now is left to it (`SKIP LOCKED`: waiting for it
/// here, with the deliveries' locks held, could deadlock with its own wait for them),
/// and so is one whose last deliveries two records finish at the same moment, each
/// seeing the other's as still held: the rescuer ends those when they run out.
pub(super) async fn end_leases_recorded(
    client: &impl GenericClient,
    claims: &[Uuid],
) -> Result<(), tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            // Each lease by its key and each of its deliveries by id (`ARRAY(...)`, `OFFSET
            // 0`): a plan made beside a few hundred analyzed deliveries hashed the whole
            // table against the leases instead, and would have kept doing so.
            "DELETE FROM dispatcher.leases
             WHERE claim_token = ANY(ARRAY(
                 SELECT l.claim_token FROM dispatcher.leases l
                 WHERE l.claim_token = ANY($1)
                   AND NOT EXISTS (
                       SELECT 1 FROM dispatcher.deliveries d
                       WHERE d.id = ANY(l.deliveries) AND d.claim_token = l.claim_token
                       OFFSET 0)
                 FOR UPDATE SKIP LOCKED))",
        )
        .await?;
    client.execute(&statement, &[&claims]).await?;
    Ok(())
}
