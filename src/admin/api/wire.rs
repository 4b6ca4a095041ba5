//! The API's JSON: its own types, each made from the store's or the domain's plain one
//! (`From`), so that a change there cannot change the API or its OpenAPI document
//! unnoticed. Each keeps the name the OpenAPI document has always given it (`as = …`).
//! `dispatcher deliveries list|show --json` prints these too, so scripts read one shape.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::admin::state::DeliveryPage;
use crate::delivery::breaker::{CircuitState, PartnerCircuit};
use crate::delivery::state::DeliveryState;
use crate::store::support::{
    AttemptSummary, DeliveryDetail, DeliverySummary, ErasedBody, PartnerSummary, ResendReport,
    SupportAction,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = DeliveryState)]
pub(crate) enum DeliveryStateOut {
    Pending,
    /// Behind an earlier event of the same patient to this partner.
    Waiting,
    InFlight,
    Delivered,
    Rejected,
    Dead,
    Invalid,
    Cancelled,
    Unrouted,
}

impl From<DeliveryState> for DeliveryStateOut {
    fn from(state: DeliveryState) -> DeliveryStateOut {
        match state {
            DeliveryState::Pending => DeliveryStateOut::Pending,
            DeliveryState::Waiting => DeliveryStateOut::Waiting,
            DeliveryState::InFlight => DeliveryStateOut::InFlight,
            DeliveryState::Delivered => DeliveryStateOut::Delivered,
            DeliveryState::Rejected => DeliveryStateOut::Rejected,
            DeliveryState::Dead => DeliveryStateOut::Dead,
            DeliveryState::Invalid => DeliveryStateOut::Invalid,
            DeliveryState::Cancelled => DeliveryStateOut::Cancelled,
            DeliveryState::Unrouted => DeliveryStateOut::Unrouted,
        }
    }
}

