//! What support sees and does: one selection of deliveries, their list and detail,
//! resend and cancel. Statements on `dispatcher.deliveries`, `dispatcher.attempts` and
//! `dispatcher.support_actions` that the admin API, the page and the CLI run.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::delivery::state::DeliveryState;

/// Which deliveries support means: by id, or by what they are. Every field narrows the
/// selection; an empty filter selects everything.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Only these deliveries.
    pub ids: Option<Vec<Uuid>>,
    /// Only these states (named by support as in [`parse_states`]).
    pub states: Option<Vec<DeliveryState>>,
    pub partner: Option<String>,
    pub event_name: Option<String>,
    pub patient_id: Option<String>,
    /// Created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Created before this time.
    pub until: Option<DateTime<Utc>>,
}

impl DeliveryFilter {
    pub fn ids(ids: &[Uuid]) -> DeliveryFilter {
        DeliveryFilter {
            ids: Some(ids.to_vec()),
            ..DeliveryFilter::default()
        }
    }
}

/// The conditions of a [`DeliveryFilter`], as parameters `$1` to `$7`.
const FILTER_CONDITIONS: &str = "($1::uuid[] IS NULL OR id = ANY($1))
     AND ($2::text[] IS NULL OR state = ANY($2))
     AND ($3::text IS NULL OR partner = $3)
     AND ($4::text IS NULL OR event_name = $4)
     AND ($5::text IS NULL OR patient_id = $5)
     AND ($6::timestamptz IS NULL OR created_at >= $6)
     AND ($7::timestamptz IS NULL OR created_at < $7)";

/// A filter's values in the order of [`FILTER_CONDITIONS`].
struct FilterParams<'a> {
    filter: &'a DeliveryFilter,
    states: Option<Vec<&'static str>>,
}

impl<'a> FilterParams<'a> {
    fn new(filter: &'a DeliveryFilter) -> Self {
        FilterParams {
            filter,
            states: filter
                .states
                .as_ref()
                .map(|states| states.iter().map(|state| state.as_str()).collect()),
        }
    }

    /// The seven filter parameters followed by `extra`.
    fn with<'b>(&'b self, extra: &[&'b (dyn ToSql + Sync)]) -> Vec<&'b (dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &self.filter.ids,
            &self.states,
            &self.filter.partner,
            &self.filter.event_name,
            &self.filter.patient_id,
            &self.filter.since,
            &self.filter.until,
        ];
        params.extend_from_slice(extra);
        params
    }
}

/// One line of `dispatcher deliveries list`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    filter: &DeliveryFilter,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<DeliverySummary>, tokio_postgres::Error> {
    let params = FilterParams::new(filter);
    let rows = client
        .query(
            &format!(
                "SELECT {SUMMARY_COLUMNS} FROM dispatcher.deliveries
                 WHERE {FILTER_CONDITIONS}
                   AND ($8::uuid IS NULL OR id < $8)
                 ORDER BY id DESC
                 LIMIT $9"
            ),
            &params.with(&[&after, &limit]),
        )
        .await?;
    Ok(rows.iter().map(DeliverySummary::from_row).collect())
}

/// One partner's deliveries at a glance, for the support page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SupportAction {
    pub action: String,
    pub actor: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
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

/// Puts the selected ended deliveries back to `pending` now, with a fresh set of
/// attempts, and records who asked; their history stays. Returns the ids moved.
///
/// A delivery whose event body was erased is left alone. The event row is locked
/// (`FOR SHARE`) so that retention cannot erase the body between this check and the
/// commit: retention skips rows locked so, checks the deliveries again once it holds the
/// row (seeing a resend that committed before), and a resend that waited for retention's
/// lock sees the body gone (see [`crate::store::retention::erase_event_bodies`]).
pub async fn resend(
    client: &impl GenericClient,
    selection: &DeliveryFilter,
    actor: &str,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let params = FilterParams::new(selection);
    let rows = client
        .query(
            &format!(
                "WITH kept AS (
                     SELECT d.id FROM dispatcher.deliveries d
                     JOIN dispatcher.outbox o ON o.id = d.event_id
                     WHERE d.id IN (
                           SELECT id FROM dispatcher.deliveries
                           WHERE {FILTER_CONDITIONS}
                             AND partner IS NOT NULL
                             AND state IN ('delivered', 'rejected', 'dead', 'invalid', 'cancelled'))
                       AND o.event IS NOT NULL
                     FOR SHARE OF o
                 ),
                 resent AS (
                     UPDATE dispatcher.deliveries d
                     SET state = 'pending', due_at = now(), ended_at = NULL,
                         attempts_before_resend = attempt_count, answers_erased_at = NULL
                     FROM kept
                     WHERE d.id = kept.id
                       AND d.state IN ('delivered', 'rejected', 'dead', 'invalid', 'cancelled')
                     RETURNING d.id, d.event_id
                 ),
                 recorded AS (
                     INSERT INTO dispatcher.support_actions (delivery_id, event_id, action, actor)
                     SELECT id, event_id, 'resend', $8 FROM resent
                 )
                 SELECT id FROM resent"
            ),
            &params.with(&[&actor]),
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Removes the selected placeholders of events that reached no partner, so they can be
/// routed again, and records who asked; not when the event's body was erased (see
/// [`resend`]). Returns (placeholder id, event id) pairs.
pub async fn remove_placeholders(
    client: &impl GenericClient,
    selection: &DeliveryFilter,
    actor: &str,
) -> Result<Vec<(Uuid, i64)>, tokio_postgres::Error> {
    let params = FilterParams::new(selection);
    let rows = client
        .query(
            &format!(
                "WITH kept AS (
                     SELECT d.id FROM dispatcher.deliveries d
                     JOIN dispatcher.outbox o ON o.id = d.event_id
                     WHERE d.id IN (
                           SELECT id FROM dispatcher.deliveries
                           WHERE {FILTER_CONDITIONS} AND partner IS NULL)
                       AND o.event IS NOT NULL
                     FOR SHARE OF o
                 ),
                 removed AS (
                     DELETE FROM dispatcher.deliveries d
                     USING kept
                     WHERE d.id = kept.id
                     RETURNING d.id, d.event_id
                 ),
                 recorded AS (
                     INSERT INTO dispatcher.support_actions (delivery_id, event_id, action, actor)
                     SELECT id, event_id, 'resend', $8 FROM removed
                 )
                 SELECT id, event_id FROM removed"
            ),
            &params.with(&[&actor]),
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

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
            "WITH cancelled AS (
                 UPDATE dispatcher.deliveries
                 SET state = 'cancelled', due_at = NULL, claim_token = NULL, ended_at = now()
                 WHERE id = ANY($1)
                   AND state IN ('pending', 'rejected', 'dead', 'invalid', 'unrouted')
                 RETURNING id, event_id
             ),
             recorded AS (
                 INSERT INTO dispatcher.support_actions (delivery_id, event_id, action, actor)
                 SELECT id, event_id, 'cancel', $2 FROM cancelled
             )
             SELECT id FROM cancelled",
            &[&ids, &actor],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
