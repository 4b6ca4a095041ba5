//! The claim's plan: the diagnostic that shows it, and the statistics it is made from.

use std::time::Duration;

use deadpool_postgres::GenericClient;

use super::claim::{CLAIM_DUE, GENERIC_PLAN};

/// The diagnostic for the claim's plan: the generic plan [`claim_due`](super::claim_due) would make now,
/// with the same settings, one line per row of `EXPLAIN`, built from the very statement
/// the claimer runs. (A connection keeps the plan it made at its first claim until an
/// ANALYZE; the settings leave that plan no other shape.) It answers whether a claim walks
/// an index or the whole backlog (tests/it/overload.rs pins that; an operator can ask the
/// same of a live database). Public for that question only: nothing in the daemon calls
/// it.
pub async fn explain_claim_due(
    client: &mut impl GenericClient,
    limit: usize,
    lease: Duration,
) -> Result<Vec<String>, tokio_postgres::Error> {
    const NAME: &str = "dispatcher_claim_plan";
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // A prepared statement outlives its transaction: one left by an explain that was
    // interrupted on this connection is removed first.
    let left = client
        .query_opt(
            "SELECT 1 FROM pg_prepared_statements WHERE name = $1",
            &[&NAME],
        )
        .await?;
    if left.is_some() {
        client.batch_execute(&format!("DEALLOCATE {NAME}")).await?;
    }
    let explained = {
        let transaction = client.transaction().await?;
        transaction.batch_execute(GENERIC_PLAN).await?;
        transaction
            .batch_execute(&format!(
                "PREPARE {NAME}(int8, float8, uuid, text[], int8[]) AS {CLAIM_DUE}"
            ))
            .await?;
        // Typed numbers, formatted: no text of anyone's reaches the statement.
        transaction
            .query(
                &format!(
                    "EXPLAIN EXECUTE {NAME}({limit}, {lease}, NULL, '{{}}', '{{}}')",
                    lease = lease.as_secs_f64()
                ),
                &[],
            )
            .await
        // Rolled back: nothing was changed.
    };
    let deallocated = client.batch_execute(&format!("DEALLOCATE {NAME}")).await;
    let explained = explained?;
    deallocated?;
    Ok(explained.iter().map(|row| row.get(0)).collect())
}

/// Brings PostgreSQL's statistics of the deliveries up to date. A burst of events outruns
/// autovacuum, which looks once a minute. Before the claim kept one plan shape (see
/// `GENERIC_PLAN` in `claim.rs`), a claim planned on statistics from before the burst
/// sorted and hashed every unfinished delivery (0.3 s per claim at 30,000 unfinished instead of
/// 5 ms); now the ANALYZE makes each connection plan its claim again on the backlog as it
/// is, and keeps the daemon's other statements planned on it. ANALYZE reads a fixed-size
/// sample, so this costs the same at any size.
///
/// `SKIP_LOCKED`: while a VACUUM of the table runs (autovacuum's, anti-wraparound
/// included), or anything else holds a lock ANALYZE would wait for, it skips the table at
/// once (PostgreSQL says so in a WARNING) instead of waiting up to the statement timeout.
/// The next burst, or autovacuum's own ANALYZE, brings the statistics up to date.
pub async fn refresh_statistics(client: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute("ANALYZE (SKIP_LOCKED) dispatcher.deliveries")
        .await
}
