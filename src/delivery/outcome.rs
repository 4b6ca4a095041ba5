//! What an attempt's answer means for the delivery.
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx | delivered; `data.externalId` is remembered for the patient (R10), unless over 255 characters (R13) |
//! | 400, 413, 415, 422 | rejected: the partner says the request itself is wrong, so the same bytes would fail again; support looks (R11) |
//! | 408, 429, 5xx | retried (429 and 503 honour `Retry-After`) |
//! | 3xx | retried: redirects are never followed |
//! | other 4xx (401, 403, 404, 409, …) | retried: usually the partner's deployment or our credentials, which someone can fix before the attempts run out |
//! | timeout, connection, TLS errors | retried |
//! | a status, then a body that breaks off or does not arrive in time | as the status says (the error is kept with the attempt) |
//!
//! A retried delivery whose attempts run out is `dead`.
//!
//! Below the table: how a claim ends ([`Resolution`]) and what is recorded of the request
//! ([`AttemptRecord`]), built here so the daemon only names which case it is in.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::config::RetryPolicy;
use crate::contract::payload::fits_identifier;
use crate::delivery::retry;
use crate::delivery::state::DeliveryState;
use crate::delivery::ClaimedDelivery;
use crate::http::client::Answer;
use crate::http::error::TransportError;

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered {
        external_id: Option<String>,
    },
    Rejected {
        reason: String,
    },
    Failed {
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// The contract's 200 answer; only the partner's patient id matters to us.
#[derive(Deserialize)]
struct Accepted {
    data: Option<AcceptedData>,
}

#[derive(Deserialize)]
struct AcceptedData {
    #[serde(rename = "externalId")]
    external_id: Option<String>,
}

/// The contract's 400 answer, and the shape a partner's error answer takes.
#[derive(Deserialize)]
struct Refused {
    #[serde(rename = "errorMessage")]
    error_message: Option<String>,
}

/// The partner's `errorMessage`, if its answer is JSON that has one. Invalid UTF-8 in the
/// answer must not cost support the partner's message.
fn partner_message(body: &[u8]) -> Option<String> {
    let body = String::from_utf8_lossy(body);
    serde_json::from_str::<Refused>(&body)
        .ok()
        .and_then(|refused| refused.error_message)
        .filter(|message| !message.is_empty())
}

impl Outcome {
    pub fn of_answer(answer: &Answer) -> Outcome {
        let status = answer.status;
        match status {
            200..=299 => Outcome::Delivered {
                external_id: serde_json::from_slice::<Accepted>(&answer.body)
                    .ok()
                    .and_then(|accepted| accepted.data)
                    .and_then(|data| data.external_id)
                    .filter(|id| !id.is_empty()),
            },
            400 | 413 | 415 | 422 => Outcome::Rejected {
                reason: match partner_message(&answer.body) {
                    Some(message) => format!("HTTP {status}: {message}"),
                    None => format!("HTTP {status} without an errorMessage"),
                },
            },
            300..=399 => Outcome::Failed {
                reason: format!("HTTP {status}: redirects are not followed"),
                retry_after: None,
            },
            // A failing partner that says why (a 500 with an `errorMessage`) is worded
            // with it: support reads the partner's words, not only a status.
            _ => Outcome::Failed {
                reason: match partner_message(&answer.body) {
                    Some(message) => format!("HTTP {status}: {message}"),
                    None => format!("HTTP {status}"),
                },
                retry_after: answer
                    .retry_after
                    .filter(|_| status == 429 || status == 503),
            },
        }
    }

    pub fn of_transport_error(error: &TransportError) -> Outcome {
        Outcome::Failed {
            reason: format!("{}: {}", error.kind.as_str(), error.message),
            retry_after: None,
        }
    }
}

/// One request made, as recorded in `dispatcher.attempts`.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub started_at: DateTime<Utc>,
    pub duration: Duration,
    pub http_status: Option<u16>,
    pub error_kind: Option<&'static str>,
    pub error: Option<String>,
    pub response_body: Option<String>,
}

impl AttemptRecord {
    /// The partner answered with a status (its body, or why the body broke off, is kept).
    pub fn answered(
        started_at: DateTime<Utc>,
        duration: Duration,
        answer: &Answer,
    ) -> AttemptRecord {
        AttemptRecord {
            started_at,
            duration,
            http_status: Some(answer.status),
            error_kind: answer.body_error.as_ref().map(|_| "response_body"),
            error: answer.body_error.clone(),
            response_body: (!answer.body.is_empty())
                .then(|| String::from_utf8_lossy(&answer.body).into_owned()),
        }
    }

    /// The request got no answer: a timeout, a refused connection, a TLS failure.
    pub fn unanswered(
        started_at: DateTime<Utc>,
        duration: Duration,
        error: &TransportError,
    ) -> AttemptRecord {
        AttemptRecord {
            started_at,
            duration,
            http_status: None,
            error_kind: Some(error.kind.as_str()),
            error: Some(error.message.clone()),
            response_body: None,
        }
    }

