//! Where routing is in the outbox, kept in `dispatcher.routing_position` instead of a mark
//! on each routed event (migration 0013 says why and how): a snapshot `through` in whose
//! eyes every committed event is routed, and while a batch is open, a newer snapshot
//! `upto` and how far in it routing got (`after`, an (xid, id) pair). The events to route
//! next come from three places, in this order: those support asked to route again, those
//! written before the migration and not yet routed (the old way: `routed_at`), and those
//! whose transactions committed between `through` and `upto`.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

/// The columns routing reads of an event, after `o.` (the outbox row).
const EVENT_COLUMNS: &str = "o.id, o.event_name, o.xid::text AS xid,
     jsonb_typeof(o.event) = 'object' AS is_object,
     CASE WHEN jsonb_typeof(o.event -> 'supportProgramId') = 'string'
          THEN o.event ->> 'supportProgramId' END AS support_program_id,
     CASE WHEN jsonb_typeof(o.event -> 'patient' -> 'id') = 'string'
          THEN o.event -> 'patient' ->> 'id' END AS patient_id";

/// Where an event to route came from, so that [`Position::passed`] records it routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// `outbox_route_again`: support asked.
    Again,
    /// Written before migration 0013, marked by `routed_at`.
    BeforeXid,
    /// Committed between `through` and `upto`.
    Committed,
}

/// The routing position, locked for this transaction: only one daemon routes at a time.
/// Snapshots and transaction ids travel as PostgreSQL's text for them.
pub(super) struct Position {
    /// The transaction's `now()`: the `created_at` of the deliveries it inserts, and the
    /// time of their ids.
    pub(super) now: DateTime<Utc>,
    through: String,
    upto: Option<String>,
    after: Option<(String, i64)>,
    moved: bool,
}

impl Position {
    /// Locks the position; `None` when another daemon holds it (it is routing).
    pub(super) async fn lock(
        client: &impl GenericClient,
    ) -> Result<Option<Position>, tokio_postgres::Error> {
        let statement = client
            .prepare_cached(
                "SELECT now() AS now, through::text AS through, upto::text AS upto,
                        after_xid::text AS after_xid, after_id
                 FROM dispatcher.routing_position
                 FOR UPDATE SKIP LOCKED",
            )
            .await?;
        let Some(row) = client.query_opt(&statement, &[]).await? else {
            return Ok(None);
        };
        let after = match (row.get("after_xid"), row.get("after_id")) {
            (Some(xid), Some(id)) => Some((xid, id)),
            _ => None,
        };
        Ok(Some(Position {
            now: row.get("now"),
            through: row.get("through"),
            upto: row.get("upto"),
            after,
            moved: false,
        }))
    }

    /// Up to `limit` events to route, in the order to route them: every event that had
    /// committed when this was called, if there are no more than `limit`.
    pub(super) async fn next_events(
        &mut self,
        client: &impl GenericClient,
        limit: usize,
    ) -> Result<Vec<(Source, Row)>, tokio_postgres::Error> {
        let mut events = Vec::new();
        for (source, sql) in [
            (
                Source::Again,
                format!(
                    "SELECT {EVENT_COLUMNS} FROM dispatcher.outbox_route_again a
                     JOIN dispatcher.outbox o ON o.id = a.event_id
                     ORDER BY o.id LIMIT $1"
                ),
            ),
            (
                Source::BeforeXid,
                format!(
                    "SELECT {EVENT_COLUMNS} FROM dispatcher.outbox o
                     WHERE o.routed_at IS NULL AND o.xid IS NULL
                     ORDER BY o.id LIMIT $1"
                ),
            ),
        ] {
            let room = room(limit, &events);
            if room == 0 {
                return Ok(events);
            }
            let statement = client.prepare_cached(&sql).await?;
            let rows = client.query(&statement, &[&room]).await?;
            events.extend(rows.into_iter().map(|row| (source, row)));
        }
        self.committed_events(client, limit, &mut events).await?;
        Ok(events)
    }

