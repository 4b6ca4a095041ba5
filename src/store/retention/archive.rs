//! The archive (migration 0025): what is kept of a delivery once its event's body is
//! erased, until `metadata_days`, in week partitions dropped whole.
//!
//! A delivery whose event's body is erased can no longer change: a resend needs the body,
//! and a cancel refuses an archived delivery. So [`archive_events`] moves such an event's
//! deliveries, with their answers erased, into `archived_deliveries`, their attempts
//! kept as rows into `archived_attempts`, and deletes the event's outbox row; the
//! body's erase mark goes with each delivery. Each lands in the partition of the week
//! (from Monday, UTC) of its id, a UUIDv7 of the time it was made; `dispatcher.archive_week`
//! makes that week's partitions when it is the first. [`drop_archived_week`] drops a week
//! once all its deliveries ended `metadata_days` ago: two `DROP TABLE`s, whatever the week
//! held.
//!
//! The daemon's queue never reads the archive; support reads it through the views
//! `every_delivery` and `every_attempt`.

use deadpool_postgres::GenericClient;

use super::batch_limit;

/// Moves the deliveries of up to `limit` events whose bodies are erased, oldest first,
/// into the archive, and deletes those events' outbox rows. Returns the deliveries
/// moved.
///
/// An event is taken only when every one of its deliveries has ended (a daemon from
/// before 0025 cannot leave one otherwise, but a row the archive refuses would stop every
/// pass). Its outbox row is locked (`FOR UPDATE`, skipping rows another pass holds), so
/// two passes never move the same deliveries; a resend, which locks the row `FOR SHARE`
/// before it looks at the body, waits and then finds no delivery to resend. Then its
/// deliveries, waiting for support: a cancel (which ends a failed one again, now)
/// committed before is in the end recorded for their week, one after finds them archived.
pub async fn archive_events(
    client: &mut impl GenericClient,
    limit: usize,
) -> Result<u64, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    let events: Vec<i64> = transaction
        .query(
            "SELECT o.id FROM dispatcher.outbox o
             WHERE o.event IS NULL
               AND EXISTS (SELECT 1 FROM dispatcher.deliveries d WHERE d.event_id = o.id)
               AND NOT EXISTS (
                   SELECT 1 FROM dispatcher.deliveries d
                   WHERE d.event_id = o.id
                     AND (d.ended_at IS NULL OR d.state IN ('pending', 'waiting')))
             ORDER BY o.created_at
             LIMIT $1
             FOR UPDATE OF o SKIP LOCKED",
            &[&batch_limit(limit)],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if events.is_empty() {
        return Ok(0);
    }
    // Each week's partitions before the rows that go there, weeks in order. The rows are
    // locked first, so the week's last end is theirs as they move (a cancel committed
    // since the look above ended a failed one again, now), in id order, as
    // `store::queue::order` locks deliveries: a cancel of several never deadlocks with it.
    transaction
        .execute(
            "SELECT dispatcher.archive_week(weeks.week, weeks.last_ended_at)
             FROM (SELECT dispatcher.archive_week_of(d.id) AS week, max(d.ended_at) AS last_ended_at
                   FROM (SELECT id, ended_at FROM dispatcher.deliveries
                         WHERE event_id = ANY($1)
                         ORDER BY id
                         FOR UPDATE) AS d
                   GROUP BY 1
                   ORDER BY 1) AS weeks",
            &[&events],
        )
        .await?;
    // The answers are erased on the way, as `erase_answers` erases them: the responses,
    // and the errors that quote one. The attempts' rows go with their deliveries (`ON
    // DELETE CASCADE`), after this statement has read them.
    let moved = transaction
        .execute(
            "WITH moved AS (
                 DELETE FROM dispatcher.deliveries d
                 WHERE d.event_id = ANY($1)
                 RETURNING d.*
             ),
             events AS (
                 DELETE FROM dispatcher.outbox o
                 WHERE o.id = ANY($1)
                 RETURNING o.id, o.event_erased_at
             ),
             attempts AS (
                 INSERT INTO dispatcher.archived_attempts
                     (delivery_id, number, started_at, duration_ms, http_status, error_kind,
                      error, answer_erased_at, resent_after)
                 SELECT a.delivery_id, a.number, a.started_at, a.duration_ms, a.http_status,
                        a.error_kind, CASE WHEN a.http_status IS NULL THEN a.error END,
                        COALESCE(a.answer_erased_at, now()), a.resent_after
                 FROM dispatcher.attempts a
                 JOIN moved ON a.delivery_id = moved.id
             )
             INSERT INTO dispatcher.archived_deliveries
                 (id, event_id, partner, event_name, patient_id, state, attempt_count,
                  attempts_before_resend, last_status, last_error, created_at, ended_at,
                  answers_erased_at, event_erased_at, first_attempt_started_at,
                  first_attempt_duration_ms, first_attempt_http_status,
                  first_attempt_error_kind, first_attempt_error,
                  first_attempt_answer_erased_at, first_attempt_resent_after)
             SELECT m.id, m.event_id, m.partner, m.event_name, m.patient_id, m.state,
                    m.attempt_count, m.attempts_before_resend, m.last_status,
                    CASE WHEN m.last_status IS NULL THEN m.last_error END,
                    m.created_at, m.ended_at, COALESCE(m.answers_erased_at, now()),
                    e.event_erased_at, m.first_attempt_started_at,
                    m.first_attempt_duration_ms, m.first_attempt_http_status,
                    m.first_attempt_error_kind,
                    CASE WHEN m.first_attempt_http_status IS NULL THEN m.first_attempt_error END,
                    CASE WHEN m.first_attempt_started_at IS NOT NULL
                         THEN COALESCE(m.first_attempt_answer_erased_at, now()) END,
                    m.first_attempt_resent_after
             FROM moved m
             JOIN events e ON e.id = m.event_id",
            &[&events],
        )
        .await?;
    transaction.commit().await?;
    Ok(moved)
}

/// Drops the oldest archived week whose deliveries all ended more than `metadata_days`
/// ago; whether there was one. `dispatcher.drop_archived_week` runs with its owner's
/// rights (the daemon's role drops no table) and waits at most a second for support's
/// reads of the archive; it gives way to one it meets in a deadlock too (`false`).
pub async fn drop_archived_week(
    client: &impl GenericClient,
    metadata_days: u32,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT dispatcher.drop_archived_week($1) IS NOT NULL",
            &[&super::days(metadata_days)],
        )
        .await?;
    Ok(row.get(0))
}
