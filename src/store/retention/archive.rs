//! The archive (migration 0025): what is kept of a delivery once its event's body is
//! gone, until `metadata_days`, in week partitions dropped whole.
//!
//! Once an event's body is due to go (`payload_days` after the last of its deliveries
//! ended), [`archive_due_events`] moves its deliveries, with their answers erased, into
//! `archived_deliveries`, their attempts kept as rows into `archived_attempts`, and
//! deletes the event's outbox row with the body: that is the body's erase, and its mark
//! (`event_erased_at`) goes with each delivery. Nothing of it can change after: a resend
//! needs the body, and a cancel refuses an archived delivery. [`archive_erased_events`]
//! does the same for events whose body was erased before (by a daemon from before 0025).
//!
//! Each delivery lands in the partition of the week (from Monday, UTC) of its id, a
//! UUIDv7 of the time it was made; `dispatcher.archive_week` makes that week's
//! partitions when it is the first. [`drop_archived_week`] drops a week once all its
//! deliveries ended `metadata_days` ago: two `DROP TABLE`s, whatever the week held.
//!
//! The daemon's queue never reads the archive; support reads it through the views
//! `every_delivery` and `every_attempt`.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::batch_limit;

/// An event that was routed (it has deliveries) and all of whose deliveries have ended,
/// each before `ended_before` when it is given (SQL). (`o` is the outbox row.)
fn all_ended(ended_before: Option<&str>) -> String {
    let late = ended_before.map_or(String::new(), |before| {
        format!(" OR d.ended_at >= {before}")
    });
    format!(
        "EXISTS (SELECT 1 FROM dispatcher.deliveries d WHERE d.event_id = o.id)
         AND NOT EXISTS (
             SELECT 1 FROM dispatcher.deliveries d
             WHERE d.event_id = o.id
               AND (d.state IN ('pending', 'waiting', 'in_flight')
                    OR d.ended_at IS NULL{late}))"
    )
}

/// An event whose body is due to go: kept, and all its deliveries ended more than `days`
/// days ago (a parameter's name, `$1`).
fn body_due(days: &str) -> String {
    format!(
        "o.event IS NOT NULL AND {}",
        all_ended(Some(&format!("now() - make_interval(days => {days})")))
    )
}

/// What one batch moved, or a pass in all.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Archived {
    /// Events whose outbox row (and body) went.
    pub events: u64,
    pub deliveries: u64,
}

impl std::ops::AddAssign for Archived {
    fn add_assign(&mut self, other: Archived) {
        self.events += other.events;
        self.deliveries += other.deliveries;
    }
}

impl super::Batch for Archived {
    /// A batch takes events: one short of them is the last.
    fn rows(&self) -> u64 {
        self.events
    }
}

/// Moves to the archive the deliveries of up to `limit` events whose body is due
/// (`payload_days` after the last of them ended), oldest first, and deletes the events'
/// outbox rows, bodies and all: the body's erase is the move.
///
/// Three statements in one transaction, so that a support resend (which locks the event
/// row `FOR SHARE` before it makes a delivery pending) can never leave a pending delivery
/// without its body. The first locks the candidates (`FOR UPDATE`, skipping rows a resend
/// or another pass holds); the last checks them again as it moves them. The check cannot
/// be left to the first statement: under READ COMMITTED its look at the deliveries is as
/// old as the statement, and a resend that committed before the lock creates no new
/// version of the event row for PostgreSQL to re-check. The last statement's look is
/// newer than the lock, so it sees such a resend; a resend that comes later waits for the
/// lock and then finds the event gone (and says its body was erased: the mark is kept on
/// each delivery).
pub async fn archive_due_events(
    client: &mut impl GenericClient,
    payload_days: u32,
    limit: usize,
) -> Result<Archived, tokio_postgres::Error> {
    let payload_days = super::days(payload_days);
    lock_and_move(
        client,
        &format!(
            "SELECT o.id FROM dispatcher.outbox o
             WHERE {due}
               -- An event cannot end before it was created: this bounds the scan.
               AND o.created_at < now() - make_interval(days => $1)
             ORDER BY o.created_at
             LIMIT $2
             FOR UPDATE OF o SKIP LOCKED",
            due = body_due("$1")
        ),
        &[&payload_days, &batch_limit(limit)],
        payload_days,
    )
    .await
}