    /// The attempt panicked, a bug of ours; the request may have gone out.
    pub fn internal(started_at: DateTime<Utc>, duration: Duration) -> AttemptRecord {
        AttemptRecord {
            started_at,
            duration,
            http_status: None,
            error_kind: Some("internal"),
            error: None,
            response_body: None,
        }
    }
}

/// What an accepted attempt says when the partner's `data.externalId` is over the
/// contract's 255 characters (R13): later events could not carry it, so it is not kept.
pub const EXTERNAL_ID_TOO_LONG: &str =
    "data.externalId is over 255 characters (R13): not remembered for this patient";

/// How a claim ends: the delivery's new state, and the attempt made, if any.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub delivery_id: Uuid,
    pub claim_token: Uuid,
    pub state: DeliveryState,
    /// For `pending`: how long after the result is recorded to try again. A delay, not a
    /// time, so the database's clock sets `due_at` (see [`Resolution::after_attempt`]).
    pub due_in: Option<Duration>,
    pub last_error: Option<String>,
    pub attempt: Option<AttemptRecord>,
    /// The partner's own id for the patient, from a 200 answer (R10).
    pub learned_external_id: Option<String>,
}

impl Resolution {
    /// The delivery's next state after an attempt. A retry's time is a delay, counted by
    /// the database's clock when the result is recorded: the claim compares `due_at` with
    /// the database's `now()`, and the daemon's clock may differ from it.
    pub fn after_attempt(
        delivery: &ClaimedDelivery,
        policy: &RetryPolicy,
        outcome: Outcome,
        mut attempt: AttemptRecord,
    ) -> Resolution {
        let attempts_used = delivery.attempts_used + 1;
        let mut resolution = Resolution {
            state: DeliveryState::Delivered,
            due_in: None,
            ..Resolution::hand_back(delivery)
        };
        match outcome {
            // One the contract would refuse in a later body is not remembered (R13); the
            // attempt says so, without the value.
            Outcome::Delivered {
                external_id: Some(too_long),
            } if !fits_identifier(&too_long) => {
                attempt
                    .error
                    .get_or_insert_with(|| EXTERNAL_ID_TOO_LONG.to_string());
            }
            // The id we already had, given again (each 200 of a known patient's tracker
            // views), is nothing to learn: writing it would only lock its row again. "Had"
            // is as the claim read it; should another delivery of the patient have taught
            // a different id since (only a resend's race runs two at once), that one stays.
            Outcome::Delivered { external_id } => {
                resolution.learned_external_id =
                    external_id.filter(|id| Some(id) != delivery.external_id.as_ref());
            }
            Outcome::Rejected { reason } => {
                resolution.state = DeliveryState::Rejected;
                attempt.error.get_or_insert_with(|| reason.clone());
                resolution.last_error = Some(reason);
            }
            Outcome::Failed {
                reason,
                retry_after,
            } => {
                attempt.error.get_or_insert_with(|| reason.clone());
                if policy.is_exhausted(attempts_used) {
                    resolution.state = DeliveryState::Dead;
                    resolution.last_error =
                        Some(format!("{reason} (gave up after {attempts_used} attempts)"));
                } else {
                    let scheduled = policy.delay_after(attempts_used, retry::draw_jitter());
                    let asked =
                        retry_after.map_or(Duration::ZERO, |asked| asked.min(policy.max_delay));
                    resolution.state = DeliveryState::Pending;
                    resolution.due_in = Some(scheduled.max(asked));
                    resolution.last_error = Some(reason);
                }
            }
        }
        resolution.attempt = Some(attempt);
        resolution
    }

    /// Gives the claim back unattempted, due again after `wait`.
    pub fn postpone(delivery: &ClaimedDelivery, wait: Duration, reason: String) -> Resolution {
        Resolution {
            due_in: Some(wait),
            last_error: Some(reason),
            ..Resolution::hand_back(delivery)
        }
    }

    /// The stored event breaks the contract: it is never sent.
    pub fn invalid(delivery: &ClaimedDelivery, reason: String) -> Resolution {
        Resolution {
            state: DeliveryState::Invalid,
            due_in: None,
            last_error: Some(reason),
            ..Resolution::hand_back(delivery)
        }
    }

    /// Gives an unstarted claim back: due again at once, no attempt counted.
    pub fn hand_back(delivery: &ClaimedDelivery) -> Resolution {
        Resolution {
            delivery_id: delivery.id,
            claim_token: delivery.claim_token,
            state: DeliveryState::Pending,
            due_in: Some(Duration::ZERO),
            last_error: None,
            attempt: None,
            learned_external_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            retry_after: Some(Duration::from_secs(30)),
            body: body.as_bytes().to_vec(),
            body_error: None,
        }
    }

