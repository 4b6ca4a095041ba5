//! Support's resend, shared by the CLI, the admin API and the support page, and the one
//! place that words what it did.
//!
//! A resend puts ended deliveries back to `pending` with a fresh set of attempts, and
//! routes again the events that reached no partner (a partner may have been added for
//! their program since). Everything happens in one transaction and is recorded with who
//! asked, so repeating a resend touches nothing twice.

use std::fmt;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::selection::{Params, CONDITIONS};
use super::{Selection, SupportError};
use crate::store::notify;
use crate::store::{outbox, queue};

/// The states [`put_back`] sends again: those support can resend
/// ([`crate::delivery::state::DeliveryState::can_resend`]; a test holds the two together)
/// but `unrouted`, whose placeholders are removed and routed again instead.
pub(super) const RESENDABLE: &str = "('delivered', 'rejected', 'dead', 'invalid', 'cancelled')";

/// What a resend touched.
#[derive(Debug, Default)]
pub struct ResendReport {
    /// Deliveries put back to `pending`.
    pub resent: Vec<Uuid>,
    /// Placeholders of events that reached no partner, removed so that each event is
    /// routed again with the current configuration.
    pub rerouted: Vec<Uuid>,
    /// Deliveries asked for by id that cannot be sent again: retention erased the event
    /// body.
    pub erased: Vec<ErasedBody>,
}

#[derive(Debug)]
pub struct ErasedBody {
    pub id: Uuid,
    pub erased_at: DateTime<Utc>,
}

impl ResendReport {
    pub fn touched(&self) -> usize {
        self.resent.len() + self.rerouted.len()
    }

    /// What became of the delivery `id` (an erased one reads as untouched here: see
    /// [`ResendReport::erased`]).
    pub fn of(&self, id: Uuid) -> Resent {
        if self.resent.contains(&id) {
            Resent::PendingAgain
        } else if self.rerouted.contains(&id) {
            Resent::RoutedAgain
        } else {
            Resent::Untouched
        }
    }

    /// Why deliveries asked for by id were not resent, a line each (those nobody can
    /// explain share one); `None` when every one was.
    pub fn refusals(&self, asked: &[Uuid]) -> Option<String> {
        let mut refusals: Vec<String> = self.erased.iter().map(ToString::to_string).collect();
        let untouched: Vec<String> = asked
            .iter()
            .filter(|id| {
                !self.resent.contains(id)
                    && !self.rerouted.contains(id)
                    && !self.erased.iter().any(|erased| erased.id == **id)
            })
            .map(Uuid::to_string)
            .collect();
        if !untouched.is_empty() {
            refusals.push(format!("{}: {}", Resent::Untouched, untouched.join(", ")));
        }
        (!refusals.is_empty()).then(|| refusals.join("\n"))
    }
}

/// What happens now to each delivery touched, a line each.
impl fmt::Display for ResendReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for id in &self.resent {
            writeln!(f, "{id}: {}", Resent::PendingAgain)?;
        }
        for id in &self.rerouted {
            writeln!(f, "{id}: {}", Resent::RoutedAgain)?;
        }
        Ok(())
    }
}

/// What a resend did with one delivery, in the words the CLI, the API and the support
/// page all use (an erased body has its own, dated: [`ErasedBody`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resent {
    PendingAgain,
    RoutedAgain,
    /// Unknown, or not ended yet: nothing to resend.
    Untouched,
}

impl fmt::Display for Resent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resent::PendingAgain => "pending again",
            Resent::RoutedAgain => "its event will be routed again",
            Resent::Untouched => "not resent (unknown, or still pending or in flight)",
        })
    }
}

impl fmt::Display for ErasedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: the event body was erased on {}; it cannot be sent again",
            self.id,
            self.erased_at.format("%Y-%m-%d")
        )
    }
}

/// Resends the selected deliveries that have ended.
pub async fn resend(
    client: &mut deadpool_postgres::Client,
    selection: &Selection,
    actor: &str,
) -> Result<ResendReport, SupportError> {
    let transaction = client.transaction().await?;
    let report = resend_in(&transaction, selection, actor).await?;
    transaction.commit().await?;
    Ok(report)
}

/// [`resend`] inside the caller's transaction, which commits it (the API's idempotency
/// key is written in the same one: `store::idempotency`).
pub(in crate::store) async fn resend_in(
    transaction: &deadpool_postgres::Transaction<'_>,
    selection: &Selection,
    actor: &str,
) -> Result<ResendReport, SupportError> {
    let params = Params::new(selection)?;
    let ended = resendable(transaction, &params).await?;
    queue::lock_patients(transaction, &ended).await?;
    let resent = put_back(transaction, &ended, actor).await?;
    // A resent earlier event holds its patient's later ones back again, as it is itself
    // held behind an earlier one still unfinished (see queue::settle).
    queue::settle(transaction, &resent).await?;
    let removed = remove_placeholders(transaction, &params, actor).await?;
    // After the resend: one that waited for retention to erase a body sees it erased here.
    let erased = match &selection.ids {
        Some(ids) => erased_bodies(transaction, ids).await?,
        None => Vec::new(),
    };
    let event_ids: Vec<i64> = removed.iter().map(|(_, event_id)| *event_id).collect();
    if !event_ids.is_empty() {
        outbox::route_again(transaction, &event_ids).await?;
    }
    if !resent.is_empty() {
        notify::notify_deliveries(transaction).await?;
    }
    Ok(ResendReport {
        resent,
        rerouted: removed.into_iter().map(|(id, _)| id).collect(),
        erased: erased
            .into_iter()
            .map(|(id, erased_at)| ErasedBody { id, erased_at })
            .collect(),
    })
}

