//! Retention: health data is kept only as long as support needs it.
//!
//! `payload_days` after all of an event's deliveries have ended, its body (the patient's
//! data) is erased; `payload_days` after a delivery ended, the partners' answers to it
//! (which may echo patient data) are erased. `metadata_days` after a delivery ended it is
//! deleted with its attempts, and an event goes with the last of its deliveries. The
//! partners' patient ids (`partner_patients`) are kept: they are needed for the next event
//! of the same patient.
//!
//! Erasing leaves a mark (`event_erased_at`, `answers_erased_at`, `answer_erased_at`), so
//! support sees "erased on `<date>`" instead of a gap. An event's body goes with its
//! outbox row as its deliveries move to the archive (`archive`), which is dropped a week
//! at a time at `metadata_days`; what is left in the live tables then is deleted row by
//! row. Every step runs in batches of `batch_size` rows, one short transaction each,
//! skipping rows other transactions hold, so dispatch never waits on pruning. Several
//! daemons may prune at once.

pub mod archive;

use deadpool_postgres::{GenericClient, Pool};

use super::db::DbError;
use crate::config::RetentionConfig;
use crate::shutdown::Shutdown;
use crate::store::{audit, idempotency, sessions};

/// How long a sign-in may take at the identity provider before it is forgotten (the
/// callback refuses an older one; the pruner deletes it).
pub const SIGN_IN_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// What one pruning pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PruneReport {
    pub event_bodies_erased: u64,
    pub answers_erased: u64,
    /// Deliveries moved to the archive, their event's body gone with its outbox row.
    pub deliveries_archived: u64,
    /// Weeks of the archive dropped whole at `metadata_days`.
    pub archived_weeks_dropped: u64,
    pub deliveries_deleted: u64,
    pub events_deleted: u64,
    /// Audit entries older than `audit_days` (`store::audit`).
    pub audit_entries_deleted: u64,
    /// Expired sessions and abandoned sign-ins (`store::sessions`).
    pub sessions_deleted: u64,
    /// The API's idempotency keys past their 24 hours (`store::idempotency`).
    pub idempotency_keys_deleted: u64,
}

impl PruneReport {
    pub fn is_empty(&self) -> bool {
        *self == PruneReport::default()
    }
}

impl std::fmt::Display for PruneReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "erased {} event bodies and the partners' answers to {} deliveries; \
             archived {} deliveries and dropped {} archived weeks; \
             deleted {} deliveries (with their attempts) and {} events; \
             deleted {} audit entries, {} expired sessions and {} idempotency keys",
            self.event_bodies_erased,
            self.answers_erased,
            self.deliveries_archived,
            self.archived_weeks_dropped,
            self.deliveries_deleted,
            self.events_deleted,
            self.audit_entries_deleted,
            self.sessions_deleted,
            self.idempotency_keys_deleted
        )
    }
}

pub(super) fn batch_limit(batch_size: usize) -> i64 {
    i64::try_from(batch_size).unwrap_or(i64::MAX)
}

pub(super) fn days(days: u32) -> i32 {
    i32::try_from(days).unwrap_or(i32::MAX)
}

