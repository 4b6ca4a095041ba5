//! What a partner received for one delivery, for the support role, as the service layer
//! gives it to the API and the page alike: the URL and the headers (every secret masked)
//! on sight, and the body, which is patient data, only for a reason given, recorded in
//! the audit trail before the body is answered. The body and the reason are never
//! logged: the reason is kept in the trail only.
//!
//! It is rebuilt from the stored event by the sender's own code
//! (`delivery::request::received`), so it says what was sent, not a copy of it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::caller::Caller;
use super::error::{ApiError, DatabaseUnavailable};
use super::state::AdminState;
use crate::delivery::request::{self, SentBody};
use crate::delivery::state::DeliveryState;
use crate::store::audit::{action, Outcome};
use crate::store::support::received::{self as stored, StoredRequest};

/// The longest reason kept, in characters: a sentence or a ticket number, not a letter.
pub(crate) const REASON_MAX_CHARS: usize = 500;

/// What the partner received, as support may see it.
pub(crate) struct ReceivedView {
    pub url: String,
    /// Name and value; secret values masked.
    pub headers: Vec<(String, String)>,
    /// When the attempt shown was sent; `None` before the first, when the request is
    /// shown as it would be sent now.
    pub sent_at: Option<DateTime<Utc>>,
    pub body: ShownBody,
}

/// The body, as far as this request may show it.
pub(crate) enum ShownBody {
    /// Not asked for: it is shown only for a reason.
    Withheld,
    Sent(SentBody),
    /// Retention erased it on that day.
    Erased(DateTime<Utc>),
}

/// The reason as given, trimmed; refused when empty, longer than [`REASON_MAX_CHARS`]
/// or holding a control character other than a line break or a tab (PostgreSQL keeps no
/// NUL), without repeating it: it may name a patient.
pub(crate) fn checked_reason(reason: &str) -> Result<&str, ApiError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(ApiError::BadRequest(
            "say why you need to see the patient data (reason)".to_string(),
        ));
    }
    if reason
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ApiError::BadRequest(
            "the reason holds a control character".to_string(),
        ));
    }
    if reason.chars().count() > REASON_MAX_CHARS {
        return Err(ApiError::BadRequest(format!(
            "the reason is longer than {REASON_MAX_CHARS} characters"
        )));
    }
    Ok(reason)
}

impl AdminState {
    /// The URL and masked headers of what the partner received; no body, nothing of the
    /// patient (the reader of the delivery was audited already).
    pub(crate) async fn received_headers(&self, id: Uuid) -> Result<ReceivedView, ApiError> {
        let mut view = self.received(id).await?;
        view.body = ShownBody::Withheld;
        Ok(view)
    }

    /// Everything the partner received, its body included, for `reason`: recorded in the
    /// audit trail first (no record, no body), with how it ended.
    pub(crate) async fn received_body(
        &self,
        caller: &Caller,
        id: Uuid,
        reason: &str,
    ) -> Result<ReceivedView, ApiError> {
        let reason = checked_reason(reason)?;
        let result = self.received(id).await;
        let recorded = match &result {
            Ok(_) => reason.to_string(),
            Err(error) => format!("{error}; reason given: {reason}"),
        };
        let outcome = if result.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Failed
        };
        self.audit(
            caller,
            action::BODY_READ,
            Some(&id.to_string()),
            outcome,
            Some(&recorded),
        )
        .await?;
        if result.is_ok() {
            tracing::info!(delivery_id = %id, "support read what the partner received");
        }
        result
    }

    async fn received(&self, id: Uuid) -> Result<ReceivedView, ApiError> {
        let client = self.client().await?;
        let stored = stored::stored_request(&client, id)
            .await
            .map_err(DatabaseUnavailable::logged)?
            .ok_or(ApiError::NotFound(id))?;
        drop(client);
        let StoredRequest {
            partner,
            event_name,
            state,
            event,
            event_erased_at,
            sent_at,
            external_id,
        } = stored;
        let Some(partner) = partner else {
            return Err(ApiError::Conflict(format!(
                "delivery {id} reached no partner: nothing was sent"
            )));
        };
        let config = self.live.snapshot();
        let Some(partner) = config.partner(&partner) else {
            return Err(ApiError::Conflict(format!(
                "partner `{partner}` is not in the configuration: its URL and headers are unknown"
            )));
        };
        let received = request::received(
            partner,
            &id.to_string(),
            &event_name,
            event.as_deref(),
            external_id.as_deref(),
            sent_at.unwrap_or_else(Utc::now),
        )
        .map_err(|invalid| {
            let never = if state == DeliveryState::Invalid {
                "it was never sent: "
            } else {
                ""
            };
            ApiError::Conflict(format!(
                "{never}the stored event breaks the contract: {invalid}"
            ))
        })?;
        let body = match (received.body, event_erased_at) {
            (Some(body), _) => ShownBody::Sent(body),
            (None, Some(at)) => ShownBody::Erased(at),
            // A body is either kept or erased with its time (the outbox's CHECK).
            (None, None) => ShownBody::Withheld,
        };
        Ok(ReceivedView {
            url: received.url,
            headers: received.headers,
            sent_at,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_said_in_a_line_or_a_few_and_refused_without_being_repeated() {
        assert_eq!(
            checked_reason("  ticket 4711\r\n").ok(),
            Some("ticket 4711")
        );
        assert!(checked_reason("line one\r\nline two").is_ok());
        let longest = "x".repeat(REASON_MAX_CHARS);
        assert!(checked_reason(&longest).is_ok());
        for refused in ["", " \n\t", "John Doe\0", &format!("{longest}x")] {
            let error = checked_reason(refused).expect_err(refused).to_string();
            assert!(!error.contains("John") && !error.contains("xxx"), "{error}");
        }
    }
}
