//! Support's resend, shared by the CLI, the admin API and the support page.
//!
//! A resend puts ended deliveries back to `pending` with a fresh set of attempts, and
//! routes again the events that reached no partner (a partner may have been added for
//! their program since). Everything happens in one transaction and is recorded with who
//! asked, so repeating a resend touches nothing twice.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::delivery::state::DeliveryState;
use crate::store::notify as wakeup;
use crate::store::support::{self, DeliveryFilter};
use crate::store::{outbox, retention};

/// What a resend touched.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErasedBody {
    pub id: Uuid,
    pub erased_at: DateTime<Utc>,
}

impl ResendReport {
    pub fn touched(&self) -> usize {
        self.resent.len() + self.rerouted.len()
    }
}

/// Resends the selected deliveries that have ended.
pub async fn resend(
    client: &mut deadpool_postgres::Client,
    selection: &DeliveryFilter,
    actor: &str,
) -> Result<ResendReport, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    let resent = support::resend(&transaction, selection, actor).await?;
    let removed = support::remove_placeholders(&transaction, selection, actor).await?;
    // After the resend: one that waited for retention to erase a body sees it erased here.
    let erased = match &selection.ids {
        Some(ids) => retention::erased_bodies(&transaction, ids).await?,
        None => Vec::new(),
    };
    let event_ids: Vec<i64> = removed.iter().map(|(_, event_id)| *event_id).collect();
    if !event_ids.is_empty() {
        outbox::route_again(&transaction, &event_ids).await?;
    }
    if !resent.is_empty() {
        wakeup::notify_deliveries(&transaction).await?;
    }
    transaction.commit().await?;
    Ok(ResendReport {
        resent,
        rerouted: removed.into_iter().map(|(id, _)| id).collect(),
        erased: erased
            .into_iter()
            .map(|(id, erased_at)| ErasedBody { id, erased_at })
            .collect(),
    })
}

/// A bulk resend without a state means "everything that failed"; delivered or cancelled
/// deliveries are only resent when asked for by state or by id.
pub fn failed_unless_stated(mut filter: DeliveryFilter) -> DeliveryFilter {
    if filter.states.is_none() && filter.ids.is_none() {
        filter.states = Some(DeliveryState::FAILED.to_vec());
    }
    filter
}
