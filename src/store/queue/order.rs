//! Per (partner, patient) order, kept in the state instead of checked at every claim: a
//! delivery behind an unfinished earlier event of the same patient to the same partner is
//! `waiting`, outside `deliveries_pending` and so outside the claim's path, and becomes
//! `pending` in the transaction that ends the last earlier one.
//!
//! Every transaction that makes a delivery unfinished (routing, support's resend) or ends
//! one (the record of a final result, the rescue that gives up, support's cancel) does the
//! same three steps, in this order:
//! 1. [`lock_patients`]: locks every unfinished delivery of the (partner, patient)s it
//!    touches, in id order, so two such transactions on one patient run one after the
//!    other, and never deadlock;
//! 2. its own change;
//! 3. [`settle`]: in a statement that starts after the locks were granted, so it sees what
//!    the transaction before it committed, makes `waiting` exactly the pending deliveries
//!    behind an unfinished earlier one and `pending` the first waiting one that has none.
//!
//! Routing skips the steps for a new delivery whose patient has nothing else unfinished
//! with its partner in the insert's view (see `insert` in `mod.rs`): they would lock only
//! the new row, which no other transaction sees yet, and change nothing. The record skips
//! step 3 for an ended delivery whose write, made under the locks, saw nothing else
//! unfinished of its patient (see `record.rs`).
//!
//! Why a lock: without it, a router could make an event wait behind one that a recorder
//! is ending at that moment, each not seeing the other's change, and the event would wait
//! for ever; two recorders ending the two unfinished deliveries ahead of a waiting one
//! could each see the other's as unfinished. The claim itself (a token on a `pending` row)
//! changes nothing here and takes no such lock (it skips locked rows). The claim still
//! checks order (its `NOT EXISTS`), as before: the one case the locks cannot cover is a
//! (partner, patient) with nothing unfinished to lock, where a resend and the routing of
//! a later event meet; then both end `pending`, and the claim holds the later one back
//! until the resent one ends, exactly as it held every waiting delivery before.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

/// `patients`, the (partner, patient)s of the deliveries whose ids are the statement's
/// parameter `$ids` (found by primary key), and `unfinished`, each one's unfinished
/// deliveries (partner, patient_id, id, state, event_id; a claimed one's state
/// `in_flight`), read on the order's two indexes,
/// a lookup per patient (`OFFSET 0`), never a partner's whole queue: the look the lock and
/// `settle` share.
macro_rules! unfinished_of_patients {
    ($ids:literal) => {
        concat!(
            "patients AS (
                 SELECT DISTINCT partner, patient_id FROM (
                     SELECT partner, patient_id FROM dispatcher.deliveries
                     WHERE id = ANY(",
            $ids,
            ")
                     -- By id alone: with `patient_id IS NOT NULL` beside it, a generic
                     -- plan made while the table held a few rows read the patient index
                     -- whole instead, every delivery kept, at each call.
                     OFFSET 0
                 ) AS given
                 WHERE partner IS NOT NULL AND patient_id IS NOT NULL
             ),
             unfinished AS (
                 SELECT p.partner, p.patient_id, u.id, u.state, u.event_id
                 FROM patients p CROSS JOIN LATERAL (
                     -- A claimed one is in flight (a token on a `pending` row, migration
                     -- 0020): it finishes, whatever comes before it, so `settle` never
                     -- makes it wait.
                     (SELECT d.id, ",
            shown_state!("d"),
            " AS state, d.event_id
                      FROM dispatcher.deliveries d
                      WHERE d.partner = p.partner AND d.patient_id = p.patient_id
                        AND d.state IN ('pending', 'in_flight')
                      OFFSET 0)
                     UNION ALL
                     (SELECT d.id, d.state, d.event_id FROM dispatcher.deliveries d
                      WHERE d.partner = p.partner AND d.patient_id = p.patient_id
                        AND d.state = 'waiting'
                      OFFSET 0)
                 ) AS u
             )"
        )
    };
}

/// Locks the deliveries `ids` and every unfinished delivery of their (partner, patient)s,
/// in id order, until the transaction ends. `FOR NO KEY UPDATE`: the claim's
/// `FOR UPDATE SKIP LOCKED` passes them by meanwhile.
pub(crate) async fn lock_patients(
    client: &impl GenericClient,
    ids: &[Uuid],
) -> Result<(), tokio_postgres::Error> {
    lock(client, ids, ids).await
}