/// Erases the partners' answers to up to `limit` deliveries that ended more than
/// `payload_days` ago: the attempts' response bodies, the error texts of attempts that got
/// an answer (they quote it, e.g. an `errorMessage`), and the delivery's last error when
/// it came from an answer; a first attempt's in the delivery's row. Our own texts
/// (timeouts, connection errors) stay.
///
/// In the order the deliveries ended, from `retention_position.answers_erased_through`
/// (migration 0021): before it, every delivery's answers are erased, so a pass reads
/// what it erases, not the erased months that `metadata_days` keeps. Then the position
/// moves up to the earliest delivery of the range still kept (one a resend or another
/// pass held), or to the range's end. So a delivery held for long (an idle transaction)
/// keeps the position on it, and each batch reads the erased entries after it again,
/// within the `payload_days` window, until it is let go. The update of each delivery
/// changes no indexed column, so it is written beside the old version (HOT).
pub async fn erase_answers(
    client: &mut impl GenericClient,
    payload_days: u32,
    limit: usize,
) -> Result<u64, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    let erased = transaction
        .execute(
            "WITH expired AS (
                 SELECT d.id FROM dispatcher.deliveries d
                 -- Without the position's row (made by migration 0021), from the
                 -- start: slower, but nothing is kept past `payload_days`.
                 WHERE d.ended_at >= COALESCE((SELECT answers_erased_through
                                               FROM dispatcher.retention_position),
                                              '-infinity')
                   AND d.ended_at < now() - make_interval(days => $1)
                   AND d.answers_erased_at IS NULL
                 ORDER BY d.ended_at
                 LIMIT $2
                 FOR NO KEY UPDATE OF d SKIP LOCKED
             ),
             erased_attempts AS (
                 UPDATE dispatcher.attempts a
                 SET response_body = NULL,
                     error = CASE WHEN a.http_status IS NULL THEN a.error END,
                     answer_erased_at = now()
                 FROM expired
                 WHERE a.delivery_id = expired.id AND a.answer_erased_at IS NULL
             )
             UPDATE dispatcher.deliveries d
             SET answers_erased_at = now(),
                 last_error = CASE WHEN d.last_status IS NULL THEN d.last_error END,
                 -- The first attempt, kept in the row (migration 0024), as `attempts` above.
                 first_attempt_response_body = NULL,
                 first_attempt_error = CASE WHEN d.first_attempt_http_status IS NULL
                                            THEN d.first_attempt_error END,
                 first_attempt_answer_erased_at = CASE
                     WHEN d.first_attempt_started_at IS NOT NULL
                     THEN COALESCE(d.first_attempt_answer_erased_at, now()) END
             FROM expired
             WHERE d.id = expired.id",
            &[&days(payload_days), &batch_limit(limit)],
        )
        .await?;
    // A later statement than the erase, so it sees the erase's rows as erased.
    transaction
        .execute(
            "UPDATE dispatcher.retention_position p
             SET answers_erased_through = COALESCE(
                     (SELECT min(d.ended_at) FROM dispatcher.deliveries d
                      WHERE d.ended_at >= p.answers_erased_through
                        AND d.ended_at < now() - make_interval(days => $1)
                        AND d.answers_erased_at IS NULL),
                     greatest(p.answers_erased_through, now() - make_interval(days => $1)))",
            &[&days(payload_days)],
        )
        .await?;
    transaction.commit().await?;
    Ok(erased)
}

/// Deletes up to `limit` deliveries that ended more than `metadata_days` ago; their
/// attempts (`ON DELETE CASCADE`) and support actions go with them.
pub async fn delete_ended_deliveries(
    client: &impl GenericClient,
    metadata_days: u32,
    limit: usize,
) -> Result<u64, tokio_postgres::Error> {
    client
        .query_one(
            "WITH expired AS (
                 SELECT id FROM dispatcher.deliveries
                 WHERE ended_at < now() - make_interval(days => $1)
                   AND state NOT IN ('pending', 'waiting', 'in_flight')
                 ORDER BY ended_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED
             ),
             gone AS (
                 DELETE FROM dispatcher.deliveries d
                 USING expired
                 WHERE d.id = expired.id
                 RETURNING d.id
             ),
             -- Who resent or cancelled them goes with them, and any support action older
             -- than metadata_days (a resent placeholder's record has no row left to go with).
             actions AS (
                 DELETE FROM dispatcher.support_actions a
                 WHERE a.delivery_id IN (SELECT id FROM gone)
                    OR a.at < now() - make_interval(days => $1)
             )
             SELECT count(*) FROM gone",
            &[&days(metadata_days), &batch_limit(limit)],
        )
        .await
        .map(|row| u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// Deletes up to `limit` routed events older than `metadata_days` that have no delivery
/// left. An event not routed yet is never touched.
pub async fn delete_events_without_deliveries(
    client: &impl GenericClient,
    metadata_days: u32,
    limit: usize,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "WITH expired AS (
                 SELECT o.id FROM dispatcher.outbox o
                 WHERE o.event IS NULL
                   AND o.created_at < now() - make_interval(days => $1)
                   AND NOT EXISTS (SELECT 1 FROM dispatcher.deliveries d WHERE d.event_id = o.id)
                 ORDER BY o.created_at
                 LIMIT $2
                 FOR UPDATE OF o SKIP LOCKED
             )
             DELETE FROM dispatcher.outbox o
             USING expired
             WHERE o.id = expired.id",
            &[&days(metadata_days), &batch_limit(limit)],
        )
        .await
}

