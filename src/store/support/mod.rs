//! What support sees and does, for the admin API, the support page and the CLI alike:
//! one [`Selection`] of deliveries, their list and detail, [`resend()`] and [`cancel`],
//! and the search box's `search`.
//! Statements on `dispatcher.deliveries`, `dispatcher.attempts` and
//! `dispatcher.support_actions`; reads of a delivery through `dispatcher.every_delivery`,
//! which adds the archived ones (`store::retention::archive`), and of its attempts through
//! `dispatcher.every_attempt`. The words for what they did are here too, so the three say
//! the same thing.

pub mod chart;
pub mod preview;
pub mod received;
pub mod resend;
pub mod search;
mod selection;

use std::fmt;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::db::DbError;
use super::queue;
use crate::delivery::state::{DeliveryState, UnknownState};
pub use resend::{resend, ErasedBody, ResendReport, Resent};
pub use selection::Selection;
use selection::{Params, CONDITIONS};

/// Why a statement on a selection failed: support named a state that does not exist, or
/// the database failed.
#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    #[error(transparent)]
    UnknownState(#[from] UnknownState),
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<tokio_postgres::Error> for SupportError {
    fn from(error: tokio_postgres::Error) -> SupportError {
        SupportError::Database(error.into())
    }
}

/// One line of `dispatcher deliveries list`.
#[derive(Debug, Clone)]
pub struct DeliverySummary {
    /// Also the `webhook-id` the partner receives.
    pub id: Uuid,
    pub event_id: i64,
    /// `null` for an event that reached no partner.
    pub partner: Option<String>,
    pub event_name: String,
    pub patient_id: Option<String>,
    pub state: DeliveryState,
    /// Attempts ever made, over every resend.
    pub attempt_count: i32,
    /// Attempts since support last resent it (all of them if it never did): the round
    /// `last_error`'s "gave up after N attempts" counts.
    pub attempts_since_resend: i32,
    /// The HTTP status of the last answer, if one came.
    pub last_status: Option<i32>,
    /// Why the last attempt failed, with the partner's `errorMessage` when it gave one.
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Pending, but its partner's circuit is open: nothing goes out to the partner until
    /// a probe gets an answer, whatever `next_attempt_at` says.
    pub held_by_circuit: bool,
}

/// A claimed delivery keeps the `due_at` it fell due at: it has no next attempt (its
/// request is on the wire) and no circuit holds it.
const SUMMARY_COLUMNS: &str = concat!(
    "id, event_id, partner, event_name, patient_id, ",
    shown_state!("deliveries"),
    " AS state, attempt_count, last_status, last_error, created_at,
     CASE WHEN ",
    shown_state!("deliveries"),
    " = 'pending' THEN due_at END AS next_attempt_at,
     attempt_count - attempts_before_resend AS attempts_since_resend,
     ",
    shown_state!("deliveries"),
    " = 'pending' AND EXISTS (
         SELECT 1 FROM dispatcher.partner_circuits c
         WHERE c.partner = deliveries.partner AND c.state <> 'closed') AS held_by_circuit"
);

impl DeliverySummary {
    fn from_row(row: &tokio_postgres::Row) -> DeliverySummary {
        DeliverySummary {
            id: row.get("id"),
            event_id: row.get("event_id"),
            partner: row.get("partner"),
            event_name: row.get("event_name"),
            patient_id: row.get("patient_id"),
            // The CHECK constraint keeps the column to known states.
            state: row
                .get::<_, &str>("state")
                .parse()
                .unwrap_or(DeliveryState::Invalid),
            attempt_count: row.get("attempt_count"),
            last_status: row.get("last_status"),
            last_error: row.get("last_error"),
            created_at: row.get("created_at"),
            next_attempt_at: row.get("next_attempt_at"),
            attempts_since_resend: row.get("attempts_since_resend"),
            held_by_circuit: row.get("held_by_circuit"),
        }
    }

    /// Its tries in support's words: this round's, and every one when support resent it
    /// ("4 (8 in all)"), so the count beside "gave up after 4 attempts" is 4.
    pub fn tries(&self) -> String {
        if self.attempts_since_resend == self.attempt_count {
            self.attempt_count.to_string()
        } else {
            format!(
                "{} ({} in all)",
                self.attempts_since_resend, self.attempt_count
            )
        }
    }
}