/// Locks the deliveries `rows`, and every unfinished delivery of the (partner, patient)s of
/// the deliveries `patients_of`, in id order: the one order every transaction here takes
/// its locks in, so none waits for another that waits for it.
pub(crate) async fn lock(
    client: &impl GenericClient,
    rows: &[Uuid],
    patients_of: &[Uuid],
) -> Result<(), tokio_postgres::Error> {
    if rows.is_empty() && patients_of.is_empty() {
        return Ok(());
    }
    let statement = client
        .prepare_cached(concat!(
            "WITH ",
            unfinished_of_patients!("$2"),
            ",
             -- The rows to lock found by id: joined, the statement's generic plan, made
             -- while the table was small, read every delivery (and every unfinished one)
             -- at each call.
             targets AS (
                 SELECT unnest($1::uuid[]) AS id
                 UNION
                 SELECT id FROM unfinished
             )
             SELECT d.id FROM dispatcher.deliveries d
             WHERE d.id = ANY(ARRAY(SELECT targets.id FROM targets))
             ORDER BY d.id
             FOR NO KEY UPDATE OF d"
        ))
        .await?;
    client.execute(&statement, &[&rows, &patients_of]).await?;
    Ok(())
}

/// Puts the (partner, patient)s of the deliveries `ids` in order, after
/// [`lock_patients`] in the same transaction: a pending delivery with an unfinished earlier
/// one waits, and the first waiting one with none is pending again, due when it was due
/// (a routed or resent one at once; one whose retry was ahead keeps its time). Only those
/// can change: a later waiting one still has the first one ahead of it. Returns the ids
/// that became pending.
pub(crate) async fn settle(
    client: &impl GenericClient,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let statement = client
        .prepare_cached(concat!(
            "WITH ",
            unfinished_of_patients!("$1"),
            ",
             -- Numbered in event order: whether any unfinished one is ahead of each, and
             -- which waiting one comes first.
             numbered AS (
                 SELECT id, state,
                        row_number() OVER (PARTITION BY partner, patient_id
                                           ORDER BY event_id) > 1 AS behind,
                        row_number() OVER (PARTITION BY partner, patient_id, state
                                           ORDER BY event_id) = 1 AS first_of_its_state
                 FROM unfinished
             ),
             moved AS (
                 SELECT id FROM numbered
                 WHERE (state = 'pending' AND behind)
                    OR (state = 'waiting' AND first_of_its_state AND NOT behind)
             )
             -- Each moves to the other state: pending waits, waiting is pending again.
             -- Found by id (a join left the generic plan free to read the whole table);
             -- their states cannot change meanwhile, under `lock_patients`.
             UPDATE dispatcher.deliveries d
             SET state = CASE d.state WHEN 'pending' THEN 'waiting' ELSE 'pending' END,
                 due_at = COALESCE(d.due_at, now())
             WHERE d.id = ANY(ARRAY(SELECT moved.id FROM moved))
             RETURNING d.id, d.state"
        ))
        .await?;
    let rows = client.query(&statement, &[&ids]).await?;
    Ok(rows
        .iter()
        .filter(|row| row.get::<_, &str>("state") == "pending")
        .map(|row| row.get("id"))
        .collect())
}

/// Makes pending up to `limit` waiting deliveries that have nothing unfinished ahead of
/// them, and returns their ids. Every transaction here that ends a delivery releases what
/// waits behind it, so only a daemon from before migration 0012 (running beside this one
/// through an upgrade: it ends deliveries and knows nothing of `waiting`) or a hand edit
/// can leave one so; the rescuer looks now and then (see `daemon/rescuer.rs`) so that
/// none waits for ever. It reads every waiting delivery's first index entries, so it is
/// not for the claim's path. What is ahead of each is looked up on the order's two
/// indexes (`deliveries_unfinished_by_patient`, `deliveries_waiting`), one `NOT EXISTS`
/// each, named as their predicates: no index holds all three states, and one look for
/// either was planned as a scan of every unfinished delivery, a held partner's backlog
/// included.
pub async fn release_stranded(
    client: &mut impl GenericClient,
    limit: usize,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let transaction = client.transaction().await?;
    let found = transaction
        .prepare_cached(
            "SELECT w.id FROM dispatcher.deliveries w
             WHERE w.state = 'waiting'
               AND NOT EXISTS (
                   SELECT 1 FROM dispatcher.deliveries earlier
                   WHERE earlier.partner = w.partner
                     AND earlier.patient_id = w.patient_id
                     AND earlier.event_id < w.event_id
                     AND earlier.state IN ('pending', 'in_flight'))
               AND NOT EXISTS (
                   SELECT 1 FROM dispatcher.deliveries earlier
                   WHERE earlier.partner = w.partner
                     AND earlier.patient_id = w.patient_id
                     AND earlier.event_id < w.event_id
                     AND earlier.state = 'waiting')
             LIMIT $1",
        )
        .await?;
    let stranded: Vec<Uuid> = transaction
        .query(&found, &[&limit])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if stranded.is_empty() {
        return Ok(Vec::new());
    }
    // Locked, then settled, as any change to a patient's order is: a delivery ended or
    // routed since the look above is seen by `settle`.
    lock_patients(&transaction, &stranded).await?;
    let released = settle(&transaction, &stranded).await?;
    transaction.commit().await?;
    Ok(released)
}