    #[test]
    fn a_200_is_delivered_and_yields_the_partner_patient_id() {
        let body = r#"{"success": true, "data": {"supportProgramId": "s", "patientId": "p", "externalId": "crm-1"}}"#;
        assert_eq!(
            Outcome::of_answer(&answer(200, body)),
            Outcome::Delivered {
                external_id: Some("crm-1".into())
            }
        );
        assert_eq!(
            Outcome::of_answer(&answer(204, "")),
            Outcome::Delivered { external_id: None }
        );
    }

    #[test]
    fn a_400_is_rejected_with_the_partner_message() {
        let body = r#"{"errorMessage": "request has bad syntax", "data": {"patientId": "p"}}"#;
        assert_eq!(
            Outcome::of_answer(&answer(400, body)),
            Outcome::Rejected {
                reason: "HTTP 400: request has bad syntax".into()
            }
        );
        assert!(matches!(
            Outcome::of_answer(&answer(400, "<html>")),
            Outcome::Rejected { .. }
        ));
    }

    #[test]
    fn a_400_with_invalid_utf8_keeps_the_partner_message() {
        let answer = Answer {
            body: b"{\"errorMessage\": \"bad \xff byte\"}".to_vec(),
            ..answer(400, "")
        };
        assert_eq!(
            Outcome::of_answer(&answer),
            Outcome::Rejected {
                reason: "HTTP 400: bad \u{FFFD} byte".into()
            }
        );
    }

    #[test]
    fn throttling_and_server_errors_are_retried() {
        for status in [408, 500, 502, 404, 401, 302] {
            assert!(
                matches!(
                    Outcome::of_answer(&answer(status, "")),
                    Outcome::Failed { .. }
                ),
                "{status}"
            );
        }
        assert_eq!(
            Outcome::of_answer(&answer(429, "")),
            Outcome::Failed {
                reason: "HTTP 429".into(),
                retry_after: Some(Duration::from_secs(30))
            }
        );
    }

