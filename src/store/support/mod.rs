//! What support sees and does, for the admin API, the support page and the CLI alike:
//! one [`Selection`] of deliveries, their list and detail, [`resend()`] and [`cancel`],
//! and the search box's `search`.
//! Statements on `dispatcher.deliveries`, `dispatcher.attempts` and
//! `dispatcher.support_actions`; the words for what they did are here too, so the three
//! say the same thing.

pub mod chart;
pub mod resend;
pub mod search;
mod selection;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

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
    Database(#[from] tokio_postgres::Error),
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
    pub attempt_count: i32,
    /// The HTTP status of the last answer, if one came.
    pub last_status: Option<i32>,
    /// Why the last attempt failed, with the partner's `errorMessage` when it gave one.
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

const SUMMARY_COLUMNS: &str = "id, event_id, partner, event_name, patient_id, state, attempt_count,
     last_status, last_error, created_at, CASE WHEN state = 'pending' THEN due_at END";

impl DeliverySummary {
    fn from_row(row: &tokio_postgres::Row) -> DeliverySummary {
        DeliverySummary {
            id: row.get(0),
            event_id: row.get(1),
            partner: row.get(2),
            event_name: row.get(3),
            patient_id: row.get(4),
            // The CHECK constraint keeps the column to known states.
            state: row
                .get::<_, &str>(5)
                .parse()
                .unwrap_or(DeliveryState::Invalid),
            attempt_count: row.get(6),
            last_status: row.get(7),
            last_error: row.get(8),
            created_at: row.get(9),
            next_attempt_at: row.get(10),
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
                "SELECT {SUMMARY_COLUMNS} FROM dispatcher.deliveries
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
                "SELECT {SUMMARY_COLUMNS} FROM dispatcher.deliveries
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
    /// Delivered in the last 24 hours.
    pub delivered: i64,
    /// Rejected, dead, invalid or unrouted in the last 24 hours.
    pub failed: i64,
    /// Pending or in flight, however old.
    pub pending: i64,
    pub oldest_pending_since: Option<DateTime<Utc>>,
    /// The partner's circuit breaker as last recorded; null if it never failed.
    pub circuit: Option<crate::delivery::breaker::PartnerCircuit>,
}

pub async fn partner_summaries(
    client: &impl GenericClient,
) -> Result<Vec<PartnerSummary>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT partner,
                    count(*) FILTER (WHERE state = 'delivered'),
                    count(*) FILTER (WHERE state IN ('rejected', 'dead', 'invalid', 'unrouted')),
                    count(*) FILTER (WHERE state IN ('pending', 'in_flight')),
                    min(created_at) FILTER (WHERE state IN ('pending', 'in_flight'))
             FROM dispatcher.deliveries
             WHERE state IN ('pending', 'in_flight') OR created_at > now() - interval '24 hours'
             GROUP BY partner
             ORDER BY partner NULLS LAST",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| PartnerSummary {
            partner: row.get(0),
            delivered: row.get(1),
            failed: row.get(2),
            pending: row.get(3),
            oldest_pending_since: row.get(4),
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
                        (SELECT event_erased_at FROM dispatcher.outbox WHERE id = event_id),
                        answers_erased_at
                 FROM dispatcher.deliveries WHERE id = $1"
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
                         ELSE error_kind || ': ' || error END,
                    response_body, answer_erased_at
             FROM dispatcher.attempts WHERE delivery_id = $1 ORDER BY number",
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
        event_erased_at: row.get(11),
        answers_erased_at: row.get(12),
        attempts: attempts
            .iter()
            .map(|row| AttemptSummary {
                number: row.get(0),
                started_at: row.get(1),
                duration_ms: row.get(2),
                http_status: row.get(3),
                error: row.get(4),
                response_body: row.get(5),
                answer_erased_at: row.get(6),
            })
            .collect(),
        support_actions: actions
            .iter()
            .map(|row| SupportAction {
                action: row.get(0),
                actor: row.get(1),
                at: row.get(2),
            })
            .collect(),
    }))
}

/// The states [`cancel`] ends: those support can cancel
/// ([`DeliveryState::can_cancel`]; a test holds the two together).
const CANCELLABLE: &str = "('pending', 'rejected', 'dead', 'invalid', 'unrouted')";

/// Ends pending or failed deliveries for good, and records who asked. Returns the ids
/// cancelled.
///
/// A delivery in flight is left alone: its request is on the wire, and cancelling now
/// would drop the record of what the partner answered.
pub async fn cancel(
    client: &impl GenericClient,
    ids: &[Uuid],
    actor: &str,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "WITH cancelled AS (
                 UPDATE dispatcher.deliveries
                 SET state = 'cancelled', due_at = NULL, claim_token = NULL, ended_at = now()
                 WHERE id = ANY($1)
                   AND state IN {CANCELLABLE}
                 RETURNING id, event_id
             ),
             recorded AS (
                 INSERT INTO dispatcher.support_actions (delivery_id, event_id, action, actor)
                 SELECT id, event_id, 'cancel', $2 FROM cancelled
             )
             SELECT id FROM cancelled"
            ),
            &[&ids, &actor],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
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