/// One line of `dispatcher deliveries list`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeliverySummary)]
pub(crate) struct DeliveryOut {
    /// Also the `webhook-id` the partner receives.
    pub id: Uuid,
    pub event_id: i64,
    /// `null` for an event that reached no partner.
    pub partner: Option<String>,
    pub event_name: String,
    pub patient_id: Option<String>,
    pub state: DeliveryStateOut,
    /// Attempts ever made, over every resend.
    pub attempt_count: i32,
    /// Attempts since support last resent it (all of them if it never did): the count
    /// `last_error`'s "gave up after N attempts" is about.
    pub attempts_since_resend: i32,
    /// The HTTP status of the last answer, if one came.
    pub last_status: Option<i32>,
    /// Why the last attempt failed, with the partner's `errorMessage` when it gave one.
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl From<DeliverySummary> for DeliveryOut {
    fn from(delivery: DeliverySummary) -> DeliveryOut {
        DeliveryOut {
            id: delivery.id,
            event_id: delivery.event_id,
            partner: delivery.partner,
            event_name: delivery.event_name,
            patient_id: delivery.patient_id,
            state: delivery.state.into(),
            attempt_count: delivery.attempt_count,
            attempts_since_resend: delivery.attempts_since_resend,
            last_status: delivery.last_status,
            last_error: delivery.last_error,
            created_at: delivery.created_at,
            next_attempt_at: delivery.next_attempt_at,
        }
    }
}

/// Deliveries newest first, and where the pages beside it start.
#[derive(Serialize, ToSchema)]
#[schema(as = DeliveryPage)]
pub(crate) struct DeliveryPageOut {
    pub deliveries: Vec<DeliveryOut>,
    /// Pass as `after` for the next (older) page; absent on the last page.
    pub next_after: Option<Uuid>,
    /// Pass as `before` for the previous (newer) page; absent on the first page.
    pub previous_before: Option<Uuid>,
}

impl From<DeliveryPage> for DeliveryPageOut {
    fn from(page: DeliveryPage) -> DeliveryPageOut {
        DeliveryPageOut {
            deliveries: page.deliveries.into_iter().map(DeliveryOut::from).collect(),
            next_after: page.next_after,
            previous_before: page.previous_before,
        }
    }
}

/// One attempt as support sees it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AttemptSummary)]
pub(crate) struct AttemptOut {
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

impl From<AttemptSummary> for AttemptOut {
    fn from(attempt: AttemptSummary) -> AttemptOut {
        AttemptOut {
            number: attempt.number,
            started_at: attempt.started_at,
            duration_ms: attempt.duration_ms,
            http_status: attempt.http_status,
            error: attempt.error,
            response_body: attempt.response_body,
            answer_erased_at: attempt.answer_erased_at,
        }
    }
}

/// A resend or cancel, and who asked for it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = SupportAction)]
pub(crate) struct SupportActionOut {
    pub action: String,
    pub actor: String,
    pub at: DateTime<Utc>,
}

impl From<SupportAction> for SupportActionOut {
    fn from(action: SupportAction) -> SupportActionOut {
        SupportActionOut {
            action: action.action,
            actor: action.actor,
            at: action.at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeliveryDetail)]
pub(crate) struct DeliveryDetailOut {
    #[serde(flatten)]
    pub summary: DeliveryOut,
    /// When the event's body was erased (retention); it cannot be sent again after that.
    pub event_erased_at: Option<DateTime<Utc>>,
    /// When the partners' answers to this delivery were erased (retention).
    pub answers_erased_at: Option<DateTime<Utc>>,
    pub attempts: Vec<AttemptOut>,
    pub support_actions: Vec<SupportActionOut>,
}

impl From<DeliveryDetail> for DeliveryDetailOut {
    fn from(detail: DeliveryDetail) -> DeliveryDetailOut {
        DeliveryDetailOut {
            summary: detail.summary.into(),
            event_erased_at: detail.event_erased_at,
            answers_erased_at: detail.answers_erased_at,
            attempts: detail.attempts.into_iter().map(AttemptOut::from).collect(),
            support_actions: detail
                .support_actions
                .into_iter()
                .map(SupportActionOut::from)
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = CircuitState)]
pub(crate) enum CircuitStateOut {
    /// Deliveries go out as usual.
    Closed,
    /// Deliveries are held until `retry_at`.
    Open,
    /// One probe request is out; the rest are held until it is answered.
    HalfOpen,
}

impl From<CircuitState> for CircuitStateOut {
    fn from(state: CircuitState) -> CircuitStateOut {
        match state {
            CircuitState::Closed => CircuitStateOut::Closed,
            CircuitState::Open => CircuitStateOut::Open,
            CircuitState::HalfOpen => CircuitStateOut::HalfOpen,
        }
    }
}

/// A partner's circuit as last recorded, for support, the API and the metrics.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = PartnerCircuit)]
pub(crate) struct CircuitOut {
    pub partner: String,
    pub state: CircuitStateOut,
    /// Failed attempts in a row (no answer, or 5xx, 429, 408 and the like).
    pub consecutive_failures: i32,
    /// When the circuit opened; null while closed.
    pub opened_at: Option<DateTime<Utc>>,
    /// When one probe request may go out; null while closed.
    pub retry_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl From<PartnerCircuit> for CircuitOut {
    fn from(circuit: PartnerCircuit) -> CircuitOut {
        CircuitOut {
            partner: circuit.partner,
            state: circuit.state.into(),
            consecutive_failures: circuit.consecutive_failures,
            opened_at: circuit.opened_at,
            retry_at: circuit.retry_at,
            updated_at: circuit.updated_at,
        }
    }
}

/// One partner's deliveries at a glance, for the support page.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = PartnerSummary)]
pub(crate) struct PartnerOut {
    /// `null` gathers the events that reached no partner.
    pub partner: Option<String>,
    /// Ended delivered in the last 24 hours.
    pub delivered: i64,
    /// Ended rejected, dead, invalid or unrouted in the last 24 hours.
    pub failed: i64,
    /// Pending, waiting or in flight, however old.
    pub pending: i64,
    pub oldest_pending_since: Option<DateTime<Utc>>,
    /// The partner's circuit breaker as last recorded; null if it never failed.
    pub circuit: Option<CircuitOut>,
}

impl From<PartnerSummary> for PartnerOut {
    fn from(summary: PartnerSummary) -> PartnerOut {
        PartnerOut {
            partner: summary.partner,
            delivered: summary.delivered,
            failed: summary.failed,
            pending: summary.pending,
            oldest_pending_since: summary.oldest_pending_since,
            circuit: summary.circuit.map(CircuitOut::from),
        }
    }
}

/// What a resend touched.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ResendReport)]
pub(crate) struct ResendOut {
    /// Deliveries put back to `pending`.
    pub resent: Vec<Uuid>,
    /// Placeholders of events that reached no partner, removed so that each event is
    /// routed again with the current configuration.
    pub rerouted: Vec<Uuid>,
    /// Deliveries asked for by id that cannot be sent again: retention erased the event
    /// body.
    pub erased: Vec<ErasedBodyOut>,
}

impl From<ResendReport> for ResendOut {
    fn from(report: ResendReport) -> ResendOut {
        ResendOut {
            resent: report.resent,
            rerouted: report.rerouted,
            erased: report.erased.into_iter().map(ErasedBodyOut::from).collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ErasedBody)]
pub(crate) struct ErasedBodyOut {
    pub id: Uuid,
    pub erased_at: DateTime<Utc>,
}

impl From<ErasedBody> for ErasedBodyOut {
    fn from(erased: ErasedBody) -> ErasedBodyOut {
        ErasedBodyOut {
            id: erased.id,
            erased_at: erased.erased_at,
        }
    }
}
