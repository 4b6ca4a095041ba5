//! The headers of one webhook request, in one place: the sender sets exactly these on
//! every attempt, and support's view of what a partner received (`delivery::request`)
//! lists the same, so the two cannot drift apart. Every value that is a secret or proves
//! one (the partner's configured headers, `Authorization`, the signature) is marked
//! sensitive: reqwest never prints it, and the view masks it.

use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use secrecy::ExposeSecret;

use crate::config::Partner;
use crate::contract::signing;

/// What the client sends as `User-Agent` (its token requests too).
pub const AGENT: &str = concat!("HelpAround-Dispatcher/", env!("CARGO_PKG_VERSION"));

/// The W3C trace context of an attempt (`[telemetry]`), sent as `traceparent` and
/// `tracestate` so the partner's side can join the event's trace. Outside the Standard
/// Webhooks signature, which covers the id, the timestamp and the body only.
#[derive(Debug, Clone)]
pub struct TraceHeaders {
    pub traceparent: HeaderValue,
    pub tracestate: Option<HeaderValue>,
}

/// The headers of one attempt at `webhook_id` with `body` at `timestamp` (epoch seconds):
/// the content type, the client's name, the partner's configured headers, its
/// credential when it has one, the Standard Webhooks headers when it has signing
/// secrets, and the attempt's trace context with `[telemetry]`. The HTTP client adds
/// only `Host`, `Content-Length` and `Accept: */*`.
pub fn webhook_headers(
    partner: &Partner,
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
    authorization: Option<&HeaderValue>,
    trace: Option<&TraceHeaders>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = vec![
        (CONTENT_TYPE, HeaderValue::from_static("application/json")),
        (USER_AGENT, HeaderValue::from_static(AGENT)),
    ];
    for (name, value) in &partner.headers {
        // Checked when the config was loaded.
        if let Ok(mut value) = HeaderValue::from_str(value.expose_secret()) {
            value.set_sensitive(true);
            headers.push((name.clone(), value));
        }
    }
    if let Some(credential) = authorization {
        let mut credential = credential.clone();
        credential.set_sensitive(true);
        headers.push((AUTHORIZATION, credential));
    }
    if !partner.signing_secrets.is_empty() {
        let signature =
            signing::signature_header(&partner.signing_secrets, webhook_id, timestamp, body);
        // Ids are UUIDs, a timestamp digits and a signature base64: always header values.
        if let (Ok(id), Ok(mut signature)) = (
            HeaderValue::from_str(webhook_id),
            HeaderValue::from_str(&signature),
        ) {
            signature.set_sensitive(true);
            headers.push((HeaderName::from_static("webhook-id"), id));
            headers.push((
                HeaderName::from_static("webhook-timestamp"),
                HeaderValue::from(timestamp),
            ));
            headers.push((HeaderName::from_static("webhook-signature"), signature));
        }
    }
    if let Some(trace) = trace {
        headers.push((
            HeaderName::from_static("traceparent"),
            trace.traceparent.clone(),
        ));
        if let Some(tracestate) = &trace.tracestate {
            headers.push((HeaderName::from_static("tracestate"), tracestate.clone()));
        }
    }
    headers
}
