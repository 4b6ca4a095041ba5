//! Why a request brought no answer: the transport errors an attempt records. At the
//! bottom of `http`, so the client and partner authentication (whose token requests fail
//! the same ways) both use them without importing each other.

use crate::http::guard::GuardError;

/// Why no answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    Timeout,
    Connect,
    Body,
    Request,
    /// The destination guard refused every address of the partner's host.
    DestinationRefused,
    /// No credential could be had (the OAuth token endpoint failed or refused us).
    Auth,
}

impl TransportErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportErrorKind::Timeout => "timeout",
            TransportErrorKind::Connect => "connect",
            TransportErrorKind::Body => "response_body",
            TransportErrorKind::Request => "request",
            TransportErrorKind::DestinationRefused => "destination_refused",
            TransportErrorKind::Auth => "auth",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    pub kind: TransportErrorKind,
    pub message: String,
}

impl From<GuardError> for TransportError {
    fn from(error: GuardError) -> Self {
        TransportError {
            kind: if error.is_refused() {
                TransportErrorKind::DestinationRefused
            } else {
                TransportErrorKind::Connect
            },
            message: error.to_string(),
        }
    }
}

impl From<reqwest::Error> for TransportError {
    fn from(error: reqwest::Error) -> Self {
        // The guard's refusal arrives wrapped as a connect error; it is its own kind.
        let refused = causes(&error)
            .filter_map(|cause| cause.downcast_ref::<GuardError>())
            .find(|refused| refused.is_refused());
        if let Some(refused) = refused {
            return refused.clone().into();
        }
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

/// `error` and its causes, outermost first. An io::Error's `source()` skips the error it
/// wraps (where rustls puts its own, inside another io::Error), so those are opened too.
pub(crate) fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |&cause| {
        match cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(wrapped) => Some(wrapped as &(dyn std::error::Error + 'static)),
            None => cause.source(),
        }
    })
}
