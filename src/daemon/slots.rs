//! Per-partner `max_in_flight` slots, and the [`SendPermit`] that lets one claimed
//! delivery go out now: a slot and its circuit breaker's admission, taken as the delivery
//! is claimed, so no claimed delivery waits for its partner. The router takes them, with
//! capacity, before it offers to claim what it routes ([`Reservations`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::config::Partner;
use crate::delivery::breaker::{Admission, Breakers};

/// Every partner's `max_in_flight` semaphore, by partner name.
#[derive(Default)]
pub(super) struct PartnerSlots {
    by_partner: Mutex<HashMap<String, Limit>>,
}

/// A partner's `max_in_flight` permits. A reload that changes the limit gets a new
/// semaphore; requests holding the old one finish under it.
struct Limit {
    limit: usize,
    slots: Arc<Semaphore>,
}

impl PartnerSlots {
    /// The partner's `max_in_flight` semaphore, new if a reload changed the limit.
    pub(super) fn of(&self, partner: &Partner) -> Arc<Semaphore> {
        let mut all = self
            .by_partner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match all.get(&partner.name) {
            Some(current) if current.limit == partner.max_in_flight => current.slots.clone(),
            _ => {
                let slots = Arc::new(Semaphore::new(partner.max_in_flight));
                all.insert(
                    partner.name.clone(),
                    Limit {
                        limit: partner.max_in_flight,
                        slots: slots.clone(),
                    },
                );
                slots
            }
        }
    }

    /// A slot and the breaker's admission for a delivery just claimed; `None` when the
    /// partner cannot send it after all (a reload shrank its slots, or its circuit just
    /// opened).
    pub(super) fn send_permit(
        &self,
        partner: &Partner,
        breakers: &Arc<Breakers>,
    ) -> Option<SendPermit> {
        let slot = self.of(partner).try_acquire_owned().ok()?;
        let admission = breakers.admit(&partner.name, Utc::now())?;
        Some(SendPermit {
            _slot: slot,
            admission,
        })
    }
}

/// What lets a claimed delivery go out now: one of its partner's `max_in_flight` slots and
/// its circuit breaker's admission. Dropped unused, both are given back.
pub(super) struct SendPermit {
    _slot: OwnedSemaphorePermit,
    pub(super) admission: Admission,
}

/// What the router holds for each delivery it offers to claim as it routes it
/// (`store::queue::SendNow`): capacity and a send permit, taken before the routing
/// statement so that what it claims goes out at once. Dropped, whatever was not claimed
/// is given back.
#[derive(Default)]
pub(super) struct Reservations {
    by_delivery: HashMap<Uuid, (OwnedSemaphorePermit, SendPermit)>,
}

impl Reservations {
    /// Reserves for `delivery` one of `capacity`'s permits and a send permit to
    /// `partner`; false, with nothing kept, when either is not to be had now.
    pub(super) fn reserve(
        &mut self,
        delivery: Uuid,
        capacity: &Arc<Semaphore>,
        slots: &PartnerSlots,
        partner: &Partner,
        breakers: &Arc<Breakers>,
    ) -> bool {
        let Ok(capacity) = capacity.clone().try_acquire_owned() else {
            return false;
        };
        let Some(send) = slots.send_permit(partner, breakers) else {
            return false;
        };
        self.by_delivery.insert(delivery, (capacity, send));
        true
    }

    /// What was reserved for `delivery`, to send it with.
    pub(super) fn take(&mut self, delivery: Uuid) -> Option<(OwnedSemaphorePermit, SendPermit)> {
        self.by_delivery.remove(&delivery)
    }
}