    /// Adds to `events` those committed after `through`, up to `limit` in all: the rest of
    /// the open batch, and if that ends with room left and was opened before this call, a
    /// new batch up to now, so nothing that committed before this call is left behind.
    async fn committed_events(
        &mut self,
        client: &impl GenericClient,
        limit: usize,
        events: &mut Vec<(Source, Row)>,
    ) -> Result<(), tokio_postgres::Error> {
        let mut opened_here = false;
        loop {
            let room = room(limit, events);
            if room == 0 {
                return Ok(());
            }
            let upto = match &self.upto {
                Some(upto) => upto.clone(),
                None => {
                    let now = client
                        .prepare_cached("SELECT pg_current_snapshot()::text")
                        .await?;
                    let upto: String = client.query_one(&now, &[]).await?.get(0);
                    (self.upto, self.after, self.moved) = (Some(upto.clone()), None, true);
                    opened_here = true;
                    upto
                }
            };
            let (after_xid, after_id) = self.after.clone().unwrap_or_else(|| ("0".to_string(), 0));
            let statement = client
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM dispatcher.outbox o
                     WHERE o.xid >= pg_snapshot_xmin($2::text::pg_snapshot)
                       AND o.xid < pg_snapshot_xmax($3::text::pg_snapshot)
                       AND (o.xid, o.id) > ($4::text::xid8, $5::int8)
                       AND NOT pg_visible_in_snapshot(o.xid, $2::text::pg_snapshot)
                       AND pg_visible_in_snapshot(o.xid, $3::text::pg_snapshot)
                     ORDER BY o.xid, o.id
                     LIMIT $1"
                ))
                .await?;
            let rows = client
                .query(
                    &statement,
                    &[&room, &self.through, &upto, &after_xid, &after_id],
                )
                .await?;
            let full = i64::try_from(rows.len()).is_ok_and(|count| count == room);
            if let Some(last) = rows.last() {
                self.after = Some((last.get("xid"), last.get("id")));
                self.moved = true;
            }
            events.extend(rows.into_iter().map(|row| (Source::Committed, row)));
            if full {
                return Ok(());
            }
            // The batch is done: everything committed in `upto` is routed.
            (self.through, self.upto, self.after, self.moved) = (upto, None, None, true);
            if opened_here {
                return Ok(());
            }
        }
    }

    /// Records `events` routed (in the transaction that inserted their deliveries).
    pub(super) async fn passed(
        &self,
        client: &impl GenericClient,
        events: &[(Source, Row)],
    ) -> Result<(), tokio_postgres::Error> {
        let of = |wanted: Source| -> Vec<i64> {
            events
                .iter()
                .filter(|(source, _)| *source == wanted)
                .map(|(_, row)| row.get("id"))
                .collect()
        };
        let again = of(Source::Again);
        if !again.is_empty() {
            let statement = client
                .prepare_cached(
                    "DELETE FROM dispatcher.outbox_route_again WHERE event_id = ANY($1)",
                )
                .await?;
            client.execute(&statement, &[&again]).await?;
        }
        let before_xid = of(Source::BeforeXid);
        if !before_xid.is_empty() {
            let statement = client
                .prepare_cached("UPDATE dispatcher.outbox SET routed_at = now() WHERE id = ANY($1)")
                .await?;
            client.execute(&statement, &[&before_xid]).await?;
        }
        if self.moved {
            let (after_xid, after_id) = match &self.after {
                Some((xid, id)) => (Some(xid.as_str()), Some(*id)),
                None => (None, None),
            };
            let statement = client
                .prepare_cached(
                    "UPDATE dispatcher.routing_position
                     SET through = $1::text::pg_snapshot, upto = $2::text::pg_snapshot,
                         after_xid = $3::text::xid8, after_id = $4",
                )
                .await?;
            client
                .execute(
                    &statement,
                    &[&self.through, &self.upto, &after_xid, &after_id],
                )
                .await?;
        }
        Ok(())
    }
}

/// How many more events fit in `limit`, as the statements' LIMIT.
fn room(limit: usize, events: &[(Source, Row)]) -> i64 {
    i64::try_from(limit.saturating_sub(events.len())).unwrap_or(i64::MAX)
}
