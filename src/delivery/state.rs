//! The states a delivery moves through, as people see them: `dispatcher.deliveries.state`,
//! but for `in_flight`, which is stored `pending` with a claim token since migration 0020
//! (so that the claim changes no indexed column; `store`'s `shown_state!` reads it back).
//!
//! A delivery behind an unfinished earlier event of the same patient to the same partner
//! starts `waiting` (per (partner, patient) order), and becomes `pending`, due at once, in
//! the transaction that ends the last earlier one.
//!
//! `pending` → (claimed) `in_flight` → `delivered` | `rejected` | `dead` | `invalid`, or back
//! to `pending` with a later `due_at` when an attempt failed and may be retried, or when
//! its lease ran out with no result recorded, or straight from `pending` to `dead` if its
//! event's body is gone. Support can move an ended delivery back to `pending` (resend) or
//! end one that waits or failed (`cancelled`): [`DeliveryState::can_resend`] and
//! [`DeliveryState::can_cancel`] say which, for the page and the store's SQL alike.

use std::fmt;
use std::str::FromStr;

/// What `waiting` means, in the words the page, the API's document, the CLI and the README
/// all use.
pub const WAITING: &str = "behind an earlier event of the same patient to this partner";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    /// Behind an earlier event of the same patient to this partner that has not ended:
    /// not due, not in the claim's path, pending once that one ends.
    Waiting,
    InFlight,
    Delivered,
    Rejected,
    Dead,
    Invalid,
    Cancelled,
    /// The event's support program has no partner: kept for support, never sent.
    Unrouted,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 9] = [
        DeliveryState::Pending,
        DeliveryState::Waiting,
        DeliveryState::InFlight,
        DeliveryState::Delivered,
        DeliveryState::Rejected,
        DeliveryState::Dead,
        DeliveryState::Invalid,
        DeliveryState::Cancelled,
        DeliveryState::Unrouted,
    ];

    /// Ended without reaching the partner, or never routed: what support looks at.
    pub const FAILED: [DeliveryState; 4] = [
        DeliveryState::Rejected,
        DeliveryState::Dead,
        DeliveryState::Invalid,
        DeliveryState::Unrouted,
    ];

    /// Support can send it again: it has ended (an unrouted event is routed again).
    pub const fn can_resend(self) -> bool {
        matches!(
            self,
            DeliveryState::Delivered
                | DeliveryState::Rejected
                | DeliveryState::Dead
                | DeliveryState::Invalid
                | DeliveryState::Cancelled
                | DeliveryState::Unrouted
        )
    }

    /// Support can end it for good: it is waiting, or failed. Not one in flight (its
    /// request is on the wire, and its answer would be lost) nor one that is delivered.
    pub const fn can_cancel(self) -> bool {
        matches!(
            self,
            DeliveryState::Pending
                | DeliveryState::Waiting
                | DeliveryState::Rejected
                | DeliveryState::Dead
                | DeliveryState::Invalid
                | DeliveryState::Unrouted
        )
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Waiting => "waiting",
            DeliveryState::InFlight => "in_flight",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Rejected => "rejected",
            DeliveryState::Dead => "dead",
            DeliveryState::Invalid => "invalid",
            DeliveryState::Cancelled => "cancelled",
            DeliveryState::Unrouted => "unrouted",
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown delivery state `{0}`: use pending, waiting, in_flight, delivered, rejected, dead, invalid, cancelled, unrouted or failed")]
pub struct UnknownState(String);

impl FromStr for DeliveryState {
    type Err = UnknownState;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        DeliveryState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| UnknownState(text.to_string()))
    }
}

/// States as support names them: one state, `failed` (rejected, dead, invalid or
/// unrouted), or `pending` (which includes waiting and in flight: every delivery that has
/// not ended).
pub fn parse_states(text: &str) -> Result<Vec<DeliveryState>, UnknownState> {
    Ok(match text {
        "failed" => DeliveryState::FAILED.to_vec(),
        "pending" => vec![
            DeliveryState::Pending,
            DeliveryState::Waiting,
            DeliveryState::InFlight,
        ],
        other => vec![other.parse()?],
    })
}
