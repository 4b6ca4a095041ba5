//! One attempt at one delivery, from the stored event to its resolution: prepare the
//! request (partner, event body, URL), check it may still be sent, send it, resolve the
//! outcome. A panic in between is recorded as a failed attempt (see
//! [`Dispatcher::internal_failure`]), never lost to an expired lease.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::Config;
use crate::contract::payload::InvalidEvent;
use crate::delivery::outcome::{AttemptRecord, Outcome, Resolution};
use crate::delivery::request::{self, Prepared};
use crate::delivery::state::DeliveryState;
use crate::delivery::ClaimedDelivery;
use crate::observe::metrics::DeliveryLabels;
use crate::observe::traces;

use super::recorder::Finished;
use super::slots::SendPermit;
use super::Dispatcher;

impl Dispatcher {
    /// Starts the attempt at a delivery this daemon claimed (by a claim, or as the router
    /// inserted it), as a task of `attempts`, which sends its resolution to the recorder.
    /// `capacity` is held until that resolution is written; `send_permit` lets it go out
    /// now (without one it is handed back unattempted).
    pub(super) fn start_attempt(
        self: &Arc<Self>,
        attempts: &mut JoinSet<()>,
        results: &mpsc::Sender<Finished>,
        delivery: ClaimedDelivery,
        capacity: OwnedSemaphorePermit,
        send_permit: Option<SendPermit>,
        claimed_at: Instant,
    ) {
        let dispatcher = self.clone();
        let results = results.clone();
        attempts.spawn(async move {
            let labels = DeliveryLabels::of(&delivery);
            let resolution = dispatcher
                .attempt_delivery(&delivery, &labels, claimed_at, send_permit)
                .await;
            let _ = results
                .send(Finished {
                    resolution,
                    labels,
                    _capacity: capacity,
                })
                .await;
        });
    }