/// One pruning pass: every step, batch after batch, until a batch comes back short.
/// Each batch takes a connection of the pool only for its short transaction (one
/// statement; two for the answers' erase, three for the archive's move). Stops between
/// batches when `shutdown` begins.
pub async fn prune(
    pool: &Pool,
    retention: &RetentionConfig,
    shutdown: &Shutdown,
) -> Result<PruneReport, DbError> {
    let batch = retention.batch_size;
    let payload_days = retention.payload_days;
    let metadata_days = retention.metadata_days;
    // Before the answers: an archived delivery's are erased as it moves, not first in
    // place.
    let due = in_batches(pool, batch, shutdown, |mut client| async move {
        archive::archive_due_events(&mut client, payload_days, batch).await
    })
    .await?;
    let answers_erased = in_batches(pool, batch, shutdown, |mut client| async move {
        erase_answers(&mut client, payload_days, batch).await
    })
    .await?;
    // Bodies a daemon from before 0025 erased in place, after the answers: the first pass
    // after the upgrade moves that whole history (hours, on a large site), and the
    // answers due must not wait for it. That daemon erased their answers already.
    let erased = in_batches(pool, batch, shutdown, |mut client| async move {
        archive::archive_erased_events(&mut client, payload_days, batch).await
    })
    .await?;
    let deliveries_deleted = in_batches(pool, batch, shutdown, |client| async move {
        delete_ended_deliveries(&client, metadata_days, batch).await
    })
    .await?;
    let events_deleted = in_batches(pool, batch, shutdown, |client| async move {
        delete_events_without_deliveries(&client, metadata_days, batch).await
    })
    .await?;
    let mut archived_weeks_dropped = 0;
    while !shutdown.is_stopping()
        && archive::drop_archived_week(&pool.get().await?, metadata_days).await?
    {
        archived_weeks_dropped += 1;
    }
    let audit_days = retention.audit_days;
    let audit_entries_deleted = in_batches(pool, batch, shutdown, |client| async move {
        audit::prune(&client, audit_days, batch_limit(batch)).await
    })
    .await?;
    let sessions_deleted = sessions::prune(&pool.get().await?, SIGN_IN_MAX_AGE).await?;
    let idempotency_keys_deleted = idempotency::prune(&pool.get().await?).await?;
    Ok(PruneReport {
        event_bodies_erased: due.events,
        answers_erased,
        deliveries_archived: due.deliveries + erased.deliveries,
        archived_weeks_dropped,
        deliveries_deleted,
        events_deleted,
        audit_entries_deleted,
        sessions_deleted,
        idempotency_keys_deleted,
    })
}

/// What one batch of a step did, summed over a pass: a count of rows, or several counts
/// (the archive's events and deliveries).
trait Batch: Default + std::ops::AddAssign {
    /// What the step takes `batch_size` of at a time: fewer, and the batch was the last.
    fn rows(&self) -> u64;
}

impl Batch for u64 {
    fn rows(&self) -> u64 {
        *self
    }
}

/// Runs `step` until it handles fewer than `batch` rows; returns what all handled.
async fn in_batches<T, F, Fut>(
    pool: &Pool,
    batch: usize,
    shutdown: &Shutdown,
    step: F,
) -> Result<T, DbError>
where
    T: Batch,
    F: Fn(deadpool_postgres::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    let mut total = T::default();
    while !shutdown.is_stopping() {
        let handled = step(pool.get().await?).await?;
        let last = handled.rows() < batch as u64;
        total += handled;
        if last {
            break;
        }
    }
    Ok(total)
}
