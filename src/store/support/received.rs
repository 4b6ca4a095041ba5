//! What support needs to rebuild what a partner received for one delivery: its stored
//! event (or when retention erased it), when its last attempt was sent and the partner's
//! own patient id known at that moment, as the claim read them. Patient data: the
//! caller shows it only after an audited request, and never logs it.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::delivery::state::DeliveryState;

/// One delivery's stored request, as its attempts read it.
pub struct StoredRequest {
    /// `None` for an event that reached no partner.
    pub partner: Option<String>,
    pub event_name: String,
    /// As support knows it: `in_flight` while claimed.
    pub state: DeliveryState,
    /// The stored `event` JSON, as the claim reads it; `None` once erased.
    pub event: Option<String>,
    pub event_erased_at: Option<DateTime<Utc>>,
    /// When its latest attempt was sent (the body's `sendDate`); `None` before the first.
    pub sent_at: Option<DateTime<Utc>>,
    /// The partner's own id for the patient (R9) if it was known when that attempt was
    /// claimed: learned (first given, or changed to) before it, or some 200 of the
    /// partner's for this patient came before it. One first learned later was not in that
    /// body.
    pub external_id: Option<String>,
}

/// The stored request of delivery `id`, `None` if there is no such delivery.
pub async fn stored_request(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<StoredRequest>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            concat!(
                "SELECT d.partner, d.event_name, ",
                shown_state!("d"),
                " AS state, o.event::text AS event,
                    COALESCE(d.event_erased_at, o.event_erased_at) AS event_erased_at,
                    latest.started_at,
                    (SELECT known.external_id FROM dispatcher.partner_patients known
                     WHERE known.partner = d.partner AND known.patient_id = d.patient_id
                       AND (latest.started_at IS NULL
                            OR known.learned_at <= latest.started_at
                            OR EXISTS (
                                -- Archived ones too: an earlier event's 200 counts.
                                SELECT 1 FROM dispatcher.every_delivery other
                                -- Each delivery's attempts by its id (`every_attempt`'s
                                -- first part is not joined by id otherwise: the planner
                                -- would hash every delivery's first attempt).
                                CROSS JOIN LATERAL (
                                    SELECT 1 FROM dispatcher.every_attempt taught
                                    WHERE taught.delivery_id = other.id
                                      AND taught.http_status = 200
                                      AND taught.started_at < latest.started_at
                                    OFFSET 0
                                ) AS taught
                                WHERE other.partner = d.partner
                                  -- In the collation of `deliveries_by_patient`.
                                  AND other.patient_id COLLATE \"C\" = d.patient_id)))
                        AS external_id
             FROM dispatcher.every_delivery d
             LEFT JOIN dispatcher.outbox o ON o.id = d.event_id
             -- By `$1`, not `d.id`: known when planned, it finds the archive's one
             -- partition of the delivery instead of planning them all.
             LEFT JOIN LATERAL (
                 SELECT a.started_at FROM dispatcher.every_attempt a
                 WHERE a.delivery_id = $1 ORDER BY a.number DESC LIMIT 1
             ) latest ON true
             WHERE d.id = $1"
            ),
            &[&id],
        )
        .await?;
    Ok(row.map(|row| StoredRequest {
        partner: row.get("partner"),
        event_name: row.get("event_name"),
        // The CHECK constraint keeps the column to known states.
        state: row
            .get::<_, &str>("state")
            .parse()
            .unwrap_or(DeliveryState::Invalid),
        event: row.get("event"),
        event_erased_at: row.get("event_erased_at"),
        sent_at: row.get("started_at"),
        external_id: row.get("external_id"),
    }))
}