/// Newest first, `limit` at a time: pass the last id of a page as `after` for the next.
///
/// Ids are UUIDv7, ordered by creation, so paging by id never repeats or skips a row
/// while others are inserted or change state.
pub async fn list(
    client: &impl GenericClient,
    selection: &Selection,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<DeliverySummary>, SupportError> {
    let params = Params::new(selection)?;
    let rows = client
        .query(
            &format!(
                "SELECT {SUMMARY_COLUMNS} FROM dispatcher.every_delivery deliveries
                 WHERE {CONDITIONS}
                   AND ($9::uuid IS NULL OR id < $9)
                 ORDER BY id DESC
                 LIMIT $10"
            ),
            &params.with(&[&after, &limit]),
        )
        .await?;
    Ok(rows.iter().map(DeliverySummary::from_row).collect())
}

/// The `limit` deliveries created just after `before`, newest first: the page before
/// the one `before` heads, for paging back the way [`list`] pages forward.
pub async fn list_before(
    client: &impl GenericClient,
    selection: &Selection,
    before: Uuid,
    limit: i64,
) -> Result<Vec<DeliverySummary>, SupportError> {
    let params = Params::new(selection)?;
    let rows = client
        .query(
            &format!(
                "SELECT {SUMMARY_COLUMNS} FROM dispatcher.every_delivery deliveries
                 WHERE {CONDITIONS}
                   AND id > $9
                 ORDER BY id
                 LIMIT $10"
            ),
            &params.with(&[&before, &limit]),
        )
        .await?;
    Ok(rows.iter().rev().map(DeliverySummary::from_row).collect())
}

/// One partner's deliveries at a glance, for the support page.
#[derive(Debug, Clone)]
pub struct PartnerSummary {
    /// `null` gathers the events that reached no partner.
    pub partner: Option<String>,
    /// Ended delivered in the last 24 hours (as the chart counts them).
    pub delivered: i64,
    /// Ended rejected, dead, invalid or unrouted in the last 24 hours.
    pub failed: i64,
    /// Pending, waiting or in flight, however old.
    pub pending: i64,
    pub oldest_pending_since: Option<DateTime<Utc>>,
    /// The partner's circuit breaker as last recorded; null if it never failed.
    pub circuit: Option<crate::delivery::breaker::PartnerCircuit>,
}

pub async fn partner_summaries(
    client: &impl GenericClient,
) -> Result<Vec<PartnerSummary>, tokio_postgres::Error> {
    // The unfinished on the queue's indexes (one per state, so each state is a condition
    // of its own: `deliveries_ended_by_state` holds no unfinished delivery), the ended on
    // `deliveries_ended`: what this reads follows the queue and the day, never the
    // history support keeps (it read every delivery kept, by `created_at`, which no index
    // leads with). The claimed ones are among the pending (`deliveries_pending`), counted
    // in flight by their shown state; no stored state is `in_flight` since migration 0020,
    // and no index would serve one.
    let rows = client
        .query(
            concat!(
                "SELECT partner,
                    count(*) FILTER (WHERE state = 'delivered') AS delivered,
                    count(*) FILTER (WHERE state IN ('rejected', 'dead', 'invalid', 'unrouted'))
                        AS failed,
                    count(*) FILTER (WHERE state IN ('pending', 'waiting', 'in_flight')) AS pending,
                    min(created_at) FILTER (WHERE state IN ('pending', 'waiting', 'in_flight'))
                        AS oldest_pending_since
             FROM (SELECT partner, ",
                shown_state!("deliveries"),
                " AS state, created_at FROM dispatcher.deliveries
                   WHERE state = 'pending' OR state = 'waiting'
                   UNION ALL
                   SELECT partner, state, created_at FROM dispatcher.deliveries
                   WHERE ended_at > now() - interval '24 hours') AS today
             GROUP BY partner
             ORDER BY partner NULLS LAST"
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| PartnerSummary {
            partner: row.get("partner"),
            delivered: row.get("delivered"),
            failed: row.get("failed"),
            pending: row.get("pending"),
            oldest_pending_since: row.get("oldest_pending_since"),
            circuit: None,
        })
        .collect())
}

/// One attempt as support sees it.
#[derive(Debug, Clone)]
pub struct AttemptSummary {
    pub number: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    /// What the partner answered, capped at 16 KiB.
    pub response_body: Option<String>,
    /// When the partner's answer was erased (retention).
    pub answer_erased_at: Option<DateTime<Utc>>,
    /// Support resent the delivery after this attempt: it closed a round, and was not
    /// tried again by the dispatcher.
    pub resent_after: bool,
}

/// A resend or cancel, and who asked for it.
#[derive(Debug, Clone)]
pub struct SupportAction {
    pub action: String,
    pub actor: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct DeliveryDetail {
    pub summary: DeliverySummary,
    /// When the event's body was erased (retention); it cannot be sent again after that.
    pub event_erased_at: Option<DateTime<Utc>>,
    /// When the partners' answers to this delivery were erased (retention).
    pub answers_erased_at: Option<DateTime<Utc>>,
    pub attempts: Vec<AttemptSummary>,
    pub support_actions: Vec<SupportAction>,
}

pub async fn show(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<DeliveryDetail>, tokio_postgres::Error> {
    let Some(row) = client
        .query_opt(
            &format!(
                "SELECT {SUMMARY_COLUMNS},
                        -- An archived delivery keeps the mark; the outbox row is gone.
                        COALESCE(deliveries.event_erased_at,
                                 (SELECT o.event_erased_at FROM dispatcher.outbox o
                                  WHERE o.id = deliveries.event_id)) AS event_erased_at,
                        answers_erased_at
                 FROM dispatcher.every_delivery deliveries WHERE id = $1"
            ),
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let attempts = client
        .query(
            "SELECT number, started_at, duration_ms, http_status,
                    CASE WHEN error_kind IS NULL OR error IS NULL THEN coalesce(error, error_kind)
                         ELSE error_kind || ': ' || error END AS error,
                    response_body, answer_erased_at, resent_after
             FROM dispatcher.every_attempt WHERE delivery_id = $1 ORDER BY number",
            &[&id],
        )
        .await?;
    let actions = client
        .query(
            "SELECT action, actor, at FROM dispatcher.support_actions
             WHERE delivery_id = $1 ORDER BY at, id",
            &[&id],
        )
        .await?;
    Ok(Some(DeliveryDetail {
        summary: DeliverySummary::from_row(&row),
        event_erased_at: row.get("event_erased_at"),
        answers_erased_at: row.get("answers_erased_at"),
        attempts: attempts
            .iter()
            .map(|row| AttemptSummary {
                number: row.get("number"),
                started_at: row.get("started_at"),
                duration_ms: row.get("duration_ms"),
                http_status: row.get("http_status"),
                error: row.get("error"),
                response_body: row.get("response_body"),
                answer_erased_at: row.get("answer_erased_at"),
                resent_after: row.get("resent_after"),
            })
            .collect(),
        support_actions: actions
            .iter()
            .map(|row| SupportAction {
                action: row.get("action"),
                actor: row.get("actor"),
                at: row.get("at"),
            })
            .collect(),
    }))
}

/// The states [`cancel`] ends: those support can cancel
/// ([`DeliveryState::can_cancel`]; a test holds the two together).
const CANCELLABLE: &str = "('pending', 'waiting', 'rejected', 'dead', 'invalid', 'unrouted')";

/// An unrouted delivery's placeholder that support's resend removed so that its event
/// is routed again: its old id leads here, to the event's deliveries now.
#[derive(Debug, Clone)]
pub struct Rerouted {
    /// The placeholder's id, asked for.
    pub id: Uuid,
    pub event_id: i64,
    /// When support resent it, and who.
    pub at: DateTime<Utc>,
    pub actor: String,
    /// The event's deliveries now (none until the router has routed it again).
    pub deliveries: Vec<Uuid>,
}

impl fmt::Display for Rerouted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delivery {} reached no partner; {} routed its event {} again on {}",
            self.id,
            self.actor,
            self.event_id,
            self.at.format("%Y-%m-%d %H:%M:%S UTC")
        )?;
        if self.deliveries.is_empty() {
            write!(f, ": it has no delivery yet")
        } else {
            let ids: Vec<String> = self.deliveries.iter().map(Uuid::to_string).collect();
            write!(f, ": its deliveries now are {}", ids.join(", "))
        }
    }
}

/// Where an id that is no longer a delivery went: the placeholder of an event that
/// reached no partner, removed by a resend (see [`resend()`]) that routed the event
/// again. `None` for an id that never was a delivery, or whose record retention deleted.
pub async fn rerouted(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<Rerouted>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT s.event_id, s.at, s.actor,
                    ARRAY(SELECT d.id FROM dispatcher.every_delivery d
                          WHERE d.event_id = s.event_id ORDER BY d.id)
             FROM dispatcher.support_actions s
             WHERE s.delivery_id = $1 AND s.action = 'resend'
             ORDER BY s.at DESC, s.id DESC
             LIMIT 1",
            &[&id],
        )
        .await?;
    Ok(row.map(|row| Rerouted {
        id,
        event_id: row.get(0),
        at: row.get(1),
        actor: row.get(2),
        deliveries: row.get(3),
    }))
}