    /// One attempt, in its `attempt` span, logged and counted once resolved. Its numbers
    /// are recorded as i64: an exported span (`[telemetry]`) keeps those as integers.
    async fn attempt_delivery(
        &self,
        delivery: &ClaimedDelivery,
        labels: &DeliveryLabels,
        claimed_at: Instant,
        mut permit: Option<SendPermit>,
    ) -> Resolution {
        let span = tracing::info_span!(
            "attempt",
            delivery_id = %delivery.id,
            event_id = delivery.event_id,
            partner = %delivery.partner,
            attempt = i64::from(delivery.attempts_used) + 1,
            outcome = tracing::field::Empty,
            http_status = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        traces::continue_trace(&span, delivery.traceparent.as_deref());
        let (started_at, started) = (Utc::now(), Instant::now());
        // Unwind safety: after a panic only `permit` is used again, and settling it is
        // what the panic path is for.
        let attempt = AssertUnwindSafe(self.try_attempt(delivery, claimed_at, &mut permit))
            .catch_unwind()
            .instrument(span.clone())
            .await;
        let resolution = attempt.unwrap_or_else(|_| {
            span.in_scope(|| {
                self.internal_failure(delivery, permit.take(), started_at, started.elapsed())
            })
        });
        span.record("outcome", resolution.state.as_str());
        if let Some(attempt) = &resolution.attempt {
            let duration_ms = i64::try_from(attempt.duration.as_millis()).unwrap_or(i64::MAX);
            span.record("duration_ms", duration_ms);
            if let Some(status) = attempt.http_status {
                span.record("http_status", i64::from(status));
            }
            self.metrics.attempt_made(labels, attempt);
        }
        // One line per attempt, carrying the span's fields: the audit trail of what was sent.
        span.in_scope(|| match resolution.state {
            DeliveryState::Delivered => tracing::info!("delivered"),
            DeliveryState::Pending if resolution.attempt.is_some() => {
                tracing::info!("attempt failed; will retry")
            }
            DeliveryState::Pending => tracing::debug!("handed back"),
            _ => tracing::warn!("delivery ended without success"),
        });
        resolution
    }

    /// `permit` is taken (and its breaker admission settled) once the partner has
    /// answered or the request failed; while it is still there, nothing was settled.
    async fn try_attempt(
        &self,
        delivery: &ClaimedDelivery,
        claimed_at: Instant,
        permit: &mut Option<SendPermit>,
    ) -> Resolution {
        let config = self.live.snapshot();
        let request = match prepare(&config, delivery) {
            Ok(request) => request,
            Err(unsendable) => return unsendable.resolution(delivery, &config),
        };
        // No slot or admission after all (a reload shrank the slots, the circuit just
        // opened), or too late to send: the claim goes back unattempted.
        if permit.is_none() || !self.may_still_send(&config, claimed_at) {
            return Resolution::hand_back(delivery);
        }
        // Where the tests make an attempt panic (`--features failpoints`, FAILPOINTS=attempt=panic).
        #[cfg(feature = "failpoints")]
        fail::fail_point!("attempt");

        let Some((outcome, attempt)) = self.send(&config, delivery, &request).await else {
            return Resolution::hand_back(delivery);
        };
        if let Some(permit) = permit.take() {
            permit.admission.settle(&outcome, &request.partner.circuit);
        }
        Resolution::after_attempt(delivery, &config.retry, outcome, attempt)
    }

    /// Sending this late could outlive the lease and race another daemon's claim.
    fn may_still_send(&self, config: &Config, claimed_at: Instant) -> bool {
        !self.shutdown.is_stopping() && claimed_at.elapsed() < config.dispatch.latest_send()
    }

    /// Posts the request; what came of it and the attempt to record. `None` when shutdown
    /// abandoned it on the wire: the claim is handed back.
    async fn send(
        &self,
        config: &Arc<Config>,
        delivery: &ClaimedDelivery,
        request: &Prepared<'_>,
    ) -> Option<(Outcome, AttemptRecord)> {
        let sent_at = Utc::now();
        let body = request.event.to_body(sent_at);
        let started = Instant::now();
        let webhook_id = delivery.id.to_string();
        let sender = self.sender.for_config(config);
        // Within the attempt's span: the partner learns the attempt's trace context.
        let trace = traces::trace_headers(&tracing::Span::current());
        let post = sender.post(
            request.partner,
            request.url,
            &webhook_id,
            body,
            sent_at,
            trace.as_ref(),
        );
        let answer = tokio::select! {
            answer = post => answer,
            () = self.shutdown.abandoning() => return None,
        };
        let duration = started.elapsed();
        Some(match answer {
            Ok(answer) => (
                Outcome::of_answer(&answer),
                AttemptRecord::answered(sent_at, duration, &answer),
            ),
            Err(error) => (
                Outcome::of_transport_error(&error),
                AttemptRecord::unanswered(sent_at, duration, &error),
            ),
        })
    }

    /// A panic in an attempt is a bug of ours, yet the request may have gone out: it costs
    /// the delivery an attempt (error kind `internal`) and counts against the partner's
    /// circuit like any failure. So a bug that hits every attempt ends deliveries `dead`
    /// and holds the partner, visibly, instead of losing them to expired leases.
    fn internal_failure(
        &self,
        delivery: &ClaimedDelivery,
        permit: Option<SendPermit>,
        started_at: DateTime<Utc>,
        duration: Duration,
    ) -> Resolution {
        tracing::error!("internal error in the attempt (a panic); recorded as a failed attempt");
        let config = self.live.snapshot();
        let outcome = Outcome::Failed {
            reason: "internal error in the dispatcher (see its log)".to_string(),
            retry_after: None,
        };
        if let (Some(permit), Some(partner)) = (permit, config.partner(&delivery.partner)) {
            permit.admission.settle(&outcome, &partner.circuit);
        }
        let attempt = AttemptRecord::internal(started_at, duration);
        Resolution::after_attempt(delivery, &config.retry, outcome, attempt)
    }
}

/// Why a claimed delivery cannot be sent.
enum Unsendable {
    /// Removed from dispatcher.toml while deliveries were pending.
    PartnerNotConfigured,
    /// The stored event breaks the contract.
    Invalid(InvalidEvent),
}

impl Unsendable {
    /// How the claim ends unsent: postponed while its partner is not configured (kept
    /// until ops restore the partner or support cancels them), invalid for good when its
    /// event breaks the contract.
    fn resolution(self, delivery: &ClaimedDelivery, config: &Config) -> Resolution {
        match self {
            Unsendable::PartnerNotConfigured => Resolution::postpone(
                delivery,
                config.retry.max_delay,
                format!("partner `{}` is not in the configuration", delivery.partner),
            ),
            Unsendable::Invalid(reason) => Resolution::invalid(delivery, reason.0),
        }
    }
}

/// The request for `delivery`: its partner, its event checked against the contract (with
/// the partner's patient id, once known), and the partner's URL for the event's kind.
fn prepare<'c>(config: &'c Config, delivery: &ClaimedDelivery) -> Result<Prepared<'c>, Unsendable> {
    let partner = config
        .partner(&delivery.partner)
        .ok_or(Unsendable::PartnerNotConfigured)?;
    request::prepare(
        partner,
        &delivery.event_name,
        &delivery.event,
        delivery.external_id.as_deref(),
    )
    .map_err(Unsendable::Invalid)
}
