//! `dispatcher.partner_circuits`: each partner's circuit breaker as last recorded. The
//! daemon writes its breakers' changes here and starts from them after a restart; support,
//! the API and the metrics read them.

use deadpool_postgres::GenericClient;

use crate::delivery::breaker::{CircuitChange, CircuitState, PartnerCircuit};

/// Every partner's recorded circuit, by partner name.
pub async fn recorded(
    client: &impl GenericClient,
) -> Result<Vec<PartnerCircuit>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT partner, state, consecutive_failures, opened_at, retry_at, updated_at
             FROM dispatcher.partner_circuits ORDER BY partner",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| PartnerCircuit {
            partner: row.get("partner"),
            state: CircuitState::from_stored(row.get("state")),
            consecutive_failures: row.get("consecutive_failures"),
            opened_at: row.get("opened_at"),
            retry_at: row.get("retry_at"),
            updated_at: row.get("updated_at"),
        })
        .collect())
}

/// Records the circuits' latest states, one statement for all of them.
pub async fn save(
    client: &impl GenericClient,
    changes: &[CircuitChange],
) -> Result<(), tokio_postgres::Error> {
    let mut partners = Vec::with_capacity(changes.len());
    let mut states = Vec::with_capacity(changes.len());
    let mut failures = Vec::with_capacity(changes.len());
    let mut opened = Vec::with_capacity(changes.len());
    let mut retry = Vec::with_capacity(changes.len());
    for change in changes {
        partners.push(change.partner.as_str());
        states.push(change.state.as_str());
        failures.push(i32::try_from(change.consecutive_failures).unwrap_or(i32::MAX));
        opened.push(change.opened_at);
        retry.push(change.retry_at);
    }
    client
        .execute(
            "INSERT INTO dispatcher.partner_circuits
                 (partner, state, consecutive_failures, opened_at, retry_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::timestamptz[], $5::timestamptz[])
             ON CONFLICT (partner) DO UPDATE
             SET state = excluded.state,
                 consecutive_failures = excluded.consecutive_failures,
                 opened_at = excluded.opened_at,
                 retry_at = excluded.retry_at,
                 updated_at = now()",
            &[&partners, &states, &failures, &opened, &retry],
        )
        .await
        .map(drop)
}
