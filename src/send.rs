//! The HTTP side: one pooled client, one POST per attempt, the partner's answer read
//! with a cap.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use secrecy::ExposeSecret;
use url::Url;

use crate::config::{DispatchConfig, Partner};

/// How much of a partner's answer is kept: enough for any contract answer and a useful
/// error page, and a hostile partner cannot make us hold more.
pub const RESPONSE_BODY_CAP: usize = 16 * 1024;

pub const USER_AGENT: &str = concat!("HelpAround-Dispatcher/", env!("CARGO_PKG_VERSION"));

/// What the partner answered, when it answered at all.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    /// At most [`RESPONSE_BODY_CAP`] bytes.
    pub body: Vec<u8>,
}

/// Why no answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    Timeout,
    Connect,
    Body,
    Request,
}

impl TransportErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportErrorKind::Timeout => "timeout",
            TransportErrorKind::Connect => "connect",
            TransportErrorKind::Body => "response_body",
            TransportErrorKind::Request => "request",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    pub kind: TransportErrorKind,
    pub message: String,
}

impl From<reqwest::Error> for TransportError {
    fn from(error: reqwest::Error) -> Self {
        let kind = if error.is_timeout() {
            TransportErrorKind::Timeout
        } else if error.is_connect() {
            TransportErrorKind::Connect
        } else if error.is_body() || error.is_decode() {
            TransportErrorKind::Body
        } else {
            TransportErrorKind::Request
        };
        // The URL may carry a partner's credentials in its query, so it stays out.
        let error = error.without_url();
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        TransportError { kind, message }
    }
}

/// Posts webhook bodies. One per daemon: its connection pool is shared by every request.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
}

impl Sender {
    pub fn new(dispatch: &DispatchConfig) -> Result<Sender, reqwest::Error> {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(dispatch.request_timeout)
            .connect_timeout(dispatch.request_timeout)
            // A redirect is a failed attempt: following it would send health data to an
            // address the partner never registered.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(dispatch.concurrency)
            .tcp_nodelay(true)
            .use_rustls_tls()
            .build()?;
        Ok(Sender { client })
    }

    /// One attempt: POST `body` to `url` with the partner's headers and, when it has a
    /// signing secret, Standard Webhooks headers.
    pub async fn post(
        &self,
        partner: &Partner,
        url: &Url,
        webhook_id: &str,
        body: Vec<u8>,
        now: DateTime<Utc>,
    ) -> Result<Answer, TransportError> {
        let mut request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &partner.headers {
            // Checked when the config was loaded.
            if let Ok(mut value) = HeaderValue::from_str(value.expose_secret()) {
                value.set_sensitive(true);
                request = request.header(name.clone(), value);
            }
        }
        if let Some(secret) = &partner.signing_secret {
            let timestamp = now.timestamp();
            let signature = secret.sign(webhook_id, timestamp, &body);
            request = request
                .header("webhook-id", webhook_id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature);
        }
        let mut response = request.body(body).send().await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, now));
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            let room = RESPONSE_BODY_CAP - answer.len();
            answer.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if answer.len() == RESPONSE_BODY_CAP {
                break;
            }
        }
        Ok(Answer {
            status,
            retry_after,
            body: answer,
        })
    }
}

/// `Retry-After` is either delay-seconds or an HTTP date.
fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (date.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