/// What a cancel did: the deliveries it ended, and for each other one asked for, why not.
#[derive(Debug, Default)]
pub struct CancelReport {
    pub cancelled: Vec<Uuid>,
    pub refused: Vec<CancelRefused>,
}

/// A delivery a cancel left alone, and its state when the cancel looked (`None`: no
/// delivery has this id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelRefused {
    pub id: Uuid,
    pub state: Option<DeliveryState>,
    /// It is in the archive (`store::retention::archive`): its event's body is erased,
    /// and it no longer changes.
    pub archived: bool,
}

impl CancelReport {
    /// Why the deliveries asked for were not cancelled, a line each; `None` when all were.
    pub fn refusals(&self) -> Option<String> {
        let lines: Vec<String> = self.refused.iter().map(ToString::to_string).collect();
        (!lines.is_empty()).then(|| lines.join("\n"))
    }
}

impl CancelRefused {
    /// The one reason that applies, in the words the CLI, the API and the page all use.
    pub fn reason(&self) -> &'static str {
        if self.archived {
            return "not cancelled: it ended long ago and its event's body was erased; \
                    it is archived and no longer changes";
        }
        match self.state {
            None => "not cancelled: no delivery has this id",
            Some(DeliveryState::InFlight) => {
                "not cancelled: it is in flight right now (its request is on the wire); try again in a moment"
            }
            Some(DeliveryState::Delivered) => "not cancelled: it is already delivered",
            Some(DeliveryState::Cancelled) => "not cancelled: it is already cancelled",
            // A state support can cancel that changed under the statement: the next look
            // tells.
            Some(_) => "not cancelled: its state changed just now; look again",
        }
    }
}

