//! What an attempt's answer means for the delivery.
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx | delivered; `data.externalId` is remembered for the patient (R10) |
//! | 400, 413, 415, 422 | rejected: the partner says the request itself is wrong, so the same bytes would fail again; support looks (R11) |
//! | 408, 429, 5xx | retried (429 and 503 honour `Retry-After`) |
//! | 3xx | retried: redirects are never followed |
//! | other 4xx (401, 403, 404, 409, …) | retried: usually the partner's deployment or our credentials, which someone can fix before the attempts run out |
//! | timeout, connection, TLS errors | retried |
//! | a status, then a body that breaks off or does not arrive in time | as the status says (the error is kept with the attempt) |
//!
//! A retried delivery whose attempts run out is `dead`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::delivery::state::DeliveryState;
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

/// The contract's 400 answer.
#[derive(Deserialize)]
struct Refused {
    #[serde(rename = "errorMessage")]
    error_message: Option<String>,
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
            400 | 413 | 415 | 422 => {
                // Invalid UTF-8 in the answer must not cost support the partner's message.
                let body = String::from_utf8_lossy(&answer.body);
                let message = serde_json::from_str::<Refused>(&body)
                    .ok()
                    .and_then(|refused| refused.error_message);
                Outcome::Rejected {
                    reason: match message {
                        Some(message) => format!("HTTP {status}: {message}"),
                        None => format!("HTTP {status} without an errorMessage"),
                    },
                }
            }
            300..=399 => Outcome::Failed {
                reason: format!("HTTP {status}: redirects are not followed"),
                retry_after: None,
            },
            _ => Outcome::Failed {
                reason: format!("HTTP {status}"),
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

/// How a claim ends: the delivery's new state, and the attempt made, if any.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub delivery_id: Uuid,
    pub claim_token: Uuid,
    pub state: DeliveryState,
    /// For `pending`: how long after the result is recorded to try again. A delay, not a
    /// time, so the database's clock sets `due_at` (see `dispatch::resolve`).
    pub due_in: Option<Duration>,
    pub last_error: Option<String>,
    pub attempt: Option<AttemptRecord>,
    /// The partner's own id for the patient, from a 200 answer (R10).
    pub learned_external_id: Option<String>,
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
}