    fn claimed(attempts_used: u32) -> ClaimedDelivery {
        ClaimedDelivery {
            id: Uuid::now_v7(),
            claim_token: Uuid::now_v7(),
            event_id: 1,
            partner: "acme".into(),
            event_name: "enrollment".into(),
            attempts_used,
            event: "{}".into(),
            external_id: None,
            traceparent: None,
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }

    fn resolved(attempts_used: u32, answer: &Answer) -> Resolution {
        let attempt = AttemptRecord::answered(Utc::now(), Duration::from_millis(5), answer);
        Resolution::after_attempt(
            &claimed(attempts_used),
            &policy(),
            Outcome::of_answer(answer),
            attempt,
        )
    }

    #[test]
    fn a_200_ends_delivered_and_remembers_the_partner_patient_id() {
        let body = r#"{"data": {"externalId": "crm-1"}}"#;
        let resolution = resolved(0, &answer(200, body));
        assert_eq!(resolution.state, DeliveryState::Delivered);
        assert_eq!(resolution.due_in, None);
        assert_eq!(resolution.learned_external_id.as_deref(), Some("crm-1"));
        let attempt = resolution.attempt.expect("an attempt is recorded");
        assert_eq!(attempt.http_status, Some(200));
        assert_eq!(attempt.response_body.as_deref(), Some(body));
    }

    #[test]
    fn a_partner_id_given_again_is_nothing_to_learn_and_a_new_one_is() {
        let known = ClaimedDelivery {
            external_id: Some("crm-1".into()),
            ..claimed(0)
        };
        let answered = |external_id: &str| {
            let answer = answer(
                200,
                &format!(r#"{{"data": {{"externalId": "{external_id}"}}}}"#),
            );
            Resolution::after_attempt(
                &known,
                &policy(),
                Outcome::of_answer(&answer),
                AttemptRecord::answered(Utc::now(), Duration::from_millis(5), &answer),
            )
        };
        let again = answered("crm-1");
        assert_eq!(again.state, DeliveryState::Delivered);
        assert_eq!(again.learned_external_id, None);
        assert_eq!(
            answered("crm-2").learned_external_id.as_deref(),
            Some("crm-2")
        );
    }

    #[test]
    fn a_partner_id_over_255_characters_is_not_remembered_and_the_attempt_says_why() {
        let long = "7".repeat(256);
        let body = format!(r#"{{"data": {{"externalId": "{long}"}}}}"#);
        let resolution = resolved(0, &answer(200, &body));
        assert_eq!(resolution.state, DeliveryState::Delivered);
        assert_eq!(resolution.learned_external_id, None);
        let attempt = resolution.attempt.expect("an attempt is recorded");
        assert_eq!(attempt.error.as_deref(), Some(EXTERNAL_ID_TOO_LONG));
        assert!(!EXTERNAL_ID_TOO_LONG.contains(&long));

        let longest = "\u{1F600}".repeat(255);
        let body = format!(r#"{{"data": {{"externalId": "{longest}"}}}}"#);
        let resolution = resolved(0, &answer(200, &body));
        assert_eq!(resolution.learned_external_id, Some(longest));
        assert_eq!(resolution.attempt.expect("attempt").error, None);
    }

    #[test]
    fn a_400_ends_rejected_with_its_reason() {
        let resolution = resolved(0, &answer(400, r#"{"errorMessage": "bad date"}"#));
        assert_eq!(resolution.state, DeliveryState::Rejected);
        assert_eq!(resolution.last_error.as_deref(), Some("HTTP 400: bad date"));
        let attempt = resolution.attempt.expect("an attempt is recorded");
        assert_eq!(attempt.error.as_deref(), Some("HTTP 400: bad date"));
    }

    #[test]
    fn a_failure_within_max_attempts_is_pending_again_after_the_schedule() {
        let resolution = resolved(0, &answer(500, ""));
        assert_eq!(resolution.state, DeliveryState::Pending);
        assert_eq!(resolution.last_error.as_deref(), Some("HTTP 500"));
        let due_in = resolution.due_in.expect("a retry is scheduled");
        let first = policy().delay_after(1, 0.0);
        assert!(due_in >= first && due_in <= first.mul_f64(1.0 + retry::MAX_JITTER));
    }

    #[test]
    fn a_failing_partner_that_says_why_is_worded_with_its_message() {
        let body = r#"{"errorMessage": "CRM database unavailable"}"#;
        let resolution = resolved(0, &answer(500, body));
        assert_eq!(resolution.state, DeliveryState::Pending);
        assert_eq!(
            resolution.last_error.as_deref(),
            Some("HTTP 500: CRM database unavailable")
        );
        let resolution = resolved(0, &answer(503, "<html>busy</html>"));
        assert_eq!(resolution.last_error.as_deref(), Some("HTTP 503"));
    }

    #[test]
    fn a_failure_past_max_attempts_ends_dead() {
        let resolution = resolved(2, &answer(503, ""));
        assert_eq!(resolution.state, DeliveryState::Dead);
        assert_eq!(resolution.due_in, None);
        assert_eq!(
            resolution.last_error.as_deref(),
            Some("HTTP 503 (gave up after 3 attempts)")
        );
    }

    #[test]
    fn a_retry_after_is_honoured_and_capped_at_max_delay() {
        let asked = |seconds| Answer {
            retry_after: Some(Duration::from_secs(seconds)),
            ..answer(429, "")
        };
        assert_eq!(
            resolved(0, &asked(30)).due_in,
            Some(Duration::from_secs(30))
        );
        assert_eq!(resolved(0, &asked(86_400)).due_in, Some(policy().max_delay));
    }

    #[test]
    fn no_answer_is_a_failure_with_its_kind_and_message() {
        let error = TransportError {
            kind: crate::http::error::TransportErrorKind::Timeout,
            message: "no answer within 10s".into(),
        };
        let attempt = AttemptRecord::unanswered(Utc::now(), Duration::from_secs(10), &error);
        let resolution = Resolution::after_attempt(
            &claimed(0),
            &policy(),
            Outcome::of_transport_error(&error),
            attempt,
        );
        assert_eq!(resolution.state, DeliveryState::Pending);
        let attempt = resolution.attempt.expect("an attempt is recorded");
        assert_eq!(attempt.http_status, None);
        assert_eq!(attempt.error_kind, Some(error.kind.as_str()));
        assert_eq!(attempt.error.as_deref(), Some("no answer within 10s"));
    }

    #[test]
    fn a_claim_handed_back_or_postponed_counts_no_attempt() {
        let delivery = claimed(1);
        let handed_back = Resolution::hand_back(&delivery);
        assert_eq!(handed_back.state, DeliveryState::Pending);
        assert_eq!(handed_back.due_in, Some(Duration::ZERO));
        assert!(handed_back.attempt.is_none());
        let postponed =
            Resolution::postpone(&delivery, Duration::from_secs(60), "partner gone".into());
        assert_eq!(postponed.state, DeliveryState::Pending);
        assert_eq!(postponed.due_in, Some(Duration::from_secs(60)));
        assert_eq!(postponed.last_error.as_deref(), Some("partner gone"));
        assert!(postponed.attempt.is_none());
    }

    #[test]
    fn an_event_that_breaks_the_contract_ends_invalid_unsent() {
        let resolution = Resolution::invalid(&claimed(0), "patient.id is required".into());
        assert_eq!(resolution.state, DeliveryState::Invalid);
        assert_eq!(resolution.due_in, None);
        assert!(resolution.attempt.is_none());
    }
}