impl fmt::Display for CancelRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.id, self.reason())
    }
}

/// Ends waiting, pending or failed deliveries for good, and records who asked; says of
/// each one asked for that it left alone which state kept it (as the statement saw it,
/// shown as support knows it).
///
/// A delivery in flight is left alone: its request is on the wire, and cancelling now
/// would drop the record of what the partner answered. It is stored `pending` with a
/// claim token (migration 0020), so the token is what refuses it. Cancelling the delivery
/// ahead of a waiting one makes that one pending in the same transaction
/// (`store::queue::settle`).
pub async fn cancel(
    client: &mut impl GenericClient,
    ids: &[Uuid],
    actor: &str,
) -> Result<CancelReport, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    queue::lock_patients(&transaction, ids).await?;
    let rows = transaction
        .query(
            &format!(
                "WITH cancelled AS (
                 UPDATE dispatcher.deliveries
                 SET state = 'cancelled', due_at = NULL, ended_at = now()
                 WHERE id = ANY($1)
                   AND state IN {CANCELLABLE}
                   AND claim_token IS NULL
                 RETURNING id, event_id
             ),
             recorded AS (
                 INSERT INTO dispatcher.support_actions (delivery_id, event_id, action, actor)
                 SELECT id, event_id, 'cancel', $2 FROM cancelled
             )
             SELECT asked.id, cancelled.id IS NOT NULL, {shown} AS state,
                    COALESCE(d.archived, false) AS archived
             FROM (SELECT DISTINCT unnest($1::uuid[]) AS id) asked
             LEFT JOIN cancelled ON cancelled.id = asked.id
             LEFT JOIN dispatcher.every_delivery d ON d.id = asked.id",
                shown = shown_state!("d")
            ),
            &[&ids, &actor],
        )
        .await?;
    let mut report = CancelReport::default();
    for row in &rows {
        let id: Uuid = row.get(0);
        if row.get::<_, bool>(1) {
            report.cancelled.push(id);
        } else {
            // The CHECK constraint keeps the column to known states.
            let state = row
                .get::<_, Option<&str>>(2)
                .map(|state| state.parse().unwrap_or(DeliveryState::Invalid));
            report.refused.push(CancelRefused {
                id,
                state,
                archived: row.get("archived"),
            });
        }
    }
    // In the order asked.
    report
        .cancelled
        .sort_by_key(|id| ids.iter().position(|asked| asked == id));
    report
        .refused
        .sort_by_key(|refused| ids.iter().position(|asked| *asked == refused.id));
    queue::settle(&transaction, &report.cancelled).await?;
    transaction.commit().await?;
    Ok(report)
}

/// The states whose `can` holds, as an SQL list in the order of [`DeliveryState::ALL`].
#[cfg(test)]
fn sql_list(can: impl Fn(DeliveryState) -> bool) -> String {
    let states: Vec<String> = DeliveryState::ALL
        .into_iter()
        .filter(|state| can(*state))
        .map(|state| format!("'{state}'"))
        .collect();
    format!("({})", states.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn support_cancels_in_sql_what_the_page_offers_to_cancel() {
        assert_eq!(CANCELLABLE, sql_list(DeliveryState::can_cancel));
    }

    #[test]
    fn support_resends_in_sql_what_the_page_offers_to_resend() {
        // Placeholders of events that reached no partner are routed again instead.
        let put_back =
            |state: DeliveryState| state.can_resend() && state != DeliveryState::Unrouted;
        assert_eq!(resend::RESENDABLE, sql_list(put_back));
    }
}