/// The selected deliveries to partners that have ended: what [`put_back`] may resend,
/// found first so that their (partner, patient)s are locked before any is touched.
async fn resendable(
    client: &impl GenericClient,
    params: &Params<'_>,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT id FROM dispatcher.every_delivery
                 WHERE NOT archived AND {CONDITIONS}
                   AND partner IS NOT NULL AND state IN {RESENDABLE}"
            ),
            &params.with(&[]),
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Puts the ended deliveries `ended` (of the selection, locked) back to `pending` now, with
/// a fresh set of attempts, and records who asked; their history stays. The last attempt
/// is marked `resent_after` (the round it closed was not retried: the chart and the
/// timeline read it), and the last status and error are the new round's, none yet.
/// Returns the ids moved.
///
/// A delivery whose event body was erased is left alone. The event row is locked
/// (`FOR SHARE`) so that retention cannot erase the body between this check and the
/// commit: retention skips rows locked so, checks the deliveries again once it holds the
/// row (seeing a resend that committed before), and a resend that waited for retention's
/// lock sees the body gone (see [`crate::store::retention::archive::archive_due_events`]).
async fn put_back(
    client: &impl GenericClient,
    ended: &[Uuid],
    actor: &str,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "WITH kept AS (
                     SELECT d.id FROM dispatcher.deliveries d
                     JOIN dispatcher.outbox o ON o.id = d.event_id
                     WHERE d.id = ANY($1)
                       AND d.state IN {RESENDABLE}
                       AND o.event IS NOT NULL
                     FOR SHARE OF o
                 ),
                 resent AS (
                     UPDATE dispatcher.deliveries d
                     SET state = 'pending', due_at = now(), ended_at = NULL,
                         attempts_before_resend = attempt_count, answers_erased_at = NULL,
                         last_status = NULL, last_error = NULL,
                         -- The first attempt, when it was the last, is kept in the row.
                         first_attempt_resent_after = CASE
                             WHEN d.attempt_count = 1 AND d.first_attempt_started_at IS NOT NULL
                             THEN true ELSE d.first_attempt_resent_after END
                     FROM kept
                     WHERE d.id = kept.id
                       AND d.state IN {RESENDABLE}
                     RETURNING d.id, d.event_id, d.attempt_count
                 ),
                 boundary AS (
                     UPDATE dispatcher.attempts a SET resent_after = true
                     FROM resent
                     WHERE a.delivery_id = resent.id AND a.number = resent.attempt_count
                 ),
                 recorded AS (
                     INSERT INTO dispatcher.support_actions (delivery_id, event_id, action, actor)
                     SELECT id, event_id, 'resend', $2 FROM resent
                 )
                 SELECT id FROM resent"
            ),
            &[&ended, &actor],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Removes the selected placeholders of events that reached no partner, so they can be
/// routed again, and records who asked; not when the event's body was erased (see
/// [`put_back`]). Returns (placeholder id, event id) pairs.
async fn remove_placeholders(
    client: &impl GenericClient,
    params: &Params<'_>,
    actor: &str,
) -> Result<Vec<(Uuid, i64)>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "WITH kept AS (
                     SELECT d.id FROM dispatcher.deliveries d
                     JOIN dispatcher.outbox o ON o.id = d.event_id
                     WHERE d.id IN (
                           SELECT id FROM dispatcher.every_delivery
                           WHERE NOT archived AND {CONDITIONS} AND partner IS NULL)
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
                     SELECT id, event_id, 'resend', $9 FROM removed
                 )
                 SELECT id, event_id FROM removed"
            ),
            &params.with(&[&actor]),
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| (row.get("id"), row.get("event_id")))
        .collect())
}

/// Of these deliveries, the ones whose event body was erased, with when.
async fn erased_bodies(
    client: &impl GenericClient,
    delivery_ids: &[Uuid],
) -> Result<Vec<(Uuid, DateTime<Utc>)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT d.id, COALESCE(d.event_erased_at, o.event_erased_at) AS event_erased_at
             FROM dispatcher.every_delivery d
             LEFT JOIN dispatcher.outbox o ON o.id = d.event_id
             WHERE d.id = ANY($1)
               AND COALESCE(d.event_erased_at, o.event_erased_at) IS NOT NULL",
            &[&delivery_ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| (row.get("id"), row.get("event_erased_at")))
        .collect())
}
