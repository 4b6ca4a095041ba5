//! The request a delivery makes, from its stored event: the one way the attempt builds it
//! and support's view of what the partner received rebuilds it ([`received`]), so the
//! view cannot show another body, URL or header than the sender sends.

use chrono::{DateTime, Utc};
use reqwest::header::HeaderValue;
use url::Url;

use crate::config::Partner;
use crate::contract::payload::{Event, EventKind, InvalidEvent};
use crate::http::headers::webhook_headers;

/// What stands in for a secret header value wherever a person reads the headers.
pub const MASKED: &str = "••••";

/// A request ready to go: the partner, the event checked against the contract (with the
/// partner's own patient id once known, R9), and the partner's URL for its kind.
pub struct Prepared<'c> {
    pub partner: &'c Partner,
    pub event: Event,
    pub url: &'c Url,
}

/// Parses the stored event (`event_name`, `event`) for `partner`: parsing is the
/// contract's validation (R1-R13), so an event that breaks it is refused here, naming
/// every broken field and no value.
pub fn prepare<'c>(
    partner: &'c Partner,
    event_name: &str,
    event: &str,
    external_id: Option<&str>,
) -> Result<Prepared<'c>, InvalidEvent> {
    let kind = EventKind::from_name(event_name)?;
    let mut event = Event::parse(kind, event)?;
    if let Some(external_id) = external_id {
        event.merge_external_id(&partner.name, external_id);
    }
    Ok(Prepared {
        partner,
        event,
        url: url_for(partner, kind),
    })
}

fn url_for(partner: &Partner, kind: EventKind) -> &Url {
    match kind {
        EventKind::Enrollment => &partner.enrollment_url,
        EventKind::ViewedTracker => &partner.user_action_url,
    }
}

/// What a partner received for one delivery, rebuilt: its URL, its headers with every
/// secret masked, and its body unless retention erased it.
pub struct Received {
    pub url: String,
    /// Name and value, in the order the sender sets them; secret values are [`MASKED`].
    pub headers: Vec<(String, String)>,
    /// `None` when the event's body was erased.
    pub body: Option<SentBody>,
}

/// A body as it was sent at `send_date` (its `sendDate`).
pub struct SentBody {
    event: Event,
    send_date: DateTime<Utc>,
}

impl SentBody {
    /// The bytes the partner received.
    pub fn bytes(&self) -> Vec<u8> {
        self.event.to_body(self.send_date)
    }

    /// The same body indented for a person to read.
    pub fn pretty(&self) -> String {
        String::from_utf8_lossy(&self.event.to_pretty_body(self.send_date)).into_owned()
    }
}

/// The request of delivery `webhook_id` as its attempt at `sent_at` made it, from the
/// stored event (`None`: erased) and the partner's patient id known then. The partner's
/// settings are today's: a changed URL or header shows as it is now.
pub fn received(
    partner: &Partner,
    webhook_id: &str,
    event_name: &str,
    event: Option<&str>,
    external_id: Option<&str>,
    sent_at: DateTime<Utc>,
) -> Result<Received, InvalidEvent> {
    let (url, body) = match event {
        Some(event) => {
            let prepared = prepare(partner, event_name, event, external_id)?;
            let body = SentBody {
                event: prepared.event,
                send_date: sent_at,
            };
            (prepared.url, Some(body))
        }
        None => (url_for(partner, EventKind::from_name(event_name)?), None),
    };
    // An erased body is signed as empty: the signature is masked either way.
    let bytes = body.as_ref().map(SentBody::bytes).unwrap_or_default();
    let headers = webhook_headers(
        partner,
        webhook_id,
        sent_at.timestamp(),
        &bytes,
        authorization(partner).as_ref(),
        None,
    );
    Ok(Received {
        url: url.to_string(),
        headers: headers
            .into_iter()
            .map(|(name, value)| {
                let shown = if value.is_sensitive() {
                    MASKED.to_string()
                } else {
                    String::from_utf8_lossy(value.as_bytes()).into_owned()
                };
                (name.as_str().to_string(), shown)
            })
            .collect(),
        body,
    })
}

/// The partner's `Authorization` as the view shows it: masked whatever it is, so an
/// OAuth token (fetched at send time, never stored) is stood in for by its scheme.
fn authorization(partner: &Partner) -> Option<HeaderValue> {
    let auth = partner.auth.as_ref()?;
    Some(
        auth.static_header()
            .ok()
            .flatten()
            .unwrap_or_else(|| HeaderValue::from_static("Bearer")),
    )
}
