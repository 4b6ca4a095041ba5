//! The delivery's rules, free of I/O: what an answer means, when to try again, when to
//! leave a failing partner alone, which partners an event goes to, the request a
//! delivery makes, and its id.

pub mod breaker;
pub mod id;
pub mod outcome;
pub mod request;
pub mod retry;
pub mod routing;
pub mod state;

use uuid::Uuid;

use state::DeliveryState;

/// A delivery created by routing an outbox event.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: Uuid,
    pub event_id: i64,
    /// `None` for the placeholder of an event that reached no partner.
    pub partner: Option<String>,
    pub event_name: String,
    pub patient_id: Option<String>,
    pub state: DeliveryState,
    pub last_error: Option<String>,
}

/// A delivery this daemon holds under a lease, with what is needed to build its body.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: Uuid,
    pub claim_token: Uuid,
    pub event_id: i64,
    pub partner: String,
    pub event_name: String,
    /// Attempts made since the last resend by support.
    pub attempts_used: u32,
    /// The stored `event` JSON, exactly as the enrollment flow wrote it.
    pub event: String,
    /// The partner's own id for this patient, if an earlier 200 answer told us (R9).
    pub external_id: Option<String>,
    /// The W3C trace context the enrollment flow stored with the event (outbox
    /// `traceparent`), unchecked: the attempt's span continues it when it is valid.
    pub traceparent: Option<String>,
}