/// Moves the deliveries of up to `limit` events whose body is already erased (by a
/// daemon from before 0025, or by hand), oldest first, into the archive, as
/// [`archive_due_events`] does.
///
/// An event is taken only when every one of its deliveries has ended (a daemon from
/// before 0025 cannot leave one otherwise, but a row the archive refuses would stop every
/// pass).
pub async fn archive_erased_events(
    client: &mut impl GenericClient,
    payload_days: u32,
    limit: usize,
) -> Result<Archived, tokio_postgres::Error> {
    lock_and_move(
        client,
        &format!(
            "SELECT o.id FROM dispatcher.outbox o
             WHERE o.event IS NULL AND {ended}
             ORDER BY o.created_at
             LIMIT $1
             FOR UPDATE OF o SKIP LOCKED",
            ended = all_ended(None)
        ),
        &[&batch_limit(limit)],
        super::days(payload_days),
    )
    .await
}

/// One batch of the archive, in one transaction: locks the events `select` returns (its
/// parameters `params`), then [`move_events`] moves them.
async fn lock_and_move(
    client: &mut impl GenericClient,
    select: &str,
    params: &[&(dyn ToSql + Sync)],
    payload_days: i32,
) -> Result<Archived, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    let events: Vec<i64> = transaction
        .query(select, params)
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let archived = move_events(&transaction, &events, payload_days).await?;
    transaction.commit().await?;
    Ok(archived)
}

/// Moves the deliveries of `events` (their outbox rows locked by the caller) into the
/// archive, and deletes the outbox rows; an event whose body is neither erased nor due
/// any more (a resend committed before the caller's lock) is left as it is.
///
/// Each event's deliveries are locked first, waiting for support: a cancel (which ends a
/// failed one again, now) committed before is seen by the check and recorded for their
/// week, one after finds them archived.
async fn move_events(
    transaction: &deadpool_postgres::Transaction<'_>,
    events: &[i64],
    payload_days: i32,
) -> Result<Archived, tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(Archived::default());
    }
    // Each week's partitions before the rows that go there, weeks in order. The rows are
    // locked in id order, as `store::queue::order` locks deliveries: a cancel of several
    // never deadlocks with it.
    transaction
        .execute(
            "SELECT dispatcher.archive_week(weeks.week, weeks.last_ended_at)
             FROM (SELECT dispatcher.archive_week_of(d.id) AS week, max(d.ended_at) AS last_ended_at
                   FROM (SELECT id, ended_at FROM dispatcher.deliveries
                         WHERE event_id = ANY($1)
                         ORDER BY id
                         FOR UPDATE) AS d
                   GROUP BY 1
                   -- A week of none ended: resent since the caller looked, left below.
                   HAVING max(d.ended_at) IS NOT NULL
                   ORDER BY 1) AS weeks",
            &[&events],
        )
        .await?;
    // The answers are erased on the way, as `erase_answers` erases them: the responses,
    // and the errors that quote one. The attempts' rows go with their deliveries (`ON
    // DELETE CASCADE`), after this statement has read them.
    let row = transaction
        .query_one(
            &format!(
                "WITH still AS (
                     SELECT o.id FROM dispatcher.outbox o
                     WHERE o.id = ANY($1) AND (o.event IS NULL OR {due})
                 ),
                 moved AS (
                     DELETE FROM dispatcher.deliveries d
                     WHERE d.event_id = ANY(ARRAY(SELECT still.id FROM still))
                     RETURNING d.*
                 ),
                 events AS (
                     DELETE FROM dispatcher.outbox o
                     WHERE o.id = ANY(ARRAY(SELECT still.id FROM still))
                     RETURNING o.id, COALESCE(o.event_erased_at, now()) AS event_erased_at
                 ),
                 attempts AS (
                     INSERT INTO dispatcher.archived_attempts
                         (delivery_id, number, started_at, duration_ms, http_status, error_kind,
                          error, answer_erased_at, resent_after)
                     SELECT a.delivery_id, a.number, a.started_at, a.duration_ms, a.http_status,
                            a.error_kind, CASE WHEN a.http_status IS NULL THEN a.error END,
                            COALESCE(a.answer_erased_at, now()), a.resent_after
                     FROM dispatcher.attempts a
                     WHERE a.delivery_id = ANY(ARRAY(SELECT moved.id FROM moved))
                 ),
                 archived AS (
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
                            CASE WHEN m.first_attempt_http_status IS NULL
                                 THEN m.first_attempt_error END,
                            CASE WHEN m.first_attempt_started_at IS NOT NULL
                                 THEN COALESCE(m.first_attempt_answer_erased_at, now()) END,
                            m.first_attempt_resent_after
                     FROM moved m
                     JOIN events e ON e.id = m.event_id
                     RETURNING 1
                 )
                 SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM archived)",
                due = body_due("$2")
            ),
            &[&events, &payload_days],
        )
        .await?;
    let count = |column: usize| u64::try_from(row.get::<_, i64>(column)).unwrap_or(0);
    Ok(Archived {
        events: count(0),
        deliveries: count(1),
    })
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
